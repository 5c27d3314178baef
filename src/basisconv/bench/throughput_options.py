"""What the training-throughput benchmark (:mod:`.train`) is asked to measure: the flags
of ``scripts/benchmark_train.py`` as :class:`ThroughputOptions`, each checked before a step
is trained (:meth:`ThroughputOptions.invalid_flag`), and what its record's file name carries
(:attr:`ThroughputOptions.tag`).

Apart from :mod:`.train` so that the flags and their rules read in one place, and the
measurement in another: nothing here trains, times or writes, and nothing here calls into
:mod:`.train`, which reads from here the options and :func:`profiled_from` (how many steps
its profile leaves out).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from ..execution import device_problem
from ..loop import graphed_fp16_problem
from ..models import list_models
from . import flag_below_minimum, fused_problem


@dataclass
class ThroughputOptions:
    """What is trained and how: the flags of ``scripts/benchmark_train.py``."""

    model: str = "resnet18"
    batch_size: int = 128
    steps: int = 20   # timed steps
    warmup: int = 3   # untimed steps first
    amp: str = "none"
    channels_last: bool = True
    threads: int = 2  # CPU threads (0: torch's default)
    device: str = "cpu"
    basis_size: float | None = None  # every conv where it saves compute in basis form
    layers: str = "all"              # or those of these comma-separated names and patterns
    combine: str = "stacked"         # the basis layers' form (see basisconv.kernels)
    fuse_norm: bool = False          # basis layers with their batch norm and ReLU as one
    frobenius_decay: bool = False    # the loss's Frobenius decay correction (basis.frobenius_decay)
    compile_mode: str | None = None  # torch.compile the model in this mode (None: eager)
    cuda_graphs: bool = False        # replay each step as CUDA graphs (basisconv.graphs)
    profile: bool = False            # then profile one more epoch of ``steps`` (torch.profiler)

    def invalid_flag(self) -> str | None:
        """The first flag of ``scripts/benchmark_train.py`` whose value cannot be measured,
        as one line naming it and the valid values (for ``parser.error``); ``None`` when
        all are valid."""
        models = list_models()
        if self.model not in models:
            return f"--model {self.model}: no such model; choose one of {', '.join(models)}"
        below = flag_below_minimum((("--batch-size", self.batch_size, 1),
                                    ("--steps", self.steps, 1), ("--warmup", self.warmup, 0),
                                    ("--threads", self.threads, 0)))
        if below:
            return below
        if self.basis_size is not None and not 0 < self.basis_size <= 1:
            return (f"--basis-size must be in (0, 1] (a fraction of each layer's output "
                    f"channels), got {self.basis_size:g}")
        if self.basis_size is None and (self.fuse_norm or self.frobenius_decay
                                        or self.combine != "stacked"
                                        or self.chosen_layers != "all"):
            given = ("--fuse-norm" if self.fuse_norm else "--frobenius-decay"
                     if self.frobenius_decay else f"--layers {self.layers}"
                     if self.chosen_layers != "all" else f"--combine {self.combine}")
            return (f"{given} applies to basis layers, and the model is dense: add "
                    f"--basis-size (e.g. 0.25), or drop {given.split()[0]}")
        device = device_problem(self.device, "--device {}") or (
            fused_problem(self.combine, self.device) if self.basis_size is not None else None)
        if device:
            return device
        # the first step compiles, autotunes the fused kernel or times the auto form's
        # candidates: kept out of the timed steps by the warm-up (warmup_seconds)
        first_call = ("--compile-mode" if self.compile_mode is not None else
                      f"--combine {self.combine}" if self.basis_size is not None
                      and self.combine in ("auto", "fused") else None)
        if first_call and self.warmup < 1:
            return (f"--warmup must be >= 1 with {first_call} (its first step compiles, "
                    f"autotunes or picks the layers' forms, which would be timed), "
                    f"got {self.warmup}")
        if self.cuda_graphs and not self.device.startswith("cuda"):
            return "--cuda-graphs needs --device cuda"
        if self.cuda_graphs and self.amp == "fp16":
            return graphed_fp16_problem("--cuda-graphs", "--amp fp16", "use --amp bf16")
        if self.profile and self.steps < profiled_from(self) + 1:
            left_out = ("its eager step, its capture and the profiler's warm-up step"
                        if self.cuda_graphs else "the profiler's warm-up step")
            return (f"--steps must be >= {profiled_from(self) + 1} with --profile (the "
                    f"profiled epoch leaves out {left_out}), got {self.steps}")
        return None

    @property
    def chosen_layers(self) -> str | list[str]:
        """``--layers`` as :func:`basisconv.surgery.apply_basis` takes it
        (:func:`layer_patterns`)."""
        return layer_patterns(self.layers)

    @property
    def tag(self) -> str:
        """What the file name carries beyond device and precision: the non-default options
        (threads too, ``-t0`` for torch's default: the speed report compares a basis step
        with the dense step at its own threads, and a dense run at 1 thread once replaced
        the 2-thread record; and the untimed and timed steps, ``-w0``, ``-s60``, which it
        compares on as well: a ``--warmup 0`` dense run replaced the default's record,
        leaving the default basis records with no dense step to be relative to)."""
        return "".join([
            "" if self.model == "resnet18" else f"-{self.model}",
            "" if self.basis_size is None else f"-basis{self.basis_size:g}",
            # a chosen layer set: its own file, named by a digest of the list (the record
            # holds the list and the layers converted)
            "" if self.basis_size is None or self.chosen_layers == "all" else
            f"-layers{hashlib.sha256(','.join(self.chosen_layers).encode()).hexdigest()[:8]}",
            "" if self.basis_size is None or self.combine == "stacked" else f"-{self.combine}",
            "-fusenorm" if self.basis_size is not None and self.fuse_norm else "",
            "-frobenius" if self.basis_size is not None and self.frobenius_decay else "",
            "" if self.compile_mode is None else f"-compile-{self.compile_mode}",
            "-graphs" if self.cuda_graphs else "",
            "" if self.channels_last else "-nchw",
            "" if self.batch_size == 128 else f"-b{self.batch_size}",
            "" if self.threads == ThroughputOptions.threads else f"-t{self.threads}",
            # the warm-up and timed steps: the speed report compares a step only with a dense
            # step after as many warm-up steps and timed over as many (SAME_SETTING), so a
            # --warmup 0 or --steps 60 run must not replace the default's
            "" if self.warmup == ThroughputOptions.warmup else f"-w{self.warmup}",
            "" if self.steps == ThroughputOptions.steps else f"-s{self.steps}"])


def layer_patterns(layers: str) -> str | list[str]:
    """``--layers``: ``all``, or layer names and fnmatch patterns separated by commas or
    spaces (a comparison table's ``layers`` column is space-separated); empty entries
    (a trailing comma) are dropped."""
    names = [name for name in re.split(r"[,\s]+", layers) if name]
    return "all" if names == ["all"] else names


def profiled_from(options: ThroughputOptions) -> int:
    """The steps of the profiled epoch left out of its profile: the last of them is the
    profiler's warm-up; with CUDA graphs the two before it are the epoch's eager step and
    its capture (each epoch captures afresh, as training's do), which run before the
    profiler starts collecting."""
    return 3 if options.cuda_graphs else 1
