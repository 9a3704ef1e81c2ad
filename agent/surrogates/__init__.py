"""Surrogate models of the agent.

* :mod:`agent.surrogates.fingerprints` -- Morgan fingerprints and fast Tanimoto
  similarities between a large pool and a few query molecules.
* :mod:`agent.surrogates.molecule_gp` -- the molecule-level multi-fidelity Gaussian
  process (Tanimoto kernel x coregionalisation over the fidelity ladder).

Importing this package is cheap: torch, gpytorch and rdkit load inside functions.
"""
