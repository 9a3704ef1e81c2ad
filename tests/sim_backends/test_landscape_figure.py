"""The CSP landscape plot (``landscape.png`` of ``crystal-agent csp``) as a chemist reads it
(newuser35, cosmetic items): a long level-of-theory line (the flexible search's) stays on the
figure, and a landscape with minima of more than one Z' tells them apart by marker shape."""

from __future__ import annotations

import matplotlib
import pytest

from conftest import ROOT

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

#: the level of a flexible search, as run_csp names it
FLEX = ("W99 exp-6 + Ewald point charges (intermolecular) + GFN2-xTB conformer energy relative to the "
        "gas-phase global minimum (intramolecular)")


def _landscape(z_primes):
    from pymatgen.core import Structure

    from sim_backends.landscape import Landscape, LandscapeEntry

    st = Structure.from_file(ROOT / "data/reference/x23/cif/co2.cif")
    groups = ["P2_1/c", "P-1", "C2/c"]
    minima = [LandscapeEntry(f"m{k:04d}", -30.0 + 0.5 * k, 1.5 + 0.01 * k, groups[k % 3], 14, "P2_1/c", 4, 1, st,
                             z_prime=z_primes[k % len(z_primes)])
              for k in range(12)]
    return Landscape("O=C=O", minima, levels={"ff": FLEX}, meta={"charge_method": "xtb-gfn2-mulliken"})


def test_a_long_level_line_is_wrapped_inside_the_figure():
    fig = _landscape([1.0]).figure("carbon dioxide")
    try:
        fig.canvas.draw()
        box = fig._suptitle.get_window_extent()
        assert box.x0 >= 0 and box.x1 <= fig.bbox.width, (box, fig.bbox)
        title = fig.get_suptitle()
        assert "gas-phase" in title.replace("\n", " ") and "xtb-gfn2-mulliken charges" in title
    finally:
        plt.close(fig)


def test_minima_of_different_z_prime_have_different_markers():
    fig = _landscape([1.0, 2.0, 0.5]).figure("carbon dioxide")
    try:
        ax = fig.axes[0]
        groups = [t.get_text() for t in ax.get_legend().get_texts()]  # one entry per space group
        assert groups == ["C2/c (4)", "P-1 (4)", "P2$_1$/c (4)"]
        (zp_legend,) = [a for a in ax.get_children()
                        if isinstance(a, matplotlib.legend.Legend) and a is not ax.get_legend()]
        assert [t.get_text() for t in zp_legend.get_texts()] == ["Z' = 1/2 (4)", "Z' = 1 (4)", "Z' = 2 (4)"]  # as the tables write Z'
        assert sum(len(c.get_offsets()) for c in ax.collections) == 12  # every point drawn once
        paths = {tuple(map(tuple, c.get_paths()[0].vertices.round(3))) for c in ax.collections}
        assert len(paths) == 3  # circle, triangle, square
    finally:
        plt.close(fig)


@pytest.mark.parametrize("z_primes", [[1.0], [None]])
def test_one_z_prime_gives_circles_and_no_z_prime_legend(z_primes):
    fig = _landscape(z_primes).figure("carbon dioxide")
    try:
        ax = fig.axes[0]
        assert len({tuple(map(tuple, c.get_paths()[0].vertices.round(3))) for c in ax.collections}) == 1
        assert sum(isinstance(a, matplotlib.legend.Legend) for a in ax.get_children()) == 1
    finally:
        plt.close(fig)


@pytest.mark.parametrize("flexible", [False, True])
def test_the_title_names_the_charge_model_once(flexible):
    """newuser41: the title read "..., resp-lpn-pyscf HF/6-31G* (no lone-pair site) charges,
    resp-lpn-pyscf HF/6-31G* (no lone-pair site) charges": run_csp's level names the charges
    already. A level without them (an older run.json) still gets them from the run's meta."""
    from sim_backends.csp.landscape import FF_LEVEL

    charges = "resp-lpn-pyscf HF/6-31G* (no lone-pair site)"
    land = _landscape([1.0])
    land.meta["charge_method"] = charges
    base = FLEX if flexible else FF_LEVEL
    for level in (f"{base}, {charges} charges", base):
        land.levels = {"ff": level}
        fig = land.figure("carbon dioxide")
        try:
            title = fig.get_suptitle().replace("\n", " ")
        finally:
            plt.close(fig)
        assert title.count(charges) == 1, title
        assert title.endswith(f"{base}, {charges} charges")
