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
import resource
import signal
import sys

from sweep.cpus import CPUS_ENV, parse_cpus, pin_cpus


def gpu_present() -> bool:
    """An NVIDIA GPU on this host (NVML; no CUDA context is created)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount() > 0
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return False


def preload_modules(cuda: bool) -> list[str]:
    """What the fork server imports once for all trials: the whole trial module (torch,
    transformers, peft, bitsandbytes, ...), reasoning_gym (the default task, imported lazily by
    sweep.data) and sweep.tracking with MLflow and its SQL store (a trial's live run imports
    them: 1.9 s on 2 cores; importing starts no thread, so forking after it is safe):
    sweep.preload.FULL. With a
    GPU, through sweep.gpu_server, which keeps CUDA uninitialized meanwhile."""
    from sweep.preload import FULL

    return [*(["sweep.gpu_server"] if cuda else FULL), "reasoning_gym"]


_CONTEXT: multiprocessing.context.BaseContext | None = None


def trial_context() -> multiprocessing.context.BaseContext:
    """The multiprocessing context trials start from (a fork server with the preloads)."""
    global _CONTEXT
    if _CONTEXT is None:
        ctx = multiprocessing.get_context("forkserver")
        cuda = gpu_present()
        if cuda:  # the server (started with this environment) must not initialize CUDA
            os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
        ctx.set_forkserver_preload(preload_modules(cuda))
        _CONTEXT = ctx
    return _CONTEXT


def start_trial_server() -> None:
    """Start the fork server now, so its imports overlap the sweep's own imports and set-up."""
    trial_context()
    multiprocessing.forkserver.ensure_running()


def isolate(memory_limit_gib: float) -> None:
    """In a trial process: die with the process that started it, and obey the memory limit
    (sweep.memory_limit_gib; exceeding it is recorded as oom): on a GPU a cap on the CUDA
    allocator (a smaller card, simulated), on CPU the process's address space."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    if memory_limit_gib > 0:
        limit = int(memory_limit_gib * 1024**3)
        if gpu_present():  # an address-space limit would break CUDA, which maps a lot of it
            import torch

            total = torch.cuda.get_device_properties(0).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, limit / total))
        else:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # A process forked by multiprocessing's fork server holds the server's keep-alive pipe (so
    # that it could fork in turn). Close it: the server then exits when the sweep dies, and this
    # process with it (PDEATHSIG); otherwise each keeps the other alive after `kill -9`.
    server = multiprocessing.forkserver._forkserver
    if getattr(server, "_forkserver_alive_fd", None) is not None:
        os.close(server._forkserver_alive_fd)
        server._forkserver_alive_fd = None


def enter(cwd: str, env: dict[str, str], memory_limit_gib: float = 0.0) -> None:
    """First thing in a forked process: isolation, the sweep's directory and environment."""
    isolate(memory_limit_gib)
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
    """What a sweep runs in each trial process: the trial in `<trial_dir>` (sweep.trial.run_dir).
    Every value arrives as an argument, pickled through the fork server's pipe: the storage URL
    (it may hold a password) never reaches a command line or the environment."""
    enter(cwd, env, memory_limit_gib)
    from sweep.trial import run_dir

    try:
        sys.exit(run_dir(trial_dir, launched, pruning, live_run))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the sweep says what
        sys.exit(130)  # happened in one line; a traceback from here would only bury it
