"""What every part of `make bench` shares: its settings, a ratio row, and how numbers are shown.

python -c "from sweep.bench.part_kit import with_interval; print(with_interval(0.95, [0.9, 1.0], 0.97))"
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweep.bench.paired import core_halves, ratio_interval, verdict
from sweep.settings.schema import Config

Ratio = tuple[str, str, str]  # (comparison, ratio, target): one row of harness.md's first table


Ratio = tuple[str, str, str]  # (comparison, ratio, target): one row of harness.md's first table


@dataclass(frozen=True)
class Settings:
    """What a part runs with: the user's Hydra overrides (and their composed config), a scratch
    folder, and the command line's counts (see `python -m sweep.bench --help`)."""

    overrides: list[str]
    cfg: Config
    work: Path
    steps: int
    repeats: int
    cost_steps: int
    sweep_rounds: int


def md_table(rows: list[dict[str, Any]]) -> str:
    import pandas as pd

    return pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3g")


def with_interval(value: float, ratios: list[float], target: float, at_least: bool = True) -> str:
    """A paired ratio as the table gives it: its value, the 95% interval of the rounds' mean
    ratio, and whether that interval clears the target (paired.verdict)."""
    lo, hi = ratio_interval(ratios)
    if math.isnan(lo):
        return f"{value:.3f}"
    v = verdict((lo, hi), target, at_least)
    return f"{value:.3f} (95% interval {lo:.2f}-{hi:.2f} over {len(ratios)} rounds: {v})"


def floats(rounds: str | None) -> list[float]:
    """A table's "round ratios" cell ("1.01 0.98 ...") as numbers."""
    return [float(x) for x in (rounds or "").split()]


def pairing() -> str:
    """How paired.py's rounds ran on this machine, in words."""
    halves = core_halves()
    return (
        f"both sides at once, on cores {halves[0]} and {halves[1]} (swapped every round)"
        if halves
        else "one side after the other, the order alternating"
    )
