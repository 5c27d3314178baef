"""Speed of basis convolutions against the dense convolutions they replace: every distinct
conv shape of CIFAR ResNet-18, and the whole ResNet-18 with all its convs converted, at
basis fractions 1/8, 1/4, 1/2 and 3/4, side by side with the cost model's FLOP ratio.

    python scripts/benchmark_layers.py                 # CPU, 2 threads, batch 128, fp32, channels_last
    python scripts/benchmark_layers.py --quick         # smoke run, few repeats (*-quick files)
    python scripts/benchmark_layers.py --parts model   # only the whole model
    python scripts/benchmark_layers.py --device cuda --amp bf16
    python scripts/benchmark_layers.py --redraw --out-dir results/gpu-h200  # plots only

How it times and what the columns mean: ``basisconv.bench.layers``,
``basisconv.bench.whole_model`` and ``basisconv.timing``. Writes to ``results/`` (names
carry device, precision and non-default options): ``layer-speed-<dev>-<prec>.csv``,
``model-speed-<dev>-<prec>.csv``, a JSON record with provenance for each, and
``basis-speedup-<dev>-<prec>.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from basisconv.analysis.figures import basis_speedups
from basisconv.bench.layers import SpeedOptions
from basisconv.bench.speed_run import measured_rows, run
from basisconv.bench.whole_model import TARGET_SLACK
from basisconv.cli import exit_on_user_error, refuse_unwritable, results_folder
from basisconv.errors import DatasetError
from basisconv.execution import AMP_DTYPES
from basisconv.kernels import COMBINE_MODES
from basisconv.records import script_command

RESULTS = results_folder(__file__)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    d = SpeedOptions()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default=d.device)
    parser.add_argument("--threads", type=int, default=d.threads, help="CPU threads (0: torch default)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--fractions", type=float, nargs="+", default=d.fractions)
    parser.add_argument("--parts", nargs="+", choices=["layers", "model"], default=d.parts)
    parser.add_argument("--layer-repeats", type=int, default=d.layer_repeats,
                        help="timed rounds per layer shape")
    parser.add_argument("--model-repeats", type=int, default=d.model_repeats,
                        help="timed rounds for the whole model")
    parser.add_argument("--warmup", type=int, default=d.warmup,
                        help="untimed rounds first (at least 1: the first call autotunes, "
                             "compiles or picks an auto form)")
    parser.add_argument("--amp", choices=list(AMP_DTYPES), default=d.amp)
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                        help="NCHW instead of channels_last (dense step 1.09x slower on this CPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile every module timed")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="time replays of each call captured as a CUDA graph (--device cuda): "
                             "the GPU's work, without the kernel launches an eager call pays")
    parser.add_argument("--combine", choices=list(COMBINE_MODES), default=d.combine,
                        help="fused: the Triton kernel, --device cuda only; auto: per shape "
                             "the fastest form measured on the device")
    parser.add_argument("--fuse-norm", action="store_true",
                        help="whole model: basis layers with their batch norm and ReLU as one "
                             "computation (basisconv.kernels.norm)")
    parser.add_argument("--no-allocator-tuning", dest="allocator_tuning", action="store_false",
                        help="keep glibc's default mmap behaviour (see tune_cpu_allocator)")
    parser.add_argument("--quick", action="store_true",
                        help="3 layer rounds, 2 model rounds, 1 warm-up; files get a -quick suffix")
    parser.add_argument("--profile", action="store_true",
                        help="also write model-profile-<tag>.txt: torch.profiler's operators "
                             "by (GPU) time for each whole-model training step")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--redraw", action="store_true",
                        help="measure nothing: draw the plots of the benchmarks in --out-dir "
                             "again from their tables (after a change of the plot)")
    args = parser.parse_args(argv)
    if args.redraw:
        return redraw(args.out_dir)
    options = SpeedOptions(**{k: v for k, v in vars(args).items() if k not in ("out_dir", "redraw")})
    if problem := options.invalid_flag():
        parser.error(problem)
    refuse_unwritable(parser, f"--out-dir {args.out_dir}", args.out_dir.absolute(), "folder")

    command = script_command(__file__, argv)
    result = run(options, args.out_dir, command)
    basis_speedups(result.layer_rows, result.model_rows, result.figure_path, result.title,
                   target_slack=TARGET_SLACK)
    print(f"written to {args.out_dir}/ (*-{result.tag}.*) in {result.seconds:.0f} s")


def redraw(folder: Path) -> None:
    if not folder.is_dir():
        raise DatasetError(f"--out-dir {folder} is not a folder; name one that holds "
                           f"layer-speed-*.json or model-speed-*.json records")
    measured = measured_rows(folder)
    if not measured:
        raise DatasetError(f"no layer-speed-*.json or model-speed-*.json records in {folder}; "
                           f"name the folder a benchmark wrote to")
    for found in measured.values():
        print(basis_speedups(found["layer_rows"], found["model_rows"], found["path"],
                             found["title"], target_slack=TARGET_SLACK))


if __name__ == "__main__":
    main()
