"""A run's checkpoint: one safetensors file that a killed or stopped run resumes from exactly.

The tensors are the U-Net's weights, the EMA weights, the optimizer state and every rank's torch RNG states; the
header holds a JSON of the rest (step, EMA updates, learning-rate schedule, optimizer groups, the Python RNG
states). Written atomically (temp file + rename) so that a kill mid-write leaves the previous checkpoint intact.
A legacy `checkpoint.pt` (the pickled format written before) still resumes; it is never written.

The run folder itself: a job holds it with an exclusive lock (`claim_run_folder`: flock on `RUN/.lock`, which the
kernel releases when the process dies, however it dies), so that a second job on the same folder fails at once
instead of training beside the first; and the temporary files of a checkpoint write that a kill interrupted are
removed when a run starts or resumes (`remove_stale_temp_files`).
"""
from __future__ import annotations

import json
import os
import random
import re
from typing import List, Optional, Sequence

import torch

from .distributed import unwrap

CHECKPOINT = "checkpoint.safetensors"
LEGACY_CHECKPOINT = "checkpoint.pt"  # the pickled format written before; read, never written
LOCK = ".lock"  # flock-ed by the main process of the job that trains in the run folder; holds its pid
# The temporary files of a checkpoint write: safetensors (0.8) writes through a hidden file in the target's folder
# (Rust's tempfile crate: ".tmp" and 6 letters or digits), sized to the whole checkpoint up front (zeros until
# written) and renamed onto the target, which is write_checkpoint's "checkpoint.safetensors.tmp", renamed in turn
# onto the checkpoint ("checkpoint.pt.tmp": the earlier writer's). A kill between the steps leaves one behind.
TEMP_NAME = re.compile(r"\.tmp[A-Za-z0-9]{6}|"
                       + "|".join(re.escape(name + ".tmp") for name in (CHECKPOINT, LEGACY_CHECKPOINT)))


def checkpoint_path(run_dir: str) -> Optional[str]:
    """The checkpoint to resume from: checkpoint.safetensors, or a legacy checkpoint.pt (the newer if both exist)."""
    paths = [os.path.join(run_dir, name) for name in (CHECKPOINT, LEGACY_CHECKPOINT)]
    paths = [p for p in paths if os.path.exists(p)]
    return max(paths, key=os.path.getmtime) if paths else None


def save_checkpoint(path: str, accelerator, step: int, unet, ema, opt, lr_scheduler, rng: random.Random,
                    collective: bool = True) -> None:
    """Gathers every rank's RNG states (a collective call, unless `collective` is False: then this rank's alone),
    and the main process writes the checkpoint. `ema`: the EMA weights (`model()`, `updates`)."""
    from accelerate.utils import gather_object

    states = gather_object([rng_state(rng)]) if collective else [rng_state(rng)]
    if accelerator.is_main_process:
        write_checkpoint(path, dict(step=step, unet=unwrap(unet).state_dict(), ema=ema.model().state_dict(),
                                    ema_updates=ema.updates, opt=opt.state_dict(),
                                    lr_scheduler=lr_scheduler.state_dict(), rng=states))


def resume(path: str, unet, opt, lr_scheduler, rng: random.Random, rank: int, processes: int, log) -> dict:
    """Reads the checkpoint at `path` (either format) into this rank's U-Net, optimizer, schedule and RNGs, and
    returns it: its EMA weights (`ema`, `ema_updates`) are the caller's to load."""
    ckpt = read_checkpoint(path)
    unet.load_state_dict(ckpt["unet"])
    opt.load_state_dict(ckpt["opt"])
    restore_lr_schedule(lr_scheduler, opt, ckpt["lr_scheduler"], ckpt["step"])
    if rank < len(ckpt["rng"]):  # a rank the checkpoint did not know keeps its fresh, offset seed
        set_rng_state(rng, ckpt["rng"][rank])
    log(f"resumed from {path} at step {ckpt['step']}")
    if len(ckpt["rng"]) != processes:
        log(f"the checkpoint holds the RNG states of {len(ckpt['rng'])} process(es), this run has "
            f"{processes}: ranks without a saved state draw from their fresh seed")
    return ckpt


def grow_checkpoint(ckpt: dict, unet, groups: Sequence[Sequence[str]]) -> dict:
    """`ckpt` (as `read_checkpoint` gives it) for `unet`, a U-Net with every parameter of the checkpoint's and new ones
    (a module a config adds, e.g. `local_text_pool`): the new parameters and buffers take `unet`'s values, in the
    weights and the EMA alike, and start with no optimizer state (AdamW starts it at their first step); the rest of
    the optimizer state, the step, the lr schedule and the RNG states carry over. `groups`: the names of the
    optimizer's parameter groups, in order (train.parameter_groups), which the checkpoint's groups must match."""
    fresh = {name: value.detach().clone() for name, value in unet.state_dict().items()}
    unknown = sorted(set(ckpt["unet"]) - set(fresh))
    if unknown:
        raise ValueError(f"the checkpoint has weights this U-Net does not: {unknown[:5]}")
    if len(groups) != len(ckpt["opt"]["param_groups"]):
        raise ValueError(f"the checkpoint's optimizer has {len(ckpt['opt']['param_groups'])} parameter groups, "
                         f"this run {len(groups)}")
    new_index = {name: i for i, name in enumerate(name for group in groups for name in group)}
    old_order = [name for name in new_index if name in ckpt["unet"]]  # the checkpoint's optimizer order
    state = {new_index[name]: ckpt["opt"]["state"][i] for i, name in enumerate(old_order) if i in ckpt["opt"]["state"]}
    param_groups, start = [], 0
    for group, saved in zip(groups, ckpt["opt"]["param_groups"]):
        param_groups.append(dict(saved, params=list(range(start, start + len(group)))))
        start += len(group)
    return dict(ckpt, unet={**fresh, **ckpt["unet"]}, ema={**{k: v.clone() for k, v in fresh.items()}, **ckpt["ema"]},
                opt=dict(state=state, param_groups=param_groups))


# --- the run folder ------------------------------------------------------------------------------------------------

class RunFolderInUse(OSError):
    """Another training job holds the run folder (the CLI prints the message and exits with status 2)."""


class RunFolderLock:
    """An exclusive flock on RUN/.lock, with this process's pid in the file, until `release()` (or the process's
    death: the kernel drops a dead process's flocks, so a killed job never leaves a stale lock behind). The file
    stays (removing it would let a job lock a new file while another holds the old one); `release` empties it.
    Where the file system (or the OS) has no flock, `held` is False and `unsupported` says why."""

    def __init__(self, run_dir: str):
        os.makedirs(run_dir, exist_ok=True)
        self.path = os.path.join(run_dir, LOCK)
        self.held, self.unsupported = False, ""
        self._file = open(self.path, "a+")  # created if missing, never truncated before the lock is ours
        try:
            import fcntl

            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            pid = self._file.read().strip() or "unknown"
            self._file.close()
            raise RunFolderInUse(f"{run_dir} is in use by another training job (pid {pid}); stop it first") from None
        except (ImportError, OSError) as e:  # no fcntl (Windows), or a file system without locks
            self._file.close()
            self.unsupported = str(e) or type(e).__name__
            return
        self.held = True
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()

    def release(self) -> None:
        if self._file.closed:
            return
        self._file.seek(0)
        self._file.truncate()
        self._file.close()  # closing the file drops the flock


def claim_run_folder(run_dir: str, accelerator, log) -> Optional[RunFolderLock]:
    """The main process locks the run folder for the whole run (`RunFolderLock`), then removes the temporary files
    that an interrupted checkpoint write left; every rank raises RunFolderInUse if another job holds the folder.
    Call before anything is written to the folder; `release()` the returned lock (None on the other ranks) at the
    end. A collective call when there are several processes."""
    lock, error = None, None
    if accelerator.is_main_process:
        try:
            lock = RunFolderLock(run_dir)
        except RunFolderInUse as e:
            error = str(e)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        error = broadcast_object_list([error], from_process=0)[0]
    if error is not None:
        raise RunFolderInUse(error)
    if lock is not None and lock.held:
        remove_stale_temp_files(run_dir, log)
    elif lock is not None:
        log(f"could not lock {lock.path} ({lock.unsupported}): nothing stops a second job on this run folder, and "
            f"temporary files of interrupted checkpoint writes are left in place")
    return lock


def remove_stale_temp_files(run_dir: str, log) -> List[str]:
    """Removes the files of the run folder (not below it) whose names are a checkpoint write's temporary names
    (TEMP_NAME), and logs one line naming them; returns their names. Only while holding the folder's lock: a
    running job's write in progress has these names too."""
    removed, sizes = [], []
    for entry in sorted(os.scandir(run_dir), key=lambda e: e.name):
        if TEMP_NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            sizes.append(entry.stat(follow_symlinks=False).st_size)
            os.remove(entry.path)
            removed.append(entry.name)
    if removed:
        log(f"removed the temporary files of an interrupted checkpoint write from {run_dir}: "
            + ", ".join(f"{name} ({size / 1e6:.1f} MB)" for name, size in zip(removed, sizes)))
    return removed


# --- the checkpoint file --------------------------------------------------------------------------------------------

def write_checkpoint(path: str, ckpt: dict) -> None:
    """Writes `ckpt` (as `read_checkpoint` returns it) as one safetensors file: the tensors, and in the header
    a JSON of the rest. Atomic: a kill mid-write leaves the previous checkpoint intact."""
    from safetensors.torch import save_file

    tensors = {f"unet.{k}": v for k, v in ckpt["unet"].items()}
    tensors.update({f"ema.{k}": v for k, v in ckpt["ema"].items()})
    for i, state in ckpt["opt"]["state"].items():
        tensors.update({f"opt.{i}.{k}": v for k, v in state.items()})
    rng = []
    for r, states in enumerate(ckpt["rng"]):
        tensors[f"rng.{r}.torch"] = states["torch"]
        if states.get("cuda") is not None:
            tensors[f"rng.{r}.cuda"] = states["cuda"]
        rng.append(dict(python=states["python"]))
    meta = dict(format=1, step=ckpt["step"], ema_updates=ckpt["ema_updates"], lr_scheduler=ckpt["lr_scheduler"],
                opt_param_groups=ckpt["opt"]["param_groups"], rng=rng)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata={"imagen_app": json.dumps(meta)})
    os.replace(tmp, path)


def read_checkpoint(path: str) -> dict:
    """step, unet and ema state dicts, ema_updates, opt (optimizer state dict), lr_scheduler (None from a legacy
    file) and rng (one {python, torch, cuda} per rank that wrote it), from either checkpoint format."""
    if path.endswith(".pt"):
        return _read_legacy_checkpoint(path)
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        meta = json.loads(f.metadata()["imagen_app"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}

    def group(prefix):
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    opt_state = {}
    for key, v in group("opt.").items():
        i, name = key.split(".", 1)
        opt_state.setdefault(int(i), {})[name] = v
    rng = [dict(python=r["python"], torch=tensors[f"rng.{k}.torch"], cuda=tensors.get(f"rng.{k}.cuda"))
           for k, r in enumerate(meta["rng"])]
    return dict(step=meta["step"], unet=group("unet."), ema=group("ema."), ema_updates=meta["ema_updates"],
                opt=dict(state=opt_state, param_groups=meta["opt_param_groups"]), lr_scheduler=meta["lr_scheduler"],
                rng=rng)


def read_checkpoint_step(path: str) -> int:
    """The step of a checkpoint, reading only the header of the new format."""
    if path.endswith(".pt"):
        return _read_legacy_checkpoint(path)["step"]
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        return json.loads(f.metadata()["imagen_app"])["step"]


def _read_legacy_checkpoint(path: str) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)  # tensors, numbers and tuples: no code runs
    return dict(step=state["step"], unet=state["unet"], ema=state["ema"], ema_updates=state["ema_updates"],
                opt=state["opt"], lr_scheduler=None,
                rng=[dict(python=state["python_rng"], torch=state["torch_rng"], cuda=None)])


def rng_state(rng: random.Random) -> dict:
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() else None
    return dict(python=rng.getstate(), torch=torch.get_rng_state(), cuda=cuda)


def set_rng_state(rng: random.Random, states: dict) -> None:
    version, internal, gauss = states["python"]  # JSON turned the tuples into lists
    rng.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(states["torch"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


def restore_lr_schedule(lr_scheduler, opt, saved: Optional[dict], step: int) -> None:
    """Loads the schedule's state; a legacy checkpoint has none, so the schedule is placed at `step`."""
    if saved is None:
        saved = lr_scheduler.state_dict()
        lrs = [base * f(step) for base, f in zip(lr_scheduler.base_lrs, lr_scheduler.lr_lambdas)]
        saved.update(last_epoch=step, _step_count=step + 1, _last_lr=lrs)
        for g, lr in zip(opt.param_groups, lrs):
            g["lr"] = lr
    lr_scheduler.load_state_dict(saved)
