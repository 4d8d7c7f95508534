"""Checks that need more than the config, run before anything expensive.

    python -m sweep check dataset=file dataset.path=data/task.jsonl

The model files exist (and a local path holds safetensors weights), QLoRA has bitsandbytes, and
every dataset row parses. Raises ConfigError (one line) before any weights load, so a sweep
fails in its first seconds. Imports no transformers: the sweep runs it while the trial server
is still importing.
"""

from __future__ import annotations

import importlib.util
import os

from sweep import data, models
from sweep.child import CPUS_ENV, parse_cpus
from sweep.config import Config, ConfigError


def preflight(cfg: Config) -> None:
    """The model files, bitsandbytes for QLoRA, every dataset row, SWEEP_CPUS; ConfigError if not."""
    check_cpus(os.environ.get(CPUS_ENV, ""))
    if cfg.model.source == "packaged":
        models.packaged_file(cfg.model)
    elif cfg.model.source == "hf":
        models.resolve(cfg.model, cfg.cache_dir)  # a local path must hold safetensors weights
    if cfg.method.quant is not None and importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("method=qlora needs bitsandbytes (make install adds it)")
    task = data.load_task(cfg.dataset, cfg.train.steps * cfg.train.batch_size, cfg.eval.size)
    if not task.train or not task.eval:
        raise ConfigError(f"dataset {cfg.dataset.name}: no train or no eval examples")


def check_cpus(spec: str) -> None:
    """SWEEP_CPUS, when set, names cores this process may run on."""
    if not spec:
        return
    if not hasattr(os, "sched_getaffinity"):
        raise ConfigError(f"{CPUS_ENV} works on Linux only; unset it here")
    try:
        cpus = parse_cpus(spec)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    allowed = os.sched_getaffinity(0)
    if not cpus <= allowed:
        raise ConfigError(
            f"{CPUS_ENV}={spec!r}: no core(s) {sorted(cpus - allowed)} here; "
            f"allowed: {min(allowed)}-{max(allowed)}"
        )
