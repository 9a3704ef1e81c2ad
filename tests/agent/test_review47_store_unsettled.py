"""Review 47 #1: the tasks a stopped run left unfinished are found by one query, shared by
``Store.unsettled_cpu_s``, ``Store.unsettled_tasks`` and ``Store.settle_interrupted`` when
they are called together (status; a run's start), and found again once the store changes."""

import pytest

from agent.store import Store


class _Result:
    backend, backend_version, fidelity, inputs_hash = "diagnostic", "1", 0, "h"
    status, reason, values, extra, wall_s, cpu_s = "ok", "", {}, {}, 1.0, 1.0


def _store(path):
    store = Store(path, lock=True)
    store.add_molecules([("CC", "ethane", True, ""), ("CCC", None, True, "")])
    store.note_submitted("stored", 1.0, backend="diagnostic", smiles="CC")
    store.note_submitted("charged", 1.0, backend="diagnostic", smiles="CC")
    store.settle_interrupted()  # charges "stored" and "charged" ...
    store.record_evaluation(request_id="stored", molecule_id=1, result=_Result(), submitted_at=0.0)
    store.note_submitted("a", 2.0, backend="diagnostic", smiles="CC")
    store.note_submitted("b", 1.0, backend="csp-ff", smiles="CCC", structure_id="m2-m0001")
    store.note_submitted("old", 1.0)  # submitted by older code: not named
    store.note_submitted("done", 1.0, backend="diagnostic", smiles="CCC")
    store.record_evaluation(request_id="done", molecule_id=2, result=_Result(), submitted_at=0.0)
    t0 = store.events("submitted")[2]["ts"]
    store.set_meta("heartbeat", repr(t0 + 3.0))
    return store, t0


def test_status_and_settle_find_the_unfinished_tasks_once(tmp_path):
    store, t0 = _store(tmp_path / "s.sqlite")
    with store:
        seen: list[str] = []
        store.conn.set_trace_callback(seen.append)
        cpu, n = store.unsettled_cpu_s()
        tasks = store.unsettled_tasks()
        assert n == 3 and tasks == ["diagnostic of ethane", "csp-ff of m2-m0001 (CCC)"]
        ts = [e["ts"] for e in store.events("submitted")[2:5]]
        assert cpu == pytest.approx(2.0 * 3.0 + 1.0 * (t0 + 3.0 - ts[1]) + 1.0 * (t0 + 3.0 - ts[2]))
        assert store.settle_interrupted() == (pytest.approx(cpu), 3)
        # one query for the three calls
        assert sum("NOT IN (SELECT request_id FROM evaluations)" in q for q in seen) == 1
        # the charge is an event: found again, nothing left
        assert store.unsettled_cpu_s() == (0.0, 0) and store.unsettled_tasks() == []
        assert sum("NOT IN (SELECT request_id FROM evaluations)" in q for q in seen) == 2
        store.conn.set_trace_callback(None)
        assert [e["request_id"] for e in store.events("interrupted_task")] == ["stored", "charged", "a", "b", "old"]


def test_a_result_or_a_submission_is_seen_at_once(tmp_path):
    store, _ = _store(tmp_path / "s.sqlite")
    with store:
        assert store.unsettled_cpu_s()[1] == 3
        store.record_evaluation(request_id="a", molecule_id=1, result=_Result(), submitted_at=0.0)
        assert store.unsettled_cpu_s()[1] == 2 and store.unsettled_tasks() == ["csp-ff of m2-m0001 (CCC)"]
        store.note_submitted("c", 1.0, backend="diagnostic", smiles="CCC")
        assert store.unsettled_tasks() == ["csp-ff of m2-m0001 (CCC)", "diagnostic of CCC"]
        # a reader (status) sees what another connection (the run) writes
        with Store(tmp_path / "s.sqlite") as reader:
            assert reader.unsettled_cpu_s()[1] == 3
            store.record_evaluation(request_id="c", molecule_id=2, result=_Result(), submitted_at=0.0)
            assert reader.unsettled_cpu_s()[1] == 2 and reader.unsettled_tasks() == ["csp-ff of m2-m0001 (CCC)"]
            store.settle_interrupted()
            assert reader.unsettled_cpu_s() == (0.0, 0)
