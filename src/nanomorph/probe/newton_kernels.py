"""The batched probe solver's inner loops, compiled by numba: one probe's Newton iteration in the dual form and
the conjugate-gradient (CG) solve of each Newton step. The math is in `nanomorph.probe.batched`'s docstring;
`fit_dual` there is the entry point.

Why compiled: a probe's work is thousands of (m, m) x (m, K) products and ~40 element-wise operations on
(m, K) arrays per CG step. As NumPy calls, the per-call overhead and the passes over memory cost several times
the arithmetic; as loops, one probe's Gram matrix stays in the CPU's cache for its whole solve.

Layout: vectors are held as (classes, rows) with the classes padded to a multiple of 4, so that the product
that bounds a large probe, G times four class vectors, reads each row of G once into four accumulators over
contiguous memory (vectorised fused multiply-adds). Padded and absent classes keep zero probabilities,
gradients and steps throughout.

Floating point: reassociation and contraction are allowed (vectorised sums, fused multiply-adds), but not the
"no NaN / no inf" assumptions, so comparisons stay exact. The Newton iteration, gradients, objective, line
search and convergence test run in float64; CG runs in float32 on a float32 copy of G (it never needs a
relative residual below CG_FLOOR, far above float32's 1e-7).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_FLAGS = {"reassoc", "contract", "nsz", "arcp"}
_EPS = float(np.finfo(np.float64).eps)
# Probabilities below e^-345 (~1e-150) are set to 0: they change the gradient by < 1e-150, but their products
# would reach subnormal floats, which the CPU handles ~100x slower.
LOGP_FLOOR = -345.0
# The last Newton step's CG stops at a gradient residual of ETA_TOL * tol: ~10 % fewer CG steps than
# Eisenstat-Walker's sqrt(|gradient|) alone, with the same Newton steps.
ETA_TOL = 0.1
# The tightest relative residual asked of the float32 CG: below ~1e-4 its recurrences would drift from the
# true residual. With the default tol 1e-8, Eisenstat-Walker never asks for less than 1e-3.
CG_FLOOR = 1e-4
LANES = 4  # classes per pass over G (the padding of the class axis)


@njit(cache=True, fastmath=_FLAGS, nogil=True)
def gram_product(G, X, out):
    """out[k] = G X[k] for symmetric G (m, m) and X (Kp, m), Kp a multiple of LANES.

    Two rows of G at a time against four class vectors: eight accumulators, six loads per eight fused
    multiply-adds (one row alone: five per four), 1.3x faster on AVX2."""
    Kp, m = X.shape
    zero = G[0, 0] - G[0, 0]  # 0 in G's dtype
    for k in range(0, Kp, LANES):
        x0, x1, x2, x3 = X[k], X[k + 1], X[k + 2], X[k + 3]
        for i in range(0, m, 2):
            g, h = G[i], G[min(i + 1, m - 1)]  # an odd last row is done twice, written once
            a0, a1, a2, a3, c0, c1, c2, c3 = zero, zero, zero, zero, zero, zero, zero, zero
            for j in range(m):
                gj, hj = g[j], h[j]
                a0 += gj * x0[j]
                a1 += gj * x1[j]
                a2 += gj * x2[j]
                a3 += gj * x3[j]
                c0 += hj * x0[j]
                c1 += hj * x1[j]
                c2 += hj * x2[j]
                c3 += hj * x3[j]
            out[k, i], out[k + 1, i], out[k + 2, i], out[k + 3, i] = a0, a1, a2, a3
            if i + 1 < m:
                out[k, i + 1], out[k + 1, i + 1], out[k + 2, i + 1], out[k + 3, i + 1] = c0, c1, c2, c3


@njit(cache=True, fastmath=_FLAGS, nogil=True)
def objective(A, GA, b, y, present, C, p):
    """Sum-scaled objective sum_i CE(softmax(GA_i + b), y_i) + tr(A^T G A) / (2C); writes the probabilities p."""
    Kp, m = A.shape
    loss = 0.0
    for i in range(m):
        top = -np.inf
        for k in range(Kp):
            if present[k]:
                top = max(top, GA[k, i] + b[k])
        total = 0.0
        for k in range(Kp):
            if present[k]:
                total += math.exp(GA[k, i] + b[k] - top)
        lse = top + math.log(total)
        for k in range(Kp):
            logp = GA[k, i] + b[k] - lse
            p[k, i] = math.exp(logp) if present[k] and logp >= LOGP_FLOOR else 0.0
        loss -= GA[y[i], i] + b[y[i]] - lse
    penalty = 0.0
    for k in range(Kp):
        for i in range(m):
            penalty += A[k, i] * GA[k, i]
    return loss + penalty / (2 * C)


@njit(cache=True, fastmath=_FLAGS, nogil=True)
def newton_step(G32, p, V, GV, gb, present, eta, C, max_cg, xa, xb):
    """(xa, xb) = the CG solution of H (xa, xb) = -(V, gb) to relative residual max(eta, CG_FLOOR), in float32;
    returns the number of CG steps (products with G).

    Vectors of W-space are held by coefficients a (W = Z^T a) beside their Gram image G a, so the W-space inner
    product <a, a'> = tr(a^T G a') costs no product with G. H (a, c) = (Wu + a / C, sum_i (Wu)_i), u = G a + c
    the change of logits, (Wu)_i = diag(p_i) u_i - p_i p_i^T u_i. Preconditioner: C on the W-part (where C H has
    eigenvalues >= 1), 1 / (mean curvature) on the intercepts (a scalar, which keeps the steps of b summing to 0).
    """
    Kp, m = p.shape
    f32 = np.float32
    curvature_sum = 0.0
    for k in range(Kp):
        for i in range(m):
            curvature_sum += p[k, i] * (1.0 - p[k, i])
    b_scale = f32(1.0 / max(curvature_sum / present.sum(), 1e-12))
    Cf = f32(C)
    p32 = p.astype(f32)
    ra, Gr = -V.astype(f32), -GV.astype(f32)
    rb = -gb.astype(f32)
    da, Gd, db = Cf * ra, Cf * Gr, b_scale * rb
    qa, qb = np.empty_like(ra), np.empty_like(rb)
    xa32, xb32 = np.zeros_like(ra), np.zeros_like(rb)
    rz = f32(0.0)
    for k in range(Kp):
        for i in range(m):
            rz += Cf * ra[k, i] * Gr[k, i]
        rz += b_scale * rb[k] * rb[k]
    e = max(eta, CG_FLOOR)
    target = f32(e * e) * rz
    steps = 0
    for _ in range(max_cg):
        if not rz > target:
            break
        steps += 1
        qb[:] = 0
        curvature = f32(0.0)
        for i in range(m):
            s = f32(0.0)
            for k in range(Kp):
                s += p32[k, i] * (Gd[k, i] + db[k])
            for k in range(Kp):
                w = p32[k, i] * (Gd[k, i] + db[k] - s)
                qb[k] += w
                qa[k, i] = w + da[k, i] / Cf
                curvature += Gd[k, i] * qa[k, i]
        for k in range(Kp):
            curvature += db[k] * qb[k]
        alpha = rz / curvature
        for k in range(Kp):
            for i in range(m):
                xa32[k, i] += alpha * da[k, i]
                ra[k, i] -= alpha * qa[k, i]
            xb32[k] += alpha * db[k]
            rb[k] -= alpha * qb[k]
        gram_product(G32, ra, Gr)
        rz_new = f32(0.0)
        for k in range(Kp):
            for i in range(m):
                rz_new += Cf * ra[k, i] * Gr[k, i]
            rz_new += b_scale * rb[k] * rb[k]
        beta = rz_new / rz
        rz = rz_new
        for k in range(Kp):
            for i in range(m):
                da[k, i] = Cf * ra[k, i] + beta * da[k, i]
                Gd[k, i] = Cf * Gr[k, i] + beta * Gd[k, i]
            db[k] = b_scale * rb[k] + beta * db[k]
    xa[:] = xa32
    xb[:] = xb32
    return steps


@njit(cache=True, fastmath=_FLAGS, nogil=True)
def fit_one(G, y, present, C, tol, max_iter, max_backtracks, max_cg, A, b):
    """Newton's method from A = 0, b = 0 for one probe (G (m, m), labels y (m,), classes present (Kp,)); writes
    the optimum into A (Kp, m) and b (Kp,) and returns (Newton steps, |gradient| in scikit-learn's scaling,
    CG steps over all Newton steps)."""
    Kp, m = A.shape
    G32 = G.astype(np.float32)
    GA, V, GV, dA, GdA = np.zeros((Kp, m)), np.zeros((Kp, m)), np.zeros((Kp, m)), np.zeros((Kp, m)), np.zeros((Kp, m))
    p, p_try, A_try, GA_try = np.zeros((Kp, m)), np.zeros((Kp, m)), np.zeros((Kp, m)), np.zeros((Kp, m))
    gb, db, b_try = np.zeros(Kp), np.zeros(Kp), np.zeros(Kp)
    A[:] = 0
    b[:] = 0
    # The logits G A are carried from step to step as the line search computed them (G A + t G dA), with the
    # objective and probabilities there: two products with G per Newton step instead of three.
    S = objective(A, GA, b, y, present, C, p)
    steps, gnorm, cg_steps = 0, np.inf, 0
    for it in range(max_iter + 1):
        gb[:] = 0
        for k in range(Kp):
            for i in range(m):
                r = p[k, i] - (1.0 if y[i] == k else 0.0)
                V[k, i] = r + A[k, i] / C
                gb[k] += r
        gram_product(G, V, GV)
        vgv = 0.0
        for k in range(Kp):
            for i in range(m):
                vgv += V[k, i] * GV[k, i]
        gnorm = math.sqrt(max(vgv, 0.0) + (gb * gb).sum()) / m
        if it == max_iter or gnorm <= tol:
            break
        # CG's relative residual: Eisenstat-Walker's forcing term, loose far from the optimum and tight near it,
        # but no tighter than needed to end below tol (a residual of ETA_TOL * tol)
        eta = min(0.5, max(math.sqrt(gnorm), ETA_TOL * tol / max(gnorm, tol)))
        cg_steps += newton_step(G32, p, V, GV, gb, present, eta, C, max_cg, dA, db)
        gram_product(G, dA, GdA)
        slope = (V * GdA).sum() + (gb * db).sum()
        if not slope < 0:  # no descent direction: at the limit of float64
            break
        t, accepted = 1.0, False
        for _ in range(max_backtracks):
            A_try[:] = A + t * dA
            GA_try[:] = GA + t * GdA
            b_try[:] = b + t * db
            S_try = objective(A_try, GA_try, b_try, y, present, C, p_try)
            # Armijo, with room for rounding once f is flat to float64 near the optimum
            if S_try <= S + 1e-4 * t * slope + 8 * _EPS * abs(S):
                accepted = True
                break
            t /= 2
        if not accepted:
            break
        A[:], GA[:], b[:], p[:], S = A_try, GA_try, b_try, p_try, S_try
        steps += 1
    return steps, gnorm, cg_steps


@njit(cache=True, nogil=True)
def fit_many(G, y, present, C, tol, max_iter, max_backtracks, max_cg, A, b, steps, gnorm, cg_steps):
    """fit_one for each of P probes: G (P, m, m), y (P, m), present (P, Kp) -> A (P, Kp, m), b (P, Kp)."""
    for q in range(G.shape[0]):
        steps[q], gnorm[q], cg_steps[q] = fit_one(G[q], y[q], present[q], C, tol, max_iter, max_backtracks, max_cg,
                                                  A[q], b[q])
