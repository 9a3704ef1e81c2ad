"""Structure descriptors (sim_backends/descriptors.py) and the Delta-GP
(agent/surrogates/structure_gp.py) on real target_I structures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sim_backends.landscape import Landscape
from agent.surrogates.structure_gp import DeltaGP, SurrogateError
from sim_backends import descriptors as desc

TARGET_I = Path(__file__).resolve().parents[3] / "data" / "reference" / "landscapes" / "target_I"
N_SUB = 40


@pytest.fixture(scope="module")
def land():
    return Landscape.read(TARGET_I, ["MACE", "PBE_MBD"])


@pytest.fixture(scope="module")
def features(land):
    atoms = land.atoms("MACE")[:N_SUB]
    return desc.structure_features(atoms, land.n_molecules[:N_SUB], land.energies("MACE")[:N_SUB])


def test_feature_shapes_and_normalisation(features):
    soap = desc.SoapDescriptor(species=("C", "H", "O"))
    assert features.shape == (N_SUB, soap.n_features + 3)
    np.testing.assert_allclose(np.linalg.norm(features[:, :-3], axis=1), 1.0)
    assert np.all((features[:, -3] > 1.0) & (features[:, -3] < 1.6))  # g/cm^3, organic crystal


def test_descriptor_is_cached(land, monkeypatch):
    soap = desc.SoapDescriptor(species=("C", "H", "O"), r_cut_a=4.0)
    atoms = land.atoms("MACE")[:3]
    first = soap(atoms)

    def no_soap(self):
        raise RuntimeError("not cached")

    monkeypatch.setattr(desc.SoapDescriptor, "_soap", no_soap)
    np.testing.assert_array_equal(soap(atoms), first)
    np.testing.assert_array_equal(soap([a.copy() for a in atoms]), first)
    moved = atoms[0].copy()
    moved.positions[0, 0] += 0.05
    with pytest.raises(RuntimeError, match="not cached"):
        soap([moved])


def test_descriptor_invariant_to_permutation_supercell_and_cell_choice(land):
    from ase.build import make_supercell

    soap = desc.SoapDescriptor(species=("C", "H", "O"))
    a = land.atoms("MACE")[5]
    perm = a[np.random.default_rng(0).permutation(len(a))]
    sup = a.repeat((2, 1, 1))
    skew = make_supercell(a, [[1, 1, 0], [0, 1, 0], [0, 0, 1]])  # same lattice, other basis
    shifted = a.copy()
    shifted.translate([0.7, -1.3, 2.1])
    shifted.wrap()
    ref, *others = soap([a, perm, sup, skew, shifted])
    for v in others:
        np.testing.assert_allclose(v, ref, atol=1e-10)
    other = soap([land.atoms("MACE")[6]])[0]
    assert np.abs(other - ref).max() > 1e-3


def test_descriptor_bad_input_errors(land):
    from ase import Atoms

    soap = desc.SoapDescriptor(species=("C", "H"))
    with pytest.raises(desc.DescriptorError, match="not in species"):
        soap([land.atoms("MACE")[0]])
    with pytest.raises(desc.DescriptorError, match="periodic"):
        desc.SoapDescriptor(species=("C",))([Atoms("C2", positions=[[0, 0, 0], [1.4, 0, 0]])])
    with pytest.raises(desc.DescriptorError):
        desc.SoapDescriptor(species=())


def _smooth_delta(X: np.ndarray) -> np.ndarray:
    """A synthetic correction that is a smooth function of the leading SOAP PCs."""
    soap = X[:, :-3]
    _, _, vt = np.linalg.svd(soap - soap.mean(0), full_matrices=False)
    z = (soap - soap.mean(0)) @ vt[:2].T
    z = z / z.std(0)
    return 3.0 * z[:, 0] + 2.0 * np.sin(1.5 * z[:, 1]) - 0.2 * X[:, -1]


@pytest.mark.slow
def test_gp_recovers_smooth_synthetic_correction(features):
    y = _smooth_delta(features)
    rng = np.random.default_rng(0)
    train = rng.choice(N_SUB, 25, replace=False)
    test = np.setdiff1d(np.arange(N_SUB), train)
    gp = DeltaGP(seed=0).fit(features[train], y[train], X_unlabelled=features)
    mean, std = gp.predict(features[test])
    mae = np.mean(np.abs(mean - y[test]))
    assert mae < 0.35 * np.mean(np.abs(y[test] - y[train].mean()))
    assert np.all(std > 0)
    m_tr, s_tr = gp.predict(features[train])
    assert np.mean(s_tr) < np.mean(std)  # less uncertain where it has data


def test_prior_without_data_and_prior_mean(features):
    gp = DeltaGP(seed=0, prior_mean=-2.0, prior_std_kjmol=3.0).fit(
        features[:0], np.zeros(0), X_unlabelled=features
    )
    mean, std = gp.predict(features)
    np.testing.assert_allclose(mean, -2.0)
    np.testing.assert_allclose(std, 3.0)
    draws = gp.sample(features, 4000, seed=1)
    assert draws.shape == (4000, N_SUB)
    assert abs(draws.std() - 3.0) < 0.1


def test_samples_match_predictive_moments_and_condition_shrinks(features):
    y = _smooth_delta(features)
    gp = DeltaGP(seed=0).fit(features[:10], y[:10], X_unlabelled=features)
    mean, std = gp.predict(features)
    draws = gp.sample(features, 4000, seed=3)
    np.testing.assert_allclose(draws.mean(0), mean, atol=5 * std.max() / np.sqrt(4000))
    np.testing.assert_allclose(draws.std(0), std, rtol=0.1)
    believer = gp.condition(features[20:22], mean[20:22])
    _, std2 = believer.predict(features)
    assert np.all(std2[20:22] < std[20:22])
    assert believer.n_train == 12 and gp.n_train == 10


def test_gp_bad_input(features):
    with pytest.raises(SurrogateError, match="2-D"):
        DeltaGP().fit(features[0], np.zeros(1))
    with pytest.raises(SurrogateError, match="deltas"):
        DeltaGP().fit(features[:3], np.zeros(2))
    with pytest.raises(SurrogateError, match="NaN"):
        DeltaGP().fit(features[:3], np.array([0.0, np.nan, 1.0]))
    with pytest.raises(SurrogateError, match="not fitted"):
        DeltaGP().predict(features)
    gp = DeltaGP().fit(features[:5], np.zeros(5))
    with pytest.raises(SurrogateError, match="features"):
        gp.predict(features[:, :10])


def test_loo_residuals_match_refits_and_calibration_scales_spread(land, features):
    """Closed-form LOO z equals held-out refits with fixed hyperparameters; the
    calibration factor multiplies the predictive std and the spread of the draws."""
    import torch

    y = land.delta_kjmol("PBE_MBD")[:N_SUB]
    train = np.arange(0, N_SUB, 3)
    gp = DeltaGP(seed=0).fit(features[train], y[train], X_unlabelled=features)
    raw = DeltaGP(seed=0, calibrate=False).fit(features[train], y[train], X_unlabelled=features)
    assert raw.calibration == 1.0
    z_ref, res_ref = [], []
    for k in range(len(train)):
        keep = np.delete(np.arange(len(train)), k)
        held = gp._build(gp._train_Z[keep], gp._train_r[keep], state=gp._model.state_dict())
        with torch.no_grad():
            post = held.posterior(torch.as_tensor(gp._train_Z[k : k + 1]), observation_noise=True)
        t = (gp._train_r[k] - gp._y_shift) / gp._y_scale
        z_ref.append((t - post.mean.item()) / post.variance.sqrt().item())
        res_ref.append((t - post.mean.item()) * gp._y_scale)  # kJ/mol, what the MLflow metric reports
    np.testing.assert_allclose(gp.loo_z, z_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gp.loo_residual_kjmol, res_ref, rtol=1e-5, atol=1e-6)
    assert gp.loo_mae_kjmol == pytest.approx(float(np.mean(np.abs(res_ref))), rel=1e-5)
    expected = np.sqrt((np.sum(gp.loo_z**2) + 4.0) / (len(train) + 4.0))
    assert gp.calibration == pytest.approx(float(np.clip(expected, 1.0, 4.0)))
    assert gp.calibration > 1.0  # these 14 target_I deltas include the 9 kJ/mol outlier
    m_gp, s_gp = gp.predict(features)
    m_raw, s_raw = raw.predict(features)
    np.testing.assert_allclose(m_gp, m_raw, atol=1e-8)
    np.testing.assert_allclose(s_gp, gp.calibration * s_raw, rtol=1e-8)
    d_gp, d_raw = gp.sample(features, 64, seed=2), raw.sample(features, 64, seed=2)
    np.testing.assert_allclose(d_gp - m_gp, gp.calibration * (d_raw - m_raw), atol=1e-6)
    with pytest.raises(SurrogateError, match="max_calibration"):
        DeltaGP(max_calibration=0.5)
