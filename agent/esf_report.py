"""Energy-structure-function (ESF) results of a campaign: what ``status``, the run summary
and ``report`` say about charge transport on the predicted crystals.

* :func:`esf_results` -- per molecule with a landscape hole mobility, from the store alone:
  the molecule stage's ESF levels (``esf-landscape``/``esf-refined`` and their replays:
  the evaluation at the highest level the molecule reached) and the structure stage's
  mobility property level (the latest ``landscape_property`` event with the structures its
  mean is over: those with a computed ranking-level energy and, since events record
  ``n_predicted``, those with a mobility reused from the molecule stage but only a predicted
  energy, listed at that energy with ``energy_predicted`` and ``energy_sd_kjmol``). Each
  record: ``molecule_id, name, smiles, source`` (``"molecule stage"`` or ``"structure
  stage"``), ``backend``, ``level`` (level of theory), ``mean``/``sd`` (Boltzmann-weighted
  hole mobility over the structures with a mobility and its sd, cm2/(V
  s)), ``sd_covers`` (what the sd includes: the energy ranking's spread, the structures of the
  window without a mobility when some are, J, lambda and transport-model errors not; a structure stage's also
  what a computed energy's sd is: the ranking level's own relative-energy error and the
  structure surrogate's leave-one-out error in quadrature, :func:`_energy_sd_clause`), ``sd_energy`` (the
  energy ranking's part), ``n_in_window`` (the window's structures), ``n_with_mobility`` (of
  them with a value) and ``uncomputed_weight`` (the Boltzmann weight of the others), the
  ``sd`` widened for them (:func:`window_coverage`). A structure stage's window holds its
  uncomputed predicted structures, and every structure the CSP stored, also those beyond the
  lowest ``[structures] max_structures`` the stage kept (at force field plus the mean
  computed correction: ``window_cut`` says how many it kept of those stored and how many of
  the window lie beyond them, :func:`_window_cut`; :func:`_window_energies`; when none does and
  the kept structure at the cut lies within 1 sd of the window, ``warnings`` says so,
  :func:`_cut_edge_warning`); its ``n_predicted`` is how many of
  the window's structures with a mobility have a predicted energy only (their energy sd is
  in ``sd_energy``, and ``sd_covers`` says so), ``ranking_model`` what predicted it,
  ``energy_level`` the ranking level's level of theory, ``window_kjmol`` its window,
  ``window_structures`` every structure of the window (``id,
  energy_kjmol, rel_kjmol, mobility`` (bool), ``energy``: ``"computed"``, ``"predicted"`` or
  ``"estimated"`` beyond the cut) and ``window_energies`` their counts by ``energy``; a
  molecule-stage level computed its ``n_structures`` lowest (``n_computed``;
  ``n_minima_in_window`` as ``n_in_window``), and its result records the weight of the rest;
  ``n_in_window`` and ``uncomputed_weight`` are None for a result
  that does not (the shipped data set's replays: "share of the window not recorded"), and
  its ``level`` says which structures the mean is over
  (:func:`sim_backends.esf.boltzmann_mean_text`);
  ``structures`` (per structure: ``id, energy_kjmol, rel_kjmol`` (kJ/mol per molecule,
  relative to the lowest), ``mobility_hole_cm2Vs, density_gcm3, space_group, z, cif``
  (a CIF text or a file path, when known)), ``global_minimum`` (the lowest structure
  with a mobility), ``warnings`` (hole-carrier warnings of the transfer integrals: a
  coupling that is not well defined, e.g. a degenerate HOMO projected as one orbital in a
  result made before frontier manifolds, with how many structures carry them:
  :func:`hole_warnings`), ``notes`` (hole-carrier INFO notes, e.g. a 2-fold degenerate
  HOMO manifold whose rotation-invariant J_eff was used: :func:`hole_notes`). Best
  mobility first.
* :func:`esf_lines` -- the text lines (units and level on every figure; a ``WARNING`` line
  under a molecule whose value rests on flagged transfer integrals, an ``INFO`` line naming
  a degenerate HOMO manifold).
* :func:`write_esf_cifs` -- the predicted global minimum of each molecule-stage ESF
  landscape as ``runs/<name>/structures/esf_m<molecule>_<structure>.cif``.
* :func:`esf_map_figure` -- the ESF maps: relative lattice energy against hole mobility per
  predicted structure, one panel per molecule (best landscape mobility first), points
  coloured by density, the Boltzmann window (a molecule-stage level's: solid over the
  structures it computed, hatched above them; a structure stage's: hatched when it holds
  structures without a mobility, each ticked at its energy) and the landscape mean ± sd
  marked; titles say how much of the window the mean covers (:func:`window_share`) and, for
  a structure stage, how many of the window's energies are computed; a structure-stage point
  at a predicted energy is circled (dashed). The panels share one mobility range, and each
  y label names the level of its energies.

Importing this module is cheap (matplotlib and numpy load inside functions).
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.summary import reported_z
from sim_backends.esf import LAMBDA_SHORT_LEVEL
from sim_backends.reorg import (XTB_LAMBDA_HOLDOUT_MAE_KJMOL, XTB_LAMBDA_HOLDOUT_N, XTB_LAMBDA_HOLDOUT_RAW_MAE_KJMOL,
                                XTB_LAMBDA_SHIFT_KJMOL, XTB_LAMBDA_SHIFT_N, XTB_LAMBDA_SHIFT_SD_KJMOL,
                                XTB_LAMBDA_SPEARMAN)
from sim_backends.mobility import SD_ENERGY_ONLY, window_coverage

if TYPE_CHECKING:
    from agent.config import CampaignConfig
    from agent.store import Store

#: the molecule-level value that marks an ESF landscape evaluation (sim_backends/esf.py)
LANDSCAPE_KEY = "landscape_mobility_hole_cm2Vs"
#: unit of every mobility printed
MOBILITY_UNIT = "cm2/(V s)"
#: molecules listed by ``status`` and drawn in the ESF map
N_LISTED = 6
#: the Boltzmann temperature of the structure stage's landscape property (K;
#: :meth:`agent.stages.properties.PropertyLevel.landscape_property`)
LANDSCAPE_TEMPERATURE_K = 300.0


#: where the ESF levels' lambda+ comes from unless the config gives it (the esf-proxy's xtb-reorg,
#: shifted: sim_backends.esf._lambda)
LAMBDA_LEVEL = LAMBDA_SHORT_LEVEL
#: kJ/mol per eV
KJMOL_PER_EV = 96.485332
#: what the ESF levels' lambda+ (GFN2-xTB's plus an empirical shift) does to the mobilities
#: (benchmarks/results/reorg_calibration.json)
XTB_LAMBDA_CAVEAT = (f"lambda+ is GFN2-xTB's plus {XTB_LAMBDA_SHIFT_KJMOL:g} kJ/mol, the median B3LYP/6-31G//B3LYP/"
                     f"6-31G minus GFN2-xTB difference over {XTB_LAMBDA_SHIFT_N} three-ring pi molecules (anthracene, "
                     "carbazole, dibenzothiophene, thienoacenes; leave-one-out error "
                     f"{XTB_LAMBDA_SHIFT_SD_KJMOL:.1f} kJ/mol RMS, GFN2-xTB's rank correlation with B3LYP there "
                     f"{XTB_LAMBDA_SPEARMAN:.2f}; benchmarks/reorg_calibration.py); on {XTB_LAMBDA_HOLDOUT_N} "
                     "polycyclic molecules computed after it was fixed (tetracene, pyrene, phenanthrene, BTBT, "
                     f"benzo[b]carbazole) its mean absolute error is {XTB_LAMBDA_HOLDOUT_MAE_KJMOL:.1f} kJ/mol "
                     f"(GFN2-xTB alone {XTB_LAMBDA_HOLDOUT_RAW_MAE_KJMOL:.1f}); five-ring and non-fused molecules "
                     "(pentacene, N-phenylcarbazole) remain extrapolations, and a constant cannot mend the molecules "
                     "GFN2-xTB gets "
                     "badly wrong (dithieno[3,2-b:2',3'-d]thiophene 5.1 against 34.0 kJ/mol at B3LYP: small fused "
                     "thiophenes look far better than they are); the mobilities rank molecules, they are not "
                     "predictions")


#: what the molecule stage's ESF landscapes are (sim_backends.esf.landscape_record: fixed sampling)
FIXED_TRIALS_CAVEAT = ("the ESF levels' landscapes come from fixed-trial CSP searches (the trials their level names), "
                       "not searches run to convergence: a window may miss low-energy structures, as the structure "
                       "stage's 'NOT converged' line says of the same search; the landscapes rank molecules, they "
                       "are not complete landscapes")


def lambda_text(rec: dict[str, Any]) -> str:
    """``"lambda+ 0.116 eV (11.21 kJ/mol, GFN2-xTB + 5.06 kJ/mol offset fitted to B3LYP)"`` of an
    ESF record."""
    lam = float(rec["lambda_hole_kjmol"])
    return f"lambda+ {lam / KJMOL_PER_EV:.3f} eV ({lam:.2f} kJ/mol, {rec.get('lambda_level') or '?'})"


def format_mobility(mean: float, sd: float | None = None) -> str:
    """``"0.52 ± 0.18 cm2/(V s)"``; ``"4.1e-03 ± 1.2e-03 cm2/(V s)"`` below 0.01 (mobilities span
    decades: 2 significant figures; plain numbers where they read better, newuser50 #12)."""
    has_sd = sd is not None and math.isfinite(sd) and sd > 0
    plain = math.isfinite(mean) and 0.01 <= abs(mean) < 99.5 and (not has_sd or 0.001 <= sd < 99.5)
    return (f"{two_figures(mean, plain)}{f' ± {two_figures(sd, plain)}' if has_sd else ''} "
            f"{MOBILITY_UNIT}")


def two_figures(value: float, plain: bool | None = None) -> str:
    """``0.52``, ``3.0``, ``12``; ``4.1e-03``: 2 significant figures, plain (``plain`` None:
    from 0.01 to 100) or scientific."""
    if plain is None:
        plain = math.isfinite(value) and 0.01 <= abs(value) < 99.5
    return f"{value:#.2g}".rstrip(".") if plain else f"{value:.1e}"


def _level_of(backend: Any) -> str:
    from agent.summary import level_of_theory

    return level_of_theory(backend)


def _molecule_stage(evaluations: list[Any], cfg: CampaignConfig, names: dict[int, tuple[str, str]],
                    cif_text: bool) -> list[dict[str, Any]]:
    best: dict[int, tuple[int, Any]] = {}
    fidelity = {b.name: f for f, b in enumerate(cfg.backends)}
    for ev in evaluations:
        if ev.structure_id is not None or ev.backend not in fidelity or not ev.ok:
            continue
        if LANDSCAPE_KEY not in ev.values:
            continue
        f = fidelity[ev.backend]
        if ev.molecule_id not in best or f >= best[ev.molecule_id][0]:
            best[ev.molecule_id] = (f, ev)
    out = []
    for mid, (f, ev) in best.items():
        structures = []
        for s in ev.extra.get("structures") or []:
            if s.get("mobility_hole_cm2Vs") is None or s.get("energy_kjmol") is None:
                continue
            row = {k: s.get(k) for k in ("id", "energy_kjmol", "mobility_hole_cm2Vs", "density_gcm3",
                                         "space_group", "z", "transport_model", "mobility_hole_marcus_cm2Vs")}
            row["cif"] = None
            if cif_text and s.get("cif"):
                row["cif_text"] = s["cif"]
            structures.append(row)
        name, smiles = names.get(mid, ("", ""))
        lam = ev.values.get("reorg_energy_kjmol")
        cov = _molecule_coverage(ev, len(structures))
        out.append({"molecule_id": int(mid), "name": name, "smiles": smiles, "source": "molecule stage",
                    "backend": ev.backend, "level": _level_with_coverage(cfg.backends[f], cov),
                    "level_base": _level_of(cfg.backends[f]),  # the level's own text, said once by status
                    "lambda_hole_kjmol": float(lam) if lam is not None else None,
                    "lambda_level": ("given in the config" if "lambda_hole_kjmol" in cfg.backends[f].params
                                     else LAMBDA_LEVEL),
                    "csp_level": ev.extra.get("csp_level"),
                    "csp_charges": ev.extra.get("csp_charges"),  # the charge method's key
                    "mean": float(ev.values[LANDSCAPE_KEY]),
                    "sd": float(ev.values.get("landscape_mobility_hole_sd_cm2Vs", float("nan"))),
                    "sd_energy": ev.extra.get("sd_energy",
                                              ev.values.get("landscape_mobility_hole_sd_cm2Vs", float("nan"))),
                    "sd_covers": ev.extra.get("sd_covers") or SD_ENERGY_ONLY, **cov,
                    "structures": structures,
                    # (structures out of the Marcus hopping regime, structures): the best line's warning
                    "regime_violations": regime_count(s.get("warnings") for s in ev.extra.get("structures") or []),
                    "warnings": [*hole_warnings(s.get("warnings") for s in ev.extra.get("structures") or []),
                                 *(f"CSP: {w}" for w in ev.extra.get("csp_warnings") or [])],
                    "notes": hole_notes(s.get("notes") for s in ev.extra.get("structures") or [])})
    return out


def _molecule_coverage(ev: Any, n_listed: int) -> dict[str, Any]:
    """The window coverage of a molecule-stage landscape result (module docstring):
    ``n_computed``, ``n_with_mobility``, ``n_in_window`` and ``n_minima_in_window`` (the
    window's structures, None when the result does not record them: the shipped data set's
    replays) and ``uncomputed_weight`` (None when not recorded, 0 when every structure of
    the window has a mobility)."""
    k = int(ev.values.get("n_structures_in_window", n_listed))
    m = ev.extra.get("n_minima_in_window")
    w_u = ev.extra.get("uncomputed_weight")
    if w_u is None and m is not None and k >= int(m):
        w_u = 0.0  # the whole window computed: nothing left out
    return {"n_computed": len(ev.extra.get("structures") or []) or k, "n_with_mobility": k,
            "n_in_window": None if m is None else int(m), "n_minima_in_window": m,
            "uncomputed_weight": None if w_u is None else float(w_u)}


def _esf_params(backend: Any) -> dict[str, Any]:
    """A configured backend's params over its class defaults (a replay's: those of the level
    it replays, ``estimated_as``); {} for an unknown backend."""
    from sim_backends.registry import UnknownBackendError, backend_class

    try:
        cls = backend_class(backend.name)
    except UnknownBackendError:
        return {}
    defaults = getattr(cls, "_DEFAULTS", None) or {}
    est = getattr(cls, "estimated_as", "")
    if not defaults and est:
        defaults = getattr(backend_class(est), "_DEFAULTS", None) or {}
    return {**defaults, **dict(backend.params)}


def _level_with_coverage(backend: Any, coverage: dict[str, Any]) -> str:
    """The level of theory of an ESF level with its Boltzmann-mean clause said for one result
    (:func:`sim_backends.esf.boltzmann_mean_text`: which of the window's structures the mean
    is over and their share of its weight) in place of the level's own."""
    from sim_backends.esf import boltzmann_mean_text

    level, p = _level_of(backend), _esf_params(backend)
    if "window_kjmol" not in p or "n_structures" not in p:
        return level
    own = boltzmann_mean_text(float(p["window_kjmol"]), int(p["n_structures"]))
    return level.replace(own, boltzmann_mean_text(float(p["window_kjmol"]), int(p["n_structures"]), coverage))


def _structure_stage(store: Store, cfg: CampaignConfig, directory: Path | None,
                     names: dict[int, tuple[str, str]],
                     molecule_records: list[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    if not cfg.structures.enabled:
        return []
    from agent.stages.properties import is_property_level
    from agent.stages.structure import level_value_keys

    levels = cfg.structures.level_configs()
    keys = level_value_keys(cfg.structures)
    props = {lv.name: (lv, k) for lv, k in zip(levels, keys, strict=True) if is_property_level(lv.name)}
    energy = [(lv, k) for lv, k in zip(levels, keys, strict=True) if not is_property_level(lv.name)]
    if not props or not energy:
        return []
    rank_level, rank_key = energy[0]
    latest: dict[tuple[int, str], dict[str, Any]] = {}
    for e in store.events("landscape_property"):
        if e.get("level") in props:
            latest[(int(e["molecule_id"]), e["level"])] = e
    if not latest:
        return []
    energies: dict[str, float] = {}
    rank_failed: set[str] = set()
    prop_values: dict[str, dict[str, float]] = {name: {} for name in props}
    prop_warnings: dict[tuple[int, str], list[Any]] = {}
    prop_notes: dict[tuple[int, str], list[Any]] = {}
    evaluations = store.evaluations()
    models: dict[str, dict[str, Any]] = {}  # structure id -> transport_model (and the hopping value)
    for ev in evaluations:
        if ev.structure_id is not None and ev.backend == rank_level.name and not ev.ok \
                and ev.structure_id not in energies:
            rank_failed.add(ev.structure_id)
        if ev.structure_id is None or not ev.ok:
            continue
        if ev.backend == rank_level.name and rank_key in ev.values:
            energies[ev.structure_id] = float(ev.values[rank_key])
            rank_failed.discard(ev.structure_id)
        elif ev.backend in props and props[ev.backend][1] in ev.values:
            prop_values[ev.backend][ev.structure_id] = float(ev.values[props[ev.backend][1]])
            hole = (ev.extra.get("mobility") or {}).get("hole") or {}
            models[ev.structure_id] = _model_of(hole.get("model"), (hole.get("exact") or {}).get("iso"))
            prop_warnings.setdefault((int(ev.molecule_id), ev.backend), []).append(ev.extra.get("warnings"))
            prop_notes.setdefault((int(ev.molecule_id), ev.backend), []).append(ev.extra.get("notes"))
    # values the molecule stage computed on the same structures (agent/stages/properties.py)
    from agent.stages.properties import reused_values

    reused: dict[tuple[int, str], dict[str, str]] = {}  # (molecule, level) -> structure id -> source
    for (mid, level), event in latest.items():
        if "n_reused" not in event:
            continue  # logged before reuse: its mean was taken over computed values only
        for sid, rec in reused_values(store, cfg, props[level][0], mid, evaluations).items():
            if sid not in prop_values[level]:
                reused.setdefault((mid, level), {})[sid] = rec["source"]
                prop_values[level][sid] = rec["value"]
                models[sid] = _model_of(rec.get("transport_model"), rec.get("marcus"))
                prop_warnings.setdefault((mid, level), []).append(rec["warnings"])
                prop_notes.setdefault((mid, level), []).append(rec["notes"])
    rows = {r["id"]: r for r in store.structures()}
    windows = _window_energies(store, cfg, energies, rank_failed)
    spread_elsewhere = {r["molecule_id"]: r for r in molecule_records}
    out = []
    for (mid, level), e in sorted(latest.items()):
        win = windows.get(mid) or {"energies": {}, "std": {}, "kept": 0, "stored": 0, "beyond": set(), "model": None}
        ranked = dict(win["energies"])  # computed or predicted ranking-level energy of the window's structures
        std = dict(win["std"])
        # the predicted energies the event's mean used (a reused mobility on a structure without a
        # computed energy); an event logged before them averaged computed energies only
        with_predicted = "n_predicted" in e
        for sid, (pe, psd) in (e.get("predicted_kjmol") or {}).items() if with_predicted else ():
            if sid not in energies and sid in rows and sid not in rank_failed:
                ranked[sid], std[sid] = float(pe), float(psd)
        structures = []
        for sid, mu in prop_values[level].items():
            r = rows.get(sid)
            if r is None or int(r["molecule_id"]) != mid:
                continue
            if sid in energies:
                energy, predicted = energies[sid], False
            elif with_predicted and sid in ranked and sid not in win["beyond"]:
                energy, predicted = ranked[sid], True
            else:
                continue
            cif = (directory / "structures" / f"{sid}.cif").absolute() if directory is not None else None
            structures.append({"id": sid, "energy_kjmol": energy, "mobility_hole_cm2Vs": mu,
                               "density_gcm3": r["density_gcm3"], "space_group": r["space_group"], "z": r["z"],
                               "cif": str(cif) if cif is not None else None,
                               **models.get(sid, {}),
                               "reused_from": (reused.get((mid, level)) or {}).get(sid),
                               "energy_predicted": predicted,
                               "energy_sd_kjmol": std.get(sid) if predicted else 0.0,
                               # the saved ranking's own sd, the one the structures' table and CIF give
                               "prediction_sd_kjmol": win["std"].get(sid) if predicted else None})
        name, smiles = names.get(mid, ("", ""))
        rec = {"molecule_id": mid, "name": name, "smiles": smiles, "source": "structure stage",
               "backend": level, "level": f"{_level_of(props[level][0])}; energies {_level_of(rank_level)}",
               "mean": float(e["mean"]), "sd": float(e["sd"]), "n_in_window": int(e["n_in_window"]),
               "structures": structures, "warnings": hole_warnings(prop_warnings.get((mid, level), [])),
               "notes": hole_notes(prop_notes.get((mid, level), [])),
               "n_reused": sum(1 for x in structures if x.get("reused_from")),
               "reused_from": sorted({x["reused_from"].split(" evaluation")[0] for x in structures
                                      if x.get("reused_from")}),
               "ranking_model": win["model"], "window_kjmol": cfg.structures.window_kjmol,
               "energy_level": _level_of(rank_level)}
        # the structures the landscape mean is over: a mobility and a computed or (since
        # n_predicted) predicted ranking energy
        mine = {x["id"]: x["mobility_hole_cm2Vs"] for x in structures}
        rec.update(window_coverage(ranked, mine, float(e["mean"]), float(e["sd"]),
                                   cfg.structures.window_kjmol, spread_elsewhere.get(mid),
                                   temperature_K=LANDSCAPE_TEMPERATURE_K))
        in_window = set()
        if ranked:
            e0 = min(ranked.values())
            in_window = {sid for sid, x in ranked.items() if x - e0 <= cfg.structures.window_kjmol}
        at_predicted = [x for x in structures if x["energy_predicted"] and x["id"] in in_window]
        rec["n_predicted"] = len(at_predicted)
        # every structure of the window, with a mobility or not (the map's ticks), and how its energy is known
        rec["window_structures"] = [{"id": sid, "energy_kjmol": ranked[sid], "mobility": sid in mine,
                                     "energy": ("computed" if sid in energies else
                                                "estimated" if sid in win["beyond"] else "predicted")}
                                    for sid in sorted(in_window, key=ranked.get)]
        rec["window_energies"] = {kind: sum(1 for x in rec["window_structures"] if x["energy"] == kind)
                                  for kind in ("computed", "predicted", "estimated")}
        _add_covers_clause(rec, _energy_sd_clause(e, rank_level))
        if at_predicted:
            top = max(x["energy_sd_kjmol"] or 0.0 for x in at_predicted)
            _add_covers_clause(rec, f"the energy ranking's part includes the predicted energies of the "
                                    f"{len(at_predicted)} structures with a mobility but no computed energy "
                                    f"({_prediction(rec)}, sd up to {top:.1f} kJ/mol per molecule)")
        if win["stored"] > win["kept"]:  # the stage kept the lowest max_structures of the CSP's minima
            rec["window_cut"] = _window_cut(win, ranked, std, in_window, cfg.structures.window_kjmol)
            if (edge := _cut_edge_warning(rec["window_cut"], cfg.structures.window_kjmol)) is not None:
                rec["warnings"] = [*rec["warnings"], edge]
        kept_ranked = {sid: x for sid, x in ranked.items() if sid not in win["beyond"]}
        if kept_ranked:  # the landscape's lowest structure at the ranking level, computed or predicted
            lowest = min(kept_ranked, key=kept_ranked.get)
            rec["ranked_minimum"] = {"id": lowest, "energy_kjmol": kept_ranked[lowest],
                                     "computed": lowest in energies}
        out.append(rec)
    return out


def _window_cut(win: dict[str, Any], ranked: dict[str, float], std: dict[str, float], in_window: set[str],
                window_kjmol: float) -> dict[str, Any]:
    """A structure-stage record's ``window_cut`` when the stage kept fewer structures than
    the CSP stored (:func:`_window_energies`): ``kept``, ``stored``, ``beyond_in_window`` (of
    the structures beyond the kept ones, how many the estimate places in the window),
    ``nearest_beyond_kjmol`` (the lowest of them at that estimate, force field plus the mean
    computed correction, kJ/mol per molecule above the window's lowest; None without one) and
    ``last_kept`` (the kept structure at the cut, the highest at the force field: ``id``,
    ``rel_kjmol`` at the ranking level, ``sd_kjmol``, 0 where computed; None when it is not
    ranked)."""
    e0 = min(ranked.values())
    far = [ranked[sid] - e0 for sid in win["beyond"] if sid in ranked]
    last = win.get("last_kept")
    return {"kept": win["kept"], "stored": win["stored"], "beyond_in_window": len(in_window & win["beyond"]),
            "nearest_beyond_kjmol": min(far) if far else None,
            "last_kept": ({"id": last, "rel_kjmol": ranked[last] - e0, "sd_kjmol": float(std.get(last, 0.0))}
                          if last in ranked else None)}


def _cut_edge_warning(cut: dict[str, Any], window_kjmol: float) -> str | None:
    """A warning when none of the structures beyond the kept ones is estimated in the
    window but the kept structure at the cut lies within its energy's 1 sd of the window
    (or inside it): the structures beyond it, estimated with a constant correction only,
    may belong in the window; else None."""
    last = cut.get("last_kept")
    if cut["beyond_in_window"] or not last or last["rel_kjmol"] - last["sd_kjmol"] > window_kjmol:
        return None
    sd = f" ± {last['sd_kjmol']:.1f}" if last["sd_kjmol"] > 0 else ""
    return (f"the window's edge is at the stage's cut: the highest kept structure at the force field, "
            f"{last['id']}, lies at {last['rel_kjmol']:.1f}{sd} kJ/mol per molecule above the lowest, within 1 sd "
            f"of the {window_kjmol:g} kJ/mol window, so the {cut['stored'] - cut['kept']} structures beyond it "
            "(estimated at force field plus the mean computed correction only) may belong in the window; "
            "raise [structures] max_structures")


def _add_covers_clause(rec: dict[str, Any], clause: str) -> None:
    """Add ``clause`` to the record's ``sd_covers``, before its closing
    :data:`~sim_backends.mobility.SD_NOT_INCLUDED` (or the shorter "J and lambda errors not
    included" of results stored before it)."""
    from sim_backends.mobility import SD_NOT_INCLUDED

    covers = rec.get("sd_covers") or SD_ENERGY_ONLY
    for tail in (f"; {SD_NOT_INCLUDED}", "; J and lambda errors not included"):
        if tail in covers:
            rec["sd_covers"] = covers.replace(tail, f"; {clause}{tail}", 1)
            return
    rec["sd_covers"] = f"{covers}; {clause}"


def _energy_sd_clause(event: dict[str, Any], rank_level: Any) -> str:
    """What the sd of a computed ranking-level energy in a structure-stage landscape property
    is (:meth:`agent.stages.properties.PropertyLevel.event`): the ranking level's own
    relative-energy error and the structure surrogate's leave-one-out error in quadrature, or
    the latter only, the level treated as exact, where its error is not measured (and in an
    event logged before it was included)."""
    from agent.stages.structure import ranking_level_sd

    sd = event.get("energy_sd_kjmol")
    own = float(event.get("ranking_sd_kjmol") or 0.0)
    head = "the energy ranking's sd per computed energy is"
    if sd is None:  # logged before the level's own error was included
        return f"{head} the structure surrogate's leave-one-out error only, the ranking level treated as exact"
    loo = math.sqrt(max(float(sd) ** 2 - own ** 2, 0.0))
    if own > 0:
        source = ranking_level_sd(rank_level)[1] or "as measured"
        return (f"{head} {float(sd):.1f} kJ/mol per molecule: the ranking level's own relative-energy error "
                f"{own:.1f} ({source}) and the structure surrogate's leave-one-out error {loo:.2f}, in quadrature")
    return (f"{head} the structure surrogate's leave-one-out error only ({loo:.2f} kJ/mol per molecule): the "
            "ranking level's own error is not measured, it is treated as exact")


def _prediction(rec: dict[str, Any]) -> str:
    """What predicted a structure-stage record's uncomputed energies: ``"Delta-GP
    prediction"``, ``"constant-shift prediction"`` (the saved ranking's ``ranking_model``),
    else the structure surrogate's."""
    model = rec.get("ranking_model")
    return f"{model} prediction" if model else "structure surrogate's prediction"


def _window_energies(store: Store, cfg: CampaignConfig, computed: dict[str, float],
                     failed: set[str]) -> dict[int, dict[str, Any]]:
    """Per molecule, the structure stage's energy window as a CSP practitioner counts it:
    every structure the CSP stored, not only the lowest ``[structures] max_structures`` the
    stage kept (:meth:`agent.stages.structure.StructureStage.load_landscape`). ``energies``:
    each structure's energy at the ranking level: computed, else the prediction the stage
    ranks by (the saved ranking of :func:`agent.summary.save_structure_results`: Delta-GP or
    constant shift), else, with no saved ranking, the force field plus the mean computed
    correction (the constant shift); the structures beyond the kept ones (``beyond``), which
    the stage never ranks, at the force field plus that mean correction; structures failed
    at the level are left out (they are not ranked). ``std``: the saved ranking's 1-sigma of
    each predicted energy (0 where computed), ``kept`` and ``stored``: how many structures
    the stage kept of those stored, ``last_kept``: the id of the highest kept structure at
    the force field (the cut), ``model``: the saved ranking's ``ranking_model``. A
    molecule without a computed energy is left out."""
    import json

    from agent.summary import RANKING, STRUCTURE_RESULTS_META

    raw = store.get_meta(STRUCTURE_RESULTS_META)
    saved = {int(r["molecule_id"]): r for r in (json.loads(raw)["landscapes"] if raw else [])}
    by_mol: dict[int, list[Any]] = {}
    for r in store.structures():  # ordered by energy, as the stage reads them
        by_mol.setdefault(int(r["molecule_id"]), []).append(r)
    out: dict[int, dict[str, Any]] = {}
    n_kept = cfg.structures.max_structures
    for mid, rows in by_mol.items():
        kept, beyond = rows[:n_kept], rows[n_kept:]
        shifts = [computed[r["id"]] - r["energy_kjmol"] for r in kept if r["id"] in computed]
        if not shifts:
            continue
        shift = sum(shifts) / len(shifts)
        mine: dict[str, float] = {}
        std: dict[str, float] = {}
        for sid, e, sd, *_ in (saved.get(mid) or {}).get(RANKING) or []:
            if e is not None and sid not in failed:
                mine[sid] = float(e)
                std[sid] = float(sd or 0.0)
        if not mine:
            mine = {r["id"]: r["energy_kjmol"] + shift for r in kept if r["id"] not in failed}
        ids = {r["id"] for r in rows}
        for sid, e in computed.items():  # computed since it was saved
            if sid in ids:
                mine[sid], std[sid] = e, 0.0
        far = {r["id"]: r["energy_kjmol"] + shift for r in beyond if r["id"] not in failed and r["id"] not in mine}
        out[mid] = {"energies": {**mine, **far}, "std": std, "kept": len(kept), "stored": len(rows),
                    "beyond": set(far), "model": (saved.get(mid) or {}).get("ranking_model"),
                    "last_kept": kept[-1]["id"]}
    return out


def hole_warnings(per_structure: Any) -> list[str]:
    """The distinct hole-carrier warnings (a coupling not well defined,
    :attr:`sim_backends.transfer.CrystalTransfer.warnings`) over a landscape's structures
    (an iterable of warning lists or None), each with how many structures carry it."""
    return _hole_lines(per_structure)


def hole_notes(per_structure: Any) -> list[str]:
    """The distinct hole-carrier INFO notes (e.g. a degenerate HOMO manifold and its size,
    :attr:`sim_backends.transfer.CrystalTransfer.notes`) over a landscape's structures,
    each with how many structures carry it."""
    return _hole_lines(per_structure)


def _hole_lines(per_structure: Any) -> list[str]:
    """Each distinct line once with its count of structures; the hopping-regime warnings
    (:func:`sim_backends.mobility.hopping_regime_warning`, one ratio per structure) as one
    line with the largest ratio."""
    from sim_backends.mobility import split_regime_warning

    counts: dict[str, int] = {}
    worst: dict[str, float] = {}
    n = 0
    for ws in per_structure:
        n += 1
        mine: dict[str, float | None] = {}
        for w in ws or []:
            if str(w).startswith("hole"):
                key, ratio = split_regime_warning(str(w))
                if ratio is None or mine.get(key) is None or ratio > mine[key]:
                    mine[key] = ratio if ratio is not None else mine.get(key)
        for key, ratio in mine.items():
            counts[key] = counts.get(key, 0) + 1
            if ratio is not None:
                worst[key] = max(ratio, worst.get(key, ratio))
    return [f"{w} ({f'2|J|max/lambda up to {worst[w]:.2f}; ' if w in worst else ''}{k} of {n} structures)"
            for w, k in sorted(counts.items())]


def regime_count(per_structure: Any) -> tuple[int, int]:
    """``(structures with a hopping-regime warning, structures)`` over a landscape's
    structures (an iterable of warning lists or None), counted as :func:`hole_warnings`
    counts them."""
    from sim_backends.mobility import split_regime_warning

    k = n = 0
    for ws in per_structure:
        n += 1
        k += any(str(w).startswith("hole") and split_regime_warning(str(w))[1] is not None for w in ws or [])
    return k, n


def regime_violation(results: list[dict[str, Any]], smiles: str | None, backend: str) -> str | None:
    """``"Marcus hopping regime violated (2|J| > lambda) in 6 of 6 structures"``: the
    hopping-regime count (:func:`regime_count`) of the molecule-stage record of ``smiles``
    at ``backend`` (the structures its landscape mobility is over); None when none of its
    structures is out of the regime."""
    rec = next((r for r in results if r["smiles"] == smiles and r["source"] == "molecule stage"
                and r["backend"] == backend), None)
    k, n = (rec or {}).get("regime_violations") or (0, 0)
    return f"Marcus hopping regime violated (2|J| > lambda) in {k} of {n} structures" if k else None


def esf_results(store: Store, cfg: CampaignConfig, directory: Path | None = None,
                *, cif_text: bool = False) -> list[dict[str, Any]]:
    """The campaign's ESF results (module docstring), best landscape mobility first, the
    molecules a constraint excludes (``infeasible``: the reason, else None) after the
    others; a molecule-stage global minimum's ``cif`` is its file path once :func:`write_esf_cifs`
    wrote it (``cif_text``: every molecule-stage structure keeps its CIF text as
    ``cif_text``, for writing)."""
    names = {int(m["id"]): (m["name"] or m["smiles"], m["smiles"]) for m in store.molecules()}
    evaluations = store.evaluations()
    molecule = _molecule_stage(evaluations, cfg, names, cif_text)
    out = propagate_lambda_warnings(molecule + _structure_stage(store, cfg, directory, names, molecule))
    lam = {r["molecule_id"]: r for r in molecule if r.get("lambda_hole_kjmol") is not None}
    for rec in out:  # the structure stage's mobility level takes lambda+ from the molecule stage
        if rec.get("lambda_hole_kjmol") is None and rec["molecule_id"] in lam:
            rec["lambda_hole_kjmol"] = lam[rec["molecule_id"]]["lambda_hole_kjmol"]
            rec["lambda_level"] = lam[rec["molecule_id"]]["lambda_level"]
    for rec in out:
        s = rec["structures"]
        if s:  # relative to the lowest of the window (a structure stage's may have no mobility) or listed
            e0 = min(x["energy_kjmol"] for x in (*s, *rec.get("window_structures", ())))
            for x in (*s, *rec.get("window_structures", ())):
                x["rel_kjmol"] = x["energy_kjmol"] - e0
            s.sort(key=lambda x: x["energy_kjmol"])
        rec["global_minimum"] = s[0] if s else None
        p = esf_cif_path(directory, rec) if directory is not None else None
        if p is not None and p.is_file():
            rec["global_minimum"]["cif"] = str(p.absolute())
    from agent.constraints import infeasible_molecules

    infeasible = infeasible_molecules(evaluations, cfg.constraints)
    for rec in out:
        rec["infeasible"] = infeasible.get(rec["molecule_id"])
    out.sort(key=lambda r: (r["infeasible"] is not None, -r["mean"], r["source"], r["molecule_id"]))
    return out


def propagate_lambda_warnings(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The structure stage's mobility level takes lambda+ from the molecule stage (its
    ``reorg_energy_kjmol``), so a molecule-stage record warning that its GFN2-xTB lambda+
    misses a Jahn-Teller relaxation (:data:`sim_backends.esf.JAHN_TELLER_LAMBDA_WARNING`)
    applies to the same molecule's structure-stage record when that one has a degenerate
    hole manifold too; it gets the warning (once). Returns ``records`` (changed in place)."""
    from sim_backends.esf import JAHN_TELLER_LAMBDA_WARNING as jt
    from sim_backends.esf import JAHN_TELLER_PREFIX as prefix

    flagged = {r["molecule_id"] for r in records if r["source"] == "molecule stage"
               and any(str(w).startswith(prefix) for w in r.get("warnings") or [])}
    for r in records:
        if (r["source"] == "structure stage" and r["molecule_id"] in flagged
                and any("degenerate frontier manifold" in str(n) for n in r.get("notes") or [])
                and not any(str(w).startswith(prefix) for w in r.get("warnings") or [])):
            r["warnings"] = [*(r.get("warnings") or []), f"{jt} (lambda+ of the molecule stage)"]
    return records


def esf_cif_path(directory: Path, rec: dict[str, Any]) -> Path | None:
    """Where :func:`write_esf_cifs` puts a molecule-stage record's global minimum."""
    gm = rec.get("global_minimum")
    if gm is None or rec["source"] != "molecule stage":
        return None
    return Path(directory) / "structures" / f"esf_m{rec['molecule_id']}_{gm['id']}.cif"


def _symmetrised_cif(rec: dict[str, Any], gm: dict[str, Any]) -> str:
    """The CIF a crystallographer opens (:meth:`~sim_backends.landscape.LandscapeEntry.output_cif`:
    symmetrised, in its output cell, the molecule's formula, Z in molecules, the CSP force-field
    lattice energy) of a molecule-stage global minimum stored as its P1 cell; the P1 text
    with a comment saying why when that cannot be written."""
    from sim_backends.csp.landscape import ff_level
    from sim_backends.esf import CHARGE_LABELS, csp_level
    from sim_backends.landscape import LandscapeEntry

    # the level under the name the structure stage's CIF of the same structure gives it (newuser42 #11),
    # from the charge method's key; a record stored before it kept the key, by its label
    level = rec.get("csp_level")
    if rec.get("csp_charges"):
        level = ff_level(str(rec["csp_charges"]))
    else:
        level = next((ff_level(k) for k in CHARGE_LABELS if csp_level(k) == level), level)
    try:
        entry = LandscapeEntry.from_dict({**gm, "cif": gm["cif_text"]})
        return entry.output_cif(smiles=rec.get("smiles") or "", name=rec.get("name") or "", level_of_theory=level)
    except (ValueError, KeyError) as exc:
        return f"# P1 cell as computed; no symmetrised CIF: {' '.join(str(exc).split())[:200]}\n" + gm["cif_text"]


def write_esf_cifs(directory: Path, results: list[dict[str, Any]]) -> list[Path]:
    """Write each molecule-stage landscape's global minimum as a CIF (results of
    :func:`esf_results` with ``cif_text``); its ``cif`` becomes the file path, its ``z`` the
    written cell's (a record stored before landscapes kept their output cells has the search
    cell's) and the texts are dropped from the records. A molecule's CIF of an earlier
    global minimum (``esf_m<id>_<other structure>.cif``) is removed when its current one is
    written, so the folder holds one per molecule."""
    from sim_backends.csp.landscape import cif_formula_units

    paths = []
    for rec in results:
        p = esf_cif_path(directory, rec)
        gm = rec.get("global_minimum")
        if p is not None and gm and gm.get("cif_text"):
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(_symmetrised_cif(rec, gm))
            for old in p.parent.glob(f"esf_m{rec['molecule_id']}_*.cif"):
                if old.name != p.name:
                    old.unlink(missing_ok=True)
            gm["cif"] = str(p.absolute())
            gm["z"] = cif_formula_units(p, gm.get("z"))
            paths.append(p)
        for x in rec["structures"]:
            x.pop("cif_text", None)
    return paths


def window_share(rec: dict[str, Any]) -> tuple[int, int, int | None, float | None]:
    """``(computed, with a mobility, in window, share)`` of an ESF record: the structures its
    level computed (a molecule-stage level's lowest ``n_structures``), of them with a
    mobility (the mean is over these), the structures in its window (None when the result
    does not record it: the shipped data set's replays) and the share of the window's
    Boltzmann weight on those with a mobility (``1 - uncomputed_weight``; None when not
    recorded). Reads records of :func:`esf_results` and the older ones whose molecule-stage
    ``n_in_window`` counted the structures with a mobility."""
    listed = len(rec.get("structures") or [])
    w_u = rec.get("uncomputed_weight")
    share = None if w_u is None else 1.0 - float(w_u)
    if rec.get("source") != "molecule stage":
        n = rec.get("n_in_window")
        k = rec.get("n_with_mobility", n)
        return k, k, n, share
    k = int(rec["n_with_mobility"] if rec.get("n_with_mobility") is not None else rec.get("n_in_window", listed))
    m = rec.get("n_minima_in_window")
    return int(rec.get("n_computed") or max(k, listed)), k, None if m is None else int(m), share


def share_text(share: float | None) -> str:
    """``"52% of the Boltzmann weight"`` (:func:`window_share`), or that it was not recorded."""
    from sim_backends.esf import weight_share_text

    return "share of the Boltzmann weight not recorded" if share is None else \
        f"{weight_share_text(share)} of the Boltzmann weight"


def coverage_text(k: int, n: int, share: float | None, about: str = "") -> str:
    """``mobility for 3 of 18 structures in window, 65% of the Boltzmann weight``: a landscape
    mobility over part of its window (``about`` follows the count, e.g. what was reused)."""
    return f"mobility for {k} of {n} structures in window{about}, {share_text(share)}"


def _window_text(rec: dict[str, Any]) -> str:
    """Which of the window's structures a landscape mobility is over (:func:`window_share`).
    Molecule stage: ``6 structures in window``; when a level's ``n_structures`` cap kept fewer
    than the window holds, ``the lowest 6 of 31 structures in window, 52% of the Boltzmann
    weight``; for a result that did not record its window, ``the lowest 6 structures in
    window, share of the window not recorded``. Structure stage, over part of its window:
    ``mobility for 3 of 18 structures in window, 65% of the Boltzmann weight``
    (:func:`window_coverage`), then how the window's energies are known
    (:func:`_window_energies_text`) and the stage's cut (:func:`_cut_text`)."""
    a, k, n, share = window_share(rec)
    if rec.get("source") != "molecule stage":
        return _window_core(rec, k, n, share) + _window_energies_text(rec) + _cut_text(rec)
    failed = f", {k} with a mobility" if k < a else ""
    if n is None:
        return f"the lowest {a} structures in window{failed}, share of the window not recorded"
    if a < n:
        return f"the lowest {a} of {n} structures in window{failed}, {share_text(share)}"
    return f"{n} structures in window{failed}" + (f", {share_text(share)}" if k < n else "")


def _window_core(rec: dict[str, Any], k: int | None, n: int | None, share: float | None) -> str:
    """A structure-stage record's window: how many of its structures have a mobility and their
    share, and how many came from the molecule stage or have a predicted energy only."""
    about = []
    if rec.get("n_reused"):
        about.append(f"{rec['n_reused']} of them from the molecule stage's "
                     f"{', '.join(rec.get('reused_from') or [])} on the same structures")
    if rec.get("n_predicted"):
        about.append(f"{rec['n_predicted']} of them with a predicted energy only "
                     f"({_prediction(rec)}), not computed at the ranking level")
    reused = f" ({'; '.join(about)})" if about else ""
    if k is not None and k < n:  # the covered share said as the molecule stage says it (newuser45c #3)
        return (coverage_text(k, n, share, reused) if share is not None
                else f"mobility for {k} of {n} structures in window{reused}")
    return f"{n} structures in window{reused}"


def _window_energies_text(rec: dict[str, Any], cut_below: bool = False) -> str:
    """``; the window's energies: 7 computed, 12 predicted (Delta-GP prediction)``: how the
    ranking-level energies of a structure-stage window are known (``window_energies``; the
    structures beyond the stage's cut estimated at force field plus the mean computed
    correction, or, with ``cut_below``, "(below)": the cut's own line says so); '' when all are
    computed or the record does not say."""
    c = rec.get("window_energies") or {}
    if not c.get("predicted") and not c.get("estimated"):
        return ""
    parts = [f"{c.get('computed', 0)} computed"]
    if c.get("predicted"):
        parts.append(f"{c['predicted']} predicted ({_prediction(rec)})")
    if c.get("estimated"):
        # how they are estimated is said once, on the cut's own line when there is one (newuser51 #2)
        parts.append(f"{c['estimated']} beyond the stage's cut" + (" (below)" if cut_below else
                                                                    " estimated at force field plus the mean computed correction"))
    return f"; the window's energies: {', '.join(parts)}"


def _cut_text(rec: dict[str, Any]) -> str:
    """``; the stage kept the lowest 10 of the CSP's 14 structures ([structures]
    max_structures): 4 of the window's are beyond them, ...`` when the structure stage kept
    fewer structures than the CSP stored (:func:`_window_energies`; the window counts them
    all), else ''. With none of them in the window it says that is an estimate (force field
    plus the mean computed correction) and how far above the lowest the nearest lies
    (:func:`_window_cut`); a cut near the window's edge is a WARNING (:func:`_cut_edge_warning`)."""
    cut = rec.get("window_cut")
    if not cut:
        return ""
    b = cut["beyond_in_window"]
    head = (f"; the stage kept the lowest {cut['kept']} of the CSP's {cut['stored']} structures "
            "([structures] max_structures)")
    if not b:
        near = cut.get("nearest_beyond_kjmol")
        return (head + ", none of the others estimated in the window (force field plus the mean computed "
                "correction" + (f"; the nearest at {near:.1f} kJ/mol per molecule above the lowest" if near is not None
                                else "") + ")")
    return (head + f": {b} of the window's are beyond them, placed at force field plus the mean computed "
            "correction, and get no energy or mobility unless max_structures is raised")


def _minimum_label(rec: dict[str, Any]) -> tuple[str, str]:
    """What the record's ``global_minimum`` (its lowest structure with a mobility) is, as
    (label, suffix) of its status line: the predicted global minimum (of the stage whose
    ranking it is: the molecule stage's CSP force field or the structure stage's level), or, when the
    landscape's lowest structure at the ranking level has no mobility (a structure-stage
    record), the lowest with one, and where the global minimum lies. A structure-stage
    minimum whose ranking-level energy is predicted, not computed (a reused mobility),
    says so."""
    gm, low = rec.get("global_minimum") or {}, rec.get("ranked_minimum")
    predicted = ""
    if gm.get("energy_predicted"):
        sd, alone = gm.get("energy_sd_kjmol"), gm.get("prediction_sd_kjmol")
        both = (f"; ± {alone:.1f} the prediction alone, as the structures' table gives it"
                if sd and alone is not None and abs(alone - sd) >= 0.05 else "")  # newuser51 #3: which ±
        predicted = (f"; its ranking-level energy is predicted ({_prediction(rec)}"
                     + (f", ± {sd:.1f} kJ/mol per molecule with the energy ranking's own sd{both}" if sd else "")
                     + "), not computed")
    if not low or low["id"] == gm.get("id"):  # which stage's ranking (newuser50 #11: two per molecule)
        # a leader whose ranking-level energy is not computed is no global minimum yet (newuser51 #1)
        what = "predicted leader" if gm.get("energy_predicted") else "predicted global minimum"
        return f"{what} ({rec.get('source') or 'molecule stage'})", predicted
    how = "computed" if low.get("computed") else "predicted"
    gap = gm.get("energy_kjmol", float("nan")) - low["energy_kjmol"]
    return ("lowest structure with a mobility",
            f"{predicted}; the global minimum {low['id']} ({how}, {gap:.2f} kJ/mol lower) has no mobility yet")


def esf_lines(results: list[dict[str, Any]]) -> list[str]:
    """Status lines: per molecule (best first, at most :data:`N_LISTED`), the landscape
    hole mobility with its sd, unit, level and window, then on lines of their own what the sd
    covers and, for a structure-stage record, how the window's energies are known and the stage's
    cut, and its predicted global minimum."""
    if not results:
        return []
    lines = [f"ESF           landscape hole mobility mu_h ({MOBILITY_UNIT}; Boltzmann mean ± 1 sd over the "
             "predicted structures of the energy window that have a mobility, averaged over their energies' "
             "uncertainty, so it differs from the Boltzmann mean at the listed energies; each line says how many "
             "of the window's structures that is), best first"
             + (", molecules a constraint excludes last" if any(r.get("infeasible") for r in results) else "")
             + ":"]
    from sim_backends.esf import CHARGE_LABELS, XTB_CHARGE_CAVEAT

    if any(CHARGE_LABELS["xtb"] in str(r.get("csp_level") or "") for r in results[:N_LISTED]):
        lines.append(f"  CAVEAT {XTB_CHARGE_CAVEAT}")
    if any(r.get("lambda_level") == LAMBDA_LEVEL for r in results[:N_LISTED]):
        lines.append(f"  CAVEAT {XTB_LAMBDA_CAVEAT}")
    if any(r.get("source") == "molecule stage" for r in results[:N_LISTED]):
        lines.append(f"  CAVEAT {FIXED_TRIALS_CAVEAT}")
    # each level's text once (newuser49 #6: repeated on every molecule's line, up to 1,590 characters);
    # a molecule's line names its level and says its own window share
    said = {r["backend"]: r.get("level_base") or r["level"] for r in results[:N_LISTED]}
    lines += [f"  LEVEL {backend}: {text}" for backend, text in said.items()]
    tlt = _tlt_common(results[:N_LISTED])  # its assumptions once (newuser50 #9: 8 times, ~350 characters each)
    if tlt:
        lines.append(f"  TLT {tlt[0]}{tlt[1]}; the Marcus hopping value is kept beside it")
    for rec in results[:N_LISTED]:
        log = f"log10 {math.log10(rec['mean']):.2f}" if rec["mean"] > 0 else "no coupling"
        covers = [f"± covers: {rec.get('sd_covers') or SD_ENERGY_ONLY}"] if rec["sd"] > 0 else []
        own = "" if said[rec["backend"]] == rec["level"] or rec.get("level_base") else f": {rec['level']}"
        if rec.get("source") == "molecule stage":
            window, more = _window_text(rec), []
        else:  # how the window's energies are known and the stage's cut on lines of their own (newuser50 #9)
            window = _window_core(rec, *window_share(rec)[1:])
            cut = _cut_text(rec)
            more = [t[2:] for t in (_window_energies_text(rec, cut_below=bool(cut)), cut) if t]
        lines.append(f"  {rec['name']}: mu_h = {format_mobility(rec['mean'], rec['sd'])} ({log}), "
                     f"{window}; {rec['source']} ({rec['backend']}){own}"
                     + (f"; {lambda_text(rec)}" if rec.get("lambda_hole_kjmol") is not None else ""))
        if rec.get("infeasible"):
            lines.append(f"    EXCLUDED {rec['infeasible']}")
        lines.extend(f"    {t}" for t in covers + more)
        gm = rec.get("global_minimum")
        if gm:
            cif = gm.get("cif")
            where = f"  {cif}" if cif and Path(cif).is_file() else ""
            dens = f", {gm['density_gcm3']:.3f} g/cm3" if gm.get("density_gcm3") is not None else ""
            if gm.get("energy_kjmol") is not None:  # and the level that ranked it (newuser49 #8)
                dens += (f", E_latt {gm['energy_kjmol']:.1f} kJ/mol per molecule "
                         + ("predicted for " if gm.get("energy_predicted") else "at ")  # newuser51 #3
                         + f"{rec.get('energy_level') or 'the CSP force field'}")
            label, suffix = _minimum_label(rec)
            lines.append(f"    {label} {gm['id']} ({gm.get('space_group') or '?'}, "
                         f"Z = {reported_z(gm)}{dens}): mu_h = {format_mobility(gm['mobility_hole_cm2Vs'])}"
                         + _model_text(gm) + suffix + where)
        lines.extend(f"    WARNING {w}" for w in rec.get("warnings") or [])
        lines.extend(f"    INFO {_tlt_short(w, tlt)}" for w in rec.get("notes") or [])
    if len(results) > N_LISTED:
        lines.append(f"  ({len(results) - N_LISTED} more in report/esf_results.csv)")
    return lines


def _tlt_parts(note: str) -> tuple[str, str, str] | None:
    """``(head, assumptions, rest)`` of a transient-localisation INFO note
    (:func:`sim_backends.mobility.transient_localisation_note`, with its structure count):
    ``"hole: 2|J| > lambda, ... (TLT)"``, ``", assumed thermal fluctuation ... phonons"`` and
    the sign clause with the count; None for any other note."""
    from sim_backends.mobility import TLT_NOTE_TEXT

    carrier, sep, body = str(note).partition(": ")
    if not sep or not body.startswith(TLT_NOTE_TEXT + ", "):
        return None
    assumptions, sep, rest = body[len(TLT_NOTE_TEXT):].partition("; ")
    kept = "; the Marcus hopping value is kept beside it"
    if not sep or kept not in rest:
        return None
    return f"{carrier}: {TLT_NOTE_TEXT}", assumptions, rest.replace(kept, "", 1)


def _tlt_common(records: list[dict[str, Any]]) -> tuple[str, str] | None:
    """``(head, assumptions)`` shared by every transient-localisation note of ``records``
    (one carrier, one set of TLT constants), said once above the molecules; None when there
    is none or they differ."""
    parts = {p[:2] for r in records for n in r.get("notes") or [] if (p := _tlt_parts(n))}
    return next(iter(parts)) if len(parts) == 1 else None


def _tlt_short(note: str, common: tuple[str, str] | None) -> str:
    """A molecule's INFO note with the shared TLT text replaced by a reference to its line:
    ``hole: TLT (above); signed couplings (3 of 6 structures)``."""
    parts = _tlt_parts(note)
    if common is None or parts is None or parts[:2] != common:
        return note
    return f"{note.partition(': ')[0]}: TLT (above); {parts[2]}"


def _model_of(model: Any, marcus: Any) -> dict[str, Any]:
    """``{"transport_model": TLT_NAME, "mobility_hole_marcus_cm2Vs": marcus}`` for a structure
    whose hole mobility is a transient-localisation value (its result's or record's model,
    :func:`sim_backends.mobility.crystal_mobility`), ``{"transport_model": MARCUS_NAME}`` for a
    hopping value (so its line says so, as a molecule-stage one does), else ``{}``."""
    from sim_backends.mobility import MARCUS_NAME
    from sim_backends.tlt import TLT_NAME

    if model == TLT_NAME:
        return {"transport_model": TLT_NAME, "mobility_hole_marcus_cm2Vs": marcus}
    return {"transport_model": MARCUS_NAME} if model == MARCUS_NAME else {}


def _model_text(structure: dict[str, Any]) -> str:
    """`` (transient localisation (TLT); Marcus hopping 2.4 cm2/(V s))`` for a structure whose
    mobility is a TLT value (outside hopping's regime, :mod:`sim_backends.tlt`); `` (Marcus
    hopping)`` for a hopping value (newuser49 #8: only the TLT ones said their model); empty
    for a record that does not say (made before TLT)."""
    from sim_backends.mobility import MARCUS_NAME
    from sim_backends.tlt import TLT_NAME

    if structure.get("transport_model") == MARCUS_NAME:
        return f" ({MARCUS_NAME})"
    if structure.get("transport_model") != TLT_NAME:
        return ""
    hop = structure.get("mobility_hole_marcus_cm2Vs")
    return f" ({TLT_NAME}" + (f"; Marcus hopping {format_mobility(hop)})" if hop is not None else ")")


def _esf_column(column: str, description: str, quantity: str = "", unit: str = "", level: str = "") -> dict[str, str]:
    return {"column": column, "quantity": quantity, "unit": unit, "level_of_theory": level,
            "description": description}


_MU, _ROW_LEVEL = "landscape hole mobility", "the row's level"
_STAGE_ONLY = "structure-stage rows only"
#: the columns of ``esf_results.csv`` (:func:`write_esf_table`), in order, described as
#: ``results_columns.csv`` describes those of ``results.csv`` (:func:`agent.report.results_columns`)
ESF_COLUMNS = [
    _esf_column("molecule_id", "the molecule's id in the store (the m<id> of file and metric names)"),
    _esf_column("name", "the molecule's name in the pool (its SMILES where it has none)"),
    _esf_column("smiles", "the molecule (SMILES)"),
    _esf_column("source", "'molecule stage' (an ESF level's landscape) or 'structure stage' (its mobility "
                "property level on the structure stage's ranking)"),
    _esf_column("backend", "the level (config name) the value comes from"),
    _esf_column("level", "level of theory of the mobilities and energies, and which of the window's structures "
                "the mean is over"),
    _esf_column("mobility_hole_cm2Vs", "Boltzmann mean over the window's structures with a mobility, averaged "
                "over their energies' uncertainty", _MU, MOBILITY_UNIT, _ROW_LEVEL),
    _esf_column("mobility_hole_sd_cm2Vs", "its 1-sigma; what it covers is in sd_covers", _MU, MOBILITY_UNIT,
                _ROW_LEVEL),
    _esf_column("sd_covers", "what the sd includes (energy ranking, structures of the window without a "
                "mobility, the energies' own errors) and what it does not (J, lambda and transport-model errors)"),
    _esf_column("n_in_window", "structures in the energy window (a structure stage's: over every structure the "
                "CSP stored); empty when the result did not record it"),
    _esf_column("n_with_mobility_in_window", "of them with a mobility (the mean is over these)"),
    _esf_column("boltzmann_weight_with_mobility", "the share of the window's Boltzmann weight (300 K) on the "
                "structures with a mobility; empty when not recorded", "Boltzmann weight share", "0-1"),
    _esf_column("n_structures", "structures listed with a mobility"),
    _esf_column("global_minimum_id", "the lowest structure with a mobility"),
    _esf_column("global_minimum_mobility_hole_cm2Vs", "its hole mobility", "hole mobility", MOBILITY_UNIT,
                _ROW_LEVEL),
    _esf_column("global_minimum_cif", "its CIF file, where written"),
    _esf_column("warnings", "hole-carrier warnings of the transfer integrals (with how many structures carry "
                "them), CSP and window warnings"),
    _esf_column("notes", "hole-carrier INFO notes (e.g. a degenerate HOMO manifold)"),
    _esf_column("infeasible", "why a constraint excludes the molecule (empty: feasible)"),
    _esf_column("lambda_hole_kjmol", "the hole reorganisation energy lambda+ the mobilities use",
                "hole reorganisation energy", "kJ/mol", "the row's lambda_level"),
    _esf_column("lambda_hole_ev", "lambda_hole_kjmol in eV", "hole reorganisation energy", "eV",
                "the row's lambda_level"),
    _esf_column("lambda_level", "where lambda+ comes from (its level, or given in the config)"),
    _esf_column("landscape_minimum_id", "the landscape's lowest structure at the ranking level (a structure "
                "stage's may have no mobility)"),
    _esf_column("n_with_mobility_at_predicted_energy_in_window", "of the window's structures with a mobility, "
                f"those whose ranking-level energy is predicted, not computed; {_STAGE_ONLY}"),
    _esf_column("n_energies_computed_in_window", f"of the window's structures, those with a computed "
                f"ranking-level energy; {_STAGE_ONLY}"),
    _esf_column("n_energies_predicted_in_window", "of the window's structures, those whose ranking-level "
                f"energy is the stage's prediction (Delta-GP or constant shift); {_STAGE_ONLY}"),
    _esf_column("n_energies_estimated_in_window", "of the window's structures, those beyond the stage's "
                f"max_structures cut, at force field plus the mean computed correction; {_STAGE_ONLY}"),
    _esf_column("n_structures_kept", "how many of the CSP's structures the structure stage kept "
                "([structures] max_structures); empty when it kept all"),
    _esf_column("n_structures_stored", "how many structures the CSP stored; empty when the stage kept all"),
    _esf_column("n_with_predicted_energy_in_window", "the old name of "
                "n_with_mobility_at_predicted_energy_in_window (the same value; it counts structures with a "
                "mobility only)"),
    _esf_column("global_minimum_transport_model", "the model of global_minimum_mobility_hole_cm2Vs: 'Marcus "
                "hopping', or 'transient localisation (TLT)' outside hopping's regime (2|J|max > lambda+); "
                "empty when the result does not say (records made before TLT: hopping)"),
    _esf_column("global_minimum_mobility_hole_marcus_cm2Vs", "the Marcus hopping value of the same structure "
                "when its reported one is TLT (empty otherwise, or when not recorded)", "hole mobility",
                MOBILITY_UNIT, "Marcus hopping on the row's transfer integrals"),
    _esf_column("n_structures_tlt", "of the structures listed with a mobility, those whose value is TLT"),
]


def write_esf_table(results: list[dict[str, Any]], path: Path) -> Path:
    """One row per molecule and source: the landscape mobility, its sd and what the sd
    covers, the structures in the window (``n_in_window``, empty when the result did not
    record it), how many of them have a mobility and their share of the window's Boltzmann
    weight (``boltzmann_weight_with_mobility``, 0-1, empty when not recorded:
    :func:`window_share`), the structures listed with a mobility (``n_structures``), level, the
    lowest structure with a mobility (``global_minimum_*``), lambda+ with its level, and the
    landscape's lowest structure at the ranking level (``landscape_minimum_id``; a
    structure-stage landscape's may have no mobility); for a structure-stage row, how many of
    the window's structures with a mobility have a predicted energy only
    (``n_with_mobility_at_predicted_energy_in_window``; the same under its old name
    ``n_with_predicted_energy_in_window``, last), how many of the window's energies are
    computed at the ranking level, predicted by the stage's ranking model, or estimated beyond
    the stage's cut (``n_energies_computed_in_window``, ``n_energies_predicted_in_window``,
    ``n_energies_estimated_in_window``), and, when the stage kept fewer structures than
    the CSP stored, how many it kept (``n_structures_kept``) of those stored
    (``n_structures_stored``) (``report/esf_results.csv``; :data:`ESF_COLUMNS` describes
    each column, as ``results_columns.csv`` does)."""
    import csv

    from sim_backends.tlt import TLT_NAME

    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([c["column"] for c in ESF_COLUMNS])
        for r in results:
            gm = r.get("global_minimum") or {}
            _, k, n, share = window_share(r)
            energies = r.get("window_energies") or {}
            n_predicted = r.get("n_predicted", "") if r["source"] != "molecule stage" else ""
            w.writerow([r["molecule_id"], r["name"], r["smiles"], r["source"], r["backend"], r["level"],
                        f"{r['mean']:.4g}", f"{r['sd']:.4g}", r.get("sd_covers") or SD_ENERGY_ONLY,
                        "" if n is None else n, k, "" if share is None else f"{share:.3f}", len(r["structures"]),
                        gm.get("id", ""), f"{gm['mobility_hole_cm2Vs']:.4g}" if gm else "",
                        gm.get("cif") or "", "; ".join(r.get("warnings") or []), "; ".join(r.get("notes") or []),
                        r.get("infeasible") or "",
                        *((f"{r['lambda_hole_kjmol']:.3f}", f"{r['lambda_hole_kjmol'] / KJMOL_PER_EV:.4f}",
                           r.get("lambda_level") or "") if r.get("lambda_hole_kjmol") is not None else ("", "", "")),
                        (r.get("ranked_minimum") or gm).get("id", ""), n_predicted,
                        *(energies.get(kind, "") for kind in ("computed", "predicted", "estimated")),
                        *((r["window_cut"]["kept"], r["window_cut"]["stored"]) if r.get("window_cut") else ("", "")),
                        n_predicted, gm.get("transport_model") or "",
                        "" if gm.get("mobility_hole_marcus_cm2Vs") is None
                        else f"{gm['mobility_hole_marcus_cm2Vs']:.4g}",
                        sum(x.get("transport_model") == TLT_NAME for x in r["structures"])])
    return path


def esf_map_figure(results: list[dict[str, Any]], plt: Any, window_kjmol: float | None = None,
                   title: str = "") -> Any | None:
    """The ESF maps (module docstring); None without any structure with a mobility."""
    import numpy as np

    from sim_backends.tlt import TLT_NAME

    recs = [r for r in results if r["structures"] and not r.get("infeasible")][:N_LISTED]
    if not recs:
        return None
    n = len(recs)
    ncol = min(n, 3)
    nrow = (n + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.9 * ncol + 1.0, 3.6 * nrow + 0.6), squeeze=False,
                             layout="constrained")
    dens_all = [s["density_gcm3"] for r in recs for s in r["structures"] if s.get("density_gcm3") is not None]
    vmin, vmax = (min(dens_all), max(dens_all)) if dens_all else (0.0, 1.0)
    # one mobility range for every panel, so the panels compare by eye (newuser46b #9)
    xs = [max(v, 1e-12) for r in recs for v in (r["mean"], *(x["mobility_hole_cm2Vs"] for x in r["structures"]))]
    lo, hi = min(xs), max(xs)
    mid = math.sqrt(lo * hi)
    span = max(hi / lo, 10.0) ** 0.5 * 1.3  # at least a decade, with a margin
    sc = None
    for k, rec in enumerate(recs):
        ax = axes[k // ncol][k % ncol]
        s = rec["structures"]
        mu = np.array([max(x["mobility_hole_cm2Vs"], 1e-12) for x in s])
        e = np.array([x["rel_kjmol"] for x in s])
        rho = np.array([x["density_gcm3"] if x.get("density_gcm3") is not None else np.nan for x in s])
        sc = ax.scatter(mu, e, c=rho, cmap="viridis", vmin=vmin, vmax=vmax, s=36, edgecolors="k", lw=0.4,
                        zorder=3)
        tlt = np.array([x.get("transport_model") == TLT_NAME for x in s], dtype=bool)
        if tlt.any():  # outside hopping's regime: a transient-localisation mobility (sim_backends/tlt.py)
            ax.scatter(mu[tlt], e[tlt], s=12, marker="x", color="k", lw=0.8, zorder=5,
                       label=f"TLT mobility (2|J| > lambda+): {int(tlt.sum())} of {len(s)}")
        guessed = np.array([bool(x.get("energy_predicted")) for x in s])
        if guessed.any():  # a structure-stage mobility at a predicted, not computed, energy
            ax.scatter(mu[guessed], e[guessed], s=90, facecolors="none", edgecolors="tab:red", lw=0.8,
                       linestyle="--", zorder=4, label="energy predicted, not computed")
        partial = _draw_window(ax, rec, e, window_kjmol)
        ax.axvline(rec["mean"], color="tab:red", lw=1.2,
                   label="mean of the computed ± 1 sd" if partial else "landscape mean ± 1 sd")
        if rec["sd"] > 0 and math.isfinite(rec["sd"]):
            ax.axvspan(max(rec["mean"] - rec["sd"], 1e-12), rec["mean"] + rec["sd"], color="tab:red", alpha=0.12)
        ax.set_xscale("log")
        ax.set_xlim(mid / span, mid * span)
        readable_log_ticks(ax.xaxis, mid / span, mid * span)
        ax.set_xlabel(f"hole mobility mu_h ({MOBILITY_UNIT})", fontsize=8)
        ax.set_ylabel(_energy_axis_label(rec), fontsize=7)
        # each panel names its own level (energies, transfer integrals, mobility model): a
        # campaign mixes quick and refined landscapes, and one shared caption would not say which is which
        level = textwrap.fill(str(rec["level"]), 62)
        # the level of theory names the level; the config key (esf-refined) is not for a plot
        # wrapped to the panel as the level: a long name ran into the next panel's title
        head = textwrap.fill(f"{rec['name']}: {_panel_count(rec)} ({rec['source']})", 62)
        ax.set_title(f"{head}\n{level}", fontsize=7)
        ax.tick_params(labelsize=7)
    for k in range(n, nrow * ncol):
        axes[k // ncol][k % ncol].axis("off")
    _legends_below(fig, [axes[k // ncol][k % ncol] for k in range(n)], ncol, nrow)
    if title:
        fig.suptitle(title, fontsize=9)
    if sc is not None:
        cb = fig.colorbar(sc, ax=axes.ravel().tolist(), shrink=0.8)
        cb.set_label("density (g/cm$^3$)", fontsize=8)
    return fig


def _legends_below(fig: Any, panels: list[Any], ncol: int, nrow: int) -> None:
    """Each ESF map panel's legend below its axes, under the x label, and the figure enlarged
    to hold them (newuser49 #7: inside the axes, the legend hid the coronene panel's two
    structures at 5.8 kJ/mol; any corner of a panel may hold data, so no legend sits in one).
    Every row of panels grows by its tallest legend, every column is at least as wide as its
    widest; constrained layout keeps each legend with its panel and inside the figure."""
    from matplotlib.transforms import ScaledTranslation

    renderer = fig.canvas.get_renderer()
    dpi = fig.dpi
    gap = 4 / 72  # inches between the x label and the legend
    heights = [0.0] * nrow
    widths = [0.0] * ncol
    for k, ax in enumerate(panels):
        # the x axis's tick labels and label hang below the axes; the legend starts below them
        drop = (ax.get_window_extent(renderer).y0 - ax.xaxis.get_tightbbox(renderer).y0) / dpi + gap
        below = ax.transAxes + ScaledTranslation(0, -drop, fig.dpi_scale_trans)
        leg = ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, 0.0), bbox_transform=below,
                        borderaxespad=0.0)
        box = leg.get_window_extent(renderer)
        heights[k // ncol] = max(heights[k // ncol], box.height / dpi + gap)
        widths[k % ncol] = max(widths[k % ncol], box.width / dpi)
    width = sum(max(3.9, w + 0.3) for w in widths) + 1.0
    height = sum(3.6 + h for h in heights) + 0.6
    fig.set_size_inches(width, height)


def _energy_axis_label(rec: dict[str, Any]) -> str:
    """An ESF map panel's y label, naming the level of its energies (panels of a campaign
    mix the molecule stage's force field and the structure stage's ranking level): a
    molecule-stage record's CSP force field (``csp_level``), a structure-stage record's
    ranking level (``energy_level``)."""
    if rec.get("source") == "molecule stage":
        level = f"{str(rec.get('csp_level') or 'CSP').split(' (')[0]} force field"
    else:
        level = str(rec.get("energy_level") or "the ranking level")
    return f"{textwrap.fill(f'lattice energy, {level},', 40)}\nrel. to lowest (kJ/mol per molecule)"


def _panel_count(rec: dict[str, Any]) -> str:
    """An ESF map panel's count of structures (:func:`window_share`): ``6 structures``;
    over part of the window ``6 of 41 in window (52% of the Boltzmann weight)`` (structure
    stage: ``6 structures of 19 in window (...)``); ``6 structures (share of the window
    not recorded)``."""
    _, k, n, share = window_share(rec)
    listed = len(rec["structures"])
    if n is None:
        return f"{listed} structures (share of the window not recorded)"
    energies = _window_energies_text(rec).replace("; the window's energies: ", "; energies ")
    if k >= n:
        return f"{listed} structures" + (f" ({energies[2:]})" if energies else "")
    of = f"{k} of {n} in window" if rec.get("source") == "molecule stage" else f"{listed} structures of {n} in window"
    return f"{of} ({share_text(share)}{energies})"


def _draw_window(ax: Any, rec: dict[str, Any], rel_kjmol: Any, window_kjmol: float | None) -> bool:
    """Shade an ESF map panel's energy window; True when the landscape mean is over part of it
    only. A molecule-stage level computed the lowest structures of its window: the band is
    solid up to the highest of them and hatched above it, the rest of the window, which holds
    the structures never computed (their number when recorded). A structure stage's
    structures without a mobility may lie anywhere in its window (its own ``window_kjmol``
    above the window's lowest): the band is hatched when it holds some, each marked by a
    tick at its energy on the left edge, dark where the energy is computed, grey where it is
    predicted or estimated (their counts in the legend)."""
    a, k, n, _ = window_share(rec)
    partial = n is None or k < n
    window_kjmol = rec.get("window_kjmol") or window_kjmol
    if window_kjmol is None:
        return partial
    w = f"{window_kjmol:g} kJ/mol"
    if rec.get("source") != "molecule stage" and rec.get("window_structures"):
        _draw_structure_window(ax, rec, window_kjmol)
        return partial
    if rec.get("source") != "molecule stage" or (n is not None and a >= n) or not len(rel_kjmol):
        ax.axhspan(0, window_kjmol, color="0.92", zorder=0, label=f"window {w}")
        return partial
    top = min(float(max(rel_kjmol)), window_kjmol)
    ax.axhspan(0, top, color="0.88", zorder=0, label=f"computed: the lowest {a}")
    rest = "not computed (count not recorded)" if n is None else f"{n - a} structures not computed"
    ax.axhspan(top, window_kjmol, facecolor="none", edgecolor="0.78", hatch="////", lw=0, zorder=0,
               label=f"rest of the {w} window: {rest}")
    return partial


def _draw_structure_window(ax: Any, rec: dict[str, Any], window_kjmol: float) -> None:
    """A structure-stage panel's window (:func:`_draw_window`): the band from the window's
    lowest structure, hatched when structures without a mobility lie in it, and a tick per
    such structure at its energy."""
    ws = [x for x in rec["window_structures"] if x.get("rel_kjmol") is not None]
    lo = min((x["rel_kjmol"] for x in ws), default=0.0)
    w = f"{window_kjmol:g} kJ/mol"
    missing = [x for x in ws if not x["mobility"]]
    if not missing:
        ax.axhspan(lo, lo + window_kjmol, color="0.92", zorder=0, label=f"window {w}")
        return
    ax.axhspan(lo, lo + window_kjmol, facecolor="0.96", edgecolor="0.78", hatch="////", lw=0, zorder=0,
               label=f"window {w}: {len(missing)} of {len(ws)} without a mobility (ticks)")
    for kind, colour in (("computed", "0.15"), ("predicted", "0.5"), ("estimated", "0.7")):
        ys = [x["rel_kjmol"] for x in missing if x["energy"] == kind]
        if ys:
            ax.plot([0.02] * len(ys), ys, ls="none", marker="_", ms=14, mew=1.6, color=colour, zorder=2,
                    transform=ax.get_yaxis_transform(), label=f"no mobility, energy {kind}: {len(ys)}")


def readable_log_ticks(axis: Any, lo: float, hi: float) -> None:
    """Major ticks on a log ``axis`` spanning ``lo``..``hi`` that always give at least two
    labelled values (newuser37 C3: a span of about a decade showed one label, ``10^0``):
    decades over 2.5 decades or more; 1, 2, 5 x 10^n over one to 2.5; 1..9 x 10^n below a
    decade. Labels as plain numbers (``0.2``, ``1``, ``5``, ``1e-05``); minor ticks unlabelled."""
    import math

    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    decades = math.log10(hi / lo) if hi > lo > 0 else 1.0
    every = tuple(float(k) for k in range(1, 10))
    subs = (1.0,) if decades >= 2.5 else (1.0, 2.0, 5.0) if decades >= 1.0 else every
    axis.set_major_locator(LogLocator(base=10.0, subs=subs, numticks=12))
    axis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}"))
    axis.set_minor_locator(LogLocator(base=10.0, subs=every, numticks=12))
    axis.set_minor_formatter(NullFormatter())


def write_esf_report(store: Store, cfg: CampaignConfig, directory: Path, out: Path, plt: Any,
                     notes: list[str]) -> tuple[list[Path], list[dict[str, Any]]]:
    """``report/esf_map.png`` and ``report/esf_results.csv`` and the global-minimum CIFs;
    returns the paths and the results (empty lists for a campaign without ESF results)."""
    results = esf_results(store, cfg, directory, cif_text=True)
    if not results:
        return [], []
    paths = write_esf_cifs(directory, results)
    paths.append(write_esf_table(results, out / "esf_results.csv"))
    window = esf_window(cfg) or (cfg.structures.window_kjmol if cfg.structures.enabled else None)
    fig = esf_map_figure(results, plt, window, title=f"campaign {cfg.name}: ESF maps")
    if fig is None:
        notes.append("no structure with a hole mobility: no ESF map")
    else:
        p = out / "esf_map.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths, results


def esf_window(cfg: CampaignConfig) -> float | None:
    """The energy window of the molecule stage's ESF levels (their ``window_kjmol``
    param or the backend's default)."""
    for b in reversed(cfg.backends):
        p = _esf_params(b)
        if "window_kjmol" in p:
            return float(p["window_kjmol"])
    return None
