"""The untuned base model on the trial's own eval items (the zero line) and on the retention
passages, cached per model and settings; and the per-item result files beside a record.

    python -c "from sweep.trial.baseline import ITEMS_FILE, BASE_ITEMS_FILE; print(ITEMS_FILE)"

The zero line is the unquantized base's: a QLoRA trial reuses it where a trial on the same base
scored it already. Cache files and item files are written whole (concurrent workers).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sweep.planning import recipe
from sweep.results import record
from sweep.settings.compose import as_dict
from sweep.settings.schema import Config
from sweep.trial import data, evaluate

ITEMS_FILE = "eval_items.jsonl"  # the trial's per-item results, beside result.json
BASE_ITEMS_FILE = "base_items.jsonl"  # the untuned base model's, on the same items


def _base_cache_file(cfg: Config, model_path: str, part: str, quant: bool) -> Path:
    """Cache of the untuned model's results: `part` "accuracy" (the eval items) or "retention"
    (the general-text passages), for the base as loaded with (quant) or without quantization."""
    d = as_dict(cfg)
    e = d["eval"]  # only what changes the answers: not eval.every
    key: dict[str, Any] = {
        "part": part,
        "model": model_path,
        "precision": cfg.train.precision,
        "quant": d["method"]["quant"] if quant else None,
        "version": 3,
    }
    if part == "accuracy":
        key["dataset"] = d["dataset"]
        key["eval"] = [e[k] for k in ("size", "batch_size", "max_new_tokens")]
        key["max_len"] = cfg.train.max_seq_len
    else:  # the loaded model's own "before": its base dtype too (LoRA's 16-bit base on a GPU)
        key["retention"] = [e["retention_size"], e["retention_tokens"]]
        key["base_dtype"] = recipe.of(cfg).base_dtype
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cfg.cache_dir) / "base_accuracy" / f"{part}-{digest}.json"


def _cached(path: Path, compute: Callable[[], Any]) -> Any:
    if path.exists():
        return json.loads(path.read_text())
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    record.write_whole(path, lambda tmp: tmp.write_text(json.dumps(value)))
    return value


def base_eval(
    cfg: Config,
    model: Any,
    tok: Any,
    task: data.Task,
    model_path: str,
    passages: list[list[int]],
) -> dict[str, Any]:
    """The untuned model on the same eval items (the zero line; with eval.base) and on the
    retention passages (before training), each cached per model and settings.

    The zero line is the unquantized base's: a QLoRA trial reuses it where a trial on the same
    base scored it already (in the default grid QLoRA runs last), and otherwise scores its own
    4-bit base (`base_quant` in the result says which). Retention is always the loaded model's
    own "before", so its change is what training did."""
    e, t = cfg.eval, cfg.train
    quant = cfg.method.quant is not None
    out: dict[str, Any] = {}
    if e.base:
        plain = _base_cache_file(cfg, model_path, "accuracy", quant=False)
        own = _base_cache_file(cfg, model_path, "accuracy", quant=quant)

        def score() -> dict[str, Any]:
            acc = evaluate.loss_and_accuracy(
                model, tok, task, t.max_seq_len, evaluate.new_tokens(cfg), e.batch_size,
                cfg.dataset.system_prompt,
            )  # fmt: skip
            keys = ("accuracy", "task_score", "eval_loss", "items")
            return {**{k: acc[k] for k in keys}, "base_quant": record.run_info(cfg)["quant"]}

        out = _cached(plain if plain.exists() else own, score)
    retention = _base_cache_file(cfg, model_path, "retention", quant=quant)
    out["retention"] = _cached(
        retention, lambda: evaluate.passage_losses(model, passages, e.batch_size)
    )
    return out


def write_items(path: Path, items: list[dict[str, Any]]) -> None:
    """Per-item results as JSON lines, written whole."""
    text = "".join(json.dumps(i) + "\n" for i in items)
    record.write_whole(path, lambda tmp: tmp.write_text(text))
