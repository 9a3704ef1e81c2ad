"""Charge-carrier mobility from Marcus hopping on a crystal's neighbour network.

Model (non-adiabatic hopping between localised carriers, the standard screening model of
the energy-structure-function papers: Pulido et al., Nature 543, 657 (2017); Yang et al.,
Chem. Mater. 30, 4361 (2018)):

* Marcus rate of a hop between symmetry-equivalent molecules (Delta G = 0):
  ``k = (2 pi / hbar) |J|^2 (4 pi lambda k_B T)^-1/2 exp(-lambda / (4 k_B T))``, with
  ``|J|`` the effective transfer integral of the dimer (:mod:`sim_backends.transfer`),
  ``lambda`` the molecule's reorganisation energy for that carrier (hole: lambda+, the
  molecule stage's ``reorg_energy_kjmol``; electron: lambda-) and T the temperature. The
  site-energy differences of the gas-phase dimer projection are not used: in the crystal
  the molecules are symmetry-equivalent, the dimer's asymmetry is an artefact of leaving
  out the rest of the crystal.
* The network: every molecule of the cell is a site; every ordered dimer (i, J) within
  the contact cutoff is a hop with its centre-of-mass vector ``r``, repeated periodically.
* Diffusion tensor and mobility, ``mu = e D / (k_B T)`` (Einstein relation), reported in
  cm^2/(V s) as the isotropic average ``tr(mu) / 3`` and the largest eigenvalue.

Three ways to get D from the network, all here:

1. :func:`einstein_diffusion` -- the widely used neighbour sum
   ``D_ab = 1/(2 Z) sum_{i, n} k_n r_n,a r_n,b`` (isotropic: ``1/(2 d Z) sum k_n r_n^2`` in
   d dimensions). It equals the long-time diffusion of a walker when each site's
   rate-weighted hop vectors sum to zero (``sum_n k_n r_n = 0`` for each site: true on a
   Bravais lattice and for molecules on inversion centres, e.g. the acene herringbones).
   The form often quoted, ``1/(2d) sum_i r_i^2 k_i P_i`` with ``P_i = k_i / sum_j k_j``, is
   this sum only when the total rate multiplies it: ``1/(2d) (sum_j k_j) sum_i P_i r_i^2``
   (mean squared hop length times hop frequency). Read literally, without that factor, it
   underestimates D, by a factor 2 on a 1D chain with equal rates, and is not used here.
2. :func:`exact_diffusion` -- the exact long-time D of the periodic network: the neighbour
   sum with each hop vector corrected by a "corrector" field chi solving
   ``sum_n k_n (r_n + chi_j - chi_i) = 0`` at every site (homogenisation of a periodic
   random walk). It reduces to (1) when the local drifts vanish and is the reference.
3. :func:`kmc_diffusion` -- kinetic Monte Carlo: independent walkers hop on the periodic
   network with exponential waiting times; ``D = <dr dr^T> / (2 t)``. Stochastic, with its
   standard error; it checks (2) and is what one would extend to site-energy disorder or
   fields.

(2) is deterministic, costs a Z x Z linear solve and is exact for this model, so it is what
the backends report; (1) and (3) are reported beside it (``extra``) and agree with it to
the KMC error on 1D, isotropic and inversion-symmetric networks
(tests/sim_backends/test_mobility.py; benchmarks/transfer_validation.py).

Hopping mobilities are an approximation (they neglect band-like transport and dynamic
disorder, which matter when |J| approaches lambda/2); their use here is ranking molecules
and structures, as in the ESF papers. A carrier with ``2 |J|max > lambda`` is outside the
hopping regime: :func:`crystal_mobility` then reports the transient-localisation mobility
(:mod:`sim_backends.tlt`, with its assumptions; the hopping value stays in the details) and
:func:`transient_localisation_note` is the structure's INFO note. Transfer integrals made
before the neighbours' lattice shifts were recorded cannot give TLT: they keep the hopping
value and :func:`hopping_regime_warning` is their warning (the mobility backends and the
ESF levels, :mod:`sim_backends.esf`, attach either to the structure). Both take the transport
model as params (:data:`TRANSPORT_PARAMS`): ``transport = "marcus"`` keeps hopping everywhere
(with the regime warning), ``tlt_disorder_ratio`` and ``tlt_hbar_over_tau_meV`` replace TLT's
assumed constants; the INFO note and the level of theory state the values used.

:func:`landscape_mobility` turns a landscape of structures into a molecule-level property
(see its docstring); :func:`window_coverage` says how much of the landscape's energy window
such a mean covers when only some structures have a mobility, and widens its sd for the rest.

Units: J, lambda and energies in meV or kJ/mol as named; rates in 1/s; distances in A;
D in cm^2/s; mobility in cm^2/(V s). numpy only; importing this module is cheap.

Over 500 lines on purpose: Marcus rates, the hopping network, the three diffusion solvers
(Einstein, exact, kinetic Monte Carlo: checked against each other in the tests) and the
backends share the HoppingNetwork type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from sim_backends import params as check
from sim_backends.base import Backend, EvalInput, PhysicsError, SetupError
from sim_backends.tlt import DISORDER_RATIO, HBAR_OVER_TAU_MEV

if TYPE_CHECKING:
    import numpy as np

    from sim_backends.transfer import CrystalTransfer

#: reduced Planck constant, eV s (CODATA 2018)
HBAR_EVS = 6.582119569e-16
#: Boltzmann constant, eV/K (CODATA 2018)
KB_EVK = 8.617333262e-5
#: Boltzmann constant, kJ/(mol K)
KB_KJMOLK = 8.314462618e-3
#: eV per kJ/mol
EV_PER_KJMOL = 1.0 / 96.48533212
#: cm^2 per A^2
CM2_PER_A2 = 1e-16
#: largest hopping mobility accepted (cm^2/(V s)): the best molecular crystals reach ~10-40
#: experimentally; a hopping value beyond 1000 means |J| comparable with lambda, where the
#: model does not apply
MAX_MOBILITY_CM2VS = 1000.0


#: the regime warning's fixed text after the carrier (:func:`hopping_regime_warning`); the
#: numbers of one structure follow it in parentheses
HOPPING_REGIME_TEXT = ("2|J| > lambda: Marcus hopping is outside its regime (it needs 2|J| < lambda; the "
                       "carrier is delocalised over the dimer, transport is band-like), so this hopping "
                       "mobility is not reliable")


def hopping_regime_warning(carrier: str, j_max_meV: float, lambda_eV: float) -> str | None:
    """The warning of a crystal whose largest transfer integral puts the carrier outside the
    non-adiabatic hopping regime of :func:`marcus_rate`: ``2 |J|max > lambda`` (a localised
    small polaron needs ``2|J| < lambda``; Marcus rates need ``|J| << lambda``), with the
    ratio ``2|J|max / lambda`` and both values; None inside the regime or without numbers.
    It starts ``"{carrier}: "`` (``agent.esf_report`` shows the hole warnings)."""
    import math

    j, lam_meV = abs(float(j_max_meV)), 1e3 * float(lambda_eV)
    if not (math.isfinite(j) and math.isfinite(lam_meV) and lam_meV > 0) or 2.0 * j <= lam_meV:
        return None
    return (f"{carrier}: {HOPPING_REGIME_TEXT} (2|J|max/lambda = {2.0 * j / lam_meV:.2f}: "
            f"|J|max {j:.1f} meV, lambda {lam_meV:.1f} meV)")


#: the fixed text of :func:`transient_localisation_note`
TLT_NOTE_TEXT = ("2|J| > lambda, outside Marcus hopping's regime: mobility from transient localisation "
                 "theory (TLT)")
#: the hopping model's name in :func:`crystal_mobility`'s details
MARCUS_NAME = "Marcus hopping"
#: what a level of theory says of the structures outside the hopping regime
TLT_WHERE = "(TLT where 2|J| > lambda)"
#: the transport model's params of the hopping-mobility backends and the ESF landscape levels
#: (:mod:`sim_backends.esf`): ``transport`` ``"auto"`` (TLT outside hopping's regime) or
#: ``"marcus"`` (hopping only, with the regime warning outside its regime), and the TLT constants
#: (:mod:`sim_backends.tlt`: the thermal fluctuation of each |J| at 300 K as a fraction of |J|,
#: and hbar/tau in meV)
TRANSPORT_PARAMS = {"transport": check.one_of("auto", "marcus"),
                    "tlt_disorder_ratio": check.number(0.0, 2.0, lo_open=True),
                    "tlt_hbar_over_tau_meV": check.number(0.0, 100.0, lo_open=True)}
#: their defaults: the constants of :mod:`sim_backends.tlt`
TRANSPORT_DEFAULTS: dict[str, Any] = {"transport": "auto", "tlt_disorder_ratio": DISORDER_RATIO,
                                      "tlt_hbar_over_tau_meV": HBAR_OVER_TAU_MEV}


def transport_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    """The :data:`TRANSPORT_PARAMS` of a level's ``params`` (their defaults for those not
    given), as :func:`crystal_mobility`'s keywords; also what identifies how a level turns
    transfer integrals into a mobility (``agent.stages.properties``' reuse)."""
    p = {**TRANSPORT_DEFAULTS, **{k: v for k, v in params.items() if k in TRANSPORT_DEFAULTS}}
    return {"transport": str(p["transport"]), "tlt_disorder_ratio": float(p["tlt_disorder_ratio"]),
            "tlt_hbar_over_tau_meV": float(p["tlt_hbar_over_tau_meV"])}


def transport_level_text(temperature_K: float, params: dict[str, Any]) -> str:
    """The rate model of a level of theory: ``"Marcus hopping at 300 K (TLT where 2|J| >
    lambda)"``; ``"Marcus hopping at 300 K"`` for ``transport = "marcus"``; TLT constants other
    than the defaults named: ``"... (TLT where 2|J| > lambda, |J| fluctuation 0.3 |J| at 300 K,
    hbar/tau 5 meV)"``."""
    kw = transport_kwargs(params)
    head = f"Marcus hopping at {float(temperature_K):g} K"
    if kw["transport"] == "marcus":
        return head
    if (kw["tlt_disorder_ratio"], kw["tlt_hbar_over_tau_meV"]) == (DISORDER_RATIO, HBAR_OVER_TAU_MEV):
        return f"{head} {TLT_WHERE}"
    return (f"{head} {TLT_WHERE[:-1]}, |J| fluctuation {kw['tlt_disorder_ratio']:g} |J| at 300 K, "
            f"hbar/tau {kw['tlt_hbar_over_tau_meV']:g} meV)")


def split_regime_warning(warning: str) -> tuple[str, float | None]:
    """A :func:`hopping_regime_warning` as (its text without the numbers, its ratio
    2|J|max/lambda), so a landscape's structures can be summarised in one line; any other
    warning as ``(warning, None)``."""
    head, sep, tail = str(warning).partition(f"{HOPPING_REGIME_TEXT} (2|J|max/lambda = ")
    if not sep or not head.endswith(": "):
        return str(warning), None
    try:
        return head + HOPPING_REGIME_TEXT, float(tail.split(":", 1)[0])
    except ValueError:
        return str(warning), None


def marcus_rate(j_meV: Any, lambda_eV: float, temperature_K: float = 300.0,
                delta_g_eV: float = 0.0) -> np.ndarray:
    """Marcus non-adiabatic hopping rate(s) in 1/s.

    Args:
        j_meV: transfer integral(s) |J| (meV); any shape.
        lambda_eV: reorganisation energy (eV, > 0).
        temperature_K: temperature (K, > 0).
        delta_g_eV: free-energy change of the hop (eV).

    Returns:
        ``(2 pi / hbar) J^2 (4 pi lambda kT)^-1/2 exp(-(dG + lambda)^2 / (4 lambda kT))``,
        same shape as ``j_meV``.

    Raises:
        SetupError: lambda or T not positive and finite.
    """
    import numpy as np

    if not (np.isfinite(lambda_eV) and lambda_eV > 0):
        raise SetupError(f"reorganisation energy must be > 0, got {lambda_eV} eV")
    if not (np.isfinite(temperature_K) and temperature_K > 0):
        raise SetupError(f"temperature must be > 0 K, got {temperature_K}")
    kt = KB_EVK * temperature_K
    j = np.asarray(j_meV, dtype=float) * 1e-3
    return (2 * np.pi / HBAR_EVS) * j**2 / np.sqrt(4 * np.pi * lambda_eV * kt) \
        * np.exp(-(delta_g_eV + lambda_eV) ** 2 / (4 * lambda_eV * kt))


def transport_messages(carrier: str, detail: dict[str, Any], j_max_meV: float,
                       lambda_eV: float) -> tuple[list[str], list[str]]:
    """``(warnings, notes)`` of one carrier's mobility (``crystal_mobility``'s ``details``
    entry): the hopping-regime warning when Marcus hopping was used with ``2 |J|max >
    lambda`` (TLT not possible for this result), the TLT INFO note when TLT was used."""
    if detail["model"] == MARCUS_NAME:
        w = hopping_regime_warning(carrier, j_max_meV, lambda_eV)
        return ([w] if w is not None else []), []
    return [], [transient_localisation_note(carrier, detail["tlt"])]


@dataclass
class HoppingNetwork:
    """A periodic hopping network: ``n_sites`` sites per cell, directed hops between them.

    Attributes:
        n_sites: sites per cell (Z).
        sources, targets: site index of each hop's start and end, (n_hops,).
        vectors_A: hop vectors (A), (n_hops, 3).
        rates: hop rates (1/s), (n_hops,).
    """

    n_sites: int
    sources: np.ndarray
    targets: np.ndarray
    vectors_A: np.ndarray
    rates: np.ndarray

    def __post_init__(self) -> None:
        import numpy as np

        self.sources = np.asarray(self.sources, dtype=int)
        self.targets = np.asarray(self.targets, dtype=int)
        self.vectors_A = np.asarray(self.vectors_A, dtype=float).reshape(-1, 3)
        self.rates = np.asarray(self.rates, dtype=float)
        n = len(self.rates)
        if not (len(self.sources) == len(self.targets) == len(self.vectors_A) == n):
            raise SetupError("hopping network: sources, targets, vectors and rates differ in length")
        if n == 0:
            raise SetupError("hopping network has no hops (no molecular contacts)")
        if np.any(self.rates < 0) or not np.all(np.isfinite(self.rates)):
            raise SetupError("hopping network: rates must be finite and >= 0")
        out_rate = np.bincount(self.sources, weights=self.rates, minlength=self.n_sites)
        if np.any(out_rate <= 0):
            raise SetupError(f"hopping network: site(s) {np.flatnonzero(out_rate <= 0).tolist()} "
                             "have no hop with a non-zero rate")

    @classmethod
    def from_transfer(cls, transfer: CrystalTransfer, carrier: str, lambda_eV: float,
                      temperature_K: float = 300.0) -> HoppingNetwork:
        """The Marcus network of a crystal for one carrier (module docstring)."""
        import numpy as np

        rates = marcus_rate(transfer.couplings_meV(carrier), lambda_eV, temperature_K)
        nb = np.asarray(transfer.neighbours, dtype=int).reshape(-1, 3)
        return cls(transfer.z, nb[:, 0], nb[:, 1], transfer.vectors_A, rates)

    def local_drift(self) -> np.ndarray:
        """``sum_n k_n r_n`` of each site's hops, (n_sites, 3) A/s."""
        import numpy as np

        out = np.zeros((self.n_sites, 3))
        np.add.at(out, self.sources, self.rates[:, None] * self.vectors_A)
        return out


def einstein_diffusion(net: HoppingNetwork) -> np.ndarray:
    """Neighbour-sum diffusion tensor ``1/(2 Z) sum_n k_n r_n r_n^T`` (cm^2/s), (3, 3)."""
    import numpy as np

    v = net.vectors_A
    return 0.5 / net.n_sites * np.einsum("n,na,nb->ab", net.rates, v, v) * CM2_PER_A2


def exact_diffusion(net: HoppingNetwork) -> np.ndarray:
    """Exact long-time diffusion tensor of the periodic network (cm^2/s), (3, 3).

    Uniform site occupation is assumed (symmetric rates: every hop's reverse has the same
    rate, as for Marcus hops between equivalent molecules). The corrector chi
    (n_sites, 3) solves ``L chi = -b`` with ``b`` the local drifts and ``L`` the generator
    ``(L chi)_i = sum_n k_n (chi_j - chi_i)``; then
    ``D = 1/(2 Z) sum_n k_n (r_n + chi_j - chi_i)(r_n + chi_j - chi_i)^T``.
    """
    import numpy as np

    z = net.n_sites
    gen = np.zeros((z, z))
    np.add.at(gen, (net.sources, net.targets), net.rates)
    np.add.at(gen, (net.sources, net.sources), -net.rates)
    chi = np.linalg.lstsq(gen, -net.local_drift(), rcond=None)[0]
    v = net.vectors_A + chi[net.targets] - chi[net.sources]
    return 0.5 / z * np.einsum("n,na,nb->ab", net.rates, v, v) * CM2_PER_A2


@dataclass
class KmcResult:
    """Kinetic Monte Carlo diffusion: tensor (cm^2/s), standard error of its isotropic
    average, walkers, simulated time (s) and mean hops per walker."""

    diffusion: np.ndarray
    stderr_iso: float
    n_walkers: int
    time_s: float
    mean_hops: float


def kmc_diffusion(net: HoppingNetwork, n_walkers: int = 2000, n_hops: int = 1000,
                  seed: int = 0) -> KmcResult:
    """Diffusion tensor from independent walkers on the periodic network.

    Each walker starts on a uniformly drawn site, waits an exponential time with the
    site's total rate, hops to a neighbour drawn with probability ``k_n / sum k``, until
    the simulated time ``t = n_hops / <total rate>`` is reached; ``D = <dr dr^T> / (2 t)``.

    Args:
        net: the network.
        n_walkers: independent walkers (statistical error ~ 1/sqrt(n_walkers)).
        n_hops: hops per walker on average (long-time limit needs >> 1).
        seed: random seed.
    """
    import numpy as np

    if n_walkers < 2 or n_hops < 1:
        raise SetupError("kmc_diffusion needs n_walkers >= 2 and n_hops >= 1")
    rng = np.random.default_rng(seed)
    z = net.n_sites
    hop_ids = [np.flatnonzero(net.sources == s) for s in range(z)]
    cum = [np.cumsum(net.rates[h]) for h in hop_ids]
    total = np.array([c[-1] for c in cum])
    t_end = n_hops / float(total.mean())
    site = rng.integers(z, size=n_walkers)
    pos = np.zeros((n_walkers, 3))
    t = np.zeros(n_walkers)
    n_done_hops = np.zeros(n_walkers)
    active = np.arange(n_walkers)
    while active.size:
        dt = rng.exponential(1.0 / total[site[active]])
        arrive = t[active] + dt
        active = active[arrive <= t_end]
        t[active] = arrive[arrive <= t_end]
        start = site[active]
        for s in range(z):
            walkers = active[start == s]
            if not walkers.size:
                continue
            pick = np.searchsorted(cum[s], rng.random(walkers.size) * cum[s][-1], side="right")
            hop = hop_ids[s][np.minimum(pick, len(cum[s]) - 1)]
            pos[walkers] += net.vectors_A[hop]
            site[walkers] = net.targets[hop]
        n_done_hops[active] += 1
    dd = np.einsum("wa,wb->ab", pos, pos) / n_walkers / (2 * t_end) * CM2_PER_A2
    r2 = (pos**2).sum(axis=1) / (6 * t_end) * CM2_PER_A2
    return KmcResult(dd, float(r2.std(ddof=1) / np.sqrt(n_walkers)), n_walkers, t_end,
                     float(n_done_hops.mean()))


def mobility_cm2Vs(diffusion_cm2s: Any, temperature_K: float = 300.0) -> Any:
    """Einstein relation ``mu = e D / (k_B T)``: D in cm^2/s -> mu in cm^2/(V s)."""
    return diffusion_cm2s / (KB_EVK * temperature_K)


def tensor_summary(d_cm2s: np.ndarray, temperature_K: float) -> dict[str, float]:
    """Isotropic average ``tr/3`` and largest eigenvalue of a mobility tensor (cm^2/(V s))."""
    import numpy as np

    mu = mobility_cm2Vs(d_cm2s, temperature_K)
    return {"iso": float(np.trace(mu) / 3.0), "max": float(np.linalg.eigvalsh(0.5 * (mu + mu.T))[-1])}


def crystal_mobility(transfer: CrystalTransfer, lambdas_eV: dict[str, float], temperature_K: float = 300.0,
                     kmc_walkers: int = 0, seed: int = 0, transport: str = "auto",
                     tlt_disorder_ratio: float = DISORDER_RATIO,
                     tlt_hbar_over_tau_meV: float = HBAR_OVER_TAU_MEV) -> tuple[dict[str, float], dict[str, Any]]:
    """Hole and electron mobilities of a crystal.

    Args:
        transfer: the crystal's transfer integrals and network.
        lambdas_eV: reorganisation energy per carrier (``"hole"``, ``"electron"``); a
            carrier not given is not computed.
        temperature_K: temperature.
        kmc_walkers: if > 0, also run :func:`kmc_diffusion` with this many walkers.
        seed: KMC seed.
        transport: ``"auto"`` (default): Marcus hopping inside its regime, transient
            localisation theory (:mod:`sim_backends.tlt`) for a carrier with
            ``2 |J|max > lambda`` when the transfer integrals record the neighbours' shifts
            (older results, and networks whose supercell would be too large, ``tlt_error`` in
            the details, keep Marcus, and its regime warning is the caller's);
            ``"marcus"``: hopping only.
        tlt_disorder_ratio, tlt_hbar_over_tau_meV: the TLT constants
            (:func:`sim_backends.tlt.tlt_network_mobility`'s ``disorder_ratio`` and
            ``hbar_over_tau_meV``; :data:`TRANSPORT_PARAMS` says what is accepted).

    Returns:
        ``(values, details)``: values ``mobility_{carrier}_cm2Vs`` (isotropic) and
        ``mobility_{carrier}_max_cm2Vs`` (largest principal value) of the model used;
        details per carrier: ``model`` (:data:`MARCUS_NAME` or
        :data:`sim_backends.tlt.TLT_NAME`), the hopping network's exact, Einstein-sum (and
        KMC) values, the local drift, and ``tlt`` (:meth:`sim_backends.tlt.TltResult.to_extra`,
        with the constants used) when TLT was used.

    Raises:
        ParamsError: (a SetupError) a transport setting :data:`TRANSPORT_PARAMS` refuses.
    """
    import numpy as np

    from sim_backends.params import check_schema

    check_schema("crystal_mobility", TRANSPORT_PARAMS,
                 {"transport": transport, "tlt_disorder_ratio": tlt_disorder_ratio,
                  "tlt_hbar_over_tau_meV": tlt_hbar_over_tau_meV})
    values: dict[str, float] = {}
    details: dict[str, Any] = {}
    for carrier, lam in lambdas_eV.items():
        net = HoppingNetwork.from_transfer(transfer, carrier, lam, temperature_K)
        d_exact = exact_diffusion(net)
        exact = tensor_summary(d_exact, temperature_K)
        einstein = tensor_summary(einstein_diffusion(net), temperature_K)
        values[f"mobility_{carrier}_cm2Vs"] = exact["iso"]
        values[f"mobility_{carrier}_max_cm2Vs"] = exact["max"]
        drift = np.linalg.norm(net.local_drift(), axis=1).max()
        scale = float((net.rates * np.linalg.norm(net.vectors_A, axis=1)).sum() / net.n_sites)
        info: dict[str, Any] = {"model": MARCUS_NAME, "lambda_eV": lam, "exact": exact, "einstein_sum": einstein,
                                "relative_local_drift": float(drift / scale) if scale > 0 else 0.0,
                                "mobility_tensor_cm2Vs": mobility_cm2Vs(d_exact,
                                                                        temperature_K).round(6).tolist()}
        if kmc_walkers > 0:
            kmc = kmc_diffusion(net, n_walkers=kmc_walkers, seed=seed)
            info["kmc"] = {**tensor_summary(kmc.diffusion, temperature_K),
                           "stderr_iso": float(mobility_cm2Vs(kmc.stderr_iso, temperature_K)),
                           "n_walkers": kmc.n_walkers, "mean_hops": kmc.mean_hops}
        j_max = float(np.max(transfer.couplings_meV(carrier)))
        if (transport == "auto" and hopping_regime_warning(carrier, j_max, lam) is not None
                and len(transfer.shifts) == len(transfer.neighbours)):
            from sim_backends.tlt import TLT_NAME, tlt_mobility

            try:
                tlt = tlt_mobility(transfer, carrier, temperature_K, seed=seed, disorder_ratio=tlt_disorder_ratio,
                                   hbar_over_tau_meV=tlt_hbar_over_tau_meV)
            except SetupError as exc:  # e.g. a supercell too large: the hopping value, warned by the caller
                info["tlt_error"] = str(exc)
            else:
                info.update({"model": TLT_NAME, "tlt": tlt.to_extra()})
                values[f"mobility_{carrier}_cm2Vs"] = tlt.iso
                values[f"mobility_{carrier}_max_cm2Vs"] = tlt.max
        details[carrier] = info
    return values, details


def transient_localisation_note(carrier: str, tlt: dict[str, Any]) -> str:
    """The INFO note of a carrier whose mobility comes from transient localisation theory
    (outside Marcus hopping's regime) with the TLT value's assumptions. The same text for
    every structure with the same settings, so a landscape's structures summarise to one
    line with their count (``agent.esf_report``); the numbers of a structure (2|J|max,
    lambda, the hopping value, the localisation length) are in its record. Starts
    ``"{carrier}: "`` like the regime warning."""
    from sim_backends.tlt import SIGNS_NOT_RESOLVED, assumptions_text

    signs = assumptions_text(tlt["disorder_ratio"], tlt["hbar_over_tau_meV"], tlt.get("signs", SIGNS_NOT_RESOLVED))
    return f"{carrier}: {TLT_NOTE_TEXT}, {signs}; the Marcus hopping value is kept beside it"


@dataclass
class LandscapeMobility:
    """A landscape's mobility with its uncertainty.

    Attributes:
        mean, sd: mean and standard deviation of the weighted mobility over energy samples
            (cm^2/(V s)).
        weights: Boltzmann weights of the structures at the mean energies (0 outside the window).
        n_in_window: structures within the window of the global minimum (mean energies).
        p_best: probability, over the samples, that each structure is the global minimum.
    """

    mean: float
    sd: float
    weights: np.ndarray
    n_in_window: int
    p_best: np.ndarray = field(default=None)  # type: ignore[assignment]


def landscape_mobility(energies_kjmol: Any, mobilities: Any, energy_sd_kjmol: Any = 0.0,
                       window_kjmol: float = 7.0, temperature_K: float = 300.0,
                       n_samples: int = 2000, seed: int = 0) -> LandscapeMobility:
    """Boltzmann-weighted mobility of a predicted crystal-energy landscape, with uncertainty.

    The molecule-level objective of an energy-structure-function search must summarise a
    landscape of predicted structures, of which at most one or a few will be made.
    Alternatives used in the ESF literature and why this one:

    * the global minimum's mobility (Pulido et al. 2017 start from the low-energy leading
      edge of the map): brittle, since CSP energy errors of a few kJ/mol reorder the
      lowest structures, and the property of one structure jumps discontinuously;
    * the best mobility within an energy window (optimistic; rewards a landscape with one
      lucky high-energy structure that will not crystallise);
    * a Boltzmann-weighted average over the structures within a window of the global
      minimum (one of the landscape metrics Yang et al., Chem. Mater. 2018 discuss for
      ranking isomers; Cheng, Campbell & Day, Chem. Sci. 2020, rank molecules from
      the low-energy part of each predicted landscape as well): continuous in the
      energies, dominated by the structures likely to be observed, and still rewarding
      a landscape whose competitive structures are all good.

    The third is used. The window (default 7 kJ/mol, about the range of polymorph energy
    differences, Nyman & Day, CrystEngComm 17, 5154 (2015)) drops high structures that the
    Boltzmann factor would anyway suppress but whose number could add up. The weights use
    ``temperature_K`` as given; with lattice energies (not free energies) the weights are a
    ranking device, not a prediction of polymorph populations.

    Energy uncertainty is propagated by sampling: each structure's energy is drawn from a
    normal distribution (``energies_kjmol`` mean, ``energy_sd_kjmol`` sd, independent), the
    window and Boltzmann weights are recomputed for every sample, and the mean and sd of
    the weighted mobility over samples are returned. With a correction model (e.g. the
    Delta-GP of the structure stage) its predictive mean and sd go in here.

    Args:
        energies_kjmol: energy of each structure (kJ/mol per molecule), (n,).
        mobilities: mobility of each structure (cm^2/(V s)), (n,).
        energy_sd_kjmol: energy standard deviation(s), scalar or (n,).
        window_kjmol: window above the (sampled) global minimum (kJ/mol, > 0).
        temperature_K: Boltzmann temperature (K).
        n_samples: energy samples (ignored, 1 used, when every sd is 0).
        seed: random seed.

    Raises:
        SetupError: empty or mismatched inputs, non-finite values, negative sd,
            non-positive window or temperature.
    """
    import numpy as np

    e = np.asarray(energies_kjmol, dtype=float).ravel()
    mu = np.asarray(mobilities, dtype=float).ravel()
    sd = np.broadcast_to(np.asarray(energy_sd_kjmol, dtype=float), e.shape).copy() if e.size else e
    if e.size == 0 or e.shape != mu.shape:
        raise SetupError(f"landscape_mobility needs as many energies ({e.size}) as mobilities ({mu.size}), > 0")
    if not (np.all(np.isfinite(e)) and np.all(np.isfinite(mu)) and np.all(np.isfinite(sd))):
        raise SetupError("landscape_mobility: energies, mobilities and sds must be finite")
    if np.any(sd < 0) or np.any(mu < 0):
        raise SetupError("landscape_mobility: sds and mobilities must be >= 0")
    if not window_kjmol > 0 or not temperature_K > 0:
        raise SetupError("landscape_mobility: window and temperature must be > 0")
    kt = KB_KJMOLK * temperature_K

    def weights(energies: np.ndarray) -> np.ndarray:
        rel = energies - energies.min(axis=-1, keepdims=True)
        w = np.where(rel <= window_kjmol, np.exp(-rel / kt), 0.0)
        return w / w.sum(axis=-1, keepdims=True)

    w_mean = weights(e)
    if np.all(sd == 0):
        value = float(w_mean @ mu)
        p_best = (e == e.min()).astype(float) / float((e == e.min()).sum())
        return LandscapeMobility(value, 0.0, w_mean, int((e - e.min() <= window_kjmol).sum()), p_best)
    rng = np.random.default_rng(seed)
    samples = e + rng.standard_normal((int(n_samples), e.size)) * sd
    per_sample = weights(samples) @ mu
    p_best = np.bincount(samples.argmin(axis=1), minlength=e.size) / float(n_samples)
    return LandscapeMobility(float(per_sample.mean()), float(per_sample.std(ddof=1)), w_mean,
                             int((e - e.min() <= window_kjmol).sum()), p_best)


#: what the ± of a landscape mobility covers when every structure in its window has a value
#: (:func:`window_coverage`)
#: what no landscape-mobility sd covers: the transfer integrals' and lambda+'s errors, and the
#: transport model's (hopping or TLT, and TLT's assumed constants)
SD_NOT_INCLUDED = "J, lambda and transport-model errors not included"
SD_ENERGY_ONLY = f"energy-ranking spread only; {SD_NOT_INCLUDED}"


def window_coverage(energies: dict[str, float], mobilities: dict[str, float], mean: float, sd_energy: float,
                    window_kjmol: float, elsewhere: dict[str, Any] | None = None,
                    temperature_K: float = 300.0) -> dict[str, Any]:
    """How much of a landscape's energy window a landscape mobility covers, and its sd
    widened for what it does not.

    The landscape mobility (``mean``, ``sd_energy``: the Boltzmann mean over the structures
    with a mobility and its spread from their energy errors) averages only the structures
    whose mobility was computed (the structure stage's: those its property level reached;
    an ESF level's, :func:`sim_backends.esf.landscape_record`: its ``n_structures`` lowest);
    the window (``window_kjmol`` above the lowest of ``energies``, computed or predicted at
    the ranking level) may hold more, the predicted leader among them. Their mobilities are
    unknown, not zero and not the computed ones: each uncomputed structure of the window
    carries its Boltzmann weight (from its energy, at ``temperature_K``), and their share
    ``w_u`` of the weight enters the sd as ``w_u * s``, with ``s`` the spread (sd) of the
    mobilities computed on the landscape (when fewer than two are: that of the structures of
    ``elsewhere``, another landscape record of the molecule, e.g. the molecule stage's, else
    the mean itself): as if the uncomputed structures' mean mobility could lie one
    structure-to-structure spread away from the computed ones' (conservative: they move
    together). ``sd = sqrt(sd_energy^2 + (w_u s)^2)``.

    Returns ``n_in_window`` (structures in the window), ``n_with_mobility`` (of them with a
    value), ``uncomputed_weight`` (``w_u``), ``sd`` (widened), ``sd_energy`` and ``sd_covers``
    (what the sd includes, for the printed line). Without energies (nothing ranked) the
    window is the structures with a mobility and the sd is ``sd_energy``."""
    import math

    with_mu = {sid: mu for sid, mu in mobilities.items() if sid in energies}
    if not energies or not with_mu:
        n = len(with_mu) if energies else len(mobilities)
        return {"n_in_window": n, "n_with_mobility": n, "uncomputed_weight": 0.0, "sd": sd_energy,
                "sd_energy": sd_energy, "sd_covers": SD_ENERGY_ONLY}
    e0 = min(energies.values())
    window = {sid: e for sid, e in energies.items() if e - e0 <= window_kjmol}
    kt = KB_KJMOLK * temperature_K
    w = {sid: math.exp(-(e - e0) / kt) for sid, e in window.items()}
    total = sum(w.values())
    w_u = sum(x for sid, x in w.items() if sid not in with_mu) / total
    covered = [sid for sid in window if sid in with_mu]
    out = {"n_in_window": len(window), "n_with_mobility": len(covered), "uncomputed_weight": w_u,
           "sd_energy": sd_energy, "sd": sd_energy, "sd_covers": SD_ENERGY_ONLY}
    if len(covered) == len(window):
        return out
    values = list(with_mu.values())
    if len(values) >= 2:
        spread, source = _sd(values), f"the {len(values)} computed mobilities"
    elif elsewhere and len(elsewhere.get("structures") or []) >= 2:
        spread = _sd([x["mobility_hole_cm2Vs"] for x in elsewhere["structures"]])
        source = f"the molecule stage's {len(elsewhere['structures'])} structures ({elsewhere['backend']})"
    else:
        spread, source = mean, "100 % of the mean (one computed mobility)"
    out["sd"] = math.hypot(sd_energy, w_u * spread)
    out["sd_covers"] = (f"energy ranking and {len(window) - len(covered)} structures without a mobility "
                        f"({w_u:.0%} of the Boltzmann weight) at the spread of {source}; "
                        f"{SD_NOT_INCLUDED}")
    return out


def _sd(values: list[float]) -> float:
    m = sum(values) / len(values)
    return (sum((v - m) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def _lambda_eV(p: dict[str, Any], carrier: str) -> float | None:
    value = p.get(f"lambda_{carrier}_kjmol")
    return None if value is None else float(value) * EV_PER_KJMOL


class _MobilityBase(Backend):
    """Hopping mobility of a crystal over the transfer integrals of one level.

    Params: ``lambda_hole_kjmol`` (required: the molecule's hole reorganisation energy,
    lambda+, e.g. the ``reorg_energy_kjmol`` of xtb-reorg/dft-reorg), ``lambda_electron_kjmol``
    (optional; without it the electron mobility is NaN), ``temperature_K`` (300),
    ``kmc_walkers`` (0: no KMC check), the transport model (:data:`TRANSPORT_PARAMS`):
    ``transport`` (``"auto"``: transient localisation theory for a carrier outside hopping's
    regime, ``2 |J|max > lambda``; ``"marcus"``: hopping only, with the regime warning there),
    ``tlt_disorder_ratio`` (0.5: the thermal fluctuation of each |J| at 300 K as a fraction of
    |J|, in (0, 2]) and ``tlt_hbar_over_tau_meV`` (5.0: hbar/tau, meV, in (0, 100]), and the
    transfer backend's parameters.
    Values: ``mobility_hole_cm2Vs`` (isotropic average, exact network diffusion),
    ``mobility_hole_max_cm2Vs`` (largest principal value), the same for electrons, and the
    transfer backend's values.
    """

    target = "structure"
    computes = ("mobility_hole_cm2Vs", "mobility_hole_max_cm2Vs", "mobility_electron_cm2Vs",
                "mobility_electron_max_cm2Vs", "j_hole_max_meV", "j_electron_max_meV",
                "j2_hole_sum_meV2", "j2_electron_sum_meV2", "n_unique_dimers", "n_neighbours")
    objective_key = "mobility_hole_cm2Vs"
    may_be_nan = ("mobility_electron_cm2Vs", "mobility_electron_max_cm2Vs")
    transfer_backend: str = "transfer-xtb"
    #: a property level of the structure stage (agent/stages/properties.py) ...
    level_kind: ClassVar[str] = "property"
    #: ... that reads the molecule's lambda+ from the molecule stage's values
    molecule_inputs: ClassVar[dict[str, str]] = {"lambda_hole_kjmol": "reorg_energy_kjmol"}
    OWN_PARAMS = {"lambda_hole_kjmol": check.number(0.0, 500.0, lo_open=True),
                  "lambda_electron_kjmol": check.number(0.0, 500.0, lo_open=True),
                  "temperature_K": check.number(0.0, 2000.0, lo_open=True),
                  "kmc_walkers": check.integer(0, 1_000_000), **TRANSPORT_PARAMS}

    def _transfer(self) -> Backend:
        from sim_backends.registry import get_backend

        return get_backend(self.transfer_backend)

    def cost_estimate(self, inp: EvalInput) -> float:
        return self._transfer().cost_estimate(inp)

    def _evaluate(self, inp: EvalInput) -> tuple[dict[str, float], dict[str, Any]]:
        p = inp.params
        self.check_params(p)
        lambdas = {c: _lambda_eV(p, c) for c in ("hole", "electron")}
        if lambdas["hole"] is None:
            raise SetupError("no hole reorganisation energy: give lambda_hole_kjmol (the molecule's "
                             "lambda+, kJ/mol) before computing a mobility")
        transfer_params = {k: v for k, v in p.items() if k not in self.OWN_PARAMS}
        transfer_backend = self._transfer()
        transfer = transfer_backend.compute(EvalInput(inp.smiles, inp.structure_cif, inp.structure_id,
                                                      transfer_params))
        t_k = float(p.get("temperature_K", 300.0))
        from sim_backends.transfer import summary_values

        values, details = crystal_mobility(transfer, {c: v for c, v in lambdas.items() if v is not None},
                                           t_k, int(p.get("kmc_walkers", 0)), **transport_kwargs(p))
        if lambdas["electron"] is None:
            values["mobility_electron_cm2Vs"] = values["mobility_electron_max_cm2Vs"] = float("nan")
        values.update(summary_values(transfer))
        models = sorted({d["model"] for d in details.values()})
        level = (f"{' / '.join(models)} at {t_k:g} K on {transfer_backend.level_of_theory(transfer_params)} "
                 "transfer integrals")
        extra = {**transfer.to_extra(), "cpu_s_scf": transfer.cpu_s, "mobility": details, "level": level}
        for c, lam in lambdas.items():
            if lam is None:
                continue
            warnings, notes = transport_messages(c, details[c], values[f"j_{c}_max_meV"], lam)
            if warnings:
                extra["warnings"] = [*(extra.get("warnings") or []), *warnings]
            if notes:
                extra["notes"] = [*(extra.get("notes") or []), *notes]
        return values, extra

    def _hopping(self, params: dict[str, Any] | None = None) -> str:
        """``Marcus hopping at 300 K (TLT where 2|J| > lambda)``: the rate model and its
        temperature (the first part of the level of theory, as the ESF levels give it;
        :func:`transport_level_text`)."""
        p = {**self.params, **(params or {})}
        return transport_level_text(float(p.get("temperature_K", 300.0)), p)

    def _check_physical(self, values: dict[str, float], extra: dict[str, Any]) -> None:
        """Mobilities below :data:`MAX_MOBILITY_CM2VS` (beyond, hopping does not apply)."""
        import math

        from sim_backends.transfer import check_couplings

        super()._check_physical(values, extra)
        level = extra.get("level", self.name)
        check_couplings(values, level)
        for carrier in ("hole", "electron"):
            mu = values.get(f"mobility_{carrier}_max_cm2Vs", float("nan"))
            if not math.isnan(mu) and mu > MAX_MOBILITY_CM2VS:
                raise PhysicsError(f"{carrier} mobility {mu:.3g} cm2/(V s) > {MAX_MOBILITY_CM2VS:g} ({level}): "
                                   "|J| too large for the hopping model")


class XtbMobilityBackend(_MobilityBase):
    """Hole/electron Marcus hopping mobility (cm^2/(V s)) on GFN2-xTB transfer integrals."""

    name = "mobility-xtb"
    version = "1"
    fidelity = 1
    transfer_backend = "transfer-xtb"
    description = ("Marcus hopping mobility (cm2/Vs; transient localisation where 2|J| > lambda) on GFN2-xTB "
                   "dimer-projection transfer integrals")
    params_schema = None  # set below (needs the transfer schema)

    def level_of_theory(self, params: dict[str, Any] | None = None) -> str:
        return f"{self._hopping(params)}, GFN2-xTB dimer projection"


class DftMobilityBackend(_MobilityBase):
    """Hole/electron Marcus hopping mobility (cm^2/(V s)) on B3LYP/6-31G transfer integrals."""

    name = "mobility-dft"
    version = "1"
    fidelity = 2
    transfer_backend = "transfer-dft"
    description = ("Marcus hopping mobility (cm2/Vs; transient localisation where 2|J| > lambda) on DFT "
                   "(B3LYP/6-31G) dimer-projection transfer integrals")
    params_schema = None

    def level_of_theory(self, params: dict[str, Any] | None = None) -> str:
        p = {**self.params, **(params or {})}
        return f"{self._hopping(p)}, {str(p.get('functional', 'b3lyp')).upper()}/{p.get('basis', '6-31g')} dimer projection"


def _schemas() -> None:
    from sim_backends.transfer import DFT_PARAMS, XTB_PARAMS

    XtbMobilityBackend.params_schema = {**XTB_PARAMS, **_MobilityBase.OWN_PARAMS}
    DftMobilityBackend.params_schema = {**DFT_PARAMS, **_MobilityBase.OWN_PARAMS}


_schemas()
