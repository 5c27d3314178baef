"""Throughput of the real training loop, and the share of each step spent producing the
batch (slicing, random crop, flip, normalization).

    python scripts/benchmark_train.py                      # ResNet-18, batch 128, 2 threads
    python scripts/benchmark_train.py --amp bf16 --steps 30
    python scripts/benchmark_train.py --device cuda --amp bf16 --steps 300 \
        --basis-size 0.25 --combine fused --compile-mode reduce-overhead

It runs ``basisconv.loop.train_one_epoch`` itself on a fixed number of batches, with the
batch source wrapped by a timer, so what is measured is exactly what training does
(``basisconv.bench.train``), with the training run's optimizer and compile step. Writes
``results/train-throughput-<device>-<precision>[-<options>].json`` with provenance.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from basisconv.bench.throughput_options import ThroughputOptions
from basisconv.bench.train import record_folder, run
from basisconv.cli import exit_on_user_error, refuse_unwritable, results_folder
from basisconv.config import COMPILE_MODES
from basisconv.execution import AMP_DTYPES
from basisconv.kernels import COMBINE_MODES
from basisconv.records import precision_name, script_command, threads_name

RESULTS = results_folder(__file__)


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    d = ThroughputOptions()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=d.model)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--steps", type=int, default=d.steps, help="timed steps")
    parser.add_argument("--warmup", type=int, default=d.warmup, help="untimed steps first")
    parser.add_argument("--amp", choices=list(AMP_DTYPES), default=d.amp)
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--threads", type=int, default=d.threads, help="CPU threads (0: torch default)")
    parser.add_argument("--device", default=d.device)
    parser.add_argument("--basis-size", type=float, default=None,
                        help="every conv where it saves compute in basis form, this size")
    parser.add_argument("--layers", default=d.layers,
                        help="with --basis-size, only these convs (comma-separated names and "
                             "patterns, e.g. 'layer3.*,layer4.*', or the basis_layers of a "
                             "run's record); default all")
    parser.add_argument("--combine", choices=list(COMBINE_MODES), default=d.combine,
                        help="the basis layers' form")
    parser.add_argument("--fuse-norm", action="store_true",
                        help="basis layers with their batch norm and ReLU as one computation")
    parser.add_argument("--frobenius-decay", action="store_true",
                        help="add the loss's Frobenius decay correction, as training with "
                             "basis.frobenius_decay=true does (weight decay 5e-4)")
    parser.add_argument("--compile-mode", choices=list(COMPILE_MODES), default=None,
                        help="torch.compile the model in this mode (reduce-overhead: CUDA "
                             "graphs); default eager")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="replay each step as CUDA graphs (trainer.cuda_graphs; CUDA only)")
    parser.add_argument("--profile", action="store_true",
                        help="then profile one more epoch of --steps steps (torch.profiler; "
                             "graphed: its replays) into <result>-profile.txt")
    parser.add_argument("--out", type=Path, default=None,
                        help="the record: a .json file, or a folder that gets the default "
                             "file name (default results/)")
    args = parser.parse_args(argv)
    options = ThroughputOptions(**{k: v for k, v in vars(args).items() if k != "out"})
    if problem := options.invalid_flag():
        parser.error(problem)
    # checked before the steps are measured, which a failed write at the end would lose
    folder = record_folder(RESULTS if args.out is None else args.out)
    if args.out is not None and args.out.suffix == ".json" and args.out.is_dir():
        parser.error(f"--out {args.out} is a folder, not a .json file; give a file name, or "
                     f"a folder without the .json suffix")
    refuse_unwritable(parser, f"--out {args.out or RESULTS}", folder)

    command = script_command(__file__, argv)
    result, out = run(options, args.out, results_dir=RESULTS, command=command)
    print(f"{args.model} batch {args.batch_size} on {result['device']} "
          f"({threads_name(result['threads'])}, {precision_name(args.amp)}, "
          f"channels_last={args.channels_last}):")
    print(f"  {result['images_per_second']:.1f} images/s, {result['seconds_per_step']:.4f} s/step, "
          f"{result['epoch_seconds']:.1f} s per CIFAR-10 epoch (warm-up {result['warmup_seconds']:.1f} s)")
    print(f"  data loading + augmentation: {result['data_share']:.2%} of the step "
          f"({result['data_seconds_per_step_median'] * 1e3:.1f} ms median per batch)")
    if "checkpoint_error" in result:
        print(f"  {result['checkpoint_error']}")
    else:
        print(f"  a checkpoint (model and optimizer, {result['checkpoint_megabytes']:.1f} MB): "
              f"{result['checkpoint_seconds_median']:.2f} s to write (median of "
              f"{result['checkpoint_saves']})")
    print(f"  written to {out}")
    if "profile_file" in result:
        print(f"  where the time goes (torch.profiler): {out.with_name(result['profile_file'])}")
    return result


if __name__ == "__main__":
    main()
