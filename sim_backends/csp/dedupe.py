"""Duplicate removal and symmetry detection for minimised crystal structures.

Many trials minimise to the same crystal, often in different cells, origins, atom
orders or even different search space groups (a P-1 structure found in P1 with Z=2).
Duplicates are merged in two stages:

1. a pre-filter: two minima can only be the same if their energies differ by less
   than ``energy_tol_kjmol`` and their densities by less than ``density_tol_gcm3``
   (candidates sorted by energy, so each minimum is compared with a short window);
2. pymatgen's ``StructureMatcher`` on the heavy atoms (hydrogens follow the rigid
   molecule; an O, N or S that carries a hydrogen is its own species, so that minima whose
   hydrogens sit on other heavy atoms -- another hydrogen-bond network -- are not merged;
   molecules with fewer than three heavy atoms, whose orientation the heavy
   atoms do not fix, are compared with their hydrogens) with ``ltol=0.2, stol=0.3, angle_tol=5`` degrees, ``primitive_cell=True``,
   ``scale=False`` (same force field, so volumes are compared as they are) and
   ``attempt_supercell=True`` (cells with different Z).

Each candidate is reduced once (heavy atoms, Niggli, primitive cell -- with a numpy shortcut
when no smaller cell exists, :func:`primitive_structure` -- sites sorted by element) and pairs
are compared with :meth:`ReducedMatcher.fit_reduced`, pymatgen's ``fit`` without its per-call
structure copies: the same answers as ``StructureMatcher.fit``, about 2.6x less CPU on a
paracetamol search. Within :func:`fit_memo` a pair already compared is not compared again.

The lowest-energy member of a group represents it; its ``multiplicity`` counts how
many minima (trials) fell into the group, a rough measure of the basin size.

Symmetry is detected after minimisation with spglib (through pymatgen's
``SpacegroupAnalyzer``) at ``symprec=0.1`` A, so a Z'=1 search in a subgroup reports
the full space group of a structure with molecules on special positions.

Importing this module is cheap: pymatgen is imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pymatgen.core import Structure

#: StructureMatcher tolerances used for duplicate removal
MATCHER_KWARGS: dict[str, Any] = {
    "ltol": 0.2, "stol": 0.3, "angle_tol": 5.0, "primitive_cell": True, "scale": False,
    "attempt_supercell": True,
}


def to_structure(symbols: tuple[str, ...] | list[str], cell_A: np.ndarray,
                 coords_A: np.ndarray) -> Structure:
    """A pymatgen Structure from a cell and Cartesian coordinates.

    Args:
        symbols: (n_atoms,) element symbols of one molecule.
        cell_A: (3, 3) lattice vectors as rows, Angstrom.
        coords_A: (Z, n_atoms, 3) Cartesian coordinates (molecules kept whole; sites
            are not wrapped so that the molecules stay intact in the CIF).
    """
    from pymatgen.core import Lattice, Structure

    z = coords_A.shape[0]
    return Structure(Lattice(np.asarray(cell_A)), list(symbols) * z,
                     np.asarray(coords_A).reshape(-1, 3), coords_are_cartesian=True,
                     to_unit_cell=False)


#: fewest heavy atoms per molecule whose positions fix the molecule's orientation; with
#: fewer (water, ammonia, HCl, ...) structures are compared with their hydrogens
MIN_HEAVY_PER_MOLECULE = 3


def keeps_hydrogens(structure: Structure, n_molecules: int | None) -> bool:
    """True when ``structure`` must be compared with its hydrogens: no heavy atom, or
    (``n_molecules`` given) fewer than :data:`MIN_HEAVY_PER_MOLECULE` heavy atoms per
    molecule, whose positions alone would not tell apart crystals that differ only in
    the molecules' orientations."""
    n_heavy = sum(sp.symbol != "H" for sp in structure.species)
    return n_heavy == 0 or (n_molecules is not None and n_heavy < MIN_HEAVY_PER_MOLECULE * n_molecules)


#: pseudo-species (the heavier congener) of an O, N or S that carries a hydrogen (:func:`heavy_atoms` with
#: ``label_protonated``): never elements of a molecule the force field treats
PROTONATED_LABELS = {"O": "Se", "N": "As", "S": "Te"}
#: X-H distance (A) below which a hydrogen is bonded to a heavy atom
XH_BOND_A = 1.25


def protonated_sites(structure: Structure) -> set[int]:
    """Indices of the O, N and S sites of ``structure`` with a hydrogen within :data:`XH_BOND_A`."""
    species = [sp.symbol for sp in structure.species]
    if "H" not in species or not any(e in PROTONATED_LABELS for e in species):
        return set()
    centres, points, _, dists = structure.get_neighbor_list(XH_BOND_A)
    return {int(c) for c, q, d in zip(centres, points, dists)
            if species[int(q)] == "H" and species[int(c)] in PROTONATED_LABELS and d > 0.5}


def heavy_atoms(structure: Structure, n_molecules: int | None = None, keep_h: bool | None = None,
                label_protonated: bool = False) -> Structure:
    """A copy without hydrogens, unless :func:`keeps_hydrogens` (or ``keep_h``) says to keep them
    (built from the heavy sites' arrays: a copy followed by ``remove_species`` cost twice as much).

    ``label_protonated``: an O, N or S that carries a hydrogen becomes :data:`PROTONATED_LABELS`'s
    pseudo-species, so that structures whose heavy atoms agree but whose hydrogens sit on other
    atoms (a carboxylic acid turned so that its C=O and C-OH oxygens swap places: another
    hydrogen-bond network) stay apart.
    """
    from pymatgen.core import Structure

    if keep_h if keep_h is not None else keeps_hydrogens(structure, n_molecules):
        return structure.copy()
    species = [sp.symbol for sp in structure.species]
    keep = [k for k, e in enumerate(species) if e != "H"]
    marked = protonated_sites(structure) if label_protonated else set()
    labels = [PROTONATED_LABELS[species[k]] if k in marked else species[k] for k in keep]
    return Structure(structure.lattice, labels, structure.frac_coords[keep], to_unit_cell=False)


def detect_space_group(structure: Structure, symprec: float = 0.1,
                       angle_tolerance: float = 5.0) -> tuple[str, int]:
    """(Hermann-Mauguin symbol, number) of ``structure`` found by spglib, ("P1", 1) on failure."""
    return detect_symmetry(structure, 1, symprec, angle_tolerance)[:2]


def detect_symmetry(structure: Structure, n_molecules: int, symprec: float = 0.1,
                    angle_tolerance: float = 5.0) -> tuple[str, int, float]:
    """(symbol, number, Z') of a crystal of ``n_molecules`` molecules in its cell.

    Z' = molecules in the cell / symmetry operations of the cell (spglib, centring and other
    pure translations of the cell included): 1 for one molecule in a general position, 2 for
    two independent ones, 0.5 for a molecule on an inversion centre. ("P1", 1, n_molecules)
    on failure.
    """
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        sga = SpacegroupAnalyzer(structure, symprec=symprec, angle_tolerance=angle_tolerance)
        data = sga.get_symmetry_dataset()
        n_ops = len(data["rotations"] if isinstance(data, dict) else data.rotations)
        return sga.get_space_group_symbol(), int(sga.get_space_group_number()), n_molecules / max(n_ops, 1)
    except Exception:  # noqa: BLE001 - spglib failures just mean "no symmetry found"
        return "P1", 1, float(n_molecules)


def format_z_prime(z_prime: float | None) -> str:
    """Z' as people write it: ``1``, ``2``, ``1/2``, ``1/6`` (not ``0.166667``); ``?`` if
    unknown."""
    from fractions import Fraction

    if z_prime is None:
        return "?"
    frac = Fraction(float(z_prime)).limit_denominator(192)
    return str(frac.numerator) if frac.denominator == 1 else f"{frac.numerator}/{frac.denominator}"


@dataclass
class Candidate:
    """A minimum to be deduplicated.

    Attributes:
        energy_kjmol: lattice energy per molecule.
        density_gcm3: density.
        structure: the structure (all atoms).
        payload: anything the caller wants carried along (e.g. search metadata).
        multiplicity: minima merged into this one (1 for a fresh candidate).
    """

    energy_kjmol: float
    density_gcm3: float
    structure: Structure
    payload: dict[str, Any] = field(default_factory=dict)
    multiplicity: int = 1
    _heavy: Any = None
    _reduced: Any = None

    def heavy(self) -> Structure:
        if self._heavy is None:
            self._heavy = heavy_atoms(self.structure, self.payload.get("z"), label_protonated=True)
        return self._heavy

    def reduced(self, primitive_cell: bool = True) -> Structure:
        """Heavy atoms, Niggli-reduced then primitive, sites sorted by element: what
        StructureMatcher compares.

        Computed once per candidate. StructureMatcher would redo it for every ``fit``
        behind an LRU cache whose hit test compares whole structures site by site
        (O(sites^2) numpy ``allclose`` calls): on a 10,000-trial oxalic acid CSP that was
        ~70 % of the dedupe time. Sorting the sites changes no match (the matcher pairs
        sites by assignment) but lets it build its species mask from one block per element
        instead of one per run of equal neighbours in the molecule's atom order.
        """
        if self._reduced is None:
            red = self.heavy().get_reduced_structure(reduction_algo="niggli")
            red = primitive_structure(red) if primitive_cell else red
            self._reduced = red.get_sorted_structure()
        return self._reduced


#: site tolerance (A) of pymatgen's ``get_primitive_structure`` (its default, as StructureMatcher uses)
PRIMITIVE_TOL_A = 0.25


def primitive_structure(structure: Structure, tolerance: float = PRIMITIVE_TOL_A) -> Structure:
    """``structure.get_primitive_structure(tolerance)``, answered without it when no cell can be
    smaller.

    pymatgen first keeps the translations between sites of the least frequent element that map
    every site onto a site of the same element (per axis within twice ``tolerance``); only when
    one besides zero survives can a smaller cell exist, otherwise it returns the structure
    unchanged. The same test is made here with numpy, with a 1.5x looser tolerance (so it keeps
    every translation pymatgen keeps); most CSP minima have none, and pymatgen's search
    (a k-d tree per site) was the largest cost of the dedupe after the matcher itself."""
    species = [sp.symbol for sp in structure.species]
    frac = np.asarray(structure.frac_coords, float)
    groups = {e: frac[[k for k, x in enumerate(species) if x == e]] for e in sorted(set(species))}
    ftol = 1.5 * 2.0 * tolerance / np.asarray(structure.lattice.abc)
    least = min(groups.values(), key=len)
    vecs = least[1:] - least[0]
    for g in groups.values():
        if not len(vecs):
            break
        d = g[None, :, None, :] + vecs[:, None, None, :] - g[None, None, :, :]
        d = np.abs(d - np.round(d))
        hit = np.all(d < ftol, axis=-1).any(axis=-1).all(axis=-1)
        vecs = vecs[hit]
    if not len(vecs):
        return structure
    return structure.get_primitive_structure(tolerance=tolerance)


def dedupe(
    candidates: list[Candidate],
    energy_tol_kjmol: float = 1.0,
    density_tol_gcm3: float = 0.03,
    matcher_kwargs: dict[str, Any] | None = None,
) -> list[Candidate]:
    """Merge duplicate minima (see the module docstring).

    Args:
        candidates: minima in any order (their ``multiplicity`` is added up).
        energy_tol_kjmol: largest energy difference of two copies of one minimum.
        density_tol_gcm3: largest density difference of two copies.
        matcher_kwargs: overrides of :data:`MATCHER_KWARGS`.

    Returns:
        The unique minima sorted by energy, each the lowest-energy member of its group.
    """
    kwargs = {**MATCHER_KWARGS, **(matcher_kwargs or {})}
    matcher = _matcher(kwargs)
    kept: list[Candidate] = []
    for cand in sorted(candidates, key=lambda c: c.energy_kjmol):
        if merge_candidate(kept, cand, energy_tol_kjmol, density_tol_gcm3, kwargs, matcher,
                           kept_sorted=True) is None:
            kept.append(cand)
    return kept


_REDUCED_MATCHER: Any = None


def _matcher(kwargs: dict[str, Any]) -> Any:
    """A :class:`ReducedMatcher` (pymatgen StructureMatcher with ``fit_reduced``) with ``kwargs``."""
    global _REDUCED_MATCHER
    if _REDUCED_MATCHER is None:
        from pymatgen.analysis.structure_matcher import StructureMatcher

        class ReducedMatcher(StructureMatcher):
            """StructureMatcher with :meth:`fit_reduced`: ``fit(s1, s2, skip_structure_reduction=True)``
            for structures that are already reduced (:meth:`Candidate.reduced`), without the four
            Structure copies ``fit`` makes per call (needed there only to rescale volumes, which
            ``scale=False`` never does, and to drop ignored species, of which there are none) and
            with the species mask and composition hash computed once per structure pair type.
            Same answers as ``fit`` (tests/sim_backends/csp/test_flexible_dedupe.py)."""

            def __init__(self, **kw: Any) -> None:
                super().__init__(**kw)
                self._species_keys: dict[int, tuple[Any, tuple[str, ...], Any]] = {}
                self._masks: dict[tuple, tuple] = {}
                self._in_fast_fit = False

            def _key(self, st: Any) -> tuple[str, ...]:
                # held with the structure, so the id is not reused while the entry lives
                hit = self._species_keys.get(id(st))
                if hit is None or hit[0] is not st:
                    hit = (st, tuple(str(sp) for sp in st.species),
                           self._comparator.get_hash(st.composition))
                    self._species_keys[id(st)] = hit
                return hit

            def fit_reduced(self, s1: Any, s2: Any) -> bool:
                if self._scale or self._ignored_species or self._subset:
                    return self.fit(s1, s2, skip_structure_reduction=True)
                if self._key(s1)[2] != self._key(s2)[2]:
                    return False
                fu, s1_supercell = self._get_supercell_size(s1, s2) if self._supercell else (1, True)
                self._in_fast_fit = True
                try:
                    match = self._match(s1, s2, fu, s1_supercell, break_on_match=True)
                finally:
                    self._in_fast_fit = False
                return match is not None and match[0] <= self.stol

            def _get_mask(self, struct1: Any, struct2: Any, fu: int, s1_supercell: bool) -> Any:
                if not self._in_fast_fit:
                    return super()._get_mask(struct1, struct2, fu, s1_supercell)
                key = (self._key(struct1)[1], self._key(struct2)[1], fu, s1_supercell)
                hit = self._masks.get(key)
                if hit is None:
                    hit = self._masks[key] = super()._get_mask(struct1, struct2, fu, s1_supercell)
                mask, inds, idx = hit
                return mask.copy(), inds.copy(), idx

        _REDUCED_MATCHER = ReducedMatcher
    return _REDUCED_MATCHER(**kwargs)


#: StructureMatcher results of the active :func:`fit_memo` context (None outside one)
_FIT_MEMO: ContextVar[dict[tuple[Any, Any, Any], bool] | None] = ContextVar("fit_memo", default=None)


@contextmanager
def fit_memo() -> Iterator[dict[tuple[Any, Any, Any], bool]]:
    """Within this context :func:`merge_candidate` remembers each StructureMatcher result for
    the ordered pair of candidates' ``payload["key"]`` (a caller-chosen identifier of one minimum
    and its structure, e.g. (search, unit, index) in :func:`~sim_backends.csp.run.run_csp`; a
    representative that takes over a lower candidate takes over its payload, so the key follows
    the structure; with the matcher settings), and asks the matcher again only for pairs it has
    not seen. Candidates
    without a key are always compared. CSP compares the same pairs twice -- the sampling
    tracker per round, then the landscape dedupe -- and the second time is answered here."""
    memo: dict[tuple[Any, Any, Any], bool] = {}
    token = _FIT_MEMO.set(memo)
    try:
        yield memo
    finally:
        _FIT_MEMO.reset(token)


def merge_candidate(kept: list[Candidate], cand: Candidate, energy_tol_kjmol: float = 1.0,
                    density_tol_gcm3: float = 0.03, matcher_kwargs: dict[str, Any] | None = None,
                    matcher: Any = None, kept_sorted: bool = False) -> Candidate | None:
    """Merge ``cand`` into the duplicate of it among ``kept`` (the :func:`dedupe` test).

    The duplicate's ``multiplicity`` grows by ``cand.multiplicity``; when ``cand`` is
    lower in energy it becomes the representative (energy, density, structure and
    payload taken over). ``kept`` is not changed when there is no duplicate.
    ``kept_sorted``: ``kept`` is in ascending energy and ``cand`` is not below any of it
    (as in :func:`dedupe`), so the scan stops at the first member too far below.

    Returns:
        The matched member of ``kept``, or None (the caller appends ``cand`` if it wants).
    """
    kwargs = {**MATCHER_KWARGS, **(matcher_kwargs or {})}
    matcher = matcher or _matcher(kwargs)
    primitive = bool(kwargs.get("primitive_cell", True))
    memo = _FIT_MEMO.get()
    c_key = cand.payload.get("key") if memo is not None else None
    settings = tuple(sorted(kwargs.items())) if c_key is not None else None
    for rep in reversed(kept):
        if abs(cand.energy_kjmol - rep.energy_kjmol) > energy_tol_kjmol:
            if kept_sorted:
                break
            continue
        if abs(cand.density_gcm3 - rep.density_gcm3) > density_tol_gcm3:
            continue
        r_key = rep.payload.get("key") if c_key is not None else None
        pair = (r_key, c_key, settings) if r_key is not None else None
        same = memo.get(pair) if pair is not None else None
        if same is None:
            # same reduction as fit() does internally (Niggli, then primitive), done once
            same = matcher.fit_reduced(rep.reduced(primitive), cand.reduced(primitive))
            if pair is not None:
                memo[pair] = same
        if same:
            rep.multiplicity += cand.multiplicity
            if cand.energy_kjmol < rep.energy_kjmol:
                rep.energy_kjmol, rep.density_gcm3, rep.structure = (cand.energy_kjmol, cand.density_gcm3,
                                                                      cand.structure)
                rep.payload, rep._heavy, rep._reduced = cand.payload, cand._heavy, cand._reduced
            return rep
    return None
