"""Dimer-projection transfer integrals (GFN2-xTB, DFT) and the transfer/mobility backends."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sim_backends.base import EvalInput
from sim_backends.registry import get_backend
from sim_backends.structures import cif_from_atoms, load_crystal
from sim_backends.transfer import crystal_transfer, dimer_couplings, project_coupling, xtb_orbitals

ROOT = Path(__file__).resolve().parents[2]
NAPHTHALENE_CIF = (ROOT / "data/reference/x23/cif/naphthalene.cif").read_text()
NAPHTHALENE = "c1ccc2ccccc2c1"


def ethylene_dimer(distance_A: float):
    from ase.build import molecule

    a = molecule("C2H4")
    b = a.copy()
    b.positions += [0.0, 0.0, distance_A]
    return a, b


def dimer_mo_pair(orb_dimer, phi_a, phi_b):
    """Energies (eV) of the two dimer MOs with the largest weight on span(phi_a, phi_b)."""
    proj = orb_dimer.coefficients.T @ orb_dimer.overlap @ np.stack([phi_a, phi_b], axis=1)
    weight = (proj**2).sum(axis=1)
    top = np.sort(np.argsort(weight)[-2:])
    return orb_dimer.energies_eV[top], weight[top]


@pytest.mark.parametrize("carrier", ["hole", "electron"])
def test_symmetric_dimer_splitting_is_twice_the_effective_coupling(carrier):
    a, b = ethylene_dimer(4.0)
    orb_a, orb_b, orb_d = xtb_orbitals(a), xtb_orbitals(b), xtb_orbitals(a + b)
    c = dimer_couplings(orb_a, orb_b, orb_d)[carrier]
    assert c["e_a_eff_meV"] == pytest.approx(c["e_b_eff_meV"], abs=0.05)  # mirror-symmetric dimer
    n = orb_d.overlap.shape[0]
    phi_a, phi_b = np.zeros(n), np.zeros(n)
    phi_a[: n // 2] = orb_a.frontier(carrier)
    phi_b[n // 2:] = orb_b.frontier(carrier)
    (e_low, e_high), weight = dimer_mo_pair(orb_d, phi_a, phi_b)
    assert weight.min() > 0.9  # the pair really is the bonding/antibonding frontier pair
    splitting_meV = 1e3 * (e_high - e_low)
    assert abs(c["j_eff_meV"]) > 20.0
    assert 2 * abs(c["j_eff_meV"]) == pytest.approx(splitting_meV, rel=0.05)
    far = dimer_couplings(*(xtb_orbitals(m) for m in ethylene_dimer(9.0)),
                          xtb_orbitals(sum(ethylene_dimer(9.0)[1:], ethylene_dimer(9.0)[0])))[carrier]
    assert abs(far["j_eff_meV"]) < 0.05 * abs(c["j_eff_meV"])


def test_lowdin_formula_and_molecule_order():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(6, 6))
    s = m @ m.T / 6 + np.eye(6)
    f = rng.normal(size=(6, 6))
    f = f + f.T
    pa, pb = rng.normal(size=6), rng.normal(size=6)
    c = project_coupling(f, s, pa, pb)
    na, nb = pa / np.sqrt(pa @ s @ pa), pb / np.sqrt(pb @ s @ pb)
    ea, eb, j, sab = na @ f @ na, nb @ f @ nb, na @ f @ nb, na @ s @ nb
    assert c["j_eff_meV"] == pytest.approx(1e3 * (j - sab * (ea + eb) / 2) / (1 - sab**2), rel=1e-9)
    swapped = project_coupling(f, s, pb, pa)
    assert swapped["j_eff_meV"] == pytest.approx(c["j_eff_meV"], rel=1e-12)
    assert swapped["e_a_eff_meV"] == pytest.approx(c["e_b_eff_meV"], rel=1e-12)


def test_molecule_order_in_a_real_dimer():
    from ase.build import molecule

    a = molecule("C6H6")
    b = a.copy()
    b.rotate(90, "x", center="COM")
    b.positions += [0.6, 0.0, 5.0]
    oa, ob = xtb_orbitals(a), xtb_orbitals(b)
    ab = dimer_couplings(oa, ob, xtb_orbitals(a + b))
    ba = dimer_couplings(ob, oa, xtb_orbitals(b + a))
    for carrier in ("hole", "electron"):
        # benzene's frontier orbitals are degenerate pairs: pick-one-of-pair phases may
        # differ, so compare magnitudes of both orders' couplings
        assert abs(ab[carrier]["j_eff_meV"]) == pytest.approx(abs(ba[carrier]["j_eff_meV"]), abs=0.2)
        assert ab[carrier]["e_a_eff_meV"] == pytest.approx(ba[carrier]["e_b_eff_meV"], abs=0.2)


def _couplings_by_distance(crystal, carrier):
    tr = crystal_transfer(crystal, "gfn2-xtb", 4.0)
    rows = sorted((round(d.com_A, 2), round(abs(getattr(d, carrier)["j_eff_meV"]), 2),
                   d.multiplicity / crystal.z) for d in tr.dimers)
    return rows, tr


def test_invariant_to_cell_choice_and_atom_order():
    from ase.build import make_supercell

    base = load_crystal(NAPHTHALENE_CIF, NAPHTHALENE)
    rows, tr = _couplings_by_distance(base, "hole")
    # same lattice, another cell (a' = a + b, c' = c - a), atoms shuffled
    other = make_supercell(base.atoms, [[1, 1, 0], [0, 1, 0], [-1, 0, 1]])
    other = other[np.random.default_rng(4).permutation(len(other))]
    other.wrap()
    moved = load_crystal(cif_from_atoms(other), NAPHTHALENE)
    rows2, tr2 = _couplings_by_distance(moved, "hole")
    assert len(rows) == len(rows2)
    np.testing.assert_allclose(np.array(rows), np.array(rows2), atol=0.02)
    # a doubled cell: same couplings per molecule, same mobility
    double = load_crystal(cif_from_atoms(make_supercell(base.atoms, np.diag([2, 1, 1]))), NAPHTHALENE)
    rows3, tr3 = _couplings_by_distance(double, "hole")
    np.testing.assert_allclose(np.array(rows), np.array(rows3), atol=0.02)
    from sim_backends.mobility import crystal_mobility

    mu = [crystal_mobility(t, {"hole": 0.18})[0]["mobility_hole_cm2Vs"] for t in (tr, tr2, tr3)]
    assert mu[1] == pytest.approx(mu[0], rel=1e-3) and mu[2] == pytest.approx(mu[0], rel=1e-3)


def test_mobility_backend_on_naphthalene_with_kmc_check():
    r = get_backend("mobility-xtb").evaluate(EvalInput(
        NAPHTHALENE, NAPHTHALENE_CIF,
        params={"lambda_hole_kjmol": 18.0, "lambda_electron_kjmol": 24.0, "kmc_walkers": 2000}))
    assert r.ok, r.reason
    assert r.values["n_unique_dimers"] >= 3 and r.values["n_neighbours"] >= 10
    for carrier in ("hole", "electron"):
        mu = r.values[f"mobility_{carrier}_cm2Vs"]
        assert 1e-4 < mu < 100.0
        info = r.extra["mobility"][carrier]
        assert info["relative_local_drift"] < 1e-3  # molecules on inversion centres
        assert info["einstein_sum"]["iso"] == pytest.approx(mu, rel=1e-6)
        assert info["kmc"]["iso"] == pytest.approx(mu, abs=4 * info["kmc"]["stderr_iso"])
    assert "GFN2-xTB" in r.extra["level"]


def test_no_hole_reorganisation_energy_is_a_failed_evaluation():
    r = get_backend("mobility-xtb").evaluate(EvalInput(NAPHTHALENE, NAPHTHALENE_CIF, params={}))
    assert not r.ok and r.reason.startswith("setup: no hole reorganisation energy")


def test_structure_without_molecular_contacts_fails_cleanly():
    from ase import Atoms

    mol = load_crystal(NAPHTHALENE_CIF, NAPHTHALENE).molecule(0)
    boxed = Atoms(mol.get_chemical_symbols(), mol.positions - mol.positions.mean(0) + 10.0,
                  cell=[20.0, 20.0, 20.0], pbc=True)
    for name in ("transfer-xtb", "mobility-xtb"):
        lam = {"lambda_hole_kjmol": 18.0} if "mob" in name else {}
        r = get_backend(name).evaluate(EvalInput(NAPHTHALENE, cif_from_atoms(boxed), params=lam))
        assert not r.ok and r.reason.startswith("unphysical: density = 0.027 g/cm3"), r.reason
        # a real crystal whose closest contact (2.28 A) is beyond the cutoff: no network
        r = get_backend(name).evaluate(EvalInput(NAPHTHALENE, NAPHTHALENE_CIF, params={**lam, "cutoff_A": 2.0}))
        assert not r.ok and r.reason.startswith("setup: no two molecules closer than 2 A"), r.reason
        assert "no molecular contacts" in r.reason


def test_failed_dimer_scf_is_a_failed_evaluation():
    r = get_backend("transfer-xtb").evaluate(EvalInput(NAPHTHALENE, NAPHTHALENE_CIF,
                                                       params={"max_iterations": 1}))
    assert not r.ok and r.reason.startswith("run: xTB SCF of molecule 0 failed"), r.reason


def test_params_are_declared():
    from sim_backends.base import ParamsError

    with pytest.raises(ParamsError, match="lambda_hole_kjmol"):
        get_backend("mobility-xtb").check_params({"lambda_hole_kjmol": -1.0})
    with pytest.raises(ParamsError, match="unknown transfer-xtb parameter"):
        get_backend("transfer-xtb").check_params({"basis": "6-31g"})
    get_backend("mobility-dft").check_params({"lambda_hole_kjmol": 18.0, "basis": "6-31g", "cutoff_A": 4.0})


@pytest.mark.slow
def test_dft_symmetric_dimer_and_failed_scf():
    from sim_backends.base import RunError
    from sim_backends.transfer import dft_orbitals

    a, b = ethylene_dimer(4.0)
    (oa, dma), (ob, dmb) = dft_orbitals(a, basis="6-31g"), dft_orbitals(b, basis="6-31g")
    from scipy.linalg import block_diag

    od, _ = dft_orbitals(a + b, basis="6-31g", dm0=block_diag(dma, dmb))
    c = dimer_couplings(oa, ob, od)
    n = od.overlap.shape[0]
    for carrier in ("hole", "electron"):
        x = c[carrier]
        assert x["e_a_eff_meV"] == pytest.approx(x["e_b_eff_meV"], abs=1.0)
        phi_a, phi_b = np.zeros(n), np.zeros(n)
        phi_a[: n // 2] = oa.frontier(carrier)
        phi_b[n // 2:] = ob.frontier(carrier)
        (e_low, e_high), weight = dimer_mo_pair(od, phi_a, phi_b)
        assert weight.min() > 0.8
        assert 2 * abs(x["j_eff_meV"]) == pytest.approx(1e3 * (e_high - e_low), rel=0.1)
    with pytest.raises(RunError, match="SCF"):
        dft_orbitals(a + b, basis="6-31g", max_cycles=1)


def test_degenerate_frontier_orbitals_are_noted_not_warned():
    """Degenerate frontier orbitals now use the rotation-invariant manifold coupling
    (tests/sim_backends/test_transfer_degenerate.py): an INFO note naming the manifold,
    no warning."""
    benzene = (ROOT / "data/reference/x23/cif/benzene.cif").read_text()
    tr = crystal_transfer(load_crystal(benzene, "c1ccccc1"), "gfn2-xtb", 4.0)
    assert tr.frontier_spacing_meV["hole"] < 10.0 and tr.warnings == []  # geometry splits e1g by ~1 meV
    assert "2-fold degenerate" in tr.to_extra()["notes"][0]
    naph = crystal_transfer(load_crystal(NAPHTHALENE_CIF, NAPHTHALENE), "gfn2-xtb", 4.0)
    assert naph.warnings == [] and naph.notes == [] and naph.frontier_spacing_meV["hole"] > 500.0


def test_extra_round_trip_gives_the_same_network_and_mobility():
    from sim_backends.mobility import crystal_mobility
    from sim_backends.transfer import CrystalTransfer

    tr = crystal_transfer(load_crystal(NAPHTHALENE_CIF, NAPHTHALENE), "gfn2-xtb", 4.0)
    back = CrystalTransfer.from_extra(json.loads(json.dumps(tr.to_extra())))
    assert back.neighbours == tr.neighbours and len(back.dimers) == len(tr.dimers)
    np.testing.assert_allclose(back.couplings_meV("hole"), tr.couplings_meV("hole"))
    mu = [crystal_mobility(t, {"hole": 0.187})[0]["mobility_hole_cm2Vs"] for t in (tr, back)]
    assert mu[1] == pytest.approx(mu[0], rel=1e-4)  # vectors rounded to 1e-5 A
    for d in back.dimers:  # site energies and effective couplings are reported per dimer
        assert {"e_a_eff_meV", "e_b_eff_meV", "j_eff_meV", "s_ab"} <= set(d.hole)


def test_max_com_keeps_near_dimers_and_cache_resumes_without_recomputing(monkeypatch):
    import sim_backends.transfer as transfer

    crystal = load_crystal(NAPHTHALENE_CIF, NAPHTHALENE)
    full = crystal_transfer(crystal, "gfn2-xtb", 4.0)
    near = crystal_transfer(crystal, "gfn2-xtb", 4.0, max_com_A=6.0)
    assert 0 < len(near.dimers) < len(full.dimers)
    assert all(d.com_A <= 6.0 for d in near.dimers)
    assert np.linalg.norm(near.vectors_A, axis=1).max() <= 6.0 + 1e-6  # the network is cut too
    with pytest.raises(transfer.SetupError, match="centres of mass within 1"):
        crystal_transfer(crystal, "gfn2-xtb", 4.0, max_com_A=1.0)
    cache: dict = {}
    first = crystal_transfer(crystal, "gfn2-xtb", 4.0, dimer_cache=cache)
    assert len(cache) == len(first.dimers)
    calls = []
    real = transfer.xtb_orbitals
    monkeypatch.setattr(transfer, "xtb_orbitals", lambda atoms, **kw: calls.append(len(atoms)) or real(atoms, **kw))
    again = crystal_transfer(crystal, "gfn2-xtb", 4.0, dimer_cache=cache)
    assert calls == [18, 18]  # the two monomers only: every dimer came from the cache
    np.testing.assert_allclose(again.couplings_meV("hole"), first.couplings_meV("hole"))
    assert [d.multiplicity for d in again.dimers] == [d.multiplicity for d in first.dimers]
