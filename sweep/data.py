"""Task data: prompt/answer examples, rendered with the model's chat template, loss on the answer.

    python -m sweep check dataset=file dataset.path=data/task.jsonl   # validates every row

Sources: a reasoning-gym task (offline generator with its own scorer), a local JSONL/CSV file, or
a hub dataset. Every method sees the same examples in the same order: the examples depend only on
the dataset config and the sizes, never on the method.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sweep.config import ConfigError, reasoning_gym_args
from sweep.schema import DatasetConfig

IGNORE = -100  # label value the loss skips (prompt and padding tokens)
EVAL_SEED_OFFSET = 1_000_003


@dataclass
class Example:
    prompt: str
    answer: str
    entry: dict[str, Any] = field(default_factory=dict)  # the task's own record, for its scorer


@dataclass
class Task:
    train: list[Example]
    eval: list[Example]
    score: Callable[[str, Example], float]  # (model's answer, example) -> score in [0, 1]
    select: list[Example] = field(default_factory=list)  # selection split (search sweeps)


def normalize(text: str) -> str:
    return " ".join(text.strip().lower().split()).rstrip(".")


def exact_match(answer: str, ex: Example) -> float:
    return float(normalize(answer) == normalize(ex.answer))


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
    the selection split (for choosing a setting in a search sweep) repeats neither."""
    if cfg.source == "reasoning_gym":
        return _reasoning_gym(cfg, n_train, n_eval, n_select)
    rows = _read_file(Path(str(cfg.path)), cfg) if cfg.source == "file" else _read_hub(cfg)
    if len(rows) < 2:
        raise ConfigError(f"dataset.path={cfg.path!r}: {len(rows)} usable rows; need at least 2")
    random.Random(cfg.seed).shuffle(rows)
    n_eval = min(n_eval, max(1, len(rows) // 5))  # eval takes at most a fifth of the rows
    n_select = min(n_select, len(rows) // 5)  # and the selection split another fifth
    eval_rows, select_rows = rows[:n_eval], rows[n_eval : n_eval + n_select]
    train_rows = rows[n_eval + n_select :]
    seen = {r.prompt for r in train_rows}
    eval_rows = distinct([r for r in eval_rows if r.prompt not in seen] or eval_rows)
    select_rows = [r for r in select_rows if r.prompt not in seen]
    return Task(train=train_rows, eval=eval_rows, score=exact_match, select=select_rows)


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


def _row(rec: Any, cfg: DatasetConfig, where: str) -> Example:
    if not isinstance(rec, dict):
        raise ConfigError(
            f"{where}: expected an object with {cfg.prompt_field!r} and {cfg.answer_field!r}"
        )
    for key in (cfg.prompt_field, cfg.answer_field):
        value = rec.get(key)
        if value is None or str(value).strip() == "":
            raise ConfigError(
                f"{where}: missing or empty field {key!r} "
                f"(set dataset.prompt_field / dataset.answer_field)"
            )
    return Example(str(rec[cfg.prompt_field]), str(rec[cfg.answer_field]).strip(), dict(rec))


def _read_file(path: Path, cfg: DatasetConfig) -> list[Example]:
    rows: list[Example] = []
    if path.suffix == ".jsonl":
        for i, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{i}: not valid JSON ({exc.msg})") from None
            rows.append(_row(rec, cfg, f"{path}:{i}"))
    else:
        with path.open(newline="", encoding="utf-8-sig") as fh:  # a spreadsheet's BOM
            for i, rec in enumerate(csv.DictReader(fh), start=2):
                rows.append(_row(rec, cfg, f"{path}:{i}"))
    if not rows:
        raise ConfigError(f"dataset.path={str(path)!r}: the file has no rows")
    return rows


def _read_hub(cfg: DatasetConfig) -> list[Example]:
    from datasets import load_dataset

    ds = load_dataset(str(cfg.path), cfg.subset, split=cfg.split)
    return [_row(rec, cfg, f"{cfg.path}[{i}]") for i, rec in enumerate(ds)]


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


def messages(prompt: str, system_prompt: str | None) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return msgs + [{"role": "user", "content": prompt}]


def prompt_ids(tok: Any, prompt: str, system_prompt: str | None) -> list[int]:
    """Token ids of the rendered prompt, ending where the assistant's answer starts."""
    return list(
        tok.apply_chat_template(
            messages(prompt, system_prompt),
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
        )["input_ids"]
    )


def encode(tok: Any, ex: Example, max_len: int, system_prompt: str | None) -> dict[str, list[int]]:
    """Prompt + answer as one chat; labels only on the answer (and its end-of-turn) tokens."""
    p_ids = prompt_ids(tok, ex.prompt, system_prompt)
    chat = messages(ex.prompt, system_prompt) + [{"role": "assistant", "content": ex.answer}]
    ids = list(tok.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"])
    if ids[: len(p_ids)] != p_ids:  # the template renders the prompt differently inside a chat
        answer = tok(ex.answer + (tok.eos_token or ""), add_special_tokens=False)["input_ids"]
        ids = p_ids + list(answer)
    labels = [IGNORE] * len(p_ids) + ids[len(p_ids) :]
    cut = max(0, len(ids) - max_len)  # too long: drop the start of the prompt, keep the answer
    return {"input_ids": ids[cut:][:max_len], "labels": labels[cut:][:max_len]}


def to_device(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    """A collated batch on `device` (its tensors; `logits_to_keep` is a plain int)."""
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
