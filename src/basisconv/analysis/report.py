"""``scripts/analyze.py``: from run records to the tables and plots of our protocol in
``results/<profile>/``, each file stating the profile, hardware, commits and dates of the
runs it came from; file names carry the device and precision."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from ..checkpoint import flat_config
from ..config import capped
from ..config_checks import validate_analysis
from ..counts import is_number
from ..errors import ConfigError
from ..records import (hardware_name, has_session_log, missing_protocol_runs, provenance,
                       read_sessions, unmerged_problem, unwritable_folder, write_json_atomic)
from ..selection_checks import keys_read
from . import figures, search, sensitivity
from .record_sources import read_records, records_of_kind, training_records, wandb_records
from .runs import (ROW_COLUMNS, compare, curves_frame, differing_keys, distinct_curves,
                   distinct_runs, made_alike, runs_frame, setting_value, unread_selection_key)
from .tables import INTERNAL_COLUMNS, write_table

log = logging.getLogger(__name__)


def provenance_note(runs: pd.DataFrame, profile: str, made: dict) -> str:
    """One line: where the numbers of a table or plot came from; runs whose command named
    another profile than ``profile`` (records gathered from elsewhere) are counted there."""
    dates = sorted(d[:10] for d in runs["date"].dropna())
    span = f"{dates[0]}..{dates[-1]}" if dates and dates[0] != dates[-1] else (dates or ["?"])[0]
    others = runs["profile"].dropna()
    others = others[others != profile]
    if len(others):
        profile += (f" ({len(others)} of the runs made by profile "
                    f"{', '.join(sorted(set(others)))})")
    return (f"profile {profile}; {len(runs)} runs on {', '.join(sorted(set(runs['hardware'].astype(str))))}; "
            f"commit {', '.join(sorted(set(runs['commit'].astype(str).replace('', 'unknown'))))}; "
            f"run {span}; "
            f"made {made['date'][:10]} by `{made['command']}`")


def recipe_line(runs: pd.DataFrame) -> str:
    """What the runs trained, in one line: models, data, epochs, batch and seeds per row
    (without it, the quick profile's plots and tables say none of it, so its 51 % reads
    like a full CIFAR-10 result)."""
    def listed(values) -> str:
        return ", ".join(dict.fromkeys(f"{v:,}" if isinstance(v, int) else str(v)
                                       for v in values))

    models = listed(f"{m} x{w:g}" for m, w in zip(runs["model"], runs["width"]))
    seeds = distinct_runs(runs).groupby(ROW_COLUMNS, sort=False).size()
    per_row = f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()}-{seeds.max()}"
    data = listed(DATA_NAMES.get(name, name) for name in runs["data"])
    epochs = listed(runs["epochs"])
    return (f"{models} on {data}: {listed(runs['train_images'])} training / "
            f"{listed(runs['test_images'])} test images, {epochs} epoch"
            f"{'' if epochs == '1' else 's'}, "
            f"batch {listed(runs['batch_size'])}; {per_row} seed"
            f"{'s' if seeds.max() > 1 else ''} per row")


#: How a line on what was trained names each ``data.name``.
DATA_NAMES = {"cifar10": "CIFAR-10", "stripes": "generated stripes"}


def row_name(experiment: str, settings: str) -> str:
    """A table row as the notes under it name it: the experiment, and the settings that
    tell apart its rows of one experiment (a sweep over ``trainer.lr``)."""
    return f"{experiment} ({settings})" if settings else experiment


def sessions_summary(folder: Path) -> dict | None:
    """The protocol's wall-clock from ``scripts/reproduce.sh``'s session log in ``folder``:
    its sessions, seconds and published records, in all and per machine (None without a
    log). A protocol cut off on one machine and continued on another took the sum."""
    try:
        sessions = read_sessions(folder)
    except ValueError as err:
        log.warning("%s; the protocol's wall-clock is left out of index.json", err)
        return None
    if not sessions:
        return None
    by_hardware: dict[str, dict] = {}
    for session in sessions:
        name = hardware_name(session.get("provenance", {}).get("hardware", {})) or "unknown"
        mine = by_hardware.setdefault(name, {"sessions": 0, "seconds": 0.0, "published": 0})
        mine["sessions"] += 1
        mine["seconds"] = round(mine["seconds"] + session.get("seconds", 0.0), 1)
        mine["published"] += len(session.get("published", []))
    return {"sessions": len(sessions),
            "seconds": round(sum(m["seconds"] for m in by_hardware.values()), 1),
            "published": sum(m["published"] for m in by_hardware.values()),
            "by_hardware": by_hardware}


STD_LINE = ("Test accuracy: mean ± sample standard deviation (n - 1 in the denominator) "
            "over each row's seeds.")


def seeds_line(runs: pd.DataFrame) -> str:
    """"" when every configuration has the same seeds, each once; otherwise which rows
    differ from the most common set of seeds (fewer seeds, others, or one seed counted
    twice), since their means and their change against the baseline are then over other
    seeds and their std over fewer."""
    seeds = runs.groupby(ROW_COLUMNS, sort=False).agg(
        experiment=("experiment", "first"), settings=("settings", "first"),
        size=("basis_size", "first"), seeds=("seed", lambda s: tuple(sorted(s))))
    usual = seeds["seeds"].value_counts().index[0]
    odd = seeds[(seeds["seeds"] != usual) | seeds["seeds"].map(lambda s: len(set(s)) < len(s))]
    if odd.empty:
        return ""
    # with its basis size: the rows of a size sweep share their experiment's name
    listed = "; ".join(f"{row_name(r.experiment, r.settings)}"
                       f"{'' if r.size == '-' else f' at basis size {r.size}'}: "
                       f"{' '.join(map(str, r.seeds))}" for r in odd.itertuples())
    return (f"Rows differ in seeds (most have seeds {' '.join(map(str, usual))}; {listed}): their "
            f"means and changes against the baseline are over other seeds.")


def rows_split_by(runs: pd.DataFrame, column: str) -> list[str]:
    """The rows whose seeds differ in ``column``, each with which seeds had which value."""
    mixed = []
    for _, row in runs.groupby(ROW_COLUMNS, sort=False):
        values = row.groupby(row[column].fillna("").astype(str).replace("", "unknown"),
                             sort=True)["seed"].apply(lambda s: " ".join(map(str, sorted(s))))
        if len(values) > 1:
            mixed.append(f"{sized_row_name(row.iloc[0])} ("
                         + "; ".join(f"{v}: seeds {s}" for v, s in values.items()) + ")")
    return mixed


def sized_row_name(run: pd.Series) -> str:
    """A table row as the notes name it (:func:`row_name`), with its basis size: the rows
    of a size sweep share their experiment's name."""
    size = "" if run["basis_size"] == "-" else f" at basis size {run['basis_size']}"
    return f"{row_name(run['experiment'], run['settings'])}{size}"


def commits_line(runs: pd.DataFrame) -> str:
    """"" when each row's seeds ran at one commit; otherwise the rows whose seeds ran at
    several, with which seeds ran at which: a protocol continued after a ``git pull``
    averages seeds of two versions in one row, which differ where a change between them
    changed what runs compute (the footer's list of commits alone did not say which rows)."""
    mixed = rows_split_by(runs, "commit")
    if not mixed:
        return ""
    return (f"Rows whose seeds ran at different commits: {'; '.join(mixed)}; where the code "
            f"changed what runs compute between them, their mean mixes two versions.")


def versions_line(runs: pd.DataFrame) -> str:
    """"" or the rows whose seeds ran under different torch versions (records merged from
    machines with other software, else averaged without a word): torch changes kernels,
    and so results, between versions."""
    mixed = rows_split_by(runs, "torch")
    return (f"Rows whose seeds ran under different torch versions: {'; '.join(mixed)}."
            if mixed else "")


def tables_line(runs: pd.DataFrame) -> str:
    """"" or the rows whose seeds chose their layers from different sensitivity tables
    (two machines' estimates of one key; ``scripts/reproduce.sh`` makes such runs again
    from the published table, the analysis alone only says so)."""
    mixed = rows_split_by(runs[runs["sensitivity_table"].fillna("") != ""], "sensitivity_table")
    return (f"Rows whose seeds chose their layers from different sensitivity tables (by "
            f"checksum): {'; '.join(mixed)}: their layers differ between seeds."
            if mixed else "")


def timings_line(runs: pd.DataFrame) -> str:
    """"" or, for runs that chose their layers by measured time
    (``selection.budget_metric=time``), the rows whose seeds chose them from different
    layer timings (another machine's, by the timings' cache key, or another device's), as
    :func:`tables_line` says of sensitivity tables; and, where a table's rows chose from
    timings of different devices, or of another kind of device than its runs trained on (a
    run resumed elsewhere keeps its layers), which rows chose from which: their layers are
    those fast on another device, and the speedups between rows compare choices made by
    unlike clocks."""
    timed = runs[runs["layer_timings"].notna()]
    if timed.empty:
        return ""
    timed = timed.assign(chosen_by=timed["layer_timings"] + " on " + timed["timings_device"])
    lines = []
    if mixed := rows_split_by(timed, "chosen_by"):
        lines.append(f"Rows whose seeds chose their layers from different layer timings "
                     f"(selection.budget_metric=time; by key and device): {'; '.join(mixed)}: "
                     f"their layers differ between seeds, or were chosen on another machine.")
    # (an older cache's device may be the config's "auto": no kind to compare)
    kind = timed["timings_device"].str.split(":").str[0]
    elsewhere = kind.isin(["cpu", "cuda"]) & ((kind == "cpu") != (timed["device"] == "cpu"))
    if timed["timings_device"].nunique() > 1 or elsewhere.any():
        by_device = {device: ", ".join(dict.fromkeys(rows.apply(sized_row_name, axis=1)))
                     for device, rows in timed.groupby("timings_device", sort=True)}
        lines.append(f"Layers chosen by measured time were timed on "
                     f"{'; '.join(f'{d}: {names}' for d, names in by_device.items())}, the runs "
                     f"trained on {', '.join(sorted(set(timed['device'])))}: a row's layers are "
                     f"those fast on its timings' device.")
    return "\n".join(lines)


def baseline_line(table: pd.DataFrame) -> str:
    """"" or the rows without a dense baseline run on the same terms (``compare``), whose
    columns against it are left empty, and the speed plot with them."""
    alone = table[table["accuracy_change"].isna()]
    if alone.empty:
        return ""
    # once each: the rows of a size sweep share their experiment's name (basis.size is a column)
    names = dict.fromkeys(map(row_name, alone["experiment"], alone["settings"]))
    return (f"No dense baseline (selection none) of the same model, width, epochs, data and "
            f"test images for {', '.join(names)}: their columns against it are empty ('-'); "
            f"train one (experiment=baseline with their settings) into the runs folder and "
            f"analyze again.")


def unlike_baseline_line(table: pd.DataFrame) -> str:
    """"" or the rows compared with a dense run of other settings (``compare``: none was
    run in theirs, e.g. the dense model only at another ``trainer.lr``), with the dense
    run's values: their columns against the baseline compare unlike recipes."""
    unlike = table[table["baseline_differs"].astype(bool)]
    if unlike.empty:
        return ""
    listed = dict.fromkeys(f"{row_name(r.experiment, r.settings)} (baseline "
                           f"{r.baseline_differs})" for r in unlike.itertuples())
    return (f"No dense baseline in the rows' own settings for {'; '.join(listed)}: they are "
            f"compared with the closest dense run, whose settings are named.")


def timing_line(runs: pd.DataFrame) -> str:
    """"" when every run of a table was executed alike (hardware, threads, compiled or not,
    CUDA graphs); otherwise how many ran each way, since their time columns and speedups
    then compare unlike runs (``scripts/reproduce.sh`` lets later sessions add runs with,
    say, ``trainer.compile=true`` beside eager ones)."""
    setups = runs["timing"].value_counts(sort=False)
    if len(setups) < 2:
        return ""
    listed = "; ".join(f"{setup}: {count}" for setup, count in setups.items())
    return (f"Runs were executed differently (runs per set-up: {listed}): times and speedups "
            f"that compare runs of two set-ups compare unlike runs.")


def left_out_line(unfinished: list[str], unreadable: list[str]) -> str:
    """"" or which runs under ``runs_dir`` (or of the wandb project) are not in the table:
    unfinished ones (a protocol cut off midway, a crashed run) and unreadable records."""
    parts = ([f"{len(unfinished)} unfinished run{'s' * (len(unfinished) > 1)}: "
              f"{', '.join(unfinished)}"] if unfinished else [])
    parts += [f"{len(unreadable)} unreadable record{'s' * (len(unreadable) > 1)} "
              f"(named in index.json)"] if unreadable else []
    return f"Left out: {'; '.join(parts)}." if parts else ""


def missing_line(missing: list[str]) -> str:
    """"" or which of the protocol's runs have no record yet (a protocol cut off midway,
    continued on another machine later: the table is not the whole protocol's yet)."""
    if not missing:
        return ""
    return (f"Not run yet (no record in the runs folder): {', '.join(missing)}; the same "
            f"scripts/reproduce.sh command runs them.")


def found_line(records: list[tuple[dict, Path]], unreadable: list[str]) -> str:
    """What a folder without a complete training run held: records by kind, unreadable
    ones, and what a record is. A record not complete is "unfinished", whatever status it
    holds: a run stopped by Ctrl-C or out of memory leaves its record "running", which the
    analysis cannot tell from one going on."""
    kinds: dict[str, int] = {}
    for record, _ in records:
        complete = record["status"] == "complete"
        kind = record["kind"] if complete else f"unfinished {record['kind']}"
        kinds[kind] = kinds.get(kind, 0) + 1
    held = [f"{n} {kind}" for kind, n in sorted(kinds.items())]
    held += [f"{len(unreadable)} unreadable"] if unreadable else []
    return (f"found {', '.join(held) if held else 'no records'}; records are run folders' "
            f"run.json and published <row>/seed<k>.json files")


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
        raise ConfigError(f"no complete training run found in {where}; run "
                          f"`make reproduce PROFILE={cfg.profile}` (or some training runs) first")
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
