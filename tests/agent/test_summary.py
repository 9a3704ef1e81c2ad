"""Structure-stage results where a chemist looks (issue 14 item 5): `status` (text and
--json), the run summary and `report` give the best structures at the highest level
computed, with the Delta-GP uncertainty, space group, density, Z and CIF; every figure
has its unit and level of theory; the campaign's structures are written as symmetrised
CIFs with the energies at every level and a landscape table.

A real campaign run in-process (no Ray): GFN2-xTB lambda+ for acetylene and ethylene,
CSP of the better one with the W99 + Ewald force field, periodic GFN2-xTB refinement of
the structures the Delta-GP picks (lattice energies against the rigid molecule, so
the force field's rigid geometry is not charged a deformation energy)."""

from __future__ import annotations

import csv
import json
import warnings

import pytest

from tests.conftest import write_config

LEVEL = "GFN2-xTB periodic (tblite), rigid gas-phase reference"
LAMBDA_LEVEL = ("GFN2-xTB four-point lambda+ (tblite), gas phase; cation at 10 K electronic temperature where "
                "the HOMO is degenerate (Jahn-Teller)")
BODY = """
objective = "reorg_energy_kjmol"
batch_size = 2
seed = 0
max_evaluations = 12
[surrogate]
n_initial = 10
[[backends]]
name = "xtb-reorg"
[structures]
enabled = true
budget_evaluations = 10
csp = {name = "csp-ff", params = {n_trials = 60, charges = "xtb", space_groups = "P2_1/c,P-1"}}
refine = {name = "xtb-crystal", params = {gas = "rigid"}}
max_structures = 12
top_k = 3
"""


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    """The campaign after its budget, evaluated in this process, report written."""
    from agent.campaign import Campaign
    from agent.config import load_config
    from agent.report import write_plots
    from sim_backends.registry import get_backend

    tmp = tmp_path_factory.mktemp("summary")
    cfg = write_config(tmp, ["C#C acetylene", "C=C ethylene"], BODY, name="cryst")
    camp = Campaign.create(load_config(cfg), tmp / "runs")
    while tasks := camp.ask(2):
        for t in tasks:
            camp.tell(t, get_backend(t.backend, **t.backend_params).evaluate(t.inp))
    camp.store.set_meta("finished", "1")
    camp.store.set_meta("stop_reason", camp.stop_reason())
    write_plots(camp)
    yield camp, tmp / "runs"
    camp.close()


def _computed(camp) -> dict[str, float]:
    return {ev.structure_id: ev.values["energy_kjmol"] for ev in camp.store.evaluations()
            if ev.backend == "xtb-crystal" and ev.ok}


@pytest.mark.slow
def test_status_names_units_levels_and_structures(campaign, capsys):
    from agent.cli import main

    camp, runs = campaign
    computed = _computed(camp)
    assert len(computed) >= 2
    assert main(["status", "cryst", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    best = next(ln for ln in out.splitlines() if ln.startswith("best"))
    assert "lambda+ = " in best and " kJ/mol (" in best and f" eV), {LAMBDA_LEVEL}: " in best
    head = next(ln for ln in out.splitlines() if ln.startswith("structures"))
    assert f"{len(computed)} of " in head and "computed at GFN2-xTB periodic (tblite)" in head
    rows = [ln for ln in out.splitlines() if ln.startswith("  m")]
    assert rows and all("kJ/mol per molecule" in r and "g/cm3" in r and "Z = " in r for r in rows)
    assert all(r.rstrip().endswith(".cif") for r in rows)

    assert main(["status", "cryst", "--runs-dir", str(runs), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["objective"]["unit"] == "kJ/mol" and rec["objective"]["level"] == LAMBDA_LEVEL
    (land,) = rec["structures"]
    assert land["refine_level"] == LEVEL and land["n_computed"] == len(computed)
    top = land["top"]
    energies = [t["energy_kjmol"] for t in top]
    assert energies == sorted(energies)
    assert top[0]["energy_kjmol"] <= min(computed.values()) + 1e-9  # nothing computed beats the best
    for t in top:
        if t["computed"]:
            assert t["std_kjmol"] == 0.0 and t["energy_kjmol"] == pytest.approx(computed[t["id"]])
        else:
            assert t["std_kjmol"] > 0.0  # a Delta-GP prediction carries its uncertainty
        assert t["space_group"] and 0.5 < t["density_gcm3"] < 2.0 and t["z"] >= 1


@pytest.mark.slow
def test_campaign_structures_written_as_cifs_with_every_level(campaign):
    from pymatgen.core import Structure
    from pymatgen.io.cif import CifParser

    from sim_backends.csp.dedupe import detect_space_group

    camp, _ = campaign
    out = camp.directory / "structures"
    levels = json.loads((out / "levels.json").read_text())["levels"]
    assert levels["xtb-crystal"] == LEVEL and "W99" in levels["csp-ff"]
    (mol_id,) = camp.stage.landscapes
    rows = list(csv.DictReader((out / f"landscape_m{mol_id}.csv").open()))
    stored = {r["id"]: r for r in camp.store.structures(mol_id)}
    assert {r["id"] for r in rows} == set(camp.stage.landscapes[mol_id].ids)
    assert [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
    computed = _computed(camp)
    from sim_backends.landscape import Landscape  # `lab identify --structures runs/NAME/structures`

    entries = {e.id: e.energy_kjmol for e in Landscape.from_cif_dir(out).minima}
    assert entries.keys() == {r["id"] for r in rows}
    assert all(entries[sid] == pytest.approx(e, abs=1e-3) for sid, e in computed.items())
    for r in rows:
        text = (out / r["cif"]).read_text()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (block, data), = CifParser.from_str(text).as_dict().items()
            st = Structure.from_str(text, fmt="cif")
        assert block == f"acetylene_{r['id']}" and data["_chemical_formula_sum"] == "C2 H2"
        assert len(st) == 4 * int(data["_cell_formula_units_Z"])
        assert detect_space_group(st)[0] == r["space_group"] == stored[r["id"]]["space_group"]
        assert float(r["density_gcm3"]) == pytest.approx(st.density, rel=2e-3)
        lv = data["_crystal_agent_energy_level"]
        e = dict(zip(zip(lv, data["_crystal_agent_energy_quantity"]),
                     data["_crystal_agent_energy_kJmol_per_molecule"], strict=True))
        assert float(e[(levels["csp-ff"], "lattice energy")]) == pytest.approx(stored[r["id"]]["energy_kjmol"],
                                                                              abs=1e-3)
        assert float(r["E_csp-ff_kJmol_per_mol"]) == pytest.approx(stored[r["id"]]["energy_kjmol"], abs=1e-3)
        if r["id"] in computed:
            assert r["status"] == "computed"
            assert float(e[(levels["xtb-crystal"], "lattice energy")]) == pytest.approx(computed[r["id"]], abs=1e-3)
            assert float(r["E_xtb-crystal_kJmol_per_mol"]) == pytest.approx(computed[r["id"]], abs=1e-3)
        elif r["status"] == "predicted":
            key = (levels["xtb-crystal"], "lattice energy, Delta-GP prediction")
            i = lv.index(key[0])
            assert float(data["_crystal_agent_energy_std_kJmol_per_molecule"][i]) > 0
            assert float(r["E_xtb-crystal_std_kJmol_per_mol"]) > 0 and r["E_xtb-crystal_kJmol_per_mol"] == ""


@pytest.mark.slow
def test_landscape_plot_mae_is_the_logged_figure(campaign):
    """Issue 14 item 8: the parity panel's title MAE is the figure the structure stage
    records per refit (what the tracker logs to MLflow), from the same model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from agent.report import landscape_figure

    camp, _ = campaign
    stage = camp.stage
    (land,) = stage.landscapes.values()
    assert len(land.computed) >= 5, "too few structures computed for a parity panel"
    stage._refit(land, camp.cfg.seed + len(land.computed))  # as a decision does
    logged = camp.store.events("structure_refit")[-1]  # what the tracker logs
    assert logged["n_computed"] == len(land.computed)
    fig = landscape_figure(camp, land.molecule_id, plt)
    left, right = fig.axes[:2]
    assert f"LOO MAE {logged['loo_mae_kjmol']:.2f} kJ/mol per molecule" in right.get_title()
    assert right.get_xlabel().startswith("computed lattice energy (kJ/mol per molecule)")
    assert LEVEL in right.get_xlabel()
    assert left.get_ylabel() == "lattice energy rel. to lowest (kJ/mol per molecule)"
    assert left.get_title().startswith("acetylene: ")
    plt.close(fig)


@pytest.mark.slow
def test_status_from_the_store_alone(campaign, capsys):
    """Without saved results (status while the run is in its first refinements) or with
    results saved before anything was refined, status ranks what is computed, exactly."""
    from agent.cli import main
    from agent.summary import STRUCTURE_RESULTS_META

    camp, runs = campaign
    saved = camp.store.get_meta(STRUCTURE_RESULTS_META)
    computed = _computed(camp)
    try:
        for meta in ("", json.dumps({"landscapes": [
                {"molecule_id": mid, "name": "acetylene", "level": "ff", "refine_level": LEVEL,
                 "n_structures": 9, "n_computed": 0,
                 "top": [{"id": "m1-m0001", "energy_kjmol": None, "ff_kjmol": -17.0, "computed": False}]}
                for mid in camp.stage.landscapes]})):
            camp.store.set_meta(STRUCTURE_RESULTS_META, meta)
            assert main(["status", "cryst", "--runs-dir", str(runs), "--json"]) == 0
            (land,) = json.loads(capsys.readouterr().out)["structures"]
            best = sorted(computed.items(), key=lambda kv: kv[1])[:3]
            assert [(t["id"], t["energy_kjmol"]) for t in land["top"]] == best
            assert all(t["computed"] and t["std_kjmol"] == 0.0 for t in land["top"])
            assert land["refine_level"] == LEVEL and land["n_computed"] == len(computed)
    finally:
        camp.store.set_meta(STRUCTURE_RESULTS_META, saved)


def test_a_level_with_a_known_bias_says_so_beside_its_structures():
    from agent.config import BackendConfig
    from agent.summary import level_caveat, structure_lines

    caveat = level_caveat(BackendConfig(name="xtb-crystal"))
    assert "underbinds" in caveat and "x23_xtb_crystal" in caveat
    assert level_caveat(BackendConfig(name="csp-ff")) == ""
    rec = {"name": "anthracene", "n_structures": 5, "n_computed": 2, "refine_level": "GFN2-xTB periodic",
           "level": "GFN2-xTB periodic", "caveat": caveat,
           "top": [{"id": "m1-m0001", "energy_kjmol": -79.7, "std_kjmol": 0.0, "computed": True,
                    "space_group": "P2_1/c", "z": 2, "density_gcm3": 1.28}]}
    lines = structure_lines([rec])
    assert lines[2] == f"  note: {caveat}", lines
    assert not any(line.startswith("  note:") for line in structure_lines([{**rec, "caveat": ""}]))
