"""The fragment surrogate's dimer descriptor (sim_backends.fragment_terms): atom typing, extra terms."""

import numpy as np
import pytest

from sim_backends.base import SetupError
from sim_backends.fragment_terms import dimer_descriptor, element_pairs, feature_names, hbond_sum, site_types

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


def test_extra_terms_append_columns_and_keep_the_element_sums():
    pairs = element_pairs(SYMBOLS)
    shifted = POS + np.array([0.3, -0.2, 3.1])
    plain = dimer_descriptor(SYMBOLS, POS, SYMBOLS, shifted, pairs)
    assert len(plain) == len(feature_names(SYMBOLS)) == 3 * len(pairs)
    for descriptor, extra in (("element+hbond", 1), ("element+r6", len(pairs)), ("element+r6+hbond", len(pairs) + 1)):
        row = dimer_descriptor(SYMBOLS, POS, SYMBOLS, shifted, pairs, descriptor)
        assert len(row) == len(feature_names(SYMBOLS, descriptor)) == len(plain) + extra
        np.testing.assert_array_equal(row[:len(plain)], plain)
    four = dimer_descriptor(SYMBOLS, POS, SYMBOLS, shifted, pairs, "element+2A").reshape(len(pairs), 4)
    np.testing.assert_array_equal(four[:, :3].reshape(-1), plain)
    assert feature_names(SYMBOLS, "element+2A")[3] == "C-C@2A"
    assert site_types(SYMBOLS, POS, "element+hbond") == SYMBOLS
    with pytest.raises(SetupError, match="unknown dimer descriptor"):
        feature_names(SYMBOLS, "element+r12")


def test_hbond_term_is_largest_for_a_linear_hydrogen_bond():
    """Donor O-H (O at 0, H at 0.97 A along x) towards an acceptor O 1.8 A beyond H: full
    weight when X-H...Y is linear, less when bent, none behind the donor, none without a donor H."""
    donor_sym, donor = ["O", "H"], np.array([[0.0, 0.0, 0.0], [0.97, 0.0, 0.0]])
    acc_sym = ["O"]
    linear = hbond_sum(donor_sym, donor, acc_sym, np.array([[0.97 + 1.8, 0.0, 0.0]]))
    assert linear == pytest.approx(np.exp(-1.8 / 0.25))
    bent = hbond_sum(donor_sym, donor, acc_sym, np.array([[0.97 + 1.8 * np.cos(1.0), 1.8 * np.sin(1.0), 0.0]]))
    assert bent == pytest.approx(np.exp(-1.8 / 0.25) * ((1 + np.cos(1.0)) / 2) ** 2)
    assert hbond_sum(donor_sym, donor, acc_sym, np.array([[0.97 - 1.8, 0.0, 0.0]])) == pytest.approx(0.0, abs=1e-12)
    assert hbond_sum(["C", "H"], donor, acc_sym, np.array([[2.77, 0.0, 0.0]])) == 0.0
    # the dimer column counts both directions
    pairs = element_pairs(donor_sym)
    row = dimer_descriptor(donor_sym, donor, donor_sym, np.array([[2.77, 0.0, 0.0], [3.74, 0.0, 0.0]]), pairs,
                           "element+hbond")
    assert np.expm1(row[-1]) / 1000 == pytest.approx(linear)
