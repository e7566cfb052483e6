"""Markdown tables for the printed results: a header with its rule, and rows."""

from __future__ import annotations

from collections.abc import Iterable


def md_row(cells: Iterable[object]) -> str:
    """One table row: ``| a | b |`` (an empty cell: ``| |``)."""
    return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"


def md_head(cells: Iterable[object]) -> list[str]:
    """The header row and the rule under it."""
    cells = list(cells)
    return [md_row(cells), "|" + "---|" * len(cells)]


def k_columns(steps: Iterable[int]) -> list[str]:
    """Column names for returns or losses after k adaptation steps."""
    return [f"k = {s}" for s in steps]
