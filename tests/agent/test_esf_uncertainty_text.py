"""What the ± of a landscape mobility covers, said where it is printed (newuser37 M5, C7).

A real campaign run to its end with the local executor: the stored formamide landscape
(replay-csp, replayed periodic GFN2-xTB energies), and the real ``mobility-xtb`` level
(GFN2-xTB dimer transfer integrals, Marcus hopping; about 0.5 CPU s per formamide
structure, lambda+ given as a level parameter) on the lowest ``top_k`` structures only, so
that the structure stage's energy window holds structures without a mobility."""

from __future__ import annotations

import math

import pytest

from agent.esf_report import format_mobility
from conftest import ROOT, write_config

LANDSCAPE = f'landscape = "{ROOT / "data/landscapes/pyrazine_xtb"}", cheap = "ff", level = "xtb"'
BODY = """
objective = "n_heavy_atoms"
batch_size = 2
seed = 3
synchronous = true
max_evaluations = 12
[surrogate]
n_initial = 2
[tracking]
enabled = false
[[backends]]
name = "diagnostic"
[structures]
enabled = true
budget_evaluations = 8
csp = {name = "replay-csp", params = {%s, n = 12}}
max_structures = 12
top_k = 2
window_kjmol = 10.0
[[structures.levels]]
name = "replay-crystal"
params = {%s}
[[structures.levels]]
name = "mobility-xtb"
params = {lambda_hole_kjmol = 30.0}
""" % (LANDSCAPE, LANDSCAPE)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The campaign's runs dir after the run (its report written by the run)."""
    from agent.campaign import Campaign
    from agent.config import load_config
    from agent.local_executor import LocalExecutor
    from agent.runner import run_campaign

    tmp = tmp_path_factory.mktemp("esf_sd")
    cfg = load_config(write_config(tmp, ["c1cnccn1 pyrazine", "CC(=O)O acetic_acid"], BODY, name="u"))
    runs = tmp / "runs"
    camp = Campaign.create(cfg, runs)
    try:
        run_campaign(camp, runs, progress=False, executor=LocalExecutor(slots=2))
    finally:
        camp.close()
    return runs


def _structure_record(runs):
    from agent.campaign import Campaign
    from agent.summary import status_lines, status_record

    camp = Campaign.open("u", runs, readonly=True)
    try:
        rec = status_record(camp.status(), camp.store, camp.cfg)
        events = camp.store.events("landscape_property")
        mobilities = {ev.structure_id: ev.values["mobility_hole_cm2Vs"] for ev in camp.store.evaluations()
                      if ev.backend == "mobility-xtb" and ev.ok}
    finally:
        camp.close()
    (esf,) = [r for r in rec["esf"] if r["source"] == "structure stage"]
    return esf, events[-1], mobilities, "\n".join(status_lines(rec))


def test_structure_stage_mobility_says_how_much_of_the_window_it_covers(finished):
    """M5: the landscape mobility averaged the structures with a computed mobility only and
    reported their energy-sampling sd ("3 structures in window", ± 3 %) while the window
    (the uncomputed predicted leader among them) held more. Now the line says "mobility for
    k of N structures in window" and its sd includes the uncomputed structures' Boltzmann
    weight at the spread of the computed mobilities."""
    esf, event, mobilities, text = _structure_record(finished)
    k, n = esf["n_with_mobility"], esf["n_in_window"]
    assert k == len(mobilities) == 2 and n > k, esf
    assert esf["mean"] == pytest.approx(event["mean"]) and esf["sd_energy"] == pytest.approx(event["sd"])
    w_u = esf["uncomputed_weight"]
    assert 0.0 < w_u < 1.0
    spread = abs(mobilities.popitem()[1] - mobilities.popitem()[1]) / math.sqrt(2)  # sd of two values
    assert esf["sd"] == pytest.approx(math.hypot(event["sd"], w_u * spread), rel=1e-9)
    assert esf["sd"] > event["sd"]
    rows = text.splitlines()
    at = next(i for i, x in enumerate(rows) if x.startswith(f"  {esf['name']}: mu_h = ") and "structure stage" in x)
    line, covers = rows[at], rows[at + 1]  # what the ± covers on the line below (newuser50 #9)
    assert f"mobility for {k} of {n} structures in window" in line, line
    assert f"± {format_mobility(esf['mean'], esf['sd']).split('± ')[1]}" in line
    own = event["ranking_sd_kjmol"]  # the replayed level is periodic GFN2-xTB: its own error is in the sd
    loo = math.sqrt(event["energy_sd_kjmol"] ** 2 - own ** 2)
    assert own > 0 and loo > 0
    assert (f"    ± covers: energy ranking and {n - k} structures without a mobility ({w_u:.0%} of the Boltzmann weight) "
            f"at the spread of the {k} computed mobilities; the energy ranking's sd per computed energy is "
            f"{event['energy_sd_kjmol']:.1f} kJ/mol per molecule: the ranking level's own relative-energy error "
            f"{own:.1f} (periodic GFN2-xTB's sd against fragment DFT on 16 pyrazine structures) and the structure "
            f"surrogate's leave-one-out error {loo:.2f}, in quadrature; J, lambda and transport-model errors not "
            "included") == covers
    import csv

    (row,) = [r for r in csv.DictReader((finished / "u" / "report" / "esf_results.csv").open())
              if r["source"] == "structure stage"]
    assert (int(row["n_in_window"]), int(row["n_with_mobility_in_window"])) == (n, k)
    assert float(row["mobility_hole_sd_cm2Vs"]) == pytest.approx(esf["sd"], rel=1e-3)
    assert row["sd_covers"] == esf["sd_covers"]


def test_window_coverage_without_a_second_computed_mobility():
    """One computed mobility: the spread comes from the molecule stage's landscape of the same
    molecule when it has two structures or more, else it is the mean itself (100 %); a window
    fully covered keeps the energy-only sd and says so (C7)."""
    from agent.esf_report import SD_ENERGY_ONLY, window_coverage

    energies = {"a": 0.0, "b": 1.0, "c": 30.0}  # c outside the 10 kJ/mol window
    one = window_coverage(energies, {"b": 2.0}, 2.0, 0.1, 10.0)
    kt = 8.314462618e-3 * 300.0
    w_u = 1.0 / (1.0 + math.exp(-1.0 / kt))
    assert (one["n_in_window"], one["n_with_mobility"]) == (2, 1)
    assert one["uncomputed_weight"] == pytest.approx(w_u)
    assert one["sd"] == pytest.approx(math.hypot(0.1, w_u * 2.0))
    assert "100 % of the mean" in one["sd_covers"]
    mol = {"backend": "esf-refined", "structures": [{"mobility_hole_cm2Vs": 1.0}, {"mobility_hole_cm2Vs": 3.0}]}
    other = window_coverage(energies, {"b": 2.0}, 2.0, 0.1, 10.0, mol)
    assert other["sd"] == pytest.approx(math.hypot(0.1, w_u * math.sqrt(2.0)))
    assert "molecule stage's 2 structures (esf-refined)" in other["sd_covers"]
    full = window_coverage(energies, {"a": 1.0, "b": 2.0}, 1.5, 0.1, 10.0)
    assert full["sd"] == 0.1 and full["sd_covers"] == SD_ENERGY_ONLY and full["uncomputed_weight"] == 0.0


def test_every_landscape_mobility_line_says_what_its_sd_covers():
    """C7: the ± of a landscape mobility is the Boltzmann-weight spread from the energy errors
    only; the printed line says so, on one line."""
    from agent.esf_report import esf_lines

    gm = {"id": "m0001", "energy_kjmol": -100.0, "rel_kjmol": 0.0, "mobility_hole_cm2Vs": 3.0,
          "density_gcm3": 1.2, "space_group": "P2_1/c", "z": 4, "cif": None}
    rec = {"molecule_id": 1, "name": "tetracene", "smiles": "c1ccc2cc3cc4ccccc4cc3cc2c1", "source": "molecule stage",
           "backend": "esf-refined", "level": "GFN2-xTB", "mean": 3.2, "sd": 0.5, "n_in_window": 6,
           "structures": [gm], "global_minimum": gm, "warnings": [], "notes": []}
    lines = esf_lines([rec])
    at = next(i for i, x in enumerate(lines) if x.startswith("  tetracene: "))
    assert "mu_h = 3.2 ± 0.50 cm2/(V s) (log10 0.51)" in lines[at]
    assert lines[at + 1] == "    ± covers: energy-ranking spread only; J, lambda and transport-model errors not included"


def test_structure_stage_line_names_the_global_minimum_when_it_has_no_mobility():
    """newuser38 follow-up: the structure stage's line called its lowest structure *with a
    mobility* the 'predicted global minimum' even when the landscape's lowest structure at
    the ranking level had none; it now says which is which."""
    from agent.esf_report import esf_lines

    gm = {"id": "m0007", "energy_kjmol": -98.5, "rel_kjmol": 0.0, "mobility_hole_cm2Vs": 3.0,
          "density_gcm3": 1.2, "space_group": "P2_1/c", "z": 4, "cif": None}
    rec = {"molecule_id": 1, "name": "tetracene", "smiles": "c1ccc2cc3cc4ccccc4cc3cc2c1",
           "source": "structure stage", "backend": "mobility-xtb", "level": "GFN2-xTB", "mean": 3.0, "sd": 0.5,
           "n_in_window": 5, "n_with_mobility": 1, "structures": [gm], "global_minimum": gm, "warnings": [],
           "notes": [], "ranked_minimum": {"id": "m0002", "energy_kjmol": -100.0, "computed": False}}
    text = "\n".join(esf_lines([rec]))
    assert "predicted global minimum" not in text
    assert ("lowest structure with a mobility m0007 (P2_1/c, Z = 4, 1.200 g/cm3, E_latt -98.5 kJ/mol per molecule "
            "at the CSP force field): mu_h = 3.0 cm2/(V s); "
            "the global minimum m0002 (predicted, 1.50 kJ/mol lower) has no mobility yet") in text
    rec["ranked_minimum"] = {"id": "m0007", "energy_kjmol": -98.5, "computed": True}
    assert "predicted global minimum (structure stage) m0007" in "\n".join(esf_lines([rec]))


def test_a_predicted_leader_says_which_of_its_two_sds_is_which():
    """newuser51 #1, #3: a structure-stage leader whose ranking-level energy is predicted is no
    global minimum; its energy is 'predicted for' the level, and the ESF block's ± (with the
    ranking's own error) is told apart from the structures' table's (the prediction alone)."""
    from agent.esf_report import esf_lines

    gm = {"id": "m0002", "energy_kjmol": -100.7, "rel_kjmol": 0.0, "mobility_hole_cm2Vs": 0.17,
          "density_gcm3": 1.3, "space_group": "P2_1", "z": 2, "cif": None, "energy_predicted": True,
          "energy_sd_kjmol": 3.43, "prediction_sd_kjmol": 1.49}
    rec = {"molecule_id": 103, "name": "BNT", "smiles": "x", "source": "structure stage", "backend": "mobility-xtb",
           "level": "GFN2-xTB", "energy_level": "GFN2-xTB periodic (tblite)", "mean": 0.44, "sd": 0.17,
           "n_in_window": 84, "n_with_mobility": 9, "structures": [gm], "global_minimum": gm, "warnings": [],
           "notes": [], "ranking_model": "constant-shift", "ranked_minimum": {"id": "m0002", "energy_kjmol": -100.7,
                                                                             "computed": False}}
    text = "\n".join(esf_lines([rec]))
    assert "predicted global minimum" not in text and "predicted leader (structure stage) m0002 (" in text
    assert "E_latt -100.7 kJ/mol per molecule predicted for GFN2-xTB periodic (tblite)" in text
    assert ("± 3.4 kJ/mol per molecule with the energy ranking's own sd; ± 1.5 the prediction alone, as the "
            "structures' table gives it), not computed") in text
