"""Examples into token batches: the chat template, loss on the answer, padding or packing.

    python -c "from sweep.trial.batches import pack_rows; print(pack_rows([5, 3, 4, 2], 8))"

`encode` renders an example with the model's chat template and puts the loss on the answer
(every assistant turn of a chat row); `train_collate` pads examples to the batch's longest or
packs them whole into rows (train.packing), with position ids that restart per example.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from sweep.settings.schema import AUTO_MAX_LEN
from sweep.trial.data import IGNORE, Example


def messages(prompt: str | Example, system_prompt: str | None) -> list[dict[str, str]]:
    """The prompt as chat turns: the system prompt (unless a chat row has its own), then the
    user's prompt, or a chat row's turns before its last assistant turn."""
    if isinstance(prompt, Example):
        turns = prompt.turns or [{"role": "user", "content": prompt.prompt}]
    else:
        turns = [{"role": "user", "content": prompt}]
    own_system = any(t["role"] == "system" for t in turns)
    head = (
        [{"role": "system", "content": system_prompt}] if system_prompt and not own_system else []
    )
    return head + [dict(t) for t in turns]


def _render(tok: Any, msgs: list[dict[str, str]], generation: bool = False) -> list[int]:
    ids = tok.apply_chat_template(
        msgs, add_generation_prompt=generation, tokenize=True, return_dict=True
    )["input_ids"]
    return list(ids)


def prompt_ids(tok: Any, prompt: str | Example, system_prompt: str | None) -> list[int]:
    """Token ids of the rendered prompt (a text, or an example: a chat row's whole conversation
    before its last assistant turn), ending where the assistant's answer starts."""
    return _render(tok, messages(prompt, system_prompt), generation=True)


def encode(
    tok: Any, ex: Example, max_len: int, system_prompt: str | None, every_turn: bool = True
) -> dict[str, list[int]]:
    """Prompt + answer as one chat; labels only on the answer (and its end-of-turn) tokens, and
    with every_turn on a chat row's earlier assistant turns too. At most max_len tokens."""
    return clip(_encode(tok, ex, system_prompt, every_turn), max_len)


def clip(row: dict[str, list[int]], max_len: int) -> dict[str, list[int]]:
    """Too long: drop the start of the prompt, keep the answer. 0 (train.max_seq_len's auto,
    before a trial sizes it from its data): no limit."""
    if max_len <= 0:
        return row
    cut = max(0, len(row["input_ids"]) - max_len)
    return {"input_ids": row["input_ids"][cut:][:max_len], "labels": row["labels"][cut:][:max_len]}


def _encode(
    tok: Any, ex: Example, system_prompt: str | None, every_turn: bool = True
) -> dict[str, list[int]]:
    conv = messages(ex, system_prompt)
    p_ids = _render(tok, conv, generation=True)
    ids = _render(tok, [*conv, {"role": "assistant", "content": ex.answer}])
    if ids[: len(p_ids)] != p_ids:  # the template renders the prompt differently inside a chat
        answer = tok(ex.answer + (tok.eos_token or ""), add_special_tokens=False)["input_ids"]
        return {"input_ids": p_ids + list(answer), "labels": [IGNORE] * len(p_ids) + list(answer)}
    labels = [IGNORE] * len(p_ids) + ids[len(p_ids) :]
    for k, turn in enumerate(conv if every_turn and ex.turns else []):
        if turn["role"] != "assistant":
            continue
        start, through = _render(tok, conv[:k], generation=True), _render(tok, conv[: k + 1])
        # a template that renders an earlier turn differently inside the longer chat (e.g. drops
        # its reasoning) leaves that turn as context only
        if ids[: len(through)] == through and through[: len(start)] == start:
            labels[len(start) : len(through)] = through[len(start) :]
    return {"input_ids": ids, "labels": labels}


@dataclass
class Encoded:
    rows: list[dict[str, list[int]]]
    max_len: int  # train.max_seq_len, or the length sized from the data
    truncated: int  # examples longer than max_len (they lose the start of the prompt)
    longest: int  # tokens of the longest example


def auto_max_len(lengths: list[int], cap: int = AUTO_MAX_LEN) -> int:
    """The 99th percentile (nearest rank) of `lengths`, within 8..cap."""
    if not lengths:
        return cap
    p99 = sorted(lengths)[math.ceil(0.99 * len(lengths)) - 1]
    return max(8, min(cap, p99))


def encode_train(
    tok: Any, examples: list[Example], max_len: int, system_prompt: str | None
) -> Encoded:
    """The train rows at `max_len` tokens; 0 sizes it from the data: the 99th percentile of the
    examples' tokenized lengths, at most AUTO_MAX_LEN."""
    full = [_encode(tok, ex, system_prompt) for ex in examples]
    lengths = [len(r["input_ids"]) for r in full]
    n = max_len or auto_max_len(lengths)
    return Encoded(
        rows=[clip(r, n) for r in full],
        max_len=n,
        truncated=sum(length > n for length in lengths),
        longest=max(lengths, default=0),
    )


def to_device(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    """A collated batch on `device` (its tensors; `use_cache` and an int `logits_to_keep` as
    they are)."""
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def collate(
    pad_id: int, answer_logits: bool = False
) -> Callable[[list[dict[str, list[int]]]], dict[str, Any]]:
    """Right-pad a batch; padding is masked in attention and ignored by the loss.

    answer_logits (train.loss_logits=answer): the model computes logits only from the position
    before the batch's first answer token on (`logits_to_keep`, labels cut to match). Prompt
    positions carry no loss, so the loss and its gradients are the same, without the lm_head
    and the cross-entropy over the prompt (a 49k-word vocabulary makes that a fifth of the step).
    """

    def fn(batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n] = torch.tensor(b["input_ids"])
            labels[i, :n] = torch.tensor(b["labels"])
            mask[i, :n] = 1
        out: dict[str, Any] = {"input_ids": ids, "labels": labels, "attention_mask": mask}
        answer = (labels != IGNORE).any(0).nonzero() if answer_logits else []
        if len(answer):
            start = max(int(answer[0]) - 1, 0)
            out["labels"] = labels[:, start:]
            out["logits_to_keep"] = width - start
        return out

    return fn


REAL_TOKENS = "real_tokens"  # a packed batch's non-padding tokens (an int): the Trainer counts them


def pack_rows(lengths: list[int], row_len: int | None) -> list[list[int]]:
    """The examples (their indices) of each packed row: first-fit decreasing into rows of
    `row_len` tokens (raised to the longest example, so each fits); None: all in one row. Rows
    in the order opened, each example's index in the order placed (longest first)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if row_len is None:
        return [order] if order else []
    cap = max([row_len, *lengths])
    rows: list[list[int]] = []
    fill: list[int] = []
    for i in order:
        r = next((r for r, f in enumerate(fill) if f + lengths[i] <= cap), None)
        if r is None:
            rows.append([])
            fill.append(0)
            r = len(rows) - 1
        rows[r].append(i)
        fill[r] += lengths[i]
    return rows


def packed_collate(
    pad_id: int, answer_logits: bool = False, row_len: int | None = 0
) -> Callable[[list[dict[str, list[int]]]], dict[str, Any]]:
    """A batch packed into rows without padding between examples (train.packing): each row holds
    whole examples back to back (first-fit decreasing, sweep.trial.data.pack_rows), `position_ids`
    restart at 0 for every example, and there is no attention mask, so transformers reads the
    example boundaries from the position ids (a block-diagonal causal mask per row under sdpa
    and eager, varlen under flash attention): no example attends to another. A row shorter than
    the widest is padded at its end; the padding continues the last example's position ids (a
    causal tail no real token attends to) and carries no label. Labels stay on the answer tokens
    only; each example's first token is IGNORE as a label, so no example predicts across a
    boundary. `use_cache=False`: with a cache transformers would not look for packed sequences.

    row_len: 0 packs rows of up to the batch's longest example, so no row is wider than the
    padded batch and attention (dense per row under sdpa: rows x width^2) never costs more than
    padding; N: rows of up to max(N, longest) tokens; None: the whole batch in one row (what
    flash attention wants: it attends example by example however long the row).

    `REAL_TOKENS`: the batch's tokens without the row-end padding, for the Trainer's count
    (sweep.trial.train strips it before the model; `batch_tokens` reads it).

    answer_logits (train.loss_logits=answer): logits only at the positions whose next token has
    a label (`logits_to_keep` as a boolean [rows, width] mask, which transformers flattens in row
    order), plus the last row's last position, which carries no label and lets the model's own
    one-token label shift line up: `labels` become [[IGNORE, the label each kept position
    predicts...]]. Same loss and gradients as full logits.
    """

    def fn(batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        lengths = [len(b["input_ids"]) for b in batch]
        rows = pack_rows(lengths, row_len)
        width = max(sum(lengths[i] for i in row) for row in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        pos = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            at = 0
            for i in row:
                n = lengths[i]
                ids[r, at : at + n] = torch.tensor(batch[i]["input_ids"])
                labels[r, at : at + n] = torch.tensor(batch[i]["labels"])
                labels[r, at] = IGNORE  # never predicted from the example before it
                pos[r, at : at + n] = torch.arange(n)
                at += n
            last = lengths[row[-1]]  # the padding goes on counting the row's last example
            pos[r, at:] = torch.arange(last, last + width - at)
        out: dict[str, Any] = {
            "input_ids": ids,
            "labels": labels,
            "position_ids": pos,
            "use_cache": False,
            REAL_TOKENS: sum(lengths),
        }
        nxt = torch.cat([labels[:, 1:], torch.full((len(rows), 1), IGNORE)], 1)
        keep = nxt != IGNORE  # position j predicts token j + 1
        if answer_logits and keep.any():
            keep[-1, -1] = True  # no label: it shifts the kept labels into line
            out["logits_to_keep"] = keep
            out["labels"] = torch.cat([torch.tensor([IGNORE]), nxt[keep][:-1]]).unsqueeze(0)
        return out

    return fn


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """A collated batch as the model takes it: without the packed count (REAL_TOKENS)."""
    return {k: v for k, v in batch.items() if k != REAL_TOKENS}


def train_collate(
    pad_id: int, packing: bool, answer_logits: bool, row_len: int | None = 0
) -> Callable[[list[dict[str, list[int]]]], dict[str, Any]]:
    """The training batches: packed into rows (train.packing; `row_len` as packed_collate's) or
    right-padded."""
    if packing:
        return packed_collate(pad_id, answer_logits, row_len)
    return collate(pad_id, answer_logits)


def batch_tokens(batch: dict[str, Any]) -> int:
    """Non-padding tokens of a collated batch: a packed batch's count (REAL_TOKENS), else the
    attention mask's ones."""
    if REAL_TOKENS in batch:
        return int(batch[REAL_TOKENS])
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
