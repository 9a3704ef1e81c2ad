"""Compute budgets in CPU seconds measured in the worker, with wall time recorded beside
them: a task that sleeps costs ~0 CPU, one that computes is charged its CPU, failed
tasks count, old stores are migrated, and the cost model uses the measured CPU."""

import sqlite3

import pytest

from conftest import write_config

POOL = ["C", "CC", "CCC", "CCCC", "CCO", "CCN", "CCCO", "CCCN"]


def _run(tmp_path, body, name="b"):
    from agent.campaign import Campaign
    from agent.config import load_config
    from agent.local_executor import LocalExecutor
    from agent.runner import run_campaign

    cfg = load_config(write_config(tmp_path, POOL, body, name=name))
    camp = Campaign.create(cfg, tmp_path / "runs")
    try:
        status = run_campaign(camp, tmp_path / "runs", progress=False,
                              executor=LocalExecutor(slots=1, max_retries=0))
    finally:
        camp.close()
    return camp, status


def test_backend_charges_cpu_not_wall():
    """Measured in a fresh process (as a worker is), so no other test's threads count."""
    import json
    import subprocess
    import sys

    code = """
import json
from sim_backends.base import EvalInput
from sim_backends.registry import get_backend
get_backend("_faulty").evaluate(EvalInput("CCO"))  # warm: imports happen here
out = {}
for name, params in {"sleep": {"sleep_s": 0.4}, "burn": {"burn_s": 0.4},
                     "fail": {"burn_s": 0.3, "raise_fraction": 1.0}}.items():
    r = get_backend("_faulty", **params).evaluate(EvalInput("CCO"))
    out[name] = {"ok": r.ok, "wall_s": r.wall_s, "cpu_s": r.cpu_s}
print(json.dumps(out))
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    r = json.loads(run.stdout.strip().splitlines()[-1])
    assert r["sleep"]["ok"] and r["burn"]["ok"] and not r["fail"]["ok"]
    assert r["sleep"]["wall_s"] >= 0.4 and r["sleep"]["cpu_s"] < 0.1
    assert r["burn"]["cpu_s"] >= 0.37  # os.times() counts whole clock ticks (10 ms)
    assert r["fail"]["cpu_s"] >= 0.27  # a failure is charged what it spent


BODY = """
objective = "n_heavy_atoms"
batch_size = 1
max_evaluations = 8
max_cpu_hours = {hours}
[tracking]
enabled = false
[[backends]]
name = "_faulty"
params = {params}
"""


def test_sleeping_tasks_do_not_exhaust_a_cpu_budget(tmp_path):
    """0.25 s of sleep per task and a 0.5 CPU-s budget: charged by wall time the budget
    would stop the campaign after two tasks; in CPU seconds all eight run."""
    camp, status = _run(tmp_path, BODY.format(hours=0.5 / 3600, params="{ sleep_s = 0.25 }"))
    assert status.n_evaluations == 8, status.stop_reason
    assert status.spent_wall_s >= 8 * 0.25
    assert status.spent_cpu_s < 0.5
    rows = sqlite3.connect(camp.directory / "store.sqlite").execute(
        "SELECT wall_s, cpu_s FROM evaluations").fetchall()
    assert len(rows) == 8 and all(w >= 0.25 and c < w for w, c in rows)


def test_burning_tasks_are_charged_and_stop_the_budget(tmp_path):
    """0.3 CPU s per task (several failing after spending it) against a 1 CPU-s budget:
    the campaign stops once the next task, with its 90 % cost margin (a factor of about
    1.4 while few tasks have finished), would overrun it; failures are charged too."""
    params = "{ burn_s = 0.3, raise_fraction = 0.5, seed = 0 }"
    camp, status = _run(tmp_path, BODY.format(hours=1.0 / 3600, params=params))
    assert status.n_evaluations < 8
    assert 1.0 - 0.3 * 1.5 < status.spent_cpu_s <= 1.0
    assert status.stop_reason.startswith("compute budget: no evaluation fits"), status.stop_reason
    assert status.n_failed >= 1
    rows = sqlite3.connect(camp.directory / "store.sqlite").execute(
        "SELECT status, cpu_s FROM evaluations").fetchall()
    assert all(c >= 0.27 for _, c in rows) and any(st == "failed" for st, _ in rows)
    assert camp.costs()[0] == pytest.approx(status.spent_cpu_s / status.n_evaluations, rel=1e-6)
    assert status.cpu_by_backend == {"_faulty": pytest.approx(status.spent_cpu_s, abs=0.01)}


def test_status_says_where_the_cpu_went():
    """newuser49 #5: whether the expensive level got most of the budget took an SQL query;
    ``status`` has a CPU-by-level line (largest first, interrupted tasks as their own part)."""
    from agent.summary import cpu_by_level_lines

    rec = {"cpu_by_backend": {"esf-refined": 453.0, "xtb-crystal": 135.1, "esf-proxy": 57.5, "csp-ff": 0.0},
           "interrupted_cpu_s": 44.1}
    assert cpu_by_level_lines(rec) == ["CPU by level  esf-refined 453.0 s (66 %), xtb-crystal 135.1 s (20 %), "
                                       "esf-proxy 57.5 s (8 %), interrupted tasks 44.1 s (6 %)"]
    assert cpu_by_level_lines({"cpu_by_backend": {"xtb-reorg": 3.0}}) == []  # one level: the CPU line says it
    assert cpu_by_level_lines({}) == []  # a record from before the split


def test_old_store_is_migrated_with_wall_time_as_cpu(tmp_path):
    from agent.store import SCHEMA_VERSION, Store

    path = tmp_path / "old.sqlite"
    with Store(path) as s:
        s.add_molecules([("C", None, True, "")])
    db = sqlite3.connect(path)  # make it a version-1 store: no cpu_s column
    db.execute("ALTER TABLE evaluations DROP COLUMN cpu_s")
    db.execute("INSERT INTO evaluations(request_id, molecule_id, backend, backend_version, "
               "fidelity, inputs_hash, status, wall_s, submitted_at, finished_at) "
               "VALUES ('r1', 1, 'xtb-reorg', '1', 0, 'h', 'ok', 12.5, 0, 0)")
    db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with Store(path) as s:
        (ev,) = s.evaluations()
        assert ev.cpu_s == 12.5 and ev.wall_s == 12.5
        assert s.get_meta("schema_version") == str(SCHEMA_VERSION)


@pytest.mark.parametrize("hours, n_expected", [(0.6 / 3600, 1), (3.0 / 3600, 2)])
def test_a_batch_starts_only_what_fits_together(tmp_path, hours, n_expected):
    """Two tasks of 0.31 CPU s expected (about 0.45 with the cost margin before any has
    finished): a 0.6 CPU-s budget fits one of them alone but not both, so an ask for two
    returns one; a 3 CPU-s budget returns both. (Each pick used to be checked alone, so a
    batch could start two tasks that together overran the budget.)"""
    from agent.campaign import Campaign
    from agent.config import load_config

    body = BODY.format(hours=hours, params="{ burn_s = 0.3 }")
    camp = Campaign.create(load_config(write_config(tmp_path, POOL, body, name="batch")),
                           tmp_path / "runs")
    try:
        assert len(camp.ask(2)) == n_expected
    finally:
        camp.close()


def test_unfinished_tasks_are_charged_once(tmp_path):
    """``settle_interrupted`` charges a submitted, never stored task its CPUs x the wall
    time to the last heartbeat, once; the charge is part of the spent CPU."""
    from agent.store import Store

    with Store(tmp_path / "s.sqlite") as store:
        store.note_submitted("a", 2.0)
        store.note_submitted("b", 1.0)
        t0 = store.events("submitted")[0]["ts"]
        t1 = store.events("submitted")[1]["ts"]
        store.set_meta("heartbeat", repr(t0 + 3.0))
        before = store.unsettled_cpu_s()  # read only: what the next run will charge
        cpu, n = store.settle_interrupted()
        assert n == 2 and cpu == pytest.approx(2.0 * 3.0 + 1.0 * (t0 + 3.0 - t1))
        assert before == (pytest.approx(cpu), 2) and store.unsettled_cpu_s() == (0.0, 0)
        assert store.settle_interrupted() == (0.0, 0)  # charged once
        assert store.interrupted_cpu_s() == (pytest.approx(cpu), 2)
        assert store.spent_cpu_s() == pytest.approx(cpu)


def test_finished_run_leaves_nothing_to_charge(tmp_path):
    camp, status = _run(tmp_path, BODY.format(hours=1.0, params="{ sleep_s = 0.01 }"), name="fin")
    from agent.store import Store

    with Store(tmp_path / "runs" / "fin" / "store.sqlite") as store:
        assert len(store.events("submitted")) == status.n_evaluations
        assert store.settle_interrupted() == (0.0, 0)
    assert status.n_interrupted == 0 and status.interrupted_cpu_s == 0.0
