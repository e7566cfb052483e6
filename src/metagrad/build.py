"""From a ``Config`` to the objects of a run: tasks, model, learner, outer optimizer."""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from . import losses
from .algorithms import MAML, JointTraining, MetaLearner, Reptile
from .choices import IMAGE_FAMILIES
from .config import Config, usable_device
from .errors import ConfigError
from .functional import params_of
from .inner import make_inner
from .loop import linear_to_zero
from .models import MLP, MLPBN, ContextVector, Conv4
from .tasks import LinearRegression, Sinusoid
from .tasks.fewshot import FewShotClassification
from .tasks.images import ImageDataset, data_root, load_miniimagenet, omniglot_splits

SPLITS = ("train", "val", "test")
Tasks = Sinusoid | LinearRegression | FewShotClassification


def build_tasks(cfg: Config, split: str = "train") -> Tasks:
    """The task distribution of ``split`` (train, val or test; the synthetic families have one distribution)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    if cfg.family == "sinusoid":
        return Sinusoid(shots=cfg.shots, query=cfg.query, amplitude=tuple(cfg.amplitude), phase=tuple(cfg.phase),
                        x_range=tuple(cfg.x_range), grid=cfg.grid, oracle=cfg.oracle)
    if cfg.family == "linreg":
        return LinearRegression(dim=cfg.dim, shots=cfg.shots, query=cfg.query)
    return _few_shot(cfg, split, cfg.shots, cfg.query)


def evaluation_tasks(cfg: Config, split: str = "test") -> Tasks:
    """``split``'s tasks as an evaluation draws them: ``eval_query`` query examples beside each of the ``eval_shots``
    support sizes, checked against the split's images (the training shots and query do not apply there: a test
    split of K + K images per class serves a run trained with 15 queries)."""
    if cfg.family not in IMAGE_FAMILIES:
        return build_tasks(cfg, split).with_query(cfg.eval_query)
    per_class = _images(cfg, split).images.shape[1]
    for shots in cfg.eval_shots:
        if shots + cfg.eval_query > per_class:
            raise ConfigError(f"eval_shots {shots} + eval_query {cfg.eval_query} exceed the {per_class} examples per "
                              f"class of the {split} split; lower eval_shots or eval_query")
    return _few_shot(cfg, split, min(cfg.eval_shots), cfg.eval_query)


def _few_shot(cfg: Config, split: str, shots: int, query: int) -> FewShotClassification:
    return FewShotClassification(_images(cfg, split).images, cfg.ways, shots, query,
                                 rotations=cfg.rotations and cfg.family == "omniglot", split=split,
                                 distinct_characters=cfg.distinct_characters)


def _images(cfg: Config, split: str) -> ImageDataset:
    if cfg.download and cfg.family != "omniglot":
        raise ConfigError(f"download is offered for Omniglot; put {cfg.family} in a folder yourself (data_root)")
    return image_splits(cfg.family, cfg.data_root, cfg.download)[split]


@lru_cache(maxsize=2)
def image_splits(family: str, root: str, download: bool = False) -> dict[str, ImageDataset]:
    """The train/val/test splits of an image dataset (decoded once per process, cached on disk)."""
    folder = data_root(root or None, family)
    return omniglot_splits(folder, download=download) if family == "omniglot" else load_miniimagenet(folder)


def build_model(cfg: Config, tasks: Tasks) -> nn.Module:
    """The network of the config: an MLP, ``y = theta^T x`` (linear, no bias) for meta-linear regression, or an
    image classifier; with ``context`` > 0 wrapped in ``ContextVector`` (the network then takes ``context`` more
    inputs, or for images ``context`` more channels, each a free map of the image's size)."""
    if cfg.context < 0:
        raise ConfigError(f"context {cfg.context} must be >= 0 (0: no context vector)")
    extra = cfg.context
    if cfg.model in ("mlp", "linear"):
        net: nn.Module = (MLP(tasks.input_dim + extra, cfg.hidden, 1, cfg.activation) if cfg.model == "mlp"
                          else nn.Linear(tasks.input_dim + extra, 1, bias=False))
        return ContextVector(net, extra) if extra else net
    channels, height, width = tasks.image_shape
    if cfg.model == "conv4":
        net = Conv4(channels + extra, cfg.ways, cfg.filters, cfg.pool, height)
        # images: `context` free HxW maps as extra channels (constant channels would be removed by the batch norm)
        return ContextVector(net, extra, channels=True, image_size=(height, width)) if extra else net
    if extra:
        raise ConfigError("context does not work with model mlp-bn: the batch norm after its first layer removes "
                          "whatever is the same for every image of a batch, the context with it; use conv4")
    return MLPBN(channels * height * width, cfg.ways, cfg.hidden)


def build_learner(cfg: Config) -> MetaLearner:
    """The learner, with its model initialised from ``cfg.seed`` (the global RNG is left untouched)."""
    tasks = build_tasks(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_model(cfg, tasks)
    inner = make_inner(cfg.inner_optimizer, cfg.inner_lr, learn=cfg.learn_inner_lr, params=params_of(model))
    classify = cfg.family in IMAGE_FAMILIES
    # linreg: the paper's risk 1/2 (y - theta^T x)^2 (eq. 9), so that inner_lr is the paper's alpha (eq. 12)
    loss_fn = losses.cross_entropy if classify else losses.half_mse if cfg.family == "linreg" else losses.mse
    kw = dict(loss_fn=loss_fn, inner=inner, inner_steps=cfg.inner_steps,
              inner_batch_size=cfg.inner_batch_size, batching=cfg.batching, compile=cfg.compile, threads=cfg.threads,
              task_chunk=cfg.task_chunk, self_check=cfg.self_check, adapt=cfg.adapt or None,
              inner_sampling=cfg.inner_sampling, inner_state=cfg.inner_state)
    if cfg.algo in ("maml", "fomaml"):
        learner: MetaLearner = MAML(model, first_order=cfg.algo == "fomaml", recompute=cfg.recompute,
                                    tail=cfg.tail or "separate", **kw)
    elif cfg.algo == "reptile":
        learner = Reptile(model, tail=cfg.tail or "shared", combination=cfg.combination or None, **kw)
    else:
        kw["inner_steps"] = kw["inner_batch_size"] = 0  # no inner loop in training (a preset's values are not used)
        learner = JointTraining(model, **kw)
    return learner.to(usable_device(cfg.device))  # initialised on the CPU: the same start on any device


def build_outer(cfg: Config, learner: MetaLearner
                ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """The outer optimizer over all meta-parameters, and the step-size schedule (linear: annealed to 0). A compiled
    run (``compile``: fast, not bit for bit the eager numbers) steps with torch's fused kernel: Adam on the sinusoid
    MLP 0.05 against 0.16 ms a step on one core, a compiled iteration 0.90 against 1.03 ms (benchmarks/train_step.py;
    its last bits differ, so eager runs keep the per-tensor steps that their recorded numbers came from)."""
    params = list(learner.parameters())
    cls = torch.optim.Adam if cfg.outer_optimizer == "adam" else torch.optim.SGD
    fused = bool(cfg.compile) and all(p.is_floating_point() for p in params)
    opt: torch.optim.Optimizer = cls(params, lr=cfg.outer_lr, **({"fused": True} if fused else {}))
    if cfg.outer_lr_schedule == "linear":
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda it: linear_to_zero(it, cfg.iterations))
    return opt, None
