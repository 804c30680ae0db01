"""The frozen base U-Net's text path, traced once, for teaching the text encoder cheaply (`tune-text`).

Text reaches the base U-Net in two places only (models/unet.py): the attention-pooled text vector added to the
time embedding, and each text attention layer, where the pixels attend to the text tokens. If, for the pixels a
layer sees while the U-Net draws emoji E, a typed form makes every text attention layer add what E's name makes it
add, and pools to the same vector, then the whole forward pass is the same, layer by layer: so the typed form draws
E. That is a local form of the distillation in text_tuning.py (the "layers" objective) whose costly part, the
U-Net's convolutions, does not depend on the text and is done once: for each emoji name a few noised renders go
through the U-Net under the name, and each text attention layer's text-free side (its queries; with self-attention
the pixels' own keys and values) is kept in float16, with what the name made the layer add. A training step then
runs only the text encoder, the pooling and the layers' text side: several times more samples a second than a
U-Net forward and backward, which the CPU needs to show each of thousands of new words the hundreds of examples a
word takes to learn.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from ..models.unet import TextAttention
from ..pipeline.attention_maps import text_attention_layers


class AttentionTraces:
    """Per text attention layer and traced render: the layer's text-free side and the teacher's effect (float16).
    A name is traced the first time it is asked for (`draws` renders at once), so a run pays only for what it uses."""

    def __init__(self, unet, scheduler, renders: torch.Tensor, names: Sequence[str], teacher, draws: int = 2,
                 min_timestep: int = 250, pixels: int = 32, seed: int = 0):
        if getattr(unet.config, "local_text_pool", False):  # its text path is per pixel: not the two parts traced
            raise ValueError("tune-text traces the pooled text vector and the attention layers; this U-Net pools the "
                             "text per pixel (local_text_pool), which the traces do not hold")
        self.unet, self.scheduler, self.renders, self.teacher = unet, scheduler, renders, teacher
        self.layers: List[TextAttention] = text_attention_layers(unet)
        self.index = {n: i for i, n in enumerate(names)}
        self.draws, self.min_timestep, self.pixels = draws, min_timestep, pixels
        self.traced = torch.zeros(len(self.index), dtype=torch.bool)
        self.generator = torch.Generator().manual_seed(seed)
        # Allocated at the first trace, when the shapes are known; None where a layer has no such part.
        self.sides: List[List[Optional[torch.Tensor]]] = [[None] * 3 for _ in self.layers]  # q, pixel k, pixel v
        self.effects: List[Optional[torch.Tensor]] = [None] * (len(self.layers) + 1)  # the pooled vector, each layer's

    def _store(self, buffers: List[Optional[torch.Tensor]], j: int, rows: torch.Tensor, value: Optional[torch.Tensor]):
        if value is None:
            return
        if buffers[j] is None:
            buffers[j] = torch.empty((len(self.index) * self.draws,) + tuple(value.shape[1:]), dtype=torch.float16)
        buffers[j][rows] = value.half()

    @torch.no_grad()
    def trace(self, names: Sequence[str]) -> None:
        """Traces the names not yet traced: `draws` noised renders of each through the U-Net under the name."""
        todo = [n for n in dict.fromkeys(names) if not self.traced[self.index[n]]]
        if not todo:
            return
        chunk = [n for n in todo for _ in range(self.draws)]
        rows = torch.tensor([self.index[n] * self.draws + d for n in todo for d in range(self.draws)])
        images = self.renders[[self.index[n] for n in chunk]]
        noise = torch.randn(images.shape, generator=self.generator)
        t = torch.randint(self.min_timestep, self.scheduler.config.num_train_timesteps, (len(chunk),),
                          generator=self.generator)
        embeds, mask = self.teacher.encode(chunk)
        context, context_mask = self.unet._context(embeds, mask)
        self._store(self.effects, 0, rows, self.unet.text_pool(context, context_mask))
        for j, (layer, (tokens, (h, w))) in enumerate(zip(self.layers, self._record(
                self.scheduler.add_noise(images, noise, t), t, embeds, mask))):
            keep = None
            if not layer.self_attention and tokens.shape[1] > self.pixels:
                # its pixels do not see each other: a few of them carry the layer's text use at a fraction of the
                # cost and memory
                keep = torch.rand(tokens.shape[:2], generator=self.generator).argsort(dim=1)[:, :self.pixels]
                tokens = tokens.gather(1, keep[..., None].expand(-1, -1, tokens.shape[2]))
            side = layer.pixel_side(tokens, h, w, pixels=keep)
            for part, value in enumerate(side):
                self._store(self.sides[j], part, rows, value)
            self._store(self.effects, j + 1, rows, layer.text_side(*side, context, context_mask))
        self.traced[[self.index[n] for n in todo]] = True

    @torch.no_grad()
    def _record(self, noisy: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor):
        """Each text attention layer's normed pixel tokens (B, HW, C) and map size in a forward pass."""
        seen: List = [None] * len(self.layers)

        def hook(j):
            def record(layer, args):
                x = args[0]
                seen[j] = (layer.norm(x).flatten(2).transpose(1, 2), tuple(x.shape[-2:]))
            return record

        handles = [layer.register_forward_pre_hook(hook(j)) for j, layer in enumerate(self.layers)]
        try:
            self.unet(noisy, t, embeds, mask)
        finally:
            for h in handles:
                h.remove()
        return seen

    def sample_rows(self, names: Sequence[str], generator: torch.Generator) -> torch.Tensor:
        """One traced render of each name (traced now if it was not yet)."""
        self.trace(names)
        picks = torch.randint(0, self.draws, (len(names),), generator=generator)
        return torch.tensor([self.index[n] * self.draws for n in names]) + picks

    def text_effects(self, rows: torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor) -> List[torch.Tensor]:
        """What the text `embeds` adds on the traced pixels of `rows`: the pooled vector, then each layer's output."""
        context, context_mask = self.unet._context(embeds, mask)
        effects = [self.unet.text_pool(context, context_mask)]
        for layer, side in zip(self.layers, self.sides):
            q, k, v = (None if t is None else t[rows].float() for t in side)
            effects.append(layer.text_side(q, k, v, context, context_mask))
        return effects

    def errors(self, rows: torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per traced row: the mean over the pooled vector and the layers of the squared difference from what the
        name added, each relative to the size of the names' effects there (so that no layer outweighs the others by
        its scale)."""
        return relative_errors(self.text_effects(rows, embeds, mask), [kept[rows].float() for kept in self.effects])

    def loss(self, rows: torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.errors(rows, embeds, mask).mean()

    def anchor_loss(self, rows: torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor, teacher_embeds: torch.Tensor,
                    teacher_mask: torch.Tensor) -> torch.Tensor:
        """The same error for texts whose effects were not traced (every caption, the held-out compositions too):
        on the traced pixels of `rows` (other emoji's renders; no image of the caption is used), the student's
        embeddings of a caption should make every layer add what the teacher's embeddings of it make it add."""
        with torch.no_grad():
            targets = self.text_effects(rows, teacher_embeds, teacher_mask)
        return relative_errors(self.text_effects(rows, embeds, mask), targets).mean()


def relative_errors(got: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per row, the mean over the parts of its squared error relative to the mean size of the part's targets."""
    return torch.stack([(g - t).pow(2).flatten(1).mean(1) / t.pow(2).mean().clamp_min(1e-8)
                        for g, t in zip(got, targets)]).mean(0)
