"""Tests of the molecule-level multi-fidelity Tanimoto GP and its fingerprints."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from agent.surrogates.fingerprints import (
    FingerprintIndex,
    morgan_fingerprints,
    tanimoto_matrix,
)
from agent.surrogates.molecule_gp import MoleculeSurrogate, Observation

CORES = ["c1cc({a})c({b})cc1", "c1ccc2cc({a})c({b})cc2c1", "c1c({a})sc({b})c1", "n1cc({a})c({b})cc1"]
SUBS = ["", "C", "CC", "OC", "F", "Cl", "C#N", "N", "C(=O)C", "C(F)(F)F"]


def small_pool() -> list[str]:
    """Up to 400 real, valid SMILES from four aromatic cores and ten substituents."""
    from rdkit import Chem

    out: list[str] = []
    for core in CORES:
        for a in SUBS:
            for b in SUBS:
                m = Chem.MolFromSmiles(core.format(a=a, b=b).replace("()", ""))
                s = Chem.MolToSmiles(m)
                if s not in out:
                    out.append(s)
    return out


@pytest.fixture(scope="module")
def pool():
    smiles = small_pool()
    fps = morgan_fingerprints(smiles, n_bits=1024)
    rng = np.random.default_rng(3)
    w = rng.normal(size=fps.shape[1]) * (rng.random(fps.shape[1]) < 0.5)
    latent = fps @ w
    return smiles, fps, (latent - latent.mean()) / latent.std()


def brute_force_tanimoto(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros((len(a), len(b)))
    for i, x in enumerate(a.astype(bool)):
        for j, y in enumerate(b.astype(bool)):
            union = np.sum(x | y)
            out[i, j] = np.sum(x & y) / union if union else 0.0
    return out


def test_morgan_fingerprints_shape_and_invalid_row():
    fps = morgan_fingerprints(["c1ccccc1O", "not a smiles", "CCO"], n_bits=512, radius=2)
    assert fps.shape == (3, 512) and fps.dtype == np.uint8
    assert fps[1].sum() == 0 and fps[0].sum() > 5 and set(np.unique(fps)) <= {0, 1}
    with pytest.raises(ValueError, match="n_bits"):
        morgan_fingerprints(["C"], n_bits=0)


def test_tanimoto_similarities_match_numpy(pool):
    _, fps, _ = pool
    a = np.vstack([fps[:7], np.zeros((1, fps.shape[1]), dtype=np.uint8)])
    b = fps[5:16]
    expected = brute_force_tanimoto(a, b)
    np.testing.assert_allclose(tanimoto_matrix(a, b), expected, rtol=1e-12)
    np.testing.assert_allclose(np.diag(tanimoto_matrix(b, b)), np.ones(len(b)))
    np.testing.assert_allclose(FingerprintIndex(a).similarity_to(b), expected, rtol=1e-6)
    # a valid kernel: the Gram matrix is positive semi-definite
    assert np.linalg.eigvalsh(tanimoto_matrix(fps[:60], fps[:60])).min() > -1e-9


def _exact_icm_posterior(model: MoleculeSurrogate, fps: np.ndarray, rows: np.ndarray, t: int):
    """Textbook GP posterior (dense numpy) from the fitted hyperparameters."""
    b, noise = model.coregionalisation(), model.noise()
    x_train = model.train_fps[model.obs_u]
    k_train = tanimoto_matrix(x_train, x_train) * b[np.ix_(model.obs_f, model.obs_f)]
    k_train += np.diag(noise[model.obs_f])
    k_cross = tanimoto_matrix(fps[rows], x_train) * b[t, model.obs_f]
    resid = model.obs_y - model.level_means()[model.obs_f]
    mean = model.level_means()[t] + k_cross @ np.linalg.solve(k_train, resid)
    var = b[t, t] - np.einsum("ij,ji->i", k_cross, np.linalg.solve(k_train, k_cross.T))
    return model.y_loc + model.y_scale * mean, model.y_scale * np.sqrt(var)


def test_gp_interpolates_and_is_uncertain_far_away(pool):
    smiles, fps, y = pool
    benzene_rows = [i for i, s in enumerate(smiles) if "s" not in s and "n" not in s and len(s) < 14]
    train = benzene_rows[:25]
    obs = [Observation(i, 0, 10.0 + 3.0 * float(y[i])) for i in train]
    model = MoleculeSurrogate(1, seed=0)
    model.fit(fps, obs)
    mean, std = model.predict(fps[train], 0)
    np.testing.assert_allclose(mean, [o.value for o in obs], atol=0.35 * 3.0)
    far = [i for i, s in enumerate(smiles) if "s" in s][:20]
    _, std_far = model.predict(fps[far], 0)
    assert np.median(std_far) > 2.0 * np.median(std)
    # the cached, lazy implementation equals the dense textbook formulas
    rows = np.array(train[:5] + far[:5])
    ref_mean, ref_std = _exact_icm_posterior(model, fps, rows, 0)
    got_mean, got_std = model.predict(fps[rows], 0)
    np.testing.assert_allclose(got_mean, ref_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_std, ref_std, rtol=1e-4, atol=1e-5)


def test_multifidelity_learns_offset_and_scale(pool):
    _, fps, y = pool
    rng = np.random.default_rng(0)
    rows = rng.permutation(len(fps))
    cheap_rows, top_rows = rows[:160], rows[:30]
    cheap = 5.0 * y  # xTB-like
    top = 1.3 * 5.0 * y + 20.0  # DFT-like: scaled and shifted
    obs = [Observation(int(i), 0, float(cheap[i])) for i in cheap_rows]
    obs += [Observation(int(i), 1, float(top[i])) for i in top_rows]
    model = MoleculeSurrogate(2, seed=1)
    model.fit(fps, obs)
    b = model.coregionalisation()
    assert b[0, 1] / np.sqrt(b[0, 0] * b[1, 1]) > 0.9
    assert abs(np.diff(model.fidelity_means())[0] - 20.0) < 3.0
    only_cheap = rows[30:160]
    mean, _ = model.predict(fps[only_cheap], 1)
    mae_mf = np.mean(np.abs(mean - top[only_cheap]))
    # the same expensive data without the cheap level
    single = MoleculeSurrogate(1, seed=1)
    single.fit(fps, [Observation(o.mol_index, 0, o.value) for o in obs if o.fidelity == 1])
    mean_single, _ = single.predict(fps[only_cheap], 0)
    mae_single = np.mean(np.abs(mean_single - top[only_cheap]))
    assert mae_mf < 0.3 * mae_single
    assert mae_mf < 0.15 * np.std(top)
    ref_mean, ref_std = _exact_icm_posterior(model, fps, only_cheap[:8], 1)
    got_mean, got_std = model.predict(fps[only_cheap[:8]], 1)
    np.testing.assert_allclose(got_mean, ref_mean, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(got_std, ref_std, rtol=1e-3, atol=1e-4)


def test_warm_refit_and_leave_out_calibration(pool):
    _, fps, y = pool
    obs = [Observation(i, 0, float(y[i])) for i in range(0, 120, 2)]
    obs += [Observation(i, 1, float(2 * y[i] + 1)) for i in range(0, 60, 4)]
    model = MoleculeSurrogate(2, seed=0)
    model.fit(fps, obs[:40])
    model.fit(fps, obs)
    assert model.n_fits == 2
    cal = model.calibration(seed=0)
    assert set(cal) == {"0", "top", "top_unseen"}
    assert cal["top"]["n"] == 15 and cal["0"]["n"] == 60
    for entry in cal.values():
        assert 0.0 <= entry["coverage_68"] <= entry["coverage_95"] <= 1.0
        assert entry["mae"] <= entry["rmse"]
    # knowing the cheap value of a molecule helps predict its top value
    assert cal["top"]["mae"] < cal["top_unseen"]["mae"]
    # the closed form equals refitting without each held-out top value (same hyperparameters)
    errors, zs = [], []
    for j, o in enumerate(obs):
        if o.fidelity != 1:
            continue
        clone = MoleculeSurrogate.load_state_dict(model.state_dict())
        clone.fit(fps, obs[:j] + obs[j + 1:], refit_hyperparameters=False)
        mean, std = clone.predict(fps[[o.mol_index]], 1)
        errors.append(o.value - mean[0])
        zs.append(errors[-1] / np.hypot(std[0], np.sqrt(model.noise()[1]) * model.y_scale))
    np.testing.assert_allclose(cal["top"]["mae"], np.mean(np.abs(errors)), rtol=1e-6)
    np.testing.assert_allclose(cal["top"]["z_std"], np.std(zs), rtol=1e-5)


def test_state_dict_round_trip(pool):
    _, fps, y = pool
    obs = [Observation(i, i % 2, float(y[i] + (i % 2))) for i in range(0, 90, 3)]
    model = MoleculeSurrogate(2, seed=4)
    model.fit(fps, obs)
    blob = pickle.dumps(model.state_dict())
    loaded = MoleculeSurrogate.load_state_dict(pickle.loads(blob))
    archived = MoleculeSurrogate.from_bytes(model.to_bytes())  # the store's form: npz, no pickle
    for f in range(2):
        m1, s1 = model.predict(fps, f)
        for other in (loaded, archived):
            m2, s2 = other.predict(fps, f)
            np.testing.assert_array_equal(m1, m2)
            np.testing.assert_array_equal(s1, s2)
    assert archived.counts_at_hyper_fit.tolist() == model.counts_at_hyper_fit.tolist()
    assert archived.pool_digest == model.pool_digest
    with pytest.raises(ValueError, match="state dict"):
        MoleculeSurrogate.load_state_dict({"n_fidelities": 2})
    with pytest.raises(ValueError, match="archive"):
        MoleculeSurrogate.from_bytes(b"not an archive")


def test_fit_state_keeps_the_fit_without_its_data(pool):
    _, fps, y = pool
    obs = [Observation(i, i % 2, float(y[i] + (i % 2))) for i in range(0, 120, 3)]
    model = MoleculeSurrogate(2, seed=4)
    model.fit(fps, obs[:30])
    model.fit(fps, obs[:33])  # an extension: the factor is extended, hyperparameters kept
    state = model.fit_state()
    assert len(state) < len(model.to_bytes()) / 2  # no fingerprints, no observations
    restored = MoleculeSurrogate.from_fit_state(state, fps, obs)  # the store's list, longer
    for f in range(2):
        m1, s1 = model.predict(fps, f)
        m2, s2 = restored.predict(fps, f)
        np.testing.assert_allclose(m2, m1, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(s2, s1, rtol=1e-9, atol=1e-9)
    assert (restored.n_fits, restored.n_hyper_fits, restored.n_at_hyper_fit) == (
        model.n_fits, model.n_hyper_fits, model.n_at_hyper_fit)
    # going on from the restored fit is going on from the saved one
    model.fit(fps, obs)
    restored.fit(fps, obs)
    assert restored.n_hyper_fits == model.n_hyper_fits
    for k, v in model.hyper.items():
        np.testing.assert_allclose(restored.hyper[k], v, rtol=1e-6, atol=1e-8)
    # other data than the fit's: refused, never silently used
    changed = list(obs)
    changed[5] = Observation(changed[5].mol_index, changed[5].fidelity, changed[5].value + 1.0)
    with pytest.raises(ValueError, match="begin with the 33"):
        MoleculeSurrogate.from_fit_state(state, fps, changed)
    with pytest.raises(ValueError, match="begin with the 33"):
        MoleculeSurrogate.from_fit_state(state, fps, obs[:20])
    with pytest.raises(ValueError, match="fit state"):
        MoleculeSurrogate.from_fit_state(b"not an archive", fps, obs)


def test_bad_input_gives_one_line_errors(pool):
    _, fps, _ = pool
    model = MoleculeSurrogate(2)
    bad = [
        [Observation(len(fps), 0, 1.0)],
        [Observation(0, 2, 1.0)],
        [Observation(0, 0, float("nan"))],
    ]
    for obs in bad:
        with pytest.raises(ValueError) as err:
            model.fit(fps, obs)
        assert "\n" not in str(err.value)
    model.fit(fps, [Observation(0, 0, 1.0), Observation(1, 0, 2.0)])
    with pytest.raises(ValueError, match="bits"):
        model.predict(np.zeros((2, 64), dtype=np.uint8), 0)
    with pytest.raises(ValueError, match="fidelity"):
        model.predict(fps, 5)
    with pytest.raises(ValueError):
        MoleculeSurrogate(0)


def test_light_import():
    import subprocess
    import sys

    code = ("import sys, agent.surrogates.molecule_gp, agent.surrogates.fingerprints, "
            "agent.acquisition\nprint([m for m in ('torch','gpytorch','botorch','rdkit','scipy') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_incremental_update_equals_full_factorisation(pool):
    _, fps, y = pool
    obs = [Observation(i, i % 2, float(y[i] + 2 * (i % 2))) for i in range(0, 200, 2)]
    model = MoleculeSurrogate(2, seed=2, hyper_refit_growth=0.5)
    model.fit(fps, obs[:60])
    model.fit(fps, obs[:70])  # 10 new points: Cholesky extended, hyperparameters kept
    model.fit(fps, obs[:70] + [Observation(0, 0, 5.0)] + obs[70:80])  # repeats are fine
    assert model.n_fits == 3 and model.n_hyper_fits == 1
    full = MoleculeSurrogate.load_state_dict(model.state_dict())  # one full factorisation
    for f in range(2):
        m1, s1 = model.predict(fps, f)
        m2, s2 = full.predict(fps, f)
        np.testing.assert_allclose(m1, m2, rtol=1e-7, atol=1e-8)
        np.testing.assert_allclose(s1, s2, rtol=1e-6, atol=1e-8)
    model.fit(fps, obs)  # 90 % growth: hyperparameters re-optimised
    assert model.n_hyper_fits == 2
    # the first value at a level is new information enough to re-optimise
    model.fit(fps, obs + [Observation(3, 1, 7.0)])
    assert model.n_hyper_fits == 3
    model.fit(fps, obs[:50])  # not an extension: rebuilt from scratch
    assert len(model.obs_f) == 50


def test_calibration_of_data_drawn_from_the_model_is_nominal(pool):
    """Values drawn from the model's own prior (fixed hyperparameters): the leave-out
    z-scores must have spread ~1 and the intervals their nominal coverage."""
    _, fps, _ = pool
    model = MoleculeSurrogate(2, seed=0)
    model.hyper["log_noise"] = np.log(np.array([0.05, 0.02]))
    rng = np.random.default_rng(11)
    rows = rng.permutation(len(fps))
    cheap_rows, top_rows = rows[:150], rows[100:190]  # 50 molecules at both levels
    mol = np.concatenate([cheap_rows, top_rows])
    lvl = np.concatenate([np.zeros(150, int), np.ones(90, int)])
    k = tanimoto_matrix(fps[mol], fps[mol]) * model.coregionalisation()[np.ix_(lvl, lvl)]
    k += np.diag(model.noise()[lvl])
    chol = np.linalg.cholesky(k + 1e-9 * np.eye(len(mol)))
    z_std, cov95 = [], []
    for _ in range(8):
        y = chol @ rng.standard_normal(len(mol))
        obs = [Observation(int(i), int(f), float(v)) for i, f, v in zip(mol, lvl, y, strict=True)]
        m = MoleculeSurrogate.load_state_dict(model.state_dict())
        m.y_loc, m.y_scale = 0.0, 1.0
        m.fit(fps, obs, refit_hyperparameters=False)
        cal = m.calibration(seed=0)
        z_std += [cal[k]["z_std"] for k in ("0", "top", "top_unseen")]
        cov95 += [cal[k]["coverage_95"] for k in ("0", "top", "top_unseen")]
    assert 0.85 < np.mean(z_std) < 1.15
    assert 0.9 < np.mean(cov95) <= 1.0


def test_noise_prior_is_the_instances(pool):
    """``noise_prior`` sets the prior of the fitted noise variances: a tight log-normal
    holds them at its median; an unknown kind is an error at the fit."""
    _, fps, y = pool
    obs = [Observation(i, 0, float(5.0 * y[i])) for i in range(60)]
    obs += [Observation(i, 1, float(6.0 * y[i] + 20.0)) for i in range(12)]
    model = MoleculeSurrogate(2, seed=0)
    model.noise_prior = ("lognormal", -7.0, 0.01)
    model.fit(fps, obs)
    np.testing.assert_allclose(model.noise(), 1e-4 + np.exp(-7.0), rtol=0.05)
    assert MoleculeSurrogate(2).noise_prior[0] == "gamma"
    bad = MoleculeSurrogate(2, seed=0)
    bad.noise_prior = ("cauchy", 0.0, 1.0)
    with pytest.raises(ValueError, match="unknown noise prior"):
        bad.fit(fps, obs)
