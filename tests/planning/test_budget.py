"""The training budget: epochs, gradient accumulation, and the split's size in every record.

python -m pytest -q tests/planning/test_budget.py
"""

from __future__ import annotations

import json
import math

import pytest

from sweep.planning import budget
from sweep.settings.compose import ConfigError, compose
from sweep.trial.run import run_trial
from tests.conftest import tiny


def test_steps_from_epochs_and_the_effective_batch():
    t = compose(["train.batch_size=4", "train.grad_accum=3"]).train
    assert budget.effective_batch(t) == 12
    assert budget.examples_needed(t) == 60 * 12  # what a generated task must hold
    assert budget.resolve_steps(t, 100) == 60  # no epochs: train.steps
    t.epochs = 2.5
    assert budget.resolve_steps(t, 100) == math.ceil(2.5 * 100 / 12) == 21


def test_epochs_need_a_fixed_size_dataset_and_accumulation_is_at_least_one():
    with pytest.raises(ConfigError, match="train.epochs=1.0 is not allowed; expected 0 for a"):
        compose(["train.epochs=1"])  # reasoning-gym: generated, no fixed size
    with pytest.raises(ConfigError, match="train.grad_accum=0 is not allowed"):
        compose(["train.grad_accum=0"])


def test_a_trial_by_epochs_with_accumulation_records_its_budget(tmp_path):
    rows = tmp_path / "sums.jsonl"
    lines = [{"prompt": f"{a} + {b} =", "answer": str(a + b)} for a in range(9) for b in range(4)]
    rows.write_text("".join(json.dumps(r) + "\n" for r in lines))  # 36 rows
    cfg = compose(
        tiny(
            "method=lora",
            "dataset=file",
            f"dataset.path={rows}",
            "eval.size=6",
            "train.batch_size=2",
            "train.grad_accum=3",
            "train.epochs=1",
        )
    )
    m = run_trial(cfg, tmp_path / "t").metrics
    assert m["train_examples"] == 30  # 36 rows, 6 held out for eval
    assert m["effective_batch"] == 6 and m["steps"] == 5  # ceil(1 x 30 / 6)
    assert m["epochs_covered"] == pytest.approx(1.0)
    assert m["dataset_tokens"] > m["train_examples"]
    assert m["tokens_seen"] == pytest.approx(m["dataset_tokens"], rel=0.35)  # one pass
