"""One crystal-energy landscape type: predicted structures of one molecule, their
energies at one or more levels of theory, read and written in one place.

A :class:`Landscape` is a list of :class:`LandscapeEntry` (``minima``: CSP minima,
reference landscapes, a folder of CIFs) plus its levels: ``levels`` maps a level key
(``"ff"``, ``"xtb"``, ``"MACE"``...) to its level of theory, the first level being the
one the entries' ``energy_kjmol`` and geometry belong to (the CSP force field for a CSP
run, the cheap level of a reference landscape). Further levels carry an energy per entry
(``entry.energies[level]``) and optionally their own relaxed geometry.

Every structure is parsed at most once: an entry is built from a pymatgen ``Structure``,
an ASE ``Atoms`` or CIF text, and converts lazily (cached) to the others.

On-disk layouts (:meth:`Landscape.read` detects which):

* **table layout** (``data/reference/landscapes/target_I``, ``data/landscapes/*`` and
  the CSP run output written by :meth:`Landscape.write`, where ``NAME`` is ``landscape``):
  ``<NAME>_landscape.csv`` (or ``landscape.csv``), one row per structure with column ``id``
  and, per level ``L``, ``dE_<L>_kJmol_per_mol`` (energy relative to the level's
  minimum, kJ/mol per molecule) and/or ``E_<L>_kJmol_per_mol`` (absolute); optional
  ``connectivity_ok_<L>``, ``experimental_match`` (non-empty for a structure matching an
  observed crystal), ``density_gcm3``, ``space_group``, ``space_group_number``,
  ``search_space_group``, ``z``, ``z_prime``, ``multiplicity``. ``<NAME>_<L>.extxyz``: one frame per
  structure relaxed at level ``L``, exact P1 cells, ``info`` with ``id``, ``Z``
  (molecules per cell) and ``connectivity_ok``. Optional ``levels.json`` (``{"cheap":
  L0, "expensive": L1 | [L1, ...]}``) orders the levels; ``run.json`` holds the run
  metadata and ``levels`` (key -> level of theory).
  Structures flagged ``connectivity_ok`` False at any requested level are dropped
  (:attr:`Landscape.dropped_ids`): their energies no longer describe the molecule.
  Structures without a finite energy at a requested level (an empty, ``nan`` or ``inf``
  cell: a failed calculation) are dropped with one warning naming them; a structure id
  that appears twice in the table or in a level's extxyz is refused.
* **CIF folder** (what ``crystal-agent lab identify --structures`` and ``lab serve``
  read): ``<id>.cif`` files and an optional ``energies.csv`` (``id, energy_kjmol[,
  free_energy_kjmol]``); when there is one, a CIF without a row in it is refused (one line
  naming it), not given an energy.

:meth:`Landscape.write` writes the table layout (every level: CSV columns and one
extxyz per level with a geometry) plus ``cif/<id>.cif`` as crystallographers read them
(:func:`sim_backends.csp.landscape.crystal_cif`) with ``cif/energies.csv``, ``run.json``
and ``landscape.png``, replacing the outputs of a landscape written there before (other
files stay); :meth:`Landscape.read` reads it back with every level.

Relative energies (:meth:`Landscape.energies`) are re-referenced to the lowest kept
structure per level (from the ``dE`` column when the table has one, else from the
stored values). Importing this module is cheap (numpy only); ASE and pymatgen are
imported when used.

Over 500 lines on purpose: the type and every format it reads and writes stay in one
module, so a layout cannot be read in one place and written differently in another.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ase import Atoms
    from pymatgen.core import Structure

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "data" / "reference"
TARGET_I_DIR = REFERENCE_DIR / "landscapes" / "target_I"
X23_DIR = REFERENCE_DIR / "x23"
#: space groups named in the landscape plot's legend; the rest are grouped as "other"
MAX_LEGEND_GROUPS = 9
_EV_TO_KJMOL = 96.485


@contextmanager
def _quiet_cif_rounding() -> Iterator[None]:
    """A context in which pymatgen's "Issues encountered while parsing CIF" warning (it
    rounds fractional coordinates within 1e-4 of special positions, as this project's P1
    CIFs have) is not printed; other warnings are."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Issues encountered while parsing CIF")
        yield


class LandscapeError(ValueError):
    """A landscape that cannot be read; the message is one line."""


class LandscapeEntry:
    """One crystal structure of a landscape.

    Args:
        id: id unique within the landscape (e.g. ``"m0003"``).
        energy_kjmol: energy at the landscape's first level, kJ/mol per molecule
            (a lattice energy for CSP, relative for reference data).
        density_gcm3, space_group, space_group_number: of the structure, if known.
        search_space_group: the group a CSP trial was generated and minimised in.
        z: molecules in the stored cell.
        z_prime: independent molecules (Z' = z / symmetry operations of the cell; 0.5 for a
            molecule on an inversion centre), None where not recorded.
        multiplicity: CSP trials that ended in this minimum.
        structure: the crystal as a pymatgen ``Structure`` ...
        cif: ... or as CIF text ...
        atoms: ... or as ASE ``Atoms`` (exactly one of the three).
        free_energy_kjmol: free energy at the crystallisation temperature, if known.
        energies: energies at further levels, level key -> kJ/mol per molecule.
        geometries: geometries relaxed at further levels, level key -> Structure,
            Atoms or CIF text.
        observed: matches an experimentally observed crystal.
    """

    def __init__(self, id: str, energy_kjmol: float, density_gcm3: float = math.nan,
                 space_group: str = "", space_group_number: int = 0, search_space_group: str = "",
                 z: int = 1, multiplicity: int = 1, structure: Structure | None = None, *,
                 cif: str | None = None, atoms: Atoms | None = None,
                 free_energy_kjmol: float | None = None, energies: dict[str, float] | None = None,
                 geometries: dict[str, Any] | None = None, observed: bool = False,
                 z_prime: float | None = None) -> None:
        if sum(x is not None for x in (structure, cif, atoms)) != 1:
            raise ValueError(f"entry {id}: give exactly one of structure, cif, atoms")
        self.id = str(id)
        self.energy_kjmol = float(energy_kjmol)
        self.density_gcm3 = float(density_gcm3)
        self.space_group = space_group
        self.space_group_number = int(space_group_number)
        self.search_space_group = search_space_group
        self.z = int(z)
        self.z_prime = None if z_prime is None or not math.isfinite(float(z_prime)) else float(z_prime)
        self.multiplicity = int(multiplicity)
        self.free_energy_kjmol = None if free_energy_kjmol is None else float(free_energy_kjmol)
        self.energies = dict(energies or {})
        self.geometries = dict(geometries or {})
        self.observed = bool(observed)
        self._structure, self._cif, self._atoms = structure, cif, atoms

    def __repr__(self) -> str:
        return f"LandscapeEntry({self.id!r}, {self.energy_kjmol:.3f} kJ/mol, {self.space_group or '?'}, Z={self.z})"

    @property
    def ranking_energy_kjmol(self) -> float:
        """The free energy where known, else the energy (kJ/mol per molecule)."""
        return self.energy_kjmol if self.free_energy_kjmol is None else self.free_energy_kjmol

    @property
    def structure(self) -> Structure:
        """The crystal as a pymatgen ``Structure`` (parsed once)."""
        if self._structure is None:
            if self._cif is not None:
                from pymatgen.core import Structure

                with _quiet_cif_rounding():
                    self._structure = Structure.from_str(self._cif, fmt="cif")
            else:
                from pymatgen.io.ase import AseAtomsAdaptor

                self._structure = AseAtomsAdaptor.get_structure(self._atoms)
        return self._structure

    @property
    def atoms(self) -> Atoms:
        """The crystal as ASE ``Atoms`` (converted once; ``info`` carries ``id`` and ``Z``)."""
        if self._atoms is None:
            from pymatgen.io.ase import AseAtomsAdaptor

            self._atoms = AseAtomsAdaptor.get_atoms(self.structure)
            self._atoms.info.update({"id": self.id, "Z": self.z})
        return self._atoms

    @property
    def n_atoms(self) -> int:
        src = self._atoms if self._atoms is not None else self.structure
        return len(src)

    def geometry(self, level: str | None = None) -> Atoms:
        """ASE ``Atoms`` relaxed at ``level`` (None: the first level's geometry).

        Raises:
            LandscapeError: no geometry stored for that level.
        """
        if level is None:
            return self.atoms
        geo = self.geometries.get(level)
        if geo is None:
            raise LandscapeError(f"structure {self.id} has no geometry at level {level!r}")
        if not hasattr(geo, "get_positions"):  # a Structure or CIF text: convert once
            from pymatgen.core import Structure
            from pymatgen.io.ase import AseAtomsAdaptor

            with _quiet_cif_rounding():
                st = Structure.from_str(geo, fmt="cif") if isinstance(geo, str) else geo
            geo = self.geometries[level] = AseAtomsAdaptor.get_atoms(st)
        return geo

    def cif(self) -> str:
        """CIF text of the structure as stored: the exact P1 listing of the cell (what
        structure-level backends compute on; :meth:`output_cif` is the one to read)."""
        if self._cif is None:
            from pymatgen.io.cif import CifWriter

            self._cif = str(CifWriter(self.structure))
        return self._cif

    def to_dict(self, with_cif: bool = True) -> dict[str, Any]:
        """JSON-able record; ``cif`` holds the CIF text when ``with_cif``."""
        d: dict[str, Any] = {
            "id": self.id, "energy_kjmol": float(self.energy_kjmol),
            "density_gcm3": float(self.density_gcm3), "space_group": self.space_group,
            "space_group_number": int(self.space_group_number),
            "search_space_group": self.search_space_group, "z": int(self.z),
            "multiplicity": int(self.multiplicity),
        }
        if self.z_prime is not None:
            d["z_prime"] = self.z_prime
        if with_cif:
            d["cif"] = self.cif()
        return d

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> LandscapeEntry:
        """The entry of a :meth:`to_dict` record (or a store ``structures`` row, any mapping)."""
        record = dict(record)

        def num(key: str, default: float) -> float:
            v = record.get(key)
            return default if v is None else float(v)

        return cls(str(record["id"]), float(record["energy_kjmol"]), num("density_gcm3", math.nan),
                   record.get("space_group") or "", int(num("space_group_number", 0)),
                   record.get("search_space_group") or "", int(num("z", 1)), int(num("multiplicity", 1)),
                   cif=record["cif"], z_prime=num("z_prime", math.nan))

    def output_cif(self, smiles: str = "", e_min_kjmol: float | None = None,
                   level_of_theory: str | None = None, name: str = "") -> str:
        """:func:`~sim_backends.csp.landscape.crystal_cif` of this structure with its
        first-level energy (the force field unless ``level_of_theory`` names another), the
        energy relative to ``e_min_kjmol`` when given, and its free energy when known;
        ``name`` (the molecule's) names the data block."""
        from sim_backends.csp.landscape import FF_LEVEL, LevelEnergy, crystal_cif

        level = level_of_theory or FF_LEVEL
        energies = [LevelEnergy(level, "lattice energy", self.energy_kjmol)]
        if e_min_kjmol is not None:
            energies.append(LevelEnergy(level, "relative energy", self.energy_kjmol - e_min_kjmol))
        if self.free_energy_kjmol is not None:
            energies.append(LevelEnergy(level, "free energy", self.free_energy_kjmol))
        return crystal_cif(self.structure, n_molecules=self.z, name=name, structure_id=self.id, smiles=smiles,
                           energies=energies, space_group=self.space_group)


@dataclass
class Landscape:
    """The structures of one molecule and their energies (see the module docstring).

    Attributes:
        smiles: the molecule ("" when unknown).
        minima: the structures; a CSP landscape keeps them lowest energy first.
        meta: run metadata (CSP: n_trials, n_minimised, wall_s, settings...).
        name: landscape name (the file prefix of a table layout, e.g. ``"Target_I"``).
        levels: level key -> level of theory; the first is the entries' own level.
        dropped_ids: ids left out on reading because ``connectivity_ok`` was False.
    """

    smiles: str
    minima: list[LandscapeEntry]
    meta: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    levels: dict[str, str] = field(default_factory=dict)
    dropped_ids: list[str] = field(default_factory=list)
    _relative: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.levels:
            from sim_backends.csp.landscape import FF_LEVEL

            self.levels = {"ff": FF_LEVEL}

    def __len__(self) -> int:
        return len(self.minima)

    # -- columns ---------------------------------------------------------------------------
    @property
    def level_keys(self) -> list[str]:
        """Level keys, the entries' own level first."""
        return list(self.levels)

    @property
    def ids(self) -> list[str]:
        return [m.id for m in self.minima]

    @property
    def global_minimum(self) -> LandscapeEntry | None:
        return self.minima[0] if self.minima else None

    @property
    def n_molecules(self) -> np.ndarray:
        """Molecules per cell, shape ``(n,)``."""
        return np.array([m.z for m in self.minima], dtype=int)

    def n_atoms(self) -> np.ndarray:
        """Atoms per cell, shape ``(n,)``."""
        return np.array([m.n_atoms for m in self.minima], dtype=int)

    @property
    def observed(self) -> set[int]:
        """Indices of structures matching an experimentally observed form."""
        return {i for i, m in enumerate(self.minima) if m.observed}

    def _level(self, level: str | None) -> str:
        level = level or self.level_keys[0]
        if level not in self.levels:
            raise LandscapeError(f"level {level!r} not in landscape {self.name or self.smiles} "
                                 f"(levels: {', '.join(self.levels)})")
        return level

    def energies(self, level: str | None = None, relative: bool = True) -> np.ndarray:
        """Energies at ``level`` (default the first), shape ``(n,)``, kJ/mol per molecule;
        ``relative``: 0 at the lowest structure of that level."""
        level = self._level(level)
        if relative and level in self._relative and len(self._relative[level]) == len(self):
            return self._relative[level].copy()
        first = level == self.level_keys[0]
        e = np.array([m.energy_kjmol if first else m.energies.get(level, np.nan) for m in self.minima],
                     dtype=float)
        return e - np.nanmin(e) if relative and len(e) else e

    def delta_kjmol(self, level: str | None = None) -> np.ndarray:
        """``E_level - E_first`` (relative energies) per structure, kJ/mol per molecule
        (default: the second level)."""
        level = level or self.level_keys[1]
        return self.energies(level) - self.energies(self.level_keys[0])

    def atoms(self, level: str | None = None) -> list[Atoms]:
        """The structures as ASE ``Atoms`` relaxed at ``level`` (default the first)."""
        if level is None or self._level(level) == self.level_keys[0]:
            return [m.atoms for m in self.minima]
        return [m.geometry(level) for m in self.minima]

    def structures(self) -> list[Structure]:
        """The structures (first level) as pymatgen ``Structure`` objects."""
        return [m.structure for m in self.minima]

    def to_records(self, with_cif: bool = True) -> list[dict[str, Any]]:
        """List of :meth:`LandscapeEntry.to_dict` records, in order."""
        return [m.to_dict(with_cif) for m in self.minima]

    @classmethod
    def from_records(cls, smiles: str, records: Sequence[dict[str, Any]], **kwargs: Any) -> Landscape:
        """The landscape of :meth:`to_records` records (or store ``structures`` rows)."""
        return cls(smiles, [LandscapeEntry.from_dict(r) for r in records], **kwargs)

    # -- matching --------------------------------------------------------------------------
    def find_match(self, reference: Structure, ltol: float = 0.3, stol: float = 0.4,
                   angle_tol: float = 10.0, heavy_only: bool = True,
                   h_sites: bool = False) -> tuple[int, LandscapeEntry, float] | None:
        """The first (lowest-energy, for CSP) structure matching a reference crystal.

        Compared with pymatgen ``StructureMatcher(ltol, stol, angle_tol, scale=True,
        primitive_cell=True, attempt_supercell=True)`` -- ``scale=True`` because the
        force-field cell volume differs from the reference by a few per cent -- on the
        heavy atoms when ``heavy_only`` (hydrogen positions of X-ray and DFT
        structures differ from the rigid MMFF geometry), except for molecules with fewer
        than three heavy atoms (:func:`~sim_backends.csp.dedupe.keeps_hydrogens`), whose
        orientations only the hydrogens fix. The comparison is independent of cell
        setting, origin and atom order. ``h_sites``: on heavy atoms, an O, N or S that carries
        a hydrogen counts as its own species in both structures (as the CSP dedupe compares
        minima), so a structure whose hydrogens sit on other atoms -- another hydrogen-bond
        network, e.g. a carboxylic acid with its C=O and C-OH oxygens swapped -- does not
        match; use it with a reference that has its hydrogens.

        Returns:
            (rank starting at 1, the entry, RMS displacement normalised by
            (V/n)^(1/3) as pymatgen reports it), or None when nothing matches.
        """
        hits = self.find_matches(reference, ltol, stol, angle_tol, heavy_only, first_only=True,
                                 h_sites=h_sites)
        return hits[0] if hits else None

    def find_matches(self, reference: Structure, ltol: float = 0.3, stol: float = 0.4,
                     angle_tol: float = 10.0, heavy_only: bool = True,
                     first_only: bool = False, h_sites: bool = False) -> list[tuple[int, LandscapeEntry, float]]:
        """Every structure matching ``reference`` under the :meth:`find_match` test, as
        (rank, entry, normalised RMS) in order; more than one means the dedupe left
        duplicates or the tolerances are too loose to tell the minima apart."""
        from pymatgen.analysis.structure_matcher import StructureMatcher

        from sim_backends.csp.dedupe import heavy_atoms, keeps_hydrogens

        sm = StructureMatcher(ltol=ltol, stol=stol, angle_tol=angle_tol, scale=True,
                              primitive_cell=True, attempt_supercell=True)
        if self.minima and keeps_hydrogens(self.minima[0].structure, self.minima[0].z):
            heavy_only = False  # < 3 heavy atoms per molecule: their positions miss the orientations
        ref = heavy_atoms(reference, keep_h=False, label_protonated=h_sites) if heavy_only else reference
        hits = []
        for rank, m in enumerate(self.minima, 1):
            st = heavy_atoms(m.structure, keep_h=False, label_protonated=h_sites) if heavy_only else m.structure
            if sm.fit(ref, st):
                rms = sm.get_rms_dist(ref, st)
                hits.append((rank, m, float(rms[0]) if rms is not None else float("nan")))
                if first_only:
                    break
        return hits

    # -- reading ---------------------------------------------------------------------------
    @classmethod
    def read(cls, directory: str | Path, levels: str | Sequence[str] | None = None) -> Landscape:
        """Read a landscape directory in either layout of the module docstring.

        Args:
            directory: the landscape directory.
            levels: level keys to read, the first being the entries' own level (e.g.
                ``["MACE", "PBE_MBD"]``); None: every level of the table, ordered by
                ``levels.json`` / ``run.json`` where present. Ignored for a CIF folder.

        Raises:
            LandscapeError: missing directory, file, level column or structure frame,
                unreadable CIF or energy (one line).
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise LandscapeError(f"landscape directory not found: {directory}")
        if any(directory.glob("*landscape.csv")):
            return cls._read_table(directory, levels)
        if any(directory.glob("*.cif")):
            return cls.from_cif_dir(directory)
        raise LandscapeError(f"{directory}: neither a landscape table (*landscape.csv) nor CIF files")

    @classmethod
    def _read_table(cls, directory: Path, levels: str | Sequence[str] | None) -> Landscape:
        from ase.io import read

        hits = sorted(directory.glob("*landscape.csv"))
        if len(hits) > 1:
            raise LandscapeError(f"landscape table: several files match '*landscape.csv' in {directory}")
        csv_path = hits[0]
        stem = csv_path.stem
        name = stem[: -len("_landscape")] if stem.endswith("_landscape") else stem
        with csv_path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        if not rows or "id" not in rows[0]:
            raise LandscapeError(f"{csv_path.name}: empty or without an 'id' column")
        seen_ids: set[str] = set()
        for row in rows:
            if row["id"] in seen_ids:
                raise LandscapeError(f"structure {row['id']} appears twice in {csv_path.name}")
            seen_ids.add(row["id"])
        run = _read_json(directory / "run.json")
        described = run.get("levels") if isinstance(run.get("levels"), dict) else {}
        found = [m.group(1) for c in rows[0] if (m := re.fullmatch(r"d?E_(.+)_kJmol_per_mol", c))]
        found = list(dict.fromkeys(found))
        if levels is None:
            order = _read_json(directory / "levels.json")
            named = [order.get("cheap"), *([order["expensive"]] if isinstance(order.get("expensive"), str)
                                           else order.get("expensive") or [])]
            levels = [lv for lv in dict.fromkeys([*named, *described, *found]) if lv in found]
            if not levels:
                raise LandscapeError(f"{csv_path.name}: no dE_<level>_kJmol_per_mol column")
        levels = [levels] if isinstance(levels, str) else list(levels)
        if not levels or len(set(levels)) != len(levels):
            raise LandscapeError(f"need one or more distinct levels, got {levels}")
        for level in levels:
            if level not in found:
                raise LandscapeError(f"level {level!r} not in {csv_path.name} "
                                     f"(no column dE_{level}_kJmol_per_mol)")

        frames: dict[str, dict[str, Atoms]] = {}
        for level in levels:
            path = directory / f"{name}_{level}.extxyz"
            if not path.is_file():
                raise LandscapeError(f"level {level!r}: structure file {path.name} not found")
            by_id: dict[str, Atoms] = {}
            for atoms in read(str(path), ":"):
                if "id" not in atoms.info:
                    raise LandscapeError(f"{path.name}: a frame has no 'id' in its info")
                if str(atoms.info["id"]) in by_id:
                    raise LandscapeError(f"structure {atoms.info['id']} appears twice in {path.name}")
                by_id[str(atoms.info["id"])] = atoms
            frames[level] = by_id

        entries: list[LandscapeEntry] = []
        dropped: list[str] = []
        unfinished: list[str] = []  # no finite energy at a requested level
        rel: dict[str, list[float]] = {lv: [] for lv in levels}
        for row in rows:
            sid = row["id"]
            for level in levels:
                if sid not in frames[level]:
                    raise LandscapeError(f"structure {sid} has no frame at level {level!r}")
            if not all(_truthy(row.get(f"connectivity_ok_{lv}", True))
                       and _truthy(frames[lv][sid].info.get("connectivity_ok", True)) for lv in levels):
                dropped.append(sid)
                continue
            try:
                values = {lv: _level_value(row, lv) for lv in levels}
                rel_row = {}
                for lv in levels:
                    col = row.get(f"dE_{lv}_kJmol_per_mol")
                    rel_row[lv] = float(col) if col not in (None, "") else values[lv]
            except ValueError as exc:
                raise LandscapeError(f"structure {sid}: bad energy ({exc})") from None
            if not all(math.isfinite(v) for v in (*values.values(), *rel_row.values())):
                unfinished.append(sid)  # a failed calculation: empty cell or nan/inf
                continue
            for lv in levels:
                rel[lv].append(rel_row[lv])
            first = frames[levels[0]][sid]
            entries.append(LandscapeEntry(
                sid, values[levels[0]], _num(row.get("density_gcm3")), row.get("space_group") or "",
                int(_num(row.get("space_group_number"), 0)), row.get("search_space_group") or "",
                int(first.info.get("Z", _num(row.get("z"), 1))), int(_num(row.get("multiplicity"), 1)),
                atoms=first, energies={lv: values[lv] for lv in levels[1:]},
                geometries={lv: frames[lv][sid] for lv in levels[1:]},
                free_energy_kjmol=None if row.get("free_energy_kjmol") in (None, "")
                else float(row["free_energy_kjmol"]),
                observed=bool(str(row.get("experimental_match", "") or "").strip()),
                z_prime=_num(row.get("z_prime"))))
        if unfinished:
            logging.getLogger(__name__).warning(
                "%s: dropped %d structure(s) without a finite energy at %s (failed calculations: empty or "
                "nan cells): %s", name, len(unfinished), " and ".join(levels), ", ".join(unfinished))
        if not entries:
            raise LandscapeError(f"{csv_path.name}: no usable structures")
        if dropped:
            logging.getLogger(__name__).warning(
                "%s: dropped %d structure(s) flagged connectivity_ok=False: %s",
                name, len(dropped), ", ".join(dropped))
        meta = {k: v for k, v in run.items() if k not in ("smiles", "levels", "name")}
        return cls(run.get("smiles", ""), entries, meta, name=name,
                   levels={lv: described.get(lv, lv) for lv in levels}, dropped_ids=dropped,
                   _relative={lv: np.asarray(v) - min(v) for lv, v in rel.items()})

    @classmethod
    def from_cif_dir(cls, directory: str | Path, allow_missing_energies: bool = False) -> Landscape:
        """All ``*.cif`` in ``directory`` (ids: file stems); energies from ``energies.csv``
        there (columns ``id,energy_kjmol[,free_energy_kjmol]``), which then needs a row for
        every CIF; without an ``energies.csv`` every energy is 0 (a folder of structures only).
        The CIFs are parsed here, once, so a bad file fails now.

        Args:
            allow_missing_energies: the caller reads the structures only (``lab identify``):
                a CIF without a row gets energy nan instead of an error.

        Raises:
            LandscapeError: no such directory, no CIF, an unreadable CIF, a malformed
                energies.csv or (unless ``allow_missing_energies``) a CIF without a row
                there (one line naming them).
        """
        from pymatgen.core import Structure

        directory = Path(directory)
        if not directory.is_dir():
            raise LandscapeError(f"structure directory not found: {directory}")
        cifs = sorted(directory.glob("*.cif"))
        if not cifs:
            raise LandscapeError(f"no *.cif files in {directory}")
        energies: dict[str, tuple[float, float | None]] = {}
        table = directory / "energies.csv"
        if table.is_file():
            with open(table, newline="") as fh:
                for i, row in enumerate(csv.DictReader(fh), start=2):
                    try:
                        free = row.get("free_energy_kjmol")
                        energies[row["id"]] = (float(row["energy_kjmol"]),
                                               float(free) if free not in (None, "") else None)
                    except (KeyError, TypeError, ValueError):
                        raise LandscapeError(f"{table}:{i}: need columns id,energy_kjmol[,free_energy_kjmol]") from None
            missing = [p.name for p in cifs if p.stem not in energies]
            if missing and not allow_missing_energies:  # e.g. a CIF of another run: 0 would rank it wrongly
                shown = ", ".join(missing[:5]) + (f", ... ({len(missing)} in all)" if len(missing) > 5 else "")
                raise LandscapeError(f"{table} has no energy for {len(missing)} of the {len(cifs)} CIFs there: "
                                     f"{shown}; add their rows (id,energy_kjmol) or remove those CIFs")
        entries = []
        for path in cifs:
            try:
                with _quiet_cif_rounding():
                    structure = Structure.from_file(str(path))
            except Exception as exc:  # noqa: BLE001 - pymatgen raises many types for bad CIFs
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise LandscapeError(f"cannot read {path.name}: {msg}") from None
            energy, free = energies.get(path.stem, (math.nan if table.is_file() else 0.0, None))  # 0: no energies.csv
            z = _cif_z(path)
            entries.append(LandscapeEntry(path.stem, energy, structure.density, z=z, structure=structure,
                                          free_energy_kjmol=free))
        return cls("", entries, name=directory.name, levels={"energy": "as given in energies.csv"})

    # -- writing ---------------------------------------------------------------------------
    def write(self, out_dir: str | Path, plot: bool = True) -> Path:
        """Write the table layout with every level, ``cif/`` (crystallographer's CIFs and
        ``energies.csv``), ``run.json`` and (``plot``) ``landscape.png`` into ``out_dir``.

        A landscape written there before is replaced: its own outputs (:func:`_written_by_write`:
        the ``cif/<id>.cif`` its ``landscape.csv`` lists, its levels' extxyz, ``landscape.png``)
        are deleted first, so no structure of the earlier run stays beside this one's; any
        other file in ``out_dir`` is left alone."""
        out = Path(out_dir)
        for old in _written_by_write(out):
            old.unlink(missing_ok=True)
        (out / "cif").mkdir(parents=True, exist_ok=True)
        keys = self.level_keys
        e0 = min((m.energy_kjmol for m in self.minima), default=0.0)
        rel = {lv: self.energies(lv) for lv in keys} if self.minima else {}
        cols = ["id", "rank", "energy_kjmol", "rel_energy_kjmol"]
        for lv in keys:
            cols += [f"E_{lv}_kJmol_per_mol", f"dE_{lv}_kJmol_per_mol"]
        cols += ["free_energy_kjmol", "density_gcm3", "space_group", "space_group_number",
                 "search_space_group", "z", "z_prime", "multiplicity", "experimental_match", "cif"]
        with open(out / "landscape.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(cols)
            for k, m in enumerate(self.minima):
                cif_path = out / "cif" / f"{m.id}.cif"
                cif_path.write_text(m.output_cif(self.smiles, e0, self.levels[keys[0]]))
                row: list[Any] = [m.id, k + 1, f"{m.energy_kjmol:.4f}", f"{m.energy_kjmol - e0:.4f}"]
                for lv in keys:
                    e = m.energy_kjmol if lv == keys[0] else m.energies.get(lv)
                    row += [_fmt(e), _fmt(rel[lv][k])]
                row += [_fmt(m.free_energy_kjmol), _fmt(m.density_gcm3), m.space_group,
                        m.space_group_number, m.search_space_group, m.z, _fmt(m.z_prime), m.multiplicity,
                        "observed" if m.observed else "", f"cif/{m.id}.cif"]
                w.writerow(row)
        self.write_energies(out / "cif" / "energies.csv")
        for lv in keys:
            self._write_extxyz(out / f"landscape_{lv}.extxyz", None if lv == keys[0] else lv)
        if plot and self.minima:
            self.plot(out / "landscape.png")
        (out / "run.json").write_text(json.dumps({"smiles": self.smiles, **self.meta, "levels": self.levels},
                                                 indent=2, default=str))
        return out

    def write_energies(self, path: str | Path) -> Path:
        """``energies.csv`` (``id, energy_kjmol, free_energy_kjmol``) as :meth:`from_cif_dir` reads it."""
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "energy_kjmol", "free_energy_kjmol"])
            w.writerows([m.id, f"{m.energy_kjmol:.4f}", _fmt(m.free_energy_kjmol)] for m in self.minima)
        return Path(path)

    def write_cif_dir(self, directory: str | Path) -> Path:
        """The CIF-folder layout: ``<id>.cif`` (exact cell) plus ``energies.csv``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for m in self.minima:
            m.structure.to(filename=str(directory / f"{m.id}.cif"))
        self.write_energies(directory / "energies.csv")
        return directory

    def _write_extxyz(self, path: Path, level: str | None) -> None:
        from ase.io import write

        frames = []
        for m in self.minima:
            if level is not None and level not in m.geometries:
                return  # this level has energies only
            atoms = (m.atoms if level is None else m.geometry(level)).copy()
            atoms.info = {"id": m.id, "Z": m.z, "connectivity_ok": True,
                          "energy_kjmol": m.energy_kjmol if level is None else m.energies.get(level, math.nan)}
            frames.append(atoms)
        if frames:
            write(path, frames, format="extxyz")

    # -- plot ------------------------------------------------------------------------------
    def plot(self, path: str | Path, name: str = "") -> None:
        """:meth:`figure` saved to ``path``."""
        import matplotlib.pyplot as plt

        fig = self.figure(name)
        fig.savefig(path, dpi=120)
        plt.close(fig)

    def figure(self, name: str = "") -> Any:
        """First-level energy (relative, kJ/mol per molecule) vs density scatter, coloured by
        detected space group: the :data:`MAX_LEGEND_GROUPS` most populated groups by name
        (the global minimum's always among them: it takes the last place when it is rarer),
        the rest as "other", legend outside the axes; the global minimum's point is labelled
        with its id and space group; where the minima have more than one Z'
        (a Z' = 1,2 search, or molecules on special positions, Z' = 0.5) the marker's shape
        gives Z', in a second legend. The title is wrapped to the figure's width."""
        import textwrap

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
        from matplotlib.ticker import MaxNLocator

        from sim_backends.csp.landscape import molecule_formula

        e0 = min(m.energy_kjmol for m in self.minima)
        fig, ax = plt.subplots(figsize=(7.2, 4.6), layout="constrained")
        counts: dict[str, int] = {}
        for m in self.minima:
            counts[m.space_group] = counts.get(m.space_group, 0) + 1
        named = sorted(counts, key=lambda g: (-counts[g], g))[:MAX_LEGEND_GROUPS]
        if len(counts) == MAX_LEGEND_GROUPS + 1:  # "other" would hold one group: name it
            named = sorted(counts, key=lambda g: (-counts[g], g))
        lowest = min(self.minima, key=lambda m: m.energy_kjmol)
        if lowest.space_group not in named:  # the global minimum is never a grey "other" point
            named = [*named[: MAX_LEGEND_GROUPS - 1], lowest.space_group]
        colours = [c for k, c in enumerate(plt.get_cmap("tab10").colors) if k != 7]  # grey is "other"
        z_primes = sorted({m.z_prime for m in self.minima if m.z_prime is not None})
        # by Z', when there is more than one: circles for the usual Z' = 1
        shapes = iter(["D", "v", "P", "*", "h"] * len(z_primes))
        marker = {zp: {1.0: "o", 2.0: "^", 0.5: "s"}.get(zp) or next(shapes) for zp in z_primes} \
            if len(z_primes) > 1 else {}

        def scatter(pts: list[LandscapeEntry], colour: Any, label: str, size: float) -> None:
            first = True  # one legend entry per group, whatever its markers
            for zp in [*z_primes, None] if marker else [None]:
                sub = [m for m in pts if m.z_prime == zp] if marker else pts
                if sub:
                    ax.scatter([m.density_gcm3 for m in sub], [m.energy_kjmol - e0 for m in sub], s=size,
                               color=colour, marker=marker.get(zp, "X" if marker else "o"), alpha=0.8,
                               label=label if first else None)
                    first = False

        for k, sg in enumerate(named):
            pts = [m for m in self.minima if m.space_group == sg]
            scatter(pts, colours[k % len(colours)], f"{_mathtext_group(sg)} ({len(pts)})", 18)
        rest = [m for m in self.minima if m.space_group not in named]
        if rest:
            n_groups = len({m.space_group for m in rest})
            scatter(rest, "0.6", f"other ({n_groups} groups, {len(rest)})", 14)
        # the global minimum named beside its point (its id as in landscape.csv and cif/)
        densities = [m.density_gcm3 for m in self.minima]
        left = lowest.density_gcm3 > (min(densities) + max(densities)) / 2  # the label towards the middle
        ax.annotate(f"{lowest.id} {_mathtext_group(lowest.space_group)}", (lowest.density_gcm3, 0.0),
                    xytext=(-6 if left else 6, 2), textcoords="offset points", fontsize=7, va="bottom",
                    ha="right" if left else "left")
        ax.set_xlabel("density (g/cm$^3$)")
        ax.set_ylabel("lattice energy rel. to global minimum\n(kJ/mol per molecule)")
        ax.yaxis.set_major_locator(MaxNLocator(nbins=8))
        m0 = self.minima[0]
        formula = molecule_formula(m0.structure, m0.z)
        title = f"{name} ({formula})" if name else f"{formula} ({self.smiles})" if self.smiles else formula
        level, charges = self.levels[self.level_keys[0]], self.meta.get("charge_method")
        if charges and f"{charges} charges" not in level:  # a CSP run's level names them already
            level += f", {charges} charges"
        # a figure title (the axes are narrowed by the legend beside them: a title centred on
        # them would be cut at the figure's edge), each line wrapped to the figure's width
        lines = [f"CSP landscape of {title}: {len(self.minima)} minima, global minimum "
                 f"{e0:.1f} kJ/mol per molecule", level]
        fig.suptitle("\n".join(textwrap.fill(t, 100, break_on_hyphens=False) for t in lines), fontsize=9)
        # one entry per space group (whatever its markers), coloured, beside the axes (the
        # axes' legend); below it Z' by shape
        handles, labels = ax.get_legend_handles_labels()
        if marker:
            from sim_backends.csp.dedupe import format_z_prime  # Z' = 1/2, as the tables write it

            n_zp = {zp: sum(m.z_prime == zp for m in self.minima) for zp in z_primes}
            ax.add_artist(ax.legend([Line2D([], [], ls="none", marker=marker[zp], color="0.25") for zp in z_primes],
                                    [f"Z' = {format_z_prime(zp)} ({n_zp[zp]})" for zp in z_primes],
                                    fontsize=7, frameon=False,
                                    title="Z' (n)", title_fontsize=7, loc="lower left", bbox_to_anchor=(1.01, 0.0)))
        ax.legend([Line2D([], [], ls="none", marker="o", color=h.get_facecolor()[0], alpha=0.8) for h in handles],
                  labels, fontsize=7, frameon=False, title="space group (n)", title_fontsize=7,
                  loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return fig


# -- shipped reference landscapes -----------------------------------------------------------
def load_target_i(level: str = "PBE_MBD", path: str | Path | None = None) -> Landscape:
    """The 88 predicted structures of CSP blind-test molecule I (C6H6O, Genarris case
    study, BSD-3-Clause) at ``level`` ("PBE_MBD" or "MACE"), energies relative (kJ/mol per
    molecule, from ``energy_per_mol_eV``), read from the exact P1 ``.extxyz`` expansions (not
    the CIFs, whose symmetry operators common readers expand wrongly); the chemically
    broken structure (``connectivity_ok=False``) is left out; the structure matching the
    experimental crystal (XULDUD) is flagged ``observed``.

    Raises:
        LandscapeError: unknown level or missing file.
    """
    from ase.io import read

    if level not in ("PBE_MBD", "MACE"):
        raise LandscapeError(f"unknown level {level!r}; use PBE_MBD or MACE")
    path = Path(path) if path else TARGET_I_DIR / f"Target_I_{level}.extxyz"
    if not path.is_file():
        raise LandscapeError(f"landscape file not found: {path}")
    with open(TARGET_I_DIR / "Target_I_landscape.csv", newline="") as fh:
        observed = {r["id"] for r in csv.DictReader(fh) if r["experimental_match"].strip()}
    kept = [a for a in read(str(path), ":") if bool(a.info.get("connectivity_ok", True))]
    e_min = min(float(a.info["energy_per_mol_eV"]) for a in kept)
    entries = [LandscapeEntry(str(a.info["id"]), (float(a.info["energy_per_mol_eV"]) - e_min) * _EV_TO_KJMOL,
                              z=int(a.info.get("Z", 1)), atoms=a, observed=str(a.info["id"]) in observed)
               for a in kept]
    return Landscape("", entries, name="Target_I", levels={level: level})


def load_x23(path: str | Path | None = None) -> Landscape:
    """The 17 X23 crystals (Reilly & Tkatchenko, J. Chem. Phys. 139, 024705 (2013)), one
    per molecule, with their reference lattice energies (kJ/mol per molecule)."""
    from pymatgen.core import Structure

    base = Path(path) if path else X23_DIR
    energies: dict[str, float] = {}
    with open(base / "x23_lattice_energies.csv", newline="") as fh:
        for row in csv.DictReader(line for line in fh if not line.startswith("#")):
            energies[row["system"]] = float(row["E_latt_X23_kJmol"])
    entries = [LandscapeEntry(cif.stem, energies.get(cif.stem, 0.0), z=_cif_z(cif),
                              structure=Structure.from_file(str(cif)))
               for cif in sorted((base / "cif").glob("*.cif"))]
    return Landscape("", entries, name="X23", levels={"X23": "X23 reference lattice energy"})


# -- helpers --------------------------------------------------------------------------------
def _truthy(value: object) -> bool:
    return str(value).strip().lower() not in ("false", "f", "0", "no")


def _num(text: Any, default: float = math.nan) -> float:
    try:
        return float(text) if text not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _level_value(row: dict[str, str], level: str) -> float:
    """A level's energy in a table row: absolute ``E_<L>`` where given, else ``dE_<L>``; nan
    where both are empty (a failed calculation)."""
    text = row.get(f"E_{level}_kJmol_per_mol")
    if text in (None, ""):
        text = row.get(f"dE_{level}_kJmol_per_mol")
    return math.nan if text in (None, "") else float(text)


def _written_by_write(out: Path) -> list[Path]:
    """The files an earlier :meth:`Landscape.write` into ``out`` left there, read from its
    ``landscape.csv``: ``cif/<id>.cif`` of each row (the names it writes), ``landscape_<L>.extxyz``
    of each level column ``E_<L>_kJmol_per_mol``, ``landscape.png``, ``cif/energies.csv``,
    ``run.json`` and the table itself. None without a ``landscape.csv`` (no earlier landscape:
    nothing of the folder is touched)."""
    table = out / "landscape.csv"
    if not table.is_file():
        return []
    try:
        with open(table, newline="") as fh:
            reader = csv.DictReader(fh)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    if "id" not in header:
        return []  # not a table this writer wrote
    files = [out / "cif" / f"{row['id']}.cif" for row in rows
             if row.get("id") and "/" not in row["id"] and "\\" not in row["id"]
             and row.get("cif", f"cif/{row['id']}.cif") == f"cif/{row['id']}.cif"]
    files += [out / f"landscape_{m.group(1)}.extxyz" for col in header
              if (m := re.fullmatch(r"E_(.+)_kJmol_per_mol", col)) and "/" not in m.group(1)]
    return [*files, out / "landscape.png", out / "cif" / "energies.csv", out / "run.json", table]


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LandscapeError(f"{path}: not readable JSON ({exc})") from None
    return data if isinstance(data, dict) else {}


def _cif_z(path: Path) -> int:
    """``_crystal_agent_Z_molecules`` of a CIF written by crystal-agent, else 1."""
    try:
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("_crystal_agent_Z_molecules"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 1


def _mathtext_group(symbol: str) -> str:
    """``P2_1/c`` -> ``P2$_1$/c`` (screw-axis subscripts for matplotlib)."""
    return re.sub(r"_(\d)", r"$_\1$", symbol)


def _fmt(x: float | None, digits: int = 4) -> str:
    return "" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"
