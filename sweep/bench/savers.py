"""`make bench-plan` part 4: each memory saver, measured by the ledger on this CPU with it off
and on, the planner beside it (bytes are bytes on any device).

    python -m sweep.bench.savers        # prints the "Memory savers" section of reports/bench/plan.md

1. The loss: SmolLM2-135M's shape (49k vocabulary; 2 blocks, random weights: the loss does not
   depend on depth) at 4 x 2048 tokens, every position labeled: what the full and the chunked
   loss save for backward (the forward with the loss less the backbone's own).
2. QLoRA's dtypes: SmolLM2 on bitsandbytes' CPU 4-bit kernels under bf16 autocast, the bytes of
   every weight that is not 4-bit, with method.kbit_fp32 (PEFT's k-bit preparation) and without.
3. The optimizer in backward: SmolLM2 full FT, the gradient bytes alive at the step's peak.
The paged optimizer states of the plan's lean full FT row are measured on a GPU only
(scripts/gpu_check.sh); here the planner's split.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from sweep.planning import activations, plan, recipe
from sweep.planning.arch import llama_config, load_arch
from sweep.planning.assumptions import GIB, Settings
from sweep.planning.ledger import SavedTensors
from sweep.settings.compose import compose
from sweep.settings.schema import MethodConfig
from sweep.trial import loss, methods, models
from sweep.trial.run import run_trial

MIB = 1024**2


def _loss_bytes(model: torch.nn.Module, ids: torch.Tensor) -> int:
    with SavedTensors(model) as whole:
        model(input_ids=ids, labels=ids).loss.backward()
    with SavedTensors(model) as backbone:
        model.model(input_ids=ids).last_hidden_state.sum().backward()
    model.zero_grad(set_to_none=True)
    return whole.bytes - backbone.bytes


def loss_rows(batch: int = 4, seq: int = 2048) -> list[dict[str, Any]]:
    """The full and the chunked loss at SmolLM2's shape, ledger and planner."""
    from dataclasses import replace

    from transformers import LlamaForCausalLM

    arch = load_arch("smollm2_135m")
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config(replace(arch, layers=2))).train()
    ids = torch.randint(0, arch.vocab, (batch, seq))
    s = Settings(batch_size=batch, seq_len=seq, precision="fp32", padded=False)
    whole = activations.saved_activation_bytes(arch, s, _recipe("full", "chunked"))
    rows = []
    for impl in ("full", "chunked"):
        if impl == "chunked":
            loss.use_chunked(model)
        measured = _loss_bytes(model, ids)
        planned = activations.loss_saved_bytes(arch, s, _recipe("full", impl))
        rows.append(_row(f"loss: {impl}", measured, planned,
                         f"{measured / whole:.1%} of SmolLM2's 30 blocks' activations"))  # fmt: skip
    return rows


def _recipe(method: str, impl: str = "chunked", **kw: Any) -> recipe.Recipe:
    return recipe.of_method(MethodConfig(name=method, **kw), "fp32", cuda=False, loss=impl)


def _row(what: str, measured: float, planned: float, note: str = "") -> dict[str, Any]:
    return {
        "saver": what,
        "ledger MiB": measured / MIB,
        "planner MiB": planned / MIB,
        "ledger / planner": measured / planned if planned else None,
        "note": note,
    }


def qlora_rows() -> list[dict[str, Any]]:
    """The non-4-bit weights of SmolLM2 under QLoRA, bf16 autocast: PEFT's fp32, the reference's."""
    rows = []
    for kbit in (True, False):
        cfg = compose(["method=qlora", "train.precision=bf16-mixed", f"method.kbit_fp32={kbit}"])
        rec = recipe.of(cfg, cuda=False)
        path = models.resolve(cfg.model, cfg.cache_dir)
        base = models.load_model(
            path, methods.load_dtype(rec), **methods.load_kwargs(cfg.method, "bf16-mixed")
        )
        model = methods.apply(base, cfg.method, cfg.train)
        other = sum(p.numel() * p.element_size() for n, p in model.named_parameters()
                    if type(p).__name__ != "Params4bit" and "lora_" not in n)  # fmt: skip
        arch = load_arch("smollm2_135m")
        norms = (2 * arch.layers + 1) * arch.hidden
        planned = plan.DTYPE_BYTES[rec.embed_dtype] * (plan.other_params(arch) - norms) + 4 * norms
        what = "QLoRA embeddings: fp32 (kbit_fp32)" if kbit else "QLoRA embeddings: compute dtype"
        rows.append(_row(what, other, planned, f"embeddings and output layer {rec.embed_dtype}"))
    return rows


def backward_rows(work: Path) -> list[dict[str, Any]]:
    """SmolLM2 full FT, two steps: every gradient held at the step, or one at a time."""
    rows = []
    for on in (False, True):
        cfg = compose(["method=full", "train.steps=2", "train.batch_size=2",
                       "train.measure_warmup_steps=1", "train.max_grad_norm=0", "eval.size=1",
                       "eval.base=false", "eval.retention_size=0", "eval.max_new_tokens=1",
                       f"train.optimizer_in_backward={on}"])  # fmt: skip
        result = run_trial(cfg, work / f"backward-{on}")
        m = result.metrics
        what = "full FT gradients: " + ("optimizer in backward" if on else "all held")
        rows.append(_row(what, m["ledger_grads_bytes"], m["plan_grads_gib"] * GIB, result.status))
    return rows


def plan_8b(**kw: Any) -> pd.DataFrame:
    """The 8B plan at 2 x 2048, bf16, gradient checkpointing (the README's 24 GB question)."""
    s = Settings(batch_size=2, seq_len=2048, precision="bf16", gradient_checkpointing=True, **kw)
    table = plan.plan(load_arch("llama3_8b"), s, plan.load_gpus())
    keep = ["approach", "rank", "optimizer", "weights_gib", "grads_gib", "optimizer_gib",
            "paged_gib", "activations_gib", "total_gib", "gpu"]  # fmt: skip
    table["rank"] = [("-" if pd.isna(r) else int(r)) for r in table["rank"]]
    return table[keep]


def section() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        rows = loss_rows() + qlora_rows() + backward_rows(Path(tmp))
    df = pd.DataFrame(rows)
    before = plan_8b(loss_impl="full", kbit_fp32=True, lean_full=False)
    after = plan_8b()
    return "\n".join([
        "## Memory savers: each measured off and on by the ledger, the planner beside it", "",
        df.to_markdown(index=False, floatfmt=".3g"), "",
        "Llama-3-8B at batch 2 x 2048, bf16, gradient checkpointing (GiB), without the savers "
        "(`loss_impl=full kbit_fp32=true lean_full=false`):", "",
        before.to_markdown(index=False, floatfmt=".2f"), "",
        "and with them (the defaults of `make plan`; paged states apart, they may live in "
        "host memory):", "",
        after.to_markdown(index=False, floatfmt=".2f"), "",
    ])  # fmt: skip


if __name__ == "__main__":
    print(section())
