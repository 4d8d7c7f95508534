"""Task data: prompt/answer examples, rendered with the model's chat template, loss on the answer.

    python -m sweep check dataset=file dataset.path=data/task.jsonl   # validates every row

Sources: a reasoning-gym task (offline generator with its own scorer), a local JSONL/CSV file, or
a hub dataset. Every method sees the same examples in the same order: the examples depend only on
the dataset config and the sizes, never on the method.

A row with a `messages` list (dataset.messages_field; roles system, user, assistant) is a chat:
its last assistant turn is the answer and the turns before it the prompt. Training puts the loss
on every assistant turn (earlier replies are the behaviour taught as much as the last one);
evaluation generates the last one and its eval loss is on the last one only.
"""

from __future__ import annotations

import csv
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sweep import scorers
from sweep.config import ConfigError, one_line
from sweep.schema import AUTO_MAX_LEN, DatasetConfig
from sweep.scorers import Scorer, normalize
from sweep.validate import reasoning_gym_args

IGNORE = -100  # label value the loss skips (prompt and padding tokens)
EVAL_SEED_OFFSET = 1_000_003
ROLES = ("system", "user", "assistant")


@dataclass
class Example:
    prompt: str
    answer: str
    entry: dict[str, Any] = field(default_factory=dict)  # the task's own record, for its scorer
    turns: list[dict[str, str]] | None = None  # a chat row's turns before its last assistant turn


def exact_match(answer: str, ex: Example) -> float:
    return float(normalize(answer) == normalize(ex.answer))


@dataclass
class Task:
    train: list[Example]
    eval: list[Example]
    score: Callable[[str, Example], float]  # (model's answer, example) -> score in [0, 1]
    select: list[Example] = field(default_factory=list)  # selection split (search sweeps)
    right: Callable[[str, Example], float] = exact_match  # 1 if the answer is right: accuracy
    whole_text: bool = False  # the model's answer is its whole generation, not its first line


def distinct(examples: list[Example]) -> list[Example]:
    """Each prompt once (the first): an eval item counted twice would double its weight and
    overstate n (reasoning-gym repeats small problems: chain_sum has 200 one-digit ones)."""
    seen: set[str] = set()
    out = []
    for ex in examples:
        if ex.prompt not in seen:
            seen.add(ex.prompt)
            out.append(ex)
    return out


def load_task(cfg: DatasetConfig, n_train: int, n_eval: int, n_select: int = 0) -> Task:
    """Build the train, eval and selection examples. Eval prompts never repeat a train prompt;
    the selection split (for choosing a setting in a search sweep) repeats neither. A hub
    dataset with dataset.eval_split is scored on that split; otherwise eval and selection rows
    are held out of the train rows. Every row is checked against dataset.scorer (a gsm8k answer
    needs its '#### N'), so a bad row fails in preflight."""
    if cfg.source == "reasoning_gym":
        return _reasoning_gym(cfg, n_train, n_eval, n_select)
    scorer = scorers.get(cfg.scorer, cfg.answer_regex)
    if cfg.source == "file":
        rows, held = _read_file(Path(str(cfg.path)), cfg, scorer), None
    else:
        rows = _read_hub(cfg, cfg.split, "dataset.split", scorer)
        held = (
            _read_hub(cfg, cfg.eval_split, "dataset.eval_split", scorer) if cfg.eval_split else None
        )
    if len(rows) < (1 if held else 2):
        raise ConfigError(f"dataset.path={cfg.path!r}: {len(rows)} usable rows; need at least 2")
    random.Random(cfg.seed).shuffle(rows)
    if held is not None:  # the dataset's own eval split; the selection split is held out of train
        n_select = min(n_select, len(rows) // 5)
        select_rows, train_rows = rows[:n_select], rows[n_select:]
        seen = {r.prompt for r in train_rows}
        random.Random(cfg.seed).shuffle(held)
        eval_rows = distinct([r for r in held if r.prompt not in seen])[:n_eval]
    else:
        n_eval = min(n_eval, max(1, len(rows) // 5))  # eval takes at most a fifth of the rows
        n_select = min(n_select, len(rows) // 5)  # and the selection split another fifth
        eval_rows, select_rows = rows[:n_eval], rows[n_eval : n_eval + n_select]
        train_rows = rows[n_eval + n_select :]
        seen = {r.prompt for r in train_rows}
        eval_rows = distinct([r for r in eval_rows if r.prompt not in seen] or eval_rows)
    select_rows = [r for r in select_rows if r.prompt not in seen]

    def score(answer: str, ex: Example) -> float:
        return scorer(answer, ex.answer)

    return Task(
        train=train_rows,
        eval=eval_rows,
        score=score,
        select=select_rows,
        right=lambda answer, ex: float(score(answer, ex) == 1.0),
        whole_text=scorer.whole_text,
    )


def _reasoning_gym(cfg: DatasetConfig, n_train: int, n_eval: int, n_select: int = 0) -> Task:
    import reasoning_gym as rg

    args = reasoning_gym_args(str(cfg.task), cfg.task_args)
    try:
        train_ds = rg.create_dataset(cfg.task, seed=cfg.seed, size=n_train, **args)
        # reasoning-gym seeds item i with seed + i: start eval far past the train items.
        eval_ds = rg.create_dataset(
            cfg.task, seed=cfg.seed + EVAL_SEED_OFFSET, size=4 * n_eval + 16, **args
        )
    except (TypeError, ValueError, AssertionError) as exc:
        raise ConfigError(
            f"dataset.task_args.{cfg.task}={args}: rejected by reasoning-gym {cfg.task}: {exc}"
        ) from None
    train = [Example(e["question"], str(e["answer"]), e) for e in train_ds]
    seen = {ex.prompt for ex in train}
    evals = distinct(
        [Example(e["question"], str(e["answer"]), e) for e in eval_ds if e["question"] not in seen]
    )[:n_eval]
    select: list[Example] = []
    if n_select:
        seen |= {ex.prompt for ex in evals}
        select_ds = rg.create_dataset(
            cfg.task, seed=cfg.seed + 2 * EVAL_SEED_OFFSET, size=4 * n_select + 16, **args
        )
        select = distinct(
            [
                Example(e["question"], str(e["answer"]), e)
                for e in select_ds
                if e["question"] not in seen
            ]
        )[:n_select]
    return Task(
        train=train,
        eval=evals,
        score=lambda answer, ex: float(train_ds.score_answer(answer, ex.entry) or 0.0),
        select=select,
    )


def _row(rec: Any, cfg: DatasetConfig, where: str, scorer: Scorer) -> Example:
    """One row as an example: a chat (a `messages` list) or a prompt and an answer field."""
    if not isinstance(rec, dict):
        raise ConfigError(
            f"{where}: expected an object with {cfg.prompt_field!r} and {cfg.answer_field!r}"
        )
    if rec.get(cfg.messages_field) is not None:
        ex = _chat_row(rec, cfg, where)
    else:
        for key in (cfg.prompt_field, cfg.answer_field):
            value = rec.get(key)
            if value is None or str(value).strip() == "":
                raise ConfigError(
                    f"{where}: missing or empty field {key!r} (set dataset.prompt_field / "
                    f"dataset.answer_field, or give the row a {cfg.messages_field!r} list)"
                )
        ex = Example(str(rec[cfg.prompt_field]), str(rec[cfg.answer_field]).strip(), dict(rec))
    lacks = scorer.check(ex.answer)
    if lacks:
        raise ConfigError(f"{where}: {lacks} (dataset.scorer={scorer.name})")
    return ex


def _chat_row(rec: dict[str, Any], cfg: DatasetConfig, where: str) -> Example:
    """A chat row: its last assistant turn is the answer, the turns before it the prompt (turns
    after it carry no loss and are not part of the prompt, so they are left out)."""
    key = cfg.messages_field
    msgs = rec[key]
    if not isinstance(msgs, list) or not msgs:
        raise ConfigError(f"{where}: {key!r} must be a non-empty list of {{role, content}} turns")
    turns = []
    for j, m in enumerate(msgs):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ROLES:
            raise ConfigError(f"{where}: {key}[{j}] has role {role!r}; allowed: {', '.join(ROLES)}")
        if not isinstance(m.get("content"), str):
            raise ConfigError(f"{where}: {key}[{j}] ({role}) has no text 'content'")
        turns.append({"role": role, "content": m["content"]})
    last = max((j for j, t in enumerate(turns) if t["role"] == "assistant"), default=None)
    if last is None:
        raise ConfigError(f"{where}: {key!r} has no assistant turn (the last one is the answer)")
    if not any(t["role"] == "user" for t in turns[:last]):
        raise ConfigError(f"{where}: {key!r} has no user turn before its last assistant turn")
    answer = turns[last]["content"].strip()
    if not answer:
        raise ConfigError(f"{where}: {key}[{last}] (the last assistant turn) is empty")
    prompt = "\n".join(f"{t['role']}: {t['content']}" for t in turns[:last])
    return Example(prompt, answer, dict(rec), turns=turns[:last])


def _read_file(path: Path, cfg: DatasetConfig, scorer: Scorer) -> list[Example]:
    rows: list[Example] = []
    if path.suffix == ".jsonl":
        for i, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{i}: not valid JSON ({exc.msg})") from None
            rows.append(_row(rec, cfg, f"{path}:{i}", scorer))
    else:
        with path.open(newline="", encoding="utf-8-sig") as fh:  # a spreadsheet's BOM
            for i, rec in enumerate(csv.DictReader(fh), start=2):
                rows.append(_row(rec, cfg, f"{path}:{i}", scorer))
    if not rows:
        raise ConfigError(f"dataset.path={str(path)!r}: the file has no rows")
    return rows


def _read_hub(cfg: DatasetConfig, split: str | None, key: str, scorer: Scorer) -> list[Example]:
    """The rows of one split of a hub dataset (`key`: the config key naming the split)."""
    from datasets import load_dataset

    try:
        ds = load_dataset(str(cfg.path), cfg.subset, split=split)
    except (ValueError, KeyError) as exc:  # e.g. a split the dataset does not have
        raise ConfigError(f"{key}={split!r}: {cfg.path}: {one_line(exc)}") from None
    except OSError as exc:  # no such dataset, or offline before its first download
        raise ConfigError(
            f"dataset.path={cfg.path!r}: cannot load ({type(exc).__name__}: {one_line(exc)}); "
            "a hub dataset needs network on first use"
        ) from None
    return [_row(rec, cfg, f"{cfg.path}[{split}][{i}]", scorer) for i, rec in enumerate(ds)]


def retention_passages(tok: Any, n: int, tokens: int) -> list[list[int]]:
    """`n` passages of general English text the trial never trains on, `tokens` long each: the
    retention probe (does fine-tuning on the task make the model worse at plain text?). The text
    is Python's own documentation as shipped with every Python (`pydoc_data.topics`), so the probe
    needs no download; topics in a fixed order, one passage from the start of each."""
    if n <= 0:
        return []
    from pydoc_data.topics import topics

    passages = []
    for name in sorted(topics):
        ids = tok(" ".join(topics[name].split()), add_special_tokens=False)["input_ids"]
        if len(ids) >= tokens:
            passages.append(list(ids[:tokens]))
        if len(passages) == n:
            break
    return passages


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
    """Too long: drop the start of the prompt, keep the answer."""
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
    whole examples back to back (first-fit decreasing, sweep.data.pack_rows), `position_ids`
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
    (sweep.train strips it before the model; `batch_tokens` reads it).

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
