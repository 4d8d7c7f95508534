"""A sweep's wall time against the Trainer.hyperparameter_search peer: `make bench`'s sweep part.

Both sides run the same grid in fresh processes (`python -m sweep run` and
`python -m sweep.bench.peer`); the harness's trial records also give the per-trial fixed
overhead (sweep.results.frame.overhead, the report's figure).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sweep.results import record
from sweep.results.frame import overhead
from sweep.settings.compose import compose

TRIAL_METRICS = ("trial_wall_s", "train_phase_s", "eval_s", "base_eval_s", "startup_s", "load_s")


def _timed(cmd: list[str], env: dict[str, str], log: Path) -> float:
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed (exit {proc.returncode}); see {log}")
    return wall


def _harness_sweep(user: list[str], out: Path) -> tuple[float, list[Any]]:
    """One harness sweep in a fresh process and store; the untuned-base cache cleared first, so
    it pays for that evaluation as on a fresh machine. Returns its wall time and records."""
    cfg = compose(user)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{out / 'mlflow.db'}"}
    out.mkdir(parents=True, exist_ok=True)
    for f in Path(cfg.cache_dir, "base_accuracy").glob("*.json"):
        f.unlink()
    common = [f"output_dir={out / 'outputs'}", f"report.dir={out / 'reports'}", *user]
    wall = _timed([sys.executable, "-m", "sweep", "run", *common], env, out / "harness.log")
    return wall, [record.load(p) for p in sorted((out / "outputs").glob("*/trials/*/result.json"))]


def _peer_sweep(user: list[str], out: Path) -> tuple[float, dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    log = out / "peer.log"
    wall = _timed([sys.executable, "-m", "sweep.bench.peer", *user], dict(os.environ), log)
    return wall, json.loads(log.read_text().strip().splitlines()[-1])


def sweep_vs_peer(
    user: list[str], work: Path, rounds: int = 2
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, float]]:
    """Wall time of the sweep and of the Trainer.hyperparameter_search peer, each a fresh
    process, `rounds` times each in ABBA order (harness, peer, peer, harness, ...): a machine
    that drifts faster or slower over the half hour weighs on both sides alike. The ratio is of
    the summed wall times; the per-trial table and the fixed overhead (of its ok trials, as the
    report counts it) are the first round's. Returns the summary, that table and the overhead."""
    walls: dict[str, list[float]] = {"harness": [], "peer": []}
    base_s: list[float] = []  # each harness run's base-evaluation phases, summed
    records: list[Any] = []
    peer: dict[str, Any] = {}
    for i in range(rounds):
        for side in ("harness", "peer") if i % 2 == 0 else ("peer", "harness"):
            print(f"[bench] sweep round {i + 1}/{rounds}: {side}", flush=True)
            if side == "harness":
                wall, recs = _harness_sweep(user, work / f"sweep-{i}")
                records = records or recs
                base_s.append(sum(r.metrics.get("base_eval_s") or 0.0 for r in recs))
            else:
                wall, result = _peer_sweep(user, work / f"peer-{i}")
                peer = peer or result
            walls[side].append(wall)
    trials = [
        {
            "trial": r.run.get("label"),
            "accuracy": r.metrics.get("accuracy"),
            "peer accuracy": peer["accuracy"].get(r.run.get("label")),
            "peer train_s": peer["phases"].get(r.run.get("label"), {}).get("train_s"),
            "peer eval_s": peer["phases"].get(r.run.get("label"), {}).get("eval_s"),
            **{k: r.metrics.get(k) for k in TRIAL_METRICS},
        }
        for r in records
    ]
    summary = {
        "rounds": rounds,
        "harness_walls_s": walls["harness"],
        "peer_walls_s": walls["peer"],
        "harness_s": sum(walls["harness"]),
        "peer_s": sum(walls["peer"]),
        "harness / peer": sum(walls["harness"]) / sum(walls["peer"]),
        # a later sweep on the same model and eval set reads the untuned base's results from
        # the cache (about 0.1 s a trial): the same walls less their measured base evaluations
        "harness_base_eval_s": base_s,
        "harness / peer, base cached": (sum(walls["harness"]) - sum(base_s)) / sum(walls["peer"]),
        "trials_wall_s": sum(t["trial_wall_s"] or 0 for t in trials),
        "harness_train_s": sum(t["train_phase_s"] or 0 for t in trials),
        "peer_train_s": sum(t["peer train_s"] or 0 for t in trials),
    }
    return summary, trials, overhead([{**r.metrics, "status": r.status} for r in records])
