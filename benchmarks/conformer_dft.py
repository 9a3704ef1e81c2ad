"""Benchmark ``conformer_dft``: are the GFN2-xTB conformer energies of flexible CSP credible?

For each molecule the flexible-CSP conformer ensemble is built as the search builds it
(:func:`sim_backends.csp.conformers.build_ensemble`, GFN2-xTB geometries and energies) and each
conformer gets DFT single points at its GFN2-xTB geometry: B3LYP-D3(BJ) and PBE0-D3(BJ), def2-TZVP
(pyscf RKS, grid level 3; D3(BJ) from the ``dftd3`` package). The table lists each conformer's
torsions and its energy above the ensemble's lowest conformer at GFN2-xTB and at both DFT levels
(kJ/mol), and the CPU seconds of each single point. The conformer penalty is part of every
flexible lattice energy, so a GFN2-xTB error here shifts all minima of that conformer.

Run:  OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/conformer_dft.py [--smiles CCOC(N)=O,...]
Progress (one JSON line per conformer) goes to benchmarks/results/conformer_dft_progress.jsonl (or a
name with the non-default arguments); the summary to benchmarks/results/conformer_dft.json for the
default arguments, else to a file named after them.
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

HARTREE_KJMOL = 2625.4996
BOHR_A = 0.52917721067
#: (pyscf xc, dftd3 method name)
LEVELS = (("b3lyp", "b3lyp"), ("pbe0", "pbe0"))
BASIS = "def2-tzvp"
DEFAULTS = {"smiles": "CCOC(N)=O"}


def single_points(symbols: list[str], xyz_A) -> dict:
    """DFT-D3(BJ) total energies (kJ/mol) and CPU seconds of one geometry at every level of LEVELS."""
    import numpy as np
    from dftd3.interface import DispersionModel, RationalDampingParam
    from pyscf import dft, gto
    from pyscf.data.elements import charge

    xyz = np.asarray(xyz_A, dtype=float)
    mol = gto.M(atom=[(s, tuple(p)) for s, p in zip(symbols, xyz)], basis=BASIS, verbose=0)
    disp_model = DispersionModel(np.array([charge(s) for s in symbols]), xyz / BOHR_A)
    out = {}
    for xc, d3 in LEVELS:
        c0 = time.process_time()
        mf = dft.RKS(mol)
        mf.xc, mf.grids.level = xc, 3
        e = mf.kernel()
        if not mf.converged:
            raise RuntimeError(f"{xc}/{BASIS} SCF did not converge")
        disp = disp_model.get_dispersion(RationalDampingParam(method=d3), grad=False)["energy"]
        out[xc] = (e + disp) * HARTREE_KJMOL
        out[f"{xc}_cpu_s"] = time.process_time() - c0
    return out


def _done(path: Path) -> dict:
    recs = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            recs[(r["smiles"], r["conformer"])] = r
    return recs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smiles", default=DEFAULTS["smiles"], help="comma-separated SMILES")
    args = ap.parse_args(argv)
    from sim_backends.base import SetupError
    from sim_backends.csp.conformers import build_ensemble

    smiles_list = [s for s in args.smiles.split(",") if s]
    changed = [f"{k}-{getattr(args, k)}" for k in DEFAULTS if getattr(args, k) != DEFAULTS[k]]
    stem = "conformer_dft" + ("_" + "_".join(changed).replace(",", "-").replace("/", "")
                              .replace("(", "").replace(")", "").replace("=", "").replace("#", "") if changed else "")
    results = ROOT / "benchmarks/results"
    progress = results / f"{stem}_progress.jsonl"
    done = _done(progress)
    rows = []
    for smi in smiles_list:
        try:
            ens = build_ensemble(smi, charges="none")
        except (SetupError, ValueError) as exc:
            print(f"conformer_dft: error: {smi}: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 2
        for c in ens.conformers:
            rec = done.get((smi, c.index))
            if rec is None:
                rec = {"smiles": smi, "conformer": c.index, "torsions_deg": [float(t) for t in c.torsions_deg],
                       "gfn2_rel_kjmol": float(c.energy_kjmol), "level_basis": BASIS,
                       **single_points(list(c.molecule.symbols), c.molecule.coords_A)}
                with open(progress, "a") as fh:
                    fh.write(json.dumps(rec) + "\n")
            rows.append(rec)
    for smi in smiles_list:
        mine = [r for r in rows if r["smiles"] == smi]
        for xc, _ in LEVELS:
            e0 = min(r[xc] for r in mine)
            for r in mine:
                r[f"{xc}_rel_kjmol"] = r[xc] - e0
    print("Conformer energies above the lowest (kJ/mol) at the GFN2-xTB geometries of the flexible-CSP ensemble; "
          f"DFT-D3(BJ)/{BASIS} single points")
    print(f"{'SMILES':16s} {'conf':>4s} {'torsions (deg)':>20s} {'GFN2-xTB':>9s} {'B3LYP-D3':>9s} {'PBE0-D3':>9s} {'CPU s':>7s}")
    for r in rows:
        tors = ",".join(f"{t:.0f}" for t in r["torsions_deg"])
        print(f"{r['smiles']:16s} {r['conformer']:4d} {tors:>20s} {r['gfn2_rel_kjmol']:9.2f} "
              f"{r['b3lyp_rel_kjmol']:9.2f} {r['pbe0_rel_kjmol']:9.2f} {r['b3lyp_cpu_s'] + r['pbe0_cpu_s']:7.0f}")
    summary = {"benchmark": "conformer_dft", "args": vars(args), "basis": BASIS,
               "levels": [f"{xc}-d3bj" for xc, _ in LEVELS], "rows": rows}
    (results / f"{stem}.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
