"""Faster dedupe gives the same unique minima: the primitive-cell shortcut and the matcher's
``fit_reduced`` agree with pymatgen, a small CSP search keeps the unique set of the plain
StructureMatcher dedupe, and the flexible dedupe's skip of already-compared pairs changes nothing."""

from __future__ import annotations

import numpy as np
import pytest

from sim_backends.csp.dedupe import (
    MATCHER_KWARGS, Candidate, _matcher, dedupe, fit_memo, heavy_atoms, primitive_structure, to_structure,
)


@pytest.fixture(scope="module")
def crystals():
    """Benzoquinone in two P2_1/c cells (Z = 4), heavy atoms."""
    from sim_backends.csp.rigid import RigidMolecule
    from sim_backends.csp.spacegroups import get_space_group
    from sim_backends.csp.trials import coords_numpy

    mol = RigidMolecule.from_smiles("O=C1C=CC(=O)C=C1", charges="none")
    cell_p = np.array([[7.0, 6.2, 8.1, 90, 101.0, 90], [6.1, 7.9, 7.5, 90, 95.0, 90]])
    centre = np.array([[0.21, 0.13, 0.32], [0.11, 0.27, 0.36]])
    quat = np.array([[0.9, 0.1, 0.3, 0.3], [0.5, 0.5, -0.5, 0.5]])
    quat /= np.linalg.norm(quat, axis=1, keepdims=True)
    cells, xyz = coords_numpy(get_space_group("P2_1/c"), cell_p, centre, quat, mol.coords_A)
    return [heavy_atoms(to_structure(mol.symbols, cells[k], xyz[k])) for k in range(2)]


def test_primitive_shortcut_equals_pymatgen(crystals):
    """No smaller cell: the structure itself, as pymatgen returns it; supercells (exact and
    perturbed by 0.05 A) go to pymatgen and come back reduced."""
    rng = np.random.default_rng(1)
    cases = list(crystals)
    for st in crystals:
        for m in ([[1, 1, 0], [0, 1, 0], [0, 0, 2]], [2, 1, 1]):
            sc = st.copy()
            sc.make_supercell(m)
            cases.append(sc)
            shaken = sc.copy()
            for k in range(len(shaken)):
                shaken.translate_sites([k], rng.normal(0.0, 0.03, 3), frac_coords=False)
            cases.append(shaken)
    n_reduced = 0
    for st in cases:
        fast, ref = primitive_structure(st), st.get_primitive_structure()
        assert len(fast) == len(ref)
        assert np.allclose(fast.lattice.matrix, ref.lattice.matrix) and np.allclose(fast.frac_coords, ref.frac_coords)
        n_reduced += len(ref) < len(st)
    assert primitive_structure(crystals[0]) is crystals[0]
    assert n_reduced >= 6  # the supercells were reduced (the test of the shortcut's other branch)


def test_fit_reduced_equals_structure_matcher_fit(crystals):
    from pymatgen.analysis.structure_matcher import StructureMatcher

    a, b = crystals
    moved = a.copy()
    moved.translate_sites(list(range(len(moved))), [0.37, 0.11, 0.52], frac_coords=True)
    doubled = a.copy()
    doubled.make_supercell([2, 1, 1])
    cands = [Candidate(0.0, 1.0, s) for s in (a, b, moved, doubled)]
    fast, plain = _matcher(MATCHER_KWARGS), StructureMatcher(**MATCHER_KWARGS)
    results = []
    for x in cands:
        for y in cands:
            results.append(fast.fit_reduced(x.reduced(), y.reduced()))
            assert results[-1] == plain.fit(x.structure, y.structure)
    assert any(results) and not all(results)


def _plain_dedupe(cands: list[Candidate]) -> list[tuple[float, int]]:
    """The dedupe before the speed-ups: pymatgen StructureMatcher.fit (own reduction) on heavy atoms,
    an O, N or S that carries a hydrogen labelled as its own species."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    sm = StructureMatcher(**MATCHER_KWARGS)
    kept: list[list] = []
    for c in sorted(cands, key=lambda c: c.energy_kjmol):
        heavy = heavy_atoms(c.structure, c.payload["z"], label_protonated=True)
        match = next((k for k in reversed(kept) if c.energy_kjmol - k[0] <= 1.0
                      and abs(c.density_gcm3 - k[1]) <= 0.03 and sm.fit(k[2], heavy)), None)
        if match is None:
            kept.append([c.energy_kjmol, c.density_gcm3, heavy, c.multiplicity])
        else:
            match[3] += c.multiplicity
    return [(k[0], k[3]) for k in kept]


@pytest.mark.slow  # a 128-trial oxalic acid search (about 10 CPU s)
def test_small_search_keeps_the_plain_dedupe_unique_set(monkeypatch):
    """run_csp (sampling tracker and landscape sharing StructureMatcher results, fit_reduced,
    primitive shortcut) gives the unique minima and multiplicities of the plain dedupe; the
    flexible dedupe with the already-compared pairs skipped equals it without the skip."""
    import sim_backends.csp.run as run
    from sim_backends.csp.flexible import dedupe_conformational
    from sim_backends.csp.intramolecular import TorsionSet
    from sim_backends.csp.rigid import RigidMolecule

    seen = {}
    real = run._build_landscape

    def keep_args(molecule, results, window, *more, **kw):
        seen["args"] = (molecule, results, window)
        return real(molecule, results, window, *more, **kw)

    monkeypatch.setattr(run, "_build_landscape", keep_args)
    mol = RigidMolecule.from_smiles("OC(=O)C(=O)O", charges="none")
    land = run.run_csp(mol, 128, space_groups="P-1,P2_1", sampling="fixed", progress=False, charges="none")
    molecule, results, window = seen["args"]
    cands = run._candidates(molecule, results, run._lowest(results) + window)
    ref = _plain_dedupe(cands)
    assert len(ref) >= 5 and len(ref) < len(cands)  # duplicates were merged
    assert [(m.energy_kjmol, m.multiplicity) for m in land.minima] == ref

    # two "conformer landscapes" (one per search group), each deduped, then merged conformationally
    ts = TorsionSet(((0, 1, 2, 3),), ((1, 2),), (360.0,))
    per_land = []
    for k, g in enumerate(("P-1", "P2_1")):
        for c in dedupe([c for c in run._candidates(molecule, results, 1e9) if c.payload["search_space_group"] == g]):
            per_land.append((k, c))

    def merged(with_source: bool) -> list[tuple[float, int]]:
        cs = [Candidate(c.energy_kjmol, c.density_gcm3, c.structure,
                        {"z": c.payload["z"], "torsions_deg": [180.0], "relaxed": False,
                         **({"landscape": k} if with_source else {})}, multiplicity=c.multiplicity)
              for k, c in per_land]
        with fit_memo():
            return [(c.energy_kjmol, c.multiplicity) for c in dedupe_conformational(cs, ts)]

    assert merged(True) == merged(False)
