"""Accuracy comparisons from per-item results: which differences are real, which are noise.

    python -m sweep report default      # the report calls `compare.table(records)`

Reads the per-item results logged beside every trial record (`eval_items.jsonl`, and the
untuned base model's `base_items.jsonl`) and gives, per approach:
- n (items x seeds), exact-match accuracy with its 95% interval (Wilson for one seed; a
  bootstrap over seeds and items for several), and the task's own (partial-credit) score;
- the paired delta against full FT and against the untuned base on the same items: a
  paired-bootstrap 95% interval and the exact McNemar p-value; `verdict` says "indistinguishable"
  when the interval holds 0;
- the retention change (general-text loss after minus before training) with its interval;
- for search sweeps, the trial chosen per approach and seed on the selection split's loss
  (`select_loss`, never the reported eval set), so the headline is not optimistically biased.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from sweep.results import stats

SAME = "indistinguishable"
SELECT_KEYS = ("select_loss", "eval_loss")  # what a search sweep chooses on, in order of preference


@dataclass
class Outcomes:
    """One approach's per-item results: seed -> item id -> (exact 0/1, task score)."""

    label: str
    method: str
    items: dict[int, dict[str, tuple[int, float]]] = field(default_factory=dict)
    base: dict[int, dict[str, int]] = field(default_factory=dict)
    retention: dict[int, np.ndarray] = field(default_factory=dict)  # after - before per passage
    n_fallback: int = 0  # n_eval of records without per-item results
    acc_fallback: list[float] = field(default_factory=list)

    @property
    def n(self) -> int:
        return sum(len(v) for v in self.items.values()) or self.n_fallback

    def exact(self) -> list[np.ndarray]:
        return [np.array([e for e, _ in v.values()], dtype=float) for v in self.items.values()]


def _metric(rec: dict[str, Any], key: str) -> float:
    v = rec.get("train", {}).get("metrics", {}).get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.nan


def select(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str | None]:
    """The ok trials the headline reports: per (approach, seed) the one trial of a grid point
    (the newest, where the same config was trained again), or the best of a search by the
    selection split's loss. Returns (chosen, the key chosen on,
    None when nothing had to be chosen). Every record gets `selected` = True/False."""
    groups: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    newest: dict[tuple[Any, ...], dict[str, Any]] = {}  # a config trained again: its last run
    for rec in records:
        rec["selected"] = False
        if rec.get("train", {}).get("status") == "ok":
            run = rec.get("run", {})
            same = run.get("config_hash") or id(rec)
            newest[(run.get("label"), run.get("seed"), same)] = rec
    for rec in newest.values():
        run = rec["run"]
        groups.setdefault((run.get("label"), run.get("seed")), []).append(rec)
    chosen, key_used = [], None
    for group in groups.values():
        newest_first = group[::-1]  # records come oldest first; a tie goes to the newest
        best = newest_first[0]
        if len(group) > 1:
            key = next(
                (k for k in SELECT_KEYS if all(not math.isnan(_metric(r, k)) for r in group)), None
            )
            key_used = key_used or key
            if key is not None:
                best = min(newest_first, key=lambda r, k=key: _metric(r, k))
        best["selected"] = True
        chosen.append(best)
    return chosen, key_used


def outcomes(records: list[dict[str, Any]]) -> dict[str, Outcomes]:
    """Per approach label, the per-item results of its chosen trials (see `select`)."""
    out: dict[str, Outcomes] = {}
    for rec in records:
        run, train = rec.get("run", {}), rec.get("train", {})
        o = out.setdefault(run["label"], Outcomes(run["label"], str(run.get("method"))))
        seed = int(run.get("seed") or 0)
        items = rec.get("items", {})
        if items.get("eval_items"):
            o.items[seed] = {
                i["id"]: (int(i["exact"]), float(i["score"])) for i in items["eval_items"]
            }
        else:  # a record from before per-item results: its mean and n only
            n_eval = _metric(rec, "n_eval")
            o.n_fallback += 0 if math.isnan(n_eval) else int(n_eval)
            o.acc_fallback.append(_metric(rec, "accuracy"))
        if items.get("base_items"):
            o.base[seed] = {i["id"]: int(i["exact"]) for i in items["base_items"]}
        ret = train.get("retention") or {}
        if ret.get("before") and ret.get("after"):
            o.retention[seed] = np.asarray(ret["after"], float) - np.asarray(ret["before"], float)
    return out


def paired(
    a: dict[int, dict[str, Any]], b: dict[int, dict[str, Any]]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Exact-match outcomes of a and b on the items both scored, per seed both ran."""
    xs, ys = [], []
    for seed in sorted(set(a) & set(b)):
        ids = sorted(set(a[seed]) & set(b[seed]))

        def exact(v: Any) -> int:
            return int(v[0] if isinstance(v, tuple) else v)

        xs.append(np.array([exact(a[seed][i]) for i in ids], dtype=float))
        ys.append(np.array([exact(b[seed][i]) for i in ids], dtype=float))
    return xs, ys


def delta(xs: list[np.ndarray], ys: list[np.ndarray]) -> dict[str, float]:
    """Paired delta (points), its 95% bootstrap interval, McNemar p and the discordant share."""
    n = int(sum(len(x) for x in xs))
    if n == 0:
        return {"n_pairs": 0}
    d, lo, hi = stats.paired_bootstrap(xs, ys)
    only_a, only_b = stats.discordant(xs, ys)
    return {
        "n_pairs": n,
        "delta": 100 * d,
        "lo": 100 * lo,
        "hi": 100 * hi,
        "p": stats.mcnemar(only_a, only_b),
        "discordant": (only_a + only_b) / n,
    }


def verdict(lo: float, hi: float) -> str:
    """'indistinguishable' when the interval holds 0, else 'better' or 'worse'."""
    if math.isnan(lo) or math.isnan(hi):
        return ""
    return SAME if lo <= 0 <= hi else ("better" if lo > 0 else "worse")


def accuracy_interval(o: Outcomes) -> tuple[float, float, float, str]:
    """(accuracy, low, high, method) of one approach's exact match."""
    exact = o.exact()
    if not exact:
        acc = float(np.nanmean(o.acc_fallback)) if o.acc_fallback else math.nan
        if o.n_fallback and not math.isnan(acc):
            return acc, *stats.wilson(acc * o.n_fallback, o.n_fallback), "Wilson"
        return acc, math.nan, math.nan, ""
    total, n = sum(x.sum() for x in exact), sum(len(x) for x in exact)
    if len(exact) == 1:
        return total / n, *stats.wilson(total, n), "Wilson"
    return total / n, *stats.bootstrap_mean(exact), "bootstrap over seeds and items"


def table(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per approach label (chosen trials only): n, accuracy with its interval, task
    score, paired deltas against full FT and the untuned base, retention change."""
    outs = outcomes(records)
    full = next((o for o in outs.values() if o.method == "full"), None)
    rows = []
    for label, o in outs.items():
        acc, lo, hi, method = accuracy_interval(o)
        scores = [s for v in o.items.values() for _, s in v.values()]
        row: dict[str, Any] = {
            "label": label,
            "n": o.n,
            "seeds": len(o.items) or len(o.acc_fallback),
            "accuracy": acc,
            "acc_lo": lo,
            "acc_hi": hi,
            "ci_method": method,
            "task_score": float(np.mean(scores)) if scores else math.nan,
        }
        if full is not None and o is not full:
            vs = delta(*paired(o.items, full.items))
            if not vs["n_pairs"]:  # no per-item results: the plain difference, no interval
                vs["delta"] = 100 * (acc - accuracy_interval(full)[0])
            row.update({f"full_{k}": v for k, v in vs.items()})
            row["vs_full"] = verdict(vs.get("lo", math.nan), vs.get("hi", math.nan))
        vb = delta(*paired(o.items, o.base))
        row.update({f"base_{k}": v for k, v in vb.items()})
        if o.retention:
            deltas = list(o.retention.values())
            row["retention_delta"] = float(np.mean(np.concatenate(deltas)))
            row["retention_lo"], row["retention_hi"] = stats.bootstrap_mean(deltas)
        rows.append(row)
    return pd.DataFrame(rows).set_index("label") if rows else pd.DataFrame()


def better_beyond_noise(records: list[dict[str, Any]]) -> dict[tuple[str, str], bool]:
    """(a, b) -> True where approach a's accuracy is higher than b's beyond noise (the paired
    95% interval of a - b lies above 0). Without per-item results: a plain a > b."""
    outs = outcomes(records)
    out = {}
    for a in outs.values():
        for b in outs.values():
            if a is b:
                continue
            xs, ys = paired(a.items, b.items)
            if sum(len(x) for x in xs):
                _, lo, _ = stats.paired_bootstrap(xs, ys)
                out[a.label, b.label] = lo > 0
            else:
                acc_a, acc_b = accuracy_interval(a)[0], accuracy_interval(b)[0]
                out[a.label, b.label] = acc_a > acc_b
    return out


def resolution(summary: pd.DataFrame) -> tuple[float, float, int, float, float] | None:
    """(smallest, largest) difference in points the eval resolves at 80% power against full FT,
    over the approaches compared, with n and the discordant shares behind them."""
    if "full_discordant" not in summary:
        return None
    rows = summary[summary.full_n_pairs.fillna(0) > 0]
    if rows.empty:
        return None
    res = [
        100 * stats.resolution(int(n), float(p))
        for n, p in zip(rows.full_n_pairs, rows.full_discordant, strict=True)
    ]
    return (
        min(res),
        max(res),
        int(rows.full_n_pairs.max()),
        float(rows.full_discordant.min()),
        float(rows.full_discordant.max()),
    )
