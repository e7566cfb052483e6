"""Which parameters an inner loop adapts: ``adapt`` names modules or parameters (None: all of them), shared by the
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
    """``adapt`` checked against ``model``: each prefix must name trainable parameters (see ``MetaLearner``). A
    weight shared by two modules is named once (its first name) where parameters are read: a prefix that reaches
    it only by its other name adds the first name to the prefixes returned."""
    if adapt is None:
        return ()
    prefixes = (adapt,) if isinstance(adapt, str) else tuple(adapt)
    if not prefixes:
        raise ConfigError(f"adapt {adapt!r} names no parameter, so the inner loop would adapt nothing; give None to "
                          "adapt every trainable parameter, or the modules to adapt (e.g. ['classifier'])")
    params = dict(model.named_parameters())
    first = {id(p): n for n, p in params.items()}
    names = [(n, first[id(p)]) for n, p in model.named_parameters(remove_duplicate=False)]  # (any name, first)
    modules = list(dict.fromkeys(".".join(n.split(".")[:k]) for n, _ in names for k in range(1, n.count(".") + 1)))
    out: list[str] = []
    for prefix in prefixes:
        if not isinstance(prefix, str) or not prefix:
            raise ConfigError(f"adapt {prefix!r} must be a module or parameter name, e.g. 'classifier'")
        matched = list(dict.fromkeys(f for n, f in names if matches(n, prefix)))
        out += [prefix, *(f for f in matched if not matches(f, prefix))]
        if not matched:
            shown = modules or list(params)
            raise ConfigError(f"adapt '{prefix}' matches no parameter of the model{suggest(prefix, shown)}; its "
                              f"modules with parameters are: {', '.join(shown) or '(none)'}")
        if not any(params[n].requires_grad for n in matched):
            raise ConfigError(f"adapt '{prefix}' matches only frozen parameters (requires_grad=False): "
                              f"{', '.join(matched)}; adapt trainable ones or unfreeze them")
    return tuple(out)
