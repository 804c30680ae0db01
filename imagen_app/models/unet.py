"""Efficient U-Net of Imagen (Saharia et al. 2022, Appendix F), one class for every stage.

Layout, as in the paper:
- more residual blocks at low resolutions than at high ones (`layers_per_block` per level);
- the down path *downsamples first*, then runs the level's blocks; the up path runs the blocks,
  *then upsamples* (the cheap order: the blocks of a level see its lower resolution);
- skip connections are scaled by 1/sqrt(2) before they are concatenated;
- text enters twice: cross-attention over the T5 token embeddings (masked) at chosen levels,
  and an attention-pooled text vector added to the time embedding;
- self-attention only at chosen (low) resolutions;
- super-resolution stages (`lowres_cond=True`) get the low-res image resized to the sample's
  size and concatenated to the input, and an embedding of the noise-augmentation level (§2.5).
  With `residual=True` (not in the paper; SRDiff, Li et al. 2022) the stage's diffusion runs on
  the residual `image - upsample(lowres)`, which the sampler adds back: an SR stage then starts out
  as bicubic upsampling and only has to learn the detail, which small CPU training budgets reach
  much sooner. `forward` is the same either way; the flag tells the pipeline and the trainer.

Text token positions (`text_position_embeddings`, not in the paper): Imagen's T5-XXL gives contextual
embeddings, so the order of words is in them. The shipped small T5 gives almost context-free ones (the
same word has cosine similarity > 0.9999 at any place in the caption), and cross-attention and the
attention pool treat the tokens as a set: "holding hands: dark skin tone, light skin tone" and its
swapped form were the same condition, so the U-Net could not know which person is which. A learned
embedding per token position, added to the text tokens (not the null tokens), gives the order back.
At zero a trained stage loads with it and draws exactly as before until it learns; from zero, learning to use
positions is slow (a product of two small factors), so they may start as scaled sinusoids instead.

Pixel coordinates (`pixel_coordinates`, not in the paper): to draw "dark, light" as dark-left, light-right, a
pixel's query must know where the pixel is, and the convolutions tell it only through the zero padding (weakly,
far from the borders), while self-attention is blind to place. With this flag every attention layer adds a
learned linear function of the pixel's (x, y) in [-1, 1] to its queries (zero at the start, so a trained stage
draws as before): one slope per channel is all a query needs to prefer the first tone's key on the left.

Space to depth (`space_to_depth`, not in the paper; the downsampling stem of Hoogeboom et al. 2023, "simple
diffusion", §3): a base stage at f times the side folds each f x f block of pixels into channels before its first
convolution and unfolds its output the same way, so its levels run at the feature sizes (and cost) of a stage of
1/f the side. Two objects of a sentence get 2x the pixels of a 32 px stage at a 32 px stage's cost. The stage is
preconditioned on its noise schedule (the one `schedules.noise_schedule` shifts for it): its input is scaled so that
the mean of each block sees the noise level a 1/f-side stage saw at the same timestep, and its folded output is the
1/f-side stage's v-prediction per pixel, turned into this stage's prediction through the x0 it implies. A 32 px stage
folded by `with_space_to_depth` therefore draws at 64 px exactly what it drew at 32 px (each pixel a 2 x 2 block),
and training only has to add what the finer grid can show.

Local text pool (`local_text_pool`, not in the paper): Imagen adds one attention-pooled text vector to the time
embedding, and every residual block reads it through its scale and shift, the same at every pixel. The shipped small
stage reads an emoji's identity mostly from that vector (zeroed, "a tiger" and "pizza" become other things), and one
vector cannot say "a cat here, a pizza there": a scene stage drew two coherent emoji in the right places, but not
the named ones. With this flag each level pools the text once per pixel instead: the pool's logits plus that
pixel's own query against the tokens, so the pixels of the cat pool "cat" and those of the pizza pool "pizza", and
the blocks' scale and shift, learned from the one vector, say per pixel what to draw there. The queries start at
zero, so at the start every pixel pools exactly the one vector and a trained stage draws as before; the grounding
loss (training/grounding.py) teaches the pools where each object is, as it does the cross-attention.

The null condition for classifier-free guidance is an all-masked text: every sample attends
to `num_null_tokens` learned null tokens in addition to its text tokens, so an empty prompt
(or a text dropped in training) sees only the learned null embedding, and attention is never
over an empty set.
"""
from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput


@dataclass
class ImagenUNetOutput(BaseOutput):
    sample: torch.Tensor  # (B, C, H, W): epsilon or v, as `prediction_type` says


def sinusoidal_embedding(values: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) float -> (B, dim): the transformer position embedding used for diffusion time."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=values.device, dtype=torch.float32) / half)
    args = values.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


@functools.lru_cache(maxsize=32)
def pixel_grid(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(h * w, 2): each pixel's centre as (x, y) in [-1, 1], row by row (the order of a flattened feature map).
    Cached: every attention layer of every denoising step asks for the same few grids."""
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w * 2 - 1
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(h * w, 2).to(dtype)


def upsample_lowres(image: torch.Tensor, size: int) -> torch.Tensor:
    """The low-res image brought to the stage's size (bicubic): concatenated to the U-Net's input,
    and for `residual` stages the image that the denoised residual is added to."""
    return F.interpolate(image, size=(size, size), mode="bicubic", align_corners=False)


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels)


class ResBlock(nn.Module):
    """Residual block conditioned on the (time + pooled text) embedding by scale and shift."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int):
        super().__init__()
        self.norm1 = group_norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = group_norm(out_ch, groups)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """`emb`: (B, E), or (B, h, w, E) per pixel (a local text pool's)."""
        h = self.conv1(F.silu(self.norm1(x)))
        film = self.emb_proj(F.silu(emb))
        film = film[:, :, None, None] if film.dim() == 2 else film.permute(0, 3, 1, 2)
        scale, shift = film.chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return h + self.skip(x)


class TextAttention(nn.Module):
    """Attention of the pixels to the text tokens (and, with `self_attention`, to each other too:
    one softmax over [pixels; text], as Imagen's low-resolution attention layers do)."""

    def __init__(self, channels: int, context_dim: int, head_dim: int, groups: int, self_attention: bool,
                 pixel_coordinates: bool = False):
        super().__init__()
        self.heads = max(1, channels // head_dim)
        # (x, y) of the pixel -> a query offset; zero at the start (see the module's docstring)
        self.coordinates = nn.Linear(2, channels, bias=False) if pixel_coordinates else None
        if self.coordinates is not None:
            nn.init.zeros_(self.coordinates.weight)
        self.self_attention = self_attention
        self.norm = group_norm(channels, groups)
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_kv = nn.Linear(channels, 2 * channels, bias=False)
        self.context_kv = nn.Linear(context_dim, 2 * channels, bias=False)
        self.to_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)
        # {thread id: attention_maps.CrossAttentionRecorder} while one records: per thread, so that a generation
        # in another thread (a second app worker, a cancelled run finishing its step) is not recorded. Empty: no cost.
        self.recorders = {}

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        out = self.attend(tokens, h, w, context, context_mask)
        return x + out.transpose(1, 2).view(b, c, h, w)

    def attend(self, tokens: torch.Tensor, h: int, w: int, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        """What the layer adds for the normed pixel `tokens` (B, HW, C), as (B, HW, C)."""
        return self.text_side(*self.pixel_side(tokens, h, w), context, context_mask, shape=(h, w))

    def pixel_side(self, tokens: torch.Tensor, h: int, w: int, pixels: Optional[torch.Tensor] = None):
        """The part that does not depend on the text: the queries and, with self-attention, the pixels' own keys and
        values. Text tuning (training/attention_traces.py) keeps them from a teacher's forward pass; for a
        cross-attention-only layer (whose pixels do not see each other) only some pixels: `pixels` (B, K) their
        indices in the h x w map, `tokens` (B, K, C)."""
        q = self.to_q(tokens)
        if self.coordinates is not None:
            grid = pixel_grid(h, w, tokens.device, tokens.dtype)
            q = q + (self.coordinates(grid)[None] if pixels is None else self.coordinates(grid[pixels]))
        if self.self_attention:
            return (q, *self.to_kv(tokens).chunk(2, dim=-1))
        return q, None, None

    def text_side(self, q: torch.Tensor, pixel_k: Optional[torch.Tensor], pixel_v: Optional[torch.Tensor],
                  context: torch.Tensor, context_mask: torch.Tensor, shape: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """The attention of the queries (B, K, C) to the text (and the pixels' keys), through the output projection;
        `shape`: the (h, w) of the map the queries are, for an attention recorder."""
        b, n, c = q.shape
        k, v = self.context_kv(context).chunk(2, dim=-1)  # (B, L, C)
        mask = context_mask  # (B, L) bool, True = attend
        if pixel_k is not None:
            k, v = torch.cat([pixel_k, k], dim=1), torch.cat([pixel_v, v], dim=1)
            mask = torch.cat([mask.new_ones(b, pixel_k.shape[1]), mask], dim=1)

        def split(t):  # (B, N, C) -> (B, heads, N, C/heads)
            return t.view(b, t.shape[1], self.heads, c // self.heads).transpose(1, 2)

        recorder = self.recorders.get(threading.get_ident()) if self.recorders else None
        if recorder is not None:  # the explicit softmax, to hand its text columns to the recorder
            logits = split(q) @ split(k).transpose(-1, -2) / math.sqrt(c // self.heads)  # (B, heads, HW, keys)
            probs = logits.masked_fill(~mask[:, None, None, :], float("-inf")).softmax(dim=-1)
            recorder.record(probs[..., -context.shape[1]:], *shape)  # the text's columns (null tokens first)
            out = probs @ split(v)
        elif pixel_k is not None:
            out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask[:, None, None, :])
        else:
            # Cross-attention only: few keys (the text tokens), where a plain softmax(QK^T)V is much
            # faster on CPU than the fused kernels, which are built for long key sequences.
            logits = split(q) @ split(k).transpose(-1, -2) / math.sqrt(c // self.heads)  # (B, heads, HW, L)
            out = logits.masked_fill(~mask[:, None, None, :], float("-inf")).softmax(dim=-1) @ split(v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, c))


class AttentionPool(nn.Module):
    """Pools the token embeddings into one vector with a learned query (masked softmax)."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(dim) / math.sqrt(dim))
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, out_dim))

    def keys_and_logits(self, context: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, L, D) -> the tokens' keys (B, L, D) and how much each weighs in the pool (B, L), before the mask."""
        keys = self.to_k(context)
        return keys, (keys @ self.query) / math.sqrt(context.shape[-1])

    def forward(self, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        logits = self.keys_and_logits(context)[1].masked_fill(~context_mask, float("-inf"))
        pooled = (logits.softmax(dim=-1)[..., None] * context).sum(dim=1)  # (B, D)
        return self.proj(pooled)


class LocalTextPool(nn.Module):
    """The text pooled once per pixel of a level (see the module docstring): weights = softmax over the tokens of
    the pool's logits + the pixel's query . the token's pool key (AttentionPool.to_k: the keys of a stage that
    begins with this module are already trained, so only the queries are new, and they start at zero: every pixel
    pools what the AttentionPool pools). Its weights go to an attention recorder as a one-head attention map (the
    grounding loss)."""

    def __init__(self, channels: int, context_dim: int, groups: int):
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.to_q = nn.Linear(channels, context_dim, bias=False)
        nn.init.zeros_(self.to_q.weight)
        self.self_attention = False  # its softmax is over the text alone (the grounding loss's choice of layers)
        self.recorders = {}  # as TextAttention.recorders

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor, keys: torch.Tensor,
                pool_logits: torch.Tensor) -> torch.Tensor:
        """x (B, C, h, w), context (B, L, D) with mask (B, L), the pool's keys (B, L, D) and logits (B, L) -> each
        pixel's pooled text (B, h, w, D), before the pool's projection."""
        b, _, h, w = x.shape
        q = self.to_q(self.norm(x).flatten(2).transpose(1, 2))  # (B, hw, D)
        logits = pool_logits[:, None, :] + q @ keys.transpose(1, 2) / math.sqrt(context.shape[-1])
        probs = logits.masked_fill(~context_mask[:, None, :], float("-inf")).softmax(dim=-1)  # (B, hw, L)
        recorder = self.recorders.get(threading.get_ident()) if self.recorders else None
        if recorder is not None:
            recorder.record(probs[:, None], h, w)
        return (probs @ context).view(b, h, w, -1)


def upsampler(in_ch: int, out_ch: int, kind: str) -> nn.Module:
    """x2 upsampling: nearest + conv, or a sub-pixel conv (conv at the low resolution to 4x the
    channels, then PixelShuffle), which costs a quarter of the FLOPs at high resolutions."""
    if kind == "pixel_shuffle":
        return nn.Sequential(nn.Conv2d(in_ch, 4 * out_ch, 3, padding=1), nn.PixelShuffle(2))
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(in_ch, out_ch, 3, padding=1))


class Level(nn.Module):
    """The residual blocks of one resolution, each optionally followed by attention."""

    def __init__(self, in_ch, out_ch, n_blocks, emb_dim, groups, context_dim, head_dim, cross, self_attn, skip_ch=0,
                 pixel_coordinates=False, local_text_pool=False):
        super().__init__()
        # (the level's input: the previous level's channels on the way up, this level's on the way down)
        self.text_pool = LocalTextPool(in_ch, context_dim, groups) if local_text_pool else None
        self.blocks = nn.ModuleList()
        self.attns = nn.ModuleList()
        for i in range(n_blocks):
            self.blocks.append(ResBlock((in_ch if i == 0 else out_ch) + skip_ch, out_ch, emb_dim, groups))
            self.attns.append(
                TextAttention(out_ch, context_dim, head_dim, groups, self_attn, pixel_coordinates)
                if cross or self_attn else nn.Identity()
            )


class ImagenUNet(ModelMixin, ConfigMixin):
    """Efficient U-Net for a base (text -> image) or super-resolution (low-res + text -> image) stage."""

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        in_channels: int = 3,
        out_channels: int = 3,
        block_out_channels: Sequence[int] = (64, 128, 256),
        layers_per_block: Sequence[int] = (1, 2, 4),
        cross_attention_levels: Sequence[bool] = (False, True, True),
        self_attention_levels: Sequence[bool] = (False, False, True),
        text_embed_dim: int = 256,
        attention_head_dim: int = 32,
        norm_num_groups: int = 32,
        num_null_tokens: int = 1,
        mid_self_attention: bool = True,
        upsample: str = "nearest",
        lowres_cond: bool = False,
        lowres_factor: int = 4,
        prediction_type: str = "epsilon",
        skip_scale: float = 1 / math.sqrt(2),
        residual: bool = False,
        text_position_embeddings: int = 0,
        text_position_init_scale: float = 0.0,
        pixel_coordinates: bool = False,
        space_to_depth: int = 1,
        space_to_depth_schedule: str = "squaredcos_cap_v2",
        space_to_depth_detail_std: Optional[float] = None,
        local_text_pool: bool = False,
    ):
        super().__init__()
        n = len(block_out_channels)
        for name, value in [("layers_per_block", layers_per_block), ("cross_attention_levels", cross_attention_levels),
                            ("self_attention_levels", self_attention_levels)]:
            if len(value) != n:
                raise ValueError(f"{name} has {len(value)} entries but block_out_channels has {n} levels")
        if upsample not in ("nearest", "pixel_shuffle"):
            raise ValueError(f"upsample must be 'nearest' or 'pixel_shuffle', got {upsample!r}")
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
        if residual and not lowres_cond:
            raise ValueError("residual=True is for super-resolution stages (lowres_cond=True)")
        if space_to_depth < 1 or sample_size % space_to_depth:
            raise ValueError(f"space_to_depth must be a whole divisor of sample_size {sample_size}, got {space_to_depth}")
        if space_to_depth > 1 and (lowres_cond or prediction_type != "v_prediction"):
            raise ValueError("space_to_depth is for v-prediction base stages (lowres_cond=False)")
        folded = space_to_depth ** 2
        ch = list(block_out_channels)
        emb_dim = 4 * ch[0]
        self.time_embed = nn.Sequential(nn.Linear(ch[0], emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # Noise-augmentation level of the low-res conditioning image (§2.5), an extra embedding.
        self.aug_embed = (
            nn.Sequential(nn.Linear(ch[0], emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)) if lowres_cond else None
        )
        self.null_tokens = nn.Parameter(torch.randn(num_null_tokens, text_embed_dim) * 0.02)
        self.context_norm = nn.LayerNorm(text_embed_dim)
        # One learned vector per text token position (0: none). Zero, so that adding it changes nothing yet, or the
        # transformer's sinusoids times `text_position_init_scale` (the text tokens, layer-normed, have a norm of
        # about sqrt(text_embed_dim) x the norm's gain): from zero the cross-attention only slowly learns to use them.
        self.text_positions = None
        if text_position_embeddings:
            init = sinusoidal_embedding(torch.arange(text_position_embeddings), text_embed_dim) * text_position_init_scale
            self.text_positions = nn.Parameter(init)
        self.text_pool = AttentionPool(text_embed_dim, emb_dim)

        self.conv_in = nn.Conv2d(in_channels * (2 if lowres_cond else 1) * folded, ch[0], 3, padding=1)
        level_args = dict(emb_dim=emb_dim, groups=norm_num_groups, context_dim=text_embed_dim, head_dim=attention_head_dim,
                          pixel_coordinates=pixel_coordinates, local_text_pool=local_text_pool)
        self.down_levels = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        for i in range(n):
            # Efficient U-Net: downsample *before* the blocks of the level (identity at level 0).
            self.downsamplers.append(nn.Conv2d(ch[i - 1], ch[i], 3, stride=2, padding=1) if i else nn.Identity())
            self.down_levels.append(Level(ch[i], ch[i], layers_per_block[i], cross=cross_attention_levels[i],
                                          self_attn=self_attention_levels[i], **level_args))
        self.mid = Level(ch[-1], ch[-1], 1, cross=True, self_attn=mid_self_attention, **level_args)
        self.up_levels = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for i in reversed(range(n)):
            self.up_levels.append(Level(ch[i], ch[i], layers_per_block[i], cross=cross_attention_levels[i],
                                        self_attn=self_attention_levels[i], skip_ch=ch[i], **level_args))
            # ... and upsample *after* them.
            self.upsamplers.append(upsampler(ch[i], ch[i - 1], upsample) if i else nn.Identity())
        self.norm_out = group_norm(ch[0], norm_num_groups)
        self.conv_out = nn.Conv2d(ch[0], out_channels * folded, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def _context(self, text_embeds: torch.Tensor, text_mask: torch.Tensor):
        """Prepends the learned null tokens: (B, L, D), (B, L) -> (B, N + L, D), (B, N + L). With position
        embeddings, the i-th text token gets the i-th one (tokens past the last position get none)."""
        b = text_embeds.shape[0]
        null = self.null_tokens.to(text_embeds.dtype)[None].expand(b, -1, -1)
        context = self.context_norm(torch.cat([null, text_embeds], dim=1))
        if self.text_positions is not None:
            n = min(text_embeds.shape[1], self.text_positions.shape[0])
            positions = F.pad(self.text_positions[:n].to(context.dtype), (0, 0, null.shape[1], context.shape[1] - null.shape[1] - n))
            context = context + positions[None]
        mask = torch.cat([text_mask.new_ones(b, null.shape[1]), text_mask], dim=1).bool()
        return context, mask

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: Optional[torch.Tensor] = None,
        lowres_image: Optional[torch.Tensor] = None,
        noise_aug_level: Optional[torch.Tensor] = None,
        return_dict: bool = True,
        pooled_text_keep: Optional[torch.Tensor] = None,
    ):
        """sample (B, C, H, W); timestep scalar or (B,); encoder_hidden_states (B, L, D) with mask (B, L);
        for SR stages lowres_image (B, C, h, w) in [-1, 1] and noise_aug_level (B,) in [0, 1]. `pooled_text_keep`
        (B,), training only: 0 where a row's pooled text vector is left out (the text then reaches that row through
        the attention layers alone; train.py `pooled_text_drop_prob`)."""
        b, _, h, w = sample.shape
        timestep = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(b)
        if encoder_attention_mask is None:
            encoder_attention_mask = torch.ones(encoder_hidden_states.shape[:2], dtype=torch.bool, device=sample.device)
        context, mask = self._context(encoder_hidden_states.to(sample.dtype), encoder_attention_mask)

        emb = self.time_embed(sinusoidal_embedding(timestep, self.config.block_out_channels[0]).to(sample.dtype))
        keep = None if pooled_text_keep is None else pooled_text_keep.to(emb.dtype)[:, None]
        if self.config.local_text_pool:  # each level pools the text per pixel (`level_embedding`)
            pool_keys, pool_logits = self.text_pool.keys_and_logits(context)
        else:
            pooled = self.text_pool(context, mask)
            emb = emb + (pooled if keep is None else pooled * keep)
        x = sample
        if self.config.lowres_cond:
            if lowres_image is None:
                raise ValueError("this super-resolution U-Net needs `lowres_image`")
            if noise_aug_level is None:
                noise_aug_level = torch.zeros(b, device=sample.device)
            aug = torch.as_tensor(noise_aug_level, device=sample.device, dtype=torch.float32).reshape(-1).expand(b)
            emb = emb + self.aug_embed(sinusoidal_embedding(aug * 1000, self.config.block_out_channels[0]).to(sample.dtype))
            # improved-diffusion style: upsample the low-res image and concatenate it to the input.
            x = torch.cat([x, upsample_lowres(lowres_image.to(sample.dtype), h)], dim=1)

        fold = self.config.space_to_depth
        if fold > 1:
            if h % fold or w % fold:
                raise ValueError(f"a space_to_depth={fold} U-Net needs a side divisible by {fold}, got {h} x {w}")
            levels = self._folded_noise_levels(timestep)
            x = F.pixel_unshuffle(sample, fold) * levels["scale"].to(sample.dtype)
        x = self.conv_in(x)

        def level_embedding(level: Level, x: torch.Tensor) -> torch.Tensor:
            """The embedding the level's blocks read: `emb`, or with local text pools `emb` + the text pooled at
            each of the level's pixels (B, h, w, E)."""
            if level.text_pool is None:
                return emb
            pooled = self.text_pool.proj(level.text_pool(x, context, mask, pool_keys, pool_logits))
            if keep is not None:
                pooled = pooled * keep[:, None, None]
            return emb[:, None, None, :] + pooled

        skips = []
        for down, level in zip(self.downsamplers, self.down_levels):
            x = down(x)
            level_emb = level_embedding(level, x)
            for block, attn in zip(level.blocks, level.attns):
                x = block(x, level_emb)
                x = attn(x, context, mask) if not isinstance(attn, nn.Identity) else x
                skips.append(x)
        x = self.mid.attns[0](self.mid.blocks[0](x, level_embedding(self.mid, x)), context, mask)
        for level, up in zip(self.up_levels, self.upsamplers):
            level_emb = level_embedding(level, x)
            for block, attn in zip(level.blocks, level.attns):
                x = block(torch.cat([x, skips.pop() * self.config.skip_scale], dim=1), level_emb)
                x = attn(x, context, mask) if not isinstance(attn, nn.Identity) else x
            x = up(x)
        out = self.conv_out(F.silu(self.norm_out(x)))
        if fold > 1:
            out = self._unfolded_prediction(sample, F.pixel_shuffle(out.float(), fold), levels).to(sample.dtype)
        return ImagenUNetOutput(sample=out) if return_dict else (out,)

    def _folded_noise_levels(self, timestep: torch.Tensor) -> dict:
        """(B, 1, 1, 1) each, float32: the stage's alpha and sigma at `timestep` (interpolated in log-SNR between the
        schedule's integer steps, for samplers that ask between them), the input scale, and the alpha and sigma that
        the mean of a fold x fold block then has: the noise level of the unshifted schedule at `timestep`."""
        from .schedules import space_to_depth_log_snr

        log_snr = space_to_depth_log_snr(self.config.space_to_depth_schedule, self.config.space_to_depth)
        log_snr = log_snr.to(timestep.device)
        t = timestep.double().clamp(0, len(log_snr) - 1)
        low = t.floor().long()
        high = (low + 1).clamp(max=len(log_snr) - 1)
        alpha_bar = torch.sigmoid(torch.lerp(log_snr[low], log_snr[high], t - low)).float().view(-1, 1, 1, 1)
        alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        block_sigma = sigma / self.config.space_to_depth  # the mean of fold**2 independent noises
        norm = (alpha ** 2 + block_sigma ** 2).sqrt()
        return dict(alpha=alpha, sigma=sigma, scale=1 / norm, block_alpha=alpha / norm, block_sigma=block_sigma / norm)

    def _unfolded_prediction(self, sample: torch.Tensor, block_v: torch.Tensor, levels: dict) -> torch.Tensor:
        """This stage's v from the unfolded output, read as the v-prediction of each pixel's block view: its x0 is the
        block's (scaled) mean less block_sigma x output, and v = (alpha x - x0) / sigma. Computed in float32 (near the
        clean end sigma is about 0.01) and returned in the sample's dtype."""
        fold = self.config.space_to_depth
        x = sample.float()
        block_mean = block_means(x, fold)
        c = self.config.space_to_depth_detail_std
        # With a detail spread c, only the block means of the output go through the block formula; the rest below.
        v_blocks = block_v if c is None else block_means(block_v, fold)
        x0 = levels["block_alpha"] * levels["scale"] * block_mean - levels["block_sigma"] * v_blocks
        if c is not None:  # EDM's preconditioning (Karras et al. 2022, §5) for the detail within each block
            alpha, sigma = levels["alpha"], levels["sigma"]
            spread = (alpha ** 2 * c ** 2 + sigma ** 2).sqrt()
            x0 = x0 + alpha * c ** 2 / spread ** 2 * (x - block_mean) + sigma * c / spread * (block_v - v_blocks)
        return (levels["alpha"] * x - x0) / levels["sigma"]


def block_means(x: torch.Tensor, fold: int) -> torch.Tensor:
    """`x` (B, C, H, W) with every fold x fold block's pixels replaced by the block's mean."""
    return F.interpolate(F.avg_pool2d(x, fold), scale_factor=fold, mode="nearest")


def with_space_to_depth(unet: ImagenUNet, fold: int, beta_schedule: str = "squaredcos_cap_v2",
                        detail_std: Optional[float] = None) -> ImagenUNet:
    """The v-prediction base stage `unet` at `fold` x its side, folded (`space_to_depth`): its first convolution reads
    the mean of each block (the weights spread over the block's channels), its last writes the same prediction to
    every pixel of the block, so at the start it draws exactly what `unet` draws, each pixel a fold x fold block."""
    if unet.config.space_to_depth != 1:
        raise ValueError("this U-Net is already folded")
    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    config.update(sample_size=unet.config.sample_size * fold, space_to_depth=fold, space_to_depth_schedule=beta_schedule,
                  space_to_depth_detail_std=detail_std)
    folded = ImagenUNet(**config).to(unet.device)
    state = unet.state_dict()
    blocks = fold ** 2  # pixel_unshuffle puts channel c's block at channels c * blocks ... c * blocks + blocks - 1
    state["conv_in.weight"] = state["conv_in.weight"].repeat_interleave(blocks, dim=1) / blocks
    state["conv_out.weight"] = state["conv_out.weight"].repeat_interleave(blocks, dim=0)
    state["conv_out.bias"] = state["conv_out.bias"].repeat_interleave(blocks, dim=0)
    folded.load_state_dict(state)
    return folded if unet.dtype == torch.float32 else folded.to(dtype=unet.dtype)
