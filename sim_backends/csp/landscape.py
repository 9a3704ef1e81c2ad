"""A crystal-energy landscape: the unique lattice-energy minima of one CSP run.

Written to disk as

* ``landscape.csv``: one row per unique minimum, sorted by energy (columns ``id,
  rank, energy_kjmol, rel_energy_kjmol, density_gcm3, space_group,
  space_group_number, search_space_group, z, multiplicity, cif``), plus
  ``dE_ff_kJmol_per_mol`` so :mod:`agent.landscape_io`-style readers find the level;
* ``cif/<id>.cif``: each structure (P1 listing of the searched cell, all atoms);
* ``landscape_ff.extxyz``: the same structures as one multi-frame extxyz (``info``:
  ``id``, ``Z``, ``energy_kjmol``, ``connectivity_ok``);
* ``landscape.png``: lattice energy vs density scatter (matplotlib, Agg);
* ``run.json``: run metadata (counts, timings, settings).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pymatgen.core import Structure


@dataclass
class CSPMinimum:
    """One unique lattice-energy minimum.

    Attributes:
        id: stable id within the landscape, e.g. ``"m0003"`` (rank order).
        energy_kjmol: lattice energy per molecule, kJ/mol.
        density_gcm3: density, g/cm^3.
        space_group: space group detected after minimisation (spglib, 0.1 A).
        space_group_number: its number.
        search_space_group: the group the trial was generated and minimised in.
        z: molecules in the stored cell.
        multiplicity: minimised trials that ended in this minimum.
        structure: the crystal (pymatgen, all atoms, molecules whole).
    """

    id: str
    energy_kjmol: float
    density_gcm3: float
    space_group: str
    space_group_number: int
    search_space_group: str
    z: int
    multiplicity: int
    structure: Structure

    def to_dict(self, with_cif: bool = True) -> dict[str, Any]:
        """JSON-able record; ``cif`` holds the CIF text when ``with_cif``."""
        d = {
            "id": self.id, "energy_kjmol": float(self.energy_kjmol),
            "density_gcm3": float(self.density_gcm3), "space_group": self.space_group,
            "space_group_number": int(self.space_group_number),
            "search_space_group": self.search_space_group, "z": int(self.z),
            "multiplicity": int(self.multiplicity),
        }
        if with_cif:
            d["cif"] = self.cif()
        return d

    def cif(self) -> str:
        """CIF text of the structure."""
        from pymatgen.io.cif import CifWriter

        return str(CifWriter(self.structure))


@dataclass
class Landscape:
    """The unique minima of one CSP run, sorted by energy.

    Attributes:
        smiles: the molecule.
        minima: unique minima, lowest energy first.
        meta: run metadata (n_trials, n_minimised, n_converged, wall_s, settings...).
    """

    smiles: str
    minima: list[CSPMinimum]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.minima)

    @property
    def global_minimum(self) -> CSPMinimum | None:
        return self.minima[0] if self.minima else None

    def to_records(self, with_cif: bool = True) -> list[dict[str, Any]]:
        """List of :meth:`CSPMinimum.to_dict` records, lowest energy first."""
        return [m.to_dict(with_cif) for m in self.minima]

    def find_match(self, reference: Structure, ltol: float = 0.3, stol: float = 0.4,
                   angle_tol: float = 10.0, heavy_only: bool = True) -> tuple[int, CSPMinimum, float] | None:
        """The lowest-energy minimum matching a reference crystal (e.g. the experiment).

        Compared with pymatgen ``StructureMatcher(ltol, stol, angle_tol, scale=True,
        primitive_cell=True, attempt_supercell=True)`` -- ``scale=True`` because the
        force-field cell volume differs from the reference by a few per cent -- on the
        heavy atoms when ``heavy_only`` (hydrogen positions of X-ray and DFT
        structures differ from the rigid MMFF geometry). The comparison is independent
        of cell setting, origin and atom order.

        Returns:
            (rank starting at 1, the minimum, RMS displacement normalised by
            (V/n)^(1/3) as pymatgen reports it), or None when nothing matches.
        """
        from pymatgen.analysis.structure_matcher import StructureMatcher

        from sim_backends.csp.dedupe import heavy_atoms

        sm = StructureMatcher(ltol=ltol, stol=stol, angle_tol=angle_tol, scale=True,
                              primitive_cell=True, attempt_supercell=True)
        ref = heavy_atoms(reference) if heavy_only else reference
        for rank, m in enumerate(self.minima, 1):
            st = heavy_atoms(m.structure) if heavy_only else m.structure
            if sm.fit(ref, st):
                rms = sm.get_rms_dist(ref, st)
                return rank, m, float(rms[0]) if rms is not None else float("nan")
        return None

    def write(self, out_dir: str | Path) -> Path:
        """Write CSV, CIFs, extxyz, plot and run.json into ``out_dir`` (created)."""
        out = Path(out_dir)
        (out / "cif").mkdir(parents=True, exist_ok=True)
        e0 = self.minima[0].energy_kjmol if self.minima else 0.0
        cols = ["id", "rank", "energy_kjmol", "rel_energy_kjmol", "dE_ff_kJmol_per_mol",
                "density_gcm3", "space_group", "space_group_number", "search_space_group",
                "z", "multiplicity", "cif"]
        with open(out / "landscape.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(cols)
            for rank, m in enumerate(self.minima, 1):
                cif_path = out / "cif" / f"{m.id}.cif"
                cif_path.write_text(m.cif())
                rel = m.energy_kjmol - e0
                w.writerow([m.id, rank, f"{m.energy_kjmol:.4f}", f"{rel:.4f}", f"{rel:.4f}",
                            f"{m.density_gcm3:.4f}", m.space_group, m.space_group_number,
                            m.search_space_group, m.z, m.multiplicity, f"cif/{m.id}.cif"])
        self._write_extxyz(out / "landscape_ff.extxyz")
        if self.minima:
            self.plot(out / "landscape.png")
        (out / "run.json").write_text(json.dumps({"smiles": self.smiles, **self.meta}, indent=2,
                                                 default=str))
        return out

    def _write_extxyz(self, path: Path) -> None:
        from ase.io import write
        from pymatgen.io.ase import AseAtomsAdaptor

        frames = []
        for m in self.minima:
            atoms = AseAtomsAdaptor.get_atoms(m.structure)
            atoms.info.update({"id": m.id, "Z": m.z, "energy_kjmol": m.energy_kjmol,
                               "connectivity_ok": True})
            frames.append(atoms)
        if frames:
            write(path, frames, format="extxyz")

    def plot(self, path: str | Path) -> None:
        """Energy (relative, kJ/mol) vs density scatter, coloured by detected space group."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        e0 = self.minima[0].energy_kjmol
        fig, ax = plt.subplots(figsize=(5.5, 4.2))
        groups = sorted({m.space_group for m in self.minima})
        for sg in groups:
            pts = [m for m in self.minima if m.space_group == sg]
            ax.scatter([m.density_gcm3 for m in pts], [m.energy_kjmol - e0 for m in pts],
                       s=18, label=sg, alpha=0.8)
        ax.set_xlabel("density (g/cm$^3$)")
        ax.set_ylabel("lattice energy - global minimum (kJ/mol)")
        ax.set_title(f"CSP landscape {self.smiles} ({len(self.minima)} minima)")
        if len(groups) <= 12:
            ax.legend(fontsize=7, frameon=False)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
