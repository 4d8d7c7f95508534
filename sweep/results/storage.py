"""Optuna storage from one URL, and the pruning reporter a trial process uses to reach its study.

    sweep.storage=null                              -> journal file under outputs/<experiment>/
    sweep.storage=postgresql://user@host:5432/db    -> RDB storage shared by workers on many machines

A journal file lets several processes on one host share a study; PostgreSQL (RDB) lets many
machines share it. SQLite is for a single process and is accepted for that.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import psutil
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage

from sweep.settings.compose import ConfigError, one_line, redact

warnings.filterwarnings("ignore", message=r"RetryHeartbeatStaleTrialCallback is experimental")


STORAGE_ENV = "SWEEP_STORAGE"  # the storage URL from the environment: off the command line


def url_for(configured: str | None, output_dir: str, experiment: str) -> str:
    """sweep.storage, else $SWEEP_STORAGE, else the journal file under outputs/<experiment>/.
    From the environment (or with the password in ~/.pgpass, which libpq reads) the URL never
    appears in the process list or in the overrides MLflow records."""
    return configured or os.environ.get(STORAGE_ENV) or default_url(output_dir, experiment)


def default_url(output_dir: str, experiment: str) -> str:
    return f"journal://{Path(output_dir, experiment, 'optuna.journal').resolve()}"


def open_storage(url: str, heartbeat_s: int = 60) -> BaseStorage:
    """`journal:///abs/path` (a file) or any SQLAlchemy URL (postgresql://, sqlite:///)."""
    if url.startswith("journal://"):
        path = Path(url.removeprefix("journal://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        check_journal(path)
        return JournalStorage(JournalFileBackend(str(path)))
    shown = redact(url)
    if url.startswith("postgresql://"):  # SQLAlchemy 2.1 defaults to psycopg 3; we ship psycopg2
        url = "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    for attempt in range(3):
        try:
            # Heartbeats: a trial whose worker went silent for 3 intervals is failed by the next
            # worker to start a trial, and the callback queues it again for whoever is free.
            return RDBStorage(
                url,
                heartbeat_interval=heartbeat_s,
                grace_period=3 * heartbeat_s,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
                engine_kwargs=_engine_kwargs(url),
            )
        except Exception as exc:  # bad driver, refused connection, wrong password, ...
            reason = one_line(exc)
            if ("already exists" in reason or "duplicate key" in reason) and attempt < 2:
                # two workers created the schema at the same moment: the second one retries
                time.sleep(1 + attempt)
                continue
            raise ConfigError(f"sweep.storage={shown}: cannot open ({reason[:200]})") from None
    raise AssertionError("unreachable")


def _first_damage(path: Path) -> tuple[int, str] | None:
    """(line number, what is wrong) of the first damaged line of a journal, or None."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            json.loads(line)
        except ValueError:
            return number, "not a whole JSON record"
        if number == len(lines):  # a last record without its newline: cut mid-write
            return number, "its last record has no end of line"
    return None


def check_journal(path: Path) -> None:
    """Read an Optuna journal whole before anything writes to it; a damaged one stops here
    with its line number and the command that repairs it."""
    if not path.is_file():
        return
    damage = _first_damage(path)
    if damage is not None:
        number, what = damage
        raise ConfigError(
            f"{path}:{number}: damaged Optuna journal ({what}); nothing was written to it. "
            f"Repair: python -m sweep repair-journal {path} (keeps the records before line "
            f"{number}, the original is saved as {path.name}.damaged), then run the sweep again"
        )


def repair_journal(path: Path) -> tuple[int, int]:
    """Keep the whole records before the first damaged line; save the original beside it.
    Returns (records kept, lines dropped)."""
    damage = _first_damage(path)
    lines = path.read_bytes().split(b"\n")
    if damage is None:
        return sum(bool(x.strip()) for x in lines), 0
    number = damage[0]
    kept = [x for x in lines[: number - 1] if x.strip()]
    dropped = sum(bool(x.strip()) for x in lines[number - 1 :])
    backup = path.with_name(path.name + ".damaged")
    backup.write_bytes(path.read_bytes())
    tmp = path.with_name(f".{path.name}.repair")
    tmp.write_bytes(b"".join(x + b"\n" for x in kept))
    tmp.replace(path)
    return len(kept), dropped


def _engine_kwargs(url: str) -> dict:
    """Fail fast on an unreachable database instead of hanging."""
    return {"connect_args": {"connect_timeout": 10}} if url.startswith("postgresql") else {}


def pruning_reporter(url: str, study_name: str, trial_id: int) -> Callable[[int, float], bool]:
    """(step, value) -> should_prune, reporting into the parent's running trial."""
    study = optuna.load_study(study_name=study_name, storage=open_storage(url))
    trial = optuna.trial.Trial(study, trial_id)

    def report(step: int, value: float) -> bool:
        trial.report(value, step)
        return trial.should_prune()

    return report


# ---------------------------------------------------------------- workers


def worker_info() -> dict[str, Any]:
    """This worker (host, pid, process start), stored on each trial it runs."""
    proc = psutil.Process()
    return {"host": _host(), "pid": proc.pid, "started": proc.create_time()}


def _host() -> str:
    """This worker's machine; SWEEP_WORKER_HOST overrides it (containers sharing a hostname)."""
    return os.environ.get("SWEEP_WORKER_HOST") or socket.gethostname()


def alive(worker: dict[str, Any]) -> bool:
    """The worker process (host, pid, start time from worker_info) still runs here."""
    try:
        return psutil.Process(worker["pid"]).create_time() == worker["started"]
    except (psutil.NoSuchProcess, KeyError):
        return False


def fail_stale_trials(study: optuna.Study) -> int:
    """Mark RUNNING trials whose worker on this host is gone (killed sweep) as FAIL."""
    stale = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        if worker and worker.get("host") == _host() and not alive(worker):
            study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
            stale += 1
    if stale:
        print(f"[sweep] {stale} trial(s) of a killed run marked failed; they run again", flush=True)
    return stale
