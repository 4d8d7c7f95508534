"""make bench's parts on the tiny model: each measures what it says, and the report has all six."""

import json
from types import SimpleNamespace

import pytest
import torch

from sweep.bench import bare_loop, eval_speed, peer, sft_peer, sweep_time
from sweep.bench.__main__ import main
from sweep.bench.parts import (
    PARTS,
    SECTION_ORDER,
    keep_previous,
    ratio_rows,
    write,
)
from sweep.bench.parts_harness import sweep_section
from sweep.results.frame import overhead, to_frame
from sweep.results.record import TrialResult
from sweep.results.report import _overhead
from sweep.settings.compose import compose
from sweep.trial.run import run_trial
from tests.conftest import tiny


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


def test_trl_sft_trainer_trains_the_same_first_batch_and_measures_after_warmup(tmp_path):
    cfg = compose(tiny("method=lora", "method.r=4", "train.steps=6"))
    out = sft_peer.run(cfg)
    harness = run_trial(cfg, tmp_path / "trial").metrics
    # LoRA's B starts at zero: the first loss depends only on the first batch, which must match
    # (same examples rendered the same way, same data order, loss on the answer only)
    assert out["first_loss"] == pytest.approx(harness["first_loss"], rel=1e-4)
    assert out["steps"] == 6 and out["measured_steps"] == 6 - cfg.train.measure_warmup_steps
    assert out["train_tokens_per_s"] > 0 and out["s_per_step"] > 0
    assert out["s_per_step_median"] > 0 and out["peak_memory_gib"] > 0
    assert out["memory_kind"] == "host_rss"
    # the same non-padding tokens in the measured steps: the same batches, counted alike
    per_step = harness["train_tokens_per_s"] * harness["s_per_step"]
    assert out["tokens_per_step"] == pytest.approx(per_step, rel=1e-9)
    d = out["trl_defaults"]  # TRL's own defaults, recorded as it ran
    assert d["completion_only_loss_used"] is True and d["packing"] is False
    # the tiny model's characters overrun train.max_seq_len=48: cut as the harness cuts them
    # (TRL's keep_end), not TRL's default keep_start, which would drop every example here
    assert out["examples_cut"] > 0 and d["truncation_mode"] == "keep_end"
    assert d["examples"] == d["examples_after_truncation"] == 6 * 4
    assert out["trl_version"]


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
    from sweep.bench.paired import steady_rate

    # 10 steps of 200 tokens: 9 at 1 s and one at 11 s (a neighbour's burst): 2000 tokens / 20 s
    run = {"train_tokens_per_s": 100.0, "s_per_step": 2.0, "s_per_step_median": 1.0}
    assert steady_rate(run) == pytest.approx(200.0)


def test_the_median_step_time_ignores_warmup_steps_and_one_slow_step():
    from sweep.trial.train import TrainStats

    stats = TrainStats(
        steps=5, measured_steps=4, measured_s=12.0, step_s=[30.0, 1.0, 1.0, 9.0, 1.0]
    )
    m = stats.metrics()
    assert m["s_per_step"] == pytest.approx(3.0) and m["s_per_step_median"] == pytest.approx(1.0)


def test_a_trial_records_when_each_measured_step_ran():
    from sweep.trial.train import TrainStats

    stats = TrainStats(measured_steps=2, step_s=[5.0, 1.0, 2.0], step_end=[105.0, 106.0, 108.0])
    assert stats.clock() == [[105.0, 106.0], [106.0, 108.0]]  # the warm-up step left out


def test_side_by_side_rates_count_only_the_steps_beside_the_other_sides_training():
    from sweep.bench.paired import overlap_rate

    # 8 steps of 100 tokens: 4 fast ones (1 s) while the other side loads (before t=4),
    # then 4 slow ones (2 s) beside its training (t=4..12)
    clock = [[i, i + 1.0] for i in range(4)] + [[4.0 + 2 * i, 6.0 + 2 * i] for i in range(4)]
    run = {"train_tokens_per_s": 800 / 12, "s_per_step": 1.5, "s_per_step_median": 1.5}
    other = {"step_clock": [[4.0, 7.0], [7.0, 12.5]]}
    assert overlap_rate({**run, "step_clock": clock}, other) == pytest.approx(50.0)
    # no clock on either side, or fewer than 3 steps beside it: the steady rate
    assert overlap_rate(run, other) == pytest.approx(800 / 12 * 1.5 / 1.5)
    assert overlap_rate({**run, "step_clock": clock}, {"step_clock": [[0.0, 2.0]]}) == (
        pytest.approx(800 / 12)
    )


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
    only = "eval,throughput,step,sweep"  # the TRL part has a test of its own
    args = ["--steps", "4", "--repeats", "2", "--cost-steps", "12", "--sweep-rounds", "1"]
    args += ["--only", only]  # ABBA order over several sweep rounds: a test of its own
    assert main([*args, *overrides]) == 0
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
    s = results["sweep"]
    assert s["rounds"] == 1 and len(s["harness_walls_s"]) == len(s["peer_walls_s"]) == 1
    assert s["harness / peer"] == pytest.approx(s["harness_walls_s"][0] / s["peer_walls_s"][0])
    assert s["harness_base_eval_s"][0] > 0  # the cache was cleared: the run scored the base
    assert s["harness / peer, base cached"] < s["harness / peer"]
    assert "Less those measured phases, ratio" in md


def test_sweep_rounds_run_abba_and_compare_the_sums(tmp_path, monkeypatch):
    from sweep.bench import sweep_time

    order: list[str] = []
    walls = {"harness": iter([100.0, 120.0]), "peer": iter([130.0, 110.0])}

    def side(name):  # noqa: ANN001, ANN202
        def run(user, work):  # noqa: ANN001, ANN202
            order.append(f"{name}:{work.name}")
            if (
                name == "harness"
            ):  # the first run evaluates the untuned base 30 + 8 s, the second 35
                base = iter([30.0, 8.0] if work.name == "sweep-0" else [35.0, 0.0])
                recs = [
                    SimpleNamespace(metrics={"base_eval_s": b}, run={}, status="ok") for b in base
                ]
                return next(walls[name]), recs
            return next(walls[name]), {"accuracy": {}, "phases": {}}

        return run

    monkeypatch.setattr(sweep_time, "_harness_sweep", side("harness"))
    monkeypatch.setattr(sweep_time, "_peer_sweep", side("peer"))
    summary, trials, _ = sweep_time.sweep_vs_peer([], tmp_path, rounds=2)
    assert order == ["harness:sweep-0", "peer:peer-0", "peer:peer-1", "harness:sweep-1"]
    assert summary["harness_walls_s"] == [100.0, 120.0] and summary["peer_walls_s"] == [
        130.0,
        110.0,
    ]
    assert summary["harness / peer"] == pytest.approx(220.0 / 240.0) and len(trials) == 2
    # a later sweep reads the untuned base from the cache: the walls less those phases
    assert summary["harness_base_eval_s"] == [38.0, 35.0]
    assert summary["harness / peer, base cached"] == pytest.approx((220.0 - 73.0) / 240.0)
    text = "\n".join(sweep_section({"sweep": summary, "overhead": OVERHEAD, "trials": trials}))
    assert "Ratio 0.917 (rounds 0.769, 1.091)." in text  # each round: its harness over its peer
    assert "spent 38 + 35 s evaluating the untuned base" in text
    rows = ratio_rows({"sweep": summary, "overhead": OVERHEAD})
    assert rows[0] == (  # rounds 0.769 and 1.091: the interval straddles the target
        "2. sweep wall time, harness / peer",
        "0.917 (95% interval 0.10-8.43 over 2 rounds: not resolved)",
        "<= 0.9 (CPU)",
    )
    later = "0.613 (95% interval 0.03-13.02 over 2 rounds: not resolved)"  # 0.477, 0.773
    assert rows[1] == (
        "2. the same, a later sweep (untuned base cached; derived)",
        later,
        "<= 0.9 (CPU)",
    )


@pytest.mark.parametrize(
    ("harness", "verdict"),
    [([80.0, 82.0, 79.0, 81.0], "met"), ([96.0, 99.0, 97.0, 98.0], "missed")],
)
def test_sweep_rounds_give_an_interval_and_a_verdict(harness, verdict):
    """Each round's own ratio (its harness run over its peer run) gives the 95% interval: under
    0.9 as a whole is met, above it missed; the cached-base row drops each run's base phases."""
    summary = {
        "harness_walls_s": harness,
        "peer_walls_s": [100.0, 101.0, 99.0, 100.0],
        "harness / peer": sum(harness) / 400.0,
        "harness_base_eval_s": [30.0] * 4,
        "harness / peer, base cached": (sum(harness) - 120.0) / 400.0,
    }
    first, later = ratio_rows({"sweep": summary, "overhead": OVERHEAD})[:2]
    assert first[1].endswith(f"over 4 rounds: {verdict})") and first[2] == "<= 0.9 (CPU)"
    assert later[1].endswith("over 4 rounds: met)")  # 0.5-0.7 a round
    gpu = ratio_rows({"sweep": summary, "overhead": OVERHEAD, "environment": {"device": "cuda"}})
    assert gpu[0][1].endswith("over 4 rounds: met)") and gpu[0][2] == "<= 1.0 (GPU)"


@pytest.mark.slow
def test_make_bench_only_sft_pairs_harness_trials_with_trl_sft_trainer(tmp_path, capsys):
    assert main(["--only", "sft", "--steps", "4", "--repeats", "1", *tiny()]) == 0
    printed = capsys.readouterr().out
    assert printed.count("5. training tokens/s, harness / TRL SFTTrainer") == 3
    results = json.loads((tmp_path / "reports" / "bench" / "harness.json").read_text())
    assert [r["approach"] for r in results["sft"]] == ["full", "lora r=16", "qlora r=16"]
    for r in results["sft"]:
        assert r["harness / SFTTrainer"] > 0 and r["repeats"] == 1
        assert r["SFTTrainer peak GiB (median)"] > 0 and r["harness peak GiB (median)"] > 0
        assert r["trl_defaults"]["completion_only_loss_used"] is True
    assert results["sft_steps"] == 4 and "cores" in results["sft_pairing"]
    md = (tmp_path / "reports" / "bench" / "harness.md").read_text()
    assert "## 5. Training throughput and memory" in md and "TRL's defaults kept" in md


def test_a_partial_run_keeps_the_other_parts_of_the_last_run(tmp_path):
    old = {
        "date": "then",
        "overrides": ["a=1"],
        "throughput": [{"approach": "full", "harness / bare": 1.0}],
        "throughput_steps": 12,
        "warmup_steps": 2,
        "eval": {"prompts": 40},
        "ratios": [["4. eval", "5x", ">1"], ["1. training, full", "1.0", ">= 0.97"]],
    }
    (tmp_path / "harness.json").write_text(json.dumps(old))
    new = {"date": "now", "overrides": ["a=1"], "sweep": SWEEP, "overhead": OVERHEAD}
    keep_previous(new, {"sweep", "eval"}, tmp_path / "harness.json")
    assert new["throughput"] == old["throughput"] and "eval" not in new
    assert new["throughput_steps"] == 12 and new["warmup_steps"] == 2
    assert new["kept"] == {"throughput": "then"}
    # the kept part's ratio rows come from its kept results, in the table's order
    assert [r[:2] for r in ratio_rows(new)] == [
        ("1. training tokens/s, harness / bare, full", "1.000"),
        (
            "2. sweep wall time, harness / peer",
            "0.939 (95% interval 0.42-2.11 over 2 rounds: not resolved)",
        ),
        ("3. per-trial fixed overhead share", "2.3%"),
    ]
    old["kept"] = {"throughput": "long ago"}  # kept by the last run too: its own date stays
    (tmp_path / "harness.json").write_text(json.dumps(old))
    again = {"date": "now", "overrides": ["a=1"], "ratios": []}
    keep_previous(again, {"sweep", "eval"}, tmp_path / "harness.json")
    assert again["kept"] == {"throughput": "long ago"}
    other = {"date": "now", "overrides": ["a=2"], "ratios": []}
    keep_previous(other, {"sweep"}, tmp_path / "harness.json")  # other overrides: nothing kept
    assert "throughput" not in other and "kept" not in other and ratio_rows(other) == []


# Results shaped like reports/bench/harness.json (numbers from one real run, trimmed).
EVAL = {
    "prompts": 40,
    "batch_size": 20,
    "max_new_tokens": 12,
    "generated_tokens": 427,
    "batched_s": 4.439,
    "one_by_one_s": 19.43,
    "batched_tokens_per_s": 96.18,
    "one_by_one_tokens_per_s": 21.98,
    "identical_answers": 40,
    "different": [],
}
THROUGHPUT = [
    {
        "approach": name,
        "repeats": 4,
        "bare tokens/s (median)": 145.0,
        "harness tokens/s (median)": 148.0,
        "harness / bare": ratio,
        "round ratios": "0.874 1.030 1.051 1.013",
        "bare s/step (median)": 2.5,
        "bare spread": "142-146",
        "harness spread": "127-150",
        "harness model TFLOP/s": 0.0704,
    }
    for name, ratio in (("full", 1.0002), ("lora r=16", 1.0214), ("qlora r=16", 1.0231))
]
SWEEP = {
    "rounds": 2,
    "harness_walls_s": [605.1, 667.9],
    "peer_walls_s": [687.3, 667.7],
    "harness_s": 1273.0,
    "peer_s": 1355.0,
    "harness / peer": 0.9394,
    "trials_wall_s": 591.1,
    "harness_train_s": 542.6,
    "peer_train_s": 646.2,
}
TRIALS = [
    {
        "trial": "lora r=16",
        "accuracy": 0.55,
        "peer accuracy": 0.55,
        "peer train_s": 109.7,
        "peer eval_s": 4.03,
        "trial_wall_s": 113.1,
        "train_phase_s": 99.9,
        "eval_s": 4.38,
        "base_eval_s": 5.04,
        "startup_s": 1.74,
        "load_s": 0.594,
    }
]
OVERHEAD = {
    "trials": 5,
    "fixed_s_per_trial": 2.709,
    "share": 0.02292,
    "startup_s_per_trial": 0.4656,
    "load_s_per_trial": 0.9819,
}


SFT = [
    {
        "approach": name,
        "repeats": 2,
        "SFTTrainer tokens/s (median)": 120.0,
        "harness tokens/s (median)": 150.0,
        "harness / SFTTrainer": ratio,
        "round ratios": "1.240 1.260",
        "SFTTrainer s/step (median)": 3.1,
        "SFTTrainer peak GiB (median)": sft_gib,
        "harness peak GiB (median)": 1.5,
        "SFTTrainer spread": "118-122",
        "harness spread": "148-152",
        "memory": "host_rss",
        "trl": "1.16.0",
        "trl_defaults": {
            "packing": False,
            "padding_free": False,
            "loss_type": "nll",
            "gradient_checkpointing": True,
            "logging_steps": 10,
            "truncation_mode": "keep_start",
            "completion_only_loss_used": True,
            "trainable_dtypes": dtypes,
            "examples": 128,
            "examples_after_truncation": 128,
        },
    }
    for name, ratio, sft_gib, dtypes in (
        ("full", 1.25, 2.0, ["torch.float32"]),
        ("lora r=16", 1.3, 1.25, ["torch.float32"]),
        ("qlora r=16", 1.5, 1.0, ["torch.bfloat16"]),
    )
]


PACKING = {
    "packed_tokens_per_s": 1400.0,
    "padded_tokens_per_s": 1000.0,
    "ratio": 1.4,
    "steady_ratio": 1.41,
    "round_ratios": [1.38, 1.44],
    "tokens_seen": {"packed": 29000, "padded": 29000},
    "first_batch_shape": {"packed": [5, 320], "padded": [8, 320]},
    "steps": 16,
    "repeats": 2,
    "overrides": ["model=smollm2_135m", "method=lora"],
}


def _results() -> dict:
    return {
        "date": "2026-11-30 01:10",
        "overrides": [],
        "environment": {
            "cpu": "Xeon",
            "cpu_count": 2,
            "device": "cpu",
            "device_name": "Xeon",
            "versions": {"torch": "2.13.0", "transformers": "5.23.0"},
        },
        "ratios": [],
        "eval": EVAL,
        "throughput": THROUGHPUT,
        "throughput_steps": 16,
        "warmup_steps": 2,
        "pairing": "both sides at once, on cores 0 and 1 (swapped every round)",
        "step_cost": {
            "bare_ms": 17.26,
            "harness_ms": 24.31,
            "cost_ms": 7.984,
            "steps": 200,
            "repeats": 4,
        },
        "sweep": SWEEP,
        "trials": TRIALS,
        "overhead": OVERHEAD,
        "sft": SFT,
        "sft_steps": 16,
        "sft_warmup_steps": 2,
        "sft_pairing": "both sides at once, on cores 0 and 1 (swapped every round)",
        "packing": PACKING,
    }


# the fixtures' rounds (0.874 1.030 1.051 1.013 and 1.240 1.260): the 95% interval of the mean
BARE_CI = "(95% interval 0.87-1.13 over 4 rounds: not resolved)"
SFT_CI = "(95% interval 1.13-1.38 over 2 rounds: met)"


def test_the_ratio_table_lists_eval_then_throughput_then_sweep_time_and_overhead_then_trl():
    parts = ["eval", "throughput", "step", "sweep", "sft", "packing", "kernels"]
    assert parts == list(PARTS)  # run order, --only's
    assert ratio_rows(_results()) == [
        (
            "4. eval tokens/s, batched / one-by-one",
            "4.38x (40/40 answers identical)",
            "> 1, all identical",
        ),
        ("1. training tokens/s, harness / bare, full", f"1.000 {BARE_CI}", ">= 0.97"),
        ("1. training tokens/s, harness / bare, lora r=16", f"1.021 {BARE_CI}", ">= 0.97"),
        ("1. training tokens/s, harness / bare, qlora r=16", f"1.023 {BARE_CI}", ">= 0.97"),
        (
            "2. sweep wall time, harness / peer",
            "0.939 (95% interval 0.42-2.11 over 2 rounds: not resolved)",
            "<= 0.9 (CPU)",
        ),
        ("3. per-trial fixed overhead share", "2.3%", "<= 5% (CPU)"),
        (
            "5. training tokens/s, harness / TRL SFTTrainer, full",
            f"1.250 {SFT_CI}; peak memory 1.50 vs 2.00 GiB",
            ">= 1.1",
        ),
        (
            "5. training tokens/s, harness / TRL SFTTrainer, lora r=16",
            f"1.300 {SFT_CI}; peak memory 1.50 vs 1.25 GiB",
            ">= 1.1",
        ),
        (
            "5. training tokens/s, harness / TRL SFTTrainer, qlora r=16",
            f"1.500 {SFT_CI}; peak memory 1.50 vs 1.00 GiB",
            ">= 1.1",
        ),
        (
            "6. training tokens/s on mixed-length data, packed / padded",
            "1.410 (rounds 1.380, 1.440)",
            ">= 1.3",
        ),
    ]
    parts = ("eval", "throughput", "sft", "packing")
    only_sweep = {k: v for k, v in _results().items() if k not in parts}
    assert [r[0][:2] for r in ratio_rows(only_sweep)] == ["2.", "3."]


def test_each_part_renders_its_section_from_the_results(tmp_path):
    results = _results()
    assert PARTS["eval"].section(results) == [
        "",
        "## 4. Evaluation: batched evaluator vs one-by-one greedy generation",
        "",
        "40 eval prompts, untuned base model, up to 12 new tokens, batches of 20: 427 answer "
        "tokens. Batched 4.44 s (96 tokens/s), one by one 19.43 s (22 tokens/s); identical "
        "answers: 40/40.",
    ]
    step = PARTS["step"].section(results)[-1]  # its share is of the throughput part's LoRA step
    assert step.endswith(
        "17.3 ms bare, 24.3 ms harness: 8.0 ms per step, 0.32% of the LoRA r=16 step above."
    )
    sweep = PARTS["sweep"].section(results)
    assert (
        "harness 605 + 668 = 1273 s, peer 687 + 668 = 1355 s. Ratio 0.939 (rounds 0.880, 1.000)."
        in sweep[3]
    )
    assert sweep[-1] == (
        "2.7 s per trial outside the training loop and evaluation (process start 0.47 s, model "
        "load 0.98 s, then data, method set-up, saving and exit): 2.3% of trial wall time over "
        "5 trials."
    )
    sft = PARTS["sft"].section(results)
    assert sft[1] == (
        "## 5. Training throughput and memory: harness trial vs TRL SFTTrainer (its defaults)"
    )
    assert sft[3].startswith("TRL 1.16.0 `SFTTrainer` the way its documentation shows it")
    assert "16 steps, the first 2 not measured; 2 rounds" in sft[3]
    assert "peak host RSS over the training phase" in sft[3]
    assert sft[5] == (
        "TRL's defaults kept: gradient checkpointing on (the harness's "
        "train.gradient_checkpointing is off by default), loss `nll`, completion-only loss on, "
        "packing off, padding-free off, loss logged every 10 steps (harness: every step); "
        "trainable adapter weights cast to bf16: qlora r=16."
    )
    assert "trl_defaults" not in sft[-1] and "harness / SFTTrainer" in sft[-1]
    packing = PARTS["packing"].section(results)
    assert packing[1] == "## 6. Packing: packed against padded batches on mixed-length data"
    assert "first batch [5, 320] packed, [8, 320] padded" in packing[3]
    assert "per round 1.380, 1.440, median 1.410" in packing[3]
    results["ratios"] = ratio_rows(results)
    md = write(results, tmp_path).read_text()
    assert (tmp_path / "harness.json").exists()
    assert "| 4. eval tokens/s, batched / one-by-one | 4.38x (40/40 answers identical) |" in md
    headings = [
        "## 1. Training throughput",
        "### The harness's fixed cost per step",
        "## 2. Sweep wall time",
        "## 3. Per-trial fixed overhead",
        "## 4. Evaluation",
        "## 5. Training throughput and memory",
        "## 6. Packing",
    ]
    order = ("throughput", "step", "sweep", "eval", "sft", "packing", "kernels")
    assert order == SECTION_ORDER
    assert [md.index(h) for h in headings] == sorted(md.index(h) for h in headings)
    for name in SECTION_ORDER:
        if PARTS[name].ran(results):
            assert "\n".join(PARTS[name].section(results)) in md
    del results["eval"], results["step_cost"], results["sft"]  # absent: no section, no row
    md = write(results, tmp_path).read_text()
    assert "## 4. Evaluation" not in md and "fixed cost per step" not in md
    assert "## 5. Training throughput and memory" not in md


def test_the_bench_and_the_report_count_the_same_overhead(tmp_path, monkeypatch):
    metrics = [
        (
            "ok",
            {
                "trial_wall_s": 100.0,
                "train_phase_s": 80.0,
                "eval_s": 10.0,
                "base_eval_s": 4.0,
                "startup_s": 1.0,
                "load_s": 2.0,
            },
        ),
        (
            "ok",
            {
                "trial_wall_s": 50.0,
                "train_phase_s": 45.0,
                "eval_s": 3.0,
                "startup_s": 1.5,
                "load_s": 0.5,
            },
        ),  # no base evaluation (cached)
        ("ok", {"trial_wall_s": 40.0, "train_phase_s": 30.0, "eval_s": 5.0, "load_s": 1.0}),
        ("failed", {"trial_wall_s": 20.0, "train_phase_s": 1.0, "startup_s": 9.0, "load_s": 9.0}),
        ("failed", {}),  # never started: nothing measured
    ]
    trials = [
        TrialResult(run={"label": f"t{i}"}, train={"status": status, "metrics": dict(m)})
        for i, (status, m) in enumerate(metrics)
    ]
    peer_out = {"accuracy": {}, "phases": {}}
    monkeypatch.setattr(sweep_time, "_harness_sweep", lambda user, out: (1.0, trials))
    monkeypatch.setattr(sweep_time, "_peer_sweep", lambda user, out: (1.0, peer_out))
    _, _, bench = sweep_time.sweep_vs_peer([], tmp_path, rounds=1)
    # the ok trials only: (6 + 2 + 5) s outside training and evaluation of 190 s
    assert bench["trials"] == 3
    assert bench["share"] == pytest.approx(13.0 / 190.0)
    assert bench["fixed_s_per_trial"] == pytest.approx(13.0 / 3)
    assert bench["startup_s_per_trial"] == pytest.approx(1.25)  # of the trials that measured it
    assert bench["load_s_per_trial"] == pytest.approx(3.5 / 3)
    df = to_frame([{"run": t.run, "train": t.train} for t in trials])
    assert overhead(df.to_dict("records")) == pytest.approx(bench)
    line = _overhead(df)[2]
    assert line.startswith("Per trial, 4.3 s on average (process start 1.2 s, model load 1.2 s,")
    assert f"{bench['share']:.1%} of trial wall time" in line


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


def test_real_shape_bench_runs_every_approach_on_a_random_model(tmp_path):
    """The GPU memory benchmark's path (random weights from an architecture, harness trials,
    table), on the tiny shape on CPU; on a GPU it measures the Llama-2-7B shape."""
    from sweep.bench import real_shape

    table = real_shape.run("tiny_llama", 48, tmp_path / "work", steps=2)
    assert [r["approach"] for r in table] == list(real_shape.APPROACHES)
    assert all(r["status"] == "ok" for r in table), [r["error"] for r in table]
    assert all(r["planner (GiB)"] and r["planner (GiB)"] > 0 for r in table)
    text = real_shape.write(table, "tiny_llama", 48, tmp_path / "out").read_text()
    assert text.count("| ok ") == 4 and "32-48" in text and "6-8" in text


def test_real_shape_speed_runs_the_throughput_and_sft_parts_on_the_built_model(
    tmp_path, monkeypatch
):
    """--speed (issue 17's 1B-shape GPU benchmark): a random-weight model of the named
    architecture and rows of about --seq tokens, handed to make bench's throughput and sft parts
    at --batch x --seq. Those parts run for real in their own tests; here, what reaches them."""
    import json
    from pathlib import Path

    from transformers import AutoConfig

    from sweep.bench import real_shape
    from sweep.settings.compose import compose

    seen = {}

    def bench(argv: list[str]) -> int:  # what the parts would compose, while the files exist
        cfg = compose(argv[8:])
        seen.update(argv=argv, cfg=cfg, model=AutoConfig.from_pretrained(cfg.model.name_or_path))
        seen["prompts"] = [
            json.loads(x)["prompt"] for x in Path(cfg.dataset.path).read_text().splitlines()
        ]
        return 0

    monkeypatch.setattr("sweep.bench.__main__.main", bench)
    argv = ["--speed", "--model", "tiny_llama", "--seq", "96", "--batch", "4", "--steps", "5"]
    assert real_shape.main([*argv, "--out", str(tmp_path)]) == 0
    assert seen["argv"][:8] == [
        "--only",
        "throughput,sft",
        "--steps",
        "5",
        "--repeats",
        "2",
        "--out",
        str(tmp_path),
    ]
    cfg, arch = seen["cfg"], real_shape.load_arch("tiny_llama")
    assert (cfg.train.batch_size, cfg.train.max_seq_len, cfg.model.name) == (
        4,
        96,
        "tiny_llama-random",
    )
    built = seen["model"]
    assert (built.hidden_size, built.num_hidden_layers, built.vocab_size) == (
        arch.hidden,
        arch.layers,
        arch.vocab,
    )
    assert len(seen["prompts"]) >= 16 and {len(p) for p in seen["prompts"]} == {
        96 - 24
    }  # + template, answer


def test_real_shape_refuses_bad_input_in_one_line_and_speed_defaults_to_12_steps(monkeypatch):
    import subprocess
    import sys

    from sweep.bench import real_shape

    for argv, says in (
        (
            ["--speed", "--batch", "0"],
            "argument --batch: '0' is not allowed; expected an integer >= 1",
        ),
        (["--speed", "--model", "nope"], "error: model 'nope': not in conf/model/"),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "sweep.bench.real_shape", *argv], capture_output=True, text=True
        )
        assert out.returncode == 2 and says in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
    seen = {}
    monkeypatch.setattr(real_shape, "speed", lambda *a: seen.setdefault("steps", a[5]) and 0)
    real_shape.main(["--speed", "--model", "tiny_llama"])
    assert seen["steps"] == 12  # enough steps past the 2 the parts leave out as warm-up


def test_the_benchs_harness_trial_streams_its_live_run_as_in_a_sweep(tmp_path):
    from sweep.bench.paired import step_cost
    from sweep.results import tracking

    out = step_cost([], 1, tmp_path / "bench", steps=12)
    assert out["harness_ms"] > 0 and out["bare_ms"] > 0
    assert (tmp_path / "bench" / "mlflow.db").exists()  # the bench's own store
    c = tracking.client()
    (run,) = tracking.child_runs(c, tracking.find_parent("bench"))
    assert run.data.tags[tracking.LIVE_TAG] == "true" and run.info.status == "FINISHED"
    steps = [m.step for m in c.get_metric_history(run.info.run_id, "step_s")]
    assert sorted(steps) == list(range(1, 13))  # every step streamed while it trained


def test_kernels_part_pairs_each_switch_with_the_same_trial_without_it(tmp_path, monkeypatch):
    from sweep.bench import kernels

    monkeypatch.setattr(
        kernels,
        "SWITCHES",
        [
            ("chunked loss", ["train.loss_impl=chunked"], ["train.loss_impl=full"],
             ["lora r=16"], False),
            ("Liger kernels", ["train.liger=true"], [], ["full"], True),
        ],
    )  # fmt: skip
    rows = kernels.kernels(tiny("train.max_seq_len=32"), 4, 1, tmp_path / "k")
    fused, liger = rows
    assert fused["switch"] == "chunked loss" and fused["approach"] == "lora r=16"
    on, off = fused["tokens/s with (median)"], fused["tokens/s without (median)"]
    assert on > 0 and off > 0 and fused["with / without"] == pytest.approx(on / off)
    assert len(fused["round ratios"].split()) == 1
    if not torch.cuda.is_available():
        assert liger["with / without"] is None and liger["note"] == "needs a CUDA GPU"
    results = {"kernels": rows, "kernels_steps": 4, "kernels_pairing": "x"}
    ratios = PARTS["kernels"].ratios(results)
    assert ratios[0][0] == "7. training tokens/s, chunked loss on / off, lora r=16"
    section = "\n".join(PARTS["kernels"].section(results))
    assert "`train.loss_impl=chunked`" in section


def test_a_paired_ratio_is_a_finding_only_where_its_interval_clears_the_target():
    from sweep.bench.paired import ratio_interval, verdict

    lo, hi = ratio_interval([0.99, 1.01, 1.00, 1.00])
    assert lo < 1.0 < hi and hi - lo < 0.03
    assert verdict((lo, hi), 0.97) == "met"
    wide = ratio_interval([1.10, 0.90, 0.87, 0.95])  # this machine's LoRA rounds on one run
    assert wide[0] < 0.97 < wide[1] and verdict(wide, 0.97) == "not resolved"
    assert verdict(ratio_interval([0.80, 0.82, 0.81]), 0.97) == "missed"
    assert verdict((0.85, 0.88), 0.9, at_least=False) == "met"  # a time ratio: lower is better
    assert verdict(ratio_interval([1.0]), 0.97) == "one round: no interval"
