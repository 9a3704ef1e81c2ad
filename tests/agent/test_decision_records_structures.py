"""newuser49 #5 for the structure stage: its CSP and structure-level tasks say why they were
chosen too, so a new campaign's ``report/decisions.csv`` has no "not recorded" row.

The campaign is the replayed formamide one of ``test_report_structure_stage`` (CSP, then
structures picked by the structure acquisition)."""

from __future__ import annotations

import csv

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
