"""Benchmark "refinement": how many expensive calculations until the true top 10 are known.

Replays complete multi-level CSP landscapes. The agent (cost-aware top-k acquisition, see
``agent/refine_acquisition.py``, default settings -- including the switch to space-filling
picks once it believes the top 10 complete -- on the surrogate a campaign would use for
that expensive level: the Delta-GP on averaged SOAP + cheap extras with LOO-calibrated
error bars, or, for our fragment-DFT landscapes, the fragment dimer GP of
``agent/surrogates/fragment_gp.py`` -- ``--surrogate soap`` forces the former) asks
for structures batch by batch; the replay reveals only the expensive energies of the
structures it asked for. We count the calculations made before all of the true
top-10 structures (by expensive-level energy) have been computed. The agent never
sees that stopping rule nor any uncomputed expensive energy.

Baselines in the same run: cheap-level energy order, random order (median over
seeds), oracle (= 10). Also the surrogate's MAE (kJ/mol per molecule) on the
not-yet-computed structures within 10 kJ/mol of the true minimum as the computed
fraction grows, against a constant-shift baseline (cheap energies plus the mean
delta of the computed structures). Costs given to the agent, and summed in
``relative_cost_until_top10``, scale as n_atoms^3 of the cell for periodic levels and
as the number of symmetry-unique dimers for fragment-DFT landscapes
(:func:`expected_costs`; normalised to mean 1); the counts are plain numbers of calculations. Also printed: where the stopping
rule P(top 10 complete) >= 0.9 (``completion_probability``) would have stopped the
agent and how many true top-10 it had by then, the GP's 2-sigma coverage, the cheap
rank of the top-10 structure found last, and the decision time per call.

Fragment-DFT landscapes (``dft_results.jsonl`` with per-dimer records beside the table, as
``data/landscapes/make_landscape.py --expensive dft`` writes them): the expensive energy is
D3(BJ) over the periodic cell + a point-charge Ewald sum (both computed here for every
structure, as a campaign does, :func:`fragment_data`) + a weighted sum of per-dimer
corrections E_int^DFT - E_pc, which the agent learns from the dimer records of the
structures it has computed -- each computed structure teaches it about ~5 dimers. Its inputs
also include GFN2-xTB, GFN1-xTB and D3(BJ) interaction energies of every dimer of the
landscape (:mod:`sim_backends.fragment_terms`), computed here too: about 0.1 s per structure on
one core, some 25 s for a 240-structure landscape, i.e. about one fragment DFT calculation
(~27 CPU s each) -- not included in the counts.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/refinement.py            # all known landscapes
    python benchmarks/refinement.py --landscape data/reference/landscapes/target_I \\
        --cheap MACE --expensive PBE_MBD --seeds 3 --batch 1 --batch 4
    python benchmarks/refinement.py --n-initial 6   # agent with a space-filling start
    python benchmarks/refinement.py --no-explore    # agent without exploration when confident
    python benchmarks/refinement.py --landscape data/landscapes/formamide_dft --cheap ff \
        --expensive dft --dimer-baselines none       # fragment dimer GP without the xTB/D3 baselines
    python benchmarks/refinement.py --landscape data/reference/landscapes/target_I \
        --cheap MACE --expensive PBE_MBD --ff-features ff_dv_percent  # + FF relaxation feature

``--ff-features`` appends columns of :func:`sim_backends.ff_relax.relaxation_features`
(W99 rigid-molecule relaxation of each cheap-level structure; read from
``<landscape>/<name>_ff_relax_<cheap>.csv`` when present, else computed, ~1 s per
structure) to the descriptor, and ``--ff-linear`` gives them a linear kernel too
(target_I with ``ff_dv_percent --ff-linear``: 37/40 calculations at q=1/4 vs 62/64, both measured
before exploration when confident became the default, which alone gives 19/20; it
hurts landscapes whose cheap level is this force field, see ``sim_backends/ff_relax.py``).
Results go to ``benchmarks/results/refinement.json`` for the default run over all known
landscapes, else to ``refinement_<landscape names>[_<ff features>[_linear]].json``; a
non-default ``--surrogate``, ``--dimer-baselines`` or exploration setting adds ``_<surrogate>``,
``_baselines-<names or none>`` and ``_no_explore`` / ``_explore<above>-<fraction>``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.landscape_io import LandscapeError, load_landscape  # noqa: E402
from agent.surrogates.fragment_gp import FragmentDeltaModel  # noqa: E402
from agent.refine_acquisition import (  # noqa: E402
    EXPLORE_ABOVE,
    EXPLORE_FRACTION,
    completion_probability,
    fit_delta_model,
    select_structures,
)
from agent.surrogates.structure_gp import extra_column_options  # noqa: E402
from sim_backends.descriptors import structure_features  # noqa: E402
from sim_backends.fragment_terms import DEFAULT_BASELINES  # noqa: E402

TOP_K = 10
WINDOW_KJMOL = 10.0
FRACTIONS = (0.05, 0.10, 0.20, 0.30, 0.50)
#: the agent "would stop" when it believes the low-energy set is complete with this
STOP_PROBABILITY = 0.9
DEFAULT = [(ROOT / "data/reference/landscapes/target_I", "MACE", "PBE_MBD")]


def known_landscapes() -> list[tuple[Path, str, str]]:
    """target_I plus every ``data/landscapes/NAME`` with a ``levels.json`` {cheap, expensive}."""
    out = list(DEFAULT)
    for meta in sorted((ROOT / "data/landscapes").glob("*/levels.json")):
        info = json.loads(meta.read_text())
        out.append((meta.parent, info["cheap"], info["expensive"]))
    return out


def count_until_top(order: list[int], top: set[int], n_missing: int = 0) -> int:
    """Calculations in ``order`` until all but ``n_missing`` of ``top`` are done."""
    seen: set[int] = set()
    for n, i in enumerate(order, 1):
        seen.add(i)
        if len(top & seen) >= len(top) - n_missing:
            return n
    return len(order)


def cost_until_top(order: list[int], top: set[int], costs: np.ndarray) -> float:
    """Summed relative cost of ``order`` up to the point where ``top`` is complete."""
    return float(np.sum(costs[order[: count_until_top(order, top)]]))


def recall_at(order: list[int], top: set[int], n: int) -> dict[float, int]:
    """How many of ``top`` are among the first ``ceil(f n)`` of ``order``, per fraction f."""
    return {f: len(top & set(order[: math.ceil(f * n)])) for f in FRACTIONS}


def replay_agent(e_cheap, e_exp, X, costs, q, seed, top, progress=None, n_initial=0,
                 decision_s=None, stop_log=None, gp_options=None, fragment=None,
                 explore=(EXPLORE_ABOVE, EXPLORE_FRACTION)):
    """Run the agent until ``top`` is computed.

    Returns:
        ``(order, stats)``: the computed indices in order, and per computed fraction
        the tuple of :func:`surrogate_mae`. Wall seconds of each ``select_structures``
        call are appended to ``decision_s`` when given. ``stop_log`` gets
        ``(n computed, true top members among them)`` at the first step where the
        agent's :func:`completion_probability` reaches ``STOP_PROBABILITY`` (where a
        campaign using it as a stopping rule would stop). ``gp_options``: keyword
        options of the agent's DeltaGP (e.g. ``n_passthrough`` for extra columns).
        ``fragment``: ``(terms, deltas)`` of :func:`fragment_data` -- the agent then uses the
        fragment dimer GP (:class:`~agent.surrogates.fragment_gp.FragmentDeltaModel`), which
        sees the dimer corrections of the structures it has computed only.
        ``explore``: ``(explore_above, explore_fraction)`` of
        :func:`~agent.refine_acquisition.select_structures` (``explore_above`` None: never
        space-filling).
    """
    if fragment is not None:
        X = FragmentDeltaModel.index_rows(len(e_cheap))
    n = len(e_cheap)
    low = np.flatnonzero(e_exp - e_exp.min() <= WINDOW_KJMOL)
    computed: dict[int, float] = {}
    order: list[int] = []
    mae: dict[float, tuple[float, ...]] = {}
    marks = {f: max(1, math.ceil(f * n)) for f in FRACTIONS}
    stop = None
    while not top <= set(computed):
        t0 = time.perf_counter()
        model = _agent_model(e_cheap, X, computed, seed, gp_options, fragment)
        batch = select_structures(
            e_cheap, X, computed, [], costs, q, seed, top_k=TOP_K, window_kjmol=WINDOW_KJMOL,
            n_initial=n_initial, model=model, explore_above=explore[0], explore_fraction=explore[1],
        )
        if decision_s is not None:
            decision_s.append(time.perf_counter() - t0)
        if stop is None and len(computed) >= TOP_K and completion_probability(
            e_cheap, X, computed, TOP_K, WINDOW_KJMOL, seed=seed, model=model
        ) >= STOP_PROBABILITY:
            stop = (len(computed), len(top & set(computed)))
        for i in batch:
            computed[i] = float(e_exp[i])
            order.append(i)
            for f, m in marks.items():
                if len(order) == m and f not in mae:
                    mae[f] = surrogate_mae(e_cheap, e_exp, X, computed, low, seed, gp_options, fragment)
        if progress is not None:
            progress()
    if stop_log is not None:
        stop_log.append(stop if stop is not None else (len(order), len(top)))
    return order, mae


def _agent_model(e_cheap, X, computed, seed, gp_options=None, fragment=None):
    """The agent's surrogate for the computed structures: the SOAP Delta-GP, or the fragment
    dimer GP when ``fragment`` data are given."""
    if fragment is None:
        return fit_delta_model(e_cheap, X, computed, seed=seed, gp_options=gp_options)
    terms, deltas = fragment
    return FragmentDeltaModel(terms, e_cheap, seed=seed).fit({i: deltas[i] for i in computed}, computed)


def fragment_data(path: Path, land, cheap: str, console, baselines=DEFAULT_BASELINES):
    """Fragment terms of every structure and the DFT dimer corrections, for landscapes
    whose expensive level is the two-body fragment DFT of ``dft-crystal``
    (``dft_results.jsonl`` with per-dimer records and ``run.json`` with the cutoff).

    The cheap terms (periodic D3(BJ) and the RESP point-charge Ewald sum) and the dimer
    descriptors are computed here from the cheap-level structures, as the agent would in
    a campaign; the DFT dimer records are what each expensive calculation returned.

    Returns:
        ``(terms, deltas)`` or None when the landscape has no fragment DFT records.
    """
    from rich.progress import Progress

    from sim_backends.fragment_terms import dimer_deltas, landscape_fragment_terms
    from sim_backends.structures import Crystal

    rec_path, run_path = Path(path) / "dft_results.jsonl", Path(path) / "run.json"
    if not rec_path.exists() or not run_path.exists():
        return None
    settings = json.loads(run_path.read_text()).get("expensive_settings", {})
    records = {}
    for line in rec_path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            records[r["id"]] = r
    if not all(i in records and records[i].get("dimers") for i in land.ids):
        return None
    with Progress(console=console, transient=True) as prog:
        task = prog.add_task(f"{land.name}: fragment terms (D3, point-charge Ewald, dimers)", total=len(land))
        terms = landscape_fragment_terms(
            [Crystal.from_atoms(a) for a in land.atoms[cheap]], float(settings.get("cutoff_A", 3.0)),
            str(settings.get("cutoff_mode", "contact")), str(settings.get("functional", "pbe")),
            progress=lambda: prog.advance(task), baselines=baselines)
    deltas = {k: dimer_deltas(t, records[sid]["dimers"]) for k, (sid, t) in enumerate(zip(land.ids, terms))}
    return terms, deltas


def surrogate_mae(e_cheap, e_exp, X, computed, low, seed, gp_options=None, fragment=None):
    """Surrogate quality on the uncomputed low-energy structures.

    Returns:
        ``(GP MAE, constant-shift MAE, fraction within the GP's 2-sigma interval,
        the GP's LOO calibration factor)``; MAEs in kJ/mol per molecule.
    """
    rest = np.array([i for i in low if i not in computed], dtype=int)
    if len(rest) == 0:
        return (float("nan"),) * 4
    gp = _agent_model(e_cheap, X, computed, seed, gp_options, fragment)
    if fragment is not None:
        X = FragmentDeltaModel.index_rows(len(e_cheap))
    mean, std = gp.predict(X[rest])
    idx = np.array(sorted(computed))
    shift = float(np.mean(e_exp[idx] - e_cheap[idx]))
    err = e_cheap[rest] + mean - e_exp[rest]
    return (
        float(np.mean(np.abs(err))),
        float(np.mean(np.abs(e_cheap[rest] + shift - e_exp[rest]))),
        float(np.mean(np.abs(err) <= 2.0 * std)),
        float(getattr(gp, "calibration", 1.0)),
    )


def expected_costs(path: Path, land) -> np.ndarray:
    """Relative cost of the expensive calculation per structure, known before running it.

    Fragment DFT landscapes (a ``n_unique_dimers`` column in ``*_landscape.csv``, made by
    ``data/landscapes/make_landscape.py``): proportional to the number of symmetry-unique
    dimers, a geometry-only count (Pearson r with the measured CPU time: 0.79 formamide,
    0.98 formic acid; with (atoms per cell)^3 it is -0.12 and -0.03). Otherwise periodic
    calculations: (atoms per cell)^3.
    """
    import csv

    table = next(Path(path).glob("*_landscape.csv"))
    with open(table, newline="") as fh:
        rows = {r["id"]: r for r in csv.DictReader(fh)}
    if all(rows.get(i, {}).get("n_unique_dimers") not in (None, "") for i in land.ids):
        d = np.array([float(rows[i]["n_unique_dimers"]) for i in land.ids])
        return d / d.mean()
    return (land.n_atoms() / land.n_atoms().mean()) ** 3


def ff_columns(path, land, cheap, names, console):
    """Columns ``names`` of the FF relaxation features of the cheap-level structures."""
    from rich.progress import Progress

    from sim_backends.ff_relax import FEATURE_NAMES, cache_path, cached_relaxation_features

    bad = sorted(set(names) - set(FEATURE_NAMES))
    if bad:
        raise LandscapeError(f"unknown --ff-features {bad}; choose from {list(FEATURE_NAMES)}")
    with Progress(console=console, transient=True) as prog:
        task = prog.add_task(f"{land.name}: FF relaxation features", total=len(land))
        feats = cached_relaxation_features(
            land.atoms[cheap], land.ids, cache_path(path, land.name, cheap),
            cache_key=f"{land.name}:{cheap}", progress=lambda: prog.advance(task),
        )
    return feats[:, [FEATURE_NAMES.index(k) for k in names]]


def run_landscape(path, cheap, expensive, seeds, batches, console, n_initial=0,
                  explore=(EXPLORE_ABOVE, EXPLORE_FRACTION),
                  ff_features=(), ff_linear=False, surrogate="auto", baselines=DEFAULT_BASELINES):
    from rich.progress import Progress
    from rich.table import Table

    land = load_landscape(path, cheap, expensive)
    e_cheap = land.energies_kjmol[cheap]
    e_exp = land.energies_kjmol[expensive]
    n = len(land)
    gp_options = None
    if ff_features:
        extra = ff_columns(path, land, cheap, ff_features, console)
        X = structure_features(land.atoms[cheap], land.n_molecules, e_cheap, extra_columns=extra)
        gp_options = extra_column_options(extra.shape[1], linear=ff_linear)
    else:
        X = structure_features(land.atoms[cheap], land.n_molecules, e_cheap)
    costs = expected_costs(path, land)
    fragment = None
    if surrogate in ("auto", "fragment") and not ff_features:
        fragment = fragment_data(path, land, cheap, console, baselines)
        if fragment is None and surrogate == "fragment":
            raise LandscapeError(f"{land.name}: no fragment DFT records (dft_results.jsonl with dimers, run.json)")
    top = set(np.argsort(e_exp, kind="stable")[:TOP_K].tolist())
    cheap_order = count_until_top(list(np.argsort(e_cheap, kind="stable")), top)
    random_orders = [list(np.random.default_rng(1000 + s).permutation(n)) for s in range(25)]
    random_counts = [count_until_top(o, top) for o in random_orders]
    cheap_list = list(np.argsort(e_cheap, kind="stable"))
    cost = {
        "agent": [],
        "cheap_order": cost_until_top(cheap_list, top, costs),
        "random": float(np.median([cost_until_top(o, top, costs) for o in random_orders])),
    }
    until_9 = {
        "agent": [],
        "cheap_order": count_until_top(cheap_list, top, 1),
        "random": float(np.median([count_until_top(o, top, 1) for o in random_orders])),
    }
    recall = {
        "cheap-level order": recall_at(list(np.argsort(e_cheap, kind="stable")), top, n),
        "random (median)": {
            f: float(np.median([recall_at(o, top, n)[f] for o in random_orders]))
            for f in FRACTIONS
        },
    }
    agent: dict[int, list[int]] = {}
    agent_recall: dict[int, list[dict[float, int]]] = {}
    maes: dict[float, list[tuple[float, ...]]] = {f: [] for f in FRACTIONS}
    decision_s: list[float] = []
    cheap_rank = np.argsort(np.argsort(e_cheap, kind="stable"), kind="stable")
    last_found: list[int] = []
    stops: list[tuple[int, int]] = []
    with Progress(console=console, transient=True) as prog:
        task = prog.add_task(f"{land.name} replays", total=None)
        for q in batches:
            for s in range(seeds):
                order, mae = replay_agent(
                    e_cheap, e_exp, X, costs, q, s, top, lambda: prog.advance(task),
                    n_initial=n_initial, decision_s=decision_s, explore=explore,
                    stop_log=stops if q == batches[0] else None, gp_options=gp_options,
                    fragment=fragment,
                )
                count = len(order)
                agent.setdefault(q, []).append(count)
                if q == batches[0]:
                    last_found.append(int(cheap_rank[order[count_until_top(order, top) - 1]]))
                    until_9["agent"].append(count_until_top(order, top, 1))
                    cost["agent"].append(cost_until_top(order, top, costs))
                agent_recall.setdefault(q, []).append(recall_at(order, top, n))
                if q == batches[0]:
                    for f, v in mae.items():
                        maes[f].append(v)
                console.log(f"{land.name} q={q} seed={s}: {count} calculations")
    table = Table(title=f"{land.name}: calculations until the true top {TOP_K} are computed "
                  f"({cheap} -> {expensive}, {n} structures)")
    for col in ("method", "median", "all runs", "ratio to cheap order"):
        table.add_column(col)
    table.add_row("oracle", str(TOP_K), "", f"{TOP_K / cheap_order:.2f}")
    table.caption = (f"until {TOP_K - 1} of the top {TOP_K}: agent q={batches[0]} "
                     f"{np.median(until_9['agent']):g}, cheap order {until_9['cheap_order']}, "
                     f"random {until_9['random']:g}, oracle {TOP_K - 1}")
    table.add_row("cheap-level order", str(cheap_order), "", "1.00")
    r_med = float(np.median(random_counts))
    table.add_row(f"random (median of {len(random_counts)})", f"{r_med:.0f}", "",
                  f"{r_med / cheap_order:.2f}")
    for q, counts in agent.items():
        table.add_row(f"agent q={q} ({seeds} seeds)", f"{np.median(counts):.0f}",
                      " ".join(map(str, counts)), f"{np.median(counts) / cheap_order:.2f}")
    console.print(table)
    rt = Table(title=f"{land.name}: true top-{TOP_K} structures found after computing a "
               "fraction of the landscape")
    rt.add_column("method")
    for f in FRACTIONS:
        rt.add_column(f"{f:.0%} ({math.ceil(f * n)})")
    rt.add_row("oracle", *[str(min(TOP_K, math.ceil(f * n))) for f in FRACTIONS])
    for name, rec in recall.items():
        rt.add_row(name, *[f"{rec[f]:g}" for f in FRACTIONS])
    for q, recs in agent_recall.items():
        rt.add_row(f"agent q={q} (median)",
                   *[f"{np.median([r[f] for r in recs]):g}" for f in FRACTIONS])
    console.print(rt)
    mt = Table(title=f"{land.name}: MAE (kJ/mol) on uncomputed structures within "
               f"{WINDOW_KJMOL:g} kJ/mol of the minimum, agent q={batches[0]}")
    for col in ("computed fraction", "n computed", "Delta-GP", "constant shift", "ratio",
                "within GP 2 sigma", "LOO calibration"):
        mt.add_column(col)
    for f in FRACTIONS:
        vals = [v for v in maes[f] if np.isfinite(v[0])]
        if not vals:
            continue
        gp_mae, base = np.median([v[0] for v in vals]), np.median([v[1] for v in vals])
        mt.add_row(f"{f:.0%}", str(max(1, math.ceil(f * n))), f"{gp_mae:.2f}",
                   f"{base:.2f}", f"{gp_mae / base:.2f}",
                   f"{np.median([v[2] for v in vals]):.0%}",
                   f"{np.median([v[3] for v in vals]):.2f}")
    console.print(mt)
    console.print(
        f"{land.name}: the top-{TOP_K} structure found last by the agent (q={batches[0]}) "
        f"has cheap-level rank {sorted(last_found)} (0 = lowest); decision time per "
        f"select_structures call: median {np.median(decision_s):.2f} s, max "
        f"{np.max(decision_s):.2f} s"
    )
    console.print(
        f"{land.name}: stopping rule P(top {TOP_K} complete) >= {STOP_PROBABILITY:g} "
        f"would stop the agent (q={batches[0]}) after "
        + ", ".join(f"{c} calculations with {k}/{TOP_K} found" for c, k in stops)
    )
    at10 = [v[0] for v in maes[0.10] if np.isfinite(v[0])]
    shift10 = [v[1] for v in maes[0.10] if np.isfinite(v[1])]
    cover10 = [v[2] for v in maes[0.10] if np.isfinite(v[2])]
    best_q = batches[0]
    return land.name, {
        "n_structures": n,
        "ff_features": list(ff_features),
        "ff_linear": bool(ff_linear),
        "surrogate": "fragment-dimer-gp" if fragment is not None else "soap-delta-gp",
        "dimer_baselines": list(baselines) if fragment is not None else [],
        "agent": float(np.median(agent[best_q])),
        "agent_by_batch": {str(q): float(np.median(c)) for q, c in agent.items()},
        "cheap_order": cheap_order,
        "random": float(np.median(random_counts)),
        "oracle": TOP_K,
        "mae_at_10pct_kjmol": round(float(np.median(at10)), 3) if at10 else None,
        "shift_mae_at_10pct_kjmol": round(float(np.median(shift10)), 3) if shift10 else None,
        "within_2sigma_at_10pct": round(float(np.median(cover10)), 3) if cover10 else None,
        "last_found_cheap_rank": float(np.median(last_found)),
        "decision_s_median": round(float(np.median(decision_s)), 3),
        "stop_at_p90": {
            "calculations": float(np.median([c for c, _ in stops])),
            "top10_found": float(np.median([k for _, k in stops])),
        },
        "relative_cost_until_top10": {
            k: round(float(np.median(v)), 2) for k, v in cost.items()
        },
        "until_9_of_10": {**until_9, "agent": float(np.median(until_9["agent"]))},
        "top10_found_at_20pct": {
            "agent": float(np.median([r[0.20] for r in agent_recall[best_q]])),
            "cheap_order": recall["cheap-level order"][0.20],
            "random": recall["random (median)"][0.20],
        },
    }


def main(argv: list[str] | None = None) -> dict:
    from rich.console import Console

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--landscape", action="append", type=Path)
    parser.add_argument("--cheap", action="append")
    parser.add_argument("--expensive", action="append")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch", action="append", type=int)
    parser.add_argument("--n-initial", type=int, default=0,
                        help="space-filling initial design size of the agent (default 0: none)")
    parser.add_argument("--explore-above", type=float, default=EXPLORE_ABOVE,
                        help="agent: all/some picks space-filling once P(top k complete) reaches this "
                             f"(select_structures' explore_above; default {EXPLORE_ABOVE})")
    parser.add_argument("--explore-fraction", type=float, default=EXPLORE_FRACTION,
                        help=f"share of space-filling picks while confident (default {EXPLORE_FRACTION})")
    parser.add_argument("--no-explore", action="store_true",
                        help="agent: never space-filling when confident (explore_above=None)")
    parser.add_argument("--ff-features", default="",
                        help="comma-separated sim_backends.ff_relax.FEATURE_NAMES to append to "
                             "the descriptor (default: none)")
    parser.add_argument("--ff-linear", action="store_true",
                        help="also give the --ff-features columns a linear kernel")
    parser.add_argument("--surrogate", choices=("auto", "soap", "fragment"), default="auto",
                        help="agent surrogate: the fragment dimer GP where the landscape has fragment DFT "
                        "records (auto, default), always the SOAP Delta-GP (soap), or require fragment")
    parser.add_argument("--dimer-baselines", default=",".join(DEFAULT_BASELINES),
                        help="comma-separated dimer baselines of the fragment dimer GP "
                        f"(sim_backends.fragment_terms; default {','.join(DEFAULT_BASELINES)}; 'none' for none)")
    args = parser.parse_args(argv)
    baselines = tuple(b for b in args.dimer_baselines.split(",") if b and b != "none")
    if unknown := set(baselines) - set(DEFAULT_BASELINES):
        parser.error(f"unknown --dimer-baselines {', '.join(sorted(unknown))}; known: {', '.join(DEFAULT_BASELINES)}")
    if not 0.0 < args.explore_above <= 1.0 or not 0.0 <= args.explore_fraction <= 1.0:
        parser.error("--explore-above must be in (0, 1] and --explore-fraction in [0, 1]")
    if args.landscape:
        n = len(args.landscape)
        if len(args.cheap or []) != n or len(args.expensive or []) != n:
            parser.error("give --cheap and --expensive once per --landscape")
        cases = list(zip(args.landscape, args.cheap, args.expensive))
    else:
        cases = known_landscapes()
    batches = args.batch or [1, 4]
    console = Console()
    warnings.filterwarnings("ignore")
    ff_features = tuple(k for k in args.ff_features.split(",") if k)
    out: dict = {"benchmark": "refinement", "top_k": TOP_K, "seeds": args.seeds,
                 "batches": batches, "n_initial": args.n_initial, "landscapes": {}}
    explore = (None, args.explore_fraction) if args.no_explore else (args.explore_above, args.explore_fraction)
    out["explore"] = {"above": explore[0], "fraction": explore[1]}
    for path, cheap, expensive in cases:
        name, res = run_landscape(path, cheap, expensive, args.seeds, batches, console,
                                  n_initial=args.n_initial, ff_features=ff_features,
                                  explore=explore,
                                  ff_linear=args.ff_linear, surrogate=args.surrogate, baselines=baselines)
        out["landscapes"][name] = res
    line = json.dumps(out)
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    stem = "refinement"
    if args.landscape:  # a chosen subset must not overwrite the all-landscapes result
        stem += "_" + "_".join(out["landscapes"])
    if ff_features:
        stem += "_" + "+".join(ff_features) + ("_linear" if args.ff_linear else "")
    if args.surrogate != "auto":
        stem += f"_{args.surrogate}"
    if baselines != DEFAULT_BASELINES:
        stem += "_baselines-" + ("+".join(baselines) or "none")
    if args.no_explore:
        stem += "_no_explore"
    elif explore != (EXPLORE_ABOVE, EXPLORE_FRACTION):
        stem += f"_explore{explore[0]:g}-{explore[1]:g}"
    (results / f"{stem}.json").write_text(line + "\n")
    print(line)
    return out


if __name__ == "__main__":
    from sim_backends.base import SetupError

    try:
        main()
    except (LandscapeError, SetupError) as exc:
        sys.exit(f"refinement: error: {exc}")
