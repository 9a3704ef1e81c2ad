"""``results_columns.csv`` describes the columns of ``esf_results.csv`` too (newuser46b #11):
it described only ``results.csv``, so ``boltzmann_weight_with_mobility`` or
``n_with_predicted_energy_in_window`` had no description. Each row now names its table
(``file``).

The campaign is the pyrazine one of ``test_esf_predicted_energies`` (its report written by
the run)."""

from __future__ import annotations

import csv

from test_esf_predicted_energies import camp, runs  # noqa: F401 - the campaign fixtures


def test_results_columns_describe_every_column_of_both_tables(runs):  # noqa: F811
    report = runs / "p" / "report"
    described = list(csv.DictReader((report / "results_columns.csv").open()))
    assert described and all(r["description"] for r in described)
    for table in ("results.csv", "esf_results.csv"):
        with (report / table).open() as fh:
            rows = list(csv.reader(fh))
        header = rows[0]
        assert [r["column"] for r in described if r["file"] == table] == header, table
        assert all(len(row) == len(header) for row in rows), table  # every row as wide as the header
    esf = {r["column"]: r for r in described if r["file"] == "esf_results.csv"}
    assert esf["mobility_hole_cm2Vs"]["unit"] == "cm2/(V s)"
    assert esf["boltzmann_weight_with_mobility"]["unit"] == "0-1"
    assert "counts structures with a mobility only" in esf["n_with_predicted_energy_in_window"]["description"]


def test_esf_table_header_is_the_described_columns(tmp_path):
    from agent.esf_report import ESF_COLUMNS, write_esf_table

    path = write_esf_table([], tmp_path / "esf_results.csv")
    assert next(csv.reader(path.open())) == [c["column"] for c in ESF_COLUMNS]
