"""The anchor study on synthetic features where density drives the class boundary, as in the paper."""

import numpy as np
import pytest

from nanomorph.probe.anchors import SUMMARY_COLUMNS, anchor_distances, anchor_study, summarise_anchors
from nanomorph.probe.solvers import SolverSettings

CLASSES = np.array(["bundle", "dispersed", "network", "singular"])


def _density_world(n_per_class=40, seed=0):
    """Feature 0 is the wire density (dispersed ~0.30, network ~0.45, overlapping), the other features carry
    bundle/singular apart; so a one-shot probe's dispersed/network boundary sits between its two anchors'
    densities, and an inverted pair flips that boundary."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(CLASSES, n_per_class)
    density = np.where(labels == "dispersed", rng.normal(0.30, 0.06, len(labels)),
                       np.where(labels == "network", rng.normal(0.45, 0.06, len(labels)), 0.1))
    other = np.zeros((len(labels), 2))
    other[labels == "bundle", 0] = 3
    other[labels == "singular", 1] = 3
    other += rng.normal(0, 0.3, other.shape)
    features = np.column_stack([density * 10, other])
    return features, labels, density


def test_anchor_distances_are_relative_to_the_class():
    features, labels, _ = _density_world()
    rel = anchor_distances(features, labels)
    for c in CLASSES:
        assert np.median(rel[labels == c]) == pytest.approx(1.0)
    outlier = features.copy()
    outlier[0] += 50
    assert anchor_distances(outlier, labels)[0] > 10


def test_inverted_anchors_do_worse():
    features, labels, density = _density_world()
    table = anchor_study({("toy", 0): features}, labels, density, split_seeds=range(150), test_fraction=0.2,
                         settings=SolverSettings())
    assert len(table) == 150
    assert table["inverted"].sum() >= 5  # the overlap produces inverted one-shot draws
    assert (table.loc[table.inverted, "density_dispersed"] > table.loc[table.inverted, "density_network"]).all()
    for c in CLASSES:  # the recorded anchor is really that class's one training image
        assert (labels[table[f"anchor_{c}"]] == c).all()
    summary = summarise_anchors(table)
    assert list(summary.columns) == SUMMARY_COLUMNS
    row = summary.iloc[0]
    assert row.median_accuracy_inverted < row.median_accuracy_ordered - 0.05
    assert row.p < 0.01
    assert row.gap_spearman_rho > 0 and row.gap_spearman_p < 0.05  # wider right-side gap, better probe
    np.testing.assert_allclose(table.density_gap, table.density_network - table.density_dispersed)


def test_atypical_anchors_do_worse():
    """A fifth of every class looks like another class (far from its own class median): one-shot probes
    anchored on such images do worse, so atypicality and accuracy are negatively rank-correlated."""
    rng = np.random.default_rng(1)
    labels = np.repeat(CLASSES, 40)
    codes = np.repeat(np.arange(4), 40)
    looks_like = np.where(rng.random(len(labels)) < 0.2, rng.integers(0, 4, len(labels)), codes)
    features = 3 * np.eye(4)[looks_like] + rng.normal(0, 0.5, (len(labels), 4))
    density = rng.random(len(labels))
    table = anchor_study({("toy", 0): features}, labels, density, range(120), 0.2, SolverSettings())
    row = summarise_anchors(table).iloc[0]
    assert row.spearman_rho < -0.3 and row.spearman_p < 0.01


def test_missing_class_and_undefined_tests():
    features, labels, density = _density_world(n_per_class=10)
    with pytest.raises(ValueError, match="not among the labels"):
        anchor_study({("toy", 0): features}, labels, density, [0], 0.2, SolverSettings(), sparse_class="sparse")
    table = anchor_study({("toy", 0): features}, labels, density, [0], 0.2, SolverSettings())
    summary = summarise_anchors(table)
    assert np.isnan(summary.iloc[0].spearman_rho)  # one probe: no correlation
