"""Review 47 #5: a resume of a finished campaign that runs no task and changes nothing (its only
event is the final refit) is not counted among the campaign's runs in status; a run counts once
it submits a task or a lab experiment or stores a result (``agent.store.RUN_WORK``). A real
campaign's no-op resumes: tests/agent/test_store_elapsed.py."""

import json

import pytest

from agent.store import Store


def _events(store, rows):
    with store.transaction() as c:
        c.executemany("INSERT INTO events(ts, kind, payload) VALUES (?, ?, ?)",
                      [(ts, kind, json.dumps({})) for ts, kind in rows])


def test_what_makes_a_run(tmp_path):
    with Store(tmp_path / "store.sqlite", lock=True) as store:
        _events(store, [(100.0, "started"), (110.0, "submitted"), (120.0, "result"), (130.0, "finished"),  # 30 s
                        (200.0, "resumed"), (201.0, "started"), (205.0, "molecule_refit"),
                        (206.0, "finished")])  # a no-op: not a run, and its 5 s not counted (newuser49 #9)
        assert store.elapsed_s() == (pytest.approx(30.0), 1)
        _events(store, [(300.0, "started"), (310.0, "lab_result"), (320.0, "finished")])  # a lab result came in
        assert store.elapsed_s() == (pytest.approx(50.0), 2)
        _events(store, [(400.0, "started"), (402.0, "starved")])  # killed before it submitted anything
        assert store.elapsed_s() == (pytest.approx(52.0), 2)  # (or going on): its time counts, not as a run
        store.log_event("lab_submitted")  # ... or going on, and now it has done something
        assert store.elapsed_s()[1] == 3


def test_a_count_stored_before_runs_were_judged_keeps_its_open_run(tmp_path):
    """A count stored by older code counted a run at its ``started``: its open run stays counted."""
    with Store(tmp_path / "store.sqlite", lock=True) as store:
        _events(store, [(100.0, "started")])
        store.set_meta("elapsed_count", json.dumps({"event_id": 1, "total": 0.0, "runs": 1, "start": 100.0,
                                                    "last": 100.0}))
        _events(store, [(150.0, "finished")])
        assert store.elapsed_s() == (pytest.approx(50.0), 1)
