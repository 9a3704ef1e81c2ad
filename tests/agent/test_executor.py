"""The Ray executor against the diagnostic backend, which fails on purpose."""

import time

import pytest

from agent.executor import RayExecutor, Task
from sim_backends.base import EvalInput


#: how long a test waits for a condition before it fails: generous, since a loaded machine
#: (load 10-17 on 2 cores) stretches a Ray worker's start to tens of seconds; an idle
#: machine meets every condition within seconds, so nothing waits this long there
DEADLINE_S = 180.0


def _drain(ex, deadline_s: float = DEADLINE_S):
    """Every in-flight task's completion, by request id; fails past ``deadline_s``."""
    out = {}
    end = time.monotonic() + deadline_s
    while ex.n_in_flight:
        assert time.monotonic() < end, f"tasks still running after {deadline_s:g} s: " + \
            ", ".join(t.request_id for t in ex.in_flight())
        for c in ex.wait(0.5):
            out[c.task.request_id] = c
    return out


def test_failures_become_results(ray_local):
    # a wall-time limit far above any start-up delay for the tasks that must finish ...
    ex = RayExecutor(task_timeout_s=DEADLINE_S - 30, max_retries=1)
    ex.start()
    for rid, params in {
        "ok": {"sleep_s": 0.1},
        "raise": {"mode": "raise"},
        "crash": {"mode": "exit"},
        "flaky": {"mode": "run_error"},
    }.items():
        ex.submit(Task(rid, "diagnostic", {}, EvalInput("c1ccccc1O", params=params)))
    out = _drain(ex)
    assert out["ok"].result.ok and out["ok"].result.values["n_heavy_atoms"] == 7
    assert out["raise"].result.reason.startswith("error: ZeroDivisionError")
    assert out["crash"].result.reason.startswith("worker died"), out["crash"].result.reason
    assert out["crash"].task.n_attempts == 2  # retried once, then recorded
    assert out["flaky"].task.n_attempts == 2 and out["flaky"].result.reason.startswith("run:")
    # ... and a short one for a task that would hang for ten minutes (on a loaded machine
    # it may time out before it starts: a timeout all the same)
    ex.task_timeout_s = 2.0
    ex.submit(Task("slow", "diagnostic", {}, EvalInput("C", params={"sleep_s": 600})))
    slow = _drain(ex)["slow"]
    assert slow.result.reason == "timeout: exceeded 2 s", slow.result.reason
    assert slow.task.n_attempts == 1  # never retried
    # the executor is still usable after a crash and a timeout
    ex.task_timeout_s = DEADLINE_S - 30
    ex.submit(Task("after", "diagnostic", {}, EvalInput("CC")))
    assert _drain(ex)["after"].result.ok


def test_uneven_tasks_keep_workers_busy(ray_local):
    """With a long and many short tasks, short ones finish while the long one runs: the
    long task runs until the test ends it, so the order does not depend on load."""
    ex = RayExecutor(task_timeout_s=DEADLINE_S + 60)
    ex.start()
    ex.submit(Task("long", "diagnostic", {}, EvalInput("C", params={"sleep_s": DEADLINE_S + 30})))
    for i in range(6):
        ex.submit(Task(f"s{i}", "diagnostic", {}, EvalInput("C", params={"sleep_s": 0.2})))
    order = []
    end = time.monotonic() + DEADLINE_S
    while len(order) < 6 and time.monotonic() < end:
        order += [c.task.request_id for c in ex.wait(0.5)]
    still = [t.request_id for t in ex.in_flight()]
    ex.cancel_all()  # ends the long task (its worker is killed)
    assert sorted(order) == [f"s{i}" for i in range(6)], (order, still)
    assert still == ["long"]


# -- hostile conditions, through the CLI as users run it -------------------------------------

import os  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from conftest import cli, write_config  # noqa: E402

POOL = ["C", "CC", "CCC", "CCO", "CCN", "CCCO"]


def _body(executor: str = "", params: str = "{ burn_s = 0.05 }", n: int = 2) -> str:
    return f"""
objective = "n_heavy_atoms"
batch_size = 1
max_evaluations = {n}
[tracking]
enabled = false
[executor]
{executor}
[[backends]]
name = "_faulty"
params = {params}
"""


def _one_line_error(out) -> str:
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("crystal-agent: error: "), out.stderr[-2000:]
    return lines[0]


def test_unreachable_cluster_is_one_line_and_creates_nothing(tmp_path):
    cfg = write_config(tmp_path, POOL, _body('address = "127.0.0.1:1"'))
    out = cli("run", str(cfg), "--runs-dir", str(tmp_path / "runs"), timeout=60)
    assert "cannot reach the Ray cluster at 127.0.0.1:1" in _one_line_error(out)
    assert not (tmp_path / "runs" / "t").exists()


def test_cpus_per_task_above_num_cpus_is_refused_before_start(tmp_path):
    cfg = write_config(tmp_path, POOL, _body("num_cpus = 2\ncpus_per_task = 4"))
    out = cli("run", str(cfg), "--runs-dir", str(tmp_path / "runs"), timeout=60)
    assert "cpus_per_task = 4 exceeds num_cpus = 2" in _one_line_error(out)
    assert not (tmp_path / "runs" / "t").exists()


@pytest.mark.slow  # a CLI campaign starting its own embedded Ray (17-20 s at load 8)
def test_worker_crash_is_one_line_under_quiet(tmp_path):
    cfg = write_config(tmp_path, POOL, _body("num_cpus = 1\nmax_retries = 0",
                                             "{ crash_fraction = 1.0 }", n=2))
    out = cli("run", str(cfg), "--runs-dir", str(tmp_path / "runs"), "--quiet", timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 2, out.stderr[-3000:]  # one per crashed task, nothing else
    assert all(ln.startswith("crystal-agent: worker died running _faulty on ") for ln in lines)
    assert "A worker died or was killed" not in out.stdout + out.stderr
    assert "(2 failed)" in out.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stock_head(tmp_path, num_cpus: int) -> tuple[dict, int, str, subprocess.Popen]:
    """A `ray start --head` with a token in a private HOME (Ray 2.60 enables token
    authentication then): (its environment, port, temp dir, the start process, whose
    process group holds the cluster's processes)."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HOME"] = str(home)
    port = _free_port()
    ray_bin = Path(sys.executable).with_name("ray")
    ray_tmp = tempfile.mkdtemp(prefix="ca-ray-", dir="/tmp")  # short: Unix socket paths
    start = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--port", str(port), "--num-cpus", str(num_cpus),
         "--temp-dir", ray_tmp, "--include-dashboard=false", "--disable-usage-stats"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # the cluster's processes keep this process group
    )
    return env, port, ray_tmp, start


@pytest.mark.slow
def test_stock_ray_start_head_with_token_authentication(tmp_path):
    """`ray start --head` where ~/.ray/auth_token exists runs with token authentication
    (Ray 2.60); `--address` to it works with that token and is a one-line explanation
    without one, leaving no campaign behind."""
    env, port, ray_tmp, start = _stock_head(tmp_path, 1)
    try:
        log, _ = start.communicate(timeout=180)
        assert start.returncode == 0, log[-2000:]
        assert "Token authentication is enabled" in log
        cfg = write_config(tmp_path, POOL, _body())
        ok = cli("run", str(cfg), "--runs-dir", str(tmp_path / "runs"), "--quiet",
                 "--address", f"127.0.0.1:{port}", env={**env, "RAY_ADDRESS": ""}, timeout=300)
        assert ok.returncode == 0, ok.stderr[-2000:]
        assert "2 / 2" in ok.stdout
        stranger = tmp_path / "stranger"
        stranger.mkdir()
        bad = cli("run", str(cfg), "--runs-dir", str(tmp_path / "runs2"), "--address",
                  f"127.0.0.1:{port}", env={**env, "HOME": str(stranger), "RAY_ADDRESS": ""},
                  timeout=120)
        line = _one_line_error(bad)
        assert "token" in line and f"127.0.0.1:{port}" in line
        assert not (tmp_path / "runs2" / "t").exists()
    finally:
        try:
            os.killpg(start.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.slow
def test_a_cluster_lost_mid_run_is_one_line_soon_and_its_tasks_are_charged_what_they_used(tmp_path):
    """newuser44b #1: killing the head of a `ray start --head` cluster mid-run left the launcher
    retrying on it for 60 s, then Ray ended the process with its own message (exit 1), and the
    next resume charged ~100 CPU s for tasks that had used 0.3. Now: one line within seconds,
    exit 2, and the unfinished tasks' charge is what their workers recorded plus at most a
    heartbeat interval, far below the minute the launcher used to wait."""
    import sqlite3

    env, port, ray_tmp, head = _stock_head(tmp_path, 2)
    run = None
    try:
        log, _ = head.communicate(timeout=180)
        assert head.returncode == 0, log[-2000:]
        cfg = write_config(tmp_path, POOL, _body(params="{ sleep_s = 3.0 }", n=6).replace(
            "batch_size = 1", "batch_size = 2"))
        run = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", str(cfg), "--runs-dir", str(tmp_path / "runs"),
             "--quiet", "--address", f"127.0.0.1:{port}"],
            env={**env, "RAY_ADDRESS": ""}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        store = tmp_path / "runs" / "t" / "store.sqlite"
        deadline = time.monotonic() + 240
        n = 0
        while time.monotonic() < deadline and run.poll() is None:
            if store.exists():
                try:
                    with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5) as db:
                        n = db.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]
                except sqlite3.Error:
                    n = 0
            if n >= 2:
                break
            time.sleep(0.5)
        assert n >= 2, (run.poll(), run.stderr.read()[-2000:] if run.poll() is not None else "")
        time.sleep(1.0)  # the next two tasks are running
        os.killpg(head.pid, signal.SIGKILL)  # the head: GCS, raylet, its workers
        killed = time.monotonic()
        out, err = run.communicate(timeout=120)
        took = time.monotonic() - killed
        assert run.returncode == 2, (run.returncode, err[-3000:])
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert lines and lines[-1].startswith(f"crystal-agent: error: lost the Ray cluster at 127.0.0.1:{port}"), err[-3000:]
        assert "`crystal-agent resume t" in lines[-1]
        assert "worker died" not in err and "Failed to connect to GCS" not in err, err[-3000:]
        assert took < 40, took
        status = cli("status", "t", "--runs-dir", str(tmp_path / "runs"), "--json", env={**env, "RAY_ADDRESS": ""})
        assert status.returncode == 0, status.stderr
        import re

        # two sleeping tasks: their records (~0.3 CPU s each) plus their core for at most
        # about a heartbeat interval (5 s) and a record interval (2 s) each
        charge = [float(x) for x in re.findall(r'"unsettled_cpu_s": ([0-9.]+)', status.stdout)]
        assert charge and charge[0] < 2 * (5.0 + 2.0 + 1.0), (charge, status.stdout[-2000:])
    finally:
        if run is not None and run.poll() is None:
            run.kill()
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shutil.rmtree(ray_tmp, ignore_errors=True)


# -- the map-style executor the CSP engine is given ------------------------------------------

CSP_KW = dict(space_groups="P-1,P2_1", seed=2, progress=False, charges="xtb", batch_size=2, cache_dir="")


def _minima(land):
    return [(m.id, round(m.energy_kjmol, 6), m.space_group, m.multiplicity) for m in land.minima]


class _ReversedExecutor:
    """Yields the results last-first: the completion order of a busy cluster."""

    n_workers = 3

    def map_unordered(self, fn, items, shared=()):
        return reversed([fn(*shared, *item) for item in items])


def test_executors_satisfy_the_protocols():
    from agent.executor import Executor
    from agent.local_executor import LocalExecutor
    from sim_backends.executor import InProcessExecutor, MapExecutor

    def members(proto):  # what a class must have (not isinstance: it would call properties)
        return {n for n in vars(proto) if not n.startswith("_")} | set(proto.__annotations__)

    assert members(MapExecutor) == {"n_workers", "map_unordered"}
    assert members(MapExecutor) < members(Executor)
    for cls in (RayExecutor, LocalExecutor):
        assert all(hasattr(cls, n) or n in vars(cls()) for n in members(Executor)), cls
    for cls in (RayExecutor, LocalExecutor, InProcessExecutor, _ReversedExecutor):
        assert all(hasattr(cls, n) for n in members(MapExecutor)), cls
    assert not hasattr(InProcessExecutor, "submit")  # map-only: not enough for a campaign
    assert isinstance(LocalExecutor(), Executor) and isinstance(_ReversedExecutor(), MapExecutor)


def test_csp_same_minima_in_process_and_in_any_completion_order():
    """The CSP engine on the in-process executors and on one returning results in reverse:
    the same minima (ids, energies, groups, multiplicities)."""
    from agent.local_executor import LocalExecutor
    from sim_backends.csp.run import run_csp

    local = run_csp("O=C=O", 4, executor=LocalExecutor(), **CSP_KW)
    shuffled = run_csp("O=C=O", 4, executor=_ReversedExecutor(), **CSP_KW)
    assert len(local) >= 2
    assert _minima(local) == _minima(shuffled)
    assert local.meta["n_workers"] == 1 and shuffled.meta["n_workers"] == 3


@pytest.mark.slow
def test_csp_backend_runs_in_process_without_ray():
    """A campaign's CSP task runs the engine in its own process: no Ray imported there,
    and the old ``n_workers`` parameter (which started Ray inside the Ray task) is refused."""
    code = (
        "import sys\n"
        "from sim_backends.base import EvalInput\n"
        "from sim_backends.registry import get_backend\n"
        "r = get_backend('csp-ff').evaluate(EvalInput('O=C=O', params={'n_trials': 4, 'charges': 'xtb',"
        " 'space_groups': 'P-1', 'sampling': 'fixed'}))\n"
        "print(r.ok, 'ray' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert out.stdout.split() == ["True", "False"], out.stdout + out.stderr[-2000:]
    from sim_backends.base import ParamsError
    from sim_backends.registry import backend_class

    with pytest.raises(ParamsError, match="n_workers"):
        backend_class("csp-ff").check_params({"n_workers": 2})


@pytest.mark.slow
def test_csp_same_minima_on_ray_and_in_process():
    """Two Ray workers (the executor ``crystal-agent csp --workers 2`` builds) and the
    in-process executor minimise the same units: the same minima, same seed."""
    from agent.executor import csp_executor
    from agent.local_executor import LocalExecutor
    from sim_backends.csp.run import run_csp

    serial = run_csp("O=C=O", 4, executor=LocalExecutor(), **CSP_KW)
    with csp_executor(2) as ex:
        assert isinstance(ex, RayExecutor)
        par = run_csp("O=C=O", 4, executor=ex, **CSP_KW)
    assert _minima(par) == _minima(serial)
    assert par.meta["n_workers"] == 2


@pytest.mark.slow
def test_csp_cli_workers_use_ray(tmp_path):
    """``crystal-agent csp --workers 2`` runs on a local Ray (recorded in run.json) and
    writes the same minima as ``--workers 1``."""
    import json

    runs = {}
    for w in (1, 2):
        out = cli("csp", "O=C=O", "--n-trials", "4", "--sampling", "fixed", "--space-groups", "P-1,P2_1",
                  "--seed", "2", "--charges", "xtb", "--workers", str(w), "--json", cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-2000:]
        runs[w] = json.loads(out.stdout)
    assert runs[2]["meta"]["n_workers"] == 2 and runs[1]["meta"]["n_workers"] == 1
    key = [(m["id"], round(m["energy_kjmol"], 6)) for m in runs[1]["minima"]]
    assert [(m["id"], round(m["energy_kjmol"], 6)) for m in runs[2]["minima"]] == key


def test_worker_builds_each_backend_once_per_name_and_params(monkeypatch):
    """A worker process looks a backend up in the registry (an entry-point scan, ~45 ms)
    once per (name, params), not once per task; other params get their own instance."""
    import sim_backends.registry as registry
    from agent import executor
    from agent.executor import _evaluate_in_worker

    if hasattr(executor, "_WORKER_BACKENDS"):  # start from an empty cache
        monkeypatch.setattr(executor, "_WORKER_BACKENDS", type(executor._WORKER_BACKENDS)())
    real = registry.get_backend
    built = []
    monkeypatch.setattr(registry, "get_backend",
                        lambda name, **p: built.append((name, p)) or real(name, **p))
    results = [_evaluate_in_worker("diagnostic", {"sleep_s": 0.0}, EvalInput(s))
               for s in ("C", "CC", "c1ccccc1O", "CCO")]
    assert [r.values["n_heavy_atoms"] for r in results] == [1, 2, 7, 3]
    assert built == [("diagnostic", {"sleep_s": 0.0})]
    other = _evaluate_in_worker("diagnostic", {"sleep_s": 0.0, "mode": "raise"}, EvalInput("CC"))
    assert not other.ok and other.reason.startswith("error: ZeroDivisionError")
    assert len(built) == 2
    # the task's own inputs still reach the shared instance
    assert not _evaluate_in_worker("diagnostic", {"sleep_s": 0.0},
                                   EvalInput("CC", params={"mode": "raise"})).ok
    assert len(built) == 2


def test_cpu_limit_stops_a_burning_task_in_process():
    """The worker-side limit counts CPU seconds, not wall time: a busy loop is stopped
    after ~1 CPU s, and the previous limit is restored afterwards."""
    import resource

    from agent.executor import CpuLimitExceeded, cpu_limit

    before = resource.getrlimit(resource.RLIMIT_CPU)
    t0 = time.process_time()
    with pytest.raises(CpuLimitExceeded, match="exceeded 1 CPU s"):
        with cpu_limit(1.0):
            while time.process_time() - t0 < 30:
                pass
    assert time.process_time() - t0 < 5
    assert resource.getrlimit(resource.RLIMIT_CPU) == before
    with cpu_limit(1.0):  # sleeping costs no CPU: not stopped
        time.sleep(1.5)


def test_a_stale_sigxcpu_from_an_earlier_limit_does_not_stop_the_next_block():
    """The kernel repeats SIGXCPU each second past a soft limit; one sent for an earlier
    block can arrive after the next block installed its handler (CI, stop 47: a task
    "exceeded 1 CPU s" with 0.0 CPU s spent). Such a signal is ignored; a real limit still
    fires."""
    import os
    import signal

    from agent.executor import CpuLimitExceeded, cpu_limit

    with cpu_limit(1.0):
        os.kill(os.getpid(), signal.SIGXCPU)  # delivered at once, before any CPU is spent
        time.sleep(0.05)
    t0 = time.process_time()
    with pytest.raises(CpuLimitExceeded, match="exceeded 1 CPU s"):
        with cpu_limit(1.0):
            os.kill(os.getpid(), signal.SIGXCPU)  # stale: ignored ...
            while time.process_time() - t0 < 30:  # ... the real one stops the loop
                pass
    assert 0.5 < time.process_time() - t0 < 5


def test_cpu_limited_task_is_a_failed_result_charged_its_cpu(ray_local):
    """On Ray: a task past its CPU limit comes back failed with the CPU it measured
    (not cores x wall); a task that only sleeps longer than the limit succeeds."""
    ex = RayExecutor(task_timeout_s=120, task_cpu_limit_s=1.0, max_retries=1)
    ex.start()
    ex.submit(Task("burn", "_faulty", {}, EvalInput("CC", params={"burn_s": 20})))
    ex.submit(Task("sleep", "_faulty", {}, EvalInput("CC", params={"sleep_s": 2.5})))
    out = _drain(ex)
    burn = out["burn"]
    assert burn.result.reason == "timeout: exceeded 1 CPU s", burn.result.reason
    assert burn.task.n_attempts == 1 and 0.9 < burn.result.cpu_s < 5
    assert out["sleep"].result.ok, out["sleep"].result.reason


def test_cpu_limit_failure_is_built_like_every_executor_failure():
    """In the worker (here in-process, no Ray): a task past its CPU limit is the failed
    result the executor builds for any unfinished task (one helper), with the backend's
    version and fidelity, the reason text, the CPU it measured and the limit in extra."""
    from dataclasses import asdict

    from agent.executor import _evaluate_in_worker, _failed, _failed_result

    inp = EvalInput("CC", params={"burn_s": 20})
    got = _evaluate_in_worker("_faulty", {}, inp, cpu_limit_s=1.0)
    assert got.status == "failed" and got.reason == "timeout: exceeded 1 CPU s", got.reason
    # charged what it measured, about the limit: the kernel counts the limit on its precise
    # CPU clock, os.times() on tick-sampled user/system time, which in a long-lived process
    # (this pytest worker) can differ by a tenth of a second or more
    assert 0.5 < got.cpu_s < 5 and got.extra == {"cpu_limit_s": 1.0}
    want = _failed_result("_faulty", inp, got.reason, got.wall_s, got.cpu_s, version="1")
    want.extra["cpu_limit_s"] = 1.0
    assert asdict(got) == asdict(want)
    # the worker-could-not-report failure: the same fields, version unknown
    task = Task("t", "_faulty", {}, inp, fidelity=2)
    lost = _failed(task, "worker died", 3.0, 6.0)
    assert asdict(lost) == asdict(_failed_result("_faulty", inp, "worker died", 3.0, 6.0, fidelity=2))
    assert lost.backend_version == "?" and lost.inputs_hash == inp.inputs_hash("_faulty", "?")


def test_worker_niceness_is_a_config_option_default_off():
    """`[executor] worker_niceness` (default 0, not Ray's +15) reaches the executor."""
    from agent.config import ExecutorConfig
    from agent.runner import make_executor

    assert ExecutorConfig().worker_niceness == 0
    assert RayExecutor().worker_niceness == 0
    cfg = type("Cfg", (), {"executor": ExecutorConfig(worker_niceness=7)})()
    assert make_executor(cfg).worker_niceness == 7
    with pytest.raises(ValueError, match="worker_niceness"):
        ExecutorConfig(worker_niceness=-1)


@pytest.mark.slow  # starts its own embedded Ray in a fresh process (~10-20 s)
def test_embedded_ray_workers_run_at_the_configured_niceness():
    """The workers of the embedded Ray run at the launcher's niceness + worker_niceness
    (Ray alone would add 15), and the launcher's environment is left as it was."""
    code = (
        "import os, ray\n"
        "from agent.executor import RayExecutor\n"
        "for n in (0, 7):\n"
        "    ex = RayExecutor(num_cpus=1, worker_niceness=n)\n"
        "    ex.start()\n"
        "    w = ray.get(ray.remote(lambda: os.nice(0)).remote())\n"
        "    ex.shutdown()\n"
        "    print(n, w - os.nice(0), os.environ.get('RAY_worker_niceness'))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**env, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert out.stdout.split() == ["0", "0", "None", "7", "7", "None"], out.stdout + out.stderr[-2000:]


def test_a_timed_out_task_is_charged_the_cpu_its_worker_recorded(ray_local, tmp_path):
    """On Ray with a record folder: a task that sleeps past its wall-time limit (12 s) is
    charged the CPU its worker recorded plus its core for the time after the latest record,
    well below cores x wall; a finished task leaves no record behind."""
    from agent.executor import TASK_PROGRESS_S

    ex = RayExecutor(task_timeout_s=12.0, max_retries=1, progress_dir=tmp_path)
    ex.start()
    ex.submit(Task("ok", "_faulty", {}, EvalInput("CC", params={"sleep_s": 0.1})))
    assert _drain(ex)["ok"].result.ok
    assert not list(tmp_path.glob("*.json"))
    ex.submit(Task("sleeper", "_faulty", {}, EvalInput("CC", params={"sleep_s": 600})))
    slow = _drain(ex)["sleeper"]
    assert slow.result.reason == "timeout: exceeded 12 s", slow.result.reason
    assert slow.result.wall_s >= 12.0
    # the record's CPU (worker start-up and imports) plus the time after the latest record; on a
    # loaded machine the recording thread can lag a few intervals, so the bound is against the
    # old charge (cores x wall), not one interval
    assert slow.result.cpu_s < 0.6 * slow.result.wall_s, (slow.result.cpu_s, slow.result.wall_s, TASK_PROGRESS_S)
    assert not list(tmp_path.glob("*.json"))
