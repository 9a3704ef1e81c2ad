"""Carrier mobility from transient localisation theory (TLT) on a crystal's transfer-integral
network: the model this project uses where Marcus hopping does not apply (``2 |J|max > lambda``,
:func:`sim_backends.mobility.hopping_regime_warning`).

Model (Fratini, Mayou and Ciuchi, Adv. Funct. Mater. 26, 2292 (2016); Fratini et al.,
Nat. Mater. 16, 998 (2017)). The carrier moves on a tight-binding network whose transfer
integrals fluctuate with the slow intermolecular vibrations. Over times shorter than those
vibrations the carrier sees a frozen, disordered network and localises; the vibrations
release it after ``tau``. The mobility is a relaxation-time formula,

    ``mu = e L^2 / (2 k_B T tau)``, with the squared transient localisation length
    ``L^2_ab = (1/Z) sum_{n,m} exp(-E_n / k_B T) <n|j_a|m><m|j_b|n> 2 / ((hbar/tau)^2 + (E_m - E_n)^2)``,

averaged over frozen disorder realisations; ``|n>``, ``E_n`` are the eigenstates of one
realisation of the carrier Hamiltonian ``H`` on a periodic supercell and ``j = i [H, x]`` the
current operator (``<p|j_a|q> = i H_pq (r_q - r_p)_a`` with the hop vector of the bond).
Without disorder it reduces to the Drude band mobility ``e tau <v^2> / (k_B T)`` (tested).

Inputs and the assumptions this project makes (stated in every result's ``extra``):

* the transfer integrals and hop vectors of :class:`sim_backends.transfer.CrystalTransfer`
  (its ``shifts`` place each neighbour in the supercell; a result without them cannot be
  used and :func:`tlt_mobility` raises :class:`SetupError`);
* the signs of the couplings where they are consistent (:func:`carrier_couplings`): the
  hole Hamiltonian is ``-H`` of the HOMO network (holes fill the top of the HOMO band), the
  electron one ``+H`` of the LUMO network. One orbital is computed per molecule of the cell
  and reused for every dimer, so flipping a molecule's orbital phase flips all its couplings
  together (a gauge change that leaves the spectrum alone); a symmetry class's coupling is
  reused for every dimer of the class, which keeps the phases consistent for Z <= 2 but not in
  general (each molecule's orbital phase is independent, and a symmetry operation may map one
  molecule's orbital to minus another's). So signs are used for Z <= 2 with a single
  frontier orbital, and otherwise (Z > 2, or a degenerate manifold, whose rotation-invariant
  ``J_eff`` has no sign and stands, one orbital per molecule, for a multi-band problem) every
  coupling enters with one sign, ``H_pq = -|J|``: on a network
  with loops (herringbone) that is the most favourable sign pattern, usually an upper bound
  (on the experimental pentacene crystal, B3LYP/6-31G, 3.90 against 1.47 cm^2/(V s) with the
  signs); the result says which (``signs``);
* thermal fluctuations of each transfer integral: Gaussian, sd
  ``sigma = disorder_ratio * |J| * sqrt(T / 300 K)`` (classical intermolecular modes,
  ``sigma^2 ~ k_B T``), ``disorder_ratio`` :data:`DISORDER_RATIO` by default (a level's
  ``tlt_disorder_ratio`` param, :data:`sim_backends.mobility.TRANSPORT_PARAMS`); not computed
  from the crystal's phonons (the TLT papers compute it; values of the order of half the
  coupling are typical for the acenes and rubrene at room temperature);
* ``hbar / tau`` :data:`HBAR_OVER_TAU_MEV` (the typical energy of the intermolecular modes;
  a level's ``tlt_hbar_over_tau_meV`` param);
* no site-energy (diagonal) disorder and no polaronic narrowing: TLT applies when
  ``lambda`` is small against the bandwidth, which is where it is used here.

Supercell: ``n_a`` cells along each lattice direction that the network connects (at least
``2 max|shift_a| + 1`` so a bond never wraps onto another), one cell along a direction it
does not connect (a layered network stays 2D), about :data:`TARGET_SITES` molecules.
The isotropic mobility is ``tr(mu) / 3``, as for the hopping mobilities
(:func:`sim_backends.mobility.tensor_summary`).

Units: J in meV, distances in A, mobility in cm^2/(V s). numpy only; cheap to import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sim_backends.base import SetupError

if TYPE_CHECKING:
    import numpy as np

    from sim_backends.transfer import CrystalTransfer

#: sd of each transfer integral's thermal fluctuation at 300 K, as a fraction of |J|
DISORDER_RATIO = 0.5
#: hbar / tau of the intermolecular modes that release the localised carrier (meV)
HBAR_OVER_TAU_MEV = 5.0
#: molecules in the supercell (about)
TARGET_SITES = 800
#: frozen disorder realisations averaged
N_SAMPLES = 8
#: largest supercell diagonalised (a network reaching far in every direction would need more:
#: :func:`tlt_network_mobility` refuses it, and :func:`sim_backends.mobility.crystal_mobility`
#: then keeps the hopping value with its regime warning)
MAX_SITES = 3000
#: what a result's level text says the model is
TLT_NAME = "transient localisation (TLT)"
#: what a result says of its couplings' signs (:func:`carrier_couplings`)
SIGNS_USED = "signed couplings"
SIGNS_NOT_RESOLVED = "one sign for every coupling (signs not resolved: an upper bound on a network with loops)"
SIGNS_DEGENERATE = ("one orbital per molecule with the degenerate manifold's rotation-invariant |J_eff|, one sign "
                    "for every coupling (a simplification of a multi-band problem; an upper bound on a network "
                    "with loops)")


@dataclass
class TltResult:
    """A TLT mobility: tensor and its isotropic average (``tr/3``) and largest principal
    value (cm^2/(V s)), the standard error of the isotropic average over realisations, the
    isotropic transient localisation length ``sqrt(tr(L^2)/3)`` (A) and the settings."""

    tensor_cm2Vs: np.ndarray
    iso: float
    max: float
    stderr_iso: float
    localisation_length_A: float
    supercell: tuple[int, int, int]
    n_sites: int
    n_samples: int
    disorder_ratio: float
    hbar_over_tau_meV: float
    signs: str = SIGNS_NOT_RESOLVED

    def to_extra(self) -> dict[str, Any]:
        """JSON-able summary (for a result's ``extra``)."""
        return {"model": TLT_NAME, "iso": self.iso, "max": self.max, "stderr_iso": round(self.stderr_iso, 6),
                "localisation_length_A": round(self.localisation_length_A, 3),
                "supercell": list(self.supercell), "n_sites": self.n_sites, "n_samples": self.n_samples,
                "disorder_ratio": self.disorder_ratio, "hbar_over_tau_meV": self.hbar_over_tau_meV,
                "signs": self.signs,
                "mobility_tensor_cm2Vs": self.tensor_cm2Vs.round(6).tolist()}


#: couplings below this fraction of the largest are left out of the network (J^2 below 1e-4 of
#: the largest; they would only enlarge the supercell)
NEGLIGIBLE_J = 0.01


def assumptions_text(disorder_ratio: float = DISORDER_RATIO, hbar_over_tau_meV: float = HBAR_OVER_TAU_MEV,
                     signs: str = SIGNS_USED) -> str:
    """The assumptions of a TLT value in one clause (module docstring)."""
    return (f"assumed thermal fluctuation of each |J| {disorder_ratio:g} |J| at 300 K and "
            f"hbar/tau {hbar_over_tau_meV:g} meV, not computed from the crystal's phonons; {signs}")


def carrier_couplings(transfer: CrystalTransfer, carrier: str) -> tuple[np.ndarray, str]:
    """Per neighbour, the coupling ``j`` entering the carrier Hamiltonian as ``H_pq = -j``
    (meV), and :data:`SIGNS_USED`, :data:`SIGNS_DEGENERATE` or :data:`SIGNS_NOT_RESOLVED`
    (module docstring): holes
    ``j = J_eff`` (``H_hole = -H_HOMO``), electrons ``j = -J_eff``, for Z <= 2 and a single
    frontier orbital; otherwise ``|J_eff|``."""
    import numpy as np

    classes = [c for _, _, c in transfer.neighbours]
    n_orb = int((transfer.manifolds.get(carrier) or {}).get("n", 1))
    if transfer.z <= 2 and n_orb == 1:
        signed = np.array([float(getattr(d, carrier)["j_eff_meV"]) for d in transfer.dimers])[classes]
        return (signed if carrier == "hole" else -signed), SIGNS_USED
    return transfer.couplings_meV(carrier), SIGNS_DEGENERATE if n_orb > 1 else SIGNS_NOT_RESOLVED


def supercell_size(z: int, shifts: Any, target_sites: int = TARGET_SITES) -> tuple[int, int, int]:
    """Cells along each lattice direction (module docstring)."""
    import numpy as np

    s = np.abs(np.asarray(shifts, dtype=int).reshape(-1, 3))
    smax = s.max(axis=0) if len(s) else np.zeros(3, dtype=int)
    connected = smax > 0
    if not connected.any():
        return (1, 1, 1)
    per_dim = max(target_sites / max(int(z), 1), 1.0) ** (1.0 / int(connected.sum()))
    return tuple(int(max(2 * m + 1, round(per_dim))) if c else 1 for m, c in zip(smax, connected))


def tlt_network_mobility(z: int, sources: Any, targets: Any, shifts: Any, vectors_A: Any, j_meV: Any,
                         temperature_K: float = 300.0, disorder_ratio: float = DISORDER_RATIO,
                         hbar_over_tau_meV: float = HBAR_OVER_TAU_MEV, target_sites: int = TARGET_SITES,
                         n_samples: int = N_SAMPLES, seed: int = 0,
                         supercell: tuple[int, int, int] | None = None) -> TltResult:
    """TLT mobility of a periodic network (module docstring).

    Args:
        z: sites (molecules) per cell.
        sources, targets, shifts, vectors_A, j_meV: per ordered neighbour (both directions of
            every bond listed, as :class:`~sim_backends.transfer.CrystalTransfer` lists them):
            start site, end site, lattice shift of the end site, hop vector (A), coupling (meV),
            entering the carrier Hamiltonian as ``H_pq = -j``; bonds with ``|j|`` below
            :data:`NEGLIGIBLE_J` of the largest are left out.
        temperature_K: temperature; ``disorder_ratio``: sd of |J|'s fluctuation at 300 K as a
            fraction of |J|; ``hbar_over_tau_meV``: hbar/tau.
        target_sites, supercell: supercell size (:func:`supercell_size` unless given).
        n_samples, seed: disorder realisations and their random seed.
    """
    import numpy as np

    from sim_backends.mobility import CM2_PER_A2, HBAR_EVS, KB_EVK

    if not (temperature_K > 0 and hbar_over_tau_meV > 0 and disorder_ratio >= 0 and n_samples >= 1):
        raise SetupError("TLT needs temperature > 0, hbar/tau > 0, disorder_ratio >= 0 and n_samples >= 1")
    src = np.asarray(sources, dtype=int).reshape(-1)
    tgt = np.asarray(targets, dtype=int).reshape(-1)
    sh = np.asarray(shifts, dtype=int).reshape(-1, 3)
    vec = np.asarray(vectors_A, dtype=float).reshape(-1, 3)
    jm = np.asarray(j_meV, dtype=float).reshape(-1)
    if not (len(src) == len(tgt) == len(sh) == len(vec) == len(jm)) or not len(src):
        raise SetupError("TLT network: sources, targets, shifts, vectors and couplings must be non-empty "
                         "and of one length")
    big = np.abs(jm) >= NEGLIGIBLE_J * np.abs(jm).max() if np.abs(jm).max() > 0 else np.ones(len(jm), bool)
    src, tgt, sh, vec, jm = src[big], tgt[big], sh[big], vec[big], jm[big]
    n = tuple(int(x) for x in (supercell or supercell_size(z, sh, target_sites)))
    cells = np.stack(np.meshgrid(*(np.arange(k) for k in n), indexing="ij"), axis=-1).reshape(-1, 3)
    n_cells = len(cells)
    n_sites = n_cells * int(z)
    if n_sites > MAX_SITES:
        raise SetupError(f"TLT supercell {n} of {n_sites} molecules is above {MAX_SITES}: the network reaches "
                         "too far for a supercell this size")
    ncell = np.asarray(n)

    def site(cell: np.ndarray, i: np.ndarray) -> np.ndarray:
        c = np.mod(cell, ncell)
        return ((c[..., 0] * n[1] + c[..., 1]) * n[2] + c[..., 2]) * int(z) + i

    a = site(cells[:, None, :], src[None, :])  # (cells, hops)
    b = site(cells[:, None, :] + sh[None, :, :], tgt[None, :])
    keep = a < b  # each bond once: its reverse hop gives (b, a)
    a, b = a[keep], b[keep]
    hop = np.broadcast_to(np.arange(len(src))[None, :], keep.shape)[keep]
    if len(np.unique(a * n_sites + b)) != len(a):
        raise SetupError(f"TLT supercell {n} maps two bonds onto one pair of molecules; enlarge it")
    j_ev = 1e-3 * jm[hop]
    v = vec[hop]
    gamma = 1e-3 * float(hbar_over_tau_meV)
    kt = KB_EVK * float(temperature_K)
    sigma = float(disorder_ratio) * np.sqrt(float(temperature_K) / 300.0) * np.abs(j_ev)
    rng = np.random.default_rng(seed)
    tensors = []
    for _ in range(int(n_samples)):
        jb = j_ev + np.sign(j_ev) * sigma * rng.standard_normal(len(j_ev))  # a phase flip flips it whole
        h = np.zeros((n_sites, n_sites))
        h[a, b] = -jb  # H_pq = -j
        h[b, a] = -jb
        e, u = np.linalg.eigh(h)
        w = np.exp(-(e - e[0]) / kt)
        w /= w.sum()
        kernel = 2.0 / (gamma**2 + (e[None, :] - e[:, None]) ** 2)
        kernel *= w[:, None]
        mats = []
        for ax in range(3):
            if not np.any(v[:, ax]):
                mats.append(None)
                continue
            cur = np.zeros((n_sites, n_sites))
            cur[a, b] = -jb * v[:, ax]  # H_pq (r_q - r_p): antisymmetric
            cur[b, a] = jb * v[:, ax]
            mats.append(u.T @ cur @ u)
        l2 = np.zeros((3, 3))
        for p in range(3):
            for q in range(p, 3):
                if mats[p] is None or mats[q] is None:
                    continue
                l2[p, q] = l2[q, p] = float(np.sum(kernel * mats[p] * mats[q]))
        tensors.append(l2)
    l2s = np.array(tensors)  # A^2
    # D = L^2 / (2 tau) = L^2 gamma / (2 hbar); mu = D / (k_B T / e)
    mus = l2s * gamma / (2.0 * HBAR_EVS) * CM2_PER_A2 / kt
    mu = mus.mean(axis=0)
    iso = np.trace(mus, axis1=1, axis2=2) / 3.0
    stderr = float(iso.std(ddof=1) / np.sqrt(len(iso))) if len(iso) > 1 else float("nan")
    l2_mean = l2s.mean(axis=0)
    return TltResult(mu, float(np.trace(mu) / 3.0), float(np.linalg.eigvalsh(0.5 * (mu + mu.T))[-1]), stderr,
                     float(np.sqrt(max(np.trace(l2_mean) / 3.0, 0.0))), n, n_sites, int(n_samples),
                     float(disorder_ratio), float(hbar_over_tau_meV))


def tlt_mobility(transfer: CrystalTransfer, carrier: str, temperature_K: float = 300.0, **kw: Any) -> TltResult:
    """TLT mobility of one carrier (``"hole"``/``"electron"``) of a crystal, with the
    couplings of :func:`carrier_couplings`; ``kw`` as :func:`tlt_network_mobility`. Raises
    :class:`SetupError` for a result without the neighbours' lattice shifts (made before
    they were recorded)."""
    import dataclasses

    import numpy as np

    if len(transfer.shifts) != len(transfer.neighbours):
        raise SetupError("these transfer integrals do not record the neighbours' lattice shifts (made by an "
                         "older version): recompute them for a transient-localisation mobility")
    nb = np.asarray(transfer.neighbours, dtype=int).reshape(-1, 3)
    j, signs = carrier_couplings(transfer, carrier)
    res = tlt_network_mobility(transfer.z, nb[:, 0], nb[:, 1], transfer.shifts, transfer.vectors_A, j,
                               temperature_K, **kw)
    return dataclasses.replace(res, signs=signs)
