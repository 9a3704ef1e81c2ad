"""The structure stage: CSP landscapes of the best molecules, then structure-level
refinement of their predicted structures.

Once the stages it waits for (the molecule stage) are exhausted, the best molecules at
the top molecule level (ranked from the store's evaluations by the campaign objective)
get a crystal structure prediction (the ``csp`` backend, a request like any other).
Its unique minima are committed to the store's ``structures`` table in the same
transaction as the CSP result. Then, batch by batch, a Delta-learning surrogate
(:mod:`agent.refine_acquisition`) chooses which predicted structures get the structure
levels (``[[structures.levels]]``, or ``refine`` and ``free_energy``), aiming to identify
the true low-energy set with few expensive calculations. A structure computed at a
level is never recomputed there.

Levels: the first level ranks the landscape (its value key: the level's ``value`` or
its backend's declared ``objective_key``); a second level's value is added to it for
the structures where both are computed (E + F_vib), the budget split between the two
by :func:`agent.refine_acquisition.split_levels`. A level whose backend declares
``level_kind = "property"`` (a crystal property such as ``mobility-xtb``) is a property
level (:mod:`agent.stages.properties`): computed on the low-energy structures the first
level has ranked, with the molecule values it needs (lambda+) read from the molecule
stage's rows, and summarised as a landscape property with uncertainty. Costs are CPU seconds from one
:class:`~agent.stages.costs.CostModel` per level (the backend's estimate per structure,
fitted to the measured CPU seconds). A first level whose backend declares a fragment
decomposition (:meth:`~sim_backends.base.Backend.fragment_terms_settings`) is modelled
per dimer (:mod:`agent.surrogates.fragment_gp`), others by the SOAP Delta-GP.

When the stage's evaluation budget (``budget_evaluations``) binds before the CPU budget
(the CPU left would pay for more of the open tasks than there are evaluations left), an
evaluation is priced as the molecule stage prices it
(:func:`~agent.stages.costs.evaluation_slot_price`): the acquisition weighs each task by
``max(CPU s, CPU left / evaluations left)``, so a cheaper cell is not preferred for a
saving the budget cannot use (the cheap level's global minimum, a Z = 2 cell, was left
for three Z = 1 cells with a third of the CPU unspent).

A CSP is started only when the CPU left pays for it and for the first ranking-level
evaluation of its landscape after it (each at its expected cost times its level's cost
margin; :meth:`StructureStage._follow_up` prices that evaluation on the cells the molecule
stage's ESF levels already predicted for the molecule): a landscape that nothing could
rank is not computed (a new user's small ESF campaign spent 20 % of its budget on a CSP
that left 7 CPU s, less than any periodic evaluation of it). Until its landscape is
stored, a CSP in flight holds the expected cost of that evaluation too; when nothing fits,
the stop reason says so.

Shared through the store only: the molecule ranking (``evaluations``), landscapes
(``structures``), observed forms (``observed_forms``, written by the lab stage: the
acquisition computes them first and uses them as a soft constraint that they are low in
energy), and one ``structure_refit`` event per surrogate refit with its held-out error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.stages.base import Request
from agent.stages.costs import COST_FIT_PROBABILITY, CostModel
from sim_backends.base import EvalInput

if TYPE_CHECKING:
    from pathlib import Path

    from agent.config import CampaignConfig, StructureLevelConfig
    from agent.surrogates.base import StructureSurrogate
    from agent.store import Evaluation, Store
    from sim_backends.base import EvalResult
    from sim_backends.landscape import Landscape

NAME = "structures"
CSP, REFINE, FREE = "csp", "refine", "free_energy"

#: sd (kJ/mol per molecule) of periodic GFN2-xTB relative lattice energies against fragment DFT
#: (PBE-D3(BJ)/def2-SVP two-body + D3 ATM + long-range RESP electrostatics, on the same
#: force-field geometries): the difference of mean-centred energies over the 16 pyrazine
#: structures computed at both levels (``data/landscapes/pyrazine_xtb`` and ``pyrazine_dft``;
#: MAD 2.07, Spearman 0.77; the force field's sd 5.03), benchmarks/results/NOTES.md, stop 46.
#: One molecule: an estimate of the level's own polymorph-ranking error, not a calibration.
PERIODIC_XTB_ENERGY_SD_KJMOL = 3.09
#: where :data:`PERIODIC_XTB_ENERGY_SD_KJMOL` comes from, as printed beside it
PERIODIC_XTB_ENERGY_SD_SOURCE = "periodic GFN2-xTB's sd against fragment DFT on 16 pyrazine structures"


def ranking_level_sd(level: StructureLevelConfig) -> tuple[float, str]:
    """The ranking level's own error in relative lattice energies (kJ/mol per molecule) and
    where it comes from: :data:`PERIODIC_XTB_ENERGY_SD_KJMOL` for periodic GFN2-xTB
    (``xtb-crystal`` at its default method, or ``replay-crystal`` serving a stored periodic
    GFN2-xTB landscape); ``(0.0, "")`` for any other level, whose own error is not measured
    (the landscape property then treats it as exact, and says so)."""
    from sim_backends.base import SetupError

    params = dict(level.params)
    if level.name == "xtb-crystal":
        periodic_xtb = str(params.get("method", "GFN2-xTB")) == "GFN2-xTB"
    elif level.name == "replay-crystal":
        from sim_backends.replay import stored_landscape

        try:
            periodic_xtb = bool(stored_landscape(str(params["landscape"]), str(params["cheap"]),
                                                 str(params["level"]))["periodic_xtb"])
        except (KeyError, SetupError):
            periodic_xtb = False
    else:
        periodic_xtb = False
    if periodic_xtb:
        return PERIODIC_XTB_ENERGY_SD_KJMOL, PERIODIC_XTB_ENERGY_SD_SOURCE
    return 0.0, ""


def _acquisition_why(reason: dict[str, Any] | None, cheap_kjmol: np.ndarray, i: int) -> dict[str, Any]:
    """A structure-acquisition request's ``why`` (:attr:`agent.stages.base.Request.why`) from
    :func:`~agent.refine_acquisition.select_structures`' reason for pick ``i``: the rule names the
    branch that chose it (a fixed text: the surrogate's utility, cheap-level order while the
    surrogate is not trusted, exploration, an observed form, ...), ``detail`` its figures and
    the pick's cheap-level rank and energy above the cheap minimum (``cheap_kjmol``), and a
    utility's pick adds its probability of the low-energy set (``value``), the index it was
    picked by (``rate``) and the CPU seconds it was divided by (``cost``)."""
    reason = dict(reason or {})
    e = np.asarray(cheap_kjmol, dtype=float)
    where = f"cheap-level rank {int(np.sum(e < e[i])) + 1} of {len(e)}, +{e[i] - e.min():.2f} kJ/mol"
    out: dict[str, Any] = {"rule": "structure acquisition: " + str(reason.pop("rule", "not recorded")),
                           "detail": "; ".join(t for t in (where, reason.get("detail")) if t)}
    if "value" in reason:
        out.update(kind="P(in the low-energy set)", value=reason["value"], rate=reason.get("rate"),
                   cost=reason.get("cost"), cost_unit="CPU s")
    return out


def level_value_keys(structures: Any) -> list[str]:
    """The value key of each structure level of a ``[structures]`` config: the level's
    ``value`` or its backend's declared ``objective_key``."""
    from sim_backends.registry import backend_class

    return [lv.value or backend_class(lv.name).objective_key for lv in structures.level_configs()]


@dataclass
class LandscapeState:
    """One molecule's landscape as the refinement loop sees it: the stored CSP minima
    (:class:`~sim_backends.landscape.Landscape`, each CIF parsed at most once) and what
    the structure levels have computed on them."""

    molecule_id: int
    landscape: Landscape
    computed: dict[int, float] = field(default_factory=dict)  # index -> first-level value
    failed: set[int] = field(default_factory=set)
    observed: set[int] = field(default_factory=set)
    features: np.ndarray | None = None
    f_vib: dict[int, float] = field(default_factory=dict)  # index -> second-level value
    f_failed: set[int] = field(default_factory=set)
    model: Any = None  # the last surrogate fitted for a decision ...
    model_computed: dict[int, float] | None = None  # ... and the computed set it saw
    dimer_records: dict[int, list] = field(default_factory=dict)  # index -> per-dimer records
    fragment: list | None = None  # FragmentTerms per structure (fragment levels only)
    fragment_error: str | None = None  # why the fragment terms could not be computed

    def __post_init__(self) -> None:
        self.smiles = self.landscape.smiles
        self.ids = self.landscape.ids
        self.ff_kjmol = self.landscape.energies(relative=False)  # cheap-level (CSP) lattice energies, kJ/mol per molecule
        self._index = {sid: i for i, sid in enumerate(self.ids)}

    def index(self, structure_id: str) -> int | None:
        return self._index.get(structure_id)

    def inp(self, i: int) -> EvalInput:
        return EvalInput(self.smiles, structure_cif=self.landscape.minima[i].cif(), structure_id=self.ids[i])


class StructureStage:
    """CSP and structure-level refinement (see the module docstring)."""

    name = NAME
    waits_for: tuple[str, ...] = ("molecule",)

    def __init__(self, cfg: CampaignConfig) -> None:
        from sim_backends.registry import backend_class

        self.campaign_cfg = cfg
        self.cfg = cfg.structures
        from agent.stages.properties import PropertyLevel, is_property_level

        levels = self.cfg.level_configs()
        for b in (self.cfg.csp, *levels):
            backend_class(b.name)  # an unknown name fails here, before any work
        keys = level_value_keys(self.cfg)
        #: property levels (agent/stages/properties.py): computed on low-energy structures
        energy = [k for k, lv in enumerate(levels) if not is_property_level(lv.name)]
        #: the energy levels: the first ranks the landscape, a second is added to it
        self.levels: list[StructureLevelConfig] = [levels[k] for k in energy]
        #: the ranking level's own relative-energy error (kJ/mol per molecule; 0: not measured)
        self.ranking_sd_kjmol = ranking_level_sd(self.levels[0])[0] if self.levels else 0.0
        self.properties = [PropertyLevel(lv, cfg, k, ranking_sd_kjmol=self.ranking_sd_kjmol)
                           for lv, k in zip(levels, keys, strict=True) if is_property_level(lv.name)]
        #: the value key each energy level contributes (declared by its backend unless given)
        self.value_keys = [keys[k] for k in energy]
        self.cost_models = {lv.name: CostModel(lv.name, lv.params, lv.cost_s) for lv in levels}
        #: the CSP level's cost model (its own: a CSP backend may share a level's name)
        self.csp_cost = CostModel(self.cfg.csp.name, self.cfg.csp.params, self.cfg.csp.cost_s)
        self.store: Store | None = None
        self.csp_done: set[int] = set()  # molecule ids with a CSP evaluation (ok or failed)
        self.landscapes: dict[int, LandscapeState] = {}
        self.n_evaluations = 0
        #: evaluations this stage may use (set by the campaign: its budget_evaluations);
        #: prices an evaluation when that budget binds (module docstring)
        self.evaluation_share: int | None = None
        self._last_refit: dict[int, int] = {}  # molecule id -> n_computed of its last event
        #: the campaign directory (set by build_stages): a level with scf_guess="learned"
        #: trains the campaign's density model file there (sim_backends/density_model.py)
        self.directory: Path | None = None
        #: molecule id -> (fingerprint, decision model or None, result) of corrected_landscape
        self._corrected: dict[int, tuple[str, Any, dict[str, Any]]] = {}
        #: where the stage says what a slow step is doing (``crystal-agent report`` sets it)
        self.progress: Callable[[str], None] | None = None
        #: molecule id -> (evaluations stored when read, the cells its ESF levels predicted)
        self._known: dict[int, tuple[int, list[EvalInput]]] = {}

    @property
    def refine(self) -> StructureLevelConfig:
        return self.levels[0]

    @property
    def free_energy(self) -> StructureLevelConfig | None:
        return self.levels[1] if len(self.levels) > 1 else None

    # -- state --------------------------------------------------------------------------
    def restore(self, store: Store) -> None:
        self.store = store
        for prop in self.properties:
            prop.store = store
        self._smiles = {int(m["id"]): m["smiles"] for m in store.molecules(valid_only=True)}
        for ev in store.events("structure_refit"):
            self._last_refit[int(ev["molecule_id"])] = int(ev["n_computed"])

    def owns(self, ev: Evaluation) -> bool:
        return ev.structure_id is not None or ev.backend == self.cfg.csp.name

    def load_landscape(self, molecule_id: int) -> None:
        rows = self.store.structures(molecule_id)[: self.cfg.max_structures]
        if not rows:
            return
        from sim_backends.landscape import Landscape

        land = self.landscapes[molecule_id] = LandscapeState(
            molecule_id=molecule_id,
            landscape=Landscape.from_records(self._smiles[molecule_id], rows, name=f"m{molecule_id}"),
        )
        for prop in self.properties:  # values the molecule stage already computed on these structures
            prop.import_reused(land)

    def records(self, request: Request, result: EvalResult) -> dict[str, Any]:
        """A CSP result's minima as ``structures`` rows (committed with the result)."""
        if request.fidelity != 0 or request.structure_id is not None or not result.ok:
            return {}
        records = result.extra.pop("landscape", None) or []
        mol_id = request.molecule_id
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
        result.extra["n_structures_stored"] = len(rows)
        return {"structures": rows}

    def tell(self, request: Request | None, ev: Evaluation) -> None:
        """Fold one stored evaluation into the state (the per-dimer records of a fragment
        level are kept from its ``extra``; its CPU seconds fit the level's cost model)."""
        self.n_evaluations += 1
        molecule_id = int(ev.molecule_id)
        if ev.structure_id is None:  # CSP
            self.csp_done.add(molecule_id)
            if molecule_id in self._smiles:
                self.csp_cost.observe(EvalInput(self._smiles[molecule_id]), ev.cpu_s, ev.ok)
            if ev.ok and molecule_id not in self.landscapes:
                self.load_landscape(molecule_id)
            return
        land = self.landscapes.get(molecule_id)
        i = land.index(ev.structure_id) if land is not None else None
        prop = next((p for p in self.properties if p.name == ev.backend), None)
        if prop is not None and i is not None:
            self.cost_models[ev.backend].observe(land.inp(i), ev.cpu_s, ev.ok)
            prop.tell(molecule_id, i, ev)
            if request is not None:  # a new result (not a stored one replayed on restore)
                prop.log(land, self._energy_sd(land), self.cfg.window_kjmol, self._predicted(land, prop))
            return
        level = next((k for k, lv in enumerate(self.levels) if lv.name == ev.backend), None)
        if i is None or level is None:
            return
        self.cost_models[ev.backend].observe(land.inp(i), ev.cpu_s, ev.ok)
        value = ev.values.get(self.value_keys[level])
        good = ev.ok and value is not None and np.isfinite(value)
        if level == 1:
            if good:
                land.f_vib[i] = float(value)
            else:
                land.f_failed.add(i)
            return
        if good:
            land.computed[i] = float(value)
            if isinstance(ev.extra.get("dimers"), list):
                land.dimer_records[i] = ev.extra["dimers"]
            if request is not None:  # a new energy moves the landscape property (reused values)
                for prop in self.properties:
                    if prop.state(molecule_id).values:
                        prop.log(land, self._energy_sd(land), self.cfg.window_kjmol, self._predicted(land, prop))
        else:
            land.failed.add(i)

    def step(self) -> bool:
        return False

    def close(self) -> None:
        pass

    # -- decisions ----------------------------------------------------------------------
    def csp_candidates(self, pending: Sequence[Request]) -> list[int]:
        """Molecule ids that should get CSP: best at the top molecule level first (from the
        store; infeasible molecules, :mod:`agent.constraints`, left out), none while
        molecule-level results are still arriving."""
        pending_csp = {r.molecule_id for r in pending if r.stage == self.name and r.structure_id is None}
        n_wanted = self.cfg.n_molecules - len(self.landscapes) - len(pending_csp)
        if n_wanted <= 0 or any(r.stage in self.waits_for for r in pending):
            return []
        c = self.campaign_cfg
        sign = 1.0 if c.direction == "minimize" else -1.0
        best: dict[int, float] = {}
        for mid, v in self.store.values_of(c.backends[-1].name, c.objective):
            if np.isfinite(v):
                best[mid] = min(best.get(mid, np.inf), sign * v)
        if c.constraints:
            from agent.constraints import infeasible_molecules

            for mid in infeasible_molecules(self.store.evaluations(), c.constraints):
                best.pop(mid, None)
        ranked = sorted(best, key=lambda m: (best[m], m))
        return [m for m in ranked if m not in self.csp_done and m not in pending_csp][:n_wanted]

    def _features(self, land: LandscapeState) -> np.ndarray:
        if land.features is None:
            from sim_backends.descriptors import structure_features

            atoms = land.landscape.atoms()
            n_mol = [max(1, round(len(a) / self._atoms_per_molecule(land))) for a in atoms]
            land.features = structure_features(atoms, n_mol, cheap_energies_kjmol=land.ff_kjmol)
        return land.features

    @staticmethod
    def _atoms_per_molecule(land: LandscapeState) -> int:
        from rdkit import Chem

        return Chem.AddHs(Chem.MolFromSmiles(land.smiles)).GetNumAtoms()

    def _refresh_observed(self, land: LandscapeState) -> None:
        for sid in self.store.observed_forms(land.molecule_id):
            if (i := land.index(sid)) is not None:
                land.observed.add(i)

    def ask(self, n: int, pending: Sequence[Request]) -> list[Request]:
        """Up to ``n`` requests (CSP first, then the structure levels)."""
        out: list[Request] = []
        if n <= 0:
            return out
        budget = _Budget(self, pending)
        for mol_id in self.csp_candidates(pending):
            if len(out) >= n:
                break
            request = Request(stage=self.name, backend=self.cfg.csp.name, params=self.cfg.csp.params,
                              inp=EvalInput(self._smiles[mol_id]), molecule_id=mol_id, fidelity=0,
                              why={"rule": "CSP of a molecule the molecule stage ranks among its leaders"})
            # a CSP starts only when one ranking-level evaluation of its landscape fits after it
            if budget.take(request, then=None if budget.left is None else self._follow_up(mol_id)[:2]):
                out.append(request)
        n -= len(out)
        if n <= 0 or not self.landscapes:
            return out
        from agent.refine_acquisition import select_structures, split_levels

        mine = [r for r in pending if r.stage == self.name and r.structure_id is not None]
        pending_refine = [r.structure_id for r in mine if r.backend == self.refine.name]
        pending_free = [r.structure_id for r in mine if r.backend != self.refine.name]
        for land in self.landscapes.values():
            if n <= 0:
                break
            self._refresh_observed(land)
            for prop in self.properties:
                reqs = [r for r in prop.requests(land, n, self.cfg.window_kjmol, self.cfg.top_k, pending,
                                                 self._property_request) if budget.take(r)]
                out += reqs
                n -= len(reqs)
            if n <= 0:
                break
            pend = [i for sid in pending_refine if (i := land.index(sid)) is not None]
            blocked = set(land.computed) | land.failed | set(pend)
            if len(blocked) >= len(land.ids) and not self._free_energy_open(land):
                continue
            computed = dict(land.computed)
            seed = self.campaign_cfg.seed + len(computed)
            model = self._refit(land, seed)
            top_k = min(self.cfg.top_k, len(land.ids))
            n_refine, free_picks = n, []
            refine_costs = self._costs(land, self.refine)
            free_costs = self._costs(land, self.free_energy) if self.free_energy is not None else None
            price = self._slot_price(land, refine_costs, free_costs, blocked, budget.left, pending, len(out))
            if self.free_energy is not None:
                pend_free = [i for sid in pending_free if (i := land.index(sid)) is not None]
                n_refine, free_picks = split_levels(
                    land.ff_kjmol, self._inputs(land, model), computed, land.f_vib, blocked,
                    set(pend_free) | land.f_failed, np.maximum(refine_costs, price),
                    np.maximum(free_costs, price), n, top_k=top_k,
                    window_kjmol=self.cfg.window_kjmol, seed=seed, model=model)
            for i in free_picks:
                if budget.take(request := self._request(land, i, self.free_energy, 1,
                                                        {"rule": "second level on a computed structure (split_levels)"})):
                    out.append(request)
                    n -= 1
            # structures whose refinement does not fit the budget left are held back as
            # the pending ones are
            unaffordable = budget.unaffordable(self.refine.name, refine_costs)
            if n_refine <= 0 or len(blocked | set(unaffordable)) >= len(land.ids):
                continue
            # failed structures are treated as pending so they are never proposed again
            reasons: dict[int, dict[str, Any]] = {}
            picks = select_structures(
                land.ff_kjmol, self._inputs(land, model), computed,
                pend + sorted(land.failed | set(unaffordable)),
                costs=np.maximum(refine_costs, price), q=n_refine, seed=seed, top_k=top_k,
                window_kjmol=self.cfg.window_kjmol, observed=land.observed or None, model=model,
                reasons=reasons, **self.cfg.acquisition.select_kwargs(),
            )
            for i in picks:
                if budget.take(request := self._request(land, i, self.refine, 0, why=_acquisition_why(reasons.get(i), land.ff_kjmol, i))):
                    out.append(request)
                    n -= 1
        return out

    def _slot_price(self, land: LandscapeState, refine_costs: np.ndarray, free_costs: np.ndarray | None,
                    blocked: set[int], cpu_left: float | None, pending: Sequence[Request],
                    n_taken: int) -> float:
        """CPU seconds an evaluation is worth when the stage's evaluation budget binds
        (module docstring), else 0: from the open refinement (and second-level) tasks of
        ``land`` at their expected costs, the CPU left (``cpu_left``, after this ask's
        requests so far) and the evaluations left (share minus stored, in flight and
        ``n_taken`` asked now)."""
        if self.evaluation_share is None or cpu_left is None:
            return 0.0
        from agent.stages.costs import evaluation_slot_price

        slots = (self.evaluation_share - self.n_evaluations
                 - sum(1 for r in pending if r.stage == self.name) - n_taken)
        open_refine = [i for i in range(len(land.ids)) if i not in blocked]
        costs = [refine_costs[open_refine]]
        if free_costs is not None:
            costs.append(free_costs[[i for i in land.computed if i not in land.f_vib and i not in land.f_failed]])
        c = np.concatenate(costs)[:, None]
        return evaluation_slot_price(c, np.ones_like(c, dtype=bool), cpu_left, slots, [None])

    def _follow_up(self, molecule_id: int) -> tuple[float, float, str]:
        """``(expected CPU s, cost margin, level)`` of the cheapest ranking-level (first
        energy level) evaluation that could follow the CSP of ``molecule_id``: the level's
        cost model on the structures the molecule stage's levels already predicted for the
        molecule (the CIFs of an ESF level's ``extra["structures"]``: the same molecule's
        cells, in the demo the very same search), else on the molecule alone (the level's
        ``cost_s``, or its backend's estimate without a cell). A CSP is proposed only when
        its own cost and this one, each with its level's margin, fit the CPU left."""
        model = self.cost_models[self.refine.name]
        inps = self._known_structures(molecule_id) or [EvalInput(self._smiles[molecule_id])]
        return float(np.min(model.expected(inps))), model.fit_factor(), self.refine.name

    def _known_structures(self, molecule_id: int) -> list[EvalInput]:
        """The structures (CIFs) the molecule stage's evaluations of ``molecule_id`` report in
        ``extra["structures"]`` (ESF levels), as inputs for a structure-level cost model;
        read from the store once per number of stored evaluations."""
        n = self.store.count_evaluations()[0] if self.store is not None else 0
        cached = self._known.get(molecule_id)
        if cached is not None and cached[0] == n:
            return cached[1]
        inps: list[EvalInput] = []
        if self.store is not None:
            smiles = self._smiles[molecule_id]
            for b in dict.fromkeys(b.name for b in self.campaign_cfg.backends):
                for ev in self.store.evaluations(backend=b, status="ok"):
                    if ev.molecule_id != molecule_id or ev.structure_id is not None:
                        continue
                    for s in ev.extra.get("structures") or []:
                        if isinstance(s, dict) and s.get("cif"):  # an id of its own: the cost models cache by id
                            inps.append(EvalInput(smiles, structure_cif=str(s["cif"]),
                                                  structure_id=f"e{ev.id}-{s.get('id', len(inps))}"))
        self._known[molecule_id] = (n, inps)
        return inps

    def _cost_model(self, request: Request) -> CostModel | None:
        """The cost model of a request's level (the CSP's own for a CSP request)."""
        return self.csp_cost if request.structure_id is None else self.cost_models.get(request.backend)

    def expected_cost(self, request: Request) -> float:
        """Expected CPU seconds of one of this stage's requests (its level's cost model)."""
        model = self._cost_model(request)
        return float(model.expected([request.inp])[0]) if model is not None else 0.0

    def cpu_left(self, pending: Sequence[Request]) -> float | None:
        """CPU seconds of the campaign's budget left for new work (spent read from the
        store, this stage's tasks in flight at their expected cost); None without a
        compute budget."""
        hours = self.campaign_cfg.max_cpu_hours
        if hours is None or self.store is None:
            return None
        in_flight = sum(self.expected_cost(r) for r in pending if r.stage == self.name)
        # a CSP in flight holds the ranking-level evaluation it was started for as well
        in_flight += sum(self._follow_up(r.molecule_id)[0] for r in pending
                         if r.stage == self.name and r.structure_id is None and r.molecule_id in self._smiles)
        return hours * 3600 - self.store.spent_cpu_s() - in_flight

    def exhausted_reason(self, pending: Sequence[Request] = ()) -> str:
        """Why the stage proposes nothing although it has work left: the cheapest task it
        could start does not fit the compute budget left ('' else)."""
        left = self.cpu_left(pending)
        if left is None:
            return ""
        cheapest = self._cheapest_open(pending)
        if cheapest is None or cheapest[0] <= left:
            return ""
        need, level, then = cheapest
        if then is None:
            return (f"compute budget: no structure-stage evaluation fits the {max(left, 0.0):.3g} CPU s left "
                    f"(the cheapest, {level}, needs {need:.3g} CPU s with its "
                    f"{COST_FIT_PROBABILITY:.0%} cost margin)")
        csp, follow, follow_level = then
        return (f"compute budget: no structure-stage evaluation fits the {max(left, 0.0):.3g} CPU s left "
                f"(the cheapest, {level}, needs {need:.3g} CPU s with the {COST_FIT_PROBABILITY:.0%} cost "
                f"margins: {csp:.3g} for the CSP and {follow:.3g} for the first {follow_level} evaluation "
                "of its structures; a CSP is not started without CPU to rank its landscape)")

    def _cheapest_open(self, pending: Sequence[Request]
                       ) -> tuple[float, str, tuple[float, float, str] | None] | None:
        """``(CPU s needed with the cost margin, level, parts)`` of the cheapest task the
        stage could start now (None when it has none); ``parts``, for a CSP, are its own CPU s
        and those of the first ranking-level evaluation after it (:meth:`_follow_up`), each
        with its margin, and the level of that evaluation (None for other tasks)."""
        options: list[tuple[float, str, tuple[float, float, str] | None]] = []
        csp_margin = self.csp_cost.fit_factor()
        for mol_id in self.csp_candidates(pending):
            inp = EvalInput(self._smiles[mol_id])
            csp = float(self.csp_cost.expected([inp])[0]) * csp_margin
            cost, margin, level = self._follow_up(mol_id)
            options.append((csp + cost * margin, self.cfg.csp.name, (csp, cost * margin, level)))
        mine = [r.structure_id for r in pending if r.stage == self.name and r.structure_id is not None]
        for land in self.landscapes.values():
            for prop in self.properties:
                cand = prop.candidates(land, self.cfg.window_kjmol, self.cfg.top_k, mine)
                if cand:
                    cost = self._costs(land, prop.level)[cand] * self.cost_models[prop.name].fit_factor()
                    options.append((float(np.min(cost)), prop.name, None))
            busy = {i for sid in mine if (i := land.index(sid)) is not None}
            todo = [i for i in range(len(land.ids)) if i not in land.computed and i not in land.failed
                    and i not in busy]
            if todo:
                cost = self._costs(land, self.refine)[todo] * self.cost_models[self.refine.name].fit_factor()
                options.append((float(np.min(cost)), self.refine.name, None))
            if self.free_energy is not None and self._free_energy_open(land):
                todo = [i for i in land.computed if i not in land.f_vib and i not in land.f_failed
                        and i not in busy]
                if todo:
                    cost = self._costs(land, self.free_energy)[todo] * self.cost_models[self.free_energy.name].fit_factor()
                    options.append((float(np.min(cost)), self.free_energy.name, None))
        return min(options, key=lambda o: (o[0], o[1])) if options else None

    def _request(self, land: LandscapeState, i: int, level: StructureLevelConfig, k: int,
                 why: dict[str, Any] | None = None) -> Request:
        params = dict(level.params)
        if params.get("scf_guess") == "learned" and "density_model" not in params and self.directory is not None:
            from sim_backends.density_model import MODEL_FILE

            params["density_model"] = str(self.directory / MODEL_FILE)
        return Request(stage=self.name, backend=level.name, params=params, inp=land.inp(i),
                       molecule_id=land.molecule_id, fidelity=k + 1, structure_id=land.ids[i], why=why)

    def _property_request(self, land: LandscapeState, i: int, level: StructureLevelConfig,
                          extra: dict[str, Any]) -> Request:
        k = len(self.levels) + next(j for j, p in enumerate(self.properties) if p.level is level)
        return Request(stage=self.name, backend=level.name, params={**level.params, **extra},
                       inp=land.inp(i), molecule_id=land.molecule_id, fidelity=k + 1,
                       structure_id=land.ids[i], why={"rule": "landscape property of a window structure"})

    def _energy_sd(self, land: LandscapeState) -> float:
        """The sd of a computed ranking-level energy for the landscape property (kJ/mol per
        molecule): the ranking level's own relative-energy error (:func:`ranking_level_sd`,
        0 where not measured) and the surrogate's leave-one-out MAE (0 before a model
        exists), in quadrature."""
        mae = getattr(land.model, "loo_mae_kjmol", None)
        mae = float(mae) if mae is not None and np.isfinite(mae) else 0.0
        return float(np.hypot(self.ranking_sd_kjmol, mae))

    def _predicted(self, land: LandscapeState, prop: Any) -> dict[int, tuple[float, float]] | None:
        """The ranking-level energies (posterior mean, sd; kJ/mol per molecule) the stage
        predicts (:meth:`corrected_landscape`: Delta-GP, or the constant shift when the
        Delta-GP fails its skill test) for the structures that have a ``prop`` value but no
        computed energy (reused values: :mod:`agent.stages.properties`); None when there are
        none, or no energy is computed on the landscape yet (nothing to predict from)."""
        from agent.surrogates.structure_gp import SurrogateError

        todo = [i for i in prop.state(land.molecule_id).values if i not in land.computed and i not in land.failed]
        if not todo or not land.computed:
            return None
        try:
            corr = self.corrected_landscape(land.molecule_id)
        except SurrogateError:
            return None
        if corr is None:
            return None
        return {i: (float(corr["corrected_kjmol"][i]), float(corr["std_kjmol"][i])) for i in todo}

    def landscape_properties(self, molecule_id: int) -> dict[str, Any]:
        """Level name -> :class:`~sim_backends.mobility.LandscapeMobility` of the
        molecule's landscape at each property level with a value (structures with a value
        but no computed energy at their predicted energies: :mod:`agent.stages.properties`)."""
        land = self.landscapes.get(molecule_id)
        if land is None:
            return {}
        out = {p.name: p.landscape_property(land, self._energy_sd(land), self.cfg.window_kjmol,
                                            predicted=self._predicted(land, p))
               for p in self.properties}
        return {k: v for k, v in out.items() if v is not None}

    def is_exhausted(self, pending: Sequence[Request], budget: bool = True) -> bool:
        """No structure-stage work can be proposed now or later (``budget=False``: were the
        compute budget no limit)."""
        if budget and not any(r.stage == self.name for r in pending) and self.exhausted_reason(pending):
            return True  # work is left but none of it fits the compute budget left
        if self.csp_candidates(pending) or any(
                r.stage in self.waits_for or (r.stage == self.name and r.structure_id is None)
                for r in pending):
            return False
        mine = [r.structure_id for r in pending if r.stage == self.name and r.structure_id is not None]
        if any(p.candidates(land, self.cfg.window_kjmol, self.cfg.top_k, mine)
               for p in self.properties for land in self.landscapes.values()):
            return False
        return all(
            len(set(land.computed) | land.failed) >= len(land.ids) and not self._free_energy_open(land)
            for land in self.landscapes.values()
        )

    def _refit(self, land: LandscapeState, seed: int) -> Any:
        """Fit the landscape's surrogate on what is computed and record its held-out error
        as a ``structure_refit`` event (``molecule_id``, ``n_computed``, ``loo_mae_kjmol``,
        ``calibration``, ``surrogate``, ``n_evaluations``: the campaign's evaluations stored,
        MLflow's step) when the computed set changed since the last one
        (leave-one-out residuals in closed form, hyperparameters fixed)."""
        from agent.surrogates.structure_gp import SurrogateError

        try:
            model = self._fit_model(land, seed)
        except SurrogateError:
            return None  # select_structures refits and reports the error itself
        land.model, land.model_computed = model, dict(land.computed)
        surrogate = model.kind
        if self._fragment_settings() is not None and land.fragment_error:
            surrogate += f" (fragment terms failed: {land.fragment_error[:200]})"
        n = len(land.computed)
        if n >= 2 and self._last_refit.get(land.molecule_id) != n:
            self._last_refit[land.molecule_id] = n
            self.store.log_event(
                "structure_refit", molecule_id=land.molecule_id, n_computed=n,
                loo_mae_kjmol=model.loo_mae_kjmol, calibration=float(model.calibration),
                surrogate=surrogate, level=self.refine.name,
                n_evaluations=self.store.count_evaluations()[0])
        return model

    def refit_all(self) -> None:
        """Refit each landscape's surrogate whose model has not seen every computed
        structure (at the end of a run, so the recorded and logged models are final), then
        log again each landscape property whose predicted energies the final model moved
        (:meth:`_log_final_properties`)."""
        for land in self.landscapes.values():
            if len(land.computed) >= 2 and land.model_computed != land.computed:
                self._refit(land, self.campaign_cfg.seed)
        self._log_final_properties()

    def _log_final_properties(self) -> None:
        """Log each landscape property again whose predicted energies (a reused value on a
        structure without a computed energy) the final model moves away from those its last
        ``landscape_property`` event used, so the last event is the mean at the energies
        the saved ranking shows (:mod:`agent.stages.properties`)."""
        if not self.properties or self.store is None:
            return
        latest = {(int(e["molecule_id"]), e["level"]): e for e in self.store.events("landscape_property")}
        for land in self.landscapes.values():
            for prop in self.properties:
                predicted = self._predicted(land, prop)
                if not predicted:
                    continue
                now = prop.event(land, self._energy_sd(land), self.cfg.window_kjmol, predicted)
                last = latest.get((land.molecule_id, prop.name)) or {}
                if now is not None and any(last.get(k) != now[k] for k in ("mean", "sd", "predicted_kjmol")):
                    prop.log(land, self._energy_sd(land), self.cfg.window_kjmol, predicted)

    # -- surrogate ----------------------------------------------------------------------
    def _fragment_settings(self) -> dict[str, Any] | None:
        """The first level's fragment decomposition (its backend's declaration), if any."""
        if not hasattr(self, "_fragment_cache"):
            from sim_backends.registry import backend_class

            ref = self.refine
            self._fragment_cache = backend_class(ref.name)(**ref.params).fragment_terms_settings()
        return self._fragment_cache

    def _fragment_terms(self, land: LandscapeState) -> list | None:
        """:func:`~sim_backends.fragment_terms.landscape_fragment_terms` of every structure
        (kept in memory, and on disk under the campaign directory: :mod:`agent.stages.fragment_cache`);
        None, with the reason kept in ``land.fragment_error``, when they cannot be computed."""
        settings = self._fragment_settings()
        if settings is not None and land.fragment is None and land.fragment_error is None:
            from sim_backends.base import SetupError
            from sim_backends.fragment_terms import landscape_fragment_terms
            from sim_backends.structures import crystal_from_atoms

            n, done = len(land.ids), [0]
            step = max(1, n // 10)

            def tick() -> None:
                done[0] += 1
                if done[0] % step == 0 and done[0] < n:
                    self._say(f"m{land.molecule_id}: fragment terms {done[0]}/{n}")

            from agent.stages import fragment_cache
            from sim_backends import fragment_terms as ft

            atoms = land.landscape.atoms()
            digest = fragment_cache.key(land.smiles, {**settings, "decays_A": list(ft.DECAYS_A)},
                                        self.cfg.dimer_baselines, ft.DEFAULT_DESCRIPTOR, atoms)
            land.fragment = fragment_cache.load(self.directory, land.molecule_id, digest)
            if land.fragment is not None and len(land.fragment) == n:
                return land.fragment
            self._say(f"m{land.molecule_id}: fragment terms of {n} structures (D3, point-charge Ewald, "
                      f"dimer baselines {', '.join(self.cfg.dimer_baselines) or 'none'}) ...")
            try:  # the Landscape's parsed structures (each CIF parsed once)
                land.fragment = landscape_fragment_terms(
                    [crystal_from_atoms(a, land.smiles) for a in atoms], settings["cutoff_A"],
                    settings["cutoff_mode"], settings["functional"],
                    baselines=tuple(self.cfg.dimer_baselines), progress=tick if self.progress else None)
            except (SetupError, ValueError, RuntimeError) as exc:
                land.fragment, land.fragment_error = None, str(exc)
            else:  # kept for the next process of this campaign (resume, refine, report)
                fragment_cache.save(self.directory, land.molecule_id, digest, land.fragment)
        return land.fragment

    def _fit_model(self, land: LandscapeState, seed: int) -> StructureSurrogate:
        """The landscape's :class:`~agent.surrogates.base.StructureSurrogate` fitted on what
        is computed: the fragment dimer GP for a level whose backend declares a fragment
        decomposition (:mod:`agent.surrogates.fragment_gp`), else the SOAP Delta-GP."""
        return self._surrogate(land, seed).fit(land.computed)

    def _surrogate(self, land: LandscapeState, seed: int) -> StructureSurrogate:
        """The unfitted surrogate of ``land`` for the first level."""
        if self._fragment_settings() is not None and (terms := self._fragment_terms(land)) is not None:
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
            return FragmentDeltaModel(terms, land.ff_kjmol, dimer_deltas=deltas, seed=seed)
        from agent.surrogates.structure_gp import SoapDeltaSurrogate

        return SoapDeltaSurrogate(land.ff_kjmol, self._features(land), seed=seed)

    def _inputs(self, land: LandscapeState, model: StructureSurrogate | None) -> np.ndarray | None:
        """The descriptors the acquisition fits the SOAP Delta-GP on when no model could be
        fitted (it then reports the surrogate's error); None with a fitted model."""
        return self._features(land) if model is None else None

    def _free_energy_open(self, land: LandscapeState) -> bool:
        """Computed structures still without a second-level result (or attempt)."""
        return self.free_energy is not None and any(
            i not in land.f_vib and i not in land.f_failed for i in land.computed)

    def _costs(self, land: LandscapeState, level: StructureLevelConfig) -> np.ndarray:
        """Expected CPU seconds of ``level`` for every structure of ``land``."""
        return self.cost_models[level.name].expected([land.inp(i) for i in range(len(land.ids))])

    def corrected_landscape(self, molecule_id: int) -> dict[str, np.ndarray] | None:
        """Cheap-level and surrogate-corrected energies (mean, std; the computed value and 0
        where computed) of every structure, from
        the model of the last decision when nothing was computed since, else a fresh fit;
        ``held_out_kjmol`` (leave-one-out predictions of the computed structures, None when
        the model's residuals do not cover them all), ``loo_mae_kjmol`` (the model's own
        figure, the one logged to MLflow per refit) and ``skill``: the acquisition's own
        leave-one-out skill test of that model against a constant shift
        (:func:`agent.refine_acquisition.surrogate_skill` with the configured ``skill_ratio``;
        a model that fails it does not steer the picks; None with ``skill_test = false``) and
        ``ranking_model``: :data:`agent.summary.DELTA_GP` when the mean and std are the model's, else
        :data:`agent.summary.CONSTANT_SHIFT` (the model failed that test, so the uncomputed structures are
        ranked as the acquisition sees them: force field plus the mean computed correction,
        with the shift's Student-t spread). Kept while its inputs are unchanged,
        and read from the store where the run saved it (:mod:`agent.stages.corrected_cache`),
        so a report fits nothing twice; a copy the caller may change."""
        from agent.stages import corrected_cache

        land = self.landscapes.get(molecule_id)
        if land is None or not land.computed:
            return None
        digest = corrected_cache.fingerprint(self, land)
        model = land.model if land.model is not None and land.model_computed == land.computed else None
        kept = self._corrected.get(molecule_id)
        if kept is None or kept[0] != digest or kept[1] is not model:
            saved = None if model is not None else \
                corrected_cache.load_saved(self.store, molecule_id, digest, land)
            kept = (digest, model, saved if saved is not None else self._fit_corrected(land, model))
            self._corrected[molecule_id] = kept
        return corrected_cache.copy_result(kept[2])

    def _fit_corrected(self, land: LandscapeState, model: Any) -> dict[str, Any]:
        """:meth:`corrected_landscape` from the decision's ``model`` or (None) a fresh fit."""
        from agent.refine_acquisition import surrogate_skill
        from agent.summary import CONSTANT_SHIFT, DELTA_GP
        from agent.surrogates.structure_gp import ShiftModel

        if model is None:
            self._fragment_terms(land)  # (says so itself when it computes them)
            self._say(f"m{land.molecule_id}: fitting the structure surrogate on "
                      f"{len(land.computed)} computed structures ...")
            model = self._fit_model(land, self.campaign_cfg.seed)
        acq = self.cfg.acquisition
        skill = surrogate_skill(model, land.ff_kjmol, land.computed, acq.skill_ratio) if acq.skill_test else None
        # the ranking comes from the model the acquisition trusts: a model that fails the skill
        # test steers nothing, so the uncomputed structures are ranked by the constant shift
        ranking = model if skill is None or skill.skilled else ShiftModel(land.ff_kjmol).fit(land.computed)
        mean, std = ranking.predict(np.arange(len(land.ids)))
        computed = np.array(sorted(land.computed))
        corrected = land.ff_kjmol + mean
        corrected[computed], std[computed] = [land.computed[i] for i in computed], 0.0  # exact there
        held_out = None
        residual = model.loo_residual_kjmol
        if residual is not None and len(residual) == len(computed):  # computed minus LOO prediction
            held_out = np.array([land.computed[i] for i in computed]) - residual
        return {"ff_kjmol": land.ff_kjmol, "corrected_kjmol": corrected,
                "std_kjmol": std, "computed": computed, "held_out_kjmol": held_out,
                "loo_mae_kjmol": model.loo_mae_kjmol, "skill": skill,
                "ranking_model": CONSTANT_SHIFT if ranking is not model else DELTA_GP}

    def save_corrected(self) -> None:
        """Save the corrected landscapes computed in this process in the store, for a
        read-only ``report``/``status`` (:mod:`agent.stages.corrected_cache`; the lock
        holder only)."""
        from agent.stages import corrected_cache

        corrected_cache.save(self.store, {m: (k[0], k[2]) for m, k in self._corrected.items()})

    def _say(self, text: str) -> None:
        if self.progress is not None:
            self.progress(text)


class _Budget:
    """The compute budget left during one :meth:`StructureStage.ask`: a request is taken
    only when its expected CPU cost times its level's cost margin fits what is left
    (always, without a compute budget), and then its expected cost is set aside."""

    def __init__(self, stage: StructureStage, pending: Sequence[Request]) -> None:
        self.stage, self.left = stage, stage.cpu_left(pending)

    def take(self, request: Request, then: tuple[float, float] | None = None) -> bool:
        """Take ``request`` if it fits; ``then``: (expected CPU s, cost margin) of a task
        that must fit after it (a CSP's first ranking-level evaluation), set aside as well."""
        if self.left is None:
            return True
        model = self.stage._cost_model(request)
        if model is None:
            return True
        cost = float(model.expected([request.inp])[0])
        after, after_margin = then if then is not None else (0.0, 1.0)
        if cost * model.fit_factor() + after * after_margin > self.left:
            return False
        self.left -= cost + after
        return True

    def unaffordable(self, backend: str, costs: np.ndarray) -> list[int]:
        """Indices whose expected cost (``costs``, CPU s) with the level's margin does not fit."""
        if self.left is None:
            return []
        return [int(i) for i in np.flatnonzero(costs * self.stage.cost_models[backend].fit_factor() > self.left)]
