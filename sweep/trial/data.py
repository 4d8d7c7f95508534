"""Task data: prompt/answer examples from a reasoning-gym task, a local file or the hub.

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
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweep.settings.compose import ConfigError, one_line
from sweep.settings.schema import DatasetConfig
from sweep.settings.validate import reasoning_gym_args
from sweep.trial import scorers
from sweep.trial.scorers import Scorer, normalize

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
