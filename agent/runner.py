"""The campaign loop: ask the campaign for work whenever a Ray worker is free, tell it
every result as it arrives, and log to MLflow.

Ctrl-C (or SIGTERM) stops cleanly: in-flight tasks are cancelled, every completed
result is already in the store, and ``crystal-agent resume NAME`` continues to the
same budget. A ``kill -9`` loses only the in-flight work. Tasks a run left unfinished
(cancelled or killed) are run again and charged to the CPU budget when the next run
starts: the CPU seconds their workers recorded (every
:data:`agent.executor.TASK_PROGRESS_S` s, in the campaign's ``task_cpu`` folder) plus
their CPUs x the time from that record to the run's last heartbeat (written every
:data:`HEARTBEAT_S` s), at most their CPUs x the wall time from submission to that
heartbeat, which is the charge of a task whose worker left no record
(``Store.settle_interrupted``). Each task's ``submitted`` event records why its stage chose
it (:attr:`agent.stages.base.Request.why`, when the stage says; ``report/decisions.csv``).

Before a campaign is created, :func:`preflight` checks what can be checked without
starting anything (the cluster address answers, ``cpus_per_task`` fits the local Ray,
the MLflow tracking URI is usable), each failure one line; :func:`make_executor` builds
the executor a caller starts before handing it to :func:`run_campaign`.
"""

from __future__ import annotations

import signal
import sys
import time
from typing import TYPE_CHECKING, Any

from agent import interrupt

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from agent.campaign import Campaign, Status
    from agent.config import CampaignConfig
    from agent.executor import RayExecutor


#: seconds between the run's heartbeats in the store (the end of an unfinished task's charge)
HEARTBEAT_S = 5.0
#: seconds without a result after which, and between which, a run whose tasks cannot start
#: (no node with the CPUs) says so (:meth:`agent.executor.RayExecutor.starved`)
STARVED_SAY_S = 60.0
#: with no result for this long, the run says which tasks are running (newuser50 #6: a 2-min
#: silence while two refined CSPs ran looked like a hang)
RUNNING_SAY_S = 60.0


class CampaignInterrupted(Exception):
    """The user stopped the campaign (Ctrl-C / SIGTERM); it can be resumed."""


def _in_main_thread() -> bool:
    """Signal handlers can be installed only from the main thread (a campaign run from a
    notebook or dashboard thread keeps the process's handlers)."""
    import threading

    return threading.current_thread() is threading.main_thread()


class _GuardedTracker:
    """The MLflow tracker, minus its failures: MLflow is a view of the store, so a tracking
    call that fails mid-run (a full disk, a server gone) says so in one line on stderr and
    tracking stops for the rest of the run; the campaign goes on and every result stays in
    the store (``crystal-agent report`` rewrites the plots; a resumed run logs again)."""

    def __init__(self, tracker: Any) -> None:
        self.tracker = tracker

    def __bool__(self) -> bool:
        return self.tracker is not None

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if self.tracker is None:
                return None
            try:
                return getattr(self.tracker, name)(*args, **kwargs)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - any MLflow failure: one line, go on
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                print(f"crystal-agent: warning: MLflow tracking stopped ({type(exc).__name__}: {first}); "
                      "the campaign goes on and its results stay in the store", file=sys.stderr, flush=True)
                self.tracker = None
                return None

        return call


class PlainProgress:
    """The campaign progress as plain lines on stderr (as the bar; stdout keeps the
    results), for a stderr that is not a terminal (a log file, a pipe), where a live bar
    is squeezed into 80 columns and drawn once: a line per completed evaluation, at most
    one per :attr:`every_s` seconds, and always the last. An update that comes within
    :attr:`every_s` of the last line is not dropped: it is printed by the first
    :meth:`update` or :meth:`tick` after the window ends (the run's loop ticks about once a
    second), so the log is at most about :attr:`every_s` behind. The subset of
    :class:`rich.progress.Progress` that :func:`run_campaign` uses, plus :meth:`tick`.

    Args:
        clock: the monotonic clock in seconds (tests inject one).
    """

    every_s = 10.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.start = clock()
        self.last: float | None = None
        self.tasks: dict[int, dict[str, Any]] = {}
        self.pending: set[int] = set()  # tasks with an update not printed yet (throttled)

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        for task_id, task in self.tasks.items():
            if task_id in self.pending or task["shown"] != task["completed"]:
                self._line(task_id)

    def add_task(self, description: str, total: int, completed: int = 0, **fields: Any) -> int:
        task_id = len(self.tasks)
        self.tasks[task_id] = {"description": description, "total": total, "completed": completed,
                               "shown": completed, **fields}
        return task_id

    def update(self, task_id: int, completed: int | None = None, **fields: Any) -> None:
        task = self.tasks[task_id]
        if completed is not None:
            task["completed"] = completed
        task.update(fields)
        self.pending.add(task_id)
        if task["completed"] >= task["total"]:
            self._line(task_id)
        self.tick()

    def tick(self) -> None:
        """Print the throttled updates once :attr:`every_s` has passed since the last
        line; nothing (and no clock read) when none is waiting."""
        if not self.pending:
            return
        if self.last is None or self.clock() - self.last >= self.every_s:
            for task_id in sorted(self.pending):
                self._line(task_id)

    def _line(self, task_id: int) -> None:
        task = self.tasks[task_id]
        self.pending.discard(task_id)
        self.last, task["shown"] = self.clock(), task["completed"]
        elapsed = int(self.last - self.start)
        info = ", ".join(" ".join(part.split()) for part in str(task.get("info") or "").split("  ") if part.strip())
        print(f"{task['description']}: {task['completed']}/{task['total']} evaluations, "
              f"{elapsed // 3600}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d} elapsed"
              + (f", {info}" if info else ""), file=sys.stderr, flush=True)


def resume_line(campaign: Campaign, n_settled: int, cpu_settled_s: float, tasks: list[str] | None = None) -> str:
    """The line a resumed run starts with (newuser44b #10: a resumed log stayed empty until
    the first result, and nothing said what was recovered): where the campaign stands and
    what the tasks the last run left unfinished were charged now."""
    cfg = campaign.cfg
    spent = f"{campaign.spent_cpu_s:.1f}" + (f" of {cfg.max_cpu_hours * 3600:.0f}" if cfg.max_cpu_hours else "")
    line = (f"crystal-agent: resuming {cfg.name!r} at {campaign.n_evaluations} of {cfg.max_evaluations} "
            f"evaluations, CPU {spent} s spent")
    if n_settled:
        one = n_settled == 1
        what = f" ({', '.join(tasks)})" if tasks else ""
        line += (f"; {n_settled} task{'' if one else 's'}{what} the last run left unfinished "
                 f"charged {cpu_settled_s:.1f} CPU s (what {'its worker' if one else 'their workers'} recorded) "
                 "and asked again")
    return line


def running_line(tasks: list[Any], names: dict[str, str], now: float) -> str:
    """``crystal-agent: running: esf-refined pentacene (1:40), esf-refined BNT (1:38)``: the
    tasks in flight, oldest first, with the wall time since each was submitted (``names``:
    SMILES -> the pool's name)."""
    from agent.store import minutes_seconds

    parts = []
    for t in sorted(tasks, key=lambda t: t.submitted_at or now):
        what = names.get(t.inp.smiles) or t.inp.smiles
        where = f" {t.inp.structure_id}" if getattr(t.inp, "structure_id", None) else ""
        parts.append(f"{t.backend} {what}{where} ({minutes_seconds(now - (t.submitted_at or now))})")
    return "crystal-agent: running: " + (", ".join(parts) if parts else "nothing in flight")


def progress_info(campaign: Campaign, symbol: str) -> str:
    """The text after the progress bar: the CPU spent of the budget when there is one (the
    bar counts evaluations up to ``max_evaluations``, so it stops short when the CPU budget
    binds, fresh39 C3), the best value so far, the failed evaluations."""
    from agent.summary import format_value

    cfg = campaign.cfg
    parts = []
    if cfg.max_cpu_hours is not None:
        budget = cfg.max_cpu_hours * 3600  # the share too: it, not the evaluation count, ends most runs
        parts.append(f"CPU {campaign.spent_cpu_s:.0f} of {budget:.0f} s ({100 * campaign.spent_cpu_s / budget:.0f} %)")
    best = campaign.molecules.best_index()
    if best is not None:  # which molecule, too (newuser45a #12)
        parts.append(f"best {symbol} {format_value(cfg.objective, best[1])} ({campaign.molecules.names[best[0]]})")
    parts.append(f"failed {campaign.n_failed}")
    return "  ".join(parts)


def make_executor(cfg: CampaignConfig, address: str | None = None) -> RayExecutor:
    """The Ray executor of ``cfg``'s ``[executor]`` table (``address`` overrides it); not
    started yet."""
    from agent.executor import RayExecutor

    ex_cfg = cfg.executor
    return RayExecutor(
        address=address or ex_cfg.address,
        num_cpus=ex_cfg.num_cpus,
        cpus_per_task=ex_cfg.cpus_per_task,
        task_timeout_s=ex_cfg.task_timeout_s,
        max_retries=ex_cfg.max_retries,
        task_cpu_limit_s=ex_cfg.task_cpu_limit_s,
        worker_niceness=ex_cfg.worker_niceness,
    )


def preflight(cfg: CampaignConfig, runs_dir: str | Path, address: str | None = None) -> None:
    """Refuse, in one line and without creating anything, a campaign whose executor or
    tracking cannot work: an unreachable cluster address
    (:class:`~agent.executor.ExecutorError`), ``cpus_per_task`` above the local Ray's
    CPUs, an unusable MLflow tracking URI (:class:`~agent.tracking.TrackingError`)."""
    make_executor(cfg, address).preflight()
    if cfg.tracking.enabled:
        from agent.tracking import check_campaign_tracking, tracking_uri

        check_campaign_tracking(tracking_uri(cfg, runs_dir), runs_dir)


def campaign_runs_dir(campaign: Campaign, runs_dir: str | Path | None = None) -> Path:
    """The runs directory ``campaign`` lives in; ``runs_dir``, if given, must be it
    (:class:`ValueError` otherwise, before anything is written)."""
    from pathlib import Path

    own = Path(campaign.directory).parent
    if runs_dir is not None and Path(runs_dir).resolve() != own.resolve():
        raise ValueError(
            f"run_campaign: campaign {campaign.cfg.name!r} lives in runs directory {own}, not "
            f"{runs_dir}; pass runs_dir={str(own)!r} or leave runs_dir out (its store and "
            "MLflow would be split between two directories)"
        )
    return own


def run_campaign(
    campaign: Campaign,
    runs_dir: str | Path | None = None,
    *,
    address: str | None = None,
    progress: bool = True,
    executor: Any = None,
    on_start: Callable[[], None] | None = None,
) -> Status:
    """Run ``campaign`` until a stop criterion holds; returns its final status.

    ``runs_dir`` is the runs directory the campaign lives in (by default the one it was
    created or opened in; another one is refused with a :class:`ValueError`, since the
    store would stay in one and the MLflow store, ``<runs_dir>/mlflow.db``, go to the
    other). ``executor`` (optional) is any object with the
    :class:`~agent.executor.RayExecutor` interface, e.g.
    :class:`agent.local_executor.LocalExecutor` for tests and benchmarks; by default a
    Ray executor is built from the ``[executor]`` config. It is started before anything
    is logged, so a cluster that cannot be joined leaves no MLflow store behind;
    ``on_start()`` (optional) is called once it has started (``crystal-agent run`` prints
    its pool summary then, so a refused start prints only its one-line error).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    cfg = campaign.cfg
    runs_dir = campaign_runs_dir(campaign, runs_dir)
    if executor is None:
        executor = make_executor(cfg, address)
    tracker = _GuardedTracker(None)
    store = campaign.store
    if getattr(executor, "progress_dir", False) is None:  # a Ray executor: workers record CPU
        store.task_cpu_dir.mkdir(parents=True, exist_ok=True)
        executor.progress_dir = store.task_cpu_dir
    main_thread = _in_main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main_thread else None
    previous_int = signal.getsignal(signal.SIGINT) if main_thread else None
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
    )
    from agent.summary import quantity

    symbol = f"{quantity(cfg.objective)[1]} ({cfg.backends[-1].name}) ="
    try:
        try:
            interrupt.check()  # a SIGTERM swallowed before the run (an import's bare `except:`)
            executor.start()
        except SystemExit as exc:  # ray.init's own SIGTERM handler (sys.exit(15)) while it starts
            if exc.code != signal.SIGTERM:
                raise
            raise KeyboardInterrupt from None
        if on_start is not None:
            on_start()
        if cfg.tracking.enabled:
            from agent.tracking import Tracker

            tracker = _GuardedTracker(Tracker(campaign, runs_dir))  # a failure to start: one-line error
        store.set_meta("finished", "0")
        n_before, cpu_before = campaign.n_interrupted, campaign.interrupted_cpu_s
        left = store.unsettled_tasks() if progress else []  # what they were, before they are charged
        campaign.settle_interrupted()  # before this run's first heartbeat
        if progress and campaign.n_evaluations + campaign.n_interrupted > 0:  # a resumed run says where it is
            print(resume_line(campaign, campaign.n_interrupted - n_before,
                              campaign.interrupted_cpu_s - cpu_before, left), file=sys.stderr, flush=True)
        cpus = float(getattr(executor, "cpus_per_task", cfg.executor.cpus_per_task))
        store.heartbeat()
        beat = time.monotonic()
        # after the executor: starting Ray installs its own SIGTERM handler (a stack dump)
        if main_thread:
            signal.signal(signal.SIGTERM, interrupt.on_sigterm)
            if previous_int in (signal.default_int_handler, interrupt.on_sigterm):
                signal.signal(signal.SIGINT, interrupt.on_sigterm)  # a swallowed Ctrl-C is recorded too
        alive = getattr(executor, "cluster_alive", None)
        starved = getattr(executor, "starved", None)
        last_result = last_said = last_running = time.monotonic()
        names: dict[str, str] | None = None
        slots = min(cfg.batch_size, executor.capacity)
        store.log_event("started", slots=slots, address=executor.address or "local")
        from rich.console import Console

        # progress goes to stderr (stdout keeps the results and the summary); a log file or
        # pipe gets readable lines, no bar
        console = Console(stderr=True)
        plain = progress and not console.is_terminal
        with (PlainProgress() if plain
              else Progress(*columns, console=console, disable=not progress, transient=False)) as bar:
            bar_id = bar.add_task(
                cfg.name, total=cfg.max_evaluations, completed=campaign.n_evaluations,
                info=progress_info(campaign, symbol) if cfg.max_cpu_hours is not None else ""
            )
            while True:
                interrupt.check()
                if plain:
                    bar.tick()  # a progress line throttled earlier, once its window has passed
                free = slots - executor.n_in_flight
                if free > 0 and not (cfg.synchronous and executor.n_in_flight):
                    for task in campaign.ask(free):
                        # why: the stage's reason for the choice (report/decisions.csv)
                        store.note_submitted(task.request_id, cpus, backend=task.backend, smiles=task.inp.smiles,
                                             structure_id=task.inp.structure_id,
                                             why=task.request.why if task.request is not None else None)
                        executor.submit(task)
                if time.monotonic() - beat >= HEARTBEAT_S:
                    # a lost cluster ends the run before another heartbeat: its tasks are
                    # charged to the last one, taken while it answered
                    if alive is not None and not alive():
                        raise executor.lost_error()
                    store.heartbeat()
                    beat = time.monotonic()
                lab_open = campaign.step_external()
                tracker.log_events()
                if executor.n_in_flight == 0:
                    if not lab_open:
                        break
                    time.sleep(1.0)  # only lab experiments are running
                    continue
                told = False
                for done in executor.wait(timeout_s=1.0):
                    campaign.tell(done.task, done.result, defer=cfg.synchronous)
                    told = True
                    if not cfg.synchronous:
                        tracker.log_progress()
                if told and cfg.synchronous and executor.n_in_flight == 0:
                    # the batch is complete: its results are told to the stages now (as the
                    # next ask would, in the order asked), so that the counters and the
                    # logged progress include them; logged once per batch
                    campaign.absorb_deferred()
                    tracker.log_progress()
                if told:
                    last_result = time.monotonic()
                    bar.update(bar_id, completed=campaign.n_evaluations, info=progress_info(campaign, symbol))
                elif progress and min(time.monotonic() - last_result, time.monotonic() - last_running) >= RUNNING_SAY_S:
                    last_running = time.monotonic()
                    if names is None:
                        names = {m["smiles"]: m["name"] for m in store.molecules() if m["name"]}
                    print(running_line(executor.in_flight(), names, time.time()), file=sys.stderr, flush=True)
                elif starved is not None and min(time.monotonic() - last_result,
                                                 time.monotonic() - last_said) >= STARVED_SAY_S:
                    # a cluster that lost its only worker node waits for one to join:
                    # say so, once a minute (newuser44b #5: silent, status "running")
                    last_said = time.monotonic()
                    if why := starved():
                        print(f"crystal-agent: waiting: {why}", file=sys.stderr, flush=True)
                        store.log_event("starved", reason=why)
        reason = campaign.stop_reason() or "acquisition proposed nothing more"
        campaign.refit_final()  # the final models have seen every result
        tracker.log_progress()  # the final counts (a no-op when already logged)
        tracker.finish_models()  # ... and are the last ones logged
        store.set_meta("stop_reason", reason)
        store.set_meta("finished", "1")
        store.log_event("finished", reason=reason)
        if tracker:
            tracker.log_plots()
            tracker.finish("FINISHED")
        if not tracker:  # no tracking, or it stopped: the report is still written
            from agent.report import write_plots

            write_plots(campaign)
        return campaign.status()
    except KeyboardInterrupt:
        store.heartbeat()  # the cancelled tasks ran until now
        campaign.forget_pending()  # the executor's shutdown (below) ends the tasks
        store.log_event("interrupted", n_evaluations=campaign.n_evaluations)
        tracker.finish("KILLED")
        raise CampaignInterrupted(
            f"campaign {cfg.name!r} interrupted after {campaign.n_evaluations} evaluations; "
            f"continue with `crystal-agent resume {cfg.name}`"
        ) from None
    except Exception as exc:
        from agent.executor import ClusterLostError

        if not isinstance(exc, ClusterLostError):
            raise
        # no heartbeat: the unfinished tasks are charged to the last one, taken while the
        # cluster answered, and what their workers recorded (settled on resume)
        campaign.forget_pending()
        store.log_event("cluster_lost", n_evaluations=campaign.n_evaluations, address=executor.address or "local")
        tracker.finish("FAILED")
        raise ClusterLostError(
            f"{exc} after {campaign.n_evaluations} evaluations; the results are kept and "
            f"`crystal-agent resume {cfg.name}` continues once the cluster is back (unfinished tasks "
            f"are charged what their workers recorded)") from None
    finally:
        try:
            executor.shutdown()
        finally:  # a SIGTERM while Ray shuts down is an interruption too, not a silent death
            if main_thread:
                signal.signal(signal.SIGTERM, previous)
                if previous_int is not None:
                    signal.signal(signal.SIGINT, previous_int)
            interrupt.clear()  # reported (or the run ended): a later run in this process starts afresh
