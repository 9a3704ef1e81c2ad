"""Benchmark ``scf_guess_campaign``: examples/dft_refine.toml end to end, SCF warm starts on and off.

Runs the campaign of ``examples/dft_refine.toml`` (GFN2-xTB molecule stage, CSP, fragment
PBE-D3(BJ)/def2-SVP refinement of the structures the agent picks) twice, with the
refinement backend's ``scf_guess`` = "default" (PySCF's minao guess for every SCF) and
"auto" (warm starts, :mod:`sim_backends.scf_guess`), each in a fresh campaign directory
under ``--runs-dir`` (a temporary directory by default). Everything else is the same
config, seed included. The example is ``synchronous = true``: its decisions depend only on
the results, so the comparison is not decided by which worker happens to finish first
(asynchronous runs of the same mode already differ from one another under load).

Figures: DFT evaluations, their CPU seconds (measured in the workers, as the budget
counts them), Fock builds and SCF fallbacks summed over the fragment-DFT evaluations,
wall seconds of each whole campaign, and whether the two campaigns made the same
decisions: the same structures refined in the same order (the ``dft-crystal``
evaluations ordered by submission) and the same molecule-stage evaluations. Lattice
energies of the structures both refined: largest difference, kJ/mol.

Run:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scf_guess_campaign.py [--runs-dir DIR]
Writes benchmarks/results/scf_guess_campaign.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "dft_refine.toml"
MODES = ("default", "auto")


def _toml_value(v: object) -> str:
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(v) if not isinstance(v, bool) else ("true" if v else "false")


def _write_toml(cfg: dict, path: Path) -> None:
    lines, tables = [], []
    for k, v in cfg.items():
        if isinstance(v, dict):
            tables.append((k, v))
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            tables.append((k, v))
        else:
            lines.append(f"{k} = {_toml_value(v)}")
    for k, v in tables:
        for item in (v if isinstance(v, list) else [v]):
            lines.append(f"\n[[{k}]]" if isinstance(v, list) else f"\n[{k}]")
            lines += [f"{kk} = {_toml_value(vv)}" for kk, vv in item.items()]
    path.write_text("\n".join(lines) + "\n")


def run_mode(mode: str, runs_dir: Path) -> dict:
    cfg = tomllib.loads(CONFIG.read_text())
    cfg["pool"] = str((CONFIG.parent / cfg["pool"]).resolve())
    cfg["structures"]["refine"]["params"]["scf_guess"] = mode
    path = runs_dir / f"dft_refine_{mode}.toml"
    _write_toml(cfg, path)
    name = f"scf-guess-{mode}"
    t0 = time.perf_counter()
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "crystal-agent"), "run", str(path), "--name", name,
                           "--runs-dir", str(runs_dir)], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"error: campaign with scf_guess={mode} failed: {proc.stderr.strip().splitlines()[-1:]}")
    con = sqlite3.connect(runs_dir / name / "store.sqlite")
    rows = con.execute("SELECT backend, structure_id, status, values_json, extra_json, cpu_s, molecule_id "
                       "FROM evaluations ORDER BY submitted_at, id").fetchall()
    dft = [r for r in rows if r[0] == "dft-crystal"]
    extras = [json.loads(r[4]) for r in dft]
    return {
        "mode": mode, "campaign_wall_s": round(wall, 1),
        "n_evaluations": len(rows), "n_dft": len(dft),
        "dft_cpu_s": round(sum(r[5] for r in dft), 1),
        "fock_builds": sum(int(x.get("scf_fock_builds_total", 0)) for x in extras),
        "fallbacks": sum(len(x.get("scf_fallbacks", [])) for x in extras),
        "dft_order": [r[1] for r in dft],
        "other_order": [(r[0], r[6]) for r in rows if r[0] != "dft-crystal"],
        "energies": {r[1]: json.loads(r[3]).get("energy_kjmol") for r in dft if r[2] == "ok"},
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs-dir", default=None, help="campaign directories (default: a temporary directory)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        runs_dir = Path(args.runs_dir or tmp).resolve()
        runs_dir.mkdir(parents=True, exist_ok=True)
        res = {m: run_mode(m, runs_dir) for m in MODES}
    d, a = res["default"], res["auto"]
    common = set(d["energies"]) & set(a["energies"])
    max_de = max((abs(d["energies"][k] - a["energies"][k]) for k in common), default=None)
    same = d["dft_order"] == a["dft_order"] and d["other_order"] == a["other_order"]
    print("examples/dft_refine.toml, fragment PBE-D3(BJ)/def2-SVP refinement (CP, 3.0 A, grid 0, conv_tol 1e-7 Eh)")
    print(f"{'scf_guess':<10}{'evals':>7}{'DFT evals':>10}{'DFT CPU s':>11}{'Fock builds':>13}{'fallbacks':>11}"
          f"{'campaign wall s':>17}")
    for m in MODES:
        r = res[m]
        print(f"{m:<10}{r['n_evaluations']:>7}{r['n_dft']:>10}{r['dft_cpu_s']:>11.1f}{r['fock_builds']:>13}"
              f"{r['fallbacks']:>11}{r['campaign_wall_s']:>17.1f}")
    print(f"same decisions (refined structures in order, molecule evaluations): {same}; "
          f"max |dE_latt| over {len(common)} common structures: "
          + (f"{max_de:.2e} kJ/mol" if max_de is not None else "n/a"))
    result = {"benchmark": "scf_guess_campaign", "config": "examples/dft_refine.toml",
              "dft_cpu_s": {m: res[m]["dft_cpu_s"] for m in MODES},
              "dft_cpu_speedup": round(d["dft_cpu_s"] / a["dft_cpu_s"], 3) if a["dft_cpu_s"] else None,
              "fock_builds": {m: res[m]["fock_builds"] for m in MODES},
              "fock_build_reduction": round(1 - a["fock_builds"] / d["fock_builds"], 4) if d["fock_builds"] else None,
              "n_dft": {m: res[m]["n_dft"] for m in MODES},
              "fallbacks": {m: res[m]["fallbacks"] for m in MODES},
              "campaign_wall_s": {m: res[m]["campaign_wall_s"] for m in MODES},
              "same_decisions": same, "dft_order": {m: res[m]["dft_order"] for m in MODES},
              "max_abs_lattice_energy_diff_kjmol": max_de}
    out = ROOT / "benchmarks" / "results" / "scf_guess_campaign.json"
    line = json.dumps(result)
    out.write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
