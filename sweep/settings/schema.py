"""The config schemas: one dataclass per conf/ group, the types and defaults every key has.

    python -c "from sweep.settings.schema import Config; print(Config())"

Hydra composes conf/ onto these (sweep/settings/compose.py), so a key that is not here, or a value of the
wrong type, fails before anything runs. Ranges and files are checked by `config.validate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TinyConfig:
    layers: int = 2
    hidden: int = 64
    heads: int = 4
    intermediate: int = 128


@dataclass
class ArchConfig:
    """Architecture numbers for `make plan` (no weights needed)."""

    vocab: int = 32000
    hidden: int = 4096
    intermediate: int = 11008
    layers: int = 32
    heads: int = 32
    kv_heads: int = 32
    tie_embeddings: bool = False


@dataclass
class ModelConfig:
    name: str = "smollm2_135m"
    source: str = "packaged"
    name_or_path: str | None = None
    trust_remote_code: bool = False
    attn_implementation: str = "sdpa"
    tiny: TinyConfig = field(default_factory=TinyConfig)
    arch: ArchConfig | None = None


@dataclass
class QuantConfig:
    bits: int = 4
    type: str = "nf4"
    double_quant: bool = True


@dataclass
class MethodConfig:
    name: str = "lora"
    lr: float = 1e-3
    r: int = 16
    alpha: float | None = None
    dropout: float = 0.0
    target_modules: Any = "all-linear"
    rslora: bool = False
    quant: QuantConfig | None = None
    kbit_fp32: bool = False  # QLoRA: every weight that is not 4-bit in fp32 (PEFT's k-bit prep)

    @property
    def lora_alpha(self) -> float:
        """Alpha actually used: tied to rank (2*r) unless set, so a rank sweep keeps the scale."""
        return float(self.alpha) if self.alpha is not None else 2.0 * self.r


@dataclass
class DatasetConfig:
    name: str = "chain_sum"
    source: str = "reasoning_gym"
    task: str | None = None
    task_args: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    subset: str | None = None
    split: str = "train"
    prompt_field: str = "prompt"
    answer_field: str = "answer"
    messages_field: str = "messages"  # a row with this list is a chat (sweep/trial/data.py)
    eval_split: str | None = None  # hub: the split scored; null: held out from `split`
    scorer: str = "exact"  # exact | numeric | regex | gsm8k | choice | mypkg.mod:fn
    answer_regex: str | None = None  # scorer=regex: a pattern with one group
    max_new_tokens: int | None = None  # generation budget; null: eval.max_new_tokens
    seed: int = 1234
    system_prompt: str | None = None

    @property
    def task_name(self) -> str:
        """The task a trial trains on, as users name it: the reasoning-gym task (dataset.task),
        the file's name, or the hub dataset and its subset; not the dataset config's name,
        which stays what it was when dataset.task or dataset.path is overridden."""
        if self.source == "reasoning_gym":
            return self.task or self.name
        if self.source == "file" and self.path:
            return self.path.replace("\\", "/").rsplit("/", 1)[-1]
        if self.source == "hub" and self.path:
            return f"{self.path}:{self.subset}" if self.subset else self.path
        return self.name


AUTO_MAX_LEN = 2048  # train.max_seq_len=0: the 99th percentile of the train lengths, at most this


@dataclass
class TrainConfig:
    steps: int = 60
    epochs: float = 0.0
    batch_size: int = 8
    grad_accum: int = 1
    max_seq_len: int = 0  # 0: auto, from the train data (sweep.trial.data.encode_train)
    weight_decay: float = 0.0
    warmup_steps: int = 5
    precision: str = "auto"
    optimizer: str = "auto"
    base_dtype: str = "auto"
    gradient_checkpointing: bool = False
    seed: int = 0
    measure_warmup_steps: int = 2
    diverge_factor: float = 10.0
    loss_logits: str = "answer"
    compile: bool = False  # torch.compile of the model (Trainer's torch_compile)
    liger: bool = False  # Liger's fused kernels (RMSNorm, RoPE, SwiGLU, linear + cross-entropy)
    gpus: int = 1  # devices one trial trains on (one process each; CPU: gloo processes)
    parallel: str = "ddp"  # ddp | fsdp (with gpus > 1)
    packing: str = "auto"  # auto | true | false: packed rows (validate.resolve_packing)
    max_grad_norm: float = 1.0  # gradient clipping (the Trainer's default); 0: none
    loss_impl: str = "auto"  # auto | full | chunked | liger (sweep.trial.loss)
    optimizer_in_backward: bool = False  # update each weight in its backward (train.optimizer)
    save_every: int = 0  # a checkpoint every N optimizer steps (0: by time only)
    save_every_s: float = 900.0  # and every N seconds of training (0: off); SIGTERM always
    keep_checkpoints: bool = False  # keep the last checkpoint once the trial has ended


@dataclass
class EvalConfig:
    size: int = 500
    batch_size: int = 128
    max_new_tokens: int = 12
    base: bool = True
    every: int = 0
    select_size: int = 0
    retention_size: int = 32
    retention_tokens: int = 64


@dataclass
class SweepConfig:
    name: str = "default"
    kind: str = "grid"
    grid: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    search: dict[str, Any] = field(default_factory=dict)
    n_trials: int = 1
    objectives: list[str] = field(default_factory=lambda: ["accuracy"])
    pruner: str = "none"
    storage: str | None = None
    timeout_s: int = 0
    memory_limit_gib: float = 0.0
    max_memory_gib: float = 0.0
    seeds: list[int] = field(default_factory=list)
    seed_data: bool = False
    max_retries: int = 1
    heartbeat_s: int = 60
    gpus: Any = field(default_factory=list)  # [0, 1, 2, 3]: a worker per GPU (sweep.study.pool)
    term_grace_s: float = 30.0  # SIGTERM: how long the trial may take to checkpoint and exit


@dataclass
class GpuClass:
    name: str = "?"
    memory_gib: float = 0.0
    usd_per_hour: float = 0.0
    bf16_tflops: float = 0.0  # dense 16-bit tensor peak (for MFU); 0: unknown
    fp32_tflops: float = 0.0  # dense fp32 peak, no TF32
    price_source: str = ""  # where usd_per_hour comes from, and when
    mem_gbps: float = 0.0  # memory bandwidth, GB/s (the optimizer step's and dequantization's)
    specs_source: str = ""  # where the peaks and the bandwidth come from


@dataclass
class ReportConfig:
    dir: str = "reports"
    gpus: list[GpuClass] = field(default_factory=list)
    epoch_tokens: int = 10_000_000  # the epoch of the report's cost-per-epoch section
    tiers: Any = None  # its GPU tiers: null (the seed's four), "all", or names from gpus


def default_cache_dir() -> str:
    """Where converted weights, cached base scores and `make probe`'s calibration go when no
    config says (the config's own cache_dir reads the same variable)."""
    import os

    return os.environ.get("SWEEP_CACHE") or ".cache"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    experiment: str = "default"
    label: str | None = None  # the approach's name in reports; None: from the method ('lora r=16')
    output_dir: str = "outputs"
    cache_dir: str = ".cache"  # conf/config.yaml: $SWEEP_CACHE, else .cache (default_cache_dir)
