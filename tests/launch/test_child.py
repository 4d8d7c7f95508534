"""Trial processes: what the fork server may import on a GPU host."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sweep.launch.child import preload_modules


def _fresh(script: str, tmp_path=None) -> subprocess.CompletedProcess:  # noqa: ANN001
    """`script` in a fresh interpreter, as the fork server is one."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path or ""), os.getcwd()])),
    }
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env
    )


def test_preload_is_the_whole_trial_module_with_or_without_a_gpu():
    assert preload_modules(False) == [
        "sweep.trial.run",
        "sweep.results.tracking",
        "mlflow.store.tracking.sqlalchemy_store",
        "reasoning_gym",
    ]
    assert preload_modules(True) == [
        "sweep.launch.gpu_server",
        "reasoning_gym",
    ]  # imports FULL itself


def test_a_server_forked_child_starts_with_peft_and_bitsandbytes_imported(tmp_path):
    # The GPU host's server (sweep.launch.gpu_server) on this CPU host: its children need not import peft,
    # bitsandbytes or the Trainer, which is what made a GPU trial's start take seconds.
    (tmp_path / "probe.py").write_text(
        "import sys\n"
        "def probe(q):\n"
        "    import sweep.launch.preload as p, torch\n"
        "    import threading\n"
        "    mods = ('peft', 'bitsandbytes', 'transformers.trainer', 'sweep.trial.run', 'mlflow',\n"
        "            'mlflow.store.tracking.sqlalchemy_store')\n"
        "    q.put((sorted(m for m in mods if m in sys.modules), p.outcome,"
        " torch.cuda.is_initialized(), threading.active_count()))\n"
    )
    script = (
        "import multiprocessing as mp\n"
        "from probe import probe\n"
        "from sweep.launch.child import preload_modules\n"
        "ctx = mp.get_context('forkserver')\n"
        "ctx.set_forkserver_preload(preload_modules(True))\n"
        "q = ctx.Queue(); c = ctx.Process(target=probe, args=(q,)); c.start()\n"
        "print(q.get(timeout=200)); c.join()\n"
    )
    out = _fresh(script, tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == (
        "(['bitsandbytes', 'mlflow', 'mlflow.store.tracking.sqlalchemy_store', 'peft', 'sweep.trial.run', "
        "'transformers.trainer'], 'full', False, 1)"
    ), out.stdout


def test_while_preloading_the_capability_comes_from_nvml_and_cuda_init_is_refused():
    import torch

    from sweep.launch import preload

    def names():  # noqa: ANN202
        return (
            torch.cuda.get_device_capability,
            torch.cuda._lazy_init,
            torch.cuda.memory._lazy_init,
            torch.cuda.random._lazy_init,
            getattr(torch._C, "_cuda_init", None),
        )

    saved = names()
    with preload.cuda_answered_by_nvml(lambda device=None: (9, 0)):
        # what bitsandbytes does at import
        assert torch.cuda.get_device_capability(torch.cuda.device(1)) == (9, 0)
        with pytest.raises(RuntimeError, match="must not initialize CUDA"):
            torch.cuda.get_device_properties(0)
        with pytest.raises(RuntimeError, match="must not initialize CUDA"):
            torch.cuda.memory.get_per_process_memory_fraction(0)  # binds _lazy_init by name
        bound = torch.cuda._lazy_init  # as `from torch.cuda import _lazy_init` would, meanwhile
    assert names() == saved
    assert len(preload.refused) == 2 and preload.refused[0].startswith(__file__)
    preload.refused.clear()
    if not torch.cuda.is_available():  # outside, a binding made inside is torch's own again
        with pytest.raises(AssertionError, match="not compiled with CUDA"):
            bound()


FAKE_GPU = "import torch\ntorch.cuda.device_count = lambda: 2\n"


@pytest.mark.parametrize(
    ("module", "outcome", "said"),
    [
        # bitsandbytes' own import: asks each device's capability, gets NVML's answer
        (
            "import torch\ncaps = sorted(torch.cuda.get_device_capability(torch.cuda.device(i))"
            " for i in range(torch.cuda.device_count()))\n",
            "full",
            "",
        ),
        # a module that insists on CUDA: left to the trials, in one line
        (
            "import torch\ntorch.cuda.get_device_properties(0)\n",
            "safe: RuntimeError: the trial server must not initialize CUDA",
            "[sweep] trial server: each trial imports peft/bitsandbytes",
        ),
        # a module that asks, is refused and goes on: a warning naming where
        (
            "import torch\ntry:\n    torch.cuda.current_device()\nexcept RuntimeError:\n    pass\n",
            "full",
            "[sweep] warning: the trial server was asked for CUDA at",
        ),
    ],
)
def test_preload_on_a_gpu_host_imports_fully_or_falls_back_in_one_line(
    tmp_path, module, outcome, said
):
    (tmp_path / "fake_bnb.py").write_text(module)
    script = (
        FAKE_GPU + "import sys\nfrom sweep.launch.preload import preload\n"
        "print(preload(['fake_bnb'], ['sweep.results.record'], lambda d=None: (8, 0)),"
        " getattr(sys.modules.get('fake_bnb'), 'caps', None), torch.cuda.is_initialized())\n"
    )
    out = _fresh(script, tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    caps = "[(8, 0), (8, 0)]" if "caps" in module else "None"
    assert out.stdout.strip().splitlines()[-1] == f"{outcome} {caps} False"
    assert (said in out.stderr) and (said or "[sweep]" not in out.stderr.split("full")[-1])
    assert len([line for line in out.stderr.splitlines() if line.startswith("[sweep]")]) <= 2


def test_preload_falls_back_when_nvml_cannot_answer():
    # No NVML here: the capability check fails before bitsandbytes could swallow the error and
    # load its CPU library; peft and bitsandbytes stay out of the server.
    out = _fresh(
        FAKE_GPU
        + "import sys, sweep.launch.gpu_server, sweep.launch.preload as p\nprint(p.outcome, 'peft' in sys.modules)\n"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("safe: ") and last.endswith(" False"), last
    assert "[sweep] trial server: each trial imports peft/bitsandbytes" in out.stderr


def test_sweep_cpus_pins_a_trial_process_and_its_torch_threads():
    import multiprocessing

    from sweep.settings.cpus import CPUS_ENV, parse_cpus

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

    from sweep.launch.child import enter

    enter(os.getcwd(), env)
    q.put((os.sched_getaffinity(0), torch.get_num_threads()))
