"""train.packing: a batch packed into rows gives the padded batch's loss and gradients, keeps
attention inside each example, and a trial records it."""

import dataclasses

import pytest
import torch

from sweep.results.record import load
from sweep.results.tracking import trial_params
from sweep.settings.compose import ConfigError, compose
from sweep.settings.validate import pack_row_len, resolve_packing
from sweep.trial import batches, data, methods, models
from sweep.trial.run import run_trial
from tests.conftest import tiny

# fp32 on CPU: packed and padded sum the same terms in a different order (other rows, other
# widths), so they agree to rounding, not bit for bit. Measured on the tiny model (full and
# LoRA, both loss_logits, every ROW_LENS): loss within 2.1e-7 relative, gradients within 3.6e-7
# of their largest element; the bounds leave room for other CPUs' kernels.
LOSS_RTOL = 1e-5  # mean loss over the answer tokens, relative
GRAD_RTOL = 1e-5  # max |grad difference| over all trained weights, relative to max |grad|

# None: one row; 0: rows of up to the batch's longest example (sdpa's default): 3 rows of 92,
# 77 and 50 tokens; 128: 2 rows of 117 and 102 tokens
ROW_LENS = [None, 0, 128]


@pytest.fixture(scope="module")
def tok():
    return models.char_tokenizer()


def _rows(tok):
    """Five examples of clearly different lengths (the padded batch is mostly padding)."""
    examples = [
        data.Example("What is 12 + 7?", "19"),
        data.Example("Add these numbers: 3 + 45 + 2 + 11 + 9, and answer with the sum only.", "70"),
        data.Example("1+1", "2"),
        data.Example("Name a colour.", "blue"),
        data.Example("2*3", "6"),
    ]
    return [batches.encode(tok, ex, 128, None) for ex in examples]


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


def test_rows_are_packed_first_fit_decreasing():
    assert batches.pack_rows([5, 9, 3, 4, 1], 0) == [[1], [0, 3], [2, 4]]  # rows of up to 9
    assert batches.pack_rows([5, 9, 3, 4, 1], 12) == [[1, 2], [0, 3, 4]]
    assert batches.pack_rows([5, 9, 3], None) == [[1, 0, 2]]  # one row
    assert batches.pack_rows([7, 7, 7], 0) == [[0], [1], [2]]  # equal lengths: the padded batch


@pytest.mark.parametrize("row_len", ROW_LENS)
def test_packed_rows_hold_every_example_whole(tok, row_len):
    rows = _rows(tok)
    lengths = [len(r["input_ids"]) for r in rows]
    b = batches.packed_collate(tok.pad_token_id, False, row_len)(rows)
    ids, pos, labels = b["input_ids"], b["position_ids"], b["labels"]
    assert "attention_mask" not in b and b["use_cache"] is False
    assert b[batches.REAL_TOKENS] == sum(lengths) == batches.batch_tokens(b)
    assert ids.shape[-1] <= (sum(lengths) if row_len is None else max(row_len, max(lengths)))
    assert ids.shape[0] == len(batches.pack_rows(lengths, row_len)) <= len(rows)
    assert int((pos == 0).sum()) == len(rows)  # the padding goes on counting: no new example
    assert (labels != data.IGNORE).sum() == sum(
        sum(x != data.IGNORE for x in r["labels"]) for r in rows
    )
    found = []
    for r in range(ids.shape[0]):
        starts = (pos[r] == 0).nonzero().flatten().tolist()
        ends = [*starts[1:], None]
        for s, e in zip(starts, ends, strict=True):
            seg = ids[r, s:e].tolist()
            n = next(
                i for i, row in enumerate(rows) if seg[: len(row["input_ids"])] == row["input_ids"]
            )
            found.append(n)
            assert labels[r, s] == data.IGNORE  # no example predicts across a boundary
    assert sorted(found) == list(range(len(rows)))


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("answer_logits", [False, True])
@pytest.mark.parametrize("row_len", ROW_LENS)
def test_packed_and_padded_batches_give_the_same_loss_and_gradients(
    tok, method, answer_logits, row_len
):
    model = _model(method)
    rows = _rows(tok)
    padded = batches.collate(tok.pad_token_id)(rows)
    packed = batches.packed_collate(tok.pad_token_id, answer_logits, row_len)(rows)
    if answer_logits:  # logits only where a label is, plus the last row's last position
        answer = sum(sum(x != data.IGNORE for x in r["labels"]) for r in rows)
        assert int(packed["logits_to_keep"].sum()) == answer + 1
        assert packed["labels"].shape == (1, answer + 1)
    losses, grads = [], []
    for batch in (padded, packed):
        model.zero_grad()
        out = model(**batches.model_inputs(batch))
        out.loss.backward()
        losses.append(out.loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
    assert losses[1] == pytest.approx(float(losses[0]), rel=LOSS_RTOL)
    scale = grads[0].abs().max()
    assert scale > 0
    assert (grads[1] - grads[0]).abs().max() <= GRAD_RTOL * scale


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("row_len", [None, 0])
def test_attention_stays_inside_each_example(tok, attn, row_len):
    """Changing one example changes no other example's logits, in its row or in another, and
    each is as if alone in its batch."""
    model = _model("full", attn).eval()
    rows = _rows(tok)
    other = dict(rows[3], input_ids=[(i + 7) % 40 + 4 for i in rows[3]["input_ids"]])
    collate = batches.packed_collate(tok.pad_token_id, False, row_len)

    def per_example(batch_rows):  # each example's logits, by its index in batch_rows
        b = collate(batch_rows)
        with torch.no_grad():
            logits = model(**batches.model_inputs(b)).logits
        pos, ids, out = b["position_ids"], b["input_ids"], {}
        for r in range(pos.shape[0]):
            for s in (pos[r] == 0).nonzero().flatten().tolist():
                i = next(
                    i
                    for i, row in enumerate(batch_rows)
                    if ids[r, s : s + len(row["input_ids"])].tolist() == row["input_ids"]
                )
                out[i] = logits[r, s : s + len(batch_rows[i]["input_ids"])]
        return out

    a = per_example(rows)
    b = per_example([*rows[:3], other, rows[4]])
    assert collate(rows)["input_ids"].shape[0] == (1 if row_len is None else 3)
    assert sorted(a) == sorted(b) == list(range(len(rows)))
    for i, row in enumerate(rows):
        with torch.no_grad():
            alone = model(input_ids=torch.tensor([row["input_ids"]])).logits[0]
        assert torch.allclose(a[i], alone, atol=1e-5)  # as if alone in its batch
        if i != 3:  # every other example's logits as they were
            assert torch.allclose(a[i], b[i], atol=1e-6)
    assert not torch.allclose(a[3], b[3])  # example 3 changed, and so did its logits


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
    assert led["padded"] is False and led["packed"] is True
    assert 1 <= led["batch_shape"][0] <= 4  # rows of up to the batch's longest example
    assert led["sequences"] == 4  # train.batch_size examples in the rows
    assert padded.train["ledger"]["batch_shape"][0] == 4 and not padded.train["ledger"]["packed"]
    assert led["batch_shape"][1] <= padded.train["ledger"]["batch_shape"][1]
    pm, dm = packed.metrics, padded.metrics
    assert pm["tokens_seen"] == dm["tokens_seen"]  # the same non-padding tokens, same batches
    assert pm["train_tokens_per_s"] > 0 and pm["plan_saved_activations_gib"] > 0
    assert pm["first_loss"] == pytest.approx(dm["first_loss"], rel=1e-4)  # LoRA B = 0 at first


def test_packing_is_validated_and_auto_resolves_from_the_model():
    with pytest.raises(ConfigError) as err:
        compose(tiny("train.packing=maybe"))
    msg = str(err.value)
    assert "\n" not in msg and "train.packing" in msg
    assert all(v in msg for v in ("auto", "true", "false"))
    cfg = compose(tiny())  # auto under sdpa: packed, rows of up to the batch's longest example
    assert cfg.train.packing == "auto" and resolve_packing(cfg) is True
    assert pack_row_len(cfg) == 0
    long_rows = dataclasses.replace(cfg.train, max_seq_len=1024)
    assert resolve_packing(dataclasses.replace(cfg, train=long_rows)) is True
    flash = dataclasses.replace(cfg.model, attn_implementation="flash_attention_2")
    assert resolve_packing(dataclasses.replace(cfg, model=flash)) is True
    assert pack_row_len(dataclasses.replace(cfg, model=flash)) is None  # one row: varlen
    remote = dataclasses.replace(cfg.model, trust_remote_code=True)
    assert resolve_packing(dataclasses.replace(cfg, model=remote)) is False
    assert resolve_packing(compose(tiny("train.packing=false"))) is False
    assert resolve_packing(compose(tiny("train.packing=true", "model.trust_remote_code=true")))
