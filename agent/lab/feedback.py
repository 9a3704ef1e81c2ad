"""Turn a lab result into what the campaign learns: which predicted form was observed.

:func:`identification_record` runs :func:`agent.lab.identify.identify` on a
:class:`~agent.lab.base.LabResult` against the molecule's landscape and returns a
flat, JSON-able :class:`IdentificationRecord` (for the store / MLflow) and a
matplotlib figure of the measured pattern (background removed) against the
best-matching simulated pattern; for a mixture, against the fitted sum of its
components, each drawn too with its weight fraction and lattice factors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from pymatgen.core import Structure

    from agent.lab.base import LabResult


@dataclass(frozen=True)
class IdentificationRecord:
    """Identification of one lab result.

    Attributes:
        request_id: the lab request.
        outcome: the lab's outcome label (crystalline / mixture / amorphous).
        matched_structure_id: best-matching landscape structure, None if no match.
        confidence: softmax confidence of the match (0 if none).
        score: WCC score of the best match.
        score_gap: best minus second-best score.
        is_match: the pattern is explained by the landscape.
        is_mixture: two forms explain it significantly better than one.
        components: [(structure_id, weight fraction)], major first.
        lattice_scales: fitted per-axis factors (a, b, c) of the match.
        zero_shift_deg: fitted 2-theta zero shift of the match.
        closest_structure_id: the landscape structure with the best score, a match or
            not (``score`` is its score when there is no match); None in records written
            before it was kept.
    """

    request_id: str
    outcome: str
    matched_structure_id: str | None
    confidence: float
    score: float
    score_gap: float
    is_match: bool
    is_mixture: bool
    components: list[tuple[str, float]]
    lattice_scales: tuple[float, float, float]
    zero_shift_deg: float
    closest_structure_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def identification_record(
    result: LabResult,
    structure_ids: list[str],
    structures: list[Structure],
    make_figure: bool = True,
    **identify_kwargs: Any,
) -> tuple[IdentificationRecord, Figure | None]:
    """Identify the form(s) in a lab result.

    Args:
        result: the lab's result (its PXRD pattern is used).
        structure_ids: ids of the landscape structures, length n.
        structures: the structures, length n.
        make_figure: also draw the measured-vs-simulated figure.
        **identify_kwargs: passed to :func:`agent.lab.identify.identify`.

    Returns:
        ``(record, figure)``; figure is None if ``make_figure`` is False. Close the
        figure (``matplotlib.pyplot.close(fig)``) after saving it.
    """
    from agent.lab.identify import identify

    ident = identify(result.pattern(), structures, structure_ids, wavelength=result.wavelength, **identify_kwargs)
    top_name, top_score = ident.ranked[0]
    record = IdentificationRecord(
        request_id=result.request_id,
        outcome=result.outcome,
        matched_structure_id=ident.best,
        confidence=ident.confidence,
        score=top_score if ident.best is None else dict(ident.ranked)[ident.best],
        score_gap=ident.score_gap,
        is_match=ident.is_match,
        is_mixture=ident.is_mixture,
        components=list(ident.components),
        lattice_scales=ident.best_scales,
        zero_shift_deg=ident.best_zero_shift_deg,
        closest_structure_id=top_name,
    )
    fig = None
    if make_figure:
        shown = ident.best if ident.best is not None else top_name
        components = None
        if ident.is_mixture:
            components = [(structures[structure_ids.index(n)], n, f, sc, zs) for (n, f), sc, zs
                          in zip(ident.components, ident.component_scales, ident.component_zero_shifts_deg)]
        fig = comparison_figure(result, structures[structure_ids.index(shown)], shown, ident.best_scales,
                                ident.best_zero_shift_deg, record, components=components)
    return record, fig


def comparison_figure(
    result: LabResult,
    structure: Structure,
    name: str,
    scales: tuple[float, float, float],
    zero_shift_deg: float,
    record: IdentificationRecord | None = None,
    components: list[tuple[Structure, str, float, tuple[float, float, float], float]] | None = None,
) -> Figure:
    """Measured (background-subtracted) vs simulated pattern, with the difference curve.

    ``components`` (a mixture: (structure, name, weight fraction, lattice factors, zero
    shift) per phase, major first): the simulated curve is their fitted sum (non-negative
    least squares of the measured pattern on the components' profiles), and each
    component is drawn as fitted, labelled with its fraction and lattice factors.
    """
    import numpy as np
    from matplotlib.figure import Figure
    from scipy.optimize import nnls

    from agent.lab.identify import prepare_measured, simulated_profile

    x, y = result.pattern()
    grid, signal = prepare_measured(x, y)
    measured = signal / max(float(np.max(signal)), 1e-300)
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    ax.plot(grid, measured, color="k", lw=0.8, label="measured (background removed)")
    if components and len(components) > 1:
        profiles = np.stack([simulated_profile(st, grid, sc, zs, wavelength=result.wavelength)
                             for st, _, _, sc, zs in components], axis=1)
        coef, _ = nnls(profiles, measured)
        sim = profiles @ coef
        ax.plot(grid, sim, color="tab:red", lw=0.8, alpha=0.8, label="fitted sum of the components")
        for k, ((_, cname, frac, sc, _), color) in enumerate(zip(components, ("tab:blue", "tab:green", "tab:orange", "tab:purple"))):
            ax.plot(grid, coef[k] * profiles[:, k], color=color, lw=0.7, ls="--", alpha=0.8,
                    label=f"{cname}: {frac:.0%} by weight (a x {sc[0]:.3f}, b x {sc[1]:.3f}, c x {sc[2]:.3f})")
    else:
        sim = simulated_profile(structure, grid, scales, zero_shift_deg, wavelength=result.wavelength)
        ax.plot(grid, sim, color="tab:red", lw=0.8, alpha=0.8,
                label=f"simulated {name} (a x {scales[0]:.3f}, b x {scales[1]:.3f}, c x {scales[2]:.3f})")
    ax.plot(grid, measured - sim - 0.3, color="tab:gray", lw=0.6, label="difference (offset)")
    ax.set_xlabel("2θ (deg, Cu Kα)")
    ax.set_ylabel("normalised intensity")
    title = f"{result.request_id}: {result.outcome}"
    if record is not None:
        if record.matched_structure_id is None:  # the plotted one is the closest, not a match
            title += f"; no match (closest {name}, WCC {record.score:.2f})"
        else:
            title += f"; match {record.matched_structure_id} (confidence {record.confidence:.2f})"
        if record.is_mixture:
            title += " [mixture: " + ", ".join(f"{n} {f:.0%}" for n, f in record.components) + "]"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig
