"""The README's command lines still say something the code accepts: every `make sweep` and
`make trial` example composes into a valid config (a config key renamed, a value no longer
allowed or a sweep removed fails here before a user trips on it)."""

import re
import shlex
from pathlib import Path

import pytest

from sweep.settings.compose import ConfigError, compose
from tests.conftest import REPO

COMMAND = re.compile(r'make (sweep|trial)((?: [A-Z]+=\S+)*) ARGS="([^"]*)"')


def _commands() -> list[tuple[str, dict[str, str], str]]:
    text = (REPO / "README.md").read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        if line.lstrip().startswith(("$", "|")):  # an error shown on purpose; the command table
            continue
        for target, make_vars, args in COMMAND.findall(line):
            found.append((target, dict(v.split("=", 1) for v in make_vars.split()), args))
    return found


def _overrides(target: str, make_vars: dict[str, str], args: str, data: Path) -> list[str]:
    out = [f"sweep={make_vars.get('SWEEP', 'default')}"] if target == "sweep" else []
    if "GPUS" in make_vars:
        out.append(f"sweep.gpus=[{make_vars['GPUS']}]")
    for o in shlex.split(args):  # a user's own data file stands in as one that exists
        out.append(f"dataset.path={data}" if o.startswith("dataset.path=") else o)
    return out


def test_the_readme_has_examples_to_check():
    assert len(_commands()) >= 20


@pytest.mark.parametrize(("target", "make_vars", "args"), _commands())
def test_every_readme_command_composes(target, make_vars, args, tmp_path):
    data = tmp_path / "task.jsonl"
    data.write_text('{"prompt": "1+1", "answer": "2"}\n')
    try:
        compose(_overrides(target, make_vars, args, data))
    except ConfigError as exc:  # a GPU-only option (train.liger) is refused here, and says so
        if "without a CUDA GPU" not in str(exc):
            raise
        pytest.skip(f"needs CUDA: {exc}")
