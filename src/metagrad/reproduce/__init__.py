"""Paper reproductions: each trains the paper's methods, evaluates them and prints the paper's numbers beside."""

from .sinusoid import EXPERIMENTS

FEWSHOT = ("omniglot", "miniimagenet")

__all__ = ["EXPERIMENTS", "FEWSHOT"]
