"""Bad input through the CLI: one-line errors, non-zero exits, stores left intact."""

import json
import sqlite3

import pytest

from conftest import cli, write_config

GOOD = ["CCO ethanol", "c1ccccc1 benzene", "CC(=O)O acetic_acid", "c1ccncc1 pyridine"]
DIAG = """
objective = "n_heavy_atoms"
batch_size = 2
max_evaluations = {n}
[surrogate]
n_initial = 2
[tracking]
enabled = false
[executor]
task_timeout_s = {timeout}
max_retries = 0
[[backends]]
name = "diagnostic"
params = {params}
"""


def _one_line_error(out):
    assert out.returncode == 2, (out.returncode, out.stderr)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("crystal-agent: error:"), out.stderr
    assert "Traceback" not in out.stderr
    return lines[0]


def test_unknown_config_key(tmp_path):
    cfg = write_config(tmp_path, GOOD, DIAG.format(n=2, timeout=10, params="{}") + "colour = 1\n")
    msg = _one_line_error(cli("run", str(cfg), "--runs-dir", str(tmp_path / "runs")))
    assert "unknown key" in msg
    assert not (tmp_path / "runs").exists()


def test_missing_config_and_missing_campaign(tmp_path):
    assert "not found" in _one_line_error(cli("run", str(tmp_path / "none.toml")))
    assert "no campaign" in _one_line_error(cli("status", "ghost", "--runs-dir", str(tmp_path)))
    assert "no campaign" in _one_line_error(cli("resume", "ghost", "--runs-dir", str(tmp_path)))


def test_unknown_backend(tmp_path):
    body = DIAG.format(n=2, timeout=10, params="{}").replace('"diagnostic"', '"no-such"')
    cfg = write_config(tmp_path, GOOD, body)
    assert "unknown backend 'no-such'" in _one_line_error(cli("run", str(cfg), "--runs-dir", str(tmp_path)))


def test_pool_with_only_invalid_smiles(tmp_path):
    cfg = write_config(tmp_path, ["not-a-smiles", "C1CC"], DIAG.format(n=2, timeout=10, params="{}"))
    assert "no valid molecule" in _one_line_error(cli("run", str(cfg), "--runs-dir", str(tmp_path)))


@pytest.mark.slow
def test_backend_that_raises_and_task_that_times_out(tmp_path):
    """The failing molecule is recorded as failed with its reason; the campaign goes on."""
    params = '{mode = "raise", fail_smiles = ["c1ccccc1"]}'
    cfg = write_config(tmp_path, GOOD + ["not-a-smiles"], DIAG.format(n=4, timeout=30, params=params))
    runs = tmp_path / "runs"
    out = cli("run", str(cfg), "--runs-dir", str(runs), "--quiet")
    assert out.returncode == 0, out.stderr
    db = sqlite3.connect(runs / "t" / "store.sqlite")
    rows = db.execute("SELECT m.smiles, e.status, e.reason FROM evaluations e JOIN molecules m "
                      "ON m.id = e.molecule_id").fetchall()
    assert len(rows) == 4
    failed = [r for r in rows if r[1] == "failed"]
    assert failed == [("c1ccccc1", "failed", "error: ZeroDivisionError: diagnostic backend asked to raise")]
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    # a task that exceeds its timeout
    params = '{sleep_s = 30, fail_smiles = []}'
    slow = tmp_path / "slow"
    slow.mkdir()
    cfg = write_config(slow, GOOD[:2], DIAG.format(n=2, timeout=2, params=params), name="slow")
    out = cli("run", str(cfg), "--runs-dir", str(runs), "--quiet")
    assert out.returncode == 0, out.stderr
    s = json.loads(cli("status", "slow", "--runs-dir", str(runs), "--json").stdout)
    assert s["n_evaluations"] == 2 and s["n_failed"] == 2
    reasons = [r[0] for r in sqlite3.connect(runs / "slow" / "store.sqlite").execute(
        "SELECT reason FROM evaluations")]
    assert all(r.startswith("timeout: exceeded 2 s") for r in reasons)
