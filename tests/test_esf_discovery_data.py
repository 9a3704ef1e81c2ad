"""benchmarks/esf_discovery.py --data on a user's data set: malformed JSONL gives a one-line error
naming the file and line (a truncated last line, as an interrupted make_esf_dataset.py leaves, is
skipped with a warning naming it), and the header describes the data given, not the shipped set."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
LEVELS = ("proxy", "quick", "refined")


def _records(n: int = 6) -> dict[str, list[dict]]:
    """The first ``n`` molecules of data/esf with a record at every level."""
    recs = {lv: [json.loads(x) for x in (ROOT / "data/esf" / f"esf_{lv}.jsonl").read_text().splitlines() if x.strip()]
            for lv in LEVELS}
    common = [r["smiles"] for r in recs["refined"] if all(any(o["smiles"] == r["smiles"] for o in recs[lv])
                                                          for lv in LEVELS)][:n]
    return {lv: [r for r in recs[lv] if r["smiles"] in common] for lv in LEVELS}


def _write(d: Path, recs: dict[str, list[dict]], tail: dict[str, str] | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for lv in LEVELS:
        (d / f"esf_{lv}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs[lv]) + (tail or {}).get(lv, ""))
    return d


def _main(capsys, *args: str) -> tuple[int, str]:
    import esf_discovery

    rc = esf_discovery.main(["--seeds", "1", *args])
    return rc, capsys.readouterr().err


def test_truncated_last_line_is_skipped_with_a_warning_naming_it(tmp_path):
    from sim_backends.esf import esf_records

    recs = _records()
    half = json.dumps(recs["quick"][0])[:150]  # a killed appending generator: half a record, no newline
    d = _write(tmp_path / "trunc", recs, {"quick": half})
    with pytest.warns(UserWarning, match=r"esf_quick\.jsonl line 7: not JSON, skipped"):
        got = esf_records("quick", d)
    assert len(got) == 6


def test_truncated_middle_line_is_a_one_line_error(tmp_path, capsys):
    recs = _records()
    d = _write(tmp_path / "mid", recs)
    lines = (d / "esf_refined.jsonl").read_text().splitlines()
    lines[2] = lines[2][:100]
    (d / "esf_refined.jsonl").write_text("\n".join(lines) + "\n")
    rc, err = _main(capsys, "--data", str(d))
    assert rc == 2
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert "esf_refined.jsonl line 3: not JSON" in err


def test_non_numeric_cpu_s_is_a_one_line_error(tmp_path, capsys):
    recs = _records()
    recs["refined"][4]["cpu_s"] = "lots"
    d = _write(tmp_path / "cpu", recs)
    rc, err = _main(capsys, "--data", str(d))
    assert rc == 2
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert "esf_refined.jsonl line 5: 'cpu_s' must be a number" in err
    recs["refined"][4]["cpu_s"] = {"csp": "lots"}
    rc, err = _main(capsys, "--data", str(_write(tmp_path / "cpu2", recs)))
    assert rc == 2 and "line 5: 'cpu_s'" in err


def test_header_describes_the_data_given(tmp_path):
    import esf_discovery

    recs = _records()
    shipped = esf_discovery.load("refined")["truth_protocol"]
    assert shipped == "300-trial CSP, GFN2-xTB transfer"
    d = _write(tmp_path / "mine", recs)
    assert esf_discovery.load("refined", str(d))["truth_protocol"] == f"300-trial CSP, GFN2-xTB transfer; data: {d}"
    for r in recs["refined"]:
        r["n_trials"] = 50
        r.pop("transfer_level")
    assert esf_discovery.load("refined", str(_write(tmp_path / "m50", recs)))["truth_protocol"].startswith(
        "50-trial CSP; data:")
    for r in recs["refined"]:
        r.pop("n_trials")
    d = _write(tmp_path / "bare", recs)
    assert esf_discovery.load("refined", str(d))["truth_protocol"] == f"user data: {d}"


def test_generator_resume_drops_a_truncated_last_line(tmp_path):
    sys.path.insert(0, str(ROOT / "data" / "esf"))
    from make_esf_dataset import done_keys

    recs = _records()["quick"]
    p = tmp_path / "esf_quick.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in recs[:3]) + json.dumps(recs[3])[:120])
    assert len(done_keys(p)) == 3
    assert p.read_text().endswith("\n") and len(p.read_text().splitlines()) == 3
