"""make bench-plan: the planner against the measured ledger, published runs, and this machine.

    make bench-plan                         # tiny model and SmolLM2-135M, two sequence lengths
    python -m sweep.bench.memory model=tiny_llama [--no-time]
    python -m sweep.bench.memory --time-only  # redo section 4 alone, the rest of plan.md kept

Four sections of reports/bench/plan.md:
1. the memory planner against the measured ledger, component by component (below);
2. the planner and time model against published runs (sweep/bench/published.py);
3. each memory saver off and on, ledger and planner (sweep/bench/savers.py; --no-savers);
4. the time model against measured step times here, across three model sizes
   (sweep/bench/step_time.py; --no-time leaves it out: it trains 64 short trials three times, ~30 min).

Runs a two-step trial per approach (full, LoRA r=4/16/64, QLoRA r=16) and sequence length, reads
the ledger (parameters, gradients, optimizer state, saved activations, measured on the first
step) and the planner's prediction for the same settings from the record, and prints the ratio
measured / predicted for each component (as the report does). Target: every component within 10%. Writes
reports/bench/plan.md.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pandas as pd

from sweep.bench import published, savers, step_time
from sweep.settings.compose import compose
from sweep.trial.run import run_trial

APPROACHES = (
    ["method=full"],
    ["method=lora", "method.r=4"],
    ["method=lora", "method.r=16"],
    ["method=lora", "method.r=64"],
    ["method=qlora", "method.r=16"],
)
COMPONENTS = {
    "params": "weights",
    "grads": "grads",
    "optimizer": "optimizer",
    "activations": "saved_activations",
}
GIB = 1024**3


def measure(model: str, seq_len: int, approach: list[str], out: Path) -> dict[str, object]:
    """One two-step trial; the predicted/measured ratio of each memory component."""
    # prompts padded to the same length so the batch really is seq_len wide
    overrides = [
        f"model={model}",
        *approach,
        "train.steps=2",
        "train.batch_size=4",
        f"train.max_seq_len={seq_len}",
        "train.measure_warmup_steps=1",
        "eval.size=1",
        "eval.base=false",
        "eval.max_new_tokens=1",
        "train.precision=fp32",
        "train.loss_logits=all",  # logits at every position, as the published tables assume
        "train.loss_impl=full",  # and the model's own loss (the savers have their section)
        f"dataset.task_args.chain_sum.min_terms={max(2, seq_len // 12)}",
        f"dataset.task_args.chain_sum.max_terms={max(2, seq_len // 12)}",
    ]
    result = run_trial(compose(overrides), out)
    m = result.metrics
    row: dict[str, object] = {
        "model": model,
        "seq": seq_len,
        "approach": result.run["label"],
        "status": result.status,
    }
    for name, plan_key in COMPONENTS.items():
        measured, predicted = m.get(f"ledger_{name}_bytes"), m.get(f"plan_{plan_key}_gib")
        row[f"{name} MiB"] = measured / 1024**2 if measured else None
        row[f"{name} ratio"] = measured / (predicted * GIB) if measured and predicted else None
    return row


OUT = Path("reports/bench/plan.md")


def time_section() -> tuple[str, bool]:
    """Section 4 and whether every point is within step_time.BAND."""
    import time

    with tempfile.TemporaryDirectory() as tmp:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        steps = step_time.check([], Path(tmp), saved=OUT.parent / step_time.SAVED)
    ok = bool((steps["measured / predicted"] - 1).abs().max() <= step_time.BAND)
    return step_time.section(steps, time.strftime("%Y-%m-%d %H:%M")), ok


def main(argv: list[str]) -> int:
    if "--time-only" in argv:
        kept = OUT.read_text().split(step_time.HEADING)[0] if OUT.is_file() else ""
        text, ok = time_section()
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(kept + text)
        print(text)
        return 0 if ok else 1
    models = [a.split("=", 1)[1] for a in argv if a.startswith("model=")] or [
        "tiny_llama",
        "smollm2_135m",
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            for seq in (64, 128):
                for i, approach in enumerate(APPROACHES):
                    print(f"[bench-plan] {model} seq {seq}: {' '.join(approach)}", flush=True)
                    rows.append(measure(model, seq, approach, Path(tmp, f"{model}-{seq}-{i}")))
    df = pd.DataFrame(rows)
    ratios = df[[c for c in df.columns if c.endswith("ratio")]]
    worst = float((ratios - 1).abs().max().max())
    text = (
        f"# Planner vs measured ledger (ratio: measured / predicted)\n\n{df.to_markdown(index=False, floatfmt='.3f')}\n\n"
        f"Worst component error: {worst:.1%} (target: within 10%).\n\n"
    )
    text += published.section() + "\n"
    if "--no-savers" not in argv:
        text += savers.section() + "\n"
    time_ok = True
    if "--no-time" not in argv:
        section, time_ok = time_section()
        text += section
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)  # one process writes it
    print(text)
    return 0 if worst <= 0.10 and time_ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
