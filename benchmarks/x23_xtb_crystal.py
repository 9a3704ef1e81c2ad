"""Benchmark "x23_xtb_crystal": periodic GFN2-xTB lattice energies of the X23 crystals.

The ``xtb-crystal`` backend (``sim_backends/xtb_crystal.py``) gives the structure stage's
lattice energies (``E_latt`` in ``status`` and the campaign summary). This measures them
against the X23 references (Reilly & Tkatchenko, J. Chem. Phys. 139, 024705 (2013):
sublimation enthalpies back-corrected for thermal and vibrational effects) on the 17 X23
crystals of ``data/reference/x23`` at their PBE+TS geometries, with the backend's defaults
(Gamma-point supercell at least 9 A wide, no relaxation), and reports per crystal:

* ``E_latt`` (``gas="relaxed"``, the default): E_cell/Z minus the relaxed GFN2-xTB gas
  molecule, i.e. what a campaign reports, including the molecules' deformation energy at
  the PBE+TS geometry;
* the intermolecular part (``E_latt`` minus the deformation energy, = ``gas="rigid"``);
* the error of each against the reference, signed (negative = overbound) and their mean,
  MAE and the mean ratio E_latt / E_ref (how much of the reference binding it gets);
* CPU seconds.

Baseline in the same run: the project's force field (W99 + RESP point charges, rigid
molecules) at the same geometries, unminimised (``benchmarks/x23_lattice.py``'s
"exp_geom" column), so the two energy models are compared on the same structures.

Run: ``OMP_NUM_THREADS=1 python benchmarks/x23_xtb_crystal.py [--systems a,b]`` (finished
crystals are kept in a progress file, so a rerun resumes). Prints a table and one JSON line;
writes ``benchmarks/results/x23_xtb_crystal.json`` (another ``--systems`` writes
``x23_xtb_crystal_<systems>.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

RESULTS = ROOT / "benchmarks" / "results"
#: X23 crystals not in the rigid CSP recovery set (csp_recovery.SYSTEMS)
EXTRA_SMILES = {"succinic_acid": "OC(=O)CCC(=O)O"}


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from csp_recovery import SYSTEMS
    from x23_lattice import load_x23

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--systems", default=None, help="comma-separated X23 names (default: all 17)")
    args = ap.parse_args(argv)
    frames, ref = load_x23()
    names = sorted(frames) if args.systems is None else [s.strip() for s in args.systems.split(",") if s.strip()]
    if unknown := [n for n in names if n not in frames]:
        ap.error(f"unknown X23 system(s) {', '.join(unknown)}; known: {', '.join(sorted(frames))}")
    stem = "x23_xtb_crystal" + ("" if args.systems is None else "_" + "+".join(names))
    progress_path = RESULTS / f"{stem}_progress.jsonl"
    done = {}
    if progress_path.exists():
        for line in progress_path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                done[rec["system"]] = rec
    console = Console()
    with Progress(console=console) as bar:
        task = bar.add_task("periodic GFN2-xTB, X23", total=len(names))
        for name in names:
            if name not in done:
                smiles = SYSTEMS[name][0] if name in SYSTEMS else EXTRA_SMILES[name]
                done[name] = measure(name, frames[name], smiles, ref[name])
                with progress_path.open("a") as fh:
                    fh.write(json.dumps(done[name]) + "\n")
            bar.advance(task)
    rows = [done[n] for n in names]
    ok = [r for r in rows if r.get("e_latt_kjmol") is not None]
    table = Table(title="X23 at the PBE+TS geometries, kJ/mol per molecule (error = calc - ref)")
    for col in ("crystal", "ref", "xTB E_latt", "error", "deformation", "xTB intermolecular", "error",
                "W99+RESP", "error", "CPU s"):
        table.add_column(col, justify="left" if col == "crystal" else "right")
    for r in rows:
        if r.get("e_latt_kjmol") is None:
            table.add_row(r["system"], f"{r['ref_kjmol']:.1f}", "failed: " + r.get("error", "?"), *[""] * 7)
            continue
        table.add_row(r["system"], f"{r['ref_kjmol']:.1f}", f"{r['e_latt_kjmol']:.1f}",
                      f"{r['e_latt_kjmol'] - r['ref_kjmol']:+.1f}", f"{r['deformation_kjmol']:.1f}",
                      f"{r['e_inter_kjmol']:.1f}", f"{r['e_inter_kjmol'] - r['ref_kjmol']:+.1f}",
                      f"{r['w99_resp_kjmol']:.1f}", f"{r['w99_resp_kjmol'] - r['ref_kjmol']:+.1f}",
                      f"{r['cpu_s']:.0f}")
    console.print(table)

    def stats(key: str) -> dict[str, float]:
        err = np.array([r[key] - r["ref_kjmol"] for r in ok])
        ratio = np.array([r[key] / r["ref_kjmol"] for r in ok])
        return {"mean_error_kjmol": round(float(err.mean()), 2), "mae_kjmol": round(float(np.abs(err).mean()), 2),
                "max_abs_error_kjmol": round(float(np.abs(err).max()), 2),
                "mean_ratio_to_ref": round(float(ratio.mean()), 3)}

    out = {"benchmark": "x23_xtb_crystal", "level": "GFN2-xTB periodic (tblite), Gamma-point supercell >= 9 A, "
           "PBE+TS geometries, no relaxation", "n_systems": len(rows), "n_failed": len(rows) - len(ok),
           "xtb_e_latt": stats("e_latt_kjmol") if ok else {}, "xtb_intermolecular": stats("e_inter_kjmol") if ok else {},
           "w99_resp_same_geometries": stats("w99_resp_kjmol") if ok else {},
           "cpu_s": round(sum(r["cpu_s"] for r in rows), 1), "rows": rows,
           "date": time.strftime("%Y-%m-%d")}
    for label, key in (("GFN2-xTB E_latt", "xtb_e_latt"), ("GFN2-xTB intermolecular", "xtb_intermolecular"),
                       ("W99 + RESP", "w99_resp_same_geometries")):
        s = out[key]
        if s:
            console.print(f"{label}: mean error {s['mean_error_kjmol']:+.1f}, MAE {s['mae_kjmol']:.1f} kJ/mol, "
                          f"{100 * s['mean_ratio_to_ref']:.0f} % of the reference binding on average")
    line = json.dumps(out)
    (RESULTS / f"{stem}.json").write_text(line + "\n")
    print(line)
    return 0


def measure(name: str, frame, smiles: str, ref_kjmol: float) -> dict:
    """One crystal: the xtb-crystal backend's lattice energy and the unminimised W99 + RESP
    energy at the same geometry."""
    from sim_backends.base import EvalInput, process_cpu_s
    from sim_backends.structures import cif_from_atoms
    from sim_backends.csp.forcefield import LatticeEnergyModel
    from sim_backends.xtb_crystal import XtbCrystalBackend
    from x23_lattice import prepare

    c0 = process_cpu_s()
    res = XtbCrystalBackend().evaluate(EvalInput(smiles, structure_cif=cif_from_atoms(frame)))
    rec = {"system": name, "smiles": smiles, "ref_kjmol": ref_kjmol, "z": int(frame.info["n_mol"])}
    if res.ok:
        rec.update(e_latt_kjmol=round(res.values["energy_kjmol"], 2),
                   deformation_kjmol=round(res.values["deformation_kjmol"], 2),
                   e_inter_kjmol=round(res.values["energy_kjmol"] - res.values["deformation_kjmol"], 2),
                   supercell=res.extra.get("supercell"))
    else:
        rec["error"] = res.reason
    import numpy as np
    import torch

    mol, cell, rots, centres, _ = prepare(frame, "resp")
    coords = centres[:, None, :] + np.einsum("na,zba->znb", mol.coords_A, rots)
    e_ff = LatticeEnergyModel(mol).energy_kjmol(torch.tensor(cell)[None], torch.tensor(coords)[None])[0]
    rec["w99_resp_kjmol"] = round(float(e_ff), 2)
    rec["cpu_s"] = round(process_cpu_s() - c0, 1)
    return rec


if __name__ == "__main__":
    sys.exit(main())
