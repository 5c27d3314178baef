"""Speed of basis convolutions against the dense convolutions they replace: every distinct
conv shape of CIFAR ResNet-18 (:func:`benchmark_layers`), and the whole ResNet-18 with all
its convs converted (:func:`benchmark_model`), at several basis fractions, side by side
with the cost model's FLOP ratio. :func:`.speed_run.run` does both as
``scripts/benchmark_layers.py`` asks and writes the CSV files and their JSON records; the
plot is :func:`basisconv.analysis.figures.basis_speedups`.

"fwd" is an inference forward (``torch.no_grad``, BN in eval mode, and so its FLOP ratio:
folded norms use running statistics, without the moments); "fwdbwd" a training
forward plus backward with fresh gradients, as in a training step (the optimizer step is
not timed). See :mod:`basisconv.timing` for how candidates are timed.

Whole model: "all layers" means ``apply_basis(model, "all", fraction,
only_where_saves=True)``: a layer whose basis form would do more multiply-adds than the
dense conv (the stem at 1/2 and 3/4, the 1x1 shortcuts at 1/2 and 3/4) stays dense, as
Composer's Factorize does. Beside the FLOP ratio, two time-based figures use the layer
results of the same run: the dense step minus its 20 convs (each timed alone at its shape)
is what no basis layer reduces (BN, ReLU, additions, pooling, the loss); the *time bound*
adds back the dense conv times scaled by their FLOP ratios (the best a basis layer could
do), and *from layer times* adds back the measured basis layer times instead.

With ``fuse_norm`` every timed layer is a conv, its batch norm and ReLU
(:func:`with_norm_and_relu`): dense, basis with the norm folded in (the ``basis_*`` columns) and
basis unfused (``unfused_*``), so the rows say per shape what folding the norm gains; the
time bound then scales the whole triple to its FLOP ratio, the issue-13 target. A row's
ReLU is timed for every layer of its shape, though in ResNet-18 only the stem and each
block's first conv have one of their own (a second conv's ReLU follows the shortcut's
addition, a shortcut conv has none): the bounds count 11 ReLUs of its 20 convs among what
basis layers reduce, so its non-conv share reads a little low.

Whole model, memory (:mod:`basisconv.bench.memory`): the MiB a training forward keeps for
the backward (``*_saved_mib``, every device) and on CUDA the peak of a training step
(``*_peak_mib``; empty elsewhere), of the eager modules, beside the parameters.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from ..cost import model_cost
from ..cost_formulas import basis_conv2d_cost, conv2d_cost, saves_compute
from ..errors import ConfigError
from ..layer_names import conv_layers
from ..layer_options import resolve_num_basis
from ..layers import BasisConv2d
from ..execution import device_problem
from ..models import build_model
from ..records import precision_name
from ..surgery import apply_basis
from ..timing import ConvNormAct, Runner, Timer, output_gradient
from . import flag_below_minimum, fused_problem, profile_table
from .memory import training_memory_mib

#: Issue 3's target: the measured fwd+bwd ratio of the whole model <= 1.15 x its FLOP ratio.
TARGET_SLACK = 1.15
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


def _in_eval(modules: dict, run: Callable[[], dict]) -> dict:
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
        fwd = _in_eval(modules, lambda: timer.run(
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
                **_ratio_columns(fwd, fwdbwd, fraction, (
                    costs[fraction, "inference"].forward_flops / costs["dense"].forward_flops,
                    cost.total_flops / costs["dense"].total_flops,
                    split.total_flops / costs["dense"].total_flops)),
                **_spreads(fwd_spread, fwdbwd_spread, fraction),
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


def _ratio_columns(fwd: dict, fwdbwd: dict, key, theory: tuple[float, float, float]) -> dict:
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


def _spreads(fwd: dict, fwdbwd: dict, key) -> dict[str, float]:
    """How noisy a row's two medians were: the larger relative interquartile range
    (:func:`basisconv.timing.relative_spread`) of the dense and the basis times."""
    return {"fwd_spread": max(fwd["dense"], fwd[key]),
            "fwdbwd_spread": max(fwdbwd["dense"], fwdbwd[key])}


def profile_steps(steps: dict[str, Callable[[], None]], device: torch.device,
                  rounds: int = 3) -> str:
    """Where each training step's time goes: torch.profiler's operators by self time (on
    CUDA, by GPU time: which kernels, how many launches), ``rounds`` steps each."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    tables = []
    for name, step in steps.items():
        step()  # warm: allocations, cuDNN and Triton choices
        with profile(activities=activities) as prof:
            for _ in range(rounds):
                step()
            if cuda:
                torch.cuda.synchronize(device)
        tables.append(profile_table(
            prof, device, f"ResNet-18 {name}: {rounds} training steps (forward + backward)"))
    return "\n\n".join(tables) + "\n"


def benchmark_model(options: SpeedOptions, runner: Runner, timer: Timer, layer_rows: list[dict],
                    *, progress: Progress = print_progress) -> tuple[list[dict], str | None]:
    """One row per basis fraction for the whole ResNet-18; with ``layer_rows`` of every
    ResNet-18 shape (from :func:`benchmark_layers`) also the time-based bounds. With
    ``options.profile`` also the profiler's tables of each step (else ``None``)."""
    torch.manual_seed(0)
    base = build_model("resnet18")
    labels = torch.randint(0, 10, (options.batch_size,), device=runner.device)
    # at the batch timed: with norms folded in, a per-call term (A Cov_b) does not scale with
    # it; and the minimal (split) count is over the same batch as the dense cost it is divided by
    shape = (options.batch_size, 3, 32, 32)
    models, split = _model_forms(options, base, shape)
    costs = {k: model_cost(m, shape) for k, m in models.items()}
    # the forward timed is an inference one: folded norms use running statistics, so
    # there are no moments of the basis maps to count, unlike in training
    forward_flops = _in_eval(models, lambda: {k: model_cost(m, shape).forward_flops
                                                 for k, m in models.items()})
    prepared = {k: runner.prepare(m, shape) for k, m in models.items()}
    x = runner.input(options.batch_size, 3, 32, 32)

    def backward(out: torch.Tensor) -> None:
        F.cross_entropy(out.float(), labels).backward()

    steps = {k: runner.training_step(m, x, backward) for k, m in prepared.items()}
    fwdbwd = timer.run(steps, options.model_repeats, options.warmup)
    fwdbwd_spread = timer.spread
    profiled = (profile_steps({("dense" if k == "dense" else f"basis {k}"): step
                               for k, step in steps.items()}, runner.device)
                if options.profile else None)
    fwd = _in_eval(models, lambda: timer.run(
        {k: runner.forward(m, x) for k, m in prepared.items()}, options.model_repeats,
        options.warmup))
    fwd_spread = timer.spread
    memory = training_memory_mib(models, runner, x, backward)
    dense = costs["dense"]
    layer_ms = _layer_times(models, layer_rows)
    progress(f"  dense: fwd {fwd['dense']:.0f} ms, fwd+bwd {fwdbwd['dense']:.0f} ms, "
             f"{memory['dense'][0]:.0f} MiB kept for the backward")
    rows = []
    for fraction in options.fractions:
        cost = costs[fraction]
        theory_fb = cost.total_flops / dense.total_flops
        measured_fb = fwdbwd[fraction] / fwdbwd["dense"]
        dense_layers = [n for n, m in conv_layers(models[fraction]).items() if isinstance(m, nn.Conv2d)]
        row = {
            "model": "resnet18", "batch": options.batch_size, "fraction": fraction,
            "combine": options.combine, "layers_dense": " ".join(dense_layers),
            "params": cost.params, "dense_params": dense.params,
            # per image, as before (the whole batch's over its size)
            "forward_flops": cost.forward_flops // options.batch_size,
            "backward_flops": cost.backward_flops // options.batch_size,
            **_ratio_columns(fwd, fwdbwd, fraction, (
                forward_flops[fraction] / forward_flops["dense"], theory_fb,
                split[fraction].total_flops / dense.total_flops)),
            "target_met": measured_fb <= TARGET_SLACK * theory_fb,
            **_spreads(fwd_spread, fwdbwd_spread, fraction),
            **_memory_columns(memory, fraction),
        }
        if layer_ms:
            row.update(_time_bound_columns(layer_ms, fwdbwd["dense"], fraction, measured_fb))
        rows.append(row)
        bound = (f"; time bound {row['time_bound_ratio']:.3f}, from layer times "
                 f"{row['layer_sum_ratio']:.3f}" if layer_ms else "")
        progress(f"  fraction {fraction:<6} fwd {row['fwd_ratio']:.3f} (theory {row['theory_fwd_ratio']:.3f})  "
                 f"fwd+bwd {measured_fb:.3f} (theory {theory_fb:.3f}, x{row['fwdbwd_vs_theory']:.2f}{bound})  "
                 f"{fwdbwd[fraction]:.0f} ms; kept for the backward x{row['saved_ratio']:.2f}")
    return rows, profiled


def _model_forms(options: SpeedOptions, base: nn.Module, shape: tuple[int, ...]
                 ) -> tuple[dict, dict]:
    """The models a model row times, by key (``"dense"``: ``base``; each fraction: its
    basis form, fresh layers in ``options.combine`` where they save compute), and each
    fraction's cost at input ``shape`` in the split form, the fewest multiply-adds a basis
    form can do (the row's ``split_fwdbwd_ratio``)."""
    models: dict = {"dense": base}
    split = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # only_where_saves already leaves those layers dense
        for fraction in options.fractions:
            models[fraction] = apply_basis(base, "all", fraction, convert=False,
                                           only_where_saves=True, combine=options.combine,
                                           fuse_norm=options.fuse_norm)
            split[fraction] = model_cost(apply_basis(base, "all", fraction, convert=False,
                                                     only_where_saves=True, combine="split"),
                                         shape)
    return models, split


def _time_bound_columns(layer_ms: dict[str, dict], dense_step: float, fraction: float,
                        measured: float) -> dict[str, float]:
    """A model row's bound from its layers' times (:func:`_layer_times`): the step a basis
    model could reach if each conv ran at its FLOP ratio (``time_bound_ratio``) or at its
    measured basis time (``layer_sum_ratio``), both relative to the dense step
    (``dense_step`` ms), and the ``measured`` training-step ratio over the first.

    The dense step minus its convs (timed alone, same shapes) is what basis layers cannot
    reduce: BN, ReLU, additions, pooling, the loss. The convs' share of the step scales by
    their time ratio. Timed one by one they can add up past the whole step (each alone pays
    launches and syncs the step overlaps, at a small batch): then the share is all of it,
    not negative."""
    dense_conv = sum(ms["dense"] for ms in layer_ms.values())
    other = max(dense_step - dense_conv, 0.0) / dense_step
    at_theory = sum(ms["dense"] * ms["theory", fraction] for ms in layer_ms.values())
    from_layers = sum(ms[fraction] for ms in layer_ms.values())
    bound = other + (1 - other) * at_theory / dense_conv
    return {"dense_non_conv_share": other, "time_bound_ratio": bound,
            "layer_sum_ratio": other + (1 - other) * from_layers / dense_conv,
            "fwdbwd_vs_time_bound": measured / bound}


def _memory_columns(memory: dict, fraction: float) -> dict:
    (dense_saved, dense_peak), (saved, peak) = memory["dense"], memory[fraction]
    return {"dense_saved_mib": dense_saved, "basis_saved_mib": saved,
            "saved_ratio": saved / dense_saved, "dense_peak_mib": dense_peak,
            "basis_peak_mib": peak, "peak_ratio": peak / dense_peak}


def _layer_times(models: dict, layer_rows: list[dict]) -> dict[str, dict]:
    """Per conv layer of the model: its dense and basis fwd+bwd times from the layer
    benchmark, and its FLOP ratio, for every fraction ({} without layer results)."""
    if not layer_rows:
        return {}
    by_layer: dict[str, dict] = {}
    for r in layer_rows:
        for name in r["layers"].split():
            entry = by_layer.setdefault(name, {"dense": r["dense_fwdbwd_ms"]})
            entry[r["fraction"]] = r["basis_fwdbwd_ms"]
            entry["theory", r["fraction"]] = r["theory_fwdbwd_ratio"]
    for fraction, model in models.items():
        if fraction == "dense":
            continue
        for name, module in conv_layers(model).items():
            if isinstance(module, nn.Conv2d):  # left dense by only_where_saves
                by_layer[name][fraction] = by_layer[name]["dense"]
                by_layer[name]["theory", fraction] = 1.0
    return by_layer

