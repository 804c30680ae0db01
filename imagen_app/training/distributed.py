"""Several processes training one model (torchrun or `accelerate launch`), and a single process alike.

Each process draws its own batches (a seed offset by its rank), accelerate averages the gradients (gloo on CPUs,
nccl on GPUs), the main process alone logs, samples and writes checkpoints, and one all-reduce per step tells every
rank whether to stop, so that all stop at the same step.

A process that a launcher started stops with its launcher (`stop_with_launcher`): killed, torchrun and accelerate
launch leave their workers running, and those kept training and writing checkpoints beside a restarted job. The
kernel sends them SIGTERM instead, and StopRequest makes them checkpoint the step reached and exit.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sys
import threading
import time
from typing import List

import torch


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel (or DataParallel) wrapper; the model itself when it has none."""
    return getattr(model, "module", model)


def make_accelerator(cfg):
    """accelerate's Accelerator, set up for the processes that torchrun or `accelerate launch` started.

    Without CUDA, accelerate builds a process group only when told to use the CPU: with cpu=False
    it reads LOCAL_RANK, finds no GPU backend and falls back to DistributedType.NO (one process
    group per rank, no gradient all-reduce). So several processes on a CPU-only machine get cpu=True
    (gloo)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    # Cross-attention-only levels of ImagenUNet hold a self-attention projection (to_kv) that gets no gradient:
    # DDP must be told, or its second step fails waiting for those gradients.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    return Accelerator(mixed_precision=cfg.mixed_precision, cpu=several and not torch.cuda.is_available(),
                       kwargs_handlers=[ddp])


def describe_processes(accelerator, cfg) -> str:
    """The run's first log line: the processes, the device, the per-process and global batch, the lr."""
    n = accelerator.num_processes
    return (f"{n} process{'es' if n > 1 else ''} ({accelerator.distributed_type.value}) on {accelerator.device}, "
            f"float32 weights, mixed precision {cfg.mixed_precision}: batch {cfg.batch_size} per process, "
            f"global batch {cfg.batch_size * n}; lr {cfg.lr:g} ({cfg.lr_schedule}, {cfg.warmup_steps} warm-up steps)")


def process_rng(seed: int, rank: int) -> random.Random:
    """The data RNG of a process; ranks > 0 also re-seed torch (noise, timesteps, text dropping), so every
    rank draws its own batches. Rank 0 keeps the single-process streams: one process trains as before."""
    if rank:
        torch.manual_seed(seed + rank)
    return random.Random(seed + rank)


def share_loss_and_stop(accelerator, loss: torch.Tensor, stop: bool) -> tuple:
    """The loss averaged over the ranks, and whether to stop (the main process's decision, or any rank's SIGTERM),
    in one all-reduce so that every rank leaves the loop after the same step."""
    both = torch.stack([loss.detach().float(), torch.tensor(float(stop), device=loss.device)])
    both = accelerator.reduce(both, reduction="sum")
    return both[0].item() / accelerator.num_processes, both[1].item() > 0


def share_curriculum(accelerator, curriculum) -> None:
    """Every rank takes the main process's plan (its passes), so that all draw from the same blocks."""
    from accelerate.utils import broadcast_object_list

    if accelerator.num_processes > 1:
        curriculum.passes = broadcast_object_list([curriculum.passes], from_process=0)[0]


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def stop_with_launcher(poll_s: float = 1.0) -> str:
    """In a process started by a launcher (torchrun, accelerate launch: RANK or LOCAL_RANK set), SIGTERM this process
    when the launcher dies: on Linux the kernel does it (prctl PR_SET_PDEATHSIG), elsewhere a daemon thread that
    notices the parent pid change. Returns how ("prctl", "watchdog"), or "" outside a launcher."""
    if "RANK" not in os.environ and "LOCAL_RANK" not in os.environ:
        return ""
    parent = os.getppid()
    how = "watchdog"
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0:
            how = "prctl"
    if how == "watchdog":
        threading.Thread(target=_watch_parent, args=(parent, poll_s), name="stop-with-launcher", daemon=True).start()
    # the launcher died between getppid() and prctl (before getppid(): not seen, as a launcher may run as pid 1)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)
    return how


def _watch_parent(parent: int, poll_s: float) -> None:
    while os.getppid() == parent:
        time.sleep(poll_s)
    os.kill(os.getpid(), signal.SIGTERM)


class StopRequest:
    """Set by SIGTERM (in the main thread; restored on exit)."""

    def __init__(self):
        self.requested = False
        self._old = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._request)

    def _request(self, *_):
        self.requested = True

    def restore(self):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def weights_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha1()
    for p in model.parameters():
        h.update(p.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def record_ranks(accelerator, run_dir: str, step: int, idx: List[int], unet) -> None:
    """Appends every rank's batch indices and weight hash at `step` to ranks.jsonl (main process)."""
    from accelerate.utils import gather_object

    rows = gather_object([dict(rank=accelerator.process_index, indices=list(idx), weights=weights_hash(unwrap(unet)))])
    if accelerator.is_main_process:
        with open(os.path.join(run_dir, "ranks.jsonl"), "a") as f:
            f.write(json.dumps(dict(step=step, ranks=rows)) + "\n")
