"""No legend of the ESF map covers data (newuser49 #7): in the demo's ``report/esf_map.png`` the
coronene panel's legend ("TLT mobility (2|J| > lambda+): 6 of 6") sat in the upper right corner
over two of its six structures (5.7 and 5.8 kJ/mol, mu_h 0.20 and 0.32 cm2/(V s)), so only four
markers could be seen. Each panel's legend now sits below its axes, the figure enlarged to hold
it. The records are the demo campaign's six panels (demo-20261207-140514), drawn through
:func:`agent.esf_report.esf_map_figure` as ``crystal-agent report`` draws them."""

from __future__ import annotations

import numpy as np
import pytest

from sim_backends.tlt import TLT_NAME

LEVEL = ("Marcus hopping at 300 K (TLT where 2|J| > lambda), GFN2-xTB transfer integrals, 300-trial W99 CSP "
         "with GFN2-xTB Mulliken charges, Boltzmann mean over the 6 lowest of {n} structures within 7 kJ/mol")
CSP = "W99 exp-6 + Ewald point charges (GFN2-xTB Mulliken), rigid molecule (force field)"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _molecule_stage(mid, name, n_in_window, points, sd=0.05, uncomputed_weight=0.2):
    """A molecule-stage record: ``points`` are (mu_h, rel. energy, TLT?) of its computed structures."""
    structures = [{"id": f"m{k + 1:04d}", "energy_kjmol": -140.0 + e, "rel_kjmol": e, "mobility_hole_cm2Vs": mu,
                   "density_gcm3": 1.30 + 0.03 * k, "space_group": "P2_1/c", "z": 4, "cif": None,
                   **({"transport_model": TLT_NAME, "mobility_hole_marcus_cm2Vs": 2 * mu} if tlt else {})}
                  for k, (mu, e, tlt) in enumerate(points)]
    mean = sum(mu for mu, _, _ in points) / len(points)
    return {"molecule_id": mid, "name": name, "smiles": "C", "source": "molecule stage", "backend": "esf-refined",
            "level": LEVEL.format(n=n_in_window), "csp_level": CSP, "mean": mean, "sd": sd,
            "n_computed": len(points), "n_with_mobility": len(points), "n_in_window": n_in_window,
            "n_minima_in_window": n_in_window, "uncomputed_weight": uncomputed_weight, "structures": structures,
            "global_minimum": structures[0], "warnings": [], "notes": [], "infeasible": None}


def _structure_stage():
    """The demo's structure-stage BNT panel: 7 structures with a mobility (2 at predicted
    energies), 53 of 60 window structures without one (ticks on the left edge)."""
    points = [(0.52, 0.0, True), (0.17, 1.7, False), (0.5, 1.72, True), (0.58, 1.9, False), (0.66, 1.92, True),
              (0.61, 2.65, False), (0.17, 2.6, True)]
    structures = [{"id": f"m103-m{k + 1:04d}", "energy_kjmol": -150.0 + e, "rel_kjmol": e, "mobility_hole_cm2Vs": mu,
                   "density_gcm3": 1.38, "space_group": "P-1", "z": 2, "cif": None,
                   "energy_predicted": k in (3, 4),
                   **({"transport_model": TLT_NAME, "mobility_hole_marcus_cm2Vs": 2 * mu} if tlt else {})}
                  for k, (mu, e, tlt) in enumerate(points)]
    window = [{"id": s["id"], "energy_kjmol": s["energy_kjmol"], "rel_kjmol": s["rel_kjmol"], "mobility": True,
               "energy": "predicted" if s["energy_predicted"] else "computed"} for s in structures]
    kinds = ["computed"] * 2 + ["predicted"] * 11 + ["estimated"] * 40
    window += [{"id": f"m103-m{k + 100:04d}", "energy_kjmol": -150.0 + e, "rel_kjmol": e, "mobility": False,
                "energy": kind} for k, (kind, e) in enumerate(zip(kinds, np.linspace(0.9, 6.9, 53)))]
    return {"molecule_id": 103, "name": "benzo[b]naphtho[2,3-d]thiophene", "smiles": "C",
            "source": "structure stage", "backend": "mobility-xtb",
            "level": "Marcus hopping at 300 K (TLT where 2|J| > lambda), GFN2-xTB dimer projection; energies "
                     "GFN2-xTB periodic (tblite)", "energy_level": "GFN2-xTB periodic (tblite)",
            "mean": 0.48, "sd": 0.18, "n_in_window": 60, "n_with_mobility": 7, "uncomputed_weight": 0.73,
            "n_predicted": 2, "structures": structures, "global_minimum": structures[0], "warnings": [],
            "notes": [], "infeasible": None, "window_structures": window,
            "window_energies": {"computed": 8, "predicted": 12, "estimated": 40}, "ranking_model": "Delta-GP",
            "window_kjmol": 7.0}


def _demo_records():
    coronene = [(0.3102, 0.0, True), (0.3124, 0.276, True), (0.3911, 2.702, True), (0.2941, 2.962, True),
                (0.1963, 5.692, True), (0.3199, 5.819, True)]
    return [_molecule_stage(103, "benzo[b]naphtho[2,3-d]thiophene", 78,
                            [(0.17, 0.55, False), (0.5, 0.75, True), (0.52, 0.6, True), (0.57, 0.95, False),
                             (0.62, 0.0, False), (0.66, 0.95, True)], sd=0.18),
            _structure_stage(),
            _molecule_stage(7, "pentacene", 22, [(0.24, 3.55, True), (0.27, 3.3, True), (0.32, 0.0, True),
                                                 (0.47, 3.55, True), (0.47, 3.4, True), (0.66, 2.8, False)]),
            _molecule_stage(12, "N-phenylcarbazole", 19, [(0.068, 3.55, False), (0.17, 2.65, False),
                                                          (0.26, 3.6, False), (0.35, 2.95, False),
                                                          (0.33, 0.0, False), (0.42, 0.2, False)]),
            _molecule_stage(36, "coronene", 11, coronene, sd=0.026, uncomputed_weight=0.128),
            _molecule_stage(40, "naphtho[2,3-b]thiophene", 93, [(0.085, 0.35, False), (0.11, 0.38, False),
                                                                (0.24, 0.12, True), (0.245, 0.75, True),
                                                                (0.28, 0.0, True), (0.4, 0.5, True)])]


def _data_points(ax):
    """Display coordinates of every plotted marker of ``ax``: the scatters' points and the
    markers of lines (the structure stage's ticks); axvline/axhspan draw no marker."""
    out = []
    for coll in ax.collections:
        offsets = np.asarray(coll.get_offsets(), dtype=float)
        if len(offsets):
            out.append(coll.get_offset_transform().transform(offsets))
    for line in ax.lines:
        if line.get_marker() not in (None, "None", "", " "):
            xy = np.column_stack([np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)])
            out.append(line.get_transform().transform(xy))
    return np.vstack(out) if out else np.empty((0, 2))


def legend_problems(fig):
    """Which data points lie under a legend (padded by a marker's radius) and which legends
    run off the figure, for a drawn figure; empty when none."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + list(fig.legends)
    assert legends
    pad = 5 * fig.dpi / 72  # the largest marker's radius (s=90 pt^2 ring)
    problems = []
    for leg in legends:
        box = leg.get_window_extent(renderer)
        if box.x0 < 0 or box.y0 < 0 or box.x1 > fig.bbox.width or box.y1 > fig.bbox.height:
            problems.append(("legend off the figure", box.bounds, fig.bbox.bounds))
        for ax in fig.axes:
            for x, y in _data_points(ax):
                if box.x0 - pad < x < box.x1 + pad and box.y0 - pad < y < box.y1 + pad:
                    problems.append(("point under a legend", ax.get_title().split("\n")[0],
                                     ax.transData.inverted().transform((x, y)).round(3).tolist()))
    return problems


def _draw(records):
    from agent.esf_report import esf_map_figure

    return esf_map_figure(records, _plt(), 7.0, title="campaign demo-20261207-140514: ESF maps")


def test_no_legend_of_the_demo_esf_map_covers_a_point_or_leaves_the_figure():
    fig = _draw(_demo_records())
    try:
        panels = [ax for ax in fig.axes if ax.get_title()]
        assert len(panels) == 6
        # every panel keeps its legend and its entries (counts and notes) after the move
        coronene = next(ax for ax in panels if ax.get_title().startswith("coronene"))
        labels = [t.get_text() for t in coronene.get_legend().get_texts()]
        assert labels == ["TLT mobility (2|J| > lambda+): 6 of 6", "computed: the lowest 6",
                          "rest of the 7 kJ/mol window: 5 structures not computed", "mean of the computed ± 1 sd"]
        stage = next(ax for ax in panels if "structure stage" in ax.get_title())
        labels = [t.get_text() for t in stage.get_legend().get_texts()]
        assert "window 7 kJ/mol: 53 of 60 without a mobility (ticks)" in labels
        assert {"no mobility, energy computed: 2", "no mobility, energy predicted: 11",
                "no mobility, energy estimated: 40", "energy predicted, not computed"} <= set(labels)
        assert all(ax.get_legend() is not None for ax in panels)
        problems = legend_problems(fig)
        assert not problems, problems
    finally:
        _plt().close(fig)


@pytest.mark.parametrize("panels", [[4], [1, 4]], ids=["coronene", "structure-stage-and-coronene"])
def test_no_legend_covers_a_point_with_fewer_panels(panels):
    """One or two panels (one row, other widths): the coronene panel alone and beside the
    structure stage, whose ticks run up the left edge through the whole window."""
    records = _demo_records()
    fig = _draw([records[k] for k in panels])
    try:
        problems = legend_problems(fig)
        assert not problems, problems
    finally:
        _plt().close(fig)
