"""The first thing a trial process does: tie its life to its parent's and obey the memory limit.

python -m sweep.trial outputs/default/trials/0003   # a rank of a multi-GPU trial calls it too
"""

from __future__ import annotations

import multiprocessing.forkserver
import os
import resource
import signal

from sweep.settings import hardware


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
        if (
            hardware.gpu_present()
        ):  # an address-space limit would break CUDA, which maps a lot of it
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
