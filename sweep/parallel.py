"""One trial on several devices: accelerate's launcher starts a process per device (DDP or FSDP
through transformers' Trainer); every rank runs the whole trial and rank 0 records it.

    python -m sweep trial model=tiny_llama train.gpus=2                 # on CPU: gloo processes
    python -m sweep run sweep=default train.gpus=2 train.parallel=fsdp  # each trial on 2 GPUs

The sweep side (`run`) starts `accelerate launch --multi_gpu --num_processes N -m sweep.trial
<trial dir>`; the launch's details (start time, the live MLflow run, pruning) travel in
`<trial dir>/launch.json` and the pruning storage URL in the environment, never on a command
line. On a CPU host the processes talk over gloo: that is how the tests run it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

LAUNCH_FILE = "launch.json"
LOG_FILE = "launch.log"
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


def free_port() -> int:
    """A TCP port nobody listens on now: the rendezvous of one trial's processes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def command(trial_dir: Path, processes: int, port: int) -> list[str]:
    """`accelerate launch` of one trial over `processes` devices (gloo processes on CPU)."""
    return [
        str(Path(sys.executable).with_name("accelerate")),
        "launch",
        "--multi_gpu",  # on a CPU host too: the trial asks for gloo (TrainingArguments use_cpu)
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",  # the trial's own precision settings decide (TrainingArguments)
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
        "-m",
        "sweep.trial",
        str(trial_dir),
    ]


def write_launch(trial_dir: Path, details: dict[str, Any]) -> None:
    (trial_dir / LAUNCH_FILE).write_text(json.dumps(details, indent=1))


def read_launch(trial_dir: Path) -> dict[str, Any]:
    """The launch details a multi-process trial's ranks read (empty for a trial run by hand)."""
    path = trial_dir / LAUNCH_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def run(
    trial_dir: Path,
    processes: int,
    details: dict[str, Any],
    env: dict[str, str],
    timeout_s: int,
    memory_limit_gib: float,
) -> int | None:
    """Run the trial in `processes` processes and wait; its exit code (None: killed at the
    time-out). Output goes to the console and to <trial dir>/launch.log."""
    write_launch(trial_dir, {**details, "memory_limit_gib": memory_limit_gib})
    package_root = str(Path(__file__).resolve().parents[1])  # the same code in every rank
    path = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    env = {**env, "PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false"}
    with open(trial_dir / LOG_FILE, "wb") as log:
        proc = subprocess.Popen(
            command(trial_dir, processes, free_port()),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # one process group: a time-out kills every rank
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:  # rank 0 prints the trial's progress and summary
                log.write(line)
                if rank_zero_line(line):
                    sys.stdout.buffer.write(line)
                    sys.stdout.flush()
            return proc.wait(timeout=timeout_s or None)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            raise


def rank_zero_line(line: bytes) -> bool:
    """What reaches the console: not accelerate's notice about defaults, nor torch's warnings
    repeated by every rank (they stay in launch.log)."""
    text = line.decode(errors="replace")
    noise = ("were not passed to `accelerate launch`", "\t`--", "To avoid this warning")
    return not any(n in text for n in noise)


def last_error(trial_dir: Path) -> str:
    """The last line of the launch log that names an error, for a trial that left no record."""
    try:
        lines = (trial_dir / LOG_FILE).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    errors = [ln.strip() for ln in lines if "Error" in ln or "error:" in ln]
    return errors[-1][:300] if errors else ""


# ---------------------------------------------------------------- inside a rank

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
