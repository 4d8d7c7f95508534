"""One sweep over a machine's GPUs (sweep.study.pool): a worker per GPU or per group of train.gpus,
each with its own CUDA_VISIBLE_DEVICES, one study, one report. On a CPU host the workers run on
the CPU, which is how this file runs the whole pool."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from sweep.results import tracking
from sweep.results.record import load
from sweep.settings.compose import ConfigError
from sweep.study.pool import devices, groups
from sweep.study.study import run_sweep
from tests.conftest import tiny


def test_gpu_lists_are_read_from_yaml_lists_or_commas_and_named_once():
    assert devices([0, 1]) == ["0", "1"]
    assert devices("2, 3") == ["2", "3"]
    assert devices(["GPU-1a2b", "GPU-3c4d"]) == ["GPU-1a2b", "GPU-3c4d"]
    with pytest.raises(ConfigError, match="names a GPU twice"):
        devices([0, 0])


def test_workers_get_consecutive_groups_of_train_gpus(capsys):
    assert groups(["0", "1", "2", "3"], 1) == [["0"], ["1"], ["2"], ["3"]]
    assert groups(["0", "1", "2", "3"], 2) == [["0", "1"], ["2", "3"]]
    assert groups(["0", "1", "2"], 2) == [["0", "1"]]
    assert "['2'] left idle" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="train.gpus=2 needs at least 2"):
        groups(["0"], 2)


@pytest.mark.skipif(
    torch.cuda.is_available() and torch.cuda.device_count() < 2, reason="needs two GPUs"
)
def test_a_pool_of_two_workers_runs_each_point_once_and_reports_once(tmp_path, capfd):
    points = ["sweep=smoke", "~sweep.grid.qlora", "sweep.grid.lora.method.r=[4]"]
    code = run_sweep([*points, *tiny(), "sweep.gpus=[0,1]"])
    out = capfd.readouterr().out
    assert code == 0, out[-3000:]
    assert "[pool] smoke: 2 workers on GPUs [['0'], ['1']]" in out
    assert "[gpu 0] " in out and "[gpu 1] " in out  # each worker's lines, prefixed
    assert out.count("report: ") == 1  # the pool's, not one per worker
    records = [load(p) for p in (tmp_path / "outputs" / "smoke" / "trials").glob("*/result.json")]
    assert Counter(r.run["label"] for r in records if r.status == "ok") == Counter(
        {"full": 1, "lora r=4": 1}
    )
    seen = {tuple(r.meta.get("visible_devices") or ()) for r in records}
    assert seen <= {("0",), ("1",)} and seen  # each trial ran under its worker's device
    assert (tmp_path / "reports" / "smoke" / "report.md").is_file()
    parent = tracking.client().get_run(tracking.find_parent("smoke"))
    assert parent.info.status == "FINISHED"
