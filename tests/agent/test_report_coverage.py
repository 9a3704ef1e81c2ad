"""What the status and the report say about the molecules a campaign did not rank (newuser42
#4): how much of the pool has a result at all (``pool`` line, ``status --json`` counts), and
results.csv rows of molecules whose values are flagged unreliable (a degenerate-HOMO
lambda+), with the level and reason in ``notes``."""

import csv

import pytest
from conftest import write_config

BODY = """
objective = "reorg_energy_kjmol"
max_evaluations = 10
[tracking]
enabled = false
[[backends]]
name = "xtb-reorg"
[[backends]]
name = "dft-reorg"
"""
POOL = ["c1ccccc1 benzene", "c1ccc2ccccc2c1 naphthalene", "c1ccc2cc3ccccc3cc2c1 anthracene",
        "c1cc2ccc3cccc4ccc(c1)c2c34 pyrene", "C#C acetylene"]
UNRESOLVED = {"jahn_teller": "unresolved: 10 K cation: xTB SCF failed for charge +1: SCF not converged "
                             "in 250 cycles; 300 K value", "hole_manifold": {"n": 2, "spread_eV": 0.0}}


@pytest.fixture()
def campaign(tmp_path):
    """benzene: an unreliable xtb-reorg value only; naphthalene: both levels; anthracene: a failed
    xtb-reorg run; pyrene: nothing; acetylene: an unreliable xtb-reorg value and a DFT one."""
    from agent.campaign import Campaign
    from agent.config import load_config
    from sim_backends.base import EvalResult

    cfg = load_config(write_config(tmp_path, POOL, BODY))
    camp = Campaign.create(cfg, tmp_path / "runs")
    ids = {m["name"]: m["id"] for m in camp.store.molecules()}
    rows = [("benzene", "xtb-reorg", 6.1, UNRESOLVED), ("naphthalene", "xtb-reorg", 18.0, {}),
            ("naphthalene", "dft-reorg", 17.0, {}), ("anthracene", "xtb-reorg", None, {}),
            ("acetylene", "xtb-reorg", 30.7, UNRESOLVED), ("acetylene", "dft-reorg", 25.3, {})]
    try:
        for n, (name, backend, v, extra) in enumerate(rows):
            ok = v is not None
            camp.store.record_evaluation(request_id=f"r{n}", molecule_id=ids[name], submitted_at=0.0, result=EvalResult(
                backend=backend, backend_version="1", fidelity=int(backend == "dft-reorg"),
                status="ok" if ok else "failed", reason="" if ok else "run: SCF not converged", inputs_hash="h",
                values={"reorg_energy_kjmol": v} if ok else {}, extra=extra, wall_s=1.0))
    finally:
        camp.close()
    camp = Campaign.open("t", tmp_path / "runs", readonly=True)
    yield camp
    camp.close()


def test_status_says_how_much_of_the_pool_was_evaluated(campaign):
    from agent.summary import status_lines, status_record

    status = campaign.status()
    assert (status.n_pool_valid, status.n_pool_evaluated, status.n_pool_failed_only) == (5, 3, 1)
    rec = status_record(status, campaign.store, campaign.cfg)
    assert rec["n_pool_evaluated"] == 3  # status --json
    text = status_lines(rec)
    line = next(x for x in text if x.startswith("pool "))
    assert line == ("pool          3 of 5 valid molecules evaluated at some level "
                    "(1 never, 1 only in failed evaluations)"), line
    assert text.index(line) == next(k for k, x in enumerate(text) if x.startswith("by backend")) + 1


def test_results_csv_keeps_unreliable_values_and_says_why(campaign, tmp_path):
    from agent.report import results_table

    rows = {r["name"]: r for r in csv.DictReader(results_table(campaign, tmp_path / "results.csv").open())}
    assert set(rows) == {"benzene", "naphthalene", "acetylene"}, rows  # every molecule with a value
    assert float(rows["benzene"]["xtb-reorg_reorg_energy_kjmol"]) == 6.1
    assert rows["benzene"]["notes"].startswith("xtb-reorg value unreliable: degenerate HOMO")
    assert float(rows["acetylene"]["xtb-reorg_reorg_energy_kjmol"]) == 30.7
    assert float(rows["acetylene"]["dft-reorg_reorg_energy_kjmol"]) == 25.3
    assert rows["acetylene"]["notes"].startswith("xtb-reorg value unreliable:")
    assert rows["naphthalene"]["notes"] == ""
