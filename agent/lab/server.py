"""Reference lab server: the robot side of the HTTP/JSON lab protocol.

A stdlib ``ThreadingHTTPServer`` with a SQLite experiment queue. It "runs" the
experiments with a :class:`~agent.lab.simulated.SimulatedLab` on a landscape given at
start and persists every experiment and result, so after a restart the same results
are served (results are deterministic in the lab seed and the request
(:func:`agent.lab.simulated.draw_key`: a campaign's request by its molecule and number,
not the campaign name), and once computed they are read back from the database, never
recomputed).

Protocol (JSON bodies, ``Authorization: Bearer <token>`` on every route but /health):

=======================================  =============================================
``POST /experiments``                    body = LabRequest fields; header
                                         ``Idempotency-Key`` (= request_id if given).
                                         201 new, 200 duplicate (same experiment),
                                         401 bad token, 409 id reused for another
                                         request, 422 malformed body, a molecule
                                         the lab has no form of, or conditions the
                                         lab refuses (one line with the reason, e.g.
                                         "refused: benzene is a liquid at 298.15 K
                                         ..."; nothing is queued).
``GET /experiments/{id}``                ``{"experiment_id", "request_id", "status"}``
                                         with status = LabStatus.to_dict(); 404 unknown.
``POST /experiments/{id}/cancel``        cancels if not finished; returns as GET.
``GET /health``                          ``{"ok": true, "n_experiments": ..}``.
=======================================  =============================================

Hostile or broken clients get an answer or are dropped, never served forever:

* the listen backlog is ``backlog`` (default 128) connections, so bursts of concurrent
  clients are queued by the kernel instead of reset;
* every connection has a socket timeout (``socket_timeout_s``, default 5 s): a client
  that announces a body and never sends it gets 408 and is disconnected, a client that
  never finishes its headers is dropped;
* request bodies are at most :data:`MAX_BODY_BYTES` (413 above) and JSON nesting at
  most :data:`MAX_JSON_DEPTH` levels (400 deeper), checked before parsing;
* malformed JSON or request fields: 422; an unexpected error: 500 with one line.

Molecules: the landscape's forms are grouped by their molecule's empirical formula (a
campaign's ``structures/`` folder may hold several molecules' forms); a request is answered
from the forms of its SMILES's formula only, and a request for a molecule the server has no
form of is refused (422, one line naming the formulas it has), never answered with another
molecule's forms.

Time is wall-clock (``time.time``) by default so delays survive restarts.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.lab.base import LabError, LabRequest, LabRequestError, LabStatus

if TYPE_CHECKING:
    from sim_backends.landscape import LandscapeEntry

MAX_BODY_BYTES = 64 * 1024
"""Largest accepted request body (a LabRequest is a few hundred bytes)."""
MAX_JSON_DEPTH = 32
"""Deepest accepted JSON nesting of a request body."""
_EXP_PATH = re.compile(r"^/experiments/([A-Za-z0-9_-]{1,64})(/cancel)?$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS experiments (
    experiment_id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE,
    request_json TEXT NOT NULL,
    submitted_s REAL NOT NULL,
    queue_s REAL NOT NULL,
    run_s REAL NOT NULL,
    state TEXT NOT NULL,          -- open | done | failed | cancelled
    status_json TEXT              -- terminal LabStatus as JSON
);
"""


def experiment_id_for(request_id: str) -> str:
    """The server's experiment id for a request id (stable, 20 hex chars)."""
    return "exp-" + hashlib.sha256(request_id.encode()).hexdigest()[:16]


class LabServer:
    """An HTTP lab robot backed by a simulated lab and a SQLite queue.

    Args:
        landscape: candidate structures the simulated lab draws from.
        db_path: SQLite file (created if missing; reused on restart).
        token: bearer token clients must present.
        host: bind address (default loopback).
        port: TCP port; 0 picks a free one (see :attr:`port` after start).
        seed: simulated-lab seed.
        queue_delay_s, run_delay_s: (low, high) experiment durations in seconds.
        noise_level: PXRD noise level of the simulated measurements.
        clock: wall-clock source in seconds.
        backlog: listen backlog (connections waiting to be accepted).
        socket_timeout_s: per-connection socket timeout in seconds (None: wait
            forever, the stdlib default; only for comparisons).
    """

    def __init__(
        self,
        landscape: Sequence[LandscapeEntry],
        db_path: str | Path,
        token: str,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
        queue_delay_s: tuple[float, float] = (0.0, 1.0),
        run_delay_s: tuple[float, float] = (1.0, 5.0),
        noise_level: str = "default",
        clock: Callable[[], float] | None = None,
        backlog: int = 128,
        socket_timeout_s: float | None = 5.0,
    ) -> None:
        from agent.lab.simulated import SimulatedLab

        if not token or len(token) < 8:
            raise LabError("lab server token must be at least 8 characters")
        if not 1 <= int(backlog) <= 65535:
            raise LabError(f"backlog must be 1-65535, got {backlog}")
        if socket_timeout_s is not None and not 0 < float(socket_timeout_s) <= 3600:
            raise LabError(f"socket_timeout_s must be in (0, 3600] s, got {socket_timeout_s}")
        self.lab = SimulatedLab(landscape, seed=seed, queue_delay_s=queue_delay_s, run_delay_s=run_delay_s, noise_level=noise_level)
        #: the forms by their molecule's empirical formula (module docstring)
        self.forms_by_formula: dict[str, list[LandscapeEntry]] = {}
        for entry in landscape:
            self.forms_by_formula.setdefault(entry.structure.composition.reduced_formula, []).append(entry)
        self.clock = clock or time.time
        self._token = token.encode()
        self._db_lock = threading.Lock()
        self._run_locks: dict[str, threading.Lock] = {}
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.db_path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        server_class = type("_LabHTTPServer", (ThreadingHTTPServer,), {"request_queue_size": int(backlog), "daemon_threads": True})
        self._httpd = server_class((host, port), _make_handler(self, socket_timeout_s))
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> LabServer:
        """Serve in a background thread; returns self."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted."""
        try:
            self._httpd.serve_forever(poll_interval=0.2)
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop serving and close the socket and the database."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()
        with self._db_lock:
            try:
                self._db.close()
            except sqlite3.ProgrammingError:
                pass

    # -- operations --------------------------------------------------------------------
    def authorised(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[7:].strip().encode(), self._token)

    def _row(self, experiment_id: str) -> tuple | None:
        with self._db_lock:
            return self._db.execute(
                "SELECT experiment_id, request_id, request_json, submitted_s, queue_s, run_s, state, status_json "
                "FROM experiments WHERE experiment_id = ?",
                (experiment_id,),
            ).fetchone()

    def _forms_for(self, smiles: str) -> list[LandscapeEntry]:
        """The forms of the molecule ``smiles`` (by empirical formula)."""
        from pymatgen.core import Composition
        from rdkit import Chem
        from rdkit.Chem import rdMolDescriptors

        mol = Chem.MolFromSmiles(smiles)
        if mol is None:
            raise LabRequestError(f"invalid SMILES {smiles!r}")
        formula = rdMolDescriptors.CalcMolFormula(Chem.AddHs(mol))
        forms = self.forms_by_formula.get(Composition(formula).reduced_formula)
        if not forms:
            raise LabRequestError(
                f"this lab has no form of {smiles} ({formula}); its forms are of "
                + ", ".join(f"{f} ({len(v)})" for f, v in sorted(self.forms_by_formula.items())))
        return forms

    def submit(self, request: LabRequest) -> tuple[int, dict[str, Any]]:
        """Create (201) or find (200) the experiment; 409 if the id was used differently;
        :class:`~agent.lab.base.LabRequestError` for a molecule the server has no form of or
        conditions its lab refuses (:func:`~agent.lab.substances.crystallisation_problem`),
        so they are refused at submission rather than queued and failed later."""
        from agent.lab.substances import crystallisation_problem

        self.lab.add_molecule(request.smiles, self._forms_for(request.smiles))
        problem = crystallisation_problem(request.smiles, request.method, request.solvent, request.temperature_K)
        eid = experiment_id_for(request.request_id)
        body = json.dumps(request.to_dict(), sort_keys=True)
        with self._db_lock:
            row = self._db.execute("SELECT request_json FROM experiments WHERE request_id = ?", (request.request_id,)).fetchone()
            if row is None and problem is not None:  # (one stored before this check is served as it is)
                raise LabRequestError(f"refused: {problem}")
            if row is None:
                queue_s, run_s = self.lab.durations_s(request)
                self._db.execute(
                    "INSERT INTO experiments VALUES (?, ?, ?, ?, ?, ?, 'open', NULL)",
                    (eid, request.request_id, body, self.clock(), queue_s, run_s),
                )
                code = 201
            elif row[0] != body:
                return 409, {"error": f"request_id {request.request_id!r} already used for a different request"}
            else:
                code = 200
        return code, self.describe(eid)

    def describe(self, experiment_id: str) -> dict[str, Any]:
        """The experiment as JSON, running it if its time has come. KeyError if unknown."""
        row = self._row(experiment_id)
        if row is None:
            raise KeyError(experiment_id)
        eid, rid, req_json, submitted, queue_s, run_s, state, status_json = row
        if status_json is None:
            elapsed = self.clock() - submitted
            if elapsed < queue_s:
                status = LabStatus("queued")
            elif elapsed < queue_s + run_s:
                status = LabStatus("running")
            else:
                status = self._finish(eid, LabRequest.from_dict(json.loads(req_json)))
        else:
            status = LabStatus.from_dict(json.loads(status_json))
        return {"experiment_id": eid, "request_id": rid, "status": status.to_dict()}

    def _finish(self, eid: str, request: LabRequest) -> LabStatus:
        with self._db_lock:
            lock = self._run_locks.setdefault(eid, threading.Lock())
        with lock:  # one computation per experiment even under concurrent polls
            row = self._row(eid)
            if row is not None and row[7] is not None:
                return LabStatus.from_dict(json.loads(row[7]))
            status = self.lab.run_experiment(request)
            with self._db_lock:
                self._db.execute(
                    "UPDATE experiments SET state = ?, status_json = ? WHERE experiment_id = ? AND status_json IS NULL",
                    (status.state, json.dumps(status.to_dict()), eid),
                )
            return status

    def cancel(self, experiment_id: str) -> dict[str, Any]:
        """Cancel an unfinished experiment; finished ones are returned unchanged."""
        info = self.describe(experiment_id)
        if info["status"]["state"] in ("queued", "running"):
            status = LabStatus("cancelled", reason="cancelled by request")
            with self._db_lock:
                self._db.execute(
                    "UPDATE experiments SET state = 'cancelled', status_json = ? WHERE experiment_id = ? AND status_json IS NULL",
                    (json.dumps(status.to_dict()), experiment_id),
                )
            info = self.describe(experiment_id)
        return info

    def health(self) -> dict[str, Any]:
        with self._db_lock:
            counts = dict(self._db.execute("SELECT state, COUNT(*) FROM experiments GROUP BY state").fetchall())
        return {"ok": True, "server": "crystal-agent reference lab", "n_experiments": sum(counts.values()), "by_state": counts}


class _BadBody(Exception):
    """A request body refused before parsing; carries the HTTP status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def json_depth(raw: bytes) -> int:
    """Deepest nesting of arrays/objects in a JSON text (strings skipped), without parsing it."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in raw.decode("utf-8", errors="replace"):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _make_handler(server: LabServer, socket_timeout_s: float | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "crystal-agent-lab/1"
        timeout = socket_timeout_s  # applied to the connection's socket by StreamRequestHandler

        def log_message(self, format: str, *args: Any) -> None:  # quiet by default
            pass

        def _send(self, code: int, payload: dict[str, Any]) -> None:
            body = json.dumps(payload).encode()
            self.close_connection = True
            try:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")  # a refused body may be unread
                self.end_headers()
                self.wfile.write(body)
            except OSError:  # the client went away (or stalled past the timeout)
                pass

        def _auth(self) -> bool:
            if server.authorised(self.headers.get("Authorization")):
                return True
            self._send(401, {"error": "missing or invalid bearer token"})
            return False

        def _read_json(self) -> Any:
            try:
                n = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                raise _BadBody(400, "Content-Length must be an integer") from None
            if n < 0:
                raise _BadBody(400, "Content-Length must be >= 0")
            if n > MAX_BODY_BYTES:
                raise _BadBody(413, f"request body of {n} bytes exceeds {MAX_BODY_BYTES} bytes")
            try:
                raw = self.rfile.read(n) if n else b""
            except (TimeoutError, OSError):
                raise _BadBody(408, f"request body not received within {socket_timeout_s} s") from None
            if len(raw) < n:
                raise _BadBody(400, f"request body ended after {len(raw)} of {n} bytes")
            if json_depth(raw) > MAX_JSON_DEPTH:
                raise _BadBody(400, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
            return json.loads(raw.decode("utf-8", errors="replace") or "null")

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            try:
                if self.path == "/health":
                    return self._send(200, server.health())
                if not self._auth():
                    return None
                m = _EXP_PATH.match(self.path)
                if m is None or m.group(2):
                    return self._send(404, {"error": f"no route GET {self.path}"})
                return self._send(200, server.describe(m.group(1)))
            except KeyError:
                return self._send(404, {"error": "unknown experiment"})
            except Exception as exc:  # the robot must answer, not hang up
                return self._send(500, {"error": f"{type(exc).__name__}: {exc}"})

        def do_POST(self) -> None:  # noqa: N802
            try:
                if not self._auth():
                    return None
                if self.path == "/experiments":
                    try:
                        request = LabRequest.from_dict(self._read_json())
                    except _BadBody as exc:
                        return self._send(exc.code, {"error": str(exc)})
                    except (ValueError, TypeError) as exc:  # LabRequestError, JSONDecodeError
                        return self._send(422, {"error": (str(exc).splitlines() or [type(exc).__name__])[0]})
                    key = self.headers.get("Idempotency-Key")
                    if key is not None and key != request.request_id:
                        return self._send(422, {"error": "Idempotency-Key must equal request_id"})
                    try:
                        code, payload = server.submit(request)
                    except LabError as exc:
                        return self._send(422, {"error": str(exc)})
                    return self._send(code, payload)
                m = _EXP_PATH.match(self.path)
                if m is not None and m.group(2):
                    return self._send(200, server.cancel(m.group(1)))
                return self._send(404, {"error": f"no route POST {self.path}"})
            except KeyError:
                return self._send(404, {"error": "unknown experiment"})
            except Exception as exc:
                return self._send(500, {"error": f"{type(exc).__name__}: {exc}"})

    return Handler
