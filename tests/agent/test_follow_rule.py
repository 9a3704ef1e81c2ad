"""The follow rule of the molecule stage (a cheaper level only where the top level may still
follow it) and its one exemption, the screen of ``[surrogate] screen_pool`` (the cheapest level
on every molecule): decided in one place (``MoleculeStage._where_top_follows``), which the pairs
that may be proposed (``_allowed``) and those that fit the compute budget (``_within_budget``)
both read (review of 2026-12-07: each applied ``screen_pool`` with its own flag). Real campaigns
of the stored GFN2-xTB and B3LYP replays, nothing run."""

from __future__ import annotations

import tomllib

import numpy as np
import pytest

BODY = """
objective = "reorg_energy_kjmol"
direction = "minimize"
max_cpu_hours = 0.1
max_evaluations = 100
[surrogate]
screen_pool = "{screen}"
[tracking]
enabled = false
[[backends]]
name = "replay-xtb-reorg"
[[backends]]
name = "replay-dft-reorg"
"""


@pytest.fixture(params=["on", "off"])
def stage(request, tmp_path):
    from agent.campaign import Campaign
    from agent.config import parse_config
    from sim_backends.replay import reorg_table_values

    (tmp_path / "pool.smi").write_text("\n".join(reorg_table_values()[0][:3]) + "\n")
    text = f'name = "f"\npool = "pool.smi"\n' + BODY.format(screen=request.param)
    camp = Campaign.create(parse_config(tomllib.loads(text), base_dir=tmp_path), tmp_path / "runs")
    try:
        assert camp.molecules.screen_pool is (request.param == "on")
        yield camp.molecules
    finally:
        camp.close()


def _rules(stage) -> tuple[np.ndarray, np.ndarray]:
    """What each rule gives where the top level cannot follow: molecule 0 closed at the top
    level (as a failed DFT run leaves it), and molecule 1 whose DFT needs more CPU than is left."""
    stage.blocked[0, 1] = True
    try:
        allowed = stage._allowed()[0]
    finally:
        stage.blocked[0, 1] = False
    needed = np.array([[1.0, 5.0], [1.0, 100.0], [1.0, 5.0]])
    return allowed, stage._within_budget(np.ones((3, 2), bool), needed, 10.0)


def test_both_rules_exempt_the_cheapest_level_exactly_when_the_pool_is_screened(stage):
    screen = stage.screen_pool
    allowed, fits = _rules(stage)
    assert allowed.tolist() == [[screen, False], [True, True], [True, True]]
    assert fits.tolist() == [[True, True], [screen, False], [True, True]]
    # the one decision: turned the other way, both rules turn with it
    stage._screen = not screen
    allowed, fits = _rules(stage)
    assert allowed[0].tolist() == [not screen, False] and fits[1].tolist() == [not screen, False]


def test_the_follow_rule_per_level(stage):
    """Three levels: a cheaper level is kept only where the top may follow it (per cheaper level
    or for all at once); only the cheapest is exempt under the screen; the top is never touched."""
    pairs = np.ones((2, 3), bool)
    out = stage._where_top_follows(pairs, np.array([[False], [True]]))
    assert out.tolist() == [[stage.screen_pool, False, True], [True, True, True]]
    out = stage._where_top_follows(pairs, np.array([[True, False], [False, True]]))
    assert out.tolist() == [[True, False, True], [stage.screen_pool, True, True]]
    assert pairs.all()  # the input is left as it was
