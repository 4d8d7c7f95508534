"""`make bench`: the harness measured against what users would write instead, side by side.

    make bench                                   # everything at the default sweep's settings
    make bench ARGS="--steps 8 train.steps=10"   # a quick look (short trials, short sweep)
    python -m sweep.bench --only throughput,eval

Four comparisons, run one after another on this machine, each printed as a ratio and written
to reports/bench/harness.md (and harness.json):
1. throughput: a harness trial's training tokens/s against a bare PyTorch + PEFT loop doing the
   same work (sweep/bench/bare_loop.py), for full FT, LoRA r=16 and QLoRA r=16. Target >= 0.97.
2. sweep: wall time of the sweep's grid (`python -m sweep run`, tracking and report included)
   against the same grid as `Trainer.hyperparameter_search(backend="optuna")` with `model_init`
   (sweep/bench/peer.py). Target <= 1.0x.
3. overhead: per-trial fixed overhead (process start, imports, model load, data, evaluation
   set-up, saving) as a share of trial wall time, from the sweep run of (2). Target <= 5% on CPU.
4. eval: the batched evaluator's generated tokens/s against one-by-one greedy generation on the
   same prompts, with identical answers (sweep/bench/eval_speed.py).
Hydra overrides (e.g. model=..., train.steps=...) apply to every part; --steps sets the
throughput trials' length.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sweep import record
from sweep.bench import bare_loop, eval_speed
from sweep.child import CPUS_ENV, gpu_present, trial_context
from sweep.config import Config, ConfigError, as_dict, compose
from sweep.study import launch, merge_overrides

APPROACHES = {
    "full": ["method=full"],
    "lora r=16": ["method=lora", "method.r=16"],
    "qlora r=16": ["method=qlora", "method.r=16"],
}
PARTS = ("eval", "throughput", "step", "sweep")
# What each part writes into the results, and the prefix of its ratios' names.
PART_KEYS = {
    "eval": (["eval"], ("4.",)),
    "throughput": (
        ["throughput", "throughput_steps", "warmup_steps", "pairing"],
        ("1.",),
    ),
    "step": (["step_cost"], ()),
    "sweep": (["sweep", "trials", "overhead"], ("2.", "3.")),
}
OUT = Path("reports/bench")


def bare(cfg: Config, work: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The bare loop in a fresh process forked from the same server as harness trials."""
    work.mkdir(parents=True, exist_ok=True)
    out = work / "bare.json"
    out.unlink(missing_ok=True)
    proc = trial_context().Process(
        target=bare_loop.child,
        args=(as_dict(cfg), str(out), os.getcwd(), {**os.environ, **(env or {})}),
    )
    proc.start()
    proc.join()
    if not out.exists():
        raise RuntimeError(f"bare loop exited with code {proc.exitcode} and no result")
    return json.loads(out.read_text())


def _harness(cfg: Config, work: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    h = launch(cfg, work, 0, env=env)
    if h.status != "ok":
        raise RuntimeError(f"harness trial: {h.status} {h.train.get('error')}")
    return h.metrics


def steady_rate(m: dict[str, Any]) -> float:
    """A run's tokens/s at its median step time: the same tokens over n median steps. Both sides
    train on the same batches, so this ratio compares their steps, not a neighbour's burst."""
    return m["train_tokens_per_s"] * m["s_per_step"] / m["s_per_step_median"]


def core_halves() -> tuple[str, str] | None:
    """Two disjoint halves of this process's CPU cores ("0", "1" on 2 cores), or None where
    there is a GPU (both sides would share it) or a single core."""
    if not hasattr(os, "sched_getaffinity") or gpu_present():
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    half = len(cpus) // 2
    return ",".join(map(str, cpus[:half])), ",".join(map(str, cpus[half : 2 * half]))


def _pair(
    overrides: list[str], work: Path, i: int, concurrent: bool = True
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One round: the bare loop and a harness trial. On CPU both at once, each pinned to its own
    half of the cores (halves swapped every round): a neighbour's burst or the machine's drift
    hits both sides alike. On a GPU (or not `concurrent`) one after the other, bare first in
    even rounds."""
    cfg = compose(overrides)  # here: Hydra is not thread-safe
    halves = core_halves() if concurrent else None
    if halves is None:
        if i % 2 == 0:
            b = bare(cfg, work)
            return b, _harness(cfg, work / f"h{i}")
        h = _harness(cfg, work / f"h{i}")
        return bare(cfg, work), h
    mine, theirs = halves if i % 2 == 0 else halves[::-1]
    with ThreadPoolExecutor(1) as pool:
        h = pool.submit(_harness, cfg, work / f"h{i}", {CPUS_ENV: mine})
        b = bare(cfg, work, {CPUS_ENV: theirs})
        return b, h.result()


def throughput(user: list[str], steps: int, repeats: int, work: Path) -> list[dict[str, Any]]:
    """Harness trial and bare loop, `repeats` rounds (_pair); each round's ratio of steady
    tokens/s (steady_rate), and the median of those paired ratios."""
    rows = []
    for name, approach in APPROACHES.items():
        overrides = merge_overrides(
            user, [*approach, f"train.steps={steps}", "eval.size=2", "eval.base=false"]
        )
        b: list[float] = []
        h: list[float] = []
        b_step: list[float] = []
        flops: list[float] = []
        mfu: list[float] = []
        for i in range(repeats):
            print(f"[bench] throughput {name}: round {i + 1}/{repeats}", flush=True)
            bm, hm = _pair(overrides, work / slug(name), i)
            b.append(steady_rate(bm))
            h.append(steady_rate(hm))
            b_step.append(bm["s_per_step_median"])
            flops += [hm["train_tflops"]] if hm.get("train_tflops") else []
            mfu += [hm["mfu"]] if hm.get("mfu") else []
            print(f"[bench]   round ratio {h[-1] / b[-1]:.3f}", flush=True)
        paired = [x / y for x, y in zip(h, b, strict=True)]
        rows.append(
            {
                "approach": name,
                "repeats": repeats,
                "bare tokens/s (median)": statistics.median(b),
                "harness tokens/s (median)": statistics.median(h),
                "harness / bare": statistics.median(paired),
                "round ratios": " ".join(f"{r:.3f}" for r in paired),
                "bare s/step (median)": statistics.median(b_step),
                "bare spread": f"{min(b):.0f}-{max(b):.0f}",
                "harness spread": f"{min(h):.0f}-{max(h):.0f}",
                "harness model TFLOP/s": statistics.median(flops) if flops else None,
                **({"harness MFU": f"{statistics.median(mfu):.1%}"} if mfu else {}),
            }
        )
        print(f"[bench]   harness / bare = {rows[-1]['harness / bare']:.3f}", flush=True)
    return rows


def step_cost(user: list[str], repeats: int, work: Path, steps: int = 200) -> dict[str, Any]:
    """The harness's fixed cost per step (Trainer, callbacks, progress, loss logging) on the
    tiny model, where a step is milliseconds and that cost is not lost in the machine's noise.
    One side after the other on all cores, as trials run (pinned halves differ by more than
    the milliseconds measured here)."""
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
        bm, hm = _pair(overrides, work / "step-cost", i, concurrent=False)
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


def slug(text: str) -> str:
    return text.replace(" ", "_").replace("=", "")


def _timed(cmd: list[str], env: dict[str, str], log: Path) -> float:
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed (exit {proc.returncode}); see {log}")
    return wall


def _harness_sweep(user: list[str], out: Path) -> tuple[float, list[Any]]:
    """One harness sweep in a fresh process and store; the untuned-base cache cleared first, so
    it pays for that evaluation as on a fresh machine. Returns its wall time and records."""
    cfg = compose(user)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{out / 'mlflow.db'}"}
    out.mkdir(parents=True, exist_ok=True)
    for f in Path(cfg.cache_dir, "base_accuracy").glob("*.json"):
        f.unlink()
    common = [f"output_dir={out / 'outputs'}", f"report.dir={out / 'reports'}", *user]
    wall = _timed([sys.executable, "-m", "sweep", "run", *common], env, out / "harness.log")
    return wall, [record.load(p) for p in sorted((out / "outputs").glob("*/trials/*/result.json"))]


def _peer_sweep(user: list[str], out: Path) -> tuple[float, dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    log = out / "peer.log"
    wall = _timed([sys.executable, "-m", "sweep.bench.peer", *user], dict(os.environ), log)
    return wall, json.loads(log.read_text().strip().splitlines()[-1])


def sweep_vs_peer(
    user: list[str], work: Path, rounds: int = 2
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Wall time of the sweep and of the Trainer.hyperparameter_search peer, each a fresh
    process, `rounds` times each in ABBA order (harness, peer, peer, harness, ...): a machine
    that drifts faster or slower over the half hour weighs on both sides alike. The ratio is of
    the summed wall times; the per-trial table is the first round's."""
    walls: dict[str, list[float]] = {"harness": [], "peer": []}
    records: list[Any] = []
    peer: dict[str, Any] = {}
    for i in range(rounds):
        for side in ("harness", "peer") if i % 2 == 0 else ("peer", "harness"):
            print(f"[bench] sweep round {i + 1}/{rounds}: {side}", flush=True)
            if side == "harness":
                wall, recs = _harness_sweep(user, work / f"sweep-{i}")
                records = records or recs
            else:
                wall, result = _peer_sweep(user, work / f"peer-{i}")
                peer = peer or result
            walls[side].append(wall)
    trials = [
        {
            "trial": r.run.get("label"),
            "accuracy": r.metrics.get("accuracy"),
            "peer accuracy": peer["accuracy"].get(r.run.get("label")),
            "peer train_s": peer["phases"].get(r.run.get("label"), {}).get("train_s"),
            "peer eval_s": peer["phases"].get(r.run.get("label"), {}).get("eval_s"),
            **{
                k: r.metrics.get(k)
                for k in (
                    "trial_wall_s",
                    "train_phase_s",
                    "eval_s",
                    "base_eval_s",
                    "startup_s",
                    "load_s",
                )
            },
        }
        for r in records
    ]
    summary = {
        "rounds": rounds,
        "harness_walls_s": walls["harness"],
        "peer_walls_s": walls["peer"],
        "harness_s": sum(walls["harness"]),
        "peer_s": sum(walls["peer"]),
        "harness / peer": sum(walls["harness"]) / sum(walls["peer"]),
        "trials_wall_s": sum(t["trial_wall_s"] or 0 for t in trials),
        "harness_train_s": sum(t["train_phase_s"] or 0 for t in trials),
        "peer_train_s": sum(t["peer train_s"] or 0 for t in trials),
    }
    return summary, trials


def overhead(trials: list[dict[str, Any]]) -> dict[str, float]:
    """Per-trial fixed overhead: trial wall time outside the training loop (warm-up steps
    included: they train) and evaluation (of the trained model, and of the untuned base where
    the trial computed it), as a share of trial wall time."""
    ok = [t for t in trials if t["trial_wall_s"] and t["train_phase_s"]]
    wall = sum(t["trial_wall_s"] for t in ok)
    fixed = sum(
        t["trial_wall_s"] - t["train_phase_s"] - (t["eval_s"] or 0) - (t.get("base_eval_s") or 0)
        for t in ok
    )
    return {
        "trials": len(ok),
        "fixed_s_per_trial": fixed / max(1, len(ok)),
        "share": fixed / wall if wall else float("nan"),
        "startup_s_per_trial": sum(t["startup_s"] or 0 for t in ok) / max(1, len(ok)),
        "load_s_per_trial": sum(t["load_s"] or 0 for t in ok) / max(1, len(ok)),
    }


RATIO_ORDER = ["4.", "1.", "2.", "3."]


def keep_previous(results: dict[str, Any], parts: set[str], previous: Path) -> None:
    """Carry over the parts not run this time from the last run at the same overrides, so that
    `--only sweep` refreshes one part of the reference results and keeps the others."""
    if not previous.exists():
        return
    old = json.loads(previous.read_text())
    if old.get("overrides") != results["overrides"]:
        return
    for part, (keys, prefixes) in PART_KEYS.items():
        if part in parts or keys[0] not in old:
            continue
        results.update({k: old[k] for k in keys if k in old})
        results["ratios"] += [r for r in old["ratios"] if prefixes and r[0].startswith(prefixes)]
        # the date of the run that measured it (an older one if that run kept it too)
        results.setdefault("kept", {})[part] = old.get("kept", {}).get(part, old.get("date"))


def _table(rows: list[dict[str, Any]]) -> str:
    import pandas as pd

    return pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3g")


def write(results: dict[str, Any], out: Path = OUT) -> Path:
    """reports/bench/harness.md (+ harness.json) from the measured results."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "harness.json").write_text(json.dumps(results, indent=2, default=str))
    env = results["environment"]
    lines = [
        "# Harness benchmark: the harness against what users would write instead",
        "",
        f"Measured {results['date']} on {env.get('cpu')} x {env.get('cpu_count')} "
        f"({env.get('device')}, {env.get('device_name')}); torch {env['versions'].get('torch')}, "
        f"transformers {env['versions'].get('transformers')}. Overrides: "
        f"`{' '.join(results['overrides']) or '(defaults)'}`. Regenerate with `make bench`."
        + "".join(f" Part {p}: from the run of {d}." for p, d in results.get("kept", {}).items()),
        "",
        "| comparison | ratio | target |",
        "|---|---|---|",
    ]
    for name, value, target in results["ratios"]:
        lines.append(f"| {name} | {value} | {target} |")
    if "throughput" in results:
        lines += [
            "",
            "## 1. Training throughput: harness trial vs bare PyTorch + PEFT loop",
            "",
            f"Same model, examples, batch, sequence length, optimizer and precision; "
            f"{results['throughput_steps']} steps, the first "
            f"{results['warmup_steps']} not measured; {results['throughput'][0]['repeats']} rounds, "
            f"each a bare run and a harness trial in fresh processes forked from the same server: "
            f"{results.get('pairing', 'one side after the other, the order alternating')}. "
            "A run's tokens/s is taken at its median step time (a slow step from a neighbour "
            "does not count); the ratio is the median of the rounds' own ratios. "
            "Spreads show the machine's run-to-run noise.",
            "",
            _table(results["throughput"]),
        ]
    if "step_cost" in results:
        c = results["step_cost"]
        step = next(
            (
                r["bare s/step (median)"]
                for r in results.get("throughput", [])
                if r["approach"].startswith("lora") and "bare s/step (median)" in r
            ),
            None,
        )
        share = f", {c['cost_ms'] / 1e3 / step:.2%} of the LoRA r=16 step above" if step else ""
        lines += [
            "",
            "### The harness's fixed cost per step",
            "",
            "Trainer, callbacks, progress bar and loss logging, measured where a step takes "
            f"milliseconds: the tiny model, LoRA r=16, {c['steps']} steps, {c['repeats']} rounds "
            f"one side after the other; median step {c['bare_ms']:.1f} ms bare, "
            f"{c['harness_ms']:.1f} ms harness: {c['cost_ms']:.1f} ms per step{share}.",
        ]
    if "sweep" in results:
        s, o = results["sweep"], results["overhead"]
        lines += [
            "",
            '## 2. Sweep wall time: harness vs Trainer.hyperparameter_search(backend="optuna")',
            "",
            f"Harness (`python -m sweep run`: trials in fresh processes, untuned-base evaluation, "
            f"MLflow tracking, records, adapters, report) against the peer (one process, "
            f"`model_init` per trial, same steps and generation accuracy, nothing recorded), "
            f"{s.get('rounds', 1)} run(s) each in ABBA order (harness, peer, peer, harness): "
            f"harness {' + '.join(f'{w:.0f}' for w in s.get('harness_walls_s', [s['harness_s']]))}"
            f" = {s['harness_s']:.0f} s, peer "
            f"{' + '.join(f'{w:.0f}' for w in s.get('peer_walls_s', [s['peer_s']]))} = "
            f"{s['peer_s']:.0f} s. Ratio {s['harness / peer']:.3f}. Per trial, first round: the "
            f"training loops took {s['harness_train_s']:.0f} s (harness: logits only where the "
            f"loss is, `train.loss_logits=answer`) and {s['peer_train_s']:.0f} s (peer: a plain "
            "Trainer, logits everywhere).",
            "",
            _table(results["trials"]),
            "",
            "## 3. Per-trial fixed overhead",
            "",
            f"{o['fixed_s_per_trial']:.1f} s per trial outside the training loop and evaluation "
            f"(process start {o['startup_s_per_trial']:.2f} s, model load "
            f"{o['load_s_per_trial']:.2f} s, then data, method set-up, saving and exit): "
            f"{o['share']:.1%} of trial wall time over {o['trials']} trials.",
        ]
    if "eval" in results:
        e = results["eval"]
        lines += [
            "",
            "## 4. Evaluation: batched evaluator vs one-by-one greedy generation",
            "",
            f"{e['prompts']} eval prompts, untuned base model, up to {e['max_new_tokens']} new "
            f"tokens, batches of {e['batch_size']}: {e['generated_tokens']} answer tokens. "
            f"Batched {e['batched_s']:.2f} s ({e['batched_tokens_per_s']:.0f} tokens/s), one by "
            f"one {e['one_by_one_s']:.2f} s ({e['one_by_one_tokens_per_s']:.0f} tokens/s); "
            f"identical answers: {e['identical_answers']}/{e['prompts']}.",
        ]
    path = out / "harness.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _positive(text: str) -> int:
    """argparse type: an integer >= 1, else one clear line."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed; expected an integer >= 1")
    return int(text)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m sweep.bench", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--steps", type=_positive, default=16, help="throughput trials' steps (default 16)"
    )
    ap.add_argument(
        "--repeats",
        type=_positive,
        default=4,
        help="throughput rounds (a run per side each, alternating order; default 4)",
    )
    ap.add_argument(
        "--cost-steps",
        type=_positive,
        default=200,
        help="steps of the per-step cost runs on the tiny model (default 200)",
    )
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    ap.add_argument(
        "--sweep-rounds",
        type=_positive,
        default=2,
        help="sweep runs per side, ABBA order (default 2)",
    )
    ap.add_argument("--out", default=str(OUT), help=f"where harness.md/json go (default {OUT})")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every part")
    a = ap.parse_args(argv)
    parts = set(a.only.split(","))
    if not parts <= set(PARTS):
        ap.error(
            f"--only: unknown part(s) {sorted(parts - set(PARTS))}; allowed: {', '.join(PARTS)}"
        )
    cfg = compose(a.overrides)  # bad overrides fail here, before anything runs
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "overrides": a.overrides,
        "environment": record.environment(),
        "ratios": [],
    }
    ratios = results["ratios"]
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp:
        work = Path(tmp)
        if "eval" in parts:
            print("[bench] eval: batched evaluator vs one-by-one greedy", flush=True)
            e = results["eval"] = eval_speed.run(cfg)
            ratios.append(
                (
                    "4. eval tokens/s, batched / one-by-one",
                    f"{e['batched_tokens_per_s'] / e['one_by_one_tokens_per_s']:.2f}x "
                    f"({e['identical_answers']}/{e['prompts']} answers identical)",
                    "> 1, all identical",
                )
            )
        if "throughput" in parts:
            rows = results["throughput"] = throughput(a.overrides, a.steps, a.repeats, work)
            results["throughput_steps"] = a.steps
            results["warmup_steps"] = cfg.train.measure_warmup_steps
            halves = core_halves()
            results["pairing"] = (
                f"both sides at once, on cores {halves[0]} and {halves[1]} (swapped every round)"
                if halves
                else "one side after the other, the order alternating"
            )
            for r in rows:
                ratios.append(
                    (
                        f"1. training tokens/s, harness / bare, {r['approach']}",
                        f"{r['harness / bare']:.3f}",
                        ">= 0.97",
                    )
                )
        if "step" in parts:
            results["step_cost"] = step_cost(a.overrides, a.repeats, work, a.cost_steps)
        if "sweep" in parts:
            results["sweep"], results["trials"] = sweep_vs_peer(a.overrides, work, a.sweep_rounds)
            results["overhead"] = overhead(results["trials"])
            ratios.append(
                (
                    "2. sweep wall time, harness / peer",
                    f"{results['sweep']['harness / peer']:.3f}",
                    "<= 1.0",
                )
            )
            ratios.append(
                (
                    "3. per-trial fixed overhead share",
                    f"{results['overhead']['share']:.1%}",
                    "<= 5% (CPU)",
                )
            )
    keep_previous(results, parts, Path(a.out) / "harness.json")
    ratios.sort(key=lambda r: RATIO_ORDER.index(r[0][:2]))
    path = write(results, Path(a.out))
    print("\n".join(f"[bench] {n}: {v}  (target {t})" for n, v, t in ratios), flush=True)
    print(f"[bench] written {path}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except ConfigError as exc:  # a bad override: one line, before anything runs
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
