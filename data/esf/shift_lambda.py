"""Apply the ESF levels' empirical lambda+ shift to the ESF data set.

The ESF levels use GFN2-xTB lambda+ plus :data:`sim_backends.reorg.XTB_LAMBDA_SHIFT_KJMOL`
(fitted to B3LYP/6-31G//B3LYP/6-31G, ``benchmarks/reorg_calibration.py``) in every
mobility. The shipped records were made with the unshifted value; this script brings them
to what the current levels compute, without recomputing anything expensive:

* ``esf_proxy.jsonl``: ``reorg_energy_kjmol`` += shift (the proxy mobility is computed from
  it when replayed).
* ``esf_quick.jsonl`` / ``esf_refined.jsonl``: ``lambda_hole_kjmol`` += shift; every
  structure's Marcus hole mobility is multiplied by the ratio of the Marcus rates at the two
  lambda+ (every dimer of a crystal shares lambda+, so the hopping mobility scales exactly
  with the rate; the records hold Marcus values only: they predate the lattice shifts TLT
  needs); a structure's stored hopping-regime warning is dropped (the replay derives it from
  ``j_hole_max_meV`` and the record's lambda+ when served); the landscape mobility and the
  global minimum's are recomputed from the stored energies and checked against the same
  ratio.

Each changed record keeps the unshifted values in ``lambda_shift["before"]`` with the
shift, code commit and date; a record that has ``lambda_shift`` is left alone, so a rerun
changes nothing. Files are rewritten in place (order and other records unchanged):

    .venv/bin/python data/esf/shift_lambda.py [--dry-run]
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from recompute_lambda import data_args, landscape_from, marcus_factor, read, write  # noqa: E402


def code_commit() -> str:
    from recompute_transfer import code_commit as commit_of

    return commit_of(("sim_backends/reorg.py", "sim_backends/mobility.py", "sim_backends/esf.py"))


def shift_landscape(rec: dict, shift: float, stamp: dict) -> dict:
    """A quick/refined record at lambda+ + ``shift`` (module docstring)."""
    from sim_backends.mobility import MARCUS_NAME, split_regime_warning

    lam_old = float(rec["lambda_hole_kjmol"])
    factor = marcus_factor(lam_old + shift, lam_old)
    out = dict(rec)
    before_s, structures = [], []
    for s in rec.get("structures") or []:
        s = dict(s)
        if "mobility_hole_cm2Vs" in s:
            if s.get("transport_model") not in (None, MARCUS_NAME):
                raise SystemExit(f"{rec['smiles']} {s.get('id')}: a {s['transport_model']} mobility cannot be rescaled")
            before_s.append({k: s.get(k) for k in ("id", "mobility_hole_cm2Vs", "mobility_hole_max_cm2Vs", "warnings")})
            s["mobility_hole_cm2Vs"] *= factor
            s["mobility_hole_max_cm2Vs"] *= factor
            s["warnings"] = [w for w in s.get("warnings") or [] if split_regime_warning(str(w))[1] is None]
        structures.append(s)
    out["structures"] = structures
    lm_old = rec.get("landscape_mobility_hole_cm2Vs") or {}
    before = {"lambda_hole_kjmol": lam_old, "landscape_mobility_hole_cm2Vs": dict(lm_old) if lm_old else None,
              "global_minimum_mobility_hole_cm2Vs": rec.get("global_minimum_mobility_hole_cm2Vs"),
              "structures": before_s}
    land = landscape_from(structures, lm_old)
    if land is not None:
        lm, gm = land
        if lm_old.get("mean") and abs(lm["mean"] / (lm_old["mean"] * factor) - 1.0) > 1e-6:
            raise SystemExit(f"{rec['smiles']}: landscape mobility {lm['mean']:.8g} != {lm_old['mean']:.8g} x "
                             f"{factor:.8g}: the record's mobilities and its landscape disagree")
        out["landscape_mobility_hole_cm2Vs"] = {**lm_old, **{k: lm[k] for k in ("mean", "sd", "n_in_window")}}
        out["global_minimum_mobility_hole_cm2Vs"] = gm
    out["lambda_hole_kjmol"] = lam_old + shift
    out["lambda_shift"] = {**stamp, "marcus_factor": factor, "before": before}
    return out


def main(argv: list[str] | None = None) -> int:
    from sim_backends.reorg import XTB_LAMBDA_SHIFT_KJMOL

    args = data_args(__doc__, argv)
    data = Path(args.data_dir)
    shift = float(XTB_LAMBDA_SHIFT_KJMOL)
    stamp = {"shift_kjmol": shift, "code_commit": code_commit(),
             "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "reason": "the ESF levels add sim_backends.reorg.XTB_LAMBDA_SHIFT_KJMOL to GFN2-xTB lambda+ "
                       "(benchmarks/reorg_calibration.py)"}
    files = {}
    proxies, n = [], 0
    for r in read(data / "esf_proxy.jsonl"):
        if r.get("reorg_energy_kjmol") is not None and "lambda_shift" not in r:
            r = {**r, "reorg_energy_kjmol": float(r["reorg_energy_kjmol"]) + shift,
                 "lambda_shift": {**stamp, "before": {"reorg_energy_kjmol": r["reorg_energy_kjmol"]}}}
            n += 1
        proxies.append(r)
    files["esf_proxy.jsonl"] = proxies
    print(f"proxy: {n} records shifted by {shift:+.2f} kJ/mol")
    for fid in ("quick", "refined"):
        outs, n = [], 0
        for r in read(data / f"esf_{fid}.jsonl"):
            if r.get("lambda_hole_kjmol") is not None and "lambda_shift" not in r:
                x = shift_landscape(r, shift, stamp)
                b = x["lambda_shift"]["before"]
                old = (b["landscape_mobility_hole_cm2Vs"] or {}).get("mean")
                new = (x.get("landscape_mobility_hole_cm2Vs") or {}).get("mean")
                if old is not None:
                    print(f"  {fid:8s} {r.get('name', r['smiles'])[:34]:34s} lambda+ {b['lambda_hole_kjmol']:6.2f} -> "
                          f"{x['lambda_hole_kjmol']:6.2f}  landscape mobility {old:.4g} -> {new:.4g}")
                r, n = x, n + 1
            outs.append(r)
        files[f"esf_{fid}.jsonl"] = outs
        print(f"{fid}: {n} records shifted")
    if not args.dry_run:
        for name, recs in files.items():
            write(data / name, recs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
