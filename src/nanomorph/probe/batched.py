"""Every linear probe of a sweep: scikit-learn's L2 softmax regression, solved exactly in its dual form.

Each probe solves scikit-learn's `LogisticRegression(C)` problem (multinomial, intercept not penalised) on its
own standardised training rows Z (m, D) -- the StandardScaler rule on the probe's training rows only, a
constant column scaled by 1:

    min_{W, b}  sum_i CE(softmax(z_i W + b), y_i) + ||W||^2 / (2 C)

scikit-learn minimises this divided by m; `tol` and the reported gradient norms are in its scaling. A class
without training rows is left out of the softmax (logit -inf), like a scikit-learn fit on the classes present.

Why it is fast:
1. Few-shot probes have far fewer rows than features (a sweep's m <= 320 rows against D = 512-2048). The
   penalty removes every component of W outside the span of the rows, so W = Z^T A with A (m, K) (the
   representer theorem): the logits are G A + b with the Gram matrix G = Z Z^T (m, m) and ||W||^2 =
   tr(A^T G A). The features are read once per probe, for G and the test rows' Z_test Z^T; every iteration
   after that is (m, m) x (m, K) arithmetic on a matrix that stays in cache, whatever D is.
2. Newton's method: ~10-20 steps from zero to |gradient| <= 1e-8, quadratically convergent at the end, where
   L-BFGS (scikit-learn's solver) needs hundreds to thousands of iterations on encoder features.
3. Each Newton step is solved by conjugate gradients (CG) in W-space, every vector held by its coefficients
   on the training rows: one product with G per CG step, the Hessian never formed. Times C, the Hessian is
   I + C J^T S J (J: W -> logits, S: the softmax's per-row covariances), whose eigenvalues are >= 1, so CG
   needs only a few steps far from the optimum, where the steps may be loose, and up to ~50 for the last,
   tight ones (Eisenstat-Walker forcing; ~130 in all for a 320-row probe, `BatchedResult.cg_steps`). CG runs
   in float32, on a float32 copy of G, and a Newton step never needs CG tighter than 1e-3 relative; the Newton
   iteration itself (gradient, objective, line search, the convergence test) stays in float64.
4. The iteration is compiled (`nanomorph.probe.newton_kernels`, numba): per CG step a 320-row probe does
   ~0.4 M multiply-adds and a few passes over (m, K) arrays, which as NumPy calls cost several times their
   arithmetic in per-call overhead and memory traffic. Compiled, one probe's G stays in cache for its whole
   solve; the first call in a fresh environment compiles for ~15 s and caches the machine code beside the
   module (`__pycache__`), later processes load it.

The standardisation is each probe's own (its training rows' mean and scale), so Gram matrices cannot be shared
between the probes of a split; computing them is ~20-25 % of a sweep. There is no early stopping and no model
selection: the test rows are only multiplied by the final weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from nanomorph.probe.newton_kernels import LANES, fit_many

_EPS = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class ProbeTask:
    """One probe: fit on rows `fit_idx` of feature matrix `features`, predict rows `predict_idx`."""

    features: object  # key into the feature-set mapping (e.g. (encoder, encoder_seed))
    fit_idx: np.ndarray
    predict_idx: np.ndarray
    seed: int = 0  # used by stochastic solvers only (the paper's Adam); this solver is deterministic


@dataclass
class BatchedResult:
    """Predicted class codes per task (aligned with the tasks) and the optimiser's per-task diagnostics."""

    predictions: list[np.ndarray]
    n_iter: np.ndarray  # Newton steps
    converged: np.ndarray
    grad_norm: np.ndarray  # Euclidean norm of the gradient in (W, b), scikit-learn's scaling
    cg_steps: np.ndarray  # conjugate-gradient steps (products with G) over all Newton steps
    coef: list[np.ndarray] = field(default_factory=list)       # (D, K) in standardised units, when kept
    intercept: list[np.ndarray] = field(default_factory=list)  # (K,), -inf for absent classes


def standardise(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Standardise the rows Z (m, D) in place, StandardScaler's rule (ddof 0); returns their (mean, scale).

    A column whose variance is within rounding of zero (scikit-learn's `_is_constant_feature` bound) gets
    scale 1, so a feature that is constant on the training rows is centred but not blown up. In place, since
    this pass over the features costs as much as the Gram matrix of a small probe.
    """
    m = len(Z)
    mean = Z.mean(0)
    Z -= mean
    var = np.einsum("ij,ij->j", Z, Z) / m
    bound = m * _EPS * var + (m * mean * _EPS) ** 2
    scale = np.where(var <= bound, 1.0, np.sqrt(var))
    Z /= scale
    return mean, scale


def fit_dual(G: np.ndarray, y: np.ndarray, class_mask: np.ndarray, C: float, tol: float = 1e-8,
             max_iter: int = 1000, max_backtracks: int = 40):
    """Fit P probes from their Gram matrices G (P, m, m) = Z Z^T of standardised training rows, labels y (P, m)
    (codes < K) and the classes present, class_mask (P, K).

    Returns (A, b, n_iter, converged, grad_norm, cg_steps): W = Z^T A (A: (P, m, K)) and intercepts b (P, K) of
    the optimum, Newton steps taken, the Euclidean norm of the gradient in (W, b) (divided by m like
    scikit-learn's objective), which is <= tol for a converged probe, and the conjugate-gradient steps (products
    with G) of all Newton steps together. A probe whose line search finds no decrease is at the limit of
    float64 and stops there. The iteration is `newton_kernels.fit_one`, compiled.
    """
    if C <= 0:
        raise ValueError(f"C must be > 0, got {C}")
    P, m, _ = G.shape
    K = class_mask.shape[1]
    padded = -(-K // LANES) * LANES  # the kernels' class axis, a multiple of LANES; padding is an absent class
    present = np.zeros((P, padded), dtype=bool)
    present[:, :K] = class_mask
    A, b = np.zeros((P, padded, m)), np.zeros((P, padded))
    n_iter, grad_norm, cg_steps = np.zeros(P, dtype=np.int64), np.zeros(P), np.zeros(P, dtype=np.int64)
    fit_many(np.ascontiguousarray(G, dtype=np.float64), np.ascontiguousarray(y, dtype=np.int64), present,
             float(C), float(tol), int(max_iter), int(max_backtracks), m * K + 10, A, b, n_iter, grad_norm, cg_steps)
    return A[:, :K].transpose(0, 2, 1).copy(), b[:, :K].copy(), n_iter, grad_norm <= tol, grad_norm, cg_steps


def _chunks(order: Sequence[int], rows: np.ndarray, width: int, max_elements: int) -> list[list[int]]:
    """Consecutive groups of `order` (sorted by rows) of one training-set size each, whose Gram matrices hold
    at most max_elements values together (2**19: 4 MiB, so that they stay in the CPU's cache) and whose
    standardised rows (kept for the predictions) at most 2**25 (256 MiB; `width`: the widest feature set)."""
    chunks: list[list[int]] = []
    for i in order:
        m, size = int(rows[i]), len(chunks[-1]) + 1 if chunks else 1
        if chunks and rows[chunks[-1][0]] == m and size * m * m <= max_elements and size * m * width <= 2**25:
            chunks[-1].append(i)
        else:
            chunks.append([i])
    return chunks


def solve_probes(feature_sets: Mapping[object, np.ndarray], codes: np.ndarray, n_classes: int,
                 tasks: Sequence[ProbeTask], C: float = 1.0, tol: float = 1e-8, max_iter: int = 1000,
                 keep_coef: bool = False, progress: bool = False, desc: str = "probes",
                 num_threads: int | None = 1, max_elements: int = 2**19) -> BatchedResult:
    """Fit every task's probe and predict its `predict_idx` rows, in chunks of equal training-set size.

    `codes` are integer classes 0..n_classes-1 of all rows (shared by every feature set); feature sets may
    differ in width. A task that stops above `tol` is reported in `converged` and warned about (like
    scikit-learn's ConvergenceWarning). `num_threads` caps the BLAS threads while solving (None leaves them):
    the solver runs thousands of small matrix products, for which a second thread costs more than it gains,
    above all on a busy machine. Results come back in task order.
    """
    if C <= 0:
        raise ValueError(f"C must be > 0, got {C}")
    codes = np.asarray(codes)
    for task in tasks:
        if task.features not in feature_sets:
            raise KeyError(f"no feature set {task.features!r}")
        if len(task.fit_idx) == 0:
            raise ValueError("a probe needs at least one training row")
        if len(feature_sets[task.features]) != len(codes):
            raise ValueError(f"feature set {task.features!r} has {len(feature_sets[task.features])} rows for "
                             f"{len(codes)} class codes")
    rows = np.array([len(t.fit_idx) for t in tasks], dtype=int)
    order = sorted(range(len(tasks)), key=lambda i: rows[i])
    tables = {key: np.asarray(feature_sets[key], dtype=np.float64) for key in {t.features for t in tasks}}
    predictions: list[np.ndarray] = [np.zeros(0, dtype=int)] * len(tasks)
    coefs: list[np.ndarray] = [np.zeros(0)] * len(tasks) if keep_coef else []
    intercepts: list[np.ndarray] = [np.zeros(0)] * len(tasks) if keep_coef else []
    n_iter = np.zeros(len(tasks), dtype=int)
    converged = np.zeros(len(tasks), dtype=bool)
    grad_norm = np.zeros(len(tasks))
    cg_steps = np.zeros(len(tasks), dtype=int)
    limits = threadpool_limits(num_threads, user_api="blas") if num_threads is not None else nullcontext()
    with limits, tqdm(total=len(tasks), desc=desc, disable=not progress, leave=False) as bar:
        width = max(t.shape[1] for t in tables.values()) if tables else 0
        for chunk in _chunks(order, rows, width, max_elements):
            m = int(rows[chunk[0]])
            G = np.empty((len(chunk), m, m))
            standardised = []
            for j, i in enumerate(chunk):
                Z = tables[tasks[i].features][tasks[i].fit_idx]  # a copy: standardised in place
                mean, scale = standardise(Z)
                G[j] = Z @ Z.T  # NumPy's symmetric product (syrk): exactly symmetric, half the work
                standardised.append((Z, mean, scale))
            y = np.stack([codes[tasks[i].fit_idx] for i in chunk]).astype(np.int64)
            class_mask = np.zeros((len(chunk), n_classes), dtype=bool)
            np.put_along_axis(class_mask, y, True, axis=1)
            A, b, its, conv, gnorm, cgs = fit_dual(G, y, class_mask, C, tol, max_iter)
            b = np.where(class_mask, b, -np.inf)
            for j, i in enumerate(chunk):
                Z, mean, scale = standardised[j]
                W = Z.T @ A[j]  # (D, K): the weights on standardised features, scikit-learn's coef_.T
                # ((x - mean) / scale) W + b without standardising the test rows: x (W / scale) + b - mean (W / scale)
                raw = W / scale[:, None]
                predictions[i] = (tables[tasks[i].features][tasks[i].predict_idx] @ raw + (b[j] - mean @ raw)).argmax(1)
                n_iter[i], converged[i], grad_norm[i], cg_steps[i] = its[j], conv[j], gnorm[j], cgs[j]
                if keep_coef:
                    coefs[i], intercepts[i] = W, b[j]
            bar.update(len(chunk))
    if not converged.all():
        warnings.warn(f"{(~converged).sum()} of {len(tasks)} batched probes stopped above |gradient| <= {tol:g} "
                      f"(largest {grad_norm.max():.2e}; out of {max_iter} iterations or at float64 precision)",
                      stacklevel=2)
    return BatchedResult(predictions, n_iter, converged, grad_norm, cg_steps, coefs, intercepts)
