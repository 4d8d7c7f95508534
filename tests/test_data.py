import pytest

from sweep import data, models
from sweep.config import ConfigError, compose


@pytest.fixture(scope="module")
def tok():
    return models.char_tokenizer()


def test_loss_only_on_answer_tokens(tok):
    ex = data.Example("2 + 3 =", "5")
    row = data.encode(tok, ex, 512, None)
    prompt = data.prompt_ids(tok, ex.prompt, None)
    assert row["input_ids"][: len(prompt)] == prompt
    assert all(label == data.IGNORE for label in row["labels"][: len(prompt)])
    answer = [i for i, lab in zip(row["input_ids"], row["labels"]) if lab != data.IGNORE]
    assert tok.decode(answer, skip_special_tokens=True).strip() == "5"


def test_truncation_keeps_the_answer(tok):
    ex = data.Example("x" * 200, "42")
    row = data.encode(tok, ex, 32, None)
    assert len(row["input_ids"]) == 32
    kept = [i for i, lab in zip(row["input_ids"], row["labels"]) if lab != data.IGNORE]
    assert tok.decode(kept, skip_special_tokens=True).strip() == "42"


def test_collate_pads_right_and_masks_padding(tok):
    rows = [
        data.encode(tok, data.Example("1+1", "2"), 64, None),
        data.encode(tok, data.Example("10+10", "20"), 64, None),
    ]
    batch = data.collate(tok.pad_token_id)(rows)
    n0 = len(rows[0]["input_ids"])
    assert batch["input_ids"].shape[1] == max(len(r["input_ids"]) for r in rows)
    assert batch["attention_mask"][0, n0:].sum() == 0
    assert (batch["labels"][0, n0:] == data.IGNORE).all()


@pytest.mark.parametrize("method", ["full", "lora"])
def test_answer_logits_give_the_same_loss_and_gradients(tok, method):
    # train.loss_logits=answer: logits only from the token before the first answer token on;
    # prompt positions carry no loss, so loss and gradients equal those of full logits.
    import torch

    from sweep import methods

    from .conftest import tiny

    cfg = compose(tiny(f"method={method}", "train.precision=fp32"))
    path = models.resolve(cfg.model, cfg.cache_dir)
    torch.manual_seed(0)
    model = methods.apply(models.load_model(path, torch.float32, False), cfg.method, cfg.train)
    rows = [
        data.encode(tok, data.Example("What is 12 + 7?", "19"), 64, None),
        data.encode(tok, data.Example("What is 3 + 45 + 2?", "50"), 64, None),
    ]
    full = data.collate(tok.pad_token_id)(rows)
    cut = data.collate(tok.pad_token_id, answer_logits=True)(rows)
    width, keep = full["input_ids"].shape[1], cut["logits_to_keep"]
    first = min(r["labels"].index(next(x for x in r["labels"] if x != data.IGNORE)) for r in rows)
    assert keep == width - (first - 1) and cut["labels"].shape == (2, keep)
    assert torch.equal(cut["labels"], full["labels"][:, width - keep :])
    grads = []
    for batch in (full, cut):
        model.zero_grad()
        out = model(**batch)
        assert out.logits.shape[1] == (keep if "logits_to_keep" in batch else width)
        out.loss.backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
        grads[-1].insert(0, out.loss.detach())
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_reasoning_gym_task_is_deterministic_and_eval_is_held_out():
    cfg = compose([]).dataset
    a, b = data.load_task(cfg, 64, 16), data.load_task(cfg, 64, 16)
    assert [e.prompt for e in a.train] == [e.prompt for e in b.train]
    assert len(a.eval) == 16
    assert not {e.prompt for e in a.eval} & {e.prompt for e in a.train}
    ex = a.eval[0]
    assert a.score(ex.answer, ex) == 1.0
    assert a.score("not a number", ex) == 0.0


def test_eval_items_are_distinct_prompts():
    """chain_sum repeats its 200 one-digit problems; each counts once in the eval set."""
    cfg = compose([]).dataset
    task = data.load_task(cfg, 480, 400, n_select=100)
    assert len(task.eval) == 400 and len({e.prompt for e in task.eval}) == 400
    assert len({e.prompt for e in task.select}) == len(task.select) == 100


def test_selection_split_is_apart_from_train_and_eval():
    cfg = compose([]).dataset
    task = data.load_task(cfg, 64, 16, n_select=12)
    assert len(task.select) == 12
    sel = {e.prompt for e in task.select}
    assert not sel & {e.prompt for e in task.eval} and not sel & {e.prompt for e in task.train}
    plain = data.load_task(cfg, 64, 16)  # asking for a selection split changes nothing else
    assert [e.prompt for e in plain.eval] == [e.prompt for e in task.eval] and not plain.select


def test_partial_credit_is_the_task_score_not_exact_match():
    """reasoning-gym gives '-5' for '5' partial credit; exact match gives none."""
    cfg = compose([]).dataset
    task = data.load_task(cfg, 4, 40)
    ex = next(e for e in task.eval if not e.answer.startswith("-") and e.answer != "0")
    assert 0 < task.score(f"-{ex.answer}", ex) < 1
    assert data.exact_match(f"-{ex.answer}", ex) == 0.0


def test_retention_passages_are_fixed_general_text():
    tok = models.char_tokenizer()
    a, b = data.retention_passages(tok, 5, 40), data.retention_passages(tok, 5, 40)
    assert a == b and len(a) == 5 and all(len(p) == 40 for p in a)
    assert len({tuple(p) for p in a}) == 5
    assert data.retention_passages(tok, 0, 40) == []


def _file_cfg(path):
    return compose(["dataset=file", f"dataset.path={path}"]).dataset


def test_jsonl_and_csv_files_load(tmp_path):
    rows = [{"prompt": f"q{i}", "answer": f"a{i}"} for i in range(10)]
    jl = tmp_path / "d.jsonl"
    jl.write_text("\n".join(__import__("json").dumps(r) for r in rows))
    cs = tmp_path / "d.csv"
    cs.write_text("prompt,answer\n" + "\n".join(f"{r['prompt']},{r['answer']}" for r in rows))
    for path in (jl, cs):
        task = data.load_task(_file_cfg(path), 100, 4)
        assert len(task.eval) == 2 and len(task.train) == 8  # eval takes at most a fifth
        assert task.score(" A0. ", data.Example("q0", "a0")) == 1.0


def test_a_spreadsheet_csv_with_byte_order_mark_and_crlf_loads(tmp_path):
    p = tmp_path / "bom.csv"
    p.write_bytes("prompt,answer\r\nq1,a1\r\nq2,a2\r\n".encode("utf-8-sig"))
    task = data.load_task(_file_cfg(p), 10, 1)
    assert sorted(e.prompt for e in task.train + task.eval) == ["q1", "q2"]


def test_malformed_json_line_is_named(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "a", "answer": "b"}\n{"prompt": "c", answer: d}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: not valid JSON"):
        data.load_task(_file_cfg(p), 10, 2)


def test_missing_field_is_named(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "a", "answer": "b"}\n{"question": "c", "answer": "d"}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: missing or empty field 'prompt'"):
        data.load_task(_file_cfg(p), 10, 2)


def test_empty_file_is_rejected(tmp_path):
    p = tmp_path / "empty.jsonl"
    p.write_text("\n")
    with pytest.raises(ConfigError, match="the file has no rows"):
        data.load_task(_file_cfg(p), 10, 2)


def test_any_reasoning_gym_task_by_name_starts_from_its_own_defaults():
    from sweep.config import reasoning_gym_args

    cfg = compose(["dataset.task=letter_counting"])  # chain_sum's args stay with chain_sum
    assert reasoning_gym_args("letter_counting", cfg.dataset.task_args) == {}
    task = data.load_task(cfg.dataset, 4, 4)
    assert task.train and all("letter" in ex.prompt.lower() for ex in task.train)
    chain = compose(["dataset.task_args.chain_sum.max_digits=1", "+dataset.task_args.max_terms=3"])
    assert reasoning_gym_args("chain_sum", chain.dataset.task_args) == {
        "min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1,
    }  # fmt: skip
    with pytest.raises(ConfigError) as err:
        compose(["dataset.task=letter_counting", "+dataset.task_args.letter_counting.digits=2"])
    assert str(err.value) == (
        "dataset.task_args.letter_counting.digits: not an argument of reasoning-gym "
        "letter_counting; its arguments: min_words, max_words"
    )
