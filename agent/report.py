"""Plots and tables of a campaign, written under ``runs/<name>/report/``.

Every axis names its quantity, unit and level of theory (:mod:`agent.summary`).

* ``convergence.png``: every successful evaluation's objective value against evaluation
  number (integer ticks), coloured by level, the best top-level value found so far, the
  top-level molecules named; failed evaluations are marked apart (ticks on the top edge,
  counted in the legend), never drawn as values; with a structure stage, a panel below on
  the same evaluation numbers with each lattice energy computed at its ranking level and
  the lowest so far (from :data:`MIN_PARITY_POINTS` of them; fewer are reported in words);
* ``fidelity_parity.png``: cheap vs expensive values of the molecules computed at both,
  only with at least :data:`MIN_PARITY_POINTS` of them (``summary.txt`` says why not);
* ``results.csv``: one row per molecule with its values at each level (and lambda+ in kJ/mol
  and eV where a level computes it beside another objective, e.g. every ESF level), rounded by
  unit, and with a fitted molecule surrogate every other pool molecule too, with the
  surrogate's mean and 1-sigma at each level it has no value at (:func:`results_table`);
  ``results_columns.csv`` names each column's quantity, unit and level of theory, with the
  table it belongs to (``file``: ``results.csv``, ``landscape_model_m<id>.csv`` and
  ``structures/landscape_m<id>.csv`` with a structure stage, ``esf_results.csv`` when there
  is one);
* ``landscape_m<id>.png`` and ``landscape_model_m<id>.csv`` per refined CSP landscape
  (:func:`landscape_plot`, :func:`landscape_table`: the landscape as the structure
  surrogate sees it, every structure's energy computed or predicted, each level relative to
  its own lowest structure, space group and Z as in the CIFs), and the landscapes as CIFs
  and tables of the computed energies in ``runs/<name>/structures/`` (its
  ``landscape_m<id>.csv``, :func:`agent.landscape_io.write_campaign_structures`);
* ``esf_map.png`` / ``esf_results.csv`` for a campaign with ESF levels: lattice energy
  against hole mobility per predicted structure, per molecule, and the landscape
  mobilities (:mod:`agent.esf_report`); the predicted global minima as CIFs in
  ``runs/<name>/structures/esf_m<id>_<structure>.cif``;
* ``decisions.csv``: one row per task submitted, in submission order, with why it was
  chosen (the stage's rule and, for an acquisition's pick, its acquisition value, rate and
  the cost it divided by, as the ``submitted`` event recorded them; "not recorded" for tasks
  of campaigns made before they were recorded, and of stages that do not say) and, from the
  stored evaluation, the CPU seconds it used and whether it succeeded
  (:func:`decisions_table`; its columns in ``results_columns.csv`` too);
* ``summary.txt``: the status text (:func:`agent.summary.status_lines`) and notes on plots
  not drawn.
"""

from __future__ import annotations

import csv
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from agent.campaign import Campaign

#: a parity plot needs at least this many points; fewer are reported in words
MIN_PARITY_POINTS = 5
#: space groups shown individually in a landscape legend; the rest are grouped as "other"
MAX_LEGEND_GROUPS = 9


def write_plots(campaign: Campaign, progress: Callable[[str], None] | None = None) -> list[Path]:
    """Write the report files (and ``runs/<name>/structures/``) for ``campaign``; returns
    their paths. When the campaign holds its store's lock (a run, not a read-only
    ``report``), the structure results are saved for ``status`` and the corrected
    landscapes for a later ``report`` as well (:mod:`agent.stages.corrected_cache`), so
    that one re-fits nothing. ``progress(text)`` hears of the slow steps (fragment terms,
    surrogate fits) when they have to be done."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from agent.landscape_io import write_campaign_structures
    from agent.summary import save_structure_results, status_lines, status_record, structure_results

    out = campaign.directory / "report"
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    paths = [convergence_plot(campaign, out / "convergence.png", plt, notes)]
    p = fidelity_parity_plot(campaign, out / "fidelity_parity.png", plt, notes)
    if p is not None:
        paths.append(p)
    live = None
    if campaign.stage is not None:
        campaign.stage.progress = progress
        paths += write_campaign_structures(campaign)  # first: the report's tables give the CIFs' Z
        paths += _landscape_plots(campaign, out, plt, notes)
        if getattr(campaign.store, "_lock_fd", None) is not None:  # the writer of this store
            live = save_structure_results(campaign)
            campaign.stage.save_corrected()
        else:
            live = structure_results(campaign)
    paths.append(results_table(campaign, out / "results.csv", notes))
    paths.append(out / RESULTS_COLUMNS_FILE)
    if campaign.stage is not None and campaign.stage.landscapes:  # the landscape tables' columns after them
        from agent.landscape_io import STRUCTURES_TABLE, structures_table_columns

        if any(p.name.startswith("landscape_model_m") for p in paths):
            write_columns(out / RESULTS_COLUMNS_FILE, landscape_model_columns(campaign), LANDSCAPE_MODEL_TABLE,
                          append=True)
        write_columns(out / RESULTS_COLUMNS_FILE, structures_table_columns(campaign), STRUCTURES_TABLE, append=True)
    from agent.esf_report import write_esf_report

    esf_paths, esf = write_esf_report(campaign.store, campaign.cfg, campaign.directory, out, plt, notes)
    paths += esf_paths
    if esf:  # its columns described beside those of results.csv
        from agent.esf_report import ESF_COLUMNS

        write_columns(out / RESULTS_COLUMNS_FILE, ESF_COLUMNS, "esf_results.csv", append=True)
    paths.append(decisions_table(campaign, out / "decisions.csv"))
    paths += sorted((out / "lab").glob("*_pxrd.png"))  # the lab stage's PXRD plots (report/lab/)
    rec = status_record(campaign.status(), campaign.store, campaign.cfg, structures=live)
    rec["esf"] = esf  # with the CIF paths just written
    summary = out / "summary.txt"
    summary.write_text("\n".join(status_lines(rec) + [""] + [f"note: {n}" for n in notes]) + "\n")
    paths.append(summary)
    return paths


#: more files of one kind than this in a directory are counted, not named, in :func:`report_summary`
MAX_NAMED_FILES = 6


def report_summary(paths: list[Path]) -> list[str]:
    """A few lines on the files :func:`write_plots` wrote (what ``crystal-agent report``
    prints; ``--verbose`` prints every path): per directory, its files by name, or counted
    by kind where there are more than :data:`MAX_NAMED_FILES` of one kind (the CIFs, one per
    structure), and the file to start from."""
    by_dir: dict[Path, list[Path]] = {}
    for p in paths:
        by_dir.setdefault(Path(p).parent, []).append(Path(p))
    lines = [f"wrote {len(paths)} file{'s' if len(paths) != 1 else ''}:"]
    for d, files in by_dir.items():
        kinds: dict[str, list[str]] = {}
        for f in files:
            kinds.setdefault(f.suffix.lower(), []).append(f.name)
        parts: list[str] = []
        for suffix, names in kinds.items():
            if len(names) > MAX_NAMED_FILES:
                kind = suffix.lstrip(".").upper() or "file"
                parts.append(f"{len(names)} {kind} files" + (" (one per structure)" if suffix == ".cif" else ""))
            else:
                parts += names
        lines.append(f"  {d}/: " + ", ".join(parts))
    summary = next((p for p in paths if Path(p).name == "summary.txt"), None)
    if summary is not None:
        lines.append(f"start with {summary} (status, best results, notes on plots not drawn)")
    return lines


def _levels(campaign: Campaign) -> list[str]:
    """The level of theory of each level's objective value (its declared one where the
    backend declares one for the objective, :func:`agent.summary.level_of_theory`)."""
    from agent.summary import level_of_theory

    return [level_of_theory(b, campaign.cfg.objective) for b in campaign.cfg.backends]


def wrap_label(text: str, width: int) -> list[str]:
    """``text`` (whitespace collapsed) in lines of at most ``width`` characters, broken only
    at spaces outside parentheses, so a unit such as "(log10 cm2/(V s))" stays whole
    (newuser43 F6); a parenthesised part longer than a line is broken at its own spaces."""
    chunks, cur, depth = [], "", 0
    for ch in " ".join(text.split()):
        if ch == " " and depth == 0:
            chunks.append(cur)
            cur = ""
            continue
        depth = max(0, depth + (ch == "(") - (ch == ")"))
        cur += ch
    chunks.append(cur)
    lines: list[str] = []
    line = ""
    for c in (c for c in chunks if c):
        joined = f"{line} {c}" if line else c
        if len(joined) <= width:
            line = joined
        elif len(c) <= width:
            lines.append(line)
            line = c
        else:  # too long for any line: broken at its spaces, after what the line holds
            *full, line = textwrap.wrap(joined, width, break_long_words=False, break_on_hyphens=False)
            lines += full
    return [*lines, line] if line else lines


def fill_label(text: str, width: int) -> str:
    """:func:`wrap_label` joined by newlines."""
    return "\n".join(wrap_label(text, width))


def convergence_plot(campaign: Campaign, path: Path, plt: Any, notes: list[str] | None = None) -> Path:
    """:func:`convergence_figure` saved to ``path``."""
    fig = convergence_figure(campaign, plt, notes)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


#: top-level results named in the convergence plot (the best ones)
N_NAMED_TOP = 5


def structure_trace(campaign: Campaign) -> list[dict[str, Any]]:
    """The evaluations at the structure stage's ranking level (``structures.refine``: the
    lattice energy the stage exists for), in store order: ``n`` (the evaluation number, the
    numbering of the molecule-stage points), ``molecule_id``, ``structure_id``, ``value``
    (kJ/mol per molecule; None for a failed one). Empty without a structure stage."""
    import math

    stage = campaign.stage
    if stage is None:
        return []
    name, key = stage.refine.name, stage.value_keys[0]
    out = []
    for ev in campaign.store.evaluations():
        if ev.backend != name or ev.structure_id is None:
            continue
        v = ev.values.get(key)
        good = ev.ok and v is not None and math.isfinite(v)
        out.append({"n": ev.id, "molecule_id": int(ev.molecule_id), "structure_id": ev.structure_id,
                    "value": float(v) if good else None})
    return out


def convergence_figure(campaign: Campaign, plt: Any, notes: list[str] | None = None) -> Any:
    """Objective value per evaluation, coloured by level; failures marked on the top edge.

    With a structure stage and at least :data:`MIN_PARITY_POINTS` lattice energies at its
    ranking level, a second panel below on the same evaluation numbers: each computed
    lattice energy (kJ/mol per molecule, the level of theory named) and the lowest so far,
    per landscape molecule, the CSP evaluations marked; with fewer, the figure and
    ``notes`` say how many there are and that the landscape plots show them."""
    from agent.summary import level_caveat, level_of_theory
    from sim_backends.landscape import _mathtext_group

    trace = structure_trace(campaign)
    n_ok = sum(t["value"] is not None for t in trace)
    if campaign.stage is None or n_ok < MIN_PARITY_POINTS:
        fig = plt.figure(figsize=(7.5, 5.6), layout="constrained")
        ax = fig.subplots()
        _molecule_panel(campaign, fig, ax)
        _widen_for_leaders(fig, ax)
        if campaign.stage is None:
            ax.set_xlabel("evaluation number (all levels)")
            _fit_ylabel(fig, ax)
            return fig
        level = level_of_theory(campaign.stage.refine)
        ax.set_xlabel("evaluation number (all levels and stages; molecule stage shown)")
        why = (f"structure stage: {n_ok} lattice energ{'y' if n_ok == 1 else 'ies'} at {level}, fewer than "
               f"{MIN_PARITY_POINTS}: no structure-stage panel (the landscape plots show them)")
        ax.set_title(ax.get_title() + "\n" + textwrap.fill(why, 100), fontsize=8)
        if notes is not None:
            notes.append(f"no structure-stage convergence panel: {n_ok} lattice energies at {level} "
                         f"(fewer than {MIN_PARITY_POINTS})")
        _fit_ylabel(fig, ax)
        return fig
    fig = plt.figure(figsize=(7.5, 9.6), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[0.8, 1.0])
    ax = top.subplots()
    _molecule_panel(campaign, top, ax)
    _widen_for_leaders(fig, ax)
    ax.set_xlabel("evaluation number (all levels and stages)")
    sax = bottom.subplots()  # its own x range: the structure stage's evaluations (its axes are
    # narrower or wider than the top panel's, so a shared range lined nothing up and left it empty)
    stage = campaign.stage
    level = level_of_theory(stage.refine)
    mol_ids = sorted({t["molecule_id"] for t in trace})
    names: list[str] = []
    colours = ["tab:red", "tab:purple", "tab:brown", "tab:olive"]
    for k, mid in enumerate(mol_ids):
        name = campaign.names[campaign._index_of[mid]] if mid in campaign._index_of else f"m{mid}"
        pts = [t for t in trace if t["molecule_id"] == mid and t["value"] is not None]
        if not pts:
            continue
        c = colours[k % len(colours)]
        sax.scatter([t["n"] for t in pts], [t["value"] for t in pts], s=30, color=c, alpha=0.85, zorder=3,
                    label=f"{name}: computed lattice energy ({len(pts)})")
        best, xs, ys = float("inf"), [], []
        for t in pts:
            best = min(best, t["value"])
            xs.append(t["n"])
            ys.append(best)
        sax.step(xs, ys, where="post", color=c, lw=1.5, label=f"{name}: lowest so far")
        low = min(pts, key=lambda t: t["value"])  # named beside its point
        sg = {r["id"]: r["space_group"] for r in campaign.store.structures(mid)}.get(low["structure_id"])
        sax.annotate(f"{low['structure_id']}" + (f", {_mathtext_group(sg)}" if sg else "")
                     + f": {low['value']:.1f}", (low["n"], low["value"]), fontsize=7,
                     xytext=(5, 4), textcoords="offset points", va="bottom")
        names.append(name)
    csp = [ev for ev in campaign.store.evaluations(stage.cfg.csp.name)
           if ev.structure_id is None] if stage.cfg.csp is not None else []
    for j, ev in enumerate(csp):
        csp_level = readable_level((ev.extra.get("level") if ev.ok else None) or level_of_theory(stage.cfg.csp))
        sax.axvline(ev.id, color="0.5", ls=":", lw=1.0,
                    label=f"CSP search ({csp_level})" if j == 0 else None)
    fails = [t["n"] for t in trace if t["value"] is None]
    if fails:
        sax.plot(fails, [0.985] * len(fails), ls="none", marker="|", ms=10, color="crimson",
                 transform=sax.get_xaxis_transform(), label=f"failed at this level ({len(fails)})")
    span = [t["n"] for t in trace] + [ev.id for ev in csp]
    from matplotlib.ticker import MaxNLocator

    sax.set_xlim(min(span) - 1.0, max(span) + 1.0)
    sax.xaxis.set_major_locator(MaxNLocator(integer=True))
    sax.set_xlabel("evaluation number (all levels and stages; the structure stage's span)")
    sax.set_ylabel("lattice energy (kJ/mol per molecule)")
    sax.margins(y=0.08)
    sax.set_title(f"structure stage: {n_ok} lattice energies of {', '.join(names)}\n"
                  + textwrap.fill(level, 90), fontsize=9)
    caveat = level_caveat(stage.refine)
    if caveat:  # the level's known bias, as the last legend row (inside the axes it covered points)
        sax.plot([], [], ls="none", label=f"note: {caveat}")
    handles, labels = sax.get_legend_handles_labels()
    bottom.legend(handles, [fill_label(t, 95) for t in labels], fontsize=7, loc="outside lower center")
    _fit_ylabel(fig, ax)
    return fig


#: a search's recorded charge method (sim_backends.csp.landscape.CHARGE_METHODS, kept in its
#: landscape.csv, run.json and CIFs) as a figure names it
_READABLE_CHARGES = (("resp-lpn-pyscf HF/6-31G* charges", "RESP HF/6-31G* charges + N lone-pair sites"),
                     ("resp-lp-pyscf HF/6-31G* charges", "RESP HF/6-31G* charges + lone-pair sites"),
                     ("resp-pyscf HF/6-31G* charges", "RESP HF/6-31G* charges"),
                     ("xtb-gfn2-mulliken charges", "GFN2-xTB Mulliken charges"))


def readable_level(level: str) -> str:
    """A CSP level as recorded (``..., xtb-gfn2-mulliken charges``) in the words the other
    figures use (``..., GFN2-xTB Mulliken charges``); other text unchanged."""
    for recorded, shown in _READABLE_CHARGES:
        level = level.replace(recorded, shown)
    return level


def _widen_for_leaders(fig: Any, ax: Any) -> None:
    """A wider figure when the molecule panel has its list of leaders beside the axes (each
    with its value and window share): in 7.5 in the list left the axes a third of the width."""
    if ax.get_legend() is not None:
        w, h = fig.get_size_inches()
        fig.set_size_inches(max(w, 10.5), h)


def _label_offsets(ax: Any, points: list[dict[str, Any]]) -> list[float]:
    """Extra upward offsets (points) for the rank labels of ``points`` (``n``, ``value``) so
    that a label near an earlier one (within 4 % of the x range and 5 % of the y range) sits
    above it instead of on it (newuser45c #9: ranks 1 and 3 overlapped)."""
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    xr, yr = (x1 - x0) or 1.0, (y1 - y0) or 1.0
    placed: list[tuple[float, float, float]] = []
    out = []
    for h in points:
        dy = 0.0
        while any(abs(h["n"] - x) / xr < 0.04 and abs(h["value"] - y) / yr < 0.05 and d == dy
                  for x, y, d in placed):
            dy += 9.0
        placed.append((h["n"], h["value"], dy))
        out.append(dy)
    return out


def _window_shares(campaign: Campaign, backend: str, ids: set[int]) -> dict[int, str]:
    """Evaluation id -> the share of its landscape window's Boltzmann weight its value
    covers (``"86%"``), for the evaluations among ``ids`` whose result records it (ESF levels:
    ``extra["uncomputed_weight"]``); others are absent."""
    from sim_backends.esf import weight_share_text

    out = {}
    for ev in campaign.store.evaluations(backend, "ok"):
        w_u = ev.extra.get("uncomputed_weight") if ev.id in ids else None
        if w_u is not None:
            out[ev.id] = weight_share_text(1.0 - float(w_u))
    return out


def _fit_ylabel(fig: Any, ax: Any) -> None:
    """Wrap ``ax``'s y label narrower (then smaller) until it is no taller than the axes: a
    long one (two levels' names) in a short panel ran off the figure's top edge
    (newuser42 #11). ``fig`` is the figure that lays the axes out."""
    text = " ".join(ax.get_ylabel().split())
    for width, size in ((60, None), (45, None), (36, None), (36, 8), (30, 7)):
        ax.set_ylabel(fill_label(text, width), fontsize=size)
        fig.draw_without_rendering()  # the constrained layout sizes the axes
        if ax.yaxis.label.get_window_extent().height <= ax.get_window_extent().height:
            return


def _molecule_panel(campaign: Campaign, fig: Any, ax: Any) -> None:
    """The molecule stage's values per evaluation on ``ax``; the levels' legend below it
    (a legend of ``fig``, a figure or subfigure), the best few named in the axes."""
    from matplotlib.ticker import MaxNLocator

    from agent.summary import quantity, shown_name

    cfg = campaign.cfg
    names = [b.name for b in cfg.backends]
    levels = _levels(campaign)
    hist = campaign.history
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    unit = quantity(cfg.objective)[2]
    top = len(names) - 1
    ranked: list[Any] = []  # legend entries of the named top-level results
    excluded: list[dict[str, Any]] = []  # results of molecules a constraint excludes, any level
    flagged = unreliable_evaluations(campaign)
    unreliable: list[dict[str, Any]] = []  # values their backend flags unreliable (status warns), any level
    described: set[int] = set()  # levels whose description a legend entry already gives

    def level_at(f: int) -> str:
        """A level in a legend entry: its description the first time, its backend after
        (the legend repeated the full description in every entry; newuser43 F6)."""
        if f in described:
            return names[f]
        described.add(f)
        return levels[f]

    for f, name in enumerate(names):
        pts = [h for h in hist if h["fidelity"] == f and h["value"] is not None and h["status"] == "ok"]
        excluded += [h for h in pts if h["mol_index"] in campaign.infeasible]
        feasible = [h for h in pts if h["mol_index"] not in campaign.infeasible and h["n"] not in flagged]
        mine = [h for h in pts if h["mol_index"] not in campaign.infeasible and h["n"] in flagged]
        unreliable += mine
        if feasible:
            ax.scatter([h["n"] for h in feasible], [h["value"] for h in feasible], s=18 if f < top else 36,
                       color=colours[f % 4], label=f"{level_at(f)} ({name}, {len(feasible)})", alpha=0.8,
                       zorder=3)
        if mine:  # hollow, in the level's colour: not a value to read as the others
            ax.scatter([h["n"] for h in mine], [h["value"] for h in mine], s=18 if f < top else 36,
                       facecolors="none", edgecolors=colours[f % 4], linewidths=1.2, zorder=3)
        if f == top and feasible:
            # the best few top-level results get their rank beside the point and their
            # molecule's name in the legend (names next to clustered points overlap)
            sign = 1.0 if cfg.direction == "maximize" else -1.0
            named = sorted(feasible, key=lambda h: -sign * h["value"])[:N_NAMED_TOP]
            shares = _window_shares(campaign, name, {h["n"] for h in named})
            for k, (h, dy) in enumerate(zip(named, _label_offsets(ax, named), strict=True), start=1):
                ax.annotate(str(k), (h["n"], h["value"]), fontsize=7, xytext=(4, 3 + dy), textcoords="offset points")
                share = f", {shares[h['n']]} of its window's weight" if h["n"] in shares else ""
                ranked.append(ax.plot([], [], ls="none", label=f"{k}: {campaign.names[h['mol_index']]} "
                                                               f"({h['value']:.3g}{' ' + unit if unit else ''}"
                                                               f"{share})")[0])
    if unreliable:  # one legend entry for every level's (each point in its level's colour)
        ax.scatter([], [], s=30, facecolors="none", edgecolors="0.3", linewidths=1.2,
                   label=f"value flagged unreliable, hollow (see status; {len(unreliable)})")
    if excluded:  # a constraint excludes their molecules: drawn apart, never ranked
        at = ", ".join(level_at(f) for f in sorted({h["fidelity"] for h in excluded}))
        ax.scatter([h["n"] for h in excluded], [h["value"] for h in excluded], s=40, marker="x",
                   color="dimgrey", zorder=4, label=f"excluded by a constraint ({len(excluded)}; at {at})")
    fails = [h["n"] for h in hist if h["status"] != "ok"]
    if fails:  # not values: ticks on the top edge, in axes coordinates
        ax.plot(fails, [0.985] * len(fails), ls="none", marker="|", ms=10, color="crimson",
                transform=ax.get_xaxis_transform(), label=f"failed evaluation ({len(fails)})")
    best = [(h["n"], h["best"]) for h in hist if h["best"] is not None]
    if best:
        x, y = zip(*best, strict=True)
        ax.step(x, y, where="post", color="k", lw=1.5, label=f"best so far at {level_at(top)}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    # a level may show the objective's key under its own name (the ESF proxy: a reference
    # crystal's mobility, not a landscape's): every name the levels' points carry
    shown = list(dict.fromkeys(quantity(shown_name(b, cfg.objective))[0] for b in cfg.backends))
    ax.set_ylabel(fill_label(" or ".join(shown) + (f" ({unit})" if unit else ""), 60))
    label = quantity(cfg.objective)[0]
    stage = "molecule stage: " if campaign.stage is not None else ""
    # wrapped: with the ranked legend beside it the axes are narrow, and a title wider than its
    # axes runs off the figure (the layout does not shrink text)
    ax.set_title(textwrap.fill(f"campaign {cfg.name}: {stage}{cfg.direction.replace('ize', 'ise')} {label}",
                               50 if ranked else 90), fontsize=10)
    handles = [h for h in ax.get_legend_handles_labels()[0] if h not in ranked]
    if handles:  # below the axes: level names are long, wrapped to the figure's width
        fig.legend(handles, [fill_label(h.get_label(), 95) for h in handles], fontsize=7,
                   loc="outside lower center")
    if ranked:
        # the level of theory, not the config key (newuser37 C3)
        # beside the axes: inside, it covered points wherever it went (newuser42 #11)
        ax.legend(handles=ranked, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0,
                  handlelength=0, handletextpad=0,
                  title=fill_label(f"best {'feasible ' if campaign.infeasible else ''}at {levels[top]}", 36),
                  title_fontsize=7)


def fidelity_parity_plot(campaign: Campaign, path: Path, plt: Any, notes: list[str]) -> Path | None:
    """:func:`fidelity_parity_figure` saved to ``path``; None (and any stale plot
    removed) when there is no figure."""
    fig = fidelity_parity_figure(campaign, plt, notes)
    if fig is None:
        path.unlink(missing_ok=True)
        return None
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def fidelity_parity_figure(campaign: Campaign, plt: Any, notes: list[str]) -> Any | None:
    """Cheapest vs top level for molecules computed at both; None (with a note appended
    to ``notes``) below :data:`MIN_PARITY_POINTS` molecules or with one level."""
    from agent.summary import quantity, shown_name

    cfg = campaign.cfg
    names = [b.name for b in cfg.backends]
    if len(names) < 2:
        return None
    levels = _levels(campaign)
    by_mol = _by_molecule(campaign)
    top = len(names) - 1
    pairs = [(i, d[0], d[top]) for i, d in by_mol.items() if 0 in d and top in d]
    if len(pairs) < MIN_PARITY_POINTS:
        notes.append(f"no fidelity parity plot: {len(pairs)} molecule(s) computed at both "
                     f"{levels[0]} and {levels[-1]} (fewer than {MIN_PARITY_POINTS})")
        return None
    # each axis under the name its level shows the value as (the ESF proxy's is a
    # reference-crystal mobility, the refined level's a landscape one; fresh39 C1)
    (xlabel, _, xunit), (ylabel, _, yunit) = (quantity(shown_name(b, cfg.objective))
                                              for b in (cfg.backends[0], cfg.backends[-1]))
    fig, ax = plt.subplots(figsize=(6.0, 6.0))
    idx, x, y = zip(*pairs, strict=True)
    ax.scatter(x, y, s=22)
    labels = [ax.annotate(campaign.names[i], (a, b), fontsize=7, xytext=(3, 3), textcoords="offset points")
              for i, a, b in pairs]
    lo, hi = min(x + y), max(x + y)
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="y = x")
    # levels can be long ("Marcus hopping at 300 K, GFN2-xTB transfer integrals, ..."): wrapped,
    # so that tight_layout keeps the whole label on the figure
    ax.set_xlabel(f"{xlabel} ({xunit})\n" + fill_label(levels[0], 60), fontsize=8)
    ax.set_ylabel(f"{ylabel} ({yunit})\n" + fill_label(levels[-1], 60), fontsize=8)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_title(f"{len(pairs)} molecules at both levels", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    separate_labels(fig, labels)
    return fig


def separate_labels(fig: Any, labels: list[Any], step_pt: float = 8.0, max_steps: int = 20) -> None:
    """Move point labels (annotations with offsets in points) up, one ``step_pt`` at a time,
    until none overlaps an earlier one, lowest point first (newuser46b #9: "pentacene" was
    printed over "naphtho[2,3-b]thiophene", which then read "naphtho[2[3-b]..."). The texts
    are not changed; a label that would run past the right edge of its axes is put on the
    left of its point. Run after the figure's layout is final."""
    fig.canvas.draw()  # the layout and the axes' aspect applied
    renderer = fig.canvas.get_renderer()
    placed: list[Any] = []
    for t in sorted(labels, key=lambda a: (a.xy[1], a.xy[0])):
        if t.get_window_extent(renderer).x1 > t.axes.get_window_extent(renderer).x1:
            dx, dy = t.xyann
            t.xyann = (-abs(dx), dy)
            t.set_horizontalalignment("right")
        for _ in range(max_steps):
            box = t.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                break
            dx, dy = t.xyann
            t.xyann = (dx, dy + step_pt)
        placed.append(t.get_window_extent(renderer))


def _by_molecule(campaign: Campaign) -> dict[int, dict[int, float]]:
    by_mol: dict[int, dict[int, float]] = {}
    for i, f, v in campaign.observations:
        by_mol.setdefault(i, {})[f] = v
    return by_mol


#: lambda+ (kJ/mol) and its column in eV in ``results.csv``
LAMBDA_KEY, LAMBDA_EV = "reorg_energy_kjmol", "reorg_energy_ev"


#: the sidecar of ``results.csv`` that names each column's quantity, unit and level of theory
RESULTS_COLUMNS_FILE = "results_columns.csv"


def csv_number(unit: str, value: float | None) -> str:
    """A value for a CSV cell, rounded by its unit: kJ/mol to 0.01, eV (1 meV) and g/cm3 to 1e-3,
    log10 units to 1e-3, others to 4 significant digits; '' for None or a non-finite value."""
    import math

    if value is None or not math.isfinite(value):
        return ""
    if unit.startswith("kJ/mol"):
        return f"{value:.2f}"
    if unit in ("eV", "g/cm3"):
        return f"{value:.3f}"
    if unit.startswith("log10"):
        return f"{value:.3f}"
    return f"{value:.4g}"


def results_table(campaign: Campaign, path: Path, notes: list[str] | None = None) -> Path:
    """One row per molecule with a value, its objective at each level, best top-level value
    first, the molecules whose top-level value is unreliable after them and the molecules a
    constraint excludes last; with a fitted molecule surrogate (:func:`surrogate_predictions`),
    every valid pool molecule, those without a top-level value ranked by the surrogate's
    top-level prediction after the others. Columns: ``smiles``, ``name``, value columns
    ``<backend>_<objective>`` (the unit is the objective's suffix; the name the level shows it under,
    :func:`agent.summary.shown_name`: ``esf-proxy_log10_reference_crystal_mobility_hole``),
    then, when a level computes lambda+ and it is not the objective (every ESF level),
    ``reorg_energy_kjmol`` and ``reorg_energy_ev`` (:data:`LAMBDA_KEY`, as the most accurate
    level reports it, :func:`agent.constraints.constrained_values`), then each constrained
    value (as first reported) and ``excluded_by`` (the reason, empty
    for a feasible molecule), then per level ``<backend>_<objective>_pred_mean`` and
    ``_pred_sd`` (the surrogate's prediction and 1-sigma where the molecule has no computed
    value at that level; empty without a fitted surrogate, which the ``notes`` argument, the
    report's list of notes, then says), and the ``notes`` column:
    the levels whose value is flagged unreliable and why
    (:func:`sim_backends.reorg.unreliable_lambda_reason`, as ``status`` warns; the value is
    kept in its column), and "no computed value" for a predicted-only molecule (with the
    reason its evaluations failed, if any). Numbers are rounded by unit (:func:`csv_number`).
    The sidecar :data:`RESULTS_COLUMNS_FILE` beside ``path`` names each column's quantity,
    unit and level of theory (:func:`results_columns`; its ``file`` is ``path``'s name, and
    :func:`write_plots` adds the columns of ``esf_results.csv`` after them)."""
    from agent.summary import KJMOL_PER_EV, quantity

    cfg = campaign.cfg
    names = [b.name for b in cfg.backends]
    by_mol, unreliable = _table_values(campaign)
    columns = results_columns(campaign)
    lam = LAMBDA_EV in {c["column"] for c in columns}
    keys = [c["column"] for c in columns if c["kind"] == "constrained"]
    constrained: dict[int, dict[str, float]] = {}
    if keys or lam:
        from agent.constraints import constrained_values

        index_of = campaign.molecules.index_of
        wanted = [LAMBDA_KEY, *keys] if lam else keys
        constrained = {index_of[m]: v for m, v in constrained_values(campaign.store.evaluations(), wanted).items()
                       if m in index_of}
    predicted = surrogate_predictions(campaign, notes)
    failed = _failure_notes(campaign) if predicted else {}
    top = len(names) - 1
    unit = quantity(cfg.objective)[2]
    bounded = bool(cfg.constraints)
    sign = 1.0 if cfg.direction == "minimize" else -1.0
    rows = list(range(len(campaign.smiles))) if predicted else list(by_mol)

    def rank(i: int) -> tuple[bool, bool, bool, float]:
        d = by_mol.get(i, {})
        guess = d[top] if top in d else predicted[top][0][i] if predicted else float("nan")
        return (i in campaign.infeasible, top in unreliable.get(i, {}), top not in d,
                sign * guess if guess == guess else float("inf"))

    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([c["column"] for c in columns])
        for i in sorted(rows, key=rank):
            d = by_mol.get(i, {})
            row = [campaign.smiles[i], campaign.names[i]] + [csv_number(unit, d.get(f)) for f in range(len(names))]
            mine = constrained.get(i, {})
            if lam:
                v = mine.get(LAMBDA_KEY)
                row += [csv_number("kJ/mol", v), csv_number("eV", None if v is None else v / KJMOL_PER_EV)]
            row += [csv_number(quantity(k)[2], mine.get(k)) for k in keys]
            if bounded:
                row.append(campaign.infeasible.get(i, ""))
            for f in range(len(names)):
                mean, sd = predicted[f] if predicted and f not in d else (None, None)
                row += [csv_number(unit, None if mean is None else float(mean[i])),
                        csv_number(unit, None if sd is None else float(sd[i]))]
            said = [f"{names[f]} value unreliable: {why}" for f, why in sorted(unreliable.get(i, {}).items())]
            if not d:
                said.append("no computed value" + (f" ({failed[i]})" if i in failed else ""))
            row.append("; ".join(said))
            w.writerow(row)
    write_columns(path.with_name(RESULTS_COLUMNS_FILE), columns, path.name)
    return path


def decisions_table(campaign: Campaign, path: Path) -> Path:
    """Why each task was run (``report/decisions.csv``): one row per ``submitted`` event of
    the store, in order, and its columns appended to :data:`RESULTS_COLUMNS_FILE` beside
    ``path`` (call after :func:`results_table`, which starts that file).

    Columns: ``n`` (submission order, from 1), ``time`` (UTC, ISO 8601), ``backend``,
    ``molecule`` (its pool name), ``smiles``, ``structure_id`` (structure-level work), then
    from the event's ``why`` (:attr:`agent.stages.base.Request.why`): ``rule`` (the molecule
    stage's "initial design", "pool screen", "acquisition", "constraint screen"; the structure
    stage's CSP, structure-acquisition, second-level and landscape-property rules; or "not
    recorded" when the event has none: campaigns made before decisions were recorded), ``detail``
    (the figures behind the rule: a structure pick's cheap-level rank and the skill test's
    MAEs), ``acquisition_level`` (the level the acquisition weighed; for "constraint screen"
    not the backend run), ``acquisition_kind`` ("expected improvement" or "look-ahead
    value"), ``acquisition_value`` (objective units; a structure pick's probability of the
    low-energy set), ``value_unit`` (that row's unit of it), ``rate`` (value / (cost /
    p_feasible)**cost_power, what the acquisition maximised), ``cost_cpu_s`` (the cost it
    divided by, the level's CPU s estimate, empty without a compute budget: every
    evaluation then costs one unit), ``cost_power``, ``p_feasible`` (below 1 where the divisor was ``cost / p_feasible``),
    ``best_direct_rate`` (the best top-level rate at that choice); then from the stored
    evaluation of the request: ``cpu_s`` (the CPU seconds measured; for a task a stopped run
    left unfinished, what it was charged) and ``succeeded`` ("yes", "no", "interrupted", or
    empty while no result is stored); ``request_id``. Acquisition numbers have 4
    significant digits."""
    from datetime import datetime, timezone

    from agent.summary import quantity

    store = campaign.store
    unit = quantity(campaign.cfg.objective)[2]
    names = {m["smiles"]: m["name"] or m["smiles"] for m in store.molecules()}
    evaluations = {ev.request_id: ev for ev in store.evaluations()}
    interrupted = {e.get("submitted_event"): e for e in store.events("interrupted_task")}
    per = f"{unit or 'objective unit'} per cost**cost_power"
    columns = [
        column_entry("n", "submission order (1: the first task the campaign submitted)"),
        column_entry("time", "when the task was submitted (UTC, ISO 8601)", "time", "UTC"),
        column_entry("backend", "the backend (level) that ran the task"),
        column_entry("molecule", "the molecule's name in the pool (its SMILES where it has none)"),
        column_entry("smiles", "the molecule (SMILES, as stored from the pool)"),
        column_entry("structure_id", "the crystal structure, for structure-level work"),
        column_entry("rule", "why the task was chosen: 'initial design', 'pool screen' (the cheapest level on "
                     "every molecule), 'acquisition', 'constraint screen' (an acquisition's pick at a level a "
                     "constraint holds back, run at the cheaper level that screens it), the structure stage's "
                     "'structure acquisition: <branch>' (the surrogate's P(low-energy set) per cost, cheap-level "
                     "order per cost while the surrogate is not trusted, exploration when confident, an observed "
                     "form; a fixed text per branch), 'not recorded' "
                     "(campaigns made before decisions were recorded, stages that do not say)"),
        column_entry("detail", "the figures behind the rule: for a structure-acquisition pick its cheap-level "
                     "rank and energy above the cheap minimum, and the surrogate's leave-one-out MAE against a "
                     "constant shift's (or how many computed structures it still needs before it is tested)"),
        column_entry("acquisition_level", "the level the acquisition weighed (for 'constraint screen' the "
                     "held-back level, not the backend run)"),
        column_entry("acquisition_kind", "'expected improvement' of the top-level value over the best, or "
                     "'look-ahead value' of a cheaper level (the expected surplus of the top level's EI after "
                     "it, agent/acquisition.py)"),
        column_entry("acquisition_value", "the acquisition's utility of the pick at its choice, before dividing "
                     "by cost, in value_unit", f"acquisition value of {campaign.cfg.objective}", unit),
        column_entry("value_unit", f"the unit of acquisition_value in this row: {unit or 'the objective unit'} for "
                     "a molecule-stage pick, 'probability' for a structure-acquisition pick (rate is then that "
                     "probability per CPU s)"),
        column_entry("rate", "acquisition_value / (cost / p_feasible)**cost_power (p_feasible 1 where empty; cost "
                     "cost_cpu_s, or one per evaluation where that is empty): the quantity the acquisition "
                     "maximised", "acquisition rate", per),
        column_entry("cost_cpu_s", "the cost the acquisition divided by: the level's expected CPU seconds per "
                     "evaluation (with the price of an evaluation slot when the evaluation budget binds); "
                     "empty without a compute budget (every evaluation then costs one unit)", "CPU time", "s"),
        column_entry("cost_power", "the power of the cost in the rate (cost cooling: the fraction of the compute "
                     "budget left; 1 without one)"),
        column_entry("p_feasible", "the probability the constraints hold, where below 1 (the divisor was "
                     "cost / p_feasible)", "probability"),
        column_entry("best_direct_rate", "the best rate of any top-level pick at that choice (a cheaper level "
                     "is chosen only when its rate beats it)", "acquisition rate", per),
        column_entry("cpu_s", "CPU seconds the task used, as stored with its evaluation (a task a stopped run "
                     "left unfinished: what it was charged)", "CPU time", "s"),
        column_entry("succeeded", "'yes', 'no' (the evaluation failed), 'interrupted' (a stopped run left it "
                     "unfinished), empty while no result is stored"),
        column_entry("request_id", "the request's id (the evaluations and events tables of store.sqlite)"),
    ]
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([c["column"] for c in columns])
        for n, e in enumerate(store.events("submitted"), start=1):
            why = e.get("why") if isinstance(e.get("why"), dict) else {}
            ev = evaluations.get(e.get("request_id"))
            stop = interrupted.get(e["event_id"])
            cpu_s = ev.cpu_s if ev is not None else stop.get("cpu_s") if stop is not None else None
            succeeded = ("yes" if ev.ok else "no") if ev is not None else "interrupted" if stop is not None else ""
            per_cpu = why.get("cost_unit") == "CPU s"
            w.writerow([
                n, datetime.fromtimestamp(e["ts"], timezone.utc).isoformat(timespec="seconds"),
                e.get("backend", ""), names.get(e.get("smiles"), e.get("smiles") or ""), e.get("smiles") or "",
                e.get("structure_id") or "", why.get("rule", "not recorded"), why.get("detail", ""),
                why.get("level", ""), why.get("kind", ""), csv_number("", why.get("value")),
                ("" if why.get("value") is None
                 else "probability" if why.get("kind") == "P(in the low-energy set)" else unit),
                csv_number("", why.get("rate")), csv_number("", why.get("cost") if per_cpu else None),
                csv_number("", why.get("cost_power")), csv_number("", why.get("p_feasible")),
                csv_number("", why.get("best_direct_rate")), csv_number("s", cpu_s), succeeded,
                e.get("request_id", "")])
    write_columns(path.with_name(RESULTS_COLUMNS_FILE), columns, path.name, append=True)
    return path


#: the fields of :data:`RESULTS_COLUMNS_FILE`: per column of a report table its quantity,
#: unit, level of theory, description and ``file`` (the table: ``results.csv``,
#: ``landscape_model_m<id>.csv``, ``structures/landscape_m<id>.csv``, ``esf_results.csv``; the
#: landscape tables of one campaign share their columns)
COLUMN_FIELDS = ["column", "quantity", "unit", "level_of_theory", "description", "file"]


def column_entry(column: str, description: str, quantity: str = "", unit: str = "", level: str = "") -> dict[str, str]:
    """One column of a table as :data:`RESULTS_COLUMNS_FILE` describes it (the
    :data:`COLUMN_FIELDS` but ``file``)."""
    return {"column": column, "quantity": quantity, "unit": unit, "level_of_theory": level,
            "description": description}


def write_columns(path: Path, columns: list[dict[str, str]], file: str, append: bool = False) -> Path:
    """Write (``append``: add to) :data:`RESULTS_COLUMNS_FILE` at ``path``: the description
    of each of ``columns`` (dicts with the :data:`COLUMN_FIELDS` but ``file``) of the table
    ``file``."""
    with path.open("a" if append else "w", newline="") as fh:
        w = csv.DictWriter(fh, COLUMN_FIELDS, extrasaction="ignore")
        if not append:
            w.writeheader()
        w.writerows({**c, "file": file} for c in columns)
    return path


def results_columns(campaign: Campaign) -> list[dict[str, str]]:
    """The columns of :func:`results_table`, in order, each a dict with ``column``,
    ``quantity``, ``unit``, ``level_of_theory``, ``description`` (what
    :data:`RESULTS_COLUMNS_FILE` holds) and ``kind`` ("molecule", "value", "lambda",
    "constrained", "excluded_by", "prediction", "notes")."""
    from agent.summary import level_of_theory, quantity, shown_name
    from sim_backends.registry import UnknownBackendError, backend_class

    cfg = campaign.cfg

    def computes(name: str) -> tuple[str, ...]:
        try:
            return tuple(backend_class(name).computes)
        except UnknownBackendError:
            return ()

    def levels_of(key: str) -> str:
        return " or ".join(dict.fromkeys(level_of_theory(b, key) for b in cfg.backends if key in computes(b.name)))

    def col(column: str, kind: str, description: str, key: str = "", level: str = "",
            unit: str | None = None) -> dict[str, str]:
        label, _, own = quantity(key) if key else ("", "", "")
        return {"column": column, "kind": kind, "quantity": label, "unit": own if unit is None else unit,
                "level_of_theory": level, "description": description}

    out = [col("smiles", "molecule", "the molecule (SMILES, as stored from the pool)"),
           col("name", "molecule", "the molecule's name in the pool (its SMILES where it has none)")]
    shown = [(b, shown_name(b, cfg.objective), level_of_theory(b, cfg.objective)) for b in cfg.backends]
    out += [col(f"{b.name}_{key}", "value", f"computed at level {b.name} (fidelity {f}; the latest "
                "successful evaluation)", key, level) for f, (b, key, level) in enumerate(shown)]
    keys = list(dict.fromkeys(c.value for c in cfg.constraints))
    # lambda+ beside another objective (newuser43 F5: ESF levels computed it, the table had no column)
    if cfg.objective != LAMBDA_KEY and any(LAMBDA_KEY in computes(b.name) for b in cfg.backends):
        how = "as the most accurate level that computed it reports it"
        out += [col(LAMBDA_KEY, "lambda", how, LAMBDA_KEY, levels_of(LAMBDA_KEY)),
                col(LAMBDA_EV, "lambda", f"{LAMBDA_KEY} in eV", LAMBDA_KEY, levels_of(LAMBDA_KEY), "eV")]
        keys = [k for k in keys if k != LAMBDA_KEY]
    out += [col(k, "constrained", "constrained value ([[constraints]]), as the result that counts reports it",
                k, levels_of(k)) for k in keys]
    if cfg.constraints:
        out.append(col("excluded_by", "excluded_by", "why a constraint excludes the molecule (empty: feasible)"))
    for f, (b, key, level) in enumerate(shown):
        what = f"the molecule surrogate's prediction at level {b.name} (fidelity {f}) where it has no computed value"
        bound = "" if key not in NON_NEGATIVE else f" (the Gaussian truncated at {NON_NEGATIVE[key]:g}: physics bounds it)"
        out += [col(f"{b.name}_{key}_pred_mean", "prediction", f"{what}: mean{bound}", key, level),
                col(f"{b.name}_{key}_pred_sd", "prediction", f"{what}: 1-sigma", key, level)]
    out.append(col("notes", "notes", "values flagged unreliable and why; 'no computed value' for a molecule "
                   "with predictions only"))
    return out


def surrogate_predictions(campaign: Campaign, notes: list[str] | None = None
                          ) -> list[tuple[Any, Any]] | None:
    """Per level (cheapest first), the molecule surrogate's ``(mean, sd)`` arrays over the
    valid pool (pool index order), from the model the molecule stage has fitted: its live
    one, else the last fit its store keeps (rebuilt on the stored results with the saved
    hyperparameters, nothing re-optimised). None, with the reason in ``notes``, when there
    is no such fit."""
    stage = campaign.molecules
    model = stage.surrogate
    if model is None and len(stage.observations) >= 2:
        from agent.surrogates.molecule_gp import Observation

        model = stage._saved_surrogate([Observation(i, f, v) for i, f, v in stage.observations])
    if model is None:
        if notes is not None:
            notes.append("results.csv has no surrogate predictions: no fitted molecule surrogate is stored "
                         f"({len(stage.observations)} usable results)")
        return None
    fps, desc = stage.fingerprints, stage._descriptors_for(model)
    preds = [model.predict(fps, f, descriptors=desc) for f in range(len(campaign.cfg.backends))]
    lower = NON_NEGATIVE.get(campaign.cfg.objective)
    if lower is not None:  # a Gaussian over a bounded quantity: its part physics allows
        preds = [bounded_prediction(mean, sd, lower) for mean, sd in preds]
    return preds


#: objectives physics bounds from below, with the bound: a reorganisation energy and a mobility
#: are >= 0 (the molecule GP models them as Gaussian, so a prediction can reach below)
NON_NEGATIVE = {"reorg_energy_kjmol": 0.0, "landscape_mobility_hole_cm2Vs": 0.0}


def bounded_prediction(mean: Any, sd: Any, lower: float) -> tuple[Any, Any]:
    """Mean and sd of the Gaussian ``N(mean, sd^2)`` truncated to ``>= lower`` (the prediction of
    a quantity physics bounds from below: never a value it forbids, e.g. a negative lambda+);
    where ``sd`` is 0 the mean is clipped."""
    import numpy as np
    from scipy.stats import truncnorm

    mean, sd = np.asarray(mean, dtype=float), np.asarray(sd, dtype=float)
    ok = sd > 0
    out_m, out_s = np.maximum(mean, lower), np.where(ok | np.isnan(sd), sd, 0.0)  # NaN stays NaN
    if ok.any():
        a = (lower - mean[ok]) / sd[ok]
        m, v = truncnorm.stats(a, np.inf, loc=mean[ok], scale=sd[ok], moments="mv")
        out_m[ok], out_s[ok] = m, np.sqrt(np.maximum(v, 0.0))
    return out_m, out_s


def _failure_notes(campaign: Campaign) -> dict[int, str]:
    """Pool index -> the latest failed molecule-stage evaluation of the molecule, as
    ``<backend> failed: <first line of the reason>``."""
    levels = {b.name for b in campaign.cfg.backends}
    out: dict[int, str] = {}
    for ev in campaign.store.evaluations(status="failed"):
        i = campaign._index_of.get(int(ev.molecule_id))
        if ev.structure_id is None and ev.backend in levels and i is not None:
            out[i] = f"{ev.backend} failed: {((ev.reason or '').strip().splitlines() or [''])[0][:160]}"
    return out


def unreliable_evaluations(campaign: Campaign) -> dict[int, str]:
    """Evaluation id -> why its objective value is unreliable
    (:func:`sim_backends.reorg.unreliable_lambda_reason`, what ``status`` warns of), over the
    molecule stage's successful evaluations."""
    from sim_backends.reorg import unreliable_lambda_reason

    cfg = campaign.cfg
    levels = {b.name for b in cfg.backends}
    return {ev.id: why for ev in campaign.store.evaluations(status="ok")
            if ev.structure_id is None and ev.backend in levels
            and (why := unreliable_lambda_reason(ev.extra, cfg.objective))}


def _table_values(campaign: Campaign) -> tuple[dict[int, dict[int, float]], dict[int, dict[int, str]]]:
    """Pool index -> fidelity -> the latest value of the objective, for every successful
    molecule-stage evaluation (those flagged unreliable too, which the surrogate's
    observations leave out); and pool index -> fidelity -> why a value is unreliable."""
    import math

    from sim_backends.reorg import unreliable_lambda_reason

    cfg = campaign.cfg
    fidelity = {b.name: f for f, b in enumerate(cfg.backends)}
    values: dict[int, dict[int, float]] = {}
    unreliable: dict[int, dict[int, str]] = {}
    for ev in campaign.store.evaluations(status="ok"):
        i, f, v = campaign._index_of.get(int(ev.molecule_id)), fidelity.get(ev.backend), ev.values.get(cfg.objective)
        if ev.structure_id is not None or i is None or f is None or v is None or not math.isfinite(v):
            continue
        values.setdefault(i, {})[f] = float(v)
        why = unreliable_lambda_reason(ev.extra, cfg.objective)  # as unreliable_evaluations, in this one pass
        if why:
            unreliable.setdefault(i, {})[f] = why
        else:
            unreliable.get(i, {}).pop(f, None)
    return values, unreliable


def _landscape_plots(campaign: Campaign, out: Path, plt: object, notes: list[str]) -> list[Path]:
    """Per refined landscape: :func:`landscape_plot` (``landscape_m<molecule id>.png``)
    and :func:`landscape_table` (``landscape_model_m<molecule id>.csv``; the table an
    earlier version wrote as ``report/landscape_m<id>.csv``, a name it shared with the
    structures' table, is removed)."""
    paths = []
    for mol_id in campaign.stage.landscapes:
        (out / f"landscape_m{mol_id}.csv").unlink(missing_ok=True)
        p = landscape_plot(campaign, mol_id, out / f"landscape_m{mol_id}.png", plt, notes)
        if p is not None:
            paths.append(p)
            paths.append(landscape_table(campaign, mol_id, out / f"landscape_model_m{mol_id}.csv"))
    return paths


def landscape_table_columns(campaign: Campaign) -> dict[str, str]:
    """The columns of :func:`landscape_table` by role (``ff``, ``dE``, ``sd``,
    ``computed``, ``second``, ``dG``, ``rank_dE``, ``rank_dG``): names with the level
    (backend name) and unit of each value."""
    from agent.landscape_io import level_column

    stage = campaign.stage
    ff, ref = campaign.cfg.structures.csp.name, stage.refine.name
    second = stage.free_energy
    return {
        "ff": f"dE_{ff}_kJmol_per_mol",
        "dE": f"dE_predicted_{ref}_kJmol_per_mol",
        "sd": f"dE_predicted_sd_{ref}_kJmol_per_mol",
        "computed": f"computed_{ref}",
        "second": (level_column(second.name, stage.value_keys[1]) if second is not None
                   else "F_vib_kJmol_per_mol"),
        "dG": "dG_kJmol_per_mol",
        "rank_dE": f"rank_by_dE_{ref}",
        "rank_dG": "rank_by_dG",
    }


#: the ``file`` under which :data:`RESULTS_COLUMNS_FILE` describes the report's landscape tables
LANDSCAPE_MODEL_TABLE = "landscape_model_m<id>.csv"


def landscape_model_columns(campaign: Campaign) -> list[dict[str, str]]:
    """The columns of every :func:`landscape_table` of ``campaign``, in order (its header),
    each described (:func:`column_entry`) for :data:`RESULTS_COLUMNS_FILE`."""
    from agent.landscape_io import csp_level_text
    from agent.summary import ENERGY_UNIT, level_of_theory, quantity

    stage = campaign.stage
    ff, ref = campaign.cfg.structures.csp.name, stage.refine.name
    cols = landscape_table_columns(campaign)
    ff_level, ref_level = csp_level_text(campaign), level_of_theory(stage.refine)
    second = stage.free_energy
    relative = "lattice energy relative to the lowest structure"
    no_g = "; empty: no free-energy level in [structures]" if second is None else ""
    label, _, unit = quantity(stage.value_keys[1]) if second is not None else ("vibrational free energy F_vib", "",
                                                                                ENERGY_UNIT)
    second_level = level_of_theory(second) if second is not None else ""
    free = "free energy E + F_vib relative to the lowest structure"
    return [
        column_entry("id", "the structure's id (its CIF: runs/<name>/structures/<id>.cif)"),
        column_entry("space_group", "space group symbol, as in the structure's CIF"),
        column_entry("Z", "molecules in the cell of the structure's CIF (the search cell's before the CIF is written)"),
        column_entry("Z_prime", "independent molecules: the CSP's record, else Z over the space group's general "
                     "positions (0.5: a molecule on an inversion centre); empty when neither is known", "Z'"),
        column_entry("density_gcm3", "density of the stored (CSP) structure", "density", "g/cm3", ff_level),
        column_entry(cols["ff"], f"lattice energy at the CSP level {ff}, relative to the lowest structure", relative,
                     ENERGY_UNIT, ff_level),
        column_entry(cols["dE"], f"lattice energy at the ranking level {ref}, relative to the lowest structure: the "
                     f"computed value where {cols['computed']} is 1, else the structure surrogate's prediction; no "
                     "vibrational term", relative, ENERGY_UNIT, ref_level),
        column_entry(cols["sd"], "1-sigma of that prediction (0 where computed)", relative, ENERGY_UNIT, ref_level),
        column_entry(cols["computed"], f"1: computed at {ref}; 0: predicted"),
        column_entry(cols["second"], f"{label} where computed (absolute){no_g}", label, unit, second_level),
        column_entry(cols["dG"], f"{free} (F_vib of the structures without one: the mean of the computed ones)"
                     f"{no_g}", free, ENERGY_UNIT, f"{ref_level} + {second_level}" if second is not None else ""),
        column_entry(cols["rank_dE"], f"rank by {cols['dE']} (1: the lowest)"),
        column_entry(cols["rank_dG"], f"rank by {cols['dG']} (1: the lowest){no_g}"),
        column_entry("observed", "the lab request that observed the structure (a fed-back lab result), else empty"),
    ]


def landscape_table(campaign: Campaign, mol_id: int, path: Path) -> Path:
    """The landscape as the model ranks it (``report/landscape_model_m<id>.csv``): one row
    per structure, every structure's energy at the ranking level computed or predicted by
    the structure surrogate (Delta-GP), lowest (free) energy first. The table of the
    computed energies with absolute values is ``runs/<name>/structures/landscape_m<id>.csv``.

    Energies in kJ/mol per molecule, ``dE`` relative to the lowest structure of its own
    column; ``<FF>`` is the CSP level's backend name, ``<L>`` the ranking level's
    (:func:`landscape_table_columns`). Columns: ``id, space_group, Z`` (molecules in the
    cell the structure's CIF under ``runs/<name>/structures/`` states, as there; the search
    cell's when the CIF is not written yet), ``Z_prime`` (independent molecules, as in the
    structures' table: :func:`agent.landscape_io.z_prime_cell`), ``density_gcm3``, ``dE_<FF>_kJmol_per_mol``
    (force field), ``dE_predicted_<L>_kJmol_per_mol`` (the lattice energy at ``<L>``: the
    computed value where computed, else the Delta-GP prediction; no vibrational term),
    ``dE_predicted_sd_<L>_kJmol_per_mol`` (the prediction's 1-sigma, 0 where computed),
    ``computed_<L>`` (1 computed, 0 predicted), then with a second energy level (e.g.
    ``phonon``) its value where computed (``F_vib_phonon_kJmol_per_mol``, absolute) and
    ``dG_kJmol_per_mol`` = E + F_vib relative to the lowest (F_vib of the uncomputed taken
    as the mean of the computed ones), ``rank_by_dE_<L>``, ``rank_by_dG``. Without a second
    energy level (``[structures]`` has none) no free energy exists: ``F_vib_kJmol_per_mol``,
    ``dG_kJmol_per_mol`` and ``rank_by_dG`` are empty and the rows are in ``dE`` order.
    Last, ``observed``: the lab request that observed the structure (a fed-back lab
    result), else empty.
    """
    import numpy as np

    from agent.landscape_io import z_prime_cell
    from agent.summary import landscape_rows, observed_sources, reported_z

    stage = campaign.stage
    land = stage.landscapes[mol_id]
    corr = stage.corrected_landscape(mol_id)
    static = corr["corrected_kjmol"].copy()
    std = corr["std_kjmol"].copy()
    for i, e in land.computed.items():
        static[i], std[i] = e, 0.0
    has_g = stage.free_energy is not None  # a free-energy level is configured
    f_mean = float(np.mean(list(land.f_vib.values()))) if land.f_vib else 0.0
    f = np.array([land.f_vib.get(i, f_mean) for i in range(len(land.ids))])
    g = static + f if has_g else static
    rows = landscape_rows(campaign, mol_id)  # space group, density, Z and CIF path, in landscape order
    rank_s = np.argsort(np.argsort(static, kind="stable"), kind="stable") + 1
    rank_g = np.argsort(np.argsort(g, kind="stable"), kind="stable") + 1
    observed = observed_sources(campaign.store)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([c["column"] for c in landscape_model_columns(campaign)])
        for i in np.argsort(g, kind="stable"):
            r = rows[i]
            fv = land.f_vib.get(int(i))
            w.writerow([land.ids[i], r["space_group"] or "", reported_z(r), z_prime_cell(r.get("z_prime")),
                        "" if r["density_gcm3"] is None else f"{r['density_gcm3']:.3f}",
                        f"{land.ff_kjmol[i] - land.ff_kjmol.min():.3f}",
                        f"{static[i] - static.min():.3f}", f"{std[i]:.3f}", int(i in land.computed),
                        "" if fv is None else f"{fv:.3f}", f"{g[i] - g.min():.3f}" if has_g else "",
                        int(rank_s[i]), int(rank_g[i]) if has_g else "", observed.get(land.ids[i], "")])
    return path


def landscape_plot(campaign: Campaign, mol_id: int, path: Path, plt: object = None,
                   notes: list[str] | None = None) -> Path | None:
    """:func:`landscape_figure` saved to ``path``; None before anything is computed."""
    if plt is None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    fig = landscape_figure(campaign, mol_id, plt, notes)
    if fig is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def landscape_figure(campaign: Campaign, mol_id: int, plt: Any, notes: list[str] | None = None) -> Any:
    """Force-field vs GP-corrected energies against density (the landscape before and
    after correction), and the GP's held-out predictions vs the computed energies
    (leave-one-out, closed form with the hyperparameters fixed, so every point is a
    prediction for a structure the GP did not see). The parity panel needs
    :data:`MIN_PARITY_POINTS` computed structures (else it says how many there are); its
    MAE is the model's own ``loo_mae_kjmol``, the figure logged to MLflow. ``None``
    before anything is computed.
    """
    import numpy as np

    from agent.summary import level_of_theory

    stage = campaign.stage
    land = stage.landscapes.get(mol_id)
    corr = stage.corrected_landscape(mol_id) if land is not None else None
    if corr is None:
        return None
    from agent.summary import csp_levels

    ref_level = level_of_theory(stage.cfg.refine)
    # the charges this molecule's search used (recorded by it), not the config's by-molecule rule
    ff_level = readable_level((csp_levels(campaign.store, stage.cfg.csp.name).get(int(mol_id))
                               if stage.cfg.csp else None) or level_of_theory(stage.cfg.csp))
    name = campaign.names[campaign._index_of[mol_id]] if mol_id in campaign._index_of else land.smiles
    dens = {r["id"]: r["density_gcm3"] for r in campaign.store.structures(mol_id)}
    rho = np.array([dens.get(i) or np.nan for i in land.ids], dtype=float)
    computed = corr["computed"]
    true = np.array([land.computed[i] for i in computed])
    held = corr.get("held_out_kjmol")
    has_parity = held is not None and len(computed) >= MIN_PARITY_POINTS
    fig, axes = plt.subplots(1, 2 if has_parity else 1, figsize=(11, 5.6) if has_parity else (7, 5.8),
                             squeeze=False)
    ax = axes[0][0]
    # two levels, two zeros: each level's energies relative to its own lowest structure (the
    # force field and the refinement level differ by a systematic shift; the ranking is
    # what is compared), each zero named with its absolute lattice energy in the legend
    i_ff = int(np.argmin(land.ff_kjmol))
    ax.scatter(rho, land.ff_kjmol - land.ff_kjmol[i_ff], s=14, c="0.6",
               label=f"{ff_level}; 0 = its lowest, {land.ids[i_ff]}, {land.ff_kjmol[i_ff]:.1f} kJ/mol per molecule")
    model = corr.get("ranking_model") or "Delta-GP"
    i_ref = int(np.argmin(corr["corrected_kjmol"]))
    e = corr["corrected_kjmol"] - corr["corrected_kjmol"][i_ref]
    std = corr["std_kjmol"].copy()
    std[computed] = 0.0  # computed energies are exact at this level
    how = "computed" if i_ref in set(np.asarray(computed).tolist()) else f"{model} prediction"
    ax.errorbar(rho, e, yerr=std, fmt="o", ms=3, color="tab:blue", alpha=0.6,
                lw=0.6, label=f"{ref_level}: {model} prediction, mean ± 1σ; 0 = its lowest, {land.ids[i_ref]} "
                              f"({how}), {corr['corrected_kjmol'][i_ref]:.1f} kJ/mol per molecule")
    ax.scatter(rho[computed], e[computed], s=40, facecolors="none", edgecolors="tab:red",
               label=f"computed at {ref_level} ({len(computed)})")
    if land.failed:
        bad = sorted(land.failed)
        ax.scatter(rho[bad], e[bad], marker="x", s=40, color="crimson", zorder=4,
                   label=f"failed at {ref_level} ({len(bad)}; {model} prediction shown)")
    from agent.summary import observed_sources

    observed = observed_sources(campaign.store)
    for i in (i for i, sid in enumerate(land.ids) if sid in observed):  # the lab's observed forms
        ax.scatter([rho[i]], [e[i]], marker="*", s=220, facecolors="gold", edgecolors="k", lw=0.8, zorder=5,
                   label=f"observed by the lab: {land.ids[i]} ({observed[land.ids[i]]})")
        ax.annotate(land.ids[i], (rho[i], e[i]), fontsize=7, xytext=(6, 6), textcoords="offset points")
    ax.set_xlabel("density (g/cm$^3$)")
    ax.set_ylabel("lattice energy rel. to lowest (kJ/mol per molecule)")
    ax.set_title(f"{name}: {len(land.ids)} CSP structures before and after correction\n"
                 "each level relative to its own lowest structure", fontsize=9)
    # below the axes (inside, it covered the lowest structures and the top tick labels), one
    # entry per line, long level names wrapped
    import textwrap

    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, [textwrap.fill(t, 75) for t in labels], fontsize=6.5, loc="upper center",
              bbox_to_anchor=(0.5, -0.16), ncol=1, frameon=False)
    mae = corr.get("loo_mae_kjmol")
    if not has_parity:
        why = (f"{len(computed)} structure(s) computed at {ref_level}: fewer than {MIN_PARITY_POINTS}, "
               "no held-out parity plot" if len(computed) < MIN_PARITY_POINTS
               else "no leave-one-out predictions for this model: no held-out parity plot")
        fig.text(0.01, 0.005, why, fontsize=7, color="0.3", ha="left", va="bottom")
        fig.tight_layout(rect=(0, 0.04, 1, 1))
        if notes is not None:
            notes.append(f"{name}: {why}")
    else:
        ax = axes[0][1]
        ax.scatter(true, held, s=20)
        lo, hi = float(min(true.min(), held.min())), float(max(true.max(), held.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="y = x")
        ax.set_xlabel("computed lattice energy (kJ/mol per molecule)\n" + textwrap.fill(ref_level, 70), fontsize=8)
        ax.set_ylabel("held-out (LOO) Delta-GP prediction (kJ/mol per molecule)", fontsize=8)
        mae_text = f", Delta-GP LOO MAE {mae:.2f} kJ/mol per molecule" if mae is not None else ""
        skill = corr.get("skill")
        shift = getattr(skill, "shift_loo_mae_kjmol", None)
        if model != "Delta-GP" and shift is not None:  # the Delta-GP failed the skill test
            mae_text += f";\nconstant shift {shift:.2f}: the ranking uses the shift"
        ax.set_title(f"{len(computed)} of {len(land.ids)} structures computed{mae_text}", fontsize=8)
        ax.legend(fontsize=7)
        fig.tight_layout()
    return fig
