"""The tables and plots of our protocol from the run records: ``python scripts/analyze.py
[profile=quick] [source=local|wandb]``.

Reads every complete training run published in ``results/<profile>/runs/`` (or under
``runs_dir=... out_dir=...``, e.g. ``outputs/<profile>`` into a folder of its own; or a
wandb project's finished runs with ``source=wandb wandb.project=... wandb.entity=...``) and
writes to ``results/<profile>/`` (or ``out_dir``; the smoke profile reads and writes
``outputs/smoke/results/``, never ``results/``):
``comparison-<device>-<precision>.{md,tex,csv}`` (accuracy mean ± std over seeds,
parameters, FLOPs, forward/backward time per step, epoch time, speedups against the dense
baseline), ``speed-*.png`` (time and speedup against basis size, with
the FLOP line), ``accuracy-params-*.png``, ``curves-*.png``, the sensitivity plot and
chosen layers, the exhaustive-search summary, and ``index.json`` (provenance and runs).
"""

import hydra
from omegaconf import DictConfig

from basisconv.analysis.report import write_report
from basisconv.cli import exit_on_user_error
from basisconv.sweep_checks import check_sweep_jobs
from basisconv.errors import ConfigError
from basisconv.records import script_command
from basisconv.unread import warn_unread_source_overrides


def refuse_sweep(cfg: DictConfig) -> None:
    """A sweep (``-m``) of the analysis made ``multirun/<date>/<time>/`` (it writes nothing
    of Hydra's own otherwise), each job's tables named the sweep's command line as the one
    that made them, and a failed job was summed up as a training job's (its train.log, a
    folder whose finished jobs are skipped): refused before any job runs."""
    raise ConfigError("scripts/analyze.py takes no -m: run it once for each profile (or "
                      "runs_dir and out_dir) whose tables you want")


check_sweep_jobs(refuse_sweep)


@hydra.main(version_base="1.3", config_path="../configs/analysis", config_name="analyze")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    warn_unread_source_overrides(cfg)
    written = write_report(cfg, script_command(__file__))
    print(f"wrote {len(written)} files to {cfg.out_dir}/: " + ", ".join(p.name for p in written))


if __name__ == "__main__":
    main()
