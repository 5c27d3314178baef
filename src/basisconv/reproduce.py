"""What ``scripts/reproduce.sh`` asks of Python before its runs start: its ``OVERRIDES``
checked against every run of the protocol (:data:`PROTOCOL_RUNS`), whether the runs will
find their dataset, and the published records that are not the protocol's own set aside
(:func:`set_aside_stale_records`), so that the script skips exactly the runs whose
records stand."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from .cli import check_one_config_per_group, check_runs_where_started
from .config import validate, validate_estimate
from .data import find_cifar10
from .errors import BasisconvError, DatasetError, one_line
from .hydra_errors import CONFIGS, config_groups_of, hydra_error_line
from .records import (SEED_FILE, protocol_slot, read_record, set_aside,
                      set_aside_foreign_records)
from .sensitivity import cache_key


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
            config = "train" if script == "train" else "sensitivity"  # the scripts' configs
            try:
                cfg = compose(config, overrides=[f"profile={profile}", *row, *overrides],
                              return_hydra_config=True)
                check_runs_where_started(cfg.hydra.job.chdir)
                (validate if script == "train" else validate_estimate)(cfg)
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


def dataset_missing(data: Any) -> str | None:
    """Why a run with this ``data`` config would not find its dataset, or None (generated
    data, or a download allowed)."""
    if data.name != "cifar10" or data.download:
        return None
    try:
        find_cifar10(data.root)
    except DatasetError as err:
        return one_line(err)
    return None


def protocol_keys(profile: str, *overrides: str) -> dict[str, str]:
    """The sensitivity cache keys of the protocol's estimate and search (by script), as
    this code gives them; the selected runs' tables have the estimate's."""
    keys = {}
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        for script, row in PROTOCOL_RUNS:
            if script != "train" and script not in keys:
                config = compose("sensitivity", overrides=[f"profile={profile}", *row,
                                                           *overrides])
                keys[script] = cache_key(config)
    return keys


def table_key(record: dict[str, Any]) -> str | None:
    """The cache key of the sensitivity table a published record was made from: the
    estimate's own, the search's, or the one a training run chose its layers from (None
    for a run whose policy reads no table)."""
    if record.get("kind") == "sensitivity":
        return (record.get("sensitivity") or {}).get("key")
    if record.get("kind") == "exhaustive_search":
        return (record.get("search") or {}).get("sensitivity_key")
    return record.get("sensitivity_key")


def set_aside_stale_records(records_dir: str | os.PathLike, profile: str,
                            *overrides: str, outputs: str | os.PathLike | None = None
                            ) -> list[Path]:
    """:func:`~basisconv.records.set_aside_foreign_records`, then the records made from a
    sensitivity table of another key than this code gives the protocol's (a key that
    changed with the code between two sessions, a ``git pull``): the published estimate,
    the runs that chose from it and the search are set aside as ``<name>.rejected``, one
    line each, so the script estimates and publishes the table again and makes those runs
    from it. Else it skipped the estimate for its record's sake, the runs restored nothing
    for their key and chose from a table never published, and the sensitivity page showed
    another table than the one the runs chose from.

    ``outputs`` is the profile's run folders (``$OUT``, ``<row>/seed<k>/`` each): the
    folder of a training run set aside here is set aside too (``seed<k>.rejected``), else
    the script's new run found it complete (or resumed its checkpoint, with the layers it
    had chosen) and published the same record again, set aside again by every later
    invocation: the run was never made again (found in review)."""
    rejected = set_aside_foreign_records(records_dir, profile)
    root = Path(records_dir)
    if not root.is_dir():
        return rejected
    keys = protocol_keys(profile, *overrides)
    slots = [(root / "sensitivity.json", "sensitivity"),
             *((path, "exhaustive_search") for path in root.glob("exhaustive-search-*.json")),
             *((path, "sensitivity") for path in root.glob("*/seed*.json"))]
    for path, script in sorted(slots):
        try:
            record = read_record(path)
        except (OSError, ValueError):  # (none there, or set aside above)
            continue
        made_from = table_key(record)
        if made_from is not None and made_from != keys[script]:
            rejected.append(set_aside(path, f"it was made from the sensitivity table "
                                            f"{made_from}; this code's for the protocol is "
                                            f"{keys[script]}: it changed since"))
            rejected += set_aside_run_folder(path, outputs)
    rejected += set_aside_unpublished_runs(root, outputs, lambda run: (
        (made_from := table_key(run)) not in (None, keys["sensitivity"])
        and f"began from the sensitivity table {made_from}; this code's for the protocol "
            f"is {keys['sensitivity']}: it changed since"))
    return rejected + set_aside_runs_of_other_tables(root, outputs)


def set_aside_run_folder(record: Path, outputs: str | os.PathLike | None) -> list[Path]:
    """The run folder ``<outputs>/<row>/seed<k>`` of the published training record
    ``<row>/seed<k>.json`` just set aside, renamed ``seed<k>.rejected`` (``-2``, ... when
    taken) and said in one line, so that the script trains the run again rather than
    publishing that folder's record (or resuming its checkpoint) as it is; [] for another
    record or where there is no such folder."""
    if outputs is None or protocol_slot(record) is None or not SEED_FILE.fullmatch(
            record.name):  # (a row of the user's own: no run of the script's)
        return []
    folder = Path(outputs) / record.parent.name / record.stem
    if not folder.is_dir():
        return []
    aside, n = folder.with_name(f"{folder.name}.rejected"), 1
    while aside.exists():
        n += 1
        aside = folder.with_name(f"{folder.name}.rejected-{n}")
    try:
        os.replace(folder, aside)
    except OSError as err:
        raise SystemExit(f"{folder} holds the run whose record was set aside, and could not "
                         f"be set aside ({err.strerror or err}): remove it") from None
    print(f"{folder} holds that run: set aside as {aside.name}, the run is trained again",
          file=sys.stderr)
    return [aside]


def set_aside_runs_of_other_tables(root: Path, outputs: str | os.PathLike | None = None
                                   ) -> list[Path]:
    """The published runs that chose their layers from another table of the published
    estimate's key than the published one, set aside (``.rejected``, one line each) so the
    script makes them again from it: machines that ran the protocol at once each estimated
    the table (else after the merge one row mixes two tables' layer sets, and the
    sensitivity page marks only one). Runs whose records name no table's checksum
    (made before runs recorded it) are kept."""
    try:
        published = read_record(root / "sensitivity.json").get("cache") or {}
    except (OSError, ValueError):
        return []
    checksum = published.get("table_sha256")

    def other_table(record: dict) -> str | None:  # which table it chose from, if another
        chose_from = record.get("sensitivity_table")
        if (checksum and chose_from and chose_from != checksum
                and record.get("sensitivity_key") == published.get("key")):
            return (f"another sensitivity table ({chose_from[:12]}) than the published one "
                    f"({checksum[:12]})")
        return None

    rejected = []
    for path in sorted(root.glob("*/seed*.json")):
        try:
            table = other_table(read_record(path))
        except (OSError, ValueError):
            continue
        if table:
            rejected.append(set_aside(path, f"it chose its layers from {table}, estimated "
                                            f"elsewhere"))
            rejected += set_aside_run_folder(path, outputs)
    return rejected + set_aside_unpublished_runs(
        root, outputs, lambda run: (table := other_table(run)) and f"began from {table}")


def set_aside_unpublished_runs(root: Path, outputs: str | os.PathLike | None,
                               stale: Callable[[dict], str | bool | None]) -> list[Path]:
    """The folders under ``outputs`` of the protocol's training runs not yet published
    (cut off, or stopped before publishing) whose record ``stale`` gives a reason for,
    set aside with that reason said: resumed, such a run kept the layers it had chosen
    from an older or another machine's table, and only the next invocation set its
    published record aside (found in review)."""
    rejected = []
    for run in sorted(Path(outputs).glob("*/seed*/run.json")) if outputs else ():
        record = root / run.parent.parent.name / f"{run.parent.name}.json"
        if protocol_slot(record) is None:  # (a row of the user's own, a folder set aside)
            continue
        try:
            why = None if record.exists() else stale(read_record(run))
        except (OSError, ValueError):
            continue
        if why:
            print(f"{run.parent} {why}", file=sys.stderr)
            rejected += set_aside_run_folder(record, outputs)
    return rejected
