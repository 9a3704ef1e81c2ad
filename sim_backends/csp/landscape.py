"""A crystal-energy landscape: the unique lattice-energy minima of one CSP run.

Written to disk as

* ``landscape.csv``: one row per unique minimum, sorted by energy (columns ``id,
  rank, energy_kjmol, rel_energy_kjmol, density_gcm3, space_group,
  space_group_number, search_space_group, z, multiplicity, cif``), plus
  ``dE_ff_kJmol_per_mol`` so :mod:`agent.landscape_io`-style readers find the level
  (the level is :data:`FF_LEVEL`, recorded in ``run.json`` under ``levels``);
* ``cif/<id>.cif``: each structure as a crystallographer's CIF (:func:`crystal_cif`):
  Niggli-reduced cell, space-group operations and asymmetric unit (spglib at
  ``symprec``), data block and ``_chemical_formula_sum`` of the MOLECULE with ``Z`` in
  molecules, and its energy at every computed level (``_crystal_agent_energy_*`` loop,
  kJ/mol per molecule, level of theory named); ``cif/energies.csv`` (``id,
  energy_kjmol``) beside them, as ``crystal-agent lab identify --structures`` reads;
* ``landscape_ff.extxyz``: the same structures as one multi-frame extxyz (``info``:
  ``id``, ``Z``, ``energy_kjmol``, ``connectivity_ok``);
* ``landscape.png``: lattice energy vs density scatter by space group (matplotlib, Agg);
* ``run.json``: run metadata (counts, timings, settings, ``levels``).

The CIF the campaign computes on (:meth:`CSPMinimum.cif`, stored per structure) stays
the exact P1 listing of the minimised cell; :func:`crystal_cif` is the output form.
"""

from __future__ import annotations

import csv
import json
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pymatgen.core import Structure

#: level of theory of the CSP lattice energies (:mod:`sim_backends.csp.forcefield`)
FF_LEVEL = "W99 exp-6 + Ewald point charges, rigid molecule (force field)"
#: spglib tolerance (A) of the written symmetry, the same as the space-group detection
CIF_SYMPREC = 0.1
#: space groups named in the landscape plot's legend; the rest are grouped as "other"
MAX_LEGEND_GROUPS = 9


@dataclass(frozen=True)
class LevelEnergy:
    """One energy of a structure at one level of theory, as written into its CIF.

    Attributes:
        level: human-readable level of theory, e.g. ``"GFN2-xTB periodic (tblite)"``.
        quantity: what the number is: ``"lattice energy"``, ``"relative energy"``,
            ``"Delta-GP prediction"``, ``"F_vib(298 K)"`` ...
        energy_kjmol: the value, kJ/mol per molecule.
        std_kjmol: its 1-sigma uncertainty (posterior std of a prediction), None if exact.
    """

    level: str
    quantity: str
    energy_kjmol: float
    std_kjmol: float | None = None


def molecule_formula(structure: Structure, n_molecules: int) -> str:
    """Hill formula of ONE molecule of a crystal of ``n_molecules`` (e.g. ``C2H2`` for
    acetylene, where the reduced cell formula would be ``HC``).

    Raises:
        ValueError: ``n_molecules`` < 1 or not dividing the cell composition.
    """
    from pymatgen.core import Composition

    if n_molecules < 1:
        raise ValueError(f"n_molecules must be >= 1, got {n_molecules}")
    counts = structure.composition.element_composition.get_el_amt_dict()
    per = {el: n / n_molecules for el, n in counts.items()}
    if any(abs(v - round(v)) > 1e-6 for v in per.values()):
        raise ValueError(f"cell composition {structure.composition.formula} is not {n_molecules} molecules")
    return Composition({el: round(v) for el, v in per.items()}).hill_formula.replace(" ", "")


def _mathtext_group(symbol: str) -> str:
    """``P2_1/c`` -> ``P2$_1$/c`` (screw-axis subscripts for matplotlib)."""
    return re.sub(r"_(\d)", r"$_\1$", symbol)


def _block_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", text).strip("_") or "structure"


def _cif_number(x: float) -> str:
    return "?" if x is None or not math.isfinite(x) else f"{x:.3f}"


def crystal_cif(structure: Structure, *, n_molecules: int, name: str = "", structure_id: str = "",
                smiles: str = "", energies: Sequence[LevelEnergy] = (), space_group: str = "",
                symprec: float = CIF_SYMPREC) -> str:
    """The CIF of a molecular crystal a crystallographer can open (see ``_crystal_cif_at``).

    The symmetry written must expand back to exactly the cell's atoms: a structure that is
    only nearly symmetric at ``symprec`` (atoms within ``symprec`` of a higher-symmetry
    position) would expand into near-duplicate atoms in any reader. So the CIF is written
    at ``symprec`` and read back; if the atom count differs, the tolerance is lowered by
    10x (down to 1e-5 A) until it matches, and ``_crystal_agent_symprec_A`` records the
    tolerance used. Atom positions are never moved.
    """
    from pymatgen.io.cif import CifParser

    tol = float(symprec)
    while True:
        text, n_atoms = _crystal_cif_at(structure, n_molecules=n_molecules, name=name,
                                        structure_id=structure_id, smiles=smiles, energies=energies,
                                        space_group=space_group, symprec=tol)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                back = CifParser.from_str(text).parse_structures(primitive=False)
            ok = len(back) == 1 and len(back[0]) == n_atoms
        except Exception:  # noqa: BLE001 - an unreadable CIF counts as a mismatch
            ok = False
        if ok or tol <= 1e-5:
            return text
        tol /= 10.0


def _crystal_cif_at(structure: Structure, *, n_molecules: int, name: str, structure_id: str,
                    smiles: str, energies: Sequence[LevelEnergy], space_group: str,
                    symprec: float) -> tuple[str, int]:
    """The CIF text at one symmetry tolerance and the number of atoms its cell holds.

    The cell is the primitive cell spglib finds at ``symprec`` (A), Niggli-reduced
    (``Z`` counts the molecules in it, which may be fewer than in ``structure``), written
    with the space-group operations spglib finds in that cell (pymatgen ``CifWriter(symprec=...,
    refine_struct=False)``: the asymmetric unit plus explicit ``_symmetry_equiv_pos``
    operations, so any reader expands it to the full cell). The data block is
    ``data_<name or formula>_<structure_id>``; ``_chemical_formula_sum`` is the formula
    of one molecule and ``_cell_formula_units_Z`` counts molecules. Each of ``energies``
    is a row of the ``_crystal_agent_energy_*`` loop (level, quantity, kJ/mol per
    molecule, std or ``?``); ``space_group`` (the symbol recorded with the structure)
    is written as ``_crystal_agent_space_group_detected`` beside the one found here.

    Raises:
        ValueError: ``n_molecules`` not matching the cell composition.
    """
    from pymatgen.io.cif import CifBlock, CifFile, CifWriter

    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    formula = molecule_formula(structure, n_molecules)
    try:  # the primitive cell at the symmetry tolerance, then its Niggli-reduced basis
        primitive = SpacegroupAnalyzer(structure, symprec=symprec).find_primitive()
    except Exception:  # noqa: BLE001 - spglib failure: keep the cell as given
        primitive = None
    if primitive is not None and len(structure) % len(primitive) == 0:
        n_molecules = n_molecules * len(primitive) // len(structure)
        structure = primitive
    reduced = structure.get_reduced_structure("niggli")
    writer = CifWriter(reduced, symprec=symprec, refine_struct=False)
    (old,) = writer.cif_file.data.values()
    data = dict(old.data)
    comp = structure.composition.element_composition / n_molecules
    data["_chemical_formula_sum"] = comp.hill_formula
    data["_chemical_formula_structural"] = formula
    data["_cell_formula_units_Z"] = str(int(n_molecules))
    items: dict[str, Any] = {"_crystal_agent_structure_id": structure_id or "?",
                             "_crystal_agent_molecule_formula": formula,
                             "_crystal_agent_molecule_smiles": f"'{smiles}'" if smiles else "?",
                             "_crystal_agent_Z_molecules": str(int(n_molecules)),
                             "_crystal_agent_symprec_A": f"{symprec:g}"}
    if space_group:
        items["_crystal_agent_space_group_detected"] = f"'{space_group}'"
    loops = list(old.loops)
    if energies:
        cols = {"_crystal_agent_energy_level": [e.level for e in energies],  # CifBlock quotes or
                "_crystal_agent_energy_quantity": [e.quantity for e in energies],  # ;-wraps these
                "_crystal_agent_energy_kJmol_per_molecule": [_cif_number(e.energy_kjmol) for e in energies],
                "_crystal_agent_energy_std_kJmol_per_molecule": [
                    "?" if e.std_kjmol is None else _cif_number(e.std_kjmol) for e in energies]}
        items.update(cols)
        loops.append(list(cols))
    # the crystal-agent items after the cell, before the symmetry and atom loops
    ordered: dict[str, Any] = {}
    for key, value in data.items():
        if key == "_symmetry_equiv_pos_site_id":
            ordered.update(items)
        ordered[key] = value
    header = _block_name(f"{name or formula}_{structure_id}" if structure_id else (name or formula))
    levels = "; ".join(sorted({e.level for e in energies}))
    comment = (f"# crystal-agent: {name or formula} ({formula}{', ' + smiles if smiles else ''}), "
               f"Z = {n_molecules} molecules\n# energies in kJ/mol per molecule"
               + (f"; levels: {levels}" if levels else ""))
    return str(CifFile({header: CifBlock(ordered, loops, header)}, comment=comment)), len(reduced)


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
        """CIF text of the structure: the exact P1 listing of the minimised cell (what
        structure-level backends compute on; :meth:`output_cif` is the one to read)."""
        from pymatgen.io.cif import CifWriter

        return str(CifWriter(self.structure))

    def output_cif(self, smiles: str = "", e_min_kjmol: float | None = None) -> str:
        """:func:`crystal_cif` of this minimum with its force-field lattice energy (and
        the energy relative to ``e_min_kjmol``, the landscape's lowest, when given)."""
        energies = [LevelEnergy(FF_LEVEL, "lattice energy", self.energy_kjmol)]
        if e_min_kjmol is not None:
            energies.append(LevelEnergy(FF_LEVEL, "relative energy", self.energy_kjmol - e_min_kjmol))
        return crystal_cif(self.structure, n_molecules=self.z, structure_id=self.id, smiles=smiles,
                           energies=energies, space_group=self.space_group)


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
        structures differ from the rigid MMFF geometry), except for molecules with fewer
        than three heavy atoms (:func:`~sim_backends.csp.dedupe.keeps_hydrogens`), whose
        orientations only the hydrogens fix. The comparison is independent of cell
        setting, origin and atom order.

        Returns:
            (rank starting at 1, the minimum, RMS displacement normalised by
            (V/n)^(1/3) as pymatgen reports it), or None when nothing matches.
        """
        hits = self.find_matches(reference, ltol, stol, angle_tol, heavy_only, first_only=True)
        return hits[0] if hits else None

    def find_matches(self, reference: Structure, ltol: float = 0.3, stol: float = 0.4,
                     angle_tol: float = 10.0, heavy_only: bool = True,
                     first_only: bool = False) -> list[tuple[int, CSPMinimum, float]]:
        """Every minimum matching ``reference`` under the :meth:`find_match` test, as
        (rank, minimum, normalised RMS) lowest first; more than one means the dedupe
        left duplicates or the tolerances are too loose to tell the minima apart."""
        from pymatgen.analysis.structure_matcher import StructureMatcher

        from sim_backends.csp.dedupe import heavy_atoms, keeps_hydrogens

        sm = StructureMatcher(ltol=ltol, stol=stol, angle_tol=angle_tol, scale=True,
                              primitive_cell=True, attempt_supercell=True)
        if self.minima and keeps_hydrogens(self.minima[0].structure, self.minima[0].z):
            heavy_only = False  # < 3 heavy atoms per molecule: their positions miss the orientations
        ref = heavy_atoms(reference, keep_h=False) if heavy_only else reference
        hits = []
        for rank, m in enumerate(self.minima, 1):
            st = heavy_atoms(m.structure, keep_h=False) if heavy_only else m.structure
            if sm.fit(ref, st):
                rms = sm.get_rms_dist(ref, st)
                hits.append((rank, m, float(rms[0]) if rms is not None else float("nan")))
                if first_only:
                    break
        return hits

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
                cif_path.write_text(m.output_cif(self.smiles, e0))
                rel = m.energy_kjmol - e0
                w.writerow([m.id, rank, f"{m.energy_kjmol:.4f}", f"{rel:.4f}", f"{rel:.4f}",
                            f"{m.density_gcm3:.4f}", m.space_group, m.space_group_number,
                            m.search_space_group, m.z, m.multiplicity, f"cif/{m.id}.cif"])
        with open(out / "cif" / "energies.csv", "w", newline="") as fh:  # for `lab identify --structures`
            w = csv.writer(fh)
            w.writerow(["id", "energy_kjmol"])
            w.writerows([m.id, f"{m.energy_kjmol:.4f}"] for m in self.minima)
        self._write_extxyz(out / "landscape_ff.extxyz")
        if self.minima:
            self.plot(out / "landscape.png")
        (out / "run.json").write_text(json.dumps({"smiles": self.smiles, **self.meta,
                                                  "levels": {"ff": FF_LEVEL}}, indent=2, default=str))
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

    def plot(self, path: str | Path, name: str = "") -> None:
        """:meth:`figure` saved to ``path``."""
        import matplotlib.pyplot as plt

        fig = self.figure(name)
        fig.savefig(path, dpi=120)
        plt.close(fig)

    def figure(self, name: str = "") -> Any:
        """Energy (relative, kJ/mol per molecule) vs density scatter, coloured by detected
        space group: the :data:`MAX_LEGEND_GROUPS` most populated groups by name, the rest
        as "other", legend outside the axes."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        e0 = self.minima[0].energy_kjmol
        fig, ax = plt.subplots(figsize=(7.2, 4.4))
        counts: dict[str, int] = {}
        for m in self.minima:
            counts[m.space_group] = counts.get(m.space_group, 0) + 1
        named = sorted(counts, key=lambda g: (-counts[g], g))[:MAX_LEGEND_GROUPS]
        if len(counts) == MAX_LEGEND_GROUPS + 1:  # "other" would hold one group: name it
            named = sorted(counts, key=lambda g: (-counts[g], g))
        colours = [c for k, c in enumerate(plt.get_cmap("tab10").colors) if k != 7]  # grey is "other"
        for k, sg in enumerate(named):
            pts = [m for m in self.minima if m.space_group == sg]
            ax.scatter([m.density_gcm3 for m in pts], [m.energy_kjmol - e0 for m in pts], s=18,
                       color=colours[k % len(colours)], label=f"{_mathtext_group(sg)} ({len(pts)})",
                       alpha=0.8)
        rest = [m for m in self.minima if m.space_group not in named]
        if rest:
            n_groups = len({m.space_group for m in rest})
            ax.scatter([m.density_gcm3 for m in rest], [m.energy_kjmol - e0 for m in rest], s=14,
                       color="0.6", marker="s", label=f"other ({n_groups} groups, {len(rest)})", alpha=0.8)
        ax.set_xlabel("density (g/cm$^3$)")
        ax.set_ylabel("lattice energy rel. to global minimum\n(kJ/mol per molecule)")
        ax.yaxis.set_major_locator(MaxNLocator(nbins=8))
        m0 = self.minima[0]
        formula = molecule_formula(m0.structure, m0.z)
        title = f"{name} ({formula})" if name else f"{formula} ({self.smiles})" if self.smiles else formula
        charges = self.meta.get("charge_method")
        ax.set_title(f"CSP landscape of {title}: {len(self.minima)} minima, global minimum "
                     f"{e0:.1f} kJ/mol per molecule\n{FF_LEVEL}" + (f", {charges} charges" if charges else ""),
                     fontsize=9)
        ax.legend(fontsize=7, frameon=False, title="space group (n)", title_fontsize=7,
                  loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        return fig
