"""The recovery benchmark's hydrogen check: a match must put the hydrogens on the same heavy atoms."""

import sys
from types import SimpleNamespace

from conftest import ROOT


def test_swapping_which_oxygen_carries_the_hydrogen_breaks_the_match():
    """Oxalic acid alpha: relabelling the two hydroxyl oxygens of each molecule is what the
    check sees; with the C=O and C-OH oxygens swapped, the heavy atoms still match (the
    benchmark's heavy-atom definition) but the protonation-aware match does not."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from csp_recovery import MATCH, hydrogen_check, protonated_heavy_atoms, reference_structure
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from sim_backends.csp.dedupe import heavy_atoms

    ref = reference_structure("oxalic_acid_alpha")
    n_mol = sum(1 for sp in ref.species if sp.symbol == "C") // 2
    lab = protonated_heavy_atoms(ref)
    assert [sp.symbol for sp in lab.species].count("Se") == 2 * n_mol  # the two C-O(H) per molecule
    assert [sp.symbol for sp in lab.species].count("O") == 2 * n_mol  # the two C=O
    swapped = lab.copy()
    swapped.replace_species({"O": "Se", "Se": "O"})
    sm = StructureMatcher(**MATCH, scale=True, primitive_cell=True, attempt_supercell=True)
    assert sm.fit(lab, lab) and not sm.fit(lab, swapped)
    as_o = swapped.copy()
    as_o.replace_species({"Se": "O"})
    assert sm.fit(heavy_atoms(ref, keep_h=False), as_o)  # heavy atoms alone cannot tell
    assert hydrogen_check(ref, SimpleNamespace(structure=ref))["h_sites_match"]
