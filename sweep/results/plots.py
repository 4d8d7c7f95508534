"""The report's Pareto plots: accuracy (95% interval) against peak memory and against train time.

    python -m sweep report default       # writes reports/default/accuracy_vs_*.png

Labels are placed by adjustText so that none overlaps another or a point; the legend names only
what the plot draws (the front's line only where the front has two points or more).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from sweep.results.record import write_whole
from sweep.settings.metrics import PARETO_PAIRS

LEGEND = ("on the Pareto front", "dominated", "Pareto front", "untuned base")
AXES = (  # (accuracy, resource), the table's Pareto flag, the x-axis label
    (PARETO_PAIRS[0], "pareto_memory", "peak memory (GiB)"),
    (PARETO_PAIRS[1], "pareto_time", "train time (s)"),
)


def draw(table: pd.DataFrame, base_acc: float | None, pair: tuple[str, str], flag: str,
         xlabel: str) -> Any:  # fmt: skip
    """One figure: every approach with its interval, the Pareto front, the untuned base."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from adjustText import adjust_text
    from matplotlib.lines import Line2D

    y, x = pair
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    texts, handles = [], {}
    for _, row in table.iterrows():
        lo, hi = row.get("acc_lo", math.nan), row.get("acc_hi", math.nan)
        err = None if math.isnan(lo) else [[(row[y] - lo) * 100], [(hi - row[y]) * 100]]
        on_front = bool(row[flag])
        style = {"fmt": "o", "color": "tab:blue"} if on_front else {"fmt": "x", "color": "tab:gray"}
        ax.errorbar(row[x], row[y] * 100, yerr=err, markersize=7, capsize=3, **style)
        name = "on the Pareto front" if on_front else "dominated"
        handles[name] = Line2D([], [], ls="", marker=style["fmt"], color=style["color"])
        texts.append(ax.text(row[x], row[y] * 100, row["label"], fontsize=8))
    front = table[table[flag]].sort_values(x)
    if len(front) > 1:
        ax.plot(front[x], front[y] * 100, color="tab:blue", lw=1, alpha=0.6)
        handles["Pareto front"] = Line2D([], [], color="tab:blue", lw=1, alpha=0.6)
    if base_acc is not None and not math.isnan(base_acc):
        ax.axhline(base_acc * 100, color="tab:red", ls="--", lw=1)
        handles["untuned base"] = Line2D([], [], color="tab:red", ls="--", lw=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"accuracy (95% CI) vs {xlabel.split(' (')[0]}")
    order = [k for k in LEGEND if k in handles]
    ax.legend([handles[k] for k in order], order, fontsize=8)
    fig.tight_layout()
    adjust_text(texts, x=list(table[x]), y=list(table[y] * 100), ax=ax,
                arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.5})  # fmt: skip
    return fig


def plots(table: pd.DataFrame, base_acc: float | None, out_dir: Path) -> list[Path]:
    """Accuracy versus peak memory and versus train time, Pareto front marked."""
    import matplotlib.pyplot as plt

    paths = []
    for pair, flag, xlabel in AXES:
        fig = draw(table, base_acc, pair, flag, xlabel)
        path = out_dir / f"accuracy_vs_{pair[1]}.png"
        write_file(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png"))
        plt.close(fig)
        paths.append(path)
    return paths


def write_file(path: Path, write: Callable[[Path], object]) -> None:
    """Two workers finishing on one host at once each leave a whole report file; the temporary
    file sits outside the report folder, which the other may be uploading to MLflow."""
    write_whole(path, write, tmp_dir=path.parent.parent)
