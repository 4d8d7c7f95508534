"""Cost per epoch in the report: each approach on the device it ran on, and on the GPU tiers.

    python -m sweep report default     # the report's "Cost per epoch" section

An epoch is `report.epoch_tokens` training tokens. On the trial's own device the hours come from
its measured tokens/s (and dollars from its GPU class's price; a CPU has none). On the tiers
(`report.tiers`, default the seed's four) the figures are labelled by what they rest on:
- projected: a GPU run's measured time scaled by the time model's step on the tier over its
  step on the run's GPU; it fits where its measured peak is under the tier's memory.
- predicted: a CPU run says nothing about a GPU's speed, so the planner predicts the trial's
  recipe as it would run on a bf16 GPU (precision auto): peak memory (sweep.planning.plan) and step time
  (sweep.planning.cost, with the calibration in conf/calibration.yaml or this machine's probe).
Hours print with two significant figures (minutes under an hour); a line says which rates each
tier's figures rest on: measured here, fitted to published runs, or assumed.
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
    """The trial's config as it would run on a bf16 GPU (precision auto), at the sequence
    length it trained at (max_seq_len 0 resolved from the data); None if unreadable."""
    try:
        text = json.dumps(dict(record["run"]["config"]), sort_keys=True)
    except (KeyError, TypeError, ValueError):
        return None
    cfg = _gpu_config(text)
    if cfg is None:
        return None
    cfg = copy.deepcopy(cfg)
    width = ((record.get("train") or {}).get("metrics") or {}).get("max_seq_len")
    if not cfg.train.max_seq_len and _num(width):  # 0 (sized from the data): what it was
        cfg.train = replace(cfg.train, max_seq_len=int(width))
    return cfg


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


def _step_on(
    record: dict[str, Any], tier: GpuClass, entries: list[dict[str, Any]]
) -> tuple[float, float, Config | None]:
    """(the time model's step seconds, its tokens, the GPU config) for the trial's recipe on a
    bf16 `tier`, at the trial's own tokens per step; NaN where the record lacks them."""
    cfg = gpu_config(record)
    m = record["train"]["metrics"]
    if cfg is None or not _num(m.get("train_tokens_per_s")) or not _num(m.get("s_per_step")):
        return math.nan, math.nan, cfg
    rec = recipe.of(cfg, cuda=True)
    per_step = m["train_tokens_per_s"] * m["s_per_step"]
    seq = plan.trial_settings(cfg, True).seq_len
    r = cost.rate(entries, cost.device_key(tier.name), rec.kind, rec.precision)
    arch = arch_for_model(cfg.model)
    step = cost.step_time(arch, rec, per_step, seq, tier, r, cfg.train.gradient_checkpointing)
    return step, per_step, cfg


def _predicted(
    record: dict[str, Any], tier: GpuClass, tokens: int, entries: list[dict[str, Any]]
) -> tuple[float, bool | None]:
    """(hours, fits) of a CPU trial's recipe on a GPU tier, from the planner and time model."""
    step, per_step, cfg = _step_on(record, tier, entries)
    if cfg is None or not _num(step):
        return math.nan, None
    peak = plan.predict_trial(cfg, cuda=True).total_gib
    return math.ceil(tokens / per_step) * step / 3600, peak <= tier.memory_gib


def _speedup(
    record: dict[str, Any], own: GpuClass, tier: GpuClass, entries: list[dict[str, Any]]
) -> float:
    """How much faster `tier` runs the trial than the GPU it ran on: the time model's step on
    each (compute, optimizer, dequantization and per-layer parts each at its device's figure);
    the dense-peak ratio where the model cannot price the recipe."""
    try:
        ratio = _step_on(record, own, entries)[0] / _step_on(record, tier, entries)[0]
    except (ConfigError, ZeroDivisionError):
        ratio = math.nan
    if _num(ratio) and ratio > 0:
        return ratio
    precision = record["run"].get("precision", "bf16-mixed")
    return cost.peak_tflops(tier, precision) / (cost.peak_tflops(own, precision) or math.nan)


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
            "this device": f"{meta.get('device_name', '?')}: {cost.fmt_hours(hours)}"
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
    """One tier's "time, $ kind": a GPU run projected by the time model's ratio of the two
    devices (fits: its measured peak), a CPU run predicted by the planner and time model."""
    if (rec.get("meta") or {}).get("device") == "cuda":
        if own is None:
            return "- (the run's GPU is not in report.gpus)"
        h = hours / _speedup(rec, own, tier, entries)
        fits, kind = row.peak_memory_gib <= tier.memory_gib, "projected"
    else:
        try:
            h, fits = _predicted(rec, tier, tokens, entries)
        except ConfigError:
            h, fits = math.nan, None
        kind = "predicted"
    fit = " (does not fit)" if fits is False else ""
    usd = fmt_num(h * tier.usd_per_hour, "{:,.2f}")
    return f"{cost.fmt_hours(h)}, ${usd} {kind}{fit}"


def rates_line(tiers: list[GpuClass], entries: list[dict[str, Any]]) -> str:
    """Which time-model rates each tier's figures rest on: measured (make probe here), fitted
    (to published runs on that GPU) or assumed (another GPU's), with the source."""
    seen: dict[str, list[str]] = {}
    for tier in tiers:
        try:
            r = cost.rate(entries, cost.device_key(tier.name), "lora", "bf16-mixed")
        except ConfigError:
            continue
        seen.setdefault(f"{r.basis or 'from'} ({r.source.split(', ')[0]})", []).append(tier.name)
    return "; ".join(f"{', '.join(names)}: {what}" for what, names in seen.items())


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
        "time scaled by the time model's step on each GPU (its compute at the dense peak, "
        "its optimizer and 4-bit traffic at the memory bandwidth); it fits where its measured "
        "peak is under the tier's memory. **predicted**: a CPU run's recipe as it would run on "
        "a bf16 GPU, from the planner (memory) and the time model (`make plan`, "
        "sweep.planning.cost): a CPU says nothing measured about a GPU. Trial costs leave out "
        "the untuned base model's evaluation.",
        "",
        f"Time-model rates (conf/calibration.yaml, or `make probe`'s for this machine): "
        f"{rates_line(tiers, entries)}.",
        "",
        f"Prices per GPU-hour: {prices}.",
        "",
    ]
