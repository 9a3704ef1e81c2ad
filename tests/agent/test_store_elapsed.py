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
        _events(store, [(100.0, "started"), (150.0, "evaluation"), (160.0, "interrupted"),  # 60 s
                        (200.0, "resumed"), (205.0, "started"), (230.0, "evaluation"),      # killed: 25 s
                        (300.0, "started"), (400.0, "finished")])                          # 100 s
        assert store.elapsed_s() == (pytest.approx(185.0), 3)
        _events(store, [(500.0, "started"), (520.0, "evaluation")])  # going on (or killed) ...
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
