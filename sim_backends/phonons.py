"""Harmonic phonon free energies of molecular crystals with phonopy.

The finite-displacement method (Parlinski, Li & Kawazoe, Phys. Rev. Lett. 78, 4063
(1997); phonopy: Togo, J. Phys. Soc. Jpn. 92, 012001 (2023)): atoms of a supercell are
displaced by ``displacement_A`` along symmetry-reduced directions, the forces give the
force constants, and the dynamical matrix is diagonalised on a q-point mesh. The
harmonic vibrational free energy per unit cell is

    F_vib(T) = (1/N_q) sum_q sum_nu [ hbar w/2 + k_B T ln(1 - exp(-hbar w / k_B T)) ]

with ZPE = F_vib(0). Values are returned in kJ/mol per molecule (divided by Z).

Imaginary modes (phonopy reports them as negative frequencies) are counted, their
frequencies recorded, and excluded from F and ZPE. They mean the structure is not a
minimum of the force level: the structure must be relaxed with the same force level
first (``PhononBackend`` does this by default, ``relax=True``), otherwise residual
forces make the force constants -- and F -- meaningless.

Fidelity is composition: :class:`PhononBackend` takes the name of a force-capable
backend (one whose class offers ``ase_calculator(**params)`` returning an ASE
calculator with forces, e.g. ``"xtb-crystal"``) and builds its force function from it.
phonopy and ASE are imported inside functions so importing this module stays cheap.

Gamma-point force levels. tblite evaluates a periodic cell at the Gamma point only, so
forces on a small cell (an acetylene CSP cell is ~4-6 A wide) are those of an
unconverged Brillouin-zone sum: relaxing and displacing with them gives spurious
imaginary modes. For such a force backend (``"xtb-crystal"``) every energy, force and
stress -- of the relaxation and of each displaced phonopy supercell -- is computed on the
structure repeated to the smallest diagonal supercell whose perpendicular widths are all
>= ``force_min_width_A`` (default :data:`sim_backends.xtb_crystal.MIN_WIDTH_A`, the
width xtb-crystal's energies use) and mapped back (:class:`GammaSupercellCalculator`):
the forces are those of the periodic structure itself, with a converged zone sum.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

from sim_backends import params as check
from sim_backends.base import Backend, EvalInput, ParamsError, RunError, SetupError
from sim_backends.validity import check_imaginary_modes, check_structure_facts, structure_facts

if TYPE_CHECKING:
    import numpy as np
    from ase import Atoms

#: a mode counts as imaginary below this frequency (THz); smaller negative values near
#: Gamma are numerical noise of the acoustic branches
IMAGINARY_TOL_THZ = 0.05


def auto_supercell(atoms: Atoms, min_length_A: float = 8.0) -> tuple[int, int, int]:
    """Smallest diagonal supercell whose perpendicular widths are all >= min_length_A."""
    import numpy as np

    cell = np.asarray(atoms.cell)
    volume = abs(np.linalg.det(cell))
    widths = [volume / np.linalg.norm(np.cross(cell[(k + 1) % 3], cell[(k + 2) % 3]))
              for k in range(3)]
    return tuple(int(max(1, np.ceil(min_length_A / w - 1e-9))) for w in widths)


def gamma_supercell_calculator(inner, min_width_A: float):
    """An ASE calculator giving ``inner``'s energy, forces and stress of a periodic
    structure, each computed on the structure repeated to the smallest diagonal supercell
    whose perpendicular widths are all >= ``min_width_A`` (energy per original cell;
    forces of the first copy, all copies being equivalent; stress is intensive).

    A structure that is already wide enough, or not periodic, is passed through."""
    import numpy as np
    from ase.calculators.calculator import Calculator, all_changes

    from sim_backends.xtb_crystal import gamma_supercell

    class GammaSupercellCalculator(Calculator):
        implemented_properties = ["energy", "free_energy", "forces", "stress"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            a = self.atoms
            reps = gamma_supercell(a.cell.array, min_width_A) if a.pbc.all() else (1, 1, 1)
            big = a.repeat(reps)
            big.calc = inner
            n, n_rep = len(a), int(np.prod(reps))
            energy = big.get_potential_energy() / n_rep
            self.results["energy"] = self.results["free_energy"] = energy
            # atoms.repeat puts the original cell's atoms first
            self.results["forces"] = np.asarray(big.get_forces())[:n].copy()
            if "stress" in properties:
                self.results["stress"] = np.asarray(big.get_stress())
            self.results["supercell"] = list(reps)

    return GammaSupercellCalculator()


def _to_phonopy(atoms: Atoms):
    from phonopy.structure.atoms import PhonopyAtoms

    return PhonopyAtoms(
        symbols=atoms.get_chemical_symbols(),
        cell=atoms.cell.array,
        scaled_positions=atoms.get_scaled_positions(wrap=False),
        masses=atoms.get_masses(),
    )


def _to_ase(patoms) -> Atoms:
    from ase import Atoms

    return Atoms(symbols=patoms.symbols, cell=patoms.cell,
                 scaled_positions=patoms.scaled_positions, masses=patoms.masses, pbc=True)


def harmonic_free_energy(
    atoms: Atoms,
    force_fn: Callable[[Atoms], np.ndarray],
    supercell: Sequence[int] | str = (1, 1, 1),
    displacement_A: float = 0.01,
    temperatures_K: Sequence[float] = (0.0, 298.15),
    mesh: float | Sequence[int] | None = None,
    n_molecules: int | None = None,
    symprec: float = 1e-4,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Harmonic vibrational free energy of a crystal from finite displacements.

    Args:
        atoms: periodic unit cell at a minimum of the force level (n_atoms,); masses
            are taken from ``atoms.get_masses()``.
        force_fn: ``f(supercell_atoms) -> forces`` of shape (n_supercell_atoms, 3), eV/A.
        supercell: diagonal supercell multiples, or "auto" (all widths >= 8 A).
        displacement_A: finite-displacement amplitude (A).
        temperatures_K: temperatures (K) at which F is reported.
        mesh: q-point mesh, as three integers (Gamma-centred) or a length (A) that
            phonopy turns into a mesh (n_i ~ length * |b_i|). Default ``None``: the
            mesh equal to the supercell, i.e. exactly the q-points commensurate with
            it, where the force constants are exact; finer meshes Fourier-interpolate
            and are only trustworthy once the supercell covers the force-constant range
            (with a (1, 1, 1) supercell of a molecular crystal they produce spurious
            imaginary modes away from Gamma).
        n_molecules: molecules per unit cell (Z) to normalise by; default: the number
            of covalently bonded fragments in ``atoms``.
        symprec: symmetry tolerance (A) for the displacement reduction.
        progress: optional callback ``progress(done, total)`` after each force call.

    Returns:
        A dict with ``temperatures_K`` (list), ``f_vib_kjmol`` (list, per molecule,
        same order), ``zpe_kjmol`` (per molecule), ``n_imaginary`` (modes on the mesh
        below -0.05 THz, weighted by q-point multiplicity), ``min_frequency_THz``,
        ``imaginary_gamma_THz`` (imaginary frequencies at Gamma), ``n_force_calls``,
        ``supercell``, ``mesh`` (the integer mesh used), ``n_molecules``.

    Raises:
        SetupError: bad supercell, mesh or displacement.
        RunError: the force function returned non-finite or mis-shaped forces.
    """
    import numpy as np
    from phonopy import Phonopy

    if isinstance(supercell, str):
        if supercell != "auto":
            raise SetupError(f"supercell must be three integers or 'auto', not {supercell!r}")
        supercell = auto_supercell(atoms)
    sc = [int(v) for v in supercell]
    if len(sc) != 3 or min(sc) < 1:
        raise SetupError(f"supercell must be three positive integers, not {supercell!r}")
    if not 1e-4 <= float(displacement_A) <= 0.1:
        raise SetupError(f"displacement_A={displacement_A} outside [1e-4, 0.1] A")
    if n_molecules is None:
        from sim_backends.structures import molecule_indices

        n_molecules = len(molecule_indices(atoms))

    # primitive_matrix "P": thermal properties per *input* cell, which is what dividing by
    # its Z assumes; phonopy's default ("auto" in recent versions) reduces a centred cell
    # (Cc, C2, C2/c from CSP) to its primitive cell and would halve F_vib per molecule
    phonon = Phonopy(_to_phonopy(atoms), supercell_matrix=np.diag(sc),
                     primitive_matrix="P", symprec=symprec)
    phonon.generate_displacements(distance=float(displacement_A))
    displaced = phonon.supercells_with_displacements
    n_sc_atoms = len(phonon.supercell)
    forces = []
    for k, patoms in enumerate(displaced):
        f = np.asarray(force_fn(_to_ase(patoms)), dtype=float)
        if f.shape != (n_sc_atoms, 3) or not np.all(np.isfinite(f)):
            raise RunError(f"force function returned {f.shape} forces or non-finite values")
        # remove the net force (drift) so the acoustic sum rule is not spoiled
        forces.append(f - f.mean(axis=0))
        if progress is not None:
            progress(k + 1, len(displaced))
    phonon.forces = np.array(forces)
    phonon.produce_force_constants()
    phonon.symmetrize_force_constants()

    if mesh is None:
        mesh_arg: Any = list(sc)
    elif isinstance(mesh, (int, float)):
        mesh_arg = float(mesh)
    else:
        mesh_arg = [int(v) for v in mesh]
        if len(mesh_arg) != 3 or min(mesh_arg) < 1:
            raise SetupError(f"mesh must be three positive integers or a length, not {mesh!r}")
    phonon.run_mesh(mesh_arg, is_gamma_center=True)
    mesh_result = phonon.mesh
    freqs = np.asarray(mesh_result.frequencies)  # (n_q, n_bands) THz
    weights = np.asarray(mesh_result.weights)  # (n_q,)
    qpoints = np.asarray(mesh_result.qpoints)
    is_imag = freqs < -IMAGINARY_TOL_THZ
    gamma = np.flatnonzero(np.all(np.abs(qpoints) < 1e-12, axis=1))
    imag_gamma = sorted(float(f) for f in freqs[gamma[0]][is_imag[gamma[0]]]) if len(gamma) else []

    temps = [float(t) for t in temperatures_K]
    if any(t < 0 for t in temps):
        raise SetupError(f"temperatures must be >= 0 K, got {temps}")
    all_t = sorted(set(temps) | {0.0})
    # the three acoustic modes at Gamma have w = 0 (uniform translation): excluded, as
    # their k_B T ln(1 - exp(-hw/k_B T)) diverges; imaginary modes fall below the cutoff
    phonon.run_thermal_properties(temperatures=all_t, cutoff_frequency=0.0,
                                  exclude_gamma_acoustic=True)
    f_cell = dict(zip(all_t, np.asarray(phonon.thermal_properties.free_energy, dtype=float)))
    z = int(n_molecules)
    return {
        "temperatures_K": temps,
        "f_vib_kjmol": [f_cell[t] / z for t in temps],
        "zpe_kjmol": f_cell[0.0] / z,
        "n_imaginary": int((is_imag * weights[:, None]).sum()),
        "min_frequency_THz": float(freqs.min()),
        "imaginary_gamma_THz": imag_gamma,
        "n_force_calls": len(displaced),
        "supercell": sc,
        "mesh": [int(v) for v in mesh_result.mesh_numbers],
        "n_molecules": z,
    }


def _force_backend_class(name: Any) -> type[Backend]:
    """The registered backend class ``name`` if it gives forces (``ase_calculator``)."""
    from sim_backends.registry import UnknownBackendError, backend_class

    check.text(name)
    try:
        cls = backend_class(name)
    except UnknownBackendError as exc:
        raise ValueError(str(exc)) from None
    if not hasattr(cls, "ase_calculator"):
        raise ValueError(f"backend {name!r} cannot give forces (no ase_calculator)")
    return cls


def _table(value: Any) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"must be a table of the force backend's parameters, got {value!r}")


def _relax_mode(value: Any) -> None:
    from sim_backends.xtb_crystal import parse_relax_mode

    parse_relax_mode(value)


class PhononBackend(Backend):
    """Harmonic vibrational free energy and ZPE (kJ/mol per molecule).

    Params:
        force_backend: registry name of a force-capable backend ("xtb-crystal").
        force_params: dict passed to that backend's ``ase_calculator``.
        temperature_K: temperature of ``f_vib_kjmol`` (298.15).
        relax: True/"positions" (default; fixed cell), "full" (cell too) or False --
            relax at the force level first; without it the result is unreliable.
        fmax_eVA, max_steps: relaxation threshold (0.01 eV/A) and step limit (300);
            not converging is a RunError.
        supercell: three integers or "auto" ((1, 1, 1)); displacement_A (0.01);
        mesh: q-mesh as three integers or a length in A (default: the supercell's
            commensurate mesh; Gamma only for (1, 1, 1)).
        force_min_width_A: with a Gamma-point force backend ("xtb-crystal"), every
            force call runs on the structure repeated to perpendicular widths >= this
            (default: xtb-crystal's ``MIN_WIDTH_A``, 9 A; 0 = the structure as it is).

    Values: ``f_vib_kjmol``, ``zpe_kjmol``, ``n_imaginary``. Extra: frequencies of
    imaginary modes at Gamma, the relaxation record, force-call count.
    """

    name = "phonon"
    version = "1"
    fidelity = 1
    target = "structure"
    computes = ("f_vib_kjmol", "zpe_kjmol", "n_imaginary")
    objective_key = "f_vib_kjmol"
    description = "harmonic phonon free energy F_vib(T) and ZPE (phonopy) over a force backend"
    params_schema = {
        "force_backend": _force_backend_class, "force_params": _table,
        "temperature_K": check.number(0.0, 1000.0), "relax": _relax_mode,
        "fmax_eVA": check.number(0.0, 1.0, lo_open=True), "max_steps": check.integer(1),
        "supercell": check.either(check.one_of("auto"), check.integers(3, 1, 8),
                                  reason="must be 'auto' or three integers in [1, 8]"),
        "displacement_A": check.number(1e-4, 0.1),
        "mesh": check.either(check.integers(3, 1, 100), check.number(0.0, 500.0, lo_open=True),
                             reason="must be three integers in [1, 100] or a length in A (> 0, <= 500)"),
        "force_min_width_A": check.number(0.0, 50.0),
    }

    #: force backends that evaluate a periodic cell at the Gamma point only
    GAMMA_ONLY = frozenset({"xtb-crystal"})

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        """The declared checks, then ``force_params`` against the force backend's own."""
        super().check_params(params)
        force = _force_backend_class(params.get("force_backend", "xtb-crystal"))
        try:
            force.check_params(params.get("force_params") or {})
        except ParamsError as exc:
            raise ParamsError(f"force_params.{exc.key}", exc.reason) from None

    def level_of_theory(self, params: dict[str, Any] | None = None) -> str:
        """The level of ``f_vib_kjmol`` as printed next to it."""
        p = {**self.params, **(params or {})}
        return (f"harmonic F_vib({float(p.get('temperature_K', 298.15)):g} K), phonopy over "
                f"{p.get('force_backend', 'xtb-crystal')}")

    def cost_estimate(self, inp: EvalInput) -> float:
        from sim_backends.registry import backend_class

        p = {**self.params, **inp.params}
        try:
            force = backend_class(p.get("force_backend", "xtb-crystal"))()
        except Exception:  # noqa: BLE001 - unknown backend fails later with a clear reason
            return 1.0
        # ~ 6 displacements per symmetry-unique atom, plus ~50 relaxation steps
        return force.cost_estimate(EvalInput(smiles=inp.smiles, structure_cif=inp.structure_cif)) * 40

    def _force_calculator(self, p: dict[str, Any]):
        name = p.get("force_backend", "xtb-crystal")
        try:
            cls = _force_backend_class(name)
        except ValueError as exc:
            raise SetupError(str(exc)) from None
        force_params = p.get("force_params", {}) or {}
        width = self._force_width(p)
        if width <= 0:
            return name, (lambda: cls(**force_params).ase_calculator(**force_params))
        return name, (lambda: gamma_supercell_calculator(
            cls(**force_params).ase_calculator(**force_params), width))

    def _force_width(self, p: dict[str, Any]) -> float:
        """Width (A) of the supercell every force call runs in; 0 = the cell as it is."""
        if p.get("force_backend", "xtb-crystal") not in self.GAMMA_ONLY:
            return 0.0
        from sim_backends.xtb_crystal import MIN_WIDTH_A

        force_params = p.get("force_params", {}) or {}
        return float(p.get("force_min_width_A", force_params.get("min_width_A", MIN_WIDTH_A)))

    def _evaluate(self, inp: EvalInput) -> tuple[dict[str, float], dict[str, Any]]:
        from sim_backends.structures import Crystal, load_crystal
        from sim_backends.xtb_crystal import parse_relax_mode, relax_atoms, run_guarded

        p = inp.params
        temperature = float(p.get("temperature_K", 298.15))
        mode = parse_relax_mode(p.get("relax", True))
        crystal = load_crystal(inp.structure_cif or "", inp.smiles)
        force_name, make_calc = self._force_calculator(p)
        extra: dict[str, Any] = {"force_backend": force_name, "z": crystal.z}
        atoms = crystal.atoms
        if mode is not None:
            t0 = time.perf_counter()
            atoms, info = relax_atoms(atoms, make_calc(), mode,
                                      float(p.get("fmax_eVA", 0.01)), int(p.get("max_steps", 300)))
            extra["relax"] = {"mode": mode, **info, "wall_s": time.perf_counter() - t0}
            if not info["converged"]:
                raise RunError(
                    f"relaxation not converged in {info['n_steps']} steps "
                    f"(max force {info['fmax_eVA']:.3f} eV/A); phonons would be unreliable"
                )
        else:
            extra["relax"] = None
        extra["level"] = f"harmonic phonons, {force_name} forces"
        width = self._force_width(p)
        if width > 0:
            from sim_backends.xtb_crystal import gamma_supercell

            extra["force_supercell"] = list(gamma_supercell(atoms.cell.array, width))
        extra["validity"] = structure_facts(Crystal.from_atoms(atoms))
        calc = make_calc()

        def force_fn(a: Atoms):
            a.calc = calc
            return run_guarded(a.get_forces, "phonon forces")

        t0 = time.perf_counter()
        res = harmonic_free_energy(
            atoms, force_fn,
            supercell=p.get("supercell", (1, 1, 1)),
            displacement_A=float(p.get("displacement_A", 0.01)),
            temperatures_K=(0.0, temperature),
            mesh=p.get("mesh"),
            n_molecules=crystal.z,
        )
        extra.update({k: v for k, v in res.items() if k not in ("f_vib_kjmol", "zpe_kjmol")})
        extra["phonon_wall_s"] = time.perf_counter() - t0
        values = {
            "f_vib_kjmol": res["f_vib_kjmol"][1],
            "zpe_kjmol": res["zpe_kjmol"],
            "n_imaginary": float(res["n_imaginary"]),
        }
        return values, extra

    def _check_physical(self, values: dict[str, float], extra: dict[str, Any]) -> None:
        """F_vib and ZPE finite, no imaginary mode below -MAX_IMAGINARY_THZ, and the
        (relaxed) structure's density and contacts in the bounds of
        :mod:`sim_backends.validity`."""
        super()._check_physical(values, extra)
        level = extra.get("level", self.name)
        check_structure_facts(extra["validity"], level)
        check_imaginary_modes(extra["min_frequency_THz"], int(values["n_imaginary"]), level)
