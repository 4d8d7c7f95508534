import pytest
import torch

from sweep.settings.compose import compose
from sweep.trial import batches, methods, models
from tests.conftest import CACHE


@pytest.fixture(scope="module")
def tiny_path():
    return models.resolve(compose(["model=tiny_llama"]).model, CACHE)


def _load(path, cfg):
    return models.load_model(path, torch.float32, **methods.load_kwargs(cfg.method, "fp32"))


def test_full_trains_every_parameter(tiny_path):
    cfg = compose(["model=tiny_llama", "method=full"])
    model = methods.apply(_load(tiny_path, cfg), cfg.method, cfg.train)
    trainable, total = methods.count_params(model)
    assert trainable == total > 0


@pytest.mark.parametrize("r", [1, 4, 16])
def test_lora_trainable_params_match_the_formula(tiny_path, r):
    cfg = compose(["model=tiny_llama", "method=lora", f"method.r={r}"])
    base = _load(tiny_path, cfg)
    targets = [
        m
        for name, m in base.named_modules()
        if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head")
    ]
    expected = sum(r * (m.in_features + m.out_features) for m in targets)
    _, base_total = methods.count_params(base)
    model = methods.apply(base, cfg.method, cfg.train)
    trainable, total = methods.count_params(model)
    assert trainable == expected
    assert total == base_total + expected


def test_lora_respects_target_modules(tiny_path):
    cfg = compose(
        ["model=tiny_llama", "method=lora", "method.r=2", "method.target_modules=[q_proj,v_proj]"]
    )
    model = methods.apply(_load(tiny_path, cfg), cfg.method, cfg.train)
    hidden = 64
    layers = 2
    assert methods.count_params(model)[0] == layers * 2 * 2 * (hidden + hidden)


def test_qlora_base_weights_are_4bit(tiny_path):
    import bitsandbytes as bnb

    cfg = compose(["model=tiny_llama", "method=qlora", "method.r=4"])
    base = _load(tiny_path, cfg)
    assert methods.is_4bit(base)
    linear4 = [m for m in base.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert linear4 and all(m.weight.dtype == torch.uint8 for m in linear4)
    assert all(m.weight.quant_state.quant_type == "nf4" for m in linear4)
    # packed storage: half a byte per weight, but logical counts match the unquantized model
    full_total = methods.count_params(
        _load(tiny_path, compose(["model=tiny_llama", "method=lora"]))
    )[1]
    assert methods.count_params(base)[1] == full_total
    model = methods.apply(base, cfg.method, cfg.train)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)


def test_precision_is_one_key_for_every_method():
    assert methods.dtype_for("bf16") == torch.bfloat16
    assert methods.dtype_for("bf16-mixed") == torch.float32
    assert methods.trainer_flags("bf16-mixed") == {"bf16": True, "fp16": False}
    q = methods.load_kwargs(compose(["method=qlora"]).method, "bf16")["quantization_config"]
    assert q.bnb_4bit_compute_dtype == torch.bfloat16 and q.bnb_4bit_use_double_quant
    assert methods.load_kwargs(compose(["method=lora"]).method, "bf16") == {}


def test_one_optimizer_for_every_approach_unless_chosen():
    expected = "adamw_torch_fused"  # on CPU too: make bench part 7 measured it faster there
    for method in ("full", "lora", "qlora"):
        assert methods.optimizer_name(compose([f"method={method}"]).train) == expected
    chosen = compose(["method=qlora", "train.optimizer=paged_adamw_8bit"]).train
    assert methods.optimizer_name(chosen) == "paged_adamw_8bit"


def _qlora_grads(path, evaluate_first: bool) -> torch.Tensor:
    from sweep.trial import data

    cfg = compose(["model=tiny_llama", "method=qlora", "method.r=4", "method.dropout=0"])
    tok = models.load_tokenizer(path)
    base = models.load_model(path, torch.bfloat16, **methods.load_kwargs(cfg.method, "bf16"))
    rows = [
        batches.encode(tok, data.Example(f"{i} + {i} =", str(2 * i)), 48, None) for i in range(4)
    ]
    batch = batches.collate(tok.pad_token_id)(rows)
    if evaluate_first:  # what the base-model evaluation does before training
        base.eval()
        with torch.no_grad():
            base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    torch.manual_seed(0)
    model = methods.apply(base, cfg.method, cfg.train)
    model.train()
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02, generator=torch.Generator().manual_seed(1))
    model(**batch).loss.backward()
    first = next(p for n, p in model.named_parameters() if "layers.0." in n and "lora_A" in n)
    return first.grad.flatten().float()


def test_qlora_gradients_survive_an_evaluation_before_training(tiny_path):
    """Regression: bitsandbytes' CPU repacking after an eval pass corrupted 4-bit backward."""
    clean, after_eval = _qlora_grads(tiny_path, False), _qlora_grads(tiny_path, True)
    assert torch.nn.functional.cosine_similarity(clean, after_eval, dim=0) > 0.99


def test_kernel_switches_reach_trainer_and_liger_needs_a_gpu():
    from sweep.settings.compose import ConfigError, compose
    from sweep.trial.methods import training_args
    from tests.conftest import tiny

    on = compose(tiny("train.compile=true")).train
    assert training_args(on, 1e-3, 4)["torch_compile"] is True
    assert "torch_compile" not in training_args(compose(tiny()).train, 1e-3, 4)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="train.liger") as err:
            compose(tiny("train.liger=true"))
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("kbit_fp32", [False, True])
def test_qlora_keeps_embeddings_and_output_layer_in_the_compute_dtype(tiny_path, kbit_fp32):
    """The QLoRA reference's dtypes under bf16 autocast: 4-bit linears, bf16 embeddings and
    output layer, fp32 norms and adapters; method.kbit_fp32=true: PEFT's, all fp32."""
    import bitsandbytes as bnb

    from sweep.planning import recipe

    cfg = compose(["model=tiny_llama", "method=qlora", "method.r=4",
                   "train.precision=bf16-mixed", f"method.kbit_fp32={kbit_fp32}"])  # fmt: skip
    rec = recipe.of(cfg, cuda=False)
    assert rec.embed_dtype == ("fp32" if kbit_fp32 else "bf16")
    base = models.load_model(
        tiny_path, methods.load_dtype(rec), **methods.load_kwargs(cfg.method, "bf16-mixed")
    )
    model = methods.apply(base, cfg.method, cfg.train)
    inner = model.get_base_model()
    embed = torch.float32 if kbit_fp32 else torch.bfloat16
    assert inner.get_input_embeddings().weight.dtype == embed
    assert inner.get_output_embeddings().weight.dtype == embed
    norms = [m for m in inner.modules() if "norm" in type(m).__name__.lower()]
    assert norms and all(m.weight.dtype == torch.float32 for m in norms)
    assert all(isinstance(m.base_layer, bnb.nn.Linear4bit) for m in inner.modules()
               if hasattr(m, "lora_A"))  # fmt: skip
    adapters = [p for n, p in model.named_parameters() if "lora_" in n]
    assert adapters and all(p.dtype == torch.float32 and p.requires_grad for p in adapters)


def test_qlora_in_the_compute_dtype_still_learns(tmp_path):
    from sweep.trial.run import run_trial
    from tests.conftest import tiny

    cfg = compose(tiny("method=qlora", "method.lr=0.01", "train.steps=12",
                       "train.precision=bf16-mixed", "eval.base=false"))  # fmt: skip
    result = run_trial(cfg, tmp_path)
    assert result.status == "ok", result.train.get("error")
    losses = result.train["loss_curve"]
    assert result.run["embed_dtype"] == "bf16"
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
