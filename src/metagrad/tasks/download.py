"""Fetch Omniglot on request (``download=True``), as learn2learn and Torchmeta users expect.

The two official zip files (``images_background.zip``, ``images_evaluation.zip``) of
github.com/brendenlake/omniglot are downloaded into the data folder and left there as zips, which
:func:`metagrad.tasks.images.load_omniglot` reads directly. Only the standard library is used (plus tqdm
for a progress bar on stderr). Each file is written to ``NAME.part``, resumed with an HTTP Range request
if a ``.part`` is already there, verified against its published checksum, then moved into place with
``os.replace``, so an interrupted or corrupt download never looks like a finished one.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from ..errors import ConfigError, DataError

OMNIGLOT_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
OMNIGLOT_FILES = ("images_background.zip", "images_evaluation.zip")
# The only published digests of the official files are MD5 (torchvision's and learn2learn's Omniglot);
# they guard against truncated or corrupt downloads, not against a malicious server.
OMNIGLOT_MD5 = {
    "images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811",
}
CHUNK = 1 << 16
_ALGORITHMS = {32: "md5", 64: "sha256"}  # hex digest length -> hashlib name


def download_omniglot(root: Path | str, base_url: str = OMNIGLOT_URL, progress: bool = True, *,
                      checksums: Mapping[str, str] | None = None, timeout: float = 30.0) -> Path:
    """Download ``images_background.zip`` and ``images_evaluation.zip`` from ``base_url`` into ``root``
    and return ``root``.

    ``checksums`` maps each file name to its hex digest, MD5 (32 digits) or SHA-256 (64 digits); by
    default the published MD5 of the official files (no SHA-256 is published). A part already present as
    an unpacked folder, or as a zip that verifies, is skipped. A ``NAME.part`` left by an interrupted run
    is resumed with a Range request (restarted from zero if the server ignores Range). Raises
    :class:`~metagrad.errors.DataError` with a one-line message when there is no network, the server
    answers an HTTP error, the transfer stops early (the ``.part`` is kept for the next run), or the
    checksum does not match (the bad file is deleted).
    """
    root = Path(root).expanduser()
    base_url = base_url.rstrip("/") + "/"
    sums = dict(OMNIGLOT_MD5 if checksums is None else checksums)
    manual = f"download {' and '.join(OMNIGLOT_FILES)} from {base_url} into {root}"
    for name in OMNIGLOT_FILES:  # check the arguments before fetching anything
        if name not in sums:
            raise ConfigError(f"no checksum given for {name}; checksums must name {', '.join(OMNIGLOT_FILES)}")
        if len(sums[name]) not in _ALGORITHMS:
            raise ConfigError(f"the checksum for {name} must be an MD5 (32 hex digits) or SHA-256 (64), "
                              f"got '{sums[name]}'")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the Omniglot folder {root} ({_one_line(e)})") from None
    for name in OMNIGLOT_FILES:
        expected = sums[name].lower()
        algorithm = _ALGORITHMS[len(expected)]
        dest, part = root / name, root / f"{name}.part"
        if (root / name.removesuffix(".zip")).is_dir():
            continue  # already unpacked; the loader reads the folder
        if dest.is_file():
            if _file_digest(dest, algorithm) == expected:
                continue
            print(f"metagrad: {dest} does not match its {algorithm} checksum; downloading it again", file=sys.stderr)
        url = base_url + name
        if not (part.is_file() and _file_digest(part, algorithm) == expected):  # a whole .part needs no request
            _fetch(url, part, name, manual, progress, timeout)
        got = _file_digest(part, algorithm)
        if got != expected:
            part.unlink(missing_ok=True)
            raise DataError(f"checksum mismatch for {name} from {url}: expected {algorithm} {expected}, got {got}; "
                            f"the file was deleted, run again or {manual}")
        os.replace(part, dest)
    return root


def _fetch(url: str, part: Path, name: str, manual: str, progress: bool, timeout: float, resume: bool = True) -> None:
    """Write ``url`` to ``part``, continuing an existing ``part`` with a Range request when ``resume``."""
    offset = part.stat().st_size if resume and part.is_file() else 0
    headers = {"User-Agent": "metagrad (Omniglot download)"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:  # the .part is not a prefix of the file (longer, or a stale copy)
            return _fetch(url, part, name, manual, progress, timeout, resume=False)
        raise DataError(f"downloading {url} failed: HTTP {e.code} {_one_line(e.reason)}; {manual}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        raise DataError(f"cannot download {url} ({_one_line(reason)}); without network access, {manual}") from None
    except ValueError as e:
        raise DataError(f"cannot download {url}: {_one_line(e)}") from None

    from tqdm import tqdm

    with response:
        if offset and getattr(response, "status", None) == 206:
            if not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
                response.close()  # a range we did not ask for: start over
                return _fetch(url, part, name, manual, progress, timeout, resume=False)
            mode = "ab"
        else:
            mode, offset = "wb", 0  # a full response (the server ignored Range, or there was no .part)
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        try:
            with open(part, mode) as f, tqdm(total=total, initial=offset, desc=name, unit="B", unit_scale=True,
                                              unit_divisor=1024, leave=False, file=sys.stderr,
                                              disable=not progress) as bar:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as e:
            raise DataError(f"the download of {url} was interrupted ({_one_line(e)}); run again to resume "
                            f"from {part}, or {manual}") from None
    size = part.stat().st_size
    if total is not None and size < total:
        raise DataError(f"the download of {url} stopped at {size} of {total} bytes; run again to resume "
                        f"from {part}, or {manual}")
    return None


def _file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _one_line(x: object) -> str:
    return " ".join(str(x).split()) or type(x).__name__
