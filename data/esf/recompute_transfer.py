"""Recompute the transfer integrals and mobilities of stored ESF records, keeping their CSP.

The data set's records keep every kept structure as a CIF, so a change of the transfer
step (here: the rotation-invariant coupling of degenerate frontier manifolds,
:mod:`sim_backends.transfer`) needs only the GFN2-xTB dimer couplings, the Marcus
mobilities and the Boltzmann-weighted landscape mobility redone, not the CSP.

Selected records (default): those of ``esf_quick.jsonl`` and ``esf_refined.jsonl`` whose
structures carry a frontier-orbital warning of the old single-orbital code (text
``"frontier orbital within"``), or a degenerate hole manifold without the Jahn-Teller
lambda+ warning (:data:`sim_backends.esf.JAHN_TELLER_LAMBDA_WARNING`: the data set's
lambda+ is GFN2-xTB) unless the record's ``lambda_jahn_teller`` says the cation was relaxed at
a low electronic temperature (``recompute_lambda.py``); ``--all`` takes every record with
structures. A record recomputed
twice keeps its first ``before`` values.

Per selected record and structure: :func:`sim_backends.transfer.crystal_transfer` (the
record's level, GFN2-xTB, 4 A contact cutoff), :func:`sim_backends.mobility.crystal_mobility`
with the record's lambda+ at 300 K, then :func:`sim_backends.mobility.landscape_mobility`
with the record's energy sd and window. The structure keeps its previous values under
``before`` (mobility, largest |J|, warnings); the record gets ``recomputed``: code commit,
date, reason, this step's CPU seconds (process user + system). The record's ``cpu_s`` (the
cost of making it, what a replay charges) is unchanged: the recomputation does the same
work as the original transfer step.

Resumable: each finished record is appended to ``--progress`` (one JSON line, keyed by
fidelity and SMILES); a rerun skips those. When every selected record is done, the data
files are rewritten with the recomputed records in place (order and all other records
unchanged). Run nice'd:

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python data/esf/recompute_transfer.py
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

HERE = Path(__file__).resolve().parent
FIDELITIES = ("quick", "refined")
OLD_WARNING = "frontier orbital within"
TEMPERATURE_K = 300.0
REASON = ("degenerate frontier manifolds: rotation-invariant J_eff^2 = (1/n) sum_ab |J_ab|^2 "
          "(sim_backends/transfer.py) replaces the single-orbital |J|")


def code_commit(paths: tuple[str, ...] = ("sim_backends/transfer.py", "sim_backends/mobility.py",
                                           "sim_backends/esf.py")) -> str:
    """HEAD commit, with ``+dirty`` when the code in ``paths`` (default: transfer/mobility)
    differs from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", *paths], cwd=ROOT).returncode
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def selected(rec: dict, take_all: bool) -> bool:
    structures = rec.get("structures") or []
    if not structures or rec.get("error"):
        return False
    if take_all or any(OLD_WARNING in w for s in structures for w in (s.get("warnings") or [])):
        return True
    # a degenerate HOMO without the current lambda+ warning (recomputed before it, or its text
    # changed), unless its lambda+ includes the Jahn-Teller relaxation (then there is none)
    from sim_backends.esf import JAHN_TELLER_LAMBDA_WARNING
    from sim_backends.reorg import jahn_teller_resolved

    if jahn_teller_resolved(rec.get("lambda_jahn_teller")):
        return False
    return any((s.get("hole_manifold") or 1) > 1 and JAHN_TELLER_LAMBDA_WARNING not in (s.get("warnings") or [])
               for s in structures)


def recompute(rec: dict, commit: str) -> dict:
    """The record with its transfer integrals, mobilities and landscape mobility redone."""
    from sim_backends.base import BackendError, process_cpu_s
    from sim_backends.esf import structure_warnings
    from sim_backends.mobility import EV_PER_KJMOL, crystal_mobility, landscape_mobility
    from sim_backends.structures import load_crystal
    from sim_backends.transfer import crystal_transfer

    if rec.get("transfer_level") != "GFN2-xTB":
        raise SystemExit(f"{rec['smiles']}: transfer level {rec.get('transfer_level')!r} not supported here")
    c0 = process_cpu_s()
    lam_ev = float(rec["lambda_hole_kjmol"]) * EV_PER_KJMOL
    out = dict(rec)
    structures = []
    for s in rec["structures"]:
        s = dict(s)
        if not s.get("cif"):
            structures.append(s)
            continue
        s["before"] = s.get("before") or {k: s.get(k) for k in ("mobility_hole_cm2Vs", "mobility_hole_max_cm2Vs", "j_hole_max_meV",
                                             "j_electron_max_meV", "warnings", "error") if k in s}
        for k in ("error", "warnings", "notes"):
            s.pop(k, None)
        try:
            tr = crystal_transfer(load_crystal(s["cif"], rec["smiles"]), "gfn2-xtb", 4.0)
            values, _ = crystal_mobility(tr, {"hole": lam_ev}, TEMPERATURE_K)
            s.update({"mobility_hole_cm2Vs": values["mobility_hole_cm2Vs"],
                      "mobility_hole_max_cm2Vs": values["mobility_hole_max_cm2Vs"],
                      "j_hole_max_meV": max(abs(d.hole["j_eff_meV"]) for d in tr.dimers),
                      "j_electron_max_meV": max(abs(d.electron["j_eff_meV"]) for d in tr.dimers),
                      "n_unique_dimers": len(tr.dimers), "hole_manifold": int(tr.manifolds["hole"]["n"]),
                      "warnings": structure_warnings(tr, "GFN2-xTB", rec.get("lambda_jahn_teller")),
                      "notes": tr.notes})
        except BackendError as exc:
            for k in ("mobility_hole_cm2Vs", "mobility_hole_max_cm2Vs", "j_hole_max_meV", "j_electron_max_meV"):
                s.pop(k, None)
            s["error"] = " ".join(str(exc).split())[:300]
        structures.append(s)
    out["structures"] = structures
    ok = [s for s in structures if "mobility_hole_cm2Vs" in s]
    lm_old = rec.get("landscape_mobility_hole_cm2Vs") or {}
    sd = float(lm_old.get("energy_sd_kjmol", 4.5))
    window = float(lm_old.get("window_kjmol", 7.0))
    before = (rec.get("recomputed") or {}).get("before") or {"landscape_mobility_hole_cm2Vs": lm_old.get("mean"), "landscape_sd": lm_old.get("sd"),
              "global_minimum_mobility_hole_cm2Vs": rec.get("global_minimum_mobility_hole_cm2Vs")}
    if ok:
        lm = landscape_mobility([s["energy_kjmol"] for s in ok], [s["mobility_hole_cm2Vs"] for s in ok],
                                sd, window_kjmol=window, temperature_K=TEMPERATURE_K)
        out["landscape_mobility_hole_cm2Vs"] = {"mean": lm.mean, "sd": lm.sd, "n_in_window": lm.n_in_window,
                                                "energy_sd_kjmol": sd, "window_kjmol": window}
        out["global_minimum_mobility_hole_cm2Vs"] = min(ok, key=lambda s: s["energy_kjmol"])["mobility_hole_cm2Vs"]
        out.pop("error", None)
    else:
        out.pop("landscape_mobility_hole_cm2Vs", None)
        out["error"] = "no structure with a mobility (" + "; ".join(f"{s['id']}: {s.get('error')}" for s in structures) + ")"
    out["recomputed"] = {"what": "transfer integrals, mobilities, landscape mobility (CSP kept)", "reason": REASON,
                         "code_commit": commit, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                             timespec="seconds"), "cpu_s": round(process_cpu_s() - c0, 2), "before": before}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=str(HERE), help="directory of esf_<fidelity>.jsonl (default: data/esf)")
    ap.add_argument("--progress", default=str(ROOT / "runs" / "esf_recompute_progress.jsonl"),
                    help="resumable progress file (one JSON line per recomputed record)")
    ap.add_argument("--all", action="store_true", help="recompute every record with structures")
    ap.add_argument("--fidelity", choices=FIDELITIES, action="append", help="only these fidelities (repeatable)")
    args = ap.parse_args(argv)
    data = Path(args.data_dir)
    progress = Path(args.progress)
    progress.parent.mkdir(parents=True, exist_ok=True)
    done: dict[tuple[str, str], dict] = {}
    if progress.exists():
        for line in progress.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done[(r["fidelity"], r["smiles"])] = r
    commit = code_commit()
    for fid in args.fidelity or FIDELITIES:
        path = data / f"esf_{fid}.jsonl"
        if not path.is_file():
            print(f"error: {path} not found", file=sys.stderr)
            return 1
        lines = path.read_text().splitlines()
        recs = [json.loads(x) for x in lines if x.strip()]
        todo = [r for r in recs if selected(r, args.all) or (fid, r["smiles"]) in done]
        print(f"{fid}: {len(todo)} records to recompute ({sum((fid, r['smiles']) in done for r in todo)} done before)")
        for r in todo:
            key = (fid, r["smiles"])
            if key in done and (args.all or not selected(done[key], False)):
                continue  # done, and its result meets the current criteria
            new = recompute(r, commit)
            new["fidelity"] = fid
            with progress.open("a") as fh:
                fh.write(json.dumps(new) + "\n")
            done[key] = new
            b = new["recomputed"]["before"]
            lm = (new.get("landscape_mobility_hole_cm2Vs") or {}).get("mean")
            print(f"  {r.get('name', r['smiles'])[:32]:32s} landscape mu_h {b['landscape_mobility_hole_cm2Vs']:.3g}"
                  f" -> {lm if lm is None else format(lm, '.3g')} cm2/(V s)  hole manifold "
                  f"{[s.get('hole_manifold') for s in new['structures']]}  {new['recomputed']['cpu_s']:.1f} CPU s",
                  flush=True)
        out = [json.dumps(done.get((fid, r["smiles"]), r)) for r in recs]
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("\n".join(out) + "\n")
        tmp.replace(path)
        print(f"{fid}: {path} rewritten ({len(todo)} records recomputed)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
