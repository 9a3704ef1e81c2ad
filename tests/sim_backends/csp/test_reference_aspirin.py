"""The aspirin form I crystal shipped in data/reference/aspirin (CCDC 185472, neutron, 100 K) reads
as four intact C9H8O4 molecules of the SMILES' bond graph in P2_1/c, hydrogens included."""

from collections import Counter
from pathlib import Path

REF = Path(__file__).resolve().parents[3] / "data" / "reference" / "aspirin"
SMILES = "CC(=O)Oc1ccccc1C(=O)O"


def test_aspirin_form_i_is_four_intact_molecules_in_p2_1_c():
    import spglib
    from pymatgen.core import Structure
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds

    from sim_backends.csp.rigid import split_molecules

    assert (REF / "LICENSE_MIT_pyxtal.txt").exists() and (REF / "SOURCE_AND_LICENSE.txt").exists()
    cif = REF / "aspirin_form_I_CCDC185472.cif"
    assert "CCDC 185472" in cif.read_text()
    st = Structure.from_file(str(cif))
    assert len(st) == 84  # 21 atoms x Z = 4: symmetry and hydrogens expanded
    symbols = [s.specie.symbol for s in st]
    mols = split_molecules(symbols, st.cart_coords, st.lattice.matrix)
    assert len(mols) == 4
    canonical = Chem.CanonSmiles(SMILES)
    for idx, xyz in mols:
        assert Counter(symbols[i] for i in idx) == Counter({"C": 9, "H": 8, "O": 4})
        block = f"{len(idx)}\n\n" + "\n".join(f"{symbols[i]} {x:.6f} {y:.6f} {z:.6f}"
                                               for i, (x, y, z) in zip(idx, xyz))
        mol = Chem.MolFromXYZBlock(block)
        rdDetermineBonds.DetermineBonds(mol, charge=0)
        assert Chem.MolToSmiles(Chem.RemoveHs(mol)) == canonical
    assert abs(st.density - 1.457) < 0.005  # g/cm3, the CIF's diffraction density 1.456
    cell = (st.lattice.matrix, st.frac_coords, [s.specie.Z for s in st])
    for symprec in (0.001, 0.01, 0.1):
        assert spglib.get_symmetry_dataset(cell, symprec=symprec).number == 14
