"""Bad input stops before any expensive work, with one line naming what is wrong and what is allowed."""

import importlib.util

import pytest

from sweep.__main__ import main
from sweep.settings import hardware
from sweep.settings.compose import ConfigError, compose
from sweep.trial.preflight import preflight


def _error(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("method.alpha=-1", "method.alpha=-1.0 is not allowed; expected null (2*r) or > 0"),
        (
            "train.max_seq_len=4",
            "train.max_seq_len=4 is not allowed; expected 0 (auto: from the train data) or 8..32768",
        ),
        ("method.dropout=1.5", "method.dropout=1.5 is not allowed"),
        ("eval.size=0", "eval.size=0 is not allowed"),
        (
            "sweep.kind=random",
            "sweep.kind='random' is not allowed; expected one of ('grid', 'search')",
        ),
        ("dataset=nosuch", "dataset=nosuch: no such option; allowed: chain_sum, file, gsm8k, hub"),
        ("method=ful", "method=ful: no such option (did you mean full?)"),
    ],
)
def test_out_of_range_and_unknown_values(capsys, override, expected):
    assert expected in _error(capsys, "check", override)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["dataset=gsm8k", "dataset.scorer=gsm8kk"],
            "error: dataset.scorer='gsm8kk' is not allowed; expected one of ('exact', 'numeric', "
            "'regex', 'gsm8k', 'choice') or a function path (mypkg.mod:fn)",
        ),
        (
            ["dataset.scorer=numeric"],
            "error: dataset.scorer='numeric' is not allowed; expected exact for a reasoning-gym "
            "task (task_score is the task's own scorer)",
        ),
        (
            ["dataset=hub", "dataset.path=a/b", "dataset.scorer=regex"],
            "error: dataset.answer_regex=None is not allowed; expected a regular expression with "
            "one group for dataset.scorer=regex, e.g. 'answer: (\\S+)'",
        ),
        (
            ["dataset=hub", "dataset.path=a/b", "dataset.scorer=regex", "dataset.answer_regex=a+"],
            "error: dataset.answer_regex='a+' is not allowed; expected a regular expression with "
            "one group",
        ),
        (
            ["dataset=gsm8k", "dataset.eval_split=train"],
            "error: dataset.eval_split='train' is not allowed; expected a split other than "
            "dataset.split (train) or null",
        ),
        (
            ["dataset=gsm8k", "dataset.max_new_tokens=0"],
            "error: dataset.max_new_tokens=0 is not allowed; expected null (eval.max_new_tokens) "
            "or an integer >= 1",
        ),
    ],
)
def test_bad_scoring_and_split_settings(capsys, overrides, expected):
    assert _error(capsys, "check", *overrides).startswith(expected)


def test_eval_split_is_for_hub_datasets(capsys, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "1+1", "answer": "2"}\n{"prompt": "2+2", "answer": "4"}\n')
    err = _error(capsys, "check", "dataset=file", f"dataset.path={rows}", "dataset.eval_split=test")
    assert err == (
        "error: dataset.eval_split='test' is not allowed; expected null unless dataset.source=hub"
    )


def test_a_malformed_chat_row_fails_the_sweep_up_front(tmp_path, capsys):
    bad = tmp_path / "chat.jsonl"
    good = (
        '{"messages": [{"role": "user", "content": "1+1"}, {"role": "assistant", "content": "2"}]}'
    )
    bad.write_text(good + '\n{"messages": [{"role": "user", "content": "2+2"}]}\n')
    err = _error(capsys, "run", "sweep=smoke", "dataset=file", f"dataset.path={bad}")
    assert err == f"error: {bad}:2: 'messages' has no assistant turn (the last one is the answer)"
    assert not (tmp_path / "outputs").exists()


def test_a_scorer_that_does_not_import_fails_the_sweep_up_front(tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "1+1", "answer": "2"}\n{"prompt": "2+2", "answer": "4"}\n')
    err = _error(
        capsys, "run", "sweep=smoke", "dataset=file", f"dataset.path={rows}",
        "dataset.scorer=mypkg.scoring:score",
    )  # fmt: skip
    assert err.startswith(
        "error: dataset.scorer='mypkg.scoring:score' does not import (ModuleNotFoundError: "
    )
    assert not (tmp_path / "outputs").exists()


def test_sweep_with_bad_trial_value_fails_before_any_trial(capsys, tmp_path):
    err = _error(capsys, "run", "sweep=smoke", "train.steps=-1")
    assert "train.steps=-1 is not allowed" in err
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "mlflow.db").exists()


def test_qlora_without_bitsandbytes_is_refused(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "bitsandbytes" else real(name, *a),
    )
    with pytest.raises(ConfigError, match="method=qlora needs bitsandbytes"):
        preflight(compose(["method=qlora", "model=tiny_llama"]))


def test_malformed_dataset_row_fails_the_sweep_up_front(tmp_path, capsys):
    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"prompt": "1+1", "answer": "2"}\n{"prompt": "2+2" "answer": "4"}\n')
    err = _error(capsys, "run", "sweep=smoke", "dataset=file", f"dataset.path={bad}")
    assert "rows.jsonl:2: not valid JSON" in err
    assert not (tmp_path / "outputs").exists()


def test_unreachable_storage_is_named_without_its_password(capsys):
    err = _error(
        capsys, "run", "sweep=smoke", "sweep.storage=postgresql://bob:hunter2@127.0.0.1:9/optuna"
    )
    assert "sweep.storage=postgresql://bob:***@127.0.0.1:9/optuna: cannot open" in err
    assert "hunter2" not in err


def test_unreachable_tracking_server(capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    err = _error(capsys, "run", "sweep=smoke")
    assert "MLFLOW_TRACKING_URI=http://127.0.0.1:9: tracking server not reachable" in err


def test_model_directory_without_weights(tmp_path, capsys):
    err = _error(capsys, "trial", "model=hf", f"model.name_or_path={tmp_path}")
    assert "no safetensors weights there" in err


def test_report_for_unknown_experiment(capsys):
    err = _error(capsys, "report", "never_ran")
    assert "experiment 'never_ran': no trials logged" in err


def test_missing_required_model_path(capsys):
    assert "model.name_or_path" in _error(capsys, "check", "model=hf")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("0-x", "SWEEP_CPUS='0-x' is not allowed; expected cores like 0-3,6"),
        ("3-1", "SWEEP_CPUS='3-1' is not allowed; expected cores like 0-3,6"),
        ("4096", "SWEEP_CPUS='4096': no core(s) [4096] here; allowed: "),
    ],
)
def test_bad_sweep_cpus_is_refused_before_any_trial(capsys, monkeypatch, tmp_path, spec, expected):
    monkeypatch.setenv("SWEEP_CPUS", spec)
    assert expected in _error(capsys, "run", "sweep=smoke", "model=tiny_llama")
    assert not (tmp_path / "outputs").exists()


def test_a_local_model_path_that_does_not_exist_fails_in_preflight(tmp_path):
    from sweep.trial.preflight import preflight

    missing = tmp_path / "no" / "such" / "dir"
    for name in (str(missing), "./no-such-dir", "~/models/x/y"):
        cfg = compose(["model=hf", f"model.name_or_path='{name}'", "model.name=mine"])
        with pytest.raises(ConfigError, match="no such local directory, and not a hub id"):
            preflight(cfg)


def test_attention_kernel_is_checked_before_anything_loads():
    from sweep.trial.preflight import check_attention

    with pytest.raises(ConfigError, match="model.attn_implementation='flash' is not allowed"):
        compose(["model.attn_implementation=flash"])
    check_attention("eager")  # always available
    if importlib.util.find_spec("flash_attn") is None or not hardware.gpu_present():
        with pytest.raises(ConfigError, match="flash_attention_2 needs the flash-attn package"):
            check_attention("flash_attention_2")


def test_a_hub_id_offline_and_not_cached_fails_in_preflight(monkeypatch):
    from sweep.planning import arch
    from sweep.trial.preflight import preflight

    def no_network(*args, **kwargs):
        raise OSError("unreachable")

    monkeypatch.setattr(arch.socket, "create_connection", no_network)
    cfg = compose(["model=hf", "model.name_or_path=some-org/not-cached-model", "model.name=x"])
    with pytest.raises(ConfigError) as err:
        preflight(cfg)
    assert str(err.value).startswith(
        "model.name_or_path='some-org/not-cached-model': not in the Hugging Face cache and no "
        "network: cannot reach"
    )


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.name=/x/y", "model.name"),  # would have put the model cache at /x/y
        ("model.name=../up", "model.name"),
        ("dataset.name=a/b", "dataset.name"),
        ("dataset.name=..", "dataset.name"),
        ("experiment=../other", "experiment"),
        ("experiment=..", "experiment"),
        ("sweep.name=a\\b", "experiment"),  # the experiment's name is sweep.name's
    ],
)
def test_a_name_that_would_become_a_path_outside_the_project_is_refused(capsys, override, key):
    err = _error(capsys, "check", override)
    assert err.startswith(f"error: {key}=") and "is not allowed" in err


def test_a_label_with_path_characters_stays_inside_the_trials_folder():
    from sweep.study.points import slug

    assert "/" not in slug("../../etc lora r=16") and "\\" not in slug("a\\b")


def test_a_target_module_the_model_lacks_is_named_before_it_loads(capsys):
    err = _error(capsys, "check", "model=tiny_llama", "method.target_modules=[nonexistent_proj]")
    assert "'nonexistent_proj' matches no linear layer of model=tiny_llama" in err
    assert "q_proj" in err and "down_proj" in err  # the names the model has


def test_target_modules_the_model_has_pass_the_check(capsys):
    assert main(["check", "model=tiny_llama", "method.target_modules=[q_proj,v_proj]"]) == 0
    regex = "method.target_modules='.*self_attn.(q|v)_proj'"  # PEFT: a string is a regex
    assert main(["check", "model=tiny_llama", regex]) == 0
    assert "matches no linear layer" in _error(
        capsys, "check", "model=tiny_llama", "method.target_modules=nope.*"
    )
