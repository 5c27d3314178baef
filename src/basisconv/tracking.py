"""Experiment tracking through Weights & Biases, made harmless to training.

The run record (``run.json``) is where results live; wandb is a view of them. So every
wandb call here is guarded: a failure (no network, no account, a broken install) is
logged once and tracking is switched off, and training goes on; and wandb's own waits, at
the start and for the uploads at the end, are bounded (``logger.init_timeout_s``,
``logger.finish_timeout_s``), so a network that goes away cannot hang a run or a sweep.
``finish`` is safe to call in a ``finally``, so each job of a Hydra multirun gets its own
wandb run.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from pathlib import Path
from typing import Any, Iterator

from .errors import one_line

log = logging.getLogger(__name__)


class Tracker:
    """A wandb run (or nothing, for ``logger.backend=none`` or ``mode=disabled``).

    ``resume``: the ``wandb`` entry of the record of the run this one resumes (its earlier
    wandb run). The job then stays one wandb run: the same id, resumed where wandb can (an
    online run), and ``history`` (the epochs done before) is logged again where wandb does
    not have it (an offline run, which wandb cannot resume: ``wandb sync`` of the later
    offline folder then replaces the earlier one with the whole history)."""

    def __init__(self, logger_cfg: Any, config: dict, output_dir: Path, name: str, *,
                 resume: dict | None = None, history: list[dict] = ()):
        self.run = self.info = None
        self.working = False  # False once a call failed: nothing more is sent but finish()
        self.next_step = 0  # the first step wandb takes: later, for a resumed online run
        self.said_held = False  # whether log() said that wandb keeps its earlier steps
        if logger_cfg.backend != "wandb" or logger_cfg.mode == "disabled":
            return
        same_run = {"id": resume["id"], "resume": "allow"} if resume else {}
        try:
            import wandb

            if logger_cfg.mode == "online" and not _logged_in(wandb):
                raise wandb.errors.UsageError(
                    "no wandb login for logger.mode=online: run `wandb login` or set "
                    "WANDB_API_KEY, or log offline (logger.mode=offline) and `wandb sync` later")
            # bounded waits: a lost network must not hang a run at its start or its end
            settings = wandb.Settings(init_timeout=logger_cfg.init_timeout_s,
                                      finish_timeout=logger_cfg.finish_timeout_s)
            current = wandb.run
            try:
                with _logging_errors_unsaid():
                    self.run = wandb.init(
                        project=logger_cfg.project, entity=logger_cfg.entity,
                        group=logger_cfg.group, tags=list(logger_cfg.tags), name=name,
                        config=config, dir=str(output_dir), mode=logger_cfg.mode,
                        reinit="finish_previous", settings=settings, **same_run)
            except KeyboardInterrupt:
                # a stop late in init, once wandb made its new run the current one: ended
                # here, failed (the next wandb.init in this process ended it as finished)
                self.run = wandb.run if wandb.run is not current else None
                self.finish(failed=True)
                raise
            # what the run record keeps about the wandb run, to find it again (an offline
            # run has no URL: asked for one, wandb warned so in every default run)
            mode = self.run.settings.mode
            self.info = {"id": self.run.id, "dir": str(Path(self.run.dir).parent),
                         "mode": mode, "url": None if mode == "offline" else self.run.url}
            self.working = True
            self.next_step = self.run.step  # online and resumed: after the steps it holds
        except Exception as err:  # noqa: BLE001 - tracking must never stop training
            # wandb's own timeout advice names its Python API: here the wait is a config key
            ours = (f" (here the wait is logger.init_timeout_s={logger_cfg.init_timeout_s})"
                    if "init_timeout" in str(err) else "")
            # online, wandb's own words (an unreachable host: "CommError: <no message>")
            # leave nothing to do; where they have not said it already, offline is the fix
            offline = (" Without a network, logger.mode=offline keeps wandb's run in the "
                       "run's folder for `wandb sync` later." if logger_cfg.mode == "online"
                       and "logger.mode=offline" not in str(err) else "")
            log.warning("wandb could not start (%s: %s%s); training goes on without it. "
                        "The run record run.json has every metric.%s", type(err).__name__,
                        one_line(err), ours, offline)
            self.finish(failed=True)
            return
        try:
            for row in history:
                if row["epoch"] >= self.next_step:
                    self.log(row, step=row["epoch"])
        except KeyboardInterrupt:  # a stop while sending: the run is not left open
            self.finish(failed=True)
            raise

    def _guard(self, what: str, fn, *args, **kwargs) -> None:
        if not self.working:
            return
        try:
            with _logging_errors_unsaid():
                fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001
            log.warning("wandb %s failed (%s: %s); tracking is off for the rest of this run.",
                        what, type(err).__name__, one_line(err))
            self.working = False

    def log(self, metrics: dict, step: int) -> None:
        """Log ``metrics`` at ``step``, unless the wandb run already holds that step: an
        online run resumed after a stop between checkpoints (``trainer.checkpoint_every_s``)
        trains epochs again that wandb logged before the stop, and wandb refuses a step
        below its last one. Their first values stay there, said once; the retrained ones
        are in ``run.json``."""
        if step < self.next_step:
            if self.working and not self.said_held:
                last = self.next_step - 1
                again = f"epoch {step}" if step == last else f"epochs {step}-{last}"
                log.info("wandb already holds epochs up to %d of this run, logged before it "
                         "stopped, and keeps them; %s as trained again %s in run.json", last,
                         again, "is" if step == last else "are")
                self.said_held = True
            return
        # committed now: wandb holds a row logged with step= open until the next one or
        # finish(), and writing it then overwrote the summary keys it shares with the final
        # metrics written after it (the last epoch's step times, not their mean)
        self._guard("log", lambda: self.run.log(metrics, step=step, commit=True))

    def table(self, key: str, frame) -> None:
        """Log a pandas DataFrame as a wandb table."""
        def log_table():
            import wandb

            self.run.log({key: wandb.Table(dataframe=frame)})
        self._guard("table", log_table)

    def summary(self, values: dict) -> None:
        self._guard("summary", lambda: self.run.summary.update(values))

    def finish(self, failed: bool = False) -> None:
        """End the wandb run, also after a call to it failed (it is still open, and would
        otherwise linger until the process exits, or, in a notebook, past it). Such a run
        lacks what came after the failure (later epochs, the final metrics), so it ends
        marked failed, not as a finished run that ``source=wandb`` analysis would read.

        A finish that fails after an earlier failure was said (wandb's service process
        killed: every call then fails) says nothing more; one that fails drops wandb's
        service at once, which otherwise printed a traceback from wandb's exit hook after
        the run had ended well."""
        if self.run is not None:
            said = not self.working
            try:
                with _logging_errors_unsaid():
                    self.run.finish(exit_code=1 if failed or said else 0)
            except Exception as err:  # noqa: BLE001 - tracking must never stop training
                if not said:
                    log.warning("wandb finish failed (%s: %s); the run record run.json has "
                                "every metric.", type(err).__name__, one_line(err))
                _drop_wandb_service()
        self.run, self.working = None, False


def project_problem(project: str) -> str | None:
    """Why wandb refuses ``project`` as a project name, in its own words, or None. Asked of
    wandb itself (its ``Settings`` check the name as ``wandb.init`` does: no ``/ \\ # ? %
    :``, at most 128 characters), so the rule is the installed wandb's; at ``wandb.init``
    a refused name is a warning and the run trains without wandb, so the config checks
    ask before any run trains. Without wandb (not installed, or broken) there is no rule to
    ask: the :class:`Tracker` says that it could not start."""
    try:
        import wandb
    except Exception:  # noqa: BLE001 - not installed, or broken: the Tracker says so
        return None
    try:
        wandb.Settings(project=project)
    except wandb.errors.UsageError as err:
        return one_line(err).removeprefix(f"Invalid project name {project!r}: ")
    except Exception:  # noqa: BLE001 - only wandb's refusal of the name is an answer
        return None
    return None


def _logged_in(wandb) -> bool:
    """Whether wandb has credentials, asked without its login prompt: with none, an
    online ``wandb.init`` on a terminal (tmux, screen) waits for an answer at that prompt,
    unbounded by ``init_timeout``, so a run left alone never trained. A wandb too old to
    ask so (``wandb.login`` without ``prompt``), or a run already open, lets init decide.

    Asked as for an online run: while wandb's own mode is offline (``WANDB_MODE=offline``,
    or ``wandb offline``), ``wandb.login`` answers False without looking, though
    ``wandb.init(mode="online")`` goes online; a run with a key was refused (found in
    review)."""
    if wandb.run is not None or "prompt" not in inspect.signature(wandb.login).parameters:
        return True
    with _wandb_mode_online(wandb):
        return wandb.login(prompt=False, verify=False)


@contextlib.contextmanager
def _wandb_mode_online(wandb) -> Iterator[None]:
    """wandb's process-wide mode set to online for the block, then put back (a wandb
    that keeps it elsewhere is left as it is)."""
    setup = getattr(getattr(wandb, "sdk", None), "wandb_setup", None)
    if not hasattr(setup, "singleton"):
        yield
        return
    settings = setup.singleton().settings
    before, settings.mode = settings.mode, "online"
    try:
        yield
    finally:
        settings.mode = before


def _drop_wandb_service() -> None:
    """Close wandb's connection to its service process now (``wandb.teardown``): with the
    service gone, wandb's own exit hook would fail on it with a traceback."""
    try:
        import wandb

        with _logging_errors_unsaid():
            wandb.teardown(exit_code=1)
    except Exception:  # noqa: BLE001 - nothing more to say: the failure was said
        pass


@contextlib.contextmanager
def _logging_errors_unsaid() -> Iterator[None]:
    """A log record that a handler fails to write is dropped while wandb is called, not
    printed (``logging.raiseExceptions``). Why: wandb logs each step of its start and finish
    to ``debug.log`` in its folder, inside the run folder; once that disk was full, each
    record printed Python's "--- Logging error ---" with a traceback to stderr, which
    wandb's console capture logged again, failing again: a run whose disk filled in epoch
    1 printed 16,000 lines of tracebacks before its one line saying it could not save
    (found in review). wandb's own failures still raise, said once as a warning here."""
    before = logging.raiseExceptions
    logging.raiseExceptions = False
    try:
        yield
    finally:
        logging.raiseExceptions = before
