"""CIFAR-10 as uint8 tensors in memory, with batched augmentation on the training device.

Why tensors and not a ``DataLoader`` of PIL images: the whole training set is 150 MB as
uint8, so it fits on any device; slicing batches from a permutation and cropping/flipping
the batch with tensor ops costs well under 5% of a ResNet-18 step on a 2-core CPU (see
``scripts/benchmark_train.py``), where per-image PIL transforms in worker processes would
compete with the model for the same two cores. (The same design as KellerJordan's
cifar10-airbench.)

What a run does with the images is here: the generated stripes, :func:`prepare_data`
with its subsets and quotas, the batched augmentation, normalization and
:class:`TensorBatches`. Reading CIFAR-10 from disk (its formats, checks and download)
is :mod:`basisconv.cifar10`; where its files are, :mod:`basisconv.cifar10_location`.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
from typing import Iterator

import torch
import torch.nn.functional as F

from .cifar10 import CIFAR10, CLASSES, TRAIN_IMAGES, load_cifar10
from .cifar10_location import absolute_root
from .distributed import shard
from .errors import ConfigError
from .counts import count_of, count_or_fraction_problem, is_number

log = logging.getLogger(__name__)

# Per-channel statistics of the CIFAR-10 training set. (The often-copied std
# (0.2023, 0.1994, 0.2010) is wrong: kuangliu/pytorch-cifar#16.)
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)

IMAGE_SHAPE = (3, 32, 32)  # CIFAR-10's, and the generated stripes' too

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


def data_read(data_cfg, data: CIFAR10 | None = None) -> dict[str, str]:
    """What a start read, for its record's provenance: the images' ``source`` (CIFAR-10's
    folder, absolute; or what generated them) and, for CIFAR-10, the folder ``data.root``
    named where it started (absolute: the config keeps the root as given), against which
    a resume, or a rerun in its folder, compares its own
    (:func:`basisconv.same_run.same_data`). Without ``data`` (a sensitivity run that reused
    a cached table read no images) the folder named alone."""
    read = {} if data is None else {"source": data.source}
    if data_cfg.name == "stripes":
        return read
    return {"root": str(absolute_root(data_cfg.root)), **read}


def source_said(data_cfg, data: CIFAR10) -> str:
    """Where a run's images came from, as its log says it: CIFAR-10's folder read
    (absolute), beside ``data.root`` as given (a relative one names a folder only from
    where the run started); or what generated them."""
    if data_cfg.name == "stripes":
        return data.source
    return f"{data.source} (data.root={data_cfg.root})"


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
