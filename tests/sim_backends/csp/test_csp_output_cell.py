"""A CSP minimum is reported in one cell: its CIF's. Z and Z' agree between the landscape,
its table, its records and the CIF; every CIF is the structure symmetrised to its space group
in the ITA standard setting of its Hermann-Mauguin symbol (the operator loop is that symbol's
standard operators, the cell metric that of its crystal system, a program that builds the
crystal from the symbol and the asymmetric unit gets the same crystal) with the force-field
energy of the minimum; the stored cell stays the conventional cell of a centred group, the
Niggli-reduced cell of a primitive one. A real 24-trial CSP of maleic anhydride (C4H2O3) in
C2/c, Cc and P2_1/c, whose minima include molecules on 2-fold axes and mirror planes (Z' < 1)."""

from __future__ import annotations

import csv
import re
import warnings

import pytest

N_ATOMS = 9  # C4H2O3


@pytest.fixture(scope="module")
def maleic(tmp_path_factory):
    from sim_backends.csp.run import run_csp

    out = tmp_path_factory.mktemp("maleic")
    land = run_csp("O=C1OC(=O)C=C1", 24, space_groups="C2/c,Cc,P2_1/c", sampling="fixed", seed=0,
                   progress=False, charges="xtb", cache_dir="", out_dir=out)
    rows = list(csv.DictReader(open(out / "landscape.csv")))
    return land, out, rows


def _cif(text: str):
    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parser = CifParser.from_str(text)
        (data,) = parser.as_dict().values()
        (st,) = parser.parse_structures(primitive=False)
    return data, st


def test_z_and_z_prime_agree_between_landscape_table_records_and_cif(maleic):
    from pymatgen.symmetry.groups import SpaceGroup

    land, out, rows = maleic
    assert len(rows) == len(land) >= 10
    assert any(m.space_group[0] == "C" for m in land.minima)
    assert any(m.z_prime < 1 for m in land.minima)
    for m, row in zip(land.minima, rows, strict=True):
        data, st = _cif((out / row["cif"]).read_text())
        z_cif = int(data["_cell_formula_units_Z"])
        assert len(st) == N_ATOMS * z_cif
        assert m.z == int(row["z"]) == m.to_dict()["z"] == z_cif == len(m.structure) // N_ATOMS, m.id
        # Z' = Z / general-position multiplicity of the group in its conventional cell
        order = SpaceGroup.from_int_number(m.space_group_number).order
        assert m.z_prime == pytest.approx(m.z / order) == pytest.approx(float(row["z_prime"]), abs=1e-4), m.id
        assert row["space_group"] == m.space_group == data["_symmetry_space_group_name_H-M"]
        assert len(data["_symmetry_equiv_pos_as_xyz"]) == order
        out_z = re.search(r"_cell_formula_units_Z\s+(\d+)", m.output_cif(name="maleic anhydride")).group(1)
        assert int(out_z) == m.z


def test_centred_groups_are_written_in_their_conventional_cell_and_round_trip(maleic):
    from pymatgen.core import Structure
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    from sim_backends.csp.dedupe import detect_space_group

    land, out, rows = maleic
    n_centred = 0
    for m, row in zip(land.minima, rows, strict=True):
        data, st = _cif((out / row["cif"]).read_text())
        assert st.composition.reduced_composition == m.structure.composition.reduced_composition
        assert st.composition.reduced_formula == "H2C4O3"
        assert st.density == pytest.approx(m.density_gcm3, rel=1e-3)
        assert detect_space_group(st) == (m.space_group, m.space_group_number)
        assert SpacegroupAnalyzer(st, symprec=0.01).get_space_group_symbol() == m.space_group
        if m.space_group[0] == "P":
            assert m.structure.lattice.abc == pytest.approx(
                m.structure.get_reduced_structure("niggli").lattice.abc, abs=1e-4), m.id
            continue
        n_centred += 1
        conv = SpacegroupAnalyzer(st, symprec=0.1).get_conventional_standard_structure()
        assert st.lattice.abc == pytest.approx(conv.lattice.abc, abs=0.05), m.id
        assert st.lattice.angles == pytest.approx(conv.lattice.angles, abs=0.5), m.id
        assert len(m.structure) == len(st), m.id  # stored in the conventional cell too
        # built from the symbol and the asymmetric unit alone: the same crystal
        coords = [[float(data[f"_atom_site_fract_{k}"][i]) for k in "xyz"]
                  for i in range(len(data["_atom_site_type_symbol"]))]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            built = Structure.from_spacegroup(data["_symmetry_space_group_name_H-M"], st.lattice,
                                              data["_atom_site_type_symbol"], coords, tol=1e-3)
        assert len(built) == len(st) and built.density == pytest.approx(st.density, rel=1e-9), m.id
    assert n_centred >= 3


def _ops(xyz: list[str]) -> set[tuple]:
    """Symmetry operations as comparable keys (translations modulo 1)."""
    import numpy as np
    from pymatgen.core.operations import SymmOp

    keys = set()
    for op in xyz:
        m = SymmOp.from_xyz_str(op).affine_matrix if isinstance(op, str) else op.affine_matrix
        m = m.copy()
        m[:3, 3] = np.round(np.mod(np.round(m[:3, 3], 6), 1.0), 6) % 1.0
        keys.add(tuple(np.round(m.ravel(), 6)))
    return keys


def _metric_ok(number: int, lattice, tol_deg: float = 1e-4, tol_A: float = 1e-5) -> bool:
    """``lattice`` has the metric of the crystal system of space group ``number``."""
    a, b, c = lattice.abc
    al, be, ga = lattice.angles
    right = lambda *x: all(abs(v - 90.0) < tol_deg for v in x)  # noqa: E731
    if number <= 2:
        return True
    if number <= 15:
        return right(al, ga)
    if number <= 74:
        return right(al, be, ga)
    if number <= 142:
        return abs(a - b) < tol_A and right(al, be, ga)
    if number <= 194:
        return abs(a - b) < tol_A and right(al, be) and abs(ga - 120.0) < tol_deg
    return abs(a - b) < tol_A and abs(b - c) < tol_A and right(al, be, ga)


def test_every_cif_is_its_symbols_standard_setting_symmetrised_at_the_minimum_energy(maleic):
    """newuser34 #1: the CIFs of primitive groups were written in the Niggli-reduced cell
    under the standard symbol (P2_1/c with the operators of P2_1/n, Pna2_1 with the polar
    axis along a), and with the computed, not symmetrised, metric. Now every CIF's operator
    loop is ``SpaceGroup(symbol)``'s, its cell is spglib's standardised (refined) cell with
    the metric of the crystal system, and the structure it holds has the force-field lattice
    energy of the stored minimum (symmetrising moved it by far less than 0.01 kJ/mol)."""
    import numpy as np
    import torch
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer
    from pymatgen.symmetry.groups import SpaceGroup

    from sim_backends.csp.forcefield import LatticeEnergyModel
    from sim_backends.csp.run import load_molecule
    from sim_backends.ff_relax import rigid_crystal

    land, out, rows = maleic
    molecule = load_molecule("O=C1OC(=O)C=C1", charges="xtb", cache_dir="")
    model = LatticeEnergyModel(molecule)

    def energy(st):
        rc = rigid_crystal([s.symbol for s in st.species], st.cart_coords, st.lattice.matrix, molecule=molecule)
        return float(model.energy_kjmol(torch.tensor(rc.cell_A)[None], torch.tensor(rc.coords_A())[None])[0])

    groups = set()
    for m, row in zip(land.minima, rows, strict=True):
        data, st = _cif((out / row["cif"]).read_text())
        symbol = data["_symmetry_space_group_name_H-M"]
        number = int(data["_symmetry_Int_Tables_number"])
        groups.add(symbol)
        assert _ops(data["_symmetry_equiv_pos_as_xyz"]) == _ops(SpaceGroup(symbol).symmetry_ops), (m.id, symbol)
        assert SpaceGroup(symbol).int_number == number == m.space_group_number
        assert _metric_ok(number, st.lattice), (m.id, symbol, st.lattice.parameters)
        # exactly symmetric: the same group at a tolerance 100x tighter than the detection's
        assert SpacegroupAnalyzer(st, symprec=1e-3).get_space_group_symbol() == symbol, m.id
        refined = SpacegroupAnalyzer(st, symprec=1e-3).get_refined_structure()
        assert np.allclose(refined.lattice.parameters, st.lattice.parameters, atol=1e-4), m.id
        assert st.volume == pytest.approx(m.structure.volume, rel=1e-7)
        e_cif = energy(st)
        assert energy(m.structure) == pytest.approx(m.energy_kjmol, abs=1e-3)
        assert e_cif == pytest.approx(m.energy_kjmol, abs=0.01), m.id
    assert {"P2_1/c", "C2/c"} <= groups
