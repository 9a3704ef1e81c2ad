"""The campaign: the scheduler of a discovery run over its stages.

A campaign owns the :class:`~agent.store.Store`, a list of stages
(:mod:`agent.stages`: the molecule stage, the structure stage when ``[structures]`` is
enabled, the lab stage when ``[lab]`` is given), their budget shares, the requests in
flight and the stop rules; the science is in the stages. ``Campaign.ask(n)`` asks the
stages, in order, for up to ``n`` :class:`~agent.stages.base.Request` objects (a stage
is asked only once the stages it waits for are exhausted, and never for more than its
share of ``max_evaluations``: the structure stage gets ``[structures]
budget_evaluations``, the molecule stage the rest); ``Campaign.tell(task, result)``
commits a finished one to the store, with the rows its stage derives from it, and only
then tells the stage. All durable state lives in the store; on resume every stage is
rebuilt from it (each stored evaluation names its stage), so a killed campaign
continues where it stopped with nothing completed lost and nothing evaluated twice.

Stop rules: the evaluation and CPU budgets (CPU seconds measured in the workers), the
``[stop]`` target and patience on the campaign objective (the molecule stage's top
level), and every stage exhausted with nothing in flight (the reason then names a stage's
budget share when that is what stopped a stage with candidates left, e.g. ``structure-stage
budget reached (7 evaluations, ...)``).

Creation is atomic: the config is checked against the registries and the pool validated
(empty, all-invalid or oversized pools refused) before anything is written; the store is
then built in a hidden temporary directory under the runs directory and renamed to
``runs/<name>/``, so a refused or failed creation leaves nothing behind; the hidden
folder of a creation killed outright (SIGKILL) is removed by a later creation in the same
runs directory once it is a minute old and unlocked (:func:`remove_stale_creations`).
:meth:`Campaign.open` re-validates the stored config together with any override.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.config import (
    CampaignConfig,
    ConfigError,
    check_runnable,
    config_to_toml,
    parse_config,
    parse_toml,
)
from agent.directory import (
    _CREATING,
    STORE_FILE,
    campaign_dir,
    discard_unstarted,
    remove_stale_creations,
)
from agent.pool import check_charges_for_pool, pool_summary, summarise_invalid, validated_pool
from agent.stages.base import Request
from agent.stages.molecule import MoleculeStage
from agent.store import Store

__all__ = ["STORE_FILE", "Campaign", "Status", "campaign_dir", "campaign_status", "discard_unstarted",
           "load_stored_config", "pool_summary", "remove_stale_creations", "summarise_invalid"]

if TYPE_CHECKING:
    from collections.abc import Sequence

    from agent.executor import Task
    from agent.stages.base import Stage
    from agent.stages.lab import LabStage
    from agent.stages.structure import StructureStage
    from agent.store import Evaluation
    from sim_backends.base import EvalResult


#: settings a campaign keeps from its creation where its config leaves them unset, so that a
#: later change of a default does not change a stored campaign: ``(section, key, today's
#: default, the value of a campaign stored before the setting existed)``. :meth:`Campaign.create`
#: stores today's default (``"module:NAME"``, read when the campaign is created);
#: :meth:`Campaign.open` pins the legacy value into a stored config without the key.
STORED_DEFAULTS: tuple[tuple[str, str, str, Any], ...] = (
    ("surrogate", "kernel", "agent.surrogates.molecule_gp:KERNEL", "tanimoto"),  # Tanimoto alone then
    ("surrogate", "screen_pool", "agent.stages.molecule:SCREEN_POOL", "off"),  # no screen then
)


def _default_now(ref: str) -> Any:
    """The value of module attribute ``ref`` (``"module:NAME"``) now."""
    import importlib

    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Status:
    """A summary of a campaign's progress (what ``crystal-agent status`` prints).

    :meth:`to_dict` holds what ``crystal-agent status --json`` prints of it, ``objective``
    included (:func:`agent.summary.status_record` adds the structure-stage, ESF and lab
    results)."""

    name: str
    n_evaluations: int
    n_failed: int
    n_by_backend: dict[str, int]
    spent_cpu_s: float  # CPU seconds measured in the workers (what the budget is charged)
    best: float | None
    best_smiles: str | None
    best_name: str | None
    max_evaluations: int
    finished: bool
    stop_reason: str
    best_note: str = ""  # why there is no best value yet (empty when there is one)
    spent_wall_s: float | None = None  # wall-clock seconds of the same evaluations
    #: of spent_cpu_s: the evaluations' CPU seconds per backend (failures included; the
    #: charge for interrupted tasks is ``interrupted_cpu_s``), largest first
    cpu_by_backend: dict[str, float] = field(default_factory=dict)
    #: the launcher's wall time over the campaign's runs (to the last heartbeat of one going
    #: on) and the number of runs (:meth:`agent.store.Store.elapsed_s`)
    elapsed_s: float | None = None
    n_runs: int = 0
    #: of spent_cpu_s: the charge for tasks that runs left unfinished, and their number
    interrupted_cpu_s: float = 0.0
    n_interrupted: int = 0
    #: tasks a stopped run left unfinished, not charged yet (charged when a run resumes),
    #: and the CPU seconds they will be charged; 0 while a run is going on
    unsettled_cpu_s: float = 0.0
    n_unsettled: int = 0
    #: what those tasks compute (``"csp-ff of coronene"``)
    unsettled_tasks: list[str] = field(default_factory=list)
    #: a running campaign's tasks in flight, each with its wall time so far (Store.in_flight_tasks)
    running_tasks: list[str] = field(default_factory=list)
    #: the pid of the process running the campaign now (None when no run is going on)
    running_pid: str | None = None
    #: molecules a result showed infeasible ([[constraints]]): name or SMILES -> reason
    infeasible: dict[str, str] = field(default_factory=dict)
    constraints: str = ""  # the [[constraints]] bounds, one line (empty without any)
    #: molecules whose top-level value its backend marks unreliable (never the best): name -> reason
    unreliable: dict[str, str] = field(default_factory=dict)
    #: the same for values of the cheaper levels (kept out of the surrogate's training data):
    #: name -> {backend: reason}
    unreliable_cheap: dict[str, dict[str, str]] = field(default_factory=dict)
    best_constrained: dict[str, float] = field(default_factory=dict)  # the best's constrained values
    best_constrained_level: dict[str, str] = field(default_factory=dict)  # the backend each comes from
    #: pool coverage: valid molecules, those with a result at some molecule-stage level, and
    #: those whose every evaluation failed (the rest were never evaluated)
    n_pool_valid: int = 0
    n_pool_evaluated: int = 0
    n_pool_failed_only: int = 0
    #: the objective as ``status --json`` names it (:func:`agent.summary.objective_record`):
    #: ``name`` (value key), ``label``, ``symbol``, ``unit``, ``level`` (the level of theory
    #: of ``best``) and ``direction``
    objective: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Campaign:
    """The scheduler over a campaign's stages (see the module docstring).

    Use :meth:`create` for a new campaign and :meth:`open` to resume one.

    Args:
        stages: names of the stages that may be asked for work (default: all of the
            config's); the others are still restored from the store (``crystal-agent
            refine`` runs the structure and lab stages alone).
    """

    def __init__(self, cfg: CampaignConfig, store: Store, directory: Path,
                 *, stages: Sequence[str] | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.directory = directory
        check_runnable(cfg, params=False)  # create/open checked the parameters
        if not store.molecules(valid_only=True):
            raise ConfigError("config error: pool: no valid molecule in the pool")
        self.stages: dict[str, Stage] = build_stages(cfg, directory)
        unknown = set(stages or ()) - set(self.stages)
        if unknown:
            raise ConfigError(f"campaign {cfg.name!r} has no stage {', '.join(sorted(unknown))}")
        self.enabled = tuple(stages) if stages is not None else tuple(self.stages)
        reserved = cfg.structures.budget_evaluations if "structures" in self.stages else 0
        #: evaluations each stage may use (a stage without a share is bounded by the total)
        self.shares = {"molecule": cfg.max_evaluations - reserved, "structures": reserved}
        # the molecule stage prices its evaluations by the budget that binds (stages/molecule.py)
        self.stages["molecule"].evaluation_share = self.shares["molecule"]  # type: ignore[attr-defined]
        if "structures" in self.stages:  # ... and so does the structure stage (stages/structure.py)
            self.stages["structures"].evaluation_share = reserved  # type: ignore[attr-defined]
        self.pending: dict[str, Request] = {}
        #: synchronous campaigns: results stored but not yet told to their stages, with
        #: the time their requests were asked (see :meth:`tell`)
        self._deferred: list[tuple[float, Request, Evaluation]] = []
        self._last_asked_at = 0.0
        self._restore()

    # -- construction -------------------------------------------------------------------
    @classmethod
    def create(cls, cfg: CampaignConfig, runs_dir: str | Path) -> Campaign:
        """Start a new campaign in ``runs_dir/cfg.name`` (refuses an existing one).

        Everything is checked before anything is written, and the campaign directory
        appears complete or not at all (see the module docstring). ``cfg`` is validated
        again first (one-line :class:`~agent.config.ConfigError`, as the command line
        gives): ``cfg.model_copy(update=...)``, the way to change a field of the frozen
        config from Python, skips pydantic's validation.
        """
        if unknown := _unknown_attributes(cfg):  # model_copy(update=...) keeps a misspelt key silently
            from agent.config import did_you_mean

            loc = tuple(int(p) if p.isdigit() else p for p in unknown.split("."))  # backends.0.cost_sec
            raise ConfigError(f"config error: {unknown}: unknown key{did_you_mean(loc)}")
        with warnings.catch_warnings():  # a wrong type set by model_copy: refused below
            warnings.simplefilter("ignore")
            given = cfg.model_dump(mode="json")
        for section, key, today, _ in STORED_DEFAULTS:  # today's default, kept with the campaign
            if (given.get(section) or {}).get(key) is None:
                given.setdefault(section, {})[key] = _default_now(today)
        data = _without_none(given)
        cfg = parse_config(data)  # as the stored config.toml (TOML has no null) will read back
        if lost := _nulls_replaced(given, cfg.model_dump(mode="json")):
            key, value = lost
            raise ConfigError(f"{key} = None cannot be kept in the campaign's stored config (TOML has no null) "
                              f"and would become its default {value!r}; give a value or leave it out")
        directory = campaign_dir(runs_dir, cfg.name)
        exists = ConfigError(
            f"campaign {cfg.name!r} already exists in {directory}; continue it with "
            f"`crystal-agent resume {cfg.name}` (Python: Campaign.open({cfg.name!r}, runs_dir)) "
            f"or choose another name (--name, or the config's name)"
        )
        # the config and the pool first: a broken config says so even when its name is taken
        check_runnable(cfg)
        duplicates: list[dict[str, str | None]] = []
        rows = validated_pool(cfg, duplicates)
        check_charges_for_pool(cfg, rows)
        if (directory / STORE_FILE).exists():
            raise exists
        if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
            raise ConfigError(f"{directory} exists and is not a campaign; remove it or "
                              "choose another --name")
        try:
            directory.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create runs directory {directory.parent} (--runs-dir): "
                              f"{exc.strerror or exc}") from None
        remove_stale_creations(directory.parent)
        tmp = directory.parent / f".{cfg.name}{_CREATING}{uuid.uuid4().hex[:12]}"
        try:
            tmp.mkdir()  # the user's umask, unlike mkdtemp's 0700
        except OSError as exc:
            raise ConfigError(f"cannot write in runs directory {directory.parent} (--runs-dir): "
                              f"{exc.strerror or exc}") from None
        try:
            with Store(tmp / STORE_FILE, lock=True) as store:  # locked: not stale while built
                store.add_molecules(rows)
                store.set_meta("config_toml", config_to_toml(cfg))
                store.set_meta("created_at", str(time.time()))
                invalid = [r for r in rows if not r[2]]
                store.log_event(
                    "created", n_pool=len(rows), n_invalid=len(invalid),
                    invalid=[{"smiles": r[0], "reason": r[3]} for r in invalid[:50]],
                    duplicates=duplicates[:50], n_duplicates=len(duplicates),
                )
            (tmp / "config.toml").write_text(config_to_toml(cfg))
            try:
                os.rename(tmp, directory)
            except OSError:
                raise exists from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        store = Store(directory / STORE_FILE, lock=True)
        try:
            return cls(cfg, store, directory)
        except BaseException:
            store.close()
            shutil.rmtree(directory, ignore_errors=True)
            raise

    @classmethod
    def open(
        cls, name: str, runs_dir: str | Path, max_evaluations: int | None = None,
        *, readonly: bool = False, stages: Sequence[str] | None = None,
    ) -> Campaign:
        """Reopen campaign ``name`` from its store: to resume it, or ``readonly`` to view it
        (no lock taken, so it works while another process runs the campaign).

        The stored config is validated again, with ``max_evaluations`` applied first, so a
        valid override also repairs a stored budget that is no longer accepted.
        """
        directory = campaign_dir(runs_dir, name)
        if not (directory / STORE_FILE).exists():
            raise ConfigError(f"no campaign {name!r} in {Path(runs_dir).resolve()}")
        store = Store(directory / STORE_FILE, lock=not readonly)
        try:
            override = None if readonly else max_evaluations
            cfg = load_stored_config(store, max_evaluations=override)
            check_runnable(cfg, params=not readonly)
            cfg, pinned = _pin_legacy_charges(cfg, store)
            for section, key, _, legacy in STORED_DEFAULTS:  # stored before the setting existed
                if getattr(part := getattr(cfg, section), key) is None:
                    cfg = cfg.model_copy(update={section: part.model_copy(update={key: legacy})})
                    pinned = True
            copied_from = cfg.name if cfg.name != directory.name else None
            if copied_from is not None:
                # a campaign folder copied (or renamed) to a new name is the campaign of its
                # folder: its hints, MLflow experiment and run are its own, not the original's
                # (newuser44b #9: a copy's resume tagged the original's MLflow run)
                cfg = cfg.model_copy(update={"name": directory.name})
            if (override is not None or pinned or copied_from is not None) and not readonly:
                write_config(store, directory, cfg)
            if copied_from is not None and not readonly:
                store.set_meta("mlflow_run_id", "")  # a new run in the folder's experiment
                store.log_event("renamed", previous_name=copied_from, name=directory.name)
            if not readonly:
                store.log_event("resumed")
            return cls(cfg, store, directory, stages=stages)
        except BaseException:
            store.close()
            raise

    def version_warnings(self) -> list[str]:
        """One line per backend whose stored results were made by another version of it than
        this code's (a version changes when its results would: e.g. the ESF levels' version
        2 shifts lambda+): those results stay in the campaign and its models beside the new
        ones, which a user resuming should know."""
        from sim_backends.registry import UnknownBackendError, backend_class

        out = []
        for (name, version), n in sorted(self.store.backend_versions().items()):
            try:
                current = str(backend_class(name).version)
            except UnknownBackendError:
                continue
            if version != current:
                out.append(f"{n} stored result{'' if n == 1 else 's'} of {name} made by its version {version}, "
                           f"this code's is "
                           f"{current} (their values may differ from new ones); they stay in the campaign and its "
                           "models: start a new campaign for results of one version")
        return out

    def close(self) -> None:
        for stage in self.stages.values():
            stage.close()
        self.store.close()

    def __enter__(self) -> Campaign:
        """``with Campaign.open(name, runs_dir) as campaign:`` closes the store (and frees
        the campaign's lock) on leaving the block, an exception included."""
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state --------------------------------------------------------------------------
    def _restore(self) -> None:
        """Rebuild every stage from the store; attribute rows stored before schema 3."""
        self.n_evaluations = 0
        self.n_failed = 0
        self.spent_cpu_s = 0.0  # CPU seconds measured in the workers, failures included
        self.spent_wall_s = 0.0
        self.n_by_stage = {name: 0 for name in self.stages}
        self.n_by_backend: dict[str, int] = {b.name: 0 for b in self.cfg.backends}
        for stage in self.stages.values():
            stage.restore(self.store)
        legacy: dict[int, str] = {}
        evaluations = self.store.evaluations()  # in the order they were stored
        if self.cfg.synchronous:  # the order the stages were told them in (see tell)
            evaluations.sort(key=lambda ev: (ev.submitted_at, ev.id))
        for ev in evaluations:
            name = ev.stage
            if not name:
                # the structure stage first: its CSP backend is a molecule-level backend
                name = next((n for n in ("structures", "molecule", *self.stages)
                             if n in self.stages and self.stages[n].owns(ev)), "")
                if name:
                    legacy[ev.id] = name
            self._absorb(name, None, ev)
        if legacy and self.store.writable:
            self.store.set_stage(legacy)
        self.interrupted_cpu_s, self.n_interrupted = self.store.interrupted_cpu_s()
        self.spent_cpu_s += self.interrupted_cpu_s
        self.spent_wall_s += self.store.interrupted_wall_s()

    def settle_interrupted(self) -> None:
        """Charge the tasks that earlier runs left unfinished (``Store.settle_interrupted``);
        called by the runner when a run starts."""
        wall = self.store.interrupted_wall_s()
        cpu, n = self.store.settle_interrupted()
        self.spent_cpu_s += cpu
        self.spent_wall_s += self.store.interrupted_wall_s() - wall
        self.interrupted_cpu_s += cpu
        self.n_interrupted += n

    def _absorb(self, stage_name: str, request: Request | None, ev: Evaluation) -> None:
        self.n_evaluations += 1
        self.spent_cpu_s += ev.cpu_s
        self.spent_wall_s += ev.wall_s
        self.n_failed += not ev.ok
        self.n_by_backend[ev.backend] = self.n_by_backend.get(ev.backend, 0) + 1
        stage = self.stages.get(stage_name)
        if stage is not None:
            self.n_by_stage[stage_name] += 1
            stage.tell(request, ev)

    # -- stages ---------------------------------------------------------------------------
    @property
    def molecules(self) -> MoleculeStage:
        """The molecule stage (the campaign objective is its top level's value)."""
        return self.stages["molecule"]  # type: ignore[return-value]

    @property
    def stage(self) -> StructureStage | None:
        """The structure stage, if the config has one."""
        return self.stages.get("structures")  # type: ignore[return-value]

    @property
    def lab(self) -> LabStage | None:
        """The lab stage, if the config has one."""
        return self.stages.get("lab")  # type: ignore[return-value]

    def _remaining(self, name: str) -> int:
        share = self.shares.get(name)
        if share is None:
            return self.cfg.max_evaluations
        return share - self.n_by_stage[name] - sum(r.stage == name for r in self.pending.values())

    def _exhausted(self, name: str) -> bool:
        """Stage ``name`` can propose nothing now or later (or may not be asked)."""
        if name not in self.stages:
            return True
        if name not in self.enabled or self._remaining(name) <= 0:
            return True
        return self.stages[name].is_exhausted(tuple(self.pending.values()))

    # -- objective views (of the molecule stage) -----------------------------------------
    def best_value(self) -> float | None:
        return self.molecules.best_value()

    def _sign(self) -> float:
        return 1.0 if self.cfg.direction == "minimize" else -1.0

    # -- stopping -----------------------------------------------------------------------
    def stop_reason(self) -> str:
        """Why the campaign must not ask for more work ('' while it may)."""
        cfg = self.cfg
        if self.n_evaluations >= cfg.max_evaluations:
            return f"evaluation budget reached ({cfg.max_evaluations})"
        if cfg.max_cpu_hours is not None and self.spent_cpu_s >= cfg.max_cpu_hours * 3600:
            return f"compute budget reached ({cfg.max_cpu_hours:g} CPU h)"
        best = self.best_value()
        if cfg.stop.target is not None and best is not None and (
            self._sign() * (best - cfg.stop.target) <= 0
        ):
            return f"target reached ({best:.4g})"
        patience = cfg.stop.patience_iterations
        history = self.molecules.history
        if patience is not None and best is not None:
            top = self.molecules.top_fidelity
            tops = [h for h in history if h["fidelity"] == top]
            first_best = next(h["n"] for h in history if h["best"] == best)
            if len(tops) and sum(h["n"] > first_best for h in tops) >= patience:
                return f"no improvement in {patience} expensive evaluations"
        if not self.pending and all(self._exhausted(name) for name in self.stages):
            # the limit that bound: a stage's budget share spent while it had candidates
            # left (the structure stage's first: it is what a user raises), else the
            # molecule stage's own reason
            if "structures" in self.enabled and (why := self._share_spent("structures")):
                if self.stage is not None and (cpu := self.stage.exhausted_reason(tuple(self.pending.values()))):
                    # both limits bind: raising only one of them would not restart the stage
                    why = f"{why}; {cpu.replace('compute budget: ', 'and the compute budget: ', 1)}" \
                        " (refine --cpu-hours H adds CPU)"
                elif cfg.max_cpu_hours is not None:  # how far N more would get (newuser51 #5)
                    total = cfg.max_cpu_hours * 3600
                    why = (f"{why}, with {max(total - self.spent_cpu_s, 0.0):.0f} of its {total:.0f} CPU s left "
                           "(refine --cpu-hours H adds CPU)")
                if "molecule" in self.enabled and (mol := self.molecules.exhausted_reason()):
                    # what stops the molecule stage too, so that a larger --max-evaluations is not
                    # expected to evaluate more molecules (newuser45c #7)
                    why = f"{why}; the molecule stage: {mol}"
                return why
            if ("structures" in self.enabled and self.stage is not None
                    and (why := self.stage.exhausted_reason(tuple(self.pending.values())))):
                return why
            if "molecule" in self.enabled and (why := self.molecules.exhausted_reason()):
                return why
            if "molecule" in self.enabled and (why := self._share_spent("molecule")):
                return why
            return "no candidate left to evaluate"
        return ""

    def _share_spent(self, name: str) -> str:
        """Why stage ``name`` stopped when its budget share is spent while it could still
        propose work ('' else)."""
        if name not in self.stages or self._remaining(name) > 0 or self.shares.get(name) is None:
            return ""
        if self.stages[name].is_exhausted(tuple(self.pending.values()), budget=False):
            return ""  # nothing left to propose anyway, whatever the compute budget
        share, cfg = self.shares[name], self.cfg
        if name == "structures":
            return (f"structure-stage budget reached ({share} evaluations, [structures] "
                    f"budget_evaluations); `crystal-agent refine {cfg.name} --budget N` adds more")
        return (f"molecule-stage budget reached ({share} evaluations: max_evaluations "
                f"{cfg.max_evaluations} less the {self.shares.get('structures', 0)} of "
                "[structures] budget_evaluations)")

    # -- ask / tell -----------------------------------------------------------------------
    def ask(self, n: int) -> list[Task]:
        """Up to ``n`` new tasks (never more than the remaining budget allows)."""
        self.absorb_deferred()
        if self.stop_reason():
            return []
        n = min(n, self.cfg.max_evaluations - self.n_evaluations - len(self.pending))
        tasks: list[Task] = []
        for name, stage in self.stages.items():
            if n <= 0:
                break
            if name not in self.enabled or not all(self._exhausted(w) for w in stage.waits_for):
                continue
            k = min(n, self._remaining(name))
            if k <= 0:
                continue
            for request in stage.ask(k, tuple(self.pending.values()))[:k]:
                self.pending[request.request_id] = request
                task = request.to_task()
                # strictly increasing, so the store keeps the order of asking
                self._last_asked_at = task.submitted_at = max(time.time(), self._last_asked_at + 1e-6)
                tasks.append(task)
                n -= 1
        return tasks

    def tell(self, task: Task, result: EvalResult, *, defer: bool = False) -> bool:
        """Record a finished task: commit it (with the rows its stage derives from it, e.g.
        a CSP landscape) to the store, then tell its stage. False if it was stored already.

        ``defer=True`` (synchronous campaigns) commits the result at once but tells the
        stage only at :meth:`absorb_deferred` (called by :meth:`ask`), in the order the
        requests were asked, so the stages' state after a batch does not depend on which
        task finished first. A resumed synchronous campaign replays the store in
        submission order for the same reason.
        """
        request = task.request
        if request is None:
            raise ValueError(f"task {task.request_id} carries no request")
        self.pending.pop(request.request_id, None)
        stage = self.stages.get(request.stage)
        rows = stage.records(request, result) if stage is not None else {}
        inserted = self.store.record_evaluation(
            request_id=request.request_id,
            molecule_id=request.molecule_id,
            result=result,
            submitted_at=task.submitted_at or time.time(),
            n_attempts=max(task.n_attempts, 1),
            structure_id=request.structure_id,
            stage=request.stage,
            **rows,
        )
        if inserted:
            ev = self.store.evaluation(request.request_id)
            if defer:
                self._deferred.append((ev.submitted_at, request, ev))
            else:
                self._absorb(request.stage, request, ev)
        return inserted

    def absorb_deferred(self) -> None:
        """Tell the stages the deferred results (see :meth:`tell`), in the order their
        requests were asked."""
        deferred, self._deferred = sorted(self._deferred, key=lambda d: d[0]), []
        for _, request, ev in deferred:
            self._absorb(request.stage, request, ev)

    def step_external(self) -> bool:
        """Advance the stages' work outside the executor (lab experiments); True while
        some is open."""
        return any([stage.step() for name, stage in self.stages.items() if name in self.enabled])

    def forget_pending(self) -> None:
        """Drop in-flight bookkeeping (after the executor was stopped)."""
        self.pending.clear()

    def refit_final(self) -> None:
        """Refit the stages' models on every stored result (at the end of a run, so the
        recorded and logged models have seen everything)."""
        self.absorb_deferred()
        if "molecule" in self.enabled:
            self.molecules.refit()
        if self.stage is not None and "structures" in self.enabled:
            self.stage.refit_all()

    # -- summaries ------------------------------------------------------------------------
    def status(self) -> Status:
        return campaign_status(self.store, self.cfg, self)

    # -- views of the molecule stage, for report and summary ------------------------------
    @property
    def smiles(self) -> list[str]:
        return self.molecules.smiles

    @property
    def names(self) -> list[str]:
        return self.molecules.names

    @property
    def mol_ids(self) -> np.ndarray:
        return self.molecules.mol_ids

    @property
    def _index_of(self) -> dict[int, int]:
        return self.molecules.index_of

    @property
    def history(self) -> list[dict[str, Any]]:
        """The molecule stage's evaluations in the order it was told them: ``n`` (the
        evaluation number), ``mol_index`` (pool index), ``fidelity``, ``status``, ``value``
        (the objective), ``wall_s``, ``cpu_s``, ``best`` (the best top-level value so far),
        ``name``, ``smiles`` and ``backend``. :meth:`results` has each one's level of theory,
        unit, failure reason and every value its backend reported."""
        levels = [b.name for b in self.cfg.backends]
        return [{**h, "name": self.names[h["mol_index"]], "smiles": self.smiles[h["mol_index"]],
                 "backend": levels[h["fidelity"]]} for h in self.molecules.history]

    def results(self) -> list[dict[str, Any]]:
        """Every molecule-stage evaluation in the store, in evaluation order, as a plain dict
        (``pandas.DataFrame(campaign.results())`` is a table of them; a read-only
        :meth:`open` gives them while another process runs the campaign):

        * ``n``: the evaluation number (as in :attr:`history` and the report's plots);
        * ``name``, ``smiles``: the molecule (``name`` is the SMILES where the pool names none);
        * ``backend``, ``fidelity`` (0: the cheapest level) and ``level``: the level of theory
          of its objective value as ``status`` prints it (:func:`agent.summary.level_of_theory`);
        * ``quantity``: the objective's name at that level (its ``results.csv`` column stem,
          :func:`agent.summary.shown_name`), ``value`` (None when failed) and ``unit``;
        * ``ok`` and ``reason`` (why it failed; empty when ok); ``unreliable``: why its value
          is flagged unreliable (never the best; :func:`sim_backends.reorg.unreliable_lambda_reason`),
          else empty;
        * ``cpu_s``, ``wall_s``: measured in the worker;
        * ``values``: every value the backend reported, keyed as stored, the unit in the
          key's suffix (e.g. ``reorg_energy_kjmol``, ``lambda_cation_kjmol``,
          ``ip_adiabatic_kjmol``; :func:`agent.summary.quantity` names them).
        """
        from agent.summary import level_of_theory, quantity, shown_name
        from sim_backends.reorg import unreliable_lambda_reason

        cfg = self.cfg
        levels = {b.name: (f, level_of_theory(b, cfg.objective), shown_name(b, cfg.objective))
                  for f, b in enumerate(cfg.backends)}
        unit = quantity(cfg.objective)[2]
        mols = {m["id"]: dict(m) for m in self.store.molecules()}
        rows = []
        for ev in self.store.evaluations():
            if ev.structure_id is not None or ev.backend not in levels:
                continue
            f, level, shown = levels[ev.backend]
            mol = mols.get(ev.molecule_id, {})
            rows.append({
                "n": ev.id, "name": mol.get("name") or mol.get("smiles"), "smiles": mol.get("smiles"),
                "backend": ev.backend, "fidelity": f, "level": level, "quantity": shown,
                "value": ev.values.get(cfg.objective) if ev.ok else None, "unit": unit,
                "ok": ev.ok, "reason": "" if ev.ok else (ev.reason or ev.status),
                "unreliable": (unreliable_lambda_reason(ev.extra, cfg.objective) or "") if ev.ok else "",
                "cpu_s": ev.cpu_s, "wall_s": ev.wall_s, "values": dict(ev.values),
            })
        return rows

    @property
    def observations(self) -> list[tuple[int, int, float]]:
        return self.molecules.observations

    @property
    def infeasible(self) -> dict[int, str]:
        """Pool index -> why a constraint excludes the molecule (:mod:`agent.constraints`)."""
        return self.molecules.infeasible

    @property
    def top_fidelity(self) -> int:
        return self.molecules.top_fidelity

    def costs(self) -> list[float]:
        return self.molecules.costs()


def build_stages(cfg: CampaignConfig, directory: Path) -> dict[str, Stage]:
    """The stages a config asks for, in the order they are asked for work."""
    stages: dict[str, Stage] = {"molecule": MoleculeStage(cfg)}
    if cfg.structures.enabled:
        from agent.stages.structure import StructureStage

        stages["structures"] = StructureStage(cfg)
        stages["structures"].directory = directory
        if cfg.lab is not None:
            from agent.stages.lab import LabStage

            stages["lab"] = LabStage(cfg, directory)
    return stages


def _pin_legacy_charges(cfg: CampaignConfig, store: Store) -> tuple[CampaignConfig, bool]:
    """A campaign keeps, on resume, the charges its landscapes were computed with where its
    config leaves ``charges`` unset and the default has changed since: one protocol per level.

    * ESF levels that computed landscapes before their ``charges`` parameter existed (no
      ``csp_level`` in the results) used GFN2-xTB charges; today's default is RESP.
    * ``csp-ff`` searches that ran before its default became the search's own (a landscape whose
      charge method is plain ``resp-pyscf``) used RESP; today's default for a rigid molecule is
      RESP with N lone-pair sites.

    Returns the config and whether it changed."""
    esf = ("esf-landscape", "esf-refined")
    pinned: dict[str, str] = {}  # backend name -> the charges its stored results were made with
    for ev in store.evaluations():
        if not ev.ok:
            continue
        if ev.backend in esf and "csp_level" not in ev.extra:
            pinned[ev.backend] = "xtb"
        elif ev.backend == "csp-ff" and str((ev.extra.get("csp") or {}).get("charge_method", "")).startswith(
                "resp-pyscf"):
            pinned["csp-ff"] = "resp"

    def pin(b):
        if b.name not in pinned or "charges" in b.params:
            return b
        return b.model_copy(update={"params": {**b.params, "charges": pinned[b.name]}})

    backends = [pin(b) for b in cfg.backends]
    csp = pin(cfg.structures.csp)
    if csp is cfg.structures.csp and all(a is b for a, b in zip(backends, cfg.backends)):
        return cfg, False
    return cfg.model_copy(update={"backends": backends,
                                  "structures": cfg.structures.model_copy(update={"csp": csp})}), True


def campaign_status(store: Store, cfg: CampaignConfig, camp: Campaign | None = None) -> Status:
    """Summarise a campaign from its store alone (works while another process runs it)."""
    from agent.constraints import constrained_sources, describe, infeasible_molecules
    from agent.summary import objective_record

    evs = store.evaluations()
    top = cfg.backends[-1].name
    sign = 1.0 if cfg.direction == "minimize" else -1.0
    infeasible = infeasible_molecules(evs, cfg.constraints)
    from sim_backends.reorg import unreliable_lambda_reason

    # a top-level value its backend marks unreliable (a Jahn-Teller cation left undistorted)
    # is never the best; status names it
    unreliable: dict[int, str] = {}
    unreliable_cheap: dict[int, dict[str, str]] = {}  # a cheaper level's (the molecule stage does not train on it)
    cheaper = {b.name for b in cfg.backends[:-1]}
    tried: set[int] = set()  # pool coverage at the molecule stage's levels (a structure-stage CSP follows one)
    evaluated: set[int] = set()
    for ev in evs:
        if ev.structure_id is not None or (ev.backend != top and ev.backend not in cheaper):
            continue
        tried.add(ev.molecule_id)
        if not ev.ok:
            continue
        evaluated.add(ev.molecule_id)
        if why := unreliable_lambda_reason(ev.extra, cfg.objective):
            if ev.backend == top:
                unreliable[ev.molecule_id] = why
            if ev.backend in cheaper:
                unreliable_cheap.setdefault(ev.molecule_id, {})[ev.backend] = why
    best, best_mol = None, None
    for ev in evs:
        v = ev.values.get(cfg.objective)
        if (ev.backend == top and ev.ok and v is not None and ev.molecule_id not in infeasible
                and ev.molecule_id not in unreliable and (best is None or sign * (v - best) < 0)):
            best, best_mol = v, ev.molecule_id
    mols = {m["id"]: m for m in store.molecules()}
    n_by = {b.name: 0 for b in cfg.backends}
    cpu_by: dict[str, float] = {}
    for ev in evs:
        n_by[ev.backend] = n_by.get(ev.backend, 0) + 1
        cpu_by[ev.backend] = cpu_by.get(ev.backend, 0.0) + float(ev.cpu_s)
    valid = {m for m, r in mols.items() if r["is_valid"]}
    tried &= valid
    evaluated &= valid
    finished = store.get_meta("finished") == "1"
    interrupted = store.interrupted_cpu_s()
    elapsed = store.elapsed_s()
    running = store.running_pid()
    unsettled = store.unsettled_cpu_s() if running is None and not finished else (0.0, 0)
    reason = camp.stop_reason() if camp is not None else ""
    if not reason and finished:
        reason = store.get_meta("stop_reason") or "stopped (no reason recorded)"
    best_src = (constrained_sources(evs, (c.value for c in cfg.constraints)).get(int(best_mol), {})
                if best_mol is not None else {})
    note = ""
    if best is None:
        n_top = [ev.ok for ev in evs if ev.backend == top]
        if not any(m["is_valid"] for m in mols.values()):
            note = "no valid molecule in pool"
        elif not n_top:
            note = f"no {top} evaluation yet"
        elif any(n_top):
            note = f"every {top} result is of an infeasible molecule or unreliable"
        else:
            note = f"all {len(n_top)} {top} evaluations failed"
    return Status(
        name=cfg.name,
        n_evaluations=len(evs),
        n_failed=sum(not ev.ok for ev in evs),
        n_by_backend=n_by,
        spent_cpu_s=float(sum(ev.cpu_s for ev in evs)) + interrupted[0],
        spent_wall_s=float(sum(ev.wall_s for ev in evs)) + store.interrupted_wall_s(),
        cpu_by_backend={k: round(v, 2) for k, v in sorted(cpu_by.items(), key=lambda kv: -kv[1])},
        elapsed_s=elapsed[0],
        n_runs=elapsed[1],
        interrupted_cpu_s=interrupted[0],
        n_interrupted=interrupted[1],
        unsettled_cpu_s=unsettled[0],
        n_unsettled=unsettled[1],
        unsettled_tasks=store.unsettled_tasks() if unsettled[1] else [],
        running_tasks=store.in_flight_tasks() if running is not None and not finished else [],
        running_pid=running,
        best=best,
        best_smiles=mols[best_mol]["smiles"] if best_mol else None,
        best_name=mols[best_mol]["name"] if best_mol else None,
        max_evaluations=cfg.max_evaluations,
        finished=finished,
        stop_reason=reason,
        best_note=note,
        infeasible={(mols[m]["name"] or mols[m]["smiles"]) if m in mols else str(m): why
                    for m, why in infeasible.items()},
        unreliable={(mols[m]["name"] or mols[m]["smiles"]) if m in mols else str(m): why
                    for m, why in unreliable.items()},
        unreliable_cheap={(mols[m]["name"] or mols[m]["smiles"]) if m in mols else str(m): by
                          for m, by in unreliable_cheap.items()},
        constraints=describe(cfg.constraints),
        best_constrained={k: v[0] for k, v in best_src.items()},
        best_constrained_level={k: v[2] for k, v in best_src.items()},
        n_pool_valid=len(valid),
        n_pool_evaluated=len(evaluated),
        n_pool_failed_only=len(tried - evaluated),
        objective=objective_record(cfg),
    )


def write_config(store: Store, directory: Path, cfg: CampaignConfig) -> None:
    """Store ``cfg`` as the campaign's config (what every later open reads) and rewrite the
    copy a user reads, ``<campaign dir>/config.toml``, to match (newuser45c #4: a raised
    budget was stored but the file kept the old one)."""
    text = config_to_toml(cfg)
    store.set_meta("config_toml", text)
    path = Path(directory) / "config.toml"
    if path.is_file():
        tmp = path.with_name(".config.toml.tmp")
        tmp.write_text(text)
        tmp.replace(path)


def load_stored_config(store: Store, *, max_evaluations: int | None = None) -> CampaignConfig:
    """The config kept in ``store``, validated (with ``max_evaluations`` applied first)."""
    text = store.get_meta("config_toml")
    if not (text or "").strip():  # not a list of every missing key
        raise ConfigError(f"campaign store {store.path.parent}: no stored config (the store is damaged); "
                          "restore it from a backup or start a new campaign")
    data = parse_toml(text, "stored config")
    if max_evaluations is not None:
        data["max_evaluations"] = max_evaluations
    try:
        return parse_config(data, stored=True)
    except ConfigError as exc:
        raise ConfigError(lines=[f"campaign store {store.path.parent}: stored {line}"
                                 for line in exc.lines]) from None


def _without_none(value: Any) -> Any:
    """A JSON-like config dump without its None entries (what a TOML file can hold)."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def _nulls_replaced(given: Any, parsed: Any, path: str = "") -> tuple[str, Any] | None:
    """The first dotted key that is None in ``given`` but not in ``parsed`` (a default took its
    place), with that value; None when there is none."""
    if isinstance(given, dict) and isinstance(parsed, dict):
        for k, v in given.items():
            key = f"{path}.{k}" if path else str(k)
            if v is None and parsed.get(k) is not None:
                return key, parsed[k]
            if (found := _nulls_replaced(v, parsed.get(k), key)) is not None:
                return found
    elif isinstance(given, list) and isinstance(parsed, list) and len(given) == len(parsed):
        for n, (a, b) in enumerate(zip(given, parsed, strict=True)):
            if (found := _nulls_replaced(a, b, f"{path}[{n}]")) is not None:
                return found
    return None


def _unknown_attributes(model: Any, prefix: str = "") -> str | None:
    """The dotted name of the first attribute of ``model`` (a config, its tables and lists
    of tables) that is not one of its fields: what ``model_copy(update={"max_evaluation": 5})``
    leaves behind, which ``model_dump`` (and so the validation of :meth:`Campaign.create`)
    would drop without a word. None when there is none."""
    from pydantic import BaseModel

    if isinstance(model, BaseModel):
        fields = type(model).model_fields
        for key, value in vars(model).items():
            if key not in fields:
                return f"{prefix}{key}"
            if found := _unknown_attributes(value, f"{prefix}{key}."):
                return found
    elif isinstance(model, (list, tuple)):
        for i, item in enumerate(model):
            if found := _unknown_attributes(item, f"{prefix[:-1]}.{i}." if prefix else f"{i}."):
                return found
    return None
