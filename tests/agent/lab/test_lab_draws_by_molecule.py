"""The simulated lab's draws do not depend on the campaign name (newuser46a #7): `run
examples/lab_feedback.toml --name lf1` and `--name lf2` (seed 0) gave thiophene crystalline
(matched) in one and amorphous in the other, because every draw was seeded by the request
id ``<campaign>-m<molecule id>-<n>``. A campaign's request is now drawn by (lab seed,
molecule, n), in the lab adapter and in the lab server alike (the request carries all of
it: no protocol change); any other request id keeps its old seeding."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agent.lab.base import LabRequest
from agent.lab.simulated import SimulatedLab, _seed, draw_key
from agent.lab.testing import FakeClock, target_i_landscape, x23_landscape
from conftest import ROOT, write_config

PHENOL = "Oc1ccccc1"


def _lab(seed=0, **kw):
    return SimulatedLab(list(target_i_landscape())[:12], seed=seed, **kw)


def _without_id(status):
    d = status.to_dict()
    d["result"].pop("request_id")
    return d


def test_campaign_requests_are_drawn_by_molecule_and_number_not_campaign_name():
    lab = _lab(seed=0, failure_scale=3.0)  # failures more likely: outcomes of every kind
    outcomes = set()
    for n in range(1, 13):
        a = LabRequest(f"lf1-m5-{n}", PHENOL, "cooling", "ethanol", 298.15)
        b = LabRequest(f"lf2-m5-{n}", PHENOL, "cooling", "ethanol", 298.15)
        c = LabRequest(f"another-name-m7-{n}", PHENOL, "cooling", "ethanol", 298.15)
        assert draw_key(a) == draw_key(b) == draw_key(c) == ("molecule", PHENOL, str(n))
        assert lab.draw_outcome(a) == lab.draw_outcome(b) == lab.draw_outcome(c)
        assert lab.durations_s(a) == lab.durations_s(b)
        sa, sb = lab.run_experiment(a), lab.run_experiment(b)
        if sa.state == "done":
            assert sa.result.request_id == a.request_id and _without_id(sa) == _without_id(sb)
        else:
            assert sa == sb
        outcomes.add(sa.result.outcome if sa.result else sa.state)
    assert len(outcomes) > 1  # not one fixed answer
    # the draws still differ by request number, lab seed and molecule
    one, two = (LabRequest(f"lf1-m5-{n}", PHENOL, "cooling", "ethanol", 298.15) for n in (1, 2))
    cresol = LabRequest("lf1-m5-1", "Cc1ccccc1O", "cooling", "ethanol", 298.15)
    assert lab.durations_s(one) != lab.durations_s(two)
    assert _lab(seed=1).durations_s(one) != lab.durations_s(one)
    assert lab.durations_s(cresol) != lab.durations_s(one)


def test_other_request_ids_keep_their_old_seeding():
    lab = _lab(seed=4)
    for rid in ("r1", "same", "lf1-m5", "m5-1", "x-m5-1b"):
        req = LabRequest(rid, PHENOL, "slurry", "water", 298.15)
        assert draw_key(req) == (rid,)
        rng = np.random.default_rng(_seed(4, "delay", rid))
        assert lab.durations_s(req) == (float(rng.uniform(0.0, 1.0)), float(rng.uniform(1.0, 5.0)))


def test_the_lab_server_serves_the_same_result_under_any_campaign_name(tmp_path):
    from agent.lab.server import LabServer

    clock = FakeClock(0.0)
    entries = list(x23_landscape(4))  # anthracene among them
    server = LabServer(entries, tmp_path / "lab.sqlite", "token-123456", clock=clock, seed=0)
    try:
        anthracene = "c1ccc2cc3ccccc3cc2c1"
        ids = []
        for name in ("lf1", "lf2"):
            code, info = server.submit(LabRequest(f"{name}-m4-1", anthracene, "slow_evaporation", "toluene"))
            assert code == 201
            ids.append(info["experiment_id"])
        clock.advance(100.0)
        a, b = (server.describe(eid)["status"] for eid in ids)
        assert a["state"] == b["state"] == "done"
        a["result"].pop("request_id"), b["result"].pop("request_id")
        assert a == b
    finally:
        server._db.close()


LANDSCAPE = f'landscape = "{ROOT / "data/landscapes/formic_acid_dft"}", cheap = "ff", level = "dft"'
BODY = """
objective = "n_heavy_atoms"
batch_size = 2
seed = 0
synchronous = true
max_evaluations = 5
[surrogate]
n_initial = 2
[tracking]
enabled = false
[[backends]]
name = "diagnostic"
[structures]
enabled = true
budget_evaluations = 2
csp = {name = "replay-csp", params = {%s, n = 30}}
refine = {name = "replay-crystal", params = {%s}}
max_structures = 30
top_k = 2
[lab]
adapter = "simulated"
params = {queue_delay_s = [0.0, 0.0], run_delay_s = [0.0, 0.0]}
""" % (LANDSCAPE, LANDSCAPE)


def _run(tmp_path, name):
    from agent.campaign import Campaign
    from agent.config import load_config
    from agent.local_executor import LocalExecutor
    from agent.runner import run_campaign

    (tmp_path / name).mkdir()
    cfg = load_config(write_config(tmp_path / name, ["OC=O formic_acid", "CC(=O)O acetic_acid"], BODY, name=name))
    camp = Campaign.create(cfg, tmp_path / name / "runs")
    try:
        run_campaign(camp, tmp_path / name / "runs", progress=False, executor=LocalExecutor(slots=2))
        return [dict(r) for r in camp.store.lab_experiments()]
    finally:
        camp.close()


def test_two_campaigns_of_one_config_under_different_names_get_the_same_lab_outcome(tmp_path):
    first, second = _run(tmp_path, "lf1"), _run(tmp_path, "lf2")
    assert [r["request_id"] for r in first] == ["lf1-m1-1"] and [r["request_id"] for r in second] == ["lf2-m1-1"]
    (a,), (b,) = first, second
    assert a["state"] == b["state"] == "done", (a["reason"], b["reason"])
    ra, rb = json.loads(a["result_json"]), json.loads(b["result_json"])
    ia, ib = json.loads(a["identification_json"]), json.loads(b["identification_json"])
    for d in (ra, rb, ia, ib):
        d.pop("request_id")
    assert ra == rb  # outcome, measured pattern, simulated truth
    assert ia == ib and a["matched_structure_id"] == b["matched_structure_id"]
