"""One measured trial: config -> load -> apply method -> train -> evaluate -> save -> TrialResult.

    python -m sweep trial method=lora method.r=16        # one trial, in this process
    python -m sweep.trial outputs/default/trials/0003    # re-run a sweep's trial by hand

`run_trial(cfg, out_dir)` is the whole trial and is callable alone for debugging. A sweep runs
`sweep.child.trial_child` in a fresh process per trial, which calls `main`: it reads `<dir>/config.json`, runs the trial and always
leaves `<dir>/result.json`, whatever happens (ok, oom, diverged, pruned or failed with the error),
so a sweep can record it and go on.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import torch

from sweep import (
    budget,
    data,
    evaluate,
    ledger,
    measure,
    methods,
    models,
    parallel,
    plan,
    recipe,
    record,
    stream,
)
from sweep.arch import arch_for_model, train_flops_per_token
from sweep.baseline import BASE_ITEMS_FILE, ITEMS_FILE, base_eval, write_items
from sweep.config import ConfigError, to_config
from sweep.preflight import warn
from sweep.record import TrialResult, run_info
from sweep.schema import AUTO_MAX_LEN, Config
from sweep.train import train
from sweep.validate import pack_row_len

# Called with (step, eval loss) during training; returns True to stop (the pruner's verdict).
Reporter = Callable[[int, float], bool]


def sized_rows(cfg: Config, tok: Any, task: data.Task) -> tuple[Config, data.Encoded]:
    """The train rows at train.max_seq_len (0: sized from the data; the config returned holds
    the length used, for evaluation and the planner); warns when an example is cut."""
    t = cfg.train
    enc = data.encode_train(tok, task.train, t.max_seq_len, cfg.dataset.system_prompt)
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


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _ledger(model: torch.nn.Module) -> dict[str, Any]:
    trainable, total = methods.count_params(model)
    return {
        "trainable_params": trainable,
        "total_params": total,
        "trainable_pct": 100.0 * trainable / total if total else 0.0,
        "base_4bit": methods.is_4bit(model),
    }


def memory_ledger(cfg: Config, stats: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The measured ledger of the first step, and the planner's prediction for the same trial:
    (metrics, the record's train["ledger"] block). The planner never fails a trial."""
    led = dict(stats.ledger) if stats is not None else {}
    out: dict[str, Any] = {}
    if led:
        out.update(
            ledger.metrics(
                led.get("params_by_dtype", {}),
                led.get("grads_bytes"),
                led.get("optimizer_bytes"),
                led.get("activations_bytes"),
            )
        )
    try:
        cuda = torch.cuda.is_available()
        out.update(plan.plan_metrics(plan.predict_trial(cfg, cuda)))
        shape = led.get("batch_shape")
        if shape:  # the same prediction at the measured batch: [batch, padded width] or packed
            s = plan.trial_settings(cfg, cuda, seq_len=int(shape[-1]))
            s.batch_size = int(shape[0])  # a packed batch (train.packing): its rows
            s.padded = bool(led.get("padded", True)) or _packed_mask(cfg, led)
            s.logits_len = int(led.get("logits_width") or 0)
            saved = plan.saved_activation_bytes(arch_for_model(cfg.model), s, recipe.of(cfg, cuda))
            out["plan_saved_activations_gib"] = saved / plan.GIB
    except (ConfigError, ValueError, TypeError) as exc:
        led["plan_error"] = str(exc)[:300]
    return out, led


def _packed_mask(cfg: Config, led: dict[str, Any]) -> bool:
    """Packed rows under sdpa or eager: transformers builds a block-diagonal mask per row from
    the position ids, which SDPA keeps in every block as it keeps a padding mask (flash
    attention takes the position ids alone)."""
    return bool(led.get("packed")) and cfg.model.attn_implementation != "flash_attention_2"


def attention_span(led: dict[str, Any], default: int) -> int:
    """Tokens each position attends over, for the model FLOPs (sweep.arch): the padded batch's
    width, or a packed batch's tokens per example (rows x width / examples: its examples do not
    attend to each other)."""
    shape = led.get("batch_shape") or [1, default]
    if led.get("packed") and led.get("sequences"):
        return max(1, round(int(shape[0]) * int(shape[-1]) / int(led["sequences"])))
    return int(shape[-1])


def utilisation(
    cfg: Config, tokens_per_s: float, seq_len: int, logits_share: float = 1.0
) -> dict[str, float]:
    """Achieved model TFLOP/s of the training loop (sweep.arch.train_flops_per_token at the
    measured non-padding tokens/s) and, on a GPU listed in report.gpus, its MFU."""
    if not tokens_per_s or math.isnan(tokens_per_s):
        return {}
    try:
        arch = arch_for_model(cfg.model)
    except (ConfigError, ValueError, OSError):
        return {}
    per_token = train_flops_per_token(arch, recipe.of(cfg), seq_len, logits_share)
    out = {"train_tflops": per_token * tokens_per_s / 1e12}
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        peak = measure.peak_tflops(name, cfg.train.precision, cfg.report.gpus)
        if peak:
            out["mfu"] = out["train_tflops"] / peak
    return out


OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA OOM, or the CPU allocator refusing memory (e.g. under a host memory limit)."""
    return any(m in str(exc).lower() for m in OOM_MESSAGES)


def record_failure(result: TrialResult, exc: Exception) -> None:
    """Record a crash as this trial's result; the sweep goes on."""
    result.train.update(
        status="failed",
        error=f"{type(exc).__name__}: {exc}"[:2000],
        traceback=traceback.format_exc()[-4000:],
    )


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
    which then streams its steps and system metrics (sweep.live)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = TrialResult(run=run_info(cfg), meta=record.environment(cfg.report.gpus))
    launched = launched or psutil.Process().create_time()
    metrics: dict[str, Any] = {"startup_s": time.time() - launched}
    result.train = {"status": "failed", "error": None, "metrics": metrics}
    meter = measure.Meter()
    stats = None
    main = parallel.is_main()  # several processes (train.gpus): rank 0 records
    live_run = stream.usable(live_run) if main else None
    streams = stream.LiveMetrics(live_run) if live_run else None
    system = stream.SystemMetrics(live_run)
    try:
        meter.start_device()
        torch.manual_seed(cfg.train.seed)
        t, e, sp = cfg.train, cfg.eval, cfg.dataset.system_prompt
        packed = result.run["packing"]  # resolved before max_seq_len is sized from the data
        with meter.phase("load"):
            path = models.resolve(cfg.model, cfg.cache_dir)
            tok = models.load_tokenizer(path, cfg.model.trust_remote_code)
            model = models.load_model(
                path,
                methods.load_dtype(recipe.of(cfg)),
                cfg.model.trust_remote_code,
                attn_implementation=cfg.model.attn_implementation,
                **methods.load_kwargs(cfg.method, t.precision),
            )
        with meter.phase("data"):
            n_train = budget.examples_needed(t)
            task = data.load_task(cfg.dataset, n_train, e.size, e.select_size)
            cfg, enc = sized_rows(cfg, tok, task)
            t, rows = cfg.train, enc.rows
            t.steps = budget.resolve_steps(t, len(rows))  # train.epochs: from the split's size
            metrics.update(budget.metrics(t, rows))
            metrics.update(max_seq_len=enc.max_len, truncated_examples=enc.truncated)
            passages = data.retention_passages(tok, e.retention_size, e.retention_tokens)
        retention: dict[str, list[float]] = {}
        if e.base or passages:
            with meter.phase("base_eval"):
                base = base_eval(cfg, model, tok, task, path, passages)
            retention["before"] = base.get("retention", [])
            if e.base:
                metrics.update(
                    base_accuracy=base["accuracy"],
                    base_task_score=base["task_score"],
                    base_eval_loss=base["eval_loss"],
                )
                if main:
                    write_items(out / BASE_ITEMS_FILE, base["items"])
                result.train["base_items"] = BASE_ITEMS_FILE
                result.train["base_quant"] = base.get("base_quant")
        model = methods.apply(model, cfg.method, t)
        metrics.update(_ledger(model))
        curve: list[list[float]] = []
        result.train["eval_loss_curve"] = curve
        watched = task.select or task.eval  # the selection split when there is one

        def hook(step: int) -> bool:
            loss = evaluate.eval_loss(model, tok, watched, t.max_seq_len, e.batch_size, sp)
            curve.append([step, loss])
            if streams is not None:
                streams.log({"periodic_eval_loss": loss}, step)
            return reporter(step, loss) if reporter is not None else False

        with meter.phase("train"):
            stats = train(
                model,
                tok,
                rows,
                data.train_collate(
                    tok.pad_token_id, packed, t.loss_logits == "answer", pack_row_len(cfg)
                ),
                cfg.method,
                t,
                str(out / "trainer"),
                hook,
                e.every,
                (streams,) if streams is not None else (),
                packed=packed,
            )
        metrics.update(stats.metrics())
        width = int((stats.ledger.get("batch_shape") or [t.max_seq_len])[-1])
        share = int(stats.ledger.get("logits_width") or width) / width
        span = attention_span(stats.ledger, t.max_seq_len)
        metrics.update(utilisation(cfg, metrics["train_tokens_per_s"], span, share))
        result.train["loss_curve"] = stats.losses
        result.train["step_clock"] = stats.clock()
        ledger_metrics, result.train["ledger"] = memory_ledger(cfg, stats)
        metrics.update(ledger_metrics)
        if stats.diverged:
            result.train.update(
                status="diverged",
                error=f"loss {stats.losses[-1]:.4g} at step "
                f"{stats.steps} (first loss {stats.losses[0]:.4g})",
            )
        else:
            with meter.phase("save"):  # first: evaluation may fold the adapter in
                metrics["adapter_bytes"] = parallel.save(model, out / "adapter", methods.save)
            with meter.phase("eval"):
                if parallel.unshard(model):  # FSDP: whole weights on every rank, no merge
                    metrics["eval_merged"] = False
                else:
                    model, metrics["eval_merged"] = methods.merged_for_eval(model)
                acc = evaluate.loss_and_accuracy(
                    model, tok, task, t.max_seq_len, evaluate.new_tokens(cfg), e.batch_size, sp
                )
                if task.select:
                    metrics["select_loss"] = evaluate.eval_loss(
                        model, tok, task.select, t.max_seq_len, e.batch_size, sp
                    )
                if passages:
                    retention["after"] = evaluate.passage_losses(model, passages, e.batch_size)
            keys = ("accuracy", "task_score", "eval_loss", "n_eval", "generated_tokens")
            keys += ("eval_batch_size",)
            metrics.update({k: acc[k] for k in keys})
            if main:
                write_items(out / ITEMS_FILE, acc["items"])
            result.train["eval_items"] = ITEMS_FILE
            result.train["samples"] = acc["samples"]
            if retention.get("after"):
                result.train["retention"] = retention
                before, after = _mean(retention["before"]), _mean(retention["after"])
                metrics.update(
                    retention_loss_before=before,
                    retention_loss_after=after,
                    retention_delta=after - before,
                )
            result.train["status"] = "pruned" if stats.pruned else "ok"
    except (torch.OutOfMemoryError, MemoryError) as exc:
        result.train.update(status="oom", error=f"{type(exc).__name__}: {str(exc)[:300]}")
    except RuntimeError as exc:
        if not is_out_of_memory(exc):
            record_failure(result, exc)
        else:
            result.train.update(status="oom", error=f"{type(exc).__name__}: {str(exc)[:300]}")
    except ConfigError as exc:
        result.train.update(status="failed", error=str(exc))
    except Exception as exc:  # any other crash is this trial's result, not the sweep's end
        record_failure(result, exc)
    metrics.update(meter.summary())
    if parallel.world() > 1:
        if result.status in ("failed", "oom"):  # the others wait in a collective: end them
            if main:
                record.save(result, out / "result.json")
            raise SystemExit(f"[rank {parallel.rank()}] {result.train.get('error')}")
        result.train["ranks"] = parallel.gather(parallel.rank_info(metrics))
        metrics.update(parallel.peaks_over(result.train["ranks"]))
    if stats is not None:
        metrics["train_s"] = stats.measured_s  # warm-up excluded; train_phase_s has it all
        metrics["train_phase_s"] = meter.phases["train"].seconds
    # the headline peak is the training phase's on CPU as on a GPU (evaluation and the base
    # model's scoring have their own batch sizes and are not what a method costs)
    metrics["peak_memory_gib"] = (
        metrics.get("peak_vram_gib")
        or metrics.get("train_peak_host_rss_gib")
        or metrics.get("peak_host_rss_gib")
    )
    metrics["memory_kind"] = "vram" if metrics.get("peak_vram_gib") else "host_rss"
    system.finish()
    if streams is not None:
        streams.close()
    if main:
        record.save(result, out / "result.json")
    return result


def summary(result: TrialResult) -> str:
    """One screen: what ran, what it cost, what it bought, where the record is."""
    m, r = result.metrics, result.run

    def f(key: str, fmt: str = "{:.3g}") -> str:
        v = m.get(key)
        return "-" if v is None else fmt.format(v)

    scorer = (r.get("config") or {}).get("dataset", {}).get("scorer", "exact")
    right = "exact match" if scorer == "exact" else f"right by {scorer}"
    lines = [
        f"trial      {r.get('label')}  model={r.get('model')}  task={r.get('dataset')}  "
        f"precision={r.get('precision')}  status={result.status}",
        f"accuracy   {f('accuracy', '{:.1%}')} {right} on {f('n_eval', '{}')} items, task score "
        f"{f('task_score', '{:.1%}')}  (untuned base {f('base_accuracy', '{:.1%}')})"
        f"  eval loss {f('eval_loss', '{:.3f}')}",
        f"retention  general-text loss {f('retention_loss_before', '{:.3f}')} -> "
        f"{f('retention_loss_after', '{:.3f}')} nats/token (+ is forgetting)",
        f"loss       {f('first_loss', '{:.3f}')} -> {f('final_loss', '{:.3f}')} over {f('steps', '{}')} steps",
        f"speed      {f('s_per_step', '{:.2f}')} s/step, {f('train_tokens_per_s', '{:.0f}')} tokens/s, "
        f"{f('train_tflops', '{:.3g}')} model TFLOP/s"
        + (f" (MFU {f('mfu', '{:.1%}')})" if m.get("mfu") is not None else ""),
        f"memory     peak host RSS {f('peak_host_rss_gib', '{:.2f}')} GiB"
        + (
            f", peak VRAM {f('peak_vram_gib', '{:.2f}')} GiB (allocator {f('peak_alloc_gib', '{:.2f}')})"
            if m.get("peak_vram_gib")
            else ""
        ),
        f"time       load {f('load_s', '{:.1f}')} s, train {f('train_phase_s', '{:.1f}')} s, "
        f"eval {f('eval_s', '{:.1f}')} s, total {f('total_s', '{:.1f}')} s",
        f"params     {f('trainable_params', '{:,}')} trainable of {f('total_params', '{:,}')} "
        f"({f('trainable_pct', '{:.2f}')}%), saved {f('adapter_bytes', '{:,}')} bytes",
    ]
    if result.train.get("error"):
        lines.append(f"error      {result.train['error']}")
    return "\n".join(lines)


def run_dir(
    trial_dir: str | Path,
    launched: float | None = None,
    pruning: tuple[str, str, int] | None = None,
    live_run: str | None = None,
) -> int:
    """Run the trial described by <trial_dir>/config.json: a sweep's trial process calls this
    with its launch time and, when the sweep prunes, (storage URL, study name, trial id)."""
    out = Path(trial_dir)
    cfg = to_config(json.loads((out / "config.json").read_text()))
    reporter = None
    if pruning is not None and parallel.is_main():  # rank 0 reports, all ranks stop
        from sweep.storage import pruning_reporter

        reporter = pruning_reporter(*pruning)
    result = run_trial(cfg, out, reporter, launched, live_run)
    if parallel.is_main():
        print(summary(result), flush=True)
    return 0


def run_rank(trial_dir: str | Path) -> int:
    """One rank of a multi-process trial (sweep.parallel): the launch's details from
    <trial dir>/launch.json, the pruning storage URL from the environment."""
    from sweep.child import isolate

    details = parallel.read_launch(Path(trial_dir))
    isolate(float(details.get("memory_limit_gib") or 0.0))
    if torch.cuda.is_available():
        torch.cuda.set_device(parallel.local_rank())
    pruning = details.get("pruning")
    url = os.environ.pop(parallel.STORAGE_ENV, None)
    prune = (url, pruning[0], int(pruning[1])) if pruning and url else None
    return run_dir(trial_dir, details.get("launched"), prune, details.get("live_run"))


def main(argv: list[str]) -> int:
    """python -m sweep.trial <trial dir>: re-run a sweep's trial by hand (also each rank of a
    multi-process trial, started by accelerate)."""
    if parallel.world() > 1:
        return run_rank(argv[0])
    return run_dir(argv[0])


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main(sys.argv[1:]))
