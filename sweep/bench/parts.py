"""`make bench`'s six parts as a registry: what each runs, keeps, contributes and renders.

    from sweep.bench.parts import PARTS, write
    write(json.loads(Path("reports/bench/harness.json").read_text()))  # harness.md again

A Part owns some entries of the results (written to reports/bench/harness.json), its rows of
the ratio table at the top of harness.md, and its section below it. The ratio table and the
sections follow their own explicit orders (RATIO_ORDER, SECTION_ORDER); both derive from the
results alone, so a part kept from the last run (keep_previous) renders as when it ran.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweep.bench import eval_speed
from sweep.bench.kernels import kernels
from sweep.bench.packing import packing_throughput
from sweep.bench.paired import (
    core_halves,
    ratio_interval,
    sft_throughput,
    step_cost,
    throughput,
    verdict,
)
from sweep.bench.sweep_time import sweep_vs_peer
from sweep.schema import Config

OUT = Path("reports/bench")
Ratio = tuple[str, str, str]  # (comparison, ratio, target): one row of harness.md's first table


@dataclass(frozen=True)
class Settings:
    """What a part runs with: the user's Hydra overrides (and their composed config), a scratch
    folder, and the command line's counts (see `python -m sweep.bench --help`)."""

    overrides: list[str]
    cfg: Config
    work: Path
    steps: int
    repeats: int
    cost_steps: int
    sweep_rounds: int


@dataclass(frozen=True)
class Part:
    """One comparison. `keys`: the results entries it writes (the first present iff it ran);
    `run`: measures and returns those entries; `ratios`: its rows of the ratio table, in order;
    `section`: its lines of harness.md. Both take the whole results (a section may cite another
    part's)."""

    name: str
    keys: tuple[str, ...]
    run: Callable[[Settings], dict[str, Any]]
    ratios: Callable[[dict[str, Any]], list[Ratio]]
    section: Callable[[dict[str, Any]], list[str]]

    def ran(self, results: dict[str, Any]) -> bool:
        """Whether `results` hold this part (measured now or kept from the last run)."""
        return self.keys[0] in results


def _table(rows: list[dict[str, Any]]) -> str:
    import pandas as pd

    return pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3g")


def _run_eval(s: Settings) -> dict[str, Any]:
    print("[bench] eval: batched evaluator vs one-by-one greedy", flush=True)
    return {"eval": eval_speed.run(s.cfg)}


def _eval_ratios(results: dict[str, Any]) -> list[Ratio]:
    e = results["eval"]
    return [
        (
            "4. eval tokens/s, batched / one-by-one",
            f"{e['batched_tokens_per_s'] / e['one_by_one_tokens_per_s']:.2f}x "
            f"({e['identical_answers']}/{e['prompts']} answers identical)",
            "> 1, all identical",
        )
    ]


def _eval_section(results: dict[str, Any]) -> list[str]:
    e = results["eval"]
    return [
        "",
        "## 4. Evaluation: batched evaluator vs one-by-one greedy generation",
        "",
        f"{e['prompts']} eval prompts, untuned base model, up to {e['max_new_tokens']} new "
        f"tokens, batches of {e['batch_size']}: {e['generated_tokens']} answer tokens. "
        f"Batched {e['batched_s']:.2f} s ({e['batched_tokens_per_s']:.0f} tokens/s), one by "
        f"one {e['one_by_one_s']:.2f} s ({e['one_by_one_tokens_per_s']:.0f} tokens/s); "
        f"identical answers: {e['identical_answers']}/{e['prompts']}.",
    ]


def _pairing() -> str:
    """How paired.py's rounds ran on this machine, in words."""
    halves = core_halves()
    return (
        f"both sides at once, on cores {halves[0]} and {halves[1]} (swapped every round)"
        if halves
        else "one side after the other, the order alternating"
    )


def _run_throughput(s: Settings) -> dict[str, Any]:
    rows = throughput(s.overrides, s.steps, s.repeats, s.work)
    return {
        "throughput": rows,
        "throughput_steps": s.steps,
        "warmup_steps": s.cfg.train.measure_warmup_steps,
        "pairing": _pairing(),
    }


def _with_interval(value: float, ratios: list[float], target: float, at_least: bool = True) -> str:
    """A paired ratio as the table gives it: its value, the 95% interval of the rounds' mean
    ratio, and whether that interval clears the target (paired.verdict)."""
    lo, hi = ratio_interval(ratios)
    if math.isnan(lo):
        return f"{value:.3f}"
    v = verdict((lo, hi), target, at_least)
    return f"{value:.3f} (95% interval {lo:.2f}-{hi:.2f} over {len(ratios)} rounds: {v})"


def _floats(rounds: str | None) -> list[float]:
    """A table's "round ratios" cell ("1.01 0.98 ...") as numbers."""
    return [float(x) for x in (rounds or "").split()]


def _throughput_ratios(results: dict[str, Any]) -> list[Ratio]:
    return [
        (
            f"1. training tokens/s, harness / bare, {r['approach']}",
            _with_interval(r["harness / bare"], _floats(r.get("round ratios")), 0.97),
            ">= 0.97",
        )
        for r in results["throughput"]
    ]


def _throughput_section(results: dict[str, Any]) -> list[str]:
    return [
        "",
        "## 1. Training throughput: harness trial vs bare PyTorch + PEFT loop",
        "",
        f"Same model, examples, batch, sequence length, optimizer and precision; "
        f"{results['throughput_steps']} steps, the first "
        f"{results['warmup_steps']} not measured; {results['throughput'][0]['repeats']} rounds, "
        f"each a bare run and a harness trial in fresh processes forked from the same server: "
        f"{results.get('pairing', 'one side after the other, the order alternating')}. "
        "A run's tokens/s is taken at its median step time (a slow step from a neighbour "
        "does not count), over the steps it ran while the other side was training (side by "
        "side, one side's first and last steps would run beside the other's loading or "
        "evaluation); the ratio is the median of the rounds' own ratios. "
        "Spreads show the machine's run-to-run noise.",
        "",
        _table(results["throughput"]),
    ]


def _run_step(s: Settings) -> dict[str, Any]:
    return {"step_cost": step_cost(s.overrides, s.repeats, s.work, s.cost_steps)}


def _step_section(results: dict[str, Any]) -> list[str]:
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
    return [
        "",
        "### The harness's fixed cost per step",
        "",
        "Trainer, callbacks, progress bar and loss logging, measured where a step takes "
        f"milliseconds: the tiny model, LoRA r=16, {c['steps']} steps, {c['repeats']} rounds "
        f"one side after the other; median step {c['bare_ms']:.1f} ms bare, "
        f"{c['harness_ms']:.1f} ms harness: {c['cost_ms']:.1f} ms per step{share}.",
    ]


def _run_sweep(s: Settings) -> dict[str, Any]:
    summary, trials, fixed = sweep_vs_peer(s.overrides, s.work, s.sweep_rounds)
    return {"sweep": summary, "trials": trials, "overhead": fixed}


def _sweep_ratios(results: dict[str, Any]) -> list[Ratio]:
    """The sweep rows; with several rounds, each with the 95% interval of the rounds' own ratios
    (a round: a harness run and the peer run beside it in ABBA order) and its verdict."""
    gpu = results.get("environment", {}).get("device") == "cuda"  # issue 17's targets per device
    s, target = results["sweep"], 1.0 if gpu else 0.9
    limit = f"<= {target} ({'GPU' if gpu else 'CPU'})"
    rows = [("2. sweep wall time, harness / peer", s["harness / peer"], _rounds(s))]
    if "harness / peer, base cached" in s:
        name = "2. the same, a later sweep (untuned base cached; derived)"
        cached = _rounds(s, s["harness_base_eval_s"])
        rows.append((name, s["harness / peer, base cached"], cached))
    return [
        *((name, _with_interval(v, r, target, at_least=False), limit) for name, v, r in rows),
        (
            "3. per-trial fixed overhead share",
            f"{results['overhead']['share']:.1%}",
            "<= 10% (GPU)" if gpu else "<= 5% (CPU)",
        ),
    ]


def _rounds(s: dict[str, Any], less: list[float] | None = None) -> list[float]:
    """Each round's own ratio: its harness run's wall (less `less`, a phase of each) over its
    peer run's; [] where the runs do not pair up."""
    h, p = s.get("harness_walls_s", []), s.get("peer_walls_s", [])
    if len(h) != len(p):
        return []
    return [(a - c) / b for a, b, c in zip(h, p, less or [0.0] * len(h), strict=True)]


def _sweep_section(results: dict[str, Any]) -> list[str]:
    s, o = results["sweep"], results["overhead"]
    return [
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
        f"{s['peer_s']:.0f} s. Ratio {s['harness / peer']:.3f}{_round_ratios(s)}."
        f"{_cached_base(s)} Per trial, "
        "first round: the "
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


def _round_ratios(s: dict[str, Any]) -> str:
    """Each round's own ratio (its harness run over its peer run): how far the machine drifted."""
    rounds = _rounds(s)
    return f" (rounds {', '.join(f'{r:.3f}' for r in rounds)})" if len(rounds) > 1 else ""


def _cached_base(s: dict[str, Any]) -> str:
    """The sweep ratio a later sweep on the same model and eval set would give: the untuned
    base's accuracy and retention are then read from the cache (sweep/baseline.py)."""
    if "harness / peer, base cached" not in s:
        return ""
    base = " + ".join(f"{b:.0f}" for b in s["harness_base_eval_s"])
    return (
        f" Each harness run cleared the untuned base's cache first, as on a fresh machine, and "
        f"spent {base} s evaluating the untuned base (the zero line, and the 4-bit base's "
        f"retention); a later sweep on the same model and eval set reads those from the cache "
        f"(about 0.1 s a trial). Less those measured phases, ratio "
        f"{s['harness / peer, base cached']:.3f} (derived from the same runs, not a separate "
        "measurement)."
    )


def _run_sft(s: Settings) -> dict[str, Any]:
    rows = sft_throughput(s.overrides, s.steps, s.repeats, s.work)
    return {
        "sft": rows,
        "sft_steps": s.steps,
        "sft_warmup_steps": s.cfg.train.measure_warmup_steps,
        "sft_pairing": _pairing(),
    }


def _gib(x: float | None) -> str:
    return f"{x:.2f}" if x else "?"


def _sft_ratios(results: dict[str, Any]) -> list[Ratio]:
    return [
        (
            f"5. training tokens/s, harness / TRL SFTTrainer, {r['approach']}",
            f"{_with_interval(r['harness / SFTTrainer'], _floats(r.get('round ratios')), 1.1)}; peak memory "
            f"{_gib(r['harness peak GiB (median)'])} vs {_gib(r['SFTTrainer peak GiB (median)'])}"
            " GiB",
            ">= 1.1",
        )
        for r in results["sft"]
    ]


def _on(x: Any) -> str:
    return "on" if x is True else "off" if x is False else str(x)


def _sft_section(results: dict[str, Any]) -> list[str]:
    rows = results["sft"]
    first = rows[0]
    d = first.get("trl_defaults", {})
    bf16 = [
        r["approach"]
        for r in rows
        if "torch.bfloat16" in r.get("trl_defaults", {}).get("trainable_dtypes", [])
    ]
    kind = (
        "the CUDA allocator's peak (torch.cuda.max_memory_allocated) over training"
        if first.get("memory") == "cuda_max_allocated"
        else "each process's peak host RSS over the training phase"
    )
    dropped = [
        f"{r['approach']} {r['trl_defaults']['examples'] - r['trl_defaults']['examples_after_truncation']}"
        for r in rows
        if r.get("trl_defaults", {}).get("examples_after_truncation", 0)
        < r.get("trl_defaults", {}).get("examples", 0)
    ]
    table = [{k: v for k, v in r.items() if k not in ("trl", "trl_defaults")} for r in rows]
    return [
        "",
        "## 5. Training throughput and memory: harness trial vs TRL SFTTrainer (its defaults)",
        "",
        f"TRL {first.get('trl', '?')} `SFTTrainer` the way its documentation shows it: a "
        "conversational prompt/completion `datasets.Dataset`, `SFTConfig` at its defaults, the "
        "model by path, `peft_config` (LoRA) and `quantization_config` (QLoRA). Set to the "
        "harness's: model files and load dtype, examples and system prompt, batch size, steps, "
        "learning rate, warm-up, weight decay, optimizer, precision flags, max length and seed; "
        f"no evaluation or saving. {results['sft_steps']} steps, the first "
        f"{results['sft_warmup_steps']} not measured; {first['repeats']} rounds, each a "
        f"SFTTrainer run and a harness trial in fresh processes forked from the same server: "
        f"{results.get('sft_pairing', 'one side after the other, the order alternating')}. "
        "Tokens/s at the median step time, the ratio the median of the rounds' ratios (as in 1); "
        f"peak memory: {kind}.",
        "",
        "TRL's defaults kept: gradient checkpointing "
        f"{_on(d.get('gradient_checkpointing'))} (the harness's train.gradient_checkpointing is "
        f"off by default), loss `{d.get('loss_type')}`, "
        f"completion-only loss {_on(d.get('completion_only_loss_used'))}, packing "
        f"{_on(d.get('packing'))}, padding-free {_on(d.get('padding_free'))}, loss logged every "
        f"{d.get('logging_steps')} steps (harness: every step)"
        + (
            "; examples longer than the max length cut as the harness cuts them (TRL's "
            "`keep_end`; its default `keep_start` drops their answers)"
            if d.get("truncation_mode") == "keep_end"
            else ""
        )
        + (f"; examples dropped as fully truncated: {', '.join(dropped)}" if dropped else "")
        + (f"; trainable adapter weights cast to bf16: {', '.join(bf16)}" if bf16 else "")
        + ".",
        "",
        _table(table),
    ]


def _run_packing(s: Settings) -> dict[str, Any]:
    print("[bench] packing: packed vs padded batches on mixed-length data", flush=True)
    return {"packing": packing_throughput(s.overrides, s.steps, s.repeats, s.work / "packing")}


def _packing_ratios(results: dict[str, Any]) -> list[Ratio]:
    p = results["packing"]
    return [
        (
            "6. training tokens/s on mixed-length data, packed / padded",
            f"{p['steady_ratio']:.3f} (rounds {', '.join(f'{r:.3f}' for r in p['round_ratios'])})",
            ">= 1.3",
        )
    ]


def _settings(overrides: list[str]) -> str:
    """The packing trials' overrides, without the scratch data file's path."""
    return " ".join(o for o in overrides if not o.startswith("dataset.path="))


def _packing_section(results: dict[str, Any]) -> list[str]:
    p = results["packing"]
    shapes = p.get("first_batch_shape", {})
    return [
        "",
        "## 6. Packing: packed against padded batches on mixed-length data",
        "",
        "Two harness trials (`sweep.launch`, each in its own process) on the same JSONL of "
        "prompt/answer pairs 10..300 words long, spread evenly (sweep/bench/packing.py), the "
        f"same batches and {p['steps']} steps: `train.packing=true` (each batch's examples "
        "first-fit into rows of up to its longest example, position ids restarting per example, "
        "no padding between examples) against `train.packing=false` (right-padded to the "
        f"longest). {p['repeats']} rounds, the order swapped every round (ABBA). Tokens/s counts "
        f"the same non-padding tokens on both sides ({p['tokens_seen'].get('packed')} vs "
        f"{p['tokens_seen'].get('padded')}); first batch {shapes.get('packed')} packed, "
        f"{shapes.get('padded')} padded. Packed {p['packed_tokens_per_s']:.1f} tokens/s, padded "
        f"{p['padded_tokens_per_s']:.1f} (medians): ratio {p['ratio']:.3f}; at each run's median "
        f"step time, per round {', '.join(f'{r:.3f}' for r in p['round_ratios'])}, median "
        f"{p['steady_ratio']:.3f}. Overrides: `{_settings(p['overrides'])}`.",
    ]


def _run_kernels(s: Settings) -> dict[str, Any]:
    rows = kernels(s.overrides, s.steps, s.repeats, s.work)
    return {"kernels": rows, "kernels_steps": s.steps, "kernels_pairing": _pairing()}


def _kernel_ratios(results: dict[str, Any]) -> list[Ratio]:
    return [
        (
            f"7. training tokens/s, {r['switch']} on / off, {r['approach']}",
            f"{r['with / without']:.3f}" if r["with / without"] else r["note"],
            "default where faster, set-up included",
        )
        for r in results["kernels"]
    ]


def _kernel_section(results: dict[str, Any]) -> list[str]:
    rows = [{k: v for k, v in r.items() if k != "overrides"} for r in results["kernels"]]
    for r, raw in zip(rows, results["kernels"], strict=True):
        r["switch"] = f"{raw['switch']} (`{' '.join(raw['overrides'])}`)"
    return [
        "",
        "## 7. Kernel switches: the same harness trial with and without each",
        "",
        f"{results['kernels_steps']} steps, the first not measured as in part 1; rounds "
        f"{results.get('kernels_pairing', '')}. A switch becomes a default only where it "
        "measured faster on the device class the default applies to.",
        "",
        _table(rows),
    ]


# The registry, in run order (the order --only lists them in).
PARTS: dict[str, Part] = {
    p.name: p
    for p in (
        Part("eval", ("eval",), _run_eval, _eval_ratios, _eval_section),
        Part(
            "throughput",
            ("throughput", "throughput_steps", "warmup_steps", "pairing"),
            _run_throughput,
            _throughput_ratios,
            _throughput_section,
        ),
        Part("step", ("step_cost",), _run_step, lambda results: [], _step_section),
        Part("sweep", ("sweep", "trials", "overhead"), _run_sweep, _sweep_ratios, _sweep_section),
        Part(
            "sft",
            ("sft", "sft_steps", "sft_warmup_steps", "sft_pairing"),
            _run_sft,
            _sft_ratios,
            _sft_section,
        ),
        Part("packing", ("packing",), _run_packing, _packing_ratios, _packing_section),
        Part(
            "kernels",
            ("kernels", "kernels_steps", "kernels_pairing"),
            _run_kernels,
            _kernel_ratios,
            _kernel_section,
        ),
    )
}
# The ratio table: 4. eval, 1. throughput per approach, 2. sweep time, 3. overhead, 5. TRL,
# 6. packing, 7. kernel switches.
RATIO_ORDER = ("eval", "throughput", "step", "sweep", "sft", "packing", "kernels")
# The sections: 1. throughput, its per-step cost, 2. sweep time and 3. overhead, 4. eval, 5. TRL,
# 6. packing, 7. kernel switches.
SECTION_ORDER = ("throughput", "step", "sweep", "eval", "sft", "packing", "kernels")


def ratio_rows(results: dict[str, Any]) -> list[Ratio]:
    """The ratio table's rows of every part the results hold, in RATIO_ORDER."""
    return [
        row
        for name in RATIO_ORDER
        if PARTS[name].ran(results)
        for row in PARTS[name].ratios(results)
    ]


def keep_previous(results: dict[str, Any], parts: set[str], previous: Path) -> None:
    """Carry over the parts not run this time from the last run at the same overrides, so that
    `--only sweep` refreshes one part of the reference results and keeps the others."""
    if not previous.exists():
        return
    old = json.loads(previous.read_text())
    if old.get("overrides") != results["overrides"]:
        return
    for part in PARTS.values():
        if part.name in parts or not part.ran(old):
            continue
        results.update({k: old[k] for k in part.keys if k in old})
        # the date of the run that measured it (an older one if that run kept it too)
        results.setdefault("kept", {})[part.name] = old.get("kept", {}).get(
            part.name, old.get("date")
        )


def write(results: dict[str, Any], out: Path = OUT) -> Path:
    """reports/bench/harness.md (+ harness.json) from the measured results: the ratio table
    (results["ratios"], see ratio_rows), then each part's section in SECTION_ORDER."""
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
        *(f"| {name} | {value} | {target} |" for name, value, target in results["ratios"]),
    ]
    for name in SECTION_ORDER:
        if PARTS[name].ran(results):
            lines += PARTS[name].section(results)
    path = out / "harness.md"
    path.write_text("\n".join(lines) + "\n")
    return path
