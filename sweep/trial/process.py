"""The first thing a trial process does: tie its life to its parent's, obey the memory limit and,
on CPU, keep the memory it frees for its next step.

python -m sweep.trial outputs/default/trials/0003   # a rank of a multi-GPU trial calls it too
"""

from __future__ import annotations

import ctypes
import multiprocessing.forkserver
import os
import resource
import signal

from sweep.settings import hardware

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
KEEP_BYTES = 2**31 - 1  # mallopt takes an int: buffers up to 2 GiB are kept for reuse
OOM_EXIT = 75  # a trial process's exit code when it ran out of memory before it could record


def isolate(memory_limit_gib: float) -> None:
    """In a trial process: die with the process that started it, and obey the memory limit
    (sweep.memory_limit_gib; exceeding it is recorded as oom): on a GPU a cap on the CUDA
    allocator (a smaller card, simulated), on CPU the process's address space. On CPU without
    a limit, freed memory is kept for reuse (`keep_freed_memory`); under one, glibc's default
    stands, so that the limit counts what the trial holds rather than what its heap kept. At the
    limit CPython itself may crash instead of raising MemoryError: the sweep records such a death
    as oom (sweep.launch.launch.without_record)."""
    gpu = hardware.gpu_present()
    if not gpu and memory_limit_gib <= 0:
        keep_freed_memory()
    no_monitor_thread()
    libc = _libc()
    if libc is not None and hasattr(libc, "prctl"):
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if memory_limit_gib > 0:
        limit = int(memory_limit_gib * 1024**3)
        if gpu:  # an address-space limit would break CUDA, which maps a lot of it
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


def no_monitor_thread() -> None:
    """No tqdm monitor thread (it only nudges progress bars that stall): starting a thread at an
    address-space limit can hang for good (CPython's new thread fails to allocate before it
    signals that it started, and Thread.start waits without a timeout; seen at 2.47 GiB)."""
    import tqdm

    tqdm.tqdm.monitor_interval = 0


def keep_freed_memory() -> bool:
    """Have the C allocator keep what this process frees and hand it out again, as CUDA's
    caching allocator does on a GPU; True if it could (glibc). By default glibc maps every
    buffer over 32 MiB afresh and unmaps it when freed, so a training step on CPU pays a page
    fault per 4 KiB for each large tensor it makes (gradients, activations, the embedding's
    dense gradient): measured here, a third of a Qwen2.5-0.5B-shaped full-FT step at 2 rows and
    a quarter at 8, a cost that grows with the vocabulary rather than with the step's work."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):  # not glibc: its allocator's policy stands
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)) & bool(
        libc.mallopt(M_TRIM_THRESHOLD, KEEP_BYTES)
    )


def _libc() -> ctypes.CDLL | None:
    """glibc, where this process has it."""
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None
