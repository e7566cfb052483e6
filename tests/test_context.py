"""The MAML paper's context-vector baseline (appendix C.2): ``ContextVector`` appends learned numbers ``z`` to the
input (channel-wise for images); with ``adapt=["context"]`` the inner loop adapts ``z`` alone and the meta-gradient
trains ``z`` and the network. Meta-gradients are checked in float64 against plain autograd written here."""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import metagrad as mg
from conftest import sinusoid_batch
from images_fixtures import fake_omniglot
from metagrad import losses
from metagrad.batch import Split, TaskBatch
from metagrad.build import build_model
from metagrad.cli import main
from metagrad.config import load_config
from metagrad.errors import ConfigError
from metagrad.experiment import load_run
from metagrad.models import MLP, MLPBN, ContextVector, Conv4

LR, SIZE, TASKS, STEPS = 0.3, 3, 4, 2


def vector_net() -> ContextVector:
    """A small smooth MLP on ``[x, z]`` (1 + 3 inputs), with a non-zero context so that every term counts."""
    torch.manual_seed(0)
    model = ContextVector(nn.Sequential(nn.Linear(1 + SIZE, 6), nn.Tanh(), nn.Linear(6, 1)), SIZE).double()
    with torch.no_grad():
        model.context.copy_(torch.tensor([0.5, -1.0, 0.25]))
    return model


def forward(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``vector_net`` written out by hand: the context concatenated to each input, then the two layers."""
    h = torch.cat([x, p["context"].expand(x.shape[0], SIZE)], dim=1)
    h = torch.tanh(h @ p["model.0.weight"].T + p["model.0.bias"])
    return h @ p["model.2.weight"].T + p["model.2.bias"]


def reference(model: nn.Module, batch, steps: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean query loss after ``steps`` SGD steps on ``z`` alone per task, and its gradient with respect to ``z``'s
    initial value and every network weight (autograd through the inner steps, second order)."""
    theta = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    total = torch.zeros((), dtype=torch.float64)
    for i in range(batch.num_tasks):
        fast = dict(theta)
        for _ in range(steps):
            loss = F.mse_loss(forward(fast, batch.support.x[i]), batch.support.y[i])
            (g,) = torch.autograd.grad(loss, fast["context"], create_graph=True)
            fast["context"] = fast["context"] - LR * g
        total = total + F.mse_loss(forward(fast, batch.query.x[i]), batch.query.y[i])
    total = total / batch.num_tasks
    grads = torch.autograd.grad(total, list(theta.values()))
    return total.detach(), dict(zip(theta, grads, strict=True))


# ------------------------------------------------------------------------- the wrapper
def test_the_wrapper_is_the_model_on_the_input_with_the_context_appended():
    torch.manual_seed(0)
    inner = MLP(1 + SIZE, [8], 1)
    model = ContextVector(inner, SIZE)
    assert torch.equal(model.context.detach(), torch.zeros(SIZE))  # starts at zero (see the class docstring)
    x = torch.randn(7, 1)
    with torch.no_grad():
        model.context.copy_(torch.tensor([1.0, -2.0, 0.5]))
        torch.testing.assert_close(model(x), inner(torch.cat([x, torch.tensor([[1.0, -2.0, 0.5]]).expand(7, 3)], 1)),
                                   rtol=0, atol=0)
        xs = torch.randn(2, 5, 1)  # any leading dimensions: the context goes on the last one
        torch.testing.assert_close(model(xs), inner(torch.cat([xs, model.context.expand(2, 5, 3)], -1)), rtol=0,
                                   atol=0)


def test_the_wrapper_adds_the_context_as_image_channels():
    """Free maps (``image_size``, what the config builds) and constant channels, concatenated after the image."""
    torch.manual_seed(0)
    inner = Conv4(1 + 2, ways=5, filters=4, image_size=12)
    x = torch.randn(6, 1, 12, 12)
    maps = ContextVector(inner, 2, channels=True, image_size=(12, 12))
    constant = ContextVector(inner, 2, channels=True)
    assert maps.context.shape == (2, 12, 12) and constant.context.shape == (2,)
    assert not maps.context.detach().any()  # starts at zero (see the class docstring)
    with torch.no_grad():
        planes = torch.randn(2, 12, 12)
        maps.context.copy_(planes)
        torch.testing.assert_close(maps(x), inner(torch.cat([x, planes.expand(6, 2, 12, 12)], dim=1)), rtol=0, atol=0)
        constant.context.copy_(torch.tensor([0.7, -0.3]))
        planes = torch.stack([torch.full((12, 12), 0.7), torch.full((12, 12), -0.3)])
        torch.testing.assert_close(constant(x), inner(torch.cat([x, planes.expand(6, 2, 12, 12)], dim=1)), rtol=0,
                                   atol=0)
    assert maps.concat(x).shape == constant.concat(x).shape == (6, 3, 12, 12)
    with pytest.raises(ValueError, match="images"):
        maps(torch.randn(6, 144))
    with pytest.raises(ValueError, match="12x12, the images 10x10"):
        maps(torch.randn(6, 1, 10, 10))
    with pytest.raises(ConfigError, match="context size 0"):
        ContextVector(inner, 0)
    with pytest.raises(ConfigError, match="channels=True"):
        ContextVector(inner, 2, image_size=(12, 12))


# ------------------------------------------------------------------------- meta-gradients
@pytest.mark.parametrize("batching", ["loop", "vmap"])
def test_maml_adapting_the_context_gives_the_autograd_meta_gradient(batching):
    """Second-order MAML, 2 inner steps on z alone: the meta-gradient of z's initial value and of every network
    weight (which reaches them through z's inner gradients) equals plain autograd's."""
    batch, model = sinusoid_batch(tasks=TASKS), vector_net()
    loss, expected = reference(model, batch, STEPS)
    learner = mg.MAML(model, inner=mg.SGD(LR), inner_steps=STEPS, adapt=["context"], batching=batching)
    metrics = learner.meta_gradient(batch)
    assert metrics["meta_loss"] == pytest.approx(float(loss), rel=1e-12)
    got = {n: p.grad for n, p in learner.model.named_parameters()}
    assert set(got) == set(expected)
    for n, g in expected.items():
        assert float(g.abs().max()) > 1e-4, n  # no term is trivially 0
        torch.testing.assert_close(got[n], g, rtol=1e-10, atol=1e-12, msg=n)


def test_the_inner_loop_changes_only_the_context():
    batch, model = sinusoid_batch(tasks=1), vector_net()
    learner = mg.MAML(model, inner=mg.SGD(LR), inner_steps=STEPS, adapt=["context"], batching="loop")
    meta = learner.meta_params()
    steps = list(learner.inner_loop(meta, learner.buffers(), Split(batch.support.x[0], batch.support.y[0]), 3))
    assert len(steps) == 4
    for before, after in itertools.pairwise(steps):
        assert not torch.equal(before["context"], after["context"])
        for n in before:
            if n != "context":
                assert torch.equal(before[n], after[n]), n
    curves = learner.adaptation_metrics(batch, steps=3)["loss"]  # evaluation adapts z too: the loss moves
    assert not torch.equal(curves[:, 0], curves[:, 3])


def test_image_context_gives_the_same_meta_gradient_on_loop_and_vmap():
    """Context maps as channels of a small Conv4 (per-task batch norm): vmap equals the per-task loop in float64."""
    gen = torch.Generator().manual_seed(0)
    xs = torch.randn(2, 6, 1, 8, 8, generator=gen, dtype=torch.float64)
    xq = torch.randn(2, 3, 1, 8, 8, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    batch = TaskBatch(Split(xs, labels.expand(2, 6)), Split(xq, labels[:3].expand(2, 3)))
    grads = {}
    for batching in ("loop", "vmap"):
        torch.manual_seed(0)
        model = ContextVector(Conv4(1 + 2, ways=3, filters=4, image_size=8), 2, channels=True,
                              image_size=(8, 8)).double()
        with torch.no_grad():
            model.context.copy_(torch.linspace(-1, 1, 128).view(2, 8, 8))
        learner = mg.MAML(model, loss_fn=losses.cross_entropy, inner=mg.SGD(0.4), inner_steps=2,
                          adapt=["context"], batching=batching, self_check=False)
        learner.meta_gradient(batch)
        grads[batching] = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert float(grads["loop"]["context"].abs().max()) > 0
    for n, g in grads["loop"].items():
        torch.testing.assert_close(grads["vmap"][n], g, rtol=1e-9, atol=1e-12, msg=n)


# ------------------------------------------------------------------------- config, presets, CLI
def test_build_model_wraps_the_network_and_widens_its_input():
    cfg = load_config("sinusoid-context")
    assert cfg.context == 10 and cfg.adapt == ("context",) and cfg.algo == "maml"
    model = build_model(cfg, SimpleNamespace(input_dim=1))
    assert isinstance(model, ContextVector) and not model.channels
    assert model.model[0].in_features == 11
    assert isinstance(build_model(cfg.replace(context=0), SimpleNamespace(input_dim=1)), MLP)  # 0: off
    with pytest.raises(ConfigError, match="context -1 must be a whole number >= 0"):
        build_model(cfg.replace(context=-1), SimpleNamespace(input_dim=1))
    images = SimpleNamespace(image_shape=(1, 28, 28))
    omni = load_config("omniglot-context")
    assert omni.context == 1 and omni.adapt == ("context",) and (omni.inner_lr, omni.ways) == ((0.4,), 5)
    conv = build_model(omni, images)
    assert conv.channels and conv.context.shape == (1, 28, 28) and conv.model.features[0].in_channels == 2
    assert conv(torch.zeros(4, 1, 28, 28)).shape == (4, 5)
    assert isinstance(build_model(omni.replace(model="mlp-bn", context=0), images), MLPBN)
    with pytest.raises(ConfigError, match="context does not work with model mlp-bn"):
        build_model(omni.replace(model="mlp-bn"), images)


def test_train_then_eval_the_sinusoid_context_preset(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--config", "sinusoid-context", "--iterations", "2", "--meta-batch-size", "4",
                 "--out", str(run), "--no-progress"]) == 0
    assert "context = 10" in (run / "config.toml").read_text()
    assert main(["eval", str(run), "--eval-tasks", "10", "--eval-shots", "5", "--eval-steps", "2"]) == 0
    curve = json.loads((run / "eval.json").read_text())["curves"]["5"]["loss"]
    assert curve["tasks"] == 10 and len(curve["mean"]) == 3
    learner, _, _ = load_run(run)
    assert learner.adapt_prefixes == ("context",) and learner.model.context.shape == (10,)
    assert float(learner.model.context.detach().abs().max()) > 0  # meta-trained: z's initial value moved


def test_reproduce_omniglot_context_prints_the_papers_table_3_row(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("METAGRAD_CACHE", str(tmp_path / "cache"))
    root = fake_omniglot(tmp_path / "om", alphabets=5, characters=5)
    out = tmp_path / "results"
    assert main(["reproduce", "omniglot", "--algo", "context", "--iterations", "2", "--eval-tasks", "4",
                 "--data-root", str(root), "--out", str(out), "--no-progress"]) == 0
    result = json.loads((out / "omniglot-context-5w1s.json").read_text())
    assert result["config"]["model"]["context"] == 1 and result["config"]["algo"]["adapt"] == ["context"]
    assert result["paper_steps"] == 3
    assert result["modes"]["transductive"]["paper"] == [94.9, 0.9]
    assert result["modes"]["non-transductive"]["paper"] is None
    assert "94.90 ± 0.90" in capsys.readouterr().out


def test_the_context_algo_is_omniglot_only(tmp_path, capsys):
    assert main(["reproduce", "miniimagenet", "--algo", "context", "--out", str(tmp_path)]) == 2
    assert "--algo 'context' does not apply to miniimagenet" in capsys.readouterr().err


def test_a_setting_without_its_own_preset_says_which_settings_it_takes(capsys):
    """20-way context vector: no 20-way preset, so the 5-way one's settings train it, said on stderr (it was
    silent, while maml, fomaml, anil and reptile switch to their 20-way presets)."""
    from metagrad.reproduce import fewshot

    cfg = fewshot.setting_config("omniglot", "context", 20, 1)
    assert cfg.ways == 20 and "omniglot-context has no 20-way preset" in capsys.readouterr().err
    assert fewshot.setting_config("omniglot", "maml", 20, 1).meta_batch_size == 16  # its own 20-way preset
    assert "preset" not in capsys.readouterr().err
