"""The planner against published runs: predicted memory and tokens/s next to what others measured.

    python -m sweep.bench.published        # prints the "Planner vs published runs" section

Each published run is restated in the planner's terms (`sweep.planning.plan.Settings` and a
`sweep.planning.recipe.Recipe`) exactly as its source ran it, and `compare()` puts the planner's peak
(`sweep.planning.plan.plan_row`) and the time model's tokens/s (`sweep.planning.cost`) next to the published
figures. Pure arithmetic: no torch model, no GPU, no network (the figures are transcribed here,
each with its repository, path and commit).

Which prediction meets which figure:
- torch peak allocated (`torch.cuda.max_memory_allocated`): the allocated part, total minus
  `overhead_gib` (no CUDA context, no allocator slack);
- torch reserved (average, 99th percentile, max of `memory_reserved`): the total with
  `cuda_context_gib=0` (torch never counts the context) and the planner's 10% fragmentation;
- nvidia-smi (`memory.used` peak minus the reading before the process started): the total with
  the default 0.5 GiB CUDA context.
Tokens/s: batch x seq / `cost.step_time`, at the GPU's dense bf16 peak and memory bandwidth
from conf/config.yaml and its calibration entry.
A ratio (predicted / published) within 15% passes; every row outside says why.
The runs themselves, with their sources: sweep/bench/published_runs.py.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pandas as pd

from sweep.bench.published_runs import BAND, CALIBRATION, MEASURES, RUNS, Run, Source
from sweep.planning import cost
from sweep.planning.plan import load_gpus, plan_row

# ---------------------------------------------------------------- the comparison


def within(ratio: float) -> bool:
    return math.isfinite(ratio) and abs(ratio - 1) <= BAND


def predicted_tokens_per_s(run: Run) -> float:
    """batch x seq / step_s: the time model on the GPU's class with its calibration entry."""
    gpu = next(g for g in load_gpus() if g.name == run.gpu)
    s, rec = run.settings, run.recipe
    rate = cost.rate(
        cost.load_calibration(None), cost.device_key(gpu.name), rec.kind, rec.precision
    )
    tokens = s.batch_size * s.seq_len
    step = cost.step_time(run.arch, rec, tokens, s.seq_len, gpu, rate, s.gradient_checkpointing)
    return tokens / step


def compare() -> pd.DataFrame:
    """One row per published memory figure; the run's time check on its first row."""
    rows = []
    for run in RUNS:
        for i, fig in enumerate(run.memory):
            s = run.settings if fig.seq_len is None else replace(run.settings, seq_len=fig.seq_len)
            plan = plan_row(run.arch, s, run.recipe, [])
            alloc = plan.total_gib - plan.overhead_gib
            predicted = alloc if fig.basis == "allocated" else plan.total_gib
            ratio = predicted / fig.gib
            why = [] if within(ratio) else [("Memory", fig.why)]
            row = {
                "run": run.name,
                "figure": fig.label,
                "basis": fig.basis,
                "seq": s.seq_len,
                "pred_total_gib": plan.total_gib,
                "pred_alloc_gib": alloc,
                "published_gib": fig.gib,
                "mem_ratio": ratio,
                "mem_within_15": within(ratio),
                "pred_tok_s": math.nan,
                "published_tok_s": math.nan,
                "time_ratio": math.nan,
                "time_check": "",
            }
            if i == 0:
                tps = predicted_tokens_per_s(run)
                row["pred_tok_s"] = tps
                if run.tokens_per_s:
                    t_ratio = tps / run.tokens_per_s
                    row["published_tok_s"] = run.tokens_per_s
                    row["time_ratio"] = t_ratio
                    if run.time_is_calibration:
                        row["time_check"] = CALIBRATION
                    else:
                        row["time_check"] = "yes" if within(t_ratio) else "no"
                        if not within(t_ratio):
                            why.append(("Time", run.time_why))
            row["why"] = _why(why)
            rows.append(row)
    return pd.DataFrame(rows)


def _why(reasons: list[tuple[str, str]]) -> str:
    """The reason(s) for a row outside the band; labelled when memory and time both are."""
    if any(not text for _, text in reasons):
        return ""  # a missing reason leaves the row unexplained (tests/bench/test_published.py)
    if len(reasons) == 1:
        return reasons[0][1]
    return " ".join(f"{kind}: {text}" for kind, text in reasons)


# ---------------------------------------------------------------- the report section


def _fmt(value: object, digits: int = 2) -> str:
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:,.{digits}f}"
    return str(value)


def section() -> str:
    """The markdown section "## Planner vs published runs": the table and one line per source."""
    t = compare()
    head = [
        "run",
        "figure (seq)",
        "predicted GiB",
        "published GiB",
        "ratio",
        "≤15%",
        "pred tok/s",
        "pub tok/s",
        "ratio",
        "≤15%",
        "why",
    ]
    lines = [
        "## Planner vs published runs",
        "",
        "Predicted peak (`sweep.planning.plan.plan_row`) and tokens/s (`sweep.planning.cost`) against published "
        "runs, restated in the planner's settings (sweep/bench/published.py). Allocated figures "
        "meet the allocated part (total minus overhead), reserved and nvidia-smi figures the "
        "total (CUDA context 0 for torch's reserved, 0.5 GiB for nvidia-smi). Ratio = "
        "predicted / published; within 15% passes, and every row outside says why.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * 3 + ["---"] + ["---:"] * 3 + ["---"] * 2) + "|",
    ]
    for r in t.itertuples(index=False):
        predicted = r.pred_alloc_gib if r.basis == "allocated" else r.pred_total_gib
        check = {"yes": "yes", "no": "**no**"}.get(r.time_check, r.time_check)
        cells = [
            r.run,
            f"{r.figure} [{r.basis}] ({r.seq})",
            _fmt(predicted),
            _fmt(r.published_gib),
            _fmt(r.mem_ratio),
            _fmt(bool(r.mem_within_15)),
            _fmt(r.pred_tok_s, 0),
            _fmt(r.published_tok_s, 0),
            _fmt(r.time_ratio),
            check,
            r.why,
        ]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    lines += ["", "Sources:"]
    by_source: dict[Source, list[str]] = {}
    for run in RUNS:
        by_source.setdefault(run.source, []).append(run.name)
    for source, names in by_source.items():
        lines.append(f"- {', '.join(names)}: {source.cite()}")
    lines += ["", "What the figures are:"]
    lines += [f"- {text}." for text in MEASURES.values()]
    lines += [
        "- PEFT rows: reserved average predicted at 210 tokens (4,198,051 tokens / 20,000 "
        "samples), 99th percentile and max at the 768-token cap; the L40S (362 bf16 TFLOPS) "
        'uses the calibration\'s "*" entries, so its tokens/s are an out-of-sample check.',
        "- fms rows: packed 4096-token sequences, gradient checkpointing, bf16 weights; QLoRA "
        "under bf16 autocast with double quantization; their tokens/s are the A100 "
        "calibration's own source (conf/calibration.yaml).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    print(section(), end="")


if __name__ == "__main__":
    main()
