"""W99 exp-6 + Ewald lattice energy model: derivatives, Ewald against pymatgen, invariances."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sim_backends.csp.forcefield import (  # noqa: E402
    COULOMB_KJMOL_A,
    W99_PARAMS,
    LatticeEnergyModel,
    assign_w99_types,
)
from sim_backends.csp.rigid import RigidMolecule, fit_rigid_pose, split_molecules  # noqa: E402

X23 = Path(__file__).resolve().parents[3] / "data" / "reference" / "x23" / "x23_pbe_ts_crystals.extxyz"


def x23_crystal(name: str, charges: str = "made-up") -> tuple[RigidMolecule, np.ndarray, np.ndarray]:
    """(molecule, cell (3, 3), coords (Z, n, 3)) of an X23 crystal, atoms in molecule order.

    ``charges="made-up"`` gives fixed neutral charges by element (enough for numerics tests).
    """
    from ase.io import read

    frame = next(f for f in read(X23, ":") if f.info["name"] == name)
    symbols = frame.get_chemical_symbols()
    mols = split_molecules(symbols, frame.positions, frame.cell.array)
    idx0, xyz0 = mols[0]
    sym0 = [symbols[i] for i in idx0]
    q = None
    if charges == "made-up":
        by_el = {"H": 0.15, "C": 0.1, "N": -0.35, "O": -0.4}
        q = np.array([by_el[s] for s in sym0])
        q -= q.mean()
    mol = RigidMolecule.from_atoms(sym0, xyz0, charges_e=q, charge_method="test")
    coords = []
    for idx, xyz in mols:
        perm, _, _, rmsd = fit_rigid_pose(mol, [symbols[i] for i in idx], xyz)
        assert rmsd < 0.05
        coords.append(xyz[perm])
    return mol, frame.cell.array.copy(), np.array(coords)


def t(x):
    return torch.tensor(np.asarray(x), dtype=torch.float64)


def test_w99_types_of_x23_molecules():
    mol, _, _ = x23_crystal("oxalic_acid_alpha")
    assert sorted(mol.ff_types) == sorted(["C_W3"] * 2 + ["O_W1"] * 2 + ["O_W2"] * 2 + ["H_W3"] * 2)
    cyt, _, _ = x23_crystal("cytosine")
    n_types = sorted(ty for ty in cyt.ff_types if ty.startswith("N"))
    assert n_types == ["N_W2", "N_W3", "N_W4"]  # ring N, ring NH, amino NH2
    assert sorted(ty for ty in cyt.ff_types if ty.startswith("H")) == ["H_W1", "H_W1", "H_W4", "H_W4", "H_W4"]
    # methanol: alcohol H; acetonitrile: sp C and nitrile N
    meoh = assign_w99_types(["C", "O", "H", "H", "H", "H"], np.array(
        [[0, 0, 0], [1.42, 0, 0], [1.75, 0.9, 0], [-0.36, 1.03, 0], [-0.36, -0.5, 0.9], [-0.36, -0.5, -0.9]]))
    assert meoh == ("C_W4", "O_W2", "H_W2", "H_W1", "H_W1", "H_W1")
    mecn = assign_w99_types(["N", "C", "C"], np.array([[0, 0, 0], [1.16, 0, 0], [2.62, 0, 0]]))
    assert mecn == ("N_W1", "C_W2", "C_W2")


def pair_energy(model, r: torch.Tensor, row: list[float]) -> torch.Tensor:
    """exp-6 energies (M,) of pairs at distances r (M,) with parameters row = [A, -B, C, k_e q q]."""
    fn = __import__("sim_backends.csp.forcefield", fromlist=["x"])._pair_terms_function()
    m = len(r)
    flat = torch.cat([torch.zeros(1, 3, dtype=torch.float64), torch.stack([r, 0 * r, 0 * r], dim=1)])
    zeros = torch.zeros(m, dtype=torch.long)
    return fn.apply(
        flat, None, torch.zeros(1, 3, dtype=torch.float64), zeros, torch.arange(1, m + 1), zeros,
        t([row]).repeat(m, 1), model, False,
    )[0]


def test_pair_potential_has_no_short_range_collapse():
    """Every type pair rises monotonically down to r -> 0 (damped dispersion)."""
    mol = RigidMolecule.from_atoms(["C", "O"], np.array([[0.0, 0, 0], [1.2, 0, 0]]))
    model = LatticeEnergyModel(mol)
    names = list(W99_PARAMS)
    r = torch.linspace(0.05, 2.2, 400, dtype=torch.float64)
    for a in names:
        for b in names:
            pa, pb = W99_PARAMS[a], W99_PARAMS[b]
            row = [np.sqrt(pa[0] * pb[0]), -0.5 * (pa[1] + pb[1]), np.sqrt(pa[2] * pb[2]), 0.0]
            energy = pair_energy(model, r, row)
            assert torch.isfinite(energy).all()
            assert (energy.diff() < 0).all(), (a, b)
            # beyond 2.0 A the damping is invisible: plain exp-6
            plain = row[0] * np.exp(row[1] * 2.1) - row[2] / 2.1**6
            e21 = pair_energy(model, t([2.1]), row)[0]
            assert abs(float(e21) - plain) < 1e-6 * max(1.0, abs(plain))


@pytest.mark.parametrize("name, cutoff", [("formamide", 12.0), ("naphthalene", 8.0)])
def test_autograd_matches_finite_differences(name, cutoff):
    """12 A: inner (exp-6 + Coulomb, 9 A) and outer (dispersion) shells; 8 A: inner only."""
    mol, cell, coords = x23_crystal(name)
    model = LatticeEnergyModel(mol, cutoff_A=cutoff)
    rng = np.random.default_rng(1)
    cell = cell + rng.normal(scale=0.05, size=(3, 3))
    coords = coords + rng.normal(scale=0.03, size=coords.shape)
    energy, g_cell, g_coords = model.energy_and_grad(t(cell)[None], t(coords)[None])

    def e(c, x):
        return float(model.energy_kjmol(t(c)[None], t(x)[None])[0])

    h = 1e-5
    for _ in range(8):
        idx = tuple(rng.integers(0, s) for s in coords.shape)
        xp, xm = coords.copy(), coords.copy()
        xp[idx] += h
        xm[idx] -= h
        fd = (e(cell, xp) - e(cell, xm)) / (2 * h)
        assert fd == pytest.approx(float(g_coords[0][idx]), rel=1e-5, abs=1e-5)
    for i in range(3):
        for j in range(3):
            cp, cm = cell.copy(), cell.copy()
            cp[i, j] += h
            cm[i, j] -= h
            fd = (e(cp, coords) - e(cm, coords)) / (2 * h)
            assert fd == pytest.approx(float(g_cell[0, i, j]), rel=1e-5, abs=1e-5)


def test_ewald_matches_pymatgen():
    """Our electrostatics (intramolecular pairs excluded) + bare intramolecular Coulomb
    equals pymatgen's full Ewald sum of the same point charges."""
    from pymatgen.analysis.ewald import EwaldSummation
    from pymatgen.core import Lattice, Structure

    mol, cell, coords = x23_crystal("formamide")
    n_mol = len(coords)
    model = LatticeEnergyModel(mol, cutoff_A=10.0, ewald_accuracy=1e-8)
    elec = float(model.terms_kjmol(t(cell)[None], t(coords)[None])["elec_kjmol"][0]) * n_mol
    q = np.asarray(mol.charges_e)
    iu, ju = np.triu_indices(len(q), k=1)
    intra = sum(
        COULOMB_KJMOL_A * (q[iu] * q[ju] / np.linalg.norm(x[iu] - x[ju], axis=1)).sum() for x in coords
    )
    structure = Structure(
        Lattice(cell), list(mol.symbols) * n_mol, coords.reshape(-1, 3), coords_are_cartesian=True,
        site_properties={"charge": np.tile(q, n_mol).tolist()},
    )
    reference = EwaldSummation(structure, acc_factor=14.0).total_energy * 96.485332  # eV -> kJ/mol
    assert abs(elec + intra) > 10.0  # a real, non-trivial number
    assert elec + intra == pytest.approx(reference, abs=2e-3)


def test_invariances_and_supercell():
    mol, cell, coords = x23_crystal("oxalic_acid_alpha")
    model = LatticeEnergyModel(mol)
    e0 = float(model.energy_kjmol(t(cell)[None], t(coords)[None])[0])
    assert -200.0 < e0 < -20.0
    # rigid translation of every atom, and wrapping one molecule by a lattice vector
    shifted = coords + np.array([0.37, -1.2, 2.9])
    shifted[1] += cell[0] - 2 * cell[2]
    # global rotation of cell and atoms
    angle = 0.7
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    rot = rot @ np.array([[1, 0, 0], [0, np.cos(0.3), -np.sin(0.3)], [0, np.sin(0.3), np.cos(0.3)]])
    # an equivalent, more skewed cell of the same lattice: a' = a + b, c' = c - a
    skew = np.array([[1, 1, 0], [0, 1, 0], [-1, 0, 1]]) @ cell
    # 2x1x1 supercell: twice the molecules, same energy per molecule
    super_cell = cell * np.array([[2.0], [1.0], [1.0]])
    super_coords = np.concatenate([coords, coords + cell[0]])
    batch_e = model.energy_kjmol(
        t(np.stack([cell, cell @ rot.T, skew])), t(np.stack([shifted, coords @ rot.T, coords]))
    )
    assert batch_e.numpy() == pytest.approx([e0] * 3, abs=1e-6)
    e_super = float(model.energy_kjmol(t(super_cell)[None], t(super_coords)[None])[0])
    assert e_super == pytest.approx(e0, abs=1e-5)


def test_batch_of_different_cells_equals_single_evaluations():
    mol, cell, coords = x23_crystal("formamide")
    model = LatticeEnergyModel(mol)
    rng = np.random.default_rng(5)
    cells = np.stack([cell * s for s in (1.0, 1.08, 1.2)]) + rng.normal(scale=0.1, size=(3, 3, 3))
    xs = np.stack([coords + rng.normal(scale=0.05, size=coords.shape) for _ in range(3)])
    xs[1] *= 1.08
    xs[2] *= 1.2
    batch = model.energy_kjmol(t(cells), t(xs)).numpy()
    single = [float(model.energy_kjmol(t(cells[k])[None], t(xs[k])[None])[0]) for k in range(3)]
    assert batch == pytest.approx(single, abs=1e-9)
    assert len(set(np.round(batch, 3))) == 3
    # splitting the pair list into many segments changes nothing, gradients included
    e_ref, gc_ref, gx_ref = model.energy_and_grad(t(cells), t(xs))
    model.pair_chunk = 2000  # ~55 molecule pairs per segment
    e_seg, gc_seg, gx_seg = model.energy_and_grad(t(cells), t(xs))
    assert torch.allclose(e_seg, e_ref, atol=1e-9)
    assert torch.allclose(gc_seg, gc_ref, atol=1e-8) and torch.allclose(gx_seg, gx_ref, atol=1e-8)


def test_expanded_crystal_tends_to_zero_and_compressed_is_repulsive():
    mol, cell, coords = x23_crystal("naphthalene", charges="none")
    model = LatticeEnergyModel(mol)
    centres = coords.mean(axis=1, keepdims=True)
    energies = []
    for scale in (0.75, 1.0, 3.0):
        energies.append(float(model.energy_kjmol(t(cell * scale)[None], t(coords - centres + centres * scale)[None])[0]))
    assert energies[0] > 100.0
    assert -90.0 < energies[1] < -40.0
    assert abs(energies[2]) < 0.5


def test_bad_input_raises_one_line_errors():
    mol, cell, coords = x23_crystal("formamide")
    model = LatticeEnergyModel(mol)
    with pytest.raises(ValueError, match="shape"):
        model.energy_kjmol(t(cell), t(coords)[None])
    with pytest.raises(ValueError, match="shape"):
        model.energy_kjmol(t(cell)[None], t(coords[:, :3])[None])
    with pytest.raises(ValueError, match="degenerate"):
        model.energy_kjmol(t(np.zeros((1, 3, 3))), t(coords)[None])
    bad = coords.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        model.energy_kjmol(t(cell)[None], t(bad)[None])


def test_cutoff_convergence_ewald_and_dispersion_tail():
    """Ewald electrostatics do not depend on the real-space cutoff; the tail correction makes
    the exp-6 sum nearly cutoff-independent (and is needed for that)."""
    mol, cell, coords = x23_crystal("formamide")
    terms = {}
    for cutoff, tail in ((8.0, True), (13.0, True), (8.0, False), (13.0, False)):
        model = LatticeEnergyModel(mol, cutoff_A=cutoff, dispersion_tail=tail)
        terms[cutoff, tail] = {k: float(v[0]) for k, v in model.terms_kjmol(t(cell)[None], t(coords)[None]).items()}
    assert terms[8.0, True]["elec_kjmol"] == pytest.approx(terms[13.0, True]["elec_kjmol"], abs=1e-3)
    with_tail = abs(terms[8.0, True]["repdisp_kjmol"] - terms[13.0, True]["repdisp_kjmol"])
    without = abs(terms[8.0, False]["repdisp_kjmol"] - terms[13.0, False]["repdisp_kjmol"])
    assert with_tail < 0.3 and without > 2 * with_tail


def test_model_rejects_charged_molecules():
    mol, _, _ = x23_crystal("formamide")
    charged = mol.with_charges(np.asarray(mol.charges_e) + 0.01, "test")
    with pytest.raises(ValueError, match="neutral"):
        LatticeEnergyModel(charged)


@pytest.mark.parametrize("name", ["benzene", "hexamine", "trioxane"])
def test_fit_rigid_pose_recovers_rotated_shuffled_copies(name):
    """Symmetric and spherical tops included: atom matching + Kabsch find the exact pose."""
    mol, _, _ = x23_crystal(name, charges="none")
    rng = np.random.default_rng(3)
    for _ in range(3):
        rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
        rot *= np.sign(np.linalg.det(rot))
        shift = rng.normal(size=3)
        perm = rng.permutation(mol.n_atoms)
        target = (np.asarray(mol.coords_A) @ rot.T + shift)[perm]
        found_perm, found_rot, found_shift, rmsd = fit_rigid_pose(mol, [mol.symbols[i] for i in perm], target)
        assert rmsd < 1e-6
        assert np.asarray(mol.coords_A) @ found_rot.T + found_shift == pytest.approx(target[found_perm], abs=1e-6)
