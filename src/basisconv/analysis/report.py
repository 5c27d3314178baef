"""``scripts/analyze.py``: from run records to the tables and plots of our protocol in
``results/<profile>/``, each file stating the profile, hardware, commits and dates of the
runs it came from; file names carry the device and precision. What those notes say is
made in :mod:`basisconv.analysis.notes`; here, what is written where."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from ..config import capped
from ..config_checks import validate_analysis
from ..counts import is_number
from ..errors import ConfigError
from ..records import (has_session_log, missing_protocol_runs, provenance, unmerged_problem,
                       unwritable_folder, write_json_atomic)
from ..same_run import flat_config
from ..selection_checks import keys_read
from . import figures, search, sensitivity
from .notes import (STD_LINE, baseline_line, commits_line, found_line, left_out_line,
                    missing_line, provenance_note, recipe_line, seeds_line, sessions_summary,
                    tables_line, timing_line, timings_line, unlike_baseline_line, versions_line)
from .comparison import compare, distinct_curves, distinct_runs
from .record_sources import (elsewhere_line, read_records, records_of_kind, training_records,
                             wandb_records)
from .runs import (curves_frame, differing_keys, made_alike, runs_frame, setting_value,
                   unread_selection_key)
from .tables import INTERNAL_COLUMNS, write_table

log = logging.getLogger(__name__)


def write_report(cfg: DictConfig, command: str) -> list[Path]:
    """Collect the runs (local records or wandb), write every table and plot; returns the
    files written."""
    validate_analysis(cfg)
    check_output_folder(cfg)
    unfinished: list[str] = []
    local, unreadable, records = collect_records(cfg, unfinished)
    out = Path(cfg.out_dir)
    made = provenance(command)
    runs = runs_frame(records)
    curves = distinct_curves(curves_frame(records, runs["settings"].tolist()))
    table = compare(runs)
    missing = missing_protocol_runs(cfg.runs_dir) if cfg.source == "local" else []
    if unfinished:
        log.warning("left out %d unfinished training runs: %s", len(unfinished),
                    ", ".join(unfinished))
    left_out = [left_out_line(unfinished, unreadable), missing_line(missing)]
    written: list[Path] = []
    for (device, precision), part in table.groupby(["device", "precision"], sort=False):
        mine = runs[(runs["device"] == device) & (runs["precision"] == precision)]
        mine_curves = curves[(curves["device"] == device) & (curves["precision"] == precision)]
        tag = file_safe(f"{device}-{precision}")
        written += write_group(part, mine, mine_curves, out / tag,
                               cfg.profile, made, left_out)
    if cfg.source == "local":
        written += sensitivity_outputs(local, out, cfg.profile)
    index = {"provenance": made, "source": cfg.source,
             "files": [p.name for p in written], "unreadable_runs": unreadable,
             "unfinished_runs": unfinished, "missing_runs": missing,
             "protocol_wall_clock": sessions_summary(sessions_folder(cfg, out)),
             "runs": runs.drop(columns=INTERNAL_COLUMNS).to_dict("records")}
    earlier = earlier_outputs(out, cfg.source)
    written.append(write_json_atomic(out / "index.json", index))
    for name in earlier - {p.name for p in written}:  # of runs no longer there
        (out / name).unlink(missing_ok=True)
    return written


def check_output_folder(cfg: DictConfig) -> None:
    """``out_dir`` can be written, is not the protocol's tables folder for other records
    (``analyze.py runs_dir=<a sweep>`` replaced the committed tables and deleted the
    protocol's sensitivity, search and speed pages), and neither it nor the records hold
    git's conflict markers."""
    blocker = unwritable_folder(str(Path(cfg.out_dir).absolute()))
    if blocker is not None:
        raise ConfigError(f"out_dir={cfg.out_dir} cannot be written ({blocker}); give another "
                          f"folder")
    protocol_folder = Path("results", str(cfg.profile)).resolve()
    if (cfg.source == "local" and Path(cfg.out_dir).resolve() == protocol_folder
            and Path(cfg.runs_dir).resolve() != protocol_folder / "runs"):
        raise ConfigError(f"runs_dir={cfg.runs_dir} would write its tables over "
                          f"results/{cfg.profile}/, which holds the tables of "
                          f"results/{cfg.profile}/runs; name a folder of their own: "
                          f"out_dir=<folder>")
    out, runs_dir = Path(cfg.out_dir).resolve(), Path(cfg.runs_dir).resolve()
    # the records, and what the analysis writes over (once: the records are usually in it)
    folders = [runs_dir] if cfg.source == "local" and not runs_dir.is_relative_to(out) else []
    for folder in [*folders, out]:
        if problem := unmerged_problem(folder):
            raise ConfigError(problem)


def collect_records(cfg: DictConfig, unfinished: list[str] | None = None
                    ) -> tuple[list, list[str], list]:
    """The local records read (none from wandb), the ones that could not be (warned of),
    and the complete training runs' records, from ``runs_dir`` or the wandb project; a
    ConfigError when there are none. The unfinished training runs (local or wandb) are
    appended to ``unfinished``."""
    unreadable: list[str] = []
    local = read_records(cfg.runs_dir, unreadable, unfinished) if cfg.source == "local" else []
    if cfg.source == "local":
        records = training_records(local)
    elif cfg.source == "wandb":
        records = wandb_records(cfg.wandb.project, cfg.wandb.entity, unreadable=unreadable,
                                unfinished=unfinished)
    else:
        raise ConfigError(f"source={cfg.source!r}; choose local or wandb")
    if unreadable:
        log.warning("skipped %d records that could not be read or lack fields the analysis "
                    "reads: %s (%s)", len(unreadable), ", ".join(unreadable),
                    remaking_hint(unreadable, cfg.profile, cfg.source))
    if not records:
        where = (f"{cfg.runs_dir} ({found_line(local, unreadable)})" if cfg.source == "local"
                 else f"wandb project {cfg.wandb.project}")
        # (a folder the protocol never publishes in: making runs would not fill it)
        elsewhere = elsewhere_line(Path(cfg.runs_dir)) if cfg.source == "local" else None
        raise ConfigError(f"no complete training run found in {where}; " + (
            elsewhere or f"run `make reproduce PROFILE={cfg.profile}` (or some training runs) "
                         f"first"))
    return local, unreadable, records


def remaking_hint(unreadable: list[str], profile: str, source: str = "local") -> str:
    """How the records skipped as ``unreadable`` are made again: a run folder's ``run.json``
    from its checkpoint, a published record (a ``.json`` file, ``results/<profile>/runs/``)
    by the protocol, which sets it aside and makes its run again; the hint spoke of the
    run folder's alone, which a published record has not beside it (found in review). A
    wandb run (``source="wandb"``, named by its URL) has neither beside it: one lacking a
    field was logged by other code (found in review: it got the run folder's hint)."""
    if source == "wandb":
        return ("runs logged by other code or by an older version of this code; a run trained "
                "again with this code is read")
    hints = []
    if any(not name.endswith(".json") for name in unreadable):
        hints.append("a finished training run's run.json is rebuilt from its checkpoint by "
                     "running the same command again")
    if any(name.endswith(".json") for name in unreadable):
        hints.append(f"a record scripts/reproduce.sh published is set aside, and its run "
                     f"made again, by `make reproduce PROFILE={profile}`")
    return "; ".join(hints)


def write_group(part: pd.DataFrame, runs: pd.DataFrame, curves: pd.DataFrame, stem: Path,
                profile: str, made: dict, left_out: list[str | None]) -> list[Path]:
    """The comparison table and plots of one device and precision (``stem``: the folder
    and the ``<device>-<precision>`` their names end in), with the notes that say where
    its runs come from and what to keep in mind reading them."""
    out, tag = stem.parent, stem.name
    origin = provenance_note(runs, profile, made) + "\n" + recipe_line(runs)
    seeds = distinct_runs(runs)
    # the commits and versions of every record: distinct_runs averages a seed trained again
    # (at another commit, say) into its first record, whose commit alone it keeps
    caveats = [line for line in (seeds_line(seeds), commits_line(runs), versions_line(runs),
                                 tables_line(seeds), timings_line(seeds), baseline_line(part),
                                 unlike_baseline_line(part), timing_line(runs), *left_out)
               if line]
    note = "\n".join([origin, *caveats])  # the plots' footer
    written = write_table(part, out / f"comparison-{tag}",
                          "\n".join([origin, STD_LINE, *caveats]))
    for draw, data, name in ((figures.speed_vs_basis_size, part, "speed"),
                             (figures.accuracy_vs_parameters, part, "accuracy-params"),
                             (figures.training_curves, curves, "curves")):
        target = out / f"{name}-{tag}.png"
        path = draw(data, target, note)
        if path is None:  # nothing to draw: none left from an earlier analysis either
            target.unlink(missing_ok=True)
        else:
            written.append(path)
    return written


def sessions_folder(cfg: DictConfig, out: Path) -> Path:
    """Where ``scripts/reproduce.sh`` logged the sessions that made ``runs_dir``'s records:
    beside it (``results/<profile>/runs`` -> ``results/<profile>``) when a log is there,
    wherever the analysis writes (without it, tables made into another folder lose the
    wall-clock); else the output folder."""
    runs = Path(cfg.runs_dir)
    if cfg.source == "local" and runs.name == "runs" and has_session_log(runs.parent):
        return runs.parent
    return out


def earlier_outputs(out: Path, source: str) -> set[str]:
    """The files an earlier analysis of the same ``source`` wrote to ``out`` (its
    ``index.json``): those this one does not write again are of records that are gone
    (removed, set aside as rejected) and would be shown as current (the notebook shows
    every table and plot there). An analysis of the other source does not remove them (a
    wandb project holds no sensitivity or search records), nor are other files in the
    folder (benchmark records) touched."""
    try:
        index = json.loads((out / "index.json").read_text())
        files = index["files"] if index["source"] == source else []
    except (OSError, ValueError, KeyError, TypeError):
        return set()  # none, or unreadable: nothing known to be ours
    return {name for name in files if isinstance(name, str) and name == Path(name).name
            and name not in ("", ".", "..")}


# How a file name says the keys that most often set two summaries apart.
NAME_PARTS = {"model.width": "x{:g}", "basis.size": "m{}",  # m1 (a filter), m1.0 (all)
              "sensitivity.search_subset_size": "k{}"}


def name_part(key: str, value) -> str:
    """``key=value`` as a file name carries it: ``x0.25`` for a width, ``m0.5`` for a basis
    size, ``k3`` for a subset size, a policy by its name, else ``key=value`` with any
    character a file name should not hold as ``_``."""
    if key in NAME_PARTS and is_number(value):
        return NAME_PARTS[key].format(value)
    text = str(value) if key == "selection.policy" else f"{key}={setting_value(value)}"
    return file_safe(text)


def file_safe(text: str) -> str:
    """``text`` with any character a file name should not hold as ``_``. Result file names
    are made of record values: an edited or foreign record's ``"amp": "../x"`` or model
    name ``"a/b"`` wrote outside the results folder, or into a folder of its own."""
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", text)


def distinct_stems(records: list[dict], stems: list[str]) -> list[str]:
    """``stems`` (one per record: its summary's file name), those that two records share
    each followed by the config keys in which those records differ (``-x0.25``,
    ``-m0.25``, ``-sensitivity_threshold``, ``-selection.budget_reduction=0.5``), so that
    one summary does not overwrite another; records alike in every such key (the same
    estimate made again) are numbered in the order they were made. A stem only one record
    has stays as it is: the names published results link to. Each is first made
    :func:`file_safe`."""
    stems = [file_safe(stem) for stem in stems]
    names = list(stems)
    for stem in dict.fromkeys(stems):
        mine = [i for i, s in enumerate(stems) if s == stem]
        if len(mine) < 2:
            continue
        configs = [flat_config(records[i]["config"]) for i in mine]
        # keys that change only how a record was made are no part of its name; a seed is
        differ = differing_keys(configs, made_alike)
        keys = [k for k in differ if k != "name"] or differ
        for i, config in zip(mine, configs):
            read = keys_read(records[i]["config"].get("selection") or {})
            if records[i].get("kind") == "exhaustive_search":  # ranks by it, whatever the
                read = read | {"metric"}                       # policy (search.fast_choice)
            own = [k for k in keys if not unread_selection_key(k, read)]
            # (every differing key: two estimates of other profiles differ in many, and a
            # name past 255 bytes could not be written)
            names[i] = capped("-".join([stem, *(name_part(k, config[k]) for k in own)]))
    for name in dict.fromkeys(names):
        alike = sorted((i for i, n in enumerate(names) if n == name),
                       key=lambda i: str((records[i].get("provenance") or {}).get("date")))
        for number, i in enumerate(alike[1:], start=2):
            names[i] = f"{name}-{number}"
    return names


def sensitivity_outputs(records: list[tuple[dict, Path]], out: Path, profile: str) -> list[Path]:
    """The summary of each sensitivity run and each exhaustive search, re-drawn from their
    records, each to files of its own (:func:`distinct_stems`)."""
    written = []
    found = records_of_kind(records, "sensitivity")
    stems = distinct_stems([r for r, _ in found], [sensitivity.summary_stem(r) for r, _ in found])
    for (record, _), stem in zip(found, stems):
        written += sensitivity.summarize(record, out, profile, stem)
    found = records_of_kind(records, "exhaustive_search")
    stems = distinct_stems([r for r, _ in found], [search.summary_stem(r) for r, _ in found])
    for (record, folder), stem in zip(found, stems):
        written += search.summarize(record, folder, out, profile, stem)
    return written
