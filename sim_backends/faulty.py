"""A fault-injection backend for executor tests and the soak benchmark (internal: not
offered by ``crystal-agent backends``).

Each task computes a real but trivial value (the molecule's heavy-atom count) after
spending ``burn_s`` CPU seconds in a busy loop and ``sleep_s`` seconds asleep, unless
it was chosen to fail. Which tasks fail, and how, is a deterministic function of the
SMILES and ``seed`` (a hash mapped to [0, 1)), so a retried task fails the same way
and a run can be repeated:

* ``raise_fraction``: raise an unexpected exception (a failed result, not retried);
* ``crash_fraction``: kill the worker process with ``os._exit`` (a segfault or OOM
  kill as the executor sees it: retried, then recorded as failed);
* ``hang_fraction``: sleep ``hang_s`` seconds (default an hour), which only the
  executor's ``task_timeout_s`` ends.

Params: ``raise_fraction``, ``crash_fraction``, ``hang_fraction`` (each in [0, 1],
summing to at most 1), ``hang_s``, ``burn_s``, ``sleep_s``, ``seed``.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

from sim_backends import params as check
from sim_backends.base import Backend, EvalInput, ParamsError


def fault_of(smiles: str, params: dict[str, Any]) -> str:
    """``"raise"``, ``"crash"``, ``"hang"`` or ``"ok"``: what the backend does for ``smiles``."""
    digest = hashlib.sha256(f"{params.get('seed', 0)}:{smiles}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    edge = 0.0
    for mode in ("raise", "crash", "hang"):
        edge += float(params.get(f"{mode}_fraction", 0.0))
        if u < edge:
            return mode
    return "ok"


class FaultyBackend(Backend):
    name = "_faulty"
    version = "1"
    fidelity = 0
    target = "molecule"
    computes = ("n_heavy_atoms",)
    objective_key = "n_heavy_atoms"
    description = "fault injection: raises, crashes or hangs on chosen fractions of tasks"
    internal = True
    params_schema = {
        "raise_fraction": check.number(0.0, 1.0), "crash_fraction": check.number(0.0, 1.0),
        "hang_fraction": check.number(0.0, 1.0), "hang_s": check.number(0.0, lo_open=True),
        "burn_s": check.number(0.0), "sleep_s": check.number(0.0), "seed": check.integer(0),
    }

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        """The declared checks; the three fractions sum to at most 1."""
        super().check_params(params)
        fractions = [params.get(f"{m}_fraction", 0.0) for m in ("raise", "crash", "hang")]
        if sum(fractions) > 1.0:
            raise ParamsError("raise_fraction", f"the fractions sum to {sum(fractions):g} > 1")

    def __init__(self, **params: Any) -> None:
        self.check_params(params)
        super().__init__(**params)

    def cost_estimate(self, inp: EvalInput) -> float:
        return float(self.params.get("burn_s", 0.0)) + 0.01

    def _evaluate(self, inp: EvalInput) -> tuple[dict[str, float], dict[str, Any]]:
        from rdkit import Chem

        from sim_backends.molecule import validate_smiles

        mol = Chem.MolFromSmiles(validate_smiles(inp.smiles))  # SetupError for bad input
        p = inp.params
        mode = fault_of(inp.smiles, p)
        t_end = time.process_time() + float(p.get("burn_s", 0.0))
        x = 0
        while time.process_time() < t_end:  # CPU work the budget must be charged for
            x = (x * 1103515245 + 12345) % 2**31
        time.sleep(float(p.get("sleep_s", 0.0)))
        if mode == "raise":
            raise ArithmeticError("_faulty backend asked to raise")
        if mode == "crash":
            os._exit(17)
        if mode == "hang":
            time.sleep(float(p.get("hang_s", 3600.0)))
        return {"n_heavy_atoms": float(mol.GetNumHeavyAtoms())}, {"pid": os.getpid(), "mode": mode}
