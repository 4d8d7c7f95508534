"""Packed against padded training on mixed-length data: train.packing=true against false.

    python -m sweep.bench.packing                        # SmolLM2 LoRA r=16, 20 steps
    python -m sweep.bench.packing --steps 12 --repeats 2 model=tiny_llama

The default task (reasoning-gym chain_sum) has examples of nearly equal length, so padding costs
it little. Real fine-tuning data mixes short and long examples: here a JSONL file written by the
bench itself (no download), prompts and answers of 10..300 words (about a token each, plus the
chat template), spread evenly. Two harness trials on it (sweep.launch.launch.launch, each in its own
process as a sweep runs them), the same examples, batches and steps, one packing each batch's
examples into rows (train.packing=true: first-fit decreasing into rows of up to the batch's
longest example under sdpa) and one right-padding them; tokens/s counts the same non-padding
tokens on both sides. Target: packed / padded >= 1.3. Also `python -m sweep.bench --only
packing` (part 6 of reports/bench/harness.md).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from sweep.bench.paired import steady_rate
from sweep.launch.launch import launch
from sweep.settings.compose import compose
from sweep.study.points import merge_overrides

COMMON = (  # about one token each, with the space before them
    "the of and to in is it that for on with as was at by be this from or have an are not but "
    "all can one has will more time so some when what if out up no about into than them only "
    "new over also then its two first way use many these may any most our could water after"
)
WORDS = COMMON.split()

SETTINGS = [
    "model=smollm2_135m",
    "method=lora",
    "method.r=16",
    "train.batch_size=8",
    "train.max_seq_len=384",  # every example whole: no truncation on either side
    "train.warmup_steps=2",
    "eval.size=2",
    "eval.max_new_tokens=4",
    "eval.base=false",
    "eval.retention_size=0",
]


def mixed_dataset(path: Path, rows: int = 256, shortest: int = 10, longest: int = 300) -> Path:
    """A JSONL of `rows` prompt/answer pairs whose lengths (prompt + answer, in words) are spread
    evenly over shortest..longest, a quarter of each the answer; the same file for a seed-free
    run anywhere (random.Random(0))."""
    rng = random.Random(0)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(rows):
            n = shortest + (longest - shortest) * i // max(1, rows - 1)
            words = [rng.choice(WORDS) for _ in range(n)]
            cut = n - max(1, n // 4)
            prompt = f"Item {i}. Continue: " + " ".join(words[:cut])
            fh.write(json.dumps({"prompt": prompt, "answer": " ".join(words[cut:])}) + "\n")
    return path


def _trial(overrides: list[str], work: Path) -> dict[str, Any]:
    result = launch(compose(overrides), work, 0)
    if result.status != "ok":
        raise RuntimeError(f"{work.name} trial: {result.status} {result.train.get('error')}")
    return {
        **result.metrics,
        "packing": result.run.get("packing"),
        "ledger": result.train.get("ledger"),
    }


def packing_throughput(
    user: list[str] | None = None, steps: int = 20, repeats: int = 1, work: Path | None = None
) -> dict[str, Any]:
    """Harness trials with train.packing=true and =false on the same mixed-length data, `repeats`
    rounds (the order swapped every round); training tokens/s of each (the median over rounds)
    and packed / padded: the ratio of the medians, and the median of each round's ratio of steady
    rates (tokens/s at the median step time, sweep.bench.paired.steady_rate)."""
    own = work is None
    tmp = tempfile.TemporaryDirectory() if own else None
    root = Path(tmp.name) if tmp else Path(work)  # type: ignore[arg-type]
    try:
        root.mkdir(parents=True, exist_ok=True)
        data_file = mixed_dataset(root / "mixed.jsonl")
        base = merge_overrides(
            [*SETTINGS, "dataset=file", f"dataset.path={data_file}", f"train.steps={steps}"],
            list(user or []),
        )
        rates: dict[str, list[float]] = {"packed": [], "padded": []}
        steady: list[float] = []
        seen: dict[str, int] = {}
        shapes: dict[str, Any] = {}
        for i in range(repeats):
            sides = ["packed", "padded"] if i % 2 == 0 else ["padded", "packed"]
            round_: dict[str, dict[str, Any]] = {}
            for side in sides:
                print(f"[bench] packing round {i + 1}/{repeats}: {side}", flush=True)
                flag = "true" if side == "packed" else "false"
                m = _trial([*base, f"train.packing={flag}"], root / f"{side}-{i}")
                if m["packing"] is not (side == "packed"):
                    raise RuntimeError(f"{side} trial recorded packing={m['packing']}")
                round_[side] = m
                rates[side].append(m["train_tokens_per_s"])
                seen[side] = m["tokens_seen"]
                shapes[side] = (m["ledger"] or {}).get("batch_shape")
            steady.append(steady_rate(round_["packed"]) / steady_rate(round_["padded"]))
            print(f"[bench]   round ratio {steady[-1]:.3f}", flush=True)
        packed, padded = statistics.median(rates["packed"]), statistics.median(rates["padded"])
        return {
            "packed_tokens_per_s": packed,
            "padded_tokens_per_s": padded,
            "ratio": packed / padded,
            "steady_ratio": statistics.median(steady),
            "round_ratios": steady,
            "tokens_seen": seen,  # the same tokens on both sides: each counts non-padding ones
            "first_batch_shape": shapes,
            "steps": steps,
            "repeats": repeats,
            "overrides": base,
        }
    finally:
        if tmp is not None:
            tmp.cleanup()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m sweep.bench.packing", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--steps", type=int, default=20, help="steps per trial (default 20)")
    ap.add_argument("--repeats", type=int, default=1, help="rounds of the pair (default 1)")
    ap.add_argument(
        "--out", type=Path, default=None, help="keep the trials here (default: a temp dir)"
    )
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for both trials")
    args = ap.parse_args(argv)
    out = packing_throughput(args.overrides, args.steps, args.repeats, args.out)
    print(
        f"packed {out['packed_tokens_per_s']:.1f} tokens/s, padded {out['padded_tokens_per_s']:.1f} "
        f"tokens/s: packed / padded {out['ratio']:.3f} (steady {out['steady_ratio']:.3f}; "
        f"target >= 1.3)"
    )
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
