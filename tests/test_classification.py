"""Few-shot classification on the engine: batch norm per task, both evaluation modes, gradients."""

from __future__ import annotations

import pytest
import torch

import metagrad as mg
from conftest import grads_of
from metagrad.models import MLPBN, Conv4, TaskBatchNorm
from metagrad.tasks.fewshot import FewShotClassification


def image_batch(tasks: int = 4, ways: int = 3, shots: int = 2, query: int = 3, size: int = 12,
                dtype: torch.dtype = torch.float64):
    gen = torch.Generator().manual_seed(0)
    data = (torch.rand(20, 20, size, size, generator=gen) * 255).to(torch.uint8).numpy()
    return FewShotClassification(data, ways, shots, query).sample(tasks, gen).to(dtype)


def classifier(kind: str, ways: int = 3, size: int = 12) -> mg.MetaLearner:
    model = Conv4(1, ways, filters=4, image_size=size) if kind == "conv4" else MLPBN(size * size, ways, (8, 8))
    return model.double()


@pytest.mark.parametrize("shape", [(7, 5), (6, 4, 3, 3)])
def test_task_batch_norm_matches_torch_in_training_mode(shape):
    x = torch.randn(*shape, dtype=torch.float64)
    bn = TaskBatchNorm(shape[1]).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    ref = torch.nn.functional.batch_norm(x, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
    torch.testing.assert_close(bn(x), ref, rtol=1e-12, atol=1e-12)
    assert not list(bn.buffers())  # no running statistics to leak between tasks


@pytest.mark.parametrize("kind", ["conv4", "mlp-bn"])
@pytest.mark.parametrize("algo", ["maml", "fomaml", "reptile", "maml-recompute"])
def test_batched_tasks_equal_the_per_task_loop_in_float64(kind, algo):
    """With batch norm, vmap (all tasks at once, or two at a time: ``task_chunk``) must agree with the loop to
    round-off (DESIGN.md: torch's BatchNorm does not)."""
    model = classifier(kind)
    inner = mg.SGD(0.3)
    if algo == "reptile":
        learner = mg.Reptile(model, loss_fn=mg.losses.cross_entropy, inner=inner, inner_steps=3, inner_batch_size=4)
    else:
        learner = mg.MAML(model, loss_fn=mg.losses.cross_entropy, inner=inner, inner_steps=2,
                          first_order=algo == "fomaml", recompute=algo == "maml-recompute")
    batch = image_batch()
    grads = {}
    for batching, chunk in (("vmap", 0), ("vmap", 2), ("loop", 0)):
        learner.batching, learner.task_chunk = batching, chunk
        learner.zero_grad()
        learner.meta_gradient(batch, torch.Generator().manual_seed(3))
        grads[batching, chunk] = grads_of(learner)
    for key in (("vmap", 0), ("vmap", 2)):
        for n, g in grads[key].items():
            torch.testing.assert_close(g, grads["loop", 0][n], rtol=1e-10, atol=1e-12)


def test_second_order_conv_meta_gradient_matches_finite_differences():
    model = classifier("conv4")
    for i, layer in enumerate(model.features):  # smooth activations, so that finite differences are exact
        if isinstance(layer, torch.nn.ReLU):
            model.features[i] = torch.nn.Tanh()
    learner = mg.MAML(model, loss_fn=mg.losses.cross_entropy, inner=mg.SGD(0.3), inner_steps=2)
    batch = image_batch(tasks=2)
    learner.meta_gradient(batch)
    params = dict(learner.named_parameters())
    grads = grads_of(learner)
    gen = torch.Generator().manual_seed(7)

    def meta_loss() -> float:
        meta, buffers = learner.meta_params(), learner.buffers()
        return float(torch.stack([learner.task_objective(meta, buffers, batch.task(i), None)
                                  for i in range(batch.num_tasks)]).mean())

    def loss_along(d: dict[str, torch.Tensor], t: float) -> float:
        with torch.no_grad():
            for n, p in params.items():
                p.add_(t * d[n])
            value = meta_loss()
            for n, p in params.items():
                p.sub_(t * d[n])
        return value

    for _ in range(2):
        d = {n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in params.items()}
        h = 1e-5  # fourth-order central stencil: batch norm on 1x1 maps makes this loss strongly curved
        numeric = (8 * (loss_along(d, h) - loss_along(d, -h)) - loss_along(d, 2 * h) + loss_along(d, -2 * h)) / (12 * h)
        analytic = float(sum((grads[n] * d[n]).sum() for n in params))
        assert abs(numeric - analytic) <= 1e-7 * max(1.0, abs(analytic))


@pytest.mark.parametrize("transductive", [True, False])
def test_batched_evaluation_equals_the_per_task_loop_in_float64(transductive):
    """Adaptation curves with batch norm: vmap over tasks gives the loop's numbers, in both evaluation modes."""
    learner = mg.MAML(classifier("conv4"), loss_fn=mg.losses.cross_entropy, inner=mg.SGD(0.3))
    batch, values = image_batch(tasks=3), {}
    for batching in ("vmap", "loop"):
        learner.batching = batching
        values[batching] = learner.adaptation_metrics(batch, 2, transductive=transductive)
    for name, v in values["vmap"].items():
        torch.testing.assert_close(v, values["loop"][name], rtol=1e-10, atol=1e-12)


def test_non_transductive_predictions_ignore_the_other_queries():
    learner = mg.MAML(classifier("conv4"), loss_fn=mg.losses.cross_entropy)
    task = image_batch(tasks=1, query=4).task(0)
    meta, buffers = learner.meta_params(), learner.buffers()
    params, sx, qx = meta["model"], task.support.x, task.query.x
    full = learner.predict(params, buffers, sx, qx, transductive=False)
    part = learner.predict(params, buffers, sx, qx[:3], transductive=False)
    torch.testing.assert_close(full[:3], part, rtol=1e-12, atol=1e-12)
    full_t = learner.predict(params, buffers, sx, qx, transductive=True)
    part_t = learner.predict(params, buffers, sx, qx[:3], transductive=True)
    assert (full_t[:3] - part_t).abs().max() > 1e-3  # transductive: the batch statistics include every query


def test_classifiers_report_accuracy(tmp_path):
    """Only a range was checked: an error rate reported as the accuracy passed. Before adaptation the accuracy is
    the share of queries whose largest logit is their class, counted here from the model's own predictions."""
    learner = mg.MAML(classifier("conv4"), loss_fn=mg.losses.cross_entropy, inner=mg.SGD(0.3))
    learner.metrics["accuracy"] = mg.losses.accuracy
    batch = image_batch(tasks=6)
    curves = mg.adaptation_curves(learner, batch, steps=2, transductive=False)
    acc = curves["accuracy"]
    meta, buffers = learner.meta_params(), learner.buffers()
    counted = [(learner.predict(meta["model"], buffers, t.support.x, t.query.x, transductive=False).argmax(-1)
                == t.query.y).double().mean() for t in (batch.task(i) for i in range(batch.num_tasks))]
    assert len(acc.mean) == 3 and acc.mean[0] == pytest.approx(float(torch.stack(counted).mean()), abs=1e-6)
    assert all(0 <= m <= 1 for m in acc.mean)


@pytest.mark.parametrize("transductive", [True, False])
def test_validation_takes_the_tests_batch_norm_mode(tmp_path, monkeypatch, transductive):
    """The best checkpoint is chosen in the batch-norm mode the run is tested in (it was always transductive), and a
    run resumed in the other mode tracks its best afresh: the two modes' accuracies are not one measure."""
    gen = torch.Generator().manual_seed(0)
    data = (torch.rand(20, 20, 12, 12, generator=gen) * 255).to(torch.uint8).numpy()
    tasks = FewShotClassification(data, 3, 2, 3)
    learner = mg.MAML(classifier("conv4").float(), loss_fn=mg.losses.cross_entropy, inner=mg.SGD(0.3))
    modes, measure = [], learner.adaptation_metrics
    monkeypatch.setattr(learner, "adaptation_metrics", lambda *a, **k: modes.append(k.get("transductive")) or
                        measure(*a, **k))

    def trainer(mode: bool) -> mg.Trainer:
        opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
        return mg.Trainer(learner, tasks, opt, iterations=2, meta_batch_size=2, run_dir=tmp_path / "run",
                          val_every=1, val_tasks=4, transductive=mode, progress=False)

    run = trainer(transductive)
    run.fit()
    assert modes == [transductive] * 2 and run.best_val is not None
    resumed = trainer(not transductive)
    resumed.restore()
    assert resumed.best_val is None
    again = trainer(transductive)
    again.restore()
    assert again.best_val == run.best_val
