"""The X23 crystals shipped in data/reference/x23_extra are intact molecular crystals of the
stated formula, Z and space group, and the crystal and gas-phase molecule files agree."""

from collections import Counter
from pathlib import Path

import numpy as np

EXTRA = Path(__file__).resolve().parents[3] / "data" / "reference" / "x23_extra"


def test_ethyl_carbamate_crystal_is_two_intact_molecules_in_p_minus_1():
    import spglib
    from ase.io import read

    from sim_backends.csp.rigid import split_molecules

    crystal = read(EXTRA / "ethyl_carbamate_crystal.extxyz")
    molecule = read(EXTRA / "ethyl_carbamate_molecule.extxyz")
    assert crystal.info["name"] == "ethyl_carbamate" and crystal.info["n_mol"] == 2
    assert molecule.get_chemical_formula() == "C3H7NO2"
    symbols = crystal.get_chemical_symbols()
    mols = split_molecules(symbols, crystal.positions, crystal.cell.array)
    assert len(mols) == 2
    for idx, _ in mols:
        assert Counter(symbols[i] for i in idx) == Counter(molecule.get_chemical_symbols())
    density = crystal.get_masses().sum() / crystal.get_volume() * 1.66054
    assert 1.1 < density < 1.4
    cell = (crystal.cell.array, crystal.get_scaled_positions(), crystal.numbers)
    assert spglib.get_symmetry_dataset(cell, symprec=0.01).number == 2
    cif = read(EXTRA / "ethyl_carbamate.cif")
    assert np.allclose(cif.cell.cellpar(), crystal.cell.cellpar(), atol=1e-4)
    assert sorted(cif.get_chemical_symbols()) == sorted(symbols)
