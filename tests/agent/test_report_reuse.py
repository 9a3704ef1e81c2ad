"""``crystal-agent report`` reuses what the run computed (newuser34: 85 s to > 300 s of
silence on a fragment-DFT campaign whose run wrote the same report in seconds): the run
saves the corrected landscapes in the store, a read-only report reads them instead of
recomputing the fragment terms and refitting the surrogate (four times: plot, table,
structures, summary); without them it fits once and says what it is doing."""

from __future__ import annotations

import pytest

from conftest import ROOT, write_config
from test_stages import BODY as STAGES_BODY
from test_stages import LANDSCAPE

#: test_stages' campaign on the replayed fragment-DFT landscape of formic acid (no xTB baselines)
DFT = f'landscape = "{ROOT / "data/landscapes/formic_acid_dft"}", cheap = "ff", level = "dft"'
BODY = (STAGES_BODY.replace(LANDSCAPE, DFT) + "dimer_baselines = []\n"
        + 'refine = {name = "replay-crystal", params = {%s}}\n' % DFT)
POOL = ["OC=O formic_acid", "CC(=O)O acetic_acid", "CCCCO butanol", "c1ccccc1 benzene"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    from agent.campaign import Campaign
    from agent.config import load_config
    from agent.local_executor import LocalExecutor
    from agent.runner import run_campaign

    tmp = tmp_path_factory.mktemp("reuse")
    cfg = load_config(write_config(tmp, POOL, BODY, name="fr"))
    camp = Campaign.create(cfg, tmp / "runs")
    try:
        run_campaign(camp, tmp / "runs", progress=False, executor=LocalExecutor(slots=2))
        assert camp.stage._fragment_settings() is not None  # a fragment-decomposed level
        (land,) = camp.stage.landscapes.values()
        assert len(land.computed) >= 5
    finally:
        camp.close()
    return tmp / "runs"


def _count_work(monkeypatch):
    import sim_backends.fragment_terms as fragment_terms
    from agent.stages.structure import StructureStage

    calls = {"fit": 0, "terms": 0}
    fit, terms = StructureStage._fit_model, fragment_terms.landscape_fragment_terms

    def counted_fit(self, *a, **k):
        calls["fit"] += 1
        return fit(self, *a, **k)

    def counted_terms(*a, **k):
        calls["terms"] += 1
        return terms(*a, **k)

    monkeypatch.setattr(StructureStage, "_fit_model", counted_fit)
    monkeypatch.setattr(fragment_terms, "landscape_fragment_terms", counted_terms)
    return calls


def _report(runs, tmp_path, capsys):
    import shutil

    from agent.cli import main

    copy = tmp_path / "runs"
    if not copy.exists():
        shutil.copytree(runs, copy)
    assert main(["report", "fr", "--runs-dir", str(copy)]) == 0
    return copy, capsys.readouterr()


def test_report_reuses_the_runs_corrected_landscapes(finished, tmp_path, capsys, monkeypatch):
    ref = (finished / "fr" / "report" / "landscape_model_m1.csv").read_text()
    calls = _count_work(monkeypatch)
    copy, out = _report(finished, tmp_path, capsys)
    assert calls == {"fit": 0, "terms": 0}, calls
    assert out.err == ""  # nothing slow to announce
    assert (copy / "fr" / "report" / "landscape_model_m1.csv").read_text() == ref  # the run's own numbers


def test_report_without_saved_results_fits_once_and_says_so(finished, tmp_path, capsys, monkeypatch):
    import shutil
    import sqlite3

    from agent.stages.corrected_cache import CORRECTED_META

    ref = (finished / "fr" / "report" / "landscape_model_m1.csv").read_text()
    copy, _ = _report(finished, tmp_path, capsys)
    db = sqlite3.connect(copy / "fr" / "store.sqlite")
    with db:
        db.execute("DELETE FROM meta WHERE key = ?", (CORRECTED_META,))  # a campaign stopped before its end
    db.close()
    shutil.rmtree(copy / "fr" / "cache")  # and the fragment terms the run kept
    calls = _count_work(monkeypatch)
    copy, out = _report(finished, tmp_path, capsys)
    assert calls == {"fit": 1, "terms": 1}, calls  # not once per plot, table and summary
    assert "report: m1: fragment terms of 12 structures" in out.err
    assert "report: m1: fitting the structure surrogate on" in out.err
    assert (copy / "fr" / "report" / "landscape_model_m1.csv").read_text() == ref


def test_the_runs_fragment_terms_are_read_back_not_recomputed(finished, tmp_path, capsys, monkeypatch):
    """A new process of the campaign (resume, refine, a report without the saved corrected
    landscapes) reads the fragment terms the run saved under runs/<name>/cache/ and gets the
    same numbers; a damaged file is recomputed, never used."""
    import sqlite3

    from agent.stages.corrected_cache import CORRECTED_META

    (saved,) = (finished / "fr" / "cache" / "fragment_terms").glob("m1-*.json.gz")
    ref = (finished / "fr" / "report" / "landscape_model_m1.csv").read_text()
    copy, _ = _report(finished, tmp_path, capsys)
    db = sqlite3.connect(copy / "fr" / "store.sqlite")
    with db:
        db.execute("DELETE FROM meta WHERE key = ?", (CORRECTED_META,))
    db.close()
    calls = _count_work(monkeypatch)
    copy, out = _report(finished, tmp_path, capsys)
    assert calls == {"fit": 1, "terms": 0}, calls
    assert "fragment terms of" not in out.err
    assert (copy / "fr" / "report" / "landscape_model_m1.csv").read_text() == ref

    (cached,) = (copy / "fr" / "cache" / "fragment_terms").glob("m1-*.json.gz")
    cached.write_bytes(cached.read_bytes()[:100])  # a truncated file
    calls = _count_work(monkeypatch)
    copy, out = _report(finished, tmp_path, capsys)
    assert calls == {"fit": 1, "terms": 1}, calls
    assert (copy / "fr" / "report" / "landscape_model_m1.csv").read_text() == ref


def test_fragment_cache_round_trip_and_key():
    import math

    import numpy as np
    from ase import Atoms

    from agent.stages import fragment_cache
    from sim_backends.fragment_terms import FragmentTerms

    t = FragmentTerms(known_kjmol=-50.5, e_d3_kjmol=-30.25, e_pc_total_kjmol=-20.25,
                      keys=[(0, 1, (0, 0, 1)), (0, 0, (1, -1, 0))], contact_A=np.array([1.7, 2.4]),
                      weights=np.array([0.5, 1.0]), multiplicity=np.array([2, 4]),
                      e_pc_dimer_kjmol=np.array([-30.1, 1.25]), features=np.arange(6.0).reshape(2, 3) / 7,
                      feature_names=["C-O/0.25", "C-O/0.5", "C-O/1"],
                      baselines=np.array([[1.0, np.nan], [2.0, 3.0]]), baseline_names=["gfn2-xtb", "d3"])
    a = Atoms("CO", positions=[[0, 0, 0], [1.13, 0, 0]], cell=np.eye(3) * 5, pbc=True)
    settings = {"cutoff_A": 3.0, "cutoff_mode": "contact", "functional": "pbe"}
    k = fragment_cache.key("[C-]#[O+]", settings, ["gfn2-xtb"], "element", [a])
    b = a.copy()
    b.positions[1, 0] += 1e-3
    assert fragment_cache.key("[C-]#[O+]", settings, ["gfn2-xtb"], "element", [b]) != k
    assert fragment_cache.key("[C-]#[O+]", settings, ["d3"], "element", [a]) != k
    assert fragment_cache.key("[C-]#[O+]", {**settings, "cutoff_A": 3.5}, ["gfn2-xtb"], "element", [a]) != k
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        assert fragment_cache.load(d, 3, k) is None
        p = fragment_cache.save(d, 3, k, [t])
        assert p is not None and [f.name for f in p.parent.iterdir()] == [p.name]  # no temporary left
        (back,) = fragment_cache.load(d, 3, k)
        assert fragment_cache.load(d, 3, "0" * 64) is None
    assert back.keys == t.keys and back.feature_names == t.feature_names
    for name in ("contact_A", "weights", "multiplicity", "e_pc_dimer_kjmol", "features"):
        assert np.array_equal(getattr(back, name), getattr(t, name)) and getattr(back, name).dtype == \
            getattr(t, name).dtype
    assert back.baselines[0, 0] == 1.0 and math.isnan(back.baselines[0, 1])
    assert (back.known_kjmol, back.e_d3_kjmol, back.baseline_names) == (-50.5, -30.25, ["gfn2-xtb", "d3"])
