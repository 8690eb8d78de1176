import numpy as np
import pytest

from nanomorph.probe.advisor import (
    SUMMARY_COLUMNS, evaluate_advisor, propose_labels, random_labels, summarise_advisor,
)
from nanomorph.probe.solvers import SolverSettings

CLASSES = np.array(["bundle", "dispersed", "network", "singular"])


def _clustered(sizes=(90, 40, 15, 15), dim=10, seed=0, spread=1.0):
    """Four well-separated clusters of unequal size (classes unknown to the advisor)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(42).normal(0, 4, (len(sizes), dim))
    labels = np.repeat(CLASSES[: len(sizes)], sizes)
    codes = np.repeat(np.arange(len(sizes)), sizes)
    return centres[codes] + rng.normal(0, spread, (len(labels), dim)), labels


def test_proposal_is_k_distinct_seeded_and_covers_the_clusters():
    features, labels = _clustered()
    picks = propose_labels(features, 4, seed=0)
    assert len(picks) == len(set(picks)) == 4
    np.testing.assert_array_equal(picks, propose_labels(features, 4, seed=0))
    assert set(labels[picks]) == set(CLASSES)  # one image from each cluster, the small ones included
    assert len(set(propose_labels(features, 12, seed=1))) == 12
    with pytest.raises(ValueError, match="budget"):
        propose_labels(features, 0, seed=0)
    draw = random_labels(50, 5, seed=3)
    assert len(set(draw)) == 5 and draw.max() < 50


def test_advisor_beats_random_choice_on_clustered_features():
    features, labels = _clustered()
    runs = evaluate_advisor({("toy", 0): features}, labels, budgets=[4, 8], split_seeds=range(6),
                            test_fraction=0.25, settings=SolverSettings(), random_draws=5)
    assert len(runs) == 2 * 6 * (1 + 5)
    summary = summarise_advisor(runs)
    assert list(summary.columns) == SUMMARY_COLUMNS
    for row in summary.itertuples():
        assert row.advisor_accuracy > row.random_accuracy + 0.05
        assert row.advisor_classes_covered > row.random_classes_covered
    at_4 = summary[summary.k == 4].iloc[0]
    assert at_4.advisor_classes_covered == 4.0 and at_4.advisor_wins >= 5
