"""What the report's plots and tables call things (newuser37 C3, C6): log mobility axes with
readable ticks, levels named by their level of theory rather than config keys, and the ESF
proxy's value shown as the reference crystal's mobility it is (its stored key unchanged).

Data: the ESF data set (data/esf: GFN2-xTB landscapes and mobilities of real molecules),
replayed through a real campaign with the local executor."""

from __future__ import annotations

import csv
import tomllib

import pytest

LADDER = """
name = "lbl"
pool = "pool.smi"
objective = "log10_landscape_mobility_hole"
direction = "maximize"
batch_size = 2
seed = 0
max_evaluations = 10
[surrogate]
n_initial = 4
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
    """A proxy + refined-CSP ladder replayed on eight molecules of data/esf, run to its end;
    the open campaign (read-only)."""
    from agent.campaign import Campaign
    from agent.config import parse_config
    from agent.local_executor import LocalExecutor
    from agent.runner import run_campaign
    from sim_backends.esf import esf_records

    tmp = tmp_path_factory.mktemp("labels")
    refined = list(esf_records("refined").items())[:8]
    (tmp / "pool.smi").write_text("".join(f"{s} {r['name'].replace(' ', '_')}\n" for s, r in refined))
    cfg = parse_config(tomllib.loads(LADDER), base_dir=tmp)
    camp = Campaign.create(cfg, tmp / "runs")
    try:
        run_campaign(camp, tmp / "runs", executor=LocalExecutor(slots=2), progress=False)
    finally:
        camp.close()
    camp = Campaign.open("lbl", tmp / "runs", readonly=True)
    yield camp
    camp.close()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def test_proxy_values_are_shown_as_the_reference_crystal_mobility(ladder, tmp_path):
    """C6: results.csv called the proxy's column esf-proxy_log10_landscape_mobility_hole and
    the convergence plot's y axis a "landscape" mobility, though the proxy is a fixed cubic
    reference crystal (|J| 10 meV, 5 A). The shown names say which is which; the stored key
    (what resumes and older stores read) is unchanged."""
    from agent.report import convergence_figure, results_table
    from sim_backends.esf import OBJECTIVE

    proxy = [ev for ev in ladder.store.evaluations() if ev.backend == "replay-esf-proxy" and ev.ok]
    assert proxy and all(OBJECTIVE in ev.values for ev in proxy)  # stored under the old key
    header = next(csv.reader(results_table(ladder, tmp_path / "results.csv").open()))
    assert "replay-esf-proxy_log10_reference_crystal_mobility_hole" in header, header
    assert "replay-esf-refined_log10_landscape_mobility_hole" in header
    assert not any(h.startswith("replay-esf-proxy_") and "landscape" in h for h in header)
    plt = _plt()
    fig = convergence_figure(ladder, plt)
    ylabel = " ".join(fig.axes[0].get_ylabel().split())
    assert ylabel == ("log10 reference-crystal hole mobility or log10 landscape hole mobility "
                      "(log10 cm2/(V s))"), ylabel
    plt.close(fig)


def test_parity_axes_show_the_proxy_as_the_reference_crystal_mobility(ladder, monkeypatch):
    """fresh39 C1: fidelity_parity.png's x axis called the proxy's value a "log10 landscape
    hole mobility" (the convergence plot already said reference-crystal); each axis now
    carries the name its own level shows the value under. The ladder has 3 molecules at
    both levels, so the parity minimum is lowered to draw it."""
    import agent.report
    from agent.report import fidelity_parity_figure

    monkeypatch.setattr(agent.report, "MIN_PARITY_POINTS", 2)
    plt = _plt()
    fig = fidelity_parity_figure(ladder, plt, [])
    assert fig is not None
    ax = fig.axes[0]
    xlabel, ylabel = (" ".join(t.split()) for t in (ax.get_xlabel(), ax.get_ylabel()))
    plt.close(fig)
    assert xlabel.startswith("log10 reference-crystal hole mobility (log10 cm2/(V s))"), xlabel
    assert ylabel.startswith("log10 landscape hole mobility (log10 cm2/(V s))"), ylabel


def test_convergence_legend_names_the_top_level_by_its_level_of_theory(ladder):
    """C3: the legend of the best results was titled with the config key ("best at
    esf-refined"); it names the level of theory."""
    from agent.report import convergence_figure
    from agent.summary import level_of_theory

    plt = _plt()
    fig = convergence_figure(ladder, plt)
    title = " ".join(fig.axes[0].get_legend().get_title().get_text().split())
    entries = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    plt.close(fig)
    assert title == f"best at {level_of_theory(ladder.cfg.backends[-1])}", title
    assert "replay-esf-refined" not in title
    # newuser41 #13: each ranked value carries its unit ("1: coronene (0.59 log10 cm2/(V s))")
    assert entries and all(t.endswith(" log10 cm2/(V s))") for t in entries), entries


def _records(names):
    """ESF map records of data/esf molecules as :func:`agent.esf_report.esf_results` makes them."""
    from agent.summary import level_of_theory
    from agent.config import BackendConfig
    from sim_backends.esf import esf_records

    by_name = {r["name"]: r for r in esf_records("refined").values()}
    out = []
    for name in names:
        r = by_name[name]
        s = [dict(x) for x in r["structures"] if "mobility_hole_cm2Vs" in x]
        e0 = min(x["energy_kjmol"] for x in s)
        for x in s:
            x["rel_kjmol"] = x["energy_kjmol"] - e0
        lm = r["landscape_mobility_hole_cm2Vs"]
        out.append({"name": name, "source": "molecule stage", "backend": "replay-esf-refined",
                    "level": level_of_theory(BackendConfig(name="replay-esf-refined")), "mean": lm["mean"],
                    "sd": lm["sd"], "n_in_window": len(s), "structures": s, "infeasible": None})
    return out


def test_esf_map_log_axes_have_at_least_two_labelled_ticks():
    """C3: panels whose mobilities span about a decade or less showed one labelled tick
    (10^0), so no value could be read off. Every panel now labels at least two ticks inside
    its limits, for spans of 0.1 (imidazole), 1.2 (furan) and 2.5 decades
    (1,4-dihydropyrrolo[3,2-b]pyrrole); panel titles carry no config key."""
    from agent.esf_report import esf_map_figure

    plt = _plt()
    recs = _records(["imidazole", "furan", "1,4-dihydropyrrolo[3,2-b]pyrrole"])
    fig = esf_map_figure(recs, plt, 7.0)
    fig.canvas.draw()
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 3
    for ax in panels:
        lo, hi = ax.get_xlim()
        labelled = [t for t in ax.xaxis.get_major_ticks()
                    if t.label1.get_visible() and t.label1.get_text() and lo <= t.get_loc() <= hi]
        assert len(labelled) >= 2, (ax.get_title(), [t.label1.get_text() for t in labelled])
        assert "replay-esf-refined" not in ax.get_title()
    plt.close(fig)


def _overlap(a, b):
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_esf_map_titles_of_long_names_do_not_run_into_each_other():
    """newuser38 C2: the titles of the "naphtho[2,3-b]thiophene" and
    "benzo[b]naphtho[2,3-d]thiophene" panels ran together ("...esf-refined)benzo[b]..."):
    each title is wrapped to its panel, so no two titles overlap and none is wider than
    its panel plus the gap to the next."""
    from agent.esf_report import esf_map_figure

    plt = _plt()
    recs = _records(["1,4-dihydropyrrolo[3,2-b]pyrrole", "dithieno[3,2-b:2',3'-d]thiophene",
                     "thiophene-2,5-dicarbonitrile"])
    for r in recs:  # a structure-stage landscape: the longest first line a title has
        r.update(source="structure stage", n_with_mobility=len(r["structures"]), n_in_window=16)
    fig = esf_map_figure(recs, plt, 7.0, title="campaign c: ESF maps")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    panels = [ax for ax in fig.axes if ax.get_title()]
    boxes = [ax.title.get_window_extent(renderer) for ax in panels]
    plt.close(fig)
    assert len(boxes) == 3
    for i in range(3):
        for j in range(i + 1, 3):
            assert not _overlap(boxes[i], boxes[j]), (panels[i].get_title(), panels[j].get_title())


def test_convergence_legend_fits_in_the_figure(ladder, monkeypatch):
    """newuser38 C2: the level names in the legend below the axes made it wider than the
    figure; the saved PNG lost the markers on the left and "(esf-refin" on the right. The
    replayed ladder drawn with the levels of theory of the live ESF backends (the demo's,
    131 characters for esf-refined)."""
    import agent.report
    from agent.config import BackendConfig
    from agent.report import convergence_figure
    from agent.summary import level_of_theory

    live = [level_of_theory(BackendConfig(name=n)) for n in ("esf-proxy", "esf-refined")]
    monkeypatch.setattr(agent.report, "_levels", lambda campaign: live)
    plt = _plt()
    fig = convergence_figure(ladder, plt)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    width = fig.bbox.width
    for leg in fig.legends:
        box = leg.get_window_extent(renderer)
        assert box.x0 >= 0 and box.x1 <= width, ([t.get_text() for t in leg.get_texts()], box, width)
    assert fig.legends
    plt.close(fig)


def test_structure_stage_mobility_level_gives_the_temperature():
    """fresh39 C6: the structure-stage row's level read "Marcus hopping, GFN2-xTB dimer
    projection" where the molecule-stage rows say "Marcus hopping at 300 K, ..."; the ESF
    proxy's level (a plot axis) left it out too."""
    from agent.config import BackendConfig
    from agent.summary import level_of_theory

    tlt = "(TLT where 2|J| > lambda)"
    assert level_of_theory(BackendConfig(name="mobility-xtb")) == f"Marcus hopping at 300 K {tlt}, GFN2-xTB dimer projection"
    assert level_of_theory(BackendConfig(name="mobility-xtb", params={"temperature_K": 250})).startswith(
        f"Marcus hopping at 250 K {tlt}, ")
    assert level_of_theory(BackendConfig(name="mobility-dft")) == (
        f"Marcus hopping at 300 K {tlt}, B3LYP/6-31g dimer projection")
    assert level_of_theory(BackendConfig(name="esf-proxy")).startswith(
        "Marcus hopping at 300 K, GFN2-xTB lambda+ + ")


def test_best_line_names_the_regime_warning_of_its_structures(ladder):
    """newuser42 #2: the best's mobility rests on structures its own WARNING says are outside
    Marcus hopping's regime; the best line says so (from the same warning, not recomputed)."""
    from agent.summary import status_lines, status_record

    rec = status_record(ladder.status(), ladder.store, ladder.cfg)
    best = next(line for line in status_lines(rec) if line.startswith("best "))
    esf = next(r for r in rec["esf"] if r["smiles"] == rec["best_smiles"] and r["source"] == "molecule stage")
    regime = next(w for w in esf["warnings"] if "outside its regime" in w)
    k_of_n = regime.rsplit("; ", 1)[1].removesuffix(")")  # e.g. "4 of 6 structures"
    assert rec["best_warning"] == f"Marcus hopping regime violated (2|J| > lambda) in {k_of_n}"
    assert best.endswith(f" -- {rec['best_warning']}, see its WARNING under ESF"), best
