"""Train one model as the config says: ``python scripts/train.py [overrides]``.

Examples::

    python scripts/train.py                                   # CIFAR ResNet-18, 30 epochs
    python scripts/train.py model=resnet20 trainer.epochs=5 data.train_subset=5000
"""

import hydra
from omegaconf import DictConfig

from basisconv.cli import exit_on_user_error
from basisconv.train import fit


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    fit(cfg)


if __name__ == "__main__":
    main()
