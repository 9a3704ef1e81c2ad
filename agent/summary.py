"""What a campaign found, in words a chemist reads: every figure with its quantity, unit
and level of theory.

* :func:`quantity` -- label, short symbol and unit of a computed value (``reorg_energy_kjmol``
  is the "hole reorganisation energy λ+" in kJ/mol); plots and text use the same names.
* :func:`level_of_theory` -- the human-readable level of a configured backend, declared by
  the backend (``level_of_theory(params)``; the description as a fallback); given a value
  key, that value's level where the backend declares one (``value_levels``): the best line
  names the objective's.
* :func:`structure_results` -- per CSP landscape of a live campaign, the structures ranked at
  the highest structure level with the posterior the acquisition uses (the Delta-GP's, or
  the constant shift's while the Delta-GP fails its leave-one-out skill test; mean, 1-sigma;
  exact where computed; ``ranking_model`` says which), space group, density, Z and CIF path; :func:`save_structure_results` writes
  them into the store (meta ``structure_results``), and :func:`stored_structure_results`
  reads them back for ``status`` (store only), adding results computed since. Each
  landscape also names ``best_computed`` (the lowest structure computed at the level, with
  its rank among all, predictions included), ``observed`` (the lab's observed forms, also
  marked in ``top``) and ``prediction_check`` (:func:`prediction_check`: a WARNING when the
  leader is an uncomputed Delta-GP prediction that extrapolates beyond the computed
  corrections; a note when the leader is an uncomputed constant-shift prediction).
* :func:`status_record` / :func:`status_lines` -- the ``crystal-agent status`` record
  (``--json``; its ``objective`` block is :func:`objective_record`, which
  :class:`~agent.campaign.Status` carries too) and text, also printed at the end of ``run`` /
  ``resume``; with the lab's experiments (:mod:`agent.lab.summary`).
* :func:`value_warnings` / :func:`level_caveat` -- the warnings the results carry (e.g. a
  lambda+ on borrowed geometries with unbalanced components) and the top level's known
  bias, said with the values and on the best line; such values stay values.

Importing this module is cheap; the structure posterior needs the campaign's models.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.campaign import Campaign, Status
    from agent.config import BackendConfig, CampaignConfig
    from agent.store import Store

KJMOL_PER_EV = 96.48533212
#: meta key of the saved structure-stage results
STRUCTURE_RESULTS_META = "structure_results"
#: structures listed per landscape
N_TOP_STRUCTURES = 3

#: computed quantity -> (label, short symbol, unit)
QUANTITIES: dict[str, tuple[str, str, str]] = {
    "reorg_energy_kjmol": ("hole reorganisation energy λ+", "lambda+", "kJ/mol"),
    "lambda_cation_kjmol": ("cation relaxation energy λ1", "lambda_cation", "kJ/mol"),
    "lambda_neutral_kjmol": ("neutral relaxation energy λ2", "lambda_neutral", "kJ/mol"),
    "ip_adiabatic_kjmol": ("adiabatic ionisation energy", "IP_ad", "kJ/mol"),
    "ip_vertical_kjmol": ("vertical ionisation energy", "IP_v", "kJ/mol"),
    # xtb-reorg's GFN2-xTB Delta-SCF value shifted to experiment (sim_backends.reorg): an estimate
    "ip_gas_ev": ("estimated gas-phase ionisation energy", "IP_gas", "eV"),
    "energy_kjmol": ("lattice energy", "E_latt", "kJ/mol per molecule"),
    "global_min_energy_kjmol": ("CSP global-minimum lattice energy", "E_latt,min", "kJ/mol per molecule"),
    "f_vib_kjmol": ("vibrational free energy F_vib", "F_vib", "kJ/mol per molecule"),
    "zpe_kjmol": ("zero-point energy", "ZPE", "kJ/mol per molecule"),
    "density_gcm3": ("density", "rho", "g/cm3"),
    "global_min_density_gcm3": ("density of the CSP global minimum", "rho", "g/cm3"),
    "log10_landscape_mobility_hole": ("log10 landscape hole mobility", "log10 mu_h", "log10 cm2/(V s)"),
    # the ESF proxy's value of log10_landscape_mobility_hole (sim_backends.esf.PROXY_SHOWN_AS)
    "log10_reference_crystal_mobility_hole": ("log10 reference-crystal hole mobility", "log10 mu_h,ref",
                                              "log10 cm2/(V s)"),
    "landscape_mobility_hole_cm2Vs": ("landscape hole mobility", "mu_h", "cm2/(V s)"),
    "mobility_hole_cm2Vs": ("hole mobility", "mu_h", "cm2/(V s)"),
}
_SUFFIX_UNITS = (("_kjmol", "kJ/mol"), ("_ev", "eV"), ("_gcm3", "g/cm3"), ("_s", "s"), ("_A", "A"))


def quantity(name: str) -> tuple[str, str, str]:
    """(label, short symbol, unit) of a value name; unknown names get the unit of their
    suffix (``_kjmol`` -> kJ/mol, ``_ev`` -> eV, ...) and the rest of the name as label."""
    if name in QUANTITIES:
        return QUANTITIES[name]
    for suffix, unit in _SUFFIX_UNITS:
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            return stem.replace("_", " "), stem, unit
    return name.replace("_", " "), name, ""


def shown_name(backend: BackendConfig | None, key: str) -> str:
    """The name a backend's value ``key`` is shown under (plot labels, ``results.csv``
    columns): the backend's ``shown_as`` entry, e.g. the ESF proxy's
    ``log10_reference_crystal_mobility_hole`` for the stored ``log10_landscape_mobility_hole``
    (a fixed reference crystal, not a landscape), else ``key``. Stored keys never change."""
    if backend is None:
        return key
    from sim_backends.registry import UnknownBackendError, backend_class

    try:
        return str((getattr(backend_class(backend.name), "shown_as", None) or {}).get(key, key))
    except UnknownBackendError:
        return key


def axis_label(name: str) -> str:
    """``"hole reorganisation energy λ+ (kJ/mol)"``: a plot axis for a value name."""
    label, _, unit = quantity(name)
    return f"{label} ({unit})" if unit else label


def format_value(name: str, value: float, std: float | None = None) -> str:
    """``"15.9 kJ/mol (0.165 eV)"`` / ``"-65.3 ± 1.2 kJ/mol per molecule"``."""
    _, _, unit = quantity(name)
    if name.startswith("log10_") and unit.startswith("log10 "):  # e.g. a mobility
        pm = f" ± {std:.2f}" if std is not None and math.isfinite(std) and std > 0 else ""
        from agent.esf_report import two_figures

        return f"{value:.2f}{pm} (= {two_figures(10 ** value)} {unit[6:]})"
    pm = f" ± {std:.1f}" if std is not None and math.isfinite(std) and std > 0 else ""
    text = f"{value:.1f}{pm} {unit}".rstrip()
    if unit == "kJ/mol":
        text += f" ({value / KJMOL_PER_EV:.3f} eV)"
    return text


def level_caveat(backend: BackendConfig | None) -> str:
    """The known systematic error a configured backend declares (``Backend.caveat``) under
    its params (e.g. ``dft-reorg`` with ``geometry = "xtb"``), or ''."""
    if backend is None:
        return ""
    from sim_backends.registry import UnknownBackendError, backend_class

    try:
        cls = backend_class(backend.name)
    except UnknownBackendError:
        return ""
    try:
        return str(cls(**dict(backend.params)).caveat)
    except Exception:  # noqa: BLE001 - a label must never fail a summary
        return str(cls.caveat)


def level_of_theory(backend: BackendConfig | None, key: str | None = None) -> str:
    """The level of a configured backend (name and params) as the backend declares it; with
    a value ``key``, the level of that value where the backend declares one for it
    (``value_levels``, e.g. the ESF levels' lambda+: a gas-phase GFN2-xTB value beside a
    landscape mobility; a replay's, those of the level it replays), else the backend's."""
    if backend is None:
        return ""
    from sim_backends.registry import backend_class

    try:
        cls = backend_class(backend.name)
        inst = cls(**dict(backend.params))
        params = dict(backend.params)
        if key is not None:
            from agent.constraints import value_level

            declared = (getattr(inst, "value_levels", None) or {}).get(key) or value_level(backend.name, key)[0]
            if declared:
                return str(declared)
        if callable(getattr(inst, "level_of_theory", None)):
            return str(inst.level_of_theory(params))
        if callable(getattr(inst, "_level", None)):
            return str(inst._level(params))
        return cls.description or backend.name
    except Exception:  # noqa: BLE001 - a label must never fail a summary
        return backend.name


def value_computation(backend: BackendConfig, key: str) -> str:
    """The calculation a configured backend's value ``key`` comes from: the backend's
    ``value_computations`` entry where it declares one (a value that is another level's
    calculation shifted by a constant, e.g. the ESF levels' lambda+: ``xtb-reorg``'s plus
    :data:`sim_backends.reorg.XTB_LAMBDA_SHIFT_KJMOL`), else :func:`level_of_theory` of it.
    Two levels with the same computation of the objective add no fidelity
    (:mod:`agent.config`)."""
    from sim_backends.registry import backend_class

    try:
        inst = backend_class(backend.name)(**dict(backend.params))
        declared = (getattr(inst, "value_computations", None) or {}).get(key)
    except Exception:  # noqa: BLE001 - as level_of_theory: the config's own checks say what is wrong
        declared = None
    return str(declared) if declared else level_of_theory(backend, key)


def csp_levels(store: Any, csp_name: str) -> dict[int, str]:
    """Molecule id -> the level its CSP landscape was computed at, as the search recorded it
    (force field and the charges it used, e.g. RESP with N lone-pair sites for a rigid molecule,
    GFN2-xTB charges per conformer for a flexible one); molecules without one are absent."""
    return {int(ev.molecule_id): str(ev.extra["level"]) for ev in store.evaluations(csp_name, "ok")
            if ev.structure_id is None and ev.extra.get("level")}


# -- structure stage ------------------------------------------------------------------------
def structures_dir(campaign_directory: Path) -> Path:
    return Path(campaign_directory) / "structures"


def structure_results(campaign: Campaign, top: int = N_TOP_STRUCTURES) -> list[dict[str, Any]]:
    """Per landscape of the campaign's structure stage, the structures ranked at the
    refinement level: computed energies exact, the others the posterior mean and 1-sigma
    of ``corrected_landscape`` (``ranking_model``: Delta-GP, or the constant shift while the
    Delta-GP fails the skill test); before any refinement result, the force-field
    ranking. Structures whose calculation at the level failed are not ranked. Each
    record: ``molecule_id, smiles, name, level, ff_level, n_structures`` (the lowest
    ``[structures] max_structures`` the stage kept), ``n_stored`` (the CSP's structures in the
    store), ``n_computed, n_failed, top`` (list of :func:`landscape_rows` records)."""
    stage = campaign.stage
    if stage is None:
        return []
    cfg = campaign.cfg.structures
    level, ff_config_level = level_of_theory(cfg.refine), level_of_theory(cfg.csp)
    out = []
    sampling = csp_sampling(campaign.store, cfg.csp.name if cfg.csp else "")
    ff_levels = csp_levels(campaign.store, cfg.csp.name if cfg.csp else "")
    observed = observed_sources(campaign.store)
    for mol_id, land in sorted(stage.landscapes.items()):
        corr = _corrected(stage, mol_id)
        table = _rows(campaign, mol_id, corr)
        has_level = any(r["computed"] for r in table)
        ranked = sorted((r for r in table if not r["failed"]),  # unphysical or failed at the level
                        key=lambda r: rank_key(r) if has_level else (False, r["ff_kjmol"]))
        for n, r in enumerate(ranked, 1):
            r["rank"] = n
            r["observed_by"] = observed.get(r["id"])
        idx = campaign._index_of.get(mol_id)
        ff_level = ff_levels.get(int(mol_id), ff_config_level)
        rec = {
            "molecule_id": int(mol_id), "smiles": land.smiles,
            "name": campaign.names[idx] if idx is not None else land.smiles,
            "level": level if has_level else ff_level, "refine_level": level, "ff_level": ff_level,
            "caveat": level_caveat(cfg.refine) if has_level else "",
            "n_structures": len(land.ids), "n_stored": len(_ids_of(campaign.store, mol_id)),
            "n_computed": len(land.computed), "n_failed": len(land.failed),
            "n_ranked": len(ranked), "top": ranked[:top], "csp_sampling": sampling.get(int(mol_id)),
            RANKING: [[r["id"], r["energy_kjmol"], r["std_kjmol"], r["computed"], r["ff_kjmol"]] for r in ranked],
        }
        rec["best_computed"] = best_computed(ranked, level)
        rec["observed"] = [r for r in ranked if r["observed_by"]]
        rec["ranking_model"] = (corr.get("ranking_model") or DELTA_GP) if corr and has_level else None
        rec["prediction_check"] = prediction_check(ranked, corr.get("skill") if corr else None,
                                                   cfg.acquisition.skill_ratio, rec["ranking_model"])
        out.append(rec)
    return out


#: key of a landscape record's full ranking at its level (``[id, energy, std, computed, ff]``
#: per ranked structure): saved with the results, read by ``status`` for ranks, not printed
RANKING = "ranking"
#: unit of every lattice energy and correction in the structure and lab records
ENERGY_UNIT = "kJ/mol per molecule"
#: ``ranking_model`` values (:meth:`agent.stages.structure.StructureStage.corrected_landscape`)
DELTA_GP, CONSTANT_SHIFT = "Delta-GP", "constant-shift"


def prediction_label(row: dict[str, Any]) -> str:
    """How an uncomputed structure's energy was predicted: ``Delta-GP prediction, 1 sigma`` or
    ``constant-shift prediction, 1 sigma`` (its ``prediction``; Delta-GP when not recorded)."""
    return f"{row.get('prediction') or DELTA_GP} prediction, 1 sigma"


def _corrected(stage: Any, mol_id: int) -> dict[str, Any] | None:
    """``stage.corrected_landscape(mol_id)``, None when no model can be fitted."""
    from agent.surrogates.structure_gp import SurrogateError

    try:
        return stage.corrected_landscape(mol_id)
    except (SurrogateError, ValueError, RuntimeError):  # no model: computed energies only
        return None


def observed_sources(store: Store) -> dict[str, str]:
    """Structure id -> the lab request that made it an observed form (``observed_forms``)."""
    return dict(store.observed_form_sources())


def best_computed(ranked: list[dict[str, Any]], level: str) -> dict[str, Any] | None:
    """The lowest structure computed at the ranking level, with its ``rank`` there (1 = the
    lowest, predictions included) and ``level``; None before anything is computed."""
    best = next((r for r in ranked if r.get("computed")), None)
    return None if best is None else {**best, "level": level, "unit": ENERGY_UNIT}


def prediction_check(ranked: list[dict[str, Any]], skill: Any, skill_ratio: float,
                     ranking_model: str | None = DELTA_GP) -> dict[str, Any] | None:
    """Whether the predicted leader of a ranking (an uncomputed structure ranked first) is an
    extrapolation of the Delta-GP: its predicted correction (level minus force field) lies
    outside the range of the computed corrections by more than its own 1-sigma, or the model
    fails the acquisition's leave-one-out skill test (``skill``: a
    :class:`agent.refine_acquisition.Skill`, the model must beat a constant shift; None: not
    known, ``skilled`` None and only the range is checked). None when
    the leader is computed or has no prediction. ``warning`` is the text line, None when
    neither holds. When the ranking is the constant shift's (``ranking_model``
    :data:`CONSTANT_SHIFT`: the Delta-GP failed that test) the leader is no extrapolation (its
    correction is the mean computed one) and ``note`` says how it was ranked instead."""
    leader = ranked[0] if ranked else None
    if leader is None or leader.get("computed") or leader.get("energy_kjmol") is None:
        return None
    from agent.refine_acquisition import MIN_SKILL_N

    corrections = [r["energy_kjmol"] - r["ff_kjmol"] for r in ranked if r.get("computed")]
    if not corrections:
        return None
    lo, hi = min(corrections), max(corrections)
    corr, sd = leader["energy_kjmol"] - leader["ff_kjmol"], float(leader.get("std_kjmol") or 0.0)
    beyond = max(lo - corr, corr - hi, 0.0)
    rec = {"leader_id": leader["id"], "leader_correction_kjmol": corr, "leader_std_kjmol": sd,
           "computed_correction_min_kjmol": lo, "computed_correction_max_kjmol": hi,
           "outside_computed_range_kjmol": beyond, "outside_by_more_than_sigma": bool(beyond > sd),
           "n_computed": len(corrections), "min_skill_n": MIN_SKILL_N, "skill_ratio": float(skill_ratio),
           "skilled": bool(skill.skilled) if skill is not None else None,  # None: not known
           "model_loo_mae_kjmol": getattr(skill, "model_loo_mae_kjmol", None),
           "shift_loo_mae_kjmol": getattr(skill, "shift_loo_mae_kjmol", None), "unit": ENERGY_UNIT,
           "ranking_model": ranking_model or DELTA_GP}
    if rec["ranking_model"] == CONSTANT_SHIFT:
        rec["extrapolation"], rec["warning"] = False, None
        rec["note"] = _shift_leader_note(rec)
        return rec
    rec["extrapolation"] = rec["outside_by_more_than_sigma"] or rec["skilled"] is False
    rec["warning"] = _extrapolation_warning(rec) if rec["extrapolation"] else None
    return rec


def _shift_leader_note(c: dict[str, Any]) -> str:
    """The note under a ranking led by an uncomputed structure ranked by the constant shift."""
    mae, shift = c["model_loo_mae_kjmol"], c["shift_loo_mae_kjmol"]
    if c["n_computed"] < c["min_skill_n"]:
        why = f"the Delta-GP is trusted from {c['min_skill_n']} computed structures on, {c['n_computed']} are"
    elif mae is None or shift is None:
        why = "the Delta-GP has no leave-one-out error to test"
    else:
        why = (f"the Delta-GP failed the leave-one-out skill test: LOO MAE {mae:.2f} kJ/mol per molecule "
               f"against the shift's {shift:.2f}")
    return (f"note: the leader {c['leader_id']} is not computed; it and every uncomputed structure are ranked "
            f"by the force field plus the mean computed correction ({c['leader_correction_kjmol']:.1f} kJ/mol "
            f"per molecule, a constant shift with its leave-one-out spread), as the acquisition ranks them, "
            f"because {why}. Compute it (crystal-agent refine) before calling it the global minimum.")


def _extrapolation_warning(c: dict[str, Any]) -> str:
    """The WARNING line of a :func:`prediction_check` record that found an extrapolation."""
    why = []
    if c["outside_by_more_than_sigma"]:
        why.append(f"its predicted correction to the force field, {c['leader_correction_kjmol']:.1f} ± "
                   f"{c['leader_std_kjmol']:.1f} kJ/mol per molecule, is more than 1 sigma outside the "
                   f"{c['n_computed']} computed corrections ({c['computed_correction_min_kjmol']:.1f} to "
                   f"{c['computed_correction_max_kjmol']:.1f})")
    if c["skilled"] is False:
        mae, shift = c["model_loo_mae_kjmol"], c["shift_loo_mae_kjmol"]
        if c["n_computed"] < c["min_skill_n"]:
            why.append(f"the Delta-GP's leave-one-out skill is untested ({c['n_computed']} computed, "
                       f"the test needs {c['min_skill_n']})")
        elif mae is None or shift is None:
            why.append("the Delta-GP has no leave-one-out error to test")
        else:
            why.append(f"the Delta-GP has no leave-one-out skill (LOO MAE {mae:.2f} kJ/mol per molecule, "
                       f"a constant shift {shift:.2f}; it must be at most {c['skill_ratio']:g} x the shift's)")
    return (f"WARNING: the predicted leader {c['leader_id']} is an extrapolation, not a result: "
            + "; ".join(why) + ". Compute it (crystal-agent refine) before calling it the global minimum.")


def csp_sampling(store: Store, csp_backend: str) -> dict[int, dict[str, Any]]:
    """Per molecule, how converged its CSP search was (from the CSP evaluation's
    ``extra["csp"]["convergence"]``, :mod:`sim_backends.csp.sampling`): ``converged,
    stopped_by, n_trials, n_groups, n_not_converged``, the force field's ``warnings``
    for the landscape (:mod:`sim_backends.csp.domain`), the ``backend`` that searched and the
    ``ff_level`` it recorded (force field and charges; None when not recorded)."""
    out: dict[int, dict[str, Any]] = {}
    for ev in store.evaluations(csp_backend, "ok"):
        csp = ev.extra.get("csp") or {}
        if conv := csp.get("convergence"):
            per = conv.get("per_space_group") or {}
            out[int(ev.molecule_id)] = {
                "converged": bool(conv.get("converged")), "stopped_by": conv.get("stopped_by"),
                "n_trials": int(sum(s.get("n_trials", 0) for s in per.values())), "n_groups": len(per),
                "n_not_converged": sum(not s.get("converged") for s in per.values()),
                "warnings": list(csp.get("warnings") or []), "backend": csp_backend,
                "ff_level": str(ev.extra["level"]) if ev.extra.get("level") else None}
    return out


def rank_key(row: dict[str, Any]) -> tuple[bool, float]:
    """Sort key at the refinement level: by energy there, structures without one (no
    model could be fitted) after all others, by force-field energy."""
    e = row["energy_kjmol"]
    return (e is None, row["ff_kjmol"] if e is None else e)


def landscape_rows(campaign: Campaign, mol_id: int) -> list[dict[str, Any]]:
    """One record per structure of a landscape, in landscape order: ``id, space_group,
    density_gcm3, z, ff_kjmol, ff_rel_kjmol`` (force field), ``energy_kjmol`` and
    ``std_kjmol`` at the refinement level (computed: exact, std 0; else the Delta-GP mean
    and 1-sigma; None before any refinement or when no model can be fitted),
    ``rel_kjmol`` (relative to the lowest), ``computed``, ``failed``, ``f_vib_kjmol``,
    ``cif`` (its path under ``runs/<name>/structures/``)."""
    return _rows(campaign, mol_id, _corrected(campaign.stage, mol_id))


def _rows(campaign: Campaign, mol_id: int, corr: dict[str, Any] | None) -> list[dict[str, Any]]:
    """:func:`landscape_rows` from a given ``corrected_landscape`` (None: no model)."""
    import numpy as np

    land = campaign.stage.landscapes[mol_id]
    rows = {r["id"]: r for r in campaign.store.structures(mol_id)}
    cif_dir = structures_dir(campaign.directory)
    out = []
    for i, sid in enumerate(land.ids):
        r = rows.get(sid)
        how = None
        if i in land.computed:
            e, std = land.computed[i], 0.0
        elif corr is not None:
            e, std = float(corr["corrected_kjmol"][i]), float(corr["std_kjmol"][i])
            how = corr.get("ranking_model") or DELTA_GP
        else:
            e, std = None, None
        out.append({
            "id": sid, "space_group": r["space_group"] if r else None,
            "density_gcm3": r["density_gcm3"] if r else None, "z": r["z"] if r else None,
            "ff_kjmol": float(land.ff_kjmol[i]), "energy_kjmol": e, "std_kjmol": std, "prediction": how,
            "computed": i in land.computed, "failed": i in land.failed and i not in land.computed,
            "f_vib_kjmol": land.f_vib.get(i),
            "z_prime": z_prime(getattr(land.landscape.minima[i], "z_prime", None), r["space_group"] if r else None,
                               r["z"] if r else None),
            "cif": str((cif_dir / f"{sid}.cif").absolute()),
        })
    known = [r["energy_kjmol"] for r in out if r["energy_kjmol"] is not None]
    for r in out:
        r["rel_kjmol"] = None if r["energy_kjmol"] is None else r["energy_kjmol"] - min(known)
    ff0 = float(np.min(land.ff_kjmol))
    for r in out:
        r["ff_rel_kjmol"] = r["ff_kjmol"] - ff0
    return out


def save_structure_results(campaign: Campaign) -> list[dict[str, Any]]:
    """:func:`structure_results` written into the store (for ``status``), returned."""
    results = structure_results(campaign)
    if results:
        campaign.store.set_meta(STRUCTURE_RESULTS_META, json.dumps(
            {"n_evaluations": campaign.n_evaluations, "landscapes": results}))
    return results


def stored_structure_results(store: Store, cfg: CampaignConfig) -> list[dict[str, Any]]:
    """The structure results for ``status`` from the store alone: the saved posterior
    (:func:`save_structure_results`, written at the end of ``run``/``resume``), with
    every structure computed since it was saved taking its computed energy; without a
    saved posterior, the computed structures only (exact, ranked among themselves, no
    ``rank``: ``ranks_saved`` False). Every landscape whose CSP is stored has a record with
    its ``csp_sampling`` (:func:`csp_sampling`: convergence and force-field warnings, read
    from the store whatever the run's state); one with nothing computed and nothing saved
    lists its lowest force-field structures."""
    if not cfg.structures.enabled:
        return []
    csp_name = cfg.structures.csp.name if cfg.structures.csp else ""
    sampling = csp_sampling(store, csp_name)
    ff_levels = csp_levels(store, csp_name)
    raw = store.get_meta(STRUCTURE_RESULTS_META)
    saved = json.loads(raw)["landscapes"] if raw else []
    from agent.stages.structure import level_value_keys

    refine = cfg.structures.refine.name if cfg.structures.refine else None
    value_key = level_value_keys(cfg.structures)[0]  # what the first structure level ranks by
    computed: dict[str, float] = {}
    failed: set[str] = set()
    for ev in store.evaluations(refine) if refine else []:
        v = ev.values.get(value_key)
        if ev.structure_id and ev.ok and v is not None and math.isfinite(v):
            computed[ev.structure_id] = float(v)
        elif ev.structure_id:
            failed.add(ev.structure_id)
    level = level_of_theory(cfg.structures.refine)
    by_mol = {int(r["molecule_id"]): r for r in saved}
    for rec in by_mol.values():  # failed since the results were saved: not ranked
        rec["top"] = [r for r in rec["top"] if r["id"] in computed or r["id"] not in failed]
    mols = {m["id"]: m for m in store.molecules()}
    for row in store.structures():
        mol_id = int(row["molecule_id"])
        if row["id"] not in computed:
            continue
        rec = by_mol.setdefault(mol_id, {
            "molecule_id": mol_id, "smiles": mols[mol_id]["smiles"] if mol_id in mols else "",
            "name": (mols[mol_id]["name"] or mols[mol_id]["smiles"]) if mol_id in mols else "",
            "level": level, "refine_level": level,
            "ff_level": ff_levels.get(mol_id, level_of_theory(cfg.structures.csp)),
            "n_structures": min(len(_ids_of(store, mol_id)), cfg.structures.max_structures),
            "n_computed": 0, "top": []})
        # force-field-ranked entries (saved before any refinement) have no energy at the level
        top = {r["id"]: r for r in rec["top"] if r.get("energy_kjmol") is not None}
        top[row["id"]] = {**top.get(row["id"], {}), "id": row["id"], "space_group": row["space_group"],
                          "density_gcm3": row["density_gcm3"], "z": row["z"],
                          "z_prime": z_prime(None, row["space_group"], row["z"]), "ff_kjmol": row["energy_kjmol"],
                          "energy_kjmol": computed[row["id"]], "std_kjmol": 0.0, "computed": True,
                          "cif": str((structures_dir(Path(store.path).parent) / f"{row['id']}.cif").absolute())}
        rec["top"] = sorted(top.values(), key=lambda r: r["energy_kjmol"])[:N_TOP_STRUCTURES]
        rec["level"] = level
        rec["caveat"] = level_caveat(cfg.structures.refine)
        ids = _ids_of(store, mol_id)
        rec["n_computed"] = max(int(rec.get("n_computed") or 0), sum(sid in computed for sid in ids))
        rec["n_failed"] = max(int(rec.get("n_failed") or 0), sum(sid in failed for sid in ids))
    rows = {r["id"]: r for r in store.structures()}
    for mol_id in sampling:  # searched, nothing computed and nothing saved yet: the force-field ranking
        if mol_id in by_mol:
            continue
        ff_rows = sorted((r for r in rows.values() if int(r["molecule_id"]) == mol_id),
                         key=lambda r: r["energy_kjmol"])[:cfg.structures.max_structures]
        ff_level = ff_levels.get(mol_id, level_of_theory(cfg.structures.csp))
        by_mol[mol_id] = {
            "molecule_id": mol_id, "smiles": mols[mol_id]["smiles"] if mol_id in mols else "",
            "name": (mols[mol_id]["name"] or mols[mol_id]["smiles"]) if mol_id in mols else "",
            "level": ff_level, "refine_level": level, "ff_level": ff_level, "caveat": "",
            "n_structures": len(ff_rows), "n_computed": 0,
            RANKING: [[r["id"], None, None, False, r["energy_kjmol"]] for r in ff_rows],
            "top": [{"id": r["id"], "space_group": r["space_group"], "density_gcm3": r["density_gcm3"],
                     "z": r["z"], "z_prime": z_prime(None, r["space_group"], r["z"]),
                     "ff_kjmol": r["energy_kjmol"], "energy_kjmol": None, "std_kjmol": None, "computed": False,
                     "cif": str((structures_dir(Path(store.path).parent) / f"{r['id']}.cif").absolute())}
                    for r in ff_rows[:N_TOP_STRUCTURES]]}
    observed = observed_sources(store)
    for rec in by_mol.values():
        rec["ranks_saved"] = bool(rec.get(RANKING))
        if rec["molecule_id"] in sampling:  # the store's, whether or not the run saved its results
            rec["csp_sampling"] = sampling[rec["molecule_id"]]
        rec["n_stored"] = len(_ids_of(store, rec["molecule_id"]))
        _refresh_ranks(rec, computed, failed, rows, observed, level, Path(store.path).parent)
    return [by_mol[k] for k in sorted(by_mol)]


def _refresh_ranks(rec: dict[str, Any], computed: dict[str, float], failed: set[str],
                   rows: dict[str, Any], observed: dict[str, str], level: str, directory: Path) -> None:
    """A stored landscape record brought up to date with the store: its saved ranking
    (:data:`RANKING`) with every structure computed since at its computed energy and those
    failed since left out, the ``rank`` of each listed structure, ``best_computed``,
    ``observed`` (the lab's observed forms) and ``prediction_check`` (kept only while its
    leader is still the uncomputed leader). Without a saved ranking the computed structures
    are ranked among themselves and carry no ``rank``."""
    saved = rec.get(RANKING)
    ranking = [list(e) for e in saved or []
               if e[0] in computed or e[0] not in failed]
    for e in ranking:
        if e[0] in computed:
            e[1:4] = [computed[e[0]], 0.0, True]
    known = {e[0] for e in ranking}
    ranking += [[sid, e, 0.0, True, rows[sid]["energy_kjmol"]] for sid, e in computed.items()
                if sid not in known and sid in rows and int(rows[sid]["molecule_id"]) == rec["molecule_id"]]
    ranking.sort(key=lambda e: (e[1] is None, e[4] if e[1] is None else e[1]))
    rank = {e[0]: n for n, e in enumerate(ranking, 1)} if saved else {}

    def entry(e: list[Any]) -> dict[str, Any]:
        row = rows.get(e[0])
        return {"id": e[0], "energy_kjmol": e[1], "std_kjmol": e[2], "computed": bool(e[3]), "ff_kjmol": e[4],
                "space_group": row["space_group"] if row else None,
                "density_gcm3": row["density_gcm3"] if row else None, "z": row["z"] if row else None,
                "z_prime": z_prime(None, row["space_group"], row["z"]) if row else None,
                "cif": str((structures_dir(directory) / f"{e[0]}.cif").absolute()),
                "rank": rank.get(e[0]), "observed_by": observed.get(e[0])}

    for r in rec.get("top") or []:
        r["rank"], r["observed_by"] = rank.get(r["id"]), observed.get(r["id"])
    rec[RANKING] = ranking if saved else []  # ranks among the computed only would mislead
    if saved:
        rec["n_ranked"] = len(ranking)
    best = next((e for e in ranking if e[3]), None)
    rec["best_computed"] = None if best is None else {**entry(best), "level": level, "unit": ENERGY_UNIT}
    rec["observed"] = [entry(e) for e in ranking if e[0] in observed]
    check, top = rec.get("prediction_check"), rec.get("top") or []
    if check and not (top and top[0]["id"] == check["leader_id"] and not top[0].get("computed")):
        rec["prediction_check"] = None  # its leader was computed since, or is no longer first


def _ids_of(store: Store, mol_id: int) -> list[str]:
    return [r["id"] for r in store.structures(mol_id)]


def structure_lines(results: list[dict[str, Any]]) -> list[str]:
    """Text lines of structure results: per landscape its level and best structures."""
    from sim_backends.csp.dedupe import format_z_prime
    from sim_backends.csp.sampling import stopped_by_text

    lines = []
    for rec in results:
        n_s = rec.get("n_structures")
        n_f = rec.get("n_failed") or 0
        head = (f"structures    {rec.get('name')}: {rec.get('n_computed', 0)} of "
                f"{n_s if n_s is not None else '?'} computed at {rec.get('refine_level')}"
                + (f" ({n_f} failed)" if n_f else ""))
        if n_s is not None and (rec.get("n_stored") or 0) > n_s:  # the CSP's landscape cut to the lowest kept
            head += (f"; the stage kept the lowest {n_s} of the CSP's {rec['n_stored']} structures by force-field "
                     "energy ([structures] max_structures)")
        lines.append(head)
        if samp := rec.get("csp_sampling"):
            lines.append(f"  CSP search: {samp['n_trials']} trials in {samp['n_groups']} space groups, "
                         + ("low-energy region converged" if samp["converged"] else
                            f"NOT converged in {samp['n_not_converged']} space group"
                            f"{'s' if samp['n_not_converged'] != 1 else ''} (stopped by "
                            f"{stopped_by_text(samp['stopped_by'])}; WARNING: raise n_trials)"))
            lines += _ff_warning_lines(rec, samp)
        if not rec.get("top"):
            continue
        at = rec.get("level")
        lines.append(f"  best at {at}" + ("" if rec.get("n_computed") else " (nothing refined yet)") + ":")
        if rec.get("ranks_saved") is False and rec.get("n_computed"):  # status of a run that has not saved them
            lines.append(f"  (the computed structures only, ranked among themselves: the ranking of all "
                         f"{rec.get('n_structures') or '?'} at this level, with ranks, is saved when the run ends; "
                         "`crystal-agent report` fits it now)")
        if rec.get("caveat") and rec.get("n_computed"):
            lines.append(f"  note: {rec['caveat']}")
        for r in rec["top"]:
            if r.get("energy_kjmol") is not None:
                e = format_value("energy_kjmol", r["energy_kjmol"],
                                 None if r.get("computed") else r.get("std_kjmol"))
                how = "computed" if r.get("computed") else prediction_label(r)
            else:
                e = format_value("energy_kjmol", r["ff_kjmol"])
                how = "force field"
            dens = f"{r['density_gcm3']:.3f} g/cm3" if r.get("density_gcm3") is not None else "? g/cm3"
            fv = (f", F_vib {r['f_vib_kjmol']:.1f} kJ/mol per molecule" if r.get("f_vib_kjmol") is not None
                  else "")
            cif = f"  {r['cif']}" if r.get("cif") and Path(r["cif"]).is_file() else ""
            seen = f" [observed form, lab {r['observed_by']}]" if r.get("observed_by") else ""
            zp = f", Z' = {format_z_prime(r['z_prime'])}" if r.get("z_prime") is not None else ""
            lines.append(f"  {r['id']:<12} E_latt = {e} ({how}){fv}; {r.get('space_group') or '?'}, "
                         f"Z = {reported_z(r)}{zp}, {dens}{seen}{cif}")
        lines += _beyond_top_lines(rec)
    return lines


def _ff_warning_lines(rec: dict[str, Any], samp: dict[str, Any]) -> list[str]:
    """The CSP landscape's force-field warnings (:mod:`sim_backends.csp.domain`), each naming
    the level it is about: the force field the search ran (newuser46a #2: under the CSP line
    they sat right above fragment-DFT energies and read as applying to them), with a line
    saying which level the energies listed below are at when that is another one."""
    warns = samp.get("warnings") or []
    if not warns:
        return []
    backend = samp.get("backend") or "CSP"
    ff = samp.get("ff_level") or rec.get("ff_level")
    head = f"  force-field warnings: about the CSP search's own level, {backend}" + (f" ({ff})" if ff else "")
    listed = rec.get("level")
    if rec.get("top") and rec.get("n_computed") and listed and listed != ff:
        head += f"; the E_latt listed below are at {listed}, not at this force field"
    return [head + ":"] + [f"  WARNING ({backend} force field): {w}" for w in warns]


def _beyond_top_lines(rec: dict[str, Any]) -> list[str]:
    """Under a landscape's best structures: the best computed one when a prediction leads,
    the lab's observed forms not listed, and the extrapolation warning of the leader."""
    lines = []
    shown = {r["id"] for r in rec.get("top") or []}
    best, top = rec.get("best_computed"), rec.get("top") or []
    if best and top and not top[0].get("computed"):
        where = f"rank {best['rank']} of {rec.get('n_ranked') or '?'}" if best.get("rank") else "rank unknown"
        lines.append(f"  best computed: {best['id']}  E_latt = {format_value('energy_kjmol', best['energy_kjmol'])}"
                     f" (computed at {best.get('level') or rec.get('level')}; {where}); "
                     f"{best.get('space_group') or '?'}, Z = {reported_z(best)}"
                     + (f", {best['density_gcm3']:.3f} g/cm3" if best.get("density_gcm3") is not None else "")
                     + (f" [observed form, lab {best['observed_by']}]" if best.get("observed_by") else "")
                     + (f"  {best['cif']}" if best.get("cif") and Path(best["cif"]).is_file() else ""))
    for r in rec.get("observed") or []:
        if r["id"] in shown or (best and r["id"] == best["id"] and not top[0].get("computed")):
            continue
        e = (format_value("energy_kjmol", r["energy_kjmol"], None if r.get("computed") else r.get("std_kjmol"))
             + (" (computed)" if r.get("computed") else f" ({prediction_label(r)})")
             if r.get("energy_kjmol") is not None else "no energy at the level")
        where = f"rank {r['rank']} of {rec.get('n_ranked') or '?'}" if r.get("rank") else "rank unknown"
        lines.append(f"  observed form (lab {r['observed_by']}): {r['id']}  E_latt = {e}; {where}")
    if (check := rec.get("prediction_check")) and (check.get("warning") or check.get("note")):
        lines.append(f"  {check.get('warning') or check['note']}")
    return lines


# -- status ---------------------------------------------------------------------------------
def objective_record(cfg: CampaignConfig) -> dict[str, str]:
    """The campaign objective as ``status`` names it: ``name`` (the value key), ``label``,
    ``symbol``, ``unit``, ``level`` (the level of theory of the best value: the top level's,
    :func:`level_of_theory`) and ``direction``; the ``objective`` block of
    :func:`status_record` and :attr:`agent.campaign.Status.objective`."""
    label, short, unit = quantity(cfg.objective)
    return {"name": cfg.objective, "label": label, "symbol": short, "unit": unit,
            "level": level_of_theory(cfg.backends[-1], cfg.objective), "direction": cfg.direction}


def status_record(status: Status, store: Store, cfg: CampaignConfig,
                  structures: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The status as a JSON-able dict: the :class:`~agent.campaign.Status` fields, its
    ``objective`` (:func:`objective_record`: name, label, unit, level of the best value;
    built from ``cfg`` for a status without one), plus ``structures``
    (``structures`` when given, e.g. a live campaign's :func:`structure_results`, else
    :func:`stored_structure_results`; each with ``best_computed``, ``observed`` and
    ``prediction_check``), ``esf`` and ``lab`` (:func:`agent.lab.summary.lab_results`:
    the lab experiments, ranked on those structure results) and ``best_warning`` (the
    hopping-regime warning of the best value's structures in brief,
    :func:`agent.esf_report.regime_violation`, else None); ``level_caveat`` (the top level's
    :func:`level_caveat`, said on the best line) and ``value_warnings``
    (:func:`value_warnings`: the warnings results carry, shown with their values)."""
    rec = dict(status.to_dict())
    rec["objective"] = dict(status.objective) if getattr(status, "objective", None) else objective_record(cfg)
    if cfg.constraints:
        from agent.constraints import constraint_levels

        # the levels of theory of the constrained values, named once by the infeasible line
        rec["constraint_levels"] = constraint_levels([b.name for b in cfg.backends], cfg.constraints)
    if structures is None:
        structures = stored_structure_results(store, cfg)
    from agent.esf_report import esf_results, regime_violation
    from agent.lab.summary import lab_results

    rec["failures"] = failure_summary(store)
    rec["level_caveat"] = level_caveat(cfg.backends[-1])
    rec["value_warnings"] = value_warnings(store, cfg)
    rec["esf"] = esf_results(store, cfg, Path(store.path).parent)  # [] without ESF levels
    # the best value's own validity warning, said on the best line (newuser42 #2)
    # (a hopping-mobility warning: only when the objective is the landscape mobility)
    from sim_backends.esf import OBJECTIVE as ESF_OBJECTIVE

    rec["best_warning"] = (regime_violation(rec["esf"], rec["best_smiles"], cfg.backends[-1].name)
                           if cfg.objective == ESF_OBJECTIVE else None)
    # the best molecule's structure-stage mobility, said on the best line (newuser49 #1: the line
    # gave the molecule stage's value and global minimum after the better ranking level had moved both)
    rec["best_structure_stage"] = next(
        (best_structure_stage(e) for e in rec["esf"]
         if e.get("source") == "structure stage" and e.get("smiles") == rec["best_smiles"]),
        None) if cfg.objective == ESF_OBJECTIVE else None
    rec["lab"] = lab_results(store, cfg, structures)  # None without a lab
    # the full ranking served the ranks above; the record lists the best structures only
    rec["structures"] = [{k: v for k, v in r.items() if k != RANKING} for r in structures]
    return rec


def value_warnings(store: Store, cfg: CampaignConfig) -> list[dict[str, Any]]:
    """The warnings the molecule-stage levels put on their results (``extra["warnings"]``,
    e.g. :func:`sim_backends.reorg.component_imbalance_warning`), of the latest result per
    molecule and level: ``name`` (or the SMILES), ``smiles``, ``backend``, ``value`` (the
    objective's, None when the result has none) and ``warnings``. Such values stay values
    (unlike an unreliable one, they are used and can be the best)."""
    levels = {b.name for b in cfg.backends}
    latest: dict[tuple[int, str], Any] = {}
    for ev in store.evaluations(status="ok"):  # oldest first: the latest result wins
        if ev.structure_id is None and ev.backend in levels:
            latest[(ev.molecule_id, ev.backend)] = ev
    mols = {m["id"]: m for m in store.molecules()}
    out = []
    for (mol_id, backend), ev in latest.items():
        if not ev.extra.get("warnings"):
            continue
        m = mols.get(mol_id)
        smiles = m["smiles"] if m else str(mol_id)
        out.append({"name": (m["name"] if m else None) or smiles, "smiles": smiles, "backend": backend,
                    "value": ev.values.get(cfg.objective), "warnings": [str(w) for w in ev.extra["warnings"]]})
    return out


def failure_summary(store: Store) -> dict[str, dict[str, Any]]:
    """Backend -> ``{"n": failed evaluations, "reason": the latest one's reason}``: why work
    failed, in the status itself rather than only in the store."""
    out: dict[str, dict[str, Any]] = {}
    for ev in store.evaluations(status="failed"):  # oldest first: the last reason seen is the latest
        f = out.setdefault(ev.backend, {"n": 0, "reason": ""})
        f["n"] += 1
        reason = (ev.reason or "").strip()
        if reason:
            f["reason"] = reason.splitlines()[0][:300]
    return out


def best_line(rec: dict[str, Any]) -> str:
    """``lambda+ = 15.9 kJ/mol (0.165 eV), B3LYP/6-31G//GFN2-xTB geometries: pentacene``."""
    obj = rec["objective"]
    if rec["best"] is None:
        note = rec.get("best_note") or f"no {obj['level']} result yet"
        return f"none yet ({note})"
    who = rec["best_name"] or rec["best_smiles"]
    smiles = f"  {rec['best_smiles']}" if rec["best_name"] and rec["best_name"] != rec["best_smiles"] else ""
    warning = f" -- {rec['best_warning']}, see its WARNING under ESF" if rec.get("best_warning") else ""
    if any(w["smiles"] == rec["best_smiles"] and w["value"] == rec["best"] for w in rec.get("value_warnings") or []):
        warning += " -- see its WARNING below"
    if rec.get("level_caveat"):  # the top level's known bias (dft-reorg on GFN2-xTB geometries)
        warning += f" -- caveat: {rec['level_caveat']}"
    return (f"{obj['symbol']} = {format_value(obj['name'], rec['best'])}, {obj['level']}: {who}{smiles}"
            f"{_structure_stage_text(rec.get('best_structure_stage'))}{warning}")


def best_structure_stage(e: dict[str, Any]) -> dict[str, Any]:
    """What the best line says of a structure-stage ESF record (:func:`agent.esf_report.esf_results`):
    its mean and sd, the ranking level, which of the window's structures the mean is over and
    the landscape's global minimum at the ranking level (``ranked_minimum``; the lowest
    structure with a mobility, ``global_minimum``, only when it is that one)."""
    from agent.esf_report import window_share

    gm, low = e.get("global_minimum") or {}, e.get("ranked_minimum") or {}
    _, k, n, share = window_share(e)
    same = not low or low.get("id") == gm.get("id")
    return {"mean": e["mean"], "sd": e["sd"], "energy_level": e.get("energy_level"),
            "n_with_mobility": k, "n_in_window": n, "share": share,
            "global_minimum": ({"id": gm.get("id"), "space_group": gm.get("space_group"), "z": reported_z(gm),
                                "has_mobility": True, "predicted": bool(gm.get("energy_predicted"))} if same else
                               {"id": low.get("id"), "has_mobility": False, "predicted": not low.get("computed")})}


def _structure_stage_text(st: dict[str, Any] | None) -> str:
    """`` -- at the structure stage (energies GFN2-xTB periodic (tblite)): mu_h = 0.48 ±
    0.18 cm2/(V s) (mobility for 7 of 60 structures in window, 27% of the Boltzmann weight),
    global minimum m103-m0003 (P-1, Z = 2)``: the best molecule's landscape mobility re-ranked
    by the structure stage, when it has one."""
    if not st:
        return ""
    from agent.esf_report import coverage_text, format_mobility

    gm = st.get("global_minimum") or {}
    where = ""
    if gm.get("id"):
        about = ([f"{gm.get('space_group') or '?'}, Z = {gm.get('z') or '?'}"] if gm.get("has_mobility", True)
                 else ["no mobility yet"])
        about += ["its energy predicted, not computed"] if gm.get("predicted") else []
        # not a global minimum until its energy is computed (newuser51 #1)
        label = "predicted leader" if gm.get("predicted") else "global minimum"
        where = f", {label} {gm['id']} ({', '.join(about)})"
    k, n = st.get("n_with_mobility"), st.get("n_in_window")
    cover = f" ({coverage_text(k, n, st.get('share'))})" if k is not None and n and k < n else ""
    level = f" (energies {st['energy_level']})" if st.get("energy_level") else ""
    return f" -- at the structure stage{level}: mu_h = {format_mobility(st['mean'], st['sd'])}{cover}{where}"


def constrained_value_text(key: str, value: float, backend: str | None) -> str:
    """``ip_gas_ev = 7.23 ± 0.32 eV (GFN2-xTB ΔSCF - 4.72 eV empirical shift)``:
    a constrained value with its unit, its typical error and level of theory where the
    backend declares them (:func:`agent.constraints.value_level`), else the backend's name;
    3 significant digits (a calibrated IP is good to a few tenths of an eV)."""
    from agent.constraints import value_level

    level, sd = value_level(backend, key) if backend else ("", None)
    unit = quantity(key)[2]
    pm = f" ± {sd:.2g}" if sd else ""
    return (f"{key} = {value:.3g}{pm}{' ' + unit if unit else ''}"
            + (f" ({level or backend})" if backend else ""))


def _duration(seconds: float) -> str:
    """``42 s``, ``16 min 30 s``, ``2 h 05 min``."""
    sec = int(round(seconds))
    if sec < 60:
        return f"{sec} s"
    if sec < 3600:
        return f"{sec // 60} min {sec % 60:02d} s"
    return f"{sec // 3600} h {sec % 3600 // 60:02d} min"


def pool_lines(rec: dict[str, Any]) -> list[str]:
    """``pool          122 of 147 valid molecules evaluated at some level (25 never)``: how much
    of the pool has a result at any molecule-stage level (a best is the best of those only);
    none for a record without the counts."""
    n, k, failed = rec.get("n_pool_valid"), rec.get("n_pool_evaluated"), rec.get("n_pool_failed_only") or 0
    if not n or k is None:
        return []
    rest = [f"{n - k - failed} never"] if n - k - failed else []
    rest += [f"{failed} only in failed evaluations"] if failed else []
    return [f"pool          {k} of {n} valid molecule{'s' if n != 1 else ''} evaluated at some level"
            + (f" ({', '.join(rest)})" if rest else "")]


def cpu_by_level_lines(rec: dict[str, Any]) -> list[str]:
    """``CPU by level  esf-refined 453.0 s (66 %), xtb-crystal 135.1 s (20 %), ...``: where the
    budget went, the levels largest first, with the charge for interrupted tasks; none for a
    record without the split or with one level."""
    by = {k: v for k, v in (rec.get("cpu_by_backend") or {}).items() if v > 0}
    if rec.get("interrupted_cpu_s"):
        by["interrupted tasks"] = float(rec["interrupted_cpu_s"])
    total = sum(by.values())
    if len(by) < 2 or total <= 0:
        return []
    return ["CPU by level  " + ", ".join(f"{k} {v:.1f} s ({100 * v / total:.0f} %)" for k, v in by.items())]


#: infeasible molecules named by ``status`` (the rest are counted)
N_INFEASIBLE_LISTED = 3


def status_lines(rec: dict[str, Any]) -> list[str]:
    """The text of ``crystal-agent status`` from :func:`status_record`."""
    s = rec
    lines = [
        f"campaign      {s['name']}",
        f"evaluations   {s['n_evaluations']} / {s['max_evaluations']} ({s['n_failed']} failed)",
        "by backend    " + ", ".join(f"{k}: {v}" for k, v in s["n_by_backend"].items()),
        *pool_lines(s),
        f"CPU spent     {s['spent_cpu_s']:.1f} s in the tasks"
        + (f" (their wall times add up to {s['spent_wall_s']:.1f} s)" if s.get("spent_wall_s") is not None else "")
        + (f"; the campaign ran {_duration(s['elapsed_s'])} wall time"
           + (f" over {s['n_runs']} runs" if s.get("n_runs", 0) > 1 else "")
           if s.get("elapsed_s") else "")
        + (f"; {s['interrupted_cpu_s']:.1f} s of it charged for {s['n_interrupted']} task"
           f"{'s' if s['n_interrupted'] != 1 else ''} that interrupted runs left unfinished (measured by their "
           "workers where recorded, else CPUs x wall)"
           if s.get("n_interrupted") else ""),
        *cpu_by_level_lines(s),
        f"best          {best_line(s)}",
    ]
    for backend, f in (s.get("failures") or {}).items():
        lines.append(f"failed        {backend}: {f['n']}" + (f" (latest: {f['reason']})" if f["reason"] else ""))
    if s.get("constraints"):
        src = s.get("best_constrained_level") or {}  # key -> the backend its value comes from
        own = ", ".join(constrained_value_text(k, v, src.get(k))
                        for k, v in (s.get("best_constrained") or {}).items())
        lines.append(f"constraints   {s['constraints']}" + (f"; the best has {own}" if own else ""))
    for name, why in (s.get("unreliable") or {}).items():
        lines.append(f"unreliable    {name}: {why}; not taken as the best")
    obj = s.get("objective") or {}
    for w in s.get("value_warnings") or []:
        at = (f" ({obj['symbol']} = {format_value(obj['name'], w['value'])})"
              if w["value"] is not None and obj.get("name") else "")
        lines += [f"WARNING: {w['name']} at {w['backend']}{at}: {text}" for text in w["warnings"]]
    for name, by in (s.get("unreliable_cheap") or {}).items():
        for backend, why in by.items():
            lines.append(f"WARNING: {name} at {backend}: {why}; not used to choose molecules")
    if s.get("infeasible"):
        shown = list(s["infeasible"].items())[:N_INFEASIBLE_LISTED]
        more = len(s["infeasible"]) - len(shown)
        n = len(s["infeasible"])
        levels = "; ".join(f"{k} at " + (lv[0] if len(lv) == 1 else f"the most accurate computed of {', '.join(lv)}")
                           for k, lv in (s.get("constraint_levels") or {}).items())
        lines.append(f"infeasible    {n} molecule{'s' if n != 1 else ''} excluded"
                     + (f" ({levels})" if levels else "") + ": "
                     + "; ".join(f"{who}: {why}" for who, why in shown)
                     + (f"; and {more} more (status --json lists all)" if more > 0 else ""))
    lines += structure_lines(s.get("structures") or [])
    from agent.esf_report import esf_lines
    from agent.lab.summary import lab_lines

    lines += esf_lines(s.get("esf") or [])
    lines += lab_lines(s.get("lab"))
    lines.append(f"state         {state_text(s)}")
    return lines


def state_text(s: dict[str, Any]) -> str:
    """``finished: <reason>``, ``running (pid 4242); in flight: esf-refined of pentacene (1:40)``,
    or ``stopped before its end`` with
    what a resume continues and will charge for the tasks the stopped run left unfinished."""
    if s["finished"]:
        return f"finished: {s['stop_reason']}"
    if s.get("running_pid"):
        busy = s.get("running_tasks") or []
        return f"running (pid {s['running_pid']})" + (f"; in flight: {', '.join(busy)}" if busy else "")
    text = f"stopped before its end; `crystal-agent resume {s['name']}` continues it"
    if n := s.get("n_unsettled"):
        what = f" ({', '.join(s['unsettled_tasks'])})" if s.get("unsettled_tasks") else ""
        text += (f"; {n} task{'s' if n != 1 else ''} running when it stopped{what} will be charged "
                 f"{s['unsettled_cpu_s']:.1f} CPU s when it resumes (not counted above yet)")
    return text


def z_prime(recorded: float | None, space_group: str | None, z: int | None) -> float | None:
    """Independent molecules of a structure: the CSP's record, else Z over the number of general
    positions of its space group in the cell Z is counted in (conventional for centred groups,
    as the stored cells are); None when neither is known."""
    if recorded is not None:
        return float(recorded)
    n = _general_positions(space_group) if space_group and z else None
    return None if not n else float(z) / n


@functools.lru_cache(maxsize=None)
def _general_positions(symbol: str) -> int | None:
    """Symmetry operations (centring included) of a space group's conventional cell."""
    from pymatgen.symmetry.groups import SpaceGroup

    try:
        return len(SpaceGroup(symbol).symmetry_ops)
    except (ValueError, KeyError):
        return None


def reported_z(r: dict[str, Any]) -> int | str:
    """Molecules per cell as the structure's CIF states it (the cell of its detected symmetry,
    which can hold fewer molecules than the search cell in ``z``), else the search cell's."""
    from sim_backends.csp.landscape import cif_formula_units

    z = cif_formula_units(r["cif"], None) if r.get("cif") else None
    return z or r.get("z") or "?"
