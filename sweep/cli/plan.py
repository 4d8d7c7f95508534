"""make plan: the planner's settings from the command line, and the table it prints.

    python -m sweep plan llama2_7b batch_size=4 seq_len=512   # make plan MODEL=llama2_7b ARGS="..."
    python -m sweep plan llama2_7b data=10M seq_len=512       # make plan MODEL=llama2_7b DATA=10M

With `data=` (a token count, or a data file counted with the model's tokenizer) a second table
gives each approach on each GPU tier: predicted peak, whether it fits, hours and dollars per
epoch (sweep.planning.cost).

Every field of `sweep.planning.plan.Settings` is a `key=value` (YAML values: ranks=[4,16,64]); a wrong key
or value is one line naming what is allowed. The model is a conf/model/ name, a hub id or a local
directory (sweep.planning.arch).
"""

from __future__ import annotations

import difflib
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from sweep.planning import cost
from sweep.planning.arch import Arch, load_arch, model_options, total_params
from sweep.planning.plan import ATTENTIONS, Settings, load_gpus, plan, plan_recipes
from sweep.planning.recipe import LINEARS
from sweep.settings.compose import CONF_DIR, ConfigError
from sweep.settings.errors import require
from sweep.settings.schema import GpuClass
from sweep.settings.tiers import pick_tiers
from sweep.settings.validate import BASE_DTYPES, OPTIMIZERS, PARALLEL, PRECISIONS
from sweep.trial import batches

ALIASES = {"max_seq_len": "seq_len", "r": "qlora_rank"}
CONF_MODEL = CONF_DIR / "model"


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
        try:
            values[key] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(
                f"{arg}: not a YAML value (quote a value with spaces: '{key}=[A100 80GB]')"
            ) from None
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
    require(_count(s.gpus), "gpus", "an integer >= 1 (devices per trial)", s.gpus)
    require(s.parallel in PARALLEL, "parallel", f"one of {PARALLEL}", s.parallel)
    require(s.batch_size % s.gpus == 0, "batch_size", f"a multiple of gpus={s.gpus}", s.batch_size)
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
    if s.data is not None and cost.parse_tokens(s.data) is None:
        ok = Path(str(s.data)).is_file()
        require(ok, "data", "a token count (10M, 1e7, 2.5B) or an existing data file", s.data)


def epoch_tokens(spec: Any, model: str) -> tuple[int, str]:
    """Tokens in an epoch: a count as given, or a data file's rows tokenized (prompt + answer,
    as a trial encodes them) with the model's tokenizer where it is on this machine, else with
    the packaged SmolLM2's (said in the note: tokenizers differ by some 10-30%)."""
    n = cost.parse_tokens(spec)
    if n is not None:
        return n, f"{n:,} tokens per epoch (given)"
    from sweep.settings.schema import DatasetConfig
    from sweep.trial import data

    path = Path(str(spec))
    task = data.load_task(DatasetConfig(name=path.stem, source="file", path=str(path)), 0, 0)
    tok, which = _tokenizer(model)
    n = sum(len(batches.encode(tok, ex, 10**9, None)["input_ids"]) for ex in task.train)
    return n, f"{n:,} tokens per epoch: {len(task.train):,} rows of {path.name}, {which}"


def _tokenizer(model: str) -> tuple[Any, str]:
    """The model's tokenizer if it is on this machine (offline), else the packaged SmolLM2's."""
    from transformers import AutoTokenizer

    from sweep.settings.compose import compose
    from sweep.trial import models

    name = model
    try:
        cfg = compose([f"model={model}"]) if (CONF_MODEL / f"{model}.yaml").is_file() else None
        if cfg is not None and cfg.model.source != "hf":
            name = models.resolve(cfg.model, cfg.cache_dir)
        elif cfg is not None:
            name = str(cfg.model.name_or_path)
        tok = AutoTokenizer.from_pretrained(name, local_files_only=True)
        return tok, f"counted with {model}'s tokenizer"
    except (OSError, ValueError, ConfigError):
        cfg = compose(["model=smollm2_135m"])
        tok = models.load_tokenizer(models.resolve(cfg.model, cfg.cache_dir))
        return tok, f"counted with SmolLM2's tokenizer ({model}'s is not on this machine)"


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
    if s.gpus > 1:
        shared = (
            "weights, gradients and optimizer states divided by "
            f"{s.gpus}, plus one decoder layer gathered whole, twice (QLoRA: DDP)"
            if s.parallel == "fsdp"
            else "a whole replica each, plus DDP's gradient buckets (a second copy of the gradients)"
        )
        head += (
            f"\nper GPU, over {s.gpus} GPUs with {s.parallel.upper()}: batch "
            f"{s.batch_size // s.gpus} each; {shared}"
        )
    foot = (
        "GiB. total = weights + optimizer + max(activations + first gradients, grads + optimizer "
        "step) + overhead:\nthe peak is at the start of the backward (first gradients: the "
        "lm_head's for full FT, the last block's for adapters) or at the optimizer step.\n"
        f"loss: {s.loss_impl} ({'chunked: no [tokens x vocab] logits kept' if s.loss_impl != 'full' else 'the whole logits'}); "
        f"QLoRA's embeddings and output layer {'fp32' if s.kbit_fp32 else 'in the compute dtype'}. "
        "paged: optimizer states in CUDA managed memory, which may live in host memory; not in "
        "total (a row that fits only so says 'states paged to host'). full (in backward): paged "
        "8-bit AdamW, each weight updated in its backward (train.optimizer_in_backward).\n"
        f"overhead: CUDA context {s.cuda_context_gib} GiB + {s.fragmentation:.0%} fragmentation. "
        "Predicted, not measured (`make sweep` measures); assumptions: python -m pydoc sweep.planning.plan"
    )
    return "\n".join([head, "", shown.to_markdown(index=False, floatfmt=".2f"), "", foot])


COLALIGN = ("left", "left", "right", "left", "left", "right", "right")


def render_cost(
    arch: Arch, s: Settings, table: pd.DataFrame, tokens: int, note: str, gpus: list[GpuClass]
) -> str:
    """The cost table: each approach on each tier, and where every rate and price comes from."""
    tiers = pick_tiers(gpus, s.tiers)
    rows = [
        (_label(row), rec, float(row.total_gib))
        for rec, row in zip(plan_recipes(s), table.itertuples(), strict=True)
    ]
    out = cost.epoch_table(
        arch,
        rows,
        s.batch_size,
        s.seq_len,
        tokens,
        tiers,
        cost.load_calibration(),
        s.gradient_checkpointing,
    )
    sources = list(dict.fromkeys(out["source"]))
    basis = dict(zip(out["source"], out["basis"], strict=True))
    shown = pd.DataFrame(
        {
            "approach": out["approach"],
            "GPU": out["tier"],
            "peak GiB": [f"{v:.1f}" for v in out["peak_gib"]],
            "fits": out["fits"],
            "MFU": [
                f"{v:.0%} [{sources.index(src) + 1}]" for v, src in zip(out["mfu"], out["source"])
            ],
            "time/epoch": [cost.fmt_hours(v) for v in out["hours_per_epoch"]],
            "$/epoch": [f"{v:,.0f}" if v >= 10 else f"{v:.2f}" for v in out["usd_per_epoch"]],
        }
    )
    prices = "; ".join(f"{g.name} ${g.usd_per_hour:.2f}/h ({g.price_source})" for g in tiers)
    refs = "\n".join(f"[{i + 1}] {basis[src] or 'from'}: {src}" for i, src in enumerate(sources))
    head = (
        f"Cost per epoch: {note}; batch {s.batch_size} x {s.seq_len} tokens, full sequences "
        "(padding adds its share). Predicted: step = FLOPs / (MFU x dense peak) + optimizer "
        "and 4-bit bytes / (their efficiency x memory bandwidth) + layers x per-layer latency "
        "(sweep/planning/cost.py); a tier where it does not fit (fits: no) needs several GPUs "
        "or a smaller batch."
    )
    return "\n".join(
        [
            head,
            "",
            shown.to_markdown(index=False, disable_numparse=True, colalign=COLALIGN),
            "",
            "Rates (measured here, fitted to published runs, or assumed from another GPU):",
            refs,
            f"Prices: {prices}",
        ]
    )


def _label(row: Any) -> str:
    return row.approach if pd.isna(row.rank) else f"{row.approach} r={row.rank}"


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
    gpus = load_gpus()
    pick_tiers(gpus, settings.tiers)  # a wrong tier name fails before any work
    table = plan(arch, settings, gpus)
    print(render(args[0], arch, settings, table))
    if settings.data is not None:
        tokens, note = epoch_tokens(settings.data, args[0])
        print("\n" + render_cost(arch, settings, table, tokens, note, gpus))
    return 0
