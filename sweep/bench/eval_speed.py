"""The batched evaluator against one-by-one greedy generation on the same prompts.

Both decode greedily with the KV cache and stop a prompt once its answer line is complete; the
batched path is the harness's own evaluator (`sweep.trial.evaluate.generate`: left-padded batches of
eval.batch_size). Answers must be identical;
tokens/s counts the tokens each answer really has (up to its end of turn), the same for both.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import StoppingCriteriaList

from sweep.settings.schema import Config
from sweep.trial import batches, data, evaluate, methods, models
from sweep.trial.measure import sync


@torch.no_grad()
def one_by_one(
    model: Any, tok: Any, prompts: list[list[int]], max_new_tokens: int
) -> list[list[int]]:
    """Greedy completion of each prompt alone (no padding): the generated token ids."""
    dev = next(model.parameters()).device
    outs = []
    for p in prompts:
        ids = torch.tensor([p], device=dev)
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            stopping_criteria=StoppingCriteriaList([evaluate.answer_line_done(tok, len(p))]),
        )
        outs.append(out[0, len(p) :].tolist())
    return outs


def _answer_tokens(ids: list[int], eos: int | None) -> int:
    return ids.index(eos) if eos is not None and eos in ids else len(ids)


def run(cfg: Config) -> dict[str, Any]:
    """Time both ways on the eval prompts of `cfg` with the untuned base model."""
    e, sp = cfg.eval, cfg.dataset.system_prompt
    path = models.resolve(cfg.model, cfg.cache_dir)
    tok = models.load_tokenizer(path)
    model = models.load_model(path, methods.dtype_for(cfg.train.precision)).eval()
    task = data.load_task(cfg.dataset, 1, e.size)
    prompts = [batches.prompt_ids(tok, ex.prompt, sp) for ex in task.eval]
    evaluate.generate(model, tok, prompts[:2], 2, 2)  # warm-up: first-call allocations
    sync()
    t0 = time.perf_counter()
    batched = evaluate.generate(model, tok, prompts, e.max_new_tokens, e.batch_size)
    sync()
    t1 = time.perf_counter()
    single_ids = one_by_one(model, tok, prompts, e.max_new_tokens)
    sync()
    t2 = time.perf_counter()
    single = tok.batch_decode(single_ids, skip_special_tokens=True)
    tokens = sum(_answer_tokens(ids, tok.eos_token_id) for ids in single_ids)
    same = sum(a == b for a, b in zip(batched, single, strict=True))
    return {
        "prompts": len(prompts),
        "batch_size": e.batch_size,
        "max_new_tokens": e.max_new_tokens,
        "generated_tokens": tokens,
        "batched_s": t1 - t0,
        "one_by_one_s": t2 - t1,
        "batched_tokens_per_s": tokens / (t1 - t0),
        "one_by_one_tokens_per_s": tokens / (t2 - t1),
        "identical_answers": same,
        "different": [
            {"batched": a, "one_by_one": b} for a, b in zip(batched, single, strict=True) if a != b
        ][:3],
    }
