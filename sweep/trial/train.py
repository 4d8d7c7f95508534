"""Training with transformers' Trainer, measured by a callback.

    python -m sweep trial method=lora train.steps=60

The callback times every optimizer step (device synchronized), counts non-padding tokens (a
packed batch's from its collator: train.packing), records the per-step loss, shows a progress
bar, stops on divergence (NaN or loss above diverge_factor x the first loss) and on an external
stop request (the pruner). Train time and tokens/s exclude the first `measure_warmup_steps` steps and any
periodic evaluation.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from sweep.planning import ledger
from sweep.settings.schema import MethodConfig, TrainConfig
from sweep.trial import batches, checkpoint, methods, ranks
from sweep.trial.measure import step_clock, sync

# Called every eval.every steps with the step number; returns True to stop training (pruned).
StepHook = Callable[[int], bool]


@dataclass
class TrainStats:
    steps: int = 0
    tokens_seen: int = 0
    measured_steps: int = 0
    measured_tokens: int = 0
    measured_s: float = 0.0
    losses: list[float] = field(default_factory=list)
    step_s: list[float] = field(default_factory=list)
    step_end: list[float] = field(default_factory=list)  # each step's end, Unix seconds
    diverged: bool = False
    pruned: bool = False
    ledger: dict[str, Any] = field(default_factory=dict)  # LedgerCallback: the first step's bytes

    def total_s(self) -> float:
        """Every step's time so far, warm-up included (the work a kill can lose)."""
        return sum(self.step_s)

    def clock(self) -> list[list[float]]:
        """step_clock of the measured steps (the warm-up left out)."""
        n = self.measured_steps
        ends = self.step_end[len(self.step_end) - n :] if n else []
        return step_clock(self.step_s[len(self.step_s) - n :] if n else [], ends)

    def metrics(self) -> dict[str, Any]:
        n = self.measured_steps
        measured = self.step_s[len(self.step_s) - n :] if n else []
        return {
            "steps": self.steps,
            "tokens_seen": self.tokens_seen,
            "train_s": self.measured_s,
            "s_per_step": self.measured_s / n if n else math.nan,
            # robust to a slow step or two (a neighbour on the machine, a GC pause)
            "s_per_step_median": statistics.median(measured) if measured else math.nan,
            "train_tokens_per_s": self.measured_tokens / self.measured_s
            if self.measured_s
            else math.nan,
            "first_loss": self.losses[0] if self.losses else math.nan,
            "final_loss": self.losses[-1] if self.losses else math.nan,
        }


class MeasureCallback(TrainerCallback):
    def __init__(
        self, cfg: TrainConfig, hook: StepHook | None, every: int, stats: TrainStats | None = None
    ) -> None:
        self.cfg, self.hook, self.every = cfg, hook, every
        self.stats = stats or TrainStats()  # a resumed trial's, from its checkpoint
        self._mark = 0.0
        self._tokens_at_mark = 0
        self._bar: Any = None

    def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
        self._bar = tqdm(
            total=self.cfg.steps,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            leave=False,
            disable=not ranks.is_main(),  # one bar for a trial over several processes
            initial=state.global_step,  # resumed: from the checkpoint's step
        )
        self._tokens_at_mark = int(state.num_input_tokens_seen)
        sync()
        self._mark = time.perf_counter()

    def on_save(self, args, state, control, **kw):  # noqa: ANN001
        sync()  # a checkpoint's saving is not the next step's time
        self._mark = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
        sync()
        now = time.perf_counter()
        s = self.stats
        tokens = int(state.num_input_tokens_seen)
        s.steps = state.global_step
        step_s, step_tokens = now - self._mark, tokens - self._tokens_at_mark
        s.step_s.append(step_s)
        s.step_end.append(time.time())
        if s.steps > self.cfg.measure_warmup_steps:
            s.measured_steps += 1
            s.measured_s += step_s
            s.measured_tokens += step_tokens
        s.tokens_seen = tokens
        self._bar.update(1)
        due = self.hook is not None and self.every and s.steps % self.every == 0
        if due and ranks.any_rank(self.hook(s.steps)):  # rank 0's verdict stops all
            s.pruned = True
            control.should_training_stop = True
        sync()
        self._mark, self._tokens_at_mark = time.perf_counter(), tokens

    def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        s = self.stats
        s.losses.append(float(loss))
        if math.isnan(loss) or math.isinf(loss) or loss > self.cfg.diverge_factor * s.losses[0]:
            s.diverged = True
            control.should_training_stop = True
        rate = s.measured_tokens / s.measured_s if s.measured_s else 0.0
        self._bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:.0f}")

    def on_train_end(self, args, state, control, **kw):  # noqa: ANN001
        if self._bar is not None:
            self._bar.close()


class LedgerCallback(TrainerCallback):
    """Counts the memory ledger (sweep/planning/ledger.py) on the first optimizer step only, which is a
    warm-up step (excluded from train time) whenever train.measure_warmup_steps >= 1."""

    def __init__(self, stats: TrainStats) -> None:
        self.stats = stats
        self._saved: ledger.SavedTensors | None = None
        self._hook: Any = None
        self._done = False

    def on_step_begin(self, args, state, control, model=None, **kw):  # noqa: ANN001
        if self._done or model is None:
            return
        self._saved = ledger.SavedTensors(model).__enter__()

        def shape(module, a, kwargs):  # noqa: ANN001, ANN202
            ids = kwargs.get("input_ids", a[0] if a else None)
            led = self.stats.ledger
            if isinstance(ids, torch.Tensor) and "batch_shape" not in led:
                led["batch_shape"] = list(ids.shape)  # a packed batch: [rows, widest row]
                mask = kwargs.get("attention_mask")  # padded batch: SDPA keeps a mask per block
                led["padded"] = bool(mask is not None and (mask == 0).any())
                pos = kwargs.get("position_ids")  # only a packed batch (train.packing) has them
                led["packed"] = mask is None and isinstance(pos, torch.Tensor)
                led["sequences"] = int((pos == 0).sum()) if led["packed"] else int(ids.shape[0])
                keep = kwargs.get("logits_to_keep")  # train.loss_logits=answer: logits kept
                led["logits_width"] = _logits_width(keep, ids)
                labels = kwargs.get("labels")  # what the chunked loss keeps
                if isinstance(labels, torch.Tensor):
                    led["labeled_tokens"] = int((labels[..., 1:] != -100).sum())

        self._hook = model.register_forward_pre_hook(shape, with_kwargs=True)

    def _close(self) -> None:
        if self._saved is not None:
            self._saved.__exit__(None, None, None)
            self.stats.ledger["activations_bytes"] = self._saved.bytes
            self._saved = None
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):  # noqa: ANN001
        if self._done or model is None:
            return
        self._close()
        self.stats.ledger["grads_bytes"] = ledger.grad_bytes(model.parameters())
        optimizer = getattr(kw.get("optimizer"), "optimizer", kw.get("optimizer"))
        if hasattr(optimizer, "peak_grad_bytes"):  # updated in backward: each freed at once
            self.stats.ledger["grads_bytes"] = optimizer.peak_grad_bytes

    def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kw):  # noqa: ANN001
        if self._done or model is None:
            return
        self.stats.ledger["params_by_dtype"] = ledger.params_by_dtype(model)
        if optimizer is not None:
            self.stats.ledger["optimizer_bytes"] = ledger.optimizer_state_bytes(optimizer)
        self._done = True

    def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
        self._close()  # in case the step ended without an optimizer step
        self._done = True


def _logits_width(keep: Any, ids: torch.Tensor) -> int:
    """Logits per row the model computes (train.loss_logits=answer): an int `logits_to_keep`
    (0: all), a tensor of positions, or a packed batch's boolean mask (its kept positions over
    its rows, rounded up)."""
    if isinstance(keep, torch.Tensor) and keep.dtype == torch.bool:
        return -(-int(keep.sum()) // int(ids.shape[0]))
    if isinstance(keep, torch.Tensor):
        return int(keep.numel())
    return int(keep or ids.shape[-1])


class _Trainer(Trainer):
    """Trainer that counts a packed batch's tokens (train.packing) from its collator: the rows
    end in padding with no attention mask to find it by, and the pad id would not do (SmolLM2's
    is also its end-of-turn token, so real tokens would go uncounted). The count
    (sweep.trial.batches.REAL_TOKENS) leaves the batch here, before the model sees it.

    `in_backward` (train.optimizer_in_backward): the Trainer's optimizer is `InBackward`, and
    each weight has its own schedule."""

    in_backward: bool = False

    def compute_loss(self, model, inputs, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201
        real = inputs.pop(batches.REAL_TOKENS, None)
        if real is not None and model.training:
            n = torch.as_tensor(real, device=self.args.device, dtype=torch.int64)
            self.state.num_input_tokens_seen += int(self.accelerator.gather(n).sum().item())
        return super().compute_loss(model, inputs, *args, **kwargs)

    def create_optimizer(self, model: Any = None) -> Any:
        if not self.in_backward or self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        decay = set(self.get_decay_parameter_names(opt_model))
        self.optimizer = self.in_backward_optimizer = InBackward(
            {
                p: cls(
                    [{"params": [p], "weight_decay": self.args.weight_decay * (n in decay)}],
                    **kwargs,
                )  # fmt: skip
                for n, p in opt_model.named_parameters()
                if p.requires_grad
            },
            self.args.learning_rate,
        )
        return self.optimizer

    def _load_optimizer_and_scheduler(self, resume_from_checkpoint: Any) -> None:
        super()._load_optimizer_and_scheduler(resume_from_checkpoint)
        if resume_from_checkpoint is not None and self.in_backward:
            self.in_backward_optimizer.resume_schedules(self.lr_scheduler.last_epoch)

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        if not self.in_backward or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        from transformers.optimization import get_scheduler

        def schedule(opt: torch.optim.Optimizer) -> Any:
            return get_scheduler(
                self.args.lr_scheduler_type,
                optimizer=opt,
                num_warmup_steps=self.args.get_warmup_steps(num_training_steps),
                num_training_steps=num_training_steps,
                scheduler_specific_kwargs=self.args.lr_scheduler_kwargs,
            )

        inner = self.in_backward_optimizer
        for p, opt in inner.per_weight.items():  # after the weight's step, its own schedule
            weight_schedule = schedule(opt)
            inner.schedules.append(weight_schedule)
            p.register_post_accumulate_grad_hook(lambda _p, s=weight_schedule: s.step())
        # the Trainer's own, on the stand-in: the same schedule, for the logged learning rate
        self.lr_scheduler = schedule(inner)
        return self.lr_scheduler


class InBackward(torch.optim.Optimizer):
    """train.optimizer_in_backward: one optimizer per trainable weight, stepped by the weight's
    post-accumulate-grad hook, which then frees the gradient, so the gradients are never all held
    at once. The Trainer steps this stand-in, which does nothing (the pattern of transformers'
    LayerWiseDummyOptimizer, whose scheduler fails on torch 2.13: `_Trainer.create_scheduler`
    gives each weight its own). `peak_grad_bytes`: the most gradient bytes alive at once."""

    def __init__(self, per_weight: dict[torch.nn.Parameter, torch.optim.Optimizer], lr: float):
        super().__init__([torch.zeros(1)], {"lr": lr})
        self.per_weight = per_weight
        self.schedules: list[Any] = []  # each weight's, made by _Trainer.create_scheduler
        self.peak_grad_bytes = 0
        self._live = 0
        for p in per_weight:
            p.register_post_accumulate_grad_hook(self._step)

    def _step(self, p: torch.nn.Parameter) -> None:
        size = ledger.tensor_bytes(p.grad)
        self._live += size
        self.peak_grad_bytes = max(self.peak_grad_bytes, self._live)
        self.per_weight[p].step()
        self.per_weight[p].zero_grad(set_to_none=True)
        self._live -= size

    def step(self, closure: Any = None) -> None:  # every weight stepped in its backward
        return None

    def state_dict(self) -> dict[str, Any]:  # what a checkpoint saves: every weight's states
        return {"per_weight": [o.state_dict() for o in self.per_weight.values()]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for opt, state in zip(self.per_weight.values(), state_dict["per_weight"], strict=True):
            opt.load_state_dict(state)

    def resume_schedules(self, step: int) -> None:
        """A resumed trial: every weight's schedule at the checkpoint's step."""
        for schedule in self.schedules:
            schedule.last_epoch = step - 1
            schedule.step()

    def zero_grad(self, set_to_none: bool = True) -> None:  # every gradient freed there
        return None


def train(
    model: Any,
    tok: Any,
    rows: list[dict[str, list[int]]],
    collate_fn: Any,
    *,
    method: MethodConfig,
    cfg: TrainConfig,
    out_dir: str,
    hook: StepHook | None = None,
    every: int = 0,
    extra_callbacks: tuple[TrainerCallback, ...] = (),
    packed: bool = False,
    saver: Any = None,
    resume: Path | None = None,
) -> TrainStats:
    """Train `model` for cfg.steps optimizer steps on `rows` (already tokenized); returns stats.
    `extra_callbacks` (e.g. sweep.study.live.LiveMetrics) run after the measuring one and get its
    stats (their `stats` attribute). `packed`: collate_fn packs each batch into rows
    (sweep.trial.batches.packed_collate), which carry their own count of non-padding tokens
    (_Trainer). `saver`: the checkpoint callback (sweep.trial.checkpoint); `resume`: the
    checkpoint to continue from, its statistics included."""
    args = TrainingArguments(
        output_dir=out_dir,
        **methods.training_args(cfg, method.lr, cfg.steps),
        lr_scheduler_type="linear",
        logging_steps=1,
        disable_tqdm=True,
        include_num_input_tokens_seen="no" if packed else "non_padding",  # packed: _Trainer
        remove_unused_columns=False,
        dataloader_num_workers=0,
        save_total_limit=1,  # the latest checkpoint only
    )
    before = TrainStats(**checkpoint.stats_of(resume)) if resume is not None else None
    callback = MeasureCallback(cfg, hook, every, before)
    for extra in (*extra_callbacks, saver):
        if hasattr(extra, "stats"):
            extra.stats = callback.stats
    trainer = _Trainer(
        model=model,
        args=args,
        train_dataset=rows,
        data_collator=collate_fn,
        processing_class=tok,
        callbacks=[callback, LedgerCallback(callback.stats), *extra_callbacks]
        + ([saver] if saver is not None else []),
    )
    trainer.in_backward = cfg.optimizer_in_backward
    trainer.remove_callback(PrinterCallback)  # the callback's progress bar replaces its prints
    trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    return callback.stats
