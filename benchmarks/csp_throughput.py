"""Benchmark ``csp_throughput``: batched rigid-body minimisation vs a SciPy baseline.

Molecule: oxalic acid, rigid, in the gas-phase PBE+TS geometry shipped with X23
(data/reference/x23/x23_pbe_ts_molecules.extxyz, alpha form conformer; the SMILES route
rejects it because the C-C bond counts as rotatable), RESP charges (pyscf HF/6-31G*
ESP fit). Energy model: W99 exp-6 + Ewald point charges, 12 A cutoff, float64.

1. Throughput: the same trial structures (P2_1/c, Z=4, Sobol seed 0) minimised
   (a) by :func:`sim_backends.csp.minimise.minimise_batch` (batched L-BFGS, chunks of 8
   structures per energy call) and (b) by :func:`minimise_scipy` (one structure at a
   time, SciPy L-BFGS-B, analytic autograd gradients), both with gtol = 0.05 on one
   thread. Throughput = minimised structures per CPU second (``time.process_time``).
   Same-minima check: the lowest energy of the shared set and the fraction of
   baseline minima whose energy is reproduced within 0.05 kJ/mol by the batched run.
2. A full CSP of oxalic acid over the ten default space groups with ``run_csp`` on
   ``--workers`` Ray workers (default 1,000 trials). The wall time for 10,000 and
   100,000 trials is EXTRAPOLATED linearly from it, twice: from the measured wall
   time (depends on how busy the machine was) and from the measured CPU time of the
   minimisation tasks plus the serial trial generation and dedupe, as the wall time
   on ``--workers`` otherwise idle cores.

Run:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/csp_throughput.py
      [--n-baseline 12] [--n-batched 64] [--csp-trials 1000] [--workers 2]
Writes benchmarks/results/csp_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def oxalic_acid(charges: str = "resp"):
    """Rigid oxalic acid from the X23 gas-phase geometry with fitted charges."""
    from ase.io import read

    from sim_backends.csp.charges import compute_charges
    from sim_backends.csp.rigid import RigidMolecule, symmetry_classes

    atoms = next(a for a in read(ROOT / "data/reference/x23/x23_pbe_ts_molecules.extxyz", index=":")
                 if a.info.get("name") == "oxalic_acid_alpha")
    sym, xyz = atoms.get_chemical_symbols(), atoms.get_positions()
    fit = compute_charges(sym, xyz, charges, symmetry_classes(sym, xyz), cache_key="OC(=O)C(=O)O")
    return RigidMolecule.from_atoms(sym, xyz, smiles="OC(=O)C(=O)O", charges_e=fit.charges_e,
                                    charge_method=fit.method)


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import torch
    from rich.console import Console
    from rich.table import Table

    from sim_backends.csp.forcefield import LatticeEnergyModel
    from sim_backends.csp.minimise import minimise_batch, minimise_scipy
    from sim_backends.csp.run import run_csp
    from sim_backends.csp.trials import generate_trials

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-baseline", type=int, default=12)
    ap.add_argument("--n-batched", type=int, default=64)
    ap.add_argument("--csp-trials", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--charges", default="resp")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    console = Console(stderr=True)

    mol = oxalic_acid(args.charges)
    model = LatticeEnergyModel(mol, cutoff_A=12.0)
    trials = generate_trials(mol, "P2_1/c", max(args.n_batched, args.n_baseline), seed=0)
    console.print(f"batched minimisation of {args.n_batched} trials ...")
    c0 = time.process_time()
    batched = minimise_batch(trials.subset(slice(0, args.n_batched)), mol, model, gtol=0.05)
    cpu_batched = time.process_time() - c0
    console.print(f"SciPy L-BFGS-B baseline on {args.n_baseline} trials ...")
    c0 = time.process_time()
    base = minimise_scipy(trials.subset(slice(0, args.n_baseline)), mol, model, gtol=0.05)
    cpu_base = time.process_time() - c0
    rate_batched = args.n_batched / cpu_batched
    rate_base = args.n_baseline / cpu_base
    shared = batched.energy_kjmol[: args.n_baseline]
    reproduced = float(np.mean([np.abs(shared - e).min() < 0.05 for e in base.energy_kjmol]))
    reproduced_all = float(np.mean([np.abs(batched.energy_kjmol - e).min() < 0.05
                                    for e in base.energy_kjmol]))
    same_trial = float(np.mean(np.abs(shared - base.energy_kjmol) < 0.05))
    low_diff = float(batched.energy_kjmol.min() - base.energy_kjmol.min())

    table = Table(title="Rigid-body minimisation throughput, oxalic acid P2_1/c (Z=4), 1 thread")
    for c in ("method", "structures", "CPU s", "structures / CPU s", "ratio", "mean iters",
              "converged", "lowest E kJ/mol"):
        table.add_column(c, justify="right")
    table.add_row("SciPy L-BFGS-B (baseline)", str(args.n_baseline), f"{cpu_base:.1f}",
                  f"{rate_base:.3f}", "1.00", f"{base.n_iter.mean():.0f}",
                  f"{base.converged.mean():.0%}", f"{base.energy_kjmol.min():.3f}")
    table.add_row("batched L-BFGS", str(args.n_batched), f"{cpu_batched:.1f}", f"{rate_batched:.3f}",
                  f"{rate_batched / rate_base:.2f}", f"{batched.n_iter.mean():.0f}",
                  f"{batched.converged.mean():.0%}", f"{batched.energy_kjmol.min():.3f}")
    Console(width=200).print(table)
    print(f"same minima: {reproduced:.0%} of the baseline minima are reproduced (|dE| < 0.05 "
          f"kJ/mol) by the batched run on the same {args.n_baseline} trials, {reproduced_all:.0%} "
          f"by its {args.n_batched} trials; same minimum from the same start for {same_trial:.0%} "
          f"(otherwise the two optimisers descend into different, equally valid basins); lowest "
          f"energy batched minus baseline: {low_diff:+.4f} kJ/mol")

    console.print(f"CSP of oxalic acid, {args.csp_trials} trials, 10 space groups, "
                  f"{args.workers} workers ...")
    t0 = time.perf_counter()
    land = run_csp(mol, args.csp_trials, seed=0, n_workers=args.workers, progress=True)
    wall = time.perf_counter() - t0
    per_trial = wall / args.csp_trials
    serial_s = land.meta["trials_wall_s"] + (wall - land.meta["trials_wall_s"] - land.meta["minimise_wall_s"])
    cpu_per_trial = land.meta["minimise_cpu_s"] / args.csp_trials
    dedicated_per_trial = cpu_per_trial / args.workers + serial_s / args.csp_trials
    table2 = Table(title="CSP wall time, oxalic acid, 10 space groups")
    for c in ("trials", "workers", "wall s", "wall s, idle cores", "unique minima",
              "global min kJ/mol", "note"):
        table2.add_column(c, justify="right")
    table2.add_row(str(args.csp_trials), str(args.workers), f"{wall:.0f}",
                   f"{dedicated_per_trial * args.csp_trials:.0f}", str(len(land)),
                   f"{land.minima[0].energy_kjmol:.2f}" if land.minima else "-",
                   f"measured (minimisation CPU {land.meta['minimise_cpu_s']:.0f} s)")
    for n in (10_000, 100_000):
        table2.add_row(str(n), str(args.workers), f"{per_trial * n:.0f}",
                       f"{dedicated_per_trial * n:.0f}", "-", "-",
                       f"EXTRAPOLATED from {args.csp_trials}")
    Console(width=200).print(table2)

    summary = {
        "benchmark": "csp_throughput",
        "molecule": "oxalic acid (X23 gas-phase geometry, rigid)", "charges": mol.charge_method,
        "space_group": "P2_1/c", "gtol": 0.05, "cutoff_A": 12.0,
        "batched_structures_per_cpu_s": round(rate_batched, 4),
        "scipy_structures_per_cpu_s": round(rate_base, 4),
        "ratio_batched_vs_scipy": round(rate_batched / rate_base, 2),
        "baseline_minima_reproduced_fraction": round(reproduced, 3),
        "baseline_minima_found_in_batched_set_fraction": round(reproduced_all, 3),
        "same_start_same_minimum_fraction": round(same_trial, 3),
        "lowest_energy_batched_minus_baseline_kjmol": round(low_diff, 5),
        "csp_trials_measured": args.csp_trials, "csp_workers": args.workers,
        "csp_wall_s_measured": round(wall, 1),
        "csp_unique_minima": len(land),
        "csp_global_min_kjmol": round(land.minima[0].energy_kjmol, 3) if land.minima else None,
        "csp_minimise_cpu_s_measured": round(land.meta["minimise_cpu_s"], 1),
        "csp_serial_s_measured": round(serial_s, 1),
        "csp_10k_wall_s_extrapolated": round(per_trial * 10_000, 0),
        "csp_100k_wall_s_extrapolated": round(per_trial * 100_000, 0),
        "csp_10k_wall_s_idle_cores_extrapolated": round(dedicated_per_trial * 10_000, 0),
        "csp_100k_wall_s_idle_cores_extrapolated": round(dedicated_per_trial * 100_000, 0),
    }
    out = ROOT / "benchmarks/results/csp_throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
