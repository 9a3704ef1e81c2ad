"""The cheap, exactly computable parts of the fragment DFT lattice energy, and dimer descriptors.

The ``dft-crystal`` level (:mod:`sim_backends.dft_crystal`) is

    E = (1/Z) sum_{dimers d within the cutoff} (1/2) m_d E_int^DFT(d) + E_D3,latt + E_lr,
    E_lr = E_pc,total - (1/Z) sum_d (1/2) m_d E_pc(d),

with E_pc the RESP point-charge Coulomb energy (Ewald sum for the whole crystal, direct sum
for a dimer). Rearranged:

    E = [E_D3,latt + E_pc,total] + sum_d w_d delta(d),   w_d = m_d / (2 Z),
    delta(d) = E_int^DFT(d) - E_pc(d).

The bracket costs seconds per structure (D3 over the periodic cell, one Ewald sum), so it can
be computed for *every* structure of a landscape. Only ``delta`` needs DFT, and it is a
short-ranged quantity of one dimer: exchange repulsion, charge penetration, polarisation and
charge transfer, i.e. what point charges get wrong at contact. It is a smooth function of the
dimer geometry, while the structure-level correction (DFT minus force field) is not: which
dimers fall inside the contact cutoff changes discontinuously between structures, and the
two-body and long-range parts then move by +-12 kJ/mol in opposite directions (formamide
landscape, std of each). A surrogate that learns ``delta`` per dimer (from the dimer records
every DFT evaluation returns; ~5 symmetry-unique dimers per structure) and sums it with the
weights ``w_d`` predicts the whole landscape from far fewer structures
(:mod:`agent.surrogates.fragment_gp`).

Dimer descriptor: for each element pair (A, B) of the molecule and decay length lambda in
:data:`DECAYS_A`, s = sum over intermolecular atom pairs of that type of exp(-r / lambda),
stored as log(1 + 1000 s) (the sums span orders of magnitude). Permutation-invariant,
continuous, and dominated by the closest contacts, as the short-range terms are. With
``descriptor="polar-h"`` the atoms are typed as a force field types them for hydrogen bonds:
an H whose nearest atom in its molecule is N or O is "Hp" (the donor H), other H stay "H",
so that O-H...O and C-H...O contacts get separate sums (:func:`site_types`);
``"element"`` (:data:`DEFAULT_DESCRIPTOR`) types by element only. Screening options (off by
default; ``benchmarks/results/NOTES.md``) append terms to the element sums, ``"element+<term>"``
(:data:`DESCRIPTOR_TERMS`), each stored as log(1 + 1000 s) like the sums:

- ``hbond``: one column, s = sum over donor H (an H whose nearest atom in its molecule is N or
  O) of either molecule and N/O atoms Y of the other of exp(-r_HY / 0.25 A) ((1 - cos t) / 2)^2,
  t the X-H...Y angle at H (1 for a linear hydrogen bond, 0 when Y sits behind X-H);
- ``r6``: per element pair, s = sum (3 A / r)^6 (a dispersion-like, longer-ranged sum);
- ``2A``: a fourth decay length, 2.0 A, per element pair.

Dimer baselines: cheap physical estimates of the same dimer quantity, computed for every dimer
of the landscape and given to the surrogate as extra inputs (:data:`DEFAULT_BASELINES`):

- ``gfn2-xtb``: E_int^GFN2-xTB(d) - E_pc(d), the tight-binding counterpart of delta (its
  exchange repulsion, penetration, polarisation and charge transfer; GFN2 includes its own D4
  dispersion, which DFT's E_int here does not). About 0.02 s per dimer of a small molecule.
  Correlation with delta over the 1,050 dimers of ``formic_acid_big_dft``: r = 0.99.
- ``gfn1-xtb``: the same with GFN1-xTB, whose errors are partly independent of GFN2's.
- ``d3``: the D3(BJ) dispersion of the dimer for the DFT functional, so that the model can take
  xTB's dispersion back out.

A dimer whose xTB SCF fails gets NaN in that column (the model uses the column mean there).

Everything heavy (dftd3, tblite, pymatgen, pyscf for the RESP charges) is imported inside functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sim_backends.base import SetupError

if TYPE_CHECKING:
    import numpy as np

    from sim_backends.structures import Crystal

#: decay lengths (A) of the exponential contact sums of the dimer descriptor
DECAYS_A = (0.25, 0.5, 1.0)
#: dimer baselines computed by default (module docstring)
DEFAULT_BASELINES = ("gfn2-xtb", "gfn1-xtb", "d3")
_XTB_METHODS = {"gfn2-xtb": "GFN2-xTB", "gfn1-xtb": "GFN1-xTB"}
#: the kJ/mol-A Coulomb constant used for point-charge dimer energies (as in dft_crystal)
_COULOMB_KJMOL_A = 1389.35457


#: terms a descriptor "element+<term>[+<term>]" appends to the contact sums (module docstring)
DESCRIPTOR_TERMS = ("hbond", "r6", "2A")
#: dimer descriptors (module docstring): the atom typing "element" or "polar-h", and the
#: element sums with extra terms (screening options)
DESCRIPTORS = ("element", "polar-h", "element+hbond", "element+r6", "element+2A", "element+r6+hbond")
DEFAULT_DESCRIPTOR = "element"
#: elements whose bonded H is typed "Hp" by the "polar-h" descriptor (and is a donor H of "hbond")
_POLAR_H_PARTNERS = ("N", "O")
#: decay (A) and angular power of the "hbond" term; reference distance (A) of the "r6" term
_HBOND_DECAY_A, _HBOND_POWER, _R6_REF_A = 0.25, 2, 3.0


def site_types(symbols: list[str], positions: np.ndarray, descriptor: str = DEFAULT_DESCRIPTOR) -> list[str]:
    """Atom types of one molecule for the dimer descriptor: the elements, and with
    ``descriptor="polar-h"`` "Hp" for an H whose nearest other atom of the molecule is N or O.

    Raises:
        SetupError: unknown descriptor.
    """
    import numpy as np

    _check(descriptor)
    types = list(symbols)
    if descriptor == "polar-h":
        for h, _ in donor_hydrogens(symbols, positions):
            types[h] = "Hp"
    return types


def donor_hydrogens(symbols: list[str], positions: np.ndarray) -> list[tuple[int, int]]:
    """(H, X) index pairs of a molecule's donor hydrogens: an H (or "Hp") whose nearest atom
    in the molecule, X, is N or O."""
    import numpy as np

    if len(symbols) < 2:
        return []
    pos = np.asarray(positions, dtype=float)
    r = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    np.fill_diagonal(r, np.inf)
    out = []
    for h, sym in enumerate(symbols):
        x = int(np.argmin(r[h]))
        if sym in ("H", "Hp") and symbols[x] in _POLAR_H_PARTNERS:
            out.append((h, x))
    return out


def _check(descriptor: str) -> None:
    if descriptor not in DESCRIPTORS:
        raise SetupError(f"unknown dimer descriptor {descriptor!r}; known: {', '.join(DESCRIPTORS)}")


def _terms(descriptor: str) -> list[str]:
    """The extra terms of ``descriptor`` (after the typing)."""
    _check(descriptor)
    return descriptor.split("+")[1:]


def _decays(descriptor: str) -> tuple[float, ...]:
    return DECAYS_A + ((2.0,) if "2A" in _terms(descriptor) else ())


def element_pairs(symbols: list[str]) -> list[str]:
    """Sorted type pairs ("C-H", "H-O", ...) of a molecule's atom types (elements, or
    :func:`site_types`), the descriptor's row labels."""
    els = sorted(set(symbols))
    return [f"{a}-{b}" for k, a in enumerate(els) for b in els[k:]]


def feature_names(symbols: list[str], descriptor: str = DEFAULT_DESCRIPTOR) -> list[str]:
    """Column names of :func:`dimer_descriptor` for a molecule with these atom types."""
    pairs = element_pairs(symbols)
    names = [f"{p}@{lam:g}A" for p in pairs for lam in _decays(descriptor)]
    terms = _terms(descriptor)
    if "r6" in terms:
        names += [f"{p}@r^-6" for p in pairs]
    if "hbond" in terms:
        names.append(f"hbond@{_HBOND_DECAY_A:g}A")
    return names


def hbond_sum(sym_a: list[str], pos_a: np.ndarray, sym_b: list[str], pos_b: np.ndarray) -> float:
    """The "hbond" sum (module docstring) of the donor H of molecule a towards the N/O
    atoms of molecule b: sum exp(-r_HY / 0.25 A) ((1 - cos t) / 2)^2, t the X-H...Y angle."""
    import numpy as np

    pa, pb = np.asarray(pos_a, dtype=float), np.asarray(pos_b, dtype=float)
    acc = [y for y, sy in enumerate(sym_b) if sy in _POLAR_H_PARTNERS]
    if not acc:
        return 0.0
    s = 0.0
    for h, x in donor_hydrogens(sym_a, pa):
        xh = pa[x] - pa[h]
        hy = pb[acc] - pa[h]
        d = np.linalg.norm(hy, axis=1)
        cos = hy @ xh / (d * np.linalg.norm(xh))
        s += float(np.sum(np.exp(-d / _HBOND_DECAY_A) * ((1.0 - cos) / 2.0) ** _HBOND_POWER))
    return s


def dimer_descriptor(sym_a: list[str], pos_a: np.ndarray, sym_b: list[str], pos_b: np.ndarray,
                     pairs: list[str], descriptor: str = DEFAULT_DESCRIPTOR) -> np.ndarray:
    """Contact sums of one dimer, ``(len(feature_names(..., descriptor)),)``: the exponential
    sums per type pair and decay, then the extra terms of ``descriptor`` (module docstring).

    Args:
        sym_a, pos_a: atom types and positions (A) of molecule a; sym_b, pos_b: of molecule b.
        pairs: :func:`element_pairs` of the molecule (fixes the column order).
        descriptor: one of :data:`DESCRIPTORS` (the typing of ``sym_a``/``sym_b`` is the caller's).
    """
    import numpy as np

    decays = np.asarray(_decays(descriptor))
    terms = _terms(descriptor)
    r = np.linalg.norm(np.asarray(pos_a)[:, None, :] - np.asarray(pos_b)[None, :, :], axis=-1)
    col = {p: k for k, p in enumerate(pairs)}
    out = np.zeros((len(pairs), len(decays)))
    r6 = np.zeros(len(pairs)) if "r6" in terms else None
    for a, sa in enumerate(sym_a):
        for b, sb in enumerate(sym_b):
            k = col["-".join(sorted((sa, sb)))]
            out[k] += np.exp(-r[a, b] / decays)
            if r6 is not None:
                r6[k] += (_R6_REF_A / r[a, b]) ** 6
    parts = [out.reshape(-1)]
    if r6 is not None:
        parts.append(r6)
    if "hbond" in terms:
        parts.append([hbond_sum(sym_a, pos_a, sym_b, pos_b) + hbond_sum(sym_b, pos_b, sym_a, pos_a)])
    return np.log1p(1000.0 * np.concatenate(parts))


@dataclass
class FragmentTerms:
    """The cheap parts of the fragment DFT energy of one structure (kJ/mol per molecule).

    Attributes:
        known_kjmol: E_D3,latt + E_pc,total, the part of the energy computed without DFT.
        e_d3_kjmol, e_pc_total_kjmol: its two terms.
        keys: (i, j, shift) of each symmetry-unique dimer within the cutoff, in the order
            of :func:`sim_backends.dft_crystal.unique_dimers` (the order of the DFT records).
        contact_A: closest contact of each dimer.
        weights: m_d / (2 Z) per dimer.
        multiplicity: m_d, symmetry-equivalent copies of each dimer around the Z molecules.
        e_pc_dimer_kjmol: point-charge Coulomb energy of each dimer (kJ/mol).
        features: :func:`dimer_descriptor` of each dimer, ``(n_dimers, n_features)``.
        feature_names: the descriptor's column names.
        baselines: ``(n_dimers, len(baseline_names))`` dimer baselines (kJ/mol, NaN where an
            xTB SCF failed; module docstring).
        baseline_names: their names (from :data:`DEFAULT_BASELINES`).
    """

    known_kjmol: float
    e_d3_kjmol: float
    e_pc_total_kjmol: float
    keys: list[tuple[int, int, tuple[int, int, int]]]
    contact_A: np.ndarray
    weights: np.ndarray
    multiplicity: np.ndarray
    e_pc_dimer_kjmol: np.ndarray
    features: np.ndarray
    feature_names: list[str] = field(default_factory=list)
    baselines: np.ndarray | None = None
    baseline_names: list[str] = field(default_factory=list)


def _xtb_energy_kjmol(numbers: np.ndarray, positions: np.ndarray, method: str) -> float:
    """GFN-xTB energy of a neutral molecule or dimer (kJ/mol); NaN when the SCF fails."""
    from ase import Atoms

    from sim_backends.base import RunError
    from sim_backends.structures import EV_TO_KJMOL
    from sim_backends.xtb_crystal import run_guarded, xtb_calculator

    atoms = Atoms(numbers=numbers, positions=positions)
    atoms.calc = xtb_calculator(method=method)
    try:
        return float(run_guarded(atoms.get_potential_energy, "dimer baseline")) * EV_TO_KJMOL
    except (RunError, SetupError):
        return float("nan")


def _d3_kjmol(numbers: np.ndarray, positions: np.ndarray, functional: str) -> float:
    from ase import Atoms

    from sim_backends.dft_crystal import d3_energy_hartree
    from sim_backends.structures import HARTREE_TO_KJMOL

    return d3_energy_hartree(Atoms(numbers=numbers, positions=positions), functional) * HARTREE_TO_KJMOL


class _DimerBaselines:
    """Baseline values of the dimers of one crystal, monomer energies computed once each."""

    def __init__(self, names: Sequence[str], functional: str) -> None:
        unknown = [b for b in names if b not in _XTB_METHODS and b != "d3"]
        if unknown:
            raise SetupError(f"unknown dimer baseline(s) {', '.join(unknown)}; known: "
                             f"{', '.join(DEFAULT_BASELINES)}")
        self.names = list(names)
        self.functional = functional
        self._mono: dict[tuple[str, int], float] = {}

    def _energy(self, name: str, numbers: np.ndarray, pos: np.ndarray) -> float:
        if name == "d3":
            return _d3_kjmol(numbers, pos, self.functional)
        return _xtb_energy_kjmol(numbers, pos, _XTB_METHODS[name])

    def __call__(self, i: int, za: np.ndarray, pa: np.ndarray, j: int, zb: np.ndarray, pb: np.ndarray,
                 e_pc: float) -> list[float]:
        import numpy as np

        out = []
        for name in self.names:
            for k, z, p in ((i, za, pa), (j, zb, pb)):  # a molecule's energy does not depend on its image
                if (name, k) not in self._mono:
                    self._mono[(name, k)] = self._energy(name, z, p)
            e_int = (self._energy(name, np.concatenate([za, zb]), np.vstack([pa, pb]))
                     - self._mono[(name, i)] - self._mono[(name, j)])
            out.append(e_int if name == "d3" else e_int - e_pc)
        return out


def fragment_terms(crystal: Crystal, charges_e: np.ndarray, cutoff_A: float = 3.0,
                   cutoff_mode: str = "contact", functional: str = "pbe",
                   e_d3_kjmol: float | None = None,
                   baselines: Sequence[str] = DEFAULT_BASELINES,
                   descriptor: str = DEFAULT_DESCRIPTOR) -> FragmentTerms:
    """Cheap terms and dimer descriptors of one crystal for the fragment surrogate.

    Args:
        crystal: crystal with whole molecules (all with the atom order of ``charges_e``).
        charges_e: RESP charges of one molecule
            (:func:`sim_backends.dft_crystal.molecule_resp_charges`).
        cutoff_A, cutoff_mode: the dimer cutoff of the DFT level (must match it).
        functional: for the D3(BJ) parameters.
        e_d3_kjmol: the periodic D3 lattice term if already known (e.g. from a stored DFT
            result), else computed here (dftd3, about a second for 30 atoms).
        baselines: dimer baselines to compute (module docstring; ``()`` for none).
        descriptor: the dimer descriptor (:data:`DESCRIPTORS`: atom typing, extra terms).

    Raises:
        SetupError: charged molecules, molecules that differ in atom order, a functional
            without D3(BJ) parameters, a bad cutoff, an unknown baseline or descriptor.
    """
    import numpy as np

    from sim_backends.dft_crystal import (
        d3_lattice_kjmol,
        enumerate_dimers,
        long_range_electrostatics_kjmol,
        unique_dimers,
    )
    q = np.asarray(charges_e, dtype=float)
    dimers = enumerate_dimers(crystal, cutoff_A, cutoff_mode)
    lr = long_range_electrostatics_kjmol(crystal, q, cutoff_A, cutoff_mode, dimers)
    if e_d3_kjmol is None:
        e_d3_kjmol = d3_lattice_kjmol(crystal, functional)[0]
    symbols = crystal.atoms.get_chemical_symbols()
    sym_mol = site_types([symbols[a] for a in crystal.groups[0]],
                         crystal.atoms.positions[crystal.groups[0]], descriptor)
    pairs = element_pairs(sym_mol)
    cell = crystal.atoms.cell.array
    qq = np.outer(q, q)
    base = _DimerBaselines(baselines, functional)
    numbers = crystal.atoms.numbers
    keys, contact, weights, mults, e_pc, feats, base_rows = [], [], [], [], [], [], []
    for dimer, mult in unique_dimers(crystal, dimers):
        pa = crystal.atoms.positions[crystal.groups[dimer.i]]
        pb = crystal.atoms.positions[crystal.groups[dimer.j]] + np.asarray(dimer.shift) @ cell
        r = np.linalg.norm(pa[:, None] - pb[None], axis=-1)
        keys.append((dimer.i, dimer.j, tuple(dimer.shift)))
        contact.append(dimer.contact_A)
        weights.append(mult / (2.0 * crystal.z))
        mults.append(mult)
        e_pc.append(_COULOMB_KJMOL_A * float(np.sum(qq / r)))
        feats.append(dimer_descriptor(sym_mol, pa, sym_mol, pb, pairs, descriptor))
        base_rows.append(base(dimer.i, numbers[crystal.groups[dimer.i]], pa, dimer.j,
                              numbers[crystal.groups[dimer.j]], pb, e_pc[-1]))
    names = feature_names(sym_mol, descriptor)
    n_feat = len(names)
    return FragmentTerms(
        known_kjmol=float(e_d3_kjmol) + float(lr["e_elec_pc_total_kjmol"]),
        e_d3_kjmol=float(e_d3_kjmol), e_pc_total_kjmol=float(lr["e_elec_pc_total_kjmol"]),
        keys=keys, contact_A=np.asarray(contact, dtype=float), weights=np.asarray(weights, dtype=float),
        multiplicity=np.asarray(mults, dtype=int), e_pc_dimer_kjmol=np.asarray(e_pc, dtype=float),
        features=np.asarray(feats, dtype=float).reshape(-1, n_feat),
        feature_names=names,
        baselines=np.asarray(base_rows, dtype=float).reshape(len(keys), len(base.names)),
        baseline_names=list(base.names),
    )


def landscape_fragment_terms(crystals: Sequence[Crystal], cutoff_A: float, cutoff_mode: str = "contact",
                             functional: str = "pbe", progress: Callable[[], None] | None = None,
                             baselines: Sequence[str] = DEFAULT_BASELINES,
                             descriptor: str = DEFAULT_DESCRIPTOR) -> list[FragmentTerms]:
    """:func:`fragment_terms` of every structure of one landscape (one molecule), with the RESP
    charges fitted once on the first crystal (cached on disk by the charge module).

    Raises:
        SetupError: as :func:`fragment_terms`; an empty landscape.
    """
    from sim_backends.dft_crystal import molecule_resp_charges

    if not crystals:
        raise SetupError("no structures to compute fragment terms for")
    charges = molecule_resp_charges(crystals[0])
    out = []
    for crystal in crystals:
        out.append(fragment_terms(crystal, charges, cutoff_A, cutoff_mode, functional, baselines=baselines,
                                  descriptor=descriptor))
        if progress is not None:
            progress()
    return out


def dimer_deltas(terms: FragmentTerms, dimer_records: list[Any]) -> np.ndarray:
    """delta(d) = E_int^DFT(d) - E_pc(d) per dimer of ``terms`` from a DFT result's records.

    Args:
        terms: :func:`fragment_terms` of the same crystal and cutoff.
        dimer_records: ``extra["dimers"]`` of a ``dft-crystal`` evaluation (dicts with ``i``,
            ``j``, ``shift``, ``multiplicity``, ``e_int_kjmol``), or stored compact records
            ``[multiplicity, contact_A, e_int_kjmol, ...]`` in the same order.

    Raises:
        SetupError: when the records do not describe the same dimers (other cutoff, other
            structure).
    """
    import numpy as np

    if len(dimer_records) != len(terms.keys):
        raise SetupError(f"{len(dimer_records)} DFT dimer records for {len(terms.keys)} dimers within the "
                         "cutoff: not the same structure or cutoff")
    e_int = np.empty(len(terms.keys))
    for k, rec in enumerate(dimer_records):
        if isinstance(rec, dict):
            key = (int(rec["i"]), int(rec["j"]), tuple(int(s) for s in rec["shift"]))
            same = key == terms.keys[k]
            value = float(rec["e_int_kjmol"])
        else:
            mult, contact, value = int(rec[0]), float(rec[1]), float(rec[2])
            same = abs(contact - terms.contact_A[k]) < 2e-3 and mult == int(terms.multiplicity[k])
        if not same:
            raise SetupError(f"DFT dimer record {k} does not match dimer {terms.keys[k]} of the structure")
        e_int[k] = value
    return e_int - terms.e_pc_dimer_kjmol
