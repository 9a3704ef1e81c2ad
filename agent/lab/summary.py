"""What the lab robot found, where a chemist looks: the ``lab`` section of ``status`` (text
and ``--json``), the run summary and ``report/summary.txt``.

* :func:`lab_results` -- from the store alone (``lab_experiments``, ``observed_forms``,
  ``structures``) and the structure results of the same status
  (:func:`agent.summary.stored_structure_results` or, in ``report``, the live ones): per
  experiment the request (molecule, method, solvent, temperature), its state, the lab's
  outcome, the identified form(s) with their rank and lattice energy on the landscape (at
  the structure level that ranks it, computed or predicted, and at the force
  field), the identification's confidence, and whether the result was fed back as an
  observed form (and why not). A result that matches no form (an amorphous product, or
  an unknown crystal form) names no confidence: it names the closest structure and its
  WCC score, e.g. ``amorphous (no Bragg peaks); no form identified (best crystalline
  match m5-m0006, WCC 0.49)``.
* :func:`lab_lines` -- the text lines.

Importing this module is cheap.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.config import CampaignConfig
    from agent.store import Store

#: units of the fields of a lab record (``status --json``)
UNITS = {"temperature_K": "K", "confidence": "probability (0-1), calibrated softmax of the PXRD match scores",
         "score": "weighted cross-correlation (0-1)", "weight_fraction": "mass fraction (0-1)",
         "energy_kjmol": "kJ/mol per molecule", "std_kjmol": "kJ/mol per molecule (1 sigma)",
         "ff_kjmol": "kJ/mol per molecule", "ff_rel_kjmol": "kJ/mol per molecule, relative to the lowest",
         "rank": "1 = lowest at the level", "ff_rank": "1 = lowest at the force field"}
#: experiment states that are final
FINAL_STATES = ("done", "failed", "cancelled")


def lab_results(store: Store, cfg: CampaignConfig, structures: list[dict[str, Any]],
                directory: Path | None = None) -> dict[str, Any] | None:
    """The lab section of a status (see the module docstring); None for a campaign without
    a ``[lab]`` table and without experiments. ``structures`` are the status's structure
    records (with their full ranking, :data:`agent.summary.RANKING`, where known)."""
    rows = store.lab_experiments()
    if cfg.lab is None and not rows:
        return None
    directory = Path(directory) if directory is not None else Path(store.path).parent
    mols = {int(m["id"]): m for m in store.molecules()}
    observed = dict(store.observed_form_sources())
    min_conf = cfg.lab.min_confidence if cfg.lab is not None else None
    experiments = []
    for row in rows:
        mol_id = int(row["molecule_id"])
        req = json.loads(row["request_json"])
        ident = json.loads(row["identification_json"]) if row["identification_json"] else None
        result = json.loads(row["result_json"]) if row["result_json"] else None
        mol = mols.get(mol_id)
        ranks = _ranks(store, cfg, structures, mol_id)
        forms = []
        if ident is not None:
            comps = ident["components"] if ident["is_mixture"] else (
                [[ident["matched_structure_id"], 1.0]] if ident["matched_structure_id"] else [])
            forms = [{"structure_id": sid, "weight_fraction": float(w), **ranks(sid),
                      "observed": observed.get(sid) is not None, "observed_by": observed.get(sid)}
                     for sid, w in comps]
        fed_back = [f["structure_id"] for f in forms if f["observed_by"] == row["request_id"]]
        plot = directory / "report" / "lab" / f"{row['request_id']}_pxrd.png"
        experiments.append({
            "request_id": row["request_id"], "molecule_id": mol_id,
            "name": (mol["name"] or mol["smiles"]) if mol else None, "smiles": req.get("smiles"),
            "method": req.get("method"), "solvent": req.get("solvent"),
            "temperature_K": req.get("temperature_K"), "measure": req.get("measure") or ["pxrd"],
            "conditions_note": req.get("note"),  # where the conditions come from (a default assumption, the config)
            "state": row["state"], "reason": row["reason"] or "",
            "outcome": (ident or result or {}).get("outcome"),
            "matched_structure_id": row["matched_structure_id"], "confidence": row["confidence"],
            "score": ident.get("score") if ident else None,
            # the best-scoring structure, a match or not (None in records from before it was kept)
            "closest_structure_id": ident.get("closest_structure_id") if ident else None,
            "is_match": ident.get("is_match") if ident else None,
            "is_mixture": ident.get("is_mixture") if ident else None,
            "forms": forms, "fed_back": bool(fed_back), "fed_back_ids": fed_back,
            "not_fed_back_because": None if fed_back or ident is None else _why_not(ident, forms, min_conf),
            "measured_properties": dict((result or {}).get("properties") or {}),
            "pxrd_plot": str(plot) if plot.is_file() else None,
        })
    n_open = sum(e["state"] not in FINAL_STATES for e in experiments)
    return {"adapter": cfg.lab.adapter if cfg.lab is not None else None, "min_confidence": min_conf,
            "n_experiments": len(experiments), "n_open": n_open,
            "n_done": sum(e["state"] == "done" for e in experiments),
            "n_failed": sum(e["state"] in ("failed", "cancelled") for e in experiments),
            "experiments": experiments, "units": UNITS}


def _ranks(store: Store, cfg: CampaignConfig, structures: list[dict[str, Any]], mol_id: int) -> Any:
    """structure id -> its place on the molecule's landscape: ``rank``/``n_ranked``,
    ``energy_kjmol``, ``std_kjmol``, ``computed``, ``level`` at the level the status ranks by
    (None where unknown), and ``ff_rank``/``n_ff``, ``ff_kjmol``, ``ff_rel_kjmol`` at the
    force field (the landscape the lab identifies against: the lowest ``max_structures``)."""
    from agent.summary import RANKING

    ff_rows = store.structures(mol_id)[: cfg.structures.max_structures]
    ff = {r["id"]: (n, r["energy_kjmol"]) for n, r in enumerate(ff_rows, 1)}
    ff0 = ff_rows[0]["energy_kjmol"] if ff_rows else None
    rec = next((r for r in structures if int(r["molecule_id"]) == mol_id), None) or {}
    ranking = rec.get(RANKING) or []
    # listed structures first (their energies without a full ranking), the ranking over them
    at = {r["id"]: (r.get("rank"), r.get("energy_kjmol"), r.get("std_kjmol"), r.get("computed"))
          for r in [*(rec.get("top") or []), *(rec.get("observed") or []), rec.get("best_computed") or {}]
          if r.get("id")}
    at.update({e[0]: (n, e[1], e[2], bool(e[3])) for n, e in enumerate(ranking, 1)})

    def of(sid: str) -> dict[str, Any]:
        n_ff, e_ff = ff.get(sid, (None, None))
        rank, energy, std, computed = at.get(sid, (None, None, None, None))
        return {"ff_rank": n_ff, "n_ff": len(ff_rows), "ff_kjmol": e_ff,
                "ff_rel_kjmol": None if e_ff is None or ff0 is None else e_ff - ff0,
                "rank": rank, "n_ranked": len(ranking) or rec.get("n_ranked"), "energy_kjmol": energy,
                "std_kjmol": std, "computed": computed, "level": rec.get("level"),
                "prediction": rec.get("ranking_model")}

    return of


def _why_not(ident: dict[str, Any], forms: list[dict[str, Any]], min_conf: float | None) -> str:
    if (not ident.get("is_match") or not forms) and ident.get("outcome") == "amorphous":
        return "an amorphous product is not a crystal form of the landscape"
    if not ident.get("is_match") or not forms:
        return "the pattern matches no structure of the landscape"
    if min_conf is not None and (ident.get("confidence") or 0.0) < min_conf:
        return f"confidence {ident['confidence']:.2f} below [lab] min_confidence {min_conf:g}"
    if all(f["observed_by"] for f in forms):
        return "already observed by " + ", ".join(sorted({f["observed_by"] for f in forms}))
    return "not recorded as observed"


def _form_text(f: dict[str, Any]) -> str:
    """``m5-m0001 (rank 1 of 19 at LEVEL, E_latt = -43.8 kJ/mol per molecule, computed;
    force field rank 1 of 19)``."""
    from agent.summary import format_value, prediction_label

    parts = []
    if f["energy_kjmol"] is not None:
        e = format_value("energy_kjmol", f["energy_kjmol"], None if f["computed"] else f["std_kjmol"])
        how = "computed" if f["computed"] else prediction_label(f)
        rank = f"rank {f['rank']} of {f['n_ranked'] or '?'} " if f["rank"] is not None else ""
        parts.append(f"{rank}at {f['level']}: E_latt = {e} ({how})")
    elif f["rank"] is not None:
        parts.append(f"rank {f['rank']} of {f['n_ranked'] or '?'} at {f['level']}")
    if f["ff_rank"] is not None:
        parts.append(f"force field rank {f['ff_rank']} of {f['n_ff']}, "
                     f"{f['ff_rel_kjmol']:.1f} kJ/mol per molecule above its minimum")
    else:
        parts.append("not on the stored landscape")
    return f"{f['structure_id']} ({'; '.join(parts)})"


def lab_lines(lab: dict[str, Any] | None) -> list[str]:
    """Text lines of :func:`lab_results` (nothing for a campaign without a lab)."""
    if not lab:
        return []
    n = lab["n_experiments"]
    head = (f"lab           {n} experiment{'s' if n != 1 else ''}"
            + (f" ({lab['adapter']} adapter)" if lab.get("adapter") else "")
            + (f": {lab['n_done']} done, {lab['n_open']} open, {lab['n_failed']} failed" if n else
               ": none sent yet (the lab gets a molecule once its CSP landscape is stored)"))
    lines = [head]
    for e in lab["experiments"]:
        how = (e["method"] or "?").replace("_", " ")
        how += f" from {e['solvent']}" if e.get("solvent") else ""
        how += f" at {e['temperature_K']:.2f} K" if e.get("temperature_K") is not None else ""
        how += " (default assumption: not in the substances table)" if str(
            e.get("conditions_note") or "").startswith("default assumption") else ""
        what = ", ".join(m.upper() if m == "pxrd" else m for m in e["measure"])
        text = f"  {e['request_id']}  {e['name']}: {how}, {what}: "
        if e["state"] != "done":
            text += e["state"] + (f" ({e['reason']})" if e["reason"] else "")
            lines.append(text)
            continue
        amorphous = e["outcome"] == "amorphous"  # the lab's verdict: no Bragg peaks, unless a form matched
        text += (e["outcome"] or "done") + (" (no Bragg peaks)" if amorphous and not e["forms"] else "")
        if e["forms"]:
            mix = " (mixture)" if e["is_mixture"] else ""
            text += f"; matched{mix} " + " + ".join(
                (f"{f['weight_fraction']:.0%} " if e["is_mixture"] else "") + _form_text(f) for f in e["forms"])
            if e["confidence"] is not None:
                text += f", confidence {e['confidence']:.2f}"
        elif e["score"] is not None:
            # no match: its confidence (0) is no verdict on the outcome; say how close the
            # nearest form came, as a score (newuser46a #8)
            closest = f"{e['closest_structure_id']}, " if e.get("closest_structure_id") else ""
            text += (f"; no form identified (best {'crystalline ' if amorphous else ''}match "
                     f"{closest}WCC {e['score']:.2f}{'' if amorphous else ', too low for a match'})")
        lines.append(text)
        if e["fed_back"]:
            pending = [f["structure_id"] for f in e["forms"] if f["structure_id"] in e["fed_back_ids"]
                       and not f["computed"]]
            lines.append(f"    fed back: {', '.join(e['fed_back_ids'])} recorded as observed form"
                         + ("s" if len(e["fed_back_ids"]) > 1 else "")
                         + (f"; {', '.join(pending)} not computed at the structure level yet (the refinement "
                            "takes observed forms first; `crystal-agent refine NAME --budget N` adds budget)"
                            if pending else ""))
        elif e["not_fed_back_because"]:
            lines.append(f"    not fed back: {e['not_fed_back_because']}")
        if e["measured_properties"]:
            from agent.summary import format_value, prediction_label

            lines.append("    measured: " + ", ".join(f"{k} = {format_value(k, v)}"
                                                      for k, v in sorted(e["measured_properties"].items())))
        if e["pxrd_plot"]:
            lines.append(f"    PXRD measured vs simulated: {e['pxrd_plot']}")
    return lines
