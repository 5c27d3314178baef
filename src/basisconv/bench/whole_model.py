"""Speed of the whole CIFAR ResNet-18 with all its convs converted (:func:`benchmark_model`)
against the dense model, at several basis fractions, side by side with the cost model's
FLOP ratio, and the training memory of each. :func:`.speed_run.run` runs it after the layer
benchmark (:mod:`.layers`), whose rows give its time-based bounds.

Apart from :mod:`.layers`: this measures a model, that one conv shape at a time. It reads
from there only public names (the options, the columns both tables share, the eval-mode
switch of the inference forward, the layer rows' columns); nothing there calls in here.
"fwd" and "fwdbwd" are as :mod:`.layers` says.

Whole model: "all layers" means ``apply_basis(model, "all", fraction,
only_where_saves=True)``: a layer whose basis form would do more multiply-adds than the
dense conv (the stem at 1/2 and 3/4, the 1x1 shortcuts at 1/2 and 3/4) stays dense, as
Composer's Factorize does. Beside the FLOP ratio, two time-based figures use the layer
results of the same run: the dense step minus its 20 convs (each timed alone at its shape)
is what no basis layer reduces (BN, ReLU, additions, pooling, the loss); the *time bound*
adds back the dense conv times scaled by their FLOP ratios (the best a basis layer could
do), and *from layer times* adds back the measured basis layer times instead.

Whole model, memory (:mod:`basisconv.bench.memory`): the MiB a training forward keeps for
the backward (``*_saved_mib``, every device) and on CUDA the peak of a training step
(``*_peak_mib``; empty elsewhere), of the eager modules, beside the parameters.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from ..cost import model_cost
from ..layer_names import conv_layers
from ..models import build_model
from ..surgery import apply_basis
from ..timing import Runner, Timer
from . import profile_table
from .layers import Progress, SpeedOptions, in_eval, print_progress, ratio_columns, spreads
from .memory import training_memory_mib

#: Issue 3's target: the measured fwd+bwd ratio of the whole model <= 1.15 x its FLOP ratio.
TARGET_SLACK = 1.15


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
    ResNet-18 shape (from :func:`.layers.benchmark_layers`) also the time-based bounds. With
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
    forward_flops = in_eval(models, lambda: {k: model_cost(m, shape).forward_flops
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
    fwd = in_eval(models, lambda: timer.run(
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
            **ratio_columns(fwd, fwdbwd, fraction, (
                forward_flops[fraction] / forward_flops["dense"], theory_fb,
                split[fraction].total_flops / dense.total_flops)),
            "target_met": measured_fb <= TARGET_SLACK * theory_fb,
            **spreads(fwd_spread, fwdbwd_spread, fraction),
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
