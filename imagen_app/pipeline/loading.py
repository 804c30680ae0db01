"""Loading a saved ImagenPipeline folder, one function per concern; `ImagenPipeline.from_pretrained` composes them.

- `local_folder`: the folder itself, or (where a hub is reachable) a hub repo's snapshot; offline by default
  under HF_HUB_OFFLINE; a clear FileNotFoundError for a path that is not there.
- `read_index`: model_index.json, the components and their classes.
- `component_class`: a component's class, by the module path saved in model_index.json (`LEGACY_MODULES` maps
  the paths of pipelines saved before the package had layer folders).
- `load_component`: one component; an OSError that names a damaged weight file; fp16 U-Nets in fp32 on the CPU;
  weights in aligned memory (`own_aligned_memory`).
- `load_components`: every component of the index, or the caller's replacement.
- `load_defaults` / `write_defaults`: pipeline_defaults.json, the pipeline's default settings (a missing or damaged
  file, or a wrong value in it: the shipped model's defaults, with a warning).
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import re
import warnings
from typing import Any, Dict, List, Optional

import torch
from huggingface_hub import snapshot_download

from ..hub import hub_offline
from ..models.text_encoder import freeze
from ..models.unet import ImagenUNet
from .settings import DEFAULT_NAMES, SHIPPED_DEFAULTS, check_default

log = logging.getLogger("imagen_app.pipeline")

# Module paths that pipelines saved before the package had layer folders name in model_index.json.
LEGACY_MODULES = {"imagen_app.unet": "imagen_app.models.unet"}
DEFAULTS_FILE = "pipeline_defaults.json"


def local_folder(path_or_id, local_files_only: Optional[bool] = None) -> str:
    """A saved pipeline's folder: `path_or_id` itself, or the hub snapshot of the repo id `owner/repo`
    (local files only when `local_files_only`, which defaults to HF_HUB_OFFLINE being set)."""
    path = str(path_or_id)
    if os.path.isdir(path):
        return path
    # Only a name of the form owner/repo can be a hub id; anything else is a folder that is not there.
    if os.path.exists(path) or not re.fullmatch(r"[\w.-]+/[\w.-]+", path) or path.startswith("."):
        raise FileNotFoundError(f"no such folder: {path}" + (" (it is a file)" if os.path.exists(path) else ""))
    try:
        return snapshot_download(path, local_files_only=hub_offline() if local_files_only is None else local_files_only)
    except Exception as e:
        raise FileNotFoundError(f"no such folder: {path}, and no hub repo {path!r} could be loaded "
                                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e


def read_index(folder: str) -> Dict[str, List[str]]:
    """{component name: [library, class name]} from the folder's model_index.json (components saved as None
    and the index's own keys left out)."""
    index_path = os.path.join(folder, "model_index.json")
    if not os.path.exists(index_path):
        raise ValueError(f"{folder} is not a saved ImagenPipeline: it has no model_index.json")
    with open(index_path) as f:
        index = json.load(f)
    return {name: spec for name, spec in index.items()
            if not name.startswith("_") and isinstance(spec, list) and spec[0] is not None}


def component_class(library: str, class_name: str) -> type:
    """The class that model_index.json names, by its module path (or the path it has moved to)."""
    return getattr(importlib.import_module(LEGACY_MODULES.get(library, library)), class_name)


def load_component(folder: str, cls: type, torch_dtype: Optional[torch.dtype] = None):
    """One component from its folder. A weight file that cannot be read (damaged, truncated, missing) is named
    in an OSError that says what to do. With no `torch_dtype`, an ImagenUNet stored in fp16 is computed in fp32
    (the CPU's; `pipe.to()` may change it). Module weights are put in aligned memory (`own_aligned_memory`)."""
    load_kwargs = {}
    if torch_dtype is not None and hasattr(cls, "dtype"):
        load_kwargs["dtype" if cls.__module__.startswith("transformers") else "torch_dtype"] = torch_dtype
    try:
        component = cls.from_pretrained(folder, **load_kwargs)
    except Exception as e:
        files = sorted(f for f in os.listdir(folder) if f.endswith((".safetensors", ".bin"))) if os.path.isdir(folder) else []
        where = ", ".join(os.path.join(folder, f) for f in files) or folder
        raise OSError(f"could not load {os.path.basename(folder)} from {where}: {type(e).__name__}: {e}. The file may "
                      "be damaged or truncated: copy or download it again (or re-save the pipeline).") from e
    if torch_dtype is None and isinstance(component, ImagenUNet) and component.dtype == torch.float16:
        component = component.float()
    if isinstance(component, torch.nn.Module):
        own_aligned_memory(component)
    return component


def load_components(folder: str, torch_dtype: Optional[torch.dtype] = None, **given) -> Dict[str, Any]:
    """The components of a saved pipeline: those of its model_index.json, each loaded from its subfolder unless
    `given` replaces it; then the rest of `given`. The text encoder is frozen."""
    components = {}
    for name, (library, class_name) in read_index(folder).items():
        if name in given:
            components[name] = given.pop(name)
        else:
            components[name] = load_component(os.path.join(folder, name), component_class(library, class_name), torch_dtype)
    components.update(given)
    if hasattr(components.get("text_encoder"), "requires_grad_"):
        components["text_encoder"] = freeze(components["text_encoder"])
    return components


def load_defaults(folder: str, settings: Dict[str, Any]) -> List[str]:
    """Updates `settings` from the folder's pipeline_defaults.json; returns the load warnings. A missing file, or
    one that is not a JSON object, is not fatal: the shipped model's defaults (settings.SHIPPED_DEFAULTS) are used,
    and each value the file holds that SETTINGS refuses is replaced by the shipped one. Every such fault is said
    in the log and as a UserWarning at the caller of `from_pretrained` (the app shows the returned warnings)."""
    path = os.path.join(folder, DEFAULTS_FILE)
    problems: List[str] = []
    saved: Dict[str, Any] = {}
    if not os.path.exists(path):
        problems.append(f"{path} is missing: using the shipped model's default settings instead "
                        f"({json.dumps(SHIPPED_DEFAULTS)}); save the pipeline again or restore the file.")
        saved = dict(SHIPPED_DEFAULTS)
    else:
        try:
            with open(path) as f:
                saved = json.load(f)
            if not isinstance(saved, dict):
                raise ValueError(f"it holds a JSON {type(saved).__name__}, not an object")
        except (ValueError, UnicodeDecodeError) as e:
            problems.append(f"{path} is damaged ({e}): using the shipped model's default settings instead "
                            f"({json.dumps(SHIPPED_DEFAULTS)}); fix the file or save the pipeline again.")
            saved = dict(SHIPPED_DEFAULTS)
    for name, value in list(saved.items()):
        if name not in DEFAULT_NAMES:
            problems.append(f"{path}: {name!r} is not a setting: ignored.")
            del saved[name]
            continue
        try:
            check_default(name, value)
        except ValueError as e:
            problems.append(f"{path}: {name} = {json.dumps(value)} is wrong ({e}): using the shipped model's "
                            f"default {json.dumps(SHIPPED_DEFAULTS[name])} instead; fix the file or save the pipeline again.")
            saved[name] = SHIPPED_DEFAULTS[name]
    settings.update({k: (list(v) if isinstance(v, list) else v) for k, v in saved.items()})
    for message in problems:
        log.warning(message)
        warnings.warn(message, stacklevel=3)  # this function < from_pretrained < its caller
    return problems


def write_defaults(folder: str, settings: Dict[str, Any]) -> None:
    with open(os.path.join(folder, DEFAULTS_FILE), "w") as f:
        json.dump(settings, f, indent=2)


@torch.no_grad()
def own_aligned_memory(module: torch.nn.Module) -> None:
    """Copies weights that safetensors mapped at unaligned file offsets into fresh (aligned) tensors.
    CPU kernels take other code paths for unaligned weights, which round differently: sampling from
    pure noise amplifies that, so a reloaded pipeline would not reproduce the saved one's images."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.data_ptr() % 64:
            tensor.data = tensor.data.clone()
