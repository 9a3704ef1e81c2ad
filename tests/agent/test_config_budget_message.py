"""A structure-stage budget that leaves nothing for the molecule stage is refused with the
numbers and whether the value was given or is the default (newuser35 #11)."""

from __future__ import annotations

import pytest


def test_budget_clash_names_both_numbers_and_the_default():
    from agent.config import ConfigError, parse_config

    base = {"name": "t", "pool": "pool.smi", "objective": "reorg_energy_kjmol", "max_evaluations": 4,
            "backends": [{"name": "xtb-reorg"}]}
    with pytest.raises(ConfigError, match=r"budget_evaluations \(10, its default\) must leave evaluations "
                                          r"for the molecule stage \(max_evaluations = 4\)"):
        parse_config({**base, "structures": {"enabled": True}})
    with pytest.raises(ConfigError, match=r"budget_evaluations \(6\) must leave"):
        parse_config({**base, "structures": {"enabled": True, "budget_evaluations": 6}})
