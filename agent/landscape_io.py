"""Read a multi-level crystal-energy landscape from disk; write a campaign's landscapes.

A landscape directory holds one CSP landscape of one molecule computed at two or more
levels of theory, in the layout of ``data/reference/landscapes/target_I/``:

* ``<NAME>_<LEVEL>.extxyz`` -- one frame per structure relaxed at ``LEVEL``, exact P1
  cells (the CSP engine's ``landscape.csv`` + ``landscape_<LEVEL>.extxyz`` also fit:
  ``NAME`` is then ``landscape``); ``info`` carries ``id`` (structure id), ``Z``
  (molecules per cell) and
  ``connectivity_ok`` (False when relaxation broke the molecules);
* ``<NAME>_landscape.csv`` -- one row per structure with column ``id`` and, per level,
  ``dE_<LEVEL>_kJmol_per_mol`` (energy relative to the level's minimum, kJ/mol per
  molecule); optional ``connectivity_ok_<LEVEL>`` and ``experimental_match``
  (non-empty for a structure matching an observed crystal).

Structures flagged ``connectivity_ok`` False at any requested level are dropped
(:attr:`Landscape.dropped_ids` lists them), since their energies do not describe the
molecule any more. Energies are re-referenced to the minimum over the kept
structures, per level.

:func:`write_campaign_structures` writes the landscapes of a campaign's structure stage
(``runs/<name>/structures/``): symmetrised CIFs with the energies at every level, and per
landscape a CSV with one ``E_<LEVEL>_kJmol_per_mol`` / ``dE_<LEVEL>_kJmol_per_mol`` column
pair per level, ``levels.json`` naming the level of theory of each.

Importing this module is cheap; ASE and pymatgen are imported when used.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ase import Atoms


class LandscapeError(ValueError):
    """A landscape directory that cannot be read; the message is one line."""


@dataclass
class Landscape:
    """A CSP landscape at a cheap and one or more expensive levels.

    Attributes:
        name: landscape name (the file prefix, e.g. ``"Target_I"``).
        ids: structure ids, length ``n``.
        cheap: name of the cheap level.
        expensive: names of the expensive levels.
        energies_kjmol: per level, relative energies, shape ``(n,)``, kJ/mol per
            molecule, 0 at the lowest kept structure of that level.
        atoms: per level, the ``n`` ASE ``Atoms`` relaxed at that level.
        n_molecules: molecules per cell, shape ``(n,)`` (from the cheap level).
        observed: indices of structures that match an experimentally observed form.
        dropped_ids: ids left out because ``connectivity_ok`` was False.
    """

    name: str
    ids: list[str]
    cheap: str
    expensive: list[str]
    energies_kjmol: dict[str, np.ndarray]
    atoms: dict[str, list[Atoms]]
    n_molecules: np.ndarray
    observed: set[int] = field(default_factory=set)
    dropped_ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def levels(self) -> list[str]:
        return [self.cheap, *self.expensive]

    def delta_kjmol(self, level: str | None = None) -> np.ndarray:
        """``E_level - E_cheap`` per structure, shape ``(n,)``, kJ/mol per molecule."""
        level = level or self.expensive[0]
        return self.energies_kjmol[level] - self.energies_kjmol[self.cheap]

    def n_atoms(self) -> np.ndarray:
        """Atoms per cell at the cheap level, shape ``(n,)``."""
        return np.array([len(a) for a in self.atoms[self.cheap]], dtype=int)


def _truthy(value: object) -> bool:
    return str(value).strip().lower() not in ("false", "f", "0", "no")


def _find_one(directory: Path, pattern: str, what: str) -> Path:
    hits = sorted(directory.glob(pattern))
    if not hits:
        raise LandscapeError(f"{what}: no file matching {pattern!r} in {directory}")
    if len(hits) > 1:
        raise LandscapeError(f"{what}: several files match {pattern!r} in {directory}")
    return hits[0]


def load_landscape(
    directory: str | Path, cheap: str, expensive: str | list[str]
) -> Landscape:
    """Load a landscape at a cheap level and one or more expensive levels.

    Args:
        directory: the landscape directory (layout in the module docstring).
        cheap: cheap level name, e.g. ``"MACE"``.
        expensive: expensive level name(s), e.g. ``"PBE_MBD"``.

    Returns:
        The :class:`Landscape`, structures in CSV order, broken ones dropped.

    Raises:
        LandscapeError: missing directory, file, level column or structure frame.
    """
    from ase.io import read

    directory = Path(directory)
    if not directory.is_dir():
        raise LandscapeError(f"landscape directory not found: {directory}")
    levels = [cheap, *([expensive] if isinstance(expensive, str) else list(expensive))]
    if len(set(levels)) != len(levels) or len(levels) < 2:
        raise LandscapeError(f"need a cheap and distinct expensive level(s), got {levels}")
    csv_path = _find_one(directory, "*landscape.csv", "landscape table")
    stem = csv_path.stem
    name = stem[: -len("_landscape")] if stem.endswith("_landscape") else stem
    with csv_path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "id" not in rows[0]:
        raise LandscapeError(f"{csv_path.name}: empty or without an 'id' column")
    for level in levels:
        col = f"dE_{level}_kJmol_per_mol"
        if col not in rows[0]:
            raise LandscapeError(f"level {level!r} not in {csv_path.name} (no column {col})")

    frames: dict[str, dict[str, Atoms]] = {}
    for level in levels:
        path = directory / f"{name}_{level}.extxyz"
        if not path.is_file():
            raise LandscapeError(f"level {level!r}: structure file {path.name} not found")
        by_id: dict[str, Atoms] = {}
        for atoms in read(str(path), ":"):
            if "id" not in atoms.info:
                raise LandscapeError(f"{path.name}: a frame has no 'id' in its info")
            by_id[str(atoms.info["id"])] = atoms
        frames[level] = by_id

    ids: list[str] = []
    dropped: list[str] = []
    observed: set[int] = set()
    raw: dict[str, list[float]] = {lv: [] for lv in levels}
    for row in rows:
        sid = row["id"]
        for level in levels:
            if sid not in frames[level]:
                raise LandscapeError(f"structure {sid} has no frame at level {level!r}")
        is_ok = all(
            _truthy(row.get(f"connectivity_ok_{lv}", True))
            and _truthy(frames[lv][sid].info.get("connectivity_ok", True))
            for lv in levels
        )
        if not is_ok:
            dropped.append(sid)
            continue
        try:
            values = [float(row[f"dE_{lv}_kJmol_per_mol"]) for lv in levels]
        except ValueError as exc:
            raise LandscapeError(f"structure {sid}: bad energy ({exc})") from None
        if str(row.get("experimental_match", "") or "").strip():
            observed.add(len(ids))
        ids.append(sid)
        for lv, v in zip(levels, values):
            raw[lv].append(v)
    if not ids:
        raise LandscapeError(f"{csv_path.name}: no usable structures")
    if dropped:
        logging.getLogger(__name__).warning(
            "%s: dropped %d structure(s) flagged connectivity_ok=False: %s",
            name, len(dropped), ", ".join(dropped),
        )
    energies = {lv: np.asarray(v) - min(v) for lv, v in raw.items()}
    atoms = {lv: [frames[lv][sid] for sid in ids] for lv in levels}
    n_mol = np.array([int(a.info.get("Z", 1)) for a in atoms[cheap]], dtype=int)
    return Landscape(
        name=name,
        ids=ids,
        cheap=cheap,
        expensive=levels[1:],
        energies_kjmol=energies,
        atoms=atoms,
        n_molecules=n_mol,
        observed=observed,
        dropped_ids=dropped,
    )


def write_campaign_structures(campaign: Any, out_dir: str | Path | None = None) -> list[Path]:
    """Write a campaign's CSP landscapes as a crystallographer reads them.

    Into ``out_dir`` (default ``runs/<name>/structures/``), per landscape molecule:

    * ``<structure id>.cif`` for every structure (:func:`sim_backends.csp.landscape.crystal_cif`:
      symmetrised, Niggli-reduced primitive cell, molecule formula, Z in molecules) with its
      energies at every level computed (force-field lattice energy; refinement-level lattice
      energy, computed or the Delta-GP prediction with its 1-sigma; F_vib where computed);
    * ``landscape_m<molecule id>.csv``: one row per structure ranked at the highest level
      (``rank``), columns ``id, rank, space_group, Z, density_gcm3`` then, per level ``L``
      (backend name), ``E_<L>_kJmol_per_mol`` (lattice energy, kJ/mol per molecule;
      empty where not computed), ``dE_<L>_kJmol_per_mol`` (relative to the lowest), for the
      refinement level also ``E_<L>_best_kJmol_per_mol`` / ``E_<L>_std_kJmol_per_mol`` (the
      computed value, else the Delta-GP mean and 1-sigma), ``status`` (``computed``,
      ``failed`` at that level, or ``predicted``) and ``cif``;
    * ``energies.csv`` (``id, energy_kjmol, free_energy_kjmol``): the best estimate of
      each structure's energy at the highest level (computed, else the Delta-GP mean; the
      force field for structures failed at that level) and E + F_vib where computed, the
      table ``crystal-agent lab identify --structures`` reads beside the CIFs;
    * ``levels.json``: backend name -> level of theory of each column.

    Returns:
        The paths written (none without a structure stage or landscape).
    """
    from pymatgen.core import Structure

    from agent.summary import landscape_rows, level_of_theory, rank_key, structures_dir
    from sim_backends.csp.landscape import LevelEnergy, crystal_cif

    stage = getattr(campaign, "stage", None)
    if stage is None or not stage.landscapes:
        return []
    scfg = campaign.cfg.structures
    out = Path(out_dir) if out_dir is not None else structures_dir(campaign.directory)
    out.mkdir(parents=True, exist_ok=True)
    ff, ref, fe = scfg.csp.name, scfg.refine.name if scfg.refine else None, scfg.free_energy
    levels = {ff: level_of_theory(scfg.csp)}
    if ref:
        levels[ref] = level_of_theory(scfg.refine)
    if fe is not None:
        levels[fe.name] = level_of_theory(fe)
    paths = []
    best_energy: list[tuple[str, float, float | None]] = []  # for energies.csv
    for mol_id, land in sorted(stage.landscapes.items()):
        rows = landscape_rows(campaign, mol_id)
        has_level = any(r["computed"] for r in rows)
        order = sorted(range(len(rows)), key=lambda k: rank_key(rows[k]) if has_level
                       else (False, rows[k]["ff_kjmol"]))
        rank = {k: n for n, k in enumerate(order, 1)}
        name = campaign.names[campaign._index_of[mol_id]] if mol_id in campaign._index_of else land.smiles
        cols = ["id", "rank", "space_group", "Z", "density_gcm3", f"E_{ff}_kJmol_per_mol",
                f"dE_{ff}_kJmol_per_mol"]
        if ref:
            cols += [f"E_{ref}_kJmol_per_mol", f"E_{ref}_best_kJmol_per_mol", f"E_{ref}_std_kJmol_per_mol",
                     f"dE_{ref}_kJmol_per_mol", "status"]
        if fe is not None:
            cols.append(f"F_vib_{fe.name}_kJmol_per_mol")
        cols.append("cif")
        table = out / f"landscape_m{mol_id}.csv"
        with table.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(cols)
            for k in order:
                r = rows[k]
                energies = [LevelEnergy(levels[ff], "lattice energy", r["ff_kjmol"]),
                            LevelEnergy(levels[ff], "relative energy", r["ff_rel_kjmol"])]
                if ref and r["energy_kjmol"] is not None and not r["failed"]:
                    what = "lattice energy" if r["computed"] else "lattice energy, Delta-GP prediction"
                    energies += [LevelEnergy(levels[ref], what, r["energy_kjmol"],
                                             None if r["computed"] else r["std_kjmol"]),
                                 LevelEnergy(levels[ref], "relative energy" + ("" if r["computed"] else
                                                                               ", Delta-GP prediction"),
                                             r["rel_kjmol"])]
                if fe is not None and r["f_vib_kjmol"] is not None:
                    energies.append(LevelEnergy(levels[fe.name], "F_vib", r["f_vib_kjmol"]))
                cif_path = out / f"{r['id']}.cif"
                st = Structure.from_str(land.cifs[k], fmt="cif")
                cif_path.write_text(crystal_cif(st, n_molecules=int(r["z"] or 1), name=name,
                                                structure_id=r["id"], smiles=land.smiles, energies=energies,
                                                space_group=r["space_group"] or ""))
                paths.append(cif_path)
                row = [r["id"], rank[k], r["space_group"], r["z"], _fmt(r["density_gcm3"], 4),
                       _fmt(r["ff_kjmol"]), _fmt(r["ff_rel_kjmol"])]
                if ref:
                    row += [_fmt(r["energy_kjmol"]) if r["computed"] else "", _fmt(r["energy_kjmol"]),
                            _fmt(r["std_kjmol"]), _fmt(r.get("rel_kjmol")),
                            "computed" if r["computed"] else "failed" if r["failed"] else "predicted"]
                if fe is not None:
                    row.append(_fmt(r["f_vib_kjmol"]))
                row.append(cif_path.name)
                w.writerow(row)
                e = r["energy_kjmol"] if r["energy_kjmol"] is not None and not r["failed"] else r["ff_kjmol"]
                best_energy.append((r["id"], e, None if r["f_vib_kjmol"] is None else e + r["f_vib_kjmol"]))
        paths.append(table)
    energies_path = out / "energies.csv"  # what `crystal-agent lab identify --structures` reads
    with energies_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "energy_kjmol", "free_energy_kjmol"])
        w.writerows([sid, _fmt(e), _fmt(g)] for sid, e, g in best_energy)
    paths.append(energies_path)
    levels_path = out / "levels.json"
    levels_path.write_text(json.dumps({"energy_unit": "kJ/mol per molecule", "levels": levels}, indent=2))
    paths.append(levels_path)
    return paths


def _fmt(x: float | None, digits: int = 3) -> str:
    return "" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"
