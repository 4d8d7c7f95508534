"""The trial records as a pandas frame: one row per trial, the run info and metrics the report uses.

    python -c "from sweep.results import frame, tracking; print(frame.to_frame(tracking.trial_records('default')))"

Also the small number helpers the report's tables share: formatting, the Student t interval
of a mean over seeds (for resources such as train time), and the per-trial fixed overhead that
the report and `make bench` both show.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from sweep.settings.metrics import METRICS

RUN_COLUMNS = (
    "label",
    "method",
    "rank",
    "quant",
    "precision",
    "base_dtype",
    "trainable_dtype",
    "optimizer",
    "gradient_checkpointing",
    "seed",
    "lr",
    "model",
    "task",
    "dataset",
)
METRIC_COLUMNS = tuple(METRICS)  # every metric a record can hold (sweep.settings.metrics)

# Student t quantiles t(0.975, df) for df = 1..30 (two-sided 95%); beyond 30 see t975().
T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t975(df: float) -> float:
    """t(0.975, df): the table up to 30 (df rounded down, as Welch's df is not an integer),
    then 40: 2.021, 60: 2.000, 120: 1.980, normal 1.960 (the next lower df, conservative)."""
    if df < 1 or math.isnan(df):
        return math.nan
    d = int(df)
    if d <= 30:
        return T975[d - 1]
    for limit, t in ((40, 2.042), (60, 2.021), (120, 2.000)):
        if d < limit:
            return t
    return 1.980 if d < 1000 else 1.960


def mean_ci(values: Any) -> tuple[float, float]:
    """(mean, half-width of the 95% Student t confidence interval); half-width NaN for n < 2."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not xs:
        return math.nan, math.nan
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return mean, math.nan
    return mean, t975(len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))


def _given(v: Any) -> bool:
    return v is not None and not math.isnan(float(v))


def _or_zero(v: Any) -> float:
    return float(v) if _given(v) else 0.0


def overhead(trials: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Per-trial fixed overhead, from each trial's metrics: the trial's wall time outside its
    training loop (warm-up steps included: they train) and its evaluation (of the trained model,
    and of the untuned base where the trial computed it): process start, model load, data,
    method set-up, saving and exit. Counts the trials with a wall time and a training phase whose
    `status` (where given) is "ok"; None or NaN is a missing value, a missing evaluation time is
    no evaluation. Returns the trials counted, fixed seconds per trial, their share of the trials' wall time,
    and the mean process start and model load of the trials that measured them (NaN if none)."""
    ok = [
        t
        for t in trials
        if t.get("status", "ok") == "ok"
        and _given(t.get("trial_wall_s"))
        and _given(t.get("train_phase_s"))
    ]
    wall = sum(t["trial_wall_s"] for t in ok)
    fixed = sum(
        t["trial_wall_s"]
        - t["train_phase_s"]
        - _or_zero(t.get("eval_s"))
        - _or_zero(t.get("base_eval_s"))
        for t in ok
    )
    return {
        "trials": len(ok),
        "fixed_s_per_trial": fixed / len(ok) if ok else math.nan,
        "share": fixed / wall if wall else math.nan,
        "startup_s_per_trial": mean_ci(t.get("startup_s") for t in ok)[0],
        "load_s_per_trial": mean_ci(t.get("load_s") for t in ok)[0],
    }


def to_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per trial: run info, status and the metrics the report uses."""
    rows = []
    for rec in records:
        run, train = rec.get("run", {}), rec.get("train", {})
        metrics = train.get("metrics", {})
        row = {k: run.get(k) for k in RUN_COLUMNS}
        row.update(status=train.get("status", "failed"), error=train.get("error"))
        meta = rec.get("meta") or {}
        row.update(
            device=meta.get("device"),
            device_name=meta.get("device_name"),
            device_class=meta.get("device_class"),
        )
        row["selected"] = bool(rec.get("selected", train.get("status") == "ok"))
        row.update({k: metrics.get(k) for k in METRIC_COLUMNS})
        rows.append(row)
    df = pd.DataFrame(
        rows,
        columns=[
            *RUN_COLUMNS,
            "status",
            "error",
            "device",
            "device_name",
            "device_class",
            "selected",
            *METRIC_COLUMNS,
        ],
    )
    for col in METRIC_COLUMNS:
        if METRICS[col].unit not in ("text", "flag"):
            df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


def fmt_bytes(n: float) -> str:
    if n is None or math.isnan(n):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):  # binary units, named as such
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def fmt_num(v: Any, fmt: str, missing: str = "-") -> str:
    return missing if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)
