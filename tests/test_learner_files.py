"""learner.save / learner.load as a user calls them: dotted names, failed loads, files of another kind."""

from __future__ import annotations

import pytest
import torch

import metagrad as mg
from metagrad.errors import CheckpointError


def maml(lr: float = 0.01, hidden: int = 8, **kw) -> mg.MAML:
    torch.manual_seed(int(lr * 1000) + hidden)
    return mg.MAML(mg.models.MLP(1, [hidden], 1), inner=mg.SGD(lr), **kw)


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_dotted_names_are_names_of_their_own(tmp_path):
    """``save("maml_lr0.01")`` once dropped ".01": the next save overwrote it and load returned the other model."""
    first, second = maml(0.01), maml(0.02)
    first.save(tmp_path / "maml_lr0.01")
    second.save(tmp_path / "maml_lr0.02")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maml_lr0.01.json", "maml_lr0.01.safetensors",
                                                           "maml_lr0.02.json", "maml_lr0.02.safetensors"]
    assert same(maml(0.05).load(tmp_path / "maml_lr0.01"), first)
    assert same(maml(0.05).load(tmp_path / "maml_lr0.02.safetensors"), second)  # the suffix may be given


def test_a_folder_or_an_empty_name_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="is a folder"):
        maml().save(tmp_path)
    with pytest.raises(CheckpointError, match="no file name"):
        maml().save("")


@pytest.mark.parametrize("other", ["wider", "meta-sgd", "reptile"])
def test_a_file_that_does_not_fit_is_refused_in_one_line_and_changes_nothing(tmp_path, other):
    saved = {"wider": maml(hidden=16), "meta-sgd": mg.MAML(mg.models.MLP(1, [8], 1), inner=mg.SGD(
        [0.1, 0.05], learn=True, params=mg.models.MLP(1, [8], 1)), inner_steps=2),
             "reptile": mg.Reptile(mg.models.MLP(1, [8], 1))}
    saved[other].save(tmp_path / "other")
    target = maml(0.03) if other != "meta-sgd" else mg.MAML(mg.models.MLP(1, [8], 1), inner=mg.SGD(
        0.1, learn=True, params=mg.models.MLP(1, [8], 1)))
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as e:
        target.load(tmp_path / "other")
    assert "\n" not in str(e.value) and ("does not fit" in str(e.value) or "holds a Reptile" in str(e.value))
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # not half-loaded


def test_a_learner_file_in_a_run_folder_is_named_as_such(tmp_path, capsys):
    from conftest import cli_error

    run = tmp_path / "run"
    maml().save(run / "last")
    err = cli_error(["eval", str(run)], capsys)
    assert "learner file (learner.save" in err


def test_a_meta_rl_learner_saves_and_loads_as_the_supervised_ones(tmp_path):
    from metagrad.rl import MetaRL, Navigation2D, make_policy

    def learner(hidden: int = 8, seed: int = 0) -> MetaRL:
        torch.manual_seed(seed)
        env = Navigation2D(horizon=5)
        return MetaRL(make_policy(env.action_space, env.obs_dim, hidden=(hidden,)), env, episodes=2)

    trained = learner(seed=1)
    trained.save(tmp_path / "policy.v1")
    assert same(learner(seed=2).load(tmp_path / "policy.v1"), trained)
    wider = learner(hidden=16)
    before = {k: v.clone() for k, v in wider.state_dict().items()}
    with pytest.raises(CheckpointError, match="does not fit this learner"):
        wider.load(tmp_path / "policy.v1")
    assert all(torch.equal(before[k], v) for k, v in wider.state_dict().items())
    maml().save(tmp_path / "maml")
    with pytest.raises(CheckpointError, match="holds a MAML learner, not a MetaRL"):
        learner().load(tmp_path / "maml")


def test_a_file_of_another_activation_is_refused_from_save_and_from_a_run(tmp_path):
    """A ReLU policy's best checkpoint loaded into a tanh policy of the same shapes without a word (the state dict
    holds no activation). A learner of the run's own kind takes the file's weights."""
    from metagrad import checkpoint
    from metagrad.rl import MetaRL, Navigation2D, make_policy
    from metagrad.rl.config import preset
    from metagrad.rl.train import RLTrainer, build

    def learner(activation: str) -> MetaRL:
        env = Navigation2D(horizon=5)
        policy = make_policy(env.action_space, env.obs_dim, hidden=(8,), activation=activation)
        return MetaRL(policy, env, episodes=2, outer="vpg")

    learner("relu").save(tmp_path / "relu")
    with pytest.raises(CheckpointError, match=r"relu was saved from a model whose layer 2 is ReLU, where this "
                                              r"one's is Tanh; build the learner as it was saved"):
        learner("tanh").load(tmp_path / "relu")
    cfg = preset("maml-trpo").replace(horizon=5, episodes=2, meta_batch_size=2, iterations=1, hidden=(8,),
                                      activation="relu")
    trained, optimizer = build(cfg)
    RLTrainer(trained, optimizer, cfg, tmp_path / "run", progress=False).fit()
    stored = checkpoint.load(tmp_path / "run" / "best")[0]["learner"]
    other = build(cfg.replace(seed=1))[0]  # the run's own kind (other initial weights) loads, and takes the file's
    assert not all(torch.equal(v, stored[k]) for k, v in other.state_dict().items())
    loaded = other.load(tmp_path / "run" / "best")
    assert loaded.state_dict().keys() == stored.keys()
    assert all(torch.equal(v, stored[k]) for k, v in loaded.state_dict().items())
    with pytest.raises(CheckpointError, match="layer 2 is ReLU, where this one's is Tanh"):
        build(cfg.replace(activation="tanh"))[0].load(tmp_path / "run" / "best")


def test_a_python_trainer_resumed_with_other_activations_is_refused_and_the_inner_rule_is_not_a_layer(tmp_path):
    """A Trainer resumed with a tanh model over a ReLU run trained on without a word; the layers' record once took in
    the inner rule, so a first-order MAML file loaded into an Adam-inner learner was refused as another layer."""
    def trainer(activation: str) -> mg.Trainer:
        torch.manual_seed(0)
        learner = mg.MAML(mg.models.MLP(1, [8], 1, activation=activation), inner=mg.SGD(0.01))
        return mg.Trainer(learner, mg.tasks.Sinusoid(), torch.optim.Adam(learner.parameters()), iterations=2,
                          meta_batch_size=2, run_dir=tmp_path / "run", progress=False)

    trainer("relu").fit()
    with pytest.raises(CheckpointError, match="layer 2 is ReLU, where this one's is Tanh"):
        trainer("tanh").fit(resume=True)
    maml(first_order=True).save(tmp_path / "fo")
    adam = mg.MAML(mg.models.MLP(1, [8], 1), inner=mg.Adam(0.01))
    assert same(adam.load(tmp_path / "fo").model, maml(first_order=True).model)
