"""Where the rigid-molecule force field is known to be off: warnings a CSP landscape carries.

Contract: :func:`model_warnings` takes the W99 atom types of the searched molecule and the
landscape's minima (and, from a CSP run, the SMILES and the charge model) and returns WARNING
lines (plain text, no prefix) for a user to read beside the structures; it never changes
energies or ranks. The checks:

* **A neutral amino acid.** A basic aliphatic amine and a carboxylic/sulfonic acid in one
  molecule (glycine ``NCC(=O)O``): its crystals are of the zwitterion, which the gas-phase
  conformer model refuses (:func:`sim_backends.csp.conformers.zwitterion_prone`), so the
  neutral tautomer's landscape cannot contain them. Also printed as the run starts.

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
  H-bonded motif is off.
* **Long or missing N-H...O/N hydrogen bonds** (:func:`n_h_acceptor_bonds`). These come out
  long with this model (urea, formamide 2.95-3.05 A against 2.83-2.95 in the reference
  structures; acetanilide's ten lowest minima 3.04-3.39 A with xtb charges, 2.97-3.52 A or
  none with resp, against 2.94 A in its crystal). Minima whose shortest N-H...O/N bond is
  longer than :data:`MAX_N_H_A_A`, or absent, are named, with the xtb -> resp ranking
  observation when the charges are xtb's.
* **Underbound N-H crystals.** For a molecule with an N-H, the measured X23 underbinding of
  the N-H crystals with the run's charge model, measured the way ``csp`` works
  (:data:`X23_N_H_ERRORS_CSP`: the experimental crystal rebuilt from the search's own gas-phase
  GFN2-xTB molecule and charge fit and minimised, ``benchmarks/csp_recovery.py``), beside the
  (mostly smaller) figures from the X23 crystals' own molecule geometry (:data:`X23_N_H_ERRORS`,
  ``benchmarks/x23_lattice.py``), so force-field E_latt is not taken at face value (a user's
  imidazole came out ~17 kJ/mol too weak; newuser46a's formamide +17.3, not the +7.4 then quoted).

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
#: longest plausible N-H...O/N donor-acceptor distance (A) of a minimum's shortest such bond
MAX_N_H_A_A = 3.1
#: N...O/N of N-H...O/N hydrogen bonds in crystals (A): acetanilide 2.94, X23 PBE+TS formamide
#: 2.83, urea 2.95, cytosine (N-H...N) 2.78
N_H_A_TYPICAL_A = (2.8, 3.0)
#: H...acceptor distance (A) within which :func:`n_h_acceptor_bonds` looks for an acceptor
N_H_SEARCH_H_A_A = 2.7
#: minimised W99 lattice energy minus the X23 reference (kJ/mol per molecule) of the X23 crystals
#: with N-H donors, per charge model, minimised from the X23 crystal's own (PBE+TS) molecule geometry
#: and charges fitted on it (benchmarks/results/x23_lattice.json, stop 41)
X23_N_H_ERRORS = {
    "resp-lpn": {"urea": 5.9, "formamide": 7.4, "ammonia": 10.2, "cytosine": 22.0},
    "resp": {"urea": 5.9, "formamide": 7.4, "ammonia": 10.2, "cytosine": 26.4},
    "resp-lp": {"urea": 7.1, "formamide": 4.6, "ammonia": 10.2, "cytosine": 19.3},
    "xtb": {"urea": 38.8, "formamide": 29.9, "ammonia": 29.0, "cytosine": 80.6},
}
#: the same crystals as a ``csp`` landscape sees them: the experimental crystal rebuilt from rigid
#: copies of the molecule csp makes from the SMILES (gas-phase GFN2-xTB geometry, its own charge fit:
#: RigidMolecule.from_smiles) and minimised on the search's W99 model (``relaxed_experiment`` of
#: benchmarks/csp_recovery.py), minus the X23 reference (kJ/mol per molecule): the blind rows'
#: ``relaxed_experiment.e_kjmol`` of :data:`X23_N_H_CSP_FILES` minus ``e_ref_kjmol`` of
#: benchmarks/results/x23_lattice.json. Larger than :data:`X23_N_H_ERRORS` but for ammonia (about equal): the
#: gas-phase molecule is less polar than in the crystal (formamide C=O 1.201 against 1.254 A, newuser46a)
#: and its charges with it
X23_N_H_ERRORS_CSP = {
    "resp-lpn": {"urea": 20.9, "formamide": 17.3, "ammonia": 10.5, "cytosine": 46.0},
    "resp": {"urea": 20.9, "formamide": 17.3, "ammonia": 10.3, "cytosine": 47.2},
    "resp-lp": {"urea": 21.0, "formamide": 14.7, "ammonia": 10.5, "cytosine": 43.7},
    "xtb": {"urea": 49.8, "formamide": 36.2, "ammonia": 28.9, "cytosine": 89.9},
}
#: the committed csp_recovery result each charge model's :data:`X23_N_H_ERRORS_CSP` comes from
X23_N_H_CSP_FILES = {
    "resp-lpn": "benchmarks/results/csp_recovery.json",
    "resp": "benchmarks/results/csp_recovery_q-resp.json",
    "resp-lp": "benchmarks/results/csp_recovery_q-resp-lp_nobase.json",
    "xtb": "benchmarks/results/csp_recovery_q-xtb_urea-formamide-ammonia-cytosine_nobase.json",
}
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


#: what :func:`n_h_acceptor_kind` calls an O, and an N with a lone pair and at most two bonded atoms
#: (pyridine-type, imine, nitrile): the acceptors of the N-H...O/N bonds whose length
#: :func:`n_h_acceptor_bonds` judges
N_H_BOND_ACCEPTORS = ("O", "N-lone-pair")


def n_h_acceptor_kind(symbol: str, neighbours: Sequence[str], aromatic: bool = False, charge: int = 0) -> str | None:
    """The one rule of what accepts an N-H hydrogen bond, from an atom's element, the elements of
    its bonded atoms (H included), whether it is aromatic and its formal charge:
    ``"O"`` for any O; ``"N-lone-pair"`` for a neutral N with at most two bonded atoms, none an H
    (pyridine-type, imine, nitrile); ``"N-amine"`` for another neutral N that is not aromatic
    (ammonia, amines, amides, an N-H imine: an acceptor, but its N-H...N bonds are long by
    nature, 3.26 A in X23's PBE+TS ammonia); None otherwise (a pyrrole-type aromatic N, with an
    H or three bonded atoms, whose lone pair is in the ring; a charged N; other elements).
    :func:`has_n_h_acceptor` (a SMILES) takes every kind, :func:`n_h_acceptor_bonds` (a cell,
    no aromaticity or charges: an N with an H or three bonded atoms is not of its kinds either
    way) those of :data:`N_H_BOND_ACCEPTORS`."""
    if symbol == "O":
        return "O"
    if symbol != "N" or charge != 0:
        return None
    if len(neighbours) <= 2 and "H" not in neighbours:
        return "N-lone-pair"
    return None if aromatic else "N-amine"


def n_h_acceptor_bonds(atoms: Any, max_h_a_A: float = N_H_SEARCH_H_A_A, min_angle_deg: float = 120.0
                       ) -> tuple[float, str] | None:
    """The N-H...O/N hydrogen bonds of a periodic cell, judged per molecule: for each molecule
    with an N-H its shortest intermolecular N-H...A donor-acceptor distance (A: an acceptor of
    :data:`N_H_BOND_ACCEPTORS` by :func:`n_h_acceptor_kind`, any O or an N with at most two
    bonded atoms and no H: pyridine-type, imine, nitrile; H...A below ``max_h_a_A``, angle
    N-H...A above ``min_angle_deg``), and returned ``(the longest of these A, "N3-H9...O21")``
    -- the molecule worst served; ``(inf, "")`` when some molecule donates none. None when the
    cell has no N-H or no such acceptor (pyrrole: N-H...pi only; ammonia and amines:
    N-H...N(sp3) bonds are long by nature, 3.26 A in X23's PBE+TS ammonia)."""
    import numpy as np
    from ase.neighborlist import neighbor_list

    cell, mol_of = _cell_and_molecules(atoms)
    symbols = np.asarray(cell.get_chemical_symbols())
    bi, bj = neighbor_list("ij", cell, 1.9)
    bonded: dict[int, list[int]] = {}
    for a, b in zip(bi, bj):
        a, b = int(a), int(b)
        if cell.get_distance(a, b, mic=True) <= (_X_H_BOND_A if "H" in (symbols[a], symbols[b]) else 1.9):
            bonded.setdefault(a, []).append(b)
    donors = {h: nb[0] for h, nb in bonded.items() if symbols[h] == "H" and len(nb) == 1 and symbols[nb[0]] == "N"}
    acceptors = {k for k in range(len(cell))
                 if n_h_acceptor_kind(symbols[k], [symbols[x] for x in bonded.get(k, [])]) in N_H_BOND_ACCEPTORS}
    if not donors or not acceptors:
        return None
    best: dict[int, tuple[float, str]] = {int(mol_of[h]): (np.inf, "") for h in donors}
    i, j, vec, shift = neighbor_list("ijDS", cell, max_h_a_A)
    for h, a, v, sh in zip(i, j, vec, shift):
        h, a = int(h), int(a)
        if h not in donors or a not in acceptors or (mol_of[h] == mol_of[a] and not np.any(sh)):
            continue
        n = donors[h]
        h_from_n = cell.get_distance(n, h, mic=True, vector=True)
        cos = np.dot(-h_from_n, v) / (np.linalg.norm(h_from_n) * np.linalg.norm(v))
        if np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))) < min_angle_deg:
            continue
        da = float(np.linalg.norm(h_from_n + v))
        if da < best[int(mol_of[h])][0]:
            best[int(mol_of[h])] = (da, f"N{n}-H{h}...{symbols[a]}{a}")
    return max(best.values(), key=lambda t: t[0])


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


def _has_n_h(smiles: Any) -> bool:
    """Whether a SMILES has an N-H (False for anything else)."""
    if not isinstance(smiles, str) or not smiles:
        return False
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    return mol is not None and any(a.GetSymbol() == "N" and a.GetTotalNumHs() > 0 for a in mol.GetAtoms())


def has_n_h_acceptor(smiles: Any) -> bool | None:
    """Whether a molecule with an N-H can make N-H...O/N hydrogen bonds: it has an atom of any
    kind of :func:`n_h_acceptor_kind` -- an O, or an N with a lone pair to accept (an amine,
    imine, nitrile or pyridine-type N; not a pyrrole-type aromatic N, whose lone pair is in the
    ring). None when ``smiles`` is not a SMILES it can read. Carbazole, indole and pyrrole
    (N-H...pi only) give False."""
    if not isinstance(smiles, str) or not smiles:
        return None
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return None
    return any(n_h_acceptor_kind(a.GetSymbol(), [b.GetSymbol() for b in a.GetNeighbors()] + ["H"] * a.GetTotalNumHs(),
                                 a.GetIsAromatic(), a.GetFormalCharge()) is not None
               for a in mol.GetAtoms())


def charges_key(charge_method: Any) -> str | None:
    """The :data:`X23_N_H_ERRORS` key of a landscape's ``charge_method`` label
    ("resp-lpn-pyscf HF/6-31G*" -> "resp-lpn", "xtb-gfn2-mulliken" -> "xtb"), None for no
    or other charges ("none", "given")."""
    text = str(charge_method or "")
    for key in ("resp-lpn", "resp-lp", "resp", "xtb"):  # the longer prefixes first
        if text.startswith(key):
            return key
    return None


def n_h_energy_note(charge_method: Any) -> str | None:
    """The caveat on force-field E_latt for a molecule with an N-H donor: the measured
    underbinding of X23's N-H crystals with these charges, as a csp landscape sees them
    (:data:`X23_N_H_ERRORS_CSP`), and the span from the X23 molecule geometry
    (:data:`X23_N_H_ERRORS`). None for other charges."""
    key = charges_key(charge_method)
    if key is None:
        return None

    def span(errs: dict[str, float]) -> str:
        return f"{min(errs.values()):.0f}-{max(errs.values()):.0f}"

    errs, geom = X23_N_H_ERRORS_CSP[key], X23_N_H_ERRORS[key]
    listed = ", ".join(f"{name} {err:+.1f}" for name, err in sorted(errs.items(), key=lambda t: t[1]))
    return (f"force-field E_latt of N-H...N/O hydrogen-bonded crystals is underbound (W99 + {key} charges, the CSP "
            "search's level, not a refinement level's): the X23 crystals with N-H donors, rebuilt from the "
            f"gas-phase GFN2-xTB molecule csp makes from the SMILES with its own {key} charges and minimised, come out "
            f"{span(errs)} kJ/mol per molecule above their reference lattice energies ({listed}; "
            f"{X23_N_H_CSP_FILES[key]}), {span(geom)} from the X23 crystals' own molecule geometry "
            "(benchmarks/x23_lattice.py): read force-field E_latt as too weak by about that much")


def model_warnings(ff_types: Sequence[str], minima: Sequence[Any], n_checked: int = N_CHECKED,
                   smiles: str | None = None, charge_method: str | None = None) -> list[str]:
    """WARNING lines for a landscape (module docstring): a neutral molecule that most likely
    crystallises as a zwitterion (``smiles`` given:
    :func:`~sim_backends.csp.conformers.zwitterion_prone`); one per unvalidated atom type of
    the molecule; one each naming the minima among the lowest ``n_checked`` whose shortest
    intermolecular C-H...C contact is below :data:`MIN_H_C_CONTACT_A`, whose O-H...O bond
    is below :data:`MIN_O_H_O_A`, whose N-H...O/N bonds are longer than
    :data:`MAX_N_H_A_A` (:func:`n_h_acceptor_bonds`); and, with ``charge_method`` given, for
    a molecule with an N-H (W99 type H_W4 or an N-H in ``smiles``) and an acceptor for it
    (:func:`has_n_h_acceptor`; not for carbazole's N-H...pi), the X23 underbinding of
    N-H crystals (:func:`n_h_energy_note`). ``minima``: landscape entries with ``id`` and
    ``atoms`` (lowest first)."""
    out = []
    if isinstance(smiles, str) and smiles:
        from rdkit import Chem

        from sim_backends.csp.conformers import ZWITTERION_PRONE_TEXT, zwitterion_prone

        if zwitterion_prone(Chem.MolFromSmiles(smiles)):
            out.append(ZWITTERION_PRONE_TEXT.format(smiles=smiles))
    out += [text for t, text in UNVALIDATED_TYPES.items() if t in set(ff_types)]
    short, compressed, long_nh = [], [], []
    from sim_backends.base import BackendError

    n_seen = min(n_checked, len(minima))
    for m in list(minima)[:n_checked]:
        try:
            contact = shortest_h_c_contact(m.atoms)
            hbond = shortest_o_h_o(m.atoms)
            nh = n_h_acceptor_bonds(m.atoms)
        except BackendError:  # molecules not separable in this cell: no contact to judge
            continue
        if contact is not None and contact[0] < MIN_H_C_CONTACT_A:
            short.append((m.id, contact[0]))
        if hbond is not None and hbond[0] < MIN_O_H_O_A:
            compressed.append((m.id, hbond[0]))
        if nh is not None and nh[0] > MAX_N_H_A_A:
            long_nh.append((m.id, nh[0]))
    if short:
        worst = min(d for _, d in short)
        out.append(f"{len(short)} of the lowest {n_seen} minima have an intermolecular C-H...C "
                   f"contact shorter than {MIN_H_C_CONTACT_A} A (shortest {worst:.2f} A, in "
                   f"{', '.join(i for i, _ in short[:5])}{', ...' if len(short) > 5 else ''}; C-H...C contacts in "
                   "crystals are rarely below 2.6 A): the force field overbinds them, the cells are too small")
    if compressed:
        worst = min(d for _, d in compressed)
        out.append(f"{len(compressed)} of the lowest {n_seen} minima have an intermolecular "
                   f"O-H...O hydrogen bond with O...O shorter than {MIN_O_H_O_A} A (shortest {worst:.2f} A, in "
                   f"{', '.join(i for i, _ in compressed[:5])}{', ...' if len(compressed) > 5 else ''}); neutral "
                   "O-H...O bonds in organic crystals are 2.60-2.70 A (carboxylic acids ~2.65 A): the rigid-molecule "
                   "point-charge model compresses them, so the H-bonded motifs' geometry and energies are "
                   "approximate")
    if long_nh:
        found = [d for _, d in long_nh if d != float("inf")]
        missing = [i for i, d in long_nh if d == float("inf")]
        span = (f"N...O/N {min(found):.2f}-{max(found):.2f} A, {min(found) - N_H_A_TYPICAL_A[1]:.2f}-"
                f"{max(found) - N_H_A_TYPICAL_A[1]:.2f} A beyond the {N_H_A_TYPICAL_A[0]}-{N_H_A_TYPICAL_A[1]} A "
                "of these bonds in crystals") if found else ""
        none = (f"{'; ' if span else ''}none with H...O/N within {N_H_SEARCH_H_A_A} A in "
                f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}") if missing else ""
        # acetanilide, Pbca + P2_1/c, ~900 trials each: the lowest ten minima have N...O 3.04-3.39 A with
        # xtb charges, 2.97-3.52 A or none with resp, but resp ranks the known Pbca form 1st, xtb 15th
        resp = ("; --charges resp ranks them better (acetanilide's known Pbca form 1st instead of 15th), though "
                "the bonds stay long" if charges_key(charge_method) == "xtb" else "")
        out.append(f"{len(long_nh)} of the lowest {n_seen} minima have no N-H...O/N hydrogen bond shorter than "
                   f"{MAX_N_H_A_A} A (in {', '.join(i for i, _ in long_nh[:5])}{', ...' if len(long_nh) > 5 else ''}: "
                   f"{span}{none}): the model's N-H...O/N bonds come out long, so it "
                   f"underbinds N-H...O/N-bonded packings and may place them too high on the landscape{resp}")
    # only where N-H...O/N bonds can form: carbazole's N-H...pi packing is not what X23 measured
    if (charge_method is not None and ("H_W4" in set(ff_types) or _has_n_h(smiles))
            and has_n_h_acceptor(smiles) is not False):
        note = n_h_energy_note(charge_method)
        if note:
            out.append(note)
    return out
