"""A constrained value a cheap level reports screens the molecule before any higher level
(newuser37 M1): through the real Campaign, no higher-level evaluation is ever asked for a
molecule whose constrained value is not known yet (never computed, or its cheap evaluation
still in flight) or known to break the bound.

Replays of real GFN2-xTB and B3LYP/6-31G results of twelve heteroaromatics
(data/benchmarks/reorg_ip_validation12.csv). The cheap level (``replay-xtb-reorg``) reports
the calibrated gas-phase IP; with ``ip_gas_ev <= 9.0`` five molecules are excluded (furan
9.66, thiophene 9.13, oxazole 10.23, thiazole 9.51, imidazole 9.29 eV), thiazole and
thiophene among the lowest lambda+ of the pool (what the objective rewards). Two ladders:

* the top level does not report the IP (the generic ``replay`` of the DFT lambda+): the
  cheap verdict is final, as in the ESF loop where every level reports the same GFN2-xTB IP;
  a molecule gets the top level only after its cheap IP is stored and within the bound;
* the top level reports it more accurately (``replay-dft-reorg``): it may still overturn a
  cheap verdict, so a molecule outside the bound may go there while its probability of
  feasibility is at least P_FEASIBLE_MIN, but again only once its cheap IP is stored.

Both run with two tasks in flight (so a cheap evaluation can be in flight when the next
request is asked), with and without a compute budget (the evaluation-bound mode prices
evaluations so that proxies are not run first).
"""

from __future__ import annotations

import csv
import sys
import tomllib
from pathlib import Path

import pytest

from agent.campaign import Campaign
from agent.config import parse_config
from agent.constraints import P_FEASIBLE_MIN, feasibility_probability
from agent.local_executor import LocalExecutor
from agent.runner import run_campaign
from sim_backends.reorg import XTB_IP_SD_EV

TABLE = Path(__file__).resolve().parents[2] / "data" / "benchmarks" / "reorg_ip_validation12.csv"
BOUND = 9.0

HEAD = f"""
name = "screen"
pool = "pool.smi"
objective = "reorg_energy_kjmol"
direction = "minimize"
batch_size = 2
seed = {{seed}}
max_evaluations = {{n_eval}}
{{hours}}
[surrogate]
n_initial = 4
[tracking]
enabled = false
[[constraints]]
value = "ip_gas_ev"
max = {BOUND}
why = "hole injection"
[[backends]]
name = "replay-xtb-reorg"
params = {{{{ table = "{TABLE}", cost_column = "xtb_cpu_s" }}}}
"""

#: the top level without the IP: the cheap verdict is final
TOP_FINAL = f"""
[[backends]]
name = "replay"
params = {{ table = "{TABLE}", columns = {{ reorg_energy_kjmol = "dft_reorg_kjmol" }}, cost_column = "dft_cpu_s", fidelity = 1 }}
"""
#: the top level with a more accurate IP: it may overturn the cheap verdict
TOP_OVERTURNS = f"""
[[backends]]
name = "replay-dft-reorg"
params = {{ table = "{TABLE}", cost_column = "dft_cpu_s" }}
"""


def _run(tmp_path: Path, top: str, seed: int, n_eval: int, hours: float | None) -> Campaign:
    rows = list(csv.DictReader(TABLE.open()))
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "pool.smi").write_text("".join(f"{r['smiles']} {r['name']}\n" for r in rows))
    text = HEAD.format(seed=seed, n_eval=n_eval, hours="" if hours is None else f"max_cpu_hours = {hours}") + top
    camp = Campaign.create(parse_config(tomllib.loads(text), base_dir=tmp_path), tmp_path / "runs")
    run_campaign(camp, tmp_path / "runs", executor=LocalExecutor(slots=2), progress=False)
    return camp


def _unscreened(camp: Campaign, final: bool) -> list[str]:
    """Each top-level evaluation asked for a molecule without a stored cheap IP at that
    moment, or whose cheap IP excluded it (final) / left it below P_FEASIBLE_MIN."""
    cheap, top = (b.name for b in camp.cfg.backends)
    names = {m["id"]: m["name"] for m in camp.store.molecules()}
    evs = camp.store.evaluations()
    out = []
    for h in (e for e in evs if e.backend == top):
        known = [c for c in evs if c.backend == cheap and c.molecule_id == h.molecule_id and c.ok
                 and "ip_gas_ev" in c.values and c.finished_at <= h.submitted_at]
        if not known:
            out.append(f"{names[h.molecule_id]}: {top} asked before its {cheap} IP was stored")
            continue
        ip = known[0].values["ip_gas_ev"]
        if final and ip > BOUND:
            out.append(f"{names[h.molecule_id]}: {top} asked at IP {ip:.2f} > {BOUND}")
        p = feasibility_probability({"ip_gas_ev": (ip, XTB_IP_SD_EV)}, camp.cfg.constraints)
        if not final and p < P_FEASIBLE_MIN:
            out.append(f"{names[h.molecule_id]}: {top} asked at IP {ip:.2f}, p = {p:.3f}")
    return out


@pytest.mark.parametrize("hours", [None, 0.05], ids=["evaluation-budget", "evaluation-and-cpu-budget"])
@pytest.mark.parametrize("seed", [0, 1])
def test_no_top_level_evaluation_for_an_unscreened_or_excluded_molecule(tmp_path, seed, hours):
    camp = _run(tmp_path, TOP_FINAL, seed, 14, hours)
    try:
        evs = camp.store.evaluations()
        assert all(ev.ok for ev in evs)
        top = [ev for ev in evs if ev.backend == "replay"]
        assert top, "the campaign never chose the top level: nothing tested"
        assert _unscreened(camp, final=True) == []
        excluded = {m["id"] for m in camp.store.molecules() if m["name"] in
                    {"furan", "thiophene", "oxazole", "thiazole", "imidazole"}}
        assert not any(ev.molecule_id in excluded for ev in top)
    finally:
        camp.close()


@pytest.mark.parametrize("hours", [None, 0.1], ids=["evaluation-budget", "evaluation-and-cpu-budget"])
@pytest.mark.parametrize("seed", [0, 1])
def test_a_level_that_can_overturn_the_verdict_still_waits_for_the_cheap_value(tmp_path, seed, hours):
    camp = _run(tmp_path, TOP_OVERTURNS, seed, 14, hours)
    try:
        assert all(ev.ok for ev in camp.store.evaluations())
        assert any(ev.backend == "replay-dft-reorg" for ev in camp.store.evaluations())
        assert _unscreened(camp, final=False) == []
    finally:
        camp.close()


def test_without_constraints_the_choices_are_unchanged(tmp_path):
    """The screening only acts on constrained values: without ``[[constraints]]`` the same
    campaign is free to ask the top level for a molecule the cheap level has not seen."""
    from agent.stages.molecule import MoleculeStage

    camp = _run(tmp_path, TOP_FINAL, 0, 4, None)
    try:
        cfg = camp.cfg.model_copy(update={"constraints": []})
        stage = MoleculeStage(cfg)
        stage.restore(camp.store)
        for ev in camp.store.evaluations():
            stage.tell(None, ev)
        assert stage.allowed()[:, 1].sum() == len(stage.smiles)
        constrained = camp.molecules.allowed()
        seen = {stage.index_of[ev.molecule_id] for ev in camp.store.evaluations()}
        assert {int(i) for i in constrained[:, 1].nonzero()[0]} <= seen
    finally:
        camp.close()


def test_a_spent_screening_level_does_not_starve_the_top_level(tmp_path, monkeypatch):
    """Review of 19b807d: with the cheap level's budget_evaluations (4) used up, the molecules
    it never screened were held from the top level for good and the campaign stopped with
    "no candidate left" after 2 top-level evaluations. A level that may no longer run cannot
    screen: the top level goes on (to the evaluation budget), never on a molecule the
    cheap level did screen out."""
    head = HEAD.replace('cost_column = "xtb_cpu_s" }}', 'cost_column = "xtb_cpu_s" }}\nbudget_evaluations = 4', 1)
    assert head != HEAD
    monkeypatch.setattr(sys.modules[__name__], "HEAD", head)
    camp = _run(tmp_path, TOP_FINAL, 0, 12, None)
    try:
        status = camp.status()
        assert status.stop_reason == "evaluation budget reached (12)", status.stop_reason
        assert status.n_by_backend == {"replay-xtb-reorg": 4, "replay": 8}
        excluded = set(camp.molecules.infeasible)
        tops = [camp.molecules.index_of[ev.molecule_id] for ev in camp.store.evaluations() if ev.backend == "replay"]
        assert not excluded & set(tops)
    finally:
        camp.close()
