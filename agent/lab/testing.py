"""Test helpers kept beside the code (as BoTorch does): a manual clock for the
time-based simulated lab, bounded polling, and cached small reference landscapes.
Importing this module is cheap."""

from __future__ import annotations

import time
from functools import lru_cache


class FakeClock:
    """A manual clock (seconds) for time-based simulated labs."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


@lru_cache(maxsize=1)
def x23_landscape(n: int = 4):
    """First ``n`` X23 crystals (real structures, reference lattice energies)."""
    from sim_backends.landscape import load_x23

    return tuple(load_x23().minima[:n])


@lru_cache(maxsize=1)
def target_i_landscape():
    from sim_backends.landscape import load_target_i

    return tuple(load_target_i().minima)


def wait_terminal(adapter, ticket, timeout_s: float = 30.0, step_s: float = 0.05, advance=None):
    """Poll until terminal (bounded); ``advance(dt)`` moves a fake clock instead of sleeping."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = adapter.poll(ticket)
        if status.is_terminal:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"experiment {ticket} not finished within {timeout_s} s (state {status.state})")
        if advance is not None:
            advance(1.0)
        else:
            time.sleep(step_s)
