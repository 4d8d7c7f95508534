import subprocess
import sys
import time

import pytest
import torch

from sweep.measure import Meter


def test_phases_are_timed_and_summarised():
    meter = Meter(cuda=False)
    with meter.phase("load"):
        time.sleep(0.05)
    with meter.phase("train"):
        time.sleep(0.1)
    s = meter.summary()
    assert 0.05 <= s["load_s"] < 0.5
    assert 0.1 <= s["train_s"] < 0.6
    assert s["total_s"] == pytest.approx(s["load_s"] + s["train_s"])
    assert s["peak_vram_gib"] is None  # CPU: host memory is the only memory figure


def test_host_peak_sees_an_allocation_and_resets():
    """In a fresh process (as a trial is): one that already freed big blocks can reuse resident
    pages for the next allocation without its RSS growing."""
    script = """
import torch
from sweep.measure import GIB, Meter, host_rss_bytes, reset_host_peak
meter = Meter(cuda=False)
with meter.phase("alloc"):
    before = host_rss_bytes()
    block = torch.ones(64 * 1024 * 1024 // 4)  # 64 MiB, touched
    block += 1
assert meter.phases["alloc"].peak_host_rss_gib * GIB >= before + 60 * 1024 * 1024, "peak missed"
del block
if reset_host_peak():  # Linux: the per-phase peak starts again from the current RSS
    with meter.phase("small"):
        pass
    assert meter.phases["small"].peak_host_rss_gib < meter.phases["alloc"].peak_host_rss_gib
print("ok")
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


@pytest.mark.gpu
def test_cuda_peaks_from_allocator_and_nvml():
    meter = Meter(cuda=True)
    meter.start_device()
    assert meter.cuda_context_gib is None or meter.cuda_context_gib > 0
    with meter.phase("train"):
        x = torch.empty(512 * 1024 * 1024, dtype=torch.uint8, device="cuda")  # 0.5 GiB
        x.fill_(1)
        time.sleep(0.2)
    del x
    s = meter.summary()
    assert s["peak_alloc_gib"] >= 0.5
    assert s["peak_reserved_gib"] >= s["peak_alloc_gib"]
    if s["peak_vram_gib"] is not None:
        assert s["peak_vram_gib"] >= 0.5
    with meter.phase("eval"):
        pass
    assert meter.phases["eval"].peak_alloc_gib < 0.5  # reset per phase
