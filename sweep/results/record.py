"""The result record: one JSON per trial with run info, train info and meta info.

    python -c "from sweep.results.record import load; print(load('outputs/default/trials/0000-lora_r_16/result.json'))"

Three blocks, as in PEFT's method_comparison results:
- run:   what was asked (label, method, rank, quantization, resolved config, its hash, seed)
- train: what happened (status, error, metrics, per-step loss)
- meta:  where it ran (versions, git commit and dirty flag, device with its UUID and GPU class,
         the visible devices, driver/CUDA, CPU, and the memory limit it was judged against)
Metric names, units and directions: sweep/settings/metrics.py.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from sweep.planning import recipe
from sweep.settings.compose import as_dict, config_hash
from sweep.settings.schema import Config, GpuClass
from sweep.settings.validate import resolve_packing

# preempted: stopped by SIGTERM with a checkpoint, which the next run of the sweep resumes
STATUSES = ("ok", "oom", "diverged", "pruned", "failed", "skipped_predicted_oom", "preempted")

PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "bitsandbytes",
    "accelerate",
    "optuna",
    "mlflow",
    "hydra-core",
    "reasoning-gym",
    "nvidia-ml-py",
)


@dataclass
class TrialResult:
    run: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return self.train.get("status", "failed")

    @property
    def metrics(self) -> dict[str, Any]:
        return self.train.setdefault("metrics", {})

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False, default=str)


def write_whole(path: Path, write: Callable[[Path], object], tmp_dir: Path | None = None) -> None:
    """`write(tmp)`, then swap tmp in for `path`: a crash never leaves half a file, and two
    processes writing one file each leave a whole one. `tmp_dir` (same filesystem) keeps the
    temporary file out of a folder someone else may be reading, e.g. uploading to MLflow."""
    tmp = (tmp_dir or path.parent) / f".{path.name}.{os.getpid()}.tmp"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:  # disk full, interrupted: no half file, no temporary left behind
        tmp.unlink(missing_ok=True)
        raise


def save(result: TrialResult, path: str | Path) -> Path:
    """Write the record whole (write_whole)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_whole(path, lambda tmp: tmp.write_text(result.to_json()))
    return path


def load(path: str | Path) -> TrialResult:
    data = json.loads(Path(path).read_text())
    return TrialResult(
        run=data.get("run", {}), train=data.get("train", {}), meta=data.get("meta", {})
    )


def label(cfg: Config) -> str:
    """Short human name of the approach: the sweep point's (`label`, every varying axis but
    the seed, e.g. 'lora lr=0.001 r=4'), else 'full', 'lora r=16', 'qlora r=16'."""
    m = cfg.method
    return cfg.label or (m.name if m.name == "full" else f"{m.name} r={m.r}")


def run_info(cfg: Config) -> dict[str, Any]:
    m, rec = cfg.method, recipe.of(cfg)
    return {
        "label": label(cfg),
        "experiment": cfg.experiment,
        "model": cfg.model.name,
        "task": cfg.dataset.task_name,  # what it trains on (the dataset config's name: dataset)
        "dataset": cfg.dataset.name,
        "method": m.name,
        "rank": None if m.name == "full" else m.r,
        "alpha": None if m.name == "full" else m.lora_alpha,
        "lr": m.lr,
        "quant": f"{m.quant.type}-{m.quant.bits}bit" if m.quant else None,
        "precision": cfg.train.precision,
        "optimizer": rec.optimizer,
        "base_dtype": rec.base_dtype,
        "trainable_dtype": rec.trainable_dtype,
        "embed_dtype": rec.embed_dtype,  # a 4-bit base's embeddings and output layer
        "loss_impl": rec.loss,
        "optimizer_in_backward": rec.optimizer_in_backward,
        "gradient_checkpointing": cfg.train.gradient_checkpointing,
        "attention": cfg.model.attn_implementation,
        "packing": resolve_packing(cfg),  # train.packing resolved: batches packed into rows
        "seed": cfg.train.seed,
        "config_hash": config_hash(cfg),
        "config": as_dict(cfg),
    }


def failed(
    run: dict[str, Any],
    status: str,
    error: str,
    gpus: Sequence[GpuClass] = (),
    **metrics: Any,
) -> TrialResult:
    """A record for a trial that did not finish normally (the sweep records it and goes on);
    `gpus` (report.gpus) names the device's class in its meta."""
    assert status in STATUSES, status
    return TrialResult(
        run=run,
        train={"status": status, "error": error, "metrics": dict(metrics)},
        meta=environment(gpus),
    )


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def visible_devices() -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as a list (indices or UUIDs, as given); None when it is not set."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    return None if value is None else [d.strip() for d in value.split(",") if d.strip()]


def environment(gpus: Sequence[GpuClass] = ()) -> dict[str, Any]:
    """Versions, git state and hardware of this process (the record's meta block); the device's
    class is its GPU class in `gpus` (report.gpus, matched as sweep.planning.cost.device_class does)."""
    import torch

    from sweep.planning.cost import device_class

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    meta: dict[str, Any] = {
        "versions": versions,
        "python": platform.python_version(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(dirty) if dirty is not None else None,
        "host": platform.node(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
        "device_name": cpu_model(),
        "device_uuid": None,
        "device_class": None,
        "visible_devices": visible_devices(),
        "cuda": None,
        "driver": None,
    }
    if torch.cuda.is_available():
        meta.update(cuda_device(torch.cuda.current_device()))
        gpu = device_class(meta["device_name"], list(gpus))
        meta["device_class"] = gpu.name if gpu else None
        meta["cuda"] = torch.version.cuda
        try:
            import pynvml

            pynvml.nvmlInit()
            meta["driver"] = pynvml.nvmlSystemGetDriverVersion()
        except Exception:
            pass
    return meta


def cuda_device(index: int) -> dict[str, Any]:
    """CUDA device `index` of this process: its name, UUID (NVML's form), index and memory."""
    import torch

    from sweep.settings.hardware import device_uuid

    props = torch.cuda.get_device_properties(index)
    return {
        "device": "cuda",
        "device_name": props.name,
        "device_uuid": device_uuid(index),
        "device_index": index,
        "device_memory_gib": props.total_memory / 1024**3,
    }
