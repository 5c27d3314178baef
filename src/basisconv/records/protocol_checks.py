"""What ``scripts/reproduce.sh`` does with the protocol's published records before it
trains (:mod:`.protocol` says what they are): a file in a run's place that is not that
run's finished record, or was made from a stale sensitivity table or another machine's
table, is set aside (``<name>.rejected``, one line each) with its run folder, so the run
is made again; and, before any of that, which runs a start would make
(:func:`runs_to_make`), so that a start that cannot make them is refused having changed
nothing. Apart from :mod:`.protocol` because it renames files and speaks to the user,
where :mod:`.protocol` only reads; it imports that module, which never imports it back."""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Callable

from ..errors import one_line
from .protocol import PROTOCOL_RECORDS, PROTOCOL_ROWS, SEED_FILE, protocol_slot, unusable
from .runs import RECORD, read_record


def made_by_profile(record: dict[str, Any]) -> str | None:
    """The protocol profile (``paper``, ``quick``, ``smoke``) a record's command named, or
    None (a command without one, or none recorded). A record does not hold its profile
    otherwise (a profile only sets other keys), and ``scripts/reproduce.sh`` always names
    it."""
    command = (record.get("provenance") or {}).get("command")
    try:
        words = shlex.split(command) if isinstance(command, str) else []
    except ValueError:  # unbalanced quotes: not a command this code wrote
        return None
    profiles = [m[1] for word in words if (m := re.fullmatch(r"\+{0,2}profile=(\S+)", word))]
    return profiles[-1] if profiles and profiles[-1] != "null" else None


def set_aside_foreign_records(records_dir: str | os.PathLike,
                              profile: str | None = None) -> list[Path]:
    """For ``scripts/reproduce.sh``, before it skips the runs whose records are published:
    a file in a run's place (:func:`protocol_slot`) that is not that run's finished record
    (unreadable or cut off, not complete, lacking what the analysis reads, another row's
    or seed's, or made by another ``profile``'s protocol) is renamed ``<name>.rejected``
    and said, one line each, so that the run is trained again; else the protocol would
    skip it for good and the tables would leave its row out, or show another protocol's
    run in it. Returns the files set aside."""
    rejected = []
    for path in published_slots(records_dir):
        if (problem := foreign_problem(path, profile)) is not None:
            rejected.append(set_aside(path, problem))
    return rejected


def foreign_problem(path: Path, profile: str | None) -> str | None:
    """Why the file in a run's place ``path`` is not that run's finished record (see
    :func:`set_aside_foreign_records`), or None."""
    try:
        record = read_record(path)
        made_by = made_by_profile(record)
        return (f"its status is {record.get('status')!r}"
                if record.get("status") != "complete" else unusable(record, path)
                or (f"it was made by profile {made_by}, not {profile}"
                    if profile and made_by not in (None, profile) else None))
    except (OSError, ValueError) as err:
        return f"unreadable: {one_line(err)[:200]}"


def published_slots(records_dir: str | os.PathLike) -> list[Path]:
    """The files of ``records_dir`` in the protocol's places (:func:`protocol_slot`), sorted:
    the only ones that stand for a run the script makes again if set aside. A file of the
    user's own (a row folder of another name, a search of another model) is no run's and
    is left alone by every check that sets records aside (found in review: the checks of
    sensitivity tables set such records aside, saying "the run is made again")."""
    root = Path(records_dir)
    found = [*root.glob("*.json"), *root.glob("*/seed*.json")] if root.is_dir() else []
    return sorted(path for path in found if protocol_slot(path) is not None)


def set_aside(path: Path, problem: str) -> Path:
    """Rename the file in a run's place that is not its record to ``<name>.rejected``, saying
    so in one line (``problem``: why), so that ``scripts/reproduce.sh`` makes the run again;
    a folder where it cannot be renamed ends the script with a line saying to remove it
    (else the run would be skipped for good)."""
    aside = path.with_name(path.name + ".rejected")
    try:
        os.replace(path, aside)
    except OSError as err:
        raise SystemExit(f"{path} is not the record of the run it stands for ({problem}), "
                         f"and could not be set aside ({err.strerror or err}): remove it")
    print(f"{path} is not the record of the run it stands for ({problem}); set aside as "
          f"{aside.name}, the run is made again", file=sys.stderr)
    return aside


def table_key(record: dict[str, Any]) -> str | None:
    """The cache key of the sensitivity table a published record was made from: the
    estimate's own, the search's, or the one a training run chose its layers from (None
    for a run whose policy reads no table)."""
    if record.get("kind") == "sensitivity":
        return (record.get("sensitivity") or {}).get("key")
    if record.get("kind") == "exhaustive_search":
        return (record.get("search") or {}).get("sensitivity_key")
    return record.get("sensitivity_key")


def set_aside_stale_records(records_dir: str | os.PathLike, profile: str, keys: dict[str, str],
                            outputs: str | os.PathLike | None = None) -> list[Path]:
    """:func:`set_aside_foreign_records`, then the records made from a sensitivity table of
    another key than ``keys`` (this code's for the protocol, by script:
    :func:`basisconv.reproduce.protocol_keys`; a key that changed with the code between two
    sessions, a ``git pull``): the published estimate, the runs that chose from it and the
    search are set aside as ``<name>.rejected``, one line each, so the script estimates and
    publishes the table again and makes those runs from it. Else it skipped the estimate
    for its record's sake, the runs restored nothing for their key and chose from a table
    never published, and the sensitivity page showed another table than the one the runs
    chose from.

    ``outputs`` is the profile's run folders (``$OUT``, ``<row>/seed<k>/`` each): the
    folder of a training run set aside here is set aside too (``seed<k>.rejected``), else
    the script's new run found it complete (or resumed its checkpoint, with the layers it
    had chosen) and published the same record again, set aside again by every later
    invocation: the run was never made again (found in review).

    Here in ``records``, with the keys given (``scripts/reproduce.sh``'s checks print
    them): the script's process that calls it then loads neither Hydra nor torch, which
    composing them again took seconds of every protocol start."""
    rejected = set_aside_foreign_records(records_dir, profile)
    root = Path(records_dir)
    if not root.is_dir():
        return rejected
    for path in published_slots(root):
        try:
            problem = other_key_problem(read_record(path), path, keys)
        except (OSError, ValueError):  # (none there, or set aside above)
            continue
        if problem is not None:
            rejected.append(set_aside(path, problem))
            rejected += set_aside_run_folder(path, outputs)
    rejected += set_aside_unpublished_runs(root, outputs, lambda run: (
        (made_from := table_key(run)) not in (None, keys["sensitivity"])
        and f"began from the sensitivity table {made_from}; this code's for the protocol "
            f"is {keys['sensitivity']}: it changed since"))
    return rejected + set_aside_runs_of_other_tables(root, outputs)


def other_key_problem(record: dict[str, Any], path: Path, keys: dict[str, str]) -> str | None:
    """Why the published ``record`` in ``path`` was made from a sensitivity table of
    another key than this code's for the protocol (``keys``, by script; see
    :func:`set_aside_stale_records`), or None."""
    script = "exhaustive_search" if path.name.startswith("exhaustive-search-") else "sensitivity"
    made_from = table_key(record)
    if made_from is None or made_from == keys[script]:
        return None
    return (f"it was made from the sensitivity table {made_from}; this code's for the "
            f"protocol is {keys[script]}: it changed since")


def runs_to_make(records_dir: str | os.PathLike, profile: str, keys: dict[str, str],
                 seeds: list[str], outputs: str | os.PathLike | None = None, *,
                 resumes: bool = True, estimate_cached: bool = False) -> list[str]:
    """The protocol's records (``<row>/seed<k>.json`` for ``seeds``, as the script names
    them, then the other steps') that ``scripts/reproduce.sh`` would make: missing, or in
    place but set aside by :func:`set_aside_stale_records` (by the same rules), but for a
    training run whose folder under ``outputs`` holds its complete record, which the script
    publishes as it is, reading no dataset (:func:`published_from_its_folder`), unless the
    runs do not resume (``resumes`` false: ``trainer.resume=false`` trains it again; found
    in review, such a run was not counted, and failed alone later for its dataset); and
    for the estimate when ``estimate_cached``: it reuses the table kept for its key,
    reading no dataset either (found in review: such a start was refused). The script's
    checks tell both from the runs' configs (:func:`basisconv.reproduce.made_without_data`).
    Nothing is renamed: the script refuses a start whose runs would not find their dataset
    before it changes anything (found in review: the stale records it had set aside, the
    failure marks it had removed and the overrides list it had rewritten stayed so)."""
    root = Path(records_dir)
    outputs = outputs if resumes else None  # (no run is published from its folder)
    other_table = other_table_problem(root)
    slots = [f"{row}/seed{seed}.json" for row in PROTOCOL_ROWS for seed in seeds]

    def stands(path: Path) -> bool:
        if not path.is_file() or foreign_problem(path, profile) is not None:
            return False
        record = read_record(path)
        return (other_key_problem(record, path, keys) is None
                and not (SEED_FILE.fullmatch(path.name) and other_table(record)))

    return [slot for slot in (*slots, *PROTOCOL_RECORDS) if not stands(root / slot)
            and not (estimate_cached and slot == "sensitivity.json")
            and not published_from_its_folder(root / slot, profile, keys, outputs, other_table)]


def published_from_its_folder(path: Path, profile: str, keys: dict[str, str],
                              outputs: str | os.PathLike | None,
                              other_table: Callable[[dict], str | None]) -> bool:
    """Whether the training run of the published record ``path`` (not in place, or set
    aside as foreign) is complete in its folder under ``outputs``, and kept there by
    :func:`set_aside_stale_records`: ``scripts/train.py`` then publishes its record without
    training, nor reading the dataset. Found in review: a start without the dataset was
    refused for such runs (finished runs in ``OUTPUTS`` whose records were not published)."""
    if outputs is None or not SEED_FILE.fullmatch(path.name):
        return False
    if path.is_file() and foreign_problem(path, profile) is None:
        return False  # in place, set aside for its table: its folder is set aside too
    try:
        run = read_record(Path(outputs) / path.parent.name / path.stem / RECORD)
    except (OSError, ValueError):
        return False
    return (run.get("status") == "complete" and other_key_problem(run, path, keys) is None
            and not other_table(run))


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
    other_table = other_table_problem(root)
    rejected = []
    for path in published_slots(root):
        if not SEED_FILE.fullmatch(path.name):  # (the estimate and the search chose none)
            continue
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


def other_table_problem(root: Path) -> Callable[[dict], str | None]:
    """Which other table than the published estimate's (``root/sensitivity.json``) a run's
    record chose its layers from, of that estimate's key (see
    :func:`set_aside_runs_of_other_tables`): a function of the record, None where it chose
    from the published table, or none can be told (no readable estimate, no checksum)."""
    try:
        published = read_record(root / "sensitivity.json").get("cache") or {}
    except (OSError, ValueError):
        published = {}
    checksum = published.get("table_sha256")

    def other_table(record: dict) -> str | None:
        chose_from = record.get("sensitivity_table")
        if (checksum and chose_from and chose_from != checksum
                and record.get("sensitivity_key") == published.get("key")):
            return (f"another sensitivity table ({chose_from[:12]}) than the published one "
                    f"({checksum[:12]})")
        return None
    return other_table


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
