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
  tests/test_plan.py; batches are padded, as the harness pads them), times tokens and blocks,
  plus in *-mixed the 16-bit weight copies autocast keeps (`weight_copy_bytes`) and the loss
  (`loss_bytes`). Gradient checkpointing keeps each block's input and recomputes one block.
- overhead: the CUDA context (`cuda_context_gib`) plus `fragmentation` times everything else.
- total = weights + optimizer + max(activations + early gradients, grads + step) + overhead: the
  peak is at the start of the backward (every activation held, the first gradients made: the
  lm_head's for full FT, all of them for adapters) or at the optimizer step (all gradients, the
  step buffer, activations freed). In between, each block frees its activations as its
  gradients arrive.
Not modelled: biases (Qwen2 has q/k/v biases: under 0.1%), mixture-of-experts, data-parallel
sharding, the evaluation's generation cache.
"""

from __future__ import annotations

import difflib
import socket
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pandas as pd
import yaml
from omegaconf import OmegaConf

from sweep.config import CONF_DIR, Config, ConfigError, GpuClass, ModelConfig

GIB = 1024**3
PRECISIONS = ("auto", "fp32", "bf16", "bf16-mixed", "fp16-mixed")
OPTIMIZERS = ("auto", "adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit")
ATTENTIONS = ("sdpa", "eager")
NF4_BLOCK = 64  # weights per absmax (bitsandbytes 4-bit default)
DQ_BLOCK = 256  # absmaxes per second-level fp32 constant (double quantization)
ADAM8_BLOCK = 256  # elements per absmax in bitsandbytes' blockwise 8-bit optimizer states
ADAM8_MIN = 4096  # bitsandbytes keeps 32-bit states for tensors smaller than this
TINY_VOCAB = 102  # sweep.models.char_tokenizer(): 5 specials + 97 printable ASCII characters


@dataclass(frozen=True)
class Arch:
    """A Llama-style decoder: what the planner needs to know about a model."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    tie_embeddings: bool = False
    head_dim: int | None = None  # None: hidden // heads

    @property
    def dim(self) -> int:
        return self.head_dim or self.hidden // self.heads

    def linears(self) -> list[tuple[str, int, int]]:
        """(name, in, out) of the seven linear layers of one block."""
        h, i = self.hidden, self.intermediate
        q, kv = self.heads * self.dim, self.kv_heads * self.dim
        return [
            ("q_proj", h, q),
            ("k_proj", h, kv),
            ("v_proj", h, kv),
            ("o_proj", q, h),
            ("gate_proj", h, i),
            ("up_proj", h, i),
            ("down_proj", i, h),
        ]


# Built-in models whose conf/model/ yaml has no arch block (their weights ship or are built here).
BUILTIN = {
    "smollm2_135m": Arch(49152, 576, 1536, 30, 9, 3, tie_embeddings=True),
}


@dataclass
class Settings:
    """What a plan assumes; every field is a `key=value` on the command line."""

    batch_size: int = 8  # conf/train/default.yaml
    seq_len: int = 64  # tokens per sequence, padding included (conf/train max_seq_len: the most)
    ranks: list[int] = field(default_factory=lambda: [4, 16, 64])  # LoRA ranks
    qlora_rank: int = 16
    precision: str = "auto"  # auto: bf16-mixed, what the harness runs on a bf16 GPU
    optimizer: str = "auto"  # auto: adamw_torch, paged_adamw_8bit for QLoRA
    gradient_checkpointing: bool = False
    attention: str = "sdpa"  # sdpa (flash / memory-efficient: no probabilities kept) | eager
    padded: bool = True  # a batch with padding: SDPA then keeps an additive mask in every block
    logits_len: int = 0  # positions per sequence with logits (train.loss_logits=answer); 0: seq_len
    cuda_context_gib: float = 0.5
    fragmentation: float = 0.10  # allocator slack, as a fraction of the allocated peak

    @property
    def mode(self) -> str:
        return "bf16-mixed" if self.precision == "auto" else self.precision


# ---------------------------------------------------------------- parameters


def linear_params(arch: Arch) -> int:
    """Weights of the seven linear layers of every block (what QLoRA quantizes)."""
    return arch.layers * sum(i * o for _, i, o in arch.linears())


def other_params(arch: Arch) -> int:
    """Embeddings, lm_head (unless tied) and the RMSNorm weights (2 per block + final)."""
    heads = 1 if arch.tie_embeddings else 2
    return heads * arch.vocab * arch.hidden + (2 * arch.layers + 1) * arch.hidden


def total_params(arch: Arch) -> int:
    return linear_params(arch) + other_params(arch)


def lora_tensors(arch: Arch, r: int) -> list[int]:
    """Element counts of every LoRA tensor: A (r x in) and B (out x r) per targeted linear."""
    per_block = [n for _, i, o in arch.linears() for n in (r * i, o * r)]
    return per_block * arch.layers


def full_tensors(arch: Arch) -> list[int]:
    """Element counts of every parameter tensor of the base model."""
    h, v = arch.hidden, arch.vocab
    block = [i * o for _, i, o in arch.linears()] + [h, h]
    embeds = [v * h] * (1 if arch.tie_embeddings else 2)
    return embeds + block * arch.layers + [h]


def trainable_tensors(arch: Arch, approach: str, r: int) -> list[int]:
    return full_tensors(arch) if approach == "full" else lora_tensors(arch, r)


def train_flops_per_token(
    arch: Arch, approach: str, r: int, seq_len: int, logits_share: float = 1.0
) -> float:
    """Model FLOPs of one training token, matmuls only (PaLM appendix B): 2 per weight of every
    linear layer and the lm_head in the forward, as many again for the input gradients, 2 per
    trainable weight for the weight gradients (full: all of them, so 6N; LoRA/QLoRA: the
    adapters, so 4N + 6 x adapters), and 12 x layers x seq_len x query width for attention.
    The lm_head counts on the share of positions that have logits (train.loss_logits)."""
    matmul = linear_params(arch) + arch.vocab * arch.hidden * logits_share
    adapters = 0 if approach == "full" else sum(lora_tensors(arch, r))
    weight_grads = matmul if approach == "full" else adapters
    attention = 12 * arch.layers * seq_len * arch.heads * arch.dim
    return 4 * (matmul + adapters) + 2 * weight_grads + attention


# ---------------------------------------------------------------- bytes per component


def weight_bytes(arch: Arch, approach: str, r: int, mode: str) -> float:
    """Base weights at the precision's bytes (QLoRA: NF4 linears), plus fp32 LoRA adapters."""
    adapters = 0 if approach == "full" else 4 * sum(lora_tensors(arch, r))
    if approach == "qlora":
        return nf4_bytes(linear_params(arch), double_quant=True) + 4 * other_params(arch) + adapters
    return param_bytes(mode) * total_params(arch) + adapters


def nf4_bytes(n: int, double_quant: bool = True) -> float:
    """4-bit NF4 weights plus their quantization constants (bitsandbytes layout)."""
    blocks = n / NF4_BLOCK
    constants = blocks * 1 + blocks / DQ_BLOCK * 4 if double_quant else blocks * 4
    return n / 2 + constants


def param_bytes(mode: str) -> int:
    """Bytes per base weight: bf16 keeps 2; fp32 and the *-mixed modes keep fp32 weights."""
    return 2 if mode == "bf16" else 4


def trainable_bytes(approach: str, mode: str) -> int:
    """Bytes per trainable parameter (and per gradient): adapters are always fp32."""
    return param_bytes(mode) if approach == "full" else 4


def resolve_optimizer(optimizer: str, approach: str) -> str:
    """`auto` is the harness on CUDA: AdamW, the QLoRA recipe's paged 8-bit AdamW for QLoRA."""
    if optimizer != "auto":
        return optimizer
    return "paged_adamw_8bit" if approach == "qlora" else "adamw_torch"


def optimizer_bytes(tensors: list[int], optimizer: str, dtype_bytes: int) -> tuple[float, float]:
    """(states, step buffer) of AdamW over these trainable tensors."""
    if optimizer.endswith("adamw_8bit"):
        states = sum(adam8_state_bytes(n) for n in tensors)
        return states, 0.0
    n = sum(tensors)
    step = dtype_bytes * n if optimizer == "adamw_torch" else 0.0  # foreach: sqrt(v) buffer
    return 2 * dtype_bytes * n, step


def adam8_state_bytes(n: int) -> float:
    """bitsandbytes 8-bit AdamW: two uint8 states + an fp32 absmax per 256; fp32 when small."""
    if n < ADAM8_MIN:
        return 2 * 4 * n
    return 2 * (n + 4 * -(-n // ADAM8_BLOCK))


# ---------------------------------------------------------------- activations
def activation_bytes(arch: Arch, s: Settings, approach: str, r: int) -> float:
    """Saved-for-backward tensors of every block, 16-bit weight copies, and the loss."""
    tokens = s.batch_size * s.seq_len
    layer = tokens * layer_bytes_per_token(arch, s, approach, r)
    copies = weight_copy_bytes(arch, s, approach, r)
    if not s.gradient_checkpointing:
        return arch.layers * layer + copies + loss_bytes(arch, s)
    inputs = arch.layers * tokens * arch.hidden * residual_bytes(approach, s.mode)
    return inputs + layer + copies + loss_bytes(arch, s)


def layer_bytes_per_token(arch: Arch, s: Settings, approach: str, r: int) -> float:
    """Bytes one Llama block keeps for backward, per token: 4 x fp32 + 2 x 16-bit elements.

    Counted from transformers 5's LlamaDecoderLayer and checked against torch's saved-tensor
    hooks (tests/test_plan.py). h hidden, i intermediate, q = heads * head_dim; keys and values
    are expanded to every head (`kv` = 2q: transformers repeats them before SDPA when the batch
    has a padding mask, and eager always does). `core` = q after RoPE + attention output + kv.
    - full, fp32: per RMSNorm its input, normalized input and output (6h), core, the MLP's gate
      output, activation, up output and their product (4i). All fp32.
    - full, bf16: per norm an fp32 copy of the input (2h fp32), normalized and output (4h), core,
      4i in bf16.
    - full, *-mixed: per norm input and normalized (4h fp32); autocast's own 16-bit copy of the
      input of q, k, v, gate, up (5h), core, 4i in 16 bits.
    - LoRA: frozen norms and linears save less, each adapter saves its input and its A output
      (7r): fp32 4h (norm input, output) + core + 4i + 7r; bf16: the adapters cast their inputs
      (5h + q + i) to fp32 (2h + 5h + q + i + 7r fp32, core + 3i bf16); *-mixed: 2h fp32,
      (5h + q + i) + 7r + core + 3i 16-bit.
    - QLoRA: bitsandbytes hands back fp32 (the residual stream is fp32 after k-bit preparation),
      so without autocast it is LoRA fp32; *-mixed: 2h + 3i fp32, (5h + q + i) + 7r + core 16-bit.
    Plus per norm its fp32 rsqrt (2 elements) and what attention keeps besides q, k, v and its
    output (`attention_bytes_per_token`).
    """
    h, i, q, m = arch.hidden, arch.intermediate, arch.heads * arch.dim, s.mode
    core = 4 * q  # q after RoPE, attention output, keys and values expanded to every head
    adapters, a7 = 5 * h + q + i, 7 * r  # inputs of the seven adapters; their A outputs
    mixed = m.endswith("-mixed")
    if approach == "full":
        table = {"fp32": (6 * h + core + 4 * i, 0), "bf16": (2 * h, 4 * h + core + 4 * i)}
        fp32, half = table.get(m, (4 * h, 5 * h + core + 4 * i))
    elif approach == "qlora" and mixed:
        fp32, half = 2 * h + 3 * i, adapters + a7 + core
    elif approach == "qlora" or m == "fp32":
        fp32, half = 4 * h + core + 4 * i + a7, 0
    elif m == "bf16":
        fp32, half = 2 * h + adapters + a7, core + 3 * i
    else:
        fp32, half = 2 * h, adapters + a7 + core + 3 * i
    return 4 * fp32 + 2 * half + 4 * 2 + attention_bytes_per_token(arch, s, half > 0)


def attention_bytes_per_token(arch: Arch, s: Settings, sixteen_bit: bool) -> float:
    """SDPA (memory-efficient kernel, padded batch): an fp32 log-sum-exp per head, and the
    padding mask it turns into an additive one (seq per token, compute dtype) in every block.
    Eager: the fp32 softmax probabilities (heads x seq per token) and their 16-bit cast."""
    if s.attention == "sdpa":
        mask = s.seq_len * (2 if sixteen_bit else 4) if s.padded else 0
        return 4 * arch.heads + mask
    return arch.heads * s.seq_len * (4 + (2 if sixteen_bit else 0))


def weight_copy_bytes(arch: Arch, s: Settings, approach: str, r: int) -> float:
    """*-mixed only: the 16-bit copies autocast makes of fp32 weights and keeps for backward.

    lm_head always; full FT: every linear weight (autocast caches casts of trainable weights
    for the whole forward, with or without checkpointing); LoRA: the frozen base linears of the
    blocks alive (all, or one with checkpointing) and every adapter; QLoRA: the adapters only
    (bitsandbytes keeps the packed 4-bit weight and dequantizes again in backward).
    """
    if not s.mode.endswith("-mixed"):
        return 0.0
    lm_head = arch.vocab * arch.hidden
    if approach == "full":
        return 2 * (lm_head + linear_params(arch))
    alive = 1 if s.gradient_checkpointing else arch.layers
    base = 0 if approach == "qlora" else alive * linear_params(arch) / arch.layers
    return 2 * (lm_head + base + sum(lora_tensors(arch, r)))


def loss_bytes(arch: Arch, s: Settings) -> float:
    """Three fp32 batch x seq x vocab tensors at the start of the backward: the log-probabilities
    cross-entropy saved (logits are upcast to fp32 first), their gradient and the logits'; seq
    is the positions that have logits (logits_len when set)."""
    return 3 * 4 * s.batch_size * (s.logits_len or s.seq_len) * arch.vocab


def residual_bytes(approach: str, mode: str) -> int:
    """The residual stream (what checkpointing keeps per block): fp32 unless bf16 weights."""
    return 2 if mode == "bf16" and approach != "qlora" else 4


# ---------------------------------------------------------------- the plan


@dataclass
class Row:
    """One approach's predicted peak, in GiB."""

    approach: str
    rank: int | None
    trainable_params: int
    weights_gib: float
    grads_gib: float
    optimizer_gib: float
    activations_gib: float
    step_gib: float
    overhead_gib: float
    total_gib: float
    gpu: str


def plan_row(arch: Arch, s: Settings, approach: str, r: int, gpus: list[GpuClass]) -> Row:
    """Predicted peak of one approach: the five parts, their total and the GPU that fits it."""
    tensors = trainable_tensors(arch, approach, r)
    dtype_bytes = trainable_bytes(approach, s.mode)
    weights = weight_bytes(arch, approach, r, s.mode)
    grads = dtype_bytes * sum(tensors)
    states, step = optimizer_bytes(tensors, resolve_optimizer(s.optimizer, approach), dtype_bytes)
    acts = activation_bytes(arch, s, approach, r)
    early = early_grads(arch, approach, grads, dtype_bytes)
    allocated = weights + states + max(acts + early, grads + step)
    overhead = s.cuda_context_gib * GIB + s.fragmentation * allocated
    total = (allocated + overhead) / GIB
    return Row(
        approach=approach,
        rank=None if approach == "full" else r,
        trainable_params=sum(tensors),
        weights_gib=weights / GIB,
        grads_gib=grads / GIB,
        optimizer_gib=states / GIB,
        activations_gib=acts / GIB,
        step_gib=step / GIB,
        overhead_gib=overhead / GIB,
        total_gib=total,
        gpu=smallest_gpu(total, gpus),
    )


def early_grads(arch: Arch, approach: str, grads: float, dtype_bytes: int) -> float:
    """Gradients that exist while every activation is still held: the lm_head's, the first
    computed (full FT; each block's come as its activations go), or all of an adapter's (small)."""
    return dtype_bytes * arch.vocab * arch.hidden if approach == "full" else grads


def plan(arch: Arch, s: Settings, gpus: list[GpuClass]) -> pd.DataFrame:
    """One row per approach: full FT, LoRA at each rank, QLoRA."""
    points = [("full", 0)] + [("lora", r) for r in s.ranks] + [("qlora", s.qlora_rank)]
    table = pd.DataFrame([asdict(plan_row(arch, s, a, r, gpus)) for a, r in points])
    table["rank"] = table["rank"].astype("Int64")  # integers, <NA> for full FT
    return table


def saved_activation_bytes(arch: Arch, s: Settings, approach: str, r: int) -> float:
    """The part of `activation_bytes` that autograd saves (what the ledger's saved-tensor hooks
    count): without the two fp32 logits-sized gradients of the loss, which are not saved."""
    return activation_bytes(arch, s, approach, r) - 2 / 3 * loss_bytes(arch, s)


def arch_for_model(model: ModelConfig) -> Arch:
    """The architecture a trial's model config describes (arch block, built-in, tiny, or the
    hub/local config.json); no weights needed."""
    if model.arch is not None:
        return Arch(**asdict(model.arch))
    if model.source == "tiny":
        t = model.tiny
        return Arch(TINY_VOCAB, t.hidden, t.intermediate, t.layers, t.heads, t.heads, True)
    if model.source == "packaged" and model.name in BUILTIN:
        return BUILTIN[model.name]
    return arch_from_hub(str(model.name_or_path))


def trial_settings(cfg: Config, cuda: bool, seq_len: int | None = None) -> Settings:
    """A trial's own settings: its batch, max_seq_len (or a measured batch width), precision,
    optimizer as the harness picks it (sweep.methods.optimizer_name), checkpointing; the CUDA
    context only on CUDA."""
    t = cfg.train
    qlora_cuda = cfg.method.quant is not None and cuda
    return Settings(
        batch_size=t.batch_size,
        seq_len=seq_len or t.max_seq_len,
        precision=t.precision,
        optimizer="paged_adamw_8bit" if qlora_cuda else "adamw_torch",
        gradient_checkpointing=t.gradient_checkpointing,
        cuda_context_gib=Settings.cuda_context_gib if cuda else 0.0,
    )


def predict_trial(cfg: Config, cuda: bool, gpus: list[GpuClass] | None = None) -> Row:
    """The planner's prediction for one trial's settings (its method, rank, batch, precision)."""
    arch = arch_for_model(cfg.model)
    return plan_row(arch, trial_settings(cfg, cuda), cfg.method.name, cfg.method.r, gpus or [])


def plan_metrics(row: Row) -> dict[str, float]:
    """`plan_<part>_gib` metrics for a result record."""
    parts = ("weights", "grads", "optimizer", "activations", "step", "overhead", "total")
    return {f"plan_{p}_gib": float(getattr(row, f"{p}_gib")) for p in parts}


def smallest_gpu(total_gib: float, gpus: Iterable[GpuClass]) -> str:
    """Name of the smallest (then cheapest) GPU class holding `total_gib`."""
    fits = [g for g in gpus if g.memory_gib >= total_gib]
    return min(fits, key=lambda g: (g.memory_gib, g.usd_per_hour)).name if fits else "none listed"


def load_gpus() -> list[GpuClass]:
    """The GPU classes of conf/config.yaml (`report.gpus`)."""
    node = OmegaConf.load(CONF_DIR / "config.yaml").report.gpus
    return [GpuClass(**g) for g in OmegaConf.to_container(node)]  # type: ignore[arg-type,union-attr]


# ---------------------------------------------------------------- architectures


def model_options() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml") if p.stem != "hf")


def load_arch(name: str) -> Arch:
    """A conf/model/ name (its `arch` block or a built-in) or else a hub id / local directory."""
    path = CONF_DIR / "model" / f"{name}.yaml"
    if path.is_file():
        return arch_from_yaml(name, OmegaConf.load(path))
    return arch_from_hub(name)


def arch_from_yaml(name: str, node: Any) -> Arch:
    if node.get("arch") is not None:
        try:
            return Arch(**OmegaConf.to_container(node.arch))  # type: ignore[arg-type]
        except TypeError as exc:
            raise ConfigError(f"model={name}: bad arch block ({exc})") from None
    if name in BUILTIN:
        return BUILTIN[name]
    if node.get("source") == "tiny":
        t = node.get("tiny") or {}
        heads = t.get("heads", 4)
        layers, hidden, inter = t.get("layers", 2), t.get("hidden", 64), t.get("intermediate", 128)
        return Arch(TINY_VOCAB, hidden, inter, layers, heads, heads, tie_embeddings=True)
    if not OmegaConf.is_missing(node, "name_or_path") and node.get("name_or_path"):
        return arch_from_hub(str(node.name_or_path))
    raise ConfigError(f"model={name} has no arch block; plan a hub id: make plan MODEL=<hub id>")


def arch_from_hub(name_or_path: str) -> Arch:
    """Read only the model's config.json (local directory, cache, hub); one-line error offline."""
    hint = difflib.get_close_matches(name_or_path, model_options(), n=1)
    unknown = (
        f"model {name_or_path!r}: not in conf/model/{f' (did you mean {hint[0]}?)' if hint else ''}"
    )
    shipped = f"shipped: {', '.join(model_options())}"
    if "/" not in name_or_path and not Path(name_or_path).is_dir():
        raise ConfigError(f"{unknown}, nor a hub id (org/name) or local directory; {shipped}")
    try:
        cfg = auto_config(name_or_path)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(
            f"{unknown} and its config could not be read: {first}; {shipped}"
        ) from None
    return arch_from_hf_config(cfg, name_or_path)


def auto_config(name_or_path: str) -> Any:
    """transformers.AutoConfig, from a local directory or the cache first; the hub only when it
    answers (no minute of retries offline)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name_or_path, local_files_only=True)
    except OSError:
        pass
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError:
        raise OSError(f"no network: cannot reach {host} (offline?)") from None
    return AutoConfig.from_pretrained(name_or_path)


def arch_from_hf_config(cfg: Any, name: str = "model") -> Arch:
    c = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    if getattr(c, "num_local_experts", None) or getattr(c, "num_experts", None):
        raise ConfigError(f"model {name!r}: mixture-of-experts models are not modelled by plan")
    try:
        heads = int(c.num_attention_heads)
        head_dim = getattr(c, "head_dim", None)
        return Arch(
            vocab=int(c.vocab_size),
            hidden=int(c.hidden_size),
            intermediate=int(c.intermediate_size),
            layers=int(c.num_hidden_layers),
            heads=heads,
            kv_heads=int(getattr(c, "num_key_value_heads", None) or heads),
            tie_embeddings=bool(getattr(c, "tie_word_embeddings", False)),
            head_dim=None if head_dim in (None, c.hidden_size // heads) else int(head_dim),
        )
    except (AttributeError, TypeError) as exc:
        raise ConfigError(f"model {name!r}: not a Llama-style decoder config ({exc})") from None


# ---------------------------------------------------------------- command line

ALIASES = {"max_seq_len": "seq_len", "r": "qlora_rank"}


def parse_settings(args: list[str]) -> Settings:
    """`key=value` overrides (YAML values: ranks=[4,16,64], gradient_checkpointing=true)."""
    known = [f.name for f in fields(Settings)]
    values: dict[str, Any] = {}
    for arg in args:
        key, sep, raw = arg.partition("=")
        key = key.removeprefix("train.")
        key = ALIASES.get(key, key)
        if not sep or key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            did_you = f" (did you mean {hint[0]}?)" if hint else ""
            raise ConfigError(f"{arg}: not a plan setting{did_you}; allowed: {', '.join(known)}")
        values[key] = yaml.safe_load(raw)
    if isinstance(values.get("ranks"), int):
        values["ranks"] = [values["ranks"]]
    s = replace(Settings(), **values)
    check_settings(s)
    return s


def _require(ok: bool, key: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed; expected {allowed}")


def _count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 1


def check_settings(s: Settings) -> None:
    _require(_count(s.batch_size), "batch_size", "an integer >= 1", s.batch_size)
    _require(_count(s.seq_len), "seq_len", "an integer >= 1", s.seq_len)
    ranks_ok = isinstance(s.ranks, list) and all(_count(r) for r in s.ranks)
    _require(ranks_ok, "ranks", "a list of integers >= 1, e.g. [4,16,64]", s.ranks)
    _require(_count(s.qlora_rank), "qlora_rank", "an integer >= 1", s.qlora_rank)
    _require(s.precision in PRECISIONS, "precision", f"one of {PRECISIONS}", s.precision)
    _require(s.optimizer in OPTIMIZERS, "optimizer", f"one of {OPTIMIZERS}", s.optimizer)
    _require(s.attention in ATTENTIONS, "attention", f"one of {ATTENTIONS}", s.attention)
    ll = s.logits_len
    _require(isinstance(ll, int) and ll >= 0, "logits_len", "an integer >= 0 (0: seq_len)", ll)
    gc = s.gradient_checkpointing
    _require(isinstance(gc, bool), "gradient_checkpointing", "true or false", gc)
    ctx = s.cuda_context_gib
    _require(isinstance(ctx, int | float) and ctx >= 0, "cuda_context_gib", ">= 0", ctx)
    frag = s.fragmentation
    _require(isinstance(frag, int | float) and 0 <= frag < 1, "fragmentation", "0..1", frag)


def render(name: str, arch: Arch, s: Settings, table: pd.DataFrame) -> str:
    """The plan as printed: one line of assumptions, the table, how the total is made."""
    shown = table.rename(columns={"step_gib": "optimizer_step_gib"})
    shown["rank"] = ["-" if pd.isna(r) else str(r) for r in table["rank"]]
    shown["trainable_params"] = [_millions(n) for n in table["trainable_params"]]
    shown.columns = [c.removesuffix("_gib").replace("_", " ") for c in shown.columns]
    gc = "on" if s.gradient_checkpointing else "off"
    head = (
        f"plan {name}: {_millions(total_params(arch))} params (vocab {arch.vocab}, hidden "
        f"{arch.hidden}, intermediate {arch.intermediate}, layers {arch.layers}, heads "
        f"{arch.heads}/{arch.kv_heads} kv{', tied' if arch.tie_embeddings else ''})\n"
        f"batch {s.batch_size} x seq {s.seq_len}, precision {s.mode}, optimizer {s.optimizer}"
        f", gradient checkpointing {gc}, attention {s.attention}"
    )
    foot = (
        "GiB. total = weights + optimizer + max(activations + first gradients, grads + optimizer "
        "step) + overhead:\nthe peak is at the start of the backward (first gradients: the "
        "lm_head's for full FT, all of them for adapters) or at the optimizer step.\n"
        f"overhead: CUDA context {s.cuda_context_gib} GiB + {s.fragmentation:.0%} fragmentation. "
        "Predicted, not measured (`make sweep` measures); assumptions: python -m pydoc sweep.plan"
    )
    return "\n".join([head, "", shown.to_markdown(index=False, floatfmt=".2f"), "", foot])


def _millions(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def main(args: list[str]) -> int:
    """python -m sweep plan MODEL [key=value ...]"""
    if not args or "=" in args[0]:
        raise ConfigError(
            f"usage: python -m sweep plan MODEL [key=value ...]; MODEL: one of "
            f"{', '.join(model_options())} or a hub id (make plan MODEL=<name>)"
        )
    arch, settings = load_arch(args[0]), parse_settings(args[1:])
    print(render(args[0], arch, settings, plan(arch, settings, load_gpus())))
    return 0
