"""Where the run records the analysis reads come from: the local records under a folder
(each run folder's ``run.json`` and the published copies, found by what they are, read
each on its own, a run found twice counted once) or a wandb project's runs rebuilt in
their shape; and the training runs among them. Apart from :mod:`.runs`, which tabulates
the records these return and is called by nothing here."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from ..config import profile_results
from ..errors import ConfigError, one_line
from ..override_checks import CONFIGS
from ..records import (DIVERGED_STATUS, RECORD, missing_fields, provenance_from_wandb,
                       read_record, unusable)

log = logging.getLogger(__name__)


#: A run folder set aside by ``scripts/reproduce.sh`` (``seed<k>.rejected``, ``-2``, ...:
#: :func:`basisconv.records.set_aside_run_folder`), whose run is made again: not read.
SET_ASIDE = re.compile(r".+\.rejected(-\d+)?")


def record_files(root: str | Path) -> list[Path]:
    """The records under ``root``, found by what they are, whatever the folders are called:
    each run folder's ``run.json`` (``outputs/<profile>/<row>/seed<k>/``), and every other
    ``.json`` file outside run folders, hidden folders and run folders set aside
    (:data:`SET_ASIDE`), such as the published records
    ``results/<profile>/runs/<row>/seed<k>.json`` (see :func:`basisconv.records.publish`);
    :func:`read_records` leaves out the JSON files that are no records (``index.json``).
    Symlinked folders are followed (:func:`files_under`). ``ConfigError`` when ``root``
    is not a folder."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(runs_dir_missing(root))

    def set_aside(path: Path) -> bool:  # a run folder scripts/reproduce.sh set aside
        return any(SET_ASIDE.fullmatch(part) for part in path.relative_to(root).parts[:-1])

    files = files_under(root)
    runs = {path.parent for path in files if path.name == RECORD and not set_aside(path)}
    found = {folder / RECORD for folder in runs}
    # (files alone: a folder named *.json, a run's hydra.run.dir=outputs/v2.json, is none)
    for path in (path for path in files if path.suffix == ".json"):
        inside = path.relative_to(root).parts[:-1]
        if any(part.startswith(".") for part in inside) or set_aside(path):
            continue  # .hydra/, .ipynb_checkpoints/, seed<k>.rejected/
        if any(folder in runs for folder in path.parents):
            continue  # a run's own other files (wandb's)
        found.add(path)
    return sorted(found)


def runs_dir_missing(root: Path) -> str:
    """Why ``runs_dir`` (``root``), not a folder, holds no records, and where they are: a
    profile's folder not published yet (its profile named), one of the other profiles'
    layout given for a profile published elsewhere (:func:`elsewhere_line`), or a path whose
    ``..`` leads elsewhere than it reads (named resolved)."""
    what = "not a folder" if root.exists() else "no such folder"
    if (elsewhere := elsewhere_line(root)) is not None:
        return f"runs_dir={root}: {what}; {elsewhere}"
    if os.pardir in root.parts:
        # (results/../runs was said to be a profile "..": its parent folder's name)
        what += f": its {os.pardir} makes it {root.resolve()}"
    profile = None if root.exists() else published_profile(root)
    # a profile reproduce.sh runs (one of configs/profile/) is offered to it, its own
    # folders named; a typo is not (reproduce.sh refuses it): the published ones show it
    known = profile in profile_names()
    if profile is not None:
        # make analyze's default, PROFILE=paper, before that profile has run here
        base = Path(*root.parts[:-len(published_runs(profile).parts)])
        hint = f"make reproduce PROFILE={profile} makes them; " if known else ""
        what += (f": no record of profile {profile} is published here yet ({hint}"
                 f"profiles published here: {', '.join(published_here(base)) or 'none'})")
    runs, outputs = ((published_runs(profile), f"outputs/{profile}") if known
                     else ("results/<profile>/runs", "outputs/<profile>"))
    return (f"runs_dir={root}: {what}; give the folder of published records ({runs}) or "
            f"of run folders ({outputs})")


def files_under(root: Path) -> list[Path]:
    """Every file under ``root``, named by its path under ``root``, symlinked folders
    followed: runs linked into ``results/<profile>/runs/`` from another disk were silently
    left out of the tables (``Path.rglob`` does not follow links). Each folder is walked
    once, by its resolved path, so a link to a folder above it (a loop) or a second link to
    one folder ends there instead of walking on without end or reading its runs twice."""
    walked: set[str] = set()
    files = []
    for folder, subfolders, names in os.walk(root, followlinks=True):
        resolved = os.path.realpath(folder)
        if resolved in walked:
            subfolders.clear()  # (walked already, through another path)
            continue
        walked.add(resolved)
        files.extend(Path(folder, name) for name in names)
    return files


def profile_names() -> set[str]:
    """The profiles scripts/reproduce.sh runs: those of ``configs/profile/``."""
    return {path.stem for path in (CONFIGS / "profile").glob("*.yaml")}


def published_runs(profile: str) -> Path:
    """Where scripts/reproduce.sh publishes a profile's records (:func:`profile_results`)."""
    return Path(profile_results(profile), "runs")


def published_profile(root: Path) -> str | None:
    """The profile whose published records ``root`` is the folder of (its last parts, so
    under any ``RESULTS_DIR`` or ``OUTPUTS`` too): one of :func:`profile_names`, or a
    mistyped name in ``results/<name>/runs``; None for any other folder. Found in review:
    the smoke profile's folder, ``outputs/smoke/results/runs``, got no such hint; and
    ``results/../runs`` was the folder of a profile named "..", no name at all."""
    def is_folder_of(profile: str) -> bool:
        tail = published_runs(profile).parts
        return root.parts[-len(tail):] == tail
    typed = {root.parent.name} - {os.pardir, ""}
    return next((name for name in sorted(profile_names() | typed) if is_folder_of(name)), None)


def elsewhere_line(root: Path) -> str | None:
    """Where a profile's records are when ``root`` names them in the other profiles' layout,
    ``<folder>/<profile>/runs``, and that profile publishes them elsewhere, or None: the
    smoke profile's are in ``outputs/smoke/results/runs``, never under ``results/``
    (:func:`basisconv.config.profile_results`); ``runs_dir=results/smoke/runs`` got the
    generic "give the folder of published records (results/<profile>/runs)" (found in
    review), or, made by hand, "run `make reproduce PROFILE=smoke`", which writes elsewhere."""
    profile = root.parent.name
    if root.name != "runs" or profile not in profile_names() or published_profile(root):
        return None
    return (f"the {profile} profile's records are published elsewhere: in "
            f"{published_runs(profile)} (its run folders in outputs/{profile}), by `make "
            f"reproduce PROFILE={profile}`; give runs_dir={published_runs(profile)}, or "
            f"profile={profile} without runs_dir")


def published_here(base: Path) -> list[str]:
    """The profiles whose records are published under ``base`` (where ``results/`` is)."""
    found = {path.parent.name for path in base.glob("*/*/runs")}  # results/<name>/runs
    return sorted(name for name in profile_names() | found
                  if (base / published_runs(name)).is_dir())


def is_record(data: Any) -> bool:
    """Whether parsed JSON is a record at all (one may lack fields): an object with a
    record's own ``kind``, ``status`` or ``config``; ``index.json`` is none."""
    return isinstance(data, dict) and bool({"kind", "status", "config"} & data.keys())


def read_records(root: str | Path, unreadable: list[str] | None = None,
                 unfinished: list[str] | None = None) -> list[tuple[dict, Path]]:
    """Every readable record under ``root`` (see :func:`record_files`) with its folder, a
    run found twice (its folder's record and a published copy) once, by its complete record
    where one of them is. The unreadable ones (not JSON, cut off, or lacking a field
    analysis reads: ``basisconv.records.REQUIRED``) are skipped, each logged, and appended
    to ``unreadable`` when given; JSON files that are no records at all are left out. The
    training runs not finished are appended to ``unfinished`` as :func:`unfinished_entry`
    names them."""
    found: list[tuple[dict, Path]] = []
    names: list[Path] = []  # what names each of found: its run folder, or its file
    seen: dict[str, int] = {}  # a run's identity -> its place in found
    for path in record_files(root):
        try:
            if path.name != RECORD and not is_record(json.loads(path.read_text())):
                continue
            record = read_record(path)
            problem = unusable(record, path)
            if problem is not None:
                raise ValueError(problem)
            # a run's own run.json and its published copy are one run, counted once; where
            # one of them is complete (the other a copy taken while it ran), that one
            identity = json.dumps([record["kind"], record["config"], record["provenance"]],
                                  sort_keys=True, default=str)
            name = path.parent if path.name == RECORD else path
            if identity not in seen:
                seen[identity] = len(found)
                found.append((record, path.parent))
                names.append(name)
            elif (record["status"] == "complete"
                  and found[seen[identity]][0]["status"] != "complete"):
                found[seen[identity]] = (record, path.parent)
                names[seen[identity]] = name
        except (OSError, ValueError) as err:
            log.info("unreadable run record %s (%s)", path, one_line(err))
            if unreadable is not None:
                unreadable.append(str(path.parent if path.name == RECORD else path))
    if unfinished is not None:
        unfinished += [unfinished_entry(record, name) for (record, _), name in zip(found, names)
                       if record["kind"] == "training" and record["status"] != "complete"]
    return found


def unfinished_entry(record: dict, name: Path) -> str:
    """A training run not finished as the tables name it: ``<run folder or published file>
    at epoch <e> of <E>`` (a published record's folder is its row's, not the seed's), or
    ``... diverged in epoch <e> of <E> (<what diverged>)`` for one that diverged: a learning
    rate swept too high is said, not a row gone missing or a run that seems cut off."""
    done, epochs = len(record["epochs"]), record["config"]["trainer"]["epochs"]
    if record["status"] == DIVERGED_STATUS:
        return diverged_entry(name, done, epochs, record["diverged"])
    return f"{name} at epoch {done} of {epochs}"


def diverged_entry(name: Path | str, done: int, epochs: Any, divergence: str) -> str:
    """A diverged run as the tables name it, a local record's or a wandb run's:
    ``<name> diverged in epoch <e> of <E> (<what diverged>)``."""
    return f"{name} diverged in epoch {done + 1} of {epochs} ({divergence})"


def wandb_diverged_entry(run: Any, summary: dict) -> str | None:
    """A failed wandb run whose summary says what diverged (``diverged``, set by the
    training before it ends the run failed), named as a local diverged record is; None for
    any other run. Its epochs: the last one logged (``epoch``), none in a first epoch
    (which it names, as it logged no ``test_accuracy``)."""
    divergence = summary.get("diverged")
    if run.state != "failed" or not isinstance(divergence, str):
        return None
    trainer, done = run.config.get("trainer"), summary.get("epoch")
    epochs = trainer.get("epochs", "?") if isinstance(trainer, dict) else "?"
    return diverged_entry(run.url, done if isinstance(done, int) else 0, epochs, divergence)


def training_records(records: list[tuple[dict, Path]]) -> list[tuple[dict, str]]:
    """The complete training runs among ``records``; other kinds (sensitivity, search)
    and incomplete runs are left out."""
    return [(record, str(folder)) for record, folder in records
            if record["kind"] == "training" and record["status"] == "complete"]


def records_of_kind(records: list[tuple[dict, Path]], kind: str) -> list[tuple[dict, Path]]:
    """The records of another kind (``sensitivity``, ``exhaustive_search``)."""
    return [(record, folder) for record, folder in records if record["kind"] == kind]


def wandb_records(project: str, entity: str | None = None, api=None,
                  unreadable: list[str] | None = None,
                  unfinished: list[str] | None = None) -> list[tuple[dict, str]]:
    """Finished runs of a wandb project, rebuilt in the shape of local run records from
    what ``Training`` logs: the resolved config, per-epoch history, and the ``model/*``,
    ``provenance/*`` and final metrics in the summary. One that lacks a field analysis
    reads, or holds one of another type (another code's run with a ``test_accuracy``, a
    run logged by an older version), is left out, logged and its URL appended to
    ``unreadable``, as a local record is (it was a ``KeyError`` trace, or a trace from the
    tables). A training run not finished (crashed, failed, still running) is left out and
    appended to ``unfinished`` as ``<url> (<state>)``, as a local one is named under the
    table (it was dropped without a word: a row short of a seed, or gone, read as whole);
    one that diverged as :func:`wandb_diverged_entry` names it."""
    if api is None:
        try:
            import wandb

            api = wandb.Api()
        except Exception as err:  # noqa: BLE001
            raise ConfigError(f"source=wandb needs a working wandb login ({err}); use the "
                              f"local run records (source=local) instead") from None
    path = f"{entity}/{project}" if entity else project
    try:
        runs = list(api.runs(path))
    except Exception as err:  # noqa: BLE001 - network, permissions, a wrong name
        raise ConfigError(f"could not list the runs of wandb project {path!r} ({err}); check "
                          f"wandb.project / wandb.entity and the network, or use source=local") from None
    found = []
    for run in runs:
        summary = dict(run.summary)
        diverged = wandb_diverged_entry(run, summary)
        if "test_accuracy" not in summary and diverged is None:
            continue  # not a training run of ours (or one that logged no epoch)
        if run.state != "finished":
            if unfinished is not None:
                unfinished.append(diverged or f"{run.url} ({run.state})")
            continue
        model = {k.split("/", 1)[1]: v for k, v in summary.items() if k.startswith("model/")}
        model["basis_layers"] = (model.pop("basis_layer_names", "") or "").split()
        epochs = [dict(row) for row in run.history(pandas=False)]
        record = {
            "kind": "training", "status": "complete",
            "config": run.config, "model": model, "epochs": epochs,
            "final": {k: summary.get(k) for k in (
                "test_accuracy", "best_test_accuracy", "forward_seconds_per_step",
                "backward_seconds_per_step", "mean_epoch_seconds", "train_seconds")},
            "provenance": provenance_from_wandb(summary),
        }
        missing = missing_fields(record)
        if missing:
            log.info("unreadable wandb run %s (a training record without %s)", run.url,
                     ", ".join(missing))
            if unreadable is not None:
                unreadable.append(run.url)
            continue
        found.append((record, run.url))
    return found
