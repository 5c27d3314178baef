"""Files a run writes safely: its folder (made, locked against a second run), atomic
writes (a results file is the old one or the new one, never half of each) and content
digests."""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import shlex
import socket
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Callable

from ..errors import (BasisconvError, ConfigError, FolderInUse, LocksUnsupported, WriteError,
                      one_line)

log = logging.getLogger(__name__)


def json_digest(obj: Any, length: int = 12) -> str:
    """A short sha256 of ``obj`` as sorted JSON: the stable name of a set of settings (a
    cache key, a folder of kept work)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:length]


def file_digest(path: str | os.PathLike, algorithm: str = "sha256", chunk: int = 1 << 22) -> str:
    """Hex digest of a file's bytes, read in chunks (a dataset file, a checkpoint): a
    checksum, so ``usedforsecurity=False``, without which a FIPS-mode Python refuses md5."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


LOCK = "run.lock"


def make_folder(folder: str | os.PathLike, *, what: str = "run",
                key: str = "hydra.run.dir") -> Path:
    """``folder``, made where missing; one that cannot be (a file in its path, no
    permission) is a :class:`ConfigError` naming ``key``, the config entry that chose it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _unwritable(folder, what, key, err) from None
    return folder


def _unwritable(folder: Path, what: str, key: str, err: OSError) -> ConfigError:
    return ConfigError(f"cannot write the {what}'s folder {folder} ({err.strerror or err}); "
                       f"point {key} at a folder that can be written")


@contextlib.contextmanager
def folder_lock(folder: Path, *, wait: bool = False, what: str = "run",
                key: str = "hydra.run.dir", name: str = LOCK):
    """Hold an exclusive lock on ``folder`` (``flock`` on ``folder/<name>``, ``run.lock`` by
    default) for the ``with`` block. Another holder means :class:`ConfigError` naming its
    pid and host, or, with ``wait``, waiting for it. The kernel drops the lock when its
    process ends, however it ends, so a crashed or killed run never leaves the folder
    locked; the file stays.
    A folder that cannot be made or written (a file in its path, no permission) is a
    :class:`ConfigError` naming ``key``, the config entry that chose it."""
    folder = make_folder(folder, what=what, key=key)
    path = folder / name
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise _unwritable(folder, what, key, err) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                # NFS without its lock daemon (ENOLCK), Lustre without -o flock and some
                # FUSE mounts (ENOSYS, EOPNOTSUPP): every run there ended in this trace
                raise LocksUnsupported(f"cannot lock the {what}'s folder {folder} "
                                       f"({err.strerror or err}): its file system does not "
                                       f"support file locks; point {key} at a folder on "
                                       f"one that does (a local disk, or a mount with "
                                       f"locks on)") from None
            holder = one_line(os.pread(fd, 512, 0).decode(errors="replace")) or "unknown"
            if not wait:
                raise FolderInUse(f"{folder} is in use by another {what} ({holder}); wait for "
                                  f"it to finish, or give this one another {key}") from None
            log.warning("%s is in use by another %s (%s); waiting for it", folder, what, holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (f"pid {os.getpid()} on host {socket.gethostname()} since "
                       f"{_dt.datetime.now().isoformat(timespec='seconds')}\n").encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing the only descriptor releases the lock


def process_umask() -> int:
    """This process's umask, read without changing it where Linux shows it (``/proc``,
    since 4.7): ``os.umask`` reads it only by setting another, and a stop (Ctrl-C,
    SIGTERM) between its two calls left the process creating files with umask 0."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0)
    os.umask(umask)
    return umask


def temporary_beside(path: Path) -> tuple[int, str]:
    """A temporary file in ``path``'s folder (so the rename is atomic), with the
    permissions a plain ``open`` would give (mkstemp's are owner-only). A stop or error
    before it is handed over removes it (a stop there left it behind, and its descriptor
    open: the analysis and the sensitivity estimate's kept work never remove theirs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    umask = process_umask()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~umask)
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    return fd, tmp


def leftover_temporaries(path: str | os.PathLike, *,
                         untouched_for_s: float | None = None) -> list[Path]:
    """The temporary files of :func:`write_atomic` for ``path`` (and for names that begin
    with it, e.g. its ``.sha256``) that a writer killed mid-write (SIGKILL, the OOM killer,
    a lost node) left behind: one a kill, each as big as the file. Only whoever holds the
    folder's lock may delete them all; another writer's could be in flight. Without the
    lock, ``untouched_for_s`` keeps to files not written for that long: a writer in
    flight writes its file continuously, so it is not among them."""
    path = Path(path)
    found = sorted(path.parent.glob(f".{path.name}.*.tmp"))
    if untouched_for_s is None:
        return found
    now = time.time()
    old = []
    for temporary in found:
        try:
            if now - temporary.stat().st_mtime > untouched_for_s:
                old.append(temporary)
        except FileNotFoundError:  # its writer finished or gave up meanwhile
            pass
    return old


#: A temporary file of :func:`write_atomic` not written for this long was left by a killed
#: writer: one in flight writes its file continuously and renames it within seconds.
STALE_AFTER_S = 3600.0


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], *,
                 before_replace: Callable[[Path], Any] | None = None) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, flush it to disk, then
    rename it over ``path`` atomically, and flush the folder (:func:`sync_folder`): a kill
    mid-write leaves the previous file intact, and its half-written temporary, once
    untouched for :data:`STALE_AFTER_S`, is deleted by the next write of ``path`` (the
    analysis and the estimate's kept results, unlike a training folder, have no lock
    holder to delete them sooner: they stayed for good).
    ``before_replace(temporary path)`` runs once the new bytes are on disk, before the
    rename (a checkpoint records its checksum there). A write the system refuses (a full
    disk, no permission) is a :class:`WriteError` naming ``path``, not a bare ``OSError``
    from a temporary file's descriptor."""
    path = Path(path)
    try:
        fd, tmp = temporary_beside(path)
    except OSError as err:
        raise WriteError.of(path, err) from err
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace(Path(tmp))
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, BasisconvError):
            raise WriteError.of(path, err) from err
        raise
    sync_folder(path.parent)
    for leftover in leftover_temporaries(path, untouched_for_s=STALE_AFTER_S):
        with contextlib.suppress(OSError):  # another writer's cleanup got there first
            leftover.unlink()
            log.info("removed %s, left half written by a writer killed while writing it",
                     leftover)
    return path


def sync_folder(folder: Path) -> None:
    """Flush ``folder``'s entries to disk, so that a rename into it survives a power cut or
    a lost node: the file's own ``fsync`` keeps its bytes, not its new name (POSIX; ext4
    and XFS may otherwise lose the newest checkpoint's or record's name, leaving the
    previous one). Best effort: a file system or platform that cannot open or flush a
    folder (some network and FUSE mounts say ``EINVAL``) keeps what the rename did."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    return write_atomic(path, lambda f: f.write(data))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and an atomic rename."""
    return write_bytes_atomic(path, text.encode())


def json_text(obj: Any) -> str:
    """``obj`` as standard JSON: a NaN or infinity (the rank correlation of a search whose
    subsets all tie, say) is written ``null``, since strict readers (jq, JavaScript's
    ``JSON.parse``) refuse Python's bare ``NaN``; what is not JSON is written as its text."""
    return json.dumps(finite_or_null(obj), indent=2, sort_keys=False, default=str) + "\n"


def finite_or_null(obj: Any) -> Any:
    """``obj`` with every non-finite number ``None``, and NumPy scalars and 0-d tensors (a
    float32 from pandas, an int64 count) plain Python values, which ``json`` would write
    as their text ("nan", "3")."""
    if getattr(obj, "ndim", None) == 0 and hasattr(obj, "item"):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: finite_or_null(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(value) for value in obj]
    return obj


def restore_hint(path: str | os.PathLike) -> str:
    """How a damaged file that git holds is had back: ``git checkout`` of it takes a
    second, where making it again (a benchmark measured again) takes minutes to hours.
    The one wording of the hints that offer it (a session log, a benchmark record)."""
    return f"restore it with `git checkout -- {shlex.quote(str(path))}` if it is committed"


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as standard JSON (:func:`json_text`) through :func:`write_atomic`: every
    record, index and session is written by it, so a reader never sees half of one."""
    return write_text_atomic(path, json_text(obj))


