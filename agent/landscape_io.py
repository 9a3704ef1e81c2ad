"""Write a campaign's landscapes as a crystallographer reads them.

:func:`write_campaign_structures` writes the landscapes of a campaign's structure stage
(``runs/<name>/structures/``): symmetrised CIFs with the energies at every level, and per
landscape a CSV with one ``E_<LEVEL>_kJmol_per_mol`` / ``dE_<LEVEL>_kJmol_per_mol`` column
pair per level, ``levels.json`` naming the level of theory of each. An export replaces the
previous one: the files an earlier export wrote there (:data:`MANIFEST`) and this one does
not are deleted, nothing else of the folder is touched (``esf_m<id>_<structure>.cif`` of
:func:`agent.esf_report.write_esf_cifs` lives there too). Reading landscapes from disk is
:meth:`sim_backends.landscape.Landscape.read`.

Importing this module is cheap.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

#: the names of the files the last :func:`write_campaign_structures` wrote into its folder
#: (a JSON list), so the next export deletes those it does not write again and no other file
MANIFEST = ".write_campaign_structures.json"
#: where an export is written before its files replace the previous export's
_STAGING = ".write_campaign_structures.tmp"


def write_campaign_structures(campaign: Any, out_dir: str | Path | None = None) -> list[Path]:
    """Write a campaign's CSP landscapes as a crystallographer reads them.

    Into ``out_dir`` (default ``runs/<name>/structures/``), per landscape molecule:

    * ``<structure id>.cif`` for every structure (:func:`sim_backends.csp.landscape.crystal_cif`:
      symmetrised to its space group, in the ITA standard setting of its symbol; molecule
      formula, Z in molecules of that cell, the same as the stored cell's) with its
      energies at every level computed (force-field lattice energy; refinement-level lattice
      energy, computed or the prediction (Delta-GP, or the constant shift when the
      Delta-GP fails the acquisition's skill test) with its 1-sigma; the value of every
      further energy level, e.g. F_vib, where computed);
    * ``landscape_m<molecule id>.csv``: one row per structure ranked at the highest level
      (``rank``), columns ``id, rank, space_group, Z`` (the CIF's), ``Z_prime`` (independent molecules: the CSP's record, else Z over
      the space group's general positions; empty when neither is known), ``density_gcm3`` then, for the CSP
      level and the ranking level ``L`` (backend name), ``E_<L>_kJmol_per_mol`` (lattice
      energy, kJ/mol per molecule; empty where not computed), ``dE_<L>_kJmol_per_mol``
      (relative to the lowest), for the ranking level also ``E_<L>_best_kJmol_per_mol`` /
      ``E_<L>_std_kJmol_per_mol`` (the computed value, else the prediction's mean and 1-sigma)
      and ``status`` (``computed``, ``failed`` at that level, or ``predicted``); then one
      column per further level of ``[structures]`` in config order, its value where
      computed (:func:`level_column`: ``F_vib_phonon_kJmol_per_mol`` for an energy in
      kJ/mol per molecule, ``mobility_hole_cm2Vs_mobility-xtb`` for a property level); then
      ``observed`` (the lab request that observed the structure, else empty) and ``cif``;
    * ``energies.csv`` (``id, energy_kjmol, free_energy_kjmol, status, level``): the best
      estimate of each structure's energy at the ranking level (computed, else the
      prediction's mean; the force field for structures failed at that level) and E plus the
      second energy level's value (E + F_vib) where computed; ``status`` says which
      (``computed``, ``predicted``, ``failed``: the force field's energy; ``force field``
      where the ranking level has no value yet) and ``level`` the level of theory of
      ``energy_kjmol``. The table ``crystal-agent lab identify --structures`` reads beside
      the CIFs (by column name: the last two are ignored there);
    * ``levels.json``: backend name -> level of theory of each column.

    The files of an earlier export into ``out_dir`` that this one does not write (a
    structure of a landscape since re-made, a molecule no longer exported) are deleted
    (:func:`_replace_export`), so :meth:`sim_backends.landscape.Landscape.from_cif_dir` reads
    this export's structures only; every file is written into a staging folder first, so an
    export that fails part-way leaves the earlier one as it was.

    Returns:
        The paths written (none without a structure stage or landscape; the manifest aside).
    """
    from agent.summary import structures_dir

    stage = getattr(campaign, "stage", None)
    if stage is None or not stage.landscapes:
        return []
    out = Path(out_dir) if out_dir is not None else structures_dir(campaign.directory)
    out.mkdir(parents=True, exist_ok=True)
    stage_dir = out / _STAGING  # this writer's own: a crashed export's is replaced
    shutil.rmtree(stage_dir, ignore_errors=True)
    stage_dir.mkdir()
    try:
        names = _write_structures(campaign, stage, stage_dir)
        _replace_export(out, stage_dir, names)
    finally:
        shutil.rmtree(stage_dir, ignore_errors=True)
    return [out / n for n in names]


def _write_structures(campaign: Any, stage: Any, out: Path) -> list[str]:
    """The files of :func:`write_campaign_structures`, written into ``out``; their names."""
    from agent.summary import csp_levels, landscape_rows, level_of_theory, observed_sources, quantity, rank_key
    from sim_backends.csp.landscape import LevelEnergy, cif_formula_units, crystal_cif

    scfg = campaign.cfg.structures
    ff, ref = scfg.csp.name, stage.refine.name
    further = further_levels(stage)
    levels = {ff: level_of_theory(scfg.csp), ref: level_of_theory(stage.refine)}
    ff_levels = csp_levels(campaign.store, ff)  # per molecule: the charges its search used
    header = [c["column"] for c in structures_table_columns(campaign, ff_levels)]
    ff_config_level = levels[ff]
    for lv, _, _ in further:
        levels[lv.name] = level_of_theory(lv)
    paths = []
    observed = observed_sources(campaign.store)
    best_energy: list[tuple[str, float, float | None, str, str]] = []  # for energies.csv
    for mol_id, land in sorted(stage.landscapes.items()):
        rows = landscape_rows(campaign, mol_id)
        levels[ff] = ff_levels.get(int(mol_id), ff_config_level)
        has_level = any(r["computed"] for r in rows)
        order = sorted(range(len(rows)), key=lambda k: rank_key(rows[k]) if has_level
                       else (False, rows[k]["ff_kjmol"]))
        rank = {k: n for n, k in enumerate(order, 1)}
        name = campaign.names[campaign._index_of[mol_id]] if mol_id in campaign._index_of else land.smiles
        values = [get(mol_id) for _, _, get in further]
        table = out / f"landscape_m{mol_id}.csv"
        with table.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            for k in order:
                r = rows[k]
                energies = [LevelEnergy(levels[ff], "lattice energy", r["ff_kjmol"]),
                            LevelEnergy(levels[ff], "relative energy", r["ff_rel_kjmol"])]
                if r["energy_kjmol"] is not None and not r["failed"]:
                    what = "lattice energy" if r["computed"] else f"lattice energy, {r['prediction']} prediction"
                    energies += [LevelEnergy(levels[ref], what, r["energy_kjmol"],
                                             None if r["computed"] else r["std_kjmol"]),
                                 LevelEnergy(levels[ref], "relative energy" + ("" if r["computed"] else
                                                                               f", {r['prediction']} prediction"),
                                             r["rel_kjmol"])]
                for (lv, key, _), vals in zip(further, values, strict=True):
                    if key.endswith("_kjmol") and k in vals:  # energies (kJ/mol per molecule)
                        energies.append(LevelEnergy(levels[lv.name], quantity(key)[1], vals[k]))
                cif_path = out / f"{r['id']}.cif"
                cif_path.write_text(crystal_cif(land.landscape.minima[k].structure, n_molecules=int(r["z"] or 1), name=name,
                                                structure_id=r["id"], smiles=land.smiles, energies=energies,
                                                space_group=r["space_group"] or ""))
                paths.append(cif_path)
                status = "computed" if r["computed"] else "failed" if r["failed"] else "predicted"
                row = [r["id"], rank[k], r["space_group"], cif_formula_units(cif_path, r["z"]),
                       z_prime_cell(r.get("z_prime")), _fmt(r["density_gcm3"], 3),
                       _fmt(r["ff_kjmol"]), _fmt(r["ff_rel_kjmol"]),
                       _fmt(r["energy_kjmol"]) if r["computed"] else "", _fmt(r["energy_kjmol"]),
                       _fmt(r["std_kjmol"]), _fmt(r.get("rel_kjmol")), status]
                row += [_fmt(vals.get(k)) if key.endswith("_kjmol") else _fmt_g(vals.get(k))
                        for (_, key, _), vals in zip(further, values, strict=True)]
                row += [observed.get(r["id"], ""), cif_path.name]
                w.writerow(row)
                at_ref = r["energy_kjmol"] is not None and not r["failed"]
                e = r["energy_kjmol"] if at_ref else r["ff_kjmol"]
                # what the energy is: computed, predicted (at the ranking level) or, failed
                # there (or not ranked yet), the force field's
                best_energy.append((r["id"], e, None if r["f_vib_kjmol"] is None else e + r["f_vib_kjmol"],
                                    status if at_ref else "failed" if r["failed"] else "force field",
                                    levels[ref] if at_ref else levels[ff]))
        paths.append(table)
    energies_path = out / "energies.csv"  # what `crystal-agent lab identify --structures` reads
    with energies_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "energy_kjmol", "free_energy_kjmol", "status", "level"])
        w.writerows([sid, _fmt(e), _fmt(g), status, level] for sid, e, g, status, level in best_energy)
    paths.append(energies_path)
    levels_path = out / "levels.json"
    levels_path.write_text(json.dumps({"energy_unit": "kJ/mol per molecule", "levels": levels}, indent=2))
    paths.append(levels_path)
    return [p.name for p in paths]


def further_levels(stage: Any) -> list[tuple[Any, str, Any]]:
    """Every structure level after the ranking one, in config order, as ``(level config,
    value key, molecule id -> {landscape index: value})``; the stage keeps a second energy
    level's values (added to the first's) in ``f_vib``."""
    further = [(lv, key, lambda mid: stage.landscapes[mid].f_vib)
               for lv, key in zip(stage.levels[1:], stage.value_keys[1:], strict=True)]
    return further + [(p.level, p.value_key, lambda mid, p=p: p.state(mid).values) for p in stage.properties]


#: the ``file`` under which ``results_columns.csv`` describes the structures' landscape tables
STRUCTURES_TABLE = "structures/landscape_m<id>.csv"


def csp_level_text(campaign: Any, ff_levels: dict[int, str] | None = None) -> str:
    """The CSP level of a campaign's landscapes: the levels their searches recorded (the
    charges used, per molecule: :func:`agent.summary.csp_levels`), joined by " or ", else the
    configured one."""
    from agent.summary import csp_levels, level_of_theory

    csp = campaign.cfg.structures.csp
    if ff_levels is None:
        ff_levels = csp_levels(campaign.store, csp.name)
    shown = dict.fromkeys(ff_levels.get(int(m), level_of_theory(csp)) for m in sorted(campaign.stage.landscapes))
    return " or ".join(shown) or level_of_theory(csp)


def structures_table_columns(campaign: Any, ff_levels: dict[int, str] | None = None) -> list[dict[str, str]]:
    """The columns of every ``landscape_m<molecule id>.csv`` :func:`write_campaign_structures`
    writes, in order (its header), each described as ``report/results_columns.csv`` gives it
    (:func:`agent.report.column_entry`; ``ff_levels``: :func:`agent.summary.csp_levels`, read
    from the store when not given)."""
    from agent.report import column_entry as col
    from agent.summary import ENERGY_UNIT, level_of_theory, quantity

    stage = campaign.stage
    ff, ref = campaign.cfg.structures.csp.name, stage.refine.name
    ff_level, ref_level = csp_level_text(campaign, ff_levels), level_of_theory(stage.refine)
    lattice, relative = "lattice energy", "lattice energy relative to the lowest structure"
    out = [
        col("id", "the structure's id (its CIF is <id>.cif, beside this table)"),
        col("rank", f"rank by lattice energy at the ranking level {ref} (dE_{ref}_kJmol_per_mol; 1 the lowest; "
            "structures without a value there last, by force field; all by force field before any result)"),
        col("space_group", "space group symbol of the structure's CIF (symmetrised, ITA standard setting)"),
        col("Z", "molecules in the CIF's cell"),
        col("Z_prime", "independent molecules: the CSP's record, else Z over the space group's general positions "
            "(0.5: a molecule on an inversion centre); empty when neither is known", "Z'"),
        col("density_gcm3", "density of the stored (CSP) structure", "density", "g/cm3", ff_level),
        col(f"E_{ff}_kJmol_per_mol", f"{lattice} at the CSP level {ff}", lattice, ENERGY_UNIT, ff_level),
        col(f"dE_{ff}_kJmol_per_mol", f"{relative} at {ff}", relative, ENERGY_UNIT, ff_level),
        col(f"E_{ref}_kJmol_per_mol", f"{lattice} computed at the ranking level {ref}; empty where not computed",
            lattice, ENERGY_UNIT, ref_level),
        col(f"E_{ref}_best_kJmol_per_mol", f"{lattice} at {ref}: the computed value, else the ranking model's "
            "prediction (Delta-GP, or the constant shift when the Delta-GP fails its skill test); empty before "
            "any model", lattice, ENERGY_UNIT, ref_level),
        col(f"E_{ref}_std_kJmol_per_mol", "1-sigma of that prediction (0 where computed)",
            lattice, ENERGY_UNIT, ref_level),
        col(f"dE_{ref}_kJmol_per_mol", f"E_{ref}_best relative to the lowest structure", relative, ENERGY_UNIT,
            ref_level),
        col("status", f"'computed' at {ref}, 'failed' there, or 'predicted' (by the ranking model)"),
    ]
    for lv, key, _ in further_levels(stage):
        label, _, unit = quantity(key)
        what = "value" if not key.endswith("_kjmol") else "energy (kJ/mol per molecule, absolute)"
        out.append(col(level_column(lv.name, key), f"{label} at the further level {lv.name}: its {what} where "
                       "computed, else empty", label, unit, level_of_theory(lv)))
    out += [col("observed", "the lab request that observed the structure (a fed-back lab result), else empty"),
            col("cif", "the structure's CIF file (beside this table)")]
    return out


def _replace_export(out: Path, staged: Path, names: list[str]) -> None:
    """Move the files ``names`` written into ``staged`` into ``out``, deleting the files of
    the previous export (:func:`_written_before`) that are not among them.

    At every step the folder reads as the previous export, or as this one, or fails loudly in
    :meth:`~sim_backends.landscape.Landscape.from_cif_dir`: ``energies.csv`` is emptied to its
    header first (a CIF without its row is refused there; no CIF is paired with another
    export's energy) and replaced last, and the manifest lists the files of both exports
    until the new ones are all in place, so an export that dies half-way is cleaned up by
    the next."""
    old = _written_before(out)
    _write_manifest(out, sorted(old | set(names)))
    energies = "energies.csv"
    header = staged / ".energies_header.csv"
    with open(staged / energies, newline="") as fh:
        header.write_text(fh.readline())
    os.replace(header, out / energies)
    for name in sorted(old - set(names)):
        (out / name).unlink(missing_ok=True)
    for name in names:
        if name != energies:
            os.replace(staged / name, out / name)
    os.replace(staged / energies, out / energies)
    _write_manifest(out, names)


def _write_manifest(out: Path, names: list[str]) -> None:
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(names, indent=0) + "\n")
    os.replace(tmp, out / MANIFEST)


def _written_before(out: Path) -> set[str]:
    """The names of the files an earlier :func:`write_campaign_structures` wrote into
    ``out``: the list in its :data:`MANIFEST`. A folder exported before there was a manifest:
    the names its own tables give (each ``landscape_m<id>.csv`` with this writer's columns,
    the ``cif`` of each row where that is ``<id>.cif``, ``energies.csv`` and ``levels.json``;
    a CIF no table lists any more is not recognised). Plain file names only."""
    try:
        listed = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        listed = None
    names = ([n for n in listed if isinstance(n, str)] if isinstance(listed, list)
             else _named_by_tables(out))
    return {n for n in names if n == Path(n).name and n not in ("", ".", "..") and not n.startswith(".")}


def level_column(level: str, value_key: str) -> str:
    """The ``landscape_m<id>.csv`` column of a further structure level's value:
    ``<symbol>_<level>_kJmol_per_mol`` for an energy (a ``*_kjmol`` key, kJ/mol per
    molecule; ``F_vib_phonon_kJmol_per_mol``), else ``<value key>_<level>`` (the key
    names its unit, e.g. ``mobility_hole_cm2Vs_mobility-xtb``)."""
    from agent.summary import quantity

    if value_key.endswith("_kjmol"):
        return f"{quantity(value_key)[1]}_{level}_kJmol_per_mol"
    return f"{value_key}_{level}"


def _named_by_tables(out: Path) -> list[str]:
    """:func:`_written_before` of a folder without a manifest, from the ``landscape_m<id>.csv``
    there that have this writer's columns."""
    names: list[str] = []
    for table in out.glob("landscape_m*.csv"):
        if not re.fullmatch(r"landscape_m\d+\.csv", table.name):
            continue
        try:
            with open(table, newline="") as fh:
                reader = csv.DictReader(fh)
                header = list(reader.fieldnames or [])
                rows = list(reader)
        except (OSError, UnicodeDecodeError, csv.Error):
            continue
        if header[:4] != ["id", "rank", "space_group", "Z"] or "cif" not in header:
            continue  # not a table this writer wrote
        names.append(table.name)
        names += [r["cif"] for r in rows if r.get("id") and r.get("cif") == f"{r['id']}.cif"]
    return (names + ["energies.csv", "levels.json"]) if names else []


def z_prime_cell(z_prime: float | None) -> str:
    """The ``Z_prime`` cell of a landscape table (this one's and the report's
    ``landscape_model_m<id>.csv``): independent molecules, ``0.5`` for a molecule on an
    inversion centre; empty when unknown."""
    return "" if z_prime is None else f"{z_prime:g}"


def _fmt(x: float | None, digits: int = 3) -> str:
    return "" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _fmt_g(x: float | None) -> str:
    return "" if x is None or not np.isfinite(x) else f"{x:.6g}"
