"""Measurement: phase clocks, peak host memory, and on CUDA the NVML and allocator peaks.

    python -m pytest tests/trial/test_measure.py

Definitions (they are part of the product, see README "What the numbers mean"):
- peak_host_rss_gib: peak resident memory of this (trial) process, per phase (VmHWM, reset
  between phases through /proc/self/clear_refs where the kernel allows it).
- peak_vram_gib: on CUDA, the maximum over the phase of this process's device memory as NVML
  reports it, sampled by a background thread; alongside it torch.cuda.max_memory_allocated and
  max_memory_reserved, reset at the start of each phase. The CUDA context's own memory (NVML,
  before any tensor) is recorded separately as cuda_context_gib. NVML finds the device by its
  UUID (CUDA_VISIBLE_DEVICES renumbers devices for CUDA, not for NVML) and the process by its
  PID; where it lists no such PID (a container with its own PID namespace) the device's used
  memory less what was used before this process's CUDA context counts instead (vram_source
  says which: process or device).
Clocks synchronize the device before they are read.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psutil
import torch

from sweep.settings import hardware
from sweep.settings.schema import GpuClass

GIB = 1024**3


def peak_tflops(device_name: str, precision: str, gpus: list[GpuClass]) -> float | None:
    """The dense peak TFLOP/s of the device's GPU class (sweep.planning.cost.device_class: "RTX 4090" in
    "NVIDIA GeForce RTX 4090") for the precision's matmuls (fp32: no TF32); None if unknown."""
    from sweep.planning.cost import device_class

    g = device_class(device_name, gpus)
    if g is None:
        return None
    return (g.fp32_tflops if precision == "fp32" else g.bf16_tflops) or None


def step_clock(step_s: list[float], ends: list[float]) -> list[list[float]]:
    """[start, end] of each step in Unix seconds, from its duration and its end: when each step
    ran, to line a run up with what else ran on the machine then (bench.paired.overlap_rate)."""
    return [[round(e - s, 3), round(e, 3)] for s, e in zip(step_s, ends, strict=True)]


def sync() -> None:
    """Wait for queued device work so that a clock reading covers it."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def host_peak_rss_bytes() -> int:
    """Peak resident set size of this process since start or the last reset."""
    kib = _status_kib("VmHWM")
    if kib is None:  # not Linux: lifetime peak (ru_maxrss is KiB on Linux, bytes on macOS)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if os.uname().sysname == "Darwin" else peak * 1024
    return kib * 1024


def host_rss_bytes() -> int:
    return psutil.Process().memory_info().rss


def reset_host_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux 'echo 5 > clear_refs'); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def nvml_handle(nvml: Any, uuid: str) -> Any:
    """NVML's handle of the device with this UUID ('GPU-...'; a MIG instance's is 'MIG-...')."""
    try:
        return nvml.nvmlDeviceGetHandleByUUID(uuid)
    except nvml.NVMLError:
        if not uuid.startswith("GPU-"):
            raise
        return nvml.nvmlDeviceGetHandleByUUID("MIG-" + uuid.removeprefix("GPU-"))


class NvmlSampler:
    """Background thread sampling this process's device memory through NVML. Made before the
    CUDA context exists (the device's used memory then is the baseline), `settle()` after it."""

    def __init__(self, uuid: str, interval_s: float = 0.02) -> None:
        import pynvml

        self._nvml = pynvml
        pynvml.nvmlInit()
        self._handle = nvml_handle(pynvml, uuid)
        self._interval = interval_s
        self._pid = os.getpid()
        self.baseline_bytes = self.device_used_bytes()
        self.source = "process"  # or "device": see settle()
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def device_used_bytes(self) -> int:
        """Memory in use on the whole device, by every process."""
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)

    def process_bytes(self) -> int | None:
        """This PID's device memory; None where NVML lists no such PID with a figure (another
        PID namespace, or a driver that hides per-process use)."""
        procs = self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
        mine = [p.usedGpuMemory for p in procs if p.pid == self._pid and p.usedGpuMemory]
        return sum(mine) if mine else None

    def settle(self) -> str:
        """Once the CUDA context exists: measure by this PID where NVML lists it, else by the
        device less the baseline; returns which ("process" or "device")."""
        self.source = "process" if self.process_bytes() is not None else "device"
        return self.source

    def used_bytes(self) -> int:
        """Device memory this process holds now, by `source`."""
        if self.source == "process":
            return self.process_bytes() or 0
        return max(0, self.device_used_bytes() - self.baseline_bytes)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self.used_bytes())
            self._stop.wait(self._interval)

    def start(self) -> None:
        self.peak_bytes = self.used_bytes()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> int:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self.used_bytes())
        return self.peak_bytes


@dataclass
class Phase:
    seconds: float = 0.0
    peak_host_rss_gib: float = 0.0
    peak_vram_gib: float | None = None
    peak_alloc_gib: float | None = None
    peak_reserved_gib: float | None = None


@dataclass
class Meter:
    """Times named phases and records their memory peaks: `with meter.phase("train"): ...`."""

    cuda: bool = field(default_factory=torch.cuda.is_available)
    phases: dict[str, Phase] = field(default_factory=dict)
    cuda_context_gib: float | None = None
    vram_source: str | None = None  # process | device (NvmlSampler.settle); None without NVML
    _nvml: NvmlSampler | None = None

    def start_device(self) -> None:
        """Create the CUDA context and record its memory as the baseline (no-op on CPU)."""
        if not self.cuda:
            return
        torch.cuda.init()
        try:  # before the context: the device's memory in use without this process
            self._nvml = NvmlSampler(hardware.device_uuid(torch.cuda.current_device()))
        except Exception:  # NVML missing or not permitted: allocator numbers still stand
            self._nvml = None
        torch.zeros(1, device="cuda")
        sync()
        try:
            if self._nvml is not None:
                self.vram_source = self._nvml.settle()
                self.cuda_context_gib = self._nvml.used_bytes() / GIB
        except Exception:
            self._nvml, self.vram_source = None, None

    @contextmanager
    def phase(self, name: str) -> Iterator[Phase]:
        rec = Phase()
        self.phases[name] = rec
        reset_host_peak()
        if self.cuda:
            sync()
            torch.cuda.reset_peak_memory_stats()
            if self._nvml is not None:
                self._nvml.start()
        start = time.perf_counter()
        try:
            yield rec
        finally:
            sync()
            rec.seconds = time.perf_counter() - start
            rec.peak_host_rss_gib = host_peak_rss_bytes() / GIB
            if self.cuda:
                rec.peak_alloc_gib = torch.cuda.max_memory_allocated() / GIB
                rec.peak_reserved_gib = torch.cuda.max_memory_reserved() / GIB
                if self._nvml is not None:
                    rec.peak_vram_gib = self._nvml.stop() / GIB

    def summary(self) -> dict[str, float | str | None]:
        """Flat metrics: <phase>_s per phase, process-wide peaks, and the train-phase device peaks."""
        out: dict[str, float | str | None] = {f"{k}_s": v.seconds for k, v in self.phases.items()}
        out["total_s"] = sum(v.seconds for v in self.phases.values())
        out["peak_host_rss_gib"] = max(
            (v.peak_host_rss_gib for v in self.phases.values()), default=0.0
        )
        train = self.phases.get("train")
        out["train_peak_host_rss_gib"] = train.peak_host_rss_gib if train else None
        out["peak_vram_gib"] = train.peak_vram_gib if train else None
        out["peak_alloc_gib"] = train.peak_alloc_gib if train else None
        out["peak_reserved_gib"] = train.peak_reserved_gib if train else None
        out["cuda_context_gib"] = self.cuda_context_gib
        out["vram_source"] = self.vram_source
        return out
