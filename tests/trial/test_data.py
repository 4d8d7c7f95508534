import pytest

from sweep.settings.compose import ConfigError, compose
from sweep.settings.schema import AUTO_MAX_LEN
from sweep.trial import batches, data, models


@pytest.fixture(scope="module")
def tok():
    return models.char_tokenizer()


def test_loss_only_on_answer_tokens(tok):
    ex = data.Example("2 + 3 =", "5")
    row = batches.encode(tok, ex, 512, None)
    prompt = batches.prompt_ids(tok, ex.prompt, None)
    assert row["input_ids"][: len(prompt)] == prompt
    assert all(label == data.IGNORE for label in row["labels"][: len(prompt)])
    answer = [i for i, lab in zip(row["input_ids"], row["labels"]) if lab != data.IGNORE]
    assert tok.decode(answer, skip_special_tokens=True).strip() == "5"


def test_truncation_keeps_the_answer(tok):
    ex = data.Example("x" * 200, "42")
    row = batches.encode(tok, ex, 32, None)
    assert len(row["input_ids"]) == 32
    kept = [i for i, lab in zip(row["input_ids"], row["labels"]) if lab != data.IGNORE]
    assert tok.decode(kept, skip_special_tokens=True).strip() == "42"


def test_collate_pads_right_and_masks_padding(tok):
    rows = [
        batches.encode(tok, data.Example("1+1", "2"), 64, None),
        batches.encode(tok, data.Example("10+10", "20"), 64, None),
    ]
    batch = batches.collate(tok.pad_token_id)(rows)
    n0 = len(rows[0]["input_ids"])
    assert batch["input_ids"].shape[1] == max(len(r["input_ids"]) for r in rows)
    assert batch["attention_mask"][0, n0:].sum() == 0
    assert (batch["labels"][0, n0:] == data.IGNORE).all()


@pytest.mark.parametrize("method", ["full", "lora"])
def test_answer_logits_give_the_same_loss_and_gradients(tok, method):
    # train.loss_logits=answer: logits only from the token before the first answer token on;
    # prompt positions carry no loss, so loss and gradients equal those of full logits.
    import torch

    from sweep.trial import methods
    from tests.conftest import tiny

    cfg = compose(tiny(f"method={method}", "train.precision=fp32"))
    path = models.resolve(cfg.model, cfg.cache_dir)
    torch.manual_seed(0)
    model = methods.apply(models.load_model(path, torch.float32, False), cfg.method, cfg.train)
    rows = [
        batches.encode(tok, data.Example("What is 12 + 7?", "19"), 64, None),
        batches.encode(tok, data.Example("What is 3 + 45 + 2?", "50"), 64, None),
    ]
    full = batches.collate(tok.pad_token_id)(rows)
    cut = batches.collate(tok.pad_token_id, answer_logits=True)(rows)
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
    from sweep.settings.validate import reasoning_gym_args

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


# ---- chat rows (a `messages` list) ------------------------------------------------------------


def _chat(*turns, **extra):
    return {"messages": [{"role": r, "content": c} for r, c in turns], **extra}


CONVERSATION = _chat(
    ("system", "Be brief."),
    ("user", "Capital of France?"),
    ("assistant", "Paris"),
    ("user", "And of Italy?"),
    ("assistant", "Rome"),
)


def _write_jsonl(path, rows):
    path.write_text("".join(__import__("json").dumps(r) + "\n" for r in rows))
    return path


def _labelled(tok, row):
    """The labelled tokens as text, one string per run of labelled tokens."""
    runs, run = [], []
    for i, lab in zip(row["input_ids"], row["labels"]):
        if lab != data.IGNORE:
            assert lab == i
            run.append(i)
        elif run:
            runs, run = runs + [run], []
    return [tok.decode(r) for r in runs + ([run] if run else [])]


def test_a_chat_row_is_detected_and_split_at_its_last_assistant_turn(tmp_path):
    p = _write_jsonl(tmp_path / "chat.jsonl", [CONVERSATION] * 2 + [{"prompt": "q", "answer": "a"}])
    rows = data._read_file(p, _file_cfg(p), data.scorers.get("exact"))
    ex = rows[0]
    assert ex.answer == "Rome" and [t["role"] for t in ex.turns] == [
        "system", "user", "assistant", "user",
    ]  # fmt: skip
    assert ex.prompt.endswith("user: And of Italy?")
    assert rows[2].turns is None and rows[2].answer == "a"  # plain rows in the same file


def test_chat_rows_train_on_every_assistant_turn_and_evaluate_the_last(tok, tmp_path):
    p = _write_jsonl(tmp_path / "chat.jsonl", [CONVERSATION])
    (ex,) = data._read_file(p, _file_cfg(p), data.scorers.get("exact"))
    row = batches.encode(tok, ex, 512, "ignored: the row has its own")
    text = tok.decode(row["input_ids"])
    assert text.count("Be brief.") == 1 and "ignored" not in text
    # loss only on the assistant turns (each with its end-of-turn), nothing else
    assert _labelled(tok, row) == ["Paris<|im_end|>\n", "Rome<|im_end|>\n"]
    last = batches.encode(tok, ex, 512, None, every_turn=False)  # eval loss: the answer only
    assert last["input_ids"] == row["input_ids"]
    assert _labelled(tok, last) == ["Rome<|im_end|>\n"]
    prompt = tok.decode(batches.prompt_ids(tok, ex, None))  # eval prompt: up to the last answer
    assert prompt == text[: text.rindex("Rome")] and "Paris" in prompt


def test_a_chat_row_without_a_system_turn_gets_the_dataset_system_prompt(tok):
    ex = data.Example("u", "Rome", turns=[{"role": "user", "content": "Capital of Italy?"}])
    text = tok.decode(batches.prompt_ids(tok, ex, "Be brief."))
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert text == tok.decode(batches.prompt_ids(tok, "Capital of Italy?", "Be brief."))


def test_an_earlier_turn_the_template_renders_differently_is_context_only(tok):
    """A template that shortens earlier assistant turns (as some drop earlier reasoning): the
    earlier turn's tokens in the long chat are not what the model would generate, so no loss."""
    from transformers import PreTrainedTokenizerFast

    short = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, **{
        k: getattr(tok, k) for k in ("bos_token", "eos_token", "pad_token", "unk_token")
    })  # fmt: skip
    short.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['role'] == 'assistant' and not loop.last %}...{% else %}{{ m['content'] }}"
        "{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    turns = [dict(role=r, content=c) for r, c in CONVERSATION["messages"][:4]]
    ex = data.Example("x", "Rome", turns=turns)
    assert _labelled(short, batches.encode(short, ex, 512, None)) == ["Rome<|im_end|>\n"]


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ([("user", "hi")], "'messages' has no assistant turn (the last one is the answer)"),
        ([("user", "hi"), ("bot", "yo")], "messages[1] has role 'bot'; allowed: system, user, assistant"),
        ([("system", "s"), ("assistant", "yo")], "'messages' has no user turn before its last assistant turn"),
        ([("user", "hi"), ("assistant", " ")], "messages[1] (the last assistant turn) is empty"),
    ],
)  # fmt: skip
def test_a_malformed_chat_row_is_named_with_its_line(tmp_path, messages, problem):
    p = _write_jsonl(tmp_path / "bad.jsonl", [CONVERSATION, _chat(*messages)])
    with pytest.raises(ConfigError) as err:
        data.load_task(_file_cfg(p), 10, 2)
    assert str(err.value) == f"{p}:2: {problem}"


def test_chat_content_must_be_text(tmp_path):
    row = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    p = _write_jsonl(tmp_path / "bad.jsonl", [row])
    with pytest.raises(
        ConfigError, match=r"bad.jsonl:1: messages\[0\] \(user\) has no text 'content'"
    ):
        data.load_task(_file_cfg(p), 10, 2)


# ---- hub datasets with their own eval split ---------------------------------------------------


def _fake_hub(monkeypatch, splits):
    import datasets

    calls = []

    def load_dataset(path, name=None, split=None, **kw):
        calls.append((path, name, split))
        if split not in splits:
            raise ValueError(f'Unknown split "{split}". Should be one of {list(splits)}.')
        return datasets.Dataset.from_list(splits[split])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def _qa(prefix, n):
    return [{"question": f"{prefix} {i}?", "answer": f"#### {i}"} for i in range(n)]


def test_a_hub_eval_split_is_what_is_scored(monkeypatch):
    calls = _fake_hub(monkeypatch, {"train": _qa("train", 20), "test": _qa("test", 30)})
    cfg = compose(["dataset=gsm8k"]).dataset
    task = data.load_task(cfg, 100, 25, n_select=3)
    assert ("openai/gsm8k", "main", "train") in calls and ("openai/gsm8k", "main", "test") in calls
    assert len(task.eval) == 25 and all(e.prompt.startswith("test") for e in task.eval)
    assert len(task.train) == 17 and all(e.prompt.startswith("train") for e in task.train)
    assert len(task.select) == 3 and all(e.prompt.startswith("train") for e in task.select)
    assert task.whole_text and task.score("so #### 7", task.eval[0]) == float(
        task.eval[0].answer == "#### 7"
    )
    again = data.load_task(cfg, 100, 25, n_select=3)
    assert [e.prompt for e in again.eval] == [e.prompt for e in task.eval]


def test_without_an_eval_split_a_hub_dataset_holds_out_part_of_train(monkeypatch):
    calls = _fake_hub(monkeypatch, {"train": _qa("train", 20)})
    cfg = compose(["dataset=hub", "dataset.path=some/set"]).dataset
    task = data.load_task(cfg, 100, 10)
    assert [c[2] for c in calls] == ["train"]
    assert len(task.eval) == 4 and len(task.train) == 16  # a fifth held out


def test_an_eval_split_the_dataset_lacks_is_one_line(monkeypatch):
    _fake_hub(monkeypatch, {"train": _qa("train", 5)})
    cfg = compose(["dataset=gsm8k", "dataset.eval_split=tset"]).dataset
    with pytest.raises(ConfigError) as err:
        data.load_task(cfg, 10, 2)
    assert str(err.value).startswith("dataset.eval_split='tset': openai/gsm8k: Unknown split")


# ---- train.max_seq_len=0: sized from the data -------------------------------------------------


def test_auto_max_len_is_the_99th_percentile_capped():
    assert batches.auto_max_len(list(range(1, 201))) == 198  # nearest rank: the 198th of 200
    assert batches.auto_max_len([50] * 99 + [5000]) == 50
    assert batches.auto_max_len([3000] * 10) == AUTO_MAX_LEN == 2048
    assert batches.auto_max_len([3]) == 8


def test_encode_train_sizes_from_the_data_and_counts_what_it_cuts(tok):
    examples = [data.Example("1+1", "2")] * 99 + [data.Example("x" * 300, "42")]
    full = len(batches.encode(tok, examples[0], 10_000, None)["input_ids"])
    auto = batches.encode_train(tok, examples, 0, None)
    assert auto.max_len == full and auto.truncated == 1 and auto.longest > 300
    assert all(len(r["input_ids"]) <= full for r in auto.rows)
    assert auto.rows[-1] == batches.encode(tok, examples[-1], full, None)  # cut as encode cuts
    fixed = batches.encode_train(tok, examples, 16, None)
    assert fixed.max_len == 16 and fixed.truncated == 100
    roomy = batches.encode_train(tok, examples, 4096, None)
    assert roomy.truncated == 0 and roomy.rows[0] == batches.encode(tok, examples[0], 4096, None)


def test_the_default_train_length_is_auto_and_a_set_one_is_kept():
    assert compose([]).train.max_seq_len == 0  # conf/train/default.yaml: sized from the data
    assert compose(["train.max_seq_len=64"]).train.max_seq_len == 64
