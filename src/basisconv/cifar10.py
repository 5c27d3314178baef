"""CIFAR-10 read from disk into a :class:`CIFAR10` of uint8 tensors: their two formats
and the checks each file passes (each failure one line naming the file and the fix). Where
the files are (``data.root``, ``$CIFAR10_ROOT``, a ``~`` expanded) is
:mod:`basisconv.cifar10_location`; the download, which :func:`load_cifar10` calls when
none is found, :mod:`basisconv.cifar10_download`; neither calls back into this.

Both published distributions are read: the binary version (``cifar-10-batches-bin``) and
the python version (``cifar-10-batches-py``). Files are checked against the published
md5 sums, so a truncated download or a different dataset never trains silently.

Apart from :mod:`basisconv.data` (what a run does with the images: the generated
stripes, subsets, batched augmentation, normalization, batches), which reads the files
only through :func:`load_cifar10`: nothing here calls back into it.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from .cifar10_download import DOWNLOAD_LOCK, download_cifar10
from .cifar10_location import (TEST_FILES, TRAIN_FILES, default_root, expanded_root,
                               find_cifar10)
from .errors import DatasetError, DatasetNotFound
from .records import folder_lock

CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck")
RECORD_BYTES = 1 + 3 * 32 * 32  # binary version: 1 label byte, then R, G, B planes
TRAIN_IMAGES = 50_000  # in the genuine files, whose md5 sums (below) vouch for it
TEST_IMAGES = 10_000
# Published md5 sums of the extracted files (the python version's are the ones
# torchvision checks; the binary version's are those of the official tarball's members).
MD5 = {
    "data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25",
    "data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
    "data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421",
    "data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
    "data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d",
    "test_batch.bin": "803d5f7f4d78ea53de84dbe85f74fb6d",
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}


@dataclass
class CIFAR10:
    """The dataset in memory: images ``[N, 3, 32, 32]`` uint8, labels ``[N]`` int64;
    ``source``, where they came from: the folder read, absolute (see :func:`load_cifar10`),
    or what generated them."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: str = ""

    def to(self, device: torch.device | str) -> "CIFAR10":
        return CIFAR10(*(t.to(device) for t in (self.train_images, self.train_labels,
                                                 self.test_images, self.test_labels)),
                       source=self.source)


def _read_binary(path: Path, raw: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and labels of ``raw``, the bytes of the binary batch ``path``."""
    if len(raw) == 0 or len(raw) % RECORD_BYTES:
        raise DatasetError(
            f"{path} is truncated or not a CIFAR-10 binary file: {len(raw)} bytes is not a "
            f"whole number of {RECORD_BYTES}-byte records. Re-download or re-extract it.")
    records = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(-1, RECORD_BYTES)
    labels = records[:, 0].long()
    images = records[:, 1:].reshape(-1, 3, 32, 32).clone()
    return images, labels


def _read_python(path: Path, raw: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and labels of ``raw``, the bytes of the python batch ``path``."""
    try:
        batch = pickle.loads(raw, encoding="bytes")
    except Exception as err:  # noqa: BLE001 - any failure here means a bad file
        raise DatasetError(
            f"{path} is truncated or not a CIFAR-10 python batch ({type(err).__name__}: "
            f"{err}). Re-download or re-extract it.") from None
    # CIFAR-10's keys are bytes (pickled by Python 2); one's own data pickled by Python 3
    # has text keys, and was called truncated
    if isinstance(batch, dict):
        batch = {key.encode() if isinstance(key, str) else key: value
                 for key, value in batch.items()}
    missing = [key for key in (b"data", b"labels") if not isinstance(batch, dict)
               or key not in batch]
    if missing:
        has = ("its keys: " + ", ".join(
            repr(k.decode(errors="replace") if isinstance(k, bytes) else k) for k in batch)
               if isinstance(batch, dict) else f"it is a {type(batch).__name__}")
        raise DatasetError(
            f"{path} is not a CIFAR-10 python batch: it has no {missing[0].decode()!r} entry "
            f"({has}); a batch is a dict of 'data' (N, 3072) uint8 and 'labels' "
            f"(N,). Re-download or re-extract it, or fix the file if it is your own data.")
    try:
        data = torch.as_tensor(batch[b"data"])
        labels = torch.as_tensor(batch[b"labels"])
    except Exception as err:  # noqa: BLE001 - any failure here means a bad file
        raise DatasetError(
            f"{path} is not a CIFAR-10 python batch: its data or labels are not arrays "
            f"({type(err).__name__}: {err}). Re-download or re-extract it.") from None
    # pixels are bytes: float pixels in [0, 1] or wider integers were cast to uint8, and so
    # truncated (near-black images) or wrapped modulo 256, silently (own data in this
    # format), and bools read as pixels 0 and 1 (black). The range is read as int64: torch
    # has no min of uint16..uint64 (numpy's 16-bit images)
    integers = not (data.is_floating_point() or data.is_complex() or data.dtype == torch.bool)
    if data.dtype != torch.uint8 and (not integers or (
            data.numel() and not 0 <= int(data.long().min()) <= int(data.long().max()) <= 255)):
        raise DatasetError(
            f"{path}: its data is {str(data.dtype).removeprefix('torch.')} "
            f"{'outside 0..255' if integers else 'values'}, where CIFAR-10 "
            f"stores uint8 pixels 0..255; convert it, e.g. (x * 255).round().astype(np.uint8) "
            f"for pixels in [0, 1]")
    data = data.to(torch.uint8)
    labels = _class_labels(path, batch[b"labels"], labels)
    # one row of 3*32*32 bytes per image and one label each: else images and labels of the
    # whole split would be paired wrongly, silently (with data.verify_md5=false)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != data.shape[:1]:
        raise DatasetError(
            f"{path} is not a CIFAR-10 python batch: its data has shape {tuple(data.shape)} "
            f"and its labels {tuple(labels.shape)}, where CIFAR-10 has (N, 3072) and (N,). "
            f"Re-download or re-extract it, or fix the file if it is your own data.")
    return data.reshape(-1, 3, 32, 32).clone(), labels


def _class_labels(path: Path, given, labels: torch.Tensor) -> torch.Tensor:
    """The python batch's labels (``given``, read by torch as ``labels``) as int64 classes.
    A cast to int64 truncated a fractional label (1.5 became class 1) and read True and
    False as classes 1 and 0, silently (own data in this format); whole numbers stored as
    floats (1.0) are classes, read exactly (as float64: a list of floats is float32 to
    torch, where 1.00000001 is 1.0)."""
    flags = labels.dtype == torch.bool or (
        isinstance(given, (list, tuple)) and any(isinstance(v, bool) for v in given))
    if labels.is_floating_point() and not flags:
        labels = torch.as_tensor(given, dtype=torch.float64)
        whole = labels.isfinite() & (labels == labels.round())
        if whole.all():
            return labels.long()
        what = repr(labels[~whole][0].item())
    elif flags or labels.is_complex():
        what = ("true/false values" if flags
                else f"{str(labels.dtype).removeprefix('torch.')} values")
    else:
        return labels.long()
    raise DatasetError(f"{path}: its labels include {what}, where CIFAR-10 stores each "
                       f"image's class as a whole number 0..9; fix the labels if it is your "
                       f"own data (one int class per image)")


def _size_note(name: str, size: int) -> str:
    """What the size of the file ``name`` whose md5 mismatched adds: that it is empty, or
    its size, with the genuine one where this knows it (the binary version, whose genuine
    files hold 10,000 records each; the python version's pickles' sizes are not published
    beside their md5 sums); nothing where it is the genuine size. The digests alone said
    neither (an empty file's is d41d8cd9...), where an empty or truncated download is the
    likely cause."""
    if size == 0:
        return "It is empty (0 bytes). "
    if not name.endswith(".bin"):
        return f"It has {size} bytes. "
    genuine = RECORD_BYTES * (TEST_IMAGES if name in TEST_FILES["bin"] else TRAIN_IMAGES // 5)
    if size == genuine:
        return ""
    return f"It has {size} bytes, where the genuine file has {genuine}. "


def _read_split(folder: Path, fmt: str, names: list[str], verify_md5: bool):
    images, labels = [], []
    reader = _read_binary if fmt == "bin" else _read_python
    for name in names:
        path = folder / name
        if path.is_dir():  # (is_file said "missing" of it)
            raise DatasetError(f"{path} is a folder, where CIFAR-10's file {name} belongs: "
                               f"replace it by that file (extract the archive again), or point "
                               f"data.root at a folder holding the extracted files.")
        if not path.is_file():
            raise DatasetError(f"CIFAR-10 file missing: {path}. The folder {folder} must hold "
                               f"{', '.join(TRAIN_FILES[fmt] + TEST_FILES[fmt])}.")
        try:
            raw = path.read_bytes()
        except OSError as err:  # no permission (another user's copy, mode 600), a failing disk
            raise DatasetError(
                f"cannot read {path} ({err.strerror or err}): make it readable (chmod a+r, or "
                f"ask its owner), or point data.root at a copy this user can read.") from None
        # the bytes hashed are the bytes parsed (each file read once), verified before they
        # are parsed: a python batch is a pickle, which runs code as it loads (a checksum,
        # not security: usedforsecurity=False, without which a FIPS-mode Python refuses)
        if verify_md5 and (
                digest := hashlib.md5(raw, usedforsecurity=False).hexdigest()) != MD5[name]:
            raise DatasetError(
                f"md5 mismatch for {path}: expected {MD5[name]}, got {digest}. "
                f"{_size_note(name, len(raw))}The file is "
                f"corrupt or not the genuine CIFAR-10: re-download it, or set "
                f"data.verify_md5=false if you use your own data in CIFAR format.")
        x, y = reader(path, raw)
        outside = ((y < 0) | (y >= len(CLASSES))).nonzero().flatten()
        if outside.numel():  # the first such record and its label: a text file's "labels"
            # are printable bytes (a Git LFS pointer, with data.verify_md5=false), own data's
            # are off by one (1..10); the message named neither, nor what to do
            first = int(outside[0])
            raise DatasetError(
                f"{path} has labels outside 0..9 (record {first}: {int(y[first])}): not a "
                f"CIFAR-10 file. Re-download or re-extract it, or fix the labels if it is "
                f"your own data (one class 0..9 per image).")
        images.append(x)
        labels.append(y)
    return torch.cat(images), torch.cat(labels)


def load_cifar10(root: str | os.PathLike | None = None, *, verify_md5: bool = True,
                 download: bool = False) -> CIFAR10:
    """Read the whole CIFAR-10 into memory as uint8 tensors.

    ``root`` may be the extracted folder itself or a folder above it; default
    :func:`default_root`. With ``download=True`` a missing dataset is fetched first. The
    dataset's ``source`` is the folder its files were read from, absolute (symlinks
    resolved): a relative ``root`` (``data.root=../shared/data``) names a folder only from
    where the run started, and a run's log and record name this one.
    """
    # expanded here, once: the download lock below lives in the same folder as the data
    root = expanded_root(root if root is not None else default_root())
    try:
        folder, fmt = find_cifar10(root)
    except DatasetNotFound:
        if not download:
            raise
        # one download at a time into a folder (runs started together, torchrun's ranks,
        # reproduce.sh's JOBS, would write one archive at once); the next finds it there
        with folder_lock(root, wait=True, what="CIFAR-10 download", key="data.root",
                         name=DOWNLOAD_LOCK):
            try:
                folder, fmt = find_cifar10(root)
            except DatasetNotFound:
                download_cifar10(root)
                folder, fmt = find_cifar10(root)
    train = _read_split(folder, fmt, TRAIN_FILES[fmt], verify_md5)
    test = _read_split(folder, fmt, TEST_FILES[fmt], verify_md5)
    return CIFAR10(*train, *test, source=str(folder.resolve()))
