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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sweep.trial import ranks

LOG_FILE = "launch.log"


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
    """The launch details every rank reads (sweep.trial.ranks.read_launch)."""
    (trial_dir / ranks.LAUNCH_FILE).write_text(json.dumps(details, indent=1))


def run(
    trial_dir: Path,
    processes: int,
    details: dict[str, Any],
    env: dict[str, str],
    timeout_s: int,
    memory_limit_gib: float,
    started: Callable[[int], None] | None = None,
) -> int | None:
    """Run the trial in `processes` processes and wait; its exit code (None: killed at the
    time-out). Output goes to the console and to <trial dir>/launch.log."""
    write_launch(trial_dir, {**details, "memory_limit_gib": memory_limit_gib})
    package_root = str(Path(__file__).resolve().parents[2])  # the same code in every rank
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
        if started is not None:  # the sweep may stop it (SIGTERM: every rank checkpoints)
            started(proc.pid)
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
