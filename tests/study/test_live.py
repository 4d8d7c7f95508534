"""Live MLflow runs: created when the trial starts, streaming its steps, closed at its end, and
closed KILLED when the sweep that ran it died.

python -m pytest -q tests/study/test_live.py
"""

from __future__ import annotations

import subprocess
import sys

from sweep.results import tracking
from sweep.results.record import run_info, save
from sweep.settings import metrics
from sweep.settings.compose import compose
from sweep.study import live
from sweep.trial import stream
from sweep.trial.run import run_trial
from tests.conftest import tiny


def _history(c, rid: str, key: str) -> list[float]:
    return [m.value for m in c.get_metric_history(rid, key)]


def test_a_trial_streams_its_steps_into_the_run_the_sweep_created(tmp_path):
    cfg = compose(tiny("method=lora", "eval.every=4"))  # 8 steps, an eval loss every 4
    parent = tracking.parent_run("live", {}, [])
    rid = live.start_run(parent, "0000-lora", run_info(cfg))
    c = tracking.client()
    run = c.get_run(rid)
    assert run.info.status == "RUNNING"  # visible in the UI before the trial trains
    tags = run.data.tags
    assert (tags["method"], tags["rank"], tags["optimizer"]) == ("lora", "16", "adamw_torch_fused")
    assert run.data.params["method"] == "lora"
    assert tags["device"] in ("cpu", "cuda") and tags["device_name"]  # searchable from the start

    result = run_trial(cfg, tmp_path / "0000-lora", live_run=rid)
    assert result.status == "ok", result.train.get("error")
    assert c.get_run(rid).info.status == "RUNNING"  # the sweep closes it, with the record
    steps = [m.step for m in c.get_metric_history(rid, "learning_rate")]
    assert steps == list(range(1, 9))
    for key in ("train_loss", "grad_norm", "step_s", "step_tokens_per_s", "memory_gib"):
        assert len(_history(c, rid, key)) == 8, key
        assert key in metrics.STEP_METRICS  # the names have one owner
    assert _history(c, rid, "train_loss") == result.train["loss_curve"]
    assert [m.step for m in c.get_metric_history(rid, "periodic_eval_loss")] == [4, 8]

    assert tracking.log_trial(parent, result, tmp_path / "0000-lora") == rid  # the same run
    done = c.get_run(rid)
    assert done.info.status == "FINISHED"
    assert done.data.metrics["accuracy"] == result.metrics["accuracy"]
    assert len(_history(c, rid, "train_loss")) == 8  # the curve is not logged twice
    assert done.data.tags["device"] == result.meta["device"]
    assert done.data.tags["device_class"] == (result.meta["device_class"] or "-")  # "-": CPU


def test_the_stream_drains_while_the_trial_evaluates_and_close_waits_for_it():
    # The logging thread polls its queue once a second, so the flush starts at the end of
    # training (in the background, beside the evaluation) instead of at the trial's end.
    cfg = compose(tiny("method=lora"))
    parent = tracking.parent_run("drain", {}, [])
    c = tracking.client()
    for ends in (True, False):  # training ended, or stopped by an error: close() flushes
        rid = live.start_run(parent, f"000{int(ends)}-lora", run_info(cfg))
        streams = stream.LiveMetrics(rid)
        streams.log({"train_loss": 1.5}, 1)
        if ends:
            streams.on_train_end(None, None, None)
            streams._flush.join(timeout=30)
            assert _history(c, rid, "train_loss") == [1.5]  # drained before close()
        streams.close()
        assert _history(c, rid, "train_loss") == [1.5]


def test_a_dead_workers_run_is_closed_killed_when_the_sweep_resumes(tmp_path):
    cfg = compose(tiny("method=full"))
    parent = tracking.parent_run("orphans", {}, [])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    c = tracking.client()
    orphan = live.start_run(parent, "0000-full", run_info(cfg))
    c.set_tag(orphan, "worker.pid", str(dead.pid))  # its worker is gone
    recorded = live.start_run(parent, "0001-full", run_info(cfg))
    c.set_tag(recorded, "worker.pid", str(dead.pid))
    (tmp_path / "0001-full").mkdir()
    save(run_trial_record(cfg), tmp_path / "0001-full" / "result.json")  # sync logs this one
    alive = live.start_run(parent, "0002-full", run_info(cfg))  # this process: alive

    assert live.close_orphans(parent, tmp_path) == 1
    assert c.get_run(orphan).info.status == "KILLED"
    assert c.get_run(recorded).info.status == "RUNNING"
    assert c.get_run(alive).info.status == "RUNNING"


def run_trial_record(cfg):
    from sweep.results.record import failed

    return failed(run_info(cfg), "failed", "boom")
