"""The report's claims from per-item results: a real difference is called one, noise is not."""

import re

import numpy as np
import pytest

from sweep.results import claims, compare, headline, report
from sweep.settings.schema import GpuClass

GPUS = [GpuClass(name="L4", memory_gib=24, usd_per_hour=0.8)]
N = 400


def items(correct, seed=0, partial=()):
    """Per-item results: item i right where correct[i]; items in `partial` half credit."""
    return [
        {
            "id": f"s{seed}-{i:04d}",
            "prompt": f"q{i}",
            "expected": str(i),
            "answer": str(i) if ok else "x",
            "exact": int(ok),
            "score": 1.0 if ok else (0.5 if i in partial else 0.0),
        }
        for i, ok in enumerate(correct)
    ]


def rec(label, method, correct, mem, train_s, seed=0, lr=1e-3, base=None, **metrics):
    run = {"label": label, "method": method, "rank": None if method == "full" else 16}
    run.update(quant=None, precision="fp32", seed=seed, lr=lr, model="m", dataset="d")
    m = {"accuracy": float(np.mean(correct)), "peak_memory_gib": mem, "memory_kind": "vram"}
    m.update(train_s=train_s, total_s=train_s + 5, train_tokens_per_s=100.0)
    m.update(trainable_pct=1.0, adapter_bytes=10, n_eval=len(correct), **metrics)
    base = np.zeros(len(correct), dtype=int) if base is None else base
    return {
        "run": run,
        "train": {
            "status": "ok",
            "metrics": m,
            "retention": {"before": [2.0] * 8, "after": [2.0 + 0.01 * k for k in range(8)]},
        },
        "items": {"eval_items": items(correct, seed), "base_items": items(base, seed)},
        "meta": {},
    }


def _full():
    rng = np.random.default_rng(7)
    return (rng.random(N) < 0.6).astype(int)


def _flip(correct, to_right, to_wrong):
    out = correct.copy()
    out[np.flatnonzero(correct == 0)[:to_right]] = 1
    out[np.flatnonzero(correct == 1)[:to_wrong]] = 0
    return out


def records():
    full = _full()
    return [
        rec("full", "full", full, 40.0, 100.0),
        # noise: 12 items won and 7 lost against full FT (+1.25 pts): not a finding
        rec("lora r=16", "lora", _flip(full, 12, 7), 15.0, 60.0),
        # real: 60 items lost (-15 pts)
        rec("lora r=4", "lora", _flip(full, 0, 60), 14.0, 55.0),
    ]


def test_a_real_difference_and_noise_are_told_apart():
    table = compare.table(records())
    noise, real = table.loc["lora r=16"], table.loc["lora r=4"]
    assert noise.full_delta == pytest.approx(1.25) and noise.full_lo < 0 < noise.full_hi
    assert noise.vs_full == compare.SAME and noise.full_p > 0.3
    assert real.full_delta == pytest.approx(-15.0) and real.full_hi < 0
    assert real.vs_full == "worse" and real.full_p < 1e-10
    assert real.full_discordant == pytest.approx(60 / N)
    # every approach beats the untuned base (all wrong) beyond noise
    assert (table.base_lo > 0).all()
    assert table.loc["full", "acc_lo"] < 0.6 < table.loc["full", "acc_hi"]
    assert table.loc["full", "n"] == N and table.loc["full", "ci_method"] == "Wilson"
    assert table.loc["full", "retention_delta"] == pytest.approx(0.035)


def test_pareto_marks_treat_noise_as_a_tie():
    table = headline.headline(records(), GPUS).set_index("label")
    # full FT is dominated by lora r=16: less memory, accuracy within noise. lora r=4 has the
    # least memory, so it stays on the front although it is worse beyond noise.
    assert table.pareto_memory.to_dict() == {"full": False, "lora r=16": True, "lora r=4": True}


def test_report_prose_never_claims_a_difference_whose_interval_holds_zero(tmp_path):
    text = report.write(records(), tmp_path, "exp", GPUS).read_text()
    assert "lora r=16: indistinguishable from full FT at n = 400, where this eval detects a" in text
    assert "lora r=4: 15.0 pts below full FT" in text
    assert "reached" not in text and "% of full FT accuracy" not in text
    line = next(x for x in text.splitlines() if x.startswith("| lora r=16"))
    assert "≈" in line
    assert "**Resolution:** with n = 400 paired items" in text
    assert "**Recommendation:** lora r=16 has the smallest peak memory" in text
    m = re.search(r"detects a difference of ([\d.]+)-([\d.]+) points", text)
    assert m and float(m.group(1)) < 5 < float(m.group(2))  # 5% vs 15% discordant


def test_exact_match_and_task_score_are_separate_columns(tmp_path):
    recs = records()
    full = _full()
    recs[0]["items"]["eval_items"] = items(full, partial=set(np.flatnonzero(full == 0)[:40]))
    table = compare.table(recs)
    assert table.loc["full", "accuracy"] == pytest.approx(full.mean())
    assert table.loc["full", "task_score"] == pytest.approx(full.mean() + 40 * 0.5 / N)


def test_no_recommendation_when_everything_is_worse(tmp_path):
    full = _full()
    recs = [
        rec("full", "full", full, 40.0, 100.0),
        rec("lora r=4", "lora", _flip(full, 0, 60), 14, 55),
    ]
    text = report.write(recs, tmp_path, "exp", GPUS).read_text()
    assert "**Recommendation:** none at this resolution" in text


def test_seeds_are_paired_seed_by_seed_and_bootstrapped_over_seeds_and_items():
    rng = np.random.default_rng(0)
    recs = []
    for seed in range(3):
        full = (rng.random(N) < 0.6).astype(int)
        recs.append(rec("full", "full", full, 40.0, 100.0, seed=seed))
        recs.append(rec("lora r=16", "lora", _flip(full, 30, 0), 15.0, 60.0, seed=seed))
    table = compare.table(recs)
    lora = table.loc["lora r=16"]
    assert lora.n == 3 * N and lora.seeds == 3
    assert lora.ci_method == "bootstrap over seeds and items"
    assert lora.full_delta == pytest.approx(7.5) and lora.full_n_pairs == 3 * N
    assert lora.vs_full == "better"
    note = " ".join(claims.seeds_note(recs))
    assert "Seeds 0, 1, 2" in note and "on the same train and eval items" in note
    for r in recs:  # sweep.seed_data: each seed its own data sample
        r["run"]["config"] = {"dataset": {"seed": 1234 + r["run"]["seed"]}}
    assert "the data sample itself" in " ".join(claims.seeds_note(recs))


def test_a_search_reports_each_approach_at_the_setting_chosen_on_the_selection_split(tmp_path):
    full = _full()
    lucky = _flip(full, 40, 0)  # best on the eval set, but not on the selection split
    chosen = _flip(full, 10, 0)
    recs = [
        rec("full", "full", full, 40.0, 100.0, select_loss=0.5),
        rec("lora r=16", "lora", lucky, 15.0, 60.0, lr=3e-3, select_loss=0.9, eval_loss=0.1),
        rec("lora r=16", "lora", chosen, 15.0, 60.0, lr=1e-3, select_loss=0.4, eval_loss=0.3),
    ]
    table = headline.headline(recs, GPUS).set_index("label")
    assert table.loc["lora r=16", "lr"] == pytest.approx(1e-3)
    assert table.loc["lora r=16", "accuracy"] == pytest.approx(chosen.mean())
    assert table.loc["lora r=16", "runs"] == 1
    text = report.write(recs, tmp_path, "exp", GPUS).read_text()
    assert "the trial with the lowest `select_loss`" in text and "not biased" in text
    assert sum(r["selected"] for r in recs) == 2


def test_a_point_trained_again_reports_its_newest_trial():
    """Outputs cleared and the sweep run again into the same store: the re-run's numbers, not
    the first run's (records come oldest first; equal losses tie to the newest)."""
    full = _full()
    old = rec("lora r=16", "lora", full, 15.0, 90.0, eval_loss=0.3)
    new = rec("lora r=16", "lora", full, 15.0, 60.0, eval_loss=0.3)
    unscored = [rec("full", "full", full, 40.0, 120.0), rec("full", "full", full, 40.0, 100.0)]
    chosen, _ = compare.select([old, new, *unscored])
    assert new in chosen and old not in chosen
    assert unscored[1] in chosen and unscored[0] not in chosen
    # the same config trained again: the newest, even where the first had the lower loss
    first = rec("lora r=4", "lora", full, 15.0, 90.0, eval_loss=0.2)
    again = rec("lora r=4", "lora", full, 15.0, 60.0, eval_loss=0.4)
    for r in (first, again):
        r["run"]["config_hash"] = "abc"
    chosen, _ = compare.select([first, again])
    assert chosen == [again]


def test_an_indistinguishable_row_shows_the_difference_its_own_pair_could_detect(tmp_path):
    """≈ has a size: the resolution from this pair's n and discordant share (19 of 400)."""
    from sweep.results import stats

    text = report.write(records(), tmp_path, "exp", GPUS).read_text()
    size = 100 * stats.resolution(N, 19 / N)
    line = next(x for x in text.splitlines() if x.startswith("| lora r=16"))
    assert f"≈ {size:.1f}" in line
    assert f"detects a difference of {size:.1f} points or more (+1.2 pts" in text
    real = next(x for x in text.splitlines() if x.startswith("| lora r=4"))
    assert "≈" not in real  # a real difference carries no resolution mark


def test_the_report_says_what_its_intervals_cover_and_where_learning_rates_come_from(tmp_path):
    recs = records()
    text = report.write(recs, tmp_path, "exp", GPUS).read_text()
    assert (
        "**What the intervals cover:** the choice of eval items only, for one training seed" in text
    )
    assert "(as set)" in text  # full FT at 1e-3 is not its default
    assert "`make sweep SWEEP=lr_search` tunes the learning rate per approach" in text
    recs[0]["run"]["lr"] = 5e-5  # full FT's default; LoRA's is 1e-3
    text = report.write(recs, tmp_path, "exp", GPUS).read_text()
    assert "full 5e-05, lora r=16 0.001, lora r=4 0.001 (each method's default, not tuned" in text
    assert "- † lora r=16: lr 0.001 (full FT: 5e-05)" in text  # the recipe note lists it


def test_with_several_seeds_the_intervals_cover_seeds_too(tmp_path):
    full = _full()
    recs = [rec("full", "full", full, 40.0, 100.0, seed=s) for s in (0, 1)]
    recs += [rec("lora r=16", "lora", _flip(full, 3, 2), 15.0, 60.0, seed=s) for s in (0, 1)]
    text = report.write(recs, tmp_path, "exp", GPUS).read_text()
    assert "the choice of eval items and of 2 training seeds (`sweep.seeds`)" in text
