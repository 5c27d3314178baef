"""Where CIFAR-10 is on disk: ``data.root`` (or ``$CIFAR10_ROOT``, a ``~`` expanded), the
folder found under it in either published format, its files' names, and the one-line
errors of a dataset not found (a folder missing or not readable, a file given as the
folder, an archive never extracted, a ``$NAME`` Hydra did not expand).

Its own module because it reads nothing: the modules that need only where the files are
(the same-data rules of checkpoints and the sensitivity cache, reproduce.sh's checks)
import this, not the readers and md5 sums of :mod:`basisconv.cifar10` or the download of
:mod:`basisconv.cifar10_download`, which build on it and are never called back from here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import DatasetError, DatasetNotFound, one_line

TRAIN_FILES = {"bin": [f"data_batch_{i}.bin" for i in range(1, 6)],
               "py": [f"data_batch_{i}" for i in range(1, 6)]}
TEST_FILES = {"bin": ["test_batch.bin"], "py": ["test_batch"]}
FOLDERS = {"bin": "cifar-10-batches-bin", "py": "cifar-10-batches-py"}
#: Where CIFAR-10 is published (both versions), named by the not-found error.
CIFAR_PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
ARCHIVE = {"url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
           "md5": "c58f30108f718f92721af3b95e74349a"}
#: The published archives' names, binary first: one copied into ``data.root`` and never
#: extracted is named by the not-found error (it said only "not found").
ARCHIVES = {"bin": "cifar-10-binary.tar.gz", "py": Path(ARCHIVE["url"]).name}


def default_root() -> str:
    """``$CIFAR10_ROOT`` if set, else ``./data``."""
    return os.environ.get("CIFAR10_ROOT", "./data")


def expanded_root(root: str | os.PathLike) -> Path:
    """``root`` with a leading ``~`` or ``~user`` expanded; a user that does not exist
    (``~alcie/data`` for ``~alice/data``) is a :class:`DatasetError` naming the fix
    (pathlib's own error, "Could not determine home directory.", named neither)."""
    try:
        return Path(root).expanduser()
    except RuntimeError:
        raise DatasetError(
            f"data.root={str(root)!r}: {str(root).split(os.sep)[0]!r} names no user's home "
            f"folder on this machine; give the folder in full (or ~/... for your own home) "
            f"in data.root or the CIFAR10_ROOT environment variable") from None


def absolute_root(root: str | os.PathLike) -> Path:
    """The folder ``root`` names from here (this process's working folder), absolute and
    resolved (``~`` expanded, symlinks followed): one folder however it is written, as
    resuming, the sensitivity cache key and a run's record compare and name it."""
    return expanded_root(root).resolve()


def find_cifar10(root: str | os.PathLike) -> tuple[Path, str]:
    """Locate a CIFAR-10 folder under ``root`` (or ``root`` itself), binary version first.

    Returns the folder and its format, ``"bin"`` or ``"py"``; raises
    :class:`DatasetNotFound` if neither is there, and :class:`DatasetError` if a folder
    cannot be looked in.
    """
    root = expanded_root(root)
    try:
        is_file = root.is_file()
    except OSError as err:  # inside a folder this user may not enter: it was a trace
        raise _cannot_look_in(root.parent, err) from None
    if is_file:  # (it was "not found", and a download could not go there either)
        archive = (f", the published archive: extract it (tar -xzf {root} -C {root.parent}) "
                   f"and point data.root at {root.parent}" if root.name in ARCHIVES.values()
                   else "")
        raise DatasetError(f"data.root is a file, not a folder: {root.resolve()}{archive}. "
                           f"Point data.root (or the CIFAR10_ROOT environment variable) at the "
                           f"folder holding the extracted CIFAR-10 files.")
    # each format in either subfolder: the files tell the format, not the folder's name (the
    # python version extracted into a cifar-10-batches-bin/ was "not found" in it)
    folders = (root, root / FOLDERS["bin"], root / FOLDERS["py"])
    found = [(folder, fmt) for fmt in ("bin", "py") for folder in folders
             if _holds_cifar10(folder, fmt, any)]
    # the first that holds every file: a stray test_batch.bin beside a complete
    # cifar-10-batches-bin/ was taken, and refused as incomplete (left at stop 70)
    for folder, fmt in found:
        if _holds_cifar10(folder, fmt, all):
            return folder, fmt
    if found:
        return found[0]
    raise DatasetNotFound(
        f"CIFAR-10 not found: {_where_not_found(root)} Point data.root (or the CIFAR10_ROOT "
        f"environment variable) at the folder holding the extracted CIFAR-10 files (the "
        f"binary or python version, from {CIFAR_PAGE}), or set data.download=true on a "
        f"machine that is online.")


def dataset_missing(data: Any) -> str | None:
    """Why a run with this ``data`` config would not find its dataset, as one line, or None
    (generated data, or a download allowed): what ``reproduce.sh`` and a sweep check
    before any run starts."""
    if data.name != "cifar10" or data.download:
        return None
    try:
        find_cifar10(data.root)
    except DatasetError as err:
        return one_line(err)
    return None


def _where_not_found(root: Path) -> str:
    """What the not-found error says of ``root``: that it does not exist (it said "looked
    in" a folder that is not there), else where it looked, naming an archive never
    extracted there."""
    if not root.exists():
        return f"data.root {root.resolve()} does not exist{_variable_note(root)}."
    archive = next((root / name for name in ARCHIVES.values() if (root / name).is_file()), None)
    unpacked = (f" It holds {archive.name}, never extracted: extract it there (tar -xzf "
                f"{archive} -C {root}).") if archive else ""
    return (f"looked in {root.resolve()} and its subfolders {FOLDERS['bin']}/ and "
            f"{FOLDERS['py']}/.{unpacked}")


def _variable_note(root: Path) -> str:
    """What a missing ``root`` holding ``$NAME`` adds: Hydra expands no shell variable
    (``data.root='$HOME/cifar'``, single-quoted), and its way is ``${oc.env:NAME}``. A
    part that names an existing folder (``price$data``) is a name as written, not one."""
    for depth, part in enumerate(root.parts, start=1):
        variable = re.search(r"\$\{?(\w+)", part)
        if variable and not Path(*root.parts[:depth]).exists():
            name = variable[1]
            return (f" (${name} is not expanded here: write ${{oc.env:{name}}} for Hydra to "
                    f"read it, or leave it unquoted for the shell)")
    return ""


def _holds_cifar10(folder: Path, fmt: str, how: Callable[[Iterable[bool]], bool]) -> bool:
    """Whether ``folder`` holds ``any`` or ``all`` of CIFAR-10's files in format ``fmt``."""
    try:
        return how((folder / name).is_file() for names in (TEST_FILES, TRAIN_FILES)
                   for name in names[fmt])
    except OSError as err:  # a folder this user may not enter (another user's, 700):
        # is_file ignores only "no such file", so this was a PermissionError's trace
        raise _cannot_look_in(folder, err) from None


def _cannot_look_in(folder: Path, err: OSError) -> DatasetError:
    """The error for a ``folder`` this user may not look in for CIFAR-10, and the fix."""
    return DatasetError(
        f"cannot look in {folder} for CIFAR-10 ({err.strerror or err}): make it "
        f"readable (chmod a+rx, or ask its owner), or point data.root (or the "
        f"CIFAR10_ROOT environment variable) at a copy this user can read.")
