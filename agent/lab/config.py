"""The ``[lab]`` table of a campaign config, and building the adapter it describes.

Example ``campaign.toml`` section (the token is never written here: it comes from
``$CRYSTAL_AGENT_LAB_TOKEN`` or ``token_file``)::

    [lab]
    adapter = "network"
    auto_approve = false        # hold every request for `crystal-agent lab approve`
    daily_budget = 10           # experiments per UTC day
    params = { base_url = "https://lab.example.org/api", timeout_s = 20 }

``CampaignConfig.lab`` holds it (None without a ``[lab]`` table); the lab stage builds the
adapter with :func:`build_adapter` and the campaign directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.lab.base import ADAPTERS, LabAdapter, adapter_class, get_adapter

_SECRET_KEYS = {"token", "password", "api_key", "secret"}


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
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    adapter: str = "simulated"
    params: dict[str, Any] = Field(default_factory=dict)
    auto_approve: bool = False
    daily_budget: int | None = Field(default=None, ge=0)
    landscape: str = "campaign"
    min_confidence: float = Field(default=0.5, ge=0.0, le=1.0)

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
