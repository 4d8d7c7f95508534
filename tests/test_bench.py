"""make bench's parts on the tiny model: each measures what it says, and the report has all four."""

import json

import pytest

from sweep.bench import bare_loop, eval_speed, peer
from sweep.bench.__main__ import main, overhead
from sweep.config import compose
from sweep.trial import run_trial

from .conftest import tiny


def test_bare_loop_trains_the_same_batches_and_measures_after_warmup(tmp_path):
    cfg = compose(tiny("method=lora", "method.r=4", "train.steps=12", "method.lr=0.01"))
    out = bare_loop.run(cfg)
    harness = run_trial(cfg, tmp_path / "trial").metrics
    # LoRA's B starts at zero: the first loss depends only on the first batch, which must match
    assert out["first_loss"] == pytest.approx(harness["first_loss"], rel=1e-5)
    assert out["measured_steps"] == 12 - cfg.train.measure_warmup_steps
    assert out["train_tokens_per_s"] > 0 and out["s_per_step"] > 0
    assert out["s_per_step_median"] > 0 and harness["s_per_step_median"] > 0
    assert out["final_loss"] < out["first_loss"]  # it really trains
    # non-padding tokens per step are at most the padded batch
    per_step = out["train_tokens_per_s"] * out["s_per_step"]  # equal when no batch is padded
    assert per_step <= out["padded_tokens_per_step"] * (1 + 1e-9)


def test_one_by_one_generation_gives_the_batched_evaluators_answers():
    out = eval_speed.run(compose(tiny("eval.size=6", "eval.batch_size=3")))
    assert out["prompts"] == 6 and out["identical_answers"] == 6
    assert out["generated_tokens"] > 0 and out["batched_s"] > 0 and out["one_by_one_s"] > 0


@pytest.mark.slow
def test_peer_runs_every_grid_point_through_trainer_hyperparameter_search():
    out = peer.run(["sweep=smoke", *tiny()])
    assert set(out["accuracy"]) == {"full", "lora r=4", "lora r=16", "qlora r=8"}
    assert all(0.0 <= a <= 1.0 for a in out["accuracy"].values())
    assert out["wall_s"] > 0


def test_steady_rate_counts_the_same_tokens_at_the_median_step_time():
    from sweep.bench.__main__ import steady_rate

    # 10 steps of 200 tokens: 9 at 1 s and one at 11 s (a neighbour's burst): 2000 tokens / 20 s
    run = {"train_tokens_per_s": 100.0, "s_per_step": 2.0, "s_per_step_median": 1.0}
    assert steady_rate(run) == pytest.approx(200.0)


def test_the_median_step_time_ignores_warmup_steps_and_one_slow_step():
    from sweep.train import TrainStats

    stats = TrainStats(
        steps=5, measured_steps=4, measured_s=12.0, step_s=[30.0, 1.0, 1.0, 9.0, 1.0]
    )
    m = stats.metrics()
    assert m["s_per_step"] == pytest.approx(3.0) and m["s_per_step_median"] == pytest.approx(1.0)


def test_overhead_share_is_time_outside_training_and_evaluation():
    trials = [
        {
            "trial_wall_s": 100.0,
            "train_phase_s": 80.0,
            "eval_s": 10.0,
            "base_eval_s": 4.0,  # the untuned base's evaluation is evaluation too
            "startup_s": 1.0,
            "load_s": 2.0,
        },
        {
            "trial_wall_s": 50.0,
            "train_phase_s": 45.0,
            "eval_s": 5.0,
            "startup_s": 1.0,
            "load_s": 0.0,
        },
    ]
    o = overhead(trials)
    assert o["share"] == pytest.approx(6.0 / 150.0)
    assert o["fixed_s_per_trial"] == pytest.approx(3.0)


@pytest.mark.slow
def test_make_bench_prints_and_writes_all_four_ratios(tmp_path, capsys):
    overrides = [
        "sweep=smoke",
        "~sweep.grid.qlora",
        "sweep.grid.lora.method.r=[4]",
        *tiny("eval.size=4"),
    ]
    assert main(["--steps", "4", "--repeats", "2", "--cost-steps", "12", *overrides]) == 0
    printed = capsys.readouterr().out
    for part in (
        "1. training tokens/s",
        "2. sweep wall time",
        "3. per-trial fixed overhead",
        "4. eval",
    ):
        assert part in printed
    md = (tmp_path / "reports" / "bench" / "harness.md").read_text()
    assert md.count("harness / bare") >= 3 and "hyperparameter_search" in md
    results = json.loads((tmp_path / "reports" / "bench" / "harness.json").read_text())
    assert {r["approach"] for r in results["throughput"]} == {"full", "lora r=16", "qlora r=16"}
    assert {t["trial"] for t in results["trials"]} == {"full", "lora r=4"}
    assert results["sweep"]["harness_s"] > 0 and results["sweep"]["peer_s"] > 0
    assert all(t["peer train_s"] > 0 and t["peer eval_s"] > 0 for t in results["trials"])
    assert all(r["repeats"] == 2 for r in results["throughput"])
    for r in results["throughput"]:  # the headline is the median of the rounds' own ratios
        rounds = [float(x) for x in r["round ratios"].split()]
        assert len(rounds) == 2 and r["harness / bare"] == pytest.approx(sum(rounds) / 2, abs=1e-3)
    assert "cores" in results["pairing"]  # 2+ cores, no GPU: both sides at once, pinned
    c = results["step_cost"]
    assert c["steps"] == 12 and c["bare_ms"] > 0 and c["harness_ms"] > 0
    assert "fixed cost per step" in md
    s = results["sweep"]  # ABBA: two runs per side, the ratio of the sums
    assert s["rounds"] == 2 and len(s["harness_walls_s"]) == len(s["peer_walls_s"]) == 2
    assert s["harness / peer"] == pytest.approx(sum(s["harness_walls_s"]) / sum(s["peer_walls_s"]))


def test_a_partial_run_keeps_the_other_parts_of_the_last_run(tmp_path):
    from sweep.bench.__main__ import keep_previous

    old = {
        "date": "then",
        "overrides": ["a=1"],
        "throughput": [{"approach": "full"}],
        "throughput_steps": 12,
        "warmup_steps": 2,
        "eval": {"prompts": 40},
        "ratios": [["4. eval", "5x", ">1"], ["1. training, full", "1.0", ">= 0.97"]],
    }
    (tmp_path / "harness.json").write_text(json.dumps(old))
    new = {"date": "now", "overrides": ["a=1"], "ratios": [["2. sweep", "0.9", "<= 1.0"]]}
    keep_previous(new, {"sweep", "eval"}, tmp_path / "harness.json")
    assert new["throughput"] == [{"approach": "full"}] and "eval" not in new
    assert [r[0] for r in new["ratios"]] == ["2. sweep", "1. training, full"]
    assert new["kept"] == {"throughput": "then"}
    old["kept"] = {"throughput": "long ago"}  # kept by the last run too: its own date stays
    (tmp_path / "harness.json").write_text(json.dumps(old))
    again = {"date": "now", "overrides": ["a=1"], "ratios": []}
    keep_previous(again, {"sweep", "eval"}, tmp_path / "harness.json")
    assert again["kept"] == {"throughput": "long ago"}
    other = {"date": "now", "overrides": ["a=2"], "ratios": []}
    keep_previous(other, {"sweep"}, tmp_path / "harness.json")  # other overrides: nothing kept
    assert "throughput" not in other and other["ratios"] == []


def test_a_bad_override_is_one_line_before_anything_runs():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "sweep.bench", "--only", "eval", "method.r=0"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: method.r=0 is not allowed; expected an integer >= 1"
    ]


@pytest.mark.parametrize("arg", [["--sweep-rounds", "0"], ["--repeats", "-1"], ["--steps", "x"]])
def test_counts_below_one_are_refused_before_anything_runs(arg, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*arg, "--only", "sweep"])
    assert exc.value.code == 2
    assert "expected an integer >= 1" in capsys.readouterr().err
