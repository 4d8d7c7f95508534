"""Training with the Trainer: the optimizer in backward against the plain loop.

python -m pytest -q tests/trial/test_train.py
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from sweep.__main__ import main
from sweep.settings.compose import compose
from sweep.trial.run import run_trial
from tests.conftest import tiny


def _full_ft(tmp_path, *extra: str):
    cfg = compose(tiny("method=full", "train.max_grad_norm=0", "eval.base=false",
                       "eval.retention_size=0", *extra))  # fmt: skip
    result = run_trial(cfg, tmp_path)
    assert result.status == "ok", result.train.get("error")
    return result, load_file(tmp_path / "adapter" / "model.safetensors")


def test_optimizer_in_backward_gives_the_plain_loops_weights(tmp_path):
    """Each weight updated as soon as its gradient exists: after 8 steps the same weights as
    the plain optimizer step over every gradient (no clipping on either side)."""
    plain, before = _full_ft(tmp_path / "plain")
    inback, after = _full_ft(tmp_path / "inback", "train.optimizer_in_backward=true")
    assert inback.run["optimizer_in_backward"] and not plain.run["optimizer_in_backward"]
    assert plain.train["loss_curve"] == pytest.approx(inback.train["loss_curve"], rel=1e-5)
    for name, w in before.items():
        torch.testing.assert_close(after[name], w, rtol=1e-5, atol=1e-6, msg=name)


def test_optimizer_in_backward_never_holds_every_gradient(tmp_path):
    plain, _ = _full_ft(tmp_path / "plain")
    inback, _ = _full_ft(tmp_path / "inback", "train.optimizer_in_backward=true")
    largest = 4 * 64 * 128  # fp32 gradient of the tiny model's largest weights (its MLP's)
    assert plain.metrics["ledger_grads_bytes"] == 4 * plain.metrics["trainable_params"]
    assert 0 < inback.metrics["ledger_grads_bytes"] <= 2 * largest
    assert inback.metrics["ledger_optimizer_bytes"] == plain.metrics["ledger_optimizer_bytes"]
    assert inback.metrics["plan_grads_gib"] * 1024**3 == pytest.approx(largest)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["train.loss_impl=foo"], "train.loss_impl='foo' is not allowed; expected one of"),
        (["method=full", "train.optimizer_in_backward=true", "train.grad_accum=2"],
         "train.grad_accum must be 1"),
        (["method=full", "train.optimizer_in_backward=true", "train.max_grad_norm=1.0"],
         "no clipping (train.max_grad_norm=0)"),
        (["train.loss_impl=liger"], "liger needs train.liger=true"),
    ],
)  # fmt: skip
def test_a_saver_where_it_cannot_apply_is_one_line_before_any_model_loads(
    capsys, overrides, expected
):
    assert main(["check", *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # a warning may come first
    assert err.startswith("error: ") and expected in err
