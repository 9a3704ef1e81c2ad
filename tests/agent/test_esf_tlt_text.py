"""How status names a mobility that comes from transient localisation theory (outside Marcus
hopping's regime, sim_backends/tlt.py): the global-minimum line says so and gives the hopping
value beside it; a hopping value or an older record says nothing extra. Fast: no calculation."""

from __future__ import annotations

from agent.esf_report import XTB_LAMBDA_CAVEAT, _model_of, _model_text
from sim_backends.mobility import transient_localisation_note
from sim_backends.tlt import DISORDER_RATIO, HBAR_OVER_TAU_MEV, TLT_NAME

NOTE = transient_localisation_note("hole", {"disorder_ratio": DISORDER_RATIO, "hbar_over_tau_meV": HBAR_OVER_TAU_MEV})


def test_a_tlt_structure_is_named_with_its_hopping_value():
    gm = {"mobility_hole_cm2Vs": 0.69, "transport_model": TLT_NAME, "mobility_hole_marcus_cm2Vs": 0.772}
    assert _model_text(gm) == f" ({TLT_NAME}; Marcus hopping 7.7e-01 cm2/(V s))"
    assert _model_text({**gm, "mobility_hole_marcus_cm2Vs": None}) == f" ({TLT_NAME})"
    assert _model_text({"mobility_hole_cm2Vs": 0.69, "transport_model": "Marcus hopping"}) == ""
    assert _model_text({"mobility_hole_cm2Vs": 0.69}) == ""  # records made before TLT


def test_a_structure_stage_result_is_read_as_tlt_from_its_note():
    details = {"hole": {"model": TLT_NAME, "exact": {"iso": 2.4}}}
    assert _model_of([NOTE], details) == {"transport_model": TLT_NAME, "mobility_hole_marcus_cm2Vs": 2.4}
    assert _model_of([NOTE], None) == {"transport_model": TLT_NAME, "mobility_hole_marcus_cm2Vs": None}  # reused
    assert _model_of(["hole: 2-fold degenerate frontier manifold ..."], details) == {}
    assert _model_of(None, None) == {}


def test_the_xtb_lambda_caveat_names_the_regime_model():
    assert "transient-localisation" in XTB_LAMBDA_CAVEAT and "warnings frequent" not in XTB_LAMBDA_CAVEAT
