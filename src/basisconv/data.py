"""CIFAR-10 as uint8 tensors in memory, with batched augmentation on the training device.

Why tensors and not a ``DataLoader`` of PIL images: the whole training set is 150 MB as
uint8, so it fits on any device; slicing batches from a permutation and cropping/flipping
the batch with tensor ops costs well under 5% of a ResNet-18 step on a 2-core CPU (see
``scripts/benchmark_train.py``), where per-image PIL transforms in worker processes would
compete with the model for the same two cores. (The same design as KellerJordan's
cifar10-airbench.)

Both published distributions are read: the binary version (``cifar-10-batches-bin``) and
the python version (``cifar-10-batches-py``). Files are checked against the published
md5 sums, so a truncated download or a different dataset never trains silently.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F

from .distributed import shard
from .errors import ConfigError, DatasetError, DatasetNotFound
from .counts import count_of, count_or_fraction_problem, is_number
from .records import file_digest, folder_lock

log = logging.getLogger(__name__)

CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck")
# Per-channel statistics of the CIFAR-10 training set. (The often-copied std
# (0.2023, 0.1994, 0.2010) is wrong: kuangliu/pytorch-cifar#16.)
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)

IMAGE_SHAPE = (3, 32, 32)  # CIFAR-10's, and the generated stripes' too
RECORD_BYTES = 1 + 3 * 32 * 32  # binary version: 1 label byte, then R, G, B planes
TRAIN_FILES = {"bin": [f"data_batch_{i}.bin" for i in range(1, 6)],
               "py": [f"data_batch_{i}" for i in range(1, 6)]}
TEST_FILES = {"bin": ["test_batch.bin"], "py": ["test_batch"]}
FOLDERS = {"bin": "cifar-10-batches-bin", "py": "cifar-10-batches-py"}
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
#: The lock file a download holds in ``data.root`` (see :func:`load_cifar10`).
DOWNLOAD_LOCK = ".cifar-10-download.lock"
ARCHIVE = {"url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
           "md5": "c58f30108f718f92721af3b95e74349a"}
#: The published archives' names, binary first: one copied into ``data.root`` and never
#: extracted is named by the not-found error (it said only "not found").
ARCHIVES = {"bin": "cifar-10-binary.tar.gz", "py": Path(ARCHIVE["url"]).name}


@dataclass
class CIFAR10:
    """The dataset in memory: images ``[N, 3, 32, 32]`` uint8, labels ``[N]`` int64."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: str = ""

    def to(self, device: torch.device | str) -> "CIFAR10":
        return CIFAR10(*(t.to(device) for t in (self.train_images, self.train_labels,
                                                 self.test_images, self.test_labels)),
                       source=self.source)


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


def find_cifar10(root: str | os.PathLike) -> tuple[Path, str]:
    """Locate a CIFAR-10 folder under ``root`` (or ``root`` itself), binary version first.

    Returns the folder and its format, ``"bin"`` or ``"py"``; raises
    :class:`DatasetNotFound` if neither is there, and :class:`DatasetError` if a folder
    cannot be looked in.
    """
    root = expanded_root(root)
    if root.is_file():  # (it was "not found", and a download could not go there either)
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
    archive = next((root / name for name in ARCHIVES.values() if (root / name).is_file()), None)
    unpacked = (f" It holds {archive.name}, never extracted: extract it there (tar -xzf "
                f"{archive} -C {root}).") if archive else ""
    raise DatasetNotFound(
        f"CIFAR-10 not found: looked in {root.resolve()} and its subfolders "
        f"{FOLDERS['bin']}/ and {FOLDERS['py']}/.{unpacked} Point data.root (or the "
        f"CIFAR10_ROOT environment variable) at the folder holding the extracted CIFAR-10 "
        f"files, or set data.download=true on a machine that is online.")


def _holds_cifar10(folder: Path, fmt: str, how: Callable[[Iterable[bool]], bool]) -> bool:
    """Whether ``folder`` holds ``any`` or ``all`` of CIFAR-10's files in format ``fmt``."""
    try:
        return how((folder / name).is_file() for names in (TEST_FILES, TRAIN_FILES)
                   for name in names[fmt])
    except OSError as err:  # a folder this user may not enter (another user's, 700):
        # is_file ignores only "no such file", so this was a PermissionError's trace
        raise DatasetError(
            f"cannot look in {folder} for CIFAR-10 ({err.strerror or err}): make it "
            f"readable (chmod a+rx, or ask its owner), or point data.root (or the "
            f"CIFAR10_ROOT environment variable) at a copy this user can read.") from None


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
                f"md5 mismatch for {path}: expected {MD5[name]}, got {digest}. The file is "
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


def load_cifar10(root: str | os.PathLike | None = None, *, verify_md5: bool = True,
                 download: bool = False) -> CIFAR10:
    """Read the whole CIFAR-10 into memory as uint8 tensors.

    ``root`` may be the extracted folder itself or a folder above it; default
    :func:`default_root`. With ``download=True`` a missing dataset is fetched first.
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
    return CIFAR10(*train, *test, source=str(folder))


# The stripes problem's classes: each colour with horizontal, then vertical stripes.
STRIPE_COLOURS = ((220, 40, 40), (40, 200, 40), (40, 60, 220), (220, 200, 40), (200, 40, 200))
STRIPE_CLASSES = 2 * len(STRIPE_COLOURS)


def stripes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A small generated, *learnable* 10-class problem in CIFAR shape (``data=stripes``):
    class = colour (5) x orientation (horizontal or vertical) of stripes with random
    frequency and phase on a noisy background.

    Why this problem: its label survives the training augmentation (random crops shift the
    phase, horizontal flips keep horizontal and vertical stripes), chance is 10%, and a
    tiny ResNet needs a few hundred steps of real learning to pass 90%, so a loop that
    does not learn cannot fake it. Used by smoke runs and tests, which need no dataset.
    """
    palette = torch.tensor(STRIPE_COLOURS, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % STRIPE_CLASSES)[torch.randperm(n, generator=g)]
    colour, vertical = labels % len(STRIPE_COLOURS), labels // len(STRIPE_COLOURS)
    freq = 2 * math.pi / (4 + 4 * torch.rand(n, 1, 1, generator=g))
    phase = 2 * math.pi * torch.rand(n, 1, 1, generator=g)
    coord = torch.arange(32, dtype=torch.float32)
    rows, cols = coord.view(1, 32, 1).expand(n, 32, 32), coord.view(1, 1, 32).expand(n, 32, 32)
    wave = 0.5 + 0.5 * torch.sin(freq * torch.where(vertical.view(n, 1, 1).bool(), cols, rows)
                                 + phase)
    images = wave[:, None] * palette[colour][:, :, None, None]
    images = images + 40 * torch.randn(images.shape, generator=g)
    return images.clamp(0, 255).round().to(torch.uint8), labels


def synthetic_stripes(n_train: int, n_test: int, seed: int = 0) -> CIFAR10:
    """The :func:`stripes` problem as a dataset (train and test drawn independently)."""
    images, labels = stripes(n_train + n_test, seed)
    return CIFAR10(images[:n_train], labels[:n_train], images[n_train:], labels[n_train:],
                   source=f"generated stripes (seed {seed})")


#: The class count of each ``data.name``: what ``data.num_classes`` must be.
NUM_CLASSES = {"cifar10": len(CLASSES), "stripes": STRIPE_CLASSES}


def prepare_data(data_cfg, seed: int) -> CIFAR10:
    """The dataset a ``data/`` config describes (``cifar10`` from ``data.root``, or the
    generated ``stripes``), with its stratified ``train_subset`` / ``test_subset``."""
    if data_cfg.name == "stripes":
        data = synthetic_stripes(data_cfg.synthetic_train, data_cfg.synthetic_test, seed)
    else:
        data = load_cifar10(data_cfg.root, verify_md5=data_cfg.verify_md5,
                            download=data_cfg.download)
    if data_cfg.train_subset is not None:
        keep = stratified_subset(data.train_labels, data_cfg.train_subset, seed,
                                 key="data.train_subset")
        data.train_images, data.train_labels = data.train_images[keep], data.train_labels[keep]
    if data_cfg.test_subset is not None:
        keep = stratified_subset(data.test_labels, data_cfg.test_subset, seed,
                                 key="data.test_subset")
        data.test_images, data.test_labels = data.test_images[keep], data.test_labels[keep]
    return data


def training_images(data_cfg) -> tuple[int, str] | None:
    """How many training images a ``data/`` config gives a run, known without reading
    them, and the keys that say so (for an error): the generated count of ``stripes``, or
    CIFAR-10's 50,000 where the md5 sums are checked, after ``data.train_subset``. None
    where only the files tell (your own data in CIFAR format, ``data.verify_md5=false``)."""
    if data_cfg.name == "stripes":
        n, said = data_cfg.synthetic_train, f"data.synthetic_train={data_cfg.synthetic_train}"
    elif data_cfg.verify_md5:
        n, said = TRAIN_IMAGES, f"CIFAR-10's {TRAIN_IMAGES}"
    else:
        return None
    subset = data_cfg.train_subset
    if subset is None:
        return n, said
    return count_of(n, subset), f"data.train_subset={subset} of {said}"


def stratified_subset(labels: torch.Tensor, size: int | float, seed: int = 0, *,
                      key: str = "data.train_subset", leave: int = 0) -> torch.Tensor:
    """Indices of a class-balanced random subset (see :func:`class_quotas`): ``size``
    examples (int) or that fraction of the set (float in (0, 1], halves rounded up).
    Sorted, so batches still mix classes through the per-epoch permutation. ``key`` is the
    config entry that set ``size``, for the error message; ``leave`` images at least must
    stay unselected."""
    # (True, an int to Python, would be the fraction 1.0: every image; NaN and infinity
    # have no count, and the fraction's rounding refused them naming no key)
    if not is_number(size) or not math.isfinite(size):
        raise ConfigError(f"{key}={size!r} {count_or_fraction_problem(size)}")
    n = labels.numel()
    if n == 0:
        raise ConfigError(f"{key}={size}: there are no images to select from")
    count = count_of(n, size)
    if not 0 < count <= n - leave:
        kept = f", leaving {leave} of the {n}" if leave else ""
        raise ConfigError(f"{key}={size} must select between 1 and {n - leave} images{kept} "
                          f"(got {count})")
    generator = torch.Generator().manual_seed(seed)
    members = [(labels == c).nonzero().flatten() for c in labels.unique().tolist()]
    quotas = class_quotas([m.numel() for m in members], count)
    chosen = [m[torch.randperm(m.numel(), generator=generator)[:take]]
              for m, take in zip(members, quotas)]
    return torch.cat(chosen).sort().values


def class_quotas(sizes: list[int], count: int) -> list[int]:
    """How many of each class's ``sizes`` images to take: ``count`` in all (at most
    ``sum(sizes)``), as equal as the classes allow. A class too small for its share gives
    all it has and the others share the rest, so an unbalanced dataset (your own data in
    CIFAR format) still yields exactly ``count`` images; the remainder of an uneven split
    goes to the first classes."""
    quotas, left = [0] * len(sizes), count
    while left:  # each pass fills at least one class, or places all that is left
        open_classes = [i for i, size in enumerate(sizes) if quotas[i] < size]
        share, remainder = divmod(left, len(open_classes))
        # the classes that cannot take a share give all they have first, and the others
        # share what is left in the next pass: else a small first class was handed a
        # remainder it could not take, which then went to one class (1, 3, 1 of 1, 10, 10)
        small = [i for i in open_classes if sizes[i] - quotas[i] <= share]
        for i in small:
            left -= sizes[i] - quotas[i]
            quotas[i] = sizes[i]
        if not small:
            for rank, i in enumerate(open_classes):
                quotas[i] += share + (rank < remainder)
            left = 0
    return quotas


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator | None = None
                ) -> torch.Tensor:
    """Random ``HxW`` crops of the zero-padded batch, one offset per image, in one gather.

    Each crop is a list of positions in its flattened padded image (the window's positions,
    shifted by the image's offset), so one ``gather`` reads them all: 5x faster on one CPU
    thread than indexing with four index tensors, the same numbers (batch 128 and 512).
    """
    n, c, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n,), device=images.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), device=images.device, generator=generator)
    padded_width = w + 2 * padding
    window = (torch.arange(h, device=images.device)[:, None] * padded_width
              + torch.arange(w, device=images.device)).flatten()
    positions = (dy * padded_width + dx)[:, None, None] + window  # [n, 1, h * w]
    return padded.flatten(2).gather(2, positions.expand(n, c, h * w)).view(n, c, h, w)


def random_flip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image left-right with probability 1/2.

    Each image's columns are gathered in its own order (reversed if flipped): one pass, no
    fully flipped copy of the batch for ``torch.where`` to pick from, and no host sync (as
    indexing only the chosen images would need on a GPU). 1.3-2x faster on one CPU thread
    for uint8 batches of 128 and 512 CIFAR images, the same pixels."""
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5
    width = images.shape[-1]
    columns = torch.arange(width, device=images.device)
    order = torch.where(flip[:, None], width - 1 - columns, columns)  # [N, W]
    return images.gather(-1, order[:, None, None, :].expand(images.shape))


@functools.lru_cache(maxsize=None)
def _standardization(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10's channel mean and std on 0-255, made once per device: building them per
    batch copied them to a GPU with a blocking copy, a host synchronization every step."""
    def scaled(values):
        return torch.tensor(values, dtype=dtype).view(1, 3, 1, 1).mul(255).to(device)
    return scaled(MEAN), scaled(STD)


def normalize(images: torch.Tensor, dtype: torch.dtype = torch.float32,
              memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """uint8 ``[N, 3, H, W]`` -> standardized float, in the layout the model runs in.

    The subtraction writes straight into a float tensor of that layout, casting and
    reordering the pixels as it goes (a layout copy and a cast first were two more passes):
    1.2-1.5x faster on a CPU, the same numbers."""
    mean, std = _standardization(images.device, dtype)
    out = torch.empty(images.shape, dtype=dtype, device=images.device,
                      memory_format=memory_format)
    return torch.sub(images, mean, out=out).div_(std)


class TensorBatches:
    """Batches of a uint8 image tensor: a fresh seeded permutation each epoch, then
    (for training) random crop + flip on the whole batch, then normalization. Under
    ``torchrun`` each process gets its slice of every batch (see ``distributed.py``).

    ``len()`` is the number of batches per epoch. ``drop_last`` keeps training batches
    the same size (BatchNorm statistics, and a fair step time).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *,
                 train: bool, seed: int = 0, crop_padding: int = 4, flip: bool = True,
                 drop_last: bool | None = None,
                 memory_format: torch.memory_format = torch.contiguous_format):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.images, self.labels = images, labels
        self.batch_size, self.train = batch_size, train
        self.crop_padding, self.flip = crop_padding, flip
        self.drop_last = train if drop_last is None else drop_last
        self.memory_format = memory_format
        self.generator = torch.Generator(device=images.device).manual_seed(seed)
        if labels.numel() == 0:
            raise ConfigError(f"there are no {'training' if train else 'test'} images; check "
                              f"data.synthetic_train / data.synthetic_test, data.train_subset / "
                              f"data.test_subset and sensitivity.val_size")
        if self.drop_last and len(self) == 0:
            raise ConfigError(f"trainer.batch_size={batch_size} is larger than the "
                              f"{labels.numel()} training examples; lower trainer.batch_size, "
                              f"or keep more images (data.train_subset, data.synthetic_train, "
                              f"sensitivity.val_size)")

    def __len__(self) -> int:
        n = self.labels.numel()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = self.labels.numel()
        order = (torch.randperm(n, device=self.images.device, generator=self.generator)
                 if self.train else torch.arange(n, device=self.images.device))
        for i in range(len(self)):
            index = order[i * self.batch_size:(i + 1) * self.batch_size]
            # Augment the whole global batch, then keep this process's slice: the random
            # draws, and so the training, do not depend on the number of processes.
            images = self.augment(self.images[index])
            yield shard(images), shard(self.labels[index])

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        if self.train and self.crop_padding:
            images = random_crop(images, self.crop_padding, self.generator)
        if self.train and self.flip:
            images = random_flip(images, self.generator)
        return normalize(images, memory_format=self.memory_format)

    def state_dict(self) -> dict:
        """The generator state, so a resumed run draws the same batches."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Continue the saved random stream. A state of another size was saved by another
        kind of generator (a CUDA run resumed on the CPU, or the reverse: ``trainer.device``
        may change on resume), whose stream this device's generator cannot continue: it
        then draws a new one, seeded from the saved state, so the same checkpoint resumes
        the same way each time."""
        saved = state["generator"]
        if saved.numel() == self.generator.get_state().numel():
            self.generator.set_state(saved)
            return
        digest = hashlib.sha256(saved.cpu().numpy().tobytes()).digest()
        self.generator.manual_seed(int.from_bytes(digest[:8], "little"))
        log.warning("the checkpoint's batch order was drawn by another kind of device's "
                    "generator; on %s the resumed epochs draw a new one (seeded from it)",
                    self.images.device.type)
