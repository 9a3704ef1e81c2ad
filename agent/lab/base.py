"""The lab-adapter protocol: how the agent talks to a crystallisation lab (robot).

A lab adapter accepts :class:`LabRequest` objects (crystallise this molecule by this
method, then measure a powder X-ray diffraction (PXRD) pattern and optionally a
property), returns a :class:`LabTicket` at once and reports progress through
:meth:`LabAdapter.poll` as a :class:`LabStatus`:

    queued -> running -> done (with a :class:`LabResult`) | failed (with a reason)
    queued | running -> cancelled

Submission is idempotent on ``request.request_id``: submitting the same request twice
creates one experiment and returns the same ticket, so a client that lost the reply
to a submission can simply submit again.

Adapters are registered like backends: :data:`ADAPTERS` maps a name to a
``"module:Class"`` string, imported only when used. The contract tests in
``tests/agent/lab/test_lab_contract.py`` run over every registered adapter.

Importing this module is cheap (stdlib only).
"""

from __future__ import annotations

import importlib
import re
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

METHODS: tuple[str, ...] = ("slow_evaporation", "slurry", "sublimation", "cooling", "cryocrystallisation")
#: methods without a solvent (the request's ``solvent`` must be None)
SOLVENT_FREE_METHODS: tuple[str, ...] = ("sublimation", "cryocrystallisation")
#: what each method asks the lab (or its operator) to do; ``temperature_K`` is where the crystals grow
METHOD_DESCRIPTIONS: dict[str, str] = {
    "slow_evaporation": "slow evaporation of a solution in the solvent, held at temperature_K",
    "slurry": "slurry ripening: a suspension stirred in the solvent at temperature_K",
    "cooling": "cooling crystallisation: a saturated hot solution cooled to temperature_K",
    "sublimation": "growth from the vapour without solvent (sublimation, physical vapour transport, or "
                   "deposition of a gas) onto a surface held at temperature_K",
    "cryocrystallisation": "in-situ cryocrystallisation of the neat liquid (or condensed gas), e.g. sealed "
                           "in a capillary on the diffractometer, frozen and grown at temperature_K below "
                           "its melting point; no solvent",
}
MEASUREMENTS: tuple[str, ...] = ("pxrd", "density_gcm3")
States = Literal["queued", "running", "done", "failed", "cancelled", "awaiting_approval"]
TERMINAL_STATES: frozenset[str] = frozenset({"done", "failed", "cancelled"})

_REQUEST_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def format_K(temperature_K: float) -> str:
    """A temperature in K as given, to at most 0.01 K: 298.15 -> "298.15", 204.9 -> "204.9",
    300.0 -> "300" (never 298.15 shown as 298.1)."""
    return f"{float(temperature_K):.2f}".rstrip("0").rstrip(".")


class LabError(Exception):
    """Base class of lab errors; the message is one line."""


class LabRequestError(LabError, ValueError):
    """A request that can never be run (unknown method, bad temperature, ...)."""


class LabConnectionError(LabError):
    """The lab could not be reached (after retries) or answered nonsense."""


class LabAuthError(LabError):
    """The lab refused our credentials (HTTP 401/403) or none were found."""


class UnknownTicketError(LabError, KeyError):
    """A ticket this lab never issued."""

    def __str__(self) -> str:  # KeyError quotes its message; keep one clean line
        return str(self.args[0])


class UnknownAdapterError(LabError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class LabRequest:
    """One crystallisation experiment and what to measure on its product.

    Attributes:
        request_id: caller-chosen unique id (idempotency key), ``[A-Za-z0-9_.:-]{1,128}``.
        smiles: the molecule.
        method: one of :data:`METHODS` (see :data:`METHOD_DESCRIPTIONS`).
        solvent: solvent name; must be None for the :data:`SOLVENT_FREE_METHODS`
            (sublimation, cryocrystallisation), required otherwise.
        temperature_K: crystallisation temperature (K), 100-600.
        measure: measurements to take, a subset of :data:`MEASUREMENTS`; "pxrd" always.
        note: free text for the lab's operator on where the conditions come from (e.g.
            "default assumption: ..."); not used by the lab, left out of
            :meth:`to_dict` when None.
    """

    request_id: str
    smiles: str
    method: str = "slow_evaporation"
    solvent: str | None = "ethanol"
    temperature_K: float = 298.15
    measure: tuple[str, ...] = ("pxrd",)
    note: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.request_id, str) or not _REQUEST_ID.match(self.request_id):
            raise LabRequestError(
                f"bad request_id {self.request_id!r}: use 1-128 of [A-Za-z0-9_.:-]"
            )
        if not isinstance(self.smiles, str) or not self.smiles.strip():
            raise LabRequestError("request smiles must be a non-empty string")
        if self.method not in METHODS:
            raise LabRequestError(f"unknown method {self.method!r}; use one of {', '.join(METHODS)}")
        if self.method in SOLVENT_FREE_METHODS and self.solvent is not None:
            raise LabRequestError(f"{self.method} takes no solvent (solvent must be None)")
        if self.method not in SOLVENT_FREE_METHODS and not (isinstance(self.solvent, str) and self.solvent.strip()):
            raise LabRequestError(f"method {self.method} needs a solvent")
        try:
            temperature = float(self.temperature_K)
        except (TypeError, ValueError):
            raise LabRequestError(f"temperature_K must be a number, got {self.temperature_K!r}") from None
        if not 100.0 <= temperature <= 600.0:
            raise LabRequestError(f"temperature_K={format_K(temperature)} outside 100-600 K")
        object.__setattr__(self, "temperature_K", temperature)
        measure = tuple(self.measure) if not isinstance(self.measure, str) else (self.measure,)
        unknown = [m for m in measure if m not in MEASUREMENTS]
        if unknown:
            raise LabRequestError(f"unknown measurement {unknown[0]!r}; use {', '.join(MEASUREMENTS)}")
        if "pxrd" not in measure:
            measure = ("pxrd", *measure)
        object.__setattr__(self, "measure", measure)
        if self.note is not None and not isinstance(self.note, str):
            raise LabRequestError("note must be a string")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["measure"] = list(self.measure)
        if d["note"] is None:  # requests stored before notes existed compare equal
            del d["note"]
        return d

    @classmethod
    def from_dict(cls, data: Any) -> LabRequest:
        """Build from a JSON-like mapping; :class:`LabRequestError` if malformed."""
        if not isinstance(data, dict):
            raise LabRequestError("request must be a JSON object")
        allowed = {"request_id", "smiles", "method", "solvent", "temperature_K", "measure", "note"}
        extra = sorted(set(data) - allowed)
        if extra:
            raise LabRequestError(f"unknown request field {extra[0]!r}")
        missing = [k for k in ("request_id", "smiles") if k not in data]
        if missing:
            raise LabRequestError(f"request is missing {missing[0]!r}")
        kwargs = dict(data)
        if "measure" in kwargs:
            if not isinstance(kwargs["measure"], (list, tuple)):
                raise LabRequestError("measure must be a list of measurement names")
            kwargs["measure"] = tuple(kwargs["measure"])
        return cls(**kwargs)


@dataclass(frozen=True)
class LabTicket:
    """Handle of a submitted experiment.

    Attributes:
        ticket_id: the lab's experiment id.
        request_id: the request it was created for.
        adapter: name of the adapter that issued it.
    """

    ticket_id: str
    request_id: str
    adapter: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabTicket:
        return cls(str(data["ticket_id"]), str(data["request_id"]), str(data["adapter"]))


@dataclass(frozen=True)
class LabResult:
    """What the lab observed.

    Attributes:
        request_id: the request this answers.
        outcome: "crystalline" (one form), "mixture" (several forms) or "amorphous".
        two_theta_deg: PXRD abscissa, shape (n_points,), degrees 2-theta.
        intensity: PXRD counts, shape (n_points,).
        wavelength: X-ray source label or wavelength in angstrom (e.g. "CuKa").
        properties: other measured values keyed with units (e.g. ``density_gcm3``).
        metadata: free-form observation metadata (method, solvent, duration_s, ...).
            A simulated lab also records ``simulated_truth`` (the forms it drew) for
            benchmarking; a real lab does not.
    """

    request_id: str
    outcome: str
    two_theta_deg: tuple[float, ...]
    intensity: tuple[float, ...]
    wavelength: str = "CuKa"
    properties: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def pattern(self) -> tuple[Any, Any]:
        """The PXRD pattern as two numpy arrays ``(two_theta_deg, intensity)``."""
        import numpy as np

        return np.asarray(self.two_theta_deg, float), np.asarray(self.intensity, float)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["two_theta_deg"] = list(self.two_theta_deg)
        d["intensity"] = list(self.intensity)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabResult:
        return cls(
            request_id=str(data["request_id"]),
            outcome=str(data["outcome"]),
            two_theta_deg=tuple(float(x) for x in data["two_theta_deg"]),
            intensity=tuple(float(x) for x in data["intensity"]),
            wavelength=str(data.get("wavelength", "CuKa")),
            properties={str(k): float(v) for k, v in dict(data.get("properties", {})).items()},
            metadata=dict(data.get("metadata", {})),
        )


@dataclass(frozen=True)
class LabStatus:
    """State of one experiment.

    Attributes:
        state: queued, running, done, failed, cancelled or awaiting_approval.
        result: the :class:`LabResult` when ``state == "done"``.
        reason: one-line reason when failed / cancelled / awaiting approval.
    """

    state: str
    result: LabResult | None = None
    reason: str | None = None

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "result": None if self.result is None else self.result.to_dict(),
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabStatus:
        res = data.get("result")
        return cls(str(data["state"]), None if res is None else LabResult.from_dict(res), data.get("reason"))


class LabAdapter(ABC):
    """A crystallisation lab the agent can send experiments to.

    Class attributes:
        name: registry name.
        reaches_hardware: True if submissions may move real equipment; such adapters
            are wrapped in :class:`agent.lab.safety.GuardedAdapter` (dry run until
            approved, daily budget) by :func:`get_adapter`.
        takes_landscape: True if the adapter draws its outcomes from predicted crystal
            structures (a simulated lab): its constructor takes ``landscape`` (a list of
            :class:`~sim_backends.landscape.LandscapeEntry`, or a mapping SMILES -> list)
            and ``seed``. With ``[lab] landscape = "campaign"`` a campaign builds one such
            adapter per molecule on its own predicted landscape
            (:class:`agent.stages.lab.LabStage`); other adapters measure real crystals
            and take no landscape.
    """

    name: ClassVar[str] = "abstract"
    reaches_hardware: ClassVar[bool] = False
    takes_landscape: ClassVar[bool] = False

    @abstractmethod
    def submit(self, request: LabRequest) -> LabTicket:
        """Start an experiment; the same ``request_id`` always maps to one experiment."""

    @abstractmethod
    def poll(self, ticket: LabTicket) -> LabStatus:
        """Current state of the experiment behind ``ticket``."""

    @abstractmethod
    def cancel(self, ticket: LabTicket) -> LabStatus:
        """Cancel if not finished; returns the resulting (possibly unchanged) status."""

    @abstractmethod
    def health(self) -> dict[str, Any]:
        """A JSON-able dict with at least ``{"ok": bool, "adapter": name}``."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (connections, files)."""


#: name -> "module:Class"; imported lazily by :func:`adapter_class`.
ADAPTERS: dict[str, str] = {
    "simulated": "agent.lab.simulated:SimulatedLab",
    "network": "agent.lab.network:NetworkLabAdapter",
}


def register_adapter(name: str, target: str) -> None:
    """Register ``target`` (``"module:Class"``) as adapter ``name``."""
    ADAPTERS[name] = target


def adapter_class(name: str) -> type[LabAdapter]:
    """The adapter class registered as ``name`` (imports its module)."""
    if name not in ADAPTERS:
        raise UnknownAdapterError(f"unknown lab adapter {name!r}; registered: {', '.join(sorted(ADAPTERS))}")
    module, _, cls = ADAPTERS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def get_adapter(
    name: str,
    *,
    campaign_dir: str | None = None,
    auto_approve: bool = False,
    daily_budget: int | None = None,
    **params: Any,
) -> LabAdapter:
    """Instantiate adapter ``name``; hardware adapters come wrapped in the safety gate.

    Args:
        name: registry name (see :data:`ADAPTERS`).
        campaign_dir: directory of the approval queue (required for hardware adapters).
        auto_approve: forward submissions without manual approval (``lab.auto_approve``).
        daily_budget: at most this many experiments forwarded per UTC day (None: no cap).
        **params: constructor arguments of the adapter.
    """
    adapter = adapter_class(name)(**params)
    if not adapter.reaches_hardware:
        return adapter
    if campaign_dir is None:
        raise LabError(f"adapter {name!r} reaches hardware: give campaign_dir for its approval queue")
    from agent.lab.safety import ApprovalQueue, GuardedAdapter

    queue = ApprovalQueue(f"{campaign_dir}/lab_approvals.sqlite")
    return GuardedAdapter(adapter, queue, auto_approve=auto_approve, daily_budget=daily_budget)
