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
* **Contacts far inside the van der Waals sum.** The shortest intermolecular C-H...C contact
  of each of the lowest :data:`N_CHECKED` minima; C-H...C and C-H...pi contacts in organic
  crystals are rarely shorter than ~2.6 A (Bondi sum 2.9 A), so below
  :data:`MIN_H_C_CONTACT_A` the model overbinds that contact and the cell is too small. Only
  H bonded to C counts: N-H...pi and O-H...pi hydrogen bonds (pyrrole's, H...C 2.3-2.5 A)
  are expected that short.
* **Compressed O-H...O hydrogen bonds.** The shortest intermolecular O-H...O donor-acceptor
  distance of each of the lowest :data:`N_CHECKED` minima: neutral O-H...O bonds in
  organic crystals are 2.60-2.70 A (carboxylic acids ~2.65; the PBE+TS X23 structures of
  oxalic and succinic acid, 2.59-2.60), while the rigid W99 + point-charge minima of
  acetic and oxalic acid have 2.51-2.56 A. Below :data:`MIN_O_H_O_A` the geometry of the
  H-bonded motif is off. N-H...O/N bonds come out long rather than short with this model
  (urea, formamide 2.95-3.05 A against 2.83-2.95 in the reference structures) and are not
  flagged: their error shows in the lattice energies (``benchmarks/x23_lattice.py``).

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
#: shortest plausible intermolecular O-H...O donor-acceptor (O...O) distance (A) of a minimum
MIN_O_H_O_A = 2.58
#: how many of the lowest minima the contact check looks at
N_CHECKED = 10
#: an H within this distance (A) of C, N or O is bonded to it (C-H 1.09, N-H 1.01, O-H 0.97)
_X_H_BOND_A = 1.25


def _cell_and_molecules(atoms: Any) -> tuple[Any, Any]:
    """The periodic cell as :class:`~sim_backends.structures.Crystal` sees it and the molecule
    index of each of its atoms (from the bond graph)."""
    import numpy as np

    from sim_backends.structures import Crystal

    crystal = Crystal.from_atoms(atoms)
    mol_of = np.empty(len(crystal.atoms), dtype=int)
    for k, g in enumerate(crystal.groups):
        mol_of[g] = k
    return crystal.atoms, mol_of


def shortest_h_c_contact(atoms: Any) -> tuple[float, str] | None:
    """``(distance A, "H3...C17")`` of the shortest intermolecular C-H...C contact of a
    periodic cell (molecules found from the bond graph; only H bonded to C, within
    :data:`_X_H_BOND_A`: N-H...pi and O-H...pi hydrogen bonds, 2.3-2.6 A in pyrrole-like
    crystals, are not this check's), None when none is within 3 A."""
    import numpy as np
    from ase.neighborlist import neighbor_list

    cell, mol_of = _cell_and_molecules(atoms)
    symbols = np.asarray(cell.get_chemical_symbols())
    bi, bj = neighbor_list("ij", cell, _X_H_BOND_A)
    c_bonded = np.zeros(len(cell), dtype=bool)
    c_bonded[bi[(symbols[bi] == "H") & (symbols[bj] == "C")]] = True
    i, j, d, shift = neighbor_list("ijdS", cell, 3.0)
    sel = np.flatnonzero(((mol_of[i] != mol_of[j]) | np.any(shift != 0, axis=1))
                         & c_bonded[i] & (symbols[j] == "C"))
    if not sel.size:
        return None
    k = sel[np.argmin(d[sel])]
    return float(d[k]), f"H{i[k]}...C{j[k]}"


def shortest_o_h_o(atoms: Any, max_h_o_A: float = 2.2, min_angle_deg: float = 120.0) -> tuple[float, str] | None:
    """``(O...O distance A, "O1-H5...O9")`` of the shortest intermolecular O-H...O hydrogen
    bond of a periodic cell (H within 1.2 A of its donor O, H...O below ``max_h_o_A``, angle
    O-H...O above ``min_angle_deg``), None when there is none."""
    import numpy as np
    from ase.neighborlist import neighbor_list

    cell, mol_of = _cell_and_molecules(atoms)
    symbols = np.asarray(cell.get_chemical_symbols())
    i, j, vec = neighbor_list("ijD", cell, 1.2)
    donor = {int(a): (int(b), -v) for a, b, v in zip(i, j, vec) if symbols[a] == "H" and symbols[b] == "O"}
    if not donor:
        return None
    i, j, d, vec, shift = neighbor_list("ijdDS", cell, max_h_o_A)
    best: tuple[float, str] | None = None
    for a, b, v, s in zip(i, j, vec, shift):
        if int(a) not in donor or symbols[b] != "O" or (mol_of[a] == mol_of[b] and not np.any(s)):
            continue
        o, h_from_o = donor[int(a)]
        cos = np.dot(-h_from_o, v) / (np.linalg.norm(h_from_o) * np.linalg.norm(v))
        if np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))) < min_angle_deg:
            continue
        oo = float(np.linalg.norm(h_from_o + v))
        if best is None or oo < best[0]:
            best = (oo, f"O{o}-H{a}...O{b}")
    return best


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
    short, compressed = [], []
    from sim_backends.base import BackendError

    for m in list(minima)[:n_checked]:
        try:
            contact = shortest_h_c_contact(m.atoms)
            hbond = shortest_o_h_o(m.atoms)
        except BackendError:  # molecules not separable in this cell: no contact to judge
            continue
        if contact is not None and contact[0] < MIN_H_C_CONTACT_A:
            short.append((m.id, contact[0]))
        if hbond is not None and hbond[0] < MIN_O_H_O_A:
            compressed.append((m.id, hbond[0]))
    if short:
        worst = min(d for _, d in short)
        out.append(f"{len(short)} of the lowest {min(n_checked, len(minima))} minima have an intermolecular H...C "
                   f"contact shorter than {MIN_H_C_CONTACT_A} A (shortest {worst:.2f} A, in "
                   f"{', '.join(i for i, _ in short[:5])}{', ...' if len(short) > 5 else ''}; C-H...C contacts in "
                   "crystals are rarely below 2.6 A): the force field overbinds them, the cells are too small")
    if compressed:
        worst = min(d for _, d in compressed)
        out.append(f"{len(compressed)} of the lowest {min(n_checked, len(minima))} minima have an intermolecular "
                   f"O-H...O hydrogen bond with O...O shorter than {MIN_O_H_O_A} A (shortest {worst:.2f} A, in "
                   f"{', '.join(i for i, _ in compressed[:5])}{', ...' if len(compressed) > 5 else ''}); neutral "
                   "O-H...O bonds in organic crystals are 2.60-2.70 A (carboxylic acids ~2.65 A): the rigid-molecule "
                   "point-charge model compresses them, so the H-bonded motifs' geometry and energies are "
                   "approximate")
    return out
