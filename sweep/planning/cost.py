"""Time and cost model: hours and dollars per epoch for each approach on each GPU tier.

    python -m sweep plan llama2_7b data=10M      # make plan MODEL=llama2_7b DATA=10M

A training step's time is its model FLOPs over what the device delivers, plus a fixed cost:

    step_s = FLOPs per token (sweep.planning.arch.train_flops_per_token) x tokens per step
             / (MFU x the device's dense peak) + fixed_s

MFU (model FLOPs utilisation: the share of the dense peak a step turns into model FLOPs) and
fixed_s come per device, approach and precision from conf/calibration.yaml, each entry with
its source, overlaid by what `make probe` measured on this machine (.cache/calibration.yaml:
first match wins, the probe's first). An epoch is the data's tokens, in full sequences of
seq_len (packed; padding would add its share of compute). Hours per epoch = steps x step_s /
3600; dollars = hours x the tier's price per GPU-hour (report.gpus, with its source).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from sweep.planning.arch import Arch, linear_params, train_flops_per_token, trainable_tensors
from sweep.planning.recipe import Recipe
from sweep.settings.compose import CONF_DIR
from sweep.settings.errors import ConfigError
from sweep.settings.schema import GpuClass, default_cache_dir

SHIPPED = CONF_DIR / "calibration.yaml"
LOCAL_NAME = "calibration.yaml"  # under the cache dir (.cache/): what `make probe` measured here
_SUFFIX = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}


@dataclass(frozen=True)
class Rate:
    """How fast a device runs one approach: MFU, a fixed cost per step, and where they come from."""

    mfu: float
    fixed_s: float
    source: str


def device_key(name: str) -> str:
    """The part of a GPU class's name found in the device's own name: "RTX 4090 24GB" -> "RTX
    4090" (NVML says "NVIDIA GeForce RTX 4090"); the memory size is left out."""
    words = name.split()
    return " ".join(words[:-1]) if len(words) > 1 and words[-1].upper().endswith("GB") else name


def device_class(device_name: Any, gpus: list[GpuClass]) -> GpuClass | None:
    """The GPU class of report.gpus whose name (less its memory) is in the device's name: the
    longest such name, then the one whose memory ("80GB") the device's name also gives."""
    if not isinstance(device_name, str):
        return None
    hits = [g for g in gpus if matches(device_key(g.name), device_name)]

    def fit(g: GpuClass) -> tuple[int, bool]:
        size = g.name.split()[-1].lower()
        return len(device_key(g.name)), size != device_key(
            g.name
        ).lower() and size in device_name.lower()

    return max(hits, key=fit, default=None)


def matches(pattern: str, device: str) -> bool:
    """A calibration entry's device ("*", "cpu", "A100", a full device name) against a device."""
    p, d = pattern.lower(), device.lower()
    return p == "*" or p in d


def load_calibration(cache_dir: str | Path | None = "") -> list[dict[str, Any]]:
    """This machine's probe entries (if any) first, then the shipped ones. `cache_dir` "": the
    default cache ($SWEEP_CACHE, else .cache); None: the shipped table only."""
    entries: list[dict[str, Any]] = []
    if cache_dir == "":
        cache_dir = default_cache_dir()
    local = Path(cache_dir) / LOCAL_NAME if cache_dir else None
    for path in (local, SHIPPED):
        if path is not None and path.is_file():
            entries += (yaml.safe_load(path.read_text()) or {}).get("entries", [])
    return entries


def rate(entries: list[dict[str, Any]], device: str, approach: str, precision: str) -> Rate:
    """The first entry for this device (or "*"), approach and precision (or "*")."""
    for e in entries:
        if (
            matches(str(e["device"]), device)
            and e["approach"] in (approach, "*")
            and e.get("precision", "*") in (precision, "*")
        ):
            return Rate(float(e["mfu"]), float(e.get("fixed_s", 0.0)), str(e["source"]))
    raise ConfigError(
        f"no calibration for {device} / {approach} / {precision} in {SHIPPED.name}; "
        "add an entry (device: '*' matches any) or run make probe"
    )


def peak_tflops(gpu: GpuClass, precision: str) -> float:
    """The tier's dense peak for the precision's matmuls (fp32: no TF32; else 16-bit)."""
    return gpu.fp32_tflops if precision == "fp32" else gpu.bf16_tflops


def step_flops_per_token(
    arch: Arch, rec: Recipe, seq_len: int, checkpointing: bool = False, logits_share: float = 1.0
) -> float:
    """FLOPs a step computes per token: the model's (sweep.planning.arch), plus under gradient
    checkpointing the blocks' forward again (recomputed in the backward; lm_head excepted)."""
    flops = train_flops_per_token(arch, rec, seq_len, logits_share)
    if checkpointing:
        adapters = 0 if rec.kind == "full" else sum(trainable_tensors(arch, rec))
        flops += (
            2 * (linear_params(arch) + adapters) + 4 * arch.layers * seq_len * arch.heads * arch.dim
        )
    return flops


def step_seconds(flops_per_token: float, tokens: float, peak: float, r: Rate) -> float:
    """One training step of `tokens` tokens on a device of `peak` dense TFLOP/s."""
    return flops_per_token * tokens / (r.mfu * peak * 1e12) + r.fixed_s


def parse_tokens(spec: str | int | float) -> int | None:
    """A token count: 10000000, 1e7, "10M", "2.5B", "500k"; None if it is not one."""
    if isinstance(spec, int | float) and not isinstance(spec, bool):
        return int(spec) if spec > 0 else None
    m = re.fullmatch(
        r"\s*([0-9][0-9_.]*(?:e[0-9]+)?)\s*([kmbg]?)\s*(?:tokens?)?\s*", str(spec), re.I
    )
    if not m:
        return None
    try:
        n = float(m.group(1).replace("_", "")) * _SUFFIX[m.group(2).lower()]
    except ValueError:
        return None
    return int(n) if n >= 1 else None


@dataclass
class EpochCost:
    """One approach on one tier: fits, hours and dollars per epoch, and the rate's source."""

    tier: str
    fits: bool
    mfu: float
    step_s: float
    hours: float
    usd: float
    source: str


def epoch_cost(
    arch: Arch,
    rec: Recipe,
    batch: int,
    seq_len: int,
    tokens: int,
    gpu: GpuClass,
    peak_gib: float,
    entries: list[dict[str, Any]],
    checkpointing: bool = False,
) -> EpochCost:
    """Hours and dollars for `tokens` tokens of training in batches of batch x seq_len."""
    r = rate(entries, device_key(gpu.name), rec.kind, rec.precision)
    per_step = batch * seq_len
    peak = peak_tflops(gpu, rec.precision)
    flops = step_flops_per_token(arch, rec, seq_len, checkpointing)
    step = step_seconds(flops, per_step, peak, r)
    hours = math.ceil(tokens / per_step) * step / 3600 if peak else math.nan
    return EpochCost(
        tier=gpu.name,
        fits=peak_gib <= gpu.memory_gib,
        mfu=r.mfu,
        step_s=step,
        hours=hours,
        usd=hours * gpu.usd_per_hour,
        source=r.source,
    )


def epoch_table(
    arch: Arch,
    rows: list[tuple[str, Recipe, float]],
    batch: int,
    seq_len: int,
    tokens: int,
    tiers: list[GpuClass],
    entries: list[dict[str, Any]],
    checkpointing: bool = False,
) -> pd.DataFrame:
    """One row per (approach, tier): predicted peak GiB, fits, MFU, hours and $ per epoch.
    `rows`: (approach label, its recipe, its predicted peak GiB), as the memory plan has them."""
    out = []
    for label, rec, peak_gib in rows:
        for gpu in tiers:
            c = epoch_cost(arch, rec, batch, seq_len, tokens, gpu, peak_gib, entries, checkpointing)
            out.append(
                {
                    "approach": label,
                    "tier": c.tier,
                    "peak_gib": peak_gib,
                    "fits": "yes" if c.fits else "no",
                    "mfu": c.mfu,
                    "hours_per_epoch": c.hours,
                    "usd_per_epoch": c.usd,
                    "source": c.source,
                }
            )
    return pd.DataFrame(out)
