"""Command line: thin layer over config -> study -> trial -> record -> report.

    python -m sweep trial  [overrides...]   one measured trial in this process (make trial)
    python -m sweep run    [overrides...]   the sweep: Optuna study, child-process trials, report (make sweep)
    python -m sweep report EXPERIMENT       rebuild reports/EXPERIMENT/ from MLflow (make report)
    python -m sweep check  [overrides...]   compose and validate a config, print it

Overrides are Hydra's: `method=qlora method.r=8 train.steps=30 sweep=rank_grid`.
A bad value stops here with one line naming the key and what is allowed (exit 2).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from sweep.config import ConfigError

USAGE = __doc__.split("\n\n")[1]


def _trial(overrides: list[str]) -> int:
    from sweep.config import compose
    from sweep.trial import preflight, run_trial, summary

    cfg = compose(overrides)
    preflight(cfg)
    out = Path(cfg.output_dir, cfg.experiment, "single", _stamp())
    print(f"[trial] {' '.join(overrides) or '(defaults)'} -> {out}", flush=True)
    result = run_trial(cfg, out)
    print(summary(result))
    print(f"record     {out / 'result.json'}")
    return 0 if result.status == "ok" else 1


def _stamp() -> str:
    import time

    return time.strftime("%Y%m%d-%H%M%S")


def _run(overrides: list[str]) -> int:
    from sweep.study import run_sweep

    return run_sweep(overrides)


def _report(args: list[str]) -> int:
    from sweep.report import rebuild

    if len(args) != 1:
        raise ConfigError("usage: python -m sweep report EXPERIMENT (make report EXP=<name>)")
    print(rebuild(args[0]))
    return 0


def _check(overrides: list[str]) -> int:
    from omegaconf import OmegaConf

    from sweep.config import compose

    print(OmegaConf.to_yaml(OmegaConf.structured(compose(overrides))))
    return 0


COMMANDS = {"trial": _trial, "run": _run, "report": _report, "check": _check}


def main(argv: list[str]) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not argv or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        return 2
    try:
        return COMMANDS[argv[0]](argv[1:])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted: finished trials are recorded; run the same command to resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
