"""Force-field relaxation features (sim_backends/ff_relax.py) on a real X23 crystal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sim_backends.base import SetupError

ROOT = Path(__file__).resolve().parents[2]
X23 = ROOT / "data" / "reference" / "x23" / "x23_pbe_ts_crystals.extxyz"


@pytest.fixture(scope="module")
def formamide():
    """Formamide (X23, PBE+TS geometry, Z = 4, 24 atoms)."""
    from ase.io import read

    frames = {f.info["name"]: f for f in read(X23, ":")}
    return frames["formamide"]


@pytest.fixture(scope="module")
def crystal(formamide):
    from sim_backends.ff_relax import rigid_crystal

    return rigid_crystal(formamide.get_chemical_symbols(), formamide.positions, formamide.cell.array,
                         cache_key="x23:formamide")


def test_rigid_crystal_reproduces_the_cell(formamide, crystal):
    assert crystal.n_molecules == 4
    assert crystal.fit_rmsd_A < 0.05
    assert abs(float(np.sum(crystal.molecule.charges_e))) < 1e-6
    # rigid copies sit on the original atoms (compare as multisets of wrapped positions)
    coords = crystal.coords_A().reshape(-1, 3)
    inv = np.linalg.inv(formamide.cell.array)
    wrap = lambda xyz: np.sort(np.round(((xyz @ inv) % 1.0) * 20.0) % 20.0, axis=0)  # noqa: E731
    assert np.abs(wrap(coords) - wrap(formamide.positions)).max() <= 1.0


def test_molecules_cut_by_the_cell_boundary(formamide, crystal):
    """Shifting all atoms by half a cell and wrapping splits molecules; the energy must not change."""
    from sim_backends.csp.forcefield import LatticeEnergyModel
    from sim_backends.ff_relax import rigid_crystal

    moved = formamide.copy()
    moved.positions += 0.5 * moved.cell.array.sum(axis=0)
    moved.wrap()
    shifted = rigid_crystal(moved.get_chemical_symbols(), moved.positions, moved.cell.array,
                            molecule=crystal.molecule)
    model = LatticeEnergyModel(crystal.molecule)
    e = [float(model.energy_kjmol(c.cell_A[None], c.coords_A()[None])[0]) for c in (crystal, shifted)]
    assert e[0] == pytest.approx(e[1], abs=1e-6)
    assert -120.0 < e[0] < -30.0  # W99 lattice energy of formamide; X23 reference -79 kJ/mol


def test_relaxation_lowers_the_energy_and_features_are_finite(formamide, crystal):
    from sim_backends.ff_relax import FEATURE_NAMES, relaxation_features

    feats = relaxation_features([formamide], molecule=crystal.molecule, max_iter=60)
    assert feats.shape == (1, len(FEATURE_NAMES))
    assert np.all(np.isfinite(feats))
    e_start, e_relax, dv, shift, rot = feats[0]
    assert e_relax < -0.1  # a different model than PBE+TS: the FF moves the structure downhill
    assert abs(dv) < 30.0 and 0.0 <= shift < 2.0 and 0.0 <= rot < 45.0
    # relaxing the relaxed structure again gains (almost) nothing
    from ase import Atoms

    from sim_backends.csp.forcefield import LatticeEnergyModel
    from sim_backends.ff_relax import RigidCrystal, relax_rigid

    model = LatticeEnergyModel(crystal.molecule)
    first = relax_rigid(model, crystal, max_iter=200)
    assert first["e_min_kjmol"] == pytest.approx(e_start + e_relax, abs=2.0)  # more iterations: lower or equal
    assert first["e_min_kjmol"] <= e_start + e_relax + 1e-6
    again = RigidCrystal(crystal.molecule, first["cell_A"], first["rotations"], first["centres_A"], 0.0)
    second = relax_rigid(model, again, max_iter=200)
    assert second["e_start_kjmol"] == pytest.approx(first["e_min_kjmol"], abs=1e-6)
    assert second["e_min_kjmol"] - second["e_start_kjmol"] > -0.5
    # the relaxed crystal as plain atoms gives the same start energy through the public path
    relaxed = Atoms(list(crystal.molecule.symbols) * crystal.n_molecules,
                    positions=again.coords_A().reshape(-1, 3), cell=again.cell_A, pbc=True)
    f2 = relaxation_features([relaxed], molecule=crystal.molecule, max_iter=5)
    assert f2[0, 0] == pytest.approx(first["e_min_kjmol"], abs=1e-4)


def test_bad_input_is_a_one_line_setup_error(formamide):
    from ase import Atoms

    from sim_backends.ff_relax import relaxation_features, rigid_crystal

    bad = formamide.copy()
    symbols = bad.get_chemical_symbols()
    symbols[symbols.index("O")] = "Si"
    bad.set_chemical_symbols(symbols)
    with pytest.raises(SetupError) as err:
        relaxation_features([bad])
    assert "Si" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SetupError, match="no structures"):
        relaxation_features([])
    with pytest.raises(SetupError, match="need positions"):
        rigid_crystal(["C", "O"], np.zeros((3, 3)), np.eye(3) * 5.0)
    mixed = Atoms("COH4" + "H2O", positions=[[0, 0, 0], [1.43, 0, 0], [-0.5, 0.9, 0], [-0.5, -0.9, 0],
                                               [-0.4, 0, 1.0], [1.8, 0.9, 0], [5, 5, 5], [5.96, 5, 5],
                                               [4.76, 5.93, 5]], cell=np.eye(3) * 10.0, pbc=True)
    with pytest.raises(SetupError, match="composition"):
        relaxation_features([mixed])


def test_extra_columns_in_structure_features(formamide):
    from sim_backends.descriptors import DescriptorError, structure_features

    base = structure_features([formamide], [4], [0.0])
    extra = structure_features([formamide], [4], [0.0], extra_columns=np.array([[1.5, -2.0]]))
    assert extra.shape == (1, base.shape[1] + 2)
    np.testing.assert_allclose(extra[:, : base.shape[1]], base)
    np.testing.assert_allclose(extra[0, -2:], [1.5, -2.0])
    with pytest.raises(DescriptorError):
        structure_features([formamide], [4], [0.0], extra_columns=np.array([[np.nan]]))
    with pytest.raises(DescriptorError):
        structure_features([formamide], [4], [0.0], extra_columns=np.zeros((2, 1)))


def test_feature_cache_round_trip(tmp_path, formamide, crystal):
    from sim_backends.ff_relax import cached_relaxation_features

    path = tmp_path / "feats.csv"
    first = cached_relaxation_features([formamide], ["fa"], path, write=True, molecule=crystal.molecule, max_iter=5)
    assert path.read_text().startswith("#")
    path.write_text(path.read_text().replace(f"{first[0, 2]:.6g}", "123.5"))
    again = cached_relaxation_features([formamide], ["fa"], path, molecule=crystal.molecule, max_iter=5)
    assert again[0, 2] == 123.5  # read from the cache, not recomputed
    np.testing.assert_allclose(np.delete(again, 2, axis=1), np.delete(first, 2, axis=1), rtol=1e-5)


def test_extra_column_options_give_the_extra_column_a_linear_kernel():
    """A delta that is linear in an extra column is learnt from a few points with the
    options of extra_column_options (and the column layout is accepted)."""
    from agent.surrogates.structure_gp import DeltaGP, SurrogateError, extra_column_options

    rng = np.random.default_rng(3)
    n = 40
    soap = rng.normal(size=(n, 6))
    soap /= np.linalg.norm(soap, axis=1, keepdims=True)
    extra = rng.uniform(-5.0, 15.0, size=n)  # like ff_dv_percent on target_I
    X = np.column_stack([soap, rng.uniform(1.2, 1.4, n), rng.uniform(90, 110, n), rng.uniform(0, 20, n), extra])
    delta = 0.5 * extra + 0.1 * rng.normal(size=n)
    train, test = np.arange(8), np.arange(8, n)
    options = extra_column_options(1)
    assert options == {"n_passthrough": 4, "linear_dims": (2, 3)}
    gp = DeltaGP(seed=0, **options).fit(X[train], delta[train], X_unlabelled=X)
    mean, _ = gp.predict(X[test])
    naive = np.abs(delta[test] - delta[train].mean()).mean()
    assert np.abs(mean - delta[test]).mean() < 0.25 * naive
    with pytest.raises(SurrogateError):
        extra_column_options(-1)


def _chiral_racemate():
    """A chiral molecule (fluorochloromethanol, MMFF conformer) and its inversion image in a
    P-1 cell: the second molecule is the other enantiomer."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles("OC(F)Cl"))
    AllChem.EmbedMolecule(mol, randomSeed=7)
    AllChem.MMFFOptimizeMolecule(mol)
    symbols = [a.GetSymbol() for a in mol.GetAtoms()]
    xyz = mol.GetConformer().GetPositions()
    cell = np.diag([7.0, 7.5, 8.0])
    centre = np.array([1.5, 1.8, 2.0])
    first = xyz - xyz.mean(axis=0) + centre
    second = -first  # inversion through the origin, wrapped below
    return symbols, xyz, cell, np.vstack([first, second % np.diag(cell)])


def test_rigid_crystal_fits_the_mirror_image_of_a_chiral_conformer():
    """A chiral conformer on an inversion-related site is fitted by a mirror-image copy (det -1,
    the exact atoms), and relaxation keeps each copy's handedness."""
    from sim_backends.csp.forcefield import LatticeEnergyModel
    from sim_backends.csp.rigid import RigidMolecule, fit_rigid_pose
    from sim_backends.ff_relax import relax_rigid, rigid_crystal

    symbols, xyz, cell, positions = _chiral_racemate()
    q = {"O": -0.6, "C": 0.3, "F": -0.2, "Cl": -0.1, "H": 0.0}
    charges = np.array([q[s] for s in symbols])
    charges[symbols.index("H")] = 0.4  # O-H
    charges -= charges.mean()
    body = RigidMolecule.from_atoms(symbols, xyz, charges_e=charges, charge_method="test")
    # proper rotations alone cannot place the other enantiomer
    _, rot, _, rmsd = fit_rigid_pose(body, symbols, positions[len(symbols):] - 0.0)
    assert rmsd > 0.2 and np.linalg.det(rot) > 0
    crystal = rigid_crystal(symbols * 2, positions, cell, molecule=body)
    assert crystal.fit_rmsd_A < 1e-4
    assert np.linalg.det(crystal.rotations).round(6).tolist() == [1.0, -1.0]
    inv = np.linalg.inv(cell)
    wrap = lambda p: np.sort(np.round(((p @ inv) % 1.0) * 200.0) % 200.0, axis=0)  # noqa: E731
    assert np.abs(wrap(crystal.coords_A().reshape(-1, 3)) - wrap(positions)).max() <= 1.0
    out = relax_rigid(LatticeEnergyModel(body), crystal, max_iter=30)
    assert np.isfinite(out["e_min_kjmol"]) and out["e_min_kjmol"] <= out["e_start_kjmol"]
    assert np.linalg.det(out["rotations"]).round(6).tolist() == [1.0, -1.0]


def test_fit_rigid_pose_keeps_proper_rotations_for_a_planar_molecule(crystal):
    """A planar molecule fits both ways equally well: the proper rotation is kept."""
    from sim_backends.csp.rigid import RigidMolecule, fit_rigid_pose

    flat = np.asarray(crystal.molecule.coords_A).copy()
    flat[:, 2] = 0.0  # principal frame: the largest moment (the plane normal) is z
    body = RigidMolecule.from_atoms(list(crystal.molecule.symbols), flat)
    rng = np.random.default_rng(5)
    rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    rot *= np.sign(np.linalg.det(rot))
    target = np.asarray(body.coords_A) @ rot.T + 3.0
    for reverse in (False, True):
        order = np.arange(len(target))[::-1] if reverse else np.arange(len(target))  # shuffled atoms
        _, found, _, rmsd = fit_rigid_pose(body, [body.symbols[i] for i in order], target[order],
                                           allow_mirror=True)
        assert rmsd < 1e-6 and np.linalg.det(found) > 0
