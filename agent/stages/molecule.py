"""The molecule stage: which molecule of the pool to evaluate next, at which level.

Decisions:

* an initial space-filling design at the cheapest fidelity (max-min Tanimoto
  distance from a seeded random start) until ``surrogate.n_initial`` results exist;
* then a multi-fidelity Tanimoto GP (:mod:`agent.surrogates.molecule_gp`) and a
  cost-aware batch acquisition (:func:`agent.acquisition.select_batch`) that picks
  molecule and fidelity together with in-flight work passed as pending points;
* a molecule whose input is invalid (setup failure) is never proposed again at any
  fidelity; one whose run failed at a fidelity is not proposed again there;
* a value its backend marks unreliable (:func:`sim_backends.reorg.unreliable_lambda_reason`: a
  Jahn-Teller cation left undistorted) is never the best at the top level and is not trained on
  at any level (the molecule is not recomputed there; a higher level may still follow);
* a molecule a result shows infeasible (``[[constraints]]``, :mod:`agent.constraints`) is
  not the best, and is never proposed again unless a more accurate level of the campaign
  reports the same value and may still find it within the bounds; a molecule whose
  constrained value a more accurate level may still change is weighted by its probability
  of feasibility (constrained EI); its results still train the surrogate;
* a constrained value a cheaper level reports screens a molecule before any level above
  it: the molecule gets those levels only once a completed evaluation has reported the
  value (not before the cheaper level ran, nor while it is in flight), so a 0.3 CPU-s
  check decides before a CSP is spent on a molecule it excludes (the acquisition weighs
  the molecule at the higher level, and a pick of it runs the cheaper level that reports
  the value first); only where the cheaper levels ran on it without reporting the value
  may a higher level follow (it may report the value itself); campaigns without
  constraints are not affected;
* with a compute budget (``max_cpu_hours``), costs are CPU seconds from one
  :class:`~agent.stages.costs.CostModel` per level, and no task is started unless its
  cost fits the budget left (spent CPU read from the store, in-flight work at its
  expected cost) with probability :data:`COST_FIT_PROBABILITY` under a log-normal
  spread of measured / prior CPU seconds (:meth:`MoleculeStage.cost_margin`), a cheaper
  level only where the top level still fits after it; the tasks of one batch are
  checked in turn against what the ones before them leave (a batch of two DFT tasks
  that each fit alone but not together starts one); when nothing fits, the stage is
  exhausted with a reason giving the CPU seconds left; the acquisition divides by
  cost**alpha, alpha the fraction of the budget left (cost cooling, :data:`COST_COOLING`);
  without a budget, every evaluation costs one unit;
* a cheaper level is only offered where the top level can still follow (its
  ``budget_evaluations`` not spent, its cost within the budget), except the screen of
  ``[surrogate] screen_pool`` ("on", or "auto" when it is expected to take at most
  :data:`SCREEN_AUTO_FRACTION` of the budget): the cheapest level on every molecule, each
  task within the budget left, before the acquisition;
* a level's ``budget_evaluations`` counts its stored results, its requests in flight
  and the earlier requests of the same batch: a batch is what asking for its requests
  one at a time would admit, so an ask for several at once (a synchronous batch, or
  the first ask of a resumed campaign, when every slot is free) never asks a level for
  more evaluations than it has left;
* with both a compute budget and an evaluation budget (the stage's share of
  ``max_evaluations``, set by the scheduler as :attr:`MoleculeStage.evaluation_share`),
  the acquisition's cost of a task is what it uses up of the budget that binds
  (:func:`evaluation_slot_price`): when the CPU left would pay for more of the cheapest
  allowed tasks than there are evaluations left, an evaluation costs at least the CPU
  left per evaluation left, so a 0.3 CPU-s proxy is not 100 times cheaper than a
  30 CPU-s CSP when both use one of the last 16 evaluations.

Every request says why it was chosen (:attr:`agent.stages.base.Request.why`, recorded in
the store's ``submitted`` event and in ``report/decisions.csv``): ``{"rule": "initial
design"}``, ``"pool screen"``, ``"acquisition"`` (with the pick's acquisition value, its rate
per cost**cost_power, the cost and the cost power; :meth:`MoleculeStage._why_acquired`) or
``"constraint screen"`` (an acquisition's pick at a level a constraint holds back, run at its
cheaper screening level instead; with the numbers of the level weighed).

Every refit of the surrogate is recorded as a ``molecule_refit`` event in the store
(leave-out calibration per level), which the tracker logs, and the fitted surrogate is
kept in the store's meta table: a resumed campaign continues from that fit (its
hyperparameters, and the data counts that decide the next hyperparameter fit), so a
synchronous campaign stopped and resumed makes the decisions of the uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.stages.base import Request
# the budget rule is the stages' shared one (agent/stages/costs.py); its names stay importable here
from agent.stages.costs import (  # noqa: F401
    COST_FIT_PROBABILITY,
    COST_LOG_SD_PRIOR,
    CostModel,
    cost_fit_factor,
    evaluation_slot_price,
)
from sim_backends.base import EvalInput

if TYPE_CHECKING:
    from agent.config import CampaignConfig
    from agent.store import Evaluation, Store
    from agent.surrogates.molecule_gp import MoleculeSurrogate, Observation
    from sim_backends.base import EvalResult

NAME = "molecule"
#: cost cooling (Lee, Eriksson & Bindel, "Cost-aware Bayesian optimization", arXiv:2003.10870,
#: 2020): with a compute budget, the acquisition divides by cost**alpha with alpha the
#: fraction of the budget left (1 at the start, 0 when spent), so that value per CPU second
#: steers early and value alone the last picks (value per CPU second alone keeps spending the
#: end of a budget on cheap, uncertain molecules); False: alpha = 1 throughout. On since
#: 2026-12-06 (issue 14: identical decisions at 29 of the 32 table-budgets of
#: benchmarks/molecule_decisions.py, better at the other three; benchmarks/results/NOTES.md)
COST_COOLING = True

#: run the cheapest level on the whole pool first: "on", "off", or "auto" (when the screen is
#: expected to cost at most SCREEN_AUTO_FRACTION of the budget) (``[surrogate] screen_pool``,
#: which a campaign stores when it is created; this is the default it takes then)
SCREEN_POOL = "off"
#: the largest share of the compute budget (CPU s; without one, of ``max_evaluations``) an
#: "auto" screen of the pool may be expected to take
SCREEN_AUTO_FRACTION = 0.1


class MoleculeStage:
    """Ask/tell over the molecule pool with the ``[[backends]]`` fidelity ladder."""

    name = NAME
    waits_for: tuple[str, ...] = ()

    def __init__(self, cfg: CampaignConfig) -> None:
        self.cfg = cfg
        self.levels = list(cfg.backends)
        self.rng = np.random.default_rng(cfg.seed)
        self.store: Store | None = None
        self.surrogate: MoleculeSurrogate | None = None
        self._fit_signature: tuple[int, int] | None = None
        self._fps: np.ndarray | None = None
        self._descriptors: np.ndarray | None = None  # pool descriptors (descriptor kernel only)
        self.last_holdout_mae: float | None = None
        self.n_refits = 0
        self.cost_models = [CostModel(b.name, b.params, b.cost_s) for b in self.levels]
        #: evaluations this stage may use in all (the scheduler's share; None: unbounded)
        self.evaluation_share: int | None = None
        #: backend name -> (computes, fidelity, value_sd) it declares (:meth:`_declared`)
        self._declared_cache: dict[str, tuple[tuple[str, ...], int, dict[str, float]]] = {}
        #: (level, constrained value, cheaper levels that report it) (:meth:`_screening`)
        self._screening_cache: list[tuple[int, str, tuple[int, ...]]] | None = None
        self._screen: bool | None = None  # screen_pool, decided once (:attr:`screen_pool`)

    # -- state --------------------------------------------------------------------------
    def restore(self, store: Store) -> None:
        self.store = store
        mols = store.molecules(valid_only=True)
        self.mol_ids = np.array([m["id"] for m in mols])
        self.smiles = [m["smiles"] for m in mols]
        self.names = [m["name"] or m["smiles"] for m in mols]
        self.index_of = {int(mid): i for i, mid in enumerate(self.mol_ids)}
        n_f = len(self.levels)
        self.done = np.zeros((len(self.smiles), n_f), dtype=bool)
        self.blocked = np.zeros((len(self.smiles), n_f), dtype=bool)
        self.observations: list[tuple[int, int, float]] = []
        self.n_by_backend = {b.name: 0 for b in self.levels}
        self.n_evaluations = 0
        self.history: list[dict[str, Any]] = []
        #: pool index -> why the molecule is infeasible (``[[constraints]]``)
        self.infeasible: dict[int, str] = {}
        #: pool index -> why its top-level value is unreliable (never the best;
        #: :func:`sim_backends.reorg.unreliable_lambda_reason`)
        self.unreliable: dict[int, str] = {}
        #: pool index -> constrained value -> (value, fidelity, backend) of the result that
        #: counts (:func:`agent.constraints.constrained_sources`)
        self.constrained: dict[int, dict[str, tuple[float, int, str]]] = {}
        #: pool index -> probability of feasibility still to be decided by a more accurate
        #: level (the acquisition's weight; molecules not listed: 1)
        self.feasibility_weight: dict[int, float] = {}

    def owns(self, evaluation: Evaluation) -> bool:
        return evaluation.structure_id is None and self._fidelity_of(evaluation.backend) >= 0

    def _fidelity_of(self, backend: str) -> int:
        return next((i for i, b in enumerate(self.levels) if b.name == backend), -1)

    def records(self, request: Request, result: EvalResult) -> dict[str, Any]:
        return {}

    def tell(self, request: Request | None, ev: Evaluation) -> None:
        self.n_evaluations += 1
        f = self._fidelity_of(ev.backend)
        i = self.index_of.get(int(ev.molecule_id))
        if f < 0 or i is None:
            return
        self.n_by_backend[ev.backend] += 1
        inp = EvalInput(self.smiles[i])
        self.cost_models[f].observe(inp, ev.cpu_s, ok=ev.ok)
        self.done[i, f] = True
        value = ev.values.get(self.cfg.objective)
        if ev.ok and value is not None and np.isfinite(value):
            from sim_backends.reorg import unreliable_lambda_reason

            why = unreliable_lambda_reason(ev.extra, self.cfg.objective)
            if why and f == self.top_fidelity:
                self.unreliable[i] = why  # never the best (status names it)
            if not why:  # an unreliable value (too small by far) at any level would steer the surrogate
                self.observations.append((i, f, float(value)))
        elif ev.reason.startswith("setup:"):
            self.blocked[i, :] = True
        else:
            self.blocked[i, f] = True
        if self.cfg.constraints:
            self._update_feasibility(i, ev)
        self.history.append(
            {"n": ev.id, "mol_index": i, "fidelity": f, "status": ev.status, "value": value,
             "wall_s": ev.wall_s, "cpu_s": ev.cpu_s, "best": self.best_value()}
        )

    def _declared(self, backend: str) -> tuple[tuple[str, ...], int, dict[str, float]]:
        """(computes, fidelity, value_sd) a backend declares (looked up once per name)."""
        cache = self._declared_cache
        if backend not in cache:
            from sim_backends.registry import backend_class

            try:
                cls = backend_class(backend)
                cache[backend] = (tuple(cls.computes), int(cls.fidelity), dict(cls.value_sd))
            except (KeyError, ValueError):
                cache[backend] = ((), -1, {})
        return cache[backend]

    def _value_sd(self, backend: str, key: str) -> float:
        return float(self._declared(backend)[2].get(key, 0.0))

    def _update_feasibility(self, i: int, ev: Evaluation) -> None:
        """Keep molecule ``i``'s counted constrained values, its verdict, its acquisition
        weight and which levels stay open to it after result ``ev`` (module docstring of
        :mod:`agent.constraints`)."""
        from agent.constraints import P_FEASIBLE_MIN, constrained_sources, feasibility_probability, violation

        cons = self.cfg.constraints
        if ev.ok:
            new = constrained_sources([ev], (c.value for c in cons)).get(int(ev.molecule_id), {})
            mine = self.constrained.setdefault(i, {})
            for k, src in new.items():
                if k not in mine or src[1] > mine[k][1]:
                    mine[k] = src
        mine = self.constrained.get(i)
        if not mine:
            return
        why = violation({k: v[0] for k, v in mine.items()}, cons)
        if why is None:
            self.infeasible.pop(i, None)
        else:
            self.infeasible[i] = why
        # the levels still open to i that report a counted value more accurately
        open_ = ~(self.done[i] | self.blocked[i])
        better: dict[str, list[int]] = {}
        for k, (_, fid, backend) in mine.items():
            sd = self._value_sd(backend, k)
            better[k] = [lv for lv, b in enumerate(self.levels)
                         if open_[lv] and k in self._declared(b.name)[0]
                         and self._declared(b.name)[1] > fid and self._value_sd(b.name, k) < sd]
        undecided = {k: (v[0], self._value_sd(v[2], k)) for k, v in mine.items() if better[k]}
        p = feasibility_probability(undecided, cons)
        decided_ok = violation({k: v[0] for k, v in mine.items() if not better[k]}, cons) is None
        if not decided_ok or (why is not None and p < P_FEASIBLE_MIN):
            self.blocked[i, :] = True
            self.feasibility_weight.pop(i, None)
            return
        if why is not None:  # open only to the levels that can overturn the verdict
            levels = set.intersection(*(set(better[k]) for k in better if better[k]))
            for lv in range(len(self.levels)):
                if lv not in levels:
                    self.blocked[i, lv] = True
        if p < 1.0:
            self.feasibility_weight[i] = p
        else:
            self.feasibility_weight.pop(i, None)

    def step(self) -> bool:
        return False

    def close(self) -> None:
        pass

    # -- views --------------------------------------------------------------------------
    @property
    def top_fidelity(self) -> int:
        return len(self.levels) - 1

    def sign(self) -> float:
        return 1.0 if self.cfg.direction == "minimize" else -1.0

    def best_value(self) -> float | None:
        """The best top-level value of a feasible molecule whose value is not marked unreliable
        (None before there is one)."""
        best = self.best_index()
        return None if best is None else best[1]

    def best_index(self) -> tuple[int, float] | None:
        """``(pool index, value)`` of :meth:`best_value` (None before there is one)."""
        vals = [(i, v) for i, f, v in self.observations
                if f == self.top_fidelity and i not in self.infeasible and i not in self.unreliable]
        if not vals:
            return None
        pick = min if self.cfg.direction == "minimize" else max
        i, v = pick(vals, key=lambda p: p[1])
        return int(i), float(v)

    @property
    def fingerprints(self) -> np.ndarray:
        if self._fps is None:
            from agent.surrogates.fingerprints import morgan_fingerprints

            s = self.cfg.surrogate
            self._fps = morgan_fingerprints(
                self.smiles, n_bits=s.fingerprint_bits, radius=s.fingerprint_radius
            )
        return self._fps

    @property
    def screen_pool(self) -> bool:
        """The cheapest level runs on the whole pool first (``[surrogate] screen_pool``; a
        campaign stores the default of its creation, :data:`SCREEN_POOL`). "auto" is decided
        once, from the cheapest level's prior cost estimates (not the measured costs, so a
        resumed campaign decides as it did): the screen of every valid molecule is expected
        to take at most :data:`SCREEN_AUTO_FRACTION` of ``max_cpu_hours`` (without one, of
        ``max_evaluations``)."""
        if self._screen is None:
            mode = self.cfg.surrogate.screen_pool or SCREEN_POOL
            if mode == "auto" and len(self.levels) > 1:
                if self.cfg.max_cpu_hours is not None:
                    cost = sum(self.cost_models[0].prior(EvalInput(s)) for s in self.smiles)
                    self._screen = cost <= SCREEN_AUTO_FRACTION * self.cfg.max_cpu_hours * 3600
                else:
                    self._screen = len(self.smiles) <= SCREEN_AUTO_FRACTION * self.cfg.max_evaluations
            else:
                self._screen = mode == "on" and len(self.levels) > 1
        return self._screen

    @property
    def kernel(self) -> str:
        """The GP's kernel: the config's (a campaign stores the default of its creation,
        :class:`~agent.config.SurrogateConfig`), else the module default."""
        from agent.surrogates import molecule_gp

        return self.cfg.surrogate.kernel or molecule_gp.KERNEL

    @property
    def descriptors(self) -> np.ndarray:
        """The pool's composition descriptors (:func:`agent.surrogates.molecule_gp.molecule_descriptors`),
        for the surrogate's "tanimoto+descriptors" kernel; computed once."""
        if self._descriptors is None:
            from agent.surrogates.molecule_gp import molecule_descriptors

            self._descriptors = molecule_descriptors(self.smiles)
        return self._descriptors

    def _descriptors_for(self, model: MoleculeSurrogate) -> np.ndarray | None:
        """The pool's descriptors when ``model``'s kernel uses them, else None (not computed)."""
        return self.descriptors if model.uses_descriptors else None

    def _mine(self, pending: Sequence[Request]) -> list[Request]:
        return [r for r in pending if r.stage == self.name]

    def exhausted_reason(self) -> str:
        """Why nothing more is asked: the top level's own budget is spent, or no
        evaluation fits the compute budget left ('' else)."""
        top = self.levels[-1]
        if (top.budget_evaluations is not None and len(self.levels) > 1
                and self.n_by_backend[top.name] >= top.budget_evaluations):
            return (f"{top.name} budget spent ({top.budget_evaluations} evaluations); "
                    "cheaper levels can no longer change the best value")
        allowed, follows, _, _ = self._allowed()
        if allowed.any() and (fit := self._budget_fit([])) is not None:
            needed, left = fit
            if not self._within_budget(allowed, needed, left, follows=follows).any():
                top = follows
                kept = self.reserved_cpu_s()
                return (f"compute budget: no evaluation fits the {max(left, 0.0):.3g} CPU s left "
                        + (f"to the molecule stage ({kept:.0f} more reserved for the structure stage, "
                           f"[structures] cpu_share = {self.cfg.structures.cpu_share:g}) " if kept > 0 else "")
                        + f"(the cheapest {self.levels[-1].name} needs "
                        f"{float(np.min(needed[top, -1])) if top.any() else float('nan'):.3g} "
                        f"CPU s with its {COST_FIT_PROBABILITY:.0%} cost margin"
                        + (f"; a cheaper level runs only where {self.levels[-1].name} can follow it"
                           + (f": {n_never} molecule{'s' if n_never != 1 else ''} never evaluated, "
                              f"{self.levels[0].name} fits for them; `[surrogate] screen_pool = \"on\"` "
                              "runs it on every molecule)"
                              if (n_never := self._n_never(needed[:, 0] <= left)) and not self.screen_pool
                              else ")")
                           if len(self.levels) > 1 else ")"))
        return ""

    def _n_never(self, among: np.ndarray) -> int:
        """Molecules of ``among`` (a pool mask) with no evaluation at any level, failed ones
        included."""
        seen = self.done.any(axis=1) | self.blocked.any(axis=1)
        seen[[i for i, _, _ in self.observations]] = True
        return int(np.sum(among & ~seen))

    def _budget_fit(self, mine: Sequence[Request],
                    pair_costs: np.ndarray | None = None) -> tuple[np.ndarray, float] | None:
        """``(needed, left)``: the CPU seconds each (molecule, level) needs to fit with
        probability :data:`COST_FIT_PROBABILITY` (expected cost x :meth:`cost_margin`)
        and the CPU seconds left (spent read from the store, in-flight work ``mine`` at
        its expected cost); None without a compute budget. ``pair_costs``: those of
        :meth:`pair_costs` when already computed."""
        pair_costs = self.pair_costs() if pair_costs is None else pair_costs
        if pair_costs is None:
            return None
        spent = self.store.spent_cpu_s() if self.store is not None else 0.0
        left = self.cfg.max_cpu_hours * 3600 - spent - self.reserved_cpu_s() - sum(
            pair_costs[self.index_of[r.molecule_id], r.fidelity] for r in mine)
        return pair_costs * self.cost_margin()[None, :], float(left)

    def reserved_cpu_s(self) -> float:
        """CPU seconds of the compute budget still reserved for the structure stage
        (``[structures] cpu_share`` of ``max_cpu_hours`` less what that stage has spent);
        0 without a share."""
        st = self.cfg.structures
        if not st.enabled or st.cpu_share is None or self.cfg.max_cpu_hours is None:
            return 0.0
        from agent.stages.structure import NAME as STRUCTURES

        spent = self.store.stage_cpu_s(STRUCTURES) if self.store is not None else 0.0
        return max(float(st.cpu_share) * self.cfg.max_cpu_hours * 3600 - spent, 0.0)

    def _within_budget(self, allowed: np.ndarray, needed: np.ndarray, left: float,
                       follows: np.ndarray | None = None) -> np.ndarray:
        """``allowed`` restricted to the pairs that fit the budget left, a cheaper level
        only where the top level still fits after it (its value is the top level's to
        follow; ``follows``: where the top level may follow, default ``allowed[:, -1]``,
        see :meth:`_allowed`), the screen's exemption aside (:meth:`_where_top_follows`)."""
        out = allowed & (needed <= left)
        top = (allowed[:, -1:] if follows is None else follows[:, None]) & (needed[:, -1:] <= left)
        return self._where_top_follows(out, top & (needed[:, :-1] + needed[:, -1:] <= left))

    def _where_top_follows(self, pairs: np.ndarray, may_follow: np.ndarray) -> np.ndarray:
        """The follow rule: ``pairs`` with a cheaper level kept only where the top level may
        follow it (``may_follow``: ``(n_pool, 1)``, or per cheaper level ``(n_pool, n_f - 1)``),
        except the cheapest level when the pool is screened (:attr:`screen_pool`). The one
        place that decides the screen's exemption: the pairs that may be proposed
        (:meth:`_allowed`) and those that fit the compute budget (:meth:`_within_budget`)
        both apply the rule through it."""
        out = pairs.copy()
        out[:, :-1] &= may_follow
        if self.screen_pool:
            out[:, 0] = pairs[:, 0]  # the screen of the pool at the cheapest level
        return out

    # -- decisions ----------------------------------------------------------------------
    def allowed(self, pending: Sequence[Request] = ()) -> np.ndarray:
        """``(n_pool, n_f)``: the (molecule, level) pairs that may be proposed now."""
        return self._allowed(pending)[0]

    def _allowed(self, pending: Sequence[Request] = ()) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(allowed, follows, waiting, stand_in)``: the pairs that may be proposed now
        (:meth:`allowed`); ``(n_pool,)`` where the top level may follow a cheaper one
        (open and within its budget, its constraint screening aside: the cheap level that
        screens a molecule is offered before the top level is); the pairs held back only
        until an evaluation in flight reports the molecule's constrained value; and, per
        pair held back by a screening that has not started, the level that screens it
        (the cheapest one allowed that reports the value; -1 elsewhere): the acquisition
        weighs such a pair as it is, and a pick of it runs that level instead
        (:meth:`_unscreened`, :meth:`ask`)."""
        mine = self._mine(pending)
        open_ = ~(self.done | self.blocked)
        in_flight = np.zeros_like(open_)
        for r in mine:
            in_flight[self.index_of[r.molecule_id], r.fidelity] = True
        allowed = open_ & ~in_flight
        spent = np.zeros(len(self.levels), dtype=bool)  # levels whose budget_evaluations are used up
        for f, b in enumerate(self.levels):
            if b.budget_evaluations is not None:
                used = self.n_by_backend[b.name] + sum(r.fidelity == f for r in mine)
                if used >= b.budget_evaluations:
                    allowed[:, f] = False
                    spent[f] = True
        # a cheaper level is only worth running where the top level can still follow
        allowed = self._where_top_follows(allowed, allowed[:, -1:])
        follows = allowed[:, -1].copy()
        stand_in = np.full(allowed.shape, -1)
        screening = self._screening()
        if not screening:
            return allowed, follows, np.zeros_like(allowed), stand_in
        held, waiting = self._unscreened(in_flight, spent)
        before = allowed
        allowed = before & ~np.any(list(held.values()), axis=0)
        waiting &= before
        for (f, _, cheaper), h in held.items():
            rows = h[:, f] & before[:, f] & ~waiting[:, f]
            for lv in cheaper:  # cheapest first: the first one allowed screens the molecule
                at = rows & allowed[:, lv]
                stand_in[at & ((stand_in[:, f] < 0) | (stand_in[:, f] > lv)), f] = lv
                rows &= ~at
        stand_in[waiting] = -1
        return allowed, follows, waiting, stand_in

    def _screening(self) -> list[tuple[int, str, tuple[int, ...]]]:
        """``(level, key, cheaper)``: each constrained value ``key`` that a level cheaper
        than ``level`` reports (``cheaper``, the levels that do, cheapest first); empty
        without ``[[constraints]]``."""
        if self._screening_cache is None:
            keys = list(dict.fromkeys(c.value for c in self.cfg.constraints))
            reports = [set(self._declared(b.name)[0]) for b in self.levels]
            self._screening_cache = [
                (f, k, cheaper) for f in range(len(self.levels)) for k in keys
                if (cheaper := tuple(lv for lv in range(f) if k in reports[lv]))]
        return self._screening_cache

    def _unscreened(self, in_flight: np.ndarray, spent: np.ndarray | None = None
                    ) -> tuple[dict[tuple[int, str, tuple[int, ...]], np.ndarray], np.ndarray]:
        """``(held, waiting)``: per entry of :meth:`_screening`, the ``(n_pool, n_f)``
        pairs it holds back (only its level's column set), and ``(n_pool, n_f)`` those
        held pairs that only wait for an evaluation in flight.

        A molecule may be given a level above one that reports a constrained value only
        once a completed evaluation has reported that value for it (its verdict then
        decides, :meth:`_update_feasibility`): not before that cheaper level ran, nor while
        it is in flight. Only where every cheaper level that reports the value has run on
        the molecule (or may not: a failed run, a setup failure, its ``budget_evaluations``
        used up, ``spent``) without reporting it, and none is in flight, may a higher
        level, which may report it itself, follow: a spent screening level does not starve
        the levels above it."""
        screening = self._screening()
        waiting = np.zeros_like(in_flight)
        held: dict[tuple[int, str, tuple[int, ...]], np.ndarray] = {}
        closed = self.done | self.blocked
        known = {k: np.array([k in self.constrained.get(i, {}) for i in range(len(self.smiles))], dtype=bool)
                 for k in {k for _, k, _ in screening}}
        for entry in screening:
            f, k, cheaper = entry
            flying = in_flight[:, list(cheaper)].any(axis=1)
            gone = closed[:, list(cheaper)]
            if spent is not None:
                gone = gone | spent[list(cheaper)][None, :]
            ran = gone.all(axis=1)
            h = np.zeros_like(in_flight)
            h[:, f] = ~known[k] & (flying | ~ran)
            held[entry] = h
            waiting[:, f] |= ~known[k] & flying
        return held, waiting

    def is_exhausted(self, pending: Sequence[Request], budget: bool = True) -> bool:
        """Nothing may be proposed, now or once the evaluations in flight report the
        constrained values they screen: no (molecule, level) allowed, or none fits the
        compute budget left (``budget=False``: were the compute budget no limit)."""
        allowed, follows, waiting, _ = self._allowed(pending)
        allowed = allowed | waiting
        if budget and allowed.any() and (fit := self._budget_fit(self._mine(pending))) is not None:
            allowed = self._within_budget(allowed, *fit, follows=follows)
        return not allowed.any()

    def costs(self) -> list[float]:
        """The acquisition's cost of one evaluation at each fidelity, in the unit of the
        budget that binds: CPU seconds (the mean CPU time measured in the workers over the
        level's finished tasks, failed ones included; the level's ``cost_s`` or the
        backend's estimate for the pool's median-length molecule before any) when the
        campaign has a compute budget (``max_cpu_hours``), else one evaluation each."""
        if self.cfg.max_cpu_hours is None:
            return [1.0] * len(self.levels)
        median_smiles = sorted(self.smiles, key=len)[len(self.smiles) // 2]
        out = []
        for model in self.cost_models:
            measured = model.mean_measured()
            out.append(measured if measured is not None else model.prior(EvalInput(median_smiles)))
        return [max(c, 1e-3) for c in out]

    def pair_costs(self) -> np.ndarray | None:
        """``(n_pool, n_f)`` expected CPU seconds of each (molecule, level) from the level's
        :class:`~agent.stages.costs.CostModel`, or None without a compute budget. Used
        to never start work expected to overrun the budget; the acquisition scores with
        the per-level means (:meth:`costs`): with per-molecule costs, EI per CPU second
        prefers many cheap, unpromising DFT calculations to the one expensive
        calculation on the best candidate."""
        if self.cfg.max_cpu_hours is None:
            return None
        inps = [EvalInput(s) for s in self.smiles]
        return np.stack([m.expected(inps) for m in self.cost_models], axis=1)

    def cost_margin(self) -> np.ndarray:
        """``(n_f,)`` factors on the expected CPU cost of a task at each level
        (:meth:`CostModel.fit_factor`: from the level's tasks that succeeded and were
        charged CPU; a fast failure says nothing about what a task costs)."""
        return np.array([m.fit_factor() for m in self.cost_models])

    def levels_left(self, pending: Sequence[Request] = ()) -> list[int | None]:
        """Evaluations each level may still start (its ``budget_evaluations`` left; None:
        no per-level budget)."""
        mine = self._mine(pending)
        return [None if b.budget_evaluations is None else max(
            0, b.budget_evaluations - self.n_by_backend[b.name] - sum(r.fidelity == f for r in mine))
            for f, b in enumerate(self.levels)]

    def _initial_design(self, n: int, allowed: np.ndarray, pending: list[Request]) -> list[tuple[int, int]]:
        """Max-min Tanimoto-diverse molecules at the cheapest fidelity."""
        cand = np.flatnonzero(allowed[:, 0])
        if len(cand) == 0:
            return []
        fps = self.fingerprints.astype(np.float32)
        chosen_rows = [i for i, f, _ in self.observations] + [self.index_of[r.molecule_id] for r in pending]
        picks: list[int] = []
        for _ in range(min(n, len(cand))):
            ref = chosen_rows + picks
            if not ref:
                picks.append(int(self.rng.choice(cand)))
                continue
            a = fps[cand]
            b = fps[ref]
            inter = a @ b.T
            union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
            sim = np.where(union > 0, inter / np.maximum(union, 1e-9), 1.0)
            d = 1.0 - sim.max(axis=1)
            d[np.isin(cand, picks)] = -1.0
            picks.append(int(cand[int(np.argmax(d))]))
        return [(i, 0) for i in picks]

    def _n_stored(self) -> int:
        return self.store.count_evaluations()[0] if self.store is not None else self.n_evaluations

    def refit(self) -> MoleculeSurrogate | None:
        """The surrogate fitted on every stored result (refitted only when they changed);
        None while there are too few results for a model."""
        if len(self.observations) < 2:
            return None
        from agent.surrogates.molecule_gp import MoleculeSurrogate, Observation

        n_stored = self._n_stored()
        signature = (len(self.observations), n_stored)
        if self.surrogate is not None and signature == self._fit_signature:
            return self.surrogate
        obs = [Observation(i, f, v) for i, f, v in self.observations]
        if self.surrogate is None:
            self.surrogate = self._saved_surrogate(obs) or MoleculeSurrogate(
                n_fidelities=len(self.levels), seed=self.cfg.seed, kernel=self.kernel)
        if signature != self._fit_signature:
            self.surrogate.fit(self.fingerprints, obs, descriptors=self._descriptors_for(self.surrogate))
            self._fit_signature = signature
            self.n_refits += 1
            self._save_surrogate()
            self._log_calibration(n_stored)
        return self.surrogate

    #: store meta key of the last fit (:meth:`MoleculeSurrogate.fit_state`, base64: settings,
    #: hyperparameters, standardisation, counters and a digest of the observations, not the data)
    SURROGATE_META = "molecule_surrogate_fit"
    #: the key under which stores of earlier versions kept the whole model (read on resume)
    SURROGATE_META_WHOLE = "molecule_surrogate"

    def _save_surrogate(self) -> None:
        """Keep the last fit in the store, so a resumed campaign goes on from it (the
        hyperparameters and the data they were fitted at decide when the next
        hyperparameter fit happens, and where it starts) rather than from a fit from scratch.
        Only the fit's parameters are written; its data are the store's own results."""
        import base64

        if self.store is not None and self.store.writable:
            self.store.set_meta(self.SURROGATE_META, base64.b64encode(self.surrogate.fit_state()).decode())
            self.store.set_meta(f"{self.SURROGATE_META}_n_refits", str(self.n_refits))
            if self.store.get_meta(self.SURROGATE_META_WHOLE):
                self.store.set_meta(self.SURROGATE_META_WHOLE, "")

    def _saved_surrogate(self, observations: list[Observation]) -> MoleculeSurrogate | None:
        """The fit :meth:`_save_surrogate` kept, rebuilt on the first of ``observations``
        (the store's results, in store order) when it is this stage's model (same levels
        and seed); its fit is then continued by :meth:`MoleculeSurrogate.fit`: an extension
        of its data keeps its hyperparameters. A whole model kept by an earlier version is
        read as such. None when there is none, it cannot be read or its data are not the
        store's."""
        import base64
        import binascii

        from agent.surrogates.molecule_gp import MoleculeSurrogate

        if self.store is None:
            return None
        text = self.store.get_meta(self.SURROGATE_META)
        whole = not text
        text = text or self.store.get_meta(self.SURROGATE_META_WHOLE)
        if not text:
            return None
        try:
            data = base64.b64decode(text)
            model = (MoleculeSurrogate.from_bytes(data) if whole
                     else MoleculeSurrogate.from_fit_state(
                         data, self.fingerprints, observations,
                         descriptors=self.descriptors if self.kernel == "tanimoto+descriptors" else None))
        except (ValueError, binascii.Error):
            return None
        if model.n_fidelities != len(self.levels) or model.seed != self.cfg.seed:
            return None
        if model.kernel != self.kernel:  # the kernel setting changed: fit afresh
            return None
        key = self.SURROGATE_META_WHOLE if whole else self.SURROGATE_META
        self.n_refits = int(self.store.get_meta(f"{key}_n_refits", "0") or 0)
        return model

    def _log_calibration(self, n_stored: int) -> None:
        """Leave-out calibration of the refitted surrogate, as a ``molecule_refit`` event.

        Levels are named by backend; the top level's entry holds out only its value
        (the molecule's cheaper values stay known), ``"<top>, molecule unseen"`` the
        whole molecule (see :meth:`MoleculeSurrogate.calibration`). Errors in the
        objective's units.
        """
        model = self.surrogate
        names = [b.name for b in self.levels]
        cal = model.calibration(seed=self.cfg.seed + self.n_refits)
        label = {"top": names[-1], "top_unseen": f"{names[-1]}, molecule unseen"}
        by_level = {(names[int(k)] if k.isdigit() else label[k]): v for k, v in cal.items()}
        top = cal.get("top")
        self.last_holdout_mae = top["mae"] if top else None
        self.store.log_event(
            "molecule_refit", n_refit=self.n_refits, n_evaluations=n_stored,
            n_by_level={n: int(np.sum(model.obs_f == f)) for f, n in enumerate(names)},
            objective=self.cfg.objective, rho=model.rho().tolist(),
            level_correlation=model.level_correlation().tolist(),
            noise_sd=(np.sqrt(model.noise()) * model.y_scale).tolist(),
            calibration=by_level, holdout_mae=self.last_holdout_mae, holdout_calibration=top,
            n_obs=len(model.obs_f), n_top=int(np.sum(np.asarray(model.obs_f) == self.top_fidelity)),
        )

    def ask(self, n: int, pending: Sequence[Request]) -> list[Request]:
        mine = self._mine(pending)
        allowed, follows, _, stand_in = self._allowed(pending)
        pair_costs = self.pair_costs()
        if (fit := self._budget_fit(mine, pair_costs)) is not None:
            # never start work that may overrun the compute budget: its cost must fit
            # the budget left with probability COST_FIT_PROBABILITY
            needed, left = fit
            allowed = self._within_budget(allowed, needed, left, follows=follows)
            stand_in[needed > left] = -1
        # a pair a constraint holds back until a cheaper level has screened the molecule is
        # weighed by the acquisition as it is; picking it runs the screening level instead
        rows = np.arange(len(stand_in))[:, None]
        stand_in[~allowed[rows, np.maximum(stand_in, 0)]] = -1
        scoring = allowed | (stand_in >= 0)
        n_cheap = sum(1 for _, f, _ in self.observations if f == 0)
        initial = n_cheap + len(mine) < self.cfg.surrogate.n_initial or len(self.observations) < 2
        if self.screen_pool and allowed[:, 0].any():
            initial = True  # the screen: every molecule at the cheapest level first
        # the initial design ends early when no cheap evaluation fits the budget any more
        picks = self._initial_design(n, allowed, mine) if initial else []
        rule = "pool screen" if self.screen_pool and allowed[:, 0].any() else "initial design"
        scores: list[dict[str, Any]] = []
        weights = np.ones(len(self.smiles))
        if not picks and len(self.observations) >= 2:
            from agent.acquisition import select_batch

            surrogate = self.refit()
            costs = self.costs()
            cost_power = 1.0
            if COST_COOLING and fit is not None and self.cfg.max_cpu_hours:
                cost_power = float(np.clip(left / (self.cfg.max_cpu_hours * 3600), 0.0, 1.0))
            if pair_costs is not None and self.evaluation_share is not None:
                # an evaluation slot has a price when the evaluation budget binds
                slots = self.evaluation_share - self.n_evaluations - len(mine)
                price = evaluation_slot_price(pair_costs, allowed, left, slots, self.levels_left(pending))
                costs = [max(c, price) for c in costs]
            weighted = None
            if self.feasibility_weight:  # constrained EI: cost / probability of feasibility
                w = weights
                for i, p in self.feasibility_weight.items():
                    w[i] = max(p, 1e-6)
                weighted = np.asarray(costs, dtype=float)[None, :] / w[:, None]
            picks = select_batch(
                surrogate,
                self.fingerprints,
                q=n,
                costs=costs,
                pair_costs=weighted,
                allowed=scoring,
                pending=[(self.index_of[r.molecule_id], r.fidelity) for r in mine],
                best_value=self.best_value(),
                direction=self.cfg.direction,
                seed=self.cfg.seed + self._n_stored(),
                level_caps=self.levels_left(pending),
                cost_power=cost_power,
                scores=scores,
            )
            rule = "acquisition"
        out = []
        for k, (i, f) in enumerate(picks):
            if not scoring[i, f]:
                raise RuntimeError(f"acquisition proposed a disallowed pair {(i, f)}")
            scoring[i, f] = False
            why: dict[str, Any] = {"rule": rule}
            if scores:
                why.update(self._why_acquired(scores[k], costs, weights[i]))
            if not allowed[i, f]:
                why["rule"] = "constraint screen"  # the acquisition weighed level f
                f = int(stand_in[i, f])  # screen the molecule first (its constrained value)
            if not self.allowed([*pending, *out])[i, f]:
                continue  # the batch's earlier requests used up the level (or its top level)
            if fit is not None:
                # the batch together must fit: each pick against what the picks before
                # it leave (at their expected cost, as in-flight work is counted); one
                # that no longer fits waits for a later ask
                if not self._within_budget(np.ones((1, len(self.levels)), bool), needed[i:i + 1], left)[0, f]:
                    continue
                left -= float(pair_costs[i, f])
            b = self.levels[f]
            out.append(Request(stage=self.name, backend=b.name, params=b.params,
                               inp=EvalInput(smiles=self.smiles[i]),
                               molecule_id=int(self.mol_ids[i]), fidelity=f, why=why))
        return out

    def _why_acquired(self, score: dict[str, Any], costs: Sequence[float], weight: float) -> dict[str, Any]:
        """The part of a request's ``why`` that the acquisition's ``score`` for its pick
        (:func:`agent.acquisition.select_batch`'s ``scores``) gives: ``level`` (the backend
        the acquisition weighed: the request's own, or the level it stands in for under
        "constraint screen"), ``kind`` and ``value`` (expected improvement or look-ahead
        value, objective units), ``rate`` (value / divisor**cost_power, the quantity
        maximised), ``cost`` (the level's cost the acquisition used: CPU seconds, with the
        price of an evaluation slot when the evaluation budget binds, ``cost_unit`` "CPU s";
        one per evaluation without a compute budget, ``cost_unit`` "evaluation"),
        ``cost_power``, ``p_feasible`` (only below 1: the divisor was ``cost / p_feasible``,
        constrained EI) and ``best_direct_rate`` (the best top-level rate at that choice)."""
        f = int(score["level"])
        out: dict[str, Any] = {
            "level": self.levels[f].name, "kind": score["kind"], "value": score["value"],
            "rate": score["rate"], "cost": float(costs[f]),
            "cost_unit": "evaluation" if self.cfg.max_cpu_hours is None else "CPU s",
            "cost_power": score["cost_power"], "best_direct_rate": score["best_direct_rate"]}
        if weight < 1.0:
            out["p_feasible"] = float(weight)
        return out
