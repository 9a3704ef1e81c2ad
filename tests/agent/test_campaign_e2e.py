"""A tiny real campaign end to end: both real backends (GFN2-xTB via tblite and DFT via
pyscf), embedded Ray, SQLite store and SQLite MLflow, driven through the CLI."""

import json
import sqlite3

import pytest

from conftest import cli, write_config

POOL = [
    "C=C ethylene",
    "C#C acetylene",
    "C=O formaldehyde",
    "c1ccoc1 furan",
    "c1ccsc1 thiophene",
    "c1cc[nH]c1 pyrrole",
    "C=CC=C butadiene",
    "N#CC#N cyanogen",
    "this_is_not_smiles broken",
    "c1cc[se]c1 selenophene",
]

BODY = """
objective = "reorg_energy_kjmol"
batch_size = 2
seed = 3
max_evaluations = 7
[surrogate]
n_initial = 3
[executor]
num_cpus = 2
task_timeout_s = 600
[[backends]]
name = "xtb-reorg"
[[backends]]
name = "dft-reorg"
budget_evaluations = 2
params = {functional = "b3lyp", basis = "sto-3g"}
"""


@pytest.mark.slow
def test_tiny_real_campaign(tmp_path):
    cfg = write_config(tmp_path, POOL, BODY, name="tiny")
    runs = tmp_path / "runs"
    out = cli("run", str(cfg), "--runs-dir", str(runs), "--quiet", timeout=1500)
    assert out.returncode == 0, out.stderr[-3000:]

    db = sqlite3.connect(runs / "tiny" / "store.sqlite")
    rows = db.execute(
        "SELECT m.smiles, e.backend, e.status, e.reason, e.values_json, e.fidelity, e.backend_version "
        "FROM evaluations e JOIN molecules m ON m.id = e.molecule_id"
    ).fetchall()
    # the run ends at 7 evaluations or earlier, once the 2 DFT evaluations are spent:
    # cheaper levels are only run where the top level can still follow
    assert 5 <= len(rows) <= 7
    backends = [r[1] for r in rows]
    assert backends.count("dft-reorg") <= 2 and "xtb-reorg" in backends
    assert "dft-reorg" in backends, "the agent never used the expensive level"
    assert len({(r[0], r[1]) for r in rows}) == len(rows), "a (molecule, level) pair was evaluated twice"
    ok = [r for r in rows if r[2] == "ok"]
    assert len(ok) >= 5
    for r in ok:
        lam = json.loads(r[4])["reorg_energy_kjmol"]
        assert 0.0 < lam < 200.0, r
    assert all(r[6] for r in rows)  # backend versions recorded
    invalid = dict(db.execute("SELECT smiles, reason FROM molecules WHERE is_valid = 0").fetchall())
    assert len(invalid) == 2
    assert any("Se" in reason for reason in invalid.values())
    assert not {r[0] for r in rows} & set(invalid), "an invalid molecule was evaluated"
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    status = cli("status", "tiny", "--runs-dir", str(runs), "--json")
    s = json.loads(status.stdout)
    assert s["n_evaluations"] == len(rows) and s["finished"] and s["best"] is not None
    assert len(rows) == 7 or "dft-reorg budget spent" in s["stop_reason"], s["stop_reason"]
    assert {"n_failed", "spent_cpu_s", "best"} <= set(s)

    # MLflow: one experiment, params, per-iteration metrics, models and plots
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{runs / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny")
    assert exp is not None
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.params["backends.1.name"] == "dft-reorg"
    assert run.info.status == "FINISHED"
    hist = client.get_metric_history(run.info.run_id, "n_evaluations")
    assert [m.value for m in hist][-1] == len(rows) and len(hist) == len(rows)
    assert client.get_metric_history(run.info.run_id, "best_found")
    assert client.get_metric_history(run.info.run_id, "budget_spent_cpu_s")[-1].value > 0
    plots = [a.path for a in client.list_artifacts(run.info.run_id, "plots")]
    assert "plots/convergence.png" in plots
    models = mlflow.search_logged_models(experiment_ids=[exp.experiment_id], output_format="list")
    assert models, "no surrogate model logged"
    model = mlflow.pyfunc.load_model(f"models:/{models[0].model_id}")
    import pandas as pd

    pred = model.predict(pd.DataFrame({"smiles": ["C=C", "c1ccsc1"]}))
    # lambda+ is bounded below: the truncated Gaussian's mean and sd, the raw GP beside them
    assert list(pred.columns) == ["smiles"] + [f"reorg_energy_kjmol_{lv}_{k}" for lv in ("xtb-reorg", "dft-reorg")
                                               for k in ("mean", "std", "gp_mean", "gp_std")]
    assert (pred["reorg_energy_kjmol_dft-reorg_std"] > 0).all()
    assert (pred["reorg_energy_kjmol_dft-reorg_mean"] > 0).all()
    assert models[0].tags["unit"] == "kJ/mol" and "dft-reorg" in models[0].tags["output.reorg_energy_kjmol_dft-reorg"]

    rep = cli("report", "tiny", "--runs-dir", str(runs))
    assert rep.returncode == 0 and "convergence.png" in rep.stdout
