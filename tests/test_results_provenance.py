"""Every file under ``results/`` has its provenance: the rule ``results/README.md`` states
(every number there comes from a run done, with its command, commit, hardware and date
beside it), checked file by file, reading files only."""

import json
import re
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path


def record_provenance(path) -> dict | None:
    """The ``provenance`` of the JSON record at ``path`` when it names the command, date,
    commit and hardware it came from; None otherwise (no record, or one of them missing)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    provenance = record.get("provenance") if isinstance(record, dict) else None
    if not isinstance(provenance, dict) or not isinstance(provenance.get("git"), dict):
        return None
    complete = all(provenance.get(key) for key in ("command", "date", "hardware"))
    return provenance if complete and provenance["git"].get("commit") else None


def provenance_holder(path, results, readme: str) -> str | None:
    """Where ``path``, a file of ``results`` that is no JSON record, has its provenance as
    the project keeps it: its table's record (``name.csv`` beside ``name.json``), a record
    of its folder that names it (an analysis's ``index.json`` or the speed report's
    ``files``, a benchmark's ``profile_file``), the table a benchmark plot is drawn from
    (``basis-speedup-<tag>.png``: ``model-speed-<tag>.json``), or, for a raw log in a
    ``logs/`` folder, ``results/README.md``'s row of the folder above it, which names
    ``logs/``, the commit, the machine, the date and a command. None: nowhere."""
    folder = path.parent
    if record_provenance(path.with_suffix(".json")):
        return path.with_suffix(".json").name
    for record in sorted(folder.glob("*.json")):
        if record_provenance(record) and any(
                value == path.name or isinstance(value, list) and path.name in value
                for value in json.loads(record.read_text()).values()):
            return record.name
    if path.name.startswith("basis-speedup-") and path.suffix == ".png":
        tag = path.stem.removeprefix("basis-speedup-")
        for table in (f"model-speed-{tag}.json", f"layer-speed-{tag}.json"):
            if record_provenance(folder / table):
                return table
    if folder.name == "logs" and folder.parent != results:
        above = folder.parent.relative_to(results).as_posix()
        row = re.search(rf"^\| `{re.escape(above)}/` \|(.*)$", readme, re.M)
        named = (r"`[0-9a-f]{7,40}`", r"\b\d{4}-\d\d-\d\d\b", r"NVIDIA|AMD|Intel", r"`python3? ")
        if row and "`logs/`" in row[1] and all(re.search(rx, row[1]) for rx in named):
            return f"results/README.md's row of {above}/"
    return None


def results_history(repo) -> dict | None:
    """What the records of ``repo/results`` are checked against: each commit of HEAD's
    history (full hash: its place in topological order, newest 0, its author and
    committer dates) and, for each file of ``results/`` that the working tree holds as
    committed, the commit that last changed it (``committed_by``). None where the history
    is not all there: no git, no work tree (a tarball), a shallow clone; or not this
    copy's own (a tarball unpacked inside another repository's work tree)."""
    def git(*args) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True,
                              text=True, check=True).stdout
    try:
        if (git("rev-parse", "--is-shallow-repository").strip() != "false"
                or Path(git("rev-parse", "--show-toplevel").strip()) != Path(repo).resolve()):
            return None
        log = git("log", "--topo-order", "--format=%H %aI %cI").split("\n")
        changes = git("log", "--format=@%H", "--name-only", "--", "results").split("\n")
        status = git("status", "--porcelain", "--untracked-files=all", "--", "results")
    except (OSError, subprocess.CalledProcessError):
        return None
    commits = {sha: (place, datetime.fromisoformat(authored), datetime.fromisoformat(committed))
               for place, (sha, authored, committed) in enumerate(
                   line.split() for line in log if line)}
    # a file changed or added since the last commit (a result just made) has no such commit
    uncommitted = {line[3:].split(" -> ")[-1] for line in status.splitlines()}
    committed_by, commit = {}, None
    for line in changes:
        if line.startswith("@"):
            commit = line[1:]
        elif line and line not in uncommitted:
            committed_by.setdefault(line.removeprefix("results/"), commit)
    return {"commits": commits, "committed_by": committed_by}


def provenance_gaps(results, history: dict | None) -> list[str]:
    """Each file of ``results`` (but its READMEs, a write in progress, a record set aside)
    whose provenance is missing or cannot be: a JSON record without its command, date,
    commit and hardware, or dated in the future; another file with none of
    :func:`provenance_holder`'s. With ``history`` (:func:`results_history`), also a record
    naming no commit of this repository, dated before the commit it names, or naming a
    commit later than the one that committed the file, or dated after that one."""
    readme = (results / "README.md").read_text()
    now, gaps = datetime.now(timezone.utc), []
    for path in sorted(results.rglob("*")):
        if (not path.is_file() or path.name == "README.md" or path.name.startswith(".")
                or path.suffix == ".rejected"):
            continue
        name = path.relative_to(results).as_posix()
        if path.suffix != ".json":
            if provenance_holder(path, results, readme) is None:
                gaps.append(f"{name}: no record names it (a `.json` beside it, a record "
                            "of its folder listing it, or its folder's row in the README)")
            continue
        provenance = record_provenance(path)
        if provenance is None:
            gaps.append(f"{name}: no provenance with its command, date, commit and hardware")
            continue
        try:
            date = datetime.fromisoformat(provenance["date"])
        except (TypeError, ValueError):
            gaps.append(f"{name}: its date {provenance['date']!r} is not an ISO date")
            continue
        date = date if date.tzinfo else date.replace(tzinfo=timezone.utc)
        if date > now:
            gaps.append(f"{name}: dated {provenance['date']}, in the future")
        if history is None:
            continue
        sha = provenance["git"]["commit"]
        found = [c for c in history["commits"] if c.startswith(sha)] if len(sha) >= 7 else []
        if len(found) != 1:
            gaps.append(f"{name}: names commit {sha}, not a commit of this repository")
            continue
        place, authored, _ = history["commits"][found[0]]
        if date < authored:
            gaps.append(f"{name}: dated {provenance['date']}, before its commit {sha[:7]}")
        if name in history["committed_by"]:
            by = history["committed_by"][name]
            by_place, _, committed = history["commits"][by]
            if place < by_place:
                gaps.append(f"{name}: names commit {sha[:7]}, later than {by[:7]}, which "
                            "committed the file")
            if date > committed:
                gaps.append(f"{name}: dated {provenance['date']}, after {by[:7]} committed it")
    return gaps


def test_every_file_in_results_has_its_provenance(repo):
    """The rule ``results/README.md`` states: every number here comes from a run done,
    with its command, commit, hardware and date beside it. Each JSON record holds them
    (the commit one of this repository's, neither later than the commit that added the
    record nor dated after it); each other file is named by such a record or, for a raw
    log, by its folder's row of the README (:func:`provenance_gaps`)."""
    results = repo / "results"
    assert len(list(results.rglob("*.json"))) >= 200
    gaps = provenance_gaps(results, results_history(repo))
    assert not gaps, "\n".join(gaps)


def test_a_result_without_its_provenance_is_named(tmp_path, repo):
    """The check above on a stripped copy: a record without its hardware, a table or
    plot no record names, a log whose folder the README has no row for, a record naming
    an unknown commit or one later than the commit that committed it, one dated in the
    future; the same files with their provenance pass."""
    source, results = repo / "results", tmp_path / "results"
    for name in ("README.md", "model-speed-cpu-fp32.csv", "model-speed-cpu-fp32.json",
                 "basis-speedup-cpu-fp32.png", "model-speed-cpu-fp32-split.csv",
                 "basis-speedup-cpu-fp32-split.png", "gpu-h200-fused/logs/versions.txt",
                 "gpu-h200-fused/train-throughput-cuda-bf16-basis0.5-fused-graphs.json",
                 "gpu-h200-fused/train-throughput-cuda-bf16-basis0.5-fused-graphs-profile.txt",
                 "quick/index.json", "quick/comparison-cpu-fp32.md"):
        (results / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, results / name)
    (results / "quick" / "table-of-hand.csv").write_text("fraction,ratio\n0.5,1.2\n")
    (results / "cpu-other" / "logs").mkdir(parents=True)
    (results / "cpu-other" / "logs" / "run.log").write_text("done 12s\n")
    record = json.loads((results / "model-speed-cpu-fp32.json").read_text())
    unnamed = "no record names it (a `.json` beside it, a record of its folder listing it, " \
              "or its folder's row in the README)"
    assert provenance_gaps(results, None) == [
        f"{name}: {unnamed}" for name in ("basis-speedup-cpu-fp32-split.png",
                                          "cpu-other/logs/run.log",
                                          "model-speed-cpu-fp32-split.csv",
                                          "quick/table-of-hand.csv")]

    stripped = {**record, "provenance": {**record["provenance"], "hardware": {}}}
    (results / "model-speed-cpu-fp32.json").write_text(json.dumps(stripped))
    gaps = provenance_gaps(results, None)
    assert ("model-speed-cpu-fp32.json: no provenance with its command, date, commit and "
            "hardware") in gaps
    assert f"basis-speedup-cpu-fp32.png: {unnamed}" in gaps
    (results / "model-speed-cpu-fp32.json").write_text(json.dumps(record))

    sha = record["provenance"]["git"]["commit"]
    recorded = datetime.fromisoformat(record["provenance"]["date"])
    history = {"commits": {sha: (0, recorded, recorded), "0" * 40: (1, recorded, recorded)},
               "committed_by": {"model-speed-cpu-fp32.json": "0" * 40}}
    assert (f"model-speed-cpu-fp32.json: names commit {sha[:7]}, later than 0000000, which "
            "committed the file") in provenance_gaps(results, history)
    del history["commits"][sha]
    assert (f"model-speed-cpu-fp32.json: names commit {sha}, not a commit of this "
            "repository") in provenance_gaps(results, history)
    future = {**record,
              "provenance": {**record["provenance"], "date": "2999-01-01T00:00:00+00:00"}}
    (results / "model-speed-cpu-fp32.json").write_text(json.dumps(future))
    assert ("model-speed-cpu-fp32.json: dated 2999-01-01T00:00:00+00:00, in the future"
            in provenance_gaps(results, None))


def test_a_copy_inside_another_repositorys_work_tree_has_no_history(tmp_path):
    """Found in review: a copy without its ``.git`` (a tarball, ``git archive``) unpacked
    inside another repository's work tree (a home folder kept in git, a monorepo) was
    checked against that repository's history, and every record named "not a commit of
    this repository"; it has no history of its own, as a tarball elsewhere has none."""
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c",
                        "user.email=t@t", *args], capture_output=True, check=True)

    git("init", "-q")
    git("commit", "-q", "--allow-empty", "-m", "another project")
    copy = tmp_path / "basisconv"
    (copy / "results").mkdir(parents=True)
    assert results_history(tmp_path) is not None  # (the other repository's own)
    assert results_history(copy) is None
