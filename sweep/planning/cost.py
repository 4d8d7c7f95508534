"""Time and cost model: hours and dollars per epoch for each approach on each GPU tier.

    python -m sweep plan llama2_7b data=10M      # make plan MODEL=llama2_7b DATA=10M

A training step's time is five parts, each scaling with its own work (`step_parts`):

    compute    FLOPs per token (sweep.planning.arch, plus what checkpointing and the chunked
               loss compute again) x tokens / (mfu x the dense peak), slowed by a step's few
               tokens: at `half_tokens` tokens per step the matmuls run at half their rate
    optimizer  the bytes the optimizer step reads and writes (weights, gradients, states of
               every trainable parameter) / (opt_eff x the memory bandwidth)
    dequant    QLoRA: the 4-bit weights read and their 16-bit copies written, once per forward,
               backward and checkpoint recompute / (dequant_eff x the memory bandwidth)
    layers     decoder layers x (layer_s + layer_token_s x tokens): the kernel launches and
               Python around each block, and its small kernels' time per token
    dispatch   dispatch_s per step (the training loop's own work: collate, callbacks, logging)

mfu, half_tokens, opt_eff, dequant_eff, layer_s, layer_token_s and dispatch_s come per device,
approach and precision from
conf/calibration.yaml, each entry with its source, overlaid by what `make probe` measured on
this machine (.cache/calibration.yaml: first match wins, the probe's first). The dense peak and
the bandwidth are the GPU class's (report.gpus, with sources) or, for a CPU, measured by the
probe. An epoch is the data's tokens in full sequences of seq_len (packed). Hours per epoch =
steps x step_s / 3600; dollars = hours x the tier's price per GPU-hour.
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
from sweep.planning.assumptions import DTYPE_BYTES
from sweep.planning.recipe import Recipe
from sweep.settings.compose import CONF_DIR
from sweep.settings.errors import ConfigError
from sweep.settings.schema import GpuClass, default_cache_dir

SHIPPED = CONF_DIR / "calibration.yaml"
LOCAL_NAME = "calibration.yaml"  # under the cache dir (.cache/): what `make probe` measured here
_SUFFIX = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}


@dataclass(frozen=True)
class Rate:
    """How fast a device runs one approach (the efficiencies of `step_parts`) and whence."""

    mfu: float
    half_tokens: float = 0.0  # tokens per step at which the matmuls reach half the mfu
    opt_eff: float = 1.0  # share of the memory bandwidth the optimizer step achieves
    dequant_eff: float = 1.0  # and 4-bit dequantization
    layer_s: float = 0.0  # per decoder layer per step
    layer_token_s: float = 0.0  # per decoder layer per token of the step
    dispatch_s: float = 0.0  # per step
    source: str = ""
    basis: str = ""  # measured (make probe, here), fitted (published runs), assumed (another's)


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
            return _entry_rate(e)
    raise ConfigError(
        f"no calibration for {device} / {approach} / {precision} in {SHIPPED.name}; "
        "add an entry (device: '*' matches any) or run make probe"
    )


_SHARES = ("mfu", "opt_eff", "dequant_eff")  # shares of a peak figure: > 0 (a figure quoted
# low, or bytes counted high, can put one over 1)
_AMOUNTS = ("half_tokens", "layer_s", "layer_token_s", "dispatch_s")  # >= 0


def _entry_rate(e: dict[str, Any]) -> Rate:
    """A calibration entry as a Rate; one line naming the entry and the field when a value is
    not a number in its range (a hand-edited .cache/calibration.yaml)."""
    where = f"calibration entry {e.get('device')}/{e.get('approach')}"
    values = {}
    for k in (*_SHARES, *_AMOUNTS):
        if k not in e:
            continue
        try:
            values[k] = float(e[k])
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {k}={e[k]!r} is not a number") from None
        ok = values[k] > 0 if k in _SHARES else values[k] >= 0
        if not ok or not math.isfinite(values[k]):
            allowed = f"{k} > 0" if k in _SHARES else f"{k} >= 0"
            raise ConfigError(f"{where}: {k}={e[k]!r} is not allowed; expected {allowed}")
    if "mfu" not in values:
        raise ConfigError(f"{where}: no mfu (the share of the dense peak a step reaches)")
    mfu = values.pop("mfu")
    return Rate(mfu, **values, source=str(e.get("source", "")), basis=str(e.get("basis", "")))


def peak_tflops(gpu: GpuClass, precision: str) -> float:
    """The tier's dense peak for the precision's matmuls (fp32: no TF32; else 16-bit)."""
    return gpu.fp32_tflops if precision == "fp32" else gpu.bf16_tflops


def trainable_bytes(rec: Recipe) -> int:
    return DTYPE_BYTES[rec.trainable_dtype]


def step_flops_per_token(
    arch: Arch, rec: Recipe, seq_len: int, checkpointing: bool = False, logits_share: float = 1.0
) -> float:
    """FLOPs a step computes per token: the model's (sweep.planning.arch), plus what it computes
    twice: under gradient checkpointing the blocks' forward (recomputed in the backward; lm_head
    excepted), under the chunked loss the output layer's forward (each tile again in backward)."""
    flops = train_flops_per_token(arch, rec, seq_len, logits_share)
    if rec.loss == "chunked":
        flops += 2 * arch.vocab * arch.hidden * logits_share
    if checkpointing:
        adapters = 0 if rec.kind == "full" else sum(trainable_tensors(arch, rec))
        flops += (
            2 * (linear_params(arch) + adapters) + 4 * arch.layers * seq_len * arch.heads * arch.dim
        )
    return flops


def optimizer_traffic(arch: Arch, rec: Recipe) -> float:
    """Bytes an optimizer step moves: per trainable parameter its weight read and written and
    its gradient read (its dtype), and AdamW's two states read and written (the weight's dtype;
    one byte each for the 8-bit ones)."""
    n = sum(trainable_tensors(arch, rec))
    weight = trainable_bytes(rec)
    state = 1 if rec.optimizer.endswith("8bit") else weight
    return n * (3 * weight + 4 * state)


def dequant_traffic(arch: Arch, rec: Recipe, checkpointing: bool = False) -> float:
    """QLoRA: the 4-bit linears read (half a byte each) and written out in the compute dtype,
    in the forward, the backward (for the input gradient) and a checkpoint's recompute."""
    if rec.kind != "qlora":
        return 0.0
    compute = 2 if rec.precision.startswith(("bf16", "fp16")) else 4
    passes = 3 if checkpointing else 2
    return passes * linear_params(arch) * (0.5 + compute)


@dataclass(frozen=True)
class Work:
    """What one training step does, whatever the device: its tokens and FLOPs, the bytes its
    optimizer step and its 4-bit dequantization move, its decoder layers, its precision."""

    tokens: float
    flops: float
    optimizer_bytes: float
    dequant_bytes: float
    layers: int
    precision: str


def work_of(
    arch: Arch,
    rec: Recipe,
    tokens: float,
    seq_len: int,
    checkpointing: bool = False,
    logits_share: float = 1.0,
) -> Work:
    """The work of one step of `tokens` tokens of this recipe on this architecture."""
    flops = step_flops_per_token(arch, rec, seq_len, checkpointing, logits_share) * tokens
    return Work(tokens, flops, optimizer_traffic(arch, rec),
                dequant_traffic(arch, rec, checkpointing), arch.layers, rec.precision)  # fmt: skip


def step_parts(work: Work, device: GpuClass, r: Rate) -> dict[str, float]:
    """One training step on `device` (its dense peak and bandwidth), part by part, in seconds;
    a part whose device figure is unknown (0) is NaN."""
    peak = peak_tflops(device, work.precision) * 1e12
    bandwidth = device.mem_gbps * 1e9
    deq = work.dequant_bytes
    few = 1 + r.half_tokens / work.tokens if work.tokens else 1.0
    return {
        "compute_s": work.flops / (r.mfu * peak) * few if peak else math.nan,
        "optimizer_s": work.optimizer_bytes / (r.opt_eff * bandwidth) if bandwidth else math.nan,
        "dequant_s": deq / (r.dequant_eff * bandwidth) if deq and bandwidth else 0.0,
        "layers_s": work.layers * (r.layer_s + r.layer_token_s * work.tokens),
        "dispatch_s": r.dispatch_s,
    }


def step_seconds(parts: dict[str, float]) -> float:
    """The step: the sum of its parts."""
    return sum(parts.values())


def step_time(
    arch: Arch,
    rec: Recipe,
    tokens: float,
    seq_len: int,
    device: GpuClass,
    r: Rate,
    checkpointing: bool = False,
) -> float:
    """Seconds for one step of `tokens` tokens of this recipe on `device` at rate `r`."""
    return step_seconds(step_parts(work_of(arch, rec, tokens, seq_len, checkpointing), device, r))


def _two_figures(x: float) -> str:
    digits = 1 - math.floor(math.log10(abs(x)))
    return f"{round(x, digits):,.{max(digits, 0)}f}"


def fmt_hours(hours: float) -> str:
    """A duration for people: two significant figures, in minutes under an hour and seconds
    under a minute; never "0" ("-" when unknown)."""
    if not math.isfinite(hours) or hours < 0:
        return "-"
    if hours == 0:
        return "0 s"
    if hours >= 1:
        return f"{_two_figures(hours)} h"
    if hours * 60 >= 1:
        return f"{_two_figures(hours * 60)} min"
    return f"{_two_figures(hours * 3600)} s"


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
    basis: str = ""


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
    step = step_time(arch, rec, per_step, seq_len, gpu, r, checkpointing)
    hours = math.ceil(tokens / per_step) * step / 3600
    return EpochCost(
        tier=gpu.name,
        fits=peak_gib <= gpu.memory_gib,
        mfu=r.mfu,
        step_s=step,
        hours=hours,
        usd=hours * gpu.usd_per_hour,
        source=r.source,
        basis=r.basis,
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
                    "basis": c.basis,
                }
            )
    return pd.DataFrame(out)
