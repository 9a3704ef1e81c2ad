"""Crystallographic output of predicted structures: CIFs a crystallographer opens.

:func:`crystal_cif` writes a molecular crystal with its space-group operations and
asymmetric unit (spglib at ``symprec``), Niggli-reduced cell, data block and
``_chemical_formula_sum`` of the MOLECULE with ``Z`` in molecules, and its energy at every
computed level (``_crystal_agent_energy_*`` loop, kJ/mol per molecule, level of theory
named). The landscape type itself (structures, energies per level, the on-disk
layouts) is :class:`sim_backends.landscape.Landscape`; the CIF the campaign computes on
(:meth:`~sim_backends.landscape.LandscapeEntry.cif`, stored per structure) stays the
exact P1 listing of the minimised cell, :func:`crystal_cif` is the output form.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pymatgen.core import Structure

#: level of theory of the CSP lattice energies (:mod:`sim_backends.csp.forcefield`)
FF_LEVEL = "W99 exp-6 + Ewald point charges, rigid molecule (force field)"
#: spglib tolerance (A) of the written symmetry, the same as the space-group detection
CIF_SYMPREC = 0.1


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


def cif_formula_units(path: str | Path, default: int | None = None) -> int | None:
    """Molecules in the cell of a CIF file that :func:`crystal_cif` wrote
    (``_crystal_agent_Z_molecules``: the primitive cell of the detected symmetry, which can
    hold fewer molecules than the search cell); ``default`` when the file or the item is
    missing (a CIF from elsewhere, whose ``_cell_formula_units_Z`` may count formula units)."""
    try:
        m = re.search(r"^_crystal_agent_Z_molecules\s+(\d+)\s*$", Path(path).read_text(), re.MULTILINE)
    except (OSError, UnicodeDecodeError):
        return default
    return int(m.group(1)) if m else default


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
