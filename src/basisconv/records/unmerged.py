"""The files of a results folder that a git merge left unresolved (:func:`unmerged_files`)
and the one line saying so (:func:`unmerged_problem`), which ``scripts/reproduce.sh`` checks
before it starts and the analysis before it writes its pages. Apart from :mod:`.protocol`:
it reads any folder's files and git's index, not the protocol's records, and calls nothing
else of ``records``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


#: The text files of a results folder that git's conflict markers may be left in.
MERGED_TEXT = (".json", ".md", ".csv", ".tex", ".txt")


def unmerged_files(folder: str | os.PathLike) -> list[Path]:
    """The files under ``folder`` a git merge left unresolved: those git lists as unmerged
    (a plot keeps one side's bytes), and text files holding conflict markers (one marked
    resolved by ``git add`` before it was edited). Two machines' records of different runs
    merge without conflict; what conflicts is what both wrote: the tables, plots and index,
    the estimate's and the search's records, the speed benchmark's files."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = set()
    try:
        listed = subprocess.run(["git", "ls-files", "-u", "-z", "--", "."], cwd=folder,
                                capture_output=True, timeout=60)
        if listed.returncode == 0:  # (not a git checkout: nothing listed)
            found |= {folder / entry.split(b"\t", 1)[1].decode()
                      for entry in listed.stdout.split(b"\0") if b"\t" in entry}
    except (OSError, subprocess.SubprocessError):
        pass
    for path in folder.rglob("*"):
        if path.suffix in MERGED_TEXT and path.is_file() and _has_conflict_markers(path):
            found.add(path)
    return sorted(found)


def _has_conflict_markers(path: Path) -> bool:
    try:
        text = path.read_bytes()
    except OSError:
        return False
    return ((text.startswith(b"<<<<<<< ") or b"\n<<<<<<< " in text)
            and (b"\n>>>>>>> " in text))


def unmerged_problem(folder: str | os.PathLike) -> str | None:
    """Why ``folder``'s results cannot be used until a git merge is finished (one line
    naming the fix), or None. Else ``scripts/reproduce.sh`` sets the conflicted records
    aside and makes them again, skips the speed benchmark for its conflicted files, and
    the analysis leaves a conflicted page in place."""
    files = unmerged_files(folder)
    if not files:
        return None
    named = ", ".join(str(p.relative_to(folder)) for p in files[:4])
    more = f" and {len(files) - 4} more" if len(files) > 4 else ""
    return (f"{folder} holds {len(files)} file{'s' * (len(files) > 1)} a git merge left "
            f"unresolved ({named}{more}): take either side of each, e.g. `git checkout "
            f"--theirs -- {folder} && git add {folder}`, then run again (the analysis makes "
            f"the tables, plots and index again from the records; see docs/reproducing.md, "
            f"\"Results from several machines\")")
