"""The headline's words: what each approach's numbers support, the eval's resolution, what the
intervals cover, and the recommendation; then the section that puts them under the table.

    python -m sweep report default       # make report EXP=default; the headline comes first

Every claim follows one rule: a difference whose paired 95% interval holds 0 is no difference.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from sweep.results import compare, stats
from sweep.results.headline import col, markdown_table, recipe_note
from sweep.settings.compose import method_config


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
        res = 100 * stats.resolution(n, float(row.get("full_discordant") or 0.0))
        return (
            f"indistinguishable from full FT at n = {n}, where this eval detects a difference "
            f"of {res:.1f} points or more ({ci})"
        )
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


def coverage_line(table: pd.DataFrame, records: list[dict[str, Any]]) -> str:
    """What the intervals cover (items; seeds when there are several) and where the learning
    rates come from, with the commands that cover what they do not."""
    seeds = int(col(table, "seeds").max()) if col(table, "seeds").notna().any() else 1
    if seeds > 1:
        cover = f"the choice of eval items and of {seeds} training seeds (`sweep.seeds`)"
    else:
        cover = (
            "the choice of eval items only, for one training seed: another seed (adapter "
            "initialization, data order) can land elsewhere"
        )
    if compare.select(records)[1] is not None:
        lrs = "chosen per approach by the search (see the selection note below)"
    else:
        lrs = _lr_origin(table)
    return (
        f"**What the intervals cover:** {cover}. Learning rates: {lrs}. "
        '`make sweep ARGS="sweep.seeds=[0,1,2]"` covers seeds; `make sweep SWEEP=lr_search` '
        "tunes the learning rate per approach."
    )


def _lr_origin(table: pd.DataFrame) -> str:
    """'full 5e-05, lora r=16 0.001 (each method's default, not tuned for this task)'."""
    pairs, defaults = [], True
    for _, row in table.iterrows():
        pairs.append(f"{row.label} {row.lr:g}" if pd.notna(row.lr) else f"{row.label} ?")
        try:
            defaults &= pd.notna(row.lr) and float(row.lr) == method_config(str(row.method)).lr
        except Exception:  # a method with no shipped config: not a default
            defaults = False
    tail = "each method's default, not tuned for this task" if defaults else "as set"
    return f"{', '.join(pairs)} ({tail})"


def recommendation(table: pd.DataFrame) -> str:
    """The cheapest approach (memory; and time) not worse than full FT beyond noise."""
    fine = table[(table.method != "full") & (col(table, "vs_full") != "worse")]
    fine = fine[col(fine, "full_n_pairs").fillna(0) > 0]
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
        + ", ".join(sorted(set(col(table, "ci_method").dropna()) - {""}) or ["none"])
        + "); **task score** is the task's own scorer, which may give partial credit. "
        "**vs full FT** and **vs untuned base** are paired on the same items: the difference "
        "in points with a paired-bootstrap 95% interval, and the exact McNemar p-value; `≈ d` "
        "marks a difference whose interval holds 0 (indistinguishable at this n), and d the "
        "smallest difference in points this pair's eval would detect (80% power). "
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
        coverage_line(table, records),
        "",
        recommendation(table),
        "",
        *[f"- {s}" for s in sentences(table)],
        "",
        *recipe_note(table),
        *selection_note(records),
        *seeds_note(records),
    ]
