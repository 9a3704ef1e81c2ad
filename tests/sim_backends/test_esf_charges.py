"""The ESF landscape levels' CSP charges (RESP by default, named in the level and the CIF
header) and the hopping-regime warning (2 |J|max > lambda+). Fast: no CSP, no SCF."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sim_backends.base import EvalInput, ParamsError
from sim_backends.esf import (EsfLandscapeBackend, EsfRefinedBackend, ReplayEsfQuickBackend, csp_level,
                              structure_warnings, with_regime_warnings)
from sim_backends.mobility import EV_PER_KJMOL, hopping_regime_warning, split_regime_warning

ANTHRACENE = "c1ccc2cc3ccccc3cc2c1"


@pytest.mark.parametrize("cls", [EsfLandscapeBackend, EsfRefinedBackend])
def test_charges_param_checked_defaults_to_resp_and_named(cls):
    for charges in ("resp", "xtb", "resp-lp"):
        cls.check_params({"charges": charges})
    with pytest.raises(ParamsError, match="charges"):
        cls.check_params({"charges": "mulliken"})
    with pytest.raises(ParamsError, match="charges"):
        cls.check_params({"charges": 1})
    assert cls()._p({})["charges"] == "resp"
    assert "RESP HF/6-31G* charges" in cls().level_of_theory()
    assert "GFN2-xTB Mulliken charges" in cls(charges="xtb").level_of_theory()
    assert "GFN2-xTB Mulliken charges" in cls().level_of_theory({"charges": "xtb"})
    assert "RESP" in csp_level("resp") and "GFN2-xTB Mulliken" in csp_level("xtb")


def test_cost_estimate_includes_the_resp_fit():
    """RESP HF/6-31G* of anthracene (216 basis functions) is ~32 CPU s (measured 31 s);
    xTB charges cost nothing in the estimate; the replays of the xTB-charge data set
    are priced as the xTB-charge level."""
    inp = EvalInput(ANTHRACENE)
    resp, xtb = EsfLandscapeBackend().cost_estimate(inp), EsfLandscapeBackend(charges="xtb").cost_estimate(inp)
    assert resp - xtb == pytest.approx(32.0, rel=0.01)
    assert ReplayEsfQuickBackend().cost_estimate(inp) == pytest.approx(xtb)


def _transfer(j_hole_meV: list[float]) -> SimpleNamespace:
    """The parts of a CrystalTransfer structure_warnings reads."""
    return SimpleNamespace(warnings=[], manifolds={"hole": {"n": 1}},
                           dimers=[SimpleNamespace(hole={"j_eff_meV": j}) for j in j_hole_meV])


def test_regime_warning_only_when_2j_exceeds_lambda():
    lam_kjmol = 6.0  # 62.2 meV
    lam_meV = 1e3 * lam_kjmol * EV_PER_KJMOL
    inside = structure_warnings(_transfer([10.0, -30.0]), "GFN2-xTB", None, lam_kjmol)
    assert inside == []
    outside = structure_warnings(_transfer([10.0, -40.0]), "GFN2-xTB", None, lam_kjmol)
    assert len(outside) == 1 and outside[0].startswith("hole: ")
    assert "outside its regime" in outside[0] and f"= {80.0 / lam_meV:.2f}" in outside[0]
    assert structure_warnings(_transfer([40.0]), "GFN2-xTB", None) == []  # no lambda+: nothing to compare
    assert hopping_regime_warning("hole", 0.5 * lam_meV, lam_meV / 1e3) is None  # 2|J| = lambda: the edge
    key, ratio = split_regime_warning(outside[0])
    assert ratio == pytest.approx(80.0 / lam_meV, abs=0.01) and "2|J|max/lambda =" not in key
    assert split_regime_warning("hole: something else") == ("hole: something else", None)


def test_stored_structures_get_the_warning_once_and_status_summarises_it():
    from agent.esf_report import hole_warnings

    structures = [{"id": "m0001", "j_hole_max_meV": 84.2, "warnings": []},
                  {"id": "m0002", "j_hole_max_meV": 106.9},
                  {"id": "m0003", "j_hole_max_meV": 20.0, "warnings": ["hole: other"]},
                  {"id": "m0004", "error": "no contacts"}]
    lam_kjmol = 63.0 / (1e3 * EV_PER_KJMOL)
    out = with_regime_warnings(structures, lam_kjmol)
    assert [len(s.get("warnings") or []) for s in out] == [1, 1, 1, 0]
    assert out[2]["warnings"] == ["hole: other"] and "warnings" not in structures[1]  # copies
    assert with_regime_warnings(out, lam_kjmol) == out  # not added twice
    lines = hole_warnings(s.get("warnings") for s in out)
    regime = [w for w in lines if "outside its regime" in w]
    assert len(regime) == 1 and "2|J|max/lambda up to 3.39; 2 of 4 structures" in regime[0], lines
    assert "hole: other (1 of 4 structures)" in lines


def _chain(j_meV: float):
    """A 1D chain of one molecule per cell, 5 A apart, hole and electron coupling ``j_meV``."""
    import numpy as np

    from sim_backends.transfer import CrystalTransfer, DimerTransfer

    c = {"j_eff_meV": j_meV}
    dimer = DimerTransfer(0, 0, (1, 0, 0), 3.5, 5.0, 2, dict(c), dict(c), 0.0)
    return CrystalTransfer([dimer], [(0, 0, 0), (0, 0, 0)], np.array([[5.0, 0, 0], [-5.0, 0, 0]]), 1,
                           "GFN2-xTB", 0.0, {"hole": 500.0, "electron": 500.0},
                           {c: {"n": 1, "splitting_meV": 0.0, "gap_meV": 500.0} for c in ("hole", "electron")})


@pytest.mark.parametrize(("j_meV", "warned"), [(20.0, False), (80.0, True)])
def test_structure_stage_mobility_level_warns(monkeypatch, j_meV, warned):
    """mobility-xtb (the structure stage's property level) attaches the warning to its
    result's ``extra["warnings"]``, which status reads; lambda+ 6 kJ/mol = 62 meV."""
    from sim_backends.mobility import XtbMobilityBackend

    class FakeTransfer:
        def compute(self, inp):
            return _chain(j_meV)

        def level_of_theory(self, params=None):
            return "GFN2-xTB dimer projection"

    monkeypatch.setattr(XtbMobilityBackend, "_transfer", lambda self: FakeTransfer())
    values, extra = XtbMobilityBackend()._evaluate(EvalInput(ANTHRACENE, "cif", "m0001",
                                                             {"lambda_hole_kjmol": 6.0}))
    regime = [w for w in extra["warnings"] if "outside its regime" in w]
    assert values["j_hole_max_meV"] == pytest.approx(j_meV)
    assert len(regime) == int(warned) and all(w.startswith("hole: ") for w in regime)  # no lambda-: no electron test


def test_esf_space_groups_are_checked_at_config_time():
    """newuser37 M3: a misspelt group ('P2_1/q') passed the config check and failed every
    evaluation at run time; now refused up front, as csp-ff refuses it."""
    import pytest

    from sim_backends.base import ParamsError
    from sim_backends.registry import backend_class

    for name in ("esf-landscape", "esf-refined"):
        with pytest.raises(ParamsError, match="unsupported space group 'P2_1/q'"):
            backend_class(name).check_params({"space_groups": "P2_1/q"})
        backend_class(name).check_params({"space_groups": "P2_1/c,P-1"})
