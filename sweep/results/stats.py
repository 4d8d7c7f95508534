"""Statistics for accuracy on per-item results: intervals, paired deltas, tests and resolution.

    python -c "from sweep.results import stats; print(stats.wilson(23, 40))"

Every function takes plain per-item outcomes, so the report can rebuild its claims from the
logged items alone. Outcomes are grouped by seed: a list with one array per seed (one array for
a single-seed sweep), items in the same order wherever two approaches are paired.
- `wilson`: the 95% score interval of one proportion (one seed).
- `bootstrap_mean`: the 95% percentile interval of a mean, resampling seeds, then items
  (hierarchical, which `scipy.stats.bootstrap` does not do; one seed resamples items alone).
- `paired_bootstrap`: the same for a difference of two approaches on the same items (paired).
- `mcnemar`: the exact two-sided McNemar p-value from the discordant pairs.
- `resolution`: the smallest paired difference an eval of n items detects at 80% power.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import numpy as np
from scipy.stats import binomtest

Z95 = NormalDist().inv_cdf(0.975)  # 1.95996...
BOOTSTRAP_SAMPLES = 4000
BOOTSTRAP_SEED = 0


def wilson(successes: float, n: int) -> tuple[float, float]:
    """Wilson score interval (low, high) for successes/n (scipy's `binomtest`); (nan, nan) for
    n = 0. `successes` may come as accuracy x n, a float: it is rounded to the count it is."""
    if n <= 0:
        return math.nan, math.nan
    ci = binomtest(round(successes), n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def _arrays(groups: Any) -> list[np.ndarray]:
    return [np.asarray(g, dtype=float) for g in groups if len(g)]


def _resample(
    groups: list[list[np.ndarray]], samples: int, seed: int
) -> np.ndarray:  # (samples,) means of sum over parts
    """Bootstrap the mean of `parts[0] - parts[1] ...` style stacks: groups[s] holds, per seed
    s, the aligned arrays to combine (one for a mean, two for a paired difference). Each sample
    draws k seeds with replacement, then each drawn seed's items with replacement; the item
    draws are made for many samples at once (a report makes dozens of these)."""
    rng = np.random.default_rng(seed)
    k = len(groups)
    picked = rng.integers(0, k, (samples, k)) if k > 1 else np.zeros((samples, 1), dtype=int)
    total, count = np.zeros(samples), np.zeros(samples)
    for s, parts in enumerate(groups):
        values = parts[0] if len(parts) == 1 else parts[0] - parts[1]
        n, times = len(values), (picked == s).sum(1)  # times: how often each sample drew s
        block = max(1, 2_000_000 // n)  # index draws held at once
        for j in range(int(times.max())):
            rows = np.flatnonzero(times > j)  # the samples that drew s a (j+1)-th time
            for lo in range(0, len(rows), block):
                r = rows[lo : lo + block]
                total[r] += values[rng.integers(0, n, (len(r), n))].sum(1)
        count += times * n
    return total / count


def bootstrap_mean(
    groups: Any, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float]:
    """95% percentile interval of the mean outcome, resampling seeds and then items in each."""
    arrays = _arrays(groups)
    if not arrays:
        return math.nan, math.nan
    draws = _resample([[a] for a in arrays], samples, seed)
    return float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))


def paired_bootstrap(
    a: Any, b: Any, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float, float]:
    """(mean(a) - mean(b), low, high): 95% percentile interval of the paired difference.

    a[s] and b[s] are the outcomes of two approaches on the same items (same order) for seed s;
    each bootstrap sample draws seeds, then items, and takes both approaches' outcomes on the
    drawn items, so what the items share (an easy or a hard item) cancels out.
    """
    pairs = []
    for x, y in zip(a, b, strict=True):
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        if len(x) != len(y):
            raise ValueError(f"paired outcomes differ in length: {len(x)} vs {len(y)}")
        if len(x):
            pairs.append([x, y])
    if not pairs:
        return math.nan, math.nan, math.nan
    diff = float(sum((x - y).sum() for x, y in pairs) / sum(len(x) for x, _ in pairs))
    draws = _resample(pairs, samples, seed)
    return diff, float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))


def discordant(a: Any, b: Any) -> tuple[int, int]:
    """(items a got right and b wrong, items b got right and a wrong), over all seeds."""
    only_a = only_b = 0
    for x, y in zip(a, b, strict=True):
        x, y = np.asarray(x) > 0.5, np.asarray(y) > 0.5
        only_a += int((x & ~y).sum())
        only_b += int((~x & y).sum())
    return only_a, only_b


def mcnemar(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value: scipy's binomial(only_a + only_b, 1/2) test of the
    discordant pairs. 1.0 when there are none."""
    n = only_a + only_b
    return 1.0 if n == 0 else float(binomtest(only_a, n, 0.5).pvalue)


def resolution(n: int, p_discordant: float, power: float = 0.8, z_alpha: float = Z95) -> float:
    """Smallest paired difference in proportions (0..1) that an eval of n paired items detects
    with this power at two-sided alpha 0.05, given the share of items the two approaches answer
    differently (Connor 1987's normal approximation to McNemar's test):
        delta * sqrt(n) = z_alpha * sqrt(p) + z_power * sqrt(p - delta^2).
    With no discordance observed, one discordant item in n is assumed. `inf` when no difference
    can be detected: too few items for even the largest difference the discordance allows."""
    if n <= 0:
        return math.nan
    p = min(1.0, max(p_discordant, 1.0 / n))
    z_b = NormalDist().inv_cdf(power)

    def gap(d: float) -> float:
        return d * math.sqrt(n) - z_alpha * math.sqrt(p) - z_b * math.sqrt(max(p - d * d, 0.0))

    lo, hi = 0.0, p
    if gap(hi) < 0:  # not even a difference as large as the discordance can be detected
        return math.inf
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gap(mid) < 0 else (lo, mid)
    return hi
