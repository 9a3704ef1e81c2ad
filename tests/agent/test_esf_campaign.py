"""The energy-structure-function loop as a campaign: the molecule stage optimises the
landscape hole mobility (sim_backends/esf.py) over a proxy and a crystal fidelity; bad
inputs end in failed evaluations with a clear reason while the campaign goes on; the
replays of data/esf charge the recorded CPU seconds."""

from __future__ import annotations

import json
import math
import sqlite3
import tomllib
from pathlib import Path

import pytest

from conftest import cli, write_config
from sim_backends.esf import LAMBDA_SHORT_LEVEL

POOL = ["c1ccsc1 thiophene", "c1ccoc1 furan", "c1cc[nH]c1 pyrrole", "c1cnccn1 pyrazine"]

BODY = """
objective = "log10_landscape_mobility_hole"
direction = "maximize"
batch_size = 2
seed = 1
max_evaluations = {max_evals}
[surrogate]
n_initial = 2
[executor]
num_cpus = 2
task_timeout_s = 900
[tracking]
enabled = {tracking}
[[backends]]
name = "esf-proxy"
[[backends]]
name = "esf-landscape"
budget_evaluations = 2
params = {{ n_trials = 8, n_structures = 2{extra} }}
"""


def test_proxy_is_the_marcus_mobility_of_the_reference_crystal():
    """log10 mobility of a cubic lattice (6 neighbours, |J| 10 meV, 5 A) at 300 K: the
    Einstein relation by hand; decreasing in lambda+."""
    from sim_backends.esf import REF_DISTANCE_A, REF_J_MEV, proxy_log10_mobility

    hbar, kb, lam = 6.582119569e-16, 8.617333262e-5, 20.0 / 96.48533212  # eV s, eV/K, eV
    kt = kb * 300.0
    k = 2 * math.pi / hbar * (REF_J_MEV * 1e-3) ** 2 / math.sqrt(4 * math.pi * lam * kt) * math.exp(-lam / (4 * kt))
    mu = k * (REF_DISTANCE_A * 1e-8) ** 2 / kt
    assert proxy_log10_mobility(20.0) == pytest.approx(math.log10(mu), abs=1e-9)
    assert proxy_log10_mobility(5.0) > proxy_log10_mobility(20.0) > proxy_log10_mobility(40.0)


def test_replays_charge_the_recorded_cpu_and_report_the_landscape_values():
    from sim_backends.base import EvalInput
    from sim_backends.esf import esf_records, record_cpu_s
    from sim_backends.registry import get_backend

    quick = esf_records("quick")
    smiles, rec = next((s, r) for s, r in quick.items() if not r.get("error"))
    r = get_backend("replay-esf-quick").evaluate(EvalInput(smiles))
    assert r.ok, r.reason
    assert r.cpu_s == pytest.approx(record_cpu_s(rec)) and r.cpu_s > 1.0
    mean = rec["landscape_mobility_hole_cm2Vs"]["mean"]
    assert r.values["log10_landscape_mobility_hole"] == pytest.approx(math.log10(mean))
    assert r.values["landscape_mobility_hole_sd_cm2Vs"] == pytest.approx(rec["landscape_mobility_hole_cm2Vs"]["sd"])
    missing = get_backend("replay-esf-quick").evaluate(EvalInput("CCCCCCCCO"))
    assert not missing.ok and missing.reason.startswith("setup: no stored quick ESF result")


def test_failed_lambda_record_replays_as_failed_evaluation(tmp_path):
    """A molecule without a reorganisation energy has no landscape mobility: its stored
    failure is replayed as a failed evaluation with the reason."""
    from sim_backends.base import EvalInput
    from sim_backends.registry import get_backend

    (tmp_path / "esf_quick.jsonl").write_text(json.dumps(
        {"smiles": "c1ccsc1", "name": "thiophene", "lambda_hole_kjmol": None,
         "error": "no lambda+: run: xTB SCF failed", "cpu_s": {}}) + "\n")
    r = get_backend("replay-esf-quick", data_dir=str(tmp_path)).evaluate(EvalInput("c1ccsc1"))
    assert not r.ok and r.reason == "run: replayed failure: no lambda+: run: xTB SCF failed"


def _run_local(tmp_path, body: str):
    from agent.campaign import Campaign
    from agent.config import parse_config
    from agent.local_executor import LocalExecutor
    from agent.runner import run_campaign

    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "pool.smi").write_text("\n".join(POOL) + "\n")
    cfg = parse_config(tomllib.loads('name = "esf"\npool = "pool.smi"\n' + body), base_dir=tmp_path)
    camp = Campaign.create(cfg, tmp_path / "runs")
    status = run_campaign(camp, tmp_path / "runs", executor=LocalExecutor(slots=2), progress=False)
    return camp, status


@pytest.mark.slow
def test_structures_without_contacts_and_failed_scf_are_failed_evaluations_campaign_goes_on(tmp_path):
    """Crystal fidelity on every structure with no contact within 2 A (the closest
    contacts of these crystals are H...H near 2.3 A), then with a one-iteration xTB SCF:
    every landscape evaluation fails with the reason, the proxies keep running, the
    campaign ends normally with a best proxy-level value."""
    for extra, expected in ((", cutoff_A = 2.0", "no molecular contacts"), (", max_iterations = 1", "SCF")):
        body = BODY.format(max_evals=6, tracking="false", extra=extra)
        camp, status = _run_local(tmp_path / expected.replace(" ", "_"), body)
        try:
            evs = camp.store.evaluations()
            land = [ev for ev in evs if ev.backend == "esf-landscape"]
            assert land and all(not ev.ok for ev in land)
            for ev in land:
                assert ev.reason.startswith("run: no structure with a mobility (m") and expected in ev.reason, ev.reason
            proxies = [ev for ev in evs if ev.backend == "esf-proxy"]
            assert len(proxies) >= 3 and all(ev.ok for ev in proxies)
            assert status.stop_reason
        finally:
            camp.close()


@pytest.mark.slow
def test_tiny_real_esf_campaign_two_fidelities_ray_mlflow(tmp_path):
    """GFN2-xTB proxy and an 8-trial CSP landscape with GFN2-xTB transfer integrals,
    through embedded Ray, the store and MLflow, driven by the CLI."""
    cfg = write_config(tmp_path, POOL, BODY.format(max_evals=5, tracking="true", extra=""), name="esf-tiny")
    runs = tmp_path / "runs"
    out = cli("run", str(cfg), "--runs-dir", str(runs), "--quiet", timeout=1500)
    assert out.returncode == 0, out.stderr[-3000:]
    db = sqlite3.connect(runs / "esf-tiny" / "store.sqlite")
    rows = db.execute("SELECT e.backend, e.status, e.reason, e.values_json, e.cpu_s FROM evaluations e").fetchall()
    by = {b: [r for r in rows if r[0] == b] for b in ("esf-proxy", "esf-landscape")}
    assert by["esf-proxy"] and by["esf-landscape"], [r[:3] for r in rows]
    for backend, status, reason, values, cpu in rows:
        assert status == "ok", reason
        v = json.loads(values)
        assert -8.0 < v["log10_landscape_mobility_hole"] < 3.0 and 0 < v["reorg_energy_kjmol"] < 200
        if backend == "esf-landscape":
            assert v["landscape_mobility_hole_sd_cm2Vs"] >= 0 and v["n_structures_in_window"] >= 1
            assert cpu > 1.0  # a CSP and transfer integrals were computed and charged
    s = json.loads(cli("status", "esf-tiny", "--runs-dir", str(runs), "--json").stdout)
    assert s["finished"] and s["best"] is not None
    land = [json.loads(r[3]) for r in by["esf-landscape"]]
    assert len(s["esf"]) == len(land)  # one ESF record per molecule with a landscape
    assert {r["mean"] for r in s["esf"]} == {v["landscape_mobility_hole_cm2Vs"] for v in land}
    text = cli("status", "esf-tiny", "--runs-dir", str(runs)).stdout
    assert "ESF           landscape hole mobility" in text and " cm2/(V s) (" in text and "log10 " in text
    assert "GFN2-xTB transfer integrals, 8-trial W99 CSP" in text  # the level of every figure
    cifs = sorted((runs / "esf-tiny" / "structures").glob("esf_m*.cif"))
    assert len(cifs) == len(land) and all(str(c) in text for c in cifs)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    exp = client.get_experiment_by_name("esf-tiny")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["backends.1.name"] == "esf-landscape"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "n_evaluations")][-1] == len(rows)
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "plots/esf_map.png" in logged, logged
    assert "report/esf_results.csv" in {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    maps = [a.path for a in client.list_artifacts(run.info.run_id, "esf_maps")]  # during the run
    assert maps and all(m.startswith("esf_maps/esf_map_n") for m in maps), maps


STRUCTURE_BODY = """
objective = "{objective}"
batch_size = 2
seed = 0
max_evaluations = 12
[surrogate]
n_initial = 2
[tracking]
enabled = {tracking}
[[backends]]
name = "{backend}"
[structures]
enabled = true
budget_evaluations = 5
csp = {{name = "csp-ff", params = {{n_trials = 20, charges = "xtb", space_groups = "P2_1/c,P-1"}}}}
max_structures = 6
top_k = 2
window_kjmol = 15.0
[[structures.levels]]
name = "xtb-crystal"
[[structures.levels]]
name = "mobility-xtb"
"""


@pytest.mark.slow
def test_mobility_property_level_reads_lambda_from_the_molecule_stage(tmp_path):
    """[[structures.levels]] = xtb-crystal (ranks), mobility-xtb (property): the mobility
    runs on low structures already ranked by periodic GFN2-xTB, with the molecule's stored
    GFN2-xTB lambda+, and the landscape mobility is recorded with its uncertainty."""
    camp, status = _run_local(tmp_path, STRUCTURE_BODY.format(objective="reorg_energy_kjmol", backend="xtb-reorg",
                                                              tracking="true"))
    try:
        evs = camp.store.evaluations()
        mob = [ev for ev in evs if ev.backend == "mobility-xtb"]
        ranked = {ev.structure_id for ev in evs if ev.backend == "xtb-crystal" and ev.ok}
        assert mob and all(ev.ok for ev in mob), [ev.reason for ev in mob]
        assert {ev.structure_id for ev in mob} <= ranked
        lam = dict(camp.store.values_of("xtb-reorg", "reorg_energy_kjmol"))
        for ev in mob:
            assert ev.extra["mobility"]["hole"]["lambda_eV"] == pytest.approx(lam[ev.molecule_id] / 96.48533212)
        events = camp.store.events("landscape_property")
        assert events and events[-1]["n_structures"] == len(mob)
        assert events[-1]["mean"] > 0 and events[-1]["sd"] >= 0 and events[-1]["value_key"] == "mobility_hole_cm2Vs"
        stage = camp.stages["structures"]
        assert set(stage.landscape_properties(mob[0].molecule_id)) == {"mobility-xtb"}
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
        (run,) = client.search_runs([client.get_experiment_by_name("esf").experiment_id])
        key = f"landscape_mobility_hole_cm2Vs_m{mob[0].molecule_id}"
        assert client.get_metric_history(run.info.run_id, key)[-1].value == pytest.approx(events[-1]["mean"])
        history = {name: client.get_metric_history(run.info.run_id, f"{key}{name}")
                   for name in ("_sd_energy", "_sd", "_n_in_window", "_n_with_value_in_window")}
        assert history["_sd_energy"][-1].value == pytest.approx(events[-1]["sd"])
        # the sd logged at the end is the one the report prints (window coverage included)
        from agent.esf_report import esf_results

        (rec,) = [r for r in esf_results(camp.store, camp.cfg)
                  if r["source"] == "structure stage" and r["molecule_id"] == mob[0].molecule_id]
        assert history["_sd"][-1].value == pytest.approx(rec["sd"]) and rec["sd"] >= events[-1]["sd"]
        assert history["_n_in_window"][-1].value == rec["n_in_window"]
        assert history["_n_with_value_in_window"][-1].value == rec["n_with_mobility"]
    finally:
        camp.close()


@pytest.mark.slow
def test_molecule_without_reorganisation_energy_fails_once_campaign_goes_on(tmp_path):
    """The molecule stage computes no lambda+ (diagnostic backend): one mobility request is
    sent, fails with the reason, no other structure of the molecule is tried, and the
    energy level goes on to the end of the budget."""
    camp, status = _run_local(tmp_path, STRUCTURE_BODY.format(objective="n_heavy_atoms", backend="diagnostic",
                                                              tracking="false"))
    try:
        evs = camp.store.evaluations()
        mob = [ev for ev in evs if ev.backend == "mobility-xtb"]
        assert len(mob) == 1 and not mob[0].ok
        assert mob[0].reason.startswith("setup: no hole reorganisation energy"), mob[0].reason
        assert sum(ev.backend == "xtb-crystal" for ev in evs) >= 2
        assert mob[0].id < max(ev.id for ev in evs if ev.backend == "xtb-crystal")  # it went on
        assert status.stop_reason
    finally:
        camp.close()


def test_property_level_config_is_checked():
    """A property level comes after one or two energy levels; the energy levels still set
    refine/free_energy; a property level first, or two of them, is a one-line error."""
    from agent.config import ConfigError, parse_config

    base = 'name = "x"\npool = "p.smi"\n[[backends]]\nname = "xtb-reorg"\n[structures]\nenabled = true\n'
    cfg = parse_config(tomllib.loads(base + '[[structures.levels]]\nname = "xtb-crystal"\n'
                                     '[[structures.levels]]\nname = "mobility-dft"\n'))
    assert cfg.structures.refine.name == "xtb-crystal" and cfg.structures.free_energy is None
    for levels in (["mobility-xtb", "xtb-crystal"], ["xtb-crystal", "mobility-xtb", "mobility-dft"]):
        text = base + "".join(f'[[structures.levels]]\nname = "{n}"\n' for n in levels)
        with pytest.raises(ConfigError, match="at most one property level"):
            parse_config(tomllib.loads(text))


ESF_LADDER = """
objective = "log10_landscape_mobility_hole"
direction = "maximize"
batch_size = 2
seed = 0
max_cpu_hours = 0.15
max_evaluations = {max_evals}
[surrogate]
n_initial = 6
[tracking]
enabled = false
[[backends]]
name = "replay-esf-proxy"
[[backends]]
name = "replay-esf-quick"
[[backends]]
name = "replay-esf-refined"
budget_evaluations = 6
"""


@pytest.fixture(scope="module")
def esf_replay(tmp_path_factory):
    """examples/esf.toml's ladder replayed on data/esf (the 60 molecules with all three
    levels), 16 evaluations and 540 CPU s (``--max-evaluations 24`` less the structure
    stage's 8); the campaign directory after the run."""
    from agent.campaign import Campaign
    from agent.config import parse_config
    from agent.local_executor import LocalExecutor
    from agent.runner import run_campaign
    from sim_backends.esf import esf_records

    tmp = tmp_path_factory.mktemp("esf_replay")
    refined = esf_records("refined")
    (tmp / "pool.smi").write_text("".join(f"{s} {r['name'].replace(' ', '_')}\n" for s, r in refined.items()))
    cfg = parse_config(tomllib.loads('name = "esf"\npool = "pool.smi"\n' + ESF_LADDER.format(max_evals=16)),
                       base_dir=tmp)
    camp = Campaign.create(cfg, tmp / "runs")
    try:
        assert camp.molecules.evaluation_share == 16
        run_campaign(camp, tmp / "runs", executor=LocalExecutor(slots=2), progress=False)
    finally:
        camp.close()
    return tmp / "runs"


def test_esf_ladder_reaches_csp_when_the_evaluation_budget_binds(esf_replay):
    """Proxy 0.2 CPU s, quick CSP ~11, refined CSP ~19 CPU s per molecule; with 16
    evaluations and 540 CPU s, the CPU left pays for hundreds of proxies, so the 16
    evaluations are what binds, and a proxy that uses one of them is not ~100x cheaper
    than a CSP. Priced in CPU seconds alone, the acquisition spent all 16 on proxies and
    never started a CSP."""
    from agent.campaign import Campaign

    camp = Campaign.open("esf", esf_replay, readonly=True)
    try:
        by = camp.status().n_by_backend
    finally:
        camp.close()
    assert by["replay-esf-proxy"] >= 6  # the initial design
    assert by["replay-esf-refined"] == 6, by  # the refined CSP budget is used


def test_status_and_report_show_the_esf_results(esf_replay):
    """status names each CSP-level molecule's landscape hole mobility with its sd, unit
    and level, and its predicted global minimum; report writes the ESF map (lattice
    energy vs mobility per structure), a table and the global minima as CIFs."""
    import csv

    from agent.campaign import Campaign
    from agent.report import write_plots
    from agent.esf_report import hole_notes, hole_warnings
    from agent.summary import status_lines, status_record
    from sim_backends.esf import esf_records, with_regime_warnings
    from sim_backends.structures import load_crystal

    camp = Campaign.open("esf", esf_replay, readonly=True)
    try:
        refined = [ev for ev in camp.store.evaluations() if ev.backend == "replay-esf-refined" and ev.ok]
        rec = status_record(camp.status(), camp.store, camp.cfg)
        paths = write_plots(camp)
        after = status_record(camp.status(), camp.store, camp.cfg)
    finally:
        camp.close()
    esf = rec["esf"]
    assert len(esf) == len(refined) >= 4  # one per molecule, at the highest level it reached
    assert [r["mean"] for r in esf] == sorted((r["mean"] for r in esf), reverse=True)
    recs = {validate(s): r for s, r in esf_records("refined").items()}
    for r in esf:
        truth = recs[validate(r["smiles"])]
        assert r["backend"] == "replay-esf-refined" and r["source"] == "molecule stage"
        assert r["mean"] == pytest.approx(truth["landscape_mobility_hole_cm2Vs"]["mean"])
        assert r["sd"] == pytest.approx(truth["landscape_mobility_hole_cm2Vs"]["sd"])
        ok = [s for s in truth["structures"] if "mobility_hole_cm2Vs" in s]
        assert len(r["structures"]) == len(ok) and r["global_minimum"]["rel_kjmol"] == 0.0
        assert "cif_text" not in r["global_minimum"]  # status carries paths, not CIF texts
        # the replay adds the hopping-regime warning (2|J|max > lambda+) the stored records predate
        lam = truth.get("reorg_energy_kjmol", truth.get("lambda_hole_kjmol"))
        assert r["warnings"] == hole_warnings(x.get("warnings") for x in with_regime_warnings(truth["structures"], lam))
        assert r["notes"] == hole_notes(x.get("notes") for x in truth["structures"])
    text = "\n".join(status_lines(rec))
    best = esf[0]
    from agent.esf_report import format_mobility

    assert f"{best['name']}: mu_h = {format_mobility(best['mean'], best['sd'])}" in text
    assert "300-trial CSP" in text and "predicted global minimum" in text
    assert "log10 landscape hole mobility" not in text or "(= " in text  # the best line: log10 and the value
    names = {p.name for p in paths}
    assert {"esf_map.png", "esf_results.csv"} <= names
    rows = list(csv.DictReader((esf_replay / "esf" / "report" / "esf_results.csv").open()))
    assert [r["name"] for r in rows] == [r["name"] for r in esf]
    cif = Path(after["esf"][0]["global_minimum"]["cif"])
    assert cif.is_file() and cif.parent == esf_replay / "esf" / "structures"
    assert load_crystal(cif.read_text(), best["smiles"]).z == after["esf"][0]["global_minimum"]["z"]
    assert str(cif) in "\n".join(status_lines(after))


def test_status_warns_when_the_mobility_rests_on_a_degenerate_homo():
    """A landscape whose transfer integrals carry a hole warning (a coupling not well
    defined, e.g. a degenerate HOMO projected as one orbital in a result made before
    frontier manifolds) gets a WARNING line under it in status and a warnings column in
    report/esf_results.csv; a degenerate HOMO handled by the manifold coupling gets an INFO
    line naming the manifold size instead (no WARNING); electron-only lines are not shown
    (the objective is the hole mobility)."""
    import csv

    from agent.esf_report import esf_lines, hole_notes, hole_warnings, write_esf_table

    hole = "hole: frontier orbital within 0 meV of the next one (degenerate pair); single-orbital |J| is ill-defined"
    electron = hole.replace("hole:", "electron:")
    assert hole_warnings([[hole, electron], [hole], None]) == [f"{hole} (2 of 3 structures)"]
    assert hole_warnings([[electron], []]) == []
    note = ("hole: 2-fold degenerate frontier manifold (splitting 0.0 meV, 513 meV to the next orbital): "
            "rotation-invariant J_eff over the 2x2 coupling block")
    assert hole_notes([[note, note.replace("hole:", "electron:")], [note]]) == [f"{note} (2 of 2 structures)"]
    gm = {"id": "m0001", "energy_kjmol": -100.0, "rel_kjmol": 0.0, "mobility_hole_cm2Vs": 8.2,
          "density_gcm3": 1.46, "space_group": "P2_1/c", "z": 4, "cif": None}
    rec = {"molecule_id": 36, "name": "coronene", "smiles": "c1cc2ccc3ccc4ccc5ccc6ccc1c1c2c3c4c5c61",
           "source": "molecule stage", "backend": "esf-refined", "level": "GFN2-xTB", "mean": 7.2, "sd": 1.8,
           "n_in_window": 6, "structures": [gm], "global_minimum": gm,
           "warnings": hole_warnings([[hole]] * 6), "notes": []}
    lines = esf_lines([rec])
    assert lines[-1] == f"    WARNING {hole} (6 of 6 structures)"
    assert not any("WARNING" in x for x in esf_lines([{**rec, "warnings": []}]))
    noted = {**rec, "warnings": [], "notes": hole_notes([[note]] * 6)}
    assert esf_lines([noted])[-1] == f"    INFO {note} (6 of 6 structures)"
    assert not any("WARNING" in x for x in esf_lines([noted]))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = write_esf_table([rec, noted], Path(tmp) / "esf_results.csv")
        rows = list(csv.DictReader(path.open()))
    assert rows[0]["warnings"] == f"{hole} (6 of 6 structures)" and rows[0]["notes"] == ""
    assert rows[1]["warnings"] == "" and rows[1]["notes"] == f"{note} (6 of 6 structures)"


def validate(smiles):
    from sim_backends.molecule import validate_smiles

    return validate_smiles(smiles)


def test_evaluation_slot_price_only_when_the_evaluation_budget_binds():
    import numpy as np

    from agent.stages.molecule import evaluation_slot_price

    # 50 molecules: proxy 0.3 CPU s, CSP 30 CPU s, all allowed
    costs = np.column_stack([np.full(50, 0.3), np.full(50, 30.0)])
    allowed = np.ones_like(costs, dtype=bool)
    # 540 CPU s pay for 50 proxies + 17 CSPs = 67 tasks: 16 evaluations bind
    assert evaluation_slot_price(costs, allowed, 540.0, 16, [None, None]) == pytest.approx(540.0 / 16)
    # ... 200 evaluations do not: the CPU seconds alone price the tasks
    assert evaluation_slot_price(costs, allowed, 540.0, 200, [None, None]) == 0.0
    # a per-level budget caps what the CPU could buy: 50 proxies + 2 CSPs = 52 < 60 slots
    assert evaluation_slot_price(costs, allowed, 540.0, 60, [None, 2]) == 0.0
    # disallowed pairs are not counted; no evaluation left: no price
    assert evaluation_slot_price(costs, np.zeros_like(allowed), 540.0, 16, [None, None]) == 0.0
    assert evaluation_slot_price(costs, allowed, 540.0, 0, [None, None]) == 0.0


def test_structure_stage_inherits_the_jahn_teller_lambda_warning():
    """The structure stage's mobility uses the molecule stage's lambda+: when that one is
    flagged (degenerate HOMO, GFN2-xTB lambda+), the same molecule's structure-stage record
    with a degenerate hole manifold gets the warning; other molecules do not."""
    from agent.esf_report import propagate_lambda_warnings
    from sim_backends.esf import JAHN_TELLER_LAMBDA_WARNING as jt

    note = "hole: 2-fold degenerate frontier manifold (splitting 0.0 meV, 801 meV to the next orbital) (3 of 3)"
    recs = [{"molecule_id": 36, "source": "molecule stage", "warnings": [f"{jt} (6 of 6 structures)"], "notes": [note]},
            {"molecule_id": 36, "source": "structure stage", "warnings": [], "notes": [note]},
            {"molecule_id": 7, "source": "structure stage", "warnings": [], "notes": [note]}]
    out = propagate_lambda_warnings(recs)
    assert out[1]["warnings"] == [f"{jt} (lambda+ of the molecule stage)"]
    assert out[2]["warnings"] == []
    assert propagate_lambda_warnings(out)[1]["warnings"] == out[1]["warnings"]  # once
    older = [{**recs[0], "warnings": ["hole: degenerate HOMO (Jahn-Teller cation) with an older wording (6 of 6)"]},
             {**recs[1], "warnings": []}]
    assert len(propagate_lambda_warnings(older)[1]["warnings"]) == 1  # stored runs keep older texts


def test_status_and_table_give_lambda_with_its_level(esf_replay):
    """newuser38 M1: lambda+, the mobility's main input, was in no status line or CSV. Each
    landscape mobility line now ends with it in eV and kJ/mol and its level, a CAVEAT says
    what GFN2-xTB lambda+ does to the mobilities, and esf_results.csv has three columns."""
    import csv

    from agent.campaign import Campaign
    from agent.esf_report import KJMOL_PER_EV, XTB_LAMBDA_CAVEAT
    from agent.report import write_plots
    from agent.summary import status_lines, status_record

    camp = Campaign.open("esf", esf_replay, readonly=True)
    try:
        lam = {ev.molecule_id: ev.values["reorg_energy_kjmol"] for ev in camp.store.evaluations()
               if ev.backend == "replay-esf-refined" and ev.ok}
        rec = status_record(camp.status(), camp.store, camp.cfg)
        write_plots(camp)
    finally:
        camp.close()
    text = "\n".join(status_lines(rec))
    assert f"  CAVEAT {XTB_LAMBDA_CAVEAT}" in text
    # newuser46b #2, #4: the headline is the mean over the energies' uncertainty, and the ESF levels'
    # landscapes are fixed-trial searches (only the structure stage's identical CSP said "NOT converged")
    from agent.esf_report import FIXED_TRIALS_CAVEAT

    assert "averaged over their energies' uncertainty" in text
    assert f"  CAVEAT {FIXED_TRIALS_CAVEAT}" in text
    for r in rec["esf"]:
        assert (r["lambda_hole_kjmol"] == pytest.approx(lam[r["molecule_id"]])
                and r["lambda_level"] == LAMBDA_SHORT_LEVEL)
    best = rec["esf"][0]
    line = next(x for x in text.splitlines() if x.startswith(f"  {best['name']}: mu_h = "))
    assert line.endswith(f"; lambda+ {best['lambda_hole_kjmol'] / KJMOL_PER_EV:.3f} eV "
                         f"({best['lambda_hole_kjmol']:.2f} kJ/mol, {LAMBDA_SHORT_LEVEL})"), line
    rows = list(csv.DictReader((esf_replay / "esf" / "report" / "esf_results.csv").open()))
    assert all(float(r["lambda_hole_ev"]) * KJMOL_PER_EV == pytest.approx(float(r["lambda_hole_kjmol"]), rel=1e-3)
               and r["lambda_level"] == LAMBDA_SHORT_LEVEL for r in rows)



def test_nitriles_carry_the_force_field_domain_warning(esf_replay):
    """A molecule with W99's unvalidated sp carbon (a nitrile) gets the CSP domain warning
    in its ESF result and status record (sim_backends/csp/domain.py); benzene does not."""
    import dataclasses

    from agent.campaign import Campaign
    from agent.esf_report import _molecule_stage
    from sim_backends.base import EvalInput
    from sim_backends.csp.domain import UNVALIDATED_TYPES
    from sim_backends.registry import get_backend

    backend = get_backend("replay-esf-refined")
    nitrile = backend.evaluate(EvalInput("N#Cc1ccc(C#N)cc1"))
    plain = backend.evaluate(EvalInput("c1ccccc1"))
    assert nitrile.ok and plain.ok
    assert nitrile.extra["csp_warnings"] == [UNVALIDATED_TYPES["C_W2"]] and "csp_warnings" not in plain.extra
    camp = Campaign.open("esf", esf_replay, readonly=True)
    try:
        ev = next(e for e in camp.store.evaluations()
                  if e.backend == "replay-esf-refined" and e.ok and not e.extra.get("csp_warnings"))
        cfg = camp.cfg
    finally:
        camp.close()
    with_warning = dataclasses.replace(ev, extra={**ev.extra, "csp_warnings": nitrile.extra["csp_warnings"]})
    (rec,) = _molecule_stage([with_warning], cfg, {}, cif_text=False)
    assert f"CSP: {UNVALIDATED_TYPES['C_W2']}" in rec["warnings"]
    (rec,) = _molecule_stage([ev], cfg, {}, cif_text=False)
    assert not any(w.startswith("CSP: ") for w in rec["warnings"])
