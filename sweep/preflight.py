"""Checks that need more than the config, run before anything expensive.

    python -m sweep check dataset=file dataset.path=data/task.jsonl

The model files exist (and a local path holds safetensors weights), QLoRA has bitsandbytes, and
every dataset row parses. Raises ConfigError (one line) before any weights load, so a sweep
fails in its first seconds. Imports no transformers: the sweep runs it while the trial server
is still importing.
"""

from __future__ import annotations

import importlib.util

from sweep import data, models
from sweep.config import Config, ConfigError


def preflight(cfg: Config) -> None:
    """The model files, bitsandbytes for QLoRA, every dataset row; ConfigError if not."""
    if cfg.model.source == "packaged":
        models.packaged_file(cfg.model)
    elif cfg.model.source == "hf":
        models.resolve(cfg.model, cfg.cache_dir)  # a local path must hold safetensors weights
    if cfg.method.quant is not None and importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("method=qlora needs bitsandbytes (make install adds it)")
    task = data.load_task(cfg.dataset, cfg.train.steps * cfg.train.batch_size, cfg.eval.size)
    if not task.train or not task.eval:
        raise ConfigError(f"dataset {cfg.dataset.name}: no train or no eval examples")
