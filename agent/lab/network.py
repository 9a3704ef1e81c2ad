"""Lab adapter for a remote lab robot speaking the HTTP/JSON protocol of
:mod:`agent.lab.server`.

* Credentials: a bearer token read from an environment variable (default
  ``CRYSTAL_AGENT_LAB_TOKEN``) or from a file (first line), never from the campaign
  config in clear. The token is refused over plain ``http://`` to a host other than
  loopback unless ``allow_insecure_http=True``.
* Idempotency: ``POST /experiments`` carries ``Idempotency-Key: <request_id>``, so a
  retried submission never creates a second experiment.
* Retries: connection errors, timeouts and HTTP 5xx are retried up to ``max_retries``
  times with exponential backoff ``backoff_s * 2**attempt`` (capped at
  ``max_backoff_s``); 4xx answers are not retried and become one-line errors.
* TLS: ``https://`` URLs use ``ssl_context`` (default: the system's verified context).

This adapter can move real hardware (``reaches_hardware = True``), so
:func:`agent.lab.base.get_adapter` wraps it in the approval / budget gate of
:mod:`agent.lab.safety`.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from agent.lab.base import (
    LabAdapter,
    LabAuthError,
    LabConnectionError,
    LabRequest,
    LabRequestError,
    LabStatus,
    LabTicket,
    UnknownTicketError,
)

if TYPE_CHECKING:
    import ssl

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def read_token(token_env: str | None = "CRYSTAL_AGENT_LAB_TOKEN", token_file: str | Path | None = None) -> str:
    """The bearer token from ``token_file`` (first line) if given, else ``$token_env``.

    Raises:
        LabAuthError: no token found (one line saying where it was looked for).
    """
    if token_file is not None:
        path = Path(token_file).expanduser()
        try:
            text = path.read_text().strip()
        except OSError as exc:
            raise LabAuthError(f"cannot read lab token file {path}: {exc.strerror}") from None
        token = text.splitlines()[0].strip() if text else ""
        if not token:
            raise LabAuthError(f"lab token file {path} is empty")
        return token
    token = os.environ.get(token_env or "", "").strip()
    if not token:
        raise LabAuthError(f"no lab token: set ${token_env} or give a token file")
    return token


class NetworkLabAdapter(LabAdapter):
    """HTTP/JSON client of a lab robot.

    Args:
        base_url: e.g. ``"https://lab.example.org/api"`` or ``"http://127.0.0.1:8765"``.
        token_env: environment variable holding the bearer token.
        token_file: file holding the token (takes precedence over the variable).
        timeout_s: socket timeout per HTTP attempt (s).
        max_retries: extra attempts after the first on connection errors / 5xx.
        backoff_s: first backoff delay (s); doubles each retry.
        max_backoff_s: cap of one backoff delay (s).
        ssl_context: TLS context for https (default ``ssl.create_default_context()``).
        allow_insecure_http: permit plain http to non-loopback hosts.
        sleep: sleep function (injectable for tests).

    Raises:
        LabRequestError: malformed URL or insecure scheme.
        LabAuthError: no token.
    """

    name: ClassVar[str] = "network"
    reaches_hardware: ClassVar[bool] = True

    def __init__(
        self,
        base_url: str,
        token_env: str | None = "CRYSTAL_AGENT_LAB_TOKEN",
        token_file: str | Path | None = None,
        timeout_s: float = 10.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        allow_insecure_http: bool = False,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        parts = urllib.parse.urlsplit(str(base_url))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise LabRequestError(f"lab base_url must be http(s)://host[:port][/path], got {base_url!r}")
        if parts.scheme == "http" and parts.hostname not in _LOOPBACK and not allow_insecure_http:
            raise LabRequestError(
                f"refusing to send the lab token over plain http to {parts.hostname}; use https or allow_insecure_http"
            )
        if timeout_s <= 0 or max_retries < 0 or backoff_s < 0:
            raise LabRequestError("timeout_s must be > 0, max_retries and backoff_s >= 0")
        self.base_url = str(base_url).rstrip("/")
        self._token = read_token(token_env, token_file)
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self._sleep = sleep
        self._ssl = ssl_context
        if parts.scheme == "https" and self._ssl is None:
            import ssl as _ssl

            self._ssl = _ssl.create_default_context()
        self.n_attempts = 0  # total HTTP attempts (for tests and logs)

    def __repr__(self) -> str:  # never show the token
        return f"NetworkLabAdapter({self.base_url!r})"

    # -- HTTP --------------------------------------------------------------------------
    def _call(self, method: str, path: str, body: dict[str, Any] | None = None, idempotency_key: str | None = None) -> tuple[int, dict[str, Any]]:
        url = self.base_url + path
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._sleep(min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s))
            self.n_attempts += 1
            req = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s, context=self._ssl) as resp:
                    return resp.status, _decode(resp.read(), url)
            except urllib.error.HTTPError as exc:
                payload = _decode(exc.read(), url, strict=False)
                msg = str(payload.get("error") or exc.reason)
                if exc.code >= 500:
                    last = f"HTTP {exc.code}: {msg}"
                    continue
                if exc.code in (401, 403):
                    raise LabAuthError(f"lab at {self.base_url} refused the token (HTTP {exc.code}): {msg}") from None
                if exc.code == 404:
                    raise UnknownTicketError(f"lab at {self.base_url}: {method} {path}: not found ({msg})") from None
                raise LabRequestError(f"lab at {self.base_url} rejected {method} {path} (HTTP {exc.code}): {msg}") from None
            except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                if isinstance(reason, TimeoutError) or isinstance(exc, TimeoutError) or "timed out" in str(reason):
                    last = f"timed out after {self.timeout_s:g} s"
                else:
                    last = str(reason) or type(exc).__name__
        raise LabConnectionError(f"lab at {self.base_url} unreachable after {self.max_retries + 1} attempts: {last}")

    # -- protocol ----------------------------------------------------------------------
    def submit(self, request: LabRequest) -> LabTicket:
        if not isinstance(request, LabRequest):
            raise LabRequestError(f"submit needs a LabRequest, got {type(request).__name__}")
        _, payload = self._call("POST", "/experiments", request.to_dict(), idempotency_key=request.request_id)
        return LabTicket(_field(payload, "experiment_id"), request.request_id, self.name)

    def _ticket_path(self, ticket: LabTicket) -> str:
        if not isinstance(ticket, LabTicket) or ticket.adapter != self.name:
            raise UnknownTicketError(f"not a ticket of the network lab: {ticket!r}")
        return "/experiments/" + urllib.parse.quote(ticket.ticket_id, safe="")

    def poll(self, ticket: LabTicket) -> LabStatus:
        _, payload = self._call("GET", self._ticket_path(ticket))
        return _status(payload, self.base_url)

    def cancel(self, ticket: LabTicket) -> LabStatus:
        _, payload = self._call("POST", self._ticket_path(ticket) + "/cancel", {})
        return _status(payload, self.base_url)

    def health(self) -> dict[str, Any]:
        try:
            _, payload = self._call("GET", "/health")
        except (LabConnectionError, LabRequestError) as exc:
            return {"ok": False, "adapter": self.name, "url": self.base_url, "error": str(exc)}
        return {**payload, "ok": bool(payload.get("ok")), "adapter": self.name, "url": self.base_url}


def _decode(raw: bytes, url: str, strict: bool = True) -> dict[str, Any]:
    try:
        data = json.loads(raw.decode() or "{}")
    except (UnicodeDecodeError, json.JSONDecodeError):
        if not strict:
            return {}
        raise LabConnectionError(f"lab at {url} answered with non-JSON data") from None
    if not isinstance(data, dict):
        if not strict:
            return {}
        raise LabConnectionError(f"lab at {url} answered with a JSON {type(data).__name__}, expected an object")
    return data


def _field(payload: dict[str, Any], key: str) -> Any:
    if key not in payload:
        raise LabConnectionError(f"lab answer lacks {key!r}")
    return payload[key]


def _status(payload: dict[str, Any], url: str) -> LabStatus:
    try:
        return LabStatus.from_dict(_field(payload, "status"))
    except (KeyError, TypeError, ValueError) as exc:
        raise LabConnectionError(f"lab at {url} sent a malformed status: {exc}") from None
