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
    ref = (finished / "fr" / "report" / "landscape_m1.csv").read_text()
    calls = _count_work(monkeypatch)
    copy, out = _report(finished, tmp_path, capsys)
    assert calls == {"fit": 0, "terms": 0}, calls
    assert out.err == ""  # nothing slow to announce
    assert (copy / "fr" / "report" / "landscape_m1.csv").read_text() == ref  # the run's own numbers


def test_report_without_saved_results_fits_once_and_says_so(finished, tmp_path, capsys, monkeypatch):
    import sqlite3

    from agent.stages.corrected_cache import CORRECTED_META

    ref = (finished / "fr" / "report" / "landscape_m1.csv").read_text()
    copy, _ = _report(finished, tmp_path, capsys)
    db = sqlite3.connect(copy / "fr" / "store.sqlite")
    with db:
        db.execute("DELETE FROM meta WHERE key = ?", (CORRECTED_META,))  # a campaign stopped before its end
    db.close()
    calls = _count_work(monkeypatch)
    copy, out = _report(finished, tmp_path, capsys)
    assert calls == {"fit": 1, "terms": 1}, calls  # not once per plot, table and summary
    assert "report: m1: fragment terms of 12 structures" in out.err
    assert "report: m1: fitting the structure surrogate on" in out.err
    assert (copy / "fr" / "report" / "landscape_m1.csv").read_text() == ref
