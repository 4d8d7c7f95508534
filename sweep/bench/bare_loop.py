"""The reference a harness trial is measured against: a bare PyTorch + PEFT training loop.

Same model files, method, examples in the same batches and order, batch size, sequence length, steps, optimizer (AdamW, linear
warm-up schedule, gradient clipping at 1.0 as Trainer does) and precision as a harness trial,
written the way one writes it by hand: plain `from_pretrained`, `get_peft_model`, a DataLoader,
forward/backward/step. Tokens/s counts non-padding tokens over the steps after the same warm-up.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler
from transformers import get_linear_schedule_with_warmup

from sweep.launch.child import enter
from sweep.planning import budget, recipe
from sweep.settings.compose import to_config
from sweep.settings.schema import Config
from sweep.settings.validate import pack_row_len, resolve_packing
from sweep.trial import batches, data, methods, models
from sweep.trial.measure import step_clock, sync


def hand_written_model(cfg: Config, path: str) -> torch.nn.Module:
    """The model as one builds it by hand (the bare loop's, and the Trainer peer's model_init):
    plain from_pretrained, k-bit preparation for QLoRA, get_peft_model for adapters."""
    from transformers import AutoModelForCausalLM

    m, t = cfg.method, cfg.train
    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=methods.load_dtype(recipe.of(cfg)),  # precision by role, as a trial loads it
        device_map={"": models.device()},
        **methods.load_kwargs(m, t.precision),
    )
    model.config.use_cache = False
    if m.name == "full":
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    if m.quant is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return get_peft_model(model, methods.lora_config(m))


def _optimizer(cfg: Config, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizer class and arguments transformers picks for train.optimizer (the same one
    the harness's Trainer builds), applied by hand."""
    from transformers import Trainer, TrainingArguments

    m, t = cfg.method, cfg.train
    args = TrainingArguments(
        output_dir="unused", optim=methods.optimizer_name(t), learning_rate=m.lr,
        use_cpu=not torch.cuda.is_available(), report_to="none",
    )  # fmt: skip
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    return cls(params, weight_decay=t.weight_decay, **kwargs)


def run(cfg: Config) -> dict[str, Any]:
    """Train like a harness trial would, by hand; returns tokens/s and seconds per step."""
    t, sp = cfg.train, cfg.dataset.system_prompt
    torch.manual_seed(t.seed)
    path = models.resolve(cfg.model, cfg.cache_dir)
    tok = models.load_tokenizer(path)
    task = data.load_task(cfg.dataset, budget.examples_needed(t), cfg.eval.size)
    rows = batches.encode_train(tok, task.train, t.max_seq_len, sp).rows  # as a trial sizes them
    model = hand_written_model(cfg, path)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = _optimizer(cfg, params)
    total = t.steps
    sched = get_linear_schedule_with_warmup(opt, t.warmup_steps, total)
    # the order Trainer draws with data_seed (accelerate's seedable sampler): same batches
    order = RandomSampler(rows, generator=torch.Generator().manual_seed(t.seed))
    loader = DataLoader(
        rows,
        batch_size=t.batch_size,
        sampler=order,
        # padded or packed (train.packing) as the harness trial's
        collate_fn=batches.train_collate(
            tok.pad_token_id, resolve_packing(cfg), t.loss_logits == "answer", pack_row_len(cfg)
        ),
    )
    dev = models.device()
    autocast = (
        torch.autocast(dev.type, dtype=methods.compute_dtype(t.precision))
        if t.precision.endswith("-mixed")
        else contextlib.nullcontext()
    )
    measured_s, measured_tokens, padded_tokens, step = 0.0, 0, 0, 0
    losses: list[float] = []
    step_s: list[float] = []
    ends: list[float] = []  # each measured step's end, Unix seconds
    sync()
    mark = time.perf_counter()
    for batch in loader:
        batch = batches.to_device(batch, dev)
        with autocast:
            loss = model(**batches.model_inputs(batch)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())  # Trainer reads the loss every step too (logging_steps=1)
        sync()
        now = time.perf_counter()
        step += 1
        if step > t.measure_warmup_steps:
            measured_s += now - mark
            step_s.append(now - mark)
            ends.append(time.time())
            measured_tokens += batches.batch_tokens(batch)
            padded_tokens += batch["input_ids"].numel()
        mark = now
        if step >= total:
            break
    n = step - t.measure_warmup_steps
    return {
        "train_tokens_per_s": measured_tokens / measured_s,
        "s_per_step": measured_s / n,
        "s_per_step_median": statistics.median(step_s),
        "padded_tokens_per_step": padded_tokens / n,
        "measured_steps": n,
        "step_clock": step_clock(step_s, ends),
        "first_loss": losses[0],
        "final_loss": losses[-1],
    }


def child(cfg: dict[str, Any], out: str, cwd: str, env: dict[str, str]) -> None:
    """Run in a fresh process forked like a harness trial; the result goes to `out` (JSON)."""
    enter(cwd, env)
    Path(out).write_text(json.dumps(run(to_config(cfg))))
