"""Expected CPU seconds of a backend's tasks: the one cost model of the campaign.

A :class:`CostModel` starts from a prior per input (the level's ``cost_s`` override, or
the backend's own :meth:`~sim_backends.base.Backend.cost_estimate`) and is fitted to
the CPU seconds measured in the workers as results arrive (failed tasks included): the
expected cost of an input is its prior times ``sum(measured) / sum(prior)`` over the
finished tasks, so the mean expected cost over finished tasks is the measured mean
while relative sizes (pentacene vs pyrazine, a Z=8 cell vs a Z=2 one) come from the
backend. Before any task finished the prior is used as is.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, Protocol

import numpy as np

from sim_backends.base import EvalInput

#: the smallest cost an input is given (CPU s), so ratios and logs stay finite
MIN_COST_S = 1e-3


#: a task starts only if its CPU cost fits the budget left with this probability
COST_FIT_PROBABILITY = 0.9
#: prior sd of log(measured / prior CPU s) of one task, and its weight in pseudo-tasks:
#: the backends' size-based estimates are off by ~25 % per molecule (sd of the log ratio
#: over the 12 DFT-relaxed reorganisation energies of benchmarks/reorg_validation.py)
COST_LOG_SD_PRIOR = (0.25, 2.0)


def cost_fit_factor(log_ratios: Sequence[float]) -> float:
    """The factor on a task's expected CPU cost below which its cost stays with
    probability :data:`COST_FIT_PROBABILITY`: ``exp(z sd)``, ``sd`` the spread of
    ``log(measured / prior CPU s)`` over a level's finished tasks (``log_ratios``),
    pooled with the prior :data:`COST_LOG_SD_PRIOR` so that one or two tasks do not
    make it zero."""
    from scipy.stats import norm

    z = float(norm.ppf(COST_FIT_PROBABILITY))
    sd0, k = COST_LOG_SD_PRIOR
    logs = np.asarray(log_ratios, dtype=np.float64)
    ss = float(np.sum((logs - logs.mean()) ** 2)) if len(logs) > 1 else 0.0
    return float(np.exp(z * np.sqrt((k * sd0 ** 2 + ss) / (k + max(len(logs) - 1, 0)))))


class CostModelProtocol(Protocol):
    def prior(self, inp: EvalInput) -> float: ...

    def observe(self, inp: EvalInput, cpu_s: float) -> None: ...

    def expected(self, inps: Sequence[EvalInput]) -> np.ndarray: ...


class CostModel:
    """The cost model of one level (see the module docstring).

    Args:
        backend: registry name.
        params: the level's backend parameters.
        cost_s: the config's fixed prior (CPU s per task), overriding the backend's estimate.
    """

    def __init__(self, backend: str, params: dict[str, Any], cost_s: float | None = None) -> None:
        self.backend, self.params, self.cost_s = backend, dict(params), cost_s
        self._backend: Any = None
        self._prior: dict[Hashable, float] = {}
        self.measured: list[float] = []
        #: log(measured / prior CPU s) of each successful task charged CPU (the spread of the estimate)
        self.log_ratios: list[float] = []
        self._sum_measured = 0.0
        self._sum_prior = 0.0

    def _key(self, inp: EvalInput) -> Hashable:
        return (inp.smiles, inp.structure_id, inp.structure_cif if inp.structure_id is None else None)

    def prior(self, inp: EvalInput) -> float:
        """The cost before fitting, CPU s (cached per input)."""
        key = self._key(inp)
        if key not in self._prior:
            if self.cost_s is not None:
                value = float(self.cost_s)
            else:
                if self._backend is None:
                    from sim_backends.registry import backend_class

                    self._backend = backend_class(self.backend)(**self.params)
                value = float(self._backend.cost_estimate(inp))
            self._prior[key] = max(value, MIN_COST_S)
        return self._prior[key]

    def observe(self, inp: EvalInput, cpu_s: float, ok: bool = True) -> None:
        """Fit to one finished task's measured CPU seconds (failures included); the spread
        of the estimate (:attr:`log_ratios`) only from tasks that succeeded and were
        charged CPU (a fast failure or a replay at 0 s says nothing about a task's cost)."""
        prior = self.prior(inp)
        self.measured.append(float(cpu_s))
        if ok and cpu_s > 0:
            self.log_ratios.append(float(np.log(float(cpu_s) / prior)))
        self._sum_measured += float(cpu_s)
        self._sum_prior += prior

    @property
    def scale(self) -> float:
        """Measured over prior CPU seconds of the finished tasks (1 before any)."""
        if not self.measured or self._sum_prior <= 0 or self._sum_measured <= 0:
            return 1.0
        return self._sum_measured / self._sum_prior

    def fit_factor(self) -> float:
        """:func:`cost_fit_factor` of this level's :attr:`log_ratios`: the factor on an
        expected cost below which a task's cost stays with :data:`COST_FIT_PROBABILITY`."""
        return cost_fit_factor(self.log_ratios)

    def mean_measured(self) -> float | None:
        return float(np.mean(self.measured)) if self.measured else None

    def expected(self, inps: Sequence[EvalInput]) -> np.ndarray:
        """Expected CPU seconds of each input."""
        return np.maximum(np.array([self.prior(i) for i in inps]) * self.scale, MIN_COST_S)


def evaluation_slot_price(pair_costs: np.ndarray, allowed: np.ndarray, cpu_left: float, slots_left: int,
                          levels_left: Sequence[int | None]) -> float:
    """CPU seconds one evaluation is worth when the evaluation budget binds, else 0.

    Two budgets limit the stage: CPU seconds (``cpu_left``) and evaluations
    (``slots_left``). The evaluation budget binds when the CPU left would pay for more
    tasks than there are evaluations left, counting the cheapest allowed tasks
    (``pair_costs`` where ``allowed``, at most ``levels_left[f]`` of level ``f``). Then a
    task uses one of ``slots_left`` evaluations as well as its CPU seconds, and is worth
    at least the CPU left per evaluation left: the cost the acquisition divides by is
    ``max(cpu_s, cpu_left / slots_left)``, the larger of the two fractions of the
    remaining budgets the task uses up (scaled to CPU seconds). Otherwise the CPU budget
    alone binds and the price is 0 (costs stay CPU seconds).
    """
    if slots_left <= 0:
        return 0.0
    costs = []
    for f in range(allowed.shape[1]):
        c = np.sort(pair_costs[allowed[:, f], f])
        cap = levels_left[f]
        costs.append(c if cap is None else c[:cap])
    c = np.sort(np.concatenate(costs)) if costs else np.zeros(0)
    affordable = int(np.searchsorted(np.cumsum(c), cpu_left, side="right"))
    if affordable <= slots_left:
        return 0.0
    return float(max(cpu_left, 0.0) / slots_left)
