"""Files that several processes may write: atomic replacement and advisory locks (the run folder's, a results
file's). No torch here: the data loaders use it too."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

try:
    import fcntl
except ImportError:  # Windows: no advisory locks
    fcntl = None  # type: ignore[assignment]

_UMASK = os.umask(0)
os.umask(_UMASK)
_UNLOCKED: list[Path] = []  # said once: this file system keeps no locks


def replace_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` through a temporary file of this writer's own (``write`` fills it), then rename it into place:
    two processes writing the same file at once each rename a whole file, neither renames the other's half. The file
    keeps its mode, or gets what a plain write would (``mode_for``)."""
    mode = mode_for(path)  # mkstemp's file is the owner's alone
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def mode_for(path: Path) -> int:
    """The permissions a new version of ``path`` gets: the file's own where it exists, else what a plain write would
    give (0o666 less the umask)."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        return 0o666 & ~_UMASK


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the temporary files that killed writers of ``replace_atomically`` left in ``folder`` (those whose
    process is gone; a live writer's, another command's in the same folder, stays); the deleted ones."""
    removed = []
    for tmp in folder.glob(".*.tmp"):
        pid = tmp.name.split(".")[-3]  # .NAME.PID.RANDOM.tmp
        if pid.isdigit() and _alive(int(pid)):
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    """Whether a process with this id runs (on this machine); on Windows, where signal 0 is Ctrl-C, assumed."""
    if sys.platform == "win32":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # another user's, or a platform that cannot tell: assume it runs
        return True
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
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
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
