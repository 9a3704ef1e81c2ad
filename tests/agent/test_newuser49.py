"""newuser49 (`make demo` read as a chemist): the best line names the structure stage's value
of the best molecule, and every global-minimum line its transport model and lattice energy."""

from __future__ import annotations


def _rec(**extra):
    obj = {"name": "log10_landscape_mobility_hole", "symbol": "log10 mu_h", "level": "esf-refined level",
           "unit": "", "label": ""}
    return {"objective": obj, "best": -0.28, "best_name": "BNT", "best_smiles": "c1ccc2cc3c(cc2c1)sc1ccccc13",
            **extra}


def test_the_best_line_gives_the_structure_stage_value_beside_the_molecule_stage_one():
    from agent.summary import best_line

    plain = best_line(_rec())
    assert "structure stage" not in plain
    st = {"mean": 0.482, "sd": 0.181, "energy_level": "GFN2-xTB periodic (tblite)",
          "global_minimum": {"id": "m103-m0003", "space_group": "P-1", "z": 2}}
    line = best_line(_rec(best_structure_stage=st))
    assert line.startswith(plain)
    assert line.endswith(" -- at the structure stage (energies GFN2-xTB periodic (tblite)): mu_h = 0.48 ± "
                         "0.18 cm2/(V s), global minimum m103-m0003 (P-1, Z = 2)")


def test_global_minimum_lines_say_marcus_and_the_lattice_energy_with_its_level():
    from agent.esf_report import esf_lines

    gm = {"id": "m0001", "energy_kjmol": -104.406, "rel_kjmol": 0.0, "mobility_hole_cm2Vs": 0.64,
          "density_gcm3": 1.3893, "space_group": "P2_1/c", "z": 4, "cif": None, "transport_model": "Marcus hopping"}
    rec = {"molecule_id": 1, "name": "BNT", "smiles": "c1ccc2cc3c(cc2c1)sc1ccccc13", "source": "molecule stage",
           "backend": "esf-refined", "level": "L", "mean": 0.52, "sd": 0.18, "n_in_window": 78,
           "n_with_mobility": 6, "structures": [gm], "global_minimum": gm, "warnings": [], "notes": []}
    text = "\n".join(esf_lines([rec]))
    assert ("predicted global minimum (molecule stage) m0001 (P2_1/c, Z = 4, 1.389 g/cm3, E_latt -104.4 kJ/mol per molecule at "
            "the CSP force field): mu_h = 0.64 cm2/(V s) (Marcus hopping)") in text
    rec = {**rec, "source": "structure stage", "energy_level": "GFN2-xTB periodic (tblite)"}
    assert "E_latt -104.4 kJ/mol per molecule at GFN2-xTB periodic (tblite))" in "\n".join(esf_lines([rec]))


def test_each_esf_level_text_is_said_once():
    """newuser49 #6: every molecule's ESF line repeated its level's text (status lines up to
    1,590 characters); the level is said once as a LEVEL line, each molecule's line names it
    and gives its own window share."""
    from agent.esf_report import esf_lines

    base = "Marcus hopping at 300 K, GFN2-xTB transfer integrals, 300-trial W99 CSP, Boltzmann mean over at most 6"
    recs = []
    for i, (name, share) in enumerate((("BNT", "23%"), ("coronene", "87%"))):
        gm = {"id": "m0001", "energy_kjmol": -100.0, "mobility_hole_cm2Vs": 0.5, "space_group": "P-1", "z": 2}
        recs.append({"molecule_id": i, "name": name, "smiles": "C", "source": "molecule stage",
                     "backend": "esf-refined", "level": f"{base} ({share} of the weight)", "level_base": base,
                     "mean": 0.5, "sd": 0.1, "n_in_window": 6, "n_with_mobility": 6, "structures": [gm],
                     "global_minimum": gm, "warnings": [], "notes": []})
    lines = esf_lines(recs)
    assert sum(base in line for line in lines) == 1
    assert f"  LEVEL esf-refined: {base}" in lines
    assert all(any(ln.startswith(f"  {n}: ") and ln.endswith("molecule stage (esf-refined)") for ln in lines)
               for n in ("BNT", "coronene"))


def test_the_best_line_names_the_ranking_levels_global_minimum_and_the_window_covered():
    """review49 #1/#3: the best line named the lowest structure *with a mobility* its global
    minimum and left out how much of the window the value covers."""
    from agent.summary import _structure_stage_text, best_structure_stage

    gm = {"id": "m0007", "energy_kjmol": -98.5, "mobility_hole_cm2Vs": 3.0, "space_group": "P2_1/c", "z": 4,
          "cif": None}
    rec = {"source": "structure stage", "mean": 3.0, "sd": 0.5, "energy_level": "GFN2-xTB periodic (tblite)",
           "n_in_window": 5, "n_with_mobility": 1, "structures": [gm], "global_minimum": gm,
           "uncomputed_weight": 0.6,
           "ranked_minimum": {"id": "m0002", "energy_kjmol": -100.0, "computed": False}}
    text = _structure_stage_text(best_structure_stage(rec))
    assert text.endswith("mu_h = 3.0 ± 0.50 cm2/(V s) (mobility for 1 of 5 structures in window, 40% of the "
                         "Boltzmann weight), predicted leader m0002 (no mobility yet, its energy predicted, not computed)")
    rec["ranked_minimum"] = {"id": "m0007", "energy_kjmol": -98.5, "computed": True}
    assert _structure_stage_text(best_structure_stage(rec)).endswith("global minimum m0007 (P2_1/c, Z = 4)")
