"""``[surrogate] screen_pool``: the cheapest level on every molecule of the pool, also where
the top level can never follow within the budget (newuser45b #1: with "off", 8 of 12
molecules -- anthracene to perylene, whose B3LYP relaxations do not fit 540 CPU s -- never
got the 1-CPU-s GFN2-xTB value). Real Campaign through run_campaign, in-process executor,
replays of stored GFN2-xTB and B3LYP results (data/benchmarks/reorg_table.csv)."""

from __future__ import annotations

import tomllib

import numpy as np
import pytest

from agent.campaign import Campaign
from agent.config import parse_config
from agent.local_executor import LocalExecutor
from agent.runner import run_campaign
from sim_backends.replay import reorg_table_values

BODY = """
objective = "reorg_energy_kjmol"
direction = "minimize"
batch_size = 2
seed = 0
max_cpu_hours = {hours}
max_evaluations = 100
[surrogate]
n_initial = 2
screen_pool = "{screen}"
[tracking]
enabled = false
[[backends]]
name = "replay-xtb-reorg"
[[backends]]
name = "replay-dft-reorg"
"""


@pytest.fixture(scope="module")
def pool():
    """Six molecules with a stored DFT value and the six largest without one (their
    DFT cost estimate is far above the budget of these campaigns)."""
    smiles, xtb, dft = reorg_table_values()
    from rdkit import Chem

    heavy = [Chem.MolFromSmiles(s).GetNumHeavyAtoms() for s in smiles]
    with_dft = [i for i in np.argsort(heavy) if np.isfinite(dft[i])][:6]
    big = [i for i in np.argsort(heavy)[::-1] if not np.isfinite(dft[i])][:6]
    return [smiles[i] for i in with_dft + big], {smiles[i] for i in big}


def _run(tmp_path, smiles, screen, hours):
    (tmp_path / "pool.smi").write_text("\n".join(smiles) + "\n")
    text = f'name = "s-{screen}"\npool = "pool.smi"\n' + BODY.format(screen=screen, hours=hours)
    camp = Campaign.create(parse_config(tomllib.loads(text), base_dir=tmp_path), tmp_path / "runs")
    run_campaign(camp, tmp_path / "runs", executor=LocalExecutor(slots=2), progress=False)
    return camp


@pytest.mark.parametrize("screen", ["on", "auto", "off"])
def test_the_screen_reaches_molecules_whose_top_level_cannot_follow(tmp_path, pool, screen):
    smiles, big = pool
    camp = _run(tmp_path, smiles, screen, hours=0.1)
    try:
        assert camp.molecules.screen_pool is (screen != "off")  # auto: 12 xTB runs are ~1 % of 360 CPU s
        evs = camp.store.evaluations()
        cheap = {camp.molecules.smiles[camp.molecules.index_of[e.molecule_id]]
                 for e in evs if e.backend == "replay-xtb-reorg"}
        if screen == "off":
            assert not cheap & big, "the cheap level ran where the top level could not follow"
            assert "screen_pool" in camp.stop_reason(), camp.stop_reason()
        else:
            assert cheap == set(smiles)  # every molecule screened ...
            assert not any(e.backend == "replay-dft-reorg" and camp.molecules.smiles[
                camp.molecules.index_of[e.molecule_id]] in big for e in evs)  # ... DFT only where it fits
            assert any(e.backend == "replay-dft-reorg" and e.ok for e in evs)  # and the top level still runs
    finally:
        camp.close()


def test_auto_does_not_screen_when_the_screen_would_take_much_of_the_budget(tmp_path, pool, monkeypatch):
    from agent.stages import molecule as molecule_stage

    monkeypatch.setattr(molecule_stage, "SCREEN_AUTO_FRACTION", 1e-4)
    smiles, _ = pool
    camp = _run(tmp_path, smiles, "auto", hours=0.1)
    try:
        assert camp.molecules.screen_pool is False
    finally:
        camp.close()
