"""Atomic point charges for rigid-molecule lattice energies.

``resp``: a restrained electrostatic-potential (RESP-style) fit (Bayly, Cieplak, Cornell &
Kollman, J. Phys. Chem. 97, 10269 (1993)). The molecular ESP is computed with pyscf at
HF/6-31G* (the classic RESP level; its overpolarisation mimics the condensed phase) on
points of four shells at 1.4, 1.6, 1.8 and 2.0 x Bondi van der Waals radii (Merz-Kollman
style, Singh & Kollman, J. Comput. Chem. 5, 129 (1984)), about 1 point per A^2 per shell.
Charges minimise sum_k (V_k - sum_a q_a / r_ka)^2 + a sum_heavy (sqrt(q^2 + b^2) - b) in
atomic units with a = 0.0005, b = 0.1 (the first RESP stage), subject to the total charge
(Lagrange multiplier). The hyperbolic restraint is solved by iterating the linearised
normal equations. Symmetry-equivalent atoms (equal RDKit canonical ranks without tie
breaking) share one charge variable, so they come out exactly equal.

``xtb``: GFN2-xTB Mulliken charges from tblite (Bannwarth, Ehlert & Grimme, J. Chem.
Theory Comput. 15, 1652 (2019)), symmetrised by class averages. Cheap, not fitted to the
ESP; recorded as ``charge_method="xtb-gfn2-mulliken"``.

``resp-lp``: the same RESP fit with extra off-atom charge sites for the lone pairs of the
hydrogen-bond acceptors (:func:`lone_pair_sites`); the charges are returned for the atoms
followed by the sites (length n_atoms + n_sites), and
:class:`~sim_backends.csp.forcefield.LatticeEnergyModel` rebuilds the sites from the
molecule's geometry. Why off-atom sites: atom-centred charges cannot represent the anisotropy
of the charge density around O and N acceptors (the lone pairs), which distributed multipoles
capture (Price et al., DMACRYS, Phys. Chem. Chem. Phys. 12, 8478 (2010); W99 itself was
re-used with DMA multipoles there); lone-pair sites are the point-charge route to the same
anisotropy (Dixon & Kollman, J. Comput. Chem. 18, 1632 (1997)) and keep the charge-charge
pair kernel. Site geometry (NOT fitted to crystal data): 0.35 A from the nucleus, as in the
CHARMM Drude force field (Harder et al., J. Chem. Theory Comput. 2, 1587 (2006); Lopes et
al., J. Chem. Theory Comput. 9, 5430 (2013)): carbonyl-type O (one bonded atom), two sites in
the plane of O=C-X, C-O-site angle 110 deg; hydroxyl/ether O, two tetrahedral sites
(109.5 deg) perpendicular to the X-O-Y plane; pyridine-type N (two bonded atoms, no H) and
nitrile N, one site on the outward bisector/axis; sp3 amine N (three bonded atoms, none of
them unsaturated), one site opposite the bonds. Each site is an affine combination of the
parent atom, its neighbours and their neighbours (so it moves with the molecule); an atom
whose sites this local frame cannot represent (the out-of-plane lone pairs of an OH in a
planar molecule: frames with an rms distance from their best plane below 0.1 A count as
planar, so that a slightly puckered copy of a molecule gets the same sites) gets none. The
restraint applies to heavy atoms and sites alike.

``resp-lpn``: the same with the sites of the N acceptors only (pyridine-type, nitrile and sp3
amine N); O atoms keep their atom-centred charges, so a molecule without such N gets exactly
the ``resp`` charges. The single site of each of a set of symmetry-equivalent atoms shares one
charge variable, as the atoms do; the two sites of a carbonyl O keep their own. Why N only:
``benchmarks/results/NOTES.md`` (stop 40).

Stage messages: a RESP fit that is not in the cache says what it computes, its size (atoms,
basis functions, ESP points), a rough CPU estimate (:func:`resp_cost_estimate`) and the fast
alternative, then the SCF cycles as they go (at most one line per :data:`PROGRESS_EVERY_S`),
as INFO records of the logger ``sim_backends.csp.charges``; ``crystal-agent csp`` prints them
on stderr (:func:`stage_messages`), a library caller sees them where it sends its logging.

Importing this module is cheap: pyscf, tblite and rdkit are imported inside functions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sim_backends.base import RunError, SetupError

#: Bondi van der Waals radii (A), J. Phys. Chem. 68, 441 (1964)
BONDI_RADII_A = {"H": 1.20, "C": 1.70, "N": 1.55, "O": 1.52, "F": 1.47, "S": 1.80, "Cl": 1.75}
BOHR_A = 0.52917721090  # CODATA 2018
RESP_SHELLS = (1.4, 1.6, 1.8, 2.0)
RESP_LEVEL = "HF/6-31G*"
#: distance (A) of an off-atom lone-pair charge site from its nucleus (CHARMM Drude value)
LONE_PAIR_DISTANCE_A = 0.35
#: carbonyl-type O: angle (deg) between the C-O bond (at O) and each lone-pair site
CARBONYL_LP_ANGLE_DEG = 110.0
#: sp3 O: angle (deg) between the two lone-pair sites (tetrahedral)
SP3_LP_ANGLE_DEG = 109.47
#: local frames flatter than this (rms distance from their best plane, A) count as planar
PLANAR_RMS_A = 0.1
#: charge methods :func:`compute_charges` knows
CHARGE_METHODS = ("resp", "resp-lp", "resp-lpn", "xtb")
#: the acceptor elements with lone-pair sites of each charge method that has them
LONE_PAIR_ELEMENTS = {"resp-lp": ("N", "O"), "resp-lpn": ("N",)}
#: CPU seconds of the RESP SCF (RHF/6-31G*, conv_tol 1e-9, pyscf 2.14, one thread) measured
#: for anthracene, 216 basis functions, two-electron integrals held in memory (10 cycles)
RESP_CPU_REF_S = 32.0
RESP_NAO_REF = 216
#: growth of that cost with the number of basis functions: benzene (96) 1.8 s, naphthalene
#: (156) 10.3 s, anthracene 32 s give N^3.5
RESP_CPU_EXPONENT = 3.5
#: extra factor when the integrals do not fit in pyscf's max_memory (direct SCF): tetracene
#: (276 basis functions) took 261 CPU s against 75 s from the in-memory law
RESP_DIRECT_FACTOR = 3.5
#: at most one SCF progress line per this many seconds (wall)
PROGRESS_EVERY_S = 15.0
#: version of the charge fits a cache entry was computed by; part of its key, so a change of
#: the ESP grid, the restraint or the sites (raise it then) never reuses charges of older code
CHARGE_FIT_VERSION = 2
#: the library whose version enters the cache key of each charge method
CHARGE_LIBRARY = {"resp": "pyscf", "resp-lp": "pyscf", "resp-lpn": "pyscf", "xtb": "tblite"}

log = logging.getLogger(__name__)


def resp_basis_functions(n_h: int, n_light: int, n_heavier: int) -> int:
    """Basis functions of a molecule in 6-31G* (pyscf's spherical d): 2 per H, 14 per
    atom up to Ne, 18 per atom of the second row (Na-Ar; anthracene: 216)."""
    return 2 * n_h + 14 * n_light + 18 * n_heavier


def resp_cost_estimate(nao: int, max_memory_mb: float = 4000.0) -> tuple[float, bool]:
    """Rough CPU seconds of the RESP HF/6-31G* SCF for ``nao`` basis functions, and whether
    pyscf keeps the two-electron integrals in memory (its own test: nao^4 / 1e6 MB below
    0.95 ``max_memory``). From the measured constants above (one core of a shared 2-core
    machine, so within a factor of ~2; the ESP integrals after it are a few % of it)."""
    incore = nao**4 / 1e6 < 0.95 * max_memory_mb
    cpu = RESP_CPU_REF_S * (nao / RESP_NAO_REF) ** RESP_CPU_EXPONENT
    return (cpu if incore else cpu * RESP_DIRECT_FACTOR), incore


def _duration(seconds: float) -> str:
    if seconds < 1:
        return "<1 s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@contextlib.contextmanager
def stage_messages(stream: Any = None) -> Any:
    """Print this module's stage messages (INFO) on ``stream`` (stderr) inside the block."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    old_level, old_propagate = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
        log.propagate = old_propagate


@dataclass(frozen=True)
class ChargeFit:
    """Result of a charge calculation.

    Attributes:
        charges_e: (n_atoms,) charges in e, summing to the molecular charge.
        method: label recorded with the molecule, e.g. ``"resp-pyscf HF/6-31G*"``.
        rrms: relative RMS error of the fitted ESP, sqrt(sum dV^2 / sum V^2) (nan for xtb).
        n_points: number of ESP points used (0 for xtb).
    """

    charges_e: np.ndarray
    method: str
    rrms: float
    n_points: int


def _library_version(name: str) -> str:
    """Installed version of distribution ``name`` (no import), or "unknown"."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def default_cache_dir() -> Path:
    """``$CRYSTAL_AGENT_CACHE/charges`` or ``~/.cache/crystal-agent/charges``."""
    root = os.environ.get("CRYSTAL_AGENT_CACHE") or Path.home() / ".cache" / "crystal-agent"
    return Path(root) / "charges"


def esp_grid(
    symbols: Sequence[str],
    coords_A: np.ndarray,
    shells: Sequence[float] = RESP_SHELLS,
    density_per_A2: float = 1.0,
) -> np.ndarray:
    """Points on scaled van der Waals shells, outside every atom's scaled sphere.

    Args:
        symbols: element symbols (n_atoms).
        coords_A: (n_atoms, 3) coordinates, Angstrom.
        shells: scale factors of the Bondi radii.
        density_per_A2: points per A^2 of each sphere (golden-spiral points).

    Returns:
        (n_points, 3) grid points, Angstrom.
    """
    xyz = np.asarray(coords_A, dtype=float)
    radii = np.array([BONDI_RADII_A[s] for s in symbols])
    golden = math.pi * (3.0 - math.sqrt(5.0))
    points = []
    for scale in shells:
        scaled = scale * radii
        for centre, radius in zip(xyz, scaled):
            n_pts = max(8, int(round(4.0 * math.pi * radius**2 * density_per_A2)))
            idx = np.arange(n_pts) + 0.5
            z = 1.0 - 2.0 * idx / n_pts
            rho = np.sqrt(1.0 - z * z)
            sphere = np.stack([rho * np.cos(golden * idx), rho * np.sin(golden * idx), z], axis=1)
            cand = centre + radius * sphere
            dist = np.linalg.norm(cand[:, None, :] - xyz[None], axis=-1)
            points.append(cand[(dist >= scaled[None, :] - 1e-9).all(axis=1)])
    return np.concatenate(points)


def pyscf_esp(
    symbols: Sequence[str],
    coords_A: np.ndarray,
    points_A: np.ndarray,
    basis: str = "6-31g*",
    charge: int = 0,
) -> np.ndarray:
    """Molecular electrostatic potential of the restricted Hartree-Fock density.

    Args:
        symbols: element symbols (n_atoms); closed shell.
        coords_A: (n_atoms, 3), Angstrom.
        points_A: (n_points, 3), Angstrom.
        basis: pyscf basis name.
        charge: molecular charge.

    Returns:
        (n_points,) potential in Hartree / e (nuclear + electronic).

    Raises:
        RunError: SCF did not converge.
    """
    from pyscf import gto, scf

    mol = gto.M(
        atom=[(s, tuple(x)) for s, x in zip(symbols, np.asarray(coords_A))],
        basis=basis,
        charge=charge,
        unit="Angstrom",
        verbose=0,
    )
    mf = scf.RHF(mol)
    mf.conv_tol = 1e-9
    mf.max_cycle = 100
    mf.callback = _ScfProgress()
    mf.kernel()
    if not mf.converged:
        mf = scf.newton(mf)
        mf.kernel()
        if not mf.converged:
            raise RunError(f"RHF/{basis} SCF did not converge for {''.join(symbols)}")
    dm = mf.make_rdm1()
    pts_bohr = np.asarray(points_A, dtype=float) / BOHR_A
    nuc = mol.atom_coords()  # bohr
    dist = np.linalg.norm(pts_bohr[:, None, :] - nuc[None], axis=-1)
    v_nuc = (mol.atom_charges()[None, :] / dist).sum(axis=1)
    v_el = np.empty(len(pts_bohr))
    chunk = max(1, int(2e7 // max(1, mol.nao**2)))
    for start in range(0, len(pts_bohr), chunk):
        ints = mol.intor("int1e_grids", grids=pts_bohr[start : start + chunk])  # (g, nao, nao)
        v_el[start : start + chunk] = np.einsum("gij,ij->g", ints, dm)
    return v_nuc - v_el


class _ScfProgress:
    """pyscf SCF callback: a progress line per cycle, at most one per PROGRESS_EVERY_S."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()

    def __call__(self, env: dict[str, Any]) -> None:
        now = time.perf_counter()
        if now - self.last < PROGRESS_EVERY_S:
            return
        self.last = now
        grad = env.get("norm_gorb")
        grad_text = f", |orbital gradient| {grad:.1e} (converged below ~3e-5)" if grad is not None else ""
        log.info("charges: SCF cycle %d (usually 8-12 in all)%s, %s elapsed",
                 int(env.get("cycle", 0)) + 1, grad_text, _duration(now - self.start))


def fit_restrained_charges(
    coords_A: np.ndarray,
    points_A: np.ndarray,
    esp_au: np.ndarray,
    is_heavy: np.ndarray,
    classes: Sequence[int] | None = None,
    total_charge: float = 0.0,
    restraint_a: float = 0.0005,
    restraint_b: float = 0.1,
    max_iter: int = 100,
) -> tuple[np.ndarray, float]:
    """RESP-style fit of atomic charges to ESP values (see module docstring).

    Args:
        coords_A: (n_atoms, 3) nuclear positions, Angstrom.
        points_A: (n_points, 3) ESP points, Angstrom.
        esp_au: (n_points,) potential, Hartree / e.
        is_heavy: (n_atoms,) bool, atoms that get the hyperbolic restraint.
        classes: (n_atoms,) equivalence class labels; equal labels -> equal charges.
        total_charge: constraint on sum of charges, e.
        restraint_a: restraint strength a (au); 0 gives a plain ESP fit.
        restraint_b: restraint width b (e).
        max_iter: iterations of the linearised restraint.

    Returns:
        charges (n_atoms,) in e and the relative RMS error of the fitted potential.
    """
    n_atoms = len(coords_A)
    labels = np.arange(n_atoms) if classes is None else np.asarray(classes)
    uniq, member = np.unique(labels, return_inverse=True)
    expand = np.zeros((n_atoms, len(uniq)))
    expand[np.arange(n_atoms), member] = 1.0  # q_atoms = expand @ q_classes
    dist_bohr = np.linalg.norm(points_A[:, None, :] - coords_A[None], axis=-1) / BOHR_A
    design = (1.0 / dist_bohr) @ expand  # (n_points, n_classes)
    hess = design.T @ design
    rhs = design.T @ esp_au
    counts = expand.sum(axis=0)
    heavy_per_class = expand.T @ np.asarray(is_heavy, dtype=float)  # restrained atoms per class
    n_cls = len(uniq)
    q = np.linalg.lstsq(hess, rhs, rcond=None)[0]
    for _ in range(max_iter):
        penalty = restraint_a * heavy_per_class / np.sqrt(q * q + restraint_b**2)
        system = np.zeros((n_cls + 1, n_cls + 1))
        system[:n_cls, :n_cls] = hess + np.diag(penalty)
        system[:n_cls, n_cls] = counts
        system[n_cls, :n_cls] = counts
        q_new = np.linalg.solve(system, np.concatenate([rhs, [total_charge]]))[:n_cls]
        converged = np.abs(q_new - q).max() < 1e-7
        q = q_new
        if converged:
            break
    fitted = design @ q
    rrms = float(np.sqrt(((esp_au - fitted) ** 2).sum() / (esp_au**2).sum()))
    return expand @ q, rrms


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def lone_pair_sites(symbols: Sequence[str], coords_A: np.ndarray,
                    elements: Collection[str] = ("N", "O")) -> tuple[np.ndarray, list[int]]:
    """Off-atom lone-pair charge sites of a molecule as affine weights on its atoms.

    Rules and geometry in the module docstring (``resp-lp``). Deterministic in the geometry
    and the atom order, and invariant under rigid motions (the sites are rebuilt from the
    atoms wherever they are needed).

    Args:
        symbols: element symbols (n_atoms).
        coords_A: (n_atoms, 3), Angstrom.
        elements: the acceptor elements that get sites (``("N",)``: the ``resp-lpn`` model).

    Returns:
        weights (n_sites, n_atoms), each row summing to 1 (site = weights @ coords), and the
        parent atom of every site. (0, n_atoms) and [] for a molecule without acceptors.
    """
    from sim_backends.csp.forcefield import bond_graph

    xyz = np.asarray(coords_A, dtype=float)
    n = len(symbols)
    nbrs = bond_graph(symbols, xyz)
    d = LONE_PAIR_DISTANCE_A
    rows: list[np.ndarray] = []
    parents: list[int] = []

    def weights_for(point: np.ndarray, centre: int) -> np.ndarray | None:
        """Affine weights on the local atoms (centre, neighbours, their neighbours), or None."""
        local = sorted({centre, *nbrs[centre], *(k for j in nbrs[centre] for k in nbrs[j])})
        origin = xyz[local].mean(axis=0)
        _, sing, vt = np.linalg.svd(xyz[local] - origin, full_matrices=True)
        flatness = sing[2] / math.sqrt(len(local)) if len(sing) > 2 else 0.0  # rms off the best plane
        if flatness < PLANAR_RMS_A:  # (near-)planar frame: in-plane sites only, solved in the plane
            if abs((point - origin) @ vt[2]) > PLANAR_RMS_A:
                return None
            axes = vt[:2] if len(sing) > 1 and sing[1] > 1e-6 else vt[:1]  # a linear frame: its axis
            mat = np.vstack([((xyz[local] - origin) @ axes.T).T, np.ones(len(local))])
            target = np.append((point - origin) @ axes.T, 1.0)
        else:
            mat = np.vstack([xyz[local].T, np.ones(len(local))])  # (4, m)
            target = np.append(point, 1.0)
        w_loc = np.linalg.pinv(mat, rcond=1e-8) @ target
        if np.abs(mat @ w_loc - target).max() > 1e-6 or np.abs(w_loc).max() > 10.0:
            return None
        w = np.zeros(n)
        w[local] = w_loc
        return w

    def add(centre: int, points: list[np.ndarray]) -> None:
        ws = [weights_for(p, centre) for p in points]
        if any(w is None for w in ws):  # not representable: no sites on this atom
            return
        for w in ws:
            rows.append(w)
            parents.append(centre)

    for i, s in enumerate(symbols):
        if s not in elements:
            continue
        nb = nbrs[i]
        away = [_unit(xyz[i] - xyz[j]) for j in nb]  # unit bond vectors pointing to atom i
        if s == "O" and len(nb) == 1:
            j = nb[0]
            u = away[0]
            perp = None
            for k in nbrs[j]:
                if k == i:
                    continue
                v = xyz[k] - xyz[j]
                v = v - (v @ u) * u
                if np.linalg.norm(v) > 0.1:
                    perp = _unit(v)
                    break
            if perp is None:  # linear X=C=O: one site on the axis
                add(i, [xyz[i] + d * u])
            else:
                t = math.radians(180.0 - CARBONYL_LP_ANGLE_DEG)
                add(i, [xyz[i] + d * (math.cos(t) * u + math.sin(t) * perp),
                        xyz[i] + d * (math.cos(t) * u - math.sin(t) * perp)])
        elif s == "O" and len(nb) == 2:
            bis = _unit(away[0] + away[1])
            normal = _unit(np.cross(away[0], away[1]))
            h = math.radians(SP3_LP_ANGLE_DEG / 2.0)
            add(i, [xyz[i] + d * (math.cos(h) * bis + math.sin(h) * normal),
                    xyz[i] + d * (math.cos(h) * bis - math.sin(h) * normal)])
        elif s == "N" and len(nb) == 1:
            add(i, [xyz[i] + d * away[0]])
        elif s == "N" and len(nb) == 2 and not any(symbols[j] == "H" for j in nb):
            add(i, [xyz[i] + d * _unit(away[0] + away[1])])
        elif s == "N" and len(nb) == 3 and all(symbols[j] == "H" or len(nbrs[j]) == 4 for j in nb):
            add(i, [xyz[i] + d * _unit(away[0] + away[1] + away[2])])
    weights = np.array(rows) if rows else np.zeros((0, n))
    return weights, parents


def resp_charges(
    symbols: Sequence[str],
    coords_A: np.ndarray,
    classes: Sequence[int] | None = None,
    total_charge: int = 0,
    basis: str = "6-31g*",
    lone_pairs: bool | Collection[str] = False,
) -> ChargeFit:
    """RESP-style charges from an HF ESP (module docstring); a few s to a minute per molecule.

    Args:
        symbols: element symbols (n_atoms).
        coords_A: (n_atoms, 3), Angstrom.
        classes: symmetry classes (equal labels -> equal charges); None: no symmetrisation.
        total_charge: molecular charge.
        basis: pyscf basis (6-31G* is the RESP standard).
        lone_pairs: also fit charges on the :func:`lone_pair_sites` (returned after the atoms):
            True for the sites of N and O, or the elements whose sites to use.

    Raises:
        SetupError: an element without a Bondi radius. RunError: SCF failure.
    """
    bad = sorted(set(symbols) - set(BONDI_RADII_A))
    if bad:
        raise SetupError(f"no van der Waals radius for element(s) {bad}")
    xyz = np.asarray(coords_A, dtype=float)
    points = esp_grid(symbols, xyz)
    esp = pyscf_esp(symbols, xyz, points, basis=basis, charge=total_charge)
    is_heavy = np.array([s != "H" for s in symbols])
    label = f"resp-pyscf HF/{basis}".replace("6-31g*", "6-31G*")
    if lone_pairs:
        elements = ("N", "O") if lone_pairs is True else tuple(lone_pairs)
        weights, parents = lone_pair_sites(symbols, xyz, elements)
        n_lp = len(weights)
        xyz = np.vstack([xyz, weights @ xyz])
        is_heavy = np.concatenate([is_heavy, np.ones(n_lp, dtype=bool)])
        if classes is not None:
            # the single site of an atom shares its class with the sites of the atoms equivalent to
            # it (pyrazine's two N sites get one charge); an atom with two sites (a carbonyl O) keeps
            # them apart, since which site of one atom matches which of another is not defined here
            base = max(classes) + 1
            n_of = {p: parents.count(p) for p in parents}
            classes = list(classes) + [base + classes[p] if n_of[p] == 1 else base + max(classes) + 1 + k
                                       for k, p in enumerate(parents)]
        suffix = "" if set(elements) == {"N", "O"} else "".join(sorted(elements)).lower()
        name = f"resp-lp{suffix}-pyscf"
        sites = "no lone-pair site" if n_lp == 0 else f"{n_lp} lone-pair site{'' if n_lp == 1 else 's'}"
        label = label.replace("resp-pyscf", name) + f" ({sites})"
    charges, rrms = fit_restrained_charges(xyz, points, esp, is_heavy, classes, float(total_charge))
    return ChargeFit(charges, label, rrms, len(points))


def xtb_charges(
    symbols: Sequence[str], coords_A: np.ndarray, classes: Sequence[int] | None = None, total_charge: int = 0
) -> ChargeFit:
    """GFN2-xTB Mulliken charges from tblite, averaged over symmetry classes.

    Raises:
        RunError: the xTB SCF failed.
    """
    from tblite.interface import Calculator

    numbers = np.array([_ATOMIC_NUMBERS[s] for s in symbols])
    calc = Calculator("GFN2-xTB", numbers, np.asarray(coords_A, dtype=float) / BOHR_A, charge=total_charge)
    calc.set("verbosity", 0)
    try:
        res = calc.singlepoint()
    except RuntimeError as exc:
        raise RunError(f"GFN2-xTB failed: {str(exc).splitlines()[0] if str(exc) else 'error'}") from None
    charges = np.asarray(res.get("charges"), dtype=float)
    if classes is not None:
        labels = np.asarray(classes)
        for lab in np.unique(labels):
            charges[labels == lab] = charges[labels == lab].mean()
    charges -= (charges.sum() - total_charge) / len(charges)
    return ChargeFit(charges, "xtb-gfn2-mulliken", float("nan"), 0)


_ATOMIC_NUMBERS = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9, "S": 16, "Cl": 17}


def compute_charges(
    symbols: Sequence[str],
    coords_A: np.ndarray,
    method: str = "resp",
    classes: Sequence[int] | None = None,
    cache_dir: str | Path | None = None,
    cache_key: str = "",
) -> ChargeFit:
    """Charges by ``method`` ("resp", "resp-lp", "resp-lpn" or "xtb"), cached as JSON per (key, method, geometry).

    The cache key also holds :data:`CHARGE_FIT_VERSION` and the version of the library that
    computes the method's charges (pyscf or tblite), so charges cached by older code or
    another library version are computed afresh, never reused; an entry records its key.

    Args:
        symbols, coords_A: the molecule (Angstrom).
        method: "resp" (pyscf HF/6-31G* ESP fit), "resp-lp" (the same with lone-pair sites:
            n_atoms + n_sites charges, module docstring), "resp-lpn" (sites on N only) or "xtb" (GFN2-xTB Mulliken).
        classes: symmetry classes for equal charges.
        cache_dir: cache directory (default :func:`default_cache_dir`); "" disables caching.
        cache_key: readable part of the key, e.g. the canonical SMILES.

    Raises:
        SetupError: unknown method.
    """
    if method not in CHARGE_METHODS:
        raise SetupError(f"unknown charge method {method!r}; use one of {', '.join(CHARGE_METHODS)}")
    xyz = np.round(np.asarray(coords_A, dtype=float), 4)
    key = [cache_key, method, list(symbols), xyz.tolist(), list(map(int, classes or [])),
           CHARGE_FIT_VERSION, _library_version(CHARGE_LIBRARY[method])]
    if method.startswith("resp-lp") and LONE_PAIR_DISTANCE_A != 0.35:  # a site-distance study (x23_lattice --lp-distance)
        key.append(LONE_PAIR_DISTANCE_A)
    if method.startswith("resp-lp"):  # fits since equivalent atoms' single sites share a charge
        key.append("equivalent-sites")
    payload = json.dumps(key)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:20]
    path = None
    if cache_dir != "":
        path = Path(cache_dir or default_cache_dir()) / f"{method}-{digest}.json"
        if path.is_file():
            try:
                data = json.loads(path.read_text())
                return ChargeFit(np.array(data["charges_e"]), data["method"], data["rrms"], data["n_points"])
            except (ValueError, KeyError):
                pass  # corrupt cache entry: recompute and overwrite
    if method == "xtb":
        fit = xtb_charges(symbols, xyz, classes)
    else:
        _announce_resp(symbols, xyz, cache_key, path)
        t0 = time.process_time()
        fit = resp_charges(symbols, xyz, classes, lone_pairs=LONE_PAIR_ELEMENTS.get(method, False))
        log.info("charges: RESP fit done in %s CPU (relative ESP error %.3f)",
                 _duration(time.process_time() - t0), fit.rrms)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        record = {
            "key": cache_key,
            "key_payload": key,
            "charges_e": fit.charges_e.tolist(),
            "method": fit.method,
            "rrms": fit.rrms,
            "n_points": fit.n_points,
        }
        tmp.write_text(json.dumps(record, allow_nan=True))
        os.replace(tmp, path)
    return fit


def _announce_resp(symbols: Sequence[str], xyz: np.ndarray, cache_key: str, path: Path | None) -> None:
    """The stage line of a RESP fit (module docstring), before it starts."""
    if not log.isEnabledFor(logging.INFO):
        return
    from collections import Counter

    from pyscf import gto

    mol = gto.M(atom=[(s, tuple(x)) for s, x in zip(symbols, xyz)], basis="6-31g*", unit="Angstrom", verbose=0)
    counts = Counter(symbols)
    formula = "".join(f"{el}{counts[el] if counts[el] > 1 else ''}"
                      for el in sorted(counts, key=lambda e: (e != "C", e != "H", e)))
    cpu, incore = resp_cost_estimate(mol.nao, mol.max_memory)
    n_points = len(esp_grid(symbols, xyz))
    where = f"cached in {path.parent}: a rerun of this molecule skips it" if path is not None else "not cached"
    log.info("charges: RESP fit to the %s electrostatic potential (pyscf) of %s%s: %d atoms, %d basis functions, "
             "%d ESP points; estimated ~%s CPU (x2 either way%s)",
             RESP_LEVEL, formula, f" ({cache_key})" if cache_key else "", len(symbols), mol.nao, n_points,
             _duration(cpu), "" if incore else "; integrals too large for memory, recomputed every cycle")
    log.info("charges: the fit is %s; much faster, less accurate: --charges xtb (GFN2-xTB Mulliken "
             "charges, seconds)", where)
