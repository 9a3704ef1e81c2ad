"""The full loop end to end through the CLI: molecule stage (real GFN2-xTB), CSP of the
best rigid molecule (csp-ff), structure refinement with periodic GFN2-xTB chosen by the
Delta-GP acquisition, and a simulated crystallisation lab whose PXRD result is
identified against the landscape and fed back."""

import json
import sqlite3

import pytest

from conftest import cli, write_config

POOL = ["c1ccoc1 furan", "c1cc[nH]c1 pyrrole", "C#C acetylene", "C=CC=C butadiene", "C=C ethylene"]
BODY = """
objective = "reorg_energy_kjmol"
batch_size = 2
seed = 0
max_evaluations = 13
[surrogate]
n_initial = 3
[[backends]]
name = "xtb-reorg"
[structures]
enabled = true
budget_evaluations = 8
csp = {name = "csp-ff", params = {n_trials = 40, charges = "xtb", space_groups = "P2_1/c,P-1"}}
refine = {name = "xtb-crystal"}
max_structures = 15
top_k = 3
[lab]
adapter = "simulated"
params = {queue_delay_s = [0.0, 0.1], run_delay_s = [0.1, 0.3]}
"""


@pytest.mark.slow
def test_full_loop_with_lab(tmp_path):
    cfg = write_config(tmp_path, POOL, BODY, name="full")
    runs = tmp_path / "runs"
    out = cli("run", str(cfg), "--runs-dir", str(runs), "--quiet", timeout=1500)
    assert out.returncode == 0, out.stderr[-3000:]
    db = sqlite3.connect(runs / "full" / "store.sqlite")
    evs = db.execute("SELECT backend, structure_id, status, e.reason, molecule_id FROM evaluations e").fetchall()
    assert len(evs) == 13
    csp = [e for e in evs if e[0] == "csp-ff"]
    assert csp and any(e[2] == "ok" for e in csp), evs
    ok_csp_mol = next(e[4] for e in csp if e[2] == "ok")
    n_structures = db.execute("SELECT COUNT(*) FROM structures WHERE molecule_id = ?", (ok_csp_mol,)).fetchone()[0]
    assert n_structures >= 3
    refined = [e for e in evs if e[0] == "xtb-crystal"]
    assert len(refined) == 8 - len(csp)
    assert all(e[1] is not None and e[4] == ok_csp_mol for e in refined)
    assert len({e[1] for e in refined}) == len(refined), "a structure was computed twice"

    lab = db.execute("SELECT state, matched_structure_id, confidence, result_json FROM lab_experiments").fetchall()
    assert len(lab) == 1 and lab[0][0] == "done"
    result = json.loads(lab[0][3])
    assert len(result["two_theta_deg"]) == len(result["intensity"]) > 100
    matched = lab[0][1]
    lab_event = next((ts, json.loads(p)) for ts, k, p in
                     db.execute("SELECT ts, kind, payload FROM events") if k == "lab_result")
    if matched and lab_event[1]["observed"]:
        # feedback: the first structure submitted after the result is the observed form,
        # unless it had been computed already
        order = db.execute("SELECT structure_id, submitted_at FROM evaluations "
                           "WHERE backend = 'xtb-crystal' ORDER BY submitted_at").fetchall()
        before = {sid for sid, t in order if t <= lab_event[0]}
        after = [sid for sid, t in order if t > lab_event[0]]
        if matched not in before:
            assert after and after[0] == matched, (order, lab_event)

    # MLflow has the lab metrics and the measured-vs-simulated plot
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("full").experiment_id])
    assert client.get_metric_history(run.info.run_id, "lab_results")[-1].value == 1
    assert any(a.path.endswith("_pxrd.png") for a in client.list_artifacts(run.info.run_id, "lab"))
    assert any(a.path.startswith("plots/landscape_m") for a in client.list_artifacts(run.info.run_id, "plots"))

    # refine continues on the stored landscape with an extra budget
    out = cli("refine", "full", "--runs-dir", str(runs), "--budget", "1", "--quiet", timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    n = db.execute("SELECT COUNT(*) FROM evaluations WHERE backend = 'xtb-crystal'").fetchone()[0]
    assert n == len(refined) + 1
    assert "nothing refined" not in out.stderr
    # without more budget there is nothing to do, and it says so in one line
    out = cli("refine", "full", "--runs-dir", str(runs), "--quiet", timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stderr.startswith("crystal-agent: nothing refined: ") and out.stderr.count("\n") == 1, out.stderr
    assert "--budget N" in out.stderr
