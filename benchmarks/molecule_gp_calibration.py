"""Calibration of the molecule GP's expensive-level predictions on held-out molecules,
for three noise priors (issue 14: "check its calibration on held-out molecules").

Data sets: the four replay tables of ``benchmarks/molecule_decisions.py`` (GFN2-xTB and
DFT hole reorganisation energies, kJ/mol) and the ESF replay set (``data/esf``: proxy,
quick and refined log10 landscape hole mobility, as ``benchmarks/esf_discovery.py``
loads it; failed records left out).

Training sets as a campaign sees them: every cheaper-level value plus ``k`` expensive
values (k in ``--ks``; ``all-1`` = every expensive value but one), ``--draws`` random
draws per k (``--loo-draws`` for all-1, each leaving out a different molecule). The
surrogate (:class:`agent.surrogates.molecule_gp.MoleculeSurrogate`, through its ``fit`` /
``predict`` / ``calibration``) is fitted the campaign's way: the
cheap values first, then the expensive values one at a time in the draw's order (each
``fit`` call decides, as in the campaign, whether to re-optimise the hyperparameters
warm-started). Held out, at the final hyperparameters:

* ``cheap known``: the expensive value of every molecule outside the ``k``, predicted
  by the fitted model (its cheap values are in the training set);
* ``unseen``: the same molecules, each with its cheap values removed too (one
  ``fit(..., refit_hyperparameters=False)`` per molecule, then ``predict``).

Per data set, k, prior and case, pooled over draws: MAE, mean z, z sd, coverage of the
68 % and 95 % intervals with the predictive sd (latent sd and the fitted expensive-level
noise, as ``MoleculeSurrogate.calibration`` does), the z sd of the latent sd alone (what
the acquisition's expected improvement uses), and the fitted noise sd per level (median
over draws, objective units). Priors (``MoleculeSurrogate.noise_prior``):

* ``gamma``: Gamma(1.1, 0.05) on the noise variance (the current default; the baseline);
* ``lognormal``: log(noise variance) ~ N(-4, 1) (BoTorch's default since 0.12);
* ``nugget``: log(noise variance) ~ N(-7, 0.01), a fixed small nugget (reference).

Also records the surrogate's own leave-out ``calibration()`` (mean over draws). CPU ~3 min.
``--molecule-kernel tanimoto`` / ``tanimoto+descriptors``: that kernel instead of the campaign's
(``molecule_gp.KERNEL``; issue 14).

Prints one table and, last, one JSON line ``{"benchmark": "molecule_gp_calibration",
...}`` also written to ``benchmarks/results/molecule_gp_calibration.json`` (non-default
arguments: a file named after them). Run: ``OMP_NUM_THREADS=1 .venv/bin/python
benchmarks/molecule_gp_calibration.py [--sets ...] [--draws 10] [--ks 2 5 10 all-1]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

RESULTS = ROOT / "benchmarks" / "results"
SETS = ["demo-pool", "dftdft", "pool60", "pool60-dftdft", "esf"]
PRIORS = {"gamma": ("gamma", 1.1, 0.05), "lognormal": ("lognormal", -4.0, 1.0),
          "nugget": ("lognormal", -7.0, 0.01)}
#: the variance ratio var(delta) / var(f_0) at the centre of the discrepancy prior, the
#: campaign's (exp of molecule_gp.LOG_DELTA_RATIO_PRIOR[0]) unless --delta-ratios names others
DEFAULT_DELTA_RATIO = None
DEFAULTS = {"sets": SETS, "draws": 10, "loo_draws": 30, "ks": ["2", "5", "10", "all-1"], "priors": list(PRIORS),
            "molecule_kernel": None, "delta_ratios": None, "discrepancy": None}


def load_set(name: str) -> tuple[list[str], np.ndarray, str]:
    """SMILES and values (n_mol, n_levels; NaN = missing), cheapest level first; units."""
    if name == "esf":
        import esf_discovery as ed

        data = ed.load("refined")
        return data["smiles"], np.stack([data["value"][lv] for lv in data["levels"]], 1), "log10 mu"
    import molecule_decisions as md

    smiles, cheap, top = md.replay_pool(md.table_path(name))
    return smiles, np.stack([cheap, top], 1), "kJ/mol"


def one_draw(fps: np.ndarray, values: np.ndarray, train_top: np.ndarray, prior: tuple, seed: int,
             kernel: str = "tanimoto", desc: np.ndarray | None = None, delta_ratio: float | None = None) -> dict:
    """Fit as the campaign does (cheap values, then the expensive ones one at a time) and
    predict the held-out expensive values with and without their cheap values
    (``delta_ratio``: centre of the discrepancy prior instead of the campaign's)."""
    from agent.surrogates import molecule_gp
    from agent.surrogates.molecule_gp import MoleculeSurrogate, Observation

    n, nf = values.shape
    top = nf - 1
    cheap = [Observation(i, f, float(values[i, f])) for f in range(top) for i in range(n)
             if np.isfinite(values[i, f])]
    default_prior = molecule_gp.LOG_DELTA_RATIO_PRIOR
    if delta_ratio is not None:  # read by the surrogate when it is made
        molecule_gp.LOG_DELTA_RATIO_PRIOR = (float(np.log(delta_ratio)), default_prior[1])
    try:
        m = MoleculeSurrogate(nf, seed=seed, kernel=kernel)
    finally:
        molecule_gp.LOG_DELTA_RATIO_PRIOR = default_prior
    m.noise_prior = prior
    m.fit(fps, cheap, descriptors=desc)
    obs = list(cheap)
    for i in train_top:
        obs.append(Observation(int(i), top, float(values[i, top])))
        m.fit(fps, obs)
    noise_sd = (np.sqrt(m.noise()) * m.y_scale).tolist()
    noise_top = float(m.noise()[top]) * m.y_scale ** 2
    calib = m.calibration()
    held = np.array([i for i in range(n) if i not in set(train_top.tolist()) and np.isfinite(values[i, top])])
    out = {"noise_sd": noise_sd, "calibration": calib, "y": values[held, top].tolist()}
    mu, sd = m.predict(fps[held], top, descriptors=None if desc is None else desc[held])
    out["known"] = (mu.tolist(), sd.tolist())
    mu_u, sd_u = [], []
    for i in held:
        m.fit(fps, [o for o in obs if o.mol_index != i], refit_hyperparameters=False)
        a, b = m.predict(fps[i: i + 1], top, descriptors=None if desc is None else desc[i: i + 1])
        mu_u.append(float(a[0]))
        sd_u.append(float(b[0]))
    out["unseen"] = (mu_u, sd_u)
    out["noise_top_var"] = noise_top
    return out


def pooled(draws: list[dict], case: str) -> dict:
    y = np.concatenate([d["y"] for d in draws])
    mu = np.concatenate([d[case][0] for d in draws])
    sd = np.concatenate([d[case][1] for d in draws])
    noise = np.concatenate([np.full(len(d["y"]), d["noise_top_var"]) for d in draws])
    z = (y - mu) / np.sqrt(sd ** 2 + noise)
    z_lat = (y - mu) / sd
    nlpd = 0.5 * np.log(2 * np.pi * (sd ** 2 + noise)) + 0.5 * z ** 2  # per molecule, in the set's units
    return {"n": int(len(y)), "mae": float(np.mean(np.abs(y - mu))), "z_mean": float(np.mean(z)),
            "nlpd": float(np.mean(nlpd)),
            "z_std": float(np.std(z)), "coverage_68": float(np.mean(np.abs(z) <= 1.0)),
            "coverage_95": float(np.mean(np.abs(z) <= 1.96)), "z_std_latent": float(np.std(z_lat)),
            "pred_sd_median": float(np.median(np.sqrt(sd ** 2 + noise)))}


def mean_calibration(draws: list[dict]) -> dict:
    out: dict[str, dict[str, float]] = {}
    for key in ("top", "top_unseen"):
        vals = [d["calibration"][key] for d in draws if key in d["calibration"]]
        if vals:
            out[key] = {s: float(np.mean([v[s] for v in vals])) for s in ("z_std", "coverage_68", "coverage_95")}
            out[key]["n_draws"] = len(vals)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", nargs="+", default=DEFAULTS["sets"], choices=SETS)
    ap.add_argument("--draws", type=int, default=DEFAULTS["draws"])
    ap.add_argument("--loo-draws", type=int, default=DEFAULTS["loo_draws"],
                    help="draws of k = all-1 (each leaves out a different molecule)")
    ap.add_argument("--ks", nargs="+", default=DEFAULTS["ks"])
    ap.add_argument("--priors", nargs="+", default=DEFAULTS["priors"], choices=list(PRIORS))
    ap.add_argument("--molecule-kernel", default=DEFAULTS["molecule_kernel"],
                    choices=["tanimoto", "tanimoto+descriptors"],
                    help="the molecule GP's kernel (default: the campaign's, molecule_gp.KERNEL)")
    ap.add_argument("--delta-ratios", nargs="+", type=float, default=DEFAULTS["delta_ratios"],
                    help="centres of the discrepancy prior var(delta)/var(f_0) to compare (default: the "
                         "campaign's); with several, a leave-one-set-out choice by predictive log density")
    ap.add_argument("--discrepancy", default=DEFAULTS["discrepancy"], choices=["map", "posterior-mean"],
                    help="how the discrepancy variances enter the predictions (default: the campaign's, "
                         "molecule_gp.DISCREPANCY_ESTIMATE)")
    args = ap.parse_args(argv)
    if args.discrepancy is not None:
        from agent.surrogates import molecule_gp  # read by each surrogate when it is made

        molecule_gp.DISCREPANCY_ESTIMATE = args.discrepancy
    if args.delta_ratios is not None and min(args.delta_ratios) <= 0:
        ap.error("--delta-ratios must be > 0")
    if args.draws < 1 or args.loo_draws < 1:
        ap.error("--draws and --loo-draws must be >= 1")
    from agent.surrogates.fingerprints import morgan_fingerprints
    from agent.surrogates.molecule_gp import KERNEL, molecule_descriptors

    kernel = args.molecule_kernel or KERNEL
    t0 = time.process_time()
    results: dict = {}
    print(f"{'set':14s} {'k':>5s} {'prior':9s} {'case':7s} {'n':>4s} {'MAE':>7s} {'z mean':>7s} {'z sd':>6s} "
          f"{'cov68':>6s} {'cov95':>6s} {'z sd lat':>8s} {'pred sd':>7s} {'NLPD':>7s}  noise sd per level (median)")
    for name in args.sets:
        smiles, values, unit = load_set(name)
        fps = morgan_fingerprints(smiles, n_bits=2048, radius=2)
        desc = molecule_descriptors(smiles) if kernel != "tanimoto" else None
        top = values.shape[1] - 1
        has_top = np.flatnonzero(np.isfinite(values[:, top]))
        results[name] = {"n_molecules": len(smiles), "n_top": int(len(has_top)), "units": unit, "k": {}}
        for k_arg in args.ks:
            k = len(has_top) - 1 if k_arg == "all-1" else int(k_arg)
            if not 1 <= k < len(has_top):
                continue
            rng = np.random.default_rng(1000 + k)
            if k_arg == "all-1":  # each draw leaves out a different molecule
                left = rng.permutation(has_top)[: args.loo_draws]
                trains = [rng.permutation(has_top[has_top != i]) for i in left]
            else:
                trains = [rng.choice(has_top, size=k, replace=False) for _ in range(args.draws)]
            res_k = results[name]["k"].setdefault(k_arg, {"k": k})
            for pname, ratio in [(p, r) for p in args.priors for r in (args.delta_ratios or [None])]:
                draws = [one_draw(fps, values, tr, PRIORS[pname], seed, kernel, desc, ratio)
                         for seed, tr in enumerate(trains)]
                pname = pname if ratio is None else f"{pname} r={ratio:g}"
                noise = np.median(np.array([d["noise_sd"] for d in draws]), axis=0)
                entry = {"noise_sd_median": noise.tolist(), "calibration_mean": mean_calibration(draws)}
                for case in ("known", "unseen"):
                    s = pooled(draws, case)
                    entry[case] = s
                    print(f"{name:14s} {k_arg:>5s} {pname:9s} {case:7s} {s['n']:4d} {s['mae']:7.3f} "
                          f"{s['z_mean']:7.2f} {s['z_std']:6.2f} {s['coverage_68']:6.2f} {s['coverage_95']:6.2f} "
                          f"{s['z_std_latent']:8.2f} {s['pred_sd_median']:7.3f} {s['nlpd']:7.3f}  "
                          + " / ".join(f"{x:.3g}" for x in noise) + f" {unit}", flush=True)
                res_k[pname] = entry
    out = {"benchmark": "molecule_gp_calibration", "sets": args.sets, "draws": args.draws, "loo_draws": args.loo_draws,
           "ks": args.ks, "priors": {p: list(PRIORS[p]) for p in args.priors}, "baseline_prior": "gamma",
           "results": results, "benchmark_cpu_s": round(time.process_time() - t0, 1),
           "molecule_kernel": kernel,
           "args": {"sets": args.sets, "draws": args.draws, "loo_draws": args.loo_draws, "ks": args.ks,
                    "priors": args.priors, "molecule_kernel": args.molecule_kernel,
                    "delta_ratios": args.delta_ratios, "discrepancy": args.discrepancy}}
    if args.delta_ratios and len(args.delta_ratios) > 1:
        out["delta_ratio_leave_one_set_out"] = leave_one_set_out(results, args.priors, args.delta_ratios, args.ks)
    non_default = [f"{a}-{'-'.join(map(str, v)) if isinstance(v, list) else v}"
                   for a, v in out["args"].items() if v != DEFAULTS[a]]
    path = RESULTS / ("molecule_gp_calibration" + ("_" + "_".join(non_default) if non_default else "") + ".json")
    path.write_text(json.dumps(out) + "\n")
    print(json.dumps(out))
    return 0


def leave_one_set_out(results: dict, priors: list[str], ratios: list[float], ks: list[str]) -> dict:
    """Per noise prior and held-out set: the discrepancy-prior centre with the lowest mean
    predictive log density on the OTHER sets (mean over their k < all-1 and both cases of the
    NLPD relative to the first ratio, so the sets' units cancel), and its NLPD there."""
    out: dict = {}
    small = [k for k in ks if k != "all-1"]
    for pname in priors:
        keys = [f"{pname} r={r:g}" for r in ratios]

        def score(name: str, key: str) -> float | None:
            vals = [results[name]["k"][k][key][c]["nlpd"] - results[name]["k"][k][keys[0]][c]["nlpd"]
                    for k in small if k in results[name]["k"] for c in ("known", "unseen")]
            return float(np.mean(vals)) if vals else None

        per = {}
        for held in results:
            others = [n for n in results if n != held]
            totals = {key: np.mean([v for n in others if (v := score(n, key)) is not None]) for key in keys}
            chosen = min(totals, key=totals.get)
            per[held] = {"chosen": chosen, "others_mean_dnlpd": {k: round(float(v), 4) for k, v in totals.items()},
                         "held_out_dnlpd": {k: score(held, k) for k in keys}}
            print(f"leave out {held:14s} ({pname}): chosen {chosen}; held-out dNLPD "
                  + ", ".join(f"{k.split()[-1]} {score(held, k):+.3f}" for k in keys))
        out[pname] = per
    return out


if __name__ == "__main__":
    raise SystemExit(main())
