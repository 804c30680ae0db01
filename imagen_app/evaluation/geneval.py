"""GenEval (Ghosh et al. 2023) in the emoji world: six tasks, each image judged right or wrong by a detector.

GenEval judges a generated image with an object detector: "a cat" is right when a cat is found, "three apples"
when exactly three are, "a cat left of a pizza" when both are found and their centres are placed so, "a red cat
and a blue rocket" when each object has its own colour. Here the detector is this module's own: the scenes are
ink on white, so every blob of ink is one object; a blob is classified by a colour-blind shape feature (its
outline and silhouette) against the real renders of every scene object, and its colour is the palette colour
that fills most of it. `detector_ceiling` runs the same detector on scenes composed from the real renders: the
score a perfect generator would get.

Prompts come from `training.scenes`: held-out combinations (never trained on) and seen ones, scored apart.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from ..images import ink_mask
from ..training.recolour import COLOUR_WORDS
from ..training.scenes import TASKS, SceneSpec, SceneWorld, compose, relation_holds

WORK_SIZE = 128  # every image is judged at this size
GRID = 16  # the shape feature's resolution
MIN_AREA = 0.004  # blobs smaller than this share of the image are noise
INK = 40  # a pixel is ink when it is this far from white (max over channels)


@dataclass
class Blob:
    box: Tuple[int, int, int, int]  # x0, y0, x1, y1 at WORK_SIZE
    centre: Tuple[float, float]
    label: str  # the nearest scene object
    colour: Optional[str]  # the palette colour filling it, or None


def _components(mask: np.ndarray) -> List[np.ndarray]:
    """The 8-connected components of a boolean (H, W) mask, each as an (N, 2) array of (y, x)."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    out = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        stack, pixels = [(y0, x0)], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            pixels.append((y, x))
            for yy in (y - 1, y, y + 1):
                for xx in (x - 1, x, x + 1):
                    if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not seen[yy, xx]:
                        seen[yy, xx] = True
                        stack.append((yy, xx))
        out.append(np.array(pixels))
    return out


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3 x 3 dilation: joins the parts of one emoji that anti-aliasing or a thin gap split."""
    p = np.pad(mask, 1)
    return np.max([p[dy:dy + mask.shape[0], dx:dx + mask.shape[1]] for dy in range(3) for dx in range(3)], axis=0)


def shape_feature(crop: np.ndarray) -> np.ndarray:
    """A colour-blind description of an (h, w, 3) uint8 crop of one object: its silhouette and its dark outline,
    padded to a square and pooled to GRID x GRID, centred and unit length."""
    px = crop.astype(np.float32)
    ink = np.clip(((255 - px).max(axis=2) - 24) / 80, 0, 1)  # anything not white
    outline = np.clip((150 - px.max(axis=2)) / 110, 0, 1)  # black and near-black, whatever the fill colour
    h, w = ink.shape
    side = max(h, w)
    feats = []
    for m in (ink, outline):
        sq = np.zeros((side, side), np.float32)
        sq[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = m
        feats.append(np.asarray(Image.fromarray(sq).resize((GRID, GRID), Image.BOX)).ravel())
    f = np.concatenate(feats)
    f = f - f.mean()
    return f / (np.linalg.norm(f) + 1e-8)


class Detector:
    """Finds the objects of a scene image: blobs of ink, each labelled with the nearest real render's name."""

    def __init__(self, world: SceneWorld, reference_sizes: Sequence[int] = (16, 24, 32, 48, 64)):
        self.world = world
        self.names = world.names
        self.palette = {c: world.renders.palette[c] for c in COLOUR_WORDS if c in world.renders.palette}
        # each object at several sizes: small renders anti-alias differently from large ones
        feats, owners = [], []
        for size in reference_sizes:
            for k, name in enumerate(self.names):
                feats.append(shape_feature(world.renders.get(name, size)))
                owners.append(k)
        self.features = np.stack(feats)  # (R, 2 * GRID^2)
        self.owners = np.array(owners)

    def classify(self, crop: np.ndarray) -> str:
        scores = self.features @ shape_feature(crop)
        return self.names[self.owners[int(scores.argmax())]]

    def colour_of(self, crop: np.ndarray, mask: np.ndarray) -> Optional[str]:
        """The palette colour nearest to most of the blob's saturated pixels (outline and white excluded)."""
        px = crop[mask].astype(np.float32)
        px = px[(px.max(axis=1) - px.min(axis=1)) > 40]
        if len(px) < 4:
            return None
        names = list(self.palette)
        d = np.stack([np.linalg.norm(px - self.palette[c], axis=1) for c in names])
        votes = np.bincount(d.argmin(axis=0), minlength=len(names))
        return names[int(votes.argmax())]

    def detect(self, image) -> List[Blob]:
        """The blobs of `image` (PIL or (H, W, 3) uint8, any size), largest first."""
        img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
        img = img.convert("RGB")
        resample = Image.BOX if img.width >= WORK_SIZE else Image.BILINEAR
        px = np.asarray(img.resize((WORK_SIZE, WORK_SIZE), resample))
        ink = ink_mask(px, INK)
        blobs = []
        for comp in _components(_dilate(ink)):
            if len(comp) < MIN_AREA * WORK_SIZE * WORK_SIZE:
                continue
            y0, x0 = comp.min(axis=0)
            y1, x1 = comp.max(axis=0) + 1
            crop = px[y0:y1, x0:x1]
            own = np.zeros((y1 - y0, x1 - x0), bool)
            own[comp[:, 0] - y0, comp[:, 1] - x0] = True
            own &= ink[y0:y1, x0:x1]
            crop = np.where(own[..., None], crop, 255).astype(np.uint8)  # another blob's ink in the box is not this one
            blobs.append((len(comp), Blob((int(x0), int(y0), int(x1), int(y1)), ((x0 + x1) / 2, (y0 + y1) / 2),
                                          self.classify(crop), self.colour_of(crop, own))))
        return [b for _, b in sorted(blobs, key=lambda t: -t[0])]


def judge(spec: SceneSpec, blobs: Sequence[Blob]) -> bool:
    """GenEval's rule for one image of `spec`."""
    (a, ca), *rest = spec.objects
    found_a = [b for b in blobs if b.label == a]
    if spec.task == "single object":
        return bool(found_a)
    if spec.task == "colours":
        return any(b.colour == ca for b in found_a)
    if spec.task == "counting":
        return len(found_a) == spec.count
    b_name, cb = rest[0]
    found_b = [b for b in blobs if b.label == b_name]
    if spec.task == "two objects":
        return bool(found_a) and bool(found_b)
    if spec.task == "colour attribution":
        return any(b.colour == ca for b in found_a) and any(b.colour == cb for b in found_b)
    return any(relation_holds(spec.relation, x.centre, y.centre, WORK_SIZE) for x in found_a for y in found_b)


def prompts(world: SceneWorld, per_task: int, seed: int = 0) -> Dict[str, Dict[str, List[SceneSpec]]]:
    """{"held out": {task: specs}, "seen": {task: specs}}."""
    return {split: {t: world.specs(t, per_task, held_out=(split == "held out"), seed=seed) for t in TASKS}
            for split in ("held out", "seen")}


def summarize(right: Dict[str, List[bool]]) -> Dict[str, float]:
    """Task scores (share of images right) and GenEval's overall score (the mean over the six tasks)."""
    scores = {t: round(float(np.mean(v)), 3) for t, v in right.items() if v}
    if scores:
        scores["overall"] = round(float(np.mean([scores[t] for t in TASKS if t in scores])), 3)
    return scores


def _score_composed(world: SceneWorld, detector: Detector, per_task: int, images_per_prompt: int, size: int,
                    seed: int, label: str, enlarge=None) -> Dict[str, Dict[str, float]]:
    """Task scores of scenes composed from the real renders at `size` px, each passed through `enlarge(spec,
    image, k)` (k: the image's index for its prompt) when given, then judged."""
    out = {}
    for split, by_task in prompts(world, per_task, seed).items():
        right: Dict[str, List[bool]] = {t: [] for t in TASKS}
        for task, specs in by_task.items():
            rng = random.Random(f"{label}:{task}:{seed}")
            for spec in specs:
                for k in range(images_per_prompt):
                    made = None
                    while made is None:
                        made = compose(spec, size, world.renders, rng)
                    image = enlarge(spec, made[0], k) if enlarge else made[0]
                    right[task].append(judge(spec, detector.detect(image)))
        out[split] = summarize(right)
    return out


def detector_ceiling(world: SceneWorld, detector: Detector, per_task: int = 16, images_per_prompt: int = 4,
                     size: int = 128, seed: int = 0) -> Dict[str, Dict[str, float]]:
    """The detector's score on scenes composed from the real renders at `size` px (held-out and seen prompts):
    what a generator that draws every prompt perfectly would get."""
    return _score_composed(world, detector, per_task, images_per_prompt, size, seed, "ceiling")


def cascade_ceiling(pipe, world: SceneWorld, detector: Optional[Detector] = None, per_task: int = 8,
                    images_per_prompt: int = 2, seed: int = 0,
                    stop_at_stage: Optional[int] = None) -> Dict[str, Dict[str, float]]:
    """The score of a perfect base stage seen through this cascade's super-resolution stages: scenes composed from
    the real renders at the base resolution, enlarged by stages 2.. (up to `stop_at_stage`) with the prompt, then
    judged. It tells whether the base resolution carries enough of a scene for the rest of the cascade to draw it
    recognisably, and how well the super-resolution stages draw scenes."""
    def enlarge(spec, image, k):
        return pipe(spec.prompt(), image=Image.fromarray(image), start_at_stage=2, stop_at_stage=stop_at_stage,
                    generator=torch.Generator().manual_seed(seed + k)).images[0]

    return _score_composed(world, detector or Detector(world), per_task, images_per_prompt,
                           pipe.unets[0].config.sample_size, seed, "cascade", enlarge)


def scene_samples(pipe, world: SceneWorld, per_task: int = 6, seed: int = 0,
                  detector: Optional[Detector] = None) -> List[Tuple[str, List[Tuple[str, Image.Image, bool]]]]:
    """For each task, its first `per_task` held-out prompts, the final image of each at `seed`, and the detector's
    verdict: the rows of the sample sheet (evaluate.sample_grid)."""
    detector = detector or Detector(world)
    rows = []
    for task in TASKS:
        samples = []
        for spec in world.specs(task, per_task, held_out=True, seed=seed):
            image = pipe(spec.prompt(), generator=torch.Generator().manual_seed(seed)).images[0]
            samples.append((spec.prompt(), image, judge(spec, detector.detect(image))))
        rows.append((task, samples))
    return rows


def run_geneval(pipe, world: SceneWorld, per_task: int = 8, images_per_prompt: int = 4, seed: int = 0,
                stop_at_stage: Optional[int] = None, detector: Optional[Detector] = None,
                progress=None) -> Dict[str, object]:
    """Generates `images_per_prompt` images (seeds seed.. seed+n-1) of each prompt, judges them, and returns the
    task table of the held-out and the seen prompts, with each prompt's images right."""
    detector = detector or Detector(world)
    report: Dict[str, object] = {}
    for split, by_task in prompts(world, per_task, seed).items():
        right: Dict[str, List[bool]] = {t: [] for t in TASKS}
        per_prompt = []
        for task, specs in by_task.items():
            for spec in specs:
                generators = [torch.Generator().manual_seed(seed + k) for k in range(images_per_prompt)]
                out = pipe(spec.prompt(), num_images_per_prompt=images_per_prompt, generator=generators,
                           stop_at_stage=stop_at_stage)
                verdicts = [judge(spec, detector.detect(im)) for im in out.images]
                right[task] += verdicts
                per_prompt.append(dict(task=task, prompt=spec.prompt(), right=sum(verdicts), of=len(verdicts)))
                if progress:
                    progress(split, task, spec.prompt(), verdicts)
        report[split] = summarize(right)
        report[f"{split} prompts"] = per_prompt
    return report
