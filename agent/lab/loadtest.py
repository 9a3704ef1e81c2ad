"""Load and hostile-client probes of a lab server over loopback (stdlib only).

Used by ``benchmarks/lab_server_load.py`` and the fast server tests. Every probe is
bounded in connections and time, and talks only to the ``host``/``port`` it is given
(callers use 127.0.0.1).

* :func:`concurrent_submissions`: ``n_ids`` experiments, each POSTed ``n_copies``
  times, all released at once from ``n_ids * n_copies`` threads; counts answers by
  HTTP status, transport errors (resets, timeouts) and checks idempotency (one
  experiment id per request id).
* :func:`stalled_clients`: clients that send headers announcing a body and never send
  it; measures how long the server holds each, and whether it still answers
  ``/health`` meanwhile.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def _post(host: str, port: int, token: str, body: dict[str, Any], timeout_s: float) -> tuple[int | str, dict[str, Any]]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        raw = json.dumps(body).encode()
        conn.request("POST", "/experiments", raw, {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                                                   "Idempotency-Key": body["request_id"]})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return type(exc).__name__, {}
    finally:
        conn.close()


def concurrent_submissions(
    host: str, port: int, token: str, smiles: str, n_ids: int = 40, n_copies: int = 5, timeout_s: float = 30.0, prefix: str = "load"
) -> dict[str, Any]:
    """POST ``n_ids`` distinct requests ``n_copies`` times each, all at once.

    Returns:
        ``{"n_requests", "by_status": {status: count}, "n_answered", "n_created",
        "idempotent": bool, "wall_s"}``; ``n_created`` counts 201 answers (one per
        request id when idempotency holds), ``idempotent`` is True when every copy of
        a request id got the same experiment id.
    """
    if not (1 <= n_ids <= 1000 and 1 <= n_copies <= 20 and n_ids * n_copies <= 2000):
        raise ValueError("concurrent_submissions: 1-1000 ids, 1-20 copies, at most 2000 requests")
    bodies = [
        {"request_id": f"{prefix}-{i}", "smiles": smiles, "method": "slurry", "solvent": "water", "temperature_K": 298.15}
        for i in range(n_ids) for _ in range(n_copies)
    ]
    barrier = threading.Barrier(len(bodies))

    def one(body: dict[str, Any]) -> tuple[str, int | str, str | None]:
        try:
            barrier.wait(timeout=timeout_s)
        except threading.BrokenBarrierError:
            pass
        status, payload = _post(host, port, token, body, timeout_s)
        return body["request_id"], status, payload.get("experiment_id")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        results = list(pool.map(one, bodies))
    wall = time.perf_counter() - t0
    by_status = Counter(str(s) for _, s, _ in results)
    ids: dict[str, set[str | None]] = {}
    for rid, status, eid in results:
        if status in (200, 201):
            ids.setdefault(rid, set()).add(eid)
    return {
        "n_requests": len(bodies),
        "by_status": dict(sorted(by_status.items())),
        "n_answered": sum(1 for _, s, _ in results if isinstance(s, int)),
        "n_created": by_status.get("201", 0),
        "idempotent": len(ids) == n_ids and all(len(v) == 1 for v in ids.values()),
        "wall_s": wall,
    }


def stalled_clients(host: str, port: int, token: str, n: int = 50, wait_s: float = 15.0) -> dict[str, Any]:
    """Open ``n`` connections that announce a 100-byte body and never send it.

    Returns:
        ``{"n", "dropped", "held", "median_drop_s", "max_drop_s", "health_ok",
        "health_s"}``: how many the server closed (answering or not) within
        ``wait_s``, how many it still held, and whether ``GET /health`` was answered
        while they stalled (and how fast).
    """
    if not (1 <= n <= 500 and 0 < wait_s <= 120):
        raise ValueError("stalled_clients: 1-500 clients, wait 0-120 s")
    head = (
        "POST /experiments HTTP/1.1\r\nHost: lab\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: 100\r\n\r\n"
    ).encode()
    socks: list[socket.socket] = []
    try:
        t0 = time.monotonic()
        for _ in range(n):
            s = socket.create_connection((host, port), timeout=5.0)
            s.sendall(head)
            s.setblocking(False)
            socks.append(s)
        health_ok, health_s = False, float("nan")
        t_h = time.perf_counter()
        conn = http.client.HTTPConnection(host, port, timeout=5.0)
        try:
            conn.request("GET", "/health")
            health_ok = conn.getresponse().status == 200
            health_s = time.perf_counter() - t_h
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        dropped_at: dict[int, float] = {}
        while len(dropped_at) < n and time.monotonic() - t0 < wait_s:
            for i, s in enumerate(socks):
                if i in dropped_at:
                    continue
                try:
                    data = s.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data == b"" or data:  # an answer (408) or EOF: the server let go
                    dropped_at[i] = time.monotonic() - t0
                    while data:
                        try:
                            data = s.recv(4096)
                        except (BlockingIOError, OSError):
                            break
            time.sleep(0.05)
        times = sorted(dropped_at.values())
        return {
            "n": n,
            "dropped": len(times),
            "held": n - len(times),
            "median_drop_s": times[len(times) // 2] if times else None,
            "max_drop_s": times[-1] if times else None,
            "health_ok": health_ok,
            "health_s": health_s,
        }
    finally:
        for s in socks:
            s.close()
