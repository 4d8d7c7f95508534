"""The Pareto plots: labels that do not overlap, and a legend that names only what is drawn."""

import itertools

from sweep.results import headline, plots
from tests.results.test_report import GPUS, rec


def _table(records):
    return headline.headline(records, GPUS)


def _label_boxes(fig):
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    return [t.get_window_extent(renderer) for t in ax.texts]


def test_labels_of_points_drawn_on_top_of_each_other_do_not_overlap():
    records = [
        rec("full", "full", None, 0.60, 40.0, 100.0),
        rec("qlora r=16", "qlora", 16, 0.41, 2.07, 90.0, quant="nf4-4bit"),
        rec("lora r=64", "lora", 64, 0.412, 2.10, 91.0),  # the default report's clash
        rec("lora r=16", "lora", 16, 0.456, 1.98, 87.0),
    ]
    table = _table(records)
    for pair, flag, xlabel in plots.AXES:
        fig = plots.draw(table, 0.0, pair, flag, xlabel)
        fig.canvas.draw()
        boxes = _label_boxes(fig)
        assert len(boxes) == len(records)
        overlaps = [(a, b) for a, b in itertools.combinations(boxes, 2) if a.overlaps(b)]
        assert overlaps == [], xlabel


def test_the_legend_names_only_what_the_plot_draws():
    one_point_front = [  # full FT dominates every other approach: a front of one point
        rec("full", "full", None, 0.90, 1.0, 10.0),
        rec("lora r=16", "lora", 16, 0.10, 15.0, 62.0),
    ]
    fig = plots.draw(_table(one_point_front), None, *plots.AXES[0])
    names = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert names == ["on the Pareto front", "dominated"]  # no line, no untuned base
    two_point_front = [
        rec("full", "full", None, 0.90, 40.0, 10.0),
        rec("lora r=16", "lora", 16, 0.50, 15.0, 62.0),
    ]
    fig = plots.draw(_table(two_point_front), 0.05, *plots.AXES[0])
    names = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert names == ["on the Pareto front", "Pareto front", "untuned base"]
