"""The energy-structure-function (ESF) objective of a molecule: its landscape hole mobility,
at three fidelities a campaign's molecule stage chooses between.

The crystal-level objective is ``log10_landscape_mobility_hole``, log10 of the
Boltzmann-weighted Marcus hole mobility (cm^2/(V s)) of the molecule's predicted crystal
structures (:func:`sim_backends.mobility.landscape_mobility`: structures within a window
of the global minimum, force-field energies with an assumed sd of
:data:`FF_ENERGY_SD_KJMOL`). log10 because mobilities span orders of magnitude and the
molecule GP assumes Gaussian errors. The levels of the ladder (one objective, so the
multi-fidelity GP of the molecule stage can relate them):

* ``esf-proxy`` (fidelity 0): gas phase only. The molecule's lambda+ (below) in a fixed
  reference crystal: a simple
  cubic lattice of molecules :data:`REF_DISTANCE_A` apart with one hole transfer integral
  :data:`REF_J_MEV` to each of the 6 neighbours (chosen once, not fitted: 10 meV and 5 A
  are typical of pi-stacked neighbours). A monotone function of lambda+; seconds.
  Every level that computes lambda+ itself also reports the molecule's estimated gas-phase
  ionisation energy ``ip_gas_ev`` (``xtb-reorg``'s), which a campaign can bound
  (``[[constraints]]``: hole injection, ``examples/esf.toml``). lambda+
  (``reorg_energy_kjmol``) is GFN2-xTB's (:class:`~sim_backends.reorg.XtbReorgBackend`)
  plus the empirical shift :data:`sim_backends.reorg.XTB_LAMBDA_SHIFT_KJMOL` to
  B3LYP/6-31G//B3LYP/6-31G (GFN2-xTB's lambda+ of polycyclic pi molecules is too small by
  about that much; the raw value is in ``extra["lambda_xtb_kjmol"]``). lambda+ and
  ``ip_gas_ev`` are the same GFN2-xTB calculation at every level, declared as such
  (``value_levels``: :data:`LAMBDA_VALUE_LEVEL`, printed with them instead of the
  mobility's level; ``value_computations``: the calculation itself): a ladder of ESF levels
  refines the mobility only, and a campaign whose objective is one of them on two ESF
  levels, or on ``xtb-reorg`` under an ESF level, is refused
  (:func:`agent.config.check_runnable`).
* ``esf-landscape`` (fidelity 1, a "quick CSP"; ``esf-refined``, fidelity 2, the same
  with 300 trials by default): crystal structure
  prediction (W99 + Ewald force field with ``charges`` point charges: ``"resp"``, the
  default, RESP fits to the HF/6-31G* electrostatic potential, once per molecule, then
  cached: 31 CPU s for anthracene, minutes for the larger acenes; or ``"xtb"``, GFN2-xTB
  Mulliken charges, seconds, but too small to keep the C-H quadrupole that makes the
  acenes pack herringbone: with them the experimental anthracene crystal is rank 70,
  +5.9 kJ/mol, and pi-stacks win, with RESP it is rank 1 (1,200 trials in P2_1/c and
  P-1; naphthalene rank 41 against 1); Z' = 1, ``n_trials`` trials in
  ``space_groups``), the ``n_structures`` lowest minima within ``window_kjmol`` get
  dimer-projection transfer integrals at ``transfer`` (``"gfn2-xtb"`` or ``"dft"``:
  B3LYP/6-31G) and their Marcus hole mobility at ``temperature_K`` with the molecule's
  lambda+; the landscape mobility is their Boltzmann-weighted mean, over those structures
  only. The window may hold more: the Boltzmann weight of its structures without a mobility
  (beyond the cap, or failed) is computed from every in-window force-field energy and widens
  the sd (:func:`sim_backends.mobility.window_coverage`; ``extra["uncomputed_weight"]``,
  ``extra["n_minima_in_window"]``), and the level's label says which structures the mean is
  over (:func:`boltzmann_mean_text`). A structure with
  ``2 |J|max > lambda+`` is outside the Marcus hopping regime: its mobility is the
  transient-localisation value (:mod:`sim_backends.tlt`; ``transport_model``, the hopping
  value beside it as ``mobility_hole_marcus_cm2Vs``, an INFO note with the assumptions);
  records made before that carry the regime warning instead (:func:`structure_warnings`,
  :func:`with_regime_warnings`). The transport model is a param of both levels
  (:data:`sim_backends.mobility.TRANSPORT_PARAMS`): ``transport`` (``"auto"``, the default, as
  above; ``"marcus"``: hopping for every structure, with the regime warning outside its
  regime), ``tlt_disorder_ratio`` (0.5: each |J|'s thermal fluctuation at 300 K as a fraction
  of |J|, in (0, 2]) and ``tlt_hbar_over_tau_meV`` (5.0 meV, in (0, 100]); the level of theory
  and the INFO note name values other than the defaults. A "refined"
  fidelity is the same backend with more trials and/or DFT transfer integrals
  (``fidelity = 2`` in its params). lambda+ is the ``lambda_hole_kjmol`` param when
  given, else computed here with GFN2-xTB (its CPU seconds are charged to the result).

Failures are failed evaluations with a one-line reason: no lambda+ (the xTB calculation
failed), a CSP with no minimum, every kept structure without a mobility (no molecular
contacts within the cutoff, a failed dimer SCF: the reasons of the structures are
joined). A structure that fails while others succeed is left out of the landscape and
named in ``extra["structures"]``, which lists every kept structure (energy, space group,
Z, density, CIF, mobility or error): ``crystal-agent status``/``report`` show them
(:mod:`agent.esf_report`). ``extra["csp_warnings"]``: the force field's domain warnings for
the landscape (:mod:`sim_backends.csp.domain`, e.g. W99's unvalidated sp carbon of a
nitrile); the replays derive the atom-type part from the SMILES for records without them.

Replays (``replay-esf-proxy``, ``replay-esf-quick``, ``replay-esf-refined``) serve the
project's data set ``data/esf/esf_<fidelity>.jsonl`` (made by
``data/esf/make_esf_dataset.py`` with :func:`landscape_record`) and charge each result the
CPU seconds recorded for it, so budgets and cost models see what the real calculation
spent, and report the record's structures like the real levels; their ``cost_estimate``
is the real backend's size-based estimate.

Units: mobilities cm^2/(V s), energies kJ/mol, CPU seconds. Heavy imports inside functions.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

from sim_backends import params as check
from sim_backends.base import Backend, EvalInput, EvalResult, SetupError
from sim_backends.mobility import TRANSPORT_DEFAULTS, TRANSPORT_PARAMS, transport_kwargs, transport_level_text
from sim_backends.reorg import (XTB_IP_LEVEL, XTB_IP_SD_EV, XTB_LAMBDA_LEVEL, XTB_LAMBDA_SHIFT_KJMOL,
                                XTB_LAMBDA_SHIFT_SD_KJMOL)
from sim_backends.replay import RecordedReplay, replay_backend
from sim_backends.tlt import DISORDER_RATIO, HBAR_OVER_TAU_MEV

#: sd (kJ/mol) of force-field relative energies against fragment DFT on this project's
#: landscapes (structures within 10 kJ/mol of the FF minimum: formamide 3.6, formic acid 5.5)
FF_ENERGY_SD_KJMOL = 4.5
#: the proxy's reference crystal: hole transfer integral to each of 6 neighbours (meV) ...
REF_J_MEV = 10.0
#: ... at this centre-of-mass distance (A), simple cubic
REF_DISTANCE_A = 5.0
#: the objective every level computes
OBJECTIVE = "log10_landscape_mobility_hole"
#: what the proxy's value of :data:`OBJECTIVE` is shown as (plots, results.csv): the mobility of
#: the fixed reference crystal, not of a landscape; the stored key stays :data:`OBJECTIVE`
PROXY_SHOWN_AS = "log10_reference_crystal_mobility_hole"
#: the space groups of the data set's CSP (about 80 % of organic crystals)
ESF_SPACE_GROUPS = "P2_1/c,P-1,P2_12_12_1,C2/c,P2_1,Pbca"
#: the data set of the replays
ESF_DATA = Path(__file__).resolve().parents[1] / "data" / "esf"
#: per heavy atom CPU s of one CSP trial (150-trial quick CSPs of data/esf: 5-40 CPU s
#: for 6-11 heavy atoms)
_CSP_S_PER_TRIAL_HEAVY = 0.008
#: cell molecules assumed by the cost estimate of the transfer integrals
_Z_ESTIMATE = 4
#: the CSP point charges of the ESF levels (``charges`` param) and how the levels name them
CHARGE_LABELS = {"resp": "RESP HF/6-31G*", "resp-lp": "RESP HF/6-31G* + lone-pair sites",
                 "resp-lpn": "RESP HF/6-31G* + N lone-pair sites",
                 "xtb": "GFN2-xTB Mulliken"}
#: the charges of the shipped data set ``data/esf`` (and so of its replays), and the
#: default of :func:`landscape_record` (what ``data/esf/make_esf_dataset.py`` calls)
DATA_SET_CHARGES = "xtb"


#: printed with ESF results whose CSP used GFN2-xTB charges (measured: newuser37 S1, `crystal-agent csp`
#: with --charges xtb / resp, 1,200-1,500 trials in P2_1/c and P-1, matched to the X23 CIFs)
XTB_CHARGE_CAVEAT = (
    "CSP with GFN2-xTB Mulliken charges: too small to keep the C-H quadrupole, so herringbone packings "
    "rank below pi-stacks (anthracene's experimental form rank 70, +5.9 kJ/mol, naphthalene's rank 41; "
    "both rank 1 with RESP charges); the predicted crystals and their mobilities are indicative only "
    '(charges = "resp" on the ESF levels for crystals worth reading)')


def csp_level(charges: str) -> str:
    """The level of the CSP lattice energies of an ESF landscape with these charges (the
    CIF header of its structures, ``extra["csp_level"]``; the charge method's key itself is
    ``extra["csp_charges"]``)."""
    return f"W99 exp-6 + Ewald point charges ({CHARGE_LABELS.get(charges, charges)}), rigid molecule (force field)"


def proxy_log10_mobility(lambda_hole_kjmol: float, temperature_K: float = 300.0) -> float:
    """log10 of the hole mobility (cm^2/(V s)) of the reference crystal (module docstring)
    for a molecule with this lambda+ (kJ/mol): Einstein relation on the cubic lattice,
    ``D = k r^2``, ``mu = e D / (k_B T)``."""
    from sim_backends.mobility import CM2_PER_A2, EV_PER_KJMOL, KB_EVK, marcus_rate

    k = float(marcus_rate(REF_J_MEV, lambda_hole_kjmol * EV_PER_KJMOL, temperature_K))
    mu = k * REF_DISTANCE_A**2 * CM2_PER_A2 / (KB_EVK * temperature_K)
    return math.log10(mu)


#: the stable start of :data:`JAHN_TELLER_LAMBDA_WARNING` (its wording after it may change
#: between versions)
JAHN_TELLER_PREFIX = "hole: degenerate HOMO (Jahn-Teller cation)"
#: warning on a structure whose hole frontier manifold is degenerate while lambda+ came from
#: GFN2-xTB without the low-temperature cation (``xtb-reorg``'s ``extra["jahn_teller"]`` not
#: resolved: its SCF failed, the test was off, or a record made before it): the coupling is
#: defined (rotation-invariant J_eff), the reorganisation energy is not
JAHN_TELLER_LAMBDA_WARNING = (
    f"{JAHN_TELLER_PREFIX} with a GFN2-xTB lambda+ whose cation was not relaxed at a low electronic "
    "temperature: the 300 K Fermi-smeared occupations can keep it undistorted (sim_backends/reorg.py), "
    "so lambda+ may be too small and this mobility too large")


def structure_warnings(transfer: Any, lambda_level: str | None, jahn_teller: str | None = None,
                       lambda_hole_kjmol: float | None = None) -> list[str]:
    """A structure's warnings: the transfer integrals' own
    (:attr:`sim_backends.transfer.CrystalTransfer.warnings`);
    :data:`JAHN_TELLER_LAMBDA_WARNING` when its hole frontier manifold has more than one
    orbital and lambda+ is a GFN2-xTB value (``lambda_level == "GFN2-xTB"``) whose
    ``jahn_teller`` status (``xtb-reorg``'s ``extra["jahn_teller"]``) does not say the
    cation was relaxed at the low electronic temperature
    (:func:`sim_backends.reorg.jahn_teller_resolved`); and, given ``lambda_hole_kjmol``,
    the hopping-regime warning when ``2 |J|max > lambda+``
    (:func:`sim_backends.mobility.hopping_regime_warning`)."""
    from sim_backends.reorg import jahn_teller_resolved

    out = list(transfer.warnings)
    if (lambda_level == "GFN2-xTB" and int((transfer.manifolds.get("hole") or {}).get("n", 1)) > 1
            and not jahn_teller_resolved(jahn_teller)):
        out.append(JAHN_TELLER_LAMBDA_WARNING)
    if lambda_hole_kjmol is not None:
        regime = _regime_warning(max((abs(d.hole["j_eff_meV"]) for d in transfer.dimers), default=0.0),
                                 lambda_hole_kjmol)
        if regime:
            out.append(regime)
    return out


def _regime_warning(j_hole_max_meV: float, lambda_hole_kjmol: float) -> str | None:
    from sim_backends.mobility import EV_PER_KJMOL, hopping_regime_warning

    return hopping_regime_warning("hole", j_hole_max_meV, lambda_hole_kjmol * EV_PER_KJMOL)


def with_regime_warnings(structures: list[dict[str, Any]], lambda_hole_kjmol: float) -> list[dict[str, Any]]:
    """Copies of a record's structures, each with the hopping-regime warning
    (:func:`structure_warnings`) from its stored ``j_hole_max_meV`` and this lambda+ when
    it lacks one (records made before the warning existed) and its mobility is a hopping
    one (not a transient-localisation value, ``transport_model``)."""
    from sim_backends.mobility import MARCUS_NAME, split_regime_warning

    out = []
    for s in structures:
        ws = list(s.get("warnings") or [])
        regime = (_regime_warning(float(s["j_hole_max_meV"]), lambda_hole_kjmol)
                  if s.get("j_hole_max_meV") is not None and s.get("transport_model") in (None, MARCUS_NAME)
                  else None)
        if regime and not any(split_regime_warning(w)[1] is not None for w in ws):
            s = {**s, "warnings": [*ws, regime]}
        out.append(s)
    return out


def landscape_record(smiles: str, lambda_hole_kjmol: float, n_trials: int, n_structures: int,
                     window_kjmol: float, transfer: str = "gfn2-xtb", seed: int = 0,
                     space_groups: str = ESF_SPACE_GROUPS, temperature_K: float = 300.0,
                     energy_sd_kjmol: float = FF_ENERGY_SD_KJMOL, cutoff_A: float = 4.0,
                     level_params: dict[str, Any] | None = None,
                     lambda_level: str | None = None, jahn_teller: str | None = None,
                     racemic: bool = False, charges: str = DATA_SET_CHARGES, transport: str = "auto",
                     tlt_disorder_ratio: float = DISORDER_RATIO,
                     tlt_hbar_over_tau_meV: float = HBAR_OVER_TAU_MEV) -> dict[str, Any]:
    """CSP, transfer integrals and hole mobility of the kept structures, and the landscape
    mobility: one JSON-ready record (the data set's and the backend's format).

    ``charges``: the CSP point charges (:data:`CHARGE_LABELS`; the default is the shipped
    data set's, :data:`DATA_SET_CHARGES`: the backends pass their own, RESP by default).
    ``transport``, ``tlt_disorder_ratio``, ``tlt_hbar_over_tau_meV``: each structure's
    transport model (:func:`sim_backends.mobility.crystal_mobility`).

    Keys: ``n_trials``, ``transfer_level``, ``charges``, ``n_minima``, ``structures`` (per kept
    structure: id, energy, space group, Z, density, CIF, mobility, largest |J|, the size of
    the hole frontier manifold (``hole_manifold``; >1: degenerate HOMO, rotation-invariant
    J_eff, :mod:`sim_backends.transfer`), ``warnings`` (:func:`structure_warnings`;
    ``lambda_level`` names where lambda+ came from, ``jahn_teller`` the GFN2-xTB lambda+'s
    degenerate-HOMO status) and INFO ``notes``
    or ``error``), ``n_minima_in_window`` (the CSP minima within the window, before the
    ``n_structures`` cap), ``landscape_mobility_hole_cm2Vs`` ({mean, sd, sd_energy,
    n_in_window, uncomputed_weight, sd_covers, energy_sd_kjmol, window_kjmol}: ``mean`` the
    Boltzmann mean over the structures with a mobility only, ``n_in_window`` their number;
    ``uncomputed_weight`` the Boltzmann weight at ``temperature_K`` of the window's other
    structures (beyond the cap or failed) as a share of all in-window force-field energies'
    weight; ``sd`` the energy-sampling ``sd_energy`` widened for it and ``sd_covers`` what it
    includes, :func:`sim_backends.mobility.window_coverage`),
    ``global_minimum_mobility_hole_cm2Vs``, ``cpu_s`` ({csp, transfer}, this process's
    CPU seconds); ``error`` (one line) when no structure has a mobility. A SMILES naming one
    enantiomer is searched only in the Sohncke groups of ``space_groups`` when that is the
    default list (a given list with other groups is refused) unless ``racemic``
    (:mod:`sim_backends.csp.chirality`).
    """
    import numpy as np

    from sim_backends.base import BackendError, process_cpu_s
    from sim_backends.csp import run_csp
    from sim_backends.mobility import (EV_PER_KJMOL, crystal_mobility, landscape_mobility,
                                       transport_messages, window_coverage)
    from sim_backends.structures import load_crystal
    from sim_backends.transfer import crystal_transfer

    c0 = process_cpu_s()
    if transfer == "dft":
        level_params = {"functional": "b3lyp", "basis": "6-31g", "conv_tol": 1e-7, **(level_params or {})}
        level_name = f"{str(level_params['functional']).upper()}/{level_params['basis']}"
    else:
        level_name = "GFN2-xTB"
    rec: dict[str, Any] = {"n_trials": n_trials, "transfer_level": level_name, "charges": charges}
    from sim_backends.csp.chirality import stereo_policy
    from sim_backends.csp.spacegroups import get_space_group

    if space_groups == ESF_SPACE_GROUPS and stereo_policy(smiles, racemic).sohncke_only:
        space_groups = ",".join(g for g in ESF_SPACE_GROUPS.split(",") if get_space_group(g).sohncke)
    try:
        land = run_csp(smiles, n_trials, space_groups=space_groups, charges=charges, progress=False,
                       sampling="fixed", seed=seed, racemic=racemic)
    except Exception as exc:  # noqa: BLE001 - any CSP failure is recorded, the run goes on
        return {**rec, "error": f"csp: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}",
                "cpu_s": {"csp": round(process_cpu_s() - c0, 2)}}
    cpu_csp = process_cpu_s() - c0
    rec["n_minima"] = len(land)
    if land.meta.get("warnings"):  # the force field's domain (sim_backends/csp/domain.py)
        rec["csp_warnings"] = list(land.meta["warnings"])
    if not len(land):
        return {**rec, "error": "csp: no minimum found", "cpu_s": {"csp": round(cpu_csp, 2)}}
    e0 = land.minima[0].energy_kjmol
    in_window = [m for m in land.minima if m.energy_kjmol - e0 <= window_kjmol]
    rec["n_minima_in_window"] = len(in_window)  # before the n_structures cap
    minima = in_window[:n_structures]
    structures = []
    c1 = process_cpu_s()
    for m in minima:
        s: dict[str, Any] = {"id": m.id, "energy_kjmol": round(m.energy_kjmol, 3), "space_group": m.space_group,
                             "z": m.z, "density_gcm3": round(float(m.structure.density), 4), "cif": m.cif()}
        try:
            tr = crystal_transfer(load_crystal(m.cif(), smiles), transfer, cutoff_A, level_params or {})
            lam_ev = lambda_hole_kjmol * EV_PER_KJMOL
            values, details = crystal_mobility(tr, {"hole": lam_ev}, temperature_K, transport=transport,
                                               tlt_disorder_ratio=tlt_disorder_ratio,
                                               tlt_hbar_over_tau_meV=tlt_hbar_over_tau_meV)
            j_max = max(abs(d.hole["j_eff_meV"]) for d in tr.dimers)
            hole = details["hole"]
            warnings, notes = transport_messages("hole", hole, j_max, lam_ev)
            s.update({"mobility_hole_cm2Vs": values["mobility_hole_cm2Vs"],
                      "mobility_hole_max_cm2Vs": values["mobility_hole_max_cm2Vs"],
                      "transport_model": hole["model"],
                      "j_hole_max_meV": j_max,
                      "j_electron_max_meV": max(abs(d.electron["j_eff_meV"]) for d in tr.dimers),
                      "n_unique_dimers": len(tr.dimers), "hole_manifold": int(tr.manifolds["hole"]["n"]),
                      "warnings": [*structure_warnings(tr, lambda_level, jahn_teller), *warnings],
                      "notes": [*tr.notes, *notes]})
            if "tlt" in hole:  # outside the hopping regime: the TLT value, the hopping one beside it
                s["mobility_hole_marcus_cm2Vs"] = hole["exact"]["iso"]
                s["mobility_hole_tlt_stderr_cm2Vs"] = hole["tlt"]["stderr_iso"]
                s["tlt_localisation_length_A"] = hole["tlt"]["localisation_length_A"]
        except BackendError as exc:
            s["error"] = " ".join(str(exc).split())[:300]
        structures.append(s)
    rec["structures"] = structures
    ok = [s for s in structures if "mobility_hole_cm2Vs" in s]
    if ok:
        lm = landscape_mobility([s["energy_kjmol"] for s in ok], [s["mobility_hole_cm2Vs"] for s in ok],
                                energy_sd_kjmol, window_kjmol=window_kjmol, temperature_K=temperature_K)
        cov = window_coverage({m.id: m.energy_kjmol for m in in_window},
                              {s["id"]: s["mobility_hole_cm2Vs"] for s in ok}, lm.mean, lm.sd, window_kjmol,
                              temperature_K=temperature_K)
        rec["landscape_mobility_hole_cm2Vs"] = {"mean": lm.mean, "sd": cov["sd"], "sd_energy": lm.sd,
                                                "n_in_window": lm.n_in_window,
                                                "uncomputed_weight": cov["uncomputed_weight"],
                                                "sd_covers": cov["sd_covers"],
                                                "energy_sd_kjmol": energy_sd_kjmol, "window_kjmol": window_kjmol}
        rec["global_minimum_mobility_hole_cm2Vs"] = ok[int(np.argmin([s["energy_kjmol"] for s in ok]))][
            "mobility_hole_cm2Vs"]
    else:
        reasons = "; ".join(f"{s['id']}: {s['error']}" for s in structures)
        rec["error"] = f"no structure with a mobility ({reasons})"
    rec["cpu_s"] = {"csp": round(cpu_csp, 2), "transfer": round(process_cpu_s() - c1, 2)}
    return rec


def landscape_values(lambda_hole_kjmol: float, rec: dict[str, Any]) -> dict[str, float]:
    """The values a level reports from a :func:`landscape_record` (or a proxy-only record
    when it has no landscape): the objective, the mobility with its sd (widened for the
    window's structures without a mobility in records that computed their weight),
    lambda+, and ``n_structures_in_window``: the structures the mean is over (those with a
    mobility; the window's count is :func:`coverage_extra`'s ``n_minima_in_window``)."""
    lm = rec.get("landscape_mobility_hole_cm2Vs")
    if lm is None:
        return {OBJECTIVE: proxy_log10_mobility(lambda_hole_kjmol), "reorg_energy_kjmol": lambda_hole_kjmol}
    mean = max(float(lm["mean"]), 1e-12)  # a structure set without any coupling: mobility 0
    return {OBJECTIVE: math.log10(mean), "landscape_mobility_hole_cm2Vs": float(lm["mean"]),
            "landscape_mobility_hole_sd_cm2Vs": float(lm["sd"]),
            "log10_landscape_mobility_hole_sd": float(lm["sd"]) / (mean * math.log(10)),
            "n_structures_in_window": float(lm["n_in_window"]), "reorg_energy_kjmol": lambda_hole_kjmol}


def coverage_extra(rec: dict[str, Any]) -> dict[str, Any]:
    """What a :func:`landscape_record` says about the part of its window its mean covers,
    for a result's ``extra``: ``n_minima_in_window`` and, from its landscape mobility,
    ``uncomputed_weight``, ``sd_energy`` and ``sd_covers``; each only when the record has it
    (the shipped data set's records predate them: no share is made up for them)."""
    out = {k: rec[k] for k in ("n_minima_in_window",) if rec.get(k) is not None}
    lm = rec.get("landscape_mobility_hole_cm2Vs") or {}
    out.update({k: lm[k] for k in ("uncomputed_weight", "sd_energy", "sd_covers") if lm.get(k) is not None})
    return out


def weight_share_text(share: float) -> str:
    """A share of a Boltzmann weight as a percentage, ``"52%"``; never ``"100%"`` or ``"0%"``
    for a share that is not exactly that (``">99%"``, ``"<1%"``)."""
    if 0.0 < share < 1.0 and round(share * 100) in (0, 100):
        return "<1%" if share < 0.5 else ">99%"
    return f"{share:.0%}"


def boltzmann_mean_text(window_kjmol: float, n_structures: int, coverage: dict[str, Any] | None = None) -> str:
    """What an ESF level's landscape mobility averages, as its level of theory says it.

    Without ``coverage``, the level's own: ``"Boltzmann mean over at most the 6 lowest
    structures within 7 kJ/mol"``. With one result's (``n_computed``: structures the level
    computed, its lowest; ``n_with_mobility``: of them with a mobility; ``n_in_window``: the
    window's structures, None when not recorded; ``uncomputed_weight``: the window's Boltzmann
    weight without a mobility, None when not recorded): ``"Boltzmann mean over the 6 lowest of
    41 structures within 7 kJ/mol (52% of the weight)"``, ``"... over all 4 structures within
    7 kJ/mol"``, ``"... over the 6 lowest structures within 7 kJ/mol (share of the window not
    recorded)"``."""
    w = f"{window_kjmol:g} kJ/mol"
    if coverage is None:
        return f"Boltzmann mean over at most the {n_structures} lowest structures within {w}"
    k = int(coverage["n_with_mobility"])
    a = int(coverage.get("n_computed") or k)
    m, w_u = coverage.get("n_in_window"), coverage.get("uncomputed_weight")
    which = f"the {a} lowest" if k == a else f"{k} of the {a} lowest"
    if m is None:
        return f"Boltzmann mean over {which} structures within {w} (share of the window not recorded)"
    if k >= int(m):
        return f"Boltzmann mean over all {int(m)} structures within {w}"
    share = "share of the weight not recorded" if w_u is None else f"{weight_share_text(1.0 - w_u)} of the weight"
    if a >= int(m):
        which = f"{k} of the {int(m)}"
    else:
        which += f" of {int(m)}"
    return f"Boltzmann mean over {which} structures within {w} ({share})"


_VALUES = (OBJECTIVE, "reorg_energy_kjmol", "ip_gas_ev")
#: the typical error of the values that estimate a measurable quantity (xtb-reorg's IP)
_VALUE_SD = {"ip_gas_ev": XTB_IP_SD_EV}
#: the level of the lambda+ every ESF level reports (``reorg_energy_kjmol``) and its mobilities
#: use: the same ``xtb-reorg`` calculation at every fidelity plus the empirical shift
#: (:func:`_lambda`), not the level of the mobility
LAMBDA_VALUE_LEVEL = (f"{XTB_LAMBDA_LEVEL}; + {XTB_LAMBDA_SHIFT_KJMOL:g} kJ/mol empirical shift to B3LYP/6-31G//"
                      f"B3LYP/6-31G (LOO RMSE {XTB_LAMBDA_SHIFT_SD_KJMOL:.1f} kJ/mol on three-ring pi molecules)")
#: the same, short (the ESF report's lambda+ column and lines)
LAMBDA_SHORT_LEVEL = f"GFN2-xTB + {XTB_LAMBDA_SHIFT_KJMOL:g} kJ/mol offset fitted to B3LYP"
#: the level of each value an ESF level reports that is not its mobility's (``value_levels``):
#: the values of the shared GFN2-xTB calculation, the same computation at every fidelity (a
#: ladder of ESF levels cannot refine them: :func:`agent.config.check_runnable` refuses one
#: with either as its objective)
_VALUE_LEVELS = {"ip_gas_ev": XTB_IP_LEVEL, "reorg_energy_kjmol": LAMBDA_VALUE_LEVEL}


#: the calculation each of those values comes from (``value_computations``: lambda+ is
#: ``xtb-reorg``'s plus a constant, so a ladder of xtb-reorg under an ESF level adds nothing
#: for it; :func:`agent.summary.value_computation`)
_VALUE_COMPUTATIONS = {"ip_gas_ev": XTB_IP_LEVEL, "reorg_energy_kjmol": XTB_LAMBDA_LEVEL}


def _value_computations(params: dict[str, Any]) -> dict[str, str]:
    """:data:`_VALUE_COMPUTATIONS` for a level with these params (a given lambda+ is its own)."""
    if params.get("lambda_hole_kjmol") is None:
        return _VALUE_COMPUTATIONS
    return {**_VALUE_COMPUTATIONS, "reorg_energy_kjmol": _value_levels(params)["reorg_energy_kjmol"]}


def _value_levels(params: dict[str, Any]) -> dict[str, str]:
    """:data:`_VALUE_LEVELS` for a level with these params: a lambda+ given in them
    (``lambda_hole_kjmol``) is reported as given, not computed."""
    if params.get("lambda_hole_kjmol") is None:
        return _VALUE_LEVELS
    return {**_VALUE_LEVELS, "reorg_energy_kjmol": f"given in the params (lambda_hole_kjmol = "
                                                   f"{float(params['lambda_hole_kjmol']):g} kJ/mol)"}
_LANDSCAPE_VALUES = (*_VALUES, "landscape_mobility_hole_cm2Vs", "landscape_mobility_hole_sd_cm2Vs",
                     "log10_landscape_mobility_hole_sd", "n_structures_in_window")


@dataclass(frozen=True)
class _Lambda:
    """A molecule's lambda+ as the ESF levels use it (:func:`_lambda`)."""

    #: lambda+ (kJ/mol): given in the params, else GFN2-xTB's plus the shift
    value: float
    #: CPU s the GFN2-xTB calculation cost here (0 for a given lambda+)
    cpu_s: float = 0.0
    #: ``xtb-reorg``'s ``extra["jahn_teller"]`` (None for a non-degenerate HOMO or a given lambda+)
    jahn_teller: str | None = None
    #: estimated gas-phase ionisation energy (eV, ``xtb-reorg``'s ``ip_gas_ev``; None if given)
    ip_gas_ev: float | None = None
    #: the unshifted GFN2-xTB lambda+ (kJ/mol; None if given)
    xtb_kjmol: float | None = None

    def extra(self) -> dict[str, Any]:
        """What every ESF level records of it in ``EvalResult.extra``."""
        out: dict[str, Any] = {}
        if self.xtb_kjmol is not None:
            out["lambda_xtb_kjmol"] = self.xtb_kjmol
        if self.jahn_teller:
            out["jahn_teller"] = self.jahn_teller
        return out


def _lambda(p: dict[str, Any], smiles: str) -> _Lambda:
    """lambda+ from the params, else GFN2-xTB's plus
    :data:`~sim_backends.reorg.XTB_LAMBDA_SHIFT_KJMOL`, with what the calculation reported."""
    if p.get("lambda_hole_kjmol") is not None:
        return _Lambda(float(p["lambda_hole_kjmol"]))
    from sim_backends.reorg import XtbReorgBackend

    r = XtbReorgBackend().evaluate(EvalInput(smiles))
    if not r.ok:
        raise SetupError(f"no hole reorganisation energy for this molecule (GFN2-xTB lambda+ failed: {r.reason})")
    raw = float(r.values["reorg_energy_kjmol"])
    return _Lambda(raw + XTB_LAMBDA_SHIFT_KJMOL, r.cpu_s, r.extra.get("jahn_teller"), float(r.values["ip_gas_ev"]),
                   raw)


class EsfProxyBackend(Backend):
    """The molecule's lambda+ in the reference crystal: the proxy of the landscape mobility."""

    name = "esf-proxy"
    version = "2"  # 2: lambda+ shifted to B3LYP (reorg.XTB_LAMBDA_SHIFT_KJMOL)
    fidelity = 0
    computes: ClassVar[tuple[str, ...]] = _VALUES
    value_sd: ClassVar[dict[str, float]] = _VALUE_SD
    value_levels: ClassVar[dict[str, str]] = _VALUE_LEVELS
    objective_key = OBJECTIVE
    #: value key -> the name it is shown under (:func:`agent.summary.shown_name`)
    shown_as: ClassVar[dict[str, str]] = {OBJECTIVE: PROXY_SHOWN_AS}
    description = ("log10 hole mobility (cm2/Vs) of a reference crystal from the GFN2-xTB lambda+ "
                   "(+ an empirical offset fitted to B3LYP)")
    params_schema: ClassVar[dict[str, Any]] = {"temperature_K": check.number(0.0, 2000.0, lo_open=True),
                                               "lambda_hole_kjmol": check.number(0.0, 500.0, lo_open=True)}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.value_levels = _value_levels(params)
        self.value_computations = _value_computations(params)

    def level_of_theory(self, params: dict[str, Any] | None = None) -> str:
        t_k = float({**self.params, **(params or {})}.get("temperature_K", 300.0))
        return (f"Marcus hopping at {t_k:g} K, GFN2-xTB lambda+ + {XTB_LAMBDA_SHIFT_KJMOL:g} kJ/mol, "
                f"reference crystal (|J| {REF_J_MEV:g} meV, {REF_DISTANCE_A:g} A)")

    def cost_estimate(self, inp: EvalInput) -> float:
        from sim_backends.reorg import XtbReorgBackend

        return XtbReorgBackend().cost_estimate(inp)

    def _evaluate(self, inp: EvalInput) -> tuple[dict[str, float], dict[str, Any]]:
        lam = _lambda(inp.params, inp.smiles)
        t = float(inp.params.get("temperature_K", 300.0))
        extra: dict[str, Any] = {"level": self.level_of_theory(inp.params), **lam.extra()}
        values = {OBJECTIVE: proxy_log10_mobility(lam.value, t), "reorg_energy_kjmol": lam.value}
        if lam.ip_gas_ev is not None:
            values["ip_gas_ev"] = lam.ip_gas_ev
        return values, extra


class EsfLandscapeBackend(Backend):
    """Landscape hole mobility from a CSP of the molecule (module docstring)."""

    name = "esf-landscape"
    version = "2"  # 2: lambda+ shifted to B3LYP (reorg.XTB_LAMBDA_SHIFT_KJMOL)
    fidelity = 1
    computes: ClassVar[tuple[str, ...]] = _LANDSCAPE_VALUES
    value_sd: ClassVar[dict[str, float]] = _VALUE_SD
    value_levels: ClassVar[dict[str, str]] = _VALUE_LEVELS
    objective_key = OBJECTIVE
    description = ("log10 Boltzmann-weighted hole mobility (cm2/Vs; Marcus hopping, TLT where 2|J| > lambda) "
                   "over a CSP landscape "
                   "(W99 force field, RESP or GFN2-xTB charges; GFN2-xTB or B3LYP/6-31G transfer integrals)")
    _DEFAULTS: ClassVar[dict[str, Any]] = {"n_trials": 150, "n_structures": 6, "window_kjmol": 7.0,
                                           "transfer": "gfn2-xtb", "seed": 0, "space_groups": ESF_SPACE_GROUPS,
                                           "temperature_K": 300.0, "energy_sd_kjmol": FF_ENERGY_SD_KJMOL,
                                           "cutoff_A": 4.0, "racemic": False, "charges": "resp",
                                           **TRANSPORT_DEFAULTS}
    params_schema: ClassVar[dict[str, Any]] = {
        "n_trials": check.integer(1, 1_000_000), "n_structures": check.integer(1, 1000),
        "window_kjmol": check.number(0.0, 100.0, lo_open=True), "transfer": check.one_of("gfn2-xtb", "dft"),
        "charges": check.one_of(*CHARGE_LABELS),
        "seed": check.integer(0), "space_groups": check.space_groups, "racemic": check.boolean,
        "temperature_K": check.number(0.0, 2000.0, lo_open=True),
        "energy_sd_kjmol": check.number(0.0, 100.0), "cutoff_A": check.number(2.0, 10.0),
        "lambda_hole_kjmol": check.number(0.0, 500.0, lo_open=True), "fidelity": check.integer(0, 10),
        "functional": check.xc_functional, "basis": check.basis_set,
        "max_iterations": check.integer(1, 10_000), "max_cycles": check.integer(1, 10_000),
        **TRANSPORT_PARAMS,
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.value_levels = _value_levels(params)
        self.value_computations = _value_computations(params)
        if "fidelity" in params:
            self.fidelity = int(params["fidelity"])  # the refined level of a ladder

    def _p(self, params: dict[str, Any]) -> dict[str, Any]:
        return {**self._DEFAULTS, **self.params, **params}

    def level_of_theory(self, params: dict[str, Any] | None = None) -> str:
        p = self._p(params or {})
        tr = ("GFN2-xTB" if p["transfer"] == "gfn2-xtb"
              else f"{str(p.get('functional', 'b3lyp')).upper()}/{p.get('basis', '6-31g')}")
        charges = CHARGE_LABELS.get(str(p["charges"]), str(p["charges"]))
        return (f"{transport_level_text(p['temperature_K'], p)}, {tr} transfer integrals, "
                f"{p['n_trials']}-trial W99 CSP with {charges} charges, "
                + boltzmann_mean_text(float(p["window_kjmol"]), int(p["n_structures"])))

    def cost_estimate(self, inp: EvalInput) -> float:
        """CPU s: the CSP trials, the transfer integrals of ``n_structures`` structures and,
        with RESP charges, the HF/6-31G* fit (:func:`sim_backends.csp.charges.resp_cost_estimate`,
        measured anthracene 31 CPU s; charged in full although a molecule's charges are
        cached after its first fit)."""
        from sim_backends.csp.charges import resp_basis_functions, resp_cost_estimate
        from sim_backends.molecule import validate_smiles
        from sim_backends.reorg import _atom_counts

        p = self._p(inp.params)
        try:
            validate_smiles(inp.smiles)
            n_h, n_1, n_2 = _atom_counts(inp.smiles)
        except SetupError:
            return 1.0
        heavy = n_1 + n_2
        csp = _CSP_S_PER_TRIAL_HEAVY * heavy * float(p["n_trials"])
        n_cell = _Z_ESTIMATE * (n_h + heavy)
        # the transfer backends' fits per structure (sim_backends.transfer)
        per = 2e-4 * n_cell**2 if p["transfer"] == "gfn2-xtb" else 0.04 * n_cell**2.5
        charges = resp_cost_estimate(resp_basis_functions(n_h, n_1, n_2))[0] if str(p["charges"]) != "xtb" else 0.0
        return charges + csp + float(p["n_structures"]) * per

    def _evaluate(self, inp: EvalInput) -> tuple[dict[str, float], dict[str, Any]]:
        p = self._p(inp.params)
        lam = _lambda(p, inp.smiles)
        keys = ("functional", "basis", "max_cycles") if p["transfer"] == "dft" else ("max_iterations",)
        level_params = {k: p[k] for k in keys if k in p}
        rec = landscape_record(inp.smiles, lam.value, int(p["n_trials"]), int(p["n_structures"]),
                               float(p["window_kjmol"]), str(p["transfer"]), int(p["seed"]),
                               str(p["space_groups"]), float(p["temperature_K"]), float(p["energy_sd_kjmol"]),
                               float(p["cutoff_A"]), level_params,
                               lambda_level=None if p.get("lambda_hole_kjmol") is not None else "GFN2-xTB",
                               jahn_teller=lam.jahn_teller, racemic=bool(p["racemic"]), charges=str(p["charges"]),
                               **transport_kwargs(p))
        if "error" in rec:
            raise SetupError(rec["error"]) if rec["error"].startswith("csp: no minimum") else _run_error(rec["error"])
        values = landscape_values(lam.value, rec)
        if lam.ip_gas_ev is not None:
            values["ip_gas_ev"] = lam.ip_gas_ev
        extra = {"level": self.level_of_theory(inp.params), "structures": rec["structures"],
                 "csp_level": csp_level(str(p["charges"])), "csp_charges": str(p["charges"]),
                 **coverage_extra(rec),
                 "cpu_s_parts": {**rec["cpu_s"], "lambda": round(lam.cpu_s, 2)},
                 "global_minimum_mobility_hole_cm2Vs": rec["global_minimum_mobility_hole_cm2Vs"], **lam.extra()}
        if rec.get("csp_warnings"):
            extra["csp_warnings"] = rec["csp_warnings"]
        return values, extra


class EsfRefinedBackend(EsfLandscapeBackend):
    """The refined landscape fidelity: a longer CSP (300 trials, continuing the quick one's
    sampling) and up to 6 structures; ``transfer = "dft"`` for B3LYP/6-31G integrals."""

    name = "esf-refined"
    fidelity = 2
    description = ("log10 Boltzmann-weighted hole mobility (cm2/Vs; Marcus hopping, TLT where 2|J| > lambda) "
                   "over a longer CSP landscape "
                   "(refined fidelity; GFN2-xTB or B3LYP/6-31G transfer integrals)")
    _DEFAULTS: ClassVar[dict[str, Any]] = {**EsfLandscapeBackend._DEFAULTS, "n_trials": 300}


#: the run_csp settings that decide a CSP landscape (its minima and their ids): a structure
#: stage re-ranks the landscape of an ESF level only when its ``csp-ff`` shares them all
#: (:func:`csp_search_differences`; ``examples/esf.toml``, newuser37 S3, newuser43 F2)
CSP_SEARCH_KEYS = ("n_trials", "space_groups", "charges", "sampling", "seed", "z_prime", "racemic", "flexible")


def _groups(spec: Any) -> str:
    from sim_backends.csp.spacegroups import parse_space_groups

    try:
        return ",".join(g.symbol for g in parse_space_groups(spec))
    except (ValueError, KeyError):
        return str(spec)


def esf_csp_search(backend: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """The :data:`CSP_SEARCH_KEYS` of the run_csp call of ESF level ``backend`` (a registry
    name) with these params; None for a backend that is not an ESF landscape level."""
    from sim_backends.registry import UnknownBackendError, backend_class

    try:
        cls = backend_class(backend)
    except UnknownBackendError:
        return None
    if not (isinstance(cls, type) and issubclass(cls, EsfLandscapeBackend)):
        return None
    p = {**cls._DEFAULTS, **params}
    # landscape_record's call: fixed sampling, Z' = 1, the search's own flexibility rule
    return {"n_trials": int(p["n_trials"]), "space_groups": _groups(p["space_groups"]), "charges": str(p["charges"]),
            "sampling": "fixed", "seed": int(p["seed"]), "z_prime": "1", "racemic": bool(p["racemic"]),
            "flexible": "auto"}


def csp_ff_search(params: dict[str, Any]) -> dict[str, Any]:
    """The :data:`CSP_SEARCH_KEYS` of ``csp-ff`` with these params (its defaults included)."""
    from sim_backends.csp.backend import CSPBackend
    from sim_backends.csp.spacegroups import parse_z_prime

    p = {**CSPBackend._DEFAULTS, **params}
    try:
        z_prime = ",".join(str(z) for z in parse_z_prime(p["z_prime"]))
    except ValueError:
        z_prime = str(p["z_prime"])
    return {"n_trials": int(p["n_trials"]), "space_groups": _groups(p["space_groups"]),
            "charges": "the search's default" if p["charges"] is None else str(p["charges"]),
            "sampling": str(p["sampling"]), "seed": int(p["seed"]), "z_prime": z_prime, "racemic": bool(p["racemic"]),
            "flexible": str(p["flexible"])}


def csp_search_differences(csp_params: dict[str, Any], esf_backend: str, esf_params: dict[str, Any]) -> list[str]:
    """The settings in which a structure stage's ``csp-ff`` search (``csp_params``) differs
    from the one of ESF level ``esf_backend`` (with ``esf_params``), each as
    ``"n_trials 150 vs 300"`` (the structure stage's first); [] when they make the same
    run_csp call or ``esf_backend`` is no ESF landscape level."""
    esf = esf_csp_search(esf_backend, esf_params)
    if esf is None:
        return []
    csp = csp_ff_search(csp_params)

    def same(k: str) -> bool:
        if k == "space_groups":  # each group's trials are seeded by its symbol: order is immaterial
            return sorted(str(csp[k]).split(",")) == sorted(str(esf[k]).split(","))
        return csp[k] == esf[k]

    return [f"{k} {csp[k]} vs {esf[k]}" for k in CSP_SEARCH_KEYS if not same(k)]


def _run_error(message: str) -> Exception:
    from sim_backends.base import RunError

    return RunError(message, retryable=False)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@lru_cache(maxsize=8)
def _load_records(path: str, mtime_ns: int) -> dict[str, dict[str, Any]]:
    """{canonical SMILES: record} of one ``esf_<fidelity>.jsonl`` (``mtime_ns`` keys the cache).

    A last line that is not JSON is skipped with a warning naming it: it is what an interrupted
    ``make_esf_dataset.py`` (which appends one line per molecule and resumes) leaves, and a
    rerun of the generator recomputes that molecule. Any other malformed line -- not JSON, no
    ``smiles``, a SMILES that does not parse, a ``cpu_s`` or lambda that is not a number -- is
    a SetupError naming the file and the line."""
    import warnings

    from sim_backends.molecule import validate_smiles

    lines = Path(path).read_text().splitlines()
    last = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
    out = {}
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        where = f"{path} line {i + 1}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == last:
                warnings.warn(f"{where}: not JSON, skipped (a truncated last record, as an interrupted "
                              "make_esf_dataset.py leaves; rerun it to complete the data set)", stacklevel=2)
                continue
            raise SetupError(f"{where}: not JSON") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("smiles"), str):
            raise SetupError(f"{where}: a record needs a 'smiles' string")
        cpu = rec.get("cpu_s", 0.0)
        if not (_is_number(cpu) or (isinstance(cpu, dict) and all(_is_number(v) for v in cpu.values()))):
            raise SetupError(f"{where}: 'cpu_s' must be a number or an object of numbers, not {cpu!r}"[:300])
        for key in ("reorg_energy_kjmol", "lambda_hole_kjmol"):
            if rec.get(key) is not None and not _is_number(rec[key]):
                raise SetupError(f"{where}: {key!r} must be a number, not {rec[key]!r}"[:300])
        try:
            out[validate_smiles(rec["smiles"], max_heavy_atoms=10**6)] = rec
        except SetupError as exc:
            raise SetupError(f"{where}: {exc}") from None
    return out


def esf_records(fidelity: str, data_dir: str | Path = ESF_DATA) -> dict[str, dict[str, Any]]:
    """The data set's records of one fidelity (``proxy``, ``quick``, ``refined``) by
    canonical SMILES; SetupError when the file does not exist."""
    p = Path(data_dir) / f"esf_{fidelity}.jsonl"
    if not p.is_file():
        raise SetupError(f"ESF data not found: {p}")
    return _load_records(str(p.resolve()), p.stat().st_mtime_ns)


def record_cpu_s(rec: dict[str, Any]) -> float:
    """CPU seconds recorded for a record (all its steps)."""
    c = rec.get("cpu_s", 0.0)
    return float(sum(c.values()) if isinstance(c, dict) else c)


class _EsfReplay(RecordedReplay):
    """Replay of one fidelity of the ESF data set (:class:`~sim_backends.replay.RecordedReplay`:
    the real level's cost estimate, charged the CPU seconds recorded for the molecule). A
    molecule with no record is a setup failure; a recorded failure is replayed as one."""

    version = "2"  # 2: the data set's lambda+ shifted (data/esf/shift_lambda.py)
    data_fidelity: ClassVar[str] = ""
    #: the real levels' (a replay ladder under or over a real level computes lambda+ the same way)
    value_computations: ClassVar[dict[str, str]] = _VALUE_COMPUTATIONS
    params_schema: ClassVar[dict[str, Any]] = {"data_dir": check.text, "fidelity": check.integer(0, 10),
                                               **RecordedReplay.recorded_params_schema}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if "fidelity" in params:
            self.fidelity = int(params["fidelity"])

    def _record(self, inp: EvalInput) -> dict[str, Any]:
        from sim_backends.molecule import validate_smiles

        recs = esf_records(self.data_fidelity, inp.params.get("data_dir", ESF_DATA))
        rec = recs.get(validate_smiles(inp.smiles))
        if rec is None:
            raise SetupError(f"no stored {self.data_fidelity} ESF result for '{inp.smiles}'")
        return rec

    def _evaluate(self, inp: EvalInput) -> tuple[dict[str, float], dict[str, Any]]:
        rec = self._record(inp)
        if rec.get("error"):
            raise _run_error(f"replayed failure: {rec['error']}")
        lam = rec.get("reorg_energy_kjmol", rec.get("lambda_hole_kjmol"))
        extra: dict[str, Any] = {"replayed": self.data_fidelity}
        before = (rec.get("lambda_shift") or {}).get("before") or {}
        raw = before.get("reorg_energy_kjmol", before.get("lambda_hole_kjmol"))
        if raw is not None:  # the unshifted GFN2-xTB value, as the real levels report it
            extra["lambda_xtb_kjmol"] = float(raw)
        if rec.get("structures"):  # the predicted structures (with CIFs), as the real level reports them
            extra["structures"] = with_regime_warnings(rec["structures"], float(lam))
            extra["csp_level"] = csp_level(str(rec.get("charges", DATA_SET_CHARGES)))
            extra["csp_charges"] = str(rec.get("charges", DATA_SET_CHARGES))
            extra.update(coverage_extra(rec))  # none in the shipped records: their share stays unknown
            from sim_backends.csp.domain import ff_types_of_smiles, model_warnings

            # records made before the domain check carry none: the atom-type part from the SMILES
            warnings = rec.get("csp_warnings") or model_warnings(ff_types_of_smiles(inp.smiles), [])
            if warnings:
                extra["csp_warnings"] = warnings
        return landscape_values(float(lam), rec), extra

    def recorded_cpu_s(self, inp: EvalInput, result: EvalResult) -> float | None:
        try:
            return record_cpu_s(self._record(EvalInput(inp.smiles, params={**self.params, **inp.params})))
        except SetupError:
            return None


#: the replays of the data set's three fidelities: registry name -> (fidelity, data set
#: fidelity, the real level whose cost estimate they report, values, description)
_REPLAYS: dict[str, tuple[int, str, str, tuple[str, ...], str]] = {
    "replay-esf-proxy": (0, "proxy", "esf-proxy", _VALUES,
                         "replays the ESF data set's proxy (GFN2-xTB lambda+ + offset, reference crystal)"),
    "replay-esf-quick": (1, "quick", "esf-landscape", _LANDSCAPE_VALUES,
                         "replays the ESF data set's quick-CSP landscape mobility (GFN2-xTB charges "
                         "and transfer)"),
    "replay-esf-refined": (2, "refined", "esf-refined", _LANDSCAPE_VALUES,
                           "replays the ESF data set's refined landscape mobility (300-trial CSP, "
                           "GFN2-xTB charges and transfer)"),
}
ReplayEsfProxyBackend, ReplayEsfQuickBackend, ReplayEsfRefinedBackend = (
    replay_backend(_EsfReplay, name, description, fidelity=fidelity, data_fidelity=data,
                   estimated_as=estimated_as, computes=computes, objective_key=OBJECTIVE,
                   # the data set's protocol: its CSPs used GFN2-xTB charges (no RESP fit to price)
                   estimated_params={} if fidelity == 0 else {"charges": DATA_SET_CHARGES})
    for name, (fidelity, data, estimated_as, computes, description) in _REPLAYS.items())
ReplayEsfProxyBackend.shown_as = EsfProxyBackend.shown_as  # a reference-crystal value as well
