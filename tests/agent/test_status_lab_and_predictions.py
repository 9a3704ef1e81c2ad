"""What the lab found and how far the predicted structures can be trusted, where a chemist
looks (newuser34 items 2 and 3): `status` (text and --json), the run summary and
report/summary.txt

* name every lab experiment (request, molecule, conditions, outcome, the matched form with
  its rank and energy on the landscape, confidence, fed back or not) and mark the observed
  form among the structures;
* always show the best structure COMPUTED at the structure level (id, level, energy, rank)
  when an uncomputed prediction leads, and warn when that leader is an extrapolation of the
  Delta-GP: its predicted correction more than 1 sigma outside the computed ones;
* rank with the model the acquisition acts on: a Delta-GP that fails the acquisition's own
  leave-one-out skill test ranks nothing, the constant shift does (and says so).

A real Campaign run to its end (local executor, no Ray): replayed CSP and fragment-DFT
energies of formic acid (data/landscapes/formic_acid_dft), five structures refined, and the
simulated lab (no delays, so its result is fed back before the refinement starts)."""

from __future__ import annotations

import csv
import json

import pytest

from conftest import ROOT, write_config

LANDSCAPE = f'landscape = "{ROOT / "data/landscapes/formic_acid_dft"}", cheap = "ff", level = "dft"'
BODY = """
objective = "n_heavy_atoms"
batch_size = 2
seed = 0
synchronous = true
max_evaluations = 8
[surrogate]
n_initial = 2
[tracking]
enabled = false
[[backends]]
name = "diagnostic"
[structures]
enabled = true
budget_evaluations = 6
csp = {name = "replay-csp", params = {%s, n = 60}}
refine = {name = "replay-crystal", params = {%s}}
max_structures = 60
top_k = 3
[lab]
adapter = "simulated"
params = {seed = 60, queue_delay_s = [0.0, 0.0], run_delay_s = [0.0, 0.0]}
""" % (LANDSCAPE, LANDSCAPE)
NAME = "a"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The campaign run to its end (report written by the run), closed: its runs dir."""
    from agent.campaign import Campaign
    from agent.config import load_config
    from agent.local_executor import LocalExecutor
    from agent.runner import run_campaign

    tmp = tmp_path_factory.mktemp("labpred")
    # the simulated lab draws its outcome from its seed, the molecule and the request number
    # (not the campaign name): with lab seed 60 it crystallises m1-m0011, and the run ends
    # with a Delta-GP prediction in the lead that extrapolates, and a computed observed form
    # below the listed best structures
    cfg = load_config(write_config(tmp, ["OC=O formic_acid", "CC(=O)O acetic_acid"], BODY, name=NAME))
    runs = tmp / "runs"
    camp = Campaign.create(cfg, runs)
    try:
        run_campaign(camp, runs, progress=False, executor=LocalExecutor(slots=2))
    finally:
        camp.close()
    return runs


def _status(runs, capsys, *extra):
    from agent.cli import main

    assert main(["status", NAME, "--runs-dir", str(runs), *extra]) == 0
    return capsys.readouterr().out


def _truth(runs):
    """From the store and the landscape table the run wrote: computed energies, force-field
    energies, ranks at the level, the lab experiment and the observed forms."""
    from agent.store import Store

    with Store(runs / NAME / "store.sqlite") as store:
        computed = {ev.structure_id: ev.values["energy_kjmol"] for ev in store.evaluations()
                    if ev.backend == "replay-crystal" and ev.ok}
        ff = {r["id"]: r["energy_kjmol"] for r in store.structures()}
        (lab,) = store.lab_experiments()
        lab = dict(lab)
        observed = store.observed_forms()
    (table,) = (runs / NAME / "structures").glob("landscape_m*.csv")
    rank = {r["id"]: int(r["rank"]) for r in csv.DictReader(table.open())}
    return computed, ff, rank, lab, observed


def test_status_reports_the_lab_experiment_and_marks_the_observed_form(finished, capsys):
    computed, ff, rank, lab, observed = _truth(finished)
    assert lab["state"] == "done" and lab["matched_structure_id"] and observed, "the lab fed nothing back"
    req = json.loads(lab["request_json"])
    matched = lab["matched_structure_id"]

    text = _status(finished, capsys)
    lines = text.splitlines()
    assert any(ln.startswith("lab           1 experiment (simulated adapter): 1 done, 0 open, 0 failed")
               for ln in lines), text
    row = next(ln for ln in lines if ln.startswith(f"  {lab['request_id']}  formic_acid: "))
    assert f"{req['method'].replace('_', ' ')}" in row and f"at {req['temperature_K']:.2f} K" in row
    assert "PXRD: crystalline" in row or "PXRD: mixture" in row
    assert f"matched {matched} (rank {rank[matched]} of 60 at " in row
    assert f"confidence {lab['confidence']:.2f}" in row
    e = f"E_latt = {computed[matched]:.1f} kJ/mol per molecule (computed)" if matched in computed else \
        "(Delta-GP prediction, 1 sigma)"
    assert e in row
    assert any(ln.startswith(f"    fed back: {matched} recorded as observed form") for ln in lines), text
    # the observed form is marked where the structures are listed
    marked = [ln for ln in lines if f"[observed form, lab {lab['request_id']}]" in ln
              or ln.startswith(f"  observed form (lab {lab['request_id']}): ")]
    assert {sid for sid in observed if any(sid in ln for ln in marked)} == set(observed), text

    rec = json.loads(_status(finished, capsys, "--json"))
    (exp,) = rec["lab"]["experiments"]
    assert exp["request_id"] == lab["request_id"] and exp["name"] == "formic_acid"
    assert exp["method"] == req["method"] and exp["temperature_K"] == req["temperature_K"]
    assert exp["matched_structure_id"] == matched and exp["confidence"] == pytest.approx(lab["confidence"])
    assert exp["fed_back"] and matched in exp["fed_back_ids"] and set(exp["fed_back_ids"]) == set(observed)
    assert exp["not_fed_back_because"] is None
    form = next(f for f in exp["forms"] if f["structure_id"] == matched)
    assert form["rank"] == rank[matched] and form["n_ranked"] == 60 and form["observed"]
    assert form["ff_kjmol"] == pytest.approx(ff[matched])
    if matched in computed:
        assert form["computed"] and form["energy_kjmol"] == pytest.approx(computed[matched])
    assert rec["lab"]["units"]["temperature_K"] == "K" and rec["lab"]["units"]["energy_kjmol"] == \
        "kJ/mol per molecule"
    (land,) = rec["structures"]
    assert "ranking" not in land  # an internal list, not printed
    assert {r["id"] for r in land["observed"]} == set(observed)
    assert all(r["observed_by"] == lab["request_id"] for r in land["observed"])

    summary = (finished / NAME / "report" / "summary.txt").read_text()
    assert row in summary.splitlines()


def test_the_observed_form_is_marked_on_the_landscape_plot_and_in_its_tables(finished):
    """newuser37 C4: the lab's observed form was named only in the summary text. The
    report's landscape_model_m<id>.csv and the structures' landscape_m<id>.csv have an ``observed``
    column (the lab request, else empty), and landscape_m<id>.png marks it (a legend entry
    naming it and the request)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from agent.campaign import Campaign
    from agent.report import landscape_figure

    _, _, _, lab, observed = _truth(finished)
    assert observed
    request = lab["request_id"]
    for where, pattern in (("report", "landscape_model_m*.csv"), ("structures", "landscape_m*.csv")):
        (table,) = (finished / NAME / where).glob(pattern)
        rows = list(csv.DictReader(table.open()))
        assert {r["id"] for r in rows if r["observed"]} == set(observed), where
        assert all(r["observed"] == request for r in rows if r["observed"])
    mol_id = int(table.stem.removeprefix("landscape_m"))
    camp = Campaign.open(NAME, finished, readonly=True)
    try:
        fig = landscape_figure(camp, mol_id, plt)
    finally:
        camp.close()
    labels = [" ".join(t.get_text().split()) for t in fig.axes[0].get_legend().get_texts()]
    plt.close(fig)
    for sid in observed:
        assert f"observed by the lab: {sid} ({request})" in labels, labels


def test_a_delta_gp_without_skill_does_not_rank_the_structures(finished, capsys):
    """Under this name and seed the Delta-GP fails the acquisition's leave-one-out skill test
    after the five refinements (before this mend it still ranked the landscape and put
    an uncomputed structure with a correction of -14.9 kJ/mol, far outside the computed -9.8 to
    -5.5, in the lead). The ranking a user reads must be the one the acquisition acts on: the
    force field plus the mean computed correction."""
    import numpy as np

    from agent.store import Store

    computed, ff, rank, _, _ = _truth(finished)
    with Store(finished / NAME / "store.sqlite") as store:
        (saved,) = json.loads(store.get_meta("corrected_landscapes")).values()
    assert saved["skill"]["n_computed"] == 5 and not saved["skill"]["skilled"], "the case of this test"
    assert saved["ranking_model"] == "constant-shift"
    shift = float(np.mean([computed[s] - ff[s] for s in computed]))

    rec = json.loads(_status(finished, capsys, "--json"))
    (land,) = rec["structures"]
    assert land["ranking_model"] == "constant-shift"
    predicted = [r for r in land["top"] if not r["computed"]]
    assert predicted, "some uncomputed structures are listed"
    for r in predicted:
        assert r["prediction"] == "constant-shift"
        assert r["energy_kjmol"] == pytest.approx(ff[r["id"]] + shift, abs=0.01)  # (targets rounded to 0.01)
    stds = {round(r["std_kjmol"], 9) for r in predicted}
    assert len(stds) == 1 and stds.pop() > 0  # the shift's one Student-t spread
    for r in land["top"]:
        if r["computed"]:
            assert r["energy_kjmol"] == pytest.approx(computed[r["id"]]) and r["std_kjmol"] == 0.0
    energies = [r["energy_kjmol"] for r in land["top"]]
    assert energies == sorted(energies)
    assert [r["rank"] for r in land["top"]] == [rank[r["id"]] for r in land["top"]]  # = the table's
    best = min(computed, key=computed.get)
    assert land["best_computed"]["id"] == best

    text = _status(finished, capsys)
    assert "Delta-GP prediction" not in text and "WARNING: the predicted leader" not in text, text
    assert "(constant-shift prediction, 1 sigma)" in text
    cif = (finished / NAME / "structures" / f"{predicted[0]['id']}.cif").read_text()
    assert "constant-shift prediction" in cif and "Delta-GP" not in cif


def test_prediction_check_is_quiet_for_a_computed_leader_or_a_skilled_interpolation():
    from agent.refine_acquisition import Skill
    from agent.summary import prediction_check

    def row(sid, e, ff, computed, std=0.0):
        return {"id": sid, "energy_kjmol": e, "ff_kjmol": ff, "computed": computed, "std_kjmol": std}

    computed = [row("b", -10.0, -5.0, True), row("c", -8.0, -1.0, True)]  # corrections -5 and -7
    skilled = Skill(5, 1.0, 2.0, True)
    assert prediction_check([*computed, row("a", -9.0, -2.0, False, 1.0)], skilled, 0.9) is None
    inside = prediction_check([row("a", -12.0, -6.0, False, 1.0), *computed], skilled, 0.9)
    assert not inside["extrapolation"] and inside["warning"] is None
    beyond = prediction_check([row("a", -12.0, -2.0, False, 1.0), *computed], skilled, 0.9)  # -10: 3 out
    assert beyond["outside_computed_range_kjmol"] == pytest.approx(3.0) and beyond["extrapolation"]
    assert "more than 1 sigma outside the 2 computed corrections (-7.0 to -5.0)" in beyond["warning"]
    wide = prediction_check([row("a", -12.0, -2.0, False, 4.0), *computed], skilled, 0.9)  # 3 < 4
    assert not wide["extrapolation"]
    untested = prediction_check([row("a", -12.0, -6.0, False, 1.0), *computed], Skill(2, None, 2.0, False), 0.9)
    assert untested["extrapolation"] and "untested (2 computed, the test needs 5)" in untested["warning"]
    unknown = prediction_check([row("a", -12.0, -6.0, False, 1.0), *computed], None, 0.9)
    assert unknown["skilled"] is None and not unknown["extrapolation"]


def test_prediction_check_of_a_constant_shift_leader_is_a_note_not_a_warning():
    from agent.refine_acquisition import Skill
    from agent.summary import prediction_check

    def row(sid, e, ff, computed, std=0.0):
        return {"id": sid, "energy_kjmol": e, "ff_kjmol": ff, "computed": computed, "std_kjmol": std}

    computed = [row(f"c{k}", -10.0 - k, -4.0 - k + d, True) for k, d in enumerate([-1, 1, 0, -0.5, 0.5])]
    failed = Skill(5, 3.0, 2.0, False)  # corrections -5, -7, -6, -5.5, -6.5: mean -6
    check = prediction_check([row("a", -13.0, -7.0, False, 2.0), *computed], failed, 0.9, "constant-shift")
    assert not check["extrapolation"] and check["warning"] is None
    assert check["note"].startswith("note: the leader a is not computed")
    assert "-6.0 kJ/mol per molecule" in check["note"] and "LOO MAE 3.00" in check["note"]
    few = prediction_check([row("a", -13.0, -7.0, False, 2.0), *computed[:2]], Skill(2, None, 2.0, False), 0.9,
                           "constant-shift")
    assert "from 5 computed structures on, 2 are" in few["note"]
