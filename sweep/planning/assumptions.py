"""What a memory plan assumes: batch, sequence, precision, optimizer and the savers, each a
`key=value` of `make plan` (sweep.cli.plan) and read from a trial's config for its own plan.

    python -c "from sweep.planning.assumptions import Settings; print(Settings())"
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sweep.planning.recipe import Recipe
from sweep.settings.validate import resolve_precision

GIB = 1024**3
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass
class Settings:
    """What a plan assumes; every field is a `key=value` on the command line."""

    batch_size: int = 8  # conf/train/default.yaml
    seq_len: int = 64  # tokens per sequence, padding included (conf/train max_seq_len: the most)
    ranks: list[int] = field(default_factory=lambda: [4, 16, 64])  # LoRA ranks
    qlora_rank: int = 16
    precision: str = "auto"  # auto: bf16-mixed, what the harness runs on a bf16 GPU
    optimizer: str = "auto"  # auto: as a trial on CUDA (sweep.planning.recipe.optimizer)
    target_modules: Any = None  # None: conf/method/lora.yaml's (all-linear); or [q_proj, v_proj]
    double_quant: bool | None = None  # None: conf/method/qlora.yaml's (true)
    base_dtype: str = "auto"  # LoRA's frozen base: auto (16-bit under *-mixed) | fp32 | bf16 | fp16
    gradient_checkpointing: bool = False
    loss_impl: str = "auto"  # auto (chunked: no [tokens x vocab] logits kept) | full | chunked
    kbit_fp32: bool = False  # QLoRA: embeddings and output layer in fp32 (PEFT's k-bit prep)
    lean_full: bool = True  # a second full FT row: paged 8-bit AdamW, optimizer in backward
    attention: str = "sdpa"  # sdpa (flash / memory-efficient: no probabilities kept) | eager
    padded: bool = True  # a batch with padding: SDPA then keeps an additive mask in every block
    logits_len: int = 0  # positions per sequence with logits (train.loss_logits=answer); 0: seq_len
    loss_tokens: int = 0  # positions with a label (a trial's measured); 0: every one with logits
    cuda_context_gib: float = 0.5
    fragmentation: float = 0.10  # allocator slack, as a fraction of the allocated peak
    gpus: int = 1  # devices one trial trains on: batch_size is the global batch, split over them
    parallel: str = "ddp"  # ddp (a replica per device) | fsdp (states sharded over the devices)
    data: Any = (
        None  # cost per epoch (sweep.planning.cost): a token count (10M, 1e7) or a data file
    )
    tiers: Any = None  # GPU tiers of the cost table: None (the seed's four), "all", or names

    @property
    def mode(self) -> str:
        """The precision make plan assumes: "auto" is bf16-mixed, a trial's on a bf16 GPU."""
        return resolve_precision(self.precision, cuda_bf16=True)


def fsdp(s: Settings, rec: Recipe) -> bool:
    """Sharded over s.gpus: FSDP, except QLoRA, which the harness runs under DDP."""
    return s.gpus > 1 and s.parallel == "fsdp" and rec.kind != "qlora"
