"""Probes on frozen features: the paper's linear softmax classifier and a k-NN baseline."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from nanomorph.probe.batched import fit_dual

LINEAR_SOLVERS = ("newton-dual", "lbfgs")


def fit_linear_probe(
    X_train: np.ndarray, y_train: np.ndarray, C: float = 1.0, max_iter: int = 1000, seed: int = 0,
    tol: float = 1e-4, solver: str = "newton-dual",
) -> Pipeline:
    """Fitted StandardScaler -> L2-regularised softmax regression, in float64, as a scikit-learn Pipeline.

    The scaler lives inside the pipeline and is fitted on `X_train` only, so test features are
    transformed with training statistics and never influence the fit. The model is scikit-learn's
    `LogisticRegression(C)`: with three or more classes the multinomial (softmax) cross-entropy, with two the
    binary logistic loss (the same model up to parametrisation). Features are cast to float64 so that float32
    features are not fitted in float32 arithmetic (scikit-learn keeps the input precision), which alone moves
    coefficients by ~1e-4.

    `solver`:
    * ``newton-dual`` (default): the batched probes' exact Newton solver in the dual form
      (`nanomorph.probe.batched.fit_dual`), run on this one problem; the result is put into a
      `LogisticRegression` as its fitted `coef_` / `intercept_`, so it predicts, pickles and serves like a
      scikit-learn fit. `tol` bounds the Euclidean norm of the gradient (objective divided by the rows), which
      is never below scipy's largest-entry norm, so it stops no earlier than lbfgs would at the same `tol`.
      A few hundred rows of ~1000 features take milliseconds, where lbfgs needs seconds and often stops at
      `max_iter` above a tight `tol`.
    * ``lbfgs``: scikit-learn's own fit (scipy's L-BFGS-B, `tol` its gtol), the reference the dual solver is
      tested against.

    A fit that stops above `tol` warns with scikit-learn's ConvergenceWarning in both cases.
    """
    if solver not in LINEAR_SOLVERS:
        raise ValueError(f"unknown linear probe solver '{solver}' (choose from {', '.join(LINEAR_SOLVERS)})")
    X = np.asarray(X_train, dtype=np.float64)
    softmax = LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter, tol=tol, random_state=seed)
    if solver == "lbfgs":
        return Pipeline([("scale", StandardScaler()), ("softmax", softmax)]).fit(X, np.asarray(y_train))
    scaler = StandardScaler().fit(X)
    Z = scaler.transform(X)
    classes, codes = np.unique(np.asarray(y_train), return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"a linear probe needs at least 2 classes in the training labels, got {len(classes)}")
    binary = len(classes) == 2
    # Two classes: the softmax's optimum has w_1 = -w_0, so its penalty (|w_0|^2 + |w_1|^2) / (2 C') is
    # |w_1 - w_0|^2 / (4 C'): C' = C / 2 gives scikit-learn's binary model w = w_1 - w_0 at C.
    A, b, n_iter, converged, grad_norm, _ = fit_dual((Z @ Z.T)[None], codes[None], np.ones((1, len(classes)), bool),
                                                  C / 2 if binary else C, tol=tol, max_iter=max_iter)
    W = Z.T @ A[0]  # (D, K): the representer theorem's weights on standardised features
    if binary:
        softmax.coef_, softmax.intercept_ = (W[:, 1] - W[:, 0])[None], b[0, 1:] - b[0, :1]
    else:
        softmax.coef_, softmax.intercept_ = np.ascontiguousarray(W.T), b[0].copy()
    softmax.classes_, softmax.n_features_in_, softmax.n_iter_ = classes, X.shape[1], n_iter.astype(np.int32)
    if not converged[0]:
        warnings.warn(f"newton-dual stopped at |gradient| {grad_norm[0]:.2e} above tol={tol:g} after {n_iter[0]} "
                      f"Newton steps (max_iter={max_iter})", ConvergenceWarning, stacklevel=2)
    return Pipeline([("scale", scaler), ("softmax", softmax)])


def knn_probe(X_train: np.ndarray, y_train: np.ndarray, k: int = 5) -> KNeighborsClassifier:
    """Fitted cosine k-NN, k capped at the training-set size (1 label per class gives only 4 rows).

    Votes are weighted by inverse distance: with 1 label per class and k = 4 every class gets exactly one
    uniform vote, and the tie would always go to the first class; weighted, the nearest label wins.
    """
    X_train = np.asarray(X_train)
    clf = KNeighborsClassifier(n_neighbors=min(k, len(X_train)), metric="cosine", weights="distance")
    return clf.fit(X_train, np.asarray(y_train))
