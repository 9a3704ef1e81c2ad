"""W99 exp-6 repulsion-dispersion plus Ewald point-charge lattice energy, batched on torch.

The lattice energy per molecule of a crystal of rigid molecules is

    E = 1/(2Z) sum_{a in cell} sum'_{b} [ A_ab exp(-B_ab r_ab) - f(r_ab) C_ab / r_ab^6 ] S(r_ab)
        + E_tail + E_elec / Z,

where the primed sum runs over atoms b of *other* molecules (all intramolecular pairs are
excluded), S is a C2 switch that takes the exp-6 term to zero between ``cutoff_A - 1`` and
``cutoff_A``, E_tail is the isotropic dispersion tail beyond the switch (g(r) = 1), and
f(r) = 1 - exp(-(r/r_d)^8) with r_d = 1.4 A damps the dispersion at unphysically short
contacts so that the energy rises monotonically down to r = 0 instead of diving to -inf
(the "Buckingham catastrophe"). f differs from 1 by less than 1e-7 beyond 2.0 A, i.e. at any
real intermolecular contact. E_elec is the Ewald sum (real space truncated at the Ewald
cutoff, default 9 A, reciprocal space up to k_max, self term) with the intramolecular Coulomb pairs
removed by subtracting their erf(alpha r)/r reciprocal-space share.

Parameters (W99): D. E. Williams, "Improved intermolecular force field for molecules containing
H, C, N, and O atoms, with application to nucleoside and peptide crystals", J. Comput. Chem.
22, 1154-1166 (2001), as tabulated in Appendix D of the DMACRYS manual (S. L. Price et al.).
Combining rules A_ab = sqrt(A_a A_b), B_ab = (B_a + B_b)/2, C_ab = sqrt(C_a C_b). W99 places the
repulsion-dispersion site of every H 0.1 A towards its bonded atom (foreshortened X-H bond);
the point charges stay on the nuclei. Atom types:

    C_W2/C_W3/C_W4  C with 2 / 3 / 4 bonded atoms
    H_W1            H bonded to C (and, as an extension, to S)
    H_W2            H of an alcohol (O-H where the O is not part of a carboxylic acid)
    H_W3            H of a carboxylic acid O-H
    H_W4            H bonded to N
    N_W1            N with one bonded atom (nitrile, triple bond)
    N_W2/N_W3/N_W4  N with >= 2 bonded atoms and 0 / 1 / >= 2 bonded H
    O_W1/O_W2       O with 1 / 2 bonded atoms

Extensions, NOT part of W99 (which has no F, S or Cl): F from Williams & Houpt, Acta Cryst.
B42, 286 (1986); Cl from Hsu & Williams, Acta Cryst. A36, 277 (1980); S (thioether / C=S) as
listed with the FIT potential in the DMACRYS manual for the CSP blind tests. These were fitted
for use with multipoles, not W99 point charges; treat F/S/Cl energies as rough.

Parameter sets (``LatticeEnergyModel(params=...)``, :data:`PARAMETER_SETS`): ``"w99"`` (the
default, :data:`DEFAULT_PARAMETER_SET`) is W99 as above; ``"x23fit-resp-lp"`` and
``"x23fit-resp"`` multiply W99's A and C per atom group by factors refitted to the X23 lattice
energies and PBE+TS volumes with RESP + lone-pair-site charges and with atom-centred RESP
charges (:data:`X23_FIT_NOTE`); each belongs with its charges. The default stays W99: the
refits do not improve the independent target I polymorph energies (NOTES.md).
W99 was fitted to room-temperature structures and sublimation enthalpies, X23 to static
lattice energies and structures: with W99 the hydrocarbons come out 3-15 kJ/mol underbound
and 4-8 % too large against X23.

Off-atom charge sites: a molecule whose ``charges_e`` holds n_atoms + n_sites values
(``charges="resp-lp"``, :mod:`sim_backends.csp.charges`) carries lone-pair charge sites; the
model rebuilds them with :func:`~sim_backends.csp.charges.lone_pair_sites` as fixed affine
combinations of the atoms (site = w @ atoms), so energies and gradients stay functions of the
atom coordinates (the site gradients are mapped back by w^T). The sites carry charge only
(no exp-6); the pair sums, the Ewald sums and the intramolecular exclusions then run over
atoms + sites. With n_atoms charges (``resp``, ``xtb``) the model is the atom-centred one.

Units: Angstrom, elementary charges, kJ/mol. The Coulomb constant e^2/(4 pi eps0) is
1389.35457 kJ/mol A (CODATA 2018).

The pair sums run by default in one compiled pass (:mod:`sim_backends.csp.pairkernel`,
numba) with analytic gradients; ``pair_kernel="torch"`` keeps the batched tensor
implementation of the same sums (the two agree to rounding, ``tests/sim_backends/csp/test_pairkernel.py``).

Importing this module is cheap (numpy only); torch (and numba) are imported when a model is built.

Over 500 lines on purpose: the W99 atom typing, the pair, reciprocal-space and fused
kernels and the LatticeEnergyModel that combines them share one set of precomputed tensors
and unit conventions and change together.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from sim_backends.csp.rigid import RigidMolecule

#: e^2 / (4 pi eps0) in kJ/mol Angstrom (CODATA 2018)
COULOMB_KJMOL_A = 1389.35457

#: default real-space Ewald cutoff (A); beyond it W99 repulsion is < 1e-7 kJ/mol per pair
DEFAULT_EWALD_CUTOFF_A = 9.0

#: W99 (and extension) parameters per atom type: (A kJ/mol, B 1/A, C kJ/mol A^6)
W99_PARAMS: dict[str, tuple[float, float, float]] = {
    "C_W2": (103235.0, 3.60, 1435.09),
    "C_W3": (270363.0, 3.60, 1701.73),
    "C_W4": (131571.0, 3.60, 978.36),
    "H_W1": (12680.0, 3.56, 278.37),
    "H_W2": (361.30, 3.56, 0.0),
    "H_W3": (115.70, 3.56, 0.0),
    "H_W4": (764.90, 3.56, 0.0),
    "N_W1": (96349.0, 3.48, 1407.57),
    "N_W2": (102369.0, 3.48, 1398.15),
    "N_W3": (191935.0, 3.48, 2376.55),
    "N_W4": (405341.0, 3.48, 5629.82),
    "O_W1": (241042.0, 3.96, 1260.73),
    "O_W2": (284623.0, 3.96, 1285.87),
    # extensions (see module docstring)
    "F_X": (363725.0, 4.16, 844.0),
    "S_X": (401034.0, 3.30, 5791.0),
    "Cl_X": (924675.0, 3.51, 7740.48),
}

#: distance (A) by which W99 moves each H repulsion-dispersion site towards its bonded atom
W99_H_SHIFT_A = 0.1

#: group of every type for the per-group scale factors of a refitted parameter set
#: (H = H on C or S, HO = H on O, HN = H on N)
TYPE_GROUPS: dict[str, str] = {
    "C_W2": "C", "C_W3": "C", "C_W4": "C", "H_W1": "H", "H_W2": "HO", "H_W3": "HO", "H_W4": "HN",
    "N_W1": "N", "N_W2": "N", "N_W3": "N", "N_W4": "N", "O_W1": "O", "O_W2": "O",
    "F_X": "F", "S_X": "S", "Cl_X": "Cl",
}

#: parameter sets: name -> (multipliers of A per group, multipliers of C per group) applied
#: to :data:`W99_PARAMS` (groups not listed keep W99's values). ``"w99"`` is W99 itself.
#: ``"w99-x23"``: see :data:`X23_FIT_NOTE`.
PARAMETER_SETS: dict[str, tuple[dict[str, float], dict[str, float]]] = {
    "w99": ({}, {}),
    # refit for RESP charges with lone-pair sites (charges="resp-lp"), see X23_FIT_NOTE
    "x23fit-resp-lp": ({"C": 1.1482, "H": 0.6753, "N": 0.8429, "O": 1.1823, "HO": 1.5622, "HN": 0.2979},
                       {"C": 1.1405, "H": 0.8682, "N": 0.8441, "O": 0.937}),
    # refit for atom-centred RESP charges (charges="resp"), one factor for all polar H
    "x23fit-resp": ({"C": 1.1384, "H": 0.6752, "N": 0.8446, "O": 1.2066, "HO": 0.5392, "HN": 0.5392},
                    {"C": 1.1482, "H": 0.8549, "N": 1.0447, "O": 0.895}),
}

#: where the scale factors of the refitted sets come from
X23_FIT_NOTE = (
    "x23fit-<charges>: W99 A and C multiplied per group (C, H on C, H on O, H on N, N, O; B unchanged), "
    "10 factors fitted with benchmarks/x23_lattice_fit.py jointly to the X23 lattice energies (Reilly & "
    "Tkatchenko, J. Chem. Phys. 139, 024705 (2013)) and zero volume change from the PBE+TS structures of the "
    "17 shared X23 crystals, with the named charge model; chosen among nested parameterisations by "
    "leave-one-out. Figures (full minimisation, LOO and in-sample) in benchmarks/results/NOTES.md and "
    "benchmarks/results/x23_lattice_fit.json. Not fitted to anything outside X23; F, S, Cl keep W99-extension values."
)

#: parameter set used when a model is built without ``params`` (read at construction time)
DEFAULT_PARAMETER_SET = "w99"


def register_parameter_set(name: str, a_scale: dict[str, float], c_scale: dict[str, float],
                           replace: bool = False) -> None:
    """Add the parameter set ``name`` to :data:`PARAMETER_SETS` (in this process only): W99's A
    and C multiplied per group (``a_scale``, ``c_scale``: group of :data:`TYPE_GROUPS` -> factor;
    groups left out keep W99's values), e.g. a leave-one-out refit that a benchmark evaluates.

    Raises:
        ValueError: an unknown group, a factor that is not finite and > 0, or ``name`` already
            registered (unless ``replace``; ``"w99"`` can never be replaced).
    """
    groups = set(TYPE_GROUPS.values())
    for scale in (a_scale, c_scale):
        unknown = sorted(set(scale) - groups)
        if unknown:
            raise ValueError(f"parameter set {name!r}: unknown group(s) {unknown}; known: {', '.join(sorted(groups))}")
        bad = {g: v for g, v in scale.items() if not (math.isfinite(v) and v > 0.0)}
        if bad:
            raise ValueError(f"parameter set {name!r}: factors must be finite and > 0, got {bad}")
    if name == "w99" or (name in PARAMETER_SETS and not replace):
        raise ValueError(f"parameter set {name!r} is already registered")
    PARAMETER_SETS[name] = ({g: float(v) for g, v in a_scale.items()}, {g: float(v) for g, v in c_scale.items()})


def parameter_table(name: str) -> dict[str, tuple[float, float, float]]:
    """(A, B, C) per type of the parameter set ``name`` (a key of :data:`PARAMETER_SETS`).

    Raises:
        ValueError: unknown set.
    """
    if name not in PARAMETER_SETS:
        raise ValueError(f"unknown force-field parameter set {name!r}; known: {', '.join(PARAMETER_SETS)}")
    a_scale, c_scale = PARAMETER_SETS[name]
    return {t: (a * a_scale.get(TYPE_GROUPS[t], 1.0), b, c * c_scale.get(TYPE_GROUPS[t], 1.0))
            for t, (a, b, c) in W99_PARAMS.items()}

#: covalent radii (A), Cordero et al., Dalton Trans. 2832 (2008); bonds: d < r_i + r_j + 0.45
COVALENT_RADII_A = {"H": 0.31, "C": 0.76, "N": 0.71, "O": 0.66, "F": 0.57, "S": 1.05, "Cl": 1.02}
BOND_TOLERANCE_A = 0.45


def bond_graph(symbols: tuple[str, ...] | list[str], coords_A: np.ndarray) -> list[list[int]]:
    """Covalent neighbours of every atom, perceived from distances.

    Args:
        symbols: element symbols, length n_atoms.
        coords_A: (n_atoms, 3) Cartesian coordinates, Angstrom.

    Returns:
        For each atom, the sorted indices of its bonded atoms (d < r_cov,i + r_cov,j + 0.45 A).

    Raises:
        ValueError: an element without a covalent radius here.
    """
    unknown = sorted(set(symbols) - set(COVALENT_RADII_A))
    if unknown:
        raise ValueError(f"no covalent radius for element(s) {unknown}")
    xyz = np.asarray(coords_A, dtype=float)
    radii = np.array([COVALENT_RADII_A[s] for s in symbols])
    dist = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)
    bonded = (dist < radii[:, None] + radii[None] + BOND_TOLERANCE_A) & ~np.eye(len(symbols), dtype=bool)
    return [sorted(np.nonzero(row)[0].tolist()) for row in bonded]


def assign_w99_types(symbols: tuple[str, ...] | list[str], coords_A: np.ndarray) -> tuple[str, ...]:
    """W99 atom type of every atom from the distance-perceived bond graph (rules in module doc).

    Args:
        symbols: element symbols, length n_atoms.
        coords_A: (n_atoms, 3) coordinates of one molecule, Angstrom.

    Returns:
        Type names, keys of :data:`W99_PARAMS`.

    Raises:
        ValueError: unsupported element, an isolated H, or an H bonded to an unsupported partner.
    """
    nbrs = bond_graph(symbols, coords_A)
    sym = list(symbols)

    def is_acid_o(o: int) -> bool:
        # O-H whose carbon also carries a terminal (carbonyl) O: carboxylic acid
        for c in nbrs[o]:
            if sym[c] == "C" and any(sym[x] == "O" and len(nbrs[x]) == 1 for x in nbrs[c] if x != o):
                return True
        return False

    types = []
    for i, s in enumerate(sym):
        deg = len(nbrs[i])
        n_h = sum(sym[j] == "H" for j in nbrs[i])
        if s == "C":
            types.append("C_W2" if deg <= 2 else "C_W3" if deg == 3 else "C_W4")
        elif s == "H":
            if deg == 0:
                raise ValueError(f"H atom {i} has no bonded atom")
            partner = min(nbrs[i], key=lambda j: np.linalg.norm(coords_A[j] - coords_A[i]))
            ps = sym[partner]
            if ps in ("C", "S"):
                types.append("H_W1")
            elif ps == "O":
                types.append("H_W3" if is_acid_o(partner) else "H_W2")
            elif ps == "N":
                types.append("H_W4")
            else:
                raise ValueError(f"H atom {i} bonded to {ps}: no W99 type")
        elif s == "N":
            if deg <= 1:
                types.append("N_W1")
            else:
                types.append("N_W2" if n_h == 0 else "N_W3" if n_h == 1 else "N_W4")
        elif s == "O":
            types.append("O_W1" if deg <= 1 else "O_W2")
        elif s in ("F", "S", "Cl"):
            types.append(f"{s}_X")
        else:
            raise ValueError(f"element {s} has no W99 parameters")
    return tuple(types)


def _h_site_matrix(symbols: tuple[str, ...], coords_A: np.ndarray, shift_A: float) -> np.ndarray:
    """(n, n) matrix M with sites = M @ atoms: each H moved ``shift_A`` towards its partner."""
    n = len(symbols)
    mat = np.eye(n)
    if shift_A == 0.0:
        return mat
    nbrs = bond_graph(symbols, coords_A)
    for i, s in enumerate(symbols):
        if s == "H" and nbrs[i]:
            j = min(nbrs[i], key=lambda k: np.linalg.norm(coords_A[k] - coords_A[i]))
            frac = shift_A / float(np.linalg.norm(coords_A[j] - coords_A[i]))
            mat[i, i] = 1.0 - frac
            mat[i, j] = frac
    return mat


@functools.lru_cache(maxsize=1)
def _pair_terms_function() -> type:
    """Build (once, after importing torch) the autograd Function for the pair energies."""
    import torch

    class _PairTerms(torch.autograd.Function):
        """Pair energies with analytic first derivatives (one pass, no autograd graph inside).

        forward(flat_sites (N, 3), flat_atoms (N, 3) or None (= sites), translation (P, 3),
        atom_i, atom_j (M,), pair (M,), table (M, 4) = [A, -B, C, k_e q q], model, outer_shell)
        forms the pair vectors d = x[atom_j] + translation[pair] - x[atom_i] and returns the
        switched, damped exp-6 energy of each pair from |d_site| and the Ewald real-space
        Coulomb energy from |d_atom|, both (M,) kJ/mol; with ``outer_shell`` only the
        switched dispersion -C/r^6 (and zero Coulomb). Backward scatters E'(r) d / r onto the
        atoms and translations (index_add). Second derivatives are not supported.
        """

        @staticmethod
        def forward(ctx, flat_sites, flat_atoms, translation, atom_i, atom_j, pair, table, model, outer_shell):
            tp = translation.index_select(0, pair)
            d_site = flat_sites.index_select(0, atom_j) - flat_sites.index_select(0, atom_i) + tp
            if flat_atoms is None:
                d_atom = d_site
            else:
                d_atom = flat_atoms.index_select(0, atom_j) - flat_atoms.index_select(0, atom_i) + tp
            amp, neg_expo, c6, pref = table.unbind(dim=1)
            r = d_site.norm(dim=1)
            inv_r = r.reciprocal()
            disp = c6 * inv_r.square().pow(3)
            if outer_shell:  # dispersion only
                e_rd = disp.neg()
                g_site = 6.0 * disp * inv_r * inv_r  # dE/dr / r
            else:
                rep = amp * torch.exp(neg_expo * r)
                e_rd = rep - disp
                g_site = (neg_expo * rep + 6.0 * disp * inv_r) * inv_r
            short = (r < 1.6 * model.damping_radius_A).nonzero().squeeze(1)
            if short.numel():
                rs, ds, gs = r[short], disp[short], g_site[short]
                y8 = (rs / model.damping_radius_A).pow(8)
                keep = torch.exp(-y8)
                g_site[short] = gs - (6.0 * ds * keep + ds * 8.0 * y8 * keep) / (rs * rs)
                e_rd[short] = e_rd[short] + ds * keep
            width = model.cutoff_A - model.switch_on_A
            outer = (r > model.switch_on_A).nonzero().squeeze(1)
            if outer.numel():
                x = ((r[outer] - model.switch_on_A) / width).clamp(max=1.0)
                sw = 1.0 - x * x * x * (10.0 - 15.0 * x + 6.0 * x * x)
                d_sw = -30.0 * x * x * (1.0 - x) * (1.0 - x) / width
                e_out = e_rd[outer]
                g_site[outer] = g_site[outer] * sw + e_out * d_sw / r[outer]
                e_rd[outer] = e_out * sw
            if model._has_charges and not outer_shell:
                ra = d_atom.norm(dim=1) if d_atom is not d_site else r
                inv_ra = ra.reciprocal() if d_atom is not d_site else inv_r
                alpha = model.alpha_per_A
                erfc_r = torch.special.erfc(alpha * ra) * inv_ra
                gauss = torch.exp((ra * alpha).square().neg()) * (2.0 * alpha / math.sqrt(math.pi))
                if model.electrostatics == "dsf":  # shifted force: V and dV/dr vanish at r_c
                    rc = model.ewald_cutoff_A
                    inside = (ra < rc).to(ra.dtype)
                    e_el = pref * inside * (erfc_r - model._dsf_shift + model._dsf_force * (ra - rc))
                    g_atom = (model._dsf_force - (gauss + erfc_r) * inv_ra) * pref * inside * inv_ra
                else:
                    e_el = pref * erfc_r
                    g_atom = -(gauss + erfc_r) * pref * inv_ra * inv_ra
            else:
                e_el = torch.zeros_like(r)
                g_atom = e_el
            ctx.save_for_backward(d_site, d_atom, g_site, g_atom, atom_i, atom_j, pair)
            ctx.same = d_atom is d_site
            ctx.shapes = (flat_sites.shape, translation.shape)
            return e_rd, e_el

        @staticmethod
        def backward(ctx, grad_rd, grad_el):
            d_site, d_atom, g_site, g_atom, atom_i, atom_j, pair = ctx.saved_tensors
            site_shape, trans_shape = ctx.shapes
            # component-major (3, M) scatters are ~1.5x faster than row-major (M, 3) ones
            f_site = (grad_rd * g_site)[None, :] * d_site.t()  # dE/d(d_site), (3, M)
            f_atom = (grad_el * g_atom)[None, :] * d_atom.t()
            n_rows = site_shape[0]

            def scatter(force):
                out = torch.zeros(3, n_rows, dtype=force.dtype)
                out.index_add_(1, atom_j, force).index_add_(1, atom_i, force.neg())  # alpha=-1 is ~6x slower
                return out.t()

            if ctx.same:
                total = (f_site + f_atom).contiguous()
                grad_sites, grad_atoms = scatter(total), None
            else:
                f_site, f_atom = f_site.contiguous(), f_atom.contiguous()
                grad_sites, grad_atoms = scatter(f_site), scatter(f_atom)
                total = f_site + f_atom
            grad_trans = torch.zeros(3, trans_shape[0], dtype=total.dtype).index_add_(1, pair, total).t()
            return grad_sites, grad_atoms, grad_trans, None, None, None, None, None, None

    return _PairTerms


@functools.lru_cache(maxsize=1)
def _reciprocal_function() -> type:
    """Build (once, after importing torch) the autograd Function of the Ewald k-space sum."""
    import torch

    class _Reciprocal(torch.autograd.Function):
        """T = sum_k w(k) |S(k)|^2 per cell with analytic first derivatives.

        forward(kvec (B, M, 3), pos (B, N, 3), q (N,), alpha, k_max) -> (B,), with
        w(k) = exp(-k^2 / (4 alpha^2)) / k^2 for k <= k_max (else 0) and
        S(k) = sum_n q_n exp(i k.r_n). With c_kn = cos(k.r_n), s_kn = sin(k.r_n) and
        A_kn = 2 q_n (S_s c_kn - S_c s_kn) = d|S(k)|^2 / d(k.r_n):
        dT/dr_n = sum_k w A_kn k and dT/dk = sum_n w A_kn r_n + |S|^2 dw/dk,
        dw/dk = -2 k w (1 / (4 alpha^2) + 1 / k^2). One cos and one sin per (k, n) pair,
        reused by the backward (autograd would recompute them and keep more temporaries).
        """

        @staticmethod
        def forward(ctx, kvec, pos, q, alpha, k_max):
            k2 = kvec.square().sum(dim=-1)  # (B, M)
            keep = k2 <= k_max * k_max
            safe_k2 = torch.where(keep, k2, torch.ones_like(k2))
            w = torch.where(keep, torch.exp(-k2 / (4.0 * alpha * alpha)) / safe_k2, torch.zeros_like(k2))
            phase = torch.bmm(kvec, pos.transpose(1, 2))  # (B, M, N)
            cos, sin = torch.cos(phase), torch.sin(phase)
            s_cos, s_sin = cos @ q, sin @ q  # (B, M)
            s2 = s_cos.square() + s_sin.square()
            ctx.save_for_backward(kvec, pos, q, cos, sin, s_cos, s_sin, w, s2, safe_k2)
            ctx.alpha = alpha
            return (w * s2).sum(dim=-1)

        @staticmethod
        def backward(ctx, grad_t):
            kvec, pos, q, cos, sin, s_cos, s_sin, w, s2, safe_k2 = ctx.saved_tensors
            # w A_kn with A_kn = 2 q_n (S_s cos_kn - S_c sin_kn), scaled by dL/dT per cell
            gw = (2.0 * grad_t)[:, None] * w  # (B, M)
            coef = ((gw * s_sin)[:, :, None] * cos - (gw * s_cos)[:, :, None] * sin) * q  # (B, M, N)
            grad_pos = torch.bmm(coef.transpose(1, 2), kvec)  # (B, N, 3)
            dw = -2.0 * w * (1.0 / (4.0 * ctx.alpha * ctx.alpha) + 1.0 / safe_k2)  # dw/dk = dw * k
            grad_k = torch.bmm(coef, pos) + (grad_t[:, None] * s2 * dw)[:, :, None] * kvec
            return grad_k, grad_pos, None, None, None

    return _Reciprocal


@functools.lru_cache(maxsize=1)
def _fused_pairs_function() -> type:
    """Build (once, after importing torch) the autograd Function around the compiled pair kernel."""
    import torch

    from sim_backends.csp.pairkernel import pair_energies_and_grads

    class _FusedPairs(torch.autograd.Function):
        """Pair part of the lattice energy from :func:`~sim_backends.csp.pairkernel.pair_energies_and_grads`.

        forward(sites (B, Z, n, 3), atoms (B, Z, n, 3), cell (B, 3, 3), model) -> exp-6 and
        real-space Coulomb energies per cell, (B,) each, kJ/mol. The kernel runs on detached
        float64 numpy copies and returns the analytic gradients with the energies; backward
        scales them by the incoming gradients per structure. Second derivatives are not
        supported.
        """

        @staticmethod
        def forward(ctx, sites, atoms, cell, model):
            def arr(x):
                return x.detach().to(torch.float64).numpy()

            e_rd, e_el, g_sites, g_atoms, g_cell_rd, g_cell_el = pair_energies_and_grads(
                arr(sites), arr(atoms), arr(cell), model._pair_table_np, model._kernel_params
            )
            dtype = sites.dtype
            ctx.save_for_backward(*(torch.from_numpy(g).to(dtype) for g in (g_sites, g_atoms, g_cell_rd, g_cell_el)))
            return torch.from_numpy(e_rd).to(dtype), torch.from_numpy(e_el).to(dtype)

        @staticmethod
        def backward(ctx, grad_rd, grad_el):
            g_sites, g_atoms, g_cell_rd, g_cell_el = ctx.saved_tensors
            gr, ge = grad_rd[:, None, None], grad_el[:, None, None]
            return (g_sites * gr[..., None], g_atoms * ge[..., None], g_cell_rd * gr + g_cell_el * ge, None)

    return _FusedPairs


class LatticeEnergyModel:
    """exp-6 (W99) repulsion-dispersion + Ewald point-charge electrostatics, torch, batched.

    One model serves one rigid molecule; it evaluates B crystal structures with the same Z
    at once. Neighbours are found per call from molecular centres (no stored lists), so the
    energy is a smooth function of cell and coordinates that autograd differentiates.

    Args:
        molecule: the rigid molecule (atom order, charges and W99 types are taken from it);
            n_atoms + n_sites charges switch on the lone-pair charge sites (module docstring).
        cutoff_A: cutoff (A) of the exp-6 sum, switched off smoothly over the last
            ``switch_width_A``; pairs beyond ``ewald_cutoff_A`` get dispersion only.
        ewald_accuracy: target relative accuracy eps of the Ewald sum; alpha =
            sqrt(-ln eps) / ewald_cutoff_A and k_max = 2 alpha sqrt(-ln eps).
        dtype: torch dtype (default float64).
        switch_width_A: width of the exp-6 switching region (A).
        damping_radius_A: r_d of the short-range dispersion damping 1 - exp(-(r/r_d)^8).
        h_shift_A: foreshortening of the H repulsion-dispersion sites (W99: 0.1 A).
        dispersion_tail: add the isotropic -C/r^6 tail beyond the switch.
        ewald_cutoff_A: real-space cutoff of the Ewald sum (default min(cutoff_A, 9 A)); a
            shorter one moves work to the (cheap) reciprocal sum at the same accuracy.
            With ``electrostatics="dsf"`` it is the cutoff r_c of the DSF Coulomb sum.
        electrostatics: ``"ewald"`` (default, converged Ewald sum) or ``"dsf"``: damped
            shifted-force real-space Coulomb (Fennell & Gezelter, J. Chem. Phys. 124,
            234104 (2006)) with no reciprocal sum -- cheaper and smooth, an approximation
            used for the first stage of staged CSP (see ``tests/sim_backends/csp/test_csp_speed.py`` for the
            measured deviation from Ewald).
        dsf_alpha_per_A: damping parameter alpha of the DSF sum (1/A; 0.2 as recommended by
            Fennell & Gezelter for cutoffs of 9-12 A).
        pair_kernel: ``"numba"`` (default): the molecule-pair search and all atom-pair
            energies and gradients in one compiled pass
            (:mod:`sim_backends.csp.pairkernel`); ``"torch"``: the same physics as batched
            tensor operations (``_molecule_pairs`` + ``_pair_energies``). Both give the same
            energies to rounding (``tests/sim_backends/csp/test_pairkernel.py``).
        params: repulsion-dispersion parameter set, a key of :data:`PARAMETER_SETS`
            (default :data:`DEFAULT_PARAMETER_SET`, read when the model is built).
    """

    def __init__(
        self,
        molecule: RigidMolecule,
        cutoff_A: float = 12.0,
        ewald_accuracy: float = 1e-6,
        dtype: Any = None,
        switch_width_A: float = 1.0,
        damping_radius_A: float = 1.4,
        h_shift_A: float = W99_H_SHIFT_A,
        dispersion_tail: bool = True,
        ewald_cutoff_A: float | None = None,
        electrostatics: str = "ewald",
        dsf_alpha_per_A: float = 0.2,
        pair_kernel: str = "numba",
        params: str | None = None,
    ) -> None:
        import torch

        if pair_kernel not in ("numba", "torch"):
            raise ValueError(f"pair_kernel must be 'numba' or 'torch', got {pair_kernel!r}")
        if electrostatics not in ("ewald", "dsf"):
            raise ValueError(f"electrostatics must be 'ewald' or 'dsf', got {electrostatics!r}")
        if electrostatics == "dsf" and not dsf_alpha_per_A >= 0.0:
            raise ValueError(f"dsf_alpha_per_A must be >= 0, got {dsf_alpha_per_A}")

        if not (0.0 < ewald_accuracy < 1.0):
            raise ValueError(f"ewald_accuracy must be in (0, 1), got {ewald_accuracy}")
        if not (cutoff_A > switch_width_A > 0.0):
            raise ValueError(f"need cutoff_A > switch_width_A > 0, got {cutoff_A}, {switch_width_A}")
        ewald_cutoff_A = min(cutoff_A, DEFAULT_EWALD_CUTOFF_A) if ewald_cutoff_A is None else ewald_cutoff_A
        if not (0.0 < ewald_cutoff_A <= cutoff_A):
            raise ValueError(f"need 0 < ewald_cutoff_A <= cutoff_A, got {ewald_cutoff_A}, {cutoff_A}")
        unknown = sorted(set(molecule.ff_types) - set(W99_PARAMS))
        if unknown:
            raise ValueError(f"unknown force-field type(s) {unknown}")
        #: name of the repulsion-dispersion parameter set (:data:`PARAMETER_SETS`)
        self.params = DEFAULT_PARAMETER_SET if params is None else params
        table = parameter_table(self.params)
        net = float(np.sum(molecule.charges_e))
        if abs(net) > 1e-6:
            raise ValueError(f"charges sum to {net:.2e} e; the Ewald sum here needs neutral molecules")
        self.molecule = molecule
        self.dtype = dtype or torch.float64
        self.cutoff_A = float(cutoff_A)
        self.switch_on_A = float(cutoff_A - switch_width_A)
        self.damping_radius_A = float(damping_radius_A)
        self.dispersion_tail = bool(dispersion_tail)
        self.n_atoms = len(molecule.symbols)
        self.pair_kernel = pair_kernel
        #: atom pairs screened per segment of the pair list (speed knob, no effect on results)
        self.pair_chunk = 1_000_000

        body = np.asarray(molecule.coords_A, dtype=float)
        n_q = len(molecule.charges_e)
        lp_weights = np.zeros((0, self.n_atoms))
        if n_q != self.n_atoms:
            from sim_backends.csp.charges import lone_pair_sites

            # the sites of N and O (resp-lp) or of N only (resp-lpn): the charge count tells which
            # (the two site sets differ in size unless the molecule has no O site, then they are equal)
            options = [lone_pair_sites(molecule.symbols, body, elements)[0] for elements in (("N", "O"), ("N",))]
            lp_weights = next((w for w in options if n_q == self.n_atoms + len(w)), None)
            if lp_weights is None:
                raise ValueError(f"{n_q} charges for {self.n_atoms} atoms and {len(options[0])} lone-pair sites "
                                 f"({len(options[1])} on N)")
        #: off-atom charge sites (lone pairs, ``charges="resp-lp"`` or ``"resp-lpn"``), after the atoms
        self.n_virtual = len(lp_weights)
        #: charge sites per molecule (atoms + lone-pair sites); the pair sums run over these
        self.n_sites = self.n_atoms + self.n_virtual
        params = np.array([table[t] for t in molecule.ff_types] + [(0.0, 3.6, 0.0)] * self.n_virtual)
        a_ij = np.sqrt(np.outer(params[:, 0], params[:, 0]))
        b_ij = 0.5 * (params[:, 1][:, None] + params[:, 1][None, :])
        c_ij = np.sqrt(np.outer(params[:, 2], params[:, 2]))
        charges = np.asarray(molecule.charges_e, dtype=float)
        charge_mat = np.vstack([np.eye(self.n_atoms), lp_weights])  # (n_sites, n): charge positions
        site_mat = np.vstack([_h_site_matrix(molecule.symbols, body, h_shift_A), lp_weights])
        self.has_h_sites = not np.allclose(site_mat, charge_mat)
        sites = site_mat @ body
        centred = np.concatenate([charge_mat @ body, sites]) - (charge_mat @ body).mean(axis=0)
        #: largest distance (A) of an atom or exp-6 site from the atom centroid
        self.extent_A = float(np.linalg.norm(centred, axis=1).max())

        log_eps = -math.log(ewald_accuracy)
        self.ewald_cutoff_A = float(ewald_cutoff_A)
        self.electrostatics = electrostatics
        self.alpha_per_A = math.sqrt(log_eps) / self.ewald_cutoff_A
        self.kmax_per_A = 2.0 * self.alpha_per_A * math.sqrt(log_eps)
        if electrostatics == "dsf":
            # Fennell & Gezelter, J. Chem. Phys. 124, 234104 (2006), eq. 19: the damped
            # Coulomb erfc(a r)/r shifted so that energy and force vanish at r_c
            self.alpha_per_A = float(dsf_alpha_per_A)
            rc, a = self.ewald_cutoff_A, self.alpha_per_A
            self._dsf_shift = math.erfc(a * rc) / rc
            self._dsf_force = math.erfc(a * rc) / rc**2 + 2.0 * a / math.sqrt(math.pi) * math.exp(-(a * rc) ** 2) / rc

        t = lambda x: torch.tensor(np.array(x, dtype=float), dtype=self.dtype)  # noqa: E731
        self._A, self._B, self._C = t(a_ij), t(b_ij), t(c_ij)
        self._q = t(charges)
        self._qq = t(np.outer(charges, charges))
        #: (n*n, 4) per atom pair (a, c) at row a*n + c: A, -B, C, k_e q_a q_c
        self._pair_table = t(
            np.stack([a_ij.ravel(), -b_ij.ravel(), c_ij.ravel(), COULOMB_KJMOL_A * np.outer(charges, charges).ravel()], axis=1)
        )
        self._site_mat = t(site_mat)
        self._charge_mat = t(charge_mat)
        self._has_charges = bool(np.any(charges != 0.0))
        self._pair_table_np = self._pair_table.to(torch.float64).numpy()
        self._intra_per_molecule: float | None = None  # rigid-molecule constant (energy_and_grad_numpy)
        iu, ju = np.triu_indices(self.n_sites, 1)
        incidence = np.zeros((len(iu), self.n_sites))  # +1 at ju, -1 at iu: pair forces -> atoms
        incidence[np.arange(len(iu)), ju] = 1.0
        incidence[np.arange(len(iu)), iu] = -1.0
        qq_full = np.outer(charges, charges)
        #: intramolecular pairs for :meth:`_self_intra_numpy`: iu, ju, q q, sum q^2, incidence
        self._intra_pairs = (iu, ju, qq_full[iu, ju], float(np.trace(qq_full)), incidence)
        self._sum_c = float(c_ij.sum())
        # effective cutoff of the tail: int_{r_on}^inf (1 - S) r^-4 dr = 1 / (3 rc_eff^3)
        r = np.linspace(self.switch_on_A, self.cutoff_A, 2001)
        x = (r - self.switch_on_A) / switch_width_A
        one_minus_s = x**3 * (10 - 15 * x + 6 * x * x)
        integral = np.trapezoid(one_minus_s / r**4, r) + 1.0 / (3.0 * self.cutoff_A**3)
        self.tail_radius_A = (1.0 / (3.0 * integral)) ** (1.0 / 3.0)
        if pair_kernel == "numba":
            from sim_backends.csp.pairkernel import kernel_params

            self._kernel_params = kernel_params(self)

    # ------------------------------------------------------------------ public API
    def term_model(self, rep_scale: np.ndarray, disp_scale: np.ndarray, charges: bool) -> LatticeEnergyModel:
        """A copy whose exp-6 pair table is scaled pair by pair (for fitting scale factors).

        The energy is linear in each scale, so a set of term models (e.g. one per pair of
        atom groups, repulsion and dispersion apart, and one for the charges) decomposes the
        lattice energy into parts that any combination of scale factors recombines.

        Args:
            rep_scale, disp_scale: (n_sites, n_sites) multipliers of A_ab and C_ab (the
                dispersion tail follows C).
            charges: keep the electrostatics (False: charges off).
        """
        import copy

        import torch

        rep, disp = np.asarray(rep_scale, dtype=float), np.asarray(disp_scale, dtype=float)
        if rep.shape != (self.n_sites, self.n_sites) or disp.shape != rep.shape:
            raise ValueError(f"scales must have shape ({self.n_sites}, {self.n_sites})")
        out = copy.copy(self)
        table = self._pair_table.clone()
        table[:, 0] *= torch.as_tensor(rep.ravel(), dtype=table.dtype)
        table[:, 2] *= torch.as_tensor(disp.ravel(), dtype=table.dtype)
        if not charges:
            table[:, 3] = 0.0
        out._pair_table = table
        out._pair_table_np = table.to(torch.float64).numpy()
        out._sum_c = float(out._pair_table_np[:, 2].sum())
        out._has_charges = self._has_charges and charges
        out._intra_per_molecule = None
        if self.pair_kernel == "numba":
            from sim_backends.csp.pairkernel import kernel_params

            out._kernel_params = kernel_params(out)
        return out

    def energy_kjmol(self, cell_A: torch.Tensor, coords_A: torch.Tensor) -> torch.Tensor:
        """Lattice energy per molecule.

        Args:
            cell_A: (B, 3, 3) lattice vectors a, b, c as rows, Angstrom.
            coords_A: (B, Z, n_atoms, 3) Cartesian positions of all atoms of the Z molecules
                of each cell, atom order as in the molecule.

        Returns:
            (B,) lattice energy per molecule, kJ/mol (intermolecular exp-6 + electrostatics),
            differentiable w.r.t. both inputs.

        Raises:
            ValueError: wrong shapes, non-finite input, or a degenerate cell.
        """
        terms = self.terms_kjmol(cell_A, coords_A)
        return terms["repdisp_kjmol"] + terms["elec_kjmol"]

    def energy_and_grad(
        self, cell_A: torch.Tensor, coords_A: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Energies and their gradients w.r.t. cell and coordinates.

        Args:
            cell_A: (B, 3, 3), Angstrom.
            coords_A: (B, Z, n_atoms, 3), Angstrom.

        Returns:
            energy (B,) kJ/mol per molecule, dE/dcell (B, 3, 3) and dE/dcoords
            (B, Z, n_atoms, 3) in kJ/mol/A (detached). Only first derivatives are available
            (the pair kernel has an analytic backward without double-backward support).
        """
        import torch

        cell, coords = self._check(cell_A, coords_A)
        cell = cell.detach().clone().requires_grad_(True)
        coords = coords.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            energy = self.energy_kjmol(cell, coords)
            g_cell, g_coords = torch.autograd.grad(energy.sum(), (cell, coords))
        return energy.detach(), g_cell, g_coords

    def energy_and_grad_numpy(
        self, cell_A: np.ndarray, coords_A: np.ndarray, symmetric: bool = False, rigid: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`energy_and_grad` without an autograd graph for the pair and tail terms (numba path).

        The pair part and its gradients come straight from the compiled kernel; the dispersion
        tail -K / V has dE/dH = (K / V) H^-T; the self and intramolecular Coulomb corrections
        are summed in numpy (:meth:`_self_intra_numpy`), and only the Ewald k-space sum
        (``electrostatics="ewald"``) goes through autograd. Same values as
        :meth:`energy_and_grad` to rounding; used by the minimisers (about 40 tensor
        operations and their backward per call fewer).

        Args:
            cell_A: (B, 3, 3) lattice vectors as rows, Angstrom (non-degenerate, finite).
            coords_A: (B, Z, n_atoms, 3) Cartesian coordinates, Angstrom.
            symmetric: the Z molecules are space-group images of molecule 0 (Z' = 1): the
                pair sum runs over molecule 0's pairs only, weighted by Z (see
                :func:`~sim_backends.csp.pairkernel.pair_energies_and_grads`). The energy is
                unchanged; the gradients are exact only along symmetry-preserving
                displacements, which is all a symmetry-constrained minimiser uses.
            rigid: every molecule has this model's body geometry (rigid-body moves only): the
                self and intramolecular Coulomb corrections are then a constant per molecule,
                added without computing them again, and their gradient (internal forces: no
                net force, torque or strain on a rigid body) is left out.

        Returns:
            energy (B,) kJ/mol per molecule, dE/dcell (B, 3, 3) and dE/dcoords
            (B, Z, n_atoms, 3) in kJ/mol/A, float64 numpy arrays.

        Raises:
            ValueError: ``pair_kernel`` is not ``"numba"``.
        """
        import torch

        from sim_backends.csp.pairkernel import pair_energies_and_grads

        if self.pair_kernel != "numba":
            raise ValueError("energy_and_grad_numpy needs pair_kernel='numba'")
        cell = np.ascontiguousarray(cell_A, dtype=np.float64)
        coords = np.ascontiguousarray(coords_A, dtype=np.float64)
        n_mol = coords.shape[1]
        site_mat = self._site_mat.to(torch.float64).numpy()
        charge_mat = self._charge_mat.to(torch.float64).numpy()
        atoms = charge_mat @ coords if self.n_virtual else coords  # charge sites (B, Z, n_sites, 3)
        sites = site_mat @ coords if self.has_h_sites else atoms
        e_rd, e_el, g_sites, g_atoms, g_cell_rd, g_cell_el = pair_energies_and_grads(
            sites, atoms, cell, self._pair_table_np, self._kernel_params, symmetric=symmetric
        )
        energy = e_rd + e_el
        g_cell = g_cell_rd + g_cell_el
        if self.has_h_sites:  # gradient w.r.t. the charge sites, mapped to the atoms at the end
            g_coords = site_mat.T @ g_sites
            g_charge = g_atoms
        else:
            g_coords = np.zeros_like(coords)
            g_charge = g_atoms + g_sites
        if self.dispersion_tail:
            det = np.linalg.det(cell)
            tail = -2.0 * math.pi * n_mol**2 * self._sum_c / (3.0 * np.abs(det) * self.tail_radius_A**3)
            energy = energy + tail
            g_cell = g_cell - tail[:, None, None] * np.linalg.inv(cell).transpose(0, 2, 1)
        if self._has_charges:
            if rigid:
                if self._intra_per_molecule is None:
                    self._intra_per_molecule = float(self._self_intra_numpy(atoms[:1, :1])[0][0])
                energy = energy + n_mol * self._intra_per_molecule
            else:
                e_intra, g_intra = self._self_intra_numpy(atoms)
                energy = energy + e_intra
                g_charge = g_charge + g_intra
            if self.electrostatics == "ewald":
                cell_t = torch.from_numpy(cell).to(self.dtype).requires_grad_(True)
                coords_t = torch.from_numpy(np.ascontiguousarray(atoms)).to(self.dtype).requires_grad_(True)
                with torch.enable_grad():
                    volume = torch.linalg.det(cell_t).abs()
                    recip = self._coulomb_reciprocal(cell_t, coords_t, volume)
                    gc, gx = torch.autograd.grad(recip.sum(), (cell_t, coords_t))
                energy = energy + recip.detach().to(torch.float64).numpy()
                g_cell = g_cell + gc.to(torch.float64).numpy()
                g_charge = g_charge + gx.to(torch.float64).numpy()
        g_coords = g_coords + (charge_mat.T @ g_charge if self.n_virtual else g_charge)
        return energy / n_mol, g_cell / n_mol, g_coords / n_mol

    def _self_intra_numpy(self, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Self term plus intramolecular correction per cell and its coordinate gradient (numpy).

        The same sums as :meth:`_dsf_self_intra` (DSF) and :meth:`_coulomb_self_intra` (Ewald):
        both remove -k_e q_a q_b erf(alpha r)/r per intramolecular pair (DSF also the energy
        shift erfc(alpha r_c)/r_c), so dE/dr = k_e q_a q_b (erf(alpha r)/r^2 - 2 alpha/sqrt(pi)
        exp(-alpha^2 r^2)/r) in both cases.

        Args:
            coords: (B, Z, n, 3) float64, Angstrom.

        Returns:
            energy per cell (B,) kJ/mol and its gradient (B, Z, n, 3) kJ/mol/A.
        """
        from scipy.special import erf

        n_mol = coords.shape[1]
        a = self.alpha_per_A
        iu, ju, qq, q2, incidence = self._intra_pairs
        d = coords[:, :, ju] - coords[:, :, iu]  # (B, Z, P, 3)
        r = np.sqrt((d * d).sum(-1))
        erf_r = erf(a * r) / r
        if self.electrostatics == "dsf":
            rc = self.ewald_cutoff_A
            self_term = -(math.erfc(a * rc) / (2.0 * rc) + a / math.sqrt(math.pi)) * q2 * n_mol
            pair = -erf_r - self._dsf_shift
        else:
            self_term = -a / math.sqrt(math.pi) * q2 * n_mol
            pair = -erf_r
        energy = COULOMB_KJMOL_A * (self_term + (pair @ qq).sum(1))
        de_dr = COULOMB_KJMOL_A * qq * (erf_r - 2.0 * a / math.sqrt(math.pi) * np.exp(-(a * r) ** 2)) / r
        force = (de_dr / r)[..., None] * d  # dE/d(x_ju) = -dE/d(x_iu), (B, Z, P, 3)
        return energy, incidence.T @ force

    def terms_kjmol(self, cell_A: torch.Tensor, coords_A: torch.Tensor) -> dict[str, torch.Tensor]:
        """The two parts of :meth:`energy_kjmol`: ``repdisp_kjmol`` and ``elec_kjmol``, each (B,)."""
        import torch

        cell, coords = self._check(cell_A, coords_A)
        coords_in = coords
        n_batch, n_mol = coords.shape[:2]
        volume = torch.linalg.det(cell).abs()
        if bool((volume < 1e-6).any()):
            raise ValueError("degenerate cell (volume ~ 0)")
        if self.n_virtual:  # charge sites: atoms, then lone-pair sites (affine in the atoms)
            coords = torch.einsum("ij,bzjd->bzid", self._charge_mat, coords)
        sites = torch.einsum("ij,bzjd->bzid", self._site_mat, coords_in) if self.has_h_sites else coords
        if self.pair_kernel == "numba":
            repdisp, elec = _fused_pairs_function().apply(sites, coords, cell, self)
        else:
            repdisp, elec = self._torch_pairs(cell, sites, coords)
        if self.dispersion_tail:  # per cell: -2 pi Z^2 sum_ab C_ab / (3 V rc_eff^3)
            repdisp = repdisp - 2.0 * math.pi * n_mol**2 * self._sum_c / (3.0 * volume * self.tail_radius_A**3)
        if self._has_charges and self.electrostatics == "dsf":
            elec = elec + self._dsf_self_intra(coords)
        elif self._has_charges:
            elec = elec + self._coulomb_reciprocal(cell, coords, volume) + self._coulomb_self_intra(coords)
        return {"repdisp_kjmol": repdisp / n_mol, "elec_kjmol": elec / n_mol}

    # ------------------------------------------------------------------ internals
    def _torch_pairs(
        self, cell: torch.Tensor, sites: torch.Tensor, coords: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pair part on torch (``pair_kernel="torch"``): exp-6 and real-space Coulomb per cell, (B,) each."""
        import torch

        n_batch = coords.shape[0]
        b_idx, i_idx, j_idx, shift = self._molecule_pairs(cell.detach(), coords.detach().mean(dim=2))
        repdisp = torch.zeros(n_batch, dtype=self.dtype)
        elec = torch.zeros(n_batch, dtype=self.dtype)
        if b_idx.numel():
            translation = torch.einsum("pk,pkd->pd", shift, cell[b_idx])  # (P, 3)
            # segments of the molecule-pair list keep the per-pair temporaries cache-sized
            step = max(1, self.pair_chunk // (self.n_sites * self.n_sites))
            for start in range(0, len(b_idx), step):
                sl = slice(start, start + step)
                e_rd, e_el = self._pair_energies(sites, coords, b_idx[sl], i_idx[sl], j_idx[sl], translation[sl])
                repdisp = repdisp + e_rd
                elec = elec + e_el
        return repdisp, elec

    def _check(self, cell_A: Any, coords_A: Any) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        cell = torch.as_tensor(cell_A, dtype=self.dtype)
        coords = torch.as_tensor(coords_A, dtype=self.dtype)
        if cell.ndim != 3 or cell.shape[1:] != (3, 3):
            raise ValueError(f"cell_A must have shape (B, 3, 3), got {tuple(cell.shape)}")
        if coords.ndim != 4 or coords.shape[2:] != (self.n_atoms, 3) or coords.shape[0] != cell.shape[0]:
            raise ValueError(
                f"coords_A must have shape (B={cell.shape[0]}, Z, {self.n_atoms}, 3), got {tuple(coords.shape)}"
            )
        if not (torch.isfinite(cell).all() and torch.isfinite(coords).all()):
            raise ValueError("cell_A and coords_A must be finite")
        return cell, coords

    def _molecule_pairs(
        self, cell: torch.Tensor, centres: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Molecule pairs (b, i, j, lattice shift) whose atoms can come within the cutoff.

        Each unordered pair of distinct molecules is listed once (i < j, every image); a
        molecule and its own images (i == j) once per +-T pair (half space of shifts), so the
        plain sum over the list is the energy per cell.

        Args:
            cell: (B, 3, 3) detached cell.
            centres: (B, Z, 3) detached atom centroids of the molecules.

        Returns:
            b, i, j: (P,) long indices; shift: (P, 3) integer lattice shifts (as dtype).
        """
        import torch

        n_batch, n_mol = centres.shape[:2]
        reach = self.cutoff_A + 2.0 * self.extent_A
        inv = torch.linalg.inv(cell)
        widths = 1.0 / inv.norm(dim=1)  # (B, 3) perpendicular widths, 1 / |column k of inv|
        n_max = torch.ceil(reach / widths + 0.5).amax(dim=0).long().tolist()
        axes = [torch.arange(-m, m + 1, dtype=self.dtype) for m in n_max]
        grid = torch.cartesian_prod(*axes)  # (K, 3)
        is_half = (grid[:, 0] > 0) | ((grid[:, 0] == 0) & (grid[:, 1] > 0)) | (
            (grid[:, 0] == 0) & (grid[:, 1] == 0) & (grid[:, 2] > 0)
        )
        upper = torch.triu(torch.ones(n_mol, n_mol, dtype=torch.bool), diagonal=1)
        diag = torch.eye(n_mol, dtype=torch.bool)
        allowed = upper[:, :, None] | (diag[:, :, None] & is_half[None, None, :])  # (Z, Z, K)

        delta = centres[:, None, :, :] - centres[:, :, None, :]  # (B, Z, Z, 3): c_j - c_i
        wrap = -torch.round(torch.einsum("bijd,bde->bije", delta, inv))
        wrapped = (delta + torch.einsum("bijk,bkd->bijd", wrap, cell)).reshape(n_batch, n_mol * n_mol, 3)
        allowed = allowed.reshape(n_mol * n_mol, -1)
        chunk = max(1, int(4e6 // max(1, n_mol * n_mol * grid.shape[0])))
        found = []
        for start in range(0, n_batch, chunk):
            sl = slice(start, start + chunk)
            images = torch.einsum("kl,bld->bkd", grid, cell[sl])  # (b, K, 3)
            # |w + T|^2 = |w|^2 + |T|^2 + 2 w.T as one batched matrix product: no (.., K, 3)
            # temporary and no norm (this search was ~25 % of a stage-1 minimisation)
            dist2 = torch.baddbmm(wrapped[sl].square().sum(-1, keepdim=True) + images.square().sum(-1)[:, None, :],
                                  wrapped[sl], images.transpose(1, 2), alpha=2.0)
            idx = ((dist2 < reach * reach) & allowed[None]).nonzero()
            idx[:, 0] += start
            found.append(idx)
        idx = torch.cat(found)
        b, ij, k = idx.unbind(dim=1)
        i = torch.div(ij, n_mol, rounding_mode="floor")
        j = ij - i * n_mol
        return b, i, j, wrap[b, i, j] + grid[k]

    def _pair_energies(
        self,
        sites: torch.Tensor,
        coords: torch.Tensor,
        b_idx: torch.Tensor,
        i_idx: torch.Tensor,
        j_idx: torch.Tensor,
        translation: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Energies of the intermolecular atom pairs within the cutoff, summed per structure.

        A detached distance screen over the molecule pairs splits the atom pairs into an
        inner list (exp-6 sites closer than the Ewald real-space cutoff + 0.25 A: exp-6 and
        real-space Coulomb) and an outer shell (up to the exp-6 cutoff: dispersion only, where
        the repulsion, < 1e-7 kJ/mol, and erfc(alpha r) are negligible). Their separation
        vectors are gathered inside :class:`_PairTerms`, which returns energies and supplies
        analytic first derivatives to autograd.

        Args:
            sites: (B, Z, n, 3) exp-6 sites; coords: (B, Z, n, 3) nuclei (charge sites).
            b_idx, i_idx, j_idx: (P,) molecule pairs; translation: (P, 3) lattice vector of j.

        Returns:
            exp-6 and real-space Coulomb energies per structure, each (B,) kJ/mol (B from
            ``sites``).
        """
        import torch

        n = self.n_sites
        n_batch, n_mol = sites.shape[:2]
        margin = 0.25 if self.has_h_sites else 0.0
        screen = self.cutoff_A + margin
        inner = self.ewald_cutoff_A + margin
        mol_i = b_idx * n_mol + i_idx  # (P,) flat molecule indices
        mol_j = b_idx * n_mol + j_idx
        site_mols = sites.reshape(-1, n, 3)
        with torch.no_grad():
            xi = site_mols.index_select(0, mol_i)
            xj = site_mols.index_select(0, mol_j) + translation[:, None, :]
            # squared distances by |x|^2 + |y|^2 - 2 x.y (screening only: ~1e-12 A^2 rounding)
            dist2 = torch.baddbmm(
                xi.square().sum(dim=2, keepdim=True) + xj.square().sum(dim=2)[:, None, :],
                xi, xj.transpose(1, 2), alpha=-2.0,
            )
            flat_d2 = dist2.view(-1)
            hit = (flat_d2 < screen * screen).nonzero().squeeze(1)  # flat (p, a, c) indices
            hits = [hit]
            if inner < screen:
                is_inner = flat_d2.index_select(0, hit) < inner * inner
                hits = [hit[is_inner], hit[~is_inner]]
        flat_sites = sites.reshape(-1, 3)
        flat_atoms = coords.reshape(-1, 3) if self.has_h_sites else None
        repdisp = torch.zeros(n_batch, dtype=self.dtype)
        elec = torch.zeros(n_batch, dtype=self.dtype)
        for k, hit in enumerate(hits):
            if not len(hit):
                continue
            p = torch.div(hit, n * n, rounding_mode="floor")
            ac = hit - p * (n * n)  # a * n + c
            a = torch.div(ac, n, rounding_mode="floor")
            atom_i = mol_i.index_select(0, p) * n + a  # flat atom indices into (B*Z*n, 3)
            atom_j = mol_j.index_select(0, p) * n + (ac - a * n)
            table = self._pair_table.index_select(0, ac)
            outer_shell = k == 1
            e_rd, e_el = _pair_terms_function().apply(
                flat_sites, None if outer_shell else flat_atoms, translation, atom_i, atom_j, p, table, self,
                outer_shell,
            )
            owner = b_idx.index_select(0, p)
            repdisp = repdisp.index_add(0, owner, e_rd)
            if not outer_shell:
                elec = elec.index_add(0, owner, e_el)
        return repdisp, elec

    def _coulomb_reciprocal(self, cell: torch.Tensor, coords: torch.Tensor, volume: torch.Tensor) -> torch.Tensor:
        """Ewald reciprocal-space energy per cell, half space of k with factor 2: (B,) kJ/mol.

        E = (4 pi k_e / V) sum_{k in half space, |k| <= k_max} w(k) |S(k)|^2 with
        w = exp(-k^2 / 4 alpha^2) / k^2 and S(k) = sum_n q_n exp(i k.r_n). Only the
        integer vectors m (k = 2 pi H^-T m) inside the k_max sphere of at least one cell
        of the batch are evaluated (the sphere fills ~half of the bounding box of m), and
        the structure-factor sum has an analytic backward (:func:`_reciprocal_function`).
        """
        import torch

        n_batch = cell.shape[0]
        lengths = cell.detach().norm(dim=2)  # (B, 3)
        m_max = torch.floor(self.kmax_per_A * lengths / (2.0 * math.pi)).amax(dim=0).long().tolist()
        axes = [torch.arange(-m, m + 1, dtype=self.dtype) for m in m_max]
        grid = torch.cartesian_prod(*axes)
        half = (grid[:, 0] > 0) | ((grid[:, 0] == 0) & (grid[:, 1] > 0)) | (
            (grid[:, 0] == 0) & (grid[:, 1] == 0) & (grid[:, 2] > 0)
        )
        grid = grid[half]
        recip = 2.0 * math.pi * torch.linalg.inv(cell).transpose(1, 2)  # rows: reciprocal vectors
        with torch.no_grad():
            k2_all = torch.einsum("ml,bld->bmd", grid, recip.detach()).square().sum(dim=-1)
            grid = grid[(k2_all <= self.kmax_per_A**2).any(dim=0)]
        kvec = torch.einsum("ml,bld->bmd", grid, recip)  # (B, M, 3)
        pos = coords.reshape(n_batch, -1, 3)
        q = self._q.repeat(coords.shape[1])
        total = _reciprocal_function().apply(kvec, pos, q, self.alpha_per_A, self.kmax_per_A)
        return COULOMB_KJMOL_A * 4.0 * math.pi / volume * total

    def _dsf_self_intra(self, coords: torch.Tensor) -> torch.Tensor:
        """DSF self term and intramolecular correction per cell: (B,) kJ/mol.

        The Wolf/DSF sum of Fennell & Gezelter runs over all pairs within r_c, plus the self
        term -(erfc(a r_c) / (2 r_c) + a / sqrt(pi)) sum q^2. Intramolecular Coulomb is
        excluded here, so every intramolecular pair contributes its energy-shifted damped
        term minus the bare 1/r, q q (-erf(a r)/r - erfc(a r_c)/r_c); the force-shift part
        is left out for them (it would not cancel for neutral molecules), so with a = 0 the
        whole correction vanishes and with a > 0 it is the Ewald self + intramolecular term
        plus a small shift. For rigid molecules this is a constant per molecule, kept so
        that DSF and Ewald energies are on one scale.
        """
        import torch

        n_mol = coords.shape[1]
        rc, a = self.ewald_cutoff_A, self.alpha_per_A
        self_term = -(math.erfc(a * rc) / (2.0 * rc) + a / math.sqrt(math.pi)) * float(self._q.square().sum()) * n_mol
        iu, ju = torch.triu_indices(self.n_sites, self.n_sites, offset=1)
        r = (coords[:, :, iu, :] - coords[:, :, ju, :]).norm(dim=-1)  # (B, Z, n_pairs)
        v = -torch.erf(a * r) / r - self._dsf_shift
        intra = (self._qq[iu, ju] * v).sum(dim=(1, 2))
        return COULOMB_KJMOL_A * (self_term + intra)

    def _coulomb_self_intra(self, coords: torch.Tensor) -> torch.Tensor:
        """Self term plus removal of intramolecular pairs from the reciprocal sum: (B,) kJ/mol."""
        import torch

        n_mol = coords.shape[1]
        self_term = -self.alpha_per_A / math.sqrt(math.pi) * float(self._q.square().sum()) * n_mol
        iu, ju = torch.triu_indices(self.n_sites, self.n_sites, offset=1)
        r = (coords[:, :, iu, :] - coords[:, :, ju, :]).norm(dim=-1)  # (B, Z, n_pairs)
        intra = (self._qq[iu, ju] * torch.erf(self.alpha_per_A * r) / r).sum(dim=(1, 2))
        return COULOMB_KJMOL_A * (self_term - intra)
