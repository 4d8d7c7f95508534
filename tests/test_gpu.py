"""CUDA paths of a trial: device peaks from the allocator and NVML, MFU, bf16 autocast, and
QLoRA's NF4 base with paged 8-bit AdamW. Skipped without a CUDA device; on a GPU machine the
rest of the suite runs on the GPU as well (models go to the GPU when there is one)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from sweep.launch.launch import launch
from sweep.settings.compose import compose
from sweep.trial import methods
from sweep.trial.measure import peak_tflops
from sweep.trial.run import run_trial

from .conftest import tiny

pytestmark = pytest.mark.gpu
GIB = 1024**3


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_trial_on_cuda_records_device_peaks_and_mfu(tmp_path, method):
    paged = ["train.optimizer=paged_adamw_8bit"] if method == "qlora" else []  # QLoRA's recipe
    cfg = compose(tiny(f"method={method}", *paged))
    bf16 = torch.cuda.is_bf16_supported()
    assert cfg.train.precision == ("bf16-mixed" if bf16 else "fp32")  # precision=auto
    result = run_trial(cfg, tmp_path)
    assert result.status == "ok", result.train.get("error")
    m = result.metrics
    assert m["memory_kind"] == "vram" and m["peak_memory_gib"] == m["peak_vram_gib"]
    assert 0 < m["peak_alloc_gib"] <= m["peak_reserved_gib"]
    assert m["peak_vram_gib"] >= m["peak_alloc_gib"]  # NVML: context + everything reserved
    assert m["cuda_context_gib"] > 0
    # The ledger's parameters are on the device, so the allocator's peak holds them.
    assert m["ledger_params_bytes"] / GIB <= m["peak_alloc_gib"]
    assert m["train_tflops"] > 0
    if peak_tflops(torch.cuda.get_device_name(), cfg.train.precision, cfg.report.gpus):
        assert 0 < m["mfu"] < 1
    assert m["base_4bit"] is (method == "qlora")
    if method == "qlora":
        assert methods.optimizer_name(cfg.train) == "paged_adamw_8bit"
        # 8-bit states for tensors of 4096 elements or more, fp32 below: as the planner says
        plan_bytes = m["plan_optimizer_gib"] * GIB
        assert m["ledger_optimizer_bytes"] == pytest.approx(plan_bytes, rel=0.05)


def test_memory_limit_caps_the_cuda_allocator_and_records_oom(tmp_path):
    # sweep.memory_limit_gib on a GPU: the trial process's allocator is capped (a small card,
    # simulated); a trial over the cap ends as `oom`, not as a crash of the sweep.
    cfg = compose(tiny("method=full", "train.batch_size=64"))
    result = launch(cfg, tmp_path / "t", 0, None, memory_limit_gib=0.002)
    assert result.status == "oom", (result.status, result.train.get("error"))
    assert "out of memory" in result.train["error"].lower()
    fits = launch(cfg, tmp_path / "u", 0, None, memory_limit_gib=8)
    assert fits.status == "ok", fits.train.get("error")


def test_a_trial_under_a_remapped_device_measures_that_device(tmp_path):
    # CUDA_VISIBLE_DEVICES names the last GPU (device 0 too on a one-GPU machine): CUDA calls it
    # device 0, NVML is opened by its UUID, and NVML's peak holds the allocator's (the trial
    # process takes the environment before CUDA starts in it)
    last = str(torch.cuda.device_count() - 1)
    cfg = compose(tiny("method=lora"))
    result = launch(cfg, tmp_path / "t", 0, None, env={"CUDA_VISIBLE_DEVICES": last})
    assert result.status == "ok", result.train.get("error")
    assert result.meta["visible_devices"] == [last]
    assert result.meta["device_uuid"].startswith(("GPU-", "MIG-"))
    m = result.metrics
    assert m["memory_kind"] == "vram" and m["peak_vram_gib"] >= m["peak_alloc_gib"] > 0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_one_trial_over_two_gpus_records_both_ranks(tmp_path, parallel):
    method = "full" if parallel == "fsdp" else "lora"
    cfg = compose(tiny(f"method={method}", "train.gpus=2", f"train.parallel={parallel}"))
    result = launch(cfg, tmp_path / "t", 0)
    assert result.status == "ok", result.train.get("error")
    ranks = result.train["ranks"]
    assert result.metrics["world_size"] == 2 and len({r["device_uuid"] for r in ranks}) == 2
    assert result.metrics["peak_vram_gib"] == max(r["peak_vram_gib"] for r in ranks)
    assert (tmp_path / "t" / "adapter").is_dir()


def test_the_trial_server_preloads_bitsandbytes_and_its_children_use_cuda(tmp_path):
    # sweep.launch.gpu_server on a real GPU: the server imported peft and bitsandbytes (with its CUDA
    # library) without initializing CUDA, so a forked trial runs a 4-bit kernel at once; and no
    # import asked for CUDA and went on when refused (it could have cached a wrong answer).
    (tmp_path / "probe.py").write_text(
        "import sys\n"
        "def probe(q):\n"
        "    preloaded = all(m in sys.modules for m in ('peft', 'bitsandbytes', 'sweep.trial.run'))\n"
        "    import torch, bitsandbytes.functional as F, sweep.launch.preload as p\n"
        "    from bitsandbytes.cextension import lib\n"
        "    x = torch.randn(64, 64, device='cuda', dtype=torch.bfloat16)\n"
        "    w, state = F.quantize_4bit(x, quant_type='nf4')\n"
        "    err = (F.dequantize_4bit(w, state) - x).abs().max().item()\n"
        "    cuda_lib = getattr(lib, 'compiled_with_cuda', False)\n"
        "    q.put((preloaded, p.outcome, p.refused, cuda_lib, err < 1.0))\n"
    )
    script = (
        "import multiprocessing as mp\n"
        "from probe import probe\n"
        "from sweep.launch.child import preload_modules\n"
        "import os; os.environ['PYTORCH_NVML_BASED_CUDA_CHECK'] = '1'\n"
        "ctx = mp.get_context('forkserver')\n"
        "ctx.set_forkserver_preload(preload_modules(True))\n"
        "q = ctx.Queue(); c = ctx.Process(target=probe, args=(q,)); c.start()\n"
        "print(q.get(timeout=200)); c.join()\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{os.getcwd()}"}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "(True, 'full', [], True, True)", out.stderr[
        -3000:
    ]
