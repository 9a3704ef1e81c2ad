"""benchmarks/molecule_decisions.py --table CSV: a user's replay table (layout of
data/benchmarks/reorg_pool60.csv) is run as a data set of part (b), described as user data at
its path, written to its own result file; a malformed table is a one-line error."""

from __future__ import annotations

import csv
import json
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

COLUMNS = ["smiles", "name", "xtb_reorg_kjmol", "dft_reorg_kjmol", "xtb_wall_s", "dft_wall_s", "xtb_cpu_s", "dft_cpu_s"]


def _table(path, n: int = 12, drop: str | None = None, edit: dict | None = None):
    """The first ``n`` rows of reorg_pool60.csv, without column ``drop``, with ``edit``
    {(row index, column): text} applied."""
    with (ROOT / "data/benchmarks/reorg_pool60.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))[:n]
    for (i, col), text in (edit or {}).items():
        rows[i][col] = text
    cols = [c for c in COLUMNS if c != drop]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def _run(capsys, *args: str) -> tuple[int, str, str]:
    import molecule_decisions

    rc = molecule_decisions.main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_non_numeric_value_names_file_row_and_column(tmp_path, capsys):
    bad = _table(tmp_path / "bad.csv", edit={(2, "dft_reorg_kjmol"): "n/a"})
    rc, _, err = _run(capsys, "--skip-timing", "--table", str(bad))
    assert rc == 2
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert f"{bad} row 3 (line 4), column dft_reorg_kjmol: 'n/a' is not a number" in err


def test_missing_cost_column_is_an_error_not_an_empty_run(tmp_path, capsys):
    bad = _table(tmp_path / "nocost.csv", drop="dft_cpu_s")
    rc, out, err = _run(capsys, "--skip-timing", "--table", str(bad))
    assert rc == 2 and "budget 0 CPU s" not in out
    assert err.strip().count("\n") == 0 and "missing cost column(s) dft_cpu_s" in err
    rc, _, err = _run(capsys, "--skip-timing", "--table", str(tmp_path / "absent.csv"))
    assert rc == 2 and "absent.csv: no such file" in err


def test_user_table_runs_as_its_own_data_set(tmp_path, capsys, monkeypatch):
    import molecule_decisions

    monkeypatch.setattr(molecule_decisions, "RESULT", tmp_path / "molecule_decisions.json")
    mine = _table(tmp_path / "mine.csv")
    rc, out, _ = _run(capsys, "--skip-timing", "--seeds", "1", "--budget-fractions", "0.5", "--table", str(mine))
    assert rc == 0
    assert not (tmp_path / "molecule_decisions.json").exists()  # never the default result file
    result = tmp_path / "molecule_decisions_budget-fractions-0.5_seeds-1_skip-timing_table-mine.json"
    quality = json.loads(result.read_text())["quality"]
    assert list(quality) == ["table-mine"]  # only the user's table, not the shipped ones
    part = quality["table-mine"]
    assert part["source"] == str(mine) and part["n_molecules"] == sum(
        bool(r["dft_reorg_kjmol"]) for r in csv.DictReader(mine.open())) and part["cost_charged"] == "recorded cpu s"
    assert f"user data: {mine}" in part["level"]
    assert "UKS" not in out.replace("\n", " ") and "user data" in out
