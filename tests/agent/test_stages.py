"""Every stage's ask/tell/restore through the real Campaign with the local executor and
replayed backends (a stored CSP landscape of formamide and its stored periodic GFN2-xTB
energies: sim_backends.replay's replay-csp and replay-crystal), the scheduler's budget shares, the store as
the stages' only shared memory, schema migration, and determinism."""

from __future__ import annotations

import sqlite3
import sys

import pytest

from conftest import ROOT, write_config

#: the stored formamide landscape both replays read (FF minima and periodic GFN2-xTB energies)
LANDSCAPE = f'landscape = "{ROOT / "data/landscapes/formamide_big"}", cheap = "ff", level = "xtb"'
POOL = ["NC=O formamide", "CC(=O)O acetic_acid", "CCCCO butanol", "c1ccccc1 benzene",
        "OC(=O)C(=O)O oxalic_acid"]
BODY = """
objective = "n_heavy_atoms"
batch_size = 2
seed = 3
max_evaluations = 12
[surrogate]
n_initial = 2
[tracking]
enabled = false
[[backends]]
name = "diagnostic"
[structures]
enabled = true
budget_evaluations = 7
csp = {name = "replay-csp", params = {%s, n = 12}}
max_structures = 12
top_k = 3
""" % LANDSCAPE
REFINE = 'refine = {name = "replay-crystal", params = {%s}}\n' % LANDSCAPE
#: the replayed periodic GFN2-xTB level, then phonons as a second level (config alone)
TWO_LEVELS = """
[[structures.levels]]
name = "replay-crystal"
params = {%s}
[[structures.levels]]
name = "phonon"
params = {force_backend = "xtb-crystal"}
""" % LANDSCAPE


def _run(tmp_path, body=BODY + REFINE, name="t", max_evaluations=None):
    from agent.campaign import Campaign
    from agent.config import load_config
    from agent.local_executor import LocalExecutor
    from agent.runner import run_campaign

    cfg = load_config(write_config(tmp_path, POOL, body, name=name))
    runs = tmp_path / "runs"
    camp = Campaign.create(cfg, runs)
    status = run_campaign(camp, runs, progress=False, executor=LocalExecutor(slots=2))
    return camp, status


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One campaign run to its end (closed): its runs directory, decisions and live state."""
    tmp = tmp_path_factory.mktemp("finished")
    camp, status = _run(tmp)
    try:
        land = next(iter(camp.stage.landscapes.values()))
        live = {
            "decisions": _decisions(camp), "status": status,
            "molecule": (list(camp.molecules.observations), camp.molecules.done.copy(),
                         camp.molecules.history),
            "landscape": (dict(land.computed), set(land.failed), list(land.ids)),
            "cost_scales": {k: m.scale for k, m in camp.stage.cost_models.items()},
        }
    finally:
        camp.close()
    return tmp / "runs", live


def _copy(finished, tmp_path):
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(finished[0], runs)
    return runs


def _decisions(camp) -> list[tuple]:
    return [(ev.stage, ev.backend, ev.molecule_id, ev.structure_id, ev.status)
            for ev in camp.store.evaluations()]


def test_request_is_immutable_and_becomes_a_task():
    from dataclasses import FrozenInstanceError

    from agent.stages.base import Request
    from sim_backends.base import EvalInput

    params = {"n": 1}
    r = Request("molecule", "diagnostic", params, EvalInput("C"), molecule_id=1)
    params["n"] = 2  # the request keeps its own copy
    assert r.params["n"] == 1
    with pytest.raises(FrozenInstanceError):
        r.backend = "x"
    with pytest.raises(TypeError):
        r.params["n"] = 3
    task = r.to_task()
    assert task.request is r and task.backend_params == {"n": 1} and task.request_id == r.request_id
    assert r.decision() == ("molecule", "diagnostic", 1, 0, None)


def test_molecule_then_csp_then_refine_within_budget_shares(finished, tmp_path):
    from agent.campaign import Campaign

    status = finished[1]["status"]
    camp = Campaign.open("t", _copy(finished, tmp_path))
    try:
        evs = camp.store.evaluations()
        assert len(evs) == 12 and status.stop_reason.startswith("evaluation budget reached")
        mol = [e for e in evs if e.stage == "molecule"]
        st = [e for e in evs if e.stage == "structures"]
        assert len(mol) == 5 and len(st) == 7  # the shares: 12 - 7 and 7
        assert all(e.backend == "diagnostic" and e.structure_id is None for e in mol)
        # the structure stage waited for the molecule stage, then took its best molecule
        assert max(e.id for e in mol) < min(e.id for e in st)
        (csp,) = [e for e in st if e.backend == "replay-csp"]
        formamide = next(m["id"] for m in camp.store.molecules() if m["smiles"] == "NC=O")
        assert csp.ok and csp.molecule_id == formamide and csp.extra["n_structures_stored"] == 12
        assert "landscape" not in csp.extra  # the minima live in the structures table
        ids = {r["id"] for r in camp.store.structures(formamide)}
        refined = [e for e in st if e.backend == "replay-crystal"]
        assert len(refined) == 6 and all(e.ok and e.structure_id in ids for e in refined)
        assert len({e.structure_id for e in refined}) == 6  # never computed twice
        land = camp.stage.landscapes[formamide]
        assert {land.ids[i] for i in land.computed} == {e.structure_id for e in refined}
        refits = camp.store.events("structure_refit")
        assert refits and refits[-1]["n_computed"] == 6 and refits[-1]["molecule_id"] == formamide
        assert all(r["loo_mae_kjmol"] is None or r["loo_mae_kjmol"] >= 0 for r in refits)
    finally:
        camp.close()


def test_restore_rebuilds_every_stage_and_continues(finished, tmp_path):
    from agent.campaign import Campaign

    live = finished[1]
    live_mol, live_land, live_costs = live["molecule"], live["landscape"], live["cost_scales"]
    again = Campaign.open("t", _copy(finished, tmp_path), max_evaluations=14)
    try:
        m = again.molecules
        assert m.observations == live_mol[0] and (m.done == live_mol[1]).all() and m.history == live_mol[2]
        land2 = next(iter(again.stage.landscapes.values()))
        assert (dict(land2.computed), set(land2.failed), list(land2.ids)) == live_land
        assert {k: md.scale for k, md in again.stage.cost_models.items()} == pytest.approx(live_costs)
        assert again.n_by_stage == {"molecule": 5, "structures": 7}
        # the structure share is spent; the two new evaluations go to the molecule stage,
        # which has nothing left, so nothing is asked and the reason names the share that
        # bound (newuser35 7: it said "no candidate left to evaluate")
        assert again.ask(2) == []
        assert again.stop_reason().startswith("structure-stage budget reached (7 evaluations")
    finally:
        again.close()


def test_refine_command_continues_the_structure_stage_only(finished, tmp_path):
    from agent.cli import main

    runs = _copy(finished, tmp_path)

    import agent.runner
    from agent.local_executor import LocalExecutor

    real = agent.runner.run_campaign

    def local(campaign, runs_dir, **kw):
        assert campaign.enabled == ("structures",)
        return real(campaign, runs_dir, progress=False, executor=LocalExecutor(slots=2))

    agent.runner.run_campaign = local
    try:
        assert main(["refine", "t", "--runs-dir", str(runs), "--budget", "3", "--quiet"]) == 0
    finally:
        agent.runner.run_campaign = real
    rows = sqlite3.connect(runs / "t" / "store.sqlite").execute(
        "SELECT stage, backend, structure_id FROM evaluations ORDER BY id").fetchall()
    assert len(rows) == 15 and [r[1] for r in rows[12:]] == ["replay-crystal"] * 3
    assert len({r[2] for r in rows if r[1] == "replay-crystal"}) == 9


def test_observed_form_in_the_store_is_computed_first(finished, tmp_path):
    """The lab stage's output (observed_forms) reaches the structure stage through the
    store alone: an observed structure not yet computed is the next one proposed."""
    from agent.campaign import Campaign

    runs = _copy(finished, tmp_path)
    camp = Campaign.open("t", runs)
    formamide, land = next(iter(camp.stage.landscapes.items()))
    not_computed = [land.ids[i] for i in range(len(land.ids)) if i not in land.computed]
    observed = not_computed[-1]  # the highest-energy one left: never the acquisition's own pick
    camp.store.add_observed_forms(formamide, [observed], "lab-request-1")
    camp.close()
    again = Campaign.open("t", runs, max_evaluations=13, stages=("structures",))
    try:
        again.shares["structures"] += 1
        (task,) = again.ask(1)
        assert task.request.structure_id == observed and task.request.stage == "structures"
    finally:
        again.close()


def test_second_structure_level_by_configuration_alone(tmp_path):
    """[[structures.levels]]: the phonon level after the first one, nothing else changed.
    Its value key comes from the backend's declaration (f_vib_kjmol), it is asked only for
    structures computed at the first level, and its cost prior is the backend's estimate.
    The phonon results told here are placeholders, to keep this bookkeeping check in the
    fast suite; the same level with real phonons (phonopy over GFN2-xTB forces on a CO2 CSP
    landscape) runs in tests/agent/test_levels_by_config.py (slow). The first level's cost
    prior is fixed (``cost_s``) so that which structures it computes, and so when the phonon
    level's turn comes within the 7 structure-stage evaluations, depends on the energies,
    not on xtb-crystal's cost model (whose change moved the phonons past the budget)."""
    from agent.campaign import Campaign
    from agent.config import load_config
    from agent.executor import _evaluate_in_worker
    from sim_backends.base import EvalResult

    body = (BODY + TWO_LEVELS).replace('name = "replay-crystal"\nparams', 'name = "replay-crystal"\ncost_s = 10.0\nparams')
    assert "cost_s = 10.0" in body
    cfg = load_config(write_config(tmp_path, POOL, body))
    assert cfg.structures.free_energy.name == "phonon" and cfg.structures.refine.name == "replay-crystal"
    camp = Campaign.create(cfg, tmp_path / "runs")
    try:
        assert camp.stage.value_keys == ["energy_kjmol", "f_vib_kjmol"]
        seen_phonon = []
        while tasks := camp.ask(2):
            for t in tasks:
                r = t.request
                if r.backend == "phonon":
                    land = camp.stage.landscapes[r.molecule_id]
                    assert land.index(r.structure_id) in land.computed  # first level first
                    seen_phonon.append(r.structure_id)
                    result = EvalResult("phonon", "placeholder", 1, "ok",
                                        {"f_vib_kjmol": 5.0 + len(seen_phonon)}, 0.1, "h", cpu_s=0.1)
                else:
                    result = _evaluate_in_worker(t.backend, t.backend_params, t.inp)
                camp.tell(t, result)
        assert seen_phonon and len(set(seen_phonon)) == len(seen_phonon)
        land = next(iter(camp.stage.landscapes.values()))
        assert {land.ids[i] for i in land.f_vib} == set(seen_phonon)
        rows = camp.store.evaluations()
        assert {e.stage for e in rows if e.backend == "phonon"} == {"structures"}
        assert camp.stage.cost_models["phonon"].measured == [0.1] * len(seen_phonon)
    finally:
        camp.close()


def test_structures_written_with_a_column_for_every_level(tmp_path):
    """runs/<name>/structures/: landscape_m<id>.csv has a column per structure level (the
    ranking level, a second energy level and a property level), levels.json names each
    level's level of theory, and the CIFs carry every energy level computed; a reopened
    campaign restores the property level's values and never asks for one again. The
    phonon and mobility results told here are placeholders (bookkeeping only; the real
    property level runs in tests/agent/test_esf_campaign.py, slow)."""
    import csv
    import json

    from agent.campaign import Campaign
    from agent.config import load_config
    from agent.executor import _evaluate_in_worker
    from agent.landscape_io import write_campaign_structures
    from sim_backends.base import EvalResult

    levels = TWO_LEVELS + '[[structures.levels]]\nname = "mobility-xtb"\n'
    body = BODY.replace("max_evaluations = 12", "max_evaluations = 20").replace(
        "budget_evaluations = 7", "budget_evaluations = 15")
    camp = Campaign.create(load_config(write_config(tmp_path, POOL, body + levels)), tmp_path / "runs")
    told = {"phonon": {}, "mobility-xtb": {}}
    try:
        while tasks := camp.ask(2):
            for t in tasks:
                r = t.request
                if r.backend in told:
                    key, value = (("f_vib_kjmol", 5.0 + len(told["phonon"])) if r.backend == "phonon"
                                  else ("mobility_hole_cm2Vs", 0.0123 * (1 + len(told["mobility-xtb"]))))
                    told[r.backend][r.structure_id] = value
                    result = EvalResult(r.backend, "placeholder", 1, "ok", {key: value}, 0.1, "h", cpu_s=0.1)
                else:
                    result = _evaluate_in_worker(t.backend, t.backend_params, t.inp)
                camp.tell(t, result)
        assert told["phonon"] and told["mobility-xtb"]
        out = tmp_path / "structures"
        write_campaign_structures(camp, out)
        (mol_id,) = camp.stage.landscapes
        prop = camp.stage.properties[0]
        live = (dict(prop.state(mol_id).values), dict(camp.stage.landscapes[mol_id].f_vib))
    finally:
        camp.close()
    again = Campaign.open("t", tmp_path / "runs", max_evaluations=22)  # the property level restored
    try:
        land = again.stage.landscapes[mol_id]
        assert (dict(again.stage.properties[0].state(mol_id).values), dict(land.f_vib)) == live
        assert {land.ids[i] for i in live[0]} == set(told["mobility-xtb"])
        again.shares["structures"] += 2
        asked = [t.request for t in again.ask(2)]
        assert not any(r.backend == "mobility-xtb" and r.structure_id in told["mobility-xtb"] for r in asked)
    finally:
        again.close()
    levels = json.loads((out / "levels.json").read_text())["levels"]
    assert list(levels) == ["replay-csp", "replay-crystal", "phonon", "mobility-xtb"]
    assert "phonopy" in levels["phonon"] and "xtb" in levels["mobility-xtb"].lower()
    rows = {r["id"]: r for r in csv.DictReader((out / f"landscape_m{mol_id}.csv").open())}
    f_col, mu_col = "F_vib_phonon_kJmol_per_mol", "mobility_hole_cm2Vs_mobility-xtb"
    for sid, r in rows.items():
        f, mu = told["phonon"].get(sid), told["mobility-xtb"].get(sid)
        assert r[f_col] == ("" if f is None else f"{f:.3f}")
        assert (r[mu_col] == "") if mu is None else float(r[mu_col]) == pytest.approx(mu, rel=1e-6)
    sid, f = next(iter(told["phonon"].items()))
    cif = (out / rows[sid]["cif"]).read_text()
    assert "F_vib" in cif and f"{f:.3f}" in cif
    # newuser38 C6: energies.csv says which energies are computed and at what level
    energies = list(csv.DictReader((out / "energies.csv").open()))
    assert list(energies[0]) == ["id", "energy_kjmol", "free_energy_kjmol", "status", "level"]
    assert {e["id"] for e in energies} == set(rows)
    for e in energies:
        r = rows[e["id"]]
        if r["status"] == "failed" or r["E_replay-crystal_best_kJmol_per_mol"] == "":
            assert e["level"] == levels["replay-csp"] and e["energy_kjmol"] == r["E_replay-csp_kJmol_per_mol"]
        else:
            assert (e["status"], e["level"]) == (r["status"], levels["replay-crystal"]), (e, r)
            assert e["energy_kjmol"] == r["E_replay-crystal_best_kJmol_per_mol"]
    assert {e["status"] for e in energies} >= {"computed", "predicted"}
    from sim_backends.landscape import Landscape  # what `lab identify --structures` reads

    read = {x.id: x.energy_kjmol for x in Landscape.from_cif_dir(out).minima}
    assert read == {e["id"]: float(e["energy_kjmol"]) for e in energies}


def test_structures_export_replaces_the_previous_one(finished, tmp_path, monkeypatch):
    """An export into runs/<name>/structures/ deletes the CIFs and tables an earlier export
    wrote there and it does not (a landscape re-made smaller), known from its manifest or,
    for a folder exported before there was one, from the earlier tables; another writer's
    files (the ESF global minima) and the user's are kept, so `lab identify --structures`
    (Landscape.from_cif_dir, which refuses a CIF without an energies.csv row) reads exactly
    this export. An export that fails part-way leaves the earlier one readable as it was."""
    import agent.summary
    import sim_backends.csp.landscape as csp_landscape
    from agent.campaign import Campaign
    from agent.landscape_io import MANIFEST, write_campaign_structures
    from sim_backends.landscape import Landscape

    def read_ids(out):
        return {x.id for x in Landscape.from_cif_dir(out).minima}

    full_rows, real_cif = agent.summary.landscape_rows, csp_landscape.crystal_cif
    camp = Campaign.open("t", _copy(finished, tmp_path))
    try:
        out = tmp_path / "structures"
        (mol_id,) = camp.stage.landscapes
        ids = [r["id"] for r in full_rows(camp, mol_id)]
        assert len(ids) > 5
        write_campaign_structures(camp, out)
        (out / MANIFEST).unlink()  # as written before exports kept a manifest
        (out / "notes.txt").write_text("mine")
        esf = out / f"esf_m{mol_id}_{ids[0]}.cif"  # agent.esf_report's, in the same folder
        esf.write_text((out / f"{ids[0]}.cif").read_text())
        monkeypatch.setattr(agent.summary, "landscape_rows", lambda c, m: full_rows(c, m)[:-3])
        written = write_campaign_structures(camp, out)
        assert {p.name for p in written} == {f"{s}.cif" for s in ids[:-3]} | {
            f"landscape_m{mol_id}.csv", "energies.csv", "levels.json"}
        assert not any((out / f"{s}.cif").exists() for s in ids[-3:])
        assert (out / "notes.txt").read_text() == "mine" and esf.is_file()
        esf.unlink()  # no row in energies.csv: the strict read refuses it (not this writer's)
        assert read_ids(out) == set(ids[:-3])
        monkeypatch.setattr(agent.summary, "landscape_rows", lambda c, m: full_rows(c, m)[:-5])
        write_campaign_structures(camp, out)  # the manifest names the previous export's files
        assert read_ids(out) == set(ids[:-5]) and (out / "notes.txt").is_file()
        assert sorted(p.name for p in out.iterdir()) == sorted(
            [MANIFEST, "notes.txt", f"landscape_m{mol_id}.csv", "energies.csv", "levels.json"]
            + [f"{s}.cif" for s in ids[:-5]])
        monkeypatch.setattr(agent.summary, "landscape_rows", full_rows)
        calls = []

        def fails_at_the_third(*args, **kw):
            calls.append(1)
            if len(calls) == 3:
                raise OSError("disk full")
            return real_cif(*args, **kw)

        monkeypatch.setattr(csp_landscape, "crystal_cif", fails_at_the_third)
        with pytest.raises(OSError, match="disk full"):
            write_campaign_structures(camp, out)
        assert read_ids(out) == set(ids[:-5]) and not any(p.name.endswith(".tmp") for p in out.iterdir())
    finally:
        camp.close()


def test_fragment_level_uses_the_landscapes_parsed_structures(tmp_path, monkeypatch):
    """A fragment-DFT level's pair terms are computed on the structures the Landscape
    already parsed: no CIF is read again, and the crystals are those load_crystal makes
    from the stored CIFs (same atoms, order, cell and molecules)."""
    import numpy as np

    import sim_backends.fragment_terms as fragment_terms
    import sim_backends.structures as structures
    from agent.campaign import Campaign
    from agent.config import load_config
    from agent.executor import _evaluate_in_worker

    dft = f'landscape = "{ROOT / "data/landscapes/formic_acid_dft"}", cheap = "ff", level = "dft"'
    body = (BODY.replace(LANDSCAPE, dft) + "dimer_baselines = []\n"
            + 'refine = {name = "replay-crystal", params = {%s}}\n' % dft)
    pool = ["OC=O formic_acid", "CC(=O)O acetic_acid", "CCCCO butanol", "c1ccccc1 benzene"]
    camp = Campaign.create(load_config(write_config(tmp_path, pool, body)), tmp_path / "runs")
    try:
        while not camp.stage.landscapes:  # the molecule stage, then the (replayed) CSP
            for t in camp.ask(2):
                camp.tell(t, _evaluate_in_worker(t.backend, t.backend_params, t.inp))
        land = next(iter(camp.stage.landscapes.values()))
        assert camp.stage._fragment_settings() is not None  # a fragment-decomposed level
        parsed, given = [], []
        read = structures.atoms_from_cif
        monkeypatch.setattr(structures, "atoms_from_cif", lambda cif: parsed.append(cif) or read(cif))
        monkeypatch.setattr(fragment_terms, "landscape_fragment_terms",
                            lambda crystals, *a, **k: given.extend(crystals) or [])
        assert camp.stage._fragment_terms(land) == []
        assert parsed == [] and len(given) == len(land.ids) == 12
        for crystal, entry in zip(given, land.landscape.minima, strict=True):
            ref = structures.load_crystal(entry.cif(), land.smiles)
            assert crystal.atoms.get_chemical_symbols() == ref.atoms.get_chemical_symbols()
            assert np.allclose(crystal.atoms.positions, ref.atoms.positions, atol=1e-8)
            assert np.allclose(crystal.atoms.cell[:], ref.atoms.cell[:], atol=1e-8)
            assert [g.tolist() for g in crystal.groups] == [g.tolist() for g in ref.groups]
    finally:
        camp.close()


def test_schema_v2_store_is_migrated_and_resumes(finished, tmp_path):
    from agent.campaign import Campaign
    from agent.store import SCHEMA_VERSION

    runs, before = _copy(finished, tmp_path), finished[1]["decisions"]
    db = sqlite3.connect(runs / "t" / "store.sqlite")  # make it a version-2 store
    db.execute("ALTER TABLE evaluations DROP COLUMN stage")
    db.execute("DROP TABLE observed_forms")
    db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    again = Campaign.open("t", runs)
    try:
        assert again.store.get_meta("schema_version") == str(SCHEMA_VERSION) == "3"
        assert _decisions(again) == before  # every row attributed to the stage that asked
        assert again.n_by_stage == {"molecule": 5, "structures": 7}
    finally:
        again.close()


def test_same_config_seed_and_replays_make_the_same_decisions(finished, tmp_path):
    again, _ = _run(tmp_path)
    try:
        first, second = finished[1]["decisions"], _decisions(again)
        assert len(first) == 12 and second == first
    finally:
        again.close()


def test_lab_stage_submits_identifies_and_records_observed_forms(tmp_path):
    """The lab stage with the simulated robot drawing from the campaign's own landscape:
    one experiment for the landscape molecule, identified against the stored structures,
    the observed forms written to the store (what the structure stage reads), and a
    reopened campaign re-derives nothing twice."""
    import json

    from agent.campaign import Campaign

    lab = '[lab]\nadapter = "simulated"\nparams = {queue_delay_s = [0.0, 0.05], run_delay_s = [0.05, 0.1]}\n'
    camp, _ = _run(tmp_path, BODY + REFINE + lab)
    runs = camp.directory.parent
    try:
        (row,) = camp.store.lab_experiments()
        formamide = next(m["id"] for m in camp.store.molecules() if m["smiles"] == "NC=O")
        assert row["molecule_id"] == formamide and row["state"] == "done", dict(row)
        ident = json.loads(row["identification_json"])
        from agent.stages.lab import _observed_forms, pxrd_figure_path

        expected = _observed_forms(ident, camp.cfg.lab.min_confidence)
        assert camp.store.observed_forms(formamide) == expected
        assert set(expected) <= {r["id"] for r in camp.store.structures(formamide)}
        assert pxrd_figure_path(camp.directory, row["request_id"]).exists()
        land = camp.stage.landscapes[formamide]
        assert {land.ids[i] for i in land.observed} <= set(expected)
    finally:
        camp.close()
    again = Campaign.open("t", runs)
    try:
        assert again.store.observed_forms(formamide) == expected
        assert len(again.store.lab_experiments()) == 1
    finally:
        again.close()


def test_lab_stage_gives_the_campaign_landscape_to_any_adapter_that_takes_one(tmp_path, monkeypatch):
    """landscape = "campaign" is not tied to the adapter named "simulated": any registered
    adapter that declares takes_landscape gets the molecule's stored landscape (and the
    campaign's seed), built through the adapter registry."""
    from agent.lab.base import ADAPTERS
    from agent.lab.simulated import SimulatedLab

    given = []

    class RecordingLab(SimulatedLab):  # a second simulator, e.g. another noise model
        name = "recording"

        def __init__(self, landscape, **kw):
            given.append((landscape, kw.get("seed")))
            super().__init__(landscape, **kw)

    monkeypatch.setattr(sys.modules[__name__], "RecordingLab", RecordingLab, raising=False)
    monkeypatch.setitem(ADAPTERS, "recording", f"{__name__}:RecordingLab")
    lab = ('[lab]\nadapter = "recording"\n'
           'params = {queue_delay_s = [0.0, 0.05], run_delay_s = [0.05, 0.1]}\n')
    camp, _ = _run(tmp_path, BODY + REFINE + lab)
    try:
        (row,) = camp.store.lab_experiments()
        assert row["state"] == "done", dict(row)
        ((landscape, seed),) = given
        assert list(landscape) == ["NC=O"] and seed == camp.cfg.seed
        stored = [r["id"] for r in camp.store.structures(row["molecule_id"])]
        assert [e.id for e in landscape["NC=O"]] == stored[: camp.cfg.structures.max_structures]
    finally:
        camp.close()


def test_tracker_logs_the_stores_events_once(finished, tmp_path, premigrated_mlflow):
    """MLflow as a view of the store: structure refits recorded by an earlier process (no
    in-memory outbox) are logged from the store's events, each once."""
    from mlflow.tracking import MlflowClient

    from agent.campaign import Campaign
    from agent.tracking import Tracker

    runs = _copy(finished, tmp_path)
    premigrated_mlflow(runs)  # the default store, tables made once per session
    camp = Campaign.open("t", runs)
    try:
        refits = camp.store.events("structure_refit")
        tracker = Tracker(camp, runs)
        tracker.log_events()
        tracker.log_events()  # nothing new: nothing logged twice
        client = MlflowClient(tracker.uri)
        mol = refits[0]["molecule_id"]
        # newuser43b #7: every series on evaluations told (the structures computed are a
        # metric of their own), and no calibration factor below MIN_CALIBRATION_N structures
        from agent.tracking import MIN_CALIBRATION_N

        def points(key):
            return sorted((m.step, m.value) for m in client.get_metric_history(tracker.run_id, key))

        assert all("n_evaluations" in r for r in refits)
        assert points(f"structures_computed_m{mol}") == sorted((r["n_evaluations"], r["n_computed"]) for r in refits)
        assert [s for s, _ in points(f"structure_gp_loo_mae_kjmol_m{mol}")] == sorted(
            r["n_evaluations"] for r in refits if r["loo_mae_kjmol"] is not None)
        calibrated = [r for r in refits if r["n_computed"] >= MIN_CALIBRATION_N]
        assert any(r["n_computed"] < MIN_CALIBRATION_N for r in refits) and calibrated
        assert points(f"structure_gp_calibration_m{mol}") == sorted(
            (r["n_evaluations"], pytest.approx(r["calibration"])) for r in calibrated)
        assert int(camp.store.get_meta("mlflow_event_cursor")) == camp.store.events()[-1]["event_id"]
        tags = client.get_run(tracker.run_id).data.tags
        assert tags[f"structure_surrogate_m{mol}"] == refits[-1]["surrogate"]
        tracker.finish()
    finally:
        camp.close()
