"""Train one model as the config says: ``python scripts/train.py [overrides]``.

Examples::

    python scripts/train.py                                   # CIFAR ResNet-18, 30 epochs
    python scripts/train.py model=resnet20 trainer.epochs=5 data.train_subset=5000
    python scripts/train.py hydra.run.dir=outputs/my-run      # run again there: resumes

The run record (``run.json``), ``checkpoint.pt``, ``train.log`` and the offline wandb
folder land in Hydra's output directory.
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import basisconv.config  # noqa: F401  (registers the config schema)
from basisconv.cli import exit_on_user_error
from basisconv.sweep_checks import check_sweep_jobs
from basisconv.unread import (unread_in_training, warn_keys_no_sweep_job_reads,
                              warn_preset_choice_overridden, warn_unread_basis_overrides,
                              warn_unread_logger_overrides)
from basisconv.config_checks import validate
from basisconv.train import fit

check_sweep_jobs(validate, warn_keys_no_sweep_job_reads, unread=unread_in_training,
                 reads_data=True)


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    # checked before the warnings, not by fit (the warnings only read cfg): a start
    # refused is its one line (a key added with +, +basis.foo=1, was warned of as unread
    # first), and a group removed (~selection) was the warnings' traceback
    validate(cfg)
    warn_unread_basis_overrides(cfg)
    warn_unread_logger_overrides(cfg)
    warn_preset_choice_overridden(cfg)
    fit(cfg, HydraConfig.get().runtime.output_dir, validated=True)


if __name__ == "__main__":
    main()
