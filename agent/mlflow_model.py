"""The molecule surrogate as an MLflow pyfunc model.

Loaded with ``mlflow.pyfunc.load_model(uri)``; ``predict`` takes a DataFrame with a
``smiles`` column and returns, for every fidelity ``f`` of the campaign's ladder,
columns ``mean_f`` and ``std_f`` (objective units, e.g. kJ/mol).

This module imports mlflow at import time; only :mod:`agent.tracking` imports it.
"""

from __future__ import annotations

import pickle

import mlflow.pyfunc
import pandas as pd


class MoleculeSurrogateModel(mlflow.pyfunc.PythonModel):
    """Artifacts: ``state`` -> a pickle of ``{"state_dict", "n_fidelities", "fingerprint"}``."""

    def load_context(self, context):
        from agent.surrogates.molecule_gp import MoleculeSurrogate

        with open(context.artifacts["state"], "rb") as fh:
            blob = pickle.load(fh)
        self.fingerprint = blob["fingerprint"]
        self.n_fidelities = blob["n_fidelities"]
        self.surrogate = MoleculeSurrogate.load_state_dict(blob["state_dict"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from agent.surrogates.fingerprints import morgan_fingerprints

        smiles = list(model_input["smiles"])
        fps = morgan_fingerprints(smiles, **self.fingerprint)
        desc = None
        if getattr(self.surrogate, "uses_descriptors", False):
            from agent.surrogates.molecule_gp import molecule_descriptors

            desc = molecule_descriptors(smiles)
        out = {"smiles": smiles}
        for f in range(self.n_fidelities):
            mean, std = self.surrogate.predict(fps, f, descriptors=desc)
            out[f"mean_{f}"] = mean
            out[f"std_{f}"] = std
        return pd.DataFrame(out)
