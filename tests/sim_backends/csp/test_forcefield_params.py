"""Selectable repulsion-dispersion parameter sets and the term decomposition used to refit them."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sim_backends.csp import forcefield as ff  # noqa: E402
from sim_backends.csp.forcefield import (  # noqa: E402
    PARAMETER_SETS,
    TYPE_GROUPS,
    W99_PARAMS,
    LatticeEnergyModel,
    parameter_table,
)
from tests.sim_backends.csp.test_forcefield import t, x23_crystal  # noqa: E402


def test_every_type_has_a_group_and_every_set_scales_known_groups():
    assert set(TYPE_GROUPS) == set(W99_PARAMS)
    for name, (a_scale, c_scale) in PARAMETER_SETS.items():
        assert set(a_scale) | set(c_scale) <= set(TYPE_GROUPS.values()), name
        table = parameter_table(name)
        for ty, (a, b, c) in table.items():
            a0, b0, c0 = W99_PARAMS[ty]
            assert b == b0  # exponents stay W99's
            assert a == pytest.approx(a0 * a_scale.get(TYPE_GROUPS[ty], 1.0))
            assert c == pytest.approx(c0 * c_scale.get(TYPE_GROUPS[ty], 1.0))
    assert parameter_table("w99") == W99_PARAMS


def test_unknown_parameter_set_is_a_clear_error():
    mol, _, _ = x23_crystal("benzene")
    with pytest.raises(ValueError, match="unknown force-field parameter set 'nope'"):
        LatticeEnergyModel(mol, params="nope")


def test_default_set_is_read_at_construction(monkeypatch):
    mol, cell, coords = x23_crystal("oxalic_acid_alpha")
    monkeypatch.setitem(PARAMETER_SETS, "_double_c", ({}, {"C": 2.0, "O": 2.0}))
    e_w99 = float(LatticeEnergyModel(mol, params="w99").energy_kjmol(t(cell)[None], t(coords)[None])[0])
    monkeypatch.setattr(ff, "DEFAULT_PARAMETER_SET", "_double_c")
    model = LatticeEnergyModel(mol)
    assert model.params == "_double_c"
    e_new = float(model.energy_kjmol(t(cell)[None], t(coords)[None])[0])
    assert e_new < e_w99 - 5.0  # twice the C-C, C-O and O-O dispersion binds more


@pytest.mark.parametrize("name", ["oxalic_acid_alpha", "cytosine"])
def test_term_models_recombine_to_any_scaled_set(name, monkeypatch):
    """E(set) = elec + sum over group pairs of sqrt(a_g a_h) rep_gh + sqrt(c_g c_h) disp_gh."""
    mol, cell, coords = x23_crystal(name)
    a_scale = {"C": 1.3, "H": 0.8, "HO": 0.5, "HN": 0.7, "N": 1.1, "O": 1.6}
    c_scale = {"C": 1.2, "H": 0.9, "N": 1.4, "O": 0.7}
    monkeypatch.setitem(PARAMETER_SETS, "_test", (a_scale, c_scale))
    args = (t(cell)[None], t(coords)[None])
    base = LatticeEnergyModel(mol, params="w99")
    groups = [TYPE_GROUPS[ty] for ty in mol.ff_types]
    zero = np.zeros((base.n_sites, base.n_sites))
    total = float(base.term_model(zero, zero, True).energy_kjmol(*args)[0])
    for gi in sorted(set(groups)):
        for gj in sorted(set(groups)):
            if gj < gi:
                continue
            mask = np.array([[{a, b} == {gi, gj} for b in groups] for a in groups], float)
            rep = float(base.term_model(mask, zero, False).energy_kjmol(*args)[0])
            disp = float(base.term_model(zero, mask, False).energy_kjmol(*args)[0])
            total += np.sqrt(a_scale.get(gi, 1.0) * a_scale.get(gj, 1.0)) * rep
            total += np.sqrt(c_scale.get(gi, 1.0) * c_scale.get(gj, 1.0)) * disp
    direct = float(LatticeEnergyModel(mol, params="_test").energy_kjmol(*args)[0])
    assert total == pytest.approx(direct, abs=1e-8)
    ones = np.ones((base.n_sites, base.n_sites))
    assert float(base.term_model(ones, ones, True).energy_kjmol(*args)[0]) == pytest.approx(
        float(base.energy_kjmol(*args)[0]), abs=1e-10)


@pytest.mark.parametrize("params", sorted(PARAMETER_SETS))
def test_gradients_of_every_set_match_finite_differences(params):
    mol, cell, coords = x23_crystal("cytosine")
    model = LatticeEnergyModel(mol, params=params)
    rng = np.random.default_rng(3)
    cell = cell + rng.normal(scale=0.05, size=(3, 3))
    coords = coords + rng.normal(scale=0.03, size=coords.shape)
    _, g_cell, g_coords = model.energy_and_grad(t(cell)[None], t(coords)[None])
    e_np, g_cell_np, g_coords_np = model.energy_and_grad_numpy(cell[None], coords[None])

    def e(c, x):
        return float(model.energy_kjmol(t(c)[None], t(x)[None])[0])

    assert e_np[0] == pytest.approx(e(cell, coords), abs=1e-8)
    np.testing.assert_allclose(g_coords_np, g_coords.numpy(), atol=1e-7)
    np.testing.assert_allclose(g_cell_np, g_cell.numpy(), atol=1e-7)
    h = 1e-5
    for _ in range(6):
        idx = tuple(rng.integers(0, s) for s in coords.shape)
        xp, xm = coords.copy(), coords.copy()
        xp[idx] += h
        xm[idx] -= h
        assert (e(cell, xp) - e(cell, xm)) / (2 * h) == pytest.approx(float(g_coords[0][idx]), rel=1e-5, abs=1e-5)
    for i, j in ((0, 0), (1, 2), (2, 1)):
        cp, cm = cell.copy(), cell.copy()
        cp[i, j] += h
        cm[i, j] -= h
        assert (e(cp, coords) - e(cm, coords)) / (2 * h) == pytest.approx(float(g_cell[0][i, j]), rel=1e-5, abs=1e-5)


def test_register_parameter_set_adds_a_usable_set_and_refuses_bad_ones(monkeypatch):
    monkeypatch.setattr(ff, "PARAMETER_SETS", dict(PARAMETER_SETS))  # registrations stay in this test
    ff.register_parameter_set("_half_a_h", {"H": 0.5}, {"C": 1.1})
    assert ff.PARAMETER_SETS["_half_a_h"] == ({"H": 0.5}, {"C": 1.1})
    table = parameter_table("_half_a_h")
    assert table["H_W1"][0] == pytest.approx(0.5 * W99_PARAMS["H_W1"][0])
    assert table["C_W3"][2] == pytest.approx(1.1 * W99_PARAMS["C_W3"][2])
    assert table["O_W1"] == W99_PARAMS["O_W1"]
    mol, _, _ = x23_crystal("benzene")
    assert LatticeEnergyModel(mol, params="_half_a_h").params == "_half_a_h"
    with pytest.raises(ValueError, match="already registered"):
        ff.register_parameter_set("_half_a_h", {}, {})
    ff.register_parameter_set("_half_a_h", {"H": 0.6}, {}, replace=True)
    assert ff.PARAMETER_SETS["_half_a_h"] == ({"H": 0.6}, {})
    with pytest.raises(ValueError, match="already registered"):
        ff.register_parameter_set("w99", {}, {}, replace=True)
    with pytest.raises(ValueError, match=r"unknown group\(s\) \['C2'\]"):
        ff.register_parameter_set("_sub", {"C2": 1.0}, {})
    with pytest.raises(ValueError, match="finite and > 0"):
        ff.register_parameter_set("_neg", {}, {"O": -1.0})
    assert "_sub" not in ff.PARAMETER_SETS and "_neg" not in ff.PARAMETER_SETS
