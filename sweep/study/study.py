"""The sweep: an Optuna study whose trials run one after another in fresh child processes.

    python -m sweep run sweep=default                 # make sweep
    python -m sweep run sweep=rank_grid model=tiny_llama

Grid sweeps: `GridSampler` over the sweep's points (an approach and its own axes, so full FT runs
once and is not multiplied by ranks). Search sweeps: one TPE study per point over `sweep.search`,
with an optional median pruner fed by periodic eval loss. Every point's config is composed and
validated before the first trial starts. Each trial runs in a fresh process forked from a server
that imported torch & co. once (sweep/launch/child.py), and always leaves a result record; the study reads it, logs it to MLflow, tells Optuna and goes on.
Re-running a finished sweep runs nothing new; trials already finished are never re-run.
"""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path

import optuna

from sweep.launch.child import start_trial_server
from sweep.launch.launch import launch, stop_running, summary_line
from sweep.launch.memory import WorkerMemory, predicted_oom, worker_memory
from sweep.results import record, storage, tracking
from sweep.results.record import TrialResult
from sweep.results.report import finish
from sweep.settings.compose import ConfigError, as_dict, compose, one_line
from sweep.settings.errors import Terminated
from sweep.settings.metrics import OBJECTIVES
from sweep.settings.schema import Config
from sweep.study import live, reuse
from sweep.study.points import (
    Point,
    PointSampler,
    flatten,
    grid_points,
    is_dist,
    is_final,
    slug,
    trial_overrides,
)
from sweep.study.pool import in_pool, run_pool
from sweep.trial.preflight import check_point, preflight, warn

RUNNING, WAITING = optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING


class SweepStopped(ConfigError):
    """The sweep cannot go on (e.g. the disk is full): one line naming the cause and the way to
    recover; nothing recorded is lost and a re-run resumes."""


class TrialFailed(Exception):
    """A trial ended as oom or failed: Optuna records it as FAIL and the sweep goes on."""


_TERM = {"requested": False}


def _on_sigterm(grace_s: float) -> None:
    """SIGTERM (a scheduler's preemption or time limit): the running trial gets it too, to
    checkpoint and exit within grace_s (then SIGKILL), and no new trial starts."""

    def handler(signum: int, frame: object) -> None:
        if not _TERM["requested"]:
            _TERM["requested"] = True
            print(f"[sweep] SIGTERM: the running trial checkpoints (up to {grace_s:g} s), then "
                  "the sweep stops; run the same command again to resume", flush=True)  # fmt: skip
            stop_running(grace_s)

    _TERM["requested"] = False
    signal.signal(signal.SIGTERM, handler)


def _directions(cfg: Config) -> list[str]:
    return [OBJECTIVES[o] for o in cfg.sweep.objectives]


def _objective_values(cfg: Config, result: TrialResult) -> list[float]:
    values = [result.metrics.get(o) for o in cfg.sweep.objectives]
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
        raise TrialFailed(f"objective missing in record: {cfg.sweep.objectives}")
    return [float(v) for v in values]  # type: ignore[arg-type]


class Sweep:
    """Holds what every trial of one sweep shares: config, storage, MLflow parent run."""

    def __init__(self, user_overrides: list[str]) -> None:
        start_trial_server()
        self.user = user_overrides
        self.cfg = compose(user_overrides)
        s = self.cfg.sweep
        data_seed = self.cfg.dataset.seed if s.seed_data else None
        self.points = grid_points(s.grid, list(s.seeds), data_seed)
        self.memory = worker_memory(self.cfg)  # memory-bound outcomes are final per worker
        self.max_memory_gib = self.memory.skip_gib
        self.search = flatten(s.search)
        for key, dist in self.search.items():
            if not is_dist(dist):
                raise ConfigError(f"sweep.search.{key}: expected {{low: .., high: .., log: bool}}")
        for p in self.points:
            p.search = {**self.search, **p.search}
            for key, dist in p.search.items():
                if not 0 < float(dist["low"]) < float(dist["high"]):
                    raise ConfigError(
                        f"search range {key} for {p.name}: need 0 < low < high, got {dist}"
                    )
        if s.kind == "grid" and any(p.search for p in self.points):
            raise ConfigError(
                "sweep.kind=grid has search ranges; set sweep.kind=search to sample them"
            )
        # Fail now, not three trials in: every point must compose and validate.
        self.point_cfgs = {
            p.name: compose(trial_overrides(self.cfg, self.user, p.overrides)) for p in self.points
        }
        seen: set[str] = set()
        for cfg in self.point_cfgs.values():
            check_point(cfg)
        for cfg in self.point_cfgs.values():  # model files and dataset rows, once per variant
            d = as_dict(cfg)
            key = json.dumps([d["model"], d["dataset"]], sort_keys=True)
            if key not in seen:
                seen.add(key)
                preflight(cfg)
        if "select_loss" in s.objectives and not all(
            c.eval.select_size for c in self.point_cfgs.values()
        ):
            raise ConfigError(
                "sweep.objectives=[select_loss] needs eval.select_size > 0 (a selection split "
                "apart from the eval set, so the choice does not bias the reported accuracy)"
            )
        if s.pruner != "none" and not any(c.eval.every for c in self.point_cfgs.values()):
            raise ConfigError("sweep.pruner=median needs eval.every > 0 (intermediate eval loss)")
        self.root = Path(self.cfg.output_dir, self.cfg.experiment)
        self._remember_settings()
        self.storage_url = storage.url_for(s.storage, self.cfg.output_dir, self.cfg.experiment)
        self.storage = storage.open_storage(self.storage_url, s.heartbeat_s)
        tracking.check_reachable()
        self.parent = tracking.retrying(
            lambda: tracking.parent_run(self.cfg.experiment, as_dict(self.cfg), self.user),
            f"MLflow parent run of {self.cfg.experiment} at {tracking.uri()}",
        )
        self.sync()
        self.count = 0
        self._gave_up: set[str] = set()
        self._first = 0  # the first Optuna trial number of this run
        self.total = len(self.points) * (s.n_trials if s.kind == "search" else 1)

    def _remember_settings(self) -> None:
        """Warn in one line when a re-run's settings differ from the experiment's first run:
        finished points keep the results of the old settings."""
        path = self.root / "sweep_config.json"
        now = flatten(as_dict(self.cfg))
        if not path.is_file():
            self.root.mkdir(parents=True, exist_ok=True)
            record.write_whole(path, lambda tmp: tmp.write_text(json.dumps(now, indent=1)))
            return
        try:
            before = json.loads(path.read_text())
        except ValueError:
            return
        changed = sorted(k for k in now.keys() | before.keys() if now.get(k) != before.get(k))
        if changed:
            shown = ", ".join(f"{k}: {before.get(k)} -> {now.get(k)}" for k in changed[:3])
            more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
            warn(
                f"experiment {self.cfg.experiment} ran before with other settings ({shown}{more});"
                " finished points keep their results: use experiment=<new name> to compare anew"
            )

    def sync(self) -> None:
        """Log the finished records MLflow lacks (a lost store, an outage, a killed logging)."""
        try:
            n = tracking.retrying(
                lambda: tracking.sync(self.parent, self.root / "trials"), "logging records"
            )
        except tracking.TrackingUnavailable as exc:
            print(f"[sweep] tracking unavailable ({exc}); records kept, logged next run")
            return
        if n:
            print(f"[sweep] {n} finished trial record(s) were missing from MLflow: logged now")
        try:
            killed = live.close_orphans(self.parent, self.root / "trials")
        except Exception as exc:  # best effort: the records are what the report reads
            print(f"[sweep] could not close orphaned runs ({one_line(exc)})", flush=True)
            killed = 0
        if killed:
            print(f"[sweep] {killed} trial run(s) of a killed sweep closed as KILLED in MLflow")

    def _stop(self, trial_dir: Path, result: TrialResult, run_id: str | None) -> None:
        """SIGTERM: keep what the trial left (its record, its checkpoint), close its run KILLED
        at once, and stop the sweep."""
        record.save(result, trial_dir / "result.json")
        try:
            live.close_run(run_id, "KILLED")
        except Exception as exc:
            print(f"[sweep] could not close {trial_dir.name}'s run ({one_line(exc)})", flush=True)
        raise Terminated(f"SIGTERM: {trial_dir.name} ended {result.status}")

    def _live_run(self, trial_dir: Path, cfg: Config, resumed: bool = False) -> str | None:
        """The trial's MLflow run, created RUNNING now, or the interrupted run's reopened for a
        resumed trial (None when tracking is unavailable: the trial runs and its record is
        logged at the end or on the next run)."""
        try:
            if resumed and (rid := live.reopen_run(self.parent, trial_dir.name)):
                return rid
            return live.start_run(self.parent, trial_dir.name, record.run_info(cfg))
        except Exception as exc:
            print(f"[sweep] no live run for {trial_dir.name} ({one_line(exc)})", flush=True)
            return None

    def run_point(self, trial: optuna.Trial, point: Point, study_name: str) -> list[float]:
        """Optuna objective body: sample, compose, launch, record, log, return the objectives."""
        sampled = []
        for key, dist in point.search.items():
            value = trial.suggest_float(
                key, float(dist["low"]), float(dist["high"]), log=bool(dist.get("log", False))
            )
            sampled.append(f"{key}={value}")
        if not sampled and self._taken_elsewhere(trial, point.name, self.memory):
            trial.set_user_attr("duplicate", True)
            raise optuna.TrialPruned(f"{point.name} already done or running in another worker")
        cfg = compose(trial_overrides(self.cfg, self.user, point.overrides + sampled))
        cfg.label = point.label  # made once here, carried in the record (record.run_info)
        trial_dir = self.root / "trials" / f"{trial.number:04d}-{slug(point.name)}"
        if _TERM["requested"]:
            raise Terminated("SIGTERM: no new trial")
        reused = None if sampled else reuse.finished_record(self.root, point.name, cfg, self.memory)
        resumed = None if reused or sampled else reuse.resumable(self.root, point.name, cfg)
        attempt = self._attempts(trial, point.name)
        self.count += 1
        again = f" (attempt {attempt + 1})" if attempt else ""
        if reused is not None:
            trial_dir = reused[0]
            print(f"[trial {self.count}/{self.total}] {point.name}: finished before, "
                  f"record reused ({trial_dir})", flush=True)  # fmt: skip
        elif resumed is not None:
            trial_dir = resumed
            print(f"[trial {self.count}/{self.total}] {point.name}: resumes its checkpoint "
                  f"({trial_dir})", flush=True)  # fmt: skip
        else:
            print(
                f"[trial {self.count}/{self.total}] {point.name}{' ' + ' '.join(sampled) if sampled else ''}"
                f"{again}: start ({trial_dir})",
                flush=True,
            )
        prune = (
            (self.storage_url, study_name, trial._trial_id)
            if self.cfg.sweep.pruner != "none"
            else None
        )
        trial.set_user_attr("worker", storage.worker_info())
        skipped = None if reused else predicted_oom(cfg, self.max_memory_gib)
        run_id = None
        if reused is not None:
            result = reused[1]
        elif skipped is not None:
            trial_dir.mkdir(parents=True, exist_ok=True)
            result = skipped
        else:
            run_id = self._live_run(trial_dir, cfg, resumed is not None)
            result = launch(
                cfg,
                trial_dir,
                self.cfg.sweep.timeout_s,
                prune,
                self.cfg.sweep.memory_limit_gib,
                live_run=run_id,
            )
            if _TERM["requested"]:
                self._stop(trial_dir, result, run_id)
        result.run.update(
            point=point.name,
            optuna_trial=trial.number,
            study=study_name,
        )
        if reused is None:  # a reused record keeps the limit it was judged against
            result.meta["memory_limit_gib"] = self.memory.limit(result.status)
        try:
            record.save(result, trial_dir / "result.json")
        except OSError as exc:
            raise SweepStopped(
                f"cannot write {trial_dir / 'result.json'} ({exc.strerror or exc}); free space "
                "(or fix the folder), then run the same command again: finished trials are kept"
            ) from None
        try:
            tracking.retrying(
                lambda: tracking.log_trial(self.parent, result, trial_dir, run_id),
                f"logging {trial_dir.name}",
            )
        except tracking.TrackingUnavailable as exc:
            print(f"[sweep] tracking unavailable ({exc}); the record is kept in {trial_dir} "
                  "and logged on the next run", flush=True)  # fmt: skip
        print(summary_line(self.count, self.total, result), flush=True)
        trial.set_user_attr("status", result.status)
        trial.set_user_attr("error", str(result.train.get("error") or "")[:300])
        trial.set_user_attr("trial_dir", str(trial_dir))
        for key in ("memory_limit_gib", "device_name", "device_class"):  # WorkerMemory.reopens
            trial.set_user_attr(key, result.meta.get(key))
        if result.status in ("pruned", "diverged", "skipped_predicted_oom"):
            raise optuna.TrialPruned(result.train.get("error") or result.status)
        if result.status != "ok":
            raise TrialFailed(result.train.get("error") or result.status)
        return _objective_values(self.cfg, result)

    @staticmethod
    def _attempts(trial: optuna.Trial, label: str) -> int:
        """Earlier tries of this point that ended without a final outcome (crash, kill, time-out)."""
        return sum(
            t.number != trial.number
            and t.params.get("point") == label
            and t.state == optuna.trial.TrialState.FAIL
            and not is_final(t)
            for t in trial.study.get_trials(deepcopy=False)
        )

    @staticmethod
    def _taken_elsewhere(trial: optuna.Trial, label: str, memory: WorkerMemory) -> bool:
        """Another trial already finished this grid point (for a worker with `memory`) or is
        running it (GridSampler hands out running points again once every point has started;
        with several workers that repeats)."""
        for t in trial.study.get_trials(deepcopy=False):
            if t.number == trial.number or t.params.get("point") != label:
                continue
            if is_final(t, memory) or (t.state == RUNNING and not t.user_attrs.get("duplicate")):
                return True
        return False

    def _pruner(self) -> optuna.pruners.BasePruner:
        if self.cfg.sweep.pruner == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
        return optuna.pruners.NopPruner()

    def run_grid(self) -> None:
        labels = [p.name for p in self.points]
        by_label = {p.name: p for p in self.points}
        sampler = PointSampler({"point": labels}, seed=self.cfg.train.seed)
        study = optuna.create_study(
            study_name=self.cfg.experiment,
            storage=self.storage,
            sampler=sampler,
            directions=_directions(self.cfg),
            load_if_exists=True,
        )
        objective = lambda t: self.run_point(  # noqa: E731
            t, by_label[t.suggest_categorical("point", labels)], study.study_name
        )
        self._first = len(study.get_trials(deepcopy=False))
        for round_ in range(2 * len(labels) + 2):  # rounds: retries queued meanwhile run too
            remaining, waiting, busy, done = self._grid_todo(study, labels)
            if not remaining and not waiting:
                if round_ == 0:
                    state = "finished" if not busy else "finished or running in another worker"
                    print(f"[sweep] all {len(labels)} points {state}; nothing to run", flush=True)
                return
            self.count = len(done)
            study.optimize(objective, n_trials=len(remaining) + waiting, catch=(TrialFailed,))

    def _grid_todo(self, study: optuna.Study, labels: list[str]) -> tuple[list[str], int, set, set]:
        """Points nobody has finished or is running (queued again if tried before, up to
        sweep.max_retries times, or if a memory-bound outcome was judged against less memory
        than this worker has), and the number of queued retries; dead workers' trials are
        failed first so they count as todo."""
        storage.fail_stale_trials(study)  # our own host: a dead process
        optuna.storages.fail_stale_trials(study)  # RDB heartbeats: a worker elsewhere went silent
        trials = study.get_trials(deepcopy=False)
        done = {t.params.get("point") for t in trials if is_final(t, self.memory)}
        busy = {t.params.get("point") for t in trials if t.state in (RUNNING, WAITING)}
        failures: dict[str, list[optuna.trial.FrozenTrial]] = {}
        for t in trials:  # failures of this run: a re-run of the sweep tries every point again
            retryable = t.state == optuna.trial.TrialState.FAIL and not is_final(t)
            if retryable and t.number >= self._first:
                failures.setdefault(t.params.get("point"), []).append(t)
        retries = self.cfg.sweep.max_retries
        for label, failed in failures.items():
            if label not in done and label not in busy and len(failed) > retries:
                done.add(label)
                if label not in self._gave_up:
                    self._gave_up.add(label)
                    error = failed[-1].user_attrs.get("error") or "crashed or interrupted"
                    print(f"[sweep] {label}: tried {len(failed)} time(s) without an outcome "
                          f"(sweep.max_retries={retries}), not run again: {error}", flush=True)  # fmt: skip
        remaining = [x for x in labels if x not in done and x not in busy]
        tried = {t.params.get("point") for t in trials}
        for label in remaining:  # interrupted or crashed before: run it again from the start
            if label in tried:
                study.enqueue_trial({"point": label})
        waiting = sum(t.state == WAITING for t in study.get_trials(deepcopy=False))
        return [x for x in remaining if x not in tried], waiting, busy, done

    def run_search(self) -> None:
        for point in self.points:
            name = f"{self.cfg.experiment}:{point.name}"
            study = optuna.create_study(
                study_name=name,
                storage=self.storage,
                sampler=optuna.samplers.TPESampler(seed=self.cfg.train.seed),
                pruner=self._pruner(),
                directions=_directions(self.cfg),
                load_if_exists=True,
            )
            storage.fail_stale_trials(study)
            finished = sum(is_final(t, self.memory) for t in study.get_trials(deepcopy=False))
            todo = self.cfg.sweep.n_trials - finished
            self.count += finished
            if todo > 0:
                study.optimize(
                    lambda t, p=point, n=name: self.run_point(t, p, n),
                    n_trials=todo,
                    catch=(TrialFailed,),
                )


def run_sweep(user_overrides: list[str]) -> int:
    """Run (or resume) the sweep, then write its report. Returns a process exit code."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own line per trial says it all
    start = time.time()
    cfg = compose(user_overrides)
    if cfg.sweep.gpus:  # a worker per GPU (sweep.study.pool), each running this with sweep.gpus=[]
        return run_pool(cfg, user_overrides)
    sweep = Sweep(user_overrides)
    cfg = sweep.cfg
    _on_sigterm(cfg.sweep.term_grace_s)
    print(
        f"[sweep] {cfg.experiment}: {sweep.total} trial(s) over {len(sweep.points)} point(s) "
        f"[{', '.join(p.name for p in sweep.points)}]\n[sweep] storage {storage.redact(sweep.storage_url)}, "
        f"tracking {tracking.uri()}",
        flush=True,
    )
    try:
        if cfg.sweep.kind == "grid":
            sweep.run_grid()
        else:
            sweep.run_search()
    except BaseException:  # interrupted or crashed: no parent run is left RUNNING
        tracking.close_parent(sweep.parent, "KILLED")
        raise
    sweep.sync()  # records an outage kept back are logged before the report reads MLflow
    if in_pool():  # the pool writes the report once every worker is done
        print(f"[sweep] worker done in {time.time() - start:.0f} s", flush=True)
        return 0
    return finish(cfg, user_overrides, start, sweep.parent)
