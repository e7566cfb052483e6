"""Files that several processes may write: atomic replacement and advisory locks (the run folder's, a results
file's). No torch here: the data loaders use it too."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from .errors import Damaged

try:
    import fcntl
except ImportError:  # Windows: no advisory locks
    fcntl = None  # type: ignore[assignment]

_UMASK = os.umask(0)
os.umask(_UMASK)
_UNLOCKED: list[Path] = []  # said once: this file system keeps no locks
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C, and what schedulers and `docker stop` send


def replace_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` through a temporary file of this writer's own (``write`` fills it), then rename it into place:
    two processes writing the same file at once each rename a whole file, neither renames the other's half. The file
    keeps its mode, or gets what a plain write would (``mode_for``), and is on disk before it replaces the old one.
    The writer holds an advisory lock on its temporary file until it is renamed, so ``remove_stale_temps`` leaves it
    alone."""
    mode = mode_for(path)  # mkstemp's file is the owner's alone
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:  # it names the temporary file, which the caller never asked for
        raise OSError(e.errno, f"{e.strerror} (cannot create a file in {path.parent} to write it)", str(path)) from e
    try:
        if fcntl is not None:
            with contextlib.suppress(OSError):  # a file system without locks: unguarded, as `lock` says
                _flock(fd, wait=False)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # on disk before it replaces the old file (a write error surfaces here, not after)
            os.chmod(tmp, mode)
            if sys.platform != "win32":  # renamed while still open and locked (Windows cannot rename an open file)
                os.replace(tmp, path)
        if sys.platform == "win32":
            os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:  # a write's own error (a full disk) names no file
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM held back until the block ends, then delivered to the handlers they would have met (main
    thread only; elsewhere signals do not reach Python code): files written together (a checkpoint and its readable
    copy) are never left one without the other by a signal."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _frame: caught.append(signum)) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        for signum in caught[:1]:  # one delivery: the handler a second signal would have met
            signal.raise_signal(signum)


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as JSON atomically (temporary file, then rename): a reader never sees half a file."""
    write_text(path, json.dumps(data, indent=1))


def read_json(path: str | Path, fix: str | None = None) -> dict[str, Any] | None:
    """The JSON object (every results file metagrad writes is one) that ``path`` holds, None where there is no file.
    metagrad's writers replace files whole, so one that holds no object was damaged from outside: a
    ``Damaged`` error that names it and ``fix`` (what to do), or, with no ``fix`` (a file the caller makes again,
    e.g. a kept evaluation), None and a line that says so."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        fault = None if isinstance(data, dict) else f"a JSON {type(data).__name__}, not an object"
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        fault = f"not JSON: {e}"
    if fault is None:
        return data
    damaged = Damaged(str(path), fault, fix or "making it again")
    if fix is not None:
        raise damaged from None
    print(f"metagrad: {damaged}", file=sys.stderr, flush=True)
    return None


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically (``replace_atomically``)."""
    replace_atomically(Path(path), lambda f: f.write(text.encode()))


def append_line(path: str | Path, line: str) -> None:
    """Append one line to a log, unbuffered: a write that fails (a full disk, a file size limit) is cut back off, so
    no torn line stays, and its error names the file. A torn last line that an earlier writer left (killed, or a
    disk that filled outside Python's reach) is dropped first, so that this line does not join it; a whole one
    that only lacks its newline (a file edited by hand) gets it."""
    data = line.encode() + b"\n"
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e
    size = -1
    try:
        size = _whole_lines(fd)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError as e:
        if size >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e
    finally:
        os.close(fd)


def _whole_lines(fd: int, chunk: int = 1 << 16) -> int:
    """The size of file ``fd`` once its last line is whole: a torn one cut off, a whole JSON line given its
    newline."""
    size = os.lseek(fd, 0, os.SEEK_END)
    if size == 0 or _read_at(fd, size - 1, 1) == b"\n":
        return size
    end = size
    while end > 0:
        start = max(0, end - chunk)
        cut = _read_at(fd, start, end - start).rfind(b"\n")
        if cut >= 0:
            end = start + cut + 1
            break
        end = start
    try:
        json.loads(_read_at(fd, end, size - end))
    except ValueError:
        os.ftruncate(fd, end)
        return end
    os.write(fd, b"\n")
    return size + 1


def _read_at(fd: int, offset: int, length: int) -> bytes:
    """``length`` bytes of file ``fd`` from ``offset`` (``os.pread``, which Windows lacks, by seek and read)."""
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, length)


def mode_for(path: Path) -> int:
    """The permissions a new version of ``path`` gets: the file's own where it exists, else what a plain write would
    give (0o666 less the umask)."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        return 0o666 & ~_UMASK


def remove_stale_temps(folder: Path, min_age: float = 60.0) -> list[Path]:
    """Delete the temporary files that killed writers of ``replace_atomically`` left in ``folder``; the deleted
    ones. A file whose writer still holds its lock (another command writing into the same folder, on this machine or
    another sharing the folder) stays, and so does one younger than ``min_age`` seconds (its writer may not have
    taken the lock yet)."""
    removed = []
    for tmp in folder.glob(".*.tmp"):
        try:
            if time.time() - tmp.stat().st_mtime < min_age or _being_written(tmp):
                continue
        except FileNotFoundError:  # renamed or removed meanwhile
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _being_written(path: Path) -> bool:
    """Whether a live writer holds the lock on ``path`` (False where locks are not kept: Windows, some network file
    systems)."""
    if fcntl is None:
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        return not _flock(fd, wait=False)
    except OSError:  # no locks on this file system
        return False
    finally:
        os.close(fd)


def _flock(fd: int, wait: bool) -> bool:
    """Take the exclusive advisory lock of the open ``fd``: False when another process holds it and ``wait`` is
    False; OSError where the file system keeps no locks."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def lock(path: str | Path, wait: bool = True) -> int | None:
    """Take the advisory lock of ``path`` (created if missing): its open descriptor, which holds the lock until it
    is closed or the process dies (kill -9 included); -1 when another process holds it and ``wait`` is False; None
    where there are no such locks (Windows, some network file systems: said once on stderr), so callers go on
    unguarded."""
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
    except PermissionError:  # another user's lock file in a shared folder: reading is enough to lock
        fd = os.open(path, os.O_RDONLY)
    try:
        if not _flock(fd, wait):
            os.close(fd)
            return -1
    except OSError as e:  # ENOLCK, ENOSYS, EOPNOTSUPP: this file system keeps no locks
        os.close(fd)
        if not _UNLOCKED:
            _UNLOCKED.append(Path(path))
            print(f"metagrad: cannot lock {path} ({e.strerror}); going on without the guard against two commands "
                  "writing the same folder at once", file=sys.stderr)
        return None
    return fd


def lock_note(path: str | Path) -> str:
    """What the holder of ``path``'s lock wrote in it (who it is), or ''."""
    try:
        return Path(path).read_text(errors="replace").strip()[:200]
    except OSError:
        return ""


@contextlib.contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """Hold ``path``'s sidecar lock (``.NAME.lock``) for a read-modify-write of a file that several commands update
    (a results file): one at a time, none loses another's change (see ``lock`` for where there are no locks)."""
    path = Path(path)
    fd = lock(path.with_name(f".{path.name}.lock"))
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)
