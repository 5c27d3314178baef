"""The log of ``scripts/reproduce.sh``'s invocations in a profile's results folder
(``sessions/``, a file per session; an older one-list ``sessions.json`` read as well): each
written by :func:`log_session` as the script exits, read back by the analysis, which sums
them into the protocol's wall-clock (``index.json``). Apart from :mod:`.protocol`, which
judges the published records in ``runs/``: a session is no run's record, and neither module
calls the other."""

from __future__ import annotations

import datetime as _dt
import json
import os
import secrets
from pathlib import Path
from typing import Any

from .files import restore_hint, write_json_atomic
from .origin import provenance
from .schema import is_measurement


#: Where ``scripts/reproduce.sh`` logs its invocations, in the profile's results folder:
#: one file per session (one shared list conflicts in git whenever two machines' results
#: are merged, and each usual way of resolving it loses sessions).
SESSIONS = "sessions"
#: The one-list log of sessions logged before that, read as well.
OLDER_SESSIONS = "sessions.json"


def log_session(results_dir: str | os.PathLike, records_dir: str | os.PathLike, profile: str,
                started: float | str, exit_code: int | str, jobs: int | str,
                overrides: str = "") -> Path | None:
    """Log one invocation of ``scripts/reproduce.sh`` as a file of its own in
    ``<results_dir>/sessions/``: when it ran, for how long, how it ended, on what machine,
    and which records it published. A protocol cut off when a GPU slot ends goes on in
    another session, elsewhere, so its wall-clock is the sum over sessions; the analysis
    sums them (``index.json``). Sessions of two machines merge in git as two new files.
    None, and no file, for a session that ended well having written nothing (every record
    and benchmark was there): it only rebuilds the tables next, which is no protocol time
    (else it adds a session, and its seconds, to the committed ones). A log that cannot be
    written ends the script with one line (``SystemExit``) saying so."""
    started, now = float(started), _dt.datetime.now(_dt.timezone.utc)
    begun = _dt.datetime.fromtimestamp(started, _dt.timezone.utc)
    records = Path(records_dir)
    published = sorted(str(p.relative_to(records)) for p in records.rglob("*.json")
                       if _written_since(p, started)) if records.is_dir() else []
    if int(exit_code) == 0 and not published and not any(
            p.is_file() and _written_since(p, started) for p in Path(results_dir).rglob("*")):
        return None
    session = {
        "started": begun.isoformat(timespec="seconds"),
        "ended": now.isoformat(timespec="seconds"),
        "seconds": round((now - begun).total_seconds(), 1), "exit_code": int(exit_code),
        "profile": profile, "jobs": int(jobs), "overrides": overrides, "published": published,
        "provenance": provenance(f"scripts/reproduce.sh {profile}")}
    # the start to the second sorts the files; the random part keeps two machines' files apart
    name = f"{begun:%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}.json"
    folder = Path(results_dir) / SESSIONS
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return write_json_atomic(folder / name, session)
    except OSError as err:  # (a full disk, a read-only folder) the script's one line, as
        # protocol_checks.set_aside's: it showed a trace, then a line of the script's own
        raise SystemExit(f"this session could not be logged in {folder} "
                         f"({err.strerror or err}): its {session['seconds']} s are missing "
                         f"from the protocol's wall-clock; free space or make the folder "
                         f"writable before the next session") from None


def _written_since(path: Path, started: float) -> bool:
    """Whether ``path`` was last written at or after ``started`` (a time in seconds). A file
    system that keeps whole seconds (some network and FAT-family ones) stamps a file written
    at 12.9 s as 12 s: a time to the whole second is taken as that second's, else a session
    started at 12.5 s would miss what it wrote in its first second."""
    written = path.stat().st_mtime_ns
    if written % 1_000_000_000 == 0:
        return written // 1_000_000_000 >= int(started)
    return written >= started * 1e9


def has_session_log(results_dir: str | os.PathLike) -> bool:
    """Whether ``results_dir`` holds a log of ``scripts/reproduce.sh``'s sessions."""
    folder = Path(results_dir)
    return (folder / SESSIONS).is_dir() or (folder / OLDER_SESSIONS).is_file()


def read_sessions(results_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The sessions :func:`log_session` logged in ``results_dir`` (and those of an older
    ``sessions.json``), by start; none without a log. A ValueError naming the file and the
    fix when one is not a session (a damaged file, or one left with git's conflict
    markers)."""
    folder = Path(results_dir)
    sessions = []
    older = folder / OLDER_SESSIONS
    if older.is_file():
        listed = _json_or_none(older)
        if not isinstance(listed, list) or not all(map(_is_session, listed)):
            raise _not_sessions(older, "a list of sessions")
        sessions += listed
    for path in sorted((folder / SESSIONS).glob("*.json")):
        session = _json_or_none(path)
        if not _is_session(session):
            raise _not_sessions(path, "a session's record")
        sessions.append(session)
    return sorted(sessions, key=lambda s: str(s.get("started", "")))


def _not_sessions(path: Path, what: str) -> ValueError:
    """The error of a session file that is not ``what``, naming the file and the fix: the
    analysis says it in one line and leaves the wall-clock out, which the line, without a
    fix, left the user to work out (found in review)."""
    return ValueError(f"{path} is not {what} (damaged or edited): {restore_hint(path)}, or "
                      f"delete it to leave its time out of the protocol's wall-clock")


def _is_session(session: Any) -> bool:
    """Whether parsed JSON is a session as :func:`log_session` writes it, in the fields the
    analysis sums (found in review: ``"seconds": "1006.2"`` or ``"published": null``, an
    edited or foreign file, ended the analysis with a TypeError after its tables)."""
    if not isinstance(session, dict):
        return False
    seconds = session.get("seconds", 0.0)
    provenance = session.get("provenance", {})
    return (is_measurement(seconds)
            and isinstance(session.get("published", []), list)
            and isinstance(provenance, dict)
            and isinstance(provenance.get("hardware", {}), dict))


def _json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
