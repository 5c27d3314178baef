"""The records of ``scripts/reproduce.sh``'s protocol: which rows and records it
publishes into ``results/<profile>/runs/``, which are missing, which file in a run's place
is not its record, and the log of its invocations (``sessions.json``)."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from ..errors import one_line
from .files import write_json_atomic
from .origin import provenance
from .runs import RECORD, missing_fields, read_record

log = logging.getLogger(__name__)


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
    (run folders, or records of other experiments)."""
    root = Path(runs_dir)
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
    none); true of every other kind of record."""
    return (record.get("kind") != "exhaustive_search" or "table" in record
            or (folder / "search.csv").is_file())


def unusable(record: dict[str, Any], path: str | os.PathLike) -> str | None:
    """Why the analysis cannot use ``record``, read from ``path``, or None: a field it
    reads is missing (:func:`missing_fields`), a published copy is in another run's place
    (:func:`misplaced`), or a search's table is not found. One rule for the analysis,
    which leaves such a record out, and for ``scripts/reproduce.sh``, which must then not
    skip its run (:func:`set_aside_foreign_records`)."""
    path = Path(path)
    missing = missing_fields(record)
    if missing:
        return f"a {record.get('kind')} record without {', '.join(missing)}"
    problem = misplaced(record, path) if path.name != RECORD else None
    if problem is not None:  # a copy of another row's or seed's record
        return problem
    if not search_table_found(record, path.parent):
        return ("an exhaustive_search record without its table (no table field and no "
                "search.csv beside it)")
    return None


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
    root = Path(records_dir)
    slots = [*root.glob("*.json"), *root.glob("*/seed*.json")] if root.is_dir() else []
    rejected = []
    for path in sorted(slots):
        if protocol_slot(path) is None:  # a file of the user's own: no run stands there
            continue
        try:
            record = read_record(path)
            made_by = made_by_profile(record)
            problem = (f"its status is {record.get('status')!r}"
                       if record.get("status") != "complete" else unusable(record, path)
                       or (f"it was made by profile {made_by}, not {profile}"
                           if profile and made_by not in (None, profile) else None))
        except (OSError, ValueError) as err:
            problem = f"unreadable: {one_line(err)[:200]}"
        if problem is not None:
            rejected.append(set_aside(path, problem))
    return rejected


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


#: Where ``scripts/reproduce.sh`` logs its invocations, in the profile's results folder.
SESSIONS = "sessions.json"


def log_session(results_dir: str | os.PathLike, records_dir: str | os.PathLike, profile: str,
                started: float | str, exit_code: int | str, jobs: int | str,
                overrides: str = "") -> Path:
    """Add one invocation of ``scripts/reproduce.sh`` to ``<results_dir>/sessions.json``:
    when it ran, for how long, how it ended, on what machine, and which records it
    published. A protocol cut off when a GPU slot ends goes on in another session,
    elsewhere, so its wall-clock is the sum over sessions; the analysis sums them
    (``index.json``). A log that no longer reads is set aside (``.unreadable``), not lost."""
    started, now = float(started), _dt.datetime.now(_dt.timezone.utc)
    begun = _dt.datetime.fromtimestamp(started, _dt.timezone.utc)
    records = Path(records_dir)
    published = sorted(str(p.relative_to(records)) for p in records.rglob("*.json")
                       if p.stat().st_mtime >= started) if records.is_dir() else []
    path = Path(results_dir) / SESSIONS
    try:
        sessions = read_sessions(path)
    except ValueError:
        path.replace(path.with_name(SESSIONS + ".unreadable"))
        sessions = []
    sessions.append({
        "started": begun.isoformat(timespec="seconds"),
        "ended": now.isoformat(timespec="seconds"),
        "seconds": round((now - begun).total_seconds(), 1), "exit_code": int(exit_code),
        "profile": profile, "jobs": int(jobs), "overrides": overrides, "published": published,
        "provenance": provenance(f"scripts/reproduce.sh {profile}")})
    return write_json_atomic(path, sessions)


def read_sessions(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The sessions :func:`log_session` wrote (none when the file is not there); a
    ValueError when it is not such a log."""
    path = Path(path)
    if not path.exists():
        return []
    sessions = json.loads(path.read_text())
    if not isinstance(sessions, list) or not all(isinstance(s, dict) for s in sessions):
        raise ValueError(f"{path} is not a list of sessions")
    return sessions
