"""This machine's rates for the time model (sweep.planning.cost), each measured on its own:

- the dense peak (a CPU's: a large matmul; a GPU's: report.gpus) and the memory bandwidth (a
  CPU's: a copy of a large array);
- what an optimizer step achieves of the bandwidth (opt_eff: fused AdamW over 64M parameters
  whose gradients are made anew, as a backward makes them) and 4-bit dequantization
  (dequant_eff), under a trial's allocator policy;
- the latency of a step with next to no compute: harness trials of a width-64 Llama with 1 and
  with 4 layers, at 1 and at 16 rows of 64 tokens a step: what each layer adds at no tokens
  (layer_s) and per token (layer_token_s: its small kernels, which a wide model's FLOPs do not
  count), and what the step has besides its layers (dispatch_s);
- from short harness trials at two or more batch sizes on a random-weight model of the model's
  own shape (the time is the real model's): each step less the parts above is its compute, and
  the least-squares line of it over tokens gives the MFU and half_tokens (the tokens of compute
  the matmuls lose to a step's small shapes); LoRA's and QLoRA's trials make one fit.

    python -c "from sweep.cli import rates; print(rates.this_device())"

`make probe` (sweep.cli.probe) and `make bench-plan` (sweep.bench.step_time) measure with it.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from sweep.planning import cost, recipe
from sweep.planning.arch import (
    TINY_VOCAB,
    Arch,
    arch_for_model,
    llama_config,
    train_flops_per_token,
)
from sweep.settings.compose import compose
from sweep.settings.errors import ConfigError
from sweep.settings.schema import GpuClass
from sweep.study.points import merge_overrides, slug
from sweep.trial import models, process

APPROACHES = {
    "full": ["method=full"],
    "lora": ["method=lora", "method.r=16"],
    "qlora": ["method=qlora", "method.r=16"],
}
STEPS = 12  # per trial: 3 warm-up steps, 9 measured
LATENCY_LAYERS = (1, 4)  # depths of the width-64 latency trials
LATENCY_BATCHES = (1, 16)  # and their rows per step
SEQ = 64  # tokens per example of the trials' rows (the default grid's shape)
MATMUL_N = 2048


def _best_of(run: callable, seconds: float) -> float:  # type: ignore[valid-type]
    """The shortest time of `run` over about `seconds` (noise only ever adds time)."""
    run()  # warm-up: threads and buffers
    best, end = math.inf, time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        run()
        _sync()
        best = min(best, time.perf_counter() - start)
    return best


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_tflops(seconds: float = 2.0, n: int = MATMUL_N) -> float:
    """This CPU's fp32 matmul rate (TFLOP/s): the denominator of a CPU's MFU."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / _best_of(lambda: a @ b, seconds) / 1e12


def memory_gbps(seconds: float = 1.0, mib: int = 512) -> float:
    """This device's memory bandwidth (GB/s): a copy of a large array, read and written."""
    dev = models.device()
    src = torch.empty(mib * 2**20 // 4, device=dev)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / _best_of(lambda: dst.copy_(src), seconds) / 1e9


def optimizer_eff(gbps: float, n: int = 2**26, seconds: float = 1.0) -> float:
    """The share of the bandwidth torch's fused AdamW (the harness's default) achieves on `n`
    fp32 parameters, its traffic (cost.optimizer_traffic: 28 bytes each) over the time of an
    optimizer step as training has it: the gradients freshly made (a backward's), the step,
    the gradients dropped. Far larger than a CPU's caches."""
    dev = models.device()
    params = [torch.nn.Parameter(torch.zeros(n // 8, device=dev)) for _ in range(8)]
    opt = torch.optim.AdamW(params, lr=1e-6, fused=True)

    def step() -> None:
        for p in params:
            p.grad = torch.full_like(p, 1e-3)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return 28 * n / _best_of(step, seconds) / (gbps * 1e9)


def dequant_eff(gbps: float, precision: str, seconds: float = 1.0, n: int = 4096) -> float:
    """The share of the bandwidth bitsandbytes' NF4 dequantization achieves: the 4-bit weight
    read and its copy in the compute dtype written (cost.dequant_traffic) over its time."""
    import bitsandbytes.functional as F

    compute = torch.bfloat16 if precision.startswith("bf16") else torch.float32
    w = torch.randn(2 * n, n, device=models.device(), dtype=compute)  # beyond a CPU's caches
    packed, state = F.quantize_4bit(w, quant_type="nf4", compress_statistics=True)
    size = 2 if compute == torch.bfloat16 else 4
    return w.numel() * (0.5 + size) / _best_of(lambda: F.dequantize_4bit(packed, state),
                                            seconds) / (gbps * 1e9)  # fmt: skip


def latency_overrides(work: Path) -> dict[int, list[str]]:
    """Per depth in LATENCY_LAYERS, overrides training a width-64 random-weight Llama on rows
    of SEQ tokens: next to no compute, so the step is its latency (batches: LATENCY_BATCHES)."""
    data = rows(work / "rows.jsonl", SEQ)
    out = {}
    for layers in LATENCY_LAYERS:
        arch = Arch(TINY_VOCAB, 64, 128, layers, 4, 4, True)
        model = random_model(arch, work / f"model-latency-{layers}")
        out[layers] = [*model, "dataset=file", f"dataset.path={data}", f"train.max_seq_len={SEQ}"]
    return out


def latency_of(trials: Sequence[Point]) -> tuple[float, float, float]:
    """(layer_s, layer_token_s, dispatch_s) from latency trials at two depths and one or more
    batches: what each layer adds at no tokens and per token (a line through the per-layer
    costs of the batches), and what the step has besides its layers (the loop's own work, the
    loss, the optimizer; the batches' mean). Noise never makes a part negative."""
    per_layer, dispatch = [], []
    for batch in sorted({p.batch for p in trials}):
        few, many = sorted((p for p in trials if p.batch == batch), key=lambda p: p.work.layers)
        layer = max(0.0, (many.step_s - few.step_s) / (many.work.layers - few.work.layers))
        per_layer.append(((few.tokens + many.tokens) / 2, layer))
        dispatch.append(max(0.0, few.step_s - few.work.layers * layer))
    (t0, l0), (t1, l1) = per_layer[0], per_layer[-1]
    per_token = max(0.0, (l1 - l0) / (t1 - t0)) if t1 > t0 else 0.0
    return max(0.0, l0 - per_token * t0), per_token, sum(dispatch) / len(dispatch)


def micro(device: GpuClass, precision: str) -> dict[str, float]:
    """The optimizer's and 4-bit dequantization's share of the bandwidth (opt_eff, dequant_eff),
    under a trial's allocator policy (on CPU, freed memory kept for reuse)."""
    if not torch.cuda.is_available():
        process.keep_freed_memory()
    return {"opt_eff": optimizer_eff(device.mem_gbps),
            "dequant_eff": dequant_eff(device.mem_gbps, precision)}  # fmt: skip


def measure(
    device: GpuClass,
    precision: str,
    latency: dict[str, Sequence[Point]],
    shares: dict[str, float] | None = None,
) -> dict[str, cost.Rate]:
    """Each approach's rates but the MFU and half_tokens (`fit`'s): the optimizer's and 4-bit
    dequantization's share of the bandwidth (`shares`, else measured now by `micro`), and the
    latency trials' layer and step parts."""
    shares = shares or micro(device, precision)
    out = {}
    for approach, trials in latency.items():
        layer_s, layer_token_s, dispatch_s = latency_of(trials)
        deq = shares["dequant_eff"] if approach == "qlora" else 1.0
        out[approach] = cost.Rate(0.0, 0.0, shares["opt_eff"], deq, layer_s, layer_token_s,
                                  dispatch_s)  # fmt: skip
    return out


def this_device() -> GpuClass:
    """This machine's device as a tier: the GPU's class in report.gpus (by name, from NVML
    without starting CUDA), or the CPU with its measured fp32 matmul rate and bandwidth."""
    from sweep.planning.plan import load_gpus
    from sweep.study import live

    tags = live.device_tags()
    name = tags["device_name"]
    if tags["device"] == "cpu":
        peak = matmul_tflops()
        return GpuClass(name=f"cpu {name}", bf16_tflops=peak, fp32_tflops=peak,
                        mem_gbps=memory_gbps(), specs_source="make probe: measured")  # fmt: skip
    g = cost.device_class(name, load_gpus())
    if g is not None:
        return GpuClass(**{**g.__dict__, "name": name})
    raise ConfigError(f"GPU {name!r} is not in report.gpus; add it with its dense peak TFLOP/s")


def random_model(arch: Arch, out: Path) -> list[str]:
    """A random-weight model of `arch` with the character tokenizer, saved under `out` once;
    the overrides that train it."""
    if not (out / "config.json").is_file():
        from transformers import LlamaForCausalLM

        tok = models.char_tokenizer()
        config = llama_config(arch, max_position_embeddings=4096, bos_token_id=tok.bos_token_id,
                              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # fmt: skip
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(out)
        tok.save_pretrained(out)
    name = slug(f"random-{out.name}")
    return ["model=hf", f"model.name_or_path={out}", f"model.name={name}"]


def rows(path: Path, seq: int, n: int = 64) -> Path:
    """JSONL rows whose prompt is about `seq` characters (tokens, with the char tokenizer)."""
    words = "the quick brown fox jumps over the lazy dog "
    lines = []
    for i in range(n):
        prompt = (f"{i}: " + words * (seq // len(words) + 1))[: max(8, seq - 24)]
        lines.append(json.dumps({"prompt": prompt, "answer": str(i)}))
    path.write_text("\n".join(lines) + "\n")
    return path


def shape_overrides(arch: Arch, work: Path, name: str) -> list[str]:
    """Overrides training a random-weight model of `arch` on rows of SEQ tokens: the model is
    saved under work/model-<name> once."""
    data = rows(work / "rows.jsonl", SEQ)
    model = random_model(arch, work / f"model-{name}")
    return [*model, "dataset=file", f"dataset.path={data}", f"train.max_seq_len={SEQ}"]


@dataclass
class Point:
    """One probe trial: its approach, batch, what a step took and held, and its work."""

    approach: str
    batch: int
    precision: str
    tokens: float  # non-padding tokens per step
    step_s: float  # median measured step
    flops_per_token: float
    peak_gib: float
    planned_gib: float
    work: cost.Work  # what its step does (FLOPs at its tokens, traffic, layers)


def run_point(
    overrides: list[str], approach: str, batch: int, work: Path, rounds: int = 1
) -> Point:
    """Short harness trials (`rounds` of them): the quickest one's median step, tokens per
    step, FLOPs, memory and the recipe's optimizer and dequantization traffic."""
    runs = [_run_point(overrides, approach, batch, work) for _ in range(rounds)]
    return min(runs, key=lambda p: p.step_s)


def _run_point(overrides: list[str], approach: str, batch: int, work: Path) -> Point:
    from sweep.launch.launch import launch

    cfg = compose(merge_overrides(
        APPROACHES[approach],
        overrides,  # after the approach: method.r=4 sets the rank
        [f"train.batch_size={batch}", f"train.steps={STEPS}", "train.measure_warmup_steps=3",
         "eval.size=2", "eval.base=false", "eval.max_new_tokens=2", "eval.retention_size=0"],
    ))  # fmt: skip
    digest = hashlib.sha1("\0".join(overrides).encode()).hexdigest()[:10]
    result = launch(cfg, work / f"{approach}-b{batch}-{digest}", 0)
    m = result.metrics
    if result.status != "ok":
        raise RuntimeError(
            f"probe {approach} batch {batch}: {result.status} {result.train.get('error')}"
        )
    rec, arch = recipe.of(cfg), arch_for_model(cfg.model)
    tokens = m["train_tokens_per_s"] * m["s_per_step"]
    share, seq, ckpt = (
        m.get("logits_share", 1.0),
        m["max_seq_len"],
        cfg.train.gradient_checkpointing,
    )
    flops_per_token = m["train_tflops"] * 1e12 / m["train_tokens_per_s"]  # as measured: its span
    again = cost.step_flops_per_token(arch, rec, seq, ckpt, share) - train_flops_per_token(
        arch, rec, seq, share
    )  # computed twice: checkpointing's forward, the chunked loss's output layer
    traffic = cost.work_of(arch, rec, tokens, seq, ckpt, share)
    return Point(
        approach=approach,
        batch=batch,
        precision=rec.precision,
        tokens=tokens,
        step_s=m["s_per_step_median"],
        flops_per_token=flops_per_token,
        peak_gib=m["peak_memory_gib"],
        planned_gib=m.get("plan_total_gib", math.nan),
        work=replace(traffic, flops=(flops_per_token + again) * tokens),
    )


def slope_fit(points: Sequence[Point], peak_tflops: float) -> tuple[float, float]:
    """(MFU, the step's time at zero tokens) from two or more batch sizes: the least-squares
    line of step time over tokens. When noise makes the slope useless (not positive), the
    largest batch alone, with nothing at zero tokens."""
    tokens = [p.tokens for p in points]
    mean_t, mean_s = sum(tokens) / len(points), sum(p.step_s for p in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t in tokens)
    slope = sum((p.tokens - mean_t) * (p.step_s - mean_s) for p in points) / spread
    if slope > 0 and math.isfinite(slope):
        intercept = max(0.0, mean_s - slope * mean_t)
    else:
        large = max(points, key=lambda p: p.tokens)
        slope, intercept = large.step_s / large.tokens, 0.0
    flops = sum(p.work.flops / p.tokens for p in points) / len(points)
    return flops / (slope * peak_tflops * 1e12), intercept


def predict(p: Point, device: GpuClass, r: cost.Rate) -> float:
    """The step time the time model gives for a probe trial's work."""
    return cost.step_seconds(cost.step_parts(p.work, device, r))


SHARED_COMPUTE = {"qlora": "lora"}  # QLoRA's matmuls are LoRA's, on dequantized weights


def fit(
    points: dict[str, Sequence[Point]],
    device: GpuClass,
    measured: dict[str, cost.Rate],
    source: str,
) -> dict[tuple[str, str], cost.Rate]:
    """Each approach's rate: `measured` (its efficiencies and latencies from the micro-benchmarks)
    with the MFU and half_tokens of its compute (`compute_fit`). QLoRA shares LoRA's compute
    fit (the same matmuls; its own parts are dequantization and latency), so that noise in
    either set of trials cannot price QLoRA's step below LoRA's."""
    groups: dict[str, list[str]] = {}
    for approach in points:
        groups.setdefault(SHARED_COMPUTE.get(approach, approach), []).append(approach)
    rates = {}
    for group in groups.values():
        pooled = [(p, measured[a]) for a in group for p in points[a]]
        mfu, half_tokens = compute_fit(pooled, device)
        for a in group:
            r = replace(measured[a], mfu=mfu, half_tokens=half_tokens, source=source)
            rates[(a, points[a][0].precision)] = r
    return rates


def compute_fit(points: Sequence[tuple[Point, cost.Rate]], device: GpuClass) -> tuple[float, float]:
    """(MFU, half_tokens) by least squares from trials at two or more batches: each trial's
    step less its other parts (optimizer, dequantization, layers, dispatch, at its rate) is its
    compute, FLOPs / (MFU x peak) x (1 + half_tokens / tokens), linear in 1 / MFU and
    half_tokens / MFU. An MFU above 1 (a step that is all latency) is 1; half_tokens >= 0."""
    peak = cost.peak_tflops(device, points[0][0].precision) * 1e12
    rows = []
    for p, r in points:
        other = cost.step_parts(p.work, device, replace(r, mfu=1.0))  # its compute unused
        compute = p.step_s - sum(v for k, v in other.items() if k != "compute_s")
        rows.append((p.work.flops / peak, p.work.flops / peak / p.tokens, compute))
    a = torch.tensor(rows, dtype=torch.float64)
    x, y = a[:, :2], a[:, 2:]
    inv, lost = torch.linalg.lstsq(x, y).solution.flatten().tolist()  # 1/MFU, half_tokens/MFU
    if inv < 1:  # faster than the peak, or no slope at all: the step is latency; MFU 1
        inv, lost = 1.0, _through_origin(x[:, 1], y[:, 0] - x[:, 0])
    elif lost < 0:  # noise: no usable few-tokens term
        inv, lost = max(1.0, _through_origin(x[:, 0], y[:, 0])), 0.0
    return 1 / inv, max(0.0, lost) / inv


def _through_origin(x: torch.Tensor, y: torch.Tensor) -> float:
    """The least-squares k of y = k x."""
    return float((x * y).sum() / (x * x).sum())
