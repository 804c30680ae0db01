"""Synthetic scenes: real emoji renders composed on white, captioned as people write sentences.

The six kinds of prompt GenEval measures (Ghosh et al. 2023) become six families of training images:
"a cat" (single object, at any size and place), "a cat and a pizza" (two objects), "three foxes" (counting,
2-4), "a purple carrot" (colours, by recolouring the render), "a cat to the left of a pizza" (position:
left of / right of / above / below) and "a red cat and a blue rocket" (colour attribution).

Sizes and places are drawn at random for every image, so a relation is a relation between two objects
wherever they are, not a pair of fixed slots. Objects never overlap and keep a gap, so each is one blob of
ink on white (what the evaluation's detector reads).

A deterministic part of the combinations is held out of training (`held_out`): object pairs, object x count,
object x colour, and ordered pair x relation, each by a hash of its parts, plus a few objects that training
shows only alone. Every part of a held-out combination (each object, colour, count and relation) is still
seen in training in other combinations.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ..images import ink_mask
from .data import CaptionedImages, Emoji, render
from .recolour import COLOUR_WORDS, main_colour, recolour

TASKS = ["single object", "two objects", "counting", "colours", "position", "colour attribution"]
RELATIONS = ["left of", "right of", "above", "below"]
COUNT_WORDS = {2: "two", 3: "three", 4: "four"}
FAMILY_PREFIX = "scenes: "

# Names of single emoji that are not a thing one can draw several of, or that are already a plural or a person
# (people are their own family): symbols, places, weather, activities, times, zodiac signs.
NOT_OBJECTS = set("""
copyright registered joker cyclone foggy sunrise sunset rainbow fog cooking cinema bullseye bowling tennis
snowboarder camping houses cityscape desert stadium rosette label badminton eyes footprints boy girl man woman
family baby princess guard kiss wedding zzz collision dizzy seat om kaaba mosque synagogue hole detective
station construction prohibited restroom customs landslide wireless motorway handshake star-struck
breast-feeding selfie prince lacrosse softball ninja bald superhero supervillain mate ice troll person child mage
fairy vampire merperson elf genie zombie x-ray placard hamsa khanda splatter information aries taurus gemini cancer
leo virgo libra scorpio sagittarius capricorn aquarius pisces ophiuchus infinity radioactive biohazard fleur-de-lis
warning multiply sparkles sparkle plus minus divide skier fireworks sparkler glasses jeans skis grapes cherries
peanuts pancakes chopsticks beans blueberries bubbles gloves socks briefs shorts lungs maracas goggles scissors
books dvd e-mail ogre metro monorail trolleybus memo ledger pager school bank hotel hospital factory church
mountain fountain castle volcano thermometer tornado wood rock dango oden sake custard tamale fondue flatbread
falafel mate menorah alembic amphora pick chains cricket bug fly seal ram ewe boar ox
luggage butter bacon popcorn salt garlic bread dna spaghetti sushi herb broccoli sunglasses locked unlocked thread
yarn soap
""".split())
NOT_OBJECTS |= {f"{hour}-thirty" for hour in "one two three four five six seven eight nine ten eleven twelve".split()}

IRREGULAR_PLURALS = {
    "mouse": "mice", "goose": "geese", "tooth": "teeth", "foot": "feet", "fish": "fish", "deer": "deer",
    "sheep": "sheep", "bison": "bison", "moose": "moose", "octopus": "octopuses", "cactus": "cacti",
    "wolf": "wolves", "snowman": "snowmen", "knife": "knives", "leaf": "leaves", "scarf": "scarves", "elf": "elves", "sushi": "sushi",
    "shrimp": "shrimp", "squid": "squid", "t-rex": "t-rexes",
    "hippopotamus": "hippopotamuses", "rhinoceros": "rhinoceroses", "potato": "potatoes", "tomato": "tomatoes",
    "mango": "mangoes", "avocado": "avocados", "volcano": "volcanoes", "piñata": "piñatas", "yo-yo": "yo-yos",
    "t-shirt": "t-shirts", "mosquito": "mosquitoes", "jack-o-lantern": "jack-o-lanterns", "headphone": "headphones",
}


def pluralize(noun: str) -> str:
    """English plural of a one-word noun: the irregular table, then the regular spelling rules."""
    if noun in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[noun]
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


@dataclass(frozen=True)
class SceneObject:
    name: str  # the emoji's CLDR name, one word ("fox")
    index: int  # its row in the emoji corpus (load_emoji order)
    code: str

    @property
    def plural(self) -> str:
        return pluralize(self.name)


def scene_objects(emojis: Sequence[Emoji], held_out_emoji: Sequence[str] = ()) -> List[SceneObject]:
    """The objects of the scenes: seen single emoji named by one word that is a drawable thing."""
    held = set(held_out_emoji)
    return [SceneObject(e.caption, i, e.code) for i, e in enumerate(emojis)
            if e.family == "single emoji" and " " not in e.caption and ":" not in e.caption
            and e.caption not in NOT_OBJECTS and e.caption not in held and e.caption.replace("-", "").isalpha()]


# ----- what is held out --------------------------------------------------------------------------------------
def _hash01(*parts) -> float:
    text = "scenes-held-out:" + "|".join(str(p) for p in parts)
    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


@dataclass(frozen=True)
class HeldOut:
    """The rule that keeps combinations out of training (a hash of each combination's parts)."""

    fraction: float = 0.15  # of pairs, object x count, object x colour, ordered pair x relation
    alone_fraction: float = 0.06  # of objects: shown in training only alone

    def alone_only(self, obj: str) -> bool:
        return _hash01("alone", obj) < self.alone_fraction

    def pair(self, a: str, b: str) -> bool:
        return _hash01("pair", *sorted((a, b))) < self.fraction

    def count(self, obj: str, n: int) -> bool:
        return _hash01("count", obj, n) < self.fraction

    def colour(self, obj: str, colour: str) -> bool:
        return _hash01("colour", obj, colour) < self.fraction

    def relation(self, a: str, relation: str, b: str) -> bool:
        # "a left of b" and "b right of a" are one layout: hold out both or neither.
        if relation in ("right of", "below"):
            a, b, relation = b, a, {"right of": "left of", "below": "above"}[relation]
        return _hash01("relation", a, relation, b) < self.fraction

    def is_held_out(self, spec: "SceneSpec") -> bool:
        """True when `spec` uses any held-out combination (or puts an alone-only object in a scene)."""
        names = [o for o, _ in spec.objects]
        if spec.task != "single object" and any(self.alone_only(o) for o in names):
            return True
        if len(names) == 2 and (self.pair(*names) or (spec.relation and self.relation(names[0], spec.relation, names[1]))):
            return True
        if spec.count > 1 and self.count(names[0], spec.count):
            return True
        return any(c is not None and self.colour(o, c) for o, c in spec.objects)


# ----- scene specifications and captions -----------------------------------------------------------------------
@dataclass(frozen=True)
class SceneSpec:
    """What a scene shows: one task, its objects (name, colour or None), a count, a relation of the first object
    to the second."""

    task: str
    objects: Tuple[Tuple[str, Optional[str]], ...]
    count: int = 1
    relation: Optional[str] = None

    def prompt(self) -> str:
        """The evaluation's phrasing, GenEval's forms ("a photo of" dropped: these are drawings)."""
        return self.captions()[0]

    def captions(self) -> List[str]:
        """The forms people write for this scene, the plainest first."""
        def np_(name, colour):  # noun phrase: "a purple carrot"
            words = f"{colour} {name}" if colour else name
            return f"{article(words)} {words}"

        (a, ca), *rest = self.objects
        if self.task in ("single object", "colours"):
            bare = f"{ca} {a}" if ca else a
            return [np_(a, ca), bare, f"the {bare}", f"a picture of {np_(a, ca)}"]
        if self.task == "counting":
            plural = pluralize(a)
            return [f"{COUNT_WORDS[self.count]} {plural}", f"{self.count} {plural}",
                    f"a picture of {COUNT_WORDS[self.count]} {plural}"]
        b, cb = rest[0]
        if self.task in ("two objects", "colour attribution"):
            return [f"{np_(a, ca)} and {np_(b, cb)}", f"{ca + ' ' if ca else ''}{a} and {cb + ' ' if cb else ''}{b}",
                    f"a picture of {np_(a, ca)} and {np_(b, cb)}"]
        rel = self.relation
        forms = [f"{np_(a, None)} {rel} {np_(b, None)}"]
        if rel in ("left of", "right of"):
            forms += [f"{np_(a, None)} to the {rel} {np_(b, None)}", f"{np_(a, None)} on the {rel} {np_(b, None)}"]
        else:
            forms += [f"{np_(a, None)} is {rel} {np_(b, None)}", f"{a} {rel} {b}"]
        return forms


def random_spec(task: str, objects: Sequence[str], colours_of: Dict[str, List[str]], rng: random.Random) -> SceneSpec:
    """One scene of `task` with objects drawn from `objects` (colours only for objects in `colours_of`)."""
    if task == "single object":
        return SceneSpec(task, ((rng.choice(objects), None),))
    if task == "colours":
        a = rng.choice(sorted(colours_of))
        return SceneSpec(task, ((a, rng.choice(colours_of[a])),))
    if task == "counting":
        return SceneSpec(task, ((rng.choice(objects), None),), count=rng.choice(sorted(COUNT_WORDS)))
    if task == "colour attribution":
        a, b = rng.sample(sorted(colours_of), 2)
        ca = rng.choice(colours_of[a])
        cb = rng.choice([c for c in colours_of[b] if c != ca])  # two colours, so each must go to its object
        return SceneSpec(task, ((a, ca), (b, cb)))
    a, b = rng.sample(list(objects), 2)
    if task == "two objects":
        return SceneSpec(task, ((a, None), (b, None)))
    return SceneSpec(task, ((a, None), (b, None)), relation=rng.choice(RELATIONS))


# ----- composing the pixels -------------------------------------------------------------------------------------
class Renders:
    """Emoji renders cropped to their ink, at any size, recoloured on request (cached)."""

    def __init__(self, objects: Sequence[SceneObject], palette: Dict[str, np.ndarray], source_colour: Dict[str, str]):
        self.by_name = {o.name: o for o in objects}
        self.palette, self.source_colour = palette, source_colour
        self._cache: Dict[Tuple[str, int, Optional[str]], np.ndarray] = {}

    def get(self, name: str, size: int, colour: Optional[str] = None) -> np.ndarray:
        """(h, w, 3) uint8: `name` drawn to fit a `size` x `size` box, cropped to its ink, in `colour`."""
        key = (name, size, colour)
        if key not in self._cache:
            img = render(self.by_name[name].code, size)
            source = self.source_colour.get(name)
            if colour is not None and colour != source:
                if source is None:
                    raise ValueError(f"{name!r} has no main palette colour, so it cannot be drawn {colour}")
                img = recolour(img, self.palette[source], self.palette[colour])
            ink = np.where(ink_mask(img, 24))
            if len(ink[0]):
                img = img[ink[0].min(): ink[0].max() + 1, ink[1].min(): ink[1].max() + 1]
            self._cache[key] = img
        return self._cache[key]


# The size of each object in a scene, as a fraction of the image side: (smallest, largest).
SIZE_RANGE = {"single object": (0.4, 0.9), "colours": (0.4, 0.9), "two objects": (0.34, 0.5),
              "colour attribution": (0.34, 0.5), "position": (0.34, 0.5), 2: (0.32, 0.46), 3: (0.3, 0.4),
              4: (0.28, 0.36)}
MIN_COLOUR_SHARE = 0.3  # an object recolours when one palette colour fills this share of its coloured pixels
GAP = 1 / 16  # the least distance between two objects' boxes, as a fraction of the side


def relation_holds(relation: str, a_centre, b_centre, side: int) -> bool:
    """Whether object a is `relation` object b: its centre lies at least a fifth of the image that way, and
    further that way than across."""
    dx, dy = b_centre[0] - a_centre[0], b_centre[1] - a_centre[1]  # from a to b; y grows downwards
    along, across = {"left of": (dx, dy), "right of": (-dx, dy), "above": (dy, dx), "below": (-dy, dx)}[relation]
    return along >= 0.2 * side and abs(across) <= along


def _layout(sizes: Sequence[Tuple[int, int]], side: int, rng: random.Random, relation: Optional[str] = None,
            tries: int = 200) -> Optional[List[Tuple[int, int]]]:
    """Top-left corners for boxes of `sizes` (h, w) in a side x side image, apart by GAP (and, for two boxes,
    the first `relation` the second), or None when no layout was found."""
    gap = max(1, round(GAP * side))
    for _ in range(tries):
        corners, ok = [], True
        for h, w in sizes:
            if h > side or w > side:
                return None
            y, x = rng.randint(0, side - h), rng.randint(0, side - w)
            for (y2, x2), (h2, w2) in zip(corners, sizes):
                if not (x + w + gap <= x2 or x2 + w2 + gap <= x or y + h + gap <= y2 or y2 + h2 + gap <= y):
                    ok = False
                    break
            if not ok:
                break
            corners.append((y, x))
        if ok and relation:
            (ya, xa), (yb, xb) = corners
            (ha, wa), (hb, wb) = sizes
            ok = relation_holds(relation, (xa + wa / 2, ya + ha / 2), (xb + wb / 2, yb + hb / 2), side)
        if ok:
            return corners
    return None


def compose(spec: SceneSpec, side: int, renders: Renders, rng: random.Random,
            size_range: Optional[Tuple[float, float]] = None):
    """(side, side, 3) uint8 image of `spec`, and its boxes [(name, colour, (x0, y0, x1, y1))], or None when the
    objects did not fit. `size_range` (fractions of the side) replaces the task's SIZE_RANGE."""
    names = [spec.objects[0]] * spec.count if spec.task == "counting" else list(spec.objects)
    low, high = size_range or SIZE_RANGE[spec.count if spec.task == "counting" else spec.task]
    base = rng.uniform(low, high)  # objects of one scene have similar sizes (+-15%)
    for _ in range(4):  # when they do not fit, smaller
        pieces = [renders.get(n, max(4, round(side * base * rng.uniform(0.85, 1.15))), c) for n, c in names]
        corners = _layout([p.shape[:2] for p in pieces], side, rng, spec.relation)
        if corners is not None:
            break
        base *= 0.9
    else:
        return None
    canvas = np.full((side, side, 3), 255, np.uint8)
    boxes = []
    for (name, colour), piece, (y, x) in zip(names, pieces, corners):
        h, w = piece.shape[:2]
        canvas[y:y + h, x:x + w] = np.minimum(canvas[y:y + h, x:x + w], piece)
        boxes.append((name, colour, (x, y, x + w, y + h)))
    return canvas, boxes


def grounding_phrases(spec: SceneSpec, canvas: np.ndarray, boxes) -> List[Tuple[str, np.ndarray]]:
    """Each object's phrase, as every caption of `spec` writes it ("red cat", "cat", "bananas"), and the (side, side)
    bool mask of its ink in `canvas` (`compose`'s boxes; a count's copies share the plural's mask), in caption order.
    What the grounding loss (training/grounding.py) teaches each phrase's tokens to attend to."""
    ink = ink_mask(canvas, 20)  # darker than paper (the renders' antialiased edges included)
    masks: Dict[str, np.ndarray] = {}
    for name, colour, (x0, y0, x1, y1) in boxes:
        phrase = pluralize(name) if spec.task == "counting" else f"{colour} {name}" if colour else name
        mask = masks.setdefault(phrase, np.zeros(ink.shape, bool))
        mask[y0:y1, x0:x1] |= ink[y0:y1, x0:x1]
    return list(masks.items())


@dataclass
class SceneWorld:
    """Everything the scenes are made of: the objects, which colours each can be drawn in, the renders, and the
    held-out rule."""

    objects: List[SceneObject]
    colours_of: Dict[str, List[str]]  # recolourable object -> the colour words it can be drawn in
    renders: Renders
    rule: HeldOut = field(default_factory=HeldOut)
    _pools: Dict[bool, Tuple[List[str], Dict[str, List[str]]]] = field(default_factory=dict, init=False, repr=False)

    @property
    def names(self) -> List[str]:
        return [o.name for o in self.objects]

    def specs(self, task: str, n: int, held_out: bool, seed: int) -> List[SceneSpec]:
        """`n` distinct specs of `task`, all held out (evaluation) or all seen (training), drawn with `seed`."""
        rng = random.Random(f"{task}:{seed}:{held_out}")
        out, seen = [], set()
        for _ in range(200 * n):
            if len(out) >= n:
                break
            spec = self.draw_spec(task, held_out, rng)
            if spec is None or spec in seen:
                continue
            seen.add(spec)
            out.append(spec)
        return out

    def draw_spec(self, task: str, held_out: bool, rng: random.Random) -> Optional[SceneSpec]:
        """One random spec of `task`, or None when it is not of the split asked (held out or seen)."""
        pool, colours = self._pool(task, held_out)
        spec = random_spec(task, pool, colours, rng)
        held = self.rule.is_held_out(spec) if task != "single object" else self.rule.alone_only(spec.objects[0][0])
        return spec if held == held_out else None

    def restricted(self, n: int) -> "SceneWorld":
        """The same world with `n` of its objects: a deterministic choice (a hash of each name) that keeps some of
        every kind the tasks need: an eighth alone-only (the held-out single objects), a quarter recolourable (the
        colour tasks), the rest any. A small world tells whether a recipe learns compositions at all in the steps
        a CPU gives, before a long run spends them on all the objects (docs/training.md, "A small world")."""
        if not 0 < n <= len(self.objects):
            raise ValueError(f"a small world holds 1 to {len(self.objects)} objects, not {n}")
        ranked = sorted(self.names, key=lambda name: _hash01("small world", name))
        alone = [o for o in ranked if self.rule.alone_only(o)]
        colourable = [o for o in ranked if o in self.colours_of and o not in alone]
        wanted = alone[:max(1, n // 8)] + colourable[:max(2, n // 4)]
        wanted += [o for o in ranked if o not in wanted][:n - len(wanted)]
        chosen = set(wanted[:n])
        if len(chosen & set(self.colours_of)) < 2:
            raise ValueError(f"a small world of {n} objects holds fewer than two recolourable ones (colour attribution)")
        return SceneWorld([o for o in self.objects if o.name in chosen],
                          {o: c for o, c in self.colours_of.items() if o in chosen}, self.renders, self.rule)

    def _pool(self, task: str, held_out: bool) -> Tuple[List[str], Dict[str, List[str]]]:
        """The objects a split's specs of `task` draw from, and the colours of the recolourable ones. Training scenes
        never show an alone-only object beside others; held-out ones may (the hardest case)."""
        everyone = held_out or task == "single object"
        if everyone not in self._pools:
            pool = self.names if everyone else [o for o in self.names if not self.rule.alone_only(o)]
            kept = set(pool)
            self._pools[everyone] = pool, {o: c for o, c in self.colours_of.items() if o in kept}
        return self._pools[everyone]


def scene_world(emojis: Sequence[Emoji], images32: np.ndarray, held_out_emoji: Sequence[str],
                rule: Optional[HeldOut] = None) -> SceneWorld:
    """The scene objects of the emoji corpus (`images32`: its 32 px renders, an array or a data.RenderedRows) and the
    colours each can take."""
    from .recolour import palette

    objects = scene_objects(emojis, held_out_emoji)
    colours = palette(emojis, images32, held_out_emoji)
    source, colours_of = {}, {}
    for o in objects:
        # Objects are not faces or hands, so yellow ones recolour too (the emoji recipe skips yellow: skin).
        c = main_colour(np.asarray(images32[o.index]), colours, min_share=MIN_COLOUR_SHARE)
        if c is not None:
            source[o.name] = c
            colours_of[o.name] = [w for w in COLOUR_WORDS if w in colours]
    return SceneWorld(objects, colours_of, Renders(objects, colours, source), rule or HeldOut())


def load_scene_world(rule: Optional[HeldOut] = None) -> SceneWorld:
    from .data import RenderedRows, emoji_pack, held_out_split, load_emoji, rendered_corpus

    emojis = load_emoji()
    # An emoji pack holds the SVGs of the rows the world reads and no others: those rows are rendered as read.
    images32 = RenderedRows(emojis, 32) if emoji_pack() else np.asarray(rendered_corpus(emojis, 32))
    return scene_world(emojis, images32, held_out_split(emojis), rule)


def scene_dataset(world: SceneWorld, size: int, per_task: int, seed: int = 0,
                  tasks: Sequence[str] = TASKS) -> CaptionedImages:
    """`per_task` training scenes (no held-out combination) of each task at `size` px, every image captioned in
    all the forms of its spec; family "scenes: <task>"."""
    images, captions, families = [], [], []
    for task in tasks:
        rng = random.Random(f"compose:{task}:{seed}")
        specs = world.specs(task, per_task, held_out=False, seed=seed)
        for k in range(per_task):
            spec = specs[k % len(specs)]
            made = compose(spec, size, world.renders, rng)
            if made is None:
                continue
            images.append(made[0])
            captions.append(spec.captions())
            families.append(FAMILY_PREFIX + task)
    return CaptionedImages(np.stack(images), captions, families)


class LiveScenes:
    """Training scenes composed afresh at every draw, in place of a training folder's stored ones.

    A stored corpus holds a few thousand scenes per task, so of the ~50,000 object pairs a run sees each stored
    pair about once, always in the same layout. Drawn live, every batch shows new seen combinations (never a
    held-out one: `HeldOut` rejects them) at new sizes and places, so what the stage can learn is the relation, not
    the stored images. Rows of other families are passed through unchanged."""

    def __init__(self, world: SceneWorld, size: int, all_captions: bool = True,
                 size_ranges: Optional[Dict[str, Sequence[float]]] = None):
        self.world, self.size, self.all_captions = world, size, all_captions
        # task -> (smallest, largest) object size as a fraction of the side, in place of SIZE_RANGE's
        self.size_ranges = {task: tuple(r) for task, r in (size_ranges or {}).items()}
        unknown = set(self.size_ranges) - set(TASKS)
        if unknown:
            raise ValueError(f"scene_size_ranges: no such task {sorted(unknown)} (tasks: {TASKS})")

    def spec(self, task: str, rng: random.Random) -> SceneSpec:
        """A random seen spec of `task` (SceneWorld.draw_spec, as the stored corpus draws them): no held-out
        combination, and no alone-only object, single objects included (the evaluation's held-out single objects)."""
        for _ in range(1000):
            spec = self.world.draw_spec(task, False, rng)
            if spec is not None:
                return spec
        raise RuntimeError(f"no seen {task!r} scene in 1000 draws")

    def draw(self, task: str, rng: random.Random) -> Tuple[np.ndarray, str]:
        """A fresh (size, size, 3) uint8 scene of `task` and one of its captions."""
        image, caption, _ = self.draw_grounded(task, rng)
        return image, caption

    def draw_grounded(self, task: str, rng: random.Random) -> Tuple[np.ndarray, str, List[Tuple[str, np.ndarray]]]:
        """`draw`, with where each object's phrase of the caption is drawn (`grounding_phrases`)."""
        for _ in range(100):  # compose gives up on a layout now and then (four objects in a small image)
            spec = self.spec(task, rng)
            made = compose(spec, self.size, self.world.renders, rng, self.size_ranges.get(task))
            if made is not None:
                captions = spec.captions()
                caption = rng.choice(captions) if self.all_captions else captions[0]
                return made[0], caption, grounding_phrases(spec, *made)
        raise RuntimeError(f"no {task!r} scene fitted in a {self.size} px image in 100 tries")

    def item(self, data: CaptionedImages, i: int, rng: random.Random, grounded: bool = False):
        """Row `i` of `data`: a fresh scene of its task when it is a scene row, else its image and a caption; with
        `grounded`, a third item: the scene's `grounding_phrases` ([] for a row that is not a scene)."""
        task = scene_task(data, i)
        if task is not None:
            made = self.draw_grounded(task, rng)
            return made if grounded else made[:2]
        plain = data.images[i], data.sample_caption(i, rng)
        return (*plain, []) if grounded else plain


def scene_task(data: CaptionedImages, i: int) -> Optional[str]:
    """The GenEval task row `i` of `data` is a scene of (its family "scenes: <task>"), or None for any other row."""
    family = data.families[i] if data.families else None
    return family[len(FAMILY_PREFIX):] if family and family.startswith(FAMILY_PREFIX) else None


def shrink_onto_white(image: np.ndarray, fraction: float, rng: random.Random) -> np.ndarray:
    """`image` (on white) shrunk to `fraction` of its side and pasted at a random place on a white image of its size:
    a base stage larger than the one that learned the emoji sees them at the scale it drew them (a 64 px stage
    trained from the 32 px one, emoji at ~32 px), so what it knew carries over to the objects of its scenes."""
    side = image.shape[0]
    small = max(4, round(side * fraction))
    piece = np.asarray(Image.fromarray(image).resize((small, small), Image.BOX))
    y, x = rng.randint(0, side - small), rng.randint(0, side - small)
    canvas = np.full_like(image, 255)
    canvas[y:y + small, x:x + small] = piece
    return canvas


def held_out_lines(world: SceneWorld, per_task: int = 32, seed: int = 0) -> List[str]:
    """The held-out list shipped with the weights: the rule, the alone-only objects, and the evaluation's held-out
    prompts by task."""
    rule = world.rule
    lines = [f"# Scene combinations kept out of training: a hash of each combination's parts below "
             f"{rule.fraction:g} (object pairs, object x count, object x colour, ordered pair x relation), and the "
             f"objects shown only alone (hash below {rule.alone_fraction:g}). imagen_app/training/scenes.py: HeldOut.",
             "[objects shown only alone]"]
    lines += [o for o in world.names if rule.alone_only(o)]
    for task in TASKS:
        lines.append(f"[{task}]")
        lines += [s.prompt() for s in world.specs(task, per_task, held_out=True, seed=seed)]
    return lines


# ----- the training folder ---------------------------------------------------------------------------------------
def scene_texts(world: SceneWorld) -> Tuple[List[str], Dict[str, str]]:
    """Every word the scene captions use (held-out prompts included: text only, no image), and the old word each
    new one stands for (a plural for its singular, a digit for its number word): what the text encoder is
    extended with (text_extension.py)."""
    texts = [o.plural for o in world.objects]
    for task in TASKS:
        for spec in world.specs(task, 8, held_out=False, seed=0):
            texts += spec.captions()
    texts.append("a cat to the left of a dog, on the right of it, is above or below it")  # every relation word
    stands_for = {o.plural: o.name for o in world.objects if o.plural != o.name}
    stands_for.update({str(n): w for n, w in COUNT_WORDS.items()})
    return texts, stands_for


def write_scene_training_folder(out: str, size: int = 32, per_task: int = 3000, seed: int = 0) -> Dict[str, int]:
    """The base stage's training images as one image folder (`data.image_folder_dataset` reads it): the emoji
    corpus's training split (CLDR names), its recoloured emoji (minus any that would show a held-out object x
    colour), and `per_task` scenes of each task; each row carries its family. Returns images per family."""
    from .data import emoji_dataset, write_image_folder
    from .recolour import FAMILY, with_recoloured

    world = load_scene_world()
    emoji = with_recoloured(emoji_dataset(size, "train", templates=False), size)
    keep = [i for i, (caps, fam) in enumerate(zip(emoji.captions, emoji.families))
            if fam != FAMILY or not _shows_held_out_colour(caps[0], world)]
    scenes = scene_dataset(world, size, per_task, seed)
    data = CaptionedImages(np.concatenate([np.asarray(emoji.images)[keep], scenes.images]),
                           [emoji.captions[i] for i in keep] + scenes.captions,
                           [emoji.families[i] for i in keep] + scenes.families)
    write_image_folder(data, out)
    counts: Dict[str, int] = {}
    for f in data.families:
        counts[f] = counts.get(f, 0) + 1
    return counts


def _shows_held_out_colour(caption: str, world: SceneWorld) -> bool:
    """A recoloured emoji's caption ("green bear") that is a held-out scene object x colour."""
    colour, _, name = caption.partition(" ")
    return name in world.renders.by_name and world.rule.colour(name, colour)
