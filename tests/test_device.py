"""Training on a device: the ``device`` setting, batches moved to the model's device, checkpoints readable anywhere.

The CPU machines of CI check the setting, the moves (onto torch's ``meta`` device, which needs no GPU) and the
errors; the last two tests train on a GPU against the CPU where torch sees one (a lent device machine)."""

from __future__ import annotations

import pytest
import torch

from metagrad import checkpoint
from metagrad.batch import Split, TaskBatch
from metagrad.build import build_tasks
from metagrad.cli import main
from metagrad.config import load_config
from metagrad.distributed import Distributed
from metagrad.errors import ConfigError
from metagrad.experiment import load_run, make_trainer, train
from metagrad.train import Trainer

SMALL = {"iterations": 20, "meta_batch_size": 4, "checkpoint_every": 10, "val_every": 0, "log_every": 10,
         "eval_tasks": 20, "eval_shots": (5,)}
NO_GPU = not torch.cuda.is_available()


def _batch() -> TaskBatch:
    return TaskBatch(Split(torch.randn(3, 5, 1), torch.randint(0, 4, (3, 5))),
                     Split(torch.randn(3, 7, 1), torch.randint(0, 4, (3, 7))))


def test_a_batch_moves_whole_to_a_device_and_keeps_its_dtypes():
    moved = _batch().to("meta")
    leaves = [*moved.support, *moved.query]
    assert all(t.device.type == "meta" for t in leaves) and moved.device.type == "meta"
    assert [t.dtype for t in leaves] == [torch.float32, torch.int64] * 2  # labels stay integers
    cast = _batch().to(torch.float64)  # a dtype still casts the floating-point tensors alone
    assert [t.dtype for t in (*cast.support, *cast.query)] == [torch.float64, torch.int64] * 2


def test_a_learner_takes_cpu_batches_onto_its_own_device():
    learner = make_trainer(load_config("sinusoid-maml").replace(**SMALL), None, progress=False).learner
    batch, mb = _batch(), torch.zeros(3, 1, 2, dtype=torch.long)
    assert learner.on_model_device(batch, mb) == (batch, mb)  # already there: the same objects, nothing copied
    learner.to("meta")
    moved, moved_mb = learner.on_model_device(batch, mb)
    assert moved.device.type == "meta" and moved_mb.device.type == "meta"
    assert learner.on_model_device(batch, None)[1] is None


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cuda0"])
def test_a_device_torch_does_not_name_is_refused_with_the_choices(device):
    with pytest.raises(ConfigError, match=f"device '{device}' is not one of cpu, cuda, cuda:N"):
        load_config("sinusoid-maml").replace(device=device)


@pytest.mark.parametrize(("device", "match"), [
    pytest.param("cuda", "torch sees no GPU on this machine", marks=pytest.mark.skipif(not NO_GPU, reason="a GPU")),
    pytest.param("cuda:64", "this machine has", marks=pytest.mark.skipif(NO_GPU, reason="no GPU")),
])
def test_training_on_a_device_that_is_not_here_is_refused_with_the_fix(device, match):
    with pytest.raises(ConfigError, match=match):
        make_trainer(load_config("sinusoid-maml").replace(device=device, **SMALL), None, progress=False)


def test_the_cli_takes_the_device_and_refuses_a_wrong_one(tmp_path, capsys):
    """--device overrides the config file's: a file naming a GPU that no machine has (cuda:64) trains on the CPU
    with --device cpu, which the run's config.toml records."""
    code = main(["train", "--config", "sinusoid-maml", "--device", "tpu", "--iterations", "2",
                 "--out", str(tmp_path / "run"), "--no-progress"])
    assert code != 0 and "device 'tpu' is not one of cpu, cuda, cuda:N" in capsys.readouterr().err
    config = tmp_path / "gpu.toml"
    config.write_text(load_config("sinusoid-maml").replace(device="cuda:64", meta_batch_size=2).to_toml())
    code = main(["train", "--config", str(config), "--device", "cpu", "--iterations", "2",
                 "--out", str(tmp_path / "cpu"), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert load_config(tmp_path / "cpu" / "config.toml").device == "cpu"
    assert 'device = "cpu"' in (tmp_path / "cpu" / "config.toml").read_text()


def test_torchrun_on_a_gpu_is_refused():
    """Its processes would all take the one GPU the learner is on (and NCCL refuses ranks sharing a GPU)."""
    cfg = load_config("sinusoid-maml").replace(**SMALL)
    learner = make_trainer(cfg, None, progress=False).learner.to("meta")
    with pytest.raises(ConfigError, match="device cuda under torchrun is not supported"):
        Trainer(learner, build_tasks(cfg), torch.optim.SGD(learner.parameters(), lr=0.1), iterations=1,
                meta_batch_size=4, distributed=Distributed(rank=0, world=2))


@pytest.mark.parametrize(("experiment", "device", "match"), [
    ("navigation", "cuda", "navigation runs on the CPU"),
    ("reptile-gradients", "cpu", "reptile-gradients runs on the CPU"),
    ("sinusoid", "tpu", "device 'tpu' is not one of cpu, cuda, cuda:N"),
])
def test_reproduce_takes_a_device_where_it_trains_on_one(tmp_path, capsys, experiment, device, match):
    code = main(["reproduce", experiment, "--device", device, "--iterations", "1", "--out", str(tmp_path / "out"),
                 "--no-progress"])
    assert code != 0 and match in capsys.readouterr().err


def _as_if_trained_on_a_gpu(run, device: str = "cuda:0") -> None:
    """Rewrite the run's last checkpoint with ``device`` in its stored config (what a GPU run leaves)."""
    state, info = checkpoint.load(run / "last")
    info["config"]["train"]["device"] = device
    checkpoint.save(run / "last", state, info)


@pytest.mark.skipif(not NO_GPU, reason="checks the machine without a GPU")
def test_a_gpu_run_is_read_and_continued_on_a_machine_without_one(tmp_path, capsys):
    """Its checkpoint holds CPU tensors: evaluated here (with a note that it moved) and resumed with device cpu,
    where it goes on as the run that never left the CPU."""
    cfg = load_config("sinusoid-maml").replace(**SMALL)
    whole, _ = train(cfg, tmp_path / "whole", progress=False)
    train(cfg.replace(iterations=10), tmp_path / "run", progress=False)
    _as_if_trained_on_a_gpu(tmp_path / "run")
    learner, stored, _ = load_run(tmp_path / "run")
    assert stored.device == "cpu" and next(learner.parameters()).device.type == "cpu"
    assert "trained on cuda:0; no GPU here" in capsys.readouterr().err
    resumed, fit = train(cfg, tmp_path / "run", resume=True, progress=False)
    assert fit.iteration == 20
    for (name, a), b in zip(whole.learner.state_dict().items(), resumed.learner.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.skipif(NO_GPU, reason="needs a GPU (torch.cuda.is_available())")
def test_training_on_a_gpu_follows_the_cpu_run_and_its_checkpoint_loads_anywhere(tmp_path):
    """The same seed on the GPU and on the CPU: the same tasks, nearly the same parameters (float32 kernels
    differ); the GPU run's checkpoint resumes on the GPU and loads on the CPU."""
    cfg = load_config("sinusoid-maml").replace(**SMALL)
    cpu, _ = train(cfg, tmp_path / "cpu", progress=False)
    gpu_cfg = cfg.replace(device="cuda")
    train(gpu_cfg.replace(iterations=10), tmp_path / "gpu", progress=False)
    gpu, fit = train(gpu_cfg, tmp_path / "gpu", resume=True, progress=False)
    assert fit.iteration == 20
    for (name, a), b in zip(cpu.learner.state_dict().items(), gpu.learner.state_dict().values(), strict=True):
        assert b.device.type == "cuda"
        torch.testing.assert_close(b.cpu(), a, rtol=1e-3, atol=1e-4, msg=name)
    learner, _, _ = load_run(tmp_path / "gpu")
    assert next(learner.parameters()).device.type == "cuda"  # the stored config says cuda


@pytest.mark.skipif(NO_GPU, reason="needs a GPU (torch.cuda.is_available())")
def test_a_compiled_conv4_meta_gradient_on_a_gpu_equals_the_cpu_loop():
    """What the 20-way Omniglot rows run on a lent GPU (`reproduce omniglot --device cuda --compile`): Conv4 with
    per-task batch norm, second order, compiled on the GPU, against the per-task loop on the CPU in float64."""
    import metagrad as mg

    gen = torch.Generator().manual_seed(0)
    images = torch.randn(4, 2 * 5, 1, 28, 28, generator=gen, dtype=torch.float64)
    labels = torch.arange(5).repeat(2).expand(4, -1)
    batch = TaskBatch(Split(images[:, :5], labels[:, :5]), Split(images[:, 5:], labels[:, 5:]))
    grads = {}
    for device, compile in (("cpu", False), ("cuda", True)):
        torch.manual_seed(0)
        model = mg.models.Conv4(1, 5, filters=8).double().to(device)
        learner = mg.MAML(model, loss_fn=mg.losses.cross_entropy, inner=mg.SGD(0.4), inner_steps=2,
                          batching="loop" if device == "cpu" else "auto",
                          compile=compile)
        learner.meta_gradient(batch)
        grads[device] = [p.grad.cpu() for p in learner.parameters()]
    for a, b in zip(grads["cpu"], grads["cuda"], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)
