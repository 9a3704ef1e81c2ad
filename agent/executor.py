"""Ray executor: backend evaluations as asynchronous Ray tasks.

:class:`Executor` is the protocol the campaign runs on; :class:`RayExecutor` (here) and
:class:`agent.local_executor.LocalExecutor` (in-process, for fast tests and benchmarks)
implement it. It includes :class:`sim_backends.executor.MapExecutor` (``map_unordered``,
``n_workers``), the map-style part physics engines are given: ``crystal-agent csp
--workers N`` runs the CSP engine's minimisation units on a :class:`RayExecutor`
(:func:`csp_executor`).

An embedded local Ray instance is started by default (``num_cpus`` from the config,
default all cores; never a cluster that ``ray start`` left running on this machine);
an existing cluster is used when ``RAY_ADDRESS`` or an explicit address is given. The
executor is asynchronous: :meth:`RayExecutor.wait` returns as soon as *any* task
finishes, so the caller can hand the freed worker new work at once and workers stay
busy when task times differ by 10x.

Starting (:meth:`RayExecutor.start`) either works or raises :class:`ExecutorError`
with one line; :meth:`RayExecutor.preflight` runs the checks that need no Ray, so a
caller can refuse a campaign before creating anything:

* a cluster address is first checked for a listening TCP port (``CONNECT_TIMEOUT_S``),
  then joined with Ray's connection retries bounded to the same time;
* token authentication (``RAY_AUTH_MODE=token``, on by default for clusters started
  where ``~/.ray/auth_token`` exists): when ``RAY_AUTH_MODE`` is unset and a token is
  available (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``) it
  is sent, which a cluster without authentication accepts too; a refused token or a
  missing one is explained in one line;
* ``cpus_per_task`` larger than ``num_cpus`` (embedded) or than every node of the
  cluster is refused, since such a task would wait for its timeout and fail.

The embedded instance's workers run at the launcher's priority plus ``worker_niceness``
(default 0; Ray's own default, +15, would make a campaign yield to every other process
on the machine); a cluster's workers keep the cluster's setting.

The embedded instance runs without dashboard, and a small reaper process (its own
session) kills the instance's processes if the launcher dies without shutting Ray
down (SIGKILL, OOM kill), since Ray's agents can outlive it for minutes.

A worker process builds each backend once per (registry name, parameters) and reuses it
for every later task with the same pair (:func:`worker_backend`).

CPU accounting: a result carries the CPU seconds measured in the worker
(:attr:`~sim_backends.base.EvalResult.cpu_s`); attempts that were retried add theirs.
With a ``progress_dir`` (the campaign's ``task_cpu`` folder, set by the runner) each
attempt's worker also records the CPU seconds it has used so far in
``<request_id>.<attempt>.json`` there every :data:`TASK_PROGRESS_S` s and when it ends
(:func:`task_cpu_record`), so a task that does not come back (its worker died or was
cancelled, it timed out, or the launcher was interrupted or killed) is charged what it
measured plus ``cpus_per_task`` x the wall time since its last record, never more than
``cpus_per_task`` x its whole wall time (the cores it held). Without a record (a worker
on another node, whose disk the launcher does not see) the charge is that bound.

Failure handling, per task:

* a backend failure comes back as a failed :class:`~sim_backends.base.EvalResult`
  (the backend never raises); those marked ``retryable`` are resubmitted up to
  ``max_retries`` times;
* a worker process that dies (segfault in a native library, OOM kill, ``os._exit``)
  surfaces as a Ray error; the task is retried up to ``max_retries`` times, then
  recorded as a failed evaluation with the reason; each death is one line on stderr
  (Ray's own multi-line notice on the driver is suppressed);
* a task that has used ``task_cpu_limit_s`` CPU seconds is stopped in its worker (the
  kernel's CPU-time limit) and recorded as failed with the CPU it measured, never
  retried; on a loaded machine wall time stretches but this limit does not;
* a task running longer than ``task_timeout_s`` of wall time (a backstop for a task
  that hangs without computing) is cancelled (the worker is killed) and recorded as
  failed, never retried (it would time out again).

Over 500 lines on purpose: the Ray connection, token authentication, worker-death handling and
the process reaper are one lifecycle, started and torn down together.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from sim_backends.base import EvalInput, EvalResult

if TYPE_CHECKING:
    from agent.stages.base import Request


@dataclass
class Task:
    """One unit of work: evaluate ``inp`` with backend ``backend`` (registry name)."""

    request_id: str
    backend: str
    backend_params: dict[str, Any]
    inp: EvalInput
    fidelity: int = 0
    request: Request | None = None  # the campaign's request this task runs
    n_attempts: int = 0
    submitted_at: float = 0.0
    cpu_s_retried: float = 0.0  # CPU seconds of earlier attempts that were retried


@dataclass
class Completed:
    task: Task
    result: EvalResult


#: the backends built in this process, by (registry name, parameters), most recently used
#: last: a worker builds each (name, params) once, since a registry lookup scans the
#: installed entry points (~45 ms); at most :data:`MAX_WORKER_BACKENDS` are kept
_WORKER_BACKENDS: OrderedDict[tuple[str, str], Any] = OrderedDict()
MAX_WORKER_BACKENDS = 32


def _params_key(params: dict[str, Any]) -> str:
    """A hashable key of a backend's parameters (equal parameters, equal key)."""
    import json

    return json.dumps(params, sort_keys=True, default=repr)


def worker_backend(backend: str, params: dict[str, Any]) -> Any:
    """The backend ``backend`` with ``params`` of this process, built on first use.

    Backends keep no per-task state between :meth:`~sim_backends.base.Backend.evaluate`
    calls (a task's inputs are merged into a copy of the params), so one instance serves
    every task with the same name and parameters.
    """
    key = (backend, _params_key(params))
    if key in _WORKER_BACKENDS:
        _WORKER_BACKENDS.move_to_end(key)
        return _WORKER_BACKENDS[key]
    from sim_backends.registry import get_backend

    instance = _WORKER_BACKENDS[key] = get_backend(backend, **params)
    while len(_WORKER_BACKENDS) > MAX_WORKER_BACKENDS:
        _WORKER_BACKENDS.popitem(last=False)
    return instance


class CpuLimitExceeded(BaseException):
    """Raised in a worker's main thread when a task has used up its CPU-second limit
    (a ``BaseException``, so no ``except Exception`` in a backend or library swallows it)."""


@contextmanager
def cpu_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`CpuLimitExceeded` once this process has spent ``seconds`` more CPU
    seconds (user + system, all threads) inside the block.

    The kernel enforces it (``RLIMIT_CPU`` soft limit, whole seconds rounded up plus one
    second of slack for its tick-sampled count, ``SIGXCPU``), so a
    loaded machine that stretches wall time does not kill a task that is still within
    its compute; the limit and the signal handler are restored on exit. A no-op outside
    the main thread or where ``RLIMIT_CPU`` is missing. Child processes inherit the soft
    limit, which they count from their own start.
    """
    import math
    import resource
    import signal
    import threading

    if (seconds is None or not hasattr(resource, "RLIMIT_CPU")
            or threading.current_thread() is not threading.main_thread()):
        yield
        return
    soft0, hard = resource.getrlimit(resource.RLIMIT_CPU)
    t = os.times()
    # +1 s of slack: the kernel checks the limit against its tick-sampled user + system
    # time, which in a long-lived process (a Ray worker that has run many tasks) can run
    # ahead of the precise total os.times() reports by most of a second; without the slack
    # a short limit fired after 0.15 of its 1 CPU s, or while the task slept (CI, stop 44)
    soft = math.ceil(t.user + t.system + seconds) + 1
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)

    start = t.user + t.system

    def _raise(signum: int, frame: Any) -> None:
        now = os.times()
        if now.user + now.system - start < 0.5 * seconds:
            # not this block's limit: a SIGXCPU the kernel sent for an earlier block's (it
            # repeats it each second past a soft limit) delivered after this handler was
            # installed; a real one comes only past ``seconds`` (the 1 s slack above covers
            # the tick-sampled count) (CI, stop 47: a task "exceeded 1 CPU s" after 0.0 s)
            return
        resource.setrlimit(resource.RLIMIT_CPU, (soft0, hard))  # one signal is enough
        raise CpuLimitExceeded(f"exceeded {seconds:g} CPU s")

    previous = signal.signal(signal.SIGXCPU, _raise)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_CPU, (soft0, hard))
        signal.signal(signal.SIGXCPU, previous)


#: seconds between a worker's records of the CPU its task has used (see the module docstring)
TASK_PROGRESS_S = 2.0


def task_cpu_record(path: Path, cpu_s: float, wall_s: float, done: bool) -> None:
    """Write a task attempt's CPU record (atomically: a reader sees the old or the new)."""
    import json

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"cpu_s": cpu_s, "wall_s": wall_s, "time": time.time(),
                               "pid": os.getpid(), "done": done}))
    os.replace(tmp, path)


@contextmanager
def _reporting_cpu(progress_path: str | None, cpu0: float, t0: float) -> Iterator[None]:
    """Record this process's CPU seconds since ``cpu0`` in ``progress_path`` every
    :data:`TASK_PROGRESS_S` s (a daemon thread) and on exit. A no-op without a path or
    when its folder does not exist here (a worker on another node)."""
    import threading

    from sim_backends.base import process_cpu_s

    path = Path(progress_path) if progress_path else None
    if path is None or not path.parent.is_dir():
        yield
        return
    stop = threading.Event()

    def record(done: bool) -> None:
        try:
            task_cpu_record(path, process_cpu_s() - cpu0, time.perf_counter() - t0, done)
        except OSError:
            pass  # a full or vanished disk must not fail the task

    def loop() -> None:
        while not stop.wait(TASK_PROGRESS_S):
            record(False)

    record(False)
    thread = threading.Thread(target=loop, name="task-cpu-record", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        record(True)


def _evaluate_in_worker(backend: str, params: dict[str, Any], inp: EvalInput,
                        cpu_limit_s: float | None = None,
                        progress_path: str | None = None) -> EvalResult:
    """Evaluate in a worker process; past ``cpu_limit_s`` CPU seconds the task stops and
    comes back as a failed evaluation charged the CPU it measured. With
    ``progress_path`` the CPU used so far is recorded there as the task runs."""
    from sim_backends.base import process_cpu_s

    instance = worker_backend(backend, params)
    t0, cpu0 = time.perf_counter(), process_cpu_s()
    try:
        with _reporting_cpu(progress_path, cpu0, t0), cpu_limit(cpu_limit_s):
            return instance.evaluate(inp)
    except CpuLimitExceeded as exc:
        result = _failed_result(backend, inp, f"timeout: {exc}", time.perf_counter() - t0,
                                process_cpu_s() - cpu0, version=instance.version,
                                fidelity=instance.fidelity)
        result.extra["cpu_limit_s"] = cpu_limit_s
        return result


#: how long a timed-out task's force-cancel is waited for before its CPU record is read and removed
CANCEL_WAIT_S = 5.0


def read_task_cpu(progress_dir: Path | None, request_id: str,
                  attempt: int | None = None) -> tuple[float, float] | None:
    """``(CPU seconds, time of the latest record)`` of attempt ``attempt`` of
    ``request_id`` (default: summed over its attempts) recorded in ``progress_dir``
    (:func:`task_cpu_record`), or None when there is no readable record."""
    import json

    if progress_dir is None:
        return None
    cpu, latest, found = 0.0, 0.0, False
    for path in Path(progress_dir).glob(f"{request_id}.{'*' if attempt is None else attempt}.json"):
        try:
            rec = json.loads(path.read_text())
            cpu += float(rec["cpu_s"])
            latest = max(latest, float(rec["time"]))
            found = True
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return (cpu, latest) if found else None


def unfinished_charge(measured: tuple[float, float] | None, cpus: float, wall_s: float,
                      end: float) -> float:
    """CPU seconds to charge a task that did not come back, having run ``wall_s`` until
    ``end`` (epoch s) on ``cpus`` cores: its measured CPU plus ``cpus`` x the time after
    its latest record, at most ``cpus`` x its wall time (to ``end``, or to its latest
    record when the worker outlived ``end``, e.g. a launcher's last heartbeat); ``cpus`` x
    ``wall_s`` without a record."""
    if measured is None:
        return cpus * max(wall_s, 0.0)
    cpu, latest = measured
    bound = cpus * max(wall_s + max(0.0, latest - end), 0.0)
    return min(bound, cpu + cpus * max(0.0, end - latest))


def unfinished_wall(measured: tuple[float, float] | None, wall_s: float, end: float) -> float:
    """The wall time :func:`unfinished_charge` bounds the charge by: ``wall_s`` to ``end``,
    extended to the latest record of a worker that outlived ``end``."""
    return max(wall_s, 0.0) + (max(0.0, measured[1] - end) if measured is not None else 0.0)


def forget_task_cpu(progress_dir: Path | None, request_id: str) -> None:
    """Remove the CPU records of ``request_id`` (its result is stored or charged)."""
    if progress_dir is None:
        return
    for path in Path(progress_dir).glob(f"{request_id}.*.json"):
        path.unlink(missing_ok=True)


def _failed_result(backend: str, inp: EvalInput, reason: str, wall_s: float, cpu_s: float,
                   *, version: str = "?", fidelity: int = 0) -> EvalResult:
    """The failed evaluation the executor records for a task the backend did not finish
    (every executor-made failure is built here, so their fields cannot drift)."""
    return EvalResult(
        backend=backend,
        backend_version=version,
        fidelity=fidelity,
        status="failed",
        values={},
        wall_s=wall_s,
        inputs_hash=inp.inputs_hash(backend, version),
        reason=reason,
        cpu_s=cpu_s,
    )


def _failed(task: Task, reason: str, wall_s: float, cpu_s: float) -> EvalResult:
    """A failed result for ``task`` where the worker could not report (backend version unknown)."""
    return _failed_result(task.backend, task.inp, reason, wall_s, cpu_s, fidelity=task.fidelity)


#: seconds to wait for a cluster's port and for Ray to join it
CONNECT_TIMEOUT_S = 15.0


@runtime_checkable
class Executor(Protocol):
    """What the campaign's runner needs of an executor (see the module docstring).

    ``submit`` queues a :class:`Task` (``n_attempts`` incremented); ``wait`` returns the
    tasks that finished (retryable failures resubmitted up to ``max_retries`` first);
    ``capacity`` is how many tasks may be in flight; ``cancel_all`` drops them;
    ``start``/``shutdown`` bracket its use. ``map_unordered``/``n_workers`` are
    :class:`sim_backends.executor.MapExecutor`'s, for physics engines that fan out work.
    """

    address: str | None
    max_retries: int

    def start(self) -> None: ...

    def shutdown(self) -> None: ...

    @property
    def capacity(self) -> int: ...

    @property
    def n_in_flight(self) -> int: ...

    def in_flight(self) -> list[Task]: ...

    def submit(self, task: Task) -> None: ...

    def cancel_all(self) -> None: ...

    def wait(self, timeout_s: float = 1.0) -> list[Completed]: ...

    @property
    def n_workers(self) -> int: ...

    def map_unordered(self, fn: Callable[..., Any], items: Iterable[tuple[Any, ...]],
                      shared: tuple[Any, ...] = ()) -> Iterator[Any]: ...


class ExecutorError(RuntimeError):
    """The executor cannot start (unreachable or refusing cluster, unsatisfiable
    resource request); the message is one line."""


class ClusterLostError(ExecutorError):
    """The Ray cluster went away during a run (its GCS port stopped answering); one line.
    The tasks in flight are left to the store's settlement on ``resume`` (charged what their
    workers recorded), not retried on a cluster that is not there."""


#: seconds a probe of the cluster's GCS port may take (:meth:`RayExecutor.cluster_alive`)
GCS_PROBE_TIMEOUT_S = 2.0


def ray_address(address: str | None) -> str | None:
    """The cluster to join: an explicit address, else ``RAY_ADDRESS``, else None (local)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``host:port`` or ``ray://host:port``; None for ``auto``."""
    rest = address.split("://", 1)[1] if "://" in address else address
    if rest in ("auto", "local"):
        return None
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ExecutorError(f"Ray address {address!r} is not host:port (e.g. 127.0.0.1:6379)")
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout_s: float) -> None:
    """Refuse (:class:`ExecutorError`) an address whose TCP port does not answer."""
    hp = _host_port(address)
    if hp is None:
        return
    try:
        with socket.create_connection(hp, timeout=timeout_s):
            pass
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise ExecutorError(
            f"cannot reach the Ray cluster at {address}: {why} (is `ray start --head` "
            "running there? leave --address and [executor] address unset for a local Ray)"
        ) from None


def _token_available() -> bool:
    """Whether a Ray authentication token is at hand, where Ray looks for one."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return Path(path).is_file()


def _send_token() -> None:
    """Make this process authenticate with its token (``RAY_AUTH_MODE=token``, Ray's
    documented switch). Ray reads it when it is imported, so :meth:`RayExecutor.start`
    sets it before ``import ray``; only a process that imported Ray earlier (a Python
    API user) needs Ray's internal refresh, which is used then and only then."""
    os.environ["RAY_AUTH_MODE"] = "token"
    if "ray" not in sys.modules:
        return
    try:
        from ray._private.authentication.authentication_token_setup import _enable_token_auth

        _enable_token_auth()
    except ImportError:  # a Ray without token authentication: nothing to refresh
        pass


@contextmanager
def _stderr_captured(path: Path) -> Iterator[None]:
    """Send file descriptor 2 (Ray's C++ logging writes there) to ``path`` meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "wb") as f:
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


@contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _connect_error(address: str, exc: BaseException, log: str) -> ExecutorError:
    """One line for a failed ``ray.init(address=...)``."""
    text = f"{log}\n{exc!r}\n{exc.__cause__!r}"
    if "InvalidAuthToken" in text or "AuthenticationError" in text or "Unauthenticated" in text:
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            hint = ("the token sent was refused: use the cluster's token (`ray get-auth-token` "
                    "on its head node) in RAY_AUTH_TOKEN or ~/.ray/auth_token")
        else:
            hint = ("it requires token authentication: set RAY_AUTH_TOKEN to the cluster's "
                    "token (`ray get-auth-token` on its head node) or copy it to ~/.ray/auth_token")
        return ExecutorError(f"Ray cluster at {address} refused the connection: {hint}")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ExecutorError(f"cannot join the Ray cluster at {address}: {first[:300]}")


_WORKER_DIED = "A worker died or was killed"


def _quiet_worker_deaths() -> None:
    """Drop Ray's multi-line "A worker died or was killed ..." notices on the driver
    (printed even with ``log_to_driver=False``); :meth:`RayExecutor.wait` reports each
    death in one line instead. Other messages pass through unchanged."""
    import ray._private.worker as ray_worker

    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None or getattr(original, "_crystal_agent", False):
        return

    def print_to_stdstream(data: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        if any(_WORKER_DIED in str(line) for line in data.get("lines", ())):
            return
        original(data, *args, **kwargs)

    print_to_stdstream._crystal_agent = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = print_to_stdstream


def process_start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks after boot, as text), to tell a
    process from a later one that reuses its pid; None if there is none."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def ray_descendants(root_pid: int) -> dict[int, str]:
    """Ray processes below ``root_pid`` (Linux ``/proc``), mapped to their start times;
    the reaper itself is left out."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    found: dict[int, str] = {}
    todo = [root_pid]
    while todo:
        for pid in children.get(todo.pop(), []):
            todo.append(pid)
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            st = process_start_time(pid)
            if st is not None and b"ray" in cmd and b"_reaper_main" not in cmd:
                found[pid] = st
    return found


def alive(procs: dict[int, str]) -> list[int]:
    """The processes of ``procs`` (pid -> start time) still running (zombies are not)."""
    out = []
    for pid, st in procs.items():
        if process_start_time(pid) != st:
            continue
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            out.append(pid)
    return out


def _reaper_main(launcher_pid: int) -> None:
    """Body of the reaper process (see the module docstring).

    While the launcher lives, record its descendants that are Ray processes every
    0.5 s; on a ``q`` line on stdin (orderly shutdown) exit; on end of input (the
    launcher died) SIGTERM, then SIGKILL, the recorded processes still alive.
    """
    import select
    import signal

    known: dict[int, str] = {}
    while True:
        known.update(ray_descendants(launcher_pid))
        ready, _, _ = select.select([sys.stdin], [], [], 0.5)
        if ready:
            line = sys.stdin.readline()
            if line.strip() == "q":
                return
            if line == "":
                break
    for sig, wait_s in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 0.0)):
        for pid in alive(known):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        t_end = time.monotonic() + wait_s
        while alive(known) and time.monotonic() < t_end:
            time.sleep(0.1)


class RayExecutor:
    """Run tasks on Ray.

    Args:
        address: cluster address; None (and no ``RAY_ADDRESS``) starts a local Ray.
        num_cpus: CPUs of the embedded instance (ignored when joining a cluster).
        cpus_per_task: CPUs requested per task.
        task_timeout_s: wall-clock limit per attempt (a backstop for a task that hangs
            without computing; the worker is killed and charged ``cpus_per_task`` x wall).
        task_cpu_limit_s: CPU-second limit per attempt, enforced in the worker
            (:func:`cpu_limit`): the task is recorded as failed and charged the CPU it
            measured. None: no CPU limit.
        max_retries: extra attempts for retryable failures and dead workers.
        worker_niceness: niceness the workers of an embedded Ray add to this process's
            (Ray's own default, 15, makes a campaign yield to everything else on the
            machine; 0 runs the workers at the campaign's priority, so ``nice -n 10
            crystal-agent run`` applies to them too). A cluster keeps its own setting.
    """

    def __init__(
        self,
        address: str | None = None,
        num_cpus: int | None = None,
        cpus_per_task: float = 1.0,
        task_timeout_s: float = 1800.0,
        max_retries: int = 1,
        task_cpu_limit_s: float | None = None,
        worker_niceness: int = 0,
        progress_dir: Path | None = None,
    ) -> None:
        self.address = ray_address(address)
        self.progress_dir = progress_dir
        self.num_cpus = num_cpus or os.cpu_count() or 1
        self.cpus_per_task = cpus_per_task
        self.task_timeout_s = task_timeout_s
        self.task_cpu_limit_s = task_cpu_limit_s
        self.max_retries = max_retries
        self.worker_niceness = worker_niceness
        self._in_flight: dict[Any, tuple[Task, float]] = {}
        self._remote: Callable[..., Any] | None = None
        self._started_ray = False  # this executor started an embedded Ray ...
        self._joined = False  # ... or joined a cluster (both: ray.shutdown() at the end)
        self._reaper: subprocess.Popen[bytes] | None = None
        self._gcs: tuple[str, int] | None = None  # the GCS (host, port) probed by cluster_alive
        self._lost = False  # the cluster went away: nothing more is asked of it

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        """Start or join Ray (idempotent); :class:`ExecutorError` with one line if the
        cluster cannot be used. Nothing but Ray itself is touched."""
        if self._remote is not None:
            return
        if self.address and os.environ.get("RAY_AUTH_MODE") is None and _token_available():
            _send_token()  # before Ray is imported: it reads the mode at import
        import ray

        if not ray.is_initialized():
            kwargs: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "configure_logging": True,
                "logging_level": "ERROR",
            }
            self.preflight()
            if self.address:
                self._join(ray, kwargs)
            else:
                # the raylet reads its worker niceness from the environment it starts in
                with _env(RAY_worker_niceness=str(self.worker_niceness)):
                    ray.init(
                        address="local",
                        num_cpus=self.num_cpus,
                        object_store_memory=256 * 1024**2,
                        **kwargs,
                    )
                self._started_ray = True
                self._start_reaper()
        self._check_fits(ray)
        try:
            self._gcs = _host_port(str(ray.get_runtime_context().gcs_address or "auto"))
        except ExecutorError:
            self._gcs = None  # an address this probe cannot parse: not probed
        self._lost = False
        _quiet_worker_deaths()
        self._remote = ray.remote(num_cpus=self.cpus_per_task, max_retries=0)(
            _evaluate_in_worker
        )

    def preflight(self) -> None:
        """The checks that need no Ray: the cluster's port answers, or ``cpus_per_task``
        fits ``num_cpus`` of the embedded Ray (:class:`ExecutorError` otherwise)."""
        if self.address:
            check_reachable(self.address, CONNECT_TIMEOUT_S)
        elif self.cpus_per_task > self.num_cpus:
            raise ExecutorError(
                f"executor: cpus_per_task = {self.cpus_per_task:g} exceeds num_cpus = "
                f"{self.num_cpus} of the local Ray; no task could ever start"
            )

    def _join(self, ray: Any, kwargs: dict[str, Any]) -> None:
        import tempfile

        address = str(self.address)
        if os.environ.get("RAY_AUTH_MODE") is None and _token_available():
            _send_token()
        with tempfile.TemporaryDirectory() as tmp:
            log = Path(tmp) / "ray_connect.log"
            try:
                with _stderr_captured(log), _env(
                    RAY_gcs_server_port_wait_time_s=str(int(CONNECT_TIMEOUT_S))
                ):
                    ray.init(address=address, **kwargs)
                self._joined = True
            except Exception as exc:  # noqa: BLE001 - Ray raises many kinds; one line out
                raise _connect_error(address, exc, log.read_text(errors="replace")) from None

    def _check_fits(self, ray: Any) -> None:
        """Refuse a per-task CPU request that no node of the cluster can satisfy."""
        node_cpus = [n.get("Resources", {}).get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")]
        largest = max(node_cpus, default=0.0)
        if self.cpus_per_task > largest:
            where = f"cluster at {self.address}" if self.address else "local Ray"
            self.shutdown()
            raise ExecutorError(
                f"executor: cpus_per_task = {self.cpus_per_task:g} exceeds the largest node of the "
                f"{where} ({largest:g} CPUs); no task could ever start"
            )

    def _start_reaper(self) -> None:
        self._reaper = subprocess.Popen(
            [sys.executable, "-c",
             f"from agent.executor import _reaper_main; _reaper_main({os.getpid()})"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, cwd=str(Path(__file__).resolve().parents[1]),
        )

    def _stop_reaper(self) -> None:
        if self._reaper is None:
            return
        try:
            self._reaper.communicate(b"q\n", timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self._reaper.kill()
            self._reaper.wait()
        self._reaper = None

    def cluster_alive(self) -> bool:
        """Whether the cluster's GCS (the head) still accepts TCP connections: a lost head is
        seen within seconds, before Ray's own driver gives up (about 60 s, then a fatal
        exit of the process). True when not started or not probeable."""
        if self._gcs is None or self._remote is None:
            return True
        try:
            with socket.create_connection(self._gcs, timeout=GCS_PROBE_TIMEOUT_S):
                return True
        except OSError:
            return False

    def starved(self) -> str | None:
        """Why tasks in flight cannot start, when it is that no alive node offers
        ``cpus_per_task`` CPUs (the only worker node lost; a preemptible node gone), as
        one phrase; None when the cluster has the CPUs (the tasks are just running)."""
        import ray

        if not self._in_flight or self._lost:
            return None
        try:
            cpus = float(ray.cluster_resources().get("CPU", 0.0))
        except Exception:  # noqa: BLE001 - a status query must not fail the run
            return None
        if cpus >= self.cpus_per_task:
            return None
        return (f"no node of the cluster offers {self.cpus_per_task:g} CPU (the cluster has {cpus:g}); "
                f"{len(self._in_flight)} task{'s' if len(self._in_flight) != 1 else ''} wait for a node to join")

    def lost_error(self) -> ClusterLostError:
        """The one-line error for a cluster that went away; nothing more is asked of it."""
        self._lost = True
        where = f"the Ray cluster at {self.address}" if self.address else "the local Ray"
        host, port = self._gcs or ("?", 0)
        return ClusterLostError(f"lost {where} (its head, {host}:{port}, stopped answering)")

    @property
    def capacity(self) -> int:
        """How many tasks can run at once on the resources Ray reports."""
        import ray

        cpus = ray.cluster_resources().get("CPU", self.num_cpus)
        return max(1, int(cpus // self.cpus_per_task))

    def shutdown(self) -> None:
        """End the tasks in flight and leave Ray (stop it, if this executor started it).

        A Ray this executor started or joined is left without cancelling each task: a
        forced ``ray.cancel`` racing the reply of a task that has just finished can fail a
        check in Ray's core worker, ending the launcher with a stack dump and exit status 1
        instead of its one-line message (once in CI on SIGTERM, Ray 2.60). Stopping the
        embedded Ray stops its workers; a cluster stops the workers of a driver that left.
        A Ray started by someone else (a test's, a notebook's) stays up: the tasks are
        cancelled there.
        """
        if self._lost or self._started_ray or self._joined:
            self._in_flight.clear()  # no cancels to a cluster that is gone, or one left next
        elif self._remote is not None:
            self.cancel_all()
        if self._started_ray or self._joined:
            import ray

            ray.shutdown()
            self._started_ray = self._joined = False
        self._stop_reaper()
        self._remote = None

    # -- map-style work (sim_backends.executor.MapExecutor) ----------------------------
    @property
    def n_workers(self) -> int:
        """Calls of :meth:`map_unordered` that run at once (:attr:`capacity`)."""
        return self.capacity

    def map_unordered(self, fn: Callable[..., Any], items: Iterable[tuple[Any, ...]],
                      shared: tuple[Any, ...] = ()) -> Iterator[Any]:
        """``fn(*shared, *item)`` for every item as Ray tasks of ``cpus_per_task`` CPUs,
        results yielded as they finish (``shared`` put in the object store once). An
        exception in ``fn`` or a dead worker is raised here (the remaining calls are
        cancelled). Independent of the :meth:`submit`/:meth:`wait` tasks."""
        import ray

        self.start()
        remote = ray.remote(num_cpus=self.cpus_per_task, max_retries=self.max_retries)(fn)
        refs = [ray.put(s) for s in shared]
        pending = [remote.remote(*refs, *item) for item in items]
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    yield ray.get(ref)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)

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
        progress = (str(Path(self.progress_dir) / f"{task.request_id}.{task.n_attempts}.json")
                    if self.progress_dir is not None else None)
        ref = self._remote.remote(task.backend, task.backend_params, task.inp,
                                  self.task_cpu_limit_s, progress)
        self._in_flight[ref] = (task, time.monotonic())

    def _unfinished_cpu(self, task: Task, wall: float) -> float:
        """CPU seconds of the attempt of ``task`` that did not come back (after ``wall``
        s): what its worker recorded, else the cores it held (:func:`unfinished_charge`).
        Earlier attempts of the task are in ``task.cpu_s_retried``."""
        measured = read_task_cpu(self.progress_dir, task.request_id, task.n_attempts)
        return unfinished_charge(measured, self.cpus_per_task, wall, time.time())

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
                result = _failed(task, f"cancelled: {type(exc).__name__}", wall,
                                 self._unfinished_cpu(task, wall))
            except RayError as exc:
                if not self.cluster_alive():  # the whole cluster, not one worker: no retry
                    self._in_flight[ref] = (task, t0)
                    raise self.lost_error() from None
                reason = f"worker died: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                result = _failed(task, reason, wall, self._unfinished_cpu(task, wall))
                result.retryable = True
                again = task.n_attempts <= self.max_retries
                print(f"crystal-agent: worker died running {task.backend} on {task.inp.smiles} "
                      f"(attempt {task.n_attempts}; {'retrying' if again else 'recorded as failed'})",
                      file=sys.stderr, flush=True)
            if not result.ok and result.retryable and task.n_attempts <= self.max_retries:
                task.cpu_s_retried += result.cpu_s
                self.submit(task)
                continue
            result.cpu_s += task.cpu_s_retried
            forget_task_cpu(self.progress_dir, task.request_id)
            completed.append(Completed(task, result))
        now = time.monotonic()
        for ref, (task, t0) in list(self._in_flight.items()):
            if now - t0 > self.task_timeout_s:
                ray.cancel(ref, force=True)
                try:  # until the worker is gone: its recording thread could write again after the forget below
                    ray.wait([ref], timeout=CANCEL_WAIT_S)
                except RayError:
                    pass
                del self._in_flight[ref]
                wall = now - t0
                result = _failed(task, f"timeout: exceeded {self.task_timeout_s:g} s", wall,
                                 self._unfinished_cpu(task, wall) + task.cpu_s_retried)
                forget_task_cpu(self.progress_dir, task.request_id)
                completed.append(Completed(task, result))
        return completed


@contextmanager
def csp_executor(n_workers: int, address: str | None = None) -> Iterator[Any]:
    """The executor ``crystal-agent csp`` runs the CSP engine on: ``n_workers`` > 1 a
    :class:`RayExecutor` (an embedded local Ray with that many CPUs, or the cluster of
    ``address`` / ``RAY_ADDRESS``), shut down afterwards; else the in-process one."""
    if n_workers <= 1:
        from sim_backends.executor import InProcessExecutor

        yield InProcessExecutor()
        return
    import signal
    import threading

    main_thread = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main_thread else None
    ex = RayExecutor(address=address, num_cpus=n_workers)
    ex.start()
    if main_thread and before is not None:  # ray.init sets its own (sys.exit(15)): keep the caller's
        signal.signal(signal.SIGTERM, before)
    try:
        yield ex
    finally:
        ex.shutdown()
