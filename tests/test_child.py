"""Trial processes: what the fork server may import on a GPU host."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sweep.child import GPU_PRELOAD, preload_modules


def test_gpu_preload_never_imports_bitsandbytes():
    # bitsandbytes initializes CUDA at import; a server that did so would fork children that
    # cannot use the GPU. Checked in a fresh interpreter, which is what the server is.
    script = (
        "import sys\n"
        f"for m in {GPU_PRELOAD!r}: __import__(m)\n"
        "print(sorted(m for m in ('bitsandbytes', 'peft') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_preload_on_cpu_is_the_whole_trial_module():
    assert preload_modules(False) == ["sweep.trial", "reasoning_gym"]
    assert preload_modules(True) == GPU_PRELOAD and "sweep.trial" not in GPU_PRELOAD


def test_sweep_cpus_pins_a_trial_process_and_its_torch_threads():
    import multiprocessing

    from sweep.cpus import CPUS_ENV, parse_cpus

    assert parse_cpus("0-2,5") == {0, 1, 2, 5}
    with pytest.raises(ValueError, match="expected cores like 0-3,6"):
        parse_cpus("0-x")
    core = min(os.sched_getaffinity(0))
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_report_pinning, args=(q, {**os.environ, CPUS_ENV: str(core)}))
    p.start()
    assert q.get(timeout=60) == ({core}, 1)
    p.join()


def _report_pinning(q, env):  # noqa: ANN001, ANN202
    import torch

    from sweep.child import enter

    enter(os.getcwd(), env)
    q.put((os.sched_getaffinity(0), torch.get_num_threads()))
