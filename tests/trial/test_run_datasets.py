"""A trial on chat rows with train.max_seq_len=0: the length comes from the data, is recorded with
the number of examples cut, and a cut example is warned about.

python -m pytest -q tests/trial/test_run_datasets.py
"""

from __future__ import annotations

import json

from sweep.results.record import load
from sweep.settings import metrics
from sweep.settings.compose import compose
from sweep.trial import batches, data, models
from sweep.trial.run import run_trial
from tests.conftest import tiny


def _chat_rows(path, n=150):
    rows = []
    for i in range(n):
        pad = " and more" * {0: 40, 1: 30}.get(i, i % 3)  # two long conversations
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"What is {i} + {i}?{pad}"},
                    {"role": "assistant", "content": f"{i} + {i} = {2 * i}\n#### {2 * i}"},
                ]
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_max_seq_len_from_the_data_is_recorded_and_a_cut_is_warned(tmp_path, capsys):
    path = _chat_rows(tmp_path / "chat.jsonl")
    args = [
        "dataset=file", f"dataset.path={path}", "dataset.scorer=gsm8k",
        "dataset.max_new_tokens=8", "eval.base=false", "eval.retention_size=0",
    ]  # fmt: skip
    cfg = compose(tiny(*args, "train.max_seq_len=0"))
    result = run_trial(cfg, tmp_path / "auto")
    assert result.status == "ok", result.train.get("error")
    m = load(tmp_path / "auto" / "result.json").metrics
    metrics.check(m)
    tok = models.char_tokenizer()
    task = data.load_task(cfg.dataset, 8 * 4, cfg.eval.size)
    lengths = sorted(len(batches.encode(tok, ex, 10_000, None)["input_ids"]) for ex in task.train)
    assert m["max_seq_len"] == batches.auto_max_len(lengths) < lengths[-1]
    assert m["truncated_examples"] == sum(n > m["max_seq_len"] for n in lengths) >= 1
    assert result.run["config"]["train"]["max_seq_len"] == 0  # the record keeps what was asked
    err = capsys.readouterr().err
    assert "warning: train.max_seq_len=0 (auto: the 99th percentile, at most 2048): " in err
    assert f"{m['truncated_examples']} of {len(lengths)} train examples are longer" in err

    fixed = run_trial(compose(tiny(*args, "train.max_seq_len=4096")), tmp_path / "fixed")
    assert fixed.metrics["max_seq_len"] == 4096 and fixed.metrics["truncated_examples"] == 0
    assert "warning: train.max_seq_len" not in capsys.readouterr().err
