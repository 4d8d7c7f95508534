"""One measured trial: config -> load -> apply method -> train -> evaluate -> save -> TrialResult.

    python -m sweep trial method=lora method.r=16        # one trial, in this process
    python -m sweep.trial outputs/default/trials/0003    # re-run a sweep's trial by hand

`run_trial(cfg, out_dir)` is the whole trial and is callable alone for debugging. A sweep runs
`sweep.launch.child.trial_child` in a fresh process per trial, which calls `main`: it reads `<dir>/config.json`, runs the trial and always
leaves `<dir>/result.json`, whatever happens (ok, oom, diverged, pruned or failed with the error),
so a sweep can record it and go on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import torch

from sweep.planning import budget, recipe
from sweep.results import record
from sweep.results.record import TrialResult, run_info
from sweep.settings.compose import ConfigError, to_config
from sweep.settings.schema import AUTO_MAX_LEN, Config
from sweep.settings.validate import pack_row_len
from sweep.trial import (
    batches,
    checkpoint,
    data,
    derived,
    evaluate,
    measure,
    methods,
    models,
    process,
    ranks,
    stream,
)
from sweep.trial.baseline import BASE_ITEMS_FILE, ITEMS_FILE, base_eval, write_items
from sweep.trial.preflight import warn
from sweep.trial.summary import summary
from sweep.trial.train import train

# Called with (step, eval loss) during training; returns True to stop (the pruner's verdict).
Reporter = Callable[[int, float], bool]


def sized_rows(cfg: Config, tok: Any, task: data.Task) -> tuple[Config, batches.Encoded]:
    """The train rows at train.max_seq_len (0: sized from the data; the config returned holds
    the length used, for evaluation and the planner); warns when an example is cut."""
    t = cfg.train
    enc = batches.encode_train(tok, task.train, t.max_seq_len, cfg.dataset.system_prompt)
    if enc.truncated:
        auto = f" (auto: the 99th percentile, at most {AUTO_MAX_LEN})" if not t.max_seq_len else ""
        warn(
            f"train.max_seq_len={t.max_seq_len}{auto}: {enc.truncated} of {len(enc.rows)} train "
            f"examples are longer (up to {enc.longest} tokens) and lose the start of their "
            f"prompt; raise it{'' if auto else ', or 0 sizes it from the data'}"
        )
    if enc.max_len != t.max_seq_len:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(t, max_seq_len=enc.max_len))
    return cfg, enc


OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA OOM, or the CPU allocator refusing memory (e.g. under a host memory limit)."""
    return any(m in str(exc).lower() for m in OOM_MESSAGES)


def record_error(result: TrialResult, exc: Exception) -> None:
    """An exception as this trial's status: oom, or failed with the error (and its traceback
    when it is not a ConfigError's one line); the sweep goes on."""
    if isinstance(exc, torch.OutOfMemoryError | MemoryError) or (
        isinstance(exc, RuntimeError) and is_out_of_memory(exc)
    ):
        result.train.update(status="oom", error=f"{type(exc).__name__}: {str(exc)[:300]}")
    elif isinstance(exc, ConfigError):
        result.train.update(status="failed", error=str(exc))
    else:
        result.train.update(
            status="failed",
            error=f"{type(exc).__name__}: {exc}"[:2000],
            traceback=traceback.format_exc()[-4000:],
        )


@dataclasses.dataclass
class Inputs:
    """What a trial trains and scores on, built before training."""

    tok: Any
    model_path: str
    task: data.Task
    rows: list[dict[str, list[int]]]
    passages: list[list[int]]  # general text never trained on: the retention probe


class Live:
    """The trial's live MLflow run (rank 0 only): per-step metrics and system metrics."""

    def __init__(self, run_id: str | None) -> None:
        run_id = stream.usable(run_id) if ranks.is_main() else None
        self.steps = stream.LiveMetrics(run_id) if run_id else None
        self.system = stream.SystemMetrics(run_id)

    def log(self, values: dict[str, float], step: int) -> None:
        if self.steps is not None:
            self.steps.log(values, step)

    def callbacks(self) -> tuple[Any, ...]:
        return (self.steps,) if self.steps is not None else ()

    def close(self) -> None:
        self.system.finish()
        if self.steps is not None:
            self.steps.close()


def run_trial(
    cfg: Config,
    out_dir: str | Path,
    reporter: Reporter | None = None,
    launched: float | None = None,
    live_run: str | None = None,
) -> TrialResult:
    """Run one trial and write `<out_dir>/result.json`; never raises for a failed run.
    `launched`: when the sweep asked for this trial's process (epoch s; startup_s counts from
    it), else this process's start. `live_run`: the MLflow run the sweep created for this trial,
    which then streams its steps and system metrics (sweep.study.live)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = TrialResult(run=run_info(cfg), meta=record.environment(cfg.report.gpus))
    launched = launched or psutil.Process().create_time()
    result.train = {"status": "failed", "error": None, "metrics": {}}
    result.metrics["startup_s"] = time.time() - launched
    meter, live, stats = measure.Meter(), Live(live_run), None
    try:
        meter.start_device()
        torch.manual_seed(cfg.train.seed)
        with meter.phase("load"):
            model, tok, model_path = load(cfg)
        with meter.phase("data"):
            cfg, inputs = build_inputs(cfg, tok, model_path, result)
        before = score_base(cfg, model, inputs, result, out, meter)
        model = methods.apply(model, cfg.method, cfg.train)
        result.metrics.update(derived.param_counts(model))
        with meter.phase("train"):
            stats, saver = train_model(cfg, model, inputs, out, result, reporter, live)
        record_training(cfg, stats, result)
        if saver.preempted:
            step = stats.steps
            error = f"stopped by SIGTERM at step {step}, checkpoint kept: a re-run resumes it"
            result.train.update(status="preempted", error=error)
        elif stats.diverged:
            first, last = stats.losses[0], stats.losses[-1]
            error = f"loss {last:.4g} at step {stats.steps} (first loss {first:.4g})"
            result.train.update(status="diverged", error=error)
        else:
            with meter.phase("save"):  # first: evaluation may fold the adapter in
                result.metrics["adapter_bytes"] = ranks.save(model, out / "adapter", methods.save)
            with meter.phase("eval"):
                evaluation = evaluate_model(cfg, model, inputs, result)
            record_evaluation(evaluation, before, result, out)
            result.train["status"] = "pruned" if stats.pruned else "ok"
    except Exception as exc:  # any crash is this trial's result, not the sweep's end
        record_error(result, exc)
    if result.status not in ("preempted", "failed", "oom") and not cfg.train.keep_checkpoints:
        checkpoint.remove(out / "trainer")  # ended: nothing left to resume
    result.metrics.update(meter.summary())
    gather_ranks(result, out)
    record_peaks(result, stats, meter)
    live.close()
    if ranks.is_main():
        record.save(result, out / "result.json")
    return result


def load(cfg: Config) -> tuple[Any, Any, str]:
    """The base model as the method loads it (dtype, quantization), its tokenizer, its path."""
    path = models.resolve(cfg.model, cfg.cache_dir)
    tok = models.load_tokenizer(path, cfg.model.trust_remote_code)
    model = models.load_model(
        path,
        methods.load_dtype(recipe.of(cfg)),
        cfg.model.trust_remote_code,
        attn_implementation=cfg.model.attn_implementation,
        **methods.load_kwargs(cfg.method, cfg.train.precision),
    )
    return model, tok, path


def build_inputs(
    cfg: Config, tok: Any, model_path: str, result: TrialResult
) -> tuple[Config, Inputs]:
    """The task's examples, the train rows (their length fixed in the config returned), the
    steps they give and the retention passages."""
    t, e = cfg.train, cfg.eval
    task = data.load_task(cfg.dataset, budget.examples_needed(t), e.size, e.select_size)
    cfg, enc = sized_rows(cfg, tok, task)
    cfg.train.steps = budget.resolve_steps(cfg.train, len(enc.rows))  # train.epochs: from the split
    result.metrics.update(budget.metrics(cfg.train, enc.rows))
    result.metrics.update(max_seq_len=enc.max_len, truncated_examples=enc.truncated)
    passages = data.retention_passages(tok, e.retention_size, e.retention_tokens)
    return cfg, Inputs(tok, model_path, task, enc.rows, passages)


def score_base(
    cfg: Config, model: Any, inputs: Inputs, result: TrialResult, out: Path, meter: Any
) -> list[float]:
    """The untuned model on the eval items (the zero line, eval.base) and on the retention
    passages; returns the passages' losses before training."""
    if not (cfg.eval.base or inputs.passages):
        return []
    with meter.phase("base_eval"):
        base = base_eval(cfg, model, inputs.tok, inputs.task, inputs.model_path, inputs.passages)
    if cfg.eval.base:
        result.metrics.update(
            base_accuracy=base["accuracy"],
            base_task_score=base["task_score"],
            base_eval_loss=base["eval_loss"],
        )
        if ranks.is_main():
            write_items(out / BASE_ITEMS_FILE, base["items"])
        result.train["base_items"] = BASE_ITEMS_FILE
        result.train["base_quant"] = base.get("base_quant")
    return base.get("retention", [])


def train_model(
    cfg: Config,
    model: Any,
    inputs: Inputs,
    out: Path,
    result: TrialResult,
    reporter: Reporter | None,
    live: Live,
) -> tuple[Any, checkpoint.CheckpointCallback]:
    """Train, with the periodic eval loss (eval.every) logged and handed to the pruner, from
    the latest checkpoint when an interrupted run left one, checkpointing as the config says."""
    t, e, sp = cfg.train, cfg.eval, cfg.dataset.system_prompt
    curve: list[list[float]] = []
    result.train["eval_loss_curve"] = curve
    watched = inputs.task.select or inputs.task.eval  # the selection split when there is one

    def hook(step: int) -> bool:
        loss = evaluate.eval_loss(model, inputs.tok, watched, t.max_seq_len, e.batch_size, sp)
        curve.append([step, loss])
        live.log({"periodic_eval_loss": loss}, step)
        return reporter(step, loss) if reporter is not None else False

    packed = result.run["packing"]
    collate = batches.train_collate(
        inputs.tok.pad_token_id, packed, t.loss_logits == "answer", pack_row_len(cfg)
    )
    resume = checkpoint.latest(out / "trainer")
    resumed_from = int(resume.name.rsplit("-", 1)[1]) if resume else 0
    if resume:
        print(f"[trial] resuming from {resume} (step {resumed_from})", flush=True)
    lost = checkpoint.lost_work(out, resumed_from)
    saver = checkpoint.CheckpointCallback(t.save_every, t.save_every_s, None, out)
    stats = train(
        model,
        inputs.tok,
        inputs.rows,
        collate,
        method=cfg.method,
        cfg=t,
        out_dir=str(out / "trainer"),
        hook=hook,
        every=e.every,
        extra_callbacks=live.callbacks(),
        packed=packed,
        saver=saver,
        resume=resume,
    )
    result.metrics.update(saver.metrics(resumed_from, lost))
    return stats, saver


def record_training(cfg: Config, stats: Any, result: TrialResult) -> None:
    """Steps, time and tokens, model FLOP/s, the loss curve and the memory ledger."""
    metrics = result.metrics
    metrics.update(stats.metrics())
    width = int((stats.ledger.get("batch_shape") or [cfg.train.max_seq_len])[-1])
    share = int(stats.ledger.get("logits_width") or width) / width
    metrics["logits_share"] = share
    span = derived.attention_span(stats.ledger, cfg.train.max_seq_len)
    metrics.update(derived.utilisation(cfg, metrics["train_tokens_per_s"], span, share))
    result.train["loss_curve"] = stats.losses
    result.train["step_clock"] = stats.clock()
    ledger_metrics, result.train["ledger"] = derived.memory_ledger(cfg, stats)
    metrics.update(ledger_metrics)


def evaluate_model(cfg: Config, model: Any, inputs: Inputs, result: TrialResult) -> dict[str, Any]:
    """Accuracy and eval loss on the eval items, the selection loss, and the retention
    passages' losses after training (under "retention_after")."""
    t, e, sp, tok = cfg.train, cfg.eval, cfg.dataset.system_prompt, inputs.tok
    if ranks.unshard(model):  # FSDP: whole weights on every rank, no merge
        result.metrics["eval_merged"] = False
    else:
        model, result.metrics["eval_merged"] = methods.merged_for_eval(model)
    evaluation = evaluate.loss_and_accuracy(
        model, tok, inputs.task, t.max_seq_len, evaluate.new_tokens(cfg), e.batch_size, sp
    )
    if inputs.task.select:
        result.metrics["select_loss"] = evaluate.eval_loss(
            model, tok, inputs.task.select, t.max_seq_len, e.batch_size, sp
        )
    if inputs.passages:
        evaluation["retention_after"] = evaluate.passage_losses(
            model, inputs.passages, e.batch_size
        )
    return evaluation


EVAL_METRICS = (
    "accuracy",
    "task_score",
    "eval_loss",
    "n_eval",
    "generated_tokens",
    "eval_batch_size",
)


def record_evaluation(
    evaluation: dict[str, Any], retention_before: list[float], result: TrialResult, out: Path
) -> None:
    """The evaluation's metrics, its per-item file, and the forgetting on the retention probe."""
    result.metrics.update({k: evaluation[k] for k in EVAL_METRICS})
    if ranks.is_main():
        write_items(out / ITEMS_FILE, evaluation["items"])
    result.train["eval_items"] = ITEMS_FILE
    result.train["samples"] = evaluation["samples"]
    after = evaluation.get("retention_after")
    if after:
        result.train["retention"] = {"before": retention_before, "after": after}
        loss_before, loss_after = derived.mean(retention_before), derived.mean(after)
        result.metrics.update(
            retention_loss_before=loss_before,
            retention_loss_after=loss_after,
            retention_delta=loss_after - loss_before,
        )


def gather_ranks(result: TrialResult, out: Path) -> None:
    """Over several processes: each rank's device and peaks gathered on rank 0; a rank that
    failed ends them all (the others wait in a collective)."""
    if ranks.world() <= 1:
        return
    if result.status in ("failed", "oom"):
        if ranks.is_main():
            record.save(result, out / "result.json")
        raise SystemExit(f"[rank {ranks.rank()}] {result.train.get('error')}")
    result.train["ranks"] = ranks.gather(ranks.rank_info(result.metrics))
    result.metrics.update(ranks.peaks_over(result.train["ranks"]))


def record_peaks(result: TrialResult, stats: Any, meter: Any) -> None:
    """Train time without warm-up, and the headline peak: the training phase's, on CPU as on a
    GPU (evaluation and the base model's scoring have their own batch sizes and are not what a
    method costs)."""
    metrics = result.metrics
    if stats is not None:
        metrics["train_s"] = stats.measured_s  # warm-up excluded; train_phase_s has it all
        metrics["train_phase_s"] = meter.phases["train"].seconds
    metrics["peak_memory_gib"] = (
        metrics.get("peak_vram_gib")
        or metrics.get("train_peak_host_rss_gib")
        or metrics.get("peak_host_rss_gib")
    )
    metrics["memory_kind"] = "vram" if metrics.get("peak_vram_gib") else "host_rss"


def run_dir(
    trial_dir: str | Path,
    launched: float | None = None,
    pruning: tuple[str, str, int] | None = None,
    live_run: str | None = None,
) -> int:
    """Run the trial described by <trial_dir>/config.json: a sweep's trial process calls this
    with its launch time and, when the sweep prunes, (storage URL, study name, trial id)."""
    out = Path(trial_dir)
    checkpoint.install_term_handler()  # SIGTERM: a checkpoint, then the trial ends preempted
    cfg = to_config(json.loads((out / "config.json").read_text()))
    reporter = None
    if pruning is not None and ranks.is_main():  # rank 0 reports, all ranks stop
        from sweep.results.storage import pruning_reporter

        reporter = pruning_reporter(*pruning)
    result = run_trial(cfg, out, reporter, launched, live_run)
    if ranks.is_main():
        print(summary(result), flush=True)
    return 143 if result.status == "preempted" else 0  # 128 + SIGTERM, as an unhandled one


def run_rank(trial_dir: str | Path) -> int:
    """One rank of a multi-process trial (sweep.launch.parallel): the launch's details from
    <trial dir>/launch.json, the pruning storage URL from the environment."""
    details = ranks.read_launch(Path(trial_dir))
    process.isolate(float(details.get("memory_limit_gib") or 0.0))
    if torch.cuda.is_available():
        torch.cuda.set_device(ranks.local_rank())
    pruning = details.get("pruning")
    url = os.environ.pop(ranks.STORAGE_ENV, None)
    prune = (url, pruning[0], int(pruning[1])) if pruning and url else None
    return run_dir(trial_dir, details.get("launched"), prune, details.get("live_run"))


def main(argv: list[str]) -> int:
    """python -m sweep.trial <trial dir>: re-run a sweep's trial by hand (also each rank of a
    multi-process trial, started by accelerate)."""
    if ranks.world() > 1:
        return run_rank(argv[0])
    return run_dir(argv[0])
