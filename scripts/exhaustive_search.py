"""Exhaustive search over layer subsets, to check the fast sensitivity method:
``python scripts/exhaustive_search.py [overrides]`` (the same configs as ``scripts/train.py``).

Example (7 candidate layers, all 35 subsets of 3, a few minutes on 2 CPU cores)::

    python scripts/exhaustive_search.py profile=quick model=resnet8 sensitivity.search_subset_size=3

Reuses (or first computes) the cached sensitivity table of the same settings, then writes
``search.csv``, ``search.png`` and ``run.json`` to the Hydra output directory (by default
``outputs/<model>-search/<date>``: ``configs/search.yaml``).
"""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import basisconv.config  # noqa: F401  (registers the config schema)
from basisconv.analysis.search import draw_run
from basisconv.cli import exit_on_user_error
from basisconv.sweep_checks import check_sweep_jobs
from basisconv.config_checks import validate_search
from basisconv.records import read_record
from basisconv.search import exhaustive_search
from basisconv.unread import warn_preset_not_taken, warn_unread_search_selection

check_sweep_jobs(validate_search)


@hydra.main(version_base="1.3", config_path="../configs", config_name="search")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    validate_search(cfg)
    warn_preset_not_taken(cfg)
    warn_unread_search_selection(cfg)
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    s = exhaustive_search(cfg, output_dir)
    draw_run(read_record(output_dir / "run.json"), output_dir)
    print(f"fast choice {s['fast_choice']!r}: rank {s['fast_rank_by_accuracy']} of "
          f"{s['subsets']} by accuracy ({s['fast_accuracy']:.4f}; best {s['best_accuracy']:.4f} "
          f"{s['best_subset']!r}, median {s['median_accuracy']:.4f})")


if __name__ == "__main__":
    main()
