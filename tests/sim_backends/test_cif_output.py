"""CIFs written for crystallographers expand back to exactly the structure's atoms."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "data"


def _read(text: str):
    from pymatgen.core import Structure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Structure.from_str(text, fmt="cif")


def test_nearly_symmetric_minimum_is_written_so_that_it_expands_exactly():
    """This acetylene minimum is R-3m at 0.1 A but not exactly: written with the 0.1 A
    operations as computed, a reader expanded its 4-atom primitive cell into 12 atoms. The
    CIF is the structure refined to R-3m at 0.1 A (atoms on their special positions), the
    group detected there, in the hexagonal cell of that symbol (3 molecules)."""
    import re

    from sim_backends.csp.dedupe import detect_space_group
    from sim_backends.csp.landscape import crystal_cif

    st = _read((DATA / "acetylene_near_R-3m.cif").read_text())
    assert len(st) == 16
    text = crystal_cif(st, n_molecules=4, structure_id="m0008")
    back = _read(text)
    z = int(re.search(r"_cell_formula_units_Z\s+(\d+)", text).group(1))
    assert len(back) == 4 * z
    assert back.composition.reduced_formula == st.composition.reduced_formula
    assert float(re.search(r"_crystal_agent_symprec_A\s+(\S+)", text).group(1)) == 0.1
    assert re.search(r"_symmetry_space_group_name_H-M\s+(\S+)", text).group(1) == "R-3m" and z == 3
    assert back.density == pytest.approx(st.density, rel=1e-6)
    assert detect_space_group(back)[0] == detect_space_group(st)[0] == "R-3m"


def test_stated_z_is_the_written_cells_molecule_count_and_foreign_cifs_are_not_trusted(tmp_path):
    """Status lines print Z from the CIF the user opens (the molecules of the cell it
    writes), not the search cell's count passed beside it. A CIF from elsewhere (its
    ``_cell_formula_units_Z`` may count formula units, e.g. CH) gives the caller's default."""
    from agent.summary import reported_z
    from sim_backends.csp.landscape import cif_formula_units, crystal_cif

    st = _read((DATA / "acetylene_near_R-3m.cif").read_text())
    ours = tmp_path / "m0008.cif"
    ours.write_text(crystal_cif(st, n_molecules=4, structure_id="m0008"))
    z = cif_formula_units(ours)
    assert z == len(_read(ours.read_text())) // 4  # 4 atoms per acetylene
    assert reported_z({"cif": str(ours), "z": 99}) == z
    foreign = tmp_path / "foreign.cif"
    foreign.write_text("data_HC\n_cell_formula_units_Z 8\n")
    assert cif_formula_units(foreign, None) is None
    assert reported_z({"cif": str(foreign), "z": 4}) == 4
    assert reported_z({"cif": str(tmp_path / "missing.cif"), "z": 4}) == 4


def test_nearly_orthorhombic_minimum_is_written_symmetrised_in_its_standard_setting():
    """newuser34 #1: a campaign's thiophene global minimum (search group P2_1/c) is Pmmn at
    0.1 A / 5 deg but was written under "Pmmn" in its computed cell, beta = 90.62 deg (spglib
    at 0.1 A with its own angle test: P2/c). The minimiser stopped on a soft mode: the
    structure symmetrised to Pmmn has the same force-field lattice energy (7e-5 kJ/mol
    lower). The CIF now holds it symmetrised, in the standard setting of Pmmn (its operators
    those of ``SpaceGroup("Pmmn")``, all angles 90 deg), with the computed volume."""
    import re

    import numpy as np
    import torch
    from pymatgen.core.operations import SymmOp
    from pymatgen.io.cif import CifParser
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer
    from pymatgen.symmetry.groups import SpaceGroup

    from sim_backends.csp.forcefield import LatticeEnergyModel
    from sim_backends.csp.landscape import crystal_cif, output_cell
    from sim_backends.csp.run import load_molecule
    from sim_backends.ff_relax import rigid_crystal

    st = _read((DATA / "thiophene_near_Pmmn.cif").read_text())
    assert st.lattice.beta == pytest.approx(90.62, abs=0.01)
    out = output_cell(st, 2)
    assert (out.space_group, out.n_molecules, out.z_prime) == ("Pmmn", 2, 0.25)
    assert out.structure.lattice.beta == pytest.approx(90.62, abs=0.01)  # stored: as computed
    text = crystal_cif(st, n_molecules=2, structure_id="m5-m0001", space_group="Pmmn")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (data,) = CifParser.from_str(text).as_dict().values()
    back = _read(text)
    assert data["_symmetry_space_group_name_H-M"] == "Pmmn" and int(data["_cell_formula_units_Z"]) == 2

    def key(op):
        m = op.affine_matrix.copy()
        m[:3, 3] = np.round(np.mod(m[:3, 3], 1.0), 6) % 1.0
        return tuple(np.round(m.ravel(), 6))

    assert {key(SymmOp.from_xyz_str(o)) for o in data["_symmetry_equiv_pos_as_xyz"]} == \
        {key(o) for o in SpaceGroup("Pmmn").symmetry_ops}
    assert back.lattice.angles == pytest.approx((90.0, 90.0, 90.0), abs=1e-6)
    assert SpacegroupAnalyzer(back, symprec=1e-4).get_space_group_symbol() == "Pmmn"
    assert len(back) == len(st) and back.density == pytest.approx(st.density, rel=1e-7)
    assert re.search(r"symmetrised to Pmmn at 0.1 A", text)

    molecule = load_molecule("c1ccsc1", charges="xtb", cache_dir="")
    model = LatticeEnergyModel(molecule)

    def energy(s):
        rc = rigid_crystal([x.symbol for x in s.species], s.cart_coords, s.lattice.matrix, molecule=molecule)
        return float(model.energy_kjmol(torch.tensor(rc.cell_A)[None], torch.tensor(rc.coords_A())[None])[0])

    e_min = energy(st)
    assert e_min == pytest.approx(-36.9295, abs=1e-3)
    assert energy(back) == pytest.approx(e_min, abs=1e-3)


def test_cif_header_names_a_pool_less_molecule_once_and_counts_one_molecule(tmp_path):
    """newuser38 C3: the header said "C4H4N2 (C4H4N2, c1cncnc1)" for a molecule whose name is
    its formula (``crystal-agent csp``) and "Z = 1 molecules"."""
    from pymatgen.core import Lattice, Structure

    from sim_backends.csp.landscape import crystal_cif

    # one acetylene on an inversion centre of a triclinic cell: P-1, Z = 1
    lat = Lattice.from_parameters(4.1, 4.6, 5.3, 81.0, 97.0, 104.0)
    cart = [[0.60, 0, 0], [-0.60, 0, 0], [1.66, 0, 0], [-1.66, 0, 0]]
    st = Structure(lat, ["C", "C", "H", "H"], cart, coords_are_cartesian=True)
    text = crystal_cif(st, n_molecules=1, name="C2H2", smiles="C#C", structure_id="m0001")
    assert text.splitlines()[0] == "# crystal-agent: C2H2 (C#C), Z = 1 molecule", text.splitlines()[0]
    named = crystal_cif(st, n_molecules=1, name="acetylene", smiles="C#C", structure_id="m0001")
    assert named.splitlines()[0] == "# crystal-agent: acetylene (C2H2, C#C), Z = 1 molecule"
