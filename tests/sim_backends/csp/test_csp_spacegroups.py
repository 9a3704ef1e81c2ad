"""Space-group operations of the CSP search: group axioms and agreement with pymatgen."""

from __future__ import annotations

import numpy as np
import pytest

from sim_backends.csp.spacegroups import (
    DEFAULT_SPACE_GROUPS, canonical_symbol, get_space_group, parse_space_groups,
)

EXPECTED = {  # symbol: (number, Z, crystal system)
    "P1": (1, 1, "triclinic"), "P-1": (2, 2, "triclinic"), "P2_1": (4, 2, "monoclinic"),
    "C2": (5, 4, "monoclinic"), "Cc": (9, 4, "monoclinic"), "P2_1/c": (14, 4, "monoclinic"),
    "C2/c": (15, 8, "monoclinic"), "P2_12_12_1": (19, 4, "orthorhombic"),
    "Pna2_1": (33, 4, "orthorhombic"), "Pbca": (61, 8, "orthorhombic"),
}


def _key(rot, tr):
    return (tuple(np.rint(rot).astype(int).ravel()), tuple(np.round(np.mod(tr, 1.0), 6) % 1.0))


@pytest.mark.parametrize("symbol", DEFAULT_SPACE_GROUPS)
def test_numbers_z_and_system(symbol):
    sg = get_space_group(symbol)
    assert (sg.number, sg.z, sg.crystal_system) == EXPECTED[symbol]


@pytest.mark.parametrize("symbol", DEFAULT_SPACE_GROUPS)
def test_operations_form_a_group(symbol):
    sg = get_space_group(symbol)
    ops = {_key(r, t) for r, t in zip(sg.rotations, sg.translations)}
    assert len(ops) == sg.z
    assert _key(np.eye(3), np.zeros(3)) in ops
    for r1, t1 in zip(sg.rotations, sg.translations):
        for r2, t2 in zip(sg.rotations, sg.translations):
            assert _key(r1 @ r2, r1 @ t2 + t1) in ops  # closure
        assert _key(np.linalg.inv(r1), -np.linalg.inv(r1) @ t1) in ops  # inverses


@pytest.mark.parametrize("symbol", DEFAULT_SPACE_GROUPS)
def test_operations_match_pymatgen(symbol):
    from pymatgen.symmetry.groups import SpaceGroup as PmgSpaceGroup

    sg = get_space_group(symbol)
    pmg = PmgSpaceGroup(symbol)
    assert pmg.int_number == sg.number
    # pymatgen may or may not list centring translations separately: compare orbits
    x = np.array([0.1234, 0.3456, 0.789])
    ours = {tuple(np.round(np.mod(p, 1.0), 6) % 1.0) for p in sg.apply(x)}
    theirs = {tuple(np.round(np.mod(op.operate(x), 1.0), 6) % 1.0) for op in pmg.symmetry_ops}
    assert ours == theirs


def test_spellings_and_bad_input():
    assert canonical_symbol("P21/c") == "P2_1/c"
    assert canonical_symbol("14") == "P2_1/c"
    assert canonical_symbol("p212121") == "P2_12_12_1"
    assert [g.symbol for g in parse_space_groups("P2_1/c, P-1,P21/c")] == ["P2_1/c", "P-1"]
    with pytest.raises(ValueError, match="unsupported space group"):
        get_space_group("P4_32_12")
    with pytest.raises(ValueError, match="unsupported space group"):
        parse_space_groups("P2_1/c,Fm-3m")
    with pytest.raises(ValueError, match="no space groups"):
        parse_space_groups("")


def test_other_settings_map_to_the_same_group_number():
    """newuser40 C4: P2_1/n (the common setting of No. 14) was refused. Every alias is a
    setting spglib's database lists under the number of the group it maps to."""
    import spglib

    from sim_backends.csp.spacegroups import _GROUPS, _SETTINGS, supported_groups_text

    settings: dict[str, set[int]] = {}
    for hall in range(1, 531):
        t = spglib.get_spacegroup_type(hall)
        full = "".join(p for p in t.international_full.split() if p != "1")  # P 1 2_1/n 1 -> P2_1/n
        for symbol in {full, t.international_short}:
            settings.setdefault(symbol, set()).add(t.number)
    for alias, name in _SETTINGS.items():
        assert settings.get(alias) == {_GROUPS[name][0]}, (alias, settings.get(alias), name)
        assert canonical_symbol(alias) == name
    assert [g.symbol for g in parse_space_groups("P2_1/n,P21/c,i2/a")] == ["P2_1/c", "C2/c"]
    assert "P2_1/c (14)" in supported_groups_text()


@pytest.mark.parametrize("given, message", [
    ("62", "unsupported space group 62 (Pnma); supported: P1 (1), P-1 (2)"),
    (" 3", "unsupported space group 3 (P2); supported:"),
    ("230", "unsupported space group 230 (Ia-3d); supported:"),
    ("231", "unsupported space group '231' (space-group numbers run from 1 to 230); supported:"),
    ("0", "unsupported space group '0' (space-group numbers run from 1 to 230); supported:"),
    ("Pnma", "unsupported space group 'Pnma'; supported: P1 (1)"),
])
def test_an_unsupported_number_is_named(given, message):
    """newuser41: `--space-groups 62` said "unsupported space group '62'"; the user may know
    the group by its symbol only. Symbols keep their message."""
    with pytest.raises(ValueError) as err:
        canonical_symbol(given)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_other_settings_are_noted_once_each():
    from sim_backends.csp.spacegroups import setting_notes

    assert setting_notes("P21/n, P-1,p2_1/n,I2/a,14") == [
        "P2_1/n is searched as P2_1/c (No. 14, standard setting); the CIFs are in P2_1/c",
        "I2/a is searched as C2/c (No. 15, standard setting); the CIFs are in C2/c"]
    assert setting_notes("P2_1/c,P-1") == setting_notes(None) == []
    assert setting_notes(["Pcab"]) == ["Pcab is searched as Pbca (No. 61, standard setting); the CIFs are in Pbca"]
