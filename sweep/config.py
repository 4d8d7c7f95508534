"""Typed config schemas, composition from conf/, and validation before anything expensive.

    python -m sweep check method=lora method.r=16     # compose + validate, print the config

Every group in conf/ has a dataclass here. `compose()` builds the config with Hydra's compose API,
merges it onto the schemas (unknown keys and wrong types fail there) and `validate()` checks ranges
and files, so a bad value fails in the first second with one line naming the key and what is allowed.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sweep.metrics import OBJECTIVES
from sweep.schema import (
    Config,
    DatasetConfig,
    MethodConfig,
    QuantConfig,
)

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

METHODS = ("full", "lora", "qlora")
MODEL_SOURCES = ("packaged", "hf", "tiny")
DATASET_SOURCES = ("reasoning_gym", "file", "hub")
# dataset.scorer: built in (sweep/scorers.py), or a function path such as mypkg.mod:fn
SCORERS = ("exact", "numeric", "regex", "gsm8k", "choice")
FUNCTION_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*[.:][A-Za-z_]\w*")
PRECISIONS = ("auto", "fp32", "bf16", "bf16-mixed", "fp16-mixed")
# transformers' attention kernels; flash_attention_2 needs the flash-attn package and a GPU
ATTENTIONS = ("sdpa", "eager", "flash_attention_2")
# the frozen base's weights under LoRA; auto: the 16-bit compute dtype under *-mixed, else
# as train.precision (fp32 on CPU)
BASE_DTYPES = ("auto", "fp32", "bf16", "fp16")
# transformers' `optim` names; auto: adamw_torch_fused on CUDA, adamw_torch (foreach) on CPU
OPTIMIZERS = (
    "auto",
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "adafactor",
)
QUANT_TYPES = ("nf4", "fp4")
SWEEP_KINDS = ("grid", "search")
PRUNERS = ("none", "median")


class ConfigError(ValueError):
    """A config value is wrong; the message is one line naming the key and what is allowed."""


LOSS_LOGITS = ("answer", "all")


def one_line(exc: BaseException) -> str:
    """The first line of an error's message (its type name if it has none)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _explain_hydra_error(exc: Exception) -> str:
    """Turn Hydra's multi-line errors into one line with the allowed options and a close match."""
    msg = str(exc)
    m = re.search(r"Could not find '([\w/]+)/(\w+)'", msg) or re.search(
        r"In '[^']*': Could not find '([\w/]+)/(\w+)'", msg
    )
    if m:
        group, choice = m.group(1), m.group(2)
        options = _group_options(group)
        hint = difflib.get_close_matches(choice, options, n=1)
        did_you = f" (did you mean {hint[0]}?)" if hint else ""
        return f"{group}={choice}: no such option{did_you}; allowed: {', '.join(options)}"
    m = re.search(r"Error merging override ([\w.]+)=", msg)
    if m and exc.__cause__ is not None:
        return f"{m.group(1)}: {one_line(exc.__cause__)}"
    m = re.search(r"Could not override '([\w.]+)'", msg)
    if m and "not in struct" in str(exc.__cause__) and m.group(1).startswith("sweep.grid."):
        return f"{m.group(1)}: adds new keys to the grid; prefix the override with + (+{m.group(1)}=...)"
    if m:
        return f"{m.group(1)}: unknown config key{_did_you_mean(m.group(1))}"
    return one_line(exc)


def _did_you_mean(key: str) -> str:
    keys = _schema_keys(Config)
    if key in keys:
        return ""
    hint = difflib.get_close_matches(key, keys, n=1, cutoff=0.8)
    return f" (did you mean {hint[0]}?)" if hint else ""


def compose_dict(overrides: list[str]) -> DictConfig:
    """Compose conf/config.yaml with Hydra overrides (no validation).

    The schemas are registered as `schema`, first in config.yaml's defaults, so every schema key
    exists (with its default) in every group option and can be overridden from the command line.
    """
    ConfigStore.instance().store(name="schema", node=Config)
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(_explain_hydra_error(exc)) from None
    except AssertionError as exc:  # OmegaConf's way of refusing a key under a null block
        raise ConfigError(
            f"cannot apply {' '.join(overrides)}: a key inside a block that is null "
            f"(e.g. method.quant is null for lora; use method=qlora) ({exc})"
        ) from None


def _check_keys(data: Any, cls: type, prefix: str = "") -> None:
    """Every key must exist in the schema (Hydra's `+key=` would otherwise slip through)."""
    if not isinstance(data, dict) or not hasattr(cls, "__dataclass_fields__"):
        return
    fields = cls.__dataclass_fields__  # type: ignore[attr-defined]
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"{path}: unknown config key{_did_you_mean(path)}")
        sub = fields[key].default_factory
        sub_cls = sub if isinstance(sub, type) else None
        if sub_cls is None and key == "quant":
            sub_cls = QuantConfig
        if sub_cls is not None:
            _check_keys(value, sub_cls, path + ".")


def to_config(cfg: DictConfig | dict) -> Config:
    """Merge a composed config onto the schemas and validate it."""
    raw = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else cfg
    _check_keys(raw, Config)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), cfg)
        obj: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        key = str(getattr(exc, "full_key", None) or "config")
        raise ConfigError(f"{key}: {one_line(exc)}{_did_you_mean(key)}") from None
    validate(obj)
    obj.train.precision = resolve_precision(obj.train.precision)
    return obj


def resolve_precision(precision: str, cuda_bf16: bool | None = None) -> str:
    """'auto': bf16 autocast over fp32 weights on a CUDA device with bf16, else plain fp32.

    Measured on the 2-core CPU machines (SmolLM2, LoRA r=16, batch 8): bf16-mixed 8.1 s/step
    against 3.2 s/step for fp32, and pure bf16 weights swallow full fine-tuning's small updates,
    so fp32 is the fair CPU default. Both keep fp32 master weights for every method.
    """
    if precision != "auto":
        return precision
    if cuda_bf16 is None:  # this machine's
        import torch

        cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return "bf16-mixed" if cuda_bf16 else "fp32"


def _schema_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for name, f in cls.__dataclass_fields__.items():  # type: ignore[attr-defined]
        keys.append(prefix + name)
        sub = f.default_factory if callable(f.default_factory) else None  # type: ignore[misc]
        if sub is not None and hasattr(sub, "__dataclass_fields__"):
            keys += _schema_keys(sub, prefix + name + ".")
    return keys


def compose(overrides: list[str]) -> Config:
    """Compose, merge onto the schemas and validate: the one way a config is built."""
    return to_config(compose_dict(overrides))


def method_config(name: str) -> MethodConfig:
    """A shipped conf/method/ option as a trial composes it (defaults and all), unvalidated."""
    node = compose_dict([f"method={name}"]).method
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(MethodConfig), node))  # type: ignore[return-value]


def require(ok: bool, key: str, allowed: str, value: Any) -> None:
    """Raise the one-line ConfigError naming `key`, its value and what is allowed, unless ok."""
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed; expected {allowed}")


def validate(cfg: Config) -> None:
    """Range and consistency checks; raises ConfigError with one line on the first problem."""
    m, d, t, e, s = cfg.method, cfg.dataset, cfg.train, cfg.eval, cfg.sweep
    require(
        cfg.model.source in MODEL_SOURCES,
        "model.source",
        f"one of {MODEL_SOURCES}",
        cfg.model.source,
    )
    require(
        cfg.model.source == "tiny" or bool(cfg.model.name_or_path),
        "model.name_or_path",
        "a hub id or local path",
        cfg.model.name_or_path,
    )
    attn = cfg.model.attn_implementation
    require(attn in ATTENTIONS, "model.attn_implementation", f"one of {ATTENTIONS}", attn)
    require(m.name in METHODS, "method.name", f"one of {METHODS}", m.name)
    require(m.lr > 0 and m.lr < 1, "method.lr", "0 < lr < 1", m.lr)
    if m.name != "full":
        require(m.r >= 1, "method.r", "an integer >= 1", m.r)
        require(m.alpha is None or m.alpha > 0, "method.alpha", "null (2*r) or > 0", m.alpha)
        require(0 <= m.dropout < 1, "method.dropout", "0 <= dropout < 1", m.dropout)
    if m.name == "qlora":
        require(m.quant is not None, "method.quant", "a quant block for qlora", m.quant)
    require(
        m.quant is None or m.name != "full", "method.quant", "null for full fine-tuning", m.quant
    )
    if m.quant is not None:
        require(m.quant.bits == 4, "method.quant.bits", "4", m.quant.bits)
        require(
            m.quant.type in QUANT_TYPES, "method.quant.type", f"one of {QUANT_TYPES}", m.quant.type
        )
    require(d.source in DATASET_SOURCES, "dataset.source", f"one of {DATASET_SOURCES}", d.source)
    if d.source == "reasoning_gym":
        _check_reasoning_gym_task(d.task, d.task_args)
    if d.source == "file":
        require(
            bool(d.path) and Path(str(d.path)).is_file(),
            "dataset.path",
            "an existing .jsonl or .csv file",
            d.path,
        )
        require(
            Path(str(d.path)).suffix in (".jsonl", ".csv"),
            "dataset.path",
            "a file ending in .jsonl or .csv",
            d.path,
        )
    if d.source == "hub":
        require(bool(d.path), "dataset.path", "a hub dataset id", d.path)
    _check_dataset_scoring(d)
    require(t.steps >= 1, "train.steps", "an integer >= 1", t.steps)
    require(t.epochs >= 0, "train.epochs", ">= 0 (0: train.steps decides)", t.epochs)
    require(
        t.epochs == 0 or d.source != "reasoning_gym",
        "train.epochs",
        "0 for a reasoning-gym task (it generates train.steps x batch examples); epochs need "
        "a dataset of fixed size (dataset=file or hub)",
        t.epochs,
    )
    require(t.grad_accum >= 1, "train.grad_accum", "an integer >= 1", t.grad_accum)
    require(t.batch_size >= 1, "train.batch_size", "an integer >= 1", t.batch_size)
    require(
        t.max_seq_len == 0 or 8 <= t.max_seq_len <= 32768,
        "train.max_seq_len",
        "0 (auto: from the train data) or 8..32768",
        t.max_seq_len,
    )
    require(t.precision in PRECISIONS, "train.precision", f"one of {PRECISIONS}", t.precision)
    require(t.optimizer in OPTIMIZERS, "train.optimizer", f"one of {OPTIMIZERS}", t.optimizer)
    require(t.base_dtype in BASE_DTYPES, "train.base_dtype", f"one of {BASE_DTYPES}", t.base_dtype)
    require(
        t.base_dtype in ("auto", "fp32") or resolve_precision(t.precision) != "fp32",
        "train.base_dtype",
        "auto or fp32 with train.precision=fp32 (a 16-bit base needs a 16-bit precision)",
        t.base_dtype,
    )
    if t.precision == "fp16-mixed":
        require(_cuda(), "train.precision", "fp16-mixed only on a CUDA device", t.precision)
    if t.precision in ("bf16", "bf16-mixed") and _cuda():
        require(
            _cuda_bf16(),
            "train.precision",
            "fp16-mixed or fp32 on this GPU (no bf16 support, e.g. T4 or V100)",
            t.precision,
        )
    require(t.warmup_steps >= 0, "train.warmup_steps", ">= 0", t.warmup_steps)
    require(
        0 <= t.measure_warmup_steps < (t.steps if not t.epochs else 10**9),
        "train.measure_warmup_steps",
        f"0 <= n < train.steps ({t.steps})",
        t.measure_warmup_steps,
    )
    require(t.diverge_factor > 1, "train.diverge_factor", "> 1", t.diverge_factor)
    require(
        t.loss_logits in LOSS_LOGITS, "train.loss_logits", f"one of {LOSS_LOGITS}", t.loss_logits
    )
    require(e.size >= 1, "eval.size", "an integer >= 1", e.size)
    require(e.batch_size >= 1, "eval.batch_size", "an integer >= 1", e.batch_size)
    require(e.max_new_tokens >= 1, "eval.max_new_tokens", "an integer >= 1", e.max_new_tokens)
    require(e.every >= 0, "eval.every", "an integer >= 0", e.every)
    require(e.select_size >= 0, "eval.select_size", "an integer >= 0", e.select_size)
    require(e.retention_size >= 0, "eval.retention_size", "an integer >= 0", e.retention_size)
    require(8 <= e.retention_tokens <= 4096, "eval.retention_tokens", "8..4096", e.retention_tokens)
    require(s.kind in SWEEP_KINDS, "sweep.kind", f"one of {SWEEP_KINDS}", s.kind)
    require(s.pruner in PRUNERS, "sweep.pruner", f"one of {PRUNERS}", s.pruner)
    require(s.n_trials >= 1, "sweep.n_trials", "an integer >= 1", s.n_trials)
    require(s.timeout_s >= 0, "sweep.timeout_s", ">= 0 (0: no limit)", s.timeout_s)
    require(
        s.memory_limit_gib >= 0, "sweep.memory_limit_gib", ">= 0 (0: no limit)", s.memory_limit_gib
    )
    require(
        s.max_memory_gib >= 0,
        "sweep.max_memory_gib",
        ">= 0 (0: the GPU's memory on CUDA, else no limit)",
        s.max_memory_gib,
    )
    require(
        len(set(s.seeds)) == len(s.seeds),
        "sweep.seeds",
        "distinct integers, e.g. [0,1,2]",
        s.seeds,
    )
    require(s.max_retries >= 0, "sweep.max_retries", "an integer >= 0", s.max_retries)
    require(s.heartbeat_s >= 1, "sweep.heartbeat_s", "an integer >= 1", s.heartbeat_s)
    for o in s.objectives:
        require(o in OBJECTIVES, "sweep.objectives", f"names from {sorted(OBJECTIVES)}", o)
    for approach in s.grid:
        require(approach in METHODS, "sweep.grid", f"approaches from {METHODS}", approach)
    require(
        bool(re.fullmatch(r"[\w.-]+", cfg.experiment)),
        "experiment",
        "letters, digits, '.', '-' and '_' (no path characters)",
        cfg.experiment,
    )


def _check_dataset_scoring(d: DatasetConfig) -> None:
    """The scorer's name (a function path imports in preflight), its regex, the eval split."""
    allowed = f"one of {SCORERS} or a function path (mypkg.mod:fn)"
    require(
        d.scorer in SCORERS or bool(FUNCTION_PATH.fullmatch(d.scorer)),
        "dataset.scorer",
        allowed,
        d.scorer,
    )
    if d.source == "reasoning_gym":
        require(
            d.scorer == "exact",
            "dataset.scorer",
            "exact for a reasoning-gym task (task_score is the task's own scorer)",
            d.scorer,
        )
    if d.scorer == "regex":
        try:
            groups = re.compile(str(d.answer_regex)).groups if d.answer_regex else 0
        except re.error:
            groups = 0
        require(
            groups == 1,
            "dataset.answer_regex",
            "a regular expression with one group for dataset.scorer=regex, e.g. 'answer: (\\S+)'",
            d.answer_regex,
        )
    require(
        d.max_new_tokens is None or d.max_new_tokens >= 1,
        "dataset.max_new_tokens",
        "null (eval.max_new_tokens) or an integer >= 1",
        d.max_new_tokens,
    )
    if d.eval_split is not None:
        require(
            d.source == "hub", "dataset.eval_split", "null unless dataset.source=hub", d.eval_split
        )
        require(
            d.eval_split != d.split,
            "dataset.eval_split",
            f"a split other than dataset.split ({d.split}) or null",
            d.eval_split,
        )


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _cuda_bf16() -> bool:
    import torch

    return torch.cuda.is_bf16_supported()


def _check_reasoning_gym_task(task: str | None, task_args: dict[str, Any]) -> None:
    """The task exists and its arguments are its own (the config class's fields)."""
    import dataclasses

    from reasoning_gym.factory import DATASETS

    require(task in DATASETS, "dataset.task", "a reasoning-gym task (e.g. chain_sum)", task)
    own = [f.name for f in dataclasses.fields(DATASETS[task][1]) if f.name not in ("seed", "size")]
    for arg in reasoning_gym_args(task, task_args):  # type: ignore[arg-type]
        if arg not in own:
            raise ConfigError(
                f"dataset.task_args.{task}.{arg}: not an argument of reasoning-gym {task}; "
                f"its arguments: {', '.join(own)}"
            )


def reasoning_gym_args(task: str, task_args: dict[str, Any]) -> dict[str, Any]:
    """The arguments for `task`: its own entry of dataset.task_args ({task: {arg: value}}), so
    dataset.task=<other> starts from that task's defaults; flat `arg: value` entries apply to
    whichever task is chosen."""
    own = task_args.get(task)
    flat = {k: v for k, v in task_args.items() if not isinstance(v, dict)}
    return {**(own if isinstance(own, dict) else {}), **flat}


def redact(url: str) -> str:
    """The URL with any password replaced, for printing, records and tracking."""
    return re.sub(r"(//[^:/@]+):[^@]*@", r"\1:***@", url)


def as_dict(cfg: Config) -> dict[str, Any]:
    """Plain, JSON-ready dict of the whole resolved config (passwords in URLs redacted)."""
    d: dict[str, Any] = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[assignment]
    if d["sweep"].get("storage"):
        d["sweep"]["storage"] = redact(d["sweep"]["storage"])
    return d


def config_hash(cfg: Config) -> str:
    """Short stable hash of everything that determines a trial's outcome (not sweep bookkeeping)."""
    d = as_dict(cfg)
    d.pop("sweep", None)
    for k in ("experiment", "label", "output_dir", "cache_dir", "report"):
        d.pop(k, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]
