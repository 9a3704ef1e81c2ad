"""Benchmark ``polymorph_pairs``: do the force field's polymorph energy differences beat predicting zero?

Reference data (public, licences beside them): the 89 predicted crystal structures of CSP
blind-test molecule I (C6H6O, rigid, Z = 8; data/reference/landscapes/target_I, BSD-3-Clause,
Genarris case studies), each relaxed with periodic PBE+MBD DFT (the reference) and with
MACE-OFF23(L); one of them matches the experimental crystal (XULDUD).

Force field: W99 exp-6 + Ewald RESP (HF/6-31G*) point charges, rigid molecule, lattice energy
minimised over cell and rigid-body coordinates in P1 (:func:`sim_backends.ff_relax.relax_rigid`,
L-BFGS-B, 300 iterations) from each structure's MACE-OFF23 geometry: the committed relaxation
cache ``Target_I_ff_relax_MACE.csv`` (E_ff = ff_energy_start + ff_relax_energy), or with
``--recompute`` from the PBE+MBD geometries (hours of CPU; written to its own cache under
benchmarks/results/). Each level is at its own minimum near the same structure.

Measured, per pair of structures (i, j) (kJ/mol per molecule): |dE_model(i, j) - dE_ref(i, j)|,
for the force field, MACE-OFF23 (a second model) and the baseline that predicts 0 for every
pair, over (a) every pair, (b) the pairs whose two structures are both within
``--window`` kJ/mol of the PBE+MBD minimum (the polymorphs that compete) and (c) each structure
against the experimental one. Also the Spearman rank correlation with PBE+MBD and the rank of
the experimental structure at each level. Structures flagged ``connectivity_ok = False`` are left
out. The X23 oxalic acid alpha/beta pair is reported from benchmarks/results/x23_lattice.json
(its own run; X23 reference lattice energies) beside it.

Run:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/polymorph_pairs.py [--window 10] [--recompute]
Result: benchmarks/results/polymorph_pairs[_<args>].json (default arguments: polymorph_pairs.json).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

TARGET_I = ROOT / "data/reference/landscapes/target_I"
FF_LEVEL = "W99 exp-6 + Ewald RESP (HF/6-31G*) point charges, rigid molecule, minimised in P1"


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(line for line in fh if not line.startswith("#")))


def reference_table() -> dict[str, dict]:
    """id -> PBE+MBD and MACE relative energies, experimental flag (connectivity-ok structures)."""
    out = {}
    for r in _rows(TARGET_I / "Target_I_landscape.csv"):
        if r.get("connectivity_ok_PBE_MBD", "True") != "True" or r.get("connectivity_ok_MACE", "True") != "True":
            continue
        out[r["id"]] = {"ref": float(r["dE_PBE_MBD_kJmol_per_mol"]), "mace": float(r["dE_MACE_kJmol_per_mol"]),
                        "experimental": bool(r["experimental_match"].strip())}
    return out


def ff_energies(ids: list[str], recompute: bool) -> tuple[dict[str, float], str]:
    """id -> force-field minimum (kJ/mol per molecule) and where it came from."""
    if not recompute:
        rows = {r["id"]: r for r in _rows(TARGET_I / "Target_I_ff_relax_MACE.csv")}
        missing = [i for i in ids if i not in rows]
        if missing:
            raise SystemExit(f"polymorph_pairs: error: {len(missing)} structures missing from the ff cache")
        return ({i: float(rows[i]["ff_energy_start_kjmol"]) + float(rows[i]["ff_relax_energy_kjmol"]) for i in ids},
                "Target_I_ff_relax_MACE.csv (committed cache; relaxed from MACE-OFF23 geometries)")
    from sim_backends.ff_relax import cached_relaxation_features
    from sim_backends.landscape import Landscape

    land = Landscape.read(TARGET_I, levels=["PBE_MBD"])
    by_id = {m.id: m for m in land.minima}
    cache = ROOT / "benchmarks/results/polymorph_pairs_ff_relax_PBE_MBD.csv"
    feats = cached_relaxation_features([by_id[i].atoms for i in ids], ids, cache, charge_method="resp",
                                       cache_key="Target_I:PBE_MBD", write=True,
                                       comment="# W99 + RESP rigid relaxation from PBE+MBD geometries, "
                                               "benchmarks/polymorph_pairs.py --recompute")
    return {i: float(f[0] + f[1]) for i, f in zip(ids, feats)}, f"{cache.name} (relaxed from PBE+MBD geometries)"


def pair_errors(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> dict:
    """MAE / RMSE / max of dE_pred(i,j) - dE_ref(i,j) over pairs i < j with mask[i] and mask[j]."""
    idx = np.nonzero(mask)[0]
    i, j = np.triu_indices(len(idx), 1)
    d = (pred[idx][i] - pred[idx][j]) - (ref[idx][i] - ref[idx][j])
    if not d.size:
        return {"n_pairs": 0}
    return {"n_pairs": int(d.size), "mae_kjmol": float(np.abs(d).mean()), "rmse_kjmol": float(np.sqrt((d**2).mean())),
            "max_kjmol": float(np.abs(d).max())}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window", type=float, default=10.0,
                    help="pairs within this many kJ/mol of the PBE+MBD minimum (both structures)")
    ap.add_argument("--recompute", action="store_true",
                    help="relax every structure with the force field from its PBE+MBD geometry (slow)")
    args = ap.parse_args(argv)
    if not np.isfinite(args.window) or args.window <= 0:
        print(f"polymorph_pairs: error: --window must be a finite number > 0, got {args.window}", file=sys.stderr)
        return 2
    t0 = time.process_time()
    table = reference_table()
    ids = sorted(table, key=lambda k: table[k]["ref"])
    ff, ff_source = ff_energies(ids, args.recompute)
    ref = np.array([table[i]["ref"] for i in ids])
    models = {"force field": np.array([ff[i] for i in ids]), "MACE-OFF23": np.array([table[i]["mace"] for i in ids]),
              "zero (baseline)": np.zeros(len(ids))}
    exp = next(k for k, i in enumerate(ids) if table[i]["experimental"])
    window = ref - ref.min() <= args.window
    results = {}
    for name, pred in models.items():
        vs_exp = (pred - pred[exp]) - (ref - ref[exp])
        vs_exp = np.delete(vs_exp, exp)
        results[name] = {
            "all_pairs": pair_errors(pred, ref, np.ones(len(ids), bool)),
            "window_pairs": pair_errors(pred, ref, window),
            "vs_experimental": {"n_pairs": int(vs_exp.size), "mae_kjmol": float(np.abs(vs_exp).mean())},
            "spearman": None if name.startswith("zero") else spearman(pred, ref),
            "experimental_rank": None if name.startswith("zero") else int((pred < pred[exp]).sum() + 1),
        }
    x23 = ROOT / "benchmarks/results/x23_lattice.json"
    oxalic = json.loads(x23.read_text()).get("polymorph_pairs", []) if x23.is_file() else []

    hdr = f"{'model':<18}{'all pairs MAE':>15}{'window MAE':>12}{'vs exp. MAE':>13}{'max (all)':>11}{'Spearman':>10}{'exp. rank':>11}"
    print(f"Target I (C6H6O), {len(ids)} structures, reference PBE+MBD (periodic DFT); kJ/mol per molecule")
    print(f"force field: {FF_LEVEL}; from {ff_source}")
    print(f"window: both structures within {args.window:g} kJ/mol of the PBE+MBD minimum "
          f"({int(window.sum())} structures, {results['zero (baseline)']['window_pairs']['n_pairs']} pairs)")
    print(hdr)
    for name, r in results.items():
        fmt = lambda v, f="{:.2f}": "-" if v is None else f.format(v)  # noqa: E731
        print(f"{name:<18}{r['all_pairs']['mae_kjmol']:>15.2f}{r['window_pairs'].get('mae_kjmol', float('nan')):>12.2f}"
              f"{r['vs_experimental']['mae_kjmol']:>13.2f}{r['all_pairs']['max_kjmol']:>11.2f}"
              f"{fmt(r['spearman'], '{:.3f}'):>10}{fmt(r['experimental_rank'], '{}'):>11}")
    for p in oxalic:
        print(f"X23 {p['pair']} (x23_lattice.json, X23 reference lattice energies): ref {p['d_ref_kjmol']:+.2f}, "
              + ", ".join(f"{k[2:-6]} {v:+.2f}" for k, v in p.items() if k.startswith("d_") and k != "d_ref_kjmol")
              + ", zero 0.00 kJ/mol per molecule")
    ff_r, zero_r = results["force field"], results["zero (baseline)"]
    summary = {
        "benchmark": "polymorph_pairs", "reference": "PBE+MBD periodic DFT (Target I, Genarris case studies)",
        "level": FF_LEVEL, "ff_source": ff_source, "n_structures": len(ids), "window_kjmol": args.window,
        "n_window_structures": int(window.sum()),
        "ff_all_pairs_mae_kjmol": ff_r["all_pairs"]["mae_kjmol"], "zero_all_pairs_mae_kjmol": zero_r["all_pairs"]["mae_kjmol"],
        "ff_window_mae_kjmol": ff_r["window_pairs"].get("mae_kjmol"),
        "zero_window_mae_kjmol": zero_r["window_pairs"].get("mae_kjmol"),
        "ff_beats_zero_all": ff_r["all_pairs"]["mae_kjmol"] < zero_r["all_pairs"]["mae_kjmol"],
        "ff_beats_zero_window": (ff_r["window_pairs"].get("mae_kjmol") or np.inf) < (zero_r["window_pairs"].get("mae_kjmol") or 0),
        "models": results, "x23_oxalic_pair": oxalic, "cpu_s": time.process_time() - t0,
    }
    tag = "".join(f"_{k}-{v:g}" for k, v, d in (("window", args.window, 10.0),) if v != d)
    tag += "_recompute" if args.recompute else ""
    out = ROOT / f"benchmarks/results/polymorph_pairs{tag}.json"
    out.write_text(json.dumps(summary, indent=1, default=float))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("models", "x23_oxalic_pair")}, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
