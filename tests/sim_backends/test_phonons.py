"""Harmonic free energies: an analytic spring lattice, failure paths, and an xTB smoke test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sim_backends.base import EvalInput, SetupError
from sim_backends.registry import get_backend

X23 = Path(__file__).resolve().parents[2] / "data" / "reference" / "x23"

# SI constants (CODATA 2018)
HBAR = 1.054571817e-34
KB = 1.380649e-23
EV = 1.602176634e-19
AMU = 1.66053906660e-27
NA = 6.02214076e23

A_LATT = 3.0  # A
K_SPRING = 0.8  # eV/A^2


def _simple_cubic(mass_amu: float):
    from ase import Atoms

    return Atoms("Ar", positions=[[0.0, 0.0, 0.0]], cell=np.eye(3) * A_LATT, pbc=True,
                 masses=[mass_amu])


def _spring_forces(atoms):
    """Nearest-neighbour springs acting on each Cartesian component independently.

    F_i = -K sum_{j in NN(i)} (u_i - u_j), u = displacement from the ideal simple-cubic
    site; gives w^2(q) = (2K/m) sum_d (1 - cos(2 pi q_d)) for all three branches.
    """
    frac = atoms.get_scaled_positions(wrap=False)
    n_cell = np.rint(np.diag(atoms.cell.array) / A_LATT).astype(int)
    site = np.rint(frac * n_cell).astype(int) % n_cell
    u = atoms.positions - (site / n_cell) @ atoms.cell.array
    index = {tuple(s): k for k, s in enumerate(site)}
    forces = np.zeros_like(u)
    for k, s in enumerate(site):
        for d in range(3):
            for step in (-1, 1):
                nb = s.copy()
                nb[d] = (nb[d] + step) % n_cell[d]
                forces[k] -= K_SPRING * (u[k] - u[index[tuple(nb)]])
    return forces


def _analytic_free_energy_kjmol(mass_amu: float, mesh: int, temperature_K: float) -> float:
    """F per atom on a Gamma-centred mesh, zero-frequency (Gamma acoustic) modes excluded."""
    q = np.arange(mesh) / mesh
    qx, qy, qz = np.meshgrid(q, q, q, indexing="ij")
    s = (1 - np.cos(2 * np.pi * qx)) + (1 - np.cos(2 * np.pi * qy)) + (1 - np.cos(2 * np.pi * qz))
    omega = np.sqrt(2 * K_SPRING * EV / 1e-20 / (mass_amu * AMU) * s.ravel())  # rad/s
    omega = omega[omega > 0]
    e = HBAR * omega
    f = e / 2
    if temperature_K > 0:
        f = f + KB * temperature_K * np.log1p(-np.exp(-e / (KB * temperature_K)))
    return 3 * f.sum() / mesh**3 * NA / 1000


def test_spring_lattice_matches_analytic_free_energy():
    from sim_backends.phonons import harmonic_free_energy

    mass = 39.948
    res = harmonic_free_energy(
        _simple_cubic(mass), _spring_forces, supercell=(3, 3, 3), displacement_A=0.01,
        temperatures_K=[0.0, 50.0, 298.15], mesh=[6, 6, 6], n_molecules=1,
    )
    assert res["mesh"] == [6, 6, 6] and res["n_imaginary"] == 0
    for t, f in zip(res["temperatures_K"], res["f_vib_kjmol"]):
        # tolerance covers phonopy's CODATA edition of k_B, hbar, N_A (differences ~1e-6)
        assert f == pytest.approx(_analytic_free_energy_kjmol(mass, 6, t), rel=2e-5, abs=1e-5)
    assert res["zpe_kjmol"] == pytest.approx(_analytic_free_energy_kjmol(mass, 6, 0.0), rel=1e-6)
    assert res["zpe_kjmol"] > 0 and res["f_vib_kjmol"][2] < res["f_vib_kjmol"][1] < res["zpe_kjmol"]


def test_free_energy_per_molecule_does_not_depend_on_the_cell_choice():
    """A doubled (non-primitive) cell gives the same F per atom: thermal properties are per
    input cell, divided by its own count (phonopy's automatic primitive cell would halve
    it; CSP gives centred cells such as C2/c)."""
    from ase import Atoms

    from sim_backends.phonons import harmonic_free_energy

    mass = 39.948
    doubled = Atoms("Ar2", positions=[[0.0, 0.0, 0.0], [A_LATT, 0.0, 0.0]],
                    cell=np.diag([2 * A_LATT, A_LATT, A_LATT]), pbc=True, masses=[mass, mass])
    res = harmonic_free_energy(doubled, _spring_forces, supercell=(2, 3, 3), displacement_A=0.01,
                               temperatures_K=[298.15], mesh=[3, 6, 6], n_molecules=2)
    # the [3, 6, 6] mesh of the doubled cell folds onto the [6, 6, 6] mesh of the simple one
    assert res["f_vib_kjmol"][0] == pytest.approx(_analytic_free_energy_kjmol(mass, 6, 298.15), rel=2e-5)
    assert res["zpe_kjmol"] == pytest.approx(_analytic_free_energy_kjmol(mass, 6, 0.0), rel=2e-5)


def test_mass_scaling_of_zero_point_energy():
    """ZPE scales as m^(-1/2) for a fixed force constant (isotope effect)."""
    from sim_backends.phonons import harmonic_free_energy

    zpe = [harmonic_free_energy(_simple_cubic(m), _spring_forces, supercell=(3, 3, 3),
                                temperatures_K=[0.0], mesh=[4, 4, 4], n_molecules=1)["zpe_kjmol"]
           for m in (10.0, 40.0)]
    assert zpe[0] / zpe[1] == pytest.approx(2.0, rel=1e-6)


def test_unstable_lattice_reports_imaginary_modes():
    """Anti-springs (negative K) make every non-Gamma mode imaginary; F excludes them."""
    from sim_backends.phonons import harmonic_free_energy

    res = harmonic_free_energy(_simple_cubic(40.0), lambda a: -_spring_forces(a), supercell=(3, 3, 3),
                               temperatures_K=[0.0], mesh=[3, 3, 3], n_molecules=1)
    assert res["n_imaginary"] == 3 * (27 - 1)
    assert res["min_frequency_THz"] < 0 and res["zpe_kjmol"] == pytest.approx(0.0, abs=1e-9)


def test_bad_arguments():
    from sim_backends.phonons import auto_supercell, harmonic_free_energy

    assert auto_supercell(_simple_cubic(40.0)) == (3, 3, 3)
    with pytest.raises(SetupError, match="supercell"):
        harmonic_free_energy(_simple_cubic(40.0), _spring_forces, supercell="big")
    with pytest.raises(SetupError, match="displacement"):
        harmonic_free_energy(_simple_cubic(40.0), _spring_forces, supercell=(3, 3, 3), displacement_A=1.0)


def test_backend_failure_paths():
    cif = (X23 / "cif" / "co2.cif").read_text()
    r = get_backend("phonon", force_backend="no-such").evaluate(EvalInput(smiles="O=C=O", structure_cif=cif))
    assert r.status == "failed" and r.reason.startswith("setup:") and "no-such" in r.reason
    r = get_backend("phonon").evaluate(EvalInput(smiles="O=C=O", structure_cif="junk"))
    assert r.status == "failed" and r.reason.startswith("setup:")
    r = get_backend("phonon", relax="sideways").evaluate(EvalInput(smiles="O=C=O", structure_cif=cif))
    assert r.status == "failed" and "relax" in r.reason


@pytest.mark.slow
def test_xtb_phonons_of_co2_crystal():
    """CO2 (Pa-3, Z=4, 12 atoms) at GFN2-xTB: relaxed positions, then phonons."""
    cif = (X23 / "cif" / "co2.cif").read_text()
    r = get_backend("phonon").evaluate(EvalInput(smiles="O=C=O", structure_cif=cif))
    assert r.ok, r.reason
    assert r.extra["mesh"] == [1, 1, 1] and r.extra["relax"]["converged"]
    # forces of the Gamma-converged 2x2x2 supercell (a = 5.6 A < 9 A)
    assert r.extra["force_supercell"] == [2, 2, 2]
    # relaxed at the force level (positions, X23 cell): at most a soft mode near zero,
    # never a saddle below the validity bound (seen: one triply degenerate mode at
    # -0.23 THz, -8 cm^-1, with converged forces; none with Gamma-only unit-cell forces)
    assert r.extra["min_frequency_THz"] > -0.5
    # CO2 internal modes (667 x2, 1333, 2349 cm^-1, NIST) alone give a ZPE of 30.0 kJ/mol;
    # lattice modes add a few kJ/mol
    assert 25.0 < r.values["zpe_kjmol"] < 40.0
    assert r.values["f_vib_kjmol"] < r.values["zpe_kjmol"]


@pytest.mark.slow
def test_gamma_supercell_forces_of_a_small_cell():
    """tblite is Gamma-point only: the phonon backend's forces on a narrow cell (CO2,
    a = 5.6 A) are those of the cell repeated to widths >= 9 A (2x2x2), mapped back --
    not the unit cell's Gamma-only forces, which differ."""
    from ase.io import read

    from sim_backends.phonons import PhononBackend, gamma_supercell_calculator
    from sim_backends.xtb_crystal import xtb_calculator

    atoms = read(X23 / "cif" / "co2.cif")
    atoms.rattle(0.02, seed=1)  # off the symmetric positions: non-zero forces
    wrapped = atoms.copy()
    wrapped.calc = gamma_supercell_calculator(xtb_calculator(), 9.0)
    f_wrapped = wrapped.get_forces()
    big = atoms.repeat((2, 2, 2))
    big.calc = xtb_calculator()
    f_big = big.get_forces()
    assert np.allclose(f_wrapped, f_big[: len(atoms)], atol=1e-6)
    assert wrapped.calc.results["supercell"] == [2, 2, 2]
    assert wrapped.get_potential_energy() == pytest.approx(big.get_potential_energy() / 8, abs=1e-6)
    unit = atoms.copy()
    unit.calc = xtb_calculator()
    assert np.abs(unit.get_forces() - f_wrapped).max() > 1e-3  # Gamma-only unit cell differs
    # the backend uses it for xtb-crystal forces (force_min_width_A 0 turns it off)
    name, make = PhononBackend()._force_calculator({"force_backend": "xtb-crystal"})
    assert type(make()).__name__ == "GammaSupercellCalculator"
    _, make = PhononBackend()._force_calculator({"force_backend": "xtb-crystal", "force_min_width_A": 0})
    assert type(make()).__name__ != "GammaSupercellCalculator"
