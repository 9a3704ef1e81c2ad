"""The backend protocol: what every physics level of the fidelity ladder implements.

A backend is a small, picklable object that turns an :class:`EvalInput` (a molecule
given as SMILES, optionally a crystal structure) into an :class:`EvalResult` holding
named scalar values (energies in kJ/mol per molecule at this surface).

Subclasses declare their capabilities as class attributes and fill in exactly one
method, :meth:`Backend._evaluate`. The public :meth:`Backend.evaluate` validates,
times, hashes the inputs and turns exceptions into failed results, so a backend
never crashes the campaign:

* :class:`SetupError` -- the input can never work (invalid SMILES, unsupported
  element). Failed permanently, never retried.
* :class:`RunError` -- the calculation ran and failed (SCF did not converge,
  optimiser diverged). Failed, may be retried by the executor.
* :class:`PhysicsError` -- the calculation finished but its result violates what
  physics allows (a negative relaxation energy, an absurd density). Raised by the
  declared check :meth:`Backend._check_physical`, which :meth:`Backend.evaluate` runs
  on every result; the result is failed with ``reason="unphysical: ..."``, its values
  are dropped (kept in ``extra["unphysical_values"]`` for diagnosis), never retried.
* anything else -- an unexpected error in the backend; recorded as failed with the
  exception type and message.

Importing this module is cheap: no torch, pyscf or rdkit at import time.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

Status = Literal["ok", "failed"]

#: elements the physics backends are parametrised for (organic molecular crystals)
SUPPORTED_ELEMENTS: frozenset[str] = frozenset({"H", "C", "N", "O", "F", "S", "Cl"})


def process_cpu_s() -> float:
    """CPU seconds (user + system) of this process's threads and its waited-for children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class BackendError(Exception):
    """Base class of errors a backend raises on purpose, with a one-line reason."""


class SetupError(BackendError):
    """The input can never be evaluated by this backend (never retried)."""


class RunError(BackendError):
    """The calculation ran and did not succeed (e.g. SCF not converged).

    Args:
        message: one-line reason.
        retryable: whether a second attempt may succeed (False for deterministic
            failures such as a negative reorganisation energy on given geometries).
    """

    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class ParamsError(SetupError):
    """A backend parameter that can never work (unknown key, wrong type, out of range).

    Attributes:
        key: the parameter's name (``"force_params.method"`` for a nested one).
        reason: one line saying what is wrong, naming the value given.
    """

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


class PhysicsError(RunError):
    """A finished calculation whose result physics does not allow (never retried).

    The message names the offending quantity with its value, unit and level of theory,
    e.g. ``lambda_cation = -10.1 kJ/mol < -0.5 (B3LYP/6-31G//GFN2-xTB geometries)``.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


@dataclass(frozen=True)
class EvalInput:
    """What to evaluate.

    Attributes:
        smiles: the molecule, as SMILES.
        structure_cif: a crystal structure as CIF text, for structure-level backends.
        structure_id: the store id of that structure, if any.
        params: backend options (functional, basis, temperature, ...); part of the hash.
    """

    smiles: str
    structure_cif: str | None = None
    structure_id: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def inputs_hash(self, backend: str, version: str) -> str:
        """A stable SHA-256 over backend, version and all inputs (hex, 16 chars)."""
        payload = json.dumps(
            {
                "backend": backend,
                "version": version,
                "smiles": self.smiles,
                "structure": self.structure_cif,
                "params": self.params,
            },
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class EvalResult:
    """The outcome of one evaluation; failed results are kept, never dropped.

    Attributes:
        backend, backend_version, fidelity: who computed it.
        status: "ok" or "failed".
        reason: one-line reason when failed.
        retryable: whether a failure may succeed on a second try.
        values: named scalar results (e.g. ``{"reorg_energy_kjmol": 25.1}``).
        wall_s: wall-clock seconds spent in the backend.
        cpu_s: CPU seconds spent in the backend: user + system time of every thread of
            the evaluating process and of the child processes it waited for (what a
            compute budget is charged; a task that waits on I/O or a loaded machine
            costs wall time, not CPU).
        inputs_hash: see :meth:`EvalInput.inputs_hash`.
        extra: small JSON-able details (SCF cycles, geometries as XYZ text...).
    """

    backend: str
    backend_version: str
    fidelity: int
    status: Status
    values: dict[str, float]
    wall_s: float
    inputs_hash: str
    reason: str = ""
    retryable: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    cpu_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Backend(ABC):
    """One level of the fidelity ladder.

    Class attributes (capabilities are declared, not discovered):
        name: registry name, e.g. ``"xtb-reorg"``.
        version: backend version string; recorded with every result and hashed.
        fidelity: integer rank on the ladder (higher = more accurate and costly).
        target: ``"molecule"`` or ``"structure"``.
        computes: names of the values :meth:`_evaluate` returns.
        objective_key: the value a campaign optimises when this backend is used.
        may_be_nan: values allowed to be NaN ("not defined"); any other non-finite
            value fails the physical check.
        value_sd: the typical error (standard deviation, the value's unit) of values that
            are calibrated estimates of a measurable quantity, e.g. ``ip_gas_ev``; a
            campaign's ``[[constraints]]`` read it (:mod:`agent.constraints`).
        value_levels: the level of theory of such values where it is not the backend's
            own (e.g. ``ip_gas_ev``: a calibrated GFN2-xTB Delta-SCF IP beside a mobility),
            printed with them.
        caveat: a known systematic error of the level (one line, with where it was
            measured), printed beside its values by ``status`` and the run summary.
    """

    name: ClassVar[str]
    version: ClassVar[str] = "0"
    fidelity: ClassVar[int] = 0
    target: ClassVar[Literal["molecule", "structure"]] = "molecule"
    computes: ClassVar[tuple[str, ...]] = ()
    objective_key: ClassVar[str | None] = None
    description: ClassVar[str] = ""
    #: values that may be NaN meaning "not defined here" (e.g. a gap with one minimum)
    may_be_nan: ClassVar[tuple[str, ...]] = ()
    #: value -> its typical error (sd, the value's unit) where the backend knows it
    value_sd: ClassVar[dict[str, float]] = {}
    #: value -> its level of theory, where it is not the backend's own level
    value_levels: ClassVar[dict[str, str]] = {}
    #: a known systematic error of the level, one line, printed where its values are
    caveat: ClassVar[str] = ""
    #: True for backends not offered to users (self-tests, replays, fault injection)
    internal: ClassVar[bool] = False
    #: the parameters this backend reads, each with its check (:mod:`sim_backends.params`);
    #: None accepts any parameters
    params_schema: ClassVar[dict[str, Any] | None] = None

    def __init__(self, **params: Any) -> None:
        self.params = dict(params)

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        """Raise :class:`ParamsError` (naming the key) for parameters that can never work.

        Called on a campaign's config before anything is created. The default checks
        ``params`` against :attr:`params_schema` (unknown keys and each value); subclasses
        add checks across keys by overriding it (calling ``super()``).
        """
        if cls.params_schema is not None:
            from sim_backends.params import check_schema

            check_schema(cls.name, cls.params_schema, params)

    def fragment_terms_settings(self) -> dict[str, Any] | None:
        """For a structure-level backend whose energy is cheap fragment terms plus
        per-dimer corrections, the settings its decomposition uses under this backend's
        params and defaults (keys ``cutoff_A``, ``cutoff_mode``, ``functional``: the
        arguments of :func:`sim_backends.fragment_terms.landscape_fragment_terms`), so a
        per-dimer model can be fitted to its results; None (the default) otherwise."""
        return None

    def cost_estimate(self, inp: EvalInput) -> float:
        """Expected CPU seconds for ``inp`` (used by cost-aware acquisition)."""
        return 1.0

    @abstractmethod
    def _evaluate(self, inp: EvalInput) -> tuple[dict[str, float], dict[str, Any]]:
        """Compute and return ``(values, extra)``; raise SetupError/RunError on failure."""

    def _check_physical(self, values: dict[str, float], extra: dict[str, Any]) -> None:
        """Raise :class:`PhysicsError` if ``values`` violate what physics allows.

        Runs inside :meth:`evaluate` on every successful :meth:`_evaluate`. The base
        check rejects non-finite values; subclasses extend it (calling ``super()``)
        with the bounds of the quantities they compute, reading details from ``extra``.
        """
        bad = sorted(k for k, v in values.items()
                     if not math.isfinite(v) and not (math.isnan(v) and k in self.may_be_nan))
        if bad:
            raise PhysicsError(f"non-finite value(s) {', '.join(f'{k} = {values[k]}' for k in bad)}")

    def evaluate(self, inp: EvalInput) -> EvalResult:
        """Validate, time and run :meth:`_evaluate`, never raising for bad inputs."""
        merged = EvalInput(
            smiles=inp.smiles,
            structure_cif=inp.structure_cif,
            structure_id=inp.structure_id,
            params={**self.params, **inp.params},
        )
        h = merged.inputs_hash(self.name, self.version)
        t0, cpu0 = time.perf_counter(), process_cpu_s()
        status: Status = "ok"
        reason = ""
        retryable = False
        values: dict[str, float] = {}
        extra: dict[str, Any] = {}
        try:
            values, extra = self._evaluate(merged)
            values = {k: float(v) for k, v in values.items()}
            self._check_physical(values, extra)
        except PhysicsError as exc:
            status, reason = "failed", f"unphysical: {exc}"
            extra, values = {**extra, "unphysical_values": values}, {}
        except SetupError as exc:
            status, reason = "failed", f"setup: {exc}"
        except RunError as exc:
            status, reason, retryable = "failed", f"run: {exc}", exc.retryable
        except Exception as exc:  # noqa: BLE001 - a backend must never crash the loop
            status, reason = "failed", f"error: {type(exc).__name__}: {exc}"
        return EvalResult(
            backend=self.name,
            backend_version=self.version,
            fidelity=self.fidelity,
            status=status,
            values=values,
            wall_s=time.perf_counter() - t0,
            inputs_hash=h,
            reason=reason.splitlines()[0][:500] if reason else "",
            retryable=retryable,
            extra=extra,
            cpu_s=process_cpu_s() - cpu0,
        )
