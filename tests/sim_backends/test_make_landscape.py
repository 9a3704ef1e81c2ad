"""make_landscape.py helpers: the physical-sanity filter and the long-range electrostatics."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from sim_backends.structures import Crystal

ROOT = Path(__file__).resolve().parents[2]
FF = ROOT / "data" / "landscapes" / "formamide_big" / "formamide_big_ff.extxyz"


@pytest.fixture(scope="module")
def ml():
    spec = importlib.util.spec_from_file_location("make_landscape", ROOT / "data" / "landscapes" / "make_landscape.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def frames():
    from ase.io import read

    return {str(a.info["id"]): a for a in read(str(FF), ":")}


def test_slab_minimum_is_excluded_and_bulk_kept(ml, frames):
    # m0114: hydrogen-bonded slabs separated by a vacuum gap along a (a = 18.5 A)
    slab, bulk = frames["m0114"], frames["m0001"]
    assert ml.contact_dimensionality(slab, 4.0) == 2
    assert ml.contact_dimensionality(bulk, 4.0) == 3
    assert ml.sanity_reason(bulk, 0.8, 4.0) is None
    assert "density" in ml.sanity_reason(slab, 0.8, 4.0)
    # with the density test disabled the contact network still catches it
    assert "2 lattice direction" in ml.sanity_reason(slab, 0.0, 4.0)


def test_long_range_electrostatics_vanishes_with_the_cutoff(ml, frames):
    """The HMBI-style term the generator adds (now in the dft-crystal backend)."""
    from sim_backends.dft_crystal import long_range_electrostatics_kjmol

    # formamide-like neutral charges on the molecule's atom order (N, C, O, H, H, H)
    atoms = Crystal.from_atoms(frames["m0001"])
    q = np.array([-0.86, 0.56, -0.56, 0.41, 0.39, 0.06])
    q -= q.mean()
    none = long_range_electrostatics_kjmol(atoms, q, 0.5)  # no pair within 0.5 A
    assert none["e_elec_pc_within_kjmol"] == 0.0
    assert none["e_elec_lr_kjmol"] == pytest.approx(none["e_elec_pc_total_kjmol"])
    assert none["e_elec_pc_total_kjmol"] < 0  # a hydrogen-bonded crystal is electrostatically bound
    lr = [abs(long_range_electrostatics_kjmol(atoms, q, c, "com")["e_elec_lr_kjmol"])
          for c in (5.0, 20.0)]
    # what is left beyond 20 A (centres of mass) is a few % of the total (-54 kJ/mol);
    # the Ewald (tin-foil) and spherical sums differ only by a small surface term
    assert lr[1] < 0.05 * abs(none["e_elec_pc_total_kjmol"])
    assert lr[1] < lr[0]


def test_charges_of_wrong_length_are_refused(ml, frames):
    from sim_backends.base import SetupError
    from sim_backends.dft_crystal import long_range_electrostatics_kjmol

    with pytest.raises(SetupError, match="atom order"):
        long_range_electrostatics_kjmol(Crystal.from_atoms(frames["m0001"]), np.zeros(5), 3.0)
