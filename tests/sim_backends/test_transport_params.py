"""The transport model as level params (newuser: "the transport model and the TLT constants
are not user parameters"): ``transport`` ("auto"/"marcus"), ``tlt_disorder_ratio`` and
``tlt_hbar_over_tau_meV`` on the hopping-mobility backends (mobility-xtb, mobility-dft) and
the ESF landscape levels (esf-landscape, esf-refined), checked like their other params,
threaded to crystal_mobility -> tlt_mobility, stated in the INFO note and the level of
theory, and part of what the structure stage's reuse of an ESF level's mobilities compares.
Fast: a hand-built square-layer CrystalTransfer, a small TLT supercell, no SCF, no CSP."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from sim_backends.base import EvalInput, ParamsError, SetupError
from sim_backends.mobility import (EV_PER_KJMOL, HOPPING_REGIME_TEXT, MARCUS_NAME, TLT_WHERE, crystal_mobility,
                                   transient_localisation_note)
from sim_backends.tlt import TLT_NAME
from sim_backends.transfer import CrystalTransfer, DimerTransfer

SQUARE = [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0)]
#: lambda+ (kJ/mol): 104 meV, below 2|J| = 160 meV of the 80 meV layer (outside hopping's regime)
LAM_KJMOL = 10.0
LAM = {"hole": LAM_KJMOL * EV_PER_KJMOL}
MOLECULE = "c1ccc2cc3ccccc3cc2c1"


def _transfer(j_meV: float = 80.0) -> CrystalTransfer:
    """A square layer of one molecule per cell, 5 A apart, all four neighbours one class."""
    d = DimerTransfer(0, 0, (1, 0, 0), 3.5, 5.0, 4, {"j_eff_meV": j_meV}, {"j_eff_meV": 0.5 * j_meV}, 0.0)
    single = {"n": 1, "splitting_meV": 0.0, "gap_meV": 1000.0}  # one frontier orbital per carrier
    return CrystalTransfer([d], [(0, 0, 0)] * 4, np.array(SQUARE, dtype=float) * 5.0, 1, "test", 0.0,
                           manifolds={"hole": single, "electron": single}, shifts=list(SQUARE))


@pytest.fixture(autouse=True)
def small_tlt(monkeypatch):
    """TLT on a 10 x 10 supercell with 2 realisations (the default 800 sites x 8 take ~10 s)."""
    import sim_backends.tlt as tlt

    full = tlt.tlt_network_mobility
    monkeypatch.setattr(tlt, "tlt_network_mobility",
                        lambda *a, **k: full(*a, **{"target_sites": 100, "n_samples": 2, **k}))


# ---------------------------------------------------------------------------- checks


BAD = [("transport", "band", "'auto', 'marcus'"), ("transport", 1, "'auto', 'marcus'"),
       ("tlt_disorder_ratio", 0.0, "> 0 and <= 2"), ("tlt_disorder_ratio", 2.5, "> 0 and <= 2"),
       ("tlt_disorder_ratio", "0.3", "> 0 and <= 2"), ("tlt_hbar_over_tau_meV", -5.0, "> 0 and <= 100"),
       ("tlt_hbar_over_tau_meV", 1000.0, "> 0 and <= 100"), ("tlt_hbar_over_tau_meV", True, "> 0 and <= 100")]


@pytest.mark.parametrize("backend", ["mobility-xtb", "mobility-dft", "esf-landscape", "esf-refined"])
@pytest.mark.parametrize("key, value, words", BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_a_bad_transport_param_is_a_one_line_params_error(backend, key, value, words):
    from sim_backends.registry import backend_class

    cls = backend_class(backend)
    with pytest.raises(ParamsError) as e:
        cls.check_params({key: value})
    assert e.value.key == key and words in str(e.value) and "\n" not in str(e.value)
    cls.check_params({"transport": "marcus", "tlt_disorder_ratio": 2, "tlt_hbar_over_tau_meV": 0.5})


def test_crystal_mobility_refuses_them_too_instead_of_falling_back_to_hopping():
    """A bad constant is not a TLT failure (which keeps the hopping value): it is refused."""
    for kw, key in (({"tlt_disorder_ratio": -0.1}, "tlt_disorder_ratio"),
                    ({"tlt_hbar_over_tau_meV": 0.0}, "tlt_hbar_over_tau_meV"), ({"transport": "band"}, "transport")):
        with pytest.raises(SetupError, match=f"^{key}: "):
            crystal_mobility(_transfer(), LAM, **kw)


def test_a_campaign_config_with_a_bad_value_is_refused_naming_the_key(tmp_path):
    from agent.config import ConfigError, check_runnable, load_config
    from conftest import write_config

    body = ('objective = "log10_landscape_mobility_hole"\nmax_evaluations = 5\n[tracking]\nenabled = false\n'
            '[[backends]]\nname = "esf-landscape"\nparams = {{ transport = "marcus", {bad} }}\n')
    good = write_config(tmp_path, ["c1ccccc1"], body.format(bad="tlt_hbar_over_tau_meV = 8.0"))
    check_runnable(load_config(good))
    bad = write_config(tmp_path, ["c1ccccc1"], body.format(bad="tlt_disorder_ratio = 0"))
    with pytest.raises(ConfigError, match=r"^config error: backends\.0\.params\.tlt_disorder_ratio: must be"):
        check_runnable(load_config(bad))


# ---------------------------------------------------------------------------- mobility-xtb


def _mobility(monkeypatch, **params):
    from sim_backends.mobility import XtbMobilityBackend

    class FakeTransfer:
        def compute(self, inp):
            assert not set(inp.params) & {"transport", "tlt_disorder_ratio", "tlt_hbar_over_tau_meV"}
            return _transfer()

        def level_of_theory(self, params=None):
            return "GFN2-xTB dimer projection"

    monkeypatch.setattr(XtbMobilityBackend, "_transfer", lambda self: FakeTransfer())
    backend = XtbMobilityBackend(**params)
    values, extra = backend._evaluate(EvalInput(MOLECULE, "cif", "m0001", {"lambda_hole_kjmol": LAM_KJMOL,
                                                                            **params}))
    return values, extra, backend.level_of_theory()


def test_defaults_are_unchanged(monkeypatch):
    direct, details = crystal_mobility(_transfer(), LAM, 300.0)
    assert details["hole"]["model"] == TLT_NAME
    values, extra, level = _mobility(monkeypatch)
    assert values["mobility_hole_cm2Vs"] == direct["mobility_hole_cm2Vs"]
    assert values["mobility_hole_max_cm2Vs"] == direct["mobility_hole_max_cm2Vs"]
    assert extra["notes"] == [transient_localisation_note("hole", details["hole"]["tlt"])]
    assert "0.5 |J| at 300 K" in extra["notes"][0] and "hbar/tau 5 meV" in extra["notes"][0]
    assert level == f"Marcus hopping at 300 K {TLT_WHERE}, GFN2-xTB dimer projection"
    explicit, _, level2 = _mobility(monkeypatch, transport="auto", tlt_disorder_ratio=0.5, tlt_hbar_over_tau_meV=5)
    hole = [k for k in values if "electron" not in k]  # the electron ones are NaN (no lambda-)
    assert {k: explicit[k] for k in hole} == {k: values[k] for k in hole} and level2 == level


def test_marcus_keeps_the_hopping_value_and_its_regime_warning(monkeypatch):
    auto, _, _ = _mobility(monkeypatch)
    values, extra, level = _mobility(monkeypatch, transport="marcus")
    hop = extra["mobility"]["hole"]
    assert hop["model"] == MARCUS_NAME and "tlt" not in hop
    assert values["mobility_hole_cm2Vs"] == hop["exact"]["iso"] != auto["mobility_hole_cm2Vs"]
    assert [w for w in extra["warnings"] if HOPPING_REGIME_TEXT in w and w.startswith("hole: ")]
    assert not extra.get("notes")
    assert level == "Marcus hopping at 300 K, GFN2-xTB dimer projection"
    assert extra["level"].startswith(f"{MARCUS_NAME} at 300 K on ")


def test_the_tlt_constants_change_the_value_and_show_in_the_note_and_the_level(monkeypatch):
    base, _, _ = _mobility(monkeypatch)
    values, extra, level = _mobility(monkeypatch, tlt_disorder_ratio=0.3, tlt_hbar_over_tau_meV=8.0)
    tlt = extra["mobility"]["hole"]["tlt"]
    assert (tlt["disorder_ratio"], tlt["hbar_over_tau_meV"]) == (0.3, 8.0)
    assert values["mobility_hole_cm2Vs"] == tlt["iso"] != base["mobility_hole_cm2Vs"]
    (note,) = extra["notes"]
    assert "0.3 |J| at 300 K" in note and "hbar/tau 8 meV" in note
    assert "|J| fluctuation 0.3 |J| at 300 K, hbar/tau 8 meV)" in level
    # less thermal disorder, longer localisation length, higher mobility (the hbar/tau fixed)
    lower, _ = crystal_mobility(_transfer(), LAM, tlt_disorder_ratio=0.3)
    assert lower["mobility_hole_cm2Vs"] > base["mobility_hole_cm2Vs"]


# ---------------------------------------------------------------------------- ESF levels


class _Min:
    def __init__(self, sid, rel):
        self.id, self.energy_kjmol, self.space_group, self.z = sid, -100.0 + rel, "P2_1/c", 1
        self.structure = SimpleNamespace(density=1.2)

    def cif(self):
        return self.id


@pytest.fixture
def fake_csp(monkeypatch):
    """landscape_record without a CSP or transfer integrals: two structures, both the 80 meV
    square layer (outside hopping's regime with lambda+ 10 kJ/mol)."""
    import sim_backends.csp
    import sim_backends.structures
    import sim_backends.transfer

    minima = [_Min("m1", 0.0), _Min("m2", 1.0)]
    land = type("Land", (), {"minima": minima, "meta": {}, "__len__": lambda self: len(minima)})()
    monkeypatch.setattr(sim_backends.csp, "run_csp", lambda *a, **k: land)
    monkeypatch.setattr(sim_backends.structures, "load_crystal", lambda cif, smiles: cif)
    monkeypatch.setattr(sim_backends.transfer, "crystal_transfer", lambda *a, **k: _transfer())


def _esf(backend: str, **params):
    from sim_backends.registry import get_backend

    r = get_backend(backend, lambda_hole_kjmol=LAM_KJMOL, charges="xtb", energy_sd_kjmol=0.0,
                    **params).evaluate(EvalInput(MOLECULE))
    assert r.ok, r.reason
    return r


@pytest.mark.parametrize("backend", ["esf-landscape", "esf-refined"])
def test_the_esf_levels_take_the_transport_params(fake_csp, backend):
    auto = _esf(backend)
    s = auto.extra["structures"][0]
    direct, _ = crystal_mobility(_transfer(), LAM, 300.0)
    assert s["transport_model"] == TLT_NAME and s["mobility_hole_cm2Vs"] == direct["mobility_hole_cm2Vs"]
    assert any("0.5 |J| at 300 K" in n for n in s["notes"])
    assert auto.extra["level"].startswith(f"Marcus hopping at 300 K {TLT_WHERE}, GFN2-xTB")

    marcus = _esf(backend, transport="marcus")
    s = marcus.extra["structures"][0]
    assert s["transport_model"] == MARCUS_NAME and "mobility_hole_marcus_cm2Vs" not in s
    assert [w for w in s["warnings"] if HOPPING_REGIME_TEXT in w]
    assert not [n for n in s["notes"] if "transient localisation" in n]
    assert marcus.extra["level"].startswith("Marcus hopping at 300 K, GFN2-xTB transfer integrals")
    assert "TLT" not in marcus.extra["level"]
    assert marcus.values["landscape_mobility_hole_cm2Vs"] != auto.values["landscape_mobility_hole_cm2Vs"]

    other = _esf(backend, tlt_disorder_ratio=0.3)
    s = other.extra["structures"][0]
    assert s["transport_model"] == TLT_NAME and any("0.3 |J| at 300 K" in n for n in s["notes"])
    assert other.values["landscape_mobility_hole_cm2Vs"] != auto.values["landscape_mobility_hole_cm2Vs"]
    assert "|J| fluctuation 0.3 |J| at 300 K, hbar/tau 5 meV)" in other.extra["level"]


# ---------------------------------------------------------------------------- reuse


def test_reuse_of_an_esf_mobility_compares_the_transport_params():
    """The structure stage reuses an ESF level's structure mobility only when it would compute
    it the same way: the transport model and the TLT constants are part of that."""
    from agent.stages.properties import _esf_signature, _property_signature

    assert _esf_signature({}) == _property_signature("mobility-xtb", {})
    explicit = {"transport": "auto", "tlt_disorder_ratio": 0.5, "tlt_hbar_over_tau_meV": 5.0}
    assert _esf_signature(explicit) == _property_signature("mobility-xtb", {})
    for change in ({"transport": "marcus"}, {"tlt_disorder_ratio": 0.3}, {"tlt_hbar_over_tau_meV": 8.0}):
        assert _esf_signature(change) != _property_signature("mobility-xtb", {})
        assert _esf_signature({}) != _property_signature("mobility-xtb", change)
        assert _esf_signature(change) == _property_signature("mobility-xtb", change)
