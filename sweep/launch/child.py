"""The trial process: a fresh process per trial, forked from a server that imported torch & co.

    python -m sweep run sweep=default      # starts the server first, then forks one process per trial

Light on purpose (no torch, no transformers): the sweep imports it before anything heavy, so the
server's imports (about 9 s on 2 CPU cores) overlap the sweep's own set-up. Each trial is still
a new process (own memory counters, a crash or OOM is only that trial's), without the imports.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import os
import sys

from sweep.settings import hardware
from sweep.settings.cpus import CPUS_ENV, parse_cpus, pin_cpus
from sweep.trial import process


def preload_modules(cuda: bool) -> list[str]:
    """What the fork server imports once for all trials (sweep.launch.preload.FULL): the whole
    trial (torch, transformers, peft, bitsandbytes, ...), reasoning_gym (the default task) and
    MLflow with its SQL store (a trial's live run needs them; importing starts no thread, so
    forking after it is safe). With a GPU, through sweep.launch.gpu_server, which keeps CUDA
    uninitialized meanwhile."""
    from sweep.launch.preload import FULL

    return [*(["sweep.launch.gpu_server"] if cuda else FULL), "reasoning_gym"]


_CONTEXT: multiprocessing.context.BaseContext | None = None


def trial_context() -> multiprocessing.context.BaseContext:
    """The multiprocessing context trials start from (a fork server with the preloads)."""
    global _CONTEXT
    if _CONTEXT is None:
        ctx = multiprocessing.get_context("forkserver")
        cuda = hardware.gpu_present()
        if cuda:  # the server (started with this environment) must not initialize CUDA
            os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
        ctx.set_forkserver_preload(preload_modules(cuda))
        _CONTEXT = ctx
    return _CONTEXT


def start_trial_server() -> None:
    """Start the fork server now, so its imports overlap the sweep's own imports and set-up."""
    trial_context()
    multiprocessing.forkserver.ensure_running()


def enter(cwd: str, env: dict[str, str], memory_limit_gib: float = 0.0) -> None:
    """First thing in a forked process: isolation, the sweep's directory and environment."""
    process.isolate(memory_limit_gib)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if os.environ.get(CPUS_ENV):
        pin_cpus(parse_cpus(os.environ[CPUS_ENV]))


def trial_child(
    trial_dir: str,
    cwd: str,
    env: dict[str, str],
    pruning: tuple[str, str, int] | None,
    memory_limit_gib: float,
    launched: float,
    live_run: str | None = None,
) -> None:
    """What a sweep runs in each trial process: the trial in `<trial_dir>` (sweep.trial.run.run_dir).
    Every value arrives as an argument, pickled through the fork server's pipe: the storage URL
    (it may hold a password) never reaches a command line or the environment."""
    try:
        enter(cwd, env, memory_limit_gib)
        from sweep.trial.run import run_dir

        sys.exit(run_dir(trial_dir, launched, pruning, live_run))
    except MemoryError:  # before the trial could record it (its own MemoryError is recorded)
        sys.exit(process.OOM_EXIT)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the sweep says what
        sys.exit(130)  # happened in one line; a traceback from here would only bury it
