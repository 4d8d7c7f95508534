"""llm-sweep: measure what full fine-tuning, LoRA and QLoRA cost and buy. See README.md.

A sweep flows settings -> planning -> trial -> study, and every stage hands what it measured to
results, which keeps it (the record, MLflow, Optuna's storage) and reports on it:

    settings   what was asked: schemas, composing conf/, validation, errors, metric names
    planning   what it will cost before it runs: architectures, the recipe, memory, time, money
    results    what a trial leaves and what is made of it: the record, tracking, the report
    trial      one trial: model, method, data, train, evaluate, measure
    launch     a trial in a process of its own (forked, or over several GPUs)
    study      the sweep: its points, the Optuna study, worker pools, live runs
    adapters   a trained trial put to use: load, merge, generate, export, inference timing
    cli        command lines that span stages: make plan, make probe
    bench      make bench: the harness against its peers

A stage imports only the stages above it in this list (STAGES), never one below; no module
imports another in a circle, lazy imports included (tests/test_layout.py checks both).
`python -m sweep` (sweep/__main__.py) sits on top and dispatches to them.
"""

import logging
import os
import warnings

STAGES = ("settings", "planning", "results", "trial", "launch", "study", "adapters", "cli", "bench")

# Known noise, silenced once here so progress output stays readable:
# - bitsandbytes tries to download an optional CPU kernel from the hub (offline: a warning);
# - its 4-bit matmul has no registered autograd kernel name, so torch warns on backward even
#   though gradients are right (checked against a dequantized reference in tests/trial/test_methods.py).
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=r".*an autograd kernel was not registered.*")
warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*is deprecated.*")
# transformers' per-file "Loading weights" bars; the trial shows its own progress bar instead.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
