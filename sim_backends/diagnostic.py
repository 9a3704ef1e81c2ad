"""A diagnostic backend for checking an executor or a cluster end to end.

It computes a trivial but real descriptor (the number of heavy atoms of the molecule) after an optional delay, and can be told to fail in each of the
ways a real backend fails, so operators can see how their cluster and campaign handle
it (``crystal-agent backends`` lists it; campaigns should not optimise with it):

* ``mode="ok"``: sleep ``sleep_s`` seconds, return ``n_heavy_atoms``;
* ``mode="raise"``: raise an unexpected exception inside the backend;
* ``mode="run_error"``: a retryable run failure (like an SCF that did not converge);
* ``mode="exit"``: kill the worker process (like a segfault in a native library).
"""

from __future__ import annotations

import os
import time
from typing import Any

from sim_backends import params as check
from sim_backends.base import Backend, EvalInput, RunError, SetupError


class DiagnosticBackend(Backend):
    name = "diagnostic"
    version = "1"
    fidelity = 0
    target = "molecule"
    computes = ("n_heavy_atoms",)
    objective_key = "n_heavy_atoms"
    description = "executor self-test: heavy-atom count after a delay; can fail on purpose"
    internal = True
    params_schema = {
        "mode": check.one_of("ok", "raise", "run_error", "exit"), "sleep_s": check.number(0.0),
        "fail_smiles": check.strings,
    }

    def cost_estimate(self, inp: EvalInput) -> float:
        return float(self.params.get("sleep_s", 0.0)) + 0.01

    def _evaluate(self, inp: EvalInput) -> tuple[dict[str, float], dict[str, Any]]:
        from rdkit import Chem

        from sim_backends.molecule import validate_smiles

        n_heavy = Chem.MolFromSmiles(validate_smiles(inp.smiles)).GetNumHeavyAtoms()
        mode = inp.params.get("mode", "ok")
        only = inp.params.get("fail_smiles")
        if only is not None and inp.smiles not in only:
            mode = "ok"
        time.sleep(float(inp.params.get("sleep_s", 0.0)))
        if mode == "raise":
            raise ZeroDivisionError("diagnostic backend asked to raise")
        if mode == "run_error":
            raise RunError("diagnostic run failure (retryable)")
        if mode == "exit":
            os._exit(13)
        if mode != "ok":
            raise SetupError(f"unknown diagnostic mode {mode!r}")
        return {"n_heavy_atoms": float(n_heavy)}, {"pid": os.getpid()}
