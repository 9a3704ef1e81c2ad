"""What a campaign found, in words a chemist reads: every figure with its quantity, unit
and level of theory.

* :func:`quantity` -- label, short symbol and unit of a computed value (``reorg_energy_kjmol``
  is the "hole reorganisation energy λ+" in kJ/mol); plots and text use the same names.
* :func:`level_of_theory` -- the human-readable level of a configured backend, declared by
  the backend (``level_of_theory(params)``; the description as a fallback).
* :func:`structure_results` -- per CSP landscape of a live campaign, the structures ranked at
  the highest structure level with the Delta-GP posterior (mean, 1-sigma; exact where
  computed), space group, density, Z and CIF path; :func:`save_structure_results` writes
  them into the store (meta ``structure_results``), and :func:`stored_structure_results`
  reads them back for ``status`` (store only), adding results computed since.
* :func:`status_record` / :func:`status_lines` -- the ``crystal-agent status`` record
  (``--json``) and text, also printed at the end of ``run`` / ``resume``.

Importing this module is cheap; the structure posterior needs the campaign's models.
"""

from __future__ import annotations

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
    "energy_kjmol": ("lattice energy", "E_latt", "kJ/mol per molecule"),
    "global_min_energy_kjmol": ("CSP global-minimum lattice energy", "E_latt,min", "kJ/mol per molecule"),
    "f_vib_kjmol": ("vibrational free energy F_vib", "F_vib", "kJ/mol per molecule"),
    "zpe_kjmol": ("zero-point energy", "ZPE", "kJ/mol per molecule"),
    "density_gcm3": ("density", "rho", "g/cm3"),
    "global_min_density_gcm3": ("density of the CSP global minimum", "rho", "g/cm3"),
    "log10_landscape_mobility_hole": ("log10 landscape hole mobility", "log10 mu_h", "log10 cm2/(V s)"),
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


def axis_label(name: str) -> str:
    """``"hole reorganisation energy λ+ (kJ/mol)"``: a plot axis for a value name."""
    label, _, unit = quantity(name)
    return f"{label} ({unit})" if unit else label


def format_value(name: str, value: float, std: float | None = None) -> str:
    """``"15.9 kJ/mol (0.165 eV)"`` / ``"-65.3 ± 1.2 kJ/mol per molecule"``."""
    _, _, unit = quantity(name)
    if name.startswith("log10_") and unit.startswith("log10 "):  # e.g. a mobility
        pm = f" ± {std:.2f}" if std is not None and math.isfinite(std) and std > 0 else ""
        return f"{value:.2f}{pm} (= {10 ** value:.1e} {unit[6:]})"
    pm = f" ± {std:.1f}" if std is not None and math.isfinite(std) and std > 0 else ""
    text = f"{value:.1f}{pm} {unit}".rstrip()
    if unit == "kJ/mol":
        text += f" ({value / KJMOL_PER_EV:.3f} eV)"
    return text


def level_caveat(backend: BackendConfig | None) -> str:
    """The known systematic error a configured backend declares (``Backend.caveat``), or ''."""
    if backend is None:
        return ""
    from sim_backends.registry import UnknownBackendError, backend_class

    try:
        return str(backend_class(backend.name).caveat)
    except UnknownBackendError:
        return ""


def level_of_theory(backend: BackendConfig | None) -> str:
    """The level of a configured backend (name and params) as the backend declares it."""
    if backend is None:
        return ""
    from sim_backends.registry import backend_class

    try:
        cls = backend_class(backend.name)
        inst = cls(**dict(backend.params))
        params = dict(backend.params)
        if callable(getattr(inst, "level_of_theory", None)):
            return str(inst.level_of_theory(params))
        if callable(getattr(inst, "_level", None)):
            return str(inst._level(params))
        return cls.description or backend.name
    except Exception:  # noqa: BLE001 - a label must never fail a summary
        return backend.name


# -- structure stage ------------------------------------------------------------------------
def structures_dir(campaign_directory: Path) -> Path:
    return Path(campaign_directory) / "structures"


def structure_results(campaign: Campaign, top: int = N_TOP_STRUCTURES) -> list[dict[str, Any]]:
    """Per landscape of the campaign's structure stage, the structures ranked at the
    refinement level: computed energies exact, the others the Delta-GP posterior mean
    and 1-sigma (``corrected_landscape``); before any refinement result, the force-field
    ranking. Structures whose calculation at the level failed are not ranked. Each
    record: ``molecule_id, smiles, name, level, ff_level, n_structures, n_computed,
    n_failed, top`` (list of :func:`landscape_rows` records)."""
    stage = campaign.stage
    if stage is None:
        return []
    cfg = campaign.cfg.structures
    level, ff_level = level_of_theory(cfg.refine), level_of_theory(cfg.csp)
    out = []
    sampling = csp_sampling(campaign.store, cfg.csp.name if cfg.csp else "")
    for mol_id, land in sorted(stage.landscapes.items()):
        table = landscape_rows(campaign, mol_id)
        has_level = any(r["computed"] for r in table)
        ranked = sorted((r for r in table if not r["failed"]),  # unphysical or failed at the level
                        key=lambda r: rank_key(r) if has_level else (False, r["ff_kjmol"]))
        idx = campaign._index_of.get(mol_id)
        out.append({
            "molecule_id": int(mol_id), "smiles": land.smiles,
            "name": campaign.names[idx] if idx is not None else land.smiles,
            "level": level if has_level else ff_level, "refine_level": level, "ff_level": ff_level,
            "caveat": level_caveat(cfg.refine) if has_level else "",
            "n_structures": len(land.ids), "n_computed": len(land.computed), "n_failed": len(land.failed),
            "top": ranked[:top], "csp_sampling": sampling.get(int(mol_id)),
        })
    return out


def csp_sampling(store: Store, csp_backend: str) -> dict[int, dict[str, Any]]:
    """Per molecule, how converged its CSP search was (from the CSP evaluation's
    ``extra["csp"]["convergence"]``, :mod:`sim_backends.csp.sampling`): ``converged,
    stopped_by, n_trials, n_groups, n_not_converged``."""
    out: dict[int, dict[str, Any]] = {}
    for ev in store.evaluations():
        conv = (ev.extra.get("csp") or {}).get("convergence") if ev.backend == csp_backend and ev.ok else None
        if conv:
            per = conv.get("per_space_group") or {}
            out[int(ev.molecule_id)] = {
                "converged": bool(conv.get("converged")), "stopped_by": conv.get("stopped_by"),
                "n_trials": int(sum(s.get("n_trials", 0) for s in per.values())), "n_groups": len(per),
                "n_not_converged": sum(not s.get("converged") for s in per.values())}
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
    import numpy as np

    from agent.surrogates.structure_gp import SurrogateError

    stage = campaign.stage
    land = stage.landscapes[mol_id]
    try:
        corr = stage.corrected_landscape(mol_id)
    except (SurrogateError, ValueError, RuntimeError):  # no model: computed energies only
        corr = None
    rows = {r["id"]: r for r in campaign.store.structures(mol_id)}
    cif_dir = structures_dir(campaign.directory)
    out = []
    for i, sid in enumerate(land.ids):
        r = rows.get(sid)
        if i in land.computed:
            e, std = land.computed[i], 0.0
        elif corr is not None:
            e, std = float(corr["corrected_kjmol"][i]), float(corr["std_kjmol"][i])
        else:
            e, std = None, None
        out.append({
            "id": sid, "space_group": r["space_group"] if r else None,
            "density_gcm3": r["density_gcm3"] if r else None, "z": r["z"] if r else None,
            "ff_kjmol": float(land.ff_kjmol[i]), "energy_kjmol": e, "std_kjmol": std,
            "computed": i in land.computed, "failed": i in land.failed and i not in land.computed,
            "f_vib_kjmol": land.f_vib.get(i),
            "cif": str(cif_dir / f"{sid}.cif"),
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
    saved posterior, the computed structures only (exact, ranked)."""
    if not cfg.structures.enabled:
        return []
    raw = store.get_meta(STRUCTURE_RESULTS_META)
    saved = json.loads(raw)["landscapes"] if raw else []
    from agent.stages.structure import level_value_keys

    refine = cfg.structures.refine.name if cfg.structures.refine else None
    value_key = level_value_keys(cfg.structures)[0]  # what the first structure level ranks by
    computed: dict[str, float] = {}
    failed: set[str] = set()
    for ev in store.evaluations():
        v = ev.values.get(value_key)
        if ev.structure_id and ev.backend == refine and ev.ok and v is not None and math.isfinite(v):
            computed[ev.structure_id] = float(v)
        elif ev.structure_id and ev.backend == refine:
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
            "level": level, "refine_level": level, "ff_level": level_of_theory(cfg.structures.csp),
            "n_structures": min(len(_ids_of(store, mol_id)), cfg.structures.max_structures),
            "n_computed": 0, "top": []})
        # force-field-ranked entries (saved before any refinement) have no energy at the level
        top = {r["id"]: r for r in rec["top"] if r.get("energy_kjmol") is not None}
        top[row["id"]] = {**top.get(row["id"], {}), "id": row["id"], "space_group": row["space_group"],
                          "density_gcm3": row["density_gcm3"], "z": row["z"], "ff_kjmol": row["energy_kjmol"],
                          "energy_kjmol": computed[row["id"]], "std_kjmol": 0.0, "computed": True,
                          "cif": str(structures_dir(Path(store.path).parent) / f"{row['id']}.cif")}
        rec["top"] = sorted(top.values(), key=lambda r: r["energy_kjmol"])[:N_TOP_STRUCTURES]
        rec["level"] = level
        rec["caveat"] = level_caveat(cfg.structures.refine)
        ids = _ids_of(store, mol_id)
        rec["n_computed"] = max(int(rec.get("n_computed") or 0), sum(sid in computed for sid in ids))
        rec["n_failed"] = max(int(rec.get("n_failed") or 0), sum(sid in failed for sid in ids))
    return [by_mol[k] for k in sorted(by_mol)]


def _ids_of(store: Store, mol_id: int) -> list[str]:
    return [r["id"] for r in store.structures(mol_id)]


def structure_lines(results: list[dict[str, Any]]) -> list[str]:
    """Text lines of structure results: per landscape its level and best structures."""
    lines = []
    for rec in results:
        n_s = rec.get("n_structures")
        n_f = rec.get("n_failed") or 0
        head = (f"structures    {rec.get('name')}: {rec.get('n_computed', 0)} of "
                f"{n_s if n_s is not None else '?'} computed at {rec.get('refine_level')}"
                + (f" ({n_f} failed)" if n_f else ""))
        lines.append(head)
        if samp := rec.get("csp_sampling"):
            lines.append(f"  CSP search: {samp['n_trials']} trials in {samp['n_groups']} space groups, "
                         + ("low-energy region converged" if samp["converged"] else
                            f"NOT converged in {samp['n_not_converged']} space groups (stopped by "
                            f"{samp['stopped_by']}; WARNING: raise n_trials)"))
        if not rec.get("top"):
            continue
        at = rec.get("level")
        lines.append(f"  best at {at}" + ("" if rec.get("n_computed") else " (nothing refined yet)") + ":")
        if rec.get("caveat") and rec.get("n_computed"):
            lines.append(f"  note: {rec['caveat']}")
        for r in rec["top"]:
            if r.get("energy_kjmol") is not None:
                e = format_value("energy_kjmol", r["energy_kjmol"],
                                 None if r.get("computed") else r.get("std_kjmol"))
                how = "computed" if r.get("computed") else "Delta-GP prediction, 1 sigma"
            else:
                e = format_value("energy_kjmol", r["ff_kjmol"])
                how = "force field"
            dens = f"{r['density_gcm3']:.3f} g/cm3" if r.get("density_gcm3") is not None else "? g/cm3"
            fv = (f", F_vib {r['f_vib_kjmol']:.1f} kJ/mol per molecule" if r.get("f_vib_kjmol") is not None
                  else "")
            cif = f"  {r['cif']}" if r.get("cif") and Path(r["cif"]).is_file() else ""
            lines.append(f"  {r['id']:<12} E_latt = {e} ({how}){fv}; {r.get('space_group') or '?'}, "
                         f"Z = {reported_z(r)}, {dens}{cif}")
    return lines


# -- status ---------------------------------------------------------------------------------
def status_record(status: Status, store: Store, cfg: CampaignConfig) -> dict[str, Any]:
    """The status as a JSON-able dict: the :class:`~agent.campaign.Status` fields plus
    ``objective`` (name, label, unit, level of the best value) and ``structures``
    (:func:`stored_structure_results`)."""
    label, short, unit = quantity(cfg.objective)
    rec = dict(status.to_dict())
    rec["objective"] = {"name": cfg.objective, "label": label, "symbol": short, "unit": unit,
                        "level": level_of_theory(cfg.backends[-1]), "direction": cfg.direction}
    rec["structures"] = stored_structure_results(store, cfg)
    from agent.esf_report import esf_results

    rec["esf"] = esf_results(store, cfg, Path(store.path).parent)  # [] without ESF levels
    return rec


def best_line(rec: dict[str, Any]) -> str:
    """``lambda+ = 15.9 kJ/mol (0.165 eV), B3LYP/6-31G//GFN2-xTB geometries: pentacene``."""
    obj = rec["objective"]
    if rec["best"] is None:
        note = rec.get("best_note") or f"no {obj['level']} result yet"
        return f"none yet ({note})"
    who = rec["best_name"] or rec["best_smiles"]
    smiles = f"  {rec['best_smiles']}" if rec["best_name"] and rec["best_name"] != rec["best_smiles"] else ""
    return f"{obj['symbol']} = {format_value(obj['name'], rec['best'])}, {obj['level']}: {who}{smiles}"


#: infeasible molecules named by ``status`` (the rest are counted)
N_INFEASIBLE_LISTED = 3


def status_lines(rec: dict[str, Any]) -> list[str]:
    """The text of ``crystal-agent status`` from :func:`status_record`."""
    s = rec
    lines = [
        f"campaign      {s['name']}",
        f"evaluations   {s['n_evaluations']} / {s['max_evaluations']} ({s['n_failed']} failed)",
        "by backend    " + ", ".join(f"{k}: {v}" for k, v in s["n_by_backend"].items()),
        f"CPU spent     {s['spent_cpu_s']:.1f} s in the tasks"
        + (f" (their wall times add up to {s['spent_wall_s']:.1f} s)" if s.get("spent_wall_s") is not None else ""),
        f"best          {best_line(s)}",
    ]
    if s.get("constraints"):
        src = s.get("best_constrained_level") or {}
        own = ", ".join(f"{k} = {v:.4g}" + (f" ({src[k]})" if k in src else "")
                        for k, v in (s.get("best_constrained") or {}).items())
        lines.append(f"constraints   {s['constraints']}" + (f"; the best has {own}" if own else ""))
    if s.get("infeasible"):
        shown = list(s["infeasible"].items())[:N_INFEASIBLE_LISTED]
        more = len(s["infeasible"]) - len(shown)
        n = len(s["infeasible"])
        lines.append(f"infeasible    {n} molecule{'s' if n != 1 else ''} excluded: "
                     + "; ".join(f"{who}: {why}" for who, why in shown)
                     + (f"; and {more} more (status --json lists all)" if more > 0 else ""))
    lines += structure_lines(s.get("structures") or [])
    from agent.esf_report import esf_lines

    lines += esf_lines(s.get("esf") or [])
    lines.append(f"state         {'finished: ' + s['stop_reason'] if s['finished'] else 'not finished'}")
    return lines


def reported_z(r: dict[str, Any]) -> int | str:
    """Molecules per cell as the structure's CIF states it (the cell of its detected symmetry,
    which can hold fewer molecules than the search cell in ``z``), else the search cell's."""
    from sim_backends.csp.landscape import cif_formula_units

    z = cif_formula_units(r["cif"], None) if r.get("cif") else None
    return z or r.get("z") or "?"
