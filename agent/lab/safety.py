"""Safety gate for lab adapters that can move real hardware.

:class:`GuardedAdapter` wraps such an adapter and starts in *dry run*: a submission is
recorded in a local :class:`ApprovalQueue` (SQLite file in the campaign directory) and
is sent to the lab only after an operator approves it with
``crystal-agent lab approve REQUEST_ID`` (or ``--all``), or when the campaign sets
``lab.auto_approve = true``. Until then :meth:`GuardedAdapter.poll` reports
``awaiting_approval`` with the command to run.

A per-day budget (UTC calendar day) caps how many experiments are accepted and how
many are sent to the lab: beyond it :meth:`GuardedAdapter.submit` raises
:class:`LabBudgetError` with a one-line message naming the budget, and approved
requests wait for the next day.

A lab that refuses an approved request when it is sent (HTTP 422 from
:mod:`agent.lab.server`: conditions it cannot run, a molecule it has no form of) does not
leave it waiting: the entry becomes ``refused`` with the lab's one-line reason, and
:meth:`GuardedAdapter.poll` reports it as a failed experiment with that reason.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

from agent.lab.base import LabAdapter, LabError, LabRequest, LabRequestError, LabStatus, LabTicket, UnknownTicketError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS approvals (
    request_id TEXT PRIMARY KEY,
    request_json TEXT NOT NULL,
    created_s REAL NOT NULL,
    state TEXT NOT NULL,            -- pending | approved | forwarded | rejected | refused
    decided_s REAL,
    forwarded_s REAL,
    ticket_json TEXT,
    reason TEXT                     -- the lab's reason when refused
);
"""
_COLUMNS = "request_id, request_json, created_s, state, decided_s, forwarded_s, ticket_json, reason"


class LabBudgetError(LabError):
    """The daily experiment budget is used up."""


def utc_day(t_s: float) -> str:
    """ISO date (UTC) of a POSIX time."""
    return datetime.fromtimestamp(t_s, tz=timezone.utc).strftime("%Y-%m-%d")


def _day_bounds(t_s: float) -> tuple[float, float]:
    d = datetime.fromtimestamp(t_s, tz=timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    start = d.timestamp()
    return start, start + 86400.0


class ApprovalQueue:
    """Durable queue of lab requests awaiting (or past) operator approval.

    Args:
        path: SQLite file (parent directories are created).
        clock: POSIX time source (s).
    """

    def __init__(self, path: str | Path, clock: Callable[[], float] | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.clock = clock or time.time
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        if "reason" not in {r[1] for r in self._db.execute("PRAGMA table_info(approvals)")}:  # queue of an older version
            self._db.execute("ALTER TABLE approvals ADD COLUMN reason TEXT")

    def close(self) -> None:
        self._db.close()

    def add(self, request: LabRequest) -> bool:
        """Record ``request`` as pending; False if already present (same request).

        Raises:
            LabRequestError: the id is already used for a different request.
        """
        body = json.dumps(request.to_dict(), sort_keys=True)
        with self._lock:
            row = self._db.execute("SELECT request_json FROM approvals WHERE request_id = ?", (request.request_id,)).fetchone()
            if row is not None:
                if row[0] != body:
                    raise LabRequestError(f"request_id {request.request_id!r} already used for a different request")
                return False
            self._db.execute(
                "INSERT INTO approvals (request_id, request_json, created_s, state) VALUES (?, ?, ?, 'pending')",
                (request.request_id, body, self.clock()),
            )
            return True

    def get(self, request_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM approvals WHERE request_id = ?",
                (request_id,),
            ).fetchone()
        return None if row is None else _row_dict(row)

    def list(self, state: str | None = None) -> list[dict[str, Any]]:
        """All entries (optionally of one state), oldest first."""
        q = f"SELECT {_COLUMNS} FROM approvals"
        with self._lock:
            rows = self._db.execute(q + (" WHERE state = ?" if state else "") + " ORDER BY created_s", (state,) if state else ()).fetchall()
        return [_row_dict(r) for r in rows]

    def approve(self, request_id: str | None = None) -> int:
        """Approve one pending request (or all with None); returns how many changed.

        Raises:
            UnknownTicketError: ``request_id`` is not in the queue.
        """
        with self._lock:
            if request_id is None:
                cur = self._db.execute("UPDATE approvals SET state = 'approved', decided_s = ? WHERE state = 'pending'", (self.clock(),))
                return cur.rowcount
            row = self._db.execute("SELECT state FROM approvals WHERE request_id = ?", (request_id,)).fetchone()
            if row is None:
                raise UnknownTicketError(f"no lab request {request_id!r} in the approval queue {self.path}")
            cur = self._db.execute(
                "UPDATE approvals SET state = 'approved', decided_s = ? WHERE request_id = ? AND state = 'pending'",
                (self.clock(), request_id),
            )
            return cur.rowcount

    def reject(self, request_id: str) -> bool:
        """Reject a request that has not been sent; True if it changed."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE approvals SET state = 'rejected', decided_s = ? WHERE request_id = ? AND state IN ('pending', 'approved')",
                (self.clock(), request_id),
            )
            return cur.rowcount > 0

    def mark_refused(self, request_id: str, reason: str) -> None:
        """The lab refused the approved request when it was sent (``reason``: one line)."""
        with self._lock:
            self._db.execute(
                "UPDATE approvals SET state = 'refused', forwarded_s = ?, reason = ? WHERE request_id = ? AND state = 'approved'",
                (self.clock(), reason, request_id),
            )

    def mark_forwarded(self, request_id: str, ticket: LabTicket) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE approvals SET state = 'forwarded', forwarded_s = ?, ticket_json = ? WHERE request_id = ?",
                (self.clock(), json.dumps(ticket.to_dict()), request_id),
            )

    def count_since(self, column: str, start_s: float, end_s: float) -> int:
        """Entries whose ``created_s`` or ``forwarded_s`` lies in [start, end)."""
        if column not in ("created_s", "forwarded_s"):
            raise ValueError(column)
        with self._lock:
            return int(self._db.execute(f"SELECT COUNT(*) FROM approvals WHERE {column} >= ? AND {column} < ?", (start_s, end_s)).fetchone()[0])


def _row_dict(row: tuple) -> dict[str, Any]:
    rid, req, created, state, decided, forwarded, ticket, reason = row
    return {
        "request_id": rid, "request": json.loads(req), "created_s": created, "state": state,
        "decided_s": decided, "forwarded_s": forwarded, "ticket": None if ticket is None else json.loads(ticket),
        "reason": reason,
    }


class GuardedAdapter(LabAdapter):
    """Dry-run / approval / daily-budget gate around a hardware lab adapter.

    Args:
        inner: the adapter that reaches the lab.
        queue: the approval queue.
        auto_approve: approve every submission at once (config ``lab.auto_approve``).
        daily_budget: at most this many submissions accepted, and this many sent,
            per UTC day (None: unlimited).
    """

    name: ClassVar[str] = "guarded"
    reaches_hardware: ClassVar[bool] = False  # the gate itself is safe to hand out

    def __init__(self, inner: LabAdapter, queue: ApprovalQueue, auto_approve: bool = False, daily_budget: int | None = None) -> None:
        if daily_budget is not None and daily_budget < 0:
            raise LabRequestError("daily_budget must be >= 0")
        self.inner = inner
        self.queue = queue
        self.auto_approve = bool(auto_approve)
        self.daily_budget = daily_budget
        self._ticket_adapter = f"guarded-{inner.name}"

    def _budget_left(self, column: str) -> int | None:
        if self.daily_budget is None:
            return None
        lo, hi = _day_bounds(self.queue.clock())
        return self.daily_budget - self.queue.count_since(column, lo, hi)

    def submit(self, request: LabRequest) -> LabTicket:
        if not isinstance(request, LabRequest):
            raise LabRequestError(f"submit needs a LabRequest, got {type(request).__name__}")
        if self.queue.get(request.request_id) is None:
            left = self._budget_left("created_s")
            if left is not None and left <= 0:
                raise LabBudgetError(
                    f"daily lab budget of {self.daily_budget} experiments reached for {utc_day(self.queue.clock())} (UTC); "
                    "raise lab.daily_budget or wait for the next day"
                )
        self.queue.add(request)
        if self.auto_approve:
            self.queue.approve(request.request_id)
        self._forward(request.request_id, raise_refusal=True)
        return LabTicket(request.request_id, request.request_id, self._ticket_adapter)

    def _forward(self, request_id: str, raise_refusal: bool = False) -> dict[str, Any]:
        entry = self.queue.get(request_id)
        if entry is None:
            raise UnknownTicketError(f"unknown lab request {request_id!r}")
        if entry["state"] == "approved":
            left = self._budget_left("forwarded_s")
            if left is None or left > 0:
                try:
                    ticket = self.inner.submit(LabRequest.from_dict(entry["request"]))  # idempotent
                except LabRequestError as exc:  # the lab will never run it (its 4xx answer)
                    self.queue.mark_refused(request_id, (str(exc).splitlines() or [type(exc).__name__])[0])
                    entry = self.queue.get(request_id) or entry
                    if raise_refusal:
                        raise  # refused at submission: the caller learns it at once
                    return entry
                self.queue.mark_forwarded(request_id, ticket)
                entry = self.queue.get(request_id) or entry
        return entry

    def _entry(self, ticket: LabTicket) -> dict[str, Any]:
        if not isinstance(ticket, LabTicket) or ticket.adapter != self._ticket_adapter:
            raise UnknownTicketError(f"not a ticket of this lab: {ticket!r}")
        return self._forward(ticket.request_id)

    def poll(self, ticket: LabTicket) -> LabStatus:
        entry = self._entry(ticket)
        state = entry["state"]
        if state == "pending":
            return LabStatus("awaiting_approval", reason=f"held for approval: run `crystal-agent lab approve {ticket.request_id}`")
        if state == "rejected":
            return LabStatus("cancelled", reason="rejected before it was sent to the lab")
        if state == "refused":
            return LabStatus("failed", reason=entry.get("reason") or "refused by the lab")
        if state == "approved":
            return LabStatus(
                "awaiting_approval",
                reason=f"approved; daily lab budget of {self.daily_budget} used up, will be sent on the next UTC day",
            )
        return self.inner.poll(LabTicket.from_dict(entry["ticket"]))

    def cancel(self, ticket: LabTicket) -> LabStatus:
        entry = self._entry(ticket)
        if entry["state"] in ("pending", "approved"):
            self.queue.reject(ticket.request_id)
            return self.poll(ticket)
        if entry["state"] in ("rejected", "refused"):
            return self.poll(ticket)
        return self.inner.cancel(LabTicket.from_dict(entry["ticket"]))

    def health(self) -> dict[str, Any]:
        inner = self.inner.health()
        counts: dict[str, int] = {}
        for e in self.queue.list():
            counts[e["state"]] = counts.get(e["state"], 0) + 1
        return {
            "ok": bool(inner.get("ok")), "adapter": f"guarded({inner.get('adapter', self.inner.name)})",
            "inner": inner, "approvals": counts, "auto_approve": self.auto_approve, "daily_budget": self.daily_budget,
        }

    def close(self) -> None:
        self.inner.close()
        self.queue.close()
