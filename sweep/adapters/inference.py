"""The inference benchmark: adapter separate vs merged, per trial and for a whole sweep.

    python -m sweep inference default    # reports/default/inference.{json,md} (make inference)

For each finished trial the model is loaded twice, one at a time: the trial's own (adapter
separate; QLoRA: on the 4-bit base) and merged (QLoRA: into the dequantized base), both through
`sweep.adapters.trained.load`. Each is timed loading and decoding greedily at batch size 1, and the two
are compared by their greedy answers and their largest logit gap (`inference_block`). For a
sweep, `inference_report` also times switching between its LoRA adapters on one base and writes
inference.json and inference.md into the report folder, each written whole
(`sweep.results.record.write_whole`); the report includes inference.md when it exists.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from sweep.adapters.trained import (
    Loaded,
    answers,
    clock,
    load,
    load_adapters,
    logits,
    max_abs_diff,
    switch,
)
from sweep.results import trials
from sweep.results.record import write_whole
from sweep.settings.compose import ConfigError
from sweep.trial import batches


def dir_bytes(path: Path) -> int:
    """Bytes of every file under `path` (an adapter or checkpoint folder)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@torch.no_grad()
def tokens_per_s(
    loaded: Loaded, prompts: Sequence[str], new_tokens: int, repeats: int = 2
) -> float:
    """Greedy decoding speed at batch size 1, in generated tokens per second.

    Exactly `new_tokens` per prompt (end of turn ignored, so short answers do not turn it into a
    prefill benchmark); the best of `repeats` runs after a warm-up, since a busy machine only ever
    slows a run down.
    """
    model, tok, sp = loaded.model, loaded.tok, loaded.cfg.dataset.system_prompt
    device = next(model.parameters()).device
    ids = [torch.tensor([batches.prompt_ids(tok, p, sp)], device=device) for p in prompts]

    def run(n: int) -> float:
        start = clock()
        for x in ids:
            model.generate(
                input_ids=x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
                use_cache=True,
            )
        return clock() - start

    run(2)
    best = min(run(new_tokens) for _ in range(repeats))
    return len(ids) * new_tokens / best if best > 0 else float("nan")


def _measure(
    trial_dir: Path, merged: bool, prompts: list[str], max_new_tokens: int
) -> dict[str, Any]:
    """Load one way, measure, and let the model go (one model in memory at a time)."""
    loaded = load(trial_dir, merged=merged)
    out = {
        "load_s": loaded.load_s,
        "base": loaded.base_weights,
        "answers": answers(loaded, prompts, max_new_tokens),
        "tokens_per_s": tokens_per_s(loaded, prompts, max_new_tokens),
        "logits": logits(loaded, prompts),
    }
    del loaded
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def inference_block(
    trial_dir: str | Path, prompts: Sequence[str], max_new_tokens: int = 16
) -> dict[str, Any]:
    """Adapter size, load time and generation speed separate vs merged, and their logit gap.

    Separate is the trial's own model (QLoRA: the 4-bit base); merged folds the adapter into the
    weights (QLoRA: into the dequantized base). Load times exclude one-time imports; tokens/s is
    greedy decoding at batch size 1, `max_new_tokens` per prompt (`tokens_per_s`); the answers
    are compared as generated (greedy, stopping at end of turn); the logit gap is over one
    unpadded forward pass per prompt. Raises ConfigError for a trial without an adapter.
    """
    import peft  # noqa: F401  (one-time import cost, seconds, is not load time)

    trial_dir, prompts = Path(trial_dir), list(prompts)
    if not prompts:
        raise ConfigError("inference_block needs at least one prompt")
    sep = _measure(trial_dir, False, prompts, max_new_tokens)
    mer = _measure(trial_dir, True, prompts, max_new_tokens)
    return {
        "adapter_bytes": dir_bytes(trials.find_trial(trial_dir) / trials.ADAPTER),
        "load_separate_s": sep["load_s"],
        "load_merged_s": mer["load_s"],
        "gen_tokens_per_s_separate": sep["tokens_per_s"],
        "gen_tokens_per_s_merged": mer["tokens_per_s"],
        "max_abs_logit_diff": max_abs_diff(sep["logits"], mer["logits"]),
        "same_greedy_answers": sep["answers"] == mer["answers"],
        "n_prompts": len(prompts),
        "max_new_tokens": max_new_tokens,
        "separate_base": sep["base"],
        "merged_base": mer["base"],
    }


def inference_report(
    experiment: str,
    outputs: str | Path = "outputs",
    report_dir: str | Path = "reports",
    n_prompts: int = 3,
    max_new_tokens: int = 8,
) -> Path:
    """Inference block for every ok trial of a sweep -> reports/<experiment>/inference.{json,md}.

    Prompts are the first eval prompts the trial recorded. Also times switching between the
    sweep's LoRA adapters on one base. `make report` includes inference.md when it exists.
    """
    import pandas as pd

    rows, lora_dirs = [], []
    for trial_dir in sorted(Path(outputs, experiment, "trials").glob("*")):
        rec = trials.read_record(trial_dir)
        if rec is None or not rec.run or rec.status != "ok":
            continue
        run = rec.run
        prompts = [s["prompt"] for s in rec.train.get("samples", [])][:n_prompts] or ["2 + 2 ="]
        print(
            f"[inference] {run.get('label')}: separate vs merged on {len(prompts)} prompt(s)",
            flush=True,
        )
        rows.append(
            {"approach": run.get("label"), **inference_block(trial_dir, prompts, max_new_tokens)}
        )
        if run.get("method") == "lora":
            lora_dirs.append(trial_dir)
    if not rows:
        raise ConfigError(
            f"experiment {experiment!r}: no finished trials under {outputs}/{experiment}/trials"
        )
    switch_ms = None
    if len(lora_dirs) >= 2:
        loaded = load_adapters(lora_dirs)
        switch_ms = 1000 * max(switch(loaded, name) for name in reversed(loaded.adapters))
    out_dir = Path(report_dir, experiment)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"trials": rows, "switch_ms": switch_ms}, indent=2)
    write_whole(out_dir / "inference.json", lambda tmp: tmp.write_text(text))
    table = pd.DataFrame(rows)[
        [
            "approach",
            "adapter_bytes",
            "load_separate_s",
            "load_merged_s",
            "gen_tokens_per_s_separate",
            "gen_tokens_per_s_merged",
            "max_abs_logit_diff",
            "same_greedy_answers",
            "merged_base",
        ]
    ]
    lines = [
        "## Inference: adapter separate vs merged",
        "",
        table.to_markdown(index=False, floatfmt=".3g"),
        "",
        f"Greedy decoding at batch size 1, {max_new_tokens} new tokens per prompt. Load times "
        "exclude one-time imports. The logit gap is the largest absolute difference between "
        "the separate and merged model over the prompts (float rounding expected).",
        ""
        if switch_ms is None
        else f"Switching between {len(lora_dirs)} LoRA adapters loaded on one base: "
        f"{switch_ms:.1f} ms at most (PEFT set_adapter, no reload).",
        "",
    ]
    path = out_dir / "inference.md"
    write_whole(path, lambda tmp: tmp.write_text("\n".join(lines)))
    return path
