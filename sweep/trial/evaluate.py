"""Evaluation: batched greedy generation scored by the task's own scorer, and eval loss.

    python -m sweep trial train.steps=1 eval.size=40    # mostly evaluation

Prompts are left-padded and generated together (eval.batch_size at a time); the answer is the
first line of the generated text (generation stops there), or the whole text for a scorer that
reads it all (dataset.scorer=gsm8k: reasoning, then '#### N'; sweep/trial/scorers.py). Accuracy is the
share of items answered right, task_score the mean of the task's scores. A trial's final
evaluation (`loss_and_accuracy`) scores the eval loss and prefills the generation cache in one
forward pass, so the prompts are run through the model once, not twice. Decoding drops each row
from the batch (and its cache) once its answer is written (`_greedy`).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch

from sweep.settings.schema import Config
from sweep.trial.batches import collate, encode, prompt_ids, to_device
from sweep.trial.data import IGNORE, Example, Task


def extract_answer(text: str) -> str:
    """The model's answer: first non-empty line of the generation, stripped."""
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def _left_pad(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    return ids, mask


def line_ended(text: str) -> bool:
    """Whether a generation's first non-empty line has ended (its answer is then complete)."""
    return "\n" in text.lstrip()


def answer_line_done(tok: Any, prompt_width: int) -> Any:
    """A stopping criterion: a row is done once its first non-empty line has ended. The answer
    is that line (`extract_answer`), so the tokens after it cannot change any answer."""
    from transformers import StoppingCriteria

    class AnswerLineDone(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: Any, **kw: Any) -> torch.Tensor:
            texts = tok.batch_decode(input_ids[:, prompt_width:], skip_special_tokens=True)
            done = [line_ended(t) for t in texts]
            return torch.tensor(done, device=input_ids.device)

    return AnswerLineDone()


# generation-config keys that leave greedy choices alone (ids, output flags, sampling settings
# that greedy ignores, lengths we set): a model whose config sets any other (a repetition
# penalty, banned words, beams...) is decoded by `generate`, which applies it
PLAIN_GREEDY_KEYS = {
    "_from_model_config", "transformers_version", "bos_token_id", "eos_token_id",
    "pad_token_id", "decoder_start_token_id", "use_cache", "output_attentions",
    "output_hidden_states", "output_scores", "output_logits", "return_dict_in_generate",
    "do_sample", "temperature", "top_p", "top_k", "min_p", "typical_p", "max_length",
    "max_new_tokens", "cache_implementation",
}  # fmt: skip


def plain_greedy(model: Any) -> bool:
    """Whether greedy decoding of this model is a plain argmax per step (no logits processor
    from its generation config)."""
    config = getattr(model, "generation_config", None)
    return config is None or set(config.to_diff_dict()) <= PLAIN_GREEDY_KEYS


def _greedy(
    model: Any,
    tok: Any,
    ids: torch.Tensor,
    mask: torch.Tensor,
    n: int,
    first_line: bool = True,
    past_key_values: Any = None,
) -> list[str]:
    """Greedy continuation of left-padded prompts until each row's answer line is complete
    (with first_line; else its end of turn) or `n` tokens; the decoded new text.

    past_key_values: a cache of every prompt column but the last (`_one_batch`'s prefill). A
    row that is done leaves the batch, its cache rows with it, so the steps after it compute
    only the rows still writing: a batch's decoding costs the tokens written, not its size
    times its longest answer (a tuned model answers in 2-3 tokens, and one row in a batch that
    runs to the limit used to keep all of them decoding). Same argmax per step as `generate`,
    which decodes instead where the model's generation config changes greedy choices or its
    cache cannot drop rows."""
    cache = past_key_values
    if not plain_greedy(model) or (cache is not None and not _selectable(cache)):
        return _generate(model, tok, ids, mask, n, first_line, cache)
    start = cache.get_seq_length() if cache is not None else 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, start:]
    step = ids[:, start:]
    eos = {tok.eos_token_id} - {None}
    rows = list(range(len(ids)))  # the batch's rows still writing, by their place in `ids`
    written: list[list[int]] = [[] for _ in rows]
    for _ in range(n):
        out = model(
            input_ids=step,
            attention_mask=mask,
            position_ids=pos,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        if not _selectable(out.past_key_values):  # a cache class of the model's own
            return _generate(model, tok, ids, mask, n, first_line)
        cache, chosen = out.past_key_values, out.logits[:, -1].argmax(-1)
        keep = []
        for i, (row, token) in enumerate(zip(rows, chosen.tolist(), strict=True)):
            written[row].append(token)
            if token not in eos and not (first_line and _line_done(tok, written[row])):
                keep.append(i)
        if not keep:
            break
        if len(keep) < len(rows):
            idx = torch.tensor(keep, device=ids.device)
            cache.batch_select_indices(idx)
            chosen, mask, pos, rows = chosen[idx], mask[idx], pos[idx], [rows[i] for i in keep]
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], 1)
        step, pos = chosen[:, None], pos[:, -1:] + 1
    return tok.batch_decode(written, skip_special_tokens=True)


def _selectable(cache: Any) -> bool:
    """Whether rows can leave this cache (transformers' Cache classes can)."""
    return hasattr(cache, "batch_select_indices")


def _line_done(tok: Any, written: list[int]) -> bool:
    """answer_line_done for one row's tokens."""
    return line_ended(tok.decode(written, skip_special_tokens=True))


def _generate(
    model: Any,
    tok: Any,
    ids: torch.Tensor,
    mask: torch.Tensor,
    n: int,
    first_line: bool = True,
    past_key_values: Any = None,
) -> list[str]:
    """`_greedy` through transformers' `generate` (every row decodes until the batch is done)."""
    from transformers import StoppingCriteriaList

    stop = [answer_line_done(tok, ids.shape[1])] if first_line else []
    kw = {} if past_key_values is None else {"past_key_values": past_key_values}
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=n,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        use_cache=True,
        stopping_criteria=StoppingCriteriaList(stop),
        **kw,
    )
    return tok.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)


@torch.no_grad()
def generate(
    model: Any,
    tok: Any,
    prompts: list[list[int]],
    max_new_tokens: int,
    batch_size: int,
    first_line: bool = True,
) -> list[str]:
    """Greedy completions of token-id prompts, batched with left padding; with first_line each
    stops once its first non-empty line has ended."""
    device = next(model.parameters()).device
    outputs: list[str] = []
    was_training = model.training
    model.eval()
    for start in range(0, len(prompts), batch_size):
        ids, mask = _left_pad(prompts[start : start + batch_size], tok.pad_token_id)
        outputs += _greedy(model, tok, ids.to(device), mask.to(device), max_new_tokens, first_line)
    model.train(was_training)
    return outputs


def item_id(ex: Example) -> str:
    """A stable id of an eval item: the same prompt and expected answer give the same id in every
    trial, sweep and seed, so per-item results pair up across approaches."""
    return hashlib.sha1(f"{ex.prompt}\x1f{ex.answer}".encode()).hexdigest()[:12]


def _score(
    tok: Any, task: Task, texts: list[str], examples: list[Example] | None = None
) -> dict[str, Any]:
    """Per-item results and their means: `accuracy` is the share answered right (reasoning-gym:
    the answer line equals the expected answer, ignoring case, surrounding space and a final
    period; a file or hub dataset: its scorer gives 1); `task_score` is the mean of the task's
    scorer, which may give partial credit (reasoning-gym: '-5' for '5' scores 0.5). The answer
    is the first line of the generation, or all of it for a scorer that reads the whole text."""
    examples = task.eval if examples is None else examples
    items = []
    for ex, text in zip(examples, texts, strict=True):
        answer = text.strip() if task.whole_text else extract_answer(text)
        items.append(
            {
                "id": item_id(ex),
                "prompt": ex.prompt,
                "expected": ex.answer,
                "answer": answer,
                "exact": int(task.right(answer, ex)),
                "score": float(task.score(answer, ex)),
            }
        )
    generated = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
    n = max(1, len(items))
    return {
        "accuracy": sum(i["exact"] for i in items) / n,
        "task_score": sum(i["score"] for i in items) / n,
        "n_eval": len(items),
        "generated_tokens": generated,
        "items": items,
        "samples": items[:5],
    }


def accuracy(
    model: Any,
    tok: Any,
    task: Task,
    max_new_tokens: int,
    batch_size: int,
    system_prompt: str | None = None,
) -> dict[str, Any]:
    """Score the eval set; returns accuracy, the number of tokens generated, and a few samples."""
    prompts = [prompt_ids(tok, ex, system_prompt) for ex in task.eval]
    texts = generate(model, tok, prompts, max_new_tokens, batch_size, not task.whole_text)
    return _score(tok, task, texts)


@torch.no_grad()
def eval_loss(
    model: Any,
    tok: Any,
    examples: list[Example],
    max_len: int,
    batch_size: int,
    system_prompt: str | None = None,
) -> float:
    """Mean cross-entropy per answer token on the eval examples (teacher forcing; a chat row's
    answer is its last assistant turn)."""
    device = next(model.parameters()).device
    rows = [encode(tok, ex, max_len, system_prompt, every_turn=False) for ex in examples]
    pad = collate(tok.pad_token_id, answer_logits=True)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        batch = to_device(pad(rows[start : start + batch_size]), device)
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            logits_to_keep=batch.get("logits_to_keep", 0),
        ).logits
        labels = batch["labels"][:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="sum"
        )
        total += loss.item()
        count += int((labels != IGNORE).sum())
    model.train(was_training)
    return total / count if count else math.nan


def shared_prefix(prompts: list[list[int]], minimum: int = 4) -> int:
    """Length of the token prefix every prompt shares (chat template, system prompt, a fixed
    instruction), leaving each prompt at least one token of its own; 0 if under `minimum`."""
    if not prompts:
        return 0
    n = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for p in prompts[1:]:
        n = next((k for k in range(n) if p[k] != first[k]), n)
    return n if n >= minimum else 0


@torch.no_grad()
def loss_and_accuracy(
    model: Any,
    tok: Any,
    task: Task,
    max_len: int,
    max_new_tokens: int,
    batch_size: int,
    system_prompt: str | None = None,
) -> dict[str, Any]:
    """`accuracy` and `eval_loss` in one pass: the answers come out of the same greedy decoding.

    The prefix all prompts share (chat template, system prompt, a fixed instruction: 28 of the
    default task's 38 prompt tokens) is run once per batch, with batch size 1, and its keys and
    values are repeated for every row (`_one_batch`). Batches are of equal size (at most
    `batch_size`); a batch that runs out of memory is retried at half the size, so a large eval
    batch never costs a trial its training.
    """
    was_training = model.training
    model.eval()
    prompts = [prompt_ids(tok, ex, system_prompt) for ex in task.eval]
    shared = shared_prefix(prompts)
    texts: list[str] = []
    total, count = 0.0, 0
    n = len(task.eval)
    size = math.ceil(n / max(1, math.ceil(n / batch_size))) if n else 1
    start = 0
    while start < n:
        end = start + size
        try:
            out, loss, tokens = _one_batch(
                model, tok, task.eval[start:end], prompts[start:end], shared, max_len,
                max_new_tokens, system_prompt, not task.whole_text,
            )  # fmt: skip
        except torch.OutOfMemoryError:
            if size == 1:
                raise
            size = max(1, size // 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        texts += out
        total, count = total + loss, count + tokens
        start = end
    model.train(was_training)
    result = _score(tok, task, texts)
    result["eval_loss"] = total / count if count else math.nan
    result["eval_batch_size"] = size
    return result


def _one_batch(
    model: Any,
    tok: Any,
    chunk: list[Example],
    prompts: list[list[int]],
    shared: int,
    max_len: int,
    max_new_tokens: int,
    system_prompt: str | None,
    first_line: bool = True,
) -> tuple[list[str], float, int]:
    """One batch: (generated texts, summed answer loss, answer tokens).

    Each row is laid out after the shared prefix as [padding | own prompt tokens | answer |
    right padding], own prompts ending in the same column P. One forward pass scores the
    answers (logits only from column P-1 on) and leaves the prompts' keys and values in the
    cache; cropped to P-1 columns, that cache is the prefill `generate` would compute, so
    decoding starts right away. Padding in the middle is masked and position ids count only
    real tokens, so each row sees what it would see alone. A batch with a prompt cut by max_len
    is scored in two passes instead.
    """
    device = next(model.parameters()).device
    pad = tok.pad_token_id
    rows = [encode(tok, ex, max_len, system_prompt, every_turn=False) for ex in chunk]
    if any(r["input_ids"][: len(p)] != p for r, p in zip(rows, prompts, strict=True)):
        texts = generate(model, tok, prompts, max_new_tokens, len(chunk), first_line)
        n = sum(sum(x != IGNORE for x in r["labels"][1:]) for r in rows)
        return texts, eval_loss(model, tok, chunk, max_len, len(chunk), system_prompt) * n, n
    answers = [r["input_ids"][len(p) :] for r, p in zip(rows, prompts, strict=True)]
    width = max(len(a) for a in answers)
    ids, mask = _left_pad([p[shared:] for p in prompts], pad)
    tail = torch.full((len(chunk), width), pad, dtype=torch.long)
    tail_mask = torch.zeros_like(tail)
    for i, a in enumerate(answers):
        tail[i, : len(a)] = torch.tensor(a, dtype=torch.long)
        tail_mask[i, : len(a)] = 1
    head = torch.tensor([prompts[0][:shared]] * len(chunk), dtype=torch.long)
    cache = None
    if shared:
        cache = model(input_ids=head[:1].to(device), use_cache=True).past_key_values
        cache.batch_repeat_interleave(len(chunk))
    body = torch.cat([ids, tail], 1).to(device)
    seen = torch.cat([torch.ones_like(head), mask, tail_mask], 1)
    positions = (seen.cumsum(-1) - 1).clamp(min=0)[:, shared:].to(device)
    out = model(
        input_ids=body,
        attention_mask=seen.to(device),
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=width + 1,
    )
    labels = torch.where(tail_mask.bool(), tail, IGNORE).to(device)
    loss = torch.nn.functional.cross_entropy(
        out.logits[:, :-1].float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="sum"
    )
    cache = out.past_key_values
    cache.crop(-(width + 1))  # keep the prompt columns but the last
    prompt_ids_, prompt_mask = torch.cat([head, ids], 1), torch.cat([seen[:, :shared], mask], 1)
    texts = _greedy(
        model,
        tok,
        prompt_ids_.to(device),
        prompt_mask.to(device),
        max_new_tokens,
        first_line,
        past_key_values=cache,
    )
    return texts, loss.item(), int(tail_mask.sum())


@torch.no_grad()
def passage_losses(model: Any, passages: list[list[int]], batch_size: int) -> list[float]:
    """Mean next-token cross-entropy (nats) of each passage (equal lengths): the retention probe."""
    if not passages:
        return []
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[float] = []
    for start in range(0, len(passages), batch_size):
        ids = torch.tensor(passages[start : start + batch_size], dtype=torch.long, device=device)
        logits = model(input_ids=ids).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), ids[:, 1:], reduction="none"
        )
        out += loss.mean(-1).tolist()
    model.train(was_training)
    return out


def new_tokens(cfg: Config) -> int:
    """The generation budget per eval answer: the dataset's own, else eval.max_new_tokens."""
    return cfg.dataset.max_new_tokens or cfg.eval.max_new_tokens
