"""Small CIFAR-format datasets written by the tests themselves (the real CIFAR-10 is never
needed by a test)."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import torch

from basisconv.data import FOLDERS, RECORD_BYTES, TEST_FILES, TRAIN_FILES

# Five colours x two stripe orientations = ten classes.
PALETTE = torch.tensor([[220, 40, 40], [40, 200, 40], [40, 60, 220], [220, 200, 40],
                        [200, 40, 200]], dtype=torch.float32)


def stripes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A small *learnable* 10-class problem: class = colour (5) x orientation (2) of
    stripes with random frequency and phase on a noisy background.

    Why this problem: the label survives the training augmentation (random crops shift
    the phase, horizontal flips keep horizontal/vertical stripes), chance is 10%, and a
    tiny CNN needs a few hundred steps of real learning to reach >90%, so a loop that
    does not learn (wrong loss, no optimizer step, labels shuffled against images)
    cannot pass.
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    labels = labels[torch.randperm(n, generator=g)]
    colour, vertical = labels % 5, labels // 5
    freq = 2 * math.pi / (4 + 4 * torch.rand(n, 1, 1, generator=g))
    phase = 2 * math.pi * torch.rand(n, 1, 1, generator=g)
    coord = torch.arange(32, dtype=torch.float32)
    rows = coord.view(1, 32, 1).expand(n, 32, 32)
    cols = coord.view(1, 1, 32).expand(n, 32, 32)
    pos = torch.where(vertical.view(n, 1, 1).bool(), cols, rows)
    wave = 0.5 + 0.5 * torch.sin(freq * pos + phase)                      # [n, 32, 32]
    images = wave[:, None] * PALETTE[colour][:, :, None, None]            # [n, 3, 32, 32]
    images = images + 40 * torch.randn(images.shape, generator=g)
    return images.clamp(0, 255).round().to(torch.uint8), labels


def random_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
            torch.randint(0, 10, (n,), generator=g))


def write_cifar(root: Path, fmt: str = "bin", n_train: int = 250, n_test: int = 100,
                make=random_images, seed: int = 0) -> Path:
    """Write a CIFAR-10 folder (``fmt`` "bin" or "py") under ``root``; 5 train batches of
    ``n_train // 5`` records and one test batch. Returns the extracted folder."""
    folder = Path(root) / FOLDERS[fmt]
    folder.mkdir(parents=True, exist_ok=True)
    per_batch = n_train // 5
    images, labels = make(per_batch * 5 + n_test, seed)
    splits = [(name, slice(i * per_batch, (i + 1) * per_batch))
              for i, name in enumerate(TRAIN_FILES[fmt])]
    splits.append((TEST_FILES[fmt][0], slice(per_batch * 5, None)))
    for name, part in splits:
        x, y = images[part], labels[part]
        if fmt == "bin":
            records = torch.cat([y.to(torch.uint8)[:, None], x.reshape(len(y), -1)], dim=1)
            assert records.shape[1] == RECORD_BYTES
            (folder / name).write_bytes(records.numpy().tobytes())
        else:
            batch = {b"data": x.reshape(len(y), -1).numpy(), b"labels": y.tolist()}
            (folder / name).write_bytes(pickle.dumps(batch))
    return folder
