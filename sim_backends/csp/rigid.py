"""Rigid molecules for crystal structure prediction.

A :class:`RigidMolecule` is one fixed conformer in its principal-axes frame (centre of mass
at the origin, principal axes of inertia along x, y, z with ascending moments, right-handed),
with atomic point charges and W99 atom types. The search places copies of ``coords_A`` by a
rotation and a translation; the force field needs nothing else.

Rigidity rule (``from_smiles``): no rotatable bond, where a bond is rotatable if it is a
single, acyclic bond between two atoms that both have at least two heavy-atom neighbours
and it is not a C(=O)-NH amide bond (RDKit's strict rotatable-bond definition), and it
is not a conjugated single bond other than a biaryl link. Terminal rotors -OH, -NH2,
-CH3, -SH, -COOH carbonyl-O-H, and amides are therefore allowed, and so are conjugated
links between pi systems such as the C-C bond of oxalic acid, glyoxal or butadiene and
the ring-carboxyl bond of benzoic acid: their planar conformers sit behind torsional
barriers of roughly 10-30 kJ/mol, and rigid-molecule CSP conventionally treats such
molecules as rigid (oxalic acid is a standard rigid CSP test system). A single bond
between two aromatic rings (biphenyl) stays rotatable: its minimum is twisted and the
torsion is soft (~6-8 kJ/mol barriers), so crystal packing changes it. In every allowed
case the conformer is taken from the MMFF minimum, then (``geometry="gfn2"``, the default)
relaxed with GFN2-xTB (tblite) and kept fixed (a known approximation of rigid-molecule
CSP); a molecule with a puckered ring (:func:`has_ring_conformers`) takes the lowest ring
conformer of a GFN2-xTB conformer ensemble instead (:func:`lowest_ring_conformer`). The GFN2 step makes the rigid molecule the minimum of the periodic GFN2-xTB
refinement level, so its molecular deformation energy there is zero, and it repairs
force-field typing errors: RDKit's MMFF94 types the oxygens of CO2 as carboxylate-like
(type 32) and gives C=O 1.405 A (experiment 1.160 A, GFN2 1.144 A), 453 kJ/mol above
the GFN2 minimum. ``geometry="mmff"`` keeps the force-field conformer.

Importing this module is cheap: rdkit is imported inside functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from sim_backends.base import SUPPORTED_ELEMENTS, SetupError
from sim_backends.csp.charges import compute_charges
from sim_backends.csp.forcefield import assign_w99_types, bond_graph

#: a mirror-image placement in :func:`fit_rigid_pose` must beat the best proper one by more
#: than this RMSD (Angstrom): an achiral molecule fits both ways within numerical noise
MIRROR_MARGIN_A = 1e-3
#: standard atomic masses (amu), IUPAC 2013 conventional values
ATOMIC_MASSES_AMU = {"H": 1.008, "C": 12.011, "N": 14.007, "O": 15.999, "F": 18.998, "S": 32.06, "Cl": 35.45}

_ROTATABLE_SMARTS = "[!$([NH]!@C(=O))&!D1&!$(*#*)]-&!@[!$([NH]!@C(=O))&!D1&!$(*#*)]"


#: a ring conformer of the GFN2-xTB ensemble replaces the embedded one when it is lower by this
RING_CONFORMER_MARGIN_KJMOL = 0.5


def has_ring_conformers(mol) -> bool:
    """Whether an RDKit molecule has a puckered ring: a non-aromatic ring of five or more
    atoms with an sp3 atom (chair, boat and twist forms of a cyclohexane, envelopes of a
    cyclopentane), whose conformers a single embedding does not choose between."""
    from rdkit import Chem

    for ring in mol.GetRingInfo().AtomRings():
        atoms = [mol.GetAtomWithIdx(i) for i in ring]
        if len(ring) >= 5 and any(not a.GetIsAromatic()
                                  and a.GetHybridization() == Chem.HybridizationType.SP3
                                  for a in atoms):
            return True
    return False


def lowest_ring_conformer(smiles: str, symbols: Sequence[str], xyz: np.ndarray, seed: int = 0) -> np.ndarray:
    """The GFN2-xTB gas-phase minimum among the ring conformers of a rigid molecule.

    ``xyz`` is the GFN2-xTB-relaxed embedding of ``smiles`` (atoms in the order of
    ``Chem.AddHs`` of the canonical molecule). The conformer ensemble of
    :func:`sim_backends.csp.conformers.build_ensemble` (30 ETKDG embeddings, each relaxed with
    GFN2-xTB, no charges) gives the lowest conformer; it is returned when it lies more than
    :data:`RING_CONFORMER_MARGIN_KJMOL` below ``xyz`` (another ring conformer: 1,4-cyclohexanedione's
    twist-boat is 5.8 kJ/mol below its chair at GFN2-xTB), else ``xyz`` itself, so a molecule
    with one ring conformer keeps its geometry exactly.
    """
    from sim_backends.csp.conformers import build_ensemble
    from sim_backends.csp.intramolecular import IntramolecularModel

    try:
        ens = build_ensemble(smiles, charges="none", seed=seed, max_rotatable_bonds=0)
        e_here = IntramolecularModel(symbols).total_energy_and_grad(xyz)[0]
    except (SetupError, RuntimeError):
        return xyz
    if tuple(ens.symbols) != tuple(symbols) or e_here - ens.reference_energy_kjmol <= RING_CONFORMER_MARGIN_KJMOL:
        return xyz
    return np.array(ens.conformers[0].molecule.coords_A, dtype=float)


def count_rotatable_bonds(mol) -> int:
    """Bonds of an RDKit molecule that break the rigidity rule of the module docstring."""
    from rdkit import Chem

    n = 0
    for a, b in mol.GetSubstructMatches(Chem.MolFromSmarts(_ROTATABLE_SMARTS)):
        bond = mol.GetBondBetweenAtoms(a, b)
        biaryl = mol.GetAtomWithIdx(a).GetIsAromatic() and mol.GetAtomWithIdx(b).GetIsAromatic()
        if bond.GetIsConjugated() and not biaryl:
            continue
        n += 1
    return n


def _w99_types(symbols: Sequence[str], coords_A: np.ndarray) -> tuple[str, ...]:
    """:func:`~sim_backends.csp.forcefield.assign_w99_types`, an untypable atom a one-line SetupError."""
    try:
        return assign_w99_types(symbols, coords_A)
    except ValueError as exc:
        raise SetupError(str(exc)) from None


def principal_frame(symbols: Sequence[str], coords_A: np.ndarray) -> np.ndarray:
    """Coordinates moved to the centre of mass and rotated onto the principal axes.

    Axes are ordered by ascending moment of inertia; each axis sign is fixed so that the
    third moment sum_a m_a x_a^3 (or, if ~0, the first clearly non-zero coordinate) is
    positive, and the z axis is then chosen to make the frame right-handed. For symmetric
    tops (two equal moments, e.g. benzene) the axes within the degenerate plane are whatever
    the eigensolver returns: deterministic for a given input, not for a rotated copy of it.

    Args:
        symbols: element symbols (n_atoms).
        coords_A: (n_atoms, 3), Angstrom.

    Returns:
        (n_atoms, 3) body-frame coordinates, Angstrom.
    """
    xyz = np.asarray(coords_A, dtype=float)
    mass = np.array([ATOMIC_MASSES_AMU[s] for s in symbols])
    centred = xyz - (mass[:, None] * xyz).sum(axis=0) / mass.sum()
    inertia = np.einsum("a,ab,ac->bc", mass, centred, centred)
    inertia = np.trace(inertia) * np.eye(3) - inertia
    _, axes = np.linalg.eigh(inertia)  # columns, ascending moments
    body = centred @ axes
    for k in range(2):
        third = float((mass * body[:, k] ** 3).sum())
        if abs(third) < 1e-6:
            big = np.nonzero(np.abs(body[:, k]) > 1e-3)[0]
            third = float(body[big[0], k]) if len(big) else 1.0
        if third < 0:
            axes[:, k] *= -1.0
    if np.linalg.det(axes) < 0:
        axes[:, 2] *= -1.0
    return centred @ axes


@dataclass(frozen=True, eq=False)  # arrays inside: identity equality and hash
class RigidMolecule:
    """A rigid molecule with point charges and W99 types, in its principal-axes frame.

    Attributes:
        smiles: canonical SMILES ("" if unknown).
        symbols: element symbols (n_atoms).
        coords_A: (n_atoms, 3) body-frame coordinates, Angstrom.
        charges_e: (n_atoms,) atomic point charges, e; sum 0.
        ff_types: W99 atom types (keys of ``forcefield.W99_PARAMS``).
        mass_amu: molecular mass, amu.
        charge_method: how the charges were obtained ("resp-pyscf HF/6-31G*", "xtb-gfn2-mulliken",
            "given", "none").
        esp_rrms: relative RMS error of the ESP fit (nan when not fitted).
    """

    smiles: str
    symbols: tuple[str, ...]
    coords_A: np.ndarray = field(repr=False)
    charges_e: np.ndarray = field(repr=False)
    ff_types: tuple[str, ...]
    mass_amu: float
    charge_method: str
    esp_rrms: float = float("nan")

    @property
    def n_atoms(self) -> int:
        return len(self.symbols)

    @property
    def formula(self) -> str:
        """Hill formula, e.g. ``C10H8``."""
        counts = {s: self.symbols.count(s) for s in sorted(set(self.symbols))}
        order = (["C", "H"] if "C" in counts else []) + sorted(k for k in counts if k not in ("C", "H") or "C" not in counts)
        return "".join(f"{k}{counts[k] if counts[k] > 1 else ''}" for k in order)

    @classmethod
    def from_smiles(
        cls, smiles: str, charges: str = "resp", cache_dir: str | Path | None = None, seed: int = 0,
        geometry: str = "gfn2",
    ) -> RigidMolecule:
        """Build from SMILES: RDKit ETKDG + MMFF94 conformer (GFN2-xTB relaxed), charges by ``charges``.

        Args:
            smiles: one neutral molecule of H, C, N, O, F, S, Cl that is rigid (module doc).
            charges: "resp" (pyscf HF/6-31G* ESP fit, cached), "xtb" (GFN2-xTB Mulliken) or
                "none" (all zero; for tests of the repulsion-dispersion part only).
            cache_dir: charge cache directory (default ``~/.cache/crystal-agent/charges``).
            seed: random seed of the conformer embedding.
            geometry: "gfn2" (default: the MMFF94 conformer relaxed with GFN2-xTB to
                0.01 eV/A) or "mmff" (the force-field conformer as it is).

        Raises:
            SetupError: invalid SMILES, several fragments, net or formal charges, radicals,
                unsupported elements, rotatable bonds, a failed embedding or a GFN2-xTB
                relaxation that does not converge.
        """
        if geometry not in ("gfn2", "mmff"):
            raise SetupError(f"geometry must be 'gfn2' or 'mmff', not {geometry!r}")
        from rdkit import Chem
        from rdkit.Chem import AllChem

        from sim_backends.molecule import validate_smiles

        canonical = validate_smiles(smiles)
        mol = Chem.MolFromSmiles(canonical)  # canonical atom order: same conformer, same cache entry
        n_rot = count_rotatable_bonds(mol)
        if n_rot:
            raise SetupError(f"{canonical}: {n_rot} rotatable bond(s); rigid-molecule CSP needs none "
                             "(flexible CSP: run_csp(flexible='auto'), crystal-agent csp --flexible auto)")
        molh = Chem.AddHs(mol)
        params = AllChem.ETKDGv3()
        params.randomSeed = int(seed)
        if AllChem.EmbedMolecule(molh, params) != 0:
            raise SetupError(f"{canonical}: RDKit could not embed a 3D conformer")
        if AllChem.MMFFHasAllMoleculeParams(molh):
            AllChem.MMFFOptimizeMolecule(molh, maxIters=2000)
        else:
            AllChem.UFFOptimizeMolecule(molh, maxIters=2000)
        symbols = tuple(a.GetSymbol() for a in molh.GetAtoms())
        xyz = molh.GetConformer().GetPositions()
        if geometry == "gfn2":
            xyz = gfn2_relaxed_geometry(symbols, xyz, what=canonical)
            if has_ring_conformers(mol):
                xyz = lowest_ring_conformer(canonical, symbols, xyz, seed)
        coords = principal_frame(symbols, xyz)
        types = _w99_types(symbols, coords)  # before the charges: an untypable atom costs no ESP fit
        classes = list(Chem.CanonicalRankAtoms(molh, breakTies=False))
        if charges == "none":
            q, method, rrms = np.zeros(len(symbols)), "none", float("nan")
        else:
            fit = compute_charges(symbols, coords, charges, classes, cache_dir, cache_key=canonical)
            q, method, rrms = fit.charges_e, fit.method, fit.rrms
        return cls._build(canonical, symbols, coords, q, method, rrms, types)

    @classmethod
    def from_atoms(
        cls,
        symbols: Sequence[str],
        coords_A: np.ndarray,
        smiles: str = "",
        charges_e: np.ndarray | None = None,
        charge_method: str = "given",
    ) -> RigidMolecule:
        """Build from given atoms, e.g. a molecule cut from an X23 crystal.

        Args:
            symbols: element symbols (n_atoms).
            coords_A: (n_atoms, 3) any frame, Angstrom; moved to the principal-axes frame.
            smiles: optional SMILES, stored as given.
            charges_e: (n_atoms,) charges; None gives zero charges (``charge_method="none"``).
                Use :func:`sim_backends.csp.charges.compute_charges` with
                :func:`symmetry_classes` for ESP charges of such a molecule.
            charge_method: label stored with the charges.

        Raises:
            SetupError: bad shapes, unsupported elements, more than one connected molecule,
                or charges that do not sum to ~0.
        """
        symbols = tuple(str(s) for s in symbols)
        xyz = np.asarray(coords_A, dtype=float)
        if xyz.shape != (len(symbols), 3) or not len(symbols):
            raise SetupError(f"coords_A must have shape ({len(symbols)}, 3), got {xyz.shape}")
        if not set(symbols) <= SUPPORTED_ELEMENTS:
            raise SetupError(f"unsupported element(s) {sorted(set(symbols) - SUPPORTED_ELEMENTS)}")
        if len(connected_components(bond_graph(symbols, xyz))) != 1:
            raise SetupError("the atoms do not form one connected molecule")
        if charges_e is None:
            q, charge_method = np.zeros(len(symbols)), "none"
        else:
            q = np.asarray(charges_e, dtype=float)
            if q.shape != (len(symbols),):
                raise SetupError(f"charges_e must have shape ({len(symbols)},), got {q.shape}")
            if abs(q.sum()) > 1e-3:
                raise SetupError(f"charges sum to {q.sum():.4f} e; a neutral molecule needs 0")
            q = q - q.sum() / len(q)
        return cls._build(smiles, symbols, principal_frame(symbols, xyz), q, charge_method, float("nan"))

    @classmethod
    def _build(cls, smiles, symbols, coords, charges, method, rrms, types=None) -> RigidMolecule:
        types = _w99_types(symbols, coords) if types is None else types
        mass = float(sum(ATOMIC_MASSES_AMU[s] for s in symbols))
        coords = np.ascontiguousarray(coords)
        charges = np.ascontiguousarray(charges, dtype=float)
        coords.setflags(write=False)
        charges.setflags(write=False)
        return cls(smiles, tuple(symbols), coords, charges, types, mass, method, rrms)

    def with_charges(self, charges_e: np.ndarray, charge_method: str, esp_rrms: float = float("nan")) -> RigidMolecule:
        """A copy with other charges (same geometry and types)."""
        q = np.ascontiguousarray(charges_e, dtype=float)
        q.setflags(write=False)
        return RigidMolecule(
            self.smiles, self.symbols, self.coords_A, q, self.ff_types, self.mass_amu, charge_method, esp_rrms
        )


def gfn2_relaxed_geometry(symbols: Sequence[str], coords_A: np.ndarray, what: str = "molecule",
                          fmax_eVA: float = 0.01, max_steps: int = 500) -> np.ndarray:
    """Coordinates (n, 3) in A of the isolated molecule relaxed with GFN2-xTB (tblite, ASE BFGS).

    Raises:
        SetupError: the relaxation did not converge to ``fmax_eVA`` in ``max_steps``
            or xTB failed (one line).
    """
    from ase import Atoms

    from sim_backends.base import RunError
    from sim_backends.xtb_crystal import relax_atoms, xtb_calculator

    try:
        relaxed, info = relax_atoms(Atoms(list(symbols), positions=np.asarray(coords_A, float)),
                                    xtb_calculator(), "positions", fmax_eVA, max_steps)
    except RunError as exc:
        raise SetupError(f"{what}: GFN2-xTB geometry relaxation failed: {exc}") from None
    if not info["converged"]:
        raise SetupError(f"{what}: GFN2-xTB geometry relaxation not converged in {info['n_steps']} "
                         f"steps (max force {info['fmax_eVA']:.3f} eV/A)")
    return relaxed.get_positions()


def connected_components(neighbours: list[list[int]]) -> list[list[int]]:
    """Connected components (sorted atom indices) of a neighbour-list graph."""
    seen: set[int] = set()
    comps = []
    for start in range(len(neighbours)):
        if start in seen:
            continue
        stack, comp = [start], []
        seen.add(start)
        while stack:
            i = stack.pop()
            comp.append(i)
            for j in neighbours[i]:
                if j not in seen:
                    seen.add(j)
                    stack.append(j)
        comps.append(sorted(comp))
    return comps


def symmetry_classes(symbols: Sequence[str], coords_A: np.ndarray) -> list[int]:
    """Topological equivalence classes of atoms from the distance-perceived bond graph.

    Uses RDKit canonical ranks without tie breaking on a single-bond graph, so atoms that are
    equivalent by graph symmetry share a label (used to symmetrise charges).

    Args:
        symbols: element symbols (n_atoms).
        coords_A: (n_atoms, 3), Angstrom.

    Returns:
        One integer label per atom.
    """
    from rdkit import Chem

    rw = Chem.RWMol()
    for s in symbols:
        atom = Chem.Atom(s)
        atom.SetNoImplicit(True)
        rw.AddAtom(atom)
    for i, nbrs in enumerate(bond_graph(symbols, coords_A)):
        for j in nbrs:
            if j > i:
                rw.AddBond(i, j, Chem.BondType.SINGLE)
    mol = rw.GetMol()
    mol.UpdatePropertyCache(strict=False)
    return list(Chem.CanonicalRankAtoms(mol, breakTies=False))


def split_molecules(
    symbols: Sequence[str], positions_A: np.ndarray, cell_A: np.ndarray
) -> list[tuple[list[int], np.ndarray]]:
    """Split a periodic molecular crystal into whole molecules.

    Bonds are perceived with covalent radii between each atom and the nearest periodic image
    of every other atom (27 neighbouring cells searched, so skewed cells are safe); each
    molecule is then unwrapped by walking its bond graph.

    Args:
        symbols: element symbols (n_atoms) of the cell.
        positions_A: (n_atoms, 3) Cartesian positions, Angstrom.
        cell_A: (3, 3) lattice vectors as rows, Angstrom.

    Returns:
        For each molecule, its atom indices (in the cell) and (n_mol_atoms, 3) unwrapped
        Cartesian coordinates, Angstrom, ordered by the smallest atom index.
    """
    from sim_backends.csp.forcefield import BOND_TOLERANCE_A, COVALENT_RADII_A

    pos = np.asarray(positions_A, dtype=float)
    cell = np.asarray(cell_A, dtype=float)
    shifts = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], dtype=float)
    frac = pos @ np.linalg.inv(cell)
    frac_delta = frac[None, :, :] - frac[:, None, :]
    frac_delta -= np.round(frac_delta)
    cart = (frac_delta[:, :, None, :] + shifts[None, None]) @ cell  # (n, n, 27, 3)
    dist = np.linalg.norm(cart, axis=-1)
    best = dist.argmin(axis=2)
    vec = np.take_along_axis(cart, best[:, :, None, None], axis=2)[:, :, 0, :]  # j - i, nearest image
    radii = np.array([COVALENT_RADII_A[s] for s in symbols])
    bonded = np.linalg.norm(vec, axis=-1) < radii[:, None] + radii[None] + BOND_TOLERANCE_A
    np.fill_diagonal(bonded, False)
    neighbours = [np.nonzero(row)[0].tolist() for row in bonded]
    result = []
    for comp in connected_components(neighbours):
        placed = {comp[0]: pos[comp[0]]}
        stack = [comp[0]]
        while stack:
            i = stack.pop()
            for j in neighbours[i]:
                if j not in placed:
                    placed[j] = placed[i] + vec[i, j]
                    stack.append(j)
        result.append((comp, np.array([placed[i] for i in comp])))
    return result


def fit_rigid_pose(
    molecule: RigidMolecule, symbols: Sequence[str], coords_A: np.ndarray, allow_mirror: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Best rigid placement of ``molecule`` onto given atoms, with atom matching.

    Both sets are brought into their principal-axes frames; for each of the four proper
    axis-sign flips the atoms are matched element by element (Hungarian assignment on
    distances) and superposed by the Kabsch algorithm; the lowest RMSD wins. With
    ``allow_mirror`` the four improper flips are tried too, and a mirror-image placement
    (``det R = -1``) is returned only when it fits better than every proper one by more
    than ``MIRROR_MARGIN_A``: a chiral conformer on a site related to the first molecule
    by an inversion centre, mirror or glide plane is the other enantiomer, which no proper
    rotation reproduces (an achiral or planar molecule fits both ways equally and keeps
    the proper rotation).

    Args:
        molecule: the rigid molecule (body frame).
        symbols: element symbols of the target atoms (same composition).
        coords_A: (n_atoms, 3) target coordinates, any order, Angstrom.
        allow_mirror: also consider mirror-image placements.

    Returns:
        perm: (n_atoms,) indices with ``coords_A[perm[a]]`` matched to body atom ``a``;
        rotation: (3, 3) orthogonal R (proper unless a mirror image was needed);
        translation: (3,) t, such that ``molecule.coords_A @ R.T + t`` ~
        ``coords_A[perm]``; rmsd in Angstrom.

    Raises:
        SetupError: the compositions differ.
    """
    from scipy.optimize import linear_sum_assignment

    target = np.asarray(coords_A, dtype=float)
    if sorted(symbols) != sorted(molecule.symbols):
        raise SetupError("fit_rigid_pose: target atoms have a different composition")
    body = np.asarray(molecule.coords_A)
    tgt_body = principal_frame(symbols, target)
    sym_t = np.array(symbols)
    sym_b = np.array(molecule.symbols)
    proper = [np.diag([1, 1, 1]), np.diag([-1, -1, 1]), np.diag([-1, 1, -1]), np.diag([1, -1, -1])]
    best: dict[bool, tuple] = {}
    for mirror in (False, True) if allow_mirror else (False,):
        for flip in proper:
            trial = tgt_body @ (-flip if mirror else flip)
            perm = np.empty(len(body), dtype=int)
            for el in set(molecule.symbols):
                ib, it = np.nonzero(sym_b == el)[0], np.nonzero(sym_t == el)[0]
                cost = np.linalg.norm(body[ib][:, None] - trial[it][None], axis=-1)
                rows, cols = linear_sum_assignment(cost)
                perm[ib[rows]] = it[cols]
            rot, trans, rmsd = _kabsch(body, target[perm], improper=mirror)
            if mirror not in best or rmsd < best[mirror][3]:
                best[mirror] = (perm, rot, trans, rmsd)
    if True in best and best[True][3] < best[False][3] - MIRROR_MARGIN_A:
        return best[True]
    return best[False]


def _kabsch(body: np.ndarray, target: np.ndarray, improper: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """Proper (``improper``: det -1) R and translation t minimising |body R^T + t - target|
    (equal weights): :func:`sim_backends.scf_guess.orthogonal_fit` with the translation."""
    from sim_backends.scf_guess import orthogonal_fit

    rot, rmsd = orthogonal_fit(body, target, det=-1 if improper else 1)
    trans = target.mean(axis=0) - body.mean(axis=0) @ rot.T
    return rot, trans, rmsd
