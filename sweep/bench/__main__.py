"""`make bench`: the harness measured against what users would write instead, side by side.

    make bench                                   # everything at the default sweep's settings
    make bench ARGS="--steps 8 train.steps=10"   # a quick look (short trials, short sweep)
    python -m sweep.bench --only throughput,eval
    python -m sweep.bench --only sft --steps 12 --repeats 2   # the harness vs TRL's SFTTrainer

Six comparisons, run one after another on this machine, each printed as a ratio and written
to reports/bench/harness.md (and harness.json):
1. throughput: a harness trial's training tokens/s against a bare PyTorch + PEFT loop doing the
   same work (sweep/bench/bare_loop.py), for full FT, LoRA r=16 and QLoRA r=16. Target >= 0.97.
2. sweep: wall time of the sweep's grid (`python -m sweep run`, tracking and report included)
   against the same grid as `Trainer.hyperparameter_search(backend="optuna")` with `model_init`
   (sweep/bench/peer.py). Target <= 1.0x.
3. overhead: per-trial fixed overhead (process start, imports, model load, data, evaluation
   set-up, saving) as a share of trial wall time, from the sweep run of (2). Target <= 5% on CPU.
4. eval: the batched evaluator's generated tokens/s against one-by-one greedy generation on the
   same prompts, with identical answers (sweep/bench/eval_speed.py).
5. sft: a harness trial's training tokens/s and peak memory against TRL's SFTTrainer with its
   defaults on the same model, examples, steps and optimizer (sweep/bench/sft_peer.py), for the
   same three approaches. Target >= 1.1.
6. packing: training tokens/s of a harness trial with train.packing=true against =false on
   mixed-length data (SmolLM2, LoRA r=16; sweep/bench/packing.py). Target >= 1.3.
Hydra overrides (e.g. model=..., train.steps=...) apply to every part; --steps sets the
throughput and SFT trials' length. The parts are a registry (sweep/bench/parts.py); the
measurements live in sweep/bench/paired.py (1, 5 and the per-step cost),
sweep/bench/sweep_time.py (2, 3) and sweep/bench/packing.py (6).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sweep.bench.parts import OUT, PARTS, Settings, keep_previous, ratio_rows, write
from sweep.results import record
from sweep.settings.compose import ConfigError, compose


def _positive(text: str) -> int:
    """argparse type: an integer >= 1, else one clear line."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed; expected an integer >= 1")
    return int(text)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m sweep.bench", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--steps",
        type=_positive,
        default=16,
        help="throughput and SFT trials' steps (default 16)",
    )
    ap.add_argument(
        "--repeats",
        type=_positive,
        default=4,
        help="throughput and SFT rounds (a run per side each, alternating order; default 4)",
    )
    ap.add_argument(
        "--cost-steps",
        type=_positive,
        default=200,
        help="steps of the per-step cost runs on the tiny model (default 200)",
    )
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    ap.add_argument(
        "--sweep-rounds",
        type=_positive,
        default=2,
        help="sweep runs per side, ABBA order (default 2)",
    )
    ap.add_argument("--out", default=str(OUT), help=f"where harness.md/json go (default {OUT})")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every part")
    a = ap.parse_args(argv)
    parts = set(a.only.split(","))
    if not parts <= set(PARTS):
        ap.error(
            f"--only: unknown part(s) {sorted(parts - set(PARTS))}; allowed: {', '.join(PARTS)}"
        )
    cfg = compose(a.overrides)  # bad overrides fail here, before anything runs
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "overrides": a.overrides,
        "environment": record.environment(cfg.report.gpus),
        "ratios": [],
    }
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp:
        settings = Settings(
            a.overrides, cfg, Path(tmp), a.steps, a.repeats, a.cost_steps, a.sweep_rounds
        )
        for part in PARTS.values():
            if part.name in parts:
                results.update(part.run(settings))
    keep_previous(results, parts, Path(a.out) / "harness.json")
    results["ratios"] = ratio_rows(results)
    path = write(results, Path(a.out))
    print("\n".join(f"[bench] {n}: {v}  (target {t})" for n, v, t in results["ratios"]), flush=True)
    print(f"[bench] written {path}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except ConfigError as exc:  # a bad override: one line, before anything runs
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
