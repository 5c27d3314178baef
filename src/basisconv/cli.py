"""Shared behaviour of the command-line entry points in ``scripts/``: a user's error as
one line and exit status 2 (:func:`exit_on_user_error`), a stop's line and status, a
sweep's failed jobs summed up, a refused start's folder removed, and the argparse
scripts' default ``results/`` and their output refused before any work when it cannot be
written. What the line says of Hydra's own errors is :mod:`basisconv.hydra_errors`'s;
what the overrides may be before Hydra reads them, :mod:`basisconv.override_checks`'s; what
a sweep or a run's command line may be, :mod:`basisconv.sweep_checks`'s; what a refused
start takes back of what Hydra wrote, :mod:`basisconv.start_writes`'s; how a refusal or a
stop is said and exits (one line, its status, rank 0 alone under torchrun),
:mod:`basisconv.exits`'s."""

from __future__ import annotations

import functools
import importlib
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn, TypeVar, TYPE_CHECKING

import hydra._internal.utils as hydra_utils
import hydra.core.utils as hydra_core_utils
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import RunMode
from omegaconf.errors import InterpolationResolutionError

from . import distributed, start_writes
from .config_checks import check_no_tilde
from .errors import (BasisconvError, ConfigError, DatasetError, FolderInUse, TrainingDiverged,
                     memory_said, new_job_warns_again, one_line)
from .exits import exit_refused, exit_stopped, log_to_files
from .hydra_errors import hydra_error_line, interpolation_error_line
from .override_checks import (config_groups_of, deleted_key_override, group_value_override,
                              malformed_override, run_name_override)
from .records import unwritable_folder
from .resuming import in_sweep, sweep_folder_override
from .signals import sigterm_stops
from .sweep_checks import (check_added_groups_chosen, check_not_an_unswept_sweep,
                           check_one_config_per_group, check_runs_where_started,
                           remove_unused_sweep_folders)

if TYPE_CHECKING:
    import argparse

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable)

#: Hydra's own error reporter (multi-line, exit 1), used once the task has started.
hydra_run_and_report = hydra_utils.run_and_report
#: Hydra's ``@hydra.main`` module (the name ``hydra.main`` is also its decorator) and the
#: function it runs the command line with, which refuses two modes (``-m --cfg job``)
#: with a traceback before any reporter runs.
hydra_main_module = importlib.import_module("hydra.main")
hydra_run_hydra = hydra_main_module._run_hydra
#: Hydra's function that runs a run or a sweep (not ``--cfg``, ``--info``, ``--help``) once
#: its mode is known: ``-m`` (``--multi``) or ``hydra.mode`` (on the command line, ``++``
#: too, or in a config).
hydra_run_app = hydra_utils._run_app
#: Hydra's builder of its command-line parser (``--help``, ``-m``, ``--cfg``, overrides).
hydra_args_parser = hydra_main_module.get_args_parser
task_started = False

#: The folders of the jobs of this sweep that stopped with a user error (each said why),
#: and the override that runs the sweep again in its folders (:func:`sweep_folder_override`).
failed_jobs: list[str] = []
resume_override: list[str] = []
#: The failed jobs that diverged: folder -> the learning rate to lower (``trainer.lr``).
#: The same command diverges again, so the summary names the fix, not a rerun.
diverged_jobs: dict[str, str] = {}


class SweepJobFailed(Exception):
    """A sweep job stopped with a user error, already reported in one line. Not a
    ``SystemExit``: Hydra marks the job failed and runs the sweep's other jobs; its result
    (:func:`failed_job_unsaid`) records it for :func:`run_and_report` to sum up. ``lower``:
    for a job that diverged, the learning rate whose lower value is the fix; else None."""

    def __init__(self, message: str, folder: str, override: str, lower: str | None = None):
        super().__init__(message, folder, override, lower)  # (args: pickled through submitit)


def args_parser_intermixed() -> argparse.ArgumentParser:
    """Hydra's command-line parser, reading the overrides on both sides of a flag: Hydra's
    own reading (``parse_args``) took those before the first flag alone, so ``profile=quick
    -m seed=0,1`` (a sweep added to a command) was argparse's usage, nine lines, and
    "unrecognized arguments: seed=0,1", naming no fix (found in review). What it refuses
    (``--cfg jbo``, an unknown flag) is one line too, not the usage before it."""
    parser = hydra_args_parser()
    parser.parse_args = parser.parse_intermixed_args  # type: ignore[method-assign]
    parser.error = refuse_argument  # type: ignore[method-assign]
    return parser


def refuse_argument(message: str) -> NoReturn:
    """argparse's refusal of a command line, in one line. An override read as ``--info``'s
    value (``--info seed=0``: the word after --info, if any, is what to show) is said to
    go before --info: argparse named the choices, not why an override was one. argparse
    quotes the word as Python does: in double quotes where it holds a single one
    (``--info "model.name='x'"``)."""
    misread = re.match(r"argument --info/-i: invalid choice: (?:'([^']*=[^']*)'|"
                       r"\"([^\"]*=[^\"]*)\")", message)
    if misread:
        override = misread[1] or misread[2]
        message += (f"; --info reads the word after it as what to show: put the overrides "
                    f"first ({override} --info), or name what to show (--info all "
                    f"{override})")
    exit_refused(message)


def run_hydra(*args, **kwargs) -> Any:
    """Hydra's ``_run_hydra`` with its refusal of two modes at once in one line."""
    try:
        return hydra_run_hydra(*args, **kwargs)
    except ValueError as err:
        if task_started or os.environ.get("BASISCONV_DEBUG") or "Only one of" not in str(err):
            raise
        # (else -m --cfg job is Hydra's traceback)
        exit_refused(f"{err} at a time; to see one sweep job's config, give --cfg job with "
                     f"that job's overrides, without -m")


def run_and_report(func: Callable[[], Any]) -> Any:
    """Hydra's error reporter, for the errors before the task starts (a misspelt key, a
    wrong type, an unknown option, a malformed override): one line and exit status 2, as
    for the package's own errors; ``BASISCONV_DEBUG=1`` shows Hydra's full report."""
    if task_started or os.environ.get("BASISCONV_DEBUG"):
        try:
            return hydra_run_and_report(func)
        finally:  # (with BASISCONV_DEBUG=1 a sweep's unused folder stayed: found in review)
            remove_unused_sweep_folders()
    bad = malformed_override(sys.argv[1:])
    if bad is not None:
        exit_refused(f"the override {bad!r} has no key; write key=value, e.g. "
                     f"trainer.epochs=3")
    if GlobalHydra.instance().is_initialized():  # (the app's config groups are known)
        is_group = config_groups_of(GlobalHydra.instance().config_loader())
        # (a training app's run name: validate says it where it comes from elsewhere)
        problem = deleted_key_override(sys.argv[1:], is_group) or (
            run_name_override(sys.argv[1:]) if is_group("model") else None)
        if problem is not None:
            exit_refused(problem)
    for arg in sys.argv[1:]:  # (else the run is written into this folder)
        key, given, value = arg.lstrip("+").partition("=")
        if key in ("hydra.run.dir", "hydra.sweep.dir") and given and not value.strip():
            exit_refused(f"{key} is empty (an unset shell variable?), which would write the "
                         f"run into {os.getcwd()}; give it a folder, e.g. "
                         f"{key}=outputs/my-run")
        if key in ("hydra.run.dir", "hydra.sweep.dir") and given:
            try:  # (Hydra makes the folder before any check of ours: one named ~)
                check_no_tilde(key, value.strip("'\""))
            except ConfigError as err:
                exit_refused(str(err))
    try:
        returned = func()
        if failed_jobs:
            say_failed_jobs(jobs_launched(returned))
            sys.exit(2)
        return returned
    except Exception as ex:  # noqa: BLE001 - before the task, every error is the config's
        if task_started:  # raised by the task (a multirun's later jobs): Hydra reports it
            if failed_jobs:  # (the jobs refused before or after it, said first)
                say_failed_jobs()
            caught = ex

            def reraise():
                raise caught
            return hydra_run_and_report(reraise)
        if isinstance(ex, BasisconvError):  # (our own line, e.g. a sweep job's check:
            exit_refused(one_line(str(ex)))  # Hydra has no fuller message to show)
        line = hydra_error_line(ex, sys.argv[1:])
        if "Config group override must be a string" in str(ex):  # model=null, basis=0.25
            got = str(ex).rpartition("Got ")[2].strip().rstrip(".")
            line = group_value_override(sys.argv[1:], got) or line
        exit_refused(f"{one_line(line)} (BASISCONV_DEBUG=1 shows Hydra's full message)")
    finally:  # (a sweep ended, failed or stopped alike)
        remove_unused_sweep_folders()


def jobs_launched(returned: Any) -> int | None:
    """How many jobs a sweep launched, from what Hydra's sweeper returned: the basic
    sweeper's is a list of its batches, each a list of its jobs' results; None for a
    return of another form (another sweeper's, which may return nothing)."""
    try:
        results = [job for batch in returned for job in batch]
    except TypeError:  # (not a list of lists: None, say)
        return None
    return len(results) if all(isinstance(job, JobReturn) for job in results) else None


def say_failed_jobs(jobs: int | None = None) -> None:
    """The sweep's last line: which of its jobs stopped with a user error (each said why
    in its own line) and the override that runs the sweep again in its folders; that the
    other jobs ran, unless the failed ones are all the ``jobs`` the sweep launched (None:
    not known). Jobs that diverged are named apart with their fix, a lower learning rate
    (a new sweep value): the same command, which the other failures get past once fixed,
    diverges again."""
    folders = {str(Path(job).parent) for job in failed_jobs}
    where = f" in {folders.pop()}" if len(folders) == 1 else ""

    def names(jobs: list[str]) -> str:
        return ", ".join(Path(job).name if where else job for job in jobs)
    diverged = [job for job in failed_jobs if job in diverged_jobs]
    others = [job for job in failed_jobs if job not in diverged_jobs]
    # (found in review: a sweep whose every job failed said the other jobs ran)
    rest = "no job of the sweep finished" if len(failed_jobs) == jobs else "the other jobs ran"
    line = (f"error: {len(failed_jobs)} job(s) of the sweep{where} failed, each with its "
            f"line above (also in its train.log): {names(failed_jobs)}; {rest}.")
    if diverged:
        lower = " or ".join(sorted({diverged_jobs[job] for job in diverged}))
        line += (f" {names(diverged)} diverged, and the same command diverges again: sweep "
                 f"a lower {lower} instead (a new value).")
    fix = f"After the fix of {names(others)}, run" if diverged and others else "After the fix, run"
    again = "the sweep" if diverged else "the same command"
    print(f"{line} {fix} {again} with {resume_override[0]}: finished jobs are skipped",
          file=sys.stderr)


def run_app(*, multirun: bool, mode: Any, overrides: list[str], **kwargs: Any) -> Any:
    """Hydra's ``_run_app`` with the run-folder override of the other mode refused first
    (:func:`unread_folder_override`), in the mode Hydra decided (found in review: read off
    the command line as ``-m`` alone, it refused the ``hydra.sweep.dir`` of sweeps started
    by ``--multi``, ``++hydra.mode=MULTIRUN`` or a preset's ``hydra.mode: MULTIRUN``, and
    ``--cfg=job``, which shows the config)."""
    unread = unread_folder_override(overrides, multirun or mode == RunMode.MULTIRUN)
    if unread is not None:
        exit_refused(unread)
    return hydra_run_app(multirun=multirun, mode=mode, overrides=overrides, **kwargs)


def unread_folder_override(overrides: list[str], sweep: bool) -> str | None:
    """One line for the run-folder override of the other mode, which Hydra ignores:
    ``hydra.sweep.dir=<a sweep job's folder>`` without ``-m`` (meant to resume that job)
    trained from epoch 1 in a new ``outputs/<name>/<date>/``, and ``-m ...
    hydra.run.dir=<folder>`` swept into ``multirun/``, each silently; None otherwise."""
    unread = "hydra.run.dir" if sweep else "hydra.sweep.dir"
    given = next((arg for arg in overrides if arg.lstrip("+").partition("=")[0] == unread),
                 None)
    if given is None:
        return None
    if sweep:
        return (f"{given} is read by one run only: this sweep would write under "
                f"multirun/<name>/<date>; give hydra.sweep.dir=<folder> for a sweep, or "
                f"drop -m")
    return (f"{given} is read by a sweep (-m) only: this run would start over in "
            f"outputs/<name>/<date>; give hydra.run.dir=<folder> for one run (a sweep job's "
            f"own folder resumes that job), or add -m")


#: Hydra's reader of a job's result, which writes "Error executing job with overrides:
#: [...]" before it raises a failed job's error.
hydra_return_value = hydra_core_utils.JobReturn.return_value


def failed_job_unsaid(job: Any) -> Any:
    """``JobReturn.return_value`` without Hydra's line and raise for a sweep job that
    stopped with a user error: that job said why in its own line, and the sweep's summary
    (:func:`say_failed_jobs`) names every failed job (Hydra's line named the first alone).
    Not raised, so that Hydra's sweeper reads the later jobs' results too: raised, it
    stopped there, and a later job's crash was said nowhere (found in the sweep review)."""
    if job.status == JobStatus.FAILED and isinstance(job._return_value, SweepJobFailed):
        message, folder, override, lower = job._return_value.args
        if folder not in failed_jobs:  # the job ran in another process (submitit, SLURM)
            print(f"error: {message}", file=sys.stderr)  # its line went to the job's log
            failed_jobs.append(folder)
            resume_override.append(override)
            if lower is not None:
                diverged_jobs[folder] = lower
        return None
    return hydra_return_value.fget(job)


def exit_on_user_error(fn: F) -> F:
    """Print a :class:`BasisconvError` as one line and exit with status 2, instead of a
    stack trace (torch's out-of-memory error too: :func:`~basisconv.errors.memory_said`);
    ``BASISCONV_DEBUG=1`` shows the trace. A run stopped by SIGINT (Ctrl-C)
    or SIGTERM says in one line where it stopped and exits with 130 or 143. Either line
    also goes to the run's log file, unless the folder is another run's (its log is that
    run's); under ``torchrun`` rank 0 alone says it. A start refused in a folder Hydra made
    for it removes that folder (:func:`~basisconv.start_writes.remove_made_folders`).
    Hydra's errors before the task starts are one line with exit status 2 as well (see
    :func:`run_and_report`)."""
    hydra_utils.run_and_report = run_and_report
    hydra_main_module._run_hydra = run_hydra
    hydra_main_module.get_args_parser = args_parser_intermixed
    hydra_utils._run_app = run_app
    hydra_core_utils._save_config = start_writes.save_config_keeping_old
    hydra_core_utils.JobReturn.return_value = property(failed_job_unsaid,
                                                       hydra_return_value.fset)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        global task_started
        task_started = True
        new_job_warns_again()
        speaks = distributed.first_process()
        try:
            with sigterm_stops():
                try:
                    check_not_an_unswept_sweep()
                    check_one_config_per_group()
                    check_added_groups_chosen()
                    if HydraConfig.initialized():
                        check_runs_where_started(HydraConfig.get().job.chdir)
                    with memory_said():  # (where no producer said what its work keeps)
                        return fn(*args, **kwargs)
                except (BasisconvError, InterpolationResolutionError) as err:
                    # a refused start leaves an earlier run's files as they were
                    start_writes.restore_replaced()
                    if os.environ.get("BASISCONV_DEBUG"):
                        raise
                    message = one_line(err)
                    if isinstance(err, InterpolationResolutionError):  # e.g. name=${typo}
                        message = interpolation_error_line(err)
                    if speaks and not isinstance(err, FolderInUse):  # (else another run's log)
                        log_to_files(f"error: {message}")
                    if in_sweep():  # the sweep's other jobs still run
                        if speaks:
                            print(f"error: {message}", file=sys.stderr)
                        failed_jobs.append(HydraConfig.get().runtime.output_dir)
                        resume_override.append(
                            sweep_folder_override(args[0] if args else None))
                        if isinstance(err, TrainingDiverged):
                            diverged_jobs[failed_jobs[-1]] = err.lr_key or "learning rate"
                        raise SweepJobFailed(message, failed_jobs[-1], resume_override[-1],
                                             diverged_jobs.get(failed_jobs[-1])) from None
                    # (a start refused, not a run that failed; a broken ${...} is found by
                    # the config check, config_keys.resolve_all, before any work)
                    refused = isinstance(err, (ConfigError, DatasetError,
                                               InterpolationResolutionError)
                                         ) and not isinstance(err, FolderInUse)
                    if speaks and refused:
                        start_writes.remove_made_folders()
                    exit_refused(message)
                except KeyboardInterrupt as err:
                    exit_stopped(err, speaks)
                finally:
                    start_writes.replaced.clear()
                    start_writes.made_folders.clear()
        except KeyboardInterrupt as err:  # one that came as sigterm_stops put back the
            exit_stopped(err, speaks)     # handler before it (was a trace of the stop)

    return wrapper  # type: ignore[return-value]


# ----------------------------------------------------------------------------- outputs
def results_folder(script: str) -> Path:
    """The ``results/`` of the checkout whose ``scripts/`` holds ``script`` (an entry
    point's ``__file__``): where its outputs go by default, from whichever folder it runs."""
    return Path(script).resolve().parents[1] / "results"


def refuse_unwritable(parser: argparse.ArgumentParser, given: str, folder: Path,
                      give: str = "path") -> None:
    """A usage error (one line, exit status 2) when ``folder``, where the output option
    ``given`` (``--out <path>``) writes, cannot be written: said before the minutes of
    measuring that a failed write at the end would lose. ``give``: what to give instead."""
    if blocker := unwritable_folder(str(folder)):
        parser.error(f"{given} cannot be written ({blocker}); give another {give}")
