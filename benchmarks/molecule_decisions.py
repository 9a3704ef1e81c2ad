"""Benchmark "molecule_decisions": speed and quality of the molecule-level decisions.

(a) Decision time of the real :class:`agent.campaign.Campaign`. A campaign over a
    20,000-molecule pool (2048-bit Morgan fingerprints of *real, enumerated* SMILES: 16
    aromatic cores x 25 substituents) with two levels, ``replay-xtb-reorg`` and
    ``replay-dft-reorg`` over a synthetic replay table (values a sparse linear function
    of the fingerprint bits; cheap = 0.8 x expensive - 3 + noise; each charged the real
    backend's size-based CPU estimate times a log-normal factor), a batch size of 5 and a
    CPU budget that never binds, so every ask prices each (molecule, level) with the
    campaign's :class:`~agent.stages.costs.CostModel`. With 100, 1,000 and 5,000 stored
    evaluations (80 % cheap), committed through ``Campaign.tell``, the campaign is reopened
    from its store and ``Campaign.ask(5)`` is timed: "cold" = the first ask (pool
    fingerprints, similarity cache, hyperparameter fit, the ``molecule_refit``
    calibration event, the batch), then 4 iterations in the in-process
    :class:`~agent.local_executor.LocalExecutor`: the 5 tasks run (replays), each
    ``Campaign.tell`` is timed, the next ``ask(5)`` is timed; asks in which the surrogate
    re-optimised its hyperparameters (its own 10 %-growth rule) are reported apart.
    "iteration" = median ask without a hyperparameter refit + 5 x median tell. Baseline
    measured in the same run on the same stored evaluations: BoTorch ``SingleTaskGP``
    (default kernel) on 50 truncated-SVD features of the fingerprints (+ a fidelity
    column) + ``fit_gpytorch_mll`` + ``qLogExpectedImprovement`` +
    ``optimize_acqf_discrete(q=5)`` over the pool, at 100 and 1,000 evaluations. At
    1,000 evaluations the baseline's acquisition runs on a 2,000-candidate subsample and
    its time is scaled x10 to the full pool (the acquisition cost is linear in the
    number of choices; labelled "extrapolated"); ``--full-baseline`` measures it on the
    whole pool instead. All times are wall seconds.

(b) Optimisation quality, through the real Campaign: minimise the hole reorganisation
    energy at the expensive level under CPU budgets given as fractions of the recorded
    cost of the expensive level on every molecule, on four replay data sets of real
    results (:data:`TABLES`):

    * "demo-pool": GFN2-xTB and B3LYP/6-31G//GFN2-xTB, the 22 molecules of
      ``data/benchmarks/reorg_table.csv`` with both, charged the recorded wall seconds;
    * "dftdft": GFN2-xTB and B3LYP/6-31G with both charge states relaxed at that level
      (the campaign's default expensive level), the 12 molecules of
      ``benchmarks/reorg_validation.py``'s record, charged the recorded CPU seconds;
    * "pool60": GFN2-xTB and B3LYP/6-31G//GFN2-xTB with the UKS stability check of
      every cation SCF, the molecules of ``data/benchmarks/reorg_pool60.csv`` (the 60
      smallest pool molecules, those of ``data/esf``; made by ``make_reorg_table.py``)
      with both values, charged the recorded CPU seconds (molecules whose DFT failed the
      physical-validity checks are left out, as in the other sets);
    * "pool60-dftdft": GFN2-xTB and B3LYP/6-31G with both states relaxed (the default
      expensive level) for the molecules of ``data/benchmarks/reorg_pool60_dftdft.csv``
      with both values (cheapest first by the backend's cost estimate), charged the
      recorded CPU seconds.

    Every evaluation goes through the ``replay-xtb-reorg`` / ``replay-dft-reorg``
    backends (stored real results, charged their recorded cost; the size-based cost
    estimate is the real backend's for the data set's protocol). Strategies:

    * agent: :class:`agent.campaign.Campaign` built from a validated config and run by
      :func:`agent.runner.run_campaign` with the in-process
      :class:`agent.local_executor.LocalExecutor` (batch size 1) -- the code users run;
    * cheap-greedy: xTB on every molecule (seeded order), then DFT in order of the xTB
      value;
    * random: DFT on molecules in a seeded random order.

    The baselines are small loops over the same backends with the campaign's budget
    rule (an evaluation starts only if its cost fits the budget left with probability
    0.9: the campaign's CostModel and cost-spread factor; one that does not fit is
    skipped). Seeds 0..9; reported per budget: median /
    mean best DFT value, its rank in the pool, how often the true minimum and the
    oracle value (the best value whose DFT cost alone fits the budget: what knowing
    every result in advance could reach) were found, DFT evaluations and CPU seconds
    charged, and per seed the agent against each baseline (better / tied / worse, mean
    difference).

(c) Part (b) as one verdict per baseline (:func:`overall`): the seed-paired comparisons over
    every data set and budget (agent better / tied / worse), a two-sided sign test of better
    against worse, the mean of agent - baseline, and the data set-budgets whose median the
    agent wins, ties or loses (the lost ones named). In the JSON line as ``overall``.

Run: ``OMP_NUM_THREADS=1 python benchmarks/molecule_decisions.py`` (part (a) ~15-20 min
on 2 busy cores, part (b) ~5 min; ``--tables`` picks data sets; ``--table CSV`` (repeatable) runs
part (b) on a table of your own in the layout of ``data/benchmarks/reorg_pool60.csv`` (smiles,
xtb_reorg_kjmol, dft_reorg_kjmol, and xtb_cpu_s + dft_cpu_s or xtb_wall_s + dft_wall_s; empty cell =
no result; checked on reading, a bad cell or a missing column is a one-line error) instead of the
shipped sets unless ``--tables`` is given too; ``--skip-quality`` / ``--skip-timing`` run one part,
the latter carrying the previous part (a) figures over into the JSON; ``--molecule-kernel
tanimoto`` or ``tanimoto+descriptors`` runs every campaign with that molecule-GP kernel instead of
the campaign's default). Prints tables,
one JSON line, and writes ``benchmarks/results/molecule_decisions.json`` -- or, with
non-default arguments, ``molecule_decisions_<changed options>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
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
    """``n_obs`` stored evaluations (pool row, level, value): 80 % cheap, 20 % expensive
    (the expensive ones on molecules that also have the cheap value)."""
    n_top = n_obs // 5
    rows = rng.choice(len(top), size=n_obs - n_top, replace=False)
    obs = [(int(i), 0, float(cheap[i])) for i in rows]
    obs += [(int(i), 1, float(top[i])) for i in rows[:n_top]]
    return obs


def synthetic_table(smiles: list[str], cheap: np.ndarray, top: np.ndarray, out: Path,
                    seed: int) -> Path:
    """The synthetic pool as a replay table (make_reorg_table.py's columns): the values of
    :func:`synthetic_values`, charged the real backends' size-based CPU estimate times a
    log-normal factor (sd 0.3), so the campaign's CostModel has something to fit."""
    import csv

    from sim_backends.base import EvalInput
    from sim_backends.registry import get_backend

    rng = np.random.default_rng(seed + 1)
    est = [get_backend(name) for name in ("xtb-reorg", "dft-reorg")]
    with out.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["smiles", "xtb_reorg_kjmol", "dft_reorg_kjmol", "xtb_cpu_s", "dft_cpu_s"])
        for s, c, t in zip(smiles, cheap, top, strict=True):
            noise = np.exp(rng.normal(0.0, 0.3, size=2))
            costs = [b.cost_estimate(EvalInput(s)) * k for b, k in zip(est, noise, strict=True)]
            w.writerow([s, f"{c:.4f}", f"{t:.4f}", f"{costs[0]:.3f}", f"{costs[1]:.3f}"])
    return out


def timing_config(table: Path, n_obs: int, n_iter: int, seed: int) -> str:
    """The campaign TOML of part (a): both replay levels over the synthetic table, a
    batch of 5, a CPU budget that never binds (so the CostModel's per-molecule costs
    are computed on every ask, as in any budgeted campaign)."""
    return f"""
name = "timing-{n_obs}"
pool = "pool.smi"
objective = "reorg_energy_kjmol"
direction = "minimize"
batch_size = 5
seed = {seed}
max_cpu_hours = 1000000.0
max_evaluations = {n_obs + 5 * (n_iter + 2)}
[tracking]
enabled = false
[[backends]]
name = "{LEVELS[0]}"
params = {{ table = "{table}", cost_column = "xtb_cpu_s" }}
[[backends]]
name = "{LEVELS[1]}"
params = {{ table = "{table}", cost_column = "dft_cpu_s" }}
"""


def campaign_decision_times(smiles: list[str], cheap, top, table: Path, n_obs: int,
                            n_iter: int, seed: int, workdir: Path) -> dict:
    """Time the real Campaign's own ask/tell with ``n_obs`` stored evaluations.

    The synthetic evaluations (:func:`make_observations`, the same as the baseline's)
    are run by the replay backends and committed through
    ``Campaign.tell`` (untimed); the campaign is closed and reopened from its store
    (``open_s``: every stage restored), then ``Campaign.ask(5)`` is timed: the first one
    (``cold``: pool fingerprints, similarity cache, hyperparameter fit, the
    ``molecule_refit`` calibration event, acquisition with the CostModel's costs) and
    ``n_iter`` steady-state iterations (the 5 asked tasks run, each ``Campaign.tell``
    timed, then the next ``ask(5)``). An ask in which the surrogate re-optimised its
    hyperparameters (its own 10 %-growth rule) is reported apart."""
    import tomllib

    from agent.campaign import Campaign
    from agent.config import parse_config
    from agent.local_executor import LocalExecutor
    from agent.stages.base import Request
    from sim_backends.base import EvalInput
    from sim_backends.registry import get_backend

    d = workdir / f"timing-{n_obs}"
    d.mkdir(parents=True)
    (d / "pool.smi").write_text("\n".join(smiles) + "\n")
    cfg = parse_config(tomllib.loads(timing_config(table, n_obs, n_iter, seed)), base_dir=d)
    t0 = time.perf_counter()
    camp = Campaign.create(cfg, d / "runs")
    create_s = time.perf_counter() - t0
    ex = LocalExecutor(slots=5)
    try:
        stage = camp.molecules
        mol_id = {s: int(m) for s, m in zip(stage.smiles, stage.mol_ids, strict=True)}
        if len(mol_id) != len(smiles) or set(mol_id) != set(smiles):
            raise RuntimeError("the campaign's pool is not the enumerated pool")
        # one backend instance per level (the executor builds one per task, ~50 ms each)
        backends = [get_backend(lvl.name, **lvl.params) for lvl in stage.levels]
        for i, f, _ in make_observations(n_obs, cheap, top, np.random.default_rng(seed)):
            lvl = stage.levels[f]
            task = Request(stage="molecule", backend=lvl.name, params=lvl.params,
                           inp=EvalInput(smiles[i]), molecule_id=mol_id[smiles[i]],
                           fidelity=f).to_task()
            camp.tell(task, backends[f].evaluate(task.inp))
    finally:
        camp.close()
    t0 = time.perf_counter()
    camp = Campaign.open(cfg.name, d / "runs")
    open_s = time.perf_counter() - t0
    try:
        if camp.n_evaluations != n_obs:
            raise RuntimeError(f"reopened campaign has {camp.n_evaluations} evaluations, not {n_obs}")

        def ask() -> tuple[float, bool, list]:
            model = camp.molecules.surrogate
            before = model.n_hyper_fits if model is not None else 0
            t = time.perf_counter()
            tasks = camp.ask(5)
            dt = time.perf_counter() - t
            if len(tasks) != 5:
                raise RuntimeError(f"the campaign asked for {len(tasks)} tasks, not 5")
            return dt, camp.molecules.surrogate.n_hyper_fits > before, tasks

        cold_s, _, tasks = ask()
        asks, tells, n_top = [], [], 0
        for _ in range(n_iter):
            n_top += sum(t.fidelity == 1 for t in tasks)
            for t in tasks:
                ex.submit(t)
            for _ in tasks:
                for done in ex.wait():
                    t1 = time.perf_counter()
                    camp.tell(done.task, done.result)
                    tells.append(time.perf_counter() - t1)
            dt, hyper, tasks = ask()
            asks.append((dt, hyper))
        plain = [a for a, h in asks if not h]
        refit = [a for a, h in asks if h]
        return {"create_s": create_s, "open_s": open_s, "cold_s": cold_s,
                "ask_s": statistics.median(plain) if plain else float("nan"),
                "ask_with_hyper_refit_s": statistics.median(refit) if refit else None,
                "n_asks": len(asks), "n_hyper_refit_asks": len(refit),
                "tell_s": statistics.median(tells),
                "iteration_s": (statistics.median(plain) if plain else float("nan"))
                + 5 * statistics.median(tells),
                "n_top_chosen": n_top, "n_refits": camp.molecules.n_refits}
    finally:
        camp.close()


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
    x = np.array([np.append(feats[i], float(f)) for i, f, _ in obs])
    y = -np.array([v for _, _, v in obs])  # BoTorch maximises
    t0 = time.perf_counter()
    model = SingleTaskGP(torch.as_tensor(x), torch.as_tensor(y).unsqueeze(-1))
    fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
    t1 = time.perf_counter()
    best = max(-v for _, f, v in obs if f == 1)
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
LEVELS = ("replay-xtb-reorg", "replay-dft-reorg")


#: replay data sets of part (b): name -> (wide table of make_reorg_table.py's columns,
#: the cost charged). "demo-pool": GFN2-xTB and B3LYP/6-31G//GFN2-xTB of the demo pool,
#: charged the recorded *wall* seconds (all that table has; recorded on a machine loaded
#: 5-20x: naphthalene 300 s wall against 43 CPU s in reorg_validation). "dftdft":
#: GFN2-xTB and B3LYP/6-31G with both states relaxed at that level (the default
#: expensive level) of benchmarks/reorg_validation.py, charged the worker's CPU seconds;
#: its table is built from that benchmark's record (:func:`validation_table`).
TABLES = {
    "demo-pool": (ROOT / "data" / "benchmarks" / "reorg_table.csv", "wall"),
    "dftdft": (ROOT / "benchmarks" / "results" / "reorg_validation_progress.jsonl", "cpu"),
    "pool60": (ROOT / "data" / "benchmarks" / "reorg_pool60.csv", "cpu"),
    "pool60-dftdft": (ROOT / "data" / "benchmarks" / "reorg_pool60_dftdft.csv", "cpu"),
}
#: the shipped data sets (``--tables``); ``--table`` adds a user's to TABLES
BUILTIN_TABLES = tuple(TABLES)
LEVEL_NAMES = {"demo-pool": "B3LYP/6-31G//GFN2-xTB", "dftdft": "B3LYP/6-31G, both states relaxed",
               "pool60": "B3LYP/6-31G//GFN2-xTB (UKS stability-checked cations)",
               "pool60-dftdft": "B3LYP/6-31G, both states relaxed (UKS stability-checked cations)"}
_BUILT: dict[str, Path] = {}


def validation_table(record: Path, out: Path) -> Path:
    """A replay table (make_reorg_table.py's columns) of the molecules that
    ``benchmarks/reorg_validation.py`` computed with protocols "xtb" and "dft//dft"."""
    import csv

    rows: dict[str, dict[str, str]] = {}
    proto = {"xtb": "xtb", "dft//dft": "dft"}
    for line in record.read_text().splitlines():
        r = json.loads(line)
        if r.get("protocol") not in proto or r.get("status") != "ok":
            continue
        row = rows.setdefault(r["smiles"], {"smiles": r["smiles"], "name": r["molecule"]})
        lvl = proto[r["protocol"]]
        row[f"{lvl}_reorg_kjmol"] = f"{r['values']['reorg_energy_kjmol']:.4f}"
        row[f"{lvl}_wall_s"], row[f"{lvl}_cpu_s"] = f"{r['wall_s']:.3f}", f"{r['cpu_s']:.3f}"
    cols = ["smiles", "name", "xtb_reorg_kjmol", "dft_reorg_kjmol", "xtb_wall_s", "dft_wall_s",
            "xtb_cpu_s", "dft_cpu_s"]
    with out.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for row in rows.values():
            w.writerow({c: row.get(c, "") for c in cols})
    return out


#: value columns of a replay table; cost columns by the cost kind charged
VALUE_COLUMNS = ("xtb_reorg_kjmol", "dft_reorg_kjmol")
COST_COLUMNS = {"cpu": ("xtb_cpu_s", "dft_cpu_s"), "wall": ("xtb_wall_s", "dft_wall_s")}


class TableError(ValueError):
    """A replay table that cannot be used (one line: file, row, column)."""


def check_table(path: Path) -> str:
    """Validate a replay table in the layout of ``data/benchmarks/reorg_pool60.csv``
    (make_reorg_table.py's columns) and return the cost charged: ``cpu`` when it has a
    ``*_cpu_s`` column (then both are needed), else ``wall`` (both ``*_wall_s`` columns).

    Raises:
        TableError: no such file, no ``smiles`` or value column, no pair of cost columns, a
            cell of a value or cost column that is neither empty nor a finite number
            (naming the row and column), a value without its cost, or fewer than two
            molecules with both values.
    """
    import csv
    import math

    if not path.is_file():
        raise TableError(f"{path}: no such file")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in ("smiles", *VALUE_COLUMNS) if c not in header]
        if missing:
            raise TableError(f"{path}: missing column(s) {', '.join(missing)}; a replay table has "
                             f"smiles, {', '.join(VALUE_COLUMNS)} and {' + '.join(COST_COLUMNS['cpu'])} "
                             f"or {' + '.join(COST_COLUMNS['wall'])}")
        # the first kind with any column present (CPU before wall) is charged: both of its columns needed
        kind = next((k for k, cols in COST_COLUMNS.items() if any(c in header for c in cols)), None)
        if kind is None or not all(c in header for c in COST_COLUMNS[kind]):
            absent = [c for c in COST_COLUMNS[kind or "cpu"] if c not in header]
            raise TableError(f"{path}: missing cost column(s) {', '.join(absent)}; give "
                             f"{' + '.join(COST_COLUMNS['cpu'])} (CPU s) or {' + '.join(COST_COLUMNS['wall'])} "
                             "(wall s, without CPU columns)")
        n_both = 0
        for i, row in enumerate(reader, start=2):
            for value_col, cost_col in zip(VALUE_COLUMNS, COST_COLUMNS[kind], strict=True):
                for col in (value_col, cost_col):
                    cell = (row.get(col) or "").strip()
                    if not cell:
                        continue
                    try:
                        ok = math.isfinite(float(cell))
                    except ValueError:
                        ok = False
                    if not ok:
                        raise TableError(f"{path} row {i - 1} (line {i}), column {col}: {cell[:40]!r} is not a "
                                         "number (leave the cell empty for no result)")
                if (row.get(value_col) or "").strip() and not (row.get(cost_col) or "").strip():
                    raise TableError(f"{path} row {i - 1} (line {i}), column {cost_col}: empty, but "
                                     f"{value_col} has a value (its cost is needed)")
            n_both += all((row.get(c) or "").strip() for c in VALUE_COLUMNS)
    if n_both < 2:
        raise TableError(f"{path}: {n_both} molecule(s) with both {' and '.join(VALUE_COLUMNS)}; need >= 2")
    return kind


def add_user_table(path: str) -> str:
    """Register a user's replay table (``--table``) as a data set of part (b) and return its
    name (``table-<file stem>``); its level is described as user data at its path."""
    p = Path(path).expanduser().resolve()
    kind = check_table(p)
    name = f"table-{p.stem}"
    while name in TABLES and TABLES[name][0] != p:
        name += "_"
    TABLES[name] = (p, kind)
    LEVEL_NAMES[name] = f"DFT (user data: {path})"
    ESTIMATED_GEOMETRY[name] = "dft"  # the protocol is not known: the real backend's default for the estimate
    return name


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def table_path(name: str) -> Path:
    """The replay CSV of data set ``name`` (built once per process where needed)."""
    source, _ = TABLES[name]
    if source.suffix == ".csv":
        return source
    if name not in _BUILT:
        import tempfile

        _BUILT[name] = validation_table(source, Path(tempfile.mkdtemp()) / f"{name}.csv")
    return _BUILT[name]


#: the real dft-reorg protocol of each data set, for the replay's size-based cost estimate
ESTIMATED_GEOMETRY = {"demo-pool": "xtb", "dftdft": "dft", "pool60": "xtb", "pool60-dftdft": "dft"}


def level_params(name: str) -> list[dict]:
    """Replay-backend params of both levels for data set ``name``."""
    cost = TABLES[name][1]
    out: list[dict] = [{"table": str(table_path(name)), "cost_column": f"{lvl}_{cost}_s"}
                       for lvl in ("xtb", "dft")]
    out[1]["estimated_params"] = {"geometry": ESTIMATED_GEOMETRY[name]}
    return out


def replay_pool(table: Path | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Canonical SMILES of the replay table's molecules with both values; their xTB and
    DFT values (kJ/mol)."""
    from sim_backends.replay import REORG_TABLE, reorg_table_values

    smiles, cheap, top = reorg_table_values(table or REORG_TABLE)
    keep = np.isfinite(top)
    return [s for s, k in zip(smiles, keep, strict=True) if k], np.array(cheap)[keep], np.array(top)[keep]


def oracle_best(smiles: list[str], top: np.ndarray, budget_s: float, name: str) -> float:
    """The best DFT value any strategy could reach within the budget: the lowest recorded
    value among the molecules whose recorded DFT cost alone fits it (an upper bound on
    what knowing every result in advance buys)."""
    from sim_backends.base import EvalInput
    from sim_backends.registry import get_backend

    dft = get_backend(LEVELS[1], **level_params(name)[1])
    fits = [v for s, v in zip(smiles, top, strict=True)
            if dft.evaluate(EvalInput(s)).wall_s <= budget_s]
    return float(min(fits)) if fits else float("nan")


def run_agent(smiles: list[str], budget_s: float, seed: int, workdir: Path,
              data: str = "demo-pool") -> tuple[float, float, int]:
    """The real Campaign (config validated as from a TOML file), run by run_campaign with
    the in-process executor over the replay backends. Returns (best DFT value, CPU s
    charged, number of DFT evaluations)."""
    import tomllib

    from agent.campaign import Campaign
    from agent.config import parse_config
    from agent.local_executor import LocalExecutor
    from agent.runner import run_campaign

    cheap, top = level_params(data)
    d = workdir / f"agent-{seed}"
    d.mkdir(parents=True)
    (d / "pool.smi").write_text("\n".join(smiles) + "\n")
    text = f"""
name = "bench-{seed}"
pool = "pool.smi"
objective = "reorg_energy_kjmol"
direction = "minimize"
batch_size = 1
seed = {seed}
max_cpu_hours = {budget_s / 3600.0!r}
max_evaluations = 1000
[tracking]
enabled = false
[[backends]]
name = "{LEVELS[0]}"
params = {{ table = "{cheap['table']}", cost_column = "{cheap['cost_column']}" }}
[[backends]]
name = "{LEVELS[1]}"
params = {{ table = "{top['table']}", cost_column = "{top['cost_column']}", estimated_params = {{ geometry = "{top['estimated_params']['geometry']}" }} }}
"""
    camp = Campaign.create(parse_config(tomllib.loads(text), base_dir=d), d / "runs")
    try:
        run_campaign(camp, d / "runs", executor=LocalExecutor(slots=1), progress=False)
        best = camp.best_value()
        return (float("nan") if best is None else best, camp.spent_cpu_s,
                camp.n_by_backend[LEVELS[1]])
    finally:
        camp.close()


class BudgetedLoop:
    """A baseline's evaluations through the same replay backends, charged their recorded
    cost, with the campaign's rule (:meth:`agent.stages.molecule.MoleculeStage.ask`):
    start an evaluation only while its cost fits the budget left with probability
    ``COST_FIT_PROBABILITY``, i.e. its expected cost (the level's
    :class:`~agent.stages.costs.CostModel`: the backend's size-based estimate scaled by
    measured / estimated so far) times :meth:`~agent.stages.costs.CostModel.fit_factor`
    of the level's successful tasks fits."""

    def __init__(self, budget_s: float, data: str = "demo-pool") -> None:
        from agent.stages.costs import CostModel
        from sim_backends.registry import get_backend

        params = level_params(data)
        self.backends = [get_backend(name, **p) for name, p in zip(LEVELS, params, strict=True)]
        self.cost_models = [CostModel(name, p) for name, p in zip(LEVELS, params, strict=True)]
        self.budget_s = budget_s
        self.spent_s = 0.0
        self.best = float("nan")

    def expected_s(self, level: int, smiles: str) -> float:
        from sim_backends.base import EvalInput

        return float(self.cost_models[level].expected([EvalInput(smiles)])[0])

    def evaluate(self, level: int, smiles: str) -> float | None:
        """The value, or None when the budget does not allow the evaluation."""
        from sim_backends.base import EvalInput

        inp = EvalInput(smiles)
        if self.expected_s(level, smiles) * self.cost_models[level].fit_factor() > \
                self.budget_s - self.spent_s:
            return None
        res = self.backends[level].evaluate(inp)
        self.spent_s += res.wall_s
        self.cost_models[level].observe(inp, res.wall_s, ok=res.ok)
        value = res.values.get("reorg_energy_kjmol", float("nan"))
        if level == 1 and res.ok:
            self.best = float(np.nanmin([self.best, value]))
        return value


def run_random(smiles: list[str], budget_s: float, seed: int,
               data: str = "demo-pool") -> tuple[float, float, int]:
    """DFT on molecules in a seeded random order."""
    loop = BudgetedLoop(budget_s, data)
    n = 0
    for i in np.random.default_rng(seed).permutation(len(smiles)):
        n += loop.evaluate(1, smiles[i]) is not None  # one that does not fit is skipped
    return loop.best, loop.spent_s, n


def run_cheap_greedy(smiles: list[str], budget_s: float, seed: int,
                     data: str = "demo-pool") -> tuple[float, float, int]:
    """xTB on every molecule (seeded order), then DFT in order of the xTB value."""
    loop = BudgetedLoop(budget_s, data)
    cheap = {}
    for i in np.random.default_rng(seed).permutation(len(smiles)):
        v = loop.evaluate(0, smiles[i])
        if v is not None:
            cheap[int(i)] = v
    n = 0
    for i in sorted(cheap, key=lambda j: (np.nan_to_num(cheap[j], nan=np.inf), j)):
        n += loop.evaluate(1, smiles[i]) is not None  # one that does not fit is skipped
    return loop.best, loop.spent_s, n


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


def _option_stem(key: str, value: object) -> str:
    """File-name part of a non-default option: its name, and its value unless a flag
    (so runs with different values never share a result file)."""
    name = key.replace("_", "-")
    if isinstance(value, bool):
        return name
    values = value if isinstance(value, (list, tuple)) else [value]
    return name + "-" + "-".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="molecule_decisions benchmark")
    ap.add_argument("--pool-size", type=int, default=20000)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    ap.add_argument("--baseline-sizes", type=int, nargs="*", default=[100, 1000])
    ap.add_argument("--full-baseline", action="store_true",
                    help="baseline acquisition over the whole pool at every size")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--budget-fractions", type=float, nargs="+", default=[0.05, 0.1, 0.15, 0.25],
                    help="CPU budgets as fractions of the recorded cost of DFT on every molecule")
    ap.add_argument("--tables", nargs="+", choices=sorted(BUILTIN_TABLES), default=None,
                    help="replay data sets of part (b) (default: all, or none when --table is given)")
    ap.add_argument("--table", action="append", default=None, metavar="CSV",
                    help="a replay table of your own for part (b), in the layout of "
                         "data/benchmarks/reorg_pool60.csv (repeatable)")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--molecule-kernel", choices=["tanimoto", "tanimoto+descriptors"], default=None,
                    help="the molecule GP's kernel for every campaign of this run (default: the "
                         "campaign's, agent.surrogates.molecule_gp.KERNEL)")
    ap.add_argument("--delta-ratio", type=float, default=None,
                    help="centre of the molecule GP's discrepancy prior, var(delta)/var(f_0), for every "
                         "campaign of this run (default: the campaign's, exp of "
                         "agent.surrogates.molecule_gp.LOG_DELTA_RATIO_PRIOR[0])")
    ap.add_argument("--discrepancy", default=None, choices=["map", "posterior-mean"],
                    help="how the molecule GP's discrepancy variances enter its predictions, for every "
                         "campaign of this run (default: the campaign's, "
                         "agent.surrogates.molecule_gp.DISCREPANCY_ESTIMATE)")
    ap.add_argument("--cost-cooling", choices=["on", "off"], default=None,
                    help="whether every campaign divides its acquisition by cost**(fraction of the budget "
                         "left) (default: the campaign's, agent.stages.molecule.COST_COOLING)")
    ap.add_argument("--screen-pool", choices=["on", "auto", "off"], default=None,
                    help="whether every campaign runs the cheapest level on the whole pool first "
                         "(default: the campaign's, agent.stages.molecule.SCREEN_POOL)")
    args = ap.parse_args(argv)
    if args.screen_pool is not None:  # stored by each campaign when it is created
        from agent.stages import molecule as molecule_stage

        molecule_stage.SCREEN_POOL = args.screen_pool
    if args.cost_cooling is not None:  # read by each campaign's molecule stage when it asks
        from agent.stages import molecule as molecule_stage

        molecule_stage.COST_COOLING = args.cost_cooling == "on"
    if args.delta_ratio is not None and args.delta_ratio <= 0:
        ap.error("--delta-ratio must be > 0")
    try:
        user_tables = [add_user_table(t) for t in args.table or []]
        for name in args.tables or []:
            if TABLES[name][0].suffix == ".csv" and not args.skip_quality:
                check_table(TABLES[name][0])
    except TableError as exc:
        print(f"molecule_decisions: error: {exc}", file=sys.stderr)
        return 2
    data_sets = (args.tables or []) + user_tables if (args.tables or user_tables) else list(BUILTIN_TABLES)
    from agent.surrogates import molecule_gp

    kernel = args.molecule_kernel or molecule_gp.KERNEL
    molecule_gp.KERNEL = kernel
    if args.discrepancy is not None:  # read by each campaign's surrogate when it is made
        molecule_gp.DISCREPANCY_ESTIMATE = args.discrepancy
    if args.delta_ratio is not None:  # read by each campaign's surrogate when it is made
        molecule_gp.LOG_DELTA_RATIO_PRIOR = (float(np.log(args.delta_ratio)), molecule_gp.LOG_DELTA_RATIO_PRIOR[1])

    import torch
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from agent.stages import molecule as molecule_stage
    from agent.surrogates.fingerprints import morgan_fingerprints

    console = Console(width=150)
    out: dict = {"benchmark": "molecule_decisions", "torch_threads": torch.get_num_threads(),
                 "molecule_kernel": kernel, "discrepancy_estimate": molecule_gp.DISCREPANCY_ESTIMATE,
                 "cost_cooling": molecule_stage.COST_COOLING, "screen_pool": molecule_stage.SCREEN_POOL,
                 "delta_ratio_prior": [round(float(np.exp(molecule_gp.LOG_DELTA_RATIO_PRIOR[0])), 4),
                                       molecule_gp.LOG_DELTA_RATIO_PRIOR[1]]}
    warm_up_imports()

    # (a) -------------------------------------------------------------------------------
    changed = sorted(k for k, v in vars(args).items() if v != ap.get_default(k))
    result = RESULT if not changed else RESULT.with_name(
        "molecule_decisions_" + "_".join(
            _option_stem(k, [Path(t).stem for t in args.table] if k == "table" else getattr(args, k))
            for k in changed) + ".json")
    if args.skip_timing and RESULT.exists():
        previous = json.loads(RESULT.read_text())
        carried = {k: v for k, v in previous.items()
                   if not k.startswith(("quality", "benchmark"))}
        out.update(carried)
        console.print(f"part (a) skipped: its figures are carried over from {RESULT.name} "
                      f"(measured {previous.get('timing_measured_utc', '?')})")
    if not args.skip_timing:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp, Progress(console=console) as progress:
            task = progress.add_task("pool + fingerprints + replay table", total=None)
            smiles = enumerate_pool(args.pool_size, seed=0)
            fps = morgan_fingerprints(smiles, n_bits=2048, radius=2)
            cheap, top = synthetic_values(fps, seed=0)
            feats = svd_features(fps)
            table_csv = synthetic_table(smiles, cheap, top, Path(tmp) / "synthetic.csv", seed=0)
            progress.remove_task(task)
            task = progress.add_task("decision times", total=len(args.sizes) + len(args.baseline_sizes))
            agent_t, base_t = {}, {}
            for n_obs in args.sizes:
                agent_t[n_obs] = campaign_decision_times(smiles, cheap, top, table_csv, n_obs,
                                                         n_iter=4, seed=0, workdir=Path(tmp))
                progress.advance(task)
            for n_obs in args.baseline_sizes:
                n_choices = len(fps) if (args.full_baseline or n_obs <= 100) else 2000
                base_t[n_obs] = baseline_decision_time(feats, cheap, top, n_obs, n_choices, seed=0)
                progress.advance(task)
        out.update(timing_table(agent_t, base_t, fps, console))

    # (b) -------------------------------------------------------------------------------
    if args.skip_quality:
        return write_result(out, result)
    out["quality_measured_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out["quality_source"] = "replay of real GFN2-xTB and B3LYP/6-31G results (see each data set)"
    out["quality"] = {}
    for name in data_sets:
        out["quality"][name] = quality_part(name, args, console)
    out["overall"] = overall(out["quality"], console)
    return write_result(out, result)


def overall(quality: dict, console=None) -> dict:
    """Part (b) over every data set and budget at once, per baseline: the seed-paired
    comparisons (agent better / tied / worse), a two-sided sign test of better against worse
    (ties left out), the mean of agent - baseline, and the data set-budgets where the agent's
    median is better, equal or worse (those worse named)."""
    from scipy.stats import binomtest

    out = {}
    for base in ("cheap-greedy", "random"):
        better = ties = worse = 0
        diffs: list[float] = []
        cells = {"better": 0, "tied": 0, "worse": 0}
        worse_cells = []
        for name, part in quality.items():
            for fraction, entry in part["budgets"].items():
                p = entry[base]["paired_vs_agent"]
                better, ties, worse = better + p["agent_better"], ties + p["ties"], worse + p["agent_worse"]
                a = np.nan_to_num(np.asarray(entry["agent (Campaign)"]["best_per_seed_kjmol"], float), nan=np.inf)
                b = np.nan_to_num(np.asarray(entry[base]["best_per_seed_kjmol"], float), nan=np.inf)
                both = np.isfinite(a) & np.isfinite(b)
                diffs += list(a[both] - b[both])
                ma, mb = entry["agent (Campaign)"]["median_best_kjmol"], entry[base]["median_best_kjmol"]
                key = "tied" if abs(ma - mb) <= 1e-6 else ("better" if ma < mb else "worse")
                cells[key] += 1
                if key == "worse":
                    worse_cells.append(f"{name} {float(fraction):.0%}: {ma:.2f} vs {mb:.2f}")
        p_sign = float(binomtest(better, better + worse).pvalue) if better + worse else None
        out[base] = {"pairs_agent_better": better, "pairs_tied": ties, "pairs_agent_worse": worse,
                     "sign_test_p": None if p_sign is None else float(f"{p_sign:.3g}"),
                     "mean_difference_kjmol": round(float(np.mean(diffs)), 3) if diffs else None,
                     "cells_median_better": cells["better"], "cells_median_tied": cells["tied"],
                     "cells_median_worse": cells["worse"], "cells_worse": worse_cells}
    if console is not None:
        from rich.table import Table

        n_cells = sum(len(part["budgets"]) for part in quality.values())
        tab = Table(title=f"(c) the agent against each baseline over all {len(quality)} data sets x budgets "
                          f"({n_cells} cells; seed-paired best expensive-level lambda+, kJ/mol)")
        for col in ["baseline", "pairs: agent better / tied / worse", "sign test p (two-sided)",
                    "mean agent - baseline", "cells by median: better / tied / worse", "cells worse"]:
            tab.add_column(col, justify="right")
        for base, o in out.items():
            tab.add_row(base, f"{o['pairs_agent_better']} / {o['pairs_tied']} / {o['pairs_agent_worse']}",
                        "-" if o["sign_test_p"] is None else f"{o['sign_test_p']:.2g}",
                        "-" if o["mean_difference_kjmol"] is None else f"{o['mean_difference_kjmol']:+.2f}",
                        f"{o['cells_median_better']} / {o['cells_median_tied']} / {o['cells_median_worse']}",
                        "; ".join(o["cells_worse"]) or "none")
        console.print(tab)
    return out


def timing_table(agent_t: dict, base_t: dict, fps: np.ndarray, console) -> dict:
    """Print part (a)'s table; its JSON entries."""
    import torch
    from rich.table import Table

    def fmt(v: float | None, nd: int = 2) -> str:
        return "-" if v is None or not np.isfinite(v) else f"{v:.{nd}f}"

    table = Table(title=f"(a) decision time of the real Campaign (ask(5) of its molecule stage: "
                        f"refit + batch of 5 with the CostModel's CPU-s costs; LocalExecutor, "
                        f"replay backends over synthetic values), pool {len(fps)} x 2048 bits "
                        f"(mean {fps.sum(1).mean():.0f} bits set), torch threads "
                        f"{torch.get_num_threads()}; wall s")
    for col in ["evaluations", "reopen s (restore)", "cold ask s", "ask s (median)",
                "ask with hyperparameter refit s (asks)", "tell s per result",
                "iteration s (ask + 5 tells)", "baseline s (fit + acq)",
                "baseline / iteration"]:
        table.add_column(col, justify="right")
    for n_obs, a in agent_t.items():
        b = base_t.get(n_obs)
        table.add_row(
            str(n_obs), fmt(a["open_s"]), fmt(a["cold_s"]), fmt(a["ask_s"]),
            f"{fmt(a['ask_with_hyper_refit_s'])} ({a['n_hyper_refit_asks']}/{a['n_asks']})",
            fmt(a["tell_s"], 4), fmt(a["iteration_s"]),
            "-" if b is None else f"{b['total_s']:.1f} ({b['fit_s']:.1f} + {b['acq_s']:.1f})"
            + (" extrapolated" if b["extrapolated"] else ""),
            "-" if b is None or a["iteration_s"] is None or not np.isfinite(a["iteration_s"])
            else f"{b['total_s'] / a['iteration_s']:.0f}x")
    console.print(table)

    def col(key: str, nd: int = 3) -> dict:
        return {str(k): (None if v[key] is None or not np.isfinite(v[key]) else round(v[key], nd))
                for k, v in agent_t.items()}

    return {
        "timing_measured_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "timing_source": "agent.campaign.Campaign ask/tell (LocalExecutor, replay-xtb-reorg / "
                         "replay-dft-reorg over a synthetic table), wall s",
        "pool_size": len(fps),
        "fingerprint": "morgan r=2 2048 bits of enumerated SMILES; synthetic values",
        "campaign_reopen_s": col("open_s"),
        "campaign_cold_ask_s": col("cold_s"),
        "campaign_ask_s": col("ask_s"),
        "campaign_ask_with_hyper_refit_s": col("ask_with_hyper_refit_s"),
        "campaign_n_hyper_refit_asks": {str(k): f"{v['n_hyper_refit_asks']}/{v['n_asks']}"
                                        for k, v in agent_t.items()},
        "campaign_tell_s": col("tell_s", 5),
        "campaign_iteration_s": col("iteration_s"),
        "baseline_s": {str(k): round(v["total_s"], 2) for k, v in base_t.items()},
        "baseline_extrapolated": {str(k): v["extrapolated"] for k, v in base_t.items()},
        "baseline_over_campaign_iteration": {
            str(k): round(base_t[k]["total_s"] / agent_t[k]["iteration_s"], 1)
            for k in base_t if k in agent_t and np.isfinite(agent_t[k]["iteration_s"])},
    }


def quality_part(name: str, args: argparse.Namespace, console) -> dict:
    """Part (b) on one replay data set: every strategy x seed x budget, one table per budget."""
    import tempfile

    from rich.progress import Progress
    from rich.table import Table

    from sim_backends.base import EvalInput
    from sim_backends.registry import get_backend

    source, cost_kind = TABLES[name]
    smiles_b, cheap_b, top_b = replay_pool(table_path(name))
    dft = get_backend(LEVELS[1], **level_params(name)[1])
    dft_all_s = float(sum(dft.evaluate(EvalInput(s)).wall_s for s in smiles_b))
    ranks = np.argsort(np.argsort(top_b))

    def rank_of(v: float) -> int:
        return int(ranks[int(np.argmin(np.abs(top_b - v)))]) if np.isfinite(v) else len(ranks)

    from scipy.stats import spearmanr

    part = {"source": _shown(source), "level": LEVEL_NAMES[name],
            "cost_charged": f"recorded {cost_kind} s",
            "n_molecules": len(smiles_b),
            "true_min_kjmol": round(float(top_b.min()), 3),
            "spearman_xtb_dft": round(float(spearmanr(cheap_b, top_b)[0]), 3),
            "dft_all_cpu_s": round(dft_all_s, 1), "budgets": {}}
    strategies = {"agent (Campaign)": None, "cheap-greedy": run_cheap_greedy, "random": run_random}
    with tempfile.TemporaryDirectory() as tmp:
        for fraction in args.budget_fractions:
            budget_s = fraction * dft_all_s
            results: dict[str, list[tuple[float, float, int]]] = {k: [] for k in strategies}
            with Progress(console=console) as progress:
                task = progress.add_task(f"{name}, budget {fraction:.0%}: seeds", total=args.seeds)
                for seed in range(args.seeds):
                    results["agent (Campaign)"].append(
                        run_agent(smiles_b, budget_s, seed, Path(tmp) / f"{name}-{fraction}", name))
                    for sname, fn in strategies.items():
                        if fn is not None:
                            results[sname].append(fn(smiles_b, budget_s, seed, name))
                    progress.advance(task)
            oracle = oracle_best(smiles_b, top_b, budget_s, name)
            tab = Table(title=f"(b) {name}: best {LEVEL_NAMES[name]} lambda+ found (kJ/mol), "
                              f"{len(smiles_b)} molecules (Spearman xTB vs DFT "
                              f"{part['spearman_xtb_dft']:.2f}), budget {budget_s:.0f} CPU s = "
                              f"{fraction:.0%} of DFT on all ({dft_all_s:.0f} s, recorded {cost_kind}); "
                              f"{args.seeds} seeds; true minimum {top_b.min():.2f} kJ/mol; "
                              f"best reachable within the budget (oracle) {oracle:.2f} kJ/mol")
            for col in ["strategy", "median best kJ/mol", "mean best kJ/mol",
                        "median rank (0 = best)", "found the minimum", "reached the oracle",
                        "median DFT evaluations", "median CPU s charged"]:
                tab.add_column(col, justify="right")
            entry = {}
            for sname, runs in results.items():
                best = [r[0] for r in runs]
                n_oracle = sum(bool(np.isfinite(v) and v <= oracle + 1e-9) for v in best)
                tab.add_row(sname, f"{np.nanmedian(best):.2f}", f"{np.nanmean(best):.2f}",
                            f"{np.median([rank_of(v) for v in best]):.0f}",
                            f"{sum(rank_of(v) == 0 for v in best)}/{len(best)}",
                            f"{n_oracle}/{len(best)}",
                            f"{np.median([r[2] for r in runs]):.0f}",
                            f"{np.median([r[1] for r in runs]):.0f}")
                entry[sname] = {"median_best_kjmol": round(float(np.nanmedian(best)), 3),
                                "mean_best_kjmol": round(float(np.nanmean(best)), 3),
                                "median_rank": float(np.median([rank_of(v) for v in best])),
                                "n_found_minimum": int(sum(rank_of(v) == 0 for v in best)),
                                "n_reached_oracle": int(n_oracle),
                                "median_n_dft": float(np.median([r[2] for r in runs])),
                                "median_cpu_s": round(float(np.median([r[1] for r in runs])), 1),
                                "best_per_seed_kjmol": [round(float(v), 3) for v in best]}
            console.print(tab)
            agent_best = [r[0] for r in results["agent (Campaign)"]]
            for sname in ("cheap-greedy", "random"):
                entry[sname]["paired_vs_agent"] = paired(agent_best, [r[0] for r in results[sname]])
            console.print("paired per seed (agent - baseline, kJ/mol; negative = agent better): "
                          + "; ".join(f"{k}: {v['agent_better']} better / {v['ties']} ties / "
                                      f"{v['agent_worse']} worse, mean "
                                      + ("n/a" if v["mean_difference_kjmol"] is None
                                         else f"{v['mean_difference_kjmol']:+.2f}")
                                      for k, v in ((k, entry[k]["paired_vs_agent"])
                                                   for k in ("cheap-greedy", "random"))))
            part["budgets"][f"{fraction:g}"] = {"budget_cpu_s": round(budget_s, 1),
                                                "oracle_kjmol": round(oracle, 3), **entry}
    return part


def paired(agent: list[float], baseline: list[float], tol: float = 1e-6) -> dict:
    """Per-seed comparison of the best values found (minimised; NaN = nothing found,
    worse than any value): how often the agent was better, tied or worse, and the mean
    of agent - baseline over the seeds where both found a value."""
    a = np.nan_to_num(np.asarray(agent, dtype=float), nan=np.inf)
    b = np.nan_to_num(np.asarray(baseline, dtype=float), nan=np.inf)
    both = np.isfinite(a) & np.isfinite(b)
    tie = (a == b) | (both & (np.abs(np.where(both, a - b, 0.0)) <= tol))
    return {"agent_better": int(np.sum(~tie & (a < b))), "ties": int(np.sum(tie)),
            "agent_worse": int(np.sum(~tie & (a > b))),
            "mean_difference_kjmol": round(float(np.mean(a[both] - b[both])), 3) if both.any() else None}


def write_result(out: dict, path: Path) -> int:
    """Print the JSON line and write it to ``path`` (the default file only for a run
    with default arguments)."""
    line = json.dumps(out)
    print(line)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
