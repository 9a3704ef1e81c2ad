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
    assert res.backend_version.startswith("1+tblite-")
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
    assert res.backend_version.startswith("1+pyscf-")
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
    unchecked = _hcn(scf_guess="default", stability_check=False)
    default, auto = _hcn(scf_guess="default"), _hcn(scf_guess="auto")
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


def test_cation_state_still_unstable_after_the_cap_is_a_failed_evaluation():
    res = _hcn(scf_guess="default", stability_followups=0)
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
