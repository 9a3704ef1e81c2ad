"""Benchmark "molecule_decisions": speed and quality of the molecule-level decisions.

(a) Decision time. One decision = refit the surrogate on all stored evaluations and
    choose a batch of 5 (molecule, fidelity) pairs over a 20,000-molecule pool
    (2048-bit Morgan fingerprints of *real, enumerated* SMILES: 16 aromatic cores x
    25 substituents). Stored values are synthetic for timing only (a sparse linear
    function of the fingerprint bits; cheap = 0.8 x expensive - 3 + noise; 80 % of
    the evaluations cheap). Times at 100, 1,000 and 5,000 evaluations:
    "cold" = first fit of a new surrogate (includes building the similarity cache),
    "iteration" = steady state: 5 new results arrive, the cached Cholesky factor is
    extended + a new batch (median of 3 iterations); "with hyperparameter refit" =
    the same with warm-started hyperparameter re-optimisation, which the surrogate
    does each time the data have grown by 10 %. Baseline measured in the same run: BoTorch
    ``SingleTaskGP`` (default kernel) on 50 truncated-SVD features of the
    fingerprints (+ a fidelity column) + ``fit_gpytorch_mll`` + ``qLogExpectedImprovement``
    + ``optimize_acqf_discrete(q=5)`` over the pool, at 100 and 1,000 evaluations.
    At 1,000 evaluations the baseline's acquisition runs on a 2,000-candidate
    subsample and its time is scaled x10 to the full pool (the acquisition cost is
    linear in the number of choices; labelled "extrapolated"); ``--full-baseline``
    measures it on the whole pool instead.

(b) Optimisation quality on a replay table of real calculations
    (``data/benchmarks/reorg_table.csv``, written by ``benchmarks/make_reorg_table.py``
    with the ``xtb-reorg`` and ``dft-reorg`` backends): minimise the DFT hole
    reorganisation energy under a CPU-time budget of 25 % of the cost of DFT on every
    molecule, charging each evaluation its recorded wall time. Strategies: the agent
    (multi-fidelity GP + :func:`agent.acquisition.select_batch`, 4 initial xTB
    evaluations, one measured mean cost per level as the campaign passes it; and a
    variant with per-molecule costs: the backends' size-based ``cost_estimate``
    scaled by the wall times measured so far),
    random DFT evaluations, and cheap-fidelity-only greedy (xTB on
    every molecule, then DFT in order of the xTB value). Seeds 0..9; reported: the
    best DFT value found, its rank in the pool, the median over seeds.

Run: ``OMP_NUM_THREADS=1 python benchmarks/molecule_decisions.py`` (~15-20 min on 2
busy cores; ``--skip-quality`` / ``--skip-timing`` run one part, the latter carrying
the previous part (a) figures over into the JSON). Prints tables, one JSON line, and writes
``benchmarks/results/molecule_decisions.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "data" / "benchmarks" / "reorg_table.csv"
RESULT = ROOT / "benchmarks" / "results" / "molecule_decisions.json"

CORES = [
    "c1cc({R1})c({R2})cc1{R3}", "c1ccc2cc({R1})c({R2})cc2c1{R3}",
    "c1ccc2cc3cc({R1})c({R2})cc3cc2c1{R3}", "n1cc({R1})c({R2})cc1{R3}",
    "c1cc({R1})ccc1-c1ccc({R2})cc1{R3}", "c1c({R1})sc({R2})c1{R3}", "c1c({R1})oc({R2})c1{R3}",
    "c1c({R1})[nH]c({R2})c1{R3}", "c1ccc2c(c1)[nH]c1cc({R1})c({R2})cc12{R3}",
    "c1ccc2c(c1)Cc1cc({R1})c({R2})cc12{R3}", "c1ccc2nc({R1})c({R2})cc2c1{R3}",
    "n1c({R1})nc({R2})cc1{R3}", "c1cc2cc({R1})sc2cc1{R2}{R3}",
    "c1ccc2c(c1)sc1cc({R1})c({R2})cc12{R3}", "c1c({R1})sc2cc({R2})sc12{R3}",
    "C1=CC(=O)C({R1})=C({R2})C1=O{R3}",
]
SUBS = ["", "C", "CC", "C(C)C", "OC", "O", "N", "N(C)C", "F", "Cl", "C(F)(F)F", "C#N", "C=O",
        "C(=O)C", "C(=O)OC", "[N+](=O)[O-]", "S", "SC", "c1ccccc1", "c1ccsc1", "C=C", "C#C",
        "C(=O)N", "OCC", "CCCC"]


def enumerate_pool(n: int, seed: int = 0) -> list[str]:
    """``n`` unique canonical SMILES from cores x substituents, in a seeded random order."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    rng = np.random.default_rng(seed)
    n_s = len(SUBS)
    out: list[str] = []
    seen: set[str] = set()
    for k in rng.permutation(len(CORES) * n_s**3):
        c, rest = divmod(int(k), n_s**3)
        a, rest = divmod(rest, n_s**2)
        b, d = divmod(rest, n_s)
        mol = Chem.MolFromSmiles(CORES[c].format(R1=SUBS[a], R2=SUBS[b], R3=SUBS[d]).replace("()", ""))
        if mol is None:
            continue
        can = Chem.MolToSmiles(mol)
        if can not in seen:
            seen.add(can)
            out.append(can)
            if len(out) == n:
                break
    return out


# -- (a) decision time ---------------------------------------------------------------------
def synthetic_values(fps: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(cheap, expensive) synthetic objective values per pool row, kJ/mol-like scale."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=fps.shape[1]) * (rng.random(fps.shape[1]) < 0.3)
    latent = fps @ w
    top = 20.0 + 6.0 * (latent - latent.mean()) / latent.std()
    cheap = 0.8 * top - 3.0 + rng.normal(size=len(top)) * 1.0
    return cheap, top


def make_observations(n_obs: int, cheap: np.ndarray, top: np.ndarray, rng: np.random.Generator):
    from agent.surrogates.molecule_gp import Observation

    n_top = n_obs // 5
    rows = rng.choice(len(top), size=n_obs - n_top, replace=False)
    obs = [Observation(int(i), 0, float(cheap[i])) for i in rows]
    obs += [Observation(int(i), 1, float(top[i])) for i in rows[:n_top]]
    return obs


def agent_decision_times(fps, cheap, top, n_obs: int, n_iter: int, seed: int) -> dict:
    from agent.acquisition import select_batch
    from agent.surrogates.molecule_gp import MoleculeSurrogate, Observation

    rng = np.random.default_rng(seed)
    obs = make_observations(n_obs, cheap, top, rng)
    costs = [2.0, 120.0]
    allowed = np.ones((len(fps), 2), dtype=bool)
    for o in obs:
        allowed[o.mol_index, o.fidelity] = False
    model = MoleculeSurrogate(2, seed=seed)

    def decide(refit: bool | None = None) -> tuple[float, float, list[tuple[int, int]]]:
        t0 = time.perf_counter()
        model.fit(fps, obs, refit_hyperparameters=refit)
        t1 = time.perf_counter()
        best = min(o.value for o in obs if o.fidelity == 1)
        picks = select_batch(model, fps, q=5, costs=costs, allowed=allowed, pending=[],
                             best_value=best, direction="minimize", seed=seed)
        return t1 - t0, time.perf_counter() - t1, picks

    fit_cold, sel_cold, picks = decide()
    iters = []
    for k in range(n_iter + 1):
        for i, f in picks:
            obs.append(Observation(i, f, float((cheap, top)[f][i])))
            allowed[i, f] = False
        # the last iteration re-optimises the hyperparameters (as every 10 % growth does)
        fit_s, sel_s, picks = decide(refit=True if k == n_iter else None)
        iters.append((fit_s, sel_s))
    inc, hyper = iters[:-1], iters[-1]
    return {"cold_s": fit_cold + sel_cold, "cold_fit_s": fit_cold, "cold_select_s": sel_cold,
            "iter_s": statistics.median(a + b for a, b in inc),
            "iter_fit_s": statistics.median(a for a, _ in inc),
            "iter_select_s": statistics.median(b for _, b in inc),
            "hyper_iter_s": hyper[0] + hyper[1], "n_hyper_fits": model.n_hyper_fits}


def svd_features(fps: np.ndarray, k: int = 50) -> np.ndarray:
    """Top-``k`` truncated-SVD (PCA without centring) features of the fingerprints."""
    import scipy.sparse
    from scipy.sparse.linalg import svds

    u, s, _ = svds(scipy.sparse.csr_matrix(fps.astype(np.float64)), k=k, random_state=0)
    x = u * s
    return (x - x.min(0)) / np.maximum(x.max(0) - x.min(0), 1e-12)


def baseline_decision_time(feats, cheap, top, n_obs: int, n_choices: int, seed: int) -> dict:
    """Plain BoTorch: SingleTaskGP + fit_gpytorch_mll + qLogEI + optimize_acqf_discrete."""
    import torch
    from botorch.acquisition.logei import qLogExpectedImprovement
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.optim import optimize_acqf_discrete
    from gpytorch.mlls import ExactMarginalLogLikelihood

    rng = np.random.default_rng(seed)
    obs = make_observations(n_obs, cheap, top, rng)
    x = np.array([np.append(feats[o.mol_index], float(o.fidelity)) for o in obs])
    y = -np.array([o.value for o in obs])  # BoTorch maximises
    t0 = time.perf_counter()
    model = SingleTaskGP(torch.as_tensor(x), torch.as_tensor(y).unsqueeze(-1))
    fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
    t1 = time.perf_counter()
    best = max(-o.value for o in obs if o.fidelity == 1)
    acqf = qLogExpectedImprovement(model, best_f=best)
    rows = rng.choice(len(feats), size=n_choices, replace=False)
    choices = torch.as_tensor(np.hstack([feats[rows], np.ones((n_choices, 1))]))
    with torch.no_grad():
        optimize_acqf_discrete(acqf, q=5, choices=choices)
    t2 = time.perf_counter()
    scale = len(feats) / n_choices
    return {"fit_s": t1 - t0, "acq_s": (t2 - t1) * scale, "total_s": (t1 - t0) + (t2 - t1) * scale,
            "extrapolated": n_choices < len(feats)}


# -- (b) optimisation quality ----------------------------------------------------------------
def load_table(min_rows: int = 12) -> tuple[dict[str, np.ndarray], list[str], str]:
    """Replay table rows with both values; a labelled synthetic table if too few exist."""
    rows = []
    if TABLE.exists():
        with TABLE.open() as fh:
            for r in csv.DictReader(fh):
                if r.get("xtb_reorg_kjmol") and r.get("dft_reorg_kjmol"):
                    rows.append(r)
    if len(rows) >= min_rows:
        return ({
            "cheap": np.array([float(r["xtb_reorg_kjmol"]) for r in rows]),
            "top": np.array([float(r["dft_reorg_kjmol"]) for r in rows]),
            "cheap_s": np.array([float(r["xtb_wall_s"]) for r in rows]),
            "top_s": np.array([float(r["dft_wall_s"]) for r in rows]),
        }, [r["smiles"] for r in rows], f"replay of real xTB/DFT calculations ({TABLE.name})")
    from agent.surrogates.fingerprints import morgan_fingerprints

    smiles = enumerate_pool(120, seed=1)
    cheap, top = synthetic_values(morgan_fingerprints(smiles), seed=1)
    n_atoms = np.array([len(s) for s in smiles], dtype=float)
    return ({"cheap": cheap, "top": top, "cheap_s": 0.2 + 0.02 * n_atoms,
             "top_s": 20.0 + 2.0 * n_atoms}, smiles,
            f"SYNTHETIC stand-in table (only {len(rows)} real rows with both values)")


def backend_cost_estimates(smiles: list[str]) -> np.ndarray:
    """``(n, 2)`` size-based cost models of the xtb-reorg / dft-reorg backends (seconds)."""
    from sim_backends.base import EvalInput
    from sim_backends.registry import backend_class

    xtb, dft = backend_class("xtb-reorg")(), backend_class("dft-reorg")(geometry="xtb")
    return np.array([[xtb.cost_estimate(EvalInput(s)), dft.cost_estimate(EvalInput(s))]
                     for s in smiles])


def run_agent(fps, t: dict, budget_s: float, seed: int, n_initial: int = 4,
              cost_model: np.ndarray | None = None) -> float:
    """The agent; with ``cost_model`` (n, 2) it scales the backends' per-molecule cost
    estimates by measured/estimated wall time so far, else one mean cost per level."""
    from agent.acquisition import select_batch
    from agent.surrogates.molecule_gp import MoleculeSurrogate, Observation

    rng = np.random.default_rng(seed)
    n = len(t["top"])
    done = np.zeros((n, 2), dtype=bool)
    spent, obs = 0.0, []
    walls: list[list[float]] = [[], []]
    vals = (t["cheap"], t["top"])
    wall = (t["cheap_s"], t["top_s"])

    def evaluate(i: int, f: int) -> None:
        nonlocal spent
        spent += wall[f][i]
        walls[f].append(wall[f][i])
        obs.append(Observation(i, f, float(vals[f][i])))
        done[i, f] = True

    for i in rng.choice(n, size=n_initial, replace=False):
        evaluate(int(i), 0)
    model = MoleculeSurrogate(2, seed=seed)
    prior_cost = [float(np.median(t["cheap_s"])), float(np.median(t["top_s"]))]
    while True:
        costs = [float(np.mean(w)) if w else c for w, c in zip(walls, prior_cost, strict=True)]
        pair_costs = None
        if cost_model is not None:
            pair_costs = cost_model.copy()
            for f in range(2):
                seen = [o.mol_index for o in obs if o.fidelity == f]
                if seen:
                    pair_costs[:, f] *= sum(walls[f]) / cost_model[seen, f].sum()
        expected = pair_costs if pair_costs is not None else np.tile(costs, (n, 1))
        allowed = ~done & (expected <= budget_s - spent)
        if not allowed.any():
            break
        model.fit(fps, obs)
        tops = [o.value for o in obs if o.fidelity == 1]
        picks = select_batch(model, fps, q=1, costs=costs, allowed=allowed, pending=[],
                             best_value=min(tops) if tops else None, direction="minimize",
                             seed=seed + len(obs), pair_costs=pair_costs)
        if not picks:
            break
        i, f = picks[0]
        if wall[f][i] > budget_s - spent:
            break
        evaluate(i, f)
    tops = [o.value for o in obs if o.fidelity == 1]
    return min(tops) if tops else float("nan")


def run_random(t: dict, budget_s: float, seed: int) -> float:
    rng = np.random.default_rng(seed)
    spent, best = 0.0, float("nan")
    for i in rng.permutation(len(t["top"])):
        if spent + t["top_s"][i] > budget_s:
            break
        spent += t["top_s"][i]
        best = float(np.nanmin([best, t["top"][i]]))
    return best


def run_cheap_greedy(t: dict, budget_s: float, seed: int) -> float:
    rng = np.random.default_rng(seed)
    spent, seen = 0.0, []
    for i in rng.permutation(len(t["top"])):
        if spent + t["cheap_s"][i] > budget_s:
            break
        spent += t["cheap_s"][i]
        seen.append(int(i))
    best = float("nan")
    for i in sorted(seen, key=lambda j: t["cheap"][j]):
        if spent + t["top_s"][i] > budget_s:
            break
        spent += t["top_s"][i]
        best = float(np.nanmin([best, t["top"][i]]))
    return best


def warm_up_imports() -> None:
    """Import and exercise both stacks once so that no timing includes import costs."""
    import torch
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from gpytorch.mlls import ExactMarginalLogLikelihood

    from agent.acquisition import log_expected_improvement
    from agent.surrogates.molecule_gp import MoleculeSurrogate, Observation

    x = torch.rand(8, 2, dtype=torch.float64)
    m = SingleTaskGP(x, x.sum(-1, keepdim=True))
    fit_gpytorch_mll(ExactMarginalLogLikelihood(m.likelihood, m))
    log_expected_improvement(np.zeros(2), np.ones(2))
    fps = np.eye(4, 16, dtype=np.uint8)
    MoleculeSurrogate(1).fit(fps, [Observation(0, 0, 1.0), Observation(1, 0, 2.0)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="molecule_decisions benchmark")
    ap.add_argument("--pool-size", type=int, default=20000)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    ap.add_argument("--baseline-sizes", type=int, nargs="*", default=[100, 1000])
    ap.add_argument("--full-baseline", action="store_true",
                    help="baseline acquisition over the whole pool at every size")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--budget-fraction", type=float, default=0.25)
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    args = ap.parse_args(argv)

    import torch
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from agent.surrogates.fingerprints import morgan_fingerprints

    console = Console()
    out: dict = {"benchmark": "molecule_decisions", "torch_threads": torch.get_num_threads()}
    warm_up_imports()

    # (a) -------------------------------------------------------------------------------
    if args.skip_timing and RESULT.exists():
        previous = json.loads(RESULT.read_text())
        carried = {k: v for k, v in previous.items() if not k.startswith(("quality_", "benchmark"))}
        out.update(carried)
        console.print(f"part (a) skipped: its figures are carried over from {RESULT.name} "
                      f"(measured {previous.get('timing_measured_utc', '?')})")
    if not args.skip_timing:
        with Progress(console=console) as progress:
            task = progress.add_task("pool + fingerprints", total=None)
            smiles = enumerate_pool(args.pool_size, seed=0)
            fps = morgan_fingerprints(smiles, n_bits=2048, radius=2)
            cheap, top = synthetic_values(fps, seed=0)
            feats = svd_features(fps)
            progress.remove_task(task)
            task = progress.add_task("decision times", total=len(args.sizes) + len(args.baseline_sizes))
            agent_t, base_t = {}, {}
            for n_obs in args.sizes:
                agent_t[n_obs] = agent_decision_times(fps, cheap, top, n_obs, n_iter=3, seed=0)
                progress.advance(task)
            for n_obs in args.baseline_sizes:
                n_choices = len(fps) if (args.full_baseline or n_obs <= 100) else 2000
                base_t[n_obs] = baseline_decision_time(feats, cheap, top, n_obs, n_choices, seed=0)
                progress.advance(task)
        table = Table(title=f"(a) decision time, refit + batch of 5, pool {len(fps)} x 2048 bits "
                            f"(mean {fps.sum(1).mean():.0f} bits set), torch threads {torch.get_num_threads()}")
        for col in ["evaluations", "agent cold s", "agent iteration s (fit + select)",
                    "agent iteration with hyperparameter refit s", "baseline s (fit + acq)",
                    "speed-up (iteration)", "speed-up (with refit)"]:
            table.add_column(col, justify="right")
        for n_obs in args.sizes:
            a = agent_t[n_obs]
            b = base_t.get(n_obs)
            table.add_row(
                str(n_obs), f"{a['cold_s']:.2f}",
                f"{a['iter_s']:.2f} ({a['iter_fit_s']:.2f} + {a['iter_select_s']:.2f})",
                f"{a['hyper_iter_s']:.2f}",
                "-" if b is None else f"{b['total_s']:.1f} ({b['fit_s']:.1f} + {b['acq_s']:.1f})"
                + (" extrapolated" if b["extrapolated"] else ""),
                "-" if b is None else f"{b['total_s'] / a['iter_s']:.0f}x",
                "-" if b is None else f"{b['total_s'] / a['hyper_iter_s']:.0f}x")
        console.print(table)
        out["timing_measured_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        out["pool_size"] = len(fps)
        out["fingerprint"] = "morgan r=2 2048 bits of enumerated SMILES; synthetic values"
        out["agent_iteration_s"] = {str(k): round(v["iter_s"], 3) for k, v in agent_t.items()}
        out["agent_cold_s"] = {str(k): round(v["cold_s"], 3) for k, v in agent_t.items()}
        out["agent_iteration_with_hyper_refit_s"] = {str(k): round(v["hyper_iter_s"], 3)
                                                     for k, v in agent_t.items()}
        out["baseline_s"] = {str(k): round(v["total_s"], 2) for k, v in base_t.items()}
        out["baseline_extrapolated"] = {str(k): v["extrapolated"] for k, v in base_t.items()}
        out["speedup_iteration"] = {str(k): round(base_t[k]["total_s"] / agent_t[k]["iter_s"], 1)
                                    for k in base_t if k in agent_t}

    # (b) -------------------------------------------------------------------------------
    if args.skip_quality:
        line = json.dumps(out)
        print(line)
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(line + "\n")
        return 0
    t, smiles_b, source = load_table()
    fps_b = morgan_fingerprints(smiles_b, n_bits=2048, radius=2)
    budget_s = args.budget_fraction * float(t["top_s"].sum())
    ranks = np.argsort(np.argsort(t["top"]))
    cost_model = backend_cost_estimates(smiles_b) if source.startswith("replay") else None
    results: dict[str, list[float]] = {"agent": [], "agent, per-molecule costs": [],
                                       "random": [], "cheap-greedy": []}
    with Progress(console=console) as progress:
        task = progress.add_task("strategies x seeds", total=args.seeds)
        for seed in range(args.seeds):
            results["agent"].append(run_agent(fps_b, t, budget_s, seed))
            results["agent, per-molecule costs"].append(
                run_agent(fps_b, t, budget_s, seed, cost_model=cost_model))
            results["random"].append(run_random(t, budget_s, seed))
            results["cheap-greedy"].append(run_cheap_greedy(t, budget_s, seed))
            progress.advance(task)
    table = Table(title=f"(b) best DFT reorganisation energy found (kJ/mol), {len(t['top'])} "
                        f"molecules, budget {budget_s:.0f} CPU s = {args.budget_fraction:.0%} of "
                        f"DFT on all; {source}; true minimum {t['top'].min():.2f}")
    for col in ["strategy", "median best", "median rank (0 = best)", "found the minimum",
                "per seed"]:
        table.add_column(col, justify="right")

    def rank_of(v: float) -> int:
        return int(ranks[int(np.argmin(np.abs(t["top"] - v)))]) if np.isfinite(v) else len(ranks)

    for name, vals in results.items():
        table.add_row(name, f"{np.nanmedian(vals):.2f}", f"{np.median([rank_of(v) for v in vals]):.0f}",
                      f"{sum(rank_of(v) == 0 for v in vals)}/{len(vals)}",
                      " ".join(f"{v:.1f}" for v in vals))
    console.print(table)
    out["quality_measured_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out["quality_source"] = source
    out["quality_n_molecules"] = int(len(t["top"]))
    out["quality_budget_cpu_s"] = round(budget_s, 1)
    out["quality_true_min_kjmol"] = round(float(t["top"].min()), 3)
    out["quality_median_best_kjmol"] = {k: round(float(np.nanmedian(v)), 3) for k, v in results.items()}
    out["quality_median_rank"] = {k: float(np.median([rank_of(x) for x in v])) for k, v in results.items()}
    line = json.dumps(out)
    print(line)
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
