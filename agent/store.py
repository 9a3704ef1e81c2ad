"""The durable campaign store: SQLite in WAL mode under ``runs/<campaign>/``.

The store is the source of truth (MLflow is a view of it). Every completed result is
committed in its own transaction the moment it arrives, so a killed process loses at
most work that was still in flight. A campaign directory is owned by one launcher at
a time through an advisory ``flock`` on ``runs/<name>/lock``, which the kernel drops
when the process dies, even by SIGKILL.

Tables shared between the stages of a campaign (:mod:`agent.stages`), which never see
each other: ``molecules``; ``evaluations`` (each row names the ``stage`` that asked for
it; ``''`` for rows stored before schema version 3, which the campaign attributes on
open); ``structures`` (the CSP landscapes); ``lab_experiments``; ``observed_forms``
(structures a lab identified, written by the lab stage, read by the structure stage);
``events`` (refit diagnostics and the like, read by the tracker and ``report``).

Opening an existing store never creates its tables: its schema is checked
(every table and column of the current schema present, SQLite's quick check clean) and a
damaged file is refused with a one-line :class:`StoreDamagedError` that says what is
wrong and what to do. Only a new file gets the schema. A store that is intact but cannot
be written (a read-only folder or filesystem, a full disk) is a :class:`StoreReadOnlyError`
or :class:`StoreDiskFullError` instead (:func:`store_error`), never "damaged". A reader
(``readonly``, or ``lock=False`` on a store it cannot write) opens the file read-only and
writes nothing, so ``status`` and ``report`` work on a read-only snapshot.

Over 500 lines on purpose: one class owns the SQLite schema, its migrations and every query, so
the schema changes in one place.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import tempfile
import urllib.parse
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 3  # 2: evaluations.cpu_s; 3: evaluations.stage, observed_forms
#: the events that end a launcher's run (the ``started`` event begins one; :meth:`Store.elapsed_s`)
RUN_ENDS = ("finished", "interrupted", "cluster_lost")
#: the meta key of :meth:`Store.elapsed_s`'s running count over the events
_ELAPSED_META = "elapsed_count"
#: events a launch logs before its run's ``started`` (opening the store, charging the tasks
#: a killed run left): never the end of the run before it
LAUNCH_EVENTS = ("resumed", "renamed", "interrupted_task", "refine")
#: the events that make a run one of the campaign's runs (:meth:`Store.elapsed_s`): it submitted a
#: task or a lab experiment, or stored a result; a launch that did none of these (a resume of a
#: finished campaign: only its final refit) is not counted
RUN_WORK = ("submitted", "result", "lab_submitted", "lab_result")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS molecules (
    id INTEGER PRIMARY KEY,
    smiles TEXT NOT NULL UNIQUE,
    name TEXT,
    is_valid INTEGER NOT NULL DEFAULT 1,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS structures (
    id TEXT PRIMARY KEY,
    molecule_id INTEGER NOT NULL REFERENCES molecules(id),
    source TEXT NOT NULL,
    energy_kjmol REAL,
    density_gcm3 REAL,
    space_group TEXT,
    z INTEGER,
    multiplicity INTEGER NOT NULL DEFAULT 1,
    cif TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE,
    molecule_id INTEGER NOT NULL REFERENCES molecules(id),
    structure_id TEXT REFERENCES structures(id),
    backend TEXT NOT NULL,
    backend_version TEXT NOT NULL,
    fidelity INTEGER NOT NULL,
    inputs_hash TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    reason TEXT NOT NULL DEFAULT '',
    values_json TEXT NOT NULL DEFAULT '{}',
    extra_json TEXT NOT NULL DEFAULT '{}',
    wall_s REAL NOT NULL,
    cpu_s REAL NOT NULL DEFAULT 0,
    stage TEXT NOT NULL DEFAULT '',
    n_attempts INTEGER NOT NULL DEFAULT 1,
    submitted_at REAL NOT NULL,
    finished_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_eval_mol ON evaluations(molecule_id, backend);
CREATE TABLE IF NOT EXISTS lab_experiments (
    request_id TEXT PRIMARY KEY,
    molecule_id INTEGER NOT NULL REFERENCES molecules(id),
    request_json TEXT NOT NULL,
    ticket_json TEXT,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    result_json TEXT,
    matched_structure_id TEXT,
    confidence REAL,
    identification_json TEXT,
    submitted_at REAL NOT NULL,
    finished_at REAL
);
CREATE TABLE IF NOT EXISTS observed_forms (
    molecule_id INTEGER NOT NULL REFERENCES molecules(id),
    structure_id TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (molecule_id, structure_id)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL DEFAULT '{}'
);
"""


def _reference_schema() -> sqlite3.Connection:
    """An in-memory database with the current schema (what a store must contain)."""
    conn = sqlite3.connect(":memory:")
    conn.executescript(_SCHEMA)
    return conn


def _values_json(values: dict[str, Any]) -> str:
    """``values`` as standard JSON: a NaN (a value a backend may leave undefined) is stored as
    null, so SQLite's JSON functions can read every row (bare NaN is not JSON)."""
    import math

    return json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in values.items()})


def _values_from_json(text: str) -> dict[str, Any]:
    """The inverse of :func:`_values_json` (null back to NaN; rows written with bare NaN read
    as before)."""
    return {k: (float("nan") if v is None else v) for k, v in json.loads(text).items()}



def minutes_seconds(seconds: float) -> str:
    """``1:40``: a task's wall time so far (minutes may exceed 59)."""
    sec = int(max(seconds, 0))
    return f"{sec // 60}:{sec % 60:02d}"

class StoreLockedError(RuntimeError):
    """Another launcher holds this campaign."""


class StoreDamagedError(RuntimeError):
    """The store file is not a usable campaign store (one-line message with a hint)."""

    def __init__(self, path: Path | None, what: str) -> None:
        super().__init__(f"store damaged: {what}{_where(path)}; restore it from a backup "
                         "or start a new campaign")


class StoreUnavailableError(OSError):
    """The store could not be used now though nothing says it is damaged (an SQLite
    operational error such as a lock held too long); an OSError, as what the system
    refuses is."""


class StoreReadOnlyError(StoreUnavailableError):
    """The store or its folder cannot be written (read-only filesystem or folder); intact."""


class StoreDiskFullError(StoreUnavailableError):
    """The disk (or quota) under the store is full; the store is intact."""


def _where(path: Path | None) -> str:
    return f" ({path})" if path is not None else ""


def _campaign_of(path: Path | None) -> str | None:
    """The campaign name of a store at ``runs/<name>/store.sqlite`` (None while it is
    created: its folder is then a hidden ``.<name>.creating-...``)."""
    if path is None:
        return None
    name = Path(path).parent.name
    return None if not name or name.startswith(".") else name


def _writable(path: Path) -> bool:
    """Whether this process may write ``path`` (False on a read-only filesystem, even for root)."""
    return os.access(path, os.W_OK)


def error_kind(exc: BaseException, path: Path | None = None) -> str:
    """What an error from the store means: ``"full"`` (disk or quota full), ``"readonly"``
    (a read-only filesystem or folder), ``"damaged"`` (not a database, malformed) or
    ``"other"``. ``path`` (the store file) tells SQLite's "unable to open database file"
    in a folder that cannot be written (its -wal/-shm files cannot be made) from others."""
    if isinstance(exc, StoreDiskFullError):
        return "full"
    if isinstance(exc, StoreReadOnlyError):
        return "readonly"
    if isinstance(exc, StoreDamagedError):
        return "damaged"
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return "full"
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return "readonly"
        return "other"
    if not isinstance(exc, sqlite3.Error):
        return "other"
    code = getattr(exc, "sqlite_errorname", "") or ""
    msg = str(exc).lower()
    if code.startswith("SQLITE_FULL") or "database or disk is full" in msg:
        return "full"
    if code.startswith("SQLITE_READONLY") or "readonly database" in msg or "read-only" in msg:
        return "readonly"
    if (code.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "file is not a database" in msg
            or "malformed" in msg):
        return "damaged"
    if path is not None and (code.startswith(("SQLITE_CANTOPEN", "SQLITE_IOERR"))
                             or "unable to open database file" in msg or "disk i/o error" in msg):
        folder = Path(path).parent
        if folder.is_dir() and not _writable(folder) or Path(path).exists() and not _writable(Path(path)):
            return "readonly"
        try:
            if folder.is_dir() and shutil.disk_usage(folder).free == 0:
                return "full"
        except OSError:
            pass
    return "other"


def store_error(exc: BaseException, path: Path | None = None) -> BaseException:
    """The one-line error for ``exc`` (an ``sqlite3.Error`` or ``OSError`` met using the
    store at ``path``): disk full and read-only say so and that the store is intact; only a
    real corruption is "store damaged". An error already of this module, or one that is
    none of these kinds and not from SQLite, is returned as it is."""
    if isinstance(exc, (StoreDamagedError, StoreUnavailableError)):
        return exc
    kind = error_kind(exc, path)
    what = (exc.strerror or str(exc)) if isinstance(exc, OSError) else (str(exc).splitlines() or [""])[0]
    where = _where(path)
    if isinstance(exc, OSError) and exc.filename:
        what, where = f"{what}: {exc.filename}", ""
    name = _campaign_of(path)
    if kind == "full":
        if path is not None and name is None:  # while the campaign was being created: nothing to resume
            err: BaseException = StoreDiskFullError(
                f"disk full: {what} (in {Path(path).parent.parent}); the campaign was not created: "
                "free space and start it again")
        else:
            err = StoreDiskFullError(
                f"disk full: {what}{where}; free space, then `crystal-agent resume {name or 'NAME'}` "
                "continues the campaign (the store is intact: what was stored is kept)")
    elif kind == "readonly":
        err = StoreReadOnlyError(
            f"read-only: {what}{where}; the store is not damaged and `crystal-agent status "
            f"{name or 'NAME'}` reads it; a run needs a writable folder (make it writable, or copy the "
            "campaign folder into a writable DIR and use --runs-dir DIR)")
    elif kind == "damaged":
        err = StoreDamagedError(path, what)
    elif isinstance(exc, sqlite3.Error):
        err = StoreUnavailableError(f"store unavailable: {what}{where}")
    else:
        return exc
    if isinstance(exc, OSError) and isinstance(err, OSError):
        err.errno = exc.errno
    return err


def _schema_columns(conn: sqlite3.Connection) -> dict[str, set[str]]:
    tables = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    return {t: {r[1] for r in conn.execute(f"PRAGMA table_info({t})")} for t in tables}


@dataclass(frozen=True)
class Evaluation:
    """One stored evaluation (a row of ``evaluations``)."""

    id: int
    request_id: str
    molecule_id: int
    structure_id: str | None
    backend: str
    backend_version: str
    fidelity: int
    inputs_hash: str
    status: str
    reason: str
    values: dict[str, float]
    extra: dict[str, Any]
    wall_s: float
    cpu_s: float
    n_attempts: int
    submitted_at: float
    finished_at: float
    stage: str = ""  # the stage that asked for it ('' for rows of schema version < 3)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class Store:
    """A campaign's SQLite store.

    Args:
        path: the database file (created with its directory if missing, unless ``readonly``).
        lock: take the campaign's exclusive launcher lock (a running campaign must);
            readers such as ``crystal-agent status`` pass False.
        readonly: open the file read-only (SQLite ``mode=ro``; ``immutable`` when its
            folder cannot be written, so no -wal/-shm file can be made): nothing is created,
            written or migrated on disk (an older schema is brought up to date in a copy in
            memory). The default, None, is read-only for a reader (``lock=False``) of an
            existing store that this process cannot write (a read-only filesystem or folder).
    """

    def __init__(self, path: str | Path, *, lock: bool = False, readonly: bool | None = None) -> None:
        self.path = Path(path)
        self.conn: sqlite3.Connection | None = None
        # this Store logged the open run's ``started`` (its heartbeats extend that run, elapsed_s); not
        # derivable from the events, which say that the last run is open but not which launch opened it
        # (a killed launcher's, or this Store's run that logged no end; tests/agent/test_review47_run_open.py)
        self._run_open = False
        self._unsettled_memo: tuple[tuple[Any, ...], list[dict[str, Any]]] | None = None  # _unsettled_submitted's
        self._lock_fd: int | None = None
        is_new = not self.path.exists()
        if readonly is None:
            readonly = not lock and not is_new and not (_writable(self.path) and _writable(self.path.parent))
        if readonly and lock:
            raise ValueError("a read-only store cannot take the launcher lock")
        if readonly and is_new:
            raise FileNotFoundError(errno.ENOENT, "no campaign store", str(self.path))
        self.readonly = readonly
        try:
            if not readonly:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            if lock:
                self._acquire_lock()
        except OSError as exc:
            self.close()
            raise store_error(exc, self.path) from None
        if not is_new and not self.path.is_file():
            self.close()
            raise StoreDamagedError(self.path, "not a regular file")
        try:
            # check_same_thread=False: a campaign made in one thread may be run in another
            # (a notebook's background thread); it is used from one thread at a time
            self.conn = self._connect_readonly() if readonly else sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            self.conn.row_factory = sqlite3.Row
            if not is_new:
                self._check_file()
            if not readonly:
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            if is_new:
                with self.transaction():
                    for stmt in _SCHEMA.split(";"):
                        if stmt.strip():
                            self.conn.execute(stmt)
                    self.conn.execute(
                        "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                        (str(SCHEMA_VERSION),),
                    )
            else:
                if readonly and self._needs_migration():
                    self.conn = self._in_memory(self.conn)
                self._migrate()
            self._check_schema()
        except (sqlite3.Error, OSError) as exc:
            self.close()
            err = store_error(exc, self.path)
            if (not readonly and not lock and not is_new and error_kind(err) == "readonly"):
                self.__init__(path, readonly=True)  # a reader that cannot write: read it as it is
                return
            if err is exc:
                raise
            raise err from None
        except BaseException:
            self.close()
            raise

    def _connect_readonly(self) -> sqlite3.Connection:
        """A read-only connection: ``mode=ro``, which still needs the -shm file (made if the
        folder can be written); where it cannot be made or opened, the file as it is
        (``immutable=1``: no other process can be writing it then), or, when an unfinished
        -wal file holds commits the file lacks, a copy of both read in memory."""
        uri = "file:" + urllib.parse.quote(str(self.path.resolve())) + "?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None)
        try:
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.OperationalError as exc:
            conn.close()
            if error_kind(exc, self.path) != "readonly":
                raise
        wal = Path(f"{self.path}-wal")
        if wal.exists() and wal.stat().st_size > 0:
            with tempfile.TemporaryDirectory(prefix="crystal-agent-store-") as tmp:
                copy = Path(tmp) / self.path.name
                shutil.copyfile(self.path, copy)
                shutil.copyfile(wal, f"{copy}-wal")
                disk = sqlite3.connect(copy, isolation_level=None)  # replays the -wal
                try:
                    return self._in_memory(disk)
                finally:
                    disk.close()
        return sqlite3.connect(uri + "&immutable=1", uri=True, timeout=30.0, isolation_level=None)

    @staticmethod
    def _in_memory(conn: sqlite3.Connection) -> sqlite3.Connection:
        """A copy in memory of the database of ``conn`` (which is closed)."""
        mem = sqlite3.connect(":memory:", isolation_level=None)
        conn.backup(mem)
        conn.close()
        mem.row_factory = sqlite3.Row
        return mem

    def _check_file(self) -> None:
        """Refuse an existing file that is not an SQLite database or fails the quick check."""
        with open(self.path, "rb") as f:
            head = f.read(16)
        if head != b"SQLite format 3\x00":
            what = "empty file" if not head else "not an SQLite database"
            raise StoreDamagedError(self.path, what)
        bad = [r[0] for r in self.conn.execute("PRAGMA quick_check(3)")]
        if bad != ["ok"]:
            raise StoreDamagedError(self.path, f"integrity check failed: {bad[0]}")

    def _migrate(self) -> None:
        """Bring a store of an older schema version up to date, in one transaction.

        Version 1 -> 2 adds ``evaluations.cpu_s``; rows stored before it keep their
        wall time as their CPU charge (what the budget was charged when they ran).
        Version 2 -> 3 adds ``evaluations.stage`` (``''`` on old rows: the campaign
        attributes them to a stage when it opens the store, :meth:`set_stage`) and the
        ``observed_forms`` table (refilled by the lab stage from ``lab_experiments``).
        """
        if not self._needs_migration():
            return
        have = _schema_columns(self.conn)
        cols = have["evaluations"]
        with self.transaction() as c:
            if "cpu_s" not in cols:
                c.execute("ALTER TABLE evaluations ADD COLUMN cpu_s REAL NOT NULL DEFAULT 0")
                c.execute("UPDATE evaluations SET cpu_s = wall_s")
            if "stage" not in cols:
                c.execute("ALTER TABLE evaluations ADD COLUMN stage TEXT NOT NULL DEFAULT ''")
            if "observed_forms" not in have:
                c.execute(_SCHEMA[_SCHEMA.index("CREATE TABLE IF NOT EXISTS observed_forms"):
                                  _SCHEMA.index("CREATE TABLE IF NOT EXISTS events")].rstrip().rstrip(";"))
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                      (str(SCHEMA_VERSION),))

    def _needs_migration(self) -> bool:
        have = _schema_columns(self.conn)
        if "evaluations" not in have:
            return False
        cols = have["evaluations"]
        return not ("cpu_s" in cols and "stage" in cols and "observed_forms" in have)

    def _check_schema(self) -> None:
        """Every table and column of the current schema must exist (extra ones are fine)."""
        want = _schema_columns(_reference_schema())
        have = _schema_columns(self.conn)
        for table, cols in want.items():
            if table not in have:
                raise StoreDamagedError(self.path, f"missing table {table}")
            missing = sorted(cols - have[table])
            if missing:
                raise StoreDamagedError(self.path, f"table {table} lacks column(s) {', '.join(missing)}")

    # -- locking ----------------------------------------------------------------------
    def _acquire_lock(self) -> None:
        lock_path = self.path.parent / "lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StoreLockedError(
                f"campaign at {self.path.parent} is already running (pid {holder}); "
                "stop it first or wait for it to finish"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except OSError:
            os.close(fd)
            raise
        self._lock_fd = fd

    def running_pid(self) -> str | None:
        """The pid of the process that holds the campaign's lock (a run going on now), or
        None. Read-only: a shared lock is tried and released at once."""
        if self._lock_fd is not None:
            return str(os.getpid())
        try:
            fd = os.open(self.path.parent / "lock", os.O_RDONLY)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    @property
    def writable(self) -> bool:
        """Whether this process holds the campaign's lock (readers must not write)."""
        return self._lock_fd is not None

    def close(self) -> None:
        if getattr(self, "conn", None) is not None:
            self.conn.close()
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # -- meta ---------------------------------------------------------------------------
    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row["value"] if row else default

    # -- molecules ----------------------------------------------------------------------
    def add_molecules(self, items: Iterable[tuple[str, str | None, bool, str]]) -> None:
        """Insert ``(smiles, name, is_valid, reason)`` rows; existing SMILES are kept."""
        with self.transaction() as c:
            c.executemany(
                "INSERT OR IGNORE INTO molecules(smiles, name, is_valid, reason) VALUES (?,?,?,?)",
                [(s, n, int(v), r) for s, n, v, r in items],
            )

    def molecules(self, *, valid_only: bool = False) -> list[sqlite3.Row]:
        q = "SELECT id, smiles, name, is_valid, reason FROM molecules"
        if valid_only:
            q += " WHERE is_valid = 1"
        return self.conn.execute(q + " ORDER BY id").fetchall()

    # -- structures ---------------------------------------------------------------------
    @staticmethod
    def _insert_structures(c: sqlite3.Connection, rows: Iterable[dict[str, Any]]) -> None:
        now = time.time()
        c.executemany(
            "INSERT OR IGNORE INTO structures(id, molecule_id, source, energy_kjmol, "
            "density_gcm3, space_group, z, multiplicity, cif, created_at) "
            "VALUES (:id, :molecule_id, :source, :energy_kjmol, :density_gcm3, "
            ":space_group, :z, :multiplicity, :cif, :created_at)",
            [{"multiplicity": 1, "created_at": now, **r} for r in rows],
        )

    def structures(self, molecule_id: int | None = None) -> list[sqlite3.Row]:
        q = "SELECT * FROM structures"
        args: tuple[Any, ...] = ()
        if molecule_id is not None:
            q += " WHERE molecule_id = ?"
            args = (molecule_id,)
        return self.conn.execute(q + " ORDER BY energy_kjmol", args).fetchall()

    # -- evaluations --------------------------------------------------------------------
    def record_evaluation(
        self,
        *,
        request_id: str,
        molecule_id: int,
        result: Any,
        submitted_at: float,
        n_attempts: int = 1,
        structure_id: str | None = None,
        stage: str = "",
        structures: Iterable[dict[str, Any]] = (),
    ) -> bool:
        """Commit one finished evaluation (an ``EvalResult``) in its own transaction,
        with the ``structures`` rows it produced (a CSP landscape; keys as the ``structures``
        columns, existing ids kept) in the same one.

        Returns False (and changes nothing) if ``request_id`` is already stored, so a
        result that arrives twice is never duplicated.
        """
        with self.transaction() as c:
            cur = c.execute(
                "INSERT OR IGNORE INTO evaluations(request_id, molecule_id, structure_id, "
                "backend, backend_version, fidelity, inputs_hash, status, reason, "
                "values_json, extra_json, wall_s, cpu_s, stage, n_attempts, submitted_at, "
                "finished_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    request_id,
                    molecule_id,
                    structure_id,
                    result.backend,
                    result.backend_version,
                    result.fidelity,
                    result.inputs_hash,
                    result.status,
                    result.reason,
                    _values_json(result.values),
                    json.dumps(result.extra, default=str),
                    result.wall_s,
                    result.cpu_s,
                    stage,
                    n_attempts,
                    submitted_at,
                    time.time(),
                ),
            )
            inserted = cur.rowcount == 1
            if inserted:
                self._insert_structures(c, structures)
                c.execute(
                    "INSERT INTO events(ts, kind, payload) VALUES (?, 'result', ?)",
                    (
                        time.time(),
                        json.dumps(
                            {
                                "request_id": request_id,
                                "status": result.status,
                                "reason": result.reason,
                            }
                        ),
                    ),
                )
        return inserted

    def backend_versions(self) -> dict[tuple[str, str], int]:
        """(backend, backend_version) -> the number of stored successful evaluations."""
        rows = self.conn.execute("SELECT backend, backend_version, COUNT(*) FROM evaluations WHERE status = 'ok' "
                                 "GROUP BY backend, backend_version").fetchall()
        return {(str(b), str(v)): int(n) for b, v, n in rows}

    def evaluations(self, backend: str | None = None, status: str | None = None) -> list[Evaluation]:
        """Every stored evaluation in the order stored; ``backend`` and ``status`` (``"ok"``
        or ``"failed"``) select in the query, so a summary of one backend does not decode
        every other result (CSP landscapes carry their CIFs)."""
        where = [(c, v) for c, v in (("backend", backend), ("status", status)) if v is not None]
        return self._evaluation_rows("WHERE " + " AND ".join(f"{c} = ?" for c, _ in where) if where else "",
                                     tuple(v for _, v in where))

    def _evaluation_rows(self, where: str, args: tuple[Any, ...]) -> list[Evaluation]:
        rows = self.conn.execute(f"SELECT * FROM evaluations {where} ORDER BY id", args).fetchall()
        return [
            Evaluation(
                id=r["id"],
                request_id=r["request_id"],
                molecule_id=r["molecule_id"],
                structure_id=r["structure_id"],
                backend=r["backend"],
                backend_version=r["backend_version"],
                fidelity=r["fidelity"],
                inputs_hash=r["inputs_hash"],
                status=r["status"],
                reason=r["reason"],
                values=_values_from_json(r["values_json"]),
                extra=json.loads(r["extra_json"]),
                wall_s=r["wall_s"],
                cpu_s=r["cpu_s"],
                stage=r["stage"],
                n_attempts=r["n_attempts"],
                submitted_at=r["submitted_at"],
                finished_at=r["finished_at"],
            )
            for r in rows
        ]

    def set_stage(self, stages: dict[int, str]) -> None:
        """Attribute evaluations (row id -> stage name) stored before schema version 3."""
        with self.transaction() as c:
            c.executemany("UPDATE evaluations SET stage = ? WHERE id = ? AND stage = ''",
                          [(st, i) for i, st in stages.items()])

    def evaluation(self, request_id: str) -> Evaluation | None:
        """The stored evaluation of ``request_id`` (None if there is none)."""
        rows = self._evaluation_rows("WHERE request_id = ?", (request_id,))
        return rows[0] if rows else None

    def values_of(self, backend: str, key: str) -> list[tuple[int, float]]:
        """``(molecule_id, value)`` of value ``key`` of every successful ``backend``
        evaluation, in stored order."""
        rows = self.conn.execute(
            "SELECT molecule_id, json_extract(values_json, '$.' || ?) FROM evaluations "
            "WHERE backend = ? AND status = 'ok' ORDER BY id", (json.dumps(key), backend))
        return [(int(m), float(v)) for m, v in rows if isinstance(v, (int, float))]

    def spent_cpu_s(self) -> float:
        """CPU seconds charged: every stored evaluation (failures included) plus the tasks
        an interrupted run left unfinished (:meth:`interrupted_cpu_s`)."""
        stored = self.conn.execute("SELECT COALESCE(SUM(cpu_s), 0) FROM evaluations").fetchone()[0]
        return float(stored) + self.interrupted_cpu_s()[0]

    def stage_cpu_s(self, stage: str) -> float:
        """CPU seconds of the stored evaluations (failures included) one stage asked for."""
        return float(self.conn.execute("SELECT COALESCE(SUM(cpu_s), 0) FROM evaluations WHERE stage = ?",
                                       (stage,)).fetchone()[0])

    # -- work an interrupted run left unfinished ------------------------------------------
    def note_submitted(self, request_id: str, cpus: float, **about: Any) -> None:
        """Record that a task went to a worker (``submitted`` event; see
        :meth:`settle_interrupted`); ``about``: what it computes (``backend``, ``smiles``,
        ``structure_id``), for saying which tasks a stopped run left unfinished, and ``why``
        the stage chose it (:attr:`agent.stages.base.Request.why`; the report's
        ``decisions.csv``)."""
        self.log_event("submitted", request_id=request_id, cpus=float(cpus),
                       **{k: v for k, v in about.items() if v is not None})

    def unsettled_tasks(self) -> list[str]:
        """What each task a stopped run left unfinished (not charged yet) computes:
        ``"csp-ff of coronene"``, ``"xtb-crystal of m36-m0004 (coronene)"``; a task whose
        event does not say (submitted by older code) is left out."""
        return [text for text, _ in self._task_texts()]

    def in_flight_tasks(self, now: float | None = None) -> list[str]:
        """The tasks a running campaign has submitted and not stored yet, as
        :meth:`unsettled_tasks` says them, each with the wall time since it was submitted:
        ``"esf-refined of pentacene (1:40)"`` (newuser50 #6: status did not say what a running
        campaign was doing)."""
        now = time.time() if now is None else float(now)
        return [f"{text} ({minutes_seconds(now - ts)})" for text, ts in self._task_texts()]

    def _task_texts(self) -> list[tuple[str, float]]:
        """``(text, submitted at)`` of each unstored, uncharged task whose event names its backend."""
        names = {r["smiles"]: r["name"] or r["smiles"] for r in self.molecules()}
        out = []
        for e in self._unsettled_submitted():
            if not e.get("backend"):
                continue
            mol = names.get(e.get("smiles"), e.get("smiles") or "?")
            sid = e.get("structure_id")
            out.append((f"{e['backend']} of {sid} ({mol})" if sid else f"{e['backend']} of {mol}", float(e["ts"])))
        return out

    def heartbeat(self) -> None:
        """Record that the run is alive now (the end of its unfinished tasks' charge); the
        running count of :meth:`elapsed_s` is brought up to date with it."""
        now = time.time()
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", ("heartbeat", repr(now)))
            # this run's beat ends it if it is killed (the next launch overwrites the heartbeat)
            self._save_elapsed(c, beat=now if self._run_open else None)

    def elapsed_s(self, now: float | None = None) -> tuple[float, int]:
        """``(seconds, runs)``: the launcher's wall time over the campaign's runs, each from its
        ``started`` event to its ``finished``, ``interrupted`` or ``cluster_lost`` event; a run
        killed without one (kill -9) ends at its last event or its last heartbeat, whichever
        is later (events a later launch logs before its own ``started``,
        :data:`LAUNCH_EVENTS`, are not the killed run's); a run still going ends at ``now``
        when given (the caller knows whether it runs). ``runs`` counts only the runs that did
        something (an event of :data:`RUN_WORK`: a task or lab experiment submitted, a result
        stored), not a resume of a finished campaign that ran no task; the seconds are every
        run's but for one that finished having done nothing (newuser49 #9: such a resume added
        its 7 s of start-up); an interrupted, lost or killed run keeps its time.

        Read once per evaluation (status, the tracker's progress), so it does not scan the
        events: the count over them is kept in the meta table (:data:`_ELAPSED_META`), brought
        up to date at each run's start and end and at each heartbeat, and only the events
        logged since are read here. A store without it (made before it was kept) is counted
        from its first event once, and the count stored when this process holds the lock."""
        state, stored = self._elapsed_state()
        if not stored and self.writable:
            self.set_meta(_ELAPSED_META, json.dumps(state))
        total, runs, start, last = state["total"], state["runs"], state["start"], state["last"]
        if start is not None:  # the last run: going on now, or killed
            beat = self.get_meta("heartbeat")
            end = max(last, float(beat)) if beat else last
            if self.get_meta("finished") != "1" and now is not None:
                end = max(end, now)
            total += end - start
        return total, runs

    def _elapsed_state(self, conn: sqlite3.Connection | None = None,
                       beat: float | None = None) -> tuple[dict[str, Any], bool]:
        """``(state, stored)``: the count of :meth:`elapsed_s` over every event so far -- the
        stored one (``stored`` True) carried over the events logged after it, else one from the
        first event: ``event_id`` (the last event counted), ``total`` (seconds of the runs that
        ended, but for one that finished having done nothing; a killed run ends at its last
        event), ``runs`` (those that did something,
        :data:`RUN_WORK`), ``start`` and ``last`` (the timestamps of the open run's ``started``
        and latest event or, ``beat``, heartbeat of that run; None without one) and ``counted``
        (the open run is in ``runs``; a count stored before it was kept counted every run at its
        start)."""
        conn = self.conn if conn is None else conn
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (_ELAPSED_META,)).fetchone()
        state = json.loads(row[0]) if row else {"event_id": 0, "total": 0.0, "runs": 0, "start": None, "last": None}
        total, runs, start, last = state["total"], state["runs"], state["start"], state["last"]
        counted = state.get("counted", True)
        event_id = state["event_id"]
        for event_id, ts, kind in conn.execute(
                "SELECT id, ts, kind FROM events WHERE id > ? ORDER BY id", (state["event_id"],)):
            if kind == "started":
                if start is not None:  # the run before was killed
                    total += last - start
                start, last, counted = ts, ts, False
            elif start is not None:
                if kind in RUN_ENDS:
                    # a run that finished having done nothing (a resume of a finished campaign) adds no
                    # time; one interrupted or lost (waiting on the lab, or on Ray) keeps its own
                    total += (ts - start) if counted or kind != "finished" else 0.0
                    start = None
                elif kind not in LAUNCH_EVENTS:
                    last = ts
                    if kind in RUN_WORK and not counted:
                        runs, counted = runs + 1, True
        if start is not None and beat is not None:
            last = max(last, beat)
        return {"event_id": event_id, "total": total, "runs": runs, "start": start, "last": last,
                "counted": counted}, row is not None

    def _save_elapsed(self, conn: sqlite3.Connection, beat: float | None = None) -> None:
        """Store the count of :meth:`elapsed_s` up to the last event (inside a transaction);
        ``beat``: a heartbeat of the open run, which it reaches at least."""
        conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                     (_ELAPSED_META, json.dumps(self._elapsed_state(conn, beat)[0])))

    def interrupted_wall_s(self) -> float:
        """Wall seconds of the tasks that runs left unfinished, from submission to their
        run's last heartbeat (the span their charge covers)."""
        row = self.conn.execute(
            "SELECT COALESCE(SUM(json_extract(payload, '$.wall_s')), 0) FROM events "
            "WHERE kind = 'interrupted_task'").fetchone()
        return float(row[0])

    def interrupted_cpu_s(self) -> tuple[float, int]:
        """``(CPU seconds, tasks)`` charged for tasks that runs left unfinished."""
        row = self.conn.execute(
            "SELECT COALESCE(SUM(json_extract(payload, '$.cpu_s')), 0), COUNT(*) FROM events "
            "WHERE kind = 'interrupted_task'").fetchone()
        return float(row[0]), int(row[1])

    @property
    def task_cpu_dir(self) -> Path:
        """The folder where a run's workers record the CPU their tasks have used so far
        (:func:`agent.executor.task_cpu_record`), beside the store."""
        return self.path.parent / "task_cpu"

    def _unsettled_submitted(self) -> list[dict[str, Any]]:
        """The ``submitted`` events (as :meth:`events` gives them) of the tasks never stored
        and not yet charged, in order: one query, whose answer is kept until an event or an
        evaluation is added, so :meth:`unsettled_cpu_s`, :meth:`unsettled_tasks` and
        :meth:`settle_interrupted`, called together (status, a run's start), share it."""
        key = tuple(self.conn.execute(
            "SELECT (SELECT MAX(id) FROM events), (SELECT MAX(id) FROM evaluations)").fetchone())
        if self._unsettled_memo is not None and self._unsettled_memo[0] == key:
            return self._unsettled_memo[1]
        rows = self.conn.execute(
            "SELECT id, ts, kind, payload FROM events WHERE kind = 'submitted' "
            "AND id NOT IN (SELECT json_extract(payload, '$.submitted_event') FROM events "
            "WHERE kind = 'interrupted_task' AND json_extract(payload, '$.submitted_event') IS NOT NULL) "
            "AND json_extract(payload, '$.request_id') NOT IN (SELECT request_id FROM evaluations) ORDER BY id")
        todo = [self._event(r) for r in rows]
        self._unsettled_memo = (key, todo)
        return todo

    def _unsettled(self) -> list[tuple[dict[str, Any], float, float, float | None]]:
        """``(submitted event, wall s, CPU s to charge, CPU s its worker recorded or None)``
        of each task submitted, never
        stored and not yet charged (see :meth:`settle_interrupted`); the wall time runs from
        submission to the run's last heartbeat, or to the task's latest CPU record when its
        worker outlived that heartbeat."""
        from agent.executor import read_task_cpu, unfinished_charge, unfinished_wall

        last = float(self.get_meta("heartbeat") or 0.0)
        out = []
        for e in self._unsettled_submitted():
            wall = max(0.0, last - e["ts"])
            measured = read_task_cpu(self.task_cpu_dir, e["request_id"])
            out.append((e, unfinished_wall(measured, wall, last),
                        unfinished_charge(measured, float(e.get("cpus", 1.0)), wall, last),
                        None if measured is None else measured[0]))
        return out

    def unsettled_cpu_s(self) -> tuple[float, int]:
        """``(CPU seconds, tasks)`` that :meth:`settle_interrupted` would charge now (read
        only: what the next run will charge for tasks a killed run left unfinished)."""
        todo = self._unsettled()
        return sum(cpu for _, _, cpu, _ in todo), len(todo)

    def settle_interrupted(self) -> tuple[float, int]:
        """Charge every task that was submitted, never stored and not charged yet (its run
        was killed or interrupted): the CPU seconds its worker recorded plus ``cpus`` x the
        time from its latest record to the run's last heartbeat, at most ``cpus`` x the
        wall time from its submission to that heartbeat (or to its latest record, when the
        worker outlived the heartbeat), which is also the charge when the worker left no
        record (:func:`agent.executor.unfinished_charge`). One
        ``interrupted_task`` event each; returns ``(CPU seconds, tasks)`` charged now.
        Call only while no run is going on (a run holds the store's lock), before the new
        run's first heartbeat."""
        from agent.executor import forget_task_cpu

        todo = self._unsettled()
        total = 0.0
        self._run_open = False
        with self.transaction() as c:
            for e, wall, cpu, measured in todo:
                total += cpu
                c.execute("INSERT INTO events(ts, kind, payload) VALUES (?, ?, ?)", (
                    time.time(), "interrupted_task",
                    json.dumps({"request_id": e["request_id"], "submitted_event": e["event_id"],
                                "wall_s": wall, "cpu_s": cpu,
                                "measured_cpu_s": measured})))
        for e, *_ in todo:
            forget_task_cpu(self.task_cpu_dir, e["request_id"])
        return total, len(todo)

    def count_evaluations(self) -> tuple[int, int]:
        """``(n_evaluations, n_failed)``."""
        row = self.conn.execute(
            "SELECT COUNT(*) AS n, COALESCE(SUM(status = 'failed'), 0) AS nf FROM evaluations"
        ).fetchone()
        return int(row["n"]), int(row["nf"])

    # -- lab experiments ------------------------------------------------------------------
    def add_lab_experiment(self, request_id: str, molecule_id: int, request: dict[str, Any],
                           ticket: dict[str, Any] | None, state: str, reason: str = "") -> None:
        with self.transaction() as c:
            c.execute(
                "INSERT OR IGNORE INTO lab_experiments(request_id, molecule_id, request_json, "
                "ticket_json, state, reason, submitted_at) VALUES (?,?,?,?,?,?,?)",
                (request_id, molecule_id, json.dumps(request), json.dumps(ticket) if ticket else None,
                 state, reason, time.time()),
            )

    def update_lab_experiment(self, request_id: str, **fields: Any) -> None:
        """Set columns of one lab experiment (dict/list values are stored as JSON)."""
        cols = {k: json.dumps(v, default=str) if isinstance(v, (dict, list)) else v
                for k, v in fields.items()}
        sets = ", ".join(f"{k} = ?" for k in cols)
        with self.transaction() as c:
            c.execute(f"UPDATE lab_experiments SET {sets} WHERE request_id = ?",
                      (*cols.values(), request_id))

    def lab_experiments(self) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT * FROM lab_experiments ORDER BY submitted_at").fetchall()

    # -- observed forms ---------------------------------------------------------------
    def add_observed_forms(self, molecule_id: int, structure_ids: Iterable[str], source: str) -> None:
        """Mark structures of ``molecule_id`` observed (by ``source``, e.g. a lab request id);
        marking one twice keeps the first record."""
        with self.transaction() as c:
            c.executemany(
                "INSERT OR IGNORE INTO observed_forms(molecule_id, structure_id, source, created_at) "
                "VALUES (?,?,?,?)", [(molecule_id, sid, source, time.time()) for sid in structure_ids])

    def observed_forms(self, molecule_id: int | None = None) -> list[str]:
        """Structure ids observed (of ``molecule_id``, or of every molecule)."""
        q, args = "SELECT structure_id FROM observed_forms", ()
        if molecule_id is not None:
            q, args = q + " WHERE molecule_id = ?", (molecule_id,)
        return [r[0] for r in self.conn.execute(q + " ORDER BY created_at, structure_id", args)]

    def observed_form_sources(self) -> list[tuple[str, str]]:
        """``(structure id, source)`` of every observed form, first marked first."""
        return [(r[0], r[1]) for r in self.conn.execute(
            "SELECT structure_id, source FROM observed_forms ORDER BY created_at, structure_id")]

    # -- events -------------------------------------------------------------------------
    def log_event(self, kind: str, **payload: Any) -> None:
        with self.transaction() as c:
            c.execute(
                "INSERT INTO events(ts, kind, payload) VALUES (?, ?, ?)",
                (time.time(), kind, json.dumps(payload, default=str)),
            )
            if kind == "started" or kind in RUN_ENDS:  # a run's start or end: see elapsed_s
                self._save_elapsed(c)
        if kind == "started" or kind in RUN_ENDS or kind in LAUNCH_EVENTS:
            self._run_open = kind == "started"  # this process's run: its heartbeats are its own

    def events(self, kind: str | None = None, *, after_id: int = 0) -> list[dict[str, Any]]:
        """Events in order (of ``kind``; with ``id`` greater than ``after_id``), each a dict
        of its payload plus ``ts``, ``kind`` and ``event_id``."""
        q, args = "SELECT id, ts, kind, payload FROM events WHERE id > ?", (after_id,)
        if kind:
            q, args = q + " AND kind = ?", (after_id, kind)
        return [self._event(r) for r in self.conn.execute(q + " ORDER BY id", args)]

    @staticmethod
    def _event(r: sqlite3.Row) -> dict[str, Any]:
        """An ``events`` row (``id, ts, kind, payload``) as :meth:`events` gives it."""
        return {"ts": r["ts"], "kind": r["kind"], **json.loads(r["payload"]), "event_id": r["id"]}

    def integrity_ok(self) -> bool:
        return self.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
