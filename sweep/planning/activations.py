"""What a training step holds for backward: every block's saved tensors, autocast's 16-bit
weight copies, and the loss, per precision and approach (checked tensor for tensor against
torch's saved-tensor hooks in tests/planning/test_plan.py).

    python -c "from sweep.planning import activations as A, arch; from sweep.planning.assumptions import Settings; from sweep.planning.recipe import Recipe; print(A.loss_saved_bytes(arch.load_arch('llama3_8b'), Settings(batch_size=2, seq_len=2048), Recipe('lora', 16, (), None, False, 'adamw_torch_fused', 'bf16-mixed', loss='chunked')))"
"""

from __future__ import annotations

from sweep.planning.arch import Arch, linear_params, trainable_tensors
from sweep.planning.assumptions import DTYPE_BYTES, Settings, fsdp
from sweep.planning.recipe import Recipe


# ---------------------------------------------------------------- activations
def activation_bytes(arch: Arch, s: Settings, rec: Recipe) -> float:
    """The activations' peak, at the start of the backward: every block's saved tensors,
    16-bit weight copies and the loss (saved, and what its backward allocates). Under gradient
    checkpointing each block's input instead, and the larger of the loss's backward and one
    recomputed block: the loss's backward runs first and frees what it held before the last
    block is recomputed."""
    tokens = s.batch_size * s.seq_len
    layer = tokens * layer_bytes_per_token(arch, s, rec)
    copies = weight_copy_bytes(arch, s, rec)
    loss = loss_saved_bytes(arch, s, rec) + loss_transient_bytes(arch, s, rec)
    if not s.gradient_checkpointing:
        return arch.layers * layer + copies + loss
    return checkpoint_inputs(arch, s, rec) + copies + max(loss, layer)


def saved_activation_bytes(arch: Arch, s: Settings, rec: Recipe) -> float:
    """What autograd saves during the forward (the ledger's saved-tensor hooks count it): every
    block's tensors (under checkpointing each block's input), weight copies, the loss's."""
    tokens = s.batch_size * s.seq_len
    if s.gradient_checkpointing:
        blocks = checkpoint_inputs(arch, s, rec)
    else:
        blocks = arch.layers * tokens * layer_bytes_per_token(arch, s, rec)
    return blocks + weight_copy_bytes(arch, s, rec) + loss_saved_bytes(arch, s, rec)


def checkpoint_inputs(arch: Arch, s: Settings, rec: Recipe) -> float:
    """Gradient checkpointing keeps each block's input: the residual stream."""
    return arch.layers * s.batch_size * s.seq_len * arch.hidden * residual_bytes(rec)


def layer_bytes_per_token(arch: Arch, s: Settings, rec: Recipe) -> float:
    """Bytes one Llama block keeps for backward, per token: 4 x fp32 + 2 x 16-bit elements.

    Counted from transformers 5's LlamaDecoderLayer and checked against torch's saved-tensor
    hooks (tests/planning/test_plan.py). h hidden, i intermediate, q = heads * head_dim; keys and values
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
    - QLoRA: bitsandbytes hands back its input's dtype. With fp32 embeddings (method.kbit_fp32,
      or an fp32 precision) the residual stream is fp32, so without autocast it is LoRA fp32; in
      pure bf16 with the embeddings in it (the default) it is LoRA bf16 (its norms save 4h 16-bit
      where LoRA's save 2h fp32: the same bytes); *-mixed: 2h + 3i fp32, (5h + q + i) + 7r + core
      16-bit, whatever the embeddings' dtype (measured on bitsandbytes' CPU 4-bit kernels).
    Plus per norm its fp32 rsqrt (2 elements) and what attention keeps besides q, k, v and its
    output (`attention_bytes_per_token`).
    """
    h, i, q, m = arch.hidden, arch.intermediate, arch.heads * arch.dim, rec.precision
    approach = rec.kind
    core = 4 * q  # q after RoPE, attention output, keys and values expanded to every head
    # inputs of the adapters (each casts its own copy), and their A outputs
    adapters = sum(n_in for name, n_in, _ in arch.linears() if name in rec.targets)
    a7 = len(rec.targets) * rec.r
    mixed = m.endswith("-mixed")
    if approach == "full":
        table = {"fp32": (6 * h + core + 4 * i, 0), "bf16": (2 * h, 4 * h + core + 4 * i)}
        fp32, half = table.get(m, (4 * h, 5 * h + core + 4 * i))
    elif approach == "qlora" and mixed:
        fp32, half = 2 * h + 3 * i, adapters + a7 + core
    elif (approach == "qlora" and rec.embed_dtype == "fp32") or m == "fp32":
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


def weight_copy_bytes(arch: Arch, s: Settings, rec: Recipe) -> float:
    """*-mixed only: the 16-bit copies autocast makes of fp32 weights and keeps for backward.

    lm_head always; full FT: every linear weight (autocast caches casts of trainable weights
    for the whole forward, with or without checkpointing); LoRA: the frozen base linears of the
    blocks alive (all, or one with checkpointing) and every adapter; QLoRA: the adapters only
    (bitsandbytes keeps the packed 4-bit weight and dequantizes again in backward).
    """
    if not rec.precision.endswith("-mixed"):
        return 0.0
    if fsdp(s, rec):  # FSDP gathers 16-bit weights (its mixed-precision policy): nothing left
        return 0.0  # to cast; per_device counts the gathered layers
    if rec.kind == "lora" and DTYPE_BYTES[rec.base_dtype] == 2:  # 16-bit base: nothing to cast
        return 2 * sum(trainable_tensors(arch, rec))
    lm_head = arch.vocab * arch.hidden
    if rec.kind == "qlora" and rec.embed_dtype != "fp32":
        lm_head = 0  # already in the compute dtype: nothing to cast
    if rec.kind == "full":
        return 2 * (lm_head + linear_params(arch))
    alive = 1 if s.gradient_checkpointing else arch.layers
    base = 0 if rec.kind == "qlora" else alive * linear_params(arch) / arch.layers
    return 2 * (lm_head + base + sum(trainable_tensors(arch, rec)))


VOCAB_TILE = 32768  # the chunked loss's vocabulary columns per tile (sweep.trial.loss)
TOKEN_TILE = 4096  # and its tokens per tile (TRL's ChunkedLogProbFunction)


def loss_tokens(s: Settings) -> int:
    """Positions the loss sees: every position with logits (logits_len when set), an upper
    bound on the labeled ones the chunked loss keeps (loss_tokens where measured)."""
    return s.batch_size * (s.logits_len or s.seq_len)


def labeled_tokens(s: Settings) -> int:
    return s.loss_tokens or loss_tokens(s)


def loss_saved_bytes(arch: Arch, s: Settings, rec: Recipe) -> float:
    """What the loss saves for backward. full (the model's own): the fp32 log-probabilities of
    every position [tokens x vocab] (logits are upcast to fp32 first). chunked: the labeled
    positions' hidden states, their targets, the index that picked them and one fp32
    log-normalizer each; nothing of [tokens x vocab]."""
    if rec.loss == "chunked":
        return labeled_tokens(s) * (arch.hidden * residual_bytes(rec) + 8 + 8 + 4)
    return 4 * loss_tokens(s) * arch.vocab


def loss_transient_bytes(arch: Arch, s: Settings, rec: Recipe) -> float:
    """What the loss adds at the start of the backward without saving it. full: the gradients
    of the log-probabilities and of the logits, fp32 [tokens x vocab] each. chunked: one
    recomputed [tokens x vocab] tile, an fp32 gradient of the hidden states, and where the
    output layer trains (full FT) an fp32 accumulator of its gradient."""
    if rec.loss != "chunked":
        return 2 * 4 * loss_tokens(s) * arch.vocab
    n = labeled_tokens(s)
    compute = 2 if rec.precision.startswith(("bf16", "fp16")) else residual_bytes(rec)
    tile = min(n, TOKEN_TILE) * min(arch.vocab, VOCAB_TILE) * compute
    head = 4 * arch.vocab * arch.hidden if rec.kind == "full" else 0
    return tile + 4 * n * arch.hidden + head


def residual_bytes(rec: Recipe) -> int:
    """The residual stream (what checkpointing keeps per block): fp32 unless 16-bit weights
    (QLoRA: 16-bit embeddings without autocast, where bitsandbytes keeps it 16-bit)."""
    if rec.kind == "qlora":
        mixed = rec.precision.endswith("-mixed")
        return 2 if DTYPE_BYTES[rec.embed_dtype] == 2 and not mixed else 4
    return 2 if DTYPE_BYTES.get(rec.base_dtype) == 2 else 4
