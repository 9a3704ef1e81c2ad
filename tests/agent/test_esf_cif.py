"""The ESF report's global-minimum CIFs are the ones a crystallographer opens.

The molecule stage stores each predicted structure as the P1 cell the backends computed
on (pymatgen's header: ``data_H4C4S``, ``_cell_formula_units_Z`` counting formula units
of the whole cell). The written file must be the symmetrised CIF of
:func:`sim_backends.csp.landscape.crystal_cif`: the space group's operations, the
molecule's formula, Z in molecules of the written cell, the force-field energy. Real
records of data/esf (150-trial CSP of furan and thiophene).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from agent.esf_report import write_esf_cifs

ESF = Path(__file__).resolve().parents[2] / "data" / "esf" / "esf_quick.jsonl"


def _record(name: str) -> dict:
    for line in ESF.read_text().splitlines():
        r = json.loads(line)
        if r["name"] == name:
            return r
    raise AssertionError(f"{name} not in {ESF}")


@pytest.mark.parametrize("name, formula", [("thiophene", "C4H4S"), ("furan", "C4H4O")])
def test_global_minimum_cif_is_symmetrised_with_molecule_formula_and_z(tmp_path, name, formula):
    from pymatgen.io.cif import CifParser

    r = _record(name)
    s = r["structures"][0]
    gm = {"id": s["id"], "energy_kjmol": s["energy_kjmol"], "space_group": s["space_group"],
          "z": s["z"], "cif_text": s["cif"]}
    rec = {"molecule_id": 7, "name": name, "smiles": r["smiles"], "source": "molecule stage",
           "global_minimum": gm, "structures": []}
    assert "'P 1'" in s["cif"]  # the stored text: pymatgen's P1 listing
    (path,) = write_esf_cifs(tmp_path, [rec])
    text = path.read_text()
    assert path.name == f"esf_m7_{s['id']}.cif"
    assert "'P 1'" not in text and "_symmetry_equiv_pos_as_xyz" in text
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (block,) = CifParser.from_str(text).as_dict().values()
        (back,) = CifParser.from_str(text).parse_structures(primitive=False)
    assert len(block["_symmetry_equiv_pos_as_xyz"]) > 1
    assert block["_chemical_formula_sum"].replace(" ", "") == formula
    z = int(block["_cell_formula_units_Z"])
    n_atoms_per_molecule = 9
    assert len(back) == z * n_atoms_per_molecule
    assert f"{s['energy_kjmol']:.3f}" in text and "W99" in text
    assert abs(back.density - s["density_gcm3"]) < 1e-3


def test_a_new_global_minimum_replaces_the_molecules_earlier_cif(tmp_path):
    """When a molecule's predicted global minimum changes (a refined level re-ranks its
    landscape), the CIF of the earlier one is removed; other molecules' CIFs stay."""
    r = _record("thiophene")
    first, second = r["structures"][0], r["structures"][1]

    def rec(mol_id: int, s: dict) -> dict:
        gm = {"id": s["id"], "energy_kjmol": s["energy_kjmol"], "space_group": s["space_group"],
              "z": s["z"], "cif_text": s["cif"]}
        return {"molecule_id": mol_id, "name": "thiophene", "smiles": r["smiles"], "source": "molecule stage",
                "global_minimum": gm, "structures": []}

    (old,) = write_esf_cifs(tmp_path, [rec(7, first)])
    (other,) = write_esf_cifs(tmp_path, [rec(77, first)])
    (new,) = write_esf_cifs(tmp_path, [rec(7, second)])
    assert new != old and new.exists() and not old.exists()
    assert other.exists()
    assert sorted(p.name for p in (tmp_path / "structures").glob("esf_m7_*.cif")) == [new.name]


def test_the_esf_cif_names_the_force_field_level_as_the_structure_stage_does(tmp_path):
    """newuser42 #11: esf_m36_m0001.cif said "W99 exp-6 + Ewald point charges (GFN2-xTB Mulliken),
    rigid molecule (force field)" and m36-m0001.cif of the same structure (the structure
    stage's CSP: the search's own level, ``csp_levels``) "..., rigid molecule (force field),
    xtb-gfn2-mulliken charges"; both now use the search's name."""
    import numpy as np

    from sim_backends.csp.charges import xtb_charges
    from sim_backends.csp.landscape import FF_LEVEL
    from sim_backends.esf import csp_level

    r = _record("thiophene")
    s = r["structures"][0]
    gm = {"id": s["id"], "energy_kjmol": s["energy_kjmol"], "space_group": s["space_group"],
          "z": s["z"], "cif_text": s["cif"]}
    rec = {"molecule_id": 7, "name": "thiophene", "smiles": r["smiles"], "source": "molecule stage",
           "global_minimum": gm, "structures": [], "csp_level": csp_level("xtb")}
    (path,) = write_esf_cifs(tmp_path, [rec])
    text = " ".join(path.read_text().split())
    method = xtb_charges(["O", "H", "H"], np.array([[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])).method
    assert f"{FF_LEVEL}, {method} charges" in text  # what run_csp records for its landscapes
    assert "(GFN2-xTB Mulliken)" not in text


def test_cif_level_comes_from_the_charge_key_the_evaluation_records(tmp_path):
    """The ESF evaluation records its CSP charge method's key (``extra["csp_charges"]``) and
    the CIF header names the force-field level from it, as the structure stage's CIFs do,
    even when the record's label would not map back to a key."""
    from sim_backends.base import EvalInput
    from sim_backends.csp.landscape import ff_level
    from sim_backends.registry import get_backend

    r = _record("thiophene")
    ev = get_backend("replay-esf-refined").evaluate(EvalInput(r["smiles"]))
    assert ev.ok and ev.extra["csp_charges"] == r.get("charges", "xtb")
    s = r["structures"][0]
    gm = {"id": s["id"], "energy_kjmol": s["energy_kjmol"], "space_group": s["space_group"],
          "z": s["z"], "cif_text": s["cif"]}
    rec = {"molecule_id": 7, "name": "thiophene", "smiles": r["smiles"], "source": "molecule stage",
           "global_minimum": gm, "structures": [], "csp_level": "a label no charge method has",
           "csp_charges": ev.extra["csp_charges"]}
    (path,) = write_esf_cifs(tmp_path, [rec])
    assert ff_level(ev.extra["csp_charges"]) in path.read_text()
