"""The Reptile paper's inner-loop variants (sections 6, 6.2, 6.3), each against a computation written here with plain
autograd or torch.optim, in float64: combinations of the inner gradients, the tail of first-order MAML and Reptile
(shared or separate), minibatches cycled or drawn with replacement, and the inner Adam state carried across tasks;
then resume, the config fields, and the two studies (reproduce/reptile_studies.py) on a tiny synthetic Omniglot."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch.func import functional_call
from torch.nn import functional as F

import metagrad as mg
from conftest import all_ended, cli_error, grads_of, group_killed_after, sinusoid_batch, small_mlp, spawned_workers
from metagrad.cli import main
from metagrad.config import load_config
from metagrad.errors import ConfigError
from metagrad.experiment import load_run, make_trainer
from metagrad.reproduce import reptile_gradients as rg
from metagrad.reproduce import reptile_overlap as ro
from metagrad.reproduce import reptile_studies as rs
from metagrad.tasks import Split

LR = 0.05
PATHS = [("loop", 1, 0), ("vmap", 1, 0), ("loop", 2, 0), ("vmap", 1, 3)]  # (batching, task threads, task chunk)
SAMPLINGS = ["cycle", "replacement"]
Tree = dict[str, torch.Tensor]


# --------------------------------------------------------------------------- plain-autograd references
def loss(model: torch.nn.Module, params: Tree, split: Split) -> torch.Tensor:
    return F.mse_loss(functional_call(model, params, (split.x,)), split.y)


def initial(model: torch.nn.Module) -> Tree:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def select(split: Split, idx: torch.Tensor | None) -> Split:
    return split if idx is None else Split(split.x[idx], split.y[idx])


def sgd_steps(model: torch.nn.Module, p0: Tree, batches: list[Split]) -> tuple[Tree, list[Tree]]:
    """SGD on each minibatch in turn: the final parameters and each step's gradient at that step's parameters."""
    params, grads = p0, []
    for split in batches:
        p = {n: t.detach().requires_grad_() for n, t in params.items()}
        g = dict(zip(p, torch.autograd.grad(loss(model, p, split), list(p.values())), strict=True))
        grads.append(g)
        params = {n: p[n].detach() - LR * g[n] for n in p}
    return params, grads


def maml_gradient(model: torch.nn.Module, p0: Tree, inner: list[Split], outer: Split, first_order: bool) -> Tree:
    """d outer_loss(adapted) / d p0 through SGD steps (the inner gradients held constant when ``first_order``)."""
    start = {n: t.clone().requires_grad_() for n, t in p0.items()}
    p = start
    for split in inner:
        g = torch.autograd.grad(loss(model, p, split), list(p.values()), create_graph=not first_order)
        p = {n: p[n] - LR * (gn.detach() if first_order else gn) for n, gn in zip(p, g, strict=True)}
    return dict(zip(start, torch.autograd.grad(loss(model, p, outer), list(start.values())), strict=True))


def meta_grad(learner: mg.MetaLearner, batch, seed: int) -> tuple[Tree, torch.Tensor | None]:
    """The learner's meta-gradient (``.grad``) and the minibatch indices it drew with ``seed``."""
    mb = learner.training_minibatches(batch, torch.Generator().manual_seed(seed))
    learner.zero_grad(set_to_none=True)
    learner.meta_gradient(batch, torch.Generator().manual_seed(seed))
    return grads_of(learner.model), mb


def assert_trees_close(got: Tree, want: Tree) -> None:
    assert got.keys() == want.keys()
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-9, atol=1e-12)


def mean_over_tasks(parts: list[Tree]) -> Tree:
    return {n: torch.stack([p[n] for p in parts]).mean(0) for n in parts[0]}


# --------------------------------------------------------------------------- 6.2: inner-gradient combinations
COMBINATIONS = [(1.0,), (0.0, 1.0), (1.0, 1.0), (0.5, 0.5), (0.0, 0.0, 1.0), (1.0, 1.0, 1.0), (1 / 3, 1 / 3, 1 / 3),
                (0.0, 0.0, 0.0, 1.0), (1.0, 1.0, 1.0, 1.0), (0.25, 0.25, 0.25, 0.25), (0.3, -0.2, 1.5)]


@pytest.mark.parametrize(("batching", "threads", "chunk"), PATHS)
@pytest.mark.parametrize("sampling", SAMPLINGS)
@pytest.mark.parametrize("weights", COMBINATIONS, ids=lambda w: ",".join(f"{x:.2g}" for x in w))
def test_combination_is_the_weighted_sum_of_the_inner_gradients(weights, sampling, batching, threads, chunk):
    """``combination=w``: the outer update is sum_i w_i * lr * g_i over the tasks' mean, g_i the gradient of minibatch
    i's loss at the parameters of step i (g1: joint training; g_k: k-step FOMAML; sums and averages: Reptile)."""
    k = len(weights)
    model = small_mlp().double()
    learner = mg.Reptile(model, inner=mg.SGD(LR), inner_steps=k, inner_batch_size=3, combination=weights,
                         inner_sampling=sampling, batching=batching, threads=threads, task_chunk=chunk).double()
    batch = sinusoid_batch(tasks=4, shots=12)
    p0 = initial(model)
    got, mb = meta_grad(learner, batch, seed=7)
    parts = []
    for i in range(batch.num_tasks):
        task = batch.task(i)
        _, grads = sgd_steps(model, p0, [select(task.support, mb[i, s]) for s in range(k)])
        parts.append({n: sum(w * LR * g[n] for w, g in zip(weights, grads, strict=True)) for n in p0})
    assert_trees_close(got, mean_over_tasks(parts))


def test_all_ones_is_reptile():
    model = small_mlp().double()
    batch = sinusoid_batch(tasks=3, shots=12)
    kw = dict(inner=mg.SGD(LR), inner_steps=3, inner_batch_size=4)
    plain, _ = meta_grad(mg.Reptile(model, **kw).double(), batch, seed=1)
    ones, _ = meta_grad(mg.Reptile(model, combination=(1, 1, 1), **kw).double(), batch, seed=1)
    assert_trees_close(ones, plain)


# --------------------------------------------------------------------------- 6.3: tails and minibatch sampling
@pytest.mark.parametrize(("batching", "threads", "chunk"), PATHS)
@pytest.mark.parametrize("sampling", SAMPLINGS)
@pytest.mark.parametrize("tail", ["separate", "shared"])
@pytest.mark.parametrize("first_order", [True, False], ids=["fomaml", "maml"])
def test_maml_tail_is_the_outer_loss_data(first_order, tail, sampling, batching, threads, chunk):
    """Separate tail: the outer loss on the query set (as always). Shared tail: on the minibatch drawn after the inner
    steps' ones from the support set, so that it overlaps them once the support set is used up."""
    steps = 2
    model = small_mlp().double()
    learner = mg.MAML(model, inner=mg.SGD(LR), inner_steps=steps, inner_batch_size=4, first_order=first_order,
                      tail=tail, inner_sampling=sampling, batching=batching, threads=threads,
                      task_chunk=chunk).double()
    batch = sinusoid_batch(tasks=4, shots=12)
    p0 = initial(model)
    got, mb = meta_grad(learner, batch, seed=3)
    assert mb.shape[1] == steps + (tail == "shared")
    parts = []
    for i in range(batch.num_tasks):
        task = batch.task(i)
        outer = select(task.support, mb[i, steps]) if tail == "shared" else task.query
        parts.append(maml_gradient(model, p0, [select(task.support, mb[i, s]) for s in range(steps)], outer,
                                   first_order))
    assert_trees_close(got, mean_over_tasks(parts))


@pytest.mark.parametrize("first_order", [True, False], ids=["fomaml", "maml"])
def test_shared_tail_with_full_batch_steps_is_the_support_set_and_recompute_agrees(first_order):
    model = small_mlp().double()
    batch = sinusoid_batch(tasks=3, shots=6)
    kw = dict(inner=mg.SGD(LR), inner_steps=2, first_order=first_order, tail="shared")
    got, mb = meta_grad(mg.MAML(model, **kw).double(), batch, seed=0)
    assert mb is None
    p0 = initial(model)
    want = mean_over_tasks([maml_gradient(model, p0, [batch.task(i).support] * 2, batch.task(i).support, first_order)
                            for i in range(batch.num_tasks)])
    assert_trees_close(got, want)
    minibatched = dict(kw, inner_batch_size=4)
    direct, _ = meta_grad(mg.MAML(model, **minibatched).double(), batch, seed=2)
    recomputed, _ = meta_grad(mg.MAML(model, recompute=True, **minibatched).double(), batch, seed=2)
    assert_trees_close(recomputed, direct)


@pytest.mark.parametrize(("batching", "threads", "chunk"), PATHS)
@pytest.mark.parametrize("sampling", SAMPLINGS)
@pytest.mark.parametrize("weights", [None, (0.0, 0.0, 1.0), (1.0, 0.5, 0.25)], ids=["reptile", "foml", "mixed"])
@pytest.mark.parametrize("tail", ["shared", "separate"])
def test_reptile_tail_is_the_last_inner_steps_data(tail, weights, sampling, batching, threads, chunk):
    """Reptile's (and the reference code's FOMAML, ``combination`` (0, .., 0, 1)) last inner step on the support
    set like the others (shared), or on the query set after steps on the support set alone (separate)."""
    steps = 3
    model = small_mlp().double()
    learner = mg.Reptile(model, inner=mg.SGD(LR), inner_steps=steps, inner_batch_size=4, tail=tail,
                         combination=weights, inner_sampling=sampling, batching=batching, threads=threads,
                         task_chunk=chunk).double()
    batch = sinusoid_batch(tasks=4, shots=12)
    p0 = initial(model)
    got, mb = meta_grad(learner, batch, seed=5)
    separate = tail == "separate"
    assert mb.shape[1] == steps - separate
    parts = []
    for i in range(batch.num_tasks):
        task = batch.task(i)
        data = [select(task.support, mb[i, s]) for s in range(steps - separate)] + ([task.query] if separate else [])
        adapted, grads = sgd_steps(model, p0, data)
        parts.append({n: p0[n] - adapted[n] for n in p0} if weights is None else
                     {n: sum(w * LR * g[n] for w, g in zip(weights, grads, strict=True)) for n in p0})
    assert_trees_close(got, mean_over_tasks(parts))


VARIANTS = {"reptile-mixed-separate": (mg.Reptile, dict(combination=(1.0, 0.5, 0.25), tail="separate")),
            "fomaml-shared-replacement": (mg.MAML, dict(first_order=True, tail="shared", inner_sampling="replacement")),
            "maml-shared": (mg.MAML, dict(tail="shared"))}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_compiled_variants_equal_the_per_task_loop(variant):
    """compile=True (the whole meta-gradient compiled) on the section 6.2-6.3 variants gives the loop's numbers."""
    kind, kw = VARIANTS[variant]
    model = small_mlp().double()
    batch = sinusoid_batch(tasks=4, shots=12)
    make = lambda **path: kind(model, inner=mg.SGD(LR), inner_steps=3, inner_batch_size=4, **kw, **path).double()  # noqa: E731
    want, _ = meta_grad(make(batching="loop"), batch, seed=4)
    got, _ = meta_grad(make(batching="vmap", compile=True), batch, seed=4)
    assert_trees_close(got, want)


def test_cycle_and_replacement_minibatches():
    """Cycle: consecutive epochs of permutations (no overlap until the support set is used up; bit for bit the
    indices drawn before the option existed). Replacement: each minibatch distinct examples, drawn anew, so that the
    minibatches of one inner loop overlap."""
    model = small_mlp()
    tasks, size, steps, b = 40, 12, 7, 4
    cycle = mg.Reptile(model, inner_steps=1).minibatch_indices(tasks, size, steps, b, torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    before = torch.rand(tasks, 3, size, generator=gen).argsort(-1).reshape(tasks, -1)[:, :steps * b]
    assert torch.equal(cycle, before.reshape(tasks, steps, b))
    flat = cycle.reshape(tasks, -1)
    for epoch in (flat[:, :size], flat[:, size:2 * size]):
        assert torch.equal(epoch.sort(-1).values, torch.arange(size).expand(tasks, -1))
    learner = mg.Reptile(model, inner_steps=1, inner_sampling="replacement")
    drawn = learner.minibatch_indices(tasks, size, steps, b, torch.Generator().manual_seed(0))
    assert drawn.shape == (tasks, steps, b) and drawn.min() >= 0 and drawn.max() < size
    assert (drawn.sort(-1).values.diff(dim=-1) > 0).all()  # distinct within a minibatch
    first_epoch = drawn[:, :3].reshape(tasks, -1).sort(-1).values
    assert (first_epoch.diff(dim=-1) == 0).any()  # three minibatches of 4 of 12 examples overlap somewhere
    assert learner.minibatch_indices(tasks, size, steps, size, None) is None  # full batch either way


# --------------------------------------------------------------------------- section 6: the carried inner Adam
CARRIED = {"reptile": ("reptile", {}), "fomaml": ("fomaml", {}),
           "reptile-last-step-separate": ("reptile", dict(combination=(0.0, 0.0, 1.0), tail="separate")),
           "reptile-mixed-replacement": ("reptile", dict(combination=(1.0, 0.5, 0.25), inner_sampling="replacement")),
           "fomaml-shared-tail": ("fomaml", dict(tail="shared")),
           "fomaml-shared-tail-replacement": ("fomaml", dict(tail="shared", inner_sampling="replacement"))}


@pytest.mark.parametrize("case", list(CARRIED))
def test_carried_adam_is_one_adam_run_over_the_tasks_in_order(case):
    """One torch.optim.Adam (beta1 = 0), never reset, stepping through every task's minibatches in order across
    meta-iterations (the model reset to the initialization for each task): the learner's parameters after each
    outer step and its carried moments and step count equal it; with Figure 4's combinations and tails too (the
    weighted steps' updates; Reptile's separate last step on the query set; FOMAML's shared tail as its outer loss)."""
    algo, variant = CARRIED[case]
    eps, tasks, steps = 0.5, 3, 3
    model = small_mlp().double()
    kw = dict(inner=mg.Adam(LR), inner_steps=steps, inner_batch_size=4, inner_state="carried", **variant)
    learner = (mg.Reptile(model, **kw) if algo == "reptile" else mg.FOMAML(model, **kw)).double()
    separate, weights = variant.get("tail", "separate" if algo == "fomaml" else "shared") == "separate", \
        variant.get("combination", (1.0,) * steps)
    outer = torch.optim.SGD(learner.parameters(), lr=eps)
    clone = copy.deepcopy(model)
    adam = torch.optim.Adam(clone.parameters(), lr=LR, betas=(0.0, 0.999), eps=1e-8)
    phi = initial(model)
    for it in range(3):
        batch = sinusoid_batch(tasks=tasks, shots=12, seed=it)
        mb = learner.training_minibatches(batch, torch.Generator().manual_seed(it))
        outer.zero_grad()
        learner.meta_gradient(batch, torch.Generator().manual_seed(it))
        outer.step()
        parts = []
        for i in range(tasks):
            task = batch.task(i)
            with torch.no_grad():
                for n, p in clone.named_parameters():
                    p.copy_(phi[n])
            data = [select(task.support, mb[i, s]) for s in range(mb.shape[1])]
            if algo == "reptile":  # its last step on the query set when separate
                inner, tail = [*data, task.query] if separate else data, None
            else:  # FOMAML's outer loss on the query set, or on the minibatch after the inner steps' (shared)
                inner, tail = data[:steps], task.query if separate else data[steps]
            assert len(inner) == steps
            path = [initial(clone)]
            for split in inner:
                adam.zero_grad()
                F.mse_loss(clone(split.x), split.y).backward()
                adam.step()
                path.append(initial(clone))
            if algo == "reptile":
                parts.append({n: sum(w * (path[s][n] - path[s + 1][n]) for s, w in enumerate(weights)) for n in phi})
            else:
                clone.zero_grad()
                F.mse_loss(clone(tail.x), tail.y).backward()
                parts.append({n: p.grad.detach().clone() for n, p in clone.named_parameters()})
        update = mean_over_tasks(parts)
        phi = {n: phi[n] - eps * update[n] for n in phi}
        assert_trees_close(initial(model), phi)
    m, v, t = learner.start_state(learner.inner)
    assert t == 3 * tasks * steps
    for n, p in clone.named_parameters():
        assert int(adam.state[p]["step"]) == t
        torch.testing.assert_close(m[n], adam.state[p]["exp_avg"], rtol=1e-9, atol=1e-14)
        torch.testing.assert_close(v[n], adam.state[p]["exp_avg_sq"], rtol=1e-9, atol=1e-14)


def test_evaluation_starts_from_the_carried_state_and_leaves_it_unchanged():
    model = small_mlp().double()
    learner = mg.Reptile(model, inner=mg.Adam(LR), inner_steps=3, inner_batch_size=4, inner_state="carried").double()
    outer = torch.optim.SGD(learner.parameters(), lr=0.5)
    for it in range(2):
        outer.zero_grad()
        learner.meta_gradient(sinusoid_batch(tasks=3, shots=12, seed=it), torch.Generator().manual_seed(it))
        outer.step()
    saved = {k: v.clone() for k, v in learner.carried.state_dict().items()}
    batch = sinusoid_batch(tasks=5, shots=6, seed=9)
    first = learner.adaptation_metrics(batch, 2)["loss"]
    assert torch.equal(learner.adaptation_metrics(batch, 2)["loss"], first)  # each task from the same state
    assert all(torch.equal(saved[k], v) for k, v in learner.carried.state_dict().items())
    _, v, t = learner.start_state(learner.inner)
    p0 = initial(model)
    for i in range(batch.num_tasks):  # one Adam step (beta1 = 0) continued from the carried moments
        task = batch.task(i)
        p = {n: x.clone().requires_grad_() for n, x in p0.items()}
        g = dict(zip(p, torch.autograd.grad(loss(model, p, task.support), list(p.values())), strict=True))
        c2 = 1 - 0.999 ** (t + 1)
        step = {n: p0[n] - LR * g[n] / (((0.999 * v[n] + 0.001 * g[n] ** 2) / c2).sqrt() + 1e-8) for n in p0}
        torch.testing.assert_close(first[i, 1], loss(model, step, task.query), rtol=1e-9, atol=1e-12)
    fresh = mg.Reptile(copy.deepcopy(model), inner=mg.Adam(LR), inner_steps=3).double()
    assert not torch.allclose(fresh.adaptation_metrics(batch, 2)["loss"][:, 1], first[:, 1])
    assert learner.start_state(mg.SGD(0.1)) is None  # another kind of rule at evaluation starts fresh


def test_carried_state_is_refused_where_it_cannot_apply():
    model = small_mlp()
    with pytest.raises(ConfigError, match="state to carry"):
        mg.Reptile(model, inner=mg.SGD(0.1), inner_steps=2, inner_state="carried")
    with pytest.raises(ConfigError, match="second-order"):
        mg.MAML(model, inner=mg.Adam(0.1), inner_state="carried")
    learner = mg.Reptile(model, inner=mg.Adam(0.1), inner_steps=2, inner_state="carried")
    batch = sinusoid_batch(tasks=4, dtype=torch.float32)
    with pytest.raises(ConfigError, match="torchrun"):
        learner.meta_gradient(batch, torch.Generator().manual_seed(0), shard=slice(0, 2))
    learner.meta_gradient(batch, torch.Generator().manual_seed(0), shard=slice(0, 4))  # one process: all of it
    with pytest.raises(ConfigError, match="inner_state"):
        mg.Reptile(model, inner_steps=2, inner_state="kept")
    with pytest.raises(ConfigError, match="inner_sampling"):
        mg.Reptile(model, inner_steps=2, inner_sampling="shuffle")
    with pytest.raises(ConfigError, match="one weight per inner step"):
        mg.Reptile(model, inner_steps=2, combination=(1.0,))
    with pytest.raises(ConfigError, match="tail"):
        mg.MAML(model, tail="overlap")


@pytest.mark.parametrize("change", ["freeze", "unfreeze"])
def test_a_carried_state_refuses_parameters_frozen_or_unfrozen_after_it_was_made(change):
    """The carried moments are per adapted parameter: one frozen or unfrozen after the learner was built is refused
    in one line, by training and evaluation alike (unfrozen, it was a bare KeyError), the state left as it was."""
    model = small_mlp()
    weight = next(model.parameters())
    if change == "unfreeze":
        weight.requires_grad_(False)
    learner = mg.Reptile(model, inner=mg.Adam(0.01), inner_steps=2, inner_state="carried")
    batch = sinusoid_batch(tasks=3, dtype=torch.float32)
    saved = {k: v.clone() for k, v in learner.carried.state_dict().items()}
    weight.requires_grad_(change == "unfreeze")
    for call in (lambda: learner.meta_gradient(batch, torch.Generator().manual_seed(0)),
                 lambda: learner.adaptation_metrics(batch, 1)):
        with pytest.raises(ConfigError, match=r"carried state was made for other parameters.*build the learner after"):
            call()
    assert all(torch.equal(saved[k], v) for k, v in learner.carried.state_dict().items())
    weight.requires_grad_(change == "freeze")  # as built: it goes on
    learner.meta_gradient(batch, torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------- runs: resume and config
def _config(**kw):
    return load_config("sinusoid-reptile").replace(**{
        "inner_optimizer": "adam", "inner_lr": (0.01,), "inner_state": "carried", "iterations": 12,
        "meta_batch_size": 3, "checkpoint_every": 4, "val_every": 4, "val_tasks": 5, "log_every": 2, **kw})


@pytest.mark.parametrize("changes", [{}, {"algo": "fomaml", "tail": "shared", "inner_sampling": "replacement"},
                                     {"combination": (0.0, 0.5, 1.0, 0.5, 0.25), "tail": "separate"}],
                         ids=["reptile", "fomaml-shared-replacement", "combination-separate"])
def test_resume_with_a_carried_state_equals_an_uninterrupted_run(tmp_path, changes):
    cfg = _config(**changes)
    straight = make_trainer(cfg, tmp_path / "straight", progress=False)
    straight.fit()
    first = make_trainer(cfg, tmp_path / "split", progress=False,
                         on_iteration=lambda t, i, m: t.request_stop() if i == 6 else None)
    assert first.fit().iteration == 6
    second = make_trainer(cfg, tmp_path / "split", progress=False)
    second.fit(resume=True)
    a, b = straight.learner.state_dict(), second.learner.state_dict()
    assert any(k.startswith("carried.") for k in a) and int(a["carried.t"]) > 0
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def lines(run: str) -> list[dict]:
        rows = [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "elapsed"} for r in rows]

    assert lines("split") == lines("straight")


def test_config_fields_defaults_and_checks():
    default = load_config("sinusoid-maml")
    assert (default.inner_sampling, default.inner_state, default.tail, default.combination) == ("cycle", "fresh", "",
                                                                                                 ())
    learner = make_trainer(default, None, progress=False).learner
    assert learner.carried is None and learner.tail == "separate" and learner.inner_sampling == "cycle"
    assert not any(k.startswith("carried") for k in learner.state_dict())
    for preset in ("omniglot-reptile", "omniglot-reptile-20way", "miniimagenet-reptile"):
        assert load_config(preset).inner_state == "carried"  # the paper's Adam
    assert load_config("sinusoid-reptile").inner_state == "fresh"  # SGD: nothing to carry
    reptile = make_trainer(load_config("sinusoid-reptile").replace(combination=(0, 0, 0, 0, 1), tail="separate"),
                           None, progress=False).learner
    assert reptile.combination == (0, 0, 0, 0, 1) and reptile.tail == "separate"
    for bad, match in [({"inner_state": "carried"}, "inner_optimizer adam"),
                       ({"inner_state": "carried", "inner_optimizer": "adam", "algo": "maml"}, "reptile or fomaml"),
                       ({"combination": (1.0, 2.0), "algo": "reptile"}, "one finite weight per inner step"),
                       ({"combination": (1.0,), "algo": "maml"}, "needs algo reptile"),
                       ({"tail": "shared", "algo": "joint"}, "leave it empty for joint"),
                       ({"tail": "both"}, "unknown tail"), ({"inner_sampling": "random"}, "unknown inner_sampling")]:
        with pytest.raises(ConfigError, match=match):
            default.replace(**bad)


# --------------------------------------------------------------------------- the studies
@pytest.fixture
def tiny_omniglot(tmp_path, monkeypatch):
    from images_fixtures import fake_omniglot

    monkeypatch.setenv("METAGRAD_CACHE", str(tmp_path / "cache"))
    return fake_omniglot(tmp_path / "om", alphabets=2, characters=4)  # 16 characters: 11 / 1 / 4


def test_gradient_study_runs_every_combination_and_resumes(tmp_path, tiny_omniglot, monkeypatch):
    monkeypatch.setattr(rg, "DEFAULT_GRADIENTS", rs.Budget(iterations=2, eval_tasks=2, curve_points=1))
    out = tmp_path / "results"
    result = rg.run_gradients(out, full=False, iterations=None, progress=False, data_root=str(tiny_omniglot))
    assert set(result["runs"]) == set(rg.COMBINATIONS)
    for name, run in result["runs"].items():
        assert run["weights"] == list(rg.COMBINATIONS[name])
        assert [c[0] for c in run["curve"]] == [0, 2] and 0 <= run["final"][0] <= 1
    assert len(result["findings"]) == len(rg.PAPER_GRADIENTS)
    saved = json.loads((out / "reptile-gradients.json").read_text())
    assert saved["runs"].keys() == result["runs"].keys()
    table = (out / "reptile-gradients.md").read_text()
    assert "| g1+..+g4 | 1, 1, 1, 1 | 20 |" in table and "quite ineffective" in table
    assert (out / "reptile-gradients.png").read_bytes()[:4] == b"\x89PNG"
    again = rg.run_gradients(out, full=False, iterations=None, progress=False, data_root=str(tiny_omniglot))
    assert {n: r["final"] for n, r in again["runs"].items()} == {n: r["final"] for n, r in result["runs"].items()}


def test_a_study_run_is_not_continued_outside_its_study(tmp_path, tiny_omniglot, monkeypatch, capsys):
    """A Reptile run of the studies trains on all 20 drawings per class, which its config (19 + 1) cannot say:
    ``metagrad train --resume`` on its folder refuses, naming the tasks and the study's command."""
    monkeypatch.setattr(ro, "DEFAULT_OVERLAP", rs.Budget(iterations=2, eval_tasks=2, curve_points=1,
                                                         sweeps={"4a": (5,)}))
    ro.run_overlap(tmp_path, progress=False, data_root=str(tiny_omniglot))
    runs = {p.parent.name: p.parent for p in tmp_path.rglob("reptile-study.json")}
    assert len(runs) == len(ro.METHODS) * len(ro.SAMPLINGS)
    reptile = runs["reptile-cycle-5"]
    assert json.loads((reptile / "reptile-study.json").read_text())["tasks"] == \
        "20 drawings per class in the support set, the query set one of them"
    before = (reptile / "last.json").read_text()
    assert main(["train", "--resume", "--out", str(reptile), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "a run of the reptile-overlap study (its training tasks: 20 drawings per class" in err
    assert "metagrad reproduce reptile-overlap" in err
    assert (reptile / "last.json").read_text() == before
    mark = json.loads((reptile / "reptile-study.json").read_text())
    monkeypatch.setattr(rs.provenance, "command", lambda: "metagrad reproduce reptile-overlap --another-call")
    ro.run_overlap(tmp_path, progress=False, data_root=str(tiny_omniglot))  # finds the finished runs
    assert json.loads((reptile / "reptile-study.json").read_text()) == mark  # the mark of the command that trained it


def test_overlap_study_runs_every_method_and_sampling(tmp_path, tiny_omniglot, monkeypatch):
    sweeps = {"4a": (5,), "4c": (1.0,)}  # 4b differs from 4a only in the swept argument
    monkeypatch.setattr(ro, "DEFAULT_OVERLAP", rs.Budget(iterations=5, eval_tasks=2, curve_points=1, sweeps=sweeps))
    out = tmp_path / "results"
    result = ro.run_overlap(out, full=False, iterations=1, progress=False, data_root=str(tiny_omniglot))
    assert result["budget"]["iterations"] == 1
    assert set(result["panels"]) == set(sweeps)
    for panel, p in result["panels"].items():  # 4c: batches of 100 take the whole support set, cycling only
        samplings = ro.SAMPLINGS if panel != "4c" else ("cycle",)
        assert set(p["runs"]) == {f"{m}, {s}" for m in ro.METHODS for s in samplings}
        assert all([q["value"] for q in pts] == list(sweeps[panel]) for pts in p["runs"].values())
    table = (out / "reptile-overlap.md").read_text()
    assert "| fomaml-shared, cycle |" in table and "shared-tail FOMAML (cycle) degrades" in table
    assert [f["verdict"].split(":")[0] for f in result["findings"][:3]] == ["not checked"] * 3  # 4a only at 5
    assert (out / "reptile-overlap.png").read_bytes()[:4] == b"\x89PNG"
    learner, cfg, _ = load_run(out / "reptile-overlap" / "4a" / "fomaml-separate-cycle-5")
    assert cfg.combination == (0.0, 0.0, 0.0, 0.0, 1.0) and cfg.tail == "separate"
    assert cfg.inner_state == "carried" and int(learner.carried.t) == 5  # one task: 4 steps, then the tail's


def test_the_command_line_seed_and_test_tasks_reach_every_run_of_a_study(tmp_path, tiny_omniglot, monkeypatch):
    monkeypatch.setattr(ro, "DEFAULT_OVERLAP", rs.Budget(iterations=1, eval_tasks=2, curve_points=1,
                                                         sweeps={"4a": (2,)}))
    out = tmp_path / "results"
    assert main(["reproduce", "reptile-overlap", "--seed", "5", "--eval-tasks", "3", "--data-root",
                 str(tiny_omniglot), "--out", str(out), "--no-progress"]) == 0
    result = json.loads((out / "reptile-overlap.json").read_text())
    assert (result["budget"]["seed"], result["budget"]["eval_tasks"]) == (5, 3)
    assert "on 3 test tasks" in (out / "reptile-overlap.md").read_text()
    _, cfg, _ = load_run(out / "reptile-overlap" / "4a" / "reptile-cycle-2")
    assert (cfg.seed, cfg.eval_tasks) == (5, 3)


def test_download_reaches_the_studies_config(monkeypatch, tmp_path):
    """A missing Omniglot suggests --download; the studies take it (and fetch once, before their workers)."""
    seen = {}
    monkeypatch.setattr(rg, "map_runs",
                        lambda fn, work, base, jobs: seen.setdefault("base", base) and [None] * len(work))
    monkeypatch.setattr(rg, "write_study", lambda *a: {})
    assert main(["reproduce", "reptile-gradients", "--download", "--data-root", str(tmp_path), "--out",
                 str(tmp_path / "r"), "--no-progress"]) == 0
    assert seen["base"].download and seen["base"].data_root == str(tmp_path)


def test_study_findings_are_read_from_the_accuracies():
    """Each finding's direction from the means; "within noise" where a deciding difference is inside the 95%
    half-width of a difference of two means; "partly" naming the settings that clearly go against it."""
    acc = {"g1": 0.3, "g2": 0.6, "g1+g2": 0.5, "avg(g1,g2)": 0.4, "g3": 0.65, "g1+g2+g3": 0.7, "avg(g1..g3)": 0.5,
           "g4": 0.7, "g1+..+g4": 0.9, "avg(g1..g4)": 0.6}
    found = rg.gradient_findings({n: {"final": [a, 0.01]} for n, a in acc.items()})
    assert [f["holds"] for f in found] == [True, True, True, True]
    assert [f["verdict"] for f in found] == ["yes"] * 4
    found = rg.gradient_findings({n: {"final": [0.5 if n == "g1" else a, 0.01]} for n, a in acc.items()})
    assert not found[0]["holds"] and found[0]["verdict"] == "no"
    found = rg.gradient_findings({n: {"final": [a, 0.04]} for n, a in acc.items()})  # gaps of 0.05 < 0.057
    assert found[0]["verdict"] == "yes" and found[1]["verdict"] == "yes"
    assert found[2]["verdict"] == "yes, within noise: g2 -> g3 +5.0; g3 -> g4 +5.0"

    def panel(values, curves, ci=0.01):
        return {"runs": {run: [{"value": v, "mean": m, "ci95": ci} for v, m in zip(values, ms, strict=True)]
                         for run, ms in curves.items()}}

    flat = [0.9, 0.9, 0.9, 0.9]
    runs = {"fomaml-shared, cycle": [0.9, 0.9, 0.5, 0.4], "fomaml-shared, replacement": [0.9, 0.85, 0.7, 0.6],
            "fomaml-separate, cycle": flat, "fomaml-separate, replacement": flat, "reptile, cycle": flat,
            "reptile, replacement": flat}
    step = {run: ([0.4, 0.5] if run.startswith("fomaml-shared") else [0.8, 0.9]) for run in runs}
    panels = {"4a": panel([3, 4, 5, 6], runs), "4b": panel([20, 25, 50, 100], runs), "4c": panel([0.5, 1.0], step)}
    assert [f["verdict"] for f in ro.overlap_findings(panels)] == ["yes"] * 4
    def with_replacement(curve):  # shared-tail FOMAML sampling with replacement along one panel's four settings
        return dict(runs, **{"fomaml-shared, replacement": curve})

    found = ro.overlap_findings({"4a": panel([3, 4, 5, 6], with_replacement([0.9, 0.9, 0.85, 0.85])),  # gap +0.40
                                 "4b": panel([20, 25, 50, 100], with_replacement([0.9, 0.9, 0.5, 0.41]))})  # +0.005
    assert found[1]["verdict"] == "yes, within noise: 4b: +0.5 of ± 1.4"
    found = ro.overlap_findings({"4a": panel([3, 4, 5, 6], with_replacement([0.9, 0.9, 0.1, 0.1])),  # gap -0.35
                                 "4b": panel([20, 25, 50, 100], with_replacement([0.9, 0.9, 0.9, 0.9]))})  # +0.45
    assert found[1]["verdict"] == "partly, not: 4a: replacement degrades more, -35.0 of ± 1.4"
    runs["reptile, cycle"] = [0.9, 0.9, 0.9, 0.8]  # one overlapping setting 10 points down: beyond its noise
    panels.update({"4a": panel([3, 4, 5, 6], runs), "4b": panel([20, 25, 50, 100], runs)})
    assert ro.overlap_findings(panels)[2]["verdict"] == "partly, not: reptile, cycle at inner iterations 6 -10.0; " \
                                                        "reptile, cycle at inner batch size 100 -10.0"
    panels.update({"4a": panel([3, 4, 5, 6], runs, ci=0.1), "4b": panel([20, 25, 50, 100], runs, ci=0.1)})
    found = ro.overlap_findings(panels)  # the same numbers with intervals of ± 10 points: Reptile's drop is noise
    assert [f["verdict"] for f in found] == ["yes"] * 4
    runs["reptile, cycle"] = [0.9, 0.9, 0.3, 0.2]  # Reptile degrading as much as shared-tail FOMAML: not the paper's
    panels.update({"4a": panel([3, 4, 5, 6], runs), "4b": panel([20, 25, 50, 100], runs)})
    assert not ro.overlap_findings(panels)[2]["holds"]


def test_overlap_study_in_two_processes_equals_one(tmp_path, tiny_omniglot, monkeypatch):
    """``jobs=2`` runs the settings in spawned processes: the same accuracies as in this process, and a rerun
    of the finished study reads every test result back instead of testing again."""
    monkeypatch.setattr(ro, "DEFAULT_OVERLAP", rs.Budget(iterations=2, eval_tasks=3, curve_points=1,
                                                         sweeps={"4a": (2, 5)}))
    kwargs = {"full": False, "iterations": None, "progress": False, "data_root": str(tiny_omniglot)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: another thread count may round differently
    try:
        one = ro.run_overlap(tmp_path / "one", **kwargs)
    finally:
        torch.set_num_threads(threads)
    two = ro.run_overlap(tmp_path / "two", jobs=2, **kwargs)

    def means(r):
        return {run: [q["mean"] for q in pts] for run, pts in r["panels"]["4a"]["runs"].items()}

    assert means(one) == means(two) and len(means(one)) == len(ro.METHODS) * len(ro.SAMPLINGS)
    monkeypatch.setattr(rs, "test_accuracy", lambda *a: pytest.fail("a finished run was tested again"))
    assert means(ro.run_overlap(tmp_path / "two", **kwargs)) == means(one)


def test_jobs_only_for_the_reptile_studies(capsys):
    from metagrad.cli import main

    assert main(["reproduce", "sinusoid", "--jobs", "2"]) != 0
    assert "--jobs 2" in capsys.readouterr().err


@pytest.mark.parametrize("study", ["reptile-overlap", "reptile-gradients"])
def test_a_pooled_study_without_its_data_says_so_in_one_line(study, tmp_path, capsys, monkeypatch):
    """With --jobs the images were first read in the pool's workers: a missing data folder broke the pool, and the
    study ended in two tracebacks and a 'process stopped' error whose fix (run it again) could not help."""
    monkeypatch.delenv("METAGRAD_DATA", raising=False)
    err = cli_error(["reproduce", study, "--jobs", "2", "--data-root", str(tmp_path / "none"), "--out",
                     str(tmp_path / "out")], capsys)
    assert "none does not exist" in err and "process" not in err


def test_panels_run_only_those_sweeps_and_are_checked(tmp_path, tiny_omniglot, monkeypatch, capsys):
    """--panels 4c runs the outer-step sweep alone (cycling only: its batches take the whole support set); a wrong
    panel, or --panels for another experiment, is refused naming the choices."""
    monkeypatch.setattr(ro, "DEFAULT_OVERLAP", rs.Budget(iterations=1, eval_tasks=2, curve_points=1,
                                                         sweeps={"4a": (5,), "4c": (1.0, 2.0)}))
    out = tmp_path / "o"
    assert main(["reproduce", "reptile-overlap", "--panels", "4c", "--data-root", str(tiny_omniglot), "--out",
                 str(out), "--no-progress"]) == 0
    saved = json.loads((out / "reptile-overlap.json").read_text())
    assert list(saved["panels"]) == ["4c"] and sorted(saved["panels"]["4c"]["runs"]) == [
        "fomaml-separate, cycle", "fomaml-shared, cycle", "reptile, cycle"]
    assert [f["paper"] for f in saved["findings"]] == [ro.PAPER_OVERLAP[3]]
    assert main(["reproduce", "reptile-overlap", "--panels", "4a", "--data-root", str(tiny_omniglot), "--out",
                 str(out), "--no-progress"]) == 0
    saved = json.loads((out / "reptile-overlap.json").read_text())  # 4c kept beside the new 4a, in panel order
    assert list(saved["panels"]) == list(saved["budget"]["sweeps"]) == ["4a", "4c"] and len(saved["findings"]) == 4
    assert main(["reproduce", "reptile-overlap", "--panels", "4d", "--out", str(out)]) == 2
    assert "panels ['4d']: choose among 4a, 4b, 4c" in capsys.readouterr().err
    assert main(["reproduce", "reptile-gradients", "--panels", "4c", "--out", str(out)]) != 0
    assert "--panels 4c: only for reptile-overlap" in capsys.readouterr().err


def test_a_time_budget_stops_the_studies_and_the_same_call_continues(tmp_path, tiny_omniglot, monkeypatch):
    """Past the deadline no run starts: the results say partial, keep no findings, and the next call (no budget)
    finishes every run from its checkpoint."""
    monkeypatch.setattr(rg, "DEFAULT_GRADIENTS", rs.Budget(iterations=2, eval_tasks=2, curve_points=1))
    monkeypatch.setattr(ro, "DEFAULT_OVERLAP", rs.Budget(iterations=2, eval_tasks=2, curve_points=1,
                                                         sweeps={"4a": (2,)}))
    for module in (rg, ro):
        monkeypatch.setattr(module, "deadline_for", lambda minutes: 0.0 if minutes else None)  # already past
    kwargs = {"full": False, "iterations": None, "progress": False, "data_root": str(tiny_omniglot)}
    for study, name in ((rg.run_gradients, "reptile-gradients"), (ro.run_overlap, "reptile-overlap")):
        partial = study(tmp_path / name, time_budget=5, **kwargs)
        assert partial["complete"] is False and partial["findings"] == []
        assert "Partial: the time budget ended the study" in (tmp_path / name / f"{name}.md").read_text()
        whole = study(tmp_path / name, **kwargs)
        assert whole["complete"] is True and whole["findings"]


def _fail_first(i: int, folder: str) -> int:
    """A study's run for the pool test: the first fails at once, the others take a while and leave a mark."""
    import pathlib
    import time as _time

    if i == 0:
        raise RuntimeError("run 0 failed")
    _time.sleep(1.0)
    (pathlib.Path(folder) / f"ran-{i}").touch()
    return i


def test_a_failed_run_in_the_pool_stops_the_runs_not_yet_started(tmp_path, tiny_omniglot):
    base = rs.base_config(str(tiny_omniglot), rs.Budget(iterations=1, eval_tasks=2, curve_points=1))
    with pytest.raises(RuntimeError, match="run 0 failed"):
        rs.map_runs(_fail_first, [(i, str(tmp_path)) for i in range(8)], base, jobs=2)
    assert len(list(tmp_path.glob("ran-*"))) <= 3  # at most those under way or queued when run 0 failed


def _stopped_by_the_others(i: int) -> int:
    """A study's run for the pool tests: run 0 trains until the pool's stop flag (as a trainer's hook does), run 1
    fails after a while, run 2 kills its own process."""
    import os
    import signal
    import time as _time

    if i == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    if i == 1:
        _time.sleep(0.5)
        raise RuntimeError("run 1 failed")
    while not rs.WORKER["stop"].value:
        _time.sleep(0.01)
    raise mg.errors.Interrupted("interrupted at iteration 3")


def test_a_pooled_run_that_fails_is_the_error_not_the_stop_it_causes(tiny_omniglot):
    """A failed run stops the runs under way (the pool's flag): their ``Interrupted``, first in order, hid the
    failure (the command said "interrupted ... run the same command again"); a killed worker is ``WorkerLost``."""
    from metagrad.errors import WorkerLost

    base = rs.base_config(str(tiny_omniglot), rs.Budget(iterations=1, eval_tasks=2, curve_points=1))
    with pytest.raises(RuntimeError, match="run 1 failed"):
        rs.map_runs(_stopped_by_the_others, [(0,), (1,)], base, jobs=2)
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited by the workers: the broken pool's SIGTERM to the one
    with pytest.raises(WorkerLost, match="a process of the study's pool stopped in the middle of its runs"):
        rs.map_runs(_stopped_by_the_others, [(0,), (2,)], base, jobs=2)  # left running then did nothing: a hang


@pytest.mark.parametrize("fault", ["SIGTERM", "SIGKILL", "SIGKILL-at-start"])
def test_a_pooled_study_whose_main_process_alone_is_stopped_stops_its_runs(tmp_path, tiny_omniglot, fault):
    """SIGTERM to the study's main process alone (``kill PID``, ``docker stop``): it waited for the runs under way to
    end (hours at the paper's budget); kill -9 of it left them training on, orphans, also when it came before the
    workers had loaded their data. Now the runs under way stop after their iteration with a checkpoint, no other
    starts, the workers end, and SIGTERM exits with 143."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from metagrad import checkpoint

    out = tmp_path / "study"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "metagrad", "reproduce", "reptile-gradients", "--jobs", "2",
                             "--iterations", "100000", "--eval-tasks", "2", "--data-root", str(tiny_omniglot),
                             "--out", str(out), "--no-progress"], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = out / "reptile-gradients"
    with group_killed_after(proc):  # nothing the test started trains on after it
        end = time.monotonic() + 120
        while time.monotonic() < end and (len(spawned_workers(proc)) < 2 if fault == "SIGKILL-at-start" else
                                          len([r for r in runs.glob("*") if checkpoint.exists(r / "last")]) < 2):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        if fault != "SIGKILL-at-start":
            time.sleep(1.0)  # into their iterations
        pool = spawned_workers(proc)
        assert len(pool) == 2
        proc.send_signal(signal.SIGKILL if fault.startswith("SIGKILL") else signal.SIGTERM)
        if fault == "SIGTERM":
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 128 + signal.SIGTERM, err
            assert err.strip().splitlines()[-1].startswith("metagrad reproduce: interrupted (SIGTERM)"), err
        assert all_ended(pool, within=30)
    started = [r for r in runs.glob("*") if checkpoint.exists(r / "last")]
    if fault == "SIGKILL-at-start":
        assert all(checkpoint.read_info(r / "last")["iteration"] < 1000 for r in started)
        return
    assert len(started) == 2  # no other run started
    assert all(checkpoint.read_info(r / "last")["iteration"] > 0 for r in started)  # each saved where it stopped
