"""Fine-tuning methods: full, LoRA and QLoRA (LoRA on a 4-bit NF4 base).

    python -m sweep trial method=qlora method.r=16

QLoRA is LoRA plus a quantization block: `load_kwargs()` asks transformers for the 4-bit base
(bitsandbytes NF4, double quantization, compute dtype from train.precision), `apply()` runs
PEFT's k-bit preparation and then the same LoRA as `lora`. Precision is one key applied the same
way to every method: `dtype_for()` gives the weight dtype, `trainer_flags()` the autocast flags.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from sweep.planning import recipe
from sweep.settings.schema import MethodConfig, TrainConfig
from sweep.settings.validate import loss_impl_of
from sweep.trial import loss

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def dtype_for(precision: str) -> torch.dtype:
    """Dtype the (non-quantized) weights are loaded in for inference and the 4-bit base's
    other weights."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


def load_dtype(rec: recipe.Recipe) -> torch.dtype:
    """Dtype a trial loads its model in: the recipe's base weights (precision by role); a
    4-bit base loads its other weights (embeddings, output layer) in their recipe dtype."""
    if rec.quant_type is not None:
        return TORCH_DTYPES[rec.embed_dtype]
    return TORCH_DTYPES.get(rec.base_dtype, dtype_for(rec.precision))


def compute_dtype(precision: str) -> torch.dtype:
    """Dtype of the matmuls: QLoRA's bnb_4bit_compute_dtype follows the same precision key."""
    if precision.startswith("bf16"):
        return torch.bfloat16
    return torch.float16 if precision == "fp16-mixed" else torch.float32


def trainer_flags(precision: str) -> dict[str, bool]:
    """Autocast flags for transformers' TrainingArguments."""
    return {"bf16": precision == "bf16-mixed", "fp16": precision == "fp16-mixed"}


def training_args(t: TrainConfig, lr: float, steps: int) -> dict[str, Any]:
    """The TrainingArguments a harness trial and its Trainer-based peers (TRL's SFTConfig)
    share: steps, batch, accumulation, learning rate, warm-up, weight decay, optimizer, seeds,
    precision, device; nothing saved or reported. One place, so the peer matches by construction."""
    return {
        "max_steps": steps,
        "per_device_train_batch_size": t.batch_size // t.gpus,  # train.batch_size: global
        "gradient_accumulation_steps": t.grad_accum,
        "learning_rate": lr,
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm,
        "warmup_steps": t.warmup_steps,
        "optim": optimizer_name(t),
        "seed": t.seed,
        "data_seed": t.seed,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": not torch.cuda.is_available(),
        **trainer_flags(t.precision),
        **kernel_args(t),
        **parallel_args(t),
    }


def kernel_args(t: TrainConfig) -> dict[str, Any]:
    """The kernel switches (measured in `make bench`, part kernels): torch.compile of the model,
    and Liger's fused Triton kernels (GPU), both through Trainer's own arguments."""
    out: dict[str, Any] = {}
    if t.compile:
        out["torch_compile"] = True
    if t.liger:
        out["use_liger_kernel"] = True
    return out


def parallel_args(t: TrainConfig) -> dict[str, Any]:
    """A trial over train.gpus processes: FSDP (weights, gradients and optimizer states sharded
    per decoder layer, the model's own `_no_split_modules`) or DDP (replicas; nothing to set).
    The collective time-out covers the base model's scoring and evaluation, which every rank
    runs before and after the collectives of training."""
    if t.gpus <= 1:
        return {}
    out: dict[str, Any] = {"ddp_timeout": 4 * 3600}
    if t.parallel == "fsdp":
        out.update(fsdp="full_shard auto_wrap", fsdp_config={"version": 2})
    else:  # every trainable weight takes part in each step: no search for unused ones
        out.update(ddp_find_unused_parameters=False)
    return out


def load_kwargs(method: MethodConfig, precision: str) -> dict[str, Any]:
    """Extra from_pretrained kwargs a method needs at load time (the 4-bit base for QLoRA)."""
    if method.quant is None:
        return {}
    from transformers import BitsAndBytesConfig

    q = method.quant
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=q.type,
            bnb_4bit_use_double_quant=q.double_quant,
            bnb_4bit_compute_dtype=compute_dtype(precision),
        )
    }


def lora_config(method: MethodConfig) -> Any:
    from peft import LoraConfig

    targets = method.target_modules
    targets = targets if isinstance(targets, str) else list(targets)
    return LoraConfig(
        r=method.r,
        lora_alpha=method.lora_alpha,
        lora_dropout=method.dropout,
        target_modules=targets,
        use_rslora=method.rslora,
        bias="none",
        task_type="CAUSAL_LM",
    )


def apply(model: torch.nn.Module, method: MethodConfig, train: TrainConfig) -> torch.nn.Module:
    """Make `model` trainable the way `method` says; returns the model to train."""
    gc = train.gradient_checkpointing
    gc_kwargs = {"use_reentrant": False}
    model.config.use_cache = False
    if loss_impl_of(train) == "chunked":  # before PEFT wraps it: the causal LM's own forward
        loss.use_chunked(model)
    if method.name == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        if gc:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
        return model
    from peft import get_peft_model

    if method.quant is not None:
        keep_4bit_trainable(model)
        prepare_4bit(model, fp32_all=method.kbit_fp32, autocast=train.precision.endswith("-mixed"))
    if gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
        model.enable_input_require_grads()
    return get_peft_model(model, lora_config(method))


def prepare_4bit(model: torch.nn.Module, fp32_all: bool, autocast: bool = True) -> None:
    """k-bit preparation's useful steps: freeze the base. Then, as the QLoRA reference does,
    the embeddings and output layer left in the compute dtype they were loaded in and, under
    autocast, the norms in fp32 (without autocast they stay in the compute dtype, or the output
    layer would get fp32 input); or with `fp32_all` (method.kbit_fp32) every weight that is not
    4-bit in fp32, as PEFT's `prepare_model_for_kbit_training` does (twice the embeddings'
    memory). Gradient checkpointing's input gradients are set up by `apply`, as for LoRA."""
    for p in model.parameters():
        p.requires_grad_(False)
    for module in model.modules():
        if fp32_all or (autocast and "norm" in type(module).__name__.lower()):
            for p in module.parameters(recurse=False):
                if p.is_floating_point() and type(p).__name__ != "Params4bit":
                    p.data = p.data.float()


def keep_4bit_trainable(model: torch.nn.Module) -> None:
    """Undo and disable bitsandbytes' CPU inference repacking of 4-bit weights.

    bitsandbytes 0.50 on CPUs with AVX512-BF16 repacks a Linear4bit weight the first time it runs
    in eval mode without grad (the base-model evaluation, or a periodic eval), and its backward
    then dequantizes the repacked bytes as if they were not: the input gradients are garbage and
    QLoRA silently stops learning (tests/trial/test_methods.py compares the gradients with a
    dequantized reference). So: unpack, and keep the training-safe layout.
    """
    import bitsandbytes as bnb
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            w = module.weight
            if getattr(w.quant_state, "packing_format_for_cpu", False):
                w.data, w.quant_state = _convert_weight_packed_for_cpu_inverse(
                    w.data, w.quant_state
                )
            module.support_avx512bf16_for_cpu = False


def optimizer_name(train: TrainConfig) -> str:
    """train.optimizer on this machine, as the planner assumes it (sweep.planning.recipe.optimizer)."""
    return recipe.optimizer(train.optimizer, torch.cuda.is_available())


def _logical_numel(p: torch.nn.Parameter) -> int:
    """Elements a parameter stands for: a packed 4-bit weight counts its unpacked shape."""
    qs = getattr(p, "quant_state", None)
    return math.prod(qs.shape) if qs is not None else p.numel()


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; shared (tied) tensors count once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = _logical_numel(p)
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


def is_4bit(model: torch.nn.Module) -> bool:
    """True when the base's linear weights are bitsandbytes 4-bit parameters."""
    import bitsandbytes as bnb

    return any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


def save(model: torch.nn.Module, out_dir: Path) -> int:
    """Save what the method produced (adapter only for LoRA/QLoRA, full checkpoint otherwise)."""
    model.save_pretrained(out_dir)
    return sum(f.stat().st_size for f in Path(out_dir).rglob("*") if f.is_file())


def merged_for_eval(model: torch.nn.Module) -> tuple[torch.nn.Module, bool]:
    """The model to evaluate after training and saving: a LoRA adapter on fp32 base weights is
    folded into them (PEFT merge_and_unload), the same function up to fp32 rounding (greedy
    answers identical, `make inference`), and faster on CPU than the adapter
    kept separate. A 4-bit base (QLoRA) or 16-bit weights keep the adapter separate: folding
    would round it. Returns (model, merged)."""
    if not hasattr(model, "merge_and_unload") or is_4bit(model):
        return model, False
    if any(p.dtype != torch.float32 for p in model.parameters()):
        return model, False
    return model.merge_and_unload(), True
