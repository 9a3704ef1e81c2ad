"""Cost and accuracy of the structure-refinement levels on X23 crystals.

Three measurements, all in one run on this machine:

1. GFN2-xTB periodic single points (``xtb-crystal``) on 16-48 atom cells: wall and CPU
   seconds per cell single point, lattice energy vs the X23 reference (baseline: the
   smallest cell's cost, ratios per cell).
2. Fragment DFT (``dft-crystal``, PBE-D3(BJ), two-body, rigid molecules) on one X23
   crystal (urea by default): per-dimer SCF cycles and CPU time, lattice energy vs the
   X23 reference, without (baseline) and with counterpoise correction. On the strongest dimer the SCF start is compared in the same run:
   PySCF's default minao guess + DIIS (baseline) vs the superposition of the monomer
   densities + DIIS vs the same + second-order (Newton) SCF.
3. Periodic DFT (pyscf.pbc, PBE/GTH-SZV, Gamma point, GDF) on the same crystal, in a child
   process under a time limit, as the alternative to the fragment approach.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/dft_crystal_timing.py            # full (~15-30 min)
    OMP_NUM_THREADS=1 python benchmarks/dft_crystal_timing.py --quick    # STO-3G smoke run

Prints tables, then one JSON line, also written to benchmarks/results/dft_crystal_timing.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
X23 = ROOT / "data" / "reference" / "x23"
SMILES = {
    "urea": "NC(N)=O", "formamide": "NC=O", "oxalic_acid_beta": "OC(=O)C(O)=O",
    "oxalic_acid_alpha": "OC(=O)C(O)=O", "benzene": "c1ccccc1", "co2": "O=C=O",
}


def x23_reference() -> dict[str, float]:
    rows = (line for line in (X23 / "x23_lattice_energies.csv").read_text().splitlines()
            if not line.startswith("#"))
    return {r["system"]: float(r["E_latt_X23_kJmol"]) for r in csv.DictReader(rows)}


def cif(name: str) -> str:
    return (X23 / "cif" / f"{name}.cif").read_text()


def periodic_child(name: str, basis: str) -> None:
    """Periodic PBE/GTH Gamma-point lattice energy; prints one JSON line (child process).

    E_latt = E_cell/Z - E_mol + E_D3,latt with the molecule (first molecule of the cell,
    rigid) computed by molecular PySCF with the same GTH pseudopotential and basis.
    """
    from pyscf import dft, gto, lib
    from pyscf.pbc import dft as pdft
    from pyscf.pbc import gto as pgto

    from sim_backends.dft_crystal import d3_energy_hartree
    from sim_backends.structures import HARTREE_TO_KJMOL, load_crystal

    lib.num_threads(1)
    crystal = load_crystal(cif(name), SMILES[name])
    a = crystal.atoms
    t0, c0 = time.perf_counter(), time.process_time()
    cell = pgto.M(a=a.cell.array, atom=list(zip(a.get_chemical_symbols(), a.positions)),
                  basis=basis, pseudo="gth-pbe", unit="Angstrom", verbose=0)
    # Gaussian density fitting: PySCF's default FFTDF needed > 1500 s and ~10 GB for
    # the 16-atom urea cell with GTH-SZV on this machine (first run of this benchmark)
    mf = pdft.RKS(cell, xc="pbe").density_fit()
    e_cell = mf.kernel()
    cell_wall, cell_cpu = time.perf_counter() - t0, time.process_time() - c0
    m = crystal.molecule(0)
    t1 = time.perf_counter()
    mol = gto.M(atom=list(zip(m.get_chemical_symbols(), m.positions)), basis=basis,
                pseudo="gth-pbe", unit="Angstrom", verbose=0)
    e_mol = dft.RKS(mol, xc="pbe").kernel()
    e_d3 = d3_energy_hartree(a, "pbe") / crystal.z - d3_energy_hartree(m, "pbe")
    print(json.dumps({
        "converged": bool(mf.converged), "n_ao_cell": int(cell.nao),
        "cell_wall_s": cell_wall, "cell_cpu_s": cell_cpu, "mol_wall_s": time.perf_counter() - t1,
        "e_latt_kjmol": (e_cell / crystal.z - e_mol + e_d3) * HARTREE_TO_KJMOL,
        "e_d3_kjmol": e_d3 * HARTREE_TO_KJMOL,
    }))


def guess_comparison(name: str, basis: str) -> list[dict]:
    """SCF of the strongest-contact dimer from three starts (same settings otherwise)."""
    from scipy.linalg import block_diag

    from sim_backends.dft_crystal import ScfSettings, dimer_atoms, enumerate_dimers, run_scf, unique_dimers
    from sim_backends.structures import load_crystal

    crystal = load_crystal(cif(name), SMILES[name])
    dimer = unique_dimers(crystal, enumerate_dimers(crystal, 4.0))[0][0]
    s = ScfSettings(basis=basis)
    ma = run_scf(crystal.molecule(dimer.i), s, what="monomer")
    mb = run_scf(crystal.molecule(dimer.j), s, what="monomer")
    atoms = dimer_atoms(crystal, dimer)
    dm0 = block_diag(ma["dm"], mb["dm"])
    rows = []
    for label, guess, newton in (("minao guess + DIIS (baseline)", None, False),
                                 ("monomer superposition + DIIS", dm0, False),
                                 ("monomer superposition + Newton", dm0, True)):
        r = run_scf(atoms, s, dm0=guess, newton=newton, what=label)
        rows.append({"start": label, "cycles": r["n_cycles"], "cpu_s": r["cpu_s"], "wall_s": r["wall_s"],
                     "e_int_kjmol": (r["energy_hartree"] - ma["energy_hartree"] - mb["energy_hartree"]) * 2625.4996394799})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="STO-3G, cutoff 3 A, short periodic limit")
    ap.add_argument("--system", default="urea", help="X23 crystal for the DFT parts")
    ap.add_argument("--basis", default=None, help="fragment basis (def2-svp; sto-3g with --quick)")
    ap.add_argument("--cutoff", type=float, default=None, help="closest-contact cutoff, A (4.0)")
    ap.add_argument("--periodic-basis", default="gth-szv")
    ap.add_argument("--periodic-timeout-s", type=float, default=None)
    ap.add_argument("--periodic-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.periodic_child:
        periodic_child(args.system, args.periodic_basis)
        return

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from sim_backends.base import EvalInput
    from sim_backends.registry import get_backend

    console = Console(width=150)
    ref = x23_reference()
    basis = args.basis or ("sto-3g" if args.quick else "def2-svp")
    cutoff = args.cutoff or (3.0 if args.quick else 4.0)
    timeout = args.periodic_timeout_s or (120.0 if args.quick else 1500.0)
    t_start = time.perf_counter()
    load = os.getloadavg()[0]

    # 1. xTB single points
    xtb_systems = ["oxalic_acid_beta", "urea", "formamide", "oxalic_acid_alpha", "benzene"]
    xtb_rows = []
    with Progress(console=console, transient=True) as prog:
        task = prog.add_task("GFN2-xTB cells", total=len(xtb_systems))
        for name in xtb_systems:
            r = get_backend("xtb-crystal").evaluate(EvalInput(smiles=SMILES[name], structure_cif=cif(name)))
            if not r.ok:
                raise SystemExit(f"xtb-crystal failed on {name}: {r.reason}")
            xtb_rows.append({"system": name, "n_atoms": r.extra["n_atoms"], "z": r.extra["z"],
                             "sp_wall_s": r.extra["cell_single_point_s"],
                             "sp_cpu_s": r.extra["cell_single_point_cpu_s"],
                             "e_latt": r.values["energy_kjmol"], "ref": ref[name]})
            prog.advance(task)
    base_cpu = xtb_rows[0]["sp_cpu_s"]
    t = Table(title="GFN2-xTB periodic single point (tblite), gas molecule relaxed")
    for col in ("system", "atoms", "Z", "SP wall s", "SP CPU s", "CPU / 16-atom cell",
                "E_latt kJ/mol", "X23 ref", "error"):
        t.add_column(col, justify="right")
    for row in xtb_rows:
        t.add_row(row["system"], str(row["n_atoms"]), str(row["z"]), f"{row['sp_wall_s']:.2f}",
                  f"{row['sp_cpu_s']:.2f}", f"{row['sp_cpu_s'] / base_cpu:.2f}", f"{row['e_latt']:.1f}",
                  f"{row['ref']:.1f}", f"{row['e_latt'] - row['ref']:+.1f}")
    console.print(t)

    # 2a. SCF starting guesses on the strongest dimer
    with console.status("dimer SCF from three starting guesses"):
        guess_rows = guess_comparison(args.system, basis)
    t = Table(title=f"{args.system} closest dimer, PBE/{basis}: SCF start")
    for col in ("start", "cycles", "CPU s", "wall s", "CPU vs baseline", "E_int kJ/mol"):
        t.add_column(col, justify="right")
    for row in guess_rows:
        t.add_row(row["start"], str(row["cycles"]), f"{row['cpu_s']:.1f}", f"{row['wall_s']:.1f}",
                  f"{row['cpu_s'] / guess_rows[0]['cpu_s']:.2f}", f"{row['e_int_kjmol']:.3f}")
    console.print(t)

    # 2b. fragment lattice energy, without (baseline) and with counterpoise correction
    from sim_backends.dft_crystal import ScfSettings, fragment_lattice_energy
    from sim_backends.structures import load_crystal

    crystal = load_crystal(cif(args.system), SMILES[args.system])
    frag = {}
    for cp in (False, True):
        t0, c0 = time.perf_counter(), time.process_time()
        with Progress(console=console, transient=True) as prog:
            task = prog.add_task(f"fragment PBE-D3(BJ)/{basis} dimers, CP={cp}", total=None)
            values, extra = fragment_lattice_energy(
                crystal, ScfSettings(basis=basis), cutoff_A=cutoff, counterpoise=cp,
                progress=lambda done, total: prog.update(task, completed=done, total=total))
        frag[cp] = (values, extra, time.perf_counter() - t0, time.process_time() - c0)
    values, extra, _, _ = frag[True]
    t = Table(title=f"{args.system}: fragment PBE-D3(BJ)/{basis}, contact cutoff {cutoff} A, "
                    f"{extra['n_unique_dimers']} unique of {extra['n_dimers']} dimers")
    for col in ("dimer", "mult", "contact A", "COM A", "E_int DFT (no CP)", "E_int DFT (CP)", "BSSE",
                "E_D3 pair", "cycles", "CPU s (dimer)"):
        t.add_column(col, justify="right")
    for k, (d0, d) in enumerate(zip(frag[False][1]["dimers"], extra["dimers"])):
        t.add_row(str(k), str(d["multiplicity"]), f"{d['contact_A']:.2f}", f"{d['com_A']:.2f}",
                  f"{d0['e_int_kjmol']:.2f}", f"{d['e_int_kjmol']:.2f}", f"{d['bsse_kjmol']:.2f}",
                  f"{d['e_d3_pair_kjmol']:.2f}", str(d["scf_cycles"]), f"{d['scf_cpu_s']:.1f}")
    console.print(t)
    for cp, (v, x, wall, cpu) in frag.items():
        console.print(f"CP={cp}: E_latt = {v['e_dft_2body_kjmol']:.1f} (DFT 2-body) + {v['e_d3_kjmol']:.1f} "
                      f"(periodic D3, of which {x['e_d3_within_cutoff_kjmol']:.1f} within cutoff) = "
                      f"{v['energy_kjmol']:.1f} kJ/mol; X23 reference {ref[args.system]:.1f} "
                      f"(error {v['energy_kjmol'] - ref[args.system]:+.1f}); {wall:.0f} s wall, {cpu:.0f} s CPU")
    e_frag = values["energy_kjmol"]
    e_frag_nocp = frag[False][0]["energy_kjmol"]
    frag_wall, frag_cpu = frag[True][2], frag[True][3]

    # 3. periodic DFT in a child process under a time limit
    t0 = time.perf_counter()
    periodic: dict = {"status": "timeout"}  # child's own timings land in periodic on success
    with console.status(f"periodic PBE/{args.periodic_basis} Gamma point (limit {timeout:.0f} s)"):
        try:
            out = subprocess.run(
                [sys.executable, __file__, "--periodic-child", "--system", args.system,
                 "--periodic-basis", args.periodic_basis],
                capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                env={**os.environ, "OMP_NUM_THREADS": "1"})
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
            periodic = {"status": "ok", **json.loads(lines[-1])} if lines else {
                "status": "error: " + (out.stderr.strip().splitlines() or ["no output"])[-1][:200]}
        except subprocess.TimeoutExpired:
            pass
    periodic_wall = time.perf_counter() - t0
    t = Table(title=f"{args.system}: fragment vs periodic DFT")
    for col in ("approach", "status", "wall s", "E_latt kJ/mol", "X23 ref"):
        t.add_column(col, justify="right")
    t.add_row(f"fragment PBE-D3(BJ)/{basis}, no CP", "ok", f"{frag[False][2]:.0f}", f"{e_frag_nocp:.1f}",
              f"{ref[args.system]:.1f}")
    t.add_row(f"fragment PBE-D3(BJ)/{basis}, CP", "ok", f"{frag_wall:.0f}", f"{e_frag:.1f}", f"{ref[args.system]:.1f}")
    e_per = periodic.get("e_latt_kjmol")
    t.add_row(f"periodic PBE-D3(BJ)/{args.periodic_basis} Gamma", periodic["status"],
              f"{periodic_wall:.0f}" + ("" if periodic["status"] == "ok" else "+"),
              f"{e_per:.1f}" if e_per is not None else "-", f"{ref[args.system]:.1f}")
    console.print(t)

    by_name = {r["system"]: r for r in xtb_rows}
    summary = {
        "benchmark": "dft_crystal_timing",
        "load_avg_1min_at_start": round(load, 2),
        "xtb_sp_cpu_s_16_atoms": round(by_name["oxalic_acid_beta"]["sp_cpu_s"], 3),
        "xtb_sp_cpu_s_32_atoms": round(by_name["oxalic_acid_alpha"]["sp_cpu_s"], 3),
        "xtb_sp_cpu_s_48_atoms": round(by_name["benzene"]["sp_cpu_s"], 3),
        "xtb_mae_kjmol": round(sum(abs(r["e_latt"] - r["ref"]) for r in xtb_rows) / len(xtb_rows), 2),
        "xtb_elatt_urea_kjmol": round(by_name["urea"]["e_latt"], 2),
        "dft_system": args.system,
        "dft_basis": basis,
        "dft_cutoff_A": cutoff,
        "dft_n_unique_dimers": extra["n_unique_dimers"],
        "dft_elatt_cp_kjmol": round(e_frag, 2),
        "dft_elatt_nocp_kjmol": round(e_frag_nocp, 2),
        "x23_ref_kjmol": ref[args.system],
        "dft_error_cp_kjmol": round(e_frag - ref[args.system], 2),
        "dft_error_nocp_kjmol": round(e_frag_nocp - ref[args.system], 2),
        "dft_fragment_cp_wall_s": round(frag_wall, 1),
        "dft_fragment_cp_cpu_s": round(frag_cpu, 1),
        "dft_fragment_nocp_cpu_s": round(frag[False][3], 1),
        "scf_cycles_minao": guess_rows[0]["cycles"],
        "scf_cycles_superposition": guess_rows[1]["cycles"],
        "scf_cycles_newton": guess_rows[2]["cycles"],
        "scf_cpu_ratio_superposition_vs_minao": round(guess_rows[1]["cpu_s"] / guess_rows[0]["cpu_s"], 3),
        "scf_cpu_ratio_newton_vs_minao": round(guess_rows[2]["cpu_s"] / guess_rows[0]["cpu_s"], 3),
        "periodic_basis": args.periodic_basis,
        "periodic_status": periodic["status"],
        "periodic_wall_s": round(periodic_wall, 1),
        "periodic_elatt_kjmol": round(e_per, 2) if e_per is not None else None,
        "periodic_cell_cpu_s": round(periodic["cell_cpu_s"], 1) if "cell_cpu_s" in periodic else None,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    line = json.dumps(summary)
    print(line)
    out_path = ROOT / "benchmarks" / "results" / "dft_crystal_timing.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(line + "\n")


if __name__ == "__main__":
    main()
