"""The contract between the campaign scheduler and its stages.

A campaign is a scheduler (:class:`agent.campaign.Campaign`) over a list of stages. A
stage proposes :class:`Request` objects and learns from their stored results; stages
never see the campaign or each other. What they share goes through the store
(:mod:`agent.store`): the ``evaluations`` rows (each names the stage that asked for
it), the ``structures`` table (CSP landscapes), ``observed_forms`` (lab
identifications) and ``events`` (refit diagnostics), so a stage rebuilt from the store
after a crash is the stage that crashed.

Order of calls, for every stage:

* ``restore(store)`` once, on a new or reopened campaign, before anything else: read
  what the stage needs from the store; then the scheduler hands the stage's stored
  evaluations to ``tell(None, evaluation)`` one by one, in stored order;
* ``ask(n, pending)`` for at most ``n`` new requests; ``pending`` are all requests in
  flight, of every stage (plain data: a stage may wait for another stage's results);
* ``records(request, result)`` before the result is committed: rows of the typed
  store tables the result produces, committed in the same transaction as the
  evaluation (a CSP landscape's structures);
* ``tell(request, evaluation)`` after the store committed the result (``evaluation`` is
  the stored row; ``request`` is None for rows replayed on restore);
* ``is_exhausted(pending, budget=True)``: nothing can be proposed now or later (``budget=False``: were the compute budget no limit);
* ``step()``: advance work that runs outside the executor (a lab robot); True while
  some is open (False for stages whose work is all requests);
* ``waits_for``: names of stages that must be exhausted before this one is asked.

Budgets are the scheduler's: a stage is asked for no more than its share allows.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from sim_backends.base import EvalInput

if TYPE_CHECKING:
    from agent.executor import Task
    from agent.store import Evaluation, Store
    from sim_backends.base import EvalResult


def _new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, eq=False)
class Request:
    """One evaluation a stage asked for (immutable; identity is ``request_id``).

    Attributes:
        stage: name of the stage that asked (recorded with the evaluation).
        backend: registry name of the backend to run.
        params: the backend's parameters (read-only mapping).
        inp: what to evaluate (molecule, optionally a crystal structure).
        molecule_id: the store's molecule id.
        fidelity: the level's index in the stage's ladder.
        structure_id: the store's structure id for structure-level work.
        request_id: unique id (the store refuses a second result for it).
        why: why the stage chose it, a small JSON-able dict (``{"rule": ...}`` and, for
            an acquisition's pick, its value, rate and cost; see
            :meth:`agent.stages.molecule.MoleculeStage.ask`), which the runner records in
            the store's ``submitted`` event; None: the stage does not say. Not part of
            the request's identity or :meth:`decision`.
    """

    stage: str
    backend: str
    params: Mapping[str, Any]
    inp: EvalInput
    molecule_id: int
    fidelity: int = 0
    structure_id: str | None = None
    request_id: str = field(default_factory=_new_id)
    why: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    def __hash__(self) -> int:
        return hash(self.request_id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Request) and other.request_id == self.request_id

    def to_task(self) -> Task:
        """The executor's unit of work for this request."""
        from agent.executor import Task

        return Task(request_id=self.request_id, backend=self.backend,
                    backend_params=dict(self.params), inp=self.inp, fidelity=self.fidelity,
                    request=self)

    def decision(self) -> tuple[str, str, int, int, str | None]:
        """What was decided, without the random id: (stage, backend, molecule, level,
        structure)."""
        return (self.stage, self.backend, self.molecule_id, self.fidelity, self.structure_id)


@runtime_checkable
class Stage(Protocol):
    """A stage of a campaign (see the module docstring for the order of calls)."""

    name: str
    waits_for: tuple[str, ...]

    def restore(self, store: Store) -> None: ...

    def owns(self, evaluation: Evaluation) -> bool:
        """Whether a stored row without a stage name (schema < 3) is this stage's."""
        ...

    def ask(self, n: int, pending: Sequence[Request]) -> list[Request]: ...

    def records(self, request: Request, result: EvalResult) -> dict[str, Any]: ...

    def tell(self, request: Request | None, evaluation: Evaluation) -> None: ...

    def is_exhausted(self, pending: Sequence[Request], budget: bool = True) -> bool: ...

    def step(self) -> bool: ...

    def close(self) -> None: ...
