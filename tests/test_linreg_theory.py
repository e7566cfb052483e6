"""Meta-linear regression (trade-off paper, section 4): the task family, closed forms against brute force,
the estimators of eqs. (11)-(12) against gradient descent, Theorem 5 against Monte Carlo."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metagrad.analysis import linreg_theory as lt
from metagrad.config import Config
from metagrad.errors import ConfigError
from metagrad.experiment import make_trainer
from metagrad.tasks import LinearRegression
from metagrad.tradeoff import sample_statistics


def tasks_np(family: LinearRegression, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    theta, sigma2 = family.sample_params(n, torch.Generator().manual_seed(seed))
    return family.covariances(theta).numpy(), theta.numpy(), sigma2.numpy()


def task_risk(theta: np.ndarray, Q: np.ndarray, theta_t: np.ndarray, sigma2: np.ndarray) -> np.ndarray:
    """Eq. (9) per task: 1/2 (theta - theta_t)^T Q_t (theta - theta_t) + sigma_t^2 / 2."""
    d = theta - theta_t
    return 0.5 * np.einsum("ti,tij,tj->t", d, Q, d) + 0.5 * sigma2


def test_the_family_has_a_haar_rotation_and_the_paper_data_model():
    family = LinearRegression(dim=3, shots=4000, query=0, rotation_seed=5)
    V = family.rotation.numpy()
    assert np.allclose(V.T @ V, np.eye(3), atol=1e-12) and np.linalg.det(V) == pytest.approx(1.0)
    assert not np.allclose(V, np.eye(3))  # a real rotation, not the identity
    assert np.array_equal(LinearRegression(dim=1).rotation.numpy(), [[1.0]])
    gen = torch.Generator().manual_seed(0)
    theta, sigma2 = family.sample_params(2, gen)
    batch = family.make(theta, sigma2, gen)
    x, y = batch.support.x.double().numpy(), batch.support.y.double().numpy()[..., 0]
    Q = family.covariances(theta).numpy()
    for t in range(2):  # x ~ N(0, V diag(theta) V^T), y - theta^T x ~ N(0, sigma^2)
        assert np.allclose(x[t].T @ x[t] / 4000, Q[t], atol=0.12)
        resid = y[t] - x[t] @ theta[t].numpy()
        assert resid.var() == pytest.approx(float(sigma2[t]), abs=0.15)
    assert batch.support.x.shape == (2, 4000, 3) and batch.support.y.shape == (2, 4000, 1)


def test_exact_optima_by_hand_for_p_1_and_for_a_discrete_distribution():
    # p = 1, theta ~ U[0, 2]: E[theta^k] = 2^k / (k + 1), so theta*_drs = E[theta^2] / E[theta] = 4/3 and
    # theta*_maml(1/2) = E[theta^2 (1 - theta/2)^2] / E[theta (1 - theta/2)^2] = (2/15) / (1/6) = 0.8
    assert lt.exact_optimum(np.eye(1))[0] == pytest.approx(4 / 3, abs=1e-12)
    assert lt.exact_optimum(np.eye(1), 0.5)[0] == pytest.approx(0.8, abs=1e-12)
    # two equally likely tasks (q, theta) = (1, 1), (2, 2): DRS 5/3; MAML alpha = 1/4: S = 9/16, 1/2
    Q, th = np.array([[[1.0]], [[2.0]]]), np.array([[1.0], [2.0]])
    drs = lt.population_optimum(Q, th, weights=[1, 1])
    maml = lt.population_optimum(Q, th, 0.25, weights=[1, 1])
    assert drs.stderr is None and drs.theta[0] == pytest.approx(5 / 3)
    assert maml.theta[0] == pytest.approx((9 / 16 + 2 * 0.5) / (9 / 16 + 0.5))


@pytest.mark.parametrize(("alpha", "n"), [(0.0, math.inf), (0.4, math.inf), (0.3, 2)])
def test_exact_expected_losses_match_sampled_tasks(alpha, n):
    family = LinearRegression(dim=3, rotation_seed=1)
    Q, th, s2 = tasks_np(family, 200_000, seed=2)
    exact = lt.expected_loss_exact(family.rotation.numpy(), alpha, n)
    W = lt.weight_matrices(Q, alpha, n)
    extra = alpha**2 * np.einsum("tij,tji->t", Q, Q) / n
    for theta in ([0.0, 0.0, 0.0], [1.0, 0.5, 1.5], [2.0, -1.0, 0.3]):
        d = np.asarray(theta) - th
        per_task = 0.5 * np.einsum("ti,tij,tj->t", d, W, d) + 0.5 * s2 * (1 + extra)
        se = per_task.std() / math.sqrt(len(per_task))
        assert abs(exact(np.asarray(theta)) - per_task.mean()) < 4 * se, (theta, exact(np.asarray(theta)))
    sampled = lt.expected_loss_sampled(Q, th, s2, alpha, n)
    assert np.allclose(sampled.M, exact.M, atol=0.01) and np.allclose(sampled.v, exact.v, atol=0.02)


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5])
def test_closed_form_optima_minimise_brute_force_objectives(alpha):
    """Eq. (7) by brute force on sampled tasks: R_drs = E R(theta), R_maml = E R(theta - alpha grad R(theta));
    the closed forms of eq. (10) beat every perturbation, and the Monte-Carlo optimum lies within 4 se."""
    family = LinearRegression(dim=2, rotation_seed=3)
    Q, th, s2 = tasks_np(family, 100_000, seed=4)
    star = lt.exact_optimum(family.rotation.numpy(), alpha)

    def objective(theta: np.ndarray) -> float:
        theta = np.broadcast_to(theta, th.shape)
        adapted = theta - alpha * np.einsum("tij,tj->ti", Q, theta - th)  # one exact gradient step on eq. (9)
        return float(task_risk(adapted, Q, th, s2).mean())

    base = objective(star)
    rng = np.random.default_rng(0)
    for delta in [*np.eye(2) * 0.05, *(-np.eye(2) * 0.05), *rng.normal(size=(6, 2)) * 0.05]:
        assert objective(star + delta) > base
    mc = lt.population_optimum(Q, th, alpha)
    assert np.all(np.abs(mc.theta - star) < 4 * mc.stderr) and np.all(mc.stderr < 0.01)
    assert (not alpha) or np.linalg.norm(star - lt.exact_optimum(family.rotation.numpy())) > 0.05


def test_after_adaptation_loss_matches_monte_carlo_over_adaptation_sets():
    """Theorem 5 with the Gaussian fourth moment: N = 3 fresh points, one step of eq. (12), exact task risk."""
    family = LinearRegression(dim=2, shots=3, query=0, rotation_seed=7)
    alpha, n, T = 0.6, 3, 200_000
    gen = torch.Generator().manual_seed(8)
    theta_t, sigma2 = family.sample_params(T, gen)
    batch = family.make(theta_t, sigma2, gen)
    x, y = batch.support.x.double().numpy(), batch.support.y.double().numpy()[..., 0]
    Q, th, s2 = family.covariances(theta_t).numpy(), theta_t.numpy(), sigma2.numpy()
    V = family.rotation.numpy()
    post, infinite_n = lt.expected_loss_exact(V, alpha, n), lt.expected_loss_exact(V, alpha)
    for theta in (np.array([1.0, 1.0]), np.array([0.3, 1.7])):
        grad = np.einsum("tni,tn->ti", x, x @ theta - y) / n
        risk = task_risk(theta - alpha * grad, Q, th, s2)
        se = risk.std() / math.sqrt(T)
        assert abs(risk.mean() - post(theta)) < 4 * se
        assert abs(risk.mean() - infinite_n(theta)) > 10 * se  # the 1/N term matters: the test can tell
    # before adaptation, on fresh points: 1/2 E (y - theta^T x)^2 = the alpha = 0 closed form
    theta = np.array([0.5, 1.2])
    sq = 0.5 * (y - x @ theta) ** 2
    assert abs(sq.mean() - lt.expected_loss_exact(V)(theta)) < 4 * sq.mean(axis=1).std() / math.sqrt(T)


def test_estimators_equal_gradient_descent_minimisers():
    family = LinearRegression(dim=3, shots=4, query=4, rotation_seed=2)
    batch = family.sample(5, torch.Generator().manual_seed(3)).to(torch.float64)
    x = torch.cat([batch.support.x, batch.query.x], dim=1)  # [M, 2N, p]
    y = torch.cat([batch.support.y, batch.query.y], dim=1)[..., 0]
    alpha, n = 0.3, 4

    def eq11(theta):
        return ((y - x @ theta) ** 2).sum()

    def eq12(theta):
        xs, ys, xq, yq = x[:, :n], y[:, :n], x[:, n:], y[:, n:]
        adapted = theta - alpha / n * torch.einsum("tni,tn->ti", xs, xs @ theta - ys)
        return ((yq - torch.einsum("tni,ti->tn", xq, adapted)) ** 2).sum()

    for objective, closed in ((eq11, lt.drs_estimate(x.numpy(), y.numpy())),
                              (eq12, lt.maml_estimate(x.numpy(), y.numpy(), alpha))):
        theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([theta], lr=1, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15,
                                line_search_fn="strong_wolfe")

        def closure(objective=objective, theta=theta, opt=opt):
            opt.zero_grad()
            loss = objective(theta)
            loss.backward()
            return loss

        opt.step(closure)
        assert np.allclose(theta.detach().numpy(), closed, atol=1e-7), (theta, closed)


@pytest.mark.parametrize("n", [1, 5])
def test_sampled_statistics_have_the_moments_of_gaussian_points(n):
    """X^T X ~ Wishart(Q, N) (Bartlett for N >= p, the points for N < p) and X^T y = X^T X theta + N(0, s^2 X^T X):
    E[X^T X] = N Q and E[b b^T] = N(N+1) Q t t^T Q + N (t^T Q t) Q + s^2 N Q."""
    family = LinearRegression(dim=2, rotation_seed=9)
    V = family.rotation.numpy()
    t, s2, T = np.array([1.5, 0.4]), 0.7, 200_000
    theta = np.broadcast_to(t, (T, 2)).copy()
    W, b = sample_statistics(np.random.default_rng(0), V, theta, np.full(T, s2), n)
    Q = (V * t) @ V.T
    assert np.allclose(W.mean(0), n * Q, rtol=0.02, atol=0.02 * n)
    Qt = Q @ t
    expected = n * (n + 1) * np.outer(Qt, Qt) + n * (t @ Qt) * Q + s2 * n * Q
    assert np.allclose(np.einsum("ti,tj->ij", b, b) / T, expected, rtol=0.03, atol=0.03 * n)


def test_estimators_converge_to_the_population_optima():
    family = LinearRegression(dim=2, rotation_seed=4)
    V, alpha = family.rotation.numpy(), 0.4
    rng = np.random.default_rng(1)

    def estimates(m: int, n: int, datasets: int) -> tuple[np.ndarray, np.ndarray]:
        theta = 2 * rng.random((datasets, m, 2))
        sigma2 = 2 * rng.random((datasets, m))
        Ws, bs = sample_statistics(rng, V, theta, sigma2, n)
        Wq, bq = sample_statistics(rng, V, theta, sigma2, n)
        return lt.drs_from_statistics(Ws + Wq, bs + bq), lt.maml_from_statistics(Ws, bs, Wq, bq, alpha, n)

    drs_star, maml_star = lt.exact_optimum(V), lt.exact_optimum(V, alpha)
    err = {}
    for m, n in ((10, 5), (5000, 2000)):
        drs, maml = estimates(m, n, 20)
        err[m] = (np.linalg.norm(drs - drs_star, axis=-1).mean(), np.linalg.norm(maml - maml_star, axis=-1).mean())
    assert err[5000][0] < 0.01 and err[5000][1] < 0.02
    assert err[5000][0] < err[10][0] / 10 and err[5000][1] < err[10][1] / 10
    # M -> infinity at fixed N: MAML's estimate tends to the minimiser of the Theorem 5 loss at that N
    _, maml = estimates(200_000, 2, 1)
    finite = lt.expected_loss_exact(V, alpha, 2).minimiser()
    assert np.linalg.norm(maml[0] - finite) < 0.02 < np.linalg.norm(finite - maml_star)


def test_singular_systems_and_bad_shapes_raise_clear_errors():
    x = np.ones((1, 2, 3))  # one task, 2 points, p = 3: X^T X has rank 1
    with pytest.raises(lt.SingularSystemError, match=r"eq. \(11\) \(DRS\).* is singular.*more tasks or points"):
        lt.drs_estimate(x, np.ones((1, 2)))
    with pytest.raises(lt.SingularSystemError, match=r"eq. \(12\) \(MAML, alpha=0.1\)"):
        lt.maml_estimate(np.random.default_rng(0).normal(size=(2, 2, 3)), np.ones((2, 2)), 0.1)
    with pytest.raises(lt.MetagradError, match="odd number 3"):
        lt.maml_estimate(np.ones((2, 3, 1)), np.ones((2, 3)), 0.1)
    with pytest.raises(lt.MetagradError, match=r"Q must have shape \[tasks, p, p\]"):
        lt.population_optimum(np.eye(2), np.ones((1, 2)))


def test_linreg_config_trains_towards_the_closed_forms():
    """MAML and DRS trained by stochastic gradient descent (the ordinary Trainer) land on the closed forms:
    DRS on theta*_drs = 4/3; MAML with N = 10 support points on the minimiser of the Theorem 5 loss (1.1)."""
    from metagrad.config import load_config

    targets = {"linreg-drs": 4 / 3, "linreg-maml": lt.expected_loss_exact(np.eye(1), 0.5, 10).minimiser()[0]}
    assert targets["linreg-maml"] == pytest.approx(1.1)
    for preset, target in targets.items():
        cfg = load_config(preset).replace(iterations=1000, checkpoint_every=10_000)
        trainer = make_trainer(cfg, None, progress=False)
        trainer.fit()
        assert float(trainer.learner.model.weight.detach()) == pytest.approx(target, abs=0.03), preset
    with pytest.raises(ConfigError, match="grid and oracle apply to the sinusoid family only"):
        Config(family="linreg", grid=50).validate()
    with pytest.raises(ConfigError, match="dim 0 must be a whole number >= 1"):
        Config(family="linreg", dim=0).validate()


def test_closed_forms_take_float32_rotations_and_scalar_tensors():
    V = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    want = lt.exact_optimum(V, alpha=0.25)
    np.testing.assert_allclose(lt.exact_optimum(V.astype(np.float32), alpha=torch.tensor(0.25)), want, rtol=1e-6)


@pytest.mark.parametrize(("call", "match"), [
    (lambda: lt.expected_loss_exact(np.eye(1), alpha=0.5, n=-1), "n -1 must be a whole number of points >= 1"),
    (lambda: lt.expected_loss_exact(np.eye(1), alpha=0.5, n=0), "n 0 must be a whole number of points >= 1"),
    (lambda: lt.exact_optimum(np.eye(1), alpha=-1.0), "alpha -1.0 must be a finite step size >= 0"),
    (lambda: lt.exact_optimum(np.eye(0)), "rotation of shape \\[0, 0\\] must be a square"),
    (lambda: lt.exact_optimum(np.array([[2.0]])), "rotation must be orthogonal"),
    (lambda: lt.weight_matrices(np.eye(2)[None], alpha=float("nan")), "alpha nan must be a finite step size"),
    (lambda: lt.expected_loss_exact(np.eye(1), noise_range=(-4, -2)), "noise_range \\(-4, -2\\) must be a pair "
                                                                      "\\[low, high\\] of finite numbers >= 0"),
    (lambda: lt.exact_optimum(np.eye(1), 0.0, (-0.5, 2.0)), "theta_range \\(-0.5, 2.0\\) must be a pair .* >= 0"),
    (lambda: lt.exact_optimum(np.eye(1), 0.0, (0.0, 0.0)), "makes every task's input covariance 0"),
    (lambda: lt.expected_loss_exact(np.eye(1), 0.5, 1.5), "n 1.5 must be a whole number of points"),
    (lambda: lt.expected_loss_exact(np.eye(1), theta_range=(0, float("inf"))), "theta_range"),
    (lambda: lt.expected_loss_sampled(np.eye(1)[None], np.ones((1, 1)), sigma2=-np.ones(1)), "sigma2 must hold"),
    (lambda: lt.expected_loss_sampled(-np.eye(1)[None], np.ones((1, 1))), "positive semi-definite"),
    (lambda: lt.expected_loss_sampled(np.array([[[1.0, 5.0], [0.0, 1.0]]]), np.ones((1, 2))), "symmetric"),
    (lambda: lt.maml_from_statistics(*(np.ones((2, 1, 1)), np.ones((2, 1))) * 2, alpha=0.1, n=1.5), "n 1.5 must be"),
    (lambda: lt.maml_from_statistics(*(np.ones((2, 1, 1)), np.ones((2, 1))) * 2, alpha=0.1, n=0), "n 0 must be"),
    (lambda: lt.maml_estimate(np.ones((2, 4, 1)), np.ones((2, 4)), float("nan")), "alpha nan must be"),
])
def test_closed_forms_refuse_what_they_do_not_describe(call, match):
    """Python callers got numbers for these (a negative expected loss for n = -1, a ZeroDivisionError for n = 0, an
    IndexError for a 0 x 0 rotation), where the command line refuses them."""
    with pytest.raises(ConfigError, match=match):
        call()
