"""Atom typing of the fragment surrogate's dimer descriptor (sim_backends.fragment_terms)."""

import numpy as np
import pytest

from sim_backends.base import SetupError
from sim_backends.fragment_terms import dimer_descriptor, element_pairs, feature_names, site_types

# formic acid, planar: H-C(=O)-O-H
SYMBOLS = ["C", "O", "O", "H", "H"]
POS = np.array([[0.0, 0.0, 0.0], [1.20, 0.0, 0.0], [-0.70, 1.15, 0.0], [-0.55, -0.95, 0.0],
                [-0.10, 1.90, 0.0]])


def test_polar_h_types_only_the_donor_hydrogen():
    assert site_types(SYMBOLS, POS) == SYMBOLS
    assert site_types(SYMBOLS, POS, "polar-h") == ["C", "O", "O", "H", "Hp"]
    assert site_types(["N", "H", "H", "H"], np.array([[0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]),
                      "polar-h") == ["N", "Hp", "Hp", "Hp"]
    with pytest.raises(SetupError, match="unknown dimer descriptor"):
        site_types(SYMBOLS, POS, "multipole")


def test_typed_descriptor_splits_the_h_contact_sums():
    types = site_types(SYMBOLS, POS, "polar-h")
    pairs = element_pairs(types)
    assert pairs == ["C-C", "C-H", "C-Hp", "C-O", "H-H", "H-Hp", "H-O", "Hp-Hp", "Hp-O", "O-O"]
    assert len(feature_names(types)) == 3 * len(pairs)
    shifted = POS + np.array([0.0, 0.0, 3.2])
    typed = dimer_descriptor(types, POS, types, shifted, pairs).reshape(len(pairs), -1)
    plain_pairs = element_pairs(SYMBOLS)
    plain = dimer_descriptor(SYMBOLS, POS, SYMBOLS, shifted, plain_pairs).reshape(len(plain_pairs), -1)
    # the H...O sums of the typed descriptor add up to the element descriptor's
    undo = lambda v: np.expm1(v) / 1000.0  # noqa: E731
    np.testing.assert_allclose(undo(typed[pairs.index("H-O")]) + undo(typed[pairs.index("Hp-O")]),
                               undo(plain[plain_pairs.index("H-O")]), rtol=1e-12)
