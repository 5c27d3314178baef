"""What the analysis says about the runs behind its outputs, each as a line: where a table's
numbers came from (:func:`provenance_note`), what they trained (:func:`recipe_line`), the
caveats under a table and its plots (seeds, commits, torch versions, sensitivity tables,
layer timings, baselines, set-ups, runs left out or not run yet), what a folder without a
complete training run held, and the protocol's wall-clock from its session log.

Apart from :mod:`basisconv.analysis.report`, which decides what is written where (the
output folder's checks, the records collected, the files named and removed): these only
turn runs into text and never write, so what a page says is read, and tested, in one place.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from ..records import DIVERGED_STATUS, hardware_name, read_sessions
from .comparison import distinct_runs
from .runs import ROW_COLUMNS

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


#: What a table's spreads are (its "± s.e." is one standard error, no 95 % interval: that
#: is t(n - 1) times as wide, and with 3 seeds a change of 2 s.e. is still within it).
STD_LINE = ("Test accuracy: mean ± sample standard deviation (n - 1 in the denominator) "
            "over each row's seeds. vs baseline: the change ± its standard error paired by "
            "seed (the std of the per-seed differences over sqrt(n); only where a row has its "
            "baseline's seeds): one standard error, not a 95 % interval, which is t(n - 1) "
            "times as wide (2.31 at 9 seeds, 4.30 at 3). Epoch (s): each run's median epoch "
            "(after a dense warm-up, of its basis epochs), averaged over seeds.")


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
    unfinished ones (a protocol cut off midway, a crashed or diverged run) and unreadable
    records."""
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
    ones, and what a record is. A record not complete is "unfinished" (a run stopped by
    Ctrl-C or out of memory leaves its record "running", which the analysis cannot tell
    from one going on), or "diverged" where its status says so."""
    kinds: dict[str, int] = {}
    for record, _ in records:
        status = record["status"]
        kind = (record["kind"] if status == "complete" else
                f"{'diverged' if status == DIVERGED_STATUS else 'unfinished'} {record['kind']}")
        kinds[kind] = kinds.get(kind, 0) + 1
    held = [f"{n} {kind}" for kind, n in sorted(kinds.items())]
    held += [f"{len(unreadable)} unreadable"] if unreadable else []
    return (f"found {', '.join(held) if held else 'no records'}; records are run folders' "
            f"run.json and published <row>/seed<k>.json files")
