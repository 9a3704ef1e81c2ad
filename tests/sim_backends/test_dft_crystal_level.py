"""The fragment-DFT level names a non-default quadrature grid and exact Coulomb integrals
(newuser35 #6: examples/dft_refine.toml runs on grid level 0, whose orientation error reaches
the stored monomer energies, and its level string did not say so)."""

from __future__ import annotations


def test_level_string_names_non_default_grid_and_fitting():
    from sim_backends.registry import backend_class

    cls = backend_class("dft-crystal")
    assert cls().level_of_theory() == \
        "fragment PBE-D3(BJ)/def2-svp two-body + RESP long-range electrostatics"
    assert cls(basis="def2-svp", grid_level=0, density_fit=False).level_of_theory().endswith(
        "(grid level 0, no density fitting)")
    assert cls(grid_level=3).level_of_theory().endswith("(grid level 3)")
