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
import re

from sweep.planning import budget
from sweep.planning.arch import check_hub_model
from sweep.settings import hardware
from sweep.settings.compose import ConfigError
from sweep.settings.cpus import CPUS_ENV, parse_cpus
from sweep.settings.schema import Config
from sweep.trial import data, models


def preflight(cfg: Config) -> None:
    """The model files, bitsandbytes for QLoRA, every dataset row, SWEEP_CPUS; ConfigError if not."""
    check_cpus(os.environ.get(CPUS_ENV, ""))
    if cfg.model.source == "packaged":
        models.packaged_file(cfg.model)
    elif cfg.model.source == "hf":
        path = models.resolve(cfg.model, cfg.cache_dir)  # a local path must hold safetensors
        if not os.path.isdir(path):
            check_hub_model(path)  # a hub id: cached, or the hub answers
    check_attention(cfg.model.attn_implementation)
    check_targets(cfg)
    if cfg.train.optimizer.startswith("paged_") and not hardware.gpu_present():
        warn(
            f"train.optimizer={cfg.train.optimizer}: paging needs CUDA; bitsandbytes runs "
            "it unpaged here (the same states, kept in memory)"
        )
    if cfg.method.quant is not None and importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("method=qlora needs bitsandbytes (make install adds it)")
    n_train = budget.examples_needed(cfg.train)
    task = data.load_task(cfg.dataset, n_train, cfg.eval.size)
    if not task.train:
        raise ConfigError(f"dataset {cfg.dataset.name}: no train examples")
    if not task.eval:
        raise ConfigError(
            f"dataset {cfg.dataset.name}: no eval items left: every prompt drawn for eval is "
            f"among the {len(task.train)} train examples (train.steps x train.batch_size = "
            f"{n_train}); the task has too few distinct prompts: lower train.steps or widen "
            "the task (dataset.task_args)"
        )
    if len(task.eval) < cfg.eval.size:
        warn(
            f"eval.size={cfg.eval.size}: the dataset gives only {len(task.eval)} held-out items "
            f"apart from the train set; scoring {len(task.eval)}"
        )


def check_targets(cfg: Config) -> None:
    """Every entry of method.target_modules names a linear layer of the model (PEFT's rule: a
    list entry is a layer's name or its last parts, a string a regex over the full names);
    checked from the model's config on the meta device, before any weights load."""
    targets = cfg.method.target_modules
    if cfg.method.name == "full" or targets == "all-linear":
        return
    try:
        names = models.linear_layers(cfg.model)
    except Exception:  # the model's config is unreadable: the model check above says why
        return
    if isinstance(targets, str):
        missing = [] if any(re.fullmatch(targets, n) for n in names) else [targets]
    else:
        missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in names}, key=lambda x: (x == "lm_head", x))
        raise ConfigError(
            f"method.target_modules={targets!r}: {', '.join(map(repr, missing))} matches no "
            f"linear layer of model={cfg.model.name}; its linear layers: {', '.join(leaves)} "
            "(or all-linear)"
        )


def check_attention(attn: str) -> None:
    """flash_attention_2 only where flash-attn is installed and a GPU is present."""
    if attn != "flash_attention_2":
        return
    if importlib.util.find_spec("flash_attn") is None or not hardware.gpu_present():
        raise ConfigError(
            "model.attn_implementation=flash_attention_2 needs the flash-attn package and an "
            "NVIDIA GPU (pip install flash-attn with your CUDA torch); here: "
            + ("no flash-attn" if importlib.util.find_spec("flash_attn") is None else "no GPU")
            + "; use sdpa (the default) or eager"
        )


def warn(message: str) -> None:
    """One line on stderr for a setting that runs but makes little sense (once per trial: only
    rank 0 of a trial over several processes says it)."""
    import sys

    from sweep.trial.ranks import is_main

    if is_main():
        print(f"warning: {message}", file=sys.stderr, flush=True)


def check_point(cfg: Config) -> None:
    """Per sweep point: warn where a setting is outside what makes sense for the model."""
    m = cfg.method
    if m.name == "full":
        return
    from sweep.planning.arch import arch_for_model

    try:
        hidden = arch_for_model(cfg.model).hidden
    except (ConfigError, ValueError, OSError):
        return  # a hub model offline: nothing to compare with
    if m.r > hidden:
        warn(
            f"method.r={m.r} is above the model's hidden size ({hidden}): each adapter has more "
            "parameters than the layer it adapts, and no more rank than the layer has"
        )


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
