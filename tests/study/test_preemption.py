"""Long trials survive preemption: kill -9 or SIGTERM mid-trial, run the sweep again, and the
trial goes on from its checkpoint in the same folder and MLflow run.

    python -m pytest -q tests/study/test_preemption.py
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from sweep.results import tracking
from sweep.results.record import load
from sweep.study.study import run_sweep
from tests.conftest import REPO

TRIAL = ["model=tiny_llama", "train.steps=160", "train.batch_size=4", "train.max_seq_len=48",
         "train.save_every=20", "eval.size=4", "eval.max_new_tokens=4", "eval.base=false",
         "eval.retention_size=0"]  # fmt: skip


def _args(experiment: str) -> list[str]:
    return ["sweep=smoke", "~sweep.grid.qlora", "~sweep.grid.full", "sweep.grid.lora.method.r=[4]",
            f"sweep.overrides={json.dumps(TRIAL)}", f"experiment={experiment}"]  # fmt: skip


def _start(tmp_path: Path, experiment: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sweep", "run", *_args(experiment)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _step(trial_dir: Path) -> int:
    try:
        return json.loads((trial_dir / "progress.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return 0


def _trial_dir(tmp_path: Path, experiment: str, past_step: int, timeout: float = 240) -> Path:
    """The one trial's folder, once it has trained past `past_step`."""
    trials = tmp_path / "outputs" / experiment / "trials"
    end = time.time() + timeout
    while time.time() < end:
        dirs = sorted(trials.glob("*-lora_r_4")) if trials.exists() else []
        if dirs and _step(dirs[0]) > past_step:
            return dirs[0]
        time.sleep(0.1)
    raise AssertionError(f"the trial did not pass step {past_step}")


def _runs_of(experiment: str, trial_dir: Path) -> list:
    c = tracking.client()
    exp = c.get_experiment_by_name(experiment)
    return [r for r in c.search_runs([exp.experiment_id])
            if r.data.tags.get(tracking.TRIAL_TAG) == trial_dir.name]  # fmt: skip


@pytest.mark.slow
def test_kill_minus_9_mid_trial_then_rerun_resumes_to_the_uninterrupted_weights(tmp_path):
    assert run_sweep(_args("whole")) == 0
    whole = next((tmp_path / "outputs" / "whole" / "trials").glob("*-lora_r_4"))
    proc = _start(tmp_path, "cut")
    trial_dir = _trial_dir(tmp_path, "cut", 45)
    spawned = psutil.Process(proc.pid).children(recursive=True)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    psutil.wait_procs(spawned, timeout=10)
    killed_at = _step(trial_dir)
    assert not (trial_dir / "result.json").exists()
    assert run_sweep(_args("cut")) == 0
    result = load(trial_dir / "result.json")  # the same folder
    assert result.status == "ok"
    saved = result.metrics["resumed_from_step"]
    assert saved % 20 == 0 and 40 <= saved <= killed_at
    assert result.metrics["lost_steps"] == killed_at - saved
    assert result.metrics["steps"] == 160
    a, b = (
        load_file(whole / "adapter" / "adapter_model.safetensors"),
        load_file(trial_dir / "adapter" / "adapter_model.safetensors"),
    )
    for name, w in a.items():
        torch.testing.assert_close(b[name], w, rtol=1e-5, atol=1e-7)
    diff = max(float((b[n] - w).abs().max()) for n, w in a.items())
    print(f"[resume] killed at step {killed_at}, resumed from {saved}, lost {killed_at - saved} "
          f"steps; max |weight difference| against the uninterrupted run: {diff:.3g}")  # fmt: skip
    runs = _runs_of("cut", trial_dir)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # one run for the trial
    assert not list((trial_dir / "trainer").glob("checkpoint-*"))  # removed once ended


@pytest.mark.slow
def test_sigterm_checkpoints_closes_the_runs_killed_and_exits_143_then_resumes(tmp_path):
    proc = _start(tmp_path, "term")
    trial_dir = _trial_dir(tmp_path, "term", 30)
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    err = proc.stderr.read()
    assert code == 143, err[-2000:]
    assert "run the same command again to resume" in err
    preempted = load(trial_dir / "result.json")
    step = preempted.metrics["steps"]
    assert preempted.status == "preempted"
    assert (trial_dir / "trainer" / f"checkpoint-{step}").is_dir()
    c = tracking.client()
    exp = c.get_experiment_by_name("term")
    statuses = {r.data.tags.get(tracking.TRIAL_TAG, "parent"): r.info.status
                for r in c.search_runs([exp.experiment_id])}  # fmt: skip
    assert statuses == {trial_dir.name: "KILLED", "parent": "KILLED"}
    assert run_sweep(_args("term")) == 0
    result = load(trial_dir / "result.json")
    assert result.status == "ok" and result.metrics["resumed_from_step"] == step
    runs = _runs_of("term", trial_dir)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
