"""Hole reorganisation energy backends with real GFN2-xTB (tblite) and DFT (PySCF)."""

import pickle

import pytest

from sim_backends.base import EvalInput
from sim_backends.reorg import KJMOL_PER_EV, DftReorgBackend, XtbReorgBackend


def _check_four_point(res):
    v, e = res.values, res.extra
    assert v["reorg_energy_kjmol"] == pytest.approx(v["lambda_cation_kjmol"] + v["lambda_neutral_kjmol"])
    assert e["reorg_energy_ev"] * KJMOL_PER_EV == pytest.approx(v["reorg_energy_kjmol"])
    en = e["energies_ev"]
    assert (en["C@N"] - en["C@C"]) * KJMOL_PER_EV == pytest.approx(v["lambda_cation_kjmol"])
    assert (en["N@C"] - en["N@N"]) * KJMOL_PER_EV == pytest.approx(v["lambda_neutral_kjmol"])
    assert v["ip_vertical_kjmol"] >= v["ip_adiabatic_kjmol"]
    assert e["xyz_neutral"].startswith(str(e["n_atoms"]) + "\n")


def test_xtb_thiophene_reorganisation_energy_is_plausible():
    res = XtbReorgBackend().evaluate(EvalInput("c1ccsc1"))
    assert res.ok, res.reason
    _check_four_point(res)
    lam = res.values["reorg_energy_kjmol"]
    # thiophene lambda+ is ~0.2-0.4 eV at DFT level (~20-40 kJ/mol); GFN2 gives ~22
    assert 5.0 < lam < 60.0
    assert res.values["lambda_cation_kjmol"] > 0 and res.values["lambda_neutral_kjmol"] > 0
    # GFN2-xTB ionisation energies of small heteroaromatics are 10-16 eV (no IPEA shift)
    assert 900.0 < res.values["ip_adiabatic_kjmol"] < 1600.0
    assert res.backend_version.startswith("3+tblite-")
    pickle.loads(pickle.dumps(res))


def test_xtb_reorganisation_energy_falls_along_the_acene_series():
    b = XtbReorgBackend()
    lam = [b.evaluate(EvalInput(s)).values["reorg_energy_kjmol"]
           for s in ("c1ccc2ccccc2c1", "c1ccc2cc3ccccc3cc2c1")]
    assert lam[0] > lam[1] > 0  # naphthalene > anthracene, as at every level of theory


@pytest.mark.parametrize("backend", [XtbReorgBackend(), DftReorgBackend(basis="sto-3g")])
@pytest.mark.parametrize("smiles, fragment", [("C1CC(", "invalid SMILES"), ("c1cc[se]c1", "Se")])
def test_bad_molecules_fail_at_setup(backend, smiles, fragment):
    res = backend.evaluate(EvalInput(smiles))
    assert res.status == "failed" and res.reason.startswith("setup:") and fragment in res.reason
    assert not res.retryable


def test_xtb_scf_failure_is_a_retryable_run_error():
    res = XtbReorgBackend(max_cycles=1).evaluate(EvalInput("c1ccsc1"))
    assert res.status == "failed" and res.retryable
    assert res.reason.startswith("run:") and "SCF" in res.reason


def test_dft_scf_non_convergence_is_a_run_error():
    res = DftReorgBackend(basis="sto-3g", max_cycles=1).evaluate(EvalInput("C=C"))
    assert res.status == "failed" and res.retryable, res.reason
    assert res.reason.startswith("run:") and "SCF did not converge" in res.reason


def test_default_dft_level_relaxes_both_states_at_dft():
    """DFT//xTB failed validation (benchmarks/reorg_validation.py): the default relaxes."""
    from sim_backends.reorg import DFT_DEFAULTS

    assert DFT_DEFAULTS["geometry"] == "dft"
    assert DftReorgBackend()._level({}) == "B3LYP/6-31G, both states relaxed at this level"
    assert DftReorgBackend()._level({"geometry": "xtb"}) == "B3LYP/6-31G//GFN2-xTB geometries"


def test_dft_unknown_options_fail_at_setup():
    res = DftReorgBackend(geometry="mm").evaluate(EvalInput("C=C"))
    assert res.reason.startswith("setup:") and "geometry" in res.reason
    res = DftReorgBackend(basis="no-such-basis").evaluate(EvalInput("C=C"))
    assert res.status == "failed" and res.reason.startswith("setup:"), res.reason


def test_cost_estimates_grow_with_molecule_size_and_level():
    small, big = EvalInput("c1ccsc1"), EvalInput("c1ccc2cc3ccccc3cc2c1")
    for b in (XtbReorgBackend(), DftReorgBackend(geometry="xtb"), DftReorgBackend()):
        assert 0 < b.cost_estimate(small) < b.cost_estimate(big)
    assert DftReorgBackend(geometry="xtb").cost_estimate(small) > 5 * XtbReorgBackend().cost_estimate(small)
    assert DftReorgBackend().cost_estimate(big) > DftReorgBackend(geometry="xtb").cost_estimate(big)
    assert DftReorgBackend(basis="def2-svp").cost_estimate(big) > DftReorgBackend(basis="sto-3g").cost_estimate(big)


@pytest.mark.slow
def test_dft_ethylene_full_optimisation_sto3g():
    res = DftReorgBackend(basis="sto-3g", geometry="dft").evaluate(EvalInput("C=C"))
    assert res.ok, res.reason
    _check_four_point(res)
    v = res.values
    assert v["lambda_cation_kjmol"] > 0 and v["lambda_neutral_kjmol"] > 0
    # the ethylene cation twists about C=C and stretches it: a large lambda+ (~0.5-1 eV)
    assert 30.0 < v["reorg_energy_kjmol"] < 150.0
    assert res.extra["neutral"]["n_opt_steps"] >= 2 and res.extra["cation"]["n_opt_steps"] >= 2
    assert res.backend_version.startswith("2+pyscf-")
    assert "ip_gas_ev" not in res.values  # its calibration is for B3LYP/6-31G, not STO-3G
    # the relaxed cation's UKS state is checked at its final geometry, the neutral's is not
    relax = {r["what"]: r for r in res.extra["scf"] if r["what"].endswith("relaxation")}
    assert relax["charge +1 relaxation"]["stability"]["stable"]
    assert "stability" not in relax["charge +0 relaxation"]
    assert res.extra["cation"]["relax_restarts"] in (0, 1)


@pytest.mark.slow
def test_dft_single_points_on_xtb_geometries_thiophene_sto3g():
    res = DftReorgBackend(basis="sto-3g", geometry="xtb").evaluate(EvalInput("c1ccsc1"))
    assert res.ok, res.reason
    _check_four_point(res)
    assert res.extra["neutral"]["n_opt_steps"] == 0
    assert 5.0 < res.values["reorg_energy_kjmol"] < 80.0


@pytest.mark.slow
def test_dft_on_xtb_geometries_of_formaldehyde_is_rejected_as_unphysical():
    """B3LYP/6-31G on GFN2-xTB geometries: total lambda+ +8 kJ/mol looks fine, but the
    cation component is -21 kJ/mol (IP_adiabatic > IP_vertical): not a result."""
    res = DftReorgBackend(geometry="xtb").evaluate(EvalInput("C=O"))
    assert res.status == "failed" and not res.retryable
    assert res.reason.startswith("unphysical: lambda_cation = -")
    assert res.reason.endswith("(B3LYP/6-31G//GFN2-xTB geometries)")
    v = res.extra["unphysical_values"]
    assert v["reorg_energy_kjmol"] > 0 and v["ip_adiabatic_kjmol"] > v["ip_vertical_kjmol"]
    assert res.values == {}


def test_cost_of_relaxing_in_a_smaller_basis_lies_between_the_protocols():
    big = EvalInput("c1ccc2cc3ccccc3cc2c1")
    cheap, mid, full = (DftReorgBackend(geometry="xtb"), DftReorgBackend(opt_basis="sto-3g"),
                        DftReorgBackend())
    assert cheap.cost_estimate(big) < mid.cost_estimate(big) < full.cost_estimate(big)


@pytest.mark.slow
def test_dft_relaxation_in_a_smaller_basis_ethylene():
    """B3LYP/6-31G energies at B3LYP/STO-3G minima: the level is named, the energies
    are those of the 6-31G basis (not the STO-3G optimiser's)."""
    res = DftReorgBackend(geometry="dft", opt_basis="sto-3g").evaluate(EvalInput("C=C"))
    assert res.extra["level"] == "B3LYP/6-31G//B3LYP/STO-3G geometries"
    assert res.ok, res.reason
    _check_four_point(res)
    sp = DftReorgBackend(basis="sto-3g", geometry="dft").evaluate(EvalInput("C=C"))
    assert res.extra["energies_ev"]["N@N"] < sp.extra["energies_ev"]["N@N"] - 10.0  # 6-31G lies lower
    assert res.extra["neutral"]["n_opt_steps"] == sp.extra["neutral"]["n_opt_steps"]


def _hcn(**params):
    """B3LYP/6-31G//GFN2-xTB four-point run of HCN (3 atoms, a few CPU s). Its cation
    (degenerate pi hole) is where PySCF's minao guess converges to an unstable UKS state."""
    return DftReorgBackend(geometry="xtb", **params).evaluate(EvalInput("C#N"))


def test_cation_stability_follow_up_makes_both_guesses_land_in_the_same_state():
    # the stability check alone (the degenerate-hole rule would start HCN+ at the neutral
    # geometry from the neutral's orbitals in both modes)
    unchecked = _hcn(scf_guess="default", stability_check=False, degenerate_holes=False)
    default, auto = (_hcn(scf_guess=m, degenerate_holes=False) for m in ("default", "auto"))
    e0, e_def, e_auto = (r.extra["energies_ev"] for r in (unchecked, default, auto))
    # the stability follow-up lowers the minao cation states (0.0090 Eh at the cation geometry)
    assert e_def["C@C"] < e0["C@C"] - 0.001 * 27.2114
    assert "charge +1" in default.extra["scf_stability"]["followed"]
    for key in e_def:  # and both guesses give the same four energies
        assert e_auto[key] == pytest.approx(e_def[key], abs=1e-6 * 27.2114)
    assert e_def["N@N"] == e0["N@N"]  # the closed-shell neutral is not checked
    st = default.extra["scf_stability"]
    assert st["checks"] >= 2 and st["followups"] >= 1 and 0 < st["fock_builds"] < default.extra["scf_fock_builds_total"]
    cation_recs = [r for r in default.extra["scf"] if r["what"].startswith("charge +1")]
    assert len(cation_recs) == 2 and all(r["stability"]["stable"] for r in cation_recs)
    assert not any("stability" in r for r in default.extra["scf"] if r["what"].startswith("charge +0"))
    assert unchecked.extra["scf_stability"]["checks"] == 0


def test_degenerate_homo_cation_is_the_lowest_hole_placement_from_either_guess():
    """HCN's neutral HOMO (pi) is degenerate at its own geometry: the evaluation is redone
    on grid level 3, and in both guess modes the cation there starts from the neutral's
    orbitals with the hole in each degenerate orbital; the lowest (stable) state is kept,
    so both modes agree to 1e-6 Eh."""
    res = {m: _hcn(scf_guess=m) for m in ("default", "auto")}
    for r in res.values():
        assert r.extra["grid_level"] == 3 and r.extra["degenerate_homo"]
        first = r.extra["scf"][0]  # the level-1 neutral SCF that found the degenerate HOMO
        assert first["what"] == "charge +0" and first["degenerate_homo"].startswith("evaluation redone")
    e_def, e_auto = (res[m].extra["energies_ev"] for m in ("default", "auto"))
    for key in e_def:
        assert e_auto[key] == pytest.approx(e_def[key], abs=1e-6 * 27.2114)
    for r in res.values():
        (hp,) = r.extra["scf_hole_placements"]  # C@N only: at the cation geometry it is not degenerate
        assert hp["what"] == "charge +1 single point" and len(hp["holes"]) >= 2
        energies = {int(k): v for k, v in hp["energies_eh"].items()}
        assert set(energies) == set(hp["holes"]) and not hp["failed"]
        assert energies[hp["chosen"]] == min(energies.values())
        assert r.extra["energies_ev"]["C@N"] == pytest.approx(min(energies.values()) * 27.211386246, abs=1e-9)
        placed = [x for x in r.extra["scf"] if "hole in neutral orbital" in x["what"]]
        assert len(placed) == len(hp["holes"]) and all(x["stability"]["stable"] for x in placed)
        # the neutral at the cation geometry is computed once (before the cation, reused for N@C)
        assert sum(x["what"] == "charge +0 single point" for x in r.extra["scf"]) == 1
    coarse = _hcn(scf_guess="default", degenerate_grid_level=1)  # no finer grid: same rule on level 1
    assert coarse.extra["grid_level"] == 1 and len(coarse.extra["scf_hole_placements"]) == 1


def test_evaluations_on_one_instance_do_not_share_state():
    """Each evaluate() call has its own evaluation state: formaldehyde after HCN (whose
    degenerate HOMO moves its evaluation to grid level 3 and leaves converged orbitals and
    hole placements behind) on one instance equals formaldehyde on a fresh instance, and
    the instance keeps no attribute from either evaluation."""
    shared = DftReorgBackend(geometry="xtb")
    before = dict(vars(shared))
    hcn = shared.evaluate(EvalInput("C#N"))
    assert hcn.extra["grid_level"] == 3 and hcn.extra["scf_hole_placements"]
    assert vars(shared) == before
    second = shared.evaluate(EvalInput("C=O"))
    fresh = DftReorgBackend(geometry="xtb").evaluate(EvalInput("C=O"))
    assert vars(shared) == before
    # (failed as unphysical on the borrowed GFN2-xTB geometries, with all four energies kept)
    assert (second.status, second.reason) == (fresh.status, fresh.reason)
    assert second.values == fresh.values
    assert second.extra["energies_ev"] == fresh.extra["energies_ev"]
    assert second.extra.get("unphysical_values") == fresh.extra.get("unphysical_values")
    assert second.extra["grid_level"] == 1 and not second.extra["degenerate_homo"]
    keys = ("what", "guess", "cycles", "fock_builds")
    assert [[r.get(k) for k in keys] for r in second.extra["scf"]] == \
        [[r.get(k) for k in keys] for r in fresh.extra["scf"]]


def test_non_degenerate_cations_are_unchanged_by_the_degenerate_hole_rule():
    """Formaldehyde (non-degenerate HOMO): no hole placements, the same SCFs and energies."""
    res = {flag: DftReorgBackend(geometry="xtb", scf_guess="default", degenerate_holes=flag).evaluate(
        EvalInput("C=O")) for flag in (True, False)}
    assert res[True].extra["scf_hole_placements"] == []
    assert res[True].extra["grid_level"] == 1 and not res[True].extra["degenerate_homo"]
    assert len(res[True].extra["scf"]) == len(res[False].extra["scf"]) == 4
    for key, e in res[False].extra["energies_ev"].items():
        assert res[True].extra["energies_ev"][key] == pytest.approx(e, abs=1e-9 * 27.2114)
    assert res[True].status == res[False].status


def test_cation_state_still_unstable_after_the_cap_is_a_failed_evaluation():
    res = _hcn(scf_guess="default", stability_followups=0, degenerate_holes=False)
    assert res.status == "failed" and not res.retryable and res.values == {}
    assert res.reason.startswith("run: UKS solution of the charge +1 state is unstable")
    assert "after 0 follow-up(s)" in res.reason


def test_dft_on_xtb_geometries_of_hcn_is_still_checked_for_physical_validity():
    """The stable states do not rescue borrowed geometries: GFN2-xTB's HCN+ geometry is not
    a B3LYP minimum, so lambda_cation < 0 and the result is failed as unphysical."""
    res = _hcn()
    assert res.status == "failed" and res.reason.startswith("unphysical: lambda_cation = -")
    v = res.extra["unphysical_values"]
    assert v["ip_adiabatic_kjmol"] > v["ip_vertical_kjmol"]


@pytest.mark.slow
def test_pyridine_cation_lands_in_the_stable_state_from_either_guess():
    """B3LYP/6-31G//GFN2-xTB pyridine: without the stability check PySCF's minao guess put
    the cation at the neutral geometry 0.020 Eh above the stable state (lambda+ 112.0
    instead of 59.4 kJ/mol); with it both guesses agree."""
    res = {m: DftReorgBackend(geometry="xtb", scf_guess=m).evaluate(EvalInput("c1ccncc1"))
           for m in ("default", "auto")}
    assert all(r.ok for r in res.values()), [r.reason for r in res.values()]
    _check_four_point(res["default"])
    lam = [r.values["reorg_energy_kjmol"] for r in res.values()]
    assert lam[0] == pytest.approx(lam[1], abs=0.01) and 55.0 < lam[0] < 65.0
    assert "charge +1 single point" in res["default"].extra["scf_stability"]["followed"]


@pytest.mark.slow
@pytest.mark.parametrize("smiles", ["c1ccccc1", "c1ncncn1"])
def test_exactly_degenerate_cations_give_the_same_energies_from_either_guess(smiles):
    """Benzene and 1,3,5-triazine (degenerate HOMO, several stable broken-symmetry UKS
    cation states): B3LYP/6-31G//GFN2-xTB energies of both guess modes agree to 1e-6 Eh
    (on grid level 1 and without the degenerate-HOMO rules: 9.2e-6 and 7.4e-6 Eh)."""
    res = {m: DftReorgBackend(geometry="xtb", scf_guess=m).evaluate(EvalInput(smiles))
           for m in ("default", "auto")}
    e_def, e_auto = (res[m].extra["energies_ev"] for m in ("default", "auto"))
    for key in e_def:
        assert e_auto[key] == pytest.approx(e_def[key], abs=1e-6 * 27.2114)
    for r in res.values():  # grid level 3; both cation states sit at a degenerate-HOMO geometry
        assert r.extra["grid_level"] == 3 and len(r.extra["scf_hole_placements"]) == 2
