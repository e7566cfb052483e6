"""Reptile paper, section 5.1 (eqs. 9-41): exact expected MAML / FOMAML / Reptile meta-gradients, computed by running
the SGD steps with autograd in float64 and averaging over every minibatch sequence, against the paper's series
c0 AvgGrad - c1 alpha AvgGradInner ((33)-(35) for k = 2, (37), (39), (41) for general k).

Definitions used (see metagrad.analysis.taylor): a task gives k minibatch losses L_1..L_k drawn from that same task
(i.i.d., or without replacement; either is exchangeable), phi_1 = phi, g_i = L'_i(phi_i) (9),
phi_i+1 = phi_i - alpha g_i (10); g_MAML = d/dphi_1 L_k(phi_k) (17), g_FOMAML = g_k (38),
g_Reptile = (phi - phi~)/alpha = -(phi_k+1 - phi_1)/alpha (40); AvgGrad = E[gbar_1] (28),
AvgGradInner = E[Hbar_2 gbar_1] (29).
"""

from __future__ import annotations

import functools

import pytest
import torch

import metagrad as mg
from metagrad.analysis import taylor as tt
from metagrad.batch import Split, TaskBatch

ALPHAS = (0.02, 0.01, 0.005)
KS = (2, 3, 4)
SAMPLINGS = ("iid", "without_replacement")


@functools.cache
def problem() -> tt.MinibatchLosses:
    return tt.random_problem(n_tasks=3, n_minibatches=4, dim=3, gamma=1.0, seed=0)


@functools.cache
def phi0() -> torch.Tensor:
    return torch.randn(3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@functools.cache
def computed(k: int, sampling: str, alpha: float) -> dict[str, torch.Tensor]:
    return tt.expected_gradients(problem(), phi0(), alpha, k, sampling)


def differences(k: int, sampling: str, coefficients: dict[str, tuple[float, float]] | None = None
                ) -> dict[str, list[float]]:
    """|E[g](alpha) - series truncated after alpha^1| for each algorithm over ALPHAS."""
    s = tt.series(problem(), phi0(), k, sampling)
    if coefficients is not None:
        s = tt.Series(s.avg_grad, s.avg_grad_inner, coefficients)
    out: dict[str, list[float]] = {}
    for a in ALPHAS:
        trunc = s(a)
        for name, g in computed(k, sampling, a).items():
            out.setdefault(name, []).append((g - trunc[name]).norm().item())
    return out


def fitted_coefficients(k: int, sampling: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Model-free (G0, G1) of E[g](alpha) = G0 + G1 alpha + G2 alpha^2 + ..., by interpolating a quadratic through
    the three computed expectations (errors O(alpha^3) and O(alpha^2))."""
    a = torch.tensor(ALPHAS, dtype=torch.float64)
    V = torch.stack([torch.ones_like(a), a, a**2], 1)  # Vandermonde
    out = {}
    for name in tt.ALGORITHMS:
        G = torch.stack([computed(k, sampling, alpha)[name] for alpha in ALPHAS])  # [3, d]
        coef = torch.linalg.solve(V, G)
        out[name] = (coef[0], coef[1])
    return out


def test_closed_form_derivatives_match_autograd():
    """The series is built from the closed-form gbar_i (11) and Hbar_i (12); they must be the true derivatives."""
    p, phi = problem(), phi0()
    g, H = p.grad(phi), p.hessian(phi)
    for t in range(p.n_tasks):
        for b in range(p.n_minibatches):
            x = phi.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(p.loss(torch.tensor([t]), torch.tensor([b]), x[None])[0], x,
                                          create_graph=True)
            hess = torch.stack([torch.autograd.grad(grad[i], x, retain_graph=True)[0] for i in range(p.dim)])
            assert torch.allclose(grad, g[t, b], atol=1e-13)
            assert torch.allclose(hess, H[t, b], atol=1e-13)
            assert torch.allclose(H[t, b], H[t, b].T) and torch.linalg.eigvalsh(H[t, b]).min() > 0


@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_avg_grad_inner_forms_29_to_32_agree(sampling):
    """(29) E[Hbar_2 gbar_1] = (30) E[Hbar_1 gbar_2] = (31) their mean = (32) 1/2 E[d/dphi (gbar_1 . gbar_2)]."""
    forms = [tt.avg_grad_inner(problem(), phi0(), sampling, form) for form in (29, 30, 31, 32)]
    assert forms[0].norm() > 0.1
    for f in forms[1:]:
        assert torch.allclose(f, forms[0], atol=1e-14, rtol=1e-12)


def test_the_algorithms_compute_their_definitions():
    """Per draw: Reptile's (phi - phi~)/alpha = sum_i g_i (40); MAML's autograd gradient equals the chain rule
    product (21) (prod_j (I - alpha L''_j(phi_j))) g_k with closed-form Hessians; FOMAML's equals g_k (38)."""
    p, phi, alpha, k = problem(), phi0(), 0.1, 3
    task, seqs, grads = tt.per_draw_gradients(p, phi, alpha, k)
    for n in range(0, len(task), 7):
        t, seq = int(task[n]), seqs[n].tolist()
        phis, gs = [phi], []
        for b in seq:  # eqs. (9)-(10) with the closed-form gradients
            gs.append(p.grad(phis[-1])[t, b])
            phis.append(phis[-1] - alpha * gs[-1])
        assert torch.allclose(grads["reptile"][n], sum(gs), atol=1e-13)
        assert torch.allclose(grads["fomaml"][n], gs[k - 1], atol=1e-14)
        maml = gs[k - 1]
        for j in reversed(range(k - 1)):
            maml = (torch.eye(3, dtype=torch.float64) - alpha * p.hessian(phis[j])[t, seq[j]]) @ maml
        assert torch.allclose(grads["maml"][n], maml, atol=1e-13)


def test_paper_coefficients_k2_and_general_k():
    """(33)-(35) for k = 2 are (37), (39), (41) at k = 2; the AvgGradInner/AvgGrad weight ratio goes
    MAML > FOMAML > Reptile and grows linearly with k."""
    assert tt.leading_coefficients(2) == {"maml": (1.0, 2.0), "fomaml": (1.0, 1.0), "reptile": (2.0, 1.0)}
    for k in (2, 3, 4, 10):
        c = tt.leading_coefficients(k)
        assert c == {"maml": (1, 2 * (k - 1)), "fomaml": (1, k - 1), "reptile": (k, k * (k - 1) / 2)}
        ratio = {n: c1 / c0 for n, (c0, c1) in c.items()}
        assert ratio["maml"] > ratio["fomaml"] > ratio["reptile"] == (k - 1) / 2


@pytest.mark.parametrize("sampling", SAMPLINGS)
@pytest.mark.parametrize("k", KS)
def test_remainder_after_alpha1_term_is_order_alpha2(k, sampling):
    """|E[g] - (c0 AvgGrad - c1 alpha AvgGradInner)| shrinks 4x per halving of alpha (within 10%, improving), and
    divided by alpha^2 it stays bounded (nearly constant)."""
    for name, d in differences(k, sampling).items():
        ratios = [d[0] / d[1], d[1] / d[2]]
        msg = f"{name} k={k} {sampling}: differences {d}, ratios {ratios}"
        assert all(abs(r / 4 - 1) < 0.10 for r in ratios), msg
        assert abs(ratios[1] - 4) <= abs(ratios[0] - 4) + 1e-6, msg
        scaled = [x / a**2 for x, a in zip(d, ALPHAS, strict=True)]
        assert max(scaled) / min(scaled) < 1.1 and max(scaled) < 10, msg


@pytest.mark.parametrize("k", KS)
def test_wrong_alpha1_weights_leave_order_alpha_remainder(k):
    """Control: with the AvgGradInner weight off by 1/2 (or the AvgGrad weight off by 1), the remainder is no
    longer O(alpha^2): the ratio of successive differences heads for 2 (or 1), far outside the 10% band around 4,
    so the test above does discriminate the coefficients."""
    right = tt.leading_coefficients(k)
    for name, (c0, c1) in right.items():
        d = differences(k, "iid", {**right, name: (c0, c1 + 0.5)})[name]
        assert all(1.9 < r < 2.5 for r in (d[0] / d[1], d[1] / d[2])), (name, d)
        d = differences(k, "iid", {**right, name: (c0 + 1, c1)})[name]
        assert abs(d[1] / d[2] - 1) < 0.01, (name, d)


@pytest.mark.parametrize("sampling", SAMPLINGS)
@pytest.mark.parametrize("k", KS)
def test_fitted_coefficients_are_the_papers(k, sampling):
    """Zeroth and first-order coefficients of the computed E[g](alpha), fitted without using the paper:
    G0 = c0 AvgGrad and G1 = -c1 AvgGradInner, i.e. AvgGradInner enters with a minus sign and weight 2(k-1) (MAML,
    (37)), k-1 (FOMAML, (39)), k(k-1)/2 (Reptile, (41)); G1 has no component outside AvgGradInner."""
    s = tt.series(problem(), phi0(), k, sampling)
    agi = s.avg_grad_inner
    fitted = fitted_coefficients(k, sampling)
    measured_ratio = {}
    for name, (c0, c1) in tt.leading_coefficients(k).items():
        G0, G1 = fitted[name]
        assert torch.allclose(G0, c0 * s.avg_grad, rtol=0, atol=1e-5 * s.avg_grad.norm()), (name, G0)
        weight = -(G1 @ agi) / (agi @ agi)  # the measured weight of -alpha AvgGradInner
        assert weight > 0 and weight == pytest.approx(c1, rel=2e-3), (name, k, sampling, weight.item())
        assert (G1 + weight * agi).norm() < 2e-3 * G1.norm(), (name, G1)
        measured_ratio[name] = weight / (G0 @ s.avg_grad / (s.avg_grad @ s.avg_grad))
    assert measured_ratio["maml"] > measured_ratio["fomaml"] > measured_ratio["reptile"]
    assert measured_ratio["reptile"] == pytest.approx((k - 1) / 2, rel=2e-3)


@pytest.mark.parametrize("k", KS)
def test_per_draw_expansions_36_38_40(k):
    """Before the expectation: each draw's meta-gradient minus (36) / (38) / (40) is O(alpha^2) too."""
    p, phi = problem(), phi0()
    worst: dict[str, list[float]] = {}
    for a in ALPHAS:
        task, seqs, grads = tt.per_draw_gradients(p, phi, a, k)
        approx = tt.per_draw_series(p, task, seqs, phi, a)
        for name in tt.ALGORITHMS:
            worst.setdefault(name, []).append((grads[name] - approx[name]).norm(dim=1).max().item())
    for name, d in worst.items():
        assert all(abs(r / 4 - 1) < 0.1 for r in (d[0] / d[1], d[1] / d[2])), (name, d)


def test_quadratic_losses_make_13_exact_for_two_steps():
    """With gamma = 0 the losses are quadratic, Taylor's theorem (13) has no remainder, and for k = 2 the expansions
    (38) of g_FOMAML = g_2 and (40) of g_Reptile = g_1 + g_2 are exact; MAML's (36) still drops alpha^2 Hbar_1 Hbar_2
    gbar_1, so its remainder is exactly that term."""
    quad = tt.random_problem(gamma=0.0, seed=3)
    phi, a = phi0(), 0.05
    task, seqs, grads = tt.per_draw_gradients(quad, phi, a, 2)
    approx = tt.per_draw_series(quad, task, seqs, phi, a)
    for name in ("fomaml", "reptile"):
        assert torch.allclose(grads[name], approx[name], atol=1e-14)
    g, H = quad.grad(phi), quad.hessian(phi)
    g1, H1, H2 = g[task, seqs[:, 0]], H[task, seqs[:, 0]], H[task, seqs[:, 1]]
    expected = a**2 * torch.einsum("nij,njk,nk->ni", H1, H2, g1)
    assert torch.allclose(grads["maml"] - approx["maml"], expected, atol=1e-14)


def _asymmetric() -> tt.MinibatchLosses:
    p = problem()
    A = p.A.clone()
    A[..., 0, 1] += 1.0
    return tt.MinibatchLosses(A, p.c, p.b, p.u, p.gamma)


@pytest.mark.parametrize("call, words", [
    (_asymmetric, "symmetric"),
    (lambda: tt.random_problem(eig_range=(-1.0, -0.5)), "0 < low <= high"),
    (lambda: tt.random_problem(gamma=-1.0), "gamma -1.0"),
    (lambda: tt.random_problem(n_tasks=0), "n_tasks 0"),
    (lambda: tt.MinibatchLosses(*(x.float() for x in (problem().A, problem().c, problem().b, problem().u))),
     "float64"),
    (lambda: tt.series(tt.random_problem(2, 1, 3), phi0(), 2, "without_replacement"), "at least k minibatches"),
    (lambda: tt.series(problem(), phi0(), 1), "k 1"),
    (lambda: tt.series(problem(), torch.zeros(2, dtype=torch.float64), 2), "shape [3]"),
    (lambda: tt.expected_gradients(problem(), phi0(), -0.01, 2), "alpha -0.01"),
    (lambda: tt.expected_gradients(problem(), phi0(), float("nan"), 2), "alpha nan"),
    (lambda: tt.expected_gradients(problem(), phi0(), 0.01, 2, "bootstrap"), "unknown sampling"),
])
def test_inputs_outside_the_analysis_assumptions_are_refused(call, words):
    """An asymmetric or indefinite A, a float32 problem, k beyond the minibatches drawn without replacement, a bad
    point or step size: each a ConfigError naming it (an asymmetric A made the series miss by 0.23 silently)."""
    from metagrad.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        call()
    assert words in str(e.value), str(e.value)


def test_a_float32_point_gives_the_float64_series():
    expected = tt.series(problem(), phi0(), 2)
    got = tt.series(problem(), phi0().float(), 2)
    assert got.avg_grad.dtype == torch.float64
    torch.testing.assert_close(got.avg_grad, tt.avg_grad(problem(), phi0().float().double()))
    assert torch.allclose(got.avg_grad, expected.avg_grad, atol=1e-6)


# ---------------------------------------------------------------------- through the library's learners
class Point(torch.nn.Module):
    """Section 5.1's model as a module: its one parameter is phi; an "example" is a (task, minibatch) index pair
    whose loss is L_tb(phi) (``minibatch_loss``), so that an inner step on one example is the paper's SGD step."""

    def __init__(self, phi: torch.Tensor):
        super().__init__()
        self.phi = torch.nn.Parameter(phi.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.phi.expand(x.shape[0], -1)


def minibatch_loss(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return problem().loss(y[:, 0], y[:, 1], pred).mean()


def learner_draws(algo: str, k: int, sampling: str, alpha: float, batching: str) -> tuple[torch.Tensor, ...]:
    """Every (task, minibatch sequence) draw as one task of a meta-batch whose support set is that sequence, one
    example per inner minibatch: MAML and FOMAML take k - 1 steps and their outer loss on the k-th minibatch (the
    shared tail), Reptile k steps. The learner's mean meta-gradient (Reptile's ``.grad`` / alpha, its direction
    being phi - phi~), the task of each draw and the sequences in the order the learner took them (it permutes
    each support set: cycling minibatches)."""
    task, seqs = tt._all_draws(problem(), k, sampling)
    support = Split(torch.zeros(len(task), k, 1, dtype=torch.float64),
                       torch.stack([task[:, None].expand(-1, k), seqs], -1))
    batch = TaskBatch(support, support)
    model = Point(phi0())
    kw = dict(loss_fn=minibatch_loss, inner=mg.SGD(alpha), inner_batch_size=1, batching=batching, tail="shared")
    learner = (mg.Reptile(model, inner_steps=k, **kw) if algo == "reptile" else
               mg.MAML(model, inner_steps=k - 1, first_order=algo == "fomaml", **kw)).double()
    mb = learner.training_minibatches(batch, torch.Generator().manual_seed(k))
    learner.meta_gradient(batch, torch.Generator().manual_seed(k))
    grad = model.phi.grad / alpha if algo == "reptile" else model.phi.grad
    return grad, task, seqs.gather(1, mb[:, :, 0])


@pytest.mark.parametrize("batching", ["loop", "vmap"])
@pytest.mark.parametrize("sampling", SAMPLINGS)
@pytest.mark.parametrize("k", (2, 3))
@pytest.mark.parametrize("algo", tt.ALGORITHMS)
def test_the_learners_compute_the_analysed_gradients_and_their_expansions(algo, k, sampling, batching):
    """mg.MAML, first-order MAML and mg.Reptile on section 5.1's model: their meta-gradient is the mean over the
    draws of (17) / (38) / (40) as written in the analysis (float64, to round-off), and it minus the mean of the
    expansions (36) / (38) / (40) over the same draws shrinks 4x per halving of alpha (O(alpha^2))."""
    p, phi = problem(), phi0()
    differences = []
    for a in ALPHAS:
        got, task, drawn = learner_draws(algo, k, sampling, a, batching)
        want = {"maml": tt.maml_gradients, "fomaml": tt.fomaml_gradients,
                "reptile": tt.reptile_gradients}[algo](p, task, drawn, phi, a).mean(0)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-13)
        differences.append((got - tt.per_draw_series(p, task, drawn, phi, a)[algo].mean(0)).norm().item())
    ratios = [differences[0] / differences[1], differences[1] / differences[2]]
    assert all(abs(r / 4 - 1) < 0.1 for r in ratios), (differences, ratios)
