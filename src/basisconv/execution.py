"""Where and how a model runs in this process, set up before any step: the device (its
name checked, ``auto`` resolved), torch's threads, seeds and deterministic kernels, the
memory format and autocast dtype (:class:`Runtime`, made by :func:`setup`),
``torch.compile`` and its limits, and whether steps replay as CUDA graphs; and
:func:`settings_restored`, which puts the process-wide settings a producer changed back.

Apart from the epochs (:mod:`basisconv.loop`) and the optimizer (:mod:`basisconv.optim`):
these are the process's settings, which the config checks, the timing of modules and the
benchmarks read without training anything, and none of them calls into the loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn as nn
from omegaconf import DictConfig

from . import distributed
from .data import TensorBatches
from .errors import ConfigError

log = logging.getLogger(__name__)

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


DEVICE_NAMES = "auto, cpu, cuda, cuda:N (N: the GPU's index)"


def device_problem(name: str, setting: str = "trainer.device={}", *, here: bool = True,
                   auto: bool = True) -> str | None:
    """What is wrong with the device ``name`` (one line; ``setting`` shows how it was given,
    ``trainer.device={}`` or ``--device {}``), or None. Valid: auto (CUDA when there is
    one; unless ``auto`` is False), cpu, cuda and cuda:N as torch writes N; with ``here``,
    also one this torch sees (a config is checked without it: whether the machine has
    CUDA is the run's question)."""
    given = setting.format(name)
    valid = r"cpu|cuda(:(0|[1-9][0-9]*))?" + ("|auto" if auto else "")
    if re.fullmatch(valid, str(name), re.ASCII) is None:  # (torch refuses cuda:01)
        names = DEVICE_NAMES if auto else DEVICE_NAMES.removeprefix("auto, ")
        return f"{given}: no such device; choose one of {names}"
    if not here or not name.startswith("cuda"):
        return None
    if not torch.cuda.is_available():
        return (f"{given}: no CUDA device is available to this torch; use "
                f"{setting.format('cpu')}{' or auto' if auto else ''}")
    index, count = torch.device(name).index, torch.cuda.device_count()
    if index is not None and index >= count:
        # (torch's own "invalid device ordinal" would come from deep inside the set-up)
        return f"{given}: this torch sees {count} GPU(s), cuda:0..cuda:{count - 1}"
    return None


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    problem = device_problem(name)
    if problem:
        raise ConfigError(problem)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


#: The environment variable that fixes cuBLAS's workspace, as its determinism needs.
CUBLAS_WORKSPACE = "CUBLAS_WORKSPACE_CONFIG"


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed torch's generators; with ``deterministic`` also force deterministic kernels
    (slower on GPU; on CPU the default kernels already are)."""
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS is deterministic only with a fixed workspace; read when cuBLAS starts, so
        # set it before the first matmul (a value the user chose is kept).
        os.environ.setdefault(CUBLAS_WORKSPACE, ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    # cudnn.benchmark picks the fastest kernel per shape: worth it for fixed CIFAR shapes,
    # but its choice may vary between runs, so it is off in deterministic mode.
    torch.backends.cudnn.benchmark = not deterministic


@contextlib.contextmanager
def settings_restored() -> Iterator[None]:
    """Run a producer (a training run, a sensitivity estimate, a search) without leaving its
    process-wide torch settings behind: a notebook, a test or a sweep that calls it next
    keeps its own thread count, deterministic/cudnn flags, ``CUBLAS_WORKSPACE_CONFIG`` and
    torch.compile's limits (the global RNG, seeded on purpose, is not restored).

    A stop or error in flight is never replaced by one from the restoring: a Ctrl-C during
    torch's first lazy ``import torch._inductor.config`` (which
    ``use_deterministic_algorithms`` makes) leaves sympy half-imported, so the restoring
    call failed with an ``AttributeError`` trace instead of the stop's one line."""
    cudnn = torch.backends.cudnn
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), cudnn.deterministic,
             cudnn.benchmark)
    workspace = os.environ.get(CUBLAS_WORKSPACE)  # (else it stays set)

    def restore() -> None:
        threads, deterministic, warn_only, cudnn.deterministic, cudnn.benchmark = saved
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        if workspace is None:
            os.environ.pop(CUBLAS_WORKSPACE, None)
        else:
            os.environ[CUBLAS_WORKSPACE] = workspace
        _restore_compile_limits()

    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):  # the stop or error in flight is what to report
            restore()
        raise
    restore()


def memory_format(channels_last: bool) -> torch.memory_format:
    """The layout of activations and weights: ``channels_last`` (NHWC) or contiguous NCHW."""
    return torch.channels_last if channels_last else torch.contiguous_format


@dataclass
class Runtime:
    """Where and how a model runs: device, memory format and autocast dtype."""

    device: torch.device
    memory_format: torch.memory_format
    amp_dtype: torch.dtype | None

    def batches(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *,
                augment: DictConfig | None = None, seed: int = 0) -> TensorBatches:
        """Batches in this runtime's memory format: training batches (shuffled by
        ``seed``, cropped and flipped as the ``data`` config ``augment`` says) when
        ``augment`` is given, else evaluation batches in order."""
        if augment is None:
            return TensorBatches(images, labels, batch_size, train=False,
                                 memory_format=self.memory_format)
        return TensorBatches(images, labels, batch_size, train=True, seed=seed,
                             crop_padding=augment.crop_padding, flip=augment.flip,
                             memory_format=self.memory_format)


def use_threads(trainer: DictConfig) -> None:
    """torch's CPU threads as ``trainer.threads`` says (null, the default: torch's own, left alone)."""
    if trainer.threads:
        torch.set_num_threads(trainer.threads)


def slow_precision(amp: str, device: torch.device | str,
                   setting: str = "trainer.amp={}") -> str | None:
    """A warning (one line) when autocast ``amp`` is fp16 on a CPU, else None; ``setting``
    shows how it was given, ``trainer.amp={}`` or ``--amp {}``. Most CPUs have no fp16
    arithmetic: a run or a benchmark that asks for it is slow for no reason it sees."""
    if amp != "fp16" or torch.device(device).type != "cpu":
        return None
    return (f"{setting.format('fp16')} on CPU: most CPUs have no fp16 arithmetic, so its "
            f"convolutions run tens of times slower than fp32; use {setting.format('bf16')} "
            f"or none there")


def setup(trainer: DictConfig, seed: int, *, join_process_group: bool = False,
          amp_setting: str = "trainer.amp={}") -> Runtime:
    """The one set-up of a training process: torch threads (``trainer.threads``), the
    device (``trainer.device``; with ``join_process_group`` the ``torchrun`` process group
    is joined and the device becomes this rank's GPU), seeds and deterministic flags, the
    memory format and the autocast dtype; fp16 on a CPU is warned of
    (:func:`slow_precision`; ``amp_setting`` names how ``trainer.amp`` was given)."""
    use_threads(trainer)
    device = resolve_device(trainer.device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # streams and events of cuda:N runs then live there
    if join_process_group:
        device = distributed.setup(device, trainer.collective_timeout_s)
    seed_everything(seed, trainer.deterministic)
    if slow := slow_precision(trainer.amp, device, amp_setting):
        log.warning(slow)
    return Runtime(device, memory_format(trainer.channels_last), AMP_DTYPES[trainer.amp])


def use_cuda_graphs(trainer: DictConfig, device: torch.device) -> bool:
    """Whether steps replay as CUDA graphs: ``trainer.cuda_graphs`` on a CUDA device, in
    a single process (elsewhere the setting is ignored, so one config serves CPU and GPU
    machines)."""
    graphed = trainer.cuda_graphs and device.type == "cuda" and not distributed.is_distributed()
    if trainer.cuda_graphs and not graphed:
        log.info("trainer.cuda_graphs applies to single-process CUDA runs; running eagerly")
    return graphed


def compiled(model: nn.Module, trainer: DictConfig) -> nn.Module:
    """``model`` under ``torch.compile`` when ``trainer.compile``, in ``trainer.compile_mode``
    (``reduce-overhead`` replays CUDA graphs: one launch per step's forward and backward)."""
    if not trainer.compile:
        return model
    raise_compile_limits()
    mode = trainer.compile_mode
    return torch.compile(model, mode=None if mode == "default" else mode)


#: torch.compile's limits of compiled graphs per function (dynamo's ``recompile_limit``,
#: 8 by default) raised to while a producer compiles, and the values they had before
#: (``None``: not raised), which :func:`settings_restored` puts back.
COMPILE_LIMITS = {"recompile_limit": 1024, "accumulated_recompile_limit": 4096}
_limits_before: dict | None = None


def raise_compile_limits() -> None:
    """Raise torch.compile's limits to :data:`COMPILE_LIMITS`. Why: the graphs of every
    model compiled in one process count against one limit per ``forward`` (each run
    compiles 2: training and evaluation), so from a sweep's 5th job on, or the speed
    benchmark's 5th compiled model, torch ran the model uncompiled with one warning, while
    records said compiled."""
    import torch._dynamo

    global _limits_before
    config = torch._dynamo.config
    if _limits_before is None:
        _limits_before = {key: getattr(config, key) for key in COMPILE_LIMITS}
    for key, value in COMPILE_LIMITS.items():
        setattr(config, key, max(getattr(config, key), value))


def _restore_compile_limits() -> None:
    global _limits_before
    if _limits_before is not None:
        import torch._dynamo

        for key, value in _limits_before.items():
            setattr(torch._dynamo.config, key, value)
        _limits_before = None
