"""Bad input through the CLI: one-line errors, non-zero exits, stores left intact."""

import json
import os
import shutil
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


# --- issue 17 (items 1-4, 7, 8) and issue 14 (items 7, 9): in-process through agent.cli.main ---

class ReachedRunner(BaseException):
    """Raised instead of starting Ray: the input got past every check."""


@pytest.fixture
def no_runner(monkeypatch):
    """`run`/`resume` stop where the campaign loop would start (no Ray in these tests)."""
    import agent.runner

    def fake(campaign, runs_dir, **kw):
        if kw.get("on_start") is not None:  # `run` prints its pool summary once Ray has started
            kw["on_start"]()
        raise ReachedRunner(campaign.cfg.name)

    monkeypatch.setattr(agent.runner, "run_campaign", fake)


def _main(capsys, *argv):
    from agent.cli import main

    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def _refused(capsys, *argv):
    rc, _, err = _main(capsys, *argv)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc != 0 and len(lines) == 1, (rc, err)
    assert "Traceback" not in err
    return lines[0]


def _diag_config(tmp_path, pool=GOOD, extra="", n=4, name="t", top=""):
    return write_config(tmp_path, pool, top + DIAG.format(n=n, timeout=10, params="{}") + extra,
                        name=name)


def _created(tmp_path, name="t"):
    """A campaign created (not run) in tmp_path/runs."""
    from agent.campaign import Campaign
    from agent.config import load_config

    runs = tmp_path / "runs"
    Campaign.create(load_config(_diag_config(tmp_path, name=name)), runs).close()
    return runs


def test_resume_rejects_non_positive_max_evaluations(tmp_path, capsys, no_runner):
    """Issue 17.1: `resume --max-evaluations 0/-1` is refused and stores nothing."""
    runs = _created(tmp_path)
    for bad in ("0", "-1"):
        msg = _refused(capsys, "resume", "t", "--runs-dir", str(runs), "--max-evaluations", bad)
        assert "max_evaluations" in msg or "max-evaluations" in msg
    rc, out, _ = _main(capsys, "status", "t", "--runs-dir", str(runs))
    assert rc == 0 and "/ 4 " in out


def test_open_revalidates_stored_config_and_override(tmp_path, capsys, no_runner):
    """Issue 17.1: a bad stored config is a one-line error, and a valid override repairs it."""
    from agent.store import Store

    runs = _created(tmp_path)
    with Store(runs / "t" / "store.sqlite") as s:
        s.set_meta("config_toml", s.get_meta("config_toml").replace(
            "max_evaluations = 4", "max_evaluations = 0"))
    assert "max_evaluations" in _refused(capsys, "status", "t", "--runs-dir", str(runs))
    assert "max_evaluations" in _refused(capsys, "resume", "t", "--runs-dir", str(runs))
    with pytest.raises(ReachedRunner):
        _main(capsys, "resume", "t", "--runs-dir", str(runs), "--max-evaluations", "5")
    rc, out, _ = _main(capsys, "status", "t", "--runs-dir", str(runs))
    assert rc == 0 and "/ 5 " in out


@pytest.mark.parametrize("name", [".", "..", "/", "a/b", "/tmp/abs", "x" * 300, "bad\x01name",
                                  "", ".hidden", "a b"])
def test_names_are_one_safe_path_component(tmp_path, capsys, no_runner, name):
    """Issue 17.2 and 17.8: names never escape runs/NAME/; one-line error, nothing written."""
    cfg = _diag_config(tmp_path)
    runs = tmp_path / "sub" / "runs"
    runs.mkdir(parents=True)
    msg = _refused(capsys, "run", str(cfg), "--name", name, "--runs-dir", str(runs))
    assert "name" in msg
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(
        ["campaign.toml", "pool.smi", "sub", "runs"])
    for cmd in ("status", "resume", "report"):
        _refused(capsys, cmd, name, "--runs-dir", str(runs))
    assert not any(runs.iterdir())


BAD_RUNS = {
    "objective no backend computes": ("", 'objective = "reorg_energy_kjmol"\n', GOOD),
    "unknown backend": ("", "", None),
    "seed -1": ("", "seed = -1\n", GOOD),
    "empty pool": ("", "", []),
    "all-invalid pool": ("", "", ["not-a-smiles", "[Fe]", "C1CC"]),
    "batch_size = true": ("", "", GOOD),
    "lab adapter nope": ('[structures]\nenabled = true\nbudget_evaluations = 2\n'
                         '[lab]\nadapter = "nope"\n', "", GOOD),
    "lab landscape missing": ('[structures]\nenabled = true\nbudget_evaluations = 2\n'
                              '[lab]\nlandscape = "/nonexistent/cifs"\n', "", GOOD),
    "lab landscape for a real robot": ('[structures]\nenabled = true\nbudget_evaluations = 2\n'
                                       '[lab]\nadapter = "network"\nlandscape = "x23"\n'
                                       'params = {base_url = "https://lab.example.org/api"}\n', "", GOOD),
}


def _bad_run_config(tmp_path, case):
    """The config of :data:`BAD_RUNS` ``case`` (name "t"), written to tmp_path."""
    extra, top, pool = BAD_RUNS[case]
    cfg = _diag_config(tmp_path, pool=GOOD if pool is None else pool, extra=extra, top=top)
    if case == "unknown backend":
        cfg.write_text(cfg.read_text().replace('"diagnostic"', '"no-such"'))
    if case == "batch_size = true":
        cfg.write_text(cfg.read_text().replace("batch_size = 2", "batch_size = true"))
    if case == "objective no backend computes":
        cfg.write_text(cfg.read_text().replace('objective = "n_heavy_atoms"\n', ""))
    return cfg


@pytest.mark.parametrize("case", sorted(BAD_RUNS))
def test_refused_run_leaves_nothing_and_same_name_works_after_fix(tmp_path, capsys, no_runner, case):
    """Issue 17.3 and 17.7: refused before anything is created; the fixed config then runs."""
    cfg = _bad_run_config(tmp_path, case)
    runs = tmp_path / "runs"
    _refused(capsys, "run", str(cfg), "--runs-dir", str(runs))
    assert not runs.exists() or not any(runs.iterdir()), list(runs.iterdir())
    _diag_config(tmp_path)  # fixed config, same name
    with pytest.raises(ReachedRunner):
        _main(capsys, "run", str(cfg), "--runs-dir", str(runs))
    assert (runs / "t" / "store.sqlite").is_file()
    umask = os.umask(0)
    os.umask(umask)
    assert (runs / "t").stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700


@pytest.mark.parametrize("case, needle", [
    ("unknown backend", "unknown backend 'no-such'"),
    ("objective no backend computes", "reorg_energy_kjmol"),
    ("empty pool", "no molecules in"),
])
def test_broken_config_with_a_taken_name_names_the_config_error(tmp_path, capsys, no_runner, case, needle):
    """newuser42 item 8: with a campaign of the same name present, a broken config was
    refused as "campaign 't' already exists ...; use crystal-agent resume t"; the config's
    own error comes first, and nothing is created or changed."""
    runs = _created(tmp_path)
    cfg = _bad_run_config(tmp_path, case)
    before = sorted((p.relative_to(runs), p.stat().st_mtime_ns) for p in runs.rglob("*"))
    msg = _refused(capsys, "run", str(cfg), "--runs-dir", str(runs))
    assert needle in msg and "already exists" not in msg, msg
    assert sorted((p.relative_to(runs), p.stat().st_mtime_ns) for p in runs.rglob("*")) == before
    _diag_config(tmp_path)  # a valid config: now the name is what is wrong
    assert "already exists" in _refused(capsys, "run", str(cfg), "--runs-dir", str(runs))


def test_campaign_create_checks_the_config_before_the_name(tmp_path, capsys, no_runner):
    """The Python API gives the same order as the command line: Campaign.create with a
    config no backend can run and a taken name names the config's error."""
    from agent.campaign import Campaign
    from agent.config import ConfigError, load_config

    runs = _created(tmp_path)
    cfg = load_config(_bad_run_config(tmp_path, "objective no backend computes"))
    with pytest.raises(ConfigError) as err:
        Campaign.create(cfg, runs)
    assert "reorg_energy_kjmol" in str(err.value) and "already exists" not in str(err.value)


def test_damaged_store_truncated_and_missing_table(tmp_path, capsys, no_runner):
    """Issue 17.4: a damaged store is a one-line error with a hint; resume recreates nothing."""
    runs = _created(tmp_path)
    path = runs / "t" / "store.sqlite"
    data = path.read_bytes()
    db = sqlite3.connect(path)
    db.execute("DROP TABLE evaluations")
    db.commit()
    db.close()
    for cmd in ("status", "resume", "report"):
        msg = _refused(capsys, cmd, "t", "--runs-dir", str(runs))
        assert "store damaged" in msg and "evaluations" in msg
    tables = {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")}
    assert "evaluations" not in tables
    path.write_bytes(data[: len(data) // 3])
    for p in path.parent.glob("store.sqlite-*"):
        p.unlink()
    for cmd in ("status", "resume"):
        assert "store damaged" in _refused(capsys, cmd, "t", "--runs-dir", str(runs))
    path.write_bytes(b"garbage" * 1000)
    assert "store damaged" in _refused(capsys, "status", "t", "--runs-dir", str(runs))


def test_runs_dir_that_is_a_file(tmp_path, capsys, no_runner):
    """Issue 17.8."""
    cfg = _diag_config(tmp_path)
    f = tmp_path / "afile"
    f.write_text("x")
    assert "runs-dir" in _refused(capsys, "run", str(cfg), "--runs-dir", str(f))
    assert "runs-dir" in _refused(capsys, "status", "t", "--runs-dir", str(f))
    assert "runs-dir" in _refused(capsys, "run", str(cfg), "--runs-dir", str(f / "below"))


def test_runs_dir_that_cannot_be_created_says_which_option(tmp_path, capsys, no_runner):
    """newuser38 C4: `--runs-dir /proc/x` printed only "[Errno 2] No such file or directory"."""
    cfg = _diag_config(tmp_path)
    msg = _refused(capsys, "run", str(cfg), "--runs-dir", "/proc/no-such-runs-dir")
    assert msg == ("crystal-agent: error: cannot create runs directory /proc/no-such-runs-dir "
                   "(--runs-dir): No such file or directory"), msg


def test_deeply_nested_and_huge_toml(tmp_path, capsys):
    """Issue 17.8: 3000-deep nested TOML and an oversized file are one-line errors."""
    p = tmp_path / "deep.toml"
    p.write_text("x = " + "[" * 3000 + "]" * 3000 + "\n")
    assert "config" in _refused(capsys, "run", str(p), "--runs-dir", str(tmp_path / "r"))
    p.write_text("x = {" + "a = {" * 3000 + "}" * 3001 + "\n")
    assert "config" in _refused(capsys, "run", str(p), "--runs-dir", str(tmp_path / "r"))
    p.write_text("# padding\n" * 2_000_000)
    assert "too large" in _refused(capsys, "run", str(p), "--runs-dir", str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()


def test_run_rejects_non_positive_max_evaluations(tmp_path, capsys, no_runner):
    cfg = _diag_config(tmp_path)
    for bad in ("0", "-1", "abc"):
        _refused(capsys, "run", str(cfg), "--runs-dir", str(tmp_path / "runs"), "--max-evaluations", bad)
    assert not (tmp_path / "runs").exists()


def test_oversized_pool_line_rejected_before_rdkit(tmp_path, capsys, no_runner):
    """Issue 17.6: a line of a million `C(` is rejected by length (the RDKit parse took 46-100 s)."""
    cfg = _diag_config(tmp_path, pool=GOOD)
    (tmp_path / "pool.smi").write_text("\n".join(GOOD) + "\n" + "C(" * 1_000_000 + "\n")
    with pytest.raises(ReachedRunner):
        _main(capsys, "run", str(cfg), "--runs-dir", str(tmp_path / "runs"))
    from agent.store import Store

    with Store(tmp_path / "runs" / "t" / "store.sqlite") as s:
        bad = [m for m in s.molecules() if not m["is_valid"]]
    assert len(bad) == 1 and "characters" in bad[0]["reason"] and len(bad[0]["smiles"]) < 1000


def test_pool_summary_and_invalid_listing(tmp_path, capsys, no_runner):
    """Issue 14.7: invalid pool entries are summarised in one line at start and listed by
    `status --invalid`."""
    pool = GOOD + ["not-a-smiles junk", "[Fe] iron", "C1CC ring", "[Na+].[Cl-] salt"]
    cfg = _diag_config(tmp_path, pool=pool)
    runs = tmp_path / "runs"
    from agent.cli import main

    with pytest.raises(ReachedRunner):
        main(["run", str(cfg), "--runs-dir", str(runs)])
    out = capsys.readouterr().out
    line = [ln for ln in out.splitlines() if ln.startswith("pool:")]
    assert len(line) == 1, out
    assert line[0].startswith("pool: 4 valid molecules of 8 entries; 4 invalid") and "2 unparsable SMILES" in line[0]
    assert "4 invalid" in line[0] and "2 unparsable SMILES" in line[0]
    assert "Fe" in line[0] and "status t --invalid" in line[0]
    rc, out, _ = _main(capsys, "status", "t", "--runs-dir", str(runs), "--invalid")
    assert rc == 0 and "[Fe]" in out and "iron" in out and "unsupported element" in out


def test_pool_summary_names_dropped_duplicates(tmp_path, capsys, no_runner):
    """newuser37 C8: a second line with the same molecule was dropped without a word."""
    pool = GOOD + ["C1=CC=CC=C1 benzene_dup"]
    cfg = _diag_config(tmp_path, pool=pool)
    from agent.cli import main

    with pytest.raises(ReachedRunner):
        main(["run", str(cfg), "--runs-dir", str(tmp_path / "runs")])
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("pool:")]
    assert len(line) == 1 and "1 duplicate line dropped (benzene_dup = benzene)" in line[0], line


def test_stop_reason_and_best_note_never_empty(tmp_path, capsys):
    """Issue 14.7: `state finished: <reason>` is never empty and `best none yet` says why."""
    from agent.campaign import Campaign, campaign_status
    from agent.config import load_config

    runs = tmp_path / "runs"
    camp = Campaign.create(load_config(_diag_config(tmp_path)), runs)
    try:
        camp.store.set_meta("finished", "1")
        camp.store.set_meta("stop_reason", "no candidate left to evaluate")
        st = campaign_status(camp.store, camp.cfg, camp)
        assert st.stop_reason == "no candidate left to evaluate"
        assert st.best is None and "no diagnostic evaluation yet" in st.best_note
        camp.store.set_meta("stop_reason", "")
        assert campaign_status(camp.store, camp.cfg).stop_reason  # never empty when finished
    finally:
        camp.close()
    rc, out, _ = _main(capsys, "status", "t", "--runs-dir", str(runs))
    state = [ln for ln in out.splitlines() if ln.startswith("state")][0]
    best = [ln for ln in out.splitlines() if ln.startswith("best")][0]
    assert state.split("finished:")[1].strip() and "(" in best


def test_public_api_version_and_user_facing_backends(capsys):
    """Issue 14.9."""
    import subprocess
    import sys

    code = ("import sys, agent; from agent import Campaign, load_config; "
            "from sim_backends.csp import run_csp; print(agent.__version__, Campaign.__name__, "
            "load_config.__name__, run_csp.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    from agent.cli import main

    assert main(["--version"]) == 0
    import agent

    assert agent.__version__ in capsys.readouterr().out
    rc, out, _ = _main(capsys, "backends")
    names = {ln.split()[0] for ln in out.splitlines()[1:] if ln and not ln.startswith(" ")}
    assert rc == 0 and {"xtb-reorg", "dft-reorg", "csp-ff"} <= names
    assert not names & {"diagnostic", "replay"}


def test_unexpected_error_is_one_line_with_debug_hint(tmp_path, capsys, monkeypatch):
    """Issue 17.8: an unexpected exception is one line naming its type, --debug shows it."""
    import agent.cli

    def boom(args):
        raise KeyError("surprise")

    monkeypatch.setattr(agent.cli, "cmd_backends", boom)
    msg = _refused(capsys, "backends")
    assert "KeyError" in msg and "--debug" in msg
    with pytest.raises(KeyError):
        agent.cli.main(["--debug", "backends"])


def test_failed_start_leaves_nothing_behind(tmp_path, capsys, monkeypatch):
    """Issue 14.6 / 17.3: a `run` whose campaign loop cannot start (here: the Ray connection
    fails) removes the campaign it created, so the same name works afterwards."""
    import agent.runner

    def no_cluster(campaign, runs_dir, **kw):
        raise ConnectionError("could not connect to the Ray cluster at 127.0.0.1:1")

    monkeypatch.setattr(agent.runner, "run_campaign", no_cluster)
    cfg = _diag_config(tmp_path)
    runs = tmp_path / "runs"
    assert "Ray cluster" in _refused(capsys, "run", str(cfg), "--runs-dir", str(runs))
    assert not any(runs.iterdir())
    # a campaign with results is never removed
    from agent.campaign import Campaign, discard_unstarted
    from agent.config import load_config
    from sim_backends.base import EvalResult

    camp = Campaign.create(load_config(cfg), runs)
    camp.store.record_evaluation(request_id="r", molecule_id=1, submitted_at=0.0, result=EvalResult(
        backend="diagnostic", backend_version="1", fidelity=0, status="ok",
        values={"n_heavy_atoms": 3.0}, wall_s=0.1, inputs_hash="h"))
    assert not discard_unstarted(camp.directory)  # locked by camp
    camp.close()
    assert not discard_unstarted(camp.directory) and (runs / "t" / "store.sqlite").is_file()


def test_closed_stdout_is_quiet():
    """`crystal-agent backends | head -0`: no traceback, no error line, exit 141 (SIGPIPE)."""
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-m", "agent.cli", "backends"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 141 and err == "", err


def test_huge_pool_file_refused_unread(tmp_path, capsys):
    """A pool file over 256 MiB (sparse here) is refused by its size, before it is read."""
    cfg = _diag_config(tmp_path)
    with open(tmp_path / "pool.smi", "r+b") as f:
        f.truncate(300 * 1024**2)
    assert "too large" in _refused(capsys, "run", str(cfg), "--runs-dir", str(tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()


def test_config_with_two_range_errors_lists_both(tmp_path, capsys, no_runner):
    """newuser34: two range errors were reported as the first one '(+1 more)'; the second
    was only named after the first was fixed. Every invalid key is named, in one line
    (newuser42 item 7: one line per key was two error lines), exit 2, nothing created; a
    stored config says the same, prefixed with its store."""
    body = "max_cpu_hours = -1\n" + DIAG.format(n=4, timeout=10, params="{}") + "budget_evaluations = -3\n"
    cfg = write_config(tmp_path, GOOD, body)
    rc, _, err = _main(capsys, "run", str(cfg), "--runs-dir", str(tmp_path / "runs"))
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1, err
    assert lines[0].startswith("crystal-agent: error: config error: ") and err.count("config error") == 1, err
    assert "backends.0.budget_evaluations" in err and "(got -3)" in err
    assert "max_cpu_hours" in err and "(got -1)" in err and "more)" not in err
    assert not (tmp_path / "runs").exists()
    from agent.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as info:
        parse_config({"name": "x", "pool": "p.smi", "objective": "n_heavy_atoms", "max_cpu_hours": -1,
                      "max_evaluations": 0, "backends": [{"name": "diagnostic"}]})
    assert len(info.value.lines) == 2 and "\n" not in str(info.value)
    assert str(info.value).startswith("config error: ") and "; " in str(info.value)


def test_blank_config_is_one_line_naming_every_missing_key(tmp_path, capsys, no_runner):
    """newuser42 item 7: an empty config file printed two error lines, one per missing key."""
    cfg = tmp_path / "blank.toml"
    cfg.write_text("")
    rc, _, err = _main(capsys, "run", str(cfg), "--runs-dir", str(tmp_path / "runs"))
    assert rc == 2 and err == ("crystal-agent: error: config error: pool: Field required; "
                               "backends: Field required\n"), err
    assert not (tmp_path / "runs").exists()


def test_pool_summary_of_one_molecule_is_singular(tmp_path, capsys, no_runner):
    """newuser38 C3: "pool: 1 molecules"."""
    cfg = _diag_config(tmp_path, pool=["CCO ethanol"])
    from agent.cli import main

    with pytest.raises(ReachedRunner):
        main(["run", str(cfg), "--runs-dir", str(tmp_path / "runs")])
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("pool:")]
    assert line == ["pool: 1 molecule"], line


CSP_LONE_PAIRS = """
objective = "global_min_energy_kjmol"
max_evaluations = 2
[tracking]
enabled = false
[[backends]]
name = "csp-ff"
params = {params}
"""


def test_lone_pair_charges_with_a_flexible_pool_molecule_refused_before_creation(tmp_path, capsys, no_runner):
    """Stop-40 note: a csp-ff level with lone-pair charges and a flexible molecule in the pool
    failed every CSP task of that molecule; it is now refused at the start, naming it."""
    pool = ["c1ccncc1 pyridine", "CC(C)Cc1ccc(cc1)C(C)C(=O)O ibuprofen", "c1cnccn1 pyrazine"]
    cfg = write_config(tmp_path, pool, CSP_LONE_PAIRS.format(params='{charges = "resp-lpn"}'))
    runs = tmp_path / "runs"
    line = _refused(capsys, "run", str(cfg), "--runs-dir", str(runs))
    assert "config error: backends.0.params.charges: 'resp-lpn' (lone-pair sites)" in line, line
    assert "1 of 3 valid pool molecules is searched as flexible" in line and "ibuprofen" in line, line
    assert not runs.exists() or not any(runs.iterdir())
    # rigid molecules only: lone-pair charges are fine; a flexible pool with charges unset too
    for pool_lines, params in ((["c1ccncc1 pyridine", "c1cnccn1 pyrazine"], '{charges = "resp-lpn"}'),
                               (pool, "{}"), (pool, '{charges = "resp-lpn", flexible = "rigid"}')):
        cfg = write_config(tmp_path, pool_lines, CSP_LONE_PAIRS.format(params=params))
        shutil.rmtree(runs, ignore_errors=True)
        with pytest.raises(ReachedRunner):
            _main(capsys, "run", str(cfg), "--runs-dir", str(runs))


def test_resume_cpu_hours_raises_the_stored_budget_or_is_refused(tmp_path, capsys, no_runner):
    """newuser45a #4: `resume --cpu-hours H` adds CPU time to a campaign with a CPU budget
    (stored, said in one line, then the run starts); without one it is refused in one line
    and nothing is stored."""
    from agent.campaign import Campaign
    from agent.config import load_config

    runs = tmp_path / "runs"
    cfg = load_config(_diag_config(tmp_path, name="cpu", top="max_cpu_hours = 0.01\n"))
    Campaign.create(cfg, runs).close()
    with pytest.raises(ReachedRunner):
        _main(capsys, "resume", "cpu", "--runs-dir", str(runs), "--cpu-hours", "0.05")
    out = capsys.readouterr().out
    assert "resume: cpu: CPU budget (max_cpu_hours) 0.01 -> 0.06 CPU h" in out
    with Campaign.open("cpu", runs, readonly=True) as camp:
        assert camp.cfg.max_cpu_hours == 0.06  # rounded: not 0.060000000000000005
    assert "max_cpu_hours = 0.06\n" in (runs / "cpu" / "config.toml").read_text()  # the user's copy too
    (tmp_path / "b").mkdir()
    runs2 = _created(tmp_path / "b")
    msg = _refused(capsys, "resume", "t", "--runs-dir", str(runs2), "--cpu-hours", "1")
    assert "has no CPU budget (max_cpu_hours) to raise" in msg
    assert "finite number" in _refused(capsys, "resume", "cpu", "--runs-dir", str(runs), "--cpu-hours", "nan")
    with Campaign.open("t", runs2, readonly=True) as camp:
        assert camp.cfg.max_cpu_hours is None
