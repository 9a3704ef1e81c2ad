"""The structure stage's landscape mobility over reused mobilities at predicted energies, and
its energy window counted over every structure the CSP stored (newuser46 #1, #2).

#1: the structure stage holds mobilities reused from the molecule stage's ESF level
(:func:`agent.stages.properties.reused_values`) for structures that have no ranking-level
energy yet. Its landscape mean left them out, and ``status`` said of the predicted global
minimum, which had such a mobility, that it "has no mobility yet". Now they enter the
Boltzmann mean at their predicted energies (the stage's ranking: Delta-GP or constant shift),
with the prediction's sd in the energy sampling, and status says how many of the window's
structures with a mobility have only a predicted energy.

#2: the window count was taken over the ``max_structures`` structures the stage kept
("3 of 20 in window" where the CSP's window held 51): it now counts every structure the CSP
stored and says the stage kept only the lowest N.

A real campaign, no Ray: the molecule stage replays an ESF refined record
(``replay-esf-refined``, the shipped pyrazine record's lambda+) whose structures are the
four lowest of the stored pyrazine landscape (``data/landscapes/pyrazine_xtb``, the same
CIFs the structure stage's ``replay-csp`` serves) with their real ``mobility-xtb`` hole
mobilities (GFN2-xTB transfer integrals, computed here, under a second in all); the
structure stage ranks with the stored periodic GFN2-xTB energies (``replay-crystal``),
keeps 10 of the 14 structures the CSP stores, and computes the real ``mobility-xtb`` level."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from conftest import ROOT, write_config

LANDSCAPE = f'landscape = "{ROOT / "data/landscapes/pyrazine_xtb"}", cheap = "ff", level = "xtb"'
SMILES = "c1cnccn1"
N_STORED, MAX_STRUCTURES, N_REUSED, WINDOW = 14, 10, 4, 7.0
BODY = """
objective = "log10_landscape_mobility_hole"
direction = "maximize"
batch_size = 1
seed = 0
synchronous = true
max_evaluations = 8
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
csp = {{name = "replay-csp", params = {{{land}, n = {n}}}}}
max_structures = {keep}
top_k = 2
window_kjmol = {window}
[[structures.levels]]
name = "replay-crystal"
params = {{{land}}}
[[structures.levels]]
name = "mobility-xtb"
"""


def _esf_record(data_dir) -> None:
    """An ``esf_refined.jsonl`` for pyrazine whose structures are the stored landscape's
    lowest ones, with their mobility-xtb hole mobilities at the shipped record's lambda+."""
    from sim_backends.base import EvalInput
    from sim_backends.esf import esf_records
    from sim_backends.mobility import landscape_mobility
    from sim_backends.registry import get_backend

    shipped = esf_records("refined")[SMILES]
    lam = shipped["lambda_hole_kjmol"]
    csp = get_backend("replay-csp").evaluate(EvalInput(SMILES, params={
        "landscape": str(ROOT / "data/landscapes/pyrazine_xtb"), "cheap": "ff", "level": "xtb", "n": N_STORED}))
    structures = []
    for x in csp.extra["landscape"][:N_REUSED]:
        r = get_backend("mobility-xtb").evaluate(EvalInput(SMILES, structure_cif=x["cif"], structure_id=x["id"],
                                                           params={"lambda_hole_kjmol": lam}))
        assert r.ok, r.reason
        structures.append({"id": x["id"], "energy_kjmol": x["energy_kjmol"], "space_group": None, "z": x["z"],
                           "density_gcm3": x["density_gcm3"], "cif": x["cif"],
                           "mobility_hole_cm2Vs": r.values["mobility_hole_cm2Vs"],
                           "warnings": r.extra.get("warnings") or [], "notes": r.extra.get("notes") or []})
    lm = landscape_mobility([s["energy_kjmol"] for s in structures], [s["mobility_hole_cm2Vs"] for s in structures],
                            0.0, window_kjmol=WINDOW)
    rec = {k: shipped[k] for k in ("smiles", "name", "fidelity", "lambda_hole_kjmol", "n_trials", "transfer_level")}
    rec.update(n_minima=N_STORED, structures=structures, cpu_s=1.0,
               landscape_mobility_hole_cm2Vs={"mean": lm.mean, "sd": lm.sd, "n_in_window": lm.n_in_window})
    (data_dir / "esf_refined.jsonl").write_text(json.dumps(rec) + "\n")


def run_pyrazine(tmp, name: str = "p", tracking: bool = False):
    """Run the campaign (module docstring) in ``tmp``; returns its runs directory (its report
    written by the run)."""
    from agent.campaign import Campaign
    from agent.config import load_config
    from agent.local_executor import LocalExecutor
    from agent.runner import run_campaign

    _esf_record(tmp)
    body = BODY.format(data=tmp, land=LANDSCAPE, n=N_STORED, keep=MAX_STRUCTURES, window=WINDOW)
    if tracking:
        body = body.replace("[tracking]\nenabled = false", "[tracking]\nenabled = true")
    cfg = load_config(write_config(tmp, [f"{SMILES} pyrazine"], body, name=name))
    camp = Campaign.create(cfg, tmp / "runs")
    try:
        run_campaign(camp, tmp / "runs", progress=False, executor=LocalExecutor(slots=1))
    finally:
        camp.close()
    return tmp / "runs"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The finished campaign's runs directory (its report written by the run)."""
    return run_pyrazine(tmp_path_factory.mktemp("esf_predicted"))


@pytest.fixture
def camp(runs):
    from agent.campaign import Campaign

    c = Campaign.open("p", runs, readonly=True)
    yield c
    c.close()


def _structure_record(camp):
    from agent.summary import status_lines, status_record

    rec = status_record(camp.status(), camp.store, camp.cfg)
    (esf,) = [r for r in rec["esf"] if r["source"] == "structure stage"]
    return esf, "\n".join(status_lines(rec))


def _landscape(camp):
    stage = camp.stages["structures"]
    (mid,) = stage.landscapes
    land = stage.landscapes[mid]
    (prop,) = stage.properties
    return stage, land, prop.state(mid)


def test_reused_mobilities_without_a_computed_energy_enter_the_mean_at_their_predicted_energies(camp):
    """#1: the last landscape_property event is the Boltzmann mean over every structure with a
    mobility: computed energies with the level's own error and the surrogate's leave-one-out
    error in quadrature as sd, the reused ones without a computed energy at the stage's
    predicted energy with its posterior sd and the level's own error in quadrature."""
    from sim_backends.mobility import landscape_mobility

    stage, land, st = _landscape(camp)
    at_predicted = sorted(i for i in st.values if i not in land.computed and i not in land.failed)
    assert at_predicted and set(at_predicted) <= set(st.reused), "the scenario needs reused values not ranked"
    event = camp.store.events("landscape_property")[-1]
    assert event["n_predicted"] == len(at_predicted)
    assert set(event["predicted_kjmol"]) == {land.ids[i] for i in at_predicted}
    corr = stage.corrected_landscape(land.molecule_id)  # the ranking saved at the end of the run
    loo = corr["loo_mae_kjmol"]
    idx = sorted(i for i in st.values if i in land.computed or i in at_predicted)
    energies = [land.computed[i] if i in land.computed else corr["corrected_kjmol"][i] for i in idx]
    from agent.stages.structure import PERIODIC_XTB_ENERGY_SD_KJMOL as own  # the replayed level is periodic xTB

    sds = [math.hypot(own, loo) if i in land.computed else math.hypot(own, max(corr["std_kjmol"][i], loo))
           for i in idx]
    for i in at_predicted:  # the event names the energies its mean used
        assert event["predicted_kjmol"][land.ids[i]] == pytest.approx([corr["corrected_kjmol"][i], sds[idx.index(i)]])
    mus = [st.values[i] for i in idx]
    lm = landscape_mobility(energies, mus, sds, window_kjmol=WINDOW)
    assert (event["mean"], event["sd"]) == pytest.approx((lm.mean, lm.sd), rel=1e-12)
    # the predicted energies' uncertainty is in the sd: with the computed structures' error only it is smaller
    narrow = landscape_mobility(energies, mus, [math.hypot(own, loo)] * len(idx), window_kjmol=WINDOW)
    assert event["sd"] > narrow.sd
    # and the mean is not the one over the computed energies only (what it was)
    only = [i for i in idx if i in land.computed]
    if only:
        old = landscape_mobility([land.computed[i] for i in only], [st.values[i] for i in only],
                                 loo, window_kjmol=WINDOW)
        assert event["mean"] != pytest.approx(old.mean, rel=1e-6)
    # the stage's own summary is over the same structures
    assert len(stage.landscape_properties(land.molecule_id)["mobility-xtb"].weights) == len(idx)


def test_status_says_how_many_window_structures_have_a_mobility_and_how_many_only_a_predicted_energy(camp, runs):
    """#1 as printed: the line counts the window's structures with a mobility (reused ones at a
    predicted energy included) and how many of those have a predicted energy only; a predicted
    global minimum with a mobility is not said to have none, and its energy is said to be
    predicted; the CSV carries the count."""
    stage, land, st = _landscape(camp)
    esf, text = _structure_record(camp)
    listed = {x["id"]: x for x in esf["structures"]}
    assert {land.ids[i] for i in st.values if i not in land.failed} == set(listed)
    predicted = {sid for sid, x in listed.items() if x["energy_predicted"]}
    assert predicted == {land.ids[i] for i in st.values if i not in land.computed and i not in land.failed}
    k, j, n = esf["n_with_mobility"], esf["n_predicted"], esf["n_in_window"]
    assert 1 <= j <= k <= n and j == len(predicted)  # every reused structure is within the window here
    rows_text = text.splitlines()
    at = next(i for i, x in enumerate(rows_text) if x.startswith("  pyrazine: mu_h = ") and "structure stage" in x)
    line = "\n".join([rows_text[at]] + [x for x in rows_text[at + 1:at + 4] if x.startswith("    ")])  # its block
    assert f"mobility for {k} of {n} structures in window (" in line, line
    assert f"{j} of them with a predicted energy only ({esf['ranking_model']} prediction)" in line, line
    assert f"the predicted energies of the {j} structures with a mobility but no computed energy" in line
    low = esf["ranked_minimum"]["id"]
    gm = esf["global_minimum"]
    for sid in (x.split("the global minimum ", 1)[1].split()[0] for x in text.splitlines()
                if "has no mobility yet" in x):
        assert sid not in listed, f"{sid} has a mobility, yet status says it has none:\n{text}"
    if low in listed:  # the predicted global minimum has a (reused) mobility: it is named as such
        what = "predicted leader" if listed[low]["energy_predicted"] else "predicted global minimum"
        assert gm["id"] == low and f"{what} (structure stage) {low} (" in text
        if listed[low]["energy_predicted"]:  # not called a global minimum, its energy "predicted for" the level
            after = text.split(f"predicted leader (structure stage) {low}")[1]
            assert "its ranking-level energy is predicted" in after and " kJ/mol per molecule predicted for " in after
    (row,) = [r for r in csv.DictReader((runs / "p" / "report" / "esf_results.csv").open())
              if r["source"] == "structure stage"]
    assert (int(row["n_with_mobility_in_window"]), int(row["n_with_predicted_energy_in_window"])) == (k, j)


def test_the_window_counts_every_stored_structure_and_says_the_stage_kept_fewer(camp, runs):
    """#2: the window is counted over the CSP's 14 stored structures, not the 10 the stage
    kept (max_structures): those beyond at force field plus the mean computed correction.
    The covered Boltzmann share is over that whole window, and status says the stage kept
    the lowest 10 of 14."""
    from agent.summary import RANKING, STRUCTURE_RESULTS_META

    stage, land, st = _landscape(camp)
    rows = camp.store.structures(land.molecule_id)
    assert len(rows) == N_STORED and len(land.ids) == MAX_STRUCTURES
    computed = {land.ids[i]: e for i, e in land.computed.items()}
    ff = {r["id"]: r["energy_kjmol"] for r in rows}
    shift = float(np.mean([e - ff[sid] for sid, e in computed.items()]))
    (saved,) = json.loads(camp.store.get_meta(STRUCTURE_RESULTS_META))["landscapes"]
    energies = {sid: e for sid, e, *_ in saved[RANKING]}  # the kept ones as the stage ranks them
    energies.update({r["id"]: r["energy_kjmol"] + shift for r in rows[MAX_STRUCTURES:]})
    e0 = min(energies.values())
    window = {sid: e for sid, e in energies.items() if e - e0 <= WINDOW}
    kt = 8.314462618e-3 * 300.0
    weight = {sid: math.exp(-(e - e0) / kt) for sid, e in window.items()}
    with_mu = {land.ids[i] for i in st.values} & set(window)
    esf, text = _structure_record(camp)
    assert esf["n_in_window"] == len(window) > MAX_STRUCTURES
    assert esf["n_with_mobility"] == len(with_mu)
    assert 1.0 - esf["uncomputed_weight"] == pytest.approx(sum(weight[s] for s in with_mu) / sum(weight.values()))
    beyond = len(set(window) - set(land.ids))
    cut = esf["window_cut"]
    assert (cut["kept"], cut["stored"], cut["beyond_in_window"]) == (MAX_STRUCTURES, N_STORED, beyond)
    assert cut["last_kept"]["id"] == rows[MAX_STRUCTURES - 1]["id"]  # the cut, at the force field
    rows_text = text.splitlines()
    at = next(i for i, x in enumerate(rows_text) if x.startswith("  pyrazine: mu_h = ") and "structure stage" in x)
    line = "\n".join([rows_text[at]] + [x for x in rows_text[at + 1:at + 4] if x.startswith("    ")])  # its block
    assert (f"the stage kept the lowest {MAX_STRUCTURES} of the CSP's {N_STORED} structures ([structures] "
            f"max_structures): {beyond} of the window's are beyond them") in line, line
    head = next(x for x in text.splitlines() if x.startswith("structures    pyrazine: "))
    assert f"the stage kept the lowest {MAX_STRUCTURES} of the CSP's {N_STORED} structures" in head, head
    (row,) = [r for r in csv.DictReader((runs / "p" / "report" / "esf_results.csv").open())
              if r["source"] == "structure stage"]
    assert (int(row["n_in_window"]), int(row["n_structures_kept"]), int(row["n_structures_stored"])) == \
        (len(window), MAX_STRUCTURES, N_STORED)
