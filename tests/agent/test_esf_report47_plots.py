"""Plots for a talk (newuser46b #9): the ESF map's panels share one mobility axis and each
names the level of its energies; fidelity_parity.png's labels do not overprint each other
("pentacene" over "naphtho[2,3-b]thiophene" read "naphtho[2[3-b]...")."""

from __future__ import annotations

from types import SimpleNamespace

import pytest


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _rec(name, source, mobilities, **more):
    structures = [{"id": f"m0{k}", "energy_kjmol": -100.0 + k, "rel_kjmol": float(k), "mobility_hole_cm2Vs": mu,
                   "density_gcm3": 1.3, "space_group": "P-1", "z": 2, "cif": None}
                  for k, mu in enumerate(mobilities)]
    return {"molecule_id": len(name), "name": name, "smiles": "C", "source": source, "backend": "b", "level": "L",
            "mean": sum(mobilities) / len(mobilities), "sd": 0.0, "n_in_window": len(mobilities),
            "n_with_mobility": len(mobilities), "uncomputed_weight": 0.0, "structures": structures,
            "global_minimum": structures[0], "warnings": [], "notes": [], **more}


def test_esf_map_panels_share_the_mobility_range_and_name_their_energy_level():
    from agent.esf_report import esf_map_figure

    recs = [_rec("pentacene", "molecule stage", [0.8, 12.0],
                 csp_level="W99 exp-6 + Ewald point charges (GFN2-xTB Mulliken), rigid molecule (force field)"),
            _rec("coronene", "structure stage", [2.0, 5.0], energy_level="GFN2-xTB periodic (tblite)"),
            _rec("benzo[b]carbazole", "molecule stage", [0.02, 2.5], csp_level=None)]
    plt = _plt()
    fig = esf_map_figure(recs, plt, 7.0)
    try:
        axes = [ax for ax in fig.axes if ax.get_xscale() == "log"]
        assert len(axes) == 3
        lims = {tuple(round(v, 12) for v in ax.get_xlim()) for ax in axes}
        assert len(lims) == 1, lims
        lo, hi = next(iter(lims))
        assert lo < 0.02 and hi > 12.0
        labels = [" ".join(ax.get_ylabel().split()) for ax in axes]
        assert labels == [
            "lattice energy, W99 exp-6 + Ewald point charges force field, rel. to lowest (kJ/mol per molecule)",
            "lattice energy, GFN2-xTB periodic (tblite), rel. to lowest (kJ/mol per molecule)",
            "lattice energy, CSP force field, rel. to lowest (kJ/mol per molecule)"]
    finally:
        plt.close(fig)


def test_parity_labels_of_nearby_points_do_not_overlap_and_keep_their_commas(monkeypatch):
    import agent.report
    from agent.report import fidelity_parity_figure

    monkeypatch.setattr(agent.report, "MIN_PARITY_POINTS", 2)
    names = ["naphtho[2,3-b]thiophene", "pentacene", "tetracene", "anthracene"]
    cfg = SimpleNamespace(objective="log10_landscape_mobility_hole",
                          backends=[SimpleNamespace(name="esf-proxy", params={}),
                                    SimpleNamespace(name="esf-refined", params={})])
    names.append("benzo[b]naphtho[2,3-d]thiophene")  # the rightmost point: its label ran off the axes
    points = [(0, 0.50, 0.49), (1, 0.51, 0.50), (2, 0.52, 0.505), (3, -1.0, -0.8), (4, 0.6, 0.58)]
    camp = SimpleNamespace(cfg=cfg, names=names,
                           observations=[(i, f, v) for i, a, b in points for f, v in ((0, a), (1, b))])
    plt = _plt()
    fig = fidelity_parity_figure(camp, plt, [])
    try:
        renderer = fig.canvas.get_renderer()
        texts = [t for t in fig.axes[0].texts]
        assert sorted(t.get_text() for t in texts) == sorted(names)
        boxes = [t.get_window_extent(renderer) for t in texts]
        overlaps = [(texts[i].get_text(), texts[j].get_text()) for i in range(len(boxes))
                    for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])]
        assert not overlaps
        inside = fig.axes[0].get_window_extent(renderer)
        assert all(inside.x0 <= b.x0 and b.x1 <= inside.x1 for b in boxes)  # none runs off the axes
    finally:
        plt.close(fig)


@pytest.mark.parametrize("n", [2, 5])
def test_separate_labels_stacks_labels_of_one_point(n):
    from agent.report import separate_labels

    plt = _plt()
    fig, ax = plt.subplots()
    try:
        ax.plot([0, 1], [0, 1])
        labels = [ax.annotate(f"label {k}, with a comma", (0.5, 0.5), xytext=(3, 3), textcoords="offset points")
                  for k in range(n)]
        separate_labels(fig, labels)
        renderer = fig.canvas.get_renderer()
        boxes = [t.get_window_extent(renderer) for t in labels]
        assert not any(boxes[i].overlaps(boxes[j]) for i in range(n) for j in range(i + 1, n))
    finally:
        plt.close(fig)
