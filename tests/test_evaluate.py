"""The evaluator: one pass for eval loss and answers gives what two separate passes give."""

import pytest
import torch

from sweep import data, evaluate, methods, models
from sweep.config import compose

from .conftest import CACHE, tiny


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


class _Scripted(torch.nn.Module):
    """A stand-in model whose greedy continuation is a fixed text, one token per step, stopped
    as transformers stops it: at eos, `max_new_tokens` or when every stopping criterion says so."""

    def __init__(self, tok, text):
        super().__init__()
        self.tok, self.weight = tok, torch.nn.Parameter(torch.zeros(1))
        self.script = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]

    def generate(self, input_ids, max_new_tokens, stopping_criteria, **kw):
        ids = input_ids
        for token in self.script[:max_new_tokens]:
            ids = torch.cat([ids, torch.full((len(ids), 1), token)], 1)
            if token == self.tok.eos_token_id or (
                stopping_criteria and all(stopping_criteria(ids, None))
            ):
                break
        return ids


@pytest.mark.parametrize(("first_line", "expected"), [(True, "72\n"), (False, "72\n#### 72")])
def test_generation_stops_at_the_first_line_only_for_a_first_line_scorer(first_line, expected):
    tok = models.char_tokenizer()
    model = _Scripted(tok, "72\n#### 72")
    prompt = data.prompt_ids(tok, "Q?", None)
    assert evaluate.generate(model, tok, [prompt], 40, 1, first_line) == [expected]


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
