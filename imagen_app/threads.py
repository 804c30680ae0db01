"""How many CPU threads a generation should use: one helper for the app and the command line (and shown by `bench`).

PyTorch's default is one thread per core of the machine. On a machine that other work keeps busy that
oversubscribes the cores: OpenMP's threads spin waiting for each other, and `python -m imagen_app generate` took
46.8 s with the default on a busy 2-core machine, 10.1 s with OMP_NUM_THREADS=1. So the count is the cores this
process may run on (its CPU affinity, and a cgroup CPU quota where there is one) less the work already running
(the 1-minute load average), rounded, at least 1. An explicit choice wins: a `--threads` flag, or the
OMP_NUM_THREADS / IMAGEN_THREADS environment variables. No torch import here: the CLI's --help stays fast.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional

CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"  # cgroup v2: "<quota> <period>" or "max <period>"


def available_cores() -> int:
    """The cores this process may run on: its CPU affinity (os.sched_getaffinity, where the OS has it, else
    os.cpu_count()), capped by a cgroup v2 CPU quota (a container's --cpus), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        with open(CGROUP_CPU_MAX) as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def load_average() -> Optional[float]:
    """The 1-minute load average (runnable processes), or None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    reason: str  # e.g. "2 cores available, load 4.5" or "OMP_NUM_THREADS=1"

    def describe(self) -> str:
        return f"{self.threads} thread{'s' if self.threads != 1 else ''} ({self.reason})"


def choose_threads(requested: Optional[int] = None, cores: Optional[int] = None,
                   load: Optional[float] = None) -> ThreadChoice:
    """The thread count for this process: `requested` (a --threads flag) if given, else IMAGEN_THREADS or
    OMP_NUM_THREADS if set, else the available cores less the load average (rounded; at least 1, at most the
    cores). `cores` and `load` default to this machine's (available_cores, load_average)."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"threads must be 1 or more, got {requested}")
        return ThreadChoice(int(requested), "asked for")
    for name in ("IMAGEN_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return ThreadChoice(int(value), f"{name}={value}")
    cores = available_cores() if cores is None else cores
    load = load_average() if load is None else load
    if load is None:
        return ThreadChoice(cores, f"{cores} core{'s' if cores != 1 else ''} available")
    free = cores - load
    threads = max(1, min(cores, int(math.floor(free + 0.5))))
    return ThreadChoice(threads, f"{cores} core{'s' if cores != 1 else ''} available, load average {load:.1f}")


_chosen: Optional[ThreadChoice] = None


def use_available_cores(requested: Optional[int] = None) -> ThreadChoice:
    """Sets PyTorch's intra-op threads to `choose_threads(requested)` and returns the choice (also kept for
    `current_choice`). Call once, before the first generation."""
    global _chosen
    import torch

    choice = choose_threads(requested)
    torch.set_num_threads(choice.threads)
    _chosen = choice
    return choice


def current_choice() -> ThreadChoice:
    """What `use_available_cores` chose in this process, or PyTorch's current count where it was not called."""
    import torch

    if _chosen is not None and _chosen.threads == torch.get_num_threads():
        return _chosen
    return ThreadChoice(torch.get_num_threads(), "set by the caller")
