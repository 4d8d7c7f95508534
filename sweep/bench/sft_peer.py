"""The second peer a harness trial is measured against: TRL's `SFTTrainer` with its defaults.

    python -m sweep.bench --only sft        # paired with harness trials (sweep/bench/paired.py)

"The way most people fine-tune today": a `datasets.Dataset` of conversational prompt/completion
pairs, `SFTConfig`, `SFTTrainer(model=<path>, peft_config=LoraConfig(...))`, `trainer.train()`.
TRL's defaults stay as they are (packing, padding-free, completion-only loss, its loss, gradient
checkpointing, logging every 10 steps, ...; the ones that differ from the harness are recorded
in the result as `trl_defaults`), except what must match the harness for a fair comparison:
same model files and load dtype, same method (LoRA config; QLoRA's 4-bit base from the same
bitsandbytes config), same examples with the dataset's system prompt, batch size, steps, learning
rate, warm-up, weight decay, optimizer, precision flags, max length, seed (and, only where the
harness cuts an example to the max length, its cut: TRL's "keep_end"); no evaluation, no
saving, no reporting. Tokens/s counts non-padding tokens over the steps after the same warm-up
(a TrainerCallback); peak memory is the training phase's (host RSS on CPU, the CUDA allocator's
peak on a GPU), as a harness trial reports it.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from sweep.launch.child import enter
from sweep.planning import budget, recipe
from sweep.settings.compose import to_config
from sweep.settings.schema import Config
from sweep.settings.validate import loss_impl_of
from sweep.trial import batches, data, methods, models
from sweep.trial.measure import GIB, host_peak_rss_bytes, reset_host_peak, step_clock, sync

# SFTConfig fields whose TRL defaults decide how it trains (recorded as found in the installed
# version; those missing there are left out).
TRL_DEFAULT_KEYS = (
    "packing",
    "packing_strategy",
    "padding_free",
    "completion_only_loss",
    "assistant_only_loss",
    "loss_type",
    "gradient_checkpointing",
    "truncation_mode",
    "shuffle_dataset",
    "pad_to_multiple_of",
    "use_liger_kernel",
    "activation_offloading",
    "logging_steps",
    "lr_scheduler_type",
    "max_grad_norm",
    "dataloader_num_workers",
)


def dataset(cfg: Config, tok: Any) -> tuple[Any, batches.Encoded]:
    """The harness's train examples as TRL's conversational prompt/completion rows (the prompt
    with the dataset's system prompt, as the harness renders it; the completion the answer), and
    the harness's own encoding of them: the max length it trains at (train.max_seq_len, or sized
    from the data when 0) and how many examples it cuts to that length."""
    from datasets import Dataset

    t, sp = cfg.train, cfg.dataset.system_prompt
    task = data.load_task(cfg.dataset, budget.examples_needed(t), cfg.eval.size)
    rows = [
        {
            "prompt": batches.messages(ex, sp),
            "completion": [{"role": "assistant", "content": ex.answer}],
        }
        for ex in task.train
    ]
    return Dataset.from_list(rows), batches.encode_train(tok, task.train, t.max_seq_len, sp)


def _measure_callback() -> Any:
    """A TrainerCallback that times every optimizer step (device synchronized) and counts its
    non-padding tokens: TRL's own running count of attention_mask.sum() (`trainer` is set once
    the trainer exists)."""
    from transformers import TrainerCallback

    class Measure(TrainerCallback):
        def __init__(self) -> None:
            self.trainer: Any = None
            self.step_s: list[float] = []
            self.step_tokens: list[int] = []
            self.step_end: list[float] = []  # Unix seconds
            self._mark = 0.0
            self._tokens = 0

        def tokens(self) -> int:
            return int(self.trainer._total_train_tokens)

        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
            sync()
            self._mark, self._tokens = time.perf_counter(), self.tokens()

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            sync()
            now, tokens = time.perf_counter(), self.tokens()
            self.step_s.append(now - self._mark)
            self.step_tokens.append(tokens - self._tokens)
            self.step_end.append(time.time())
            self._mark, self._tokens = now, tokens

    return Measure()


def _trainer_class() -> Any:
    from trl import SFTTrainer

    class FirstLossSFTTrainer(SFTTrainer):
        """SFTTrainer unchanged, but for the first training step's loss (read once, in a
        warm-up step): the test compares it with a harness trial's on the same first batch."""

        first_loss: float | None = None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if self.first_loss is None and model.training:
                loss = out[0] if return_outputs else out
                self.first_loss = float(loss.detach())
            return out

    return FirstLossSFTTrainer


def run(cfg: Config) -> dict[str, Any]:
    """Train with TRL's SFTTrainer as a harness trial would train; returns tokens/s, seconds per
    step, the training phase's peak memory, and TRL's defaults as used."""
    import trl
    from trl import SFTConfig

    m, t = cfg.method, cfg.train
    torch.manual_seed(t.seed)
    path = models.resolve(cfg.model, cfg.cache_dir)
    tok = models.load_tokenizer(path, cfg.model.trust_remote_code)
    train_ds, enc = dataset(cfg, tok)
    # Examples longer than max_len: the harness drops the start of the prompt and keeps the
    # answer; TRL's default (keep_start) keeps the start and drops the answer, and then the whole
    # example when no answer token is left: other examples, other batches. Then, and only then,
    # TRL's "keep_end" (the harness's cut; deprecated in TRL 1.x but supported).
    cut = {"truncation_mode": "keep_end"} if enc.truncated else {}
    steps = budget.resolve_steps(t, len(train_ds))
    cuda = torch.cuda.is_available()
    dtype = methods.load_dtype(recipe.of(cfg))
    quant = methods.load_kwargs(m, t.precision).get("quantization_config")
    with tempfile.TemporaryDirectory(prefix="sft-peer-") as out_dir:  # nothing is saved there
        args = SFTConfig(
            output_dir=out_dir,
            model_init_kwargs={
                "dtype": str(dtype).removeprefix("torch."),
                "device_map": {"": str(models.device())},
                "attn_implementation": cfg.model.attn_implementation,
            },
            trust_remote_code=cfg.model.trust_remote_code,
            **methods.training_args(t, m.lr, steps),  # the harness trial's own
            max_length=enc.max_len,
            **cut,
            eval_strategy="no",
        )
        measure = _measure_callback()
        trainer = _trainer_class()(
            model=path,
            args=args,
            train_dataset=train_ds,
            processing_class=tok,
            peft_config=methods.lora_config(m) if m.name != "full" else None,
            quantization_config=quant,
            callbacks=[measure],
        )
        measure.trainer = trainer
        trainable = {str(p.dtype) for p in trainer.model.parameters() if p.requires_grad}
        reset_host_peak()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
        sync()
        peak = torch.cuda.max_memory_allocated() if cuda else host_peak_rss_bytes()
    warm = t.measure_warmup_steps
    step_s, step_tokens = measure.step_s[warm:], measure.step_tokens[warm:]
    measured_s = sum(step_s)
    n = len(step_s)
    a = trainer.args
    defaults = {k: getattr(a, k) for k in TRL_DEFAULT_KEYS if hasattr(a, k)}
    defaults.update(
        completion_only_loss_used=getattr(trainer, "completion_only_loss", None),
        gradient_checkpointing_active=getattr(trainer.model, "is_gradient_checkpointing", None),
        trainable_dtypes=sorted(trainable),
        examples=len(train_ds),
        examples_after_truncation=len(trainer.train_dataset),
        harness_loss_impl=loss_impl_of(t),  # the harness side's loss, for the section's note
    )
    return {
        "train_tokens_per_s": sum(step_tokens) / measured_s if measured_s else float("nan"),
        "s_per_step": measured_s / n if n else float("nan"),
        "s_per_step_median": statistics.median(step_s) if step_s else float("nan"),
        "measured_steps": n,
        "step_clock": step_clock(step_s, measure.step_end[warm:]),
        "steps": len(measure.step_s),
        "tokens_per_step": sum(step_tokens) / n if n else float("nan"),
        "peak_memory_gib": peak / GIB,
        "memory_kind": "cuda_max_allocated" if cuda else "host_rss",
        "max_length": enc.max_len,
        "examples_cut": enc.truncated,
        "first_loss": trainer.first_loss,
        # TRL logs every logging_steps (10 by default) and the mean loss of the run at its end
        "logged_losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
        "train_loss": next(
            (h["train_loss"] for h in trainer.state.log_history if "train_loss" in h), None
        ),
        "trl_version": trl.__version__,
        "trl_defaults": defaults,
    }


def child(cfg: dict[str, Any], out: str, cwd: str, env: dict[str, str]) -> None:
    """Run in a fresh process forked like a harness trial; the result goes to `out` (JSON)."""
    enter(cwd, env)
    Path(out).write_text(json.dumps(run(to_config(cfg)), default=str))
