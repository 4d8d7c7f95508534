"""CPU cores for trial processes: SWEEP_CPUS=0-7 pins a worker's trials to those cores.

    SWEEP_CPUS=0-7 make worker ...   # one worker on cores 0-7, another on 8-15

Read by preflight (checked before anything runs) and by each trial process (pinned at start).
Light on purpose: no torch until a process actually pins itself.
"""

from __future__ import annotations

import os

CPUS_ENV = "SWEEP_CPUS"  # the CPU cores trial processes run on, e.g. "0-7" (unset: all)


def parse_cpus(spec: str) -> set[int]:
    """CPU cores from "0-3,6" (the taskset/cgroup list format)."""
    try:
        cpus: set[int] = set()
        for part in spec.split(","):
            lo, _, hi = part.strip().partition("-")
            first, last = int(lo), int(hi or lo)
            if last < first:  # "3-1" would name no core at all
                raise ValueError(part)
            cpus.update(range(first, last + 1))
    except ValueError:
        raise ValueError(f"{CPUS_ENV}={spec!r} is not allowed; expected cores like 0-3,6") from None
    return cpus


def pin_cpus(cpus: set[int]) -> None:
    """Run this process on `cpus` only, with one torch thread per core: two workers on one
    machine then do not fight over cores (SWEEP_CPUS=0-7 on one, 8-15 on the other)."""
    os.sched_setaffinity(0, cpus)
    import torch

    torch.set_num_threads(len(cpus))
