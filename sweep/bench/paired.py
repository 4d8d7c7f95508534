"""A peer and a harness trial side by side: `make bench`'s throughput, per-step and SFT parts.

Each round runs a peer (sweep/bench/bare_loop.py, or TRL's SFTTrainer in sweep/bench/sft_peer.py)
and a harness trial on the same settings in fresh processes forked from the same server as the
sweep's trials; on CPU both at once, each pinned to its own half of the cores (core_halves), else
one after the other. The harness trial streams its live MLflow run as in a sweep (sweep.study.live,
into a store of the bench's own), so the ratio includes what live logging costs the step.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sweep.bench import bare_loop, sft_peer
from sweep.launch.child import trial_context
from sweep.launch.launch import launch
from sweep.results import record, tracking
from sweep.settings import hardware
from sweep.settings.compose import as_dict, compose
from sweep.settings.cpus import CPUS_ENV
from sweep.settings.schema import Config
from sweep.study import live
from sweep.study.points import merge_overrides, slug

APPROACHES = {
    "full": ["method=full"],
    "lora r=16": ["method=lora", "method.r=16"],
    "qlora r=16": ["method=qlora", "method.r=16"],
}


# A peer's entry point in its own process: child(cfg as a dict, result file, cwd, environment).
Peer = Callable[[dict[str, Any], str, str, dict[str, str]], None]


def bare(
    cfg: Config, work: Path, env: dict[str, str] | None = None, peer: Peer = bare_loop.child
) -> dict[str, Any]:
    """A peer (the bare loop unless `peer` says another, e.g. sft_peer.child) in a fresh
    process forked from the same server as harness trials; its result."""
    name = peer.__module__.rsplit(".", 1)[-1]
    work.mkdir(parents=True, exist_ok=True)
    out = work / f"{name}.json"
    out.unlink(missing_ok=True)
    proc = trial_context().Process(
        target=peer,
        args=(as_dict(cfg), str(out), os.getcwd(), {**os.environ, **(env or {})}),
    )
    proc.start()
    proc.join()
    if not out.exists():
        raise RuntimeError(f"{name} exited with code {proc.exitcode} and no result")
    return json.loads(out.read_text())


def live_store(work: Path) -> str:
    """A parent run in an MLflow store of the bench's own (work/mlflow.db), for live trial runs:
    the bench's harness trials then log every step as a sweep's do."""
    work.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{(work / 'mlflow.db').resolve()}"
    return tracking.parent_run("bench", {}, [])


def harness_trial(
    cfg: Config, work: Path, env: dict[str, str] | None = None, parent: str | None = None
) -> dict[str, Any]:
    run = live.start_run(parent, work.name, record.run_info(cfg)) if parent else None
    h = launch(cfg, work, 0, env=env, live_run=run)
    if run:
        tracking.log_trial(parent, h, work, run)  # closes the live run, as the sweep does
    if h.status != "ok":
        raise RuntimeError(f"harness trial: {h.status} {h.train.get('error')}")
    return {**h.metrics, "step_clock": h.train.get("step_clock") or []}


def steady_rate(m: dict[str, Any]) -> float:
    """A run's tokens/s at its median step time: the same tokens over n median steps. Both sides
    train on the same batches, so this ratio compares their steps, not a neighbour's burst."""
    return m["train_tokens_per_s"] * m["s_per_step"] / m["s_per_step_median"]


def overlap_rate(m: dict[str, Any], other: dict[str, Any], least: int = 3) -> float:
    """`m`'s steady tokens/s (steady_rate) over only the steps it ran while `other` was inside
    its own measured steps ("step_clock": [start, end] per step, Unix seconds). Two runs side by
    side do not start training at the same moment (the harness starts its live run and
    prepares data first), so some of one side's steps run beside the other's loading or
    evaluation, not beside its training. Fewer than `least` such steps: steady_rate."""
    mine, theirs = m.get("step_clock") or [], other.get("step_clock") or []
    if not mine or not theirs:
        return steady_rate(m)
    lo, hi = theirs[0][0], theirs[-1][1]
    inside = [end - start for start, end in mine if start >= lo and end <= hi]
    if len(inside) < least:
        return steady_rate(m)
    return m["train_tokens_per_s"] * m["s_per_step"] / statistics.median(inside)


def ratio_interval(ratios: list[float]) -> tuple[float, float]:
    """The 95% interval of the paired rounds' mean ratio: a t-interval on the log ratios (a
    ratio's noise multiplies), back on the ratio scale. Under 2 rounds: (nan, nan)."""
    logs = [math.log(r) for r in ratios if r > 0 and math.isfinite(r)]
    if len(logs) < 2:
        return math.nan, math.nan
    from scipy.stats import t

    half = t.ppf(0.975, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    mean = statistics.fmean(logs)
    return math.exp(mean - half), math.exp(mean + half)


def verdict(interval: tuple[float, float], target: float, at_least: bool = True) -> str:
    """'met' or 'missed' where the whole 95% interval is on one side of `target`, 'not resolved'
    where it straddles it (more rounds, or a quieter machine, would be needed to say)."""
    lo, hi = interval
    if math.isnan(lo):
        return "one round: no interval"
    good, bad = (lo >= target, hi < target) if at_least else (hi <= target, lo > target)
    return "met" if good else "missed" if bad else "not resolved"


def core_halves() -> tuple[str, str] | None:
    """Two disjoint halves of this process's CPU cores ("0", "1" on 2 cores), or None where
    there is a GPU (both sides would share it) or a single core."""
    if not hasattr(os, "sched_getaffinity") or hardware.gpu_present():
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    half = len(cpus) // 2
    return ",".join(map(str, cpus[:half])), ",".join(map(str, cpus[half : 2 * half]))


def _pair(
    overrides: list[str],
    work: Path,
    i: int,
    concurrent: bool = True,
    parent: str | None = None,
    peer: Peer = bare_loop.child,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One round: the peer (the bare loop by default) and a harness trial. On CPU both at once,
    each pinned to its own half of the cores (halves swapped every round): a neighbour's burst
    or the machine's drift hits both sides alike. On a GPU (or not `concurrent`) one after the
    other, the peer first in even rounds."""
    cfg = compose(overrides)  # here: Hydra is not thread-safe
    halves = core_halves() if concurrent else None
    if halves is None:
        if i % 2 == 0:
            b = bare(cfg, work, peer=peer)
            return b, harness_trial(cfg, work / f"h{i}", parent=parent)
        h = harness_trial(cfg, work / f"h{i}", parent=parent)
        return bare(cfg, work, peer=peer), h
    mine, theirs = halves if i % 2 == 0 else halves[::-1]
    with ThreadPoolExecutor(1) as pool:
        h = pool.submit(harness_trial, cfg, work / f"h{i}", {CPUS_ENV: mine}, parent)
        b = bare(cfg, work, {CPUS_ENV: theirs}, peer=peer)
        return b, h.result()


def rounds(
    user: list[str], steps: int, repeats: int, work: Path, peer: Peer, name: str
) -> dict[str, list[tuple[dict[str, Any], dict[str, Any]]]]:
    """Per approach, `repeats` rounds of (peer, harness trial) metrics (_pair), harness trials
    streaming live runs (live_store); prints each round's ratio of steady tokens/s."""
    parent = live_store(work)
    out = {}
    for approach, methods in APPROACHES.items():
        overrides = merge_overrides(
            user, [*methods, f"train.steps={steps}", "eval.size=2", "eval.base=false"]
        )
        pairs = []
        for i in range(repeats):
            print(f"[bench] {name} {approach}: round {i + 1}/{repeats}", flush=True)
            where = work / slug(f"{name}-{approach}")
            pm, hm = _pair(overrides, where, i, parent=parent, peer=peer)
            pairs.append((pm, hm))
            ratio = overlap_rate(hm, pm) / overlap_rate(pm, hm)
            print(f"[bench]   round ratio {ratio:.3f}", flush=True)
        out[approach] = pairs
    return out


def _rates(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> tuple[list[float], ...]:
    """(peer, harness, paired ratio) steady tokens/s of every round, each side over the steps
    it ran beside the other's training (overlap_rate)."""
    p = [overlap_rate(pm, hm) for pm, hm in pairs]
    h = [overlap_rate(hm, pm) for pm, hm in pairs]
    return p, h, [x / y for x, y in zip(h, p, strict=True)]


def throughput(user: list[str], steps: int, repeats: int, work: Path) -> list[dict[str, Any]]:
    """Harness trial and bare loop, `repeats` rounds (`rounds`); each round's ratio of steady
    tokens/s (steady_rate), and the median of those paired ratios."""
    rows = []
    for name, pairs in rounds(user, steps, repeats, work, bare_loop.child, "throughput").items():
        b, h, paired = _rates(pairs)
        flops = [hm["train_tflops"] for _, hm in pairs if hm.get("train_tflops")]
        mfu = [hm["mfu"] for _, hm in pairs if hm.get("mfu")]
        rows.append(
            {
                "approach": name,
                "repeats": repeats,
                "bare tokens/s (median)": statistics.median(b),
                "harness tokens/s (median)": statistics.median(h),
                "harness / bare": statistics.median(paired),
                "round ratios": " ".join(f"{r:.3f}" for r in paired),
                "bare s/step (median)": statistics.median(
                    bm["s_per_step_median"] for bm, _ in pairs
                ),
                "bare spread": f"{min(b):.0f}-{max(b):.0f}",
                "harness spread": f"{min(h):.0f}-{max(h):.0f}",
                "harness model TFLOP/s": statistics.median(flops) if flops else None,
                **({"harness MFU": f"{statistics.median(mfu):.1%}"} if mfu else {}),
            }
        )
        print(f"[bench]   harness / bare = {rows[-1]['harness / bare']:.3f}", flush=True)
    return rows


def harness_peak_gib(m: dict[str, Any]) -> float | None:
    """A harness trial's training-phase peak memory, measured as sft_peer measures its own: the
    CUDA allocator's peak on a GPU, else the peak host RSS of the training phase."""
    return m.get("peak_alloc_gib") or m.get("train_peak_host_rss_gib")


def sft_throughput(user: list[str], steps: int, repeats: int, work: Path) -> list[dict[str, Any]]:
    """Harness trial and TRL's SFTTrainer with its defaults (sweep/bench/sft_peer.py), paired
    as throughput() pairs the bare loop: `repeats` rounds per approach, each round's ratio of
    steady tokens/s, the median of those ratios, and both sides' training-phase peak memory."""
    rows = []
    for name, pairs in rounds(user, steps, repeats, work, sft_peer.child, "SFTTrainer").items():
        s, h, paired = _rates(pairs)
        h_mem = [p for p in (harness_peak_gib(hm) for _, hm in pairs) if p]
        sm = pairs[-1][0]
        rows.append(
            {
                "approach": name,
                "repeats": repeats,
                "SFTTrainer tokens/s (median)": statistics.median(s),
                "harness tokens/s (median)": statistics.median(h),
                "harness / SFTTrainer": statistics.median(paired),
                "round ratios": " ".join(f"{r:.3f}" for r in paired),
                "SFTTrainer s/step (median)": statistics.median(
                    pm["s_per_step_median"] for pm, _ in pairs
                ),
                "SFTTrainer peak GiB (median)": statistics.median(
                    pm["peak_memory_gib"] for pm, _ in pairs
                ),
                "harness peak GiB (median)": statistics.median(h_mem) if h_mem else None,
                "SFTTrainer spread": f"{min(s):.0f}-{max(s):.0f}",
                "harness spread": f"{min(h):.0f}-{max(h):.0f}",
                "memory": sm["memory_kind"],
                "trl": sm["trl_version"],
                "trl_defaults": sm["trl_defaults"],
            }
        )
        print(
            f"[bench]   harness / SFTTrainer = {rows[-1]['harness / SFTTrainer']:.3f}", flush=True
        )
    return rows


def step_cost(user: list[str], repeats: int, work: Path, steps: int = 200) -> dict[str, Any]:
    """The harness's fixed cost per step (Trainer, callbacks, progress, loss logging) on the
    tiny model, where a step is milliseconds and that cost is not lost in the machine's noise.
    One side after the other on all cores, as trials run (pinned halves differ by more than
    the milliseconds measured here). The harness streams its live run, as in a sweep."""
    parent = live_store(work)
    overrides = merge_overrides(
        user,
        [
            "model=tiny_llama",
            "method=lora",
            "method.r=16",
            f"train.steps={steps}",
            "train.measure_warmup_steps=10",
            "eval.size=2",
            "eval.base=false",
        ],
    )
    b: list[float] = []
    h: list[float] = []
    for i in range(repeats):
        print(f"[bench] per-step cost (tiny model): round {i + 1}/{repeats}", flush=True)
        bm, hm = _pair(overrides, work / "step-cost", i, concurrent=False, parent=parent)
        b.append(bm["s_per_step_median"])
        h.append(hm["s_per_step_median"])
    cost = statistics.median(y - x for x, y in zip(b, h, strict=True))
    return {
        "bare_ms": statistics.median(b) * 1e3,
        "harness_ms": statistics.median(h) * 1e3,
        "cost_ms": cost * 1e3,
        "steps": steps,
        "repeats": repeats,
    }
