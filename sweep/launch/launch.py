"""One trial from the sweep's side: skip it when the planner predicts it cannot fit, else run it
in a fresh process and read back its record (a failed record when it left none).

    python -c "from sweep.launch.launch import launch"   # study.py calls it for every point

The process is forked from the trial server (sweep/launch/child.py); every value it needs travels as an
argument, so the storage URL never reaches a command line.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sweep.launch import parallel
from sweep.launch.child import trial_child, trial_context
from sweep.results import record
from sweep.results.record import TrialResult
from sweep.settings import hardware
from sweep.settings.compose import as_dict
from sweep.settings.schema import Config
from sweep.trial import process, ranks


def launch(
    trial_cfg: Config,
    trial_dir: Path,
    timeout_s: int,
    pruning: tuple[str, str, int] | None = None,
    memory_limit_gib: float = 0.0,
    env: dict[str, str] | None = None,
    live_run: str | None = None,
) -> TrialResult:
    """Run one trial in a fresh process and return its record (a failed one if it left none);
    `env` adds to the environment it gets; `live_run` is its MLflow run (sweep.study.live)."""
    trial_dir.mkdir(parents=True, exist_ok=True)
    (trial_dir / "config.json").write_text(json.dumps(as_dict(trial_cfg), indent=2))
    result_file = trial_dir / "result.json"
    result_file.unlink(missing_ok=True)
    start = time.perf_counter()
    run = _run_parallel if trial_cfg.train.gpus > 1 else _run_forked  # several devices: accelerate
    code = run(trial_cfg, trial_dir, timeout_s, pruning, memory_limit_gib, env, live_run)
    wall = time.perf_counter() - start
    if result_file.exists():
        result = record.load(result_file)
        result.metrics["trial_wall_s"] = wall  # process start to exit, as the sweep saw it
        return result
    if code is None:
        error, status = f"timed out after {timeout_s} s (sweep.timeout_s)", "failed"
    else:
        error, status = without_record(code, memory_limit_gib)
        if trial_cfg.train.gpus > 1 and parallel.last_error(trial_dir):
            error += f": {parallel.last_error(trial_dir)} (all ranks: {trial_dir}/launch.log)"
    result = record.failed(record.run_info(trial_cfg), status, error, trial_cfg.report.gpus)
    record.save(result, result_file)
    return result


# Deaths that, under an address-space limit, are the limit: CPython and native code (C++, Rust)
# that cannot allocate may crash (seen: a segfault in CPython's MemoryError handling) or abort
CRASHES_AT_LIMIT = (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT)


def without_record(code: int, memory_limit_gib: float) -> tuple[str, str]:
    """(error, status) of a trial process that exited with `code` and left no record: out of
    memory when the kernel killed it, when it ran out before it could record (OOM_EXIT), or
    when it crashed under a CPU trial's address-space limit (sweep.memory_limit_gib)."""
    if code == -signal.SIGKILL:
        return "killed by SIGKILL (the kernel's out-of-memory killer, or a user)", "oom"
    limit = memory_limit_gib > 0 and not hardware.gpu_present()
    at_limit = f" under the {memory_limit_gib:g} GiB address-space limit (sweep.memory_limit_gib)"
    if code == process.OOM_EXIT:
        return "ran out of memory before it could record a result" + at_limit * limit, "oom"
    if limit and -code in CRASHES_AT_LIMIT:
        name = signal.Signals(-code).name
        return (
            f"trial process died of {name}{at_limit}: out of memory where it could not raise",
            "oom",
        )
    return f"trial process exited with code {code} and left no record", "failed"


# How to stop each trial process running now (sweep.study: SIGTERM reaches the sweep)
_RUNNING: dict[str, Callable[[int], None]] = {}


def stop_running(grace_s: float) -> None:
    """SIGTERM to every trial running now (it checkpoints and exits), SIGKILL after grace_s."""
    for send in list(_RUNNING.values()):
        send(signal.SIGTERM)

    def kill() -> None:
        for send in list(_RUNNING.values()):
            send(signal.SIGKILL)

    timer = threading.Timer(grace_s, kill)
    timer.daemon = True
    timer.start()


def _signal_process(pid: int, group: bool = False) -> Callable[[int], None]:
    def send(signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            (os.killpg if group else os.kill)(pid, signum)

    return send


def _run_forked(
    cfg: Config,
    trial_dir: Path,
    timeout_s: int,
    pruning: tuple[str, str, int] | None,
    memory_limit_gib: float,
    env: dict[str, str] | None,
    live_run: str | None,
) -> int | None:
    """The trial in one process forked from the trial server; its exit code (None: killed at
    sweep.timeout_s). Every value travels in memory: the storage URL may hold a password."""
    proc = trial_context().Process(
        target=trial_child,
        args=(
            str(trial_dir),
            os.getcwd(),
            {**os.environ, **(env or {})},  # the sweep's own (the server's may be older)
            pruning,
            memory_limit_gib,
            time.time(),  # startup_s counts from here
            live_run,
        ),
        name=f"trial {trial_dir.name}",
    )
    proc.start()
    _RUNNING[str(trial_dir)] = _signal_process(proc.pid)
    try:
        proc.join(timeout_s or None)
    finally:
        _RUNNING.pop(str(trial_dir), None)
    if proc.exitcode is None:  # still running past sweep.timeout_s
        proc.kill()
        proc.join()
        return None
    return proc.exitcode


def _run_parallel(
    cfg: Config,
    trial_dir: Path,
    timeout_s: int,
    pruning: tuple[str, str, int] | None,
    memory_limit_gib: float,
    env: dict[str, str] | None,
    live_run: str | None,
) -> int | None:
    """The trial over train.gpus processes (sweep.launch.parallel); the pruning storage URL goes
    in the environment of the launch only (it may hold a password), never in a file."""
    details = {"launched": time.time(), "live_run": live_run, "pruning": None}
    run_env = {**os.environ, **(env or {})}
    if pruning is not None:
        details["pruning"] = list(pruning[1:])
        run_env[ranks.STORAGE_ENV] = pruning[0]
    key = str(trial_dir)

    def started(pid: int) -> None:
        _RUNNING[key] = _signal_process(pid, group=True)

    try:
        return parallel.run(
            trial_dir, cfg.train.gpus, details, run_env, timeout_s, memory_limit_gib, started
        )
    finally:
        _RUNNING.pop(key, None)


def summary_line(i: int, n: int | str, result: TrialResult) -> str:
    """The console line of a finished trial: status, accuracy, peak memory, time, error."""
    m = result.metrics
    acc = f"acc {m['accuracy']:.1%}" if m.get("accuracy") is not None else "acc -"
    mem = m.get("peak_memory_gib")
    mem_s = (
        f"peak {mem:.2f} GiB {'VRAM' if m.get('memory_kind') == 'vram' else 'host'}"
        if mem
        else "peak -"
    )
    t = m.get("total_s")
    took = f"time {t:.0f} s" if t else ""
    extra = f"  ({result.train.get('error')})" if result.train.get("error") else ""
    return (
        f"[trial {i}/{n}] {result.run.get('label')}: {result.status}  {acc}  {mem_s}  {took}{extra}"
    )
