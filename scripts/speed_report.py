"""The speed records of some folders in one summary, CPU and GPU side by side:
``python scripts/speed_report.py [FOLDER ...] [--out results/speed-summary]``.

Reads every ``model-speed-*.json`` (``scripts/benchmark_layers.py``, whole ResNet-18 against
dense) and ``train-throughput-*.json`` (``scripts/benchmark_train.py``, the training step)
in the folders (default ``results`` and its ``gpu*`` folders, where ``make gpu-speed``
writes) and writes ``<out>.md``, ``<out>-model.csv``, ``<out>-training.csv``,
``<out>-memory.csv`` (the whole model's training memory, where measured), ``<out>.png``
and ``<out>.json`` (how the summary was made): see ``basisconv.analysis.speed_summary``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from basisconv.analysis.speed_summary import write_summary
from basisconv.cli import exit_on_user_error, refuse_unwritable, results_folder
from basisconv.records import script_command

# the repository's results/, where the benchmarks write, from whichever folder this is run
# (named relative to it, as the summary's note shows the folders)
RESULTS = Path(os.path.relpath(results_folder(__file__)))


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="*", type=Path,
                        default=[RESULTS, *sorted(p for p in RESULTS.glob("gpu*") if p.is_dir())])
    parser.add_argument("--out", type=Path, default=RESULTS / "speed-summary")
    args = parser.parse_args(argv)
    if args.out.is_dir():  # (else the summary went beside the folder, named after it)
        parser.error(f"--out {args.out} is a folder; --out names the summary's files, e.g. "
                     f"--out {args.out / 'speed-summary'}")
    refuse_unwritable(parser, f"--out {args.out}", args.out.absolute().parent)
    command = script_command(__file__, argv)
    written = write_summary(args.folders, args.out, command)
    print(f"wrote {', '.join(str(p) for p in written)}")


if __name__ == "__main__":
    main()
