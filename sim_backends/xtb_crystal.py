"""Periodic GFN2-xTB lattice energies of molecular crystals (fidelity 1).

GFN2-xTB (Bannwarth, Ehlert & Grimme, J. Chem. Theory Comput. 15, 1652 (2019)) with
D4 dispersion, evaluated for the periodic cell by the ``tblite`` library through its
ASE calculator. The lattice energy per molecule is

    E_latt = E_cell / Z - E_gas

where ``E_gas`` is, by default (``gas="relaxed"``), the energy of the isolated molecule
relaxed with GFN2-xTB starting from the first molecule's crystal geometry, so that
E_latt includes the molecular deformation energy and is comparable with the X23
reference lattice energies (Reilly & Tkatchenko, J. Chem. Phys. 139, 024705 (2013)).
With ``gas="rigid"`` the molecules are taken at their crystal geometries (the mean
over the Z molecules of the cell), which gives the intermolecular interaction energy
only.

The difference of the two references is reported separately as the molecular
deformation energy ``deformation_kjmol`` = mean E(molecule at its crystal geometry) -
E(relaxed molecule), >= 0. For a consistent structure it is small: rigid-molecule CSP
structures carry the GFN2-xTB-relaxed molecule (:meth:`RigidMolecule.from_smiles`), so
it is ~0 there, and experimental or DFT molecular geometries cost a few kJ/mol. A large
value means the cell's molecules are not a GFN2-xTB geometry at all (e.g. a
force-field conformer with a mistyped atom: MMFF94's CO2 with C=O 1.405 A lies
453 kJ/mol above the GFN2 minimum), and a lattice energy with that strain in it is an
artefact of the input, not a property of the crystal. Such an evaluation of an
unrelaxed cell fails (``unphysical:``) when ``deformation_kjmol`` exceeds
:data:`MAX_DEFORMATION_KJMOL`; relaxing the positions in the cell (``relax``) or
giving GFN2-consistent molecules is the cure, not another reference. The relaxed
reference stays the default because the X23 lattice energies are defined with it
(both the cell and the molecule at minima of the same Hamiltonian), and the
deformation energy is the same for every structure of a rigid-molecule landscape, so
the reference does not change the ranking.

Accuracy: on the 17 X23 crystals at their PBE+TS geometries (``benchmarks/x23_xtb_crystal.py``)
E_latt is 71 % of the reference on average (mean error +22.5 kJ/mol per molecule, worst
adamantane -25 against -69); without the molecules' deformation energy at those geometries,
84 % (+11.7). The W99 + RESP force field at the same geometries gets 91 % (+7.4). The level
ranks structures of one molecule; its absolute lattice energies are too weak
(:attr:`XtbCrystalBackend.caveat`, printed with them).

Brillouin-zone sampling: tblite computes periodic systems at the Gamma point only, which
is exact for a molecule in a big box (a molecule alone in a 20 A cubic box agrees with
the isolated molecule to 0.01 kJ/mol: acetylene, CO2, benzene) but not for a small
cell of a conjugated crystal: the X23 pyrazine cell (3.68 A stacking axis) comes out
66 kJ/mol per molecule too high at Gamma (E_latt +16 instead of -50 kJ/mol). Every
cell is therefore evaluated (and relaxed) as the smallest supercell whose three
perpendicular widths are at least ``min_width_A`` (default :data:`MIN_WIDTH_A` = 9 A,
which converges pyrazine to 0.3 kJ/mol per molecule; CO2's 5.8 A cubic cell is
converged at 1x1x1 already); ``extra["supercell"]`` names it. A relaxed cell is
reported (``relaxed_cif``) as that supercell.

Optionally the crystal is first relaxed with ASE (``relax="positions"`` or ``True``:
atoms only, fixed cell; ``relax="full"``: atoms and cell through ASE's
``FrechetCellFilter``) with the BFGS optimiser.

Units: energies in kJ/mol per molecule at the API surface; eV and eV/A inside ASE.
tblite and ASE are imported inside functions so importing this module stays cheap.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from sim_backends.base import Backend, EvalInput, PhysicsError, RunError, SetupError
from sim_backends.structures import EV_TO_KJMOL, cif_from_atoms, load_crystal
from sim_backends.validity import check_crystal_energy_result, structure_facts
from sim_backends import params as check

if TYPE_CHECKING:
    import numpy as np
    from ase import Atoms
    from ase.calculators.calculator import Calculator

#: cost model of one evaluation without relaxation (the Gamma-point supercell's single point
#: and the gas-phase molecule), CPU s = A * n ** B with n the supercell's atoms; fitted to the
#: 126 stored evaluations of maleic_anhydride_xtb, pyrazine_xtb and the demo's coronene cells
#: (n = 72-432, one thread): B 1.73-1.88 per molecule, log-sd of measured / predicted 0.10-0.14
#: leaving each molecule out, against 0.28-0.46 for the linear model it replaced
#: (benchmarks/results/NOTES.md, 2026-12-06)
_SP_COST_A, _SP_COST_B = 8.8e-4, 1.865
#: a relaxation costs this many single-point evaluations
_RELAX_COST_FACTOR = 40.0
#: largest molecular deformation energy (kJ/mol per molecule) accepted for an unrelaxed
#: cell: several times the few kJ/mol of experimental or DFT geometries at GFN2-xTB,
#: far below the hundreds of a force-field mistyping
MAX_DEFORMATION_KJMOL = 40.0
#: smallest perpendicular width (A) of the Gamma-point supercell a cell is evaluated in
MIN_WIDTH_A = 9.0


def xtb_calculator(
    charge: int = 0,
    method: str = "GFN2-xTB",
    accuracy: float = 1.0,
    max_iterations: int = 250,
    electronic_temperature_K: float = 300.0,
) -> Calculator:
    """A fresh tblite ASE calculator (silent), usable for molecules and periodic cells.

    Args:
        charge: total charge of the system (e).
        method: "GFN2-xTB" (default) or "GFN1-xTB".
        accuracy: tblite numerical accuracy (smaller = tighter).
        max_iterations: SCF iteration limit; a non-converged SCF raises
            ``ase.calculators.calculator.CalculationFailed`` (see :func:`run_guarded`).
        electronic_temperature_K: Fermi smearing temperature (K).

    Returns:
        ``tblite.ase.TBLite`` giving energy (eV), forces (eV/A), stress (eV/A^3).
    """
    from tblite.ase import TBLite

    return TBLite(
        method=method,
        charge=charge,
        accuracy=accuracy,
        max_iterations=int(max_iterations),
        electronic_temperature=electronic_temperature_K,
        verbosity=0,
    )


def run_guarded(fn: Callable[[], Any], what: str) -> Any:
    """Call ``fn`` turning calculator failures into backend errors (one line).

    SCF non-convergence and other ``CalculationFailed`` become :class:`RunError`
    (message contains "SCF" when the SCF failed); ``InputError`` becomes
    :class:`SetupError`.
    """
    from ase.calculators.calculator import CalculationFailed, InputError

    try:
        return fn()
    except InputError as exc:
        raise SetupError(f"{what}: xTB rejected the input: {' '.join(str(exc).split())}") from None
    except CalculationFailed as exc:
        msg = " ".join(str(exc).split())
        raise RunError(f"{what}: xTB {msg}" if "SCF" in msg else f"{what}: xTB failed: {msg}") from None


def relax_atoms(
    atoms: Atoms,
    calc: Calculator,
    mode: str = "full",
    fmax_eVA: float = 0.05,
    max_steps: int = 200,
) -> tuple[Atoms, dict[str, Any]]:
    """Relax a structure with ASE BFGS.

    Args:
        atoms: structure to relax (copied, not modified).
        calc: any ASE calculator giving forces (and stress for ``mode="full"``).
        mode: "positions" (fixed cell or a molecule) or "full" (positions and cell via
            ``ase.filters.FrechetCellFilter``, periodic only).
        fmax_eVA: convergence threshold on the largest force (eV/A; for the cell
            filter also on the scaled stress).
        max_steps: optimiser step limit.

    Returns:
        ``(relaxed, info)`` with info keys ``n_steps``, ``converged``, ``fmax_eVA``.

    Raises:
        SetupError: unknown mode.
        RunError: the optimiser produced non-finite energies.
    """
    import numpy as np
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    if mode not in ("positions", "full"):
        raise SetupError(f"unknown relax mode {mode!r}; use 'positions' or 'full'")
    work = atoms.copy()
    work.calc = calc
    target = FrechetCellFilter(work) if mode == "full" and work.pbc.any() else work
    opt = BFGS(target, logfile=None, maxstep=0.1)
    converged = bool(run_guarded(lambda: opt.run(fmax=fmax_eVA, steps=int(max_steps)), "relax"))
    energy = work.get_potential_energy()
    if not np.isfinite(energy):
        raise RunError("relax: energy became non-finite")
    forces = target.get_forces()
    info = {
        "n_steps": int(opt.nsteps),
        "converged": converged,
        "fmax_eVA": float(np.sqrt((forces**2).sum(axis=1)).max()),
    }
    work.calc = None
    return work, info


def parse_relax_mode(value: Any) -> str | None:
    """Relax option -> None (no relaxation), "positions" (True) or "full"; SetupError else."""
    if value in (False, None, "none", "no"):
        return None
    if value is True:
        return "positions"
    if value in ("positions", "full"):
        return str(value)
    raise SetupError(f"relax must be False, True, 'positions' or 'full', not {value!r}")


def gamma_supercell(cell: np.ndarray, min_width_A: float = MIN_WIDTH_A) -> tuple[int, int, int]:
    """Repetitions (n1, n2, n3) making every perpendicular width of ``cell`` (3x3, rows
    are the lattice vectors in A) at least ``min_width_A``."""
    import numpy as np

    cell = np.asarray(cell, float)
    volume = abs(float(np.linalg.det(cell)))
    widths = [volume / float(np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3]))) for i in range(3)]
    return tuple(max(1, int(np.ceil(min_width_A / w - 1e-9))) for w in widths)


def _cif_cell_repetitions(cif_text: str, min_width_A: float = MIN_WIDTH_A) -> int:
    """Cells in the Gamma-point supercell of a CIF, from its cell parameters (1 if absent)."""
    pars = []
    for key in ("length_a", "length_b", "length_c", "angle_alpha", "angle_beta", "angle_gamma"):
        m = re.search(rf"_cell_{key}\s+([0-9.]+)", cif_text)
        if not m:
            return 1
        pars.append(float(m.group(1)))
    try:
        from ase.geometry import cellpar_to_cell

        reps = gamma_supercell(cellpar_to_cell(pars), min_width_A)
    except (ValueError, ZeroDivisionError):
        return 1
    return reps[0] * reps[1] * reps[2]


def estimate_cell_atoms(cif_text: str | None) -> int:
    """Cheap guess of the atoms in a CIF cell (atom-site rows x symmetry operations)."""
    if not cif_text:
        return 0
    sites = re.findall(r"^\s*[A-Z][a-z]?\S*\s+\S+\s+(?:\S+\s+)?-?\d*\.\d+\s", cif_text, re.M)
    ops = re.findall(r"^\s*'?[-+]?[xyz][^\n]*,[^\n]*,[^\n]*$", cif_text, re.M)
    return max(1, len(sites)) * max(1, len(ops))


class XtbCrystalBackend(Backend):
    """GFN2-xTB periodic lattice energy (kJ/mol per molecule), optional relaxation.

    Params (``EvalInput.params`` or constructor):
        method: "GFN2-xTB" (default) or "GFN1-xTB".
        gas: "relaxed" (default) or "rigid" reference molecule, see module docstring.
        relax: False (default), "positions" / True (fixed cell), "full" (with cell).
        min_width_A: smallest perpendicular width of the Gamma-point supercell (9.0 A).
        fmax_eVA: relaxation force threshold (0.05).
        max_steps: relaxation step limit (200); the energy of the last step is
            returned and ``extra["relax"]["converged"]`` says whether it converged.
        accuracy, max_iterations: tblite settings (1.0, 250).

    Values: ``energy_kjmol`` (lattice energy per molecule), ``e_cell_per_mol_kjmol``
    (E_cell/Z, absolute GFN2 energy), ``e_gas_kjmol`` (reference molecule),
    ``deformation_kjmol`` (molecular deformation energy, see module docstring).
    """

    name = "xtb-crystal"
    version = "1"
    caveat: ClassVar[str] = (
        "periodic GFN2-xTB underbinds molecular crystals: on the 17 X23 crystals its lattice energies are "
        "71 % of the reference (mean error +22 kJ/mol per molecule; benchmarks/x23_xtb_crystal.py); "
        "use them to rank structures, not as sublimation enthalpies")
    fidelity = 1
    target = "structure"
    computes = ("energy_kjmol", "e_cell_per_mol_kjmol", "e_gas_kjmol", "deformation_kjmol")
    objective_key = "energy_kjmol"
    description = "GFN2-xTB periodic lattice energy per molecule (tblite), optional relaxation"
    params_schema = {
        "method": check.one_of("GFN2-xTB", "GFN1-xTB", "IPEA1-xTB"), "gas": check.one_of("relaxed", "rigid"),
        "relax": parse_relax_mode, "fmax_eVA": check.number(0.0, 1.0, lo_open=True),
        "max_steps": check.integer(1), "accuracy": check.number(1e-4, 1000.0),
        "max_iterations": check.integer(1), "min_width_A": check.number(0.0, 50.0),
    }

    def level_of_theory(self, params: dict[str, Any] | None = None) -> str:
        """The level of ``energy_kjmol`` as printed next to it."""
        p = {**self.params, **(params or {})}
        relax = {False: "", None: "", "positions": ", positions relaxed", True: ", positions relaxed",
                 "full": ", cell and positions relaxed"}.get(p.get("relax", False), "")
        gas = ", rigid gas-phase reference" if p.get("gas", "relaxed") == "rigid" else ""
        return f"{p.get('method', 'GFN2-xTB')} periodic (tblite){relax}{gas}"

    def cost_estimate(self, inp: EvalInput) -> float:
        n = estimate_cell_atoms(inp.structure_cif)
        if inp.structure_cif:
            width = {**self.params, **inp.params}.get("min_width_A", MIN_WIDTH_A)
            n *= _cif_cell_repetitions(inp.structure_cif, float(width) if isinstance(width, (int, float)) else MIN_WIDTH_A)
        sp = max(0.5, _SP_COST_A * float(n) ** _SP_COST_B)
        relax = {**self.params, **inp.params}.get("relax", False)
        return sp * (_RELAX_COST_FACTOR if relax else 1.0)

    def ase_calculator(self, **params: Any) -> Calculator:
        """The ASE calculator of this level (forces and stress), for phonons."""
        keys = ("method", "accuracy", "max_iterations")
        return xtb_calculator(**{k: params[k] for k in keys if k in params})

    def _evaluate(self, inp: EvalInput) -> tuple[dict[str, float], dict[str, Any]]:
        p = inp.params
        gas = p.get("gas", "relaxed")
        if gas not in ("relaxed", "rigid"):
            raise SetupError(f"gas must be 'relaxed' or 'rigid', not {gas!r}")
        mode = parse_relax_mode(p.get("relax", False))
        crystal = load_crystal(inp.structure_cif or "", inp.smiles)
        calc_kw = {k: p[k] for k in ("method", "accuracy", "max_iterations") if k in p}
        width = p.get("min_width_A", MIN_WIDTH_A)
        if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0.0 <= width <= 50.0:
            raise SetupError(f"min_width_A must be a number of angstrom in [0, 50], not {width!r}")
        reps = gamma_supercell(crystal.atoms.cell.array, float(width))
        unit = crystal
        if reps != (1, 1, 1):
            crystal = type(crystal).from_atoms(crystal.atoms.repeat(reps))
        extra: dict[str, Any] = {"z": unit.z, "n_atoms": len(unit.atoms), "gas": gas,
                                 "supercell": list(reps), "supercell_atoms": len(crystal.atoms)}

        atoms = crystal.atoms
        if mode is not None:
            t0 = time.perf_counter()
            atoms, info = relax_atoms(
                atoms, xtb_calculator(**calc_kw), mode,
                float(p.get("fmax_eVA", 0.05)), int(p.get("max_steps", 200)),
            )
            extra["relax"] = {"mode": mode, **info, "wall_s": time.perf_counter() - t0}
            extra["relaxed_cif"] = cif_from_atoms(atoms)
            z_before = crystal.z
            crystal = unit = type(crystal).from_atoms(atoms)
            atoms = crystal.atoms
            if crystal.z != z_before:
                raise RunError(f"relaxation changed the molecules: {z_before} before, {crystal.z} after")

        extra["level"] = f"{p.get('method', 'GFN2-xTB')} periodic"
        extra["validity"] = structure_facts(unit)
        t0, c0 = time.perf_counter(), time.process_time()
        cell = atoms.copy()
        cell.calc = xtb_calculator(**calc_kw)
        e_cell_eV = float(run_guarded(cell.get_potential_energy, "crystal"))
        extra["cell_single_point_s"] = time.perf_counter() - t0
        extra["cell_single_point_cpu_s"] = time.process_time() - c0

        energies = []  # molecules at their crystal geometries (all distinct ones: the unit cell's)
        for k in range(unit.z):
            mol = unit.molecule(k)
            mol.calc = xtb_calculator(**calc_kw)
            energies.append(float(run_guarded(mol.get_potential_energy, "molecule")))
        e_rigid_eV = sum(energies) / len(energies)
        mol, info = relax_atoms(crystal.molecule(0), xtb_calculator(**calc_kw), "positions",
                                0.01, 500)
        if not info["converged"]:
            raise RunError(f"gas-phase molecule relaxation not converged in {info['n_steps']} steps")
        mol.calc = xtb_calculator(**calc_kw)
        e_relaxed_eV = float(run_guarded(mol.get_potential_energy, "molecule"))
        extra["gas_relax_steps"] = info["n_steps"]
        extra["relaxed"] = mode is not None
        e_gas_eV = e_rigid_eV if gas == "rigid" else e_relaxed_eV

        e_per_mol = e_cell_eV / crystal.z * EV_TO_KJMOL
        e_gas = e_gas_eV * EV_TO_KJMOL
        values = {
            "energy_kjmol": e_per_mol - e_gas,
            "e_cell_per_mol_kjmol": e_per_mol,
            "e_gas_kjmol": e_gas,
            "deformation_kjmol": (e_rigid_eV - e_relaxed_eV) * EV_TO_KJMOL,
        }
        return values, extra

    def _check_physical(self, values: dict[str, float], extra: dict[str, Any]) -> None:
        """Density, intermolecular contacts and lattice energy in the bounds of
        :mod:`sim_backends.validity`, on the structure evaluated (after relaxation)."""
        super()._check_physical(values, extra)
        deformation = values.get("deformation_kjmol", 0.0)
        if not extra.get("relaxed", True) and deformation > MAX_DEFORMATION_KJMOL:
            raise PhysicsError(
                f"the molecules in this cell are {deformation:.0f} kJ/mol per molecule above the "
                f"{extra.get('level', self.name)} minimum of the isolated molecule (limit "
                f"{MAX_DEFORMATION_KJMOL:.0f}): their geometry is not one of this level; relax the "
                f"positions (relax='positions') or give molecules relaxed at this level")
        check_crystal_energy_result(values, extra, self.name)
