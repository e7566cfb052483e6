"""Bad input through the Python API stops with a ConfigError, TypeError or ValueError that names the value and the fix,
never nonsense silently accepted nor a raw error from deep inside torch (table-driven; each case builds what it
needs)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import metagrad as mg
from metagrad.errors import CheckpointError, ConfigError
from metagrad.rl import MetaRL
from metagrad.rl.config import RLConfig
from metagrad.rl.envs.navigation import Navigation2D
from metagrad.rl.evaluate import return_curve
from metagrad.rl.policy import make_policy
from metagrad.tasks import FewShotClassification, Split, TaskBatch


def net(inputs: int = 1, outputs: int = 1) -> torch.nn.Module:
    torch.manual_seed(0)
    return mg.models.MLP(inputs, [8], outputs)


def sines(tasks: int = 3) -> TaskBatch:
    return mg.tasks.Sinusoid(shots=5, query=5).sample(tasks, torch.Generator().manual_seed(0))


def learner(**kw) -> mg.MAML:
    return mg.MAML(net(), **kw)


def batch(x_shape=(3, 5, 1), y=None, dtype=torch.float32) -> TaskBatch:
    x = torch.randn(*x_shape).to(dtype)
    y = torch.randn(*x_shape[:2], 1) if y is None else y
    return TaskBatch(Split(x, y), Split(x, y))


def classifier_batch(labels: list[int]) -> TaskBatch:
    y = torch.tensor(labels).expand(2, -1)
    return batch((2, len(labels), 4), y=y)


def trainer(**kw) -> mg.Trainer:
    lrn = learner()
    args = {"tasks": mg.tasks.Sinusoid(), "optimizer": torch.optim.Adam(lrn.parameters()), **kw}
    return mg.Trainer(lrn, args["tasks"], args["optimizer"], iterations=1, meta_batch_size=2, progress=False,
                      **{k: v for k, v in kw.items() if k not in ("tasks", "optimizer")})


def metarl(**kw) -> MetaRL:
    env = Navigation2D(horizon=2)
    return MetaRL(make_policy(env.action_space, env.obs_dim, hidden=(4,)), env, episodes=2, **kw)


def other_scheduler():
    return torch.optim.lr_scheduler.StepLR(torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), 0.1), 1)


def fewshot(**kw) -> FewShotClassification:
    return FewShotClassification(np.zeros((6, 20, 4, 4), np.uint8), **{"ways": 2, "shots": 1, "query": 1, **kw})


class TwoInputs(torch.nn.Module):
    """A forward pass that needs a second input (a mask)."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)

    def forward(self, x, mask):
        return self.linear(x) * mask


G = torch.Generator
CASES = {
    # name: (the call, the error type, words its message must hold)
    "S11 one task without the task dimension": (lambda: learner().meta_gradient(sines().task(0)), ConfigError,
                                                ["support.x [5, 1]", "task dimension", "x[None]"]),
    "S11 one task in adaptation curves": (lambda: mg.adaptation_curves(learner(), sines().task(0), steps=1),
                                          ConfigError, ["support.x [5, 1]", "batch.slice(i, i + 1)"]),
    "S12 negative steps": (lambda: mg.adaptation_curves(learner(), sines(), steps=-1), ConfigError, ["steps -1"]),
    "S13 a bool step size": (lambda: mg.SGD(True), ConfigError, ["inner_lr True", "not a number"]),
    "a step size that requires grad (never trained)": (lambda: mg.SGD(torch.nn.Parameter(torch.tensor(0.1))),
                                                      ConfigError, ["inner_lr 0.1", "requires grad", "learn=True"]),
    "class labels shaped [N, 1]": (
        lambda: mg.MAML(net(4, 3), loss_fn=mg.losses.cross_entropy).meta_gradient(
            batch((2, 3, 4), y=torch.tensor([[[0], [1], [2]]] * 2))), ValueError,
        ["labels of shape [3, 1]", "squeeze"]),
    "query inputs the model cannot read": (
        lambda: learner().meta_gradient(TaskBatch(Split(torch.randn(3, 5, 1), torch.randn(3, 5, 1)),
                                                  Split(torch.randn(3, 5, 2), torch.randn(3, 5, 1)))), ConfigError,
        ["cannot read one task's query inputs, of shape [5, 2]", "cannot be multiplied"]),
    "a model whose forward takes two inputs": (lambda: mg.MAML(TwoInputs()).meta_gradient(batch()), ConfigError,
                                                ["missing 1 required positional argument", "model(x) with one input"]),
    "S14 scheduler of another optimizer": (lambda: trainer(scheduler=other_scheduler()), ConfigError,
                                           ["scheduler was built on another optimizer"]),
    "S15 unknown resume": (lambda: trainer().fit(resume="yes"), ConfigError, ["resume 'yes'", "'auto'"]),
    "S18 generator as a number": (lambda: learner().meta_gradient(sines(), generator=42), TypeError,
                                  ["generator 42", "torch.Generator"]),
    "U13 generator as a number, minibatches": (
        lambda: learner(inner_batch_size=2).meta_gradient(sines(), generator=42), TypeError, ["generator 42"]),
    "U13 meta-RL generator as a number": (
        lambda: metarl().meta_step(Navigation2D().sample_tasks(2, G().manual_seed(0)), 0), TypeError,
        ["generator 0", "torch.Generator"]),
    "S6 NaN emaml weight": (lambda: metarl(algo="emaml", emaml_weight=float("nan")), ConfigError,
                            ["emaml_weight nan", "finite number >= 0"]),
    "S6 negative emaml weight": (lambda: metarl(algo="emaml", emaml_weight=-5), ConfigError, ["emaml_weight -5"]),
    # MetaRL checks its values with RLConfig's rules: the same words from the config file and from Python
    "S6 negative CG damping": (lambda: metarl(cg_damping=-1.0), ConfigError, ["cg_damping -1.0", "finite number >= 0"]),
    "S6 infinite max_kl": (lambda: metarl(max_kl=float("inf")), ConfigError, ["max_kl inf", "positive number"]),
    "S6 fractional inner steps": (lambda: metarl(inner_steps=1.5), ConfigError, ["inner_steps 1.5", "whole number"]),
    "S6 unknown outer step": (lambda: metarl(outer="trop"), ConfigError, ["unknown outer 'trop'", "did you mean"]),
    "U5 inputs of the wrong size": (lambda: learner().meta_gradient(batch((3, 5, 3))), ConfigError,
                                    ["model (MLP)", "inputs, of shape [5, 3]", "cannot be multiplied"]),
    "U5 inputs of the wrong size in evaluation": (lambda: learner().adaptation_metrics(batch((3, 5, 3)), 1),
                                                  ConfigError, ["inputs, of shape [5, 3]"]),
    "U6 float64 inputs": (lambda: learner().meta_gradient(batch(dtype=torch.float64)), ConfigError,
                          ["torch.float64", "torch.float32", "batch.to(torch.float32)", "learner.to(torch.float64)"]),
    "U6 int64 inputs": (lambda: learner().meta_gradient(batch(dtype=torch.int64)), ConfigError,
                        ["dtype torch.int64", "nn.Embedding", "x.to(torch.float32)"]),
    "U7 a tuple": (lambda: learner().meta_gradient((torch.zeros(3, 5, 1), torch.zeros(3, 5, 1))), TypeError,
                   ["meta_gradient takes a TaskBatch", "not tuple"]),
    "U7 a list": (lambda: learner().adaptation_metrics([[1, 2], [3, 4]], 1), TypeError,
                  ["adaptation_metrics takes a TaskBatch", "not list"]),
    "U7 numpy arrays": (lambda: learner().meta_gradient(TaskBatch(*(Split(*(np.zeros((3, 5, 1)),) * 2),) * 2)),
                        TypeError, ["support.x must be a torch tensor, not ndarray", "torch.as_tensor"]),
    "U7 meta tensors": (lambda: learner().meta_gradient(TaskBatch(*(Split(*(torch.empty(3, 5, 1, device="meta"),) * 2),)
                                                                  * 2)), TypeError, ["meta tensors", "no data"]),
    "U7 plain tuples as splits": (lambda: learner().meta_gradient(TaskBatch(*((torch.zeros(3, 5, 1),) * 2,) * 2)),
                                  TypeError, ["two Splits", "not (tuple, tuple)"]),
    "U8 a label beyond the outputs": (
        lambda: mg.MAML(net(4, 3), loss_fn=mg.losses.cross_entropy).meta_gradient(classifier_batch([0, 1, 7])),
        ConfigError, ["labels range over 0..7", "3 outputs", "0..2"]),
    "U8 a negative label": (
        lambda: mg.MAML(net(4, 3), loss_fn=mg.losses.cross_entropy).meta_gradient(classifier_batch([0, -1, 2])),
        ConfigError, ["labels range over -1..2", "3 outputs"]),
    "U8 float labels": (
        lambda: mg.MAML(net(4, 3), loss_fn=mg.losses.cross_entropy).meta_gradient(
            batch((2, 3, 4), y=torch.zeros(2, 3))), ValueError, ["integer class indices", "labels.long()"]),
    "U9 fractional shots": (lambda: mg.tasks.Sinusoid(shots=2.5), ConfigError, ["shots 2.5", "whole number"]),
    "U9 shots as text": (lambda: mg.tasks.Sinusoid(shots="10"), ConfigError, ["shots '10'", "whole number"]),
    "U9 negative tasks": (lambda: mg.tasks.Sinusoid().sample(-2, G()), ConfigError, ["num_tasks -2"]),
    "U9 fractional sampled shots": (lambda: mg.tasks.Sinusoid().sample(2, G(), shots=2.5), ConfigError,
                                    ["shots 2.5"]),
    "U9 linear regression, fractional shots": (lambda: mg.tasks.LinearRegression(shots=2.5), ConfigError,
                                               ["shots 2.5"]),
    "U9 linear regression, negative tasks": (lambda: mg.tasks.LinearRegression().sample(-2, G()), ConfigError,
                                             ["num_tasks -2"]),
    "U10 fractional ways": (lambda: fewshot(ways=2.5), ConfigError, ["ways 2.5", "whole number"]),
    "U10 fractional query": (lambda: fewshot(query=1.5), ConfigError, ["query 1.5", "whole number"]),
    "U11 fractional steps": (lambda: mg.adaptation_curves(learner(), sines(), steps=1.5), ConfigError,
                             ["steps 1.5"]),
    "U11 negative inner batch": (lambda: mg.adaptation_curves(learner(), sines(), 1, inner_batch_size=-3),
                                 ConfigError, ["inner_batch_size -3"]),
    "U11 a number as inner rule": (lambda: mg.adaptation_curves(learner(), sines(), 1, inner=0.1), ConfigError,
                                   ["inner must be a metagrad inner rule", "mg.SGD(0.01)"]),
    "U12 empty grid": (lambda: mg.tune_step_size(learner(), sines(), 1, grid=[]), ConfigError,
                       ["grid []", "step sizes to try"]),
    "U14 a number as optimizer": (lambda: trainer(optimizer=0.001), TypeError,
                                  ["optimizer must be a torch.optim.Optimizer", "0.001"]),
    "U14 no tasks": (lambda: trainer(tasks=None), TypeError, ["tasks must be a task distribution", "NoneType"]),
    "U14 a TaskBatch as tasks": (lambda: trainer(tasks=sines()), TypeError, ["not TaskBatch", "held_out_tasks"]),
    "U15 no observations": (lambda: make_policy(Navigation2D().action_space, 0), ConfigError, ["obs_dim 0"]),
    "U16 negative tasks": (lambda: Navigation2D().sample_tasks(-1, G()), ConfigError, ["num_tasks -1"]),
    "U17 negative steps": (lambda: return_curve(metarl(), 2, steps=-1, episodes=1, lr=(0.1,), seed=0), ConfigError,
                           ["steps -1"]),
    "U18 one test task, meta-RL": (lambda: return_curve(metarl(), 1, steps=1, episodes=1, lr=(0.1,), seed=0),
                                   ConfigError, ["num_tasks 1", "at least 2 test tasks"]),
    "U18 one test task": (lambda: mg.adaptation_curves(learner(), sines(1), steps=1), ConfigError,
                          ["at least 2 test tasks", "got 1"]),
    "U19 a model returning a tuple": (lambda: mg.MAML(TwoOutputs()).meta_gradient(sines()), ConfigError,
                                      ["(TwoOutputs) returns a tuple, not a tensor", "losses.mse", "output[0]"]),
    "U20 a loss with parameters": (lambda: mg.MAML(net(), loss_fn=ScaledLoss()), ConfigError,
                                   ["loss_fn holds parameters ('log_scale')", "move them into the model"]),
    "U20 a loss per example": (lambda: learner(loss_fn=lambda p, y: (p - y) ** 2).meta_gradient(sines()),
                               ConfigError, ["loss_fn must return one number per task", "reduction='none'"]),
    "U20 a loss per example, vmapped": (
        lambda: learner(loss_fn=lambda p, y: (p - y) ** 2, batching="vmap").meta_gradient(sines()), ConfigError,
        ["loss_fn must return one number per task"]),
    "a loss given as a Python float (.item())": (
        lambda: learner(loss_fn=lambda p, y: ((p - y) ** 2).mean().item()).meta_gradient(sines()), ConfigError,
        ["loss_fn must return one number per task", "it returned a float"]),
    "a loss of integers": (lambda: learner(loss_fn=lambda p, y: torch.tensor(3)).meta_gradient(sines()), ConfigError,
                           ["a real floating-point tensor", "it returned a tensor of dtype torch.int64"]),
    "a detached loss (every meta-gradient 0, silently)": (
        lambda: learner(loss_fn=lambda p, y: ((p - y) ** 2).mean().detach()).meta_gradient(sines()), ConfigError,
        ["does not depend on the model's output", "every meta-gradient would be 0"]),
    "a loss that fails on the targets": (
        lambda: learner(loss_fn=lambda p, y: (p - y.bool()).mean()).meta_gradient(sines()), ConfigError,
        ["loss_fn fails on the model's output (shape [5, 1], torch.float32) and one task's targets", "bool"]),
    "cross-entropy on regression targets (read as probabilities: every loss 0, silently)": (
        lambda: learner(loss_fn=mg.losses.cross_entropy).meta_gradient(sines()), ConfigError,
        ["losses.cross_entropy reads float targets as class probabilities, and these are not", "losses.mse"]),
    "a config's list given as one number (failed in a range check: 'int' object is not iterable)": (
        lambda: mg.Config(hidden=40).validate(), ConfigError, ["hidden 40 must be a list of integers, e.g. [40, 40]"]),
    "a config's step sizes given as text": (lambda: mg.Config(inner_lr="0.1").validate(), ConfigError,
                                            ["inner_lr '0.1' must be a list of numbers"]),
    "a config's flag given as a number": (lambda: mg.Config(rotations=1).validate(), ConfigError,
                                          ["rotations 1 must be true or false"]),
    "a meta-RL config's sizes given as one number": (
        lambda: RLConfig(hidden=4).validate(), ConfigError,
        ["hidden 4 must be a list of integers"]),
    "a model where adaptation_curves takes a learner": (
        lambda: mg.adaptation_curves(net(), sines(), steps=1), TypeError,
        ["adaptation_curves takes a learner (e.g. mg.MAML(model)), not a MLP"]),
    "a TaskBatch where held_out_tasks takes a task distribution": (
        lambda: mg.held_out_tasks(sines(), 5, shots=5, seed=1), TypeError,
        ["samples from a task distribution", "not a TaskBatch", "give it to adaptation_curves"]),
    "a seed given as text": (lambda: mg.held_out_tasks(mg.tasks.Sinusoid(), 5, shots=5, seed="a"), ConfigError,
                             ["seed 'a'"]),
    "a curve read past its steps": (lambda: mg.adaptation_curves(learner(), sines(), steps=2)["loss"].at(5),
                                    ConfigError, ["step 5 is outside this curve's steps 0..2"]),
    "learned step sizes without an inner step (their gradient exactly 0, silently)": (
        lambda: mg.MAML(net(), inner_steps=0, inner=mg.SGD(0.1, learn=True)), ConfigError,
        ["inner_steps 0 takes no inner step", "never train"]),
    "U21 an operation without a second derivative, named unquoted": (
        lambda: mg.MAML(torch.nn.Sequential(torch.nn.Linear(1, 4), torch.nn.Hardsigmoid(), torch.nn.Linear(4, 1)),
                        batching="loop").meta_gradient(sines()), ConfigError,
        ["has none for 'hardsigmoid_backward'", "first_order=True"]),
    "U23 complex parameters with an inner Adam": (lambda: mg.MAML(complex_net(), inner=mg.Adam(0.1)), ConfigError,
                                                  ["inner rule Adam on complex parameters", "mg.SGD"]),
    "U23 complex parameters recomputed": (lambda: mg.MAML(complex_net(), recompute=True), ConfigError,
                                          ["recompute works with real parameters"]),
    "U23 complex parameters saved": (lambda: mg.MAML(complex_net()).save("/nonexistent/never-written"),
                                     CheckpointError, ["model.weight is a complex tensor", "torch.view_as_real"]),
    "U22 two parameters, one learned step-size name": (
        lambda: mg.SGD(0.1, learn=True, params={"a.w": torch.zeros(2), "a__w": torch.zeros(2)}), ConfigError,
        ["'a.w' and 'a__w' would share one learned step size", "rename one"]),
    "learned step sizes built from another model's parameters (failed inside torch)": (
        lambda: mg.MAML(net(), inner=mg.SGD(0.1, learn=True, params=mg.models.MLP(3, [5], 1))), ConfigError,
        ["learned inner step sizes of '0.weight' have shape [5, 3], the parameter [8, 1]", "another model"]),
    "more learned step sizes than inner steps (the rest never trained, silently)": (
        lambda: mg.MAML(net(), inner=mg.SGD([0.1, 0.2, 0.3], learn=True), inner_steps=1), ConfigError,
        ["holds 3 learned step sizes", "inner_steps is 1", "the last 2 would never train"]),
    "joint training's inner minibatches (accepted, never used)": (
        lambda: mg.JointTraining(net(), inner_batch_size=3), ConfigError,
        ["inner_batch_size 3: joint training takes no inner step in training", "adaptation_curves"]),
    "adapt=[] (adapted everything, silently)": (lambda: learner(adapt=[]), ConfigError,
                                                ["adapt [] names no parameter", "give None"]),
    "meta-RL adapt=[]": (lambda: metarl(adapt=[]), ConfigError, ["adapt [] names no parameter"]),
    "a save into a folder that takes no files (named the temporary file)": (
        lambda: learner().save("/proc/m"), OSError, ["cannot create a file in /proc", "'/proc/m.safetensors'"]),
    "a forward that raises its own error (was: cannot read the inputs)": (
        lambda: mg.MAML(Raises()).meta_gradient(sines()), ConfigError,
        ["the model (Raises) raised ValueError: the model's own words", "in forward", "test_bad_input_api.py"]),
    "class labels with the default loss (suggested y[:, None])": (
        lambda: mg.MAML(net(4, 3)).meta_gradient(classifier_batch([0, 1, 2])), ValueError,
        ["look like class labels", "loss_fn=mg.losses.cross_entropy"]),
    "a meta-RL step size as text (a traceback from a comparison)": (
        lambda: metarl(inner_lr="0.1"), ConfigError, ["inner_lr '0.1' must be a number"]),
    "a policy's hidden sizes as one number (a traceback)": (
        lambda: make_policy(Navigation2D().action_space, 2, hidden=4), ConfigError,
        ["hidden 4 must be a sequence of layer sizes", "(4,) for one layer"]),
    "a Gaussian policy's hidden sizes as text": (
        lambda: mg.rl.GaussianMLPPolicy(2, 2, hidden="64"), ConfigError, ["hidden '64' must be a sequence"]),
    "an action space that is neither a Space nor gymnasium's": (
        lambda: make_policy((2,), 2), ConfigError, ["action space (2,) is not supported", "env.action_space"]),
}


class Raises(torch.nn.Module):
    """A model whose forward stops with its own error."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)

    def forward(self, x):
        raise ValueError("the model's own words")


def complex_net() -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: complex modules are a new feature
        return torch.nn.Linear(2, 2).to(torch.complex128)


class ScaledLoss(torch.nn.Module):
    """A loss with a learnable scale, which metagrad's meta-gradient would never reach."""

    def __init__(self):
        super().__init__()
        self.log_scale = torch.nn.Parameter(torch.zeros(()))

    def forward(self, prediction, target):
        return ((prediction - target) ** 2).mean() * self.log_scale.exp()


class TwoOutputs(torch.nn.Module):
    """A model whose forward returns its prediction and a second value (a hidden state, attention weights)."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)

    def forward(self, x):
        return self.linear(x), x


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_naming_it(case):
    call, error, words = CASES[case]
    with pytest.raises(error) as e:
        call()
    for w in words:
        assert w in str(e.value), (w, str(e.value))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.int8, torch.uint8])
@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_class_labels_of_any_integer_dtype_give_the_int64_gradient(dtype, batching):
    """int32 / int16 / int8 labels ended in torch's "expected target dtype to be Long"; uint8 under vmap blamed the
    model ("gather(): Expected dtype int32/int64") and auto left vmap for the rest of the run."""
    grads = []
    for labels_dtype in (torch.int64, dtype):
        torch.manual_seed(0)
        learn = mg.MAML(net(4, 3), loss_fn=mg.losses.cross_entropy, batching=batching)
        learn.meta_gradient(TaskBatch(*(Split(s.x, s.y.to(labels_dtype)) for s in classifier_batch([0, 1, 2, 1]))))
        grads.append([p.grad for p in learn.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


def test_a_later_batch_of_another_shape_is_explained_too():
    """The model is checked against the first batch only; a later one that torch refuses is checked then."""
    lrn = learner()
    lrn.meta_gradient(sines())
    assert lrn._inputs_checked
    with pytest.raises(ConfigError, match=r"inputs, of shape \[5, 3\]"):
        lrn.meta_gradient(batch((3, 5, 3)))
    lrn.meta_gradient(sines())


def test_the_input_check_leaves_random_state_and_buffers_alone():
    """The dry run of the first call does not move torch's random stream (dropout) nor the model's buffers."""
    model = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.5),
                                torch.nn.Linear(8, 1))
    lrn = mg.MAML(model, batching="loop")
    before = model[1].running_mean.clone()
    state = torch.get_rng_state()
    lrn.check_inputs(sines())
    assert torch.equal(torch.get_rng_state(), state) and torch.equal(model[1].running_mean, before)


def test_a_model_returning_a_tuple_works_with_a_loss_that_takes_it():
    """The tuple is refused for metagrad's losses only: a loss_fn of the user's own may read it."""
    lrn = mg.MAML(TwoOutputs(), loss_fn=lambda out, y: mg.losses.mse(out[0], y))
    assert lrn.meta_gradient(sines())["meta_loss"] > 0


def test_meta_gradient_replaces_grad_and_the_batch_types_are_public():
    """One call is one meta-step's gradient: a second call replaces ``.grad`` (no ``zero_grad`` needed), and
    ``mg.TaskBatch`` / ``mg.Split``, which its error message names, are reachable from the package."""
    lrn = learner()
    lrn.meta_gradient(sines())
    first = [p.grad.clone() for p in lrn.parameters()]
    lrn.meta_gradient(sines())
    assert all(torch.equal(a, p.grad) for a, p in zip(first, lrn.parameters(), strict=True))
    assert mg.TaskBatch is TaskBatch and mg.Split is Split


def test_valid_inputs_still_pass():
    """What the engine legitimately takes: scalar-label classifiers, images, integer tokens, zero step sizes."""
    images = FewShotClassification(np.zeros((6, 20, 8, 8), np.uint8), ways=3, shots=1, query=2).sample(2, G())
    conv = mg.MAML(mg.models.Conv4(1, ways=3, filters=4, image_size=8), loss_fn=mg.losses.cross_entropy)
    assert conv.meta_gradient(images)["meta_loss"] > 0
    tokens = TaskBatch(Split(torch.randint(0, 9, (2, 4, 3)), torch.randn(2, 4, 1)),
                       Split(torch.randint(0, 9, (2, 4, 3)), torch.randn(2, 4, 1)))
    embed = torch.nn.Sequential(torch.nn.Embedding(9, 4), torch.nn.Flatten(), torch.nn.Linear(12, 1))
    assert mg.MAML(embed, first_order=True).meta_gradient(tokens)["meta_loss"] > 0
    mg.SGD(0.0)  # "do not fine-tune": a candidate of the evaluation's step-size grid
    mg.tune_step_size(learner(), sines(), 1, grid=(0.0, 0.01))
    assert mg.adaptation_curves(learner(), sines(), steps=0)["loss"].tasks == 3


def test_compile_without_a_cpp_compiler_names_the_fix(monkeypatch):
    """torch.compile's CPU kernels need a C++ compiler: without one, a learner with compile=True stops with the fix at
    its first compiled call (a meta-RL step, a supervised meta-gradient), not with inductor's error; `reproduce
    locomotion` compiles by default. Building the learner does not ask (evaluating a compiled run compiles
    nothing)."""
    from torch._inductor import cpp_builder, exc

    def no_compiler() -> str:  # what inductor's search raises where none is found (its config is left alone)
        raise exc.InvalidCxxCompiler

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    fix = r"found none .*install one \(e\.g\. apt install g\+\+\) or set compile false"
    compiled = metarl(compile=True)
    with pytest.raises(ConfigError, match=fix):
        compiled.meta_step(compiled.env.sample_tasks(2, G().manual_seed(0)), G().manual_seed(1))
    with pytest.raises(ConfigError, match=fix):
        learner(compile=True).meta_gradient(sines())


def test_cross_entropy_takes_class_probabilities_shaped_like_the_logits():
    """The check that refuses regression targets under cross-entropy lets soft labels through, and they train."""
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    soft = torch.softmax(torch.randn(2, 3, 3, generator=torch.Generator().manual_seed(1)), -1)
    learn = mg.MAML(net(4, 3), loss_fn=mg.losses.cross_entropy)
    loss = learn.meta_gradient(TaskBatch(Split(x, soft), Split(x, soft)))["meta_loss"]
    assert loss > 0 and all(float(p.grad.abs().max()) > 0 for p in learn.model.parameters())


def test_a_nan_meta_loss_warns_through_the_raw_api_and_the_trainer_stops_without_it():
    """``meta_gradient`` called by hand said nothing of a NaN meta-loss (its ``.grad`` would carry NaN into the
    parameters at the next step); the Trainer stops on it with its own advice, without the warning besides."""
    from metagrad.errors import NonFiniteMetaLoss, TrainingDiverged

    def nan_loss(p, y):
        return mg.losses.mse(p, y) * float("nan")

    with pytest.warns(NonFiniteMetaLoss, match="meta_loss is nan"):
        learner(loss_fn=nan_loss).meta_gradient(sines())
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonFiniteMetaLoss)
        learner().meta_gradient(sines())  # a finite one says nothing
        lrn = learner(loss_fn=nan_loss)
        with pytest.raises(TrainingDiverged, match="meta-loss is nan at iteration 1"):
            mg.Trainer(lrn, mg.tasks.Sinusoid(), torch.optim.Adam(lrn.parameters()), iterations=1,
                       meta_batch_size=2, progress=False).fit()


def test_an_optimizer_over_part_of_the_model_warns_naming_the_rest():
    """Parameters the optimizer does not hold get meta-gradients and never move: said, naming them."""
    lrn = learner()
    with pytest.warns(UserWarning, match=r"only part of the model's trainable parameters: 0\.weight, 0\.bias get "
                                         r"meta-gradients but never move"):
        mg.Trainer(lrn, mg.tasks.Sinusoid(), torch.optim.Adam(lrn.model[2].parameters()), iterations=1,
                   meta_batch_size=2, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mg.Trainer(lrn, mg.tasks.Sinusoid(), torch.optim.Adam(lrn.parameters()), iterations=1, meta_batch_size=2,
                   progress=False)


def test_gymnasium_spaces_make_the_policies_metagrad_spaces_make():
    """``make_policy`` takes a gymnasium Box or Discrete as it takes metagrad's Space (it stopped on ``.kind``)."""
    gym = pytest.importorskip("gymnasium")
    from metagrad.rl.envs.base import Space

    box = make_policy(gym.spaces.Box(-1.0, 1.0, (3,)), 5, hidden=(4,))
    assert isinstance(box, mg.rl.GaussianMLPPolicy) and box.action_dim == 3
    assert make_policy(Space("box", (3,), -1.0, 1.0), 5, hidden=(4,)).mean[0].weight.shape == box.mean[0].weight.shape
    discrete = make_policy(gym.spaces.Discrete(4, start=1), 5, hidden=(4,))
    assert isinstance(discrete, mg.rl.CategoricalMLPPolicy) and discrete.n_actions == 4


def test_a_return_curve_takes_one_step_size_as_a_number():
    """``lr=0.1`` (one number) is the schedule ``(0.1,)``, as everywhere else (it stopped: float not iterable)."""
    rl_learner = metarl()
    one, _, _ = return_curve(rl_learner, 2, steps=1, episodes=1, lr=0.1, seed=0)
    schedule, _, _ = return_curve(rl_learner, 2, steps=1, episodes=1, lr=(0.1,), seed=0)
    assert one == schedule and one["lr"] == [0.1]


def test_a_warning_from_the_users_loss_is_shown_once_over_a_trainers_iterations():
    """The Trainer's step once reset Python's warning registry at every iteration (a catch_warnings around the
    meta-gradient), so a user's warning came back every iteration instead of once."""

    def noisy(p, y):
        warnings.warn("the user's own note", UserWarning, stacklevel=1)
        return mg.losses.mse(p, y)

    lrn = learner(loss_fn=noisy)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        mg.Trainer(lrn, mg.tasks.Sinusoid(), torch.optim.Adam(lrn.parameters()), iterations=4, meta_batch_size=2,
                   progress=False, val_every=0).fit()
    assert sum("the user's own note" in str(w.message) for w in seen) == 1


def test_a_torch_operation_failing_in_the_users_forward_keeps_the_inputs_advice():
    """Only the model's own raise is reported as its own error: ``x @ self.w`` on integer inputs still gets the
    advice on integer inputs."""

    class MatMul(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1, 1))

        def forward(self, x):
            return x @ self.w

    with pytest.raises(ConfigError, match=r"integer inputs need a model that embeds them"):
        mg.MAML(MatMul()).meta_gradient(batch(dtype=torch.int64))


def test_layer_sizes_from_numpy_build_a_policy_and_both_packing_causes_are_named():
    from metagrad.rl.metarl import check_packable

    policy = mg.rl.GaussianMLPPolicy(2, 2, np.array([16, 16]))
    assert [m.out_features for m in policy.mean if isinstance(m, torch.nn.Linear)] == [16, 16, 2]
    with pytest.raises(ConfigError, match=r"algo 'sgmrl' .* and hvp_subsample 0\.5 .*an algo other than sgmrl and "
                                          r"hvp_subsample=1\.0"):
        check_packable("sgmrl", 0.5)
