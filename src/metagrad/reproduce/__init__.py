"""Paper reproductions: each trains the paper's methods, evaluates them and prints the paper's numbers beside."""

from .sinusoid import EXPERIMENTS as _SINUSOID

EXPERIMENTS = {**_SINUSOID}

__all__ = ["EXPERIMENTS"]
