import numpy as np
import pytest

from nanomorph.probe.splits import (nested_label_subsets, nested_stratified_subsets, nested_subsets, random_split,
                                   stratified_split)

CLASSES = np.array(["bundle", "dispersed", "network", "singular"])


def _labels(per_class=(50, 30, 20, 40)):
    return np.repeat(CLASSES, per_class)


def test_split_is_disjoint_complete_and_stratified():
    labels = _labels()
    train, test = stratified_split(labels, 0.2, seed=0)
    assert np.intersect1d(train, test).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(len(labels)))
    for c, total in zip(CLASSES, (50, 30, 20, 40)):
        assert (labels[test] == c).sum() == round(0.2 * total)


def test_split_determinism_and_seed_dependence():
    labels = _labels()
    a = stratified_split(labels, 0.2, seed=3)
    b = stratified_split(labels, 0.2, seed=3)
    c = stratified_split(labels, 0.2, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])


def test_split_rejects_bad_fraction():
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split(_labels(), 1.0, seed=0)


def test_nested_label_subsets_are_nested_per_class_and_inside_train():
    labels = _labels()
    train, test = stratified_split(labels, 0.2, seed=1)
    subsets = nested_label_subsets(labels, train, [1, 2, 4, 8, 16], seed=1)
    assert list(subsets) == [1, 2, 4, 8, 16]
    previous = np.array([], dtype=int)
    for n, idx in subsets.items():
        assert set(idx) <= set(train)
        assert np.intersect1d(idx, test).size == 0
        assert all((labels[idx] == c).sum() == n for c in CLASSES)
        assert set(previous) <= set(idx)
        previous = idx


def test_nested_label_subsets_determinism():
    labels = _labels()
    train, _ = stratified_split(labels, 0.2, seed=0)
    a = nested_label_subsets(labels, train, [4], seed=7)[4]
    b = nested_label_subsets(labels, train, [4], seed=7)[4]
    c = nested_label_subsets(labels, train, [4], seed=8)[4]
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_sizes_beyond_smallest_class_are_skipped_with_warning():
    labels = _labels()  # smallest class: 20 -> 16 in train
    train, _ = stratified_split(labels, 0.2, seed=0)
    with pytest.warns(UserWarning, match="skipping size 17"):
        subsets = nested_label_subsets(labels, train, [1, 16, 17], seed=0)
    assert list(subsets) == [1, 16]


def test_nested_subsets_and_random_split():
    train, test = random_split(20, 0.25, seed=0)
    assert len(test) == 5 and np.intersect1d(train, test).size == 0
    with pytest.warns(UserWarning, match="skipping size 16"):
        subsets = nested_subsets(train, [1, 3, 15, 16], seed=0)
    assert list(subsets) == [1, 3, 15]
    assert set(subsets[1]) <= set(subsets[3]) <= set(subsets[15]) == set(train)
    strata = np.repeat([0, 1], [12, 8])
    _, test = random_split(20, 0.25, seed=0, strata=strata)
    assert sorted(strata[test].tolist()) == [0, 0, 0, 1, 1]


def test_nested_stratified_subsets_spread_over_classes_and_nest():
    strata = np.repeat(["bundle", "dispersed", "network", "singular"], [10, 10, 10, 3])
    train = np.arange(32)  # index 32 (a singular image) held out: never drawn
    subsets = nested_stratified_subsets(train, [1, 4, 8, 12, 32], seed=3, strata=strata)
    assert set(subsets[1]) <= set(subsets[4]) <= set(subsets[8]) <= set(subsets[12]) <= set(subsets[32]) == set(train)
    assert sorted(strata[subsets[4]]) == ["bundle", "dispersed", "network", "singular"]  # one of each
    counts = {c: int((strata[subsets[8]] == c).sum()) for c in np.unique(strata)}
    assert set(counts.values()) == {2}
    # a class that runs out (3 singular, one held out: 2 left) leaves its turns to the others
    assert (strata[subsets[12]] == "singular").sum() == 2 and len(subsets[12]) == 12
    again = nested_stratified_subsets(train, [1, 4, 8, 12, 32], seed=3, strata=strata)
    assert all(np.array_equal(subsets[n], again[n]) for n in subsets)
    other = nested_stratified_subsets(train, [4], seed=4, strata=strata)[4]
    assert not np.array_equal(other, subsets[4])


def test_given_split_from_a_manifest_column():
    from nanomorph.probe.splits import GivenSplit

    given = GivenSplit.from_column(["train", "TEST", "val", "validation", "train", " test "])
    np.testing.assert_array_equal(given.train, [0, 4])
    np.testing.assert_array_equal(given.validation, [2, 3])
    np.testing.assert_array_equal(given.test, [1, 5])
    assert GivenSplit.from_column([None, float("nan"), ""]) is None


@pytest.mark.parametrize("column, message", [
    (["train", None, "test"], "no split"),
    (["train", "holdout", "test"], "unknown split names"),
    (["train", "train"], "0 test"),
])
def test_given_split_refuses_partial_or_unknown_columns(column, message):
    from nanomorph.probe.splits import GivenSplit

    with pytest.raises(ValueError, match=message):
        GivenSplit.from_column(column, "lab.csv")


def test_sweep_and_advisor_never_resplit_a_given_test_part():
    from nanomorph.probe.advisor import evaluate_advisor
    from nanomorph.probe.solvers import SolverSettings
    from nanomorph.probe.splits import GivenSplit, SplitRule
    from nanomorph.probe.sweep import label_budget_runs

    labels = np.repeat(np.array(["a", "b"]), 10)
    column = ["test" if i % 5 == 0 else "train" for i in range(20)]
    rule = SplitRule(0.2, GivenSplit.from_column(column))
    test = np.flatnonzero(np.array(column) == "test")
    runs = list(label_budget_runs(labels, [1, 2], range(4), rule))
    assert len(runs) == 8
    fits = set()
    for _seed, n, fit_idx, test_idx in runs:
        np.testing.assert_array_equal(test_idx, test)
        assert not set(fit_idx) & set(test) and len(fit_idx) == 2 * n
        fits.add(tuple(fit_idx))
    assert len(fits) > 2                          # seeds still vary the labelled training subsets
    features = np.random.default_rng(0).normal(size=(20, 3))
    table = evaluate_advisor({("f", 0): features}, labels, [2], [0, 1], rule, SolverSettings(), random_draws=2)
    assert len(table) == 2 * 3


def test_segmentation_split_honours_the_given_parts():
    from nanomorph.probe.splits import GivenSplit, SplitRule
    from nanomorph.segment.sweep import split_train_validation_test

    given = GivenSplit.from_column(["train"] * 6 + ["val"] * 2 + ["test"] * 2)
    rule = SplitRule(0.2, given)
    for seed in (0, 1):
        train, val, test = split_train_validation_test(10, rule, 0.125, seed, None)
        np.testing.assert_array_equal(train, range(6))
        np.testing.assert_array_equal(val, [6, 7])
        np.testing.assert_array_equal(test, [8, 9])
    no_val = SplitRule(0.2, GivenSplit.from_column(["train"] * 8 + ["test"] * 2))
    train, val, test = split_train_validation_test(10, no_val, 0.25, 0, None)
    np.testing.assert_array_equal(test, [8, 9])
    assert len(val) == 2 and not set(val) & set(train) and set(train) | set(val) == set(range(8))
