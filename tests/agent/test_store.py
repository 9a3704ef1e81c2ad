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


def _make(path):
    with Store(path, lock=True) as s:
        s.add_molecules([("C", "methane", True, "")])
        s.record_evaluation(request_id="r1", molecule_id=1, result=_result(), submitted_at=0)


@pytest.mark.parametrize("table", ["evaluations", "molecules", "meta", "events"])
def test_missing_table_refused_and_not_recreated(tmp_path, table):
    import sqlite3

    from agent.store import StoreDamagedError

    path = tmp_path / "s.sqlite"
    _make(path)
    db = sqlite3.connect(path)
    db.execute(f"DROP TABLE {table}")
    db.commit()
    db.close()
    for lock in (False, True):
        with pytest.raises(StoreDamagedError, match=f"store damaged: missing table {table}") as e:
            Store(path, lock=lock)
        assert "\n" not in str(e.value) and "backup" in str(e.value)
    names = {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")}
    assert table not in names
    Store(tmp_path / "new.sqlite").close()  # a new file still gets the schema


def test_missing_column_truncated_garbage_and_empty_files(tmp_path):
    import sqlite3

    from agent.store import StoreDamagedError

    path = tmp_path / "s.sqlite"
    _make(path)
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE evaluations DROP COLUMN extra_json")
    db.commit()
    db.close()
    with pytest.raises(StoreDamagedError, match="evaluations lacks column"):
        Store(path)
    good = tmp_path / "g.sqlite"
    _make(good)
    data = good.read_bytes()
    cases = {"truncated": data[: len(data) // 2], "garbage": bytes(range(256)) * 40, "empty": b""}
    for what, content in cases.items():
        bad = tmp_path / f"{what}.sqlite"
        bad.write_bytes(content)
        with pytest.raises(StoreDamagedError) as e:
            Store(bad, lock=True)
        assert str(e.value).startswith("store damaged:") and "\n" not in str(e.value), what
        Store(good, lock=True).close()  # the failed opens released nothing they did not take
    with Store(good) as s:  # extra tables and columns (later migrations) are fine
        s.conn.execute("ALTER TABLE evaluations ADD COLUMN later_col REAL")
    Store(good).close()


def test_nan_values_are_standard_json_and_read_back(tmp_path):
    """A NaN value (e.g. an undefined electron mobility) is stored as null, so SQLite's JSON
    functions read the row (bare NaN made json_extract fail on the whole table; newuser37 C1),
    and it reads back as NaN."""
    import math
    import sqlite3

    with Store(tmp_path / "s.sqlite", lock=True) as s:
        s.add_molecules([("C", "methane", True, "")])
        r = _result()
        r.values["mu_e"] = float("nan")
        s.record_evaluation(request_id="r1", molecule_id=1, result=r, submitted_at=0)
        ev = s.evaluations()[0]
        assert ev.values["x"] == 1.0 and math.isnan(ev.values["mu_e"])
    with sqlite3.connect(tmp_path / "s.sqlite") as db:
        assert db.execute("SELECT json_extract(values_json, '$.x') FROM evaluations").fetchone()[0] == 1.0


def test_evaluations_selected_by_backend_and_status(tmp_path):
    """The summaries read one backend's (or only the failed) evaluations by query, in stored order."""
    import dataclasses

    with Store(tmp_path / "s.sqlite", lock=True) as s:
        s.add_molecules([("C", "methane", True, "")])
        for k, (backend, status) in enumerate([("a", "ok"), ("b", "failed"), ("a", "failed"), ("a", "ok")]):
            r = dataclasses.replace(_result(status, v=float(k)), backend=backend)
            s.record_evaluation(request_id=f"r{k}", molecule_id=1, result=r, submitted_at=0)
        ids = lambda evs: [e.request_id for e in evs]  # noqa: E731
        assert ids(s.evaluations()) == ["r0", "r1", "r2", "r3"]
        assert ids(s.evaluations("a")) == ["r0", "r2", "r3"]
        assert ids(s.evaluations("a", "ok")) == ["r0", "r3"]
        assert ids(s.evaluations(status="failed")) == ["r1", "r2"]
        assert s.evaluations("c") == []
