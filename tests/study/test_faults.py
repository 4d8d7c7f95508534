"""Faults must not lose, repeat or wedge a sweep: each ends with the sweep going on (the fault
recorded) or stopping with one line and a way to recover, and a re-run finishes exactly what an
uninterrupted run would have (same points, same records, one MLflow run each, none RUNNING)."""

import json
import os
import subprocess
import sys

import optuna
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from sweep.results import record, tracking
from sweep.results.storage import open_storage
from sweep.settings.compose import ConfigError
from sweep.study.study import run_sweep
from tests.conftest import REPO

ARGS = [
    "sweep=smoke",
    "experiment=faults",
    "~sweep.grid.qlora",
    "sweep.grid.lora.method.r=[4]",
    'sweep.overrides=["model=tiny_llama","train.steps=4","train.batch_size=4","train.max_seq_len=48","train.measure_warmup_steps=1","eval.size=4","eval.max_new_tokens=4","eval.retention_size=4"]',
]
POINTS = ["full", "lora r=4"]


def _trial_dirs(tmp_path):
    root = tmp_path / "outputs" / "faults" / "trials"
    return sorted(d for d in root.iterdir() if (d / "result.json").exists())


def _runs():
    c = tracking.client()
    exp = c.get_experiment_by_name("faults")
    return c.search_runs([exp.experiment_id]) if exp else []


def _as_one_uninterrupted_run(tmp_path):
    """Every point finished once, one record each, one finished MLflow run each."""
    dirs = _trial_dirs(tmp_path)
    labels = sorted(record.load(d / "result.json").run["label"] for d in dirs)
    assert labels == POINTS, labels  # nothing trained twice
    runs = _runs()
    assert all(r.info.status != "RUNNING" for r in runs), [r.info.status for r in runs]
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert sorted(r.info.run_name for r in nested) == POINTS
    report = (tmp_path / "reports" / "faults" / "report.md").read_text()
    assert all(f"| {label}" in report for label in POINTS)


def _journal(tmp_path):
    return tmp_path / "outputs" / "faults" / "optuna.journal"


@pytest.mark.slow
@pytest.mark.parametrize("run_created", [False, True])
def test_interrupted_after_a_record_is_written(tmp_path, monkeypatch, capsys, run_created):
    """Ctrl-C after a trial's record is written: before its MLflow run exists, or while it is
    logged (the run is left RUNNING). Optuna marks the trial failed. The re-run reuses the
    record (no second training), logs it once (replacing a half-logged run) and closes all."""
    real, calls = tracking.log_trial, []

    def half_logged(parent, result, trial_dir, run_id=None):
        calls.append(trial_dir.name)
        if len(calls) == 2:
            if run_created:
                c = tracking.client()
                exp_id = c.get_run(parent).info.experiment_id
                tags = {"mlflow.parentRunId": parent, tracking.TRIAL_TAG: trial_dir.name}
                c.create_run(exp_id, run_name=result.run["label"], tags=tags)
            raise KeyboardInterrupt
        return real(parent, result, trial_dir, run_id)

    monkeypatch.setattr(tracking, "log_trial", half_logged)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(ARGS)
    assert any(r.info.status == "KILLED" for r in _runs())  # the parent, not left RUNNING
    monkeypatch.setattr(tracking, "log_trial", real)
    assert run_sweep(ARGS) == 0
    assert "record reused" in capsys.readouterr().out
    _as_one_uninterrupted_run(tmp_path)


@pytest.mark.slow
def test_outputs_cleared_and_the_store_kept_a_rerun_logs_and_reports_its_own_trials(tmp_path):
    """The trial folders' names come back (0000-..., numbered by a new Optuna study) while the
    store still holds the first run's: each new trial is logged into its own run, closed, and
    the report shows the re-run's numbers."""
    import shutil

    assert run_sweep(ARGS) == 0
    first = {r.info.run_id for r in _runs()}
    shutil.rmtree(tmp_path / "outputs")
    assert run_sweep(ARGS) == 0
    runs = _runs()
    assert all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]
    new = [r for r in runs if r.info.run_id not in first and r.data.tags.get("mlflow.parentRunId")]
    assert sorted(r.info.run_name for r in new) == POINTS  # each logged into its live run
    newest = {r.data.tags[tracking.TRIAL_TAG]: r for r in new}
    table = pd.read_csv(tmp_path / "reports" / "faults" / "results.csv")
    for label in POINTS:  # the report's selected row is the re-run's trial
        row = table[(table["label"] == label) & table["selected"]].iloc[0]
        run = next(r for r in newest.values() if r.info.run_name == label)
        assert row["total_s"] == pytest.approx(run.data.metrics["total_s"])


@pytest.mark.slow
def test_a_damaged_journal_is_named_never_written_and_repaired(tmp_path):
    assert run_sweep(ARGS) == 0
    journal = _journal(tmp_path)
    data = journal.read_bytes()
    journal.write_bytes(data[:-66])  # cut mid-record
    damaged = journal.read_bytes()
    with pytest.raises(ConfigError, match=r"optuna.journal:\d+: damaged Optuna journal") as err:
        run_sweep(ARGS)
    assert "python -m sweep repair-journal" in str(err.value)
    assert journal.read_bytes() == damaged  # read whole before anything wrote to it
    out = subprocess.run(
        [sys.executable, "-m", "sweep", "repair-journal", str(journal)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0 and "dropped 1 damaged line" in out.stdout, out.stderr
    assert (journal.parent / "optuna.journal.damaged").read_bytes() == damaged
    assert run_sweep(ARGS) == 0  # the cut trial's record is on disk: reused, not retrained
    _as_one_uninterrupted_run(tmp_path)
    # a record appended without its newline is damage too
    journal.write_bytes(journal.read_bytes() + b'{"op_code": 5, "worker_id"')
    with pytest.raises(ConfigError, match="damaged Optuna journal"):
        run_sweep(ARGS)


@pytest.mark.slow
def test_a_busy_tracking_store_defers_logging_and_the_sweep_goes_on(tmp_path, monkeypatch):
    """The store stays locked through every retry while trial 1 is logged: the sweep goes on,
    the record is kept and logged before the report (or by the next run)."""
    monkeypatch.setattr(tracking, "RETRY_WAITS_S", (0.01, 0.01))
    real, calls = tracking.log_trial, []

    def locked_once(parent, result, trial_dir, run_id=None):
        calls.append(trial_dir.name)
        if calls.count(calls[0]) <= 3:  # the first trial: all three attempts fail
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return real(parent, result, trial_dir, run_id)

    monkeypatch.setattr(tracking, "log_trial", locked_once)
    assert run_sweep(ARGS) == 0
    assert len(set(calls)) == 2  # the second trial ran although the first could not be logged
    _as_one_uninterrupted_run(tmp_path)


@pytest.mark.slow
def test_a_tracking_store_held_locked_by_another_process(tmp_path):
    """Another process holds an exclusive lock on mlflow.db for a few seconds as trial 1 ends
    (sqlite's BEGIN EXCLUSIVE): logging waits or retries, and the sweep finishes whole."""
    import sqlite3
    import threading
    import time

    trials = tmp_path / "outputs" / "faults" / "trials"
    held = threading.Event()

    def hold_lock():
        end = time.time() + 120
        while time.time() < end and not list(trials.glob("*/result.json")):
            time.sleep(0.05)
        db = sqlite3.connect(tmp_path / "mlflow.db", timeout=30, isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")
        held.set()
        time.sleep(4)
        db.execute("COMMIT")
        db.close()

    locker = threading.Thread(target=hold_lock, daemon=True)
    locker.start()
    assert run_sweep(ARGS) == 0
    locker.join(timeout=60)
    assert held.is_set()
    _as_one_uninterrupted_run(tmp_path)


@pytest.mark.slow
def test_a_lost_tracking_store_is_rebuilt_from_the_records(tmp_path):
    assert run_sweep(ARGS) == 0
    (tmp_path / "mlflow.db").unlink()
    out = subprocess.run(  # a new process, as a user's next `make sweep`
        [sys.executable, "-m", "sweep", "run", *ARGS],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "nothing to run" in out.stdout
    assert "2 finished trial record(s) were missing from MLflow" in out.stdout
    _as_one_uninterrupted_run(tmp_path)


@pytest.mark.slow
def test_disk_full_writing_a_record_stops_with_one_line_and_resumes(tmp_path, monkeypatch):
    real = record.save
    calls = []

    def full_disk(result, path):
        calls.append(path)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return real(result, path)

    monkeypatch.setattr(record, "save", full_disk)
    with pytest.raises(ConfigError, match="No space left on device.*run the same command again"):
        run_sweep(ARGS)
    monkeypatch.setattr(record, "save", real)
    assert not list((tmp_path / "outputs").rglob("*.tmp"))
    assert run_sweep(ARGS) == 0
    _as_one_uninterrupted_run(tmp_path)


def test_write_whole_leaves_no_temporary_file_when_the_write_fails(tmp_path):
    def fail(tmp):
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        record.write_whole(tmp_path / "r.json", fail)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_retries_are_bounded_and_leave_no_queue_behind(tmp_path, capsys):
    args = [*ARGS, "sweep.timeout_s=3", "+sweep.grid.full.train.steps=[3000]", "~sweep.grid.lora"]
    assert run_sweep(args) == 0  # no trial ok: the report still lists the failures
    out = capsys.readouterr().out
    assert "tried 2 time(s) without an outcome (sweep.max_retries=1)" in out
    assert "(attempt 2)" in out and "(attempt 3)" not in out
    study = optuna.load_study(
        study_name="faults", storage=open_storage(f"journal://{_journal(tmp_path)}")
    )
    states = [t.state for t in study.get_trials()]
    assert len(states) == 2 and optuna.trial.TrialState.WAITING not in states
    report = (tmp_path / "reports" / "faults" / "report.md").read_text()
    assert "timed out after 3 s" in report


def test_questionable_settings_are_warned_in_one_line(tmp_path, capsys):
    """Warn in one line: a rank above the hidden size, more eval items than the task has."""
    from sweep.settings.compose import compose
    from sweep.trial.preflight import check_point, preflight

    check_point(compose(["model=tiny_llama", "method.r=512"]))
    assert "method.r=512 is above the model's hidden size (64)" in capsys.readouterr().err
    rows = tmp_path / "d.jsonl"
    rows.write_text(
        "".join(json.dumps({"prompt": f"q{i}", "answer": "a"}) + "\n" for i in range(20))
    )
    preflight(compose(["model=tiny_llama", "dataset=file", f"dataset.path={rows}", "eval.size=50"]))
    assert "eval.size=50: the dataset gives only 4 held-out items" in capsys.readouterr().err


def test_too_many_steps_for_the_task_names_the_cause():
    from sweep.settings.compose import compose
    from sweep.trial.preflight import preflight

    cfg = compose(
        [
            "model=tiny_llama",
            "dataset.task_args.chain_sum.max_digits=1",
            "train.steps=2000",
            "eval.size=10",
        ]
    )
    with pytest.raises(ConfigError, match="no eval items left.*too few distinct prompts"):
        preflight(cfg)
