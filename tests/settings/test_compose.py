from pathlib import Path

import pytest

from sweep.settings.compose import CONF_DIR, ConfigError, compose, config_hash

GROUPS = ["model", "method", "dataset", "train", "sweep"]
NEEDS = {"model=hf": ["model.name_or_path=some/model"], "dataset=hub": ["dataset.path=some/data"]}


def shipped():
    for group in GROUPS:
        for f in sorted((CONF_DIR / group).glob("*.yaml")):
            yield f"{group}={f.stem}"


@pytest.mark.parametrize("choice", list(shipped()))
def test_every_shipped_yaml_composes_and_validates(choice, tmp_path):
    extra = list(NEEDS.get(choice, []))
    if choice == "dataset=file":
        (tmp_path / "d.jsonl").write_text('{"prompt": "1+1", "answer": "2"}\n')
        extra.append(f"dataset.path={tmp_path / 'd.jsonl'}")
    cfg = compose([choice, *extra])
    group, name = choice.split("=")
    section = getattr(cfg, group)
    assert getattr(section, "name", name) == name


def test_qlora_is_lora_plus_quant_block():
    lora, qlora = compose(["method=lora"]).method, compose(["method=qlora"]).method
    assert lora.quant is None and qlora.quant is not None and qlora.quant.type == "nf4"
    assert (lora.r, lora.lr, lora.dropout, lora.target_modules) == (
        qlora.r,
        qlora.lr,
        qlora.dropout,
        qlora.target_modules,
    )


def test_alpha_is_tied_to_rank_unless_set():
    assert compose(["method.r=8"]).method.lora_alpha == 16
    assert compose(["method.r=64"]).method.lora_alpha == 128
    assert compose(["method.r=64", "method.alpha=16"]).method.lora_alpha == 16


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method.r=0"], "method.r=0 is not allowed; expected an integer >= 1"),
        (
            ["method=lorra"],
            "method=lorra: no such option (did you mean lora?); allowed: full, lora, qlora",
        ),
        (["method.lr=0"], "method.lr=0.0 is not allowed; expected 0 < lr < 1"),
        (["method.lr=-1e-3"], "method.lr=-0.001 is not allowed"),
        (
            ["dataset=file", "dataset.path=missing.jsonl"],
            "dataset.path='missing.jsonl' is not allowed; expected an existing .jsonl or .csv file",
        ),
        (["model=llama9"], "model=llama9: no such option"),
        (["method.rr=4"], "method.rr: unknown config key (did you mean method.r?)"),
        (["train.steps=0"], "train.steps=0 is not allowed"),
        (["train.batch_size=-2"], "train.batch_size=-2 is not allowed"),
        (["train.precision=fp8"], "train.precision='fp8' is not allowed; expected one of"),
        (
            ["train.steps=many"],
            "train.steps: Value 'many' of type 'str' could not be converted to Integer",
        ),
        (["+train.foo=1"], "train.foo: unknown config key"),
        (["dataset.task=no_such_task"], "dataset.task='no_such_task' is not allowed"),
        (["experiment=../etc"], "experiment='../etc' is not allowed"),
        (["sweep.objectives=[speed]"], "sweep.objectives='speed' is not allowed"),
    ],
)
def test_bad_values_fail_with_one_clear_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        compose(overrides)
    text = str(err.value)
    assert message in text
    assert "\n" not in text


def test_config_hash_tracks_outcome_keys_only():
    a = compose([])
    assert config_hash(a) == config_hash(compose(["experiment=other", "sweep=smoke"]))
    assert config_hash(a) != config_hash(compose(["method.r=8"]))


def test_storage_password_is_redacted_in_config_dict():
    from sweep.settings.compose import as_dict

    d = as_dict(compose(["sweep.storage=postgresql://bob:hunter2@db:5432/optuna"]))
    assert d["sweep"]["storage"] == "postgresql://bob:***@db:5432/optuna"


def test_cli_prints_error_without_traceback(capsys):
    from sweep.__main__ import main

    assert main(["check", "method.r=-3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: method.r=-3 is not allowed; expected an integer >= 1"


def test_conf_dir_is_the_repo_conf():
    assert (Path(CONF_DIR) / "config.yaml").is_file()


# What a default file sets on purpose, beyond restating the schema: the default sweep's grid.
DEFAULT_CONTENT = {"sweep": {"grid"}}


@pytest.mark.parametrize("group", ["train", "sweep"])
def test_each_default_yaml_restates_its_schema_defaults(group):
    """One source for each default: conf/<group>/default.yaml says what the schema says."""
    import dataclasses

    import yaml

    from sweep.settings import schema

    cls = {"train": schema.TrainConfig, "sweep": schema.SweepConfig}[group]
    declared = {f.name: f for f in dataclasses.fields(cls)}
    values = yaml.safe_load((CONF_DIR / group / "default.yaml").read_text())
    differ = {}
    for key, value in values.items():
        if key in DEFAULT_CONTENT.get(group, ()):
            continue
        f = declared[key]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if value != default:
            differ[key] = (value, default)
    assert differ == {}, f"conf/{group}/default.yaml (yaml, schema): {differ}"


def test_the_root_config_restates_the_eval_and_report_defaults():
    import dataclasses

    import yaml

    from sweep.settings import schema

    root = yaml.safe_load((CONF_DIR / "config.yaml").read_text())
    for key, cls in (("eval", schema.EvalConfig), ("report", schema.ReportConfig)):
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        differ = {k: v for k, v in root[key].items() if k != "gpus" and v != defaults[k]}
        assert differ == {}, f"conf/config.yaml {key}: {differ}"


def test_a_default_the_user_did_not_set_adapts_to_what_they_did(capsys):
    """train.steps=2 with the default 2 warm-up steps: one fewer excluded, with one warning."""
    cfg = compose(["train.steps=2"])
    assert cfg.train.measure_warmup_steps == 1
    assert compose(["train.steps=1"]).train.measure_warmup_steps == 0
    compose(["train.steps=2"])  # a sweep composes every point: still one line
    err = capsys.readouterr().err
    assert err.count("warning: train.measure_warmup_steps (default 2)") == 2  # steps=2, steps=1
    assert compose(["train.steps=3"]).train.measure_warmup_steps == 2


def test_a_value_the_user_set_is_refused_when_out_of_range():
    with pytest.raises(ConfigError, match="train.measure_warmup_steps=2 is not allowed"):
        compose(["train.steps=2", "train.measure_warmup_steps=2"])
    with pytest.raises(ConfigError, match="train.measure_warmup_steps=5 is not allowed"):
        compose(["train.steps=2", "++train.measure_warmup_steps=5"])


def test_the_task_trained_is_named_apart_from_the_dataset_config(tmp_path):
    from sweep.results.record import run_info

    (tmp_path / "my_task.jsonl").write_text('{"prompt": "1+1", "answer": "2"}\n')
    run = run_info(compose(["dataset.task=spell_backward"]))
    assert (run["task"], run["dataset"]) == ("spell_backward", "chain_sum")
    run = run_info(compose(["dataset=file", f"dataset.path={tmp_path / 'my_task.jsonl'}"]))
    assert (run["task"], run["dataset"]) == ("my_task.jsonl", "file")
    run = run_info(compose(["dataset=gsm8k"]))
    assert run["task"] == "openai/gsm8k:main"
