"""Any module, the right meta-gradient: every piece of the matrix (tests/compat_models.py) x MAML / Meta-SGD x every
path, in float64, against the per-task loop. The default path is exact or falls back with one line; an explicit
vmap is exact or refuses; the check itself is what protects (off, vmap is wrong where the matrix says)."""

from __future__ import annotations

import contextlib
import copy
import re
from pathlib import Path

import pytest
import torch

import metagrad as mg
from compat_models import ALGOS, CANNOT_RUN, PIECES, VMAP_WRONG, batch, learner, model
from conftest import sinusoid_batch
from metagrad.batching import faulty_module
from metagrad.errors import ConfigError
from metagrad.tasks import Split, TaskBatch

TOL = 1e-10


def meta_gradient(learn: mg.MetaLearner, name: str) -> dict[str, torch.Tensor]:
    learn.zero_grad()
    loss = learn.meta_gradient(batch(name), torch.Generator().manual_seed(0))["meta_loss"]
    return {"loss": torch.tensor(loss), **{n: p.grad.clone() for n, p in learn.named_parameters()}}


def assert_equal_to(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    scale = max(float(g.abs().max()) for g in want.values())
    for n, g in want.items():
        assert float((got[n] - g).abs().max()) <= TOL * scale, n


@pytest.fixture(scope="module")
def reference() -> dict[tuple[str, str], dict[str, torch.Tensor]]:
    """The per-task loop on one thread: the reference of every other path."""
    return {(n, a): meta_gradient(learner(n, a, batching="loop", threads=1), n) for n in PIECES for a in ALGOS}


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("name", PIECES)
def test_default_path_is_exact_or_falls_back_with_one_line(name, algo, reference, capsys):
    learn = learner(name, algo)
    assert_equal_to(meta_gradient(learn, name), reference[name, algo])
    err = capsys.readouterr().err.strip()
    if learn.vmap_verdict is not None:  # checked and found wrong: the loop, said once in one line
        assert name in VMAP_WRONG
        assert len(err.splitlines()) == 1 and err.startswith("metagrad: batching 'auto' takes the per-task loop")
        meta_gradient(learn, name)
        assert capsys.readouterr().err == ""  # once
    else:
        assert err == ""
        assert learn.vmapped == (name not in VMAP_WRONG and "Conv" not in name and "Pool" not in name
                                 and "GroupNorm" not in name and "InstanceNorm" not in name)


# the module each refusal of an explicit vmap names (torch's batch norm is refused by its type, when it is built)
REFUSED_IN = {"LayerNorm (torch)": "'1' (LayerNorm)", "InstanceNorm1d (affine)": "'body.1' (InstanceNorm1d)",
              "InstanceNorm2d (affine)": "'body.1' (InstanceNorm2d)",
              "TransformerEncoderLayer": "'enc.norm1' (LayerNorm)",
              "TransformerEncoderLayer, norm_first": "'enc.norm1' (LayerNorm)", "RNN": "'rnn' (RNN)",
              "GRU": "'rnn' (GRU)", "LSTM": "'rnn' (LSTM)", "Embedding, padding_idx": "'emb' (Embedding)"}


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("name", PIECES)
def test_explicit_vmap_is_exact_or_refuses(name, algo, reference):
    """Where vmap is wrong, an explicit vmap stops with a ConfigError that names the first faulty module (torch's
    batch norm: by its type, with its replacement); a refusal that named neither passed while only "vmap" was
    matched."""
    if name in VMAP_WRONG:
        match = (r"batching 'vmap' with torch\.nn\.BatchNorm gives wrong second-order gradients.*TaskBatchNorm"
                 if "BatchNorm" in name else
                 r"batching 'vmap' is wrong for this model: .*, first in module " + re.escape(REFUSED_IN[name]))
        with pytest.raises(ConfigError, match=match):
            meta_gradient(learner(name, algo, batching="vmap"), name)
    else:
        assert_equal_to(meta_gradient(learner(name, algo, batching="vmap"), name), reference[name, algo])


@pytest.mark.parametrize("name", PIECES)
def test_task_threads_equal_the_loop(name, reference):
    assert_equal_to(meta_gradient(learner(name, "maml", batching="loop", threads=2), name), reference[name, "maml"])


@pytest.mark.parametrize("name", sorted(VMAP_WRONG - CANNOT_RUN - {"BatchNorm1d (torch)", "BatchNorm2d (torch)"}))
def test_without_the_check_vmap_is_wrong_where_the_matrix_says(name, reference):
    """The check is what protects: turned off, vmap gives a meta-gradient that differs from the loop."""
    got = meta_gradient(learner(name, "maml", batching="vmap", self_check=False), name)
    want = reference[name, "maml"]
    scale = max(float(g.abs().max()) for g in want.values())
    assert max(float((got[n] - g).abs().max()) for n, g in want.items()) > 1e-6 * scale


@pytest.mark.parametrize(("name", "module", "kind"), [
    ("LayerNorm (torch)", "1", "LayerNorm"), ("TransformerEncoderLayer", "enc.norm1", "LayerNorm"),
    ("GRU", "rnn", "GRU"), ("LSTM", "rnn", "LSTM"), ("attention by hand", None, None),
    ("softmax, dim 0 (over examples)", None, None)])
def test_the_faulty_module_is_named(name, module, kind):
    net = model(name)
    found = faulty_module(net, batch(name).support.x)
    assert (found and (found[0], type(found[1]).__name__)) == ((module, kind) if module else None)


def test_the_refusal_names_the_module_and_its_replacement():
    with pytest.raises(ConfigError) as e:
        meta_gradient(learner("LayerNorm (torch)", "maml", batching="vmap"), "LayerNorm (torch)")
    assert "module '1' (LayerNorm)" in str(e.value) and "metagrad.models.LayerNorm" in str(e.value)
    with pytest.raises(ConfigError, match=r"metagrad\.models\.TaskBatchNorm, which is exact under vmap"):
        mg.MAML(torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1)),
                inner=mg.SGD(0.1), batching="vmap")  # refused by its type, when it is built


def test_the_check_leaves_the_users_model_alone():
    """The check runs on a float64 copy: the float32 model keeps its dtype and values, and auto still batches it."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.GELU(), torch.nn.Linear(6, 1))
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    learn = mg.MAML(net, inner=mg.SGD(0.1), inner_steps=2)
    learn.meta_gradient(batch("GELU").to(torch.float32))
    assert learn.vmapped and learn.vmap_verdict is None
    for n, p in net.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p.detach(), before[n])


def test_evaluation_first_takes_the_same_decision():
    """A model evaluated before any training step (e.g. a loaded run) is checked there too: a GRU is never run
    under vmap (it would raise)."""
    learn = learner("GRU", "maml")
    curves = learn.adaptation_metrics(batch("GRU"), steps=2)
    assert not learn.vmapped and curves["loss"].shape == (3, 3)


def loop_gradient(net: torch.nn.Module, data: TaskBatch) -> torch.Tensor:
    """The per-task loop's meta-gradient of a copy of ``net``, flattened."""
    import copy

    ref = copy.deepcopy(net)
    mg.MAML(ref, inner=mg.SGD(0.1), batching="loop").meta_gradient(data)
    return torch.cat([p.grad.flatten() for p in ref.parameters()])


def test_a_layer_swapped_in_after_the_check_is_checked_again(capsys):
    """The check holds for the model it saw: a layer that vmap gets wrong, swapped in after a checked step (an
    Identity becoming torch's LayerNorm), is checked again, so auto falls back and an explicit vmap refuses."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Identity(), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    data = batch("Linear + Tanh")
    learn = mg.MAML(net.double(), inner=mg.SGD(0.1))
    learn.meta_gradient(data)
    assert learn.vmapped
    net[1] = torch.nn.LayerNorm(8).double()
    learn.zero_grad()
    learn.meta_gradient(data)
    got = torch.cat([p.grad.flatten() for p in net.parameters()])
    assert not learn.vmapped and "LayerNorm" in capsys.readouterr().err
    assert float((got - loop_gradient(net, data)).abs().max()) <= TOL * float(got.abs().max())
    explicit = mg.MAML(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Identity(), torch.nn.Linear(8, 1)).double(),
                       inner=mg.SGD(0.1), batching="vmap")
    explicit.meta_gradient(data)
    explicit.model[1] = torch.nn.LayerNorm(8).double()
    with pytest.raises(ConfigError, match="LayerNorm"):
        explicit.meta_gradient(data)


def test_a_mode_change_after_the_check_is_checked_again(capsys):
    """Dropout checked in eval mode (no random numbers) and trained after ``.train()``: checked again, so auto
    takes the loop instead of vmap's raw randomness error."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.2), torch.nn.Tanh(),
                              torch.nn.Linear(8, 1)).double().eval()
    data = batch("Linear + Tanh")
    learn = mg.MAML(net, inner=mg.SGD(0.1))
    learn.meta_gradient(data)
    assert learn.vmapped
    net.train()
    learn.meta_gradient(data)
    assert not learn.vmapped and "Dropout" in capsys.readouterr().err
    net.eval()  # back to a model vmap runs exactly: batched again
    learn.meta_gradient(data)
    assert learn.vmapped


def test_layer_norm_replacement_equals_torch():
    """metagrad.models.LayerNorm computes torch's LayerNorm, with the same state dict, in the loop and under vmap."""
    torch.manual_seed(0)
    ours, theirs = mg.models.LayerNorm(6).double(), torch.nn.LayerNorm(6).double()
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 1.5)
        theirs.bias.uniform_(-0.5, 0.5)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(5, 6, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-14)
    torch.testing.assert_close(torch.func.vmap(ours)(x[None].expand(2, -1, -1))[0], theirs(x), rtol=0, atol=1e-14)


@pytest.mark.parametrize("batching", ["loop", "vmap", "threads"])
@pytest.mark.parametrize("name", ["Linear under two names", "Linear weights tied"])
def test_shared_modules_and_tied_weights_keep_the_users_parameters(name, batching, reference):
    """A module registered under two names, and one weight held by two modules: after meta-gradients the model holds
    its own Parameters (torch's functional_call with tie_weights swapped the first kind back wrongly: the outer
    optimizer then moved nothing and the next meta-gradient was off by 6e-2), and a second call gives the same."""
    kw = {"batching": "loop", "threads": 2} if batching == "threads" else {"batching": batching}
    learn = learner(name, "maml", **kw)
    own = dict(learn.model.named_parameters(remove_duplicate=False))
    first, second = meta_gradient(learn, name), meta_gradient(learn, name)
    assert all(type(p) is torch.nn.Parameter and p is own[n]
               for n, p in learn.model.named_parameters(remove_duplicate=False))
    assert_equal_to(first, reference[name, "maml"])
    assert_equal_to(second, first)


def test_a_padding_index_in_a_later_batch_is_not_missed():
    """vmap's meta-gradient of an embedding with padding_idx is wrong only on batches holding the padding index, so
    the check refuses such a module whatever the first batch holds: auto takes the loop, an explicit vmap refuses."""
    name = "Embedding, padding_idx"
    first = batch(name)
    first = TaskBatch(Split(first.support.x.clamp(min=1), first.support.y), Split(first.query.x.clamp(min=1),
                                                                                    first.query.y))
    with pytest.raises(ConfigError, match=r"padding_idx.*module 'emb' \(Embedding\)"):
        learner(name, "maml", batching="vmap").meta_gradient(first)
    learn, loop = learner(name, "maml"), learner(name, "maml", batching="loop", threads=1)
    learn.meta_gradient(first)
    assert not learn.vmapped
    assert_equal_to(meta_gradient(learn, name), meta_gradient(loop, name))


class Gated(torch.nn.Module):
    """A residual block whose normalised branch is scaled by a gate (ReZero at 0, LayerScale at 1e-6) or by the
    output layer (a zero-initialised head): at its start the norm's affine part counts for almost nothing in the
    meta-gradient, so vmap's error in it is below the check's tolerance until training opens the gate."""

    def __init__(self, norm: str, gate: float, zero_head: bool = False):
        super().__init__()
        self.inp, self.out = torch.nn.Linear(4, 6), torch.nn.Linear(6, 1)
        self.gate = torch.nn.Parameter(torch.full((6,), gate))
        self.norm_kind = norm
        self.norm = {"torch": torch.nn.LayerNorm(6), "metagrad": mg.models.LayerNorm(6),
                     "instance": torch.nn.InstanceNorm1d(1, affine=True)}.get(norm)
        if norm == "functional":
            self.w, self.b = torch.nn.Parameter(torch.ones(6)), torch.nn.Parameter(torch.zeros(6))
        if zero_head:
            torch.nn.init.zeros_(self.out.weight)

    def normed(self, h: torch.Tensor) -> torch.Tensor:
        if self.norm_kind == "functional":
            return torch.nn.functional.layer_norm(h, (6,), self.w, self.b)
        if self.norm_kind == "instance":
            return self.norm(h[..., None, :])[..., 0, :]
        return self.norm(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.out(h + self.gate * torch.tanh(self.normed(h)))


HIDDEN_AT_THE_START = {"zero head": ("torch", 1.0, True), "ReZero gate": ("torch", 0.0, False),
                       "LayerScale gate": ("torch", 1e-6, False), "F.layer_norm, zero head": ("functional", 1.0, True),
                       "InstanceNorm1d, zero head": ("instance", 1.0, True)}


def plain_autograd_meta_gradient(net: torch.nn.Module, b: TaskBatch, lr: float = 0.1) -> list[torch.Tensor]:
    """One-step second-order MAML by hand: the mean over tasks of the query loss after a step on the support."""
    names, params = zip(*net.named_parameters(), strict=True)
    total = 0
    for t in range(b.num_tasks):
        support = torch.func.functional_call(net, dict(zip(names, params, strict=True)), (b.support.x[t],))
        g = torch.autograd.grad(((support - b.support.y[t]) ** 2).mean(), params, create_graph=True)
        fast = {n: p - lr * gi for n, p, gi in zip(names, params, g, strict=True)}
        query = torch.func.functional_call(net, fast, (b.query.x[t],))
        total = total + ((query - b.query.y[t]) ** 2).mean()
    return list(torch.autograd.grad(total / b.num_tasks, params))


def regression_batch(seed: int) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    return TaskBatch(Split(r(3, 6, 4), r(3, 6, 1)), Split(r(3, 4, 4), r(3, 4, 1)))


@pytest.mark.parametrize("case", HIDDEN_AT_THE_START)
def test_a_wrong_norm_that_counts_for_nothing_at_the_check_is_found_by_its_call(case, capsys):
    """The self-check compares numbers at the first batch's parameters; a layer norm behind a zero head or a closed
    gate passes it there (vmap's error ~1e-16), and once training moves the weights vmap was 2e-3 off, silently. So
    the check also goes by the call: auto takes the loop, exact through later outer steps; explicit vmap refuses."""
    norm, gate, zero_head = HIDDEN_AT_THE_START[case]
    torch.manual_seed(0)
    net = Gated(norm, gate, zero_head).double()
    with pytest.raises(ConfigError, match=r"batching 'vmap' is wrong.*(layer_norm|instance_norm) with affine"):
        mg.MAML(Gated(norm, gate, zero_head).double(), inner=mg.SGD(0.1), batching="vmap").meta_gradient(
            regression_batch(1))
    learn = mg.MAML(net, inner=mg.SGD(0.1), loss_fn=mg.losses.mse)
    opt = torch.optim.SGD(learn.parameters(), lr=0.5)
    for seed in (1, 2, 3):
        want = plain_autograd_meta_gradient(net, regression_batch(seed))
        learn.zero_grad()
        learn.meta_gradient(regression_batch(seed))
        scale = max(float(w.abs().max()) for w in want)
        for p, w in zip(net.parameters(), want, strict=True):
            assert float((p.grad - w).abs().max()) <= TOL * scale
        opt.step()
    assert not learn.vmapped and "norm with affine parameters" in learn.vmap_verdict
    assert capsys.readouterr().err.count("takes the per-task loop") == 1


def test_the_exact_layer_norm_behind_a_zero_head_keeps_vmap():
    """No false alarm: metagrad.models.LayerNorm normalises without the affine parameters under vmap, so the call
    check passes it and vmap stays, exact after the weights move."""
    torch.manual_seed(0)
    net = Gated("metagrad", 1.0, zero_head=True).double()
    learn = mg.MAML(net, inner=mg.SGD(0.1), loss_fn=mg.losses.mse)
    opt = torch.optim.SGD(learn.parameters(), lr=0.5)
    for seed in (1, 2):
        want = plain_autograd_meta_gradient(net, regression_batch(seed))
        learn.zero_grad()
        learn.meta_gradient(regression_batch(seed))
        scale = max(float(w.abs().max()) for w in want)
        assert all(float((p.grad - w).abs().max()) <= TOL * scale
                   for p, w in zip(net.parameters(), want, strict=True))
        opt.step()
    assert learn.vmapped and learn.vmap_verdict is None


class ReassignedState(torch.nn.Module):
    """Keeps a running mean by assigning a new tensor to its buffer, as plain PyTorch code may."""

    def __init__(self):
        super().__init__()
        self.a, self.out = torch.nn.Linear(4, 6), torch.nn.Linear(6, 1)
        self.register_buffer("m", torch.zeros(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        self.m = 0.9 * self.m + 0.1 * h.mean(0).detach()
        return self.out(torch.tanh(h - self.m))


@pytest.mark.parametrize("batching", ["auto", "loop", "vmap"])
def test_a_buffer_assigned_anew_in_forward_is_refused_not_silently_reset(batching):
    """functional_call puts a module's buffers back after each call, so a forward that assigns ``self.m = ...``
    lost its new value after every call on every path (the meta-gradient of a model reset before each forward,
    silently). The first meta-gradient's dry run sees the slot replaced and refuses, naming the buffer; the model is
    left as it was."""
    torch.manual_seed(0)
    net = ReassignedState().double()
    before = {n: t.clone() for n, t in net.state_dict().items()}
    learn = mg.MAML(net, inner=mg.SGD(0.1), loss_fn=mg.losses.mse, batching=batching)
    with pytest.raises(ConfigError, match=r"assigns new tensors to its buffers m as it runs.*in place"):
        learn.meta_gradient(regression_batch(1))
    assert all(torch.equal(before[n], t) for n, t in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())


def test_a_buffer_updated_in_place_still_runs_on_the_loop():
    """The remedy the refusal names: the same running mean updated in place is kept by the per-task loop."""

    class InPlace(ReassignedState):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x)
            self.m.mul_(0.9).add_(0.1 * h.mean(0).detach())
            return self.out(torch.tanh(h - self.m))

    net = InPlace().double()
    mg.MAML(net, inner=mg.SGD(0.1), loss_fn=mg.losses.mse, batching="loop").meta_gradient(regression_batch(1))
    assert float(net.m.abs().max()) > 0


class EvalAttention(torch.nn.Module):
    """Self-attention in eval mode, where torch's attention modules take their inference fast path when they see no
    gradient being recorded: under torch.func they cannot see it, and the fast path has no derivative."""

    def __init__(self, kind: str):
        super().__init__()
        self.inp, self.out = torch.nn.Linear(1, 8), torch.nn.Linear(8, 1)
        self.kind = kind
        self.att = (torch.nn.MultiheadAttention(8, 2, batch_first=True) if kind == "MultiheadAttention" else
                    torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x[..., None]))
        h = self.att(h, h, h, need_weights=False)[0] if self.kind == "MultiheadAttention" else self.att(h)
        return self.out(h.mean(-2))


@pytest.mark.parametrize("first_order", [True, False])
@pytest.mark.parametrize("batching", ["auto", "vmap"])
@pytest.mark.parametrize("kind", ["MultiheadAttention", "TransformerEncoderLayer"])
def test_attention_in_eval_mode_runs_under_vmap_as_on_the_loop(kind, batching, first_order):
    """Under vmap these stopped with "torch has none for '_native_multi_head_attention'; use first_order=True", also
    at first order (the float64 copy of the self-check does not take the fast path, so it passed). The engine turns
    the fast path off and runs again: the meta-gradient equals the loop's (float32: the fast path is float32's)."""
    torch.manual_seed(0)
    net = EvalAttention(kind).eval()
    ref = copy.deepcopy(net)
    b = TaskBatch(*(Split(torch.randn(3, n, 4), torch.randn(3, n, 1)) for n in (5, 4)))
    learn = mg.MAML(net, inner=mg.SGD(0.1), first_order=first_order, loss_fn=mg.losses.mse, batching=batching)
    loop = mg.MAML(ref, inner=mg.SGD(0.1), first_order=first_order, loss_fn=mg.losses.mse, batching="loop")
    norms = kind == "TransformerEncoderLayer" and not first_order  # its layer norms: wrong 2nd derivatives in vmap
    if norms and batching == "vmap":
        with pytest.raises(ConfigError, match="layer_norm with affine parameters"):
            learn.meta_gradient(b)
        return
    assert learn.meta_gradient(b)["meta_loss"] == pytest.approx(loop.meta_gradient(b)["meta_loss"], rel=1e-5)
    assert learn.vmapped == (not norms)
    for p, q in zip(net.parameters(), ref.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6)
    assert torch.backends.mha.get_fastpath_enabled()  # left as it was


class NormedAttention(torch.nn.Module):
    """Batch norm in training mode before multi-head attention: the fused attention kernel has no double backward,
    so the first second-order call fails and runs again on the math kernel."""

    def __init__(self):
        super().__init__()
        self.bn, self.inp = torch.nn.BatchNorm1d(4), torch.nn.Linear(1, 8)
        self.att, self.out = torch.nn.MultiheadAttention(8, 2, batch_first=True), torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(self.bn(x)[..., None]))
        return self.out(self.att(h, h, h, need_weights=False)[0].mean(-2))


def test_the_attention_retry_does_not_move_the_running_statistics_twice():
    """The failed first pass on the fused kernel had already updated batch norm's running statistics: the retry
    counted every forward pass twice (18 batches tracked for 3 tasks x (2 steps + the query)); now as on the math
    kernel from the start."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    g = torch.Generator().manual_seed(0)
    data = TaskBatch(Split(torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, 2, generator=g)),
                     Split(torch.randn(3, 6, 4, generator=g), torch.randn(3, 6, 2, generator=g)))
    models = []
    for math_kernel in (False, True):
        torch.manual_seed(0)
        models.append(NormedAttention())
        with sdpa_kernel([SDPBackend.MATH]) if math_kernel else contextlib.nullcontext():
            mg.MAML(models[-1], inner=mg.SGD(0.1), inner_steps=2).meta_gradient(data)
    fused, math = models
    assert int(fused.bn.num_batches_tracked) == int(math.bn.num_batches_tracked) == 9
    assert torch.equal(fused.bn.running_mean, math.bn.running_mean)
    assert torch.equal(fused.bn.running_var, math.bn.running_var)
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(fused.parameters(), math.parameters(), strict=True))


class Pixels(torch.nn.Module):
    """A forward pass that casts its input to float32 itself (uint8 pixels / 255)."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.float() / 255)


def test_a_model_that_casts_its_input_is_not_stopped_by_the_float64_check(capsys):
    """The self-check's float64 copy fed float32 into float64 layers and crashed with torch's dtype error, though
    the model runs as it is: auto now takes the loop (the safe side) and says why; the gradient is the loop's."""
    g = torch.Generator().manual_seed(0)
    pixels = lambda: torch.randint(0, 256, (2, 5, 4), dtype=torch.uint8, generator=g)  # noqa: E731
    labels = lambda: torch.randint(0, 3, (2, 5), generator=g)  # noqa: E731
    data = TaskBatch(Split(pixels(), labels()), Split(pixels(), labels()))
    grads = []
    for batching in ("auto", "loop"):
        torch.manual_seed(0)
        learn = mg.MAML(Pixels(), loss_fn=mg.losses.cross_entropy, inner=mg.SGD(0.1), batching=batching)
        learn.meta_gradient(data)
        grads.append([p.grad for p in learn.parameters()])
    assert "float64 copy cannot run" in capsys.readouterr().err
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))
    with pytest.raises(ConfigError, match=r"could not be checked.*self_check=False"):
        mg.MAML(Pixels(), loss_fn=mg.losses.cross_entropy, inner=mg.SGD(0.1), batching="vmap").meta_gradient(data)


@pytest.mark.parametrize("name", ["GRU", "Dropout"])
def test_non_transductive_metrics_on_the_loop_do_not_vmap(name):
    """With batching 'loop' given (the self-check never runs), predicting each query alone vmapped over the queries
    and crashed on a GRU ("Batching rule not implemented") or dropout (random operation under vmap). The GRU's
    losses are each query's, predicted with the support set alone, computed here by hand."""
    models = {"GRU": lambda: model("GRU"), "Dropout": lambda: torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 2))}
    data = batch("GRU") if name == "GRU" else TaskBatch(Split(torch.randn(3, 5, 4), torch.randn(3, 5, 2)),
                                                         Split(torch.randn(3, 6, 4), torch.randn(3, 6, 2)))
    learn = mg.MAML(models[name](), inner=mg.SGD(0.1), batching="loop")
    metrics = learn.adaptation_metrics(data, steps=2, transductive=False)
    assert metrics["loss"].shape == (3, 3) and bool(torch.isfinite(metrics["loss"]).all())
    if name == "GRU":  # each query's prediction with the support set alone after 0, 1, 2 steps, by hand (float64)
        net = learn.model
        for t in range(3):
            params = dict(net.named_parameters())
            for step in range(3):
                with torch.no_grad():
                    outs = torch.stack([torch.func.functional_call(net, params, torch.cat([data.support.x[t], q[None]]))
                                        [-1] for q in data.query.x[t]])
                want = mg.losses.mse(outs, data.query.y[t])
                assert metrics["loss"][t, step].item() == pytest.approx(want.item(), rel=1e-10, abs=1e-12), (t, step)
                support = mg.losses.mse(torch.func.functional_call(net, params, data.support.x[t]), data.support.y[t])
                grads = torch.autograd.grad(support, list(params.values()))
                params = {n: (v - 0.1 * g).detach().requires_grad_()
                          for (n, v), g in zip(params.items(), grads, strict=True)}


def test_support_and_query_sequences_of_other_lengths_are_read():
    """Token sequences padded per split (support [3, 4, 5], query [3, 6, 9]) for a model that pools over them: an
    input check that wanted equal shapes refused them for a while. Read, they give plain autograd's meta-gradient."""
    g = torch.Generator().manual_seed(0)
    data = TaskBatch(Split(torch.randint(0, 7, (3, 4, 5), generator=g), torch.randn(3, 4, 1, dtype=torch.float64)),
                     Split(torch.randint(0, 7, (3, 6, 9), generator=g), torch.randn(3, 6, 1, dtype=torch.float64)))
    torch.manual_seed(0)
    net = FunctionalEmbed().double()
    learn = mg.MAML(net, inner=mg.SGD(0.5))
    meta_loss = learn.meta_gradient(data)["meta_loss"]
    params = dict(net.named_parameters())  # second-order MAML, one step, by plain autograd: each task's own lengths
    losses = []
    for t in range(3):
        support = mg.losses.mse(torch.func.functional_call(net, params, data.support.x[t]), data.support.y[t])
        grads = torch.autograd.grad(support, list(params.values()), create_graph=True)
        adapted = {n: v - 0.5 * g for (n, v), g in zip(params.items(), grads, strict=True)}
        losses.append(mg.losses.mse(torch.func.functional_call(net, adapted, data.query.x[t]), data.query.y[t]))
    want = torch.autograd.grad(torch.stack(losses).mean(), list(params.values()))
    assert meta_loss == pytest.approx(float(torch.stack(losses).mean()), rel=1e-12)
    for (n, p), g in zip(params.items(), want, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12, msg=n)


class Branching(torch.nn.Module):
    """A forward pass with one of torch's higher-order operators (``torch.cond``)."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cond(x.sum() > 0, lambda x: self.lin(x), lambda x: 2 * self.lin(x), (x,))


def test_a_model_with_a_higher_order_operator_still_passes_the_embedding_recorder():
    """The recorder of embedding options was first a dispatch mode, which refuses torch.cond: the self-check's loop
    failed and the model was said to be unreadable; the function mode lets it run (auto then takes the loop, as
    vmap cannot run it), its gradient the loop's."""
    data = mg.tasks.Sinusoid(shots=5, query=5).sample(3, torch.Generator().manual_seed(0))
    grads = []
    for batching in ("auto", "loop"):
        torch.manual_seed(0)
        learn = mg.MAML(Branching(), batching=batching)
        learn.meta_gradient(data)
        grads.append([p.grad for p in learn.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


class FunctionalEmbed(torch.nn.Module):
    """An embedding written with ``F.embedding`` in the forward pass: no ``nn.Embedding`` module to look up."""

    def __init__(self, **options):
        super().__init__()
        self.weight, self.out, self.options = torch.nn.Parameter(torch.randn(7, 4)), torch.nn.Linear(4, 1), options

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.nn.functional.embedding(x, self.weight, **self.options).tanh().mean(1))


def token_tasks(low: int, seed: int) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    tokens = lambda n: torch.randint(low, 7, (3, n, 5), generator=g)  # noqa: E731
    return TaskBatch(Split(tokens(4), torch.randn(3, 4, 1, generator=g, dtype=torch.float64)),
                     Split(tokens(6), torch.randn(3, 6, 1, generator=g, dtype=torch.float64)))


@pytest.mark.parametrize("options", [{"padding_idx": 0}, {"scale_grad_by_freq": True}])
def test_a_functional_embeddings_data_dependent_options_are_found(options):
    """F.embedding with padding_idx escaped the module check and, with a first batch free of the padding index, passed
    the one-batch comparison: every later batch took a wrong vmapped gradient (12% off). The options are now
    recorded while the check's loop runs: auto takes the loop, an explicit vmap refuses."""
    first, later = token_tasks(1, 0), token_tasks(0, 1)
    grads = {}
    for batching in ("auto", "loop"):
        torch.manual_seed(0)
        learn = mg.MAML(FunctionalEmbed(**options).double(), inner=mg.SGD(0.5), inner_steps=2, batching=batching)
        learn.meta_gradient(first)
        learn.zero_grad()
        learn.meta_gradient(later)
        grads[batching] = {n: p.grad.clone() for n, p in learn.named_parameters()}
        assert not learn.vmapped
    assert_equal_to(grads["auto"], grads["loop"])
    torch.manual_seed(0)
    with pytest.raises(ConfigError, match=rf"{next(iter(options))}.*F\.embedding"):
        mg.MAML(FunctionalEmbed(**options).double(), inner=mg.SGD(0.5), batching="vmap").meta_gradient(first)
    plain = mg.MAML(FunctionalEmbed().double(), inner=mg.SGD(0.5))
    plain.meta_gradient(first)
    assert plain.vmapped  # without those options the functional embedding is exact under vmap and keeps it


@pytest.mark.parametrize(("name", "batching"), [("LayerNorm (metagrad)", "vmap"), ("LayerNorm (torch)", "loop"),
                                                ("InstanceNorm1d (affine)", "loop"), ("GRU", "loop"),
                                                ("Linear under two names", "vmap"), ("Linear weights tied", "vmap")])
def test_exact_paths_match_finite_differences(name, batching):
    """The paths called exact match central finite differences of the meta-loss (the reference is right)."""
    learn = learner(name, "maml", batching=batching)
    got = meta_gradient(learn, name)
    b = batch(name)
    first_name, p = next(iter(learn.named_parameters()))
    for k in (0, 5):
        def loss_at(delta: float, k: int = k) -> float:
            with torch.no_grad():
                p.view(-1)[k] += delta
            value = learn.meta_gradient(b, torch.Generator().manual_seed(0))["meta_loss"]
            with torch.no_grad():
                p.view(-1)[k] -= delta
            return value
        fd = (loss_at(1e-6) - loss_at(-1e-6)) / 2e-6
        assert got[first_name].view(-1)[k].item() == pytest.approx(fd, rel=1e-6, abs=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["Linear + Tanh", "LayerNorm (torch)", "LayerNorm (metagrad)", "attention by hand",
                                  "GRU"])
def test_compiled_path_equals_the_loop(name, reference):
    assert_equal_to(meta_gradient(learner(name, "maml", compile=True), name), reference[name, "maml"])


@pytest.mark.slow
def test_a_second_compiled_model_in_the_process_compiles_too(reference):
    """Dynamo's cache is per function: a second model recompiles it; with symbolic shapes inductor failed on a 3-d
    convolution's backward after a 1-d one (torch 2.13), so compile=True keeps shapes static."""
    for name in ("Conv1d", "Conv3d"):
        assert_equal_to(meta_gradient(learner(name, "maml", compile=True), name), reference[name, "maml"])


def test_upstream_reproductions_still_show_the_faults():
    """docs/vmap_second_order.py, torch alone: the faults the self-check guards against are torch's. When this
    fails, torch has fixed one: update the matrix (tests/compat_models.py) and docs/compatibility.md."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "docs" / "vmap_second_order.py"
    spec = importlib.util.spec_from_file_location("vmap_second_order", path)
    repro = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(repro)
    for name in ("layer_norm", "instance_norm", "batch_norm"):
        assert repro.difference(name) > 1e-2, name
    with pytest.raises(RuntimeError, match=r"output with shape \[1, 6\] doesn't match the broadcast shape \[2, 1, 6\]"):
        repro.difference("gru")  # vmap's own fault (matching "shape" alone let the repro's own reshape errors pass)
    assert repro.difference("softmax_dim0") < 1e-12


def test_the_model_zoo_uses_the_exact_layer_norm():
    """MLP(norm="layer") takes metagrad's LayerNorm: the default path keeps vmap and equals the loop in float64."""
    torch.manual_seed(0)
    net = mg.models.MLP(4, [6, 6], 1, activation="tanh", norm="layer").double()
    assert sum(isinstance(m, mg.models.LayerNorm) for m in net) == 2
    b = batch("Linear + Tanh")
    grads = {}
    for batching in ("auto", "loop"):
        learn = mg.MAML(net, inner=mg.SGD(0.1), inner_steps=2, batching=batching).double()
        learn.zero_grad()
        learn.meta_gradient(b)
        grads[batching] = {n: p.grad.clone() for n, p in learn.named_parameters()}
        if batching == "auto":
            assert learn.vmapped and learn.vmap_verdict is None
    assert_equal_to(grads["auto"], grads["loop"])


def test_the_docs_quote_the_matrix_as_tested():
    """The generated matrix holds exactly the tested pieces, and every page that counts them gives that count."""
    root = Path(__file__).resolve().parents[1]
    rows = (root / "docs/compatibility_matrix.md").read_text().splitlines()
    matrix = {r.split("|")[1].strip() for r in rows[6:] if r.startswith("| ")}
    assert matrix == set(PIECES)
    for page in ("README.md", "docs/api.md", "docs/compatibility.md"):
        counts = re.findall(r"(\d+) (?:torch\.nn )?pieces", (root / page).read_text())
        assert counts and all(int(c) == len(PIECES) for c in counts), (page, counts)


class Bag(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bag = torch.nn.EmbeddingBag(9, 3, mode="mean")
        self.out = torch.nn.Linear(3, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(self.bag(tokens).tanh())


def token_batch() -> TaskBatch:
    g = torch.Generator().manual_seed(0)
    return TaskBatch(Split(torch.randint(0, 9, (3, 5, 4), generator=g), torch.randn(3, 5, 1, generator=g)),
                     Split(torch.randint(0, 9, (3, 4, 4), generator=g), torch.randn(3, 4, 1, generator=g)))


@pytest.mark.parametrize("batching", ["auto", "loop", "vmap"])
def test_an_operation_without_second_derivatives_is_named_with_the_fix(batching):
    """torch has no second derivative of nn.EmbeddingBag's backward: second-order MAML stops with a ConfigError that
    names the operation and the fix (first order), on every path; first order runs and matches the reference."""
    torch.manual_seed(0)
    with pytest.raises(ConfigError, match=r"_embedding_bag_backward.*nn.EmbeddingBag.*first_order=True"):
        mg.MAML(Bag(), inner=mg.SGD(0.1), batching=batching).meta_gradient(token_batch())
    model = Bag().double()
    learn = mg.MAML(model, inner=mg.SGD(0.1), batching=batching, first_order=True)
    learn.meta_gradient(token_batch())
    ref = mg.MAML(model, inner=mg.SGD(0.1), batching="loop", first_order=True, self_check=False)
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ref.meta_gradient(token_batch())
    assert any(float(g.abs().max()) > 0 for g in got.values())
    for n, p in model.named_parameters():
        torch.testing.assert_close(got[n], p.grad, rtol=1e-12, atol=1e-14)


def test_recompute_refuses_a_model_that_updates_its_buffers():
    """``recompute=True`` differentiates with torch.func, which cannot run batch norm's running-statistics update:
    a ConfigError with the ways out instead of torch.func's message about captured tensors. In eval mode it runs,
    and its meta-gradient is the one without recompute."""
    import copy

    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.Tanh(),
                                torch.nn.Linear(6, 1)).double()
    data = TaskBatch(Split(torch.randn(3, 5, 4), torch.randn(3, 5, 1)),
                     Split(torch.randn(3, 4, 4), torch.randn(3, 4, 1))).to(torch.float64)
    with pytest.raises(ConfigError, match=r"updates its buffers.*recompute=False"):
        mg.MAML(model, inner=mg.SGD(0.1), recompute=True).meta_gradient(data)
    model.eval().zero_grad()  # eval mode: nothing updated, and recompute equals the plain meta-gradient
    plain = copy.deepcopy(model)
    mg.MAML(model, inner=mg.SGD(0.1), inner_steps=2, recompute=True).meta_gradient(data)
    mg.MAML(plain, inner=mg.SGD(0.1), inner_steps=2, recompute=False).meta_gradient(data)
    for (n, p), q in zip(model.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=n)


@pytest.mark.parametrize("parametrized", [True, False])
def test_recompute_refuses_spectral_norm_in_training_mode(parametrized):
    """Spectral norm in training mode advances its power iteration (buffers written under no_grad, which torch.func
    lets through) on every forward pass, and recompute makes more of them than the loop: refused, naming the
    buffers; in eval mode its state stays put and recompute equals the loop."""
    norm = torch.nn.utils.parametrizations.spectral_norm if parametrized else torch.nn.utils.spectral_norm

    def make() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), norm(torch.nn.Linear(8, 8)),
                                   torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()

    data = batch("Linear + Tanh")
    with pytest.raises(ConfigError, match=r"updates its buffers as it runs \(2\..*_u.*recompute=False"):
        mg.MAML(make(), inner=mg.SGD(0.1), batching="loop", recompute=True).meta_gradient(data)
    grads = {}
    for recompute in (False, True):
        net = make().eval()
        mg.MAML(net, inner=mg.SGD(0.1), inner_steps=2, batching="loop", recompute=recompute).meta_gradient(data)
        grads[recompute] = torch.cat([p.grad.flatten() for p in net.parameters()])
    assert float((grads[True] - grads[False]).abs().max()) <= TOL * float(grads[False].abs().max())


def test_torch_weight_norm_is_refused_for_second_order_and_its_fault_is_torchs():
    """torch._weight_norm's second derivative is wrong (gradgradcheck fails, torch alone), on every path, so the
    self-check, which compares paths, cannot see it: second-order MAML refuses a weight-normed module by its type
    (both of torch's forms), first order takes it. When the gradgradcheck passes, torch has fixed it: drop the
    refusal."""
    import warnings

    from torch.nn.utils import parametrizations

    v = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    g = torch.rand(4, 1, dtype=torch.float64, requires_grad=True) + 0.5
    assert not torch.autograd.gradgradcheck(lambda v, g: torch._weight_norm(v, g, 0), (v, g), raise_exception=False)
    new_style = parametrizations.weight_norm(torch.nn.Linear(3, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the older form is deprecated, and still in use
        old_style = torch.nn.utils.weight_norm(torch.nn.Linear(3, 4))
    for module in (new_style, old_style):
        with pytest.raises(ConfigError, match="weight norm, whose second derivative torch gets wrong"):
            mg.MAML(torch.nn.Sequential(torch.nn.Tanh(), module), inner=mg.SGD(0.1))
        mg.MAML(torch.nn.Sequential(torch.nn.Tanh(), module), inner=mg.SGD(0.1), first_order=True)


@pytest.mark.parametrize("form", ["parametrization", "hook"])
@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_weight_norm_put_on_after_the_learner_is_built_is_refused_at_the_next_meta_gradient(form, compile):
    """The refusal above holds for a model changed after the learner was built (it once ran, 0.46-2.1 off); a
    first-order learner goes on, with the per-task loop's meta-gradient of the weight-normed model."""
    import copy
    import warnings

    from torch.nn.utils import parametrizations

    batch = sinusoid_batch(tasks=3, dtype=torch.float64)
    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
              for _ in range(2)]
    learners = [mg.MAML(m, inner=mg.SGD(0.1), first_order=fo, compile=compile and not fo)
                for m, fo in zip(models, (False, True), strict=True)]
    for one in learners:
        one.meta_gradient(batch)
    reference = copy.deepcopy(models[1])  # the first-order learner's model, weight-normed too: the per-task loop's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for net in (*models, reference):
            (parametrizations.weight_norm if form == "parametrization" else torch.nn.utils.weight_norm)(net[2])
    with pytest.raises(ConfigError, match="module '2' uses torch's weight norm"):
        learners[0].meta_gradient(batch)
    for net in (models[1], reference):
        net.zero_grad()
    learners[1].meta_gradient(batch)
    mg.MAML(reference, inner=mg.SGD(0.1), first_order=True, batching="loop", self_check=False).meta_gradient(batch)
    for (n, p), q in zip(models[1].named_parameters(), reference.parameters(), strict=True):
        assert float(q.grad.abs().max()) > 0, n
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=n)
