"""SCF starting guesses, solver choice and cost accounting for the PySCF backends.

Contracts:

* :func:`ao_rotation` returns the matrix ``U`` (n_ao, n_ao) that carries the AO basis of a
  reference molecule onto the same molecule moved by an orthogonal matrix ``R`` (proper
  or improper) and a translation: every function of the moved molecule is
  ``chi'_mu = sum_nu chi_nu U[nu, mu]`` and a density matrix moves as ``U D U^T``. The
  per-shell blocks are found numerically from PySCF's own real spherical (or Cartesian)
  functions, so any angular momentum and PySCF's p-ordering are handled without a
  convention table; the residual of that fit is checked (< 1e-8).
* :class:`MonomerReferences` holds one converged monomer density per molecule and SCF
  settings in the molecule's own frame and returns it rotated onto any rigid copy
  (atoms in the same order, Procrustes RMSD <= :data:`MAX_FIT_RMSD_A`). It lives in the
  worker process (:data:`REFERENCES`), so a landscape's monomer density is computed once
  per worker and never travels with the tasks. It also keeps the reference's energy, so
  an identical rigid copy (RMSD <= :data:`IDENTICAL_MONOMER_RMSD_A`) can be reused
  without an SCF where only its density is needed.
* :class:`DimerReferences` holds converged dimers (and their counterpoise monomers) of
  a landscape and carries the nearest one of the same pair type (relative-geometry RMSD
  <= :data:`MAX_DIMER_RMSD_A`) onto a new dimer block by block, each molecule's AO block
  with its own rigid fit (:data:`DIMERS`, per worker).
* :func:`solve` runs one SCF from a guess (``None`` = PySCF's default, minao) with
  DIIS or PySCF's second-order solver (``newton``; ``"auto"`` picks it when the guess's
  SCF error ||FDS - SDF|| is below :data:`NEWTON_MAX_GRAD`), and falls back to the default
  guess with DIIS when the guess is unusable (wrong shape, electron count, occupations
  outside [0, 2]) or does not converge; the fallback and its reason are recorded. Its
  record holds the guess kind, solver, SCF cycles, Fock builds (every two-electron
  potential: ``get_veff`` calls plus the response builds of Newton's micro-iterations),
  wall and CPU seconds. With ``accept_tol`` a guess whose SCF error is already below it
  is taken as converged after one Fock build (solver "accepted"). The converged energy does not depend on the guess beyond the
  SCF convergence threshold (tested against the default guess to 1e-6 Eh).
* :func:`follow_instabilities` makes a converged UKS solution internally stable: while
  the lowest eigenvalue of the orbital Hessian (:func:`lowest_orbital_hessian_mode`,
  PySCF's ``uhf_internal`` Hessian with better Davidson start vectors) is below
  -:data:`UNSTABLE_EIGENVALUE`, the SCF restarts from the orbitals rotated along that
  mode in both directions and keeps the lower, at most ``max_followups`` times; its
  record says whether the final state is stable, and counts the checks, restarts, builds and the energy lowered. Open-shell SCFs
  can converge to saddle points (the hole in the wrong one of near-degenerate orbitals)
  whose energy depends on the guess by far more than the SCF threshold; the default-guess
  agreement above holds for open shells only after this check.
* :func:`degenerate_holes`, :func:`canonical_degenerate_orbitals` and
  :func:`hole_density` give the cation guesses of a closed-shell neutral whose HOMO is
  degenerate (within :data:`DEGENERATE_HOMO_EH`): one per degenerate orbital, the set
  turned to an orientation fixed by the atoms, so that two SCF paths try the same
  placements. Such cations have several stable broken-symmetry solutions that a stability
  check cannot choose between; the backends keep the lowest placement.

PySCF is imported inside functions.

Over 500 lines on purpose: AO rotations, the monomer and dimer reference stores and the
Fock-build counting are one warm-start mechanism whose parts are only correct together.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

#: ``scf_guess`` backend parameter values
GUESS_MODES = ("auto", "learned", "default")
#: largest RMSD (A) between a molecule and a stored reference after the best orthogonal fit
MAX_FIT_RMSD_A = 0.05
#: tolerated relative error of the electron count of a guess density (PySCF's own minao
#: guess for water is 0.14 % short)
MAX_ELECTRON_ERROR = 1e-2
#: occupations of a guess may leave [0, 2] by this much: a superposition of overlapping
#: monomer densities is not idempotent (formic acid H-bonded dimer: up to 2.32)
MAX_OCCUPATION_EXCESS = 1.0
#: largest RMSD (A) of the relative geometry of a stored dimer whose densities start a new one
MAX_DIMER_RMSD_A = 0.2
#: guesses that are images of a converged density of the same system: accepted after one
#: Fock build when their SCF error is below ``ACCEPT_GRAD_FACTOR * sqrt(conv_tol)``
EXACT_GUESSES = ("rotated_reference", "exchanged_partner", "identical_dimer")
#: a stored monomer this close (fit RMSD, A) is the same rigid molecule: its converged
#: energy and density are reused without an SCF where only guesses need them
IDENTICAL_MONOMER_RMSD_A = 1e-6
#: a stored dimer this close (relative-geometry RMSD, A) gives an "identical_dimer" guess
IDENTICAL_RMSD_A = 1e-3
ACCEPT_GRAD_FACTOR = 0.3
#: ``solver="auto"`` uses Newton when ||FDS - SDF|| of the guess is below this (a.u.)
NEWTON_MAX_GRAD = 1e-3

_SHELL_CACHE: dict[tuple[int, bool, bytes], np.ndarray] = {}


def shell_rotation(l: int, R: np.ndarray, cart: bool = False) -> np.ndarray:
    """Rotation matrix of one shell of angular momentum ``l`` in PySCF's AO order.

    Args:
        l: angular momentum.
        R: orthogonal 3x3 matrix (rotation, or rotation times inversion).
        cart: Cartesian instead of real spherical functions.

    Returns:
        ``D`` (n, n), n = 2l+1 (or (l+1)(l+2)/2), with ``f_m(R^T r) = sum_k f_k(r) D[k, m]``.
    """
    import numpy as np
    from pyscf import gto

    R = np.asarray(R, float)
    key = (l, cart, np.round(R, 12).tobytes())
    if key in _SHELL_CACHE:
        return _SHELL_CACHE[key]
    mol = gto.M(atom=[["He", (0.0, 0.0, 0.0)]], basis={"He": [[l, [1.0, 1.0]]]},
                cart=cart, spin=None, verbose=0)
    rng = np.random.default_rng(7)
    pts = rng.normal(size=(4 * (2 * l + 1) + 8, 3))
    kind = "GTOval_cart" if cart else "GTOval_sph"
    a = mol.eval_gto(kind, pts)
    b = mol.eval_gto(kind, pts @ R)  # rows p -> R^T p
    d, *_ = np.linalg.lstsq(a, b, rcond=None)
    if np.abs(a @ d - b).max() > 1e-8 * max(1.0, np.abs(b).max()):
        raise ValueError(f"l={l} shell is not closed under the given transformation (R not orthogonal?)")
    if len(_SHELL_CACHE) > 4096:
        _SHELL_CACHE.clear()
    _SHELL_CACHE[key] = d
    return d


def ao_rotation(mol: Any, R: np.ndarray) -> np.ndarray:
    """AO transformation ``U`` of ``mol``'s basis under the orthogonal map ``R``.

    Args:
        mol: PySCF ``Mole`` of the moved molecule (its AO order defines ``U``'s).
        R: orthogonal 3x3 matrix mapping reference coordinates onto ``mol``'s
            (``x = R (x_ref - c_ref) + c``).

    Returns:
        ``U`` (n_ao, n_ao), block diagonal over shells; ``U @ D_ref @ U.T`` is the density of
        the moved molecule when ``D_ref`` is the reference's in the same basis and atom order.
    """
    import numpy as np

    ao_loc = mol.ao_loc_cart() if mol.cart else mol.ao_loc_nr()
    u = np.zeros((ao_loc[-1], ao_loc[-1]))
    for ib in range(mol.nbas):
        l = mol.bas_angular(ib)
        d = shell_rotation(l, R, bool(mol.cart))
        n = d.shape[0]
        for c in range(mol.bas_nctr(ib)):
            p0 = ao_loc[ib] + c * n
            u[p0:p0 + n, p0:p0 + n] = d
    return u


def orthogonal_fit(ref_A: np.ndarray, xyz_A: np.ndarray, det: int = 0) -> tuple[np.ndarray, float]:
    """Best orthogonal map (rotations and improper rotations) of ``ref_A`` onto ``xyz_A``.

    Both (n, 3) in the same atom order, Angstrom. Returns ``(R, rmsd_A)`` with
    ``xyz - mean(xyz) ~ (ref - mean(ref)) @ R.T``. ``det`` = +1 or -1 restricts ``R``
    to proper or improper maps (for a planar molecule both fit equally well).
    """
    import numpy as np

    p = ref_A - ref_A.mean(axis=0)
    q = xyz_A - xyz_A.mean(axis=0)
    u, _, vt = np.linalg.svd(q.T @ p)
    R = u @ vt
    if det and np.sign(np.linalg.det(R)) != det:
        R = u @ np.diag([1.0, 1.0, -1.0]) @ vt
    rmsd = float(np.sqrt(np.mean(np.sum((p @ R.T - q) ** 2, axis=1))))
    return R, rmsd


class MonomerReferences:
    """Converged monomer densities in their own frames, keyed by SCF settings and elements.

    ``lookup`` returns the stored density carried onto a rigid copy of a stored
    molecule (with the fit RMSD and the stored energy), or None; ``store`` adds one. Bounded (``max_entries``); the per-process
    instance :data:`REFERENCES` serves every evaluation a worker runs.
    """

    def __init__(self, max_entries: int = 64) -> None:
        self.max_entries = max_entries
        self._refs: list[tuple[tuple, np.ndarray, np.ndarray, float | None]] = []

    def __len__(self) -> int:
        return len(self._refs)

    def clear(self) -> None:
        self._refs.clear()

    def lookup(self, key: tuple, mol: Any, xyz_A: np.ndarray) -> tuple[np.ndarray, float, float | None] | None:
        """(density for ``mol`` at ``xyz_A``, fit RMSD in A, the reference's converged energy
        in Hartree or None), or None without a matching reference."""
        for ref_key, ref_xyz, ref_dm, ref_e in self._refs:
            if ref_key != key or ref_xyz.shape != xyz_A.shape or ref_dm.shape[-1] != mol.nao:
                continue
            R, rmsd = orthogonal_fit(ref_xyz, xyz_A)
            if rmsd <= MAX_FIT_RMSD_A:
                u = ao_rotation(mol, R)
                return u @ ref_dm @ u.T, rmsd, ref_e
        return None

    def store(self, key: tuple, xyz_A: np.ndarray, dm: np.ndarray, energy_hartree: float | None = None) -> None:
        import numpy as np

        if len(self._refs) >= self.max_entries:
            self._refs.pop(0)
        self._refs.append((key, np.array(xyz_A, float), np.array(dm, float), energy_hartree))


class DimerReferences:
    """Converged densities of dimers and of their counterpoise monomers, reused for the
    nearest dimer of the same pair type (same elements, rigid molecules).

    ``store`` keeps one dimer's coordinates and its densities (``{"dimer", "cp_a",
    "cp_b"}``, AO order of the dimer basis); ``lookup`` finds the stored dimer whose
    relative geometry is nearest (orthogonal fit of all atoms, in both molecule orders
    when the two molecules are the same) and, when that RMSD is at most
    :data:`MAX_DIMER_RMSD_A`, carries its densities onto the new dimer block by block:
    each molecule's AO block with that molecule's own orthogonal fit (same handedness
    as the dimer fit), the intermolecular block with both. For rigid molecules the
    intramolecular blocks are then placed exactly and only the relative geometry
    differs. Bounded (``max_entries`` and ``max_bytes`` of densities, oldest dropped);
    per-process (:data:`DIMERS`).
    """

    def __init__(self, max_entries: int = 512, max_bytes: int = 256 * 2**20) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._refs: list[tuple[tuple, np.ndarray, int, dict[str, np.ndarray]]] = []

    def __len__(self) -> int:
        return len(self._refs)

    def clear(self) -> None:
        self._refs.clear()

    def store(self, key: tuple, xyz_A: np.ndarray, n_a: int, dms: dict[str, np.ndarray]) -> None:
        import numpy as np

        self._refs.append((key, np.array(xyz_A, float), int(n_a),
                           {k: np.array(v, float) for k, v in dms.items()}))
        while len(self._refs) > 1 and (len(self._refs) > self.max_entries or self.nbytes() > self.max_bytes):
            self._refs.pop(0)

    def nbytes(self) -> int:
        """Bytes held by the stored densities."""
        return sum(dm.nbytes for *_, dms in self._refs for dm in dms.values())

    def lookup(self, key: tuple, mol: Any, xyz_A: np.ndarray, n_a: int,
               max_rmsd_A: float | None = None) -> tuple[dict[str, np.ndarray], float] | None:
        """(densities carried onto ``mol`` at ``xyz_A``, relative-geometry RMSD in A) of the
        nearest stored dimer, or None when none is within ``max_rmsd_A``
        (default :data:`MAX_DIMER_RMSD_A`)."""
        import numpy as np

        limit = MAX_DIMER_RMSD_A if max_rmsd_A is None else max_rmsd_A
        n = len(xyz_A)
        swap_xyz = np.r_[np.arange(n_a, n), np.arange(n_a)]
        best = None
        for ref_key, ref_xyz, ref_na, dms in self._refs:
            if ref_key != key or ref_xyz.shape != xyz_A.shape or next(iter(dms.values())).shape[-1] != mol.nao:
                continue
            orders = [False]
            if ref_na == n_a and 2 * n_a == n and ref_key[0][:n_a] == ref_key[0][n_a:]:
                orders.append(True)
            elif ref_na != n_a:
                continue
            for swapped in orders:
                ref = ref_xyz[swap_xyz] if swapped else ref_xyz
                R, rmsd = orthogonal_fit(ref, xyz_A)
                if rmsd <= limit and (best is None or rmsd < best[0]):
                    best = (rmsd, R, ref, dms, swapped)
        if best is None:
            return None
        rmsd, R, ref, dms, swapped = best
        det = 1 if np.linalg.det(R) > 0 else -1
        R_a, rmsd_a = orthogonal_fit(ref[:n_a], xyz_A[:n_a], det)
        R_b, rmsd_b = orthogonal_fit(ref[n_a:], xyz_A[n_a:], det)
        if max(rmsd_a, rmsd_b) > MAX_FIT_RMSD_A:
            return None
        first = mol.aoslice_by_atom()[n_a][2]
        nao = mol.nao
        u = ao_rotation(mol, R_a)
        u[first:, first:] = ao_rotation(mol, R_b)[first:, first:]
        p = np.r_[np.arange(first, nao), np.arange(first)] if swapped else np.arange(nao)
        out = {}
        for kind, dm in dms.items():
            if swapped:
                kind = {"cp_a": "cp_b", "cp_b": "cp_a"}.get(kind, kind)
            out[kind] = u @ dm[np.ix_(p, p)] @ u.T
        return out, float(rmsd)


def swapped_partner_density(mol: Any, xyz_A: np.ndarray, n_a: int, dm: np.ndarray,
                            tol_A: float = 1e-3) -> np.ndarray | None:
    """For a dimer whose two molecules an orthogonal map exchanges (inversion centre,
    2-fold axis, mirror), the density of the second-molecule SCF from the first one's.

    Args:
        mol: PySCF molecule of the dimer (atoms: first molecule's ``n_a``, then the
            second's; ghost atoms allowed, they carry the same functions).
        xyz_A: dimer coordinates (n, 3), Angstrom, in ``mol``'s order.
        n_a: atoms of the first molecule.
        dm: converged density (n_ao, n_ao) of an SCF of this dimer basis that is the
            image of the wanted one (e.g. counterpoise monomer A -> monomer B).
        tol_A: largest RMSD of the exchange fit.

    Returns:
        The density carried by the exchange (AO order of ``mol``), or None when the two
        molecules differ or no orthogonal map exchanges them within ``tol_A``.
    """
    import numpy as np

    n = len(xyz_A)
    element = [mol.atom_pure_symbol(k).upper().removeprefix("GHOST-") for k in range(n)]
    if 2 * n_a != n or element[:n_a] != element[n_a:]:
        return None
    perm = np.r_[np.arange(n_a, n), np.arange(n_a)]
    R, rmsd = orthogonal_fit(xyz_A[perm], xyz_A)
    if rmsd > tol_A:
        return None
    ao_loc = mol.ao_loc_nr() if not mol.cart else mol.ao_loc_cart()
    first = mol.aoslice_by_atom()[n_a - 1][3] if n_a else 0
    nao = int(ao_loc[-1])
    p = np.r_[np.arange(first, nao), np.arange(first)]
    u = ao_rotation(mol, R)
    return u @ dm[np.ix_(p, p)] @ u.T


def state_density(mol: Any, source: dict[str, Any]) -> np.ndarray:
    """Guess density for ``mol`` (its charge and spin) from another converged state.

    Args:
        mol: PySCF molecule of the wanted state (same atoms, same basis as the source).
        source: ``{"mo_coeff", "mo_occ"}`` of a converged RKS (arrays (n, n), (n,)) or
            UKS ((2, n, n), (2, n)) calculation, at this or a nearby geometry.

    Returns:
        RKS density (n, n) for a closed-shell ``mol`` (twice the projector on the source's
        lowest n_elec/2 occupied alpha orbitals), else the UKS pair (2, n, n) that fills
        each spin's n_alpha and n_beta lowest occupied source orbitals: a cation at the
        neutral's orbitals is the neutral with its HOMO emptied in the beta channel.
    """
    import numpy as np

    c = np.asarray(source["mo_coeff"])
    occ = np.asarray(source["mo_occ"])
    if c.ndim == 2:
        c, occ = np.stack([c, c]), np.stack([occ, occ])
    n_a, n_b = mol.nelec

    def projector(spin: int, n: int) -> np.ndarray:
        # occupied orbitals first (in energy order), then the virtual ones
        order = np.r_[np.flatnonzero(occ[spin] > 0), np.flatnonzero(occ[spin] <= 0)]
        cs = c[spin][:, order[:n]]
        return cs @ cs.T

    if mol.spin == 0 and n_a == n_b:
        return 2.0 * projector(0, n_a)
    return np.stack([projector(0, n_a), projector(1, n_b)])


def closest_state(states: list[dict[str, Any]], charge: int, xyz_A: np.ndarray, nao: int,
                  charge_step_A: float = 0.05) -> dict[str, Any] | None:
    """The converged state nearest to (``charge``, ``xyz_A``): smallest
    RMSD(geometry, A) + ``charge_step_A`` x |charge difference|, same basis size; None if none.

    ``states`` entries have ``charge``, ``xyz_A`` (n, 3), ``nao`` (and the orbitals that
    :func:`state_density` reads). With the default step a state of the other charge at
    the same geometry wins over the same charge more than 0.05 A RMSD away.
    """
    import numpy as np

    best, best_cost = None, np.inf
    for st in states:
        if st["nao"] != nao or st["xyz_A"].shape != xyz_A.shape:
            continue
        rmsd = float(np.sqrt(np.mean(np.sum((st["xyz_A"] - xyz_A) ** 2, axis=1))))
        cost = rmsd + charge_step_A * abs(st["charge"] - charge)
        if cost < best_cost:
            best, best_cost = st, cost
    return best


#: the worker process's monomer references (one SCF per molecule and settings per worker)
REFERENCES = MonomerReferences()
#: the worker process's converged dimers (nearest-dimer guesses over a landscape)
DIMERS = DimerReferences()


def density_problem(mol: Any, dm: np.ndarray) -> str | None:
    """Why ``dm`` cannot start an SCF of ``mol`` (None when it can).

    Checks shape, finiteness, symmetry, the electron count tr(D S) (per spin for UKS
    pairs) and that the occupations (eigenvalues of S^1/2 D S^1/2) lie within
    :data:`MAX_OCCUPATION_EXCESS` of [0, 2] (restricted) or [0, 1] per spin.
    """
    import numpy as np
    from scipy.linalg import eigh

    dm = np.asarray(dm)
    n = mol.nao
    spin_resolved = dm.ndim == 3
    if dm.shape not in ((n, n), (2, n, n)):
        return f"shape {dm.shape}, basis has {n} functions"
    if not np.all(np.isfinite(dm)):
        return "non-finite elements"
    s = mol.intor_symmetric("int1e_ovlp")
    n_a, n_b = mol.nelec
    targets = [(dm[0], n_a, 1.0), (dm[1], n_b, 1.0)] if spin_resolved else [(dm, n_a + n_b, 2.0)]
    for d, n_el, max_occ in targets:
        if np.abs(d - d.T).max() > 1e-6:
            return "not symmetric"
        count = float(np.einsum("ij,ji->", d, s))
        if abs(count - n_el) > MAX_ELECTRON_ERROR * max(n_el, 1):
            return f"{count:.3f} electrons, molecule has {n_el}"
        occ = eigh(s @ d @ s, s, eigvals_only=True)
        if occ.min() < -MAX_OCCUPATION_EXCESS or occ.max() > max_occ + MAX_OCCUPATION_EXCESS:
            return f"occupations in [{occ.min():.2f}, {occ.max():.2f}]"
    return None


_COUNTING_CLASSES: dict[type, type] = {}


def _counting_class(base: type) -> type:
    """``base`` with ``get_veff`` and ``gen_response`` counting into ``self.fock_counter``
    (one class per base, so PySCF's class registry does not grow per SCF)."""
    if base in _COUNTING_CLASSES:
        return _COUNTING_CLASSES[base]

    class _Counting(base):  # type: ignore[misc, valid-type]
        def get_veff(self, *args: Any, **kwargs: Any) -> Any:
            counter = getattr(self, "fock_counter", None)
            if counter is not None:
                counter["n"] += 1
            return super().get_veff(*args, **kwargs)

        def gen_response(self, *args: Any, **kwargs: Any) -> Any:
            vind = super().gen_response(*args, **kwargs)
            counter = getattr(self, "fock_counter", None)
            if counter is None:
                return vind

            def counted(dm1: Any) -> Any:
                counter["n"] += 1
                return vind(dm1)

            return counted

    _Counting.__name__ = base.__name__
    _Counting.__qualname__ = base.__qualname__
    _COUNTING_CLASSES[base] = _Counting
    return _Counting


def count_fock_builds(mf: Any) -> dict[str, int]:
    """Make ``mf`` count its two-electron potential builds; returns the live counter.

    Every ``get_veff`` call and every response build (Newton micro-iterations, CPHF)
    increments ``counter["n"]``; objects derived from ``mf`` (``newton()``, scanners)
    share the counter (``mf.fock_counter``, copied by reference).
    """
    counter = {"n": 0}
    if type(mf) not in _COUNTING_CLASSES.values():
        mf.__class__ = _counting_class(type(mf))
    mf.fock_counter = counter
    return counter


def commutator_norm(mf: Any, dm: np.ndarray, fock: np.ndarray | None = None) -> float:
    """Frobenius norm of the SCF error F D S - S D F at ``dm`` (a.u.; one Fock build
    unless ``fock`` at ``dm`` is given).

    Zero at self-consistency; for an idempotent ``dm`` it measures the orbital gradient.
    """
    import numpy as np

    fock = np.asarray(mf.get_fock(dm=dm) if fock is None else fock)
    s = mf.get_ovlp()
    dm = np.asarray(dm)
    pairs = [(fock, dm)] if dm.ndim == 2 else list(zip(fock, dm))
    return float(np.sqrt(sum(np.linalg.norm(f @ d @ s - s @ d @ f) ** 2 for f, d in pairs)))


def _accept(mf: Any, dm: np.ndarray, tol: float) -> tuple[bool, float]:
    """One Fock build at ``dm``: when its SCF error is below ``tol``, ``mf`` is set to the
    state of ``dm`` (energy at ``dm``, orbitals of its Fock matrix, converged). Returns
    (accepted, SCF error norm)."""
    import numpy as np

    h1e = mf.get_hcore()
    vhf = mf.get_veff(mf.mol, dm)
    fock = np.asarray(mf.get_fock(h1e=h1e, vhf=vhf, dm=dm))
    err = commutator_norm(mf, dm, fock)
    if err >= tol:
        return False, err
    mf.e_tot = float(mf.energy_tot(dm, h1e, vhf))
    mf.mo_energy, mf.mo_coeff = mf.eig(fock, mf.get_ovlp())
    mf.mo_occ = mf.get_occ(mf.mo_energy, mf.mo_coeff)
    mf.converged = True
    return True, err


def solve(mf: Any, dm0: np.ndarray | None = None, guess: str = "default",
          solver: str = "diis", what: str = "SCF", accept_tol: float | None = None) -> tuple[Any, dict[str, Any]]:
    """Converge ``mf`` from ``dm0`` with the chosen solver; fall back to the default guess.

    Args:
        mf: PySCF SCF object, not yet run (max_cycle, conv_tol, grids set).
        dm0: guess density (RKS (n, n), UKS (2, n, n)) or None for PySCF's default.
        guess: label of the guess recorded (e.g. "minao", "rotated_reference",
            "monomer_superposition").
        solver: "diis", "newton" or "auto" (Newton when ``dm0`` is given and the
            SCF error :func:`commutator_norm` of ``dm0`` is below :data:`NEWTON_MAX_GRAD`).
        what: label for records and errors.
        accept_tol: for a guess that is an image of a converged density (e.g.
            :data:`EXACT_GUESSES`): when its SCF error ||FDS - SDF|| is below this, it is
            taken as converged after one Fock build (solver "accepted", 0 cycles; the
            energy is variational, so its error is second order in that residual).

    Returns:
        ``(converged_mf, record)``; record has ``guess``, ``solver``, ``cycles``,
        ``fock_builds``, ``wall_s``, ``cpu_s``, ``converged`` and, after a fallback,
        ``fallback`` (the reason). The returned object may be the Newton wrapper.
    """
    if solver not in ("diis", "newton", "auto"):
        raise ValueError(f"solver must be 'diis', 'newton' or 'auto', not {solver!r}")
    t0, c0 = time.perf_counter(), time.process_time()
    counter = count_fock_builds(mf)
    cycles = [0]

    def count_cycle(_envs: dict) -> None:
        cycles[0] += 1

    mf.callback = count_cycle
    rec: dict[str, Any] = {"what": what, "guess": guess if dm0 is not None else "minao"}
    if dm0 is not None:
        problem = density_problem(mf.mol, dm0)
        if problem is not None:
            rec["fallback"] = f"guess rejected: {problem}"
            dm0 = None
    chosen = solver if dm0 is not None else "diis"
    if accept_tol is not None and dm0 is not None:
        ok, err = _accept(mf, dm0, accept_tol)
        rec["guess_error_norm"] = err
        if ok:
            rec.update({"solver": "accepted", "cycles": 0, "fock_builds": counter["n"], "converged": True,
                        "energy_hartree": float(mf.e_tot), "wall_s": round(time.perf_counter() - t0, 4),
                        "cpu_s": round(time.process_time() - c0, 4)})
            return mf, rec
    if chosen == "auto":
        grad = rec["guess_error_norm"] if "guess_error_norm" in rec else commutator_norm(mf, dm0)
        rec["guess_error_norm"] = grad
        chosen = "newton" if grad < NEWTON_MAX_GRAD else "diis"
    run = mf.newton() if chosen == "newton" else mf
    run.kernel(dm0=dm0)
    if not run.converged and dm0 is not None:
        rec["fallback"] = f"not converged from the {rec['guess']} guess with {chosen} in {cycles[0]} cycles"
        run = mf
        chosen = "diis"
        run.kernel(dm0=None)
    rec.update({"solver": chosen, "cycles": cycles[0], "fock_builds": counter["n"],
                "converged": bool(run.converged), "energy_hartree": float(run.e_tot),
                "wall_s": round(time.perf_counter() - t0, 4), "cpu_s": round(time.process_time() - c0, 4)})
    return run, rec


#: an orbital-Hessian eigenvalue below -this (Eh/rad^2) marks a UKS solution as unstable.
#: Following a mode of eigenvalue -1e-4 by 0.1 rad lowers the energy by ~5e-7 Eh, below
#: the 1e-6 Eh agreement guaranteed between guesses; PySCF's own threshold (1e-5) sits
#: within its Davidson tolerance (1e-4) and could chase noise.
UNSTABLE_EIGENVALUE = 1e-4
#: follow-ups (SCF restarts from rotated orbitals) before an unstable state is a failure
MAX_STABILITY_FOLLOWUPS = 3
#: Davidson start vectors: unit vectors of the smallest diagonal orbital-Hessian elements
STABILITY_START_VECTORS = 6


def lowest_orbital_hessian_mode(mf: Any, tol: float = 1e-4) -> tuple[float, np.ndarray, float, bool]:
    """Lowest eigenpair of the internal (UKS -> UKS, real) orbital Hessian of a converged
    UKS ``mf``, as in PySCF's ``stability.uhf_internal`` (same Hessian product
    ``newton_ah.gen_g_hop_uhf``, same scaling), but Davidson starts from the unit vectors
    of the :data:`STABILITY_START_VECTORS` smallest diagonal elements (orbital-energy
    gaps) instead of one vector 1/diagonal: 5-13 response builds per check instead of
    32-65 (B3LYP/6-31G cations of pyridine, benzene, triazine). Every response build is
    counted by :func:`count_fock_builds`.

    Returns ``(eigenvalue Eh/rad^2, eigenvector, smallest diagonal element, Davidson
    converged)``. A negative Ritz value is an upper bound of the lowest eigenvalue, so an
    instability found before convergence is real.
    """
    import numpy as np
    from pyscf import lib
    from pyscf.soscf import newton_ah

    _, hop, hdiag = newton_ah.gen_g_hop_uhf(mf, mf.mo_coeff, mf.mo_occ, with_symmetry=False)
    hdiag = np.asarray(hdiag) * 2.0

    def precond(dx: np.ndarray, e: float, _x0: np.ndarray) -> np.ndarray:
        d = hdiag - e
        d[np.abs(d) < 1e-8] = 1e-8
        return dx / d

    x0 = []
    for i in np.argsort(hdiag)[:STABILITY_START_VECTORS]:
        x = np.zeros_like(hdiag)
        x[i] = 1.0
        x0.append(x)
    conv, e, v = lib.davidson1(lambda xs: [hop(x).real * 2.0 for x in xs], x0, precond,
                               tol=tol, nroots=1, verbose=0)
    return float(e[0]), np.asarray(v[0]), float(hdiag.min()), bool(conv[0])


def _rotated_orbitals(mf: Any, step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """UKS orbitals rotated by ``exp(kappa)``, kappa = ``step`` (occupied-virtual pairs of
    both spins, PySCF's packing) -- the orbitals PySCF's stability analysis returns."""
    import numpy as np
    from pyscf.scf import hf
    from pyscf.soscf import newton_ah

    n_a = int(np.count_nonzero(mf.mo_occ[0] > 0)) * int(np.count_nonzero(mf.mo_occ[0] == 0))
    out = []
    for spin, dx in enumerate((step[:n_a], step[n_a:])):
        u = newton_ah.expmat(hf.unpack_uniq_var(dx, mf.mo_occ[spin]))
        out.append(np.asarray(mf.mo_coeff[spin]) @ u)
    return out[0], out[1]


def follow_instabilities(mf: Any, max_followups: int = MAX_STABILITY_FOLLOWUPS) -> tuple[Any, dict[str, Any]]:
    """Make a converged UKS solution internally stable: while the orbital Hessian has an
    eigenvalue below -:data:`UNSTABLE_EIGENVALUE`, restart the SCF from the orbitals
    rotated along that mode (PySCF's recipe) in both directions (the mode's sign is
    arbitrary and the two can descend to different states: benzene cation, B3LYP/6-31G,
    9e-6 Eh apart) and keep the lower, at most ``max_followups`` times.

    A converged UKS state can be a saddle point in orbital space (an excited
    configuration, e.g. the hole in the wrong one of two near-degenerate orbitals);
    which one an SCF lands in depends on its guess, so without this check two guesses
    can give energies that differ by far more than the SCF threshold (pyridine cation,
    B3LYP/6-31G at the neutral geometry: 0.020 Eh from PySCF's minao guess).

    Args:
        mf: converged UKS object (``mo_coeff``, ``mo_occ`` set); may be a Newton wrapper.
        max_followups: SCF restarts allowed.

    Returns:
        ``(mf, record)``; record has ``stable`` (False when still unstable after the cap,
        or a restarted SCF did not converge), ``checks``, ``followups``, ``eigenvalues``
        (lowest eigenvalue per check, Eh/rad^2), ``hessian_diag_min`` (first check),
        ``energy_change_eh`` (final - first energy), ``fock_builds`` (response builds of
        the checks plus the restarted SCFs), ``cpu_s`` and ``wall_s``.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    counter = getattr(mf, "fock_counter", None) or count_fock_builds(mf)
    n0, e0 = counter["n"], float(mf.e_tot)
    rec: dict[str, Any] = {"checks": 0, "followups": 0, "eigenvalues": []}
    stable = False
    while True:
        eig, mode, diag_min, converged = lowest_orbital_hessian_mode(mf)
        rec["checks"] += 1
        rec["eigenvalues"].append(round(eig, 6))
        rec.setdefault("hessian_diag_min", round(diag_min, 6))
        if not converged:
            rec["davidson_unconverged"] = rec.get("davidson_unconverged", 0) + 1
        if eig >= -UNSTABLE_EIGENVALUE:
            stable = True
            break
        if rec["followups"] >= max_followups:
            break
        # both directions along the mode (its sign is arbitrary; the energy along it need
        # not be even): converge each, keep the lower converged one
        starts = [mf.make_rdm1(_rotated_orbitals(mf, sign * mode), mf.mo_occ) for sign in (1.0, -1.0)]
        other = mf.copy()  # shares the Fock-build counter
        mf.kernel(dm0=starts[0])
        other.kernel(dm0=starts[1])
        rec["followups"] += 1
        ends = [x for x in (mf, other) if x.converged]
        if not ends:
            rec["not_converged_after_followup"] = True
            break
        rec.setdefault("followup_energies_eh", []).append(
            [float(x.e_tot) if x.converged else None for x in (mf, other)])
        mf = min(ends, key=lambda x: float(x.e_tot))
    rec.update({"stable": stable, "energy_change_eh": float(mf.e_tot) - e0,
                "fock_builds": counter["n"] - n0, "wall_s": round(time.perf_counter() - t0, 4),
                "cpu_s": round(time.process_time() - c0, 4)})
    return mf, rec


#: occupied orbitals of the closed-shell neutral within this (Eh) of its HOMO form a
#: degenerate set whose hole placements :func:`degenerate_holes` returns. Symmetry-degenerate
#: pairs come out split by the DFT grid and geometry noise (B3LYP/6-31G, grid level 1,
#: GFN2-xTB geometries: benzene 1.1-1.3e-5, 1,3,5-triazine 2-9e-6 Eh); 1e-3 Eh (27 meV) is
#: two orders above that. An accidental near-degeneracy within it is treated the same way
#: (HCN at its GFN2-xTB geometry: a sigma orbital 3.4e-4 Eh below the pi pair, 3 placements).
DEGENERATE_HOMO_EH = 1e-3
#: hole placements whose converged energies differ by less than this (Eh) are a tie,
#: resolved by the order of the placements (the oriented degenerate orbitals in turn), not by the noise
HOLE_TIE_EH = 1e-7


def degenerate_holes(mo_energy: np.ndarray, mo_occ: np.ndarray, tol: float = DEGENERATE_HOMO_EH) -> list[int]:
    """Indices of the occupied orbitals of a closed-shell (RKS) state within ``tol`` (Eh)
    of its HOMO, HOMO first, when there are at least two (a degenerate HOMO); else ``[]``."""
    import numpy as np

    e, occ = np.asarray(mo_energy, float), np.asarray(mo_occ, float)
    if e.ndim != 1 or occ.shape != e.shape:
        return []
    occupied = np.flatnonzero(occ > 0)
    if len(occupied) < 2:
        return []
    homo = occupied[np.argmax(e[occupied])]
    near = [int(i) for i in occupied[np.argsort(-e[occupied], kind="stable")] if e[homo] - e[i] < tol]
    return near if len(near) >= 2 else []


def hole_density(source: dict[str, Any], hole: int) -> np.ndarray:
    """UKS guess (2, n, n) of the cation with the hole in orbital ``hole`` of a converged
    closed-shell state ``source`` (``mo_coeff`` (n, n), ``mo_occ`` (n,)) at the same geometry:
    every occupied orbital in alpha, all but ``hole`` in beta."""
    import numpy as np

    c, occ = np.asarray(source["mo_coeff"]), np.asarray(source["mo_occ"])
    if c.ndim != 2 or not occ[hole] > 0:
        raise ValueError("hole_density needs a closed-shell source and an occupied hole orbital")
    alpha = c[:, occ > 0]
    beta = c[:, (occ > 0) & (np.arange(len(occ)) != hole)]
    return np.stack([alpha @ alpha.T, beta @ beta.T])


def canonical_degenerate_orbitals(mol: Any, mo_coeff: np.ndarray, idx: list[int],
                                  min_split: float = 1e-3) -> tuple[np.ndarray, int | None]:
    """A fixed orientation of a degenerate set of orbitals ``mo_coeff[:, idx]``.

    Within a (near-)degenerate set the eigenvectors of a converged Fock matrix are fixed only
    by the noise that splits it (grid, SCF residual), so two SCFs of the same state can return
    them turned by any angle. Here the set is re-diagonalised on the Loewdin population of
    the first atom that splits it by at least ``min_split`` (the orbital with the most weight
    on that atom first): for benzene's e1g pair, the pi orbital with its largest lobe on C1
    and the one with a node there. Returns ``(coefficients (n_ao, len(idx)), atom)``, or the
    input orbitals and None when no atom splits the set (e.g. the pi pair of a linear
    molecule, whose placements are exactly equivalent).
    """
    import numpy as np

    c = np.asarray(mo_coeff)[:, idx]
    s = mol.intor_symmetric("int1e_ovlp")
    w, v = np.linalg.eigh(s)
    x = (v * np.sqrt(w)) @ v.T @ c  # Loewdin coefficients (orthonormal columns)
    for atom, (_, _, p0, p1) in enumerate(mol.aoslice_by_atom()):
        e, u = np.linalg.eigh(x[p0:p1].T @ x[p0:p1])
        if np.min(np.diff(e)) >= min_split:
            return c @ u[:, ::-1], atom
    return c, None
