"""Crystal-structure helpers shared by the structure-level backends.

Structures cross module boundaries as CIF text or pymatgen ``Structure``; the
calculators (tblite, phonopy, dftd3, pyscf) want ASE ``Atoms``. This module converts
between them and does the molecular-crystal bookkeeping every structure backend needs:

* :func:`atoms_from_cif` / :func:`cif_from_atoms` / :func:`structure_from_cif` --
  conversions, with a one-line :class:`~sim_backends.base.SetupError` for text that is
  not a readable crystal;
* :func:`molecule_indices` -- split a periodic cell into covalently bonded molecules
  (bond = distance below 1.2 x the sum of the covalent radii of Cordero et al.,
  Dalton Trans. 2832 (2008), as tabulated in ASE, minimum-image convention);
* :func:`make_whole` -- unwrap every molecule so that it is contiguous in Cartesian
  space (atoms moved by lattice vectors only; the crystal is unchanged);
* :func:`load_crystal` -- all of the above plus a check that every molecule in the cell
  is the molecule named by the SMILES (same formula), giving Z.

ASE, pymatgen and RDKit are imported inside the functions (cheap module import).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sim_backends.base import SUPPORTED_ELEMENTS, SetupError

if TYPE_CHECKING:
    import numpy as np
    from ase import Atoms
    from pymatgen.core import Structure

#: 1 eV in kJ/mol (CODATA 2018 via e * N_A / 1000)
EV_TO_KJMOL = 96.48533212
#: 1 Hartree in kJ/mol (CODATA 2018)
HARTREE_TO_KJMOL = 2625.4996394799
#: bond if d < BOND_SCALE * (r_cov,i + r_cov,j)
BOND_SCALE = 1.2


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:160]


def atoms_from_cif(cif_text: str) -> Atoms:
    """Parse CIF text into periodic ASE ``Atoms`` (all symmetry images expanded).

    Args:
        cif_text: a CIF data block with cell, symmetry operations and atom sites.

    Returns:
        ``Atoms`` with ``pbc=True`` and the full cell content (n_atoms,).

    Raises:
        SetupError: if the text is empty, not parseable, has no atoms or a
            degenerate cell (volume below 1 A^3).
    """
    if not isinstance(cif_text, str) or not cif_text.strip():
        raise SetupError("no crystal structure given (structure_cif is empty)")
    from pymatgen.io.ase import AseAtomsAdaptor

    structure = structure_from_cif(cif_text)
    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.pbc = True
    atoms.info.clear()
    atoms.arrays = {k: v for k, v in atoms.arrays.items() if k in ("numbers", "positions")}
    return atoms


def structure_from_cif(cif_text: str) -> Structure:
    """Parse CIF text into a pymatgen ``Structure``; SetupError with one line if bad."""
    import warnings

    from pymatgen.io.cif import CifParser

    if not isinstance(cif_text, str) or not cif_text.strip():
        raise SetupError("no crystal structure given (structure_cif is empty)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structures = CifParser.from_str(cif_text).parse_structures(primitive=False)
    except Exception as exc:  # noqa: BLE001 - pymatgen raises many types on bad CIF
        raise SetupError(f"unreadable CIF: {_one_line(exc)}") from None
    if not structures:
        raise SetupError("unreadable CIF: no structure in it")
    s = structures[0]
    if len(s) == 0:
        raise SetupError("CIF has no atoms")
    if s.lattice.volume < 1.0:
        raise SetupError(f"CIF cell volume {s.lattice.volume:.3g} A^3 is degenerate")
    return s


def cif_from_atoms(atoms: Atoms) -> str:
    """Write periodic ``Atoms`` as P1 CIF text (via pymatgen, full precision)."""
    from pymatgen.io.ase import AseAtomsAdaptor
    from pymatgen.io.cif import CifWriter

    return str(CifWriter(AseAtomsAdaptor.get_structure(atoms)))


def molecule_indices(atoms: Atoms, bond_scale: float = BOND_SCALE) -> list[np.ndarray]:
    """Split a periodic cell into covalently bonded molecules.

    Args:
        atoms: periodic cell (n_atoms,).
        bond_scale: bond if the (minimum-image) distance is below ``bond_scale`` times
            the sum of covalent radii.

    Returns:
        One sorted index array per molecule, ordered by their smallest atom index.
        A molecule bonded to its own periodic image (a polymer) shows up as one
        component; :func:`make_whole` detects that case.
    """
    import numpy as np
    from ase.neighborlist import natural_cutoffs, neighbor_list
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(atoms)
    i, j = neighbor_list("ij", atoms, natural_cutoffs(atoms, mult=bond_scale))
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    n_comp, labels = connected_components(graph, directed=False)
    groups = [np.flatnonzero(labels == c) for c in range(n_comp)]
    return sorted(groups, key=lambda g: int(g[0]))


def make_whole(atoms: Atoms, bond_scale: float = BOND_SCALE) -> tuple[Atoms, list[np.ndarray]]:
    """Unwrap molecules across periodic boundaries.

    Each molecule is rebuilt by a breadth-first walk over its bonds, placing every atom
    at the bond vector (minimum image) from its already placed neighbour, then shifted
    by a lattice vector so its centroid lies in the home cell.

    Args:
        atoms: periodic cell (n_atoms,).
        bond_scale: see :func:`molecule_indices`.

    Returns:
        ``(whole, groups)``: a copy of ``atoms`` with contiguous molecules, and the
        atom-index array of each molecule.

    Raises:
        SetupError: if a molecule is bonded to its own periodic image (infinite chain
            or layer, or a cell too small / overlapping atoms).
    """
    import numpy as np
    from ase.neighborlist import natural_cutoffs, neighbor_list

    whole = atoms.copy()
    i, j, d_vec, shifts = neighbor_list("ijDS", atoms, natural_cutoffs(atoms, mult=bond_scale))
    if np.any(i == j):
        raise SetupError("an atom is bonded to its own periodic image (cell too small)")
    neighbours: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}
    for a, b, d, s in zip(i, j, d_vec, shifts):
        neighbours.setdefault(int(a), []).append((int(b), d, s))
    pos = atoms.positions.copy()
    groups = molecule_indices(atoms, bond_scale)
    for g in groups:
        placed = {int(g[0]): np.zeros(3, dtype=int)}  # atom -> image shift used
        queue = [int(g[0])]
        while queue:
            a = queue.pop()
            for b, d, s in neighbours.get(a, []):
                shift_b = placed[a] + s
                if b in placed:
                    if np.any(placed[b] != shift_b):
                        raise SetupError(
                            "a molecule is bonded to its own periodic image "
                            "(polymeric or overlapping structure)"
                        )
                    continue
                placed[b] = shift_b
                pos[b] = pos[a] + d
                queue.append(b)
        frac_centre = np.linalg.solve(atoms.cell.T, pos[g].mean(axis=0))
        pos[g] -= np.floor(frac_centre) @ atoms.cell
    whole.positions = pos
    return whole, groups


def formula_of_smiles(smiles: str) -> Counter:
    """Element counts (hydrogens included) of a SMILES; SetupError if unparseable."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    try:
        mol = Chem.MolFromSmiles(smiles) if isinstance(smiles, str) and smiles else None
    finally:
        RDLogger.EnableLog("rdApp.*")
    if mol is None:
        raise SetupError(f"invalid SMILES {smiles!r}")
    mol = Chem.AddHs(mol)
    return Counter(a.GetSymbol() for a in mol.GetAtoms())


def _formula_text(counts: Counter) -> str:
    return "".join(f"{el}{n if n > 1 else ''}" for el, n in sorted(counts.items()))


@dataclass
class Crystal:
    """A molecular crystal ready for calculators.

    Attributes:
        atoms: periodic cell with whole (unwrapped) molecules, (n_atoms,).
        groups: atom-index array of each of the ``z`` molecules.
        z: molecules per cell.
    """

    atoms: Atoms
    groups: list[np.ndarray]

    @property
    def z(self) -> int:
        return len(self.groups)

    @classmethod
    def from_atoms(cls, atoms: Atoms) -> Crystal:
        """A crystal from a periodic cell, molecules made whole (:func:`make_whole`); no
        composition checks (use :func:`load_crystal` for untrusted input)."""
        whole, groups = make_whole(atoms)
        return cls(atoms=whole, groups=groups)

    def molecule(self, k: int) -> Atoms:
        """Molecule ``k`` as a non-periodic ``Atoms`` at its crystal geometry."""
        mol = self.atoms[self.groups[k]]
        mol.pbc = False
        mol.cell = None
        return mol


def load_crystal(cif_text: str, smiles: str | None = None, max_atoms: int = 400) -> Crystal:
    """Read a CIF, make molecules whole and check them against the SMILES.

    Args:
        cif_text: crystal structure (CIF text), any number Z of molecules per cell.
        smiles: the molecule the crystal is made of; when given every molecule found
            in the cell must have its formula (hydrogens included).
        max_atoms: largest accepted cell (atoms).

    Returns:
        A :class:`Crystal`.

    Raises:
        SetupError: unreadable CIF, unsupported element, too many atoms, polymeric
            connectivity, or a molecule whose formula differs from the SMILES (for
            example missing hydrogens or fragments cut by a bad cell).
    """
    return crystal_from_atoms(atoms_from_cif(cif_text), smiles, max_atoms)


def crystal_from_atoms(atoms: Atoms, smiles: str | None = None, max_atoms: int = 400) -> Crystal:
    """:func:`load_crystal` of a cell already parsed (e.g. a
    :class:`~sim_backends.landscape.LandscapeEntry`'s ``atoms``): the same checks and the
    same :class:`Crystal`, atom order kept; ``atoms`` is not modified.

    Raises:
        SetupError: as :func:`load_crystal` (except an unreadable CIF).
    """
    atoms = atoms.copy()
    atoms.pbc = True
    atoms.info.clear()
    atoms.arrays = {k: v for k, v in atoms.arrays.items() if k in ("numbers", "positions")}
    bad = sorted(set(atoms.get_chemical_symbols()) - SUPPORTED_ELEMENTS)
    if bad:
        raise SetupError(f"crystal contains unsupported element(s) {', '.join(bad)}")
    if len(atoms) > max_atoms:
        raise SetupError(f"cell has {len(atoms)} atoms; limit is {max_atoms}")
    crystal = Crystal.from_atoms(atoms)
    if smiles is not None:
        want = formula_of_smiles(smiles)
        symbols = atoms.get_chemical_symbols()
        for g in crystal.groups:
            got = Counter(symbols[k] for k in g)
            if got != want:
                raise SetupError(
                    f"molecule in cell has formula {_formula_text(got)}, "
                    f"SMILES {smiles!r} has {_formula_text(want)}"
                )
    return crystal
