"""CIFAR-10 fetched into ``data.root``: the python version's archive downloaded
(torchvision's downloader, else the standard library), md5-checked, extracted aside and
renamed into place whole; and the lock a download holds there.

Its own module because it is the one part of CIFAR-10 on disk that writes: it reaches the
network, extracts an archive and renames a folder into ``data.root``, where the readers of
:mod:`basisconv.cifar10` (the two formats, each file's checks, the extracted files' md5
sums) only read. It needs only where the files go (:mod:`basisconv.cifar10_location`) and
a file's digest (:mod:`basisconv.records`); :func:`~basisconv.cifar10.load_cifar10` calls
it, under :data:`DOWNLOAD_LOCK`, when no dataset is found, and nothing here calls back
into the readers.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from .cifar10_location import ARCHIVE, ARCHIVES, FOLDERS, expanded_root
from .errors import DatasetError
from .records import file_digest

#: The lock file a download holds in ``data.root`` (see
#: :func:`~basisconv.cifar10.load_cifar10`).
DOWNLOAD_LOCK = ".cifar-10-download.lock"


#: The hidden folder an archive is extracted into before its dataset is renamed into place.
STAGING_PREFIX = ".cifar-10-extracting-"


def download_cifar10(root: str | os.PathLike) -> None:
    """Download and extract the python version into ``root`` (md5-checked).

    Uses torchvision's downloader when torchvision imports, else the standard library.
    The archive is extracted into a hidden staging folder and its CIFAR-10 folder renamed
    into place whole: a run started meanwhile (a staggered array job, a second command)
    finds either no dataset, and waits for the download lock, or all of it; never a folder
    still being written; an interrupted extraction leaves no half dataset (a killed
    one's staging folder is removed by the next download).
    """
    root = expanded_root(root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / FOLDERS["py"]
    if target.exists():  # find_cifar10 found no batch in it
        raise DatasetError(
            f"{target} exists but holds no CIFAR-10 batch (an interrupted extraction?): "
            f"delete it and run again, or point data.root at a complete copy.")
    try:
        from torchvision.datasets.utils import download_and_extract_archive
    except Exception:  # noqa: BLE001 - the CPU torch build cannot import torchvision's ops
        download_and_extract_archive = None
    for leftover in root.glob(f"{STAGING_PREFIX}*"):  # of a killed run (under the lock)
        shutil.rmtree(leftover, ignore_errors=True)
    staging = None
    try:
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=root))
        if download_and_extract_archive is not None:
            download_and_extract_archive(ARCHIVE["url"], str(root), extract_root=str(staging),
                                         md5=ARCHIVE["md5"])
        else:
            archive = root / ARCHIVES["py"]
            # one already there (copied by hand, or an earlier download) is used, as
            # torchvision's downloader uses it: offline, the download failed beside it
            if not (archive.is_file() and file_digest(archive, "md5") == ARCHIVE["md5"]):
                urllib.request.urlretrieve(ARCHIVE["url"], archive)
                if file_digest(archive, "md5") != ARCHIVE["md5"]:
                    raise DatasetError(
                        f"downloaded {archive} has the wrong md5; delete it and retry.")
            with tarfile.open(archive) as tar:
                # the "data" filter (no paths outside root, no devices) where Python has it
                # (3.11.4+); the archive's md5 was checked above either way
                safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(staging, **safe)
        os.replace(staging / FOLDERS["py"], target)
    except DatasetError:  # its own message (a wrong md5) says what to do
        raise
    except (OSError, RuntimeError) as err:  # torchvision's md5 mismatch is a RuntimeError
        raise DatasetError(
            f"could not download CIFAR-10 into {root} ({err}). This machine may be offline: "
            f"copy the extracted files there by hand, or point data.root at them.") from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
