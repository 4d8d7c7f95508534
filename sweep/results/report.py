"""The report: pandas over the logged trial records -> reports/<experiment>/ (markdown, CSV, plots).

    python -m sweep report default       # make report EXP=default; rebuilds without re-running

Reads only what was logged (the result records attached to the sweep's MLflow runs), so it can be
rebuilt at any time. The headline (sweep/results/headline.py) comes first, then the Pareto plots,
predicted vs measured memory, failures, every trial, the overhead and the environment.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from sweep.results import epoch, stats, tracking
from sweep.results.frame import fmt_num, overhead, to_frame
from sweep.results.headline import headline, section
from sweep.results.record import write_whole
from sweep.settings.compose import ConfigError, compose
from sweep.settings.metrics import PARETO_PAIRS
from sweep.settings.schema import Config, GpuClass, ReportConfig

EPOCH_TOKENS = ReportConfig.epoch_tokens


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
            lo, hi = row.get("acc_lo", math.nan), row.get("acc_hi", math.nan)
            err = None if math.isnan(lo) else [[(row[y] - lo) * 100], [(hi - row[y]) * 100]]
            ax.errorbar(
                row[x],
                row[y] * 100,
                yerr=err,
                fmt="o" if row[flag] else "x",
                markersize=7,
                capsize=3,
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
        ax.set_title(f"accuracy (95% CI) vs {xlabel.split(' (')[0]}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"accuracy_vs_{x}.png"
        _replace(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png"))
        plt.close(fig)
        paths.append(path)
    return paths


def predicted_vs_measured(df: pd.DataFrame) -> list[str]:
    """Per trial: the planner's parts (sweep.planning.plan) against the ledger measured in the first step
    (sweep.planning.ledger), in MiB."""
    rows = df[df.ledger_params_bytes.notna() & df.plan_weights_gib.notna()]
    if rows.empty:
        return []
    mib = 1024**2

    def pair(plan_gib: pd.Series, measured: pd.Series) -> list[str]:
        return [
            f"{fmt_num(p * 1024, '{:.3g}')} / {fmt_num(m / mib, '{:.3g}')}"
            + fmt_num(m / (p * 1024**3) if p else math.nan, " ({:.2f}x)", "")
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
    untuned base model's evaluation (once per base, then cached) counts as evaluation. The
    arithmetic is `sweep.results.frame.overhead`, which `make bench` shares."""
    if "train_phase_s" not in df:
        return []
    o = overhead(df.to_dict("records"))
    if not o["trials"]:
        return []
    return [
        "## Overhead",
        "",
        f"Per trial, {o['fixed_s_per_trial']:.1f} s on average (process start "
        f"{o['startup_s_per_trial']:.1f} s, model load {o['load_s_per_trial']:.1f} s, the rest "
        "data, method set-up, saving and exit) is spent outside the training loop and "
        f"evaluation: {o['share']:.1%} of trial wall time (`make bench` measures it against the "
        "targets).",
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
    devices = {}
    for r in records:  # every device the trials ran on, in order of appearance
        m = r.get("meta") or {}
        devices.setdefault(m.get("device_name"), m)
    return [
        *(
            f"- device: {m.get('device')} ({name}), CUDA {m.get('cuda')}, driver {m.get('driver')}"
            for name, m in devices.items()
        ),
        f"- CPU: {meta.get('cpu')} x {meta.get('cpu_count')} (torch threads {meta.get('torch_threads')})",
        f"- headline memory: {kind}",
        f"- precision: {', '.join(sorted(set(map(str, df.precision.dropna()))))}",
        f"- model: {', '.join(sorted(set(map(str, df.model.dropna()))))}; task: {', '.join(sorted(set(map(str, df.dataset.dropna()))))}",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
        f"- git: {meta.get('git_commit')}{' (dirty)' if meta.get('git_dirty') else ''}",
    ]


def _zero_line(base: pd.DataFrame) -> str:
    """The untuned base model's exact-match accuracy (with its Wilson interval) and task score."""
    if base.empty:
        return "The untuned base model was not scored (eval.base=false)."
    row = base.iloc[0]
    n = int(row.n_eval) if not math.isnan(row.n_eval) else 0
    lo, hi = stats.wilson(row.base_accuracy * n, n)
    interval = f" [{lo:.1%}, {hi:.1%}]" if n else ""
    return (
        f"Untuned base model on the same {n or 'eval'} items: **{row.base_accuracy:.1%}** exact "
        f"match{interval}, task score {fmt_num(row.base_task_score, '{:.1%}')} (the zero line)."
    )


def _replace(path: Path, write: Callable[[Path], object]) -> None:
    """Two workers finishing on one host at once each leave a whole report file; the temporary
    file sits outside the report folder, which the other may be uploading to MLflow."""
    write_whole(path, write, tmp_dir=path.parent.parent)


def write(
    records: list[dict[str, Any]],
    out_dir: Path,
    experiment: str,
    gpus: list[GpuClass],
    tiers: Any = None,
    epoch_tokens: int = EPOCH_TOKENS,
) -> Path:
    """Write report.md, results.csv and the plots for these records; returns the report path.
    `tiers` and `epoch_tokens`: the cost-per-epoch section's GPU tiers and epoch (sweep.results.epoch)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    records = by_device(records)
    table = headline(records, gpus)  # marks each record `selected` (compare.select)
    df = to_frame(records)
    _replace(out_dir / "results.csv", lambda tmp: df.to_csv(tmp, index=False))
    base = df[df.quant.isna() & df.base_accuracy.notna()]
    base = base if not base.empty else df[df.base_accuracy.notna()]
    base_acc = float(base.base_accuracy.iloc[0]) if not base.empty else None
    lines = [
        f"# Fine-tuning sweep: {experiment}",
        "",
        f"{len(df)} trial(s): {int((df.status == 'ok').sum())} ok, "
        f"{int((df.status != 'ok').sum())} not ok. {_zero_line(base)}",
        "",
    ]
    if not table.empty:
        lines += section(table, records)
        pngs = plots(table, base_acc, out_dir)
        lines += ["## Pareto plots", "", *[f"![{p.stem}]({p.name})" for p in pngs], ""]
    lines += epoch.section(table, records, gpus, tiers, epoch_tokens)
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
                "selected",
                "lr",
                "seed",
                "accuracy",
                "task_score",
                "select_loss",
                "peak_memory_gib",
                "train_s",
                "s_per_step",
                "train_tokens_per_s",
                "load_s",
                "total_s",
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


def by_device(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records from several devices keep apart: each label gains ' @ <device name>' (the same
    sweep on two GPUs, or a CPU run beside a GPU run, is never averaged into one row)."""
    names = {(r.get("meta") or {}).get("device_name") for r in records}
    if len(names) <= 1:
        return records
    out = []
    for r in records:
        run = dict(r.get("run") or {})
        run["label"] = f"{run.get('label')} @ {(r.get('meta') or {}).get('device_name')}"
        out.append({**r, "run": run})
    return out


def rebuild(experiment: str, overrides: list[str] | None = None) -> Path:
    """Rebuild reports/<experiment>/ from the records logged to MLflow, and log it there.
    "a,b" merges experiments (e.g. one sweep on two devices) into reports/a+b/."""
    cfg = compose(list(overrides or []))
    names = [n.strip() for n in experiment.split(",") if n.strip()]
    records = []
    for name in names:
        found = tracking.retrying(lambda n=name: tracking.trial_records(n), "reading the records")
        if not found:
            raise ConfigError(
                f"experiment {name!r}: no trials logged at {tracking.uri()} "
                "(run `make sweep` first, or set MLFLOW_TRACKING_URI)"
            )
        records += found
    title = "+".join(names)
    out_dir = Path(cfg.report.dir) / title
    r = cfg.report
    path = write(records, out_dir, title, r.gpus, r.tiers, r.epoch_tokens)
    if len(names) == 1:  # a merged report belongs to no one sweep's parent run
        tracking.retrying(lambda: tracking.log_report(names[0], out_dir), "logging the report")
    return path


def finish(
    cfg: Config, overrides: list[str], start: float, parent: str | None = None, who: str = "sweep"
) -> int:
    """The report over every finished trial, and the parent run closed FINISHED (the one given,
    else the experiment's); 1 with one line when the tracking store does not answer."""
    try:
        path = rebuild(cfg.experiment, overrides)
        parent = parent or tracking.find_parent(cfg.experiment)
        if parent is not None:
            tracking.finish_parent(parent, time.time() - start)
    except tracking.TrackingUnavailable as exc:
        print(f"[{who}] tracking unavailable ({exc}): the report was not written; every "
              f"record is kept under {Path(cfg.output_dir, cfg.experiment)}; run "
              f"`make report EXP={cfg.experiment}` once the store answers", flush=True)  # fmt: skip
        return 1
    print(f"[{who}] done in {time.time() - start:.0f} s; report: {path}", flush=True)
    return 0
