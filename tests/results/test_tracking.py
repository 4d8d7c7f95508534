"""MLflow tracking when several workers share one tracking store at the same moment."""

from __future__ import annotations

from pathlib import Path

from sweep.results import tracking
from sweep.results.record import TrialResult, save


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


def test_per_item_results_round_trip_through_mlflow(tmp_path):
    """The report rebuilds its paired statistics from MLflow alone: the items come back whole."""
    from sweep.trial.baseline import BASE_ITEMS_FILE, ITEMS_FILE, write_items

    trial = tmp_path / "t"
    items = [
        {
            "id": f"{i:03d}",
            "prompt": f"{i} + 1 =",
            "expected": str(i + 1),
            "answer": "7",
            "exact": int(i == 6),
            "score": 1.0 if i == 6 else 0.25,
        }
        for i in range(50)
    ]
    base = [dict(i, answer="", exact=0, score=0.0) for i in items]
    trial.mkdir()
    write_items(trial / ITEMS_FILE, items)
    write_items(trial / BASE_ITEMS_FILE, base)
    result = TrialResult(
        run={"label": "lora r=16", "method": "lora"},
        train={"status": "ok", "eval_items": ITEMS_FILE, "base_items": BASE_ITEMS_FILE},
    )
    save(result, trial / "result.json")
    parent = tracking.parent_run("exp", {}, [])
    rid = tracking.log_trial(parent, result, trial)
    names = {a.path for a in tracking.client().list_artifacts(rid)}
    assert {ITEMS_FILE, BASE_ITEMS_FILE, "result.json"} <= names
    (rec,) = tracking.trial_records("exp")
    assert rec["items"]["eval_items"] == items and rec["items"]["base_items"] == base


def test_a_storage_password_never_reaches_the_parent_run():
    secret = "pw-Zq81x"
    url = f"postgresql://sweep:{secret}@127.0.0.1:5432/optuna"
    parent = tracking.parent_run("exp", {}, ["sweep=smoke", f"sweep.storage={url}"])
    param = tracking.client().get_run(parent).data.params["overrides"]
    assert secret not in param and "sweep.storage=postgresql://sweep:***@127.0.0.1" in param


def test_the_experiment_opens_on_its_runs_in_the_ui():
    parent = tracking.parent_run("kind", {}, [])
    c = tracking.client()
    exp = c.get_experiment(c.get_run(parent).info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


def test_the_ui_address_opens_the_experiments_runs_table_not_the_genai_view():
    from sweep.results import tracking

    assert tracking.ui_url("none-yet").endswith("/#/experiments?workflowType=machine_learning")
    rid = tracking.parent_run("uiexp", {}, [])
    exp = tracking.client().get_run(rid).info.experiment_id
    url = tracking.ui_url("uiexp", "0.0.0.0", 5001)
    assert url == f"http://0.0.0.0:5001/#/experiments/{exp}/runs?workflowType=machine_learning"
