"""Recoloured emoji: synthetic "<colour> <name>" training images, so that a colour word is learned as a colour.

In the corpus a colour word comes with few shapes ("purple" only with "square" once the held-out compositions
are out), so the model learns "purple square" as one thing and draws the held-out "purple heart" as a heart of
a colour it saw with hearts. Recolouring seen emoji whose main colour is one of OpenMoji's palette colours
("balloon" is red: "purple balloon", "blue balloon", ...) shows each colour word with many shapes. No
recoloured caption is a real emoji's name (held out or not), so the held-out compositions stay unseen.

The recolouring works on the rendered pixels: OpenMoji fills flat areas with palette colours, outlined in black
on white, so every pixel is (up to anti-aliasing) a mix of one fill colour with black or with white. A pixel that
mixes the source colour with black or white keeps its mix and gets the target colour instead.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from .data import COLOURS, SHAPES, CaptionedImages, Emoji

# The colours recoloured to and from: the palette colours whose words the corpus has (black and white are the
# outline and background, so they cannot be told from a mix).
COLOUR_WORDS = ["red", "orange", "yellow", "green", "blue", "purple", "brown"]
FAMILY = "recoloured"
_COLOUR_OR_SHAPE = {w for c in COLOURS for w in c.split()} | set(SHAPES)
_MIX_TOLERANCE = 24.0  # max RGB distance of a pixel from the line between the fill colour and black or white


def palette(emojis: Sequence[Emoji], images: np.ndarray, held_out: Sequence[str]) -> Dict[str, np.ndarray]:
    """Each colour word's RGB, read from its seen "<colour> circle|square|heart" renders: the most common pixel
    colour that is neither near-white nor near-black."""
    held = set(held_out)
    found: Dict[str, np.ndarray] = {}
    for colour in COLOUR_WORDS:
        pixels = [images[i].reshape(-1, 3) for i, e in enumerate(emojis)
                  if e.caption in (f"{colour} circle", f"{colour} square", f"{colour} heart") and e.caption not in held]
        if not pixels:
            continue
        px = np.concatenate(pixels).astype(int)
        px = px[(px.max(axis=1) - px.min(axis=1)) > 40]  # saturated: not white, black or grey (outline, background)
        if len(px):
            values, counts = np.unique(px, axis=0, return_counts=True)
            found[colour] = values[counts.argmax()].astype(np.float32)
    return found


def _mix_weight(pixels: np.ndarray, colour: np.ndarray, other: np.ndarray):
    """For each pixel (N, 3): the weight a of `colour` in a * colour + (1 - a) * other, and its distance from
    that line."""
    direction = colour - other
    a = ((pixels - other) @ direction) / float(direction @ direction)
    a = np.clip(a, 0.0, 1.0)
    distance = np.linalg.norm(pixels - (other + a[:, None] * direction), axis=1)
    return a, distance


def recolour(image: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: every pixel that mixes `source` with white or with black mixes `target` instead."""
    px = image.reshape(-1, 3).astype(np.float32)
    out = px.copy()
    best = np.full(len(px), _MIX_TOLERANCE)
    for other in (np.zeros(3, np.float32), np.full(3, 255.0, np.float32)):
        a, distance = _mix_weight(px, source, other)
        take = (distance < best) & (a > 0.1)
        out[take] = other + a[take, None] * (target - other)
        best = np.where(take, distance, best)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(image.shape)


def main_colour(image: np.ndarray, colours: Dict[str, np.ndarray], min_share: float = 0.4,
                tolerance: float = 12.0) -> Optional[str]:
    """The palette colour that fills most of the emoji (at least `min_share` of its non-white, non-black
    pixels, each within `tolerance` of it: exact renders need little, generated images more), or None."""
    px = image.reshape(-1, 3).astype(np.float32)
    inked = px[(px.max(axis=1) - px.min(axis=1)) > 40]
    if len(inked) < 0.05 * len(px):
        return None
    names = list(colours)
    distances = np.stack([np.linalg.norm(inked - colours[c], axis=1) for c in names])  # (C, N)
    nearest = distances.argmin(axis=0)
    close = distances.min(axis=0) < tolerance
    shares = [float(((nearest == k) & close).mean()) for k in range(len(names))]
    k = int(np.argmax(shares))
    return names[k] if shares[k] >= min_share else None


def recoloured_emoji(emojis: Sequence[Emoji], images: np.ndarray, held_out: Sequence[str],
                     max_sources: int = 120) -> CaptionedImages:
    """Synthetic training images: each seen single emoji whose main colour is a palette colour, in every other
    palette colour, captioned "<colour> <name>" ("purple balloon"; for a name that starts with its colour,
    "green book", the word is replaced: "purple book"). Captions that name a real emoji are skipped, so none of
    the held-out compositions is made."""
    held = set(held_out)
    real = {e.caption for e in emojis}
    colours = palette(emojis, images, held_out)
    out_images: List[np.ndarray] = []
    captions: List[List[str]] = []
    sources = 0
    per_first_word: Dict[str, int] = {}
    made_captions = set()
    for i, e in enumerate(emojis):
        if e.family != "single emoji" or e.caption in held or ":" in e.caption or len(e.caption.split()) > 3:
            continue
        if per_first_word.get(e.caption.split()[0], 0) >= 2:
            continue  # a few of each kind ("keycap 0", "keycap 1"): many kinds, not many keycaps
        source = main_colour(images[i], colours)
        # Yellow is the emoji skin and face colour: "brown open hands" would read as a skin tone.
        if source is None or source == "yellow":
            continue
        words = e.caption.split()
        name = " ".join(words[1:]) if words[0] in COLOUR_WORDS else e.caption
        if _COLOUR_OR_SHAPE & set(name.split()):
            continue  # "purple light blue heart", "purple anatomical heart": too near the held-out "purple heart"
        if words[0] in COLOUR_WORDS and words[0] != source:
            continue  # "green apple" drawn mostly red: the name and the pixels disagree
        made = 0
        for target in colours:
            caption = f"{target} {name}"
            if target == source or caption in real or caption in made_captions:
                continue
            made_captions.add(caption)
            out_images.append(recolour(images[i], colours[source], colours[target]))
            captions.append([caption])
            made += 1
        sources += made > 0
        per_first_word[e.caption.split()[0]] = per_first_word.get(e.caption.split()[0], 0) + (made > 0)
        if sources >= max_sources:
            break
    size = images.shape[1]
    stacked = np.stack(out_images) if out_images else np.zeros((0, size, size, 3), np.uint8)
    return CaptionedImages(stacked, captions, [FAMILY] * len(captions))


def names_inside(recoloured: CaptionedImages, emojis: Sequence[Emoji]) -> List[str]:
    """The seen single emoji whose whole name is a part of a recoloured emoji's name ("kiss" in "purple kiss
    mark", "beetle" in "blue lady beetle"): the words the colour recipe drills in another emoji's picture, so
    the ones it may pull towards that picture."""
    names = {" " + " ".join(c[0].split()[1:]) + " " for c in recoloured.captions}
    return sorted(e.caption for e in emojis if e.family == "single emoji"
                  and any(f" {e.caption} " in n and n != f" {e.caption} " for n in names))


def with_recoloured(data: CaptionedImages, size: int) -> CaptionedImages:
    """`data` (the emoji corpus at `size` px) followed by the recoloured emoji of the whole corpus's seen part."""
    from .data import held_out_split, load_emoji, rendered_corpus

    emojis = load_emoji()
    extra = recoloured_emoji(emojis, np.asarray(rendered_corpus(emojis, size)), held_out_split(emojis))
    return CaptionedImages(np.concatenate([data.images, extra.images]), data.captions + extra.captions,
                           data.families + extra.families)
