"""Bad input stops before any expensive work, with one line naming what is wrong and what is allowed."""

import importlib.util

import pytest

from sweep.__main__ import main
from sweep.config import ConfigError, compose
from sweep.preflight import preflight


def _error(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("method.alpha=-1", "method.alpha=-1.0 is not allowed; expected null (2*r) or > 0"),
        ("train.max_seq_len=4", "train.max_seq_len=4 is not allowed; expected 8..32768"),
        ("method.dropout=1.5", "method.dropout=1.5 is not allowed"),
        ("eval.size=0", "eval.size=0 is not allowed"),
        (
            "sweep.kind=random",
            "sweep.kind='random' is not allowed; expected one of ('grid', 'search')",
        ),
        ("dataset=nosuch", "dataset=nosuch: no such option; allowed: chain_sum, file, hub"),
        ("method=ful", "method=ful: no such option (did you mean full?)"),
    ],
)
def test_out_of_range_and_unknown_values(capsys, override, expected):
    assert expected in _error(capsys, "check", override)


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
    from sweep.preflight import preflight

    missing = tmp_path / "no" / "such" / "dir"
    for name in (str(missing), "./no-such-dir", "~/models/x/y"):
        cfg = compose(["model=hf", f"model.name_or_path='{name}'", "model.name=mine"])
        with pytest.raises(ConfigError, match="no such local directory, and not a hub id"):
            preflight(cfg)
