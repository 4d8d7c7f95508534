"""The memory ledger against what PyTorch reports, and recorded with the planner's prediction.

python -m pytest -q tests/planning/test_ledger.py
"""

from __future__ import annotations

import pytest
import torch

from sweep.planning import ledger
from sweep.planning import plan as P
from sweep.settings.compose import compose
from sweep.trial.run import run_trial
from tests.conftest import tiny
from tests.planning.test_plan import hf_config, saved_bytes

GIB = 1024**3


@pytest.mark.parametrize("approach", ["full", "lora"])
def test_ledger_matches_pytorch_on_a_tiny_model(approach):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    arch = P.Arch(vocab=50, hidden=48, intermediate=136, layers=2, heads=4, kv_heads=2)
    torch.manual_seed(0)  # the same model and batch as test_plan.saved_bytes builds
    model = LlamaForCausalLM(hf_config(arch, 2)).float()
    if approach == "lora":
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    ids = torch.randint(0, arch.vocab, (3, 20))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    with ledger.SavedTensors(model) as saved:
        model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    grads = ledger.grad_bytes(model.parameters())
    opt.step()

    params = ledger.params_by_dtype(model)
    assert params == {
        "torch.float32": sum(p.numel() * p.element_size() for p in model.parameters())
    }
    assert grads == sum(p.numel() * p.element_size() for p in trainable)
    states = sum(
        t.numel() * t.element_size()
        for s in opt.state.values()
        for t in s.values()
        if isinstance(t, torch.Tensor)
    )
    # AdamW: two fp32 moments per trainable weight and a 4-byte step counter per tensor
    n = sum(p.numel() for p in trainable)
    assert ledger.optimizer_state_bytes(opt) == states == 8 * n + 4 * len(trainable)
    assert saved.bytes == saved_bytes(arch, 2, "fp32", approach, 3, 20)
    m = ledger.metrics(params, grads, states, saved.bytes)
    assert m["ledger_params_bytes"] == sum(params.values())


def test_trial_records_the_ledger_and_the_plan(tmp_path):
    cfg = compose(tiny("method=lora", "train.precision=fp32", "eval.base=false"))
    result = run_trial(cfg, tmp_path)
    assert result.status == "ok", result.train.get("error")
    m, led = result.metrics, result.train["ledger"]
    assert led["params_by_dtype"] == {"torch.float32": m["ledger_params_bytes"]}
    rows = led["batch_shape"][0]  # train.packing=auto packs the 4 examples into rows
    assert (1 <= rows <= 4) if led["packed"] else rows == 4
    # parameters and gradients: the planner's arithmetic is exact for the tiny fp32 model
    assert m["ledger_params_bytes"] == pytest.approx(m["plan_weights_gib"] * GIB)
    assert m["ledger_grads_bytes"] == pytest.approx(m["plan_grads_gib"] * GIB)
    assert m["ledger_grads_bytes"] == 4 * m["trainable_params"]
    # optimizer: the plan's two fp32 moments, plus torch's 4-byte step counter per tensor
    extra = m["ledger_optimizer_bytes"] - m["plan_optimizer_gib"] * GIB
    assert extra == pytest.approx(4 * 2 * 7 * 2)  # A and B of 7 linears in 2 blocks
    assert m["ledger_activations_bytes"] > 0
    ratio = m["ledger_activations_bytes"] / (m["plan_saved_activations_gib"] * GIB)
    assert 0.8 < ratio < 1.25
    assert m["plan_total_gib"] > 0


def test_bench_plan_measures_every_component_for_one_approach(tmp_path):
    from sweep.bench.memory import COMPONENTS, measure

    row = measure("tiny_llama", 64, ["method=lora", "method.r=4"], tmp_path / "t")
    assert row["status"] == "ok"
    for name in COMPONENTS:
        assert row[f"{name} MiB"] > 0
        assert 0.85 < row[f"{name} ratio"] < 1.15, (name, row[f"{name} ratio"])
