"""Benchmark "fragment_surrogate": accuracy of the fragment dimer GP with and without dimer baselines.

Offline, no acquisition: for each fragment-DFT landscape, train
:class:`~agent.surrogates.fragment_gp.FragmentDeltaModel` on ``--train`` structures drawn at
random from the ``--pool`` lowest (by DFT energy), and score it on the structures not trained
on that lie within 10 kJ/mol of the DFT minimum: mean absolute error of the structure energies
and of the per-dimer corrections (kJ/mol), averaged over ``--draws`` draws (draw k uses seed k
for both the training set and the fit). Configurations compared in the same run:

- ``no baselines``: descriptor only (the model before the xTB/D3 dimer baselines), the baseline;
- ``rbf``, ``linear``, ``auto``: the baselines with each ``baseline_kernel`` setting
  (``auto``, the default, keeps whichever of the other two has the lower
  leave-one-structure-out MAE).

``--descriptor polar-h`` scores the same with the descriptor's donor H typed apart
(:func:`sim_backends.fragment_terms.site_types`); ``element+hbond``, ``element+r6``,
``element+2A`` and ``element+r6+hbond`` with extra descriptor terms (an angular H-bond
term, r^-6 sums, a 2 A decay; :data:`sim_backends.fragment_terms.DESCRIPTOR_TERMS`).
``--fit-starts N`` fits the hyperparameters from N optimiser starts (the initial values, then
draws from the priors) and keeps the highest marginal likelihood (``n_fit_starts``);
``--lengthscale-prior SHIFT,SPREAD`` sets the RBF lengthscales' log-normal prior (``lengthscale_prior``).
A landscape smaller than ``--pool`` is
drawn from all its structures, trained on at most half of them.

This is what chose the default; the end-to-end effect on the number of DFT calculations is
``benchmarks/refinement.py`` (``--dimer-baselines none`` for the baseline).

Prints a table per landscape and one JSON line, written to
``benchmarks/results/fragment_surrogate.json`` (or, with non-default arguments,
``fragment_surrogate_<changed options>.json``).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/fragment_surrogate.py            # the two big landscapes
    python benchmarks/fragment_surrogate.py --landscape data/landscapes/formamide_dft --draws 4
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from sim_backends.landscape import Landscape  # noqa: E402
from agent.surrogates.fragment_gp import N_FIT_STARTS, FragmentDeltaModel, parse_lengthscale_prior  # noqa: E402
from sim_backends.fragment_terms import DEFAULT_DESCRIPTOR, DESCRIPTORS  # noqa: E402
from refinement import WINDOW_KJMOL  # noqa: E402

DEFAULT_LANDSCAPES = ("data/landscapes/formic_acid_big_dft", "data/landscapes/formamide_big_dft")
CONFIGS = ("no baselines", "rbf", "linear", "auto")


def fragment_data(path: Path, cheap: str = "ff", expensive: str = "dft",
                  descriptor: str = "element") -> tuple[list, dict[int, np.ndarray]] | None:
    """The fragment terms of every structure of the landscape at ``path`` (the cheap-level
    geometries the replay serves, the stored run's cutoff and functional) and the dimer
    corrections delta of each (from its stored DFT dimer records); None when the landscape
    has no fragment-DFT records."""
    from sim_backends.fragment_terms import dimer_deltas, landscape_fragment_terms
    from sim_backends.replay import stored_landscape
    from sim_backends.structures import load_crystal

    land = stored_landscape(str(Path(path).resolve()), cheap, expensive)
    settings = land["fragment_settings"]
    if settings is None:
        return None
    crystals = [load_crystal(cif, land["smiles"]) for cif in land["cifs"]]
    terms = landscape_fragment_terms(crystals, settings["cutoff_A"], settings["cutoff_mode"], settings["functional"],
                                     descriptor=descriptor)
    deltas = {i: dimer_deltas(t, land["dimers"][sid]) for i, (sid, t) in enumerate(zip(land["ids"], terms, strict=True))}
    return terms, deltas


def score(terms, deltas, e_cheap, e_exp, config: str, n_train: int, pool: int, draws: int,
          n_fit_starts: int = 1, lengthscale_prior: tuple[float, float] | str = "default") -> tuple[float, float]:
    """Mean (over draws) structure MAE and dimer MAE on the uncomputed low-energy structures."""
    n = len(e_cheap)
    low = np.flatnonzero(e_exp - e_exp.min() <= WINDOW_KJMOL)
    lowest = np.argsort(e_exp)[:pool]
    if config == "no baselines":
        terms = [replace(t, baselines=np.zeros((len(t.keys), 0)), baseline_names=[]) for t in terms]
    kernel = "auto" if config == "no baselines" else config
    maes, dimer_maes = [], []
    for k in range(draws):
        train = sorted(np.random.default_rng(k).choice(lowest, n_train, replace=False).tolist())
        model = FragmentDeltaModel(terms, e_cheap, dimer_deltas={i: deltas[i] for i in train}, seed=k,
                                   baseline_kernel=kernel, n_fit_starts=n_fit_starts,
                                   lengthscale_prior=lengthscale_prior).fit({i: float(e_exp[i]) for i in train})
        rest = np.array([i for i in low if i not in train])
        mean, _ = model.predict(rest)
        maes.append(float(np.mean(np.abs(e_cheap[rest] + mean - e_exp[rest]))))
        dimer_maes.append(model.dimer_mae_kjmol({i: deltas[i] for i in rest}))
    return float(np.mean(maes)), float(np.mean(dimer_maes))


def result_name(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """``fragment_surrogate``, or with non-default arguments ``fragment_surrogate_<changes>``
    (a run with other arguments never overwrites the default result)."""
    diff = []
    for key, value in sorted(vars(args).items()):
        if value != parser.get_default(key):
            val = "+".join(Path(v).name for v in value) if key == "landscape" else (
                "+".join(map(str, value)) if isinstance(value, list) else str(value))
            diff.append(f"{key}-{val}".replace(" ", ""))
    return "_".join(["fragment_surrogate", *diff])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--landscape", action="append", help="fragment-DFT landscape directory (repeatable)")
    parser.add_argument("--train", type=int, default=20, help="structures trained on per draw (default 20)")
    parser.add_argument("--pool", type=int, default=50, help="drawn from this many lowest (default 50)")
    parser.add_argument("--draws", type=int, default=10, help="random training sets (default 10)")
    parser.add_argument("--descriptor", default=DEFAULT_DESCRIPTOR, choices=DESCRIPTORS,
                        help=f"dimer descriptor: atom typing, extra terms (default {DEFAULT_DESCRIPTOR})")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS,
                        help="model configurations to score (default all; 'no baselines' is the ratio's reference)")
    parser.add_argument("--fit-starts", type=int, default=N_FIT_STARTS,
                        help="optimiser starts per hyperparameter fit (FragmentDeltaModel n_fit_starts; "
                             f"default {N_FIT_STARTS})")
    parser.add_argument("--lengthscale-prior", type=parse_lengthscale_prior, default=None, metavar="SHIFT,SPREAD",
                        help="log-normal RBF lengthscale prior (FragmentDeltaModel lengthscale_prior): log-median "
                             "shift from BoTorch's dimension-scaled one and log spread, botorch (its own) or auto "
                             "(per fit the lower leave-one-structure-out MAE; default botorch)")
    args = parser.parse_args(argv)
    prior = "default" if args.lengthscale_prior is None else args.lengthscale_prior
    if args.fit_starts < 1:
        parser.error("need --fit-starts >= 1")
    if not 2 <= args.train <= args.pool or args.draws < 1:
        parser.error("need 2 <= --train <= --pool and --draws >= 1")
    warnings.filterwarnings("ignore")
    console = Console()
    out: dict = {"benchmark": "fragment_surrogate", "train": args.train, "pool": args.pool,
                 "draws": args.draws, "descriptor": args.descriptor, "fit_starts": args.fit_starts,
                 "lengthscale_prior": args.lengthscale_prior, "landscapes": {}}
    for path in map(Path, args.landscape or DEFAULT_LANDSCAPES):
        land = Landscape.read(path, ["ff", "dft"])
        with console.status(f"{land.name}: fragment terms"):
            data = fragment_data(path, descriptor=args.descriptor)
        if data is None:
            parser.error(f"{path}: no fragment-DFT dimer records (dft_results.jsonl, run.json)")
        pool = min(args.pool, len(land))  # a small landscape: train on at most half of it
        train = min(args.train, pool // 2)
        e_cheap, e_exp = land.energies("ff"), land.energies("dft")
        table = Table(title=f"{land.name}: MAE on uncomputed structures within {WINDOW_KJMOL:g} kJ/mol "
                      f"({train} of the {pool} lowest computed, {args.draws} draws, {args.descriptor} descriptor)")
        for col in ("model", "structure MAE (kJ/mol)", "dimer MAE (kJ/mol)", "vs no baselines"):
            table.add_column(col)
        res = {}
        for config in args.configs:
            with console.status(f"{land.name}: {config}"):
                res[config] = score(*data, e_cheap, e_exp, config, train, pool, args.draws, args.fit_starts, prior)
            ref = res.get("no baselines")
            table.add_row(config, f"{res[config][0]:.2f}", f"{res[config][1]:.2f}",
                          "-" if ref is None else f"{res[config][0] / ref[0]:.2f}x")
        console.print(table)
        out["landscapes"][land.name] = {
            "n_structures": len(land), "train": train, "pool": pool,
            **{f"mae_{c.replace(' ', '_')}_kjmol": round(v[0], 3) for c, v in res.items()},
            **{f"dimer_mae_{c.replace(' ', '_')}_kjmol": round(v[1], 3) for c, v in res.items()},
        }
    line = json.dumps(out)
    print(line)
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{result_name(parser, args)}.json").write_text(line + "\n")
    return out


if __name__ == "__main__":
    main()
