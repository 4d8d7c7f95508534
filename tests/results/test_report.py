import math

import pandas as pd
import pytest

from sweep.planning import plan
from sweep.results import frame, headline, report
from sweep.settings.compose import compose
from sweep.settings.schema import GpuClass


def rec(label, method, rank, acc, mem, train_s, status="ok", quant=None, error=None, seed=0):
    metrics = {
        "accuracy": acc,
        "base_accuracy": 0.05,
        "peak_memory_gib": mem,
        "memory_kind": "vram",
        "train_s": train_s,
        "total_s": (train_s or 0) + 10,
        "train_tokens_per_s": 1000.0,
        "trainable_params": 100,
        "trainable_pct": 1.0,
        "adapter_bytes": 2048,
    }
    if status != "ok":
        metrics = {"peak_memory_gib": mem, "memory_kind": "vram"} if mem else {}
    return {
        "run": {
            "label": label,
            "method": method,
            "rank": rank,
            "quant": quant,
            "precision": "bf16",
            "seed": seed,
            "model": "m",
            "dataset": "d",
        },
        "train": {"status": status, "error": error, "metrics": metrics},
        "meta": {"device": "cuda", "device_name": "X", "versions": {"torch": "2"}},
    }


GPUS = [
    GpuClass(**g)
    for g in (
        {"name": "T4", "memory_gib": 16, "usd_per_hour": 0.36},
        {"name": "L4", "memory_gib": 24, "usd_per_hour": 0.72},
        {"name": "A100-80", "memory_gib": 80, "usd_per_hour": 3.6},
    )
]
RECORDS = [
    rec("full", "full", None, 0.60, 40.0, 100.0),
    rec("lora r=4", "lora", 4, 0.50, 14.0, 60.0),
    rec("lora r=16", "lora", 16, 0.55, 15.0, 62.0),
    rec("qlora r=16", "qlora", 16, 0.52, 7.0, 90.0, quant="nf4-4bit"),
    rec("lora r=64", "lora", 64, 0.45, 18.0, 70.0),  # dominated: worse and bigger than r=16
    rec("full bs=64", "full", None, None, 95.0, None, status="oom", error="CUDA out of memory"),
    rec("lora r=128", "lora", 128, None, None, None, status="failed", error="boom"),
]


def test_headline_has_one_row_per_successful_approach_with_deltas():
    table = headline.headline(RECORDS, GPUS).set_index("label")
    assert list(table.index) == ["full", "lora r=4", "lora r=16", "lora r=64", "qlora r=16"]
    assert table.loc["full", "delta_vs_full_pts"] == pytest.approx(0.0)
    assert table.loc["lora r=16", "delta_vs_full_pts"] == pytest.approx(-5.0)
    assert table.loc["qlora r=16", "delta_vs_full_pts"] == pytest.approx(-8.0)


def test_gpu_class_is_the_smallest_that_fits_and_cost_uses_its_price():
    table = headline.headline(RECORDS, GPUS).set_index("label")
    assert table.loc["qlora r=16", "gpu"] == "T4"
    assert table.loc["lora r=16", "gpu"] == "T4"
    assert table.loc["lora r=64", "gpu"] == "L4"
    assert table.loc["full", "gpu"] == "A100-80"
    assert plan.gpu_fit(200.0, GPUS) is None
    assert plan.gpu_fit(16.0, GPUS).name == "T4"


def test_trial_cost_is_at_the_price_of_the_gpu_it_ran_on_without_the_base_evaluation():
    on_a100 = rec("full", "full", None, 0.60, 10.0, 100.0)  # fits a T4, ran on an A100
    on_a100["meta"]["device_name"] = "NVIDIA A100-80 SXM4"
    on_a100["train"]["metrics"]["base_eval_s"] = 30.0
    table = headline.headline([on_a100], GPUS).set_index("label")
    assert table.loc["full", "gpu"] == "T4"  # what would fit
    assert table.loc["full", "cost_usd"] == pytest.approx((110 - 30) / 3600 * 3.6)  # what it cost
    unknown = rec("full", "full", None, 0.60, 10.0, 100.0)  # device "X": no class, no price
    assert math.isnan(headline.headline([unknown], GPUS).cost_usd.iloc[0])


def test_pareto_membership():
    table = headline.headline(RECORDS, GPUS).set_index("label")
    mem = table["pareto_memory"].to_dict()
    assert mem == {
        "full": True,
        "lora r=4": False,
        "lora r=16": True,
        "qlora r=16": True,
        "lora r=64": False,
    }
    time = table["pareto_time"].to_dict()
    assert time["lora r=4"] and time["lora r=16"] and time["full"]
    assert not time["qlora r=16"] and not time["lora r=64"]


def test_repeated_seeds_are_averaged():
    records = RECORDS[:1] + [
        rec("lora r=16", "lora", 16, a, 15.0, 60.0, seed=s) for s, a in enumerate([0.5, 0.6])
    ]
    table = headline.headline(records, GPUS).set_index("label")
    assert table.loc["lora r=16", "accuracy"] == pytest.approx(0.55)
    assert table.loc["lora r=16", "runs"] == 2


def test_written_report_matches_records(tmp_path):
    path = report.write(RECORDS, tmp_path, "exp", GPUS)
    text = path.read_text()
    assert "| full" in text and "| qlora r=16*" in text
    assert "| 55.0 " in text and "| -5.0 " in text  # lora r=16 accuracy and delta
    assert "CUDA out of memory" in text and "boom" in text  # failures with reasons
    # no per-item results in these records: no claim either way, and the report says so
    assert "lora r=16: not compared with full FT item by item" in text
    assert "at 38% of its peak memory" in text
    assert "no paired per-item results against full FT" in text
    assert (tmp_path / "accuracy_vs_peak_memory_gib.png").stat().st_size > 1000
    assert (tmp_path / "accuracy_vs_train_s.png").is_file()
    csv = pd.read_csv(tmp_path / "results.csv")
    assert len(csv) == len(RECORDS)
    assert set(csv.status) == {"ok", "oom", "failed"}


def test_report_without_full_baseline_says_so(tmp_path):
    text = report.write(RECORDS[1:3], tmp_path, "exp", GPUS).read_text()
    assert "No full fine-tuning trial succeeded" in text
    table = headline.headline(RECORDS[1:3], GPUS)
    assert table.delta_vs_full_pts.isna().all()


def test_shipped_gpu_classes_are_sorted_and_priced():
    gpus = compose([]).report.gpus
    assert [g.memory_gib for g in gpus] == sorted(g.memory_gib for g in gpus)
    assert all(g.usd_per_hour > 0 and not math.isnan(g.usd_per_hour) for g in gpus)


def test_mean_ci_against_a_known_sample():
    mean, half = frame.mean_ci([1, 2, 3, 4, 5])
    # sd 1.5811, t(0.975, 4) = 2.776: 2.776 * 1.5811 / sqrt(5) = 1.963
    assert mean == pytest.approx(3.0)
    assert half == pytest.approx(2.776 * 1.5811388 / 5**0.5) and half == pytest.approx(
        1.963, abs=1e-3
    )
    assert math.isnan(frame.mean_ci([0.5])[1])
    assert frame.t975(1) == 12.706 and frame.t975(30) == 2.042 and frame.t975(500) == 1.98


def test_predicted_vs_measured_and_skipped_trials(tmp_path):
    ok = rec("lora r=16", "lora", 16, 0.55, 15.0, 62.0)
    ok["train"]["metrics"].update(
        ledger_params_bytes=2 * 1024**2,
        ledger_grads_bytes=1024**2,
        ledger_optimizer_bytes=2 * 1024**2,
        ledger_activations_bytes=3 * 1024**2,
        plan_weights_gib=2 / 1024,
        plan_grads_gib=1 / 1024,
        plan_optimizer_gib=2 / 1024,
        plan_activations_gib=4 / 1024,
        plan_saved_activations_gib=2 / 1024,
    )
    skipped = rec("full", "full", None, None, None, None, status="skipped_predicted_oom")
    skipped["train"]["error"] = "predicted peak 90.00 GiB > limit 80.00 GiB"
    text = report.write([ok, skipped], tmp_path, "exp", GPUS).read_text()
    assert "## Predicted vs measured memory" in text
    assert "| 2 / 2 (1.00x) " in text and "| 2 / 3 (1.50x) " in text
    assert "| skipped_predicted_oom " in text and "predicted peak 90.00 GiB" in text


def test_rows_with_another_optimizer_or_precision_than_full_ft_are_flagged():
    records = [
        rec("full", "full", None, 0.60, 40.0, 100.0),
        rec("lora r=16", "lora", 16, 0.55, 15.0, 62.0),
    ]
    records += [rec("qlora r=16", "qlora", 16, 0.52, 7.0, 90.0, quant="nf4-4bit")]
    for r in records:
        r["run"].update(optimizer="adamw_torch_fused", gradient_checkpointing=False)
    records[2]["run"].update(optimizer="paged_adamw_8bit", gradient_checkpointing=True)
    table = headline.headline(records, GPUS)
    assert headline.recipe_differs(table) == [False, False, True]
    text = headline.markdown_table(table)
    assert "qlora r=16*†" in text or "qlora r=16†" in text
    assert "lora r=16†" not in text
    note = "\n".join(headline.recipe_note(table))
    assert "optimizer paged_adamw_8bit (full FT: adamw_torch_fused)" in note
    assert "gradient_checkpointing True (full FT: False)" in note
    records[2]["run"].update(optimizer="adamw_torch_fused", gradient_checkpointing=False)
    assert headline.recipe_note(headline.headline(records, GPUS)) == []  # same recipe: no note


def test_trials_from_two_devices_are_never_averaged_into_one_row():
    a = [
        rec("full", "full", None, 0.60, 40.0, 100.0),
        rec("lora r=16", "lora", 16, 0.55, 15.0, 62.0),
    ]
    b = [rec("full", "full", None, 0.61, 20.0, 30.0), rec("lora r=16", "lora", 16, 0.56, 9.0, 20.0)]
    for r in b:
        r["meta"]["device_name"] = "Y"
    assert report.by_device(a) is a  # one device: labels unchanged
    table = headline.headline(report.by_device(a + b), GPUS)
    assert sorted(table.label) == ["full @ X", "full @ Y", "lora r=16 @ X", "lora r=16 @ Y"]
    assert table.set_index("label").loc["lora r=16 @ Y", "train_s"] == 20.0  # not averaged


def test_make_report_merges_experiments(tmp_path):
    from sweep.results import tracking
    from sweep.results.record import TrialResult, save

    for exp, device in (("on_x", "X"), ("on_y", "Y")):
        parent = tracking.parent_run(exp, {}, [])
        for r in (
            rec("full", "full", None, 0.6, 40.0, 100.0),
            rec("lora r=16", "lora", 16, 0.5, 9.0, 20.0),
        ):
            r["meta"]["device_name"] = device
            trial = tmp_path / exp / r["run"]["label"].replace(" ", "_")
            result = TrialResult(run=r["run"], train=r["train"], meta=r["meta"])
            save(result, trial / "result.json")
            tracking.log_trial(parent, result, trial)
    path = report.rebuild("on_x,on_y")
    assert path.parent.name == "on_x+on_y"
    text = path.read_text()
    assert "| lora r=16 @ X" in text and "| lora r=16 @ Y" in text
    assert "(X), CUDA" in text and "(Y), CUDA" in text  # the environment names both devices
