"""One owner for metric names: every name the code spells is in sweep.settings.metrics.METRICS.

python -m pytest -q tests/settings/test_metrics.py
"""

from __future__ import annotations

import ast
import difflib
from pathlib import Path

import pytest

from sweep.settings import metrics
from sweep.settings.compose import ConfigError, compose

SWEEP = Path(__file__).resolve().parents[2] / "sweep"
# String literals near a metric name that are something else (a phase, a param, a column).
NOT_METRICS = {
    "base_eval",  # the phase whose time is base_eval_s
    "trials_wall_s",  # the bench's sum of trial_wall_s
}


def literals() -> dict[str, list[str]]:
    """Every snake_case string literal in sweep/, with where it appears."""
    found: dict[str, list[str]] = {}
    for path in SWEEP.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                v = node.value
                if v.isidentifier() and v.islower() and "_" in v:
                    found.setdefault(v, []).append(f"{path.name}:{node.lineno}")
    return found


def test_no_near_miss_of_a_metric_name_in_the_code():
    names = [*metrics.METRICS, *metrics.STEP_METRICS]
    suspicious = {
        v: (difflib.get_close_matches(v, names, n=1, cutoff=0.9), where)
        for v, where in literals().items()
        if v not in names
        and v not in NOT_METRICS
        and difflib.get_close_matches(v, names, n=1, cutoff=0.9)
    }
    assert not suspicious, f"misspelled metric names? {suspicious}"


def test_a_misspelling_is_caught():
    with pytest.raises(KeyError, match="peak_memroy_gib"):
        metrics.check({"accuracy": 0.5, "peak_memroy_gib": 1.0})
    assert difflib.get_close_matches("peak_memroy_gib", list(metrics.METRICS), cutoff=0.9)


def test_directions_and_objectives_come_from_the_schema():
    assert metrics.OBJECTIVES["accuracy"] == "maximize"
    assert metrics.OBJECTIVES["peak_memory_gib"] == "minimize"
    for a, b in metrics.PARETO_PAIRS:
        assert metrics.HIGHER_IS_BETTER[a] and not metrics.HIGHER_IS_BETTER[b]
    with pytest.raises(ConfigError, match="sweep.objectives='base_accuracy' is not allowed"):
        compose(["sweep.objectives=[base_accuracy]"])
