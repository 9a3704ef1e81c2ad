"""Crystallisation conditions a chemist would send (newuser43b #3, #9, #10): liquids are
cryocrystallised in situ, not "sublimed at -68 C"; compounds not in the substances table
get a stated default assumption (vapour growth for large non-polar aromatics); the user
sets conditions in [lab]; the lab refuses impossible ones at submission with the
temperature as given; the mixture plot draws each component and their fitted sum; the
report lists the lab plots; approve says when a request is already approved."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agent.lab.base import METHOD_DESCRIPTIONS, METHODS, SOLVENT_FREE_METHODS, LabRequest, LabRequestError, format_K
from agent.lab.substances import crystallisation_problem, suggest_conditions
from agent.lab.testing import target_i_landscape, x23_landscape

PENTACENE = "c1ccc2cc3cc4cc5ccccc5cc4cc3cc2c1"


# -- #3: methods and suggested conditions ------------------------------------------------
def test_liquid_is_cryocrystallised_not_sublimed():
    cond = suggest_conditions("c1ccsc1")  # thiophene, mp 234.9 K
    assert cond["method"] == "cryocrystallisation" and cond["solvent"] is None
    assert cond["temperature_K"] == pytest.approx(204.9)
    assert "neat liquid" in cond["note"] and "capillary" in cond["note"]
    assert "cryocrystallisation" in METHODS and "cryocrystallisation" in SOLVENT_FREE_METHODS
    assert set(METHOD_DESCRIPTIONS) == set(METHODS)
    assert "neat liquid" in METHOD_DESCRIPTIONS["cryocrystallisation"]
    assert crystallisation_problem("c1ccsc1", **{k: cond[k] for k in ("method", "temperature_K")},
                                   solvent_name=None) is None
    # the request validates like sublimation: no solvent
    with pytest.raises(LabRequestError, match="cryocrystallisation takes no solvent"):
        LabRequest("t", "c1ccsc1", "cryocrystallisation", "ethanol", 200.0)
    # a compound that sublimes at 1 atm has no liquid to freeze: it is deposited from the gas
    assert suggest_conditions("C#C")["method"] == "sublimation"
    problem = crystallisation_problem("C#C", "cryocrystallisation", None, 160.0)
    assert "no liquid phase" in problem and "sublimation" in problem


def test_simulated_lab_runs_a_cryocrystallisation():
    from agent.lab.simulated import SimulatedLab

    lab = SimulatedLab({"c1ccsc1": list(x23_landscape())}, failure_scale=0.0)
    status = lab.run_experiment(LabRequest("th1", "c1ccsc1", **{k: v for k, v in suggest_conditions("c1ccsc1").items()}))
    assert status.state == "done" and status.result.metadata["method"] == "cryocrystallisation"
    refused = lab.run_experiment(LabRequest("th2", "c1ccsc1", "cryocrystallisation", None, 250.0))
    assert refused.state == "failed" and "thiophene is a liquid at 250 K (melts at 234.9 K)" in refused.reason


def test_unlisted_and_polyaromatic_compounds_get_stated_plausible_conditions():
    pent = suggest_conditions(PENTACENE)  # not in the table: 5 aromatic rings, non-polar
    assert pent["method"] == "sublimation" and pent["solvent"] is None and pent["temperature_K"] == 423.15
    assert pent["note"].startswith("default assumption") and "physical vapour transport" in pent["note"]
    other = suggest_conditions("O=C1CCC(=O)CC1")
    assert (other["method"], other["solvent"], other["temperature_K"]) == ("slow_evaporation", "ethanol", 298.15)
    assert other["note"].startswith("default assumption")
    anthracene = suggest_conditions("c1ccc2cc3ccccc3cc2c1")  # listed, mp 489 K, insoluble in ethanol
    assert anthracene["method"] == "sublimation" and anthracene["temperature_K"] < 489.0
    naphthalene = suggest_conditions("c1ccc2ccccc2c1")  # dissolves in ethanol
    assert naphthalene["method"] == "slow_evaporation"
    # the note travels with the request (and not at all when there is none)
    req = LabRequest("p", PENTACENE, **pent)
    assert LabRequest.from_dict(req.to_dict()) == req and "note" in req.to_dict()
    assert "note" not in LabRequest("q", "C").to_dict()


# -- #3: conditions set in the config ----------------------------------------------------
def test_config_conditions_override_and_are_stated():
    from agent.lab.config import LabConfig

    cfg = LabConfig.model_validate({
        "conditions": {"method": "cooling", "solvent": "toluene", "temperature_K": 300},
        "molecule_conditions": [{"smiles": "S1C=CC=C1", "method": "cryocrystallisation", "temperature_K": 210}],
    })
    thio = cfg.request_conditions("c1ccsc1")  # per molecule, SMILES compared canonically
    assert (thio["method"], thio["solvent"], thio["temperature_K"]) == ("cryocrystallisation", None, 210.0)
    assert "set in the config" in thio["note"] and "molecule_conditions" in thio["note"]
    pent = cfg.request_conditions(PENTACENE)
    assert (pent["method"], pent["solvent"], pent["temperature_K"]) == ("cooling", "toluene", 300.0)
    partial = LabConfig.model_validate({"conditions": {"temperature_K": 220.0}}).request_conditions("c1ccsc1")
    assert partial["method"] == "cryocrystallisation" and partial["temperature_K"] == 220.0
    assert "the rest as suggested" in partial["note"]
    assert LabConfig().request_conditions("c1ccsc1") == suggest_conditions("c1ccsc1")


@pytest.mark.parametrize("lab, phrase", [
    ({"conditions": {"method": "boiling"}}, "lab.conditions: unknown crystallisation method 'boiling'"),
    ({"conditions": {"method": "sublimation", "solvent": "water"}}, "takes no solvent"),
    ({"conditions": {"method": "cooling"}}, "method cooling needs a solvent"),
    ({"conditions": {"solvent": "water"}}, "needs a method"),
    ({"conditions": {"temperature_K": 50}}, "lab.conditions.temperature_K"),
    ({"conditions": {"method": "slurry", "solvent": "unobtainium"}}, "unknown solvent 'unobtainium'"),
    ({"molecule_conditions": [{"smiles": "xx(", "temperature_K": 200}]}, "'xx(' is not a valid SMILES"),
    ({"molecule_conditions": [{"smiles": "c1ccsc1"}, {"smiles": "S1C=CC=C1"}]}, "has two entries"),
    ({"molecule_conditions": [{"method": "slurry", "solvent": "water"}]}, "lab.molecule_conditions.0.smiles"),
    ({"conditions": {"temp": 200}}, "lab.conditions.temp: unknown key"),
])
def test_config_conditions_errors_are_one_line(lab, phrase):
    from agent.config import ConfigError, parse_config
    from tests.conftest import ROOT

    import tomllib

    data = tomllib.loads((ROOT / "examples/lab_feedback.toml").read_text())
    data["lab"] = {**data["lab"], **lab}
    with pytest.raises(ConfigError) as exc:
        parse_config(data, base_dir=ROOT / "examples")
    assert phrase in str(exc.value) and "\n" not in str(exc.value).strip()


def test_impossible_config_conditions_are_refused_by_the_lab_with_the_reason():
    from agent.lab.config import LabConfig
    from agent.lab.simulated import SimulatedLab

    cond = LabConfig.model_validate({"conditions": {"temperature_K": 298.15}}).request_conditions("c1ccsc1")
    lab = SimulatedLab({"c1ccsc1": list(x23_landscape())})
    with pytest.raises(LabRequestError, match=r"refused: thiophene is a liquid at 298\.15 K"):
        lab.submit(LabRequest("cfg1", "c1ccsc1", **cond))


# -- #10: temperatures as given, refusal at submission, approve wording --------------------
def test_temperatures_printed_as_given():
    assert format_K(298.15) == "298.15" and format_K(204.9) == "204.9" and format_K(300.0) == "300"
    assert "benzene is a liquid at 298.15 K (melts at 278.7 K)" in crystallisation_problem(
        "c1ccccc1", "slow_evaporation", "ethanol", 298.15)
    assert "water (273.15 K)" in crystallisation_problem("C", "slurry", "water", 260.0)


SMILES = "O=C1CCC(=O)CC1"  # the molecule of the x23 test landscape
TOKEN = "conditions-token-42"


def test_server_refuses_impossible_request_at_submission_and_the_gate_fails_it(tmp_path, monkeypatch):
    from agent.lab.network import NetworkLabAdapter
    from agent.lab.safety import ApprovalQueue, GuardedAdapter
    from agent.lab.server import LabServer

    monkeypatch.setenv("CRYSTAL_AGENT_LAB_TOKEN", TOKEN)
    srv = LabServer(list(x23_landscape()), tmp_path / "lab.sqlite", TOKEN, queue_delay_s=(0.0, 0.0)).start()
    try:
        net = NetworkLabAdapter(srv.url, max_retries=0)
        bad = LabRequest("hot-1", SMILES, "slow_evaporation", "water", 400.0)
        with pytest.raises(LabRequestError) as exc:
            net.submit(bad)
        msg = str(exc.value)
        assert "(HTTP 422): refused: 400 K is above the boiling point of water (373.15 K at 1 atm)" in msg
        assert "\n" not in msg and srv.health()["n_experiments"] == 0  # nothing queued
        assert net.submit(LabRequest("ok-1", SMILES, "slurry", "water", 298.15)).request_id == "ok-1"

        # behind the approval gate: held, approved, refused when sent -> failed with the reason, not stuck
        gate = GuardedAdapter(net, ApprovalQueue(tmp_path / "approvals.sqlite"))
        ticket = gate.submit(LabRequest("hot-2", SMILES, "cooling", "ethanol", 360.0))
        assert gate.poll(ticket).state == "awaiting_approval"
        gate.queue.approve("hot-2")
        status = gate.poll(ticket)
        assert status.state == "failed" and "above the boiling point of ethanol (351.4 K" in status.reason
        assert gate.queue.get("hot-2")["state"] == "refused" and gate.poll(ticket).state == "failed"
        # auto-approved: refused at submission, as the lab answered
        auto = GuardedAdapter(net, ApprovalQueue(tmp_path / "approvals2.sqlite"), auto_approve=True)
        with pytest.raises(LabRequestError, match="refused: 360 K is above"):
            auto.submit(LabRequest("hot-3", SMILES, "cooling", "ethanol", 360.0))
        gate.close()
        auto.queue.close()
    finally:
        srv.stop()


def test_approve_twice_says_already_approved_and_list_has_a_header(tmp_path, capsys):
    from agent.cli import main
    from agent.lab.safety import ApprovalQueue

    q = ApprovalQueue(tmp_path / "lab_approvals.sqlite")
    q.add(LabRequest("c-m5-1", "c1ccsc1", **suggest_conditions("c1ccsc1")))
    q.add(LabRequest("c-m6-1", SMILES, "slurry", "water", 298.15))
    q.close()
    args = ["lab", "approve", "--campaign-dir", str(tmp_path)]
    assert main([*args, "c-m5-1"]) == 0
    assert "approved 1" in capsys.readouterr().out
    assert main([*args, "c-m5-1"]) == 0
    assert "already approved" in capsys.readouterr().out
    assert main([*args, "--list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["state", "request", "smiles", "method", "solvent", "temperature"]
    assert out[1].split() == ["approved", "c-m5-1", "c1ccsc1", "cryocrystallisation", "-", "204.9", "K"]
    assert out[2].startswith("    conditions: thiophene melts at 234.9 K")
    assert out[3].split()[-2:] == ["298.15", "K"]
    assert main([*args, "--all"]) == 0 and "approved 1" in capsys.readouterr().out
    assert main([*args, "--all"]) == 0 and "no pending lab requests" in capsys.readouterr().out
    assert main([*args, "--reject", "c-m6-1"]) == 0
    capsys.readouterr()
    assert main([*args, "c-m6-1"]) == 2
    assert "was rejected; it cannot be approved" in capsys.readouterr().err


# -- the simulated PXRD's thermal expansion follows the temperature -----------------------
def test_pxrd_thermal_expansion_scales_with_temperature():
    from agent.lab.pxrd import simulate_pxrd

    s = list(x23_landscape())[0].structure
    iso = {}
    for t in (None, 100.0, 298.15, 400.0):
        _, y, info = simulate_pxrd([(s, 1.0)], np.random.default_rng(7), "low", temperature_K=t)
        iso[t] = (np.mean(info["phases"][0]["expansion"]) - 1.0, y)
    assert np.array_equal(iso[None][1], iso[298.15][1])  # room temperature: as before
    # same draws: the anisotropic part is kept, the isotropic part ~ T
    e100, e298, e400 = iso[100.0][0], iso[298.15][0], iso[400.0][0]
    assert e100 < e298 < e400
    assert (e400 - e298) / (e298 - e100) == pytest.approx((400 - 298.15) / (298.15 - 100), rel=0.05)


# -- #9: the mixture figure and the report's file list ------------------------------------
def test_mixture_figure_draws_each_component_and_their_sum():
    from agent.lab.base import LabResult
    from agent.lab.feedback import identification_record
    from agent.lab.pxrd import simulate_pxrd

    entries = list(target_i_landscape())[:30]
    structures, ids = [e.structure for e in entries], [e.id for e in entries]
    x, y, _ = simulate_pxrd([(structures[28], 0.55), (structures[3], 0.45)], np.random.default_rng(0), "default")
    result = LabResult("mix-1", "mixture", tuple(x), tuple(y))
    record, fig = identification_record(result, ids, structures)
    assert record.is_mixture, record
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert "fitted sum of the components" in labels
    for name, frac in record.components:
        assert any(lab.startswith(f"{name}: {frac:.0%} by weight (a x ") for lab in labels), labels
    assert "[mixture: " in fig.axes[0].get_title()
    # the difference is taken against the sum, so it is small where both phases are drawn
    lines = {line.get_label(): line.get_ydata() for line in fig.axes[0].get_lines()}
    diff = lines["difference (offset)"] + 0.3
    assert float(np.sqrt(np.mean(diff**2))) < 0.1


def test_report_file_list_includes_the_lab_plots(tmp_path):
    from agent.campaign import Campaign
    from agent.config import load_config
    from agent.report import report_summary, write_plots
    from tests.conftest import write_config

    cfg = write_config(tmp_path, ["CCO ethanol", "CCN ethylamine"], """
objective = "reorg_energy_kjmol"
max_evaluations = 10
[[backends]]
name = "xtb-reorg"
""", name="labplots")
    camp = Campaign.create(load_config(cfg), tmp_path / "runs")
    try:
        png = camp.directory / "report" / "lab" / "labplots-m1-1_pxrd.png"
        png.parent.mkdir(parents=True)
        png.write_bytes(b"\x89PNG")
        paths = write_plots(camp)
        assert png in paths
        assert any("lab/: labplots-m1-1_pxrd.png" in line for line in report_summary(paths))
    finally:
        camp.close()


def test_status_line_says_when_conditions_are_a_default_assumption():
    from agent.lab.summary import lab_lines

    exp = {"request_id": "c-m1-1", "name": "pentacene", "method": "sublimation", "solvent": None,
           "temperature_K": 423.15, "measure": ["pxrd"], "state": "queued", "reason": "",
           "conditions_note": suggest_conditions(PENTACENE)["note"]}
    lab = {"n_experiments": 1, "n_done": 0, "n_open": 1, "n_failed": 0, "experiments": [exp]}
    line = lab_lines(lab)[1]
    assert "sublimation at 423.15 K (default assumption: not in the substances table)" in line
    exp["conditions_note"] = suggest_conditions("c1ccsc1")["note"]
    assert "default assumption" not in lab_lines(lab)[1]
