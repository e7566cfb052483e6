"""Omniglot on request: downloads from a local HTTP server (never the internet), resume, verification, errors."""

from __future__ import annotations

import functools
import hashlib
import http.server
import re
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from images_fixtures import fake_omniglot, zip_omniglot
from metagrad.errors import ConfigError, DataError
from metagrad.tasks import download, images

FILES = download.OMNIGLOT_FILES


@dataclass
class Server:
    """What the local server serves and what it saw."""

    base_url: str
    files: dict[str, bytes]
    ignore_range: bool = False
    truncate: bool = False  # announce the full length but send only half, then hang up
    ranges: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def zips(tmp_path_factory) -> dict[str, bytes]:
    """The two Omniglot zip files of a small fake dataset, as bytes."""
    tmp = tmp_path_factory.mktemp("omniglot")
    root = zip_omniglot(fake_omniglot(tmp / "folders", alphabets=1, characters=2), tmp / "zips")
    return {name: (root / name).read_bytes() for name in FILES}


def sha256s(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


@pytest.fixture
def server(zips):
    state = Server("", dict(zips))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            state.requests.append(self.path)
            name = self.path.rsplit("/", 1)[-1]
            if not self.path.startswith("/python/") or name not in state.files:
                self.send_error(404, "Not Found")
                return
            data, start = state.files[name], 0
            asked = self.headers.get("Range")
            if asked:
                state.ranges.append(asked)
            if asked and not state.ignore_range:
                start = int(re.fullmatch(r"bytes=(\d+)-", asked).group(1))
                if start >= len(data):
                    self.send_error(416, "Range Not Satisfiable")
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:len(body) // 2] if state.truncate else body)
            self.close_connection = True

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/python/"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def fetch(root: Path, server: Server, **kw) -> Path:
    kw.setdefault("checksums", sha256s(server.files))
    return download.download_omniglot(root, server.base_url, progress=False, timeout=5, **kw)


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


def test_download_then_load(tmp_path, server, zips, monkeypatch):
    monkeypatch.setenv("METAGRAD_CACHE", str(tmp_path / "cache"))
    root = fetch(tmp_path / "omniglot", server)
    assert sorted(p.name for p in root.iterdir()) == sorted(FILES)  # the zips, no .part left
    assert all((root / n).read_bytes() == zips[n] for n in FILES)
    splits = images.omniglot_splits(root)
    assert sum(s.num_classes for s in splits.values()) == 4 and splits["train"].images.shape[1:] == (20, 28, 28)
    fetch(root, server)  # present and verified: nothing is requested again
    assert len(server.requests) == 2


def test_official_checksums_are_md5_and_md5_is_accepted(tmp_path, server, zips):
    assert download.OMNIGLOT_MD5 == {"images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",
                                     "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811"}
    md5 = {n: hashlib.md5(d).hexdigest() for n, d in zips.items()}
    assert (fetch(tmp_path, server, checksums=md5) / FILES[0]).read_bytes() == zips[FILES[0]]


def test_a_partial_file_is_resumed_with_a_range_request(tmp_path, server, zips):
    name = FILES[0]
    half = len(zips[name]) // 2
    tmp_path.joinpath(f"{name}.part").write_bytes(zips[name][:half])
    fetch(tmp_path, server)
    assert server.ranges == [f"bytes={half}-"]
    assert (tmp_path / name).read_bytes() == zips[name] and not list(tmp_path.glob("*.part"))


def test_a_server_that_ignores_range_still_yields_the_file(tmp_path, server, zips):
    server.ignore_range = True
    name = FILES[1]
    tmp_path.joinpath(f"{name}.part").write_bytes(zips[name][:100])
    fetch(tmp_path, server)
    assert server.ranges == ["bytes=100-"]  # asked, answered with the whole file, written from the start
    assert (tmp_path / name).read_bytes() == zips[name]


def test_an_interrupted_transfer_keeps_the_part_and_the_next_run_resumes(tmp_path, server, zips):
    server.truncate = True
    with pytest.raises(DataError, match="run again to resume") as e:
        fetch(tmp_path, server)
    one_line(e)
    name = FILES[0]
    assert (tmp_path / f"{name}.part").read_bytes() == zips[name][:len(zips[name]) // 2]
    server.truncate = False
    fetch(tmp_path, server)
    assert server.ranges[0] == f"bytes={len(zips[name]) // 2}-"
    assert all((tmp_path / n).read_bytes() == zips[n] for n in FILES)


def test_a_checksum_mismatch_raises_and_leaves_no_file(tmp_path, server, zips):
    sums = sha256s(zips) | {FILES[0]: "0" * 64}
    with pytest.raises(DataError) as e:
        fetch(tmp_path, server, checksums=sums)
    msg = one_line(e)
    assert FILES[0] in msg and "0" * 64 in msg and sha256s(zips)[FILES[0]] in msg
    assert not list(tmp_path.iterdir())


def test_no_network_names_the_url_and_the_manual_alternative(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}/python/"
    with pytest.raises(DataError) as e:
        download.download_omniglot(tmp_path, base, progress=False, timeout=5)
    msg = one_line(e)
    assert f"{base}images_background.zip" in msg
    assert f"download images_background.zip and images_evaluation.zip from {base} into {tmp_path}" in msg


def test_an_http_error_names_the_status(tmp_path, server):
    del server.files[FILES[1]]
    with pytest.raises(DataError, match="HTTP 404") as e:
        fetch(tmp_path, server, checksums=sha256s(server.files) | {FILES[1]: "0" * 64})
    assert FILES[1] in one_line(e)
    assert (tmp_path / FILES[0]).is_file() and not (tmp_path / f"{FILES[1]}.part").exists()


def test_bad_checksum_arguments_are_config_errors(tmp_path, server):
    with pytest.raises(ConfigError, match=r"no checksum given for images_evaluation\.zip"):
        fetch(tmp_path, server, checksums={FILES[0]: "0" * 64})
    with pytest.raises(ConfigError, match=r"MD5 .* or SHA-256"):
        fetch(tmp_path, server, checksums={n: "abc" for n in FILES})
    assert not server.requests


def test_omniglot_splits_downloads_only_on_request(tmp_path, server, monkeypatch):
    monkeypatch.setenv("METAGRAD_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "omniglot"
    with pytest.raises(ConfigError, match=r"--download \(download=True\)"):
        images.omniglot_splits(root)
    assert not server.requests
    local = functools.partial(download.download_omniglot, base_url=server.base_url, progress=False,
                              checksums=sha256s(server.files))
    monkeypatch.setattr(images, "download_omniglot", local)
    first = images.omniglot_splits(root, download=True)
    assert len(server.requests) == 2
    again = images.omniglot_splits(root, download=True)  # present: no request
    assert len(server.requests) == 2 and np.array_equal(first["test"].images, again["test"].images)


def test_no_progress_reaches_the_download_bar(tmp_path, monkeypatch):
    """--no-progress (``cli.bars_off``) turns off the bar of a download that loading starts, as of decoding."""
    from metagrad.cli import bars_off

    seen = []

    def record(root, progress=True):
        seen.append(progress)
        raise ConfigError("recorded")

    monkeypatch.setattr(images, "download_omniglot", record)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    for quiet in (True, False):
        with bars_off(quiet), pytest.raises(ConfigError, match="recorded"):
            images.load_omniglot(tmp_path / "omniglot", download=True)
    assert seen == [False, True]


def test_a_missing_part_names_the_download_option(tmp_path, zips):
    (tmp_path / FILES[0]).write_bytes(zips[FILES[0]])
    with pytest.raises(ConfigError, match=r"has no images_evaluation/ folder .*--download"):
        images.load_omniglot(tmp_path)


def test_a_part_longer_than_the_file_restarts_and_a_corrupt_zip_is_replaced(tmp_path, server, zips, capsys):
    first, second = FILES
    tmp_path.joinpath(f"{first}.part").write_bytes(zips[first] + b"extra")  # the server answers 416
    tmp_path.joinpath(second).write_bytes(b"not the zip")
    fetch(tmp_path, server)
    assert server.ranges == [f"bytes={len(zips[first]) + 5}-"] and len(server.requests) == 3
    assert all((tmp_path / n).read_bytes() == zips[n] for n in FILES) and not list(tmp_path.glob("*.part"))
    assert "does not match its sha256 checksum; downloading it again" in capsys.readouterr().err
