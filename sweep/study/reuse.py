"""A point's earlier work on disk: a finished record to reuse, or an interrupted trial's
checkpoint to resume, so a re-run of a sweep never trains twice what it has.

    python -m sweep run sweep=default      # a re-run reuses and resumes what it finds
"""

from __future__ import annotations

import json
from pathlib import Path

from sweep.launch.memory import WorkerMemory
from sweep.results import record
from sweep.results.record import TrialResult
from sweep.settings.compose import config_hash, to_config
from sweep.settings.schema import Config
from sweep.study.points import slug
from sweep.trial import checkpoint

# A record on disk with one of these is a finished point: reused, never trained again (a
# memory-bound one only by a worker with no more memory: WorkerMemory.reopens).
REUSABLE = ("ok", "oom", "diverged", "pruned", "skipped_predicted_oom")


def finished_record(
    root: Path, label: str, cfg: Config, memory: WorkerMemory
) -> tuple[Path, TrialResult] | None:
    """A record this point already left on disk with a final outcome and the same config
    (its sweep was stopped after the trial ended, before Optuna heard of it): reused, so a
    finished point is never trained twice; a memory-bound one judged against less memory
    than this worker has is not finished here."""
    for trial_dir in sorted((root / "trials").glob(f"*-{slug(label)}"), reverse=True):
        if trial_dir.name.split("-", 1)[-1] != slug(label):
            continue
        try:
            result = record.load(trial_dir / "result.json")
        except (OSError, ValueError):
            continue
        if result.status not in REUSABLE or result.run.get("config_hash") != config_hash(cfg):
            continue
        if not memory.reopens(result.status, result.meta.get("memory_limit_gib")):
            return trial_dir, result
    return None


def resumable(root: Path, label: str, cfg: Config) -> Path | None:
    """The trial folder of this point an interrupted run left with a checkpoint and the same
    config: the trial goes on there from its checkpoint (sweep.trial.checkpoint)."""
    for trial_dir in sorted((root / "trials").glob(f"*-{slug(label)}"), reverse=True):
        if trial_dir.name.split("-", 1)[-1] != slug(label):
            continue
        if not checkpoint.exists(trial_dir / "trainer"):
            continue
        try:
            before = to_config(json.loads((trial_dir / "config.json").read_text()))
            if config_hash(before) != config_hash(cfg):  # what it trains: reports aside
                continue
            ended = trial_dir / "result.json"
            if ended.exists() and record.load(ended).status in REUSABLE:
                continue
        except (OSError, ValueError):  # ConfigError too: a config this version no longer takes
            continue
        return trial_dir
    return None
