"""Small synthetic datasets in the original layouts (Omniglot folders or zips, MiniImagenet CSVs)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

SHARED_OMNIGLOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"


def fake_omniglot(root: Path, alphabets: int = 2, characters: int = 3, drawings: int = 20, seed: int = 0) -> Path:
    """``root/images_background`` and ``root/images_evaluation`` of random 105x105 one-bit drawings."""
    rng = np.random.default_rng(seed)
    for part in ("images_background", "images_evaluation"):
        for a in range(alphabets):
            for c in range(characters):
                folder = root / part / f"Alphabet_{part[7]}{a}" / f"character{c + 1:02d}"
                folder.mkdir(parents=True)
                for d in range(drawings):
                    bits = rng.random((105, 105)) > 0.2
                    Image.fromarray(bits).save(folder / f"{c:04d}_{d + 1:02d}.png")
    return root


def zip_omniglot(folder_root: Path, zip_root: Path) -> Path:
    """The same dataset as the two original zip files."""
    zip_root.mkdir(parents=True, exist_ok=True)
    for part in ("images_background", "images_evaluation"):
        shutil.make_archive(str(zip_root / part), "zip", folder_root, part)
    return zip_root


def fake_miniimagenet(root: Path, classes: dict[str, int] | None = None, per_class: int = 6, size: int = 20,
                      seed: int = 0) -> Path:
    """``root/images/*.jpg`` and ``train.csv``, ``val.csv``, ``test.csv`` as in Ravi & Larochelle."""
    classes = classes or {"train": 4, "val": 2, "test": 3}
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    for split, n in classes.items():
        with open(root / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["filename", "label"])
            for c in range(n):
                label = f"n{split}{c:05d}"
                for i in range(per_class):
                    name = f"{label}{i:08d}.jpg"
                    pixels = rng.integers(0, 255, (size, size + 5, 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(root / "images" / name)
                    writer.writerow([name, label])
    return root
