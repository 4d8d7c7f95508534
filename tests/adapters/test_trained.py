"""Adapters as outputs: separate vs merged, export, switching, errors, CLI (tiny model, CPU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sweep.__main__ import main
from sweep.adapters import inference
from sweep.adapters import trained as adapters
from sweep.results import trials
from sweep.settings.compose import ConfigError, compose
from sweep.trial.run import run_trial
from tests.conftest import CACHE, tiny

PROMPTS = ["What is 12 + 7?", "What is 3 + 45 + 2?"]
# Separate vs merged on the same float weights: the only difference is where the low-rank
# product is added (x@W + x@A@B vs x@(W + A@B)), so float32 rounding: 9e-6 measured here.
FP32_TOL = 1e-4
# Trials: a strong learning rate so that adapters visibly change the outputs in 8 steps.
TRIALS = {
    "lora": ("method=lora", "method.lr=0.02"),
    "lora_b": ("method=lora", "method.r=4", "method.lr=0.02", "train.seed=1"),
    "qlora": ("method=qlora", "method.lr=0.02"),
    "full": ("method=full", "method.lr=0.005"),
}


@pytest.fixture(scope="module")
def trial_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny trial per kind, run once for the module (a few seconds each)."""
    root = tmp_path_factory.mktemp("trials")
    dirs = {}
    for name, overrides in TRIALS.items():
        cfg = compose(
            tiny(*overrides, "eval.base=false", "train.precision=fp32", f"cache_dir={CACHE}")
        )
        result = run_trial(cfg, root / name)
        assert result.status == "ok", result.train.get("error")
        dirs[name] = root / name
    return dirs


@pytest.mark.parametrize("name", ["lora", "full"])
def test_separate_and_merged_give_the_same_answers(trial_dirs, name):
    sep = adapters.load(trial_dirs[name], merged=False)
    mer = adapters.load(trial_dirs[name], merged=True)
    assert adapters.answers(sep, PROMPTS, 12) == adapters.answers(mer, PROMPTS, 12)
    diff = adapters.max_abs_diff(adapters.logits(sep, PROMPTS), adapters.logits(mer, PROMPTS))
    assert diff < FP32_TOL
    assert type(mer.model).__name__ == "LlamaForCausalLM"  # merged: no PEFT wrapper left


def test_qlora_merged_into_dequantized_base_matches_the_separate_adapter(trial_dirs):
    four_bit = adapters.load(trial_dirs["qlora"])
    deq = adapters.load(trial_dirs["qlora"], dequantized=True)
    mer = adapters.load(trial_dirs["qlora"], merged=True)
    assert (four_bit.base_weights, deq.base_weights, mer.base_weights) == (
        "4-bit",
        "dequantized",
        "dequantized",
    )
    assert not any("4bit" in type(m).__name__ for m in mer.model.modules())
    # Same dequantized float32 weights on both sides: float rounding only, as for LoRA.
    deq_logits = adapters.logits(deq, PROMPTS)
    assert adapters.max_abs_diff(deq_logits, adapters.logits(mer, PROMPTS)) < FP32_TOL
    assert adapters.answers(deq, PROMPTS, 12) == adapters.answers(mer, PROMPTS, 12)
    # Against the trial's own 4-bit model: bitsandbytes dequantizes the same NF4 blocks inside
    # its kernel, so the gap stays at rounding level too; 1e-3 leaves room for other kernels.
    assert adapters.max_abs_diff(adapters.logits(four_bit, PROMPTS), deq_logits) < 1e-3


@pytest.mark.parametrize("name", ["lora", "qlora"])
def test_export_round_trips_through_plain_transformers(trial_dirs, tmp_path, name):
    out = adapters.export(trial_dirs[name], tmp_path / "export")
    assert (out / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(out)
    mer = adapters.load(trial_dirs[name], merged=True)
    exported = adapters.Loaded(plain.eval(), tok, mer.cfg, out, True, 0.0, "exported")
    diff = adapters.max_abs_diff(adapters.logits(mer, PROMPTS), adapters.logits(exported, PROMPTS))
    assert diff < 1e-5
    assert adapters.answers(exported, PROMPTS, 12) == adapters.answers(mer, PROMPTS, 12)
    assert json.loads((out / "sweep_export.json").read_text())["method"] == name


def test_switching_adapters_changes_outputs_and_switching_back_restores_them(trial_dirs):
    multi = adapters.load_adapters([trial_dirs["lora"], trial_dirs["lora_b"]])
    a, b = multi.adapters
    first = adapters.logits(multi, PROMPTS)
    alone = adapters.load(trial_dirs["lora"])
    assert adapters.max_abs_diff(first, adapters.logits(alone, PROMPTS)) < FP32_TOL
    seconds = adapters.switch(multi, b)
    assert seconds < 0.5
    second = adapters.logits(multi, PROMPTS)
    assert adapters.max_abs_diff(first, second) > 1e-2
    adapters.switch(multi, a)
    assert adapters.max_abs_diff(first, adapters.logits(multi, PROMPTS)) == 0.0
    with pytest.raises(ConfigError, match="no adapter 'nope'"):
        adapters.switch(multi, "nope")


def test_adapters_on_another_base_cannot_share_one(trial_dirs):
    with pytest.raises(ConfigError, match="another base"):
        adapters.load_adapters([trial_dirs["lora"], trial_dirs["qlora"]])
    with pytest.raises(ConfigError, match="full fine-tuning"):
        adapters.load_adapters([trial_dirs["lora"], trial_dirs["full"]])


def test_missing_adapter_is_a_clear_error(trial_dirs, tmp_path):
    broken = tmp_path / "0007-lora_r_16"
    shutil.copytree(trial_dirs["lora"], broken, ignore=shutil.ignore_patterns("adapter"))
    with pytest.raises(ConfigError, match=r"no adapter saved in .*adapter \(trial status ok\)"):
        adapters.generate(broken, "hi")


def test_adapter_on_another_base_is_a_clear_error(trial_dirs, tmp_path):
    with pytest.raises(ConfigError) as err:
        adapters.load(trial_dirs["lora"], overrides=["model.tiny.hidden=32"])
    msg = str(err.value)
    assert "was trained on base" in msg and "tiny-l2-h64" in msg and "tiny-l2-h32" in msg
    assert "\n" not in msg
    # The name agrees but the shapes do not (a renamed base): PEFT's size mismatch, one line.
    renamed = tmp_path / "renamed"
    shutil.copytree(trial_dirs["lora"], renamed)
    cfg_file = renamed / "adapter" / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["base_model_name_or_path"] = cfg["base_model_name_or_path"].replace("h64", "h32")
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="other shapes"):
        adapters.load(renamed, overrides=["model.tiny.hidden=32"])


def test_find_trial_by_name_label_and_mlflow_run_id(trial_dirs, tmp_path):
    from sweep.results import tracking
    from sweep.results.record import load

    local = Path("outputs/exp/trials/0003-lora_r_16")
    shutil.copytree(trial_dirs["lora"], local)
    shutil.copytree(trial_dirs["qlora"], "outputs/exp/trials/0004-qlora_r_16")
    assert trials.find_trial("0003-lora_r_16") == local
    assert trials.find_trial("0003") == local
    assert trials.find_trial("lora r=16") == local  # the record's label, not 'qlora r=16'
    assert trials.find_trial("lora_r_16") == local  # the label's slug in the dir name
    assert trials.find_trial(local / "adapter") == local
    with pytest.raises(ConfigError, match="'r_16' matches 2 trials"):
        trials.find_trial("r_16")
    with pytest.raises(ConfigError, match=r"no trial 'nothing': .*outputs/\*/trials.*single"):
        trials.find_trial("nothing")
    parent = tracking.parent_run("exp", {}, [])
    rid = tracking.log_trial(parent, load(local / "result.json"), local)
    assert trials.find_trial(rid) == local  # the same record on disk: the local dir
    shutil.rmtree(local)
    remote = trials.find_trial(rid)  # only in MLflow: record and adapter downloaded
    assert (remote / "adapter" / "adapter_model.safetensors").is_file()
    assert adapters.generate(rid, PROMPTS[0], max_new_tokens=8) == adapters.generate(
        trial_dirs["lora"], PROMPTS[0], max_new_tokens=8
    )
    with pytest.raises(ConfigError, match="no MLflow run with that id"):
        trials.find_trial("0" * 32)


def test_cli_generate_prints_the_answer(trial_dirs, capsys):
    expected = adapters.generate(trial_dirs["lora"], PROMPTS[0])  # tiny model: nonsense, maybe ""
    assert main(["generate", str(trial_dirs["lora"]), PROMPTS[0]]) == 0
    assert capsys.readouterr().out.strip() == expected
    assert main(["generate", str(trial_dirs["lora"]), PROMPTS[0], "--merged"]) == 0
    assert capsys.readouterr().out.strip() == expected
    assert main(["generate", "no-such-trial", "hi"]) == 2
    assert "error: no trial 'no-such-trial'" in capsys.readouterr().err


def test_cli_export(trial_dirs, tmp_path, capsys):
    assert main(["export", str(trial_dirs["lora"]), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert main(["export", str(trial_dirs["lora"])]) == 2


@pytest.mark.parametrize("name", ["lora", "qlora", "full"])
def test_inference_block(trial_dirs, name):
    block = inference.inference_block(trial_dirs[name], PROMPTS, max_new_tokens=8)
    assert block["adapter_bytes"] == inference.dir_bytes(trial_dirs[name] / "adapter")
    assert block["load_separate_s"] > 0 and block["load_merged_s"] > 0
    assert block["gen_tokens_per_s_separate"] > 0 and block["gen_tokens_per_s_merged"] > 0
    assert block["max_abs_logit_diff"] < 1e-3
    assert block["n_prompts"] == 2
    merged_base = {"lora": "float", "qlora": "dequantized", "full": "full checkpoint"}[name]
    assert block["merged_base"] == merged_base and block["same_greedy_answers"]


def test_inference_report_covers_every_ok_trial_and_joins_the_report(trial_dirs, tmp_path):
    exp = tmp_path / "outputs" / "exp" / "trials"
    for name in ("lora", "lora_b", "qlora"):
        shutil.copytree(trial_dirs[name], exp / name)
    path = inference.inference_report("exp", tmp_path / "outputs", tmp_path / "reports", 1, 4)
    data = json.loads((path.parent / "inference.json").read_text())
    assert len(data["trials"]) == 3
    assert all(t["max_abs_logit_diff"] < 1e-3 and t["same_greedy_answers"] for t in data["trials"])
    assert data["switch_ms"] is not None and data["switch_ms"] > 0  # two LoRA adapters, one base
    assert "## Inference: adapter separate vs merged" in path.read_text()
    from sweep.results import report

    records = [json.loads((exp / n / "result.json").read_text()) for n in ("lora", "qlora")]
    text = report.write(records, path.parent, "exp", compose([]).report.gpus).read_text()
    assert "## Inference: adapter separate vs merged" in text
