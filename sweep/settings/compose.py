"""Composition from conf/: the one way a config is built, and how it is written down.

    python -m sweep check method=lora method.r=16     # compose + validate, print the config

`compose()` builds the config with Hydra's compose API, merges it onto the schemas of
sweep/settings/schema.py (unknown keys and wrong types fail there) and `validate()` (sweep/settings/validate.py)
checks ranges and files, so a bad value fails in the first second with one line naming the key
and what is allowed. `as_dict` and `config_hash` write it down (passwords redacted).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sweep.settings.errors import ConfigError, one_line
from sweep.settings.schema import Config, MethodConfig, QuantConfig
from sweep.settings.validate import resolve_precision, validate

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


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


def to_config(cfg: DictConfig | dict, user_set: set[str] | None = None) -> Config:
    """Merge a composed config onto the schemas and validate it. `user_set`: the keys the user
    set (their overrides); a default they did not set adapts to what they did (`adapt`). None:
    every value counts as set (a trial's config.json, already adapted)."""
    raw = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else cfg
    _check_keys(raw, Config)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), cfg)
        obj: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        key = str(getattr(exc, "full_key", None) or "config")
        raise ConfigError(f"{key}: {one_line(exc)}{_did_you_mean(key)}") from None
    if user_set is not None:
        adapt(obj, user_set)
    validate(obj)
    obj.train.precision = resolve_precision(obj.train.precision)
    obj.train.packing = str(obj.train.packing).lower()  # a YAML true arrives as "True"
    return obj


def set_keys(overrides: list[str]) -> set[str]:
    """The keys a list of Hydra overrides sets (`key=value`, `+key=`, `++key=`)."""
    keys = set()
    for o in overrides:
        key, eq, _ = o.lstrip("+~").partition("=")
        if eq:
            keys.add(key.strip())
    return keys


_WARNED: set[str] = set()


def adapt(cfg: Config, user_set: set[str]) -> None:
    """Defaults the user did not set, adapted to what they did, with one warning line each:
    train.measure_warmup_steps (2) below a shorter train.steps. What the user set is validated
    as given, and refused when out of range."""
    t = cfg.train
    key = "train.measure_warmup_steps"
    if key not in user_set and not t.epochs and t.measure_warmup_steps >= t.steps >= 1:
        fewer = t.steps - 1
        _warn(f"{key} (default {t.measure_warmup_steps}) is not below train.steps={t.steps}: "
              f"{fewer} warm-up step(s) left out of the timing instead")  # fmt: skip
        t.measure_warmup_steps = fewer
    key = "train.max_grad_norm"
    if key not in user_set and t.optimizer_in_backward and t.max_grad_norm:
        _warn(f"{key} (default {t.max_grad_norm}) is 0 under train.optimizer_in_backward: no "
              "clipping, as each weight is updated before the others have their gradients")  # fmt: skip
        t.max_grad_norm = 0.0


def _warn(text: str) -> None:
    """One warning line, once per process (a sweep composes each point)."""
    message = f"[config] warning: {text}"
    if message not in _WARNED:
        _WARNED.add(message)
        print(message, file=sys.stderr, flush=True)


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
    return to_config(compose_dict(overrides), user_set=set_keys(overrides))


def method_config(name: str) -> MethodConfig:
    """A shipped conf/method/ option as a trial composes it (defaults and all), unvalidated."""
    node = compose_dict([f"method={name}"]).method
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(MethodConfig), node))  # type: ignore[return-value]


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
