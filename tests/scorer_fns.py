"""User scorers for tests/trial/test_scorers.py, named by dotted path (dataset.scorer=tests.scorer_fns:...)."""

from __future__ import annotations


def half_credit(generated: str, expected: str) -> float:
    """1 for the expected answer anywhere in the text, 0.5 for its digits reversed, else 0."""
    if expected in generated:
        return 1.0
    return 0.5 if expected[::-1] in generated else 0.0


def too_generous(generated: str, expected: str) -> float:
    return 2.0


NOT_A_FUNCTION = 3
