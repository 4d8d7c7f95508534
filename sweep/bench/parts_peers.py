"""`make bench`'s peer parts: TRL's SFTTrainer, packing against padding, and the kernel switches.
Each has a runner, its ratio rows and its section.

    python -m sweep.bench --only sft
"""

from __future__ import annotations

from typing import Any

from sweep.bench.kernels import kernels
from sweep.bench.packing import packing_throughput
from sweep.bench.paired import sft_throughput
from sweep.bench.part_kit import Ratio, Settings, floats, md_table, pairing, with_interval


def run_sft(s: Settings) -> dict[str, Any]:
    rows = sft_throughput(s.overrides, s.steps, s.repeats, s.work)
    return {
        "sft": rows,
        "sft_steps": s.steps,
        "sft_warmup_steps": s.cfg.train.measure_warmup_steps,
        "sft_pairing": pairing(),
    }


def _gib(x: float | None) -> str:
    return f"{x:.2f}" if x else "?"


def sft_ratios(results: dict[str, Any]) -> list[Ratio]:
    return [
        (
            f"5. training tokens/s, harness / TRL SFTTrainer, {r['approach']}",
            f"{with_interval(r['harness / SFTTrainer'], floats(r.get('round ratios')), 1.1)}; peak memory "
            f"{_gib(r['harness peak GiB (median)'])} vs {_gib(r['SFTTrainer peak GiB (median)'])}"
            " GiB",
            ">= 1.1",
        )
        for r in results["sft"]
    ]


def _loss_note(d: dict[str, Any]) -> str:
    """How each side computed its loss, where the run recorded the harness's."""
    impl = d.get("harness_loss_impl")
    if impl is None:
        return ""
    same = "the same loss computed the same way" if impl == "chunked" else f"the harness: {impl}"
    return (" (SFTTrainer computes it through its fused LM head, TRL's ChunkedLogProbFunction, "
            f"the kernel of the harness's train.loss_impl=chunked; {same})")  # fmt: skip


def _on(x: Any) -> str:
    return "on" if x is True else "off" if x is False else str(x)


def sft_section(results: dict[str, Any]) -> list[str]:
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
        f"off by default), loss `{d.get('loss_type')}`{_loss_note(d)}, "
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
        md_table(table),
    ]


def run_packing(s: Settings) -> dict[str, Any]:
    print("[bench] packing: packed vs padded batches on mixed-length data", flush=True)
    return {"packing": packing_throughput(s.overrides, s.steps, s.repeats, s.work / "packing")}


def packing_ratios(results: dict[str, Any]) -> list[Ratio]:
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


def packing_section(results: dict[str, Any]) -> list[str]:
    p = results["packing"]
    shapes = p.get("first_batch_shape", {})
    return [
        "",
        "## 6. Packing: packed against padded batches on mixed-length data",
        "",
        "Two harness trials (`sweep.launch.launch`, each in its own process) on the same JSONL of "
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


def run_kernels(s: Settings) -> dict[str, Any]:
    rows = kernels(s.overrides, s.steps, s.repeats, s.work)
    return {"kernels": rows, "kernels_steps": s.steps, "kernels_pairing": pairing()}


def kernel_ratios(results: dict[str, Any]) -> list[Ratio]:
    return [
        (
            f"7. training tokens/s, {r['switch']} on / off, {r['approach']}",
            f"{r['with / without']:.3f}" if r["with / without"] else r["note"],
            "default where faster, set-up included",
        )
        for r in results["kernels"]
    ]


def kernel_section(results: dict[str, Any]) -> list[str]:
    rows = [{k: v for k, v in r.items() if k not in ("overrides", "without")}
            for r in results["kernels"]]  # fmt: skip
    for r, raw in zip(rows, results["kernels"], strict=True):
        off = f" vs `{' '.join(raw['without'])}`" if raw.get("without") else ""
        r["switch"] = f"{raw['switch']} (`{' '.join(raw['overrides'])}`{off})"
    return [
        "",
        "## 7. Kernel switches: the same harness trial with and without each",
        "",
        f"{results['kernels_steps']} steps, the first not measured as in part 1; rounds "
        f"{results.get('kernels_pairing', '')}. A switch becomes a default only where it "
        "measured faster on the device class the default applies to.",
        "",
        md_table(rows),
    ]
