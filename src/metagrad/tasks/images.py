"""Image datasets read from a folder the user names, decoded once and cached as one array file.

- Omniglot (Lake et al. 2015): ``images_background`` and ``images_evaluation``, as folders or as the two
  original zip files; 1623 characters x 20 drawings, resized to 28x28, inverted (strokes = 1). With
  ``download=True`` the zip files are fetched when missing (:mod:`metagrad.tasks.download`).
- MiniImagenet (Ravi & Larochelle 2017): ``images/`` plus ``train.csv``, ``val.csv``, ``test.csv``
  (``filename,label``), resized to 84x84 RGB; the images flat in ``images/`` or in a folder per class.

Each dataset is an array ``[classes, examples, (channels,) height, width]`` of uint8. The cache
(``$METAGRAD_CACHE`` or ``~/.cache/metagrad``) is keyed by a fingerprint of the source files (names,
sizes and modification times; in a zip, CRCs; MiniImagenet's labels) and carries a checksum, so a stale or corrupt
cache is detected and rebuilt.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import re
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import ConfigError
from ..files import replace_atomically
from .download import download_omniglot

OMNIGLOT_PARTS = ("images_background", "images_evaluation")
OMNIGLOT_DRAWINGS = 20
OMNIGLOT_CHARACTERS = 1623
OMNIGLOT_TRAIN_CHARACTERS, OMNIGLOT_VAL_CHARACTERS = 1100, 100  # 1200 for training (100 of them to validate)
SPLIT_SEED = 1  # the MAML code shuffles the 1623 characters with seed 1 before splitting
DATA_HELP = "set --data-root or the METAGRAD_DATA environment variable"
OMNIGLOT_DOWNLOAD_HELP = "or pass --download (download=True) to fetch the official zip files into it"


@dataclass
class ImageDataset:
    """Images ``[classes, examples, ...]`` (uint8) and the class names, one split."""

    images: np.ndarray
    names: list[str]

    @property
    def num_classes(self) -> int:
        return self.images.shape[0]


def data_root(given: str | None, name: str) -> Path:
    """The dataset folder: ``given``, else ``$METAGRAD_DATA/<name>``."""
    if given:
        return Path(given).expanduser()
    env = os.environ.get("METAGRAD_DATA")
    if env:
        return Path(env).expanduser() / name
    raise ConfigError(f"no data folder for {name}: {DATA_HELP} (a folder holding {name}/)")


def cache_dir() -> Path:
    return Path(os.environ.get("METAGRAD_CACHE") or Path.home() / ".cache" / "metagrad")


# ---------------------------------------------------------------------------------------------- Omniglot
def omniglot_splits(root: str | Path, size: int = 28, download: bool = False) -> dict[str, ImageDataset]:
    """Omniglot as ``{"train", "val", "test"}``: 1100 + 100 training characters and 423 test characters,
    chosen irrespective of alphabet by a fixed shuffle (the MAML paper's split). ``download``: fetch the
    official zip files into ``root`` first if they (or the unpacked folders) are missing."""
    data = load_omniglot(root, size, download)
    n = data.num_classes
    if n != OMNIGLOT_CHARACTERS and n > OMNIGLOT_CHARACTERS / 2:  # most of the original, not a small copy of it
        print(f"metagrad: the Omniglot copy in {root} holds {n} characters, not the original's {OMNIGLOT_CHARACTERS}:"
              " its splits are scaled to it and differ from the paper's (an alphabet unpacked in part or left out? "
              "restore the folders, or keep only the two zip files)", file=sys.stderr)
    order = list(range(n))
    random.Random(SPLIT_SEED).shuffle(order)
    # the paper's counts for the real 1623 characters; the same proportions for a smaller (test) copy
    train = round(n * OMNIGLOT_TRAIN_CHARACTERS / OMNIGLOT_CHARACTERS)
    val = max(1, round(n * OMNIGLOT_VAL_CHARACTERS / OMNIGLOT_CHARACTERS))
    cuts = {"train": order[:train], "val": order[train:train + val], "test": order[train + val:]}
    return {k: ImageDataset(data.images[idx], [data.names[i] for i in idx]) for k, idx in cuts.items()}


def load_omniglot(root: str | Path, size: int = 28, download: bool = False) -> ImageDataset:
    """All 1623 characters ``[1623, 20, size, size]``, background alphabets first, each sorted by name;
    ``download``: fetch the official zip files first if a part is missing (neither folder nor zip)."""
    root = Path(root).expanduser()
    if download and not all((root / p).is_dir() or (root / f"{p}.zip").is_file() for p in OMNIGLOT_PARTS):
        download_omniglot(root, progress=not _bars_off())
    sources = _omniglot_sources(root)
    files: list[tuple[str, str]] = []
    for src in sources:
        files += src.listing()
    key = _fingerprint(files, f"omniglot-{size}")

    def build() -> ImageDataset:
        names, images = [], []
        for src in sources:
            chars = src.characters()
            for name, members in _progress(chars, f"decoding Omniglot ({src.label})"):
                if len(members) != OMNIGLOT_DRAWINGS:
                    raise ConfigError(f"{src.label}: character {name} has {len(members)} drawings, expected "
                                      f"{OMNIGLOT_DRAWINGS}; is this the original Omniglot layout?")
                images.append(np.stack([_omniglot_image(src.read(m), size, src.where(m)) for m in members]))
                names.append(name)
        return ImageDataset(np.stack(images), names)

    return _cached(key, build)


def _omniglot_image(data: bytes, size: int, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            gray = _eight_bit(im, where).convert("L").resize((size, size), Image.LANCZOS)
    except ConfigError:
        raise
    except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for a damaged or foreign file
        raise ConfigError(f"{where} is not a readable image ({_first_line(e)}); restore it from the original "
                          "Omniglot files (or --download into an empty folder)") from None
    return 255 - np.asarray(gray, dtype=np.uint8)  # strokes bright on a dark background


def _eight_bit(im: Image.Image, where: object) -> Image.Image:
    """The image upright (its EXIF orientation applied) in 8-bit channels: 16-bit grey scaled down (``convert``
    clips it to near white); transparent pixels on white, as a viewer shows them (``convert`` keeps their stored
    colour, often black: an Omniglot drawing then came out inverted); 32-bit integer and floating-point pixels,
    whose range no format fixes, refused."""
    sixteen = im.mode.startswith("I;16") or (im.mode == "I" and im.format == "PNG")  # older Pillow: 16-bit as I
    im = ImageOps.exif_transpose(im)
    if sixteen:
        return Image.fromarray((np.asarray(im, dtype=np.float64) / 257).round().astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA", "RGBa") or "transparency" in im.info:
        return Image.alpha_composite(Image.new("RGBA", im.size, "white"), im.convert("RGBA"))
    if im.mode in ("I", "F"):
        raise ConfigError(f"{where} has {'floating-point' if im.mode == 'F' else '32-bit integer'} pixels (PIL mode "
                          f"{im.mode}), whose range is not defined; save it as an 8-bit image")
    return im


def _first_line(e: BaseException) -> str:
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "its bytes", line)[:160]  # PIL names the buffer


class _Source:
    """One Omniglot part, as a folder or a zip file: character names and their drawings."""

    def __init__(self, label: str, folder: Path | None = None, archive: Path | None = None):
        self.label, self.folder, self.archive = label, folder, archive
        self._zip = zipfile.ZipFile(archive) if archive else None

    def _pngs(self) -> list[str]:
        if self.folder is not None:
            return sorted(str(p.relative_to(self.folder)) for p in self.folder.glob("*/*/*.png"))
        top = f"{self.label}/"  # the part's own folder (a renamed zip of another part holds none: refused below)
        return sorted(n[len(top):] for n in self._zip.namelist()
                      if n.startswith(top) and n.endswith(".png") and n.count("/") == 3)

    def listing(self) -> list[tuple[str, str]]:
        if self.folder is not None:
            return [(f"{self.label}/{p}", _stamp(self.folder / p)) for p in self._pngs()]
        return sorted((i.filename, f"{i.file_size}-{i.CRC}") for i in self._zip.infolist()
                      if i.filename.endswith(".png"))

    def characters(self) -> list[tuple[str, list[str]]]:
        groups: dict[str, list[str]] = {}
        for p in self._pngs():
            alphabet, character, _ = p.split("/")
            groups.setdefault(f"{alphabet}/{character}", []).append(p)
        if not groups:
            where = self.folder or self.archive
            raise ConfigError(f"{where} holds no <alphabet>/<character>/*.png drawings; expected the original "
                              "Omniglot layout (github.com/brendenlake/omniglot)")
        return sorted(groups.items())

    def where(self, member: str) -> str:
        """A drawing's file, as the user would find it."""
        return str(self.folder / member) if self.folder is not None else f"{self.archive}:{self.label}/{member}"

    def read(self, member: str) -> bytes:
        if self.folder is not None:
            return (self.folder / member).read_bytes()
        try:
            return self._zip.read(f"{self.label}/{member}")
        except (zipfile.BadZipFile, zlib.error, EOFError) as e:
            raise ConfigError(f"{self.where(member)} is damaged in the archive ({_first_line(e)}); download "
                              f"{self.archive.name} again (--download into an empty folder)") from None


def _omniglot_sources(root: Path) -> list[_Source]:
    if root.exists() and not root.is_dir():
        raise ConfigError(f"the Omniglot folder {root} is a file; give the folder that holds images_background and "
                          "images_evaluation (--data-root)")
    if not root.is_dir():
        raise ConfigError(f"Omniglot folder {root} does not exist; {DATA_HELP} (it must hold images_background "
                          f"and images_evaluation, as folders or .zip files), {OMNIGLOT_DOWNLOAD_HELP}")
    sources = []
    for part in OMNIGLOT_PARTS:
        if (root / part).is_dir():
            sources.append(_Source(part, folder=root / part))
        elif (root / f"{part}.zip").is_file():
            try:
                sources.append(_Source(part, archive=root / f"{part}.zip"))
            except zipfile.BadZipFile:
                raise ConfigError(f"{root / (part + '.zip')} is not a readable zip file") from None
        else:
            raise ConfigError(f"{root} has no {part}/ folder or {part}.zip; is this the Omniglot folder? "
                              f"({DATA_HELP}, {OMNIGLOT_DOWNLOAD_HELP})")
    return sources


# ------------------------------------------------------------------------------------------ MiniImagenet
MINIIMAGENET_SPLITS = ("train", "val", "test")


def load_miniimagenet(root: str | Path, size: int = 84) -> dict[str, ImageDataset]:
    """MiniImagenet from the Ravi & Larochelle layout: ``images/`` and ``{train,val,test}.csv``;
    every split ``[classes, examples, 3, size, size]`` (64 / 16 / 20 classes of 600 in the original)."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"the MiniImagenet folder {root} is a file; give the folder that holds images/ and the "
                          "CSVs (--data-root)")
    if not root.is_dir():
        raise ConfigError(f"MiniImagenet folder {root} does not exist; {DATA_HELP} (it must hold images/ and "
                          "train.csv, val.csv, test.csv from Ravi & Larochelle)")
    out = {}
    seen: dict[str, str] = {}  # class and file names -> the split that listed them first
    for split in MINIIMAGENET_SPLITS:
        rows = _read_csv(root / f"{split}.csv")
        classes: dict[str, list[str]] = {}
        for filename, label in rows:
            classes.setdefault(label, []).append(filename)
        paths = {label: [_image_path(root, split, label, n) for n in names] for label, names in classes.items()}
        _check_disjoint(root, split, paths, seen)
        _check_even(root / f"{split}.csv", classes)  # after the files are found: a row naming none is said as such
        files = [(f"{label}\0{p.relative_to(root)}", _stamp(p)) for label, ps in paths.items() for p in ps]
        key = _fingerprint(files, f"miniimagenet-{split}-{size}")

        def build(paths: dict[str, list[Path]] = paths, split: str = split) -> ImageDataset:
            images = [np.stack([_rgb_image(p, size) for p in ps])
                      for _, ps in _progress(sorted(paths.items()), f"decoding MiniImagenet {split}")]
            return ImageDataset(np.stack(images), sorted(paths))

        out[split] = _cached(key, build)
    return out


def _image_path(root: Path, split: str, label: str, name: str) -> Path:
    """An image listed in a split's CSV: ``images/<name>``, or ``images/<label>/<name>`` (a folder per class)."""
    for path in (root / "images" / name, root / "images" / label / name):
        if path.is_file():
            return path
    raise ConfigError(f"{root / 'images' / name} is listed in {split}.csv but missing (nor is it in "
                      f"images/{label}/); images/ must hold every file of the CSVs, flat or in a folder per class")


def _check_even(csv: Path, classes: dict[str, list[str]]) -> None:
    """Stop where a split's classes differ in size (images are stacked per class), naming the odd classes."""
    sizes = [len(v) for v in classes.values()]
    common = max(set(sizes), key=sizes.count)
    if len(set(sizes)) < 2:
        return
    if 2 * sizes.count(common) <= len(sizes):  # no majority to call the rule
        raise ConfigError(f"{csv}: every class needs the same number of images; they have {min(sizes)} to "
                          f"{max(sizes)}; list the same number for each class")
    odd = [f"{label} ({len(v)})" for label, v in classes.items() if len(v) != common][:3]
    raise ConfigError(f"{csv}: every class needs the same number of images; most have {common}, but "
                      f"{', '.join(odd)}; list the same number for each class")


def _check_disjoint(root: Path, split: str, paths: dict[str, list[Path]], seen: dict[str, str]) -> None:
    """Stop where a split's CSV lists a file twice, or a class or file another split listed: either would put one
    image in a task's support and query, or a test class in training. Files are compared by their paths under
    ``images/`` (one name in two class folders is two images; ``a.jpg`` and ``./a.jpg`` one), links not followed
    (git-annex, DVC and the Hugging Face cache link equal images to one stored file)."""
    for label, files in paths.items():
        names = [os.path.relpath(f, root / "images") for f in files]  # links not followed: a store by content
        for kind, name in [("class", label), *(("file", n) for n in names)]:
            if f"{kind} {name}" in seen:
                where = seen[f"{kind} {name}"]
                twice = "twice" if where == split else f"in {split}.csv and in {where}.csv"
                raise ConfigError(f"{root}: {kind} {name} is listed {twice}; the splits must be disjoint and list "
                                  "each image once (restore the original CSVs)")
            seen[f"{kind} {name}"] = split


def _stamp(path: Path) -> str:
    """What the cache's key records of a source file: its size and modification time (a changed file rebuilds)."""
    st = path.stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


def _rgb_image(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as im:
            rgb = _eight_bit(im, path).convert("RGB").resize((size, size), Image.LANCZOS)
    except ConfigError:
        raise
    except FileNotFoundError:
        raise ConfigError(f"{path} is listed but missing; MiniImagenet's images/ must hold every file of its CSVs"
                          ) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ConfigError(f"{path} is not a readable image ({_first_line(e)}); restore or replace it") from None
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def _read_csv(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        raise ConfigError(f"{path} is missing; MiniImagenet needs images/ and train.csv, val.csv, test.csv")
    with open(path, newline="", encoding="utf-8-sig") as f:  # a byte-order mark (Excel's) is no part of the header
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0][:2]] != ["filename", "label"]:
        raise ConfigError(f"{path} must start with the header 'filename,label'")
    for line, r in enumerate(rows[1:], 2):
        if r and len(r) < 2:
            raise ConfigError(f"{path}, line {line}: expected 'filename,label', got {','.join(r)!r}")
    body = [(r[0].strip(), r[1].strip()) for r in rows[1:] if r]
    if not body:
        raise ConfigError(f"{path} lists no images")
    return body


# ---------------------------------------------------------------------------------------------- the cache
# How images are decoded into pixels: part of every cache key, so that a change to the decoding (2: transparency
# composited on white, 2026-12-06) is not served the pixels an older one cached. Raise it with any such change.
DECODING = 2


def _fingerprint(files: Iterable[tuple[str, object]], kind: str) -> str:
    """The cache key of a dataset ``kind`` made of ``files`` (name, stamp) pairs, decoded as ``DECODING`` says."""
    h = hashlib.sha1(f"{kind}\0decoding {DECODING}".encode())
    for name, size in files:
        h.update(f"{name}\0{size}\n".encode())
    return f"{kind}-{h.hexdigest()[:16]}"


def _cached(key: str, build: Callable[[], ImageDataset]) -> ImageDataset:
    """The dataset from ``cache_dir()/key.npy`` if present and intact, else built and cached atomically."""
    array_path, meta_path = cache_dir() / f"{key}.npy", cache_dir() / f"{key}.json"
    if array_path.exists() and meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
            images = np.load(array_path)
            if _digest(images) == meta["sha256"]:
                return ImageDataset(images, meta["names"])
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            pass
        print(f"metagrad: the cached {array_path.name} is corrupt; rebuilding it", file=sys.stderr)
    data = build()
    try:
        array_path.parent.mkdir(parents=True, exist_ok=True)
        meta = json.dumps({"sha256": _digest(data.images), "names": data.names, "shape": list(data.images.shape)})
        replace_atomically(array_path, lambda f: np.save(f, data.images))
        replace_atomically(meta_path, lambda f: f.write(meta.encode()))
    except OSError as e:
        print(f"metagrad: could not write the cache {array_path} ({e}); continuing without it", file=sys.stderr)
    return data


def _digest(images: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images).data).hexdigest()


def _progress(items: list, desc: str) -> Iterable:
    from tqdm import tqdm

    # no bar for a small test copy either
    return tqdm(items, desc=desc, unit="class", leave=False, disable=len(items) < 50 or _bars_off(), file=sys.stderr)


def _bars_off() -> bool:
    """--no-progress reached the loaders (``cli.bars_off``: tqdm's TQDM_DISABLE, which tqdm itself reads only when
    imported, so it is read here)."""
    return os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true")
