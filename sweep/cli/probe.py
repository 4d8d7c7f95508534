"""make probe: a few real training steps per approach on this machine, the time model's
prediction beside them, and this machine's calibration for it.

    python -m sweep probe [model=smollm2_135m] [key=value ...]      # make probe [ARGS="..."]

For full FT, LoRA r=16 and QLoRA r=16 it runs two short harness trials (fresh processes, the
same Trainer as a sweep) at two batch sizes (`PROBE_BATCHES`). Step time grows with the tokens
of a step: the slope gives the MFU at this device's dense peak (report.gpus for a GPU; a short
matmul probe for the CPU) and the intercept the fixed cost per step. Printed: the step time
predicted before (conf/calibration.yaml, or an earlier probe) against the measured one, and the
planner's peak memory against the measured. The measured rates go to .cache/calibration.yaml,
which `make plan`, `make bench-plan` and the report read before the shipped table.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from sweep.planning import cost
from sweep.settings.compose import compose
from sweep.settings.errors import ConfigError
from sweep.settings.schema import GpuClass, default_cache_dir
from sweep.study.points import merge_overrides, slug

APPROACHES = {
    "full": ["method=full"],
    "lora": ["method=lora", "method.r=16"],
    "qlora": ["method=qlora", "method.r=16"],
}
PROBE_BATCHES = (2, 8)
STEPS = 12  # per trial: 3 warm-up steps, 9 measured
MATMUL_N = 2048


@dataclass
class Point:
    """One probe trial: its approach, batch, what a step took and held, and its FLOPs."""

    approach: str
    batch: int
    precision: str
    tokens: float  # non-padding tokens per step
    step_s: float  # median measured step
    flops_per_token: float
    peak_gib: float
    planned_gib: float


def matmul_tflops(seconds: float = 2.0, n: int = MATMUL_N) -> float:
    """This CPU's fp32 matmul rate (TFLOP/s): n x n products on every thread for ~`seconds`,
    the best of five rounds (the denominator of a CPU's MFU)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    (a @ b).sum()  # warm-up: threads and buffers
    best = 0.0
    for _ in range(5):
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 5:
            a @ b
            reps += 1
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start) / 1e12)
    return best


def this_device() -> GpuClass:
    """This machine's device as a tier: the GPU's class in report.gpus (by name, from NVML
    without starting CUDA), or the CPU with its measured fp32 matmul rate."""
    from sweep.planning.plan import load_gpus
    from sweep.study import live

    tags = live.device_tags()
    name = tags["device_name"]
    if tags["device"] == "cpu":
        peak = matmul_tflops()
        return GpuClass(name=f"cpu {name}", bf16_tflops=peak, fp32_tflops=peak)
    g = cost.device_class(name, load_gpus())
    if g is not None:
        return GpuClass(**{**g.__dict__, "name": name})
    raise ConfigError(f"GPU {name!r} is not in report.gpus; add it with its dense peak TFLOP/s")


def run_point(
    overrides: list[str], approach: str, batch: int, work: Path, rounds: int = 1
) -> Point:
    """Short harness trials (`rounds` of them): the quickest one's median step (a shared
    machine's noise only ever adds time), tokens per step, FLOPs and memory."""
    runs = [_run_point(overrides, approach, batch, work) for _ in range(rounds)]
    return min(runs, key=lambda p: p.step_s)


def _run_point(overrides: list[str], approach: str, batch: int, work: Path) -> Point:
    from sweep.launch.launch import launch

    cfg = compose(
        merge_overrides(
            APPROACHES[approach],
            overrides,  # after the approach: method.r=4 sets the rank
            [
                f"train.batch_size={batch}",
                f"train.steps={STEPS}",
                "train.measure_warmup_steps=3",
                "eval.size=2",
                "eval.base=false",
                "eval.max_new_tokens=2",
                "eval.retention_size=0",
            ],
        )
    )
    result = launch(cfg, work / slug(f"{approach}-{'-'.join(overrides)}-b{batch}"), 0)
    m = result.metrics
    if result.status != "ok":
        raise RuntimeError(
            f"probe {approach} batch {batch}: {result.status} {result.train.get('error')}"
        )
    tokens = m["train_tokens_per_s"] * m["s_per_step"]
    return Point(
        approach=approach,
        batch=batch,
        precision=str(result.run.get("precision") or cfg.train.precision),
        tokens=tokens,
        step_s=m["s_per_step_median"],
        flops_per_token=m["train_tflops"] * 1e12 / m["train_tokens_per_s"],
        peak_gib=m["peak_memory_gib"],
        planned_gib=m.get("plan_total_gib", math.nan),
    )


def fit(small: Point, large: Point, peak_tflops: float) -> tuple[float, float]:
    """(MFU, fixed s per step) from two batch sizes: step_s = tokens x s/token + fixed. When
    noise makes the slope useless (not positive), the larger batch alone, with no fixed cost."""
    slope = (large.step_s - small.step_s) / (large.tokens - small.tokens)
    if slope > 0 and math.isfinite(slope):
        fixed = max(0.0, small.step_s - slope * small.tokens)
    else:
        slope, fixed = large.step_s / large.tokens, 0.0
    mfu = statistics.mean([small.flops_per_token, large.flops_per_token]) / (
        slope * peak_tflops * 1e12
    )
    return mfu, fixed


def save(
    device: str, fits: dict[tuple[str, str], tuple[float, float]], note: str, cache_dir: str
) -> Path:
    """Write this device's entries to <cache>/calibration.yaml, replacing its earlier ones."""
    path = Path(cache_dir or default_cache_dir()) / cost.LOCAL_NAME
    old = (yaml.safe_load(path.read_text()) or {}).get("entries", []) if path.is_file() else []
    keep = [
        e
        for e in old
        if not (e["device"] == device and (e["approach"], e.get("precision", "*")) in fits)
    ]
    new = [
        {
            "device": device,
            "approach": a,
            "precision": p,
            "mfu": round(mfu, 4),
            "fixed_s": round(fixed, 4),
            "source": note,
        }
        for (a, p), (mfu, fixed) in fits.items()
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"entries": new + keep}, sort_keys=False))
    return path


def probe(
    overrides: list[str],
    work: Path,
    cache_dir: str = "",
    batches: tuple[int, int] = PROBE_BATCHES,
    device: GpuClass | None = None,
    rounds: int = 1,
) -> pd.DataFrame:
    """Measure, predict with the calibration as it stood, fit and save to `cache_dir`; the
    table (its attrs: the fitted rates and the device)."""
    device = device or this_device()
    print(f"[probe] {device.name}: dense peak {cost.peak_tflops(device, 'fp32'):.3g} TFLOP/s fp32, "
          f"{cost.peak_tflops(device, 'bf16-mixed'):.3g} 16-bit", flush=True)  # fmt: skip
    before = cost.load_calibration(cache_dir)
    rows: list[dict[str, Any]] = []
    fits: dict[tuple[str, str], tuple[float, float]] = {}
    for approach in APPROACHES:
        points = []
        for batch in batches:
            print(f"[probe] {approach} batch {batch}: {STEPS} steps", flush=True)
            points.append(run_point(overrides, approach, batch, work, rounds))
        peak = cost.peak_tflops(device, points[0].precision)
        fits[(approach, points[0].precision)] = fit(points[0], points[1], peak)
        for p in points:
            rows.append(_row(p, device, peak, before))
    table = pd.DataFrame(rows)
    stamp = time.strftime("%Y-%m-%d")
    note = f"make probe {stamp} on {device.name}: batches {'/'.join(map(str, batches))}"
    path = save(device.name, fits, note, cache_dir)
    print(f"[probe] calibration for this machine written to {path}", flush=True)
    table.attrs["fits"] = fits
    table.attrs["device"] = device
    return table


def _row(p: Point, device: GpuClass, peak: float, entries: list[dict[str, Any]]) -> dict[str, Any]:
    try:
        r = cost.rate(entries, device.name, p.approach, p.precision)
        predicted = cost.step_seconds(p.flops_per_token, p.tokens, peak, r)
    except ConfigError:
        predicted = math.nan
    return {
        "approach": p.approach,
        "batch": p.batch,
        "tokens/step": round(p.tokens),
        "measured s/step": p.step_s,
        "predicted s/step": predicted,
        "time ratio": p.step_s / predicted if predicted else math.nan,
        "measured peak GiB": p.peak_gib,
        "planned peak GiB": p.planned_gib,
        "MFU": p.flops_per_token * p.tokens / p.step_s / (peak * 1e12),
    }


def main(args: list[str]) -> int:
    """python -m sweep probe [overrides ...]"""
    from sweep.launch.child import start_trial_server

    device = this_device()  # first: the trial server's imports would slow the matmul probe
    start_trial_server()
    table = probe(args, Path("outputs/probe"), device=device)
    print(table.to_markdown(index=False, floatfmt=".3g"))
    for (a, p), (mfu, fixed) in table.attrs["fits"].items():
        print(f"{a} ({p}): MFU {mfu:.1%}, fixed {fixed * 1e3:.0f} ms per step")
    print("time ratio: measured / predicted before this probe; planned peak: sweep.planning.plan (GPU "
          "context left out on CPU, where the measured peak is the training phase's RSS)")  # fmt: skip
    return 0
