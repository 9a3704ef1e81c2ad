"""X23 lattice energies with the W99 exp-6 + ESP point-charge rigid-molecule model.

For every X23 crystal in data/reference/x23 (PBE+TS geometries), one molecule is cut from the
crystal and made a RigidMolecule; every molecule of the cell is replaced by a rigid copy
placed by a Kabsch fit. Charges (``--methods``, first = the model, the rest = baselines
measured in the same run): ``resp-lpn``, the CSP default, RESP fit to the HF/6-31G* ESP
with off-atom lone-pair sites on the N acceptors (:mod:`sim_backends.csp.charges`); ``resp``,
atom-centred RESP (the default before it); ``resp-lp``, sites on the O and N acceptors;
``xtb``, GFN2-xTB Mulliken charges (tblite). The lattice
energy is evaluated at the experimental (PBE+TS) geometry and after minimisation of cell
(9 components) and rigid-body coordinates (fractional centres, rotation vectors) with scipy
L-BFGS-B and analytic gradients. With the default W99 parameters no parameter of any model
is fitted to these crystals; ``--params x23fit-resp-lp`` / ``x23fit-resp`` selects the W99
scale factors refitted to them (benchmarks/x23_lattice_fit.py; its leave-one-out figures,
not this script's in-sample ones, are the honest measure of such a set).

Reference: X23 lattice energies (Reilly & Tkatchenko 2013), back-corrected from sublimation
enthalpies. A rigid-molecule lattice energy omits the molecular relaxation energy (the
molecule's deformation in the crystal, typically +1 to +5 kJ/mol) and uses the crystal
conformation for the gas-phase molecule; expect errors of ~10 kJ/mol even for good
multipole models and more with point charges (W99 was fitted with point charges of its own).

Also measures energy+gradient throughput of LatticeEnergyModel for B = 1, 64, 256 structures
(a crystal where the model has sites, pyrazine, Z = 2, for ``resp-lpn``, oxalic acid alpha,
Z = 4, for ``resp-lp``, with the model's charges and with atom-centred RESP: the cost of the
sites; naphthalene, Z = 2, no sites); the baseline there is B = 1.

Polymorph pairs: for every pair of X23 crystals of one molecule run together (alpha and beta
oxalic acid, the only pair in the shared data), the force-field lattice-energy difference
against the X23 reference difference, with "predicting zero" as the baseline.

Lone-pair site distance: 0.35 A by default (CHARMM Drude, not fitted here); ``--lp-distance D``
runs the site model at another distance (a study knob, own results file), and ``--loo FILES``
makes the leave-one-out choice among the models of such result files (for each crystal the
model with the lowest MAE on the other 16, its error on the held-out one counted), written
to x23_lattice_loo.json.

Other crystals: ``--systems ethyl_carbamate`` runs the X23 member shipped in
data/reference/x23_extra (never part of the default 17); ``--data DIR`` runs the crystals of a
directory in the layout of data/reference/x23 (:func:`load_x23`: ``x23_pbe_ts_crystals.extxyz``
and/or ``<name>_crystal.extxyz`` frames with ``name=`` and ``n_mol=`` in the comment line, and
``x23_lattice_energies.csv`` with columns ``system,E_latt_X23_kJmol``; checked on reading, a bad
file is a one-line error). ``--out DIR`` puts the results file there.

Run:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/x23_lattice.py [--systems a,b] [--max-iter N] [--methods resp-lpn,resp,resp-lp,xtb]
      [--params SET]
      [--lp-distance D] [--skip-timing] [--data DIR] [--out DIR];  benchmarks/x23_lattice.py --loo RESULTS.json ...
Output: a table, one JSON line, and benchmarks/results/x23_lattice.json (a run with
non-default arguments writes x23_lattice_<args>.json instead, ``_data-<dir name>`` for --data).
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
#: the charge models of a default run: the first is the model (the CSP default), the rest baselines
DEFAULT_METHODS = "resp-lpn,resp,resp-lp,xtb"
sys.path.insert(0, str(ROOT))

from sim_backends.csp.forcefield import LatticeEnergyModel  # noqa: E402
from sim_backends.ff_relax import RigidCrystal, relax_rigid, rigid_crystal  # noqa: E402

X23_DIR = ROOT / "data" / "reference" / "x23"
#: X23 members shipped apart so that the 17-crystal figures do not change; used only when named
X23_EXTRA_DIR = ROOT / "data" / "reference" / "x23_extra"
CRYSTALS_FILE, ENERGIES_FILE = "x23_pbe_ts_crystals.extxyz", "x23_lattice_energies.csv"


class X23DataError(ValueError):
    """A data directory that cannot be used (a one-line message)."""


def load_x23(data_dir: Path = X23_DIR) -> tuple[dict, dict[str, float]]:
    """Crystals by name and reference lattice energies (kJ/mol per molecule) of a directory in the
    layout of data/reference/x23: the crystals in ``x23_pbe_ts_crystals.extxyz`` and/or one per
    ``<name>_crystal.extxyz`` (as data/reference/x23_extra), every frame periodic with
    ``info["name"]`` and ``info["n_mol"]`` (molecules per cell); ``x23_lattice_energies.csv`` with
    columns ``system`` and ``E_latt_X23_kJmol`` (``#`` lines are comments), a row per crystal.

    Raises:
        X23DataError: a missing directory, file, column or row, a file that is not extended XYZ
            (e.g. an unknown element), a frame without name or n_mol, a non-numeric energy, a crystal
            whose atoms are not n_mol whole molecules of one composition, or an element the force
            field does not have.
    """
    from ase.io import read

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise X23DataError(f"{data_dir}: no such directory")
    files = ([data_dir / CRYSTALS_FILE] if (data_dir / CRYSTALS_FILE).is_file() else []) + sorted(
        data_dir.glob("*_crystal.extxyz"))
    if not files:
        raise X23DataError(f"{data_dir}: no {CRYSTALS_FILE} and no <name>_crystal.extxyz")
    frames = {}
    for path in files:
        try:
            got = read(path, ":")
        except KeyError as exc:
            raise X23DataError(f"{path}: unknown element {exc}") from None
        except Exception as exc:  # noqa: BLE001 -- ASE raises many kinds for a malformed file
            raise X23DataError(f"{path}: not readable as extended XYZ ({type(exc).__name__}: {exc})"[:300]) from None
        for i, f in enumerate(got):
            name = f.info.get("name")
            if not name or not isinstance(f.info.get("n_mol"), (int, np.integer)) or f.info["n_mol"] < 1:
                raise X23DataError(f"{path} frame {i + 1}: needs name=<system> and n_mol=<molecules per cell> "
                                   "in its comment line")
            if name in frames:
                raise X23DataError(f"{path} frame {i + 1}: crystal {name!r} given twice")
            frames[str(name)] = f
    csv_path = data_dir / ENERGIES_FILE
    if not csv_path.is_file():
        raise X23DataError(f"{csv_path}: no such file (reference lattice energies: system,E_latt_X23_kJmol)")
    lines = [ln for ln in csv_path.read_text().splitlines() if not ln.startswith("#")]
    reader = csv.DictReader(lines)
    missing = [c for c in ("system", "E_latt_X23_kJmol") if c not in (reader.fieldnames or [])]
    if missing:
        raise X23DataError(f"{csv_path}: missing column(s) {', '.join(missing)}")
    ref = {}
    for i, r in enumerate(reader, start=1):
        try:
            ref[r["system"]] = float(r["E_latt_X23_kJmol"])
        except (TypeError, ValueError):
            raise X23DataError(f"{csv_path} row {i}, column E_latt_X23_kJmol: {r['E_latt_X23_kJmol']!r} "
                               "is not a number") from None
        if not np.isfinite(ref[r["system"]]):
            raise X23DataError(f"{csv_path} row {i}, column E_latt_X23_kJmol: not finite")
    no_ref = sorted(set(frames) - set(ref))
    if no_ref:
        raise X23DataError(f"{csv_path}: no reference lattice energy for {', '.join(no_ref)}")
    for name, f in frames.items():
        check_crystal(name, f)
    return frames, ref


def check_crystal(name: str, frame) -> None:
    """X23DataError unless ``frame`` is n_mol whole molecules of one composition, of elements
    the force field has (the checks :func:`sim_backends.ff_relax.rigid_crystal` makes before
    the charge fit, made on reading)."""
    from sim_backends.base import SUPPORTED_ELEMENTS
    from sim_backends.csp.rigid import split_molecules

    symbols = frame.get_chemical_symbols()
    bad = sorted(set(symbols) - SUPPORTED_ELEMENTS)
    if bad:
        raise X23DataError(f"crystal {name!r}: element(s) {', '.join(bad)} not supported by the force field "
                           f"(supported: {', '.join(sorted(SUPPORTED_ELEMENTS))})")
    if not all(frame.pbc) or abs(np.linalg.det(frame.cell.array)) < 1e-6:
        raise X23DataError(f"crystal {name!r}: needs a periodic cell (Lattice=... pbc=\"T T T\")")
    try:
        mols = split_molecules(symbols, frame.positions, frame.cell.array)
    except Exception as exc:  # noqa: BLE001
        raise X23DataError(f"crystal {name!r}: cannot split into molecules ({exc})"[:300]) from None
    comps = {tuple(sorted(symbols[i] for i in idx)) for idx, _ in mols}
    if len(mols) != int(frame.info["n_mol"]) or len(comps) != 1:
        raise X23DataError(f"crystal {name!r}: {len(mols)} molecule(s) of {len(comps)} composition(s) in the cell, "
                           f"expected n_mol = {frame.info['n_mol']} of one")


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
    name: str, frames, batch_sizes=(1, 64, 256), min_cpu_s: float = 2.0, cutoff_A: float = 12.0,
    charge_method: str = "resp",
) -> dict:
    """energy+gradient evaluations per CPU second at each batch size (process CPU time), and
    the energy at the PBE+TS geometry with this cutoff minus that with the 12 A default (kJ/mol)."""
    import torch

    mol, cell, rots, centres, _ = prepare(frames[name], charge_method)
    model = LatticeEnergyModel(mol, cutoff_A=cutoff_A)
    coords = centres[:, None, :] + np.einsum("na,zba->znb", mol.coords_A, rots)
    exact = [torch.tensor(cell)[None], torch.tensor(coords)[None]]
    out = {"de_vs_12A_kjmol": float(model.energy_kjmol(*exact)[0] - LatticeEnergyModel(mol).energy_kjmol(*exact)[0]),
           "n_sites": model.n_sites}
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


def polymorph_pairs(rows: list[dict], methods: tuple[str, ...] = ("resp", "xtb")) -> list[dict]:
    """Energy differences A - B (kJ/mol per molecule) of the :data:`POLYMORPH_PAIRS` both run,
    ``d_<method>_kjmol`` per charge method (``-`` in a method name becomes ``_``)."""
    by = {r["system"]: r for r in rows}
    out = []
    for a, b in POLYMORPH_PAIRS:
        if a in by and b in by:
            ra, rb = by[a], by[b]
            out.append({"pair": f"{a} - {b}", "d_ref_kjmol": ra["e_ref_kjmol"] - rb["e_ref_kjmol"],
                        **{f"d_{_key(m)}_kjmol": ra[m]["e_min_kjmol"] - rb[m]["e_min_kjmol"] for m in methods}})
    return out


def _key(method: str) -> str:
    return method.replace("-", "_")


def leave_one_out(paths: list[str]) -> dict:
    """Leave-one-out choice among the charge models of several result files (e.g. runs at
    different ``--lp-distance``): for each crystal, the model with the lowest MAE (minimised)
    on the other crystals is chosen and its error on the held-out crystal counted."""
    cands: dict[str, dict[str, float]] = {}
    ref: dict[str, float] = {}
    for path in paths:
        data = json.loads(Path(path).read_text().splitlines()[-1])
        for m in data["methods"]:
            label = f"{m}@{data.get('lp_distance_A', 0.35)}A" if m == "resp-lp" else m
            cands[label] = {r["system"]: r[f"e_min_{_key(m)}_kjmol"] - r["e_ref_kjmol"] for r in data["rows"]}
            ref.update({r["system"]: r["e_ref_kjmol"] for r in data["rows"]})
    systems = sorted(set.intersection(*(set(c) for c in cands.values())))
    held = []
    for s in systems:
        others = [x for x in systems if x != s]
        best = min(cands, key=lambda c: np.mean([abs(cands[c][x]) for x in others]))
        held.append({"system": s, "chosen": best, "err_kjmol": round(cands[best][s], 2)})
    errs = np.array([h["err_kjmol"] for h in held])
    return {"benchmark": "x23_lattice_loo", "candidates": {c: round(float(np.mean([abs(v[s]) for s in systems])), 2)
                                                           for c, v in cands.items()},
            "held_out": held, "loo_mae_kjmol": round(float(np.abs(errs).mean()), 2),
            "loo_worst_kjmol": float(errs[np.abs(errs).argmax()]), "n_systems": len(systems), "files": paths}


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
    parser.add_argument("--methods", default=DEFAULT_METHODS,
                        help="charge models, comma-separated; the first is the model, the rest baselines")
    parser.add_argument("--params", default=None,
                        help="repulsion-dispersion parameter set (sim_backends.csp.forcefield.PARAMETER_SETS; "
                             "default: the force field's default)")
    parser.add_argument("--lp-distance", type=float, default=None,
                        help="study knob: distance (A) of the lone-pair charge sites (default 0.35)")
    parser.add_argument("--data", default=None, metavar="DIR",
                        help="crystals and reference energies of your own, in the layout of data/reference/x23 "
                             "(see load_x23); default: data/reference/x23, plus data/reference/x23_extra for "
                             "crystals named in --systems")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="directory of the results file (default benchmarks/results)")
    parser.add_argument("--loo", nargs="+", default=None, metavar="RESULTS_JSON",
                        help="only the leave-one-out choice among the models of these result files")
    args = parser.parse_args()
    from sim_backends.base import SetupError
    from sim_backends.csp import charges as charges_mod
    from sim_backends.csp.charges import CHARGE_METHODS

    if args.loo:
        missing = [p for p in args.loo if not Path(p).is_file()]
        if missing:
            parser.error(f"--loo: no such file(s) {missing}")
        loo = leave_one_out(args.loo)
        print(f"leave-one-out over {len(loo['candidates'])} models (MAE on all: {loo['candidates']}): "
              f"LOO MAE {loo['loo_mae_kjmol']:.2f} kJ/mol, worst {loo['loo_worst_kjmol']:+.1f} kJ/mol; "
              + ", ".join(f"{h['system']} {h['chosen']} {h['err_kjmol']:+.1f}" for h in loo["held_out"]))
        line = json.dumps(loo)
        print(line)
        (ROOT / "benchmarks" / "results" / "x23_lattice_loo.json").write_text(line + "\n")
        return
    if args.lp_distance is not None:
        if not 0.05 <= args.lp_distance <= 1.0:
            parser.error("--lp-distance must be within [0.05, 1.0] A")
        charges_mod.LONE_PAIR_DISTANCE_A = args.lp_distance

    from sim_backends.csp import forcefield as ff

    if args.params is not None and args.params not in ff.PARAMETER_SETS:
        parser.error(f"--params: unknown parameter set {args.params!r}; known: {', '.join(ff.PARAMETER_SETS)}")
    params = args.params or ff.DEFAULT_PARAMETER_SET
    methods = tuple(m for m in args.methods.split(",") if m)
    bad = [m for m in methods if m not in CHARGE_METHODS]
    if bad or len(methods) < 1 or len(set(methods)) != len(methods):
        parser.error(f"--methods: give distinct charge methods out of {', '.join(CHARGE_METHODS)}")
    def fail(message: str) -> None:
        print(f"x23_lattice.py: error: {message}", file=sys.stderr)
        raise SystemExit(2)

    try:
        frames, ref = load_x23(Path(args.data) if args.data else X23_DIR)
        names = [s for s in args.systems.split(",") if s] or list(frames)
        if not args.data and set(names) - set(frames):  # a shipped X23 member outside the 17, named
            extra_frames, extra_ref = load_x23(X23_EXTRA_DIR)
            for n in set(names) & set(extra_frames):
                frames[n], ref[n] = extra_frames[n], extra_ref[n]
    except X23DataError as exc:
        fail(str(exc))
    unknown = sorted(set(names) - set(frames))
    if unknown:
        fail(f"--systems: unknown X23 system(s) {unknown}; known: {', '.join(frames)}")
    console = Console(width=150)
    rows = []
    for name in track(names, description="X23 minimisations", console=console):
        row = {"system": name, "z": int(frames[name].info["n_mol"]), "e_ref_kjmol": ref[name]}
        for method in methods:
            t0 = time.perf_counter()
            try:
                mol, cell, rots, centres, rmsd = prepare(frames[name], method)
            except SetupError as exc:
                fail(f"crystal {name!r}: {exc}")
            model = LatticeEnergyModel(mol, params=params)
            out = minimise(model, mol, cell, rots, centres, args.max_iter)
            row[method] = {**out, "wall_s": time.perf_counter() - t0, "esp_rrms": mol.esp_rrms,
                           "n_charge_sites": len(mol.charges_e)}
            row["pose_rmsd_A"] = rmsd
        rows.append(row)

    main_m = methods[0]
    table = Table(title=f"X23 lattice energies, exp-6 (parameter set {params}) + Ewald charges, rigid molecules "
                        f"(kJ/mol per molecule); model {main_m}, baselines {', '.join(methods[1:]) or '-'}"
                        + (f"; user data: {args.data}" if args.data else ""))
    for col in ("system", "Z", "E_ref", f"E_exp {main_m}", f"E_min {main_m}", f"err {main_m}", f"dV% {main_m}",
                *(f"err {m}" for m in methods[1:]), *(f"dV% {m}" for m in methods[1:]), "iter", "RRMS"):
        table.add_column(col, justify="right")
    for r in rows:
        a = r[main_m]
        table.add_row(r["system"], str(r["z"]), f"{r['e_ref_kjmol']:.1f}", f"{a['e_exp_kjmol']:.1f}",
                      f"{a['e_min_kjmol']:.1f}", f"{a['e_min_kjmol'] - r['e_ref_kjmol']:+.1f}",
                      f"{a['dv_percent']:+.1f}",
                      *(f"{r[m]['e_min_kjmol'] - r['e_ref_kjmol']:+.1f}" for m in methods[1:]),
                      *(f"{r[m]['dv_percent']:+.1f}" for m in methods[1:]),
                      f"{a['n_iter']}{'' if a['converged'] else '*'}", f"{a['esp_rrms']:.3f}")
    console.print(table)

    def stats(method: str, key: str) -> tuple[float, float, str]:
        err = np.array([r[method][key] - r["e_ref_kjmol"] for r in rows])
        worst = int(np.abs(err).argmax())
        return float(np.abs(err).mean()), float(err[worst]), rows[worst]["system"]

    summary = {"benchmark": "x23_lattice", "n_systems": len(rows), "methods": list(methods), "params": params,
               "data": str(args.data) if args.data else "data/reference/x23 (+ x23_extra when named)",
               "lp_distance_A": charges_mod.LONE_PAIR_DISTANCE_A,
               "level": f"exp-6 ({params}) + Ewald charges, rigid molecules, kJ/mol per molecule; volumes in %"}
    for method in methods:
        for key, tag in (("e_exp_kjmol", "exp_geom"), ("e_min_kjmol", "minimised")):
            mae, worst, who = stats(method, key)
            summary[f"mae_{_key(method)}_{tag}_kjmol"] = round(mae, 2)
            summary[f"worst_{_key(method)}_{tag}_kjmol"] = round(worst, 2)
            summary[f"worst_{_key(method)}_{tag}_system"] = who
        dv = [abs(r[method]["dv_percent"]) for r in rows]
        summary[f"mean_abs_dv_percent_{_key(method)}"] = round(float(np.mean(dv)), 2)
        summary[f"max_abs_dv_percent_{_key(method)}"] = round(float(np.max(dv)), 2)
    summary["rows"] = [{"system": r["system"], "e_ref_kjmol": r["e_ref_kjmol"],
                        **{f"e_min_{_key(m)}_kjmol": round(r[m]["e_min_kjmol"], 2) for m in methods},
                        **{f"e_exp_{_key(m)}_kjmol": round(r[m]["e_exp_kjmol"], 2) for m in methods},
                        **{f"dv_percent_{_key(m)}": round(r[m]["dv_percent"], 2) for m in methods}} for r in rows]
    console.print("MAE vs X23 reference (minimised / at the PBE+TS geometry), kJ/mol per molecule: " + "; ".join(
        f"{m} {summary[f'mae_{_key(m)}_minimised_kjmol']:.1f} / {summary[f'mae_{_key(m)}_exp_geom_kjmol']:.1f}"
        f" (mean |dV| {summary[f'mean_abs_dv_percent_{_key(m)}']:.1f} %)" for m in methods)
        + ". Rigid molecules: the molecular relaxation energy (a few kJ/mol) is not included. * = not converged.")

    if not args.skip_timing:
        timing = Table(title="LatticeEnergyModel energy+gradient throughput (structures per CPU second); "
                             "baseline B=1")
        for col in ("system", "Z", "n_atoms", "cutoff A", "B=1", "B=64", "B=256", "x B=64", "x B=256",
                    "E-E(12 A) kJ/mol"):
            timing.add_column(col, justify="right")
        # a crystal where the model has lone-pair sites (oxalic acid: O sites; pyrazine: N sites), and the
        # same crystal with atom-centred RESP beside it: the cost of the sites
        with_sites = "pyrazine" if main_m == "resp-lpn" else "oxalic_acid_alpha"
        runs = [(with_sites, 12.0, main_m), ("naphthalene", 12.0, main_m), ("naphthalene", 9.0, main_m)]
        if main_m != "resp":
            runs.insert(1, (with_sites, 12.0, "resp"))
        shipped = frames if all(n in frames for n, _, _ in runs) else load_x23()[0]  # --data: the shipped crystals
        for name, cutoff, method in runs:
            rates = throughput(name, shipped, cutoff_A=cutoff, charge_method=method)
            z = int(shipped[name].info["n_mol"])
            timing.add_row(f"{name} ({method}, {rates['n_sites']} sites)", str(z), str(len(shipped[name]) // z),
                           f"{cutoff:.0f}",
                           *(f"{rates[b]:.0f}" for b in (1, 64, 256)),
                           f"{rates[64] / rates[1]:.1f}", f"{rates[256] / rates[1]:.1f}",
                           f"{rates['de_vs_12A_kjmol']:+.3f}")
            for b in (1, 64, 256):
                summary[f"evals_per_s_{name}_{_key(method)}_rc{cutoff:.0f}_B{b}"] = round(rates[b], 1)
        console.print(timing)

    pairs = polymorph_pairs(rows, methods)
    if pairs:
        ptable = Table(title="Polymorph pairs: lattice-energy difference A - B (kJ/mol per molecule), "
                             "W99 exp-6 + charges, rigid, minimised; baseline: predicting 0")
        for col in ("pair", "X23 ref", *(c for m in methods for c in (m, f"err {m}")), "err of 0"):
            ptable.add_column(col, justify="right")
        for p in pairs:
            ptable.add_row(p["pair"], f"{p['d_ref_kjmol']:+.2f}",
                           *(c for m in methods for c in (f"{p[f'd_{_key(m)}_kjmol']:+.2f}",
                                                          f"{p[f'd_{_key(m)}_kjmol'] - p['d_ref_kjmol']:+.2f}")),
                           f"{-p['d_ref_kjmol']:+.2f}")
        console.print(ptable)
        summary["polymorph_pairs"] = pairs
        for m in methods:
            summary[f"polymorph_mae_{_key(m)}_kjmol"] = round(float(np.mean(
                [abs(p[f"d_{_key(m)}_kjmol"] - p["d_ref_kjmol"]) for p in pairs])), 2)
        summary["polymorph_mae_zero_kjmol"] = round(float(np.mean([abs(p["d_ref_kjmol"]) for p in pairs])), 2)

    line = json.dumps(summary)
    print(line)
    tag = "".join(f"_{k}-{v}" for k, v, d in (("systems", args.systems.replace(",", "-"), ""),
                                               ("maxiter", args.max_iter, 400),
                                               ("lp-distance", args.lp_distance, None),
                                               ("params", args.params, None),
                                               ("methods", args.methods.replace(",", "-"), DEFAULT_METHODS.replace(",", "-")))
                  if v != d)
    tag += "_skip-timing" if args.skip_timing else ""
    tag += f"_data-{Path(args.data).resolve().name}" if args.data else ""
    out = (Path(args.out) if args.out else ROOT / "benchmarks" / "results") / f"x23_lattice{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(line + "\n")


if __name__ == "__main__":
    main()
