"""What MLflow shows of a synchronous campaign (newuser35 items 3 and 11): the last batch is
logged (runs ended at n_evaluations 15 where the store said 16, with less CPU), no step is
logged twice (each batch was logged once per result with the count before it), the CIFs
are under ``structures/`` and the report's tables under ``report/`` (not ``plots/``), ``best_found`` has its unit and level in the
run's tags, and the best computed lattice energy of the structure stage is a metric.

A real Campaign, replayed backends (test_stages' formamide landscape), the local executor."""

from __future__ import annotations

import sqlite3

import pytest

from conftest import write_config
from test_stages import BODY, POOL, REFINE

SYNC_BODY = (BODY.replace("batch_size = 2\n", "batch_size = 2\nsynchronous = true\n")
             .replace("[tracking]\nenabled = false", "[tracking]\nenabled = true") + REFINE)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, mlflow_db_template):
    """A synchronous structure campaign run to its end with MLflow on: its runs directory,
    MLflow client and run."""
    import shutil

    from mlflow.tracking import MlflowClient

    from agent.campaign import Campaign
    from agent.config import load_config
    from agent.local_executor import LocalExecutor
    from agent.runner import run_campaign

    tmp = tmp_path_factory.mktemp("mlsync")
    runs = tmp / "runs"
    runs.mkdir()
    shutil.copy(mlflow_db_template, runs / "mlflow.db")  # tables made once per session
    assert "synchronous = true" in SYNC_BODY and "enabled = true" in SYNC_BODY
    cfg = load_config(write_config(tmp, POOL, SYNC_BODY, name="ms"))
    camp = Campaign.create(cfg, runs)
    try:
        run_campaign(camp, runs, progress=False, executor=LocalExecutor(slots=2))
        run_id = camp.store.get_meta("mlflow_run_id")
    finally:
        camp.close()
    client = MlflowClient(f"sqlite:///{runs.resolve() / 'mlflow.db'}")
    return runs, client, client.get_run(run_id)


def _store_figures(runs):
    db = sqlite3.connect(runs / "ms" / "store.sqlite")
    try:
        n, cpu = db.execute("SELECT COUNT(*), SUM(cpu_s) FROM evaluations").fetchone()
        by = dict(db.execute("SELECT backend, COUNT(*) FROM evaluations GROUP BY backend").fetchall())
    finally:
        db.close()
    return n, cpu, by


def test_synchronous_campaign_logs_its_last_batch_and_each_step_once(tracked):
    runs, client, run = tracked
    n, cpu, by = _store_figures(runs)
    assert n == 12  # the whole budget
    metrics = run.data.metrics  # the last value of each
    assert metrics["n_evaluations"] == n
    assert metrics["budget_spent_cpu_s"] == pytest.approx(cpu, abs=1e-9)
    for backend, k in by.items():
        assert metrics[f"n_{backend}"] == k, backend
    history = client.get_metric_history(run.info.run_id, "n_evaluations")
    steps = [m.step for m in history]
    assert len(steps) == len(set(steps)), steps  # no step logged twice
    assert all(m.value == m.step for m in history), [(m.step, m.value) for m in history]
    assert max(steps) == n
    cpu_history = sorted(client.get_metric_history(run.info.run_id, "budget_spent_cpu_s"),
                         key=lambda m: m.step)
    assert cpu_history[-1].step == n and cpu_history[-1].value == pytest.approx(cpu, abs=1e-9)


def test_cifs_are_logged_under_structures_and_best_found_has_its_unit(tracked):
    from agent.summary import ENERGY_UNIT

    runs, client, run = tracked
    run_id = run.info.run_id
    plots = [a.path for a in client.list_artifacts(run_id, "plots")]
    structures = [a.path for a in client.list_artifacts(run_id, "structures")]
    assert "plots/convergence.png" in plots
    assert not [p for p in plots if p.endswith(".cif")], plots
    # newuser43b #8: the report's tables and text are not under plots/
    assert all(p.endswith(".png") for p in plots), plots
    report = [a.path for a in client.list_artifacts(run_id, "report")]
    (mol,) = [p.stem.removeprefix("landscape_model_m") for p in (runs / "ms" / "report").glob("landscape_model_m*.csv")]
    assert {"report/summary.txt", "report/results.csv", f"report/landscape_model_m{mol}.csv"} <= set(report), report
    assert f"structures/landscape_m{mol}.csv" in structures
    cifs = [p for p in structures if p.endswith(".cif")]
    assert cifs and len(cifs) == len(list((runs / "ms" / "structures").glob("*.cif")))

    tags = run.data.tags
    assert tags["best_found.quantity"].endswith("(n_heavy_atoms)")
    assert tags["best_found.unit"]  # n_heavy_atoms: a count, said so
    assert tags["best_found.level"].endswith("(diagnostic)")
    assert tags["best_found.direction"] == "minimize"
    assert tags["best_lattice_energy.unit"] == ENERGY_UNIT
    assert tags["best_lattice_energy.level"].endswith("(replay-crystal)")


def test_best_computed_lattice_energy_is_a_metric(tracked):
    from agent.campaign import Campaign

    runs, client, run = tracked
    camp = Campaign.open("ms", runs, readonly=True)
    try:
        (mol, land), = camp.stage.landscapes.items()
        best = min(land.computed.values())
    finally:
        camp.close()
    key = f"best_lattice_energy_kjmol_per_mol_m{mol}"
    assert run.data.metrics[key] == pytest.approx(best)
    history = client.get_metric_history(run.info.run_id, key)
    assert len({m.step for m in history}) == len(history)


def test_a_config_change_after_the_run_started_is_tagged(tracked):
    """newuser43b #5: after ``refine --budget 1`` the run's params still said the old budgets.
    A tracker reopening the run under a changed config tags the keys that changed with
    their current values (the params keep the values the run started with)."""
    from mlflow.tracking import MlflowClient

    from agent.campaign import Campaign
    from agent.tracking import Tracker

    runs, _, run = tracked
    camp = Campaign.open("ms", runs, readonly=True)
    try:
        camp.cfg = camp.cfg.model_copy(update={"max_evaluations": camp.cfg.max_evaluations + 1})
        Tracker(camp, runs)
    finally:
        camp.close()
    client = MlflowClient(f"sqlite:///{runs.resolve() / 'mlflow.db'}")
    after = client.get_run(run.info.run_id)
    assert after.data.params["max_evaluations"] == run.data.params["max_evaluations"]
    assert after.data.tags["config_now.max_evaluations"] == str(int(run.data.params["max_evaluations"]) + 1)
    assert after.data.tags["config_changed"] == "max_evaluations"
