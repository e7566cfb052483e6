"""The README's Python example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has a Python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "5-shot MSE after 10 steps:" in printed
    assert (tmp_path / "runs/api/last.safetensors").exists() and (tmp_path / "runs/api/model.json").exists()
    loaded, trained = namespace["same"], namespace["learner"]
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), trained.state_dict().values(),
                                                 strict=True))


def test_readme_tradeoff_example_runs(capsys):
    block = next(b for b in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S) if "linreg_theory" in b)
    exec(compile(block, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[1.33333333] [0.8]"
    assert lines[1] == "[0.56259259 0.56733333] [1.1]"


def _doc_block(page: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", (README.parent / "docs" / page).read_text(), flags=re.S)
    assert len(blocks) == 1, page
    return blocks[0]


def test_the_docs_python_examples_run_as_written(tmp_path, monkeypatch, capsys):
    """docs/api.md's training example, docs/meta-rl.md's MAML-TRPO on 2D navigation (ten meta-iterations adapt:
    the return rises with each test step) and docs/tradeoff.md's closed forms."""
    monkeypatch.chdir(tmp_path)
    exec(compile(_doc_block("api.md"), "docs/api.md", "exec"), {})
    assert "5-shot MSE after 10 steps:" in capsys.readouterr().out
    namespace: dict = {}
    exec(compile(_doc_block("meta-rl.md"), "docs/meta-rl.md", "exec"), namespace)
    steps = namespace["curve"]["mean"]
    assert len(steps) == 3 and steps[0] < steps[1] < steps[2], steps
    exec(compile(_doc_block("tradeoff.md"), "docs/tradeoff.md", "exec"), {})
    assert capsys.readouterr().out.splitlines()[-2:] == ["[1.33333333] [0.8]", "[0.56259259 0.56733333] [1.1]"]
