"""What Hydra writes as a run starts, remembered so that a start refused after it (a
changed config in a finished run's folder, a folder another process holds) takes it back:
the ``.hydra/`` files it overwrote put back (:func:`restore_replaced`), the folder Hydra
made for it removed (:func:`remove_made_folders`). Apart from :mod:`basisconv.cli`, which
installs :func:`save_config_keeping_old` as Hydra's writer and calls these when it refuses
a start: this is the run folder's bookkeeping, not the entry points' one-line handling."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import hydra.core.utils as hydra_core_utils

from . import distributed
from .errors import ConfigError, LocksUnsupported
from .records import LOCK, folder_lock, write_bytes_atomic


#: Hydra's writer of ``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml``.
hydra_save_config = hydra_core_utils._save_config
#: The files of an earlier run that Hydra overwrote for this job, with their old bytes.
replaced: dict[Path, bytes] = {}
#: The run folders Hydra made for this job (empty before it), with the ``.hydra/`` files
#: this job wrote there.
made_folders: dict[Path, dict[str, bytes]] = {}


def save_config_keeping_old(cfg: Any, filename: str, output_dir: Path) -> None:
    """Hydra's ``_save_config``, remembering what it overwrites: a start that is refused
    (a changed config in a finished run's folder, a folder another process holds) puts
    the earlier run's files back, so it changes nothing there. Under ``torchrun`` rank 0
    alone writes them: every rank wrote them, and a rank that read a file rank 0 had just
    rewritten (or was writing) kept that as the earlier one, so a refused start left a
    finished run's ``.hydra/`` with the refused config and an empty ``hydra.yaml``
    (found in review).

    A write refused after the file was opened (a full disk, a quota, a file-size limit) is
    an ``OSError`` that names no file ("[Errno 28] No space left on device", the whole
    line a user saw): it is given this file's name, for the one line to say which folder
    to free or change."""
    if not distributed.first_process():
        return
    path, run_folder = Path(output_dir) / filename, Path(output_dir).parent
    if not Path(output_dir).exists() and all(  # new: nothing but the log Hydra just began
            entry.name.endswith(".log") for entry in run_folder.iterdir()):
        made_folders[run_folder] = {}
    if path.is_file() and path not in replaced:
        replaced[path] = path.read_bytes()
    try:
        hydra_save_config(cfg, filename, output_dir)
    except OSError as err:
        if err.filename is None:
            err.filename = str(path)
        raise
    if run_folder in made_folders:
        made_folders[run_folder][filename] = path.read_bytes()


def restore_replaced() -> None:
    for path, data in replaced.items():
        write_bytes_atomic(path, data)
    replaced.clear()


def remove_made_folders() -> None:
    """Remove the folder Hydra made for a start that was refused, when it holds only what
    that start wrote (its ``.hydra/`` files as it wrote them, its log, ``run.lock``) and no
    other process holds it (on a file system without locks none can, and none is taken),
    and the default layout's ``outputs/<name>/`` when that leaves it empty (else each typo
    in a value leaves ``outputs/<name>/<date>/`` behind, a run that never was). Another
    start in the same folder (the same dated name in the same second) keeps it: it holds
    the lock, or its ``.hydra/`` replaced this one's.
    No folder above a run's is touched otherwise: a ``hydra.run.dir`` may sit in a folder
    of the user's."""
    default_layout = Path.cwd().resolve() / "outputs"
    for folder, written in made_folders.items():
        try:
            try:
                with folder_lock(folder):
                    removed = remove_if_only_ours(folder, written)
            except LocksUnsupported:  # (no process can hold a folder there: nor lock it)
                removed = remove_if_only_ours(folder, written)
            if removed and folder.resolve().parent.parent == default_layout:
                folder.parent.rmdir()  # (only if empty)
        except (OSError, ConfigError):  # (held by another process: FolderInUse)
            pass
    made_folders.clear()


def remove_if_only_ours(folder: Path, written: dict[str, bytes]) -> bool:
    """Remove ``folder`` if it holds only what a refused start wrote there (``written``,
    its ``.hydra/`` files, as they were written; its log; ``run.lock``); whether it did."""
    ours = {path.name: path.read_bytes() for path in (folder / ".hydra").iterdir()} == written
    names = {path.name for path in folder.iterdir()}
    if not ours or not all(name in (".hydra", LOCK) or name.endswith(".log") for name in names):
        return False
    shutil.rmtree(folder)
    return True
