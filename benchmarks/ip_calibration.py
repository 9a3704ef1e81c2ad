"""Benchmark ``ip_calibration``: GFN2-xTB adiabatic ionisation energies against experiment.

The ``xtb-reorg`` backend reports ``ip_gas_ev``, an estimate of the gas-phase adiabatic
ionisation energy: its GFN2-xTB (tblite) Delta-SCF adiabatic IP shifted by
``sim_backends.reorg.XTB_IP_SHIFT_EV``. Campaigns use it as a constraint (hole injection:
``examples/esf.toml``). This benchmark computes the Delta-SCF IPs of the molecules of
``data/benchmarks/ip_gas_exp.csv`` (34 molecules from ethylene to pentacene: acenes and
other polycyclic aromatics, five- and six-membered heteroaromatics, substituted benzenes;
experimental IEs 6.59-10.51 eV, NIST WebBook evaluated values)
with the backend itself, and reports for three calibrations (none, a constant shift, an
affine map) the in-sample and leave-one-out MAE, the largest LOO error and the fitted
constants, with the per-molecule table. The shift the backend uses is the constant fit
rounded to 0.01 eV; the benchmark prints whether it still matches.

Run:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ip_calibration.py [--data CSV]
Writes benchmarks/results/ip_calibration.json (another ``--data`` writes
``ip_calibration_<stem>.json``). About 20 CPU s.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_DATA = ROOT / "data" / "benchmarks" / "ip_gas_exp.csv"


def loo_errors(x: np.ndarray, y: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """In-sample and leave-one-out errors (prediction - experiment) of a calibration
    ``kind`` ("none", "shift" or "affine") of ``x`` to ``y``, and its constants on all data."""
    def fit(xs, ys):
        if kind == "none":
            return [0.0, 1.0]
        if kind == "shift":
            return [float(np.mean(ys - xs)), 1.0]
        slope, icpt = np.polyfit(xs, ys, 1)
        return [float(icpt), float(slope)]

    c = fit(x, y)
    ins = c[0] + c[1] * x - y
    loo = np.empty(len(x))
    for i in range(len(x)):
        keep = np.arange(len(x)) != i
        ci = fit(x[keep], y[keep])
        loo[i] = ci[0] + ci[1] * x[i] - y[i]
    return ins, loo, c


def level_backend(level: str):
    """(backend, shift the backend applies, label) of ``level`` ("xtb" or "dft")."""
    from sim_backends import reorg

    if level == "xtb":
        return reorg.XtbReorgBackend(), reorg.XTB_IP_SHIFT_EV, "GFN2-xTB"
    return reorg.DftReorgBackend(), reorg.DFT_IP_SHIFT_EV, "B3LYP/6-31G (both states relaxed)"


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from sim_backends.base import EvalInput
    from sim_backends.reorg import KJMOL_PER_EV

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CSV with smiles, name, ie_ev")
    ap.add_argument("--level", choices=("xtb", "dft"), default="xtb",
                    help="xtb-reorg (default) or dft-reorg (the default expensive molecule level)")
    ap.add_argument("--dft-budget-s", type=float, default=float("inf"),
                    help="with --level dft: start no new molecule once this many CPU s are spent "
                         "(molecules run cheapest first; finished ones are kept in a progress file, "
                         "so a rerun resumes and can extend the set)")
    args = ap.parse_args(argv)
    console = Console()
    rows = list(csv.DictReader(args.data.open()))
    backend, backend_shift, label = level_backend(args.level)
    tag = "" if args.data.resolve() == DEFAULT_DATA.resolve() else f"_{args.data.stem}"
    tag += "" if args.level == "xtb" else f"_{args.level}"
    results = ROOT / "benchmarks" / "results"
    progress_path = results / f"ip_calibration{tag}_progress.jsonl"
    done: dict[str, dict] = {}
    if args.level != "xtb" and progress_path.exists():
        for line in progress_path.read_text().splitlines():
            if line.strip() and (rec := json.loads(line)).get("version") == backend.version:
                done[rec["smiles"]] = rec
    rows.sort(key=lambda r: backend.cost_estimate(EvalInput(r["smiles"])))
    names, x, y, failed, cpu, spent = [], [], [], {}, 0.0, 0.0
    with Progress(console=console) as bar:
        task = bar.add_task(f"{label} IPs", total=len(rows))
        for r in rows:
            rec = done.get(r["smiles"])
            if rec is None:
                if spent >= args.dft_budget_s:
                    bar.advance(task)
                    continue
                c0 = time.process_time()
                res = backend.evaluate(EvalInput(r["smiles"]))
                dt = time.process_time() - c0
                rec = {"smiles": r["smiles"], "name": r["name"], "version": backend.version, "ok": res.ok,
                       "reason": res.reason, "cpu_s": round(dt, 2),
                       "ip_adiabatic_kjmol": res.values.get("ip_adiabatic_kjmol") if res.ok else None}
                if args.level != "xtb":
                    with progress_path.open("a") as fh:
                        fh.write(json.dumps(rec) + "\n")
            spent += rec["cpu_s"]
            cpu += rec["cpu_s"]
            bar.advance(task)
            if not rec["ok"]:
                failed[r["name"]] = rec["reason"]
                continue
            names.append(r["name"])
            x.append(rec["ip_adiabatic_kjmol"] / KJMOL_PER_EV)
            y.append(float(r["ie_ev"]))
    not_run = len(rows) - len(names) - len(failed)
    x, y = np.asarray(x), np.asarray(y)
    fits = {}
    for kind in ("none", "shift", "affine"):
        ins, loo, c = loo_errors(x, y, kind)
        fits[kind] = {"constants": [round(v, 4) for v in c], "mae_ev": round(float(np.mean(np.abs(ins))), 3),
                      "loo_mae_ev": round(float(np.mean(np.abs(loo))), 3),
                      "loo_max_ev": round(float(np.max(np.abs(loo))), 3), "_loo": loo}
    table = Table(title=f"{label} adiabatic IP vs experiment ({len(x)} molecules), eV")
    for col in ("molecule", "exp IE", "Delta-SCF", "+ shift", "LOO error (shift)"):
        table.add_column(col, justify="left" if col == "molecule" else "right")
    shifted = x + backend_shift
    for i in np.argsort(y):
        table.add_row(names[i], f"{y[i]:.2f}", f"{x[i]:.2f}", f"{shifted[i]:.2f}", f"{fits['shift']['_loo'][i]:+.2f}")
    console.print(table)
    summ = Table(title=f"calibrations of the {label} IP (errors = calibrated - experiment, eV)")
    for col in ("calibration", "constants", "MAE", "LOO MAE", "LOO max"):
        summ.add_column(col, justify="right")
    for kind, f in fits.items():
        summ.add_row(kind, ", ".join(f"{v:g}" for v in f["constants"]), f"{f['mae_ev']:.3f}",
                     f"{f['loo_mae_ev']:.3f}", f"{f['loo_max_ev']:.3f}")
    console.print(summ)
    fitted = fits["shift"]["constants"][0]
    const = "XTB_IP_SHIFT_EV" if args.level == "xtb" else "DFT_IP_SHIFT_EV"
    console.print(f"backend shift {const} = {backend_shift:+.2f} eV; fitted here {fitted:+.3f} eV "
                  f"({'matches' if abs(fitted - backend_shift) <= 0.01 else 'DIFFERS'})"
                  + (f"; {not_run} molecules not run (budget)" if not_run else ""))
    out = {"benchmark": "ip_calibration", "level": label, "backend_version": backend.version,
           "data": str(args.data.relative_to(ROOT) if args.data.is_relative_to(ROOT) else args.data),
           "n_molecules": len(x), "n_failed": len(failed), "failed": failed, "n_not_run": not_run,
           "backend_shift_ev": backend_shift, "fitted_shift_ev": round(fitted, 3),
           "mae_shift_ev": fits["shift"]["mae_ev"], "loo_mae_shift_ev": fits["shift"]["loo_mae_ev"],
           "loo_max_shift_ev": fits["shift"]["loo_max_ev"],
           "loo_rmse_shift_ev": round(float(np.sqrt(np.mean(fits["shift"]["_loo"] ** 2))), 3),
           "loo_mae_affine_ev": fits["affine"]["loo_mae_ev"], "mae_uncalibrated_ev": fits["none"]["mae_ev"],
           "fits": {k: {kk: vv for kk, vv in f.items() if not kk.startswith("_")} for k, f in fits.items()},
           "rows": [{"name": n, "exp_ev": float(b), "calc_ev": round(float(a), 3),
                     "loo_error_shift_ev": round(float(e), 3)}
                    for n, a, b, e in zip(names, x, y, fits["shift"]["_loo"])],
           "cpu_s": round(cpu, 1)}
    path = results / f"ip_calibration{tag}.json"
    line = json.dumps(out)
    path.write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
