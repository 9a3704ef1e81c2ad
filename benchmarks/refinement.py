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

What drives the agent: :func:`run_agent`, a replay of the structure stage's decision
(surrogate fitted on the computed structures, then ``select_structures`` with the campaign's
defaults). It does not yet drive the real Campaign through a structure-keyed replay backend
(the Stage refactor of issue 15 is in progress); :func:`run_agent` is the one function to
replace when it lands.

Baselines in the same run: cheap-level energy order, random order (median of 25 seeds),
oracle (= 10). One summary table over all landscapes (7 seeds, q = 1 and 4 by default):
medians and ranges, the ratio agent / min(cheap order, random), and, where the landscape
stores per-structure CPU seconds, the expensive-level CPU seconds until the top 10 are
complete -- the agent's including the CPU seconds this process spent on the fragment
baselines and cheap terms (xTB/D3 dimer energies, periodic D3, point-charge Ewald) that
its surrogate needs. Also the surrogate's MAE (kJ/mol per molecule) on the
not-yet-computed structures within 10 kJ/mol of the true minimum as the computed
fraction grows, against a constant-shift baseline, and how often the skill test passed.
Costs given to the agent, and summed in ``relative_cost_until_top10``, scale as n_atoms^3
of the cell for periodic levels and as the number of symmetry-unique dimers for
fragment-DFT landscapes (:func:`expected_costs`; normalised to mean 1).

Stopping-rule calibration: at every decision with at least 10 computed, each run records
P(top 10 complete) (``completion_probability``) for the spread inflations
:data:`STOP_INFLATIONS`; the rule "stop when P >= p" is kept when the true top 10 is
complete at the first decision where it fires. The table gives, per landscape and pooled
over all runs, the share of runs for which that held: the promise is kept when the share
is at least p.

``--grid`` replays, beside the agent, the agent without the skill test and the agent
without exploration when confident (first batch size, ``--grid-seeds`` seeds; fitted
surrogates are shared between settings that reach the same computed set) and reports
leave-one-landscape-out choices: for each landscape the setting with the best mean
log(agent / min(cheap, random)) on all the others, measured on it, next to its in-sample
best; and the smallest stop inflation that kept the 0.9 promise on the others.
Independent runs (e.g. one landscape per process) are merged with ``--combine``.

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

    OMP_NUM_THREADS=1 python benchmarks/refinement.py --grid     # all known landscapes
    # or one process per landscape, then merge (writes refinement.json when complete):
    python benchmarks/refinement.py --grid --landscape data/landscapes/formamide_dft --cheap ff --expensive dft
    python benchmarks/refinement.py --combine benchmarks/results/refinement_*_grid.json
    python benchmarks/refinement.py --landscape data/reference/landscapes/target_I \
        --cheap MACE --expensive PBE_MBD --seeds 3 --batch 1 --batch 4
    python benchmarks/refinement.py --no-skill-test   # the surrogate always steers
    python benchmarks/refinement.py --no-explore      # agent without exploration when confident
    python benchmarks/refinement.py --landscape data/landscapes/formamide_dft --cheap ff \
        --expensive dft --dimer-baselines none       # fragment dimer GP without the xTB/D3 baselines

``--ff-features`` appends columns of :func:`sim_backends.ff_relax.relaxation_features`
(W99 rigid-molecule relaxation of each cheap-level structure; read from
``<landscape>/<name>_ff_relax_<cheap>.csv`` when present, else computed, ~1 s per
structure) to the descriptor, and ``--ff-linear`` gives them a linear kernel too
(target_I with ``ff_dv_percent --ff-linear``: 37/40 calculations at q=1/4 vs 62/64, both measured
before exploration when confident became the default, which alone gives 19/20; it
hurts landscapes whose cheap level is this force field, see ``sim_backends/ff_relax.py``).
Results go to ``benchmarks/results/refinement.json`` for the default run over all known
landscapes, else to ``refinement_<landscape names>[_<ff features>[_linear]].json``; a
non-default ``--surrogate``, ``--dimer-baselines``, exploration, skill test, initial design,
seeds or batch sizes adds ``_<surrogate>``, ``_baselines-<names or none>``, ``_no_explore`` /
``_explore<above>-<fraction>``, ``_no_skill_test`` / ``_skill<ratio>``, ``_init<N>``,
``_seeds<N>``, ``_q<batches>``, and ``--grid`` adds ``_grid``. ``--combine`` writes
``refinement.json`` when the merged files cover every known landscape with the default
settings, else ``refinement_combined.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.landscape_io import LandscapeError, load_landscape  # noqa: E402
from agent.surrogates.fragment_gp import FragmentDeltaModel  # noqa: E402
from agent.refine_acquisition import (  # noqa: E402
    EXPLORE_ABOVE,
    EXPLORE_FRACTION,
    SKILL_RATIO,
    STOP_INFLATION,
    completion_probability,
    fit_delta_model,
    select_structures,
    surrogate_skill,
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


#: spread factors of completion_probability measured in every run (stopping-rule calibration)
STOP_INFLATIONS = (1.0, 1.5, 2.0)
#: promised probabilities whose achieved rate is reported
STOP_LEVELS = (0.5, 0.8, 0.9, 0.95)


@dataclass(frozen=True)
class AgentSettings:
    """The acquisition settings one agent run uses (a grid point of ``--grid``)."""

    skill_ratio: float | None = SKILL_RATIO
    explore_above: float | None = EXPLORE_ABOVE
    explore_fraction: float = EXPLORE_FRACTION
    n_initial: int = 0

    @property
    def label(self) -> str:
        gate = "no skill test" if self.skill_ratio is None else f"skill<={self.skill_ratio:g}"
        expl = "no explore" if self.explore_above is None else f"explore {self.explore_above:g}/{self.explore_fraction:g}"
        return f"{gate}, {expl}" + (f", init {self.n_initial}" if self.n_initial else "")


class ModelCache:
    """Fitted surrogates keyed by the computed set: runs with other settings that reach
    the same computed set reuse the fit (the fit depends on the data and seed only, not on
    the acquisition settings), which makes a settings grid cost little more than one run
    where the trajectories agree. One seed and batch size at a time (``clear``)."""

    def __init__(self, e_cheap, X, seed, gp_options=None, fragment=None):
        self.args = (e_cheap, X, seed, gp_options, fragment)
        self.models: dict[tuple[int, ...], object] = {}

    def get(self, computed):
        key = tuple(sorted(computed))
        if key not in self.models:
            e_cheap, X, seed, gp_options, fragment = self.args
            self.models[key] = _agent_model(e_cheap, X, computed, seed, gp_options, fragment)
        return self.models[key]


def run_agent(e_cheap, e_exp, X, costs, q, seed, top, settings=AgentSettings(), progress=None,
              gp_options=None, fragment=None, cache=None, with_mae=True):
    """One agent run until the true ``top`` set is computed: the replay loop.

    This is the one function that stands for "the agent" in this benchmark (the
    structure stage's decision: surrogate fit on the computed structures, then
    :func:`~agent.refine_acquisition.select_structures` with the campaign's defaults);
    driving the real Campaign through a structure-keyed replay backend replaces its body.

    Returns:
        dict with ``order`` (computed indices in order), ``mae`` (per computed fraction the
        tuple of :func:`surrogate_mae`; empty unless ``with_mae``), ``decision_s`` (wall s
        per decision), ``n_at`` (computed count at each decision), ``p_complete``
        (inflation -> P(top 10 complete) at each decision with >= TOP_K computed, None
        before) and ``skill`` (model / shift LOO MAE ratio at each decision, None when
        undefined).
    """
    if fragment is not None:
        X = FragmentDeltaModel.index_rows(len(e_cheap))
    cache = cache or ModelCache(e_cheap, X, seed, gp_options, fragment)
    n = len(e_cheap)
    low = np.flatnonzero(e_exp - e_exp.min() <= WINDOW_KJMOL)
    computed: dict[int, float] = {}
    out = {"order": [], "mae": {}, "decision_s": [], "n_at": [], "skill": [],
           "p_complete": {k: [] for k in STOP_INFLATIONS}}
    marks = {f: max(1, math.ceil(f * n)) for f in FRACTIONS}
    while not top <= set(computed):
        t0 = time.perf_counter()
        model = cache.get(computed)
        batch = select_structures(
            e_cheap, X, computed, [], costs, q, seed, top_k=TOP_K, window_kjmol=WINDOW_KJMOL,
            n_initial=settings.n_initial, model=model, explore_above=settings.explore_above,
            explore_fraction=settings.explore_fraction, skill_ratio=settings.skill_ratio,
        )
        out["decision_s"].append(time.perf_counter() - t0)
        out["n_at"].append(len(computed))
        out["skill"].append(surrogate_skill(model, e_cheap, computed).ratio if computed else None)
        ps = (completion_probability(e_cheap, X, computed, TOP_K, WINDOW_KJMOL, seed=seed, model=model,
                                     skill_ratio=settings.skill_ratio, inflation=list(STOP_INFLATIONS))
              if len(computed) >= TOP_K else [None] * len(STOP_INFLATIONS))
        for k, p in zip(STOP_INFLATIONS, ps):
            out["p_complete"][k].append(p)
        for i in batch:
            computed[i] = float(e_exp[i])
            out["order"].append(i)
            for f, m in marks.items():
                if with_mae and len(out["order"]) == m and f not in out["mae"]:
                    out["mae"][f] = surrogate_mae(e_cheap, e_exp, X, computed, low, seed, gp_options,
                                                  fragment, cache, settings.skill_ratio)
        if progress is not None:
            progress()
    return out


def premature_stop(run, level, inflation):
    """Calculations at which the rule P(complete) >= ``level`` stops ``run`` before the true
    top set is complete, or None (every recorded decision precedes completion)."""
    for n_at, p in zip(run["n_at"], run["p_complete"][inflation]):
        if p is not None and p >= level:
            return n_at
    return None


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
        ``(terms, deltas, cpu_s)`` (``cpu_s``: CPU seconds of this process computing the
        terms, i.e. the agent's overhead for the fragment baselines and cheap terms), or
        None when the landscape has no fragment DFT records.
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
    c0 = time.process_time()
    with Progress(console=console, transient=True) as prog:
        task = prog.add_task(f"{land.name}: fragment terms (D3, point-charge Ewald, dimers)", total=len(land))
        terms = landscape_fragment_terms(
            [Crystal.from_atoms(a) for a in land.atoms[cheap]], float(settings.get("cutoff_A", 3.0)),
            str(settings.get("cutoff_mode", "contact")), str(settings.get("functional", "pbe")),
            progress=lambda: prog.advance(task), baselines=baselines)
    cpu_s = time.process_time() - c0
    deltas = {k: dimer_deltas(t, records[sid]["dimers"]) for k, (sid, t) in enumerate(zip(land.ids, terms))}
    return terms, deltas, cpu_s


def surrogate_mae(e_cheap, e_exp, X, computed, low, seed, gp_options=None, fragment=None,
                  cache=None, skill_ratio=SKILL_RATIO):
    """Surrogate quality on the uncomputed low-energy structures.

    Returns:
        ``(GP MAE, constant-shift MAE, fraction within the GP's 2-sigma interval,
        the GP's LOO calibration factor, 1.0 if the GP passes the skill test else 0.0)``;
        MAEs in kJ/mol per molecule.
    """
    rest = np.array([i for i in low if i not in computed], dtype=int)
    if len(rest) == 0:
        return (float("nan"),) * 5
    gp = cache.get(computed) if cache is not None else _agent_model(e_cheap, X, computed, seed,
                                                                    gp_options, fragment)
    if fragment is not None:
        X = FragmentDeltaModel.index_rows(len(e_cheap))
    mean, std = gp.predict(X[rest])
    idx = np.array(sorted(computed))
    shift = float(np.mean(e_exp[idx] - e_cheap[idx]))
    err = e_cheap[rest] + mean - e_exp[rest]
    skilled = skill_ratio is None or surrogate_skill(gp, e_cheap, computed, skill_ratio).skilled
    return (
        float(np.mean(np.abs(err))),
        float(np.mean(np.abs(e_cheap[rest] + shift - e_exp[rest]))),
        float(np.mean(np.abs(err) <= 2.0 * std)),
        float(getattr(gp, "calibration", 1.0)),
        float(skilled),
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


def measured_cpu_s(path: Path, land) -> np.ndarray | None:
    """Stored CPU seconds of each structure's expensive calculation (``cpu_s`` column of
    ``*_landscape.csv``, as ``make_landscape.py`` writes it), or None."""
    import csv

    table = next(Path(path).glob("*_landscape.csv"))
    with open(table, newline="") as fh:
        rows = {r["id"]: r for r in csv.DictReader(fh)}
    if not all(rows.get(i, {}).get("cpu_s") not in (None, "") for i in land.ids):
        return None
    return np.array([float(rows[i]["cpu_s"]) for i in land.ids])


def run_landscape(path, cheap, expensive, seeds, batches, console, configs=(AgentSettings(),),
                  ff_features=(), ff_linear=False, surrogate="auto", baselines=DEFAULT_BASELINES,
                  grid_seeds=None, progress_path=None, recorded_only=False):
    """Replay every setting of ``configs`` (the first is the reported agent) on one landscape.

    Returns:
        ``(name, result dict)``; ``result["grid"]`` holds, per setting label and batch size,
        the calculation counts per seed (settings after the first: the first ``grid_seeds``
        seeds only; ``result["grid_seeds"]``). ``progress_path``: a JSONL file that gets one
        line per finished run and is read first, so a rerun resumes; ``recorded_only``:
        replay nothing, report the runs recorded there (a partial result says so in
        ``agent_runs``).
    """
    from rich.markup import escape
    from rich.progress import Progress
    from rich.table import Table

    land = load_landscape(path, cheap, expensive)
    e_cheap = land.energies_kjmol[cheap]
    e_exp = land.energies_kjmol[expensive]
    n = len(land)
    gp_options = None
    if recorded_only:
        X = None  # nothing is replayed
    elif ff_features:
        extra = ff_columns(path, land, cheap, ff_features, console)
        X = structure_features(land.atoms[cheap], land.n_molecules, e_cheap, extra_columns=extra)
        gp_options = extra_column_options(extra.shape[1], linear=ff_linear)
    else:
        X = structure_features(land.atoms[cheap], land.n_molecules, e_cheap)
    costs = expected_costs(path, land)
    cpu = measured_cpu_s(path, land)
    recorded: dict[tuple[str, int, int], dict] = {}
    meta: dict = {}
    if progress_path is not None and Path(progress_path).exists():
        for line in Path(progress_path).read_text().splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            if rec.get("landscape") != land.name:
                continue
            if rec.get("meta"):
                meta = rec
                continue
            rec["p_complete"] = {float(k): v for k, v in rec["p_complete"].items()}
            rec["mae"] = {float(k): tuple(v) for k, v in rec["mae"].items()}
            recorded[(rec["settings"], rec["q"], rec["seed"])] = rec
    fragment, baseline_cpu_s = None, float(meta.get("baseline_cpu_s", 0.0))
    if recorded_only and meta:
        pass  # nothing to replay: the fragment terms' CPU seconds were recorded with the runs
    elif surrogate in ("auto", "fragment") and not ff_features:
        data = fragment_data(path, land, cheap, console, baselines)
        if data is None and surrogate == "fragment":
            raise LandscapeError(f"{land.name}: no fragment DFT records (dft_results.jsonl with dimers, run.json)")
        if data is not None:
            fragment, baseline_cpu_s = data[:2], float(data[2])
        meta = {"landscape": land.name, "meta": True, "baseline_cpu_s": baseline_cpu_s,
                "surrogate": "fragment-dimer-gp" if fragment is not None else "soap-delta-gp"}
        if progress_path is not None:
            with open(progress_path, "a") as fh:
                fh.write(json.dumps(meta) + "\n")
    top = set(np.argsort(e_exp, kind="stable")[:TOP_K].tolist())
    cheap_list = [int(i) for i in np.argsort(e_cheap, kind="stable")]
    cheap_order = count_until_top(cheap_list, top)
    random_orders = [list(np.random.default_rng(1000 + s).permutation(n)) for s in range(25)]
    random_counts = [count_until_top(o, top) for o in random_orders]
    r_med = float(np.median(random_counts))

    def cpu_until(order):
        return float(np.sum(cpu[order[: count_until_top(order, top)]])) if cpu is not None else None

    default = configs[0]
    runs: dict[str, dict[int, list[dict]]] = {c.label: {q: [] for q in batches} for c in configs}
    with Progress(console=console, transient=True) as prog:
        task = prog.add_task(f"{land.name} replays", total=None)
        for s in range(seeds):  # seed-major, so a partial run has both batch sizes for its seeds
            cache = ModelCache(e_cheap, X, s, gp_options, fragment)  # fits depend on data and seed only
            for q in batches:
                for c in configs:
                    if c != configs[0] and (q != batches[0] or (grid_seeds is not None and s >= grid_seeds)):
                        continue  # the grid's other settings: first batch size, first seeds
                    if (c.label, q, s) in recorded:
                        runs[c.label][q].append(recorded[(c.label, q, s)])
                        continue
                    if recorded_only:
                        continue
                    run = run_agent(e_cheap, e_exp, X, costs, q, s, top, c, lambda: prog.advance(task),
                                    gp_options, fragment, cache, with_mae=(c == default and q == batches[0]))
                    run["count"] = count_until_top(run["order"], top)
                    run["cpu_s"] = cpu_until(run["order"])
                    run["last_found_cheap_rank"] = cheap_list.index(run["order"][run["count"] - 1])
                    runs[c.label][q].append(run)
                    if progress_path is not None:
                        with open(progress_path, "a") as fh:
                            fh.write(json.dumps({**run, "landscape": land.name, "settings": c.label, "q": q,
                                                 "seed": s, "order": [int(i) for i in run["order"]],
                                                 "p_complete": {str(k): v for k, v in run["p_complete"].items()},
                                                 "mae": {str(k): v for k, v in run["mae"].items()}}) + "\n")
                    console.log(escape(f"{land.name} q={q} seed={s} [{c.label}]: {run['count']} calculations"))
    dflt = runs[default.label]
    q0 = batches[0]
    if not dflt[q0]:
        return land.name, None
    batches = [q for q in batches if dflt[q]]  # a partial (recorded-only) result: what was run
    best = min(cheap_order, r_med)
    table = Table(title=escape(f"{land.name}: calculations until the true top {TOP_K} are computed "
                               f"({cheap} -> {expensive}, {n} structures), agent [{default.label}]"))
    for col in ("method", "median", "all runs", "ratio to min(cheap, random)"):
        table.add_column(col)
    table.add_row("oracle", str(TOP_K), "", f"{TOP_K / best:.2f}")
    table.add_row("cheap-level order", str(cheap_order), "", f"{cheap_order / best:.2f}")
    table.add_row(f"random (median of {len(random_counts)})", f"{r_med:.0f}", "", f"{r_med / best:.2f}")
    for q in batches:
        counts = [r["count"] for r in dflt[q]]
        table.add_row(f"agent q={q} ({seeds} seeds)", f"{np.median(counts):.0f}",
                      " ".join(map(str, counts)), f"{np.median(counts) / best:.2f}")
    console.print(table)
    maes = {f: [r["mae"][f] for r in dflt[q0] if f in r["mae"]] for f in FRACTIONS}
    mt = Table(title=f"{land.name}: MAE (kJ/mol) on uncomputed structures within "
               f"{WINDOW_KJMOL:g} kJ/mol of the minimum, agent q={q0}")
    for col in ("computed fraction", "n computed", "surrogate", "constant shift", "ratio",
                "within 2 sigma", "LOO calibration", "skill test passed"):
        mt.add_column(col)
    for f in FRACTIONS:
        vals = [v for v in maes[f] if np.isfinite(v[0])]
        if not vals:
            continue
        gp_mae, base = np.median([v[0] for v in vals]), np.median([v[1] for v in vals])
        mt.add_row(f"{f:.0%}", str(max(1, math.ceil(f * n))), f"{gp_mae:.2f}", f"{base:.2f}",
                   f"{gp_mae / base:.2f}", f"{np.median([v[2] for v in vals]):.0%}",
                   f"{np.median([v[3] for v in vals]):.2f}", f"{np.mean([v[4] for v in vals]):.0%} of runs")
    console.print(mt)
    all_default = [r for q in batches for r in dflt[q]]
    decision_s = [t for r in all_default for t in r["decision_s"]]
    at10 = [v for v in maes[0.10] if np.isfinite(v[0])]
    calib = {}
    for k in STOP_INFLATIONS:
        for lvl in STOP_LEVELS:
            stops = [premature_stop(r, lvl, k) for r in all_default]
            calib[f"{k:g}@{lvl:g}"] = {"runs": len(stops),
                                      "complete_at_stop": sum(x is None for x in stops),
                                      "premature_stop_at": [x for x in stops if x is not None]}
    grid = {c.label: {str(q): [r["count"] for r in runs[c.label][q]] for q in batches} for c in configs}
    agent_cpu = [r["cpu_s"] for r in dflt[q0] if r["cpu_s"] is not None]
    return land.name, {
        "levels": f"{cheap} -> {expensive}",
        "n_structures": n,
        "ff_features": list(ff_features),
        "ff_linear": bool(ff_linear),
        "surrogate": meta.get("surrogate", "soap-delta-gp"),
        "dimer_baselines": list(baselines) if meta.get("surrogate") == "fragment-dimer-gp" else [],
        "settings": default.label,
        "agent": float(np.median([r["count"] for r in dflt[q0]])),
        "agent_by_batch": {str(q): float(np.median([r["count"] for r in dflt[q]])) for q in batches},
        "agent_runs": {str(q): [r["count"] for r in dflt[q]] for q in batches},
        "cheap_order": cheap_order,
        "random": r_med,
        "oracle": TOP_K,
        "ratio_to_best_baseline": {str(q): round(float(np.median([r["count"] for r in dflt[q]])) / best, 3)
                                   for q in batches},
        "expensive_cpu_s_until_top10": None if cpu is None else {
            "agent": round(float(np.median(agent_cpu)), 1),
            "agent_incl_baselines": round(float(np.median(agent_cpu)) + baseline_cpu_s, 1),
            "cheap_order": round(cpu_until(cheap_list), 1),
            "random": round(float(np.median([cpu_until(o) for o in random_orders])), 1)},
        "baseline_cpu_s": round(baseline_cpu_s, 1),
        "relative_cost_until_top10": {
            "agent": round(float(np.median([cost_until_top(r["order"], top, costs) for r in dflt[q0]])), 2),
            "cheap_order": round(cost_until_top(cheap_list, top, costs), 2),
            "random": round(float(np.median([cost_until_top(o, top, costs) for o in random_orders])), 2)},
        "mae_at_10pct_kjmol": round(float(np.median([v[0] for v in at10])), 3) if at10 else None,
        "shift_mae_at_10pct_kjmol": round(float(np.median([v[1] for v in at10])), 3) if at10 else None,
        "within_2sigma_at_10pct": round(float(np.median([v[2] for v in at10])), 3) if at10 else None,
        "last_found_cheap_rank": float(np.median([r["last_found_cheap_rank"] for r in dflt[q0]])),
        "decision_s_median": round(float(np.median(decision_s)), 3),
        "stop_calibration": calib,
        "grid": grid,
        "grid_seeds": grid_seeds if len(configs) > 1 else None,
    }


def leave_one_landscape_out(results: dict, configs, batches) -> dict:
    """Settings chosen on all other landscapes, measured on the held-out one.

    Score of a setting on a landscape: log(agent median / min(cheap order, random)) at the
    first batch size (the one the grid replays); the chosen setting minimises the mean score
    over the other landscapes.
    The stop inflation: the smallest of :data:`STOP_INFLATIONS` whose rule "P >= 0.9" left
    the top set complete in at least 90 % of the other landscapes' runs (pooled).
    """
    names = list(results)
    results = {m: results[m] for m in names}

    def counts(name, label, q):  # the seeds every setting ran
        grid = results[name]["grid"]
        n_common = min(len(v.get(str(q), [])) for v in grid.values())
        return grid[label][str(q)][:n_common]

    names = [m for m in names if counts(m, configs[0].label, batches[0])]

    def score(label, name):
        r = results[name]
        best = min(r["cheap_order"], r["random"])
        return float(np.log(np.median(counts(name, label, batches[0])) / best))

    def achieved(k, pool):
        cells = [results[m]["stop_calibration"][f"{k:g}@0.9"] for m in pool]
        return sum(c["complete_at_stop"] for c in cells) / max(1, sum(c["runs"] for c in cells))

    out = {}
    for held in names:
        others = [m for m in names if m != held]
        if not others:
            break
        chosen = min(configs, key=lambda c: (np.mean([score(c.label, m) for m in others]), configs.index(c)))
        in_sample = min(configs, key=lambda c: (score(c.label, held), configs.index(c)))
        kappa = next((k for k in STOP_INFLATIONS if achieved(k, others) >= 0.9), STOP_INFLATIONS[-1])
        r = results[held]
        out[held] = {
            "chosen": chosen.label,
            "agent_lolo": {str(q): float(np.median(counts(held, chosen.label, q))) for q in batches[:1]},
            "in_sample_best": in_sample.label,
            "agent_in_sample": {str(q): float(np.median(counts(held, in_sample.label, q))) for q in batches[:1]},
            "default_same_seeds": {str(q): float(np.median(counts(held, configs[0].label, q))) for q in batches[:1]},
            "stop_inflation_lolo": kappa,
            "stop_achieved_lolo": round(achieved(kappa, [held]), 3),
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--landscape", action="append", type=Path)
    parser.add_argument("--cheap", action="append")
    parser.add_argument("--expensive", action="append")
    parser.add_argument("--seeds", type=int, default=7)
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
    parser.add_argument("--skill-ratio", type=float, default=SKILL_RATIO,
                        help=f"agent: skill test threshold (default {SKILL_RATIO})")
    parser.add_argument("--no-skill-test", action="store_true",
                        help="agent: the surrogate always steers (skill_ratio=None)")
    parser.add_argument("--grid", action="store_true",
                        help="also replay the agent without the skill test and without exploration when "
                             "confident, and choose settings by leave-one-landscape-out")
    parser.add_argument("--grid-seeds", type=int, default=3,
                        help="seeds of the grid's other settings (default 3; the agent runs --seeds)")
    parser.add_argument("--recorded-only", action="store_true",
                        help="replay nothing: report the runs recorded in the progress file "
                             "(benchmarks/results/<result name>_progress.jsonl) of the same command")
    parser.add_argument("--combine", nargs="+", type=Path, metavar="JSON",
                        help="compute nothing: merge result files of this benchmark (one landscape "
                             "each, e.g. run in parallel), print the tables and leave-one-landscape-out")
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
    if not args.skill_ratio > 0:
        parser.error("--skill-ratio must be positive")
    if args.seeds < 1 or args.n_initial < 0:
        parser.error("--seeds must be >= 1 and --n-initial >= 0")
    if args.landscape:
        n = len(args.landscape)
        if len(args.cheap or []) != n or len(args.expensive or []) != n:
            parser.error("give --cheap and --expensive once per --landscape")
        cases = list(zip(args.landscape, args.cheap, args.expensive))
    else:
        cases = known_landscapes()
    batches = args.batch or [1, 4]
    if any(q < 1 for q in batches):
        parser.error("--batch must be >= 1")
    console = Console(width=250)
    warnings.filterwarnings("ignore")
    ff_features = tuple(k for k in args.ff_features.split(",") if k)
    explore = (None, args.explore_fraction) if args.no_explore else (args.explore_above, args.explore_fraction)
    agent = AgentSettings(None if args.no_skill_test else args.skill_ratio, explore[0], explore[1], args.n_initial)
    configs = [agent]
    if args.combine:
        return combine(args.combine, console)
    if args.grid:  # the agent before the skill test, and the agent without exploration
        for ratio, ex in ((None, (EXPLORE_ABOVE, EXPLORE_FRACTION)), (SKILL_RATIO, (None, EXPLORE_FRACTION))):
            c = AgentSettings(ratio, ex[0], ex[1], args.n_initial)
            if c not in configs:
                configs.append(c)
    out: dict = {"benchmark": "refinement", "top_k": TOP_K, "seeds": args.seeds,
                 "batches": batches, "n_initial": args.n_initial, "settings": agent.label,
                 "explore": {"above": explore[0], "fraction": explore[1]},
                 "skill_ratio": agent.skill_ratio, "landscapes": {}}
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    stem = "refinement"
    if args.landscape:  # a chosen subset must not overwrite the all-landscapes result
        stem += "_" + "_".join(load_landscape(p, c, e).name for p, c, e in cases)
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
    if args.no_skill_test:
        stem += "_no_skill_test"
    elif args.skill_ratio != SKILL_RATIO:
        stem += f"_skill{args.skill_ratio:g}"
    if args.n_initial:
        stem += f"_init{args.n_initial}"
    progress_stem = stem  # runs are keyed by settings, batch size and seed: more seeds resume
    if args.seeds != 7:
        stem += f"_seeds{args.seeds}"
    if batches != [1, 4]:
        stem += "_q" + "-".join(map(str, batches))
    if args.grid:
        stem += "_grid"
    for path, cheap, expensive in cases:
        name, res = run_landscape(path, cheap, expensive, args.seeds, batches, console, configs,
                                  ff_features=ff_features, ff_linear=args.ff_linear,
                                  surrogate=args.surrogate, baselines=baselines,
                                  grid_seeds=min(args.grid_seeds, args.seeds) if args.grid else None,
                                  progress_path=results / f"{progress_stem}_progress.jsonl",
                                  recorded_only=args.recorded_only)
        if res is None:
            console.print(f"{name}: no recorded run of the agent at q={batches[0]}; left out")
            continue
        out["landscapes"][name] = res
    print_summary(out, batches, console)
    if args.grid and len(out["landscapes"]) > 1:
        out["leave_one_landscape_out"] = leave_one_landscape_out(out["landscapes"], configs, batches)
        print_lolo(out, batches, console)
    out["grid_settings"] = [dataclasses.asdict(c) for c in configs]
    line = json.dumps(out)
    (results / f"{stem}.json").write_text(line + "\n")
    print(line)
    return out


def combine(files, console) -> dict:
    """Merge result files (same agent settings, seeds and batch sizes), print the tables and
    leave-one-landscape-out; writes ``refinement.json`` when they cover every known landscape
    with the default settings, else ``refinement_combined.json``."""
    parts = []
    for f in files:
        try:
            parts.append(json.loads(Path(f).read_text().splitlines()[-1]))
        except (OSError, ValueError, IndexError) as exc:
            raise LandscapeError(f"cannot read result file {f}: {exc}") from None
    keys = ("settings", "seeds", "batches", "n_initial")
    for p in parts[1:]:
        if any(p.get(k) != parts[0].get(k) for k in keys):
            raise LandscapeError("result files differ in " + ", ".join(k for k in keys if p.get(k) != parts[0].get(k)))
    out = {k: v for k, v in parts[0].items() if k not in ("landscapes", "leave_one_landscape_out")}
    out["landscapes"] = {name: r for p in parts for name, r in p["landscapes"].items()}
    batches = out["batches"]
    print_summary(out, batches, console)
    configs = [AgentSettings(**c) for c in out.get("grid_settings", [])]
    if len(configs) > 1 and all(set(r["grid"]) == {c.label for c in configs} for r in out["landscapes"].values()):
        out["leave_one_landscape_out"] = leave_one_landscape_out(out["landscapes"], configs, batches)
        print_lolo(out, batches, console)
    known = {load_name for load_name in _known_names()}
    default = (out["settings"] == AgentSettings().label and out["seeds"] == 7 and batches == [1, 4]
               and out.get("n_initial", 0) == 0 and known <= set(out["landscapes"]))
    results = ROOT / "benchmarks" / "results"
    line = json.dumps(out)
    (results / ("refinement.json" if default else "refinement_combined.json")).write_text(line + "\n")
    print(line)
    return out


def _known_names() -> list[str]:
    """Landscape names of :func:`known_landscapes` (as ``load_landscape`` names them)."""
    return [load_landscape(p, c, e).name for p, c, e in known_landscapes()]


def print_summary(out: dict, batches, console) -> None:
    """One table over all landscapes: counts, ratios, CPU seconds, stopping-rule calibration."""
    from rich.table import Table

    t = Table(title=f"Calculations until the true top {TOP_K} are computed (median over {out['seeds']} "
              f"seeds; agent: {out['settings']}); CPU s: stored expensive-level CPU seconds until "
              "then, the agent's including the fragment baselines (xTB/D3 dimer energies, D3 and "
              "point-charge Ewald terms) it computed")
    for col in ("landscape (cheap -> expensive, n)", "oracle", "cheap order", "random",
                *[f"agent q={q}" for q in batches], *[f"ratio q={q}" for q in batches],
                "CPU s agent (baselines) / cheap / random",
                "P>=0.9 stop: complete / runs"):
        t.add_column(col)
    for name, r in out["landscapes"].items():
        cpu = r["expensive_cpu_s_until_top10"]
        cpu_txt = ("-" if cpu is None else
                   f"{cpu['agent_incl_baselines']:.0f} ({r['baseline_cpu_s']:.0f}) / {cpu['cheap_order']:.0f} / {cpu['random']:.0f}")
        c = r["stop_calibration"][f"{STOP_INFLATION:g}@0.9"]
        t.add_row(f"{name} ({r['levels']}, {r['n_structures']})", str(r["oracle"]), str(r["cheap_order"]),
                  f"{r['random']:.0f}",
                  *[f"{r['agent_by_batch'][str(q)]:.0f} [{min(r['agent_runs'][str(q)])}-"
                    f"{max(r['agent_runs'][str(q)])}] ({len(r['agent_runs'][str(q)])} runs)"
                    if str(q) in r["agent_by_batch"] else "-" for q in batches],
                  *[f"{r['ratio_to_best_baseline'][str(q)]:.2f}" if str(q) in r["agent_by_batch"] else "-"
                    for q in batches],
                  cpu_txt, f"{c['complete_at_stop']}/{c['runs']}")
    t.caption = "ratio = agent median / min(cheap order, random); target <= 1.1 against cheap order"
    console.print(t)
    ct = Table(title="Stopping rule P(top 10 complete) >= p: share of runs (all seeds and batch sizes) "
               "in which the true top 10 was complete when the rule first fired, per spread inflation")
    ct.add_column("landscape")
    for k in STOP_INFLATIONS:
        for lvl in STOP_LEVELS:
            ct.add_column(f"x{k:g} p={lvl:g}")
    pooled = {key: [0, 0] for key in next(iter(out["landscapes"].values()))["stop_calibration"]}
    for name, r in out["landscapes"].items():
        row = []
        for key, c in r["stop_calibration"].items():
            row.append(f"{c['complete_at_stop'] / c['runs']:.0%}")
            pooled[key][0] += c["complete_at_stop"]
            pooled[key][1] += c["runs"]
        ct.add_row(name, *row)
    ct.add_row("all", *[f"{a / b:.0%}" for a, b in pooled.values()])
    console.print(ct)


def print_lolo(out: dict, batches, console) -> None:
    from rich.table import Table

    t = Table(title="Leave-one-landscape-out: settings chosen on the other landscapes, measured on "
              "the held-out one, next to the best setting for that landscape itself (in-sample)")
    for col in ("held out", "chosen on the others", *[f"LOLO q={q}" for q in batches[:1]],
                "in-sample best", *[f"in-sample q={q}" for q in batches[:1]],
                *[f"default q={q}" for q in batches[:1]], "cheap order",
                "stop inflation (LOLO)", "P>=0.9 complete (held out)"):
        t.add_column(col)
    for name, r in out["leave_one_landscape_out"].items():
        t.add_row(name, r["chosen"], *[f"{r['agent_lolo'][str(q)]:.0f}" for q in batches[:1]],
                  r["in_sample_best"], *[f"{r['agent_in_sample'][str(q)]:.0f}" for q in batches[:1]],
                  *[f"{r['default_same_seeds'][str(q)]:.0f}" for q in batches[:1]],
                  str(out["landscapes"][name]["cheap_order"]), f"{r['stop_inflation_lolo']:g}",
                  f"{r['stop_achieved_lolo']:.0%}")
    console.print(t)


if __name__ == "__main__":
    from sim_backends.base import SetupError

    try:
        main()
    except (LandscapeError, SetupError) as exc:
        sys.exit(f"refinement: error: {exc}")
