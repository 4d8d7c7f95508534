"""MLflow tracking when several workers share one tracking store at the same moment."""

from __future__ import annotations

from pathlib import Path

from sweep import tracking
from sweep.record import TrialResult, save


def _logged(parent: str, label: str, tmp: Path) -> str:
    result = TrialResult(run={"label": label, "method": "lora"}, train={"status": "ok"})
    save(result, tmp / label / "result.json")
    return tracking.log_trial(parent, result, tmp / label)


def test_report_reads_only_trials_whose_logging_is_complete(tmp_path):
    parent = tracking.parent_run("exp", {}, [])
    _logged(parent, "full", tmp_path)
    c = tracking.client()
    # another worker's trial, caught between create_run and its record's upload
    c.create_run(
        c.get_run(parent).info.experiment_id,
        run_name="lora r=4",
        tags={"mlflow.parentRunId": parent},
    )
    assert [r["run"]["label"] for r in tracking.trial_records("exp")] == ["full"]
    _logged(parent, "lora r=16", tmp_path)
    assert [r["run"]["label"] for r in tracking.trial_records("exp")] == ["full", "lora r=16"]


def test_experiment_created_by_another_worker_meanwhile_is_joined(monkeypatch):
    c = tracking.client()
    real = c.get_experiment_by_name
    calls = []

    def racing(name):  # the other worker creates it just after this one looked
        calls.append(name)
        if len(calls) == 1:
            c.create_experiment(name)
            return None
        return real(name)

    monkeypatch.setattr(c, "get_experiment_by_name", racing)
    exp_id = tracking._experiment_id(c, "exp")
    assert exp_id == real("exp").experiment_id and len(calls) == 2
