"""``crystal-agent report`` of a structure-refinement campaign as a chemist reads it
(newuser35 item 5): the convergence figure shows the structure stage's lattice energies
(it showed the two molecule-stage points under an axis saying "all levels and stages"),
the landscape figure says which zero each level's energies are relative to, the report's
landscape table has the space group and Z of the CIFs and no free energy where none was
computed, and ``report`` prints the directories with counts instead of one line per file.

A real Campaign with replayed backends (tests/agent/test_stages.py's campaign: a stored
formamide CSP landscape and its stored periodic GFN2-xTB lattice energies), no Ray."""

from __future__ import annotations

import csv

import matplotlib
import pytest

from conftest import write_config
from test_stages import BODY, POOL, REFINE

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NAME = "rep"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The finished campaign's runs directory (the run wrote its report)."""
    from agent.campaign import Campaign
    from agent.config import load_config
    from agent.local_executor import LocalExecutor
    from agent.runner import run_campaign

    tmp = tmp_path_factory.mktemp("report_structures")
    cfg = load_config(write_config(tmp, POOL, BODY + REFINE, name=NAME))
    camp = Campaign.create(cfg, tmp / "runs")
    try:
        run_campaign(camp, tmp / "runs", progress=False, executor=LocalExecutor(slots=2))
        (land,) = camp.stage.landscapes.values()
        assert not camp.stage.free_energy and len(land.computed) >= 5
    finally:
        camp.close()
    return tmp / "runs"


@pytest.fixture
def camp(runs):
    from agent.campaign import Campaign

    c = Campaign.open(NAME, runs, readonly=True)
    yield c
    c.close()


def _refine_results(camp):
    return [(ev.id, ev.values["energy_kjmol"]) for ev in camp.store.evaluations()
            if ev.backend == camp.stage.refine.name and ev.ok]


def test_convergence_figure_plots_every_structure_level_energy_and_the_running_best(camp):
    from agent.report import convergence_figure
    from agent.summary import level_of_theory

    computed = _refine_results(camp)
    notes: list[str] = []
    fig = convergence_figure(camp, plt, notes)
    try:
        mol_ax, ax = fig.axes  # the molecule stage above, the structure stage below
        points = sorted((round(x), float(y)) for c in ax.collections for x, y in c.get_offsets())
        assert [n for n, _ in points] == [n for n, _ in computed]
        assert [v for _, v in points] == pytest.approx([v for _, v in computed])
        (best,) = [ln for ln in ax.get_lines() if ln.get_label().endswith("lowest so far")]
        running = [min(v for _, v in computed[:k]) for k in range(1, len(computed) + 1)]
        assert list(best.get_ydata()) == pytest.approx(running)
        assert ax.get_ylabel() == "lattice energy (kJ/mol per molecule)"
        assert level_of_theory(camp.stage.refine) in ax.get_title().replace("\n", " ")
        assert f"{len(computed)} lattice energies of formamide" in ax.get_title()
        # the CSP evaluation is marked on the evaluation numbers; the panel spans the
        # structure stage's evaluations, not the whole campaign (which left it mostly empty)
        csp = next(ev.id for ev in camp.store.evaluations() if ev.backend == camp.stage.cfg.csp.name)
        assert any(list(ln.get_xdata()) == [csp, csp] for ln in ax.get_lines())
        assert not mol_ax.get_shared_x_axes().joined(mol_ax, ax)
        assert ax.get_xlim() == pytest.approx((min(csp, computed[0][0]) - 1, computed[-1][0] + 1))
        assert "molecule stage" in mol_ax.get_title() and not notes
    finally:
        plt.close(fig)


def test_convergence_figure_without_enough_structure_points_says_so(camp, monkeypatch):
    import agent.report as report

    monkeypatch.setattr(report, "MIN_PARITY_POINTS", 100)
    notes: list[str] = []
    fig = report.convergence_figure(camp, plt, notes)
    try:
        (ax,) = fig.axes
        assert ax.get_xlabel() == "evaluation number (all levels and stages; molecule stage shown)"
        n = len(_refine_results(camp))
        title = ax.get_title().replace("\n", " ")
        assert "molecule stage" in title and f"{n} lattice energies" in title and "fewer than 100" in title
        assert notes and "no structure-stage convergence panel" in notes[0]
    finally:
        plt.close(fig)


def test_landscape_figure_names_each_levels_zero(camp):
    from agent.report import landscape_figure

    (mol_id,) = camp.stage.landscapes
    land = camp.stage.landscapes[mol_id]
    fig = landscape_figure(camp, mol_id, plt)
    try:
        ax = fig.axes[0]
        assert "each level relative to its own lowest structure" in ax.get_title()
        labels = [t.get_text().replace("\n", " ") for t in ax.get_legend().get_texts()]
        i_ff = int(land.ff_kjmol.argmin())
        assert any(f"0 = its lowest, {land.ids[i_ff]}, {land.ff_kjmol[i_ff]:.1f} kJ/mol" in t for t in labels)
        low = min(land.computed.values())  # a computed structure leads this replayed landscape
        assert any("Delta-GP" in t and f"(computed), {low:.1f} kJ/mol" in t for t in labels), labels
    finally:
        plt.close(fig)


def test_landscape_figure_names_the_level_the_molecules_search_recorded(camp, monkeypatch):
    """newuser41 #6: the force-field entry named the config's by-molecule charge rule ("charges by
    molecule: ... (rigid), ... (flexible)"), not the charges this molecule's search used, which
    its CSP evaluation records (a replayed search records none, so the level is given here)."""
    import agent.summary
    from agent.report import landscape_figure

    (mol_id,) = camp.stage.landscapes
    level = "W99 exp-6 + Ewald force field, RESP HF/6-31G* charges (as recorded)"
    monkeypatch.setattr(agent.summary, "csp_levels", lambda store, name: {int(mol_id): level})
    fig = landscape_figure(camp, mol_id, plt)
    try:
        labels = [t.get_text().replace("\n", " ") for t in fig.axes[0].get_legend().get_texts()]
        assert any(t.startswith(f"{level}; 0 = its lowest") for t in labels), labels
    finally:
        plt.close(fig)


def test_landscape_table_has_the_cifs_space_group_and_z_and_no_free_energy(runs):
    """The report's landscape table is ``landscape_model_m<id>.csv`` (newuser43b #8: it
    shared ``landscape_m<id>.csv`` with the structures' table), its energies named as
    relative (``dE_``), by level, with their unit, not "static"."""
    from agent.cli import main

    assert main(["report", NAME, "--runs-dir", str(runs)]) == 0
    (table,) = (runs / NAME / "report").glob("landscape*.csv")
    assert table.name.startswith("landscape_model_m")
    rows = list(csv.DictReader(table.open()))
    (structures,) = (runs / NAME / "structures").glob("landscape_m*.csv")
    ref = {r["id"]: r for r in csv.DictReader(structures.open())}
    assert list(rows[0]) == ["id", "space_group", "Z", "Z_prime", "density_gcm3", "dE_replay-csp_kJmol_per_mol",
                             "dE_predicted_replay-crystal_kJmol_per_mol",
                             "dE_predicted_sd_replay-crystal_kJmol_per_mol", "computed_replay-crystal",
                             "F_vib_kJmol_per_mol", "dG_kJmol_per_mol", "rank_by_dE_replay-crystal",
                             "rank_by_dG", "observed"]
    assert not [c for c in rows[0] if "static" in c]
    assert len(rows) == len(ref)
    for r in rows:
        assert (r["space_group"], r["Z"], r["Z_prime"]) == tuple(ref[r["id"]][k] for k in ("space_group", "Z", "Z_prime"))
        assert int(r["Z"]) >= 1  # (the replayed landscape stores no space groups)
        assert r["density_gcm3"] == ref[r["id"]]["density_gcm3"]
        # no free-energy level: no F_vib, no G, no rank by G
        assert r["F_vib_kJmol_per_mol"] == r["dG_kJmol_per_mol"] == r["rank_by_dG"] == ""
        if r["computed_replay-crystal"] == "1":  # a computed energy has no prediction spread
            assert float(r["dE_predicted_sd_replay-crystal_kJmol_per_mol"]) == 0.0
    assert [int(r["rank_by_dE_replay-crystal"]) for r in rows] == list(range(1, len(rows) + 1))
    assert float(rows[0]["dE_predicted_replay-crystal_kJmol_per_mol"]) == 0.0
    assert min(float(r["dE_replay-csp_kJmol_per_mol"]) for r in rows) == 0.0


def test_report_prints_directories_with_counts_and_every_file_with_verbose(runs, capsys):
    from agent.cli import main

    assert main(["report", NAME, "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out.splitlines()
    n_cif = len(list((runs / NAME / "structures").glob("*.cif")))
    assert n_cif > 6 and len(out) <= 5, out
    assert out[0].startswith("wrote ") and out[0].endswith(" files:")
    report_line = next(ln for ln in out if ln.strip().startswith(str(runs / NAME / "report")))
    assert "convergence.png" in report_line and "summary.txt" in report_line
    assert any(f"{n_cif} CIF files (one per structure)" in ln for ln in out)
    assert out[-1].startswith(f"start with {runs / NAME / 'report' / 'summary.txt'}")
    total = int(out[0].split()[1])
    assert main(["report", NAME, "--runs-dir", str(runs), "--verbose"]) == 0
    every = capsys.readouterr().out.splitlines()
    assert len(every) == total and sum(p.endswith(".cif") for p in every) == n_cif
