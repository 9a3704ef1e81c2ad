"""Crystal structure prediction (CSP) for rigid organic molecules.

Modules:
    rigid: :class:`~sim_backends.csp.rigid.RigidMolecule`, a rigid molecule in its
        principal-axes frame with atomic point charges and W99 atom types.
    charges: restrained ESP (RESP-style) point charges from pyscf, and GFN2-xTB charges.
    forcefield: :class:`~sim_backends.csp.forcefield.LatticeEnergyModel`, the W99
        exp-6 repulsion-dispersion plus Ewald point-charge lattice energy on torch.
    spacegroups, trials, minimise, dedupe, landscape, run, backend: the search.

Importing this package is cheap: torch, pyscf and rdkit are imported inside functions.
"""

from typing import Any

#: the trial budget of a search when none is given (``crystal-agent csp``, the ``csp-ff``
#: backend): with converged sampling the search stops as soon as every space group's
#: low-energy region is converged (1,920-4,480 trials on the 17 rigid X23/COD systems of
#: benchmarks/csp_recovery.py), so this is a ceiling, not the usual count
DEFAULT_TRIAL_BUDGET = 10_000

#: the point charges of a rigid-molecule search when none are given (``crystal-agent csp``, the
#: ``csp-ff`` backend, :func:`~sim_backends.csp.run.run_csp`): RESP fitted to the HF/6-31G* ESP
#: with off-atom lone-pair sites on the N acceptors (:mod:`sim_backends.csp.charges`,
#: ``resp-lpn``); the ESF levels keep their own default (``sim_backends/esf.py``)
DEFAULT_CHARGES = "resp-lpn"


def __getattr__(name: str) -> Any:
    """``from sim_backends.csp import run_csp`` (loaded on first use)."""
    if name == "run_csp":
        from sim_backends.csp.run import run_csp

        return run_csp
    raise AttributeError(f"module 'sim_backends.csp' has no attribute {name!r}")
