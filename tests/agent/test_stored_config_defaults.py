"""A stored campaign keeps the settings it was made with when a default changes, and
limits added for new configs do not lock older campaigns out (review of 2026-12-06)."""

import numpy as np

from conftest import write_config

POOL = ["C", "CC", "CCC", "CCO"]
BODY = """
objective = "n_heavy_atoms"
max_evaluations = 4
[tracking]
enabled = false
[[backends]]
name = "diagnostic"
"""


def _stored(camp):
    import tomllib

    return tomllib.loads(camp.store.get_meta("config_toml"))


def test_the_molecule_kernel_of_creation_is_kept(tmp_path):
    from agent.campaign import Campaign
    from agent.config import config_to_toml, load_config, parse_config
    from agent.surrogates import molecule_gp

    runs = tmp_path / "runs"
    camp = Campaign.create(load_config(write_config(tmp_path, POOL, BODY, name="k")), runs)
    try:
        assert _stored(camp)["surrogate"]["kernel"] == molecule_gp.KERNEL
        # a campaign stored before the option: no kernel key
        data = _stored(camp)
        del data["surrogate"]["kernel"]
        camp.store.set_meta("config_toml", config_to_toml(parse_config(data)))
        assert "kernel" not in _stored(camp)["surrogate"]
    finally:
        camp.close()
    camp = Campaign.open("k", runs)
    try:
        assert camp.cfg.surrogate.kernel == "tanimoto" and camp.molecules.kernel == "tanimoto"
        assert _stored(camp)["surrogate"]["kernel"] == "tanimoto"  # pinned in the store
    finally:
        camp.close()
    assert np.isfinite(molecule_gp.MoleculeSurrogate(n_fidelities=1, kernel="tanimoto").n_fidelities)


def test_a_stored_budget_above_todays_ceiling_still_opens(tmp_path):
    from agent.campaign import Campaign
    from agent.config import MAX_CPU_HOURS, ConfigError, load_config

    runs = tmp_path / "runs"
    camp = Campaign.create(load_config(write_config(tmp_path, POOL, BODY, name="c")), runs)
    try:
        text = camp.store.get_meta("config_toml")
        camp.store.set_meta("config_toml", text.replace("max_evaluations = 4",
                                                        f"max_evaluations = 4\nmax_cpu_hours = {MAX_CPU_HOURS * 10:g}"))
    finally:
        camp.close()
    camp = Campaign.open("c", runs, readonly=True)
    try:
        assert camp.cfg.max_cpu_hours == MAX_CPU_HOURS * 10
    finally:
        camp.close()
    import pytest

    (tmp_path / "new").mkdir()
    with pytest.raises(ConfigError, match="above the ceiling"):
        load_config(write_config(tmp_path / "new", POOL, BODY.replace(
            "max_evaluations = 4", f"max_evaluations = 4\nmax_cpu_hours = {MAX_CPU_HOURS * 10:g}"), name="n"))


def test_the_screen_setting_of_creation_is_kept(tmp_path, monkeypatch):
    """``[surrogate] screen_pool`` unset: the default of the campaign's creation is stored;
    a campaign stored before the option keeps "off" (no screen)."""
    from agent.campaign import Campaign
    from agent.config import config_to_toml, load_config, parse_config
    from agent.stages import molecule as molecule_stage

    monkeypatch.setattr(molecule_stage, "SCREEN_POOL", "auto")
    runs = tmp_path / "runs"
    camp = Campaign.create(load_config(write_config(tmp_path, POOL, BODY, name="s")), runs)
    try:
        assert _stored(camp)["surrogate"]["screen_pool"] == "auto"
        data = _stored(camp)
        del data["surrogate"]["screen_pool"]
        camp.store.set_meta("config_toml", config_to_toml(parse_config(data)))
    finally:
        camp.close()
    camp = Campaign.open("s", runs)
    try:
        assert camp.cfg.surrogate.screen_pool == "off" and _stored(camp)["surrogate"]["screen_pool"] == "off"
    finally:
        camp.close()


def test_every_stored_default_is_stored_at_creation_and_pinned_when_missing(tmp_path):
    """One table (agent.campaign.STORED_DEFAULTS) drives both places: each setting left unset is
    stored with today's default, and a stored config without it opens with the setting's legacy
    value, pinned in the store (the others kept as stored)."""
    import importlib

    from agent.campaign import STORED_DEFAULTS, Campaign
    from agent.config import config_to_toml, load_config, parse_config

    assert {(s, k) for s, k, _, _ in STORED_DEFAULTS} >= {("surrogate", "kernel"), ("surrogate", "screen_pool")}
    for section, key, today, legacy in STORED_DEFAULTS:
        module, name = today.split(":")
        current = getattr(importlib.import_module(module), name)
        (tmp_path / key).mkdir()
        runs = tmp_path / key / "runs"
        camp = Campaign.create(load_config(write_config(tmp_path / key, POOL, BODY, name="d")), runs)
        try:
            assert _stored(camp)[section][key] == current
            data = _stored(camp)
            del data[section][key]
            camp.store.set_meta("config_toml", config_to_toml(parse_config(data)))
        finally:
            camp.close()
        camp = Campaign.open("d", runs)
        try:
            assert getattr(getattr(camp.cfg, section), key) == legacy
            assert _stored(camp)[section][key] == legacy
            others = [(s, k) for s, k, _, _ in STORED_DEFAULTS if (s, k) != (section, key)]
            assert all(_stored(camp)[s][k] == getattr(getattr(camp.cfg, s), k) for s, k in others)
        finally:
            camp.close()
