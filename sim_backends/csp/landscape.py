"""Crystallographic output of predicted structures: CIFs a crystallographer opens.

:func:`output_cell` is the one cell a predicted structure is reported in: for a centred
space group (A, B, C, F, I, R) the conventional standard cell of spglib's setting (the cell
its Hermann-Mauguin symbol describes), for a primitive group the Niggli-reduced primitive
cell; atoms at their computed positions (the CIF: moved onto exact symmetry, by less than
the detection tolerance); ``Z`` counts the whole molecules in it and
``Z' = Z /`` the group's general-position multiplicity in that cell (0.5 for a molecule on an
inversion centre). A CSP landscape stores its minima in this cell, so the ``z``, ``z_prime``
and space group of the landscape table, its records and the CIF agree.

:func:`crystal_cif` writes a molecular crystal in that cell with its space-group operations
and asymmetric unit (spglib at ``symprec``), data block and ``_chemical_formula_sum`` of the
MOLECULE with ``Z`` in molecules, and its energy at every computed level
(``_crystal_agent_energy_*`` loop, kJ/mol per molecule, level of theory named). The
landscape type itself (structures, energies per level, the on-disk layouts) is
:class:`sim_backends.landscape.Landscape`; the CIF the campaign computes on
(:meth:`~sim_backends.landscape.LandscapeEntry.cif`, stored per structure) is the exact P1
listing of the stored cell, :func:`crystal_cif` is the output form.
"""

from __future__ import annotations

import itertools
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pymatgen.core import Structure

#: level of theory of the CSP lattice energies (:mod:`sim_backends.csp.forcefield`)
FF_LEVEL = "W99 exp-6 + Ewald point charges, rigid molecule (force field)"
#: spglib tolerance (A) of the written symmetry, the same as the space-group detection
CIF_SYMPREC = 0.1
#: spglib angle tolerance (degrees), pymatgen's SpacegroupAnalyzer default, as the detection
ANGLE_TOLERANCE = 5.0
#: lattice centring letters of the Hermann-Mauguin symbols whose conventional cell is not primitive
CENTRED_LATTICES = frozenset("ABCFIR")


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


@dataclass(frozen=True)
class OutputCell:
    """A crystal in the cell it is reported and written in (:func:`output_cell`).

    Attributes:
        structure: the cell; atoms at their computed positions (never symmetrised).
        n_molecules: Z, the whole molecules in ``structure``.
        space_group, space_group_number: the symmetry spglib finds in it at ``symprec``.
        z_prime: ``n_molecules`` / the symmetry operations of the cell (centring translations
            included: the general-position multiplicity of the group in its conventional
            cell); 0.5 for a molecule on an inversion centre.
        symprec: spglib tolerance (A) at which the symmetry expands back to exactly the
            cell's atoms.
        writer: the pymatgen ``CifWriter`` of the cell at ``symprec``.
    """

    structure: Structure
    n_molecules: int
    space_group: str
    space_group_number: int
    z_prime: float
    symprec: float
    writer: Any = field(default=None, repr=False, compare=False)


def output_cell(structure: Structure, n_molecules: int, symprec: float = CIF_SYMPREC) -> OutputCell:
    """The cell a molecular crystal of ``n_molecules`` molecules in ``structure`` is
    reported in (module docstring): at ``symprec`` (A) the conventional standard cell of a
    centred space group, else the Niggli-reduced primitive cell.

    The symmetry written must expand back to exactly the cell's atoms: an atom only within
    ``symprec`` of a special position (a planar molecule nearly on a mirror plane), or
    operations only nearly closing a group, would expand into near-duplicate atoms in any
    reader. So the written CIF (``writer``) holds spglib's refined atoms in that cell (moved
    by less than ``symprec`` onto exact symmetry) in the computed lattice, or in the idealised
    lattice where the computed one is too distorted for the group detected at ``symprec`` to
    be found again in the CIF. It is read back; should the atom count still differ, the
    tolerance is lowered by 10x (down to 1e-5 A) until it matches (atom count and group), and
    the cell, its group and Z are the ones at that tolerance. ``structure`` keeps the atoms
    where they were computed (averaged over the primitive cell's lattice translations when
    the computed cell was a supercell of it).

    Raises:
        ValueError: ``n_molecules`` not matching the cell composition.
    """
    from pymatgen.io.cif import CifParser, CifWriter

    molecule_formula(structure, n_molecules)  # raises on a bad n_molecules
    tol = float(symprec)
    while True:
        cell, z = _cell_at(structure, n_molecules, tol)
        number = _group_number(cell, tol)
        for ideal_lattice in (False, True):
            writer = CifWriter(_symmetrised(cell, tol, ideal_lattice), symprec=tol, refine_struct=False)
            (block,) = writer.cif_file.data.values()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    back = CifParser.from_str(str(writer)).parse_structures(primitive=False)
                ok = len(back) == 1 and len(back[0]) == len(cell)
            except Exception:  # noqa: BLE001 - an unreadable CIF counts as a mismatch
                ok = False
            if ok and int(block.data["_symmetry_Int_Tables_number"]) == number or tol <= 1e-5:
                n_ops = len(block.data["_symmetry_equiv_pos_as_xyz"])
                return OutputCell(cell, z, str(block.data["_symmetry_space_group_name_H-M"]),
                                  int(block.data["_symmetry_Int_Tables_number"]), z / max(n_ops, 1), tol, writer)
        tol /= 10.0


def _group_number(cell: Structure, symprec: float) -> int:
    """Space-group number spglib finds in ``cell`` at ``symprec`` (1 on failure)."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        return int(SpacegroupAnalyzer(cell, symprec=symprec).get_space_group_number())
    except Exception:  # noqa: BLE001 - spglib failure: no symmetry found
        return 1


def _symmetrised(cell: Structure, symprec: float, ideal_lattice: bool = False) -> Structure:
    """``cell`` as written: the atoms of spglib's refined structure at ``symprec`` (on their
    special positions, the operations exact) in ``cell``'s own lattice (the computed volume
    and density), or with ``ideal_lattice`` in spglib's idealised one: the conventional cell
    of a centred group as it is, a primitive group's Niggli-reduced; ``cell`` itself when
    spglib fails."""
    import spglib
    from pymatgen.core import Lattice, Structure

    spg_cell = (cell.lattice.matrix, cell.frac_coords, [sp.Z for sp in cell.species])
    try:
        data = spglib.get_symmetry_dataset(spg_cell, symprec=symprec, angle_tolerance=ANGLE_TOLERANCE)
        lat, pos, types = spglib.standardize_cell(spg_cell, to_primitive=False, no_idealize=False, symprec=symprec,
                                                  angle_tolerance=ANGLE_TOLERANCE)
    except Exception:  # noqa: BLE001 - spglib failure: write the cell as it is
        data = None
    if data is None or len(types) != len(cell):
        return cell
    lattice = Lattice(lat if ideal_lattice else np.linalg.inv(data.transformation_matrix).T @ cell.lattice.matrix)
    ideal = Structure(lattice, [int(z) for z in types], pos)
    return ideal if data.international[0] in CENTRED_LATTICES else ideal.get_reduced_structure("niggli")


def _cell_at(structure: Structure, n_molecules: int, symprec: float) -> tuple[Structure, int]:
    """(:func:`output_cell`'s cell at one tolerance, molecules in it): spglib's primitive
    cell (not idealised: the lattice and the atoms as computed, atoms the cell's translations
    relate averaged), then for a centred group its conventional cell, else its Niggli-reduced
    basis."""
    import spglib
    from pymatgen.core import Lattice, Structure
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    numbers = [sp.Z for sp in structure.species]
    try:
        lat, pos, num = spglib.standardize_cell((structure.lattice.matrix, structure.frac_coords, numbers),
                                                to_primitive=True, no_idealize=True, symprec=symprec,
                                                angle_tolerance=ANGLE_TOLERANCE)
        primitive = Structure(Lattice(lat), [int(z) for z in num], pos)
    except Exception:  # noqa: BLE001 - spglib failure: keep the cell as given
        primitive = None
    if primitive is not None and len(structure) % len(primitive) == 0:
        n_molecules = n_molecules * len(primitive) // len(structure)
        structure = primitive
    try:
        data = SpacegroupAnalyzer(structure, symprec=symprec).get_symmetry_dataset()
    except Exception:  # noqa: BLE001 - spglib failure: no symmetry found
        data = None
    if data is not None and data.international[0] in CENTRED_LATTICES:
        conv = conventional_cell(structure, data.transformation_matrix, data.origin_shift)
        if conv is not None:
            return conv, n_molecules * len(conv) // len(structure)
    return structure.get_reduced_structure("niggli"), n_molecules


def conventional_cell(structure: Structure, transformation: Any, origin_shift: Any) -> Structure | None:
    """``structure`` re-expressed in the cell spglib's ``transformation`` matrix ``P`` and
    ``origin_shift`` ``p`` define (``(a_s, b_s, c_s) = (a, b, c) P^-1``, ``x_s = P x + p``),
    with every atom at its computed position (no symmetrisation, orientation kept);
    None if the atoms do not fill the new cell a whole number of times."""
    from pymatgen.core import Lattice, Structure

    P = np.asarray(transformation, dtype=float)
    p = np.asarray(origin_shift, dtype=float)
    inv = np.linalg.inv(P)
    ratio = abs(float(np.linalg.det(inv)))
    n_want = round(ratio * len(structure))
    if abs(ratio * len(structure) - n_want) > 1e-6 or n_want < 1:
        return None
    corners = np.array(list(itertools.product((0.0, 1.0), repeat=3)))
    x_corners = (corners - p) @ inv.T  # the new cell's corners in the old fractional basis
    ranges = [range(int(np.floor(lo)) - 1, int(np.ceil(hi)) + 1)
              for lo, hi in zip(x_corners.min(0), x_corners.max(0), strict=True)]
    shifts = np.array(list(itertools.product(*ranges)), dtype=float)
    frac = structure.frac_coords % 1.0
    images = (frac[None, :, :] + shifts[:, None, :]) @ P.T + p
    inside = np.all(np.floor(images + 1e-8) == 0, axis=-1)  # [0, 1) with a rounding margin
    i_shift, i_atom = np.nonzero(inside)
    if len(i_atom) != n_want:
        return None
    order = np.lexsort((i_shift, i_atom))  # images of atom 0 first, as the input's order
    return Structure(Lattice(inv.T @ structure.lattice.matrix), [structure.species[k] for k in i_atom[order]],
                     np.clip(images[i_shift[order], i_atom[order]], 0.0, 1.0 - 1e-12), to_unit_cell=False)


def crystal_cif(structure: Structure, *, n_molecules: int, name: str = "", structure_id: str = "",
                smiles: str = "", energies: Sequence[LevelEnergy] = (), space_group: str = "",
                symprec: float = CIF_SYMPREC) -> str:
    """The CIF of a molecular crystal a crystallographer can open, in its
    :func:`output_cell` (``_crystal_agent_symprec_A`` records the tolerance used).

    Written with the space-group operations spglib finds in that cell (pymatgen
    ``CifWriter(symprec=..., refine_struct=False)``: the asymmetric unit plus explicit
    ``_symmetry_equiv_pos`` operations, so any reader expands it to the full cell; for a
    centred group the standard setting of its symbol). The data block is
    ``data_<name or formula>_<structure_id>``; ``_chemical_formula_sum`` is the formula
    of one molecule and ``_cell_formula_units_Z`` counts molecules in the written cell.
    Each of ``energies`` is a row of the ``_crystal_agent_energy_*`` loop (level,
    quantity, kJ/mol per molecule, std or ``?``); ``space_group`` (the symbol recorded
    with the structure) is written as ``_crystal_agent_space_group_detected`` beside the
    one found here.

    Raises:
        ValueError: ``n_molecules`` not matching the cell composition.
    """
    from pymatgen.io.cif import CifBlock, CifFile

    formula = molecule_formula(structure, n_molecules)
    out = output_cell(structure, n_molecules, symprec)
    structure, n_molecules, symprec = out.structure, out.n_molecules, out.symprec
    (old,) = out.writer.cif_file.data.values()
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
    return str(CifFile({header: CifBlock(ordered, loops, header)}, comment=comment))
