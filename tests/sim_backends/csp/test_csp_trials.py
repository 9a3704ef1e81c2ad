"""Trial structure generation: determinism, symmetry, overlap rejection and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sim_backends.csp.rigid import RigidMolecule
from sim_backends.csp.spacegroups import get_space_group
from sim_backends.csp.trials import (
    VDW_RADIUS_A, coords_numpy, generate_trials, min_contact_ratio, molecular_volume_A3,
)


@pytest.fixture(scope="module")
def pyrazine():
    return RigidMolecule.from_smiles("c1cnccn1", charges="none")


def _ratios(mol, trials):
    cells, xyz = coords_numpy(trials.space_group, trials.cell_params, trials.centre_frac,
                              trials.quaternions, mol.coords_A)
    radii = torch.tensor([VDW_RADIUS_A[s] for s in mol.symbols], dtype=torch.float64)
    return min_contact_ratio(torch.as_tensor(cells), torch.as_tensor(xyz), radii, max_ratio=5.0).numpy()


@pytest.mark.parametrize("symbol", ["P2_1/c", "P-1", "C2/c", "Pbca"])
def test_trials_respect_overlap_threshold_and_cell_constraints(pyrazine, symbol):
    tr = generate_trials(pyrazine, symbol, 16, seed=3, overlap_ratio=0.75)
    assert len(tr) == 16
    assert np.all(_ratios(pyrazine, tr) >= 0.75 - 1e-9)
    ang = tr.cell_params[:, 3:]
    sg = get_space_group(symbol)
    if sg.crystal_system == "orthorhombic":
        assert np.allclose(ang, 90.0)
    if sg.crystal_system == "monoclinic":
        assert np.allclose(ang[:, [0, 2]], 90.0) and np.ptp(ang[:, 1]) > 10
    # every trial is near contact: the bisection stops at the smallest allowed scale
    assert np.median(_ratios(pyrazine, tr)) < 0.85
    vol = np.abs(np.linalg.det(coords_numpy(sg, tr.cell_params, tr.centre_frac,
                                            tr.quaternions, pyrazine.coords_A)[0]))
    v_mol = molecular_volume_A3(pyrazine.symbols)
    assert np.all(vol / (sg.z * v_mol) > 0.5) and np.all(vol / (sg.z * v_mol) < 4.2)


def test_same_seed_same_trials_other_seed_differs(pyrazine):
    a = generate_trials(pyrazine, "P2_1", 8, seed=1)
    b = generate_trials(pyrazine, "P2_1", 8, seed=1)
    c = generate_trials(pyrazine, "P2_1", 8, seed=2)
    assert np.array_equal(a.cell_params, b.cell_params)
    assert not np.allclose(a.cell_params, c.cell_params)


def test_symmetry_copies_are_images_of_the_reference(pyrazine):
    tr = generate_trials(pyrazine, "P2_1/c", 4, seed=0)
    sg = tr.space_group
    cells, xyz = coords_numpy(sg, tr.cell_params, tr.centre_frac, tr.quaternions, pyrazine.coords_A)
    for cell, mols in zip(cells, xyz):
        frac = mols @ np.linalg.inv(cell)  # (Z, n, 3)
        for k in range(sg.z):
            img = frac[0] @ sg.rotations[k].T + sg.translations[k]
            diff = img - frac[k]
            assert np.allclose(diff, np.round(diff), atol=1e-9)  # equal up to a lattice vector


def test_overlapping_geometry_is_detected(pyrazine):
    cell = torch.eye(3, dtype=torch.float64)[None] * 3.0  # 3 A cube: molecules overlap
    _, xyz = coords_numpy(get_space_group("P1"), np.array([[3.0, 3, 3, 90, 90, 90]]),
                          np.zeros((1, 3)), np.array([[1.0, 0, 0, 0]]), pyrazine.coords_A)
    radii = torch.tensor([VDW_RADIUS_A[s] for s in pyrazine.symbols], dtype=torch.float64)
    assert float(min_contact_ratio(cell, torch.as_tensor(xyz), radii)[0]) < 0.5


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_bad_n_trials(pyrazine, n):
    with pytest.raises(ValueError, match="n_trials must be a positive integer"):
        generate_trials(pyrazine, "P-1", n)


def test_unknown_space_group(pyrazine):
    with pytest.raises(ValueError, match="unsupported space group"):
        generate_trials(pyrazine, "Fm-3m", 4)


@pytest.mark.parametrize("symbol", ["P2_1/c", "Pbca", "C2/c", "P1"])
def test_compiled_contact_screen_matches_torch_reference(pyrazine, symbol):
    """The compiled closest-contact screen gives the torch reference's ratios (to rounding) on
    compressed, as-drawn and expanded trial cells, with and without a cap."""
    from sim_backends.csp.trials import _min_contact_chunk, _min_contact_chunk_torch

    tr = generate_trials(pyrazine, symbol, 12, seed=5)
    radii = torch.tensor([VDW_RADIUS_A[s] for s in pyrazine.symbols], dtype=torch.float64)
    for scale in (0.7, 1.0, 1.4):
        params = tr.cell_params * np.r_[scale, scale, scale, 1.0, 1.0, 1.0]
        cells, xyz = coords_numpy(tr.space_group, params, tr.centre_frac, tr.quaternions, pyrazine.coords_A)
        for cap in (1.0, 5.0):
            fast = _min_contact_chunk(torch.as_tensor(cells), torch.as_tensor(xyz), radii, cap)
            ref = _min_contact_chunk_torch(torch.as_tensor(cells), torch.as_tensor(xyz), radii, cap)
            np.testing.assert_allclose(fast.numpy(), ref.numpy(), rtol=1e-12, atol=0)
            assert float(fast.max()) <= cap
