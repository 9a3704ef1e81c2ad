"""benchmarks/x23_lattice.py on crystals of one's own: --data DIR in the layout of
data/reference/x23, the shipped X23 member of data/reference/x23_extra by name, results in a file
of their own (--out DIR), and bad data as a one-line error."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))


def _crystal(name: str = "ammonia"):
    from ase.io import read

    return next(f for f in read(ROOT / "data/reference/x23/x23_pbe_ts_crystals.extxyz", ":") if f.info["name"] == name)


def _data_dir(d, frame=None, csv_text: str | None = None, name: str = "my_ammonia"):
    from ase.io import write

    d.mkdir()
    frame = frame if frame is not None else _crystal()
    frame.info["name"] = name
    write(d / f"{name}_crystal.extxyz", frame)
    (d / "x23_lattice_energies.csv").write_text(csv_text if csv_text is not None
                                                else f"# mine\nsystem,E_latt_X23_kJmol\n{name},-37.2\n")
    return d


def _main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    import x23_lattice

    monkeypatch.setattr(sys, "argv", ["x23_lattice.py", *args])
    try:
        x23_lattice.main()
        rc = 0
    except SystemExit as exc:
        rc = exc.code
    return rc, capsys.readouterr().err


def test_shipped_extra_member_has_its_reference_energy():
    """data/reference/x23_extra reads in the layout of data/reference/x23; the reference is
    x23_exp_lattice_energy['ethcar'] = -86.3 kJ/mol of ase-devel's x23.py (SOURCE_AND_LICENSE)."""
    import x23_lattice

    frames, ref = x23_lattice.load_x23(x23_lattice.X23_EXTRA_DIR)
    assert list(frames) == ["ethyl_carbamate"] and ref == {"ethyl_carbamate": -86.3}
    assert int(frames["ethyl_carbamate"].info["n_mol"]) == 2


@pytest.mark.parametrize("case, expected", [
    ("no_csv", "x23_lattice_energies.csv: no such file"),
    ("bad_energy", "row 1, column E_latt_X23_kJmol: 'lots' is not a number"),
    ("no_column", "missing column(s) E_latt_X23_kJmol"),
    ("no_row", "no reference lattice energy for my_ammonia"),
    ("element", "unknown element 'Xx'"),
    ("unsupported", "element(s) Si not supported by the force field"),
    ("n_mol", "4 molecule(s) of 1 composition(s) in the cell, expected n_mol = 3"),
    ("no_dir", "no such directory"),
])
def test_bad_data_is_a_one_line_error(tmp_path, monkeypatch, capsys, case, expected):
    d = tmp_path / "d"
    if case == "no_csv":
        _data_dir(d)
        (d / "x23_lattice_energies.csv").unlink()
    elif case == "bad_energy":
        _data_dir(d, csv_text="system,E_latt_X23_kJmol\nmy_ammonia,lots\n")
    elif case == "no_column":
        _data_dir(d, csv_text="system,energy\nmy_ammonia,-37.2\n")
    elif case == "no_row":
        _data_dir(d, csv_text="system,E_latt_X23_kJmol\nother,-37.2\n")
    elif case in ("element", "unsupported"):
        _data_dir(d)
        path = d / "my_ammonia_crystal.extxyz"
        lines = path.read_text().splitlines()
        lines[2] = ("Xx" if case == "element" else "Si") + lines[2][1:]
        path.write_text("\n".join(lines) + "\n")
    elif case == "n_mol":
        frame = _crystal()
        frame.info["n_mol"] = 3
        _data_dir(d, frame)
    rc, err = _main(monkeypatch, capsys, "--data", str(d), "--skip-timing", "--out", str(tmp_path))
    assert rc == 2
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert expected in err
    assert not list(tmp_path.glob("*.json"))


def test_user_data_runs_into_its_own_results_file(tmp_path, monkeypatch, capsys):
    d = _data_dir(tmp_path / "mine")
    out = tmp_path / "out"
    rc, _ = _main(monkeypatch, capsys, "--data", str(d), "--methods", "resp", "--max-iter", "5", "--skip-timing",
                  "--out", str(out))
    assert rc == 0
    files = list(out.glob("*.json"))
    assert [f.name for f in files] == ["x23_lattice_maxiter-5_methods-resp_skip-timing_data-mine.json"]
    summary = json.loads(files[0].read_text())
    assert summary["data"] == str(d) and [r["system"] for r in summary["rows"]] == ["my_ammonia"]
    assert summary["rows"][0]["e_ref_kjmol"] == -37.2


def test_systems_finds_the_shipped_extra_member(tmp_path, monkeypatch, capsys):
    """--systems ethyl_carbamate (data/reference/x23_extra) is found, not refused as unknown; a
    crystal the rigid model cannot take is a one-line error naming it (prepare stubbed: no charges)."""
    import x23_lattice

    from sim_backends.base import SetupError

    seen = []

    def stub(frame, method):
        seen.append(frame.info["name"])
        raise SetupError("stub")

    monkeypatch.setattr(x23_lattice, "prepare", stub)
    rc, err = _main(monkeypatch, capsys, "--systems", "ethyl_carbamate", "--skip-timing", "--out", str(tmp_path))
    assert rc == 2 and seen == ["ethyl_carbamate"]
    assert err.strip() == "x23_lattice.py: error: crystal 'ethyl_carbamate': stub"
    rc, err = _main(monkeypatch, capsys, "--systems", "acetic_acid", "--skip-timing")
    assert rc == 2 and "unknown X23 system(s) ['acetic_acid']" in err and err.strip().count("\n") == 0
