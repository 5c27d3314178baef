"""Registers, spills and shared memory of the fused kernel's autotuning tiles on Hopper
(sm_90), from Triton's compiler, without a GPU:
``python scripts/kernel_resources.py [--dtypes bf16 fp32] [--widths 16 32 64 128 256]
[--kernels combination]`` (the folded norm's kernels instead: combination, moments and
their backward, fold).

Writes ``results/kernel-resources-sm90.csv`` and a JSON record beside it; see
``basisconv.bench.kernel_resources`` for why and how. A kernel change can be judged here
first (a tile that spills or overflows shared memory is slow or refused on the GPU);
its speed still needs one (``make gpu-speed``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from basisconv.bench import flag_below_minimum
from basisconv.bench.kernel_resources import ARCH, measure, write_resources
from basisconv.cli import exit_on_user_error, refuse_unwritable, results_folder
from basisconv.kernels import triton_conv
from basisconv.records import script_command

RESULTS = results_folder(__file__)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtypes", nargs="+", choices=["bf16", "fp16", "fp32"],
                        default=["bf16", "fp32"])
    parser.add_argument("--widths", nargs="+", type=int, default=[16, 32, 64, 128, 256],
                        help="basis tile widths (BLOCK_N: m rounded up to a power of 2, >= 16)")
    parser.add_argument("--kernel-size", type=int, default=3)
    parser.add_argument("--kernels", choices=["conv", "combination"], default="conv",
                        help="the fused basis conv (default), or the folded norm's "
                             "kernels: the combination's, forward and backward, the "
                             "batch moments', forward and backward, and the fold's, "
                             "forward and backward")
    parser.add_argument("--out", type=Path,
                        help=f"the table (default results/kernel-resources-sm{ARCH}.csv, "
                             f"-combination.csv for --kernels combination)")
    args = parser.parse_args(argv)
    if args.out is None:
        suffix = "-combination" if args.kernels == "combination" else ""
        args.out = RESULTS / f"kernel-resources-sm{ARCH}{suffix}.csv"
    if triton_conv.triton is None:
        parser.error("needs triton, which does not import here (make env installs it)")
    if bad := [w for w in args.widths
               if w < 16 or w > triton_conv.MAX_BASIS or w & (w - 1)]:
        parser.error(f"--widths must be powers of 2 from 16 to {triton_conv.MAX_BASIS}, got {bad}")
    # Triton compiles a kernel of 0 or -1 taps without complaint: a table of nothing
    if below := flag_below_minimum((("--kernel-size", args.kernel_size, 1, "a k x k filter"),)):
        parser.error(below)
    # checked before the compilations (a minute or more), which a failed write would lose
    if args.out.suffix != ".csv" or args.out.is_dir():  # its record goes beside, as .json
        parser.error(f"--out names the table's .csv file (its record is written beside it, "
                     f"as .json), got {args.out}")
    refuse_unwritable(parser, f"--out {args.out}", args.out.absolute().parent)
    table, seconds = measure(args.dtypes, args.widths, args.kernel_size, args.kernels)
    print(table.to_string(index=False))
    command = script_command(__file__, argv)
    write_resources(table, args.out, vars(args) | {"out": str(args.out)}, command, seconds)
    print(f"written to {args.out} and its .json")


if __name__ == "__main__":
    main()
