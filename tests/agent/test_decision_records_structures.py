"""newuser49 #5 for the structure stage: its CSP and structure-level tasks say why they were
chosen too, so a new campaign's ``report/decisions.csv`` has no "not recorded" row.

The campaign is the replayed formamide one of ``test_report_structure_stage`` (CSP, then
structures picked by the structure acquisition)."""

from __future__ import annotations

import csv

import pytest

from test_report_structure_stage import camp, runs  # noqa: F401 - the campaign fixtures


def test_structure_stage_tasks_say_why(camp, tmp_path):  # noqa: F811
    from agent.report import decisions_table

    events = camp.store.events("submitted")
    assert events
    by_backend = {}
    for e in events:
        by_backend.setdefault(e["backend"], set()).add((e.get("why") or {}).get("rule"))
    assert None not in set().union(*by_backend.values()), by_backend
    refine = camp.stage.refine.name
    assert any(r.startswith("structure acquisition") for r in by_backend[refine])
    assert any(r.startswith("CSP of a molecule") for r in by_backend[camp.stage.cfg.csp.name])
    path = decisions_table(camp, tmp_path / "decisions.csv")
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(events) and "not recorded" not in {r["rule"] for r in rows}
    for r in rows:  # the unit of each row's acquisition value
        if r["rule"].startswith("structure acquisition") and r["acquisition_value"]:
            assert r["value_unit"] == "probability" and r["detail"].startswith("cheap-level rank ")
        elif not r["acquisition_value"]:
            assert r["value_unit"] == ""


def test_structure_acquisition_rows_name_their_branch(camp):  # noqa: F811
    """Each structure-acquisition task says which branch chose it; a utility's pick carries its
    probability of the low-energy set, the index and the cost, and index = p / cost."""
    rows = [(e.get("why") or {}) for e in camp.store.events("submitted")
            if e["backend"] == camp.stage.refine.name]
    rules = [w["rule"] for w in rows]
    assert all(r.startswith("structure acquisition: ") and "not recorded" not in r for r in rules), rules
    branches = {r.split(": ", 1)[1] for r in rules}
    assert branches <= {"cheap-level order per cost (surrogate not trusted yet)", "surrogate's P(low-energy set) per cost",
                        "exploration when confident", "observed form first", "space-filling initial design",
                        "surrogate and cheap-level order mixed"}, branches
    assert all(w["detail"].startswith("cheap-level rank ") for w in rows)
    priced = [w for w in rows if "value" in w]
    assert priced, rules
    for w in priced:
        assert 0.0 <= w["value"] <= 1.0 and w["cost"] > 0 and w["kind"] == "P(in the low-energy set)"
        assert w["rate"] == pytest.approx(w["value"] / w["cost"], rel=1e-9)
