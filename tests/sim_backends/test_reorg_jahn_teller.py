"""GFN2-xTB lambda+ of molecules with a degenerate HOMO: the cation at a low electronic
temperature (sim_backends/reorg.py, ``degenerate_cation_temperature_K``), real tblite."""

import pytest

from sim_backends.base import EvalInput, ParamsError
from sim_backends.reorg import (JAHN_TELLER_RESOLVED, XtbReorgBackend, jahn_teller_resolved)

TRIPHENYLENE = "c1ccc2c(c1)c1ccccc1c1ccccc21"
NAPHTHALENE = "c1ccc2ccccc2c1"
BENZENE = "c1ccccc1"


def _pair(smiles):
    """(default backend, the low-temperature cation turned off)."""
    return (XtbReorgBackend().evaluate(EvalInput(smiles)),
            XtbReorgBackend(degenerate_cation_temperature_K=0).evaluate(EvalInput(smiles)))


def test_degenerate_homo_cation_relaxes_at_10_K_and_lambda_grows():
    """Triphenylene's HOMO is a degenerate pair: at 300 K the smeared hole keeps the cation
    symmetric; at 10 K from a displaced start it distorts, so lambda+ grows (GFN2-xTB
    4.8 -> 8.9 kJ/mol), and the result is still physically valid (both components >= 0,
    IP_adiabatic <= IP_vertical)."""
    low, off = _pair(TRIPHENYLENE)
    assert low.ok and off.ok, (low.reason, off.reason)
    assert low.extra["hole_manifold"]["n"] == 2
    assert low.extra["jahn_teller"] == JAHN_TELLER_RESOLVED.format(10.0)
    assert jahn_teller_resolved(low.extra["jahn_teller"])
    assert low.extra["cation"]["electronic_temperature_K"] == 10.0
    assert "jahn_teller" not in off.extra
    assert low.values["reorg_energy_kjmol"] > off.values["reorg_energy_kjmol"] + 2.0
    assert low.values["lambda_cation_kjmol"] > 0 and low.values["lambda_neutral_kjmol"] > 0
    assert low.values["ip_adiabatic_kjmol"] <= low.values["ip_vertical_kjmol"]


def test_non_degenerate_homo_is_bitwise_unchanged():
    """Naphthalene (single HOMO): the same values, bit for bit, with the test on or off;
    only the test's record is added."""
    on, off = _pair(NAPHTHALENE)
    assert on.ok and off.ok
    assert on.values == off.values
    assert on.extra["energies_ev"] == off.extra["energies_ev"]
    assert on.extra["hole_manifold"]["n"] == 1 and "jahn_teller" not in on.extra


def test_failed_low_temperature_scf_falls_back_to_300_K_and_says_so():
    """Benzene's 10 K cation SCF does not converge: the 300 K result is returned, unchanged,
    and ``extra["jahn_teller"]`` names the failure (never a silent change)."""
    on, off = _pair(BENZENE)
    assert on.ok and off.ok
    assert on.values == off.values
    status = on.extra["jahn_teller"]
    assert status.startswith("unresolved: 10 K cation") and "SCF" in status and status.endswith("300 K value")
    assert not jahn_teller_resolved(status)


@pytest.mark.parametrize("bad", [-1.0, 301.0, "10"])
def test_degenerate_cation_temperature_is_checked(bad):
    with pytest.raises(ParamsError, match="degenerate_cation_temperature_K"):
        XtbReorgBackend.check_params({"degenerate_cation_temperature_K": bad})
    XtbReorgBackend.check_params({"degenerate_cation_temperature_K": 0})  # off
