"""llm-sweep: measure what full fine-tuning, LoRA and QLoRA cost and buy. See README.md."""

import logging
import os
import warnings

# Known noise, silenced once here so progress output stays readable:
# - bitsandbytes tries to download an optional CPU kernel from the hub (offline: a warning);
# - its 4-bit matmul has no registered autograd kernel name, so torch warns on backward even
#   though gradients are right (checked against a dequantized reference in tests/test_methods.py).
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=r".*an autograd kernel was not registered.*")
warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*is deprecated.*")
# transformers' per-file "Loading weights" bars; the trial shows its own progress bar instead.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
