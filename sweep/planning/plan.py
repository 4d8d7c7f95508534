"""Memory planner: predicted peak training memory per approach, before anything is downloaded.

    python -m sweep plan llama2_7b batch_size=4 seq_len=512   # make plan MODEL=llama2_7b ARGS="..."

Pure arithmetic from an architecture description (vocab, hidden, intermediate, layers, heads,
kv_heads, tie_embeddings): no weights, no GPU, no torch model. For full fine-tuning, LoRA at each
rank and QLoRA it predicts the peak in five parts, and the smallest GPU class in
conf/config.yaml (`report.gpus`) that holds it. Assumptions (each one is a setting or a note):

- weights: fp32 and the *-mixed precisions keep fp32 weights (4 bytes; autocast computes in 16
  bits), bf16 keeps 2 bytes. QLoRA: the seven linear layers of each block in NF4, 0.5 byte per
  weight plus one fp32 absmax per 64 weights (with double quantization: one 8-bit absmax per 64
  and one fp32 per 256 of those); embeddings, lm_head and norms stay unquantized and peft's
  `prepare_model_for_kbit_training` upcasts them to fp32. LoRA adapters: r*(in+out) per targeted
  linear (all-linear: q, k, v, o, gate, up, down; not lm_head), fp32 (peft upcasts adapters).
- gradients: one per trainable parameter in its dtype (fp32; bf16 for full FT in pure bf16).
- optimizer: AdamW keeps 2 states per trainable parameter in its dtype; torch's default (foreach)
  AdamW also allocates one parameter-sized buffer during the step ("step" below). 8-bit AdamW
  (bitsandbytes, paged on CUDA for QLoRA) keeps 2 x 1 byte + blockwise absmax per 256, and fp32
  states for tensors under 4096 elements. `optimizer=auto` is what the harness uses on CUDA:
  AdamW, and paged 8-bit AdamW for QLoRA.
- activations: `layer_bytes_per_token` (what one Llama block of transformers saves for backward,
  per precision and approach, checked tensor for tensor against torch's saved-tensor hooks in
  tests/planning/test_plan.py; batches are padded, as the harness pads them), times tokens and blocks,
  plus in *-mixed the 16-bit weight copies autocast keeps (`weight_copy_bytes`) and the loss
  (`loss_bytes`). Gradient checkpointing keeps each block's input and recomputes one block.
- overhead: the CUDA context (`cuda_context_gib`) plus `fragmentation` times everything else.
- total = weights + optimizer + max(activations + early gradients, grads + step) + overhead: the
  peak is at the start of the backward (every activation held, the first gradients made: the
  lm_head's for full FT, all of them for adapters) or at the optimizer step (all gradients, the
  step buffer, activations freed). In between, each block frees its activations as its
  gradients arrive.
Adapters on a subset of the block's linears (`method.target_modules`, resolved in
sweep/planning/recipe.py as PEFT resolves it): weights, gradients, optimizer and FLOPs count exactly the
adapted ones, and so do the adapters' own saved inputs and A outputs; the rest of a block's
activations keep the all-linear shape (checked tensor for tensor), an upper bound.
Not modelled: biases (Qwen2 has q/k/v biases: under 0.1%), mixture-of-experts, data-parallel
sharding, the evaluation's generation cache.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace

import pandas as pd
from omegaconf import OmegaConf

from sweep.planning import recipe
from sweep.planning.activations import activation_bytes
from sweep.planning.arch import (
    Arch,
    Shape,
    arch_for_model,
    linear_params,
    other_params,
    total_params,
    trainable_shapes,
    trainable_tensors,
)
from sweep.planning.assumptions import DTYPE_BYTES, GIB, Settings, fsdp
from sweep.planning.recipe import Recipe
from sweep.settings.compose import CONF_DIR, method_config
from sweep.settings.schema import AUTO_MAX_LEN, Config, GpuClass
from sweep.settings.validate import resolve_loss_impl

ATTENTIONS = ("sdpa", "eager")
LEAN_OPTIMIZER = "paged_adamw_8bit"  # the lean full FT row: 8-bit states, paged to the host
NF4_BLOCK = 64  # weights per absmax (bitsandbytes 4-bit default)
DQ_BLOCK = 256  # absmaxes per second-level fp32 constant (double quantization)
ADAM8_BLOCK = 256  # elements per absmax in bitsandbytes' blockwise 8-bit optimizer states
ADAM8_MIN = 4096  # bitsandbytes keeps 32-bit states for tensors smaller than this


# ---------------------------------------------------------------- bytes per component


def weight_bytes(arch: Arch, rec: Recipe) -> float:
    """Base weights in the recipe's base dtype, plus fp32 LoRA adapters. QLoRA: NF4 linears,
    fp32 norms, and the embeddings and output layer in the recipe's embed dtype (the compute
    dtype; fp32 with method.kbit_fp32)."""
    adapters = 0 if rec.kind == "full" else 4 * sum(trainable_tensors(arch, rec))
    if rec.kind == "qlora":
        nf4 = nf4_bytes(linear_params(arch), rec.double_quant)
        norms = (2 * arch.layers + 1) * arch.hidden
        embeddings = DTYPE_BYTES[rec.embed_dtype] * (other_params(arch) - norms)
        return nf4 + embeddings + 4 * norms + adapters
    return DTYPE_BYTES[rec.base_dtype] * total_params(arch) + adapters


def nf4_bytes(n: int, double_quant: bool = True) -> float:
    """4-bit NF4 weights plus their quantization constants (bitsandbytes layout)."""
    blocks = n / NF4_BLOCK
    constants = blocks * 1 + blocks / DQ_BLOCK * 4 if double_quant else blocks * 4
    return n / 2 + constants


def trainable_bytes(rec: Recipe) -> int:
    """Bytes per trainable parameter (and per gradient): adapters are always fp32."""
    return DTYPE_BYTES[rec.trainable_dtype]


def optimizer_bytes(shapes: list[Shape], optimizer: str, dtype_bytes: int) -> tuple[float, float]:
    """(states, step buffer) of the optimizer over these trainable tensors.

    AdamW keeps two states per weight in the weight's dtype; torch's foreach AdamW
    (adamw_torch) also allocates a parameter-sized buffer during the step, the fused one and
    bitsandbytes' do not. bitsandbytes 8-bit: two uint8 states + blockwise absmax
    (`adam8_state_bytes`); its paged 32-bit: two fp32 states (paged to host memory only under
    pressure). Adafactor (transformers', beta1 None): fp32 row and column second-moment factors
    per matrix, a full fp32 one per vector; during the step about two temporaries the size of
    the largest tensor (it updates one tensor at a time)."""
    n = sum(math.prod(s) for s in shapes)
    if optimizer.endswith("adamw_8bit"):
        return sum(adam8_state_bytes(math.prod(s)) for s in shapes), 0.0
    if optimizer == "paged_adamw_32bit":
        return 2 * 4 * n, 0.0
    if optimizer == "adafactor":
        states = sum(4 * (sum(s[:-1]) + s[-1]) if len(s) > 1 else 4 * s[0] for s in shapes)
        return states, 2 * 4 * max((math.prod(s) for s in shapes), default=0)
    step = dtype_bytes * n if optimizer == "adamw_torch" else 0.0  # foreach: sqrt(v) buffer
    return 2 * dtype_bytes * n, step


def adam8_state_bytes(n: int) -> float:
    """bitsandbytes 8-bit AdamW: two uint8 states + an fp32 absmax per 256; fp32 when small."""
    if n < ADAM8_MIN:
        return 2 * 4 * n
    return 2 * (n + 4 * -(-n // ADAM8_BLOCK))


# ---------------------------------------------------------------- the plan


@dataclass
class Row:
    """One approach's predicted peak, in GiB."""

    approach: str
    rank: int | None
    base: str  # dtype of the base weights (precision by role; QLoRA: nf4)
    optimizer: str
    trainable_params: int
    weights_gib: float
    grads_gib: float
    optimizer_gib: float  # the states that stay on the GPU
    paged_gib: float  # paged optimizer states: may live in host memory (not in total_gib)
    activations_gib: float
    step_gib: float
    overhead_gib: float
    total_gib: float
    gpu: str


def plan_row(arch: Arch, s: Settings, rec: Recipe, gpus: list[GpuClass]) -> Row:
    """Predicted peak of one recipe on one device: the five parts, their total and the GPU that
    fits it. Over s.gpus devices each holds its share of the batch; under FSDP also its share
    of weights, gradients and optimizer states (sweep.planning.plan.per_device)."""
    tensors = trainable_tensors(arch, rec)
    dtype_bytes = trainable_bytes(rec)
    weights = weight_bytes(arch, rec)
    grads = dtype_bytes * sum(tensors)
    shapes = trainable_shapes(arch, rec)
    states, step = optimizer_bytes(shapes, rec.optimizer, dtype_bytes)
    paged = paged_bytes(shapes, rec.optimizer, dtype_bytes)
    states -= paged
    dev = replace(s, batch_size=max(1, s.batch_size // max(1, s.gpus)))
    acts = activation_bytes(arch, dev, rec)
    early = early_grads(arch, rec, grads, dtype_bytes)
    if rec.optimizer_in_backward:  # each gradient freed once its weight is updated
        grads = early = dtype_bytes * max(tensors, default=0)
        step = step / max(1, len(tensors))  # the step runs one weight at a time
    sharded = fsdp(s, rec)
    weights, grads, states, step, early = per_device(
        arch, s.gpus, sharded, weights, grads, states, step, early
    )
    allocated = weights + states + max(acts + early, grads + step)
    overhead = s.cuda_context_gib * GIB + s.fragmentation * allocated
    total = (allocated + overhead) / GIB
    return Row(
        approach=rec.kind + (" (in backward)" if rec.optimizer_in_backward else ""),
        rank=None if rec.kind == "full" else rec.r,
        base=rec.base_dtype,
        optimizer=rec.optimizer,
        trainable_params=sum(tensors),
        weights_gib=weights / GIB,
        grads_gib=grads / GIB,
        optimizer_gib=states / GIB,
        paged_gib=paged / GIB,
        activations_gib=acts / GIB,
        step_gib=step / GIB,
        overhead_gib=overhead / GIB,
        total_gib=total,
        gpu=smallest_gpu(total, gpus) + paged_note(total, paged / GIB, gpus),
    )


def paged_note(total_gib: float, paged_gib: float, gpus: Iterable[GpuClass]) -> str:
    """' (states paged to host)' where the paged states would not fit beside the rest."""
    fit = gpu_fit(total_gib, gpus)
    return " (states paged to host)" if fit and total_gib + paged_gib > fit.memory_gib else ""


def per_device(
    arch: Arch,
    gpus: int,
    sharded: bool,
    weights: float,
    grads: float,
    states: float,
    step: float,
    early: float,
) -> tuple[float, float, float, float, float]:
    """One device's weights, gradients, optimizer states and step of a trial over `gpus`.
    DDP keeps a whole replica and adds its gradient buckets (a second copy of the gradients,
    torch's default). FSDP divides the four by the devices and adds the one decoder layer it
    gathers whole at a time, twice (the next one is prefetched); the first gradients are then
    sharded too."""
    n = max(1, gpus)
    if n == 1:
        return weights, grads, states, step, early
    if not sharded:
        return weights, 2 * grads, states, step, early + grads
    layer = weights / (arch.layers + 2)  # a block's share (embeddings and head count as one each)
    return weights / n + 2 * layer, grads / n, states / n, step / n, early / n


PAGED_MIN = 100_000  # bitsandbytes pages the states of tensors of at least this many elements


def paged_bytes(shapes: list[Shape], optimizer: str, dtype_bytes: int) -> float:
    """The part of a paged optimizer's states in CUDA managed memory (bitsandbytes pages the
    states of tensors of 1e5 elements or more): it may live in host memory, outside torch's
    allocator, and is shown apart from what must stay on the GPU. 0 for other optimizers."""
    if not optimizer.startswith("paged_"):
        return 0.0
    large = [s for s in shapes if math.prod(s) >= PAGED_MIN]
    return optimizer_bytes(large, optimizer, dtype_bytes)[0]


def early_grads(arch: Arch, rec: Recipe, grads: float, dtype_bytes: int) -> float:
    """Gradients that exist while every activation is still held: the lm_head's, the first
    computed (full FT), or the last block's adapters' (each block's come as its activations go)."""
    return dtype_bytes * arch.vocab * arch.hidden if rec.kind == "full" else grads / arch.layers


def plan_recipes(s: Settings) -> list[Recipe]:
    """Full FT, LoRA at each rank, QLoRA: the shipped conf/method/ configs as a trial on a bf16
    CUDA GPU builds them, with the plan's overrides (precision, optimizer, targets, quant)."""

    def one(name: str, r: int) -> Recipe:
        m = method_config(name)
        m.r = r
        if s.target_modules is not None:
            m.target_modules = s.target_modules
        if m.quant is not None and s.double_quant is not None:
            m.quant.double_quant = s.double_quant
        m.kbit_fp32 = s.kbit_fp32
        fsdp_ = s.gpus > 1 and s.parallel == "fsdp"
        loss = resolve_loss_impl(s.loss_impl, fsdp=fsdp_)
        rec = recipe.of_method(m, s.precision, True, "auto", s.base_dtype, loss)
        recipe.require_targets(rec, m.target_modules)
        return rec if s.optimizer == "auto" else replace(rec, optimizer=s.optimizer)

    recipes = [one("full", 0)] + [one("lora", r) for r in s.ranks] + [one("qlora", s.qlora_rank)]
    if s.lean_full and s.gpus == 1:  # full FT as lean as it goes on one device
        lean = replace(recipes[0], optimizer=LEAN_OPTIMIZER, optimizer_in_backward=True)
        recipes.insert(1, lean)
    return recipes


def plan(arch: Arch, s: Settings, gpus: list[GpuClass]) -> pd.DataFrame:
    """One row per approach: full FT, LoRA at each rank, QLoRA."""
    table = pd.DataFrame([asdict(plan_row(arch, s, rec, gpus)) for rec in plan_recipes(s)])
    table["rank"] = table["rank"].astype("Int64")  # integers, <NA> for full FT
    return table


def trial_settings(cfg: Config, cuda: bool, seq_len: int | None = None) -> Settings:
    """A trial's own batch, max_seq_len (or a measured batch width) and checkpointing; the CUDA
    context only on CUDA. Its method, precision and optimizer are its recipe (sweep.planning.recipe)."""
    t = cfg.train
    return Settings(
        batch_size=t.batch_size,
        seq_len=seq_len or t.max_seq_len or AUTO_MAX_LEN,  # 0 (auto): at most the cap
        precision=t.precision,
        gradient_checkpointing=t.gradient_checkpointing,
        attention="eager" if cfg.model.attn_implementation == "eager" else "sdpa",
        padded=cfg.model.attn_implementation != "flash_attention_2",  # flash: no mask kept
        cuda_context_gib=Settings.cuda_context_gib if cuda else 0.0,
        gpus=t.gpus,
        parallel=t.parallel,
        lean_full=False,
    )


def predict_trial(cfg: Config, cuda: bool, gpus: list[GpuClass] | None = None) -> Row:
    """The planner's prediction for one trial: its recipe (method, targets, quantization,
    optimizer, precision, exactly as sweep.trial.methods builds it), batch and sequence length."""
    rec = recipe.of(cfg, cuda)
    recipe.require_targets(rec, cfg.method.target_modules)
    return plan_row(arch_for_model(cfg.model), trial_settings(cfg, cuda), rec, gpus or [])


def plan_metrics(row: Row) -> dict[str, float]:
    """`plan_<part>_gib` metrics for a result record."""
    parts = ("weights", "grads", "optimizer", "activations", "step", "overhead", "total")
    return {f"plan_{p}_gib": float(getattr(row, f"{p}_gib")) for p in parts}


def gpu_fit(peak_gib: float | None, gpus: Iterable[GpuClass]) -> GpuClass | None:
    """The smallest (then cheapest) GPU class holding the peak; None if none does or no peak."""
    if peak_gib is None or math.isnan(peak_gib):
        return None
    fits = [g for g in gpus if g.memory_gib >= peak_gib]
    return min(fits, key=lambda g: (g.memory_gib, g.usd_per_hour)) if fits else None


def smallest_gpu(total_gib: float, gpus: Iterable[GpuClass]) -> str:
    """Name of the GPU class that fits (`gpu_fit`), or "none listed"."""
    fit = gpu_fit(total_gib, gpus)
    return fit.name if fit else "none listed"


def load_gpus() -> list[GpuClass]:
    """The GPU classes of conf/config.yaml (`report.gpus`)."""
    node = OmegaConf.load(CONF_DIR / "config.yaml").report.gpus
    return [GpuClass(**g) for g in OmegaConf.to_container(node)]  # type: ignore[arg-type,union-attr]
