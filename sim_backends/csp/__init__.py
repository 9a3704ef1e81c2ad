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


def __getattr__(name: str) -> Any:
    """``from sim_backends.csp import run_csp`` (loaded on first use)."""
    if name == "run_csp":
        from sim_backends.csp.run import run_csp

        return run_csp
    raise AttributeError(f"module 'sim_backends.csp' has no attribute {name!r}")
