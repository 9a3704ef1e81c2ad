"""Crystal-energy landscapes the simulated lab draws its outcomes from.

A landscape is a list of :class:`LandscapeEntry`: a predicted structure (pymatgen
``Structure``) with its energy in kJ/mol per molecule (relative energies are enough)
and optionally a free energy at the crystallisation temperature.

Loaders for the shipped reference data (``data/reference/``):

* :func:`load_target_i` -- 88 predicted structures of CSP blind-test molecule I
  (C6H6O, Genarris case study, BSD-3-Clause); read from the exact P1 ``.extxyz``
  expansions (not the CIFs, whose symmetry operators common readers expand wrongly);
  the chemically broken structure (``connectivity_ok=False``) is left out.
* :func:`load_x23` -- the 17 X23 crystals (Reilly & Tkatchenko, J. Chem. Phys. 139,
  024705 (2013)) with their reference lattice energies.
* :func:`load_cif_dir` -- any folder of CIFs, energies from ``energies.csv``
  (columns ``id,energy_kjmol[,free_energy_kjmol]``, id = file stem).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pymatgen.core import Structure

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "data" / "reference"
TARGET_I_DIR = REFERENCE_DIR / "landscapes" / "target_I"
X23_DIR = REFERENCE_DIR / "x23"


@dataclass(frozen=True)
class LandscapeEntry:
    """One candidate crystal structure of a molecule.

    Attributes:
        structure_id: unique id within the landscape.
        structure: the crystal structure.
        energy_kjmol: lattice (or relative) energy, kJ/mol per molecule.
        free_energy_kjmol: free energy at the experiment temperature, kJ/mol per
            molecule, if known (then used in place of the energy).
    """

    structure_id: str
    structure: Structure
    energy_kjmol: float
    free_energy_kjmol: float | None = None

    @property
    def ranking_energy_kjmol(self) -> float:
        return self.energy_kjmol if self.free_energy_kjmol is None else self.free_energy_kjmol


def load_target_i(level: str = "PBE_MBD", path: Path | None = None) -> list[LandscapeEntry]:
    """The target I landscape at ``level`` ("PBE_MBD" or "MACE"); energies relative (kJ/mol)."""
    from ase.io import read
    from pymatgen.io.ase import AseAtomsAdaptor

    if level not in ("PBE_MBD", "MACE"):
        raise ValueError(f"unknown level {level!r}; use PBE_MBD or MACE")
    path = path or TARGET_I_DIR / f"Target_I_{level}.extxyz"
    if not Path(path).is_file():
        raise FileNotFoundError(f"landscape file not found: {path}")
    frames = read(str(path), ":")
    ev_to_kjmol = 96.485
    kept = [a for a in frames if bool(a.info.get("connectivity_ok", True))]
    e_min = min(float(a.info["energy_per_mol_eV"]) for a in kept)
    return [
        LandscapeEntry(
            structure_id=str(a.info["id"]),
            structure=AseAtomsAdaptor.get_structure(a),
            energy_kjmol=(float(a.info["energy_per_mol_eV"]) - e_min) * ev_to_kjmol,
        )
        for a in kept
    ]


def experimental_target_i_id() -> str:
    """Id of the target I structure that matches the experimental crystal (XULDUD)."""
    with open(TARGET_I_DIR / "Target_I_landscape.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["experimental_match"].strip():
                return row["id"]
    raise LookupError("no experimental match in Target_I_landscape.csv")


def load_x23(path: Path | None = None) -> list[LandscapeEntry]:
    """The 17 X23 crystals (one per molecule) with reference lattice energies (kJ/mol)."""
    from pymatgen.core import Structure

    base = Path(path) if path else X23_DIR
    energies: dict[str, float] = {}
    with open(base / "x23_lattice_energies.csv", newline="") as fh:
        rows = csv.DictReader(line for line in fh if not line.startswith("#"))
        for row in rows:
            energies[row["system"]] = float(row["E_latt_X23_kJmol"])
    entries = []
    for cif in sorted((base / "cif").glob("*.cif")):
        entries.append(LandscapeEntry(cif.stem, Structure.from_file(str(cif)), energies.get(cif.stem, 0.0)))
    return entries


def load_cif_dir(directory: str | Path) -> list[LandscapeEntry]:
    """All ``*.cif`` in ``directory``; energies from ``energies.csv`` there (else 0).

    Raises:
        FileNotFoundError: the directory does not exist or holds no CIF.
        ValueError: a CIF cannot be parsed or energies.csv is malformed (one line).
    """
    from pymatgen.core import Structure

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"structure directory not found: {directory}")
    cifs = sorted(directory.glob("*.cif"))
    if not cifs:
        raise FileNotFoundError(f"no *.cif files in {directory}")
    energies: dict[str, tuple[float, float | None]] = {}
    table = directory / "energies.csv"
    if table.is_file():
        with open(table, newline="") as fh:
            for i, row in enumerate(csv.DictReader(fh), start=2):
                try:
                    free = row.get("free_energy_kjmol")
                    energies[row["id"]] = (float(row["energy_kjmol"]), float(free) if free not in (None, "") else None)
                except (KeyError, TypeError, ValueError):
                    raise ValueError(f"{table}:{i}: need columns id,energy_kjmol[,free_energy_kjmol]") from None
    entries = []
    for cif in cifs:
        try:
            structure = Structure.from_file(str(cif))
        except Exception as exc:  # pymatgen raises many types for bad CIFs
            raise ValueError(f"cannot read {cif.name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        energy, free = energies.get(cif.stem, (0.0, None))
        entries.append(LandscapeEntry(cif.stem, structure, energy, free))
    return entries


def write_cif_dir(entries: list[LandscapeEntry], directory: str | Path) -> Path:
    """Write a landscape as ``<id>.cif`` files plus ``energies.csv`` (for ``lab serve``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "energies.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "energy_kjmol", "free_energy_kjmol"])
        for e in entries:
            e.structure.to(filename=str(directory / f"{e.structure_id}.cif"))
            w.writerow([e.structure_id, f"{e.energy_kjmol:.4f}", "" if e.free_energy_kjmol is None else f"{e.free_energy_kjmol:.4f}"])
    return directory
