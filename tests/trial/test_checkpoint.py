"""A trial that survives preemption: checkpoint, resume to the same weights, damaged files.

python -m pytest -q tests/trial/test_checkpoint.py
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from sweep.settings.compose import compose
from sweep.trial import checkpoint
from sweep.trial.run import run_trial
from tests.conftest import tiny

STEPS = 24


def _cfg(*extra: str):
    return compose(tiny(f"train.steps={STEPS}", "train.save_every=5", "eval.base=false",
                        "eval.retention_size=0", *extra))  # fmt: skip


def _weights(trial_dir) -> dict[str, torch.Tensor]:
    return load_file(trial_dir / "adapter" / "adapter_model.safetensors")


def _sigterm_at(monkeypatch, step: int) -> None:
    """SIGTERM as it reaches a trial, arriving during step `step`."""
    seen = {"n": 0}

    def requested() -> bool:
        seen["n"] += 1
        return seen["n"] >= step

    monkeypatch.setattr(checkpoint, "term_requested", requested)


def test_sigterm_checkpoints_and_a_rerun_ends_with_the_uninterrupted_weights(tmp_path, monkeypatch):
    whole = run_trial(_cfg(), tmp_path / "whole")
    assert whole.status == "ok" and whole.metrics["resumed_from_step"] == 0
    assert not list((tmp_path / "whole" / "trainer").glob("checkpoint-*"))  # removed at the end
    _sigterm_at(monkeypatch, 13)
    stopped = run_trial(_cfg(), tmp_path / "cut")
    assert stopped.status == "preempted" and "SIGTERM at step 13" in stopped.train["error"]
    assert (tmp_path / "cut" / "trainer" / "checkpoint-13").is_dir()
    assert stopped.metrics["checkpoint_bytes"] > 0 and stopped.metrics["checkpoints"] == 3
    monkeypatch.setattr(checkpoint, "term_requested", lambda: False)
    resumed = run_trial(_cfg(), tmp_path / "cut")
    assert resumed.status == "ok" and resumed.metrics["resumed_from_step"] == 13
    assert resumed.metrics["steps"] == STEPS and len(resumed.train["loss_curve"]) == STEPS
    assert resumed.train["loss_curve"] == pytest.approx(whole.train["loss_curve"], rel=1e-5)
    for name, w in _weights(tmp_path / "whole").items():
        torch.testing.assert_close(_weights(tmp_path / "cut")[name], w, rtol=1e-5, atol=1e-7)
    # train time counts each step once: the measured steps are those of one whole run
    assert resumed.metrics["s_per_step"] > 0
    assert len(resumed.train["step_clock"]) == len(whole.train["step_clock"])


def test_a_kill_after_the_checkpoint_is_lost_work_reported_apart(tmp_path):
    out = tmp_path / "t"
    (out / "trainer" / "checkpoint-10").mkdir(parents=True)
    (out / checkpoint.PROGRESS).write_text(
        json.dumps({"step": 14, "train_s": 7.0, "at_checkpoint_s": 5.0})
    )
    assert checkpoint.lost_work(out, 10) == (4, 2.0)
    assert checkpoint.lost_work(out, 14) == (0, 0.0)


def test_a_damaged_checkpoint_is_one_line_and_training_starts_from_zero(tmp_path, capsys):
    trainer = tmp_path / "trainer"
    good = trainer / "checkpoint-5"
    good.mkdir(parents=True)
    (good / "adapter_model.safetensors").write_bytes(b"x" * 100)
    (good / checkpoint.MANIFEST).write_text(
        json.dumps({"files": {"adapter_model.safetensors": 100}})
    )
    assert checkpoint.latest(trainer) == good
    (good / "adapter_model.safetensors").write_bytes(b"x" * 40)  # truncated
    assert checkpoint.latest(trainer) is None
    out = capsys.readouterr().out.strip().splitlines()
    assert (
        len(out) == 1
        and "is damaged (adapter_model.safetensors is 40 bytes, 100 when saved)" in out[0]
    )
    assert not good.exists()
    half = trainer / "checkpoint-9"
    half.mkdir()  # killed while saving: no manifest yet
    assert checkpoint.latest(trainer) is None
    assert "no manifest" in capsys.readouterr().out


def test_a_trial_with_a_damaged_checkpoint_trains_from_step_zero(tmp_path, monkeypatch, capsys):
    _sigterm_at(monkeypatch, 8)
    assert run_trial(_cfg(), tmp_path).status == "preempted"
    saved = tmp_path / "trainer" / "checkpoint-8" / "adapter_model.safetensors"
    saved.write_bytes(saved.read_bytes()[:100])
    monkeypatch.setattr(checkpoint, "term_requested", lambda: False)
    result = run_trial(_cfg(), tmp_path)
    assert result.status == "ok" and result.metrics["resumed_from_step"] == 0
    assert "checkpoint-8 is damaged" in capsys.readouterr().out
