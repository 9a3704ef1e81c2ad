"""Benchmark ``scf_guess``: SCF warm starts against PySCF's default guess, in one run.

Part 1, fragment DFT of a CSP landscape at its shipped settings (``run.json`` of the
landscape: PBE/def2-SVP, counterpoise, contact cutoff 3.0 A, grid level 0, exact
integrals, conv_tol 1e-7 Eh): for the first ``--n-structures`` structures, every
SCF (monomers, dimers, counterpoise monomers) with

* ``default``: PySCF's default (minao) guess, DIIS -- the baseline;
* ``superposition``: per-structure warm starts only (monomer reference density rotated
  into place and converged, monomer superposition for dimers, padded monomer or
  exchanged partner for counterpoise monomers), DIIS with PySCF's extra check cycle;
* ``auto``: the shipped warm starts (``scf_guess="auto"``): as ``superposition``, plus
  the nearest converged dimer of the landscape (relative-geometry RMSD <= 0.2 A) carried
  into place block by block for dimers and counterpoise monomers, no monomer SCF for a
  monomer identical to the reference (counterpoise, rigid molecules), no extra check cycle;
* ``auto+newton``: as ``auto``, with second-order SCF (PySCF newton) for a dimer whose
  guess's SCF error is below ``NEWTON_MAX_GRAD`` (decided per SCF);
* ``learned``: as ``auto`` without the nearest-dimer store: dimers and counterpoise
  monomers start from the learned density model (:mod:`sim_backends.density_model`,
  kernel ridge on the correction over the monomer superposition, trained from empty on
  every dimer this configuration converges) when it has a training dimer within its
  reach, else from the superposition guesses.

Each warm configuration has its own monomer and dimer reference stores (and model), empty at the
start, so its default-guess monomer SCF and first dimers are charged to it. The
per-guess table attributes the builds to each lever. Configurations run
interleaved per structure (same machine load). Part 2, hole reorganisation energies
(``dft-reorg``, B3LYP/6-31G//GFN2-xTB four single points, ``geometry="xtb"``) of the
``--n-molecules`` smallest molecules of ``--pool`` with ``scf_guess`` default and auto;
both with the shipped UKS stability check of every cation SCF (``stability_check``),
whose response builds and SCF restarts are counted in the builds and shown apart, so the
cost without the check is the difference.

Figures: Fock builds (two-electron potential builds counted in PySCF: ``get_veff`` plus
Newton's response builds), SCF CPU seconds and wall seconds per calculation, and the
largest energy difference to the default guess (monomer energies; dimer interaction
energies, each a difference of three SCF energies; reorganisation: the four total
energies), in Hartree. Wall time depends on the load of the shared machine; CPU seconds
(``time.process_time``) much less.

Parallelism: ``--workers`` (default 2) processes, one thread each, run independent tasks:
the crystal part as one task (its configurations stay interleaved per structure within
it, its stores depend on the structures before) and each reorganisation molecule as one
task (both guesses, one after the other), smallest first (a run stopped by the load of
the shared machine has the most molecules; it resumes from the progress file). Every figure above is measured
per calculation inside its worker. The JSON has ``total_wall_s``, ``total_cpu_s`` (this
process plus all workers, ``getrusage``), ``cpu_s_by_worker`` (CPU of the tasks each
worker ran) and the 1-minute load average sampled every 30 s; on an otherwise idle
machine with one core per worker the run takes about max(``cpu_s_by_worker``) wall
seconds (``idle_wall_estimate_s``).

Run:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scf_guess.py
      [--landscape data/landscapes/formic_acid_dft] [--n-structures 10]
      [--pool examples/pool.smi] [--n-molecules 20] [--workers 2]
      [--fresh]
Writes benchmarks/results/scf_guess.json (other arguments: scf_guess_<tag>.json). Finished
parts (each molecule; the crystal part as a whole) go to scf_guess[_<tag>]_progress.jsonl
and a rerun resumes from it (``--fresh``: start over).
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

HARTREE_TO_KJMOL = 2625.4996394799
CONFIGS = ("default", "superposition", "auto", "auto+newton", "learned")
DEFAULTS = {"landscape": "data/landscapes/formic_acid_dft", "n_structures": 10,
            "pool": "examples/pool.smi", "n_molecules": 20, "workers": 2}


def crystal_part(landscape: Path, n_structures: int, log) -> dict:
    from ase.io import read
    from pyscf import lib

    from sim_backends.density_model import DensityCorrectionModel
    from sim_backends.dft_crystal import ScfSettings, fragment_lattice_energy
    from sim_backends.scf_guess import DimerReferences, MonomerReferences
    from sim_backends.structures import Crystal

    lib.num_threads(1)
    run = json.loads((landscape / "run.json").read_text())
    st = run["expensive_settings"]
    name = landscape.name
    frames = read(str(landscape / f"{name}_ff.extxyz"), index=f":{n_structures}")
    refs = {c: MonomerReferences() for c in CONFIGS}
    dimer_refs = {c: DimerReferences() for c in CONFIGS}
    model = DensityCorrectionModel()
    levers = {"default": {"scf_guess": "default"},
              "superposition": {"reuse_dimers": False, "reuse_monomers": False, "conv_check": True},
              "auto": {}, "auto+newton": {"newton": "auto"},
              "learned": {"scf_guess": "learned", "reuse_dimers": False}}
    rows = []
    for fr in frames:
        crystal = Crystal.from_atoms(fr)
        row: dict = {"id": fr.info["id"], "z": crystal.z}
        for config in CONFIGS:
            settings = ScfSettings(functional=st["functional"], basis=st["basis"], conv_tol=st["conv_tol"],
                                   grid_level=st["grid_level"], density_fit=st["density_fit"], **levers[config])
            t0 = time.perf_counter()
            values, extra = fragment_lattice_energy(crystal, settings, st["cutoff_A"], st["cutoff_mode"],
                                                    st["counterpoise"], references=refs[config],
                                                    dimer_references=dimer_refs[config], density_model=model)
            scf = [x for r in extra["dimers"] for x in r["scf"]] + [m["scf"] for m in extra["monomers"]]
            row[config] = {
                "fock_builds": extra["scf_fock_builds_total"], "scf_cpu_s": extra["scf_cpu_s_total"],
                "scf_wall_s": round(sum(x["wall_s"] for x in scf), 3),
                "wall_s": round(time.perf_counter() - t0, 3), "n_scf": len(scf),
                "fallbacks": extra["scf_fallbacks"],
                "by_guess": _by_guess(scf),
                "e_2body_kjmol": values["e_dft_2body_kjmol"],
                "e_int_kjmol": [r["e_int_kjmol"] for r in extra["dimers"]],
                # reused monomers carry the reference's energy (another orientation on the grid)
                "monomer_eh": [m["energy_hartree"] if m["scf"]["guess"] != "reused_reference" else None
                               for m in extra["monomers"]],
            }
        base = row["default"]
        for config in CONFIGS[1:]:
            r = row[config]
            r["max_abs_diff_eh"] = max(
                [abs(a - b) for a, b in zip(r["monomer_eh"], base["monomer_eh"]) if a is not None]
                + [abs(r["e_2body_kjmol"] - base["e_2body_kjmol"]) / HARTREE_TO_KJMOL]
                + [abs(a - b) / HARTREE_TO_KJMOL for a, b in zip(r["e_int_kjmol"], base["e_int_kjmol"])])
        log(f"{row['id']}: Fock builds " + " / ".join(f"{c} {row[c]['fock_builds']}" for c in CONFIGS)
            + "; SCF CPU s " + " / ".join(f"{row[c]['scf_cpu_s']:.1f}" for c in CONFIGS))
        rows.append(row)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        size = model.save(Path(tmp) / "density_model.npz").stat().st_size
    model_info = {**model.summary(), "npz_bytes": size}
    return {"landscape": str(landscape.relative_to(ROOT)) if landscape.is_relative_to(ROOT) else str(landscape),
            "settings": st, "structures": rows, "density_model": model_info}


def _by_guess(scf: list[dict]) -> dict:
    out: dict = {}
    for x in scf:
        g = out.setdefault(f"{x['guess']}/{x['solver']}", {"n": 0, "fock_builds": 0, "cpu_s": 0.0})
        g["n"] += 1
        g["fock_builds"] += x["fock_builds"]
        g["cpu_s"] = round(g["cpu_s"] + x["cpu_s"], 3)
    return out


def reorg_molecule(smi: str, name: str, log) -> dict:
    """Both guesses' dft-reorg evaluations of one molecule (one task)."""
    from sim_backends.base import EvalInput
    from sim_backends.reorg import DftReorgBackend

    row: dict = {"smiles": smi, "name": name}
    for config in ("default", "auto"):
        t0 = time.perf_counter()
        res = DftReorgBackend().evaluate(EvalInput(smi, params={"geometry": "xtb", "scf_guess": config}))
        ex = res.extra
        row[config] = {"status": res.status, "reason": res.reason,
                       "fock_builds": ex.get("scf_fock_builds_total"),
                       "scf_cpu_s": round(sum(x["cpu_s"] for x in ex.get("scf", [])), 3),
                       "scf_wall_s": round(sum(x["wall_s"] for x in ex.get("scf", [])), 3),
                       "wall_s": round(time.perf_counter() - t0, 3),
                       "cpu_s": ex.get("cpu_s"),
                       "energies_ev": ex.get("energies_ev"), "lambda_kjmol": res.values.get("reorg_energy_kjmol"),
                       "lambda_components_kjmol": [res.values.get("lambda_cation_kjmol"),
                                                   res.values.get("lambda_neutral_kjmol")],
                       "stability": ex.get("scf_stability"),
                       "hole_placements": ex.get("scf_hole_placements"),
                       "per_scf": [(x["what"], x["guess"], x["fock_builds"], x.get("stability"))
                                   for x in ex.get("scf", [])]}
    e0, e1 = row["default"]["energies_ev"], row["auto"]["energies_ev"]
    row["max_abs_diff_eh"] = (max(abs(e1[k] - e0[k]) for k in e0) / 27.211386246) if e0 and e1 else None
    log(f"{name}: Fock builds default {row['default']['fock_builds']} / auto {row['auto']['fock_builds']}; "
        f"SCF CPU s {row['default']['scf_cpu_s']:.1f} / {row['auto']['scf_cpu_s']:.1f}; "
        f"lambda+ {row['default']['lambda_kjmol']} / {row['auto']['lambda_kjmol']} kJ/mol")
    return row


REORG_LEVEL = "B3LYP/6-31G (density fitting, grid level 1) // GFN2-xTB geometries"


def _task(kind: str, args: tuple, t_start_epoch: float) -> tuple[str, object, int, float]:
    """Run one task in a worker: ("crystal", (landscape, n)) or ("reorg", (smiles, name)).
    Returns (kind, result, worker pid, CPU s of the task)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    c0 = time.process_time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t_start_epoch:7.0f} s] {msg}", flush=True)

    out = crystal_part(*args, log) if kind == "crystal" else reorg_molecule(*args, log)
    return kind, out, os.getpid(), time.process_time() - c0


class Progress:
    """Finished parts of a run (each reorganisation molecule; the crystal part as a whole,
    whose warm starts depend on the structures before), one JSON line each, so a killed run
    resumes without repeating them. Figures of resumed parts are those of the run that
    computed them."""

    def __init__(self, path: Path, fresh: bool) -> None:
        self.path, self.done, self.resumed = path, {}, 0
        if fresh:
            path.unlink(missing_ok=True)
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                    self.done[rec["key"]] = rec["value"]
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut by a kill

    def get(self, key: str):
        if key in self.done:
            self.resumed += 1
        return self.done.get(key)

    def put(self, key: str, value) -> None:
        self.done[key] = value
        with self.path.open("a") as fh:
            fh.write(json.dumps({"key": key, "value": value}) + "\n")


def _children_cpu_s() -> float:
    """User + system CPU seconds of the finished child processes (the workers)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _read_pool(path: Path, n: int) -> list[tuple[str, str]]:
    """The ``n`` smallest molecules of a pool file (fewest heavy atoms, file order within)."""
    from rdkit import Chem

    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            parts = line.split()
            mol = Chem.MolFromSmiles(parts[0])
            if mol is not None:
                out.append((mol.GetNumHeavyAtoms(), len(out), parts[0], parts[1] if len(parts) > 1 else parts[0]))
    return [(smi, name) for *_, smi, name in sorted(out)[:n]]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--landscape", default=DEFAULTS["landscape"])
    ap.add_argument("--n-structures", type=int, default=DEFAULTS["n_structures"])
    ap.add_argument("--pool", default=DEFAULTS["pool"])
    ap.add_argument("--n-molecules", type=int, default=DEFAULTS["n_molecules"])
    ap.add_argument("--workers", type=int, default=DEFAULTS["workers"],
                    help="worker processes for independent tasks (default 2)")
    ap.add_argument("--fresh", action="store_true", help="ignore the progress file of an earlier run")
    args = ap.parse_args(argv)
    landscape = (ROOT / args.landscape) if not Path(args.landscape).is_absolute() else Path(args.landscape)
    if not (landscape / "run.json").is_file():
        sys.exit(f"error: {args.landscape} is not a landscape directory (no run.json)")
    if args.n_structures < 1 or args.n_molecules < 0 or args.workers < 1:
        sys.exit("error: --n-structures and --workers must be >= 1 and --n-molecules >= 0")
    pool = (ROOT / args.pool) if not Path(args.pool).is_absolute() else Path(args.pool)
    if args.n_molecules and not pool.is_file():
        sys.exit(f"error: pool file {args.pool} not found")
    t_start, cpu_start, load_start = time.perf_counter(), time.process_time(), os.getloadavg()
    t_start_epoch = time.time()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:7.0f} s] {msg}", flush=True)

    default_args = (args.landscape == DEFAULTS["landscape"] and args.n_structures == DEFAULTS["n_structures"]
                    and args.pool == DEFAULTS["pool"] and args.n_molecules == DEFAULTS["n_molecules"]
                    and args.workers == DEFAULTS["workers"])
    tag = "" if default_args else f"_{landscape.name}_n{args.n_structures}_m{args.n_molecules}_w{args.workers}"
    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress(out_dir / f"scf_guess{tag}_progress.jsonl", args.fresh)
    molecules = _read_pool(pool, args.n_molecules) if args.n_molecules else []
    cryst = progress.get("crystal")
    done_rows = {smi: progress.get(f"reorg:{smi}") for smi, _ in molecules}
    tasks = ([("crystal", (landscape, args.n_structures))] if cryst is None else []) + [
        ("reorg", (smi, name)) for smi, name in molecules if done_rows[smi] is None]  # smallest first
    cpu_by_worker: dict[int, float] = {}
    loads = [round(load_start[0], 2)]
    if tasks:
        import concurrent.futures as cf
        import multiprocessing as mp

        log(f"{len(tasks)} tasks on {args.workers} worker process(es)")
        with cf.ProcessPoolExecutor(max_workers=args.workers, mp_context=mp.get_context("spawn")) as pool_ex:
            pending = {pool_ex.submit(_task, kind, targs, t_start_epoch) for kind, targs in tasks}
            while pending:
                finished, pending = cf.wait(pending, timeout=30, return_when=cf.FIRST_COMPLETED)
                loads.append(round(os.getloadavg()[0], 2))
                for fut in finished:
                    kind, out, pid, cpu = fut.result()
                    cpu_by_worker[pid] = cpu_by_worker.get(pid, 0.0) + cpu
                    if kind == "crystal":
                        cryst = out
                        progress.put("crystal", cryst)
                    else:
                        done_rows[out["smiles"]] = out
                        progress.put(f"reorg:{out['smiles']}", out)
    reorg = {"level": REORG_LEVEL, "molecules": [done_rows[smi] for smi, _ in molecules]}

    rows = cryst["structures"]
    tot = {c: {k: sum(r[c][k] for r in rows) for k in ("fock_builds", "scf_cpu_s", "scf_wall_s", "wall_s", "n_scf")}
           for c in CONFIGS}
    print()
    print(f"Fragment PBE/def2-SVP (CP, 3.0 A, grid 0, conv_tol 1e-7 Eh), {cryst['landscape']}, "
          f"{len(rows)} structures, {tot['default']['n_scf']} SCFs per configuration")
    print(f"{'configuration':<14}{'Fock builds':>12}{'per SCF':>9}{'SCF CPU s':>11}{'SCF wall s':>11}"
          f"{'wall s':>9}{'build red.':>11}{'CPU x':>7}{'wall x':>8}{'max|dE| Eh':>12}")
    summary = {}
    for c in CONFIGS:
        t = tot[c]
        red = 1.0 - t["fock_builds"] / tot["default"]["fock_builds"]
        cpu_x = tot["default"]["scf_cpu_s"] / t["scf_cpu_s"]
        wall_x = tot["default"]["wall_s"] / t["wall_s"]
        de = max((r[c].get("max_abs_diff_eh", 0.0) for r in rows), default=0.0)
        summary[c] = {"fock_builds": t["fock_builds"], "scf_cpu_s": round(t["scf_cpu_s"], 2),
                      "wall_s": round(t["wall_s"], 2), "fock_build_reduction": round(red, 4),
                      "cpu_speedup": round(cpu_x, 3), "wall_speedup": round(wall_x, 3), "max_abs_energy_diff_eh": de,
                      "fallbacks": sum(len(r[c]["fallbacks"]) for r in rows)}
        print(f"{c:<14}{t['fock_builds']:>12}{t['fock_builds'] / t['n_scf']:>9.2f}{t['scf_cpu_s']:>11.1f}"
              f"{t['scf_wall_s']:>11.1f}{t['wall_s']:>9.1f}{red:>11.1%}{cpu_x:>7.2f}{wall_x:>8.2f}{de:>12.1e}")
    dm_info = cryst["density_model"]
    print(f"learned density model at the end: {dm_info['n_train']} training dimers, {dm_info['n_pair_types']} pair "
          f"types, {dm_info['npz_bytes'] / 1e6:.2f} MB saved (.npz), length scales {dm_info['length_scales_A']} A")
    print("Fock builds per SCF by guess/solver (all structures):")
    for c in CONFIGS:
        agg: dict = {}
        for r in rows:
            for k, v in r[c]["by_guess"].items():
                a = agg.setdefault(k, [0, 0])
                a[0] += v["n"]
                a[1] += v["fock_builds"]
        print(f"  {c:<13}" + ", ".join(f"{k} {b / n:.1f} (n={n})" for k, (n, b) in sorted(agg.items())))
    mols = [m for m in reorg["molecules"] if m["default"]["fock_builds"] and m["auto"]["fock_builds"]]
    reorg_summary = None
    if reorg["molecules"]:
        print(f"\nHole reorganisation energy, {reorg.get('level')}, {len(reorg['molecules'])} molecules")
        print("(default: PySCF's minao guess for the four SCFs; auto: each state from the closest converged state)")
        print("builds: all Fock and response builds of the evaluation's SCFs, (stab.: of them the UKS stability")
        print("checks and the SCF restarts they caused); follow: restarts; lambda+ in kJ/mol (- = failed)")
        print(f"{'molecule':<22}{'builds def':>11}{'(stab.)':>8}{'builds auto':>12}{'(stab.)':>8}{'follow':>7}"
              f"{'CPU s def':>10}{'CPU s auto':>11}{'wall s def':>11}{'wall s auto':>12}{'lambda def':>11}"
              f"{'lambda auto':>12}{'max|dE| Eh':>12}")

        def _stab(r: dict, key: str) -> int:
            return (r.get("stability") or {}).get(key, 0)

        def _lam(r: dict) -> str:
            return f"{r['lambda_kjmol']:.2f}" if r["lambda_kjmol"] is not None else "-"

        for m in reorg["molecules"]:
            d, a = m["default"], m["auto"]
            de = m["max_abs_diff_eh"]
            fol = f"{_stab(d, 'followups')}/{_stab(a, 'followups')}"
            print(f"{m['name'][:21]:<22}{d['fock_builds'] or 0:>11}{_stab(d, 'fock_builds'):>8}{a['fock_builds'] or 0:>12}"
                  f"{_stab(a, 'fock_builds'):>8}{fol:>7}"
                  f"{d['scf_cpu_s']:>10.1f}{a['scf_cpu_s']:>11.1f}{d['wall_s']:>11.1f}{a['wall_s']:>12.1f}"
                  f"{_lam(d):>11}{_lam(a):>12}{(f'{de:.1e}' if de is not None else 'n/a'):>12}")
        if mols:
            fb = [sum(m[c]["fock_builds"] for m in mols) for c in ("default", "auto")]
            cpu = [sum(m[c]["scf_cpu_s"] for m in mols) for c in ("default", "auto")]
            wall = [sum(m[c]["wall_s"] for m in mols) for c in ("default", "auto")]
            reorg_summary = {"n_molecules": len(mols), "fock_builds": fb, "scf_cpu_s": [round(x, 2) for x in cpu],
                             "wall_s": [round(x, 2) for x in wall],
                             "fock_build_reduction": round(1 - fb[1] / fb[0], 4),
                             "cpu_speedup": round(cpu[0] / cpu[1], 3), "wall_speedup": round(wall[0] / wall[1], 3),
                             "max_abs_energy_diff_eh": max(m["max_abs_diff_eh"] for m in mols)}
            stab_fb = [sum(_stab(m[c], "fock_builds") for m in mols) for c in ("default", "auto")]
            reorg_summary["stability"] = {
                "fock_builds": stab_fb, "fraction_of_builds": [round(x / y, 4) for x, y in zip(stab_fb, fb)],
                "cpu_s": [round(sum((m[c].get("stability") or {}).get("cpu_s", 0.0) for m in mols), 2)
                          for c in ("default", "auto")],
                "checks": [sum(_stab(m[c], "checks") for m in mols) for c in ("default", "auto")],
                "followups": [sum(_stab(m[c], "followups") for m in mols) for c in ("default", "auto")],
                "followed": {c: [f"{m['name']}: {w}" for m in mols for w in (m[c].get("stability") or {}).get("followed", [])]
                             for c in ("default", "auto")}}
            reorg_summary["failed"] = {c: [f"{m['name']}: {m[c]['reason']}" for m in reorg["molecules"]
                                           if m[c]["status"] != "ok"] for c in ("default", "auto")}
            fu = reorg_summary["stability"]["followups"]
            print(f"{'total':<22}{fb[0]:>11}{stab_fb[0]:>8}{fb[1]:>12}{stab_fb[1]:>8}{f'{fu[0]}/{fu[1]}':>7}"
                  f"{cpu[0]:>10.1f}{cpu[1]:>11.1f}{wall[0]:>11.1f}{wall[1]:>12.1f}{'':>23}"
                  f"{reorg_summary['max_abs_energy_diff_eh']:>12.1e}")
            print(f"stability checks: {reorg_summary['stability']['checks']} (default/auto), "
                  f"{reorg_summary['stability']['fraction_of_builds'][0]:.1%} / "
                  f"{reorg_summary['stability']['fraction_of_builds'][1]:.1%} of the builds, "
                  f"{reorg_summary['stability']['cpu_s']} CPU s; followed: {reorg_summary['stability']['followed']}")
            # cation states at a degenerate-HOMO geometry: the hole placements tried, their spread
            holes = {c: [(m["name"], h["what"], len(h["holes"]),
                          max(h["energies_eh"].values()) - min(h["energies_eh"].values()))
                         for m in mols for h in (m[c].get("hole_placements") or [])] for c in ("default", "auto")}
            reorg_summary["hole_placements"] = {
                c: [{"molecule": n, "state": w, "placements": k, "spread_eh": d} for n, w, k, d in v]
                for c, v in holes.items()}
            print("degenerate-HOMO cation states (hole placements tried, spread of their energies in Eh):")
            for c, v in holes.items():
                print(f"  {c:<8}" + ("; ".join(f"{n} {w}: {k}, {d:.1e}" for n, w, k, d in v) or "none"))

    best = max(CONFIGS[1:], key=lambda c: summary[c]["fock_build_reduction"])
    result = {
        "benchmark": "scf_guess", "landscape": cryst["landscape"], "n_structures": len(rows),
        "settings": cryst["settings"], "best_configuration": best,
        "fock_build_reduction": summary[best]["fock_build_reduction"],
        "wall_speedup": summary[best]["wall_speedup"], "cpu_speedup": summary[best]["cpu_speedup"],
        "max_abs_energy_diff_eh": max(summary[c]["max_abs_energy_diff_eh"] for c in CONFIGS[1:]),
        "targets": {"fock_build_reduction>=0.5": summary[best]["fock_build_reduction"] >= 0.5,
                    "wall_speedup>=1.5": summary[best]["wall_speedup"] >= 1.5,
                    "max_abs_energy_diff_eh<=1e-6": (
                        max(summary[c]["max_abs_energy_diff_eh"] for c in CONFIGS[1:]) <= 1e-6
                        and (reorg_summary is None or reorg_summary["max_abs_energy_diff_eh"] <= 1e-6))},
        "configurations": summary, "reorg": reorg_summary,
        "density_model": cryst["density_model"],
        "workers": args.workers,
        "total_wall_s": round(time.perf_counter() - t_start, 1),
        "total_cpu_s": round(time.process_time() - cpu_start + _children_cpu_s(), 1),
        "cpu_s_by_worker": sorted((round(x, 1) for x in cpu_by_worker.values()), reverse=True),
        "idle_wall_estimate_s": round(max(cpu_by_worker.values(), default=0.0), 1),
        "load_average_1min": [loads[0], round(os.getloadavg()[0], 2)],
        "load_average_1min_during": {"min": min(loads), "mean": round(sum(loads) / len(loads), 2),
                                     "max": max(loads), "samples": len(loads)},
        "resumed_parts": progress.resumed,
    }
    (out_dir / f"scf_guess{tag}_detail.json").write_text(json.dumps({"crystal": cryst, "reorg": reorg}, indent=1))
    line = json.dumps(result)
    (out_dir / f"scf_guess{tag}.json").write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
