"""Range and consistency checks of a composed config, and what each key allows.

    python -m sweep check method=lora method.r=16     # compose + validate, print the config

`config.to_config` calls `validate` after merging onto the schemas (types are checked there);
each check raises ConfigError (sweep.settings.errors) with one line naming the key and what is allowed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sweep.settings.errors import ConfigError, require
from sweep.settings.metrics import OBJECTIVES
from sweep.settings.schema import Config, DatasetConfig, TrainConfig
from sweep.settings.tiers import pick_tiers

METHODS = ("full", "lora", "qlora")
MODEL_SOURCES = ("packaged", "hf", "tiny")
DATASET_SOURCES = ("reasoning_gym", "file", "hub")
# dataset.scorer: built in (sweep/trial/scorers.py), or a function path such as mypkg.mod:fn
SCORERS = ("exact", "numeric", "regex", "gsm8k", "choice")
FUNCTION_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*[.:][A-Za-z_]\w*")
PRECISIONS = ("auto", "fp32", "bf16", "bf16-mixed", "fp16-mixed")
# transformers' attention kernels; flash_attention_2 needs the flash-attn package and a GPU
ATTENTIONS = ("sdpa", "eager", "flash_attention_2")
# the frozen base's weights under LoRA; auto: the 16-bit compute dtype under *-mixed, else
# as train.precision (fp32 on CPU)
BASE_DTYPES = ("auto", "fp32", "bf16", "fp16")
# transformers' `optim` names; auto: adamw_torch_fused (on CPU too: measured faster there)
OPTIMIZERS = (
    "auto",
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "adafactor",
)
QUANT_TYPES = ("nf4", "fp4")
SWEEP_KINDS = ("grid", "search")
PRUNERS = ("none", "median")
PARALLEL = ("ddp", "fsdp")
LOSS_LOGITS = ("answer", "all")
LOSS_IMPLS = ("auto", "full", "chunked", "liger")
PACKINGS = ("auto", "true", "false")
# PACKING_MEASURED: train.packing on 2 CPU cores under sdpa, SmolLM2-135M LoRA r=16 fp32,
# forward+backward of batches of 8 (loss_logits=answer), packed time against padded:
# - mixed lengths (sweep/bench/packing.py's data, 10..300 words), 8 batches alternating:
#   rows of up to the batch's longest example (5-7 rows) 1.65x faster, rows of up to 384 tokens
#   1.59x; the whole batch in one row (1400-1800 tokens, dense attention over it) 1.12x;
# - near-equal lengths (the default chain_sum task, 40-44 tokens), 16 batches: rows of the
#   longest (one example a row, no mask) 1.10x faster, one row 1.00x.


def resolve_precision(precision: str, cuda_bf16: bool | None = None) -> str:
    """train.precision as it runs: 'auto' is bf16 autocast over fp32 weights on a CUDA device
    with bf16, else plain fp32 (why fp32 on CPU: the README's precision section). `cuda_bf16`:
    whether the device has bf16 (None: ask this machine)."""
    if precision != "auto":
        return precision
    if cuda_bf16 is None:  # this machine's
        import torch

        cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return "bf16-mixed" if cuda_bf16 else "fp32"


def resolve_packing(cfg: Config) -> bool:
    """train.packing as trained: true packs each batch's examples into rows without padding
    between them (sweep.trial.data.packed_collate, rows as pack_row_len), false right-pads each
    example to the batch's longest (sweep.trial.data.collate).

    auto: on wherever the model's attention keeps each example to itself in a packed row.
    Transformers 5 reads the boundaries from the position ids (they restart at 0 per example)
    when the batch has no attention mask and no cache: flash_attention_2 runs each example as its
    own sequence (varlen), sdpa and eager build a block-diagonal causal mask per row. Packed rows
    are never wider than the padded batch and never more of them (pack_row_len), so a packed
    batch does no more work than the padded one, and less wherever it had padding to drop: on
    (measurements in PACKING_MEASURED). Off with trust_remote_code: the model's own code may
    build its own mask and ignore the position ids, letting examples attend to each other.
    Decided from the config alone, so the record and the MLflow params say it before it runs.
    """
    p = str(cfg.train.packing).lower()
    if p != "auto":
        return p == "true"
    return not cfg.model.trust_remote_code


def pack_row_len(cfg: Config) -> int | None:
    """The packed rows' length (sweep.trial.data.packed_collate's row_len): under flash_attention_2
    the whole batch in one row (None), since flash attention reads the example boundaries from
    the position ids only in a single row, and then attends example by example at no cost for
    the row's length; under sdpa and eager rows of at most the batch's longest example (0),
    first-fit decreasing: attention there is dense over each row (rows x width^2, the mask's
    blocks computed and discarded), so one long row would cost more than the padded batch it
    replaces (measured: PACKING_MEASURED)."""
    return None if cfg.model.attn_implementation == "flash_attention_2" else 0


def _check_report(cfg: Config) -> None:
    """report.epoch_tokens a count; report.tiers names of report.gpus (sweep.settings.tiers)."""
    n = cfg.report.epoch_tokens
    ok = isinstance(n, int) and not isinstance(n, bool) and n >= 1
    require(ok, "report.epoch_tokens", "an integer >= 1 (training tokens)", n)
    if cfg.report.tiers is not None:
        pick_tiers(list(cfg.report.gpus), cfg.report.tiers, "report.tiers")


def validate(cfg: Config) -> None:
    """Range and consistency checks; raises ConfigError with one line on the first problem."""
    m, d, t, e, s = cfg.method, cfg.dataset, cfg.train, cfg.eval, cfg.sweep
    require(
        cfg.model.source in MODEL_SOURCES,
        "model.source",
        f"one of {MODEL_SOURCES}",
        cfg.model.source,
    )
    require(
        cfg.model.source == "tiny" or bool(cfg.model.name_or_path),
        "model.name_or_path",
        "a hub id or local path",
        cfg.model.name_or_path,
    )
    _check_report(cfg)
    attn = cfg.model.attn_implementation
    require(attn in ATTENTIONS, "model.attn_implementation", f"one of {ATTENTIONS}", attn)
    require(m.name in METHODS, "method.name", f"one of {METHODS}", m.name)
    require(m.lr > 0 and m.lr < 1, "method.lr", "0 < lr < 1", m.lr)
    if m.name != "full":
        require(m.r >= 1, "method.r", "an integer >= 1", m.r)
        require(m.alpha is None or m.alpha > 0, "method.alpha", "null (2*r) or > 0", m.alpha)
        require(0 <= m.dropout < 1, "method.dropout", "0 <= dropout < 1", m.dropout)
    if m.name == "qlora":
        require(m.quant is not None, "method.quant", "a quant block for qlora", m.quant)
    require(
        m.quant is None or m.name != "full", "method.quant", "null for full fine-tuning", m.quant
    )
    if m.quant is not None:
        require(m.quant.bits == 4, "method.quant.bits", "4", m.quant.bits)
        require(
            m.quant.type in QUANT_TYPES, "method.quant.type", f"one of {QUANT_TYPES}", m.quant.type
        )
    require(d.source in DATASET_SOURCES, "dataset.source", f"one of {DATASET_SOURCES}", d.source)
    if d.source == "reasoning_gym":
        _check_reasoning_gym_task(d.task, d.task_args)
    if d.source == "file":
        require(
            bool(d.path) and Path(str(d.path)).is_file(),
            "dataset.path",
            "an existing .jsonl or .csv file",
            d.path,
        )
        require(
            Path(str(d.path)).suffix in (".jsonl", ".csv"),
            "dataset.path",
            "a file ending in .jsonl or .csv",
            d.path,
        )
    if d.source == "hub":
        require(bool(d.path), "dataset.path", "a hub dataset id", d.path)
    _check_dataset_scoring(d)
    require(t.steps >= 1, "train.steps", "an integer >= 1", t.steps)
    require(t.epochs >= 0, "train.epochs", ">= 0 (0: train.steps decides)", t.epochs)
    require(
        t.epochs == 0 or d.source != "reasoning_gym",
        "train.epochs",
        "0 for a reasoning-gym task (it generates train.steps x batch examples); epochs need "
        "a dataset of fixed size (dataset=file or hub)",
        t.epochs,
    )
    require(t.grad_accum >= 1, "train.grad_accum", "an integer >= 1", t.grad_accum)
    require(t.batch_size >= 1, "train.batch_size", "an integer >= 1", t.batch_size)
    require(
        t.max_seq_len == 0 or 8 <= t.max_seq_len <= 32768,
        "train.max_seq_len",
        "0 (auto: from the train data) or 8..32768",
        t.max_seq_len,
    )
    require(t.precision in PRECISIONS, "train.precision", f"one of {PRECISIONS}", t.precision)
    require(t.optimizer in OPTIMIZERS, "train.optimizer", f"one of {OPTIMIZERS}", t.optimizer)
    require(t.base_dtype in BASE_DTYPES, "train.base_dtype", f"one of {BASE_DTYPES}", t.base_dtype)
    require(
        t.base_dtype in ("auto", "fp32") or resolve_precision(t.precision) != "fp32",
        "train.base_dtype",
        "auto or fp32 with train.precision=fp32 (a 16-bit base needs a 16-bit precision)",
        t.base_dtype,
    )
    if t.precision == "fp16-mixed":
        require(_cuda(), "train.precision", "fp16-mixed only on a CUDA device", t.precision)
    if t.precision in ("bf16", "bf16-mixed") and _cuda():
        require(
            _cuda_bf16(),
            "train.precision",
            "fp16-mixed or fp32 on this GPU (no bf16 support, e.g. T4 or V100)",
            t.precision,
        )
    require(t.warmup_steps >= 0, "train.warmup_steps", ">= 0", t.warmup_steps)
    require(
        0 <= t.measure_warmup_steps < (t.steps if not t.epochs else 10**9),
        "train.measure_warmup_steps",
        f"0 <= n < train.steps ({t.steps})",
        t.measure_warmup_steps,
    )
    require(t.diverge_factor > 1, "train.diverge_factor", "> 1", t.diverge_factor)
    _check_parallel(cfg)
    _check_kernels(cfg)
    require(
        t.loss_logits in LOSS_LOGITS, "train.loss_logits", f"one of {LOSS_LOGITS}", t.loss_logits
    )
    _check_savers(cfg)
    packing = str(t.packing).lower()  # a YAML or command-line true arrives as "True"
    require(packing in PACKINGS, "train.packing", f"one of {PACKINGS}", t.packing)
    require(e.size >= 1, "eval.size", "an integer >= 1", e.size)
    require(e.batch_size >= 1, "eval.batch_size", "an integer >= 1", e.batch_size)
    require(e.max_new_tokens >= 1, "eval.max_new_tokens", "an integer >= 1", e.max_new_tokens)
    require(e.every >= 0, "eval.every", "an integer >= 0", e.every)
    require(e.select_size >= 0, "eval.select_size", "an integer >= 0", e.select_size)
    require(e.retention_size >= 0, "eval.retention_size", "an integer >= 0", e.retention_size)
    require(8 <= e.retention_tokens <= 4096, "eval.retention_tokens", "8..4096", e.retention_tokens)
    require(s.kind in SWEEP_KINDS, "sweep.kind", f"one of {SWEEP_KINDS}", s.kind)
    require(s.pruner in PRUNERS, "sweep.pruner", f"one of {PRUNERS}", s.pruner)
    require(s.n_trials >= 1, "sweep.n_trials", "an integer >= 1", s.n_trials)
    require(s.timeout_s >= 0, "sweep.timeout_s", ">= 0 (0: no limit)", s.timeout_s)
    require(
        s.memory_limit_gib >= 0, "sweep.memory_limit_gib", ">= 0 (0: no limit)", s.memory_limit_gib
    )
    require(
        s.max_memory_gib >= 0,
        "sweep.max_memory_gib",
        ">= 0 (0: the GPU's memory on CUDA, else no limit)",
        s.max_memory_gib,
    )
    require(
        len(set(s.seeds)) == len(s.seeds),
        "sweep.seeds",
        "distinct integers, e.g. [0,1,2]",
        s.seeds,
    )
    require(s.max_retries >= 0, "sweep.max_retries", "an integer >= 0", s.max_retries)
    require(s.heartbeat_s >= 1, "sweep.heartbeat_s", "an integer >= 1", s.heartbeat_s)
    require(s.term_grace_s >= 0, "sweep.term_grace_s", ">= 0 seconds", s.term_grace_s)
    for o in s.objectives:
        require(o in OBJECTIVES, "sweep.objectives", f"names from {sorted(OBJECTIVES)}", o)
    for approach in s.grid:
        require(approach in METHODS, "sweep.grid", f"approaches from {METHODS}", approach)
    require(
        bool(re.fullmatch(r"[\w.-]+", cfg.experiment)) and ".." not in cfg.experiment,
        "experiment",
        "letters, digits, '.', '-' and '_' (no path characters)",
        cfg.experiment,
    )
    _check_names(cfg)


# Config values that name things a file or folder is named after (model.name: the converted
# weights' cache folder; sweep.name: the experiment's folders; the dataset's name). A label
# (or a point's name) reaches a folder only through sweep.study.points.slug, which keeps it in.
NAMED = ("model.name", "dataset.name", "sweep.name")


def _check_names(cfg: Config) -> None:
    """A name is never a path: no separator, no '..' (`model.name=/x/y` would put the model
    cache at /x/y). `model.name_or_path`, `dataset.path` and the *_dir keys are the paths."""
    for key in NAMED:
        section, field_name = key.split(".")
        value = getattr(getattr(cfg, section), field_name)
        plain = bool(str(value).strip()) and not any(c in str(value) for c in "/\\")
        require(
            plain and ".." not in str(value),
            key,
            "a name, not a path (no '/', '\\' or '..'; a local model or file goes in "
            "model.name_or_path or dataset.path)",
            value,
        )


def _check_dataset_scoring(d: DatasetConfig) -> None:
    """The scorer's name (a function path imports in preflight), its regex, the eval split."""
    allowed = f"one of {SCORERS} or a function path (mypkg.mod:fn)"
    require(
        d.scorer in SCORERS or bool(FUNCTION_PATH.fullmatch(d.scorer)),
        "dataset.scorer",
        allowed,
        d.scorer,
    )
    if d.source == "reasoning_gym":
        require(
            d.scorer == "exact",
            "dataset.scorer",
            "exact for a reasoning-gym task (task_score is the task's own scorer)",
            d.scorer,
        )
    if d.scorer == "regex":
        try:
            groups = re.compile(str(d.answer_regex)).groups if d.answer_regex else 0
        except re.error:
            groups = 0
        require(
            groups == 1,
            "dataset.answer_regex",
            "a regular expression with one group for dataset.scorer=regex, e.g. 'answer: (\\S+)'",
            d.answer_regex,
        )
    require(
        d.max_new_tokens is None or d.max_new_tokens >= 1,
        "dataset.max_new_tokens",
        "null (eval.max_new_tokens) or an integer >= 1",
        d.max_new_tokens,
    )
    if d.eval_split is not None:
        require(
            d.source == "hub", "dataset.eval_split", "null unless dataset.source=hub", d.eval_split
        )
        require(
            d.eval_split != d.split,
            "dataset.eval_split",
            f"a split other than dataset.split ({d.split}) or null",
            d.eval_split,
        )


def _check_savers(cfg: Config) -> None:
    """train.loss_impl, train.max_grad_norm and train.optimizer_in_backward: the memory savers,
    refused in one line where they cannot apply."""
    t = cfg.train
    require(t.loss_impl in LOSS_IMPLS, "train.loss_impl", f"one of {LOSS_IMPLS}", t.loss_impl)
    require(t.max_grad_norm >= 0, "train.max_grad_norm", ">= 0 (0: no clipping)", t.max_grad_norm)
    if t.loss_impl == "liger":
        allowed = "auto, full or chunked (liger needs train.liger=true, a CUDA GPU)"
        require(t.liger, "train.loss_impl", allowed, "liger")
    if t.loss_impl == "chunked":
        require(not t.liger, "train.loss_impl", "auto or liger with train.liger=true (Liger "
                "replaces the model's forward and its loss)", "chunked")  # fmt: skip
        require(t.gpus == 1 or t.parallel != "fsdp", "train.loss_impl",
                "auto or full under FSDP (its output layer is sharded)", "chunked")  # fmt: skip
    require(t.save_every >= 0, "train.save_every", "an integer >= 0 (0: off)", t.save_every)
    require(t.save_every_s >= 0, "train.save_every_s", ">= 0 (0: off)", t.save_every_s)
    if t.optimizer_in_backward:
        key, value = "train.optimizer_in_backward", True
        why = "false: each weight is updated as soon as its gradient exists, so"
        require(t.grad_accum == 1, key, f"{why} train.grad_accum must be 1", value)
        require(t.max_grad_norm == 0, key, f"{why} no clipping (train.max_grad_norm=0)", value)
        require(t.gpus == 1, key, f"{why} one process (train.gpus=1)", value)


def loss_impl_of(t: TrainConfig) -> str:
    """A trial's train.loss_impl as it runs (resolve_loss_impl)."""
    return resolve_loss_impl(t.loss_impl, t.liger, t.gpus > 1 and t.parallel == "fsdp")


def resolve_loss_impl(choice: str, liger: bool = False, fsdp: bool = False) -> str:
    """train.loss_impl as it runs: auto is liger with train.liger, full under FSDP over several
    GPUs (a sharded output layer), else chunked (same loss, no [tokens x vocab] logits kept)."""
    if choice != "auto":
        return choice
    if liger:
        return "liger"
    return "full" if fsdp else "chunked"


def _check_kernels(cfg: Config) -> None:
    """train.compile needs a C compiler (inductor builds its kernels with one, on CPU and for a
    GPU's host code); train.liger needs a CUDA GPU and the liger-kernel package."""
    import importlib.util
    import shutil

    t = cfg.train
    if t.compile:
        cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
        require(bool(cc), "train.compile", "false here (torch.compile needs a C compiler)", True)
    if t.liger:
        require(_cuda(), "train.liger", "false on a host without a CUDA GPU (Triton kernels)", True)
        require(
            importlib.util.find_spec("liger_kernel") is not None,
            "train.liger",
            "false, or install liger-kernel (pip install liger-kernel==0.8.5)",
            True,
        )


def _check_parallel(cfg: Config) -> None:
    """train.gpus and train.parallel: whole examples per process, devices that exist, and a
    4-bit base only under DDP (FSDP cannot shard bitsandbytes' packed weights as set up here)."""
    t = cfg.train
    require(t.gpus >= 1, "train.gpus", "an integer >= 1", t.gpus)
    require(t.parallel in PARALLEL, "train.parallel", f"one of {PARALLEL}", t.parallel)
    require(
        t.batch_size % t.gpus == 0,
        "train.batch_size",
        f"a multiple of train.gpus={t.gpus} (it is the global batch, split over the devices)",
        t.batch_size,
    )
    if t.gpus > 1 and _cuda():
        import torch

        n = torch.cuda.device_count()
        require(t.gpus <= n, "train.gpus", f"at most the {n} GPU(s) this process sees", t.gpus)
    if t.gpus > 1 and t.parallel == "fsdp":
        require(
            _cuda(),
            "train.parallel",
            "ddp on a CPU host (accelerate shards with FSDP on GPUs only)",
            t.parallel,
        )
        require(
            cfg.method.quant is None,
            "train.parallel",
            "ddp for method=qlora (a 4-bit base is not sharded by FSDP here)",
            t.parallel,
        )


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _cuda_bf16() -> bool:
    import torch

    return torch.cuda.is_bf16_supported()


def _check_reasoning_gym_task(task: str | None, task_args: dict[str, Any]) -> None:
    """The task exists and its arguments are its own (the config class's fields)."""
    import dataclasses

    from reasoning_gym.factory import DATASETS

    require(task in DATASETS, "dataset.task", "a reasoning-gym task (e.g. chain_sum)", task)
    own = [f.name for f in dataclasses.fields(DATASETS[task][1]) if f.name not in ("seed", "size")]
    for arg in reasoning_gym_args(task, task_args):  # type: ignore[arg-type]
        if arg not in own:
            raise ConfigError(
                f"dataset.task_args.{task}.{arg}: not an argument of reasoning-gym {task}; "
                f"its arguments: {', '.join(own)}"
            )


def reasoning_gym_args(task: str, task_args: dict[str, Any]) -> dict[str, Any]:
    """The arguments for `task`: its own entry of dataset.task_args ({task: {arg: value}}), so
    dataset.task=<other> starts from that task's defaults; flat `arg: value` entries apply to
    whichever task is chosen."""
    own = task_args.get(task)
    flat = {k: v for k, v in task_args.items() if not isinstance(v, dict)}
    return {**(own if isinstance(own, dict) else {}), **flat}
