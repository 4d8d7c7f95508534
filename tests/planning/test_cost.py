"""The time and cost model (sweep.planning.cost), make plan DATA=, and the report's cost per epoch."""

import math
from dataclasses import replace

import pandas as pd
import pytest
import yaml

from sweep.cli.plan import main as plan_main
from sweep.planning import cost, plan
from sweep.planning.arch import load_arch, train_flops_per_token, trainable_tensors
from sweep.planning.recipe import Recipe
from sweep.results import claims, epoch, headline
from sweep.settings.compose import ConfigError
from sweep.settings.schema import GpuClass
from sweep.settings.tiers import SEED_TIERS, pick_tiers

FULL = Recipe("full", 0, (), None, False, "adamw_torch", "bf16", "bf16", "bf16")
GPU = GpuClass(name="A100 80GB", memory_gib=79.1, usd_per_hour=2.0, bf16_tflops=312, mem_gbps=2039)


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


def test_a_step_is_the_sum_of_its_parts_each_over_its_own_rate():
    r = cost.Rate(mfu=0.5, half_tokens=100.0, opt_eff=0.25, dequant_eff=0.1, layer_s=0.002,
                  layer_token_s=1e-6, dispatch_s=0.01)  # fmt: skip
    gpu = GpuClass(name="g", bf16_tflops=100.0, mem_gbps=1000.0)
    work = cost.Work(tokens=900.0, flops=0.9e14, optimizer_bytes=5e11, dequant_bytes=1e11,
                     layers=10, precision="bf16-mixed")  # fmt: skip
    parts = cost.step_parts(work, gpu, r)
    # 0.9e14 FLOPs at 50% of 100 TFLOP/s is 1.8 s, and 900 tokens run the matmuls at 900 / (900
    # + 100) of that rate: 2 s; 500 GB at 25% of 1 TB/s: 2 s; 100 GB at 10%: 1 s; 10 layers of
    # 2 ms and 1 us a token: 0.029 s
    assert parts == pytest.approx({"compute_s": 2.0, "optimizer_s": 2.0, "dequant_s": 1.0,
                                   "layers_s": 0.029, "dispatch_s": 0.01})  # fmt: skip
    assert cost.step_seconds(parts) == pytest.approx(5.039)
    unknown = cost.step_parts(work, GpuClass(name="g", bf16_tflops=100.0), r)
    assert math.isnan(unknown["optimizer_s"])  # no bandwidth: no figure, not zero


def test_the_optimizer_and_dequantization_time_scale_with_the_model_not_a_constant():
    small, big = load_arch("smollm2_135m"), load_arch("llama2_7b")
    lora = Recipe("lora", 16, ("q_proj", "v_proj"), None, False, "adamw_torch", "bf16", "bf16",
                  "bf16")  # fmt: skip
    qlora = Recipe("qlora", 16, ("q_proj", "v_proj"), "nf4", False, "adamw_torch", "bf16",
                   "bf16", "bf16")  # fmt: skip
    # AdamW moves 3 weight-sized reads/writes and 4 state ones per trainable parameter
    n_small = sum(trainable_tensors(small, FULL))
    assert cost.optimizer_traffic(small, FULL) == 14 * n_small
    ratio = cost.optimizer_traffic(big, FULL) / cost.optimizer_traffic(small, FULL)
    assert ratio == pytest.approx(sum(trainable_tensors(big, FULL)) / n_small)
    assert 40 < ratio < 60  # a 7B's optimizer step is ~50x SmolLM2's, not the same seconds
    assert cost.optimizer_traffic(big, lora) < cost.optimizer_traffic(big, FULL) / 100
    assert cost.dequant_traffic(big, lora) == 0 < cost.dequant_traffic(big, qlora)
    # checkpointing dequantizes a third time (the recomputed forward)
    assert cost.dequant_traffic(big, qlora, True) == pytest.approx(
        1.5 * cost.dequant_traffic(big, qlora)
    )
    r = cost.rate(cost.load_calibration(None), "A100", "full", "bf16-mixed")
    a100 = next(g for g in plan.load_gpus() if g.name == "A100 80GB")
    parts = [cost.step_parts(cost.work_of(a, FULL, 512, 64), a100, r) for a in (small, big)]
    assert parts[1]["optimizer_s"] / parts[0]["optimizer_s"] == pytest.approx(ratio)
    assert parts[1]["layers_s"] / parts[0]["layers_s"] == pytest.approx(big.layers / small.layers)


def test_gpus_of_one_peak_differ_by_their_memory_bandwidth():
    gpus = {g.name: g for g in plan.load_gpus()}
    assert all(g.mem_gbps > 0 and g.specs_source for g in gpus.values())
    arch, entries = load_arch("llama2_7b"), cost.load_calibration(None)
    hours = {
        name: cost.epoch_cost(arch, FULL, 1, 512, 10**7, gpus[name], 1.0, entries).hours
        for name in ("A100 80GB", "A100 40GB")
    }
    assert hours["A100 40GB"] > hours["A100 80GB"]  # same peak, 1555 against 2039 GB/s


@pytest.mark.parametrize(
    "hours, text",
    [(2.345, "2.3 h"), (12.7, "13 h"), (1234.5, "1,200 h"), (0.5, "30 min"), (0.05, "3.0 min"),
     (0.0004, "1.4 s"), (math.nan, "-")],
)  # fmt: skip
def test_durations_print_with_two_significant_figures_and_never_as_zero(hours, text):
    assert cost.fmt_hours(hours) == text


def test_an_epoch_is_its_steps_at_the_predicted_step_time_and_the_tiers_price():
    arch = load_arch("llama2_7b")
    entries = [{"device": "*", "approach": "full", "mfu": 0.5, "source": "t"}]
    c = cost.epoch_cost(arch, FULL, 4, 512, 2048 * 100, GPU, 50.0, entries)
    step = train_flops_per_token(arch, FULL, 512) * 2048 / (0.5 * 312e12)
    step += cost.optimizer_traffic(arch, FULL) / 2039e9  # opt_eff defaults to 1
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
    assert "fms-acceleration" in a100.source and a100.basis == "fitted"
    assert other.basis == "assumed" and other.layer_s == a100.layer_s
    local = {"entries": [{"device": "RTX 4090", "approach": "lora", "precision": "bf16-mixed",
                          "mfu": 0.2, "layer_s": 0.01, "basis": "measured",
                          "source": "make probe"}]}  # fmt: skip
    (tmp_path / cost.LOCAL_NAME).write_text(yaml.safe_dump(local))
    mine = cost.rate(
        cost.load_calibration(tmp_path), "NVIDIA GeForce RTX 4090", "lora", "bf16-mixed"
    )
    assert mine == cost.Rate(0.2, layer_s=0.01, source="make probe", basis="measured")
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
    assert "Rates (measured here" in out and "Prices:" in out
    assert "[1] fitted: fms-acceleration" in out and "] assumed: the A100's" in out
    times = [c[5] for (_, tier), c in rows.items() if tier in SEED_TIERS]
    assert times and all(t.endswith((" h", " min", " s")) for t in times)


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


def _record(device, device_name, tokens_per_s=1000.0, peak=10.0, label="lora r=16",
            model="smollm2_135m", method="lora"):  # fmt: skip
    """A trial's record as a run on `device` leaves it (a GPU runs bf16-mixed)."""
    from sweep.results.record import run_info
    from sweep.settings.compose import as_dict, compose

    cfg = compose([f"model={model}", f"method={method}", "train.batch_size=4"])
    return {
        "run": {**run_info(cfg), "label": label}
        | ({"precision": "bf16-mixed"} if device == "cuda" else {}),
        "train": {"status": "ok", "metrics": {
            "accuracy": 0.5, "peak_memory_gib": peak, "memory_kind": "vram", "train_s": 10.0,
            "total_s": 20.0, "train_tokens_per_s": tokens_per_s, "s_per_step": 0.5,
            "trainable_params": 1, "trainable_pct": 1.0, "adapter_bytes": 1, "max_seq_len": 64}},
        "meta": {"device": device, "device_name": device_name},
        "config": as_dict(cfg),
    }  # fmt: skip


def test_a_gpu_run_is_projected_to_the_tiers_by_its_measured_time_and_the_model_ratio():
    gpus = plan.load_gpus()
    recs = [_record("cuda", "NVIDIA A100-SXM4-80GB", tokens_per_s=2000.0)]
    table = headline.headline(recs, gpus)
    entries = cost.load_calibration(None)
    (row,) = epoch.rows(table, recs, gpus, pick_tiers(gpus, None), 7_200_000, entries)
    assert row["this device"] == "NVIDIA A100-SXM4-80GB: 1.0 h, $1.79"  # 7.2M / 2000 per s
    text = row["RTX 4090 24GB"]
    assert text.endswith(" projected")
    hours = float(text.split(" h,")[0])
    # SmolLM2 LoRA at 1,000 tokens a step is launch-bound: slower on the 4090 than the A100,
    # but by far less than the dense-peak ratio (312 / 165.2 = 1.89) the old projection used
    assert 1.0 <= hours < 1.5
    big = _record("cuda", "NVIDIA A100-SXM4-80GB", tokens_per_s=2000.0, model="llama2_7b",
                  method="full")  # fmt: skip
    (row,) = epoch.rows(headline.headline([big], gpus), [big], gpus,
                        pick_tiers(gpus, None), 7_200_000, entries)  # fmt: skip
    assert float(row["RTX 4090 24GB"].split(" h,")[0]) > 1.5  # a 7B's full FT: compute-bound


def test_a_cpu_run_says_predicted_for_gpus_and_has_the_planned_gpu_peak_beside_its_own():
    gpus = plan.load_gpus()
    recs = [_record("cpu", "Some CPU", peak=1.5)]
    table = headline.headline(recs, gpus)
    assert table.planned_gpu_gib.iloc[0] > 0 and table.gpu.iloc[0].endswith("(predicted)")
    # max_seq_len 0 (sized from the data): planned at the 64 tokens the trial resolved it to
    assert recs[0]["run"]["config"]["train"]["max_seq_len"] == 0
    wide = epoch.planned_gpu_peak({**recs[0], "train": {"metrics": {}}})  # the 2048 cap
    assert table.planned_gpu_gib.iloc[0] < 3 < wide
    assert math.isnan(table.cost_usd.iloc[0])  # no GPU price for a CPU trial
    (row,) = epoch.rows(
        table, recs, gpus, pick_tiers(gpus, None), 10**7, cost.load_calibration(None)
    )
    assert row["this device"] == f"Some CPU: {10**7 / 1000 / 3600:.1f} h"  # no dollars
    assert all(row[t].endswith("predicted") for t in SEED_TIERS)
    md = "\n".join(epoch.section(table, recs, gpus, None, 10**7, cache_dir=None))
    assert "A100 80GB: fitted (fms-acceleration" in md
    assert "RTX 4090 24GB, A10G 24GB, RTX 3090 24GB: assumed (the A100's" in md
    md = "\n".join(claims.section(table, recs))
    assert "planned GPU peak (GiB)" in md


def _point(approach, batch, layers, step_s, tokens, opt_bytes=0.0):
    from sweep.cli.rates import Point

    work = cost.Work(tokens, 1e9 * tokens, opt_bytes, 0.0, layers, "fp32")
    return Point(approach, batch, "fp32", tokens, step_s, 1e9, 1.0, 1.0, work)


def test_the_fit_recovers_the_mfu_and_half_tokens_and_predicts_other_sizes():
    from sweep.cli import rates

    device = GpuClass(name="cpu t", fp32_tflops=1.0, bf16_tflops=1.0, mem_gbps=10.0)
    true = cost.Rate(0.25, half_tokens=40.0, opt_eff=0.5, layer_s=0.01, layer_token_s=2e-5,
                     dispatch_s=0.05)  # fmt: skip

    def point(approach, batch, layers, opt_bytes):
        work = cost.Work(64.0 * batch, 1e9 * 64 * batch, opt_bytes, 0.0, layers, "fp32")
        step = cost.step_seconds(cost.step_parts(work, device, true))
        return _point(approach, batch, layers, step, 64.0 * batch, opt_bytes)

    sizes = {"full": 5e9, "lora": 1e7}
    points = {a: [point(a, n, 30, b) for n in (2, 4, 16)] for a, b in sizes.items()}
    latency = {"opt_eff": 0.5, "layer_s": 0.01, "layer_token_s": 2e-5, "dispatch_s": 0.05}
    measured = {a: cost.Rate(0.0, **latency) for a in sizes}
    fits = rates.fit(points, device, measured, "t")
    for approach, opt_bytes in sizes.items():
        r = fits[(approach, "fp32")]
        assert (r.mfu, r.half_tokens, r.source) == pytest.approx((0.25, 40.0, "t"))
        other = point(approach, 1, 4, opt_bytes / 20)  # a smaller model at a smaller batch
        assert rates.predict(other, device, r) == pytest.approx(other.step_s)


def test_qlora_shares_loras_compute_fit_so_noise_cannot_price_it_below_lora():
    from sweep.cli import rates

    device = GpuClass(name="cpu t", fp32_tflops=1.0, bf16_tflops=1.0, mem_gbps=10.0)
    lora = cost.Rate(0.25, half_tokens=40.0, layer_s=0.01)
    qlora = replace(lora, dequant_eff=0.5, layer_s=0.02)

    def point(approach, batch, r, slower=1.0, layers=30):
        deq = 2e8 if approach == "qlora" else 0.0  # its dequantization: 0.04 s at 0.5 x 10 GB/s
        work = cost.Work(64.0 * batch, 1e9 * 64 * batch, 0.0, deq, layers, "fp32")
        step = cost.step_seconds(cost.step_parts(work, device, r)) * slower
        return replace(_point(approach, batch, layers, step, 64.0 * batch), work=work)

    points = {
        "lora": [point("lora", n, lora) for n in (2, 4, 16)],
        "qlora": [point("qlora", n, qlora, s) for n, s in ((2, 1.0), (4, 1.0), (16, 0.85))],
    }  # noise: QLoRA's largest batch ran 15% quick
    measured = {"lora": replace(lora, mfu=0.0, half_tokens=0.0),
                "qlora": replace(qlora, mfu=0.0, half_tokens=0.0)}  # fmt: skip
    fits = rates.fit(points, device, measured, "t")
    a, b = fits[("lora", "fp32")], fits[("qlora", "fp32")]
    assert (a.mfu, a.half_tokens) == (b.mfu, b.half_tokens)  # one compute fit for both
    assert (b.dequant_eff, b.layer_s) == (0.5, 0.02)  # QLoRA's own parts kept
    other_lora, other_qlora = point("lora", 2, lora, layers=24), point("qlora", 2, qlora, layers=24)
    assert rates.predict(other_qlora, device, b) > rates.predict(other_lora, device, a)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("mfu", "fast", "mfu='fast' is not a number"), ("mfu", 0, "expected mfu > 0"),
     ("opt_eff", -1, "expected opt_eff > 0"), ("layer_s", -0.1, "expected layer_s >= 0")],
)  # fmt: skip
def test_a_hand_edited_calibration_entry_out_of_range_is_one_line(tmp_path, field, value, message):
    entry = {"device": "cpu", "approach": "lora", "mfu": 0.5, "source": "mine", field: value}
    (tmp_path / cost.LOCAL_NAME).write_text(yaml.safe_dump({"entries": [entry]}))
    with pytest.raises(ConfigError, match="calibration entry cpu/lora: ") as err:
        cost.rate(cost.load_calibration(tmp_path), "cpu x", "lora", "fp32")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_step_that_is_all_latency_fits_no_mfu_above_one():
    from sweep.cli import rates

    device = GpuClass(name="cpu t", fp32_tflops=1.0, bf16_tflops=1.0, mem_gbps=10.0)
    # 1 MFLOP a token, but each of 2 layers costs 10 us a token: the slope is the layers'
    points = [_point("full", b, 2, 0.005 + 2e-5 * 64 * b, 64.0 * b) for b in (2, 8)]
    for p in points:
        p.work = cost.Work(p.tokens, 1e6 * p.tokens, 0.0, 0.0, 2, "fp32")
    measured = {"full": cost.Rate(0.0, layer_token_s=1e-5)}
    (r,) = rates.fit({"full": points}, device, measured, "t").values()
    assert r.mfu == 1.0


def test_latency_is_what_each_layer_adds_per_step_and_token_and_what_the_step_has_besides():
    from sweep.cli import rates

    one, four = _point("lora", 1, 1, 0.012, 8.0), _point("lora", 1, 4, 0.018, 8.0)
    assert rates.latency_of([one, four]) == pytest.approx((0.002, 0.0, 0.010))
    # at 16 rows of 64 tokens each layer costs 3 ms more: 1024 - 8 tokens later
    wide = [_point("lora", 16, 1, 0.015, 1024.0), _point("lora", 16, 4, 0.030, 1024.0)]
    layer_s, per_token, dispatch = rates.latency_of([one, four, *wide])
    assert per_token == pytest.approx(0.003 / 1016)
    assert layer_s == pytest.approx(0.002 - 8 * 0.003 / 1016) and dispatch == pytest.approx(0.010)
    quicker = _point("lora", 1, 4, 0.011, 8.0)  # noise: the deeper trial ran quicker
    assert rates.latency_of([one, quicker]) == (0.0, 0.0, 0.012)


def test_a_slope_lost_to_noise_falls_back_to_the_larger_batch_alone():
    from sweep.cli import rates

    small = _point("lora", 2, 4, 0.6, 128.0)
    large = _point("lora", 8, 4, 0.5, 512.0)  # the small batch was slower: no usable slope
    mfu, intercept = rates.slope_fit([small, large], peak_tflops=1.0)
    assert mfu == pytest.approx(1e9 * 512 / 0.5 / 1e12) and intercept == 0.0


def test_make_probe_measures_here_and_writes_this_machines_calibration(tmp_path, monkeypatch):
    from sweep.cli import probe, rates

    monkeypatch.setattr(rates, "APPROACHES", {"lora": ["method=lora", "method.r=4"]})
    monkeypatch.setattr(rates, "LATENCY_BATCHES", (1, 2))
    device = GpuClass(name="cpu test", fp32_tflops=0.05, bf16_tflops=0.05, mem_gbps=5.0)
    table = probe.probe(["model=tiny_llama"], tmp_path / "work", str(tmp_path), (2, 4), device)
    assert list(table.batch) == [2, 4] and (table["measured s/step"] > 0).all()
    assert (table["predicted s/step"] > 0).all()  # from the shipped table, before this probe
    assert (table["tokens/step"].iloc[1] > table["tokens/step"].iloc[0]).all()
    assert table["planned peak GiB"].notna().all()
    saved = yaml.safe_load((tmp_path / cost.LOCAL_NAME).read_text())["entries"]
    assert [(e["device"], e["approach"], e["precision"], e["basis"]) for e in saved] == [
        ("cpu test", "lora", "fp32", "measured")
    ]
    r = cost.rate(cost.load_calibration(tmp_path), "cpu test", "lora", "fp32")
    assert r.mfu > 0 and r.opt_eff > 0 and r.layer_s + r.dispatch_s > 0
    assert r.source.startswith("make probe")
    # probing again replaces this device's entries instead of piling them up
    probe.save("cpu test", {("lora", "fp32"): cost.Rate(0.1)}, "again", str(tmp_path))
    again = yaml.safe_load((tmp_path / cost.LOCAL_NAME).read_text())["entries"]
    assert len(again) == 1 and again[0]["source"] == "again"


def test_bench_plan_predicts_points_of_other_batches_and_sizes_from_one_fit(tmp_path, monkeypatch):
    from sweep.bench import step_time
    from sweep.cli import rates

    monkeypatch.setattr(rates, "APPROACHES", {"lora": ["method=lora", "method.r=4"]})
    monkeypatch.setattr(step_time, "GRID", {"lora": [["method.r=8"]]})
    monkeypatch.setattr(step_time, "SIZES", {"tiny_llama": 2})
    monkeypatch.setattr(step_time, "ROUNDS", 1)
    monkeypatch.setattr(step_time, "CALIBRATE_AT", (2, 4))
    monkeypatch.setattr(rates, "LATENCY_BATCHES", (1,))
    device = GpuClass("cpu t", 0, 0, 0.05, 0.05, mem_gbps=5.0)
    monkeypatch.setattr(rates, "this_device", lambda: device)
    saved = tmp_path / "step_time.json"
    table = step_time.check(["model=tiny_llama"], tmp_path, saved)
    assert list(table.point) == ["lora r=8", "tiny_llama lora"]  # no fit or latency trial
    refit = step_time.table(step_time.load(saved))  # the saved run refitted, no trial rerun
    pd.testing.assert_frame_equal(refit, table)
    assert refit.attrs["fits"] == table.attrs["fits"]
    assert list(table.batch) == [step_time.BATCH, 2]
    assert (table["predicted s/step"] > 0).all() and (table["before: predicted"] > 0).all()
    assert set(table.attrs["fits"]) == {("lora", "fp32")}
    text = step_time.section(table, "now")
    assert "Worst step-time error" in text and "cpu t" in text
    assert '{device: cpu, approach: lora, basis: fitted, precision: "*", mfu:' in text
    (line,) = [x for x in text.splitlines() if x.startswith("  - {device: cpu")]
    entry = yaml.safe_load(line.strip()[2:])  # pastes into conf/calibration.yaml as it is
    assert entry["layer_token_s"] >= 0 and entry["source"].startswith("make bench-plan")


def test_refitting_a_file_that_is_not_a_saved_run_is_one_line(tmp_path, capsys):
    from sweep.bench import step_time

    bad = tmp_path / "bad.json"
    bad.write_text('{"points": {}}')
    for path in (tmp_path / "missing.json", bad):
        assert step_time.main(["--from", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: --from {path}: not a step-time run") and "\n" not in err
