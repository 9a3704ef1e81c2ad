"""Compute the replay table of hole reorganisation energies for the decision benchmark.

Runs the real backends of ``sim_backends.reorg`` over a pool file (default
``examples/pool.smi``): GFN2-xTB (``xtb-reorg``, fidelity 0) for every molecule, then
DFT (``dft-reorg``, fidelity 1) in order of estimated cost, cheapest first, until a
wall-time budget is spent. Rows are appended to the CSV as they finish, and molecules
already in the CSV are skipped, so the script can be stopped and resumed.

Output columns: ``smiles,name,xtb_reorg_kjmol,dft_reorg_kjmol,xtb_wall_s,dft_wall_s,
xtb_cpu_s,dft_cpu_s`` (empty value = not computed or failed; the failure reason is
printed; CPU seconds are the worker process's user + system time, which a loaded
machine inflates far less than wall time). Pool entries
that fail :func:`sim_backends.molecule.validate_smiles` are reported and never become
rows; rows of the existing table that are not valid pool molecules are dropped.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/make_reorg_table.py \
        --dft-budget-s 1800 --dft-geometry xtb

``--dft-geometry xtb`` (the default here) gives B3LYP/6-31G single points on the
GFN2-xTB geometries of both charge states ("DFT//xTB"), four SCF calculations per
molecule; ``dft`` relaxes both states with DFT (geomeTRIC) and costs ~10-50x more.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["smiles", "name", "xtb_reorg_kjmol", "dft_reorg_kjmol", "xtb_wall_s", "dft_wall_s",
           "xtb_cpu_s", "dft_cpu_s"]


def read_pool(path: Path) -> list[tuple[str, str]]:
    """Valid (smiles, name) pairs of a pool file (the campaign's reader; '#' in SMILES
    is a bond); entries the backends can never treat are reported on stderr and left
    out, so they never become rows."""
    from sim_backends.base import SetupError
    from sim_backends.molecule import read_pool as read_pool_file
    from sim_backends.molecule import validate_smiles

    pool = []
    for smi, name in read_pool_file(path):
        try:
            validate_smiles(smi)
        except SetupError as exc:
            print(f"skipping pool entry {name or smi!r}: {exc}", file=sys.stderr)
            continue
        pool.append((smi, name or smi))
    return pool


def read_table(path: Path) -> dict[str, dict[str, str]]:
    if not path.exists():
        return {}
    with path.open() as fh:
        return {row["smiles"]: row for row in csv.DictReader(fh)}


def write_table(path: Path, rows: dict[str, dict[str, str]], order: list[str]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        for s in order:
            if s in rows:
                w.writerow({k: rows[s].get(k, "") for k in COLUMNS})
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=Path, default=ROOT / "examples" / "pool.smi")
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "benchmarks" / "reorg_table.csv")
    ap.add_argument("--dft-budget-s", type=float, default=1800.0,
                    help="wall seconds for the DFT pass (molecules cheapest first)")
    ap.add_argument("--dft-geometry", choices=["xtb", "dft"], default="xtb")
    ap.add_argument("--skip-xtb", action="store_true")
    args = ap.parse_args(argv)

    from rich.progress import Progress

    from sim_backends.base import EvalInput
    from sim_backends.registry import backend_class

    try:
        pool = read_pool(args.pool)
    except FileNotFoundError as exc:
        sys.exit(f"make_reorg_table: error: {exc}")
    order = [s for s, _ in pool]
    rows = read_table(args.out)
    for s, name in pool:
        rows.setdefault(s, {"smiles": s, "name": name})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_table(args.out, rows, order)  # drops rows that are not valid pool molecules
    xtb = backend_class("xtb-reorg")()
    dft = backend_class("dft-reorg")(geometry=args.dft_geometry)

    with Progress() as progress:
        if not args.skip_xtb:
            todo = [s for s in order if not rows[s].get("xtb_wall_s")]
            task = progress.add_task("xTB reorganisation energies", total=len(todo))
            for s in todo:
                r = xtb.evaluate(EvalInput(smiles=s))
                rows[s]["xtb_wall_s"] = f"{r.wall_s:.3f}"
                rows[s]["xtb_cpu_s"] = f"{r.cpu_s:.3f}"
                rows[s]["xtb_reorg_kjmol"] = f"{r.values['reorg_energy_kjmol']:.4f}" if r.ok else ""
                if not r.ok:
                    progress.console.print(f"xtb failed {rows[s]['name']}: {r.reason}")
                write_table(args.out, rows, order)
                progress.advance(task)

        todo = [s for s in order if rows[s].get("xtb_reorg_kjmol") and not rows[s].get("dft_wall_s")]
        todo.sort(key=lambda s: dft.cost_estimate(EvalInput(smiles=s)))
        task = progress.add_task("DFT reorganisation energies", total=len(todo))
        t0 = time.perf_counter()
        for s in todo:
            if time.perf_counter() - t0 > args.dft_budget_s:
                progress.console.print(f"DFT budget of {args.dft_budget_s:.0f} s spent; "
                                       f"{len(todo) - int(progress.tasks[task].completed)} left")
                break
            r = dft.evaluate(EvalInput(smiles=s))
            rows[s]["dft_wall_s"] = f"{r.wall_s:.3f}"
            rows[s]["dft_cpu_s"] = f"{r.cpu_s:.3f}"
            rows[s]["dft_reorg_kjmol"] = f"{r.values['reorg_energy_kjmol']:.4f}" if r.ok else ""
            if not r.ok:
                progress.console.print(f"dft failed {rows[s]['name']}: {r.reason}")
            write_table(args.out, rows, order)
            progress.advance(task)
    n_x = sum(bool(rows[s].get("xtb_reorg_kjmol")) for s in order)
    n_d = sum(bool(rows[s].get("dft_reorg_kjmol")) for s in order)
    print(f"wrote {args.out}: {len(order)} molecules, {n_x} with xTB, {n_d} with DFT")
    return 0


if __name__ == "__main__":
    sys.exit(main())
