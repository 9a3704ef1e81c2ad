"""Recompute the GFN2-xTB lambda+ of the ESF data set's degenerate-HOMO molecules, and their
landscape mobilities from the stored structures.

``xtb-reorg`` relaxes the cation of a molecule whose neutral HOMO is degenerate at a low
electronic temperature (10 K; :mod:`sim_backends.reorg`), because tblite's 300 K Fermi
smearing shares the hole over the degenerate pair and keeps the cation undistorted (its
Jahn-Teller relaxation is missing, lambda+ too small). A non-degenerate HOMO is untouched.

Steps:

1. Every molecule of ``esf_proxy.jsonl`` is run through the current ``xtb-reorg``. The
   degenerate-HOMO molecules are those whose neutral minimum has a hole frontier manifold
   of more than one orbital (``extra["hole_manifold"]``: orbitals within 10 meV of the
   HOMO, :data:`sim_backends.transfer.DEGENERATE_MANIFOLD_MEV`). For every other molecule
   the new lambda+ must equal the stored one bit for bit (checked; the script stops
   otherwise) and its records are left as they are.
2. Each degenerate-HOMO proxy record gets the new ``reorg_energy_kjmol``, ``jahn_teller``
   (``extra["jahn_teller"]``: resolved, or "unresolved: ...; 300 K value" when the
   low-temperature SCF failed) and ``cpu_s`` (the new calculation's CPU seconds: what a
   replay charges for it); ``recomputed_lambda`` keeps the values before, the code commit,
   date and reason.
3. Each of their ``esf_quick.jsonl`` / ``esf_refined.jsonl`` records gets the new
   ``lambda_hole_kjmol`` and ``lambda_jahn_teller``; the records keep one largest |J| per
   structure, not the dimer couplings, so every structure's GFN2-xTB transfer integrals are
   recomputed from its stored CIF (:func:`sim_backends.transfer.crystal_transfer`, 4 A
   contact cutoff, as the data set was made), then the Marcus hole mobility at 300 K with
   the new lambda+, the structure's warnings (:func:`sim_backends.esf.structure_warnings`
   with the lambda+'s Jahn-Teller status: a resolved one drops the lambda+ warning) and the
   Boltzmann-weighted landscape mobility with the record's energy sd and window. As a check,
   each structure's mobility ratio new/old must equal the Marcus rate ratio of the two
   lambda+ (every dimer shares lambda+, so the hopping mobility scales with the rate) to
   1e-6. The record's ``cpu_s`` (the cost of its CSP and transfer step, what a replay
   charges) is unchanged; ``recomputed_lambda`` has the values before, this step's CPU
   seconds, commit, date and reason.

Files are rewritten in place (order and all other records unchanged). Run nice'd:

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python data/esf/recompute_lambda.py
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

HERE = Path(__file__).resolve().parent
TEMPERATURE_K = 300.0
REASON = ("degenerate HOMO: xtb-reorg relaxes the cation at a low electronic temperature (10 K) from a "
          "displaced neutral minimum, so its Jahn-Teller relaxation is in lambda+ (sim_backends/reorg.py)")


def code_commit() -> str:
    """HEAD commit, with ``+dirty`` when the lambda/transfer/mobility code differs from it."""
    from recompute_transfer import code_commit as commit_of

    return commit_of(("sim_backends/reorg.py", "sim_backends/transfer.py", "sim_backends/mobility.py",
                      "sim_backends/esf.py"))


def read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def write(path: Path, recs: list[dict]) -> None:
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in recs))
    tmp.replace(path)


def new_lambda(smiles: str) -> dict:
    """The current xtb-reorg result of a molecule: lambda+, CPU s, the HOMO test, JT status."""
    from sim_backends.base import EvalInput
    from sim_backends.reorg import XtbReorgBackend

    r = XtbReorgBackend().evaluate(EvalInput(smiles))
    if not r.ok:
        raise SystemExit(f"{smiles}: xtb-reorg failed now: {r.reason}")
    return {"reorg_energy_kjmol": r.values["reorg_energy_kjmol"], "cpu_s": round(r.cpu_s, 2),
            "hole_manifold": r.extra.get("hole_manifold"), "jahn_teller": r.extra.get("jahn_teller")}


def marcus_factor(lam_new_kjmol: float, lam_old_kjmol: float) -> float:
    """Ratio of the Marcus hopping rates at two lambda+ (300 K): every dimer of a crystal shares
    lambda+, so a structure's hopping mobility scales exactly by it."""
    from sim_backends.mobility import EV_PER_KJMOL, marcus_rate

    return float(marcus_rate(10.0, lam_new_kjmol * EV_PER_KJMOL, TEMPERATURE_K)
                 / marcus_rate(10.0, lam_old_kjmol * EV_PER_KJMOL, TEMPERATURE_K))


def landscape_from(structures: list[dict], lm_old: dict) -> tuple[dict, float] | None:
    """The landscape mobility (the record's energy sd and window kept) and the global minimum's
    mobility over the ``structures`` that have one; None when none has."""
    from sim_backends.mobility import landscape_mobility

    ok = [s for s in structures if "mobility_hole_cm2Vs" in s]
    if not ok:
        return None
    sd = float(lm_old.get("energy_sd_kjmol", 4.5))
    window = float(lm_old.get("window_kjmol", 7.0))
    lm = landscape_mobility([s["energy_kjmol"] for s in ok], [s["mobility_hole_cm2Vs"] for s in ok],
                            sd, window_kjmol=window, temperature_K=TEMPERATURE_K)
    return ({"mean": lm.mean, "sd": lm.sd, "n_in_window": lm.n_in_window, "energy_sd_kjmol": sd,
             "window_kjmol": window}, min(ok, key=lambda s: s["energy_kjmol"])["mobility_hole_cm2Vs"])


def data_args(doc: str, argv: list[str] | None) -> argparse.Namespace:
    """The ``--data-dir`` / ``--dry-run`` command line of the data set's maintenance scripts."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--data-dir", default=str(HERE), help="directory of esf_<fidelity>.jsonl (default: data/esf)")
    ap.add_argument("--dry-run", action="store_true", help="report, write nothing")
    return ap.parse_args(argv)


def relandscape(rec: dict, lam_kjmol: float, jahn_teller: str | None) -> dict:
    """A quick/refined record with its structures' mobilities and the landscape mobility
    redone at ``lam_kjmol`` (transfer integrals recomputed from the stored CIFs)."""
    from sim_backends.base import BackendError, process_cpu_s
    from sim_backends.esf import structure_warnings
    from sim_backends.mobility import EV_PER_KJMOL, crystal_mobility
    from sim_backends.structures import load_crystal
    from sim_backends.transfer import crystal_transfer

    if rec.get("transfer_level") != "GFN2-xTB":
        raise SystemExit(f"{rec['smiles']}: transfer level {rec.get('transfer_level')!r} not supported here")
    c0 = process_cpu_s()
    lam_old = float(rec["lambda_hole_kjmol"])
    factor = marcus_factor(lam_kjmol, lam_old)
    out = dict(rec)
    structures = []
    before_s = []
    for s in rec.get("structures") or []:
        s = dict(s)
        before_s.append({"id": s.get("id"), **{k: s.get(k) for k in ("mobility_hole_cm2Vs", "mobility_hole_max_cm2Vs",
                                                                       "warnings") if k in s}})
        if not s.get("cif") or "mobility_hole_cm2Vs" not in s:
            structures.append(s)
            continue
        try:
            tr = crystal_transfer(load_crystal(s["cif"], rec["smiles"]), "gfn2-xtb", 4.0)
            values, _ = crystal_mobility(tr, {"hole": lam_kjmol * EV_PER_KJMOL}, TEMPERATURE_K)
        except BackendError as exc:
            raise SystemExit(f"{rec['smiles']} {s.get('id')}: transfer failed now: {exc}") from None
        ratio = values["mobility_hole_cm2Vs"] / s["mobility_hole_cm2Vs"]
        if abs(ratio / factor - 1.0) > 1e-6:
            raise SystemExit(f"{rec['smiles']} {s.get('id')}: mobility ratio {ratio:.8g} != Marcus factor "
                             f"{factor:.8g}: the transfer integrals changed since the record was made")
        s.update({"mobility_hole_cm2Vs": values["mobility_hole_cm2Vs"],
                  "mobility_hole_max_cm2Vs": values["mobility_hole_max_cm2Vs"],
                  "warnings": structure_warnings(tr, "GFN2-xTB", jahn_teller), "notes": tr.notes})
        structures.append(s)
    out["structures"] = structures
    lm_old = rec.get("landscape_mobility_hole_cm2Vs") or {}
    before = {"lambda_hole_kjmol": lam_old, "landscape_mobility_hole_cm2Vs": lm_old.get("mean"),
              "landscape_sd": lm_old.get("sd"),
              "global_minimum_mobility_hole_cm2Vs": rec.get("global_minimum_mobility_hole_cm2Vs"),
              "structures": before_s}
    land = landscape_from(structures, lm_old)
    if land is not None:
        out["landscape_mobility_hole_cm2Vs"], out["global_minimum_mobility_hole_cm2Vs"] = land
    out["lambda_hole_kjmol"] = lam_kjmol
    out["lambda_jahn_teller"] = jahn_teller
    out["recomputed_lambda"] = {"what": "lambda+ (xtb-reorg), transfer integrals from the stored CIFs, mobilities, "
                                        "landscape mobility (CSP kept)", "reason": REASON,
                                "marcus_factor": factor, "cpu_s": round(process_cpu_s() - c0, 2), "before": before}
    return out


def main(argv: list[str] | None = None) -> int:
    from sim_backends.base import process_cpu_s

    args = data_args(__doc__, argv)
    data = Path(args.data_dir)
    commit = code_commit()
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    c0 = process_cpu_s()
    proxies = read(data / "esf_proxy.jsonl")
    new: dict[str, dict] = {}
    print(f"{'molecule':34s} {'HOMO manifold':>13s} {'lambda+ before':>14s} {'after':>10s}  status")
    for r in proxies:
        if "reorg_energy_kjmol" not in r:
            continue
        n = new_lambda(r["smiles"])
        m = n["hole_manifold"] or {}
        degenerate = int(m.get("n", 1)) > 1
        if not degenerate and n["reorg_energy_kjmol"] != r["reorg_energy_kjmol"]:
            raise SystemExit(f"{r['smiles']}: non-degenerate HOMO but lambda+ {n['reorg_energy_kjmol']!r} != "
                             f"stored {r['reorg_energy_kjmol']!r}: not the code that made the data set")
        if degenerate:
            new[r["smiles"]] = n
            print(f"{r.get('name', r['smiles'])[:34]:34s} {m.get('n'):>4d} ({m.get('splitting_meV'):.3f} meV)"
                  f" {r['reorg_energy_kjmol']:14.4f} {n['reorg_energy_kjmol']:10.4f}  {n['jahn_teller']}", flush=True)
    cpu_proxy = process_cpu_s() - c0
    print(f"{len(proxies)} proxies run, {len(new)} with a degenerate HOMO; {cpu_proxy:.1f} CPU s")
    out_proxy = []
    for r in proxies:
        n = new.get(r["smiles"])
        if n is not None:
            r = {**r, "reorg_energy_kjmol": n["reorg_energy_kjmol"], "jahn_teller": n["jahn_teller"],
                 "cpu_s": n["cpu_s"],
                 "recomputed_lambda": {"reason": REASON, "code_commit": commit, "date": date,
                                       "hole_manifold": n["hole_manifold"],
                                       "before": {"reorg_energy_kjmol": r["reorg_energy_kjmol"], "cpu_s": r["cpu_s"]}}}
        out_proxy.append(r)
    results = {"proxy": out_proxy}
    for fid in ("quick", "refined"):
        recs = read(data / f"esf_{fid}.jsonl")
        outs = []
        for r in recs:
            n = new.get(r["smiles"])
            if n is None or r.get("error"):
                outs.append(r)
                continue
            x = relandscape(r, n["reorg_energy_kjmol"], n["jahn_teller"])
            x["recomputed_lambda"].update({"code_commit": commit, "date": date})
            b = x["recomputed_lambda"]["before"]
            print(f"  {fid:8s} {r.get('name', r['smiles'])[:30]:30s} lambda+ {b['lambda_hole_kjmol']:.3f} -> "
                  f"{x['lambda_hole_kjmol']:.3f} kJ/mol; landscape mu_h {b['landscape_mobility_hole_cm2Vs']:.4g} -> "
                  f"{x['landscape_mobility_hole_cm2Vs']['mean']:.4g} cm2/(V s)  "
                  f"({x['recomputed_lambda']['cpu_s']:.1f} CPU s)", flush=True)
            outs.append(x)
        results[fid] = outs
    print(f"total {process_cpu_s() - c0:.1f} CPU s")
    if not args.dry_run:
        for fid, recs in results.items():
            write(data / f"esf_{fid}.jsonl", recs)
        print("rewritten: " + ", ".join(f"esf_{f}.jsonl" for f in results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
