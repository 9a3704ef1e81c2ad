"""Intramolecular energy and torsional degrees of freedom of a flexible molecule.

Contracts:

* :class:`IntramolecularModel` is the isolated molecule at GFN2-xTB (tblite, charge 0,
  300 K electronic temperature): ``energy_and_grad(coords)`` returns the energy in kJ/mol
  relative to a given reference energy (the gas-phase global-minimum conformer of the
  ensemble, at the same level) and its Cartesian gradient in kJ/mol/A. The same level ranks
  the conformer ensemble (:mod:`sim_backends.csp.conformers`), so the intramolecular term of
  a rigid conformer and of a torsion-relaxed molecule are on one scale: at the conformer's
  own geometry it is exactly the conformer's ensemble energy.
* :class:`TorsionSet` names the flexible torsions of a molecule: every acyclic single bond
  between two atoms that each have another heavy-atom neighbour, not in a triple bond and
  not an amide C(=O)-N bond, conjugated or not (so the N-aryl bond of paracetamol and the
  C-C(OOH) bonds of succinic acid are torsions; terminal rotors such as -OH, -CH3 are not:
  their rotamers are separate conformers of the ensemble). Each torsion is measured on four
  atoms a-b-c-d (a, d: the highest-ranked heavy neighbours) and moves the side of c (the
  side not holding the molecule's root atom, atom 0 of b's side). ``period_deg`` is 180 when
  the moving end is two-fold symmetric (e.g. a phenyl ring), else 360.
* :meth:`TorsionSet.set_torsions` sets all torsions to given values with bond lengths and
  angles fixed; :meth:`TorsionSet.torsion_jacobian` gives d coords / d phi_k =
  u_k x (r_n - p_k) for the atoms n on the moving side of k (u_k the unit axis b->c, p_k
  on the axis), so dE/dphi_k = sum_n g_n . (u_k x (r_n - p_k)) (radians).

Importing this module is cheap; tblite and rdkit are imported inside functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

#: level of theory of the intramolecular energies
INTRA_LEVEL = "GFN2-xTB (tblite), isolated molecule"
#: Hartree -> kJ/mol (CODATA 2018)
HARTREE_KJMOL = 2625.4996394799
#: Bohr in Angstrom (CODATA 2018)
BOHR_A = 0.529177210903
_Z = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9, "S": 16, "Cl": 17}


class IntramolecularModel:
    """GFN2-xTB energy of the isolated molecule relative to ``reference_kjmol``.

    Args:
        symbols: element symbols (n_atoms).
        reference_kjmol: energy subtracted (kJ/mol, total GFN2-xTB energy of the reference).

    One tblite calculator is kept and updated with new positions (about 14 ms of CPU per
    energy and gradient for paracetamol, 20 atoms).
    """

    def __init__(self, symbols: Sequence[str], reference_kjmol: float = 0.0) -> None:
        self.symbols = tuple(symbols)
        self.numbers = np.array([_Z[s] for s in self.symbols])
        self.reference_kjmol = float(reference_kjmol)
        self._calc: Any = None
        self.n_evals = 0

    def total_energy_and_grad(self, coords_A: np.ndarray) -> tuple[float, np.ndarray]:
        """Total GFN2-xTB energy (kJ/mol) and gradient (n, 3) kJ/mol/A at ``coords_A``.

        Raises:
            RuntimeError: the SCF failed (one line).
        """
        from tblite.interface import Calculator

        pos = np.asarray(coords_A, dtype=float) / BOHR_A
        try:
            if self._calc is None:
                self._calc = Calculator("GFN2-xTB", self.numbers, pos)
                self._calc.set("verbosity", 0)
            else:
                self._calc.update(pos)
            res = self._calc.singlepoint()
        except Exception as exc:  # noqa: BLE001 - tblite raises its own error types
            self._calc = None
            raise RuntimeError(f"GFN2-xTB single point failed: {exc}".splitlines()[0]) from None
        self.n_evals += 1
        return (float(res.get("energy")) * HARTREE_KJMOL,
                np.asarray(res.get("gradient")) * HARTREE_KJMOL / BOHR_A)

    def energy_and_grad(self, coords_A: np.ndarray) -> tuple[float, np.ndarray]:
        """Energy relative to the reference (kJ/mol) and its gradient (kJ/mol/A)."""
        e, g = self.total_energy_and_grad(coords_A)
        return e - self.reference_kjmol, g


@dataclass(frozen=True)
class TorsionSet:
    """The flexible torsions of one molecule (see the module docstring).

    Attributes:
        atoms: (k, 4) atom indices a, b, c, d per torsion.
        moving: per torsion, the sorted atom indices on c's side (c and d included).
        period_deg: per torsion, 360 or 180 (two-fold symmetric moving end).
    """

    atoms: tuple[tuple[int, int, int, int], ...]
    moving: tuple[tuple[int, ...], ...]
    period_deg: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.atoms)

    @classmethod
    def from_mol(cls, molh: Any) -> TorsionSet:
        """Torsions of an RDKit molecule with explicit hydrogens (atom order kept)."""
        from rdkit import Chem

        ranks = list(Chem.CanonicalRankAtoms(molh, breakTies=False))
        heavy_nbrs = [[n.GetIdx() for n in a.GetNeighbors() if n.GetAtomicNum() > 1] for a in molh.GetAtoms()]
        amide = Chem.MolFromSmarts("[CX3](=[O,S,N])-!@[#7]")
        amide_bonds = {frozenset((m[0], m[2])) for m in molh.GetSubstructMatches(amide)}
        atoms, moving, periods = [], [], []
        for bond in molh.GetBonds():
            if bond.GetBondType() != Chem.BondType.SINGLE or bond.IsInRing():
                continue
            b, c = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
            if frozenset((b, c)) in amide_bonds:
                continue
            ob = [n for n in heavy_nbrs[b] if n != c]
            oc = [n for n in heavy_nbrs[c] if n != b]
            if not ob or not oc:
                continue
            if any(x.GetBondType() == Chem.BondType.TRIPLE for i in (b, c)
                   for x in molh.GetAtomWithIdx(i).GetBonds()):
                continue
            side_c = _side(molh, c, b)
            if 0 in side_c:  # move the side without atom 0
                b, c, ob, oc = c, b, oc, ob
                side_c = _side(molh, c, b)
            a = max(ob, key=lambda n: (ranks[n], -n))
            d = max(oc, key=lambda n: (ranks[n], -n))
            two_fold = len(oc) == 2 and ranks[oc[0]] == ranks[oc[1]]
            atoms.append((a, b, c, d))
            moving.append(tuple(sorted(side_c)))
            periods.append(180.0 if two_fold else 360.0)
        return cls(tuple(atoms), tuple(moving), tuple(periods))

    def torsions_deg(self, coords_A: np.ndarray) -> np.ndarray:
        """(k,) torsion angles in degrees, in (-180, 180]."""
        xyz = np.asarray(coords_A, dtype=float)
        return np.array([dihedral_deg(xyz[list(t)]) for t in self.atoms])

    def set_torsions(self, coords_A: np.ndarray, target_deg: np.ndarray) -> np.ndarray:
        """Coordinates with every torsion at ``target_deg`` (bond lengths and angles kept).

        Rotating the moving side of one torsion leaves every other torsion's value unchanged,
        so the torsions are set one after the other.
        """
        xyz = np.array(coords_A, dtype=float)
        for k, (t, side) in enumerate(zip(self.atoms, self.moving)):
            delta = math.radians(float(target_deg[k]) - dihedral_deg(xyz[list(t)]))
            xyz = _rotate_about(xyz, list(side), xyz[t[1]], xyz[t[2]], delta)
        return xyz

    def torsion_jacobian(self, coords_A: np.ndarray) -> np.ndarray:
        """(k, n_atoms, 3) derivative of the coordinates by each torsion angle (per radian)."""
        xyz = np.asarray(coords_A, dtype=float)
        jac = np.zeros((len(self.atoms),) + xyz.shape)
        for k, (t, side) in enumerate(zip(self.atoms, self.moving)):
            axis = xyz[t[2]] - xyz[t[1]]
            axis /= np.linalg.norm(axis)
            idx = list(side)
            jac[k, idx] = np.cross(axis, xyz[idx] - xyz[t[1]])
        return jac

    def canonical_deg(self, torsions_deg: np.ndarray) -> np.ndarray:
        """Torsions reduced by their period, in [-period/2, period/2)."""
        p = np.asarray(self.period_deg)
        return (np.asarray(torsions_deg, dtype=float) + p / 2) % p - p / 2

    def distance_deg(self, t1: np.ndarray, t2: np.ndarray) -> float:
        """Largest torsion difference (deg) of two conformers, modulo each torsion's period and
        allowing the mirror image (all signs flipped) of the second: a molecule and its
        enantiomeric conformer are the same conformer of an achiral molecule."""
        if not len(self.atoms):
            return 0.0
        p = np.asarray(self.period_deg)

        def dist(a, b):
            d = np.abs((np.asarray(a) - np.asarray(b) + p / 2) % p - p / 2)
            return float(d.max())

        return min(dist(t1, t2), dist(t1, -np.asarray(t2)))


def _side(molh: Any, start: int, blocked: int) -> set[int]:
    """Atoms reachable from ``start`` without crossing the atom ``blocked``."""
    seen = {start}
    stack = [start]
    while stack:
        i = stack.pop()
        for n in molh.GetAtomWithIdx(i).GetNeighbors():
            j = n.GetIdx()
            if j != blocked and j not in seen:
                seen.add(j)
                stack.append(j)
    return seen


def dihedral_deg(p: np.ndarray) -> float:
    """Dihedral angle a-b-c-d (degrees, IUPAC sign) of four points (4, 3)."""
    b0, b1, b2 = p[0] - p[1], p[2] - p[1], p[3] - p[2]
    b1n = b1 / np.linalg.norm(b1)
    v = b0 - np.dot(b0, b1n) * b1n
    w = b2 - np.dot(b2, b1n) * b1n
    x = np.dot(v, w)
    y = np.dot(np.cross(b1n, v), w)
    return float(math.degrees(math.atan2(y, x)))


def _rotate_about(xyz: np.ndarray, idx: list[int], p0: np.ndarray, p1: np.ndarray, angle: float) -> np.ndarray:
    """Rotate atoms ``idx`` by ``angle`` (rad, right-handed about p0 -> p1)."""
    axis = (p1 - p0) / np.linalg.norm(p1 - p0)
    kx = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + math.sin(angle) * kx + (1 - math.cos(angle)) * kx @ kx
    out = xyz.copy()
    out[idx] = (xyz[idx] - p1) @ rot.T + p1
    return out
