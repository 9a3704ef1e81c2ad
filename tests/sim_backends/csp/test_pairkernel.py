"""The compiled (numba) pair kernel against the torch path of the lattice-energy model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("numba")

from sim_backends.csp.forcefield import LatticeEnergyModel  # noqa: E402
from tests.sim_backends.csp.test_forcefield import t, x23_crystal  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
#: (exp-6 cutoff, Ewald / DSF cutoff, electrostatics, DSF alpha): the full model and stage 1
SETTINGS = {
    "ewald12": dict(cutoff_A=12.0, electrostatics="ewald"),
    "dsf7": dict(cutoff_A=7.0, ewald_cutoff_A=7.0, electrostatics="dsf", dsf_alpha_per_A=0.3),
}


def both_paths(mol, cells, coords, setting):
    """(energy, dE/dcell, dE/dcoords, terms) from the numba and the torch pair path."""
    out = []
    for kernel in ("numba", "torch"):
        model = LatticeEnergyModel(mol, pair_kernel=kernel, **SETTINGS[setting])
        e, g_cell, g_xyz = model.energy_and_grad(t(cells), t(coords))
        terms = model.terms_kjmol(t(cells), t(coords))
        out.append((e, g_cell, g_xyz, terms))
    return out


def assert_agree(nb, tc):
    e_nb, gc_nb, gx_nb, terms_nb = nb
    e_tc, gc_tc, gx_tc, terms_tc = tc
    np.testing.assert_allclose(e_nb.numpy(), e_tc.numpy(), rtol=1e-9, atol=0)
    for key in ("repdisp_kjmol", "elec_kjmol"):
        np.testing.assert_allclose(terms_nb[key].numpy(), terms_tc[key].numpy(), rtol=1e-9, atol=1e-9)
    scale = max(1.0, float(gx_tc.abs().max()), float(gc_tc.abs().max()))
    np.testing.assert_allclose(gc_nb.numpy(), gc_tc.numpy(), rtol=0, atol=1e-8 * scale)
    np.testing.assert_allclose(gx_nb.numpy(), gx_tc.numpy(), rtol=0, atol=1e-8 * scale)


@pytest.mark.parametrize("setting", sorted(SETTINGS))
@pytest.mark.parametrize("name", ["oxalic_acid_alpha", "formamide"])
def test_numba_matches_torch_on_batches_of_distorted_x23_crystals(name, setting):
    """B = 3 different strained cells with displaced atoms; both molecules have H sites (W99
    foreshortened X-H), so sites and nuclei differ and the inner/outer lists both occur."""
    mol, cell, coords = x23_crystal(name)
    rng = np.random.default_rng(11)
    cells = np.stack([cell @ (np.eye(3) * s + rng.normal(scale=0.04, size=(3, 3))) for s in (0.97, 1.0, 1.15)])
    frac = np.einsum("zad,de->zae", coords, np.linalg.inv(cell))
    xyz = np.stack([np.einsum("zae,ed->zad", frac, c) + rng.normal(scale=0.03, size=coords.shape) for c in cells])
    nb, tc = both_paths(mol, cells, xyz, setting)
    assert abs(float(nb[0][0])) > 10.0  # a real lattice energy, not an empty pair list
    assert_agree(nb, tc)


def image_distances(body, cell):
    """(n, n, 26) distances between the atoms of a molecule and those of its 26 nearest images."""
    shifts = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1) if (i, j, k) != (0, 0, 0)])
    d = body[None, :, None, :] - body[:, None, None, :] + (shifts @ cell)[None, None]
    return np.linalg.norm(d, axis=-1)


def cell_with_closest_contact(body, shape, target_A):
    """``shape`` (3, 3) scaled so that the shortest atom-image distance is ``target_A``."""
    lo, hi = 0.1, 10.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if image_distances(body, mid * shape).min() < target_A else (lo, mid)
    return hi * shape


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_numba_matches_torch_with_contacts_at_the_cutoff(setting):
    """One oxalic acid per triclinic cell, scaled so that the closest self-image contact lies in
    the switching region, at the cutoff, or just past the inner/outer boundary of the pair
    lists (Ewald cutoff + 0.25 A): only the switched tail and the list boundaries contribute."""
    mol, _, coords = x23_crystal("oxalic_acid_alpha")
    model = LatticeEnergyModel(mol, **SETTINGS[setting])
    body = coords[0] - coords[0].mean(axis=0)
    shape = np.array([[1.0, 0.0, 0.0], [0.1, 1.1, 0.0], [-0.05, 0.08, 1.2]])
    targets = [model.switch_on_A + 0.3, model.cutoff_A - 0.05, model.ewald_cutoff_A + 0.2]
    cells = np.stack([cell_with_closest_contact(body, shape, r) for r in targets])
    xyz = np.stack([body[None]] * len(targets))
    r = image_distances(body, cells[0])
    assert np.any((r > model.switch_on_A) & (r < model.cutoff_A))  # the switched region is populated
    assert np.any((r > model.cutoff_A) & (r < model.cutoff_A + 0.25))  # screened pairs past the cutoff
    nb, tc = both_paths(mol, cells, xyz, setting)
    assert_agree(nb, tc)


def test_erfc_from_the_erfcx_table_is_accurate():
    """The kernel's erfc(x) = exp(-x^2) * piecewise-polynomial erfcx(x), on a dense grid
    over the tabulated range (and past it, where the kernel calls math.erfc): relative
    error < 1e-14 against math.erfc, through the compiled kernel itself (one charge pair)."""
    import math

    from sim_backends.csp.pairkernel import ERFCX_X_MAX, erfcx_coefficients

    coef = erfcx_coefficients()
    x = np.linspace(0.0, ERFCX_X_MAX, 100_003, endpoint=False)
    k = (x / (ERFCX_X_MAX / len(coef))).astype(int)
    t = (x - (k + 0.5) * ERFCX_X_MAX / len(coef)) * (2.0 * len(coef) / ERFCX_X_MAX)
    poly = np.zeros_like(x)
    for j in range(coef.shape[1] - 1, -1, -1):
        poly = poly * t + coef[k, j]
    ref = np.array([math.erfc(v) for v in x])
    assert np.max(np.abs(np.exp(-x * x) * poly - ref) / ref) < 1e-14

    from sim_backends.csp.pairkernel import PARAM_NAMES, pair_energies_and_grads

    # two one-atom molecules (k_e q q = 1, no exp-6) at distance r in a 20 A cubic cell (no
    # images in range): e_el = erfc(alpha r) / r, Ewald real space; r = 7.7 is past the table
    for r in (1.0, 3.3, 5.9, 7.7):
        alpha = 1.0
        params = dict.fromkeys(PARAM_NAMES, 0.0)
        params.update(cutoff_A=9.0, switch_on_A=8.0, damping_radius_A=1.4, reach_A=9.0, screen_A=9.0,
                      inner_A=9.0, alpha_per_A=alpha, coulomb_cutoff_A=9.0, has_charges=1.0)
        xyz = np.array([[[[0.0, 0.0, 0.0]], [[r, 0.0, 0.0]]]])
        out = pair_energies_and_grads(xyz, xyz, 20.0 * np.eye(3)[None], np.array([[0.0, -3.0, 0.0, 1.0]]),
                                      np.array([params[k] for k in PARAM_NAMES]))
        assert float(out[1][0]) == pytest.approx(math.erfc(alpha * r) / r, rel=1e-14)


def test_numba_is_the_default_and_bad_kernel_name_is_one_line_error():
    mol, _, _ = x23_crystal("formamide")
    assert LatticeEnergyModel(mol).pair_kernel == "numba"
    with pytest.raises(ValueError, match="pair_kernel must be"):
        LatticeEnergyModel(mol, pair_kernel="cuda")


def test_kernel_validates_shapes():
    from sim_backends.csp.pairkernel import PARAM_NAMES, pair_energies_and_grads

    sites = np.zeros((2, 1, 3, 3))
    with pytest.raises(ValueError, match="cells must be"):
        pair_energies_and_grads(sites, sites, np.eye(3)[None], np.zeros((9, 4)), np.zeros(len(PARAM_NAMES)))
    with pytest.raises(ValueError, match="table must be"):
        pair_energies_and_grads(sites, sites, np.stack([np.eye(3)] * 2), np.zeros((4, 4)), np.zeros(len(PARAM_NAMES)))
    table, params = np.zeros((9, 4)), np.zeros(len(PARAM_NAMES))
    with pytest.raises(ValueError, match="degenerate cell"):
        pair_energies_and_grads(sites, sites, np.stack([np.eye(3), np.diag([1.0, 1.0, 0.0])]), table, params)
    with pytest.raises(ValueError, match="must be finite"):
        pair_energies_and_grads(sites + np.nan, sites, np.stack([np.eye(3)] * 2), table, params)


@pytest.mark.slow
def test_import_is_cheap_and_unwritable_source_dir_falls_back_to_temp_cache(tmp_path):
    """Importing the module does not import numba; with the source directory reported
    unwritable (as in a read-only install) the kernel still compiles, caching under the
    system temp dir (here redirected to tmp_path)."""
    code = (
        "import sys, os\n"
        "import sim_backends.csp.pairkernel as pk\n"
        "assert 'numba' not in sys.modules\n"
        "pk._cache_dir_is_writable = lambda path: False\n"
        "import numpy as np\n"
        "x = np.array([[[[0.0, 0.0, 0.0]]]])\n"
        "p = np.array([5.0, 4.5, 1.4, 6.0, 5.0, 5.0, 0.3, 5.0, 0.0, 0.0, 0.0, 0.0])\n"
        "e = pk.pair_energies_and_grads(x, x, 4.0 * np.eye(3)[None], np.array([[1e3, -3.6, 1e3, 0.0]]), p)\n"
        "print(os.environ['NUMBA_CACHE_DIR'], float(e[0][0]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update(TMPDIR=str(tmp_path), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr.strip().splitlines()[-1:]
    cache_dir, energy = out.stdout.split()
    assert cache_dir.startswith(str(tmp_path))
    assert any(Path(cache_dir).rglob("*.nbi"))  # the compiled kernel was cached there
    # one atom per cubic 4 A cell: 3 image pairs at 4 A (half of the 6 neighbours), all switched
    # by S(x = 0) = 1 below the switch: 3 (A exp(-B r) - C / r^6) with f(r) = 1 at 4 A > 1.6 r_d
    assert float(energy) == pytest.approx(3 * (1e3 * np.exp(-3.6 * 4.0) - 1e3 / 4.0**6), rel=1e-12)


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_minimiser_compiled_chain_rule_matches_autograd(setting):
    """CrystalVariables.energy_and_grad: the compiled map and chain rule of the numba path
    (sim_backends.csp.varmap: decode + molecule_coords + Rodrigues + cell_matrix backward), with
    and without the symmetry-adapted pair sum, equals torch autograd through the same map on the
    torch pair path (whole cell), for space groups with 0, 1 and 3 free angles, Z = 2, 4 and 8,
    centred cells, rotation vectors at 0, in the small-angle branch and beyond it, and under
    pressure."""
    from sim_backends.csp.minimise import CrystalVariables
    from sim_backends.csp.trials import generate_trials

    mol, _, _ = x23_crystal("oxalic_acid_alpha")
    fast_model = LatticeEnergyModel(mol, **SETTINGS[setting])
    slow_model = LatticeEnergyModel(mol, pair_kernel="torch", **SETTINGS[setting])
    rng = np.random.default_rng(5)
    cases = [("P2_1/c", 0.0, True), ("P-1", 0.3, True), ("P2_12_12_1", 0.0, True), ("C2/c", 0.0, True),
             ("Pbca", 0.0, True), ("P2_1/c", 0.0, False), ("Cc", 0.2, False)]
    for group, pressure, symmetric in cases:
        trials = generate_trials(mol, group, 4, seed=2)
        # symmetric: molecule 0's pairs weighted by Z (the minimiser's default); torch: the whole cell
        fast = CrystalVariables(trials.space_group, mol, fast_model, pressure, symmetry_adapted=symmetric)
        slow = CrystalVariables(trials.space_group, mol, slow_model, pressure)
        x, r0 = fast.encode(trials)
        x = x + rng.normal(scale=0.2, size=x.shape)
        x[0, -3:], x[1, -3:], x[2, -3:] = 0.0, 3e-5, 4e-3  # w = 0, small-angle branch, series branch
        e_fast, g_fast = fast.energy_and_grad(x, torch.as_tensor(r0))
        e_slow, g_slow = slow.energy_and_grad(x, torch.as_tensor(r0))
        np.testing.assert_allclose(e_fast.numpy(), e_slow.numpy(), rtol=1e-9)
        np.testing.assert_allclose(g_fast.numpy(), g_slow.numpy(), rtol=0, atol=1e-8 * float(g_slow.abs().max()))
