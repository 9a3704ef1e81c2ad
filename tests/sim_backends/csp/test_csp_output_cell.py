"""A CSP minimum is reported in one cell: its CIF's. Z and Z' agree between the landscape,
its table, its records and the CIF; a centred group's CIF is the conventional standard
cell its Hermann-Mauguin symbol describes (a program that builds the crystal from the
symbol and the asymmetric unit gets the same crystal); a primitive group's stays the
Niggli-reduced cell. A real 24-trial CSP of maleic anhydride (C4H2O3) in C2/c, Cc and
P2_1/c, whose minima include molecules on 2-fold axes and mirror planes (Z' < 1)."""

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
            assert st.lattice.abc == pytest.approx(st.get_reduced_structure("niggli").lattice.abc, abs=1e-4)
            continue
        n_centred += 1
        conv = SpacegroupAnalyzer(st, symprec=0.1).get_conventional_standard_structure()
        assert st.lattice.abc == pytest.approx(conv.lattice.abc, abs=0.05), m.id
        assert st.lattice.angles == pytest.approx(conv.lattice.angles, abs=0.5), m.id
        # built from the symbol and the asymmetric unit alone: the same crystal
        coords = [[float(data[f"_atom_site_fract_{k}"][i]) for k in "xyz"]
                  for i in range(len(data["_atom_site_type_symbol"]))]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            built = Structure.from_spacegroup(data["_symmetry_space_group_name_H-M"], st.lattice,
                                              data["_atom_site_type_symbol"], coords, tol=1e-3)
        assert len(built) == len(st) and built.density == pytest.approx(st.density, rel=1e-9), m.id
    assert n_centred >= 3
