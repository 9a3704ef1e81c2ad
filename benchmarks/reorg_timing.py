"""Benchmark ``reorg_timing``: cost and accuracy of the hole reorganisation energy levels.

For benzene, thiophene, naphthalene and anthracene, on one thread, it measures wall
and CPU seconds and lambda_+ of

* ``xtb-reorg`` -- GFN2-xTB relaxations of both charge states (the baseline: cost
  ratios are DFT / xTB, measured in the same run);
* ``dft-reorg`` with ``geometry="xtb"`` -- B3LYP/6-31G (density fitting, grid level 1) single points
  on the GFN2-xTB geometries ("DFT//xTB", four SCF calculations);
* ``dft-reorg`` default (``geometry="dft"``) -- both states relaxed with geomeTRIC at
  B3LYP/6-31G (molecules given by ``--full-opt``);

then, for naphthalene, the DFT//xTB cost with other basis sets (``--bases``).
lambda_+ is compared with B3LYP/6-31G(d) literature values: naphthalene 0.187 eV,
anthracene 0.138 eV (Coropceanu et al., Phys. Rev. Lett. 89, 275503 (2002); Gruhn et
al., J. Am. Chem. Soc. 124, 7918 (2002)). Wall times depend on the load of the
machine; CPU seconds (``time.process_time``) much less so.

Run:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/reorg_timing.py
      [--molecules benzene,thiophene] [--full-opt thiophene,naphthalene]
      [--bases sto-3g,6-31g,def2-svp]
Writes benchmarks/results/reorg_timing.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MOLECULES = {
    "benzene": "c1ccccc1",
    "thiophene": "c1ccsc1",
    "naphthalene": "c1ccc2ccccc2c1",
    "anthracene": "c1ccc2cc3ccccc3cc2c1",
}
#: lambda_+ in eV at B3LYP/6-31G(d) (references in the module docstring)
LITERATURE_EV = {"naphthalene": 0.187, "anthracene": 0.138}


def run_one(backend, smiles: str) -> dict:
    from sim_backends.base import EvalInput

    inp = EvalInput(smiles)
    res = backend.evaluate(inp)
    return {
        "status": res.status,
        "reason": res.reason,
        "wall_s": res.wall_s,
        "cpu_s": res.extra.get("cpu_s"),
        "estimate_s": backend.cost_estimate(inp),
        "lambda_ev": res.extra.get("reorg_energy_ev"),
        "lambda_kjmol": res.values.get("reorg_energy_kjmol"),
        "n_opt_steps": [res.extra.get(k, {}).get("n_opt_steps") for k in ("neutral", "cation")],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full-opt", default="thiophene",
                    help="molecules to relax fully with DFT (comma list, '' for none)")
    ap.add_argument("--molecules", default=",".join(MOLECULES),
                    help=f"molecules to time (comma list of {', '.join(MOLECULES)})")
    ap.add_argument("--bases", default="sto-3g,6-31g,def2-svp",
                    help="basis sets for the naphthalene DFT//xTB basis scan")
    args = ap.parse_args()

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from sim_backends.reorg import DftReorgBackend, XtbReorgBackend

    mols = [m for m in args.molecules.split(",") if m]
    unknown = sorted(set(mols + args.full_opt.split(",")) - set(MOLECULES) - {""})
    if unknown:
        raise SystemExit(f"unknown molecule(s) {unknown}; choose from {list(MOLECULES)}")
    full_opt = [m for m in args.full_opt.split(",") if m]
    bases = [b for b in args.bases.split(",") if b]
    jobs = [("xtb", m, XtbReorgBackend()) for m in mols]
    jobs += [("dft//xtb", m, DftReorgBackend(geometry="xtb")) for m in mols]
    if "naphthalene" in mols:
        jobs += [(f"dft//xtb {b}", "naphthalene", DftReorgBackend(basis=b, geometry="xtb"))
                 for b in bases if b != "6-31g"]
    jobs += [("dft-opt", m, DftReorgBackend(geometry="dft")) for m in full_opt]
    from sim_backends.base import EvalInput

    XtbReorgBackend().evaluate(EvalInput("C"))  # import tblite/ase before timing

    results: dict[str, dict[str, dict]] = {}
    with Progress(transient=True) as progress:
        task = progress.add_task("reorganisation energies", total=len(jobs))
        for level, mol, backend in jobs:
            progress.update(task, description=f"{level} {mol}")
            r = results.setdefault(level, {})[mol] = run_one(backend, MOLECULES[mol])
            progress.console.print(
                f"{mol:12s} {level:18s} {r['status']:6s} wall {r['wall_s']:7.1f} s  "
                f"CPU {r['cpu_s'] or float('nan'):7.1f} s  lambda {r['lambda_ev'] or float('nan'):.4f} eV"
            )
            progress.advance(task)

    console = Console(width=150)
    table = Table(title="Hole reorganisation energy: cost per molecule (1 thread) and lambda+")
    for col in ("molecule", "level", "status", "wall s", "CPU s", "est. s", "CPU / xTB",
                "opt steps N/C", "lambda+ eV", "lit. eV"):
        table.add_column(col, justify="left" if col in ("molecule", "level", "status") else "right")
    for level, per_mol in results.items():
        for mol, r in per_mol.items():
            base = results["xtb"].get(mol, {}).get("cpu_s")
            ratio = f"{r['cpu_s'] / base:.0f}x" if r["cpu_s"] and base else "-"
            table.add_row(
                mol, level, r["status"] if r["status"] == "ok" else r["reason"][:40],
                f"{r['wall_s']:.1f}", f"{r['cpu_s']:.1f}" if r["cpu_s"] else "-",
                f"{r['estimate_s']:.1f}", ratio, "/".join(str(s) for s in r["n_opt_steps"]),
                f"{r['lambda_ev']:.3f}" if r["lambda_ev"] is not None else "-",
                f"{LITERATURE_EV[mol]:.3f}" if mol in LITERATURE_EV else "-",
            )
    console.print(table)

    def cpu(level: str, mol: str) -> float | None:
        r = results.get(level, {}).get(mol)
        return round(r["cpu_s"], 2) if r and r["cpu_s"] else None

    def lam(level: str, mol: str) -> float | None:
        r = results.get(level, {}).get(mol)
        return round(r["lambda_ev"], 4) if r and r["lambda_ev"] is not None else None

    summary = {
        "benchmark": "reorg_timing",
        "xtb_cpu_s": {m: cpu("xtb", m) for m in mols},
        "dft_xtbgeom_cpu_s": {m: cpu("dft//xtb", m) for m in mols},
        "dft_fullopt_cpu_s": {m: cpu("dft-opt", m) for m in full_opt},
        "dft_over_xtb_cpu_naphthalene": (
            round(cpu("dft//xtb", "naphthalene") / cpu("xtb", "naphthalene"), 1)
            if cpu("dft//xtb", "naphthalene") and cpu("xtb", "naphthalene") else None
        ),
        "lambda_ev": {lvl: {m: lam(lvl, m) for m in per} for lvl, per in results.items()},
        "literature_lambda_ev_b3lyp_631gd": LITERATURE_EV,
        "naphthalene_basis_cpu_s": {
            b: cpu("dft//xtb" if b == "6-31g" else f"dft//xtb {b}", "naphthalene") for b in bases
        },
    }
    line = json.dumps(summary)
    out = ROOT / "benchmarks" / "results" / "reorg_timing.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
