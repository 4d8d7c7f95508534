"""The time and cost model (sweep.planning.cost), make plan DATA=, and the report's cost per epoch."""

import math

import pytest
import yaml

from sweep.cli.plan import main as plan_main
from sweep.planning import cost, plan
from sweep.planning.arch import load_arch, train_flops_per_token
from sweep.planning.recipe import Recipe
from sweep.results import claims, epoch, headline
from sweep.settings.compose import ConfigError
from sweep.settings.schema import GpuClass
from sweep.settings.tiers import SEED_TIERS, pick_tiers

FULL = Recipe("full", 0, (), None, False, "adamw_torch", "bf16", "bf16", "bf16")
GPU = GpuClass(name="A100 80GB", memory_gib=79.1, usd_per_hour=2.0, bf16_tflops=312)


@pytest.mark.parametrize(
    "spec, n",
    [("10M", 10_000_000), ("1e7", 10_000_000), ("2.5B", 2_500_000_000), ("500k", 500_000),
     ("10_000", 10_000), (12345, 12345), ("10M tokens", 10_000_000)],
)  # fmt: skip
def test_token_counts_are_read_in_the_forms_people_write_them(spec, n):
    assert cost.parse_tokens(spec) == n


@pytest.mark.parametrize("spec", ["data.jsonl", "ten", "", "0", -5, "1.5.3M"])
def test_what_is_not_a_token_count_is_none(spec):
    assert cost.parse_tokens(spec) is None


def test_a_step_is_its_flops_over_mfu_times_peak_plus_the_fixed_cost():
    r = cost.Rate(mfu=0.5, fixed_s=0.1, source="t")
    # 1e12 FLOPs per token x 100 tokens on a 100 TFLOP/s device at 50%: 2 s, plus 0.1 s
    assert cost.step_seconds(1e12, 100, 100.0, r) == pytest.approx(2.1)


def test_an_epoch_is_its_steps_at_the_predicted_step_time_and_the_tiers_price():
    arch = load_arch("llama2_7b")
    entries = [{"device": "*", "approach": "full", "mfu": 0.5, "fixed_s": 0.0, "source": "t"}]
    c = cost.epoch_cost(arch, FULL, 4, 512, 2048 * 100, GPU, 50.0, entries)
    step = train_flops_per_token(arch, FULL, 512) * 2048 / (0.5 * 312e12)
    assert c.step_s == pytest.approx(step)
    assert c.hours == pytest.approx(100 * step / 3600)
    assert c.usd == pytest.approx(c.hours * 2.0)
    assert c.fits and not cost.epoch_cost(arch, FULL, 4, 512, 1, GPU, 90.0, entries).fits


def test_checkpointing_adds_the_recomputed_forward():
    arch = load_arch("llama2_7b")
    plain = cost.step_flops_per_token(arch, FULL, 512)
    again = cost.step_flops_per_token(arch, FULL, 512, checkpointing=True)
    # the blocks' forward is about a third of a full FT step's model FLOPs (2N of 6N)
    assert 0.25 < (again - plain) / plain < 0.34


def test_the_first_matching_calibration_entry_wins_and_a_probe_comes_first(tmp_path):
    shipped = cost.load_calibration(None)
    assert all(e["source"] for e in shipped)  # every shipped rate names its source
    a100 = cost.rate(shipped, "NVIDIA A100-SXM4-80GB", "lora", "bf16-mixed")
    other = cost.rate(shipped, "NVIDIA GeForce RTX 4090", "lora", "bf16-mixed")
    assert "fms-acceleration" in a100.source and other.source.startswith("assumed")
    local = {"entries": [{"device": "RTX 4090", "approach": "lora", "precision": "bf16-mixed",
                          "mfu": 0.2, "fixed_s": 0.01, "source": "make probe"}]}  # fmt: skip
    (tmp_path / cost.LOCAL_NAME).write_text(yaml.safe_dump(local))
    mine = cost.rate(
        cost.load_calibration(tmp_path), "NVIDIA GeForce RTX 4090", "lora", "bf16-mixed"
    )
    assert mine == cost.Rate(0.2, 0.01, "make probe")
    with pytest.raises(ConfigError, match="no calibration"):
        cost.rate([], "x", "lora", "fp32")


def test_a_device_belongs_to_the_class_whose_name_it_contains():
    gpus = plan.load_gpus()
    name = lambda d: getattr(cost.device_class(d, gpus), "name", None)  # noqa: E731
    assert name("NVIDIA A100-SXM4-80GB") == "A100 80GB"
    assert name("NVIDIA A100-SXM4-40GB") == "A100 40GB"
    assert name("NVIDIA GeForce RTX 4090") == "RTX 4090 24GB"  # not the 3090: both say "RTX"
    assert name("NVIDIA GeForce RTX 3090") == "RTX 3090 24GB"
    assert name("NVIDIA GeForce RTX 5090") is None and name(None) is None


def test_the_seed_tiers_are_listed_with_a_dated_price_source_and_geforce_rates():
    gpus = {g.name: g for g in plan.load_gpus()}
    assert set(SEED_TIERS) <= set(gpus)
    assert [g.name for g in pick_tiers(list(gpus.values()), None)] == list(SEED_TIERS)
    assert all(g.price_source for g in gpus.values())
    assert any(g.memory_gib < 24 and "RTX" in g.name for g in gpus.values())  # 24 GB consumer
    # GeForce: 16-bit tensor math with fp32 accumulation runs at half the fp16-accumulate rate
    assert gpus["RTX 4090 24GB"].bf16_tflops == pytest.approx(165.2)
    assert gpus["RTX 3090 24GB"].bf16_tflops == pytest.approx(71)
    with pytest.raises(ConfigError, match="report.gpus; allowed"):
        pick_tiers(list(gpus.values()), ["B300"])


def test_make_plan_with_data_prints_hours_and_dollars_per_epoch_per_tier(capsys):
    assert plan_main(["llama2_7b", "data=10M", "batch_size=4", "seq_len=512"]) == 0
    out = capsys.readouterr().out
    assert "10,000,000 tokens per epoch" in out
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in out.splitlines()]
    rows = {(c[0], c[1]): c for c in cells if len(c) > 3}
    assert all(("full", tier) in rows for tier in SEED_TIERS)
    assert rows["qlora r=16", "A100 80GB"][3] == "yes"  # QLoRA of a 7B fits an A100
    assert ("full (in backward)", "A100 80GB") in rows  # the lean full FT row
    assert "MFU sources:" in out and "Prices:" in out


def test_make_plan_counts_a_data_files_tokens(tmp_path, capsys):
    rows = tmp_path / "d.jsonl"
    rows.write_text('{"prompt": "What is 2+2?", "answer": "4"}\n' * 5)
    assert plan_main(["smollm2_135m", f"data={rows}", "tiers=[A100 80GB]"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("Cost per epoch"))
    n = int(line.split(":")[1].split()[0].replace(",", ""))
    assert 5 * 10 < n < 5 * 100 and "5 rows of d.jsonl" in line  # chat-templated rows


def test_bad_data_and_tiers_are_one_line_errors():
    with pytest.raises(ConfigError, match="data='nope.jsonl' is not allowed"):
        plan_main(["llama2_7b", "data=nope.jsonl"])
    with pytest.raises(ConfigError, match="tiers: 'Z9' is not a GPU class"):
        plan_main(["llama2_7b", "data=1M", "tiers=[Z9]"])
    with pytest.raises(ConfigError, match="not a YAML value"):
        plan_main(["llama2_7b", "tiers=[A100"])


def _record(device, device_name, tokens_per_s=1000.0, peak=10.0, label="lora r=16"):
    """A LoRA trial's record as a run on `device` leaves it (a GPU runs bf16-mixed)."""
    from sweep.results.record import run_info
    from sweep.settings.compose import as_dict, compose

    cfg = compose(["method=lora", "method.r=16", "train.batch_size=4"])
    return {
        "run": {**run_info(cfg), "label": label}
        | ({"precision": "bf16-mixed"} if device == "cuda" else {}),
        "train": {"status": "ok", "metrics": {
            "accuracy": 0.5, "peak_memory_gib": peak, "memory_kind": "vram", "train_s": 10.0,
            "total_s": 20.0, "train_tokens_per_s": tokens_per_s, "s_per_step": 0.5,
            "trainable_params": 1, "trainable_pct": 1.0, "adapter_bytes": 1}},
        "meta": {"device": device, "device_name": device_name},
        "config": as_dict(cfg),
    }  # fmt: skip


def test_a_gpu_run_is_projected_to_the_tiers_by_its_measured_rate_and_the_peak_ratio():
    gpus = plan.load_gpus()
    recs = [_record("cuda", "NVIDIA A100-SXM4-80GB", tokens_per_s=2000.0)]
    table = headline.headline(recs, gpus)
    rows = epoch.rows(table, recs, gpus, pick_tiers(gpus, None), 7_200_000, [])
    (row,) = rows
    assert row["this device"] == "NVIDIA A100-SXM4-80GB: 1.0 h, $1.79"  # 7.2M / 2000 per s
    # an RTX 4090 has 165.2 / 312 of the A100's dense peak: 1 h becomes 1.89 h
    assert row["RTX 4090 24GB"] == "1.9 h, $1.30 projected"


def test_a_cpu_run_says_predicted_for_gpus_and_has_the_planned_gpu_peak_beside_its_own():
    gpus = plan.load_gpus()
    recs = [_record("cpu", "Some CPU", peak=1.5)]
    table = headline.headline(recs, gpus)
    assert table.planned_gpu_gib.iloc[0] > 0 and table.gpu.iloc[0].endswith("(predicted)")
    assert math.isnan(table.cost_usd.iloc[0])  # no GPU price for a CPU trial
    (row,) = epoch.rows(
        table, recs, gpus, pick_tiers(gpus, None), 10**7, cost.load_calibration(None)
    )
    assert row["this device"] == f"Some CPU: {10**7 / 1000 / 3600:.1f} h"  # no dollars
    assert all(row[t].endswith("predicted") for t in SEED_TIERS)
    md = "\n".join(claims.section(table, recs))
    assert "planned GPU peak (GiB)" in md


def test_the_probe_fit_recovers_the_mfu_and_fixed_cost_of_two_batches():
    from sweep.cli.probe import Point, fit

    # 1e9 FLOPs per token on a 1 TFLOP/s device at 25% MFU: 4 ms per token, plus 0.5 s per step
    pts = [Point("lora", b, "fp32", 64.0 * b, 0.004 * 64 * b + 0.5, 1e9, 1.0, 1.0) for b in (2, 8)]
    mfu, fixed = fit(*pts, peak_tflops=1.0)
    assert mfu == pytest.approx(0.25) and fixed == pytest.approx(0.5)
    noisy = [pts[0], Point("lora", 8, "fp32", 512.0, 0.5, 1e9, 1.0, 1.0)]  # slower small batch
    mfu, fixed = fit(*noisy, peak_tflops=1.0)  # no usable slope: the larger batch alone
    assert mfu == pytest.approx(1e9 * 512 / 0.5 / 1e12) and fixed == 0.0


def test_make_probe_measures_here_and_writes_this_machines_calibration(tmp_path, monkeypatch):
    from sweep.cli import probe

    monkeypatch.setattr(probe, "APPROACHES", {"lora": ["method=lora", "method.r=4"]})
    device = GpuClass(name="cpu test", fp32_tflops=0.05, bf16_tflops=0.05)
    tiny = ["model=tiny_llama", "train.max_seq_len=48"]
    table = probe.probe(tiny, tmp_path / "work", str(tmp_path), (2, 4), device)
    assert list(table.batch) == [2, 4] and (table["measured s/step"] > 0).all()
    assert (table["tokens/step"].iloc[1] > table["tokens/step"].iloc[0]).all()
    assert table["planned peak GiB"].notna().all()
    saved = yaml.safe_load((tmp_path / cost.LOCAL_NAME).read_text())["entries"]
    assert [(e["device"], e["approach"], e["precision"]) for e in saved] == [
        ("cpu test", "lora", "fp32")
    ]
    r = cost.rate(cost.load_calibration(tmp_path), "cpu test", "lora", "fp32")
    assert r.mfu > 0 and r.source.startswith("make probe")
    # probing again replaces this device's entries instead of piling them up
    probe.save("cpu test", {("lora", "fp32"): (0.1, 0.0)}, "again", str(tmp_path))
    again = yaml.safe_load((tmp_path / cost.LOCAL_NAME).read_text())["entries"]
    assert len(again) == 1 and again[0]["source"] == "again"


def test_bench_plan_predicts_a_grid_point_from_a_fit_at_other_batches(tmp_path, monkeypatch):
    from sweep.bench import step_time
    from sweep.cli import probe

    monkeypatch.setattr(step_time, "GRID", {"lora": [["method.r=8"]]})
    monkeypatch.setattr(step_time, "ROUNDS", 1)
    monkeypatch.setattr(probe, "this_device", lambda: GpuClass("cpu t", 0, 0, 0.05, 0.05))
    table = step_time.check(["model=tiny_llama", "train.max_seq_len=48"], tmp_path)
    (row,) = table.to_dict("records")
    assert row["point"] == "lora r=8" and row["batch"] == step_time.BATCH
    assert row["predicted s/step"] > 0 and row["measured / predicted"] > 0
    assert set(table.attrs["fits"]) == {("lora", "fp32")}
    text = step_time.section(table)
    assert "Worst step-time error" in text and "cpu t" in text
