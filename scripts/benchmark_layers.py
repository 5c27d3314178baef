"""Speed of basis convolutions against the dense convolutions they replace: every distinct
conv shape of CIFAR ResNet-18, and the whole ResNet-18 with all its convs converted, at
basis fractions 1/8, 1/4, 1/2 and 3/4, side by side with the cost model's FLOP ratio.

    python scripts/benchmark_layers.py                 # CPU, 2 threads, batch 128, fp32, channels_last
    python scripts/benchmark_layers.py --quick         # smoke run, few repeats (*-quick files)
    python scripts/benchmark_layers.py --parts model   # only the whole model
    python scripts/benchmark_layers.py --device cuda --amp bf16

Timing: dense and basis candidates are measured in interleaved rounds (the order reversed
every other round) after warm-up rounds, and medians are reported, so that load from other
processes hits both sides alike. "fwd" is an inference forward (``torch.no_grad``, BN in eval mode);
"fwdbwd" a training forward plus backward with fresh gradients, as in a training step
(the optimizer step is not timed). On CUDA every timed call is synchronized.

Whole model: "all layers" means ``apply_basis(model, "all", fraction,
only_where_saves=True)``: a layer whose basis form would do more multiply-adds than the
dense conv (the stem at 1/2 and 3/4, the 1x1 shortcuts at 1/2 and 3/4) stays dense, as
Composer's Factorize does. Beside the FLOP ratio, two time-based figures use the layer
results of the same run: the dense step minus its 20 convs (each timed alone at its shape)
is what no basis layer reduces (BN, ReLU, additions, pooling, the loss); the *time bound*
adds back the dense conv times scaled by their FLOP ratios (the best a basis layer could
do), and *from layer times* adds back the measured basis layer times instead.

Writes to ``results/`` (names carry device, precision and non-default options):
``layer-speed-<dev>-<prec>.csv``, ``model-speed-<dev>-<prec>.csv``, a JSON sidecar with
provenance for each, and ``basis-speedup-<dev>-<prec>.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from basisconv.analysis.plots import pyplot, save_figure
from basisconv.cost import basis_conv2d_cost, conv2d_cost, model_cost
from basisconv.layers import BasisConv2d, resolve_num_basis, saves_compute
from basisconv.models import build_model
from basisconv.records import provenance, write_json_atomic, write_text_atomic
from basisconv.surgery import apply_basis, conv_layers

RESULTS = Path(__file__).resolve().parents[1] / "results"
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
TARGET_SLACK = 1.15  # issue 3: measured fwd+bwd ratio <= 1.15 x the FLOP ratio


def tune_cpu_allocator() -> str:
    """Keep freed memory in the heap instead of returning it to the OS.

    glibc serves blocks above 32 MiB (a ResNet-18 activation at batch 128) with mmap and
    unmaps them on free, so every step pays page faults to get zeroed pages back, where
    reused heap memory costs none. That penalty
    falls on the output writes of every layer, and weighs more on the cheaper basis model.
    This is the glibc form of PyTorch's CPU tuning advice (use jemalloc/tcmalloc); it
    applies to both models alike (measured: dense step 2.27 -> 1.99 s, basis 1/4 1.05 -> 0.78 s;
    results/model-speed-cpu-fp32-defaultmalloc.csv against model-speed-cpu-fp32.csv)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        if libc.mallopt(m_mmap_max, 0) == 1 and libc.mallopt(m_trim_threshold, 2**30) == 1:
            return "glibc, mmap disabled, trim threshold 1 GiB (mallopt)"
    except OSError:
        pass
    return "default"


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


class Timer:
    """Interleaved timing of named candidates; medians in milliseconds."""

    def __init__(self, device: torch.device):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run(self, candidates: dict[str, Callable[[], None]], repeats: int, warmup: int) -> dict[str, float]:
        times: dict[str, list[float]] = {k: [] for k in candidates}
        names = list(candidates)
        for round_ in range(warmup + repeats):
            order = names if round_ % 2 == 0 else names[::-1]
            for name in order:
                self.sync()
                start = time.perf_counter()
                candidates[name]()
                self.sync()
                if round_ >= warmup:
                    times[name].append(time.perf_counter() - start)
        return {k: statistics.median(v) * 1e3 for k, v in times.items()}


class Runner:
    """How a module is run: device, memory format, autocast, optional torch.compile."""

    def __init__(self, args):
        self.device = torch.device(args.device)
        self.memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
        self.amp = AMP_DTYPES[args.amp]
        self.compile = args.compile

    def prepare(self, module: nn.Module) -> nn.Module:
        module = module.to(self.device, memory_format=self.memory_format)
        return torch.compile(module) if self.compile else module

    def input(self, *shape: int, requires_grad: bool = False) -> torch.Tensor:
        x = torch.randn(*shape, device=self.device).to(memory_format=self.memory_format)
        return x.requires_grad_(requires_grad)

    def autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def forward(self, module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
        def run():
            with torch.no_grad(), self.autocast():
                module(x)
        return run

    def training_step(self, module: nn.Module, x: torch.Tensor,
                      backward: Callable[[torch.Tensor], None]) -> Callable[[], None]:
        params = [p for p in module.parameters()]

        def run():
            for p in params:
                p.grad = None
            x.grad = None
            with self.autocast():
                out = module(x)
            backward(out)
        return run


def output_gradient(grad: torch.Tensor) -> Callable[[torch.Tensor], None]:
    """Backward from a fixed output gradient, cast once per output dtype (autocast), so
    that no extra elementwise op is timed with the layer."""
    cast: dict[torch.dtype, torch.Tensor] = {}

    def backward(out: torch.Tensor) -> None:
        if out.dtype not in cast:
            cast[out.dtype] = grad.to(out.dtype)
        out.backward(cast[out.dtype])
    return backward


def benchmark_layers(args, runner: Runner, timer: Timer) -> list[dict]:
    rows = []
    for shape, names in resnet18_shapes().items():
        torch.manual_seed(0)
        dense = nn.Conv2d(shape.in_channels, shape.out_channels, shape.kernel, shape.stride,
                          shape.padding, bias=False)
        stem = shape.in_channels == 3  # nobody needs the gradient w.r.t. the images
        x = runner.input(args.batch_size, shape.in_channels, shape.input_hw, shape.input_hw,
                         requires_grad=not stem)
        backward = output_gradient(runner.input(args.batch_size, shape.out_channels,
                                                shape.output_hw, shape.output_hw))
        modules = {"dense": runner.prepare(dense)}
        sizes = {}
        for fraction in args.fractions:
            m = resolve_num_basis(fraction, shape.out_channels)
            sizes[fraction] = m
            modules[fraction] = runner.prepare(BasisConv2d(
                shape.in_channels, shape.out_channels, shape.kernel, m, stride=shape.stride,
                padding=shape.padding, combine=args.combine))
        fwd = timer.run({k: runner.forward(mod, x) for k, mod in modules.items()},
                        args.layer_repeats, args.warmup)
        fwdbwd = timer.run({k: runner.training_step(mod, x, backward) for k, mod in modules.items()},
                           args.layer_repeats, args.warmup)
        costs = {"dense": conv2d_cost(shape.in_channels, shape.out_channels, shape.kernel,
                                      shape.output_hw, input_grad=not stem)}
        for fraction, m in sizes.items():
            for combine in ("stacked", "split"):
                costs[fraction, combine] = basis_conv2d_cost(
                    shape.in_channels, shape.out_channels, shape.kernel, m, shape.output_hw,
                    combine=combine, input_grad=not stem)
        for fraction, m in sizes.items():
            cost, paper = costs[fraction, args.combine], costs[fraction, "split"]
            theory_fb = cost.total_flops / costs["dense"].total_flops
            measured_fb = fwdbwd[fraction] / fwdbwd["dense"]
            rows.append({
                "shape": shape.label, "layers": " ".join(names),
                "in_channels": shape.in_channels, "out_channels": shape.out_channels,
                "kernel": shape.kernel, "stride": shape.stride, "input_hw": shape.input_hw,
                "output_hw": shape.output_hw, "batch": args.batch_size, "fraction": fraction,
                "num_basis": m, "combine": args.combine,
                "saves_compute": saves_compute((shape.in_channels, shape.out_channels, shape.kernel), m, args.combine),
                "theory_fwd_ratio": cost.forward_flops / costs["dense"].forward_flops,
                "theory_fwdbwd_ratio": theory_fb,
                "paper_fwdbwd_ratio": paper.total_flops / costs["dense"].total_flops,
                "dense_fwd_ms": fwd["dense"], "basis_fwd_ms": fwd[fraction],
                "dense_fwdbwd_ms": fwdbwd["dense"], "basis_fwdbwd_ms": fwdbwd[fraction],
                "fwd_ratio": fwd[fraction] / fwd["dense"], "fwdbwd_ratio": measured_fb,
                "fwdbwd_vs_theory": measured_fb / theory_fb,
            })
            r = rows[-1]
            print(f"  {shape.label:24s} m={m:<4d} fwd {r['fwd_ratio']:.3f} (theory "
                  f"{r['theory_fwd_ratio']:.3f})  fwd+bwd {measured_fb:.3f} (theory {theory_fb:.3f}, "
                  f"x{r['fwdbwd_vs_theory']:.2f})  dense {fwdbwd['dense']:.1f} ms", flush=True)
    return rows


def benchmark_model(args, runner: Runner, timer: Timer, layer_rows: list[dict]) -> list[dict]:
    torch.manual_seed(0)
    base = build_model("resnet18")
    labels = torch.randint(0, 10, (args.batch_size,), device=runner.device)
    models: dict = {"dense": base}
    paper = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # only_where_saves already leaves those layers dense
        for fraction in args.fractions:
            models[fraction] = apply_basis(base, "all", fraction, convert=False,
                                           only_where_saves=True, combine=args.combine)
            paper[fraction] = model_cost(apply_basis(base, "all", fraction, convert=False,
                                                     only_where_saves=True, combine="split"))
    costs = {k: model_cost(m) for k, m in models.items()}
    prepared = {k: runner.prepare(m) for k, m in models.items()}
    x = runner.input(args.batch_size, 3, 32, 32)

    def backward(out: torch.Tensor) -> None:
        F.cross_entropy(out.float(), labels).backward()

    fwdbwd = timer.run({k: runner.training_step(m, x, backward) for k, m in prepared.items()},
                       args.model_repeats, args.warmup)
    for m in models.values():
        m.eval()  # an inference forward: BN uses its running statistics
    fwd = timer.run({k: runner.forward(m, x) for k, m in prepared.items()},
                    args.model_repeats, args.warmup)
    for m in models.values():
        m.train()
    dense = costs["dense"]
    layer_ms = _layer_times(models, layer_rows)
    print(f"  dense: fwd {fwd['dense']:.0f} ms, fwd+bwd {fwdbwd['dense']:.0f} ms")
    rows = []
    for fraction in args.fractions:
        cost = costs[fraction]
        theory_fb = cost.total_flops / dense.total_flops
        measured_fb = fwdbwd[fraction] / fwdbwd["dense"]
        dense_layers = [n for n, m in conv_layers(models[fraction]).items() if isinstance(m, nn.Conv2d)]
        row = {
            "model": "resnet18", "batch": args.batch_size, "fraction": fraction,
            "combine": args.combine, "layers_dense": " ".join(dense_layers),
            "params": cost.params, "dense_params": dense.params,
            "forward_flops": cost.forward_flops, "backward_flops": cost.backward_flops,
            "theory_fwd_ratio": cost.forward_flops / dense.forward_flops,
            "theory_fwdbwd_ratio": theory_fb,
            "paper_fwdbwd_ratio": paper[fraction].total_flops / dense.total_flops,
            "dense_fwd_ms": fwd["dense"], "basis_fwd_ms": fwd[fraction],
            "dense_fwdbwd_ms": fwdbwd["dense"], "basis_fwdbwd_ms": fwdbwd[fraction],
            "fwd_ratio": fwd[fraction] / fwd["dense"], "fwdbwd_ratio": measured_fb,
            "fwdbwd_vs_theory": measured_fb / theory_fb,
            "target_met": measured_fb <= TARGET_SLACK * theory_fb,
        }
        if layer_ms:
            # The dense step minus its convs (timed alone, same shapes) is what basis layers
            # cannot reduce: BN, ReLU, additions, pooling, the loss.
            dense_conv = sum(ms["dense"] for ms in layer_ms.values())
            other = fwdbwd["dense"] - dense_conv
            at_theory = sum(ms["dense"] * ms["theory", fraction] for ms in layer_ms.values())
            from_layers = sum(ms[fraction] for ms in layer_ms.values())
            row.update({
                "dense_non_conv_share": other / fwdbwd["dense"],
                "time_bound_ratio": (other + at_theory) / fwdbwd["dense"],
                "layer_sum_ratio": (other + from_layers) / fwdbwd["dense"],
            })
            row["fwdbwd_vs_time_bound"] = measured_fb / row["time_bound_ratio"]
        rows.append(row)
        bound = (f"; time bound {row['time_bound_ratio']:.3f}, from layer times "
                 f"{row['layer_sum_ratio']:.3f}" if layer_ms else "")
        print(f"  fraction {fraction:<6} fwd {row['fwd_ratio']:.3f} (theory {row['theory_fwd_ratio']:.3f})  "
              f"fwd+bwd {measured_fb:.3f} (theory {theory_fb:.3f}, x{row['fwdbwd_vs_theory']:.2f}{bound})  "
              f"{fwdbwd[fraction]:.0f} ms", flush=True)
    return rows


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


def to_csv(rows: list[dict]) -> str:
    import pandas as pd

    return pd.DataFrame(rows).to_csv(index=False, float_format="%.6g")


def plot(layer_rows: list[dict], model_rows: list[dict], path: Path, title: str) -> None:
    plt = pyplot()
    panels = [rows for rows in (layer_rows, model_rows) if rows]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    axes = list(axes[0])
    if layer_rows:
        ax = axes.pop(0)
        shapes = list(dict.fromkeys(r["shape"] for r in layer_rows))
        cmap = plt.get_cmap("tab20")
        for i, shape in enumerate(shapes):
            rows = [r for r in layer_rows if r["shape"] == shape]
            ax.plot([r["fraction"] for r in rows], [1 / r["fwdbwd_ratio"] for r in rows], "o-",
                    color=cmap(i % 20), lw=1, ms=3, label=shape)
        # theoretical line of a 3x3 conv C -> C (the shape of 12 of ResNet-18's 20 convs)
        fractions = [i / 100 for i in range(5, 101)]
        theory = [1 / (basis_conv2d_cost(256, 256, 3, max(1, round(f * 256)), 8,
                                         combine=layer_rows[0]["combine"]).total_flops
                       / conv2d_cost(256, 256, 3, 8).total_flops) for f in fractions]
        ax.plot(fractions, theory, "k--", lw=1.5, label="theory, 3x3 C->C")
        ax.set_title("single layers, forward+backward")
        ax.legend(fontsize=6, ncol=2)
    if model_rows:
        ax = axes.pop(0)
        f = [r["fraction"] for r in model_rows]
        ax.plot(f, [1 / r["fwdbwd_ratio"] for r in model_rows], "o-", label="measured fwd+bwd")
        ax.plot(f, [1 / r["fwd_ratio"] for r in model_rows], "s-", label="measured fwd")
        ax.plot(f, [1 / r["theory_fwdbwd_ratio"] for r in model_rows], "k--", label="theory (FLOPs)")
        ax.plot(f, [1 / (TARGET_SLACK * r["theory_fwdbwd_ratio"]) for r in model_rows], "k:",
                label=f"target (theory / {TARGET_SLACK})")
        if "time_bound_ratio" in model_rows[0]:
            ax.plot(f, [1 / r["time_bound_ratio"] for r in model_rows], "^-", color="gray",
                    label="time bound (convs at theory, rest as dense)")
        ax.set_title("ResNet-18, all convs converted (where they save)")
        ax.legend(fontsize=8)
    for ax in fig.axes:
        ax.set_xlabel("basis fraction m / C_out")
        ax.set_ylabel("speedup over dense (x)")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (0: torch default)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.125, 0.25, 0.5, 0.75])
    parser.add_argument("--parts", nargs="+", choices=["layers", "model"], default=["layers", "model"])
    parser.add_argument("--layer-repeats", type=int, default=15, help="timed rounds per layer shape")
    parser.add_argument("--model-repeats", type=int, default=7, help="timed rounds for the whole model")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--amp", choices=list(AMP_DTYPES), default="none")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                        help="NCHW instead of channels_last (dense step 1.09x slower on this CPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile every module timed")
    parser.add_argument("--combine", choices=["stacked", "split"], default="stacked")
    parser.add_argument("--no-allocator-tuning", dest="allocator_tuning", action="store_false",
                        help="keep glibc's default mmap behaviour (see tune_cpu_allocator)")
    parser.add_argument("--quick", action="store_true",
                        help="3 layer rounds, 2 model rounds, 1 warm-up; files get a -quick suffix")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.layer_repeats, args.model_repeats, args.warmup = 3, 2, 1
    for f in args.fractions:
        if not 0 < f <= 1:
            parser.error(f"--fractions must be in (0, 1], got {f}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available to this torch")
    if args.threads:
        torch.set_num_threads(args.threads)
    allocator = tune_cpu_allocator() if args.allocator_tuning and args.device == "cpu" else "default"

    precision = "fp32" if args.amp == "none" else args.amp
    suffix = "".join([
        "" if args.channels_last else "-nchw",
        "-compile" if args.compile else "",
        "" if args.combine == "stacked" else f"-{args.combine}",
        "" if args.batch_size == 128 else f"-b{args.batch_size}",
        "" if args.allocator_tuning or args.device != "cpu" else "-defaultmalloc",
        "-quick" if args.quick else "",
    ])
    tag = f"{args.device}-{precision}{suffix}"
    command = " ".join(["python", "scripts/benchmark_layers.py", *(sys.argv[1:] if argv is None else argv)])
    runner, timer = Runner(args), Timer(torch.device(args.device))
    settings = {"batch_size": args.batch_size, "threads": torch.get_num_threads(),
                "device": args.device, "precision": precision, "channels_last": args.channels_last,
                "compile": args.compile, "combine": args.combine, "allocator": allocator,
                "layer_repeats": args.layer_repeats, "model_repeats": args.model_repeats,
                "warmup": args.warmup, "statistic": "median of interleaved rounds"}
    print(f"benchmark {tag}: {settings}", flush=True)
    started, load = time.time(), os.getloadavg()
    layer_rows, model_rows = [], []
    if "layers" in args.parts:
        print("single layers (ResNet-18 conv shapes):", flush=True)
        layer_rows = benchmark_layers(args, runner, timer)
    if "model" in args.parts:
        print("whole ResNet-18:", flush=True)
        model_rows = benchmark_model(args, runner, timer, layer_rows)
    record = {"settings": settings, "seconds": round(time.time() - started, 1),
              "load_average_before_after": [load, os.getloadavg()],
              "provenance": provenance(command)}
    out = args.out_dir
    if layer_rows:
        write_text_atomic(out / f"layer-speed-{tag}.csv", to_csv(layer_rows))
        write_json_atomic(out / f"layer-speed-{tag}.json", {**record, "file": f"layer-speed-{tag}.csv"})
    if model_rows:
        write_text_atomic(out / f"model-speed-{tag}.csv", to_csv(model_rows))
        write_json_atomic(out / f"model-speed-{tag}.json", {
            **record, "file": f"model-speed-{tag}.csv",
            "target": f"fwdbwd_ratio <= {TARGET_SLACK} x theory_fwdbwd_ratio at fractions 0.25 and 0.5",
            "summary": {str(r["fraction"]): {k: r.get(k) for k in (
                "fwdbwd_ratio", "theory_fwdbwd_ratio", "fwdbwd_vs_theory", "time_bound_ratio",
                "target_met")} for r in model_rows}})
    plot(layer_rows, model_rows, out / f"basis-speedup-{tag}.png",
         f"basis vs dense convolution, {tag}, batch {args.batch_size}, "
         f"{settings['threads']} threads, {provenance()['hardware']['cpu']}")
    print(f"written to {out}/ (*-{tag}.*) in {record['seconds']:.0f} s")


if __name__ == "__main__":
    main()
