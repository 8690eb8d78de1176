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
   needs only a few steps far from the optimum, where the steps may be loose, and up to ~150 for the last,
   tight ones (Eisenstat-Walker forcing). CG runs in float32, on a float32 copy of G: a large probe's cost is
   reading G once per CG step, and a Newton step never needs CG tighter than 1e-3 relative; the Newton
   iteration itself (gradient, objective, line search, the convergence test) stays in float64.
4. Probes of one training-set size run together in lock-step, so NumPy's per-call overhead (most of the cost
   at small m) is paid once per chunk rather than once per probe.

The standardisation is each probe's own (its training rows' mean and scale), so Gram matrices cannot be shared
between the probes of a split; computing them is ~20 % of a sweep. There is no early stopping and no model
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

_EPS = float(np.finfo(np.float64).eps)
# Probabilities below e^-345 (~1e-150) are set to 0: they change the gradient by < 1e-150, but their products
# would reach subnormal floats, which the CPU handles ~100x slower.
_LOGP_FLOOR = -345.0
# The last Newton step's CG stops at a gradient residual of ETA_TOL * tol: ~10 % fewer CG steps than
# Eisenstat-Walker's sqrt(|gradient|) alone, with the same Newton steps.
ETA_TOL = 0.1
# The tightest relative residual asked of the float32 CG: below ~1e-4 its recurrences would drift from the
# true residual. With the default tol 1e-8, Eisenstat-Walker never asks for less than 1e-3.
CG_FLOOR = 1e-4


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


# Sums over the short axes of (probes, rows, classes) arrays as matrix products: ~10x faster than NumPy's
# reductions along a non-contiguous or 4-long axis, which dominate the cost of small probes otherwise.
def _class_sum(x: np.ndarray) -> np.ndarray:
    """(Q, m, K) -> (Q, m)."""
    return x @ np.ones(x.shape[-1], dtype=x.dtype)


def _row_sum(x: np.ndarray) -> np.ndarray:
    """(Q, m, K) -> (Q, K)."""
    return np.ones(x.shape[1], dtype=x.dtype) @ x


def _dot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-probe inner products: (Q, m, K), (Q, m, K) -> (Q,)."""
    q = len(x)
    return (x.reshape(q, 1, -1) @ y.reshape(q, -1, 1))[:, 0, 0]


class _Probes:
    """Q probes of m rows in the dual: Gram matrices G (Q, m, m), one-hot Y (Q, m, K), class bias (0 or -inf)."""

    def __init__(self, G, Y, bias, C):
        self.G, self.Y, self.bias, self.C = G, Y, bias, C
        self.G32 = G.astype(np.float32)  # the inner CG's copy (newton_step)
        self.n_present = np.isfinite(bias).sum((1, 2))

    def objective(self, A, GA, b):
        """(sum-scaled objective, probabilities) at coefficients A whose logits without intercept are GA."""
        f = GA + b[:, None, :] + self.bias
        top = f.max(2, keepdims=True)
        logp = f - top - np.log(_class_sum(np.exp(f - top)))[..., None]
        loss = -np.where(self.Y > 0, logp, 0.0).sum((1, 2))
        p = np.where(logp < _LOGP_FLOOR, 0.0, np.exp(logp))
        return loss + (A * GA).sum((1, 2)) / (2 * self.C), p

    def newton_step(self, p, V, GV, gb, eta, max_cg):
        """(dA, db): CG on the Newton system H (dA, db) = -(gradient) to relative residual `eta`.

        Vectors of W-space are held by coefficients a (W = Z^T a) beside their Gram image G a, so the W-space
        inner product <a, a'> = tr(a^T G a') costs no product with G. The gradient is (V, gb): W-part Z^T V,
        V = R + A / C, R = p - Y the residuals, and gb = sum_i R_i. H (a, c) = (Wu + a / C, sum_i (Wu)_i),
        u = G a + c the change of logits, (Wu)_i = diag(p_i) u_i - p_i p_i^T u_i. Preconditioner: C on the
        W-part (where C H has eigenvalues >= 1), 1 / (mean curvature) on the intercepts
        (a scalar, which keeps the steps of b summing to 0: softmax is invariant to a common shift of b).

        CG runs in float32 (half the bytes of G to read per step, the cost that bounds a large probe): the step
        only has to solve to `eta` >= CG_FLOOR, far above float32's 1e-7, and a step that comes out less exact
        costs at most another Newton step, since fit_dual computes gradients, objective and convergence in float64.
        """
        C = self.C
        b_scale = (1.0 / np.maximum((p * (1 - p)).sum((1, 2)) / self.n_present, 1e-12)).astype(np.float32)
        p, V, GV, gb = (x.astype(np.float32) for x in (p, V, GV, gb))
        eta = np.maximum(eta, CG_FLOOR)
        ra, rb, Gr = -V, -gb, -GV
        da, db, Gd = C * ra, b_scale[:, None] * rb, C * Gr
        rz = C * _dot(ra, Gr) + b_scale * (rb * rb).sum(1)
        target = eta**2 * rz
        xa, xb = np.zeros_like(V), np.zeros_like(gb)
        solving = rz > target
        for _ in range(max_cg):
            if not solving.any():
                break
            u = Gd + db[:, None, :]
            pu = p * u
            Wu = pu - p * _class_sum(pu)[..., None]
            qa, qb = Wu + da / C, _row_sum(Wu)
            curvature = _dot(Gd, qa) + (db * qb).sum(1)
            # 0 for the probes already solved (their directions may be 0)
            alpha = np.divide(rz, curvature, out=np.zeros_like(rz), where=solving)
            xa += alpha[:, None, None] * da
            xb += alpha[:, None] * db
            ra -= alpha[:, None, None] * qa
            rb -= alpha[:, None] * qb
            Gr = self.G32 @ ra
            rz_new = C * _dot(ra, Gr) + b_scale * (rb * rb).sum(1)
            solving &= rz_new > target
            beta = np.divide(rz_new, rz, out=np.zeros_like(rz), where=solving)
            da = C * ra + beta[:, None, None] * da
            Gd = C * Gr + beta[:, None, None] * Gd
            db = b_scale[:, None] * rb + beta[:, None] * db
            rz = rz_new
        return xa.astype(np.float64), xb.astype(np.float64)


def fit_dual(G: np.ndarray, y: np.ndarray, class_mask: np.ndarray, C: float, tol: float = 1e-8,
             max_iter: int = 1000, max_backtracks: int = 40):
    """Fit P probes from their Gram matrices G (P, m, m) = Z Z^T of standardised training rows, labels y (P, m)
    (codes < K) and the classes present, class_mask (P, K).

    Returns (A, b, n_iter, converged, grad_norm): W = Z^T A (A: (P, m, K)) and intercepts b (P, K) of the
    optimum, Newton steps taken, and the Euclidean norm of the gradient in (W, b) (divided by m like
    scikit-learn's objective), which is <= tol for a converged probe. A probe whose line search finds no
    decrease is at the limit of float64 and stops there.
    """
    if C <= 0:
        raise ValueError(f"C must be > 0, got {C}")
    P, m, _ = G.shape
    K = class_mask.shape[1]
    Y = (y[..., None] == np.arange(K)).astype(np.float64)
    bias = np.where(class_mask, 0.0, -np.inf)[:, None, :]
    A, b = np.zeros((P, m, K)), np.zeros((P, K))
    n_iter = np.zeros(P, dtype=int)
    grad_norm = np.full(P, np.inf)
    active = np.ones(P, dtype=bool)
    idx, probes = None, None
    for it in range(max_iter + 1):
        now = np.flatnonzero(active)
        if len(now) == 0:
            break
        if idx is None or len(now) != len(idx):  # copy the Gram matrices only when a probe has stopped
            idx = now
            probes = _Probes(G[idx], Y[idx], bias[idx], C)
        Ai, bi = A[idx], b[idx]
        GA = probes.G @ Ai  # logits from A afresh: no rounding carried over from earlier steps
        S, p = probes.objective(Ai, GA, bi)
        R = p - probes.Y
        V, gb = R + Ai / C, _row_sum(R)
        GV = probes.G @ V
        gnorm = np.sqrt(np.maximum((V * GV).sum((1, 2)), 0) + (gb * gb).sum(1)) / m
        grad_norm[idx] = gnorm
        if it == max_iter:  # every active probe has taken `it` steps
            break
        stop = gnorm <= tol
        # CG's relative residual: Eisenstat-Walker's forcing term, loose far from the optimum and tight near
        # it, but no tighter than needed to end below tol (a residual of ETA_TOL * tol); 1 (no step) if stopped.
        eta = np.minimum(0.5, np.maximum(np.sqrt(gnorm), ETA_TOL * tol / np.maximum(gnorm, tol)))
        eta[stop] = 1.0
        dA, db = probes.newton_step(p, V, GV, gb, eta, max_cg=m * K + 10)
        GdA = probes.G @ dA
        slope = (V * GdA).sum((1, 2)) + (gb * db).sum(1)
        t = np.where(stop | ~(slope < 0), 0.0, 1.0)  # no step: stopped, or no descent at float64's limit
        accepted = np.zeros(len(idx), dtype=bool)
        for _ in range(max_backtracks):
            pending = (t > 0) & ~accepted
            if not pending.any():
                break
            S_try, _ = probes.objective(Ai + t[:, None, None] * dA, GA + t[:, None, None] * GdA,
                                        bi + t[:, None] * db)
            # Armijo, with room for rounding once f is flat to float64 near the optimum
            ok = pending & (S_try <= S + 1e-4 * t * slope + 8 * _EPS * np.abs(S))
            accepted |= ok
            t = np.where(pending & ~ok, t / 2, t)
        t = np.where(accepted, t, 0.0)
        A[idx] = Ai + t[:, None, None] * dA
        b[idx] = bi + t[:, None] * db
        n_iter[idx] += accepted
        active[idx] = accepted
    return A, b, n_iter, grad_norm <= tol, grad_norm


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
            A, b, its, conv, gnorm = fit_dual(G, y, class_mask, C, tol, max_iter)
            b = np.where(class_mask, b, -np.inf)
            for j, i in enumerate(chunk):
                Z, mean, scale = standardised[j]
                W = Z.T @ A[j]  # (D, K): the weights on standardised features, scikit-learn's coef_.T
                # ((x - mean) / scale) W + b without standardising the test rows: x (W / scale) + b - mean (W / scale)
                raw = W / scale[:, None]
                predictions[i] = (tables[tasks[i].features][tasks[i].predict_idx] @ raw + (b[j] - mean @ raw)).argmax(1)
                n_iter[i], converged[i], grad_norm[i] = its[j], conv[j], gnorm[j]
                if keep_coef:
                    coefs[i], intercepts[i] = W, b[j]
            bar.update(len(chunk))
    if not converged.all():
        warnings.warn(f"{(~converged).sum()} of {len(tasks)} batched probes stopped above |gradient| <= {tol:g} "
                      f"(largest {grad_norm.max():.2e}; out of {max_iter} iterations or at float64 precision)",
                      stacklevel=2)
    return BatchedResult(predictions, n_iter, converged, grad_norm, coefs, intercepts)
