"""Meta-linear regression in closed form: the trade-off paper's section 4 (eqs. 9-12, Theorem 5).

Task t has y = theta_t^T x + eps, x ~ N(0, Q_t), eps ~ N(0, sigma_t^2), and risk (eq. 9)
R(theta; t) = 1/2 E(y - theta^T x)^2 = 1/2 (theta - theta_t)^T Q_t (theta - theta_t) + sigma_t^2 / 2.
Every expected loss studied here has the form

    L(theta) = 1/2 E_t[(theta - theta_t)^T W_t (theta - theta_t)] + noise
             = 1/2 (theta^T E[W] theta - 2 theta^T E[W theta_t] + E[theta_t^T W theta_t]) + noise,

so three moments determine it and its minimiser E[W]^-1 E[W theta_t]:

- before adaptation (DRS objective, eq. 7):   W = Q;
- MAML's population objective R_maml(theta; alpha) (eq. 7, exact task gradients):
  W = S(alpha) = (I - alpha Q) Q (I - alpha Q)  (eq. 10);
- after one SGD step of size alpha on N fresh points (Theorem 5): W = A(alpha, N), below.

Derivation of A (Theorem 5 with the Gaussian fourth moment in closed form). With Qh = (1/N) sum_i x_i x_i^T
and d = theta - theta_t, the adapted parameters of eq. (12) are
theta~ - theta_t = (I - alpha Qh) d + (alpha/N) sum_i x_i eps_i. The cross term has mean 0 (eps independent
of x, mean 0), so E_O[R(theta~)] = 1/2 d^T E[(I - alpha Qh) Q (I - alpha Qh)] d
+ sigma^2/2 (1 + alpha^2 tr(Q^2) / N). Since E[Qh] = Q and, the x_i being independent,
E[Qh Q Qh] = Q^3 + (E[x x^T Q x x^T] - Q^3) / N, the quadratic part is A = S + alpha^2 (E[x x^T Q x x^T] - Q^3) / N.
For x ~ N(0, Q), Isserlis' theorem E[x_a x_b x_c x_d] = Q_ab Q_cd + Q_ac Q_bd + Q_ad Q_bc gives, for a
symmetric B, E[x x^T B x x^T] = 2 Q B Q + tr(BQ) Q; with B = Q:

    A(alpha, N) = S(alpha) + alpha^2 (Q^3 + tr(Q^2) Q) / N,   noise = E[sigma^2 (1 + alpha^2 tr(Q^2) / N)] / 2.

Exact expectations for the paper's family (eq. 13, fixed V): Q = V diag(theta) V^T and W = V diag(g) V^T with
g_i = G(theta_i) + b theta_i sum_{k != i} theta_k^2, G(t) = t - 2 alpha t^2 + alpha^2 (1 + 2/N) t^3,
b = alpha^2 / N (theta_t are W's eigenvalues too). Writing u = V^T theta_t, theta_t^T W theta_t = sum_i g_i u_i^2,
and every moment E[g_i], E[g_i u_i], E[g_i u_i^2] is a polynomial in the independent uniform coordinates,
expanded in ``_family_moments`` into their raw moments.

Array conventions: numpy float64; tasks along the first axis of ``Q [T, p, p]``, ``theta [T, p]``; datasets
``x [..., M, 2N, p]``, ``y [..., M, 2N]`` (leading axes = independent datasets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..errors import ConfigError, MetagradError, check_range, check_whole, real_number

ArrayLike = np.ndarray
SINGULAR_RCOND = 1e-12  # smallest eigenvalue / largest of a normal matrix below which we call it singular


class SingularSystemError(MetagradError, np.linalg.LinAlgError):
    """A least-squares system has no unique solution (too few points or tasks for the dimension)."""


# ---------------------------------------------------------------------- expected losses
@dataclass(frozen=True)
class ExpectedLoss:
    """L(theta) = 1/2 (theta^T M theta - 2 theta^T v + c) + noise, with M = E[W], v = E[W theta_t],
    c = E[theta_t^T W theta_t]; call it on ``theta [..., p]`` (vectorised over leading axes)."""

    M: np.ndarray
    v: np.ndarray
    c: float
    noise: float

    def __call__(self, theta: ArrayLike) -> np.ndarray:
        theta = np.asarray(theta, dtype=np.float64)
        quad = np.einsum("...i,ij,...j->...", theta, self.M, theta)
        return 0.5 * (quad - 2.0 * theta @ self.v + self.c) + self.noise

    def minimiser(self) -> np.ndarray:
        """The theta of lowest expected loss, E[W]^-1 E[W theta_t]."""
        return _solve(self.M, self.v, "the expected-loss Hessian E[W]")

    @property
    def minimum(self) -> float:
        return float(self(self.minimiser()))


class Optimum(NamedTuple):
    """A population optimum and its Monte-Carlo standard error per coordinate (None when exact)."""

    theta: np.ndarray
    stderr: np.ndarray | None


def check_step(alpha: float, n: float) -> tuple[float, float]:
    """``alpha`` and ``n`` as floats, or a ConfigError for a step size or a number of points the formulas do not
    describe (they would return a number: a negative expected loss for n < 0, a step uphill for alpha < 0)."""
    a, m = real_number(alpha), real_number(n)
    if not (math.isfinite(a) and a >= 0):
        raise ConfigError(f"alpha {alpha!r} must be a finite step size >= 0")
    if not m >= 1 or (math.isfinite(m) and m != int(m)):
        raise ConfigError(f"n {n!r} must be a whole number of points >= 1 (math.inf: exact task gradients)")
    return a, m


def check_rotation(V: np.ndarray) -> None:
    """Refuse a V that is not a rotation of at least one dimension (eq. 13 takes Q = V diag(theta) V^T)."""
    if V.ndim != 2 or V.shape[0] != V.shape[1] or V.shape[0] == 0:
        raise ConfigError(f"rotation of shape {list(V.shape)} must be a square p x p matrix with p >= 1")
    if not np.allclose(V.T @ V, np.eye(V.shape[0]), atol=1e-6):  # float32 rotations are orthogonal to ~1e-7
        raise ConfigError("rotation must be orthogonal (V^T V = I), e.g. np.eye(p) or scipy.stats.ortho_group.rvs(p)")


def weight_matrices(Q: ArrayLike, alpha: float = 0.0, n: float = math.inf) -> np.ndarray:
    """W_t for each task: Q (alpha = 0), S(alpha) (n = inf) or A(alpha, n) (Gaussian inputs), ``[T, p, p]``."""
    alpha, n = check_step(alpha, n)
    Q = _as_tasks(Q)
    eye = np.eye(Q.shape[-1])
    B = eye - alpha * Q
    W = B @ Q @ B
    if alpha and math.isfinite(n):
        trq2 = np.einsum("tij,tji->t", Q, Q)
        W = W + alpha**2 * (Q @ Q @ Q + trq2[:, None, None] * Q) / n
    return W


def expected_loss_sampled(Q: ArrayLike, theta: ArrayLike, sigma2: ArrayLike | None = None, alpha: float = 0.0,
                          n: float = math.inf, weights: ArrayLike | None = None) -> ExpectedLoss:
    """The expected loss over an explicit set of tasks (a Monte-Carlo sample, or a discrete distribution with
    ``weights``): before adaptation (alpha = 0), MAML's population objective (n = inf), or after one step of
    size alpha on n Gaussian points (Theorem 5)."""
    Q, theta = _as_tasks(Q), np.asarray(theta, dtype=np.float64)
    alpha, n = check_step(alpha, n)
    if sigma2 is not None and not np.all(np.asarray(sigma2, dtype=np.float64) >= 0):
        raise ConfigError("sigma2 must hold noise variances >= 0")
    w = _weights(weights, Q.shape[0])
    W = weight_matrices(Q, alpha, n)
    Wt = np.einsum("tij,tj->ti", W, theta)
    s2 = np.zeros(Q.shape[0]) if sigma2 is None else np.asarray(sigma2, dtype=np.float64)
    trq2 = np.einsum("tij,tji->t", Q, Q)
    extra = alpha**2 * trq2 / n if alpha and math.isfinite(n) else 0.0
    return ExpectedLoss(np.einsum("t,tij->ij", w, W), w @ Wt, float(w @ np.einsum("ti,ti->t", theta, Wt)),
                        float(0.5 * w @ (s2 * (1.0 + extra))))


def population_optimum(Q: ArrayLike, theta: ArrayLike, alpha: float = 0.0,
                       weights: ArrayLike | None = None) -> Optimum:
    """theta*_drs = E[Q]^-1 E[Q theta] (alpha = 0) or theta*_maml(alpha) = E[S]^-1 E[S theta] (eq. 10) over the
    given tasks. With ``weights`` the tasks are the whole (discrete) distribution and the result is exact;
    without, they are a Monte-Carlo sample and the standard error is the delta method's:
    theta^ - theta* ~ E[W]^-1 mean_t W_t (theta_t - theta*), so se = std_t(E[W]^-1 W_t (theta_t - theta*)) / sqrt(T)."""
    Q, theta = _as_tasks(Q), np.asarray(theta, dtype=np.float64)
    loss = expected_loss_sampled(Q, theta, alpha=alpha, weights=weights)
    opt = loss.minimiser()
    if weights is not None:
        return Optimum(opt, None)
    T = Q.shape[0]
    if T < 2:
        raise MetagradError("a Monte-Carlo standard error needs at least 2 tasks")
    W = weight_matrices(Q, alpha)
    psi = np.linalg.solve(loss.M, np.einsum("tij,tj->ti", W, theta - opt).T).T
    return Optimum(opt, psi.std(axis=0, ddof=1) / math.sqrt(T))


def uniform_moments(low: float, high: float, kmax: int) -> np.ndarray:
    """Raw moments E[u^k], k = 0..kmax, of u ~ U[low, high]."""
    k = np.arange(kmax + 1)
    if high == low:
        return np.full(kmax + 1, float(low)) ** k
    return (high ** (k + 1) - low ** (k + 1)) / ((k + 1) * (high - low))


def expected_loss_exact(rotation: ArrayLike, alpha: float = 0.0, n: float = math.inf,
                        theta_range: tuple[float, float] = (0.0, 2.0),
                        noise_range: tuple[float, float] = (0.0, 2.0)) -> ExpectedLoss:
    """The exact expected loss for the paper's task family (eq. 13) with rotation V: before adaptation
    (alpha = 0), MAML's population objective (n = inf), after one step of size alpha on n points (Theorem 5)."""
    V = np.asarray(rotation, dtype=np.float64)
    alpha, n = check_step(alpha, n)
    check_rotation(V)
    if check_range("theta_range", theta_range, low=0.0)[1] == 0:  # theta_t are the input covariance's eigenvalues
        raise ConfigError(f"theta_range {theta_range!r} makes every task's input covariance 0; give high > 0")
    check_range("noise_range", noise_range, low=0.0)
    m = uniform_moments(*theta_range, 6)
    inv_n = 0.0 if not math.isfinite(n) else 1.0 / n
    poly = np.array([0.0, 1.0, -2.0 * alpha, alpha**2 * (1.0 + 2.0 * inv_n)])
    M, v, c = _family_moments(V, poly, alpha**2 * inv_n, m)
    p = V.shape[0]
    noise = 0.5 * float(np.mean(noise_range)) * (1.0 + alpha**2 * inv_n * p * m[2])
    return ExpectedLoss(M, v, c, noise)


def exact_optimum(rotation: ArrayLike, alpha: float = 0.0,
                  theta_range: tuple[float, float] = (0.0, 2.0)) -> np.ndarray:
    """theta*_drs (alpha = 0) or theta*_maml(alpha) of eq. (10), exactly, for the eq. (13) family."""
    return expected_loss_exact(rotation, alpha, math.inf, theta_range).minimiser()


def _family_moments(V: np.ndarray, poly: np.ndarray, b: float, m: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """E[W], E[W theta_t], E[theta_t^T W theta_t] for W = V diag(g) V^T, g_i = poly(theta_i) + b theta_i q_i,
    q_i = sum_{k != i} theta_k^2, theta_k iid with raw moments m.

    For coordinate i write T = theta_i, c = V[:, i], u_i = c_i T + R with R = sum_{j != i} c_j theta_j (R, q_i
    independent of T), so g_i u_i^k expands into products of E[G(T) T^j] and the moments of (R, q_i) below.
    """
    p = V.shape[0]
    EG = [float(sum(poly[j] * m[j + k] for j in range(len(poly)))) for k in range(3)]  # E[G(T) T^k]
    r = p - 1  # the other coordinates
    eg, egu, egu2 = np.empty(p), np.empty(p), np.empty(p)
    for i in range(p):
        c = V[:, i]
        ci, rest = c[i], np.delete(c, i)
        s1, s2 = rest.sum(), (rest**2).sum()
        ER = m[1] * s1
        ER2 = (m[2] - m[1] ** 2) * s2 + m[1] ** 2 * s1**2
        Eq = r * m[2]
        EqR = s1 * (m[3] + (r - 1) * m[2] * m[1])
        EqR2 = s2 * (m[4] + (r - 1) * m[2] ** 2) + (s1**2 - s2) * (2 * m[3] * m[1] + (r - 2) * m[2] * m[1] ** 2)
        eg[i] = EG[0] + b * m[1] * Eq
        egu[i] = ci * (EG[1] + b * m[2] * Eq) + EG[0] * ER + b * m[1] * EqR
        egu2[i] = (ci**2 * (EG[2] + b * m[3] * Eq) + 2 * ci * (EG[1] * ER + b * m[2] * EqR)
                   + EG[0] * ER2 + b * m[1] * EqR2)
    return (V * eg) @ V.T, V @ egu, float(egu2.sum())


# ---------------------------------------------------------------------- finite-sample estimators
def task_statistics(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Per-task sufficient statistics of least squares: X^T X ``[..., p, p]`` and X^T y ``[..., p]``."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return np.einsum("...ni,...nj->...ij", x, x), np.einsum("...ni,...n->...i", x, y)


def drs_estimate(x: ArrayLike, y: ArrayLike) -> np.ndarray:
    """Eq. (11): least squares over all 2N points of all M tasks; ``x [..., M, 2N, p]``, ``y [..., M, 2N]``
    -> ``[..., p]``."""
    W, b = task_statistics(x, y)
    return drs_from_statistics(W, b)


def maml_estimate(x: ArrayLike, y: ArrayLike, alpha: float) -> np.ndarray:
    """Eq. (12): the first N points of each task take one gradient step of size alpha on the half squared
    error, the last N score it; a least-squares problem in theta (see ``maml_from_statistics``)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    two_n = x.shape[-2]
    if two_n % 2:
        raise MetagradError(f"eq. (12) splits each task's 2N points in halves; got an odd number {two_n}")
    n = two_n // 2
    Ws, bs = task_statistics(x[..., :n, :], y[..., :n])
    Wq, bq = task_statistics(x[..., n:, :], y[..., n:])
    return maml_from_statistics(Ws, bs, Wq, bq, alpha, n)


def drs_from_statistics(W: ArrayLike, b: ArrayLike, singular: str = "raise") -> np.ndarray:
    """Eq. (11) from per-task X^T X ``[..., M, p, p]`` and X^T y ``[..., M, p]``: (sum W) theta = sum b.
    ``singular``: ``raise`` (SingularSystemError) or ``nan`` (NaN estimates for the datasets that do not determine
    theta)."""
    return _solve(np.sum(W, axis=-3), np.sum(b, axis=-2), "eq. (11) (DRS): sum_j X_j^T X_j", singular)


def maml_from_statistics(Ws: ArrayLike, bs: ArrayLike, Wq: ArrayLike, bq: ArrayLike, alpha: float,
                         n: int, singular: str = "raise") -> np.ndarray:
    """Eq. (12) from support/query statistics. The adapted parameters are affine in theta,
    theta~_j = B_j theta + c_j with B_j = I - alpha Ws_j / N and c_j = alpha bs_j / N, so the outer loss
    sum_j ||y_q - X_q theta~_j||^2 is least squares: (sum_j B_j Wq_j B_j) theta = sum_j B_j (bq_j - Wq_j c_j).
    ``singular`` as ``drs_from_statistics``."""
    alpha, _ = check_step(alpha, 1)
    check_whole("n", n, 1)
    Ws, bs, Wq, bq = (np.asarray(a, dtype=np.float64) for a in (Ws, bs, Wq, bq))
    B = np.eye(Ws.shape[-1]) - alpha * Ws / n
    c = alpha * bs / n
    lhs = np.sum(B @ Wq @ B, axis=-3)
    rhs = np.sum(np.einsum("...ij,...j->...i", B, bq - np.einsum("...ij,...j->...i", Wq, c)), axis=-2)
    return _solve(lhs, rhs, f"eq. (12) (MAML, alpha={alpha}): sum_j B_j X_q^T X_q B_j", singular)


# ---------------------------------------------------------------------- helpers
def _solve(A: np.ndarray, b: np.ndarray, what: str, singular: str = "raise") -> np.ndarray:
    """Solve A theta = b (batched over leading axes) for symmetric positive semi-definite A; where A is (numerically)
    singular raise ``SingularSystemError`` or, with ``singular='nan'``, give NaN there."""
    eig = np.linalg.eigvalsh(A)
    bad = ~(eig[..., 0] > SINGULAR_RCOND * np.maximum(eig[..., -1], np.finfo(float).tiny))
    if singular == "nan" and np.any(bad):
        A = np.where(bad[..., None, None], np.eye(A.shape[-1]), A)
        return np.where(bad[..., None], np.nan, np.linalg.solve(A, b[..., None])[..., 0])
    if np.any(bad):
        where = "" if A.ndim == 2 else f" (dataset {np.argwhere(bad)[0].tolist()})"
        raise SingularSystemError(
            f"{what} is singular{where}: smallest/largest eigenvalue {eig[bad][0, 0]:.3g}/{eig[bad][0, -1]:.3g}; "
            f"the data do not determine all {A.shape[-1]} coordinates of theta (or barely: smallest/largest below "
            f"{SINGULAR_RCOND:g}) - use more tasks or points (M * N >= p at least)"
            + (", or a step size alpha with I - alpha X^T X / N non-singular" if "alpha" in what else ""))
    return np.linalg.solve(A, b[..., None])[..., 0]


def _as_tasks(Q: ArrayLike) -> np.ndarray:
    Q = np.asarray(Q, dtype=np.float64)
    if Q.ndim != 3 or Q.shape[1] != Q.shape[2]:
        raise MetagradError(f"Q must have shape [tasks, p, p], got {list(Q.shape)}")
    eig = np.linalg.eigvalsh(Q) if Q.size else np.zeros((0, 1))
    if not (np.all(np.isfinite(Q)) and np.allclose(Q, Q.swapaxes(1, 2))
            and np.all(eig[:, 0] >= -1e-10 * np.maximum(np.abs(eig[:, -1]), 1.0))):
        raise ConfigError("Q must hold finite, symmetric, positive semi-definite input covariances (E[x x^T] of each "
                          "task)")
    return Q


def _weights(weights: ArrayLike | None, T: int) -> np.ndarray:
    if weights is None:
        return np.full(T, 1.0 / T)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (T,) or np.any(w < 0) or not w.sum() > 0:
        raise MetagradError(f"weights must be {T} non-negative numbers with a positive sum")
    return w / w.sum()


__all__ = ["ExpectedLoss", "Optimum", "SingularSystemError", "drs_estimate", "drs_from_statistics",
           "exact_optimum", "expected_loss_exact", "expected_loss_sampled", "maml_estimate", "maml_from_statistics",
           "population_optimum", "task_statistics", "uniform_moments", "weight_matrices"]
