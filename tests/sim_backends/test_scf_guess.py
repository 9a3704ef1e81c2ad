"""SCF warm starts (sim_backends/scf_guess.py): AO rotations, guesses, fallback, records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

LANDSCAPE = Path(__file__).resolve().parents[2] / "data" / "landscapes" / "formic_acid_dft"


def _random_orthogonal(seed: int, proper: bool) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    if (np.linalg.det(q) > 0) != proper:
        q = -q
    return q


WATER = np.array([[0.0, 0.0, 0.117], [0.0, 0.757, -0.467], [0.0, -0.757, -0.467]])


@pytest.mark.parametrize("proper", [True, False])
def test_rotated_density_is_the_converged_density_of_the_rotated_molecule(proper):
    """RHF/cc-pVTZ (s to f shells): no grid, so the densities must agree exactly."""
    from pyscf import gto, scf

    from sim_backends.scf_guess import ao_rotation, orthogonal_fit

    R = _random_orthogonal(3, proper)
    moved = WATER @ R.T + np.array([1.0, -2.0, 0.5])

    def converged(xyz):
        mol = gto.M(atom=[("O", xyz[0]), ("H", xyz[1]), ("H", xyz[2])], basis="cc-pvtz", verbose=0)
        mf = scf.RHF(mol)
        mf.conv_tol = 1e-11
        mf.kernel()
        return mol, mf.make_rdm1()

    _, dm_ref = converged(WATER)
    mol, dm_moved = converged(moved)
    R_fit, rmsd = orthogonal_fit(WATER, moved)
    assert rmsd < 1e-10
    u = ao_rotation(mol, R_fit)
    assert np.abs(u @ dm_ref @ u.T - dm_moved).max() < 1e-6
    # and the unrotated density is far off (the test can fail)
    assert np.abs(dm_ref - dm_moved).max() > 1e-2


def _formic_acid_molecules(n_frames: int = 2):
    from ase.io import read

    from sim_backends.structures import Crystal

    frames = read(str(LANDSCAPE / "formic_acid_dft_ff.extxyz"), index=f":{n_frames}")
    return [Crystal.from_atoms(f) for f in frames]


def _settings(**kw):
    from sim_backends.dft_crystal import ScfSettings

    # the shipped landscape settings (data/landscapes/formic_acid_dft/run.json)
    return ScfSettings(basis="def2-svp", grid_level=0, density_fit=False, conv_tol=1e-7, **kw)


@pytest.mark.slow  # PySCF def2-SVP SCFs
def test_rotated_reference_converges_to_the_default_energy_in_fewer_fock_builds():
    from sim_backends.dft_crystal import monomer_scf, run_scf
    from sim_backends.scf_guess import REFERENCES

    REFERENCES.clear()
    c1, c2 = _formic_acid_molecules(2)
    first = monomer_scf(c1.molecule(0), _settings())
    assert first["scf"]["guess"] == "minao" and len(REFERENCES) == 1
    for crystal in (c1, c2):
        for k in range(crystal.z):
            mol = crystal.molecule(k)
            warm = monomer_scf(mol, _settings())
            cold = run_scf(mol, _settings())
            assert warm["scf"]["guess"] == "rotated_reference"
            assert "fallback" not in warm["scf"]
            assert warm["energy_hartree"] == pytest.approx(cold["energy_hartree"], abs=1e-6)
            assert warm["scf"]["fock_builds"] < cold["scf"]["fock_builds"]


@pytest.mark.parametrize("solver", ["diis", "newton", "auto"])
def test_bad_guess_falls_back_to_the_default_and_says_so(solver):
    from sim_backends.dft_crystal import run_scf

    mol = _formic_acid_molecules(1)[0].molecule(0)
    cold = run_scf(mol, _settings())
    n = cold["n_ao"]
    junk = np.random.default_rng(0).normal(size=(n, n))
    bad = run_scf(mol, _settings(), dm0=junk + junk.T, guess="random", solver=solver)
    assert bad["scf"]["fallback"].startswith("guess rejected")
    assert bad["scf"]["guess"] == "random" and bad["scf"]["solver"] == "diis"
    assert bad["energy_hartree"] == pytest.approx(cold["energy_hartree"], abs=1e-6)


def test_guess_that_does_not_converge_falls_back():
    """A plausible density (right electron count, the five highest virtual orbitals
    occupied) that DIIS cannot converge within the cycles the default guess needs
    (measured: 9 vs 7 cycles): the SCF is redone from the default guess."""
    from pyscf import dft, gto

    from sim_backends.scf_guess import solve

    mol = gto.M(atom=[("O", WATER[0]), ("H", WATER[1]), ("H", WATER[2])], basis="def2-svp", verbose=0)

    def fresh():
        mf = dft.RKS(mol, xc="pbe")
        mf.grids.level = 0
        mf.conv_tol = 1e-8
        return mf

    cold, rec_cold = solve(fresh(), None)
    c = cold.mo_coeff[:, -5:]
    excited = 2.0 * c @ c.T
    mf = fresh()
    mf.max_cycle = rec_cold["cycles"]
    warm, rec = solve(mf, excited, guess="excited")
    assert "not converged from the excited guess" in rec["fallback"]
    assert warm.converged
    assert rec["energy_hartree"] == pytest.approx(rec_cold["energy_hartree"], abs=1e-6)
    assert rec["fock_builds"] > rec_cold["fock_builds"]  # the failed attempt is charged


def test_exchanged_partner_density_of_a_centrosymmetric_dimer():
    """Counterpoise monomer B of an inversion-symmetric dimer is monomer A moved."""
    from pyscf import gto, scf

    from sim_backends.scf_guess import swapped_partner_density

    a = WATER + np.array([0.0, 0.0, 1.6])
    xyz = np.vstack([a, -a])  # inversion through the origin
    sym = ["O", "H", "H"]

    def cp(ghost_first: bool):
        atom = [(("ghost-" if (k < 3) == ghost_first else "") + sym[k % 3], tuple(x)) for k, x in enumerate(xyz)]
        mol = gto.M(atom=atom, basis="def2-svp", verbose=0)
        mf = scf.RHF(mol)
        mf.conv_tol = 1e-11
        mf.kernel()
        return mol, mf.make_rdm1()

    mol_a, dm_a = cp(ghost_first=False)  # A real, B ghost
    mol_b, dm_b = cp(ghost_first=True)
    guess = swapped_partner_density(mol_b, xyz, 3, dm_a)
    assert guess is not None
    assert np.abs(guess - dm_b).max() < 1e-6
    # a dimer without the exchange symmetry (B turned by 20 degrees about its O) gets no guess
    t = np.radians(20.0)
    turn = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(t), -np.sin(t)], [0.0, np.sin(t), np.cos(t)]])
    skew = np.vstack([a, (-a - -a[0]) @ turn.T + -a[0]])
    assert swapped_partner_density(mol_b, skew, 3, dm_a) is None


@pytest.mark.slow
def test_fragment_energy_with_warm_starts_equals_the_default_guess():
    """Shipped landscape settings, formic acid m0001: every SCF energy to 1e-6 Eh."""
    from sim_backends.dft_crystal import fragment_lattice_energy
    from sim_backends.scf_guess import REFERENCES

    REFERENCES.clear()
    crystal = _formic_acid_molecules(1)[0]
    v_def, x_def = fragment_lattice_energy(crystal, _settings(scf_guess="default"), 3.0)
    v_warm, x_warm = fragment_lattice_energy(crystal, _settings(scf_guess="auto", reuse_monomers=False,
                                                                reuse_dimers=False), 3.0)
    n_scf = sum(len(r["scf"]) for r in x_def["dimers"])
    # E_2body is a sum of 3 energies per dimer with weights mult/(2Z): bound from 1e-6 Eh each
    bound = 1e-6 * 2625.5 * sum(3 * r["multiplicity"] / (2 * crystal.z) for r in x_def["dimers"])
    assert v_warm["e_dft_2body_kjmol"] == pytest.approx(v_def["e_dft_2body_kjmol"], abs=bound)
    for m_def, m_warm in zip(x_def["monomers"], x_warm["monomers"]):
        assert m_warm["energy_hartree"] == pytest.approx(m_def["energy_hartree"], abs=1e-6)
    assert {x["guess"] for r in x_def["dimers"] for x in r["scf"]} == {"minao"}
    guesses = {x["guess"] for r in x_warm["dimers"] for x in r["scf"]}
    assert {"monomer_superposition", "padded_monomer"} <= guesses
    assert x_warm["scf_fallbacks"] == [] and x_def["scf_fallbacks"] == []
    assert n_scf == 3 * x_def["n_unique_dimers"]
    assert x_warm["scf_fock_builds_total"] < 0.75 * x_def["scf_fock_builds_total"]
    for r in x_warm["dimers"]:
        for x in r["scf"]:
            assert {"guess", "solver", "cycles", "fock_builds", "wall_s", "cpu_s"} <= set(x)


def test_backend_declares_scf_guess():
    from sim_backends.registry import get_backend

    backend = get_backend("dft-crystal")
    backend.check_params({"scf_guess": "default"})
    with pytest.raises(Exception, match="scf_guess"):
        backend.check_params({"scf_guess": "sad"})


def test_state_density_reoccupies_orbitals_for_the_other_charge():
    from pyscf import dft, gto

    from sim_backends.scf_guess import closest_state, density_problem, state_density

    def mol(charge, spin):
        return gto.M(atom=[("O", WATER[0]), ("H", WATER[1]), ("H", WATER[2])], basis="def2-svp",
                     charge=charge, spin=spin, verbose=0)

    neutral = dft.RKS(mol(0, 0), xc="pbe").run()
    cation_mol = mol(1, 1)
    guess = state_density(cation_mol, {"mo_coeff": neutral.mo_coeff, "mo_occ": neutral.mo_occ})
    assert guess.shape == (2, cation_mol.nao, cation_mol.nao)
    assert density_problem(cation_mol, guess) is None
    cation = dft.UKS(cation_mol, xc="pbe").run()
    back = state_density(mol(0, 0), {"mo_coeff": cation.mo_coeff, "mo_occ": cation.mo_occ})
    assert back.shape == (cation_mol.nao,) * 2 and density_problem(mol(0, 0), back) is None
    states = [{"charge": 0, "xyz_A": WATER, "nao": 24}, {"charge": 1, "xyz_A": WATER + 0.1, "nao": 24}]
    assert closest_state(states, 1, WATER, 24)["charge"] == 0  # same geometry beats 0.17 A away
    assert closest_state(states, 1, WATER + 0.1, 24)["charge"] == 1
    assert closest_state(states, 1, WATER, 25) is None


@pytest.mark.slow
def test_dft_reorg_closest_state_guesses_give_the_default_energies():
    """B3LYP/6-31G//GFN2-xTB furan: the four energies with and without warm starts."""
    from sim_backends.base import EvalInput
    from sim_backends.reorg import DftReorgBackend

    results = {mode: DftReorgBackend().evaluate(EvalInput(smiles="c1ccoc1", params={
        "geometry": "xtb", "scf_guess": mode})) for mode in ("default", "auto")}
    e_def, e_auto = (results[m].extra["energies_ev"] for m in ("default", "auto"))
    for key in e_def:
        assert e_auto[key] == pytest.approx(e_def[key], abs=1e-6 * 27.2114)
    scf = results["auto"].extra["scf"]
    # neutral first (nothing converged yet), then every SCF from a converged state
    assert scf[0]["guess"] == "minao" and scf[1]["guess"] == "charge +0"
    # (the neutral at the cation geometry comes before the cation: its orbitals decide whether
    # the HOMO is degenerate, and the N@C energy reuses it)
    assert all(r["guess"].startswith(("charge +0", "charge +1")) for r in scf[2:]) and len(scf) == 4
    assert not results["auto"].extra["scf_hole_placements"]  # furan's HOMO is not degenerate
    assert {r["guess"] for r in results["default"].extra["scf"]} == {"minao"}
    assert all(r["fock_builds"] > 0 and r["cycles"] > 0 for r in scf)


def _water_dimer(turn_deg: float = 0.0) -> np.ndarray:
    """A water dimer (6 atoms, Angstrom); ``turn_deg`` turns the second molecule about its O."""
    t = np.radians(turn_deg)
    turn = np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])
    b = (WATER - WATER[0]) @ turn.T + np.array([0.3, 0.4, 2.9])
    return np.vstack([WATER, b])


def _rhf_density(xyz: np.ndarray, ghost: tuple[int, ...] = ()) -> tuple[object, np.ndarray]:
    from pyscf import gto, scf

    sym = ["O", "H", "H"] * 2
    atom = [(("ghost-" if k in ghost else "") + sym[k], tuple(x)) for k, x in enumerate(xyz)]
    mol = gto.M(atom=atom, basis="def2-svp", verbose=0)
    mf = scf.RHF(mol)
    mf.conv_tol = 1e-11
    mf.kernel()
    return mol, mf.make_rdm1()


@pytest.mark.parametrize("swap", [False, True])
def test_nearest_dimer_densities_are_carried_onto_a_moved_copy(swap):
    """RHF/def2-SVP (no grid): a stored dimer's and counterpoise monomers' densities,
    carried onto the same dimer rotated (improperly), translated and, with ``swap``,
    with its two molecules listed the other way round, are that dimer's converged
    densities; a dimer 0.5 A away in relative geometry gets none."""
    from sim_backends.scf_guess import DimerReferences

    xyz = _water_dimer()
    key = (("O", "H", "H") * 2, "rhf")
    store = DimerReferences()
    _, dm = _rhf_density(xyz)
    _, cp_a = _rhf_density(xyz, ghost=(3, 4, 5))
    store.store(key, xyz, 3, {"dimer": dm, "cp_a": cp_a})
    moved = xyz @ _random_orthogonal(5, proper=False).T + np.array([2.0, -1.0, 0.7])
    if swap:
        moved = np.vstack([moved[3:], moved[:3]])
    mol, dm_moved = _rhf_density(moved)
    hit = store.lookup(key, mol, moved, 3)
    assert hit is not None and hit[1] < 1e-8
    assert np.abs(hit[0]["dimer"] - dm_moved).max() < 1e-6
    # molecule A of the stored dimer is molecule B of the swapped copy
    cp_kind, ghost = ("cp_b", (0, 1, 2)) if swap else ("cp_a", (3, 4, 5))
    _, cp_moved = _rhf_density(moved, ghost=ghost)
    assert set(hit[0]) == {"dimer", cp_kind}
    assert np.abs(hit[0][cp_kind] - cp_moved).max() < 1e-6
    # the stored density without the move is far off (the test can fail)
    assert np.abs(dm - dm_moved).max() > 1e-2
    far = _water_dimer(turn_deg=40.0)
    assert store.lookup(key, mol, far, 3) is None
    assert store.lookup(key, mol, far, 3, max_rmsd_A=1.0) is not None
    assert store.lookup((("O", "H", "H") * 2, "other level"), mol, moved, 3) is None


def test_identical_monomer_is_reused_without_an_scf():
    """With ``reuse``, a rigid copy of the stored reference costs no Fock build and gets
    the reference's energy and its density rotated into place; a copy 0.01 A off runs an SCF."""
    from sim_backends.dft_crystal import monomer_scf
    from sim_backends.scf_guess import MonomerReferences

    refs = MonomerReferences()
    crystal = _formic_acid_molecules(1)[0]
    first = monomer_scf(crystal.molecule(0), _settings(), references=refs, reuse=True)
    assert first["scf"]["guess"] == "minao" and first["scf"]["fock_builds"] > 0
    copy = crystal.molecule(1)
    again = monomer_scf(copy, _settings(), references=refs, reuse=True)
    assert again["scf"]["guess"] == "reused_reference" and again["scf"]["fock_builds"] == 0
    assert again["energy_hartree"] == first["energy_hartree"]
    assert again["scf"]["fit_rmsd_A"] < 1e-6
    nudged = copy.copy()
    nudged.positions[0] += [0.01, 0.0, 0.0]
    run = monomer_scf(nudged, _settings(), references=refs, reuse=True)
    assert run["scf"]["guess"] == "rotated_reference" and run["scf"]["fock_builds"] > 0


@pytest.mark.slow
def test_landscape_warm_starts_give_the_default_energies_with_fewer_fock_builds():
    """Shipped landscape settings: formic acid m0001, then the same crystal turned by an
    arbitrary rotation. On the turned crystal the warm run starts its dimers and
    counterpoise monomers from the first run's dimers carried into place, and its
    monomers need no SCF; every counterpoise interaction energy equals the default
    guess's on the same turned crystal to 1e-6 Eh."""
    from sim_backends.dft_crystal import fragment_lattice_energy
    from sim_backends.scf_guess import DimerReferences, MonomerReferences
    from sim_backends.structures import Crystal

    refs, dimers = MonomerReferences(), DimerReferences()
    crystal = _formic_acid_molecules(1)[0]
    _, x_first = fragment_lattice_energy(crystal, _settings(), 3.0, references=refs, dimer_references=dimers)
    atoms = crystal.atoms.copy()
    atoms.rotate(37.0, (1.0, 2.0, 0.5), rotate_cell=True)
    turned = Crystal.from_atoms(atoms)
    v_def, x_def = fragment_lattice_energy(turned, _settings(scf_guess="default"), 3.0)
    v_warm, x_warm = fragment_lattice_energy(turned, _settings(), 3.0, references=refs, dimer_references=dimers)
    assert len(dimers) == 2 * x_def["n_unique_dimers"]
    assert x_warm["scf_fallbacks"] == []
    for r_def, r_warm in zip(x_def["dimers"], x_warm["dimers"]):
        assert abs(r_warm["e_int_kjmol"] - r_def["e_int_kjmol"]) / 2625.5 < 1e-6
        assert [x["guess"] for x in r_warm["scf"]][:2] == ["identical_dimer"] * 2
    assert abs(v_warm["e_dft_2body_kjmol"] - v_def["e_dft_2body_kjmol"]) / 2625.5 < 1e-6
    assert {m["scf"]["guess"] for m in x_warm["monomers"]} == {"reused_reference"}
    assert x_warm["scf_fock_builds_total"] < 0.7 * x_first["scf_fock_builds_total"]
    assert x_warm["scf_fock_builds_total"] < 0.5 * x_def["scf_fock_builds_total"]


def test_dimer_store_is_bounded_by_bytes():
    from sim_backends.scf_guess import DimerReferences

    dm = np.eye(50)
    store = DimerReferences(max_bytes=2 * dm.nbytes)
    for k in range(3):
        store.store(("key",), _water_dimer() + k, 3, {"dimer": dm})
    assert len(store) == 2 and store.nbytes() == 2 * dm.nbytes


def _water_cation(dm0=None):
    """B3LYP/6-31G UKS of H2O+ (density fitting), converged from ``dm0`` (None: minao)."""
    from pyscf import dft, gto

    mol = gto.M(atom=[("O", WATER[0]), ("H", WATER[1]), ("H", WATER[2])], basis="6-31g",
                charge=1, spin=1, verbose=0)
    mf = dft.UKS(mol, xc="b3lyp").density_fit()
    mf.conv_tol = 1e-9
    mf.kernel(dm0=dm0)
    assert mf.converged
    return mf


def test_stability_follow_up_leaves_an_excited_cation_state_for_the_ground_state():
    """H2O+ from the neutral's orbitals with the hole in HOMO-1 (3a1) instead of the HOMO
    (1b1): DIIS converges to that excited configuration, a saddle point in orbital space
    ~0.07 Eh above the ground state; the stability analysis finds the negative mode and one
    restart along it reaches PySCF's default-guess energy. The ground state is left alone."""
    from pyscf import dft, gto

    from sim_backends.scf_guess import count_fock_builds, follow_instabilities

    ground = _water_cation()
    ground_rec = follow_instabilities(ground)[1]
    assert ground_rec["stable"] and ground_rec["followups"] == 0 and ground_rec["eigenvalues"][0] > 0
    assert ground_rec["energy_change_eh"] == 0.0

    neutral = dft.RKS(gto.M(atom=ground.mol.atom, basis="6-31g", verbose=0), xc="b3lyp").run()
    c = neutral.mo_coeff
    beta = [0, 1, 2, 4]  # occupied 1a1 2a1 1b2 1b1; 3a1 (index 3) emptied
    excited = _water_cation(np.stack([c[:, :5] @ c[:, :5].T, c[:, beta] @ c[:, beta].T]))
    assert excited.e_tot > ground.e_tot + 0.03  # a different, higher UKS solution
    counter = count_fock_builds(excited)
    mf, rec = follow_instabilities(excited)
    assert rec["eigenvalues"][0] < -0.01 and rec["followups"] >= 1 and rec["stable"]
    assert mf.e_tot == pytest.approx(ground.e_tot, abs=1e-6)
    assert rec["energy_change_eh"] < -0.03
    assert rec["fock_builds"] == counter["n"] > 0


def test_stability_cap_reports_an_unstable_state():
    """With no follow-ups allowed, a saddle point stays and the record says so."""
    from pyscf import dft, gto

    from sim_backends.scf_guess import follow_instabilities

    neutral = dft.RKS(gto.M(atom=[("O", WATER[0]), ("H", WATER[1]), ("H", WATER[2])], basis="6-31g",
                            verbose=0), xc="b3lyp").run()
    c = neutral.mo_coeff
    beta = [0, 1, 2, 4]
    excited = _water_cation(np.stack([c[:, :5] @ c[:, :5].T, c[:, beta] @ c[:, beta].T]))
    e0 = excited.e_tot
    mf, rec = follow_instabilities(excited, max_followups=0)
    assert not rec["stable"] and rec["followups"] == 0 and rec["checks"] == 1
    assert mf.e_tot == e0


def test_degenerate_holes_lists_the_orbitals_within_the_threshold_of_the_homo():
    from sim_backends.scf_guess import DEGENERATE_HOMO_EH, degenerate_holes

    occ = np.array([2.0, 2.0, 2.0, 2.0, 0.0, 0.0])
    e = np.array([-1.0, -0.6, -0.30001, -0.3, 0.1, 0.1])
    assert degenerate_holes(e, occ) == [3, 2]  # HOMO first; the degenerate virtuals do not count
    e_far = e.copy()
    e_far[2] = -0.3 - 2 * DEGENERATE_HOMO_EH
    assert degenerate_holes(e_far, occ) == []
    # a threefold set, equal energies in index order
    assert degenerate_holes(np.array([-1.0, -0.3, -0.3, -0.3]), np.array([2.0, 2.0, 2.0, 2.0])) == [1, 2, 3]
    assert degenerate_holes(e, np.stack([occ, occ])) == []  # not a closed-shell state


def test_hole_density_empties_one_beta_orbital():
    from sim_backends.scf_guess import hole_density

    rng = np.random.default_rng(3)
    c, _ = np.linalg.qr(rng.normal(size=(6, 6)))  # orthonormal orbitals (S = 1)
    occ = np.array([2.0, 2.0, 2.0, 0.0, 0.0, 0.0])
    dm = hole_density({"mo_coeff": c, "mo_occ": occ}, 1)
    assert dm.shape == (2, 6, 6)
    assert np.trace(dm[0]) == pytest.approx(3.0) and np.trace(dm[1]) == pytest.approx(2.0)
    assert c[:, 1] @ dm[1] @ c[:, 1] == pytest.approx(0.0, abs=1e-12)  # the hole
    assert c[:, 1] @ dm[0] @ c[:, 1] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        hole_density({"mo_coeff": c, "mo_occ": occ}, 4)  # a virtual orbital
