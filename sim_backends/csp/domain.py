"""Where the rigid-molecule force field is known to be off: warnings a CSP landscape carries.

Contract: :func:`model_warnings` takes the W99 atom types of the searched molecule and the
landscape's minima and returns WARNING lines (plain text, no prefix) for a user to read
beside the structures; it never changes energies or ranks. Two checks:

* **Atom types outside the validated domain.** W99's carbon bonded to two atoms (``C_W2``:
  alkynes, nitriles, cumulenes, CO2) is in no reference crystal the project measured except
  X23's CO2, whose static W99 + RESP minimum is 17.5 % denser than the PBE+TS reference
  (``benchmarks/x23_lattice.py``); acetylene's eight lowest minima of a 400-trial search
  are 1.03-1.07 g/cm3 against 0.76 (cubic, Pa-3) and 0.84 g/cm3 (orthorhombic) for its
  crystal forms, their shortest H...C contacts 2.49-2.68 A.
* **Contacts far inside the van der Waals sum.** The shortest intermolecular H...C contact
  of each of the lowest :data:`N_CHECKED` minima; C-H...C and C-H...pi contacts in organic
  crystals are rarely shorter than ~2.6 A (Bondi sum 2.9 A), so below
  :data:`MIN_H_C_CONTACT_A` the model overbinds that contact and the cell is too small.
  Hydrogen bonds (H...O, H...N) are not checked: they are short by nature.

ASE is imported inside functions so importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: W99 types whose parameters no reference crystal of the project validates (type -> what)
UNVALIDATED_TYPES = {
    "C_W2": ("W99's carbon bonded to two atoms (C_W2: alkynes, nitriles, cumulenes, CO2) is not validated: "
             "X23's CO2 relaxes 17.5 % too dense with W99 + RESP and acetylene's lowest minima (1.03-1.07 g/cm3) "
             "are 23-41 % denser than its two crystal forms (0.76, 0.84 g/cm3), so densities and the ranking "
             "are indicative only"),
}
#: shortest plausible intermolecular H...C contact (A) of a minimum
MIN_H_C_CONTACT_A = 2.4
#: how many of the lowest minima the contact check looks at
N_CHECKED = 10


def shortest_h_c_contact(atoms: Any) -> tuple[float, str] | None:
    """``(distance A, "H3...C17")`` of the shortest intermolecular H...C contact of a
    periodic cell (molecules found from the bond graph), None when none is within 3 A."""
    import numpy as np
    from ase.neighborlist import neighbor_list

    from sim_backends.structures import Crystal

    crystal = Crystal.from_atoms(atoms)
    cell = crystal.atoms
    mol_of = np.empty(len(cell), dtype=int)
    for k, g in enumerate(crystal.groups):
        mol_of[g] = k
    i, j, d, shift = neighbor_list("ijdS", cell, 3.0)
    symbols = np.asarray(cell.get_chemical_symbols())
    sel = np.flatnonzero(((mol_of[i] != mol_of[j]) | np.any(shift != 0, axis=1))
                         & (symbols[i] == "H") & (symbols[j] == "C"))
    if not sel.size:
        return None
    k = sel[np.argmin(d[sel])]
    return float(d[k]), f"H{i[k]}...C{j[k]}"


def ff_types_of_smiles(smiles: Any) -> list[str]:
    """The W99 carbon types a SMILES (or anything else: none) implies, from its heavy-atom
    graph with hydrogens: ``C_W2`` for a carbon bonded to at most two atoms (enough for
    :data:`UNVALIDATED_TYPES`)."""
    if not isinstance(smiles, str):
        return []
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return []
    mol = Chem.AddHs(mol)
    return ["C_W2" if a.GetDegree() <= 2 else "C" for a in mol.GetAtoms() if a.GetSymbol() == "C"]


def model_warnings(ff_types: Sequence[str], minima: Sequence[Any], n_checked: int = N_CHECKED) -> list[str]:
    """WARNING lines for a landscape (module docstring): one per unvalidated atom type of
    the molecule, and one naming the minima among the lowest ``n_checked`` whose shortest
    intermolecular H...C contact is below :data:`MIN_H_C_CONTACT_A`. ``minima``: landscape
    entries with ``id`` and ``atoms`` (lowest first)."""
    out = [text for t, text in UNVALIDATED_TYPES.items() if t in set(ff_types)]
    short = []
    from sim_backends.base import BackendError

    for m in list(minima)[:n_checked]:
        try:
            contact = shortest_h_c_contact(m.atoms)
        except BackendError:  # molecules not separable in this cell: no contact to judge
            continue
        if contact is not None and contact[0] < MIN_H_C_CONTACT_A:
            short.append((m.id, contact[0]))
    if short:
        worst = min(d for _, d in short)
        out.append(f"{len(short)} of the lowest {min(n_checked, len(minima))} minima have an intermolecular H...C "
                   f"contact shorter than {MIN_H_C_CONTACT_A} A (shortest {worst:.2f} A, in "
                   f"{', '.join(i for i, _ in short[:5])}{', ...' if len(short) > 5 else ''}; C-H...C contacts in "
                   "crystals are rarely below 2.6 A): the force field overbinds them, the cells are too small")
    return out
