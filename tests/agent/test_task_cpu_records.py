"""The CPU a task's worker records while it runs (agent.executor), and what a task that did
not come back is charged from it (``unfinished_charge``, ``Store.settle_interrupted``)."""

import json
import time

import pytest

from agent.executor import (
    _evaluate_in_worker,
    forget_task_cpu,
    read_task_cpu,
    task_cpu_record,
    unfinished_charge,
    unfinished_wall,
)
from sim_backends.base import EvalInput


def test_a_worker_records_the_cpu_its_task_used(tmp_path):
    """In-process: a task that burns 0.4 CPU s and sleeps 0.3 s leaves a final record of
    about 0.4 CPU s (not its wall time), marked done."""
    path = tmp_path / "r1.1.json"
    res = _evaluate_in_worker("_faulty", {"burn_s": 0.4, "sleep_s": 0.3}, EvalInput(smiles="CCO"),
                              None, str(path))
    assert res.ok
    rec = json.loads(path.read_text())
    assert rec["done"] is True
    assert 0.35 <= rec["cpu_s"] <= 0.4 + 0.2
    assert rec["wall_s"] >= 0.65
    assert read_task_cpu(tmp_path, "r1") == (pytest.approx(rec["cpu_s"]), pytest.approx(rec["time"]))


def test_no_record_where_the_folder_is_missing(tmp_path):
    """A worker whose record folder does not exist (another node's disk) writes nothing and
    the task still runs."""
    path = tmp_path / "absent" / "r1.1.json"
    assert _evaluate_in_worker("_faulty", {}, EvalInput(smiles="C"), None, str(path)).ok
    assert not path.parent.exists()


def test_records_of_all_attempts_are_summed_and_forgotten(tmp_path):
    task_cpu_record(tmp_path / "req.1.json", 3.0, 10.0, True)
    task_cpu_record(tmp_path / "req.2.json", 1.5, 4.0, False)
    task_cpu_record(tmp_path / "other.1.json", 9.0, 9.0, False)
    (tmp_path / "req.3.json").write_text("{not json")  # a torn record is skipped
    cpu, latest = read_task_cpu(tmp_path, "req")
    assert cpu == pytest.approx(4.5) and latest <= time.time()
    assert read_task_cpu(tmp_path, "req", attempt=2)[0] == pytest.approx(1.5)
    assert read_task_cpu(tmp_path, "missing") is None and read_task_cpu(None, "req") is None
    forget_task_cpu(tmp_path, "req")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.1.json"]


def test_unfinished_charge():
    # measured 2 CPU s, last record 3 s before the end, 1 core: 2 + 3
    assert unfinished_charge((2.0, 100.0), 1.0, 30.0, 103.0) == pytest.approx(5.0)
    # a record after the end (the worker outlived the launcher's last heartbeat): what it measured,
    # bounded by the cores held until that record (a burning task: 12.1 CPU s in 10.2 + 2 s)
    assert unfinished_charge((2.0, 105.0), 1.0, 30.0, 103.0) == pytest.approx(2.0)
    assert unfinished_charge((12.1, 105.0), 1.0, 10.2, 103.0) == pytest.approx(12.1)
    assert unfinished_wall((12.1, 105.0), 10.2, 103.0) == pytest.approx(12.2)
    assert unfinished_wall(None, 10.2, 103.0) == pytest.approx(10.2)
    # never more than the cores held for the wall time
    assert unfinished_charge((50.0, 100.0), 2.0, 10.0, 103.0) == pytest.approx(20.0)
    # no record: the cores held for the wall time
    assert unfinished_charge(None, 2.0, 10.0, 103.0) == pytest.approx(20.0)


def test_settle_charges_the_recorded_cpu(tmp_path):
    """A submitted task never stored, whose worker recorded 1.2 CPU s one second before
    the run's last heartbeat 30 s after submission, is charged 1.2 + 1 s, not 30; the
    record is removed; a task without a record is charged CPUs x wall."""
    from agent.store import Store

    with Store(tmp_path / "c" / "store.sqlite") as store:
        store.note_submitted("with-record", 1.0)
        store.note_submitted("without", 2.0)
        t_sub = store.events("submitted")[0]["ts"]
        store.set_meta("heartbeat", repr(t_sub + 30.0))
        store.task_cpu_dir.mkdir()
        path = store.task_cpu_dir / "with-record.1.json"
        path.write_text(json.dumps({"cpu_s": 1.2, "wall_s": 29.0, "time": t_sub + 29.0, "done": False}))
        assert store.unsettled_cpu_s()[0] == pytest.approx(2.2 + 2.0 * (t_sub + 30.0 - store.events("submitted")[1]["ts"]))
        total, n = store.settle_interrupted()
        events = {e["request_id"]: e for e in store.events("interrupted_task")}
        assert n == 2
        assert events["with-record"]["cpu_s"] == pytest.approx(2.2)
        assert events["with-record"]["measured_cpu_s"] == pytest.approx(1.2)
        assert events["without"]["measured_cpu_s"] is None
        assert events["without"]["cpu_s"] == pytest.approx(2.0 * events["without"]["wall_s"])
        assert total == pytest.approx(2.2 + events["without"]["cpu_s"])
        assert not path.exists()
