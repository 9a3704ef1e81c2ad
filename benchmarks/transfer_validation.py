"""Transfer integrals and hopping mobilities on experimental acene crystals; xTB vs DFT.

What it measures:

1. For each crystal (X23 PBE+TS structures shipped in data/reference/x23/cif: naphthalene,
   anthracene, benzene; the X-ray structure of pentacene, Campbell, Robertson & Trotter,
   Acta Cryst. 14, 705 (1961) / 15, 289 (1962), CSD PENCEN, shipped in
   data/reference/pentacene), the hole and electron effective transfer integrals |J_eff| of
   every symmetry-unique dimer with a closest contact below 4 A, by dimer projection at
   GFN2-xTB (tblite) and B3LYP/6-31G (PySCF) (:mod:`sim_backends.transfer`). For pentacene
   only the in-layer (herringbone) dimers are computed (centres of mass within 10 A): the
   inter-layer dimers (14.6-16 A, end-to-end H...H contacts) have |J| below 0.3 meV at
   GFN2-xTB, and each 72-atom dimer costs several hundred CPU s at B3LYP/6-31G.
2. The hole hopping mobility at 300 K (Marcus rates, exact periodic-network diffusion,
   :mod:`sim_backends.mobility`) with published lambda+ (below); beside it the neighbour
   Einstein sum and a kinetic Monte Carlo run (the baselines of the diffusion solver, same
   network, same run).
3. The xTB-vs-DFT correlation of |J_eff| over all unique dimers of one CSP landscape
   (``--landscape``: data/landscapes/formamide_dft, the ``--n-structures`` lowest
   structures at its DFT level; or ``esf:<molecule>``, the predicted structures of that
   molecule's refined landscape in data/esf, the ESF loop's own crystals), and over the
   acene dimers.

Reference values quoted in the table (not computed here):

* lambda+ (B3LYP/6-31G**, adiabatic four-point): naphthalene 187 meV, anthracene 138 meV
  (Coropceanu et al., Chem. Rev. 107, 926 (2007)), pentacene 95 meV (Bredas et al., Chem.
  Rev. 104, 4971 (2004)); benzene has no entry (its hole is a
  degenerate e1g pair, Jahn-Teller active: not a hopping semiconductor; only its J are
  compared between levels).
* Experimental room-temperature hole mobilities of ultrapure naphthalene and anthracene
  crystals (time of flight) are of order 1 cm^2/(V s) (Karl, Synth. Met. 133-134, 649 (2003)).
* Pentacene herringbone couplings at B3LYP/6-31G(d,p): T1/T2/P dimers 96.7/64.0/41.7 meV at
  centre-of-mass distances 4.73/5.20/6.28 A, hole mobility 2.20 cm2/(V s) at 300 K
  (PMC3366639, Table 2, column "Pentacene"). That is another polymorph (the 14.1 A
  single-crystal form, a = 6.27 A), not Campbell's 14.5 A bulk form computed here (P dimers
  along b = 6.06 A, T dimers at 4.80/5.15 A): a comparison of magnitudes and ordering, not
  of values. Experimental pentacene single-crystal hole mobilities are for the 14.1 A form.

Every SCF result is saved as it arrives (``--progress`` JSONL, keyed by structure and
level), so an interrupted run resumes where it stopped.

Usage:
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/transfer_validation.py
    ... --levels xtb --n-structures 4      # quick look (writes its own result file)
    ... --crystals anthracene --n-structures 0 --progress benchmarks/results/transfer_validation_progress.jsonl
    ... --landscape esf:thiophene --n-structures 6 --crystals ''   # an ESF landscape, every structure
    ... --crystals pentacene --n-structures 0 --progress benchmarks/results/transfer_validation_progress.jsonl
    ... --cached-only        # the default table from the progress file, no new DFT (missing ones listed)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

X23_CIF = "data/reference/x23/cif/{}.cif"
LAMBDA_COROPCEANU = "B3LYP/6-31G**, Coropceanu 2007"
#: name: SMILES, lambda+ (eV, None: no hopping mobility), its source, the structure file and
#: its description, largest centre-of-mass distance of the dimers (None: every dimer within
#: the contact cutoff) and the experimental mobility line printed beside the table
CRYSTALS = {
    "naphthalene": {"smiles": "c1ccc2ccccc2c1", "lambda_eV": 0.187, "lambda_source": LAMBDA_COROPCEANU,
                    "file": X23_CIF.format("naphthalene"), "structure": "X23 PBE+TS cell", "max_com_A": None,
                    "experiment": "TOF, ultrapure crystals, room temperature: ~1 cm2/(V s) (Karl 2003)"},
    "anthracene": {"smiles": "c1ccc2cc3ccccc3cc2c1", "lambda_eV": 0.138, "lambda_source": LAMBDA_COROPCEANU,
                   "file": X23_CIF.format("anthracene"), "structure": "X23 PBE+TS cell", "max_com_A": None,
                   "experiment": "TOF, ultrapure crystals, room temperature: ~1 cm2/(V s) (Karl 2003)"},
    "benzene": {"smiles": "c1ccccc1", "lambda_eV": None, "lambda_source": "",
                "file": X23_CIF.format("benzene"), "structure": "X23 PBE+TS cell", "max_com_A": None,
                "experiment": ""},
    "pentacene": {"smiles": "c1ccc2cc3cc4cc5ccccc5cc4cc3cc2c1", "lambda_eV": 0.095,
                  "lambda_source": "B3LYP, Bredas et al. 2004",
                  "file": "data/reference/pentacene/POSCAR_PENCEN_emc",
                  "structure": "X-ray, Campbell et al. 1961/62, CSD PENCEN", "max_com_A": 10.0,
                  "experiment": "no mobility measured on this (14.5 A) polymorph; B3LYP/6-31G(d,p) on "
                                "the 14.1 A form: 2.20 cm2/(V s) (PMC3366639)"},
}


def crystal_key(name: str, level: str, cutoff: float) -> str:
    """Progress-file key of a shipped crystal at one level (X23 keys as before)."""
    c = CRYSTALS[name]
    base = f"x23/{name}" if c["file"] == X23_CIF.format(name) else f"ref/{name}"
    return f"{base}/{level}/{cutoff:g}" + (f"/com{c['max_com_A']:g}" if c["max_com_A"] else "")


def load_reference_crystal(name: str):
    """The :class:`~sim_backends.structures.Crystal` of a shipped crystal (CIF or VASP POSCAR)."""
    from sim_backends.structures import crystal_from_atoms, load_crystal

    c = CRYSTALS[name]
    path = ROOT / c["file"]
    if path.suffix == ".cif":
        return load_crystal(path.read_text(), c["smiles"])
    from ase.io import read

    return crystal_from_atoms(read(path, format="vasp"), c["smiles"])


class DimerProgress(dict):
    """A ``dimer_cache`` for :func:`sim_backends.transfer.crystal_transfer` that appends each
    new dimer to the progress file (key ``<crystal key>/dimer/<dimer key>``), so a crystal
    whose DFT dimers take hours resumes at the dimer it stopped at."""

    def __init__(self, prefix: str, done: dict[str, dict], progress: Path):
        super().__init__({k[len(prefix):]: r["dimer"] for k, r in done.items() if k.startswith(prefix)})
        self.prefix, self.progress = prefix, progress

    def __setitem__(self, key: str, value: dict) -> None:
        super().__setitem__(key, value)
        with self.progress.open("a") as fh:
            fh.write(json.dumps({"key": self.prefix + key, "dimer": value}) + "\n")
LEVELS = {"xtb": ("gfn2-xtb", {}), "dft": ("dft", {"functional": "b3lyp", "basis": "6-31g", "conv_tol": 1e-7})}
LEVEL_NAMES = {"xtb": "GFN2-xTB", "dft": "B3LYP/6-31G"}
#: keys skipped by --cached-only (reported in the result as incomplete)
MISSING: list[str] = []
DEFAULTS = {"levels": "xtb,dft", "crystals": "naphthalene,anthracene,benzene,pentacene", "n_structures": 5,
            "cutoff": 4.0, "temperature": 300.0, "landscape": "formamide_dft"}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", default=DEFAULTS["levels"], help="comma list of xtb, dft")
    ap.add_argument("--crystals", default=DEFAULTS["crystals"])
    ap.add_argument("--n-structures", type=int, default=DEFAULTS["n_structures"],
                    help="lowest-energy formamide_dft landscape structures for the correlation (0: none)")
    ap.add_argument("--cutoff", type=float, default=DEFAULTS["cutoff"], help="closest-contact cutoff, A")
    ap.add_argument("--temperature", type=float, default=DEFAULTS["temperature"], help="K")
    ap.add_argument("--landscape", default=DEFAULTS["landscape"],
                    help="formamide_dft (data/landscapes, ranked at its DFT level) or esf:<molecule name> "
                         "(data/esf refined landscape, ranked by force-field energy)")
    ap.add_argument("--progress", default=None, help="JSONL of finished SCF sets (resume)")
    ap.add_argument("--cached-only", action="store_true",
                    help="no new DFT: report what the progress file holds, list the rest as missing")
    args = ap.parse_args(argv)
    levels = [x for x in args.levels.split(",") if x]
    bad = [x for x in levels if x not in LEVELS] + [c for c in args.crystals.split(",") if c and c not in CRYSTALS]
    if bad or not levels:
        ap.error(f"unknown level/crystal {bad}; levels {list(LEVELS)}, crystals {list(CRYSTALS)}")
    if args.n_structures < 0 or not 0 < args.cutoff <= 12 or args.temperature <= 0:
        ap.error("--n-structures >= 0, 0 < --cutoff <= 12 A, --temperature > 0 K")
    if args.landscape != "formamide_dft" and not (args.landscape.startswith("esf:") and args.landscape[4:]):
        ap.error(f"--landscape must be formamide_dft or esf:<molecule name>, got {args.landscape!r}")
    return args


def landscape_structures(spec: str, n: int) -> list[tuple[str, object]]:
    """``(structure id, Crystal)`` of the ``n`` lowest structures of a landscape (see
    ``--landscape``); SystemExit with one line when an ESF molecule has no refined record."""
    import numpy as np

    from sim_backends.structures import Crystal, load_crystal

    if spec == "formamide_dft":
        from sim_backends.landscape import Landscape

        land = Landscape.read(ROOT / "data/landscapes/formamide_dft", ["ff", "dft"])
        order = np.argsort(land.energies("dft"))[:n]
        return [(f"formamide_dft/{land.ids[i]}", Crystal.from_atoms(land.minima[i].atoms)) for i in order]
    from sim_backends.esf import esf_records

    name = spec[4:]
    recs = [r for r in esf_records("refined").values() if r.get("name") == name]
    if not recs or not recs[0].get("structures"):
        names = sorted(r.get("name", "") for r in esf_records("refined").values())
        raise SystemExit(f"error: no refined ESF landscape for {name!r} in data/esf (have: {', '.join(names)})")
    rec = recs[0]
    structures = sorted(rec["structures"], key=lambda x: x["energy_kjmol"])[:n]
    return [(f"esf/{name}/{x['id']}", load_crystal(x["cif"], rec["smiles"])) for x in structures]


def result_name(args: argparse.Namespace) -> str:
    diff = [f"{k}-{getattr(args, k)}" for k in DEFAULTS if getattr(args, k) != DEFAULTS[k]]
    return "transfer_validation" + ("_" + "_".join(diff).replace(",", "+") if diff else "")


def load_progress(path: Path) -> dict[str, dict]:
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                done[rec["key"]] = rec
    return done


def compute(key: str, crystal, level: str, cutoff: float, done: dict, progress: Path,
            cached_only: bool = False, max_com_A: float | None = None) -> dict:
    """Transfer integrals of one structure at one level, from ``done`` if already computed
    (dimers finished by an interrupted run are taken from ``done`` too).

    Returns the record: ``extra`` of :meth:`CrystalTransfer.to_extra`, ``cpu_s``, or
    ``error`` (one line) when an SCF failed; with ``cached_only`` a structure not finished
    yet carries the dimers already in ``done`` as ``partial_dimers`` (dimer key -> dict).
    """
    from sim_backends.base import BackendError, process_cpu_s
    from sim_backends.transfer import crystal_transfer

    if key in done:
        return done[key]
    if cached_only and level != "xtb":  # GFN2-xTB costs seconds: always computed
        MISSING.append(key)
        partial = DimerProgress(f"{key}/dimer/", done, progress)
        return {"key": key, "error": f"not computed yet (--cached-only; {len(partial)} dimers done)",
                "cpu_s": round(sum(float(d["cpu_s"]) for d in partial.values()), 2), "partial_dimers": dict(partial)}
    name, params = LEVELS[level]
    c0 = process_cpu_s()
    try:
        tr = crystal_transfer(crystal, name, cutoff, params, max_com_A=max_com_A,
                              dimer_cache=DimerProgress(f"{key}/dimer/", done, progress))
        rec = {"key": key, "transfer": tr.to_extra(), "cpu_s": round(process_cpu_s() - c0, 2)}
    except BackendError as exc:
        rec = {"key": key, "error": str(exc), "cpu_s": round(process_cpu_s() - c0, 2)}
    with progress.open("a") as fh:
        fh.write(json.dumps(rec) + "\n")
    done[key] = rec
    return rec


def pearson_spearman(x, y) -> tuple[float, float]:
    import numpy as np
    from scipy.stats import pearsonr, spearmanr

    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3:
        return float("nan"), float("nan")
    return float(pearsonr(x, y)[0]), float(spearmanr(x, y)[0])


def with_shifts(tr, crystal, cutoff: float, max_com_A: float | None):
    """``tr`` with its neighbours' lattice shifts (results saved before they were recorded):
    the same dimer enumeration as :func:`sim_backends.transfer.crystal_transfer`, checked
    against the stored hop vectors."""
    import dataclasses

    import numpy as np

    from sim_backends.dft_crystal import enumerate_dimers
    from sim_backends.transfer import hop_vectors

    if len(tr.shifts) == len(tr.neighbours):
        return tr
    dimers = [d for d in enumerate_dimers(crystal, float(cutoff), "contact")
              if max_com_A is None or d.com_A <= float(max_com_A)]
    vectors = hop_vectors(crystal, dimers)
    if len(dimers) != len(tr.neighbours) or not np.allclose(vectors, tr.vectors_A, atol=1e-3):
        raise SystemExit("stored transfer integrals do not match this crystal's dimers; recompute them")
    return dataclasses.replace(tr, shifts=[tuple(int(x) for x in d.shift) for d in dimers])


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    from sim_backends.mobility import HoppingNetwork, crystal_mobility, kmc_diffusion, mobility_cm2Vs
    from sim_backends.tlt import assumptions_text, tlt_mobility
    from sim_backends.transfer import CrystalTransfer, DimerTransfer, dimer_key

    args = parse(argv)
    levels = [x for x in args.levels.split(",") if x]
    # the landscape first: an unknown ESF molecule is refused before any calculation
    structures = landscape_structures(args.landscape, args.n_structures) \
        if args.n_structures and len(levels) == 2 else []
    name = result_name(args)
    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = Path(args.progress) if args.progress else out_dir / f"{name}_progress.jsonl"
    done = load_progress(progress)
    t0 = time.time()
    print(f"# transfer integrals: dimer projection, closest contact < {args.cutoff:g} A; "
          f"mobility: Marcus hopping at {args.temperature:g} K", flush=True)

    crystals_out = {}
    pairs = {"hole": [], "electron": []}  # (xtb, dft) |J| over the acene dimers
    for cname in [c for c in args.crystals.split(",") if c]:
        spec = CRYSTALS[cname]
        lam = spec["lambda_eV"]
        crystal = load_reference_crystal(cname)
        per_level = {}
        for level in levels:
            rec = compute(crystal_key(cname, level, args.cutoff), crystal, level, args.cutoff, done, progress,
                          args.cached_only, spec["max_com_A"])
            per_level[level] = rec
            print(f"  {cname:12s} {LEVEL_NAMES[level]:12s} "
                  + (f"{len(rec['transfer']['dimers'])} unique dimers, {rec['cpu_s']:.1f} CPU s"
                     if "transfer" in rec else f"FAILED: {rec['error']}"), flush=True)
        cut = f", dimers with centres of mass within {spec['max_com_A']:g} A" if spec["max_com_A"] else ""
        print(f"\n{cname} ({spec['structure']}, Z = {crystal.z}{cut}): |J_eff| per unique dimer, meV")
        print(f"  {'d_com/A':>7s} {'contact/A':>9s} {'mult':>4s} "
              + " ".join(f"{'J_h ' + LEVEL_NAMES[lv]:>16s} {'J_e ' + LEVEL_NAMES[lv]:>16s}" for lv in levels))
        ok = {lv: CrystalTransfer.from_extra(per_level[lv]["transfer"]) for lv in levels if "transfer" in per_level[lv]}
        ref = next(iter(ok.values()), None)
        # per level, dimer key -> DimerTransfer (a level still running contributes its finished dimers)
        by_key = {lv: {dimer_key(x.i, x.j, x.shift): x for x in tr.dimers} for lv, tr in ok.items()}
        for lv in levels:
            if "partial_dimers" in per_level[lv]:
                by_key[lv] = {k: DimerTransfer(**{**x, "shift": tuple(x["shift"])})
                              for k, x in per_level[lv]["partial_dimers"].items()}
        rows = []
        for d in ref.dimers if ref else []:
            dk = dimer_key(d.i, d.j, d.shift)
            vals = {lv: (abs(by_key[lv][dk].hole["j_eff_meV"]), abs(by_key[lv][dk].electron["j_eff_meV"]))
                    for lv in levels if lv in by_key and dk in by_key[lv]}
            rows.append({"com_A": round(d.com_A, 3), "contact_A": round(d.contact_A, 3),
                         "multiplicity": d.multiplicity,
                         **{f"j_{c}_{lv}_meV": round(vals[lv][ci], 3) for lv in vals for ci, c in enumerate(("hole", "electron"))}})
            print(f"  {d.com_A:7.2f} {d.contact_A:9.2f} {d.multiplicity:4d} "
                  + " ".join(f"{vals[lv][0]:16.2f} {vals[lv][1]:16.2f}" if lv in vals else f"{'-':>16s} {'-':>16s}"
                             for lv in levels))
            if "xtb" in vals and "dft" in vals:
                pairs["hole"].append((vals["xtb"][0], vals["dft"][0]))
                pairs["electron"].append((vals["xtb"][1], vals["dft"][1]))
        mob = {}
        if lam is not None:
            for lv, tr in ok.items():
                tr = with_shifts(tr, crystal, args.cutoff, spec["max_com_A"])
                values, details = crystal_mobility(tr, {"hole": lam}, args.temperature)
                hop = details["hole"]["exact"]
                net = HoppingNetwork.from_transfer(tr, "hole", lam, args.temperature)
                kmc = kmc_diffusion(net, n_walkers=3000, n_hops=1000, seed=0)
                tlt = tlt_mobility(tr, "hole", args.temperature)  # beside Marcus on every crystal
                mob[lv] = {"exact_iso": hop["iso"], "exact_max": hop["max"],
                           "einstein_iso": details["hole"]["einstein_sum"]["iso"],
                           "kmc_iso": float(mobility_cm2Vs(np.trace(kmc.diffusion) / 3, args.temperature)),
                           "kmc_stderr": float(mobility_cm2Vs(kmc.stderr_iso, args.temperature)),
                           "relative_local_drift": details["hole"]["relative_local_drift"],
                           "two_j_over_lambda": float(2e-3 * np.max(tr.couplings_meV("hole")) / lam),
                           "tlt_iso": tlt.iso, "tlt_max": tlt.max, "tlt_stderr": tlt.stderr_iso,
                           "tlt_localisation_length_A": tlt.localisation_length_A, "tlt_signs": tlt.signs,
                           "model_reported": details["hole"]["model"],
                           "reported_iso": values["mobility_hole_cm2Vs"]}
            print(f"  hole mobility, lambda+ = {lam * 1000:.0f} meV ({spec['lambda_source']}), "
                  f"{args.temperature:g} K, cm2/(V s); Marcus hopping (exact network, Einstein sum, KMC) and "
                  f"transient localisation (TLT, {assumptions_text()}); the product reports TLT where 2|J|max > lambda:")
            print(f"  {'level':12s} {'2|J|/lam':>8s} {'exact iso':>10s} {'exact max':>10s} {'Einstein':>10s} "
                  f"{'KMC':>16s} {'TLT iso':>15s} {'TLT max':>8s} {'L_TLT/A':>8s}")
            for lv, m in mob.items():
                print(f"  {LEVEL_NAMES[lv]:12s} {m['two_j_over_lambda']:8.2f} {m['exact_iso']:10.3f} "
                      f"{m['exact_max']:10.3f} {m['einstein_iso']:10.3f} {m['kmc_iso']:9.3f} +- {m['kmc_stderr']:.3f} "
                      f"{m['tlt_iso']:7.3f} +- {m['tlt_stderr']:.3f} {m['tlt_max']:8.3f} "
                      f"{m['tlt_localisation_length_A']:8.1f}")
            print("  TLT couplings: " + "; ".join(f"{LEVEL_NAMES[lv]} {m['tlt_signs']}" for lv, m in mob.items()))
            print(f"  experiment / literature: {spec['experiment']}")
        crystals_out[cname] = {"z": crystal.z, "structure": spec["structure"], "max_com_A": spec["max_com_A"],
                               "dimers": rows, "mobility_hole_cm2Vs": mob, "lambda_hole_eV": lam,
                               "lambda_source": spec["lambda_source"],
                               "cpu_s": {lv: per_level[lv]["cpu_s"] for lv in levels}}

    landscape_out = {}
    if structures:
        lpairs = {"hole": [], "electron": []}
        cpu = {lv: 0.0 for lv in levels}
        n_failed = 0
        table = []
        for sid, crystal in structures:
            recs = {lv: compute(f"{sid}/{lv}/{args.cutoff:g}", crystal, lv, args.cutoff,
                                done, progress, args.cached_only) for lv in levels}
            for lv in levels:
                cpu[lv] += recs[lv]["cpu_s"]
            if not all("transfer" in r for r in recs.values()):
                n_failed += 1
                continue
            trs = {lv: CrystalTransfer.from_extra(recs[lv]["transfer"]) for lv in levels}
            for a, b in zip(trs["xtb"].dimers, trs["dft"].dimers):
                for c in ("hole", "electron"):
                    lpairs[c].append((abs(getattr(a, c)["j_eff_meV"]), abs(getattr(b, c)["j_eff_meV"])))
                table.append({"structure": sid, "com_A": round(a.com_A, 3), "contact_A": round(a.contact_A, 3),
                              **{f"j_{c}_{lv}_meV": round(abs(getattr(d, c)["j_eff_meV"]), 3)
                                 for lv, d in (("xtb", a), ("dft", b)) for c in ("hole", "electron")}})
            print(f"  {sid}: {len(trs['xtb'].dimers)} dimers", flush=True)
        print(f"\n|J_eff| per unique dimer, meV ({args.landscape}):")
        print(f"  {'structure':28s} {'d_com/A':>7s} {'J_h xTB':>8s} {'J_h DFT':>8s} {'J_e xTB':>8s} {'J_e DFT':>8s}")
        for t in table:
            print(f"  {t['structure']:28s} {t['com_A']:7.2f} {t['j_hole_xtb_meV']:8.2f} {t['j_hole_dft_meV']:8.2f} "
                  f"{t['j_electron_xtb_meV']:8.2f} {t['j_electron_dft_meV']:8.2f}")
        print(f"\nxTB vs DFT |J_eff| over all unique dimers of the {len(structures)} lowest {args.landscape} "
              f"structures ({n_failed} failed):")
        for c in ("hole", "electron"):
            x, y = np.array(lpairs[c]).T if lpairs[c] else (np.zeros(0), np.zeros(0))
            r, rho = pearson_spearman(x, y)
            ratio = float(np.median(y[x > 0.5] / x[x > 0.5])) if np.any(x > 0.5) else float("nan")
            landscape_out[c] = {"n_dimers": int(len(x)), "pearson": r, "spearman": rho,
                                "median_ratio_dft_over_xtb": ratio}
            print(f"  {c:8s} n = {len(x):3d}  Pearson r = {r:.3f}  Spearman = {rho:.3f}  "
                  f"median DFT/xTB (|J_xTB| > 0.5 meV) = {ratio:.2f}")
        landscape_out["cpu_s"] = cpu
        landscape_out["landscape"] = args.landscape
        landscape_out["n_structures"] = len(structures)
        landscape_out["dimers"] = table
        print("  CPU s over these structures: " + ", ".join(f"{LEVEL_NAMES[lv]} {cpu[lv]:.1f}" for lv in levels))

    acene_corr = {}
    if len(levels) == 2:
        print("\nxTB vs DFT |J_eff| over the experimental-crystal dimers:")
        for c in ("hole", "electron"):
            x, y = np.array(pairs[c]).T if pairs[c] else (np.zeros(0), np.zeros(0))
            r, rho = pearson_spearman(x, y)
            ratio = float(np.median(y[x > 0.5] / x[x > 0.5])) if np.any(x > 0.5) else float("nan")
            acene_corr[c] = {"n_dimers": int(len(x)), "pearson": r, "spearman": rho, "median_ratio_dft_over_xtb": ratio}
            print(f"  {c:8s} n = {len(x):3d}  Pearson r = {r:.3f}  Spearman = {rho:.3f}  median DFT/xTB = {ratio:.2f}")

    summary = {"benchmark": "transfer_validation", "levels": [LEVEL_NAMES[lv] for lv in levels],
               "cutoff_A": args.cutoff, "temperature_K": args.temperature, "crystals": crystals_out,
               "xtb_vs_dft_acenes": acene_corr,
               ("xtb_vs_dft_landscape_formamide" if args.landscape == "formamide_dft"
                else "xtb_vs_dft_landscape"): landscape_out,
               "incomplete": MISSING, "wall_s": round(time.time() - t0, 1)}
    text = json.dumps(summary)
    (out_dir / f"{name}.json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
