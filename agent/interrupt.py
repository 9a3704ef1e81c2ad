"""SIGTERM as Ctrl-C, and a stop request that a swallowed interrupt cannot lose.

:func:`on_sigterm` is the SIGTERM handler of the command line and the campaign runner, and
(:func:`handle_sigint`) their Ctrl-C handler: it records the request and raises
:class:`KeyboardInterrupt`. A library that catches every
exception while it imports (a bare ``except:``) can swallow that interrupt; the request is
still recorded, and :func:`check` raises it again at the next safe point (before a command
runs, before Ray starts, at each turn of the campaign loop). :func:`clear` is called when a
command or a campaign run ends, interrupted or not, so an in-process caller can run again.
"""
from __future__ import annotations

import signal
from typing import Any

_requested = False


def on_sigterm(signum: int, frame: object) -> None:
    global _requested
    _requested = True
    raise KeyboardInterrupt


def handle_sigint() -> Any:
    """Make Ctrl-C record its request like SIGTERM; returns the handler it replaced (for
    ``signal.signal``). A SIGINT that is ignored (a shell's background job) or has a handler
    of someone else's is left as it is. Main thread only."""
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.default_int_handler:
        signal.signal(signal.SIGINT, on_sigterm)
    return previous


def requested() -> bool:
    return _requested


def check() -> None:
    """Raise the recorded stop request (a KeyboardInterrupt), if there is one."""
    if _requested:
        raise KeyboardInterrupt


def clear() -> None:
    global _requested
    _requested = False
