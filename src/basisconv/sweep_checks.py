"""What a Hydra job's command line may be, checked before any work: every job of a sweep
(``-m``) before the first one runs (:func:`check_sweep_jobs`: each composes, passes the
config check, names no other job's run or published file, a training job finds its
dataset, and the sweep has a job at all), and what one run's start checks too (a config
group given a list, ``+group`` not the choice made, ``hydra.job.chdir=true``, a preset's
sweep started without ``-m``). Apart
from :mod:`basisconv.cli`, which says the refusals as one line and exits: these only raise
:class:`~basisconv.errors.ConfigError`, and call nothing of the entry points' handling.
A refused sweep's folder, which Hydra made before the checks, is removed here too."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.plugins.sweeper import Sweeper
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError

from . import distributed
from .checkpoint import CHECKPOINT, check_source_file
from .cifar10_location import dataset_missing
from .errors import BasisconvError, ConfigError
from .hydra_errors import added_group_line, interpolation_error_line, typed_overrides
from .override_checks import config_groups_of, listed_group_line, repeated_group_line
from .resuming import in_sweep

#: Hydra's folder of a sweep in which no job runs, holding its ``multirun.yaml`` alone: the
#: folder of the config before the sweep's values, where each job is named apart by a key
#: its run name carries (``-m experiment=basis_all basis.size=0.125,0.25`` made
#: ``multirun/resnet20-basis-all-0.5/``, a size not swept: found in the sweep review; each
#: job's ``.hydra/`` and record keep the sweep's line). Removed as the sweep ends.
unused_sweep_folders: set[Path] = set()


def check_sweep_jobs(check: Callable[[Any], None],
                     look_over: Callable[[list[tuple[list[str], Any]]], None] | None = None,
                     unread: Callable[[Any, str], str | None] | None = None,
                     reads_data: bool = False) -> None:
    """Check every job of a sweep with ``check`` (:func:`basisconv.config_checks.validate`)
    before the first one runs, where Hydra checks only that each composes: a value out of
    range in a sweep's last job (``basis.size=0.5,1.5``) is one line naming the job before
    anything trains, not an error after the jobs before it. Jobs that would publish their
    records to one file (``publish=`` given once for the sweep) are refused too: each would
    overwrite the one before. ``look_over(jobs)``, given each job's overrides and config,
    then says what the jobs together do not do (a key swept that no job reads:
    :func:`~basisconv.unread.warn_keys_no_sweep_job_reads`). ``unread(cfg, key)``: why a
    job does not read ``key`` (:func:`~basisconv.unread.unread_in_training`), whose source
    checkpoint is then not asked for (:func:`check_source_checkpoints`). ``reads_data``:
    each job reads its dataset as it starts (a training run), which is then looked for
    (:func:`check_dataset_found`)."""
    def validate_batch_is_legal(self, batch) -> None:
        folder = Path(str(self.config.hydra.sweep.dir))
        try:
            folders = check_batch(self, batch)
        except BaseException:  # (refused: the sweep folder Hydra just made holds no job)
            remove_unrun_sweep_folder(folder)
            raise
        if folder not in folders:  # (removed once the sweep ends: the launcher makes it)
            unused_sweep_folders.add(folder)

    def check_batch(self, batch) -> set[Path]:
        if distributed.launched_processes() > 1:
            # each job joins the process group anew, under the name its last job's left in
            # torchrun's store: a rank that got there first "joined" the stale group and the
            # job hung, silently, until the group's 30-minute timeout (found in review)
            raise ConfigError("a sweep (-m) does not run under torchrun: its second job hangs "
                              "joining the processes again; start one torchrun job per run "
                              "(each with its hydra.run.dir), or run the sweep in one "
                              "process per job (python, or hydra/launcher=slurm); nothing ran")
        if not batch:
            raise ConfigError(empty_sweep_line(self))
        # (Hydra's sweeper keeps a key's last override alone: no job's overrides show both;
        # unresolved, as a broken ${...} is named with its job below)
        given = OmegaConf.to_container(self.config.hydra.overrides.task, resolve=False)
        repeated = repeated_group_line(given, config_groups_of(self.hydra_context.config_loader))
        if repeated is not None:
            raise ConfigError(f"{repeated}; nothing ran")
        jobs, listed = [], {}
        for overrides in batch:
            cfg = checked_sweep_job(self, list(overrides), check, unread, reads_data)
            if (job := sweep_job_settings(cfg)) in listed:
                # its folder is named by its overrides: the second ran in the first's folder
                # (found it complete, or raced it under a parallel launcher), or, where the
                # value was written two ways (seed=0,00), the same run in a second folder
                raise ConfigError(same_run_line(listed[job], list(overrides)))
            jobs.append((list(overrides), cfg))
            listed[job] = list(overrides)
        check_published_apart(jobs)
        if look_over is not None and distributed.first_process():
            look_over(jobs)
        return {Path(str(OmegaConf.select(cfg, "hydra.sweep.dir"))) for _, cfg in jobs}
    Sweeper.validate_batch_is_legal = validate_batch_is_legal


def sweep_job_settings(cfg: Any) -> str:
    """A sweep job's config but Hydra's own node, as text: jobs alike in it are one run,
    however their overrides were written (Hydra keeps ``seed=00`` as written, a string the
    schema reads as 0). Types stay apart (``basis.size=1`` is one filter, ``1.0`` all)."""
    settings = OmegaConf.to_container(cfg, resolve=False)
    settings.pop("hydra", None)
    return json.dumps(settings, sort_keys=True, default=str)


def same_run_line(first: list[str], again: list[str]) -> str:
    """The line refusing two sweep jobs (their overrides) that would train one run. Jobs
    apart only in Hydra's own settings (a preset's ``hydra.sweeper.params`` sweeping
    ``hydra.sweep.subdir``) are said so: they repeat no value, and were told they did. Jobs
    whose overrides Hydra writes alike repeat a value; jobs whose overrides differ but
    make one config (``seed=0`` and ``seed=00``) are told which overrides those are: the
    line gave ``seed=0,0`` as its example to every job, one that fits neither."""
    def hydras(override: str) -> bool:  # (a setting of Hydra's, not in the run's config)
        return override.lstrip("+~").startswith(("hydra.", "hydra/"))

    differ = [o for o in again if o not in first] + [o for o in first if o not in again]
    if differ and all(map(hydras, differ)):
        return (f"the sweep jobs {' '.join(first)} and {' '.join(again)} differ only in "
                f"Hydra's settings ({', '.join(differ)}), so both would train the same "
                f"run: sweep a key of the run, or give Hydra's settings once; nothing ran")
    first_line, again_line = " ".join(first), " ".join(again)
    if first_line == again_line:
        return (f"the sweep lists the job {first_line} twice (a value given twice, e.g. "
                f"seed=0,0, or in spellings Hydra writes as one, e.g. basis.size=0.5,0.50): "
                f"give each value once; nothing ran")
    first_only = " ".join(o for o in first if o not in again and not hydras(o))
    again_only = " ".join(o for o in again if o not in first and not hydras(o))
    return (f"the sweep lists the job {first_line} twice, as {again_line}: {first_only} "
            f"and {again_only} make the same config: keep one of them; nothing ran")


def checked_sweep_job(sweeper: Any, overrides: list[str], check: Callable[[Any], None],
                      unread: Callable[[Any, str], str | None] | None = None,
                      reads_data: bool = False) -> Any:
    """The config of the sweep job ``overrides``, checked as the job checks itself when it
    starts (:func:`~basisconv.cli.exit_on_user_error`, then ``check``), but before any job
    runs: else every job failed alone, each leaving its folder. A job of a preset that
    sweeps keys of its own (``hydra.sweeper.params``) is refused: in another sweep it would
    run them once."""
    loader = sweeper.hydra_context.config_loader
    cfg = loader.load_sweep_config(sweeper.config, overrides)
    unswept = unswept_params(OmegaConf.select(cfg, "hydra.sweeper.params"), overrides)
    try:
        if unswept:
            raise ConfigError(f"its preset sweeps {' '.join(unswept)} (hydra.sweeper."
                              f"params), which a job of another sweep runs once; run "
                              f"that preset in a sweep of its own")
        check_one_config_per_group(overrides, config_groups_of(loader))
        check_added_groups_chosen(overrides, cfg.hydra.runtime.choices)
        check_runs_where_started(OmegaConf.select(cfg, "hydra.job.chdir"))
        check(cfg)
        check_source_checkpoints(cfg, unread)
        if reads_data:
            check_dataset_found(cfg)
    except (BasisconvError, InterpolationResolutionError) as err:
        said = (interpolation_error_line(err)
                if isinstance(err, InterpolationResolutionError) else err)
        raise ConfigError(f"the sweep job {' '.join(overrides)}: {said}; "
                          f"nothing ran") from None
    return cfg


def check_published_apart(jobs: list[tuple[list[str], Any]]) -> None:
    """Refuse sweep jobs (their overrides and configs) that publish their records to one
    file (``publish=`` given once for the sweep): each would overwrite the one before.
    Paths are compared as the jobs write them, from the folder the sweep started in (the
    configs' ``hydra.job.chdir=false``): ``publish=a.json,./a.json`` is one file twice."""
    published: dict[Path, list[str]] = {}
    for _, cfg in jobs:
        path = OmegaConf.select(cfg, "publish", throw_on_resolution_failure=False)
        if path is not None:
            published.setdefault(Path(str(path)).resolve(), []).append(str(path))
    for given in published.values():
        if len(given) > 1:
            path, count = given[0], len(given)
            also = sorted(set(given) - {path})
            written = f" (written {', '.join(also)} too)" if also else ""
            raise ConfigError(f"publish={path} is the same file for {count} jobs of the "
                              f"sweep{written}, each overwriting the one before: name the "
                              f"swept keys in it, e.g. publish='runs/seed${{seed}}.json' for "
                              f"seed=0,1; nothing ran")


def empty_sweep_line(sweeper: Any) -> str:
    """One line for a sweep with no job: a sweep value that expands to nothing
    (``selection=glob(sensitvity*)``, a misspelt option; ``glob`` over a key that is no
    config group; ``seed=range(0)``) made Hydra launch 0 jobs and exit with status 0,
    leaving a ``multirun/<name>/<date>/`` that holds its ``multirun.yaml`` alone."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ValueType

    loader = sweeper.hydra_context.config_loader
    given = [*sweeper._parse_config(), *sweeper.config.hydra.overrides.task]
    for override in OverridesParser.create(config_loader=loader).parse_overrides(given):
        if override.is_discrete_sweep() and not list(override.sweep_string_iterator()):
            key = override.key_or_group
            options = loader.get_group_options(key)
            why = (f"the configs of {key} are {', '.join(options)}" if options else
                   f"glob() chooses among a config group's configs, and {key} is none"
                   if override.value_type == ValueType.GLOB_CHOICE_SWEEP else "an empty range")
            return (f"the sweep has no job: {override.input_line} gives no value ({why}); "
                    f"nothing ran")
    return "the sweep has no job; nothing ran"


def remove_unrun_sweep_folder(folder: Path) -> None:
    """Remove a sweep's folder that holds nothing but the ``multirun.yaml`` Hydra wrote
    before the jobs were checked (a refused sweep: else each typo in a sweep leaves
    ``multirun/<name>/<date>/`` behind, a sweep that never ran), and the default layout's
    ``multirun/<name>/`` when that leaves it empty. A folder with any job's folder in it
    (a sweep run again in its folder) is kept."""
    try:
        if folder.is_dir() and [path.name for path in folder.iterdir()] == ["multirun.yaml"]:
            shutil.rmtree(folder)
            if folder.resolve().parent.parent == Path.cwd().resolve() / "multirun":
                folder.parent.rmdir()  # (only if empty)
    except OSError:
        pass


def check_runs_where_started(chdir: bool) -> None:
    """``hydra.job.chdir=true`` runs the job inside its run folder, where every relative
    path a config names (``data.root``, ``publish``, ``sensitivity.cache_dir``,
    ``sensitivity.restore_from``) would silently be read and written instead: a protocol's
    records would land in each run's folder, so none is ever found and skipped."""
    if chdir:
        raise ConfigError("hydra.job.chdir=true would read every relative path (data.root, "
                          "publish, sensitivity.cache_dir) from inside the run folder; leave it "
                          "false, the configs' default")


def check_source_checkpoints(cfg: Any,
                             unread: Callable[[Any, str], str | None] | None = None) -> None:
    """Each trained checkpoint a sweep job names (``basis.source_checkpoint``,
    ``sensitivity.source_checkpoint``) is a file: a run looks for it only as it builds its
    model or estimate, so a misspelt path failed a sweep's sensitivity job after the jobs
    before it had trained (found in the sweep review). One run finds it before it trains.
    A job that resumes from its folder's checkpoint reads neither (its source may be gone:
    :func:`~basisconv.network.build_network`), so a sweep run again in its folders after
    the source was removed was refused, though each job was complete (found in review).
    Nor is a key the job does not read (``unread``: a first_k job's
    ``sensitivity.source_checkpoint``, which one run only warns of)."""
    folder = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
    if (OmegaConf.select(cfg, "trainer.resume", default=None)
            and (folder / CHECKPOINT).exists()):
        return
    for key in ("basis.source_checkpoint", "sensitivity.source_checkpoint"):
        path = OmegaConf.select(cfg, key, default=None)
        if path is not None and not (unread and unread(cfg, key)):
            check_source_file(str(path), key)


#: Hydra's launchers whose jobs run on this machine, where the dataset is looked for.
LOCAL_LAUNCHERS = ("BasicLauncher", "JoblibLauncher")


def check_dataset_found(cfg: Any) -> None:
    """A sweep job's CIFAR-10 is where ``data.root`` says (or a download is allowed): a
    run looks for it only as it starts, so a sweep without the data (the default root,
    ``./data``, on a fresh clone) failed each job in turn, leaving a folder of each
    (found in a new user's walk through the README). A job run again in its folder is
    left to say what it needs itself (a complete one reads no data), and so is a job a
    cluster runs (SLURM's submitit launcher): its node may see folders this one does not
    (a node-local disk)."""
    launcher = str(OmegaConf.select(cfg, "hydra.launcher._target_", default="") or "")
    if launcher and not launcher.endswith(LOCAL_LAUNCHERS):
        return
    if (Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)).exists():
        return
    missing = dataset_missing(cfg.data)
    if missing is not None:
        raise ConfigError(missing.rstrip("."))


def unswept_params(params: Any, overrides: list[str]) -> list[str]:
    """The sweep values a config lists (``hydra.sweeper.params``) as ``key=values``, of the
    keys the command line's ``overrides`` give no value of their own: what one job of the
    config would silently run at a single value."""
    given = {override.split("=", 1)[0].lstrip("+~") for override in overrides}
    return [f"{key}={values}" for key, values in (params or {}).items() if key not in given]


def check_added_groups_chosen(overrides: list[str] | None = None,
                              choices: Any = None) -> None:
    """``+group=option`` for a group the config chooses already is refused by Hydra
    (:func:`~basisconv.hydra_errors.added_group_line`), except where the config overrides
    that group itself: ``scripts/sensitivity.py +selection=random`` ran the
    ``sensitivity_budget`` policy its config sets, silently. A :class:`ConfigError` naming
    ``group=option`` when the choice made is not the one given."""
    if overrides is None:  # this job's (else a sweep job's, checked before the sweep)
        if not HydraConfig.initialized():  # (the benchmarks)
            return
        overrides, choices = typed_overrides(), HydraConfig.get().runtime.choices
    for override in overrides:
        key, _, option = override.partition("=")
        group, option = key[1:], option.strip("'\"")
        if (key.startswith("+") and not key.startswith("++") and group in choices
                and not option.startswith("[") and str(choices[group]) != option):
            raise ConfigError(added_group_line(group, option))


def check_one_config_per_group(overrides: list[str] | None = None,
                               is_group: Callable[[str], bool] | None = None) -> None:
    """A config group given a list of its configs (``model=[resnet8,resnet20]``, meant as a
    sweep): Hydra merges them into one config, the last one's values winning, so the run
    trained ResNet-20 alone, silently; or given twice (``experiment=basis_all
    experiment=baseline``), of which Hydra keeps the last. A :class:`ConfigError` naming the
    sweep to write (:func:`~basisconv.override_checks.listed_group_line`,
    :func:`~basisconv.override_checks.repeated_group_line`)."""
    if overrides is None:  # this job's (else a sweep job's, checked before the sweep)
        if not HydraConfig.initialized() or not GlobalHydra.instance().is_initialized():
            return  # (the benchmarks; a job in a launcher's own process)
        loader = GlobalHydra.instance().config_loader()
        overrides = typed_overrides()
        is_group = config_groups_of(loader)
    line = listed_group_line(overrides, is_group) or repeated_group_line(overrides, is_group)
    if line is not None:
        raise ConfigError(line)


def check_not_an_unswept_sweep() -> None:
    """A config that lists sweep values (``hydra.sweeper.params``, e.g.
    ``experiment=basis_size_sweep``) started without ``-m`` runs one job at the key's plain
    value, silently one of the sweep's runs (or none of them): a :class:`ConfigError`
    naming ``-m``, unless the command line gives each such key its one value."""
    if not HydraConfig.initialized() or in_sweep():  # (not initialized: the benchmarks)
        return
    unswept = unswept_params(HydraConfig.get().sweeper.get("params"), typed_overrides())
    if unswept:
        raise ConfigError(f"the config sweeps {' '.join(unswept)} (hydra.sweeper.params), which "
                          f"one run ignores: start it with -m to run the sweep, or give "
                          f"{', '.join(u.split('=')[0] + '=<one value>' for u in unswept)} for "
                          f"one run")


def remove_unused_sweep_folders() -> None:
    """Remove the folders of :data:`unused_sweep_folders`, as the sweep that made them ends."""
    for folder in unused_sweep_folders:
        remove_unrun_sweep_folder(folder)
    unused_sweep_folders.clear()
