"""validate_smiles refuses an unsupported element before it counts fragments (newuser45b #8):
a metal complex or salt written in fragments is refused for the element that no rewriting
into one molecule could make treatable."""

import pytest

from sim_backends.base import SetupError
from sim_backends.molecule import validate_smiles


@pytest.mark.parametrize("smiles, element", [
    ("[Fe+2].c1cc[cH-]c1.c1cc[cH-]c1", "Fe"),  # ferrocene as written in the user's pool
    ("[Na+].[Cl-]", "Na"),
])
def test_unsupported_element_is_the_reason_before_fragments(smiles, element):
    with pytest.raises(SetupError) as info:
        validate_smiles(smiles)
    msg = str(info.value)
    assert f"unsupported element(s) {element}" in msg
    assert "fragments" not in msg


def test_fragments_of_supported_elements_still_refused_as_fragments():
    with pytest.raises(SetupError, match="2 fragments; give one molecule"):
        validate_smiles("c1ccccc1.O")
