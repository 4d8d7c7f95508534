"""The headline: one row per approach, in the shape of the published comparisons, and its words.

    python -m sweep report default       # make report EXP=default; the headline comes first

Resources are averaged over an approach's chosen trials (`compare.select`: one per seed, a
search's best setting); accuracy statistics come from the per-item results (`compare.table`).
The Pareto marks, the sentences, the resolution and the recommendation all use the same rule:
a difference whose paired 95% interval holds 0 is no difference.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from sweep.planning.plan import gpu_fit
from sweep.results import compare, epoch
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


RECIPE_COLUMNS = ("precision", "optimizer", "gradient_checkpointing")


def _recipe_diffs(table: pd.DataFrame) -> list[list[str]]:
    """Per row: the recipe settings (precision, optimizer, checkpointing) that differ from the
    full FT row's; empty where none do, or without a full FT row or the setting recorded."""
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
    """Rows trained with another precision, optimizer or checkpointing than full FT."""
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
        "Rows marked † differ from the full FT row in more than the method, so their memory "
        "and time differences are not the method's alone:"
    )
    return [head, *lines, ""]


def _col(table: pd.DataFrame, name: str) -> pd.Series:
    return table[name] if name in table else pd.Series(math.nan, index=table.index)


def _interval(v: float, lo: float, hi: float, fmt: str) -> str:
    if v is None or math.isnan(v):
        return "-"
    return fmt.format(v) + ("" if math.isnan(lo) else f" [{fmt.format(lo)}, {fmt.format(hi)}]")


def _delta_cells(table: pd.DataFrame, prefix: str) -> list[str]:
    """'+1.3 [-3.0, +5.5] ≈' (points, paired 95% interval; ≈ where it holds 0)."""
    out = []
    for d, lo, hi in zip(
        _col(table, f"{prefix}_delta"),
        _col(table, f"{prefix}_lo"),
        _col(table, f"{prefix}_hi"),
        strict=True,
    ):
        cell = _interval(d, lo, hi, "{:+.1f}")
        same = compare.verdict(lo, hi) == compare.SAME
        out.append(cell + (" ≈" if same else ""))
    return out


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
                for q, b in zip(table["quant"], _col(table, "base_dtype"), strict=True)
            ],
            "n": [fmt_num(v, "{:.0f}") for v in _col(table, "n")],
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
                    table.accuracy, _col(table, "acc_lo"), _col(table, "acc_hi"), strict=True
                )
            ],
            "task score": [fmt_num(100 * v, "{:.1f}") for v in _col(table, "task_score")],
            "vs full FT (pts, 95% CI)": [
                "baseline" if f else c
                for f, c in zip(full, _delta_cells(table, "full"), strict=True)
            ],
            "McNemar p": [
                "" if f else fmt_num(v, "{:.2g}")
                for f, v in zip(full, _col(table, "full_p"), strict=True)
            ],
            "vs untuned base (pts)": _delta_cells(table, "base"),
            "forgetting (nats)": [
                _interval(v, lo, hi, "{:+.3f}")
                for v, lo, hi in zip(
                    _col(table, "retention_delta"),
                    _col(table, "retention_lo"),
                    _col(table, "retention_hi"),
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


def _vs_full(row: Any) -> str:
    """How an approach's accuracy compares with full FT's, in words the data supports."""
    lo, hi = row.get("full_lo"), row.get("full_hi")
    if lo is None or math.isnan(lo):
        return (
            "not compared with full FT item by item (no per-item results on common items and seeds)"
        )
    d = row.get("full_delta")
    ci = f"{d:+.1f} pts, 95% CI {lo:+.1f} to {hi:+.1f}; McNemar p = {row.get('full_p'):.2g}"
    n = int(row.get("full_n_pairs") or 0)
    word = compare.verdict(lo, hi)
    if word == compare.SAME:
        return f"indistinguishable from full FT at n = {n} ({ci})"
    return f"{abs(d):.1f} pts {'above' if word == 'better' else 'below'} full FT ({ci})"


def sentences(table: pd.DataFrame) -> list[str]:
    """Per approach: its accuracy against full FT in words the data supports, and its cost."""
    full = table[table.method == "full"]
    if full.empty:
        return ["No full fine-tuning trial succeeded, so there is no baseline to compare against."]
    f = full.iloc[0]
    return [
        f"{row.label}: {_vs_full(row)}, at {row.peak_memory_gib / f.peak_memory_gib:.0%} of "
        f"its peak memory and {row.train_s / f.train_s:.0%} of its train time, training "
        f"{row.trainable_pct:.2f}% of the parameters."
        for _, row in table[table.method != "full"].iterrows()
    ]


def resolution_line(table: pd.DataFrame) -> str:
    """The smallest difference from full FT this eval can detect."""
    res = compare.resolution(table.set_index("label"))
    if res is None:
        return (
            "**Resolution:** no paired per-item results against full FT, so no difference "
            "between approaches can be resolved."
        )
    lo, hi, n, d_lo, d_hi = res
    if math.isinf(hi):
        return (
            f"**Resolution:** n = {n} paired items are too few to detect any difference from "
            "full FT with 80% power; raise `eval.size` (or add `sweep.seeds`)."
        )
    span = f"{lo:.1f}" if abs(hi - lo) < 0.05 else f"{lo:.1f}-{hi:.1f}"
    share = f"{d_lo:.0%}" if abs(d_hi - d_lo) < 0.005 else f"{d_lo:.0%}-{d_hi:.0%}"
    return (
        f"**Resolution:** with n = {n} paired items and {share} of them answered differently "
        f"from full FT, this eval detects a difference of {span} points or more with 80% power "
        "(two-sided, alpha 0.05); smaller differences are below what it can resolve, so a "
        "delta marked ≈ is no evidence of equality. More items (`eval.size`) or seeds "
        "(`sweep.seeds`) resolve finer differences."
    )


def recommendation(table: pd.DataFrame) -> str:
    """The cheapest approach (memory; and time) not worse than full FT beyond noise."""
    fine = table[(table.method != "full") & (_col(table, "vs_full") != "worse")]
    fine = fine[_col(fine, "full_n_pairs").fillna(0) > 0]
    if (table.method == "full").sum() == 0:
        return "**Recommendation:** none: no full fine-tuning baseline succeeded."
    if fine.empty:
        return (
            "**Recommendation:** none at this resolution: every other approach is below full FT "
            "beyond noise, or was not compared item by item."
        )
    f = table[table.method == "full"].iloc[0]
    mem = fine.loc[fine.peak_memory_gib.idxmin()]
    fast = fine.loc[fine.train_s.idxmin()]
    kind = " host" if mem.memory_kind == "host_rss" else ""
    text = (
        f"**Recommendation:** {mem.label} has the smallest peak memory among approaches not "
        f"worse than full FT beyond noise: {mem.peak_memory_gib:.2f} GiB{kind} against "
        f"{f.peak_memory_gib:.2f}, accuracy {mem.accuracy:.1%} against {f.accuracy:.1%} "
        f"({mem.full_delta:+.1f} pts, 95% CI {mem.full_lo:+.1f} to {mem.full_hi:+.1f})"
    )
    if fast.label != mem.label:
        text += (
            f"; {fast.label} has the shortest train time among them ({fast.train_s:.0f} s "
            f"against {f.train_s:.0f} s)"
        )
    else:
        text += f", and the shortest train time among them ({mem.train_s:.0f} s against {f.train_s:.0f} s)"
    return text + "."


def selection_note(records: list[dict[str, Any]]) -> list[str]:
    """For search sweeps: which trial each approach's row reports, and chosen on what."""
    _, key = compare.select(records)
    if key is None:
        return []
    bias = (
        "the selection split (`eval.select_size` items apart from the eval set), so the "
        "reported accuracy is not biased by the choice"
        if key == "select_loss"
        else "the eval set's own loss (no selection split: set `eval.select_size`), so the "
        "reported accuracy is optimistic"
    )
    return [
        f"Several settings per approach: each row reports, per seed, the trial with the lowest "
        f"`{key}`, on {bias}. `selected` in **All trials** marks them; the others are listed there.",
        "",
    ]


def seeds_note(records: list[dict[str, Any]]) -> list[str]:
    """With repeated seeds: which seeds, and what a seed varies (init and order; data too?)."""
    chosen, _ = compare.select(records)
    seeds = sorted({r["run"].get("seed") for r in chosen if r["run"].get("seed") is not None})
    if len(seeds) < 2:
        return []
    data_seeds = {((r["run"].get("config") or {}).get("dataset") or {}).get("seed") for r in chosen}
    varies = (
        "adapter initialization, data order and the data sample itself (`sweep.seed_data`: "
        "each seed its own train and eval items, shared by every approach of that seed)"
        if len(data_seeds) > 1
        else "adapter initialization and data order, on the same train and eval items "
        "(`sweep.seed_data=true` varies the data sample too)"
    )
    return [
        f"Seeds {', '.join(map(str, seeds))} (`sweep.seeds`) vary {varies}; accuracy intervals "
        "and paired deltas bootstrap over seeds and items, pairing each seed with the same seed "
        "of full FT.",
        "",
    ]


def section(table: pd.DataFrame, records: list[dict[str, Any]]) -> list[str]:
    """The report's headline section: the table, how to read it, resolution, recommendation,
    one sentence per approach, and for search sweeps which trial each row reports."""
    if table.empty:
        return []

    return [
        "## Headline",
        "",
        markdown_table(table),
        "",
        "`*` on the Pareto front of accuracy versus peak memory, where accuracy "
        "differences inside the noise count as ties. **n** is the number of eval items "
        "(times seeds). **accuracy** is exact match of the answer line with the expected "
        "answer (case, surrounding space and a final period ignored), with its 95% interval ("
        + ", ".join(sorted(set(_col(table, "ci_method").dropna()) - {""}) or ["none"])
        + "); **task score** is the task's own scorer, which may give partial credit. "
        "**vs full FT** and **vs untuned base** are paired on the same items: the difference "
        "in points with a paired-bootstrap 95% interval, and the exact McNemar p-value; `≈` "
        "marks a difference whose interval holds 0 (indistinguishable at this n). "
        "**forgetting** is the loss on general text the trial never trained on (Python's "
        "docs), after minus before training, in nats per token: above 0 the model got worse "
        "at it. Train time excludes warm-up steps and evaluation. Peak memory is the training "
        "phase's (VRAM on a GPU, the process's resident memory on a CPU); on a CPU run the "
        "**planned GPU peak** is the planner's for the same recipe on a bf16 GPU, and the "
        "smallest GPU that fits it is marked predicted. **trial cost** is a GPU trial's wall "
        "time, less the untuned base model's evaluation, at its GPU class's price "
        "(`report.gpus`); a CPU trial has none. Cost per epoch: see below."
        + (
            " With repeated seeds (`sweep.seeds`) resources are means over seeds and `±` the "
            "half-width of their 95% Student t interval."
            if (table.runs > 1).any()
            else ""
        ),
        "",
        resolution_line(table),
        "",
        recommendation(table),
        "",
        *[f"- {s}" for s in sentences(table)],
        "",
        *recipe_note(table),
        *selection_note(records),
        *seeds_note(records),
    ]
