"""The training budget as users set it: steps or epochs, micro-batch and gradient accumulation.

    python -m sweep trial dataset=file dataset.path=data/my.jsonl train.epochs=3 train.grad_accum=4

One optimizer step sees `effective_batch` examples (train.batch_size per forward/backward, times
train.grad_accum); memory follows the micro-batch, the update follows the effective batch.
`train.epochs > 0` sets the steps from the train split's size; every record says how many
examples and tokens the split held and how many epochs the trial covered.
"""

from __future__ import annotations

import math
from typing import Any

from sweep.settings.schema import TrainConfig


def effective_batch(t: TrainConfig) -> int:
    """Examples per optimizer step."""
    return t.batch_size * t.grad_accum


def examples_needed(t: TrainConfig) -> int:
    """Examples train.steps consume (what a generated task, e.g. reasoning-gym, must hold)."""
    return t.steps * effective_batch(t)


def resolve_steps(t: TrainConfig, n_examples: int) -> int:
    """train.steps, or with train.epochs the steps that cover the split that many times."""
    if not t.epochs:
        return t.steps
    return max(1, math.ceil(t.epochs * n_examples / effective_batch(t)))


def metrics(t: TrainConfig, rows: list[dict[str, Any]]) -> dict[str, float]:
    """Record metrics of the budget: the effective batch, the split's size in examples and
    tokens, and the epochs the steps cover (the Trainer cycles through the split)."""
    n = len(rows)
    return {
        "effective_batch": effective_batch(t),
        "train_examples": n,
        "dataset_tokens": sum(len(r["input_ids"]) for r in rows),
        "epochs_covered": t.steps * effective_batch(t) / n if n else math.nan,
    }
