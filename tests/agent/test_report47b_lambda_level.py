"""The level text of a GFN2-xTB lambda+ says that a degenerate HOMO's cation is treated at a
low electronic temperature (newuser46b #11): ``results_columns.csv``, ``status`` and the
plots showed "GFN2-xTB four-point lambda+ (tblite), gas phase" for coronene's 6.2 kJ/mol,
which includes the 10 K Jahn-Teller cation relaxation (2.7 kJ/mol at 300 K). The text is a
label only: no stored key holds it."""

from __future__ import annotations

from agent.config import BackendConfig
from agent.summary import level_of_theory


def test_xtb_lambda_level_names_the_degenerate_homo_cation_temperature():
    for name in ("xtb-reorg", "esf-proxy", "esf-landscape", "esf-refined", "replay-esf-refined"):
        level = level_of_theory(BackendConfig(name=name), "reorg_energy_kjmol")
        assert level.startswith("GFN2-xTB four-point lambda+ (tblite), gas phase; "), name
        assert "cation at 10 K electronic temperature where the HOMO is degenerate (Jahn-Teller)" in level, name


def test_other_cation_temperatures_are_named_by_the_level_not_repeated_as_a_setting():
    def level(**params):
        return level_of_theory(BackendConfig(name="xtb-reorg", params=params), "reorg_energy_kjmol")

    off = level(degenerate_cation_temperature_K=0)
    assert off.endswith("; every cation at 300 K electronic temperature (no Jahn-Teller relaxation)")
    assert "10 K" not in off and "degenerate_cation_temperature_K" not in off
    five = level(degenerate_cation_temperature_K=5, fmax=0.02)
    assert five.endswith("cation at 5 K electronic temperature where the HOMO is degenerate (Jahn-Teller) "
                         "(fmax = 0.02)")
    # the defaults given explicitly are the ESF levels' calculation (before their shift): the same text
    from agent.summary import value_computation

    assert level(degenerate_cation_temperature_K=10, seed=0) == value_computation(
        BackendConfig(name="esf-landscape"), "reorg_energy_kjmol")
