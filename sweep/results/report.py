"""The report: pandas over the logged trial records -> reports/<experiment>/ (markdown, CSV, plots).

    python -m sweep report default       # make report EXP=default; rebuilds without re-running

Reads only what was logged (the result records attached to the sweep's MLflow runs), so it can be
rebuilt at any time. The headline (sweep/results/headline.py) comes first, then the Pareto plots,
predicted vs measured memory, failures, every trial, the overhead and the environment.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pandas as pd

from sweep.results import epoch, stats, tracking
from sweep.results.claims import section
from sweep.results.frame import fmt_num, overhead, to_frame
from sweep.results.headline import headline
from sweep.results.plots import plots, write_file
from sweep.settings.compose import ConfigError, compose
from sweep.settings.schema import Config, GpuClass, ReportConfig

EPOCH_TOKENS = ReportConfig.epoch_tokens


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
        f"- model: {', '.join(sorted(set(map(str, df.model.dropna()))))}; task: {', '.join(_tasks(df))}",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
        f"- git: {meta.get('git_commit')}{' (dirty)' if meta.get('git_dirty') else ''}",
    ]


def _tasks(df: pd.DataFrame) -> list[str]:
    """The tasks trained (a record from before the task was recorded: its dataset's name)."""
    tasks = df["task"] if "task" in df else pd.Series(index=df.index, dtype=object)
    return sorted(set(map(str, tasks.fillna(df.dataset).dropna())))


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


def write(
    records: list[dict[str, Any]],
    out_dir: Path,
    experiment: str,
    gpus: list[GpuClass],
    tiers: Any = None,
    epoch_tokens: int = EPOCH_TOKENS,
    cache_dir: str = "",
) -> Path:
    """Write report.md, results.csv and the plots for these records; returns the report path.
    `tiers` and `epoch_tokens`: the cost-per-epoch section's GPU tiers and epoch (sweep.results.epoch)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    records = by_device(records)
    table = headline(records, gpus)  # marks each record `selected` (compare.select)
    df = to_frame(records)
    write_file(out_dir / "results.csv", lambda tmp: df.to_csv(tmp, index=False))
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
    lines += epoch.section(table, records, gpus, tiers, epoch_tokens, cache_dir)
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
    write_file(path, lambda tmp: tmp.write_text("\n".join(lines)))
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
    path = write(records, out_dir, title, r.gpus, r.tiers, r.epoch_tokens, cfg.cache_dir)
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
