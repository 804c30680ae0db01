"""Where each word of the prompt acts on the image: the U-Net's cross-attention, per word.

Imagen conditions every U-Net on the T5 token embeddings through cross-attention (§2.1, Appendix
F). While a `CrossAttentionRecorder` is active, every attention layer of the U-Net hands it the
attention probabilities from image positions to the text tokens; the recorder averages them over
heads, layers (each upsampled to the stage's resolution) and denoising steps. `word_maps` then joins
a word's sub-tokens and leaves out the null tokens, `</s>` and padding. Layers that also attend to
the image (self-attention at low resolution, one softmax over pixels and text) give the text's share
of that softmax. With no recorder the U-Net runs its usual kernels: recording costs nothing when off.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F


class AttentionHook:
    """Hands the attention probabilities of the U-Net text attention `layers` to `record(probs, h, w)` while a `with`
    block of the thread that enters it runs (TextAttention.recorders); the base of the UI's recorder and of the
    training's grounding loss (training/grounding.py)."""

    def __init__(self, layers):
        self.layers = list(layers)
        self.thread: Optional[int] = None  # the thread inside the `with` block: its U-Net calls are recorded

    def __enter__(self):
        # The thread that enters, not the one that made the recorder: a streamed generation is a generator that
        # Gradio advances from whichever worker thread is free, so its steps run on different threads; keyed by
        # its maker, a recorder got the U-Net calls of another run on that thread (another batch: an error in
        # that run) and missed its own.
        self.thread = threading.get_ident()
        for layer in self.layers:
            layer.recorders[self.thread] = self
        return self

    def __exit__(self, *exc):
        for layer in self.layers:
            if layer.recorders.get(self.thread) is self:
                del layer.recorders[self.thread]
        return False

    def record(self, probs: torch.Tensor, h: int, w: int) -> None:
        raise NotImplementedError


def unet_modules(unet: torch.nn.Module, kinds) -> list:
    """The U-Net's modules of `kinds` (a class or a tuple of them; unwrapped from DDP), in forward order."""
    return [m for m in getattr(unet, "module", unet).modules() if isinstance(m, kinds)]


def text_attention_layers(unet: torch.nn.Module):
    """The U-Net's text attention layers (unwrapped from DDP), in forward order."""
    from ..models.unet import TextAttention

    return unet_modules(unet, TextAttention)


class CrossAttentionRecorder(AttentionHook):
    """Accumulates (B, L, H, W) cross-attention maps of one U-Net over layers and steps.

    with CrossAttentionRecorder(unet, size) as rec:  ... run the U-Net ...;  rec.maps() -> (B, L, size, size)"""

    def __init__(self, unet: torch.nn.Module, size: int, rows: Optional[slice] = None):
        super().__init__(text_attention_layers(unet))
        self.size = size
        self.rows = rows  # the batch rows to keep (e.g. the conditional half of a guidance batch)
        self.total: Optional[torch.Tensor] = None
        self.count = 0

    @torch.no_grad()
    def record(self, probs: torch.Tensor, h: int, w: int) -> None:
        """probs (B, heads, h*w, L): one layer's attention from each position to each context token."""
        if self.rows is not None:
            probs = probs[self.rows]
        maps = probs.float().mean(dim=1).transpose(1, 2).reshape(probs.shape[0], -1, h, w)  # (B, L, h, w)
        if (h, w) != (self.size, self.size):
            maps = F.interpolate(maps, size=(self.size, self.size), mode="bilinear", align_corners=False)
        if self.total is not None and self.total.shape != maps.shape:
            raise ValueError("the batch changed while recording attention")
        self.total = maps if self.total is None else self.total + maps
        self.count += 1

    def maps(self) -> Optional[torch.Tensor]:
        """(B, L, size, size): the mean over every recorded layer call (layers x steps); None before any."""
        return None if self.total is None else self.total / self.count


def span_columns(offsets, start: int, end: int, num_null_tokens: int):
    """The U-Net context columns (the null tokens first) of the tokens whose characters overlap [start, end) of the
    text that `offsets` (a tokenizer's offset_mapping) are of; special tokens (empty spans) are none of them."""
    return [num_null_tokens + k for k, (s, e) in enumerate(offsets) if e > s and s < end and e > start]


def word_maps(tokenizer, prompt: str, token_maps: torch.Tensor, num_null_tokens: int, max_length: int) -> Dict[str, np.ndarray]:
    """One prompt's token maps (L, H, W), null tokens first, -> {word as written: (H, W) float32}.

    Sub-tokens of a word are summed (the attention the word receives); special tokens and padding are
    left out. A word that occurs twice gets one entry per occurrence ("heart", "heart (2)")."""
    enc = tokenizer(prompt, truncation=True, max_length=max_length, return_offsets_mapping=True, add_special_tokens=True)
    out: Dict[str, np.ndarray] = {}
    words = [(m.start(), m.end(), m.group()) for m in re.finditer(r"\S+", prompt)]
    for start, end, word in words:
        positions = span_columns(enc["offset_mapping"], start, end, num_null_tokens)
        positions = [p for p in positions if p < token_maps.shape[0]]
        if not positions:
            continue  # cut by truncation
        key, n = word, 2
        while key in out:
            key, n = f"{word} ({n})", n + 1
        out[key] = token_maps[positions].sum(dim=0).cpu().numpy().astype(np.float32)
    return out


def overlay(image, heatmap: np.ndarray, alpha: float = 0.55):
    """The stage image with a heatmap (normalised to its max) blended over it, as a PIL image."""
    from PIL import Image

    h = heatmap / max(float(heatmap.max()), 1e-8)
    rgb = np.stack([h, 0.25 * np.ones_like(h), 1 - h], axis=-1)  # blue (little) -> red (most)
    colour = Image.fromarray((rgb * 255).astype(np.uint8)).resize(image.size, Image.BILINEAR)
    return Image.blend(image.convert("RGB"), colour, alpha)


@dataclass
class StageWordMaps:
    """One stage's recorder and what turns its token maps into word maps for one prompt."""

    recorder: CrossAttentionRecorder
    tokenizer: object
    prompt: str  # as the tokenizer sees it (normalised)
    num_null_tokens: int
    max_length: int

    def maps(self) -> Dict[str, np.ndarray]:
        """{word: (H, W)} averaged over what was recorded so far; {} without cross-attention or before any step."""
        token_maps = self.recorder.maps()
        if token_maps is None or not self.prompt:
            return {}
        return word_maps(self.tokenizer, self.prompt, token_maps[0], self.num_null_tokens, self.max_length)
