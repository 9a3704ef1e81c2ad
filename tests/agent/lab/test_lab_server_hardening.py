"""Reference lab server under load and hostile clients (loopback only): listen backlog,
socket timeouts, bounded body size and JSON nesting, idempotency under concurrency."""

from __future__ import annotations

import json
import socket

import pytest

from agent.lab.loadtest import concurrent_submissions, stalled_clients
from agent.lab.server import MAX_BODY_BYTES, LabServer
from agent.lab.testing import x23_landscape

TOKEN = "hardening-token-42"
SMILES = "O=C1CCC(=O)CC1"


def _server(tmp_path, **kw):
    kw.setdefault("queue_delay_s", (0.0, 0.1))
    kw.setdefault("run_delay_s", (0.1, 0.3))
    return LabServer(list(x23_landscape()), tmp_path / "lab.sqlite", TOKEN, **kw)


def _raw_post(server, body: bytes, headers: str = "") -> tuple[int, dict]:
    """POST raw bytes; returns (status, JSON body)."""
    head = (f"POST /experiments HTTP/1.1\r\nHost: lab\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{headers}\r\n").encode()
    with socket.create_connection((server.host, server.port), timeout=10) as s:
        s.sendall(head + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2] or b"{}")


def test_queued_connections_are_not_refused_while_the_server_is_busy(tmp_path):
    """The listen backlog holds a burst: 60 connects to a server that does not accept yet
    all complete (the stdlib default backlog of 5 lets only ~6 in)."""
    srv = _server(tmp_path)  # bound and listening, serve loop not started
    socks, n_ok = [], 0
    try:
        for _ in range(60):
            s = socket.socket()
            s.settimeout(0.5)
            try:
                s.connect((srv.host, srv.port))
                n_ok += 1
            except OSError:
                pass
            socks.append(s)
    finally:
        for s in socks:
            s.close()
        srv.stop()
    assert n_ok == 60


def test_stalled_body_is_dropped_and_server_keeps_answering(tmp_path):
    srv = _server(tmp_path, socket_timeout_s=0.5).start()
    try:
        out = stalled_clients(srv.host, srv.port, TOKEN, n=20, wait_s=8.0)
    finally:
        srv.stop()
    assert out["dropped"] == 20 and out["held"] == 0
    assert out["health_ok"]


def test_stalled_client_gets_408(tmp_path):
    srv = _server(tmp_path, socket_timeout_s=0.3).start()
    try:
        with socket.create_connection((srv.host, srv.port), timeout=5) as s:
            s.sendall(f"POST /experiments HTTP/1.1\r\nHost: lab\r\nAuthorization: Bearer {TOKEN}\r\n"
                      "Content-Length: 80\r\n\r\n{\"request_id\"".encode())
            data = s.recv(4096)
    finally:
        srv.stop()
    assert data.startswith(b"HTTP/1.1 408")


def test_deep_nesting_and_huge_bodies_are_client_errors(tmp_path):
    srv = _server(tmp_path).start()
    try:
        code, body = _raw_post(srv, b"[" * 20000 + b"]" * 20000)
        assert code == 400 and "nested deeper" in body["error"]
        code, body = _raw_post(srv, b'{"request_id": "' + b"x" * (MAX_BODY_BYTES + 10) + b'"}')
        assert code == 413 and "exceeds" in body["error"]
        # nesting inside strings does not count
        req = {"request_id": "deep-ok", "smiles": SMILES, "method": "slurry", "solvent": "water", "temperature_K": 298.0}
        code, _ = _raw_post(srv, json.dumps(req).encode())
        assert code == 201
        code, body = _raw_post(srv, json.dumps({**req, "request_id": "deep-2", "note": "[" * 100}).encode())
        assert code == 201, body
        # (a solvent of that name is parsed too, and refused by the lab at submission)
        code, body = _raw_post(srv, json.dumps({**req, "request_id": "deep-3", "solvent": "[" * 100}).encode())
        assert code == 422 and "unknown solvent" in body["error"], body
    finally:
        srv.stop()


@pytest.mark.parametrize("n_ids, n_copies", [(40, 5)])
def test_200_concurrent_posts_all_answered_and_idempotent(tmp_path, n_ids, n_copies):
    srv = _server(tmp_path).start()
    try:
        out = concurrent_submissions(srv.host, srv.port, TOKEN, SMILES, n_ids=n_ids, n_copies=n_copies)
        health = srv.health()
    finally:
        srv.stop()
    assert out["n_requests"] == 200
    assert out["n_answered"] == 200, out["by_status"]
    assert set(out["by_status"]) <= {"200", "201"}, out["by_status"]
    assert out["n_created"] == n_ids and out["idempotent"]
    assert health["n_experiments"] == n_ids
