"""Live MLflow runs, the trial's side: what a running trial streams to the run the sweep made.

    python -m sweep run sweep=smoke     # then make ui: each trial's steps as it trains

`LiveMetrics` (a TrainerCallback) logs every optimizer step and the periodic eval losses with
MLflow's asynchronous logging, so the step never waits for the store; `SystemMetrics` runs
MLflow's system metrics monitor (CPU, memory, disk, network, GPU) on the run. Light at import:
mlflow loads only when a trial has a live run.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from typing import Any

from transformers import TrainerCallback

from sweep.settings.errors import one_line

SYSTEM_METRICS_INTERVAL_S = 10.0


def usable(run_id: str | None) -> str | None:
    """The live run, unless an address-space limit is on (sweep.memory_limit_gib on CPU): the
    logging threads' stacks would count against it and change what runs out of memory. The
    record is logged into the run at the end either way."""
    import resource

    if run_id is None or resource.getrlimit(resource.RLIMIT_AS)[0] == resource.RLIM_INFINITY:
        return run_id
    print("[trial] no live metrics under an address-space limit (sweep.memory_limit_gib)")
    return None


class LiveMetrics(TrainerCallback):
    """Streams each optimizer step to the trial's run: train_loss, learning_rate, grad_norm
    (the Trainer's own logs), step_s and step_tokens_per_s (the measuring callback's clock),
    memory_gib (CUDA allocated, else the process's RSS). Logging is asynchronous; a tracking
    failure stops the stream with one warning and never the training."""

    def __init__(self, run_id: str, stats: Any = None) -> None:
        from sweep.results import tracking

        self.run_id, self.stats = run_id, stats  # stats: train.TrainStats, set by train()
        self.client = tracking.client()
        self._tokens = 0
        self._failed = False
        self._flush: threading.Thread | None = None

    def log(self, values: dict[str, float], step: int) -> None:
        """Log `values` at `step` without waiting (NaN and inf are left out)."""
        if self._failed:
            return
        import mlflow

        now = int(1000 * time.time())
        metrics = [
            mlflow.entities.Metric(k, float(v), now, step)
            for k, v in values.items()
            if v is not None and math.isfinite(v)
        ]
        try:
            self.client.log_batch(self.run_id, metrics=metrics, synchronous=False)
        except Exception as exc:  # the store went away: the trial goes on, its record stays
            self._failed = True
            print(f"[trial] live logging stopped ({one_line(exc)})", flush=True)

    def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
        logs = logs or {}
        if "loss" not in logs:
            return
        tokens = int(state.num_input_tokens_seen)
        step_s = self.stats.step_s[-1] if self.stats is not None and self.stats.step_s else math.nan
        values = {
            "train_loss": logs.get("loss"),
            "learning_rate": logs.get("learning_rate"),
            "grad_norm": logs.get("grad_norm"),
            "step_s": step_s,
            "step_tokens_per_s": (tokens - self._tokens) / step_s if step_s else math.nan,
            "memory_gib": memory_gib(),
        }
        self._tokens = tokens
        self.log(values, state.global_step)

    def on_train_end(self, args, state, control, **kw):  # noqa: ANN001
        """Nothing streams after training: the queue drains while the trial evaluates (the
        logging thread polls it once a second, so a flush at the end waited up to 1 s)."""
        self._flush = threading.Thread(target=_flush_async, name="live-flush", daemon=True)
        self._flush.start()

    def close(self) -> None:
        """Wait until every queued step has reached the store (flushed here if training did
        not end normally)."""
        if self._flush is None:
            _flush_async()
        else:
            self._flush.join()


def _flush_async() -> None:
    import mlflow

    with contextlib.suppress(Exception):  # best effort: the record holds every number
        mlflow.flush_async_logging()


def memory_gib() -> float:
    """What the trial holds now: CUDA allocated on a GPU, else the process's resident memory."""
    import torch

    from sweep.trial.measure import host_rss_bytes

    if torch.cuda.is_available():
        return torch.cuda.memory_allocated() / 1024**3
    return host_rss_bytes() / 1024**3


class SystemMetrics:
    """MLflow's system metrics monitor (CPU, memory, disk, network, GPU) on the trial's run."""

    def __init__(self, run_id: str | None) -> None:
        self.monitor: Any = None
        self.run_id = run_id
        if run_id is None:
            return
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            from sweep.results import tracking

            self.monitor = SystemMetricsMonitor(
                run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S, tracking_uri=tracking.uri()
            )
            self.monitor.start()
        except Exception as exc:  # optional: a missing sampler must not fail a trial
            print(f"[trial] no system metrics ({one_line(exc)})", flush=True)
            self.monitor = None

    def finish(self) -> None:
        """Stop sampling; the monitor logs synchronously unless MLflow's asynchronous logging
        is switched on for everything (MLFLOW_ENABLE_ASYNC_LOGGING), then its queue is flushed."""
        if self.monitor is None:
            return
        from mlflow.environment_variables import MLFLOW_ENABLE_ASYNC_LOGGING

        self.monitor.finish()
        if MLFLOW_ENABLE_ASYNC_LOGGING.get():
            _flush_async()
