"""The campaign: the one stateful object of a discovery run.

``Campaign.ask(n)`` proposes up to ``n`` (molecule, backend) requests and
``Campaign.tell(task, result)`` records a finished one. All durable state lives in
the :class:`~agent.store.Store`; the in-memory state (pending requests, fitted
surrogate) is rebuilt from it on resume, so a killed campaign continues where it
stopped with nothing completed lost and nothing evaluated twice.

Decisions:

* an initial space-filling design at the cheapest fidelity (max-min Tanimoto
  distance from a seeded random start) until ``surrogate.n_initial`` results exist;
* then a multi-fidelity Tanimoto GP (:mod:`agent.surrogates.molecule_gp`) and a
  cost-aware batch acquisition (:func:`agent.acquisition.select_batch`) that picks
  molecule and fidelity together with in-flight work passed as pending points;
* a molecule whose input is invalid (setup failure) is never proposed again at any
  fidelity; one whose run failed at a fidelity is not proposed again there.

Creation is atomic: the config is checked against the registries and the pool validated
(empty, all-invalid or oversized pools refused) before anything is written; the store is
then built in a hidden temporary directory under the runs directory and renamed to
``runs/<name>/``, so a refused or failed creation leaves nothing behind; the hidden
folder of a creation killed outright (SIGKILL) is removed by a later creation in the same
runs directory once it is a minute old and unlocked (:func:`remove_stale_creations`).
:meth:`Campaign.open` re-validates the stored config together with any override.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.config import (
    CampaignConfig,
    ConfigError,
    check_name,
    check_runnable,
    config_to_toml,
    parse_config,
    parse_toml,
)
from agent.executor import Task
from agent.store import Store
from sim_backends.base import EvalInput, EvalResult
from sim_backends.registry import backend_class

if TYPE_CHECKING:
    from agent.lab_stage import LabStage
    from agent.structure_stage import StructureStage
    from agent.surrogates.molecule_gp import MoleculeSurrogate


STORE_FILE = "store.sqlite"
#: largest pool file read (a pool of max_pool_molecules SMILES is far smaller)
MAX_POOL_BYTES = 256 * 1024**2


@dataclass(frozen=True)
class Status:
    """A summary of a campaign's progress (what ``crystal-agent status`` prints)."""

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

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def campaign_dir(runs_dir: str | Path, name: str) -> Path:
    """``runs_dir/name`` after checking that ``name`` is one safe path component and
    ``runs_dir`` is (or can become) a directory (one-line ConfigError otherwise)."""
    check_name(name)
    runs_dir = Path(runs_dir)
    existing = next((p for p in (runs_dir, *runs_dir.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"runs-dir {runs_dir}: {existing} is not a directory")
    return runs_dir / name


_INVALID_KINDS = (  # (pattern in the SetupError reason, summary label)
    (r"characters; the limit", "too long"),
    (r"^invalid SMILES", "unparsable SMILES"),
    (r"fragments", "several fragments"),
    (r"unsupported element\(s\) ([A-Za-z, ]+);", "unsupported element"),
    (r"net charge", "charged"),
    (r"unpaired electron", "radical"),
    (r"heavy atoms", "too large"),
)


def _invalid_label(reason: str) -> str:
    for pattern, label in _INVALID_KINDS:
        m = re.search(pattern, reason)
        if m:
            return f"{label}: {m.group(1)}" if m.groups() else label
    return "invalid"


def summarise_invalid(reasons: list[str]) -> str:
    """``"2 unparsable SMILES, 1 unsupported element: Fe"`` for a list of SetupError reasons."""
    counts: dict[str, int] = {}
    for r in reasons:
        label = _invalid_label(r)
        counts[label] = counts.get(label, 0) + 1
    return ", ".join(f"{n} {label}" for label, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def pool_summary(store: Store, name: str) -> str:
    """One line on the stored pool, e.g. ``pool: 147 molecules, 3 invalid (2 unparsable
    SMILES, 1 unsupported element: Fe); see `crystal-agent status NAME --invalid```."""
    mols = store.molecules()
    bad = [m["reason"] for m in mols if not m["is_valid"]]
    line = f"pool: {len(mols)} molecules"
    if bad:
        line += (f", {len(bad)} invalid ({summarise_invalid(bad)}); "
                 f"see `crystal-agent status {name} --invalid`")
    return line


def _validated_pool(cfg: CampaignConfig) -> list[tuple[str, str | None, bool, str]]:
    """The pool as ``(smiles, name, is_valid, reason)`` rows, refused when it is empty,
    too large or holds no valid molecule."""
    from sim_backends.molecule import read_pool, validate_smiles

    try:
        size = cfg.pool.stat().st_size
        if size > MAX_POOL_BYTES:
            raise ConfigError(f"config error: pool: {cfg.pool}: file too large ({size:,} bytes; "
                              f"the limit is {MAX_POOL_BYTES:,})")
        entries = read_pool(cfg.pool)
    except UnicodeDecodeError:
        raise ConfigError(f"config error: pool: {cfg.pool}: not UTF-8 text") from None
    except FileNotFoundError:
        raise ConfigError(f"config error: pool: file not found: {cfg.pool}") from None
    if not entries:
        raise ConfigError(f"config error: pool: no molecules in {cfg.pool}")
    if len(entries) > cfg.max_pool_molecules:
        raise ConfigError(f"config error: pool: {len(entries):,} molecules; the limit is "
                          f"{cfg.max_pool_molecules:,} (raise max_pool_molecules to allow it)")
    rows = []
    seen: set[str] = set()
    for smi, name in entries:
        try:
            canon, ok, reason = validate_smiles(smi), True, ""
        except Exception as exc:  # SetupError; keep the entry, flagged invalid
            shown = smi if len(smi) <= 200 else smi[:197] + "..."
            canon, ok, reason = shown, False, str(exc)
        if canon in seen:
            continue
        seen.add(canon)
        rows.append((canon, name, ok, reason))
    if not any(r[2] for r in rows):
        raise ConfigError(
            f"config error: pool: no valid molecule among {len(rows)} entries "
            f"({summarise_invalid([r[3] for r in rows])})"
        )
    return rows


class Campaign:
    """Ask/tell over a molecule pool with a fidelity ladder of backends.

    Use :meth:`create` for a new campaign and :meth:`open` to resume one.
    """

    def __init__(self, cfg: CampaignConfig, store: Store, directory: Path) -> None:
        self.cfg = cfg
        self.store = store
        self.directory = directory
        self.rng = np.random.default_rng(cfg.seed)
        check_runnable(cfg, params=False)  # create/open checked the parameters
        self.backends = [backend_class(b.name) for b in cfg.backends]
        mols = store.molecules(valid_only=True)
        if not mols:
            raise ConfigError("config error: pool: no valid molecule in the pool")
        self.mol_ids = np.array([m["id"] for m in mols])
        self.smiles = [m["smiles"] for m in mols]
        self.names = [m["name"] or m["smiles"] for m in mols]
        self._index_of = {int(mid): i for i, mid in enumerate(self.mol_ids)}
        self._fps: np.ndarray | None = None
        self.pending: dict[str, Task] = {}
        self.surrogate: MoleculeSurrogate | None = None
        self._fit_signature: tuple[int, int] | None = None
        self._cost_estimates: np.ndarray | None = None  # (n_pool, n_f) backend estimates
        self.last_holdout_mae: float | None = None
        self.n_refits = 0
        self.molecule_stage_enabled = True  # `crystal-agent refine` turns it off
        self.stage: StructureStage | None = None
        if cfg.structures.enabled:
            from agent.structure_stage import StructureStage

            self.stage = StructureStage(self)
        self.lab: LabStage | None = None
        if cfg.lab is not None and self.stage is not None:
            from agent.lab_stage import LabStage

            self.lab = LabStage(self)
        self._reload()
        if self.lab is not None:
            self.lab.reload_observed()

    # -- construction -------------------------------------------------------------------
    @classmethod
    def create(cls, cfg: CampaignConfig, runs_dir: str | Path) -> Campaign:
        """Start a new campaign in ``runs_dir/cfg.name`` (refuses an existing one).

        Everything is checked before anything is written, and the campaign directory
        appears complete or not at all (see the module docstring).
        """
        directory = campaign_dir(runs_dir, cfg.name)
        exists = ConfigError(
            f"campaign {cfg.name!r} already exists in {directory}; use "
            f"`crystal-agent resume {cfg.name}` or choose another --name"
        )
        if (directory / STORE_FILE).exists():
            raise exists
        if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
            raise ConfigError(f"{directory} exists and is not a campaign; remove it or "
                              "choose another --name")
        check_runnable(cfg)
        rows = _validated_pool(cfg)
        directory.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_creations(directory.parent)
        tmp = directory.parent / f".{cfg.name}{_CREATING}{uuid.uuid4().hex[:12]}"
        tmp.mkdir()  # the user's umask, unlike mkdtemp's 0700
        try:
            with Store(tmp / STORE_FILE, lock=True) as store:  # locked: not stale while built
                store.add_molecules(rows)
                store.set_meta("config_toml", config_to_toml(cfg))
                store.set_meta("created_at", str(time.time()))
                invalid = [r for r in rows if not r[2]]
                store.log_event(
                    "created", n_pool=len(rows), n_invalid=len(invalid),
                    invalid=[{"smiles": r[0], "reason": r[3]} for r in invalid[:50]],
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
        *, readonly: bool = False,
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
            if override is not None:
                store.set_meta("config_toml", config_to_toml(cfg))
            if not readonly:
                store.log_event("resumed")
            return cls(cfg, store, directory)
        except BaseException:
            store.close()
            raise

    def close(self) -> None:
        if self.lab is not None:
            self.lab.close()
        self.store.close()

    # -- state --------------------------------------------------------------------------
    def _reload(self) -> None:
        """Rebuild the observation arrays from the store."""
        n_f = len(self.cfg.backends)
        self.done = np.zeros((len(self.smiles), n_f), dtype=bool)
        self.blocked = np.zeros((len(self.smiles), n_f), dtype=bool)
        self.observations: list[tuple[int, int, float]] = []
        self.n_by_backend = {b.name: 0 for b in self.cfg.backends}
        self.cpu_by_backend: dict[str, list[float]] = {b.name: [] for b in self.cfg.backends}
        self.spent_cpu_s = 0.0  # CPU seconds measured in the workers, failures included
        self.spent_wall_s = 0.0
        self.n_evaluations = 0
        self.n_molecule_evaluations = 0
        self.n_failed = 0
        self.history: list[dict[str, Any]] = []
        for ev in self.store.evaluations():
            self._absorb(ev.molecule_id, ev.backend, ev.status, ev.reason, ev.values, ev.wall_s,
                         ev.structure_id, ev.extra, cpu_s=ev.cpu_s)

    def _fidelity_of(self, backend: str) -> int:
        for i, b in enumerate(self.cfg.backends):
            if b.name == backend:
                return i
        return -1

    def _absorb(
        self, molecule_id: int, backend: str, status: str, reason: str,
        values: dict[str, float], wall_s: float, structure_id: str | None = None,
        extra: dict[str, Any] | None = None, *, cpu_s: float = 0.0,
    ) -> None:
        self.n_evaluations += 1
        self.spent_cpu_s += cpu_s
        self.spent_wall_s += wall_s
        if status != "ok":
            self.n_failed += 1
        if self.stage is not None and (structure_id is not None or backend == self.stage.cfg.csp.name):
            self.stage.absorb(int(molecule_id), backend, structure_id, status, values, extra,
                              cpu_s=cpu_s)
            return
        self.n_molecule_evaluations += 1
        f = self._fidelity_of(backend)
        i = self._index_of.get(int(molecule_id))
        if f < 0 or i is None:
            return
        self.n_by_backend[backend] += 1
        self.cpu_by_backend[backend].append(cpu_s)
        self.done[i, f] = True
        value = values.get(self.cfg.objective)
        if status == "ok" and value is not None and np.isfinite(value):
            self.observations.append((i, f, float(value)))
        else:
            if reason.startswith("setup:"):
                self.blocked[i, :] = True
            else:
                self.blocked[i, f] = True
        self.history.append(
            {"n": self.n_evaluations, "mol_index": i, "fidelity": f, "status": status,
             "value": value, "wall_s": wall_s, "cpu_s": cpu_s, "best": self.best_value()}
        )

    @property
    def top_fidelity(self) -> int:
        return len(self.cfg.backends) - 1

    def _sign(self) -> float:
        return 1.0 if self.cfg.direction == "minimize" else -1.0

    def best_value(self) -> float | None:
        vals = [v for _, f, v in self.observations if f == self.top_fidelity]
        if not vals:
            return None
        return float(min(vals) if self.cfg.direction == "minimize" else max(vals))

    def best_molecule(self) -> int | None:
        best = self.best_value()
        for i, f, v in self.observations:
            if f == self.top_fidelity and v == best:
                return i
        return None

    @property
    def fingerprints(self) -> np.ndarray:
        if self._fps is None:
            from agent.surrogates.fingerprints import morgan_fingerprints

            s = self.cfg.surrogate
            self._fps = morgan_fingerprints(
                self.smiles, n_bits=s.fingerprint_bits, radius=s.fingerprint_radius
            )
        return self._fps

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
        if patience is not None and best is not None:
            tops = [h for h in self.history if h["fidelity"] == self.top_fidelity]
            first_best = next(h["n"] for h in self.history if h["best"] == best)
            if len(tops) and sum(h["n"] > first_best for h in tops) >= patience:
                return f"no improvement in {patience} expensive evaluations"
        if not self.pending and self._molecule_stage_exhausted() and (
            self.stage is None or self.stage.is_exhausted()
        ):
            top = self.cfg.backends[-1]
            if (self.molecule_stage_enabled and top.budget_evaluations is not None
                    and self.n_by_backend[top.name] >= top.budget_evaluations
                    and len(self.cfg.backends) > 1):
                return (f"{top.name} budget spent ({top.budget_evaluations} evaluations); "
                        "cheaper levels can no longer change the best value")
            return "no candidate left to evaluate"
        return ""

    @property
    def molecule_budget(self) -> int:
        reserved = self.cfg.structures.budget_evaluations if self.stage is not None else 0
        return self.cfg.max_evaluations - reserved

    def _molecule_stage_exhausted(self) -> bool:
        if not self.molecule_stage_enabled:
            return True
        n_pending = sum(not t.payload.get("stage") for t in self.pending.values())
        if self.n_molecule_evaluations + n_pending >= self.molecule_budget:
            return True
        return not self._allowed().any()

    # -- ask / tell -----------------------------------------------------------------------
    def _allowed(self) -> np.ndarray:
        allowed = ~(self.done | self.blocked)
        for t in self.pending.values():
            if not t.payload.get("stage"):
                allowed[t.payload["mol_index"], t.fidelity] = False
        for f, b in enumerate(self.cfg.backends):
            if b.budget_evaluations is not None:
                used = self.n_by_backend[b.name] + sum(
                    t.fidelity == f and not t.payload.get("stage") for t in self.pending.values()
                )
                if used >= b.budget_evaluations:
                    allowed[:, f] = False
        # a cheaper level is only worth running where the top level can still follow
        allowed[:, :-1] &= allowed[:, -1:]
        return allowed

    def costs(self) -> list[float]:
        """The acquisition's cost of one evaluation at each fidelity, in the unit of the
        budget that binds: CPU seconds (the mean CPU time measured in the workers over the
        level's finished tasks, failed ones included; the backend's ``cost_s`` or estimate
        before any) when the campaign has a compute budget (``max_cpu_hours``), else one
        evaluation each, since then every evaluation spends the same share of
        ``max_evaluations``."""
        if self.cfg.max_cpu_hours is None:
            return [1.0] * len(self.backends)
        out = []
        median_smiles = sorted(self.smiles, key=len)[len(self.smiles) // 2]
        for cls, b in zip(self.backends, self.cfg.backends, strict=True):
            measured = self.cpu_by_backend[b.name]
            if measured:
                out.append(float(np.mean(measured)))
            elif b.cost_s is not None:
                out.append(b.cost_s)
            else:
                out.append(float(cls(**b.params).cost_estimate(EvalInput(median_smiles))))
        return [max(c, 1e-3) for c in out]

    def pair_costs(self) -> np.ndarray | None:
        """``(n_pool, n_f)`` expected CPU seconds of each (molecule, level), or None
        without a compute budget.

        The backend's per-molecule ``cost_estimate`` (a DFT calculation on pentacene
        costs ~25x one on pyrazine), scaled per level so that over the molecules
        evaluated at that level it averages to :meth:`costs` (the measured mean; the
        estimate or ``cost_s`` before any). Used to never start work expected to
        overrun the budget; the acquisition scores with the per-level means (with
        per-molecule costs, EI per CPU second prefers many cheap, unpromising DFT
        calculations to the one expensive calculation on the best candidate).
        """
        if self.cfg.max_cpu_hours is None:
            return None
        if self._cost_estimates is None:
            est = np.empty((len(self.smiles), len(self.backends)))
            for f, (cls, b) in enumerate(zip(self.backends, self.cfg.backends, strict=True)):
                backend = cls(**b.params)
                est[:, f] = [backend.cost_estimate(EvalInput(s)) for s in self.smiles]
            self._cost_estimates = np.maximum(est, 1e-3)
        est = self._cost_estimates
        out = np.empty_like(est)
        for f, mean_cost in enumerate(self.costs()):
            ref = est[self.done[:, f], f] if self.done[:, f].any() else np.median(est[:, f])
            out[:, f] = est[:, f] * (mean_cost / float(np.mean(ref)))
        return out

    def _initial_design(self, n: int, allowed: np.ndarray) -> list[tuple[int, int]]:
        """Max-min Tanimoto-diverse molecules at the cheapest fidelity."""
        cand = np.flatnonzero(allowed[:, 0])
        if len(cand) == 0:
            return []
        fps = self.fingerprints.astype(np.float32)
        chosen_rows = [i for i, f, _ in self.observations] + [
            t.payload["mol_index"] for t in self.pending.values() if not t.payload.get("stage")
        ]
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

    def _refit(self) -> MoleculeSurrogate:
        from agent.surrogates.molecule_gp import MoleculeSurrogate, Observation

        signature = (len(self.observations), self.n_evaluations)
        if self.surrogate is None:
            self.surrogate = MoleculeSurrogate(
                n_fidelities=len(self.cfg.backends), seed=self.cfg.seed
            )
        if signature != self._fit_signature:
            obs = [Observation(i, f, v) for i, f, v in self.observations]
            self.surrogate.fit(self.fingerprints, obs)
            self._fit_signature = signature
            self.n_refits += 1
            self._log_calibration()
        return self.surrogate

    def refit_molecule_model(self) -> MoleculeSurrogate | None:
        """Refit the molecule surrogate on every stored result (e.g. before the final
        model is logged); None while there are too few results for a model."""
        if len(self.observations) < 2:
            return None
        return self._refit()

    def _log_calibration(self) -> None:
        """Leave-out calibration of the refitted surrogate, as a ``molecule_refit`` event.

        Levels are named by backend; the top level's entry holds out only its value
        (the molecule's cheaper values stay known), ``"<top>, molecule unseen"`` the
        whole molecule (see
        :meth:`MoleculeSurrogate.calibration`). Errors in the objective's units.
        """
        model = self.surrogate
        names = [b.name for b in self.cfg.backends]
        cal = model.calibration(seed=self.cfg.seed + self.n_refits)
        label = {"top": names[-1], "top_unseen": f"{names[-1]}, molecule unseen"}
        by_level = {(names[int(k)] if k.isdigit() else label[k]): v for k, v in cal.items()}
        top = cal.get("top")
        self.last_holdout_mae = top["mae"] if top else None
        self.store.log_event(
            "molecule_refit", n_refit=self.n_refits, n_evaluations=self.n_evaluations,
            n_by_level={n: int(np.sum(model.obs_f == f)) for f, n in enumerate(names)},
            objective=self.cfg.objective, rho=model.rho().tolist(),
            level_correlation=model.level_correlation().tolist(),
            noise_sd=(np.sqrt(model.noise()) * model.y_scale).tolist(),
            calibration=by_level,
        )

    def ask(self, n: int) -> list[Task]:
        """Up to ``n`` new tasks (never more than the remaining budget allows)."""
        if self.stop_reason():
            return []
        n = min(n, self.cfg.max_evaluations - self.n_evaluations - len(self.pending))
        if n <= 0:
            return []
        if self._molecule_stage_exhausted():
            if self.stage is None:
                return []
            tasks = self.stage.ask(n)
            for task in tasks:
                self.pending[task.request_id] = task
            return tasks
        n_mol_pending = sum(not t.payload.get("stage") for t in self.pending.values())
        n = min(n, self.molecule_budget - self.n_molecule_evaluations - n_mol_pending)
        allowed = self._allowed()
        pair_costs = self.pair_costs()
        if pair_costs is not None:
            # never start work expected to overrun the compute budget
            left = self.cfg.max_cpu_hours * 3600 - self.spent_cpu_s - sum(
                pair_costs[t.payload["mol_index"], t.fidelity] for t in self.pending.values()
                if not t.payload.get("stage"))
            allowed &= pair_costs <= left
        n_cheap = sum(1 for _, f, _ in self.observations if f == 0)
        if n_cheap + n_mol_pending < self.cfg.surrogate.n_initial or len(
            self.observations
        ) < 2:
            picks = self._initial_design(n, allowed)
        else:
            from agent.acquisition import select_batch

            surrogate = self._refit()
            picks = select_batch(
                surrogate,
                self.fingerprints,
                q=n,
                costs=self.costs(),
                allowed=allowed,
                pending=[(t.payload["mol_index"], t.fidelity) for t in self.pending.values()
                         if not t.payload.get("stage")],
                best_value=self.best_value(),
                direction=self.cfg.direction,
                seed=self.cfg.seed + self.n_evaluations,
            )
        tasks = []
        for i, f in picks:
            if not allowed[i, f]:
                raise RuntimeError(f"acquisition proposed a disallowed pair {(i, f)}")
            allowed[i, f] = False
            b = self.cfg.backends[f]
            task = Task(
                request_id=uuid.uuid4().hex,
                backend=b.name,
                backend_params=dict(b.params),
                inp=EvalInput(smiles=self.smiles[i]),
                fidelity=f,
                payload={"mol_index": i, "molecule_id": int(self.mol_ids[i])},
            )
            self.pending[task.request_id] = task
            tasks.append(task)
        return tasks

    def tell(self, task: Task, result: EvalResult) -> bool:
        """Record a finished task; commits it to the store before returning."""
        self.pending.pop(task.request_id, None)
        if task.payload.get("stage") == "csp" and self.stage is not None and result.ok:
            self.stage.store_landscape(task, result)
        structure_id = task.payload.get("structure_id")
        inserted = self.store.record_evaluation(
            request_id=task.request_id,
            molecule_id=task.payload["molecule_id"],
            result=result,
            submitted_at=task.submitted_at or time.time(),
            n_attempts=max(task.n_attempts, 1),
            structure_id=structure_id,
        )
        if inserted:
            self._absorb(
                task.payload["molecule_id"], task.backend, result.status, result.reason,
                result.values, result.wall_s, structure_id, result.extra, cpu_s=result.cpu_s,
            )
        return inserted

    def forget_pending(self) -> None:
        """Drop in-flight bookkeeping (after the executor was stopped)."""
        self.pending.clear()
        if self.stage is not None:
            self.stage.pending_csp.clear()

    # -- summaries ------------------------------------------------------------------------
    def status(self) -> Status:
        return campaign_status(self.store, self.cfg, self)


def campaign_status(store: Store, cfg: CampaignConfig, camp: Campaign | None = None) -> Status:
    """Summarise a campaign from its store alone (works while another process runs it)."""
    evs = store.evaluations()
    top = cfg.backends[-1].name
    sign = 1.0 if cfg.direction == "minimize" else -1.0
    best, best_mol = None, None
    for ev in evs:
        v = ev.values.get(cfg.objective)
        if ev.backend == top and ev.ok and v is not None and (best is None or sign * (v - best) < 0):
            best, best_mol = v, ev.molecule_id
    mols = {m["id"]: m for m in store.molecules()}
    n_by = {b.name: 0 for b in cfg.backends}
    for ev in evs:
        n_by[ev.backend] = n_by.get(ev.backend, 0) + 1
    finished = store.get_meta("finished") == "1"
    reason = camp.stop_reason() if camp is not None else ""
    if not reason and finished:
        reason = store.get_meta("stop_reason") or "stopped (no reason recorded)"
    note = ""
    if best is None:
        n_top = [ev.ok for ev in evs if ev.backend == top]
        if not any(m["is_valid"] for m in mols.values()):
            note = "no valid molecule in pool"
        elif not n_top:
            note = f"no {top} evaluation yet"
        else:
            note = f"all {len(n_top)} {top} evaluations failed"
    return Status(
        name=cfg.name,
        n_evaluations=len(evs),
        n_failed=sum(not ev.ok for ev in evs),
        n_by_backend=n_by,
        spent_cpu_s=float(sum(ev.cpu_s for ev in evs)),
        spent_wall_s=float(sum(ev.wall_s for ev in evs)),
        best=best,
        best_smiles=mols[best_mol]["smiles"] if best_mol else None,
        best_name=mols[best_mol]["name"] if best_mol else None,
        max_evaluations=cfg.max_evaluations,
        finished=finished,
        stop_reason=reason,
        best_note=note,
    )


_CREATING = ".creating-"
#: a hidden creation folder this old (seconds) and not locked was left by a killed creation
STALE_CREATION_S = 60.0


def remove_stale_creations(runs_dir: Path, min_age_s: float = STALE_CREATION_S) -> list[Path]:
    """Remove the hidden ``.NAME.creating-*`` folders in ``runs_dir`` that a creation killed
    before its rename left behind (SIGKILL, OOM): those unchanged for ``min_age_s``
    seconds whose store lock no process holds. Returns the folders removed."""
    import fcntl

    removed = []
    now = time.time()
    for path in Path(runs_dir).glob(f".*{_CREATING}*"):
        try:
            if path.is_symlink() or not path.is_dir() or now - path.stat().st_mtime < min_age_s:
                continue
            lock = path / "lock"
            if lock.exists():
                fd = os.open(lock, os.O_RDONLY)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a creation in progress
                finally:
                    os.close(fd)
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def discard_unstarted(directory: Path) -> bool:
    """Remove a campaign directory in which nothing was evaluated or sent to a lab (after a
    start that failed, e.g. without a connection to the Ray cluster), so that its name is
    free again. Returns True if it was removed; a campaign in use or damaged is kept."""
    from agent.store import StoreDamagedError, StoreLockedError

    try:
        with Store(directory / STORE_FILE, lock=True) as store:
            if store.count_evaluations()[0] or store.lab_experiments():
                return False
    except (StoreLockedError, StoreDamagedError, OSError):
        return False
    shutil.rmtree(directory, ignore_errors=True)
    return True


def load_stored_config(store: Store, *, max_evaluations: int | None = None) -> CampaignConfig:
    """The config kept in ``store``, validated (with ``max_evaluations`` applied first)."""
    data = parse_toml(store.get_meta("config_toml") or "", "stored config")
    if max_evaluations is not None:
        data["max_evaluations"] = max_evaluations
    try:
        return parse_config(data)
    except ConfigError as exc:
        raise ConfigError(f"campaign store {store.path.parent}: stored {exc}") from None


def dump_status_json(status: Status) -> str:
    return json.dumps(status.to_dict(), indent=2, sort_keys=True)
