"""newuser49 #5: every task says why it was chosen.

The molecule stage's requests carry ``why`` (``{"rule": "initial design" | "pool screen" |
"acquisition" | "constraint screen", ...}`` with the acquisition's value, rate, cost and cost
power for its picks), the runner records it in the store's ``submitted`` event, and
``crystal-agent report`` writes ``report/decisions.csv``, one row per submitted task joined
with its stored evaluation. ``select_batch(..., scores=[])`` reports the scores of its picks
without changing them.
"""

from __future__ import annotations

import csv
import math
import tomllib

import numpy as np
import pytest

from agent.campaign import Campaign
from agent.config import parse_config
from agent.local_executor import LocalExecutor
from agent.runner import run_campaign
from agent.summary import quantity
from sim_backends.replay import reorg_table_values

N_INITIAL = 4
BODY = f"""
objective = "reorg_energy_kjmol"
direction = "minimize"
batch_size = 1
seed = 3
max_cpu_hours = 0.2
max_evaluations = 12
[surrogate]
n_initial = {N_INITIAL}
[tracking]
enabled = false
[[backends]]
name = "replay-xtb-reorg"
[[backends]]
name = "replay-dft-reorg"
"""

COLUMNS = ["n", "time", "backend", "molecule", "smiles", "structure_id", "rule", "detail", "acquisition_level",
           "acquisition_kind", "acquisition_value", "value_unit", "rate", "cost_cpu_s", "cost_power", "p_feasible",
           "best_direct_rate", "cpu_s", "succeeded", "request_id"]


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    """A finished two-level replay campaign (stored GFN2-xTB and DFT reorganisation energies,
    the in-process executor, one task at a time): its runs directory."""
    smiles, _, dft = reorg_table_values()
    pool = [s for s, d in zip(smiles, dft, strict=True) if np.isfinite(d)]
    tmp = tmp_path_factory.mktemp("decisions")
    (tmp / "pool.smi").write_text("\n".join(pool) + "\n")
    cfg = parse_config(tomllib.loads('name = "why"\npool = "pool.smi"\n' + BODY), base_dir=tmp)
    camp = Campaign.create(cfg, tmp / "runs")
    try:
        run_campaign(camp, tmp / "runs", executor=LocalExecutor(slots=1), progress=False)
    finally:
        camp.close()
    return tmp / "runs"


def _submitted(runs) -> list[dict]:
    camp = Campaign.open("why", runs)
    try:
        return camp.store.events("submitted")
    finally:
        camp.close()


def test_every_submitted_event_says_why(campaign):
    """The first n_initial tasks are the initial design at the cheap level; every later one is
    the acquisition's, with a finite positive value and rate, its level's CPU-second cost and
    a cost power in [0, 1] that reproduce the rate; the top level is chosen by expected
    improvement at least once."""
    events = _submitted(campaign)
    assert len(events) >= N_INITIAL + 3  # the compute budget ends it (11 tasks at seed 3)
    rules = [e["why"]["rule"] for e in events]
    assert rules[:N_INITIAL] == ["initial design"] * N_INITIAL, rules
    assert rules[N_INITIAL:] == ["acquisition"] * (len(events) - N_INITIAL), rules
    assert all(e["backend"] == "replay-xtb-reorg" and set(e["why"]) == {"rule"} for e in events[:N_INITIAL])
    kinds = set()
    for e in events[N_INITIAL:]:
        why = e["why"]
        assert why["level"] == e["backend"]  # no constraints: the level weighed is the one run
        assert why["cost_unit"] == "CPU s" and why["cost"] > 0
        assert 0.0 <= why["cost_power"] <= 1.0
        assert math.isfinite(why["value"]) and why["value"] > 0
        assert why["rate"] == pytest.approx(why["value"] / why["cost"] ** why["cost_power"], rel=1e-9)
        assert "p_feasible" not in why
        kinds.add(why["kind"])
        if why["kind"] == "look-ahead value":  # a cheaper level is chosen only when it beats lambda
            assert e["backend"] == "replay-xtb-reorg" and why["rate"] >= why["best_direct_rate"] * (1 - 1e-6)
        else:
            assert e["backend"] == "replay-dft-reorg" and why["rate"] == pytest.approx(why["best_direct_rate"])
    assert "expected improvement" in kinds
    # the cost power falls as the budget is spent (cost cooling)
    powers = [e["why"]["cost_power"] for e in events[N_INITIAL:]]
    assert powers == sorted(powers, reverse=True) and powers[-1] < powers[0]


def test_report_writes_decisions_csv(campaign, capsys):
    """``crystal-agent report`` writes decisions.csv: one row per submitted task in order,
    with the rule and acquisition numbers of the event and the stored CPU seconds and outcome;
    its columns are described in results_columns.csv. A submitted event without ``why`` (a
    campaign made before decisions were recorded) gives the rule 'not recorded'."""
    from agent.cli import main

    assert main(["report", "why", "--runs-dir", str(campaign)]) == 0
    capsys.readouterr()
    out = campaign / "why" / "report"
    with (out / "decisions.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    events = _submitted(campaign)
    camp = Campaign.open("why", campaign)
    try:
        evs = {ev.request_id: ev for ev in camp.store.evaluations()}
    finally:
        camp.close()
    assert list(rows[0]) == COLUMNS
    assert len(rows) == len(events) == len(evs)
    assert [int(r["n"]) for r in rows] == list(range(1, len(events) + 1))
    for r, e in zip(rows, events, strict=True):
        ev = evs[r["request_id"]]
        assert r["request_id"] == e["request_id"] and r["backend"] == e["backend"] == ev.backend
        assert r["smiles"] == e["smiles"] and r["molecule"]
        assert r["rule"] == e["why"]["rule"]
        assert float(r["cpu_s"]) == pytest.approx(ev.cpu_s, rel=1e-3) and r["succeeded"] == "yes"
        if r["rule"] == "acquisition":
            assert float(r["acquisition_value"]) == pytest.approx(e["why"]["value"], rel=1e-3)
            assert r["value_unit"] == quantity("reorg_energy_kjmol")[2] == "kJ/mol"  # the objective's unit
            assert float(r["rate"]) == pytest.approx(e["why"]["rate"], rel=1e-3)
            assert float(r["cost_cpu_s"]) == pytest.approx(e["why"]["cost"], rel=1e-3)
            assert r["acquisition_kind"] in ("expected improvement", "look-ahead value")
        else:
            assert r["acquisition_value"] == r["rate"] == r["cost_cpu_s"] == r["value_unit"] == ""
    assert [r["rule"] for r in rows[:N_INITIAL]] == ["initial design"] * N_INITIAL
    with (out / "results_columns.csv").open(newline="") as fh:
        described = [c for c in csv.DictReader(fh) if c["file"] == "decisions.csv"]
    assert [c["column"] for c in described] == COLUMNS
    assert next(c for c in described if c["column"] == "cost_cpu_s")["unit"] == "s"
    assert next(c for c in described if c["column"] == "acquisition_value")["unit"] == "kJ/mol"

    # an event as code before this change wrote it: no why
    from agent.report import decisions_table

    camp = Campaign.open("why", campaign)
    try:
        with camp.store.transaction() as c:
            c.execute("UPDATE events SET payload = json_remove(payload, '$.why') WHERE id = ?",
                      (events[-1]["event_id"],))
        decisions_table(camp, out / "decisions.csv")
    finally:
        camp.close()
    with (out / "decisions.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[-1]["rule"] == "not recorded" and rows[-1]["acquisition_value"] == ""
    assert rows[-1]["succeeded"] == "yes" and rows[-2]["rule"] == "acquisition"


def _fitted_pool():
    from agent.surrogates.fingerprints import morgan_fingerprints
    from agent.surrogates.molecule_gp import MoleculeSurrogate, Observation

    smiles, xtb, dft = reorg_table_values()
    keep = [i for i, s in enumerate(smiles) if np.isfinite(xtb[i])]
    smiles = [smiles[i] for i in keep]
    xtb = np.array([xtb[i] for i in keep])
    dft = np.array([dft[i] for i in keep])
    fps = morgan_fingerprints(smiles)
    rows = np.random.default_rng(0).permutation(len(smiles))
    obs = [Observation(int(i), 0, float(xtb[i])) for i in rows[:10]]
    top = [int(i) for i in rows[:20] if np.isfinite(dft[i])][:2]
    obs += [Observation(i, 1, float(dft[i])) for i in top]
    model = MoleculeSurrogate(2, seed=0)
    model.fit(fps, obs)
    allowed = np.ones((len(smiles), 2), dtype=bool)
    for o in obs:
        allowed[o.mol_index, o.fidelity] = False
    return model, fps, allowed, min(float(dft[i]) for i in top)


@pytest.mark.parametrize("cost_power", [1.0, 0.4])
def test_scores_change_no_decision(cost_power):
    """select_batch with ``scores=[]`` returns the picks it returns without, one score per
    pick, each rate its value / cost**cost_power; a first pick at the top level reports the
    closed-form expected improvement of the surrogate's top-level posterior."""
    from agent.acquisition import expected_improvement, select_batch

    model, fps, allowed, best = _fitted_pool()
    kw = dict(q=4, costs=[0.6, 130.0], allowed=allowed, pending=[(int(np.flatnonzero(allowed[:, 0])[0]), 0)],
              best_value=best, direction="minimize", seed=5, cost_power=cost_power)
    scores: list[dict] = []
    picks = select_batch(model, fps, **kw, scores=scores)
    assert picks == select_batch(model, fps, **kw) and len(picks) == 4
    assert [s["level"] for s in scores] == [f for _, f in picks]
    for s in scores:
        cost = kw["costs"][s["level"]]
        assert s["cost"] == cost and s["cost_power"] == cost_power
        assert s["rate"] == pytest.approx(s["value"] / cost ** cost_power, rel=1e-9)
        assert s["kind"] == ("expected improvement" if s["level"] == 1 else "look-ahead value")
    # per-pair costs: the divisor reported is the pair's
    pair = np.array([[0.3, 90.0]]) * (1 + np.arange(len(fps)) % 3)[:, None]
    scores = []
    picks = select_batch(model, fps, **kw, pair_costs=pair, scores=scores)
    assert picks == select_batch(model, fps, **kw, pair_costs=pair)
    assert [s["cost"] for s in scores] == [pair[i, f] for i, f in picks]
    # the first top-level pick's value is the EI of the top-level posterior over the best value
    only_top = allowed.copy()
    only_top[:, 0] = False
    scores = []
    (i, f), = select_batch(model, fps, **{**kw, "q": 1, "pending": [], "allowed": only_top}, scores=scores)
    mean, sd = model.predict(fps, 1)
    assert f == 1 and scores[0]["value"] == pytest.approx(
        float(expected_improvement(np.array([best - mean[i]]), np.array([sd[i]]))[0]), rel=1e-4)
    assert scores[0]["rate"] == pytest.approx(scores[0]["best_direct_rate"])
