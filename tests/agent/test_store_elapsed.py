"""newuser45a #7: the wall time a user sees is the launcher's over the campaign's runs, not
the sum of the tasks' wall times (1767 s for a 16.5-minute demo on two slots)."""

from __future__ import annotations

import json

import pytest

from agent.store import Store


def _events(store: Store, rows: list[tuple[float, str]]) -> None:
    with store.transaction() as c:
        c.executemany("INSERT INTO events(ts, kind, payload) VALUES (?, ?, ?)",
                      [(ts, kind, json.dumps({})) for ts, kind in rows])


def test_elapsed_over_runs_finished_interrupted_and_killed(tmp_path):
    with Store(tmp_path / "store.sqlite") as store:
        assert store.elapsed_s() == (0.0, 0)
        _events(store, [(100.0, "started"), (150.0, "result"), (160.0, "interrupted"),   # 60 s
                        (200.0, "resumed"), (205.0, "started"), (230.0, "result"),       # killed: 25 s
                        (300.0, "started"), (350.0, "result"), (400.0, "finished")])     # 100 s
        assert store.elapsed_s() == (pytest.approx(185.0), 3)
        _events(store, [(500.0, "started"), (520.0, "result")])  # going on (or killed) ...
        store.set_meta("heartbeat", repr(560.0))  # ... to its last heartbeat
        assert store.elapsed_s() == (pytest.approx(245.0), 4)


def test_status_line_gives_the_campaigns_wall_time():
    from agent.summary import status_lines

    objective = {"name": "n_heavy_atoms", "label": "heavy atoms", "symbol": "n", "unit": "", "level": "RDKit",
                 "direction": "maximize"}
    rec = {"objective": objective, "name": "d", "n_evaluations": 97, "max_evaluations": 200, "n_failed": 0, "n_by_backend": {},
           "spent_cpu_s": 674.0, "spent_wall_s": 1767.1, "elapsed_s": 990.4, "n_runs": 1, "best": None,
           "best_note": "", "finished": True, "stop_reason": "x"}
    line = next(ln for ln in status_lines(rec) if ln.startswith("CPU spent"))
    assert "(their wall times add up to 1767.1 s); the campaign ran 16 min 30 s wall time" in line
    rec.update(elapsed_s=7500.0, n_runs=2)
    line = next(ln for ln in status_lines(rec) if ln.startswith("CPU spent"))
    assert "the campaign ran 2 h 05 min wall time over 2 runs" in line


def test_a_resume_that_runs_nothing_adds_no_wall_time(tmp_path):
    """newuser49 #9: resuming a finished campaign (Ray started, nothing to do, 7 s) made status
    say 10 min 53 s instead of 10 min 46 s; a run that finishes with no task, result or lab
    experiment adds neither a run nor seconds. One interrupted or killed before it did
    anything (waiting on the lab, on Ray) keeps its seconds, not counted as a run (review49 #5)."""
    with Store(tmp_path / "store.sqlite") as store:
        _events(store, [(100.0, "started"), (150.0, "result"), (160.0, "finished"),  # 60 s
                        (200.0, "resumed"), (201.0, "started"), (208.0, "finished"),  # nothing: 0 s
                        (300.0, "started"), (305.0, "molecule_refit"),  # killed before doing anything: 5 s
                        (350.0, "started"), (390.0, "interrupted"),  # Ctrl-C while waiting: 40 s
                        (400.0, "started"), (410.0, "result"), (420.0, "finished")])  # 20 s
        store.set_meta("finished", "1")
        assert store.elapsed_s() == (pytest.approx(125.0), 2) == _scan(store)


def _scan(store: Store, now: float | None = None) -> tuple[float, int]:
    """The full scan over the events that Store.elapsed_s was before its running count (review
    of 2026-12-07: it ran in every status and every logged progress): the reference."""
    ends = ("finished", "interrupted", "cluster_lost")
    launch = ("resumed", "renamed", "interrupted_task", "refine")  # a later launch's, before its start
    work = ("submitted", "result", "lab_submitted", "lab_result")  # a run that did none is not counted (review 47)
    beat = store.get_meta("heartbeat")
    total, runs, start, last, worked = 0.0, 0, None, None, False
    for ts, kind in store.conn.execute("SELECT ts, kind FROM events ORDER BY id").fetchall():
        if kind == "started":
            if start is not None:
                total += last - start
            start, last, worked = ts, ts, False
        elif start is not None:
            if kind in ends:
                total += (ts - start) if worked or kind != "finished" else 0.0  # finished, did nothing (newuser49 #9)
                start = None
            elif kind not in launch:
                last = ts
                if kind in work and not worked:
                    runs, worked = runs + 1, True
    if start is not None:
        end = max(last, float(beat)) if beat else last
        if store.get_meta("finished") != "1" and now is not None:
            end = max(end, now)
        total += end - start
    return total, runs


def test_the_running_count_equals_the_scan_over_runs_killed_and_resumed(tmp_path, monkeypatch):
    """Runs as the runner logs them (heartbeats, ``started``, evaluations, an end event), a run
    killed without an end event, resumes: after every step the running count gives what the
    scan gives, with and without ``now``; it reads only the events logged since it was stored."""
    import time

    clock = [1000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])

    def at(ts, kind=None, beat=False):
        clock[0] = ts
        if beat:
            store.heartbeat()
        if kind:
            store.log_event(kind)
        for now in (None, ts + 3.0):
            assert store.elapsed_s(now) == _scan(store, now), (kind, ts, now)

    with Store(tmp_path / "store.sqlite", lock=True) as store:
        at(1000.0, "created")
        store.set_meta("finished", "0")
        at(1001.0, beat=True)
        at(1002.0, "started")                                    # run 1: interrupted
        at(1010.0, "submitted")
        at(1020.0, "result")
        at(1025.0, beat=True)
        at(1030.0, "interrupted")
        at(1100.0, "resumed")
        at(1101.0, beat=True)
        at(1102.0, "started")                                    # run 2: killed (kill -9)
        at(1110.0, "result")
        at(1115.0, beat=True)                                    # its last heartbeat ...
        at(1117.0, "result")                                     # ... and its last event
        at(1200.0, "resumed")
        at(1201.0, "interrupted_task")
        at(1202.0, beat=True)
        at(1203.0, "started")                                    # run 3: finished
        at(1250.0, "result")
        store.set_meta("finished", "1")
        at(1260.0, "finished")
        at(1300.0, "resumed")
        store.set_meta("finished", "0")
        at(1301.0, beat=True)
        at(1302.0, "started")                                    # run 4: going on (or killed)
        at(1310.0, "result")
        at(1340.0, beat=True)
        # run 2, killed, ends at its own last event (1117), not at the next launch's resumed or
        # interrupted_task event (1201: the time it lay dead was counted as run time before)
        assert store.elapsed_s() == (pytest.approx(28.0 + 15.0 + 57.0 + 38.0), 4)
        # the count is stored up to the last heartbeat: the events before it are not read again
        with store.transaction() as c:
            c.execute("UPDATE events SET ts = ts - 500 WHERE kind = 'started'")
        assert store.elapsed_s() == (pytest.approx(138.0), 4)


def test_a_killed_run_ends_at_its_own_last_heartbeat(tmp_path, monkeypatch):
    """A run killed after its last event but before its next heartbeat ends at that
    heartbeat, though the next launch overwrites the heartbeat; the next launch's own
    heartbeat, before its ``started``, is not the killed run's."""
    import time

    clock = [1000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    path = tmp_path / "store.sqlite"
    with Store(path, lock=True) as store:       # the killed launch
        for ts, what in ((1000.0, "started"), (1010.0, "result"), (1040.0, "beat")):
            clock[0] = ts
            store.heartbeat() if what == "beat" else store.log_event(what)
        store.conn.close()  # kill -9: no end event, no clean close
        store.conn = None
    with Store(path, lock=True) as store:       # the next launch
        for ts, what in ((1500.0, "resumed"), (1501.0, "beat"), (1502.0, "started"), (1512.0, "result"),
                         (1520.0, "finished")):
            clock[0] = ts
            store.heartbeat() if what == "beat" else store.log_event(what)
        assert store.elapsed_s() == (pytest.approx(40.0 + 18.0), 2)


def test_a_store_without_the_count_is_scanned_once_and_keeps_it(tmp_path):
    """A store made before the running count (events only, as test_elapsed_over_runs_... writes
    them) gives the scan's value; the launcher (the lock's holder) stores the count then, a
    reader never writes."""
    path = tmp_path / "store.sqlite"
    with Store(path) as store:
        _events(store, [(100.0, "started"), (150.0, "result"), (160.0, "interrupted"),
                        (200.0, "resumed"), (205.0, "started"), (230.0, "result"),
                        (300.0, "started"), (350.0, "result"), (400.0, "finished"),
                        (500.0, "started"), (520.0, "result")])
        store.set_meta("heartbeat", repr(560.0))
        assert store.elapsed_s() == _scan(store) == (pytest.approx(245.0), 4)
        assert store.get_meta("elapsed_count") is None  # a reader: nothing written
    with Store(path, lock=True) as store:
        assert store.elapsed_s(now=600.0) == _scan(store, now=600.0) == (pytest.approx(285.0), 4)
        assert store.get_meta("elapsed_count") is not None  # stored once ...
        with store.transaction() as c:
            c.execute("UPDATE events SET ts = ts - 50 WHERE kind = 'started' AND ts < 300")
        assert store.elapsed_s(now=600.0) == (pytest.approx(285.0), 4)  # ... and read, not the scan again


def test_the_running_count_of_a_real_campaign_and_its_resume(tmp_path, capsys):
    """A real campaign (diagnostic backend, the local executor) run, resumed twice with nothing
    to do (finished: not runs, review 47 #5; status says no "over 2 runs"), then resumed with a
    larger budget: its count is the scan's."""
    from conftest import write_config

    from agent.campaign import Campaign
    from agent.cli import main
    from agent.config import load_config
    from agent.local_executor import LocalExecutor
    from agent.runner import run_campaign

    body = ('objective = "n_heavy_atoms"\nmax_evaluations = 2\nbatch_size = 1\n'
            '[tracking]\nenabled = false\n[[backends]]\nname = "diagnostic"\n')
    runs = tmp_path / "runs"
    camp = Campaign.create(load_config(write_config(tmp_path, ["C", "CC", "CCC", "CCO"], body, name="e")), runs)
    try:
        run_campaign(camp, runs, progress=False, executor=LocalExecutor(slots=1))
        assert camp.store.elapsed_s() == _scan(camp.store) and camp.store.elapsed_s()[1] == 1
    finally:
        camp.close()
    for _ in range(2):  # finished: a resume runs no task
        camp = Campaign.open("e", runs)
        try:
            st = run_campaign(camp, runs, progress=False, executor=LocalExecutor(slots=1))
            assert st.n_evaluations == 2 and st.n_runs == 1 and camp.store.elapsed_s() == _scan(camp.store)
        finally:
            camp.close()
    capsys.readouterr()
    main(["status", "e", "--runs-dir", str(runs), "--json"])
    assert json.loads(capsys.readouterr().out)["n_runs"] == 1
    main(["status", "e", "--runs-dir", str(runs)])
    assert " runs" not in next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("CPU spent"))
    camp = Campaign.open("e", runs, max_evaluations=4)
    try:
        run_campaign(camp, runs, progress=False, executor=LocalExecutor(slots=1))
        assert camp.store.elapsed_s() == _scan(camp.store) and camp.store.elapsed_s()[1] == 2
        assert camp.status().elapsed_s == _scan(camp.store)[0] > 0
    finally:
        camp.close()
