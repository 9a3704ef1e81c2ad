"""Benchmark ``csp_recovery``: does a CSP run from SMILES find the experimental crystal?

For rigid X23 molecules (Reilly & Tkatchenko, J. Chem. Phys. 139, 024705, 2013; PBE+TS
geometries of the experimental crystals in data/reference/x23), run
:func:`sim_backends.csp.run.run_csp` from the SMILES only (RESP charges by default,
``--charges xtb`` for a quick run) in Z'=1 space groups that contain the experimental
structure as a subgroup description (many X23 molecules sit on inversion centres, so
e.g. P2_1/c Z=2 is searched in P2_1), then look for the experimental structure among
the unique minima with pymatgen StructureMatcher (heavy atoms, ltol=0.3, stol=0.4,
angle_tol=10, scale=True; independent of setting, origin and atom order). Reports the
rank of the match, its energy above the global minimum, and the RMS displacement.

Run:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/csp_recovery.py [--n-trials 48]
      [--workers 2] [--charges xtb] [--systems benzene,pyrazine] [--merge]
      [--conformer x23]
Writes benchmarks/results/csp_recovery.json (``--conformer x23``: the rigid molecule
takes the X23 gas-phase conformer instead of RDKit's, written to
csp_recovery_x23conformer.json; this separates conformer errors from search errors).
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

#: name in x23 -> (SMILES, Z'=1 search space groups, experimental space group)
SYSTEMS: dict[str, tuple[str, str, str]] = {
    "pyrazine": ("c1cnccn1", "P2_1", "Pmnn (Z=2, on 2/m)"),
    "naphthalene": ("c1ccc2ccccc2c1", "P2_1", "P2_1/a (Z=2, on -1)"),
    "anthracene": ("c1ccc2cc3ccccc3cc2c1", "P2_1", "P2_1/a (Z=2, on -1)"),
    "benzene": ("c1ccccc1", "P2_12_12_1", "Pbca (Z=4, on -1)"),
    "14-cyclohexanedione": ("O=C1CCC(=O)CC1", "P2_1", "P2_1/c (Z=2, on -1)"),
    "urea": ("NC(N)=O", "P2_1", "P-42_1m (Z=2, on mm2)"),
    "formamide": ("NC=O", "P2_1/c", "P2_1/n (Z=4)"),
    "cytosine": ("Nc1ccnc(=O)[nH]1", "P2_12_12_1", "P2_12_12_1 (Z=4)"),
    "hexamine": ("C1N2CN3CN1CN(C2)C3", "P1", "I-43m (Z=2, on -43m)"),
    "adamantane": ("C1C2CC3CC1CC(C2)C3", "P2_1", "P-42_1c (Z=2, on -4)"),
    "trioxane": ("C1OCOCO1", "Cc", "R3c (Z=6, on 3)"),
    "oxalic_acid_alpha": ("OC(=O)C(=O)O", "P2_12_12_1", "Pcab (Z=4, on -1)"),
    "oxalic_acid_beta": ("OC(=O)C(=O)O", "P2_1", "P2_1/c (Z=2, on -1)"),
    "co2": ("O=C=O", "P2_12_12_1", "Pa-3 (Z=4, on -3)"),
}


def reference_structure(name: str):
    """The X23 crystal ``name`` as a pymatgen Structure."""
    from ase.io import read
    from pymatgen.io.ase import AseAtomsAdaptor

    for atoms in read(ROOT / "data/reference/x23/x23_pbe_ts_crystals.extxyz", index=":"):
        if atoms.info.get("name") == name:
            return AseAtomsAdaptor.get_structure(atoms)
    raise KeyError(name)


def gas_phase_molecule(name: str, charges: str):
    """The rigid X23 gas-phase molecule (PBE+TS geometry) with fitted charges: used
    with ``--conformer x23``, and as a fallback for molecules the SMILES route rejects."""
    from ase.io import read

    from sim_backends.csp.charges import compute_charges
    from sim_backends.csp.rigid import RigidMolecule, symmetry_classes

    atoms = next(a for a in read(ROOT / "data/reference/x23/x23_pbe_ts_molecules.extxyz", index=":")
                 if a.info.get("name") == name)
    sym, xyz = atoms.get_chemical_symbols(), atoms.get_positions()
    fit = compute_charges(sym, xyz, charges, symmetry_classes(sym, xyz), cache_key=SYSTEMS[name][0])
    return RigidMolecule.from_atoms(sym, xyz, smiles=SYSTEMS[name][0], charges_e=fit.charges_e,
                                    charge_method=fit.method)


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    from sim_backends.base import SetupError
    from sim_backends.csp.run import run_csp

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-trials", type=int, default=48)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--charges", default="resp")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--conformer", choices=("smiles", "x23"), default="smiles",
                    help="x23: use the X23 gas-phase (crystal) conformer instead of the "
                         "RDKit one; results go to csp_recovery_x23conformer.json")
    ap.add_argument("--merge", action="store_true",
                    help="keep rows of other systems from an earlier results file (same settings)")
    args = ap.parse_args(argv)
    rows = []
    suffix = "_x23conformer" if args.conformer == "x23" else ""
    out = ROOT / f"benchmarks/results/csp_recovery{suffix}.json"
    earlier = []
    if args.merge and out.is_file():
        old = json.loads(out.read_text())
        if (old.get("n_trials_per_system"), old.get("charges")) == (args.n_trials, args.charges):
            wanted = set(args.systems.split(","))
            earlier = [r for r in old.get("systems", []) if r["system"] not in wanted]
    console = Console(stderr=True)
    for name in args.systems.split(","):
        smiles, groups, exp_sg = SYSTEMS[name]
        console.print(f"[bold]{name}[/] {smiles} searching {groups} ({args.n_trials} trials)")
        t0 = time.perf_counter()
        row = {"system": name, "smiles": smiles, "searched": groups, "experimental": exp_sg}
        from sim_backends.csp.rigid import RigidMolecule

        try:
            if args.conformer == "x23":
                raise SetupError("X23 conformer requested")
            mol = RigidMolecule.from_smiles(smiles, charges=args.charges)
            row["start"] = "SMILES"
        except SetupError as exc:
            mol = gas_phase_molecule(name, args.charges)
            row["start"] = f"X23 gas-phase geometry (SMILES route: {exc})"
        land = run_csp(mol, args.n_trials, space_groups=groups, seed=args.seed,
                       n_workers=args.workers, progress=True)
        hit = land.find_match(reference_structure(name))
        row.update({
            "status": "found" if hit else "not found", "n_unique": len(land),
            "global_min_kjmol": land.minima[0].energy_kjmol if land.minima else None,
            "rank": hit[0] if hit else None,
            "gap_kjmol": (hit[1].energy_kjmol - land.minima[0].energy_kjmol) if hit else None,
            "match_space_group": hit[1].space_group if hit else None,
            "rms": hit[2] if hit else None, "wall_s": time.perf_counter() - t0,
        })
        rows.append(row)
        console.print(row)

    rows = earlier + rows
    table = Table(title="CSP recovery of X23 crystals from SMILES (W99 + Ewald, Z'=1)")
    for c in ("system", "start", "experimental", "searched", "status", "rank", "gap kJ/mol", "found as",
              "rms", "unique", "wall s"):
        table.add_column(c)
    fmt = lambda v, f="{:.2f}": "-" if v is None else f.format(v)  # noqa: E731
    for r in rows:
        table.add_row(r["system"], r.get("start", "")[:8], r["experimental"], r["searched"], r["status"][:40],
                      fmt(r.get("rank"), "{}"), fmt(r.get("gap_kjmol")),
                      str(r.get("match_space_group") or "-"), fmt(r.get("rms"), "{:.3f}"),
                      fmt(r.get("n_unique"), "{}"), fmt(r.get("wall_s"), "{:.0f}"))
    Console(width=200).print(table)
    ran = rows
    found = [r for r in ran if r["status"] == "found"]
    summary = {
        "benchmark": "csp_recovery", "n_trials_per_system": args.n_trials,
        "conformer": args.conformer,
        "charges": args.charges, "n_systems": len(ran), "n_found": len(found),
        "n_rank1": sum(r["rank"] == 1 for r in found),
        "n_within_5kjmol": sum(r["gap_kjmol"] <= 5.0 for r in found),
        "systems": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1, default=str))
    print(json.dumps({k: v for k, v in summary.items() if k != "systems"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
