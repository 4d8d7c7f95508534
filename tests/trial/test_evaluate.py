"""The evaluator: one pass for eval loss and answers gives what two separate passes give."""

import pytest
import torch

from sweep.settings.compose import compose
from sweep.trial import batches, data, evaluate, methods, models
from tests.conftest import CACHE, tiny


def _two_ways(cfg, model, tok):
    task = data.load_task(cfg.dataset, 4, cfg.eval.size)
    e, sp, n = cfg.eval, cfg.dataset.system_prompt, cfg.train.max_seq_len
    separate = evaluate.accuracy(model, tok, task, e.max_new_tokens, e.batch_size, sp)
    separate["eval_loss"] = evaluate.eval_loss(model, tok, task.eval, n, e.batch_size, sp)
    one_pass = evaluate.loss_and_accuracy(model, tok, task, n, e.max_new_tokens, e.batch_size, sp)
    return separate, one_pass


def _tiny_lora(cfg):
    """The tiny model with a LoRA adapter whose B is not zero, so it changes the answers."""
    path = models.resolve(cfg.model, cfg.cache_dir)
    tok = models.load_tokenizer(path)
    torch.manual_seed(0)
    model = methods.apply(models.load_model(path, torch.float32), cfg.method, cfg.train)
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    return model, tok, path


def _same(separate, one_pass):
    assert one_pass["samples"] == separate["samples"]  # prompts, answers, scores
    assert one_pass["generated_tokens"] == separate["generated_tokens"]
    assert one_pass["accuracy"] == separate["accuracy"]
    assert one_pass["eval_loss"] == pytest.approx(separate["eval_loss"], rel=1e-4)


@pytest.mark.parametrize(
    "max_len", [160, 48]
)  # tiny prompts are ~125 tokens: 48 cuts them (two passes)
def test_one_pass_gives_the_answers_and_loss_of_two_passes_tiny_lora(max_len):
    cfg = compose(
        tiny(
            "eval.size=7",
            "eval.batch_size=3",
            "eval.max_new_tokens=6",
            f"train.max_seq_len={max_len}",
        )
    )
    model, tok, path = _tiny_lora(cfg)
    _same(*_two_ways(cfg, model, tok))


@pytest.mark.slow
def test_one_pass_gives_the_answers_and_loss_of_two_passes_smollm2():
    cfg = compose(["eval.size=8", "eval.batch_size=4"])
    path = models.resolve(cfg.model, CACHE)
    tok = models.load_tokenizer(path)
    model = models.load_model(path, torch.float32)
    _same(*_two_ways(cfg, model, tok))


def test_generation_stops_a_row_once_its_answer_line_is_complete():
    tok = models.char_tokenizer()
    prompt = tok("Q?", add_special_tokens=False)["input_ids"]
    rows = ["\n\n42", "42\nmore", "42", " \n 7\n"]
    width = max(len(tok(r, add_special_tokens=False)["input_ids"]) for r in rows)
    ids = torch.full((len(rows), len(prompt) + width), tok.pad_token_id)
    for i, r in enumerate(rows):
        gen = tok(r, add_special_tokens=False)["input_ids"]
        ids[i, : len(prompt)] = torch.tensor(prompt)
        ids[i, len(prompt) : len(prompt) + len(gen)] = torch.tensor(gen)
    done = evaluate.answer_line_done(tok, len(prompt))(ids, None)
    assert done.tolist() == [False, True, False, True]
    # what it cuts off never changes the answer
    assert [evaluate.extract_answer(r) for r in rows] == ["42", "42", "42", "7"]


def test_an_eval_batch_out_of_memory_is_retried_smaller_with_the_same_answers():
    cfg = compose(tiny("eval.size=8", "eval.batch_size=8", "eval.max_new_tokens=4"))
    path = models.resolve(cfg.model, cfg.cache_dir)
    tok = models.load_tokenizer(path)
    model = models.load_model(path, torch.float32)
    task = data.load_task(cfg.dataset, 4, cfg.eval.size)
    args = (model, tok, task, cfg.train.max_seq_len, 4)
    whole = evaluate.loss_and_accuracy(*args, 8)
    real = model.forward

    def small_memory(*a, **kw):  # a device that holds at most 2 rows at a time
        ids = kw.get("input_ids", a[0] if a else None)
        if ids is not None and ids.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(*a, **kw)

    model.forward = small_memory
    shrunk = evaluate.loss_and_accuracy(*args, 8)
    assert shrunk["eval_batch_size"] == 2 and whole["eval_batch_size"] == 8
    assert [i["answer"] for i in shrunk["items"]] == [i["answer"] for i in whole["items"]]
    assert shrunk["eval_loss"] == pytest.approx(whole["eval_loss"], rel=1e-4)


def test_a_lora_adapter_folded_in_for_evaluation_gives_the_same_answers():
    cfg = compose(tiny("eval.size=8", "eval.batch_size=4", "eval.max_new_tokens=6"))
    model, tok, path = _tiny_lora(cfg)
    task = data.load_task(cfg.dataset, 4, cfg.eval.size)
    args = (tok, task, cfg.train.max_seq_len, 6, 4)
    separate = evaluate.loss_and_accuracy(model, *args)
    merged, folded = methods.merged_for_eval(model)
    assert folded and not any("lora" in n for n, _ in merged.named_parameters())
    together = evaluate.loss_and_accuracy(merged, *args)
    assert [i["answer"] for i in together["items"]] == [i["answer"] for i in separate["items"]]
    assert together["eval_loss"] == pytest.approx(separate["eval_loss"], rel=1e-4)
    qlora = methods.apply(
        models.load_model(
            path, torch.float32, **methods.load_kwargs(compose(tiny("method=qlora")).method, "fp32")
        ),
        compose(tiny("method=qlora")).method,
        cfg.train,
    )
    assert methods.merged_for_eval(qlora)[1] is False  # folding into 4-bit weights would round


class _Rows:
    """The scripted model's cache: which of the batch's first rows are still in it."""

    def __init__(self, n):
        self.rows = list(range(n))

    def batch_select_indices(self, idx):
        self.rows = [self.rows[i] for i in idx.tolist()]

    def get_seq_length(self):
        return 0


class _Scripted(torch.nn.Module):
    """A stand-in model whose greedy continuation of row i is a fixed text (texts[i], or the one
    text for every row), one token per step, then eos. `generate` stops a row as transformers
    does (at eos or when a stopping criterion says so; padding after) and the batch once every
    row is done or at `max_new_tokens`; `forward` writes the same
    (the step is the attention mask's width past the prompt) and logs each call's row count."""

    def __init__(self, tok, *texts):
        super().__init__()
        self.tok, self.weight, self.calls = tok, torch.nn.Parameter(torch.zeros(1)), []
        self.scripts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        self.scripts = [s + [tok.eos_token_id] * 40 for s in self.scripts]

    def _script(self, row):
        return self.scripts[row % len(self.scripts)]

    def generate(self, input_ids, max_new_tokens, stopping_criteria, pad_token_id, **kw):
        ids, done = input_ids, torch.zeros(len(input_ids), dtype=torch.bool)
        for k in range(max_new_tokens):
            step = torch.tensor([self._script(r)[k] for r in range(len(ids))])
            ids = torch.cat([ids, torch.where(done, pad_token_id, step)[:, None]], 1)
            done |= step == self.tok.eos_token_id
            if stopping_criteria:  # per row: a row that is done writes padding from then on
                done |= stopping_criteria(ids, None)
            if done.all():
                break
        return ids

    def forward(self, input_ids, attention_mask, past_key_values=None, **kw):
        from types import SimpleNamespace

        if past_key_values is None:
            self.width, past_key_values = attention_mask.shape[1], _Rows(len(input_ids))
        self.calls.append(len(input_ids))
        k = attention_mask.shape[1] - self.width
        logits = torch.zeros(len(input_ids), 1, len(self.tok))
        for i, row in enumerate(past_key_values.rows):
            logits[i, -1, self._script(row)[k]] = 1.0
        return SimpleNamespace(logits=logits, past_key_values=past_key_values)


@pytest.mark.parametrize("decoder", ["_greedy", "_generate"])
@pytest.mark.parametrize(("first_line", "expected"), [(True, "72\n"), (False, "72\n#### 72")])
def test_generation_stops_at_the_first_line_only_for_a_first_line_scorer(
    first_line, expected, decoder
):
    tok = models.char_tokenizer()
    model = _Scripted(tok, "72\n#### 72")
    ids = torch.tensor([batches.prompt_ids(tok, "Q?", None)])
    texts = getattr(evaluate, decoder)(model, tok, ids, torch.ones_like(ids), 40, first_line)
    assert texts == [expected]


@pytest.mark.parametrize("first_line", [True, False])
def test_a_finished_row_leaves_the_batch_and_the_others_write_on(first_line):
    """Each step decodes only the rows still writing; every row's text is what `generate` (all
    rows decoding until the batch is done) gives."""
    tok = models.char_tokenizer()
    texts = ["7", "12\nmore", "123456", "\n 9\n", "42"]
    model = _Scripted(tok, *texts)
    ids = torch.tensor([batches.prompt_ids(tok, "Q?", None)] * len(texts))
    mask = torch.ones_like(ids)
    ours = evaluate._greedy(model, tok, ids, mask, 10, first_line)
    assert ours == evaluate._generate(model, tok, ids, mask, 10, first_line)
    # a row leaves after its eos or, with first_line, its answer line: the rows write 2, 3, 7,
    # 4 and 3 tokens (2, 8, 7, 5 and 3 without first_line): each step runs the rows still going
    expected = [5, 5, 4, 2, 1, 1, 1] if first_line else [5, 5, 4, 3, 3, 2, 2, 1]
    assert model.calls == expected
    assert ours == (["7", "12\n", "123456", "\n 9\n", "42"] if first_line else texts)


def test_a_generation_config_that_changes_greedy_choices_decodes_through_generate(monkeypatch):
    cfg = compose(tiny("eval.size=4"))
    path = models.resolve(cfg.model, cfg.cache_dir)
    tok, model = models.load_tokenizer(path), models.load_model(path, torch.float32).eval()
    task = data.load_task(cfg.dataset, 4, cfg.eval.size)
    ids, mask = evaluate._left_pad(
        [batches.prompt_ids(tok, ex, None) for ex in task.eval], tok.pad_token_id
    )
    used = []
    real = evaluate._generate
    monkeypatch.setattr(evaluate, "_generate", lambda *a, **k: used.append(1) or real(*a, **k))
    with torch.no_grad():
        plain = evaluate._greedy(model, tok, ids, mask, 6, False)
        assert not used
        model.generation_config.repetition_penalty = 5.0
        assert not evaluate.plain_greedy(model)
        penalised = evaluate._greedy(model, tok, ids, mask, 6, False)
    assert used and penalised == real(model, tok, ids, mask, 6, False)
    assert penalised != plain  # the penalty changed what greedy decoding writes


def test_one_pass_gives_the_answers_of_transformers_generate(monkeypatch):
    """The evaluation's own decoder (rows leave when done, decoding from the one-pass cache)
    against `generate` on the same prefilled cache: the same answers and loss."""
    cfg = compose(tiny("eval.size=7", "eval.batch_size=4", "eval.max_new_tokens=6"))
    model, tok, _ = _tiny_lora(cfg)
    task = data.load_task(cfg.dataset, 4, cfg.eval.size)
    args = (model, tok, task, cfg.train.max_seq_len, 6, 4)
    ours = evaluate.loss_and_accuracy(*args)
    monkeypatch.setattr(evaluate, "_greedy", evaluate._generate)
    theirs = evaluate.loss_and_accuracy(*args)
    assert [i["answer"] for i in ours["items"]] == [i["answer"] for i in theirs["items"]]
    assert ours["generated_tokens"] == theirs["generated_tokens"]
    assert ours["eval_loss"] == pytest.approx(theirs["eval_loss"], rel=1e-6)


def _chat_file(path, n=12):
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Add."},
                {"role": "user", "content": f"{i} + 1?"},
                {"role": "assistant", "content": f"{i + 1}"},
                {"role": "user", "content": f"and {i} + 2?"},
                {"role": "assistant", "content": f"so {i} + 2 = {i + 2}"},
            ]
        }
        for i in range(n)
    ]
    path.write_text("".join(__import__("json").dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("scorer", ["exact", "numeric", "regex"])
def test_one_pass_gives_the_answers_and_loss_of_two_passes_on_chat_rows(tmp_path, scorer):
    """Chat prompts (the conversation up to the last assistant turn), eval loss on the last turn
    only, and whole-text generation for a scorer that reads it: the same both ways."""
    cfg = compose(
        tiny(
            "dataset=file",
            f"dataset.path={_chat_file(tmp_path / 'chat.jsonl')}",
            f"dataset.scorer={scorer}",
            "dataset.answer_regex='= (\\d+)'",
            "eval.size=3",
            "eval.batch_size=2",
            "eval.max_new_tokens=6",
            "train.max_seq_len=160",
        )
    )
    model, tok, _ = _tiny_lora(cfg)
    separate, one_pass = _two_ways(cfg, model, tok)
    _same(separate, one_pass)
    task = data.load_task(cfg.dataset, 4, cfg.eval.size)
    assert task.whole_text == (scorer == "regex")
    assert one_pass["items"][0]["expected"].startswith("so ")  # the last assistant turn


def test_the_output_layer_gets_the_kept_columns_contiguous():
    """Logits of a few columns (`logits_to_keep`) come from a strided slice of the hidden
    states; a loaded model hands its output layer a contiguous copy (one matrix product instead
    of one per row: sweep.trial.models.contiguous_head_input), with the same logits."""
    cfg = compose(tiny())
    model = models.load_model(models.resolve(cfg.model, cfg.cache_dir), torch.float32).eval()
    head, seen = model.get_output_embeddings(), []
    head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].is_contiguous()))
    ids = torch.randint(5, 100, (3, 12))
    with torch.no_grad():
        ours = model(input_ids=ids, logits_to_keep=4).logits
        head._forward_pre_hooks.popitem(last=False)  # the loader's hook, registered first
        plain = model(input_ids=ids, logits_to_keep=4).logits
    assert seen == [True, False]
    torch.testing.assert_close(ours, plain)
