"""Pairwise comparisons of probe methods: two-sided Mann-Whitney U at every label budget."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu

STATS_COLUMNS = ["n", "method_a", "method_b", "U", "p", "median_a", "median_b", "runs_a", "runs_b"]


def mann_whitney(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(U of `a`, two-sided p) from scipy; (nan, nan) when a side has no values (the test is undefined)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size == 0 or b.size == 0:
        return float("nan"), float("nan")
    result = mannwhitneyu(a, b, alternative="two-sided")
    return float(result.statistic), float(result.pvalue)


def pairwise_mann_whitney(table: pd.DataFrame, value: str = "accuracy", method: str = "encoder",
                          by: str = "n") -> pd.DataFrame:
    """One row per (n, method pair): n, method_a, method_b, U (of method_a), p (two-sided), medians, run counts.

    Methods are paired in their order of first appearance in `table`; each method's sample at n is all its
    rows at n (every split seed and encoder seed). The p-values are not corrected for the number of pairs.
    """
    methods = list(dict.fromkeys(table[method]))
    rows = []
    for n in sorted(table[by].unique()):
        at_n = table[table[by] == n]
        samples = {m: at_n.loc[at_n[method] == m, value].to_numpy(dtype=float) for m in methods}
        for a, b in combinations(methods, 2):
            U, p = mann_whitney(samples[a], samples[b])
            rows.append({"n": n, "method_a": a, "method_b": b, "U": U, "p": p,
                         "median_a": float(np.median(samples[a])) if samples[a].size else float("nan"),
                         "median_b": float(np.median(samples[b])) if samples[b].size else float("nan"),
                         "runs_a": int(samples[a].size), "runs_b": int(samples[b].size)})
    return pd.DataFrame(rows, columns=STATS_COLUMNS)
