"""newuser45b #4: the Python API carries what ``status --json`` and the store know.

``Campaign.status()`` has the ``objective`` block of ``crystal-agent status --json`` (same
dict, built by one function), ``Campaign.results()`` gives one plain row per molecule-stage
evaluation with name, SMILES, backend, level of theory, value, unit, ok/reason, CPU and wall
seconds and every value the backend reported, and ``Campaign.history`` names molecule and
backend. Data: stored results (no calculation; test_report_coverage's) and a replay campaign
run with the local executor."""

from __future__ import annotations

import json

from conftest import cli
from test_molecule_campaign_replay import run_replay_campaign
from test_report_coverage import BODY as COVERAGE_BODY
from test_report_coverage import campaign  # noqa: F401 - the fixture


def body(geometry: str) -> str:
    """xtb-reorg then dft-reorg at B3LYP/6-31G, on ``geometry`` ("dft" or "xtb") geometries."""
    return COVERAGE_BODY + f'params = {{ functional = "b3lyp", basis = "6-31g", geometry = "{geometry}" }}\n'


def test_results_has_one_row_per_evaluation_with_level_unit_and_reason(campaign):
    """test_report_coverage's stored results: benzene an unreliable xtb-reorg value,
    naphthalene both levels, anthracene a failed xtb-reorg run, acetylene both levels."""
    from agent.summary import level_of_theory

    rows = campaign.results()
    stored = {ev.id: ev for ev in campaign.store.evaluations()}
    assert [r["n"] for r in rows] == sorted(stored)  # every one, in evaluation order
    assert [(r["name"], r["backend"]) for r in rows] == [
        ("benzene", "xtb-reorg"), ("naphthalene", "xtb-reorg"), ("naphthalene", "dft-reorg"),
        ("anthracene", "xtb-reorg"), ("acetylene", "xtb-reorg"), ("acetylene", "dft-reorg")]
    levels = {b.name: level_of_theory(b, "reorg_energy_kjmol") for b in campaign.cfg.backends}
    assert levels["dft-reorg"].startswith("B3LYP") and levels["xtb-reorg"].startswith("GFN2-xTB")
    for r in rows:
        ev = stored[r["n"]]
        assert r["level"] == levels[r["backend"]] and r["fidelity"] == int(r["backend"] == "dft-reorg")
        assert (r["unit"], r["quantity"]) == ("kJ/mol", "reorg_energy_kjmol")
        assert r["values"] == ev.values and (r["cpu_s"], r["wall_s"]) == (ev.cpu_s, ev.wall_s)
    benzene, naphthalene_dft, anthracene = rows[0], rows[2], rows[3]
    assert naphthalene_dft["smiles"] == "c1ccc2ccccc2c1" and naphthalene_dft["value"] == 17.0
    assert naphthalene_dft["ok"] and naphthalene_dft["reason"] == naphthalene_dft["unreliable"] == ""
    assert benzene["value"] == 6.1 and benzene["unreliable"].startswith("degenerate HOMO")
    assert not anthracene["ok"] and anthracene["value"] is None
    assert anthracene["reason"] == "run: SCF not converged"
    json.dumps(rows)  # plain data


def test_status_carries_the_objective_block_of_status_json(campaign):
    from agent.summary import level_of_theory, status_record

    status = campaign.status()
    assert status.objective == {"name": "reorg_energy_kjmol", "label": "hole reorganisation energy λ+",
                                "symbol": "lambda+", "unit": "kJ/mol", "direction": "minimize",
                                "level": level_of_theory(campaign.cfg.backends[-1], "reorg_energy_kjmol")}
    assert status.to_dict()["objective"] == status_record(status, campaign.store, campaign.cfg)["objective"]
    assert status.best == 17.0 and status.best_name == "naphthalene"


def test_status_json_and_the_python_status_agree(campaign):
    done = cli("status", "t", "--json", "--runs-dir", str(campaign.directory.parent), timeout=300)
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    mine = json.loads(json.dumps(campaign.status().to_dict(), default=str))
    assert printed["objective"] == mine["objective"]
    same = ("best", "best_name", "best_smiles", "n_evaluations", "n_failed", "n_by_backend", "unreliable")
    assert {k: printed[k] for k in same} == {k: mine[k] for k in same}


def test_results_and_history_of_a_run_campaign(tmp_path):
    import numpy as np

    from sim_backends.replay import reorg_table_values

    smiles, _, dft = reorg_table_values()
    pool = [s for s, d in zip(smiles, dft, strict=True) if np.isfinite(d)][:8]
    camp = run_replay_campaign(tmp_path, pool, seed=0, hours=0.3)
    try:
        status, rows, history = camp.status(), camp.results(), camp.history
    finally:
        camp.close()
    assert status.objective["unit"] == "kJ/mol" and status.objective["level"]
    assert len(rows) == status.n_evaluations == len(history) > 4
    assert sorted(r["n"] for r in rows) == sorted(h["n"] for h in history)
    by_n = {r["n"]: r for r in rows}
    for h in history:
        r = by_n[h["n"]]
        assert (h["name"], h["smiles"], h["backend"]) == (r["name"], r["smiles"], r["backend"])
        assert h["value"] == r["value"] and h["fidelity"] == r["fidelity"]
        assert r["name"] == r["smiles"] in pool  # the pool names none
    best = min((r for r in rows if r["ok"] and r["backend"] == "replay-dft-reorg"), key=lambda r: r["value"])
    assert (status.best, status.best_smiles) == (best["value"], best["smiles"])
    assert status.objective["level"] == best["level"]
