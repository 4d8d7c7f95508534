"""A sweep's points: each approach crossed with its own grid axes, repeated per seed.

    python -c "from sweep.settings.compose import compose; from sweep.study.points import grid_points; print(grid_points(compose([]).sweep.grid))"

`sweep.grid` maps an approach (full, lora, qlora) to its axes: a list is a grid axis, a
{low, high, log} mapping a search range. A point's `label` names every axis that varies but the
seed (the report groups repeats by it); its `name` adds the seed (Optuna's `point` parameter,
its trial folder). Overrides merge sweep-wide first, then the user's, then the point's.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any

import optuna

from sweep.launch.memory import WorkerMemory
from sweep.settings.compose import ConfigError
from sweep.settings.schema import Config


@dataclass
class Point:
    label: str  # the approach, every varying axis but the seed: 'lora r=16' (reports group by it)
    overrides: list[str]  # ['method=lora', 'method.r=16']
    search: dict[str, dict[str, Any]] = field(default_factory=dict)  # {'method.lr': {low, high}}
    seed: int | None = None  # a repeat's train.seed (sweep.seeds or a train.seed axis)

    @property
    def name(self) -> str:
        """The point's own name (Optuna's `point` parameter, its trial folder): 'lora r=16 seed=1'."""
        return self.label if self.seed is None else f"{self.label} seed={self.seed}"


def is_dist(value: Any) -> bool:
    return isinstance(value, dict) and {"low", "high"} <= set(value)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'method': {'r': [4, 16]}} -> {'method.r': [4, 16]}; leaves are lists or dists."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and not is_dist(value):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def grid_points(
    grid: dict[str, Any], seeds: list[int] | None = None, data_seed: int | None = None
) -> list[Point]:
    """Expand {approach: {axes}} into points; each approach crosses only its own axes.

    A list is a grid axis; a {low, high, log} mapping is a search range for that approach's trials.
    `seeds` (sweep.seeds) repeats every point once per train.seed: 'lora r=16 seed=1'. With
    `data_seed` (sweep.seed_data: the dataset's own seed) seed s also draws its own data sample,
    dataset.seed = data_seed + s; every approach of seed s still sees the same examples.
    """
    points = []
    for approach, axes in grid.items():
        leaves = flatten(axes or {})
        search = {k: v for k, v in leaves.items() if is_dist(v)}
        flat = {k: v if isinstance(v, list) else [v] for k, v in leaves.items() if k not in search}
        keys = sorted(flat)
        for combo in itertools.product(*(flat[k] for k in keys)):
            axes = dict(zip(keys, combo, strict=True))
            parts = [
                f"{k.rsplit('.', 1)[-1]}={_fmt(v)}" for k, v in axes.items() if k != "train.seed"
            ]
            overrides = [f"{k}={v}" for k, v in axes.items()]
            points.append(
                Point(
                    " ".join([approach, *parts]),
                    [f"method={approach}", *overrides],
                    search,
                    axes.get("train.seed"),
                )
            )
    if seeds:
        if any("train.seed" in o.split("=", 1)[0] for p in points for o in p.overrides):
            raise ConfigError("sweep.seeds and a train.seed grid axis: use one of them")
        points = [
            Point(
                p.label,
                [*p.overrides, f"train.seed={s}"]
                + ([f"dataset.seed={data_seed + s}"] if data_seed is not None else []),
                p.search,
                s,
            )
            for p in points
            for s in seeds
        ]
    names = [p.name for p in points]
    dupes = {x for x in names if names.count(x) > 1}
    if dupes:
        raise ConfigError(f"sweep.grid: points {sorted(dupes)} appear twice")
    if not points:
        raise ConfigError("sweep.grid: no points; give at least one approach (full, lora, qlora)")
    return points


def merge_overrides(*groups: list[str]) -> list[str]:
    """Concatenate override lists; a later override of the same key replaces an earlier one."""
    merged: dict[str, str] = {}
    for group in groups:
        for o in group:
            merged[o.split("=", 1)[0].lstrip("+~")] = o
    return list(merged.values())


def trial_overrides(cfg: Config, user: list[str], extra: list[str]) -> list[str]:
    """Sweep-wide overrides first, then the user's, then the point's (and sampled values)."""
    return merge_overrides(list(cfg.sweep.overrides), user, extra)


def slug(text: str) -> str:
    return re.sub(r"[^\w.-]+", "_", text).strip("_")


# ---------------------------------------------------------------- the points in Optuna

# Outcomes a re-run would only repeat; a trial that crashed or was killed is run again instead.
FINAL_FAILURES = ("oom",)


def is_final(t: optuna.trial.FrozenTrial, memory: WorkerMemory | None = None) -> bool:
    """Finished for good: complete, pruned (or diverged), or failed with a deterministic cause;
    for a worker with `memory`, not a memory-bound outcome judged against less (it runs it)."""
    state = t.state
    if t.user_attrs.get("duplicate"):
        return False
    if memory and memory.reopens(t.user_attrs.get("status"), t.user_attrs.get("memory_limit_gib")):
        return False
    if state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED):
        return True
    return state == optuna.trial.TrialState.FAIL and t.user_attrs.get("status") in FINAL_FAILURES


class PointSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler over the sweep's points, without its `after_trial`. That hook stops
    the study once no point is left unvisited, which left queued retries WAITING for ever, and
    it looks up a `grid_id` a queued retry does not carry (KeyError 'grid_id' when exactly one
    point was left). The sweep counts its own trials (`run_grid`), so nothing is lost."""

    def after_trial(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        state: optuna.trial.TrialState,
        values: Any,
    ) -> None:
        return None
