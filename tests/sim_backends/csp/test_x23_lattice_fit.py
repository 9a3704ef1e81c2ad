"""Helpers of benchmarks/x23_lattice_fit.py: the split fit groups and the lone-pair charge fraction."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

import x23_lattice_fit as fit  # noqa: E402

from sim_backends.csp.charges import lone_pair_sites  # noqa: E402
from sim_backends.csp.forcefield import LatticeEnergyModel  # noqa: E402
from tests.sim_backends.csp.test_forcefield import t, x23_crystal  # noqa: E402


def groups_of(name):
    mol, _, _ = x23_crystal(name)
    return sorted(set(fit.fine_groups(mol.symbols, np.asarray(mol.coords_A), mol.ff_types)))


def test_split_groups_amine_n_sp_c_and_hydroxyl_o():
    assert groups_of("hexamine") == ["C", "HCN", "NA"]  # tertiary amine N; H on C bonded to N
    assert groups_of("triazine") == ["C", "HCN", "N"]  # ring N: same W99 type N_W2, other group
    assert groups_of("benzene") == ["C", "H"]
    assert groups_of("co2") == ["C2", "O"]
    assert groups_of("oxalic_acid_alpha") == ["C", "HO", "O", "O2"]
    hexamine, _, _ = x23_crystal("hexamine")
    typed = fit.fit_typed(hexamine).ff_types
    assert typed.count(fit.AMINE_N_TYPE) == 4 and typed.count(fit.H_CN_TYPE) == 12


def test_split_models_leave_their_groups_at_w99():
    model = "cX+aX+aHON-NA+f"
    theta = np.linspace(0.8, 1.3, len(fit.MODELS[model]))
    a, c = fit.scales_of(model, theta)
    assert "NA" not in a and "NA" not in c and a["C"] == a["C2"] and c["O"] == c["O2"] and a["H"] == a["HCN"]
    assert fit.f_of(model, theta) == pytest.approx(theta[-1])
    assert fit.f_of("cX+aX+aHON", theta[:10]) == 1.0
    labels = ["elec", "elec_r", "elec_d", "rep:NA:H", "disp:N:N", "rep:O2:HO"]
    w = fit.multipliers(labels, model, theta)
    f = theta[-1]
    assert w[:3] == pytest.approx([f, 1 - f, f * f - f])
    assert w[3] == pytest.approx(np.sqrt(a["H"]))  # amine N keeps W99's A
    assert w[4] == pytest.approx(c["N"]) and w[5] == pytest.approx(np.sqrt(a["O2"] * a["HO"]))
    w1 = fit.multipliers(labels, "cX+aX+aHON", theta[:10])
    assert w1[:3] == pytest.approx([1.0, 0.0, 0.0])  # without f: the RESP-lp electrostatics


def test_lone_pair_fraction_electrostatics_is_quadratic_in_f():
    """E(q_r + f (q_lp - q_r)) = (1 - f) E(q_r) + f E(q_lp) + (f^2 - f) E(q_lp - q_r)."""
    mol, cell, coords = x23_crystal("oxalic_acid_alpha")
    n_lp = len(lone_pair_sites(mol.symbols, np.asarray(mol.coords_A))[0])
    assert n_lp > 0
    rng = np.random.default_rng(3)
    q_r = np.asarray(mol.charges_e, float)
    q_lp = np.concatenate([q_r + rng.normal(0, 0.2, len(q_r)), rng.normal(0, 0.3, n_lp)])
    q_lp -= q_lp.mean()
    args = (t(cell)[None], t(coords)[None])

    def elec(q):
        model = LatticeEnergyModel(dataclasses.replace(mol, charges_e=q), params="w99")
        z = np.zeros((model.n_sites, model.n_sites))
        return float(model.term_model(z, z, True).energy_kjmol(*args)[0])

    e_r, e_lp, e_d = elec(fit.mixed_charges(q_r, q_lp, 0.0)), elec(q_lp), elec(q_lp - fit.mixed_charges(q_r, q_lp, 0.0))
    for f in (0.0, 0.4, 1.0):
        direct = elec(fit.mixed_charges(q_r, q_lp, f))
        assert direct == pytest.approx((1 - f) * e_r + f * e_lp + (f * f - f) * e_d, abs=1e-8)


def test_a_non_positive_volume_weight_is_a_usage_error(monkeypatch, capsys):
    """--sigma-v <= 0 stops before any fit with a one-line error (exit 2)."""
    monkeypatch.setattr(sys, "argv", ["x23_lattice_fit.py", "--sigma-v", "-1"])
    with pytest.raises(SystemExit) as exc:
        fit.main()
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "x23_lattice_fit.py: error: --sigma-v must be a positive number of percent"
