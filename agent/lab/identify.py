"""Identify which predicted crystal structure(s) a measured PXRD pattern shows.

Similarity measure: the normalised weighted cross-correlation (WCC) of de Gelder,
Wehrens & Hageman, J. Comput. Chem. 22, 273 (2001),

    S_fg = sum_r w(r) c_fg(r) / sqrt(sum_r w(r) c_ff(r) * sum_r w(r) c_gg(r)),

with the triangle weight w(r) = 1 - |r|/l for |r| < l, where c_fg(r) is the
cross-correlation of patterns f and g at lag r. Because the triangle weight is a
symmetric convolution kernel T, sum_r w(r) c_fg(r) = <f, T g>, so every candidate and
search point costs one convolution and one dot product.

Robustness to the effects of a real measurement (see :mod:`agent.lab.pxrd`):

* background: removed from the measured pattern with the SNIP algorithm (Ryan et al.,
  Nucl. Instrum. Methods B 34, 396 (1988); Morhac et al., NIM A 401, 113 (1997)) on
  the LLS-transformed counts;
* peak widths / profile shape: candidate sticks are broadened with a Gaussian and the
  WCC triangle tolerates residual peak misplacement up to ~l;
* anisotropic thermal expansion: every candidate's per-axis lattice factors (a, b, c of
  its standard setting, the cell its CIF is written in, whatever basis it is stored in:
  :func:`agent.lab.pxrd.standard_setting`; within ``scale_bounds``, 0.95-1.05; axes that
  symmetry ties move together) are fitted
  on its own: a grid screen scored with a wide triangle (l = 1 deg, tolerant of the
  grid's residual misplacement) on a 3x coarser 2-theta grid, then local refinement of
  the best grid points with the final l (peak positions recomputed from the Miller
  indices and the scaled metric; intensities re-weighted by the Lorentz-polarisation
  factor at the new angle). Angles are kept (the expansion model of the simulated lab);
* zero shift: a search over 2-theta offsets of +-0.1 deg;
* preferred orientation: a March-Dollase correction (r 0.6-1.3 along 7 low-index
  directions, averaged over symmetry-equivalent reflections) fitted at each
  candidate's lattice.

Because a candidate's score depends only on the pattern and that candidate, offering
more (wrong) candidates never changes the scores of the others: the answer can only
change to a new candidate that fits better. Candidates whose screen score stays below
``min_screen_score`` (0.5, far below a match) are not refined. Scores are evaluated in
Fourier space (one real FFT per trial lattice, all zero shifts by one matrix product).

The confidence is a softmax over all candidates' scores with temperature
:data:`SOFTMAX_TAU`, chosen by maximum likelihood of the simulated truth on patterns
from the simulated lab (see ``benchmarks/pxrd_identification.py``, which reports its
calibration on other patterns).

No match: best score below ``match_threshold``. Mixture: the best one-phase
non-negative least-squares fit of the (lightly smoothed) measured pattern leaves at
least ``mixture_min_residual`` of the signal unexplained, a two-phase fit with the best
match plus one of the candidates that best explain the residual (each refitted to the
residual in lattice scale and zero shift) cuts the residual below ``mixture_ratio``
times the one-phase residual, and the minor phase carries at least ``min_fraction``.
``mixture_min_residual`` and ``mixture_ratio`` are chosen on one half of 60 simulated
two-phase mixtures and 60 single phases and checked on the other half
(``benchmarks/pxrd_identification.py --mixture-calibration 60``).

Candidate peak lists are cached per structure (keyed by a hash of lattice, species and
fractional coordinates, and the wavelength).

Over 500 lines on purpose: peak simulation, background removal, profile fitting and ranking
are one PXRD matching pipeline sharing its grids and caches.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.lab.pxrd import TWO_THETA_MAX_DEG, TWO_THETA_MIN_DEG, TWO_THETA_STEP_DEG, axis_groups, bragg_peaks, standard_setting, two_theta_grid

if TYPE_CHECKING:
    import numpy as np
    from pymatgen.core import Structure

_CACHE_MAX = 4096
MAX_REFLECTIONS = 200_000
"""Refuse candidate cells with more reflections than this up to 2-theta = 46 deg (Cu Ka:
about 360,000 A^3; molecular-crystal cells are below 20,000 A^3)."""
SOFTMAX_TAU = 0.0055
"""Temperature of the confidence softmax over WCC scores: the maximum-likelihood value
for the simulated truth on 27 simulated-lab patterns ("anisotropic" noise, lab seeds
7000-7002, all candidates of formamide_big, formic_acid_big_dft and target_I+X23)."""
_PEAK_CACHE: dict[str, CandidatePeaks] = {}


@dataclass(frozen=True)
class CandidatePeaks:
    """Peaks of one candidate, stored so they can be recomputed for a scaled lattice.

    Attributes:
        hkl: Miller indices, shape (n_refl, 3).
        intensity_no_lp: integrated intensity divided by the Lorentz-polarisation
            factor at the unscaled position, shape (n_refl,).
        recip_metric: reciprocal metric tensor G* of the unscaled lattice, (3, 3), 1/A^2.
        wavelength_A: X-ray wavelength in angstrom.
        point_ops: point-group rotations in fractional coordinates, (n_ops, 3, 3),
            to average texture over symmetry-equivalent reflections.
    """

    hkl: np.ndarray
    intensity_no_lp: np.ndarray
    recip_metric: np.ndarray
    wavelength_A: float
    point_ops: np.ndarray
    _cos: dict[tuple[int, int, int], np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    def texture_weights(self, textures: list[tuple[tuple[int, int, int], float]]) -> np.ndarray:
        """March-Dollase weights per reflection for (direction hkl, r) pairs, (m, n_refl).

        Averaged over the symmetry-equivalent reflections of each representative, as
        in :func:`agent.lab.pxrd.texture_weights` (angles from the unscaled metric).
        """
        import numpy as np

        from agent.lab.pxrd import march_dollase

        out = np.empty((len(textures), len(self.hkl)))
        for row, (direction, r) in enumerate(textures):
            cos = self._cos.get(direction)
            if cos is None:
                eq = np.einsum("nj,ojk->onk", self.hkl, self.point_ops)  # (n_ops, n_refl, 3)
                d = np.asarray(direction, float)
                num = np.einsum("onk,kl,l->on", eq, self.recip_metric, d)
                norm = np.sqrt(np.einsum("onk,kl,onl->on", eq, self.recip_metric, eq) * float(d @ self.recip_metric @ d))
                cos = self._cos[direction] = num / np.clip(norm, 1e-300, None)
            out[row] = march_dollase(cos, r).mean(axis=0)
        return out

    def positions(self, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Peak positions and intensities for per-axis length factors.

        Args:
            scales: shape (m, 3), factors on a, b, c.

        Returns:
            ``(two_theta_deg, intensity)``, both shape (m, n_refl); NaN where the
            reflection is beyond 180 deg.
        """
        import numpy as np

        h = self.hkl[None, :, :] / scales[:, None, :]
        inv_d2 = np.einsum("mni,ij,mnj->mn", h, self.recip_metric, h)
        sin_t = 0.5 * self.wavelength_A * np.sqrt(inv_d2)
        with np.errstate(invalid="ignore"):
            theta = np.arcsin(np.where(sin_t < 1, sin_t, np.nan))
        return np.degrees(2 * theta), self.intensity_no_lp[None, :] * lorentz_polarisation(theta)


def lorentz_polarisation(theta_rad: np.ndarray) -> np.ndarray:
    """Bragg-Brentano LP factor (1 + cos^2 2theta) / (sin^2 theta cos theta), unpolarised beam."""
    import numpy as np

    return (1 + np.cos(2 * theta_rad) ** 2) / (np.sin(theta_rad) ** 2 * np.cos(theta_rad))


def _structure_key(structure: Structure, wavelength: str) -> str:
    import numpy as np

    h = hashlib.sha1()
    h.update(np.round(structure.lattice.matrix, 4).tobytes())
    h.update(np.round(structure.frac_coords % 1.0, 4).tobytes())
    h.update(" ".join(str(sp) for sp in structure.species).encode())
    h.update(str(wavelength).encode())
    return h.hexdigest()


def candidate_peaks(structure: Structure, wavelength: str | float = "CuKa", name: str | None = None) -> CandidatePeaks:
    """Cached :class:`CandidatePeaks` of ``structure`` (pymatgen ``XRDCalculator``), in
    its standard setting (:func:`agent.lab.pxrd.standard_setting`): Miller indices, metric
    and per-axis factors refer to the axes of the CIF written for it, whatever basis
    ``structure`` is stored in.

    Reflections out to 2-theta = 46 deg are kept so a 5 % lattice contraction still
    fills the 40 deg end of the grid. A merged peak's intensity is split over its
    reflection families in proportion to their multiplicities.

    Raises:
        ValueError: a cell so large that its reflections up to 46 deg would exceed
            :data:`MAX_REFLECTIONS` (one line naming ``name``), or a bad wavelength.
    """
    import numpy as np

    lam = check_wavelength(wavelength)
    s_max = 2.0 * np.sin(np.radians(TWO_THETA_MAX_DEG + 6.0) / 2) / lam
    n_estimate = 4.0 / 3.0 * np.pi * s_max**3 * float(structure.lattice.volume)
    if not np.isfinite(n_estimate) or n_estimate > MAX_REFLECTIONS:
        raise ValueError(
            f"structure {name or structure.composition.reduced_formula}: cell volume {structure.lattice.volume:.3g} A^3 gives "
            f"~{n_estimate:.2g} reflections below 2theta = {TWO_THETA_MAX_DEG + 6.0:.0f} deg (limit {MAX_REFLECTIONS}); not a molecular-crystal cell"
        )
    key = _structure_key(structure, wavelength)
    hit = _PEAK_CACHE.get(key)
    if hit is not None:
        return hit
    source = wavelength if isinstance(wavelength, str) and not _is_number(wavelength) else lam
    structure = standard_setting(structure)  # per-axis factors refer to the CIF's standard axes
    peaks = bragg_peaks(structure, source, margin_deg=6.0)  # type: ignore[arg-type]
    hkls, ints = [], []
    for tt, inten, fams in zip(peaks.two_theta_deg, peaks.intensity, peaks.hkls):
        n_mult = sum(m for _, m in fams)
        lp = float(lorentz_polarisation(np.radians(tt) / 2))
        for hkl, mult in fams:
            hkls.append((hkl[0], hkl[1], hkl[-1]))
            ints.append(inten * mult / n_mult / lp)
    recip = structure.lattice.reciprocal_lattice_crystallographic.matrix
    cand = CandidatePeaks(
        np.asarray(hkls, float).reshape(-1, 3), np.asarray(ints, float), recip @ recip.T, lam, _point_ops(structure)
    )
    if len(_PEAK_CACHE) >= _CACHE_MAX:
        _PEAK_CACHE.pop(next(iter(_PEAK_CACHE)))
    _PEAK_CACHE[key] = cand
    return cand


def _point_ops(structure: Structure) -> np.ndarray:
    """Fractional point-group rotations of ``structure`` (spglib, symprec 0.1 A); the
    inversion pair only when the symmetry search fails."""
    import numpy as np
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        ops = [op.rotation_matrix for op in SpacegroupAnalyzer(structure, symprec=0.1).get_point_group_operations(cartesian=False)]
    except Exception:  # spglib gives up on some distorted cells
        ops = []
    return np.asarray(ops, float) if ops else np.stack([np.eye(3), -np.eye(3)])


def snip_background(y: np.ndarray, half_width_points: int = 40) -> np.ndarray:
    """SNIP background of a spectrum (increasing clipping window, LLS transform).

    Args:
        y: counts, shape (n_points,).
        half_width_points: largest clipping half-window; peaks narrower than about
            twice this are removed, broader features (humps) are kept as background.

    Returns:
        Background estimate, shape (n_points,).
    """
    import numpy as np

    v = np.log(np.log(np.sqrt(np.clip(y, 0, None) + 1) + 1) + 1)
    n = len(v)
    for p in range(1, min(half_width_points, (n - 1) // 2) + 1):
        mid = 0.5 * (v[: n - 2 * p] + v[2 * p :])
        v[p : n - p] = np.minimum(v[p : n - p], mid)
    return (np.exp(np.exp(v) - 1) - 1) ** 2 - 1


def _gaussian_kernel(fwhm_deg: float, step: float) -> np.ndarray:
    import numpy as np

    sigma = fwhm_deg / 2.3548 / step
    half = max(1, int(np.ceil(4 * sigma)))
    x = np.arange(-half, half + 1)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _triangle_kernel(half_width_deg: float, step: float) -> np.ndarray:
    import numpy as np

    half = max(1, int(round(half_width_deg / step)))
    x = np.arange(-half, half + 1)
    return 1.0 - np.abs(x) / half


def _convolve_rows(a: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    from scipy.signal import fftconvolve

    return fftconvolve(a, kernel[None, :] if a.ndim == 2 else kernel, mode="same", axes=-1)


def bin_sticks(grid: np.ndarray, two_theta: np.ndarray, intensity: np.ndarray) -> np.ndarray:
    """Spread stick intensities onto a uniform grid by linear interpolation.

    Args:
        grid: uniform 2-theta grid, shape (n_points,).
        two_theta: stick positions, shape (m, n_refl) (NaN allowed: dropped).
        intensity: stick intensities, shape (m, n_refl).

    Returns:
        Binned sticks, shape (m, n_points).
    """
    import numpy as np

    m, n_pts = two_theta.shape[0], len(grid)
    step = grid[1] - grid[0]
    pos = (two_theta - grid[0]) / step
    ok = np.isfinite(pos) & (pos >= 0) & (pos < n_pts - 1)
    rows = np.broadcast_to(np.arange(m)[:, None], pos.shape)[ok]
    p, w = pos[ok], intensity[ok]
    i0 = np.floor(p).astype(int)
    frac = p - i0
    flat = np.bincount(rows * n_pts + i0, w * (1 - frac), minlength=m * n_pts)
    flat += np.bincount(rows * n_pts + i0 + 1, w * frac, minlength=m * n_pts)
    return flat.reshape(m, n_pts)


@dataclass
class IdentifyResult:
    """Outcome of :func:`identify`.

    Attributes:
        ranked: (name, WCC score in [-1, 1]) for every candidate, best first.
        best: name of the best single match (the major phase of a mixture), or None
            when there is no match.
        confidence: softmax probability of the best candidate over all scores
            (temperature ``softmax_tau``), 0 when there is no match.
        score_gap: best score minus second-best score.
        is_match: whether the pattern is explained by the candidates.
        is_mixture: whether two candidates explain it significantly better than one.
        components: (name, weight fraction) of the explaining phases, major first.
        best_scales: per-axis lattice factors (a, b, c of its standard setting) of the best match.
        best_zero_shift_deg: 2-theta zero shift of the best match.
        residual_single: relative squared residual of the best one-phase fit.
        residual_pair: relative squared residual of the best two-phase fit.
        best_texture: fitted March-Dollase (direction hkl, r) of the best match, None
            when no texture correction improved it.
        component_scales: per-axis lattice factors of each of ``components`` (same
            order) as used in the fit (a mixture's minor phase: its fit to the residual).
        component_zero_shifts_deg: 2-theta zero shift of each of ``components``.
    """

    ranked: list[tuple[str, float]]
    best: str | None
    confidence: float
    score_gap: float
    is_match: bool
    is_mixture: bool
    components: list[tuple[str, float]]
    best_scales: tuple[float, float, float] = (1.0, 1.0, 1.0)
    best_zero_shift_deg: float = 0.0
    residual_single: float = 1.0
    residual_pair: float = 1.0
    best_texture: tuple[tuple[int, int, int], float] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    component_scales: list[tuple[float, float, float]] = field(default_factory=list)
    component_zero_shifts_deg: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ranked": [{"name": n, "score": round(s, 5)} for n, s in self.ranked],
            "best": self.best,
            "confidence": self.confidence,
            "score_gap": self.score_gap,
            "is_match": self.is_match,
            "is_mixture": self.is_mixture,
            "components": [{"name": n, "fraction": round(f, 4)} for n, f in self.components],
            "best_scales": list(self.best_scales),
            "best_zero_shift_deg": self.best_zero_shift_deg,
            "residual_single": self.residual_single,
            "residual_pair": self.residual_pair,
            "best_texture": None if self.best_texture is None else {"hkl": list(self.best_texture[0]), "march_dollase_r": self.best_texture[1]},
            "component_scales": [list(c) for c in self.component_scales],
            "component_zero_shifts_deg": list(self.component_zero_shifts_deg),
        }


def prepare_measured(two_theta: np.ndarray, intensity: np.ndarray, snip_half_width_deg: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Resample a measured pattern onto the standard grid and subtract its background.

    Args:
        two_theta: measured abscissa (deg), shape (n,), increasing.
        intensity: counts, shape (n,).
        snip_half_width_deg: SNIP window (deg).

    Returns:
        ``(grid, signal)``: the standard grid clipped to the measured range and the
        background-subtracted signal on it, both shape (n_grid,).

    Raises:
        ValueError: non-finite values, fewer than 50 points, or a range under 10 deg.
    """
    import numpy as np

    x = np.asarray(two_theta, float).ravel()
    y = np.asarray(intensity, float).ravel()
    if x.shape != y.shape or len(x) < 50:
        raise ValueError("pattern needs matching 2theta/intensity columns with at least 50 points")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("pattern contains non-finite values")
    order = np.argsort(x)
    x, y = x[order], y[order]
    lo, hi = max(x[0], TWO_THETA_MIN_DEG), min(x[-1], TWO_THETA_MAX_DEG)
    if hi - lo < 10.0:
        raise ValueError(f"pattern covers {max(hi - lo, 0):.1f} deg of 2theta within 5-40 deg; need at least 10")
    grid = two_theta_grid()
    grid = grid[(grid >= lo - 1e-9) & (grid <= hi + 1e-9)]
    yg = np.interp(grid, x, y)
    signal = yg - snip_background(yg, int(round(snip_half_width_deg / TWO_THETA_STEP_DEG)))
    return grid, signal


class _Target:
    """A measured signal prepared for WCC scores of many candidate lattices at once.

    The WCC numerator <T P g, f_z> and the norm <g, P T P g> of a stick pattern g are
    evaluated in Fourier space (zero-padded, so no wrap-around): one real FFT per
    candidate lattice, then a matrix product over all zero shifts z.

    Args:
        grid: uniform 2-theta grid (deg), shape (n,).
        signal: background-free measured signal on it, shape (n,).
        triangle_half_width_deg: l of the WCC triangle weight (deg).
        peak_fwhm_deg: Gaussian width given to candidate sticks (deg).
        n_shift: zero shifts -n_shift..n_shift grid steps are scored.
    """

    def __init__(self, grid: np.ndarray, signal: np.ndarray, triangle_half_width_deg: float, peak_fwhm_deg: float, n_shift: int) -> None:
        import numpy as np

        self.grid = grid
        self.step = float(grid[1] - grid[0])
        tri = _triangle_kernel(triangle_half_width_deg, self.step)
        gauss = _gaussian_kernel(peak_fwhm_deg, self.step)
        pad = len(tri) + 2 * len(gauss) + 2 * n_shift + 4
        self.n_fft = 1 << int(np.ceil(np.log2(len(grid) + pad)))
        t_hat, p_hat = _kernel_spectrum(tri, self.n_fft), _kernel_spectrum(gauss, self.n_fft)
        w = np.full(self.n_fft // 2 + 1, 2.0)
        w[0] = 1.0
        w[-1] = 1.0
        w /= self.n_fft
        f_hat = np.fft.rfft(signal, self.n_fft)
        self.shifts = np.arange(-n_shift, n_shift + 1)
        phase = np.exp(2j * np.pi * np.outer(np.arange(len(w)), self.shifts) / self.n_fft)
        q = (w * t_hat * p_hat * f_hat)[:, None] * phase
        self.q_re, self.q_im = np.ascontiguousarray(q.real), np.ascontiguousarray(q.imag)
        self.k_gg = w * t_hat * p_hat**2
        self.ff = max(float(np.sum(w * t_hat * np.abs(f_hat) ** 2)), 1e-300)

    def scores(self, cand: CandidatePeaks, scales: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """WCC of ``cand`` at per-axis factors ``scales`` (m, 3) and every zero shift: (m, n_z).

        ``weights`` (m, n_refl), if given, multiply the reflection intensities (texture).
        """
        import numpy as np

        out = np.empty((len(scales), len(self.shifts)))
        for lo in range(0, len(scales), 256):  # bounded memory
            tt, inten = cand.positions(scales[lo : lo + 256])
            if weights is not None:
                inten = inten * weights[lo : lo + 256]
            g_hat = np.fft.rfft(bin_sticks(self.grid, tt, inten), self.n_fft, axis=1)
            num = g_hat.real @ self.q_re + g_hat.imag @ self.q_im
            gg = (g_hat.real**2 + g_hat.imag**2) @ self.k_gg
            out[lo : lo + 256] = num / np.sqrt(np.clip(gg, 1e-300, None) * self.ff)[:, None]
        return out

    def best(self, cand: CandidatePeaks, scales: np.ndarray, weights: np.ndarray | None = None) -> tuple[float, np.ndarray, int]:
        """(best score, its factors (3,), its zero shift in grid steps) over ``scales``."""
        import numpy as np

        s = np.nan_to_num(self.scores(cand, scales, weights), nan=-2.0)
        j, z = np.unravel_index(int(np.argmax(s)), s.shape)
        return float(s[j, z]), scales[j].copy(), int(self.shifts[z])

    def best_texture(self, cand: CandidatePeaks, scale: np.ndarray, textures: list[tuple[tuple[int, int, int], float]]) -> tuple[float, int, int]:
        """(best score, index into ``textures``, zero shift) at fixed factors ``scale``."""
        import numpy as np

        s = np.nan_to_num(self.scores(cand, np.repeat(scale[None, :], len(textures), axis=0), cand.texture_weights(textures)), nan=-2.0)
        j, z = np.unravel_index(int(np.argmax(s)), s.shape)
        return float(s[j, z]), int(j), int(self.shifts[z])


TEXTURE_DIRECTIONS: tuple[tuple[int, int, int], ...] = ((1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1))
"""Preferred-orientation directions (reciprocal lattice) tried by :func:`identify`."""
TEXTURE_R: tuple[float, ...] = (0.6, 0.7, 0.8, 0.9, 1.15, 1.3)
"""March-Dollase r values tried (r < 1 platelets, r > 1 needles; r = 1 is no texture)."""


def _kernel_spectrum(kernel: np.ndarray, n_fft: int) -> np.ndarray:
    """Real spectrum of a symmetric, centred odd-length kernel placed circularly."""
    import numpy as np

    h = len(kernel) // 2
    circ = np.zeros(n_fft)
    circ[: h + 1] = kernel[h:]
    if h:
        circ[-h:] = kernel[:h]
    return np.fft.rfft(circ).real


def _axis_grid(groups: list[list[int]], values: np.ndarray, center: np.ndarray | None = None) -> np.ndarray:
    """Per-axis factor rows (m, 3): every combination of ``values`` over the axis groups
    (axes in one group move together), added to ``center`` when given."""
    import numpy as np

    combos = np.array(list(itertools.product(values, repeat=len(groups))), float).reshape(-1, len(groups))
    rows = np.zeros((len(combos), 3)) if center is None else np.repeat(center[None, :], len(combos), axis=0)
    for k, group in enumerate(groups):
        rows[:, group] += combos[:, k : k + 1]
    return rows


def _coarse_target(grid: np.ndarray, signal: np.ndarray, factor: int, triangle_half_width_deg: float, peak_fwhm_deg: float, zero_shift_max_deg: float) -> _Target:
    """A :class:`_Target` on a grid ``factor`` times coarser (bin-averaged signal)."""
    import numpy as np

    n = len(grid) // factor * factor
    g = grid[:n].reshape(-1, factor).mean(axis=1)
    f = signal[:n].reshape(-1, factor).mean(axis=1)
    n_shift = int(round(zero_shift_max_deg / float(g[1] - g[0])))
    return _Target(g, f, triangle_half_width_deg, peak_fwhm_deg, n_shift)


def _fit_all_axes(
    cand: CandidatePeaks,
    groups: list[list[int]],
    coarse: _Target,
    fine: _Target,
    bounds: tuple[float, float],
    coarse_step: float,
    n_starts: int,
    min_screen_score: float,
) -> tuple[float, np.ndarray, int]:
    """Per-axis lattice factors and zero shift of one candidate, independent of any other.

    A grid over all per-axis factors in ``bounds`` (step ``coarse_step``) is scored with
    the wide-triangle ``coarse`` target; the ``n_starts`` best grid points are refined
    locally (steps coarse_step/3, /9, /27) with the ``fine`` target. Candidates whose
    screen score stays below ``min_screen_score`` are not refined.

    Returns:
        (fine score, factors (3,), zero shift in fine grid steps).
    """
    import numpy as np

    values = np.arange(bounds[0], bounds[1] + 1e-9, coarse_step)
    rows = _axis_grid(groups, values)
    s = np.nan_to_num(coarse.scores(cand, rows), nan=-2.0).max(axis=1)
    order = np.argsort(-s)[: max(1, n_starts)]
    if s[order[0]] < min_screen_score:
        return fine.best(cand, rows[order[:1]])
    best = (-2.0, rows[order[0]], 0)
    for j in order:
        score, center, shift = fine.best(cand, rows[j : j + 1])
        for delta in (coarse_step / 3, coarse_step / 9, coarse_step / 27):
            local = np.clip(_axis_grid(groups, delta * np.arange(-1.0, 2.0), center), bounds[0] - coarse_step, bounds[1] + coarse_step)
            score_l, center_l, shift_l = fine.best(cand, local)
            if score_l > score:
                score, center, shift = score_l, center_l, shift_l
        if score > best[0]:
            best = (score, center, shift)
    return best


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_wavelength(wavelength: str | float) -> float:
    """The X-ray wavelength in angstrom for a pymatgen source name or a number (A).

    Raises:
        ValueError: unknown source name, or a number outside 0.1-5 A (one line).
    """
    from pymatgen.analysis.diffraction.xrd import WAVELENGTHS

    if isinstance(wavelength, str) and wavelength in WAVELENGTHS:
        return float(WAVELENGTHS[wavelength])
    try:
        lam = float(wavelength)
    except (TypeError, ValueError):
        raise ValueError(f"unknown X-ray wavelength {wavelength!r}: give a source ({', '.join(sorted(WAVELENGTHS)[:6])}, ...) or angstrom") from None
    if not 0.1 <= lam <= 5.0:
        raise ValueError(f"X-ray wavelength {lam} A outside 0.1-5 A")
    return lam


def identify(
    pattern: tuple[np.ndarray, np.ndarray] | Any,
    structures: list[Structure],
    names: list[str] | None = None,
    *,
    wavelength: str | float = "CuKa",
    search: str = "all",
    triangle_half_width_deg: float = 0.4,
    screen_half_width_deg: float = 1.0,
    peak_fwhm_deg: float = 0.1,
    scale_bounds: tuple[float, float] = (0.95, 1.05),
    coarse_step: float = 0.0125,
    n_starts: int = 3,
    min_screen_score: float = 0.5,
    fit_texture: bool = True,
    zero_shift_max_deg: float = 0.1,
    scale_range: tuple[float, float] = (0.96, 1.04),
    scale_step: float = 0.005,
    n_refine: int = 6,
    match_threshold: float = 0.9,
    mixture_ratio: float = 0.8,
    min_fraction: float = 0.12,
    mixture_smooth_fwhm_deg: float = 0.15,
    mixture_min_residual: float = 0.08,
    mixture_max_residual: float = 0.2,
    softmax_tau: float = SOFTMAX_TAU,
) -> IdentifyResult:
    """Rank candidate structures by how well they explain a measured PXRD pattern.

    Args:
        pattern: ``(two_theta_deg, intensity)`` arrays of shape (n,), or a
            :class:`~agent.lab.base.LabResult`.
        structures: candidate crystal structures.
        names: one name per structure (default ``"0", "1", ...``).
        wavelength: X-ray source of the measurement (pymatgen name, e.g. "CuKa",
            or the wavelength in angstrom).
        search: "all" (default): every candidate's per-axis factors are fitted on its
            own (:func:`_fit_all_axes`), so a candidate's score does not depend on
            which other candidates are offered; "leaders": the earlier scheme, an
            isotropic screen over ``scale_range`` with per-axis refinement of the
            ``n_refine`` best only (kept as the benchmark baseline); "none": no
            lattice or zero-shift search (ablation).
        triangle_half_width_deg: l of the WCC triangle weight of the final score (deg).
        screen_half_width_deg: l of the wide-triangle screen of ``search="all"``.
        peak_fwhm_deg: Gaussian width given to candidate sticks (deg).
        scale_bounds: per-axis lattice factors searched (``search="all"``).
        coarse_step: screen grid step of the per-axis factors.
        n_starts: screen grid points refined per candidate.
        min_screen_score: candidates below this screen score are not refined
            (they cannot reach ``match_threshold``).
        fit_texture: with ``search="all"``, also fit March-Dollase preferred
            orientation (:data:`TEXTURE_DIRECTIONS` x :data:`TEXTURE_R`) to every
            refined candidate at its fitted lattice.
        zero_shift_max_deg: zero shifts searched in +- this (grid step).
        scale_range, scale_step, n_refine: isotropic screen and number of refined
            leaders of ``search="leaders"``.
        match_threshold: minimum WCC score of a match.
        mixture_ratio: a two-phase fit must reduce the residual below this fraction of
            the one-phase residual to call a mixture.
        min_fraction: minimum weight fraction of the minor phase of a mixture.
        mixture_smooth_fwhm_deg: Gaussian smoothing (deg) of the mixture fits.
        mixture_min_residual: a mixture is only considered when the best one-phase
            fit leaves at least this fraction of the squared signal unexplained.
        mixture_max_residual: a mixture explains the pattern (is a match) when its
            two-phase fit leaves at most this fraction unexplained.
        softmax_tau: temperature of the confidence softmax over scores.

    Returns:
        :class:`IdentifyResult`.

    Raises:
        ValueError: empty or inconsistent candidates, a bad pattern, an unknown
            wavelength or a cell too large to enumerate (one line).
    """
    import numpy as np

    if hasattr(pattern, "two_theta_deg") and hasattr(pattern, "intensity"):
        pattern = (pattern.two_theta_deg, pattern.intensity)
    try:
        two_theta, intensity = pattern
    except (TypeError, ValueError):
        raise ValueError("pattern must be a (two_theta_deg, intensity) pair") from None
    if not structures:
        raise ValueError("identify needs at least one candidate structure")
    if search not in ("all", "leaders", "none"):
        raise ValueError(f"unknown search {search!r}; use all, leaders or none")
    names = [str(i) for i in range(len(structures))] if names is None else [str(n) for n in names]
    if len(names) != len(structures):
        raise ValueError(f"{len(names)} names for {len(structures)} structures")
    check_wavelength(wavelength)
    grid, f = prepare_measured(np.asarray(two_theta), np.asarray(intensity))
    f_max = float(np.max(np.abs(f)))
    step = TWO_THETA_STEP_DEG
    if f_max > 0:
        f = f / f_max
    peaks_of = [candidate_peaks(s, wavelength, name=n) for s, n in zip(structures, names)]
    n_shift = 0 if search == "none" else int(round(zero_shift_max_deg / step))
    fine = _Target(grid, f, triangle_half_width_deg, peak_fwhm_deg, n_shift)

    best_score = np.full(len(structures), -1.0)
    best_scale = np.ones((len(structures), 3))
    best_shift = np.zeros(len(structures), int)
    best_texture: list[tuple[tuple[int, int, int], float] | None] = [None] * len(structures)
    if search == "all":
        coarse = _coarse_target(grid, f, 3, screen_half_width_deg, peak_fwhm_deg, zero_shift_max_deg)
        textures = [(d, r) for d in TEXTURE_DIRECTIONS for r in TEXTURE_R] if fit_texture else []
        for i, cand in enumerate(peaks_of):
            best_score[i], best_scale[i], best_shift[i] = _fit_all_axes(
                cand, axis_groups(standard_setting(structures[i])), coarse, fine, scale_bounds, coarse_step, n_starts, min_screen_score
            )
            if textures and best_score[i] >= min_screen_score:
                score, j, shift = fine.best_texture(cand, best_scale[i], textures)
                if score > best_score[i]:
                    best_score[i], best_shift[i], best_texture[i] = score, shift, textures[j]
    else:
        iso = np.arange(scale_range[0], scale_range[1] + 1e-9, scale_step) if search == "leaders" else np.ones(1)
        iso_scales = np.repeat(iso[:, None], 3, axis=1)
        for i, cand in enumerate(peaks_of):
            best_score[i], best_scale[i], best_shift[i] = fine.best(cand, iso_scales)
        leaders = np.argsort(-best_score)[: max(0, n_refine)] if search == "leaders" else []
        for i in leaders:
            groups = axis_groups(standard_setting(structures[i]))
            for deltas in (np.array([-0.015, -0.0075, 0.0, 0.0075, 0.015]), np.array([-0.00375, 0.0, 0.00375])):
                scales = np.clip(_axis_grid(groups, deltas, best_scale[i]), scale_range[0] - 0.01, scale_range[1] + 0.01)
                score, scale, shift = fine.best(peaks_of[i], scales)
                if score > best_score[i]:
                    best_score[i], best_scale[i], best_shift[i] = score, scale, shift

    order = np.argsort(-best_score, kind="stable")
    ranked = [(names[i], float(best_score[i])) for i in order]
    top = int(order[0])
    gap = float(best_score[order[0]] - best_score[order[1]]) if len(order) > 1 else 1.0
    logits = (best_score - best_score[top]) / softmax_tau
    confidence = float(1.0 / np.exp(logits).sum())

    # one- vs two-phase non-negative fits on lightly smoothed patterns; the second
    # phase is searched among all candidates by how well each explains the residual
    from scipy.optimize import nnls

    tri = _triangle_kernel(triangle_half_width_deg, step)
    gauss = _gaussian_kernel(peak_fwhm_deg, step)
    smooth = _gaussian_kernel(mixture_smooth_fwhm_deg, step)
    b = _convolve_rows(f[None, :], smooth)[0]
    bb = float(b @ b) or 1.0
    k_col = np.convolve(gauss, smooth)
    cols: dict[int, np.ndarray] = {}
    mix_scale, mix_shift = best_scale.copy(), best_shift.copy()  # minor phases refit below

    def column(i: int) -> np.ndarray:
        if i not in cols:
            tt, inten = peaks_of[i].positions(mix_scale[i][None, :])
            if best_texture[i] is not None:
                inten = inten * peaks_of[i].texture_weights([best_texture[i]])
            cols[i] = _convolve_rows(bin_sticks(grid, tt + mix_shift[i] * step, inten), k_col)[0]
        return cols[i]

    def fit(idx: list[int]) -> tuple[float, np.ndarray]:
        coef, rnorm = nnls(np.stack([column(i) for i in idx], axis=1), b)
        return rnorm**2 / bb, coef

    i1 = top
    r1, coef1 = fit([i1])
    r2, pair, pair_coef = r1, (i1,), np.array([1.0])
    if r1 >= mixture_min_residual and len(structures) > 1:
        # second phases ranked by their own fit (isotropic factors, zero shift) to the residual
        resid = np.clip(b - coef1[0] * column(i1), 0, None)
        resid_target = _Target(grid, resid, triangle_half_width_deg, peak_fwhm_deg, n_shift)
        iso_resid = np.repeat(np.arange(scale_range[0], scale_range[1] + 1e-9, scale_step)[:, None], 3, axis=1)
        second = []
        for j in range(len(structures)):
            if j != i1:
                score, scale, shift = resid_target.best(peaks_of[j], iso_resid)
                second.append((score, j, scale, shift))
        second.sort(key=lambda t: -t[0])
        for _, j, scale, shift in second[:4]:
            mix_scale[j], mix_shift[j], best_texture[j] = scale, shift, None
            cols.pop(j, None)
            r, coef = fit([i1, j])
            if r < r2 and min(coef) > 0:
                r2, pair, pair_coef = r, (i1, j), coef
    fractions = pair_coef / pair_coef.sum() if pair_coef.sum() > 0 else pair_coef
    is_mixture = (
        len(pair) == 2 and r1 >= mixture_min_residual and r2 < mixture_ratio * r1 and float(fractions.min()) >= min_fraction
    )
    is_match = bool(best_score[top] >= match_threshold) or (is_mixture and r2 <= mixture_max_residual)
    if is_mixture:
        comp_order = np.argsort(-fractions)
        components = [(names[pair[k]], float(fractions[k])) for k in comp_order]
        best_name = components[0][0]
        best_idx = pair[int(comp_order[0])]
        comp_idx = [pair[int(k)] for k in comp_order]
    else:
        components = [(names[top], 1.0)] if is_match else []
        best_name, best_idx = names[top], top
        comp_idx = [top] if is_match else []
    return IdentifyResult(
        ranked=ranked,
        best=best_name if is_match else None,
        confidence=confidence if is_match else 0.0,
        score_gap=gap,
        is_match=is_match,
        is_mixture=bool(is_mixture and is_match),
        components=components if is_match else [],
        best_scales=tuple(float(x) for x in best_scale[best_idx]),  # type: ignore[arg-type]
        best_zero_shift_deg=float(best_shift[best_idx] * step),
        residual_single=float(r1),
        residual_pair=float(r2),
        best_texture=best_texture[best_idx],
        params={"triangle_half_width_deg": triangle_half_width_deg, "peak_fwhm_deg": peak_fwhm_deg, "search": search},
        component_scales=[tuple(float(x) for x in mix_scale[i]) for i in comp_idx],  # type: ignore[misc]
        component_zero_shifts_deg=[float(mix_shift[i] * step) for i in comp_idx],
    )


def simulated_profile(
    structure: Structure,
    grid: np.ndarray,
    scales: tuple[float, float, float] = (1.0, 1.0, 1.0),
    zero_shift_deg: float = 0.0,
    peak_fwhm_deg: float = 0.1,
    wavelength: str = "CuKa",
) -> np.ndarray:
    """Gaussian-broadened candidate pattern on ``grid`` (for plots), max scaled to 1."""
    import numpy as np

    cand = candidate_peaks(structure, wavelength)
    tt, inten = cand.positions(np.asarray([scales], float))
    sticks = bin_sticks(grid, tt + zero_shift_deg, inten)
    prof = _convolve_rows(sticks, _gaussian_kernel(peak_fwhm_deg, float(grid[1] - grid[0])))[0]
    return prof / max(float(prof.max()), 1e-300)


def pearson_rank(pattern: tuple[np.ndarray, np.ndarray], structures: list[Structure], names: list[str], wavelength: str = "CuKa") -> list[tuple[str, float]]:
    """Baseline: Pearson correlation of the raw measured pattern with each candidate's
    unscaled, Gaussian-broadened pattern (no background removal, no scale or shift search).
    """
    import numpy as np

    grid = two_theta_grid()
    y = np.interp(grid, np.asarray(pattern[0], float), np.asarray(pattern[1], float))
    out = []
    for name, s in zip(names, structures):
        g = simulated_profile(s, grid, wavelength=wavelength)
        out.append((name, float(np.corrcoef(y, g)[0, 1])))
    return sorted(out, key=lambda t: -t[1])
