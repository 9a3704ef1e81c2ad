"""The molecule surrogate as an MLflow pyfunc model.

Loaded with ``mlflow.pyfunc.load_model(uri)``; ``predict`` takes a DataFrame with a
``smiles`` column and returns, for every level of the campaign's ladder (cheapest first),
columns ``<objective>_<level>_mean`` and ``<objective>_<level>_std`` (the prediction and
its 1-sigma in the objective's unit, e.g. ``reorg_energy_kjmol_xtb-reorg_mean`` in kJ/mol;
``<level>`` is the level's backend name, see :func:`output_columns`); a SMILES the campaign
would refuse in its pool (:func:`agent.pool.validate_entry`: unparsable, an unsupported
element such as a metal, several fragments, charged, radical, too large) gets NaN in every
column. The logged model's
tags say the unit and level of theory of each column (``output.<column>``). ``<objective>``
is the name the level's value is shown under (the ESF proxy's
``log10_reference_crystal_mobility_hole``, see :func:`agent.summary.shown_name`).

For an objective physics bounds from below (a reorganisation energy, a mobility: the
state's ``"lower_bound"``), ``_mean`` / ``_std`` are those of the GP's Gaussian truncated
at the bound (:func:`agent.report.bounded_prediction`), never a value physics forbids; the
untruncated GP posterior is ``_gp_mean`` / ``_gp_std`` beside them.

A model logged before the columns were named (its state has no ``"columns"``) still
loads, and predicts its old columns ``mean_<fidelity>`` / ``std_<fidelity>``.

This module imports mlflow at import time; only :mod:`agent.tracking` imports it.
"""

from __future__ import annotations

import pickle

import mlflow.pyfunc
import numpy as np
import pandas as pd


def output_columns(objective: str, levels: list[str], shown: list[str] | None = None) -> list[str]:
    """The column stem ``<value>_<level>`` of each fidelity (``levels``: the backend names,
    cheapest first; ``<value>``: ``shown[f]``, the name the level's value of the objective
    is shown under, default ``objective``); a level named twice gets its fidelity appended
    (``_f<i>``)."""
    stems = []
    for f, name in enumerate(levels):
        stem = f"{shown[f] if shown else objective}_{name}"
        stems.append(f"{stem}_f{f}" if levels.count(name) > 1 else stem)
    return stems


class MoleculeSurrogateModel(mlflow.pyfunc.PythonModel):
    """Artifacts: ``state`` -> a pickle of ``{"state_dict", "n_fidelities", "fingerprint",
    "columns", "lower_bound"}`` (``columns``: the output column stem per fidelity; absent in
    models logged before it existed, which predict ``mean_<f>`` / ``std_<f>``;
    ``lower_bound``: the physical lower bound of the objective or None)."""

    def load_context(self, context):
        from agent.surrogates.molecule_gp import MoleculeSurrogate

        with open(context.artifacts["state"], "rb") as fh:
            blob = pickle.load(fh)
        self.fingerprint = blob["fingerprint"]
        self.n_fidelities = blob["n_fidelities"]
        self.columns = blob.get("columns")
        self.lower_bound = blob.get("lower_bound")
        self.surrogate = MoleculeSurrogate.load_state_dict(blob["state_dict"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from agent.pool import validate_entry
        from agent.surrogates.fingerprints import morgan_fingerprints

        smiles = list(model_input["smiles"])
        # a molecule the campaign would refuse in its pool (unparsable, unsupported element, ...)
        # gets NaN, not the prediction of an empty or meaningless fingerprint
        checked = [validate_entry(s) for s in smiles]
        readable = np.array([ok for _, ok, _ in checked], dtype=bool)
        usable = [canon if ok else "C" for canon, ok, _ in checked]  # canonical, as the pool; placeholders masked below
        fps = morgan_fingerprints(usable, **self.fingerprint)
        desc = None
        if getattr(self.surrogate, "uses_descriptors", False):
            from agent.surrogates.molecule_gp import molecule_descriptors

            desc = molecule_descriptors(usable)
        out = {"smiles": smiles}
        columns = getattr(self, "columns", None)
        lower = getattr(self, "lower_bound", None)
        for f in range(self.n_fidelities):
            mean, std = self.surrogate.predict(fps, f, descriptors=desc)
            mean = np.where(readable, np.asarray(mean, dtype=float), np.nan)
            std = np.where(readable, np.asarray(std, dtype=float), np.nan)
            if columns and lower is not None:
                from agent.report import bounded_prediction

                out[f"{columns[f]}_mean"], out[f"{columns[f]}_std"] = bounded_prediction(mean, std, lower)
                out[f"{columns[f]}_gp_mean"], out[f"{columns[f]}_gp_std"] = mean, std
            elif columns:
                out[f"{columns[f]}_mean"], out[f"{columns[f]}_std"] = mean, std
            else:  # a model logged before its columns were named
                out[f"mean_{f}"], out[f"std_{f}"] = mean, std
        return pd.DataFrame(out)
