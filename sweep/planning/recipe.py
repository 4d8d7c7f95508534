"""What a trial trains, described once: `methods.py` builds it, `plan.py` predicts it.

    python -c "from sweep.settings.compose import compose; from sweep.planning import recipe; print(recipe.of(compose(['method=qlora'])))"

A recipe is the method's choices that decide memory, time and what is trained: which approach,
the adapters' rank and which linear layers of each block they adapt (PEFT's `target_modules`,
resolved here the way PEFT matches names), the quantization block, the optimizer and the
precision. Torch-free, so the planner stays pure arithmetic.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sweep.settings.compose import ConfigError
from sweep.settings.schema import Config, MethodConfig
from sweep.settings.validate import loss_impl_of, resolve_loss_impl, resolve_precision

# The seven linear layers of a Llama-style block, with the module paths transformers gives them.
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_PATHS = {n: f"model.layers.0.{'self_attn' if i < 4 else 'mlp'}.{n}" for i, n in enumerate(LINEARS)}


@dataclass(frozen=True)
class Recipe:
    """One trial's method, as trained and as planned."""

    method: str  # full | lora | qlora (config method.name)
    r: int  # adapter rank; 0 for full fine-tuning
    targets: tuple[str, ...]  # adapted linears of every block (LINEARS names); () for full
    quant_type: str | None  # nf4 | fp4 for a 4-bit base; None: unquantized
    double_quant: bool  # 4-bit base only: quantized quantization constants
    optimizer: str  # transformers' `optim` name
    precision: str  # resolved train.precision (never "auto")
    base_dtype: str = "fp32"  # the frozen (LoRA) or all (full) base weights: fp32 bf16 fp16 nf4 fp4
    trainable_dtype: str = "fp32"  # the trained weights and their optimizer master copies
    embed_dtype: str = "fp32"  # QLoRA's embeddings and output layer (a 4-bit base's other weights)
    loss: str = "full"  # resolved train.loss_impl: full | chunked | liger
    optimizer_in_backward: bool = False  # each weight updated in its backward, its gradient freed

    @property
    def kind(self) -> str:
        """full | lora | qlora: what the memory model distinguishes (qlora: a 4-bit base)."""
        if self.method == "full":
            return "full"
        return "qlora" if self.quant_type else "lora"


def targets(target_modules: Any) -> tuple[str, ...]:
    """The block linears PEFT adapts for `method.target_modules`: "all-linear" (every linear
    but the output head), a regular expression matched against the full module name, or a list
    of names matched as the module name's last part."""
    if target_modules == "all-linear":
        return LINEARS
    if isinstance(target_modules, str):
        return tuple(n for n in LINEARS if re.fullmatch(target_modules, _PATHS[n]))
    names = set(target_modules)
    return tuple(n for n in LINEARS if n in names or any(p.endswith("." + n) for p in names))


def optimizer(choice: str, cuda: bool) -> str:
    """train.optimizer as it runs, one for every approach: "auto" is torch's fused AdamW on CUDA
    and CPU alike; the QLoRA paper's paged 8-bit AdamW is an explicit choice. `cuda` is kept for
    callers that ask per device."""
    if choice != "auto":
        return choice
    return "adamw_torch_fused"


def dtypes(method: MethodConfig, precision: str, base_choice: str = "auto") -> tuple[str, str]:
    """(base, trainable) weight dtypes: precision by role. Full FT: every weight trains, in
    fp32 (master copies under *-mixed autocast) or bf16 for pure bf16. LoRA: the frozen base in
    the 16-bit compute dtype under *-mixed (train.base_dtype=auto), else as the precision, and
    fp32 adapters (PEFT upcasts them). QLoRA: a 4-bit base and fp32 adapters."""
    weights = "bf16" if precision == "bf16" else "fp32"
    if method.name == "full":
        return weights, weights
    if method.quant is not None:
        return method.quant.type, "fp32"
    if base_choice != "auto":
        return base_choice, "fp32"
    sixteen = {"bf16-mixed": "bf16", "fp16-mixed": "fp16"}
    return sixteen.get(precision, weights), "fp32"


def of_method(
    method: MethodConfig,
    precision: str,
    cuda: bool,
    optimizer_choice: str = "auto",
    base_choice: str = "auto",
    loss: str = "auto",
    optimizer_in_backward: bool = False,
) -> Recipe:
    """The recipe of a method config; precision "auto" resolves as on `cuda` (bf16 assumed),
    train.loss_impl "auto" as on one device without Liger."""
    adapters = method.name != "full"
    q = method.quant
    resolved = resolve_precision(precision, cuda_bf16=cuda)
    base, trainable = dtypes(method, resolved, base_choice)
    return Recipe(
        method=method.name,
        r=method.r if adapters else 0,
        targets=targets(method.target_modules) if adapters else (),
        quant_type=q.type if q else None,
        double_quant=bool(q and q.double_quant),
        optimizer=optimizer(optimizer_choice, cuda),
        precision=resolved,
        base_dtype=base,
        trainable_dtype=trainable,
        embed_dtype=embed_dtype(method, resolved),
        loss=resolve_loss_impl(loss),
        optimizer_in_backward=optimizer_in_backward,
    )


def embed_dtype(method: MethodConfig, precision: str) -> str:
    """A 4-bit base's embeddings and output layer: the compute dtype (the QLoRA reference's
    cast back after k-bit preparation), or fp32 with method.kbit_fp32 (PEFT's preparation)."""
    if method.quant is None or method.kbit_fp32:
        return "fp32"
    return {"bf16-mixed": "bf16", "fp16-mixed": "fp16", "bf16": "bf16"}.get(precision, "fp32")


def of(cfg: Config, cuda: bool | None = None) -> Recipe:
    """The recipe of a composed trial config (`cuda`: this machine's when None)."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    t = cfg.train
    return of_method(
        cfg.method, t.precision, cuda, t.optimizer, t.base_dtype, loss_impl_of(t),
        t.optimizer_in_backward,
    )  # fmt: skip


def require_targets(recipe: Recipe, target_modules: Sequence[str] | str) -> None:
    """One line when an adapter method targets none of the block linears the planner models."""
    if recipe.method != "full" and not recipe.targets:
        raise ConfigError(
            f"method.target_modules={target_modules!r} matches none of {', '.join(LINEARS)}; "
            "the planner models adapters on these Llama-style block linears"
        )
