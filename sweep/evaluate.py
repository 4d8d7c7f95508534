"""Evaluation: batched greedy generation scored by the task's own scorer, and eval loss.

    python -m sweep trial train.steps=1 eval.size=40    # mostly evaluation

Prompts are left-padded and generated together (eval.batch_size at a time); the answer is the
first line of the generated text. Accuracy is the mean of the task's scores.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sweep.data import IGNORE, Example, Task, collate, encode, prompt_ids


def extract_answer(text: str) -> str:
    """The model's answer: first non-empty line of the generation, stripped."""
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


@torch.no_grad()
def generate(
    model: Any, tok: Any, prompts: list[list[int]], max_new_tokens: int, batch_size: int
) -> list[str]:
    """Greedy completions of token-id prompts, batched with left padding."""
    device = next(model.parameters()).device
    pad = tok.pad_token_id
    outputs: list[str] = []
    was_training = model.training
    model.eval()
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, p in enumerate(chunk):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=tok.eos_token_id,
            use_cache=True,
        )
        outputs += tok.batch_decode(out[:, width:], skip_special_tokens=True)
    model.train(was_training)
    return outputs


def accuracy(
    model: Any,
    tok: Any,
    task: Task,
    max_new_tokens: int,
    batch_size: int,
    system_prompt: str | None = None,
) -> dict[str, Any]:
    """Score the eval set; returns accuracy, the number of tokens generated, and a few samples."""
    prompts = [prompt_ids(tok, ex.prompt, system_prompt) for ex in task.eval]
    texts = generate(model, tok, prompts, max_new_tokens, batch_size)
    answers = [extract_answer(t) for t in texts]
    scores = [task.score(a, ex) for a, ex in zip(answers, task.eval, strict=True)]
    samples = [
        {"prompt": ex.prompt, "expected": ex.answer, "answer": a, "score": s}
        for ex, a, s in list(zip(task.eval, answers, scores, strict=True))[:5]
    ]
    generated = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
    return {
        "accuracy": sum(scores) / max(1, len(scores)),
        "n_eval": len(scores),
        "generated_tokens": generated,
        "samples": samples,
    }


@torch.no_grad()
def eval_loss(
    model: Any,
    tok: Any,
    examples: list[Example],
    max_len: int,
    batch_size: int,
    system_prompt: str | None = None,
) -> float:
    """Mean cross-entropy per answer token on the eval examples (teacher forcing)."""
    device = next(model.parameters()).device
    rows = [encode(tok, ex, max_len, system_prompt) for ex in examples]
    pad = collate(tok.pad_token_id)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        batch = {k: v.to(device) for k, v in pad(rows[start : start + batch_size]).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="sum"
        )
        total += loss.item()
        count += int((labels != IGNORE).sum())
    model.train(was_training)
    return total / count if count else math.nan
