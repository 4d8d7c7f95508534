"""Every metric a trial records: its name, unit, direction and meaning, written once.

    python -c "from sweep.settings.metrics import METRICS; print(METRICS['peak_memory_gib'])"

The record (`train.metrics` of result.json), MLflow, the report's frame, the Pareto pairs, the
sweep's Optuna objectives and the bench read names and directions from here; a name that is not
here is a bug (tests/settings/test_metrics.py checks every record a trial writes and every metric name the
code reads). Units: GiB and bytes are binary (1 GiB = 1024^3 bytes), seconds are wall clock.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    unit: str  # fraction, GiB, bytes, s, tokens/s, TFLOP/s, nats/token, count, flag, text
    higher_is_better: bool | None = None  # None: a description, not a figure of merit
    objective: bool = False  # allowed in sweep.objectives
    help: str = ""

    @property
    def direction(self) -> str:
        """Optuna's word for the direction: maximize or minimize."""
        return "maximize" if self.higher_is_better else "minimize"


def _m(unit: str, better: bool | None = None, help: str = "", objective: bool = False) -> Metric:
    return Metric(unit, better, objective, help)


HIGHER, LOWER = True, False

METRICS: dict[str, Metric] = {
    # accuracy on the held-out eval items (sweep.trial.evaluate)
    "accuracy": _m(
        "fraction", HIGHER, "answered right: exact match of the first line, or dataset.scorer", True
    ),
    "task_score": _m("fraction", HIGHER, "mean of the task's own scorer (partial credit)"),
    "n_eval": _m("count", None, "eval items scored"),
    "generated_tokens": _m("count", None, "tokens generated over the eval items"),
    "eval_loss": _m("nats/token", LOWER, "answer-token loss on the eval items", True),
    "select_loss": _m("nats/token", LOWER, "loss on the selection split (eval.select_size)", True),
    "eval_merged": _m("flag", None, "LoRA folded into the weights for the eval"),
    "eval_batch_size": _m("count", None, "eval batch after any out-of-memory back-off"),
    "base_accuracy": _m("fraction", HIGHER, "the untuned base model's accuracy, same items"),
    "base_task_score": _m("fraction", HIGHER, "the untuned base model's task score"),
    "base_eval_loss": _m("nats/token", LOWER, "the untuned base model's eval loss"),
    "base_quant": _m("text", None, "quantization of the base evaluated as the zero line"),
    "base_4bit": _m("flag", None, "the trained model's base weights are 4-bit"),
    # forgetting: general-text loss before and after training (eval.retention_*)
    "retention_loss_before": _m("nats/token", LOWER, "general-text loss of the base"),
    "retention_loss_after": _m("nats/token", LOWER, "general-text loss after training"),
    "retention_delta": _m("nats/token", LOWER, "forgetting: after minus before"),
    # memory (sweep.trial.measure, sweep.planning.ledger, sweep.planning.plan)
    "peak_memory_gib": _m(
        "GiB", LOWER, "headline peak: VRAM on a GPU, train-phase RSS on CPU", True
    ),
    "memory_kind": _m("text", None, "vram or host_rss: what peak_memory_gib is"),
    "peak_vram_gib": _m("GiB", LOWER, "NVML peak of the trial process"),
    "vram_source": _m(
        "text", None, "process: NVML's figure for the trial's PID; device: used less before"
    ),
    "peak_alloc_gib": _m("GiB", LOWER, "torch allocator peak allocated"),
    "peak_reserved_gib": _m("GiB", LOWER, "torch allocator peak reserved"),
    "cuda_context_gib": _m("GiB", LOWER, "NVML minus reserved: the CUDA context and libraries"),
    "peak_host_rss_gib": _m("GiB", LOWER, "peak resident memory of the trial process"),
    "train_peak_host_rss_gib": _m("GiB", LOWER, "peak resident memory in the train phase"),
    "ledger_params_bytes": _m("bytes", LOWER, "parameters, by the allocator ledger"),
    "ledger_grads_bytes": _m("bytes", LOWER, "gradients, by the allocator ledger"),
    "ledger_optimizer_bytes": _m("bytes", LOWER, "optimizer states, by the allocator ledger"),
    "ledger_activations_bytes": _m("bytes", LOWER, "saved activations, by the ledger"),
    **{
        f"plan_{part}_gib": _m("GiB", LOWER, f"planner's predicted {part}")
        for part in (
            "weights",
            "grads",
            "optimizer",
            "activations",
            "saved_activations",
            "step",
            "overhead",
            "total",
        )
    },
    # time (sweep.trial.measure phases, sweep.trial.train)
    "train_s": _m("s", LOWER, "training loop, measurement warm-up steps excluded", True),
    "train_phase_s": _m("s", LOWER, "the whole train phase, warm-up included"),
    "total_s": _m("s", LOWER, "the trial process, start to end"),
    "trial_wall_s": _m("s", LOWER, "the trial as the sweep saw it, launch to exit"),
    "startup_s": _m("s", LOWER, "process start and imports, before the first phase"),
    "load_s": _m("s", LOWER, "model load"),
    "data_s": _m("s", LOWER, "dataset build and tokenization"),
    "eval_s": _m("s", LOWER, "the trained model's evaluation"),
    "base_eval_s": _m("s", LOWER, "the untuned base model's evaluation (0 when cached)"),
    "save_s": _m("s", LOWER, "writing the adapter or checkpoint"),
    "checkpoints": _m("count", None, "checkpoints saved during training (train.save_every*)"),
    "checkpoint_s": _m("s", LOWER, "saving them, in all (not in train_s)"),
    "checkpoint_bytes": _m("bytes", LOWER, "the last checkpoint's size on disk"),
    "resumed_from_step": _m("count", None, "the checkpoint's step a resumed trial went on from"),
    "lost_steps": _m("count", LOWER, "steps an interrupted run did after its last checkpoint"),
    "lost_s": _m("s", LOWER, "their time, done again (not in train_s)"),
    "s_per_step": _m("s", LOWER, "mean step time after warm-up"),
    "s_per_step_median": _m("s", LOWER, "median step time after warm-up"),
    # throughput
    "train_tokens_per_s": _m("tokens/s", HIGHER, "non-padding tokens trained per second", True),
    "train_tflops": _m(
        "TFLOP/s", HIGHER, "achieved model FLOP/s (sweep.planning.plan FLOPs per token)"
    ),
    "mfu": _m("fraction", HIGHER, "train_tflops over the GPU's dense peak"),
    # what was trained
    "steps": _m("count", None, "optimizer steps taken"),
    "effective_batch": _m("count", None, "examples per optimizer step (batch x grad_accum)"),
    "train_examples": _m("count", None, "examples in the train split"),
    "dataset_tokens": _m("count", None, "tokens in the train split (after truncation)"),
    "epochs_covered": _m("count", None, "passes over the train split the steps made"),
    "tokens_seen": _m("count", None, "non-padding tokens trained on"),
    "max_seq_len": _m("count", None, "tokens per example, at most (train.max_seq_len=0: p99)"),
    "logits_share": _m("fraction", None, "share of a batch's positions the output layer ran on"),
    "truncated_examples": _m("count", LOWER, "train examples cut to max_seq_len"),
    "trainable_params": _m("count", LOWER, "parameters with gradients"),
    "total_params": _m("count", None, "parameters of the model (4-bit counted unpacked)"),
    "trainable_pct": _m("fraction", None, "trainable over total, in percent"),
    "adapter_bytes": _m("bytes", LOWER, "size of what the trial saved (adapter or checkpoint)"),
    "first_loss": _m("nats/token", None, "training loss at the first step"),
    "final_loss": _m("nats/token", LOWER, "training loss at the last step"),
}

# What a live trial streams per optimizer step to its MLflow run (sweep.trial.stream), not records.
STEP_METRICS: dict[str, Metric] = {
    "train_loss": _m("nats/token", LOWER, "training loss of the step"),
    "learning_rate": _m("lr", None, "the scheduler's learning rate"),
    "grad_norm": _m("norm", None, "gradient norm before clipping"),
    "step_s": _m("s", LOWER, "the step's wall time"),
    "step_tokens_per_s": _m("tokens/s", HIGHER, "non-padding tokens per second in the step"),
    "memory_gib": _m("GiB", LOWER, "CUDA allocated, else the process's resident memory"),
    "periodic_eval_loss": _m("nats/token", LOWER, "eval loss every eval.every steps"),
}

HIGHER_IS_BETTER = {
    k: m.higher_is_better for k, m in METRICS.items() if m.higher_is_better is not None
}
OBJECTIVES = {k: m.direction for k, m in METRICS.items() if m.objective}
# The Pareto pairs of the report: accuracy against each resource.
PARETO_PAIRS = (("accuracy", "peak_memory_gib"), ("accuracy", "train_s"))


def check(names: object) -> None:
    """Raise KeyError naming the metrics that are not in METRICS (misspelled or new)."""
    unknown = sorted(set(names) - set(METRICS))  # type: ignore[call-overload]
    if unknown:
        raise KeyError(f"metrics not in sweep.settings.metrics.METRICS: {', '.join(unknown)}")
