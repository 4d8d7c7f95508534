"""`make bench` part 6: the kernel switches, each against the same harness trial without it.

    python -m sweep.bench --only kernels              # on CPU: fused AdamW, torch.compile

A round runs the trial with the switch and without it in fresh processes, on CPU both at once on
their own halves of the cores (swapped every round), as the throughput part pairs its sides.
Switches that need a GPU (Liger's fused kernels, flash-attention) are listed as not measured on
a host without one.
"""

from __future__ import annotations

import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sweep.bench.paired import core_halves, harness_trial, live_store, steady_rate
from sweep.settings import hardware
from sweep.settings.compose import compose
from sweep.settings.cpus import CPUS_ENV
from sweep.settings.schema import Config
from sweep.study.points import merge_overrides, slug

# (switch, its overrides on, off, the approaches it is measured on, needs a GPU)
SWITCHES: list[tuple[str, list[str], list[str], list[str], bool]] = [
    ("fused AdamW", ["train.optimizer=adamw_torch_fused"], ["train.optimizer=adamw_torch"],
     ["full", "lora r=16"], False),
    ("chunked loss", ["train.loss_impl=chunked"], ["train.loss_impl=full"],
     ["full", "lora r=16"], False),
    ("torch.compile", ["train.compile=true"], [], ["lora r=16"], False),
    ("Liger kernels", ["train.liger=true"], [], ["full", "lora r=16"], True),
    ("flash-attention 2", ["model.attn_implementation=flash_attention_2"], [], ["lora r=16"],
     True),
]  # fmt: skip
APPROACH = {"full": ["method=full"], "lora r=16": ["method=lora", "method.r=16"]}


def _side(cfg: Config, work: Path, cpus: str | None, parent: str) -> dict[str, Any]:
    return harness_trial(cfg, work, {CPUS_ENV: cpus} if cpus else None, parent)


def pair(
    base: list[str], switched: list[str], work: Path, i: int, parent: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One round: the trial without and with the switch (at once on CPU, cores swapped every
    round; one after the other on a GPU, the order alternating)."""
    off_cfg, on_cfg = compose(base), compose(switched)  # here: Hydra is not thread-safe
    halves = core_halves()
    if halves is None:
        first, second = (off_cfg, on_cfg) if i % 2 == 0 else (on_cfg, off_cfg)
        a = _side(first, work / f"a{i}", None, parent)
        b = _side(second, work / f"b{i}", None, parent)
        return (a, b) if i % 2 == 0 else (b, a)
    mine, theirs = halves if i % 2 == 0 else halves[::-1]
    with ThreadPoolExecutor(1) as pool:
        on = pool.submit(_side, on_cfg, work / f"on{i}", mine, parent)
        off = _side(off_cfg, work / f"off{i}", theirs, parent)
        return off, on.result()


def kernels(user: list[str], steps: int, repeats: int, work: Path) -> list[dict[str, Any]]:
    """Per switch and approach: tokens/s with / without the switch, per round and median."""
    parent = live_store(work)
    gpu = hardware.gpu_present()
    rows = []
    for switch, extra, without, approaches, needs_gpu in SWITCHES:
        for approach in approaches:
            row: dict[str, Any] = {"switch": switch, "approach": approach, "overrides": extra,
                                   "without": without}  # fmt: skip
            if needs_gpu and not gpu:
                rows.append({**row, "with / without": None, "note": "needs a CUDA GPU"})
                continue
            trial = [*APPROACH[approach], f"train.steps={steps}", "eval.size=2", "eval.base=false"]
            base = merge_overrides(user, trial, without)
            switched = merge_overrides(base, extra)
            ratios, on_rates, off_rates = [], [], []
            for i in range(repeats):
                print(f"[bench] kernels {switch}, {approach}: round {i + 1}/{repeats}", flush=True)
                off, on = pair(base, switched, work / slug(f"{switch}-{approach}"), i, parent)
                off_rates.append(steady_rate(off))
                on_rates.append(steady_rate(on))
                ratios.append(on_rates[-1] / off_rates[-1])
                print(f"[bench]   round ratio {ratios[-1]:.3f}", flush=True)
            rows.append(
                {
                    **row,
                    "with / without": statistics.median(ratios),
                    "round ratios": " ".join(f"{r:.3f}" for r in ratios),
                    "tokens/s without (median)": statistics.median(off_rates),
                    "tokens/s with (median)": statistics.median(on_rates),
                    "note": "",
                }
            )
    return rows
