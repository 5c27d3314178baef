"""How an entry point exits, in one line: a refusal (``error: ...``, exit status 2; rank 0
alone says it under torchrun, the other ranks wait for torchrun to end them) and a stop
(``stopped by SIGTERM: <where, how to go on>``, exit status ``128 + signum``, also written
to the run's log files, as :mod:`basisconv.cli` writes a refusal's line there). Its own
module because it knows torchrun's ranks and the stop signals, not Hydra: ``cli`` says
through it both what Hydra refuses before a task starts and what a task raises, and it
calls nothing back in ``cli``."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from typing import NoReturn

from . import distributed
from .errors import context_chain
from .signals import stops_at_default, stops_let_go


def log_to_files(message: str) -> None:
    """Write ``message`` to the log files of the run (Hydra's ``train.log``) only: the
    console gets it once, from the entry point."""
    record = logging.LogRecord("basisconv", logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def stop_reason(err: BaseException) -> str:
    """What a stop says: its own message, else that of the stop or the collective's failure
    it interrupted. Why: under torchrun a rank that dies makes this one's collective fail
    and torchrun send it SIGTERM, which lands while that failure, or the stop made of it
    (after which epoch, how to resume), is still on its way out, and replaces it."""
    for raised in context_chain(err):
        if isinstance(raised, KeyboardInterrupt) and str(raised):
            return str(raised)
        reason = distributed.peer_failure(raised)
        if reason is not None:
            return reason
    return ""


#: How long a process other than torchrun's rank 0 waits after a refusal for rank 0 to say
#: it and exit (torchrun then ends the waiting one).
RANK_WAIT_S = 30.0


def exit_refused(message: str) -> NoReturn:
    """Say a refusal in one line (``error: ...``, by rank 0 alone under torchrun) and exit
    with status 2. Why another rank waits: under torchrun every rank meets the same
    refusal, and the first to exit makes torchrun stop the others, rank 0 too, often before
    its line was out (then there was no line, or a "stopped by SIGTERM" saying the same
    command would start the run over). So it waits, its signals at their defaults, for
    torchrun to end it once rank 0 has exited; one whose refusal rank 0 did not meet says
    it itself after the wait."""
    if distributed.first_process():
        print(f"error: {message}", file=sys.stderr)
    elif distributed.launched_processes() > 1:
        stops_at_default()
        time.sleep(RANK_WAIT_S)
        print(f"error (rank {os.environ.get('RANK')}): {message}", file=sys.stderr)
    sys.exit(2)


def exit_stopped(err: KeyboardInterrupt, speaks: bool) -> NoReturn:
    """Say a stop in one line (``stopped by SIGTERM: <where, how to go on>``), in the run's
    log too, and exit with ``128 + signum``; ``BASISCONV_DEBUG=1`` raises it instead. A
    process that does not speak for the run says it still when it waited for a frozen
    rank 0 (:func:`~basisconv.distributed.waited_for_frozen_rank_0`), which says nothing."""
    if os.environ.get("BASISCONV_DEBUG"):
        raise err
    signum = getattr(err, "signum", signal.SIGINT)
    with stops_let_go():  # a second one would end it with a stack trace
        said, name = stop_reason(err), signal.Signals(signum).name
        message = f"stopped by {name}{': ' + said if said else ''}"
        if speaks or distributed.waited_for_frozen_rank_0(err):
            log_to_files(message)
            print(message, file=sys.stderr)
        sys.exit(128 + signum)
