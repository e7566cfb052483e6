"""The Reptile paper's leading-order expansion (Nichol, Achiam, Schulman 2018, section 5.1, eqs. 9-41), checked
against exact expected meta-gradients.

Setting of section 5.1: a task tau gives a sequence of k minibatch losses L_1, ..., L_k (minibatches drawn from
that same task), and with phi_1 = phi the initialization

    g_i     = L'_i(phi_i)                 gradient obtained during SGD          (9)
    phi_i+1 = phi_i - alpha g_i           sequence of parameter vectors        (10)
    gbar_i  = L'_i(phi_1)                 gradient at the initial point        (11)
    Hbar_i  = L''_i(phi_1)                Hessian at the initial point         (12)

The three meta-gradients, each formed here exactly as the algorithm forms it (autograd, float64):

    g_MAML    = d/dphi_1 L_k(phi_k)  (17), phi_k after k-1 SGD steps on L_1..L_{k-1}, differentiated through them;
    g_FOMAML  = g_k = L'_k(phi_k)    (38), the same phi_k, no differentiation through the inner steps;
    g_Reptile = -(phi_k+1 - phi_1) / alpha = sum_i g_i  (40), phi_k+1 after k SGD steps on L_1..L_k.

So "k" counts minibatches, as in the paper: MAML and FOMAML take k-1 inner steps and use the k-th minibatch
for the meta-gradient; Reptile takes k steps. Their expansions (36), (38), (40) to O(alpha^2) and, after the
expectation over the task and the minibatches, with

    AvgGrad      = E_tau,1[gbar_1]                                       (28)
    AvgGradInner = E_tau,1,2[Hbar_2 gbar_1] = E_tau,1,2[Hbar_1 gbar_2]   (29), (30)
                 = 1/2 E_tau,1,2[d/dphi_1 (gbar_1 . gbar_2)]             (31), (32)

the paper's leading terms are (general k >= 2; k = 2 gives (33)-(35))

    E[g_MAML]    = (1) AvgGrad - (2 (k-1) alpha) AvgGradInner      (37)
    E[g_FOMAML]  = (1) AvgGrad - ((k-1) alpha) AvgGradInner        (39)
    E[g_Reptile] = (k) AvgGrad - (k (k-1) / 2 alpha) AvgGradInner  (41)

(the paper omits "+ O(alpha^2)" in (37), (39), (41); it is meant, as in (33)-(35)). (37)-(41) use that any two
distinct positions i != j of the sequence have the joint law of positions (1, 2), i.e. the minibatches are
exchangeable: i.i.d. draws from the task ("iid", the default) or draws without replacement ("without_replacement").

The model has derivatives in closed form, so that the series is built from exact gbar_i and Hbar_i: minibatch b of
task t has loss

    L_tb(phi) = 1/2 (phi - c_tb)^T A_tb (phi - c_tb) + b_tb^T phi + gamma softplus(u_tb^T phi),

A_tb symmetric positive definite; the softplus term (gamma > 0) gives nonzero third derivatives, so the remainder
of Taylor's theorem in (13) is exercised too (with gamma = 0 the losses are quadratic and (13) is exact). Tasks are
equally likely and each task has a finite set of minibatches, so every expectation is an exact finite average over
the enumerated minibatch sequences, not a sample.

Tensor conventions: float64; parameters ``phi [d]``; problem arrays carry tasks and minibatches on the first two
axes (``A [T, m, d, d]``, ``c, b, u [T, m, d]``).
"""

from __future__ import annotations

import itertools
import math
import numbers
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..errors import ConfigError, check_whole

Sampling = Literal["iid", "without_replacement"]
ALGORITHMS: tuple[str, ...] = ("maml", "fomaml", "reptile")


# ---------------------------------------------------------------------- the model
@dataclass(frozen=True)
class MinibatchLosses:
    """Per-minibatch losses L_tb(phi) = 1/2 (phi - c)^T A (phi - c) + b^T phi + gamma softplus(u^T phi) for T
    equally likely tasks with m minibatches each (the module docstring's model)."""

    A: Tensor  # [T, m, d, d] symmetric positive definite
    c: Tensor  # [T, m, d]
    b: Tensor  # [T, m, d]
    u: Tensor  # [T, m, d]
    gamma: float = 1.0

    def __post_init__(self) -> None:
        """The closed-form gradient and Hessian assume a float64 problem of consistent shapes, A symmetric positive
        definite and gamma >= 0 (an asymmetric A would make the series disagree with the computed gradients)."""
        arrays = {"A": self.A, "c": self.c, "b": self.b, "u": self.u}
        if not all(isinstance(x, Tensor) and x.dtype == torch.float64 for x in arrays.values()):
            raise ConfigError("A, c, b and u must be float64 tensors (the analysis compares terms of order alpha^2)")
        if self.A.dim() != 4 or self.A.shape[-1] != self.A.shape[-2] or 0 in self.A.shape:
            raise ConfigError(f"A {list(self.A.shape)} must be [tasks, minibatches, d, d] with every size >= 1")
        for name in "cbu":
            if arrays[name].shape != self.A.shape[:-1]:
                raise ConfigError(f"{name} {list(arrays[name].shape)} must be {list(self.A.shape[:-1])} "
                                  "([tasks, minibatches, d], as A)")
        if not torch.allclose(self.A, self.A.transpose(-1, -2), rtol=1e-12, atol=1e-12):
            raise ConfigError("A must be symmetric (the closed-form gradient and Hessian assume it); use (A + A^T) / 2")
        if not bool((torch.linalg.eigvalsh(self.A) > 0).all()):
            raise ConfigError("A must be positive definite: every eigenvalue > 0 (section 5.1's losses are convex)")
        if not 0 <= self.gamma < math.inf:
            raise ConfigError(f"gamma {self.gamma} must be finite and >= 0 (0: quadratic losses)")

    @property
    def n_tasks(self) -> int:
        return self.A.shape[0]

    @property
    def n_minibatches(self) -> int:
        return self.A.shape[1]

    @property
    def dim(self) -> int:
        return self.A.shape[-1]

    def loss(self, task: Tensor, batch: Tensor, phi: Tensor) -> Tensor:
        """L_tb(phi) for index tensors ``task [N]``, ``batch [N]`` and ``phi [N, d]``: a differentiable ``[N]``."""
        A, c, b, u = (x[task, batch] for x in (self.A, self.c, self.b, self.u))
        r = phi - c
        quad = 0.5 * torch.einsum("ni,nij,nj->n", r, A, r)
        return quad + (b * phi).sum(-1) + self.gamma * torch.nn.functional.softplus((u * phi).sum(-1))

    def grad(self, phi: Tensor) -> Tensor:
        """Closed-form gradient L'_tb(phi) of every minibatch at one point ``phi [d]``: ``[T, m, d]``."""
        s = torch.sigmoid(self.u @ phi)
        return torch.einsum("tmij,tmj->tmi", self.A, phi - self.c) + self.b + self.gamma * s[..., None] * self.u

    def hessian(self, phi: Tensor) -> Tensor:
        """Closed-form Hessian L''_tb(phi) of every minibatch at one point ``phi [d]``: ``[T, m, d, d]``."""
        s = torch.sigmoid(self.u @ phi)
        w = self.gamma * s * (1 - s)
        return self.A + w[..., None, None] * self.u[..., :, None] * self.u[..., None, :]


def random_problem(n_tasks: int = 3, n_minibatches: int = 4, dim: int = 3, *, gamma: float = 1.0,
                   eig_range: tuple[float, float] = (0.2, 1.0), seed: int = 0) -> MinibatchLosses:
    """A random instance: A_tb = Q diag(eigenvalues in eig_range) Q^T with random rotations Q; minibatch centres
    c_tb scattered around a per-task centre (so minibatches of one task are alike but not equal)."""
    for name, value in (("n_tasks", n_tasks), ("n_minibatches", n_minibatches), ("dim", dim)):
        check_whole(name, value, 1)
    if not 0 < eig_range[0] <= eig_range[1] < math.inf:
        raise ConfigError(f"eig_range {eig_range} must be two finite eigenvalues 0 < low <= high (A positive definite)")
    gen = torch.Generator().manual_seed(seed)
    kw = {"generator": gen, "dtype": torch.float64}
    shape = (n_tasks, n_minibatches)
    Q, _ = torch.linalg.qr(torch.randn(*shape, dim, dim, **kw))
    lo, hi = eig_range
    eig = lo + (hi - lo) * torch.rand(*shape, dim, **kw)
    A = Q @ torch.diag_embed(eig) @ Q.transpose(-1, -2)
    A = 0.5 * (A + A.transpose(-1, -2))
    c = torch.randn(n_tasks, 1, dim, **kw) + 0.5 * torch.randn(*shape, dim, **kw)
    b = 0.3 * torch.randn(*shape, dim, **kw)
    u = torch.randn(*shape, dim, **kw) / dim**0.5
    return MinibatchLosses(A, c, b, u, gamma)


# ---------------------------------------------------------------------- minibatch sequences
def minibatch_sequences(n_minibatches: int, k: int, sampling: Sampling = "iid") -> Tensor:
    """Every equally likely ordered sequence (L_1, ..., L_k) of minibatch indices of one task: ``[S, k]``.

    "iid": independent uniform draws (m^k sequences); "without_replacement": ordered draws of k distinct
    minibatches (m!/(m-k)! sequences). Both are exchangeable, as (37)-(41) require."""
    _check_k(k, n_minibatches, sampling)
    if sampling == "iid":
        seqs = list(itertools.product(range(n_minibatches), repeat=k))
    else:
        seqs = list(itertools.permutations(range(n_minibatches), k))
    return torch.tensor(seqs, dtype=torch.long).reshape(len(seqs), k)


def _check_k(k: int, n_minibatches: int, sampling: Sampling) -> None:
    """Section 5.1 needs k >= 2 minibatches; drawn without replacement, no more than the task has."""
    if sampling not in ("iid", "without_replacement"):
        raise ConfigError(f"unknown sampling {sampling!r}; choose 'iid' or 'without_replacement'")
    check_whole("k", k, 2)
    if sampling == "without_replacement" and k > n_minibatches:
        raise ConfigError(f"k = {k} draws without replacement need at least k minibatches, not {n_minibatches}")


def _check_point(problem: MinibatchLosses, phi: Tensor, alpha: float | None = None) -> Tensor:
    """``phi`` as float64 ``[d]``; ``alpha`` a finite step size > 0 (Reptile's gradient divides by it)."""
    if not isinstance(phi, Tensor) or phi.shape != (problem.dim,):
        shape = list(phi.shape) if isinstance(phi, Tensor) else type(phi).__name__
        raise ConfigError(f"phi {shape} must be a tensor of shape [{problem.dim}] (the problem's dimension)")
    if alpha is not None and not (isinstance(alpha, numbers.Real) and 0 < alpha < math.inf):
        raise ConfigError(f"alpha {alpha!r} must be a finite step size > 0")
    return phi.detach().to(torch.float64)


def _all_draws(problem: MinibatchLosses, k: int, sampling: Sampling) -> tuple[Tensor, Tensor]:
    """Task index ``[N]`` and minibatch sequence ``[N, k]`` of every (task, sequence) pair; all equally likely."""
    seqs = minibatch_sequences(problem.n_minibatches, k, sampling)
    task = torch.arange(problem.n_tasks).repeat_interleave(len(seqs))
    return task, seqs.repeat(problem.n_tasks, 1)


# ---------------------------------------------------------------------- the algorithms, as they compute
def _sgd(problem: MinibatchLosses, task: Tensor, seqs: Tensor, phi1: Tensor, alpha: float, steps: int,
         create_graph: bool) -> tuple[list[Tensor], list[Tensor]]:
    """Eqs. (9)-(10) by autograd, one row per draw: iterates [phi_1, ..., phi_steps+1] and gradients
    [g_1, ..., g_steps], each ``[N, d]`` (rows are independent, so the gradient of the summed loss is per row)."""
    phis, grads = [phi1], []
    for i in range(steps):
        loss = problem.loss(task, seqs[:, i], phis[-1]).sum()
        (g,) = torch.autograd.grad(loss, phis[-1], create_graph=create_graph)
        grads.append(g)
        phis.append(phis[-1] - alpha * g)
    return phis, grads


def _leaf(phi: Tensor, n: int) -> Tensor:
    return phi.detach().to(torch.float64).expand(n, -1).clone().requires_grad_(True)


def maml_gradients(problem: MinibatchLosses, task: Tensor, seqs: Tensor, phi: Tensor, alpha: float) -> Tensor:
    """Eq. (17): g_MAML = d/dphi_1 L_k(phi_k), phi_k after k-1 SGD steps, differentiated through them: ``[N, d]``."""
    k = seqs.shape[1]
    phi1 = _leaf(phi, len(task))
    phis, _ = _sgd(problem, task, seqs, phi1, alpha, k - 1, create_graph=True)
    (g,) = torch.autograd.grad(problem.loss(task, seqs[:, k - 1], phis[-1]).sum(), phi1)
    return g.detach()


def fomaml_gradients(problem: MinibatchLosses, task: Tensor, seqs: Tensor, phi: Tensor, alpha: float) -> Tensor:
    """Eq. (38): g_FOMAML = g_k = L'_k(phi_k), the k-th SGD gradient (the inner steps are not differentiated)."""
    k = seqs.shape[1]
    _, grads = _sgd(problem, task, seqs, _leaf(phi, len(task)), alpha, k, create_graph=False)
    return grads[k - 1].detach()


def reptile_gradients(problem: MinibatchLosses, task: Tensor, seqs: Tensor, phi: Tensor, alpha: float) -> Tensor:
    """Eq. (40) (and section 3): g_Reptile = (phi - phi~) / alpha with phi~ = phi_k+1 after k SGD steps."""
    k = seqs.shape[1]
    phi1 = _leaf(phi, len(task))
    phis, _ = _sgd(problem, task, seqs, phi1, alpha, k, create_graph=False)
    return ((phi1 - phis[-1]) / alpha).detach()


_GRADIENTS = {"maml": maml_gradients, "fomaml": fomaml_gradients, "reptile": reptile_gradients}


def per_draw_gradients(problem: MinibatchLosses, phi: Tensor, alpha: float, k: int,
                       sampling: Sampling = "iid") -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Each algorithm's meta-gradient for every (task, minibatch sequence) draw: task ``[N]``, sequences
    ``[N, k]`` and ``{algorithm: [N, d]}``."""
    phi = _check_point(problem, phi, alpha)
    task, seqs = _all_draws(problem, k, sampling)
    return task, seqs, {name: fn(problem, task, seqs, phi, alpha) for name, fn in _GRADIENTS.items()}


def expected_gradients(problem: MinibatchLosses, phi: Tensor, alpha: float, k: int,
                       sampling: Sampling = "iid") -> dict[str, Tensor]:
    """Exact E_tau,1..k[g] of MAML (17), FOMAML (38) and Reptile (40): the mean over all equally likely draws."""
    _, _, grads = per_draw_gradients(problem, phi, alpha, k, sampling)
    return {name: g.mean(0) for name, g in grads.items()}


# ---------------------------------------------------------------------- the paper's series
def avg_grad(problem: MinibatchLosses, phi: Tensor) -> Tensor:
    """Eq. (28): AvgGrad = E_tau,1[gbar_1], the gradient of the expected loss (uniform tasks and minibatches)."""
    return problem.grad(_check_point(problem, phi)).mean((0, 1))


def _pair_weights(m: int, sampling: Sampling, dtype: torch.dtype) -> Tensor:
    """P(minibatch 1 = a, minibatch 2 = b) for one task: ``[m, m]`` (equal for any two positions i != j)."""
    if sampling == "iid":
        return torch.full((m, m), 1.0 / m**2, dtype=dtype)
    if sampling == "without_replacement":
        if m < 2:
            raise ConfigError(f"two draws without replacement need at least 2 minibatches per task, not {m}")
        return (1 - torch.eye(m, dtype=dtype)) / (m * (m - 1))
    raise ConfigError(f"unknown sampling {sampling!r}; choose 'iid' or 'without_replacement'")


def avg_grad_inner(problem: MinibatchLosses, phi: Tensor, sampling: Sampling = "iid", form: int = 29) -> Tensor:
    """AvgGradInner by one of its equal forms: (29) E[Hbar_2 gbar_1], (30) E[Hbar_1 gbar_2], (31) their average,
    or (32) 1/2 E[d/dphi_1 (gbar_1 . gbar_2)] (autograd of the closed-form gradients' inner product)."""
    phi = _check_point(problem, phi)
    m = problem.n_minibatches
    w = _pair_weights(m, sampling, torch.float64)  # w[a, b]: minibatch 1 = a, minibatch 2 = b
    if form == 32:
        p = phi.detach().to(torch.float64).clone().requires_grad_(True)
        g = problem.grad(p)  # [T, m, d]
        inner = torch.einsum("ab,tad,tbd->", w, g, g) / problem.n_tasks
        (d,) = torch.autograd.grad(inner, p)
        return 0.5 * d
    g, H = problem.grad(phi), problem.hessian(phi)
    h2g1 = torch.einsum("ab,tbij,taj->i", w, H, g) / problem.n_tasks  # Hbar_2 gbar_1
    h1g2 = torch.einsum("ab,taij,tbj->i", w, H, g) / problem.n_tasks  # Hbar_1 gbar_2
    if form == 29:
        return h2g1
    if form == 30:
        return h1g2
    if form == 31:
        return 0.5 * (h2g1 + h1g2)
    raise ConfigError(f"AvgGradInner has forms 29-32, not {form}")


def leading_coefficients(k: int) -> dict[str, tuple[float, float]]:
    """(c0, c1) of E[g] = c0 AvgGrad - c1 alpha AvgGradInner + O(alpha^2): MAML (37) (1, 2(k-1)), FOMAML (39)
    (1, k-1), Reptile (41) (k, k(k-1)/2); for k = 2 these are (33)-(35)."""
    check_whole("k", k, 2)
    return {"maml": (1.0, 2.0 * (k - 1)), "fomaml": (1.0, float(k - 1)), "reptile": (float(k), k * (k - 1) / 2)}


@dataclass(frozen=True)
class Series:
    """The paper's leading terms at one phi: AvgGrad (28), AvgGradInner (29) and each algorithm's (c0, c1)."""

    avg_grad: Tensor
    avg_grad_inner: Tensor
    coefficients: dict[str, tuple[float, float]]

    def __call__(self, alpha: float) -> dict[str, Tensor]:
        """The series truncated after the alpha^1 term, c0 AvgGrad - c1 alpha AvgGradInner, per algorithm."""
        return {name: c0 * self.avg_grad - c1 * alpha * self.avg_grad_inner
                for name, (c0, c1) in self.coefficients.items()}


def series(problem: MinibatchLosses, phi: Tensor, k: int, sampling: Sampling = "iid") -> Series:
    """Eqs. (28), (29) and (37)/(39)/(41) at phi for k minibatches."""
    _check_k(k, problem.n_minibatches, sampling)
    return Series(avg_grad(problem, phi), avg_grad_inner(problem, phi, sampling), leading_coefficients(k))


def per_draw_series(problem: MinibatchLosses, task: Tensor, seqs: Tensor, phi: Tensor,
                    alpha: float) -> dict[str, Tensor]:
    """The per-draw expansions before the expectation, truncated after alpha^1: ``{algorithm: [N, d]}``.

    (36) g_MAML    = gbar_k - alpha Hbar_k sum_{j<k} gbar_j - alpha sum_{j<k} Hbar_j gbar_k
    (38) g_FOMAML  = gbar_k - alpha Hbar_k sum_{j<k} gbar_j
    (40) g_Reptile = sum_i gbar_i - alpha sum_i sum_{j<i} Hbar_i gbar_j
    """
    k = seqs.shape[1]
    g_all, H_all = problem.grad(phi), problem.hessian(phi)
    g = g_all[task[:, None], seqs]  # [N, k, d]: gbar_1..gbar_k
    H = H_all[task[:, None], seqs]  # [N, k, d, d]
    before = torch.cumsum(g, 1) - g  # sum_{j<i} gbar_j, [N, k, d]
    h_before = torch.einsum("nkij,nkj->nki", H, before)  # Hbar_i sum_{j<i} gbar_j
    gk = g[:, k - 1]
    fomaml = gk - alpha * h_before[:, k - 1]
    maml = fomaml - alpha * torch.einsum("nkij,nj->ni", H[:, : k - 1], gk)
    reptile = g.sum(1) - alpha * h_before.sum(1)
    return {"maml": maml, "fomaml": fomaml, "reptile": reptile}
