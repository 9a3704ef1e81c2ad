"""The structure stage starts a CSP only when the CPU left also pays for one ranking-level
evaluation of its landscape after it (a new user's report: a 216 CPU s ESF campaign spent
42 CPU s, 20 % of its budget, on a CSP that left 7 CPU s, less than any periodic GFN2-xTB
evaluation of its structures: "0 of 20 computed").

A real campaign, no Ray: the molecule stage replays an ESF refined record of pyrazine
(``replay-esf-refined``, a data set written here: the shipped record's lambda+, the four
lowest structures of the stored pyrazine landscape ``data/landscapes/pyrazine_xtb`` with
their CIFs, 1 CPU s charged); the structure stage's CSP is ``replay-csp`` of that landscape
priced at 20 CPU s (``cost_s``), its ranking level ``replay-crystal`` (stored periodic
GFN2-xTB energies, priced by ``xtb-crystal``'s own estimate: 24.2 CPU s for the cheapest
of the ESF record's cells). Each task's expected cost counts with the 90 % cost margin
(1.378 before any task of the level finished): 27.6 CPU s for the CSP, 33.3 for the
first ranking evaluation after it."""

from __future__ import annotations

import json

import pytest

from conftest import ROOT, write_config

LANDSCAPE = f'landscape = "{ROOT / "data/landscapes/pyrazine_xtb"}", cheap = "ff", level = "xtb"'
SMILES = "c1cnccn1"
N_ESF, CSP_COST_S, ESF_CPU_S = 4, 20.0, 1.0
BODY = """
objective = "log10_landscape_mobility_hole"
direction = "maximize"
batch_size = 1
seed = 0
synchronous = true
max_evaluations = 6
max_cpu_hours = {hours!r}
[tracking]
enabled = false
[surrogate]
n_initial = 1
[[backends]]
name = "replay-esf-refined"
params = {{ data_dir = "{data}" }}
[structures]
enabled = true
budget_evaluations = 4
csp = {{name = "replay-csp", params = {{{land}, n = 14}}, cost_s = {csp_cost}}}
max_structures = 14
top_k = 2
[[structures.levels]]
name = "replay-crystal"
params = {{{land}}}
"""


def _esf_record(data_dir) -> list[str]:
    """An ``esf_refined.jsonl`` for pyrazine whose structures are the stored landscape's
    lowest :data:`N_ESF` (mobilities made up: only the cells matter here); their CIFs."""
    from sim_backends.base import EvalInput
    from sim_backends.esf import esf_records
    from sim_backends.registry import get_backend

    shipped = esf_records("refined")[SMILES]
    csp = get_backend("replay-csp").evaluate(EvalInput(SMILES, params={
        "landscape": str(ROOT / "data/landscapes/pyrazine_xtb"), "cheap": "ff", "level": "xtb", "n": 14}))
    structures = [{"id": x["id"], "energy_kjmol": x["energy_kjmol"], "space_group": None, "z": x["z"],
                   "density_gcm3": x["density_gcm3"], "cif": x["cif"], "mobility_hole_cm2Vs": 0.1 * (k + 1)}
                  for k, x in enumerate(csp.extra["landscape"][:N_ESF])]
    rec = {k: shipped[k] for k in ("smiles", "name", "fidelity", "lambda_hole_kjmol", "n_trials", "transfer_level")}
    rec.update(n_minima=14, structures=structures, cpu_s=ESF_CPU_S,
               landscape_mobility_hole_cm2Vs={"mean": 0.2, "sd": 0.05, "n_in_window": N_ESF})
    (data_dir / "esf_refined.jsonl").write_text(json.dumps(rec) + "\n")
    return [s["cif"] for s in structures]


def _expected():
    """(CSP, first ranking evaluation) CPU s with their cost margins, as the stage prices
    them before either level has finished a task."""
    from agent.stages.costs import cost_fit_factor
    from sim_backends.base import EvalInput
    from sim_backends.registry import get_backend

    land = get_backend("replay-csp").evaluate(EvalInput(SMILES, params={
        "landscape": str(ROOT / "data/landscapes/pyrazine_xtb"), "cheap": "ff", "level": "xtb", "n": 14}))
    follow = min(get_backend("xtb-crystal").cost_estimate(EvalInput(SMILES, structure_cif=x["cif"]))
                 for x in land.extra["landscape"][:N_ESF])
    margin = cost_fit_factor([])
    return CSP_COST_S * margin, follow * margin


def _run(tmp_path, cpu_left: float):
    from agent.campaign import Campaign
    from agent.config import load_config
    from agent.local_executor import LocalExecutor
    from agent.runner import run_campaign

    tmp_path.mkdir(parents=True, exist_ok=True)
    _esf_record(tmp_path)
    hours = (ESF_CPU_S + cpu_left) / 3600
    body = BODY.format(hours=hours, data=tmp_path, land=LANDSCAPE, csp_cost=CSP_COST_S)
    cfg = load_config(write_config(tmp_path, [f"{SMILES} pyrazine"], body, name="g"))
    camp = Campaign.create(cfg, tmp_path / "runs")
    try:
        status = run_campaign(camp, tmp_path / "runs", progress=False, executor=LocalExecutor(slots=1))
        evs = camp.store.evaluations()
        return status, evs, camp.store.spent_cpu_s()
    finally:
        camp.close()


def test_the_pricing_of_the_scenario():
    csp, follow = _expected()
    assert csp == pytest.approx(27.55, abs=0.05) and follow == pytest.approx(33.32, abs=0.05)


def test_no_csp_when_its_landscape_could_not_be_ranked_after_it(tmp_path):
    """45 CPU s left after the molecule stage: the CSP (27.6 with its margin) fits by
    itself, CSP and one ranking evaluation (60.9) do not. The stage starts nothing, and the
    stop reason says why in one line, naming both levels and both costs."""
    csp, follow = _expected()
    left = 45.0
    assert csp <= left < csp + follow
    status, evs, spent = _run(tmp_path, left)
    assert [e.backend for e in evs] == ["replay-esf-refined"], [e.backend for e in evs]
    assert spent == pytest.approx(ESF_CPU_S)
    why = status.stop_reason
    assert why.startswith("compute budget: no structure-stage evaluation fits the 45 CPU s left"), why
    assert "\n" not in why
    assert f"the cheapest, replay-csp, needs {csp + follow:.3g} CPU s" in why, why
    assert f"{csp:.3g} for the CSP and {follow:.3g} for the first replay-crystal evaluation" in why, why


def test_the_csp_runs_when_one_ranking_evaluation_fits_after_it(tmp_path):
    """65 CPU s left: CSP and its first ranking evaluation (60.9) fit; the CSP runs and the
    ranking level evaluates its structures."""
    csp, follow = _expected()
    left = 65.0
    assert left >= csp + follow
    status, evs, spent = _run(tmp_path, left)
    backends = [e.backend for e in evs]
    assert backends.count("replay-csp") == 1, backends
    assert backends.count("replay-crystal") >= 1, backends
    assert spent <= ESF_CPU_S + left + 1e-9
