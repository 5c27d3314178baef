"""What ``scripts/reproduce.sh`` asks of Python before its runs start: its ``OVERRIDES``
checked against every run of the protocol (:data:`PROTOCOL_RUNS`), whether the runs will
find their dataset (and, where not, what they make without it: :func:`made_without_data`),
and the sensitivity keys of the protocol's tables
(:func:`protocol_keys`), with which the published records that are not the protocol's own
are set aside (:func:`basisconv.records.set_aside_stale_records`, in a process of its own
that loads neither Hydra nor torch), so that the script skips exactly the runs whose
records stand."""

from __future__ import annotations

import sys

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from .cifar10_location import dataset_missing
from .config_checks import validate, validate_estimate, validate_search
from .data import data_read
from .errors import BasisconvError, DatasetError, one_line
from .hydra_errors import hydra_error_line
from .override_checks import CONFIGS, config_groups_of
from .sensitivity_cache import load_cached
from .sensitivity_key import cache_key
from .sweep_checks import check_one_config_per_group, check_runs_where_started


#: The runs of ``scripts/reproduce.sh`` (the script in ``scripts/`` and the row's
#: overrides), which ``OVERRIDES`` must suit each; tests/test_reproduce.py holds this list
#: to the script's.
PROTOCOL_RUNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("sensitivity", ()),
    ("train", ("experiment=baseline",)),
    *(("train", ("experiment=basis_all", f"basis.size={size}"))
      for size in (0.5, 0.125, 0.25, 0.75)),
    ("exhaustive_search", ("model=resnet8", "sensitivity.search_subset_size=3")),
    *(("train", ("experiment=basis_selected", f"selection={policy}", "basis.size=0.5"))
      for policy in ("sensitivity_budget", "random", "first_k", "last_k")),
)


#: Each script's entry config (``configs/<name>.yaml``, its ``@hydra.main``'s
#: ``config_name``): composed here as the script composes it (the search's is
#: ``search.yaml``, the estimate's under a name of its own).
SCRIPT_CONFIGS = {"train": "train", "sensitivity": "sensitivity",
                  "exhaustive_search": "search"}


def check_overrides(profile: str, overrides: list[str]) -> str | None:
    """For ``scripts/reproduce.sh``: its ``OVERRIDES`` composed with each of the profile's
    runs (:data:`PROTOCOL_RUNS`) and validated, before any run starts; a bad one is one
    line and exit status 2 (else every run it breaks fails alone, each saying why in its
    own log only, and the folder keeps the overrides as the ones its records are made with).
    Rules that need the model built (a coefficient rank per layer) are checked by the run.

    Returns why the runs cannot find their dataset, or None: the script says it once before
    its first run starts (else every run fails with the same line), and not
    when every run is already recorded (tables and the speed benchmark need no dataset)."""
    missing = None
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        try:  # (a group given a list of its configs: their merge, silently, in every run)
            check_one_config_per_group(overrides, config_groups_of(loader))
        except BasisconvError as err:
            print(f"error: OVERRIDES: {one_line(err)}", file=sys.stderr)
            sys.exit(2)
        for script, row in PROTOCOL_RUNS:
            try:
                cfg = compose(SCRIPT_CONFIGS[script],
                              overrides=[f"profile={profile}", *row, *overrides],
                              return_hydra_config=True)
                check_runs_where_started(cfg.hydra.job.chdir)
                {"train": validate, "sensitivity": validate_estimate,
                 "exhaustive_search": validate_search}[script](cfg)
                if script != "train":  # its key reads sensitivity.source_checkpoint's bytes,
                    cache_key(cfg)      # as protocol_keys does next (unreadable: one line)
            except BasisconvError as err:
                message = one_line(err)
            except Exception as ex:  # noqa: BLE001 - composing: every error is an override's
                message = one_line(hydra_error_line(ex))
            else:
                missing = missing or dataset_missing(cfg.data)
                continue
            run = " ".join([f"scripts/{script}.py", *row])
            print(f"error: OVERRIDES: {message} (in the run {run})", file=sys.stderr)
            sys.exit(2)
    return missing


def made_without_data(profile: str, cache: str, overrides: list[str]) -> dict[str, bool]:
    """What of the protocol its runs make without reading the dataset, as their configs
    say (:func:`basisconv.records.runs_to_make`'s keywords, for the script's refusal of a
    start without it): ``resumes``, whether a training run complete in its folder is
    published as it is (``trainer.resume``; false trains it again), and
    ``estimate_cached``, whether the sensitivity estimate reuses the table kept for its key
    in ``cache`` (the script's ``sensitivity.cache_dir``), asked of the cache's own lookup
    (:func:`~basisconv.sensitivity_cache.load_cached`; a table it refuses, or
    ``sensitivity.recompute=true``, is estimated again). Neither where ``data.root`` names
    no folder here (``~nosuchuser/...``): every run names its folder, and fails on it."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        train = compose("train", overrides=[f"profile={profile}", *overrides])
        estimate = compose("sensitivity", overrides=[f"profile={profile}", *overrides])
    estimate.sensitivity.cache_dir = str(cache)
    try:
        data_read(estimate.data)  # (the folder its record names: a root that names none)
        cached = not estimate.sensitivity.recompute and load_cached(estimate) is not None
    except DatasetError:
        return {"resumes": False, "estimate_cached": False}
    except BasisconvError:  # a damaged table: refused, with its fix, by the estimate
        cached = False
    return {"resumes": bool(train.trainer.resume), "estimate_cached": cached}


def protocol_keys(profile: str, *overrides: str) -> dict[str, str]:
    """The sensitivity cache keys of the protocol's estimate and search (by script), as
    this code gives them; the selected runs' tables have the estimate's. The records made
    from another key are set aside (:func:`basisconv.records.set_aside_stale_records`)."""
    keys = {}
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        for script, row in PROTOCOL_RUNS:
            if script != "train" and script not in keys:
                config = compose(SCRIPT_CONFIGS[script], overrides=[f"profile={profile}",
                                                                    *row, *overrides])
                keys[script] = cache_key(config)
    return keys
