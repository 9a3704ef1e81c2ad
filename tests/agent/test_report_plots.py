"""Report plots a chemist reads (issue 14 item 8): quantities with units and levels of
theory on the axes, molecule names, integer evaluation ticks, failed evaluations never
drawn as values, no parity plot from fewer than five points, a landscape legend that
survives many space groups.

The campaign is a real :class:`~agent.campaign.Campaign` (GFN2-xTB and
B3LYP/6-31G//GFN2-xTB ladder) told stored results of real calculations
(``data/benchmarks/reorg_table.csv``) instead of running them."""

from __future__ import annotations

import csv

import matplotlib
import pytest

from tests.conftest import ROOT, write_config

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TABLE = ROOT / "data/benchmarks/reorg_table.csv"
BODY = """
objective = "reorg_energy_kjmol"
max_evaluations = 100
[[backends]]
name = "xtb-reorg"
[[backends]]
name = "dft-reorg"
params = { functional = "b3lyp", basis = "6-31g", geometry = "xtb" }  # as the stored values
"""


def _stored_rows(n: int) -> list[dict]:
    with TABLE.open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["xtb_reorg_kjmol"] and r["dft_reorg_kjmol"]]
    return rows[:n]


def _campaign(tmp_path, n_both: int):
    """8 molecules told their stored xTB values, ``n_both`` of them their DFT values, and
    one failed xTB evaluation (a ninth molecule)."""
    from agent.campaign import Campaign
    from agent.config import load_config
    from agent.stages.base import Request
    from sim_backends.base import EvalInput, EvalResult

    rows = _stored_rows(9)
    cfg = write_config(tmp_path, [f"{r['smiles']} {r['name']}" for r in rows], BODY, name="plots")
    camp = Campaign.create(load_config(cfg), tmp_path / "runs")

    def tell(i: int, f: int, value: float | None) -> None:
        backend = ("xtb-reorg", "dft-reorg")[f]
        task = Request("molecule", backend, {}, EvalInput(camp.smiles[i]),
                       molecule_id=int(camp.mol_ids[i]), fidelity=f).to_task()
        ok = value is not None
        camp.tell(task, EvalResult(backend, "stored", f, "ok" if ok else "failed",
                                   {"reorg_energy_kjmol": value} if ok else {}, 1.0, "h",
                                   reason="" if ok else "run: SCF did not converge"))

    for i in range(8):
        tell(i, 0, float(rows[i]["xtb_reorg_kjmol"]))
    tell(8, 0, None)
    for i in range(n_both):
        tell(i, 1, float(rows[i]["dft_reorg_kjmol"]))
    return camp


def test_convergence_plot_units_levels_names_ticks_and_failures(tmp_path):
    from agent.report import convergence_figure

    camp = _campaign(tmp_path, n_both=3)
    try:
        fig = convergence_figure(camp, plt)
        ax = fig.axes[0]
        assert ax.get_ylabel() == "hole reorganisation energy λ+ (kJ/mol)"
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
        legend = [t.get_text() for t in fig.legends[0].get_texts()]  # levels: below the axes
        assert any("GFN2-xTB" in t for t in legend)
        assert any("B3LYP/6-31G//GFN2-xTB" in t for t in legend)
        assert "failed evaluation (1)" in legend
        # the failed evaluation (number 9) is not a value point: no scatter holds it
        failed_n = next(h["n"] for h in camp.history if h["status"] != "ok")
        for coll in ax.collections:
            assert failed_n not in [round(x) for x, _ in coll.get_offsets()]
        # the DFT-level molecules are ranked beside their points and named in the axes' legend
        ranked = [t.get_text() for t in ax.get_legend().get_texts()]
        assert all(any(camp.names[i] in t for t in ranked) for i in range(3)), ranked
        assert {t.get_text() for t in ax.texts} == {"1", "2", "3"}
        plt.close(fig)
    finally:
        camp.close()


def test_parity_plot_refused_below_five_points(tmp_path):
    from agent.report import fidelity_parity_figure, write_plots

    camp = _campaign(tmp_path, n_both=2)
    try:
        notes: list[str] = []
        assert fidelity_parity_figure(camp, plt, notes) is None
        assert "2 molecule(s)" in notes[0] and "fewer than 5" in notes[0]
        paths = write_plots(camp)
        assert not (camp.directory / "report" / "fidelity_parity.png").exists()
        assert "fewer than 5" in (camp.directory / "report" / "summary.txt").read_text()
        assert camp.directory / "report" / "convergence.png" in paths
    finally:
        camp.close()


def test_parity_plot_with_enough_points_names_both_levels(tmp_path):
    from agent.report import fidelity_parity_figure

    camp = _campaign(tmp_path, n_both=6)
    try:
        fig = fidelity_parity_figure(camp, plt, [])
        ax = fig.axes[0]
        assert ax.get_xlabel() == ("hole reorganisation energy λ+ (kJ/mol)\nGFN2-xTB four-point lambda+ (tblite), "
                                  "gas phase; cation at\n10 K electronic temperature where the HOMO is degenerate\n"
                                  "(Jahn-Teller)")
        assert ax.get_ylabel().startswith("hole reorganisation energy λ+ (kJ/mol)\nB3LYP/6-31G//GFN2-xTB")
        assert len(ax.collections[0].get_offsets()) == 6
        assert {t.get_text() for t in ax.texts} == {camp.names[i] for i in range(6)}
        plt.close(fig)
    finally:
        camp.close()


def test_csp_landscape_legend_groups_beyond_nine_space_groups():
    """14 space groups: 9 named with counts, the other 5 grouped, none dropped."""
    from pymatgen.core import Structure

    from sim_backends.landscape import Landscape, LandscapeEntry

    st = Structure.from_file(ROOT / "data/reference/x23/cif/co2.cif")
    groups = ["P2_1/c", "P-1", "P2_1", "C2/c", "Pbca", "P2_12_12_1", "Pna2_1", "Cc", "C2",
              "P1", "Pnma", "Cmce", "Immm", "C2/m"]
    minima = [LandscapeEntry(f"m{k:04d}", -30.0 + 0.5 * k, 1.5 + 0.01 * k, groups[k % 14], 1, "P-1", 2, 1, st)
              for k in range(40)]
    fig = Landscape("O=C=O", minima).figure("carbon dioxide")
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(legend) == 10 and legend[-1] == "other (5 groups, 13)"
    assert sum(int(t.rsplit("(", 1)[1].rstrip(")").split(", ")[-1]) for t in legend) == 40
    assert "P2$_1$/c (3)" in legend  # screw axes as subscripts
    assert ax.get_ylabel().endswith("(kJ/mol per molecule)") and "density (g/cm$^3$)" == ax.get_xlabel()
    title = fig.get_suptitle()  # a figure title: the legend beside the axes narrows them
    assert "carbon dioxide" in title and "W99" in title
    plt.close(fig)


@pytest.mark.parametrize("name, expected", [
    ("reorg_energy_kjmol", "hole reorganisation energy λ+ (kJ/mol)"),
    ("energy_kjmol", "lattice energy (kJ/mol per molecule)"),
    ("some_new_thing_ev", "some new thing (eV)"),
])
def test_axis_labels_name_quantity_and_unit(name, expected):
    from agent.summary import axis_label

    assert axis_label(name) == expected


def test_value_format_carries_unit_and_ev():
    from agent.summary import format_value

    assert format_value("reorg_energy_kjmol", 15.9) == "15.9 kJ/mol (0.165 eV)"
    assert format_value("energy_kjmol", -65.31, 1.24) == "-65.3 ± 1.2 kJ/mol per molecule"


def test_unreliable_value_is_drawn_hollow_and_not_ranked(tmp_path):
    """newuser42 #11: acetylene's xtb-reorg lambda+, which status flags unreliable (a degenerate
    HOMO whose cation was not relaxed), was drawn like any other point."""
    from agent.report import convergence_figure
    from agent.stages.base import Request
    from sim_backends.base import EvalInput, EvalResult

    unresolved = {"jahn_teller": "unresolved: 10 K cation: xTB SCF failed for charge +1; 300 K value"}
    camp = _campaign(tmp_path, n_both=3)
    try:
        task = Request("molecule", "dft-reorg", {}, EvalInput(camp.smiles[3]), molecule_id=int(camp.mol_ids[3]),
                       fidelity=1).to_task()
        camp.tell(task, EvalResult("dft-reorg", "stored", 1, "ok", {"reorg_energy_kjmol": 1.0}, 1.0, "h",
                                   extra=unresolved))
        n = camp.history[-1]["n"]
        fig = convergence_figure(camp, plt)
        ax = fig.axes[0]
        (hollow,) = [c for c in ax.collections if n in [round(x) for x, _ in c.get_offsets()]]
        assert len(hollow.get_facecolors()) == 0 and len(hollow.get_edgecolors()) == 1
        legend = [t.get_text() for t in fig.legends[0].get_texts()]
        assert "value flagged unreliable, hollow (see status; 1)" in legend, legend
        ranked = [t.get_text() for t in ax.get_legend().get_texts()]
        assert not any(camp.names[3] in t for t in ranked), ranked  # 1.0 kJ/mol is never the best
        plt.close(fig)
    finally:
        camp.close()


def test_long_y_label_and_best_legend_stay_clear(tmp_path, monkeypatch):
    """newuser42 #11: a long y label ran off the figure's top edge and the legend of the best
    results sat on the points."""
    from agent import summary
    from agent.report import convergence_figure

    label = "hole reorganisation energy λ+ " + "of a very long level of theory named in full " * 4
    monkeypatch.setitem(summary.QUANTITIES, "reorg_energy_kjmol", (label, "lambda+", "kJ/mol"))
    camp = _campaign(tmp_path, n_both=3)
    try:
        fig = convergence_figure(camp, plt)
        fig.draw_without_rendering()
        ax = fig.axes[0]
        text = ax.yaxis.label.get_window_extent()
        assert 0 <= text.y0 and text.y1 <= fig.bbox.height, (text, fig.bbox)
        assert " ".join(ax.get_ylabel().split()) == " ".join(f"{label} (kJ/mol)".split())
        legend, axes = ax.get_legend().get_window_extent(), ax.get_window_extent()
        assert legend.x0 >= axes.x1 and legend.x1 <= fig.bbox.width  # beside the axes, on the figure
        plt.close(fig)
    finally:
        camp.close()
