"""SIGTERM as Ctrl-C, and a stop request that a swallowed interrupt cannot lose.

:func:`on_sigterm` is the SIGTERM handler of the command line and the campaign runner: it
records the request and raises :class:`KeyboardInterrupt`. A library that catches every
exception while it imports (a bare ``except:``) can swallow that interrupt; the request is
still recorded, and :func:`check` raises it again at the next safe point (before a command
runs, before Ray starts, at each turn of the campaign loop). :func:`clear` is called when a
command or a campaign run ends, interrupted or not, so an in-process caller can run again.
"""
from __future__ import annotations

_requested = False


def on_sigterm(signum: int, frame: object) -> None:
    global _requested
    _requested = True
    raise KeyboardInterrupt


def requested() -> bool:
    return _requested


def check() -> None:
    """Raise the recorded stop request (a KeyboardInterrupt), if there is one."""
    if _requested:
        raise KeyboardInterrupt


def clear() -> None:
    global _requested
    _requested = False
