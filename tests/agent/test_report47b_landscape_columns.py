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


def _described(report):
    return list(csv.DictReader((report / "results_columns.csv").open()))


def test_results_columns_describe_both_landscape_tables(runs):  # noqa: F811
    """``results_columns.csv`` described results.csv (and esf_results.csv) only; the landscape
    tables' columns now follow, under ``file`` = ``landscape_model_m<id>.csv`` and
    ``structures/landscape_m<id>.csv``, in each table's own order."""
    from agent.cli import main

    assert main(["report", "rep", "--runs-dir", str(runs)]) == 0
    report = runs / "rep" / "report"
    described = _described(report)
    assert all(r["description"] for r in described)
    assert [r["file"] for r in described][0] == "results.csv"
    for pattern, table in (("landscape_model_m<id>.csv", report.glob("landscape_model_m*.csv")),
                           ("structures/landscape_m<id>.csv", (runs / "rep" / "structures").glob("landscape_m*.csv"))):
        (path,) = table
        with path.open() as fh:
            header = next(csv.reader(fh))
        assert [r["column"] for r in described if r["file"] == pattern] == header, pattern
    model = {r["column"]: r for r in described if r["file"] == "landscape_model_m<id>.csv"}
    energy = model["dE_predicted_replay-crystal_kJmol_per_mol"]
    assert energy["unit"] == "kJ/mol per molecule" and energy["level_of_theory"]
    assert "no free-energy level" in model["dG_kJmol_per_mol"]["description"]
    structures = {r["column"]: r for r in described if r["file"] == "structures/landscape_m<id>.csv"}
    assert structures["density_gcm3"]["unit"] == "g/cm3"
    assert "inversion centre" in structures["Z_prime"]["description"]
    assert structures["E_replay-csp_kJmol_per_mol"]["level_of_theory"] == model["dE_replay-csp_kJmol_per_mol"][
        "level_of_theory"] != ""


def test_landscape_headers_are_the_described_columns(camp, tmp_path):  # noqa: F811
    """One column list per table writes its header and describes it (as ESF_COLUMNS does)."""
    from agent.landscape_io import structures_table_columns, write_campaign_structures
    from agent.report import landscape_model_columns, landscape_table

    (mol_id,) = camp.stage.landscapes
    with landscape_table(camp, mol_id, tmp_path / "model.csv").open() as fh:
        assert next(csv.reader(fh)) == [c["column"] for c in landscape_model_columns(camp)]
    write_campaign_structures(camp, tmp_path / "structures")
    with (tmp_path / "structures" / f"landscape_m{mol_id}.csv").open() as fh:
        assert next(csv.reader(fh)) == [c["column"] for c in structures_table_columns(camp)]
