"""MLflow tracking: one parent run per sweep, one nested run per trial, the report as artifacts.

    make ui      # mlflow ui on 127.0.0.1 over $MLFLOW_TRACKING_URI (default sqlite:///mlflow.db)

A trial's nested run is created after its process has ended, from its result record, so a killed
trial never leaves a run stuck in RUNNING. The parent run is found again by its tag on a re-run,
so a resumed sweep keeps one parent. The records on disk are the source of truth: `sync` logs
those the store lacks, one run per trial directory, so a lost store, an outage or an interrupted
logging is repaired by running the sweep again. Nothing secret is logged: URLs are redacted.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import mlflow
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from sweep.results.record import TrialResult
from sweep.settings.compose import ConfigError, one_line, redact

T = TypeVar("T")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per record: noise

# MLflow configures its loggers on import; its "Creating initial MLflow database tables" is noise here.
for _name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
    logging.getLogger(_name).setLevel(logging.WARNING)

DEFAULT_URI = "sqlite:///mlflow.db"
PARENT_TAG = "sweep.parent"
LIVE_TAG = "sweep.live"  # "true" on a nested run created at its trial's start (sweep.live)
TRIAL_TAG = "sweep.trial"  # a nested run's trial directory name: one run per finished trial
ITEM_FILES = ("eval_items", "base_items")  # record keys naming per-item files beside result.json
PARAM_KEYS = (
    "label",
    "model",
    "task",
    "dataset",
    "method",
    "rank",
    "alpha",
    "lr",
    "quant",
    "precision",
    "base_dtype",
    "optimizer",
    "gradient_checkpointing",
    "attention",
    "packing",
    "seed",
    "config_hash",
    "point",
)


def uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI)


def check_reachable() -> None:
    """An http(s) tracking server must answer within seconds (MLflow itself retries for minutes)."""
    url = uri()
    if not url.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(url.rstrip("/") + "/health", timeout=5)
    except (urllib.error.URLError, OSError) as exc:
        raise ConfigError(
            f"MLFLOW_TRACKING_URI={url}: tracking server not reachable ({exc})"
        ) from None


_READY: set[str] = set()


def client() -> MlflowClient:
    """Client for the tracking URI; a new sqlite store is created under a file lock, because
    MLflow's schema migration races when several workers on one host start at once."""
    url = uri()
    mlflow.set_tracking_uri(url)
    c = MlflowClient(url) if url in _READY or not url.startswith("sqlite:///") else None
    if c is None:
        with open(url.removeprefix("sqlite:///") + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            c = MlflowClient(url)
            c.search_experiments(max_results=1)  # creates and migrates the tables
        _READY.add(url)
    return c


# The MLflow 3 UI opens an experiment of this kind on its runs table (not the GenAI overview):
# the value its own "machine learning" choice writes.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def ui_url(experiment: str, host: str = "127.0.0.1", port: int = 5000) -> str:
    """The UI page of the experiment's runs table. MLflow 3.17's UI opens in its GenAI view
    (traces) unless the link says `workflowType=machine_learning` or the user toggles "Model
    training" once (the browser remembers); the experiment kind tag alone is not enough."""
    exp = client().get_experiment_by_name(experiment)
    page = f"experiments/{exp.experiment_id}/runs" if exp else "experiments"
    return f"http://{host}:{port}/#/{page}?workflowType=machine_learning"


def _experiment_id(c: MlflowClient, name: str, create: bool = True) -> str | None:
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    if not create:
        return None
    try:
        return c.create_experiment(name, tags=EXPERIMENT_KIND)
    except MlflowException:
        exp = c.get_experiment_by_name(name)  # another worker created it at the same moment
        if exp is None:
            raise
        return exp.experiment_id


def _oldest_parent(c: MlflowClient, exp_id: str) -> str:
    runs = c.search_runs(
        [exp_id],
        filter_string=f"tags.`{PARENT_TAG}` = 'true'",
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    return runs[0].info.run_id


def find_parent(experiment: str) -> str | None:
    """Run id of the sweep's parent run, or None."""
    c = client()
    exp_id = _experiment_id(c, experiment, create=False)
    if exp_id is None:
        return None
    runs = c.search_runs(
        [exp_id],
        filter_string=f"tags.`{PARENT_TAG}` = 'true'",
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def parent_run(experiment: str, cfg: dict[str, Any], overrides: list[str]) -> str:
    """The sweep's parent run (created on the first run, reused when the sweep is resumed)."""
    c = client()
    run_id = find_parent(experiment)
    if run_id is None:
        exp_id = _experiment_id(c, experiment)
        run = c.create_run(exp_id, run_name=f"sweep {experiment}", tags={PARENT_TAG: "true"})
        run_id = run.info.run_id
        c.log_dict(run_id, cfg, "sweep_config.json")
        shown = " ".join(redact(o) for o in overrides)  # sweep.storage=postgresql://u:pw@...
        c.log_param(run_id, "overrides", shown[:6000] or "(none)")
        first = _oldest_parent(c, exp_id)
        if first != run_id:  # another worker created one at the same moment: join the first
            c.delete_run(run_id)
            run_id = first
    else:
        c.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
    return run_id


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        if not math.isnan(v):
            out[k] = float(v)
    return out


class TrackingUnavailable(ConfigError):
    """The tracking store stayed locked or unreachable through every retry: one line, exit 2."""


RETRY_WAITS_S = (1, 2, 4, 8, 16)  # ~30 s in all: a store busy for longer is retried next run


def retrying(call: Callable[[], T], what: str, waits: tuple[float, ...] = RETRY_WAITS_S) -> T:
    """`call()`, retried with backoff while the store is locked or unreachable; then
    TrackingUnavailable naming what could not be done."""
    for wait in (*waits, None):
        try:
            return call()
        except (MlflowException, OSError) as exc:
            if wait is None:
                raise TrackingUnavailable(f"{what}: {one_line(exc)[:200]}") from None
            time.sleep(wait)
    raise AssertionError("unreachable")


def child_runs(c: MlflowClient, parent_id: str) -> list[Any]:
    """The parent's nested runs."""
    exp_id = c.get_run(parent_id).info.experiment_id
    return c.search_runs(
        [exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'", max_results=5000
    )


def _logged_runs(c: MlflowClient, parent_id: str) -> dict[str, Any]:
    """Nested runs of the parent by their trial directory's name (TRIAL_TAG)."""
    return {r.data.tags[TRIAL_TAG]: r for r in child_runs(c, parent_id) if TRIAL_TAG in r.data.tags}


def trial_params(run: dict[str, Any]) -> dict[str, str]:
    """A trial's MLflow params: the record's run keys in PARAM_KEYS, as text."""
    return {k: str(run.get(k)) for k in PARAM_KEYS if k in run}


def log_trial(
    parent_id: str, result: TrialResult, trial_dir: Path, run_id: str | None = None
) -> str:
    """A finished nested run for one trial: params, metrics, loss curve, record and adapter.

    `run_id`: the trial's live run (sweep.study.live), logged into and closed. Without it, one
    run per trial directory (tag TRIAL_TAG): a trial already logged is not logged again, and a
    run left RUNNING by an interrupted logging is replaced. (A trial folder's name comes back
    when outputs are cleared and the store kept, so the live run's id decides where it can.)"""
    c = client()
    if run_id is not None:
        runs = [c.get_run(run_id)]
    else:
        runs = [r for r in child_runs(c, parent_id) if r.data.tags.get(TRIAL_TAG) == trial_dir.name]
        done = [r for r in runs if r.info.status != "RUNNING"]
        if done:
            return done[0].info.run_id
    lives = [r for r in runs if r.data.tags.get(LIVE_TAG) == "true"][:1]
    for r in runs:  # an interrupted logging's half run: start it again
        if r not in lives:
            c.delete_run(r.info.run_id)
    previous = lives[0] if lives else None
    live = previous is not None
    tags = {
        "status": result.status,
        "error": str(result.train.get("error") or "")[:4000],
        "device": str(result.meta.get("device")),
        "device_name": str(result.meta.get("device_name")),
        # its class in report.gpus ("A100 80GB"); a CPU, or a GPU not listed there: "-"
        "device_class": str(result.meta.get("device_class") or "-"),
    }
    if live:  # created at the trial's start (sweep.study.live): its params and step curves are in
        rid = previous.info.run_id
        for k, v in tags.items():
            c.set_tag(rid, k, v)
    else:
        parent = c.get_run(parent_id)
        tags.update({"mlflow.parentRunId": parent_id, TRIAL_TAG: trial_dir.name})
        run = c.create_run(parent.info.experiment_id, run_name=result.run.get("label"), tags=tags)
        rid = run.info.run_id
        params = trial_params(result.run)
        c.log_batch(rid, params=[mlflow.entities.Param(k, v) for k, v in params.items()])
    now = int(1000 * time.time())
    metrics = [mlflow.entities.Metric(k, v, now, 0) for k, v in _numeric(result.metrics).items()]
    metrics += [
        mlflow.entities.Metric("train_loss", float(v), now, i + 1)
        for i, v in enumerate([] if live else result.train.get("loss_curve", []))
        if not math.isnan(v)
    ]
    for i in range(0, len(metrics), 900):
        c.log_batch(rid, metrics=metrics[i : i + 900])
    for name in ("config.json", "result.json"):  # the resolved config (redacted), the record
        if (trial_dir / name).is_file():
            c.log_artifact(rid, str(trial_dir / name))
    for key in ITEM_FILES:  # per-item eval results: the report's paired statistics need them
        name = result.train.get(key)
        if name and (trial_dir / name).is_file():
            c.log_artifact(rid, str(trial_dir / name))
    adapter = trial_dir / "adapter"
    if adapter.is_dir() and result.run.get("method") != "full":  # full checkpoints stay on disk
        c.log_artifacts(rid, str(adapter), "adapter")
    c.set_terminated(rid, "FINISHED" if result.status in ("ok", "pruned") else "FAILED")
    return rid


def sync(parent_id: str, trials_root: Path) -> int:
    """Log every finished trial record under `trials_root` that the tracking store lacks (a
    lost or damaged store, an outage, an interrupted logging): the records on disk are the
    source of truth. Returns how many were logged."""
    from sweep.results.record import load

    if not trials_root.is_dir():
        return 0
    logged = {k for k, r in _logged_runs(client(), parent_id).items() if r.info.status != "RUNNING"}
    count = 0
    for trial_dir in sorted(trials_root.iterdir()):
        if trial_dir.name in logged or not (trial_dir / "result.json").is_file():
            continue
        try:
            result = load(trial_dir / "result.json")
        except ValueError:  # a damaged record: the trial runs again instead
            continue
        log_trial(parent_id, result, trial_dir)
        count += 1
    return count


def trial_records(experiment: str) -> list[dict[str, Any]]:
    """Every trial record logged under the sweep's parent run, oldest first. A nested run still
    RUNNING is one another worker is logging right now (its record may not be uploaded yet), or
    one whose logging was killed: it is left out, and the report counts it once it is complete."""
    c = client()
    parent = find_parent(experiment)
    if parent is None:
        return []
    exp_id = c.get_run(parent).info.experiment_id
    runs = c.search_runs(
        [exp_id],
        filter_string=(
            f"tags.mlflow.parentRunId = '{parent}' AND attributes.status != 'RUNNING' "
            "AND attributes.status != 'KILLED'"  # a trial killed with its worker: no record
        ),
        order_by=["attributes.start_time ASC"],
        max_results=5000,
    )
    records = []
    for run in runs:
        with tempfile.TemporaryDirectory() as tmp:
            path = c.download_artifacts(run.info.run_id, "result.json", tmp)
            rec = json.loads(Path(path).read_text())
            for key in ITEM_FILES:
                name = rec.get("train", {}).get(key)
                if name:
                    local = Path(c.download_artifacts(run.info.run_id, name, tmp))
                    rec.setdefault("items", {})[key] = read_items(local)
            records.append(rec)
    return records


def read_items(path: Path) -> list[dict[str, Any]]:
    """Per-item results from a JSON-lines file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def log_report(experiment: str, report_dir: Path) -> None:
    parent = find_parent(experiment)
    if parent is not None:
        client().log_artifacts(parent, str(report_dir), "report")


def finish_parent(parent_id: str, seconds: float) -> None:
    c = client()
    retrying(lambda: c.log_metric(parent_id, "sweep_wall_s", seconds), "closing the parent run")
    retrying(lambda: c.set_terminated(parent_id, "FINISHED"), "closing the parent run")


def close_parent(parent_id: str, status: str) -> None:
    """Best effort on the way out of an interrupted or crashed sweep: never raises."""
    with contextlib.suppress(Exception):  # the store itself may be what failed
        client().set_terminated(parent_id, status)
