"""newuser50 #9: the transient-localisation assumptions are said once above the molecules, not
on every molecule's INFO line (8 times, ~350 characters each, in the demo's status)."""

from __future__ import annotations


def _note(signs: str, count: str) -> str:
    from sim_backends.mobility import transient_localisation_note

    return transient_localisation_note("hole", {"disorder_ratio": 0.5, "hbar_over_tau_meV": 5.0,
                                                "signs": signs}) + f" ({count} structures)"


def test_tlt_assumptions_once_and_each_molecule_keeps_its_own_part():
    from agent.esf_report import _tlt_common, _tlt_short
    from sim_backends.tlt import SIGNS_DEGENERATE, SIGNS_NOT_RESOLVED, SIGNS_USED

    notes = [_note(SIGNS_USED, "3 of 6"), _note(SIGNS_NOT_RESOLVED, "2 of 6"), _note(SIGNS_DEGENERATE, "6 of 6")]
    records = [{"notes": [n]} for n in notes] + [{"notes": ["hole: 2-fold degenerate frontier manifold (6 of 6 structures)"]}]
    common = _tlt_common(records)
    assert common is not None and "hbar/tau 5 meV" in common[1] and common[0].startswith("hole: 2|J| > lambda")
    short = [_tlt_short(n, common) for n in notes]
    assert short[0] == f"hole: TLT (above); {SIGNS_USED} (3 of 6 structures)"
    assert short[1] == f"hole: TLT (above); {SIGNS_NOT_RESOLVED} (2 of 6 structures)"
    assert short[2] == f"hole: TLT (above); {SIGNS_DEGENERATE} (6 of 6 structures)"
    other = records[-1]["notes"][0]
    assert _tlt_short(other, common) == other  # any other note as it is


def test_different_tlt_constants_are_not_merged():
    from agent.esf_report import _tlt_common, _tlt_short
    from sim_backends.mobility import transient_localisation_note
    from sim_backends.tlt import SIGNS_USED

    a = _note(SIGNS_USED, "1 of 6")
    b = transient_localisation_note("hole", {"disorder_ratio": 0.3, "hbar_over_tau_meV": 5.0, "signs": SIGNS_USED})
    assert _tlt_common([{"notes": [a]}, {"notes": [b]}]) is None
    assert _tlt_short(a, None) == a
