"""Review 47 #2: ``Store._run_open`` (whether this Store logged the ``started`` of the run still
open, so its heartbeats extend that run) is kept beside the events, not derived from them: the
events say that the last run is open, not which process opened it. These pin the two cases
where the last run-boundary event is a ``started`` that is not this launch's."""

import time

import pytest

from agent.store import Store


def _at(clock, store, steps):
    for ts, what in steps:
        clock[0] = ts
        if what == "beat":
            store.heartbeat()
        elif what == "settle":
            store.settle_interrupted()
        else:
            store.log_event(what)


def test_a_new_launch_that_logs_nothing_before_its_heartbeat_does_not_extend_the_killed_run(tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    path = tmp_path / "store.sqlite"
    with Store(path, lock=True) as store:  # killed: no end event
        _at(clock, store, [(1000.0, "started"), (1010.0, "result")])
        store.conn.close()
        store.conn = None
    with Store(path, lock=True) as store:  # holds the lock; the last boundary event is the killed run's start
        _at(clock, store, [(1501.0, "beat"), (1502.0, "started"), (1510.0, "result"), (1520.0, "finished")])
        assert store.elapsed_s() == (pytest.approx(10.0 + 18.0), 2)


def test_a_second_run_of_the_same_store_after_one_that_logged_no_end(tmp_path, monkeypatch):
    """A run that raised an unexpected error logs no end event; the next run of the same
    Store (a notebook's second call) settles, beats and starts: the settle closes this Store's
    run, so the beat is not the failed run's (the events alone cannot tell this apart from a
    run going on)."""
    clock = [1000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    with Store(tmp_path / "store.sqlite", lock=True) as store:
        _at(clock, store, [(1000.0, "started"), (1010.0, "result"),
                           (1500.0, "settle"), (1501.0, "beat"), (1502.0, "started"), (1510.0, "result"),
                           (1520.0, "finished")])
        assert store.elapsed_s() == (pytest.approx(10.0 + 18.0), 2)


def test_this_runs_heartbeats_extend_it(tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    path = tmp_path / "store.sqlite"
    with Store(path, lock=True) as store:
        _at(clock, store, [(999.0, "resumed"), (999.5, "beat"), (1000.0, "started"), (1010.0, "result"),
                           (1040.0, "beat")])
        store.conn.close()  # killed after its heartbeat
        store.conn = None
    with Store(path, lock=True) as store:
        _at(clock, store, [(1500.0, "resumed"), (1501.0, "beat"), (1502.0, "started"), (1505.0, "result"),
                           (1512.0, "finished")])
        assert store.elapsed_s() == (pytest.approx(40.0 + 10.0), 2)  # the killed run ends at its own beat
