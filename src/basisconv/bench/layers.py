"""Speed of basis convolutions against the dense convolutions they replace, one conv
shape at a time: every distinct conv shape of CIFAR ResNet-18 (:func:`benchmark_layers`) at
several basis fractions, side by side with the cost model's FLOP ratio. Here too what the
whole-model benchmark (:func:`.whole_model.benchmark_model`) shares with it: the options
(:class:`SpeedOptions`), the columns both tables have (:func:`ratio_columns`,
:func:`spreads`) and the inference forward's eval mode (:func:`in_eval`).
:func:`.speed_run.run` does both as ``scripts/benchmark_layers.py`` asks and writes the CSV
files and their JSON records; the plot is :func:`basisconv.analysis.figures.basis_speedups`.

"fwd" is an inference forward (``torch.no_grad``, BN in eval mode, and so its FLOP ratio:
folded norms use running statistics, without the moments); "fwdbwd" a training
forward plus backward with fresh gradients, as in a training step (the optimizer step is
not timed). See :mod:`basisconv.timing` for how candidates are timed.

With ``fuse_norm`` every timed layer is a conv, its batch norm and ReLU
(:func:`with_norm_and_relu`): dense, basis with the norm folded in (the ``basis_*`` columns) and
basis unfused (``unfused_*``), so the rows say per shape what folding the norm gains; the
whole model's time bound (:mod:`.whole_model`) then scales the whole triple to its FLOP
ratio, the issue-13 target. A row's ReLU is timed for every layer of its shape, though in
ResNet-18 only the stem and each block's first conv have one of their own (a second conv's
ReLU follows the shortcut's addition, a shortcut conv has none): the bounds count 11 ReLUs
of its 20 convs among what basis layers reduce, so its non-conv share reads a little low.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from ..cost_formulas import basis_conv2d_cost, conv2d_cost, saves_compute
from ..errors import ConfigError
from ..layer_names import conv_layers
from ..layer_options import resolve_num_basis
from ..layers import BasisConv2d
from ..execution import device_problem
from ..models import build_model
from ..records import precision_name
from ..timing import ConvNormAct, Runner, Timer, output_gradient
from . import flag_below_minimum, fused_problem

#: ``--quick``: layer rounds, model rounds, warm-up rounds (a smoke run).
QUICK_REPEATS = (3, 2, 1)

Progress = Callable[[str], None]


def print_progress(line: str) -> None:
    print(line, flush=True)


@dataclass
class SpeedOptions:
    """What the benchmark measures and how: the flags of ``scripts/benchmark_layers.py``.
    With ``quick`` the repeat counts are those of :data:`QUICK_REPEATS`."""

    device: str = "cpu"
    threads: int = 2  # CPU threads (0: torch's default)
    batch_size: int = 128
    fractions: list[float] = field(default_factory=lambda: [0.125, 0.25, 0.5, 0.75])
    parts: list[str] = field(default_factory=lambda: ["layers", "model"])
    layer_repeats: int = 15
    model_repeats: int = 7
    warmup: int = 2
    amp: str = "none"
    channels_last: bool = True
    compile: bool = False
    cuda_graphs: bool = False  # each timed call replayed as a CUDA graph: the GPU's work alone
    combine: str = "stacked"
    fuse_norm: bool = False  # basis layers with their batch norm and ReLU as one computation
    allocator_tuning: bool = True
    quick: bool = False
    profile: bool = False  # also write where a training step's time goes (torch.profiler)

    def __post_init__(self) -> None:
        problem = fused_problem(self.combine, self.device)
        if problem:
            raise ConfigError(problem)
        if self.quick:
            self.layer_repeats, self.model_repeats, self.warmup = QUICK_REPEATS
        # ascending, as the tables and the plot's lines read them (else an order given as
        # 0.5 0.125 0.75 draws the lines as zigzags)
        self.fractions = sorted(self.fractions)

    @property
    def tag(self) -> str:
        """What file names carry: device, precision and every non-default option, so that
        runs with different options never overwrite each other (threads too: ``-t1``,
        ``-t0`` for torch's default; a run at 1 thread once replaced the 2-thread files).
        The parts are not in it: each writes files of its own (``layer-speed-*``,
        ``model-speed-*``); nor are the fractions, the rows a file holds (its record's
        ``config`` names them): a run of other fractions replaces the files of its options,
        as the documented ``--fractions 0.25 0.5`` commands replace theirs."""
        repeats = (self.layer_repeats, self.model_repeats, self.warmup)  # rounds of each
        full = (SpeedOptions.layer_repeats, SpeedOptions.model_repeats, SpeedOptions.warmup)
        suffix = "".join([
            "" if self.channels_last else "-nchw",
            "-compile" if self.compile else "",
            "-graphs" if self.cuda_graphs else "",
            "" if self.combine == "stacked" else f"-{self.combine}",
            "-fusenorm" if self.fuse_norm else "",
            "" if self.batch_size == 128 else f"-b{self.batch_size}",
            "" if self.threads == SpeedOptions.threads else f"-t{self.threads}",
            "" if self.allocator_tuning or self.device != "cpu" else "-defaultmalloc",
            "-quick" if repeats == QUICK_REPEATS else
            "" if repeats == full else "-r{}_{}_{}".format(*repeats),
        ])
        return f"{self.device}-{precision_name(self.amp)}{suffix}"

    def invalid_flag(self) -> str | None:
        """The first flag of ``scripts/benchmark_layers.py`` whose value cannot be measured,
        as one line naming it and the valid values (for ``parser.error``); ``None`` when
        all are valid (with ``--quick``, its repeats replace those given)."""
        below = flag_below_minimum((("--batch-size", self.batch_size, 1),
                                    ("--threads", self.threads, 0),
                                    ("--layer-repeats", self.layer_repeats, 1),
                                    ("--model-repeats", self.model_repeats, 1),
                                    # a form's first call autotunes cuDNN or Triton,
                                    # compiles, or picks its auto form: never timed
                                    ("--warmup", self.warmup, 1,
                                     "the first call of each form is not timed")))
        if below:
            return below
        for fraction in self.fractions:
            if not 0 < fraction <= 1:
                return f"--fractions must be in (0, 1], got {fraction:g}"
        if len(set(self.fractions)) < len(self.fractions):  # one model row each, twice
            return f"--fractions must differ, got {' '.join(f'{f:g}' for f in self.fractions)}"
        device = device_problem(self.device, "--device {}", auto=False)
        if device:
            return device
        if self.cuda_graphs and self.device != "cuda":
            return "--cuda-graphs: CUDA graphs run on CUDA only; add --device cuda"
        if self.cuda_graphs and self.compile:
            return ("--cuda-graphs with --compile: give one (torch.compile's own graphs are "
                    "its reduce-overhead mode)")
        if self.profile and "model" not in self.parts:
            return "--profile profiles the whole model's step: add --parts model, or drop --profile"
        return None

    def runner(self) -> Runner:
        return Runner(self.device, channels_last=self.channels_last, amp=self.amp,
                      compile=self.compile, graphs=self.cuda_graphs)


@dataclass(frozen=True)
class ConvShape:
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    padding: int
    input_hw: int

    @property
    def output_hw(self) -> int:
        return (self.input_hw + 2 * self.padding - self.kernel) // self.stride + 1

    @property
    def label(self) -> str:
        return (f"{self.in_channels}->{self.out_channels} k{self.kernel} s{self.stride} "
                f"@{self.input_hw}")


def resnet18_shapes() -> dict[ConvShape, list[str]]:
    """Distinct conv shapes of CIFAR ResNet-18 (input sizes from a forward at 32x32), with
    the layers that have them."""
    model = build_model("resnet18")
    sizes: dict[str, int] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: sizes.__setitem__(name, inp[0].shape[-1]))
             for name, m in conv_layers(model).items()]
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    shapes: dict[ConvShape, list[str]] = {}
    for name, conv in conv_layers(model).items():
        shape = ConvShape(conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0],
                          conv.padding[0], sizes[name])
        shapes.setdefault(shape, []).append(name)
    return shapes


def with_norm_and_relu(conv: nn.Module) -> ConvNormAct:
    """``conv`` with a fresh batch norm and a ReLU after it, as the models compute a stem or
    a block's first conv (a block's second conv and a shortcut have no ReLU of their own:
    a layer row times one all the same, see the module's docstring)."""
    return ConvNormAct(conv, nn.BatchNorm2d(conv.out_channels), relu=True)


def _timed_forms(options: SpeedOptions, runner: Runner, shape: "ConvShape", *,
                 input_grad: bool) -> dict:
    """What a layer row times: the dense conv and each fraction's basis layer, or with
    ``fuse_norm`` those as :func:`with_norm_and_relu` triples plus the unfused basis triple;
    ``input_grad``: whether the timed training step's input needs a gradient (a compiled
    auto layer chooses its training form so)."""
    dense = nn.Conv2d(shape.in_channels, shape.out_channels, shape.kernel, shape.stride,
                      shape.padding, bias=False)
    wrap = with_norm_and_relu if options.fuse_norm else (lambda conv: conv)
    forms = {"dense": wrap(dense)}
    def basis(fraction: float, fuse: bool) -> nn.Module:
        return wrap(BasisConv2d(shape.in_channels, shape.out_channels, shape.kernel,
                                resolve_num_basis(fraction, shape.out_channels),
                                stride=shape.stride, padding=shape.padding, bias=False,
                                combine=options.combine, fuse_norm=fuse))

    for fraction in options.fractions:
        forms[fraction] = basis(fraction, options.fuse_norm)
        if options.fuse_norm:
            forms[fraction, "unfused"] = basis(fraction, False)
    x = (options.batch_size, shape.in_channels, shape.input_hw, shape.input_hw)
    return {k: runner.prepare(module, x, input_requires_grad=input_grad)
            for k, module in forms.items()}


def in_eval(modules: dict, run: Callable[[], dict]) -> dict:
    """``run()`` with every module in eval mode (an inference forward: a batch norm uses
    its running statistics; a conv alone is the same in both modes), then train again."""
    for module in modules.values():
        module.eval()
    try:
        return run()
    finally:
        for module in modules.values():
            module.train()


def benchmark_layers(options: SpeedOptions, runner: Runner, timer: Timer, *,
                     shapes: dict[ConvShape, list[str]] | None = None,
                     progress: Progress = print_progress) -> list[dict]:
    """One row per conv shape (all of ResNet-18's unless ``shapes`` is given) and basis
    fraction: dense and basis times, fwd and fwd+bwd, their ratios and the FLOP ratios."""
    rows = []
    for shape, names in (resnet18_shapes() if shapes is None else shapes).items():
        torch.manual_seed(0)
        stem = shape.in_channels == 3  # nobody needs the gradient w.r.t. the images
        x = runner.input(options.batch_size, shape.in_channels, shape.input_hw, shape.input_hw,
                         requires_grad=not stem)
        backward = output_gradient(runner.input(options.batch_size, shape.out_channels,
                                                shape.output_hw, shape.output_hw))
        modules = _timed_forms(options, runner, shape, input_grad=not stem)
        sizes = {f: resolve_num_basis(f, shape.out_channels) for f in options.fractions}
        fwd = in_eval(modules, lambda: timer.run(
            {k: runner.forward(mod, x) for k, mod in modules.items()}, options.layer_repeats,
            options.warmup))
        fwd_spread = timer.spread
        fwdbwd = timer.run({k: runner.training_step(mod, x, backward) for k, mod in modules.items()},
                           options.layer_repeats, options.warmup)
        fwdbwd_spread = timer.spread
        # at the batch timed: with norms folded in, a per-call term does not scale with it
        costs = {"dense": conv2d_cost(shape.in_channels, shape.out_channels, shape.kernel,
                                      shape.output_hw, batch=options.batch_size,
                                      input_grad=not stem)}
        for fraction, m in sizes.items():
            for combine in dict.fromkeys(("stacked", "split", options.combine)):
                costs[fraction, combine] = basis_conv2d_cost(
                    shape.in_channels, shape.out_channels, shape.kernel, m, shape.output_hw,
                    batch=options.batch_size, combine=combine, input_grad=not stem,
                    fused_norm="batch" if options.fuse_norm and combine == options.combine
                    else None, norm_grad=options.fuse_norm)
            # the forward timed is an inference one: folded norms use running statistics
            costs[fraction, "inference"] = basis_conv2d_cost(
                shape.in_channels, shape.out_channels, shape.kernel, m, shape.output_hw,
                batch=options.batch_size, combine=options.combine,
                fused_norm="running" if options.fuse_norm else None)
        for fraction, m in sizes.items():
            cost, split = costs[fraction, options.combine], costs[fraction, "split"]
            rows.append({
                "shape": shape.label, "layers": " ".join(names),
                "in_channels": shape.in_channels, "out_channels": shape.out_channels,
                "kernel": shape.kernel, "stride": shape.stride, "input_hw": shape.input_hw,
                "output_hw": shape.output_hw, "batch": options.batch_size, "fraction": fraction,
                "num_basis": m, "combine": options.combine,
                "saves_compute": saves_compute((shape.in_channels, shape.out_channels, shape.kernel),
                                               m, options.combine, fused_norm=options.fuse_norm),
                **ratio_columns(fwd, fwdbwd, fraction, (
                    costs[fraction, "inference"].forward_flops / costs["dense"].forward_flops,
                    cost.total_flops / costs["dense"].total_flops,
                    split.total_flops / costs["dense"].total_flops)),
                **spreads(fwd_spread, fwdbwd_spread, fraction),
            })
            r = rows[-1]
            unfused = ""
            if options.fuse_norm:
                r.update({"unfused_fwd_ms": fwd[fraction, "unfused"],
                          "unfused_fwdbwd_ms": fwdbwd[fraction, "unfused"],
                          "fused_vs_unfused_fwdbwd": fwdbwd[fraction] / fwdbwd[fraction, "unfused"]})
                unfused = f"  fused/unfused x{r['fused_vs_unfused_fwdbwd']:.2f}"
            progress(f"  {shape.label:24s} m={m:<4d} fwd {r['fwd_ratio']:.3f} (theory "
                     f"{r['theory_fwd_ratio']:.3f})  fwd+bwd {r['fwdbwd_ratio']:.3f} (theory "
                     f"{r['theory_fwdbwd_ratio']:.3f}, "
                     f"x{r['fwdbwd_vs_theory']:.2f})  dense {fwdbwd['dense']:.1f} ms{unfused}")
    return rows


def ratio_columns(fwd: dict, fwdbwd: dict, key, theory: tuple[float, float, float]) -> dict:
    """The columns the layer and model tables share: the FLOP ratios to dense (``theory``:
    inference forward, training step, and the training step in the split form), the times
    of the dense and the basis form (``key`` in ``fwd`` and ``fwdbwd``) and their ratios,
    and how far the measured training-step ratio is from its FLOP ratio."""
    theory_fwd, theory_fwdbwd, split_fwdbwd = theory
    measured = fwdbwd[key] / fwdbwd["dense"]
    return {"theory_fwd_ratio": theory_fwd, "theory_fwdbwd_ratio": theory_fwdbwd,
            "split_fwdbwd_ratio": split_fwdbwd,
            "dense_fwd_ms": fwd["dense"], "basis_fwd_ms": fwd[key],
            "dense_fwdbwd_ms": fwdbwd["dense"], "basis_fwdbwd_ms": fwdbwd[key],
            "fwd_ratio": fwd[key] / fwd["dense"], "fwdbwd_ratio": measured,
            "fwdbwd_vs_theory": measured / theory_fwdbwd}


def spreads(fwd: dict, fwdbwd: dict, key) -> dict[str, float]:
    """How noisy a row's two medians were: the larger relative interquartile range
    (:func:`basisconv.timing.relative_spread`) of the dense and the basis times."""
    return {"fwd_spread": max(fwd["dense"], fwd[key]),
            "fwdbwd_spread": max(fwdbwd["dense"], fwdbwd[key])}
