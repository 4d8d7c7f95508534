"""Cost per epoch in the report: each approach on the device it ran on, and on the GPU tiers.

    python -m sweep report default     # the report's "Cost per epoch" section

An epoch is `report.epoch_tokens` training tokens. On the trial's own device the hours come from
its measured tokens/s (and dollars from its GPU class's price; a CPU has none). On the tiers
(`report.tiers`, default the seed's four) the figures are labelled by what they rest on:
- projected: a GPU run's measured tokens/s scaled by the tiers' dense-peak ratio; it fits where
  its measured peak is under the tier's memory.
- predicted: a CPU run says nothing about a GPU's speed, so the planner predicts the trial's
  recipe as it would run on a bf16 GPU (precision auto): peak memory (sweep.planning.plan) and step time
  (sweep.planning.cost, with the calibration in conf/calibration.yaml or this machine's probe).
"""

from __future__ import annotations

import copy
import functools
import json
import math
from dataclasses import replace
from typing import Any

import pandas as pd

from sweep.planning import cost, plan, recipe
from sweep.planning.arch import arch_for_model
from sweep.results.frame import fmt_num
from sweep.settings.compose import to_config
from sweep.settings.errors import ConfigError
from sweep.settings.schema import Config, GpuClass
from sweep.settings.tiers import pick_tiers


def trial_cost_usd(row: Any, gpus: list[GpuClass]) -> float:
    """A GPU trial's cost at its class's price: its wall time less the untuned base model's
    evaluation (done once per base, not part of the approach); NaN on CPU or an unknown GPU."""
    g = cost.device_class(row.get("device_name"), gpus) if row.get("device") == "cuda" else None
    if g is None or not _num(row.get("total_s")):
        return math.nan
    base = row.get("base_eval_s")
    return (row["total_s"] - (base if _num(base) else 0.0)) / 3600 * g.usd_per_hour


def gpu_config(record: dict[str, Any]) -> Config | None:
    """The trial's config as it would run on a bf16 GPU (precision auto); None if unreadable."""
    try:
        text = json.dumps(dict(record["run"]["config"]), sort_keys=True)
    except (KeyError, TypeError, ValueError):
        return None
    cfg = _gpu_config(text)
    return None if cfg is None else copy.deepcopy(cfg)


@functools.lru_cache(maxsize=256)
def _gpu_config(text: str) -> Config | None:
    """Parsed once per config: the report asks for each trial on every tier, and composing a
    Config takes milliseconds."""
    try:
        cfg = to_config(json.loads(text))
    except (TypeError, ConfigError):
        return None
    cfg.train = replace(cfg.train, precision="auto")
    return cfg


def planned_gpu_peak(record: dict[str, Any]) -> float:
    """The planner's peak (GiB) for the trial's recipe on a bf16 GPU, CUDA context included."""
    cfg = gpu_config(record)
    if cfg is None:
        return math.nan
    try:
        return float(plan.predict_trial(cfg, cuda=True).total_gib)
    except (ConfigError, ValueError, OSError):
        return math.nan


def _num(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _predicted(
    record: dict[str, Any], tier: GpuClass, tokens: int, entries: list[dict[str, Any]]
) -> tuple[float, bool | None]:
    """(hours, fits) of a CPU trial's recipe on a GPU tier, from the planner and time model."""
    cfg = gpu_config(record)
    m = record["train"]["metrics"]
    if cfg is None or not _num(m.get("train_tokens_per_s")) or not _num(m.get("s_per_step")):
        return math.nan, None
    rec = recipe.of(cfg, cuda=True)
    arch = arch_for_model(cfg.model)
    per_step = m["train_tokens_per_s"] * m["s_per_step"]  # the trial's own tokens per step
    seq = plan.trial_settings(cfg, True).seq_len
    r = cost.rate(entries, cost.device_key(tier.name), rec.kind, rec.precision)
    flops = cost.step_flops_per_token(arch, rec, seq, cfg.train.gradient_checkpointing)
    step = cost.step_seconds(flops, per_step, cost.peak_tflops(tier, rec.precision), r)
    peak = plan.predict_trial(cfg, cuda=True).total_gib
    return math.ceil(tokens / per_step) * step / 3600, peak <= tier.memory_gib


def rows(
    table: pd.DataFrame,
    records: list[dict[str, Any]],
    gpus: list[GpuClass],
    tiers: list[GpuClass],
    tokens: int,
    entries: list[dict[str, Any]],
) -> list[dict[str, str]]:
    """One row per headline approach: this device's hours (and $), then each tier's."""
    first = {}
    for r in records:
        if r.get("selected") and r["run"].get("label") not in first:
            first[r["run"]["label"]] = r
    out = []
    for row in table.itertuples():
        rec = first.get(row.label)
        if rec is None or not _num(row.train_tokens_per_s):
            continue
        meta = rec.get("meta") or {}
        on_gpu = meta.get("device") == "cuda"
        hours = tokens / row.train_tokens_per_s / 3600
        own = cost.device_class(meta.get("device_name"), gpus) if on_gpu else None
        cells = {
            "approach": row.label,
            "this device": f"{meta.get('device_name', '?')}: {hours:.1f} h"
            + (f", ${hours * own.usd_per_hour:,.2f}" if own else ""),
        }
        for tier in tiers:
            cells[tier.name] = _tier_cell(rec, row, own, tier, hours, tokens, entries)
        out.append(cells)
    return out


def _tier_cell(
    rec: dict[str, Any],
    row: Any,
    own: GpuClass | None,
    tier: GpuClass,
    hours: float,
    tokens: int,
    entries: list[dict[str, Any]],
) -> str:
    """One tier's "h, $ kind": a GPU run projected by the dense-peak ratio (fits: its measured
    peak), a CPU run predicted by the planner and time model."""
    if (rec.get("meta") or {}).get("device") == "cuda":
        if own is None:
            return "- (the run's GPU is not in report.gpus)"
        precision = rec["run"].get("precision", "bf16-mixed")
        ratio = cost.peak_tflops(tier, precision) / (cost.peak_tflops(own, precision) or math.nan)
        h, fits, kind = hours / ratio, row.peak_memory_gib <= tier.memory_gib, "projected"
    else:
        try:
            h, fits = _predicted(rec, tier, tokens, entries)
        except ConfigError:
            h, fits = math.nan, None
        kind = "predicted"
    fit = " (does not fit)" if fits is False else ""
    return f"{fmt_num(h, '{:.1f}')} h, ${fmt_num(h * tier.usd_per_hour, '{:,.2f}')} {kind}{fit}"


def section(
    table: pd.DataFrame,
    records: list[dict[str, Any]],
    gpus: list[GpuClass],
    tier_names: Any,
    tokens: int,
    cache_dir: str = "",
) -> list[str]:
    """The report's "Cost per epoch" section (empty without a headline)."""
    if table.empty:
        return []
    tiers = pick_tiers(gpus, tier_names)
    entries = cost.load_calibration(cache_dir)
    body = rows(table, records, gpus, tiers, tokens, entries)
    if not body:
        return []
    prices = "; ".join(
        f"{g.name} ${g.usd_per_hour:.2f}/h ({g.price_source or 'source not given'})" for g in tiers
    )
    return [
        "",
        f"## Cost per epoch ({tokens:,} tokens, `report.epoch_tokens`)",
        "",
        pd.DataFrame(body).to_markdown(index=False),
        "",
        "**this device**: the epoch at the trial's measured training tokens/s (a GPU's price "
        "from its class in `report.gpus`; a CPU has none). **projected**: a GPU run's measured "
        "tokens/s scaled by the dense-peak ratio of the two GPUs; it fits where its measured "
        "peak is under the tier's memory. **predicted**: a CPU run's recipe as it would run on "
        "a bf16 GPU, from the planner (memory) and the time model (`make plan`, sweep.planning.cost; "
        "its rates in conf/calibration.yaml or this machine's `make probe`): a CPU says nothing "
        "measured about a GPU. Trial costs leave out the untuned base model's evaluation.",
        "",
        f"Prices per GPU-hour: {prices}.",
        "",
    ]
