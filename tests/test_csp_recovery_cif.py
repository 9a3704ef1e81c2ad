"""benchmarks/csp_recovery.py --cif FILE --smiles SMILES [--name NAME]: a crystal of one's own
is searched, matched and relaxed as the COD systems are, into a results file of its own
(--out DIR); bad input is a one-line error."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
BENZENE = ROOT / "data/reference/cod/COD_2100348_benzene_I.cif"


@pytest.fixture
def recovery(monkeypatch):
    """The module with its system tables restored after the test (--cif registers into them)."""
    import csp_recovery

    monkeypatch.setattr(csp_recovery, "SYSTEMS", dict(csp_recovery.SYSTEMS))
    monkeypatch.setattr(csp_recovery, "COD_FILES", dict(csp_recovery.COD_FILES))
    return csp_recovery


def _silicon_cif(path):
    from pymatgen.core import Lattice, Structure

    Structure(Lattice.cubic(5.43), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]]).to(filename=str(path))
    return path


@pytest.mark.parametrize("case, expected", [
    ("missing", "no such file"),
    ("smiles", "are not a whole number of --smiles 'c1ccncc1' molecules"),
    ("bad_smiles", "--smiles: "),
    ("garbage", "not a readable crystal file"),
    ("element", "element(s) Si not supported by the force field"),
    ("no_smiles", "--cif FILE needs --smiles"),
    ("builtin_name", "--name 'urea' is a built-in system"),
])
def test_bad_input_is_a_one_line_error(recovery, tmp_path, capsys, case, expected):
    cif, smiles, extra = str(BENZENE), "c1ccccc1", []
    if case == "missing":
        cif = str(tmp_path / "absent.cif")
    elif case == "smiles":
        smiles = "c1ccncc1"
    elif case == "bad_smiles":
        smiles = "c1cc"
    elif case == "garbage":
        cif = str(tmp_path / "g.cif")
        (tmp_path / "g.cif").write_text("data_x\nnot a cif at all\n")
    elif case == "element":
        cif = str(_silicon_cif(tmp_path / "si.cif"))
    elif case == "builtin_name":
        extra = ["--name", "urea"]
    args = ["--cif", cif] + ([] if case == "no_smiles" else ["--smiles", smiles]) + extra
    rc = recovery.main(args + ["--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert expected in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_user_cif_is_searched_matched_and_relaxed(recovery, tmp_path, capsys):
    """COD benzene I given as a user's CIF (10 trials, no baseline: ~7 s): found, its relaxed
    experiment fitted, the row and the files under the user's name; the committed result untouched."""
    committed = ROOT / "benchmarks/results/csp_recovery.json"
    before = committed.read_bytes() if committed.is_file() else None
    out = tmp_path / "out"
    rc = recovery.main(["--cif", str(BENZENE), "--smiles", "c1ccccc1", "--name", "mybenz", "--n-trials", "10",
                        "--no-baseline", "--out", str(out)])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["csp_recovery_n-10_cif-mybenz_nobase.json",
                                                     "csp_recovery_n-10_cif-mybenz_nobase_progress.jsonl"]
    row = json.loads((out / "csp_recovery_n-10_cif-mybenz_nobase.json").read_text())["systems"][0]
    assert row["system"] == "mybenz" and row["experimental"].startswith("Pbca (Z=4")
    assert row["blind"]["found"] and row["blind"]["start"] == "SMILES"
    assert "error" not in row["blind"]["relaxed_experiment"]
    assert (committed.read_bytes() if committed.is_file() else None) == before
