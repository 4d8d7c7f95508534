"""The memory planner: arithmetic by hand, parameter counts, orderings, GPU fit, errors.

python -m pytest -q tests/planning/test_plan.py
"""

from __future__ import annotations

import pytest

from sweep.__main__ import main
from sweep.cli import plan as cli
from sweep.planning import activations as Act
from sweep.planning import arch as A
from sweep.planning import plan as P
from sweep.planning import recipe
from sweep.planning.arch import Arch, load_arch
from sweep.planning.recipe import LINEARS, Recipe
from sweep.settings.compose import CONF_DIR, ConfigError
from sweep.settings.schema import GpuClass, MethodConfig, QuantConfig

# 10-token vocab, hidden 8, intermediate 16, 2 blocks, 2 heads of dim 4, 1 kv head, untied.
TOY = Arch(vocab=10, hidden=8, intermediate=16, layers=2, heads=2, kv_heads=1)
GIB = 1024**3
GPUS = [
    GpuClass("T4 16GB", 16, 0.35),
    GpuClass("L4 24GB", 24, 0.80),
    GpuClass("A100 80GB", 80, 1.90),
    GpuClass("H100 80GB", 80, 2.50),
]


def R(kind: str, r: int = 0, precision: str = "fp32", targets=LINEARS, base: str = "auto"):
    """A recipe as sweep.planning.recipe.of builds it on CUDA for method=<kind> method.r=<r>."""
    method = MethodConfig(name=kind, r=r, quant=QuantConfig() if kind == "qlora" else None)
    base_dtype, trainable_dtype = recipe.dtypes(method, precision, base)
    return Recipe(
        method=kind,
        r=0 if kind == "full" else r,
        targets=() if kind == "full" else targets,
        quant_type="nf4" if kind == "qlora" else None,
        double_quant=kind == "qlora",
        optimizer="paged_adamw_8bit" if kind == "qlora" else "adamw_torch",
        precision=precision,
        base_dtype=base_dtype,
        trainable_dtype=trainable_dtype,
    )


def toy_settings(**kw) -> P.Settings:
    base = dict(batch_size=2, seq_len=3, precision="fp32", optimizer="adamw_torch")
    return P.Settings(**{**base, **kw})


def test_toy_full_fp32_by_hand():
    # Linear weights per block: q 8x8=64, k 8x4=32, v 8x4=32, o 8x8=64, gate/up/down 8x16=128 each
    #   = 576; two blocks = 1152. Others: embeddings + lm_head 2*10*8=160, norms (2*2+1)*8=40.
    assert (A.linear_params(TOY), A.other_params(TOY), A.total_params(TOY)) == (1152, 200, 1352)
    s = toy_settings()
    row = P.plan_row(TOY, s, R("full", 0), GPUS)
    weights = grads = 4 * 1352  # fp32 weights, fp32 gradients: 5408 bytes each
    states, step = 2 * 4 * 1352, 4 * 1352  # AdamW m and v; foreach's sqrt(v) buffer
    # Activations per token per block (fp32): norms 6h=48, q, attention out, k, v expanded to
    # both heads 4*8=32, MLP 4i=64 -> 144 elements = 576 bytes, + 2 rsqrt (8 bytes)
    # + log-sum-exp 2 heads (8 bytes) + additive padding mask seq 3 (12 bytes) = 604 bytes.
    per_token = 4 * (6 * 8 + 4 * 8 + 4 * 16) + 8 + 4 * 2 + 4 * 3
    assert per_token == 604 == Act.layer_bytes_per_token(TOY, s, R("full"))
    loss = 3 * 4 * 2 * 3 * 10  # log-probs, their gradient, the logits' gradient: 720 bytes
    acts = 2 * (2 * 3) * per_token + loss  # 2 blocks x 6 tokens + loss = 7968
    # Peak: start of the backward (activations + the lm_head's fp32 gradient, 4*10*8 bytes) or
    # the optimizer step (every gradient + the step buffer): max(8288, 10816) -> 27040 bytes.
    allocated = weights + states + max(acts + 4 * 10 * 8, grads + step)
    assert allocated == 27040
    assert row.activations_gib * GIB == pytest.approx(acts)
    assert row.total_gib * GIB == pytest.approx(allocated * 1.1 + 0.5 * GIB)
    assert (row.weights_gib, row.grads_gib, row.optimizer_gib, row.step_gib) == pytest.approx(
        (weights / GIB, grads / GIB, states / GIB, step / GIB)
    )


def test_toy_lora_and_qlora_by_hand():
    s = toy_settings()
    # LoRA r=2 per block: 2 * [(8+8) + (8+4) + (8+4) + (8+8) + (8+16) * 3] = 256; 2 blocks = 512.
    assert sum(A.lora_tensors(TOY, 2)) == 512
    lora = P.plan_row(TOY, s, R("lora", 2), GPUS)
    assert lora.weights_gib * GIB == pytest.approx(4 * 1352 + 4 * 512)  # base + fp32 adapters
    assert (lora.grads_gib * GIB, lora.optimizer_gib * GIB) == pytest.approx((4 * 512, 8 * 512))
    # QLoRA: 1152 NF4 weights = 576 bytes; 1152/64 = 18 absmax blocks, 8-bit with double
    # quantization (18 bytes) + 18/256 fp32 second-level constants (0.28 bytes); embeddings,
    # lm_head and norms fp32 after k-bit preparation (800 bytes); adapters fp32 (2048 bytes).
    qlora = P.plan_row(TOY, s, R("qlora", 2), GPUS)
    assert qlora.weights_gib * GIB == pytest.approx(576 + 18 + 18 / 256 * 4 + 800 + 2048)
    # paged 8-bit AdamW keeps fp32 states for tensors under 4096 elements: all of these.
    assert qlora.optimizer_gib * GIB == pytest.approx(8 * 512)
    assert P.adam8_state_bytes(4096) == 2 * (4096 + 4 * 16)


def test_lora_param_count_is_r_times_in_plus_out():
    arch = load_arch("llama2_7b")
    by_hand = 32 * 16 * (4 * (4096 + 4096) + 3 * (4096 + 11008))
    assert sum(A.lora_tensors(arch, 16)) == by_hand == 39_976_960  # what peft prints for 7B


def test_counts_match_the_real_model_and_peft():
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(hf_config(TOY, layers=2))
    assert sum(p.numel() for p in model.parameters()) == A.total_params(TOY)
    peft = get_peft_model(model, LoraConfig(r=2, target_modules="all-linear"))
    trainable = sum(p.numel() for p in peft.parameters() if p.requires_grad)
    assert trainable == sum(A.lora_tensors(TOY, 2))
    assert isinstance(model.config, LlamaConfig)


def hf_config(arch: Arch, layers: int):
    """The transformers config of `arch` with `layers` blocks (sweep.planning.arch.llama_config)."""
    from dataclasses import replace

    return A.llama_config(replace(arch, layers=layers), max_position_embeddings=64)


def saved_bytes(
    arch: Arch, layers: int, precision: str, approach: str, batch: int, seq: int, base16=False
):
    """Bytes torch keeps for backward (parameters excluded), through saved-tensor hooks;
    `base16`: a bf16 base under LoRA (the recipe's base dtype under bf16-mixed)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(hf_config(arch, layers))
    model = model.to(torch.bfloat16 if precision == "bf16" or base16 else torch.float32)
    if approach == "lora":
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(0, arch.vocab, (batch, seq))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # a padded batch, as the harness trains on
    mixed = precision == "bf16-mixed"
    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    with hooks, torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed):
        model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
    return sum(saved.values())


@pytest.mark.parametrize(
    "precision, approach, base",
    [
        ("fp32", "full", "auto"),
        ("bf16", "full", "auto"),
        ("bf16-mixed", "full", "auto"),
        ("fp32", "lora", "auto"),
        ("bf16", "lora", "auto"),
        ("bf16-mixed", "lora", "auto"),  # the default on a bf16 GPU: a bf16 frozen base
        ("bf16-mixed", "lora", "fp32"),  # train.base_dtype=fp32: fp32 base, autocast copies
    ],
)
def test_block_activations_match_torch_saved_tensors(precision, approach, base):
    """One more block adds exactly what layer_bytes_per_token (+ weight copies) predicts."""
    arch = Arch(vocab=50, hidden=48, intermediate=136, layers=1, heads=4, kv_heads=2)
    batch, seq = 3, 20
    s = P.Settings(batch_size=batch, seq_len=seq, precision=precision)
    rec = R(approach, 4, precision, base=base)
    base16 = rec.base_dtype == "bf16" and precision != "bf16"
    one_block = saved_bytes(arch, 3, precision, approach, batch, seq, base16) - saved_bytes(
        arch, 2, precision, approach, batch, seq, base16
    )
    predicted = batch * seq * Act.layer_bytes_per_token(arch, s, rec)
    two = Arch(vocab=50, hidden=48, intermediate=136, layers=2, heads=4, kv_heads=2)
    predicted += Act.weight_copy_bytes(two, s, rec) - Act.weight_copy_bytes(
        arch, s, rec
    )  # per block
    assert one_block == predicted


def test_quantized_below_lora_below_full():
    arch, s = load_arch("llama2_7b"), P.Settings()
    full, lora, qlora = (
        P.plan_row(arch, s, R(a, 16, s.mode), GPUS) for a in ("full", "lora", "qlora")
    )
    # Precision by role under bf16-mixed: full FT keeps fp32 weights (master copies), LoRA's
    # frozen base is bf16 plus fp32 adapters, QLoRA's base is 4-bit.
    assert qlora.weights_gib < lora.weights_gib < full.weights_gib
    adapters = 4 * sum(A.lora_tensors(arch, 16)) / GIB
    assert lora.weights_gib - full.weights_gib / 2 == pytest.approx(adapters)
    fp32_base = P.plan_row(arch, s, R("lora", 16, s.mode, base="fp32"), GPUS)  # base_dtype=fp32
    assert fp32_base.weights_gib - full.weights_gib == pytest.approx(adapters)
    assert fp32_base.total_gib > lora.total_gib + full.weights_gib / 2  # + autocast's copies

    def training_state(row: P.Row) -> float:  # what training adds on top of the weights
        return row.grads_gib + row.optimizer_gib

    assert training_state(qlora) < training_state(lora) < training_state(full)
    assert qlora.total_gib < lora.total_gib < full.total_gib


def test_gradient_checkpointing_lowers_activations():
    arch = load_arch("llama2_7b")
    for approach in ("full", "lora", "qlora"):
        for precision in ("fp32", "bf16", "bf16-mixed"):
            off = P.Settings(batch_size=4, seq_len=512, precision=precision)
            on = P.Settings(
                batch_size=4, seq_len=512, precision=precision, gradient_checkpointing=True
            )
            a_off = Act.activation_bytes(arch, off, R(approach, 16, precision))
            a_on = Act.activation_bytes(arch, on, R(approach, 16, precision))
            assert a_on < a_off, (approach, precision)


def test_smallest_gpu_that_fits():
    assert P.smallest_gpu(10.0, GPUS) == "T4 16GB"
    assert P.smallest_gpu(16.0, GPUS) == "T4 16GB"
    assert P.smallest_gpu(16.01, GPUS) == "L4 24GB"
    assert P.smallest_gpu(60, GPUS) == "A100 80GB"  # same memory as H100: the cheaper one
    assert P.smallest_gpu(500, GPUS) == "none listed"
    shipped = P.load_gpus()
    assert shipped and shipped[0].name == "T4 16GB"
    table = P.plan(load_arch("smollm2_135m"), P.Settings(), shipped)
    assert list(table["gpu"]) == ["T4 16GB"] * 6  # full, full in backward, 3 LoRA, QLoRA


def test_every_shipped_model_has_an_architecture():
    names = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml") if p.stem != "hf")
    assert {"llama2_7b", "llama2_70b", "llama3_8b", "qwen2_5_0_5b", "tiny_llama"} <= set(names)
    for name in names:
        assert A.total_params(load_arch(name)) > 0
    sizes = {n: A.total_params(load_arch(n)) / 1e9 for n in ("llama2_7b", "llama2_70b")}
    assert sizes["llama2_7b"] == pytest.approx(6.74, abs=0.01)
    assert sizes["llama2_70b"] == pytest.approx(68.98, abs=0.01)
    assert A.total_params(load_arch("smollm2_135m")) == 134_515_008
    tiny = load_arch("tiny_llama")
    assert (tiny.vocab, tiny.hidden, tiny.layers, tiny.tie_embeddings) == (102, 64, 2, True)


def test_unknown_model_is_one_clear_line():
    with pytest.raises(ConfigError, match=r"not in conf/model/ \(did you mean llama2_7b\?\)"):
        load_arch("llama2_7")  # offline in tests: no hub lookup succeeds
    with pytest.raises(ConfigError, match="model=hf has no arch block"):
        load_arch("hf")


def test_hub_ids_and_local_directories(tmp_path, monkeypatch):
    hf_config(TOY, layers=2).save_pretrained(tmp_path)  # a config.json, as a hub repo has
    assert load_arch(str(tmp_path)) == TOY

    def no_network(*args, **kwargs):
        raise OSError("unreachable")

    monkeypatch.setattr(A.socket, "create_connection", no_network)
    with pytest.raises(ConfigError, match="could not be read: no network: cannot reach"):
        load_arch("some-org/not-cached-model")


def test_settings_from_the_command_line():
    s = cli.parse_settings(
        ["batch_size=4", "train.max_seq_len=512", "ranks=[8,32]", "gradient_checkpointing=true"]
    )
    assert (s.batch_size, s.seq_len, s.ranks, s.gradient_checkpointing) == (4, 512, [8, 32], True)
    with pytest.raises(ConfigError, match=r"bach_size=4: not a plan setting \(did you mean batch"):
        cli.parse_settings(["bach_size=4"])
    with pytest.raises(ConfigError, match="optimizer='adam' is not allowed"):
        cli.parse_settings(["optimizer=adam"])


def test_make_plan_prints_the_table(capsys):
    assert main(["plan", "llama2_7b", "batch_size=4", "seq_len=512"]) == 0
    out = capsys.readouterr().out
    assert "plan llama2_7b: 6.74B params" in out and "batch 4 x seq 512" in out
    assert out.count("| lora ") == 3 and "| qlora " in out and "| full " in out
    assert main(["plan", "nosuch_model_xyz"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model 'nosuch_model_xyz': not in conf/model/")
    assert len(err.strip().splitlines()) == 1


def test_train_flops_per_token_by_hand() -> None:
    # Seven linears of a 4-wide block with intermediate 8: 4 x 16 + 3 x 32 = 160 weights; tied
    # lm_head 10 x 4 = 40: 200 matmul weights. Attention: 12 x 1 layer x 3 tokens x 4 wide = 144.
    arch = Arch(
        vocab=10, hidden=4, intermediate=8, layers=1, heads=2, kv_heads=2, tie_embeddings=True
    )
    assert A.train_flops_per_token(arch, R("full", 0), 3) == 6 * 200 + 144
    # LoRA r=1 adapters: (4+4) x 4 for q, k, v, o; (4+8) x 3 for gate, up, down: 68 weights.
    assert sum(A.lora_tensors(arch, 1)) == 68
    assert A.train_flops_per_token(arch, R("lora", 1), 3) == 4 * (200 + 68) + 2 * 68 + 144
    assert A.train_flops_per_token(arch, R("qlora", 1), 3) == A.train_flops_per_token(
        arch, R("lora", 1), 3
    )


def test_peak_tflops_matches_the_device_name_and_precision() -> None:
    from sweep.trial.measure import peak_tflops

    gpus = P.load_gpus()
    assert peak_tflops("NVIDIA H200", "bf16-mixed", gpus) == 989
    assert peak_tflops("NVIDIA H200", "fp32", gpus) == 67
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "bf16", gpus) == 312
    assert peak_tflops("Tesla T4", "fp16-mixed", gpus) == 65
    assert peak_tflops("NVIDIA GeForce RTX 5090", "bf16-mixed", gpus) is None
    assert peak_tflops("NVIDIA H200", "bf16-mixed", [GpuClass(name="H200 141GB")]) is None


def _plan_8b(**kw) -> dict[str, P.Row]:
    s = P.Settings(batch_size=2, seq_len=2048, precision="bf16", gradient_checkpointing=True, **kw)
    rows = [P.plan_row(load_arch("llama3_8b"), s, rec, P.load_gpus()) for rec in P.plan_recipes(s)]
    return {f"{r.approach} {r.rank or ''}".strip(): r for r in rows}


def test_an_8b_lora_and_qlora_fit_one_24gb_card_at_2k_context_with_the_savers():
    """Llama-3-8B, batch 2 x 2048, bf16, gradient checkpointing: the chunked loss, QLoRA's
    compute-dtype embeddings and (full FT) paged 8-bit AdamW updated in backward."""
    rows = _plan_8b()
    assert rows["lora 16"].total_gib <= 20
    assert rows["qlora 16"].total_gib <= 10
    lean = rows["full (in backward)"]
    assert lean.total_gib <= 22 and lean.paged_gib > 14  # states apart: they may live in host
    assert lean.optimizer == "paged_adamw_8bit" and "states paged to host" in lean.gpu
    assert lean.grads_gib < 1.0  # one weight's gradient at a time (the embeddings')
    without = _plan_8b(loss_impl="full", kbit_fp32=True, lean_full=False)
    assert "full (in backward)" not in without
    assert without["lora 16"].total_gib > 24 and without["qlora 16"].total_gib > 16


def test_paged_states_are_only_those_bitsandbytes_pages():
    shapes = [(4096, 4096), (4096,)]  # a matrix (paged) and a norm (under 1e5 elements: not)
    assert P.paged_bytes(shapes, "adamw_torch_fused", 4) == 0
    paged = P.paged_bytes(shapes, "paged_adamw_8bit", 4)
    assert paged == P.adam8_state_bytes(4096 * 4096)


def _qlora_saved(arch: Arch, precision: str, kbit_fp32: bool) -> int:
    """Saved bytes of one forward and backward of a bitsandbytes 4-bit model on the CPU, as
    sweep.trial.methods prepares it."""
    import tempfile

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    from sweep.planning.ledger import SavedTensors
    from sweep.trial import methods

    torch.manual_seed(0)
    path = tempfile.mkdtemp()
    LlamaForCausalLM(hf_config(arch, arch.layers)).save_pretrained(path)
    m = MethodConfig(name="qlora", r=4, quant=QuantConfig(), kbit_fp32=kbit_fp32)
    rec = recipe.of_method(m, precision, cuda=False)
    model = LlamaForCausalLM.from_pretrained(
        path, dtype=methods.load_dtype(rec), **methods.load_kwargs(m, precision)
    )
    methods.keep_4bit_trainable(model)
    methods.prepare_4bit(model, kbit_fp32, autocast=precision.endswith("-mixed"))
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear")).train()
    ids = torch.randint(0, arch.vocab, (3, 20))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    mixed = precision.endswith("-mixed")
    with SavedTensors(model) as saved, torch.autocast("cpu", torch.bfloat16, enabled=mixed):
        model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
    return saved.bytes


@pytest.mark.parametrize(
    ("precision", "kbit_fp32"),
    [("bf16-mixed", False), ("bf16-mixed", True), ("bf16", False), ("fp32", False)],
)
def test_qlora_block_activations_match_bitsandbytes_on_cpu(precision, kbit_fp32):
    """One more 4-bit block adds what layer_bytes_per_token and the adapters' weight copies
    predict, whatever the embeddings' dtype."""
    one, two = (Arch(vocab=64, hidden=128, intermediate=256, layers=n, heads=4, kv_heads=2)
                for n in (2, 3))  # fmt: skip
    block = _qlora_saved(two, precision, kbit_fp32) - _qlora_saved(one, precision, kbit_fp32)
    m = MethodConfig(name="qlora", r=4, quant=QuantConfig(), kbit_fp32=kbit_fp32)
    rec = recipe.of_method(m, precision, cuda=False)
    s = P.Settings(batch_size=3, seq_len=20, precision=precision)
    predicted = 3 * 20 * Act.layer_bytes_per_token(two, s, rec)
    predicted += Act.weight_copy_bytes(two, s, rec) - Act.weight_copy_bytes(one, s, rec)
    assert block == predicted
