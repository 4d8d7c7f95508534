"""The headline table: one row per approach, in the shape of the published comparisons (its
words are sweep.results.claims).

    python -m sweep report default       # make report EXP=default; the headline comes first

Resources are averaged over an approach's chosen trials (`compare.select`: one per seed, a
search's best setting); accuracy statistics come from the per-item results (`compare.table`).
The Pareto marks and the ≈ marks use the same rule as the claims: a difference whose paired 95%
interval holds 0 is no difference.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from sweep.planning.plan import gpu_fit
from sweep.results import compare, epoch, stats
from sweep.results.frame import fmt_bytes, fmt_num, mean_ci, to_frame
from sweep.settings.metrics import HIGHER_IS_BETTER, PARETO_PAIRS
from sweep.settings.schema import GpuClass


def pareto(df: pd.DataFrame, a: str, b: str, better: dict[tuple[str, str], bool]) -> pd.Series:
    """True for rows no other row dominates on accuracy `a` and resource `b` beyond noise.

    Row j dominates row i when j's resource is no higher, i's accuracy is not higher than j's
    beyond noise (`better`: the paired 95% interval of the difference lies above 0), and j is
    strictly better somewhere: less resource, or higher accuracy beyond noise. Resources are
    compared as measured; accuracy differences inside the noise count as ties.
    """
    assert HIGHER_IS_BETTER[a] and not HIGHER_IS_BETTER[b], (a, b)
    labels, res = list(df["label"]), df[b].to_numpy()
    flags = []
    for i, li in enumerate(labels):
        dominated = any(
            res[j] <= res[i]
            and not better.get((li, lj), False)
            and (res[j] < res[i] or better.get((lj, li), False))
            for j, lj in enumerate(labels)
            if j != i and not math.isnan(res[j])
        )
        flags.append(not dominated and not math.isnan(res[i]))
    return pd.Series(flags, index=df.index)


RESOURCE_COLUMNS = [
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


def headline(records: list[dict[str, Any]], gpus: list[GpuClass]) -> pd.DataFrame:
    """One row per approach: resources averaged over its chosen trials (one per seed; a search
    sweep's best setting, `compare.select`), accuracy statistics from the per-item results
    (`compare.table`), GPU fit and the Pareto marks (ties within noise)."""
    chosen, _ = compare.select(records)
    ok = to_frame(chosen)
    if ok.empty:
        return pd.DataFrame()
    ok["cost_usd"] = [epoch.trial_cost_usd(r, gpus) for r in ok.to_dict("records")]
    g = ok.groupby("label", sort=False)
    table = g[[*RESOURCE_COLUMNS, "cost_usd"]].mean()
    for col in ("method", "rank", "quant", "base_dtype", "memory_kind", "lr", *RECIPE_COLUMNS):
        table[col] = g[col].first()
    table["runs"] = g.size()
    table["train_s_ci"] = g["train_s"].agg(lambda v: mean_ci(v)[1])
    table = table.join(compare.table(chosen))
    table["delta_vs_full_pts"] = table.get("full_delta", math.nan)
    table.loc[table.method == "full", "delta_vs_full_pts"] = 0.0
    table["device"] = g["device"].first()
    first: dict[str, dict[str, Any]] = {}
    for r in chosen:
        first.setdefault(r["run"]["label"], r)
    on_gpu = table["device"] == "cuda"
    table["planned_gpu_gib"] = [  # a CPU run's recipe on a bf16 GPU, from the planner
        math.nan if gpu else epoch.planned_gpu_peak(first[label]) for label, gpu in on_gpu.items()
    ]
    fit_on = table["peak_memory_gib"].where(on_gpu, table["planned_gpu_gib"])
    table["gpu"] = [
        (f.name if f else "none listed") + ("" if gpu else " (predicted)")
        for f, gpu in zip([gpu_fit(p, gpus) for p in fit_on], on_gpu, strict=True)
    ]
    order = table.method.map({"full": 0, "lora": 1, "qlora": 2}).fillna(9) * 1e6 + table[
        "rank"
    ].fillna(0)
    table = table.iloc[order.argsort(kind="stable")].copy().reset_index()
    better = compare.better_beyond_noise(chosen)
    table["pareto_memory"] = pareto(table, *PARETO_PAIRS[0], better)
    table["pareto_time"] = pareto(table, *PARETO_PAIRS[1], better)
    return table


RECIPE_COLUMNS = ("lr", "precision", "optimizer", "gradient_checkpointing")


def _recipe_diffs(table: pd.DataFrame) -> list[list[str]]:
    """Per row: the recipe settings (learning rate, precision, optimizer, checkpointing) that
    differ from the full FT row's; empty where none do, or without a full FT row or the setting
    recorded."""
    full = table[table.method == "full"]
    if full.empty:
        return [[] for _ in range(len(table))]
    base = full.iloc[0]
    return [
        [
            f"{c} {row[c]} (full FT: {base[c]})"
            for c in RECIPE_COLUMNS
            if c in table and pd.notna(row[c]) and pd.notna(base[c]) and row[c] != base[c]
        ]
        for _, row in table.iterrows()
    ]


def recipe_differs(table: pd.DataFrame) -> list[bool]:
    """Rows trained with another learning rate, precision, optimizer or checkpointing than
    full FT."""
    return [bool(d) for d in _recipe_diffs(table)]


def recipe_note(table: pd.DataFrame) -> list[str]:
    """The lines under the table for `†` rows: what differs from the full FT row."""
    lines = [
        f"- † {label}: {'; '.join(d)}"
        for label, d in zip(table["label"], _recipe_diffs(table), strict=True)
        if d
    ]
    if not lines:
        return []
    head = (
        "Rows marked † were trained differently from the full FT row beyond the method itself, "
        "so their differences are not the method's alone (a learning rate moves accuracy; "
        "precision, optimizer and checkpointing move memory and time):"
    )
    return [head, *lines, ""]


def col(table: pd.DataFrame, name: str) -> pd.Series:
    return table[name] if name in table else pd.Series(math.nan, index=table.index)


def _interval(v: float, lo: float, hi: float, fmt: str) -> str:
    if v is None or math.isnan(v):
        return "-"
    return fmt.format(v) + ("" if math.isnan(lo) else f" [{fmt.format(lo)}, {fmt.format(hi)}]")


def _delta_cells(table: pd.DataFrame, prefix: str) -> list[str]:
    """'+1.3 [-3.0, +5.5] ≈ 4.6' (points, paired 95% interval; ≈ where it holds 0, then the
    smallest difference this pair's eval detects: what "indistinguishable" is worth)."""
    out = []
    for d, lo, hi, res in zip(
        col(table, f"{prefix}_delta"),
        col(table, f"{prefix}_lo"),
        col(table, f"{prefix}_hi"),
        pair_resolution(table, prefix),
        strict=True,
    ):
        cell = _interval(d, lo, hi, "{:+.1f}")
        if compare.verdict(lo, hi) == compare.SAME:
            cell += " ≈" + ("" if math.isnan(res) else f" {res:.1f}")
        out.append(cell)
    return out


def pair_resolution(table: pd.DataFrame, prefix: str) -> list[float]:
    """Per row: the smallest difference (points) its eval against `prefix` (full, base)
    detects with 80% power, from that pair's own n and discordant share."""
    return [
        100 * stats.resolution(int(n), float(p)) if n and not math.isnan(p) else math.nan
        for n, p in zip(
            col(table, f"{prefix}_n_pairs").fillna(0),
            col(table, f"{prefix}_discordant"),
            strict=True,
        )
    ]


def markdown_table(table: pd.DataFrame) -> str:
    mem_name = "peak VRAM (GiB)" if (table.memory_kind == "vram").all() else "peak memory (GiB)"
    full = table.method == "full"
    out = pd.DataFrame(
        {
            "approach": table["label"]
            + ["*" if p else "" for p in table["pareto_memory"]]
            + ["†" if d else "" for d in recipe_differs(table)],
            "base weights": [
                q if isinstance(q, str) else (f"{b}" if isinstance(b, str) else "16/32-bit")
                for q, b in zip(table["quant"], col(table, "base_dtype"), strict=True)
            ],
            "n": [fmt_num(v, "{:.0f}") for v in col(table, "n")],
            mem_name: [
                fmt_num(v, "{:.2f}") + (" host" if k == "host_rss" else "")
                for v, k in zip(table.peak_memory_gib, table.memory_kind, strict=True)
            ],
            "train time (s)": [
                fmt_num(v, "{:.1f}") + fmt_num(ci, " ± {:.1f}", "")
                for v, ci in zip(table.train_s, table.train_s_ci, strict=True)
            ],
            "tokens/s": [fmt_num(v, "{:.0f}") for v in table.train_tokens_per_s],
            "model TFLOP/s": [fmt_num(v, "{:.3g}") for v in table.train_tflops],
            "accuracy, exact (95% CI)": [
                _interval(100 * v, 100 * lo, 100 * hi, "{:.1f}")
                for v, lo, hi in zip(
                    table.accuracy, col(table, "acc_lo"), col(table, "acc_hi"), strict=True
                )
            ],
            "task score": [fmt_num(100 * v, "{:.1f}") for v in col(table, "task_score")],
            "vs full FT (pts, 95% CI)": [
                "baseline" if f else c
                for f, c in zip(full, _delta_cells(table, "full"), strict=True)
            ],
            "McNemar p": [
                "" if f else fmt_num(v, "{:.2g}")
                for f, v in zip(full, col(table, "full_p"), strict=True)
            ],
            "vs untuned base (pts)": _delta_cells(table, "base"),
            "forgetting (nats)": [
                _interval(v, lo, hi, "{:+.3f}")
                for v, lo, hi in zip(
                    col(table, "retention_delta"),
                    col(table, "retention_lo"),
                    col(table, "retention_hi"),
                    strict=True,
                )
            ],
            "trainable %": [fmt_num(v, "{:.2f}") for v in table.trainable_pct],
            "adapter size": [fmt_bytes(v) for v in table.adapter_bytes],
            "smallest GPU that fits": table["gpu"],
            "trial cost (USD)": [fmt_num(v, "{:.4f}") for v in table.cost_usd],
        }
    )
    if table.planned_gpu_gib.notna().any():  # CPU rows: the planner's GPU peak beside theirs
        out.insert(
            list(out.columns).index(mem_name) + 1,
            "planned GPU peak (GiB)",
            [fmt_num(v, "{:.2f}") for v in table.planned_gpu_gib],
        )
    if table.mfu.notna().any():  # on a GPU with a known peak
        out.insert(
            list(out.columns).index("model TFLOP/s") + 1,
            "MFU",
            [fmt_num(v, "{:.1%}") for v in table.mfu],
        )
    return out.to_markdown(index=False, disable_numparse=True)
