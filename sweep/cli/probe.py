"""make probe: a few real training steps per approach on this machine, the time model's
prediction beside them, and this machine's calibration for it.

    python -m sweep probe [model=smollm2_135m] [key=value ...]      # make probe [ARGS="..."]

It measures this device's dense peak and memory bandwidth (a CPU's by a matmul and a copy; a
GPU's come from report.gpus), what fused AdamW and 4-bit dequantization achieve of the
bandwidth and what a step with next to no work takes (per layer and per step), then runs short
harness trials (fresh processes, the same Trainer as a sweep) of full FT, LoRA r=16 and QLoRA
r=16 on a random-weight model of the model's shape at two batch sizes (their compute's line
over tokens: MFU and half_tokens), as sweep/cli/rates.py fits them. Printed: the step time
predicted before (conf/calibration.yaml, or an earlier probe) against the measured one, and the
planner's peak memory against the measured. The rates go to .cache/calibration.yaml, which
`make plan` and the report read before the shipped table.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from sweep.cli import rates
from sweep.cli.rates import Point
from sweep.planning import cost
from sweep.planning.arch import arch_for_model
from sweep.settings.compose import compose
from sweep.settings.errors import ConfigError
from sweep.settings.schema import GpuClass, default_cache_dir

PROBE_BATCHES = (2, 8)
FIELDS = ("mfu", "half_tokens", "opt_eff", "dequant_eff", "layer_s", "layer_token_s", "dispatch_s")


def save(device: str, fits: dict[tuple[str, str], cost.Rate], note: str, cache_dir: str) -> Path:
    """Write this device's entries to <cache>/calibration.yaml, replacing its earlier ones."""
    path = Path(cache_dir or default_cache_dir()) / cost.LOCAL_NAME
    old = (yaml.safe_load(path.read_text()) or {}).get("entries", []) if path.is_file() else []
    keep = [
        e
        for e in old
        if not (e["device"] == device and (e["approach"], e.get("precision", "*")) in fits)
    ]
    new = [
        {"device": device, "approach": a, "precision": p,
         **{f: round(float(getattr(r, f)), 5) for f in FIELDS}, "basis": "measured",
         "source": note}
        for (a, p), r in fits.items()
    ]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"entries": new + keep}, sort_keys=False))
    return path


def shape(overrides: list[str], work: Path) -> list[str]:
    """Overrides training a random-weight model of the model's shape on rows of rates.SEQ
    tokens."""
    arch = arch_for_model(compose(overrides).model)
    return [*overrides, *rates.shape_overrides(arch, work, "probe")]


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
    device = device or rates.this_device()
    work.mkdir(parents=True, exist_ok=True)
    over, short = shape(overrides, work), rates.latency_overrides(work)
    before = cost.load_calibration(cache_dir)
    points: dict[str, tuple[Point, ...]] = {}
    latency: dict[str, list[Point]] = {}
    for approach in rates.APPROACHES:
        print(f"[probe] {approach}: batches {batches} and the latency trials", flush=True)
        points[approach] = tuple(rates.run_point(over, approach, b, work, rounds) for b in batches)
        latency[approach] = [
            rates.run_point([*overrides, *short[n]], approach, b, work, rounds)
            for n in rates.LATENCY_LAYERS
            for b in rates.LATENCY_BATCHES
        ]
    measured = rates.measure(device, compose(overrides).train.precision, latency)
    r = next(iter(measured.values()))
    print(f"[probe] {device.name}: dense peak {cost.peak_tflops(device, 'fp32'):.3g} TFLOP/s fp32, "
          f"{cost.peak_tflops(device, 'bf16-mixed'):.3g} 16-bit; memory {device.mem_gbps:.3g} "
          f"GB/s, fused AdamW {r.opt_eff:.0%} of it, NF4 dequantization "
          f"{measured.get('qlora', r).dequant_eff:.0%}", flush=True)  # fmt: skip
    stamp = time.strftime("%Y-%m-%d")
    note = f"make probe {stamp} on {device.name}: batches {'/'.join(map(str, batches))}"
    fits = rates.fit(points, device, measured, note)
    rows = [_row(p, device, before) for pts in points.values() for p in pts]
    table = pd.DataFrame(rows)
    path = save(device.name, fits, note, cache_dir)
    print(f"[probe] calibration for this machine written to {path}", flush=True)
    table.attrs["fits"] = fits
    table.attrs["device"] = device
    return table


def _row(p: Point, device: GpuClass, entries: list[dict[str, Any]]) -> dict[str, Any]:
    try:
        predicted = rates.predict(
            p, device, cost.rate(entries, device.name, p.approach, p.precision)
        )
    except ConfigError:
        predicted = math.nan
    peak = cost.peak_tflops(device, p.precision)
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

    device = rates.this_device()  # first: the trial server's imports would slow its probes
    start_trial_server()
    table = probe(args, Path("outputs/probe"), device=device)
    print(table.to_markdown(index=False, floatfmt=".3g"))
    for (a, p), r in table.attrs["fits"].items():
        print(f"{a} ({p}): MFU {r.mfu:.1%} (half of it at {r.half_tokens:.0f} tokens a step), "
              f"optimizer {r.opt_eff:.0%} and dequantization {r.dequant_eff:.0%} of the "
              f"bandwidth, {r.layer_s * 1e3:.2f} ms per layer and {r.layer_token_s * 1e6:.2f} us "
              f"per layer and token, {r.dispatch_s * 1e3:.1f} ms per step")  # fmt: skip
    print("time ratio: measured / predicted before this probe; planned peak: sweep.planning.plan "
          "(GPU context left out on CPU, where the measured peak is the training phase's RSS)")  # fmt: skip
    return 0
