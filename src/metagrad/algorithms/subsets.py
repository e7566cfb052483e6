"""Which parameters an inner loop adapts: ``adapt`` names modules or parameters (empty: all of them), shared by the
supervised learners and meta-RL."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..errors import ConfigError, suggest


def matches(name: str, prefix: str) -> bool:
    """Whether parameter ``name`` lies under ``prefix`` (a module's name, or the parameter's own full name)."""
    return name == prefix or name.startswith(prefix + ".")


def adapted_by(name: str, prefixes: Sequence[str]) -> bool:
    """Whether an inner loop told to adapt ``prefixes`` (empty: everything) adapts parameter ``name``."""
    return not prefixes or any(matches(name, prefix) for prefix in prefixes)


def adapt_prefixes(model: nn.Module, adapt: Sequence[str] | str | None) -> tuple[str, ...]:
    """``adapt`` checked against ``model``: each prefix must name trainable parameters (see ``MetaLearner``)."""
    if adapt is None:
        return ()
    prefixes = (adapt,) if isinstance(adapt, str) else tuple(adapt)
    params = dict(model.named_parameters())
    modules = list(dict.fromkeys(".".join(n.split(".")[:k]) for n in params for k in range(1, n.count(".") + 1)))
    for prefix in prefixes:
        if not isinstance(prefix, str) or not prefix:
            raise ConfigError(f"adapt {prefix!r} must be a module or parameter name, e.g. 'classifier'")
        matched = [n for n in params if matches(n, prefix)]
        if not matched:
            names = modules or list(params)
            raise ConfigError(f"adapt '{prefix}' matches no parameter of the model{suggest(prefix, names)}; its "
                              f"modules with parameters are: {', '.join(names) or '(none)'}")
        if not any(params[n].requires_grad for n in matched):
            raise ConfigError(f"adapt '{prefix}' matches only frozen parameters (requires_grad=False): "
                              f"{', '.join(matched)}; adapt trainable ones or unfreeze them")
    return prefixes
