"""Kill a sweep mid-trial (kill -9 of the sweep process), run it again: nothing finished is lost."""

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from sweep.results import tracking
from sweep.results.record import load
from sweep.study.study import run_sweep
from tests.conftest import REPO

ARGS = [
    "sweep=smoke",
    "~sweep.grid.qlora",
    "sweep.grid.lora.method.r=[4]",
    'sweep.overrides=["model=tiny_llama","train.steps=300","train.batch_size=4","train.max_seq_len=48","eval.size=4","eval.max_new_tokens=4"]',
]


def _wait_for(predicate, timeout: float) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
@pytest.mark.parametrize("killed_in", [1, 2])
def test_kill_minus_9_then_rerun_finishes_every_point_once(tmp_path, killed_in):
    """Killed in trial 2: every point has started once. Killed in trial 1: one point has never
    started, so the retried trial finishes with one point unvisited (Optuna's GridSampler
    raised KeyError 'grid_id' there before PointSampler)."""
    trials = tmp_path / "outputs" / "smoke" / "trials"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweep", "run", *ARGS],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    # kill once trial `killed_in` is under way (the ones before it have a record)
    def started() -> bool:
        dirs = sorted(trials.iterdir()) if trials.exists() else []
        return len(dirs) == killed_in and (dirs[-1] / "config.json").exists()

    assert _wait_for(started, 180), f"sweep did not reach trial {killed_in}"
    time.sleep(0.5)
    spawned = psutil.Process(proc.pid).children(recursive=True)  # fork server, trial process
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _, alive = psutil.wait_procs(spawned, timeout=10)
    assert not alive, "the trial process outlived its killed sweep"
    killed = sorted(trials.iterdir())[-1]
    assert not (killed / "result.json").exists()

    assert run_sweep(ARGS) == 0
    records = [load(d / "result.json") for d in trials.iterdir() if (d / "result.json").exists()]
    ok = sorted(r.run["label"] for r in records if r.status == "ok")
    assert ok == ["full", "lora r=4"]  # same set as an uninterrupted sweep, each once
    c = tracking.client()
    exp = c.get_experiment_by_name("smoke")
    runs = c.search_runs([exp.experiment_id])
    # nothing left RUNNING: the killed attempt's live run is closed KILLED, the rest FINISHED
    assert sorted({r.info.status for r in runs}) == ["FINISHED", "KILLED"]
    assert sum(r.info.status == "KILLED" for r in runs) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    finished = [r.info.run_name for r in children if r.info.status == "FINISHED"]
    assert sorted(finished) == ["full", "lora r=4"]
    assert run_sweep(ARGS) == 0  # and a third run has nothing left to do
    again = [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get("mlflow.parentRunId")]
    assert len(again) == len(children) == 3  # the two trials and the killed attempt, no more
