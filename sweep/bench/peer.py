"""The peer a sweep is measured against: the same grid written by hand with transformers'
`Trainer.hyperparameter_search(backend="optuna")` and a `model_init` that builds each model.

    python -m sweep.bench.peer [overrides...]      # the default sweep's grid, timed

One process, one Trainer; `model_init(trial)` loads the base (4-bit for QLoRA) and wraps it
with PEFT for the trial's grid point; the objective is accuracy from batched greedy generation
on the same held-out examples, scored by the task's own scorer, written the way a user writes
it (tokenizer left padding, `model.generate`). Same examples, order source, steps, batch size,
learning rates and precision as the harness; no tracking, no records, no report. On CPU it
keeps freed memory for reuse as a harness trial does (sweep.trial.process), so the bench weighs
the harness's own work, not an allocator setting.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import torch
from transformers import Trainer, TrainingArguments

from sweep.bench import bare_loop
from sweep.planning import budget
from sweep.settings.compose import compose
from sweep.settings.schema import Config
from sweep.study.points import grid_points, trial_overrides
from sweep.trial import batches, data, evaluate, methods, models, process


class GenerationEvalTrainer(Trainer):
    def train(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = super().train(*args, **kwargs)
        self.state.train_s = time.perf_counter() - start  # the bench compares it per trial
        return out

    """Trainer whose evaluate() is generation accuracy (what the sweep's objective is)."""

    def __init__(self, *args: Any, task: data.Task, cfg: Config, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.task, self.cfg = task, cfg

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        start = time.perf_counter()
        metrics = self._generation_accuracy()
        metrics["eval_s"] = time.perf_counter() - start
        return metrics

    def _generation_accuracy(self) -> dict[str, float]:
        tok, e, sp = self.processing_class, self.cfg.eval, self.cfg.dataset.system_prompt
        model = self.model.eval()
        texts = [
            tok.apply_chat_template(
                batches.messages(ex.prompt, sp), add_generation_prompt=True, tokenize=False
            )
            for ex in self.task.eval
        ]
        answers: list[str] = []
        with torch.no_grad():
            for i in range(0, len(texts), e.batch_size):
                enc = tok(
                    texts[i : i + e.batch_size],
                    return_tensors="pt",
                    padding=True,
                    padding_side="left",
                    add_special_tokens=False,
                ).to(model.device)
                out = model.generate(
                    **enc,
                    max_new_tokens=e.max_new_tokens,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                )
                width = enc["input_ids"].shape[1]
                answers += tok.batch_decode(out[:, width:], skip_special_tokens=True)
        scores = [  # exact match, the harness's headline accuracy
            data.exact_match(evaluate.extract_answer(a), ex)
            for a, ex in zip(answers, self.task.eval, strict=True)
        ]
        model.train()
        return {"eval_accuracy": sum(scores) / len(scores)}


def run(overrides: list[str]) -> dict[str, Any]:
    """Run the sweep's grid (composed exactly as `make sweep` would) the Trainer way; timed."""
    start = time.perf_counter()
    base = compose(overrides)
    points = grid_points(base.sweep.grid, list(base.sweep.seeds))
    cfgs: dict[str, Config] = {
        p.label: compose(trial_overrides(base, overrides, p.overrides)) for p in points
    }
    labels = list(cfgs)
    first = cfgs[labels[0]]
    t, e = first.train, first.eval
    path = models.resolve(first.model, first.cache_dir)
    tok = models.load_tokenizer(path)
    task = data.load_task(first.dataset, budget.examples_needed(t), e.size)
    rows = batches.encode_train(tok, task.train, t.max_seq_len, first.dataset.system_prompt).rows

    def model_init(trial: optuna.Trial | None) -> torch.nn.Module:
        # transformers 5 calls model_init before hp_space; suggesting the same name twice
        # returns the same value, so this is the point the trial runs
        cfg = cfgs[trial.suggest_categorical("point", labels) if trial is not None else labels[0]]
        return bare_loop.hand_written_model(cfg, path)

    def hp_space(trial: optuna.Trial) -> dict[str, Any]:
        point = trial.suggest_categorical("point", labels)
        m = cfgs[point].method
        optim = methods.optimizer_name(cfgs[point].train)
        return {"point": point, "learning_rate": m.lr, "optim": optim}

    accuracies: dict[str, float] = {}

    phases: dict[str, dict[str, float]] = {}

    def objective(metrics: dict[str, float]) -> float:
        point = trainer._trial.params["point"]
        accuracies[point] = metrics["eval_accuracy"]
        phases[point] = {"train_s": trainer.state.train_s, "eval_s": metrics["eval_s"]}
        return metrics["eval_accuracy"]

    args = TrainingArguments(
        output_dir=str(Path(base.output_dir, "peer")),
        max_steps=t.steps,
        per_device_train_batch_size=t.batch_size,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_steps,
        lr_scheduler_type="linear",
        optim=methods.optimizer_name(first.train),
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(),
        **methods.trainer_flags(t.precision),
    )
    trainer = GenerationEvalTrainer(
        model_init=model_init,
        args=args,
        train_dataset=rows,
        data_collator=batches.collate(tok.pad_token_id),  # logits everywhere, as Trainer users get
        processing_class=tok,
        task=task,
        cfg=first,
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    best = trainer.hyperparameter_search(
        hp_space=hp_space,
        compute_objective=objective,
        n_trials=len(labels),
        direction="maximize",
        backend="optuna",
        sampler=optuna.samplers.GridSampler({"point": labels}, seed=t.seed),
    )
    wall = time.perf_counter() - start
    return {"wall_s": wall, "accuracy": accuracies, "phases": phases, "best": best.hyperparameters}


if __name__ == "__main__":
    if not torch.cuda.is_available():  # the allocator policy a harness trial has (process.isolate)
        process.keep_freed_memory()
    print(json.dumps(run(sys.argv[1:])), flush=True)
