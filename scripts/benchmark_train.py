"""Throughput of the real training loop, and the share of each step spent producing the
batch (slicing, random crop, flip, normalization).

    python scripts/benchmark_train.py                      # ResNet-18, batch 128, 2 threads
    python scripts/benchmark_train.py --amp bf16 --steps 30

It runs ``basisconv.train.train_one_epoch`` itself on a fixed number of batches, with the
batch source wrapped by a timer, so what is measured is exactly what training does.
Writes ``results/train-throughput-<device>-<precision>.json`` with provenance.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from basisconv.data import TensorBatches, load_cifar10
from basisconv.errors import DatasetError
from basisconv.models import build_model
from basisconv.records import provenance, write_json_atomic
from basisconv.train import AMP_DTYPES, resolve_device, train_one_epoch

RESULTS = Path(__file__).resolve().parents[1] / "results"


class TimedBatches:
    """The first ``steps`` batches of a :class:`TensorBatches`, timing how long each one
    takes to produce (synchronizing CUDA so the time is real)."""

    def __init__(self, batches: TensorBatches, steps: int):
        self.batches, self.steps = batches, steps
        self.images = batches.images
        self.seconds: list[float] = []

    def __iter__(self):
        sync = torch.cuda.synchronize if self.images.is_cuda else (lambda: None)
        source = iter(self.batches)
        for _ in range(self.steps):
            sync()
            start = time.perf_counter()
            batch = next(source)
            sync()
            self.seconds.append(time.perf_counter() - start)
            yield batch

    def __len__(self) -> int:
        return self.steps


def load_images(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The genuine CIFAR-10 when it can be found, else random uint8 images of the same
    size (augmentation costs the same on either)."""
    try:
        data = load_cifar10(verify_md5=False)
        return data.train_images.to(device), data.train_labels.to(device), data.source
    except DatasetError:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (50000, 3, 32, 32), dtype=torch.uint8, generator=g)
        return images.to(device), torch.randint(0, 10, (50000,), generator=g).to(device), "random"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--amp", choices=list(AMP_DTYPES), default="none")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (0: torch default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="result JSON (default results/)")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    images, labels, source = load_images(device)
    model = build_model(args.model).to(device=device, memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    batches = TensorBatches(images, labels, args.batch_size, train=True,
                            memory_format=memory_format)

    amp = AMP_DTYPES[args.amp]
    train_one_epoch(model, TimedBatches(batches, args.warmup), optimizer, scheduler, amp_dtype=amp)
    timed = TimedBatches(batches, args.steps)
    stats = train_one_epoch(model, timed, optimizer, scheduler, amp_dtype=amp)

    data_seconds = sum(timed.seconds)
    result = {
        "model": args.model, "batch_size": args.batch_size, "steps": args.steps,
        "amp": args.amp, "channels_last": args.channels_last, "device": str(device),
        "threads": torch.get_num_threads(), "data": source,
        "images_per_second": args.steps * args.batch_size / stats.seconds,
        "seconds_per_step": stats.seconds / args.steps,
        "data_seconds_per_step_median": statistics.median(timed.seconds),
        "data_share": data_seconds / stats.seconds,
        "provenance": provenance(" ".join(["python", "scripts/benchmark_train.py", *sys.argv[1:]])),
    }
    precision = "fp32" if args.amp == "none" else args.amp
    out = args.out or RESULTS / f"train-throughput-{device.type}-{precision}.json"
    write_json_atomic(out, result)
    print(f"{args.model} batch {args.batch_size} on {device} ({result['threads']} threads, "
          f"{precision}, channels_last={args.channels_last}):")
    print(f"  {result['images_per_second']:.1f} images/s, {result['seconds_per_step']:.3f} s/step")
    print(f"  data loading + augmentation: {result['data_share']:.2%} of the step "
          f"({result['data_seconds_per_step_median'] * 1e3:.1f} ms median per batch)")
    print(f"  written to {out}")
    return result


if __name__ == "__main__":
    main()
