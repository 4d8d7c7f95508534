"""Live MLflow runs, the sweep's side: a trial's nested run exists from its start.

    make sweep            # in one terminal
    make ui               # in another: the running trial, its curves and system metrics

The sweep creates the nested run (RUNNING) before it launches the trial, with its params and a
tag per axis (method, rank, quant, precision, optimizer, seed), and passes the run id to the
trial process as an argument. There `sweep.trial.stream.LiveMetrics` logs every optimizer step (loss, learning
rate, gradient norm, step time, tokens/s, memory) and periodic eval losses through MLflow's
asynchronous logging, so the training step never waits for the store, and MLflow's system
metrics monitor samples CPU, memory and GPU. When the trial ends the sweep logs the record and
artifacts into the same run and closes it FINISHED or FAILED (`tracking.log_trial`); a run whose
worker died is closed KILLED when the sweep resumes (`close_orphans`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sweep.settings import hardware

# Light at import (no mlflow, optuna): the trial process imports it; the store only when used.
AXIS_TAGS = ("task", "method", "rank", "quant", "precision", "optimizer", "seed", "base_dtype")
WORKER_TAGS = ("host", "pid", "started")


def start_run(parent_id: str, trial_dir_name: str, run: dict[str, Any]) -> str:
    """The trial's nested run, RUNNING, with its params and a searchable tag per axis."""
    import mlflow

    from sweep.results import storage, tracking

    c = tracking.client()
    parent = c.get_run(parent_id)
    worker = storage.worker_info()
    tags = {
        "mlflow.parentRunId": parent_id,
        tracking.TRIAL_TAG: trial_dir_name,
        tracking.LIVE_TAG: "true",
        "status": "running",
        **{f"worker.{k}": str(worker[k]) for k in WORKER_TAGS},
        **{k: str(run.get(k)) for k in AXIS_TAGS if k in run},
        **device_tags(),
    }
    created = c.create_run(parent.info.experiment_id, run_name=run.get("label"), tags=tags)
    rid = created.info.run_id
    params = tracking.trial_params(run)
    c.log_batch(rid, params=[mlflow.entities.Param(k, v) for k, v in params.items()])
    return rid


def reopen_run(parent_id: str, trial_dir_name: str) -> str | None:
    """The live run of a trial that an earlier run left unfinished (closed KILLED), RUNNING
    again with this worker's tags: a resumed trial goes on logging into it. None: none."""
    from sweep.results import storage, tracking

    c = tracking.client()
    for run in sorted(tracking.child_runs(c, parent_id), key=lambda r: -r.info.start_time):
        tags = run.data.tags
        if run.info.status == "FINISHED":  # a finished trial of the same folder name, outputs
            continue  # cleared since: not this one
        if tags.get(tracking.TRIAL_TAG) == trial_dir_name and tags.get(tracking.LIVE_TAG) == "true":
            rid = run.info.run_id
            c.update_run(rid, status="RUNNING")
            worker = storage.worker_info()
            for key, value in {
                "status": "running",
                "resumed": "true",
                **{f"worker.{k}": str(worker[k]) for k in WORKER_TAGS},
            }.items():
                c.set_tag(rid, key, value)  # fmt: skip
            return rid
    return None


def close_run(run_id: str | None, status: str = "KILLED") -> None:
    """Close a trial's live run now (the sweep was stopped by SIGTERM)."""
    if run_id is None:
        return
    from sweep.results import tracking

    c = tracking.client()
    c.set_tag(run_id, "status", status.lower())
    c.set_terminated(run_id, status)


def device_tags() -> dict[str, str]:
    """This worker's device, without starting CUDA: `device` (cuda | cpu) and `device_name`
    (NVML's name of the first GPU in CUDA_VISIBLE_DEVICES, by index or UUID, else of GPU 0;
    else the CPU model); the record's meta (by the device's UUID) confirms it at the end."""
    from sweep.results.record import cpu_model

    if not hardware.gpu_present():
        return {"device": "cpu", "device_name": cpu_model()}
    import pynvml

    pynvml.nvmlInit()
    try:
        first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip() or "0"
        handle = (
            pynvml.nvmlDeviceGetHandleByIndex(int(first))
            if first.isdigit()
            else pynvml.nvmlDeviceGetHandleByUUID(first)
        )
        name = pynvml.nvmlDeviceGetName(handle)
    finally:
        pynvml.nvmlShutdown()
    return {"device": "cuda", "device_name": name if isinstance(name, str) else name.decode()}


def _worker_alive(tags: dict[str, str]) -> bool | None:
    """True/False for a worker on this host; None for another host's (its heartbeat decides)."""
    from sweep.results import storage

    if tags.get("worker.host") != storage.worker_info()["host"]:
        return None
    try:
        worker = {"pid": int(tags["worker.pid"]), "started": float(tags["worker.started"])}
    except (KeyError, ValueError):
        return False
    return storage.alive(worker)


def close_orphans(parent_id: str, trials_root: Path) -> int:
    """Close KILLED the live runs left RUNNING by a dead worker on this host whose trial left
    no record (a record is logged into its run by `tracking.sync` instead)."""
    from sweep.results import tracking

    c = tracking.client()
    closed = 0
    for run in tracking.child_runs(c, parent_id):
        tags = run.data.tags
        if run.info.status != "RUNNING" or tags.get(tracking.LIVE_TAG) != "true":
            continue
        if (trials_root / tags.get(tracking.TRIAL_TAG, "?") / "result.json").exists():
            continue
        if _worker_alive(tags) is False:
            c.set_tag(run.info.run_id, "status", "killed")
            c.set_terminated(run.info.run_id, "KILLED")
            closed += 1
    return closed
