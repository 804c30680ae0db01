"""Captions in the forms people type: "a cat", "the Japanese flag", "kittens", "a picture of a pizza slice",
"coffee emoji", "Bike!".

A typed form is made from a head (the emoji's name, its plain phrasing, an alias, or a keyword / synonym / plural
of the keyword table, `keywords.py`) with a determiner, an optional frame ("a picture of X", "X emoji"), and an
optional trailing punctuation mark. Case needs no variants: the tokenizer lower-cases. Training shows these forms
with the images of the emoji they stand for, and the evaluation (`evaluation/phrasing.py`) asks with its own list
of everyday prompts.
"""
from __future__ import annotations

import itertools
import random
import re
from typing import Dict, List, Optional, Sequence, Tuple

from ..models.caption_vocabulary import FRAME_NOUNS
from .keywords import STRONG

DETERMINERS = [("", 0.40), ("a", 0.30), ("the", 0.15), ("some", 0.05), ("my", 0.03), ("this", 0.03), ("one", 0.04)]
PLURAL_DETERMINERS = [("", 0.55), ("the", 0.2), ("some", 0.15), ("many", 0.05), ("my", 0.05)]
# What people ask for a picture of: "a picture of X", "a sketch of X" (FRAME_NOUNS). "<noun> of" is read as one
# word of its own (`FRAME_PHRASES`; text_extension.extended_tokenizer), whose meaning the text encoder learns.
FRAME_PHRASES = [f"{noun} of" for noun in FRAME_NOUNS]
VERB_PHRASES = ["show me", "draw me"]  # read as one word each too (`TextTuningConfig.verb_phrases`)
# What people ask for a portion of: "a slice of pizza", "a cup of tea" (with `PhrasingSampler.portions`, a keyword of
# these with another keyword of the same emoji is put as "<portion> of <keyword>" or "<keyword> <portion>")
PORTION_NOUNS = ("slice", "cup", "piece", "bowl", "glass", "mug", "plate", "bottle", "box", "bag", "bunch", "jar", "pot",
                 "can", "bar", "loaf", "scoop", "basket", "pile", "stack")
# With `TextTuningConfig.portion_phrases`, "<portion> of" reads as one word too ("cup_of"), and typed forms put a head
# in it now and then ("a cup of coffee" -> "cup_of coffee", learned as the frame phrases are); a portion phrase that
# a caption holds ("glass of milk") stays its words
PORTION_PHRASES = [f"{noun} of" for noun in PORTION_NOUNS]
# (frame, weight, how often the head inside takes a determiner: "a picture of a cat", but mostly "cat emoji")
FRAMES = [("{}", 0.50, 1.0), ("{} emoji", 0.10, 0.3), ("{} icon", 0.04, 1.0), ("emoji of {}", 0.02, 1.0),
          ("{} emoji please", 0.02, 1.0), ("draw {}", 0.03, 1.0), ("draw me {}", 0.01, 1.0), ("show me {}", 0.02, 1.0),
          ("a cute {}", 0.01, 0.0), ("a little {}", 0.01, 0.0), ("{} drawing", 0.01, 0.3), ("{} sticker", 0.01, 0.3)]


def _noun_of(noun: str) -> str:
    """The frame "a/an <noun> of {}" ("an image of {}")."""
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun} of {{}}"


FRAMES += [(_noun_of(noun), weight, 1.0) for noun, weight in FRAME_NOUNS.items()]


def portion_frames(weight: float = 0.004) -> List[Tuple[str, float, float]]:
    """The frames "a cup of {}", "a slice of {}", ..., each drawn with `weight` (the share a frame noun has: 0.004 in
    session 19's run)."""
    return [(_noun_of(noun), weight, 0.0) for noun in PORTION_NOUNS]


# the frames a name is put in by `framed_caption` (every one but the bare name)
TYPED_FRAMES = [f for f in FRAMES if f[0] != "{}"]
# the words of the forms around a head: not keywords, whatever the table says ("emoji", "cute")
FORM_WORDS = frozenset(w for frame, _, _ in FRAMES for w in frame.replace("{}", " ").split()) | frozenset(
    w for w, _ in DETERMINERS + PLURAL_DETERMINERS if w) | {"an"}


def alone_context() -> Tuple[str, str]:
    """Where a head stands alone in a typed form, as the tokenizer sees it (lower case, a leading article gone,
    "picture of" as "picture_of"): the regexes of what may come before it (each alternative of a fixed length, as a
    look-behind needs) and after it. "cowboy", "a cute cowboy", "cowboy emoji please!", "picture_of a cowboy", "show me
    the cowboy"; not "cowboy hat face", "happy cowboy"."""
    from .text_extension import phrase_token

    befores, afters = {""}, {""}
    for frame, _, _ in FRAMES:
        before, after = frame.split("{}")
        for phrase in FRAME_PHRASES:  # (as the tokenizer reads them: text_extension.extended_tokenizer)
            before = before.replace(phrase, phrase_token(phrase))
        before = re.sub(r"^(a|an) ", "", before.strip())
        befores.add(before + " " if before else "")
        afters.add(after)
    determiners = {""} | {w + " " for w, _ in DETERMINERS + PLURAL_DETERMINERS if w} | {"an "}
    # (sorted by length, then text: the same regex in every run)
    behind = "|".join(sorted({"^" + re.escape(f"{b}{d}") for b in befores for d in determiners}, key=lambda r: (len(r), r)))
    ahead = "|".join(re.escape(a) for a in sorted(afters, key=lambda a: (-len(a), a)))
    return behind, f"(?:{ahead})[\\s.!?]*$"


PUNCTUATION = [("", 0.85), (".", 0.05), ("!", 0.05), ("?", 0.05)]
FLAG_FORMS = ["flag of {}", "the flag of {}", "{} flag", "the {} flag", "flag {}", "{}'s flag", "{}"]


def _pick(rng: random.Random, weighted: Sequence[Tuple[str, float]]) -> str:
    return rng.choices([w for w, _ in weighted], [p for _, p in weighted])[0]


def article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def with_determiner(head: str, rng: random.Random, is_plural: bool = False) -> str:
    det = _pick(rng, PLURAL_DETERMINERS if is_plural else DETERMINERS)
    if det == "a":
        det = article(head)
    return f"{det} {head}".strip()


def typed_form(head: str, rng: random.Random, is_plural: bool = False, frames: Sequence[Tuple[str, float, float]] = FRAMES) -> str:
    """One typed form of `head` ("kitten" -> "a picture of a kitten!") in one of `frames`."""
    frame, _, with_det = rng.choices(frames, [w for _, w, _ in frames])[0]
    inner = with_determiner(head, rng, is_plural) if rng.random() < with_det else head
    return frame.format(inner) + _pick(rng, PUNCTUATION)


def framed_caption(caption: str, rng: random.Random, share: float) -> str:
    """`caption` as it is, or with probability `share` in a frame people type around a name (FRAMES but the bare
    one: "draw a pizza", "pizza emoji", "a picture of a pizza!"): what a stage trains on to draw a name the same in
    the forms people type (`TrainConfig.typed_form_share`). Names with a colon (skin tones, flags: their own
    forms) stay as they are. No draw from `rng` at share 0, so that a run without frames draws as before."""
    if share <= 0 or ":" in caption or rng.random() >= share:
        return caption
    return typed_form(caption, rng, frames=TYPED_FRAMES)


def flag_form(country: str, rng: random.Random) -> str:
    """"flag: japan" -> "the flag of japan", "japan flag", ..."""
    return rng.choice(FLAG_FORMS).format(country) + _pick(rng, PUNCTUATION)


def shares_start(word: str, name: str) -> bool:
    """Whether a word of `name` starts as `word` does, or is in it ("apples" / "red apple", "plane" / "airplane")."""
    return any(x.startswith(word[:4]) or word.startswith(x[:4]) or word in x for x in re.findall(r"\w+", name))


class PhrasingSampler:
    """Draws (typed prompt, emoji name) pairs: `keyword_share` from the keyword table (keywords, synonyms, plurals,
    country adjectives), the rest from the names themselves in typed forms (articles, frames, flag forms)."""

    def __init__(self, names: Sequence[str], table: Dict[str, List[str]], plural_heads: Sequence[str] = (),
                 keyword_share: float = 0.7, zipf: Optional[Dict[str, float]] = None, frequency_power: float = 1.0,
                 meanings: Optional[Dict[str, Tuple[List[str], float]]] = None):
        self.names = list(names)
        self.meanings = meanings or {}  # typed -> (the emoji WordNet says it means, how strongly): `modes`
        self._names = set(self.names)
        self.keyword_share = keyword_share  # the share of draws from the table (the rest: the names, typed)
        self.frames = list(FRAMES)  # the frames typed forms are drawn in
        self.portions: Sequence[str] = ()  # keywords put before another as "<portion> of" (PORTION_NOUNS)
        self.table = {typed: [n for n in targets if n in self._names] for typed, targets in table.items()}
        self.table = {typed: targets for typed, targets in self.table.items() if targets}
        self.typed = sorted(self.table)
        # A typed head is drawn in proportion to how common it is in English (2^(Zipf - 4), within 0.1-4: "music" 2.9,
        # "kitten" 0.8, "medico" 0.2): the words people type are the common ones. Uniform without frequencies.
        # `frequency_power` sharpens it (2: "music" 8.4, "kitten" 0.6, "medico" 0.01).
        zipf = zipf or {}
        self._cumulative = list(itertools.accumulate(
            min(4.0 ** frequency_power, max(0.1 ** frequency_power, 2 ** (frequency_power * (zipf[t] - 4))))
            if t in zipf else 1.0 for t in self.typed))
        self.plural_heads = set(plural_heads)  # typed heads that are plurals (for their determiners)
        self._by_name: Dict[str, List[str]] = {}  # emoji name -> the typed heads that stand for it
        for typed, targets in self.table.items():
            for n in targets:
                self._by_name.setdefault(n, []).append(typed)

    def heads_of(self, name: str) -> List[str]:
        """The typed heads that stand for the emoji `name`."""
        return self._by_name.get(name, [])

    def target(self, typed: str, rng: random.Random) -> str:
        """One emoji the typed head stands for; those whose name holds the typed word are drawn 4x as often."""
        targets = self.table[typed]
        weights = [4.0 if f" {typed} " in f" {n} " else 1.0 for n in targets]
        return rng.choices(targets, weights)[0]

    def modes(self, typed: str) -> List[str]:
        """The emoji a typed head may be drawn as: an emoji name itself alone; else those of its targets whose name
        holds the head as a word, or a word that the head begins ("music" -> "musical note"; heads of 5 letters or
        more); else those that share its start ("poop" -> "pile of poo"); else those it `means` by WordNet
        ("doctor" -> the health workers, not the pill); else all of its targets. A strong meaning overrules names
        that hold the head only after "with" ("bunny" -> the rabbits: "people with bunny ears" are people)."""
        if typed in self._names:
            return [typed]
        targets = self.table[typed]
        named = [n for n in targets if f" {typed} " in f" {n} " or (len(typed) >= 5 and any(
            w.startswith(typed) for w in n.replace(":", " ").split()))]
        meant, score = self.meanings.get(typed, ([], 0.0))
        meant = [n for n in meant if n in targets]
        if named and not (meant and score >= STRONG and all(f" {typed} " not in f" {n.split(' with ')[0]} " for n in named)):
            return named
        if named:
            return meant
        return [n for n in targets if shares_start(typed, n)] or meant or list(targets)

    def sample(self, rng: random.Random) -> Tuple[str, str]:
        typed, name, _ = self.sample_with_modes(rng)
        return typed, name

    def sample_with_modes(self, rng: random.Random) -> Tuple[str, str, List[str]]:
        """(typed prompt, an emoji it stands for, every emoji it may be drawn as): a name in a typed form has itself
        alone; a keyword its `modes`; two keywords combined the targets that both have."""
        if self.typed and rng.random() < self.keyword_share:
            head = rng.choices(self.typed, cum_weights=self._cumulative)[0]
            modes = self.modes(head)
            name = head if head in self._names else self.target(head, rng)  # a name stands for itself alone
        else:
            name = rng.choice(self.names)
            if name.startswith("flag: ") and rng.random() < 0.7:
                return flag_form(name[len("flag: "):], rng), name, [name]
            head = " ".join(name.replace(":", " ").replace(",", " ").split()) if rng.random() < 0.5 else name
            modes = [name]
        if head not in self.plural_heads and rng.random() < 0.15:  # two keywords of one emoji, as people combine them ("pizza slice", "hot coffee")
            others = [t for t in self._by_name.get(name, []) if " " not in t and t not in self.plural_heads
                      and not any(t[:4] == w[:4] for w in head.split())]  # not "kittens kitten"
            if others:
                other = rng.choice(others)
                if len(modes) > 1:  # a keyword's: "sad face" may be any emoji that has both ("sad" and "face")
                    modes = [n for n in self.table[head] if n in set(self.table[other])]
                if other in self.portions or head in self.portions:  # "a slice of pizza", "a pizza slice"
                    portion, food = (other, head) if other in self.portions else (head, other)
                    head = f"{portion} of {food}" if rng.random() < 0.5 else f"{food} {portion}"
                else:
                    head = f"{other} {head}" if rng.random() < 0.5 else f"{head} {other}"
        if name not in modes:  # (a combination's modes can lose the drawn name's side: it is kept)
            modes = modes + [name]
        is_plural = head in self.plural_heads or head.split()[-1] in self.plural_heads
        return typed_form(head, rng, is_plural=is_plural, frames=self.frames), name, modes
