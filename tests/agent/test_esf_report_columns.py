"""newuser43 F5, F6: results.csv of an ESF campaign has lambda+ (kJ/mol and eV) for every
molecule; the convergence plot's y label keeps its unit whole and its legend describes each
level once. Data: the ESF data set (data/esf) replayed through a real campaign with the local
executor, the proxy's IP bounded (examples/esf.toml's constraint) so that one molecule is
excluded."""

from __future__ import annotations

import csv
import tomllib

import pytest

LADDER = """
name = "cols"
pool = "pool.smi"
objective = "log10_landscape_mobility_hole"
direction = "maximize"
batch_size = 2
seed = 0
max_evaluations = 9
[surrogate]
n_initial = 6
[tracking]
enabled = false
[[backends]]
name = "replay-esf-proxy"
[[backends]]
name = "replay-esf-refined"
budget_evaluations = 3
"""


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    from agent.campaign import Campaign
    from agent.config import parse_config
    from agent.local_executor import LocalExecutor
    from agent.runner import run_campaign
    from sim_backends.esf import esf_records

    tmp = tmp_path_factory.mktemp("cols")
    refined = list(esf_records("refined").items())[:6]
    (tmp / "pool.smi").write_text("".join(f"{s} {r['name'].replace(' ', '_')}\n" for s, r in refined))
    camp = Campaign.create(parse_config(tomllib.loads(LADDER), base_dir=tmp), tmp / "runs")
    try:
        run_campaign(camp, tmp / "runs", executor=LocalExecutor(slots=2), progress=False)
    finally:
        camp.close()
    camp = Campaign.open("cols", tmp / "runs", readonly=True)
    yield camp
    camp.close()


def test_results_csv_has_lambda_in_kjmol_and_ev_for_every_molecule(ladder, tmp_path):
    """F5: every esf-proxy evaluation computed reorg_energy_kjmol, results.csv had no column."""
    from agent.report import results_table
    from agent.summary import KJMOL_PER_EV

    rows = list(csv.DictReader(results_table(ladder, tmp_path / "results.csv").open()))
    proxy = {ev.molecule_id: ev.values["reorg_energy_kjmol"] for ev in ladder.store.evaluations()
             if ev.backend == "replay-esf-proxy" and ev.ok}
    smiles_id = {m["smiles"]: m["id"] for m in ladder.store.molecules()}
    assert len(rows) == len(proxy) >= 6
    for r in rows:
        lam = proxy[smiles_id[r["smiles"]]]  # one GFN2-xTB lambda+ at every ESF level
        assert float(r["reorg_energy_kjmol"]) == pytest.approx(lam, abs=0.005)  # rounded to 0.01 kJ/mol
        assert float(r["reorg_energy_ev"]) == pytest.approx(lam / KJMOL_PER_EV, abs=5e-4)  # 1 meV rounding
    header = list(rows[0])
    assert header.index("reorg_energy_kjmol") == header.index("replay-esf-refined_log10_landscape_mobility_hole") + 1
    assert header[-1] == "notes" and "excluded_by" not in header  # no constraint


def test_wrap_label_breaks_outside_parentheses_only():
    from agent.report import wrap_label

    text = "log10 reference-crystal hole mobility or log10 landscape hole mobility (log10 cm2/(V s))"
    for width in (60, 45, 36, 30, 20):
        lines = wrap_label(text, width)
        assert " ".join(lines) == text
        assert any("(log10 cm2/(V s))" in ln for ln in lines), (width, lines)
        assert all(len(ln) <= width for ln in lines), lines
    # a parenthesised part longer than a line is broken (at its spaces) rather than overflow
    long = "excluded by a constraint (3; at " + "word " * 30 + "end)"
    assert all(len(ln) <= 40 for ln in wrap_label(long, 40))


def test_convergence_ylabel_keeps_the_unit_whole_and_the_legend_describes_each_level_once(ladder):
    """F6: the y label broke as "(log10 cm2/(V" / "s))"; the legend repeated the top level's
    description in the level's entry and the best-so-far entry (and the exclusion entry)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from agent.report import _levels, convergence_figure

    fig = convergence_figure(ladder, plt)
    ax = fig.axes[0]
    lines = ax.get_ylabel().split("\n")
    assert any(ln.endswith("(log10 cm2/(V s))") for ln in lines), lines
    assert all(ln.count("(") == ln.count(")") for ln in lines), lines
    labels = [" ".join(t.get_text().split()) for t in fig.legends[0].get_texts()]
    # the leaders' list beside the axes gets its own width (in 7.5 in it left the axes a third)
    assert ax.get_legend() is not None and fig.get_size_inches()[0] >= 10.5
    plt.close(fig)
    for level in _levels(ladder):
        assert sum(level in t for t in labels) == 1, (level, labels)
    assert "best so far at replay-esf-refined" in labels, labels


def test_rank_labels_of_nearby_points_are_stacked_not_overlaid():
    """newuser45c #9: ranks 1 and 3 of two points close together were written on each other."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from agent.report import _label_offsets

    fig, ax = plt.subplots()
    pts = [{"n": 90, "value": 0.50}, {"n": 20, "value": 0.49}, {"n": 91, "value": 0.489}, {"n": 92, "value": 0.495}]
    ax.scatter([p["n"] for p in pts] + [0, 100], [p["value"] for p in pts] + [-1.0, 1.0])
    offsets = _label_offsets(ax, pts)
    plt.close(fig)
    assert offsets[0] == 0.0 and offsets[1] == 0.0  # far apart: both at the default place
    assert len({offsets[0], offsets[2], offsets[3]}) == 3  # three near one another: three heights


def test_csp_levels_in_figures_name_charges_as_the_other_figures_do():
    """newuser45c #9: the structure panel's legend said "xtb-gfn2-mulliken charges" where every
    other figure says "GFN2-xTB Mulliken"; the recorded level (landscape.csv, CIFs) keeps its form."""
    from agent.report import readable_level
    from sim_backends.csp.landscape import CHARGE_METHODS, ff_level

    assert readable_level(ff_level("xtb")).endswith(", GFN2-xTB Mulliken charges")
    assert readable_level(ff_level("resp-lpn")).endswith(", RESP HF/6-31G* charges + N lone-pair sites")
    assert readable_level(ff_level("resp")).endswith(", RESP HF/6-31G* charges")
    for method in CHARGE_METHODS:
        assert "pyscf" not in readable_level(ff_level(method)) and "gfn2-" not in readable_level(ff_level(method))
    assert readable_level("GFN2-xTB periodic (tblite)") == "GFN2-xTB periodic (tblite)"
