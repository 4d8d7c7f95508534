"""make plan: the planner's settings from the command line, and the table it prints.

    python -m sweep plan llama2_7b batch_size=4 seq_len=512   # make plan MODEL=llama2_7b ARGS="..."

Every field of `sweep.plan.Settings` is a `key=value` (YAML values: ranks=[4,16,64]); a wrong key
or value is one line naming what is allowed. The model is a conf/model/ name, a hub id or a local
directory (sweep.arch).
"""

from __future__ import annotations

import difflib
from dataclasses import fields, replace
from typing import Any

import pandas as pd
import yaml

from sweep.arch import Arch, load_arch, model_options, total_params
from sweep.config import ConfigError
from sweep.errors import require
from sweep.plan import ATTENTIONS, Settings, load_gpus, plan, plan_recipes
from sweep.recipe import LINEARS
from sweep.validate import BASE_DTYPES, OPTIMIZERS, PRECISIONS

ALIASES = {"max_seq_len": "seq_len", "r": "qlora_rank"}


def parse_settings(args: list[str]) -> Settings:
    """`key=value` overrides (YAML values: ranks=[4,16,64], gradient_checkpointing=true)."""
    known = [f.name for f in fields(Settings)]
    values: dict[str, Any] = {}
    for arg in args:
        key, sep, raw = arg.partition("=")
        key = key.removeprefix("train.")
        key = ALIASES.get(key, key)
        if not sep or key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            did_you = f" (did you mean {hint[0]}?)" if hint else ""
            raise ConfigError(f"{arg}: not a plan setting{did_you}; allowed: {', '.join(known)}")
        values[key] = yaml.safe_load(raw)
    if isinstance(values.get("ranks"), int):
        values["ranks"] = [values["ranks"]]
    s = replace(Settings(), **values)
    check_settings(s)
    return s


def _count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 1


def check_settings(s: Settings) -> None:
    require(_count(s.batch_size), "batch_size", "an integer >= 1", s.batch_size)
    require(_count(s.seq_len), "seq_len", "an integer >= 1", s.seq_len)
    ranks_ok = isinstance(s.ranks, list) and all(_count(r) for r in s.ranks)
    require(ranks_ok, "ranks", "a list of integers >= 1, e.g. [4,16,64]", s.ranks)
    require(_count(s.qlora_rank), "qlora_rank", "an integer >= 1", s.qlora_rank)
    require(s.precision in PRECISIONS, "precision", f"one of {PRECISIONS}", s.precision)
    require(s.optimizer in OPTIMIZERS, "optimizer", f"one of {OPTIMIZERS}", s.optimizer)
    require(s.base_dtype in BASE_DTYPES, "base_dtype", f"one of {BASE_DTYPES}", s.base_dtype)
    require(s.attention in ATTENTIONS, "attention", f"one of {ATTENTIONS}", s.attention)
    ll = s.logits_len
    require(isinstance(ll, int) and ll >= 0, "logits_len", "an integer >= 0 (0: seq_len)", ll)
    gc = s.gradient_checkpointing
    require(isinstance(gc, bool), "gradient_checkpointing", "true or false", gc)
    tm = s.target_modules
    tm_ok = (
        tm is None
        or isinstance(tm, str)
        or (isinstance(tm, list) and all(isinstance(n, str) for n in tm))
    )
    require(tm_ok, "target_modules", f"all-linear, a regex or a list of {', '.join(LINEARS)}", tm)
    dq = s.double_quant
    require(dq is None or isinstance(dq, bool), "double_quant", "true or false", dq)
    ctx = s.cuda_context_gib
    require(isinstance(ctx, int | float) and ctx >= 0, "cuda_context_gib", ">= 0", ctx)
    frag = s.fragmentation
    require(isinstance(frag, int | float) and 0 <= frag < 1, "fragmentation", "0..1", frag)


def render(name: str, arch: Arch, s: Settings, table: pd.DataFrame) -> str:
    """The plan as printed: one line of assumptions, the table, how the total is made."""
    shown = table.rename(columns={"step_gib": "optimizer_step_gib"})
    shown["rank"] = ["-" if pd.isna(r) else str(r) for r in table["rank"]]
    shown["trainable_params"] = [_millions(n) for n in table["trainable_params"]]
    shown.columns = [c.removesuffix("_gib").replace("_", " ") for c in shown.columns]
    gc = "on" if s.gradient_checkpointing else "off"
    targets = ", ".join(plan_recipes(s)[-1].targets)
    head = (
        f"plan {name}: {_millions(total_params(arch))} params (vocab {arch.vocab}, hidden "
        f"{arch.hidden}, intermediate {arch.intermediate}, layers {arch.layers}, heads "
        f"{arch.heads}/{arch.kv_heads} kv{', tied' if arch.tie_embeddings else ''})\n"
        f"batch {s.batch_size} x seq {s.seq_len}, precision {s.mode}, gradient checkpointing "
        f"{gc}, attention {s.attention}; adapters on {targets}"
    )
    foot = (
        "GiB. total = weights + optimizer + max(activations + first gradients, grads + optimizer "
        "step) + overhead:\nthe peak is at the start of the backward (first gradients: the "
        "lm_head's for full FT, all of them for adapters) or at the optimizer step.\n"
        f"overhead: CUDA context {s.cuda_context_gib} GiB + {s.fragmentation:.0%} fragmentation. "
        "Predicted, not measured (`make sweep` measures); assumptions: python -m pydoc sweep.plan"
    )
    return "\n".join([head, "", shown.to_markdown(index=False, floatfmt=".2f"), "", foot])


def _millions(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def main(args: list[str]) -> int:
    """python -m sweep plan MODEL [key=value ...]"""
    if not args or "=" in args[0]:
        raise ConfigError(
            f"usage: python -m sweep plan MODEL [key=value ...]; MODEL: one of "
            f"{', '.join(model_options())} or a hub id (make plan MODEL=<name>)"
        )
    arch, settings = load_arch(args[0]), parse_settings(args[1:])
    print(render(args[0], arch, settings, plan(arch, settings, load_gpus())))
    return 0
