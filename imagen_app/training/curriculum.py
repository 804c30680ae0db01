"""Spending training where the model fails: a fast measure of how much each caption helps the base
U-Net, and a sampler that drills the weakest emoji in short massed blocks.

Why (measured, see the README): single emoji and flags each have one image whose key word ("pizza",
"japan") occurs nowhere else, and spread out over the whole corpus they get too few exposures to be
learned; 100 of them drawn for 400 steps in a row go from 11% to 56% top-10. So the sampler works
through the weak emoji block by block (weakest first), keeps earlier blocks coming back, and keeps the
whole corpus in every batch so that no family is forgotten.

- `text_use`: noise real images to t (750 and 900 by default), predict x0 with the right caption, a
  wrong caption of the same family and the null condition. gain = 1 - err(right) / err(null),
  specificity = 1 - err(right) / err(wrong). About a minute for 1,700 emoji on 2 cores.
- `BlockCurriculum`: the batch indices for a step; a pure function of the step and the saved block
  order, so a resumed run draws what an uninterrupted one would.
"""
from __future__ import annotations

import json
import os
import random
import re
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..images import pixels_to_tensor
from ..pipeline.guidance import x0_from_output
from .distributed import unwrap


@torch.no_grad()
def text_use(unet, scheduler, encoder, images: torch.Tensor, captions: Sequence[str], wrong_captions: Sequence[str],
             timesteps: Sequence[int] = (750, 900), batch_size: int = 64, seed: int = 0) -> Dict[str, np.ndarray]:
    """Per image: x0 error with the right, wrong and null caption (summed over `timesteps`), gain and specificity.

    images: (N, 3, S, S) in [-1, 1]. Fixed noise (from `seed`), so two checkpoints are measured alike."""
    unet_device = next(unet.parameters()).device
    dtype = next(unet.parameters()).dtype
    prediction_type = unwrap(unet).config.prediction_type
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=gen)
    errors = np.zeros((3, len(captions)))  # right, wrong, null
    alphas = scheduler.alphas_cumprod.float().cpu()  # training may have moved the schedule to the GPU
    for start in range(0, len(captions), batch_size):
        sl = slice(start, start + batch_size)
        x0 = images[sl].float()
        n = x0.shape[0]
        embeds, mask = encoder.encode(list(captions[sl]) + list(wrong_captions[sl]) + [""] * n, device=unet_device,
                                      dtype=dtype)
        for t in timesteps:
            a = alphas[t]
            noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise[sl]
            inp = noisy.repeat(3, 1, 1, 1).to(unet_device, dtype)
            out = unet(inp, torch.full((3 * n,), t, device=unet_device), embeds, mask).sample.float().cpu()
            x0_pred = x0_from_output(a, out, inp.float().cpu(), prediction_type)
            err = (x0_pred - x0.repeat(3, 1, 1, 1)).pow(2).flatten(1).mean(1).view(3, n)
            errors[:, sl] += err.numpy()
    right, wrong, null = errors
    return dict(err_right=right, err_wrong=wrong, err_null=null, gain=1 - right / null, specificity=1 - right / wrong)


def wrong_captions_within_family(captions: Sequence[str], families: Sequence[str], offset: int = 7) -> List[str]:
    """For each caption, another caption of the same family (a fixed rotation within the family)."""
    by_family: Dict[str, List[int]] = {}
    for i, f in enumerate(families):
        by_family.setdefault(f, []).append(i)
    wrong = list(captions)
    for members in by_family.values():
        for k, i in enumerate(members):
            wrong[i] = captions[members[(k + offset) % len(members)]] if len(members) > 1 else ""
    return wrong


# Two-person emoji with a skin tone each: "kiss woman man: light skin tone, dark skin tone" (first person, second).
TWO_TONES = re.compile(r"^(.*: )([a-z-]+ skin tone), ([a-z-]+ skin tone)$")


def swapped_tones(caption: str) -> Optional[str]:
    """The caption with its two skin tones exchanged (the other person gets each), or None if it has not two
    different ones: "holding hands: dark skin tone, light skin tone" -> "...: light skin tone, dark skin tone"."""
    m = TWO_TONES.match(caption)
    if not m or m.group(2) == m.group(3):
        return None
    return f"{m.group(1)}{m.group(3)}, {m.group(2)}"


def two_tone_sample(captions: Sequence[str], count: int, seed: int = 0) -> List[int]:
    """A fixed sample of up to `count` indices of the captions with two different skin tones (sorted)."""
    two_tones = [i for i, c in enumerate(captions) if swapped_tones(c)]
    return sorted(random.Random(seed).sample(two_tones, min(count, len(two_tones))))


def word_order_use(unet, scheduler, encoder, images: torch.Tensor, captions: Sequence[str]) -> Dict[str, float]:
    """How much the right order of the two skin tones helps: `text_use` with the swapped caption as the wrong
    one (captions must all have two different tones). Specificity 0: the U-Net cannot tell who is who."""
    measure = text_use(unet, scheduler, encoder, images, captions, [swapped_tones(c) for c in captions])
    return summarize_by_family(measure, ["two-tone order"] * len(captions))["two-tone order"]


def family_sample(families: Sequence[str], per_family: int, seed: int = 0) -> List[int]:
    """A fixed sample of up to `per_family` indices of each family (sorted), for the quick training-time measure."""
    rng = random.Random(seed)
    out = []
    for f in sorted(set(families)):
        members = [i for i, g in enumerate(families) if g == f]
        out += sorted(rng.sample(members, min(per_family, len(members))))
    return out


def summarize_by_family(measure: Dict[str, np.ndarray], families: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """Family -> mean gain and specificity (ratios of the summed errors, as in the notes), and the count."""
    out = {}
    fam = np.asarray(families)
    for f in sorted(set(families)):
        sel = fam == f
        right, wrong, null = (measure[k][sel].sum() for k in ("err_right", "err_wrong", "err_null"))
        out[f] = dict(count=int(sel.sum()), gain=float(1 - right / null), specificity=float(1 - right / wrong))
    return out


@dataclass
class CurriculumConfig:
    """Massed blocks of the weakest emoji of some families, revisited, with the whole corpus kept in the mix."""

    families: List[str] = field(default_factory=lambda: ["single emoji", "flags"])  # the families drilled in blocks
    block_size: int = 100
    block_steps: Dict[str, int] = field(default_factory=lambda: {"single emoji": 500, "flags": 1000})
    focus: float = 0.6  # share of each batch from the current block
    review: float = 0.2  # share from the blocks done before it in this pass; the rest is the whole corpus
    # Share of every batch drawn from a whole family, e.g. {"flags": 0.3}: a family learned in an earlier run
    # (flags, at 35% of each batch on a GPU) is forgotten within a few hundred steps of drilling the others
    # (flags 56% -> 35% top-10 in the CPU A/B, docs/ab_cpu.txt), so its share stays in every batch.
    keep: Dict[str, float] = field(default_factory=dict)
    # Share of every batch drawn from the emoji whose (first) caption matches a regular expression, e.g.
    # {"skin tone, .*skin tone": 0.5}: the two-person emoji with two tones, whose order the model confuses.
    caption_shares: Dict[str, float] = field(default_factory=dict)
    hold_specificity: float = 0.8  # after a pass, emoji whose specificity reached this leave the blocks
    measure_per_family: int = 60  # the quick by-family measure logged every `measure_every` steps
    measure_every: int = 500


class BlockCurriculum:
    """Batch indices by step: pass after pass of blocks over the weak emoji.

    A pass orders its emoji weakest first (lowest specificity, as `text_use` measured at the pass's
    start), cuts them into blocks of `block_size` of one family each, and interleaves the families'
    blocks. The passes are saved in `path` (JSON), so a resumed run keeps the same order."""

    def __init__(self, cfg: CurriculumConfig, families: Sequence[str], path: Optional[str] = None,
                 captions: Optional[Sequence[str]] = None):
        self.cfg = cfg
        self.families = list(families)
        if cfg.caption_shares and captions is None:
            raise ValueError("caption_shares needs the captions of the corpus")
        # (members, share) of the `keep` families and the `caption_shares` patterns: drawn in every batch
        self.shares = [([i for i, g in enumerate(self.families) if g == f], share) for f, share in cfg.keep.items()]
        for pattern, share in cfg.caption_shares.items():
            rx = re.compile(pattern)
            self.shares.append(([i for i, c in enumerate(captions) if rx.search(c)], share))
        self.path = path
        self.passes: List[dict] = []  # {"start_step": int, "blocks": [[family, [indices]], ...]}
        if path and os.path.exists(path):
            with open(path) as f:
                self.passes = json.load(f)["passes"]

    def save(self) -> None:
        if self.path:
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(dict(passes=self.passes), f)
            os.replace(tmp, self.path)

    @property
    def end_step(self) -> int:
        """The step at which the last planned pass ends (0 with no pass)."""
        if not self.passes:
            return 0
        last = self.passes[-1]
        return last["start_step"] + sum(self.cfg.block_steps[f] for f, _ in last["blocks"])

    def plan_pass(self, start_step: int, specificity: Optional[np.ndarray], seed: int = 0) -> int:
        """Adds a pass starting at `start_step` over the drilled families' emoji that do not hold yet
        (all of them when there is no measure); returns how many emoji it drills."""
        rng = random.Random(seed + len(self.passes))
        per_family = []
        for fam in self.cfg.families:
            members = [i for i, f in enumerate(self.families) if f == fam]
            if specificity is not None:
                members = [i for i in members if specificity[i] < self.cfg.hold_specificity]
                members.sort(key=lambda i: specificity[i])
            else:
                rng.shuffle(members)
            blocks = [members[k:k + self.cfg.block_size] for k in range(0, len(members), self.cfg.block_size)]
            per_family.append([(fam, b) for b in blocks if b])
        # Interleave: each family's blocks spread evenly over the pass, so none waits until the end.
        slots = sorted(((k + 0.5) / len(bl), j, k) for j, bl in enumerate(per_family) for k in range(len(bl)))
        blocks = [per_family[j][k] for _, j, k in slots]
        self.passes.append(dict(start_step=start_step, blocks=[[f, b] for f, b in blocks]))
        self.save()
        return sum(len(b) for _, b in blocks)

    def block_at(self, step: int):
        """(pass, block number) in effect at `step`, or (None, None) past the plan."""
        for p in reversed(self.passes):
            if step >= p["start_step"]:
                s = p["start_step"]
                for k, (fam, _) in enumerate(p["blocks"]):
                    s += self.cfg.block_steps[fam]
                    if step < s:
                        return p, k
                return None, None
        return None, None

    def indices(self, step: int, batch_size: int, rng: random.Random) -> List[int]:
        out = [rng.choice(members) for members, share in self.shares if members for _ in range(round(batch_size * share))]
        p, k = self.block_at(step)
        if p is not None:
            block = p["blocks"][k][1]
            earlier = [i for _, b in p["blocks"][:k] for i in b]
            n_focus = round(batch_size * self.cfg.focus)
            n_review = round(batch_size * self.cfg.review) if earlier else 0
            out += [rng.choice(block) for _ in range(n_focus)] + [rng.choice(earlier) for _ in range(n_review)]
        out = out[:batch_size]
        out += [rng.randrange(len(self.families)) for _ in range(batch_size - len(out))]
        return out


# --- in the training loop (train.py) ----------------------------------------------------------------------------

def make_curriculum(cfg, data, log, main: bool = True) -> Optional[BlockCurriculum]:
    """The block curriculum of a TrainConfig's `curriculum` (None without one; it needs the emoji corpus's
    families). Only the main process's copy saves the plan (curriculum.json); `distributed.share_curriculum` sends
    it to the others."""
    if not cfg.curriculum:
        return None
    if data.families is None:
        log("curriculum ignored: it needs the emoji corpus (families of emoji)")
        return None
    shares = dict(cfg.curriculum.get("keep", {}), **cfg.curriculum.get("caption_shares", {}))
    draws = sum(round(cfg.batch_size * share) for share in shares.values())
    if draws > cfg.batch_size:
        # BlockCurriculum.indices would cut the batch, silently dropping the shares listed last. A config's `keep`
        # merges with the one it extends, so a family left out of an override keeps its inherited share: give it 0.
        raise ValueError(f"the curriculum's shares draw {draws} images for a batch of {cfg.batch_size}: "
                         f"{shares} (set inherited families to 0 to drop them)")
    path = os.path.join(cfg.run_dir, "curriculum.json")
    return BlockCurriculum(CurriculumConfig(**cfg.curriculum), data.families, path if main else None,
                           captions=[caps[0] for caps in data.captions])


def _images(data, idx) -> torch.Tensor:
    return pixels_to_tensor([data.images[i] for i in idx])


def _measure(unet, scheduler, encoder, data, idx):
    captions = [data.captions[i][0] for i in idx]  # the plain CLDR name
    wrong = wrong_captions_within_family(captions, [data.families[i] for i in idx])
    return text_use(unet, scheduler, encoder, _images(data, idx), captions, wrong)


def plan_next_pass(curriculum: BlockCurriculum, unet, scheduler, encoder, data, step: int, log) -> None:
    """Measures every drilled emoji (weakest first, the ones that hold leave) and plans the next pass at `step`."""
    t0 = time.time()
    idx = [i for i, f in enumerate(data.families) if f in curriculum.cfg.families]
    specificity = np.full(len(data), np.inf)
    specificity[idx] = _measure(unet, scheduler, encoder, data, idx)["specificity"]
    n = curriculum.plan_pass(step, specificity)
    log(f"curriculum: pass {len(curriculum.passes)} from step {step} drills {n} emoji "
        f"until step {curriculum.end_step} (planned in {time.time() - t0:.0f} s)")


def log_text_use(curriculum: BlockCurriculum, unet, scheduler, encoder, data, step: int, run_dir: str, log) -> None:
    """The quick by-family measure of how much the right caption helps, logged and appended to text_use.jsonl."""
    idx = family_sample(data.families, curriculum.cfg.measure_per_family)
    summary = summarize_by_family(_measure(unet, scheduler, encoder, data, idx), [data.families[i] for i in idx])
    two_tones = two_tone_sample([c[0] for c in data.captions], curriculum.cfg.measure_per_family)
    if two_tones:
        summary["two-tone order"] = word_order_use(unet, scheduler, encoder, _images(data, two_tones),
                                                   [data.captions[i][0] for i in two_tones])
    log(f"text use at step {step}: " + "; ".join(f"{f} gain {v['gain']:.2f} specificity {v['specificity']:.2f}"
                                                  for f, v in summary.items()))
    with open(os.path.join(run_dir, "text_use.jsonl"), "a") as f:
        f.write(json.dumps(dict(step=step, families=summary)) + "\n")
