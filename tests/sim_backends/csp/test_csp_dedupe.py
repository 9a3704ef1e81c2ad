"""Duplicate removal: copies (translated, rotated, permuted, re-celled) merge; distinct
structures stay; symmetry detection reports the full space group."""

from __future__ import annotations

import numpy as np
import pytest

from sim_backends.csp.dedupe import Candidate, dedupe, detect_space_group, to_structure
from sim_backends.csp.spacegroups import get_space_group
from sim_backends.csp.trials import coords_numpy


@pytest.fixture(scope="module")
def structures():
    from sim_backends.csp.rigid import RigidMolecule

    mol = RigidMolecule.from_smiles("O=C1C=CC(=O)C=C1", charges="none")  # benzoquinone
    sg = get_space_group("P2_1/c")
    cell_p = np.array([[7.0, 6.2, 8.1, 90, 101.0, 90], [6.1, 7.9, 7.5, 90, 95.0, 90]])
    centre = np.array([[0.21, 0.13, 0.32], [0.11, 0.27, 0.36]])
    quat = np.array([[0.9, 0.1, 0.3, 0.3], [0.5, 0.5, -0.5, 0.5]])
    quat /= np.linalg.norm(quat, axis=1, keepdims=True)
    cells, xyz = coords_numpy(sg, cell_p, centre, quat, mol.coords_A)
    a = to_structure(mol.symbols, cells[0], xyz[0])
    b = to_structure(mol.symbols, cells[1], xyz[1])
    return mol, a, b


def _copy_variants(s):
    """Translated + rotated, atom-permuted, and supercell/other-cell copies of s."""
    from pymatgen.core import Structure
    from pymatgen.transformations.standard_transformations import RotationTransformation

    moved = s.copy()
    moved.translate_sites(list(range(len(moved))), [0.37, 0.11, 0.52], frac_coords=True)
    moved = RotationTransformation([1, 1, 0], 33.0).apply_transformation(moved)
    order = np.random.default_rng(0).permutation(len(s))
    permuted = Structure(s.lattice, [s.species[i] for i in order], s.frac_coords[order])
    recelled = s.copy()
    recelled.make_supercell([[1, 0, 0], [0, 1, 0], [1, 0, 1]])  # same lattice, other cell
    doubled = s.copy()
    doubled.make_supercell([2, 1, 1])  # Z = 8 description of the same crystal
    return [moved, permuted, recelled, doubled]


@pytest.mark.slow
def test_copies_merge_and_distinct_structures_stay(structures):
    _, a, b = structures
    cands = [Candidate(-50.0, 1.40, a)]
    cands += [Candidate(-50.0 + 0.1 * k, 1.40, c) for k, c in enumerate(_copy_variants(a), 1)]
    cands += [Candidate(-49.7, 1.41, b), Candidate(-49.6, 1.41, _copy_variants(b)[0])]
    unique = dedupe(cands)
    assert len(unique) == 2
    assert [u.multiplicity for u in unique] == [5, 2]
    assert unique[0].structure is a  # the lowest-energy member represents its group


def test_energy_prefilter_keeps_structures_apart(structures):
    _, a, _ = structures
    # identical geometry but energies 5 kJ/mol apart: the pre-filter never compares them
    unique = dedupe([Candidate(-50.0, 1.40, a), Candidate(-45.0, 1.40, a.copy())],
                    energy_tol_kjmol=1.0)
    assert len(unique) == 2


def test_detect_space_group(structures):
    _, a, _ = structures
    assert detect_space_group(a) == ("P2_1/c", 14)
    p1 = a.copy()
    # breaks symmetry by 0.03 A (spglib at symprec 0.1 already fails at 0.05 A for the
    # GFN2-relaxed molecule: a displaced atom also displaces its candidate translations)
    p1.translate_sites([0], [0.03, 0.0, 0.0], frac_coords=False)
    assert detect_space_group(p1, symprec=0.01)[1] == 1
    assert detect_space_group(p1, symprec=0.1)[1] == 14


def test_few_heavy_atoms_compared_with_hydrogens():
    """Ammonia (one heavy atom): two crystals with the same N lattice but differently
    oriented molecules are distinct minima; a translated copy still merges. (On the N
    atoms alone -- the old comparison -- all three were one minimum.)"""
    from pymatgen.core import Lattice, Structure
    from scipy.spatial.transform import Rotation

    nh3 = np.array([[0.0, 0.0, 0.0], [0.94, 0.0, -0.38], [-0.47, 0.81, -0.38], [-0.47, -0.81, -0.38]])
    lat = Lattice.orthorhombic(4.1, 5.3, 6.2)
    centre = np.array([1.0, 1.5, 2.0])

    def crystal(rot_deg, shift=(0.0, 0.0, 0.0)):
        xyz = Rotation.from_euler("y", rot_deg, degrees=True).apply(nh3) + centre + np.array(shift)
        return Structure(lat, ["N", "H", "H", "H"], xyz, coords_are_cartesian=True)

    cands = [Candidate(-30.0, 0.9, crystal(0.0), {"z": 1}),
             Candidate(-29.9, 0.9, crystal(90.0), {"z": 1}),
             Candidate(-29.95, 0.9, crystal(0.0, (0.3, 0.7, 1.1)), {"z": 1})]
    unique = dedupe(cands)
    assert [u.multiplicity for u in unique] == [2, 1]
    assert unique[1].energy_kjmol == -29.9


def _oxalic_acid_with_flipped_hydrogens():
    """Oxalic acid in P2_1/c twice with the same heavy atoms, the second time with each hydroxyl H
    moved to the carbonyl O of its carboxyl (another hydrogen-bond network)."""
    from sim_backends.csp.rigid import RigidMolecule

    mol = RigidMolecule.from_smiles("OC(=O)C(=O)O", charges="none")
    x = np.array(mol.coords_A, dtype=float)
    sym = mol.symbols
    flipped = x.copy()
    for h in (i for i, e in enumerate(sym) if e == "H"):
        o_h = min((i for i, e in enumerate(sym) if e == "O"), key=lambda i: np.linalg.norm(x[i] - x[h]))
        c = min((i for i, e in enumerate(sym) if e == "C"), key=lambda i: np.linalg.norm(x[i] - x[o_h]))
        o_c = next(i for i, e in enumerate(sym) if e == "O" and i != o_h and np.linalg.norm(x[i] - x[c]) < 1.5)
        n = (x[o_c] - x[o_h]) / np.linalg.norm(x[o_c] - x[o_h])
        flipped[h] = x[h] - 2.0 * np.dot(x[h] - x[c], n) * n  # mirror through C: O-H -> the other O
        assert np.linalg.norm(flipped[h] - x[o_c]) < 1.2
    sg = get_space_group("P2_1/c")
    cell_p = np.array([[5.3, 6.1, 5.6, 90, 104.0, 90]])
    centre, quat = np.array([[0.0, 0.0, 0.0]]), np.array([[0.9, 0.2, 0.3, 0.25]])
    quat /= np.linalg.norm(quat, axis=1, keepdims=True)
    structures = []
    for body in (x, flipped):
        cells, xyz = coords_numpy(sg, cell_p, centre, quat, body)
        structures.append(to_structure(sym, cells[0], xyz[0]))
    return structures


def test_minima_with_hydrogens_on_other_atoms_stay_apart():
    """Heavy atoms alone match the flipped-H pair; the dedupe keeps both because an O that
    carries an H is its own species."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from sim_backends.csp.dedupe import MATCHER_KWARGS, heavy_atoms

    structures = _oxalic_acid_with_flipped_hydrogens()
    sm = StructureMatcher(**MATCHER_KWARGS)
    assert sm.fit(heavy_atoms(structures[0], keep_h=False), heavy_atoms(structures[1], keep_h=False))
    cands = [Candidate(-100.0, 1.9, s, {"z": 4}) for s in structures]
    assert len(dedupe(cands)) == 2
    assert len(dedupe([Candidate(-100.0, 1.9, structures[0], {"z": 4})] * 2)) == 1


def test_find_matches_with_h_sites_needs_the_hydrogens_on_the_same_atoms():
    from sim_backends.landscape import Landscape, LandscapeEntry

    plain, flipped = _oxalic_acid_with_flipped_hydrogens()
    land = Landscape("OC(=O)C(=O)O", [LandscapeEntry("m0001", -101.0, z=4, structure=flipped),
                                      LandscapeEntry("m0002", -100.0, z=4, structure=plain)])
    assert [m.id for _, m, _ in land.find_matches(plain)] == ["m0001", "m0002"]  # heavy atoms
    assert [m.id for _, m, _ in land.find_matches(plain, h_sites=True)] == ["m0002"]
    assert land.find_match(plain, h_sites=True)[0] == 2
