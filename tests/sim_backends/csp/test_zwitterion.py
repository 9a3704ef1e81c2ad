"""A zwitterion (an amino acid) is refused with the reason, not "no conformer survived"
(newuser35 #10): in the gas phase GFN2-xTB moves its proton back to the carboxylate."""

from __future__ import annotations

import pytest


def test_a_zwitterion_is_refused_with_its_reason():
    from sim_backends.base import SetupError
    from sim_backends.csp.conformers import build_ensemble

    with pytest.raises(SetupError, match="the zwitterion is not a gas-phase minimum at GFN2-xTB") as err:
        build_ensemble("[NH3+][C@@H](C)C(=O)[O-]", charges="none", n_embed=3)
    assert "\n" not in str(err.value) and "amino acids" in str(err.value)


def test_only_a_protonated_base_with_a_separate_anion_counts_as_a_zwitterion():
    from rdkit import Chem

    from sim_backends.csp.conformers import _zwitterion

    assert _zwitterion(Chem.MolFromSmiles("[NH3+][C@@H](C)C(=O)[O-]"))
    assert not _zwitterion(Chem.MolFromSmiles("[O-][N+](=O)c1ccccc1CCO"))  # nitro
    assert not _zwitterion(Chem.MolFromSmiles("C[N+](C)(C)[O-]"))  # N-oxide
    assert not _zwitterion(Chem.MolFromSmiles("C[N+](C)(C)CC(=O)[O-]"))  # betaine: no proton to move
