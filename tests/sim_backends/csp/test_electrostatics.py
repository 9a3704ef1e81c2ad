"""Off-atom lone-pair charge sites (``charges="resp-lp"`` and ``"resp-lpn"``): geometry, gradients, Ewald sum."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_forcefield import t, x23_crystal  # noqa: E402  (same test folder)

from sim_backends.csp.charges import (  # noqa: E402
    LONE_PAIR_DISTANCE_A,
    compute_charges,
    lone_pair_sites,
)
from sim_backends.csp.forcefield import COULOMB_KJMOL_A, LatticeEnergyModel  # noqa: E402


def with_lone_pair_charges(mol):
    """The molecule with made-up neutral charges on atoms and lone-pair sites (-0.2 e each)."""
    weights, _ = lone_pair_sites(mol.symbols, mol.coords_A)
    q_sites = -0.2 * np.ones(len(weights))
    q_atoms = np.asarray(mol.charges_e) - q_sites.sum() / mol.n_atoms
    return mol.with_charges(np.concatenate([q_atoms, q_sites]), "test-lp"), weights


def test_lone_pair_site_geometry_of_formamide_and_pyrazine():
    mol, _, _ = x23_crystal("formamide")
    weights, parents = lone_pair_sites(mol.symbols, mol.coords_A)
    o = mol.symbols.index("O")
    c = mol.symbols.index("C")
    assert parents == [o, o]  # the carbonyl O; the amide N gets none
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-12)
    sites = weights @ mol.coords_A
    for s in sites:
        assert np.linalg.norm(s - mol.coords_A[o]) == pytest.approx(LONE_PAIR_DISTANCE_A, abs=0.02)
        u, v = mol.coords_A[c] - mol.coords_A[o], s - mol.coords_A[o]
        angle = math.degrees(math.acos(u @ v / np.linalg.norm(u) / np.linalg.norm(v)))
        assert angle == pytest.approx(110.0, abs=2.0)
    # invariant under a rigid motion of the molecule
    rot = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    moved = mol.coords_A @ rot.T + np.array([1.0, -2.0, 3.0])
    np.testing.assert_allclose(lone_pair_sites(mol.symbols, moved)[0], weights, atol=1e-8)

    pyr, _, _ = x23_crystal("pyrazine")
    w, parents = lone_pair_sites(pyr.symbols, pyr.coords_A)
    assert sorted(pyr.symbols[p] for p in parents) == ["N", "N"]
    for site, p in zip(w @ pyr.coords_A, parents):  # outward, on the C-N-C bisector
        nbrs = [k for k, s in enumerate(pyr.symbols) if s == "C"
                and np.linalg.norm(pyr.coords_A[k] - pyr.coords_A[p]) < 1.5]
        out = 2 * pyr.coords_A[p] - pyr.coords_A[nbrs].sum(axis=0)
        cos = (site - pyr.coords_A[p]) @ out / np.linalg.norm(out) / LONE_PAIR_DISTANCE_A
        assert cos == pytest.approx(1.0, abs=1e-3)


def test_out_of_plane_lone_pairs_of_a_planar_acid_are_left_out():
    """Oxalic acid: the carbonyl O get their in-plane sites, the OH oxygens (whose sites would
    stand out of the molecular plane) none, in both X23 polymorphs alike."""
    for name in ("oxalic_acid_alpha", "oxalic_acid_beta"):
        mol, _, _ = x23_crystal(name)
        _, parents = lone_pair_sites(mol.symbols, mol.coords_A)
        assert len(parents) == 4 and len(set(parents)) == 2


@pytest.mark.parametrize("kernel", ["numba", "torch"])
def test_lone_pair_gradients_match_finite_differences(kernel):
    mol, cell, coords = x23_crystal("formamide")
    mol, _ = with_lone_pair_charges(mol)
    model = LatticeEnergyModel(mol, cutoff_A=12.0, pair_kernel=kernel)
    assert model.n_virtual == 2 and model.n_sites == mol.n_atoms + 2
    rng = np.random.default_rng(3)
    cell = cell + rng.normal(scale=0.05, size=(3, 3))
    coords = coords + rng.normal(scale=0.03, size=coords.shape)
    energy, g_cell, g_coords = model.energy_and_grad(t(cell)[None], t(coords)[None])
    if kernel == "numba":  # the minimisers' path gives the same energy and gradients
        e_np, gc_np, gx_np = model.energy_and_grad_numpy(cell[None], coords[None])
        assert e_np[0] == pytest.approx(float(energy[0]), abs=1e-8)
        np.testing.assert_allclose(gc_np[0], g_cell[0].numpy(), atol=1e-7)
        np.testing.assert_allclose(gx_np[0], g_coords[0].numpy(), atol=1e-7)

    def e(c, x):
        return float(model.energy_kjmol(t(c)[None], t(x)[None])[0])

    h = 1e-5
    o = mol.symbols.index("O")
    picks = [(0, o, 0), (1, o, 2)] + [tuple(rng.integers(0, s) for s in coords.shape) for _ in range(6)]
    for idx in picks:
        xp, xm = coords.copy(), coords.copy()
        xp[idx] += h
        xm[idx] -= h
        fd = (e(cell, xp) - e(cell, xm)) / (2 * h)
        assert fd == pytest.approx(float(g_coords[0][idx]), rel=1e-5, abs=1e-5)
    for i, j in ((0, 0), (1, 2), (2, 1), (2, 2)):
        cp, cm = cell.copy(), cell.copy()
        cp[i, j] += h
        cm[i, j] -= h
        fd = (e(cp, coords) - e(cm, coords)) / (2 * h)
        assert fd == pytest.approx(float(g_cell[0, i, j]), rel=1e-5, abs=1e-5)


@pytest.mark.filterwarnings("ignore:No Pauling electronegativity")
def test_lone_pair_ewald_matches_pymatgen():
    """Electrostatics with lone-pair sites (intramolecular pairs excluded) + the bare
    intramolecular Coulomb of all charge sites equals pymatgen's Ewald sum over atoms and sites."""
    from pymatgen.analysis.ewald import EwaldSummation
    from pymatgen.core import Lattice, Structure

    mol, cell, coords = x23_crystal("formamide")
    mol, weights = with_lone_pair_charges(mol)
    n_mol = len(coords)
    model = LatticeEnergyModel(mol, cutoff_A=10.0, ewald_accuracy=1e-8)
    elec = float(model.terms_kjmol(t(cell)[None], t(coords)[None])["elec_kjmol"][0]) * n_mol
    q = np.asarray(mol.charges_e)
    full = np.array([np.vstack([x, weights @ x]) for x in coords])  # (Z, n + n_lp, 3)
    iu, ju = np.triu_indices(len(q), k=1)
    intra = sum(COULOMB_KJMOL_A * (q[iu] * q[ju] / np.linalg.norm(x[iu] - x[ju], axis=1)).sum() for x in full)
    species = list(mol.symbols) + ["He"] * len(weights)  # species are labels only; charges given
    structure = Structure(
        Lattice(cell), species * n_mol, full.reshape(-1, 3), coords_are_cartesian=True,
        site_properties={"charge": np.tile(q, n_mol).tolist()},
    )
    reference = EwaldSummation(structure, acc_factor=14.0).total_energy * 96.485332  # eV -> kJ/mol
    assert abs(elec + intra) > 10.0
    assert elec + intra == pytest.approx(reference, abs=2e-3)


def test_n_only_sites_of_cytosine_and_their_model():
    """``resp-lpn``: the sites of the N acceptors only. Cytosine has one (the ring N3; its
    carbonyl O's two sites are left out), the same site as in the N-and-O set; the lattice
    model tells the two site sets apart by the number of charges, and its gradients match
    finite differences with the N-only site."""
    mol, cell, coords = x23_crystal("cytosine")
    w_all, p_all = lone_pair_sites(mol.symbols, mol.coords_A)
    w_n, p_n = lone_pair_sites(mol.symbols, mol.coords_A, ("N",))
    assert [mol.symbols[p] for p in p_n] == ["N"] and sorted(mol.symbols[p] for p in p_all) == ["N", "O", "O"]
    np.testing.assert_allclose(w_n[0], w_all[p_all.index(p_n[0])], atol=1e-12)
    q_site = np.array([-0.3])
    q_atoms = np.asarray(mol.charges_e) - q_site.sum() / mol.n_atoms
    mol_n = mol.with_charges(np.concatenate([q_atoms, q_site]), "test-lpn")
    model = LatticeEnergyModel(mol_n, cutoff_A=12.0)
    assert model.n_virtual == 1 and model.n_sites == mol.n_atoms + 1
    ox, _, _ = x23_crystal("oxalic_acid_beta")  # no N: no site, the plain RESP model
    assert lone_pair_sites(ox.symbols, ox.coords_A, ("N",))[0].shape == (0, ox.n_atoms)
    rng = np.random.default_rng(5)
    coords = coords + rng.normal(scale=0.03, size=coords.shape)
    energy, g_cell, g_coords = model.energy_and_grad(t(cell)[None], t(coords)[None])

    def e(c, x):
        return float(model.energy_kjmol(t(c)[None], t(x)[None])[0])

    h = 1e-5
    n3 = p_n[0]
    for idx in [(0, n3, 0), (1, n3, 2)] + [tuple(rng.integers(0, s) for s in coords.shape) for _ in range(4)]:
        xp, xm = coords.copy(), coords.copy()
        xp[idx] += h
        xm[idx] -= h
        assert (e(cell, xp) - e(cell, xm)) / (2 * h) == pytest.approx(float(g_coords[0][idx]), rel=1e-5, abs=1e-5)
    cp, cm = cell.copy(), cell.copy()
    cp[1, 1] += h
    cm[1, 1] -= h
    assert (e(cp, coords) - e(cm, coords)) / (2 * h) == pytest.approx(float(g_cell[0, 1, 1]), rel=1e-5, abs=1e-5)


def test_model_refuses_charges_that_fit_neither_atoms_nor_sites():
    mol, _, _ = x23_crystal("formamide")
    bad = mol.with_charges(np.zeros(mol.n_atoms + 1), "test")
    with pytest.raises(ValueError, match="lone-pair sites"):
        LatticeEnergyModel(bad)


def test_resp_lp_fits_the_esp_better_than_atom_charges(tmp_path):
    """Formaldehyde at HF/6-31G*: two carbonyl lone-pair sites lower the ESP fit error."""
    symbols = ["C", "O", "H", "H"]
    xyz = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.205], [0.0, 0.94, -0.587], [0.0, -0.94, -0.587]])
    classes = [0, 1, 2, 2]
    plain = compute_charges(symbols, xyz, "resp", classes, cache_dir=tmp_path)
    lp = compute_charges(symbols, xyz, "resp-lp", classes, cache_dir=tmp_path)
    assert len(plain.charges_e) == 4 and len(lp.charges_e) == 6
    assert abs(lp.charges_e.sum()) < 1e-8
    assert "lone-pair" in lp.method
    assert lp.rrms < 0.8 * plain.rrms
    again = compute_charges(symbols, xyz, "resp-lp", classes, cache_dir=tmp_path)  # cached
    np.testing.assert_allclose(again.charges_e, lp.charges_e)


@pytest.mark.slow
def test_csp_from_smiles_with_lone_pair_charges_round_trips(tmp_path):
    """run_csp(charges="resp-lp") on formamide: minima with the site model, written and read back."""
    from sim_backends.csp import run_csp
    from sim_backends.landscape import Landscape

    land = run_csp("NC=O", 16, space_groups="P-1", charges="resp-lp", sampling="fixed", seed=1,
                   cache_dir=tmp_path / "cache", out_dir=tmp_path / "out")
    assert "lone-pair" in land.meta["charge_method"]
    assert len(land) and all(np.isfinite(m.energy_kjmol) and m.energy_kjmol < -20.0 for m in land.minima)
    back = Landscape.read(tmp_path / "out")
    assert len(back) == len(land)
    assert back.meta["charge_method"] == land.meta["charge_method"]
    assert back.minima[0].energy_kjmol == pytest.approx(land.minima[0].energy_kjmol, abs=1e-4)  # 4 decimals


def test_resp_lpn_fits_sites_on_n_only(tmp_path):
    """HF/6-31G* RESP of HCN: ``resp-lpn`` puts a site on the nitrile N, fits the ESP better
    than atom charges and labels the fit; formaldehyde, whose only acceptor is O, gets the
    plain RESP charges."""
    hcn = (["H", "C", "N"], np.array([[0.0, 0.0, -1.066], [0.0, 0.0, 0.0], [0.0, 0.0, 1.153]]))
    plain = compute_charges(*hcn, "resp", [0, 1, 2], cache_dir=tmp_path)
    lpn = compute_charges(*hcn, "resp-lpn", [0, 1, 2], cache_dir=tmp_path)
    assert len(lpn.charges_e) == 4 and abs(lpn.charges_e.sum()) < 1e-8
    assert lpn.method.startswith("resp-lpn") and "(1 lone-pair site)" in lpn.method
    assert lpn.rrms < plain.rrms
    formaldehyde = (["C", "O", "H", "H"],
                    np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.205], [0.0, 0.94, -0.587], [0.0, -0.94, -0.587]]))
    only_o = compute_charges(*formaldehyde, "resp-lpn", [0, 1, 2, 2], cache_dir=tmp_path)
    np.testing.assert_allclose(only_o.charges_e,
                               compute_charges(*formaldehyde, "resp", [0, 1, 2, 2], cache_dir=tmp_path).charges_e,
                               atol=1e-10)


def test_charge_cache_key_carries_the_fit_version(tmp_path, monkeypatch):
    """A cached charge set is reused only by the same fit version: raising
    ``CHARGE_FIT_VERSION`` computes (and caches) the charges afresh, and each entry records
    the key it was stored under (fit version and library version included)."""
    import json

    from sim_backends.csp import charges as charges_mod

    hcn = (["H", "C", "N"], np.array([[0.0, 0.0, -1.066], [0.0, 0.0, 0.0], [0.0, 0.0, 1.153]]))
    first = compute_charges(*hcn, "xtb", [0, 1, 2], cache_dir=tmp_path, cache_key="C#N")
    files = sorted(tmp_path.glob("xtb-*.json"))
    assert len(files) == 1
    payload = json.loads(files[0].read_text())["key_payload"]
    assert payload[-2] == charges_mod.CHARGE_FIT_VERSION and payload[-1] not in ("", "unknown")
    calls = []
    real = charges_mod.xtb_charges
    monkeypatch.setattr(charges_mod, "xtb_charges", lambda *a: calls.append(1) or real(*a))
    compute_charges(*hcn, "xtb", [0, 1, 2], cache_dir=tmp_path, cache_key="C#N")
    assert calls == []  # same version: read from the cache
    monkeypatch.setattr(charges_mod, "CHARGE_FIT_VERSION", charges_mod.CHARGE_FIT_VERSION + 1)
    again = compute_charges(*hcn, "xtb", [0, 1, 2], cache_dir=tmp_path, cache_key="C#N")
    assert calls == [1] and len(list(tmp_path.glob("xtb-*.json"))) == 2
    np.testing.assert_allclose(again.charges_e, first.charges_e, atol=1e-10)
