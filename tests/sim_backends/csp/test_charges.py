"""ESP-fitted (RESP-style) and xTB charges, RigidMolecule construction and its errors."""

from __future__ import annotations

import numpy as np
import pytest

from sim_backends.base import SetupError
from sim_backends.csp import charges as charges_mod
from sim_backends.csp.charges import esp_grid, fit_restrained_charges
from sim_backends.csp.rigid import ATOMIC_MASSES_AMU, RigidMolecule, principal_frame, symmetry_classes


def test_fit_recovers_known_point_charges():
    """The fit itself, without quantum chemistry: an ESP made by known charges is reproduced."""
    symbols = ["C", "O", "N", "H", "H", "H"]
    xyz = np.array([[0.0, 0.42, 0], [1.2, 0.5, 0], [-0.7, -0.8, 0], [-1.7, -0.8, 0], [-0.2, -1.7, 0], [-0.6, 1.3, 0]])
    q_true = np.array([0.55, -0.55, -0.8, 0.38, 0.38, 0.04])
    points = esp_grid(symbols, xyz)
    bohr = charges_mod.BOHR_A
    esp = (q_true / (np.linalg.norm(points[:, None] - xyz[None], axis=-1) / bohr)).sum(axis=1)
    heavy = np.array([s != "H" for s in symbols])
    q_free, rrms = fit_restrained_charges(xyz, points, esp, heavy, restraint_a=0.0)
    assert q_free == pytest.approx(q_true, abs=1e-6)
    assert rrms < 1e-8
    q_resp, rrms_resp = fit_restrained_charges(xyz, points, esp, heavy)
    assert q_resp.sum() == pytest.approx(0.0, abs=1e-10)
    assert np.abs(q_resp[heavy]).sum() < np.abs(q_true[heavy]).sum()  # restraint pulls heavy atoms to 0
    assert 0.0 < rrms_resp < 0.05
    # equivalence classes force equal charges
    q_sym, _ = fit_restrained_charges(xyz, points, esp, heavy, classes=[0, 1, 2, 3, 3, 4])
    assert q_sym[3] == q_sym[4]


def test_grid_points_lie_outside_scaled_vdw_spheres():
    symbols = ["O", "H", "H"]
    xyz = np.array([[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    pts = esp_grid(symbols, xyz)
    radii = np.array([1.52, 1.2, 1.2])
    dist = np.linalg.norm(pts[:, None] - xyz[None], axis=-1)
    assert (dist >= 1.4 * radii - 1e-9).all()
    assert len(pts) > 200


def test_formamide_resp_charges(tmp_path):
    mol = RigidMolecule.from_smiles("NC=O", cache_dir=tmp_path)
    q = dict(zip(mol.ff_types, mol.charges_e))
    assert mol.charge_method == "resp-pyscf HF/6-31G*"
    assert mol.charges_e.sum() == pytest.approx(0.0, abs=1e-8)
    assert q["O_W1"] < -0.3 and q["N_W4"] < -0.3 and q["C_W3"] > 0.2 and q["H_W4"] > 0.2
    h_on_n = [c for c, ty in zip(mol.charges_e, mol.ff_types) if ty == "H_W4"]
    assert h_on_n[0] == h_on_n[1]  # topologically equivalent
    assert mol.esp_rrms < 0.15  # point charges reproduce the HF ESP
    # cached: a second call must not run pyscf
    cached = list(tmp_path.glob("resp-*.json"))
    assert len(cached) == 1

    def boom(*args, **kwargs):
        raise AssertionError("pyscf called despite cache")

    orig = charges_mod.pyscf_esp
    charges_mod.pyscf_esp = boom
    try:
        again = RigidMolecule.from_smiles("C(=O)N", cache_dir=tmp_path)
    finally:
        charges_mod.pyscf_esp = orig
    assert np.array_equal(again.charges_e, mol.charges_e)


def test_urea_symmetry_equivalent_atoms_share_charges(tmp_path):
    mol = RigidMolecule.from_smiles("NC(N)=O", cache_dir=tmp_path)
    by_type: dict[str, set[float]] = {}
    for ty, c in zip(mol.ff_types, mol.charges_e):
        by_type.setdefault(ty, set()).add(round(float(c), 12))
    assert len(by_type["N_W4"]) == 1 and len(by_type["H_W4"]) == 1
    assert mol.charges_e.sum() == pytest.approx(0.0, abs=1e-8)


def test_xtb_charges(tmp_path):
    mol = RigidMolecule.from_smiles("NC=O", charges="xtb", cache_dir=tmp_path)
    q = dict(zip(mol.ff_types, mol.charges_e))
    assert mol.charge_method == "xtb-gfn2-mulliken"
    assert mol.charges_e.sum() == pytest.approx(0.0, abs=1e-8)
    assert q["O_W1"] < -0.2 and q["H_W4"] > 0.1


def test_principal_frame_and_molecule_fields():
    mol = RigidMolecule.from_smiles("c1ccc2ccccc2c1", charges="none")
    assert mol.formula == "C10H8" and mol.n_atoms == 18
    mass = np.array([ATOMIC_MASSES_AMU[s] for s in mol.symbols])
    x = mol.coords_A
    assert (mass[:, None] * x).sum(axis=0) == pytest.approx(np.zeros(3), abs=1e-8)
    inertia = np.einsum("a,ab,ac->bc", mass, x, x)
    inertia = np.trace(inertia) * np.eye(3) - inertia
    assert inertia - np.diag(np.diag(inertia)) == pytest.approx(np.zeros((3, 3)), abs=1e-6)
    assert np.all(np.diff(np.diag(inertia)) >= -1e-8)
    # the frame does not depend on the input orientation
    rot = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    rot *= np.sign(np.linalg.det(rot))
    again = principal_frame(mol.symbols, x @ rot.T + 3.0)
    assert again == pytest.approx(x, abs=1e-6)
    assert mol.ff_types.count("C_W3") == 10 and mol.ff_types.count("H_W1") == 8
    classes = symmetry_classes(mol.symbols, x)
    assert len(set(classes)) == 5  # naphthalene: 3 C classes + 2 H classes


@pytest.mark.parametrize(
    "smiles, message",
    [
        ("C1CC", "invalid SMILES"),
        ("", "invalid SMILES"),
        ("CC.O", "fragments"),
        ("C[NH3+]", "net charge"),
        ("[CH3]", "unpaired electron"),
        ("C[Si](C)(C)C", "unsupported element"),
        ("CCCCCC", "rotatable"),
        ("c1ccccc1-c1ccccc1", "rotatable"),
    ],
)
def test_from_smiles_rejects_bad_molecules(smiles, message):
    with pytest.raises(SetupError, match=message):
        RigidMolecule.from_smiles(smiles, charges="none")


def test_from_atoms_checks_input():
    xyz = np.array([[0.0, 0, 0], [1.2, 0, 0]])
    with pytest.raises(SetupError, match="shape"):
        RigidMolecule.from_atoms(["C", "O", "H"], xyz)
    with pytest.raises(SetupError, match="connected"):
        RigidMolecule.from_atoms(["C", "O"], np.array([[0.0, 0, 0], [5.0, 0, 0]]))
    with pytest.raises(SetupError, match="sum"):
        RigidMolecule.from_atoms(["C", "O"], xyz, charges_e=[0.3, 0.1])
    mol = RigidMolecule.from_atoms(["C", "O"], xyz, charges_e=[0.3, -0.3])
    assert mol.charge_method == "given" and mol.mass_amu == pytest.approx(28.01, abs=0.01)


@pytest.mark.parametrize("smiles", ["OC(=O)C(=O)O", "O=CC=O", "OC(=O)c1ccccc1"])
def test_conjugated_links_count_as_rigid(smiles):
    """Oxalic acid, glyoxal, benzoic acid: conjugated single bonds, planar MMFF conformer."""
    mol = RigidMolecule.from_smiles(smiles, charges="none")
    heavy = mol.coords_A[[s != "H" for s in mol.symbols]]
    # principal frame: the plane of a planar molecule is spanned by x, y (smallest moments)
    assert np.abs(heavy[:, 2]).max() < 0.05


def test_rotatable_count_rule():
    from rdkit import Chem

    from sim_backends.csp.rigid import count_rotatable_bonds

    counts = {s: count_rotatable_bonds(Chem.MolFromSmiles(s)) for s in
              ["OC(=O)C(=O)O", "c1ccccc1-c1ccccc1", "CCCC", "CC(=O)NC", "OCCO"]}
    assert counts == {"OC(=O)C(=O)O": 0, "c1ccccc1-c1ccccc1": 1, "CCCC": 1, "CC(=O)NC": 0,
                      "OCCO": 1}


def test_resp_fit_says_what_it_computes_its_size_estimate_and_the_fast_option(tmp_path, caplog, monkeypatch):
    """newuser34: a RESP fit of a large molecule ran for minutes without a word. A fit that
    is not cached announces itself (level, atoms, basis functions, ESP points, a CPU
    estimate, the cache, --charges xtb), reports its SCF cycles when slow, and says when it
    is done; a cached one says nothing."""
    import logging

    monkeypatch.setattr(charges_mod, "PROGRESS_EVERY_S", 0.0)  # every SCF cycle
    symbols = ["O", "H", "H"]
    xyz = np.array([[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    with caplog.at_level(logging.INFO, logger="sim_backends.csp.charges"):
        charges_mod.compute_charges(symbols, xyz, "resp", [0, 1, 1], tmp_path, cache_key="O")
    lines = [r.getMessage() for r in caplog.records]
    stage = lines[0]
    for needle in ("RESP fit", "HF/6-31G*", "H2O (O)", "3 atoms", "18 basis functions", "ESP points",
                   "estimated ~", "CPU"):
        assert needle in stage, stage
    assert f"cached in {tmp_path}" in lines[1] and "--charges xtb" in lines[1]
    assert any("SCF cycle 1 " in ln for ln in lines) and lines[-1].startswith("charges: RESP fit done in")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sim_backends.csp.charges"):
        charges_mod.compute_charges(symbols, xyz, "resp", [0, 1, 1], tmp_path, cache_key="O")
    assert caplog.records == []


def test_resp_cost_estimate_follows_the_measured_sizes():
    """The estimate reproduces the CPU seconds it was made from (module constants) and
    switches to direct SCF where pyscf does (nao^4/1e6 MB above 0.95 max_memory)."""
    est = charges_mod.resp_cost_estimate
    assert est(96)[0] == pytest.approx(1.8, rel=0.1) and est(156)[0] == pytest.approx(10.3, rel=0.1)
    assert est(216) == (pytest.approx(32.0), True)
    cpu, incore = est(276)
    assert not incore and cpu == pytest.approx(261, rel=0.1)
    assert est(396)[0] > 600  # hexacene, C26H16: many minutes (newuser34 killed it after 8)
    assert est(276, max_memory_mb=8000)[1]
