"""Every linear probe of a sweep trained at once: batched multinomial softmax + L2, exact, in float64.

Each probe p solves exactly scikit-learn's `LogisticRegression(C)` problem (lbfgs, multinomial) on its own
standardised training rows:

    min_{W, b}  mean_i CE(softmax(z_i W + b), y_i)  +  ||W||^2 / (2 C m_p)      (b is not penalised)

with z_i = (x_i - mean_p) / scale_p, mean_p and scale_p computed on probe p's training rows only (the
StandardScaler rule, constant columns get scale 1). Probes are stacked into padded (P, m, D) tensors; a row
mask drops the padding and a class mask drops the classes a probe has no training row of (their logits are
-inf, as if the class did not exist, like a scikit-learn fit on the classes present).

Why it is fast: (1) P probes cost one batched tensor operation per iteration instead of P Python-level
fits; (2) the problem is rotated onto the SVD of the probe's standardised rows, Z = U S V^T, W = V A,
Z W = (U S) A and ||W|| = ||A||: when a probe has fewer rows than feature dimensions (every few-shot probe),
W lies in the span of its rows (the penalty kills any other component) and the problem is solved exactly in
that r <= m dimensional span, so one-shot probes become 4-dimensional problems; (3) small problems are
solved by Newton's method (exact Hessian, ~10 iterations), large ones by Newton-CG (Hessian-vector products
only, conjugate gradients preconditioned by the exact Hessian on the largest singular directions), which
needs ~10 Newton steps where L-BFGS needs hundreds to thousands of iterations on encoder features
(`choose_method`); (4) the logits are carried along, so a line-search trial costs no product with the
features, and problems are never copied out of the batch (a copy of a (P, m, r) block costs more than a
product with it).

The optimisers run all probes of a batch in lock-step with a per-probe Armijo backtracking line search; a
probe stops when the Euclidean norm of its gradient with respect to (W, b) is at most `tol` (which implies
scikit-learn's own test, max |gradient entry| <= tol). The objective is strictly convex, so every accepted
L-BFGS step has s.y > 0 and no Wolfe curvature search is needed. There is no early stopping and no model
selection: the test rows are only ever multiplied by the final weights.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

DTYPE = torch.float64
_EPS = float(np.finfo(np.float64).eps)
# Probabilities below e^-345 (~1e-150) are set to 0 and Hessian weights below 1e-100 too. They change the
# gradient by < 1e-150 and the Newton matrix negligibly, but left alone their products reach subnormal
# floats, which the CPU handles ~100x slower (a batched Cholesky went from microseconds to 0.6 s).
_LOGP_FLOOR = -345.0
_WEIGHT_FLOOR = 1e-100


def _take(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t[idx] for a sorted, duplicate-free idx; t itself when idx is every problem. Indexing copies, and the
    (P, m, r) features copied once per objective evaluation cost more than the matrix products on them."""
    return t if len(idx) == t.shape[0] else t[idx]


def _product(T: torch.Tensor, idx: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """T[idx] @ other for per-problem matrices T (P, a, b) and other (len(idx), b, c), never copying T[idx]:
    one batched product when idx is every problem, else one product per problem (as fast per problem as the
    batched one, both stream T from memory, and without the copy that indexing T would make)."""
    if len(idx) == T.shape[0]:
        return T @ other
    if len(idx) == 0:
        return other.new_zeros(0, T.shape[1], other.shape[2])
    return torch.stack([T[i] @ other[j] for j, i in enumerate(idx.tolist())])


def _probabilities(logp: torch.Tensor) -> torch.Tensor:
    return torch.where(logp < _LOGP_FLOOR, torch.zeros_like(logp), logp.exp())


@dataclass(frozen=True)
class ProbeTask:
    """One probe: fit on rows `fit_idx` of feature matrix `features`, predict rows `predict_idx`."""

    features: object  # key into the feature-set mapping (e.g. (encoder, encoder_seed))
    fit_idx: np.ndarray
    predict_idx: np.ndarray
    seed: int = 0  # used by stochastic solvers only (the paper's Adam); the batched solver is deterministic


@dataclass
class BatchedResult:
    """Predicted class codes per task (aligned with the tasks) and the optimiser's per-task diagnostics."""

    predictions: list[np.ndarray]
    n_iter: np.ndarray
    converged: np.ndarray
    grad_norm: np.ndarray
    coef: list[np.ndarray] = field(default_factory=list)       # (D, K) in standardised units, when kept
    intercept: list[np.ndarray] = field(default_factory=list)  # (K,)


def standardise(X: torch.Tensor, row_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-problem (mean, scale) of the masked rows of X (P, m, D): StandardScaler's rule, ddof 0.

    A column whose variance is within rounding of zero (scikit-learn's `_is_constant_feature` bound) gets
    scale 1, so a feature that is constant on the training rows is centred but not blown up.
    """
    w = row_mask.to(X.dtype)[..., None]
    count = w.sum(1, keepdim=True)
    mean = (X * w).sum(1, keepdim=True) / count
    var = (((X - mean) ** 2) * w).sum(1, keepdim=True) / count
    bound = count * _EPS * var + (count * mean * _EPS) ** 2
    scale = torch.where(var <= bound, torch.ones_like(var), var.sqrt())
    return mean, scale


def _rotate(Z: torch.Tensor, row_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(F, V): Z = F V^T on the masked rows, V orthonormal, F's columns orthogonal (F = U S).

    This is Z's SVD (F = U S) obtained from the eigendecomposition of the smaller of the (m, m) Gram and the
    (D, D) scatter matrix. When m < D the D - m directions outside the rows' span are left out altogether;
    directions with a numerically zero singular value are zeroed (F and V columns 0, s = 0).
    """
    Zm = Z * row_mask.to(Z.dtype)[..., None]
    m, D = Z.shape[1], Z.shape[2]
    if m < D:
        evals, U = torch.linalg.eigh(Zm @ Zm.transpose(1, 2))
    else:
        evals, V = torch.linalg.eigh(Zm.transpose(1, 2) @ Zm)
    # Eigenvalues are accurate to ~eps * largest; below a margin over that they are rounding noise.
    keep = evals > evals.amax(1, keepdim=True) * max(m, D) * _EPS * 10
    sing = torch.where(keep, evals.clamp_min(0).sqrt(), torch.zeros_like(evals))
    if m < D:
        V = (Zm.transpose(1, 2) @ U) / torch.where(keep, sing, torch.ones_like(sing))[:, None, :]
    V = V * keep.to(Z.dtype)[:, None, :]
    return Zm @ V, V


class _Problems:
    """P stacked softmax + L2 problems on rotated features F (P, m, r); parameters x (P, K, r + 1) hold, per
    class, the weights on F's columns and, last, the intercept. Every method takes `idx`, the problems to
    compute (a line search only re-evaluates the problems that have not yet accepted a step).

    The logits z = F_aug x^T are linear in x, so the optimisers carry them along: a line search computes
    F_aug step^T once and every trial length t costs no product with F (z + t dz). Products with F are the
    whole cost of an iteration at large m (they stream P m r float64 values from memory)."""

    def __init__(self, F, y, row_mask, class_mask, lam):
        P, m, r = F.shape
        self.K, self.r = class_mask.shape[1], r
        rows = row_mask.to(F.dtype)
        self.row_w = rows / rows.sum(1, keepdim=True)  # mean over each problem's own training rows
        self.onehot = torch.nn.functional.one_hot(y, self.K).to(F.dtype) * rows[..., None]
        self.class_bias = torch.where(class_mask, 0.0, -math.inf).to(F.dtype)
        self.y = y
        self.Faug = torch.cat([F, rows[..., None]], dim=2)  # the last column carries the intercept
        self.FaugT = self.Faug.transpose(1, 2).contiguous()  # the gradient's product reads it row by row
        self.penalty = torch.cat([lam[:, None].expand(P, r), torch.zeros(P, 1, dtype=F.dtype)], 1)[:, None, :]

    def logits(self, x, idx):
        """z = F_aug x^T (len(idx), m, K) of problems idx, without the absent classes' -inf."""
        return _product(self.Faug, idx, x.transpose(1, 2))

    def value(self, x, z, idx):
        """(f, log-probabilities) of problems idx at their parameters x, whose logits are z."""
        z = z + _take(self.class_bias, idx)[:, None, :]
        logp = z - torch.logsumexp(z, dim=2, keepdim=True)
        fit = -(_take(self.row_w, idx) * logp.gather(2, _take(self.y, idx)[..., None])[..., 0]).sum(1)
        return fit + 0.5 * (_take(self.penalty, idx) * x * x).sum((1, 2)), logp

    def gradient(self, x, logp, idx):
        R = (_probabilities(logp) - _take(self.onehot, idx)) * _take(self.row_w, idx)[..., None]
        return _product(self.FaugT, idx, R).transpose(1, 2) + _take(self.penalty, idx) * x

    def hessian(self, logp, idx, cols=None):
        """Exact Hessian (len(idx), K c, K c) in the layout of x, on the parameter columns `cols` (c of the
        r + 1 per class; all of them when None)."""
        Faug, row_w = _take(self.Faug, idx), _take(self.row_w, idx)
        penalty = _take(self.penalty, idx)
        if cols is not None:
            Faug, penalty = Faug[:, :, cols], penalty[:, :, cols]
        prob = _probabilities(logp)
        Q, n = len(idx), Faug.shape[2]
        H = torch.empty(Q, self.K, n, self.K, n, dtype=Faug.dtype)
        for k in range(self.K):
            for l in range(k, self.K):
                w = row_w * prob[..., k] * ((1.0 if k == l else 0.0) - prob[..., l])
                w = torch.where(w.abs() < _WEIGHT_FLOOR, torch.zeros_like(w), w)
                block = Faug.transpose(1, 2) @ (w[..., None] * Faug)
                H[:, k, :, l, :] = block
                if l != k:
                    H[:, l, :, k, :] = block
        H = H.reshape(Q, self.K * n, self.K * n)
        H.diagonal(dim1=1, dim2=2).add_(penalty.expand(Q, self.K, n).reshape(Q, -1))
        return H


@dataclass
class _State:
    """Per-problem parameters x, logits z = F_aug x^T, objective f, log-probabilities and gradient g."""

    x: torch.Tensor
    z: torch.Tensor
    f: torch.Tensor
    logp: torch.Tensor
    g: torch.Tensor

    @classmethod
    def exact(cls, problems, x, idx) -> "_State":
        """The state at x, logits computed afresh from x (no accumulated rounding)."""
        z = problems.logits(x, idx)
        f, logp = problems.value(x, z, idx)
        return cls(x, z, f, logp, problems.gradient(x, logp, idx))

    def rows(self, sel) -> "_State":
        return _State(self.x[sel], self.z[sel], self.f[sel], self.logp[sel], self.g[sel])

    def put(self, sel, other: "_State") -> None:
        self.x[sel], self.z[sel], self.f[sel], self.logp[sel], self.g[sel] = (
            other.x, other.z, other.f, other.logp, other.g)


def _line_search(problems, state: _State, step, slope, idx, t0, max_backtracks):
    """Per-problem backtracking from step length t0 (Q,) along `step` for problems idx (state: theirs).

    Accepts the Armijo condition, or -- once f is flat to rounding near the optimum, where |f - f*| is
    below eps |f| long before the gradient is below a tight tol -- a step that keeps f within rounding
    and shrinks the gradient. The gradient is computed only at trial points that can be accepted. Returns
    (new state of the problems idx, accepted); a problem that accepted no step keeps its state.
    """
    new = state.rows(slice(None))
    new = _State(new.x.clone(), new.z.clone(), new.f.clone(), new.logp.clone(), new.g.clone())
    dz = problems.logits(step, idx)
    accepted = torch.zeros(len(idx), dtype=torch.bool)
    pending = torch.arange(len(idx))
    t = t0.clone()
    g_norm = state.g.flatten(1).norm(dim=1)
    for _ in range(max_backtracks):
        tp = t[pending, None, None]
        x_try = _take(state.x, pending) + tp * _take(step, pending)
        z_try = _take(state.z, pending) + tp * _take(dz, pending)
        f_try, logp_try = problems.value(x_try, z_try, idx[pending])
        f_now = state.f[pending]
        armijo = f_try <= f_now + 1e-4 * t[pending] * slope[pending]
        within_rounding = ~armijo & (f_try <= f_now + 4 * _EPS * f_now.abs())
        candidate = torch.nonzero(armijo | within_rounding).squeeze(1)
        g_try = torch.zeros_like(x_try)
        if len(candidate):
            g_try[candidate] = problems.gradient(_take(x_try, candidate), _take(logp_try, candidate),
                                                 idx[pending][candidate])
        ok = armijo | (within_rounding & (g_try.flatten(1).norm(dim=1) < g_norm[pending]))
        done = pending[ok]
        new.put(done, _State(x_try[ok], z_try[ok], f_try[ok], logp_try[ok], g_try[ok]))
        accepted[done] = True
        pending = pending[~ok]
        if len(pending) == 0:
            break
        t[pending] *= 0.5
    return new, accepted


def _confirm(problems, state: _State, idx, grad_norm, tol) -> torch.Tensor:
    """Which of problems idx (state: theirs) are below tol with the gradient recomputed from exact logits.

    The carried logits z + t dz collect rounding of ~eps |z| per iteration; a problem about to stop gets
    its state recomputed from x, and stops only if that exact gradient is below tol too."""
    below = torch.nonzero(grad_norm(state.g, idx) <= tol).squeeze(1)
    done = torch.zeros(len(idx), dtype=torch.bool)
    if len(below):
        exact = _State.exact(problems, state.x[below], idx[below])
        state.put(below, exact)
        done[below] = grad_norm(exact.g, idx[below]) <= tol
    return done


def _intercept_damping(problems: _Problems) -> torch.Tensor:
    """(P, K, r + 1) diagonal added to the Newton matrix, on the intercepts only: softmax is invariant to one
    constant added to every intercept, and a class without training rows has no curvature at all. It
    changes the step, never the objective or its optimum."""
    P, K, n = problems.class_bias.shape[0], problems.K, problems.r + 1
    damping = torch.zeros(P, K, n, dtype=problems.Faug.dtype)
    damping[:, :, -1] = 1e-10 + (problems.class_bias == -math.inf).to(damping.dtype)
    return damping


class _HeadPreconditioner:
    """M ~ Hessian for problems idx at their log-probabilities: exact on the `head` largest singular
    directions of every class and the intercepts, diagonal (the Hessian's own diagonal) on the others.

    Why: the rotated columns are orthogonal, but the softmax weights p(1 - p) of the rows are not uniform once
    the rows are fitted, so the data term F^T diag(w) F couples the directions with large singular values.
    On SimCLR features of the default data (80 labels per class) the condition number of the Hessian is
    ~8.5e4 after diagonal scaling (L-BFGS needs ~2000 iterations), ~20 after this with head 32, ~9 with 64."""

    def __init__(self, problems: _Problems, logp, idx, damping, head: int):
        r, K = problems.r, problems.K
        # _rotate orders F's columns by increasing singular value: the head is the last `head` plus the intercept.
        self.cols = torch.arange(max(r - head, 0), r + 1)
        self.tail = torch.arange(0, max(r - head, 0))
        Q, h = len(idx), len(self.cols)
        H = problems.hessian(logp, idx, self.cols)
        H.diagonal(dim1=1, dim2=2).add_(_take(damping, idx)[:, :, self.cols].reshape(Q, -1))
        self.chol, info = torch.linalg.cholesky_ex(H)
        if bool((info != 0).any()):
            raise FloatingPointError("batched Newton-CG: a Hessian block is not positive definite")
        Ft = _take(problems.Faug, idx)[:, :, self.tail]
        prob = _probabilities(logp)
        w_kk = _take(problems.row_w, idx)[..., None] * prob * (1 - prob)  # (Q, m, K): the Hessian's diagonal
        diag_add = _take(problems.penalty, idx) + _take(damping, idx)
        self.tail_diag = (w_kk.transpose(1, 2) @ (Ft * Ft)) + diag_add[:, :, self.tail]  # (Q, K, tail)
        self.K, self.h = K, h

    def solve(self, v: torch.Tensor) -> torch.Tensor:
        """M^-1 v for v (Q, K, r + 1)."""
        out = torch.empty_like(v)
        head = v[:, :, self.cols].reshape(len(v), -1, 1)
        out[:, :, self.cols] = torch.cholesky_solve(head, self.chol).reshape(len(v), self.K, self.h)
        out[:, :, self.tail] = v[:, :, self.tail] / self.tail_diag
        return out


def _cholesky_direction(problems: _Problems, now: _State, idx, damping, tol):
    """Exact Newton direction -H^-1 g (H the exact Hessian plus the intercept damping)."""
    H = problems.hessian(now.logp, idx)
    H.diagonal(dim1=1, dim2=2).add_(_take(damping, idx).reshape(len(idx), -1))
    chol, info = torch.linalg.cholesky_ex(H)
    if bool((info != 0).any()):
        raise FloatingPointError("batched Newton: a Hessian is not positive definite (non-finite features?)")
    return -torch.cholesky_solve(now.g.reshape(len(idx), -1, 1), chol).reshape(now.g.shape)


CG_HEAD = 32  # singular directions per class the Newton-CG preconditioner treats exactly


def _cg_direction(problems: _Problems, now: _State, idx, damping, tol, head: int = CG_HEAD, max_cg: int = 250):
    """Inexact Newton direction: H s = -g solved by conjugate gradients preconditioned with
    `_HeadPreconditioner`, to a relative residual eta = min(0.5, sqrt(|g|)) (Eisenstat and Walker's forcing
    term: loose far from the optimum, tight near it, so the final steps converge quadratically). A
    Hessian-vector product costs two products with F, like one L-BFGS iteration; H is never formed."""
    prob, row_w = _probabilities(now.logp), _take(problems.row_w, idx)[..., None]
    diag_add = _take(problems.penalty, idx) + _take(damping, idx)

    def hvp(v):
        u = problems.logits(v, idx)
        Au = (prob * u - prob * (prob * u).sum(2, keepdim=True)) * row_w
        return _product(problems.FaugT, idx, Au).transpose(1, 2) + diag_add * v

    def norm(v):
        return v.flatten(1).norm(dim=1)

    M = _HeadPreconditioner(problems, now.logp, idx, damping, head)
    g_norm = norm(now.g)
    target = torch.minimum(torch.full_like(g_norm, 0.5), g_norm.sqrt()) * g_norm
    step = torch.zeros_like(now.g)
    resid = -now.g
    z = M.solve(resid)
    direction = z.clone()
    rz = (resid * z).sum((1, 2))
    solving = norm(resid) > target
    for _ in range(max_cg):
        if not bool(solving.any()):
            break
        Hd = hvp(direction)
        alpha = torch.where(solving, rz / (direction * Hd).sum((1, 2)).clamp_min(1e-300), torch.zeros_like(rz))
        step += alpha[:, None, None] * direction
        resid -= alpha[:, None, None] * Hd
        solving &= norm(resid) > target
        z = M.solve(resid)
        rz_new = (resid * z).sum((1, 2))
        beta = torch.where(solving, rz_new / rz.clamp_min(1e-300), torch.zeros_like(rz))
        direction = z + beta[:, None, None] * direction
        rz = rz_new
    return step


def _newton(problems: _Problems, x0: torch.Tensor, tol: float, max_iter: int, direction, max_backtracks: int = 50):
    """Damped (inexact) Newton on every problem at once with steps from `direction`, an Armijo line search
    from t = 1; returns (x, n_iter, converged, grad_norm). Only problems still above `tol` are computed."""
    P = x0.shape[0]
    everything = torch.arange(P)
    state = _State.exact(problems, x0.clone(), everything)
    damping = _intercept_damping(problems)

    def norm(g, idx):
        return g.flatten(1).norm(dim=1)

    active = norm(state.g, everything) > tol
    n_iter = torch.zeros(P, dtype=torch.long)
    for _ in range(max_iter):
        idx = torch.nonzero(active).squeeze(1)
        if len(idx) == 0:
            break
        now = state.rows(idx)
        step = direction(problems, now, idx, damping, tol)
        slope = (now.g * step).sum((1, 2))
        uphill = ~(slope < 0)  # rounding at the optimum (or a truncated CG step): steepest descent there
        if bool(uphill.any()):
            step[uphill] = -now.g[uphill]
            slope = (now.g * step).sum((1, 2))
        new, accepted = _line_search(problems, now, step, slope, idx, torch.ones(len(idx), dtype=x0.dtype),
                                     max_backtracks)
        stopped = _confirm(problems, new, idx, norm, tol)
        state.put(idx, new)
        n_iter[idx] += 1
        # A problem whose line search found no decrease is at the limit of float64: it stops there.
        active[idx] = accepted & ~stopped
    grad_norm = norm(state.g, everything)
    return state.x, n_iter, grad_norm <= tol, grad_norm


def newton_batched(problems: _Problems, x0: torch.Tensor, tol: float, max_iter: int):
    """Newton with the exact Hessian (plus `_intercept_damping` in the linear solve)."""
    return _newton(problems, x0, tol, max_iter, _cholesky_direction)


def newton_cg_batched(problems: _Problems, x0: torch.Tensor, tol: float, max_iter: int):
    """Inexact Newton with `_cg_direction` steps."""
    return _newton(problems, x0, tol, max_iter, _cg_direction)


def lbfgs_batched(problems: _Problems, x0: torch.Tensor, tol: float, max_iter: int, history: int = 10,
                  max_backtracks: int = 50):
    """L-BFGS on every problem at once, in diagonally preconditioned coordinates; returns (x, n_iter,
    converged, grad_norm).

    Preconditioning: F's columns are orthogonal with norms s_j, so the data term's Hessian is
    F^T diag(p(1-p)) F / m ~ diag(s^2) / (4 m) in the weights; the optimiser works on x~ = x d with
    d_j = sqrt(s_j^2 / (4 m) + lam), where that Hessian is close to the identity as far as the spread of
    singular values goes (on SimCLR features of the default data this cut iterations at 32 labels per class
    from ~800 to ~530; without it 80 labels per class did not converge in 1000). Each problem has its own
    curvature history, step length and stopping test (|gradient| in the original coordinates <= tol).
    """
    P, K, n = x0.shape
    col = problems.Faug.norm(dim=1)  # (P, r + 1): s_j for the weights, sqrt(m) for the intercept column
    counts = problems.Faug[:, :, -1].sum(1, keepdim=True)
    d = torch.ones(P, n, dtype=x0.dtype)
    d[:, :-1] = (col[:, :-1] ** 2 / (4 * counts) + problems.penalty[:, 0, :-1]).sqrt()
    d = d[:, None, :].expand(P, K, n).contiguous()  # x = x_tilde / d

    class Scaled:  # the problems in the coordinates x_tilde = x * d
        K, r = problems.K, problems.r

        @staticmethod
        def logits(xt, idx):
            return problems.logits(xt / _take(d, idx), idx)

        @staticmethod
        def value(xt, z, idx):
            return problems.value(xt / _take(d, idx), z, idx)

        @staticmethod
        def gradient(xt, logp, idx):
            return problems.gradient(xt / _take(d, idx), logp, idx) / _take(d, idx)

    def true_norm(gt, idx):
        return (gt * _take(d, idx)).flatten(1).norm(dim=1)

    everything = torch.arange(P)
    state = _State.exact(Scaled, x0 * d, everything)
    active = true_norm(state.g, everything) > tol
    n_iter = torch.zeros(P, dtype=torch.long)
    S: list[torch.Tensor] = []
    Y: list[torch.Tensor] = []
    R: list[torch.Tensor] = []
    gamma = torch.ones(P, dtype=x0.dtype)
    for it in range(max_iter):
        idx = torch.nonzero(active).squeeze(1)
        if len(idx) == 0:
            break
        now = state.rows(idx)
        # Two-loop recursion for the problems idx (history pairs with rho = 0 are absent for that problem).
        q = now.g.flatten(1).clone()
        alphas = []
        for s, yv, rho in zip(reversed(S), reversed(Y), reversed(R)):
            alpha = _take(rho, idx) * (_take(s, idx) * q).sum(1)
            q -= alpha[:, None] * _take(yv, idx)
            alphas.append(alpha)
        q *= _take(gamma, idx)[:, None]
        for (s, yv, rho), alpha in zip(zip(S, Y, R), reversed(alphas)):
            beta = _take(rho, idx) * (_take(yv, idx) * q).sum(1)
            q += (alpha - beta)[:, None] * _take(s, idx)
        step = -q.reshape(len(idx), K, n)
        slope = (now.g * step).sum((1, 2))
        uphill = ~(slope < 0)  # rounding at the optimum: fall back to steepest descent there
        if bool(uphill.any()):
            step[uphill] = -now.g[uphill]
            slope = (now.g * step).sum((1, 2))
        # The first step has no curvature information: keep its length below 1 in l1.
        t0 = (torch.clamp(1.0 / now.g.flatten(1).abs().sum(1).clamp_min(1e-300), max=1.0) if it == 0
              else torch.ones(len(idx), dtype=x0.dtype))
        new, accepted = _line_search(Scaled, now, step, slope, idx, t0, max_backtracks)
        s_vec = torch.zeros(P, K * n, dtype=x0.dtype)
        y_vec = torch.zeros(P, K * n, dtype=x0.dtype)
        ok = idx[accepted]
        s_vec[ok] = (new.x[accepted] - now.x[accepted]).flatten(1)
        y_vec[ok] = (new.g[accepted] - now.g[accepted]).flatten(1)
        sy = (s_vec * y_vec).sum(1)
        good = sy > 1e-300  # strict convexity: every accepted step that moved has s.y > 0
        S.append(torch.where(good[:, None], s_vec, torch.zeros_like(s_vec)))
        Y.append(torch.where(good[:, None], y_vec, torch.zeros_like(y_vec)))
        R.append(torch.where(good, 1.0 / sy.clamp_min(1e-300), torch.zeros_like(sy)))
        if len(S) > history:
            S.pop(0), Y.pop(0), R.pop(0)
        yy = (y_vec * y_vec).sum(1)
        gamma = torch.where(good & (yy > 0), sy / yy.clamp_min(1e-300), gamma)
        stopped = _confirm(Scaled, new, idx, true_norm, tol)
        state.put(idx, new)
        n_iter[idx] += 1
        active[idx] = accepted & ~stopped
    grad_norm = true_norm(state.g, everything)
    return state.x / d, n_iter, grad_norm <= tol, grad_norm


METHODS = ("auto", "newton", "newton_cg", "lbfgs")
# `auto` uses Newton while a probe has at most this many parameters K * (r + 1), above it Newton-CG. Exact
# Newton's cost per iteration grows like r^3 (the Hessian and its Cholesky factor); Newton-CG's like r^2 per
# CG step, with ~10 Newton steps either way; L-BFGS (kept as a choice) needs ~70-120 iterations on random
# features but ~700-2000 on encoder features, whose Hessian is ill-conditioned. Measured on one thread
# (benchmarks/probe_sweep_speed.py features, 100 probes; SimCLR features of the default data, 40 probes),
# n = 8 / 16 / 32 / 80 labels per class:
#   random  Newton 0.51 / 1.71 / 8.8 / 80 s, Newton-CG 0.46 / 0.77 / 2.4 / 11.1 s, L-BFGS 0.31 / 0.57 / 2.1 / 11.9 s
#   SimCLR  Newton 0.31 / 0.88 / 5.7 / 55 s, Newton-CG 0.30 / 0.61 / 1.5 / 5.7 s, L-BFGS 2.0 / 4.2 / 8.6* / 21* s
#   (* half the probes still above tol after 1000 iterations). So: Newton up to n = 8, then Newton-CG.
NEWTON_MAX_PARAMS = 150


def choose_method(method: str, n_classes: int, rows: int, dim: int) -> str:
    """The optimiser for probes of `rows` training rows: `method` itself unless it is `auto`."""
    if method not in METHODS:
        raise ValueError(f"unknown batched method '{method}' (choose from {', '.join(METHODS)})")
    if method != "auto":
        return method
    return "newton" if n_classes * (min(rows, dim) + 1) <= NEWTON_MAX_PARAMS else "newton_cg"


def fit_softmax_batched(X: torch.Tensor, y: torch.Tensor, row_mask: torch.Tensor, class_mask: torch.Tensor,
                        C: float, tol: float = 1e-8, max_iter: int = 1000, history: int = 10,
                        method: str = "auto"):
    """Fit P padded problems: X (P, m, D), y (P, m) class codes, row_mask (P, m), class_mask (P, K).

    Returns (mean, scale, W, b, n_iter, converged, grad_norm); W (P, D, K) and b (P, K) act on standardised
    features, so the logits of new rows x are ((x - mean) / scale) @ W + b (absent classes: -inf).
    """
    if C <= 0:
        raise ValueError(f"C must be > 0, got {C}")
    X = X.to(DTYPE)
    method = choose_method(method, class_mask.shape[1], X.shape[1], X.shape[2])
    mean, scale = standardise(X, row_mask)
    Z = (X - mean) / scale
    F, V = _rotate(Z, row_mask)
    lam = 1.0 / (C * row_mask.sum(1).to(DTYPE))
    problems = _Problems(F, y, row_mask, class_mask, lam)
    x0 = torch.zeros(F.shape[0], class_mask.shape[1], F.shape[2] + 1, dtype=DTYPE)
    if method == "newton":
        x, n_iter, converged, grad_norm = newton_batched(problems, x0, tol, max_iter)
    elif method == "newton_cg":
        x, n_iter, converged, grad_norm = newton_cg_batched(problems, x0, tol, max_iter)
    else:
        x, n_iter, converged, grad_norm = lbfgs_batched(problems, x0, tol, max_iter, history)
    A, b = x[:, :, :-1].transpose(1, 2), x[:, :, -1]
    return mean, scale, V @ A, b, n_iter, converged, grad_norm


def predict_batched(X: torch.Tensor, mean, scale, W, b, class_mask: torch.Tensor) -> torch.Tensor:
    """Class codes (P, n) of rows X (P, n, D) under the fitted probes; each row is scored on its own."""
    logits = ((X.to(DTYPE) - mean) / scale) @ W + b[:, None, :]
    logits = logits.masked_fill(~class_mask[:, None, :], -math.inf)
    return logits.argmax(2)


def _elements(rows: int, predict_rows: int, dim: int, n_classes: int, method: str) -> int:
    """float64 values one probe of a chunk holds at once: its padded rows, rotation (F and its transposed
    copy), predictions, and the Hessian (Newton) or its head block (Newton-CG)."""
    r = min(rows, dim)
    chosen = choose_method(method, n_classes, rows, dim)
    hessian = {"newton": (n_classes * (r + 1)) ** 2, "newton_cg": (n_classes * (min(r, CG_HEAD) + 1)) ** 2}.get(chosen, 0)
    return rows * dim * 2 + 2 * rows * (r + 1) + predict_rows * dim + dim * r + hessian


def _chunks(order: Sequence[int], rows: np.ndarray, predict_rows: np.ndarray, dim: int, n_classes: int,
            method: str, max_elements: int, max_padding: float) -> list[list[int]]:
    """Consecutive groups of `order` (sorted by rows) whose padded tensors stay under max_elements values and
    whose largest training set is at most `max_padding` times the smallest (padding costs like real rows)."""
    chunks: list[list[int]] = []
    current: list[int] = []
    for i in order:
        candidate = current + [i]
        m, n_pred = int(rows[candidate].max()), int(predict_rows[candidate].max())
        too_padded = m > max_padding * int(rows[candidate].min())
        if current and (too_padded or len(candidate) * _elements(m, n_pred, dim, n_classes, method) > max_elements):
            chunks.append(current)
            candidate = [i]
        current = candidate
    if current:
        chunks.append(current)
    return chunks


def solve_probes(feature_sets: Mapping[object, np.ndarray], codes: np.ndarray, n_classes: int,
                 tasks: Sequence[ProbeTask], C: float = 1.0, tol: float = 1e-8, max_iter: int = 1000,
                 history: int = 10, method: str = "auto", max_elements: int = 2**25, max_padding: float = 1.25,
                 keep_coef: bool = False, progress: bool = False, desc: str = "probes",
                 num_threads: int | None = 1) -> BatchedResult:
    """Fit every task's probe and predict its `predict_idx` rows, in batches of similar training-set size.

    `codes` are integer classes 0..n_classes-1 of all rows (shared by every feature set). Tasks are sorted by
    training-set size and grouped into chunks of at most `max_elements` float64 values (2**25: 256 MiB) whose
    training sets differ by at most a factor `max_padding`, so padding is small and memory bounded. A task
    that stops above `tol` is reported in `converged` and warned about (like scikit-learn's
    ConvergenceWarning).

    `num_threads` caps torch's intra-op threads while solving (restored afterwards; None leaves them): the
    solver runs thousands of small tensor operations, for which OpenMP's fork/join per operation costs more
    than it gains, and on a busy machine a thread waiting for a descheduled partner stalls every operation
    (the same sweep chunk took 6 s on one thread and 25 s on two on our shared 2-core machine).

    Feature sets of different widths (e.g. classical features beside a ResNet's) are solved in one group per
    shape; results come back in task order either way.
    """
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        groups: dict[tuple, list[int]] = {}
        for i, task in enumerate(tasks):
            if task.features not in feature_sets:
                raise KeyError(f"no feature set {task.features!r}")
            groups.setdefault(np.shape(feature_sets[task.features]), []).append(i)
        if len(groups) <= 1:
            return _solve(feature_sets, codes, n_classes, tasks, C, tol, max_iter, history, method, max_elements,
                          max_padding, keep_coef, progress, desc)
        parts = [(members, _solve(feature_sets, codes, n_classes, [tasks[i] for i in members], C, tol, max_iter,
                                  history, method, max_elements, max_padding, keep_coef, progress, desc))
                 for members in groups.values()]
        return _merge(parts, len(tasks), keep_coef)
    finally:
        torch.set_num_threads(previous_threads)


def _merge(parts: list[tuple[list[int], BatchedResult]], n_tasks: int, keep_coef: bool) -> BatchedResult:
    """One BatchedResult in task order from the results of groups of tasks (`members`: their task positions)."""
    predictions: list = [None] * n_tasks
    coef: list = [None] * n_tasks if keep_coef else []
    intercept: list = [None] * n_tasks if keep_coef else []
    n_iter, converged, grad_norm = np.zeros(n_tasks, int), np.zeros(n_tasks, bool), np.zeros(n_tasks)
    for members, result in parts:
        for j, i in enumerate(members):
            predictions[i] = result.predictions[j]
            if keep_coef:
                coef[i], intercept[i] = result.coef[j], result.intercept[j]
        n_iter[members], converged[members], grad_norm[members] = result.n_iter, result.converged, result.grad_norm
    return BatchedResult(predictions, n_iter, converged, grad_norm, coef, intercept)


def _solve(feature_sets, codes, n_classes, tasks, C, tol, max_iter, history, method, max_elements, max_padding,
           keep_coef, progress, desc) -> BatchedResult:
    codes = np.asarray(codes)
    if not tasks:
        return BatchedResult([], np.zeros(0, int), np.zeros(0, bool), np.zeros(0))
    for task in tasks:
        if task.features not in feature_sets:
            raise KeyError(f"no feature set {task.features!r}")
        if len(task.fit_idx) == 0:
            raise ValueError("a probe needs at least one training row")
    keys = list(dict.fromkeys(t.features for t in tasks))
    shapes = {np.shape(feature_sets[k]) for k in keys}
    if len(shapes) != 1:
        raise ValueError(f"feature sets of one call must share their shape, got {sorted(shapes)}")
    table = torch.from_numpy(np.stack([np.asarray(feature_sets[k], dtype=np.float64) for k in keys]))
    if table.shape[1] != len(codes):
        raise ValueError(f"feature sets have {table.shape[1]} rows for {len(codes)} class codes")
    key_of = {k: i for i, k in enumerate(keys)}
    D = table.shape[2]
    codes_t = torch.from_numpy(codes.astype(np.int64))
    rows = np.array([len(t.fit_idx) for t in tasks])
    predict_rows = np.array([max(len(t.predict_idx), 1) for t in tasks])
    order = sorted(range(len(tasks)), key=lambda i: (rows[i], key_of[tasks[i].features]))
    predictions: list[np.ndarray] = [np.zeros(0, dtype=int)] * len(tasks)
    coefs: list[np.ndarray] = []
    intercepts: list[np.ndarray] = []
    if keep_coef:
        coefs, intercepts = [np.zeros(0)] * len(tasks), [np.zeros(0)] * len(tasks)
    n_iter = np.zeros(len(tasks), dtype=int)
    converged = np.zeros(len(tasks), dtype=bool)
    grad_norm = np.zeros(len(tasks))

    def padded(index_lists: list[np.ndarray], width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(P, width) row indices, padding repeating each list's first row, and the mask of real entries."""
        idx = np.zeros((len(index_lists), width), dtype=np.int64)
        mask = np.zeros((len(index_lists), width), dtype=bool)
        for j, rows_j in enumerate(index_lists):
            idx[j, : len(rows_j)] = rows_j
            idx[j, len(rows_j):] = rows_j[0] if len(rows_j) else 0
            mask[j, : len(rows_j)] = True
        return torch.from_numpy(idx), torch.from_numpy(mask)

    with tqdm(total=len(tasks), desc=desc, disable=not progress, leave=False) as bar:
        for chunk in _chunks(order, rows, predict_rows, D, n_classes, method, max_elements, max_padding):
            sets = torch.tensor([key_of[tasks[i].features] for i in chunk])[:, None]
            fit_rows, row_mask = padded([np.asarray(tasks[i].fit_idx) for i in chunk], int(rows[chunk].max()))
            pred_rows, _ = padded([np.asarray(tasks[i].predict_idx) for i in chunk], int(predict_rows[chunk].max()))
            X = table[sets, fit_rows]  # (P, m, D) gathered in one indexing operation
            y = codes_t[fit_rows]  # padding repeats a real row: a present class, weight 0
            class_mask = torch.zeros(len(chunk), n_classes, dtype=torch.bool)
            class_mask[torch.arange(len(chunk))[:, None].expand_as(y)[row_mask], y[row_mask]] = True
            mean, scale, W, b, its, conv, gnorm = fit_softmax_batched(X, y, row_mask, class_mask, C, tol,
                                                                      max_iter, history, method)
            pred = predict_batched(table[sets, pred_rows], mean, scale, W, b, class_mask).numpy()
            for j, i in enumerate(chunk):
                predictions[i] = pred[j, : len(tasks[i].predict_idx)]
                n_iter[i], converged[i], grad_norm[i] = int(its[j]), bool(conv[j]), float(gnorm[j])
                if keep_coef:
                    # Weights on standardised features, as scikit-learn's coef_.T after its StandardScaler.
                    coefs[i] = W[j].numpy()
                    intercepts[i] = b[j].masked_fill(~class_mask[j], -math.inf).numpy()
            bar.update(len(chunk))
    if not converged.all():
        warnings.warn(f"{(~converged).sum()} of {len(tasks)} batched probes stopped above |gradient| <= {tol:g} "
                      f"(largest {grad_norm.max():.2e}; out of {max_iter} iterations or at float64 precision)",
                      stacklevel=2)
    return BatchedResult(predictions, n_iter, converged, grad_norm, coefs, intercepts)
