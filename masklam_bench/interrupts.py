"""Ctrl-C and SIGTERM that are never lost.

Python runs a signal handler between two bytecodes of the main thread, wherever it is. When that
is inside a weakref callback or a ``__del__`` (PyTorch runs many), the handler's exception cannot
propagate: Python prints "Exception ignored in ..." and carries on, so a ``kill`` of a training
run could be dropped without a trace (seen on a LAM run: the first SIGTERM was swallowed, the
second stopped it). The command line's handlers therefore also remember the interrupt, and the
long loops (LAM and latent-BC steps, rollouts, collection, SAM 2 tracking) call
:func:`raise_pending` once per step, which raises it again from ordinary code.

This module imports only the standard library, so every module may use it without a cycle.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler's pre-emption), handled like Ctrl-C: the same clean-up."""


_pending: list[type[KeyboardInterrupt]] = []
"""The interrupt received and not yet handled (at most one), or empty."""


def on_signal(signum: int, frame: FrameType | None) -> None:
    """The handler for SIGINT and SIGTERM: remember the interrupt, then raise it."""
    exc = Terminated if signum == signal.SIGTERM else KeyboardInterrupt
    _pending[:] = [exc]
    raise exc


def raise_pending() -> None:
    """Raise the interrupt received since the last :func:`clear`, if any (cheap: once a step)."""
    if _pending:
        raise _pending[0]


def clear() -> None:
    """Forget a received interrupt (once the command has handled it)."""
    _pending.clear()


def install() -> dict[int, object]:
    """Set :func:`on_signal` for SIGINT and SIGTERM (main thread only); the handlers it replaced."""
    return {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}


def restore(previous: dict[int, object]) -> None:
    """Put back the handlers :func:`install` returned."""
    for signum, handler in previous.items():
        signal.signal(signum, signal.SIG_DFL if handler is None else handler)


@contextlib.contextmanager
def kept() -> Iterator[None]:
    """Put this module's handlers back after a library that sets its own replaced them (Ray's
    ``init`` sets a SIGTERM handler that exits with status 1 and skips the command's clean-up)."""
    ours = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is on_signal]
    try:
        yield
    finally:
        if threading.current_thread() is threading.main_thread():
            for signum in ours:
                signal.signal(signum, on_signal)
