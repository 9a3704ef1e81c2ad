"""X23 lattice energies with the W99 exp-6 + ESP point-charge rigid-molecule model.

For every X23 crystal in data/reference/x23 (PBE+TS geometries), one molecule is cut from the
crystal and made a RigidMolecule; every molecule of the cell is replaced by a rigid copy
placed by a Kabsch fit. Charges are RESP-style fits to the HF/6-31G* ESP of that molecule
(pyscf; cached). The lattice energy is evaluated at the experimental (PBE+TS) geometry and
after minimisation of cell (9 components) and rigid-body coordinates (fractional centres,
rotation vectors) with scipy L-BFGS-B and autograd gradients. The baseline, measured in the
same run, is the same protocol with GFN2-xTB Mulliken charges (tblite).

Reference: X23 lattice energies (Reilly & Tkatchenko 2013), back-corrected from sublimation
enthalpies. A rigid-molecule lattice energy omits the molecular relaxation energy (the
molecule's deformation in the crystal, typically +1 to +5 kJ/mol) and uses the crystal
conformation for the gas-phase molecule; expect errors of ~10 kJ/mol even for good
multipole models and more with point charges (W99 was fitted with point charges of its own).

Also measures energy+gradient throughput of LatticeEnergyModel for B = 1, 64, 256 structures
(oxalic acid alpha, Z = 4; naphthalene, Z = 2); the baseline there is B = 1.

Polymorph pairs: for every pair of X23 crystals of one molecule run together (alpha and beta
oxalic acid, the only pair in the shared data), the force-field lattice-energy difference
against the X23 reference difference, with "predicting zero" as the baseline.

Run:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/x23_lattice.py [--systems a,b] [--max-iter N]
Output: a table, one JSON line, and benchmarks/results/x23_lattice.json (a run with
non-default arguments writes x23_lattice_<args>.json instead).
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

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sim_backends.csp.forcefield import LatticeEnergyModel  # noqa: E402
from sim_backends.ff_relax import RigidCrystal, relax_rigid, rigid_crystal  # noqa: E402

X23_DIR = ROOT / "data" / "reference" / "x23"


def load_x23() -> tuple[dict, dict[str, float]]:
    """X23 frames by name and reference lattice energies (kJ/mol per molecule)."""
    from ase.io import read

    frames = {f.info["name"]: f for f in read(X23_DIR / "x23_pbe_ts_crystals.extxyz", ":")}
    rows = [ln for ln in (X23_DIR / "x23_lattice_energies.csv").read_text().splitlines() if not ln.startswith("#")]
    ref = {r["system"]: float(r["E_latt_X23_kJmol"]) for r in csv.DictReader(rows)}
    return frames, ref


def prepare(frame, charge_method: str):
    """(RigidMolecule, cell (3,3), rotations (Z,3,3), centres (Z,3), max fit RMSD); see
    :func:`sim_backends.ff_relax.rigid_crystal`."""
    crystal = rigid_crystal(frame.get_chemical_symbols(), frame.positions, frame.cell.array,
                            charge_method=charge_method, cache_key=f"x23:{frame.info['name']}")
    return crystal.molecule, crystal.cell_A, crystal.rotations, crystal.centres_A, crystal.fit_rmsd_A


def minimise(model, mol, cell0, rots0, centres0, max_iter: int):
    """Rigid-body + cell L-BFGS-B minimisation (:func:`sim_backends.ff_relax.relax_rigid`);
    returns dict of energies, volume change, iterations."""
    out = relax_rigid(model, RigidCrystal(mol, cell0, rots0, centres0, 0.0), max_iter=max_iter)
    return {"e_exp_kjmol": out["e_start_kjmol"], "e_min_kjmol": out["e_min_kjmol"],
            "dv_percent": out["dv_percent"], "n_iter": out["n_iter"], "converged": out["converged"]}


def throughput(
    name: str, frames, batch_sizes=(1, 64, 256), min_cpu_s: float = 2.0, cutoff_A: float = 12.0
) -> dict:
    """energy+gradient evaluations per CPU second at each batch size (process CPU time), and
    the energy at the PBE+TS geometry with this cutoff minus that with the 12 A default (kJ/mol)."""
    import torch

    mol, cell, rots, centres, _ = prepare(frames[name], "resp")
    model = LatticeEnergyModel(mol, cutoff_A=cutoff_A)
    coords = centres[:, None, :] + np.einsum("na,zba->znb", mol.coords_A, rots)
    exact = [torch.tensor(cell)[None], torch.tensor(coords)[None]]
    out = {"de_vs_12A_kjmol": float(model.energy_kjmol(*exact)[0] - LatticeEnergyModel(mol).energy_kjmol(*exact)[0])}
    rng = np.random.default_rng(0)
    for b in batch_sizes:
        cells = torch.tensor(cell[None] * (1.0 + 0.02 * rng.normal(size=(b, 1, 1))))
        xs = torch.tensor(coords[None] + 0.02 * rng.normal(size=(b,) + coords.shape))
        model.energy_and_grad(cells, xs)
        n, t0 = 0, time.process_time()
        while n < 2 or time.process_time() - t0 < min_cpu_s:
            model.energy_and_grad(cells, xs)
            n += 1
        out[b] = b * n / (time.process_time() - t0)
    return out


#: X23 crystals of the same molecule (polymorphs), as (A, B)
POLYMORPH_PAIRS = (("oxalic_acid_alpha", "oxalic_acid_beta"),)


def polymorph_pairs(rows: list[dict]) -> list[dict]:
    """Energy differences A - B (kJ/mol per molecule) of the :data:`POLYMORPH_PAIRS` both run."""
    by = {r["system"]: r for r in rows}
    out = []
    for a, b in POLYMORPH_PAIRS:
        if a in by and b in by:
            ra, rb = by[a], by[b]
            out.append({"pair": f"{a} - {b}", "d_ref_kjmol": ra["e_ref_kjmol"] - rb["e_ref_kjmol"],
                        "d_resp_kjmol": ra["resp"]["e_min_kjmol"] - rb["resp"]["e_min_kjmol"],
                        "d_xtb_kjmol": ra["xtb"]["e_min_kjmol"] - rb["xtb"]["e_min_kjmol"]})
    return out


def main() -> None:
    import torch
    from rich.console import Console
    from rich.progress import track
    from rich.table import Table

    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", default="", help="comma-separated X23 names (default: all)")
    parser.add_argument("--max-iter", type=int, default=400)
    parser.add_argument("--skip-timing", action="store_true")
    args = parser.parse_args()
    frames, ref = load_x23()
    names = [s for s in args.systems.split(",") if s] or list(frames)
    console = Console(width=150)
    rows = []
    for name in track(names, description="X23 minimisations", console=console):
        row = {"system": name, "z": int(frames[name].info["n_mol"]), "e_ref_kjmol": ref[name]}
        for method in ("resp", "xtb"):
            t0 = time.perf_counter()
            mol, cell, rots, centres, rmsd = prepare(frames[name], method)
            model = LatticeEnergyModel(mol)
            out = minimise(model, mol, cell, rots, centres, args.max_iter)
            row[method] = {**out, "wall_s": time.perf_counter() - t0, "esp_rrms": mol.esp_rrms}
            row["pose_rmsd_A"] = rmsd
        rows.append(row)

    table = Table(title="X23 lattice energies, W99 exp-6 + point charges, rigid molecules (kJ/mol per molecule)")
    for col in ("system", "Z", "E_ref", "E_exp RESP", "E_min RESP", "err RESP", "dV% RESP", "E_min xTB",
                "err xTB", "iter", "RRMS"):
        table.add_column(col, justify="right")
    for r in rows:
        a, b = r["resp"], r["xtb"]
        table.add_row(r["system"], str(r["z"]), f"{r['e_ref_kjmol']:.1f}", f"{a['e_exp_kjmol']:.1f}",
                      f"{a['e_min_kjmol']:.1f}", f"{a['e_min_kjmol'] - r['e_ref_kjmol']:+.1f}",
                      f"{a['dv_percent']:+.1f}", f"{b['e_min_kjmol']:.1f}",
                      f"{b['e_min_kjmol'] - r['e_ref_kjmol']:+.1f}", f"{a['n_iter']}{'' if a['converged'] else '*'}",
                      f"{a['esp_rrms']:.3f}")
    console.print(table)

    def stats(method: str, key: str) -> tuple[float, float, str]:
        err = np.array([r[method][key] - r["e_ref_kjmol"] for r in rows])
        worst = int(np.abs(err).argmax())
        return float(np.abs(err).mean()), float(err[worst]), rows[worst]["system"]

    summary = {"benchmark": "x23_lattice", "n_systems": len(rows)}
    for method in ("resp", "xtb"):
        for key, tag in (("e_exp_kjmol", "exp_geom"), ("e_min_kjmol", "minimised")):
            mae, worst, who = stats(method, key)
            summary[f"mae_{method}_{tag}_kjmol"] = round(mae, 2)
            summary[f"worst_{method}_{tag}_kjmol"] = round(worst, 2)
            summary[f"worst_{method}_{tag}_system"] = who
    summary["mean_abs_dv_percent_resp"] = round(float(np.mean([abs(r["resp"]["dv_percent"]) for r in rows])), 2)
    summary["mae_ratio_resp_over_xtb_minimised"] = round(
        summary["mae_resp_minimised_kjmol"] / max(1e-9, summary["mae_xtb_minimised_kjmol"]), 3)
    console.print(
        f"MAE vs X23 reference (minimised): RESP {summary['mae_resp_minimised_kjmol']:.1f} kJ/mol, "
        f"xTB-charge baseline {summary['mae_xtb_minimised_kjmol']:.1f} kJ/mol "
        f"(ratio {summary['mae_ratio_resp_over_xtb_minimised']:.2f}); at the PBE+TS geometry: RESP "
        f"{summary['mae_resp_exp_geom_kjmol']:.1f}, xTB {summary['mae_xtb_exp_geom_kjmol']:.1f}. "
        "Rigid molecules: the molecular relaxation energy (a few kJ/mol) is not included. * = not converged."
    )

    if not args.skip_timing:
        timing = Table(title="LatticeEnergyModel energy+gradient throughput (structures per CPU second); "
                             "baseline B=1")
        for col in ("system", "Z", "n_atoms", "cutoff A", "B=1", "B=64", "B=256", "x B=64", "x B=256",
                    "E-E(12 A) kJ/mol"):
            timing.add_column(col, justify="right")
        for name, cutoff in (("oxalic_acid_alpha", 12.0), ("naphthalene", 12.0), ("naphthalene", 9.0)):
            rates = throughput(name, frames, cutoff_A=cutoff)
            z = int(frames[name].info["n_mol"])
            timing.add_row(name, str(z), str(len(frames[name]) // z), f"{cutoff:.0f}",
                           *(f"{rates[b]:.0f}" for b in (1, 64, 256)),
                           f"{rates[64] / rates[1]:.1f}", f"{rates[256] / rates[1]:.1f}",
                           f"{rates['de_vs_12A_kjmol']:+.3f}")
            for b in (1, 64, 256):
                summary[f"evals_per_s_{name}_rc{cutoff:.0f}_B{b}"] = round(rates[b], 1)
        console.print(timing)

    pairs = polymorph_pairs(rows)
    if pairs:
        ptable = Table(title="Polymorph pairs: lattice-energy difference A - B (kJ/mol per molecule), "
                             "W99 exp-6 + point charges, rigid, minimised; baseline: predicting 0")
        for col in ("pair", "X23 ref", "RESP", "err RESP", "xTB charges", "err xTB", "err of 0"):
            ptable.add_column(col, justify="right")
        for p in pairs:
            ptable.add_row(p["pair"], f"{p['d_ref_kjmol']:+.2f}", f"{p['d_resp_kjmol']:+.2f}",
                           f"{p['d_resp_kjmol'] - p['d_ref_kjmol']:+.2f}", f"{p['d_xtb_kjmol']:+.2f}",
                           f"{p['d_xtb_kjmol'] - p['d_ref_kjmol']:+.2f}", f"{-p['d_ref_kjmol']:+.2f}")
        console.print(ptable)
        summary["polymorph_pairs"] = pairs
        summary["polymorph_mae_resp_kjmol"] = round(float(np.mean([abs(p["d_resp_kjmol"] - p["d_ref_kjmol"])
                                                                    for p in pairs])), 2)
        summary["polymorph_mae_zero_kjmol"] = round(float(np.mean([abs(p["d_ref_kjmol"]) for p in pairs])), 2)

    line = json.dumps(summary)
    print(line)
    tag = "".join(f"_{k}-{v}" for k, v, d in (("systems", args.systems.replace(",", "-"), ""),
                                               ("maxiter", args.max_iter, 400)) if v != d)
    tag += "_skip-timing" if args.skip_timing else ""
    out = ROOT / "benchmarks" / "results" / f"x23_lattice{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(line + "\n")


if __name__ == "__main__":
    main()
