import json
from types import SimpleNamespace

import pytest
import torch

from sweep.planning import recipe
from sweep.planning.arch import arch_for_model, train_flops_per_token
from sweep.results.record import load
from sweep.settings import metrics
from sweep.settings.compose import compose
from sweep.trial.derived import attention_span
from sweep.trial.run import run_trial
from sweep.trial.summary import summary
from tests.conftest import tiny

REQUIRED = [
    "load_s",
    "train_s",
    "eval_s",
    "total_s",
    "peak_host_rss_gib",
    "train_tokens_per_s",
    "steps",
    "tokens_seen",
    "trainable_params",
    "total_params",
    "adapter_bytes",
    "accuracy",
    "task_score",
    "n_eval",
    "eval_loss",
    "base_accuracy",
    "base_task_score",
    "retention_loss_before",
    "retention_loss_after",
    "retention_delta",
    "s_per_step",
    "startup_s",
    "peak_memory_gib",
]


@pytest.fixture(scope="module", params=["full", "lora", "qlora"])
def tiny_trial(request, tmp_path_factory):
    """One tiny trial per method, run once for the record tests below."""
    method = request.param
    cfg = compose(tiny(f"method={method}"))
    out = tmp_path_factory.mktemp(method)
    result = run_trial(cfg, out)
    return SimpleNamespace(
        method=method, cfg=cfg, out=out, result=result, rec=load(out / "result.json")
    )


def test_tiny_trial_ends_ok_and_names_every_metric_it_writes(tiny_trial):
    assert tiny_trial.result.status == "ok", tiny_trial.result.train.get("error")
    m = tiny_trial.rec.metrics
    metrics.check(m)  # every key the trial wrote is a named metric (sweep.settings.metrics)
    assert [key for key in REQUIRED if m.get(key) is None] == []


def test_tiny_trial_records_its_steps_tokens_and_time(tiny_trial):
    m = tiny_trial.rec.metrics
    assert m["steps"] == 8 and m["tokens_seen"] > 0
    assert len(tiny_trial.rec.train["loss_curve"]) == 8
    assert m["train_tokens_per_s"] > 0 and m["train_s"] > 0
    assert m["total_s"] >= m["load_s"] + m["train_s"]


def test_tiny_trial_records_its_run_and_its_environment(tiny_trial):
    rec, method = tiny_trial.rec, tiny_trial.method
    assert rec.run["method"] == method and rec.run["config"]["method"]["name"] == method
    assert rec.run["config_hash"] and rec.run["seed"] == 0
    assert rec.meta["versions"]["torch"] and rec.meta["versions"]["peft"] and rec.meta["cpu"]
    assert "git_commit" in rec.meta and "git_dirty" in rec.meta


def test_tiny_trial_saves_its_adapter_and_counts_its_bytes(tiny_trial):
    m, adapter = tiny_trial.rec.metrics, tiny_trial.out / "adapter"
    assert m["adapter_bytes"] == sum(f.stat().st_size for f in adapter.rglob("*") if f.is_file())
    if tiny_trial.method == "full":
        assert m["trainable_params"] == m["total_params"]
        assert (adapter / "model.safetensors").is_file()
    else:
        assert m["trainable_params"] < m["total_params"]
        assert (adapter / "adapter_model.safetensors").is_file()
    assert m["base_4bit"] is (tiny_trial.method == "qlora")


def test_tiny_trial_model_flops_follow_the_batch_it_measured(tiny_trial):
    cfg, m, led = tiny_trial.cfg, tiny_trial.rec.metrics, tiny_trial.rec.train["ledger"]
    width = led["batch_shape"][-1]
    share = led["logits_width"] / width  # train.loss_logits=answer
    assert 0 < share < 1
    span = attention_span(led, width)  # packed rows (train.packing): tokens per example
    rows = led["batch_shape"][0]
    assert span == (round(rows * width / led["sequences"]) if led["packed"] else width)
    per_token = train_flops_per_token(arch_for_model(cfg.model), recipe.of(cfg), span, share)
    assert m["train_tflops"] == pytest.approx(per_token * m["train_tokens_per_s"] / 1e12)
    if not torch.cuda.is_available():
        assert "mfu" not in m  # MFU needs a GPU's peak


def test_tiny_trial_summary_names_its_accuracy(tiny_trial):
    assert "accuracy" in summary(tiny_trial.result)


def test_tiny_trial_keeps_every_eval_item_beside_the_record(tiny_trial):
    """Per-item results for the trial and the untuned base, on the same items."""
    out, rec, m = tiny_trial.out, tiny_trial.rec, tiny_trial.rec.metrics
    trial_items = [json.loads(x) for x in (out / "eval_items.jsonl").open()]
    base_items = [json.loads(x) for x in (out / "base_items.jsonl").open()]
    assert rec.train["eval_items"] == "eval_items.jsonl" and len(trial_items) == m["n_eval"]
    assert [i["id"] for i in trial_items] == [i["id"] for i in base_items]
    assert len({i["id"] for i in trial_items}) == len(trial_items)
    for item in trial_items:
        assert {"id", "prompt", "expected", "answer", "exact", "score"} <= set(item)
        assert item["exact"] in (0, 1) and 0 <= item["score"] <= 1
    assert 0.0 <= m["accuracy"] <= 1.0
    assert m["accuracy"] == pytest.approx(sum(i["exact"] for i in trial_items) / len(trial_items))
    assert m["task_score"] == pytest.approx(sum(i["score"] for i in trial_items) / len(trial_items))


def test_tiny_trial_scores_retention_before_and_after(tiny_trial):
    rec, m = tiny_trial.rec, tiny_trial.rec.metrics
    before, after = rec.train["retention"]["before"], rec.train["retention"]["after"]
    assert len(before) == len(after) == tiny_trial.cfg.eval.retention_size
    assert m["retention_delta"] == pytest.approx(
        sum(after) / len(after) - sum(before) / len(before)
    )


def test_loss_goes_down_on_a_learnable_toy_task(tmp_path):
    cfg = compose(
        tiny(
            "method=full",
            "method.lr=0.01",
            "train.steps=30",
            "train.batch_size=8",
            "train.precision=fp32",
            "eval.base=false",
        )
    )
    result = run_trial(cfg, tmp_path)
    curve = result.train["loss_curve"]
    assert result.status == "ok"
    assert sum(curve[-5:]) / 5 < 0.7 * sum(curve[:5]) / 5


def test_same_seed_same_examples_same_order(tmp_path):
    a = run_trial(compose(tiny("method=lora", "train.precision=fp32")), tmp_path / "a")
    b = run_trial(compose(tiny("method=lora", "train.precision=fp32")), tmp_path / "b")
    assert a.train["loss_curve"] == pytest.approx(b.train["loss_curve"], rel=1e-5)
    assert a.metrics["tokens_seen"] == b.metrics["tokens_seen"]
    c = run_trial(compose(tiny("method=full", "train.precision=fp32")), tmp_path / "c")
    assert c.metrics["tokens_seen"] == a.metrics["tokens_seen"]  # every method sees the same tokens


def test_divergence_is_recorded_and_stops_early(tmp_path):
    cfg = compose(
        tiny(
            "method=full",
            "method.lr=0.9",
            "train.steps=40",
            "train.precision=fp32",
            "train.diverge_factor=1.5",
            "eval.base=false",
        )
    )
    result = run_trial(cfg, tmp_path)
    assert result.status == "diverged"
    assert "loss" in result.train["error"]
    assert result.metrics["steps"] < 40


def test_a_crash_is_recorded_not_raised(tmp_path):
    cfg = compose(tiny("method=lora", "method.target_modules=[no_such_module]"))
    result = run_trial(cfg, tmp_path)
    assert result.status == "failed"
    assert "no_such_module" in result.train["error"]
    assert json.loads((tmp_path / "result.json").read_text())["train"]["status"] == "failed"


def test_base_accuracy_is_cached_per_model_and_eval_set(tmp_path):
    cfg = compose(tiny("method=lora", f"cache_dir={tmp_path / 'cache'}"))
    first = run_trial(cfg, tmp_path / "1")
    # a zero line only the cache holds: the second trial must read it, not score the base again
    (acc_file,) = (tmp_path / "cache" / "base_accuracy").glob("accuracy-*.json")
    stored = json.loads(acc_file.read_text())
    assert stored["accuracy"] == first.metrics["base_accuracy"]
    acc_file.write_text(json.dumps({**stored, "accuracy": 0.4321}))
    second = run_trial(cfg, tmp_path / "2")
    assert second.metrics["base_accuracy"] == 0.4321
    assert second.metrics["base_eval_loss"] == first.metrics["base_eval_loss"]
    assert first.train["retention"]["before"] == second.train["retention"]["before"]
    assert (tmp_path / "2" / "base_items.jsonl").read_text() == (
        tmp_path / "1" / "base_items.jsonl"
    ).read_text()
    cached = sorted(p.name.split("-")[0] for p in (tmp_path / "cache" / "base_accuracy").iterdir())
    assert cached == ["accuracy", "retention"]
    # QLoRA on the same base: the zero line is the unquantized base's (reused, not rescored);
    # the retention "before" is its own 4-bit model's
    qlora = run_trial(
        compose(tiny("method=qlora", f"cache_dir={tmp_path / 'cache'}")), tmp_path / "3"
    )
    assert qlora.train["base_quant"] is None and first.train["base_quant"] is None
    assert (tmp_path / "3" / "base_items.jsonl").read_text() == (
        tmp_path / "1" / "base_items.jsonl"
    ).read_text()
    assert qlora.train["retention"]["before"] != first.train["retention"]["before"]
    alone = run_trial(compose(tiny("method=qlora", f"cache_dir={tmp_path / 'c2'}")), tmp_path / "4")
    assert alone.train["base_quant"] == "nf4-4bit"  # no unquantized result yet: its own base
