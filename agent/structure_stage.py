"""The structure stage of a campaign: CSP landscapes, then structure-level refinement.

Once the molecule stage has spent its share of the budget, the best molecules at the
top molecule fidelity get a crystal structure prediction (the ``csp`` backend, a
request like any other, run on Ray). Its unique minima are stored in the campaign
store (``structures`` table). Then, batch by batch, a Delta-learning GP over
structure descriptors (:mod:`agent.refine_acquisition`) chooses which predicted
structures get the expensive structure-level backend (``refine``, e.g. periodic
GFN2-xTB or fragment DFT), aiming to identify the true low-energy set with few
expensive calculations. A structure computed at that level is never recomputed.

Lab evidence: when a lab adapter is configured, the molecule whose landscape is
ready is sent for crystallisation; a measured PXRD pattern matched to a predicted
structure marks it *observed*, which the acquisition computes first and uses as a
soft constraint that it is low in energy (see :mod:`agent.refine_acquisition`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.executor import Task
from sim_backends.base import EvalInput, EvalResult

if TYPE_CHECKING:
    from agent.campaign import Campaign


@dataclass
class LandscapeState:
    """One molecule's landscape as the refinement loop sees it."""

    molecule_id: int
    smiles: str
    ids: list[str]
    cifs: list[str]
    ff_kjmol: np.ndarray  # cheap-level (force field) lattice energies, kJ/mol per molecule
    n_atoms: np.ndarray
    computed: dict[int, float] = field(default_factory=dict)  # index -> expensive energy
    failed: set[int] = field(default_factory=set)
    observed: set[int] = field(default_factory=set)
    features: np.ndarray | None = None
    f_vib: dict[int, float] = field(default_factory=dict)  # index -> F_vib (free-energy level)
    f_failed: set[int] = field(default_factory=set)
    costs: dict[str, np.ndarray] = field(default_factory=dict)  # backend -> estimated CPU s per structure
    model: Any = None  # the last Delta-GP fitted for a decision ...
    model_computed: dict[int, float] | None = None  # ... and the computed set it saw
    dimer_records: dict[int, list] = field(default_factory=dict)  # index -> fragment-DFT dimer records
    fragment: list | None = None  # FragmentTerms per structure (fragment-DFT refinement only)
    fragment_error: str | None = None  # why the fragment terms could not be computed

    def index(self, structure_id: str) -> int | None:
        try:
            return self.ids.index(structure_id)
        except ValueError:
            return None


class StructureStage:
    """Structure-stage bookkeeping and decisions for a :class:`Campaign`."""

    def __init__(self, campaign: Campaign) -> None:
        from sim_backends.registry import backend_class

        self.campaign = campaign
        self.cfg = campaign.cfg.structures
        for b in (self.cfg.csp, self.cfg.refine, self.cfg.free_energy):
            if b is not None:
                backend_class(b.name)  # an unknown name fails here, before any work
        self.csp_done: set[int] = set()  # molecule ids with a CSP evaluation (ok or failed)
        self.landscapes: dict[int, LandscapeState] = {}
        self.pending_csp: set[int] = set()
        self.n_evaluations = 0
        #: one record per Delta-GP refit made for a decision (see :meth:`_refit`),
        #: read by :class:`agent.tracking.Tracker`
        self.refits: list[dict[str, Any]] = []
        #: backend -> measured / estimated CPU s of each finished structure task
        self.cpu_ratios: dict[str, list[float]] = {}

    # -- state --------------------------------------------------------------------------
    def load_landscape(self, molecule_id: int) -> None:
        rows = self.campaign.store.structures(molecule_id)[: self.cfg.max_structures]
        if not rows:
            return
        from pymatgen.core import Structure

        smiles = self._smiles(molecule_id)
        n_atoms = np.array([len(Structure.from_str(r["cif"], fmt="cif")) for r in rows])
        self.landscapes[molecule_id] = LandscapeState(
            molecule_id=molecule_id,
            smiles=smiles,
            ids=[r["id"] for r in rows],
            cifs=[r["cif"] for r in rows],
            ff_kjmol=np.array([r["energy_kjmol"] for r in rows], dtype=float),
            n_atoms=n_atoms,
        )

    def absorb(self, molecule_id: int, backend: str, structure_id: str | None,
               status: str, values: dict[str, float], extra: dict[str, Any] | None = None,
               *, cpu_s: float = 0.0) -> None:
        """Fold one stored structure-stage evaluation into the state (``extra``: the
        result's extra record; the per-dimer records of fragment DFT are kept from it;
        ``cpu_s``: the CPU seconds it was charged, which calibrate the cost model)."""
        self.n_evaluations += 1
        if backend == self.cfg.csp.name and structure_id is None:
            self.csp_done.add(molecule_id)
            self.pending_csp.discard(molecule_id)
            if status == "ok" and molecule_id not in self.landscapes:
                self.load_landscape(molecule_id)
            return
        land = self.landscapes.get(molecule_id)
        if land is None or structure_id is None:
            return
        i = land.index(structure_id)
        if i is None:
            return
        level = next((b for b in (self.cfg.refine, self.cfg.free_energy)
                      if b is not None and b.name == backend), None)
        if level is not None and cpu_s > 0:
            self.cpu_ratios.setdefault(backend, []).append(cpu_s / self._estimates(land, level)[i])
        if self.cfg.free_energy is not None and backend == self.cfg.free_energy.name:
            f = values.get("f_vib_kjmol")
            if status == "ok" and f is not None and np.isfinite(f):
                land.f_vib[i] = float(f)
            else:
                land.f_failed.add(i)
            return
        energy = values.get("energy_kjmol")
        if status == "ok" and energy is not None and np.isfinite(energy):
            land.computed[i] = float(energy)
            if extra and isinstance(extra.get("dimers"), list):
                land.dimer_records[i] = extra["dimers"]
        else:
            land.failed.add(i)

    def store_landscape(self, task: Task, result: EvalResult) -> None:
        """Put a CSP result's minima into the ``structures`` table (before it is told)."""
        records = result.extra.pop("landscape", None) or []
        mol_id = task.payload["molecule_id"]
        rows = [
            {
                "id": f"m{mol_id}-{r['id']}",
                "molecule_id": mol_id,
                "source": result.backend,
                "energy_kjmol": r["energy_kjmol"],
                "density_gcm3": r.get("density_gcm3"),
                "space_group": r.get("space_group"),
                "z": r.get("z"),
                "multiplicity": r.get("multiplicity", 1),
                "cif": r["cif"],
            }
            for r in records
        ]
        if rows:
            self.campaign.store.add_structures(rows)
        result.extra["n_structures_stored"] = len(rows)

    def mark_observed(self, molecule_id: int, structure_id: str) -> None:
        land = self.landscapes.get(molecule_id)
        if land is not None and (i := land.index(structure_id)) is not None:
            land.observed.add(i)

    # -- decisions ----------------------------------------------------------------------
    @property
    def remaining(self) -> int:
        return self.cfg.budget_evaluations - self.n_evaluations - len(self.pending_tasks())

    def pending_tasks(self) -> list[Task]:
        return [t for t in self.campaign.pending.values() if t.payload.get("stage")]

    def csp_candidates(self) -> list[int]:
        """Molecule ids that should get CSP: best at the top molecule fidelity first."""
        c = self.campaign
        top = c.top_fidelity
        sign = c._sign()
        best: dict[int, float] = {}
        for i, f, v in c.observations:
            if f == top:
                mid = int(c.mol_ids[i])
                best[mid] = min(best.get(mid, np.inf), sign * v)
        n_wanted = self.cfg.n_molecules - len(self.landscapes) - len(self.pending_csp)
        if n_wanted <= 0:
            return []
        if any(not t.payload.get("stage") for t in c.pending.values()):
            return []  # molecule-stage results still arriving may change the ranking
        ranked = sorted(best, key=best.get)
        return [m for m in ranked if m not in self.csp_done and m not in self.pending_csp][:n_wanted]

    def _features(self, land: LandscapeState) -> np.ndarray:
        if land.features is None:
            from pymatgen.core import Structure
            from pymatgen.io.ase import AseAtomsAdaptor

            from sim_backends.descriptors import structure_features

            atoms = [AseAtomsAdaptor.get_atoms(Structure.from_str(c, fmt="cif")) for c in land.cifs]
            n_mol = [max(1, round(len(a) / self._atoms_per_molecule(land))) for a in atoms]
            land.features = structure_features(atoms, n_mol, cheap_energies_kjmol=land.ff_kjmol)
        return land.features

    @staticmethod
    def _atoms_per_molecule(land: LandscapeState) -> int:
        from rdkit import Chem

        return Chem.AddHs(Chem.MolFromSmiles(land.smiles)).GetNumAtoms()

    def ask(self, n: int) -> list[Task]:
        """Up to ``n`` structure-stage tasks (CSP first, then refinement)."""
        n = min(n, self.remaining)
        tasks: list[Task] = []
        if n <= 0:
            return tasks
        for mol_id in self.csp_candidates()[:n]:
            tasks.append(self._task(mol_id, self.cfg.csp.name, dict(self.cfg.csp.params),
                                    EvalInput(self._smiles(mol_id)), stage="csp"))
            self.pending_csp.add(mol_id)
        n -= len(tasks)
        if n <= 0 or not self.landscapes:
            return tasks
        from agent.refine_acquisition import select_structures, split_levels

        pending = [t.payload["structure_id"] for t in self.pending_tasks()
                   if t.payload.get("stage") == "refine"]
        pending_free = [t.payload["structure_id"] for t in self.pending_tasks()
                        if t.payload.get("stage") == "free_energy"]
        for land in self.landscapes.values():
            if n <= 0:
                break
            pend = [i for sid in pending if (i := land.index(sid)) is not None]
            blocked = set(land.computed) | land.failed | set(pend)
            if len(blocked) >= len(land.ids) and not self._free_energy_open(land):
                continue
            computed = dict(land.computed)
            seed = self.campaign.cfg.seed + len(computed)
            model = self._refit(land, seed)
            top_k = min(self.cfg.top_k, len(land.ids))
            n_refine, free_picks = n, []
            if self.cfg.free_energy is not None:
                pend_free = [i for sid in pending_free if (i := land.index(sid)) is not None]
                n_refine, free_picks = split_levels(
                    land.ff_kjmol, self._inputs(land, model), computed, land.f_vib, blocked,
                    set(pend_free) | land.f_failed, self._costs(land, self.cfg.refine),
                    self._costs(land, self.cfg.free_energy), n, top_k=top_k,
                    window_kjmol=self.cfg.window_kjmol, seed=seed, model=model)
            for i in free_picks:
                tasks.append(self._structure_task(land, i, self.cfg.free_energy, "free_energy"))
                n -= 1
            if n_refine <= 0 or len(blocked) >= len(land.ids):
                continue
            # failed structures are treated as pending so they are never proposed again
            picks = select_structures(
                land.ff_kjmol, self._inputs(land, model), computed, pend + sorted(land.failed),
                costs=(self._costs(land, self.cfg.refine) if self.cfg.free_energy is not None
                       else (land.n_atoms / land.n_atoms.min()) ** 2.0),
                q=n_refine, seed=seed, top_k=top_k, window_kjmol=self.cfg.window_kjmol,
                observed=land.observed or None, model=model,
            )
            for i in picks:
                tasks.append(self._structure_task(land, i, self.cfg.refine, "refine"))
                n -= 1
        return tasks

    def _refit(self, land: LandscapeState, seed: int) -> Any:
        """Fit the landscape's Delta-GP on what is computed and record its held-out error.

        Appends ``{"molecule_id", "n_computed", "loo_mae_kjmol", "calibration", "surrogate"}`` to
        :attr:`refits` when the computed set changed since
        the last record (leave-one-out residuals in closed form, hyperparameters fixed:
        the error on a structure the GP has not seen, without refitting per point).
        """
        from agent.surrogates.structure_gp import SurrogateError

        try:
            model = self._fit_model(land, seed)
        except SurrogateError:
            return None  # select_structures refits and reports the error itself
        land.model, land.model_computed = model, dict(land.computed)
        surrogate = getattr(model, "kind", "soap-delta-gp")
        if self._fragment_mode() and land.fragment_error:  # say why the fragment model is not used
            surrogate += f" (fragment terms failed: {land.fragment_error[:200]})"
        n = len(land.computed)
        last = next((r for r in reversed(self.refits) if r["molecule_id"] == land.molecule_id), None)
        if n >= 2 and (last is None or last["n_computed"] != n):
            self.refits.append({
                "molecule_id": land.molecule_id, "n_computed": n,
                "loo_mae_kjmol": model.loo_mae_kjmol, "calibration": float(model.calibration),
                "surrogate": surrogate,
            })
        return model

    def refit_all(self) -> None:
        """Refit each landscape's Delta-GP whose model has not seen every computed
        structure (at the end of a run, so the recorded and logged models are final)."""
        for land in self.landscapes.values():
            if len(land.computed) >= 2 and land.model_computed != land.computed:
                self._refit(land, self.campaign.cfg.seed)

    # -- surrogate ----------------------------------------------------------------------
    def _fragment_mode(self) -> bool:
        """Whether refinement is the fragment DFT level whose energy splits into cheap terms
        plus per-dimer corrections (``dft-crystal`` with its long-range term, the default)."""
        ref = self.cfg.refine
        return ref is not None and ref.name == "dft-crystal" and bool(ref.params.get("long_range", True))

    def _fragment_terms(self, land: LandscapeState) -> list | None:
        """:func:`~sim_backends.fragment_terms.fragment_terms` of every structure (cached);
        None, with the reason kept in ``land.fragment_error``, when they cannot be computed."""
        if land.fragment is None and land.fragment_error is None:
            from sim_backends.base import SetupError
            from sim_backends.fragment_terms import landscape_fragment_terms
            from sim_backends.structures import load_crystal

            p = self.cfg.refine.params
            try:
                land.fragment = landscape_fragment_terms(
                    [load_crystal(c, land.smiles) for c in land.cifs], float(p.get("cutoff_A", 4.0)),
                    str(p.get("cutoff_mode", "contact")), str(p.get("functional", "pbe")),
                    baselines=tuple(self.cfg.dimer_baselines))
            except (SetupError, ValueError, RuntimeError) as exc:
                land.fragment_error = str(exc)
        return land.fragment

    def _fit_model(self, land: LandscapeState, seed: int) -> Any:
        """The landscape's surrogate on what is computed: the fragment dimer GP for fragment
        DFT refinement (:mod:`agent.surrogates.fragment_gp`), else the SOAP Delta-GP."""
        if self._fragment_mode() and (terms := self._fragment_terms(land)) is not None:
            from agent.surrogates.fragment_gp import FragmentDeltaModel
            from sim_backends.base import SetupError
            from sim_backends.fragment_terms import dimer_deltas

            deltas = {}
            for i, recs in land.dimer_records.items():
                if i in land.computed:
                    try:
                        deltas[i] = dimer_deltas(terms[i], recs)
                    except SetupError:
                        pass  # other cutoff than the terms (changed config): not used
            model = FragmentDeltaModel(terms, land.ff_kjmol, seed=seed)
            return model.fit(deltas, {i: land.computed[i] for i in deltas})
        from agent.refine_acquisition import fit_delta_model

        return fit_delta_model(land.ff_kjmol, self._features(land), land.computed, seed=seed)

    def _inputs(self, land: LandscapeState, model: Any) -> np.ndarray:
        """The ``X`` the acquisition passes to ``model``: structure indices for the fragment
        model, the structure descriptors otherwise."""
        from agent.surrogates.fragment_gp import FragmentDeltaModel

        if isinstance(model, FragmentDeltaModel):
            return FragmentDeltaModel.index_rows(len(land.ids))
        return self._features(land)

    def _structure_task(self, land: LandscapeState, i: int, backend: Any, stage: str) -> Task:
        inp = EvalInput(land.smiles, structure_cif=land.cifs[i], structure_id=land.ids[i])
        return self._task(land.molecule_id, backend.name, dict(backend.params), inp, stage=stage,
                          structure_id=land.ids[i])

    def _free_energy_open(self, land: LandscapeState) -> bool:
        """Computed structures still without a free-energy result (or attempt)."""
        return self.cfg.free_energy is not None and any(
            i not in land.f_vib and i not in land.f_failed for i in land.computed)

    def _costs(self, land: LandscapeState, backend: Any) -> np.ndarray:
        """Expected CPU seconds of ``backend`` for every structure: the estimate
        (:meth:`_estimates`) scaled by the mean ratio of measured to estimated CPU
        seconds over the backend's finished structure tasks (failed ones included), so
        the mean cost is the measured one while larger structures stay dearer; the bare
        estimate before any task finished."""
        ratios = self.cpu_ratios.get(backend.name)
        scale = float(np.mean(ratios)) if ratios else 1.0
        return np.maximum(self._estimates(land, backend) * scale, 1e-3)

    def _estimates(self, land: LandscapeState, backend: Any) -> np.ndarray:
        """Estimated CPU seconds of ``backend`` for every structure (its ``cost_s``
        override or its own ``cost_estimate``), cached per landscape."""
        if backend.name not in land.costs:
            if backend.cost_s is not None:
                land.costs[backend.name] = np.full(len(land.ids), float(backend.cost_s))
            else:
                from sim_backends.registry import backend_class

                b = backend_class(backend.name)(**backend.params)
                land.costs[backend.name] = np.array([
                    max(float(b.cost_estimate(EvalInput(land.smiles, structure_cif=c))), 1e-3)
                    for c in land.cifs])
        return land.costs[backend.name]

    def _smiles(self, mol_id: int) -> str:
        return self.campaign.smiles[self.campaign._index_of[mol_id]]

    def _task(self, mol_id: int, backend: str, params: dict[str, Any], inp: EvalInput,
              stage: str, structure_id: str | None = None) -> Task:
        return Task(
            request_id=uuid.uuid4().hex, backend=backend, backend_params=params, inp=inp,
            fidelity=0,
            payload={"molecule_id": mol_id, "mol_index": self.campaign._index_of[mol_id],
                     "stage": stage, "structure_id": structure_id},
        )

    def is_exhausted(self) -> bool:
        """No structure-stage work can be proposed now or later."""
        if self.remaining <= 0:
            return True
        if self.csp_candidates() or self.pending_csp or any(
            not t.payload.get("stage") for t in self.campaign.pending.values()
        ):
            return False
        return all(
            len(set(land.computed) | land.failed) >= len(land.ids) and not self._free_energy_open(land)
            for land in self.landscapes.values()
        )

    def corrected_landscape(self, molecule_id: int) -> dict[str, np.ndarray] | None:
        """Force-field and GP-corrected energies (mean, std) of every structure, from the
        model of the last decision when nothing was computed since, else a fresh fit;
        ``held_out_kjmol`` (leave-one-out predictions of the computed structures, None when
        the model's residuals do not cover them all) and ``loo_mae_kjmol`` (the model's own
        figure, the one logged to MLflow per refit)."""
        land = self.landscapes.get(molecule_id)
        if land is None or not land.computed:
            return None
        model = land.model
        if model is None or land.model_computed != land.computed:
            model = self._fit_model(land, self.campaign.cfg.seed)
        mean, std = model.predict(self._inputs(land, model))
        computed = np.array(sorted(land.computed))
        held_out = None
        residual = model.loo_residual_kjmol
        if residual is not None and len(residual) == len(computed):  # computed minus LOO prediction
            held_out = np.array([land.computed[i] for i in computed]) - residual
        return {"ff_kjmol": land.ff_kjmol, "corrected_kjmol": land.ff_kjmol + mean,
                "std_kjmol": std, "computed": computed, "held_out_kjmol": held_out,
                "loo_mae_kjmol": model.loo_mae_kjmol}
