import os
import subprocess
import sys
import time
import types
from types import SimpleNamespace

import pytest
import torch

from sweep.planning.plan import load_gpus
from sweep.results.record import environment
from sweep.trial.measure import GIB, Meter, nvml_handle


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
from sweep.trial.measure import GIB, Meter, host_rss_bytes, reset_host_peak
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


# ---------------------------------------------------------------- NVML, faked: no GPU here

MIB = 1024**2


class FakeNvml(types.ModuleType):
    """pynvml over made-up devices: UUID -> memory in use and (pid, bytes) processes."""

    class NVMLError(Exception):
        pass

    def __init__(self, devices: dict[str, dict]) -> None:
        super().__init__("pynvml")
        self.devices = devices
        self.opened: list[str] = []

    def nvmlInit(self) -> None:
        pass

    def nvmlSystemGetDriverVersion(self) -> str:
        return "570.1"

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        raise AssertionError("opened by index: the wrong GPU under CUDA_VISIBLE_DEVICES")

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:
        self.opened.append(uuid)
        if uuid not in self.devices:
            raise self.NVMLError("Not Found")
        return uuid

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> SimpleNamespace:
        return SimpleNamespace(used=self.devices[handle]["used"])

    def nvmlDeviceGetComputeRunningProcesses(self, handle: str) -> list[SimpleNamespace]:
        return [SimpleNamespace(pid=p, usedGpuMemory=b) for p, b in self.devices[handle]["procs"]]


@pytest.fixture
def fake_gpu(monkeypatch):
    """CUDA device 0 of this process is NVML's second GPU (CUDA_VISIBLE_DEVICES=2); creating
    the CUDA context adds 300 MiB on it, listed under `pid` (another namespace's when not ours)."""
    other = {"used": 5 * GIB, "procs": [(1, 5 * GIB)]}
    ours = {"used": 1 * GIB, "procs": [(2, 1 * GIB)]}  # a neighbour already on our GPU
    nvml = FakeNvml({"GPU-0000aaaa": other, "GPU-2222bbbb": ours})
    nvml.pid = os.getpid()

    def create_context(*args, **kwargs):
        ours["used"] += 300 * MIB
        ours["procs"].append((nvml.pid, 300 * MIB))

    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "init", lambda: None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    props = SimpleNamespace(name="NVIDIA H100 80GB HBM3", uuid="2222bbbb", total_memory=80 * GIB)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setattr(torch, "zeros", create_context)
    monkeypatch.setattr("sweep.trial.measure.sync", lambda: None)
    return nvml, ours


def test_nvml_opens_the_device_by_uuid_and_measures_this_pid(fake_gpu):
    nvml, ours = fake_gpu
    meter = Meter(cuda=True)
    meter.start_device()
    assert nvml.opened == ["GPU-2222bbbb"]  # not NVML's device 0, not by index
    assert meter.vram_source == "process" and meter.summary()["vram_source"] == "process"
    assert meter.cuda_context_gib * GIB == 300 * MIB  # the neighbour's 1 GiB is not ours
    sampler = meter._nvml
    sampler.start()
    ours["procs"][-1] = (nvml.pid, 2 * GIB)
    ours["used"] += 5 * GIB  # the neighbour grows too: not counted
    assert sampler.stop() == 2 * GIB


def test_nvml_falls_back_to_device_memory_when_the_pid_is_not_listed(fake_gpu):
    nvml, ours = fake_gpu
    nvml.pid = 4242  # a container: NVML lists the host's PID for our context
    meter = Meter(cuda=True)
    meter.start_device()
    assert meter.vram_source == "device"
    assert meter.cuda_context_gib * GIB == 300 * MIB  # device used less the 1 GiB before us
    sampler = meter._nvml
    sampler.start()
    ours["used"] += 2 * GIB
    assert sampler.stop() == 300 * MIB + 2 * GIB


def test_nvml_finds_a_mig_instance_by_its_uuid(fake_gpu):
    nvml, _ = fake_gpu
    nvml.devices["MIG-2222bbbb"] = nvml.devices.pop("GPU-2222bbbb")
    assert nvml_handle(nvml, "GPU-2222bbbb") == "MIG-2222bbbb"
    with pytest.raises(FakeNvml.NVMLError):
        nvml_handle(nvml, "GPU-99999999")


def test_record_meta_names_the_device_by_uuid_class_and_visible_devices(fake_gpu):
    meta = environment(load_gpus())  # report.gpus
    assert meta["device"] == "cuda" and meta["device_uuid"] == "GPU-2222bbbb"
    assert meta["device_class"] == "H100 80GB" and meta["device_index"] == 0
    assert meta["visible_devices"] == ["2"] and meta["driver"] == "570.1"
    assert environment()["device_class"] is None  # no report.gpus given: no class


def test_the_live_device_tag_names_the_visible_gpu_not_gpu_0(monkeypatch):
    from sweep.study import live

    class Names(FakeNvml):
        def nvmlDeviceGetCount(self) -> int:
            return 2

        def nvmlShutdown(self) -> None:
            pass

        def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
            return ["GPU-0000aaaa", "GPU-2222bbbb"][index]

        def nvmlDeviceGetName(self, handle: str) -> str:
            return {"GPU-0000aaaa": "NVIDIA A10G", "GPU-2222bbbb": "NVIDIA H100 80GB HBM3"}[handle]

    monkeypatch.setitem(sys.modules, "pynvml", Names({"GPU-0000aaaa": {}, "GPU-2222bbbb": {}}))
    monkeypatch.setattr("sweep.settings.hardware.gpu_present", lambda: True)
    for visible, name in [("1", "H100"), ("GPU-2222bbbb,0", "H100"), ("0", "A10G")]:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        assert name in live.device_tags()["device_name"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert "A10G" in live.device_tags()["device_name"]
