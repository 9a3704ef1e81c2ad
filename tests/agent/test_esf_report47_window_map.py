"""The structure stage's ESF map panel and status line show the window's structures without
a mobility and how the window's energies are known (newuser46b #8).

The molecule-stage panels hatch the part of the window never computed; the structure-stage
panel ("6 structures of 19 in window") had a plain band and 6 points, hiding 13 window
structures without a mobility (one of them computed at the ranking level), and nothing said
that 12 of the 19 window energies were only Delta-GP predictions. The CSV column
``n_with_predicted_energy_in_window`` read as "predicted energies in the window" but counts
only structures with a mobility: it is now ``n_with_mobility_at_predicted_energy_in_window``
(the old name kept, last), beside the counts of the window's computed, predicted and
estimated energies.

The real campaign is the one of ``test_esf_predicted_energies`` (pyrazine, replayed periodic
GFN2-xTB energies, the real ``mobility-xtb`` level, 10 of 14 structures kept)."""

from __future__ import annotations

import csv

import pytest

from test_esf_predicted_energies import camp, runs  # noqa: F401 - the campaign fixtures


def _record(camp):  # noqa: F811
    from agent.summary import status_lines, status_record

    rec = status_record(camp.status(), camp.store, camp.cfg)
    (esf,) = [r for r in rec["esf"] if r["source"] == "structure stage"]
    return esf, "\n".join(status_lines(rec))


def test_the_record_counts_the_windows_energies_by_how_they_are_known(camp, runs):  # noqa: F811
    esf, text = _record(camp)
    stage = camp.stages["structures"]
    (land,) = stage.landscapes.values()
    computed = {land.ids[i] for i in land.computed}
    ws = esf["window_structures"]
    assert len(ws) == esf["n_in_window"]
    assert {x["id"] for x in ws if x["energy"] == "computed"} == computed & {x["id"] for x in ws}
    with_mu = {x["id"] for x in esf["structures"]}
    assert {x["id"] for x in ws if x["mobility"]} == with_mu & {x["id"] for x in ws}
    assert sum(1 for x in ws if not x["mobility"]) == esf["n_in_window"] - esf["n_with_mobility"] > 0
    c = esf["window_energies"]
    assert sum(c.values()) == esf["n_in_window"] and c["predicted"] > 0
    assert c["estimated"] == esf["window_cut"]["beyond_in_window"]
    rows = text.splitlines()
    at = next(i for i, x in enumerate(rows) if x.startswith("  pyrazine: mu_h = ") and "structure stage" in x)
    block = [x for x in rows[at + 1:at + 4] if x.startswith("    ")]  # the lines under the molecule's
    assert any(x.startswith(f"    the window's energies: {c['computed']} computed, {c['predicted']} predicted "
                            f"({esf['ranking_model']} prediction)") for x in block), block
    (row,) = [r for r in csv.DictReader((runs / "p" / "report" / "esf_results.csv").open())
              if r["source"] == "structure stage"]
    assert int(row["n_with_mobility_at_predicted_energy_in_window"]) == esf["n_predicted"]
    assert row["n_with_predicted_energy_in_window"] == row["n_with_mobility_at_predicted_energy_in_window"]
    assert (int(row["n_energies_computed_in_window"]), int(row["n_energies_predicted_in_window"]),
            int(row["n_energies_estimated_in_window"])) == (c["computed"], c["predicted"], c["estimated"])


def _structure_rec():
    gm = {"id": "m36-m0001", "energy_kjmol": -126.8, "rel_kjmol": 0.0, "mobility_hole_cm2Vs": 3.5,
          "density_gcm3": 1.458, "space_group": "P2_1/c", "z": 2, "cif": None}
    other = {**gm, "id": "m36-m0003", "energy_kjmol": -125.0, "rel_kjmol": 1.8, "mobility_hole_cm2Vs": 2.0}
    window = [{"id": "m36-m0001", "energy_kjmol": -126.8, "rel_kjmol": 0.0, "mobility": True, "energy": "computed"},
              {"id": "m36-m0008", "energy_kjmol": -122.75, "rel_kjmol": 4.05, "mobility": False,
               "energy": "computed"},
              {"id": "m36-m0003", "energy_kjmol": -125.0, "rel_kjmol": 1.8, "mobility": True, "energy": "predicted"},
              {"id": "m36-m0012", "energy_kjmol": -121.0, "rel_kjmol": 5.8, "mobility": False,
               "energy": "predicted"},
              {"id": "m36-m0014", "energy_kjmol": -120.5, "rel_kjmol": 6.3, "mobility": False,
               "energy": "predicted"}]
    return {"molecule_id": 36, "name": "coronene", "smiles": "c1cc2ccc3ccc4ccc5ccc6ccc1c1c2c3c4c5c61",
            "source": "structure stage", "backend": "mobility-xtb", "level": "GFN2-xTB", "mean": 3.0, "sd": 0.4,
            "n_in_window": 5, "n_with_mobility": 2, "uncomputed_weight": 0.2, "structures": [gm, other],
            "global_minimum": gm, "warnings": [], "notes": [], "window_structures": window,
            "window_energies": {"computed": 2, "predicted": 3, "estimated": 0}, "ranking_model": "Delta-GP",
            "window_kjmol": 7.0}


def test_the_structure_stage_panel_hatches_its_window_and_ticks_the_structures_without_a_mobility():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from agent.esf_report import esf_map_figure

    fig = esf_map_figure([_structure_rec()], plt, 7.0)
    try:
        ax = fig.axes[0]
        ticks = {ln.get_label(): sorted(ln.get_ydata()) for ln in ax.lines if ln.get_marker() == "_"}
        assert ticks == {"no mobility, energy computed: 1": [4.05],
                         "no mobility, energy predicted: 2": [5.8, 6.3]}
        hatched = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_hatch()]
        assert len(hatched) == 1
        assert hatched[0].get_label() == "window 7 kJ/mol: 3 of 5 without a mobility (ticks)"
        assert "2 structures of 5 in window (80% of the Boltzmann weight; energies 2 computed, 3 predicted " \
               "(Delta-GP prediction))" in ax.get_title().replace("\n", " ")
    finally:
        plt.close(fig)
