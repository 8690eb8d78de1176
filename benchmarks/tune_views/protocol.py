"""The protocol of the round-4 probe studies (probe_scaling.py, pooling.py, hybrid.py), on TUNING data only.

Generator seed 1 (the stacks pretrain_variants.py writes to WORK/stacks.npz; the report shows seed 0), the
probe stage's 80/20 stratified splits under split seeds 1000-1019 (the report uses 0-19), nested label subsets
of n = 1, 2, 4, 8 per class; a variant's score is the median test accuracy per n and the mean of those medians.
"""
from collections.abc import Callable

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from nanomorph.probe.splits import as_rule, nested_label_subsets

SIZES, SEEDS = (1, 2, 4, 8), range(1000, 1020)


def tuning_stacks(work: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels, 64 px task images) of the tuning data set."""
    z = np.load(f"{work}/stacks.npz")
    return z["labels"], z["t64"]


def probe_rule(Z: np.ndarray, labels: np.ndarray, fit: np.ndarray, test: np.ndarray, C: float = 1.0) -> np.ndarray:
    """The stage's probe: StandardScaler on the labelled rows, L2 softmax regression; predicted test labels."""
    scaler = StandardScaler().fit(Z[fit])
    model = LogisticRegression(C=C, max_iter=3000).fit(scaler.transform(Z[fit]), labels[fit])
    return model.predict(scaler.transform(Z[test]))


def median_accuracy(labels: np.ndarray, predict: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
                    seen: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
                    sizes: tuple[int, ...] = SIZES) -> tuple[dict, float]:
    """({n: median test accuracy}, mean over n) of `predict(train, fit, test)` -> predicted labels of `test`;
    `seen(n, test, predicted)` is called with every prediction (e.g. to pool a confusion matrix)."""
    acc = {n: [] for n in sizes}
    for seed in SEEDS:
        train, test = as_rule(0.2).train_test(labels, seed)
        for n, fit in nested_label_subsets(labels, train, list(sizes), seed).items():
            predicted = predict(train, fit, test)
            acc[n].append(float((predicted == labels[test]).mean()))
            if seen is not None:
                seen(n, test, predicted)
    med = {n: round(float(np.median(v)), 4) for n, v in acc.items()}
    return med, round(float(np.mean(list(med.values()))), 4)
