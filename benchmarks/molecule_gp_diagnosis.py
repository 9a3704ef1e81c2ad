"""Why the agent ties cheap-greedy on the molecule_decisions replay tables (issue 14).

Three checks on one or more replay tables of ``benchmarks/molecule_decisions.py``:

1. ``state``: the molecule surrogate fitted as the campaign fits it (every xTB value
   first, then cheap-greedy's first k = 1, 2, 3 DFT results, hyperparameters
   re-optimised): rho, var(delta)/var(f_0), mean_delta, the noises, and the DFT
   posterior, expected improvement (EI over the best DFT value so far) and EI rank of
   the 12 lowest-xTB molecules and of the DFT minimum, with each molecule's Tanimoto
   similarity to the first DFT molecule.
2. ``hindsight``: the real Campaign (molecule_decisions' ``run_agent``) with the
   surrogate's hyperparameters fixed at their MAP given *every* xTB and DFT value of
   the table (not usable in practice): if the agent still ties cheap-greedy, no prior
   or hyperparameter fit can make this model beat it on that table.
3. ``loo``: with every value known, the leave-one-out DFT error of the GP (the
   molecule's xTB value known) against the linear map DFT = a + b xTB: does the
   Tanimoto discrepancy carry molecule-specific information at all?

Run: ``OMP_NUM_THREADS=1 python benchmarks/molecule_gp_diagnosis.py [--tables ...]
[--checks state hindsight loo] [--seeds 10]`` (~1 min per table for ``hindsight``).
Prints only; the figures are in benchmarks/results/NOTES.md (2026-12-04, issue 14).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import molecule_decisions as md  # noqa: E402

from agent.surrogates import molecule_gp as mg  # noqa: E402
from agent.surrogates.fingerprints import morgan_fingerprints  # noqa: E402


def load(name: str) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    smiles, cheap, top = md.replay_pool(md.table_path(name))
    return smiles, cheap, top, morgan_fingerprints(smiles, n_bits=2048, radius=2)


def full_fit(fps: np.ndarray, cheap: np.ndarray, top: np.ndarray) -> mg.MoleculeSurrogate:
    obs = [mg.Observation(i, 0, float(c)) for i, c in enumerate(cheap)]
    obs += [mg.Observation(i, 1, float(t)) for i, t in enumerate(top)]
    m = mg.MoleculeSurrogate(2, seed=0, n_iter_first=200)
    m.fit(fps, obs)
    return m


def describe(m: mg.MoleculeSurrogate) -> str:
    h, s = m.hyper, m.y_scale
    return (f"rho {h['rho'][0]:.3f}; var(delta)/var(f0) {np.exp(h['log_delta'][0] - h['log_signal'][0]):.3f} "
            f"(sd delta {np.sqrt(np.exp(h['log_delta'][0])) * s:.1f}, sd f0 "
            f"{np.sqrt(np.exp(h['log_signal'][0])) * s:.1f} kJ/mol); level means xTB "
            f"{m.fidelity_means()[0]:.1f}, DFT {m.fidelity_means()[1]:.1f} kJ/mol; noise sd xTB "
            f"{np.sqrt(m.noise()[0]) * s:.1f}, DFT {np.sqrt(m.noise()[1]) * s:.1f} kJ/mol")


def check_state(name: str) -> None:
    from agent.acquisition import expected_improvement

    smiles, cheap, top, fps = load(name)
    order = np.argsort(cheap)
    a = fps.astype(float)
    inter = a @ a.T
    nb = a.sum(1)
    tani = inter / (nb[:, None] + nb[None, :] - inter)
    xtb = [mg.Observation(int(i), 0, float(cheap[i])) for i in range(len(smiles))]
    for k in (1, 2, 3):
        m = mg.MoleculeSurrogate(2, seed=0)
        m.fit(fps, xtb)
        m.fit(fps, xtb + [mg.Observation(int(i), 1, float(top[i])) for i in order[:k]],
              refit_hyperparameters=True)
        mu, sd = m.predict(fps, 1)
        best = float(min(top[i] for i in order[:k]))
        ei = expected_improvement((best - mu) / m.y_scale, sd / m.y_scale) * m.y_scale
        cand = sorted(set(range(len(smiles))) - set(order[:k].tolist()), key=lambda i: -ei[i])
        print(f"== {name}: after DFT on {[smiles[i] for i in order[:k]]} "
              f"({[round(float(top[i]), 2) for i in order[:k]]} kJ/mol)\n   {describe(m)}")
        rows = list(order[:12]) + [int(np.argmin(top))]
        for i in rows:
            rank = cand.index(i) if i in cand else "-"
            print(f"   xTB #{list(order).index(i):2d} {smiles[i]:22s} xTB {cheap[i]:6.2f} DFT {top[i]:6.2f} "
                  f"posterior {mu[i]:6.2f} +- {sd[i]:5.2f}  EI {ei[i]:6.3f} (rank {rank})  "
                  f"Tanimoto to {smiles[order[0]]} {tani[order[0], i]:.2f}")


def check_hindsight(name: str, seeds: int) -> None:
    from sim_backends.base import EvalInput
    from sim_backends.registry import get_backend

    smiles, cheap, top, fps = load(name)
    full = full_fit(fps, cheap, top)
    s2 = full.y_scale ** 2
    fixed_h = {"rho": full.hyper["rho"].copy(), "signal": np.exp(full.hyper["log_signal"]) * s2,
               "delta": np.exp(full.hyper["log_delta"]) * s2, "noise": full.noise() * s2,
               "means": full.fidelity_means()}
    print(f"== {name}: hindsight hyperparameters: {describe(full)}")

    def fixed(self: mg.MoleculeSurrogate) -> None:  # hyperparameters in the current units
        sc = self.y_scale ** 2
        self.hyper["rho"] = fixed_h["rho"].copy()
        self.hyper["log_signal"] = np.log(fixed_h["signal"] / sc)
        self.hyper["log_delta"] = np.log(fixed_h["delta"] / sc)
        self.hyper["log_noise"] = np.log(np.maximum(fixed_h["noise"] / sc - mg.NOISE_FLOOR, 1e-12))
        self._set_means((fixed_h["means"] - self.y_loc) / self.y_scale)

    saved = (mg.MoleculeSurrogate._fit_hyperparameters, mg.MoleculeSurrogate._restandardise,
             mg.MoleculeSurrogate._init_means)

    def restandardise(self: mg.MoleculeSurrogate, loc: float, scale: float) -> None:
        saved[1](self, loc, scale)
        fixed(self)

    mg.MoleculeSurrogate._fit_hyperparameters = fixed
    mg.MoleculeSurrogate._restandardise = restandardise
    mg.MoleculeSurrogate._init_means = fixed
    kernel, mg.KERNEL = mg.KERNEL, "tanimoto"  # the hindsight fit is the Tanimoto model's
    try:
        dft = get_backend(md.LEVELS[1], **md.level_params(name)[1])
        dft_all = sum(dft.evaluate(EvalInput(s)).wall_s for s in smiles)
        with tempfile.TemporaryDirectory() as tmp:
            for frac in (0.05, 0.1, 0.15, 0.25):
                agent = [md.run_agent(smiles, frac * dft_all, s, Path(tmp) / f"{frac}", name)[0]
                         for s in range(seeds)]
                greedy = [md.run_cheap_greedy(smiles, frac * dft_all, s, name)[0] for s in range(seeds)]
                d = np.array(agent) - np.array(greedy)
                print(f"   budget {frac:.0%}: agent (hindsight hyperparameters) median {np.median(agent):.2f}, "
                      f"cheap-greedy {np.median(greedy):.2f} kJ/mol; agent better/tied/worse "
                      f"{int((d < -1e-6).sum())}/{int((np.abs(d) <= 1e-6).sum())}/{int((d > 1e-6).sum())}",
                      flush=True)
    finally:
        (mg.MoleculeSurrogate._fit_hyperparameters, mg.MoleculeSurrogate._restandardise,
         mg.MoleculeSurrogate._init_means) = saved
        mg.KERNEL = kernel


def check_loo(name: str) -> None:
    smiles, cheap, top, fps = load(name)
    cal = full_fit(fps, cheap, top).calibration()
    n = len(top)
    lin = []
    for i in range(n):
        keep = np.arange(n) != i
        lin.append(abs(top[i] - np.polyval(np.polyfit(cheap[keep], top[keep], 1), cheap[i])))
    print(f"== {name} (n = {n}): leave-one-out DFT MAE, xTB known: GP {cal['top']['mae']:.2f} kJ/mol "
          f"(z sd {cal['top']['z_std']:.2f}), linear a + b xTB {np.mean(lin):.2f}; molecule unseen GP "
          f"{cal['top_unseen']['mae']:.2f}; DFT sd {top.std():.2f} kJ/mol")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tables", nargs="+", choices=sorted(md.TABLES), default=["pool60-dftdft"])
    ap.add_argument("--checks", nargs="+", choices=["state", "hindsight", "loo"],
                    default=["state", "hindsight", "loo"])
    ap.add_argument("--seeds", type=int, default=10)
    args = ap.parse_args(argv)
    for name in args.tables:
        if "state" in args.checks:
            check_state(name)
        if "loo" in args.checks:
            check_loo(name)
        if "hindsight" in args.checks:
            check_hindsight(name, args.seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
