"""Metrics a trial derives from what it measured: parameter counts, model FLOP/s and MFU, and
the memory ledger set beside the planner's prediction for the same trial.

    python -c "from sweep.trial.derived import attention_span; print(attention_span({}, 64))"
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sweep.planning import activations, ledger, plan, recipe
from sweep.planning.arch import arch_for_model, train_flops_per_token
from sweep.settings.errors import ConfigError
from sweep.settings.schema import Config
from sweep.trial import measure, methods


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def param_counts(model: torch.nn.Module) -> dict[str, Any]:
    """Trainable and total parameters, and whether the base is 4-bit."""
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
            s.loss_tokens = int(led.get("labeled_tokens") or 0)
            saved = activations.saved_activation_bytes(
                arch_for_model(cfg.model), s, recipe.of(cfg, cuda)
            )
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
    """Tokens each position attends over, for the model FLOPs (sweep.planning.arch): the padded batch's
    width, or a packed batch's tokens per example (rows x width / examples: its examples do not
    attend to each other)."""
    shape = led.get("batch_shape") or [1, default]
    if led.get("packed") and led.get("sequences"):
        return max(1, round(int(shape[0]) * int(shape[-1]) / int(led["sequences"])))
    return int(shape[-1])


def utilisation(
    cfg: Config, tokens_per_s: float, seq_len: int, logits_share: float = 1.0
) -> dict[str, float]:
    """Achieved model TFLOP/s of the training loop (sweep.planning.arch.train_flops_per_token at the
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
