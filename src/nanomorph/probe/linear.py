"""Probes on frozen features: the paper's linear softmax classifier and a k-NN baseline."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler


def fit_linear_probe(
    X_train: np.ndarray, y_train: np.ndarray, C: float = 1.0, max_iter: int = 1000, seed: int = 0,
    tol: float = 1e-4,
) -> Pipeline:
    """Fitted StandardScaler -> L2-regularised softmax regression (lbfgs), in float64.

    The scaler lives inside the pipeline and is fitted on `X_train` only, so test features are
    transformed with training statistics and never influence the fit. With lbfgs and three or more
    classes scikit-learn minimises the multinomial (softmax) cross-entropy; with two classes the binary
    logistic loss, which is the same model up to parametrisation. `tol` is scipy's gtol: the fit stops
    when the largest entry of the objective's gradient is below it (scikit-learn's default 1e-4). Features
    are cast to float64 so that float32 features are not fitted in float32 arithmetic (scikit-learn keeps
    the input precision), which alone moves coefficients by ~1e-4.
    """
    probe = Pipeline(
        [
            ("scale", StandardScaler()),
            ("softmax", LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter, tol=tol, random_state=seed)),
        ]
    )
    return probe.fit(np.asarray(X_train, dtype=np.float64), np.asarray(y_train))


def knn_probe(X_train: np.ndarray, y_train: np.ndarray, k: int = 5) -> KNeighborsClassifier:
    """Fitted cosine k-NN, k capped at the training-set size (1 label per class gives only 4 rows).

    Votes are weighted by inverse distance: with 1 label per class and k = 4 every class gets exactly one
    uniform vote, and the tie would always go to the first class; weighted, the nearest label wins.
    """
    X_train = np.asarray(X_train)
    clf = KNeighborsClassifier(n_neighbors=min(k, len(X_train)), metric="cosine", weights="distance")
    return clf.fit(X_train, np.asarray(y_train))
