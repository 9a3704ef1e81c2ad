"""Z' = 2 CSP: trials with two independent molecules, their minimisation (gradients of the
per-molecule variable map against autograd and finite differences), a search that finds a
lower structure than Z' = 1 can represent, the landscape format round trip, and the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sim_backends.csp.forcefield import LatticeEnergyModel
from sim_backends.csp.minimise import CrystalVariables, as_trials, minimise_batch
from sim_backends.csp.rigid import RigidMolecule
from sim_backends.csp.trials import VDW_RADIUS_A, coords_numpy, generate_trials, min_contact_ratio


@pytest.fixture(scope="module")
def urea():
    return RigidMolecule.from_smiles("NC(N)=O", charges="xtb")


def test_zprime2_trials_hold_two_independent_molecules(urea):
    trials = generate_trials(urea, "P2_1", 6, seed=3, z_prime=2)
    assert trials.z_prime == 2 and trials.centre_frac.shape == (6, 2, 3) and trials.quaternions.shape == (6, 2, 4)
    cells, xyz = coords_numpy(trials.space_group, trials.cell_params, trials.centre_frac, trials.quaternions,
                              urea.coords_A)
    assert xyz.shape == (6, 4, len(urea.symbols), 3)  # Z = 2 images of each of the 2 molecules
    radii = torch.tensor([VDW_RADIUS_A[s] for s in urea.symbols])
    ratio = min_contact_ratio(torch.as_tensor(cells), torch.as_tensor(xyz), radii, max_ratio=2.0)
    assert float(ratio.min()) >= 0.75 - 1e-9  # no overlap between any of the 4 molecules
    # the two molecules are independent: different orientations
    assert np.abs(np.abs((trials.quaternions[:, 0] * trials.quaternions[:, 1]).sum(-1)) - 1).min() > 1e-3
    z1 = generate_trials(urea, "P2_1", 6, seed=3)
    assert z1.z_prime == 1 and z1.centre_frac.shape == (6, 3)
    with pytest.raises(ValueError, match="z_prime must be an integer"):
        generate_trials(urea, "P2_1", 2, z_prime=0)


def test_zprime2_gradients_match_autograd_and_finite_differences(urea):
    """The compiled per-molecule chain rule (numba pair kernel) against the torch autograd path
    (pair_kernel='torch') and central differences, in every scaled variable."""
    trials = generate_trials(urea, "P-1", 3, seed=7, z_prime=2)
    fast = CrystalVariables(trials.space_group, urea, LatticeEnergyModel(urea, cutoff_A=9.0), z_prime=2)
    ref = CrystalVariables(trials.space_group, urea, LatticeEnergyModel(urea, cutoff_A=9.0, pair_kernel="torch"),
                           z_prime=2)
    x, r0 = fast.encode(trials)
    assert x.shape == (3, 3 + 3 + 12) and r0.shape == (3, 2, 3, 3)
    rng = np.random.default_rng(0)
    x = x + 0.05 * rng.standard_normal(x.shape)  # off the trial's zero rotation
    e, g = (a.numpy() for a in fast.energy_and_grad(x, r0))
    e_ref, g_ref = (a.numpy() for a in ref.energy_and_grad(x, r0))
    assert np.allclose(e, e_ref, atol=1e-8)
    assert np.abs(g - g_ref).max() < 1e-6 * max(1.0, np.abs(g_ref).max())
    h = 1e-5
    for k in range(x.shape[1]):
        xp, xm = x[:1].copy(), x[:1].copy()
        xp[0, k] += h
        xm[0, k] -= h
        fd = (float(fast.energy_and_grad(xp, r0[:1])[0][0]) - float(fast.energy_and_grad(xm, r0[:1])[0][0])) / (2 * h)
        assert abs(fd - g[0, k]) < 1e-4 * max(1.0, abs(g[0, k])), (k, fd, g[0, k])


def test_zprime2_minimisation_converges_and_restarts(urea):
    model = LatticeEnergyModel(urea, cutoff_A=9.0)
    trials = generate_trials(urea, "P2_1", 4, seed=5, z_prime=2)
    res = minimise_batch(trials, urea, model, gtol=0.05)
    assert res.converged.all() and res.coords_A.shape == (4, 4, len(urea.symbols), 3)
    assert res.centre_frac.shape == (4, 2, 3) and res.rotation.shape == (4, 2, 3, 3)
    e_direct = model.energy_kjmol(torch.as_tensor(res.cells_A), torch.as_tensor(res.coords_A)).numpy()
    assert np.allclose(e_direct, res.energy_kjmol, atol=1e-6)
    vol = np.abs(np.linalg.det(res.cells_A))
    assert np.allclose(res.density_gcm3, 4 * urea.mass_amu / vol * 1.66053906660)
    again = minimise_batch(as_trials(res), urea, model, gtol=0.05)  # restart from the minima: stays
    assert np.abs(again.energy_kjmol - res.energy_kjmol).max() < 0.05


@pytest.fixture(scope="module")
def p1_landscape(urea):
    """Urea in P1 at Z' = 1 and Z' = 2 (48 trials each, full model)."""
    from sim_backends.csp.run import run_csp

    return run_csp(urea, 96, space_groups="P1", z_prime="1,2", sampling="fixed", protocol="full", seed=1,
                   progress=False)


def test_zprime2_search_finds_a_lower_structure_than_zprime1_can_hold(p1_landscape):
    """Constructed case: in P1 a Z' = 1 crystal has every molecule a lattice translate of one
    (all parallel); urea packs better with two molecules per primitive cell in different
    orientations, which only the Z' = 2 search can produce."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    land = p1_landscape
    assert land.meta["searches"] == ["P1", "P1 Z'=2"] and land.meta["z_prime"] == [1, 2]
    z1 = [m for m in land.minima if m.search_space_group == "P1"]
    z2 = [m for m in land.minima if m.search_space_group == "P1 Z'=2"]
    # molecules per primitive cell (Z counts the conventional cell of a centred group)
    per_primitive = {m.id: m.z // {"P": 1, "A": 2, "B": 2, "C": 2, "I": 2, "F": 4, "R": 3}[m.space_group[0]]
                     for m in land.minima}
    assert z1 and z2 and all(per_primitive[m.id] == 1 for m in z1) and all(per_primitive[m.id] == 2 for m in z2)
    best = land.minima[0]
    assert best.search_space_group == "P1 Z'=2"
    assert best.energy_kjmol < min(m.energy_kjmol for m in z1) - 1.0
    # two molecules per primitive cell: not a doubled Z' = 1 P1 cell, and unlike every Z' = 1 minimum
    assert len(best.structure.get_primitive_structure(tolerance=0.1)) == len(best.structure)
    sm = StructureMatcher(ltol=0.3, stol=0.4, angle_tol=10, primitive_cell=True, scale=True)
    assert not any(sm.fit(best.structure, m.structure) for m in z1)
    assert all(m.z_prime is not None and 0 < m.z_prime <= m.z for m in land.minima)


def test_zprime2_landscape_round_trips(p1_landscape, tmp_path):
    from sim_backends.landscape import Landscape, LandscapeEntry

    land = p1_landscape
    land.write(tmp_path / "land", plot=False)
    back = Landscape.read(tmp_path / "land")
    assert back.ids == land.ids
    for a, b in zip(land.minima, back.minima):
        assert (b.search_space_group, b.z, b.space_group) == (a.search_space_group, a.z, a.space_group)
        assert b.z_prime == pytest.approx(a.z_prime, abs=1e-4)
        assert b.energy_kjmol == pytest.approx(a.energy_kjmol, abs=1e-3)
        assert np.allclose(b.structure.lattice.matrix, a.structure.lattice.matrix, atol=1e-5)
        assert np.allclose(b.structure.cart_coords, a.structure.cart_coords, atol=1e-5)
    rec = land.minima[0].to_dict()
    again = LandscapeEntry.from_dict(rec)
    assert again.z_prime == land.minima[0].z_prime and again.search_space_group == "P1 Z'=2"
    assert back.meta["searches"] == ["P1", "P1 Z'=2"]


def test_z_prime_arguments():
    from sim_backends.csp.spacegroups import parse_search_label, parse_z_prime, search_labels

    assert parse_z_prime("1,2") == [1, 2] and parse_z_prime(2) == [2] and parse_z_prime(None) == [1]
    assert search_labels(None, 2) == ["P2_1/c Z'=2", "P-1 Z'=2", "P2_12_12_1 Z'=2", "P2_1 Z'=2"]
    assert search_labels("P-1,C2/c", "1,2") == ["P-1", "C2/c", "P-1 Z'=2", "C2/c Z'=2"]
    assert parse_search_label("P2_1/c Z'=2") == ("P2_1/c", 2) and parse_search_label("P2_1/c") == ("P2_1/c", 1)
    for bad in ("3", "0", "", "1,x", [True]):
        with pytest.raises(ValueError, match="z_prime must be integers from 1 to 2"):
            parse_z_prime(bad)


@pytest.mark.parametrize("args, needle", [
    (["O=C=O", "--z-prime", "3"], "z_prime must be integers from 1 to 2"),
    (["CC(=O)Nc1ccc(O)cc1", "--z-prime", "2"], "Z' > 1 searches are for rigid molecules"),
])
def test_cli_refuses_bad_z_prime(capsys, args, needle):
    from agent.cli import main

    assert main(["csp", *args, "--n-trials", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_csp_ff_backend_takes_z_prime():
    from sim_backends.base import ParamsError
    from sim_backends.csp.backend import CSPBackend

    for ok in (1, 2, "1,2", [1, 2]):
        CSPBackend.check_params({"z_prime": ok})
    for bad in (3, "2,5", 1.5, {"a": 1}):
        with pytest.raises(ParamsError, match="z_prime"):
            CSPBackend.check_params({"z_prime": bad})


def test_csp_ff_backend_takes_the_flexible_search_options():
    """newuser41 #2: a failed campaign CSP said "raise max_rotatable_bonds", which csp-ff did not
    accept; it now takes ``flexible`` and ``max_rotatable_bonds`` as the CLI does."""
    from sim_backends.base import EvalInput, ParamsError
    from sim_backends.csp.backend import CSPBackend

    for ok in ({"flexible": "rigid"}, {"flexible": "always"}, {"max_rotatable_bonds": 8}):
        CSPBackend.check_params(ok)
    for bad in ({"flexible": "yes"}, {"max_rotatable_bonds": -1}, {"max_rotatable_bonds": 2.5}):
        with pytest.raises(ParamsError, match=next(iter(bad))):
            CSPBackend.check_params(bad)
    # the limit reaches the search: nonanoic acid (7 rotatable bonds) refused at limit 2, before any work
    res = CSPBackend().evaluate(EvalInput(smiles="CCCCCCCCC(=O)O", params={"max_rotatable_bonds": 2, "n_trials": 8}))
    assert res.status == "failed" and "max_rotatable_bonds=2" in res.reason, res.reason
