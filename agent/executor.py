"""Ray executor: backend evaluations as asynchronous Ray tasks.

An embedded local Ray instance is started by default (``num_cpus`` from the config,
default all cores); an existing cluster is used when ``RAY_ADDRESS`` or an explicit
address is given. The executor is asynchronous: :meth:`RayExecutor.wait` returns as
soon as *any* task finishes, so the caller can hand the freed worker new work at once
and workers stay busy when task times differ by 10x.

Failure handling, per task:

* a backend failure comes back as a failed :class:`~sim_backends.base.EvalResult`
  (the backend never raises); those marked ``retryable`` are resubmitted up to
  ``max_retries`` times;
* a worker process that dies (segfault in a native library, OOM kill, ``os._exit``)
  surfaces as a Ray error; the task is retried up to ``max_retries`` times, then
  recorded as a failed evaluation with the reason;
* a task running longer than ``task_timeout_s`` is cancelled (the worker is killed)
  and recorded as failed, never retried (it would time out again).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sim_backends.base import EvalInput, EvalResult


@dataclass
class Task:
    """One unit of work: evaluate ``inp`` with backend ``backend`` (registry name)."""

    request_id: str
    backend: str
    backend_params: dict[str, Any]
    inp: EvalInput
    fidelity: int = 0
    payload: dict[str, Any] = field(default_factory=dict)  # caller's bookkeeping
    n_attempts: int = 0
    submitted_at: float = 0.0


@dataclass
class Completed:
    task: Task
    result: EvalResult


def _evaluate_in_worker(backend: str, params: dict[str, Any], inp: EvalInput) -> EvalResult:
    from sim_backends.registry import get_backend

    return get_backend(backend, **params).evaluate(inp)


def _failed(task: Task, reason: str, wall_s: float) -> EvalResult:
    return EvalResult(
        backend=task.backend,
        backend_version="?",
        fidelity=task.fidelity,
        status="failed",
        values={},
        wall_s=wall_s,
        inputs_hash=task.inp.inputs_hash(task.backend, "?"),
        reason=reason,
    )


def ray_address(address: str | None) -> str | None:
    """The cluster to join: an explicit address, else ``RAY_ADDRESS``, else None (local)."""
    return address or os.environ.get("RAY_ADDRESS") or None


class RayExecutor:
    """Run tasks on Ray.

    Args:
        address: cluster address; None (and no ``RAY_ADDRESS``) starts a local Ray.
        num_cpus: CPUs of the embedded instance (ignored when joining a cluster).
        cpus_per_task: CPUs requested per task.
        task_timeout_s: wall-clock limit per attempt.
        max_retries: extra attempts for retryable failures and dead workers.
    """

    def __init__(
        self,
        address: str | None = None,
        num_cpus: int | None = None,
        cpus_per_task: float = 1.0,
        task_timeout_s: float = 1800.0,
        max_retries: int = 1,
    ) -> None:
        self.address = ray_address(address)
        self.num_cpus = num_cpus or os.cpu_count() or 1
        self.cpus_per_task = cpus_per_task
        self.task_timeout_s = task_timeout_s
        self.max_retries = max_retries
        self._in_flight: dict[Any, tuple[Task, float]] = {}
        self._remote: Callable[..., Any] | None = None
        self._started_ray = False

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        import ray

        if not ray.is_initialized():
            kwargs: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "configure_logging": True,
                "logging_level": "ERROR",
            }
            if self.address:
                ray.init(address=self.address, **kwargs)
            else:
                ray.init(
                    num_cpus=self.num_cpus,
                    object_store_memory=256 * 1024**2,
                    **kwargs,
                )
                self._started_ray = True
        self._remote = ray.remote(num_cpus=self.cpus_per_task, max_retries=0)(
            _evaluate_in_worker
        )

    @property
    def capacity(self) -> int:
        """How many tasks can run at once on the resources Ray reports."""
        import ray

        cpus = ray.cluster_resources().get("CPU", self.num_cpus)
        return max(1, int(cpus // self.cpus_per_task))

    def shutdown(self) -> None:
        self.cancel_all()
        if self._started_ray:
            import ray

            ray.shutdown()
            self._started_ray = False

    # -- work -------------------------------------------------------------------------
    @property
    def n_in_flight(self) -> int:
        return len(self._in_flight)

    def in_flight(self) -> list[Task]:
        return [t for t, _ in self._in_flight.values()]

    def submit(self, task: Task) -> None:
        assert self._remote is not None, "call start() first"
        task.n_attempts += 1
        if not task.submitted_at:
            task.submitted_at = time.time()
        ref = self._remote.remote(task.backend, task.backend_params, task.inp)
        self._in_flight[ref] = (task, time.monotonic())

    def cancel_all(self) -> None:
        import ray

        for ref in list(self._in_flight):
            ray.cancel(ref, force=True)
        self._in_flight.clear()

    def wait(self, timeout_s: float = 1.0) -> list[Completed]:
        """Wait up to ``timeout_s`` for tasks; return every task that has finished.

        Tasks needing a retry are resubmitted here and not returned.
        """
        import ray
        from ray.exceptions import GetTimeoutError, RayError, TaskCancelledError

        if not self._in_flight:
            return []
        done, _ = ray.wait(list(self._in_flight), num_returns=1, timeout=timeout_s)
        if done:  # collect everything else that is ready too, without waiting
            done, _ = ray.wait(list(self._in_flight), num_returns=len(self._in_flight), timeout=0)
        completed: list[Completed] = []
        for ref in done:
            task, t0 = self._in_flight.pop(ref)
            wall = time.monotonic() - t0
            try:
                result: EvalResult = ray.get(ref)
            except (TaskCancelledError, GetTimeoutError) as exc:
                result = _failed(task, f"cancelled: {type(exc).__name__}", wall)
            except RayError as exc:
                reason = f"worker died: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                result = _failed(task, reason, wall)
                result.retryable = True
            if not result.ok and result.retryable and task.n_attempts <= self.max_retries:
                self.submit(task)
                continue
            completed.append(Completed(task, result))
        now = time.monotonic()
        for ref, (task, t0) in list(self._in_flight.items()):
            if now - t0 > self.task_timeout_s:
                ray.cancel(ref, force=True)
                del self._in_flight[ref]
                completed.append(
                    Completed(
                        task,
                        _failed(task, f"timeout: exceeded {self.task_timeout_s:g} s", now - t0),
                    )
                )
        return completed
