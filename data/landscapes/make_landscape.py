"""Build a two-level CSP landscape of our own in the target_I layout.

Cheap level ``ff``: the project's CSP engine (``sim_backends.csp.run_csp``: Sobol
trials, rigid-molecule W99-type exp-6 + RESP point charges with Ewald sums, duplicate
removal), or the force-field frames of an earlier run (``--ff-extxyz``).

Expensive level, evaluated at every force-field minimum (the same geometry at both
levels: a single-point correction, as in the Delta-learning literature the refinement
agent follows):

* ``--expensive xtb``: periodic GFN2-xTB single point (tblite; Bannwarth, Ehlert &
  Grimme, J. Chem. Theory Comput. 15, 1652 (2019)), E_cell / Z, Gamma point; with
  ``--min-width 9`` in the smallest supercell at least 9 A wide in every direction, as the
  ``xtb-crystal`` backend evaluates a cell (default 0: the unit cell, as ``formamide_big``).
* ``--expensive dft``: two-body fragment DFT-D3(BJ) lattice energy
  (:func:`sim_backends.dft_crystal.fragment_lattice_energy`: monomers plus the
  symmetry-unique dimers within a closest-contact cutoff, Boys-Bernardi counterpoise,
  periodic D3(BJ)+ATM summed over the whole crystal), rigid molecules, plus the
  point-charge electrostatics of the pairs beyond the cutoff (HMBI-style, see
  :func:`sim_backends.dft_crystal.long_range_electrostatics_kjmol`; ``--no-long-range``
  leaves it out).

Before any expensive work the force-field minima pass a physical-sanity filter
(:func:`sanity_reason`): density at least ``--min-density`` g/cm^3 and a contact
network (closest atom-atom distance below ``--contact-A``) that spans all three
lattice directions. It removes e.g. slabs of hydrogen-bonded layers separated by a
vacuum gap, which the rigid-body minimiser can leave behind because the energy is
nearly flat in the gap width.

Expensive results are appended to ``<work>/<level>_results.jsonl`` as they finish
(at most ``--workers`` processes, one OpenMP thread each); a rerun skips structures
already there, so an interrupted run resumes.

Writes ``data/landscapes/<name>/``: ``<name>_ff.extxyz``, ``<name>_<level>.extxyz``,
``<name>_landscape.csv`` (``id, dE_ff_kJmol_per_mol, dE_<level>_kJmol_per_mol, ...``),
``levels.json`` (``{"cheap": "ff", "expensive": "<level>"}``, read by
``benchmarks/refinement.py``) and ``run.json`` (settings, filter, timings, failures,
the Pearson and Spearman correlations of the two levels and the spread of the correction); for the DFT
level also ``dft_results.jsonl`` (the raw per-structure records with every unique dimer,
which the fragment dimer GP learns from) and, after a CSP run, ``csp_run.json``.
Energies are relative to each level's lowest kept structure, kJ/mol per molecule.

Usage::

    OMP_NUM_THREADS=1 python data/landscapes/make_landscape.py --smiles NC=O \\
        --name formamide --n-trials 320 --space-groups P2_1/c,P-1,P2_1,P2_12_12_1
    OMP_NUM_THREADS=1 python data/landscapes/make_landscape.py --smiles NC=O \\
        --name formamide_dft --expensive dft \\
        --ff-extxyz data/landscapes/formamide_big/formamide_big_ff.extxyz
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    import numpy as np
    from ase import Atoms

EV_TO_KJMOL = 96.48533212

from sim_backends.descriptors import density_gcm3  # noqa: E402  (light import)
from sim_backends.structures import Crystal  # noqa: E402  (light import)


def contact_dimensionality(atoms: Atoms, contact_A: float) -> int:
    """Number of lattice directions (0-3) spanned by the intermolecular contact network.

    Molecules are nodes; every pair (molecule i, molecule j + lattice shift) whose
    closest atom-atom distance is below ``contact_A`` is an edge. A spanning tree
    assigns each molecule a lattice offset; each edge outside the tree closes a loop
    whose net lattice translation is a period of the network. The rank of these
    translations is the dimensionality (3 for a bulk crystal, 2 for isolated layers,
    1 for chains, 0 for isolated clusters).

    Args:
        atoms: periodic cell, (n_atoms,), Angstrom.
        contact_A: contact distance (A).
    """
    import numpy as np

    from sim_backends.dft_crystal import enumerate_dimers

    crystal = Crystal.from_atoms(atoms)
    edges = [(d.i, d.j, np.asarray(d.shift)) for d in enumerate_dimers(crystal, contact_A)]
    offset: dict[int, np.ndarray] = {0: np.zeros(3, dtype=int)}
    periods = []
    grown = True
    while grown:  # breadth-first growth of the tree over the Z molecules
        grown = False
        for i, j, s in edges:
            if i in offset and j not in offset:
                offset[j] = offset[i] + s
                grown = True
    if len(offset) < crystal.z:
        return 0  # some molecule of the cell touches nothing connected to molecule 0
    for i, j, s in edges:
        periods.append(offset[i] + s - offset[j])
    return int(np.linalg.matrix_rank(np.array(periods))) if periods else 0


def sanity_reason(atoms: Atoms, min_density_gcm3: float, contact_A: float) -> str | None:
    """Why a force-field minimum is not a physical bulk crystal, or None if it is.

    Args:
        atoms: periodic cell.
        min_density_gcm3: lowest accepted density (g/cm^3); organic molecular crystals
            lie at about 1.0-1.6 g/cm^3 (small light molecules near the low end).
        contact_A: contact distance (A) for :func:`contact_dimensionality`.
    """
    rho = density_gcm3(atoms)
    if rho < min_density_gcm3:
        return f"density {rho:.3f} g/cm3 < {min_density_gcm3}"
    dim = contact_dimensionality(atoms, contact_A)
    if dim < 3:
        return f"contact network (< {contact_A} A) spans only {dim} lattice direction(s)"
    return None


def _expensive_job(job: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
    """Evaluate one structure at the expensive level (runs in a worker process).

    Args:
        job: ``(level, extxyz_text_of_one_frame, settings)``.

    Returns:
        ``{"id", "status": "ok"|"failed", "energy_kjmol" (per molecule), "cpu_s",
        "wall_s", ...}``; failures carry a one-line ``reason``.
    """
    import io

    from ase.io import read

    level, text, settings = job
    atoms = read(io.StringIO(text), format="extxyz")
    sid, z = str(atoms.info["id"]), int(atoms.info["Z"])
    t0, c0 = time.perf_counter(), time.process_time()
    out: dict[str, Any] = {"id": sid}
    try:
        if level == "xtb":
            from sim_backends.xtb_crystal import gamma_supercell, xtb_calculator

            # the xtb-crystal backend's cell: the Gamma-point supercell of at least
            # min_width_A in every direction (0 = the unit cell, as the first landscapes)
            reps = gamma_supercell(atoms.cell.array, float(settings.get("min_width_A", 0.0)))
            cell = atoms.repeat(reps)
            cell.calc = xtb_calculator()
            out["supercell"] = list(reps)
            out["energy_kjmol"] = (float(cell.get_potential_energy()) / (z * len(cell) // len(atoms))
                                   * EV_TO_KJMOL)
        else:
            from pyscf import lib

            from sim_backends.dft_crystal import ScfSettings, fragment_lattice_energy

            lib.num_threads(1)
            values, extra = fragment_lattice_energy(
                Crystal.from_atoms(atoms),
                ScfSettings(functional=settings["functional"], basis=settings["basis"],
                            conv_tol=settings["conv_tol"], grid_level=settings["grid_level"],
                            density_fit=settings["density_fit"]),
                cutoff_A=settings["cutoff_A"], cutoff_mode=settings["cutoff_mode"],
                counterpoise=settings["counterpoise"])
            out.update({k: float(v) for k, v in values.items()})
            out["n_unique_dimers"] = int(extra["n_unique_dimers"])
            out["scf_cycles_total"] = int(extra["scf_cycles_total"])
            out["max_bsse_kjmol"] = max((abs(r.get("bsse_kjmol", 0.0)) for r in extra["dimers"]),
                                        default=0.0)
            # per unique dimer: multiplicity, closest contact (A), E_int and BSSE (kJ/mol)
            out["dimers"] = [[r["multiplicity"], r["contact_A"], round(r["e_int_kjmol"], 4),
                              round(r.get("bsse_kjmol", 0.0), 4)] for r in extra["dimers"]]
        out["status"] = "ok"
    except Exception as exc:  # noqa: BLE001 - SCF failure etc.: record and leave the structure out
        out["status"] = "failed"
        out["reason"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
    out["wall_s"] = round(time.perf_counter() - t0, 2)
    out["cpu_s"] = round(time.process_time() - c0, 2)
    return out


def _frame_text(atoms: Atoms) -> str:
    import io

    from ase.io import write

    buf = io.StringIO()
    write(buf, atoms, format="extxyz")
    return buf.getvalue()


def run_expensive(frames: list[Atoms], level: str, settings: dict[str, Any], jsonl: Path,
                  workers: int) -> dict[str, dict[str, Any]]:
    """Evaluate every frame not yet in ``jsonl``; returns all results by id.

    Results are appended to ``jsonl`` (one JSON object a line) as they arrive, so a
    rerun resumes. ``workers`` > 1 uses a process pool (one OpenMP thread each).
    """
    import multiprocessing as mp

    import numpy as np
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.progress import TimeRemainingColumn

    done: dict[str, dict[str, Any]] = {}
    if jsonl.exists():
        for line in jsonl.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                done[rec["id"]] = rec
    todo = [a for a in frames if str(a.info["id"]) not in done]
    # a fixed random order: partial results cover the whole energy range (monitoring)
    order = np.random.default_rng(0).permutation(len(todo))
    todo = [todo[k] for k in order]
    jobs = [(level, _frame_text(a), settings) for a in todo]
    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*cols) as bar, jsonl.open("a") as fh:
        task = bar.add_task(f"{level} ({len(done)} done before)", total=len(jobs))
        if workers > 1 and len(jobs) > 1:
            pool = mp.get_context("fork").Pool(workers, maxtasksperchild=20)
            results = pool.imap_unordered(_expensive_job, jobs)
        else:
            pool, results = None, map(_expensive_job, jobs)
        try:
            for rec in results:
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
                done[rec["id"]] = rec
                bar.advance(task)
        finally:
            if pool is not None:
                pool.close()
                pool.join()
    return done


def main(argv: list[str] | None = None) -> None:
    import numpy as np
    from ase.io import read, write

    from sim_backends.dft_crystal import long_range_electrostatics_kjmol, molecule_resp_charges

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smiles", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--n-trials", type=int, default=320)
    p.add_argument("--space-groups", default="P2_1/c,P-1,P2_1,P2_12_12_1",
                   help="comma-separated, or 'default' for the CSP engine's ten groups")
    p.add_argument("--window", type=float, default=30.0, help="FF energy window, kJ/mol")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ff-extxyz", default=None,
                   help="reuse these force-field minima instead of running CSP")
    p.add_argument("--expensive", choices=("xtb", "dft"), default="xtb")
    p.add_argument("--min-width", type=float, default=0.0,
                   help="xtb: smallest width (A) of the Gamma-point supercell (the xtb-crystal "
                        "backend uses 9; 0 = unit cell, as formamide_big)")
    p.add_argument("--functional", default="pbe", help="dft: PySCF xc name (D3(BJ) to match)")
    p.add_argument("--basis", default="def2-svp", help="dft: Gaussian basis")
    p.add_argument("--cutoff", type=float, default=3.5, help="dft: dimer cutoff, A")
    p.add_argument("--cutoff-mode", choices=("contact", "com"), default="contact")
    p.add_argument("--no-counterpoise", action="store_true", help="dft: skip the CP correction")
    p.add_argument("--grid-level", type=int, default=0, help="dft: PySCF grid level")
    p.add_argument("--conv-tol", type=float, default=1e-7, help="dft: SCF tolerance, Hartree")
    p.add_argument("--density-fit", action="store_true",
                   help="dft: density fitting (default off: exact in-core integrals, faster "
                        "for dimers of small molecules)")
    p.add_argument("--no-long-range", action="store_true",
                   help="dft: leave out the point-charge electrostatics beyond the cutoff")
    p.add_argument("--only-done", action="store_true",
                   help="compute nothing; write the landscape from the results already "
                        "in the work directory")
    p.add_argument("--min-density", type=float, default=0.8, help="sanity filter, g/cm^3")
    p.add_argument("--contact-A", type=float, default=4.0, help="sanity filter contact, A")
    p.add_argument("--workers", type=int, default=2, help="expensive-level processes")
    p.add_argument("--max-structures", type=int, default=None,
                   help="keep only the N lowest-FF structures that pass the filter")
    p.add_argument("--limit", type=int, default=None,
                   help="evaluate only the N lowest FF structures (pilot); writes nothing")
    p.add_argument("--work", default=None, help="work directory (default /tmp/make_landscape_NAME)")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    level = args.expensive
    out = ROOT / "data" / "landscapes" / args.name
    work = Path(args.work or f"/tmp/make_landscape_{args.name}")
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.ff_extxyz:
        ff_source = str(args.ff_extxyz)
        frames = read(ff_source, ":")
    else:
        ff_source = str(work / "csp" / "landscape_ff.extxyz")
        if not Path(ff_source).exists():  # CSP results are kept in the work dir (resume)
            from sim_backends.csp.run import run_csp

            run_csp(args.smiles, args.n_trials,
                    space_groups=None if args.space_groups == "default" else args.space_groups,
                    seed=args.seed, energy_window_kjmol=args.window, out_dir=work / "csp")
        frames = read(ff_source, ":")
    t_csp = time.perf_counter() - t0
    frames.sort(key=lambda a: float(a.info["energy_kjmol"]))

    excluded, kept = {}, []
    for atoms in frames:
        why = sanity_reason(atoms, args.min_density, args.contact_A)
        if why:
            excluded[str(atoms.info["id"])] = why
        else:
            kept.append(atoms)
    for sid, why in excluded.items():
        print(f"excluded {sid}: {why}")
    if args.max_structures:
        kept = kept[: args.max_structures]  # the lowest force-field energies
    if args.limit:
        kept = kept[: args.limit]

    settings: dict[str, Any] = {"method": "GFN2-xTB", **(
        {"min_width_A": args.min_width} if args.min_width else {})} if level == "xtb" else {
        "functional": args.functional, "basis": args.basis, "cutoff_A": args.cutoff,
        "cutoff_mode": args.cutoff_mode, "counterpoise": not args.no_counterpoise,
        "grid_level": args.grid_level, "conv_tol": args.conv_tol,
        "density_fit": args.density_fit,
        "two_body": True, "gas": "rigid", "dispersion": "D3(BJ)+ATM, periodic"}
    jsonl = work / f"{level}_results.jsonl"
    meta = work / f"{level}_settings.json"
    if jsonl.exists() and meta.exists() and json.loads(meta.read_text()) != settings:
        raise SystemExit(f"{jsonl} was made with other settings ({meta}); use another --work")
    meta.write_text(json.dumps(settings) + "\n")
    t1 = time.perf_counter()
    if args.only_done:
        results = run_expensive([], level, settings, jsonl, 1)
        n_all = len(kept)
        kept = [a for a in kept if str(a.info["id"]) in results]
        print(f"--only-done: {len(kept)} of {n_all} filtered structures have results")
    else:
        results = run_expensive(kept, level, settings, jsonl, args.workers)
    t_exp = time.perf_counter() - t1

    rows, ff_frames, exp_frames, failed = [], [], [], {}
    long_range = level == "dft" and not args.no_long_range
    charges = molecule_resp_charges(Crystal.from_atoms(kept[0])) if long_range and kept else None
    for atoms in kept:
        sid, z = str(atoms.info["id"]), int(atoms.info["Z"])
        rec = results[sid]
        if rec["status"] != "ok":
            failed[sid] = rec["reason"]
            continue
        e_ff, e_exp = float(atoms.info["energy_kjmol"]), float(rec["energy_kjmol"])
        lr = (long_range_electrostatics_kjmol(Crystal.from_atoms(atoms), charges, args.cutoff, args.cutoff_mode)
              if charges is not None else {})
        e_exp += lr.get("e_elec_lr_kjmol", 0.0)
        info = {"id": sid, "Z": z, "connectivity_ok": True}
        a_ff, a_exp = atoms.copy(), atoms.copy()
        a_ff.info = {**info, "level": "ff", "energy_kjmol": e_ff}
        a_exp.info = {**info, "level": level, "energy_cell_per_mol_kjmol": e_exp}
        row = {"id": sid, "E_ff_kJmol_per_mol": e_ff, f"E_{level}_kJmol_per_mol": e_exp,
               "Z": z, "n_atoms": len(atoms), "density_gcm3": round(density_gcm3(atoms), 4)}
        if level == "dft":
            for key in ("e_dft_2body_kjmol", "e_d3_kjmol", "n_unique_dimers", "cpu_s"):
                row[key] = rec[key]
                a_exp.info[key] = rec[key]
            row["e_elec_lr_kjmol"] = round(lr.get("e_elec_lr_kjmol", 0.0), 4)
            a_exp.info["e_elec_lr_kjmol"] = row["e_elec_lr_kjmol"]
        else:  # the measured cost of each periodic xTB single point (replayed by benchmarks)
            row["cpu_s"] = rec["cpu_s"]
            if "supercell" in rec:
                row["supercell"] = "x".join(map(str, rec["supercell"]))
        ff_frames.append(a_ff)
        exp_frames.append(a_exp)
        rows.append(row)
    for sid, why in failed.items():
        print(f"failed {sid}: {why}")
    n_pilot = len(rows)
    if not rows:
        raise SystemExit("no structure survived; nothing written")
    for lv in ("ff", level):
        e_min = min(r[f"E_{lv}_kJmol_per_mol"] for r in rows)
        for r in rows:
            r[f"dE_{lv}_kJmol_per_mol"] = round(r[f"E_{lv}_kJmol_per_mol"] - e_min, 4)
    d_ff = np.array([r["dE_ff_kJmol_per_mol"] for r in rows])
    d_exp = np.array([r[f"dE_{level}_kJmol_per_mol"] for r in rows])
    corr = d_exp - d_ff
    pearson = float(np.corrcoef(d_ff, d_exp)[0, 1]) if len(rows) > 2 else float("nan")
    cpu = [float(results[r["id"]]["cpu_s"]) for r in rows]
    from scipy.stats import spearmanr

    spearman = float(spearmanr(d_ff, d_exp)[0]) if len(rows) > 2 else float("nan")
    stats = {"pearson_r_ff_vs_expensive": round(pearson, 3),
             "spearman_rho_ff_vs_expensive": round(spearman, 3),
             "correction_std_kjmol": round(float(corr.std()), 2),
             "dE_ff_range_kjmol": round(float(d_ff.max()), 2),
             f"dE_{level}_range_kjmol": round(float(d_exp.max()), 2),
             "expensive_cpu_s_per_structure_median": round(float(np.median(cpu)), 1),
             "expensive_cpu_s_total": round(float(np.sum(cpu)), 1),
             "expensive_wall_s_per_structure_median": round(float(np.median(
                 [float(results[r["id"]]["wall_s"]) for r in rows])), 1)}
    print(json.dumps({"n_structures": n_pilot, "n_failed": len(failed),
                      "n_excluded": len(excluded), **stats}))
    if args.limit:
        print(f"pilot of {args.limit} structures: nothing written to {out}")
        return

    out.mkdir(parents=True, exist_ok=True)
    write(str(out / f"{args.name}_ff.extxyz"), ff_frames, format="extxyz")
    write(str(out / f"{args.name}_{level}.extxyz"), exp_frames, format="extxyz")
    with (out / f"{args.name}_landscape.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "levels.json").write_text(json.dumps({"cheap": "ff", "expensive": level}) + "\n")
    (out / "run.json").write_text(json.dumps({
        "smiles": args.smiles, "ff_source": ff_source if args.ff_extxyz else "csp",
        **({} if args.ff_extxyz else {"n_trials": args.n_trials, "space_groups": args.space_groups,
                                      "window_kjmol": args.window, "seed": args.seed}), "n_structures": len(rows),
        "n_ff_minima": len(frames), "expensive_level": level, "expensive_settings": settings,
        "max_structures": args.max_structures,
        "sanity_filter": {"min_density_gcm3": args.min_density, "contact_A": args.contact_A,
                          "excluded": excluded},
        "expensive_failed": failed, "only_done": args.only_done, "csp_wall_s": round(t_csp, 1),
        "expensive_wall_s_this_run": round(t_exp, 1), "expensive_workers": args.workers,
        "csp_charges": "resp",
        "long_range_electrostatics": ("RESP point charges (HF/6-31G*), Ewald, pairs beyond the "
                                      "DFT cutoff" if long_range else None),
        "resp_charges_e": [round(float(x), 4) for x in charges] if charges is not None else None,
        **stats,
    }, indent=1) + "\n")
    kept_ids = {row["id"] for row in rows}
    if level == "dft" and jsonl.exists():  # per-dimer records: the fragment dimer GP learns from them
        records = [line for line in jsonl.read_text().splitlines()
                   if line.strip() and json.loads(line).get("id") in kept_ids]
        (out / "dft_results.jsonl").write_text("\n".join(records) + "\n")
    if not args.ff_extxyz and (work / "csp" / "run.json").exists():
        shutil.copyfile(work / "csp" / "run.json", out / "csp_run.json")
    print(f"{args.name}: {len(rows)} structures ({len(failed)} failed, {len(excluded)} excluded)"
          f" -> {out}")


if __name__ == "__main__":
    from sim_backends.base import SetupError

    try:
        main()
    except (SetupError, ValueError, FileNotFoundError) as exc:
        sys.exit(f"make_landscape: error: {exc}")
