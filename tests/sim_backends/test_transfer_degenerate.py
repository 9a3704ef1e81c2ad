"""Degenerate frontier manifolds in the dimer projection (real GFN2-xTB, small molecules).

Benzene's HOMO (e1g) and LUMO (e2u) are degenerate pairs: any rotation inside a pair is an
equally valid "HOMO", so the single-orbital coupling |J_HOMO,HOMO| is not defined. These
tests pin the rotation-invariant effective coupling ``J_eff^2 = (1/n) sum_ab |J_ab|^2`` of
:func:`sim_backends.transfer.project_manifold_coupling`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sim_backends.structures import load_crystal
from sim_backends.transfer import (
    DEGENERATE_MANIFOLD_MEV,
    CrystalTransfer,
    crystal_transfer,
    dimer_couplings,
    project_coupling,
    project_manifold_coupling,
    xtb_orbitals,
)

ROOT = Path(__file__).resolve().parents[2]


def benzene(centre=(0.0, 0.0, 0.0), angle_deg: float = 0.0):
    """D6h benzene (C-C 1.397 A, C-H 1.084 A) in the xy plane; ``angle_deg`` rotates it about
    its C6 axis (z through ``centre``). Atom k of the ring sits at 60 k + angle degrees."""
    from ase import Atoms

    symbols, pos = [], []
    for r, el in ((1.397, "C"), (1.397 + 1.084, "H")):
        for k in range(6):
            t = np.radians(60.0 * k + angle_deg)
            symbols.append(el)
            pos.append([r * np.cos(t), r * np.sin(t), 0.0])
    return Atoms(symbols, positions=np.asarray(pos) + np.asarray(centre))


#: a slipped pi-stack: the offset is along no symmetry axis of either molecule
OFFSET = (1.1, 0.45, 3.7)


def single_orbital(orb_a, orb_b, orb_d, carrier):
    """The old single-orbital projection: the frontier orbital of each monomer alone."""
    n, n_a = orb_d.overlap.shape[0], orb_a.overlap.shape[0]
    phi_a, phi_b = np.zeros(n), np.zeros(n)
    phi_a[:n_a] = orb_a.frontier(carrier)
    phi_b[n_a:] = orb_b.frontier(carrier)
    return project_coupling(orb_d.fock_eV(), orb_d.overlap, phi_a, phi_b)


@pytest.fixture(scope="module")
def benzene_pairs():
    """The dimer A + B, and A + B' with B' = B rotated by 60 deg about its own C6 axis
    (a symmetry operation: the same nuclei, the atoms listed in another order)."""
    a = benzene()
    b = benzene(OFFSET)
    b_rot = benzene(OFFSET, 60.0)
    out = []
    for partner in (b, b_rot):
        oa, ob, od = xtb_orbitals(a), xtb_orbitals(partner), xtb_orbitals(a + partner)
        out.append((oa, ob, od))
    return b, b_rot, out


def test_symmetry_rotation_leaves_the_manifold_coupling_unchanged(benzene_pairs):
    """The reason this test exists: a 60 deg rotation of benzene is a symmetry operation, so
    every physical coupling must be unchanged; the single-orbital |J| of the old code is
    not (the solver picks another orbital of the degenerate pair), J_eff is."""
    b, b_rot, ((oa, ob, od), (oa2, ob2, od2)) = benzene_pairs
    # the same nuclei: every atom of B' sits on an atom of B of the same element
    d = np.linalg.norm(b.positions[:, None] - b_rot.positions[None], axis=2)
    assert np.allclose(d.min(axis=1), 0.0, atol=1e-9)
    assert not np.allclose(b.positions, b_rot.positions)  # ... in another order
    for carrier in ("hole", "electron"):
        assert [o.manifold_info(carrier)["n"] for o in (oa, ob, ob2)] == [2, 2, 2]
        assert ob.manifold_info(carrier)["splitting_meV"] < 1e-3
        new = dimer_couplings(oa, ob, od)[carrier]
        new_rot = dimer_couplings(oa2, ob2, od2)[carrier]
        assert new["n_manifold"] == 2 and new["j_eff_meV"] > 1.0
        assert new_rot["j_eff_meV"] == pytest.approx(new["j_eff_meV"], rel=1e-6, abs=1e-6)
        old = abs(single_orbital(oa, ob, od, carrier)["j_eff_meV"])
        old_rot = abs(single_orbital(oa2, ob2, od2, carrier)["j_eff_meV"])
        assert abs(old - old_rot) > 0.05 * new["j_eff_meV"], (carrier, old, old_rot)  # old code: not defined


def test_unitary_rotation_inside_the_manifold_is_invariant(benzene_pairs):
    """Rotating the degenerate pair of either monomer by any angle (an equally valid choice
    of orbitals) changes the single-orbital coupling, not J_eff."""
    _, _, ((oa, ob, od), _) = benzene_pairs
    ref = dimer_couplings(oa, ob, od)
    for angle in (17.0, 45.0, 100.0):
        t = np.radians(angle)
        rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
        oa_r = type(oa)(oa.overlap, oa.coefficients.copy(), oa.energies_eV, oa.n_occupied)
        for carrier in ("hole", "electron"):
            cols = oa.frontier_manifold(carrier)
            oa_r.coefficients[:, cols] = oa.coefficients[:, cols] @ rot
        got = dimer_couplings(oa_r, ob, od)
        for carrier in ("hole", "electron"):
            assert got[carrier]["j_eff_meV"] == pytest.approx(ref[carrier]["j_eff_meV"], rel=1e-9)
            assert got[carrier]["j_block_max_sv_meV"] == pytest.approx(ref[carrier]["j_block_max_sv_meV"], rel=1e-9)
        assert abs(abs(got["hole"]["j_single_meV"]) - abs(ref["hole"]["j_single_meV"])) > 0.01


def test_manifold_coupling_is_bounded_by_the_block_singular_values(benzene_pairs):
    """J_eff^2 = (1/n) sum of the squared singular values: between s_max^2 / n and s_max^2."""
    for oa, ob, od in benzene_pairs[2]:
        for carrier in ("hole", "electron"):
            c = dimer_couplings(oa, ob, od)[carrier]
            block = np.asarray(c["j_block_meV"])
            sv = np.linalg.svd(block, compute_uv=False)
            n = block.shape[0]
            assert c["j_block_max_sv_meV"] == pytest.approx(sv[0], rel=1e-5)
            assert sv[0] / np.sqrt(n) - 1e-6 <= c["j_eff_meV"] <= sv[0] + 1e-6
            assert c["j_eff_meV"] == pytest.approx(np.sqrt(np.sum(sv**2) / n), rel=1e-5)
            assert c["j_rms_meV"] == pytest.approx(c["j_eff_meV"] / np.sqrt(n), rel=1e-9)
            assert abs(c["j_single_meV"]) <= sv[0] + 1e-6


def test_block_projection_with_one_orbital_is_the_single_orbital_projection():
    """n = 1 gives today's single-orbital result exactly (same dict, same numbers)."""
    from ase.build import molecule

    a = molecule("C2H4")
    b = a.copy()
    b.positions += [0.4, 0.2, 3.8]
    oa, ob, od = xtb_orbitals(a), xtb_orbitals(b), xtb_orbitals(a + b)
    got = dimer_couplings(oa, ob, od)
    for carrier in ("hole", "electron"):
        assert len(oa.frontier_manifold(carrier)) == 1
        assert got[carrier] == single_orbital(oa, ob, od, carrier)
    n = od.overlap.shape[0]
    phi = np.zeros((n, 1)), np.zeros((n, 1))
    phi[0][: n // 2, 0], phi[1][n // 2:, 0] = oa.frontier("hole"), ob.frontier("hole")
    assert project_manifold_coupling(od.fock_eV(), od.overlap, *phi) == got["hole"]


def test_naphthalene_crystal_is_single_orbital_and_unchanged():
    """A molecule without degenerate frontier orbitals (naphthalene, X23): manifolds of one,
    no note or warning, every dimer's coupling is the single-orbital projection."""
    cif = (ROOT / "data/reference/x23/cif/naphthalene.cif").read_text()
    tr = crystal_transfer(load_crystal(cif, "c1ccc2ccccc2c1"), "gfn2-xtb", 4.0)
    assert {c: m["n"] for c, m in tr.manifolds.items()} == {"hole": 1, "electron": 1}
    assert tr.warnings == [] and tr.notes == []
    for d in tr.dimers:
        assert "n_manifold" not in d.hole and "j_block_meV" not in d.hole  # the single-orbital dict
    assert tr.manifolds["hole"]["gap_meV"] > 500.0


def test_benzene_crystal_uses_the_manifold_and_says_so():
    """X23 benzene: the experimental geometry splits the e1g HOMO by ~1 meV (within the
    manifold threshold), so holes use the 2x2 block, with an INFO note, no warning; the
    value survives the JSON round trip."""
    import json

    cif = (ROOT / "data/reference/x23/cif/benzene.cif").read_text()
    tr = crystal_transfer(load_crystal(cif, "c1ccccc1"), "gfn2-xtb", 4.0)
    m = tr.manifolds["hole"]
    assert m["n"] == 2 and m["splitting_meV"] < DEGENERATE_MANIFOLD_MEV < m["gap_meV"]
    assert tr.warnings == []
    assert any(n.startswith("hole: 2-fold degenerate frontier manifold") for n in tr.notes)
    for d in tr.dimers:
        assert d.hole["n_manifold"] == 2 and d.hole["j_eff_meV"] >= 0.0
    back = CrystalTransfer.from_extra(json.loads(json.dumps(tr.to_extra())))
    assert back.manifolds == tr.manifolds and back.notes == tr.notes
    np.testing.assert_allclose(back.couplings_meV("hole"), tr.couplings_meV("hole"))


def test_old_results_without_manifolds_still_warn():
    """A stored result made before manifolds (no ``manifolds`` key) with a degenerate
    frontier orbital keeps its warning: its single-orbital value is not defined."""
    tr = CrystalTransfer([], [], np.zeros((0, 3)), 2, "GFN2-xTB", 0.0, {"hole": 0.0, "electron": 900.0})
    assert len(tr.warnings) == 1 and tr.warnings[0].startswith("hole:") and tr.notes == []


def test_degenerate_homo_with_an_xtb_lambda_warns_about_lambda():
    """The coupling of a degenerate HOMO is now defined, its GFN2-xTB lambda+ is not (the
    Jahn-Teller cation stays undistorted): a structure with a degenerate hole manifold and
    a GFN2-xTB lambda+ carries that warning; one with lambda+ from elsewhere, or a single
    HOMO, does not."""
    from sim_backends.esf import JAHN_TELLER_LAMBDA_WARNING, structure_warnings

    def tr(n):
        return CrystalTransfer([], [], np.zeros((0, 3)), 2, "GFN2-xTB", 0.0, {"hole": 0.0, "electron": 900.0},
                               {"hole": {"n": n, "splitting_meV": 0.0, "gap_meV": 500.0},
                                "electron": {"n": 1, "splitting_meV": 0.0, "gap_meV": 900.0}})

    assert structure_warnings(tr(2), "GFN2-xTB") == [JAHN_TELLER_LAMBDA_WARNING]
    assert JAHN_TELLER_LAMBDA_WARNING.startswith("hole:")  # shown by status (hole warnings only)
    assert structure_warnings(tr(2), None) == [] and structure_warnings(tr(1), "GFN2-xTB") == []


def test_degenerate_homo_with_a_low_temperature_cation_does_not_warn():
    """xtb-reorg relaxes a degenerate-HOMO cation at 10 K (its ``extra["jahn_teller"]``
    says so): that lambda+ includes the Jahn-Teller relaxation and the structure carries no
    lambda+ warning; an unresolved one (the 10 K SCF failed, 300 K value) still does."""
    from sim_backends.esf import JAHN_TELLER_LAMBDA_WARNING, structure_warnings
    from sim_backends.reorg import JAHN_TELLER_RESOLVED

    t = CrystalTransfer([], [], np.zeros((0, 3)), 2, "GFN2-xTB", 0.0, {"hole": 0.0, "electron": 900.0},
                        {"hole": {"n": 2, "splitting_meV": 0.0, "gap_meV": 500.0},
                         "electron": {"n": 1, "splitting_meV": 0.0, "gap_meV": 900.0}})
    assert structure_warnings(t, "GFN2-xTB", JAHN_TELLER_RESOLVED.format(10.0)) == []
    unresolved = "unresolved: 10 K cation: xTB SCF failed for charge +1: SCF not converged; 300 K value"
    assert structure_warnings(t, "GFN2-xTB", unresolved) == [JAHN_TELLER_LAMBDA_WARNING]
