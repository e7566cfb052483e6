"""The N-way K-shot task sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metagrad.errors import ConfigError
from metagrad.tasks.fewshot import FewShotClassification


def id_images(classes: int = 30, examples: int = 20, size: int = 6) -> np.ndarray:
    """Images whose pixel (0, 0) says the class and (0, 1) the example; (1, 0) marks orientation."""
    x = np.zeros((classes, examples, size, size), dtype=np.uint8)
    x[:, :, 0, 0] = np.arange(classes)[:, None]
    x[:, :, 0, 1] = np.arange(examples)[None, :]
    x[:, :, 1, 0] = 255
    return x


def ids(x: torch.Tensor) -> list[tuple[int, int]]:
    """(class, example) of every image of a task, read back from its pixels (unrotated sampler)."""
    px = (x * 255).round().long()
    return list(zip(px[:, 0, 0, 0].tolist(), px[:, 0, 0, 1].tolist(), strict=True))


def test_sizes_labels_and_no_repeats():
    dist = FewShotClassification(id_images(), ways=5, shots=3, query=4)
    batch = dist.sample(50, torch.Generator().manual_seed(0))
    assert batch.support.x.shape == (50, 15, 1, 6, 6) and batch.query.x.shape == (50, 20, 1, 6, 6)
    for t in range(50):
        s_ids, q_ids = ids(batch.support.x[t]), ids(batch.query.x[t])
        assert len(set(s_ids + q_ids)) == 35  # no example twice within a task
        assert len({c for c, _ in s_ids + q_ids}) == 5  # N distinct classes
        assert sorted(batch.support.y[t].tolist()) == sorted(list(range(5)) * 3)
        assert sorted(batch.query.y[t].tolist()) == sorted(list(range(5)) * 4)
        label_of = {}
        for (c, _), y in zip(s_ids + q_ids, batch.support.y[t].tolist() + batch.query.y[t].tolist(), strict=True):
            assert label_of.setdefault(c, y) == y  # one label per class, support and query agree


def test_labels_are_shuffled_and_sampling_is_seeded():
    dist = FewShotClassification(id_images(classes=5), ways=5, shots=1, query=1)
    batch = dist.sample(40, torch.Generator().manual_seed(1))
    label_of_class0 = {int(batch.support.y[t][[c for c, _ in ids(batch.support.x[t])].index(0)]) for t in range(40)}
    assert len(label_of_class0) == 5  # class 0 gets every label across tasks
    again = dist.sample(40, torch.Generator().manual_seed(1))
    assert torch.equal(batch.support.x, again.support.x) and torch.equal(batch.query.y, again.query.y)


def test_splits_never_mix():
    data = id_images(classes=40)
    train = FewShotClassification(data[:30], ways=5, shots=1, query=5, split="train")
    test = FewShotClassification(data[30:] + 0, ways=5, shots=1, query=5, split="test")
    g = torch.Generator().manual_seed(0)
    train_ids = {c for t in range(20) for c, _ in ids(train.sample(1, g).query.x[0])}
    test_batch = test.sample(20, g)
    test_ids = {c for t in range(20) for c, _ in ids(test_batch.support.x[t])}
    assert train_ids <= set(range(30)) and test_ids <= set(range(30, 40))


def test_rotated_classes_are_the_rotated_images():
    data = id_images(classes=3, examples=20, size=8)
    dist = FewShotClassification(data, ways=12, shots=2, query=1, rotations=True)
    assert dist.num_classes == 12
    batch = dist.sample(5, torch.Generator().manual_seed(0))
    seen = set()
    for t in range(5):
        for x in batch.support.x[t, :, 0]:
            img = (x * 255).round().to(torch.uint8).numpy()
            matches = [(c, e, r) for c in range(3) for e in range(20) for r in range(4)
                       if np.array_equal(np.rot90(data[c, e], r), img)]
            assert len(matches) == 1  # every image is exactly one original rotated by a multiple of 90 degrees
            seen.add(matches[0][2])
    assert seen == {0, 1, 2, 3}


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"ways": 31}, "ways 31 exceeds the 30 classes of the train split"),
    ({"shots": 15, "query": 6}, "shots 15 \\+ query 6 exceed the 20 examples per class"),
    ({"ways": 1}, "ways 1 must be at least 2"),
    ({"shots": 0}, "shots 0 must be at least 1"),
])
def test_impossible_tasks_are_refused(kwargs, match):
    settings = {"ways": 5, "shots": 1, "query": 1, **kwargs}
    with pytest.raises(ConfigError, match=match):
        FewShotClassification(id_images(), **settings)


def test_an_evaluation_query_is_checked_against_the_evaluation_shots_not_the_training_ones():
    """1-shot tests with 15 queries fit 20 examples per class even when training used 10 shots (it was refused)."""
    import metagrad as mg

    train = FewShotClassification(np.zeros((10, 20, 4, 4), np.uint8), ways=5, shots=10, query=10)
    batch = mg.held_out_tasks(train, 3, shots=1, seed=1, query=15)
    assert batch.support.x.shape[1] == 5 and batch.query.x.shape[1] == 75
    with pytest.raises(ConfigError, match=r"shots 10 \+ query 15 exceed the 20 examples"):
        mg.held_out_tasks(train, 3, shots=10, seed=1, query=15)


def test_your_own_images_through_the_api_get_accuracy_and_clear_errors():
    """A user's RGB images: channels last and floats refused naming the fix; a classifier learner reports accuracy
    (it had only the loss, so curves had no accuracy and the best checkpoint was ranked by loss)."""
    import metagrad as mg

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (6, 8, 3, 12, 12), dtype=np.uint8)
    with pytest.raises(ConfigError, match="channels last"):
        mg.tasks.FewShotClassification(np.moveaxis(rgb, 2, -1), ways=3, shots=1, query=2)
    with pytest.raises(ConfigError, match=r"not float32 \(e.g. \(x \* 255\)"):  # numpy's name for numpy's array
        mg.tasks.FewShotClassification(rgb.astype(np.float32) / 255, ways=3, shots=1, query=2)
    with pytest.raises(ConfigError, match=r"not torch.float64 \(e.g."):
        mg.tasks.FewShotClassification(torch.from_numpy(rgb).double(), ways=3, shots=1, query=2)
    tasks = mg.tasks.FewShotClassification(rgb, ways=3, shots=1, query=2)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 12 * 12, 3))
    learner = mg.MAML(model, loss_fn=mg.losses.cross_entropy, inner=mg.SGD(0.1))
    batch = mg.held_out_tasks(tasks, 4, shots=1, seed=1)
    curves = mg.adaptation_curves(learner, batch, steps=1)
    with torch.no_grad():  # before adaptation: the share of queries whose largest logit is their class
        counted = (model(batch.query.x.flatten(0, 1)).argmax(-1) == batch.query.y.flatten()).double().mean()
    assert curves["accuracy"].at(0)[0] == pytest.approx(float(counted), abs=1e-6)
    assert set(learner.metrics) == {"loss", "accuracy"}


def test_distinct_characters_draw_each_character_once_per_task_in_a_random_rotation():
    """The MAML code's Omniglot tasks: N distinct characters, each turned by its own multiple of 90 degrees; the
    default (any N of the rotated classes, the Reptile code's) can hold one character twice in a task."""
    chars = 25
    images = np.zeros((chars, 4, 4, 4), np.uint8)
    images[:, :, 0, 0] = np.arange(1, chars + 1)[:, None]  # the character's number in one corner: its turn moves it

    def characters_and_turns(batch):
        x = (batch.support.x[:, :, 0] * 255).round().long()  # [T, N*K, 4, 4]
        corners = torch.stack([x[..., 0, 0], x[..., 3, 0], x[..., 3, 3], x[..., 0, 3]], -1)
        return corners.amax(-1), corners.argmax(-1)

    def repeats(distinct):
        tasks = FewShotClassification(images, ways=20, shots=1, query=1, rotations=True,
                                      distinct_characters=distinct)
        char, turn = characters_and_turns(tasks.sample(200, torch.Generator().manual_seed(0)))
        return sum(len(set(c.tolist())) < 20 for c in char), set(turn.flatten().tolist())

    assert repeats(True) == (0, {0, 1, 2, 3})
    assert repeats(False)[0] > 100
    with pytest.raises(ConfigError, match="ways 30 exceeds the 25 characters"):
        FewShotClassification(images, ways=30, shots=1, query=1, rotations=True, distinct_characters=True)


def test_the_few_shot_table_says_what_reptiles_paper_error_is():
    """The table's header says mean ± 95% CI; Reptile's paper gives the standard deviation over 3 seeds instead,
    and the table says so under it (only for Reptile)."""
    from metagrad.reproduce.fewshot import format_table

    curve = {"tasks": 600, "mean": [0.2, 0.95], "ci95": [0.01, 0.005]}
    r = {"paper_steps": 1, "seconds_per_iteration": 0.1, "sampling_seconds": 1.0, "train_seconds": 10.0,
         "dataset": "omniglot", "ways": 5, "shots": 1, "trained_iterations": 100, "checkpoint": "best",
         "checkpoint_iteration": 100, "modes": {"non-transductive": {"curves": {"accuracy": curve},
                                                                      "paper": (95.39, 0.09)}}}
    for algo in ("reptile", "maml"):
        table = format_table({**r, "algo": algo})
        assert "| non-transductive | 95.00 ± 0.50 | 95.39 ± 0.09 |" in table
        assert ("standard deviation over its 3 training seeds" in table) == (algo == "reptile")


def test_the_few_shot_figure_names_the_method_and_the_iterations_done_of_the_budget(tmp_path, monkeypatch):
    """The Omniglot figures were titled "5-way 1-shot" alone: MAML, ANIL or Reptile, 8,000 or 60,000 iterations,
    looked alike."""
    from metagrad import plots
    from metagrad.reproduce.fewshot import figure

    titles = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: titles.append(fig._suptitle.get_text()) or path)
    curve = {"tasks": 600, "mean": [0.2, 0.95], "ci95": [0.01, 0.005]}
    r = {"dataset": "omniglot", "algo": "anil", "ways": 5, "shots": 1, "trained_iterations": 8839,
         "config": {"train": {"iterations": 60000}}, "checkpoint": "best", "checkpoint_iteration": 6000,
         "modes": {"transductive": {"curves": {"accuracy": curve}}}}
    figure(r, tmp_path / "f.png")
    assert titles == ["Omniglot, ANIL\n8,839 of 60,000 meta-iterations\ntested: best checkpoint (iteration 6,000)"]
