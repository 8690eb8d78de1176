import math

import numpy as np
import pandas as pd
import pytest

from nanomorph.probe.stats import STATS_COLUMNS, holm, mann_whitney, paired_wilcoxon, pairwise_wilcoxon


def _table(samples: dict[tuple[str, int], np.ndarray]) -> pd.DataFrame:
    return pd.concat([pd.DataFrame({"encoder": m, "n": n, "split_seed": np.arange(len(v)), "accuracy": v})
                      for (m, n), v in samples.items()], ignore_index=True)


def test_separated_samples_give_the_exact_extreme_p():
    """a entirely below b (8 vs 8, no ties: scipy's exact test): U_a = 0, two-sided p = 2 / C(16, 8)."""
    U, p = mann_whitney(np.arange(8.0), np.arange(8.0) + 100)
    assert U == 0
    assert p == pytest.approx(2 / math.comb(16, 8))


def test_paired_test_sees_a_consistent_small_gain_that_unpaired_misses():
    """b = a + a small positive shift on every unit, a itself widely spread: only the pairing reveals it."""
    rng = np.random.default_rng(0)
    a = rng.normal(0.5, 0.2, 12)
    b = a + rng.uniform(0.01, 0.02, 12)
    _W, p_paired = paired_wilcoxon(b, a)
    _U, p_unpaired = mann_whitney(b, a)
    assert p_paired == pytest.approx(2 / 2**12)   # exact test, every difference positive
    assert p_unpaired > 0.5


def test_identical_scores_give_p_one_and_empty_is_undefined():
    assert paired_wilcoxon(np.ones(5), np.ones(5)) == (0.0, 1.0)
    W, p = paired_wilcoxon(np.array([]), np.array([]))
    assert math.isnan(W) and math.isnan(p)


def test_holm_by_hand():
    # sorted: 0.01*4=0.04, 0.02*3=0.06, 0.03*2=0.06 (running max), 0.5*1=0.5; NaN stays out of the family.
    adjusted = holm([0.03, 0.01, float("nan"), 0.5, 0.02])
    np.testing.assert_allclose(adjusted[[0, 1, 3, 4]], [0.06, 0.04, 0.5, 0.06])
    assert math.isnan(adjusted[2])
    assert holm([0.9, 0.8]).max() == 1.0


def test_pairs_are_matched_by_split_seed_not_by_row_order():
    table = _table({("x", 1): np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]),
                    ("y", 1): np.array([0.2, 0.3, 0.4, 0.5, 0.6, 0.7])})
    shuffled = table.sample(frac=1.0, random_state=3)
    stats = pairwise_wilcoxon(shuffled)
    assert list(stats.columns) == STATS_COLUMNS
    row = stats.iloc[0]
    assert row.pairs == 6 and row.median_difference == pytest.approx(-0.1)
    assert row.p == pytest.approx(2 / 2**6)


def test_encoder_seeds_of_one_unit_are_averaged_and_missing_units_dropped():
    rows = [{"encoder": "x", "n": 1, "split_seed": s, "encoder_seed": e, "accuracy": 0.5 + 0.1 * e}
            for s in range(4) for e in (0, 1)]
    rows += [{"encoder": "y", "n": 1, "split_seed": s, "encoder_seed": 0, "accuracy": 0.4} for s in range(3)]
    stats = pairwise_wilcoxon(pd.DataFrame(rows))
    row = stats.iloc[0]
    assert row.pairs == 3                       # split seed 3 has no y
    assert row.median_a == pytest.approx(0.55)  # mean of the two encoder seeds


def test_holm_family_is_the_whole_table():
    rng = np.random.default_rng(1)
    samples = {(m, n): rng.random(8) for m in ("x", "y", "z") for n in (1, 8)}
    stats = pairwise_wilcoxon(_table(samples))
    assert len(stats) == 2 * 3
    np.testing.assert_allclose(stats.p_holm, holm(stats.p))
    assert (stats.p_holm >= stats.p).all()
    only = pairwise_wilcoxon(_table(samples), pairs=[("x", "z")])
    assert set(zip(only.method_a, only.method_b)) == {("x", "z")} and len(only) == 2
