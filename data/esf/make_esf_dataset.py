"""Build the energy-structure-function (ESF) replay data set, one molecule at a time, resumable.

For each molecule of a pool (default: examples/pool.smi, rigid conjugated molecules, smallest
first) and each requested fidelity, one JSON line is appended to ``<out>/esf_<fidelity>.jsonl``
as soon as it is finished; a rerun skips the molecules already there, so the script can be
killed and restarted at any time (run it nice'd in the background).

Fidelities (the ladder of issue 19, item 4):

* ``proxy``: the hole reorganisation energy lambda+ at GFN2-xTB (``xtb-reorg``), kJ/mol.
* ``quick``: a quick CSP (``--quick-trials`` trials, W99 + Ewald force field, GFN2-xTB
  charges, Z' = 1) keeping the structures within ``--window`` kJ/mol of the minimum (at most
  ``--quick-structures``; ``--charges resp`` for RESP charges, the product's default), GFN2-xTB dimer-projection transfer integrals for each and the hole
  Marcus mobility at 300 K with the molecule's GFN2-xTB lambda+ (from ``proxy``, computed
  here when missing); the landscape mobility is the Boltzmann-weighted mean over the kept
  structures with an energy sd of :data:`FF_ENERGY_SD_KJMOL`
  (:func:`sim_backends.mobility.landscape_mobility`).
* ``refined``: a larger CSP (``--refined-trials``, the same seed: the quick CSP's trials
  and more) and, for its ``--refined-structures`` lowest structures, transfer integrals at
  ``--refined-transfer`` (B3LYP/6-31G by default; the shipped data set used GFN2-xTB, see
  README) (the mobility uses the same lambda+ so that the fidelities differ in the crystal
  part only).

Every record carries the CPU seconds of each step (``cpu_s``, this process's user+system
time), the per-structure energies, densities, space groups, mobilities and the CIFs of the
kept structures, so a replay can recompute the landscape property with other windows or
uncertainties. A molecule whose step fails is recorded with ``error`` (one line) and its
CPU seconds: failures are part of what an agent pays for.

Usage:
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python data/esf/make_esf_dataset.py --fidelity quick --n 60
    ... --fidelity refined --n 40 --refined-trials 300 --refined-structures 6 --refined-transfer gfn2-xtb
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sim_backends.esf import FF_ENERGY_SD_KJMOL  # noqa: E402 - after the path insert

TEMPERATURE_K = 300.0


def read_pool(path: Path) -> list[tuple[str, str]]:
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):  # '#' inside a SMILES is a triple bond
            parts = line.split()
            out.append((parts[0], parts[1] if len(parts) > 1 else parts[0]))
    return out


def heavy_atoms(smiles: str) -> int:
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    return mol.GetNumHeavyAtoms() if mol is not None else 10**6


def done_keys(path: Path) -> dict[str, dict]:
    """Records already in ``path``. A last line that is not JSON (the generator was killed while
    appending it) is removed from the file, with a note, so that the molecule is recomputed and the
    next record starts on a line of its own."""
    if not path.exists():
        return {}
    text = path.read_text()
    lines = [x for x in text.splitlines() if x.strip()]
    rewrite = bool(text) and not text.endswith("\n")
    if lines:
        try:
            json.loads(lines[-1])
        except json.JSONDecodeError:
            print(f"{path}: last line {len(lines)} is not JSON (interrupted write): removed, its molecule is "
                  "recomputed", flush=True)
            lines, rewrite = lines[:-1], True
    if rewrite:
        path.write_text("".join(x + "\n" for x in lines))
    recs = [json.loads(x) for x in lines]
    return {r["smiles"]: r for r in recs}


def append(path: Path, rec: dict) -> None:
    with path.open("a") as fh:
        fh.write(json.dumps(rec) + "\n")


def proxy(smiles: str) -> dict:
    from sim_backends.base import EvalInput
    from sim_backends.registry import get_backend

    r = get_backend("xtb-reorg").evaluate(EvalInput(smiles))
    rec = {"cpu_s": round(r.cpu_s, 2), "level": "GFN2-xTB"}
    if r.ok:
        rec["reorg_energy_kjmol"] = r.values["reorg_energy_kjmol"]
        if r.extra.get("jahn_teller"):  # degenerate HOMO: the low-temperature cation's outcome
            rec["jahn_teller"] = r.extra["jahn_teller"]
    else:
        rec["error"] = r.reason
    return rec


def landscape_step(smiles: str, lam_kjmol: float, n_trials: int, n_keep: int, window: float,
                   level: str, seed: int, jahn_teller: str | None = None, charges: str = "xtb") -> dict:
    """CSP, then transfer integrals + hole mobility for the kept structures (one record,
    :func:`sim_backends.esf.landscape_record`); ``jahn_teller``: the proxy's degenerate-HOMO
    status (``xtb-reorg``'s ``extra["jahn_teller"]``)."""
    from sim_backends.esf import landscape_record

    rec = landscape_record(smiles, lam_kjmol, n_trials, n_keep, window, level, seed,
                           temperature_K=TEMPERATURE_K, energy_sd_kjmol=FF_ENERGY_SD_KJMOL,
                           lambda_level="GFN2-xTB", jahn_teller=jahn_teller,  # lambda+ is the proxy's (xtb-reorg)
                           charges=charges)
    return {**rec, "lambda_jahn_teller": jahn_teller} if jahn_teller else rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", default=str(ROOT / "examples/pool.smi"))
    ap.add_argument("--out", default=str(ROOT / "data/esf"))
    ap.add_argument("--fidelity", choices=["proxy", "quick", "refined"], default="quick")
    ap.add_argument("--n", type=int, default=60, help="molecules (smallest first)")
    ap.add_argument("--quick-trials", type=int, default=150)
    ap.add_argument("--quick-structures", type=int, default=6)
    ap.add_argument("--refined-trials", type=int, default=600)
    ap.add_argument("--refined-structures", type=int, default=3)
    ap.add_argument("--refined-transfer", choices=["dft", "gfn2-xtb"], default="dft",
                    help="transfer integrals of the refined fidelity (B3LYP/6-31G or GFN2-xTB)")
    ap.add_argument("--window", type=float, default=7.0, help="kJ/mol above the CSP minimum")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--charges", choices=["xtb", "resp", "resp-lp"], default="xtb",
                    help="CSP point charges (the shipped data/esf: xtb; the product's ESF levels: resp)")
    args = ap.parse_args(argv)
    if args.n < 1 or args.window <= 0 or min(args.quick_trials, args.refined_trials) < 1:
        ap.error("--n >= 1, --window > 0, trials >= 1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pool = sorted(read_pool(Path(args.pool)), key=lambda p: heavy_atoms(p[0]))[: args.n]
    proxy_path = out / "esf_proxy.jsonl"
    path = out / f"esf_{args.fidelity}.jsonl"
    proxies = done_keys(proxy_path)
    done = done_keys(path)
    print(f"{args.fidelity}: {len(done)} of {len(pool)} molecules done; writing {path}", flush=True)
    for k, (smiles, name) in enumerate(pool):
        if smiles not in proxies:
            t = time.time()
            proxies[smiles] = {"smiles": smiles, "name": name, **proxy(smiles), "wall_s": round(time.time() - t, 1)}
            append(proxy_path, proxies[smiles])
        if args.fidelity == "proxy" or smiles in done:
            continue
        lam = proxies[smiles].get("reorg_energy_kjmol")
        t = time.time()
        if lam is None:
            rec = {"error": f"no lambda+: {proxies[smiles].get('error', '')}", "cpu_s": {}}
        elif args.fidelity == "quick":
            rec = landscape_step(smiles, lam, args.quick_trials, args.quick_structures, args.window, "gfn2-xtb",
                                 args.seed, proxies[smiles].get("jahn_teller"), args.charges)
        else:
            rec = landscape_step(smiles, lam, args.refined_trials, args.refined_structures, args.window,
                                 args.refined_transfer, args.seed, proxies[smiles].get("jahn_teller"), args.charges)
        rec = {"smiles": smiles, "name": name, "fidelity": args.fidelity, "lambda_hole_kjmol": lam, **rec,
               "wall_s": round(time.time() - t, 1)}
        append(path, rec)
        done[smiles] = rec
        lm = rec.get("landscape_mobility_hole_cm2Vs", {})
        print(f"[{k + 1}/{len(pool)}] {name}: "
              + (f"mu_h = {lm['mean']:.3g} +- {lm['sd']:.2g} cm2/(V s) over {lm['n_in_window']} structures"
                 if lm else f"failed: {rec.get('error')}")
              + f", CPU s {rec.get('cpu_s')}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
