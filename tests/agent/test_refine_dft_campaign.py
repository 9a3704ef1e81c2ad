"""Structure refinement with the real fragment-DFT backend end to end: molecule stage
(GFN2-xTB), CSP with the force field, then dft-crystal (PBE-D3(BJ)/STO-3G two-body, the
long-range point-charge term, a minimal setting) for the structures the Delta-GP
acquisition picks, through Ray, the SQLite store and MLflow."""

import sqlite3

import numpy as np

import pytest

from conftest import cli, write_config

POOL = ["C#C acetylene", "C=C ethylene"]
BODY = """
objective = "reorg_energy_kjmol"
batch_size = 2
seed = 0
max_evaluations = 7
[surrogate]
n_initial = 2
[[backends]]
name = "xtb-reorg"
[structures]
enabled = true
budget_evaluations = 5
csp = {name = "csp-ff", params = {n_trials = 30, charges = "xtb", space_groups = "P2_1/c,P-1"}}
refine = {name = "dft-crystal", params = {basis = "sto-3g", cutoff_A = 3.2, grid_level = 0, conv_tol = 1e-7}}
max_structures = 12
top_k = 3
"""


@pytest.mark.slow
def test_dft_refinement_campaign(tmp_path):
    cfg = write_config(tmp_path, POOL, BODY, name="dftref")
    runs = tmp_path / "runs"
    out = cli("run", str(cfg), "--runs-dir", str(runs), "--quiet", timeout=1500)
    assert out.returncode == 0, out.stderr[-3000:]
    db = sqlite3.connect(runs / "dftref" / "store.sqlite")
    evs = db.execute("SELECT backend, structure_id, status, reason, values_json FROM evaluations").fetchall()
    assert len(evs) == 7
    refined = [e for e in evs if e[0] == "dft-crystal"]
    assert len(refined) == 4, evs  # 5 structure-stage evaluations: 1 CSP + 4 refinements
    assert all(e[2] == "ok" for e in refined), refined
    assert len({e[1] for e in refined}) == 4, "a structure was computed twice"
    import json

    for e in refined:
        v = json.loads(e[4])
        # a bound crystal; the total is the sum of its parts, long-range term included
        assert v["energy_kjmol"] < 0
        assert v["energy_kjmol"] == pytest.approx(
            v["e_dft_2body_kjmol"] + v["e_d3_kjmol"] + v["e_deformation_kjmol"] + v["e_elec_lr_kjmol"])

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("dftref").experiment_id])
    rid = run.info.run_id
    keys = [k for k in run.data.metrics if k.startswith("structure_gp_loo_mae_kjmol_m")]
    assert len(keys) == 1, run.data.metrics
    hist = client.get_metric_history(rid, keys[0])
    # one point per refit with >= 2 computed structures, stepped by the computed count
    assert [m.step for m in hist] == sorted({m.step for m in hist}) and hist[0].step >= 2
    assert all(m.value >= 0 for m in hist)
    # fragment DFT refinement is modelled per dimer (agent/surrogates/fragment_gp.py)
    tags = {k: v for k, v in run.data.tags.items() if k.startswith("structure_surrogate_m")}
    assert tags and set(tags.values()) == {"fragment-dimer-gp"}, run.data.tags
    arts = [a.path for a in client.list_artifacts(rid, "structure_refits")]
    assert arts and all(a.endswith(".png") for a in arts)

    # reopened from its store (as on resume), the stage has the dimer records of every computed
    # structure and rebuilds the same fragment model from them
    from agent.campaign import Campaign
    from agent.surrogates.fragment_gp import FragmentDeltaModel

    reopened = Campaign.open("dftref", runs, readonly=True)
    (land,) = reopened.stage.landscapes.values()
    assert len(land.computed) == 4 and set(land.dimer_records) == set(land.computed)
    model = reopened.stage._fit_model(land, seed=0)
    assert isinstance(model, FragmentDeltaModel) and model.n_structures == 4
    mean, _ = model.predict(np.arange(len(land.ids)))
    done = sorted(land.computed)
    # computed structures come back at their DFT energies (up to the GP's noise term)
    assert np.allclose(land.ff_kjmol[done] + mean[done], [land.computed[i] for i in done], atol=1.5)
    # the dimer baselines are inputs of that model, and [structures] dimer_baselines = [] removes them
    assert model.baseline_names == ["gfn2-xtb", "gfn1-xtb", "d3"]
    reopened.stage.cfg = reopened.stage.cfg.model_copy(update={"dimer_baselines": []})
    land.fragment = None
    bare = reopened.stage._fit_model(land, seed=0)
    assert isinstance(bare, FragmentDeltaModel) and bare.baseline_names == [] and bare.n_structures == 4
