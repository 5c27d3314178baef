"""The records of ``scripts/reproduce.sh``'s protocol: which rows and records it
publishes into ``results/<profile>/runs/``, which are missing, and why a file in a run's
place cannot be used as that run's record. What the script does about such files at a
start (sets them aside, with their run folders, and counts the runs left to make) is
:mod:`.protocol_checks`'; the log of its invocations (``sessions/``) is :mod:`.sessions`;
the files a git merge left unresolved, :mod:`.unmerged`."""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path
from typing import Any

from .runs import KIND_WORDS, RECORD
from .schema import TABLE_FIELDS, missing_fields


#: What ``scripts/reproduce.sh`` publishes into ``results/<profile>/runs/``: a folder per
#: row of training runs (``<row>/seed<k>.json``) and the records of the protocol's other
#: steps (tests/test_reproduce.py holds these to the script's).
PROTOCOL_ROWS = ("baseline", "basis-all-0.5", "basis-all-0.125", "basis-all-0.25",
                 "basis-all-0.75", "selected-sensitivity_budget-0.5", "selected-random-0.5",
                 "selected-first_k-0.5", "selected-last_k-0.5")
PROTOCOL_RECORDS = ("sensitivity.json", "exhaustive-search-resnet8.json")
#: A row's published record of one seed, ``seed<k>.json``.
SEED_FILE = re.compile(r"seed(\d+)\.json")


def missing_protocol_runs(runs_dir: str | os.PathLike) -> list[str]:
    """The protocol's runs a folder of published records has no record of (a protocol cut
    off before them), each row for every seed that some row has, as ``<row> (seed <k>)``,
    then the other steps' records; [] for a folder that holds no published protocol record
    (run folders, or records of other experiments), or that holds rows of other names
    (``<row>/seed<k>.json``, which ``scripts/reproduce.sh`` never publishes): another
    experiment's records, gathered beside a dense row named ``baseline``."""
    root = Path(runs_dir)
    if root.is_dir() and any(
            folder.is_dir() and folder.name not in PROTOCOL_ROWS
            and any(SEED_FILE.fullmatch(path.name) for path in folder.glob("seed*.json"))
            for folder in root.iterdir()):
        return []
    seeds = sorted({int(m[1]) for row in PROTOCOL_ROWS for path in (root / row).glob("seed*.json")
                    if (m := SEED_FILE.fullmatch(path.name))})
    steps = [name for name in PROTOCOL_RECORDS if (root / name).is_file()]
    if not seeds and not steps:
        return []
    missing = [f"{row} (seed {seed})" if seeds else row for row in PROTOCOL_ROWS
               for seed in (seeds or [None]) if not (root / row / f"seed{seed}.json").is_file()]
    return missing + [name for name in PROTOCOL_RECORDS if name not in steps]


def protocol_slot(path: str | os.PathLike) -> str | None:
    """Which place of the protocol's published records ``path`` is (``<row>/seed<k>.json``
    of a row of :data:`PROTOCOL_ROWS`, or one of :data:`PROTOCOL_RECORDS`), or None."""
    path = Path(path)
    if path.parent.name in PROTOCOL_ROWS and SEED_FILE.fullmatch(path.name):
        return f"{path.parent.name}/{path.name}"
    return path.name if path.name in PROTOCOL_RECORDS else None


def misplaced(record: dict[str, Any], path: str | os.PathLike) -> str | None:
    """Why a published ``record`` does not belong at ``path``, or None: it was published to
    another of the protocol's places (a copy of another row's record), or a
    ``seed<k>.json`` holds another seed's run. A record published under a name of the
    user's own, or gathered into a folder of another name, is where it may be."""
    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    publish = config.get("publish")
    theirs, mine = (protocol_slot(publish) if publish else None), protocol_slot(path)
    if theirs and mine and theirs != mine:
        return f"it was published as {theirs}, not {mine}"
    seed = SEED_FILE.fullmatch(Path(path).name)
    if seed and config.get("seed") is not None and config.get("seed") != int(seed[1]):
        return f"it holds seed {config.get('seed')}'s run"
    return None


def search_table_found(record: dict[str, Any], folder: Path) -> bool:
    """Whether an exhaustive search's subsets can be read: in its record, or in the
    ``search.csv`` beside an older one (before ``04946d5``; a published copy of one has
    none), whole (:func:`_whole_search_csv`); true of every other kind of record."""
    subsets = (record.get("search") or {}).get("subsets")
    return (record.get("kind") != "exhaustive_search" or "table" in record
            or _whole_search_csv(folder / "search.csv", subsets))


def _whole_search_csv(path: Path, subsets: Any) -> bool:
    """Whether an older search's ``search.csv`` at ``path`` holds its whole table: the
    columns the analysis reads, one complete row per subset (``subsets``, the record's
    count: that search wrote them all) and the last line ended. Its record holds no sha256
    of it, and one cut off (a copy interrupted) ended the analysis in a trace from pandas,
    or drew the search's page from the rows left (found in review)."""
    try:
        text = path.read_text()
        rows = list(csv.DictReader(io.StringIO(text)))
    except (OSError, ValueError, csv.Error):  # none, a folder, not text, not a CSV
        return False
    columns = TABLE_FIELDS["exhaustive_search"]
    return (text.endswith("\n") and rows != []
            and (not isinstance(subsets, int) or len(rows) == subsets)  # (a record without it)
            and all(row.get(column) not in (None, "") for row in rows for column in columns))


def unusable(record: dict[str, Any], path: str | os.PathLike) -> str | None:
    """Why the analysis cannot use ``record``, read from ``path``, or None: a field it
    reads is missing (:func:`missing_fields`), a published copy is in another run's place
    (:func:`misplaced`), or a search's table is not found. One rule for the analysis,
    which leaves such a record out, and for ``scripts/reproduce.sh``, which must then not
    skip its run (:func:`.protocol_checks.set_aside_foreign_records`)."""
    path = Path(path)
    missing = missing_fields(record)
    if missing:
        kind = record.get("kind")
        return f"the record of {KIND_WORDS.get(kind, repr(kind))} without {', '.join(missing)}"
    problem = misplaced(record, path) if path.name != RECORD else None
    if problem is not None:  # a copy of another row's or seed's record
        return problem
    if not search_table_found(record, path.parent):
        return ("an exhaustive_search record without its table (no table field and no "
                "whole search.csv beside it)")
    return None

