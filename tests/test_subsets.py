"""Parameter subsets: frozen parameters are constants, ``adapt`` chooses what the inner loop adapts, and Meta-SGD
learns a step size per inner step. Every meta-gradient is checked in float64 against plain autograd written here
(a hand-written network, ``torch.autograd.grad(create_graph=True)``), not against the engine."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import metagrad as mg
from conftest import sinusoid_batch
from metagrad.config import Config
from metagrad.errors import ConfigError
from metagrad.functional import params_of

LR, TASKS = 0.1, 4

# the paths that map the tasks: per-task loop, vmap, task threads, chunks of tasks, the recomputed backward pass
PATHS = {
    "loop": dict(batching="loop"),
    "vmap": dict(batching="vmap"),
    "threads": dict(batching="loop", threads=2),
    "chunks": dict(batching="loop", task_chunk=2),
    "vmap-chunks": dict(batching="vmap", task_chunk=2),
    "recompute": dict(batching="loop", recompute=True),
    "vmap-recompute": dict(batching="vmap", recompute=True),
}


class Net(nn.Module):
    """A small smooth MLP with named parts: ``body`` (two tanh layers) and ``head`` (linear)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(1, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh())
        self.head = nn.Linear(6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def net() -> Net:
    torch.manual_seed(0)
    return Net().double()


def forward(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``Net`` written out by hand (the reference does not call the engine or ``functional_call``)."""
    h = torch.tanh(x @ p["body.0.weight"].T + p["body.0.bias"])
    h = torch.tanh(h @ p["body.2.weight"].T + p["body.2.bias"])
    return h @ p["head.weight"].T + p["head.bias"]


def reference(model: nn.Module, batch, steps: int, adapt: list[str], lrs: dict[str, torch.Tensor] | None = None,
              first_order: bool = False, lr: float = LR) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The mean query loss after ``steps`` SGD steps on the parameters ``adapt`` of each task's support set, and its
    gradient with respect to the trainable parameters (and to ``lrs``, one step size per step and element, when
    given): plain autograd through the inner steps."""
    theta = {n: p.detach().clone().requires_grad_(p.requires_grad) for n, p in model.named_parameters()}
    leaves = {n: t for n, t in theta.items() if t.requires_grad}
    if lrs is not None:
        lrs = {n: v.detach().clone().requires_grad_() for n, v in lrs.items()}
        leaves.update({f"lr.{n}": v for n, v in lrs.items()})
    total = torch.zeros((), dtype=torch.float64)
    for i in range(batch.num_tasks):
        fast = dict(theta)
        for s in range(steps):
            loss = F.mse_loss(forward(fast, batch.support.x[i]), batch.support.y[i])
            gs = torch.autograd.grad(loss, [fast[n] for n in adapt], create_graph=not first_order)
            for n, g in zip(adapt, gs, strict=True):
                step = lr if lrs is None else lrs[n][min(s, len(lrs[n]) - 1)]
                fast[n] = fast[n] - step * (g.detach() if first_order else g)
        total = total + F.mse_loss(forward(fast, batch.query.x[i]), batch.query.y[i])
    total = total / batch.num_tasks
    names = list(leaves)
    grads = torch.autograd.grad(total, [leaves[n] for n in names])
    return total.detach(), dict(zip(names, grads, strict=True))


def assert_grads(learner: mg.MetaLearner, expected: dict[str, torch.Tensor]) -> None:
    got = {n: p.grad for n, p in learner.model.named_parameters() if p.grad is not None}
    got.update({n: p.grad for n, p in learner.inner.named_parameters() if p.grad is not None})
    assert set(got) == set(expected)
    for n, g in expected.items():
        torch.testing.assert_close(got[n], g, rtol=1e-10, atol=1e-12, msg=n)


HEAD = ["head.weight", "head.bias"]


# ------------------------------------------------------------------------- adapt: ANIL
@pytest.mark.parametrize("first_order", [False, True], ids=["maml", "fomaml"])
@pytest.mark.parametrize("path", list(PATHS))
def test_adapting_the_head_gives_the_autograd_meta_gradient(path, first_order):
    """Second-order (and first-order) MAML, 2 steps, adapting only the head: the meta-gradient of the body (not
    adapted) is d(query loss after adapting only the head)/d(body), through the head's inner gradients."""
    batch, model = sinusoid_batch(tasks=TASKS), net()
    loss, expected = reference(model, batch, 2, HEAD, first_order=first_order)
    learner = mg.MAML(model, inner=mg.SGD(LR), inner_steps=2, adapt=["head"], first_order=first_order,
                      **PATHS[path])
    metrics = learner.meta_gradient(batch)
    assert metrics["meta_loss"] == pytest.approx(float(loss), rel=1e-12)
    assert float(expected["body.0.weight"].abs().max()) > 1e-3  # the body's meta-gradient is not trivially 0
    assert_grads(learner, expected)


def test_adapt_takes_module_and_parameter_names_and_evaluation_adapts_the_same_subset():
    batch = sinusoid_batch(tasks=3)
    _, expected = reference(net(), batch, 1, ["head.weight", "body.2.bias"])
    learner = mg.MAML(net(), inner=mg.SGD(LR), adapt=["head.weight", "body.2.bias"], batching="loop")
    learner.meta_gradient(batch)
    assert_grads(learner, expected)
    curves = learner.adaptation_metrics(batch, steps=2)["loss"]  # evaluation adapts the same subset
    for i in range(batch.num_tasks):
        theta = {n: p.detach() for n, p in learner.model.named_parameters()}
        fast = {n: t.clone().requires_grad_(n in ("head.weight", "body.2.bias")) for n, t in theta.items()}
        for s in range(3):
            q = F.mse_loss(forward(fast, batch.query.x[i]), batch.query.y[i])
            assert float(curves[i, s]) == pytest.approx(float(q.detach()), rel=1e-12)
            loss = F.mse_loss(forward(fast, batch.support.x[i]), batch.support.y[i])
            g = torch.autograd.grad(loss, [fast["head.weight"], fast["body.2.bias"]])
            fast["head.weight"] = (fast["head.weight"] - LR * g[0]).detach().requires_grad_()
            fast["body.2.bias"] = (fast["body.2.bias"] - LR * g[1]).detach().requires_grad_()


# ------------------------------------------------------------------------- frozen parameters
@pytest.mark.parametrize("path", list(PATHS))
def test_a_frozen_parameter_is_a_constant_of_the_meta_gradient(path):
    """MAML with ``body.0`` frozen: not adapted (its inner gradient is not taken), no meta-gradient (grad None), and
    the others' meta-gradient is that of the network in which it is a constant."""
    batch, model = sinusoid_batch(tasks=TASKS), net()
    model.body[0].requires_grad_(False)
    _, expected = reference(model, batch, 2, ["body.2.weight", "body.2.bias", *HEAD])
    learner = mg.MAML(model, inner=mg.SGD(LR), inner_steps=2, **PATHS[path])
    learner.meta_gradient(batch)
    assert_grads(learner, expected)
    assert model.body[0].weight.grad is None and model.body[0].bias.grad is None


def make(algo: str, model: nn.Module, path: dict, adapt: list[str] | None = None) -> mg.MetaLearner:
    kw = dict(inner_steps=2, adapt=adapt, **path)
    if algo in ("maml", "fomaml"):
        return mg.MAML(model, inner=mg.SGD(LR), first_order=algo == "fomaml", **kw)
    if algo == "meta-sgd":
        return mg.MAML(model, inner=mg.SGD([LR, 0.05], learn=True, params=params_of(model)), **kw)
    kw.pop("recompute", None)
    if algo == "reptile":
        return mg.Reptile(model, inner=mg.SGD(LR), inner_batch_size=3, **kw)
    kw["inner_steps"] = 0
    return mg.JointTraining(model, **kw)


FROZEN_CASES = [(algo, path) for algo in ("maml", "fomaml", "meta-sgd", "reptile", "joint")
                for path in ("loop", "vmap", "threads", "chunks", "recompute")
                if not (path == "recompute" and algo in ("reptile", "joint"))]


@pytest.mark.parametrize(("algo", "path"), FROZEN_CASES)
def test_frozen_parameters_stay_frozen_under_adam(algo, path):
    """Three outer Adam steps: the frozen layer is bit-for-bit unchanged and has no .grad, the others move; Meta-SGD
    keeps no step size for it."""
    model = net()
    model.body[0].requires_grad_(False)
    frozen = {n: p.detach().clone() for n, p in model.body[0].named_parameters()}
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    learner = make(algo, model, PATHS[path])
    if algo == "meta-sgd":
        assert {n for n, _ in learner.inner.named_parameters()} == {
            "lr.body__2__weight", "lr.body__2__bias", "lr.head__weight", "lr.head__bias"}
    opt = torch.optim.Adam(learner.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(1)
    for step in range(3):
        opt.zero_grad(set_to_none=False)
        learner.meta_gradient(sinusoid_batch(tasks=TASKS, seed=step), gen)
        assert all(p.grad is None for p in model.body[0].parameters())
        opt.step()
    for n, p in model.body[0].named_parameters():
        assert torch.equal(p, frozen[n])
    for n, p in model.named_parameters():
        if not n.startswith("body.0."):
            assert not torch.equal(p, start[n]), n


@pytest.mark.parametrize("algo", ["maml", "reptile", "meta-sgd"])
def test_a_parameter_frozen_after_a_step_stops_moving_without_zero_grad(algo):
    """Frozen after a meta-step: the ``.grad`` that step wrote is dropped by the next meta-gradient (which replaces
    the others: no zero_grad needed), so the optimizer no longer moves it, nor its learned step sizes (Meta-SGD),
    which are no longer meta-parameters."""
    model = net()
    learner = make(algo, model, PATHS["loop"])
    opt = torch.optim.SGD(learner.parameters(), lr=0.1)
    learner.meta_gradient(sinusoid_batch(tasks=TASKS))
    opt.step()
    model.body[0].requires_grad_(False)
    step_sizes = [p for n, p in learner.inner.named_parameters() if "body__0" in n]
    frozen = [t.detach().clone() for t in (model.body[0].weight, *step_sizes)]
    assert len(step_sizes) == (2 if algo == "meta-sgd" else 0)  # weight and bias (each one row per inner step)
    for seed in (1, 2):
        learner.meta_gradient(sinusoid_batch(tasks=TASKS, seed=seed))
        opt.step()
    for t, before in zip((model.body[0].weight, *step_sizes), frozen, strict=True):
        assert t.grad is None and torch.equal(t, before)


# ------------------------------------------------------------------------- Reptile
@pytest.mark.parametrize("path", ["loop", "vmap", "threads"])
def test_reptile_moves_only_the_adapted_parameters(path):
    """Reptile's direction ``initial - mean(adapted)``: by hand for the head (full-batch SGD on the head alone),
    exactly 0 for the body, which it does not adapt."""
    batch, model = sinusoid_batch(tasks=TASKS), net()
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.warns(UserWarning, match=r"never moves the parameters .* \(body\.0\.weight, body\.0\.bias, "):
        learner = mg.Reptile(model, inner=mg.SGD(LR), inner_steps=3, adapt=["head"], **PATHS[path])
    learner.meta_gradient(batch)
    for n, p in model.named_parameters():
        if n.startswith("body."):
            assert torch.equal(p.grad, torch.zeros_like(p)), n
    moved = {n: torch.zeros_like(theta[n]) for n in HEAD}
    for i in range(batch.num_tasks):
        fast = {n: t.clone().requires_grad_(n in HEAD) for n, t in theta.items()}
        for _ in range(3):
            loss = F.mse_loss(forward(fast, batch.support.x[i]), batch.support.y[i])
            gs = torch.autograd.grad(loss, [fast[n] for n in HEAD])
            for n, g in zip(HEAD, gs, strict=True):
                fast[n] = (fast[n] - LR * g).detach().requires_grad_()
        for n in HEAD:
            moved[n] += fast[n].detach() / batch.num_tasks
    for n in HEAD:
        torch.testing.assert_close(dict(model.named_parameters())[n].grad, theta[n] - moved[n],
                                   rtol=1e-10, atol=1e-12)


def test_reptile_says_nothing_when_what_it_does_not_adapt_is_frozen():
    """The warning is about trainable parameters that would stay put: frozen ones are meant to."""
    model = net()
    model.body.requires_grad_(False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mg.Reptile(model, inner=mg.SGD(LR), inner_steps=3, adapt=["head"])


@pytest.mark.parametrize("path", ["loop", "vmap"])
def test_reptile_leaves_the_parameters_it_does_not_adapt_in_place_in_float32(path):
    """In float32 over 25 tasks the mean of the copies of a fixed parameter is not the parameter; an outer Adam
    would blow that round-off up to whole steps: after training, the body is bit for bit where it started."""
    torch.manual_seed(0)
    model = Net()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.warns(UserWarning, match="get no update from it"):
        learner = mg.Reptile(model, inner=mg.SGD(0.01), inner_steps=5, adapt=["head"], **PATHS[path])
    mg.Trainer(learner, mg.tasks.Sinusoid(shots=10, query=10), torch.optim.Adam(learner.parameters(), 1e-3),
               iterations=3, meta_batch_size=25, progress=False).fit()
    for n, p in model.named_parameters():
        assert torch.equal(p, start[n]) == n.startswith("body."), n  # the body in place, the head moved


# ------------------------------------------------------------------------- Meta-SGD, one step size per step
def learned_lrs(learner: mg.MetaLearner) -> dict[str, torch.Tensor]:
    """Random positive step sizes (a sharper check than equal ones), by parameter name."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in learner.inner.parameters():
            p.copy_(0.02 + 0.1 * torch.rand(p.shape, generator=gen, dtype=p.dtype))
    return {n.removeprefix("lr.").replace("__", "."): p for n, p in learner.inner.named_parameters()}


@pytest.mark.parametrize("first_order", [False, True], ids=["maml", "fomaml"])
@pytest.mark.parametrize("path", ["loop", "vmap", "threads", "recompute", "vmap-recompute"])
def test_meta_sgd_learns_one_step_size_per_inner_step(path, first_order):
    """``SGD([a, b], learn=True)``: a step size per inner step and per element (``lr.<name>`` of shape [2, ...]);
    3 inner steps, the third reuses the second's. Meta-gradients of the model and of every step's step sizes against
    autograd, adapting the head and ``body.2`` (``body.0`` is not adapted and so has no step size)."""
    batch, model = sinusoid_batch(tasks=TASKS), net()
    adapt = ["body.2", "head"]
    inner = mg.SGD([0.1, 0.05], learn=True, params=params_of(model))
    learner = mg.MAML(model, inner=inner, inner_steps=3, adapt=adapt, first_order=first_order, **PATHS[path])
    lrs = learned_lrs(learner)
    assert set(lrs) == {"body.2.weight", "body.2.bias", *HEAD}
    assert lrs["head.weight"].shape == (2, 1, 6)
    _, expected = reference(model, batch, 3, ["body.2.weight", "body.2.bias", *HEAD], lrs=lrs,
                            first_order=first_order)
    learner.meta_gradient(batch)
    expected = {f"lr.{n[3:].replace('.', '__')}" if n.startswith("lr.") else n: g for n, g in expected.items()}
    assert_grads(learner, expected)
    assert float(expected["lr.head__weight"][1].abs().max()) > 1e-4  # the second step size gets a gradient


def test_per_step_step_sizes_start_at_the_schedule():
    lin = nn.Linear(2, 1)
    rule = mg.SGD([0.3, 0.2, 0.1], learn=True, params=dict(lin.named_parameters()))
    assert rule.lr["weight"].shape == (3, 1, 2)
    torch.testing.assert_close(rule.lr["bias"].detach(), torch.tensor([[0.3], [0.2], [0.1]]))
    one = mg.SGD(0.3, learn=True, params=dict(lin.named_parameters()))
    assert one.lr["weight"].shape == (1, 2) and not one.per_step  # one step size: as before, shaped like the weight


def test_step_sizes_saved_for_another_schedule_length_are_refused_in_one_line():
    params = dict(nn.Linear(2, 1).named_parameters())
    saved = mg.SGD([0.1, 0.05], learn=True, params=params).state_dict()
    with pytest.raises(ConfigError, match=r"saved for 2 inner_lr value.*this learner has 1"):
        mg.SGD(0.1, learn=True, params=params).load_state_dict(saved)
    with pytest.raises(ConfigError, match=r"saved for 2 inner_lr value.*this learner has 3"):
        mg.SGD([0.1, 0.05, 0.01], learn=True, params=params).load_state_dict(saved)
    same_length = mg.SGD([0.3, 0.2], learn=True, params=params)
    same_length.load_state_dict(saved)  # the same length: the learned values load (0.1, 0.05 over 0.3, 0.2)
    loaded = same_length.state_dict()
    assert loaded.keys() == saved.keys() and {"lr.weight", "lr.bias"} <= set(saved)
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())
    torch.testing.assert_close(same_length.lr["bias"].detach(), torch.tensor([[0.1], [0.05]]))

# ------------------------------------------------------------------------- errors and config
def test_an_adapt_prefix_that_matches_nothing_names_the_modules():
    with pytest.raises(ConfigError, match=r"adapt 'haed' matches no parameter.*did you mean 'head'.*body, body.0, "
                                          r"body.2, head"):
        mg.MAML(net(), adapt=["haed"])
    with pytest.raises(ConfigError, match="adapt 'bod' matches no parameter"):
        mg.MAML(net(), adapt=["body.0.weight", "bod"])  # prefixes are whole names: 'bod' is not 'body'


def test_an_adapt_prefix_may_name_a_shared_module_by_its_second_name():
    """A module registered twice (``model.alias = model.head``) has its parameters named once, by the first name:
    adapting it by the second name adapts the same parameters (it adapted none, or was refused)."""
    batch = sinusoid_batch(tasks=TASKS)
    grads = {}
    for adapt in (["head"], ["alias"], ["alias.weight", "alias.bias"]):
        model = net()
        model.alias = model.head
        learner = mg.MAML(model, inner=mg.SGD(LR), inner_steps=2, adapt=adapt)
        learner.meta_gradient(batch)
        grads[adapt[0]] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for n, g in grads["head"].items():
        assert torch.equal(grads["alias"][n], g) and torch.equal(grads["alias.weight"][n], g), n


def test_an_adapt_prefix_with_only_frozen_parameters_is_refused():
    model = net()
    model.head.requires_grad_(False)
    with pytest.raises(ConfigError, match="matches only frozen parameters"):
        mg.MAML(model, adapt=["head"])


def test_learned_step_sizes_must_cover_the_adapted_parameters():
    model = net()
    inner = mg.SGD(0.1, learn=True, params={n: p for n, p in params_of(model).items() if n.startswith("body")})
    with pytest.raises(ConfigError, match="no learned inner step size for the adapted parameter"):
        mg.MAML(model, inner=inner, adapt=["head"])


@pytest.mark.parametrize("lr", [0.1, (0.1, 0.05)], ids=["one", "per-step"])
def test_learned_step_sizes_shaped_by_the_learner_equal_those_built_from_the_model(lr):
    """``mg.SGD(lr, learn=True)`` without ``params``: the learner shapes the step sizes from the parameters its inner
    loop adapts (the head only here, the frozen ``body.0`` left out); the meta-gradient, the step sizes' own
    gradients and an outer step equal those of a rule built from the model's parameters."""
    batch = sinusoid_batch(tasks=TASKS)
    grads, steps = [], []
    for given in (True, False):
        model = net()
        model.body[0].requires_grad_(False)
        inner = mg.SGD(lr, learn=True, params=params_of(model) if given else None)
        learner = mg.MAML(model, inner=inner, inner_steps=2, adapt=["head", "body.2"])
        opt = torch.optim.SGD(learner.parameters(), lr=0.1)
        learner.meta_gradient(batch)
        grads.append({n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None})
        opt.step()
        steps.append({n: p.detach().clone() for n, p in learner.named_parameters()})
    assert grads[0].keys() == grads[1].keys() and any(n.startswith("inner.lr.") for n in grads[1])
    assert sorted(n for n in grads[1] if n.startswith("inner.")) == [
        "inner.lr.body__2__bias", "inner.lr.body__2__weight", "inner.lr.head__bias", "inner.lr.head__weight"]
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=0, atol=0)
        torch.testing.assert_close(steps[1][n], steps[0][n], rtol=0, atol=0)


def test_a_learner_shaped_step_size_serves_one_learner():
    """A second learner given the same rule would delete or share the first one's step sizes: refused."""
    inner = mg.SGD(0.1, learn=True)
    mg.MAML(net(), inner=inner, adapt=["head"])
    with pytest.raises(ConfigError, match=r"shaped by another learner.*copy.deepcopy\(inner\)"):
        mg.MAML(net(), inner=inner)


def test_an_unshaped_learned_step_size_says_how_to_shape_it():
    inner = mg.SGD(0.1, learn=True)
    with pytest.raises(ConfigError, match=r"'head.weight': this SGD\(learn=True\) has not been shaped yet; give it "
                                          r"to a learner"):
        inner.step({"head.weight": torch.zeros(2)}, {"head.weight": torch.ones(2)}, None, 0, {})


def test_config_adapt_reaches_the_learner():
    from metagrad.build import build_learner
    from metagrad.config import load_config

    assert load_config("omniglot-anil").adapt == ("classifier",)
    cfg = Config(family="sinusoid", hidden=(8,), iterations=1).replace(adapt="2")  # the MLP's output layer
    assert build_learner(cfg).adapt_prefixes == ("2",)
    assert build_learner(cfg.replace(adapt="")).adapt_prefixes == ()
    with pytest.raises(ConfigError, match=r"adapt 'classifier' matches no parameter.*parameters are: 0, 2"):
        build_learner(cfg.replace(adapt="classifier"))


@pytest.mark.slow
def test_compiled_meta_gradient_keeps_the_subsets():
    """compile=True (tens of seconds of compilation, hence slow): adapting the head with ``body.0`` frozen and
    per-step learned step sizes, against autograd."""
    batch, model = sinusoid_batch(tasks=TASKS), net()
    model.body[0].requires_grad_(False)
    learner = mg.MAML(model, inner=mg.SGD([0.1, 0.05], learn=True, params=params_of(model)), inner_steps=3,
                      adapt=["head"], compile=True)
    lrs = learned_lrs(learner)
    _, expected = reference(model, batch, 3, HEAD, lrs=lrs)
    learner.meta_gradient(batch)
    assert_grads(learner, {f"lr.{n[3:].replace('.', '__')}" if n.startswith("lr.") else n: g
                           for n, g in expected.items()})
    # a .grad given to a frozen parameter is taken away, as the eager path does
    model.body[0].weight.grad = torch.ones_like(model.body[0].weight)
    learner.meta_gradient(batch)
    assert model.body[0].weight.grad is None
    assert_grads(learner, {f"lr.{n[3:].replace('.', '__')}" if n.startswith("lr.") else n: g
                           for n, g in expected.items()})
    # frozen after a step: the parameter and its learned step size lose the .grad that step wrote
    model.head.weight.requires_grad_(False)
    learner.meta_gradient(batch)
    assert model.head.weight.grad is None and learner.inner.lr["head__weight"].grad is None
    assert model.head.bias.grad is not None and learner.inner.lr["head__bias"].grad is not None
    model.requires_grad_(False)  # nothing left to write: the loss alone (the graph copied into no fields)
    assert learner.meta_gradient(batch)["meta_loss"] > 0 and all(p.grad is None for p in model.parameters())
