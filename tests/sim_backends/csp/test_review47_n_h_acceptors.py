"""Review 47 #4: one rule of what accepts an N-H hydrogen bond (``n_h_acceptor_kind``), from
which both the SMILES check (``has_n_h_acceptor``: the X23 underbinding note) and the cell check
(``n_h_acceptor_bonds``: long or missing N-H...O/N bonds) are derived. Urea, formamide, cytosine
and ammonia have an acceptor; pyrrole, indole, carbazole and benzo[b]carbazole (N-H...pi only)
have none. Ammonia's sp3 N accepts, but its N-H...N bonds are long by nature, so the cell check
does not judge them (``N_H_BOND_ACCEPTORS``)."""

from pathlib import Path

import numpy as np
import pytest

from sim_backends.csp.domain import (N_H_BOND_ACCEPTORS, has_n_h_acceptor, n_h_acceptor_bonds,
                                     n_h_acceptor_kind)

#: name -> (SMILES, the kinds of acceptor of its atoms)
MOLECULES = {
    "urea": ("NC(N)=O", {"O", "N-amine"}),
    "formamide": ("NC=O", {"O", "N-amine"}),
    "cytosine": ("Nc1cc[nH]c(=O)n1", {"O", "N-amine", "N-lone-pair"}),
    "ammonia": ("N", {"N-amine"}),
    "pyrrole": ("c1cc[nH]c1", set()),
    "indole": ("c1ccc2[nH]ccc2c1", set()),
    "carbazole": ("c1ccc2c(c1)[nH]c1ccccc12", set()),
    "benzo[b]carbazole": ("c1ccc2cc3c(cc2c1)[nH]c1ccccc13", set()),
}
HAS_ACCEPTOR = ("urea", "formamide", "cytosine", "ammonia")


def _kinds(smiles):
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    return {n_h_acceptor_kind(a.GetSymbol(), [b.GetSymbol() for b in a.GetNeighbors()] + ["H"] * a.GetTotalNumHs(),
                              a.GetIsAromatic(), a.GetFormalCharge()) for a in mol.GetAtoms()} - {None}


def _alone_in_a_box(smiles, a=30.0):
    from ase import Atoms

    from sim_backends.molecule import embed_conformer

    symbols, xyz = embed_conformer(smiles)
    return Atoms(symbols, positions=np.asarray(xyz) - np.mean(xyz, axis=0) + a / 2, cell=[a] * 3, pbc=True)


@pytest.mark.parametrize("name", list(MOLECULES))
def test_the_smiles_check_and_the_cell_check_share_one_rule(name):
    smiles, kinds = MOLECULES[name]
    assert _kinds(smiles) == kinds
    assert has_n_h_acceptor(smiles) is (name in HAS_ACCEPTOR)
    # a molecule alone donates no intermolecular bond: (inf, "") when it has an acceptor the
    # cell check judges, None when it has none (N-H...pi only; ammonia's sp3 N)
    bonds = n_h_acceptor_bonds(_alone_in_a_box(smiles))
    assert bonds == ((float("inf"), "") if kinds & set(N_H_BOND_ACCEPTORS) else None)


def test_the_rule_atom_by_atom():
    assert n_h_acceptor_kind("O", ["C"]) == "O" and n_h_acceptor_kind("O", ["H", "H"]) == "O"
    assert n_h_acceptor_kind("N", ["C", "C"], aromatic=True) == "N-lone-pair"  # pyridine
    assert n_h_acceptor_kind("N", ["C"]) == "N-lone-pair"  # nitrile
    assert n_h_acceptor_kind("N", ["C", "C", "H"], aromatic=True) is None  # pyrrole
    assert n_h_acceptor_kind("N", ["C", "C", "C"], aromatic=True) is None  # N-substituted pyrrole
    assert n_h_acceptor_kind("N", ["H", "H", "H"]) == "N-amine"  # ammonia
    assert n_h_acceptor_kind("N", ["C", "O", "O"], charge=1) is None  # nitro
    assert n_h_acceptor_kind("C", ["C", "C"]) is None and n_h_acceptor_kind("S", ["C", "C"]) is None


def test_the_x23_crystals():
    from ase.io import read

    path = Path(__file__).resolve().parents[3] / "data" / "reference" / "x23" / "x23_pbe_ts_crystals.extxyz"
    crystals = {f.info["name"]: f for f in read(path, ":")}
    for name in ("urea", "formamide", "cytosine"):
        d, label = n_h_acceptor_bonds(crystals[name])
        assert 2.7 < d < 3.1 and label.startswith("N"), (name, d, label)
    assert n_h_acceptor_bonds(crystals["ammonia"]) is None  # N-H...N(sp3): not judged
