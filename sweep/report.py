"""The report: pandas over the logged trial records -> reports/<experiment>/ (markdown, CSV, plots).

    python -m sweep report default       # make report EXP=default; rebuilds without re-running

Reads only what was logged (the result records attached to the sweep's MLflow runs), so it can be
rebuilt at any time. The headline table has one row per approach in the shape of the published
comparisons; `HIGHER_IS_BETTER` (record.py) says which way each metric is better, and the Pareto
pairs are accuracy versus peak memory and accuracy versus train time.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from sweep.config import GpuClass
from sweep.record import HIGHER_IS_BETTER, write_whole

RUN_COLUMNS = ("label", "method", "rank", "quant", "precision", "seed", "lr", "model", "dataset")
PARETO_PAIRS = (("accuracy", "peak_memory_gib"), ("accuracy", "train_s"))
METRIC_COLUMNS = (
    "accuracy",
    "base_accuracy",
    "eval_loss",
    "peak_memory_gib",
    "memory_kind",
    "peak_vram_gib",
    "peak_alloc_gib",
    "peak_reserved_gib",
    "cuda_context_gib",
    "peak_host_rss_gib",
    "train_s",
    "train_phase_s",
    "total_s",
    "load_s",
    "eval_s",
    "base_eval_s",
    "startup_s",
    "s_per_step",
    "train_tokens_per_s",
    "train_tflops",
    "mfu",
    "steps",
    "tokens_seen",
    "trainable_params",
    "total_params",
    "trainable_pct",
    "adapter_bytes",
    "first_loss",
    "final_loss",
    "trial_wall_s",
    "ledger_params_bytes",
    "ledger_grads_bytes",
    "ledger_optimizer_bytes",
    "ledger_activations_bytes",
    "plan_weights_gib",
    "plan_grads_gib",
    "plan_optimizer_gib",
    "plan_activations_gib",
    "plan_saved_activations_gib",
    "plan_total_gib",
)

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


def diff_ci(a: Any, b: Any) -> tuple[float, float]:
    """(mean(a) - mean(b), Welch 95% half-width); NaN half-width unless both have n >= 2."""
    xa = [float(v) for v in a if not math.isnan(float(v))]
    xb = [float(v) for v in b if not math.isnan(float(v))]
    if not xa or not xb:
        return math.nan, math.nan
    diff = statistics.fmean(xa) - statistics.fmean(xb)
    if len(xa) < 2 or len(xb) < 2:
        return diff, math.nan
    va, vb = statistics.variance(xa) / len(xa), statistics.variance(xb) / len(xb)
    if va + vb == 0:
        return diff, 0.0
    df = (va + vb) ** 2 / (va**2 / (len(xa) - 1) + vb**2 / (len(xb) - 1))
    return diff, t975(df) * math.sqrt(va + vb)


def to_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per trial: run info, status and the metrics the report uses."""
    rows = []
    for rec in records:
        run, train = rec.get("run", {}), rec.get("train", {})
        metrics = train.get("metrics", {})
        row = {k: run.get(k) for k in RUN_COLUMNS}
        row.update(status=train.get("status", "failed"), error=train.get("error"))
        row.update({k: metrics.get(k) for k in METRIC_COLUMNS})
        rows.append(row)
    df = pd.DataFrame(
        rows,
        columns=[
            *RUN_COLUMNS,
            "status",
            "error",
            *METRIC_COLUMNS,
        ],
    )
    for col in METRIC_COLUMNS:
        if col != "memory_kind":
            df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


def gpu_fit(peak_gib: float | None, gpus: list[GpuClass]) -> GpuClass | None:
    """Smallest GPU class whose memory holds the peak (None if none does or no peak)."""
    if peak_gib is None or math.isnan(peak_gib):
        return None
    fits = [g for g in gpus if g.memory_gib >= peak_gib]
    return min(fits, key=lambda g: (g.memory_gib, g.usd_per_hour)) if fits else None


def pareto(df: pd.DataFrame, a: str, b: str) -> pd.Series:
    """True for rows no other row beats on both a and b (directions from HIGHER_IS_BETTER)."""
    sa = 1 if HIGHER_IS_BETTER[a] else -1
    sb = 1 if HIGHER_IS_BETTER[b] else -1
    va, vb = df[a].to_numpy() * sa, df[b].to_numpy() * sb
    flags = []
    for i in range(len(df)):
        dominated = any(
            va[j] >= va[i] and vb[j] >= vb[i] and (va[j] > va[i] or vb[j] > vb[i])
            for j in range(len(df))
            if j != i
        )
        flags.append(not dominated and not (math.isnan(va[i]) or math.isnan(vb[i])))
    return pd.Series(flags, index=df.index)


def headline(df: pd.DataFrame, gpus: list[GpuClass]) -> pd.DataFrame:
    """One row per approach (successful trials; repeats averaged), with deltas and GPU fit."""
    ok = df[df.status == "ok"]
    if ok.empty:
        return pd.DataFrame()
    numeric = [
        "accuracy",
        "peak_memory_gib",
        "train_s",
        "total_s",
        "train_tokens_per_s",
        "train_tflops",
        "mfu",
        "trainable_params",
        "trainable_pct",
        "adapter_bytes",
        "s_per_step",
        "eval_loss",
    ]
    g = ok.groupby("label", sort=False)
    table = g[numeric].mean()
    table["method"] = g["method"].first()
    table["rank"] = g["rank"].first()
    table["quant"] = g["quant"].first()
    table["memory_kind"] = g["memory_kind"].first()
    table["runs"] = g.size()
    table["accuracy_ci"] = g["accuracy"].agg(lambda v: mean_ci(v)[1])
    table["train_s_ci"] = g["train_s"].agg(lambda v: mean_ci(v)[1])
    full = table.loc[table.method == "full", "accuracy"]
    full_acc = float(full.mean()) if not full.empty else math.nan
    table["delta_vs_full_pts"] = (table["accuracy"] - full_acc) * 100
    full_runs = ok.loc[ok.method == "full", "accuracy"].to_numpy()
    significant = {}
    for label, runs in g["accuracy"]:
        _, half = diff_ci(runs.to_numpy(), full_runs)
        delta = table.loc[label, "delta_vs_full_pts"] / 100
        significant[label] = math.nan if math.isnan(half) else float(abs(delta) > half)
    table["significant_vs_full"] = pd.Series(significant)
    table.loc[table.method == "full", "significant_vs_full"] = math.nan
    fits = [gpu_fit(p, gpus) for p in table["peak_memory_gib"]]
    table["gpu"] = [f.name if f else "none listed" for f in fits]
    table["cost_usd"] = [
        (t / 3600) * f.usd_per_hour if f else math.nan
        for t, f in zip(table["total_s"], fits, strict=True)
    ]
    order = table.method.map({"full": 0, "lora": 1, "qlora": 2}).fillna(9) * 1e6 + table[
        "rank"
    ].fillna(0)
    table = table.iloc[order.argsort(kind="stable")].copy()
    table["pareto_memory"] = pareto(table, *PARETO_PAIRS[0])
    table["pareto_time"] = pareto(table, *PARETO_PAIRS[1])
    return table.reset_index()


def _bytes(n: float) -> str:
    if n is None or math.isnan(n):
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _num(v: Any, fmt: str, missing: str = "-") -> str:
    return missing if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def markdown_table(table: pd.DataFrame) -> str:
    mem_name = "peak VRAM (GiB)" if (table.memory_kind == "vram").all() else "peak memory (GiB)"
    out = pd.DataFrame(
        {
            "approach": table["label"] + ["*" if p else "" for p in table["pareto_memory"]],
            "rank": [_num(r, "{:.0f}") for r in table["rank"]],
            "quantization": table["quant"].fillna("none (16/32-bit)"),
            mem_name: [
                _num(v, "{:.2f}") + (" host" if k == "host_rss" else "")
                for v, k in zip(table.peak_memory_gib, table.memory_kind, strict=True)
            ],
            "train time (s)": [
                _num(v, "{:.1f}") + _num(ci, " ± {:.1f}", "")
                for v, ci in zip(table.train_s, table.train_s_ci, strict=True)
            ],
            "tokens/s": [_num(v, "{:.0f}") for v in table.train_tokens_per_s],
            "model TFLOP/s": [_num(v, "{:.3g}") for v in table.train_tflops],
            "accuracy": [
                _num(v, "{:.1%}") + _num(ci * 100, " ± {:.1f}", "")
                for v, ci in zip(table.accuracy, table.accuracy_ci, strict=True)
            ],
            "delta vs full FT (pts)": [
                _num(v, "{:+.1f}") + (" ~" if sig == 0 else "")
                for v, sig in zip(table.delta_vs_full_pts, table.significant_vs_full, strict=True)
            ],
            "trainable %": [_num(v, "{:.2f}") for v in table.trainable_pct],
            "adapter size": [_bytes(v) for v in table.adapter_bytes],
            "smallest GPU that fits": table["gpu"],
            "cost (USD)": [_num(v, "{:.4f}") for v in table.cost_usd],
        }
    )
    if table.mfu.notna().any():  # on a GPU with a known peak
        out.insert(
            list(out.columns).index("model TFLOP/s") + 1,
            "MFU",
            [_num(v, "{:.1%}") for v in table.mfu],
        )
    return out.to_markdown(index=False, disable_numparse=True)


def sentences(table: pd.DataFrame) -> list[str]:
    """'LoRA r=16 reached X% of full FT accuracy at Y% of its peak memory and Z% of its train time.'"""
    full = table[table.method == "full"]
    if full.empty:
        return ["No full fine-tuning trial succeeded, so there is no baseline to compare against."]
    f = full.iloc[0]
    out = []
    for _, row in table[table.method != "full"].iterrows():
        acc = row.accuracy / f.accuracy if f.accuracy else math.nan
        acc_s = (
            f"{acc:.0%} of full FT accuracy" if not math.isnan(acc) else "n/a accuracy vs full FT"
        )
        out.append(
            f"{row.label} reached {acc_s} ({row.delta_vs_full_pts:+.1f} pts) at "
            f"{row.peak_memory_gib / f.peak_memory_gib:.0%} of its peak memory and "
            f"{row.train_s / f.train_s:.0%} of its train time, training "
            f"{row.trainable_pct:.2f}% of the parameters."
        )
    return out


def plots(table: pd.DataFrame, base_acc: float | None, out_dir: Path) -> list[Path]:
    """Accuracy versus peak memory and versus train time, Pareto front marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for (y, x), flag, xlabel in (
        (PARETO_PAIRS[0], "pareto_memory", "peak memory (GiB)"),
        (PARETO_PAIRS[1], "pareto_time", "train time (s)"),
    ):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
        for _, row in table.iterrows():
            ax.scatter(
                row[x],
                row[y] * 100,
                s=60,
                marker="o" if row[flag] else "x",
                color="tab:blue" if row[flag] else "tab:gray",
            )
            ax.annotate(
                row["label"],
                (row[x], row[y] * 100),
                textcoords="offset points",
                xytext=(5, 4),
                fontsize=8,
            )
        front = table[table[flag]].sort_values(x)
        ax.plot(front[x], front[y] * 100, color="tab:blue", lw=1, alpha=0.6, label="Pareto front")
        if base_acc is not None and not math.isnan(base_acc):
            ax.axhline(base_acc * 100, color="tab:red", ls="--", lw=1, label="untuned base")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"accuracy vs {xlabel.split(' (')[0]}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"accuracy_vs_{x}.png"
        _replace(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png"))
        plt.close(fig)
        paths.append(path)
    return paths


def predicted_vs_measured(df: pd.DataFrame) -> list[str]:
    """Per trial: the planner's parts (sweep.plan) against the ledger measured in the first step
    (sweep.ledger), in MiB."""
    rows = df[df.ledger_params_bytes.notna() & df.plan_weights_gib.notna()]
    if rows.empty:
        return []
    mib = 1024**2

    def pair(plan_gib: pd.Series, measured: pd.Series) -> list[str]:
        return [
            f"{_num(p * 1024, '{:.3g}')} / {_num(m / mib, '{:.3g}')}"
            + _num(m / (p * 1024**3) if p else math.nan, " ({:.2f}x)", "")
            for p, m in zip(plan_gib, measured, strict=True)
        ]

    acts = rows.plan_saved_activations_gib.fillna(rows.plan_activations_gib)
    table = pd.DataFrame(
        {
            "trial": rows.label,
            "seed": rows.seed,
            "params": pair(rows.plan_weights_gib, rows.ledger_params_bytes),
            "grads": pair(rows.plan_grads_gib, rows.ledger_grads_bytes),
            "optimizer": pair(rows.plan_optimizer_gib, rows.ledger_optimizer_bytes),
            "activations": pair(acts, rows.ledger_activations_bytes),
        }
    )
    return [
        "## Predicted vs measured memory",
        "",
        table.to_markdown(index=False, disable_numparse=True),
        "",
        "MiB, predicted (`make plan`, for the trial's model, method, rank, batch, precision) / "
        "measured (the memory ledger of the first training step: bytes of parameters, of "
        "gradients before the optimizer step, of optimizer state after it, of tensors saved "
        "for backward) (measured / predicted). Activations are predicted at the measured batch "
        "width, without the loss's two gradients (not saved tensors); a 4-bit base's "
        "quantization constants are predicted but are not parameters.",
        "",
    ]


def _overhead(df: pd.DataFrame) -> list[str]:
    """Time a trial spends outside its training loop and evaluation (process start, model load,
    data preparation, method set-up, saving, exit), as a share of the trial's wall time. Warm-up
    steps count as training: they train; they are only left out of the throughput clock. The
    untuned base model's evaluation (once per base, then cached) counts as evaluation."""
    if "train_phase_s" not in df:
        return []
    ok = df[(df.status == "ok") & df.trial_wall_s.notna() & df.train_phase_s.notna()]
    if ok.empty:
        return []
    base_eval = ok.base_eval_s.fillna(0) if "base_eval_s" in ok else 0.0
    fixed = ok.trial_wall_s - ok.train_phase_s - ok.eval_s.fillna(0) - base_eval
    share = fixed.sum() / ok.trial_wall_s.sum()
    return [
        "## Overhead",
        "",
        f"Per trial, {fixed.mean():.1f} s on average (process start {ok.startup_s.mean():.1f} s, "
        f"model load {ok.load_s.mean():.1f} s, the rest data, method set-up, saving and exit) is "
        f"spent outside the training loop and evaluation: {share:.1%} of trial wall time "
        "(`make bench` measures it against the targets).",
        "",
    ]


def _environment(records: list[dict[str, Any]], df: pd.DataFrame) -> list[str]:
    meta = next((r.get("meta") for r in records if r.get("meta")), {}) or {}
    v = meta.get("versions", {})
    kind = (
        "VRAM (NVML per-process peak during training)"
        if (df.memory_kind == "vram").any()
        else "host RSS (peak resident memory of the trial process; no GPU)"
    )
    return [
        f"- device: {meta.get('device')} ({meta.get('device_name')}), CUDA {meta.get('cuda')}, driver {meta.get('driver')}",
        f"- CPU: {meta.get('cpu')} x {meta.get('cpu_count')} (torch threads {meta.get('torch_threads')})",
        f"- headline memory: {kind}",
        f"- precision: {', '.join(sorted(set(map(str, df.precision.dropna()))))}",
        f"- model: {', '.join(sorted(set(map(str, df.model.dropna()))))}; task: {', '.join(sorted(set(map(str, df.dataset.dropna()))))}",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
        f"- git: {meta.get('git_commit')}{' (dirty)' if meta.get('git_dirty') else ''}",
    ]


def _replace(path: Path, write: Callable[[Path], object]) -> None:
    """Two workers finishing on one host at once each leave a whole report file; the temporary
    file sits outside the report folder, which the other may be uploading to MLflow."""
    write_whole(path, write, tmp_dir=path.parent.parent)


def write(
    records: list[dict[str, Any]], out_dir: Path, experiment: str, gpus: list[GpuClass]
) -> Path:
    """Write report.md, results.csv and the plots for these records; returns the report path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    df = to_frame(records)
    _replace(out_dir / "results.csv", lambda tmp: df.to_csv(tmp, index=False))
    table = headline(df, gpus)
    base = df.loc[df.quant.isna(), "base_accuracy"].dropna()
    base = base if not base.empty else df["base_accuracy"].dropna()
    base_acc = float(base.iloc[0]) if not base.empty else None
    lines = [
        f"# Fine-tuning sweep: {experiment}",
        "",
        f"{len(df)} trial(s): {int((df.status == 'ok').sum())} ok, "
        f"{int((df.status != 'ok').sum())} not ok. Untuned base model accuracy on the same eval "
        f"set: **{_num(base_acc, '{:.1%}')}** (the zero line).",
        "",
    ]
    if not table.empty:
        lines += [
            "## Headline",
            "",
            markdown_table(table),
            "",
            "`*` on the Pareto front of accuracy versus peak memory. Accuracy is the task's own "
            "scorer on held-out examples; delta is in percentage points against full fine-tuning; "
            "train time excludes warm-up steps and evaluation; cost is the trial's total wall "
            "time at the listed price of the smallest GPU class that fits its peak."
            + (
                " With repeated seeds (`runs` > 1: sweep.seeds) numbers are means, `±` the "
                "half-width of the 95% Student t confidence interval over seeds, and `~` marks "
                "a delta within noise (the Welch 95% interval of the difference includes 0)."
                if (table.runs > 1).any()
                else ""
            ),
            "",
            *[f"- {s}" for s in sentences(table)],
            "",
        ]
        pngs = plots(table, base_acc, out_dir)
        lines += ["## Pareto plots", "", *[f"![{p.stem}]({p.name})" for p in pngs], ""]
    lines += predicted_vs_measured(df)
    bad = df[df.status != "ok"]
    lines += ["## Failed, OOM, diverged, pruned and skipped trials", ""]
    lines += [
        bad[["label", "status", "error"]].fillna("").to_markdown(index=False)
        if not bad.empty
        else "None.",
        "",
    ]
    lines += [
        "## All trials",
        "",
        df[
            [
                "label",
                "status",
                "accuracy",
                "peak_memory_gib",
                "train_s",
                "s_per_step",
                "train_tokens_per_s",
                "load_s",
                "total_s",
                "seed",
            ]
        ].to_markdown(index=False, floatfmt=".4g"),
        "",
    ]
    inference = out_dir / "inference.md"  # written by `make inference`, kept across rebuilds
    lines += [*_overhead(df), *([inference.read_text(), ""] if inference.exists() else [])]
    lines += ["## Environment", "", *_environment(records, df), ""]
    path = out_dir / "report.md"
    _replace(path, lambda tmp: tmp.write_text("\n".join(lines)))
    return path


def rebuild(experiment: str, overrides: list[str] | None = None) -> Path:
    """Rebuild reports/<experiment>/ from the records logged to MLflow, and log it there."""
    from sweep import tracking
    from sweep.config import ConfigError, compose

    cfg = compose(list(overrides or []))
    records = tracking.trial_records(experiment)
    if not records:
        raise ConfigError(
            f"experiment {experiment!r}: no trials logged at {tracking.uri()} "
            "(run `make sweep` first, or set MLFLOW_TRACKING_URI)"
        )
    out_dir = Path(cfg.report.dir) / experiment
    path = write(records, out_dir, experiment, cfg.report.gpus)
    tracking.log_report(experiment, out_dir)
    return path
