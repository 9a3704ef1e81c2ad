"""Charge-transfer integrals between neighbouring molecules of a crystal (dimer projection).

For every symmetry-unique pair of molecules of a periodic structure whose closest
contact is below ``cutoff_A`` (pairs from :func:`sim_backends.dft_crystal.enumerate_dimers`,
grouped by :func:`~sim_backends.dft_crystal.unique_dimers`), the hole (HOMO) and electron
(LUMO) transfer integrals are computed by the dimer projection method (Valeev, Coropceanu,
da Silva Filho, Salman & Brédas, J. Am. Chem. Soc. 128, 9882 (2006); Baumeier, Kirkpatrick
& Andrienko, Phys. Chem. Chem. Phys. 12, 11103 (2010)):

1. an SCF of each isolated molecule A and B at its crystal geometry gives the frontier
   orbital ``phi_A`` (``phi_B``) as a coefficient vector over the monomer's atomic
   orbitals; the dimer's atomic-orbital basis is the union of the two monomer bases
   (A's atoms first), so ``phi_A`` is ``(c_A, 0)`` there and ``phi_B`` is ``(0, c_B)``;
2. an SCF of the dimer gives its converged Fock (Kohn-Sham or tight-binding)
   matrix ``F`` and overlap ``S`` in that basis;
3. ``H = P^T F P`` and ``S_2 = P^T S P`` with ``P = (phi_A, phi_B)`` give the site
   energies ``e_A, e_B``, the bare coupling ``J`` and the orbital overlap ``S_AB``;
4. Lowdin orthogonalisation, ``H_eff = S_2^-1/2 H S_2^-1/2``, gives the effective site
   energies and the effective transfer integral ``J_eff`` (the off-diagonal element;
   ``J_eff = (J - S_AB (e_A + e_B)/2) / (1 - S_AB^2)`` exactly).

For two identical, symmetry-related molecules (``e_A = e_B``) the eigenvalues of
``H_eff`` are ``e_eff +- |J_eff|``: the splitting of the two dimer orbitals that
derive from the monomer frontier orbitals is ``2 |J_eff|``. Only ``|J_eff|`` enters
Marcus rates (:mod:`sim_backends.mobility`); its sign depends on the arbitrary phases
of the monomer orbitals.

Degenerate frontier orbitals. When the frontier orbital is one of a (near-)degenerate set
(the HOMO pairs of benzene, coronene, triphenylene), any rotation inside
the set is an equally valid "HOMO", and the single-orbital ``J_eff`` depends on that
arbitrary choice. Each monomer's frontier *manifold* is every orbital within
:data:`DEGENERATE_MANIFOLD_MEV` of the HOMO (resp. LUMO); for manifolds of n orbitals on
each molecule, the projection above is done with the 2n orbitals at once (the same
Lowdin orthogonalisation of their 2n x 2n overlap), giving the n x n block ``J_ab`` of
effective couplings, and the carrier's coupling is ``J_eff^2 = (1/n) sum_ab |J_ab|^2``:
the Marcus rate from an initial state averaged over the n degenerate (equally
populated) states and summed over the n final ones (Fermi's golden rule). It is
invariant to unitary rotations within each manifold (a Frobenius norm), it lies between
``s_max / sqrt(n)`` and ``s_max`` (``s_max`` the block's largest singular value), and for
n = 1 it is the single-orbital ``|J_eff|`` exactly. The same degenerate-level sum is done
by VOTCA-XTP's dimer projection (``DFTcoupling::getCouplingElement``, votca/votca on GitHub,
``xtp/src/libxtp/dftcoupling.cc``), which however divides by ``n_A n_B`` (the rms of the
block, ``J_rms = J_eff / sqrt(n)``, reported beside it here as ``j_rms_meV``);
the golden-rule rate sums over the final states, so ``1/n`` is used.
The threshold (10 meV) is chosen against three scales: it is below k_B T (25.9 meV at
300 K) and below most |J| (5-100 meV), where orbitals closer than that are both thermally
populated and mixed by the coupling, so treating them as one degenerate level errs less
than the single-orbital choice can (X23 benzene, one dimer: single-orbital |J_hole|
1.5 meV against J_eff 6.5 meV, a factor 18 in the rate); it is
above the splitting that the slightly distorted experimental geometry gives a
symmetry-degenerate pair (X23 benzene: 1.3 meV for the e1g HOMO, 6.8 meV for the e2u LUMO;
< 0.01 meV on the rigid CSP geometries of the project's pool); and it is below the closest
accidental spacing among the pool's 60 smallest molecules (14 meV,
dithieno[3,2-b:2',3'-d]thiophene; then 39 meV, coumarin).
Manifold size, splitting and the gap to the next
orbital are recorded per carrier (:attr:`CrystalTransfer.manifolds`); a frontier orbital
with another orbital between the threshold and :data:`NEAR_DEGENERATE_MEV` away keeps the
single-orbital coupling and an INFO note (:attr:`CrystalTransfer.notes`).

The dimer Fock matrix is rebuilt from the converged orbitals, ``F = S C diag(eps) C^T S``
(exact for a complete set of molecular orbitals, as both levels give). With tblite this
is necessary: its ``"hamiltonian-matrix"`` result is the core (non-self-consistent)
Hamiltonian, not the converged one.

Levels (``level``):

* ``"gfn2-xtb"`` (or ``"gfn1-xtb"``): tblite (Bannwarth, Ehlert & Grimme, J. Chem. Theory
  Comput. 15, 1652 (2019)) with ``save-integrals``; a minimal valence basis, so the
  values are systematically different from DFT (see benchmarks/transfer_validation.py);
* ``"dft"``: PySCF Kohn-Sham (default B3LYP/6-31G, density fitting), the dimer SCF started
  from the block-diagonal superposition of the monomer density matrices.

Orbitals of one molecule do not change under a lattice translation (atom-centred basis
functions), so each of the Z molecules of the cell has one monomer SCF, reused for all
its dimers. Electronic polarisation by the rest of the crystal is not included (gas-phase
dimers), as in the papers above.

Units: energies in eV inside, meV at the API surface (``*_meV``); distances in Angstrom.
A dimer or monomer SCF that fails raises :class:`~sim_backends.base.RunError`; a structure
with no pair of molecules within the cutoff raises :class:`~sim_backends.base.SetupError`.
Heavy libraries (tblite, PySCF, ASE) are imported inside functions.

Over 500 lines on purpose: the coupling projection, the GFN2-xTB and DFT orbital sources,
the per-crystal transfer integrals and their backends share the Orbitals/DimerTransfer
layout and its units.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, MutableMapping

from sim_backends import params as check
from sim_backends.base import Backend, EvalInput, PhysicsError, RunError, SetupError

if TYPE_CHECKING:
    import numpy as np
    from ase import Atoms

    from sim_backends.structures import Crystal

#: CODATA 2018 Hartree energy in eV
HARTREE_TO_EV = 27.211386245988
#: Angstrom -> Bohr
ANGSTROM_TO_BOHR = 1.0 / 0.52917721090
#: carriers and the monomer orbital each one hops through
CARRIERS = ("hole", "electron")
#: default closest-contact cutoff (A) selecting the dimers
DEFAULT_CUTOFF_A = 4.0
#: orbitals within this of the HOMO (resp. LUMO), meV, form its degenerate frontier manifold
#: (module docstring: 0.4 k_B T at 300 K, below typical |J|, above geometric distortion)
DEGENERATE_MANIFOLD_MEV = 10.0
#: a frontier orbital with another orbital within this (meV) but outside the manifold gets
#: an INFO note: its single-orbital coupling neglects a thermally accessible neighbour
NEAR_DEGENERATE_MEV = 50.0
#: largest |J_eff| accepted as physical (meV): strongly coupled pi-stacks reach ~200 meV
#: (and GFN-xTB overestimates by up to ~2x); beyond 1 eV the "dimer" is a bonded molecule
MAX_ABS_J_MEV = 1000.0


@dataclass
class Orbitals:
    """A converged closed-shell SCF in its atomic-orbital basis.

    Attributes:
        overlap: AO overlap matrix S, (n_ao, n_ao).
        coefficients: MO coefficients, one orbital per column, (n_ao, n_mo); C^T S C = 1.
        energies_eV: orbital energies, (n_mo,), ascending.
        n_occupied: doubly occupied orbitals (HOMO is column n_occupied - 1).
        cpu_s: CPU seconds of the SCF.
    """

    overlap: np.ndarray
    coefficients: np.ndarray
    energies_eV: np.ndarray
    n_occupied: int
    cpu_s: float = 0.0

    def frontier(self, carrier: str) -> np.ndarray:
        """The HOMO (``"hole"``) or LUMO (``"electron"``) coefficient vector, (n_ao,)."""
        if carrier not in CARRIERS:
            raise SetupError(f"carrier must be one of {', '.join(CARRIERS)}, not {carrier!r}")
        k = self.n_occupied - 1 if carrier == "hole" else self.n_occupied
        if not 0 <= k < self.coefficients.shape[1]:
            raise RunError(f"no {'HOMO' if carrier == 'hole' else 'LUMO'} in the orbital set", retryable=False)
        return self.coefficients[:, k]

    def frontier_spacing_meV(self, carrier: str) -> float:
        """Gap between the frontier orbital and the next one on its side (HOMO - HOMO-1 for
        holes, LUMO+1 - LUMO for electrons), meV. Near zero the frontier orbital is one of
        a degenerate pair (benzene's e1g/e2u), and a single-orbital coupling is ill-defined."""
        k = self.n_occupied - 1 if carrier == "hole" else self.n_occupied
        other = k - 1 if carrier == "hole" else k + 1
        if not 0 <= other < len(self.energies_eV):
            return float("inf")
        return 1e3 * abs(float(self.energies_eV[k] - self.energies_eV[other]))

    def frontier_manifold(self, carrier: str, threshold_meV: float = DEGENERATE_MANIFOLD_MEV) -> list[int]:
        """Column indices of the frontier manifold: every orbital on the carrier's side
        (occupied for holes, virtual for electrons) within ``threshold_meV`` of the HOMO
        (resp. LUMO), frontier orbital first."""
        import numpy as np

        self.frontier(carrier)  # checks the carrier and that the orbital exists
        e = 1e3 * np.asarray(self.energies_eV, dtype=float)
        if carrier == "hole":
            k = self.n_occupied - 1
            return [i for i in range(k, -1, -1) if e[k] - e[i] < threshold_meV]
        k = self.n_occupied
        return [i for i in range(k, len(e)) if e[i] - e[k] < threshold_meV]

    def manifold_info(self, carrier: str, threshold_meV: float = DEGENERATE_MANIFOLD_MEV) -> dict[str, float]:
        """``n`` (orbitals in the frontier manifold), ``splitting_meV`` (energy spread
        inside it) and ``gap_meV`` (to the next orbital on the carrier's side; inf if none)."""
        idx = self.frontier_manifold(carrier, threshold_meV)
        e = [1e3 * float(self.energies_eV[i]) for i in idx]
        nxt = idx[-1] - 1 if carrier == "hole" else idx[-1] + 1
        gap = abs(1e3 * float(self.energies_eV[nxt]) - e[0]) if 0 <= nxt < len(self.energies_eV) else float("inf")
        return {"n": len(idx), "splitting_meV": max(e) - min(e), "gap_meV": gap}

    def fock_eV(self) -> np.ndarray:
        """The converged Fock matrix in the AO basis, ``S C diag(eps) C^T S`` (eV)."""
        sc = self.overlap @ self.coefficients
        return (sc * self.energies_eV) @ sc.T


def project_coupling(fock: np.ndarray, overlap: np.ndarray, phi_a: np.ndarray,
                     phi_b: np.ndarray) -> dict[str, float]:
    """Site energies and transfer integrals of two orbitals by projection (module docstring).

    Args:
        fock: dimer Fock matrix (n_ao, n_ao), eV.
        overlap: dimer AO overlap (n_ao, n_ao).
        phi_a, phi_b: monomer orbitals expressed in the dimer AO basis, (n_ao,).

    Returns:
        ``e_a_meV``, ``e_b_meV`` (bare site energies), ``j_meV`` (bare coupling),
        ``s_ab`` (orbital overlap), ``e_a_eff_meV``, ``e_b_eff_meV``, ``j_eff_meV``
        (after Lowdin orthogonalisation). Energies in meV.

    Raises:
        RunError: the two orbitals are (nearly) linearly dependent (|S_AB| >= 0.99).
    """
    import numpy as np

    p = np.stack([phi_a, phi_b], axis=1)
    h = p.T @ fock @ p
    s2 = p.T @ overlap @ p
    # normalise each orbital in the dimer metric (it is normalised in its monomer's already)
    norm = 1.0 / np.sqrt(np.diag(s2))
    h, s2 = h * np.outer(norm, norm), s2 * np.outer(norm, norm)
    if abs(s2[0, 1]) >= 0.99:
        raise RunError(f"monomer orbitals overlap S_AB = {s2[0, 1]:.3f}: molecules on top of each other",
                       retryable=False)
    w, v = np.linalg.eigh(s2)
    s_inv_half = (v / np.sqrt(w)) @ v.T
    h_eff = s_inv_half @ h @ s_inv_half
    return {
        "e_a_meV": 1e3 * float(h[0, 0]), "e_b_meV": 1e3 * float(h[1, 1]),
        "j_meV": 1e3 * float(0.5 * (h[0, 1] + h[1, 0])), "s_ab": float(s2[0, 1]),
        "e_a_eff_meV": 1e3 * float(h_eff[0, 0]), "e_b_eff_meV": 1e3 * float(h_eff[1, 1]),
        "j_eff_meV": 1e3 * float(0.5 * (h_eff[0, 1] + h_eff[1, 0])),
    }


def project_manifold_coupling(fock: np.ndarray, overlap: np.ndarray, phi_a: np.ndarray,
                              phi_b: np.ndarray) -> dict[str, Any]:
    """Effective coupling between two frontier manifolds (module docstring).

    Args:
        fock: dimer Fock matrix (n_ao, n_ao), eV.
        overlap: dimer AO overlap (n_ao, n_ao).
        phi_a, phi_b: the n orbitals of each manifold in the dimer AO basis, (n_ao, n),
            frontier orbital first.

    Returns:
        For n = 1 exactly :func:`project_coupling`'s result. For n > 1: ``j_eff_meV`` =
        ``sqrt(sum_ab |J_ab|^2 / n)`` (>= 0; rotation-invariant), ``j_rms_meV`` (the block's
        rms, ``j_eff / sqrt(n)``), ``j_block_meV`` (the n x n effective couplings),
        ``j_block_max_sv_meV`` (its largest singular value), ``j_single_meV`` (the
        frontier-frontier element alone: the old, rotation-dependent single-orbital value),
        ``e_a_meV``/``e_b_meV``/``e_a_eff_meV``/``e_b_eff_meV`` (mean of each manifold's
        diagonal), ``s_ab`` (the largest |overlap| between the manifolds), ``n_manifold``.

    Raises:
        RunError: the orbitals are (nearly) linearly dependent (smallest overlap eigenvalue
            below 0.01, as |S_AB| >= 0.99 for one orbital each).
        SetupError: the manifolds differ in size.
    """
    import numpy as np

    phi_a, phi_b = np.atleast_2d(phi_a.T).T, np.atleast_2d(phi_b.T).T
    n = phi_a.shape[1]
    if phi_b.shape[1] != n:
        raise SetupError(f"frontier manifolds differ in size ({n} and {phi_b.shape[1]} orbitals)")
    if n == 1:
        return project_coupling(fock, overlap, phi_a[:, 0], phi_b[:, 0])
    p = np.concatenate([phi_a, phi_b], axis=1)
    h = p.T @ fock @ p
    s2 = p.T @ overlap @ p
    norm = 1.0 / np.sqrt(np.diag(s2))
    h, s2 = h * np.outer(norm, norm), s2 * np.outer(norm, norm)
    w, v = np.linalg.eigh(s2)
    if w.min() <= 0.01:
        raise RunError(f"monomer frontier manifolds nearly linearly dependent (overlap eigenvalue {w.min():.3f}): "
                       "molecules on top of each other", retryable=False)
    s_inv_half = (v / np.sqrt(w)) @ v.T
    h_eff = s_inv_half @ h @ s_inv_half
    block = 1e3 * 0.5 * (h_eff[:n, n:] + h_eff[n:, :n].T)
    j2 = float(np.sum(block**2)) / n
    return {
        "e_a_meV": 1e3 * float(np.mean(np.diag(h)[:n])), "e_b_meV": 1e3 * float(np.mean(np.diag(h)[n:])),
        "j_meV": 1e3 * float(np.sqrt(np.sum((0.5 * (h[:n, n:] + h[n:, :n].T)) ** 2) / n)),
        "s_ab": float(np.max(np.abs(s2[:n, n:]))),
        "e_a_eff_meV": 1e3 * float(np.mean(np.diag(h_eff)[:n])),
        "e_b_eff_meV": 1e3 * float(np.mean(np.diag(h_eff)[n:])),
        "j_eff_meV": float(np.sqrt(j2)), "j_rms_meV": float(np.sqrt(j2 / n)),
        "j_block_meV": [[round(float(x), 6) for x in row] for row in block],
        "j_block_max_sv_meV": float(np.linalg.svd(block, compute_uv=False)[0]),
        "j_single_meV": float(block[0, 0]), "n_manifold": n,
    }


def dimer_couplings(orb_a: Orbitals, orb_b: Orbitals, orb_dimer: Orbitals,
                    manifold_size: dict[str, int] | None = None) -> dict[str, dict[str, Any]]:
    """Hole and electron couplings of a dimer whose AO basis is A's followed by B's.

    Args:
        manifold_size: orbitals per frontier manifold and carrier; by default the larger
            of the two monomers' :meth:`Orbitals.frontier_manifold` sizes (the same
            number of orbitals is taken from each molecule, frontier orbital first).

    Returns:
        ``{"hole": project_manifold_coupling(...), "electron": ...}`` (meV); with one
        orbital per manifold exactly :func:`project_coupling`'s result.

    Raises:
        SetupError: the dimer basis is not the union of the monomer bases.
    """
    import numpy as np

    n_a, n_b = orb_a.overlap.shape[0], orb_b.overlap.shape[0]
    n = orb_dimer.overlap.shape[0]
    if n != n_a + n_b:
        raise SetupError(f"dimer has {n} basis functions, monomers {n_a} + {n_b}")
    fock = orb_dimer.fock_eV()
    out = {}
    for carrier in CARRIERS:
        m = (manifold_size or {}).get(carrier) or max(len(orb_a.frontier_manifold(carrier)),
                                                       len(orb_b.frontier_manifold(carrier)))
        orb_a.frontier(carrier)
        k_a = orb_a.n_occupied - 1 if carrier == "hole" else orb_a.n_occupied
        k_b = orb_b.n_occupied - 1 if carrier == "hole" else orb_b.n_occupied
        step = -1 if carrier == "hole" else 1
        cols_a = [k_a + step * i for i in range(m)]
        cols_b = [k_b + step * i for i in range(m)]
        if min(cols_a + cols_b) < 0 or max(cols_a) >= orb_a.coefficients.shape[1] \
                or max(cols_b) >= orb_b.coefficients.shape[1]:
            raise RunError(f"{carrier} manifold of {m} orbitals exceeds the orbital set", retryable=False)
        phi_a = np.zeros((n, m))
        phi_b = np.zeros((n, m))
        phi_a[:n_a] = orb_a.coefficients[:, cols_a]
        phi_b[n_a:] = orb_b.coefficients[:, cols_b]
        out[carrier] = project_manifold_coupling(fock, orb_dimer.overlap, phi_a, phi_b)
    return out


def xtb_orbitals(atoms: Atoms, method: str = "GFN2-xTB", accuracy: float = 1.0,
                 max_iterations: int = 250, electronic_temperature_K: float = 300.0,
                 what: str = "") -> Orbitals:
    """GFN-xTB orbitals and integrals of a neutral, closed-shell molecule or dimer (tblite).

    Raises:
        SetupError: odd number of electrons, or tblite refuses the input.
        RunError: the SCC did not converge (message contains "SCF").
    """
    import contextlib
    import io

    import numpy as np
    from tblite.interface import Calculator

    c0 = time.process_time()
    try:
        calc = Calculator(method, np.asarray(atoms.numbers), np.asarray(atoms.positions) * ANGSTROM_TO_BOHR)
        calc.set("verbosity", 0)
        calc.set("save-integrals", 1)
        calc.set("accuracy", float(accuracy))
        calc.set("max-iter", int(max_iterations))
        calc.set("temperature", float(electronic_temperature_K) * 3.166808578545117e-6)
    except Exception as exc:  # noqa: BLE001 - tblite raises TBLiteValueError for bad input
        raise SetupError(f"xTB rejected {what}: {' '.join(str(exc).split())[:120]}") from None
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            res = calc.singlepoint()
    except Exception as exc:  # noqa: BLE001 - TBLiteRuntimeError on SCC failure
        raise RunError(f"xTB SCF of {what} failed: {' '.join(str(exc).split())[:120]}") from None
    occ = np.asarray(res.get("orbital-occupations"))
    n_el = int(round(float(occ.sum())))
    if n_el % 2:
        raise SetupError(f"{what} has {n_el} valence electrons: not closed-shell")
    return Orbitals(
        overlap=np.asarray(res.get("overlap-matrix")),
        coefficients=np.asarray(res.get("orbital-coefficients")),
        energies_eV=np.asarray(res.get("orbital-energies")) * HARTREE_TO_EV,
        n_occupied=n_el // 2,
        cpu_s=time.process_time() - c0,
    )


def dft_orbitals(atoms: Atoms, functional: str = "b3lyp", basis: str = "6-31g",
                 max_cycles: int = 100, conv_tol: float = 1e-8, grid_level: int = 2,
                 density_fit: bool = True, dm0: np.ndarray | None = None,
                 what: str = "") -> tuple[Orbitals, np.ndarray]:
    """Kohn-Sham orbitals of a neutral closed-shell system (PySCF, via
    :func:`sim_backends.dft_crystal.run_scf`).

    Returns:
        ``(orbitals, density_matrix)``; the density matrix seeds the dimer SCF.

    Raises:
        SetupError: unknown basis or functional, odd electron count.
        RunError: SCF not converged.
    """
    from sim_backends.dft_crystal import ScfSettings, run_scf

    settings = ScfSettings(functional=functional, basis=basis, max_cycles=max_cycles,
                           conv_tol=conv_tol, grid_level=grid_level, density_fit=density_fit)
    c0 = time.process_time()
    res = run_scf(atoms, settings, dm0=dm0, what=what, keep_mf=True)
    mf = getattr(res["mf"], "_scf", res["mf"])
    n_el = int(mf.mol.nelectron)
    if n_el % 2:
        raise SetupError(f"{what} has {n_el} electrons: not closed-shell")
    orbitals = Orbitals(overlap=mf.get_ovlp(), coefficients=mf.mo_coeff,
                        energies_eV=mf.mo_energy * HARTREE_TO_EV, n_occupied=n_el // 2,
                        cpu_s=time.process_time() - c0)
    return orbitals, res["dm"]


@dataclass
class DimerTransfer:
    """Transfer integrals of one symmetry-unique dimer of a crystal.

    Attributes:
        i, j, shift: molecule i of the cell and molecule j translated by ``shift`` (lattice units).
        contact_A: closest interatomic contact; com_A: centre-of-mass distance.
        multiplicity: ordered dimers (i, J) of the cell in this symmetry class.
        hole, electron: :func:`project_coupling` results (meV).
        cpu_s: CPU seconds of the dimer SCF.
    """

    i: int
    j: int
    shift: tuple[int, int, int]
    contact_A: float
    com_A: float
    multiplicity: int
    hole: dict[str, float]
    electron: dict[str, float]
    cpu_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CrystalTransfer:
    """Transfer integrals of a crystal and its hopping network.

    Attributes:
        dimers: one :class:`DimerTransfer` per symmetry-unique dimer within the cutoff.
        neighbours: every ordered dimer (i, J) of the cell as ``(i, j, class_index)``,
            ``class_index`` pointing into ``dimers``.
        vectors_A: centre-of-mass hop vector of each neighbour (com_J - com_i), (n, 3) A.
        z: molecules in the cell.
        level: level of theory of the integrals.
        cpu_s: CPU seconds of all SCFs (monomers and dimers).
        frontier_spacing_meV: per carrier, the smallest frontier spacing over the Z
            monomers (:meth:`Orbitals.frontier_spacing_meV`).
        manifolds: per carrier, the frontier manifold used (:meth:`Orbitals.manifold_info`
            over the Z monomers: ``n`` the largest size, ``splitting_meV`` the largest
            spread, ``gap_meV`` the smallest gap to the next orbital; ``sizes`` per monomer).
            Empty for results made before manifolds existed (single orbitals).
        shifts: lattice translation (integers) of the target molecule of each neighbour
            (a supercell of the network needs it: :mod:`sim_backends.tlt`). Empty for
            results made before it was recorded.
    """

    dimers: list[DimerTransfer]
    neighbours: list[tuple[int, int, int]]
    vectors_A: np.ndarray
    z: int
    level: str
    cpu_s: float
    frontier_spacing_meV: dict[str, float] = field(default_factory=dict)
    manifolds: dict[str, dict[str, Any]] = field(default_factory=dict)
    shifts: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        """Lines for couplings that are not well defined: a carrier whose frontier orbital
        is (nearly) degenerate but was projected as a single orbital (results without
        manifolds), or whose monomers disagree on the manifold size."""
        out = []
        for c, v in self.frontier_spacing_meV.items():
            m = self.manifolds.get(c)
            if m is None and v < DEGENERATE_MANIFOLD_MEV:
                out.append(f"{c}: frontier orbital within {v:.0f} meV of the next one (degenerate pair); "
                           "single-orbital |J| is ill-defined")
            elif m is not None and len(set(m.get("sizes", [m["n"]]))) > 1:
                out.append(f"{c}: frontier manifold sizes differ between the molecules of the cell "
                           f"({sorted(set(m['sizes']))}); {m['n']} orbitals used for all")
        return out

    @property
    def notes(self) -> list[str]:
        """INFO lines: a degenerate frontier manifold (its size; the coupling is the
        rotation-invariant J_eff), or a single frontier orbital with another orbital within
        :data:`NEAR_DEGENERATE_MEV`."""
        out = []
        for c, m in self.manifolds.items():
            if m["n"] > 1:
                out.append(f"{c}: {m['n']}-fold degenerate frontier manifold (splitting {m['splitting_meV']:.1f} meV, "
                           f"{m['gap_meV']:.0f} meV to the next orbital): rotation-invariant J_eff over the "
                           f"{m['n']}x{m['n']} coupling block")
            elif m["gap_meV"] < NEAR_DEGENERATE_MEV:
                out.append(f"{c}: next orbital {m['gap_meV']:.0f} meV from the frontier one (outside the "
                           f"{DEGENERATE_MANIFOLD_MEV:g} meV manifold threshold): single-orbital coupling")
        return out

    def couplings_meV(self, carrier: str) -> np.ndarray:
        """|J_eff| of each neighbour for ``carrier``, (n_neighbours,) meV."""
        import numpy as np

        per_class = np.array([abs(getattr(d, carrier)["j_eff_meV"]) for d in self.dimers])
        return per_class[[c for _, _, c in self.neighbours]]

    def to_extra(self) -> dict[str, Any]:
        """JSON-able form (for ``EvalResult.extra``)."""
        return {"level": self.level, "z": self.z, "cpu_s": round(self.cpu_s, 3),
                "dimers": [d.to_dict() for d in self.dimers],
                "frontier_spacing_meV": {k: round(v, 3) for k, v in self.frontier_spacing_meV.items()},
                "manifolds": self.manifolds, "warnings": self.warnings, "notes": self.notes,
                "neighbours": [list(n) for n in self.neighbours],
                "vectors_A": [[round(float(x), 5) for x in v] for v in self.vectors_A],
                **({"shifts": [list(t) for t in self.shifts]} if self.shifts else {})}

    @classmethod
    def from_extra(cls, extra: dict[str, Any]) -> CrystalTransfer:
        """Inverse of :meth:`to_extra`."""
        import numpy as np

        dimers = [DimerTransfer(**{**d, "shift": tuple(d["shift"])}) for d in extra["dimers"]]
        return cls(dimers=dimers, neighbours=[tuple(n) for n in extra["neighbours"]],
                   vectors_A=np.asarray(extra["vectors_A"], dtype=float).reshape(-1, 3),
                   z=int(extra["z"]), level=str(extra["level"]), cpu_s=float(extra.get("cpu_s", 0.0)),
                   frontier_spacing_meV=dict(extra.get("frontier_spacing_meV", {})),
                   manifolds=dict(extra.get("manifolds") or {}),
                   shifts=[tuple(int(x) for x in t) for t in extra.get("shifts") or []])


def dimer_key(i: int, j: int, shift: tuple[int, int, int] | list[int]) -> str:
    """Key of a dimer (molecule i, molecule j translated by ``shift``) in a
    :func:`crystal_transfer` ``dimer_cache``: ``"i,j,s1,s2,s3"``."""
    return ",".join(str(int(x)) for x in (i, j, *shift))


#: an orbital calculator: (atoms, label, initial density matrix or None) -> (Orbitals, dm or None)
OrbitalFn = Callable[["Atoms", str, Any], "tuple[Orbitals, Any]"]


def orbital_fn(level: str, params: dict[str, Any] | None = None) -> tuple[OrbitalFn, str]:
    """The orbital calculator of a level and its printed name.

    Args:
        level: ``"gfn2-xtb"``, ``"gfn1-xtb"`` or ``"dft"``.
        params: for DFT ``functional`` ("b3lyp"), ``basis`` ("6-31g"), ``max_cycles``,
            ``conv_tol``, ``grid_level``, ``density_fit``; for xTB ``max_iterations``.
    """
    p = dict(params or {})
    if level in ("gfn2-xtb", "gfn1-xtb"):
        method = "GFN2-xTB" if level == "gfn2-xtb" else "GFN1-xTB"

        def run_xtb(atoms: Atoms, what: str, _dm0: Any) -> tuple[Orbitals, Any]:
            return xtb_orbitals(atoms, method=method, max_iterations=int(p.get("max_iterations", 250)),
                                what=what), None
        return run_xtb, method
    if level == "dft":
        functional, basis = str(p.get("functional", "b3lyp")), str(p.get("basis", "6-31g"))

        def run_dft(atoms: Atoms, what: str, dm0: Any) -> tuple[Orbitals, Any]:
            return dft_orbitals(atoms, functional=functional, basis=basis,
                                max_cycles=int(p.get("max_cycles", 100)),
                                conv_tol=float(p.get("conv_tol", 1e-8)),
                                grid_level=int(p.get("grid_level", 2)),
                                density_fit=bool(p.get("density_fit", True)), dm0=dm0, what=what)
        return run_dft, f"{functional.upper()}/{basis}"
    raise SetupError(f"unknown transfer-integral level {level!r}; use gfn2-xtb, gfn1-xtb or dft")


def crystal_transfer(crystal: Crystal, level: str = "gfn2-xtb", cutoff_A: float = DEFAULT_CUTOFF_A,
                     params: dict[str, Any] | None = None, max_com_A: float | None = None,
                     dimer_cache: MutableMapping[str, dict[str, Any]] | None = None) -> CrystalTransfer:
    """Hole and electron transfer integrals of every symmetry-unique dimer of a crystal.

    Args:
        crystal: crystal with whole molecules (:func:`sim_backends.structures.load_crystal`).
        level: see :func:`orbital_fn`.
        cutoff_A: closest-contact cutoff selecting the dimers (A).
        params: level options (:func:`orbital_fn`).
        max_com_A: when given, only dimers whose centres of mass are at most this far
            apart (A) are kept (both in the unique set and in the hopping network), e.g.
            the in-layer dimers of a layered herringbone crystal.
        dimer_cache: optional mapping from :func:`dimer_key` to
            :meth:`DimerTransfer.to_dict`; a unique dimer found in it is not recomputed
            and every newly computed one is stored in it as soon as its SCF is done (a
            caller whose mapping writes through to a file can resume an interrupted
            crystal; the monomer SCFs are always recomputed). The caller keys it by
            crystal and level. Unique dimers are computed closest (centres of mass)
            first; the returned order does not depend on it.

    Raises:
        SetupError: no pair of molecules within ``cutoff_A`` (and ``max_com_A``), or a
            level that cannot run this input.
        RunError: a monomer or dimer SCF failed (the message names which).
    """
    import numpy as np
    from scipy.linalg import block_diag

    from sim_backends.dft_crystal import dimer_atoms, enumerate_dimers, unique_dimers

    run, level_name = orbital_fn(level, params)
    dimers = enumerate_dimers(crystal, float(cutoff_A), "contact")
    if max_com_A is not None:
        dimers = [d for d in dimers if d.com_A <= float(max_com_A)]
    if not dimers:
        within = "" if max_com_A is None else f" with centres of mass within {float(max_com_A):g} A"
        raise SetupError(f"no two molecules closer than {cutoff_A:g} A (closest contact){within}: "
                         "no molecular contacts to hop between")
    class_of: list[int] = []
    unique = unique_dimers(crystal, dimers, class_of)
    cpu = 0.0
    monomers = []
    for k in range(crystal.z):
        orb, dm = run(crystal.molecule(k), f"molecule {k}", None)
        monomers.append((orb, dm))
        cpu += orb.cpu_s
    manifolds: dict[str, dict[str, Any]] = {}
    for c in CARRIERS:
        infos = [orb.manifold_info(c) for orb, _ in monomers]
        manifolds[c] = {"n": max(x["n"] for x in infos),
                        "splitting_meV": round(max(x["splitting_meV"] for x in infos), 4),
                        "gap_meV": round(min(x["gap_meV"] for x in infos), 3),
                        "sizes": [int(x["n"]) for x in infos],
                        "threshold_meV": DEGENERATE_MANIFOLD_MEV}
    sizes = {c: int(m["n"]) for c, m in manifolds.items()}
    records: dict[int, DimerTransfer] = {}  # by class: each is cached or computed (a failed dimer raises)
    # closest pairs first (usually the largest couplings): an interrupted cached run keeps those
    for k in sorted(range(len(unique)), key=lambda n: unique[n][0].com_A):
        rep, mult = unique[k]
        key = dimer_key(rep.i, rep.j, rep.shift)
        if dimer_cache is not None and key in dimer_cache:
            cached = dimer_cache[key]
            records[k] = DimerTransfer(**{**cached, "shift": tuple(cached["shift"]), "multiplicity": mult})
            cpu += float(cached["cpu_s"])
            continue
        d_atoms = dimer_atoms(crystal, rep)
        (orb_a, dm_a), (orb_b, dm_b) = monomers[rep.i], monomers[rep.j]
        dm0 = block_diag(dm_a, dm_b) if dm_a is not None else None
        what = f"dimer ({rep.i}, {rep.j}, shift {list(rep.shift)}, contact {rep.contact_A:.2f} A)"
        orb_d, _ = run(d_atoms, what, dm0)
        cpu += orb_d.cpu_s
        c = dimer_couplings(orb_a, orb_b, orb_d, sizes)
        records[k] = DimerTransfer(rep.i, rep.j, rep.shift, rep.contact_A, rep.com_A, mult,
                                   c["hole"], c["electron"], orb_d.cpu_s)
        if dimer_cache is not None:
            dimer_cache[key] = records[k].to_dict()
    vectors = hop_vectors(crystal, dimers)
    neighbours = [(d.i, d.j, c) for d, c in zip(dimers, class_of)]
    spacing = {c: min(orb.frontier_spacing_meV(c) for orb, _ in monomers) for c in CARRIERS}
    return CrystalTransfer([records[k] for k in range(len(unique))], neighbours, vectors, crystal.z,
                           level_name, cpu, spacing, manifolds,
                           [tuple(int(x) for x in d.shift) for d in dimers])


def hop_vectors(crystal: Any, dimers: Any) -> np.ndarray:
    """Centre-of-mass hop vector (A) of each ordered dimer (molecule i to molecule j translated
    by its ``shift``), ``(n, 3)``."""
    import numpy as np

    atoms = crystal.atoms
    masses = atoms.get_masses()
    com = [masses[g] @ atoms.positions[g] / masses[g].sum() for g in crystal.groups]
    return np.array([com[d.j] + np.asarray(d.shift) @ atoms.cell.array - com[d.i] for d in dimers]).reshape(-1, 3)


def summary_values(transfer: CrystalTransfer) -> dict[str, float]:
    """Scalar values of a crystal's transfer integrals: largest |J_eff| per carrier (meV),
    the rate-relevant sum of J_eff^2 over one molecule's neighbours (meV^2), and counts."""
    import numpy as np

    out: dict[str, float] = {"n_unique_dimers": float(len(transfer.dimers)),
                             "n_neighbours": float(len(transfer.neighbours)) / transfer.z}
    for carrier in CARRIERS:
        j = transfer.couplings_meV(carrier)
        out[f"j_{carrier}_max_meV"] = float(np.max(j))
        out[f"j2_{carrier}_sum_meV2"] = float(np.sum(j**2)) / transfer.z
    return out


LEVEL_PARAMS = {"cutoff_A": check.number(0.0, 12.0, lo_open=True)}
XTB_PARAMS = {**LEVEL_PARAMS, "method": check.one_of("gfn2-xtb", "gfn1-xtb"),
              "max_iterations": check.integer(1, 10000)}
DFT_PARAMS = {**LEVEL_PARAMS, "threads": check.integer(1, 1024), "functional": check.xc_functional, "basis": check.basis_set,
              "max_cycles": check.integer(1), "conv_tol": check.number(0.0, lo_open=True),
              "grid_level": check.integer(0, 9), "density_fit": check.boolean}


class _TransferBase(Backend):
    """Shared evaluation of the transfer-integral backends (one level each)."""

    target = "structure"
    computes = ("j_hole_max_meV", "j_electron_max_meV", "j2_hole_sum_meV2", "j2_electron_sum_meV2",
                "n_unique_dimers", "n_neighbours")
    objective_key = "j_hole_max_meV"
    level: str = "gfn2-xtb"

    def _level(self, p: dict[str, Any]) -> str:
        return self.level

    def compute(self, inp: EvalInput) -> CrystalTransfer:
        """Load the structure (checked against the SMILES) and compute its transfer integrals."""
        from sim_backends.structures import load_crystal
        from sim_backends.validity import check_structure_facts, structure_facts

        p = inp.params
        self.check_params(p)
        crystal = load_crystal(inp.structure_cif or "", inp.smiles)
        check_structure_facts(structure_facts(crystal), f"{self._level(p)} transfer integrals")
        level_params = {k: v for k, v in p.items() if k not in ("cutoff_A", "threads", "method")}
        return crystal_transfer(crystal, self._level(p), float(p.get("cutoff_A", DEFAULT_CUTOFF_A)),
                                level_params)

    def _evaluate(self, inp: EvalInput) -> tuple[dict[str, float], dict[str, Any]]:
        transfer = self.compute(inp)
        return summary_values(transfer), {**transfer.to_extra(), "cpu_s_scf": transfer.cpu_s}

    def _check_physical(self, values: dict[str, float], extra: dict[str, Any]) -> None:
        """|J_eff| below :data:`MAX_ABS_J_MEV` for every dimer and carrier."""
        super()._check_physical(values, extra)
        check_couplings(values, extra.get("level", self.level))


def check_couplings(values: dict[str, float], level: str) -> None:
    """PhysicsError if a largest |J_eff| exceeds :data:`MAX_ABS_J_MEV` (covalent contact)."""
    for carrier in CARRIERS:
        j = values.get(f"j_{carrier}_max_meV")
        if j is not None and j > MAX_ABS_J_MEV:
            raise PhysicsError(f"|J_eff| {carrier} = {j:.0f} meV > {MAX_ABS_J_MEV:.0f} meV ({level}): "
                               "molecules bonded, not a molecular contact")


class XtbTransferBackend(_TransferBase):
    """Hole/electron transfer integrals of every unique dimer, GFN2-xTB dimer projection.

    Params: cutoff_A (4.0, closest contact), method ("gfn2-xtb" | "gfn1-xtb"),
    max_iterations (250).
    Values (meV): ``j_hole_max_meV``, ``j_electron_max_meV`` (largest |J_eff|), ``j2_*_sum_meV2``
    (sum of J_eff^2 over one molecule's neighbours), ``n_unique_dimers``, ``n_neighbours``
    (per molecule). ``extra`` holds every dimer's site energies and couplings and the network.
    """

    name = "transfer-xtb"
    version = "1"
    fidelity = 1
    description = "hole/electron transfer integrals of crystal dimers, GFN2-xTB dimer projection (tblite)"
    params_schema = XTB_PARAMS

    def _level(self, p: dict[str, Any]) -> str:
        return str(p.get("method", "gfn2-xtb"))

    def level_of_theory(self, params: dict[str, Any] | None = None) -> str:
        p = {**self.params, **(params or {})}
        return f"{'GFN1' if p.get('method') == 'gfn1-xtb' else 'GFN2'}-xTB dimer projection"

    def cost_estimate(self, inp: EvalInput) -> float:
        """CPU seconds ~ 2e-4 n^2 for n atoms in the cell (X23 naphthalene, 36 atoms, five
        unique dimers: 0.3 s; anthracene, 48 atoms: 0.5 s)."""
        from sim_backends.xtb_crystal import estimate_cell_atoms

        return 0.05 + 2e-4 * estimate_cell_atoms(inp.structure_cif) ** 2


class DftTransferBackend(_TransferBase):
    """Hole/electron transfer integrals of every unique dimer, DFT dimer projection (PySCF).

    Params: cutoff_A (4.0), functional ("b3lyp"), basis ("6-31g"), max_cycles (100),
    conv_tol (1e-8), grid_level (2), density_fit (True), threads (1).
    Values as ``transfer-xtb``.
    """

    name = "transfer-dft"
    version = "1"
    fidelity = 2
    level = "dft"
    description = "hole/electron transfer integrals of crystal dimers, B3LYP/6-31G dimer projection (PySCF)"
    params_schema = DFT_PARAMS

    def level_of_theory(self, params: dict[str, Any] | None = None) -> str:
        p = {**self.params, **(params or {})}
        return f"{str(p.get('functional', 'b3lyp')).upper()}/{p.get('basis', '6-31g')} dimer projection"

    def compute(self, inp: EvalInput) -> CrystalTransfer:
        """As the base class, with ``threads`` PySCF OpenMP threads for this evaluation."""
        from pyscf import lib

        old = lib.num_threads()
        lib.num_threads(int(inp.params.get("threads", 1)))
        try:
            return super().compute(inp)
        finally:
            lib.num_threads(old)

    def cost_estimate(self, inp: EvalInput) -> float:
        """CPU seconds ~ 0.04 n^2.5 for n atoms in the cell (B3LYP/6-31G, X23 naphthalene,
        36 atoms, two monomer and five dimer SCFs: 320 s)."""
        from sim_backends.xtb_crystal import estimate_cell_atoms

        return 5.0 + 0.04 * estimate_cell_atoms(inp.structure_cif) ** 2.5
