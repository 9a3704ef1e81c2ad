"""Crystallographic output of predicted structures: CIFs a crystallographer opens.

:func:`output_cell` is the one cell a predicted structure is stored and counted in: for a
centred space group (A, B, C, F, I, R) the conventional cell of spglib's standard setting,
for a primitive group the Niggli-reduced primitive cell (the cell the CSP minimised energy,
xTB and phonon inputs and the ``landscape_*.extxyz`` files use: atoms at their computed
positions); ``Z`` counts the whole molecules in it and ``Z' = Z /`` the group's
general-position multiplicity in that cell (0.5 for a molecule on an inversion centre). A CSP
landscape stores its minima in this cell, so the ``z``, ``z_prime``, density and space group
of the landscape table, its records and the CIF agree.

:func:`crystal_cif` writes a molecular crystal as a crystallographer reads it: symmetrised to
the space group detected at ``symprec`` (0.1 A, angles 5 deg) -- atoms on their exact special
positions, the cell metric of the crystal system -- in the ITA standard setting of its
Hermann-Mauguin symbol (spglib's standardised conventional cell: the operator loop is that
symbol's standard operators, e.g. ``P2_1/c`` with unique axis b and the c glide, ``Pna2_1``
with the polar axis c), the written volume equal to the computed one; its
``_symmetry_equiv_pos`` loop and asymmetric unit, data block and ``_chemical_formula_sum`` of
the MOLECULE with ``Z`` in molecules (the same Z as the stored cell: the written cell holds
the same lattice, for a primitive group in another basis), and its energy at every computed
level (``_crystal_agent_energy_*`` loop, kJ/mol per molecule, level of theory named).

Why symmetrise rather than detect with a tolerance so tight that the computed atoms have the
group exactly: the rigid-molecule minimiser keeps the search group's symmetry exactly, and a
minimum that relaxes onto a higher-symmetry point stops at the gradient tolerance with small
residual deviations along soft modes; a tight tolerance would label it with a lower group than
the one it relaxed to. The symmetrised CIF's force-field energy stays within a few 0.01 kJ/mol
of the minimum's (checked by tests/sim_backends/csp/test_csp_output_cell.py; measurements in
benchmarks/results/NOTES.md). The stored cell keeps the atoms as computed, so every energy and
every calculation on it is unchanged.

The landscape type itself (structures, energies per level, the on-disk layouts) is
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
#: the charge method a rigid-molecule search records for each ``charges`` option
#: (:mod:`sim_backends.csp.charges`; a RESP fit with lone-pair sites adds their number, which
#: only the search that placed them knows)
CHARGE_METHODS = {"xtb": "xtb-gfn2-mulliken", "resp": "resp-pyscf HF/6-31G*", "resp-lp": "resp-lp-pyscf HF/6-31G*",
                  "resp-lpn": "resp-lpn-pyscf HF/6-31G*"}


def ff_level(charges: str | None) -> str:
    """The level of a rigid-molecule search's lattice energies as the search names it
    (landscape.csv, run.json, its CIF headers, a campaign's ``csp_levels``): :data:`FF_LEVEL`
    and the charge method of a ``charges`` option (``"xtb"``: ``..., xtb-gfn2-mulliken charges``)."""
    return f"{FF_LEVEL}, {CHARGE_METHODS.get(charges, charges) if charges else 'no'} charges"


#: longest CIF value written on one line (levels of theory with their charges run to ~150)
CIF_VALUE_LINE = 400
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
    """A crystal in the cell it is stored in, and the CIF it is written as (:func:`output_cell`).

    Attributes:
        structure: the stored cell; atoms at their computed positions (never symmetrised).
        n_molecules: Z, the whole molecules in ``structure`` (and in the written cell).
        space_group, space_group_number: the symmetry spglib finds in it at ``symprec``.
        z_prime: ``n_molecules`` / the symmetry operations of the cell (centring translations
            included: the general-position multiplicity of the group in its conventional
            cell); 0.5 for a molecule on an inversion centre.
        symprec: spglib tolerance (A) at which the symmetry expands back to exactly the
            cell's atoms.
        writer: the pymatgen ``CifWriter`` of ``written`` at ``symprec``.
        written: the structure the CIF holds: ``structure`` symmetrised to the space group in
            its ITA standard setting (:func:`standard_symmetrised`).
    """

    structure: Structure
    n_molecules: int
    space_group: str
    space_group_number: int
    z_prime: float
    symprec: float
    writer: Any = field(default=None, repr=False, compare=False)
    written: Any = field(default=None, repr=False, compare=False)


def output_cell(structure: Structure, n_molecules: int, symprec: float = CIF_SYMPREC) -> OutputCell:
    """The cell a molecular crystal of ``n_molecules`` molecules in ``structure`` is
    stored in (module docstring): at ``symprec`` (A) the conventional cell of a centred space
    group in spglib's standard setting, else the Niggli-reduced primitive cell; and the CIF
    of it (``writer``): the crystal symmetrised to that group in the group's ITA standard
    setting (:func:`standard_symmetrised`).

    The symmetry written must expand back to exactly the cell's atoms: an atom only within
    ``symprec`` of a special position (a planar molecule nearly on a mirror plane), or
    operations only nearly closing a group, would expand into near-duplicate atoms in any
    reader; hence the symmetrised atoms. The CIF is read back; should the atom count or the
    group differ, the tolerance is lowered by 10x (down to 1e-5 A) until they match, and the
    cell, its group and Z are the ones at that tolerance. ``structure`` keeps the atoms where
    they were computed (averaged over the primitive cell's lattice translations when the
    computed cell was a supercell of it).

    Raises:
        ValueError: ``n_molecules`` not matching the cell composition.
    """
    from pymatgen.io.cif import CifParser, CifWriter

    molecule_formula(structure, n_molecules)  # raises on a bad n_molecules
    tol = float(symprec)
    while True:
        cell, z = _cell_at(structure, n_molecules, tol)
        number = _group_number(cell, tol)
        written = standard_symmetrised(cell, tol)
        writer = CifWriter(written, symprec=tol, angle_tolerance=ANGLE_TOLERANCE, refine_struct=False)
        (block,) = writer.cif_file.data.values()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                back = CifParser.from_str(str(writer)).parse_structures(primitive=False)
            ok = len(back) == 1 and len(back[0]) == len(written) == len(cell)
        except Exception:  # noqa: BLE001 - an unreadable CIF counts as a mismatch
            ok = False
        if ok and int(block.data["_symmetry_Int_Tables_number"]) == number or tol <= 1e-5:
            n_ops = len(block.data["_symmetry_equiv_pos_as_xyz"])
            return OutputCell(cell, z, str(block.data["_symmetry_space_group_name_H-M"]),
                              int(block.data["_symmetry_Int_Tables_number"]), z / max(n_ops, 1), tol, writer,
                              written)
        tol /= 10.0


def _group_number(cell: Structure, symprec: float) -> int:
    """Space-group number spglib finds in ``cell`` at ``symprec`` (1 on failure)."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        return int(SpacegroupAnalyzer(cell, symprec=symprec, angle_tolerance=ANGLE_TOLERANCE)
                   .get_space_group_number())
    except Exception:  # noqa: BLE001 - spglib failure: no symmetry found
        return 1


def standard_symmetrised(cell: Structure, symprec: float = CIF_SYMPREC) -> Structure:
    """``cell`` symmetrised to the space group spglib finds at ``symprec`` (angles
    :data:`ANGLE_TOLERANCE`), in that group's ITA standard setting: spglib's standardised
    conventional cell (``std_lattice``, ``std_positions``: atoms on exact symmetry, moved by
    less than ``symprec``; the metric of the crystal system, e.g. all angles 90 deg for an
    orthorhombic group; a triclinic cell Niggli-reduced), whose operations are those of
    pymatgen's ``SpaceGroup(symbol)`` (the same default settings), scaled to ``cell``'s
    volume so that the density is the computed one. The orientation is spglib's
    (a along x), which a CIF does not record. ``cell`` itself when spglib fails or its
    standard cell holds another number of atoms (``cell`` is not the conventional cell).
    """
    import spglib
    from pymatgen.core import Lattice, Structure

    spg_cell = (cell.lattice.matrix, cell.frac_coords, [sp.Z for sp in cell.species])
    try:
        data = spglib.get_symmetry_dataset(spg_cell, symprec=symprec, angle_tolerance=ANGLE_TOLERANCE)
    except Exception:  # noqa: BLE001 - spglib failure: write the cell as it is
        data = None
    if data is None or len(data.std_types) != len(cell):
        return cell
    lattice = np.asarray(data.std_lattice, dtype=float)
    volume = cell.volume
    lattice = lattice * (volume / abs(float(np.linalg.det(lattice)))) ** (1.0 / 3.0)
    return Structure(Lattice(lattice), [int(z) for z in data.std_types], data.std_positions)


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
    """The CIF of a molecular crystal a crystallographer can open: its :func:`output_cell`
    symmetrised to the space group found at ``symprec`` in the ITA standard setting of that
    group's symbol (:func:`standard_symmetrised`; ``_crystal_agent_symprec_A`` records the
    tolerance used).

    Written with the space-group operations of that setting (pymatgen
    ``CifWriter(symprec=..., refine_struct=False)`` of the symmetrised standard cell: the
    asymmetric unit plus explicit ``_symmetry_equiv_pos`` operations, equal to
    ``SpaceGroup(symbol)``'s, so any reader expands it to the full cell and a program that
    builds it from the symbol alone gets the same crystal). The data block is
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
    # "name (formula, smiles)"; a pool-less molecule's name is its formula: not said twice
    named = name if name and name != formula else None
    details = ", ".join(x for x in (formula if named else "", smiles) if x)
    what = (named or formula) + (f" ({details})" if details else "")
    comment = (f"# crystal-agent: {what}, Z = {n_molecules} molecule{'s' if n_molecules != 1 else ''}\n"
               f"# atoms and cell symmetrised to {out.space_group} at {symprec:g} A (standard setting); "
               "energies in kJ/mol per molecule" + (f"; levels: {levels}" if levels else ""))
    block = CifBlock(ordered, loops, header)
    # one line per value up to CIF 1.1's 2048-character limit: pymatgen's default wraps values over
    # 70 characters into ;-text fields at hyphens too, and a reader joins the lines with a space
    # ("xtb-gfn2" came back as "xtb- gfn2")
    block.max_len = CIF_VALUE_LINE
    return str(CifFile({header: block}, comment=comment))
