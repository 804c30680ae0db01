"""The grounding loss: each object's words attend to where that object is drawn (`grounding_loss_weights`).

A base stage trained on composed scenes learns their layout long before their objects: "a cat and a pizza" comes out
as two blobs in two places, each some emoji, because nothing but the denoising loss tells the U-Net which words
belong to which blob, and in a batch of random scenes that signal is weak. The scenes are composed, so where every
object lies is known exactly; TokenCompose (Wang et al. 2024, §3.2) turns that into a loss on the U-Net's
cross-attention: for each object phrase of the caption ("red cat", "bananas"), the attention its tokens get

- should lie inside the object's mask, as a share of all the attention they get over the image (the token term:
  (1 - inside / total)^2, so a word attends to its own object rather than to the other one), and
- should be high on the object's pixels and low elsewhere, pixel by pixel (the pixel term: binary cross-entropy
  between the share of each pixel's attention that goes to the phrase and the mask).

A colour word is part of its object's phrase, so "red" is taught to act where the cat is: colour attribution.
The loss reads the text attention layers of the resolutions that resolve the objects (`min_side` and up), through
the attention recorder hook the UI's word maps use (models/unet.py `TextAttention.recorders`); it costs a few
element-wise operations on maps the forward pass computes anyway, and nothing at inference.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..models.unet import LocalTextPool, TextAttention
from ..pipeline.attention_maps import AttentionHook, span_columns, unet_modules


@dataclass
class GroundingTargets:
    """The phrases of a batch: for phrase g, its batch row, the context columns of its tokens (`columns[g]`, padded
    with -1) and its mask (G, side, side) in [0, 1]."""

    rows: torch.Tensor  # (G,) long
    columns: torch.Tensor  # (G, T) long, -1 = none
    masks: torch.Tensor  # (G, side, side) float

    def __len__(self) -> int:
        return int(self.rows.shape[0])


def phrase_columns(encoder, caption: str, phrases: Sequence[str], num_null_tokens: int) -> List[List[int]]:
    """The U-Net context columns (the null tokens first, then the caption's tokens) of each phrase's tokens in the
    text the encoder is given for `caption` (`encoder.canonical`), each phrase found after the previous one; [] for a
    phrase that text does not hold as words (a caption the vocabulary rewrote, or one cut by truncation)."""
    text = encoder.canonical(caption)
    offsets = encoder._tokenize(text, truncation=True)["offset_mapping"]
    out, start = [], 0
    for phrase in phrases:
        found = re.compile(r"(?<![\w-])" + re.escape(phrase) + r"(?![\w-])").search(text, start)
        if found is None:
            out.append([])
            continue
        start = found.end()
        out.append(span_columns(offsets, found.start(), found.end(), num_null_tokens))
    return out


def grounding_targets(encoder, captions: Sequence[str], phrases: Sequence[Sequence[Tuple[str, np.ndarray]]],
                      num_null_tokens: int, device) -> Optional[GroundingTargets]:
    """The GroundingTargets of a batch: `phrases[b]` is row b's (phrase, mask) list (scenes.grounding_phrases; [] for
    a row that is not a scene). None when no row has a phrase found in its caption."""
    rows, columns, masks = [], [], []
    for b, (caption, row_phrases) in enumerate(zip(captions, phrases)):
        if not row_phrases:
            continue
        found = phrase_columns(encoder, caption, [p for p, _ in row_phrases], num_null_tokens)
        for cols, (_, mask) in zip(found, row_phrases):
            if cols:
                rows.append(b)
                columns.append(cols)
                masks.append(torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32)))
    if not rows:
        return None
    width = max(len(c) for c in columns)
    padded = torch.full((len(columns), width), -1, dtype=torch.long)
    for g, cols in enumerate(columns):
        padded[g, :len(cols)] = torch.tensor(cols)
    return GroundingTargets(torch.tensor(rows, device=device), padded.to(device), torch.stack(masks).to(device))


class AttentionGrabber(AttentionHook):
    """While active (a `with` block), keeps every forward call's attention probabilities (with their gradients) of
    the U-Net's text attention layers and local text pools (models/unet.py; a pool's is a one-head map), or of those
    of `kinds`, whose maps are at least `min_side` on a side and have no self-attention (whose softmax is over the
    text alone). `taken`: [(probs (B, heads, h*w, N + L), h, w)]."""

    def __init__(self, unet: torch.nn.Module, min_side: int, kinds=(TextAttention, LocalTextPool)):
        super().__init__(layer for layer in unet_modules(unet, kinds) if not layer.self_attention)
        self.min_side = min_side
        self.taken: List[Tuple[torch.Tensor, int, int]] = []

    def __enter__(self):
        self.taken = []
        return super().__enter__()

    def record(self, probs: torch.Tensor, h: int, w: int) -> None:
        if min(h, w) >= self.min_side:
            self.taken.append((probs, h, w))


def grounding_loss(taken: Sequence[Tuple[torch.Tensor, int, int]], targets: GroundingTargets,
                   rows: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(token term, pixel term), each the mean over the phrases and the `taken` layers (see the module docstring).
    `rows` (B,) bool: the batch rows whose text the U-Net saw (classifier-free guidance drops some); the phrases of
    the others are left out. Zero when no phrase is left."""
    keep = torch.ones(len(targets), dtype=torch.bool, device=targets.rows.device)
    if rows is not None:
        keep = rows[targets.rows]
    if not taken or not bool(keep.any()):
        zero = torch.zeros((), device=targets.rows.device)
        return zero, zero
    g_rows, columns, masks = targets.rows[keep], targets.columns[keep], targets.masks[keep]
    valid = (columns >= 0).float()  # (G, T)
    token_terms, pixel_terms = [], []
    for probs, h, w in taken:
        per_pixel = probs.float().mean(dim=1)[g_rows]  # (G, h*w, N + L): each pixel's attention over the context
        index = columns.clamp(min=0)[:, None, :].expand(-1, per_pixel.shape[1], -1)
        share = (per_pixel.gather(2, index) * valid[:, None, :]).sum(dim=2)  # (G, h*w): the phrase's share
        mask = F.adaptive_avg_pool2d(masks[:, None], (h, w)).flatten(1)  # (G, h*w): the object's cover
        inside = (share * mask).sum(dim=1) / share.sum(dim=1).clamp(min=1e-8)
        token_terms.append((1 - inside).pow(2).mean())
        share, inked = share.clamp(1e-6, 1 - 1e-6), (mask > 0.5).float()  # binary cross-entropy, written out: the
        pixel_terms.append(-(inked * share.log() + (1 - inked) * (1 - share).log()).mean())  # op refuses autocast
    return torch.stack(token_terms).mean(), torch.stack(pixel_terms).mean()
