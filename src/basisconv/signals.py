"""How the processes of a run treat SIGINT (Ctrl-C) and SIGTERM (a scheduler's or
torchrun's stop): one home for every change of their handlers or mask, below the loop, the
sensitivity probe's workers and the entry points that all change them.

Python runs signal handlers in the main thread alone, so the context managers that swap
handlers change nothing when entered from another thread; a handler installed outside
Python (``signal.getsignal`` gives None) is left as it is."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterable, Iterator

from .errors import Stopped

#: The two signals that stop a run.
STOPS = (signal.SIGINT, signal.SIGTERM)


def raise_stopped(signum: int, frame) -> None:
    """The entry points' SIGTERM handler: a stop, as Ctrl-C's ``KeyboardInterrupt`` is."""
    raise Stopped(signum)


@contextlib.contextmanager
def sigterm_stops() -> Iterator[None]:
    """SIGTERM (a scheduler's, a slot's end, torchrun's) raises :class:`Stopped` in the block,
    so a run stops as on Ctrl-C: its checkpoint said, its files closed; the handler before
    is put back after."""
    previous = signal.signal(signal.SIGTERM, raise_stopped)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stops_at_default() -> None:
    """SIGINT and SIGTERM end this process at once from now on (their default action),
    with no stop raised or said."""
    for signum in STOPS:
        signal.signal(signum, signal.SIG_DFL)


@contextlib.contextmanager
def signals_blocked(signums: Iterable[int]) -> Iterator[None]:
    """``signums`` blocked in this thread for the block: one that comes meanwhile is
    delivered as it ends (unless let go by then). Threads and processes started inside
    keep the mask. Nothing where ``pthread_sigmask`` is missing (Windows)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    held = signal.pthread_sigmask(signal.SIG_BLOCK, set(signums))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _python_handlers(keep: Callable[[object], bool]) -> dict[int, object]:
    return {s: h for s in STOPS if keep(h := signal.getsignal(s))}


def _set_together(handlers: dict[int, object]) -> None:
    """Each signal's new handler, set with all of them blocked: one landing between two
    of the changes is held until all are made."""
    with signals_blocked(handlers):
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def stops_let_go() -> Iterator[None]:
    """SIGINT and SIGTERM let go while a stop already on its way is made: a second one (a
    Ctrl-C pressed again; under torchrun its SIGTERM, sent when another rank died and this
    one's collective failed) raised its own bare stop there, which replaced the first and
    what it says (which epoch the checkpoint holds, how to resume)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handlers = _python_handlers(lambda handler: handler is not None)
    _set_together(dict.fromkeys(handlers, signal.SIG_IGN))
    try:
        yield
    finally:
        _set_together(handlers)


@contextlib.contextmanager
def one_stop() -> Iterator[None]:
    """The first SIGINT or SIGTERM stops as usual (its handler raises); the next ones, until
    the block ends, are let go. Why: while the sensitivity probe's stop ended its workers, a
    second Ctrl-C (pressed again, or one Ctrl-C reaching the parent twice) cut that short:
    workers never terminated went on fine-tuning and the parent waited for them at exit,
    for ever; one that landed in the standard library's lock handling raised
    ``RuntimeError: release unlocked lock`` in place of the stop. Only Python handlers are
    changed (the default action, or ignored, is left as it is)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handlers = _python_handlers(callable)

    def let_go(signum, frame) -> None:
        """A stop is already on its way."""

    def first(signum, frame) -> None:
        for s in handlers:  # before the handler raises: a second one may come at once
            signal.signal(s, let_go)
        handlers[signum](signum, frame)
        for s in handlers:  # it did not stop: the next one is handled again
            signal.signal(s, first)

    for s in handlers:
        signal.signal(s, first)
    try:
        yield
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def stops_held() -> Iterator[None]:
    """A SIGINT or SIGTERM that comes in the block is held and handled as the block ends
    (its handler raises there, after what the block wrote). Why: ``torch.save`` writes
    inside its zip writer's context, and a stop raised in the middle of it made the
    writer's exit fail, so torch's ``RuntimeError: unexpected pos`` replaced the stop (a
    trace and exit status 1 in place of a stop's line, seen when a protocol's Ctrl-C met a
    checkpoint being written). A per-thread signal mask does not hold them: any other
    thread (wandb's, torch's) would take the signal and Python would still run the handler
    in the main thread at once. Only Python handlers are held, as :func:`one_stop`'s."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handlers = _python_handlers(callable)
    came: list[int] = []

    def hold(signum, frame) -> None:
        came.append(signum)

    _set_together(dict.fromkeys(handlers, hold))
    try:
        yield
    finally:
        _set_together(handlers)
        if came:  # the first one, as if it came now (a second is one stop's repeat)
            handlers[came[0]](came[0], None)
