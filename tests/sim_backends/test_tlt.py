"""Transient localisation theory (sim_backends/tlt.py) against its analytic limits, and its
place in crystal_mobility: the model of carriers outside Marcus hopping's regime. Fast:
synthetic networks, no SCF."""

from __future__ import annotations

import numpy as np
import pytest

from sim_backends.base import SetupError
from sim_backends.mobility import (CM2_PER_A2, EV_PER_KJMOL, HBAR_EVS, KB_EVK, MARCUS_NAME, crystal_mobility,
                                   transient_localisation_note)
from sim_backends.tlt import TLT_NAME, supercell_size, tlt_mobility, tlt_network_mobility
from sim_backends.transfer import CrystalTransfer, DimerTransfer

SQUARE = [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0)]


def square(j_meV: float = 80.0, a: float = 5.0) -> dict:
    return {"z": 1, "sources": [0] * 4, "targets": [0] * 4, "shifts": SQUARE,
            "vectors_A": np.array(SQUARE, dtype=float) * a, "j_meV": [j_meV] * 4}


def test_without_disorder_it_is_the_drude_band_mobility():
    """A 1D chain, no disorder: Bloch states, mu = e tau <v^2> / (k_B T) with
    v_k = 2 J a sin(k a) / hbar and tau = hbar / (hbar/tau), Boltzmann-weighted."""
    j, a, t, n = 50.0, 4.0, 300.0, 400
    r = tlt_network_mobility(1, [0, 0], [0, 0], [(1, 0, 0), (-1, 0, 0)], [[a, 0, 0], [-a, 0, 0]], [j, j], t,
                             disorder_ratio=0.0, hbar_over_tau_meV=5.0, supercell=(n, 1, 1), n_samples=1)
    k = 2 * np.pi * np.arange(n) / n
    e = -2e-3 * j * np.cos(k)
    w = np.exp(-(e - e.min()) / (KB_EVK * t))
    w /= w.sum()
    v = 2e-3 * j * a * np.sin(k) / HBAR_EVS  # A/s
    drude = (w * v**2).sum() * (HBAR_EVS / 5e-3) * CM2_PER_A2 / (KB_EVK * t)
    assert r.tensor_cm2Vs[0, 0] == pytest.approx(drude, rel=1e-9)
    assert r.tensor_cm2Vs[1, 1] == 0.0 and r.tensor_cm2Vs[2, 2] == 0.0


def test_high_temperature_and_fast_relaxation_limit_is_the_current_sum_rule():
    """k_B T and hbar/tau far above the bandwidth: L^2_xx -> (2 / (hbar/tau)^2) <j_x^2> with
    every state equally weighted, <j_x^2> = (1/N) sum_pq H_pq^2 x_pq^2 = 2 J^2 a^2 on a square
    lattice; independent of the eigenvectors."""
    j, a, gamma = 80.0, 5.0, 5000.0  # meV
    t = 1e8
    r = tlt_network_mobility(**square(j, a), temperature_K=t, disorder_ratio=0.0, hbar_over_tau_meV=gamma,
                             supercell=(10, 10, 1), n_samples=1)
    l2 = 2.0 / (1e-3 * gamma) ** 2 * 2.0 * (1e-3 * j) ** 2 * a**2  # A^2
    mu = l2 * 1e-3 * gamma / (2 * HBAR_EVS) * CM2_PER_A2 / (KB_EVK * t)
    assert r.tensor_cm2Vs[0, 0] == pytest.approx(mu, rel=2e-3)
    assert r.tensor_cm2Vs[1, 1] == pytest.approx(mu, rel=2e-3)


def test_disorder_localises_and_lowers_the_mobility():
    """The TLT picture: more thermal disorder, shorter localisation length, lower mobility;
    a layered (2D) network stays 2D (one cell along the unconnected axis, no mobility there)."""
    res = [tlt_network_mobility(**square(), disorder_ratio=d, n_samples=4, seed=1) for d in (0.2, 0.5, 0.8)]
    assert res[0].iso > res[1].iso > res[2].iso > 0
    assert res[0].localisation_length_A > res[1].localisation_length_A > res[2].localisation_length_A
    assert res[1].supercell[2] == 1 and res[1].tensor_cm2Vs[2, 2] == 0.0
    xx, yy = res[1].tensor_cm2Vs[0, 0], res[1].tensor_cm2Vs[1, 1]
    assert xx == pytest.approx(yy, rel=0.15)  # square: isotropic in the plane, to the sampling error
    assert res[1].stderr_iso > 0


def test_supercell_size_and_wrapping_guard():
    assert supercell_size(2, [(0, 0, 0)]) == (1, 1, 1)
    n = supercell_size(2, [(1, 0, 0), (-1, 0, 0), (0, 2, 0), (0, -2, 0)], target_sites=800)
    assert n[2] == 1 and n[0] == n[1] == 20
    assert supercell_size(1, [(3, 0, 0), (-3, 0, 0)], target_sites=4)[0] == 7  # 2 max|shift| + 1
    with pytest.raises(SetupError, match="maps two bonds"):
        tlt_network_mobility(**square(), supercell=(2, 3, 1), n_samples=1)
    with pytest.raises(SetupError, match="above 3000"):
        tlt_network_mobility(**square(), supercell=(60, 60, 1), n_samples=1)


def _transfer(j_meV: float, shifts: bool = True) -> CrystalTransfer:
    """A square layer of one molecule per cell, 5 A apart, all four neighbours one class."""
    d = DimerTransfer(0, 0, (1, 0, 0), 3.5, 5.0, 4, {"j_eff_meV": j_meV}, {"j_eff_meV": 0.5 * j_meV}, 0.0)
    return CrystalTransfer([d], [(0, 0, 0)] * 4, np.array(SQUARE, dtype=float) * 5.0, 1, "test", 0.0,
                           shifts=list(SQUARE) if shifts else [])


def test_crystal_mobility_uses_tlt_only_outside_the_hopping_regime():
    lam = 10.0 * EV_PER_KJMOL  # 104 meV
    inside, details = crystal_mobility(_transfer(20.0), {"hole": lam})
    assert details["hole"]["model"] == MARCUS_NAME and "tlt" not in details["hole"]
    assert inside["mobility_hole_cm2Vs"] == details["hole"]["exact"]["iso"]
    out, details = crystal_mobility(_transfer(80.0), {"hole": lam})  # 2|J| = 160 > 104 meV
    assert details["hole"]["model"] == TLT_NAME
    assert out["mobility_hole_cm2Vs"] == details["hole"]["tlt"]["iso"] != details["hole"]["exact"]["iso"]
    marcus, details = crystal_mobility(_transfer(80.0), {"hole": lam}, transport="marcus")
    assert details["hole"]["model"] == MARCUS_NAME and marcus["mobility_hole_cm2Vs"] == details["hole"]["exact"]["iso"]
    # an older result without the neighbours' shifts keeps the hopping value (its caller warns)
    old, details = crystal_mobility(_transfer(80.0, shifts=False), {"hole": lam})
    assert details["hole"]["model"] == MARCUS_NAME
    with pytest.raises(SetupError, match="lattice shifts"):
        tlt_mobility(_transfer(80.0, shifts=False), "hole")
    # a network whose supercell would be too large keeps the hopping value too, and says why
    far = _transfer(80.0)
    far.shifts = [tuple(6 * np.array(t)) for t in far.shifts]  # reach 6 cells: 13 x 13 x 1 is fine ...
    assert crystal_mobility(far, {"hole": lam})[1]["hole"]["model"] == TLT_NAME
    far.shifts = [(8, 8, 8), (-8, -8, -8), (8, -8, 8), (-8, 8, -8)]  # ... 17^3 is not
    _, details = crystal_mobility(far, {"hole": lam})
    assert details["hole"]["model"] == MARCUS_NAME and "above 3000" in details["hole"]["tlt_error"]
    with pytest.raises(SetupError, match="transport"):
        crystal_mobility(_transfer(80.0), {"hole": lam}, transport="band")


def test_shifts_round_trip_through_a_result_and_the_note_states_the_assumptions():
    tr = _transfer(80.0)
    back = CrystalTransfer.from_extra(tr.to_extra())
    assert back.shifts == tr.shifts
    assert CrystalTransfer.from_extra({k: v for k, v in tr.to_extra().items() if k != "shifts"}).shifts == []
    lam = 10.0 * EV_PER_KJMOL
    _, details = crystal_mobility(tr, {"hole": lam})
    note = transient_localisation_note("hole", details["hole"]["tlt"])
    assert note.startswith("hole: ") and "transient localisation" in note
    assert "0.5 |J| at 300 K" in note and "hbar/tau 5 meV" in note and "hopping value is kept" in note
    # one text for every structure with these settings: a landscape summarises to one line
    _, other = crystal_mobility(_transfer(120.0), {"hole": lam})
    assert transient_localisation_note("hole", other["hole"]["tlt"]) == note


def test_the_structure_stage_mobility_level_reports_tlt_with_a_note_not_a_warning(monkeypatch):
    """mobility-xtb outside the hopping regime: the TLT value, an INFO note with the
    assumptions, no regime warning; the result's level names both models."""
    from sim_backends.base import EvalInput
    from sim_backends.mobility import XtbMobilityBackend

    class FakeTransfer:
        def compute(self, inp):
            return _transfer(80.0)

        def level_of_theory(self, params=None):
            return "GFN2-xTB dimer projection"

    monkeypatch.setattr(XtbMobilityBackend, "_transfer", lambda self: FakeTransfer())
    values, extra = XtbMobilityBackend()._evaluate(EvalInput("c1ccc2cc3ccccc3cc2c1", "cif", "m0001",
                                                             {"lambda_hole_kjmol": 6.0}))
    assert values["mobility_hole_cm2Vs"] == extra["mobility"]["hole"]["tlt"]["iso"]
    assert not [w for w in extra.get("warnings") or [] if "outside its regime" in w]
    assert any("transient localisation" in n for n in extra["notes"])
    assert TLT_NAME in extra["level"] and MARCUS_NAME not in extra["level"]


TRIANGLE = [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (1, 1, 0), (-1, -1, 0)]


def test_signs_matter_on_a_network_with_loops_and_a_phase_flip_does_not():
    """A triangular layer (one molecule per cell): the sign of J is physical (both ends are the
    same molecule's orbital); H = +|J| (frustrated) localises more than H = -|J|. Two molecules
    per cell: flipping one molecule's orbital phase flips all its couplings, a gauge change
    that leaves the mobility exactly as it was."""
    vec = np.array([[5.0, 0, 0], [-5.0, 0, 0], [2.5, 4.33, 0], [-2.5, -4.33, 0], [7.5, 4.33, 0], [-7.5, -4.33, 0]])
    kw = {"z": 1, "sources": [0] * 6, "targets": [0] * 6, "shifts": TRIANGLE, "vectors_A": vec, "n_samples": 2}
    plus = tlt_network_mobility(j_meV=[80.0] * 6, **kw)
    minus = tlt_network_mobility(j_meV=[-80.0] * 6, **kw)
    assert minus.iso < 0.8 * plus.iso
    # Z = 2: a chain A-B-A-B with alternating signs of the A->B and B->A' bonds
    kw2 = {"z": 2, "sources": [0, 1, 1, 0], "targets": [1, 0, 0, 1],
           "shifts": [(0, 0, 0), (0, 0, 0), (1, 0, 0), (-1, 0, 0)],
           "vectors_A": [[3.0, 0, 0], [-3.0, 0, 0], [3.0, 0, 0], [-3.0, 0, 0]], "n_samples": 3, "seed": 4}
    a = tlt_network_mobility(j_meV=[60.0, 60.0, -40.0, -40.0], **kw2)
    b = tlt_network_mobility(j_meV=[-60.0, -60.0, 40.0, 40.0], **kw2)  # molecule B's phase flipped
    assert a.iso == pytest.approx(b.iso, rel=1e-9)


def test_carrier_couplings_use_signs_only_where_they_are_consistent():
    from sim_backends.tlt import SIGNS_DEGENERATE, SIGNS_NOT_RESOLVED, SIGNS_USED, carrier_couplings

    d = DimerTransfer(0, 0, (1, 0, 0), 3.5, 5.0, 4, {"j_eff_meV": -30.0}, {"j_eff_meV": 20.0}, 0.0)
    tr = CrystalTransfer([d], [(0, 0, 0)] * 4, np.array(SQUARE, dtype=float) * 5.0, 1, "test", 0.0,
                         manifolds={c: {"n": 1} for c in ("hole", "electron")}, shifts=list(SQUARE))
    j, signs = carrier_couplings(tr, "hole")
    assert signs == SIGNS_USED and list(j) == [-30.0] * 4  # H_hole = -H_HOMO: H_pq = -j = +30
    j, signs = carrier_couplings(tr, "electron")
    assert signs == SIGNS_USED and list(j) == [-20.0] * 4  # H_LUMO_pq = +20 = -j
    tr.manifolds["hole"] = {"n": 2}  # a degenerate HOMO: J_eff has no sign, and one orbital stands for two
    assert carrier_couplings(tr, "hole") == (pytest.approx([30.0] * 4), SIGNS_DEGENERATE)
    assert "rotation-invariant" in SIGNS_DEGENERATE and "multi-band" in SIGNS_DEGENERATE
    tr.manifolds["hole"], tr.z = {"n": 1}, 4  # four molecules: class reuse does not keep phases
    assert carrier_couplings(tr, "hole")[1] == SIGNS_NOT_RESOLVED
    assert tlt_mobility(_transfer(80.0), "hole", n_samples=1).signs == SIGNS_USED
