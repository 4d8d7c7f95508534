"""What the trial server imports on a GPU host: the whole trial module, with CUDA left alone.

The fork server (sweep.launch.child) runs `preload` once, by importing sweep.launch.gpu_server; every trial
forked from it then starts with torch, transformers, peft and bitsandbytes already imported,
as on CPU.

bitsandbytes asks every device for its compute capability when it is imported, and torch answers
by initializing CUDA; a process forked after CUDA is initialized cannot use CUDA. So while the
server imports, `torch.cuda.get_device_capability` is answered from NVML (which creates no CUDA
context) and any other attempt to initialize CUDA is refused. If NVML cannot answer, or an import
still wants CUDA, the server keeps only `SAFE` (imports that never touch bitsandbytes) and says so
in one line; each trial then imports the rest itself (a few seconds per trial, nothing else lost).
SWEEP_PRELOAD=safe asks for that fallback outright.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

# Imports that neither import bitsandbytes nor initialize CUDA: the fallback.
SAFE = [
    "torch",
    "accelerate",
    "datasets",
    "transformers.modeling_utils",
    "transformers.generation",
    "sweep.trial.data",
    "sweep.trial.batches",
    "sweep.trial.evaluate",
    "sweep.planning.ledger",
    "sweep.trial.measure",
    "sweep.trial.methods",
    "sweep.trial.models",
    "sweep.planning.plan",
    "sweep.results.record",
]
# everything a trial imports: peft, bitsandbytes, Trainer, ..., and MLflow for its live run, with
# the SQL store its client opens (MLflow imports that lazily: 0.8 s in every trial on 2 cores)
FULL = ["sweep.trial.run", "sweep.results.tracking", "mlflow.store.tracking.sqlalchemy_store"]

refused: list[str] = []  # who tried to initialize CUDA during the preload (file:line)
outcome = "not run"  # "full" | "safe: <why>"


def nvml_capability(device: Any = None) -> tuple[int, int]:
    """A CUDA device's compute capability from NVML, as torch.cuda.get_device_capability gives it
    (device: a visible index, a torch.device or torch.cuda.device; CUDA_VISIBLE_DEVICES honoured),
    without creating a CUDA context."""
    import pynvml
    import torch

    idx = getattr(device, "idx", device)  # torch.cuda.device(i) holds its index as .idx
    if isinstance(idx, torch.device):
        idx = idx.index
    idx = 0 if idx is None else int(idx)
    to_nvml = getattr(torch.cuda, "_get_nvml_device_index", None)
    nvml_index = to_nvml(idx) if to_nvml else idx
    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(nvml_index)
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
    finally:
        pynvml.nvmlShutdown()
    return int(major), int(minor)


def _caller(torch_dir: str) -> str:
    """file:line of the innermost frame outside torch and this module: who asked for CUDA."""
    for frame in reversed(traceback.extract_stack()):
        if not frame.filename.startswith(torch_dir) and frame.filename != __file__:
            return f"{frame.filename}:{frame.lineno}"
    return "?"


@contextmanager
def cuda_answered_by_nvml(capability: Callable[..., tuple[int, int]]) -> Iterator[None]:
    """While inside: the compute capability comes from `capability`, and initializing CUDA raises
    (the caller's file and line are kept in `refused`). Both are patched where torch defines and
    binds them (torch.cuda, its memory and random modules, torch._C._cuda_init); a module that
    binds one meanwhile keeps a wrapper that, once outside, calls torch's own again."""
    import torch

    inside = [True]

    def refuse(*args: Any, **kwargs: Any) -> None:
        refused.append(_caller(os.path.dirname(torch.__file__)))
        raise RuntimeError("the trial server must not initialize CUDA")

    def switch(original: Callable[..., Any], replacement: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            return (replacement if inside[0] else original)(*args, **kwargs)

        return call

    patches = [(torch.cuda, "get_device_capability", capability)]
    for module in (torch.cuda, torch.cuda.memory, torch.cuda.random):
        if not torch.cuda.is_initialized() and hasattr(module, "_lazy_init"):
            patches.append((module, "_lazy_init", refuse))
    if hasattr(torch._C, "_cuda_init") and not torch.cuda.is_initialized():
        patches.append((torch._C, "_cuda_init", refuse))
    saved = [(module, name, getattr(module, name)) for module, name, _ in patches]
    for (module, name, replacement), (_, _, original) in zip(patches, saved, strict=True):
        setattr(module, name, switch(original, replacement))
    try:
        yield
    finally:
        inside[0] = False
        for module, name, original in saved:
            setattr(module, name, original)


def preload(
    full: list[str] = FULL,
    safe: list[str] = SAFE,
    capability: Callable[..., tuple[int, int]] = nvml_capability,
) -> str:
    """Import `full` with CUDA answered by NVML, or only `safe` where that cannot be done (or
    SWEEP_PRELOAD=safe asks for it). Returns the outcome ("full", or "safe: <why>"); never raises:
    the fork server would die with it, and every trial after it."""
    global outcome
    import torch

    for name in safe:
        importlib.import_module(name)
    try:
        if os.environ.get("SWEEP_PRELOAD") == "safe":
            raise RuntimeError("SWEEP_PRELOAD=safe")
        for i in range(torch.cuda.device_count()):  # NVML must answer first: bitsandbytes would
            capability(i)  # swallow an error here and load its CPU library instead
        with cuda_answered_by_nvml(capability):
            for name in full:
                importlib.import_module(name)
        outcome = "full"
    except Exception as e:  # noqa: BLE001 - any failure leaves the trials to import the rest
        outcome = f"safe: {type(e).__name__}: {e}".splitlines()[0]
        print(
            f"[sweep] trial server: each trial imports peft/bitsandbytes ({outcome[6:]})",
            file=sys.stderr,
        )
    if refused and outcome == "full":  # asked for CUDA, and went on when refused
        print(
            f"[sweep] warning: the trial server was asked for CUDA at {refused[0]}; if trials "
            "then fail on CUDA, run with SWEEP_PRELOAD=safe",
            file=sys.stderr,
        )
    return outcome
