"""The molecule GP's discrepancy variance as a posterior mean ("posterior-mean", issue 14):
checked against an independent numpy evaluation of the same posterior on a fine grid, and
against the MAP where the data leave no doubt."""

from __future__ import annotations

import numpy as np
import pytest

from agent.surrogates import molecule_gp as mg
from agent.surrogates.fingerprints import morgan_fingerprints, tanimoto_matrix
from agent.surrogates.molecule_gp import MoleculeSurrogate, Observation

CORES = ["c1cc({a})c({b})cc1", "c1ccc2cc({a})c({b})cc2c1", "c1c({a})sc({b})c1"]
SUBS = ["", "C", "OC", "F", "Cl", "C#N", "N", "C(=O)C"]


@pytest.fixture(scope="module")
def pool():
    from rdkit import Chem

    smiles: list[str] = []
    for core in CORES:
        for a in SUBS:
            for b in SUBS:
                s = Chem.MolToSmiles(Chem.MolFromSmiles(core.format(a=a, b=b).replace("()", "")))
                if s not in smiles:
                    smiles.append(s)
    fps = morgan_fingerprints(smiles, n_bits=1024)
    rng = np.random.default_rng(7)
    w = rng.normal(size=fps.shape[1]) * (rng.random(fps.shape[1]) < 0.5)
    latent = fps @ w
    latent = (latent - latent.mean()) / latent.std()
    d = fps @ (rng.normal(size=fps.shape[1]) * (rng.random(fps.shape[1]) < 0.5))
    return fps, latent, (d - d.mean()) / d.std()


def _model(estimate: str, monkeypatch) -> MoleculeSurrogate:
    monkeypatch.setattr(mg, "DISCREPANCY_ESTIMATE", estimate)
    return MoleculeSurrogate(2, seed=0, kernel="tanimoto")


def _log_posterior_numpy(model: MoleculeSurrogate, fps: np.ndarray, log_delta: float) -> float:
    """The model's log marginal likelihood + log prior at its fitted hyperparameters with
    ``log_delta`` replaced, written out in numpy from the module doc (not the model's code)."""
    h = {k: np.array(v, dtype=float) for k, v in model.hyper.items()}
    s0, sd = np.exp(h["log_signal"][0]), np.exp(log_delta)
    rho = h["rho"][0]
    b = np.array([[s0, rho * s0], [rho * s0, rho ** 2 * s0 + sd]])
    means = np.array([h["mean_base"][0], rho * h["mean_base"][0] + h["mean_delta"][0]])
    noise = mg.NOISE_FLOOR + np.exp(h["log_noise"])
    rows = model.train_mol[model.obs_u]
    f = model.obs_f
    t = tanimoto_matrix(fps[rows], fps[rows])
    k = t * b[f][:, f] + np.diag(noise[f]) + 1e-6 * np.eye(len(f))
    r = model.obs_y - means[f]
    sign, logdet = np.linalg.slogdet(k)
    loglik = -0.5 * r @ np.linalg.solve(k, r) - 0.5 * logdet
    mu, sd_prior = model.delta_ratio_prior
    lp = -0.5 * ((log_delta - h["log_signal"][0] - mu) / sd_prior) ** 2  # the only term that moves
    return float(loglik + lp)


def test_posterior_mean_matches_an_independent_grid_and_exceeds_the_map(pool, monkeypatch):
    """Three expensive values that the cheap level explains almost exactly: the MAP puts the
    discrepancy variance low; its posterior mean (other hyperparameters fixed) is what a
    fine numpy grid of the same posterior gives, and is larger."""
    fps, latent, disc = pool
    cheap = [Observation(i, 0, float(10.0 * latent[i])) for i in range(60)]
    top = [Observation(i, 1, float(10.0 * latent[i] + 5.0 + 0.3 * disc[i])) for i in (3, 17, 41)]
    mp = _model("map", monkeypatch)
    mp.fit(fps, cheap + top)
    pm = _model("posterior-mean", monkeypatch)
    pm.fit(fps, cheap + top)
    assert pm.discrepancy_estimate == "posterior-mean"
    assert pm.hyper["log_delta"][0] > mp.hyper["log_delta"][0] + 0.5
    # the independent grid, at the posterior-mean model's other hyperparameters
    grid = np.linspace(-25.0, 10.0, 3501)
    lp = np.array([_log_posterior_numpy(pm, fps, g) for g in grid])
    w = np.exp(lp - lp.max())
    expected = np.log(np.sum(w * np.exp(grid)) / np.sum(w))
    assert pm.hyper["log_delta"][0] == pytest.approx(expected, abs=0.05)
    # and the predictions of molecules with a known cheap value are less confident
    rows = np.array([i for i in range(60) if i not in (3, 17, 41)])
    assert np.median(pm.predict(fps[rows], fidelity=1)[1]) > np.median(mp.predict(fps[rows], fidelity=1)[1])


def test_many_expensive_values_leave_the_map_in_place(pool, monkeypatch):
    """With an expensive value for every molecule the discrepancy is determined by the data:
    posterior mean and MAP agree."""
    fps, latent, disc = pool
    n = len(latent)
    obs = [Observation(i, 0, float(10.0 * latent[i])) for i in range(n)]
    obs += [Observation(i, 1, float(10.0 * latent[i] + 5.0 + 4.0 * disc[i])) for i in range(n)]
    mp = _model("map", monkeypatch)
    mp.fit(fps, obs)
    pm = _model("posterior-mean", monkeypatch)
    pm.fit(fps, obs)
    assert abs(pm.hyper["log_delta"][0] - mp.hyper["log_delta"][0]) < 0.15


def test_unknown_estimate_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(mg, "DISCREPANCY_ESTIMATE", "mode")
    with pytest.raises(ValueError, match="discrepancy_estimate must be one of"):
        MoleculeSurrogate(2)
