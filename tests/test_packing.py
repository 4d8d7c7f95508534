"""train.packing: a batch as one unpadded row gives the padded batch's loss and gradients, keeps
attention inside each example, and a trial records it."""

import dataclasses

import pytest
import torch

from sweep import data, methods, models
from sweep.config import ConfigError, compose
from sweep.record import load
from sweep.tracking import trial_params
from sweep.trial import run_trial
from sweep.validate import resolve_packing

from .conftest import tiny

# fp32 on CPU: packed and padded sum the same terms in a different order (one row against
# several), so they agree to rounding, not bit for bit.
LOSS_RTOL = 1e-5  # mean loss over the answer tokens, relative
GRAD_RTOL = 1e-5  # max |grad difference| over all trained weights, relative to max |grad|


@pytest.fixture(scope="module")
def tok():
    return models.char_tokenizer()


def _rows(tok):
    """Three examples of clearly different lengths (the padded batch is mostly padding)."""
    examples = [
        data.Example("What is 12 + 7?", "19"),
        data.Example("Add these numbers: 3 + 45 + 2 + 11 + 9, and answer with the sum only.", "70"),
        data.Example("1+1", "2"),
    ]
    return [data.encode(tok, ex, 128, None) for ex in examples]


def _model(method: str, attn: str = "sdpa"):
    cfg = compose(tiny(f"method={method}", "train.precision=fp32"))
    path = models.resolve(cfg.model, cfg.cache_dir)
    torch.manual_seed(0)
    base = models.load_model(path, torch.float32, False, attn_implementation=attn)
    model = methods.apply(base, cfg.method, cfg.train)
    if method == "lora":  # B starts at zero: move it so the adapters change the outputs
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02)
    return model


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("answer_logits", [False, True])
def test_packed_and_padded_batches_give_the_same_loss_and_gradients(tok, method, answer_logits):
    model = _model(method)
    rows = _rows(tok)
    padded = data.collate(tok.pad_token_id)(rows)
    packed = data.packed_collate(answer_logits)(rows)
    total = sum(len(r["input_ids"]) for r in rows)
    assert packed["input_ids"].shape == (1, total) and "attention_mask" not in packed
    starts = [0, *torch.tensor([len(r["input_ids"]) for r in rows]).cumsum(0)[:-1].tolist()]
    assert packed["position_ids"][0, starts].tolist() == [0, 0, 0]
    if answer_logits:  # logits only where a label is, plus the row's last position
        answer = sum(sum(x != data.IGNORE for x in r["labels"]) for r in rows)
        assert packed["logits_to_keep"].numel() == answer + 1
        assert packed["labels"].shape == (1, answer + 1)
    losses, grads = [], []
    for batch in (padded, packed):
        model.zero_grad()
        out = model(**batch)
        out.loss.backward()
        losses.append(out.loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
    assert losses[1] == pytest.approx(float(losses[0]), rel=LOSS_RTOL)
    scale = grads[0].abs().max()
    assert scale > 0
    assert (grads[1] - grads[0]).abs().max() <= GRAD_RTOL * scale


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_attention_stays_inside_each_example(tok, attn):
    model = _model("full", attn).eval()
    rows = _rows(tok)[:2]
    n1 = len(rows[0]["input_ids"])
    other = dict(rows[0], input_ids=[(i + 7) % 40 + 4 for i in rows[0]["input_ids"]])
    with torch.no_grad():
        a = model(**data.packed_collate()(rows)).logits[0]
        b = model(**data.packed_collate()([other, rows[1]])).logits[0]
        alone = model(input_ids=torch.tensor([rows[1]["input_ids"]])).logits[0]
    assert not torch.allclose(a[:n1], b[:n1])  # example 1 changed, and so did its logits
    assert torch.allclose(a[n1:], b[n1:], atol=1e-6)  # example 2's did not
    assert torch.allclose(a[n1:], alone, atol=1e-5)  # as if it were alone in its batch


def test_packed_and_padded_trials_both_run_and_record_it(tmp_path):
    results = {}
    for flag in ("true", "false"):
        cfg = compose(tiny("method=lora", f"train.packing={flag}", "eval.base=false"))
        result = run_trial(cfg, tmp_path / flag)
        assert result.status == "ok", result.train.get("error")
        results[flag] = load(tmp_path / flag / "result.json")
    packed, padded = results["true"], results["false"]
    assert packed.run["packing"] is True and padded.run["packing"] is False
    assert trial_params(packed.run)["packing"] == "True"  # an MLflow param of the trial
    led = packed.train["ledger"]
    assert led["batch_shape"][0] == 1 and led["padded"] is False and led["packed"] is True
    assert led["sequences"] == 4  # train.batch_size examples in the row
    assert padded.train["ledger"]["batch_shape"][0] == 4 and not padded.train["ledger"]["packed"]
    pm, dm = packed.metrics, padded.metrics
    assert pm["tokens_seen"] == dm["tokens_seen"]  # the same non-padding tokens, same batches
    assert pm["train_tokens_per_s"] > 0 and pm["plan_saved_activations_gib"] > 0
    assert pm["first_loss"] == pytest.approx(dm["first_loss"], rel=1e-4)  # LoRA B = 0 at first


def test_packing_is_validated_and_auto_resolves_from_the_attention():
    with pytest.raises(ConfigError) as err:
        compose(tiny("train.packing=maybe"))
    msg = str(err.value)
    assert "\n" not in msg and "train.packing" in msg
    assert all(v in msg for v in ("auto", "true", "false"))
    cfg = compose(tiny())  # auto, 4 x 48 tokens under sdpa: packed
    assert cfg.train.packing == "auto" and resolve_packing(cfg) is True
    long_rows = dataclasses.replace(cfg.train, max_seq_len=1024)
    assert resolve_packing(dataclasses.replace(cfg, train=long_rows)) is False
    flash = dataclasses.replace(cfg.model, attn_implementation="flash_attention_2")
    assert resolve_packing(dataclasses.replace(cfg, model=flash, train=long_rows)) is True
    remote = dataclasses.replace(cfg.model, trust_remote_code=True)
    assert resolve_packing(dataclasses.replace(cfg, model=remote)) is False
    assert resolve_packing(compose(tiny("train.packing=false"))) is False
