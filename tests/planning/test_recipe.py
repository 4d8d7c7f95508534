"""One description of a trial's method: the planner predicts exactly what methods.py builds.

python -m pytest -q tests/planning/test_recipe.py
"""

from __future__ import annotations

import pytest
import torch

from sweep.planning import plan, recipe
from sweep.planning.arch import arch_for_model, linear_params
from sweep.settings.compose import ConfigError, compose
from sweep.trial import methods, models
from tests.conftest import CACHE

POINTS = [
    ["method=full"],
    ["method=lora", "method.r=4"],
    ["method=lora", "method.r=8", "method.target_modules=[q_proj,v_proj]"],
    ["method=lora", "method.r=2", "method.target_modules=[o_proj,down_proj,gate_proj]"],
    ["method=lora", "method.r=2", "method.target_modules='.*[.](k|v)_proj'"],
    ["method=qlora", "method.r=4"],
    ["method=qlora", "method.r=4", "method.quant.double_quant=false"],
    ["method=qlora", "method.r=2", "method.target_modules=[q_proj,k_proj]"],
]


@pytest.fixture(scope="module")
def tiny_path():
    return models.resolve(compose(["model=tiny_llama"]).model, CACHE)


def nf4_base_bytes(model: torch.nn.Module) -> int:
    """Bytes of the 4-bit linears as bitsandbytes stores them: packed weights and constants."""
    import bitsandbytes as bnb

    total = 0
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            qs = m.weight.quant_state
            total += m.weight.numel() * m.weight.element_size() + qs.absmax.nbytes
            total += qs.state2.absmax.nbytes if qs.nested else 0
    return total


@pytest.mark.parametrize("overrides", POINTS, ids=" ".join)
def test_planner_predicts_what_methods_builds(tiny_path, overrides):
    cfg = compose(["model=tiny_llama", *overrides])
    rec = recipe.of(cfg)
    row = plan.predict_trial(cfg, cuda=torch.cuda.is_available())
    base = models.load_model(tiny_path, torch.float32, **methods.load_kwargs(cfg.method, "fp32"))
    arch = arch_for_model(cfg.model)
    if rec.quant_type:  # the 4-bit base the planner counts, double quantization or not
        predicted = plan.nf4_bytes(linear_params(arch), rec.double_quant)
        assert nf4_base_bytes(base) == pytest.approx(predicted, rel=0.01)
    model = methods.apply(base, cfg.method, cfg.train)
    trainable, _ = methods.count_params(model)
    assert row.trainable_params == trainable > 0
    assert row.optimizer == rec.optimizer == methods.optimizer_name(cfg.train)
    adapted = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if hasattr(m, "lora_A")}
    assert adapted == set(rec.targets)


def test_double_quant_and_targets_change_the_prediction():
    def total(*overrides: str) -> float:
        cfg = compose(["model=llama2_7b", "method=qlora", *overrides])
        return plan.predict_trial(cfg, cuda=True).weights_gib

    saved = total("method.quant.double_quant=false") - total()
    assert saved == pytest.approx(6.5e9 / 64 * (4 - 1 - 4 / 256) / 1024**3, rel=0.05)  # ~0.3 GB
    q_v = compose(["model=llama2_7b", "method=lora", "method.target_modules=[q_proj,v_proj]"])
    assert plan.predict_trial(q_v, cuda=True).trainable_params == 32 * 16 * 2 * (4096 + 4096)


def test_targets_follow_peft_matching():
    assert recipe.targets("all-linear") == recipe.LINEARS
    assert recipe.targets(["v_proj", "q_proj", "lm_head"]) == ("q_proj", "v_proj")
    assert recipe.targets(r".*mlp\.(up|down)_proj") == ("up_proj", "down_proj")
    cfg = compose(["model=tiny_llama", "method=lora", "method.target_modules=[c_attn]"])
    with pytest.raises(ConfigError, match=r"target_modules=\['c_attn'\] matches none of q_proj"):
        plan.predict_trial(cfg, cuda=False)


def test_optimizer_and_precision_as_a_trial_resolves_them():
    qlora = compose(["method=qlora"])  # one optimizer for every approach by default
    assert recipe.of(qlora, cuda=True).optimizer == "adamw_torch_fused"
    assert recipe.of(qlora, cuda=False).optimizer == "adamw_torch_fused"  # auto: fused on CPU
    paged = compose(["method=qlora", "train.optimizer=paged_adamw_8bit"])  # the QLoRA recipe
    assert recipe.of(paged, cuda=True).optimizer == "paged_adamw_8bit"
    with pytest.raises(ConfigError, match="train.optimizer='adam' is not allowed; expected one of"):
        compose(["train.optimizer=adam"])
    lora = compose(["method=lora", "train.precision=auto"])
    assert recipe.of(lora, cuda=False).precision == (
        "bf16-mixed" if torch.cuda.is_available() else "fp32"
    )
    assert recipe.of_method(lora.method, "auto", cuda=True).precision == "bf16-mixed"
    with pytest.raises(ConfigError, match="method.quant=.* null for full fine-tuning"):
        compose(["method=qlora", "method.name=full"])


@pytest.mark.parametrize(
    "overrides",
    [
        ["method=full", "train.optimizer=adafactor"],
        ["method=full", "train.optimizer=adamw_8bit"],
        ["method=lora", "method.r=4", "train.optimizer=paged_adamw_32bit"],
        ["method=lora", "method.r=4", "train.optimizer=adafactor"],
        ["method=full", "train.optimizer=adamw_torch_fused"],
    ],
    ids=" ".join,
)
def test_planner_optimizer_states_match_the_optimizer_transformers_builds(tiny_path, overrides):
    """The optimizer the Trainer builds for train.optimizer, after one step, holds the state
    bytes the planner predicts for that optimizer."""
    from transformers import Trainer, TrainingArguments

    from sweep.planning import ledger

    cfg = compose(["model=tiny_llama", *overrides])
    model = methods.apply(models.load_model(tiny_path, torch.float32), cfg.method, cfg.train)
    args = TrainingArguments(
        output_dir="unused", optim=methods.optimizer_name(cfg.train), use_cpu=True, report_to="none"
    )
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = cls(params, **kwargs)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    row = plan.predict_trial(cfg, cuda=False)
    measured = ledger.optimizer_state_bytes(opt)
    # torch and bitsandbytes keep a step counter (4-8 bytes) per tensor beside the states
    assert measured == pytest.approx(row.optimizer_gib * 1024**3, rel=0.02, abs=8 * len(params))


def test_precision_by_role(tiny_path):
    """Under bf16-mixed: full FT trains fp32 masters, LoRA's frozen base is bf16 with fp32
    adapters (what the model built from the recipe holds), QLoRA's base is 4-bit."""

    def roles(*overrides: str) -> tuple[str, str]:
        rec = recipe.of(compose(["train.precision=bf16-mixed", *overrides]), cuda=True)
        return rec.base_dtype, rec.trainable_dtype

    assert roles("method=full") == ("fp32", "fp32")
    assert roles("method=lora") == ("bf16", "fp32")
    assert roles("method=lora", "train.base_dtype=fp32") == ("fp32", "fp32")
    assert roles("method=qlora") == ("nf4", "fp32")
    assert recipe.of(compose(["method=lora"]), cuda=False).base_dtype == "fp32"  # CPU: fp32
    cfg = compose(["model=tiny_llama", "method=lora", "train.precision=bf16-mixed"])
    rec = recipe.of(cfg, cuda=True)
    model = methods.apply(
        models.load_model(tiny_path, methods.load_dtype(rec)), cfg.method, cfg.train
    )
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    trained = {p.dtype for p in model.parameters() if p.requires_grad}
    assert (frozen, trained) == ({torch.bfloat16}, {torch.float32})
    with pytest.raises(ConfigError, match="train.base_dtype='bf16' is not allowed"):
        compose(["train.precision=fp32", "train.base_dtype=bf16"])
