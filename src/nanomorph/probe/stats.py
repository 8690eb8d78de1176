"""Comparisons of methods scored on the same runs: paired Wilcoxon signed-rank tests with Holm correction.

Every method of a sweep is scored on exactly the same split seeds (probe) or test images (segmentation), so
two methods' scores are PAIRED: the test is on the per-unit differences, not on two independent samples.
`pairwise_wilcoxon` pairs the rows of two methods by `unit` (e.g. `split_seed`); several rows of one method
and unit (several encoder seeds) are averaged first. Holm's step-down correction (`holm`) controls the
family-wise error over a stated family of tests.

`mann_whitney` stays for genuinely independent groups (the anchor study's inverted vs ordered probes).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu, wilcoxon

STATS_COLUMNS = ["n", "method_a", "method_b", "pairs", "median_a", "median_b", "median_difference", "W", "p",
                 "p_holm"]


def mann_whitney(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(U of `a`, two-sided p) from scipy; (nan, nan) when a side has no values (the test is undefined)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size == 0 or b.size == 0:
        return float("nan"), float("nan")
    result = mannwhitneyu(a, b, alternative="two-sided")
    return float(result.statistic), float(result.pvalue)


def paired_wilcoxon(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(W, two-sided p) of the signed-rank test on the differences a - b (scipy; zero differences dropped).

    All differences zero: no evidence of a difference, p = 1. Fewer than one pair: (nan, nan).
    """
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if d.size == 0:
        return float("nan"), float("nan")
    if not np.any(d):
        return 0.0, 1.0
    result = wilcoxon(d, zero_method="wilcox", alternative="two-sided")
    return float(result.statistic), float(result.pvalue)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values (same order): sorted ascending, p_(i) * (m - i), running maximum, capped at 1.

    NaN entries (undefined tests) are left NaN and do not count in the family size m.
    """
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    defined = np.flatnonzero(~np.isnan(p))
    order = defined[np.argsort(p[defined], kind="stable")]
    m = len(order)
    running = 0.0
    for i, k in enumerate(order):
        running = max(running, min(1.0, p[k] * (m - i)))
        adjusted[k] = running
    return adjusted


def paired_scores(table: pd.DataFrame, a: str, b: str, n: int, value: str, method: str, unit: str,
                  by: str = "n") -> tuple[np.ndarray, np.ndarray]:
    """The two methods' `value` at `n` on the units both were scored on, aligned (unit order)."""
    at_n = table[table[by] == n]
    per_unit = at_n[at_n[method].isin([a, b])].groupby([method, unit])[value].mean().unstack(method)
    if a not in per_unit or b not in per_unit:
        return np.array([]), np.array([])
    both = per_unit[[a, b]].dropna()
    return both[a].to_numpy(), both[b].to_numpy()


def pairwise_wilcoxon(table: pd.DataFrame, value: str = "accuracy", method: str = "encoder",
                      unit: str = "split_seed", by: str = "n",
                      pairs: Sequence[tuple[str, str]] | None = None) -> pd.DataFrame:
    """One row per (n, method pair): the paired test of method_a vs method_b over shared `unit`s.

    `pairs` defaults to every pair of methods in order of first appearance. `p_holm` is Holm-corrected over
    all rows of the returned table (the family is exactly the tests listed).
    """
    methods = list(dict.fromkeys(table[method]))
    pairs = list(pairs) if pairs is not None else list(combinations(methods, 2))
    rows = []
    for n in sorted(table[by].unique()):
        for a, b in pairs:
            xa, xb = paired_scores(table, a, b, n, value, method, unit, by)
            W, p = paired_wilcoxon(xa, xb)
            rows.append({"n": n, "method_a": a, "method_b": b, "pairs": int(len(xa)),
                         "median_a": float(np.median(xa)) if len(xa) else float("nan"),
                         "median_b": float(np.median(xb)) if len(xb) else float("nan"),
                         "median_difference": float(np.median(xa - xb)) if len(xa) else float("nan"),
                         "W": W, "p": p})
    out = pd.DataFrame(rows, columns=STATS_COLUMNS[:-1])
    out["p_holm"] = holm(out["p"].to_numpy()) if len(out) else []
    return out
