"""Benchmark ``reorg_validation``: DFT//xTB hole reorganisation energies against full DFT.

For small rigid conjugated molecules it computes lambda_+ (four-point scheme, kJ/mol and
eV, both components) with the ``dft-reorg`` backend in two protocols that share the
functional, basis, grid and start geometries:

* ``dft//xtb`` -- B3LYP/6-31G single points on the GFN2-xTB geometries of both charge
  states (``geometry="xtb"``, four SCF calculations);
* ``dft//sto3g`` -- both states relaxed with geomeTRIC at B3LYP/STO-3G from the same
  GFN2-xTB geometries, then B3LYP/6-31G single points (``opt_basis="sto-3g"``);
* ``dft//dft`` -- both states relaxed with geomeTRIC at B3LYP/6-31G starting from the
  same GFN2-xTB geometries (``geometry="dft"``), the reference;

and GFN2-xTB (``xtb-reorg``) as the cheap baseline of the same run. Reported: the
table, MAE and largest deviation of DFT//xTB, DFT//STO-3G (and of xTB) from DFT//DFT, Spearman rank
correlations, the number of results the physical-validity check rejects, the CPU seconds
of each protocol (``time.process_time`` around ``evaluate``, one thread), and the acenes
against published B3LYP/6-31G(d) lambda_+ (naphthalene 0.187, anthracene 0.138,
tetracene 0.113, pentacene 0.095 eV: Coropceanu et al., Phys. Rev. Lett. 89, 275503
(2002); Gruhn et al., J. Am. Chem. Soc. 124, 7918 (2002); this run uses 6-31G without
d functions). Benzene is excluded: its cation is Jahn-Teller distorted, which
GFN2-xTB's smeared occupations do not reproduce. Tetracene and pentacene are computed
only with the cheap protocols unless ``--full-acenes`` (full relaxation of pentacene
costs about an hour of CPU).

Every (molecule, protocol) result is appended to a JSONL progress file as it finishes;
a rerun skips what is there, so a stopped run loses at most one calculation.

Run:  OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/reorg_validation.py
      [--molecules furan,thiophene,...] [--full-acenes] [--progress FILE] [--table-only]
Writes benchmarks/results/reorg_validation.json (non-default molecule sets or
``--full-acenes`` write ``reorg_validation_<tag>.json``).
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

#: validation set, cheapest first (so a stopped run has the most molecules done)
MOLECULES = {
    "furan": "c1ccoc1",
    "pyrrole": "c1cc[nH]c1",
    "thiophene": "c1ccsc1",
    "pyrazine": "c1cnccn1",
    "pyridine": "c1ccncc1",
    "pyrimidine": "c1cncnc1",
    "thiazole": "c1cscn1",
    "oxazole": "c1cocn1",
    "pyridazine": "c1ccnnc1",
    "imidazole": "c1c[nH]cn1",
    "naphthalene": "c1ccc2ccccc2c1",
    "indole": "c1ccc2[nH]ccc2c1",
    "benzofuran": "c1ccc2occc2c1",
    "quinoline": "c1ccc2ncccc2c1",
    "azulene": "c1ccc2cccc2cc1",
    "benzothiophene": "c1ccc2sccc2c1",
    "biphenylene": "c1ccc2c(c1)-c1ccccc1-2",
    "anthracene": "c1ccc2cc3ccccc3cc2c1",
}
#: computed with the cheap protocols only, unless --full-acenes
ACENES_CHEAP = {
    "tetracene": "c1ccc2cc3cc4ccccc4cc3cc2c1",
    "pentacene": "c1ccc2cc3cc4cc5ccccc5cc4cc3cc2c1",
}
#: lambda_+ in eV at B3LYP/6-31G(d) (references in the module docstring)
LITERATURE_EV = {"naphthalene": 0.187, "anthracene": 0.138, "tetracene": 0.113, "pentacene": 0.095}
PROTOCOLS = ("xtb", "dft//xtb", "dft//sto3g", "dft//dft")
#: a cheaper protocol counts as validated against DFT//DFT when its MAE is at most
#: this (kJ/mol; ~0.03 eV, the change of lambda_+ between 6-31G and 6-31G(d) for acenes)
#: and its Spearman rank correlation at least VALID_SPEARMAN, over >= 10 molecules
VALID_MAE_KJMOL = 3.0
VALID_SPEARMAN = 0.9
#: protocols that relax at the DFT level (10-50x the cost of the others)
EXPENSIVE = ("dft//sto3g", "dft//dft")
N_FIRST_FULL = 10
KEYS = ("reorg_energy_kjmol", "lambda_cation_kjmol", "lambda_neutral_kjmol",
        "ip_adiabatic_kjmol", "ip_vertical_kjmol")


def make_backend(protocol: str):
    from sim_backends.reorg import DftReorgBackend, XtbReorgBackend

    if protocol == "xtb":
        return XtbReorgBackend()
    if protocol == "dft//sto3g":
        return DftReorgBackend(functional="b3lyp", basis="6-31g", geometry="dft", opt_basis="sto-3g")
    return DftReorgBackend(functional="b3lyp", basis="6-31g",
                           geometry="xtb" if protocol == "dft//xtb" else "dft")


def run_one(protocol: str, mol: str, smiles: str) -> dict:
    """One evaluation; values are kept even when the validity check rejects them."""
    from sim_backends.base import EvalInput

    backend = make_backend(protocol)
    cpu0 = time.process_time()
    res = backend.evaluate(EvalInput(smiles))
    cpu_s = time.process_time() - cpu0
    values = res.values if res.ok else res.extra.get("unphysical_values", {})
    return {
        "molecule": mol, "smiles": smiles, "protocol": protocol, "status": res.status,
        "reason": res.reason, "cpu_s": round(cpu_s, 2), "wall_s": round(res.wall_s, 2),
        "level": res.extra.get("level", ""),
        "values": {k: round(values[k], 4) for k in KEYS if k in values},
        "n_opt_steps": [res.extra.get(s, {}).get("n_opt_steps") for s in ("neutral", "cation")],
    }


def load_progress(path: Path) -> dict[tuple[str, str], dict]:
    done: dict[tuple[str, str], dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done[(r["molecule"], r["protocol"])] = r
    return done


def deviation_stats(ref: list[float], test: list[float]) -> dict:
    import numpy as np
    from scipy.stats import spearmanr

    ref_a, test_a = np.asarray(ref), np.asarray(test)
    d = test_a - ref_a
    rho = float(spearmanr(ref_a, test_a).statistic) if len(ref_a) >= 3 else None
    return {
        "n": len(ref_a),
        "mae_kjmol": round(float(np.mean(np.abs(d))), 2),
        "max_abs_dev_kjmol": round(float(np.max(np.abs(d))), 2),
        "mean_signed_dev_kjmol": round(float(np.mean(d)), 2),
        "mean_ratio": round(float(np.mean(test_a / ref_a)), 3),
        "spearman": round(rho, 3) if rho is not None else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--molecules", default="",
                    help=f"comma list (default: all of {', '.join(MOLECULES)} + cheap acenes)")
    ap.add_argument("--full-acenes", action="store_true",
                    help="also relax tetracene and pentacene fully with DFT (~1.5 CPU-h)")
    ap.add_argument("--progress", type=Path,
                    default=ROOT / "benchmarks" / "results" / "reorg_validation_progress.jsonl")
    ap.add_argument("--protocols", default=",".join(PROTOCOLS),
                    help=f"comma list of {', '.join(PROTOCOLS)} (computes only these; the summary shows all)")
    ap.add_argument("--table-only", action="store_true", help="summarise the progress file, compute nothing")
    args = ap.parse_args(argv)

    every = {**MOLECULES, **ACENES_CHEAP}
    mols = [m for m in args.molecules.split(",") if m] or list(every)
    unknown = sorted(set(mols) - set(every))
    if unknown:
        print(f"error: unknown molecule(s) {', '.join(unknown)}; choose from {', '.join(every)}",
              file=sys.stderr)
        return 2
    protocols = [p for p in args.protocols.split(",") if p]
    if sorted(set(protocols) - set(PROTOCOLS)):
        print(f"error: unknown protocol(s) {', '.join(sorted(set(protocols) - set(PROTOCOLS)))}; "
              f"choose from {', '.join(PROTOCOLS)}", file=sys.stderr)
        return 2
    jobs = []
    for m in mols:
        for p in protocols:
            if p in EXPENSIVE and m in ACENES_CHEAP and not args.full_acenes:
                continue
            jobs.append((m, p))
    # every protocol for the first N_FIRST_FULL molecules, then the cheap protocols for
    # the rest, then the expensive ones: a run stopped early has the most pairs
    jobs.sort(key=lambda j: (0 if mols.index(j[0]) < N_FIRST_FULL else 1 + (j[1] in EXPENSIVE),
                             mols.index(j[0])))

    args.progress.parent.mkdir(parents=True, exist_ok=True)
    done = load_progress(args.progress)
    todo = [j for j in jobs if j not in done]
    if not args.table_only and todo:
        from sim_backends.base import EvalInput
        from sim_backends.reorg import XtbReorgBackend

        XtbReorgBackend().evaluate(EvalInput("C"))  # import tblite/ase before timing
        for i, (m, p) in enumerate(todo, 1):
            r = run_one(p, m, every[m])
            done[(m, p)] = r
            with args.progress.open("a") as fh:
                fh.write(json.dumps(r) + "\n")
            lam = r["values"].get("reorg_energy_kjmol", float("nan"))
            print(f"[{i}/{len(todo)}] {m:14s} {p:9s} {r['status']:6s} lambda+ {lam:7.2f} kJ/mol "
                  f"CPU {r['cpu_s']:7.1f} s {r['reason'][:90]}", flush=True)
    return summarise(mols, done, args)


def summarise(mols: list[str], done: dict[tuple[str, str], dict], args) -> int:
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from sim_backends.reorg import DFT_DEFAULTS, KJMOL_PER_EV

    console = Console(width=170)
    table = Table(title="Hole reorganisation energy lambda+ (kJ/mol; eV in brackets): "
                        "GFN2-xTB; B3LYP/6-31G on GFN2-xTB, B3LYP/STO-3G and B3LYP/6-31G geometries")
    for col in ("molecule", "protocol", "status", "lambda+ kJ/mol (eV)", "l_cation", "l_neutral",
                "IP_ad - IP_v", "CPU s", "opt steps N/C", "lit. eV (6-31G(d))"):
        table.add_column(col, justify="left" if col in ("molecule", "protocol", "status") else "right")
    for m in mols:
        for p in PROTOCOLS:
            r = done.get((m, p))
            if r is None:
                continue
            v = r["values"]
            lam = v.get("reorg_energy_kjmol")
            table.add_row(
                m, p, "ok" if r["status"] == "ok" else r["reason"][:34],
                f"{lam:.2f} ({lam / KJMOL_PER_EV:.3f})" if lam is not None else "-",
                f"{v['lambda_cation_kjmol']:.2f}" if "lambda_cation_kjmol" in v else "-",
                f"{v['lambda_neutral_kjmol']:.2f}" if "lambda_neutral_kjmol" in v else "-",
                f"{v['ip_adiabatic_kjmol'] - v['ip_vertical_kjmol']:.2f}" if "ip_vertical_kjmol" in v else "-",
                f"{r['cpu_s']:.1f}", "/".join(str(s) for s in r["n_opt_steps"]),
                f"{LITERATURE_EV[m]:.3f}" if m in LITERATURE_EV and p == "dft//dft" else "",
            )
    console.print(table)

    def lam_of(m: str, p: str) -> float | None:
        r = done.get((m, p))
        return r["values"].get("reorg_energy_kjmol") if r else None

    def ok(m: str, p: str) -> bool:
        r = done.get((m, p))
        return bool(r) and r["status"] == "ok"

    # pairs where the reference succeeded; DFT//xTB values count even when rejected
    paired = [m for m in mols if ok(m, "dft//dft") and lam_of(m, "dft//xtb") is not None]
    stats = {}
    for p in ("dft//xtb", "dft//sto3g", "xtb"):
        ms = [m for m in paired if lam_of(m, p) is not None]
        if ms:
            stats[p] = deviation_stats([lam_of(m, "dft//dft") for m in ms], [lam_of(m, p) for m in ms])
    cpu = {p: {m: done[(m, p)]["cpu_s"] for m in mols if (m, p) in done} for p in PROTOCOLS}
    cpu_paired = {p: round(sum(cpu[p][m] for m in paired if m in cpu[p]), 1) for p in PROTOCOLS}
    n_cpu = {p: sum(1 for m in paired if m in cpu[p]) for p in PROTOCOLS}
    # CPU relative to DFT//xTB on the same molecules (the loads of the runs differ less within a pair)
    cpu_ratio = {p: round(float(np.median([cpu[p][m] / cpu["dft//xtb"][m] for m in paired
                                           if m in cpu[p] and m in cpu["dft//xtb"]])), 2)
                 for p in PROTOCOLS if n_cpu[p]}
    n_rejected = {p: sum(1 for m in mols if (m, p) in done and done[(m, p)]["status"] != "ok")
                  for p in PROTOCOLS}
    lit = {m: {"literature_ev": LITERATURE_EV[m],
               **{p: round(lam_of(m, p) / KJMOL_PER_EV, 4) for p in PROTOCOLS if lam_of(m, p) is not None}}
           for m in mols if m in LITERATURE_EV}

    console.print(f"{len(paired)} molecules with both DFT protocols (reference: B3LYP/6-31G//B3LYP/6-31G)")
    for p, s in stats.items():
        console.print(f"  {p:9s} vs dft//dft: MAE {s['mae_kjmol']:.2f} kJ/mol, max |dev| "
                      f"{s['max_abs_dev_kjmol']:.2f} kJ/mol, mean signed {s['mean_signed_dev_kjmol']:+.2f} "
                      f"kJ/mol, mean ratio {s['mean_ratio']:.3f}, Spearman {s['spearman']}")
    for p in PROTOCOLS:
        console.print(f"  CPU s, {p:10s} over {n_cpu[p]:2d} of these molecules: {cpu_paired[p]:8.1f} "
                      f"(median {cpu_ratio.get(p, float('nan')):.2f}x DFT//xTB); "
                      f"rejected as unphysical or failed: {n_rejected[p]}")
    for m, d in lit.items():
        console.print(f"  {m:12s} literature {d['literature_ev']:.3f} eV; "
                      + ", ".join(f"{p} {v:.3f}" for p, v in d.items() if p != "literature_ev"))

    validated = {p: bool(st["n"] >= 10 and st["mae_kjmol"] <= VALID_MAE_KJMOL
                         and (st["spearman"] or 0.0) >= VALID_SPEARMAN) for p, st in stats.items()}
    for p, ok_p in validated.items():
        console.print(f"  {p:9s} validated as a substitute for dft//dft (n >= 10, MAE <= {VALID_MAE_KJMOL} "
                      f"kJ/mol, Spearman >= {VALID_SPEARMAN}): {'yes' if ok_p else 'no'}")
    console.print(f"  dft-reorg default geometry: {DFT_DEFAULTS['geometry']!r}")
    summary = {
        "benchmark": "reorg_validation",
        "reference": "B3LYP/6-31G//B3LYP/6-31G (geomeTRIC, both states)",
        "default_geometry": DFT_DEFAULTS["geometry"],
        "validated": validated,
        "validation_criteria": {"min_molecules": 10, "max_mae_kjmol": VALID_MAE_KJMOL,
                                "min_spearman": VALID_SPEARMAN},
        "molecules_paired": paired,
        "deviation_vs_dftdft": stats,
        "cpu_s_paired": cpu_paired,
        "cpu_median_ratio_to_dftxtb": cpu_ratio,
        "cpu_s": cpu,
        "n_failed": n_rejected,
        "lambda_kjmol": {p: {m: lam_of(m, p) for m in mols if lam_of(m, p) is not None} for p in PROTOCOLS},
        "reasons": {f"{m} {p}": r["reason"] for (m, p), r in done.items() if r["status"] != "ok"},
        "acenes_ev": lit,
    }
    line = json.dumps(summary)
    parts = (["full-acenes"] if args.full_acenes else []) + [m for m in args.molecules.split(",") if m]
    if args.protocols != ",".join(PROTOCOLS):
        parts.append(args.protocols.replace("//", "-").replace(",", "+"))
    tag = ("_" + "_".join(parts))[:80] if parts else ""
    out = ROOT / "benchmarks" / "results" / f"reorg_validation{tag}.json"
    out.write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
