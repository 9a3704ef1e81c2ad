"""The report's ``landscape_model_m<id>.csv`` has the ``Z_prime`` column of the structures'
``landscape_m<id>.csv`` (newuser46b #11), formatted the same way.

The campaign is the replayed formamide one of ``test_report_structure_stage`` (its report
written by the run)."""

from __future__ import annotations

import csv

from test_report_structure_stage import camp, runs  # noqa: F401 - the campaign fixtures


def test_landscape_model_table_has_z_prime_as_the_structures_table(camp, tmp_path, monkeypatch):  # noqa: F811
    import agent.summary
    from agent.landscape_io import write_campaign_structures
    from agent.report import landscape_table

    rows_of = agent.summary.landscape_rows

    def on_inversion_centre(campaign, mol_id):  # the first structure at Z' = 1/2
        rows = rows_of(campaign, mol_id)
        rows[0] = {**rows[0], "z_prime": 0.5}
        return rows

    monkeypatch.setattr(agent.summary, "landscape_rows", on_inversion_centre)
    (mol_id,) = camp.stage.landscapes
    model = list(csv.DictReader(landscape_table(camp, mol_id, tmp_path / "model.csv").open()))
    write_campaign_structures(camp, tmp_path / "structures")
    ref = {r["id"]: r["Z_prime"] for r in csv.DictReader((tmp_path / "structures" / f"landscape_m{mol_id}.csv").open())}
    assert {r["id"]: r["Z_prime"] for r in model} == ref
    assert ref[camp.stage.landscapes[mol_id].ids[0]] == "0.5"
