import math

import numpy as np
import pandas as pd
import pytest

from nanomorph.probe.stats import STATS_COLUMNS, mann_whitney, pairwise_mann_whitney


def _table(samples: dict[tuple[str, int], np.ndarray]) -> pd.DataFrame:
    return pd.concat([pd.DataFrame({"encoder": m, "n": n, "accuracy": v}) for (m, n), v in samples.items()],
                     ignore_index=True)


def test_separated_samples_give_the_exact_extreme_p():
    """a entirely below b (8 vs 8, no ties: scipy's exact test): U_a = 0, two-sided p = 2 / C(16, 8)."""
    U, p = mann_whitney(np.arange(8.0), np.arange(8.0) + 100)
    assert U == 0
    assert p == pytest.approx(2 / math.comb(16, 8))
    U_rev, p_rev = mann_whitney(np.arange(8.0) + 100, np.arange(8.0))
    assert U_rev == 64 and p_rev == pytest.approx(p)


def test_known_distributions():
    rng = np.random.default_rng(0)
    same_a, same_b = rng.normal(0, 1, 200), rng.normal(0, 1, 200)
    shifted = rng.normal(1.0, 1, 200)
    table = _table({("a", 1): same_a, ("b", 1): same_b, ("c", 1): shifted})
    stats = pairwise_mann_whitney(table).set_index(["method_a", "method_b"])
    assert stats.loc[("a", "b"), "p"] > 0.05             # same distribution
    assert stats.loc[("a", "c"), "p"] < 1e-10            # shifted by one standard deviation
    assert stats.loc[("a", "c"), "median_b"] > stats.loc[("a", "c"), "median_a"]
    # U of a plus U of b is the number of pairs.
    U_ba, _ = mann_whitney(shifted, same_a)
    assert stats.loc[("a", "c"), "U"] + U_ba == 200 * 200


def test_table_layout_per_n_and_pair():
    rng = np.random.default_rng(1)
    samples = {(m, n): rng.random(5) for m in ("x", "y", "z") for n in (1, 8)}
    stats = pairwise_mann_whitney(_table(samples))
    assert list(stats.columns) == STATS_COLUMNS
    assert len(stats) == 2 * 3
    assert set(zip(stats.method_a, stats.method_b)) == {("x", "y"), ("x", "z"), ("y", "z")}
    assert (stats.runs_a == 5).all()


def test_missing_method_at_some_n_is_undefined_not_an_error():
    table = _table({("a", 1): np.array([0.1, 0.2]), ("b", 2): np.array([0.3, 0.4]), ("a", 2): np.array([0.5])})
    stats = pairwise_mann_whitney(table)
    at_1 = stats[stats.n == 1].iloc[0]
    assert at_1.runs_b == 0 and math.isnan(at_1.p) and math.isnan(at_1.U)
