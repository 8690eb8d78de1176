"""Label-budget sweep: probe accuracy vs labels per class, over many seeded train/test splits.

For every split seed the data are split once (stratified); the probe for each budget n is fitted on the
nested n-per-class subset of the TRAIN part only and scored on the whole TEST part. There is no early
stopping or model selection, so the test part is read only by `predict`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score, recall_score

from nanomorph.probe.linear import fit_linear_probe, knn_probe
from nanomorph.probe.splits import nested_label_subsets, stratified_split

CLASSIFIERS = ("linear", "knn")
# Columns that identify a group of runs in `summarise_sweep` when the caller has added them.
GROUP_KEYS = ("encoder", "classifier")


def label_budget_runs(
    labels: np.ndarray, sizes: Sequence[int], split_seeds: Sequence[int], test_fraction: float
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Yield (split_seed, n, fit_idx, test_idx) for every run of the sweep: the sweep's only index source."""
    labels = np.asarray(labels)
    for seed in split_seeds:
        train_idx, test_idx = stratified_split(labels, test_fraction, seed)
        for n, fit_idx in nested_label_subsets(labels, train_idx, sizes, seed).items():
            yield int(seed), n, fit_idx, test_idx


def _fit(classifier: str, X: np.ndarray, y: np.ndarray, C: float, max_iter: int, seed: int):
    if classifier == "linear":
        return fit_linear_probe(X, y, C=C, max_iter=max_iter, seed=seed)
    if classifier == "knn":
        return knn_probe(X, y)
    raise ValueError(f"unknown classifier '{classifier}' (choose from {', '.join(CLASSIFIERS)})")


def _scores(y_true: np.ndarray, y_pred: np.ndarray, classes: np.ndarray) -> dict[str, float]:
    recalls = recall_score(y_true, y_pred, labels=classes, average=None, zero_division=0)
    row = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)),
    }
    row.update({f"recall_{c}": float(r) for c, r in zip(classes, recalls)})
    return row


def label_budget_sweep(
    features: np.ndarray,
    labels: np.ndarray,
    sizes: Sequence[int],
    split_seeds: Sequence[int],
    test_fraction: float,
    C: float = 1.0,
    max_iter: int = 1000,
    classifier: str = "linear",
) -> pd.DataFrame:
    """One row per (split_seed, n): split_seed, n, accuracy, macro_f1, recall_<class> for every class."""
    features = np.asarray(features)
    labels = np.asarray(labels).astype(str)
    if len(features) != len(labels):
        raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
    if classifier not in CLASSIFIERS:
        raise ValueError(f"unknown classifier '{classifier}' (choose from {', '.join(CLASSIFIERS)})")
    classes = np.unique(labels)
    rows = []
    for seed, n, fit_idx, test_idx in label_budget_runs(labels, sizes, split_seeds, test_fraction):
        model = _fit(classifier, features[fit_idx], labels[fit_idx], C, max_iter, seed)
        y_pred = model.predict(features[test_idx])
        rows.append({"split_seed": seed, "n": n, **_scores(labels[test_idx], y_pred, classes)})
    columns = ["split_seed", "n", "accuracy", "macro_f1", *(f"recall_{c}" for c in classes)]
    return pd.DataFrame(rows, columns=columns)


def summarise_sweep(df: pd.DataFrame) -> pd.DataFrame:
    """Median and interquartile range of accuracy (and median macro-F1) per n over split seeds.

    Rows are also grouped by any of `GROUP_KEYS` present, so concatenated sweeps of several encoders
    summarise per encoder.
    """
    keys = [k for k in GROUP_KEYS if k in df.columns] + ["n"]
    grouped = df.groupby(keys, sort=True)
    acc = grouped["accuracy"]
    summary = pd.DataFrame(
        {
            "runs": acc.size(),
            "accuracy_median": acc.median(),
            "accuracy_q1": acc.quantile(0.25),
            "accuracy_q3": acc.quantile(0.75),
            "macro_f1_median": grouped["macro_f1"].median(),
        }
    )
    summary["accuracy_iqr"] = summary["accuracy_q3"] - summary["accuracy_q1"]
    return summary.reset_index()
