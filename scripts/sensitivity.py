"""Per-layer sensitivity to basis convolutions, and the layers a policy picks from it:
``python scripts/sensitivity.py [overrides]`` (the same configs as ``scripts/train.py``).

Examples::

    python scripts/sensitivity.py profile=quick basis.size=0.25
    python scripts/sensitivity.py profile=quick selection=sensitivity_threshold selection.threshold=0.01
    python scripts/sensitivity.py sensitivity.source_checkpoint=outputs/<baseline run>/checkpoint.pt

The table is cached (``sensitivity.cache_dir``) under a key of everything that shapes it,
and reused by ``scripts/train.py selection=sensitivity_budget`` with the same settings.
Writes ``sensitivity.csv``, ``sensitivity.png``, ``chosen.md`` and ``run.json`` to the
Hydra output directory.
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import basisconv.config  # noqa: F401  (registers the config schema)
from basisconv.analysis.sensitivity import draw_run
from basisconv.cli import exit_on_user_error
from basisconv.sweep_checks import check_sweep_jobs
from basisconv.config_checks import validate_estimate
from basisconv.sensitivity import run_sensitivity
from basisconv.unread import warn_preset_not_taken

check_sweep_jobs(validate_estimate)


@hydra.main(version_base="1.3", config_path="../configs", config_name="sensitivity")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    validate_estimate(cfg)
    warn_preset_not_taken(cfg)
    output_dir = HydraConfig.get().runtime.output_dir
    record = run_sensitivity(cfg, output_dir)
    draw_run(record, output_dir)
    summary = record["sensitivity"]
    print(f"{summary['policy']}: {len(summary['chosen'])} layers: {', '.join(summary['chosen'])}")


if __name__ == "__main__":
    main()
