"""The replay table of reorganisation energies holds valid molecules only."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

from sim_backends.molecule import validate_smiles

ROOT = Path(__file__).resolve().parents[2]


def _load_script():
    spec = importlib.util.spec_from_file_location("make_reorg_table", ROOT / "benchmarks" / "make_reorg_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_committed_table_has_only_valid_smiles():
    with (ROOT / "data" / "benchmarks" / "reorg_table.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) >= 100
    for row in rows:
        validate_smiles(row["smiles"])  # raises SetupError on a junk row such as "C("


def test_invalid_pool_entries_never_become_rows(tmp_path, capsys):
    pool = tmp_path / "pool.smi"
    pool.write_text("C( broken\nc1ccsc1 thiophene\nc1cc[se]c1 selenophene\nC#Cc1ccccc1 phenylacetylene\n")
    out = tmp_path / "table.csv"
    assert _load_script().main(["--pool", str(pool), "--out", str(out), "--skip-xtb", "--dft-budget-s", "0"]) == 0
    with out.open() as fh:
        smiles = [r["smiles"] for r in csv.DictReader(fh)]
    assert smiles == ["c1ccsc1", "C#Cc1ccccc1"]
    err = capsys.readouterr().err
    assert "skipping pool entry 'broken': invalid SMILES 'C('" in err and "Se" in err
