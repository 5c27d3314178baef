"""Errors a user can fix from the command line. Entry points print their message alone,
without a stack trace (set ``BASISCONV_DEBUG=1`` to see the trace)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import warnings
from typing import Callable, Iterator


def one_line(err: BaseException | str) -> str:
    """An error's text on one line, for a message that quotes it: a library's text may
    span several (wandb's timeout adds advice on lines of its own)."""
    return " ".join(str(err).split())


def error_line(err: BaseException) -> str:
    """An error named with all its text on one line (``KeyError: 'generator'``: a key or a
    number alone says nothing), for a message that quotes why a file could not be used."""
    return f"{type(err).__name__}: {one_line(err)}"


def error_head(err: BaseException) -> str:
    """An error as a warning quotes it: its type and first line, cut at 200 characters (a
    compiler's or CUDA's text may run to pages: a failed form's trial, a Triton kernel that
    does not compile, which :mod:`.kernels.fused` and :mod:`.kernels.auto_norm` fall back
    from); an error without text, its type alone."""
    lines = str(err).splitlines()
    return f"{type(err).__name__}: {lines[0][:200] if lines else ''}"


def context_chain(err: BaseException | None) -> Iterator[BaseException]:
    """``err``, then the exception it was raised while handling (its ``__context__``), and
    so on: a stop that lands while an error or another stop is on its way out carries it
    there, and what that one says is wanted. Python can make the chain a loop; each
    exception comes once."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__context__


#: Warnings said already by this process (see :func:`warn_once`).
SAID_ONCE: set[str] = set()


def warn_once(log: logging.Logger, message: str) -> None:
    """Log a warning about a value the user gave once a job: a run checks its config more
    than once (each job as it starts, its layer choice; a sweep before its jobs)."""
    if message not in SAID_ONCE:
        SAID_ONCE.add(message)
        log.warning("%s", message)


def new_job_warns_again() -> None:
    """A job of a sweep starts (:func:`basisconv.cli.exit_on_user_error`): what
    :func:`warn_once` said for the sweep's check or the job before goes into this job's own
    log too, as its config has the same value."""
    SAID_ONCE.clear()


def warn_caller(message: str, category: type[Warning] = UserWarning, *,
                also_skip: Callable[[str], bool] | None = None) -> None:
    """``warnings.warn`` at the user's line: the first frame outside basisconv and torch
    (which calls hooks, forwards and custom ops), and outside the files ``also_skip`` names
    (by file name: the code ``torch.compile`` writes). Why not a fixed ``stacklevel``:
    one warning is reached from several public functions at different depths
    (``apply_basis`` called directly, or by ``layer_sensitivity`` through ``layer_savings``;
    a hook from torch's module call), and a fixed level named the package's or torch's own
    line for all but one of them (Python 3.11 has no ``skip_file_prefixes``)."""
    # by folder, not by module name: the code torch generates (its custom ops' and
    # autograd's wrappers) is filed in torch's folder but names no module of torch
    library = (sys.modules.get("torch"), sys.modules[__package__])
    folders = tuple(os.path.dirname(m.__file__) + os.sep for m in library if m is not None)

    def inside(filename: str) -> bool:
        return filename.startswith(folders) or (also_skip is not None and also_skip(filename))
    frame, level = sys._getframe(1), 2
    while frame.f_back is not None and inside(frame.f_code.co_filename):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


class BasisconvError(Exception):
    """Base of the errors whose message tells the user what to change."""


class ConfigError(BasisconvError, ValueError):
    """A configuration value is invalid; the message names it and the valid range."""


class FolderInUse(ConfigError):
    """A folder another process holds (:func:`basisconv.records.folder_lock`): its files,
    the run's log among them, are that process's, so the refusal is said on the console
    only."""


class LocksUnsupported(ConfigError):
    """A folder whose file system refuses file locks (:func:`basisconv.records.folder_lock`):
    there no process can hold the folder, so a refused start removes the folder Hydra made
    for it without its lock (:func:`basisconv.start_writes.remove_made_folders`)."""


class DatasetError(BasisconvError, RuntimeError):
    """The data could not be read; the message says where it looked and what to do."""


class DatasetNotFound(DatasetError):
    """No dataset where it was looked for (what ``data.download=true`` fetches); a folder
    that could not be looked in is a plain :class:`DatasetError`, never downloaded over."""


class PublishError(BasisconvError, OSError):
    """A finished result could not be copied where it was asked to go (``publish=``): the
    message says why, where the result is kept, and how to publish it once fixed."""


class SaveError(BasisconvError, OSError):
    """A run's checkpoint or record could not be written (a full disk, a lost permission):
    the message says what its folder keeps and the command that resumes it once fixed."""


class WriteError(BasisconvError, OSError):
    """A file could not be written (a full disk, no permission, a read-only file system, a
    file where a folder should be): the message names the file and the fix. An ``OSError``
    (``errno``, ``strerror``, ``filename``), so a caller that knows what a failed write
    leaves behind (a run's checkpoint, a published record) catches it and says so."""

    @classmethod
    def of(cls, path, err: OSError) -> "WriteError":
        return cls(err.errno, err.strerror or str(err), str(path))

    def __str__(self) -> str:
        return (f"could not write {self.filename} ({self.strerror}); free space or make its "
                f"folder writable (or point the output elsewhere), then run the same command "
                f"again")


class WorkerFailed(BasisconvError, RuntimeError):
    """A worker process of a parallel sensitivity estimate or search died (killed, out of
    memory) or could not start: the message names the key that made the workers and the
    fix."""


class TrainingDiverged(BasisconvError, FloatingPointError):
    """A loss became NaN or infinite (usually a learning rate too high for the model): the
    message says which loss, where, and what was kept. ``quantity`` and ``value`` say what
    diverged (e.g. ``"training loss"``, ``nan``), for callers that reword the message;
    ``lr_key``, where known, the learning rate whose lower value is the fix
    (``trainer.lr``, ``sensitivity.finetune_lr``), which a sweep's summary names."""

    def __init__(self, message: str, quantity: str = "loss", value: float = float("nan"),
                 lr_key: str | None = None):
        super().__init__(message)
        self.quantity, self.value, self.lr_key = quantity, value, lr_key

    def __reduce__(self):  # through a worker process's pickle with its fields
        return type(self), (str(self), self.quantity, self.value, self.lr_key)


class OutOfMemory(BasisconvError, RuntimeError):
    """The device's or the machine's memory ran out: the message says which (in torch's
    words), what to lower, and what the work keeps. Torch's own error, a ``RuntimeError``,
    was a traceback of many lines, as a bug's is."""


#: What to lower when memory runs out: every producer trains and evaluates in batches of
#: these sizes, on a model of these settings.
MEMORY_FIX = ("lower trainer.batch_size or trainer.eval_batch_size, or use a smaller model "
              "(model.width) or basis.size")


def memory_ran_out(err: BaseException) -> str | None:
    """What ran out, with torch's first words on it, when ``err`` is torch's out-of-memory
    error (a GPU's: ``torch.OutOfMemoryError``) or its CPU allocator's failure (a plain
    ``RuntimeError`` saying "can't allocate memory"); None for any other error, a bug's
    ``RuntimeError`` among them, and for one already said (an :class:`OutOfMemory`)."""
    if isinstance(err, BasisconvError) or not isinstance(err, RuntimeError):
        return None
    torch = sys.modules.get("torch")  # (not imported: no torch error can have been raised)
    text = one_line(err)
    # (torch.cuda.OutOfMemoryError: torch 2.4 has no torch.OutOfMemoryError, its alias since)
    if torch is not None and isinstance(err, torch.cuda.OutOfMemoryError):
        # its first two sentences ("CUDA out of memory. Tried to allocate 2.00 GiB"); the
        # rest is the allocator's statistics and advice
        return f"the device ran out of memory ({'. '.join(text.split('. ')[:2])[:200]})"
    cpu = re.search(r"can't allocate memory[^.]*", text)
    if cpu is None:
        return None
    return f"the machine ran out of memory ({cpu[0][:200]})"


@contextlib.contextmanager
def memory_said(then: Callable[[], str] | None = None) -> Iterator[None]:
    """Torch's out-of-memory error in the block raised as one :class:`OutOfMemory` line
    naming what ran out and :data:`MEMORY_FIX`, then ``then()``: what the work keeps and
    how to go on (called only then). Any other error goes on as it is."""
    try:
        yield
    except RuntimeError as err:
        ran_out = memory_ran_out(err)
        if ran_out is None:
            raise
        message = f"{ran_out}: {MEMORY_FIX}" + (f"; {then()}" if then is not None else "")
        raise OutOfMemory(message) from err  # (BASISCONV_DEBUG=1 shows torch's trace too)


class Stopped(KeyboardInterrupt):
    """A run stopped by a signal (SIGINT, i.e. Ctrl-C, or SIGTERM); the message says after
    which epoch and how to resume. A ``KeyboardInterrupt``, so code that handles Ctrl-C
    handles it too. Entry points print it as one line and exit with ``128 + signum``."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message)
        self.signum = signum
