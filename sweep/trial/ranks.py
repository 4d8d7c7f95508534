"""Inside a trial over several processes (train.gpus > 1): which rank this is, what the ranks
share, and saving or unsharding a model they hold together. Alone, a trial is rank 0 of 1.

    python -c "from sweep.trial import ranks; print(ranks.rank(), ranks.world())"

The launcher (sweep.launch.parallel) writes `<trial dir>/launch.json`, which every rank reads
(`read_launch`), and hands the pruning storage URL over in the environment (STORAGE_ENV).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

LAUNCH_FILE = "launch.json"


STORAGE_ENV = "SWEEP_TRIAL_STORAGE"  # the pruning storage URL of a multi-process trial


def rank() -> int:
    """This process's rank in a multi-process trial (0 alone)."""
    return int(os.environ.get("RANK", "0"))


def world() -> int:
    """How many processes train this trial (1 alone)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """Rank 0: the process that writes the record, the items and the MLflow run."""
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def _ready() -> bool:
    import torch.distributed as dist

    return world() > 1 and dist.is_available() and dist.is_initialized()


def gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (a list of one when alone or before training began)."""
    if not _ready():
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool) -> bool:
    """True on every rank when any rank says True (a stop decided on rank 0 reaches them all)."""
    return any(gather(bool(flag)))


def read_launch(trial_dir: Path) -> dict[str, Any]:
    """The launch details a multi-process trial's ranks read (empty for a trial run by hand)."""
    path = trial_dir / LAUNCH_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


PEAKS = ("peak_vram_gib", "peak_alloc_gib", "peak_reserved_gib", "train_peak_host_rss_gib",
         "peak_host_rss_gib")  # fmt: skip


def rank_info(metrics: dict[str, Any]) -> dict[str, Any]:
    """What one rank measured that differs between ranks: its device and its memory peaks."""
    import torch

    info: dict[str, Any] = {"rank": rank(), "device": "cpu"}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        info.update(device=props.name, device_uuid=str(getattr(props, "uuid", "")))
    return {**info, **{k: metrics.get(k) for k in PEAKS}}


def peaks_over(ranks: list[dict[str, Any]]) -> dict[str, Any]:
    """The trial's peaks: each the largest over its ranks (what every device must hold), and
    the world size."""
    out: dict[str, Any] = {"world_size": len(ranks)}
    for key in PEAKS:
        values = [r[key] for r in ranks if r.get(key) is not None]
        if values:
            out[key] = max(values)
    return out


def _fsdp_modules(model: Any) -> list[Any]:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def save(model: Any, out_dir: Path, save_one: Any) -> int:
    """Save the trained model or adapter with `save_one(model, dir)` on rank 0 (bytes written;
    0 on other ranks). Under FSDP every rank first joins in gathering the whole weights."""
    if not _fsdp_modules(model):
        return save_one(model, out_dir) if is_main() else 0
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    whole = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if not is_main():
        return 0
    model.save_pretrained(out_dir, state_dict=whole)
    return sum(f.stat().st_size for f in Path(out_dir).rglob("*") if f.is_file())


def unshard(model: Any) -> bool:
    """FSDP: gather the whole weights on every rank and keep them (evaluation then runs on
    each rank alone, with no collective per forward); False when the model is not sharded."""
    modules = _fsdp_modules(model)
    for m in modules:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    return bool(modules)
