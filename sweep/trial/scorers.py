"""Scorers: how a model's answer is compared with the expected one (`dataset.scorer`).

    python -m sweep check dataset=gsm8k        # a file or hub dataset's rows checked against its scorer

`exact`, `numeric` and `choice` read the first non-empty line of the generation, so generation
stops once that line ends. `regex`, `gsm8k` and a user function (`mypkg.mod:fn`) read the whole
generated text (reasoning, then the answer), so generation runs to the end of the model's turn or
the dataset's `max_new_tokens`. Every scorer gives a score in [0, 1]: `task_score` is its mean and
`accuracy` the share of items it scores 1.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from sweep.settings.compose import ConfigError, one_line
from sweep.settings.validate import SCORERS

NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")  # 1,234.50 -> 1234.50
GSM8K_ANSWER = re.compile(r"####\s*\$?\s*(-?[\d,]*\.?\d+)")
CHOICE_ALONE = re.compile(r"\(?([A-Ea-e])\)?[.:]?")  # the whole line: "B", "(b)", "C."
CHOICE_START = re.compile(r"\(?([A-E])[).:\s]")  # "B) 42", "(C) because"
CHOICE_SAID = re.compile(r"(?i:answer)(?:\s+(?i:is))?\s*[:=-]?\s*\(?([A-E])\b")  # "Answer: B"


@dataclass(frozen=True)
class Scorer:
    name: str
    fn: Callable[[str, str], float]  # (model's answer, expected answer) -> score in [0, 1]
    whole_text: bool  # the answer is the whole generation; else its first non-empty line
    check: Callable[[str], str | None] = lambda expected: None  # what a row's answer lacks

    def __call__(self, answer: str, expected: str) -> float:
        value = float(self.fn(answer, expected))
        if not 0.0 <= value <= 1.0:
            raise ValueError(
                f"dataset.scorer={self.name}: returned {value} for {answer[:80]!r}; "
                "expected a score in [0, 1]"
            )
        return value


def normalize(text: str) -> str:
    """Case, runs of space and a final period ignored."""
    return " ".join(text.strip().lower().split()).rstrip(".")


def first_line(text: str) -> str:
    """The first non-empty line, stripped."""
    return next((line.strip() for line in text.strip().splitlines() if line.strip()), "")


def number(text: str) -> Decimal | None:
    """The last number in `text` (commas between thousands dropped), or None."""
    found = NUMBER.findall(text)
    try:
        return Decimal(found[-1].replace(",", "")) if found else None
    except InvalidOperation:
        return None


def gsm8k_answer(expected: str) -> Decimal | None:
    """The number after GSM8K's final '#### ', or None."""
    found = GSM8K_ANSWER.findall(expected)
    return number(found[-1]) if found else None


def letter(text: str) -> str | None:
    """The multiple-choice letter (A-E) of the first line: the line itself ('b', '(B)'), the
    capital it starts with ('B) 42'), or the one after 'answer (is)'."""
    line = first_line(text)
    m = CHOICE_ALONE.fullmatch(line) or CHOICE_START.match(line) or CHOICE_SAID.search(line)
    return m.group(1).upper() if m else None


def exact(answer: str, expected: str) -> float:
    return float(normalize(first_line(answer)) == normalize(expected))


def numeric(answer: str, expected: str) -> float:
    got, want = number(first_line(answer)), number(expected)
    return float(got is not None and got == want)


def gsm8k(answer: str, expected: str) -> float:
    got, want = number(answer), gsm8k_answer(expected)
    return float(got is not None and got == want)


def choice(answer: str, expected: str) -> float:
    got = letter(answer)
    return float(got is not None and got == letter(expected))


def regex(pattern: str) -> Callable[[str, str], float]:
    """The pattern's group at its last match in the generation equals the expected answer (or
    the group at the pattern's last match in the expected answer, where it matches)."""
    compiled = re.compile(pattern)

    def fn(answer: str, expected: str) -> float:
        got = [m.group(1) for m in compiled.finditer(answer)]
        want = [m.group(1) for m in compiled.finditer(expected)]
        return float(
            bool(got) and normalize(got[-1] or "") == normalize(want[-1] if want else expected)
        )

    return fn


def _lacks(what: str, test: Callable[[str], object]) -> Callable[[str], str | None]:
    return lambda expected: None if test(expected) is not None else f"the answer has no {what}"


def get(name: str, answer_regex: str | None = None) -> Scorer:
    """The scorer `dataset.scorer` names; a function path (`mypkg.mod:fn` or `mypkg.mod.fn`,
    called as fn(generated, expected) -> float in [0, 1]) is imported here, so one that does not
    import fails in preflight."""
    if name == "exact":
        return Scorer(name, exact, whole_text=False)
    if name == "numeric":
        return Scorer(name, numeric, False, _lacks("number", number))
    if name == "choice":
        return Scorer(name, choice, False, _lacks("letter A-E", letter))
    if name == "gsm8k":
        return Scorer(name, gsm8k, True, _lacks("final '#### <number>'", gsm8k_answer))
    if name == "regex":
        return Scorer(name, regex(str(answer_regex)), whole_text=True)
    return Scorer(name, _function(name), whole_text=True)


def _function(path: str) -> Callable[[str, str], float]:
    module, _, attr = path.rpartition(":") if ":" in path else path.rpartition(".")
    allowed = f"one of {SCORERS} or an importable function path (mypkg.mod:fn)"
    try:
        fn = getattr(importlib.import_module(module), attr)
    except Exception as exc:  # the user's module may fail in any way while importing
        raise ConfigError(
            f"dataset.scorer={path!r} does not import ({type(exc).__name__}: {one_line(exc)}); "
            f"expected {allowed}"
        ) from None
    if not callable(fn):
        raise ConfigError(f"dataset.scorer={path!r} is not a function; expected {allowed}")
    return fn
