"""An in-process :class:`agent.executor.Executor` (the protocol :class:`~agent.executor.RayExecutor` implements).

For fast tests and benchmarks that drive the real :class:`~agent.campaign.Campaign`
through :func:`agent.runner.run_campaign` with cheap backends (replays of stored
results, diagnostics): no Ray, no worker processes, fully deterministic.

Contract (same as the Ray executor where it applies):

* ``submit`` queues a task (``n_attempts`` incremented, ``submitted_at`` set once);
* ``wait`` runs the oldest queued task in this process and returns it as finished
  (one per call, so the caller refills the freed slot before the next one runs, as
  with tasks of uneven length on Ray); a failed result marked ``retryable`` is run
  again up to ``max_retries`` times before it is returned;
* ``capacity`` is ``slots``: how many tasks the caller may keep in flight;
* ``cancel_all`` drops queued tasks. There is no time limit (a task runs to its end
  in this process) and no isolation: a backend that crashes the interpreter crashes
  the caller;
* ``map_unordered`` / ``n_workers`` (:class:`sim_backends.executor.MapExecutor`): every
  call in this process, in order (:class:`~sim_backends.executor.InProcessExecutor`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import TYPE_CHECKING

from sim_backends.executor import InProcessExecutor

if TYPE_CHECKING:
    from agent.executor import Completed, Task


class LocalExecutor(InProcessExecutor):
    """Run tasks one at a time in this process.

    Args:
        slots: tasks the caller may keep in flight (the campaign's batch size is
            capped by it), >= 1.
        max_retries: extra attempts for retryable failures.
    """

    address: str | None = None

    def __init__(self, slots: int = 1, max_retries: int = 1) -> None:
        if int(slots) != slots or slots < 1:
            raise ValueError(f"slots must be a positive integer, got {slots!r}")
        if int(max_retries) != max_retries or max_retries < 0:
            raise ValueError(f"max_retries must be a non-negative integer, got {max_retries!r}")
        self.slots = int(slots)
        self.max_retries = int(max_retries)
        self._queue: OrderedDict[str, Task] = OrderedDict()

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        """Nothing to start (present for interface parity)."""

    @property
    def capacity(self) -> int:
        return self.slots

    def shutdown(self) -> None:
        self.cancel_all()

    # -- work -------------------------------------------------------------------------
    @property
    def n_in_flight(self) -> int:
        return len(self._queue)

    def in_flight(self) -> list[Task]:
        return list(self._queue.values())

    def submit(self, task: Task) -> None:
        task.n_attempts += 1
        if not task.submitted_at:
            task.submitted_at = time.time()
        self._queue[task.request_id] = task

    def cancel_all(self) -> None:
        self._queue.clear()

    def wait(self, timeout_s: float = 1.0) -> list[Completed]:
        """Run the oldest queued task to its end; ``[]`` when none is queued.

        ``timeout_s`` is accepted for interface parity and ignored.
        """
        from agent.executor import Completed, _evaluate_in_worker

        if not self._queue:
            return []
        _, task = self._queue.popitem(last=False)
        while True:
            result = _evaluate_in_worker(task.backend, task.backend_params, task.inp)
            if result.ok or not result.retryable or task.n_attempts > self.max_retries:
                return [Completed(task, result)]
            task.n_attempts += 1
