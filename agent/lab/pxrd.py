"""Realistic laboratory powder X-ray diffraction (PXRD) patterns of crystal structures.

Ideal Bragg peaks (positions and integrated intensities including Lorentz-polarisation
factors) come from pymatgen's ``XRDCalculator`` run on the *measured* structure, i.e.
the predicted structure after a random anisotropic lattice expansion. The effects a
real Bragg-Brentano diffractometer adds on top are then applied:

* lattice thermal expansion: per-axis length factors ``1 + e_iso + e_axis`` (predicted
  structures are 0 K minima; molecular crystals expand by 1-3 % per axis between 0 K
  and room temperature, anisotropically). The noise levels' ``expansion_iso`` ranges are
  at room temperature (298.15 K); given the experiment's ``temperature_K``, the drawn
  ``e_iso`` is scaled by ``temperature_K / 298.15``, i.e. a volumetric expansion
  ``alpha_V * T`` with ``alpha_V = 3 e_iso / 298.15 K`` (5e-5 to 2e-4 /K for
  "default", ~1.3e-4 /K on average, typical of molecular crystals), so a 100 K
  cryocrystallisation expands a third as much as a room-temperature one and a 400 K
  sublimation a third more. The anisotropic part ``e_axis`` is kept as drawn, and the
  factors stay clipped to ``1 +- expansion_limit``;
* specimen displacement / zero shift of the 2-theta scale;
* peak broadening with Caglioti-type widths, FWHM^2 = U tan^2(theta) + V tan(theta) + W
  (Caglioti, Paoletti & Ricci, Nucl. Instrum. 3, 223 (1958)), and pseudo-Voigt peak
  shapes (Gaussian-Lorentzian mix eta);
* preferred orientation with the March-Dollase function
  W(alpha) = (r^2 cos^2 alpha + sin^2 alpha / r)^(-3/2) (Dollase, J. Appl. Cryst. 19,
  267 (1986)), averaged over symmetry-equivalent reflections, for a random low-index
  orientation direction;
* background: a slowly varying polynomial, a low-angle exponential (air scatter) and
  a broad amorphous hump (sample holder / amorphous content);
* Poisson counting noise.

All patterns are on a 2-theta grid of 5-40 deg, step 0.02 deg (:func:`two_theta_grid`).
Four sets of effect magnitudes are provided in :data:`NOISE_LEVELS`; "anisotropic" has
the default instrument with per-axis expansion of up to 5 % (iso 0-3 % plus N(0, 1.5 %)
per axis) and stronger texture (March-Dollase r 0.6-1).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from pymatgen.core import Structure

TWO_THETA_MIN_DEG = 5.0
TWO_THETA_MAX_DEG = 40.0
TWO_THETA_STEP_DEG = 0.02
ROOM_TEMPERATURE_K = 298.15
"""Temperature at which :class:`MeasurementConditions` expansion ranges apply."""


def two_theta_grid(
    start_deg: float = TWO_THETA_MIN_DEG, stop_deg: float = TWO_THETA_MAX_DEG, step_deg: float = TWO_THETA_STEP_DEG
) -> np.ndarray:
    """The measurement grid, shape (n_points,), degrees (both ends included)."""
    import numpy as np

    n = int(round((stop_deg - start_deg) / step_deg)) + 1
    return start_deg + step_deg * np.arange(n)


@dataclass(frozen=True)
class MeasurementConditions:
    """Magnitudes of the instrumental and sample effects (one noise level).

    Attributes:
        expansion_iso: (low, high) of the uniform isotropic part of the per-axis
            length factor minus 1.
        expansion_aniso_sd: standard deviation of the per-axis extra expansion.
        expansion_limit: per-axis factors are clipped to 1 +- this.
        zero_shift_sd_deg: standard deviation of the 2-theta zero shift (deg).
        caglioti_uvw_deg2: (U, V, W) of the instrumental FWHM^2 in deg^2.
        size_broadening: (low, high) of a random multiplier on the FWHM (sample).
        eta: (low, high) of the pseudo-Voigt Lorentzian fraction.
        march_dollase_r: (low, high) of the March-Dollase r (1 = no texture).
        peak_counts: counts at the strongest peak of a pure phase.
        background_counts: (low, high) of the flat background level (counts).
        hump_fraction: (low, high) of amorphous-hump height relative to peak_counts.
    """

    expansion_iso: tuple[float, float] = (0.005, 0.02)
    expansion_aniso_sd: float = 0.008
    expansion_limit: float = 0.035
    zero_shift_sd_deg: float = 0.03
    caglioti_uvw_deg2: tuple[float, float, float] = (0.02, -0.01, 0.012)
    size_broadening: tuple[float, float] = (0.9, 1.4)
    eta: tuple[float, float] = (0.2, 0.7)
    march_dollase_r: tuple[float, float] = (0.7, 1.0)
    peak_counts: float = 5000.0
    background_counts: tuple[float, float] = (50.0, 200.0)
    hump_fraction: tuple[float, float] = (0.02, 0.06)


NOISE_LEVELS: dict[str, MeasurementConditions] = {
    "low": MeasurementConditions(
        expansion_iso=(0.0, 0.01), expansion_aniso_sd=0.004, zero_shift_sd_deg=0.01,
        caglioti_uvw_deg2=(0.01, -0.005, 0.006), size_broadening=(0.9, 1.1),
        march_dollase_r=(0.9, 1.0), peak_counts=50000.0, background_counts=(100.0, 300.0),
        hump_fraction=(0.005, 0.02),
    ),
    "default": MeasurementConditions(),
    "anisotropic": MeasurementConditions(
        expansion_iso=(0.0, 0.03), expansion_aniso_sd=0.015, expansion_limit=0.05, march_dollase_r=(0.6, 1.0),
    ),
    "high": MeasurementConditions(
        expansion_iso=(0.005, 0.03), expansion_aniso_sd=0.012, expansion_limit=0.04,
        zero_shift_sd_deg=0.06, caglioti_uvw_deg2=(0.04, -0.02, 0.03), size_broadening=(1.0, 1.8),
        march_dollase_r=(0.55, 1.0), peak_counts=1000.0, background_counts=(40.0, 150.0),
        hump_fraction=(0.05, 0.15),
    ),
}


def conditions(level: str | MeasurementConditions) -> MeasurementConditions:
    """Resolve a noise-level name ("low", "default", "high") or pass conditions through."""
    if isinstance(level, MeasurementConditions):
        return level
    if level not in NOISE_LEVELS:
        raise ValueError(f"unknown noise level {level!r}; use one of {', '.join(NOISE_LEVELS)}")
    return NOISE_LEVELS[level]


def pseudo_voigt(x: np.ndarray, center: np.ndarray, fwhm: np.ndarray, eta: float) -> np.ndarray:
    """Area-normalised pseudo-Voigt profiles.

    Args:
        x: abscissa, shape (n_points,), deg.
        center: peak positions, shape (n_peaks,), deg.
        fwhm: full widths at half maximum, shape (n_peaks,), deg.
        eta: Lorentzian fraction in [0, 1].

    Returns:
        Profiles, shape (n_peaks, n_points), each integrating to 1 (per deg).
    """
    import numpy as np

    dx = x[None, :] - center[:, None]
    hw = 0.5 * fwhm[:, None]
    gauss = np.sqrt(np.log(2) / np.pi) / hw * np.exp(-np.log(2) * (dx / hw) ** 2)
    lorentz = 1.0 / np.pi * hw / (dx**2 + hw**2)
    return eta * lorentz + (1.0 - eta) * gauss


def caglioti_fwhm_deg(two_theta_deg: np.ndarray, uvw_deg2: tuple[float, float, float]) -> np.ndarray:
    """Caglioti FWHM (deg) at the given 2-theta (deg); floored at 0.02 deg."""
    import numpy as np

    t = np.tan(np.radians(two_theta_deg) / 2)
    u, v, w = uvw_deg2
    return np.sqrt(np.clip(u * t**2 + v * t + w, 4e-4, None))


def march_dollase(cos_alpha: np.ndarray, r: float) -> np.ndarray:
    """March-Dollase texture weight for angle alpha between scattering vector and axis."""
    import numpy as np

    c2 = np.clip(cos_alpha, -1.0, 1.0) ** 2
    return (r**2 * c2 + (1.0 - c2) / r) ** -1.5


def expand_lattice(structure: Structure, factors: tuple[float, float, float]) -> Structure:
    """Copy of ``structure`` with lattice lengths a, b, c multiplied by ``factors``.

    Angles and fractional coordinates are kept (a homogeneous strain along the axes).
    """
    from pymatgen.core import Lattice, Structure

    p = structure.lattice.parameters
    lat = Lattice.from_parameters(p[0] * factors[0], p[1] * factors[1], p[2] * factors[2], *p[3:])
    return Structure(lat, structure.species, structure.frac_coords, coords_are_cartesian=False)


_STANDARD_CACHE: dict[str, Structure] = {}


def standard_setting(structure: Structure) -> Structure:
    """``structure`` in the cell its CIF is written in: the ITA standard setting
    (:func:`sim_backends.csp.landscape.standard_symmetrised` at the CIF tolerance, the
    cell :func:`~sim_backends.csp.landscape.crystal_cif` writes and the lab server
    simulates from). Per-axis lattice factors (thermal expansion, its fit in
    :func:`agent.lab.identify.identify`) refer to these axes, so the same crystal stored in
    another basis (a CSP search cell, e.g. a monoclinic crystal with gamma 112.8 deg
    instead of beta 118.3 deg) is expanded and fitted alike. Cached per structure."""
    import hashlib

    import numpy as np

    from sim_backends.csp.landscape import CIF_SYMPREC, standard_symmetrised

    h = hashlib.sha1()
    h.update(np.round(structure.lattice.matrix, 6).tobytes())
    h.update(np.round(structure.frac_coords % 1.0, 6).tobytes())
    h.update(" ".join(str(sp) for sp in structure.species).encode())
    key = h.hexdigest()
    hit = _STANDARD_CACHE.get(key)
    if hit is None:
        hit = standard_symmetrised(structure, CIF_SYMPREC)
        if len(_STANDARD_CACHE) >= 4096:
            _STANDARD_CACHE.pop(next(iter(_STANDARD_CACHE)))
        _STANDARD_CACHE[key] = hit
    return hit


def axis_groups(structure: Structure, rel_tol: float = 1e-3) -> list[list[int]]:
    """Lattice axes that symmetry keeps equal under thermal expansion.

    Tetragonal / hexagonal-like metrics (a = b, gamma = 90 or 120 deg) tie a and b;
    cubic / rhombohedral-like metrics (a = b = c, equal angles) tie all three.

    Returns:
        Groups of axis indices, e.g. ``[[0, 1], [2]]``.
    """
    a, b, c, al, be, ga = structure.lattice.parameters

    def eq(x: float, y: float) -> bool:
        return abs(x - y) <= rel_tol * max(abs(x), abs(y))

    if eq(a, b) and eq(b, c) and eq(al, be) and eq(be, ga):
        return [[0, 1, 2]]
    if eq(a, b) and eq(al, 90.0) and eq(be, 90.0) and (eq(ga, 90.0) or eq(ga, 120.0)):
        return [[0, 1], [2]]
    return [[0], [1], [2]]


@dataclass(frozen=True)
class BraggPeaks:
    """Ideal peaks of one structure in a 2-theta window.

    Attributes:
        two_theta_deg: peak positions, shape (n_peaks,).
        intensity: integrated intensities scaled to a maximum of 100, shape (n_peaks,).
        hkls: per peak, the family representatives and multiplicities from pymatgen.
    """

    two_theta_deg: np.ndarray
    intensity: np.ndarray
    hkls: tuple[tuple[tuple[tuple[int, ...], int], ...], ...]


def bragg_peaks(structure: Structure, wavelength: str = "CuKa", margin_deg: float = 2.0) -> BraggPeaks:
    """pymatgen ``XRDCalculator`` peaks of ``structure`` over the grid range +- margin."""
    import numpy as np
    from pymatgen.analysis.diffraction.xrd import XRDCalculator

    pattern = XRDCalculator(wavelength=wavelength).get_pattern(
        structure, scaled=True, two_theta_range=(max(TWO_THETA_MIN_DEG - margin_deg, 0.5), TWO_THETA_MAX_DEG + margin_deg)
    )
    hkls = tuple(tuple((tuple(int(i) for i in f["hkl"]), int(f["multiplicity"])) for f in fam) for fam in pattern.hkls)
    return BraggPeaks(np.asarray(pattern.x, float), np.asarray(pattern.y, float), hkls)


def _hkl3(hkl: tuple[int, ...]) -> tuple[int, int, int]:
    """Miller-Bravais (h, k, i, l) -> (h, k, l); 3-index passes through."""
    return (hkl[0], hkl[1], hkl[-1])


def texture_weights(structure: Structure, peaks: BraggPeaks, direction_hkl: tuple[int, int, int], r: float) -> np.ndarray:
    """March-Dollase weights per peak, averaged over symmetry-equivalent reflections.

    Args:
        structure: the (expanded) structure the peaks belong to.
        peaks: its Bragg peaks.
        direction_hkl: reciprocal-lattice direction of the preferred orientation.
        r: March-Dollase parameter (r < 1: platelets lying flat).

    Returns:
        Weights, shape (n_peaks,), normalised so the mean over a sphere is 1.
    """
    import numpy as np
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        ops = [op.rotation_matrix for op in SpacegroupAnalyzer(structure, symprec=0.1).get_point_group_operations(cartesian=False)]
    except Exception:  # symmetry search failure: fall back to inversion only
        ops = [np.eye(3), -np.eye(3)]
    recip = structure.lattice.reciprocal_lattice.matrix
    axis = np.asarray(direction_hkl, float) @ recip
    axis /= np.linalg.norm(axis)
    weights = np.empty(len(peaks.hkls))
    for i, fams in enumerate(peaks.hkls):
        total, n = 0.0, 0
        for hkl, mult in fams:
            h = np.asarray(_hkl3(hkl), float)
            eq = np.unique(np.rint(np.stack([h @ rot for rot in ops])).astype(int), axis=0)
            g = eq @ recip
            cos = g @ axis / np.linalg.norm(g, axis=1)
            total += mult * float(np.mean(march_dollase(cos, r)))
            n += mult
        weights[i] = total / max(n, 1)
    return weights


_LOW_INDEX = ((1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1))


def peak_profile(
    grid: np.ndarray,
    two_theta_deg: np.ndarray,
    intensity: np.ndarray,
    uvw_deg2: tuple[float, float, float],
    broadening: float,
    eta: float,
) -> np.ndarray:
    """Sum of pseudo-Voigt peaks on ``grid`` (peak heights in the same units as intensity*area)."""
    import numpy as np

    if len(two_theta_deg) == 0:
        return np.zeros_like(grid)
    fwhm = caglioti_fwhm_deg(two_theta_deg, uvw_deg2) * broadening
    out = np.zeros_like(grid)
    for lo in range(0, len(two_theta_deg), 256):  # bounded memory
        sl = slice(lo, lo + 256)
        out += intensity[sl] @ pseudo_voigt(grid, two_theta_deg[sl], fwhm[sl], eta)
    return out


def background(grid: np.ndarray, rng: np.random.Generator, cond: MeasurementConditions) -> np.ndarray:
    """Smooth background (counts): polynomial + low-angle exponential + amorphous hump."""
    import numpy as np

    x = (grid - grid[0]) / (grid[-1] - grid[0])
    level = rng.uniform(*cond.background_counts)
    poly = level * (1.0 + rng.uniform(-0.3, 0.3) * x + rng.uniform(-0.2, 0.2) * x**2)
    air = level * rng.uniform(0.5, 2.0) * np.exp(-(grid - grid[0]) / rng.uniform(2.0, 5.0))
    hump = amorphous_hump(grid, rng) * cond.peak_counts * rng.uniform(*cond.hump_fraction)
    return poly + air + hump


def amorphous_hump(grid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A broad Gaussian hump of unit height centred near 2-theta = 18-26 deg (FWHM 6-10 deg)."""
    import numpy as np

    center = rng.uniform(18.0, 26.0)
    fwhm = rng.uniform(6.0, 10.0)
    return np.exp(-4 * np.log(2) * ((grid - center) / fwhm) ** 2)


def simulate_pxrd(
    phases: list[tuple[Structure, float]],
    rng: np.random.Generator,
    level: str | MeasurementConditions = "default",
    wavelength: str = "CuKa",
    grid: np.ndarray | None = None,
    temperature_K: float | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A measured PXRD pattern of a sample made of one or more crystalline phases.

    Args:
        phases: (structure, weight fraction) pairs; fractions are normalised.
        rng: numpy random generator (all randomness comes from it).
        level: noise-level name or explicit :class:`MeasurementConditions`.
        wavelength: X-ray source for pymatgen (``"CuKa"``).
        grid: 2-theta grid, default :func:`two_theta_grid`.
        temperature_K: temperature of the sample; scales the isotropic thermal
            expansion by ``temperature_K / 298.15`` (module docstring). None: room
            temperature (the level's ranges as they are). The random draws are the
            same at any temperature.

    Returns:
        ``(two_theta_deg, counts, info)``: arrays of shape (n_points,) and a dict with
        the drawn effect parameters (expansion factors per phase, zero shift, ...).
    """
    import numpy as np

    cond = conditions(level)
    grid = two_theta_grid() if grid is None else grid
    zero_shift = float(rng.normal(0.0, cond.zero_shift_sd_deg))
    broadening = float(rng.uniform(*cond.size_broadening))
    eta = float(rng.uniform(*cond.eta))
    total = sum(f for _, f in phases)
    if not phases or total <= 0:
        raise ValueError("simulate_pxrd needs at least one phase with a positive fraction")
    if temperature_K is not None and not 0.0 < float(temperature_K) <= 2000.0:
        raise ValueError(f"temperature_K must be in (0, 2000] K, got {temperature_K!r}")
    t_scale = 1.0 if temperature_K is None else float(temperature_K) / ROOM_TEMPERATURE_K
    signal = np.zeros_like(grid)
    info: dict[str, Any] = {"zero_shift_deg": zero_shift, "broadening": broadening, "eta": eta, "phases": []}
    for structure, fraction in phases:
        structure = standard_setting(structure)  # expansion along the crystal's standard axes
        iso = rng.uniform(*cond.expansion_iso) * t_scale
        factors_list = [1.0, 1.0, 1.0]
        for group in axis_groups(structure):  # symmetry-equivalent axes expand alike
            f = float(np.clip(1.0 + iso + rng.normal(0.0, cond.expansion_aniso_sd), 1 - cond.expansion_limit, 1 + cond.expansion_limit))
            for ax in group:
                factors_list[ax] = f
        factors = tuple(factors_list)
        expanded = expand_lattice(structure, factors)  # type: ignore[arg-type]
        peaks = bragg_peaks(expanded, wavelength)
        r = float(rng.uniform(*cond.march_dollase_r))
        direction = _LOW_INDEX[int(rng.integers(len(_LOW_INDEX)))]
        weights = texture_weights(expanded, peaks, direction, r) if r < 0.999 else np.ones(len(peaks.intensity))
        intensity = peaks.intensity * weights
        # integrated intensity -> counts: strongest (untextured) pure-phase peak ~ peak_counts high
        fwhm0 = float(caglioti_fwhm_deg(np.array([20.0]), cond.caglioti_uvw_deg2)[0]) * broadening
        scale = cond.peak_counts * fwhm0 / 100.0 * (fraction / total)
        signal += scale * peak_profile(grid, peaks.two_theta_deg + zero_shift, intensity, cond.caglioti_uvw_deg2, broadening, eta)
        info["phases"].append({"expansion": factors, "march_dollase_r": r, "texture_hkl": direction})
    expected = signal + background(grid, rng, cond)
    counts = rng.poisson(np.clip(expected, 0, None)).astype(float)
    return grid.copy(), counts, info


def simulate_amorphous(
    rng: np.random.Generator, level: str | MeasurementConditions = "default", grid: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Pattern of an amorphous (glassy) product: background plus a strong broad hump."""
    import numpy as np

    cond = conditions(level)
    grid = two_theta_grid() if grid is None else grid
    hump_cond = replace(cond, hump_fraction=(0.08, 0.2))
    expected = background(grid, rng, hump_cond) + amorphous_hump(grid, rng) * cond.peak_counts * rng.uniform(0.05, 0.15)
    return grid.copy(), rng.poisson(expected).astype(float), {"amorphous": True}
