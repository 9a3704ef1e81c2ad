"""The learned density model (sim_backends/density_model.py) as an SCF guess: it learns,
round-trips through a file and a pickle, gives the default energy, and a bad model falls back."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

WATER = np.array([[0.0, 0.0, 0.117], [0.0, 0.757, -0.467], [0.0, -0.757, -0.467]])
KEY = (("O", "H", "H", "O", "H", "H"), "rhf", "6-31g")


def _turn(deg: float, axis: int) -> np.ndarray:
    t = np.radians(deg)
    c, s = np.cos(t), np.sin(t)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _dimer(d_A: float, tilt_deg: float, turn_a_deg: float = 0.0) -> np.ndarray:
    """Water dimer (6, 3), A: second molecule at distance ``d_A`` along x, tilted; the
    whole dimer turned about z by ``turn_a_deg`` (the model works in A's frame)."""
    b = (WATER - WATER[0]) @ _turn(tilt_deg, 1).T + np.array([d_A, 0.0, 0.3])
    return np.vstack([WATER, b]) @ _turn(turn_a_deg, 2).T


def _mol(xyz: np.ndarray, ghost: tuple[int, ...] = ()):
    from pyscf import gto

    sym = ["O", "H", "H"] * 2
    atom = [(("ghost-" if k in ghost else "") + sym[k], tuple(x)) for k, x in enumerate(xyz)]
    return gto.M(atom=atom, basis="6-31g", verbose=0)


def _rhf(mol, dm0=None):
    from pyscf import scf

    from sim_backends.scf_guess import solve

    mf = scf.RHF(mol)
    mf.conv_tol = 1e-10
    return solve(mf, dm0, guess="learned" if dm0 is not None else "default")


def _converged(xyz: np.ndarray) -> dict[str, np.ndarray]:
    out = {"a": _rhf(_mol(xyz[:3]))[0].make_rdm1(), "b": _rhf(_mol(xyz[3:]))[0].make_rdm1()}
    out["dimer"] = _rhf(_mol(xyz))[0].make_rdm1()
    out["cp_a"] = _rhf(_mol(xyz, ghost=(3, 4, 5)))[0].make_rdm1()
    out["cp_b"] = _rhf(_mol(xyz, ghost=(0, 1, 2)))[0].make_rdm1()
    return out


@pytest.fixture(scope="module")
def trained():
    from sim_backends.density_model import DensityCorrectionModel

    model = DensityCorrectionModel()
    for k, d in enumerate(np.linspace(2.7, 3.3, 7)):
        xyz = _dimer(d, 10.0 * (k % 3), turn_a_deg=25.0 * k)
        c = _converged(xyz)
        model.add(KEY, _mol(xyz), xyz, 3, c["a"], c["b"], {kind: c[kind] for kind in ("dimer", "cp_a", "cp_b")})
    return model


def test_model_predicts_the_converged_dimer_better_than_the_superposition(trained):
    from scipy.linalg import block_diag

    xyz = _dimer(2.95, 5.0, turn_a_deg=-40.0)  # between training geometries, another orientation
    c = _converged(xyz)
    pred, dist = trained.predict(KEY, _mol(xyz), xyz, 3, c["a"], c["b"])
    assert set(pred) == {"dimer", "cp_a", "cp_b"} and dist < 0.2
    err_sup = np.abs(block_diag(c["a"], c["b"]) - c["dimer"]).max()
    err_learned = np.abs(pred["dimer"] - c["dimer"]).max()
    assert err_learned < 0.3 * err_sup
    za = np.zeros_like(c["b"])
    assert np.abs(pred["cp_a"] - c["cp_a"]).max() < 0.3 * np.abs(block_diag(c["a"], za) - c["cp_a"]).max()
    # far from every training dimer there is no prediction
    far = _dimer(5.0, 0.0)
    assert trained.predict(KEY, _mol(far), far, 3, c["a"], c["b"]) is None
    assert trained.predict(("other",), _mol(xyz), xyz, 3, c["a"], c["b"]) is None


def test_learned_guess_gives_the_default_energy_in_fewer_fock_builds(trained):
    xyz = _dimer(3.05, 15.0, turn_a_deg=70.0)
    c = _converged(xyz)
    pred, _ = trained.predict(KEY, _mol(xyz), xyz, 3, c["a"], c["b"])
    mf_def, rec_def = _rhf(_mol(xyz))
    mf_l, rec_l = _rhf(_mol(xyz), pred["dimer"])
    assert "fallback" not in rec_l and rec_l["guess"] == "learned"
    assert rec_l["energy_hartree"] == pytest.approx(rec_def["energy_hartree"], abs=1e-6)
    assert rec_l["fock_builds"] < rec_def["fock_builds"]


def test_model_save_load_and_pickle_give_identical_predictions(trained, tmp_path):
    from sim_backends.density_model import DensityCorrectionModel

    xyz = _dimer(2.85, 20.0, turn_a_deg=10.0)
    mol = _mol(xyz)
    dm_a, dm_b = _rhf(_mol(xyz[:3]))[0].make_rdm1(), _rhf(_mol(xyz[3:]))[0].make_rdm1()
    before, d0 = trained.predict(KEY, mol, xyz, 3, dm_a, dm_b)
    path = trained.save(tmp_path / "model.npz")
    loaded = DensityCorrectionModel.load(path)
    shipped = pickle.loads(pickle.dumps(trained))
    for other in (loaded, shipped):
        after, d1 = other.predict(KEY, mol, xyz, 3, dm_a, dm_b)
        assert d1 == d0 and set(after) == set(before)
        for kind in before:
            assert np.array_equal(after[kind], before[kind])
    assert loaded.n_train() == trained.n_train() == 7
    assert path.stat().st_size < 2 * trained.nbytes()
    (tmp_path / "junk.npz").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a density model file"):
        DensityCorrectionModel.load(tmp_path / "junk.npz")


def test_a_bad_learned_guess_falls_back_to_the_default_and_says_so(trained):
    xyz = _dimer(3.0, 0.0)
    c = _converged(xyz)
    broken = pickle.loads(pickle.dumps(trained))
    for t in broken._types.values():  # a model gone wrong: corrections 100x too large
        t["Y"] = {k: 100.0 * y for k, y in t["Y"].items()}
    pred, _ = broken.predict(KEY, _mol(xyz), xyz, 3, c["a"], c["b"])
    _, rec_def = _rhf(_mol(xyz))
    _, rec = _rhf(_mol(xyz), pred["dimer"])
    assert rec["fallback"].startswith("guess rejected")
    assert rec["energy_hartree"] == pytest.approx(rec_def["energy_hartree"], abs=1e-6)


def test_backend_accepts_the_learned_guess():
    from sim_backends.registry import get_backend

    get_backend("dft-crystal").check_params({"scf_guess": "learned"})


def test_workers_share_training_dimers_through_the_campaign_file(tmp_path):
    """Two workers' models trained on different dimers, each first seeing the dimer in
    another orientation: after both sync with the file, the file and the second worker
    hold the union (nothing lost, nothing doubled)."""
    from sim_backends.density_model import DensityCorrectionModel, sync

    workers = [DensityCorrectionModel(), DensityCorrectionModel()]
    for k, d in enumerate((2.8, 3.0, 3.2, 2.9, 3.1)):
        xyz = _dimer(d, 7.0 * k, turn_a_deg=35.0 * k)
        c = _converged(xyz)
        workers[k % 2].add(KEY, _mol(xyz), xyz, 3, c["a"], c["b"], {"dimer": c["dimer"]})
    path = tmp_path / "density_model.npz"
    first = sync(workers[0], path)
    assert first == {"n_from_file": 0, "error": None, "n_train": 3}
    second = sync(workers[1], path)
    assert second["n_from_file"] == 3 and second["n_train"] == 5
    assert DensityCorrectionModel.load(path).n_train() == 5
    assert sync(workers[0], path)["n_train"] == 5  # the first worker now has the other's dimers
    assert sync(workers[0], path)["n_from_file"] == 0
    path.write_bytes(b"garbage")  # a damaged file is replaced, not fatal
    assert "not a density model file" in sync(workers[0], path)["error"]
    assert DensityCorrectionModel.load(path).n_train() == 5


@pytest.mark.slow  # two fragment-DFT evaluations (PBE/def2-SVP, formic acid)
def test_dft_crystal_learned_guess_trains_the_campaign_model_file(tmp_path):
    from ase.io import read

    from conftest import ROOT
    from sim_backends import density_model
    from sim_backends.base import EvalInput
    from sim_backends.density_model import DensityCorrectionModel
    from sim_backends.registry import get_backend
    from sim_backends.structures import cif_from_atoms

    density_model.MODEL = DensityCorrectionModel()  # a fresh worker
    landscape = ROOT / "data" / "landscapes" / "formic_acid_dft"
    frames = read(str(landscape / "formic_acid_dft_ff.extxyz"), index=":4")
    path = tmp_path / "density_model.npz"
    params = {"basis": "def2-svp", "grid_level": 0, "density_fit": False, "conv_tol": 1e-7, "cutoff_A": 3.0,
              "long_range": False, "scf_guess": "learned", "density_model": str(path)}
    backend = get_backend("dft-crystal")
    results = []
    for fr in (frames[2], frames[3]):  # m0004 has a dimer near one of m0003 (0.19 A)
        res = backend.evaluate(EvalInput("OC=O", structure_cif=cif_from_atoms(fr), params=params))
        assert res.status == "ok", res.reason
        results.append(res)
    first, second = (r.extra["density_model"] for r in results)
    assert first["n_train_before"] == 0 and first["n_train_after"] == results[0].extra["n_unique_dimers"]
    assert second["n_train_before"] == first["n_train_after"]
    assert DensityCorrectionModel.load(path).n_train() == second["n_train_after"] > first["n_train_after"]
    guesses = {x["guess"] for d in results[1].extra["dimers"] for x in d["scf"]}
    assert "learned" in guesses and results[1].extra["scf_fallbacks"] == []
