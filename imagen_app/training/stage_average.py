"""Weight averaging of exported stages ("model soup": Wortsman et al. 2022, "Model soups: averaging weights of
multiple fine-tuned models improves accuracy without increasing inference time").

Two fine-tunes of one base stage lie close enough in weight space that their mean is a model of its own. An earlier
shipped base stage was such a mean: a run that taught colour words (and lost a little elsewhere) averaged with the
stage it started from kept most of the colour and none of the loss. Later colour rounds washed out of
such means (README, "Colour words").
"""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence

from ..models.unet import ImagenUNet


def _architecture(unet: ImagenUNet) -> dict:
    """The config without the keys ("_name_or_path", "_diffusers_version", ...) that only record where it came from."""
    return {k: v for k, v in unet.config.items() if not k.startswith("_")}


def average_stages(stage_dirs: Sequence[str], out_dir: str, weights: Optional[Sequence[float]] = None,
                   fp16: bool = True) -> ImagenUNet:
    """Saves to `out_dir` the ImagenUNet whose every parameter and buffer is the weighted mean (in float32) of
    those of `stage_dirs` (equal weights by default; they must sum to 1). The stages must have the same config.
    `training.json` records the sources and their weights."""
    if len(stage_dirs) < 2:
        raise ValueError("average at least two stages")
    weights = [1.0 / len(stage_dirs)] * len(stage_dirs) if weights is None else [float(w) for w in weights]
    if len(weights) != len(stage_dirs):
        raise ValueError(f"{len(weights)} weights for {len(stage_dirs)} stages")
    if abs(sum(weights) - 1.0) > 1e-6:
        raise ValueError(f"the weights sum to {sum(weights)}, not 1")
    unets = [ImagenUNet.from_pretrained(d) for d in stage_dirs]
    for d, unet in zip(stage_dirs[1:], unets[1:]):
        if _architecture(unet) != _architecture(unets[0]):
            raise ValueError(f"{d} has another config than {stage_dirs[0]}: only stages of one architecture average")
    states = [u.state_dict() for u in unets]
    mean = {name: sum(w * s[name].float() for w, s in zip(weights, states)).to(states[0][name].dtype)
            for name in states[0]}
    out = unets[0]
    out.load_state_dict(mean)
    (out.half() if fp16 else out.float()).save_pretrained(out_dir, safe_serialization=True)
    sources = []
    for d, w in zip(stage_dirs, weights):
        path = os.path.join(d, "training.json")
        sources.append(dict(stage=d, weight=w, training=json.load(open(path)) if os.path.exists(path) else None))
    schedule = next((s["training"]["schedule"] for s in sources if s["training"] and "schedule" in s["training"]),
                    None)
    with open(os.path.join(out_dir, "training.json"), "w") as f:
        json.dump(dict(averaged_from=sources, schedule=schedule), f, indent=2)
    return out
