"""Replays of a stored two-level CSP landscape as backends, for fast stage tests.

``data/landscapes/formamide_big`` holds 114 formamide minima of our CSP engine (W99
exp-6 + RESP, rigid molecule) and the periodic GFN2-xTB single point of each
(tblite, at the force-field geometry; README there). Two backends serve it back:

* ``replay-csp`` (molecule level): for formamide, the ``n`` lowest force-field minima as
  a CSP result (``extra["landscape"]`` records with CIFs, as ``csp-ff`` returns them);
  any other molecule is a setup failure (no stored landscape);
* ``replay-crystal`` (structure level): a structure's stored GFN2-xTB lattice energy
  relative to the lowest structure of the level, kJ/mol per molecule (``energy_kjmol``).

Registered on import (in this process: use them with the local executor).
"""

from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path
from typing import Any

from sim_backends.base import Backend, EvalInput, SetupError
from sim_backends.registry import register

ROOT = Path(__file__).resolve().parents[2]
LANDSCAPE = ROOT / "data" / "landscapes" / "formamide_big"
SMILES = "NC=O"


@lru_cache(maxsize=4)
def stored_minima(n: int) -> tuple[dict[str, Any], ...]:
    """The ``n`` lowest force-field minima with their CIF and both stored energies."""
    from ase.io import read
    from pymatgen.io.ase import AseAtomsAdaptor
    from pymatgen.io.cif import CifWriter

    rows = {r["id"]: r for r in csv.DictReader((LANDSCAPE / "formamide_big_landscape.csv").open())}
    frames = read(LANDSCAPE / "formamide_big_ff.extxyz", index=":")
    frames = sorted(frames, key=lambda a: float(rows[a.info["id"]]["E_ff_kJmol_per_mol"]))[:n]
    out = []
    for atoms in frames:
        r = rows[atoms.info["id"]]
        st = AseAtomsAdaptor.get_structure(atoms)
        out.append({"id": atoms.info["id"], "energy_kjmol": float(r["E_ff_kJmol_per_mol"]),
                    "density_gcm3": float(r["density_gcm3"]), "space_group": None,
                    "z": int(r["Z"]), "multiplicity": 1, "cif": str(CifWriter(st)),
                    "xtb_kjmol": float(r["dE_xtb_kJmol_per_mol"])})
    return tuple(out)


class ReplayCspBackend(Backend):
    name = "replay-csp"
    version = "1"
    target = "molecule"
    computes = ("n_minima", "global_min_energy_kjmol")
    objective_key = "global_min_energy_kjmol"
    internal = True

    def cost_estimate(self, inp: EvalInput) -> float:
        return 60.0

    def _evaluate(self, inp: EvalInput) -> tuple[dict[str, float], dict[str, Any]]:
        from sim_backends.molecule import validate_smiles

        if validate_smiles(inp.smiles) != validate_smiles(SMILES):
            raise SetupError(f"replay-csp: no stored landscape for {inp.smiles}")
        minima = stored_minima(int(inp.params.get("n", 12)))
        records = [{k: v for k, v in m.items() if k != "xtb_kjmol"} for m in minima]
        return ({"n_minima": float(len(records)), "global_min_energy_kjmol": records[0]["energy_kjmol"]},
                {"landscape": records})


class ReplayCrystalBackend(Backend):
    name = "replay-crystal"
    version = "1"
    fidelity = 1
    target = "structure"
    computes = ("energy_kjmol",)
    objective_key = "energy_kjmol"
    internal = True

    def cost_estimate(self, inp: EvalInput) -> float:
        """A size-based prior (CPU s): ~ (atoms in the cell)^2, as for periodic xTB; 0 without
        a structure (the backend contract: no estimate before the structure is known)."""
        from pymatgen.core import Structure

        if not inp.structure_cif:
            return 0.0
        return 0.01 * len(Structure.from_str(inp.structure_cif, fmt="cif")) ** 2

    def _evaluate(self, inp: EvalInput) -> tuple[dict[str, float], dict[str, Any]]:
        sid = (inp.structure_id or "").split("-", 1)[-1]
        stored = _stored_xtb()
        if sid not in stored:
            raise SetupError(f"replay-crystal: no stored energy for structure {inp.structure_id!r}")
        return {"energy_kjmol": stored[sid]}, {"level": "GFN2-xTB periodic (stored)"}


@lru_cache(maxsize=1)
def _stored_xtb() -> dict[str, float]:
    return {r["id"]: float(r["dE_xtb_kJmol_per_mol"])
            for r in csv.DictReader((LANDSCAPE / "formamide_big_landscape.csv").open())}


register("replay-csp", f"{__name__}:ReplayCspBackend")
register("replay-crystal", f"{__name__}:ReplayCrystalBackend")
