"""The memory a worker gives its trials, and the trials it skips because they cannot fit.

    python -c "from sweep.settings.compose import compose; from sweep.launch.memory import worker_memory; print(worker_memory(compose([])))"

A memory-bound outcome (`oom`, `skipped_predicted_oom`) is final only for a worker with no more
memory than it was judged against (`WorkerMemory.reopens`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psutil

from sweep.planning import plan
from sweep.results import record
from sweep.results.record import TrialResult
from sweep.settings.compose import ConfigError
from sweep.settings.schema import Config

# Outcomes bound by the memory they were judged against (trial attr and record meta
# `memory_limit_gib`): final only for a worker with no more memory than that.
MEMORY_BOUND = ("oom", "skipped_predicted_oom")


MEMORY_TOLERANCE = 0.02  # relative: one card's usable memory differs a little between drivers


@dataclass(frozen=True)
class WorkerMemory:
    """A worker's memory limits in GiB (0: none): `skip_gib` for predicted peaks
    (sweep.max_memory_gib, or the GPU's), `run_gib` for a trial process (the GPU's or the
    host's, or sweep.memory_limit_gib where lower)."""

    skip_gib: float
    run_gib: float

    def limit(self, status: str | None) -> float:
        """The limit an outcome with this status is judged against on this worker."""
        return self.skip_gib if status == "skipped_predicted_oom" else self.run_gib

    def reopens(self, status: Any, judged_gib: Any) -> bool:
        """A memory-bound outcome judged against `judged_gib` is open here: this worker has more
        memory (beyond MEMORY_TOLERANCE). Unknown (older records): final, as before."""
        if status not in MEMORY_BOUND or not isinstance(judged_gib, int | float):
            return False
        if judged_gib <= 0:  # judged without a limit: no worker has more
            return False
        mine = self.limit(status)
        return mine <= 0 or mine > judged_gib * (1 + MEMORY_TOLERANCE)


GIB = 1024**3


def predicted_oom(cfg: Config, limit_gib: float) -> TrialResult | None:
    """A `skipped_predicted_oom` record when sweep.planning.plan predicts a peak above the limit."""
    if limit_gib <= 0:
        return None
    import torch

    try:
        row = plan.predict_trial(cfg, torch.cuda.is_available())
    except ConfigError as exc:  # e.g. a hub model offline: no prediction, run it
        print(f"[sweep] no memory prediction ({exc}); running it", flush=True)
        return None
    if row.total_gib <= limit_gib:
        return None
    error = (
        f"predicted peak {row.total_gib:.2f} GiB > limit {limit_gib:.2f} GiB "
        "(sweep.max_memory_gib, or the GPU's memory); not run"
    )
    return record.failed(
        record.run_info(cfg),
        "skipped_predicted_oom",
        error,
        cfg.report.gpus,
        **plan.plan_metrics(row),
    )


def memory_limit_gib(cfg: Config) -> float:
    """sweep.max_memory_gib, or when 0 the detected GPU memory on CUDA (0: no limit on CPU)."""
    if cfg.sweep.max_memory_gib > 0:
        return float(cfg.sweep.max_memory_gib)
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / GIB
    return 0.0


def run_memory_gib(cfg: Config) -> float:
    """What a trial process may use here: the GPU's memory on CUDA, else the host's, or
    sweep.memory_limit_gib where that is lower (the limit an `oom` outcome was reached under)."""
    import torch

    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    else:
        total = psutil.virtual_memory().total
    cap = cfg.sweep.memory_limit_gib
    return min(total / GIB, cap) if cap > 0 else total / GIB


def worker_memory(cfg: Config) -> WorkerMemory:
    """This worker's memory limits, against which its memory-bound outcomes are judged."""
    return WorkerMemory(skip_gib=memory_limit_gib(cfg), run_gib=run_memory_gib(cfg))
