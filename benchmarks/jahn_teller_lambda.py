"""How much of a degenerate-HOMO molecule's GFN2-xTB lambda+ the Fermi smearing hides.

GFN2-xTB (tblite) smears the occupations at an electronic temperature of 300 K by
default, so the hole of a cation whose HOMO is degenerate is shared equally by the pair
and the cation keeps the neutral's symmetry: its Jahn-Teller relaxation is missing and
lambda+ comes out too small (sim_backends/reorg.py docstring). This benchmark computes the
four-point lambda+ = [E+(R0) - E+(R+)] + [E0(R+) - E0(R0)] twice per molecule: with the
default 300 K electronic temperature for the cation (``xtb-reorg`` with
``degenerate_cation_temperature_K = 0``, every molecule's treatment before the
degenerate-HOMO rule) and with 10 K (near-integer occupations), the cation relaxed from the
neutral minimum displaced by a fixed random 0.02 A so that it can break the symmetry; the
neutral always at 300 K. A molecule without a degenerate HOMO (naphthalene) is the control:
both must agree. The last columns are what ``xtb-reorg`` now returns with its defaults (its
own conformer and displacement; ``extra["jahn_teller"]``): the 10 K protocol for a
degenerate HOMO, the 300 K value when its 10 K SCF fails (benzene).

Geometries: RDKit ETKDG (seed 1) + MMFF, then GFN2-xTB BFGS to fmax 0.01 eV/A.
The last column is the factor by which the Marcus rate (hence the hopping mobility) of
the molecule changes at 300 K when lambda+ goes from the 300 K to the 10 K value.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/jahn_teller_lambda.py`` (a few CPU s);
writes ``benchmarks/results/jahn_teller_lambda.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MOLECULES = [("naphthalene", "c1ccc2ccccc2c1", False), ("benzene", "c1ccccc1", True),
             ("1,3,5-triazine", "c1ncncn1", True), ("triphenylene", "c1ccc2c(c1)c1ccccc1c1ccccc21", True),
             ("coronene", "c1cc2ccc3ccc4ccc5ccc6ccc1c1c2c3c4c5c61", True)]
TEMPERATURES_K = (300.0, 10.0)
EV_TO_KJMOL = 96.48533212


def _calc(charge: int, mult: int, t_el: float):
    from tblite.ase import TBLite

    return TBLite(method="GFN2-xTB", charge=charge, multiplicity=mult, verbosity=0,
                  electronic_temperature=t_el, max_iterations=500)


def _energy(symbols, pos, charge, mult, t_el):
    from ase import Atoms

    a = Atoms(symbols, positions=pos)
    a.calc = _calc(charge, mult, t_el)
    return float(a.get_potential_energy())


def _relax(symbols, pos, charge, mult, t_el):
    from ase import Atoms
    from ase.optimize import BFGS

    a = Atoms(symbols, positions=pos)
    a.calc = _calc(charge, mult, t_el)
    if not BFGS(a, logfile=None, maxstep=0.2).run(fmax=0.01, steps=800):
        raise RuntimeError("BFGS not converged")
    return float(a.get_potential_energy()), a.get_positions()


def lambda_plus(smiles: str, seed: int = 0) -> dict[str, float]:
    """lambda+ (kJ/mol) at each cation electronic temperature (module docstring)."""
    import numpy as np
    from rdkit import Chem
    from rdkit.Chem import AllChem

    m = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(m, randomSeed=1)
    AllChem.MMFFOptimizeMolecule(m)
    symbols = [a.GetSymbol() for a in m.GetAtoms()]
    e0, r0 = _relax(symbols, m.GetConformer().GetPositions(), 0, 1, 300.0)
    shake = np.random.default_rng(seed).normal(0.0, 0.02, r0.shape)
    out = {}
    for t in TEMPERATURES_K:
        try:
            ep, rp = _relax(symbols, r0 + shake, 1, 2, t)
            lam = (_energy(symbols, r0, 1, 2, t) - ep) + (_energy(symbols, rp, 0, 1, 300.0) - e0)
        except Exception as exc:  # noqa: BLE001 - an SCF/optimiser failure is a table entry
            out[f"{t:g}"] = float("nan")
            out[f"error_{t:g}"] = " ".join(str(exc).split())[:120]
            continue
        out[f"{t:g}"] = lam * EV_TO_KJMOL
    return out


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)  # no options; --help
    from sim_backends.base import process_cpu_s
    from sim_backends.mobility import EV_PER_KJMOL, marcus_rate

    c0 = process_cpu_s()
    rows = []
    from sim_backends.base import EvalInput
    from sim_backends.reorg import XtbReorgBackend

    print(f"{'molecule':16s} {'degenerate HOMO':>15s} {'lambda+ 300 K':>14s} {'lambda+ 10 K':>13s} {'rate factor':>12s}"
          f" {'xtb-reorg':>10s}  xtb-reorg Jahn-Teller status")
    for name, smi, degenerate in MOLECULES:
        t0 = process_cpu_s()
        lam = lambda_plus(smi)
        hi, lo = lam["300"], lam["10"]
        ok = hi == hi and lo == lo and hi > 0 and lo > 0
        factor = float(marcus_rate(10.0, lo * EV_PER_KJMOL) / marcus_rate(10.0, hi * EV_PER_KJMOL)) if ok \
            else float("nan")
        backend = XtbReorgBackend().evaluate(EvalInput(smi))
        now = backend.values.get("reorg_energy_kjmol", float("nan"))
        status = backend.extra.get("jahn_teller") or ("-" if backend.ok else f"failed: {backend.reason}")
        rows.append({"molecule": name, "smiles": smi, "degenerate_homo": degenerate,
                     "lambda_plus_kjmol_tel300": round(hi, 3) if hi == hi else None,
                     "lambda_plus_kjmol_tel10": round(lo, 3) if lo == lo else None,
                     "rate_factor_300K": round(factor, 4) if factor == factor else None,
                     "xtb_reorg_kjmol": round(now, 3) if now == now else None, "xtb_reorg_jahn_teller": status,
                     "errors": {k: v for k, v in lam.items() if k.startswith("error")},
                     "cpu_s": round(process_cpu_s() - t0, 2)})
        print(f"{name:16s} {str(degenerate):>15s} {hi:14.2f} {lo:13.2f} {factor:12.3f} {now:10.2f}  {status}",
              flush=True)
    print("lambda+ in kJ/mol (GFN2-xTB, cation electronic temperature 300 K = xtb-reorg before the degenerate-HOMO "
          "rule, or 10 K); rate factor = Marcus rate at 300 K with the 10 K lambda+ / with the 300 K one; "
          "xtb-reorg = the backend's value now (defaults)")
    result = {"benchmark": "jahn_teller_lambda", "rows": rows,
              "control_ok": abs(rows[0]["lambda_plus_kjmol_tel300"] - rows[0]["lambda_plus_kjmol_tel10"]) < 0.5,
              "cpu_s": round(process_cpu_s() - c0, 2), "date": time.strftime("%Y-%m-%d")}
    out = ROOT / "benchmarks" / "results" / "jahn_teller_lambda.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
