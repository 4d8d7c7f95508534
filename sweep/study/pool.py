"""One sweep over a machine's GPUs: a worker per GPU (or per group of train.gpus GPUs), each
with its own CUDA_VISIBLE_DEVICES, all on the sweep's one Optuna storage; the report once at the
end, from all of them.

    make sweep GPUS=0,1,2,3                       # four workers, one GPU each
    make sweep GPUS=0,1,2,3 ARGS="train.gpus=2"   # two workers, each trial on two GPUs

The workers are the same `python -m sweep run` a user would start by hand (make worker), so a
pool resumes, retries and skips exactly as a sweep does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from typing import IO

from sweep.results.report import finish
from sweep.settings import hardware
from sweep.settings.compose import ConfigError
from sweep.settings.schema import Config
from sweep.trial.preflight import warn

POOL_ENV = "SWEEP_POOL_WORKER"  # set in a pool's workers: the pool writes the report


def devices(spec: object) -> list[str]:
    """sweep.gpus as CUDA_VISIBLE_DEVICES entries: [0, 1], "0,1" or [GPU-<uuid>, ...]."""
    items = spec if isinstance(spec, list | tuple) else str(spec or "").split(",")
    out = [str(x).strip() for x in items if str(x).strip()]
    if len(set(out)) != len(out):
        raise ConfigError(f"sweep.gpus: {out} names a GPU twice; list each once")
    return out


def groups(gpus: list[str], per_trial: int) -> list[list[str]]:
    """The workers' devices: consecutive groups of train.gpus; a remainder is left idle."""
    if len(gpus) < per_trial:
        raise ConfigError(
            f"sweep.gpus: {len(gpus)} GPU(s) {gpus}, but train.gpus={per_trial} needs at least "
            f"{per_trial}; list more GPUs or lower train.gpus"
        )
    n = len(gpus) // per_trial
    if len(gpus) % per_trial:
        warn(f"sweep.gpus: {gpus[n * per_trial :]} left idle (train.gpus={per_trial} per trial)")
    return [gpus[i * per_trial : (i + 1) * per_trial] for i in range(n)]


def check_devices(gpus: list[str]) -> None:
    """Each listed index exists on this host (UUIDs are left to CUDA); on a host without a GPU
    the workers run on the CPU, which is how the tests run a pool."""
    if not hardware.gpu_present():
        warn(f"sweep.gpus={gpus}: no GPU on this host; {len(gpus)} workers share its CPU")
        return
    import pynvml

    pynvml.nvmlInit()
    try:
        count = pynvml.nvmlDeviceGetCount()
    finally:
        pynvml.nvmlShutdown()
    bad = [g for g in gpus if g.isdigit() and int(g) >= count]
    if bad:
        raise ConfigError(f"sweep.gpus: {bad} not on this host (GPUs 0..{count - 1})")


def _relay(stream: IO[bytes], prefix: str) -> None:
    for line in stream:
        sys.stdout.write(f"{prefix} {line.decode(errors='replace')}")
        sys.stdout.flush()


def run_pool(cfg: Config, overrides: list[str]) -> int:
    """Start the workers, relay their output line by line, wait, then write the report."""
    gpus = devices(cfg.sweep.gpus)
    check_devices(gpus)
    plan = groups(gpus, cfg.train.gpus)
    start = time.time()
    print(f"[pool] {cfg.experiment}: {len(plan)} workers on GPUs {plan}", flush=True)
    worker_args = [*overrides, "sweep.gpus=[]"]
    procs, relays = [], []
    for group in plan:
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(group), POOL_ENV: "1"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "sweep", "run", *worker_args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        relay = threading.Thread(
            target=_relay, args=(proc.stdout, f"[gpu {','.join(group)}]"), daemon=True
        )
        relay.start()
        procs.append(proc)
        relays.append(relay)
    try:
        codes = [p.wait() for p in procs]
    except BaseException:  # Ctrl-C: every worker stops; a re-run resumes
        for p in procs:
            p.terminate()
        raise
    for relay in relays:
        relay.join()
    failed = [",".join(g) for g, c in zip(plan, codes, strict=True) if c]
    if failed:
        print(f"[pool] workers on GPUs {failed} stopped with an error (above); the others' "
              "trials are kept, run the same command again to finish", flush=True)  # fmt: skip
    # the report over every worker's trials, as a sweep's
    return finish(cfg, overrides, start, who="pool") or (1 if failed else 0)


def in_pool() -> bool:
    """This sweep is one of a pool's workers (the pool writes the report)."""
    return os.environ.get(POOL_ENV) == "1"
