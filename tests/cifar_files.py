"""Small CIFAR-format datasets written by the tests themselves (the real CIFAR-10 is never
needed by a test)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

from basisconv.cifar10 import RECORD_BYTES
from basisconv.cifar10_location import FOLDERS, TEST_FILES, TRAIN_FILES


def without_data() -> dict[str, str]:
    """The environment without CIFAR10_ROOT: a script run in a test's folder then finds no
    ./data (a benchmark measures random images); one environment for every such run, so
    that they share a server of ``script_starts``."""
    return {name: value for name, value in os.environ.items() if name != "CIFAR10_ROOT"}


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
