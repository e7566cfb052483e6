"""What `pip install metagrad` (not editable) gets: every source file, the presets and the typing marker; what
`make clean` leaves."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_every_file_of_the_package(tmp_path):
    pytest.importorskip("setuptools", reason="builds offline with the environment's setuptools (torch requires it)")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "wheel", "-q"]
    built = subprocess.run([*pip, "--no-deps", "--no-build-isolation", "--no-index", ".", "-w", "dist"],
                           cwd=tmp_path, capture_output=True, text=True)  # offline: the version check waits ~50 s
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("metagrad-*.whl")
    packaged = {n for n in zipfile.ZipFile(wheel).namelist() if not n.startswith("metagrad-")}
    source = {str(p.relative_to(ROOT / "src")) for p in (ROOT / "src/metagrad").rglob("*")
              if p.is_file() and "__pycache__" not in p.parts}
    assert packaged == source
    assert {"metagrad/py.typed", "metagrad/configs/omniglot-maml.toml"} <= packaged


def test_make_clean_keeps_the_tracked_results(tmp_path):
    """`make clean` removes the environment and what the commands wrote, never the long runs kept in git: it runs
    in a copy holding a tracked run, an ignored run folder and an untracked file."""
    if shutil.which("make") is None or shutil.which("git") is None:
        pytest.skip("make or git is not installed")
    for name in ("Makefile", ".gitignore"):
        shutil.copy(ROOT / name, tmp_path / name)
    kept, made = tmp_path / "results/long/run/last.json", tmp_path / "results/sinusoid/maml/last.json"
    for path in (kept, made, tmp_path / "results/sinusoid/table.md", tmp_path / ".venv/x"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    subprocess.run(["make", "-s", "-C", str(tmp_path), "clean"], check=True)
    assert kept.exists() and (tmp_path / "results/sinusoid/table.md").exists()
    assert not made.exists() and not (tmp_path / ".venv").exists()
