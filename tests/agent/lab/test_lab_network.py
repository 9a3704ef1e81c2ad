"""Reference lab server and network adapter over loopback: auth, validation,
idempotency, retries, timeouts, restart durability, safety gate and CLI approve."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agent.lab.base import LabAuthError, LabConnectionError, LabRequest, LabRequestError
from agent.lab.network import NetworkLabAdapter
from agent.lab.safety import ApprovalQueue, GuardedAdapter, LabBudgetError
from agent.lab.server import LabServer
from tests.conftest import cli
from agent.lab.testing import x23_landscape

TOKEN = "net-test-token-42"


def _server(tmp_path, port=0, **kw):
    kw.setdefault("queue_delay_s", (0.0, 0.1))
    kw.setdefault("run_delay_s", (0.1, 0.6))
    return LabServer(list(x23_landscape()), tmp_path / "lab.sqlite", TOKEN, port=port, **kw)


@pytest.fixture
def server(tmp_path):
    srv = _server(tmp_path).start()
    yield srv
    srv.stop()


def _raw(url, method="GET", body=None, token=TOKEN, headers=None):
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    h = {"Content-Type": "application/json", **(headers or {})}
    if token:
        h["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, headers=h, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(proc, port: int, deadline_s: float = 180.0) -> None:
    """Block until the server process accepts connections on ``port`` (or has exited)."""
    import time

    t_end = time.monotonic() + deadline_s
    while time.monotonic() < t_end and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.2)


REQ = {"request_id": "n1", "smiles": "O=C1CCC(=O)CC1", "method": "slurry", "solvent": "water", "temperature_K": 298.0}


def test_server_auth_validation_and_duplicates(server):
    url = server.url + "/experiments"
    assert _raw(url, "POST", REQ, token=None)[0] == 401
    assert _raw(url, "POST", REQ, token="wrong-token-000")[0] == 401
    assert _raw(server.url + "/experiments/exp-0", token=None)[0] == 401
    code, body = _raw(url, "POST", b"{not json")
    assert code == 422 and "error" in body
    code, body = _raw(url, "POST", {**REQ, "method": "boiling"})
    assert code == 422 and "unknown method" in body["error"]
    code, body = _raw(url, "POST", {**REQ, "colour": "red"})
    assert code == 422 and "unknown request field" in body["error"]
    assert _raw(url, "POST", REQ, headers={"Idempotency-Key": "other"})[0] == 422
    code1, first = _raw(url, "POST", REQ, headers={"Idempotency-Key": "n1"})
    code2, second = _raw(url, "POST", REQ, headers={"Idempotency-Key": "n1"})
    assert (code1, code2) == (201, 200)
    assert first["experiment_id"] == second["experiment_id"]
    assert _raw(url, "POST", {**REQ, "temperature_K": 310.0})[0] == 409
    assert _raw(server.url + "/experiments/exp-unknown")[0] == 404
    assert _raw(server.url + "/health", token=None) == (200, server.health())
    assert server.health()["n_experiments"] == 1


def test_adapter_requires_token_and_refuses_insecure_remote(monkeypatch, tmp_path):
    monkeypatch.delenv("CRYSTAL_AGENT_LAB_TOKEN", raising=False)
    with pytest.raises(LabAuthError, match="CRYSTAL_AGENT_LAB_TOKEN"):
        NetworkLabAdapter("http://127.0.0.1:9")
    (tmp_path / "tok").write_text(TOKEN + "\n")
    a = NetworkLabAdapter("http://127.0.0.1:9", token_file=tmp_path / "tok")
    assert TOKEN not in repr(a)
    with pytest.raises(LabRequestError, match="plain http"):
        NetworkLabAdapter("http://lab.example.org", token_file=tmp_path / "tok")
    with pytest.raises(LabRequestError, match="base_url"):
        NetworkLabAdapter("ftp://127.0.0.1", token_file=tmp_path / "tok")


def test_wrong_token_is_auth_error(server, tmp_path):
    (tmp_path / "bad").write_text("not-the-token")
    a = NetworkLabAdapter(server.url, token_file=tmp_path / "bad", max_retries=0)
    with pytest.raises(LabAuthError, match="401"):
        a.submit(LabRequest(**REQ))


def test_retry_until_server_comes_up(tmp_path, monkeypatch):
    monkeypatch.setenv("CRYSTAL_AGENT_LAB_TOKEN", TOKEN)
    port = _free_port()
    started: list[LabServer] = []
    delays: list[float] = []

    def sleep_and_start(dt):  # the lab comes back while the client backs off
        delays.append(dt)
        if len(delays) == 2:
            started.append(_server(tmp_path, port=port).start())

    a = NetworkLabAdapter(f"http://127.0.0.1:{port}", max_retries=4, backoff_s=0.1, sleep=sleep_and_start)
    try:
        ticket = a.submit(LabRequest(**REQ))
        assert ticket.ticket_id.startswith("exp-")
        assert a.n_attempts == 3 and delays == [0.1, 0.2]  # exponential backoff
        assert started[0].health()["n_experiments"] == 1
    finally:
        for s in started:
            s.stop()


def test_gives_up_after_retries_with_clear_error(monkeypatch):
    monkeypatch.setenv("CRYSTAL_AGENT_LAB_TOKEN", TOKEN)
    a = NetworkLabAdapter(f"http://127.0.0.1:{_free_port()}", max_retries=2, backoff_s=0.0)
    with pytest.raises(LabConnectionError, match="unreachable after 3 attempts") as err:
        a.submit(LabRequest(**REQ))
    assert "\n" not in str(err.value)
    assert a.health()["ok"] is False


def test_timeout_on_slow_server(monkeypatch):
    monkeypatch.setenv("CRYSTAL_AGENT_LAB_TOKEN", TOKEN)

    class Slow(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            time.sleep(1.5)

        def log_message(self, *a):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    httpd.daemon_threads = True
    th = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    th.start()
    try:
        a = NetworkLabAdapter(f"http://127.0.0.1:{httpd.server_address[1]}", timeout_s=0.3, max_retries=1, backoff_s=0.0)
        with pytest.raises(LabConnectionError, match="timed out after 0.3 s"):
            a.submit(LabRequest(**REQ))
        assert a.n_attempts == 2
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.slow
def test_results_arrive_exactly_once_across_server_restart(tmp_path, monkeypatch):
    monkeypatch.setenv("CRYSTAL_AGENT_LAB_TOKEN", TOKEN)
    port = _free_port()
    srv = _server(tmp_path, port=port, run_delay_s=(0.2, 1.5)).start()
    a = NetworkLabAdapter(f"http://127.0.0.1:{port}", timeout_s=10, max_retries=8, backoff_s=0.05, max_backoff_s=0.5)
    requests = [LabRequest(f"rs{i}", "O=C1CCC(=O)CC1", "slow_evaporation", "ethanol", 290.0 + i) for i in range(8)]
    tickets = {r.request_id: a.submit(r) for r in requests}
    results: dict[str, object] = {}
    delivered: list[str] = []

    def collect():
        for rid, t in tickets.items():
            if rid in results:
                continue
            st = a.poll(t)
            if st.is_terminal:
                results[rid] = st
                delivered.append(rid)

    deadline = time.monotonic() + 20
    while len(results) < 3 and time.monotonic() < deadline:
        collect()
        time.sleep(0.05)
    before = dict(results)
    assert 0 < len(before) < len(requests), "restart must happen mid-way"
    srv.stop()
    srv = _server(tmp_path, port=port, run_delay_s=(0.2, 1.5)).start()  # same db
    try:
        # a client that lost its tickets resubmits everything: no new experiments
        assert {r.request_id: a.submit(r) for r in requests} == tickets
        while len(results) < len(requests) and time.monotonic() < deadline + 20:
            collect()
            time.sleep(0.05)
        assert sorted(delivered) == sorted(tickets) and len(delivered) == len(set(delivered))
        assert srv.health()["n_experiments"] == len(requests)
        for rid, st in before.items():  # finished results are served unchanged
            assert a.poll(tickets[rid]) == st
    finally:
        srv.stop()


@pytest.mark.slow
def test_guarded_adapter_holds_until_approved_and_enforces_budget(server, tmp_path, monkeypatch):
    monkeypatch.setenv("CRYSTAL_AGENT_LAB_TOKEN", TOKEN)
    clock = [1_700_000_000.0]
    queue = ApprovalQueue(tmp_path / "camp" / "lab_approvals.sqlite", clock=lambda: clock[0])
    gate = GuardedAdapter(NetworkLabAdapter(server.url), queue, daily_budget=2)
    t1 = gate.submit(LabRequest(**REQ))
    st = gate.poll(t1)
    assert st.state == "awaiting_approval" and "crystal-agent lab approve n1" in st.reason
    assert server.health()["n_experiments"] == 0  # dry run: nothing reached the lab
    t2 = gate.submit(LabRequest(**{**REQ, "request_id": "n2"}))
    with pytest.raises(LabBudgetError, match="daily lab budget of 2"):
        gate.submit(LabRequest(**{**REQ, "request_id": "n3"}))
    assert gate.submit(LabRequest(**REQ)) == t1  # resubmitting is not a new experiment
    assert gate.cancel(t2).state == "cancelled"
    # operator approves through the CLI
    out = cli("lab", "approve", "n1", "--campaign-dir", str(tmp_path / "camp"))
    assert out.returncode == 0 and "approved 1" in out.stdout
    assert gate.poll(t1).state in ("queued", "running", "done")
    assert server.health()["n_experiments"] == 1
    clock[0] += 86400.0  # next UTC day: budget renewed
    gate.submit(LabRequest(**{**REQ, "request_id": "n3"}))
    listing = cli("lab", "approve", "--list", "--campaign-dir", str(tmp_path / "camp"))
    assert "pending" in listing.stdout and "n3" in listing.stdout
    bad = cli("lab", "approve", "nope", "--campaign-dir", str(tmp_path / "camp"))
    assert bad.returncode == 2 and "no lab request 'nope'" in bad.stderr
    missing = cli("lab", "approve", "--all", "--campaign-dir", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no approval queue" in missing.stderr
    gate.close()


@pytest.mark.slow
def test_cli_serve_runs_the_reference_lab(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from sim_backends.landscape import Landscape

    Landscape("", list(x23_landscape())).write_cif_dir(tmp_path / "cifs")
    (tmp_path / "tok").write_text(TOKEN)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "CRYSTAL_AGENT_LAB_TOKEN"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "lab", "serve", "--port", str(port), "--db", str(tmp_path / "s.sqlite"),
         "--token-file", str(tmp_path / "tok"), "--structures", str(tmp_path / "cifs")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # a child inherits an ignored SIGINT (set by earlier tests' libraries in this
        # pytest process), and Python then never raises KeyboardInterrupt: restore it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        _wait_listening(proc, port)  # a cold interpreter (first run of a fresh venv) can take many seconds
        a = NetworkLabAdapter(f"http://127.0.0.1:{port}", token_file=tmp_path / "tok", max_retries=30, backoff_s=0.1, max_backoff_s=0.3)
        ticket = a.submit(LabRequest(**REQ))
        assert a.poll(ticket).state in ("queued", "running", "done", "failed")
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    no_token = cli("lab", "serve", "--port", str(port), env={"CRYSTAL_AGENT_LAB_TOKEN": ""})
    assert no_token.returncode == 2 and "no lab token" in no_token.stderr


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_cli_serve_refuses_a_port_outside_0_65535(tmp_path, capsys, port):
    """newuser42 item 1: `lab serve --port 99999` was "unexpected OverflowError" (exit 1)
    after creating the queue's SQLite file; now a one-line usage error, exit 2, nothing made."""
    from agent.cli import main

    (tmp_path / "tok").write_text(TOKEN)
    rc = main(["lab", "serve", "--port", port, "--db", str(tmp_path / "s.sqlite"),
               "--token-file", str(tmp_path / "tok")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--port" in err, err
    assert "unexpected" not in err and "Traceback" not in err
    assert not (tmp_path / "s.sqlite").exists()
