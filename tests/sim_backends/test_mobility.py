"""Marcus rates, network diffusion (neighbour sum, exact, KMC) and the landscape mobility."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import constants as sc

from sim_backends.base import SetupError
from sim_backends.mobility import (
    HoppingNetwork,
    einstein_diffusion,
    exact_diffusion,
    kmc_diffusion,
    landscape_mobility,
    marcus_rate,
    mobility_cm2Vs,
)


def test_marcus_rate_against_scipy_constants():
    j_ev, lam_ev, t = 0.010, 0.20, 300.0
    kt = sc.k * t / sc.e
    hbar = sc.hbar / sc.e
    want = 2 * math.pi / hbar * j_ev**2 / math.sqrt(4 * math.pi * lam_ev * kt) * math.exp(-lam_ev / (4 * kt))
    assert marcus_rate(10.0, lam_ev, t) == pytest.approx(want, rel=1e-6)
    assert marcus_rate(20.0, lam_ev, t) == pytest.approx(4 * want, rel=1e-9)  # k ~ J^2
    with pytest.raises(SetupError):
        marcus_rate(10.0, 0.0, t)


def chain(rates: list[float], a: float = 3.5) -> HoppingNetwork:
    """1D chain along x with len(rates) sites per cell; bond s joins site s to s+1 (periodic)."""
    z = len(rates)
    src, tgt, vec, k = [], [], [], []
    for s, rate in enumerate(rates):
        src += [s, (s + 1) % z]
        tgt += [(s + 1) % z, s]
        vec += [[a, 0, 0], [-a, 0, 0]]
        k += [rate, rate]
    return HoppingNetwork(z, np.array(src), np.array(tgt), np.array(vec), np.array(k))


def test_1d_chain_matches_analytic_einstein_result():
    k, a, t = 2.0e12, 3.5, 300.0
    net = chain([k], a)
    d_analytic = k * (a * 1e-8) ** 2  # <x^2> = 2 k a^2 t  ->  D = k a^2 (cm^2/s)
    mu_analytic = d_analytic / (sc.k * t / sc.e)
    for d in (einstein_diffusion(net), exact_diffusion(net)):
        assert d[0, 0] == pytest.approx(d_analytic, rel=1e-12)
        assert d[1, 1] == d[2, 2] == 0.0
        assert mobility_cm2Vs(d[0, 0], t) == pytest.approx(mu_analytic, rel=1e-6)
    kmc = kmc_diffusion(net, n_walkers=4000, n_hops=400, seed=1)
    assert kmc.diffusion[0, 0] == pytest.approx(d_analytic, abs=4 * 3 * kmc.stderr_iso)


def test_alternating_chain_exact_is_harmonic_mean_not_neighbour_sum():
    """Two sites per cell, bonds k1, k2: D = a^2 * 2 k1 k2 / (k1 + k2); the neighbour sum
    (arithmetic mean) is wrong here because each site has a net local drift."""
    k1, k2, a = 1.0e12, 9.0e12, 3.0
    net = chain([k1, k2], a)
    d_true = (a * 1e-8) ** 2 * 2 * k1 * k2 / (k1 + k2)
    assert exact_diffusion(net)[0, 0] == pytest.approx(d_true, rel=1e-9)
    assert einstein_diffusion(net)[0, 0] == pytest.approx((a * 1e-8) ** 2 * (k1 + k2) / 2, rel=1e-9)
    kmc = kmc_diffusion(net, n_walkers=4000, n_hops=600, seed=2)
    assert kmc.diffusion[0, 0] == pytest.approx(d_true, abs=4 * 3 * kmc.stderr_iso)
    assert abs(kmc.diffusion[0, 0] - einstein_diffusion(net)[0, 0]) > 10 * 3 * kmc.stderr_iso


def test_isotropic_cubic_network_all_three_agree():
    k, a = 5.0e11, 4.0
    vec = np.array([[a, 0, 0], [-a, 0, 0], [0, a, 0], [0, -a, 0], [0, 0, a], [0, 0, -a]], float)
    net = HoppingNetwork(1, np.zeros(6, int), np.zeros(6, int), vec, np.full(6, k))
    d = k * (a * 1e-8) ** 2
    np.testing.assert_allclose(exact_diffusion(net), d * np.eye(3), rtol=1e-12)
    np.testing.assert_allclose(einstein_diffusion(net), d * np.eye(3), rtol=1e-12)
    kmc = kmc_diffusion(net, n_walkers=3000, n_hops=300, seed=3)
    assert np.trace(kmc.diffusion) / 3 == pytest.approx(d, abs=4 * kmc.stderr_iso)


def test_network_without_hops_is_refused():
    with pytest.raises(SetupError, match="no hops"):
        HoppingNetwork(1, np.zeros(0, int), np.zeros(0, int), np.zeros((0, 3)), np.zeros(0))
    with pytest.raises(SetupError, match="non-zero rate"):
        HoppingNetwork(2, np.array([0, 0]), np.array([1, 1]), np.eye(3)[:2], np.array([1.0, 1.0]))


def test_landscape_mobility_weights_window_and_uncertainty():
    one = landscape_mobility([-100.0], [1.5])
    assert (one.mean, one.sd, one.n_in_window) == (1.5, 0.0, 1)
    degenerate = landscape_mobility([-100.0, -100.0], [1.0, 3.0])
    assert degenerate.mean == pytest.approx(2.0)
    far = landscape_mobility([-100.0, -90.0], [1.0, 50.0], window_kjmol=7.0)
    assert far.mean == pytest.approx(1.0) and far.weights[1] == 0.0 and far.n_in_window == 1
    kt = sc.R * 300.0 / 1000.0
    close = landscape_mobility([-100.0, -98.0], [1.0, 3.0])
    w2 = math.exp(-2.0 / kt)
    assert close.mean == pytest.approx((1.0 + 3.0 * w2) / (1.0 + w2), rel=1e-9)
    noisy = landscape_mobility([-100.0, -98.0], [1.0, 3.0], energy_sd_kjmol=3.0, n_samples=4000)
    assert noisy.sd > 0.2
    assert noisy.mean > close.mean  # the higher structure is the minimum in many samples
    assert 0.1 < noisy.p_best[1] < 0.5 and noisy.p_best.sum() == pytest.approx(1.0)
    for bad in (dict(energies_kjmol=[], mobilities=[]), dict(energies_kjmol=[1.0], mobilities=[1.0, 2.0]),
                dict(energies_kjmol=[1.0], mobilities=[float("nan")]),
                dict(energies_kjmol=[1.0], mobilities=[1.0], energy_sd_kjmol=-1.0)):
        with pytest.raises(SetupError):
            landscape_mobility(**bad)
