"""A store that is intact but cannot be written (a read-only folder or filesystem, a full
disk) says so instead of "store damaged ... restore it from a backup" (newuser44b #3), and
``status`` / ``report`` read a read-only store; plus the small CLI edges of newuser44b #11."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import cli, write_config

BODY = """
objective = "n_heavy_atoms"
max_evaluations = {n}
[tracking]
enabled = false
[[backends]]
name = "diagnostic"
"""
POOL = ["C methane", "CC ethane", "CCC propane", "CCCC butane"]


def _campaign(tmp_path: Path, name: str = "s", n: int = 3, runs: Path | None = None, finish: bool = True) -> Path:
    """A campaign run in-process with the diagnostic backend; returns its runs dir."""
    from agent.campaign import Campaign
    from agent.config import load_config
    from agent.local_executor import LocalExecutor
    from agent.runner import run_campaign

    runs = runs or tmp_path / "runs"
    cfg = load_config(write_config(tmp_path, POOL, BODY.format(n=n), name=name))
    camp = Campaign.create(cfg, runs)
    run_campaign(camp, runs, progress=False, executor=LocalExecutor(slots=1))
    if not finish:
        camp.store.set_meta("finished", "0")  # as a run that was stopped
    camp.close()
    return runs


def _main(capsys, *argv):
    from agent.cli import main

    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# -- the error mapping, with real SQLite errors --------------------------------------------
def _full_error(tmp_path) -> sqlite3.OperationalError:
    db = sqlite3.connect(tmp_path / "full.sqlite")
    db.execute("CREATE TABLE t(x)")
    db.execute("PRAGMA max_page_count = 3")  # a tiny quota: SQLite's own SQLITE_FULL
    with pytest.raises(sqlite3.OperationalError) as e:
        for _ in range(1000):
            db.execute("INSERT INTO t VALUES (?)", ("x" * 2000,))
    db.close()
    return e.value


def _readonly_error(tmp_path) -> sqlite3.OperationalError:
    path = tmp_path / "ro.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t(x)")
    db.commit()
    db.close()
    ro = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as e:
        ro.execute("INSERT INTO t VALUES (1)")
    ro.close()
    return e.value


def test_disk_full_and_read_only_are_not_called_damaged(tmp_path):
    from agent.store import (StoreDamagedError, StoreDiskFullError, StoreReadOnlyError,
                             error_kind, store_error)

    store = tmp_path / "runs" / "camp" / "store.sqlite"
    full = _full_error(tmp_path)
    assert "database or disk is full" in str(full)
    err = store_error(full, store)
    assert isinstance(err, StoreDiskFullError) and isinstance(err, OSError)
    msg = str(err)
    assert msg.startswith("disk full: database or disk is full"), msg
    assert "free space" in msg and "`crystal-agent resume camp`" in msg and "intact" in msg, msg
    assert "damaged" not in msg and "backup" not in msg and "\n" not in msg

    ro = _readonly_error(tmp_path)
    assert "readonly database" in str(ro)
    err = store_error(ro, store)
    assert isinstance(err, StoreReadOnlyError)
    assert str(err).startswith("read-only: attempt to write a readonly database"), str(err)
    assert "damaged" not in str(err).replace("not damaged", "") and "backup" not in str(err)

    for code, kind in ((errno.ENOSPC, "full"), (errno.EDQUOT, "full"), (errno.EROFS, "readonly")):
        exc = OSError(code, os.strerror(code), str(store.parent / "lock"))
        assert error_kind(exc) == kind
        assert str(store_error(exc, store)).startswith("disk full:" if kind == "full" else "read-only:")

    # "unable to open database file" in a folder that exists but cannot be written (its -shm)
    cantopen = sqlite3.OperationalError("unable to open database file")
    folder = tmp_path / "locked_dir"
    folder.mkdir()
    import agent.store as st

    real = st._writable
    try:
        st._writable = lambda p: Path(p) != folder  # as chmod a-w would (root ignores chmod)
        assert error_kind(cantopen, folder / "store.sqlite") == "readonly"
    finally:
        st._writable = real
    assert error_kind(cantopen, folder / "store.sqlite") == "other"  # a writable folder: not read-only

    # only real corruption keeps the "damaged" wording
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database at all" * 300)
    with pytest.raises(sqlite3.DatabaseError) as e:
        sqlite3.connect(bad).execute("SELECT * FROM sqlite_master").fetchall()
    err = store_error(e.value, bad)
    assert isinstance(err, StoreDamagedError) and str(err).startswith("store damaged: file is not a database")
    assert "backup" in str(err)
    malformed = sqlite3.DatabaseError("database disk image is malformed")
    assert isinstance(store_error(malformed, bad), StoreDamagedError)


def test_a_full_disk_while_creating_says_nothing_was_created(tmp_path):
    from agent.store import store_error

    msg = str(store_error(_full_error(tmp_path), tmp_path / "runs" / ".camp.creating-abc" / "store.sqlite"))
    assert msg.startswith("disk full:") and "not created" in msg and "resume" not in msg, msg


def test_cli_maps_a_full_disk_met_during_a_command(tmp_path, capsys, monkeypatch):
    """A run that met SQLITE_FULL said `store damaged: database or disk is full; restore it
    from a backup` (newuser44b #3); now it says to free space and resume, with --runs-dir."""
    import agent.cli as cli_mod

    full = _full_error(tmp_path)

    def boom(args):
        raise full

    monkeypatch.setattr(cli_mod, "cmd_resume", boom)
    runs = tmp_path / "my runs"
    rc, _, err = _main(capsys, "resume", "camp", "--runs-dir", str(runs))
    assert rc == 2
    line = err.strip()
    assert "\n" not in line and line.startswith("crystal-agent: error: disk full:"), line
    assert f"`crystal-agent resume camp --runs-dir '{runs}'`" in line, line
    assert "damaged" not in line and "backup" not in line


# -- readers open the store read-only -------------------------------------------------------
def test_a_reader_writes_nothing(tmp_path):
    from agent.store import Store

    with pytest.raises(FileNotFoundError):
        Store(tmp_path / "nowhere" / "store.sqlite", readonly=True)
    assert not (tmp_path / "nowhere").exists()  # no mkdir

    runs = _campaign(tmp_path)
    path = runs / "s" / "store.sqlite"
    before = path.read_bytes()
    with Store(path, readonly=True) as s:
        assert s.readonly and not s.writable
        assert s.count_evaluations()[0] == 3
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            s.set_meta("x", "1")
    assert path.read_bytes() == before


def test_a_reader_of_an_old_schema_migrates_in_memory_only(tmp_path):
    from agent.store import SCHEMA_VERSION, Store

    runs = _campaign(tmp_path)
    path = runs / "s" / "store.sqlite"
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE evaluations DROP COLUMN stage")
    db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    before = path.read_bytes()
    with Store(path, readonly=True) as s:
        assert s.get_meta("schema_version") == str(SCHEMA_VERSION)
        assert s.count_evaluations()[0] == 3
    assert path.read_bytes() == before
    cols = {r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(evaluations)")}
    assert "stage" not in cols


def _as_other_user() -> list[str] | None:
    """A command prefix that runs as an unprivileged user, for a test run as root (for whom
    chmod does not block writes), or [] when not root; None when neither is possible."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    probe = subprocess.run([*prefix, sys.executable, "-c", "import agent.store"], capture_output=True,
                           cwd="/", timeout=120)
    return prefix if probe.returncode == 0 else None


def test_status_and_report_of_a_read_only_campaign_folder(tmp_path):
    """newuser44b #3: on a read-only copy, status said `store damaged: unable to open
    database file`. Now status reads it (mode=ro; immutable when no -shm can be made) and
    report says in one line that it cannot write there."""
    prefix = _as_other_user()
    if prefix is None:
        pytest.skip("running as root without setpriv: chmod cannot make a folder read-only")
    runs = _campaign(tmp_path, finish=False)
    base = Path(tempfile.mkdtemp(prefix="ro-campaign-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        ro = base / "runs"
        shutil.copytree(runs, ro)
        for p in sorted(ro.rglob("*"), reverse=True):
            os.chmod(p, 0o555 if p.is_dir() else 0o444)
        os.chmod(ro, 0o555)
        env = {**os.environ, "HOME": str(base), "MPLCONFIGDIR": str(base / "mpl")}

        def run(*args):
            return subprocess.run([*prefix, sys.executable, "-m", "agent.cli", *args, "--runs-dir", str(ro)],
                                  capture_output=True, text=True, timeout=300, env=env, cwd="/")

        out = run("status", "s")
        assert out.returncode == 0, out.stderr
        assert "evaluations   3 / 3" in out.stdout, out.stdout
        assert f"`crystal-agent resume s --runs-dir {ro}`" in out.stdout, out.stdout
        out = run("report", "s")
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
        assert out.stderr.startswith("crystal-agent: error: read-only: cannot write the report"), out.stderr
        out = run("resume", "s")
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
        assert out.stderr.startswith("crystal-agent: error: read-only:") and "damaged" not in out.stderr.replace(
            "not damaged", ""), out.stderr
        assert sorted(p.name for p in (ro / "s").iterdir()) == sorted(p.name for p in (runs / "s").iterdir())
    finally:
        for p in [base, *base.rglob("*")]:
            if p.is_dir():
                os.chmod(p, 0o755)
        shutil.rmtree(base, ignore_errors=True)


# -- newuser44b #11: small CLI edges -------------------------------------------------------
def test_resume_hints_carry_the_runs_dir(tmp_path, capsys, monkeypatch):
    from agent.cli import build_parser, with_runs_dir

    (tmp_path / "a b").mkdir()
    runs = _campaign(tmp_path / "a b", finish=False)  # a runs dir with a space: quoted
    rc, out, _ = _main(capsys, "status", "s", "--runs-dir", str(runs))
    assert rc == 0 and f"`crystal-agent resume s --runs-dir '{runs}'` continues it" in out, out

    hint = "campaign 's' interrupted after 2 evaluations; continue with `crystal-agent resume s`"
    args = build_parser().parse_args(["resume", "s", "--runs-dir", "elsewhere"])
    assert with_runs_dir(hint, args).endswith("`crystal-agent resume s --runs-dir elsewhere`")
    monkeypatch.delenv("CRYSTAL_AGENT_RUNS", raising=False)
    for default in (["resume", "s"], ["resume", "s", "--runs-dir", "runs"]):
        assert with_runs_dir(hint, build_parser().parse_args(default)) == hint


def test_resume_refuses_a_budget_below_the_evaluations_done(tmp_path, capsys):
    runs = _campaign(tmp_path, n=3)
    path = runs / "s" / "store.sqlite"
    stored = sqlite3.connect(path).execute("SELECT value FROM meta WHERE key = 'config_toml'").fetchone()[0]
    rc, _, err = _main(capsys, "resume", "s", "--runs-dir", str(runs), "--max-evaluations", "2")
    assert rc == 2 and err.count("\n") == 1, err
    assert "--max-evaluations 2 is below the 3 evaluations" in err, err
    after = sqlite3.connect(path).execute("SELECT value FROM meta WHERE key = 'config_toml'").fetchone()[0]
    assert after == stored
    rc, out, _ = _main(capsys, "status", "s", "--runs-dir", str(runs))
    assert "evaluation budget reached (3)" in out


def test_refine_of_a_molecule_only_campaign_says_what_can_be_done(tmp_path, capsys):
    runs = _campaign(tmp_path, n=2)
    rc, _, err = _main(capsys, "refine", "s", "--runs-dir", str(runs))
    assert rc == 2 and err.count("\n") == 1, err
    assert "cannot be changed" in err and "new campaign" in err, err
    assert str(runs / "s" / "config.toml") in err, err


def test_run_of_a_directory_says_it_is_one(tmp_path):
    out = cli("run", str(tmp_path), "--runs-dir", str(tmp_path / "runs"))
    assert out.returncode == 2, out.stderr
    assert "is a directory" in out.stderr and "config file (TOML)" in out.stderr, out.stderr
    assert "not found" not in out.stderr


def test_run_csp_progress_is_drawn_on_stderr(capsys):
    from sim_backends.csp.run import _execute
    from sim_backends.executor import InProcessExecutor

    assert _execute(None, [], {}, {}, InProcessExecutor(), progress=True, label="minimising trials") == []
    out, err = capsys.readouterr()
    assert out == "" and "minimising trials" in err, (out, err)


def test_readme_lists_the_tracking_table():
    from agent.config import TrackingConfig

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme[readme.index("\n[tracking]"):]
    block = block[: block.index("```")]
    for key in TrackingConfig.model_fields:
        assert f"\n{key} = " in block, key
