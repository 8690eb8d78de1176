import numpy as np
import pandas as pd
import pytest

from nanomorph.probe.linear import fit_linear_probe
from nanomorph.probe.splits import stratified_split
from nanomorph.probe.sweep import label_budget_runs
from single_sweep import label_budget_sweep

CLASSES = np.array(["bundle", "dispersed", "network", "singular"])
LABELS = np.repeat(CLASSES, 50)


def _informative(seed=0, dim=32):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 2, (4, dim))
    return (centres[np.repeat(np.arange(4), 50)] + rng.normal(0, 1, (200, dim))).astype(np.float32)


def _random(seed=0, dim=512):
    return np.random.default_rng(seed).normal(size=(200, dim)).astype(np.float32)


def test_columns_and_rows():
    df = label_budget_sweep(_informative(), LABELS, [1, 2, 4], split_seeds=[0, 1], test_fraction=0.2)
    assert list(df.columns) == ["split_seed", "n", "accuracy", "macro_f1", *(f"recall_{c}" for c in CLASSES)]
    assert sorted(zip(df.split_seed, df.n)) == [(s, n) for s in (0, 1) for n in (1, 2, 4)]
    assert df[["accuracy", "macro_f1"]].apply(lambda c: c.between(0, 1)).all().all()


def test_every_run_fits_on_train_subset_only():
    """Index-level proof: for every (seed, n) the fitted rows avoid the test rows and lie in the train part."""
    runs = list(label_budget_runs(LABELS, [1, 2, 8, 40], split_seeds=range(6), test_fraction=0.2))
    assert len(runs) == 6 * 4
    for seed, n, fit_idx, test_idx in runs:
        train_idx, split_test = stratified_split(LABELS, 0.2, seed)
        assert np.array_equal(test_idx, split_test)
        assert np.intersect1d(fit_idx, test_idx).size == 0
        assert set(fit_idx) <= set(train_idx)
        assert len(fit_idx) == 4 * n


def test_rows_outside_the_fitted_subsets_never_reach_training():
    """Behavioural proof: NaN in every row the run should not fit on (other than test rows, which are
    predicted) leaves the results identical; sklearn's fit would raise on any NaN it was given."""
    features = _informative()
    sizes, seed = [1, 2, 4], 5
    (_, _, fit_idx, test_idx), *_ = [r for r in label_budget_runs(LABELS, [4], [seed], 0.2)]
    poisoned = features.copy()
    unused = np.setdiff1d(np.arange(len(LABELS)), np.concatenate([fit_idx, test_idx]))
    poisoned[unused] = np.nan
    clean = label_budget_sweep(features, LABELS, sizes, [seed], 0.2)
    dirty = label_budget_sweep(poisoned, LABELS, sizes, [seed], 0.2)
    pd.testing.assert_frame_equal(clean, dirty)


def test_test_rows_are_not_memorised():
    """Behavioural proof for the test rows: with 512 random features and 200 rows a softmax probe
    memorises whatever it is fitted on, so any leak of test rows into training would give near-perfect
    test accuracy. The sweep must stay near chance (0.25)."""
    features, labels = _random(), np.random.default_rng(1).permutation(LABELS)
    df = label_budget_sweep(features, labels, [40], split_seeds=range(4), test_fraction=0.2)
    assert df.accuracy.mean() < 0.45 and df.accuracy.max() < 0.6
    # The detector works: a probe that did see the test rows scores (near) perfectly on them.
    _, test_idx = stratified_split(labels, 0.2, 0)
    leaky = fit_linear_probe(features, labels)
    assert (leaky.predict(features[test_idx]) == labels[test_idx]).mean() > 0.9


@pytest.mark.parametrize("classifier", ["linear", "knn"])
def test_informative_features_score_high(classifier):
    df = label_budget_sweep(_informative(), LABELS, [1, 8], [0, 1, 2], 0.2, classifier=classifier)
    assert df[df.n == 8].accuracy.median() > 0.9
    assert df[df.n == 1].accuracy.median() > 0.5


def test_unknown_classifier_and_oversized_budget():
    with pytest.raises(ValueError, match="unknown classifier"):
        label_budget_sweep(_informative(), LABELS, [1], [0], 0.2, classifier="svm")
    with pytest.warns(UserWarning, match="skipping size 41"):
        df = label_budget_sweep(_informative(), LABELS, [1, 41], [0], 0.2)
    assert df.n.tolist() == [1]


def test_probe_sweep_tidy_table_with_knn_rows_and_encoder_seeds():
    from nanomorph.probe.sweep import SWEEP_KEYS, probe_sweep

    feature_sets = {("enc", 0): _informative(0), ("enc", 1): _informative(1), ("noise", 0): _random(2, dim=32)}
    result = probe_sweep(feature_sets, LABELS, [1, 4], split_seeds=[0, 1], test_fraction=0.2)
    table = result.table
    assert list(table.columns) == [*SWEEP_KEYS, "accuracy", "macro_f1", *(f"recall_{c}" for c in CLASSES)]
    assert len(table) == 2 * 3 * 2 * 2  # classifiers x feature sets x splits x sizes
    assert set(table.encoder) == {"enc", "noise", "enc+knn", "noise+knn"}
    assert set(table[table.encoder == "enc"].encoder_seed) == {0, 1}
    assert (table[table.encoder.str.endswith("+knn")].classifier == "knn").all()
    # Every method is scored on the same runs.
    runs = table.groupby(["encoder", "encoder_seed"])[["split_seed", "n"]].apply(
        lambda g: sorted(map(tuple, g.to_numpy())))
    assert len({tuple(r) for r in runs}) == 1
    assert table[table.encoder == "enc"].accuracy.median() > table[table.encoder == "noise"].accuracy.median()


def test_pooled_confusion_counts_every_test_prediction():
    from nanomorph.probe.sweep import probe_sweep

    result = probe_sweep({("enc", 0): _informative(3)}, LABELS, [2, 8], split_seeds=range(3), test_fraction=0.2,
                         classifiers=("linear",))
    matrix = result.pooled_confusion("enc", 8, CLASSES, LABELS)
    assert matrix.sum() == 3 * 40 and (matrix.sum(1) == 3 * 10).all()
    at_8 = result.table[result.table.n == 8]
    assert np.trace(matrix) / matrix.sum() == pytest.approx(at_8.accuracy.mean())
    with pytest.raises(ValueError, match="no probes"):
        result.pooled_confusion("enc", 5, CLASSES, LABELS)


@pytest.mark.parametrize("seed", range(6))
def test_scores_equal_scikit_learns_definitions(seed):
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    from nanomorph.probe.sweep import _code_scores

    rng = np.random.default_rng(seed)
    classes = np.array(["bundle", "dispersed", "network", "singular"])
    present = classes[: 2 + seed % 3]  # some classes absent from the truth, the predictions or both
    y_true = rng.choice(present, size=int(rng.integers(1, 40)))
    y_pred = rng.choice(classes[seed % 2:], size=len(y_true))
    row = _code_scores(np.searchsorted(classes, y_true), np.searchsorted(classes, y_pred), classes)
    assert row["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=0)
    assert row["macro_f1"] == pytest.approx(
        f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0), abs=0)
    recalls = recall_score(y_true, y_pred, labels=classes, average=None, zero_division=0)
    assert [row[f"recall_{c}"] for c in classes] == pytest.approx(list(recalls), abs=0)
