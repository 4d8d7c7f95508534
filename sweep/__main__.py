"""Command line: thin layer over config -> study -> trial -> record -> report.

    python -m sweep trial  [overrides...]   one measured trial in this process (make trial)
    python -m sweep run    [overrides...]   the sweep: Optuna study, child-process trials, report (make sweep)
    python -m sweep report EXPERIMENT       rebuild reports/EXPERIMENT/ from MLflow (make report)
    python -m sweep check  [overrides...]   compose and validate a config, print it
    python -m sweep plan   MODEL [key=value...]  predicted peak memory per approach, no download (make plan)
    python -m sweep probe  [overrides...]   real steps per approach here: predicted vs measured (make probe)
    python -m sweep generate RUN PROMPT [--merged] [key=value...]   a trial's greedy answer (make generate)
    python -m sweep export RUN OUT_DIR      a trial's merged standalone model (make export)
    python -m sweep inference EXPERIMENT   separate vs merged adapters for every trial, into the report (make inference)
    python -m sweep repair-journal PATH    keep the whole records of a damaged Optuna journal

Overrides are Hydra's: `method=qlora method.r=8 train.steps=30 sweep=rank_grid`.
A bad value stops here with one line naming the key and what is allowed (exit 2).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from sweep.settings.compose import ConfigError
from sweep.settings.errors import Terminated

USAGE = __doc__.split("\n\n")[1]


def _trial(overrides: list[str]) -> int:
    from sweep.settings.compose import compose
    from sweep.trial.checkpoint import install_term_handler
    from sweep.trial.preflight import preflight
    from sweep.trial.run import run_trial
    from sweep.trial.summary import summary

    cfg = compose(overrides)
    preflight(cfg)
    install_term_handler()  # SIGTERM: a checkpoint, then the trial ends preempted
    out = Path(cfg.output_dir, cfg.experiment, "single", _stamp())
    print(f"[trial] {' '.join(overrides) or '(defaults)'} -> {out}", flush=True)
    if cfg.train.gpus > 1:  # one process per device, started by accelerate (sweep.launch.parallel)
        from sweep.launch.launch import launch

        result = launch(cfg, out, timeout_s=0)
    else:
        result = run_trial(cfg, out)
        print(summary(result))
    print(f"record     {out / 'result.json'}")
    return 0 if result.status == "ok" else 1


def _stamp() -> str:
    import time

    return time.strftime("%Y%m%d-%H%M%S")


def _run(overrides: list[str]) -> int:
    from sweep.launch.child import start_trial_server

    start_trial_server()  # its imports run while this process imports and sets up the sweep
    from sweep.study.study import run_sweep

    return run_sweep(overrides)


def _report(args: list[str]) -> int:
    from sweep.results.report import rebuild

    if len(args) != 1:
        raise ConfigError("usage: python -m sweep report EXPERIMENT (make report EXP=<name>)")
    print(rebuild(args[0]))
    return 0


def _check(overrides: list[str]) -> int:
    from omegaconf import OmegaConf

    from sweep.settings.compose import compose
    from sweep.trial.preflight import preflight

    cfg = compose(overrides)
    preflight(cfg)  # model files and every dataset row
    print(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    return 0


def _generate(args: list[str]) -> int:
    from sweep.adapters.trained import generate

    rest = [a for a in args if a != "--merged"]
    if len(rest) < 2:
        raise ConfigError(
            "usage: python -m sweep generate RUN PROMPT [--merged] [key=value ...] "
            '(make generate RUN=<trial dir|name|run id> PROMPT="..." [MERGED=1])'
        )
    merged = "--merged" in args
    print(f"[generate] {rest[0]} ({'merged' if merged else 'adapter separate'})", file=sys.stderr)
    print(generate(rest[0], rest[1], merged=merged, overrides=rest[2:]))
    return 0


def _export(args: list[str]) -> int:
    from sweep.adapters.trained import export

    if len(args) != 2:
        raise ConfigError(
            "usage: python -m sweep export RUN OUT_DIR (make export RUN=<id> OUT=<dir>)"
        )
    print(f"[export] merged model written to {export(args[0], args[1])}")
    return 0


def _plan(args: list[str]) -> int:
    from sweep.cli.plan import main as plan_main

    return plan_main(args)


def _probe(args: list[str]) -> int:
    from sweep.cli.probe import main as probe_main

    return probe_main(args)


def _inference(args: list[str]) -> int:
    from sweep.adapters.inference import inference_report
    from sweep.results.report import rebuild

    if len(args) != 1:
        raise ConfigError("usage: python -m sweep inference EXPERIMENT (make inference EXP=<name>)")
    print(inference_report(args[0]))
    print(rebuild(args[0]))
    return 0


def _repair(args: list[str]) -> int:
    from sweep.results.storage import repair_journal

    if len(args) != 1 or not Path(args[0]).is_file():
        raise ConfigError("usage: python -m sweep repair-journal PATH (an optuna.journal file)")
    kept, dropped = repair_journal(Path(args[0]))
    print(f"[repair] {args[0]}: kept {kept} record(s), dropped {dropped} damaged line(s)"
          + (f"; original saved as {args[0]}.damaged" if dropped else ""))  # fmt: skip
    return 0


COMMANDS = {
    "trial": _trial,
    "run": _run,
    "report": _report,
    "check": _check,
    "generate": _generate,
    "export": _export,
    "plan": _plan,
    "probe": _probe,
    "inference": _inference,
    "repair-journal": _repair,
}


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
    except Terminated as exc:
        print(f"terminated ({exc}): every finished trial is recorded and an interrupted one keeps "
              "its checkpoint; run the same command again to resume", file=sys.stderr)  # fmt: skip
        return 143
    except KeyboardInterrupt:
        print(
            "interrupted: finished trials are recorded; run the same command to resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
