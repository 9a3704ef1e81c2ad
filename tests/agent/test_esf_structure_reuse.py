"""The structure stage reuses the mobilities the molecule stage's ESF level computed on the
same structures (fresh39 M2: the demo's structure stage recomputed a mobility the
esf-refined level had stored, and left the structure 0.02 kJ/mol above the minimum without
one when the CPU ran out). Real physics: an 8-trial ESF landscape of naphthalene
(GFN2-xTB transfer integrals), the structure stage's CSP with the same run_csp call,
periodic GFN2-xTB ranking, mobility-xtb."""

from __future__ import annotations

import tomllib

import pytest

BODY = """
name = "reuse"
pool = "pool.smi"
objective = "log10_landscape_mobility_hole"
direction = "maximize"
batch_size = 1
seed = 0
max_evaluations = 9
[tracking]
enabled = false
[surrogate]
n_initial = 1
[[backends]]
name = "esf-landscape"
params = {{ n_trials = 8, n_structures = 4, charges = "xtb", space_groups = "P2_1/c,P-1" }}
[structures]
enabled = true
budget_evaluations = 7
csp = {{ name = "csp-ff", params = {{ n_trials = 8, sampling = "fixed", charges = "xtb", space_groups = "P2_1/c,P-1" }} }}
max_structures = 6
top_k = {top_k}
window_kjmol = 10.0
[[structures.levels]]
name = "xtb-crystal"
[[structures.levels]]
name = "mobility-xtb"{mobility_params}
"""


def _run(tmp_path, top_k: int = 3, mobility_params: str = ""):
    from agent.campaign import Campaign
    from agent.config import parse_config
    from agent.local_executor import LocalExecutor
    from agent.runner import run_campaign

    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "pool.smi").write_text("c1ccc2ccccc2c1 naphthalene\n")
    cfg = parse_config(tomllib.loads(BODY.format(top_k=top_k, mobility_params=mobility_params)), base_dir=tmp_path)
    camp = Campaign.create(cfg, tmp_path / "runs")
    status = run_campaign(camp, tmp_path / "runs", executor=LocalExecutor(slots=1), progress=False)
    return camp, status


@pytest.mark.slow
def test_structure_stage_reuses_the_esf_mobilities_of_identical_structures(tmp_path):
    from agent.esf_report import esf_lines, esf_results

    camp, status = _run(tmp_path)
    try:
        evs = camp.store.evaluations()
        (esf,) = [ev for ev in evs if ev.backend == "esf-landscape" and ev.ok]
        by_cif = {s["cif"]: s["mobility_hole_cm2Vs"] for s in esf.extra["structures"]}
        structures = {r["id"]: r["cif"] for r in camp.store.structures(esf.molecule_id)}
        shared = {sid for sid, cif in structures.items() if cif in by_cif}
        assert shared, "the structure stage's CSP should repeat the ESF level's minima"
        computed = [ev for ev in evs if ev.backend == "mobility-xtb"]
        # no mobility is computed again on a structure the ESF level already has one for
        assert not {ev.structure_id for ev in computed} & shared
        stage = camp.stages["structures"]
        land = stage.landscapes[esf.molecule_id]
        (prop,) = stage.properties
        st = prop.state(esf.molecule_id)
        assert {land.ids[i] for i in st.reused} == shared
        for i in st.reused:
            assert st.values[i] == by_cif[structures[land.ids[i]]]
        (rec,) = [r for r in esf_results(camp.store, camp.cfg) if r["source"] == "structure stage"]
        ranked = {ev.structure_id for ev in evs if ev.backend == "xtb-crystal" and ev.ok}
        failed = {ev.structure_id for ev in evs if ev.backend == "xtb-crystal" and not ev.ok} - ranked
        listed = {x["id"]: x for x in rec["structures"]}
        # reused values enter at their computed energy, or, not ranked yet, at their predicted one
        assert shared - failed <= set(listed) and rec["n_reused"] == len(shared - failed) >= 1
        assert {sid for sid, x in listed.items() if x["energy_predicted"]} == shared - failed - ranked
        events = camp.store.events("landscape_property")
        assert events and events[-1]["n_reused"] == len(st.reused)
        assert events[-1]["n_predicted"] == len(shared - failed - ranked)
        text = "\n".join(esf_lines([rec]))
        assert "from the molecule stage's esf-landscape on the same structures" in text, text
    finally:
        camp.close()
    # resumed from the store: the same reused values, nothing recomputed
    from agent.campaign import Campaign

    again = Campaign.open("reuse", tmp_path / "runs", readonly=True)
    try:
        st2 = again.stages["structures"].properties[0].state(esf.molecule_id)
        assert st2.reused == st.reused and st2.values == st.values
    finally:
        again.close()


@pytest.mark.slow
def test_no_reuse_when_the_property_level_computes_differently(tmp_path):
    """A mobility level at another temperature would compute other values: nothing reused."""
    camp, _ = _run(tmp_path, top_k=1, mobility_params="\nparams = { temperature_K = 250.0 }")
    try:
        (prop,) = camp.stages["structures"].properties
        assert all(not prop.state(m).reused for m in camp.stages["structures"].landscapes)
    finally:
        camp.close()
