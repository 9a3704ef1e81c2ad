"""Dispersion-corrected DFT lattice energies by a two-body fragment expansion (fidelity 2).

The lattice energy per molecule of a crystal with Z molecules per cell is expanded in
pair interactions (the many-body expansion truncated at two bodies, as in e.g.
Beran, Chem. Rev. 116, 5567 (2016)):

    E_latt = (1/Z) sum_{i in cell} (1/2) sum_{J != i, d(i,J) < cutoff} E_int(i, J) + E_D3,latt

* ``E_int(i, J) = E_DFT(iJ) - E_DFT(i) - E_DFT(J)`` is the DFT interaction energy of the
  dimer made of molecule i of the cell and molecule J (any molecule of the crystal,
  with its lattice translation), both at their crystal geometries (rigid molecules),
  counterpoise-corrected by default (Boys & Bernardi, Mol. Phys. 19, 553 (1970): the
  monomers in the dimer basis). ``d(i, J)`` is the closest interatomic contact
  (``cutoff_mode="contact"``, default) or the centre-of-mass distance (``"com"``).
* Dimers related by a crystal symmetry are computed once: two dimers are equivalent
  when their sorted lists of intermolecular atom-atom distances (with element labels)
  agree within 2e-3 A; the energy of a class counts with its multiplicity.
* ``E_D3,latt = E_D3(crystal)/Z - <E_D3(molecule)>`` is Grimme's D3 dispersion with
  Becke-Johnson damping (Grimme, Ehrlich & Goerigk, J. Comput. Chem. 32, 1456 (2011);
  parameters for the chosen functional from the ``dftd3`` package, three-body ATM
  term included) summed over the whole periodic crystal, so dispersion has no cutoff.

Beyond the cutoff, exchange repulsion is negligible but electrostatics is not: for
polar molecules the point-charge interaction of the omitted pairs is tens of kJ/mol and
depends on the packing (formamide: the two-body energy of one structure moves by up to
18 kJ/mol between 3.0 and 3.5 A cutoffs). As in the hybrid many-body interaction method
(HMBI; Beran & Nanda, J. Phys. Chem. Lett. 1, 3480 (2010)) those pairs are taken from a
classical model, here RESP point charges summed by Ewald
(:func:`long_range_electrostatics_kjmol`, on by default, ``long_range=False`` to leave
it out; with it the RMS change between 3.0 and 3.5 A cutoffs on our formamide landscape
fell from 10.0 to 3.7 kJ/mol). Three-body DFT terms are not included. By default
(``gas="rigid"``) molecules keep their crystal
geometry and the molecular deformation energy is left out; ``gas="relaxed"`` adds it
from a gas-phase DFT relaxation (geomeTRIC), as needed to compare with X23.

SCF economy (the point of the fragment scheme on a laptop; ``scf_guess="auto"``, the
default, :mod:`sim_backends.scf_guess`): each monomer SCF is done once per structure and
starts from the worker's converged density of the same rigid molecule rotated into place
(one default-guess monomer SCF per worker and landscape; with counterpoise and rigid
molecules an identical copy needs no SCF at all, ``ScfSettings.reuse_monomers``); every
dimer and its counterpoise monomers start from the nearest converged dimer of the same
pair type this worker has seen (:class:`~sim_backends.scf_guess.DimerReferences`, each
molecule's block carried into place with its own rigid fit) when one is within
``MAX_DIMER_RMSD_A``, else the dimer from the superposition of its monomer density
matrices (block-diagonal in the dimer AO basis) and each counterpoise monomer from its
monomer density padded with zeros (or its exchanged partner's), optionally with
second-order SCF for the dimers (``newton=True``, PySCF's co-iterative
augmented-Hessian solver; ``"auto"``: only from a guess already near convergence).
Warm-started SCFs skip PySCF's extra check cycle after convergence. ``scf_guess="default"`` starts every SCF from PySCF's default
(minao) guess. A guess that is unusable or does not converge falls back to the default
guess. Guess, solver, SCF cycles, Fock builds, wall and CPU times are recorded for every
SCF (``extra["dimers"][n]["scf"]``, ``extra["monomers"][k]["scf"]``, totals and
fallbacks in ``extra``). Density fitting (def2-universal-jkfit)
is used throughout unless ``density_fit=False``. An unconverged SCF raises :class:`RunError` ("SCF ...").

PySCF and dftd3 are imported inside functions so importing this module stays cheap.

Over 500 lines on purpose: dimer enumeration, the SCF settings, the counterpoise dimer and
monomer SCFs and the backend are one fragment-DFT protocol whose parts must agree on
settings and caching (what the agent needs without DFT is in fragment_terms.py).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sim_backends import params as check
from sim_backends.base import Backend, EvalInput, RunError, SetupError
from sim_backends.scf_guess import (
    ACCEPT_GRAD_FACTOR,
    DIMERS,
    EXACT_GUESSES,
    IDENTICAL_MONOMER_RMSD_A,
    IDENTICAL_RMSD_A,
    REFERENCES,
    DimerReferences,
    MonomerReferences,
    solve,
    swapped_partner_density,
)
from sim_backends.structures import HARTREE_TO_KJMOL, Crystal, load_crystal
from sim_backends.validity import check_crystal_energy_result, check_structure_facts, structure_facts

if TYPE_CHECKING:
    import numpy as np
    from ase import Atoms

    from sim_backends.density_model import DensityCorrectionModel

#: two dimers are symmetry-equivalent if their sorted distance lists agree within this (A)
DIMER_MATCH_TOL_A = 2e-3
#: bohr per angstrom
ANGSTROM_TO_BOHR = 1.0 / 0.52917721090


@dataclass(frozen=True)
class Dimer:
    """Molecule ``i`` of the cell and molecule ``j`` translated by ``shift`` (lattice units).

    Attributes:
        i, j: molecule indices in the cell (0..Z-1).
        shift: integer lattice translation of molecule j, (3,).
        contact_A: closest interatomic distance between the two molecules (A).
        com_A: centre-of-mass distance (A).
    """

    i: int
    j: int
    shift: tuple[int, int, int]
    contact_A: float
    com_A: float


def enumerate_dimers(crystal: Crystal, cutoff_A: float, cutoff_mode: str = "contact") -> list[Dimer]:
    """All dimers (i, J) with molecule i in the cell and J within the cutoff.

    Args:
        crystal: crystal with whole molecules (:func:`~sim_backends.structures.load_crystal`).
        cutoff_A: distance cutoff (A).
        cutoff_mode: "contact" (closest atom-atom distance) or "com" (centres of mass).

    Returns:
        Every ordered dimer; each unordered pair of the infinite crystal appears twice
        per Z cell molecules, hence the factor 1/2 in the lattice sum.
    """
    import numpy as np

    if cutoff_mode not in ("contact", "com"):
        raise SetupError(f"cutoff_mode must be 'contact' or 'com', not {cutoff_mode!r}")
    if not 0.0 < cutoff_A <= 30.0:
        raise SetupError(f"cutoff_A={cutoff_A} outside (0, 30] A")
    atoms = crystal.atoms
    cell = atoms.cell.array
    pos = [atoms.positions[g] for g in crystal.groups]
    masses = atoms.get_masses()
    com = [masses[g] @ atoms.positions[g] / masses[g].sum() for g in crystal.groups]
    radius = max(float(np.linalg.norm(p - c, axis=1).max()) for p, c in zip(pos, com))
    # largest centre-of-mass distance a selected dimer can have
    reach = cutoff_A + 2 * radius if cutoff_mode == "contact" else cutoff_A
    volume = abs(np.linalg.det(cell))
    widths = [volume / np.linalg.norm(np.cross(cell[(k + 1) % 3], cell[(k + 2) % 3])) for k in range(3)]
    n_max = [int(np.ceil(reach / w)) + 1 for w in widths]
    dimers = []
    for shift in itertools.product(*(range(-n, n + 1) for n in n_max)):
        t = np.asarray(shift) @ cell
        for i in range(crystal.z):
            for j in range(crystal.z):
                if i == j and not any(shift):
                    continue
                d_com = float(np.linalg.norm(com[j] + t - com[i]))
                if d_com > reach:
                    continue
                diff = pos[i][:, None, :] - (pos[j] + t)[None, :, :]
                contact = float(np.sqrt((diff**2).sum(-1)).min())
                if (contact if cutoff_mode == "contact" else d_com) < cutoff_A:
                    dimers.append(Dimer(i, j, tuple(int(s) for s in shift), contact, d_com))
    return dimers


def dimer_atoms(crystal: Crystal, dimer: Dimer) -> Atoms:
    """The dimer as non-periodic ``Atoms``: molecule i's atoms, then molecule J's."""
    import numpy as np

    a = crystal.molecule(dimer.i)
    b = crystal.molecule(dimer.j)
    b.positions = b.positions + np.asarray(dimer.shift) @ crystal.atoms.cell.array
    return a + b


def _fingerprint(crystal: Crystal, dimer: Dimer) -> tuple[tuple[str, ...], np.ndarray]:
    import numpy as np

    d = dimer_atoms(crystal, dimer)
    n_a = len(crystal.groups[dimer.i])
    sym = d.get_chemical_symbols()
    dist = np.linalg.norm(d.positions[:n_a, None] - d.positions[None, n_a:], axis=-1)
    labels = ["-".join(sorted((sym[a], sym[n_a + b]))) for a in range(n_a) for b in range(len(d) - n_a)]
    order = np.lexsort((dist.ravel(), labels))
    return tuple(labels[k] for k in order), dist.ravel()[order]


def unique_dimers(crystal: Crystal, dimers: list[Dimer],
                  class_of: list[int] | None = None) -> list[tuple[Dimer, int]]:
    """Group symmetry-equivalent dimers; returns (representative, multiplicity) pairs.

    The multiplicities add up to ``len(dimers)``; representatives are ordered by
    closest contact. If ``class_of`` is a list, it is filled with the index (into the
    returned list) of each dimer's class, in the order of ``dimers``.
    """
    import numpy as np

    classes: list[list[Any]] = []  # [labels, distances, representative, count]
    labels_of = [0] * len(dimers)
    order = sorted(range(len(dimers)), key=lambda k: (dimers[k].contact_A, dimers[k].i,
                                                      dimers[k].j, dimers[k].shift))
    for k in order:
        dimer = dimers[k]
        labels, dist = _fingerprint(crystal, dimer)
        for ci, c in enumerate(classes):
            if c[0] == labels and np.max(np.abs(c[1] - dist)) < DIMER_MATCH_TOL_A:
                c[3] += 1
                labels_of[k] = ci
                break
        else:
            labels_of[k] = len(classes)
            classes.append([labels, dist, dimer, 1])
    if class_of is not None:
        class_of[:] = labels_of
    return [(c[2], c[3]) for c in classes]


def d3_energy_hartree(atoms: Atoms, functional: str) -> float:
    """D3(BJ) dispersion energy (Hartree) of a molecule or periodic cell (ATM included).

    Raises:
        SetupError: if dftd3 has no BJ parameters for ``functional``.
    """
    import numpy as np
    from dftd3.interface import DispersionModel, RationalDampingParam

    try:
        param = RationalDampingParam(method=functional)
    except Exception as exc:  # noqa: BLE001 - dftd3 raises RuntimeError/ValueError
        raise SetupError(f"no D3(BJ) parameters for functional {functional!r}: {exc}") from None
    periodic = bool(atoms.pbc.any())
    model = DispersionModel(
        atoms.numbers,
        atoms.positions * ANGSTROM_TO_BOHR,
        lattice=atoms.cell.array * ANGSTROM_TO_BOHR if periodic else None,
        periodic=np.array([True] * 3) if periodic else None,
    )
    return float(model.get_dispersion(param, grad=False)["energy"])


def d3_lattice_kjmol(crystal: Crystal, functional: str) -> tuple[float, float]:
    """Periodic D3(BJ) lattice term E_D3(cell)/Z - <E_D3(molecule)> (kJ/mol per molecule),
    and the mean molecular D3 energy (Hartree) it subtracts."""
    import numpy as np

    e_mol = float(np.mean([d3_energy_hartree(crystal.molecule(k), functional) for k in range(crystal.z)]))
    return (d3_energy_hartree(crystal.atoms, functional) / crystal.z - e_mol) * HARTREE_TO_KJMOL, e_mol


@dataclass
class ScfSettings:
    """Settings of every SCF in one lattice-energy evaluation.

    Attributes:
        functional: PySCF xc name (e.g. "pbe", "b3lyp"); also selects D3(BJ) parameters.
        basis: Gaussian basis set name (e.g. "def2-svp", "6-31g*", "sto-3g").
        max_cycles: SCF iteration limit (macro-iterations for ``newton``).
        conv_tol: SCF energy convergence (Hartree); 1e-8 keeps E_int converged to
            ~0.01 kJ/mol.
        grid_level: PySCF DFT grid level (0-9).
        newton: second-order SCF for dimers (starting from their warm guess); "auto":
            only when the guess's SCF error is below
            :data:`~sim_backends.scf_guess.NEWTON_MAX_GRAD` (decided per SCF).
        scf_guess: "auto" (warm starts, see the module docstring), "learned" (as "auto",
            with dimers and counterpoise monomers first guessed by the learned density
            model, :mod:`sim_backends.density_model`, when it has a training dimer near
            enough) or "default" (PySCF's minao guess for every SCF).
        reuse_dimers: with warm starts, start dimers and counterpoise monomers from the
            nearest converged dimer of the same pair type
            (:class:`~sim_backends.scf_guess.DimerReferences`) when one is close enough.
        accept_exact: with warm starts, take a guess that is an image of a converged
            density (rotated monomer reference, exchanged counterpoise partner) as
            converged after one Fock build when its SCF error is below
            ``ACCEPT_GRAD_FACTOR * sqrt(conv_tol)``. Off by default: on a coarse
            grid (level 0) the quadrature is not rotation invariant and such images
            miss that bar (SCF error 1e-4 to 4e-3 a.u. for formic acid).
        reuse_monomers: with warm starts, counterpoise and rigid molecules, a monomer
            identical to the stored reference up to an orthogonal map
            (:data:`~sim_backends.scf_guess.IDENTICAL_MONOMER_RMSD_A`) gets no SCF: its
            density is the reference's rotated into place (it only seeds guesses; the
            counterpoise interaction energies do not contain monomer energies) and its
            recorded energy is the reference's, which differs from an SCF in the new
            orientation by the grid's orientation error (grid level 0, formic acid:
            up to 5e-4 Eh), as does the uncorrected E_int behind ``bsse_kjmol``.
        conv_check: PySCF's extra SCF cycle after convergence (one more Fock build);
            None: on for default-guess SCFs, off with warm starts.
        density_fit: density fitting of the Coulomb term (def2-universal-jkfit). For
            dimers of very small molecules (<~120 basis functions) in-core exact
            four-centre integrals are faster on one thread (PBE/def2-SVP formamide
            dimer: 1.7 vs 2.5 CPU s per SCF) and remove the fitting error (0.06 kJ/mol
            in that dimer's interaction energy).
    """

    functional: str = "pbe"
    basis: str = "def2-svp"
    max_cycles: int = 100
    conv_tol: float = 1e-8
    grid_level: int = 2
    newton: bool | str = False
    density_fit: bool = True
    scf_guess: str = "auto"
    reuse_dimers: bool = True
    accept_exact: bool = False
    reuse_monomers: bool = True
    conv_check: bool | None = None


def run_scf(atoms: Atoms, s: ScfSettings, dm0: np.ndarray | None = None,
            ghost: list[int] | None = None, newton: bool = False, what: str = "",
            share: dict[str, Any] | None = None, keep_mf: bool = False,
            guess: str = "given", solver: str | None = None) -> dict[str, Any]:
    """One closed-shell Kohn-Sham SCF with density fitting.

    Args:
        atoms: molecule or dimer (non-periodic), Angstrom.
        s: SCF settings.
        dm0: initial density matrix (n_ao, n_ao) or None for PySCF's default
            (minao superposition of atomic densities), or a callable
            ``dm0(mol) -> (density or None, guess label)`` given the PySCF molecule.
        ghost: indices of atoms that carry basis functions only (counterpoise).
        newton: use second-order SCF.
        what: label for error messages.
        share: optional dict shared by SCFs in the same atomic-orbital basis (a dimer
            and its counterpoise monomers, whose ghost atoms carry the same functions
            in the same order): the first call stores its integration grid and, without
            density fitting, its in-core electron-repulsion integrals there; later calls
            reuse them. The counterpoise monomers then use exactly the dimer's
            quadrature, so grid errors cancel in the interaction energy.
        keep_mf: also return the converged PySCF SCF object as ``"mf"`` (its
            Fock matrix, overlap and orbitals; :mod:`sim_backends.transfer`).
        guess: label of ``dm0`` in the SCF record (e.g. "rotated_reference").
        solver: "diis", "newton" or "auto" (:func:`sim_backends.scf_guess.solve`);
            None: "newton" if ``newton`` else "diis". A guess that is unusable or does
            not converge falls back to the default guess (recorded).

    Returns:
        ``{"energy_hartree", "n_cycles", "wall_s", "cpu_s", "dm", "n_ao", "scf"}`` ("scf":
        the record of :func:`sim_backends.scf_guess.solve`: guess, solver, cycles, Fock
        builds, fallback; cpu_s is
        this process's CPU time, a fairer cost measure on a shared machine).

    Raises:
        SetupError: basis or functional unknown, odd electron count.
        RunError: SCF not converged within ``s.max_cycles``.
    """
    from pyscf import dft, gto

    ghost_set = set(ghost or [])
    atom = [(("ghost-" if k in ghost_set else "") + sym, tuple(p))
            for k, (sym, p) in enumerate(zip(atoms.get_chemical_symbols(), atoms.positions))]
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        mol = gto.M(atom=atom, basis=s.basis, unit="Angstrom", charge=0, spin=0, verbose=0)
    except Exception as exc:  # noqa: BLE001 - PySCF raises several types for bad basis/spin
        raise SetupError(f"PySCF cannot build {what} with basis {s.basis!r}: "
                         f"{' '.join(str(exc).split())[:120]}") from None
    try:
        mf = dft.RKS(mol, xc=s.functional)
        if s.density_fit:
            mf = mf.density_fit()
    except Exception as exc:  # noqa: BLE001
        raise SetupError(f"unknown functional {s.functional!r}: {exc}") from None
    mf.grids.level = int(s.grid_level)
    if share is not None and "grids" in share:
        mf.grids = share["grids"]
    if share is not None and "eri" in share and not s.density_fit:
        mf._eri = share["eri"]
    mf.conv_tol = float(s.conv_tol)
    mf.max_cycle = int(s.max_cycles)
    mf.conv_check = s.conv_check if s.conv_check is not None else s.scf_guess == "default"
    if callable(dm0):
        dm0, guess = dm0(mol)
    accept_tol = ACCEPT_GRAD_FACTOR * float(s.conv_tol) ** 0.5 if s.accept_exact and guess in EXACT_GUESSES else None
    try:
        mf, scf_rec = solve(mf, dm0, guess=guess, solver=solver or ("newton" if newton else "diis"),
                            what=what, accept_tol=accept_tol)
    except KeyError as exc:
        raise SetupError(f"unknown functional {s.functional!r} ({exc})") from None
    energy = scf_rec["energy_hartree"]
    if not mf.converged:
        raise RunError(f"SCF of {what} not converged in {scf_rec['cycles']} cycles (max_cycles={s.max_cycles})")
    if share is not None:
        base = getattr(mf, "_scf", mf)  # the newton() wrapper keeps the SCF object in _scf
        share.setdefault("grids", base.grids)
        if not s.density_fit and getattr(base, "_eri", None) is not None:
            share.setdefault("eri", base._eri)
    out = {"energy_hartree": float(energy), "n_cycles": scf_rec["cycles"],
           "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
           "dm": mf.make_rdm1(), "n_ao": int(mol.nao), "scf": scf_rec}
    if keep_mf:
        out["mf"] = mf
    return out


def _scf_record(res: dict[str, Any]) -> dict[str, Any]:
    """The SCF record of a :func:`run_scf` result without its energy (kept elsewhere)."""
    return {k: v for k, v in res["scf"].items() if k not in ("energy_hartree", "converged")}


def monomer_scf(atoms: Atoms, s: ScfSettings, what: str = "monomer",
                references: MonomerReferences | None = None, reuse: bool = False) -> dict[str, Any]:
    """:func:`run_scf` of a molecule from this worker's converged density of a rigid copy.

    The first molecule of given elements and SCF settings is converged from PySCF's
    default guess and stored in :data:`sim_backends.scf_guess.REFERENCES` in its own
    frame; every later copy (any orientation, mirror images included, atoms in the same
    order) starts from that density rotated into place. ``references``: another store
    than the worker's. ``reuse``: a copy identical to the reference up to an orthogonal
    map gets no SCF (guess "reused_reference", 0 Fock builds): the reference's energy
    and its density rotated into place (see ``ScfSettings.reuse_monomers``).
    """
    refs = REFERENCES if references is None else references
    key = (tuple(atoms.get_chemical_symbols()), s.functional.lower(), s.basis.lower(),
           int(s.grid_level), bool(s.density_fit), float(s.conv_tol))

    def guess(mol: Any) -> tuple[Any, str]:
        hit = refs.lookup(key, mol, atoms.positions)
        return (None, "minao") if hit is None else (hit[0], "rotated_reference")

    if reuse:
        from pyscf import gto

        t0, c0 = time.perf_counter(), time.process_time()
        mol = gto.M(atom=[(sym, tuple(p)) for sym, p in zip(atoms.get_chemical_symbols(), atoms.positions)],
                    basis=s.basis, unit="Angstrom", verbose=0)
        hit = refs.lookup(key, mol, atoms.positions)
        if hit is not None and hit[1] <= IDENTICAL_MONOMER_RMSD_A and hit[2] is not None:
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            rec = {"what": what, "guess": "reused_reference", "solver": "none", "cycles": 0, "fock_builds": 0,
                   "fit_rmsd_A": float(hit[1]), "wall_s": round(wall, 4), "cpu_s": round(cpu, 4)}
            return {"energy_hartree": float(hit[2]), "n_cycles": 0, "wall_s": wall, "cpu_s": cpu,
                    "dm": hit[0], "n_ao": int(mol.nao), "scf": rec}
    res = run_scf(atoms, s, dm0=guess, what=what)
    if res["scf"]["guess"] == "minao":
        refs.store(key, atoms.positions, res["dm"], res["energy_hartree"])
    return res


def relax_molecule(atoms: Atoms, s: ScfSettings, max_steps: int = 60) -> tuple[Atoms, dict[str, Any]]:
    """Relax an isolated molecule at the DFT level (no dispersion) with geomeTRIC.

    geomeTRIC (Wang & Song, J. Chem. Phys. 144, 214108 (2016)) in translation-rotation
    internal coordinates, driven through PySCF's ``geometric_solver``.

    Args:
        atoms: the molecule (Angstrom), e.g. its crystal geometry.
        s: SCF settings (functional, basis, grid, ...).
        max_steps: optimiser step limit.

    Returns:
        ``(relaxed, info)``; info has ``energy_hartree``, ``converged``, ``wall_s``.

    Raises:
        RunError: the optimisation did not converge or an SCF on the way failed.
    """
    import contextlib
    import io

    from pyscf import dft, gto
    from pyscf.geomopt.geometric_solver import kernel as geometric_kernel

    t0 = time.perf_counter()
    mol = gto.M(atom=list(zip(atoms.get_chemical_symbols(), map(tuple, atoms.positions))),
                basis=s.basis, unit="Angstrom", verbose=0)
    mf = dft.RKS(mol, xc=s.functional).density_fit()
    mf.grids.level = int(s.grid_level)
    mf.conv_tol = float(s.conv_tol)
    mf.max_cycle = int(s.max_cycles)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            converged, mol_eq = geometric_kernel(mf, maxsteps=int(max_steps))
    except Exception as exc:  # noqa: BLE001 - geomeTRIC/PySCF raise assorted errors
        raise RunError(f"gas-phase DFT relaxation failed: {' '.join(str(exc).split())[:120]}") from None
    if not converged:
        raise RunError(f"gas-phase DFT relaxation not converged in {max_steps} steps")
    relaxed = atoms.copy()
    relaxed.positions = mol_eq.atom_coords(unit="Angstrom")
    res = run_scf(relaxed, s, what="relaxed gas molecule")
    return relaxed, {"energy_hartree": res["energy_hartree"], "converged": True,
                     "wall_s": time.perf_counter() - t0}


#: e^2 / (4 pi eps0) in kJ/mol A
COULOMB_KJMOL_A = 1389.35457


def molecule_resp_charges(crystal: Crystal) -> np.ndarray:
    """RESP point charges (e) of molecule 0 of a crystal, HF/6-31G* ESP fit, (n_mol_atoms,).

    The force field's charge model (:func:`sim_backends.csp.charges.compute_charges`;
    Bayly et al., J. Phys. Chem. 97, 10269 (1993)). The molecule is first put in its
    principal-axes frame so that the on-disk cache serves the same molecule in every
    orientation (every structure of a CSP landscape).
    """
    import numpy as np

    from sim_backends.csp.charges import compute_charges

    mol = crystal.molecule(0)
    xyz = mol.positions - mol.get_center_of_mass()
    _, axes = np.linalg.eigh(xyz.T @ (xyz * mol.get_masses()[:, None]))
    frame = xyz @ axes
    frame *= np.where(np.sum(frame**3, axis=0) < 0.0, -1.0, 1.0)  # fix the axis signs
    return compute_charges(mol.get_chemical_symbols(), frame, method="resp").charges_e


def long_range_electrostatics_kjmol(crystal: Crystal, charges_e: np.ndarray, cutoff_A: float,
                                    cutoff_mode: str = "contact",
                                    dimers: list[Dimer] | None = None) -> dict[str, float]:
    """Point-charge electrostatics of the pairs beyond the dimer cutoff (kJ/mol per molecule).

    The HMBI-style long-range term (see the module docstring):

        E_lr = E_elec(crystal, Ewald)/Z - (1/Z) sum_{(i,J) within cutoff} (1/2) E_elec(i, J)

    E_elec(crystal) is the intermolecular Ewald energy (pymatgen ``EwaldSummation``,
    tin-foil boundary) minus the intramolecular pairs of the home cell; the second sum
    runs over exactly the dimers of the two-body DFT sum (:func:`enumerate_dimers`).

    Args:
        crystal: crystal with whole molecules, all in the atom order of the charges.
        charges_e: charges of one molecule, (n_mol_atoms,), e; they must sum to ~0.
        cutoff_A, cutoff_mode: the dimer cutoff of the DFT two-body sum.
        dimers: :func:`enumerate_dimers` of the crystal with that cutoff, when the caller
            already has them.

    Returns:
        ``{"e_elec_lr_kjmol", "e_elec_pc_total_kjmol", "e_elec_pc_within_kjmol"}``.

    Raises:
        SetupError: a molecule whose atoms differ from the charges', or charged molecules.
    """
    import numpy as np
    from pymatgen.core import Lattice, Structure
    from pymatgen.core.ewald import EwaldSummation

    charges_e = np.asarray(charges_e, dtype=float)
    if abs(float(charges_e.sum())) > 1e-3:
        raise SetupError(f"long-range electrostatics needs neutral molecules (charges sum to "
                         f"{charges_e.sum():.3f} e)")
    whole, groups = crystal.atoms, crystal.groups
    symbols = np.array(whole.get_chemical_symbols())
    ref = symbols[groups[0]]
    q = np.zeros(len(whole))
    for g in groups:
        if len(g) != len(charges_e) or list(symbols[g]) != list(ref):
            raise SetupError("molecules of the cell differ in atom order; cannot assign point charges")
        q[g] = charges_e
    struct = Structure(Lattice(whole.cell.array), list(symbols), whole.positions,
                       coords_are_cartesian=True, site_properties={"charge": list(q)})
    ev_to_kjmol = 96.48533212
    e_ewald = EwaldSummation(struct, compute_forces=False).total_energy * ev_to_kjmol
    e_intra = 0.0
    for g in groups:
        r = np.linalg.norm(whole.positions[g][:, None] - whole.positions[g][None], axis=-1)
        iu = np.triu_indices(len(g), 1)
        e_intra += COULOMB_KJMOL_A * float((q[g][:, None] * q[g][None])[iu] @ (1.0 / r[iu]))
    e_total = (e_ewald - e_intra) / crystal.z
    e_within = 0.0
    cell = whole.cell.array
    qq = np.outer(charges_e, charges_e)
    for d in dimers if dimers is not None else enumerate_dimers(crystal, cutoff_A, cutoff_mode):
        pa = whole.positions[groups[d.i]]
        pb = whole.positions[groups[d.j]] + np.asarray(d.shift) @ cell
        r = np.linalg.norm(pa[:, None] - pb[None], axis=-1)
        e_within += 0.5 * COULOMB_KJMOL_A * float(np.sum(qq / r))
    e_within /= crystal.z
    return {"e_elec_lr_kjmol": e_total - e_within, "e_elec_pc_total_kjmol": e_total,
            "e_elec_pc_within_kjmol": e_within}


def fragment_lattice_energy(
    crystal: Crystal,
    settings: ScfSettings,
    cutoff_A: float = 4.0,
    cutoff_mode: str = "contact",
    counterpoise: bool = True,
    gas: str = "rigid",
    progress: Any = None,
    long_range_charges_e: np.ndarray | None = None,
    references: MonomerReferences | None = None,
    dimer_references: DimerReferences | None = None,
    density_model: DensityCorrectionModel | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Two-body DFT + periodic D3(BJ) lattice energy (kJ/mol per molecule).

    Args:
        crystal: crystal with whole molecules.
        settings: SCF settings (functional, basis, ...).
        cutoff_A, cutoff_mode: dimer selection, see :func:`enumerate_dimers`.
        counterpoise: Boys-Bernardi counterpoise correction of every dimer (default;
            with def2-SVP the BSSE is 9-16 kJ/mol per hydrogen-bonded urea dimer and
            ~50 kJ/mol per molecule in the urea lattice energy, see
            benchmarks/dft_crystal_timing.py). Costs two more SCFs per dimer.
        gas: "rigid" (molecules at their crystal geometry; no deformation energy) or
            "relaxed" (adds E_def = <E(molecule in crystal)> - E(relaxed gas molecule),
            from a DFT relaxation of molecule 0 with :func:`relax_molecule`). Only
            meaningful when the crystal geometry comes from a similar level: with a
            small basis the bond-length mismatch to e.g. a PBE+TS plane-wave geometry
            dominates E_def (about +50 kJ/mol for CO2 with STO-3G).
        progress: optional callback ``progress(done, total)`` after each dimer.
        long_range_charges_e: point charges of one molecule (n_mol_atoms,), e: adds
            :func:`long_range_electrostatics_kjmol` for the pairs beyond the cutoff
            (``None``: no long-range term, ``e_elec_lr_kjmol`` = 0).
        references: monomer densities for warm starts (default: the worker's
            :data:`~sim_backends.scf_guess.REFERENCES`).
        dimer_references: converged dimers for nearest-dimer warm starts (default: the
            worker's :data:`~sim_backends.scf_guess.DIMERS`; used with
            ``settings.reuse_dimers``).
        density_model: with ``settings.scf_guess="learned"``, the model that guesses
            dimers and counterpoise monomers and learns from every converged dimer
            (default: the worker's :data:`~sim_backends.density_model.MODEL`).

    Returns:
        ``(values, extra)``: values ``energy_kjmol`` (total), ``e_dft_2body_kjmol``,
        ``e_d3_kjmol``, ``e_deformation_kjmol`` (0 for rigid), ``e_elec_lr_kjmol``; extra with per-dimer
        records (multiplicity, distances, E_int, BSSE, SCF cycles, wall and CPU time),
        monomer records and notes.
    """
    import numpy as np
    from scipy.linalg import block_diag

    if gas not in ("rigid", "relaxed"):
        raise SetupError(f"gas must be 'rigid' or 'relaxed', not {gas!r}")
    dimers = enumerate_dimers(crystal, cutoff_A, cutoff_mode)
    # cheap and able to fail on bad input: before any SCF
    lr = ({"e_elec_lr_kjmol": 0.0} if long_range_charges_e is None else
          long_range_electrostatics_kjmol(crystal, long_range_charges_e, cutoff_A, cutoff_mode, dimers))
    classes = unique_dimers(crystal, dimers)
    monomers: dict[int, dict[str, Any]] = {}

    warm = settings.scf_guess in ("auto", "learned")
    dimer_refs = DIMERS if dimer_references is None else dimer_references
    model = None
    if settings.scf_guess == "learned":
        from sim_backends.density_model import MODEL

        model = MODEL if density_model is None else density_model
    dimer_solver = "auto" if settings.newton == "auto" else None

    def monomer(k: int) -> dict[str, Any]:
        if k not in monomers:
            monomers[k] = (monomer_scf(crystal.molecule(k), settings, f"monomer {k}", references,
                                       reuse=settings.reuse_monomers and counterpoise and gas == "rigid") if warm
                           else run_scf(crystal.molecule(k), settings, what=f"monomer {k}"))
        return monomers[k]

    records = []
    e_2body_hartree = 0.0
    for n_done, (dimer, mult) in enumerate(classes):
        atoms = dimer_atoms(crystal, dimer)
        ma, mb = monomer(dimer.i), monomer(dimer.j)
        n_a = len(crystal.groups[dimer.i])
        dm0 = block_diag(ma["dm"], mb["dm"]) if warm else None
        near: dict[str, Any] = {}
        dimer_key = (tuple(atoms.get_chemical_symbols()), settings.functional.lower(), settings.basis.lower(),
                     int(settings.grid_level), bool(settings.density_fit), float(settings.conv_tol))

        def guess_dimer(mol: Any, atoms: Atoms = atoms, n_a: int = n_a, dm0: Any = dm0,
                        near: dict[str, Any] = near, key: tuple = dimer_key) -> tuple[Any, str]:
            near["mol"] = mol
            if model is not None:
                learned = model.predict(key, mol, atoms.positions, n_a, ma["dm"], mb["dm"])
                if learned is not None:
                    near.update(learned[0], rmsd_A=learned[1], label="learned")
                    return learned[0]["dimer"], "learned"
            hit = dimer_refs.lookup(key, mol, atoms.positions, n_a) if settings.reuse_dimers else None
            if hit is None:
                return dm0, "monomer_superposition"
            near.update(hit[0], rmsd_A=hit[1], label="identical_dimer" if hit[1] < IDENTICAL_RMSD_A
                        else "nearest_dimer")
            return hit[0]["dimer"], near["label"]

        share: dict[str, Any] = {}
        res = run_scf(atoms, settings, dm0=guess_dimer if warm else None, newton=bool(settings.newton),
                      what=f"dimer {n_done}", share=share, solver=dimer_solver)
        if "rmsd_A" in near:
            res["scf"]["nearest_rmsd_A"] = round(near["rmsd_A"], 4)
        e_int = res["energy_hartree"] - ma["energy_hartree"] - mb["energy_hartree"]
        rec = {
            "i": dimer.i, "j": dimer.j, "shift": list(dimer.shift),
            "multiplicity": mult, "contact_A": round(dimer.contact_A, 4),
            "com_A": round(dimer.com_A, 4), "scf_cycles": res["n_cycles"],
            "scf_wall_s": round(res["wall_s"], 3), "scf_cpu_s": round(res["cpu_s"], 3),
            "n_ao": res["n_ao"], "scf": [_scf_record(res)],
        }
        if counterpoise:
            ghost_b = list(range(n_a, len(atoms)))
            ghost_a = list(range(n_a))
            # the monomer density padded with zeros on the ghost functions is an
            # excellent start for the monomer in the dimer basis
            # (or the nearest stored dimer's counterpoise monomer, carried into place)
            zero_b = np.zeros_like(mb["dm"])
            guess_a = ((near["cp_a"], near["label"]) if "cp_a" in near
                       else (block_diag(ma["dm"], zero_b), "padded_monomer"))
            ea = run_scf(atoms, settings, dm0=guess_a[0] if warm else None,
                         ghost=ghost_b, guess=guess_a[1],
                         what=f"dimer {n_done} CP monomer A", share=share)

            def guess_b(mol: Any, ea: dict[str, Any] = ea, mb: dict[str, Any] = mb,
                        atoms: Atoms = atoms, n_a: int = n_a) -> tuple[Any, str]:
                # a dimer that a symmetry operation turns around: B's SCF is A's moved
                partner = swapped_partner_density(mol, atoms.positions, n_a, ea["dm"])
                if partner is not None:
                    return partner, "exchanged_partner"
                if "cp_b" in near:
                    return near["cp_b"], near["label"]
                return block_diag(np.zeros((ea["n_ao"] - mb["dm"].shape[0],) * 2), mb["dm"]), "padded_monomer"

            eb = run_scf(atoms, settings, dm0=guess_b if warm else None, ghost=ghost_a,
                         what=f"dimer {n_done} CP monomer B", share=share)
            rec["scf"] += [_scf_record(ea), _scf_record(eb)]
            e_cp = res["energy_hartree"] - ea["energy_hartree"] - eb["energy_hartree"]
            rec["bsse_kjmol"] = (e_cp - e_int) * HARTREE_TO_KJMOL
            # with a reused monomer energy (no SCF in this orientation) the BSSE carries the
            # grid's orientation error; the counterpoise e_int does not contain monomer energies
            rec["bsse_from_reused_monomer"] = any(m["scf"].get("guess") == "reused_reference" for m in (ma, mb))
            rec["cp_wall_s"] = round(ea["wall_s"] + eb["wall_s"], 3)
            e_int = e_cp
        if model is not None:
            model.add(dimer_key, near["mol"], atoms.positions, n_a, ma["dm"], mb["dm"], {"dimer": res["dm"], **(
                {"cp_a": ea["dm"], "cp_b": eb["dm"]} if counterpoise else {})})
        if warm and settings.reuse_dimers:
            dimer_refs.store(dimer_key, atoms.positions, n_a, {"dimer": res["dm"], **(
                {"cp_a": ea["dm"], "cp_b": eb["dm"]} if counterpoise else {})})
        rec["e_int_kjmol"] = e_int * HARTREE_TO_KJMOL
        rec["e_d3_pair_kjmol"] = (
            d3_energy_hartree(atoms, settings.functional)
            - d3_energy_hartree(crystal.molecule(dimer.i), settings.functional)
            - d3_energy_hartree(crystal.molecule(dimer.j), settings.functional)
        ) * HARTREE_TO_KJMOL
        e_2body_hartree += 0.5 * mult * e_int
        records.append(rec)
        if progress is not None:
            progress(n_done + 1, len(classes))

    z = crystal.z
    e_dft = e_2body_hartree / z * HARTREE_TO_KJMOL
    e_d3, e_d3_mol = d3_lattice_kjmol(crystal, settings.functional)
    e_d3_within = sum(0.5 * r["multiplicity"] * r["e_d3_pair_kjmol"] for r in records) / z
    e_def = 0.0
    gas_info = None
    if gas == "relaxed":
        # geometry relaxed without D3 (intramolecular D3 changes little for small rigid
        # molecules); energies on both sides with D3
        e_in_crystal = np.mean([monomer(k)["energy_hartree"] for k in range(z)]) + e_d3_mol
        relaxed, gas_info = relax_molecule(crystal.molecule(0), settings)
        e_gas = gas_info["energy_hartree"] + d3_energy_hartree(relaxed, settings.functional)
        e_def = (e_in_crystal - e_gas) * HARTREE_TO_KJMOL
    e_lr = float(lr["e_elec_lr_kjmol"])
    values = {"energy_kjmol": e_dft + e_d3 + e_def + e_lr, "e_dft_2body_kjmol": e_dft, "e_d3_kjmol": e_d3,
              "e_deformation_kjmol": e_def, "e_elec_lr_kjmol": e_lr}
    extra = {
        "z": z,
        "n_dimers": len(dimers),
        "n_unique_dimers": len(classes),
        "cutoff_A": cutoff_A,
        "cutoff_mode": cutoff_mode,
        "functional": settings.functional,
        "basis": settings.basis,
        "counterpoise": counterpoise,
        "newton": settings.newton,
        "scf_guess": settings.scf_guess,
        "e_d3_within_cutoff_kjmol": e_d3_within,
        "long_range": {k: float(v) for k, v in lr.items()} if long_range_charges_e is not None else None,
        "long_range_charges_e": ([round(float(x), 5) for x in long_range_charges_e]
                                 if long_range_charges_e is not None else None),
        "gas": gas,
        "gas_relax_wall_s": gas_info["wall_s"] if gas_info else None,
        "monomers": [{"k": k, "energy_hartree": m["energy_hartree"],
                      "energy_source": ("reference in another orientation, no SCF"
                                        if m["scf"].get("guess") == "reused_reference" else "SCF"),
                      "scf_cycles": m["n_cycles"],
                      "scf_wall_s": round(m["wall_s"], 3), "scf_cpu_s": round(m["cpu_s"], 3),
                      "n_ao": m["n_ao"], "scf": _scf_record(m)}
                     for k, m in sorted(monomers.items())],
        "dimers": records,
        "scf_cycles_total": sum(r["scf_cycles"] for r in records)
        + sum(m["n_cycles"] for m in monomers.values()),
        "scf_fock_builds_total": sum(x["fock_builds"] for r in records for x in r["scf"])
        + sum(m["scf"]["fock_builds"] for m in monomers.values()),
        "scf_cpu_s_total": round(sum(x["cpu_s"] for r in records for x in r["scf"])
                                 + sum(m["scf"]["cpu_s"] for m in monomers.values()), 3),
        "scf_fallbacks": [x["what"] + ": " + x["fallback"] for r in records for x in r["scf"]
                          if "fallback" in x]
        + [m["scf"]["what"] + ": " + m["scf"]["fallback"] for m in monomers.values() if "fallback" in m["scf"]],
        "notes": ("rigid molecules (no deformation energy); " if gas == "rigid" else
                  "deformation from a DFT-relaxed gas molecule; ")
        + "DFT two-body within cutoff; D3(BJ)+ATM summed over the whole crystal"
        + ("; RESP point-charge Ewald electrostatics beyond the cutoff" if long_range_charges_e is not None
           else "; no electrostatics beyond the cutoff"),
    }
    return values, extra


def _d3_functional(value: Any) -> None:
    """A functional PySCF knows and dftd3 has D3(BJ) parameters for."""
    check.xc_functional(value)
    from dftd3.interface import RationalDampingParam

    try:
        RationalDampingParam(method=value)
    except Exception:  # noqa: BLE001 - dftd3 raises RuntimeError/ValueError
        raise ValueError(f"{value!r} has no D3(BJ) parameters in dftd3") from None


class DftCrystalBackend(Backend):
    """PBE-D3(BJ) (default) fragment lattice energy, kJ/mol per molecule.

    Params:
        functional ("pbe"), basis ("def2-svp"), cutoff_A (4.0, closest contact),
        cutoff_mode ("contact" | "com"), counterpoise (True), newton (False),
        scf_guess ("auto": warm-started SCFs | "learned": as "auto", dimers and counterpoise
        monomers first from the worker's learned density model
        (:mod:`sim_backends.density_model`), which trains on every converged dimer |
        "default": PySCF's minao guess throughout), density_model (with "learned": the
        campaign's model file, ``runs/<name>/density_model.npz``, filled in by the structure
        stage; merged with the worker's model before and after each evaluation,
        :func:`sim_backends.density_model.sync`),
        gas ("rigid" | "relaxed": add the deformation energy from a DFT-relaxed molecule),
        max_cycles (100), conv_tol (1e-8), grid_level (2), threads (1; PySCF OpenMP
        threads for this evaluation), density_fit (True), long_range (True: RESP
        point-charge electrostatics of the pairs beyond the cutoff, HMBI-style).

    Values: ``energy_kjmol`` (= ``e_dft_2body_kjmol`` + ``e_d3_kjmol`` +
    ``e_deformation_kjmol`` + ``e_elec_lr_kjmol``).
    """

    name = "dft-crystal"
    version = "2"  # 2: long-range point-charge electrostatics on by default
    fidelity = 2
    target = "structure"
    computes = ("energy_kjmol", "e_dft_2body_kjmol", "e_d3_kjmol", "e_deformation_kjmol", "e_elec_lr_kjmol")
    objective_key = "energy_kjmol"
    description = "two-body fragment DFT-D3(BJ) lattice energy (pyscf + dftd3), rigid molecules"
    #: cutoff_A at most 30 A: the dimer count grows with its cube (4 A: tens of dimers)
    params_schema = {
        "functional": _d3_functional, "basis": check.basis_set,
        "cutoff_A": check.number(0.0, 30.0, lo_open=True), "cutoff_mode": check.one_of("contact", "com"),
        "counterpoise": check.boolean, "newton": check.boolean, "max_cycles": check.integer(1),
        "scf_guess": check.one_of("auto", "learned", "default"),
        "conv_tol": check.number(0.0, lo_open=True), "grid_level": check.integer(0, 9),
        "threads": check.integer(1, 1024), "gas": check.one_of("rigid", "relaxed"),
        "density_fit": check.boolean, "long_range": check.boolean, "density_model": check.text,
    }

    def level_of_theory(self, params: dict[str, Any] | None = None) -> str:
        """The level of ``energy_kjmol`` as printed next to it."""
        p = {**self.params, **(params or {})}
        lr = " + RESP long-range electrostatics" if p.get("long_range", True) else ""
        grid = int(p.get("grid_level", ScfSettings.grid_level))
        notes = ([f"grid level {grid}"] if grid != ScfSettings.grid_level else []) + \
            (["no density fitting"] if not p.get("density_fit", ScfSettings.density_fit) else [])
        return (f"fragment {str(p.get('functional', 'pbe')).upper()}-D3(BJ)/"
                f"{str(p.get('basis', 'def2-svp'))} two-body{lr}" + (f" ({', '.join(notes)})" if notes else ""))

    def fragment_terms_settings(self) -> dict[str, Any] | None:
        """The dimer cutoff and functional of the two-body sum (this backend's defaults),
        when the long-range term is on (the energy is then fragment terms + dimers)."""
        p = self.params
        if not bool(p.get("long_range", True)):
            return None
        return {"cutoff_A": float(p.get("cutoff_A", 4.0)),
                "cutoff_mode": str(p.get("cutoff_mode", "contact")),
                "functional": str(p.get("functional", "pbe"))}

    def cost_estimate(self, inp: EvalInput) -> float:
        """Expected CPU seconds: symmetry-unique dimers x the cost of one dimer.

        The fragment scheme's cost is the number of symmetry-unique dimers inside the
        cutoff (a geometry-only count), not the cell size: on our formamide and formic
        acid landscapes (data/landscapes/*_dft) the measured CPU time correlates with
        the unique-dimer count (r = 0.79, 0.98) and not with (atoms per cell)^3 (r =
        -0.12, -0.03). One dimer of urea (16 atoms, def2-SVP, density fitting) costs
        about 16 CPU s without counterpoise, ~2.5x with it
        (benchmarks/dft_crystal_timing.py); the SCF cost is taken as ~n^3 in the
        dimer's atoms. A structure that cannot be read gets the cell-size estimate.
        """
        from sim_backends.xtb_crystal import estimate_cell_atoms

        p = {**self.params, **inp.params}
        cp = 2.5 if p.get("counterpoise", True) else 1.0
        try:
            crystal = load_crystal(inp.structure_cif or "", None)
            dimers = enumerate_dimers(crystal, float(p.get("cutoff_A", 4.0)),
                                      str(p.get("cutoff_mode", "contact")))
            n_unique = len(unique_dimers(crystal, dimers))
            n_mol_atoms = len(crystal.molecule(0))
        except Exception:  # noqa: BLE001 - an estimate must not fail; _evaluate reports errors
            n = estimate_cell_atoms(inp.structure_cif)
            return 82.0 * cp * (n / 16.0) ** 2
        return 16.4 * cp * max(n_unique, 1) * (2 * n_mol_atoms / 16.0) ** 3

    def _evaluate(self, inp: EvalInput) -> tuple[dict[str, float], dict[str, Any]]:
        p = inp.params
        self.check_params(p)
        crystal = load_crystal(inp.structure_cif or "", inp.smiles)
        level = (f"{str(p.get('functional', 'pbe')).upper()}-D3(BJ)/{p.get('basis', 'def2-svp')} "
                 "two-body fragments")
        facts = structure_facts(crystal)
        check_structure_facts(facts, level)  # before any SCF: no DFT on overlapping molecules
        settings = ScfSettings(
            functional=str(p.get("functional", "pbe")),
            basis=str(p.get("basis", "def2-svp")),
            max_cycles=int(p.get("max_cycles", 100)),
            conv_tol=float(p.get("conv_tol", 1e-8)),
            grid_level=int(p.get("grid_level", 2)),
            newton=bool(p.get("newton", False)),
            scf_guess=str(p.get("scf_guess", "auto")),
            density_fit=bool(p.get("density_fit", True)),
        )
        d3_energy_hartree(crystal.molecule(0), settings.functional)  # fail early on bad functional
        charges = molecule_resp_charges(crystal) if bool(p.get("long_range", True)) else None
        from pyscf import lib

        model_path = p.get("density_model") if settings.scf_guess == "learned" else None
        model_info: dict[str, Any] = {}
        if model_path:
            from sim_backends.density_model import MODEL, sync

            before = sync(MODEL, model_path)
            model_info = {"path": str(model_path), "n_train_before": before["n_train"],
                          "load_error": before["error"]}
        old_threads = lib.num_threads()
        lib.num_threads(int(p.get("threads", 1)))
        try:
            values, extra = fragment_lattice_energy(
                crystal, settings, float(p.get("cutoff_A", 4.0)),
                str(p.get("cutoff_mode", "contact")), bool(p.get("counterpoise", True)),
                str(p.get("gas", "rigid")), long_range_charges_e=charges,
            )
        finally:
            lib.num_threads(old_threads)
        if model_path:
            model_info["n_train_after"] = sync(MODEL, model_path)["n_train"]
            extra["density_model"] = model_info
        return values, {**extra, "level": level, "validity": facts}

    def _check_physical(self, values: dict[str, float], extra: dict[str, Any]) -> None:
        """Density, intermolecular contacts and lattice energy in the bounds of
        :mod:`sim_backends.validity`."""
        super()._check_physical(values, extra)
        check_crystal_energy_result(values, extra, self.name)
