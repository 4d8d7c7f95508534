"""Statistics on per-item results, against hand-computed values and simulation."""

import math

import numpy as np
import pytest

from sweep.results import stats


def test_wilson_against_the_hand_computed_interval():
    # 23/40: center (0.575 + 1.96^2/80) / (1 + 1.96^2/40) = 0.5684, half-width 0.1465
    lo, hi = stats.wilson(23, 40)
    assert lo == pytest.approx(0.42196, abs=2e-4) and hi == pytest.approx(0.71490, abs=2e-4)
    lo, hi = stats.wilson(0, 8)  # no successes: the interval still has width
    assert lo == 0.0 and hi == pytest.approx(0.3244, abs=1e-3)
    assert all(math.isnan(v) for v in stats.wilson(0, 0))


def test_exact_mcnemar_against_the_binomial_by_hand():
    assert stats.mcnemar(0, 6) == pytest.approx(2 / 64)  # all six discordant pairs one way
    assert stats.mcnemar(0, 5) == pytest.approx(2 / 32)  # five cannot reach p < 0.05
    # 3 vs 7: 2 * (C(10,0) + C(10,1) + C(10,2) + C(10,3)) / 2^10 = 2 * 176 / 1024
    assert stats.mcnemar(3, 7) == pytest.approx(0.34375)
    assert stats.mcnemar(7, 3) == stats.mcnemar(3, 7)
    assert stats.mcnemar(0, 0) == 1.0 and stats.mcnemar(5, 5) == 1.0


def test_discordant_counts_over_seeds():
    a = [[1, 1, 0, 0], [1, 0]]
    b = [[1, 0, 1, 0], [0, 0]]
    assert stats.discordant(a, b) == (2, 1)


def test_paired_bootstrap_is_exact_where_there_is_no_noise_and_repeatable():
    ones, zeros = np.ones(50), np.zeros(50)
    assert stats.paired_bootstrap([ones], [zeros]) == (1.0, 1.0, 1.0)
    assert stats.paired_bootstrap([ones], [ones]) == (0.0, 0.0, 0.0)
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    assert stats.paired_bootstrap([a], [b]) == stats.paired_bootstrap([a], [b])  # fixed seed
    with pytest.raises(ValueError):
        stats.paired_bootstrap([ones], [np.ones(49)])


def test_pairing_removes_what_items_share():
    """Two approaches that agree on most items: the paired interval is far narrower than the
    interval of either accuracy, and a 5-point gain on 400 items is resolved."""
    rng = np.random.default_rng(0)
    full = (rng.random(400) < 0.6).astype(float)
    lora = full.copy()
    wrong = np.flatnonzero(full == 0)[:20]  # 20 more items right, nothing lost
    lora[wrong] = 1
    d, lo, hi = stats.paired_bootstrap([lora], [full])
    assert d == pytest.approx(0.05)
    assert lo > 0.02 and hi < 0.075
    acc_lo, acc_hi = stats.wilson(full.sum(), 400)
    assert hi - lo < (acc_hi - acc_lo) / 2


def test_bootstrap_mean_agrees_with_wilson_for_one_seed_and_widens_with_seed_spread():
    x = np.array([1] * 200 + [0] * 200, dtype=float)
    lo, hi = stats.bootstrap_mean([x])
    w_lo, w_hi = stats.wilson(200, 400)
    assert lo == pytest.approx(w_lo, abs=0.01) and hi == pytest.approx(w_hi, abs=0.01)
    # three seeds far apart: the seed-to-seed spread widens the interval
    seeds = [np.array([1] * k + [0] * (400 - k), dtype=float) for k in (120, 200, 280)]
    s_lo, s_hi = stats.bootstrap_mean(seeds)
    assert s_hi - s_lo > 2 * (hi - lo)


def test_resolution_by_hand_and_by_simulated_power():
    # delta * 20 = 1.96 * sqrt(0.2) + 0.8416 * sqrt(0.2 - delta^2)  ->  delta = 0.0625
    d = stats.resolution(400, 0.2)
    assert d == pytest.approx(0.0625, abs=1e-3)
    assert stats.resolution(1600, 0.2) < d < stats.resolution(100, 0.2)
    assert stats.resolution(400, 0.1) < d  # fewer discordant items: finer resolution
    assert math.isinf(stats.resolution(8, 0.0))  # too few items to detect anything
    # simulate: 400 pairs, 20% discordant, true difference d -> McNemar finds it ~80% of the time
    rng = np.random.default_rng(1)
    p_a, p_b = (0.2 + d) / 2, (0.2 - d) / 2  # shares won by a only and by b only
    hits = 0
    for _ in range(600):
        only_a, only_b, _ = rng.multinomial(400, [p_a, p_b, 1 - p_a - p_b])
        hits += stats.mcnemar(int(only_a), int(only_b)) < 0.05
    assert 0.70 < hits / 600 < 0.88  # the exact test is slightly conservative
