"""A trial that survives preemption: checkpoints during training, resume from the latest, and a
graceful SIGTERM.

    python -m sweep trial train.save_every=20      # a checkpoint every 20 steps (and at SIGTERM)

Checkpoints are the Trainer's own (trainable weights, optimizer, scheduler, RNG states and the
data position, under <trial dir>/trainer/checkpoint-<step>/), the latest kept only. Beside the
Trainer's files each holds the measuring callback's statistics up to that step (`stats.json`),
so a resumed trial's train time counts every step once, and a manifest of the files' sizes,
written last: a checkpoint without one, or with a file of another size, is damaged and the
trial starts from step 0 with one line saying so. `progress.json` in the trial dir holds the
last step done and its time, for the work a kill lost after the last checkpoint.
SIGTERM (what SLURM and Kubernetes send before they kill) asks for a checkpoint at the end of
the current step; training then stops and the trial ends `preempted`.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from sweep.results.record import write_whole
from sweep.trial import ranks

MANIFEST = "sweep_manifest.json"
STATS = "stats.json"
PROGRESS = "progress.json"
_TERM = {"requested": False}


def install_term_handler() -> None:
    """In a trial process: SIGTERM asks for a checkpoint and a stop at the end of this step."""

    def handler(signum: int, frame: Any) -> None:
        _TERM["requested"] = True

    signal.signal(signal.SIGTERM, handler)


def term_requested() -> bool:
    return _TERM["requested"]


def latest(trainer_dir: Path) -> Path | None:
    """The newest whole checkpoint under trainer_dir, else None; a damaged one (a file missing
    or of another size than its manifest says) is said in one line and removed."""
    for path in _newest_first(trainer_dir):
        problem = _damage(path)
        if problem is None:
            return path
        print(f"[trial] checkpoint {path} is damaged ({problem}); training starts from step 0",
              flush=True)  # fmt: skip
        shutil.rmtree(path, ignore_errors=True)
    return None


def exists(trainer_dir: Path) -> bool:
    """Some checkpoint is there to resume (the trial itself checks it is whole)."""
    return any(_newest_first(trainer_dir))


def _newest_first(trainer_dir: Path) -> list[Path]:
    return sorted(trainer_dir.glob("checkpoint-*"), key=_step, reverse=True)


def _step(path: Path) -> int:
    try:
        return int(path.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def _damage(path: Path) -> str | None:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return "no manifest: its saving did not finish"
    for name, size in manifest["files"].items():
        f = path / name
        if not f.is_file():
            return f"{name} missing"
        if f.stat().st_size != size:
            return f"{name} is {f.stat().st_size} bytes, {size} when saved"
    return None


def stats_of(checkpoint: Path) -> dict[str, Any]:
    """The measuring callback's statistics as they stood at the checkpoint."""
    return json.loads((checkpoint / STATS).read_text())


def lost_work(trial_dir: Path, resumed_step: int) -> tuple[int, float]:
    """(steps, seconds) the last run did after its last checkpoint, now done again."""
    try:
        progress = json.loads((trial_dir / PROGRESS).read_text())
    except (OSError, ValueError):
        return 0, 0.0
    lost = progress["step"] - resumed_step
    return (
        (lost, progress["train_s"] - progress.get("at_checkpoint_s", 0.0)) if lost > 0 else (0, 0.0)
    )


def remove(trainer_dir: Path) -> None:
    """A finished trial's checkpoints (train.keep_checkpoints=false)."""
    for path in trainer_dir.glob("checkpoint-*"):
        shutil.rmtree(path, ignore_errors=True)


class CheckpointCallback(TrainerCallback):
    """Asks the Trainer to save every `every` steps, every `every_s` seconds and at SIGTERM (then
    stops); after each save writes the statistics and the manifest, and times the save."""

    def __init__(self, every: int, every_s: float, stats: Any, trial_dir: Path) -> None:
        self.every, self.every_s, self.stats, self.trial_dir = every, every_s, stats, trial_dir
        self.saves, self.save_s, self.bytes, self.preempted = 0, 0.0, 0, False
        self._last = time.monotonic()
        self._asked = 0.0
        self._at_checkpoint_s = 0.0

    def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
        self._last = time.monotonic()

    def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
        due = self.every and state.global_step % self.every == 0
        due = due or (self.every_s and time.monotonic() - self._last >= self.every_s)
        if ranks.any_rank(term_requested()) if ranks.world() > 1 else term_requested():
            self.preempted = True
            control.should_training_stop = True
            due = True
        if due and state.global_step < state.max_steps or self.preempted:
            control.should_save = True
            self._asked = time.perf_counter()
        write_whole(self.trial_dir / PROGRESS, lambda tmp: tmp.write_text(json.dumps({
            "step": state.global_step, "train_s": self.stats.total_s(),
            "at_checkpoint_s": self._at_checkpoint_s})))  # fmt: skip

    def on_save(self, args, state, control, **kw):  # noqa: ANN001
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        (path / STATS).write_text(json.dumps(asdict(self.stats)))
        files = {str(f.relative_to(path)): f.stat().st_size for f in path.rglob("*") if f.is_file()}
        write_whole(path / MANIFEST, lambda tmp: tmp.write_text(json.dumps({"files": files})))
        self.saves += 1
        self.save_s += time.perf_counter() - self._asked if self._asked else 0.0
        self.bytes = sum(files.values())
        self._asked = 0.0
        self._last = time.monotonic()
        self._at_checkpoint_s = self.stats.total_s()

    def metrics(self, resumed_from: int, lost: tuple[int, float]) -> dict[str, Any]:
        return {
            "checkpoints": self.saves,
            "checkpoint_s": self.save_s,
            "checkpoint_bytes": self.bytes,
            "resumed_from_step": resumed_from,
            "lost_steps": lost[0],
            "lost_s": lost[1],
        }
