"""Throughput of the real training loop, and the share of each step spent producing the
batch (slicing, random crop, flip, normalization).

It runs :func:`basisconv.loop.train_one_epoch` itself on a fixed number of batches, with
the batch source wrapped by a timer (:class:`TimedBatches`), so what is measured is exactly
what training does, not a re-implementation of it. Timing each batch on a GPU means
waiting for it; so on CUDA the throughput comes from the same number of steps run again
without waiting, as training runs them (the CPU launching ahead of the GPU).

What it is asked, the flags checked and the record's file name tag, is
:mod:`.throughput_options`'s; here: the steps measured, and their record written.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch.profiler import ProfilerActivity, profile, schedule

from ..checkpoint import CHECKPOINT, save_checkpoint
from ..cifar10 import TRAIN_IMAGES, load_cifar10
from ..config import GRAPHING_COMPILE_MODES
from ..data import TensorBatches
from ..errors import ConfigError, DatasetError
from ..execution import Runtime, compiled, settings_restored, setup
from ..layers import basis_layers
from ..loop import EpochStats, train_one_epoch
from ..kernels import auto
from ..models import build_model
from ..network import choose_forms_now
from ..optim import build_optimizer, grad_scaler
from ..penalties import basis_penalty
from ..records import RunRecord, precision_name, provenance, write_record, write_text_atomic
from ..surgery import apply_basis
from . import profile_table
from .memory import cuda_peak_mib, reset_cuda_peak
from .throughput_options import ThroughputOptions, profiled_from


class ProfiledBatches:
    """Batches that mark each step's end for ``prof`` (``torch.profiler``'s ``step()``),
    so that its schedule can leave the epoch's first steps out."""

    def __init__(self, batches, prof):
        self.batches, self.prof = batches, prof
        self.images = batches.images

    def __iter__(self):
        for batch in self.batches:
            yield batch
            self.prof.step()  # (resumed once the loop has run the step on this batch)

    def __len__(self) -> int:
        return len(self.batches)


def profile_epoch(options: ThroughputOptions, run_epoch, batches, device: torch.device) -> str:
    """torch.profiler's table of one more epoch of ``options.steps`` steps (``run_epoch``
    trains it), without its first :func:`profiled_from` steps: where a step's time goes."""
    skip = profiled_from(options)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    # one cycle (repeat=1): the epoch's end (its metric sums) comes after it, unprofiled
    steps = schedule(wait=skip - 1, warmup=1, active=options.steps - skip, repeat=1)
    with profile(activities=activities, schedule=steps) as prof:
        run_epoch(ProfiledBatches(TimedBatches(batches, options.steps, False), prof))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    form = ("dense" if options.basis_size is None else
            f"basis {options.basis_size:g} ({options.combine}"
            f"{', norms folded' if options.fuse_norm else ''})")
    how = (", CUDA graphs (replays)" if options.cuda_graphs else "") + (
        f", torch.compile {options.compile_mode}" if options.compile_mode else "")
    return profile_table(prof, device, f"{options.model} {form}, {precision_name(options.amp)}, "
                                       f"batch {options.batch_size}{how}: "
                                       f"{options.steps - skip} training steps")


class TimedBatches:
    """The first ``steps`` batches of a :class:`TensorBatches` (going on into the next epoch
    when one has fewer, as training would), timing how long each one
    takes to produce (with ``synchronize``, waiting for CUDA so that the time is real: the
    GPU then idles while the next step is launched, so the steps' own time is measured
    without it)."""

    def __init__(self, batches: TensorBatches, steps: int, synchronize: bool = True):
        self.batches, self.steps, self.synchronize = batches, steps, synchronize
        self.images = batches.images
        self.seconds: list[float] = []

    def __iter__(self):
        waits = self.synchronize and self.images.is_cuda
        device = self.images.device  # its GPU's queue, not the current device's
        sync = (lambda: torch.cuda.synchronize(device)) if waits else (lambda: None)
        source = iter(self.batches)
        for _ in range(self.steps):
            sync()
            start = time.perf_counter()
            batch = next(source, None)
            if batch is None:  # more steps than an epoch has batches: the next epoch's
                source = iter(self.batches)
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
        images = torch.randint(0, 256, (TRAIN_IMAGES, 3, 32, 32), dtype=torch.uint8,
                               generator=g)
        labels = torch.randint(0, 10, (TRAIN_IMAGES,), generator=g)
        return images.to(device), labels.to(device), "random"


def checkpoint_cost(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    folder: str | os.PathLike | None = None, saves: int = 3) -> dict[str, Any]:
    """What a run's checkpoint costs: the median and the largest time of ``saves`` writes of
    the model's and the optimizer's state through :func:`checkpoint.save_checkpoint`
    (serialize, from the GPU too; sha256; fsync; rename), in a temporary folder inside
    ``folder`` (default: the system's), and the file's size. The rest of a run's checkpoint
    (config, record, schedule, batch generator) is a few kilobytes. Measured so that
    ``trainer.checkpoint_every_s`` can be weighed against the epoch time beside it."""
    seconds = []
    try:
        if folder is not None:
            Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".checkpoint-cost-", dir=folder) as tmp:
            path = Path(tmp) / CHECKPOINT
            for _ in range(saves):
                start = time.perf_counter()
                save_checkpoint(path, {"model": model.state_dict(),
                                       "optimizer": optimizer.state_dict()})
                seconds.append(time.perf_counter() - start)
            size = path.stat().st_size
    except OSError as err:  # a full disk, say: it must not cost the step's measurement
        problem = f"the checkpoint could not be timed ({err.strerror or err})"
        warnings.warn(problem, stacklevel=2)
        return {"checkpoint_error": problem}
    return {"checkpoint_seconds_median": statistics.median(seconds),
            "checkpoint_seconds_max": max(seconds), "checkpoint_saves": saves,
            "checkpoint_megabytes": size / 1e6}


def measure(options: ThroughputOptions,
            checkpoint_folder: str | os.PathLike | None = None) -> dict[str, Any]:
    """Train ``options.warmup`` untimed steps, then ``options.steps`` timed ones (SGD at a
    constant rate, batches augmented as in training); the throughput and the data share;
    then the cost of a checkpoint of the trained state (:func:`checkpoint_cost`, written
    inside ``checkpoint_folder``)."""
    # the training run's set-up: threads, the device (cuda:N made current, so that its
    # streams and synchronizations are that GPU's), seed, cudnn.benchmark on as in a
    # non-deterministic run; and the caller's settings back afterwards
    trainer = OmegaConf.create({
        "threads": options.threads, "device": options.device, "deterministic": False,
        "channels_last": options.channels_last, "amp": options.amp,
        "lr": 0.01, "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4,
        "compile": options.compile_mode is not None,
        "compile_mode": options.compile_mode or "default"})
    with settings_restored():
        return _measure(options, trainer, setup(trainer, seed=0, amp_setting="--amp {}"),
                        checkpoint_folder)


def timed_model(options: ThroughputOptions) -> torch.nn.Module:
    """``options.model``, with ``--basis-size`` its chosen convs in basis form where that
    saves compute (the others stay dense, silently: the record lists the basis layers). A
    choice that leaves every conv dense is refused: the step timed would be the dense one,
    recorded as a basis step."""
    model = build_model(options.model)
    if options.basis_size is None:
        return model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # only_where_saves leaves the other layers dense
        model = apply_basis(model, options.chosen_layers, options.basis_size,
                            inplace=True, only_where_saves=True, combine=options.combine,
                            fuse_norm=options.fuse_norm)
    if not basis_layers(model):  # (only_where_saves left each chosen layer dense)
        chosen = ("no conv" if options.chosen_layers == "all" else
                  f"--layers {options.layers}: none of these convs")
        raise ConfigError(f"{chosen} saves compute at --basis-size "
                          f"{options.basis_size:g}, so the step timed would be the dense "
                          f"one; choose others, or a smaller size")
    return model


def _measure(options: ThroughputOptions, trainer, runtime: Runtime,
             checkpoint_folder: str | os.PathLike | None) -> dict[str, Any]:
    """:func:`measure` inside the training run's set-up: the model and its optimizer as a
    run builds them, the warm-up, the timed steps (again unsynchronized on CUDA), the
    optional profile, and the record's fields."""
    device, layout, amp = runtime.device, runtime.memory_format, runtime.amp_dtype
    images, labels, source = load_images(device)
    model = timed_model(options).to(device=device, memory_format=layout)
    # the training run's optimizer (fused SGD on CUDA) and compile step, at a constant rate
    optimizer = build_optimizer(model, trainer)
    # with --frobenius-decay, the loss's correction term, as training adds it (its cost:
    # one product of the two factors a basis layer and step, forward and backward)
    penalty = basis_penalty(model, trainer.weight_decay, frobenius_decay=options.frobenius_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = grad_scaler(amp, device)
    batches = TensorBatches(images, labels, options.batch_size, train=True, memory_format=layout)
    auto.start_run()  # the record lists the combine=auto shapes of this benchmark alone
    if trainer.compile:
        choose_forms_now(model, [(options.batch_size, *images.shape[1:])], device=device,
                         memory_format=layout, amp_dtype=amp,
                         graphed=options.compile_mode in GRAPHING_COMPILE_MODES
                         or options.cuda_graphs)
    step_model = compiled(model, trainer)
    # As in training, each epoch (here: the warm-up, then the timed steps) captures its
    # graphs afresh: the timed steps include one eager step and one capture.
    graphed = options.cuda_graphs and device.type == "cuda"

    def epoch(batch_source) -> EpochStats:
        """One epoch over ``batch_source``'s batches, as training runs it."""
        return train_one_epoch(step_model, batch_source, optimizer, scheduler, amp_dtype=amp,
                               graphed=graphed, scaler=scaler, extra_loss=penalty)

    # the machine's load before and after, as the layer benchmark records it: dense and
    # basis steps are timed in runs of their own, so other work during one shows only here
    load = os.getloadavg()
    warm = time.perf_counter()  # includes compiling and CUDA-graph recording, if any
    if options.warmup:  # (an epoch of no steps has no loss to report)
        epoch(TimedBatches(batches, options.warmup))
    warmup_seconds = time.perf_counter() - warm
    reset_cuda_peak(device)  # the measured steps' peak: not compiling's nor autotuning's
    timed = TimedBatches(batches, options.steps)
    synchronized = stats = epoch(timed)
    data_seconds = sum(timed.seconds)
    if device.type == "cuda":  # the throughput as training gets it: the CPU runs ahead
        stats = epoch(TimedBatches(batches, options.steps, False))
    peak = cuda_peak_mib(device)  # (of the steps measured, not of the profile's)
    load_after = os.getloadavg()
    profiled = None
    if options.profile:  # after the measurement, which a failure here must not cost
        try:
            profiled = profile_epoch(options, epoch, batches, device)
        except Exception as err:  # noqa: BLE001 - a diagnostic, beside the measurement
            profiled = f"== the profile failed: {type(err).__name__}: {err}"
            warnings.warn(profiled[3:], stacklevel=2)

    return {
        "model": options.model, "batch_size": options.batch_size, "steps": options.steps,
        "amp": options.amp, "channels_last": options.channels_last, "device": str(device),
        "threads": torch.get_num_threads(), "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "data": source,
        "basis_size": options.basis_size, "combine": options.combine,
        "fuse_norm": options.fuse_norm, "frobenius_decay": options.frobenius_decay,
        "layers": options.layers, "basis_layers": list(basis_layers(model)),
        "compile_mode": options.compile_mode, "cuda_graphs": graphed,
        # what each combine=auto layer chose, and the times behind it
        **({"auto_choices": auto.described(this_run=True)} if options.combine == "auto" else {}),
        "warmup_seconds": warmup_seconds,
        "images_per_second": options.steps * options.batch_size / stats.seconds,
        "seconds_per_step": stats.seconds / options.steps,
        # an epoch of CIFAR-10's 50,000 training images at this step time
        "epoch_seconds": stats.seconds / options.steps * (TRAIN_IMAGES // options.batch_size),
        "data_seconds_per_step_median": statistics.median(timed.seconds),
        # of the steps timed with a synchronization per batch (on a CPU: the same steps)
        "data_share": data_seconds / synchronized.seconds,
        # all the GPU memory training held: the images on the device, model, optimizer,
        # activations, graphs (None on a CPU)
        "cuda_peak_mib": peak,
        "load_average_before_after": [load, load_after],
        **checkpoint_cost(model, optimizer, checkpoint_folder),
        "profile": profiled,  # (run() writes it to a file of its own)
    }


def file_name(device: str | torch.device, amp: str, tag: str = "") -> str:
    """``train-throughput-<device type>-<precision><tag>.json``, e.g. ``...-cpu-fp32.json``
    or ``...-cuda-bf16-basis0.25-fused.json``."""
    return f"train-throughput-{torch.device(device).type}-{precision_name(amp)}{tag}.json"


def record_folder(out: Path) -> Path:
    """The folder a record for ``out`` (a ``.json`` file, or a folder) is written in."""
    return out.absolute().parent if out.suffix == ".json" else out.absolute()


def run(options: ThroughputOptions, out: str | os.PathLike | None = None, *,
        results_dir: str | os.PathLike = ".", command: str | None = None
        ) -> tuple[dict[str, Any], Path]:
    """:func:`measure`, then write its record to ``out``: a ``.json`` file, or a folder
    that gets :func:`file_name` (default: ``results_dir``). Returns the record as written
    (the measurement's fields, ``kind``, ``status``, ``config`` and ``provenance``) and its
    path. The checkpoint is timed on the disk the record goes to (run folders are usually
    on the same one)."""
    out = Path(results_dir if out is None else out)
    folder = record_folder(out)
    result = measure(options, checkpoint_folder=folder)
    path = out if out.suffix == ".json" else folder / file_name(
        result["device"], options.amp, options.tag)
    table = result.pop("profile")
    if table is not None:  # beside the record, named as it is
        profile_path = path.with_name(f"{path.stem}-profile.txt")
        write_text_atomic(profile_path, table + "\n")
        result["profile_file"] = profile_path.name
    made = provenance(command)  # taken after measure() gave the caller's threads back
    made["hardware"]["torch_threads"] = result["threads"]
    record = RunRecord("benchmark", dataclasses.asdict(options), made, "complete", result)
    return record.as_dict(), write_record(path, record)
