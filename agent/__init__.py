"""crystal-agent: the decision-making side (config, campaign, store, surrogates,
acquisition, Ray executor, MLflow tracking, lab adapters, CLI).

Importing this package is cheap; heavy libraries load inside the functions that use them.
The public Python API is loaded on first use::

    from agent import Campaign, load_config, run_campaign

    cfg = load_config("examples/demo.toml")
    with Campaign.create(cfg, "runs") as campaign:   # or Campaign.open("demo", "runs"); closed on leaving
        status = run_campaign(campaign)              # runs to a stop criterion (in the campaign's runs dir)
        rows = campaign.results()                    # one dict per evaluation: name, level, value, unit, ...
    print(status.best, status.objective["unit"], status.objective["level"])

Crystal structure prediction on its own is :func:`sim_backends.csp.run_csp`.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = {
    "Campaign": "agent.campaign",
    "Status": "agent.campaign",
    "CampaignConfig": "agent.config",
    "ConfigError": "agent.config",
    "load_config": "agent.config",
    "parse_config": "agent.config",
    "run_campaign": "agent.runner",
    "CampaignInterrupted": "agent.runner",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'agent' has no attribute {name!r}")
