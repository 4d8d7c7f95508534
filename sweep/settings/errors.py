"""The harness's one error for bad input, and the helpers that word it.

    python -c "from sweep.settings.errors import require; require(False, 'train.steps', '>= 1', 0)"

Every check raises ConfigError with one line naming the key, the value and what is allowed;
the command line prints it as `error: ...` and exits 2 before anything expensive starts.
"""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A config value is wrong; the message is one line naming the key and what is allowed."""


class Terminated(Exception):
    """SIGTERM reached the sweep: its trial checkpointed (or was killed after
    sweep.term_grace_s), its runs are closed KILLED; the process exits 143."""


def one_line(exc: BaseException) -> str:
    """The first line of an error's message (its type name if it has none)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def require(ok: bool, key: str, allowed: str, value: Any) -> None:
    """Raise the one-line ConfigError naming `key`, its value and what is allowed, unless ok."""
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed; expected {allowed}")
