"""Compiled (numba) fused pair kernel of the W99 exp-6 + real-space Coulomb lattice energy.

One compiled pass per batch does what the torch path of
:class:`~sim_backends.csp.forcefield.LatticeEnergyModel` does in ~40 tensor operations:
the molecule-pair image search (molecular centroids within ``cutoff + 2 extent``), the
atom-pair distance screen, the switched, damped exp-6 energy on the (H-shifted) sites, the
real-space Coulomb energy on the nuclei (Ewald erfc or damped shifted force), and the
analytic first derivatives w.r.t. sites, nuclei and cell. The physics is the same as the
torch ``_PairTerms`` function (see the forcefield module docstring for the model and its
sources):

* every unordered pair of distinct molecules (i < j, all images) once, a molecule and its own
  images (i == j) over the half space of lattice shifts, so the plain sum is the energy per
  cell;
* site pairs closer than ``inner_A`` (Ewald cutoff + H-site margin): exp-6 plus Coulomb; site
  pairs between ``inner_A`` and ``screen_A`` (exp-6 cutoff + margin): dispersion only;
* dispersion damping f(r) = 1 - exp(-(r/r_d)^8) evaluated for r < 1.6 r_d (elsewhere it
  differs from 1 by < 1e-12), quintic switch S(x) = 1 - x^3 (10 - 15 x + 6 x^2),
  x = (r - r_on) / (r_c - r_on), between ``switch_on_A`` and ``cutoff_A``;
* Coulomb: Ewald real space k_e q q erfc(a r) / r, or DSF (Fennell & Gezelter, J. Chem.
  Phys. 124, 234104 (2006), eq. 19) k_e q q [erfc(a r)/r - erfc(a r_c)/r_c + F_c (r - r_c)]
  for r < r_c.

The cell gradient follows from d = x_j - x_i + s @ H for integer shift s and cell H (rows =
lattice vectors): dE/dH[k, :] += s_k dE/dd. The image search uses the centroid of the nuclei
and needs no derivative (the set of pairs only changes where their energy is exactly zero).
Two exact screens cut the work without changing any result: a site of molecule i farther than
``screen + (largest site-centroid distance of j)`` from the centroid of image j skips that
image's sites (~25 % of the stage-1 CSP kernel time); a pair of sites that sit on their nuclei
(everything but shifted H sites) reuses the site distance for the Coulomb term. With
``symmetric=True`` (Z' = 1 crystals built from the space-group operations) only molecule 0's
pairs are summed, weighted by Z.

numba is imported when the kernel is first needed (importing this module is cheap). Compiled
code is cached on disk: next to this file when that directory is writable, else in
``$NUMBA_CACHE_DIR`` or a per-user directory under the system temp dir, so Ray workers and
read-only installs compile once per machine and never fail on the cache.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
from typing import Callable

import numpy as np

#: layout of the ``params`` vector of :func:`pair_energies_and_grads`
PARAM_NAMES = (
    "cutoff_A", "switch_on_A", "damping_radius_A", "reach_A", "screen_A", "inner_A",
    "alpha_per_A", "coulomb_cutoff_A", "dsf_shift", "dsf_force", "has_charges", "is_dsf",
)


#: piecewise polynomial erfcx(x) = exp(x^2) erfc(x) on [0, ERFCX_X_MAX): intervals and degree
ERFCX_X_MAX = 6.0
ERFCX_STEP = 0.125
ERFCX_DEGREE = 8


@functools.lru_cache(maxsize=1)
def erfcx_coefficients() -> np.ndarray:
    """Monomial coefficients of erfcx on each interval, (n_intervals, ERFCX_DEGREE + 1).

    On interval k, x = (k + 1/2 + t/2) ERFCX_STEP with t in [-1, 1] and erfcx(x) =
    sum_j coef[k, j] t^j: the degree-8 Chebyshev interpolant of ``scipy.special.erfcx``.
    The kernel then forms erfc(x) = exp(-x^2) erfcx(x) and reuses exp(-x^2) for the Gaussian
    of the Coulomb force, one exp instead of an exp and an erfc per pair (erfc was ~30 % of
    the kernel time). Relative error of erfc below 1e-14 for x < 6 (tested against
    ``math.erfc``); beyond, the kernel calls ``math.erfc``.
    """
    from scipy.special import erfcx

    n_int = int(round(ERFCX_X_MAX / ERFCX_STEP))
    coef = np.zeros((n_int, ERFCX_DEGREE + 1))
    for k in range(n_int):
        centre = (k + 0.5) * ERFCX_STEP
        cheb = np.polynomial.chebyshev.Chebyshev.interpolate(
            lambda t, c=centre: erfcx(c + 0.5 * ERFCX_STEP * t), ERFCX_DEGREE
        )
        mono = np.polynomial.chebyshev.cheb2poly(cheb.coef)
        coef[k, :len(mono)] = mono
    return coef


def _pair_kernel(sites, atoms, cells, table, params, erfcx_coef, symmetric):  # pragma: no cover - numba
    """Energies and gradients of all intermolecular pairs (plain Python body; numba compiles it).

    Args:
        sites: (B, Z, n, 3) exp-6 sites, A. atoms: (B, Z, n, 3) nuclei (charge sites), A.
        cells: (B, 3, 3) lattice vectors as rows, A.
        table: (n*n, 4) per atom pair (a, c) at row a*n + c: A (kJ/mol), -B (1/A),
            C (kJ/mol A^6), k_e q_a q_c (kJ/mol A).
        params: (12,) float64 in the order of :data:`PARAM_NAMES`.
        erfcx_coef: :func:`erfcx_coefficients`.
        symmetric: the Z molecules are symmetry images of molecule 0 (Z' = 1): sum only the
            pairs of molecule 0, weighted by Z / 2 (Z for its own images over the half space).
            Same energy; the coordinate gradients are those of that sum, whose projection on
            symmetry-preserving displacements equals the full sum's.

    Returns:
        e_rd (B,), e_el (B,) kJ/mol per cell; g_sites (B, Z, n, 3) = dE_rd/dsites,
        g_atoms (B, Z, n, 3) = dE_el/datoms (kJ/mol/A); g_cell_rd, g_cell_el (B, 3, 3).
    """
    n_batch, n_mol, n = sites.shape[0], sites.shape[1], sites.shape[2]
    cutoff, switch_on, r_damp, reach = params[0], params[1], params[2], params[3]
    screen, inner, alpha, rc = params[4], params[5], params[6], params[7]
    dsf_shift, dsf_force = params[8], params[9]
    has_charges = params[10] != 0.0
    is_dsf = params[11] != 0.0
    width = cutoff - switch_on
    short_r = 1.6 * r_damp
    screen2, inner2, reach2 = screen * screen, inner * inner, reach * reach
    gauss_pref = 2.0 * alpha / math.sqrt(math.pi)
    n_deg = erfcx_coef.shape[1] - 1
    step = ERFCX_X_MAX / erfcx_coef.shape[0]
    inv_step = 1.0 / step
    x_max = ERFCX_X_MAX

    e_rd = np.zeros(n_batch)
    e_el = np.zeros(n_batch)
    g_sites = np.zeros((n_batch, n_mol, n, 3))
    g_atoms = np.zeros((n_batch, n_mol, n, 3))
    g_cell_rd = np.zeros((n_batch, 3, 3))
    g_cell_el = np.zeros((n_batch, 3, 3))
    inv = np.empty((3, 3))
    cen = np.empty((n_mol, 3))
    wrap = np.empty(3)
    w = np.empty(3)
    n_max = np.empty(3, dtype=np.int64)
    shift = np.empty(3)
    trans = np.empty(3)
    plain = np.empty(n, dtype=np.bool_)
    site_reach2 = np.empty(n_mol)

    for b in range(n_batch):
        er = 0.0
        ee = 0.0
        for a in range(n):  # exp-6 site on the nucleus (not a shifted H site): one distance for both terms
            plain[a] = (sites[b, 0, a, 0] == atoms[b, 0, a, 0] and sites[b, 0, a, 1] == atoms[b, 0, a, 1]
                        and sites[b, 0, a, 2] == atoms[b, 0, a, 2])
        h = cells[b]
        det = (h[0, 0] * (h[1, 1] * h[2, 2] - h[1, 2] * h[2, 1])
               - h[0, 1] * (h[1, 0] * h[2, 2] - h[1, 2] * h[2, 0])
               + h[0, 2] * (h[1, 0] * h[2, 1] - h[1, 1] * h[2, 0]))
        inv[0, 0] = (h[1, 1] * h[2, 2] - h[1, 2] * h[2, 1]) / det
        inv[0, 1] = (h[0, 2] * h[2, 1] - h[0, 1] * h[2, 2]) / det
        inv[0, 2] = (h[0, 1] * h[1, 2] - h[0, 2] * h[1, 1]) / det
        inv[1, 0] = (h[1, 2] * h[2, 0] - h[1, 0] * h[2, 2]) / det
        inv[1, 1] = (h[0, 0] * h[2, 2] - h[0, 2] * h[2, 0]) / det
        inv[1, 2] = (h[0, 2] * h[1, 0] - h[0, 0] * h[1, 2]) / det
        inv[2, 0] = (h[1, 0] * h[2, 1] - h[1, 1] * h[2, 0]) / det
        inv[2, 1] = (h[0, 1] * h[2, 0] - h[0, 0] * h[2, 1]) / det
        inv[2, 2] = (h[0, 0] * h[1, 1] - h[0, 1] * h[1, 0]) / det
        for k in range(3):
            # perpendicular width of the cell along k is 1 / |column k of H^-1|
            col = math.sqrt(inv[0, k] ** 2 + inv[1, k] ** 2 + inv[2, k] ** 2)
            n_max[k] = int(math.ceil(reach * col + 0.5))
        for m in range(n_mol):
            for d in range(3):
                acc = 0.0
                for a in range(n):
                    acc += atoms[b, m, a, d]
                cen[m, d] = acc / n
            # an exp-6 site of another molecule farther than screen + (largest site distance
            # from this molecule's centroid) from it has no partner in this molecule
            ext2 = 0.0
            for a in range(n):
                e2 = ((sites[b, m, a, 0] - cen[m, 0]) ** 2 + (sites[b, m, a, 1] - cen[m, 1]) ** 2
                      + (sites[b, m, a, 2] - cen[m, 2]) ** 2)
                ext2 = max(ext2, e2)
            site_reach2[m] = (screen + math.sqrt(ext2)) ** 2

        for i in range(1 if symmetric else n_mol):
            for j in range(i, n_mol):
                if not symmetric:
                    wgt = 1.0
                elif j == 0:
                    wgt = float(n_mol)
                else:
                    wgt = 0.5 * n_mol
                for d in range(3):
                    w[d] = cen[j, d] - cen[i, d]
                for k in range(3):
                    frac = w[0] * inv[0, k] + w[1] * inv[1, k] + w[2] * inv[2, k]
                    wrap[k] = -np.rint(frac) if i != j else 0.0
                for d in range(3):
                    w[d] += wrap[0] * h[0, d] + wrap[1] * h[1, d] + wrap[2] * h[2, d]
                for n0 in range(-n_max[0], n_max[0] + 1):
                    for n1 in range(-n_max[1], n_max[1] + 1):
                        for n2 in range(-n_max[2], n_max[2] + 1):
                            if i == j and not (n0 > 0 or (n0 == 0 and (n1 > 0 or (n1 == 0 and n2 > 0)))):
                                continue
                            v2 = 0.0
                            for d in range(3):
                                vd = w[d] + n0 * h[0, d] + n1 * h[1, d] + n2 * h[2, d]
                                v2 += vd * vd
                            if v2 >= reach2:
                                continue
                            shift[0], shift[1], shift[2] = wrap[0] + n0, wrap[1] + n1, wrap[2] + n2
                            for d in range(3):
                                trans[d] = shift[0] * h[0, d] + shift[1] * h[1, d] + shift[2] * h[2, d]
                            fr0 = 0.0
                            fr1 = 0.0
                            fr2 = 0.0
                            fe0 = 0.0
                            fe1 = 0.0
                            fe2 = 0.0
                            cj0 = cen[j, 0] + trans[0]
                            cj1 = cen[j, 1] + trans[1]
                            cj2 = cen[j, 2] + trans[2]
                            for a in range(n):
                                xa0, xa1, xa2 = sites[b, i, a, 0], sites[b, i, a, 1], sites[b, i, a, 2]
                                if (cj0 - xa0) ** 2 + (cj1 - xa1) ** 2 + (cj2 - xa2) ** 2 >= site_reach2[j]:
                                    continue
                                # forces on site / nucleus a, summed in registers over c
                                sa0 = 0.0
                                sa1 = 0.0
                                sa2 = 0.0
                                na0 = 0.0
                                na1 = 0.0
                                na2 = 0.0
                                for c in range(n):
                                    d0 = sites[b, j, c, 0] + trans[0] - xa0
                                    d1 = sites[b, j, c, 1] + trans[1] - xa1
                                    d2 = sites[b, j, c, 2] + trans[2] - xa2
                                    r2 = d0 * d0 + d1 * d1 + d2 * d2
                                    if r2 >= screen2:
                                        continue
                                    row = a * n + c
                                    is_inner = r2 < inner2
                                    r = math.sqrt(r2)
                                    # charge-only sites (lone pairs) have no exp-6 term
                                    if r < cutoff and (table[row, 0] != 0.0 or table[row, 2] != 0.0):
                                        inv_r = 1.0 / r
                                        inv_r2 = inv_r * inv_r
                                        disp = table[row, 2] * inv_r2 * inv_r2 * inv_r2
                                        if is_inner:
                                            rep = table[row, 0] * math.exp(table[row, 1] * r)
                                            e = rep - disp
                                            g = (table[row, 1] * rep + 6.0 * disp * inv_r) * inv_r
                                        else:
                                            e = -disp
                                            g = 6.0 * disp * inv_r2
                                        if r < short_r:
                                            y8 = (r / r_damp) ** 8
                                            keep = math.exp(-y8)
                                            g -= (6.0 * disp * keep + disp * 8.0 * y8 * keep) * inv_r2
                                            e += disp * keep
                                        if r > switch_on:
                                            x = (r - switch_on) / width
                                            sw = 1.0 - x * x * x * (10.0 - 15.0 * x + 6.0 * x * x)
                                            d_sw = -30.0 * x * x * (1.0 - x) * (1.0 - x) / width
                                            g = g * sw + e * d_sw * inv_r
                                            e = e * sw
                                        er += wgt * e
                                        g *= wgt
                                        fx, fy, fz = g * d0, g * d1, g * d2
                                        g_sites[b, j, c, 0] += fx
                                        g_sites[b, j, c, 1] += fy
                                        g_sites[b, j, c, 2] += fz
                                        sa0 += fx
                                        sa1 += fy
                                        sa2 += fz
                                    if has_charges and is_inner and table[row, 3] != 0.0:
                                        if plain[a] and plain[c]:
                                            a0, a1, a2, ra = d0, d1, d2, r
                                        else:
                                            a0 = atoms[b, j, c, 0] + trans[0] - atoms[b, i, a, 0]
                                            a1 = atoms[b, j, c, 1] + trans[1] - atoms[b, i, a, 1]
                                            a2 = atoms[b, j, c, 2] + trans[2] - atoms[b, i, a, 2]
                                            ra = math.sqrt(a0 * a0 + a1 * a1 + a2 * a2)
                                        if is_dsf and ra >= rc:
                                            continue
                                        pref = table[row, 3]
                                        inv_ra = 1.0 / ra
                                        xa = alpha * ra
                                        ex = math.exp(-xa * xa)
                                        if xa < x_max:
                                            k_int = int(xa * inv_step)
                                            tt = (xa - (k_int + 0.5) * step) * (2.0 * inv_step)
                                            poly = erfcx_coef[k_int, n_deg]
                                            for p_j in range(n_deg - 1, -1, -1):
                                                poly = poly * tt + erfcx_coef[k_int, p_j]
                                            erfc_r = ex * poly * inv_ra
                                        else:
                                            erfc_r = math.erfc(xa) * inv_ra
                                        gauss = ex * gauss_pref
                                        pref *= wgt
                                        if is_dsf:
                                            ee += pref * (erfc_r - dsf_shift + dsf_force * (ra - rc))
                                            ga = (dsf_force - (gauss + erfc_r) * inv_ra) * pref * inv_ra
                                        else:
                                            ee += pref * erfc_r
                                            ga = -(gauss + erfc_r) * pref * inv_ra * inv_ra
                                        fx, fy, fz = ga * a0, ga * a1, ga * a2
                                        g_atoms[b, j, c, 0] += fx
                                        g_atoms[b, j, c, 1] += fy
                                        g_atoms[b, j, c, 2] += fz
                                        na0 += fx
                                        na1 += fy
                                        na2 += fz
                                g_sites[b, i, a, 0] -= sa0
                                g_sites[b, i, a, 1] -= sa1
                                g_sites[b, i, a, 2] -= sa2
                                g_atoms[b, i, a, 0] -= na0
                                g_atoms[b, i, a, 1] -= na1
                                g_atoms[b, i, a, 2] -= na2
                                fr0 += sa0
                                fr1 += sa1
                                fr2 += sa2
                                fe0 += na0
                                fe1 += na1
                                fe2 += na2
                            for k in range(3):
                                g_cell_rd[b, k, 0] += shift[k] * fr0
                                g_cell_rd[b, k, 1] += shift[k] * fr1
                                g_cell_rd[b, k, 2] += shift[k] * fr2
                                g_cell_el[b, k, 0] += shift[k] * fe0
                                g_cell_el[b, k, 1] += shift[k] * fe1
                                g_cell_el[b, k, 2] += shift[k] * fe2
        e_rd[b] = er
        e_el[b] = ee
    return e_rd, e_el, g_sites, g_atoms, g_cell_rd, g_cell_el


def _cache_dir_is_writable(path: str) -> bool:
    """Whether numba can write its cache in ``path`` (``__pycache__`` beside the source)."""
    target = os.path.join(path, "__pycache__")
    probe = target if os.path.isdir(target) else path
    return os.access(probe, os.W_OK | os.X_OK)


def njit_cached(func: Callable) -> Callable:
    """``numba.njit(nogil=True)`` of ``func`` with the on-disk cache of this package's kernels.

    If the source directory (``sim_backends/csp``) is not writable and ``NUMBA_CACHE_DIR`` is
    unset, the cache goes to ``<tmp>/crystal_agent_numba_<uid>``; if no cache location works at
    all, ``func`` is compiled without a disk cache rather than failing. Shared by every compiled
    function of the CSP engine (pair kernel, variable map, two-loop recursion, contact screen).
    """
    here = os.path.dirname(os.path.abspath(__file__))
    if "NUMBA_CACHE_DIR" not in os.environ and not _cache_dir_is_writable(here):
        uid = os.getuid() if hasattr(os, "getuid") else 0
        os.environ["NUMBA_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), f"crystal_agent_numba_{uid}")
    import numba

    if os.environ.get("NUMBA_CACHE_DIR") and numba.config.CACHE_DIR != os.environ["NUMBA_CACHE_DIR"]:
        numba.core.config.reload_config()  # numba was imported before the variable was set
    try:
        return numba.njit(cache=True, nogil=True, fastmath=False)(func)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(cache=False, nogil=True, fastmath=False)(func)


@functools.lru_cache(maxsize=1)
def compiled_kernel() -> Callable:
    """The numba-compiled :func:`_pair_kernel` (compiled or loaded from the disk cache once)."""
    return njit_cached(_pair_kernel)


def pair_energies_and_grads(
    sites_A: np.ndarray, atoms_A: np.ndarray, cells_A: np.ndarray, table: np.ndarray, params: np.ndarray,
    symmetric: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pair energies per cell and their gradients for a batch of crystals (compiled kernel).

    Args:
        sites_A: (B, Z, n, 3) exp-6 sites, Angstrom.
        atoms_A: (B, Z, n, 3) nuclei (charge positions), Angstrom; may be ``sites_A``.
        cells_A: (B, 3, 3) lattice vectors as rows, Angstrom (non-degenerate).
        table: (n*n, 4) pair parameters A, -B, C, k_e q q (see :func:`_pair_kernel`).
        params: (12,) settings in the order of :data:`PARAM_NAMES`.
        symmetric: every molecule is a space-group image of molecule 0 (Z' = 1 structures
            built from the operations, as the CSP minimiser does): only molecule 0's pairs are
            summed, weighted by Z (Z^2/2 molecule-pair blocks of all images become Z - 1/2: 2.3x
            fewer pairs at Z = 4, 4.3x at Z = 8, 1.3x at Z = 2). The energy is the same; the coordinate gradients are
            those of the weighted sum, so they are only meaningful after projection on
            symmetric displacements (the chain rule to cell and rigid-body variables).

    Returns:
        ``(e_rd, e_el, g_sites, g_atoms, g_cell_rd, g_cell_el)``: exp-6 and real-space Coulomb
        energies per cell (B,) kJ/mol (NOT per molecule), dE_rd/dsites and dE_el/datoms
        (B, Z, n, 3) kJ/mol/A, and the cell gradients of each part (B, 3, 3) kJ/mol/A.

    Raises:
        ValueError: inconsistent shapes, wrong parameter count, non-finite input or a
            degenerate cell.
    """
    sites = np.ascontiguousarray(sites_A, dtype=np.float64)
    atoms = np.ascontiguousarray(atoms_A, dtype=np.float64)
    cells = np.ascontiguousarray(cells_A, dtype=np.float64)
    table = np.ascontiguousarray(table, dtype=np.float64)
    params = np.ascontiguousarray(params, dtype=np.float64)
    if sites.ndim != 4 or sites.shape[3] != 3 or atoms.shape != sites.shape:
        raise ValueError(f"sites and atoms must both be (B, Z, n, 3), got {sites.shape} and {atoms.shape}")
    if cells.shape != (sites.shape[0], 3, 3):
        raise ValueError(f"cells must be ({sites.shape[0]}, 3, 3), got {cells.shape}")
    if table.shape != (sites.shape[2] ** 2, 4) or params.shape != (len(PARAM_NAMES),):
        raise ValueError(f"table must be ({sites.shape[2] ** 2}, 4) and params ({len(PARAM_NAMES)},), "
                         f"got {table.shape} and {params.shape}")
    if not (np.isfinite(sites).all() and np.isfinite(atoms).all() and np.isfinite(cells).all()):
        raise ValueError("sites, atoms and cells must be finite")
    if cells.shape[0] and np.abs(np.linalg.det(cells)).min() < 1e-6:
        raise ValueError("degenerate cell (volume ~ 0)")
    return compiled_kernel()(sites, atoms, cells, table, params, erfcx_coefficients(), bool(symmetric))


def kernel_params(model) -> np.ndarray:
    """The (12,) ``params`` vector of a :class:`~sim_backends.csp.forcefield.LatticeEnergyModel`.

    Mirrors the torch path: molecule pairs within ``cutoff + 2 extent`` (centroid distance),
    site screen ``cutoff + margin`` and inner list ``ewald_cutoff + margin`` with a 0.25 A
    margin when H sites are shifted off the nuclei.
    """
    margin = 0.25 if model.has_h_sites else 0.0
    is_dsf = model.electrostatics == "dsf"
    values = {
        "cutoff_A": model.cutoff_A, "switch_on_A": model.switch_on_A, "damping_radius_A": model.damping_radius_A,
        "reach_A": model.cutoff_A + 2.0 * model.extent_A, "screen_A": model.cutoff_A + margin,
        "inner_A": model.ewald_cutoff_A + margin, "alpha_per_A": model.alpha_per_A,
        "coulomb_cutoff_A": model.ewald_cutoff_A,
        "dsf_shift": model._dsf_shift if is_dsf else 0.0, "dsf_force": model._dsf_force if is_dsf else 0.0,
        "has_charges": float(model._has_charges), "is_dsf": float(is_dsf),
    }
    return np.array([values[k] for k in PARAM_NAMES], dtype=np.float64)
