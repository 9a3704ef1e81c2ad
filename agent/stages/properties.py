"""Property levels of the structure stage: a crystal property (e.g. the hole mobility of
``mobility-xtb``/``mobility-dft``) computed on the predicted structures that the energy
levels rank low, and summarised per molecule as a landscape property with uncertainty.

A structure-level backend is a property level when its class declares
``level_kind = "property"`` (:class:`sim_backends.mobility._MobilityBase`); it is listed
in ``[[structures.levels]]`` after the energy levels (a ranking level, optionally an
additive one). What it needs from the molecule it declares as ``molecule_inputs``
(param name -> molecule-level value key, e.g. ``lambda_hole_kjmol`` ->
``reorg_energy_kjmol``); the value is read from the molecule stage's store rows (the
highest molecule level that has one) and passed in the request's params.

Decisions: once a structure's ranking-level energy is computed and lies within
``window_kjmol`` of the lowest computed one (at most ``top_k`` structures, lowest
first), it gets the property. A molecule without a required molecule value is sent
anyway, once: the structure stage starts only after the molecule stage is exhausted, so
no value will arrive later and waiting would never end; the backend's failure ("no hole
reorganisation energy ...") is stored as a failed evaluation with that reason and no
other structure of the molecule is tried. Any other failure (no molecular contacts
within the cutoff, a failed dimer SCF) fails that structure only.

The landscape property (:func:`sim_backends.mobility.landscape_mobility`): the
Boltzmann-weighted mean over the structures with a property value within the stage's
window, at their ranking-level energies: computed, with the ranking level's own error in
relative energies (``ranking_sd_kjmol``, :func:`agent.stages.structure.ranking_level_sd`:
periodic GFN2-xTB's sd against fragment DFT, 0 for a level whose error is not measured) and
the surrogate's leave-one-out error of those energies (0 before a model exists) in
quadrature as their sd; or, for a structure with a value
but no computed energy (a reused value, below, on a structure the ranking level has not
reached), its predicted energy (``predicted``: the structure surrogate's posterior mean and
sd as the stage ranks by them,
:meth:`~agent.stages.structure.StructureStage.corrected_landscape`), with that posterior sd
(at least the leave-one-out error) and the level's own error in quadrature as its sd. The
energies' sds enter the mean's sd through
the energy sampling of :func:`~sim_backends.mobility.landscape_mobility` (window and weights
redrawn per sample), so a predicted energy's larger error widens the reported sd. Without a
prediction (no energy computed on the landscape yet, or a structure that failed at the
ranking level) such a structure stays out of the mean. It is recorded as a
``landscape_property`` event (``molecule_id``, ``level``, ``value_key``, ``mean``, ``sd``,
``n_structures``, ``n_in_window``, ``n_reused``, ``n_predicted``: the structures in the mean
at a predicted energy, ``predicted_kjmol``: their structure id -> [energy, sd],
``energy_sd_kjmol``: the sd of a computed energy, ``ranking_sd_kjmol``: the level's own error
in it) each time a
property value arrives, each time a ranking-level energy arrives on a landscape that has
property values, and at the end of a run when the final surrogate moved the predicted
energies the last event used (:meth:`~agent.stages.structure.StructureStage.refit_all`).

Reuse (:func:`reused_values`): a structure whose value the molecule stage already computed
is not computed again. An ESF level of the molecule stage (``esf-landscape``/``esf-refined``)
stores, per kept CSP minimum, its CIF and its Marcus hole mobility; when the structure
stage's landscape holds the same structure (identical CIF text: the structure stage's CSP
makes the same ``run_csp`` call) and the property level would compute it the same way
(same transfer-integral level, cutoff and temperature, the same transport model and TLT
constants -- ``transport``, ``tlt_disorder_ratio``, ``tlt_hbar_over_tau_meV``, their defaults
when not given --, no KMC check, and the same lambda+ as the molecule value it would be
given), the stored value is the property value, with
its warnings and its source (``reused``: the ESF evaluation it came from). It costs no CPU
and no evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.config import CampaignConfig, StructureLevelConfig
    from agent.stages.base import Request
    from agent.store import Evaluation, Store


def is_property_level(name: str) -> bool:
    """Whether the registered backend ``name`` declares itself a property level."""
    from sim_backends.registry import UnknownBackendError, backend_class

    try:
        return getattr(backend_class(name), "level_kind", "energy") == "property"
    except UnknownBackendError:
        return False


@dataclass
class PropertyState:
    """One landscape's property values at one level."""

    values: dict[int, float] = field(default_factory=dict)
    failed: set[int] = field(default_factory=set)
    missing_input: str = ""  # the reason when a molecule value is missing (no more requests)
    reused: dict[int, str] = field(default_factory=dict)  # index -> where a reused value came from


def molecule_value(store: Store, cfg: CampaignConfig, molecule_id: int, key: str) -> float | None:
    """The molecule's ``key`` from the highest molecule level that has it (its latest value
    there), None without one."""
    for b in reversed(cfg.backends):
        found = [v for mid, v in store.values_of(b.name, key) if mid == molecule_id]
        if found:
            return float(found[-1])
    return None


def _transport_signature(params: dict[str, Any]) -> tuple[Any, ...]:
    """The transport model of a level's params (:func:`sim_backends.mobility.transport_kwargs`:
    ``transport`` and the TLT constants, their defaults when not given)."""
    from sim_backends.mobility import transport_kwargs

    return tuple(transport_kwargs(params).values())


def _dft_level(params: dict[str, Any]) -> tuple[str, str, str]:
    """A DFT transfer level as the signatures compare it: functional and basis, defaults filled."""
    return ("dft", str(params.get("functional", "b3lyp")).lower(), str(params.get("basis", "6-31g")).lower())


def _esf_signature(params: dict[str, Any]) -> tuple[Any, ...]:
    """How an ESF level computes a structure's hole mobility: transfer level (with the DFT
    functional and basis), contact cutoff (A), temperature (K), transport model and TLT
    constants."""
    p = {"transfer": "gfn2-xtb", "cutoff_A": 4.0, "temperature_K": 300.0, **params}
    if p["transfer"] == "dft":
        level: tuple[Any, ...] = _dft_level(p)
    else:
        level = ("gfn2-xtb",)
    return (*level, float(p["cutoff_A"]), float(p["temperature_K"]), *_transport_signature(p))


def _property_signature(name: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
    """The same for a mobility property level; None when it computes something an ESF level
    does not (another transfer method, a KMC check, an electron lambda)."""
    from sim_backends.registry import UnknownBackendError, backend_class
    from sim_backends.transfer import DEFAULT_CUTOFF_A

    try:
        transfer = getattr(backend_class(name), "transfer_backend", None)
    except UnknownBackendError:
        return None
    if int(params.get("kmc_walkers", 0) or 0) or params.get("method", "gfn2-xtb") != "gfn2-xtb":
        return None
    if transfer == "transfer-xtb":
        level: tuple[Any, ...] = ("gfn2-xtb",)
    elif transfer == "transfer-dft":
        level = _dft_level(params)
    else:
        return None
    return (*level, float(params.get("cutoff_A", DEFAULT_CUTOFF_A)), float(params.get("temperature_K", 300.0)),
            *_transport_signature(params))


def reused_values(store: Store, cfg: CampaignConfig, level: StructureLevelConfig, molecule_id: int,
                  evaluations: Sequence[Evaluation] | None = None) -> dict[str, dict[str, Any]]:
    """Structure id -> ``{"value", "source", "warnings", "notes", "transport_model", "marcus"}``
    (the record's model, and ``marcus`` the hopping value beside a transient-localisation one,
    else None) for the molecule's
    structure-stage structures whose ``level`` value (the hole mobility) an ESF level of
    the molecule stage already computed the same way (module docstring: identical CIF,
    transfer level, cutoff, temperature, transport model and lambda+). ``evaluations``: the store's, when
    already read."""
    import math

    from sim_backends.registry import UnknownBackendError, backend_class

    mine = _property_signature(level.name, dict(level.params))
    if mine is None or "lambda_hole_kjmol" in level.params:
        return {}
    lam = molecule_value(store, cfg, molecule_id, "reorg_energy_kjmol")
    if lam is None:
        return {}
    by_cif = {str(r["cif"]): str(r["id"]) for r in store.structures(molecule_id)}
    params = {b.name: dict(b.params) for b in cfg.backends}
    out: dict[str, dict[str, Any]] = {}
    for ev in evaluations if evaluations is not None else store.evaluations():
        if ev.molecule_id != molecule_id or not ev.ok or ev.structure_id is not None or ev.backend not in params:
            continue
        try:
            if "landscape_mobility_hole_cm2Vs" not in getattr(backend_class(ev.backend), "computes", ()):
                continue
        except UnknownBackendError:
            continue
        used = ev.values.get("reorg_energy_kjmol")
        if used is None or not math.isclose(float(used), lam, rel_tol=1e-9, abs_tol=1e-9) \
                or _esf_signature(params[ev.backend]) != mine:
            continue
        for s in ev.extra.get("structures") or []:
            sid = by_cif.get(str(s.get("cif")))
            mu = s.get("mobility_hole_cm2Vs")
            if sid is None or mu is None or not math.isfinite(float(mu)):
                continue
            out[sid] = {"value": float(mu), "source": f"{ev.backend} evaluation {ev.id}",
                        "warnings": list(s.get("warnings") or []), "notes": list(s.get("notes") or []),
                        "transport_model": s.get("transport_model"),
                        "marcus": s.get("mobility_hole_marcus_cm2Vs")}
    return out


class PropertyLevel:
    """One property level of the structure stage (module docstring)."""

    def __init__(self, level: StructureLevelConfig, campaign_cfg: CampaignConfig, value_key: str,
                 ranking_sd_kjmol: float = 0.0) -> None:
        from sim_backends.registry import backend_class

        self.level = level
        #: the ranking level's own relative-energy error (kJ/mol per molecule; module docstring)
        self.ranking_sd_kjmol = float(ranking_sd_kjmol)
        self.name = level.name
        self.value_key = value_key
        self.campaign_cfg = campaign_cfg
        self.inputs: dict[str, str] = dict(getattr(backend_class(level.name), "molecule_inputs", {}))
        self.states: dict[int, PropertyState] = {}
        self.store: Store | None = None

    def state(self, molecule_id: int) -> PropertyState:
        return self.states.setdefault(molecule_id, PropertyState())

    def molecule_params(self, molecule_id: int) -> dict[str, float]:
        """The molecule values the backend needs, from the highest molecule level that has
        each (missing ones are left out: the backend then fails with its reason)."""
        out: dict[str, float] = {}
        for param, key in self.inputs.items():
            if param in self.level.params:
                continue
            if (value := molecule_value(self.store, self.campaign_cfg, molecule_id, key)) is not None:
                out[param] = value
        return out

    def import_reused(self, land: Any) -> int:
        """Take the values the molecule stage already computed on ``land``'s structures
        (:func:`reused_values`; not where this level has its own result). Returns how many."""
        st = self.state(land.molecule_id)
        n = 0
        for sid, rec in reused_values(self.store, self.campaign_cfg, self.level, land.molecule_id).items():
            i = land.index(sid)
            if i is None or i in st.values or i in st.failed:
                continue
            st.values[i] = rec["value"]
            st.reused[i] = rec["source"]
            n += 1
        return n

    def tell(self, molecule_id: int, i: int, ev: Evaluation) -> None:
        import math

        st = self.state(molecule_id)
        value = ev.values.get(self.value_key)
        if st.reused.pop(i, None) is not None:  # a computed value (a campaign from before reuse) replaces it
            st.values.pop(i, None)
        if ev.ok and value is not None and math.isfinite(value):
            st.values[i] = float(value)
            return
        st.failed.add(i)
        missing = [p for p in self.inputs if p not in self.level.params]
        if missing and ev.reason.startswith("setup: no ") and any(
                p.split("_")[1] in ev.reason for p in missing):
            st.missing_input = ev.reason

    def candidates(self, land: Any, window_kjmol: float, top_k: int, pending: Sequence[str]) -> list[int]:
        """Structures of ``land`` (a :class:`~agent.stages.structure.LandscapeState`) that
        should get the property now, lowest ranking-level energy first."""
        st = self.state(land.molecule_id)
        if not land.computed or st.missing_input:
            return []
        e0 = min(land.computed.values())
        low = sorted((e, i) for i, e in land.computed.items() if e - e0 <= window_kjmol)[:top_k]
        busy = set(st.values) | st.failed | {i for sid in pending if (i := land.index(sid)) is not None}
        todo = [i for _, i in low if i not in busy]
        if todo and set(self.inputs) - set(self.level.params) - set(self.molecule_params(land.molecule_id)):
            # a required molecule value is missing: one request, whose failure says so
            in_flight = any(land.index(s) is not None for s in pending)
            return [] if in_flight else todo[:1]
        return todo

    def requests(self, land: Any, n: int, window_kjmol: float, top_k: int, pending: Sequence[Request],
                 make: Callable[[Any, int, StructureLevelConfig, dict[str, Any]], Request]) -> list[Request]:
        mine = [r.structure_id for r in pending if r.backend == self.name and r.structure_id is not None]
        extra = self.molecule_params(land.molecule_id)
        return [make(land, i, self.level, extra)
                for i in self.candidates(land, window_kjmol, top_k, mine)[:max(n, 0)]]

    def landscape_inputs(self, land: Any, energy_sd_kjmol: float,
                         predicted: Mapping[int, tuple[float, float]] | None = None
                         ) -> tuple[list[int], list[float], list[float], list[int]]:
        """``(indices, energies, energy sds, indices at a predicted energy)`` of the
        structures of ``land`` the landscape property is over (module docstring): those
        with a value and a computed ranking-level energy (sd ``energy_sd_kjmol``, the level's
        own error included), and those with a value, no computed energy and a prediction in
        ``predicted`` (index -> posterior mean, sd; sd the posterior's and the level's own
        error, :attr:`ranking_sd_kjmol`, in quadrature, at least ``energy_sd_kjmol``), failed
        structures left out."""
        import math

        st = self.state(land.molecule_id)
        idx: list[int] = []
        energies: list[float] = []
        sds: list[float] = []
        at_predicted: list[int] = []
        for i in sorted(st.values):
            if i in land.computed:
                idx.append(i)
                energies.append(float(land.computed[i]))
                sds.append(float(energy_sd_kjmol))
            elif predicted is not None and i in predicted and i not in land.failed:
                mean, sd = predicted[i]
                idx.append(i)
                energies.append(float(mean))
                sds.append(max(math.hypot(float(sd), self.ranking_sd_kjmol), float(energy_sd_kjmol)))
                at_predicted.append(i)
        return idx, energies, sds, at_predicted

    def landscape_property(self, land: Any, energy_sd_kjmol: float, window_kjmol: float,
                           temperature_K: float = 300.0,
                           predicted: Mapping[int, tuple[float, float]] | None = None) -> Any:
        """:class:`~sim_backends.mobility.LandscapeMobility` over the structures with a
        value (:meth:`landscape_inputs`; None without any)."""
        from sim_backends.mobility import landscape_mobility

        st = self.state(land.molecule_id)
        idx, energies, sds, _ = self.landscape_inputs(land, energy_sd_kjmol, predicted)
        if not idx:
            return None
        return landscape_mobility(energies, [st.values[i] for i in idx], sds,
                                  window_kjmol=window_kjmol, temperature_K=temperature_K)

    def event(self, land: Any, energy_sd_kjmol: float, window_kjmol: float,
              predicted: Mapping[int, tuple[float, float]] | None = None) -> dict[str, Any] | None:
        """The fields of the ``landscape_property`` event of ``land`` now (module
        docstring; without ``n_evaluations``), None without a value to average."""
        lm = self.landscape_property(land, energy_sd_kjmol, window_kjmol, predicted=predicted)
        if lm is None:
            return None
        st = self.state(land.molecule_id)
        idx, energies, sds, at_predicted = self.landscape_inputs(land, energy_sd_kjmol, predicted)
        pos = {i: k for k, i in enumerate(idx)}
        return {"molecule_id": land.molecule_id, "level": self.name, "value_key": self.value_key,
                "mean": lm.mean, "sd": lm.sd, "n_structures": len(st.values), "n_in_window": lm.n_in_window,
                "n_reused": len(st.reused), "n_predicted": len(at_predicted),
                "predicted_kjmol": {land.ids[i]: [energies[pos[i]], sds[pos[i]]] for i in at_predicted},
                "energy_sd_kjmol": float(energy_sd_kjmol), "ranking_sd_kjmol": self.ranking_sd_kjmol}

    def log(self, land: Any, energy_sd_kjmol: float, window_kjmol: float,
            predicted: Mapping[int, tuple[float, float]] | None = None) -> dict[str, Any] | None:
        """Record the landscape property as a ``landscape_property`` event (:meth:`event`);
        returns its fields (None without a value to average)."""
        fields = self.event(land, energy_sd_kjmol, window_kjmol, predicted)
        if fields is not None:
            self.store.log_event("landscape_property", **fields,
                                 n_evaluations=self.store.count_evaluations()[0])  # MLflow's step
        return fields
