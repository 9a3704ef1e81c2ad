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
Boltzmann-weighted mean over the structures with a property value, their ranking-level
energies, with the surrogate's leave-one-out error of those energies as their sd
(0 before a model exists), within the stage's window. It is recorded as a
``landscape_property`` event (``molecule_id``, ``level``, ``value_key``, ``mean``, ``sd``,
``n_structures``, ``n_in_window``) each time a property value arrives.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


class PropertyLevel:
    """One property level of the structure stage (module docstring)."""

    def __init__(self, level: StructureLevelConfig, campaign_cfg: CampaignConfig, value_key: str) -> None:
        from sim_backends.registry import backend_class

        self.level = level
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
            for b in reversed(self.campaign_cfg.backends):
                found = [v for mid, v in self.store.values_of(b.name, key) if mid == molecule_id]
                if found:
                    out[param] = float(found[-1])
                    break
        return out

    def tell(self, molecule_id: int, i: int, ev: Evaluation) -> None:
        import math

        st = self.state(molecule_id)
        value = ev.values.get(self.value_key)
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

    def landscape_property(self, land: Any, energy_sd_kjmol: float, window_kjmol: float,
                           temperature_K: float = 300.0) -> Any:
        """:class:`~sim_backends.mobility.LandscapeMobility` over the structures with a
        value (None without any)."""
        from sim_backends.mobility import landscape_mobility

        st = self.state(land.molecule_id)
        idx = sorted(i for i in st.values if i in land.computed)
        if not idx:
            return None
        return landscape_mobility([land.computed[i] for i in idx], [st.values[i] for i in idx],
                                  energy_sd_kjmol, window_kjmol=window_kjmol, temperature_K=temperature_K)

    def log(self, land: Any, energy_sd_kjmol: float, window_kjmol: float) -> None:
        lm = self.landscape_property(land, energy_sd_kjmol, window_kjmol)
        if lm is not None:
            self.store.log_event("landscape_property", molecule_id=land.molecule_id, level=self.name,
                                 value_key=self.value_key, mean=lm.mean, sd=lm.sd,
                                 n_structures=len(self.state(land.molecule_id).values), n_in_window=lm.n_in_window)
