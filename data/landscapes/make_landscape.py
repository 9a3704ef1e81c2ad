"""Build a two-level CSP landscape of our own in the target_I layout.

Cheap level ``ff``: the project's CSP engine (``sim_backends.csp.run_csp``: Sobol
trials, rigid-molecule W99-type exp-6 + RESP point charges with Ewald sums, duplicate
removal). Expensive level ``xtb``: a periodic GFN2-xTB single point (tblite;
Bannwarth, Ehlert & Grimme, J. Chem. Theory Comput. 15, 1652 (2019)) of every
force-field minimum, E_cell / Z. Both levels share the force-field geometries (a
single-point correction, as in the Delta-learning literature the refinement agent
follows). Energies are relative to each level's lowest structure, kJ/mol per molecule.

Writes ``data/landscapes/<name>/``: ``<name>_ff.extxyz``, ``<name>_xtb.extxyz``,
``<name>_landscape.csv`` (``id, dE_ff_kJmol_per_mol, dE_xtb_kJmol_per_mol, ...``),
``levels.json`` (``{"cheap": "ff", "expensive": "xtb"}``, read by
``benchmarks/refinement.py``) and ``run.json`` (settings, timings).

Usage::

    OMP_NUM_THREADS=1 python data/landscapes/make_landscape.py --smiles NC=O \\
        --name formamide --n-trials 320 --space-groups P2_1/c,P-1,P2_1,P2_12_12_1
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

EV_TO_KJMOL = 96.48533212


def main(argv: list[str] | None = None) -> None:
    from ase.io import read, write
    from rich.progress import track

    from sim_backends.csp.run import run_csp
    from sim_backends.xtb_crystal import xtb_calculator

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smiles", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--n-trials", type=int, default=320)
    p.add_argument("--space-groups", default="P2_1/c,P-1,P2_1,P2_12_12_1")
    p.add_argument("--window", type=float, default=30.0, help="FF energy window, kJ/mol")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    out = ROOT / "data" / "landscapes" / args.name
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run_csp(args.smiles, args.n_trials, space_groups=args.space_groups,
                       seed=args.seed, energy_window_kjmol=args.window, out_dir=tmp)
        frames = read(str(Path(tmp) / "landscape_ff.extxyz"), ":")
    t_csp = time.perf_counter() - t0
    rows, ff_frames, xtb_frames, failed = [], [], [], []
    t1 = time.perf_counter()
    for atoms in track(frames, description="GFN2-xTB single points"):
        sid, z = str(atoms.info["id"]), int(atoms.info["Z"])
        cell = atoms.copy()
        cell.calc = xtb_calculator()
        try:
            e_xtb = float(cell.get_potential_energy()) / z * EV_TO_KJMOL
        except Exception as exc:  # noqa: BLE001 - SCF failure: leave the structure out
            failed.append(f"{sid}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
            continue
        e_ff = float(atoms.info["energy_kjmol"])
        info = {"id": sid, "Z": z, "connectivity_ok": True}
        a_ff, a_xtb = atoms.copy(), atoms.copy()
        a_ff.info = {**info, "level": "ff", "energy_kjmol": e_ff}
        a_xtb.info = {**info, "level": "xtb", "energy_cell_per_mol_kjmol": e_xtb}
        ff_frames.append(a_ff)
        xtb_frames.append(a_xtb)
        rows.append({"id": sid, "E_ff_kJmol_per_mol": e_ff, "E_xtb_kJmol_per_mol": e_xtb,
                     "Z": z, "n_atoms": len(atoms),
                     "density_gcm3": float(sum(atoms.get_masses()) * 1.66053906660
                                           / atoms.cell.volume)})
    t_xtb = time.perf_counter() - t1
    if not rows:
        raise SystemExit("no structure survived; nothing written")
    for level in ("ff", "xtb"):
        e_min = min(r[f"E_{level}_kJmol_per_mol"] for r in rows)
        for r in rows:
            r[f"dE_{level}_kJmol_per_mol"] = round(r[f"E_{level}_kJmol_per_mol"] - e_min, 4)
    write(str(out / f"{args.name}_ff.extxyz"), ff_frames, format="extxyz")
    write(str(out / f"{args.name}_xtb.extxyz"), xtb_frames, format="extxyz")
    with (out / f"{args.name}_landscape.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "levels.json").write_text(json.dumps({"cheap": "ff", "expensive": "xtb"}) + "\n")
    (out / "run.json").write_text(json.dumps({
        "smiles": args.smiles, "n_trials": args.n_trials, "space_groups": args.space_groups,
        "window_kjmol": args.window, "seed": args.seed, "n_structures": len(rows),
        "n_csp_minima": len(frames), "xtb_failed": failed, "csp_wall_s": round(t_csp, 1),
        "xtb_wall_s": round(t_xtb, 1), "csp_charges": "resp", "xtb_method": "GFN2-xTB",
    }, indent=1) + "\n")
    print(f"{args.name}: {len(rows)} structures ({len(failed)} xTB failures) -> {out}")


if __name__ == "__main__":
    main()
