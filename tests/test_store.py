import multiprocessing as mp

import pytest

from agent.store import Store, StoreLockedError
from sim_backends.base import EvalResult


def _result(status="ok", v=1.0):
    return EvalResult(backend="b", backend_version="1", fidelity=0, status=status,
                      values={"x": v} if status == "ok" else {}, wall_s=0.5,
                      inputs_hash="h", reason="" if status == "ok" else "run: boom")


def test_record_is_idempotent_and_durable(tmp_path):
    path = tmp_path / "s.sqlite"
    with Store(path, lock=True) as s:
        s.add_molecules([("C", "methane", True, ""), ("X", None, False, "invalid SMILES 'X'")])
        mid = s.molecules(valid_only=True)[0]["id"]
        assert s.record_evaluation(request_id="r1", molecule_id=mid, result=_result(), submitted_at=0)
        assert not s.record_evaluation(request_id="r1", molecule_id=mid, result=_result(), submitted_at=0)
        s.record_evaluation(request_id="r2", molecule_id=mid, result=_result("failed"), submitted_at=0)
    with Store(path) as s:
        assert s.count_evaluations() == (2, 1)
        evs = s.evaluations()
        assert evs[0].values == {"x": 1.0} and evs[1].reason == "run: boom"
        assert len(s.molecules()) == 2 and len(s.molecules(valid_only=True)) == 1
        assert [e["kind"] for e in s.events()] == ["result", "result"]
        assert s.integrity_ok()


def _hold(path, q):
    s = Store(path, lock=True)
    q.put("locked")
    import time

    time.sleep(30)


def test_second_launcher_refused(tmp_path):
    path = tmp_path / "s.sqlite"
    q = mp.get_context("spawn").Queue()
    p = mp.get_context("spawn").Process(target=_hold, args=(path, q))
    p.start()
    try:
        assert q.get(timeout=60) == "locked"
        with pytest.raises(StoreLockedError, match="already running"):
            Store(path, lock=True)
        Store(path).close()  # readers are fine
    finally:
        p.kill()
        p.join()
    Store(path, lock=True).close()  # the kernel dropped the dead holder's lock
