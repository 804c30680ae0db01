"""bf16 autocast for the U-Nets on a CPU that has bf16 instructions.

On such a CPU (AVX512-BF16 or AMX: recent AMD EPYC and Intel Xeon) oneDNN runs the convolutions and matrix
products in bfloat16 about twice as fast as in float32 (the 512 px stage: 462-604 -> 227-339 ms a call on this
project's 2-core AMD EPYC, docs/evaluation.md#timing), while the weights, guidance, the schedulers' arithmetic and
the images stay float32. Elsewhere bf16 would be
emulated and slower, so it is on only where the CPU has the instructions. IMAGEN_CPU_BF16=0 (or 1) overrides the
choice; so does setting `ImagenPipeline.cpu_bf16`.
"""
from __future__ import annotations

import contextlib
import os

import torch

ENV = "IMAGEN_CPU_BF16"


def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX tiles)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    except RuntimeError:  # a build without the probes' backend
        return False


def default_cpu_bf16() -> bool:
    """IMAGEN_CPU_BF16 when it is "0" or "1", else whether the CPU has bf16 instructions."""
    value = os.environ.get(ENV, "").strip()
    if value in ("0", "1"):
        return value == "1"
    if value:
        raise ValueError(f"{ENV} must be 0 or 1, not {value!r}")
    return cpu_has_bf16()


def unet_autocast(module: torch.nn.Module, enabled: bool):
    """The context to call `module` in: bf16 autocast when `enabled` and the module is a float32 one on the CPU
    (a half-precision or GPU module runs as it is)."""
    try:
        param = next(module.parameters())
    except StopIteration:
        return contextlib.nullcontext()
    if enabled and param.device.type == "cpu" and param.dtype == torch.float32:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()
