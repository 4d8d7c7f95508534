"""dataset.scorer: each built-in scorer, a user function by dotted path, and their errors.

python -m pytest -q tests/trial/test_scorers.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sweep.settings.compose import ConfigError, compose
from sweep.trial import data, evaluate, models, scorers
from sweep.trial.preflight import preflight

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "gsm8k_sample.jsonl"


def _score(name: str, generated: str, expected: str, regex: str | None = None) -> float:
    return scorers.get(name, regex)(generated, expected)


@pytest.mark.parametrize(
    ("generated", "expected", "score"),
    [
        ("  Paris. \nmore text", "paris", 1.0),  # first line, case, space, final period
        ("paris france", "Paris", 0.0),
        ("\n\nParis", "Paris", 1.0),
    ],
)
def test_exact_compares_the_first_line(generated, expected, score):
    assert _score("exact", generated, expected) == score


@pytest.mark.parametrize(
    ("generated", "expected", "score"),
    [
        ("The total is 1,234.", "1234", 1.0),  # commas between thousands
        ("72.0", "72", 1.0),  # trailing .0
        ("It is 3 then 72", "72", 1.0),  # the last number
        ("72 then 3", "72", 0.0),
        ("-5", "5", 0.0),
        ("no number", "5", 0.0),
        ("5\n72", "72", 0.0),  # the answer line only: the second line is not read
    ],
)
def test_numeric_compares_the_last_number_of_the_answer(generated, expected, score):
    assert _score("numeric", generated, expected) == score


def test_regex_takes_the_group_of_the_last_match():
    pattern = r"answer: (\S+)"
    assert _score("regex", "answer: 5 ... answer: seven\n", "Seven", pattern) == 1.0
    assert _score("regex", "answer: seven ... answer: 5", "seven", pattern) == 0.0
    assert _score("regex", "seven", "seven", pattern) == 0.0  # no match: no answer
    # the expected answer may hold the pattern too (a worked solution): its group is compared
    assert _score("regex", "so answer: 12", "6+6 is 12, answer: 12", pattern) == 1.0


def test_gsm8k_compares_the_last_generated_number_with_the_final_answer():
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    expected = rows[0]["answer"]  # "... #### 72"
    assert expected.endswith("#### 72") and "24" in expected
    assert _score("gsm8k", "48/2 = 24 in May, 48+24 = 72.\n#### 72", expected) == 1.0
    assert _score("gsm8k", "She sold 72 clips in all", expected) == 1.0
    assert _score("gsm8k", "48/2 = 24 in May.\n#### 24", expected) == 0.0
    assert _score("gsm8k", "I do not know", expected) == 0.0
    assert _score("gsm8k", "#### 1,590.00", rows[3]["answer"]) == 1.0


@pytest.mark.parametrize(
    ("generated", "score"),
    [("B", 1.0), ("(b)", 1.0), ("B) 42 apples", 1.0), ("The answer is B.", 1.0), ("C", 0.0)],
)
def test_choice_reads_the_letter(generated, score):
    assert _score("choice", generated, "B") == score


def test_a_user_function_by_dotted_path():
    for path in ("tests.scorer_fns:half_credit", "tests.scorer_fns.half_credit"):
        assert _score(path, "it is 12", "12") == 1.0
        assert _score(path, "it is 21", "12") == 0.5
        assert _score(path, "it is 3", "12") == 0.0
        assert scorers.get(path).whole_text  # a user function sees the whole generation
    with pytest.raises(ValueError, match=r"returned 2.0 .*expected a score in \[0, 1\]"):
        _score("tests.scorer_fns:too_generous", "x", "y")


def test_the_stop_rule_follows_the_scorer():
    """First-line scorers stop at the end of the first line; the others read the whole text."""
    assert {n: scorers.get(n, "(x)").whole_text for n in ("exact", "numeric", "choice")} == {
        "exact": False,
        "numeric": False,
        "choice": False,
    }
    assert scorers.get("gsm8k").whole_text and scorers.get("regex", "(x)").whole_text
    text = "48/2 = 24 clips in May.\n48+24 = 72 in all.\n#### 72"
    ex = data.Example("q", "... #### 72")
    tok = models.char_tokenizer()
    for name, score in (("gsm8k", 1.0), ("exact", 0.0)):
        sc = scorers.get(name)
        task = data.Task([], [ex], lambda a, e, sc=sc: sc(a, e.answer), whole_text=sc.whole_text)
        item = evaluate._score(tok, task, [text])["items"][0]
        assert item["score"] == score
        assert item["answer"] == (text if sc.whole_text else "48/2 = 24 clips in May.")


def _gsm8k_file(*extra: str):
    return compose(
        [
            "dataset=file",
            f"dataset.path={SAMPLE}",
            "dataset.prompt_field=question",
            "dataset.scorer=gsm8k",
            *extra,
        ]
    ).dataset


def test_gsm8k_sample_goes_through_load_task_and_the_scorer():
    task = data.load_task(_gsm8k_file(), 100, 2)
    assert task.whole_text and len(task.eval) == 1 and len(task.train) == 5
    ex = task.eval[0]
    final = ex.answer.rsplit("####", 1)[1].strip()
    assert task.score(f"Working it out...\nSo the answer is {final}.\n#### {final}", ex) == 1.0
    assert task.right(f"#### {final}", ex) == 1.0
    assert task.score(f"#### {int(final) + 1}", ex) == 0.0
    assert task.right("no idea", ex) == 0.0


def test_the_shipped_gsm8k_config():
    d = compose(["dataset=gsm8k"]).dataset
    assert (d.source, d.path, d.subset, d.split, d.eval_split) == (
        "hub", "openai/gsm8k", "main", "train", "test",
    )  # fmt: skip
    assert d.scorer == "gsm8k" and d.max_new_tokens == 256 and "####" in d.system_prompt


def test_a_row_without_the_final_answer_fails_with_its_line(tmp_path):
    p = tmp_path / "g.jsonl"
    p.write_text(SAMPLE.read_text() + json.dumps({"question": "q", "answer": "42"}) + "\n")
    with pytest.raises(ConfigError) as err:
        data.load_task(_gsm8k_file(f"dataset.path={p}"), 10, 2)
    assert str(err.value) == (
        f"{p}:7: the answer has no final '#### <number>' (dataset.scorer=gsm8k)"
    )


def test_a_scorer_path_that_does_not_import_fails_in_preflight():
    cfg = compose(
        [
            "model=tiny_llama",
            "dataset=file",
            f"dataset.path={SAMPLE}",
            "dataset.prompt_field=question",
            "dataset.scorer=tests.no_such_module:fn",
        ]
    )
    with pytest.raises(ConfigError) as err:
        preflight(cfg)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(
        "dataset.scorer='tests.no_such_module:fn' does not import "
        "(ModuleNotFoundError: No module named 'tests.no_such_module')"
    )
    with pytest.raises(ConfigError, match="'tests.scorer_fns:NOT_A_FUNCTION' is not a function"):
        scorers.get("tests.scorer_fns:NOT_A_FUNCTION")
