"""Ctrl-C (SIGINT) and SIGTERM as exceptions that are never lost.

Python raises a signal's exception wherever the main thread happens to be; when that is a `__del__` or a
garbage-collection callback (TensorFlow has many), the exception is printed as "ignored" and training goes on.
So the handlers also remember the signal, and the long loops (each epoch, each federated round) call `check()`,
which raises it again there. `guard` in cli/app.py installs them for a command and maps the exception to exit 130
(SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from .errors import Terminated

_received: list[int] = []


def _exception(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _handler(signum: int, frame: Any) -> None:
    _received.append(signum)
    raise _exception(signum)


def install() -> Callable[[], None]:
    """Handle SIGINT and SIGTERM (main thread only; elsewhere nothing changes); returns the undo."""
    _received.clear()
    try:
        previous = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        return lambda: None

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h)
        _received.clear()

    return restore


def check() -> None:
    """Raise the signal received since `install()` (its exception may have been swallowed where it was raised)."""
    if _received:
        raise _exception(_received[-1])
