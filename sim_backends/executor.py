"""The map-style executor the physics engines are given (they never start Ray themselves).

An engine that fans independent pieces of work out (the CSP engine's minimisation units,
:func:`sim_backends.csp.run.run_csp`) takes a :class:`MapExecutor`; the caller decides
where the work runs: :class:`InProcessExecutor` (this process, in order; the default, and
what a backend evaluation inside a campaign's worker task uses, so no Ray is started
inside a Ray task), or the agent's executors (:class:`agent.executor.RayExecutor` on a
local or cluster Ray, :class:`agent.local_executor.LocalExecutor` in-process), which
satisfy this protocol.

Contract of :meth:`MapExecutor.map_unordered`: ``fn(*shared, *item)`` is called exactly
once per item and every result is yielded, in any order (callers that need an order
sort the results by a key they carry); ``fn`` is a module-level function and every
argument picklable; ``shared`` arguments are sent to the workers once. An exception
raised by ``fn`` propagates to the caller. ``n_workers`` is how many calls may run at
once (recorded with results).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class MapExecutor(Protocol):
    """Runs independent calls of one function (see the module docstring)."""

    @property
    def n_workers(self) -> int: ...

    def map_unordered(self, fn: Callable[..., Any], items: Iterable[tuple[Any, ...]],
                      shared: tuple[Any, ...] = ()) -> Iterator[Any]: ...


class InProcessExecutor:
    """Every call in this process, one after the other, in the order of ``items``."""

    @property
    def n_workers(self) -> int:
        return 1

    def map_unordered(self, fn: Callable[..., Any], items: Iterable[tuple[Any, ...]],
                      shared: tuple[Any, ...] = ()) -> Iterator[Any]:
        for item in items:
            yield fn(*shared, *item)
