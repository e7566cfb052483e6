"""What `pip install metagrad` (not editable) gets: every source file, the presets and the typing marker."""

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
