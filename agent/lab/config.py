"""The ``[lab]`` table of a campaign config, and building the adapter it describes.

Example ``campaign.toml`` section (the token is never written here: it comes from
``$CRYSTAL_AGENT_LAB_TOKEN`` or ``token_file``)::

    [lab]
    adapter = "network"
    auto_approve = false        # hold every request for `crystal-agent lab approve`
    daily_budget = 10           # experiments per UTC day
    params = { base_url = "https://lab.example.org/api", timeout_s = 20 }
    conditions = { method = "sublimation", temperature_K = 423.15 }   # every molecule
    [[lab.molecule_conditions]]                                         # one molecule, after `conditions`
    smiles = "c1ccsc1"
    method = "cryocrystallisation"
    temperature_K = 210
    [[lab.molecule_conditions]]
    smiles = "c1ccc2cc3cc4cc5ccccc5cc4cc3cc2c1"
    method = "cooling"
    solvent = "toluene"
    temperature_K = 300

Without them each molecule's conditions come from
:func:`agent.lab.substances.suggest_conditions`; either table overrides some or all of
``method``, ``solvent`` and ``temperature_K`` (:meth:`LabConfig.request_conditions`), and the
request's ``note`` says which were set in the config. The config checks each entry's form
(a known method, a solvent with a solution method and none with sublimation or
cryocrystallisation, 100-600 K, a valid SMILES); whether the conditions can work is the lab's
to judge: the simulated lab refuses, with its one-line reason, a solvent below its melting
point, a compound above the temperature where its solid is stable, and so on.

``CampaignConfig.lab`` holds it (None without a ``[lab]`` table); the lab stage builds the
adapter with :func:`build_adapter` and the campaign directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.lab.base import ADAPTERS, METHODS, SOLVENT_FREE_METHODS, LabAdapter, adapter_class, format_K, get_adapter

_SECRET_KEYS = {"token", "password", "api_key", "secret"}


class LabConditions(BaseModel):
    """Crystallisation conditions set in the config; unset ones keep the suggested value.

    Attributes:
        method: one of :data:`agent.lab.base.METHODS`.
        solvent: a solvent name, required with a solution method (and then ``method`` is
            required too), not allowed with sublimation or cryocrystallisation.
        temperature_K: crystallisation temperature, 100-600 K.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    method: str | None = None
    solvent: str | None = None
    temperature_K: float | None = Field(default=None, ge=100.0, le=600.0)

    @model_validator(mode="after")
    def _consistent(self) -> LabConditions:
        if self.method is not None and self.method not in METHODS:
            raise ValueError(f"unknown crystallisation method {self.method!r}; use one of {', '.join(METHODS)}")
        if self.solvent is not None and not self.solvent.strip():
            raise ValueError("solvent must be a non-empty name")
        if self.solvent is not None and self.method is None:
            raise ValueError(f"solvent {self.solvent!r} needs a method (e.g. method = \"slow_evaporation\")")
        if self.method in SOLVENT_FREE_METHODS and self.solvent is not None:
            raise ValueError(f"method {self.method} takes no solvent (remove solvent = {self.solvent!r})")
        if self.method is not None and self.method not in SOLVENT_FREE_METHODS and self.solvent is None:
            raise ValueError(f"method {self.method} needs a solvent (e.g. solvent = \"ethanol\")")
        return self

    def given(self) -> dict[str, Any]:
        """The keys set (``solvent`` None with a solvent-free method)."""
        out: dict[str, Any] = {}
        if self.method is not None:
            out["method"], out["solvent"] = self.method, self.solvent
        if self.temperature_K is not None:
            out["temperature_K"] = float(self.temperature_K)
        return out


class MoleculeConditions(LabConditions):
    """:class:`LabConditions` of one molecule (``smiles``, compared canonically)."""

    smiles: str

    @field_validator("smiles")
    @classmethod
    def _valid_smiles(cls, v: str) -> str:
        if _canonical(v) is None:
            raise ValueError(f"{v!r} is not a valid SMILES")
        return v


class LabConfig(BaseModel):
    """Lab settings of a campaign.

    Attributes:
        adapter: registered adapter name ("simulated", "network").
        params: constructor arguments of the adapter (never a token in clear).
        auto_approve: send requests of hardware adapters without manual approval.
        daily_budget: at most this many experiments per UTC day (None: no cap).
        landscape: what an adapter that simulates from predicted structures
            (``takes_landscape``, e.g. "simulated") draws from: "campaign" (the
            campaign's own predicted landscape of each molecule, see
            :mod:`agent.stages.lab`), "target_I", "x23" or a CIF folder. Adapters that
            measure real crystals take none: for them only "campaign" (the default) is
            accepted, and their patterns are identified against the campaign's landscape.
        min_confidence: an identified form (a single form, or both components of a
            mixture) is fed back to the structure stage as observed only at this
            confidence or above (0-1).
        conditions: crystallisation conditions for every molecule (overriding the
            suggested ones, :class:`LabConditions`); None: suggested.
        molecule_conditions: conditions of single molecules (each with its ``smiles``,
            compared canonically), applied after ``conditions``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    adapter: str = "simulated"
    params: dict[str, Any] = Field(default_factory=dict)
    auto_approve: bool = False
    daily_budget: int | None = Field(default=None, ge=0)
    landscape: str = "campaign"
    min_confidence: float = Field(default=0.5, ge=0.0, le=1.0)
    conditions: LabConditions | None = None
    molecule_conditions: list[MoleculeConditions] = Field(default_factory=list)

    @field_validator("molecule_conditions")
    @classmethod
    def _one_entry_per_molecule(cls, v: list[MoleculeConditions]) -> list[MoleculeConditions]:
        seen: dict[str | None, str] = {}
        for c in v:
            key = _canonical(c.smiles)
            if key in seen:
                raise ValueError(f"{c.smiles!r} has two entries (as {seen[key]!r}); give one per molecule")
            seen[key] = c.smiles
        return v

    @model_validator(mode="after")
    def _known_solvents(self) -> LabConfig:
        if self.adapter in ADAPTERS and adapter_class(self.adapter).takes_landscape:  # the simulated lab's stock
            from agent.lab.substances import SOLVENTS, solvent

            for where, cond in [("conditions", self.conditions),
                                *((f"molecule_conditions {c.smiles}", c) for c in self.molecule_conditions)]:
                if cond is not None and cond.solvent is not None and solvent(cond.solvent) is None:
                    raise ValueError(f"{where}: unknown solvent {cond.solvent!r}; the {self.adapter} lab "
                                     f"stocks {', '.join(sorted(SOLVENTS))}")
        return self

    def request_conditions(self, smiles: str) -> dict[str, Any]:
        """``method``, ``solvent``, ``temperature_K`` and ``note`` of the request for ``smiles``:
        :func:`~agent.lab.substances.suggest_conditions`, then ``conditions``, then the
        molecule's ``molecule_conditions`` entry; the note says which keys the config set."""
        from agent.lab.substances import suggest_conditions

        out = dict(suggest_conditions(smiles))
        canonical = _canonical(smiles)
        mine = next((c for c in self.molecule_conditions if _canonical(c.smiles) == canonical), None)
        set_by: dict[str, str] = {}
        for where, cond in (("[lab] conditions", self.conditions), ("[lab] molecule_conditions", mine)):
            if cond is not None:
                for key, value in cond.given().items():
                    out[key] = value
                    set_by[key] = where
        if set_by:
            shown = {k: (format_K(out[k]) + " K" if k == "temperature_K" else out[k] or "none")
                     for k in ("method", "solvent", "temperature_K") if k in set_by}
            note = "set in the config: " + ", ".join(f"{k} = {v} ({set_by[k]})" for k, v in shown.items())
            if len(set_by) < 3:  # the rest as suggested
                note += f"; the rest as suggested ({out['note']})"
            out["note"] = note
        return out

    @field_validator("params")
    @classmethod
    def _no_secrets(cls, v: dict[str, Any]) -> dict[str, Any]:
        bad = sorted(k for k in v if k.lower() in _SECRET_KEYS)
        if bad:
            raise ValueError(f"put the lab {bad[0]} in $CRYSTAL_AGENT_LAB_TOKEN or a token_file, not in the config")
        return v

    @model_validator(mode="after")
    def _landscape_taken(self) -> LabConfig:
        if self.landscape != "campaign" and self.adapter in ADAPTERS \
                and not adapter_class(self.adapter).takes_landscape:
            raise ValueError(
                f"landscape: lab adapter {self.adapter!r} measures real crystals and takes no landscape "
                f"(got {self.landscape!r}); leave landscape unset: its patterns are identified "
                "against the campaign's own predicted structures")
        return self


def load_landscape(spec: str) -> list[Any]:
    """Landscape entries for a :attr:`LabConfig.landscape` spec."""
    from sim_backends.landscape import Landscape, load_target_i, load_x23

    if spec == "campaign":
        raise ValueError("lab landscape 'campaign' exists only inside a campaign; "
                         "give 'target_I', 'x23' or a CIF folder")
    if spec == "target_I":
        return load_target_i().minima
    if spec == "x23":
        return load_x23().minima
    return Landscape.from_cif_dir(Path(spec)).minima


def build_adapter(cfg: LabConfig, campaign_dir: str | Path) -> LabAdapter:
    """The adapter a campaign uses; hardware adapters come behind the approval gate.

    An adapter that takes a landscape gets it from ``cfg.landscape`` unless ``params``
    gives one (``"campaign"`` is built per molecule by :class:`agent.stages.lab.LabStage`).
    """
    params = dict(cfg.params)
    if adapter_class(cfg.adapter).takes_landscape and "landscape" not in params:
        params["landscape"] = load_landscape(cfg.landscape)
    return get_adapter(
        cfg.adapter, campaign_dir=str(campaign_dir), auto_approve=cfg.auto_approve, daily_budget=cfg.daily_budget, **params
    )


def _canonical(smiles: str) -> str | None:
    """RDKit canonical SMILES, None if it does not parse."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles) if isinstance(smiles, str) and smiles.strip() else None
    return None if mol is None else Chem.MolToSmiles(mol)
