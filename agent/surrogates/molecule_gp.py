"""The molecule-level multi-fidelity Gaussian process over fingerprints.

Model. Every observation is a (molecule, fidelity) pair with a value ``y`` (e.g. a
hole reorganisation energy in kJ/mol from GFN2-xTB at fidelity 0 or DFT at
fidelity 1). The levels form the auto-regressive ladder of Kennedy & O'Hagan
(Biometrika 87, 1, 2000)::

    f_0(x) = g_0(x),       f_l(x) = rho_l f_(l-1)(x) + delta_l(x),
    y(x, l) = f_l(x) + eps_l,   eps_l ~ N(0, noise_l)

with ``g_0`` and every discrepancy ``delta_l`` independent GPs (constant means
``mean_base``, ``mean_delta_l``) over the Tanimoto kernel ``T`` on binary Morgan
fingerprints (no lengthscale; Ralaivola et al., Neural Networks 18, 1093, 2005;
used for molecular BO by Griffiths et al., "GAUCHE", NeurIPS 2023). Because ``T``
has no lengthscale, the joint covariance is ``T(x, x') * B[l, l']`` with ``B =
A diag(s) A^T`` (``A`` the lower-triangular loadings of the recursion, ``s`` the
variances of ``g_0`` and ``delta_l``): an intrinsic coregionalisation model whose
``B`` is constrained to the auto-regressive form.

Why this model and these priors:

* it uses the cheap level to predict the expensive one: where a molecule's xTB
  value is known, its DFT prediction is ``rho`` times it plus the discrepancy's
  posterior, and the posterior correlation between the levels at one molecule is
  what the acquisition needs to value a cheap evaluation;
* it uses every observation: molecules with only a cheap value, only an expensive
  one, or both (Le Gratiet, Int. J. Uncertain. Quantif. 4, 365, 2014, shows that
  the recursive formulation needs nested designs for its closed forms; the joint
  Gaussian likelihood here does not);
* a free-form ``B`` fitted by maximum likelihood collapses when the top level has
  one or two points: the per-level mean absorbs the residual and the top-level
  signal variance goes to zero, so the DFT prediction is the same constant for
  every molecule and no expensive evaluation looks worth it again. The
  auto-regressive parameters carry priors instead (maximum a posteriori, in the
  spirit of Le Gratiet's Bayesian treatment of ``rho`` and the trend): ``rho_l ~
  N(1, 0.5^2)`` (the levels share one standardisation, so 1 = same scale),
  ``log(s_delta_l / s_0) ~ N(log 0.3, 1.5^2)`` (a prior correlation of 0.88
  between adjacent levels that the data can move by orders of magnitude),
  ``mean_delta_l ~ N(0, 1)``, and BoTorch's Gamma(1.1, 0.05) on the noises. With
  no expensive data the top level is the cheap one with a small discrepancy: the
  prior belief that xTB tracks DFT.

Kernel option (``kernel="tanimoto+descriptors"``, the campaign's default through
:data:`KERNEL`): ``T`` is replaced by ``(1 - w) T + w K_d``, ``K_d`` a squared-exponential
ARD kernel on a few size-normalised composition counts (:func:`molecule_descriptors`), so that
a discrepancy learnt on one molecule carries over to molecules of the same make-up that share
few substructures (pool median Tanimoto 0.10 on the replay tables); ``w`` and the lengthscales
are fitted with the other hyperparameters. Still ``k(x, x) = 1`` and one kernel times ``B``.

Calibration. :meth:`MoleculeSurrogate.calibration` holds out molecules in closed
form (per level: MAE, z-score mean and spread, coverage of the 68/95 % intervals);
the campaign stores it at every refit.

Speed (the acquisition must decide in well under 2 s at 1,000 evaluations over a
20,000-molecule pool):

* Tanimoto similarities between the pool and training molecules are computed once
  per molecule with a sparse product and cached across refits
  (:class:`~agent.surrogates.fingerprints.FingerprintIndex`);
* hyperparameters (B, means, noises: ``n_f^2 + 2 n_f`` numbers) are fitted by
  L-BFGS-B on the exact marginal likelihood of at most ``max_fit_points``
  observations, warm-started from the previous fit (few iterations on refits),
  and only re-optimised when the data at some level have grown by
  ``hyper_refit_growth`` (10 %, or the first value at a level); in between, new observations extend the cached Cholesky factor of all
  observations by a block update;
* :class:`PoolPosterior` gives posterior means for the whole pool (one mat-vec),
  cheap *upper bounds* on the posterior variance of every pool row, exact
  variances only for rows the acquisition asks for, and fantasised points
  (pending work) as block extensions of the Cholesky factor with rank-one updates.

Values are standardised internally; every public output is in the units of the
observations (e.g. kJ/mol).

Importing this module is cheap: torch and gpytorch load inside functions.

Over 500 lines on purpose: the coregionalised Tanimoto GP, its hyperparameter fit
and the pool posterior share one parameter layout (``_ar1_structure``, in numpy and torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.surrogates.fingerprints import FingerprintIndex, SimilarityCache, fingerprint_digest

if TYPE_CHECKING:
    import torch

#: lower bound on the noise variance of standardised values
NOISE_FLOOR = 1e-4
#: fewer observations than this keep the prior hyperparameters (a handful of points
#: lets the marginal likelihood explain everything as noise of one fidelity)
MIN_HYPER_FIT_POINTS = 8
#: rows per chunk when streaming over the pool (bounds temporary memory)
_ROW_CHUNK = 4096
#: prior of the auto-regressive coefficient of each level on the level below: N(1, 0.5^2)
#: (standardised units, pooled over levels: rho = 1 means "same scale as the cheaper level")
RHO_PRIOR = (1.0, 0.5)
#: prior of log(var delta_l / var f_0): N(log 0.3, 1.5^2), i.e. the discrepancy between
#: adjacent levels is a priori ~55 % of the signal's standard deviation (a prior correlation
#: of 0.88), and the data may move it by orders of magnitude (chosen among 0.1, 0.3, 1 and 3
#: by held-out calibration and decisions on the replay tables: benchmarks/results/NOTES.md)
LOG_DELTA_RATIO_PRIOR = (float(np.log(0.3)), 1.5)
#: how each discrepancy variance var(delta_l) enters the predictions: "map" = its MAP estimate
#: with the other hyperparameters; "posterior-mean" = its posterior mean given the others at
#: their MAP (see :meth:`MoleculeSurrogate._discrepancy_posterior_mean`)
DISCREPANCY_ESTIMATE = "map"
DISCREPANCY_ESTIMATES = ("map", "posterior-mean")
#: prior of the mean shift of a level over rho times the level below: N(0, 1^2), standardised
MEAN_DELTA_PRIOR_SD = 1.0
#: prior of log var f_0: N(0, 2^2) (values are standardised, so weak)
LOG_SIGNAL_PRIOR_SD = 2.0
#: prior of each level's noise variance (standardised units, above NOISE_FLOOR):
#: ("lognormal", mu, sd) is log(noise var) ~ N(mu, sd^2), ("gamma", concentration, rate)
#: a Gamma density on the noise variance
NOISE_PRIOR: tuple[str, float, float] = ("gamma", 1.1, 0.05)
#: the kernel over molecules of the campaign's molecule stage (read by
#: :class:`agent.stages.molecule.MoleculeStage` when it makes its surrogate; an instance keeps
#: its own, and one made directly is "tanimoto" unless told otherwise):
#: "tanimoto" = the Tanimoto kernel T on the fingerprints;
#: "tanimoto+descriptors" = (1 - w) T + w K_d, K_d a squared-exponential kernel with one
#: lengthscale per descriptor (ARD) on the size-normalised counts of
#: :func:`molecule_descriptors`, ``w`` and the lengthscales fitted with the other
#: hyperparameters (MAP). Both have k(x, x) = 1, so ``B`` and its priors keep their meaning.
#: K_d can relate molecules that share no substructure but the same make-up (e.g. two
#: sulfur-rich fused heteroaromatics), which T cannot. The campaign's default since
#: 2026-12-06 (issue 14: never worse than "tanimoto" in median on the four reorganisation
#: replay tables of benchmarks/molecule_decisions.py at 5-80 % budgets, better at four
#: table-budgets; benchmarks/results/NOTES.md).
KERNEL = "tanimoto+descriptors"
KERNELS = ("tanimoto", "tanimoto+descriptors")
#: descriptors of the "tanimoto+descriptors" kernel, each divided by its scale (roughly its
#: spread over small aromatic molecules, so that a lengthscale of ~1 means "one typical step")
DESCRIPTOR_NAMES = ("log_heavy_atoms", "frac_S", "frac_N", "frac_O", "frac_halogen",
                    "frac_nitrile", "aromatic_rings", "frac_sp3_C")
DESCRIPTOR_SCALES = (0.3, 0.1, 0.1, 0.1, 0.1, 0.1, 1.0, 0.2)
#: prior of logit(w), the descriptor kernel's weight: N(0, 1.5^2) (w = 0.5 a priori, free to go to 0 or 1)
DESCRIPTOR_WEIGHT_PRIOR = (0.0, 1.5)
#: prior of each log lengthscale of K_d: N(0.5 log(p), 1^2), p descriptors (the scaled distance
#: of two molecules grows like sqrt(p); a dimension-scaled lengthscale prior as in Hvarfner,
#: Hellsten & Nardi, ICML 2024)
DESCRIPTOR_LOG_LS_PRIOR_SD = 1.0


def molecule_descriptors(smiles: list[str]) -> np.ndarray:
    """Size-normalised composition descriptors for the "tanimoto+descriptors" kernel.

    Per molecule (heavy atoms only): log(number of heavy atoms), the fractions of S, N, O
    and halogen atoms, the fraction of atoms in nitrile groups (C#N), the number of aromatic
    rings and the fraction of sp3 carbons (rdkit, no network); each divided by
    :data:`DESCRIPTOR_SCALES`.

    Returns:
        ``(n, len(DESCRIPTOR_NAMES))`` float64; a row of NaN for an invalid SMILES (such a
        molecule has no similarity to anything, as its all-zero fingerprint).
    """
    from rdkit import Chem, RDLogger
    from rdkit.Chem import rdMolDescriptors

    RDLogger.DisableLog("rdApp.*")
    nitrile = Chem.MolFromSmarts("C#N")
    out = np.full((len(smiles), len(DESCRIPTOR_NAMES)), np.nan)
    for i, s in enumerate(smiles):
        mol = Chem.MolFromSmiles(s) if isinstance(s, str) and s else None
        if mol is None or mol.GetNumAtoms() == 0:
            continue
        symbols = [a.GetSymbol() for a in mol.GetAtoms()]
        n = len(symbols)

        def frac(*els: str, _symbols: list[str] = symbols, _n: int = n) -> float:
            return sum(e in els for e in _symbols) / _n

        out[i] = (np.log(n), frac("S"), frac("N"), frac("O"), frac("F", "Cl", "Br", "I"),
                  2.0 * len(mol.GetSubstructMatches(nitrile)) / n,
                  rdMolDescriptors.CalcNumAromaticRings(mol), rdMolDescriptors.CalcFractionCSP3(mol))
    return out / np.asarray(DESCRIPTOR_SCALES)


def descriptor_kernel(a: np.ndarray, b: np.ndarray, log_ls: np.ndarray) -> np.ndarray:
    """Squared-exponential ARD kernel between descriptor rows ``a`` (n, p) and ``b`` (m, p);
    0 where either row is invalid (NaN), as the Tanimoto kernel of an all-zero fingerprint."""
    ls = np.exp(np.asarray(log_ls, dtype=np.float64))
    va, vb = np.all(np.isfinite(a), 1), np.all(np.isfinite(b), 1)
    za, zb = np.nan_to_num(a / ls), np.nan_to_num(b / ls)
    sq = (za ** 2).sum(1)[:, None] + (zb ** 2).sum(1)[None, :] - 2.0 * za @ zb.T
    return np.exp(-0.5 * np.maximum(sq, 0.0)) * (va[:, None] & vb[None, :])


@dataclass(frozen=True)
class Observation:
    """One finished evaluation.

    Attributes:
        mol_index: row in the pool fingerprint matrix.
        fidelity: index into the fidelity ladder (0 = cheapest).
        value: objective value (e.g. reorganisation energy in kJ/mol).
    """

    mol_index: int
    fidelity: int
    value: float


def _observation_digest(rows: np.ndarray, fids: np.ndarray, values: np.ndarray) -> str:
    """SHA-256 of observations in order (molecule rows, fidelities, values as float64)."""
    import hashlib

    h = hashlib.sha256()
    for a, dtype in ((rows, np.int64), (fids, np.int64), (values, np.float64)):
        h.update(np.ascontiguousarray(a, dtype=dtype).tobytes())
        h.update(b"|")
    return h.hexdigest()


def _state_to_npz(state: dict[str, Any]) -> bytes:
    """A state dict (its ``hyper`` entry flattened to ``hyper/<name>``, None as "") as an
    ``.npz`` archive without pickled objects."""
    import io

    flat: dict[str, np.ndarray] = {}
    for k, v in state.items():
        if k == "hyper":
            flat.update({f"hyper/{h}": np.asarray(x) for h, x in v.items()})
        else:
            flat[k] = np.asarray("" if v is None else v)
    buf = io.BytesIO()
    np.savez(buf, **flat)
    return buf.getvalue()


def _npz_to_state(data: bytes, what: str) -> dict[str, Any]:
    """The state dict of :func:`_state_to_npz` (0-d arrays as Python scalars).

    Raises:
        ValueError: not an ``.npz`` archive (``what`` names the expected kind).
    """
    import io

    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            flat = {k: z[k] for k in z.files}
    except Exception as exc:  # noqa: BLE001 - any unreadable archive is the same error
        raise ValueError(f"not a MoleculeSurrogate {what}: {type(exc).__name__}: {exc}") from None
    state: dict[str, Any] = {"hyper": {}}
    for k, v in flat.items():
        if k.startswith("hyper/"):
            state["hyper"][k[len("hyper/"):]] = v
        else:
            state[k] = v.item() if v.ndim == 0 else v
    return state


def _ar1_structure(p: dict[str, Any], xp: Any) -> tuple[Any, Any]:
    """``(B, means)`` of the auto-regressive ladder from its parameters.

    ``f_0 = g_0`` and ``f_l = rho_l f_(l-1) + delta_l`` with independent ``g_0`` and
    ``delta_l`` (variances ``exp(log_signal)``, ``exp(log_delta_l)``; means
    ``mean_base``, ``mean_delta_l``), so ``f = A g`` with ``A`` lower triangular and
    ``B = A diag(s) A^T``. ``xp`` is ``numpy`` or ``torch`` (for autograd).
    """
    nf = len(p["log_noise"])
    eye = xp.eye(nf, dtype=xp.float64)
    rows, means = [eye[0]], [p["mean_base"][0]]
    for level in range(1, nf):
        rows.append(p["rho"][level - 1] * rows[-1] + eye[level])
        means.append(p["rho"][level - 1] * means[-1] + p["mean_delta"][level - 1])
    a = xp.stack(rows)
    s = xp.exp(xp.concatenate([p["log_signal"], p["log_delta"]]))
    return (a * s[None, :]) @ a.T, xp.stack(means)


class MoleculeSurrogate:
    """Multi-fidelity Tanimoto GP over a fixed pool of molecules (see module doc).

    Args:
        n_fidelities: number of levels of the fidelity ladder (>= 1).
        seed: seed for hyperparameter initialisation and fitting subsets.
        max_fit_points: at most this many observations enter the hyperparameter
            fit (all of them enter the posterior).
        n_iter_first: L-BFGS iterations of the first fit.
        n_iter_refit: L-BFGS iterations of warm-started refits.
        hyper_refit_growth: re-optimise hyperparameters once the number of
            observations has grown by this fraction since they were last fitted;
            in between, new observations extend the cached Cholesky factor
            (``O(n^2 k)`` for ``k`` new points instead of ``O(n^3)``).
        kernel: one of :data:`KERNELS` (see :data:`KERNEL`, the campaign's choice). With
            descriptors, :meth:`fit` needs the pool's :func:`molecule_descriptors`.
    """

    #: prior of the noise variances (see :data:`NOISE_PRIOR`; an instance may set its own
    #: before fitting, e.g. for a calibration study; not part of :meth:`state_dict`)
    noise_prior: tuple[str, float, float] = NOISE_PRIOR

    def __init__(self, n_fidelities: int, seed: int = 0, *, max_fit_points: int = 256,
                 n_iter_first: int = 40, n_iter_refit: int = 6,
                 hyper_refit_growth: float = 0.1, kernel: str = "tanimoto") -> None:
        if int(n_fidelities) != n_fidelities or n_fidelities < 1:
            raise ValueError(f"n_fidelities must be a positive integer, got {n_fidelities!r}")
        self.kernel = str(kernel)
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {self.kernel!r}")
        self.n_fidelities = int(n_fidelities)
        self.seed = int(seed)
        self.max_fit_points = int(max_fit_points)
        self.n_iter_first = int(n_iter_first)
        self.n_iter_refit = int(n_iter_refit)
        self.hyper_refit_growth = float(hyper_refit_growth)
        nf = self.n_fidelities
        #: the discrepancy prior of this instance (:data:`LOG_DELTA_RATIO_PRIOR` when made)
        self.delta_ratio_prior = (float(LOG_DELTA_RATIO_PRIOR[0]), float(LOG_DELTA_RATIO_PRIOR[1]))
        #: how the discrepancy variances are estimated (:data:`DISCREPANCY_ESTIMATE` when made)
        self.discrepancy_estimate = str(DISCREPANCY_ESTIMATE)
        if self.discrepancy_estimate not in DISCREPANCY_ESTIMATES:
            raise ValueError(f"discrepancy_estimate must be one of {DISCREPANCY_ESTIMATES}, "
                             f"got {self.discrepancy_estimate!r}")
        self.hyper: dict[str, np.ndarray] = {
            "log_signal": np.zeros(1),
            "rho": np.full(nf - 1, RHO_PRIOR[0]),
            "log_delta": np.full(nf - 1, self.delta_ratio_prior[0]),
            "mean_base": np.zeros(1),
            "mean_delta": np.zeros(nf - 1),
            "log_noise": np.full(nf, np.log(1e-2)),
        }
        n_desc = len(DESCRIPTOR_NAMES)
        if self.uses_descriptors:
            self.hyper["desc_logit"] = np.full(1, DESCRIPTOR_WEIGHT_PRIOR[0])
            self.hyper["desc_log_ls"] = np.full(n_desc, 0.5 * np.log(n_desc))
        #: descriptors of the pool rows (set by :meth:`fit`) and of the training molecules
        self.pool_desc: np.ndarray | None = None
        self.train_desc = np.zeros((0, n_desc))
        self.y_loc = 0.0
        self.y_scale = 1.0
        self.n_fits = 0
        self.n_hyper_fits = 0
        self.n_at_hyper_fit = 0  # observations at the last hyperparameter fit
        self.counts_at_hyper_fit = np.zeros(nf, dtype=np.int64)  # per level, same moment
        self.pool_digest: str | None = None  # fingerprint matrix of the last fit
        self.train_fps = np.zeros((0, 0), dtype=np.uint8)  # (m, d) molecules, first-seen order
        self.train_mol = np.zeros(0, dtype=np.int64)  # (m,) pool rows of those molecules
        self.obs_u = np.zeros(0, dtype=np.int64)  # (n,) index into train_fps
        self.obs_f = np.zeros(0, dtype=np.int64)  # (n,) fidelity
        self.obs_value = np.zeros(0)  # (n,) values in objective units
        self.obs_y = np.zeros(0)  # (n,) standardised values
        self._cache: SimilarityCache | None = None
        self._cache_rows = np.zeros(0, dtype=np.int64)  # (m,) cache rows of the molecules
        self._mixed_cache: _MixedCache | None = None  # the descriptor kernel's pool columns
        self._chol: torch.Tensor | None = None
        self._alpha: torch.Tensor | None = None

    @property
    def uses_descriptors(self) -> bool:
        """Whether the kernel has the descriptor term (see :data:`KERNEL`)."""
        return self.kernel == "tanimoto+descriptors"

    def descriptor_weight(self) -> float:
        """``w`` of ``(1 - w) T + w K_d`` (0 for the plain Tanimoto kernel)."""
        if not self.uses_descriptors:
            return 0.0
        return float(1.0 / (1.0 + np.exp(-self.hyper["desc_logit"][0])))

    def _mix(self, tanimoto: np.ndarray, da: np.ndarray, db: np.ndarray) -> np.ndarray:
        """The kernel from Tanimoto similarities and the two sides' descriptors."""
        if not self.uses_descriptors:
            return tanimoto
        w = self.descriptor_weight()
        return (1.0 - w) * tanimoto + w * descriptor_kernel(da, db, self.hyper["desc_log_ls"])

    # -- hyperparameters ---------------------------------------------------------------
    def coregionalisation(self) -> np.ndarray:
        """``B`` (n_f, n_f): signal covariance between fidelities (standardised units)."""
        return _ar1_structure(self.hyper, np)[0]

    def level_means(self) -> np.ndarray:
        """Prior mean per fidelity in standardised units, shape (n_f,)."""
        return _ar1_structure(self.hyper, np)[1]

    def rho(self) -> np.ndarray:
        """Auto-regressive coefficient of each level on the one below, shape (n_f - 1,)
        (in objective units too: every level is standardised with the same scale)."""
        return self.hyper["rho"].copy()

    def level_correlation(self) -> np.ndarray:
        """Prior correlation of each level with the top level, shape (n_f,)."""
        b = self.coregionalisation()
        return b[:, -1] / np.sqrt(np.diag(b) * b[-1, -1])

    def noise(self) -> np.ndarray:
        """Noise variance per fidelity (standardised units), shape (n_f,)."""
        return NOISE_FLOOR + np.exp(self.hyper["log_noise"])

    def fidelity_means(self) -> np.ndarray:
        """Prior mean per fidelity in objective units (e.g. kJ/mol), shape (n_f,)."""
        return self.y_loc + self.y_scale * self.level_means()

    # -- fitting -----------------------------------------------------------------------
    def _validate(self, fps: np.ndarray, observations: list[Observation]) -> np.ndarray:
        fps = np.asarray(fps)
        if fps.ndim != 2 or fps.shape[0] == 0:
            raise ValueError(f"fingerprints must be a non-empty 2-d array, got shape {fps.shape}")
        if self.train_fps.size and fps.shape[1] != self.train_fps.shape[1]:
            raise ValueError(
                f"fingerprints have {fps.shape[1]} bits, the surrogate was fitted on "
                f"{self.train_fps.shape[1]}"
            )
        for o in observations:
            if not 0 <= int(o.mol_index) < fps.shape[0]:
                raise ValueError(f"observation mol_index {o.mol_index} outside pool of {fps.shape[0]}")
            if not 0 <= int(o.fidelity) < self.n_fidelities:
                raise ValueError(f"observation fidelity {o.fidelity} outside 0..{self.n_fidelities - 1}")
            if not np.isfinite(o.value):
                raise ValueError(f"observation of molecule {o.mol_index} has non-finite value {o.value}")
        return fps

    def _attach_pool(self, fps: np.ndarray, *, refit: bool) -> SimilarityCache:
        """The similarity cache of pool ``fps``; the training molecules must be rows of it.

        With ``refit`` the pool may be new (the training set is rebuilt from it).
        """
        if self._cache is not None and (self._cache.fps is fps or (
                self._cache.index.shape == fps.shape
                and self._cache.index.digest == fingerprint_digest(fps))):
            self._cache.fps = fps
            return self._cache
        cache = SimilarityCache(fps)
        if not refit and len(self.train_mol) and cache.index.digest != self.pool_digest:
            raise ValueError("these fingerprints are not the pool the surrogate was fitted on")
        self._cache = cache
        self._cache_rows = self.train_mol.copy()
        return cache

    def _gram(self, a: np.ndarray, b: np.ndarray, *, tanimoto_only: bool = False) -> torch.Tensor:
        """Kernel between training molecules ``a`` and ``b`` (float64); the Tanimoto part
        alone with ``tanimoto_only``."""
        import torch

        cache = self._cache
        pos = cache.ensure(self._cache_rows[b])
        t = cache.cols[self._cache_rows[a]][:, pos].astype(np.float64)
        if self.uses_descriptors and not tanimoto_only:
            t = self._mix(t, self.train_desc[a], self.train_desc[b])
        return torch.as_tensor(t, dtype=torch.float64)

    def fit(self, fps: np.ndarray, observations: list[Observation], *,
            refit_hyperparameters: bool | None = None, descriptors: np.ndarray | None = None) -> None:
        """Update the GP with ``observations`` (all of them, not only the new ones).

        When ``observations`` extends the previous call's list (same pool, same
        first entries), the new points extend the cached Cholesky factor and the
        hyperparameters stay; they are re-optimised (warm-started) on the first fit,
        when the data are not an extension, or after ``hyper_refit_growth`` growth.

        Args:
            fps: ``(n_pool, d)`` 0/1 fingerprints; ``Observation.mol_index`` are rows.
            observations: finished evaluations (any fidelities; repeats are allowed).
            refit_hyperparameters: force (True) or forbid (False) re-optimising the
                hyperparameters; None decides as above.
            descriptors: ``(n_pool, p)`` :func:`molecule_descriptors` of the pool rows;
                needed (once per pool) by the "tanimoto+descriptors" kernel, ignored else.

        Raises:
            ValueError: on an out-of-range index or fidelity or a non-finite value, or
                without the descriptors the kernel needs.
        """
        fps = self._validate(fps, observations)
        if self.uses_descriptors:
            if descriptors is not None:
                descriptors = np.asarray(descriptors, dtype=np.float64)
                if descriptors.shape != (fps.shape[0], len(DESCRIPTOR_NAMES)):
                    raise ValueError(f"descriptors must have shape ({fps.shape[0]}, "
                                     f"{len(DESCRIPTOR_NAMES)}), got {descriptors.shape}")
                self.pool_desc = descriptors
            elif self.pool_desc is None or len(self.pool_desc) != fps.shape[0]:
                raise ValueError("the 'tanimoto+descriptors' kernel needs the pool's descriptors "
                                 "(molecule_descriptors(smiles))")
        rows = np.array([int(o.mol_index) for o in observations], dtype=np.int64)
        fids = np.array([int(o.fidelity) for o in observations], dtype=np.int64)
        vals = np.array([float(o.value) for o in observations], dtype=np.float64)
        n_prev = len(self.obs_f)
        digest = fingerprint_digest(fps) if (self._cache is None or self._cache.fps is not fps) \
            else self._cache.index.digest
        is_extension = (
            self._chol is not None and n_prev > 0 and len(rows) >= n_prev
            and digest == self.pool_digest
            and np.array_equal(rows[:n_prev], self.train_mol[self.obs_u])
            and np.array_equal(fids[:n_prev], self.obs_f)
            and np.array_equal(vals[:n_prev], self.obs_value)
        )
        refit = refit_hyperparameters
        if refit is None:
            counts = np.bincount(fids, minlength=self.n_fidelities)
            grown = counts - self.counts_at_hyper_fit
            refit = (not is_extension or self.n_hyper_fits == 0 or bool(np.any(
                grown >= np.maximum(1.0, self.hyper_refit_growth * self.counts_at_hyper_fit))))
        if not is_extension:
            n_prev = 0
            self.train_mol = np.zeros(0, dtype=np.int64)
            self.train_fps = np.zeros((0, fps.shape[1]), dtype=np.uint8)
            self.train_desc = np.zeros((0, len(DESCRIPTOR_NAMES)))
            self.obs_u = np.zeros(0, dtype=np.int64)
        cache = self._attach_pool(fps, refit=not is_extension)
        self.pool_digest = cache.index.digest
        # register new molecules in first-seen order, so earlier indices stay valid
        known = {int(r): k for k, r in enumerate(self.train_mol)}
        new_mols = [r for r in dict.fromkeys(rows[n_prev:].tolist()) if r not in known]
        for r in new_mols:
            known[r] = len(known)
        if new_mols:
            self.train_mol = np.concatenate([self.train_mol, np.array(new_mols, dtype=np.int64)])
            self.train_fps = np.concatenate([self.train_fps, (fps[new_mols] != 0).astype(np.uint8)])
            if self.uses_descriptors:
                self.train_desc = np.concatenate([self.train_desc, self.pool_desc[new_mols]])
        self._cache_rows = self.train_mol.copy()
        self.obs_u = np.concatenate([self.obs_u, np.array([known[r] for r in rows[n_prev:].tolist()],
                                                          dtype=np.int64)])
        self.obs_f = fids
        self.obs_value = vals
        if refit or not is_extension:
            if len(vals) and refit:
                loc = float(np.mean(vals))
                spread = float(np.std(vals))
                scale = spread if len(vals) > 1 and spread > 0 else max(abs(loc), 1.0)
                self._restandardise(loc, scale)
            self.obs_y = (vals - self.y_loc) / self.y_scale
            if len(vals) and self.n_hyper_fits == 0:
                self._init_means()
            if refit and len(vals) >= MIN_HYPER_FIT_POINTS:
                self._fit_hyperparameters()
                self.n_hyper_fits += 1
                self.n_at_hyper_fit = len(vals)
                self.counts_at_hyper_fit = np.bincount(self.obs_f, minlength=self.n_fidelities)
            self._factorise()
        else:
            self.obs_y = (vals - self.y_loc) / self.y_scale
            self._extend_factor(n_prev)
        self.n_fits += 1

    def _restandardise(self, loc: float, scale: float) -> None:
        """Move the standardisation to ``(loc, scale)``, expressing the hyperparameters
        in the new units (so a warm start starts from the same model). Before the
        first hyperparameter fit they are the prior's, defined in standardised units,
        and stay as they are."""
        if self.n_hyper_fits == 0:
            self.y_loc, self.y_scale = loc, scale
            return
        old_means = self.y_loc + self.y_scale * self.level_means()
        log_ratio = 2.0 * np.log(self.y_scale / scale)
        for key in ("log_signal", "log_delta", "log_noise"):
            self.hyper[key] = self.hyper[key] + log_ratio
        self.y_loc, self.y_scale = loc, scale
        self._set_means((old_means - loc) / scale)

    def _set_means(self, means: np.ndarray) -> None:
        """Set the per-level prior means (standardised) through the AR(1) parameters."""
        self.hyper["mean_base"] = np.array([means[0]], dtype=np.float64)
        self.hyper["mean_delta"] = np.asarray(means[1:] - self.hyper["rho"] * means[:-1],
                                              dtype=np.float64)

    def _init_means(self) -> None:
        """Per-level means from the data (a level without data follows the one below)."""
        means = self.level_means()
        for f in range(self.n_fidelities):
            sel = self.obs_f == f
            if sel.any():
                means[f] = float(self.obs_y[sel].mean())
            elif f > 0:
                means[f] = self.hyper["rho"][f - 1] * means[f - 1]
        self._set_means(means)

    def _log_prior(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        """Log density of the priors on the AR(1) hyperparameters (module constants)."""
        import torch

        def normal(x: torch.Tensor, mu: float, sd: float) -> torch.Tensor:
            return (-0.5 * ((x - mu) / sd) ** 2).sum()

        kind, a, b = self.noise_prior
        if kind == "lognormal":  # as a density on log_noise, the parameter optimised
            noise_term = normal(p["log_noise"], a, b)
        elif kind == "gamma":
            noise = NOISE_FLOOR + p["log_noise"].exp()
            noise_term = torch.distributions.Gamma(torch.tensor(a, dtype=torch.float64),
                                                   torch.tensor(b, dtype=torch.float64)).log_prob(noise).sum()
        else:
            raise ValueError(f"unknown noise prior {kind!r}")
        out = (normal(p["rho"], *RHO_PRIOR)
               + normal(p["log_delta"] - p["log_signal"], *self.delta_ratio_prior)
               + normal(p["mean_delta"], 0.0, MEAN_DELTA_PRIOR_SD)
               + normal(p["log_signal"], 0.0, LOG_SIGNAL_PRIOR_SD)
               + noise_term)
        if "desc_logit" in p:
            out = (out + normal(p["desc_logit"], *DESCRIPTOR_WEIGHT_PRIOR)
                   + normal(p["desc_log_ls"], 0.5 * float(np.log(len(DESCRIPTOR_NAMES))),
                            DESCRIPTOR_LOG_LS_PRIOR_SD))
        return out

    def _fit_hyperparameters(self) -> None:
        """MAP estimate of the AR(1) parameters, means and noises by L-BFGS-B on a
        subset of observations.

        As BoTorch's ``fit_gpytorch_mll``: scipy's L-BFGS-B with torch autograd
        gradients (``torch.optim`` would import ``torch._dynamo``, ~5 s).

        The priors are those of :meth:`_log_prior`; the noise variances carry
        ``noise_prior`` (by default the Gamma(1.1, 0.05) that BoTorch's ``SingleTaskGP``
        used before 0.12). Runs single-threaded: at these sizes (<= ``max_fit_points``)
        threading costs more than it gains.
        """
        import torch

        n = len(self.obs_y)
        rng = np.random.default_rng(self.seed + self.n_hyper_fits)
        if n > self.max_fit_points:
            # keep every observation of the scarcer fidelities first, then fill at random
            counts = np.bincount(self.obs_f, minlength=self.n_fidelities)
            order = np.lexsort((rng.random(n), counts[self.obs_f]))
            sub = np.sort(order[: self.max_fit_points])
        else:
            sub = np.arange(n)
        nf = self.n_fidelities
        kt = self._gram(self.obs_u[sub], self.obs_u[sub], tanimoto_only=True)
        if self.uses_descriptors:
            d_sub = self.train_desc[self.obs_u[sub]]
            valid = np.all(np.isfinite(d_sub), 1)
            d_t = torch.as_tensor(np.nan_to_num(d_sub), dtype=torch.float64)
            valid_t = torch.as_tensor((valid[:, None] & valid[None, :]).astype(np.float64))
        onehot = torch.nn.functional.one_hot(torch.as_tensor(self.obs_f[sub]), nf).double()
        y = torch.as_tensor(self.obs_y[sub], dtype=torch.float64)
        names = list(self.hyper)
        shapes = [self.hyper[k].shape for k in names]
        sizes = [int(np.prod(sh)) for sh in shapes]
        jitter = 1e-6 * torch.eye(len(sub), dtype=torch.float64)

        def unpack(x: torch.Tensor) -> dict[str, torch.Tensor]:
            parts = torch.split(x, sizes)
            return {k: p.reshape(sh) for k, p, sh in zip(names, parts, shapes, strict=True)}

        def neg_log_posterior(p: dict[str, torch.Tensor]) -> torch.Tensor | None:
            """-(log marginal likelihood + log prior) of the subset; None if not positive definite."""
            b, means = _ar1_structure(p, torch)
            noise = NOISE_FLOOR + p["log_noise"].exp()
            ksim = kt
            if self.uses_descriptors:
                z = d_t / p["desc_log_ls"].exp()
                sq = ((z ** 2).sum(1)[:, None] + (z ** 2).sum(1)[None, :] - 2.0 * z @ z.T).clamp_min(0.0)
                w = torch.sigmoid(p["desc_logit"][0])
                ksim = (1.0 - w) * kt + w * torch.exp(-0.5 * sq) * valid_t
            k = ksim * (onehot @ b @ onehot.T) + torch.diag(onehot @ noise) + jitter
            chol, info = torch.linalg.cholesky_ex(k)
            if int(info) != 0:
                return None
            r = (y - onehot @ means).unsqueeze(-1)
            a = torch.cholesky_solve(r, chol)
            return 0.5 * (r * a).sum() + chol.diagonal().log().sum() - self._log_prior(p)

        def loss_and_grad(x_np: np.ndarray) -> tuple[float, np.ndarray]:
            x = torch.as_tensor(x_np, dtype=torch.float64).requires_grad_(True)
            nlp = neg_log_posterior(unpack(x))
            if nlp is None:
                return 1e10, np.zeros_like(x_np)
            nll = nlp / len(sub)
            (grad,) = torch.autograd.grad(nll, x)
            return float(nll.detach()), grad.numpy().copy()

        from scipy.optimize import minimize

        x0 = np.concatenate([self.hyper[k].ravel() for k in names])
        n_iter = self.n_iter_first if self.n_hyper_fits == 0 else self.n_iter_refit
        n_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            res = minimize(loss_and_grad, x0, jac=True, method="L-BFGS-B",
                           options={"maxiter": n_iter})
        finally:
            torch.set_num_threads(n_threads)
        if not np.all(np.isfinite(res.x)) or not np.isfinite(res.fun) or res.fun >= 1e10:
            return
        new = {k: v.detach().numpy().copy() for k, v in unpack(torch.as_tensor(res.x)).items()}
        for key in ("log_signal", "log_delta"):
            new[key] = np.clip(new[key], np.log(1e-6), np.log(1e3))
        if "desc_log_ls" in new:
            new["desc_logit"] = np.clip(new["desc_logit"], -12.0, 12.0)
            new["desc_log_ls"] = np.clip(new["desc_log_ls"], np.log(1e-2), np.log(1e3))
        if self.discrepancy_estimate == "posterior-mean":
            with torch.no_grad():
                for level in range(nf - 1):
                    new["log_delta"][level] = self._discrepancy_posterior_mean(new, level, neg_log_posterior)
        self.hyper = new

    def _discrepancy_posterior_mean(self, p: dict[str, np.ndarray], level: int, neg_log_posterior: Any) -> float:
        """log E[var delta_(level+1)] under its posterior given the other parameters at ``p``.

        A MAP estimate of a variance from a handful of expensive values sits where those
        few happen to fit the cheap level well, and the model is then over-confident about
        every molecule whose cheap value it knows (held-out z sd 2-5 at five expensive
        values on the replay tables). The predictive variance is linear in the discrepancy
        variance, so the moment-matched predictive of the model averaged over it takes its
        posterior mean (Bayesian model averaging over one hyperparameter; the others stay
        at their MAP). Computed on a grid of log var delta (step 0.25, +-6 around the
        MAP, extended while the edge carries weight); with many expensive values the
        posterior is sharp and the mean is the MAP.
        """
        import torch

        centre = float(p["log_delta"][level])
        grid = centre + np.arange(-6.0, 6.0 + 1e-9, 0.25)
        tp = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in p.items()}

        def log_post(g: float) -> float:
            q = dict(tp)
            ld = tp["log_delta"].clone()
            ld[level] = g
            q["log_delta"] = ld
            v = neg_log_posterior(q)
            return -np.inf if v is None else -float(v)

        lp = np.array([log_post(g) for g in grid])
        for _ in range(8):  # extend a grid whose edge still carries weight (a flat likelihood)
            if not np.isfinite(lp).any():
                return centre
            top = np.nanmax(lp)
            if lp[0] < top - 12.0 and lp[-1] < top - 12.0:
                break
            lo, hi = grid[0], grid[-1]
            add_lo = np.arange(lo - 3.0, lo - 1e-9, 0.25) if lp[0] >= top - 12.0 else np.zeros(0)
            add_hi = np.arange(hi + 0.25, hi + 3.0 + 1e-9, 0.25) if lp[-1] >= top - 12.0 else np.zeros(0)
            grid = np.concatenate([add_lo, grid, add_hi])
            lp = np.concatenate([[log_post(g) for g in add_lo], lp, [log_post(g) for g in add_hi]])
        ok = np.isfinite(lp)
        w = np.exp(lp[ok] - lp[ok].max())
        w /= w.sum()
        # log sum w exp(g), stably
        g = grid[ok]
        m = g.max()
        return float(np.clip(m + np.log(np.sum(w * np.exp(g - m))), np.log(1e-6), np.log(1e3)))

    def _prior_cov(self, a: np.ndarray, b: np.ndarray) -> torch.Tensor:
        """Prior covariance between observations ``a`` and ``b`` (index arrays)."""
        import torch

        bm = torch.as_tensor(self.coregionalisation())
        fa, fb = torch.as_tensor(self.obs_f[a]), torch.as_tensor(self.obs_f[b])
        return self._gram(self.obs_u[a], self.obs_u[b]) * bm[fa][:, fb]

    def _residual(self) -> torch.Tensor:
        import torch

        return torch.as_tensor(self.obs_y - self.level_means()[self.obs_f]).unsqueeze(-1)

    def _factorise(self) -> None:
        """Cholesky factor of the full training covariance and ``alpha = K^-1 (y - mu)``."""
        import torch

        n = len(self.obs_y)
        if n == 0:
            self._chol = torch.zeros((0, 0), dtype=torch.float64)
            self._alpha = torch.zeros(0, dtype=torch.float64)
            return
        idx = np.arange(n)
        k = self._prior_cov(idx, idx) + torch.diag(torch.as_tensor(self.noise()[self.obs_f]))
        for jitter in (0.0, 1e-8, 1e-6, 1e-4, 1e-2):
            chol, info = torch.linalg.cholesky_ex(k + jitter * torch.eye(n, dtype=torch.float64))
            if int(info) == 0:
                break
        else:
            raise RuntimeError("training covariance is not positive definite")
        self._chol = chol
        self._alpha = torch.cholesky_solve(self._residual(), chol).squeeze(-1)

    def _extend_factor(self, n_prev: int) -> None:
        """Append observations ``n_prev:`` to the Cholesky factor (block update)."""
        import torch

        n = len(self.obs_y)
        if n == n_prev:
            return
        old, new = np.arange(n_prev), np.arange(n_prev, n)
        k12 = self._prior_cov(old, new)
        k22 = self._prior_cov(new, new) + torch.diag(torch.as_tensor(self.noise()[self.obs_f[new]]))
        l21t = torch.linalg.solve_triangular(self._chol, k12, upper=False)
        schur = k22 - l21t.T @ l21t
        l22, info = torch.linalg.cholesky_ex(schur)
        if int(info) != 0:
            self._factorise()
            return
        chol = torch.zeros((n, n), dtype=torch.float64)
        chol[:n_prev, :n_prev] = self._chol
        chol[n_prev:, :n_prev] = l21t.T
        chol[n_prev:, n_prev:] = l22
        self._chol = chol
        self._alpha = torch.cholesky_solve(self._residual(), chol).squeeze(-1)

    # -- prediction --------------------------------------------------------------------
    def _similarity(self, fps: np.ndarray, descriptors: np.ndarray | None = None) -> np.ndarray:
        """Kernel of ``fps`` rows with the unique training molecules, (n, m): the Tanimoto
        similarity, mixed with the descriptor kernel when the model has one (``descriptors``
        of the rows; for the pool of the last fit, its own)."""
        if len(self.train_mol) == 0:
            return np.zeros((fps.shape[0], 0), dtype=np.float32)
        cache = self._cache
        is_pool = cache is not None and (cache.fps is fps or (
            fps.shape == cache.index.shape and cache.index.digest == fingerprint_digest(fps)))
        if is_pool:
            cache.fps = fps
            pos = cache.ensure(self._cache_rows)
            sim = cache.cols[:, pos]
        else:
            sim = FingerprintIndex(fps).similarity_to(self.train_fps)
        if not self.uses_descriptors:
            return sim
        if descriptors is None:
            if not is_pool or self.pool_desc is None:
                raise ValueError("the 'tanimoto+descriptors' kernel needs these molecules' "
                                 "descriptors (molecule_descriptors(smiles))")
            descriptors = self.pool_desc
        return self._mix(sim.astype(np.float64), np.asarray(descriptors, dtype=np.float64),
                         self.train_desc)

    def pool_posterior(self, fps: np.ndarray) -> PoolPosterior:
        """A lazy posterior over every row of ``fps`` (see :class:`PoolPosterior`).

        Raises:
            ValueError: if ``fps`` is not the pool of the last fit (observations
                index its rows).
        """
        fps = np.asarray(fps)
        if fps.ndim != 2:
            raise ValueError(f"fingerprints must be a 2-d array, got shape {fps.shape}")
        if self.train_fps.size and fps.shape[1] != self.train_fps.shape[1]:
            raise ValueError(
                f"fingerprints have {fps.shape[1]} bits, the surrogate was fitted on "
                f"{self.train_fps.shape[1]}"
            )
        cache = self._attach_pool(fps, refit=False)
        if self._chol is None:
            self._factorise()
        if self.uses_descriptors:
            if self.pool_desc is None or len(self.pool_desc) != fps.shape[0]:
                raise ValueError("the 'tanimoto+descriptors' kernel needs the pool's descriptors "
                                 "(give them to fit)")
            mixed = self._mixed_cache
            if (mixed is None or mixed.base is not cache or mixed.pool_desc is not self.pool_desc
                    or mixed.weight != self.descriptor_weight()
                    or not np.array_equal(mixed.log_ls, self.hyper["desc_log_ls"])):
                # the mixed columns change with the hyperparameters only: kept across asks
                mixed = _MixedCache(cache, self.pool_desc, self.descriptor_weight(),
                                    self.hyper["desc_log_ls"])
                self._mixed_cache = mixed
            cache = mixed
        return PoolPosterior(self, fps, cache)

    def predict(self, fps: np.ndarray, fidelity: int,
                descriptors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation of the latent value at one fidelity.

        Args:
            fps: ``(n, d)`` 0/1 fingerprints (any molecules, not only the pool).
            fidelity: index into the ladder.
            descriptors: the molecules' :func:`molecule_descriptors` (the
                "tanimoto+descriptors" kernel, for molecules outside the pool of the last fit).

        Returns:
            ``(mean, std)``, each ``(n,)`` float64 in objective units (noise-free
            latent function; add :meth:`noise` for a predictive interval).
        """
        import torch

        if not 0 <= int(fidelity) < self.n_fidelities:
            raise ValueError(f"fidelity {fidelity} outside 0..{self.n_fidelities - 1}")
        fps = np.asarray(fps)
        if fps.ndim != 2:
            raise ValueError(f"fingerprints must be a 2-d array, got shape {fps.shape}")
        if self.train_fps.size and fps.shape[1] != self.train_fps.shape[1]:
            raise ValueError(
                f"fingerprints have {fps.shape[1]} bits, the surrogate was fitted on "
                f"{self.train_fps.shape[1]}"
            )
        if self._chol is None:
            self._factorise()
        b = self.coregionalisation()
        t = int(fidelity)
        mean = np.full(fps.shape[0], self.level_means()[t])
        # T(x, x) = 0 for an all-zero fingerprint (invalid SMILES): no prior variance
        var = b[t, t] * ((fps != 0).sum(1) > 0)
        if len(self.obs_y):
            sim = torch.as_tensor(self._similarity(fps, descriptors), dtype=torch.float64)
            kx = sim[:, torch.as_tensor(self.obs_u)] * torch.as_tensor(b[t, self.obs_f])
            mean = mean + (kx @ self._alpha).numpy()
            v = torch.linalg.solve_triangular(self._chol, kx.T, upper=False)
            var = var - (v * v).sum(0).numpy()
        std = np.sqrt(np.clip(var, 1e-12, None))
        return self.y_loc + self.y_scale * mean, self.y_scale * std

    def calibration(self, max_held_out: int = 200, seed: int = 0) -> dict[str, dict[str, float]]:
        """Leave-out calibration of the current posterior, per fidelity.

        Held out, at the current hyperparameters (closed form from the inverse
        covariance, Rasmussen & Williams 2006, sec. 5.4.2, extended to blocks):

        * a cheaper level ``f``: each molecule with a value at ``f``, *all* of its
          observations at once (an unseen molecule);
        * the top level, two ways: ``"top"`` leaves out only the molecule's
          top-level value, its cheaper values stay known (the situation in which the
          acquisition uses the model: predict DFT where xTB is known); ``"top_unseen"``
          leaves out the whole molecule.

        At most ``max_held_out`` molecules per entry (a seeded random subset).

        Returns:
            ``{"<fidelity>" | "top" | "top_unseen": {"n", "mae", "rmse", "z_mean",
            "z_std", "coverage_68", "coverage_95"}}``; errors in objective units,
            ``z = (y - mean) / sd`` with the predictive sd (noise included), coverage
            the fraction with ``|z| <= 1`` and ``<= 1.96``. A calibrated model has
            ``z_std`` near 1 and coverages near 0.68 and 0.95. Entries with fewer
            than 2 held-out values are omitted.
        """
        import torch

        if self._chol is None:
            self._factorise()
        n = len(self.obs_y)
        top = self.n_fidelities - 1
        rng = np.random.default_rng(seed)
        out: dict[str, dict[str, float]] = {}
        if n < 3:
            return out
        resid = self._residual().squeeze(-1)
        alpha = torch.cholesky_solve(resid.unsqueeze(-1), self._chol).squeeze(-1).numpy()
        for key, level, whole in ([(str(f), f, True) for f in range(top)]
                                  + [("top", top, False), ("top_unseen", top, True)]):
            mols = np.unique(self.obs_u[self.obs_f == level])
            if len(mols) > max_held_out:
                mols = np.sort(rng.choice(mols, size=max_held_out, replace=False))
            if len(mols) < 2 or (key == "top_unseen" and self.n_fidelities == 1):
                continue
            groups = [np.flatnonzero((self.obs_u == u) & (whole | (self.obs_f == level)))
                      for u in mols]
            cols = np.concatenate(groups)
            eye = torch.zeros((n, len(cols)), dtype=torch.float64)
            eye[torch.as_tensor(cols), torch.arange(len(cols))] = 1.0
            z_cols = torch.linalg.solve_triangular(self._chol, eye, upper=False).numpy()
            errors, zs, start = [], [], 0
            for g in groups:
                zg = z_cols[:, start: start + len(g)]
                start += len(g)
                cov = np.linalg.inv(zg.T @ zg)  # predictive covariance of the left-out block
                err = cov @ alpha[g]  # y - leave-out mean
                sel = self.obs_f[g] == level
                sd = np.sqrt(np.clip(np.diag(cov)[sel], 1e-12, None))
                errors.extend(err[sel] * self.y_scale)
                zs.extend(err[sel] / sd)
            errors_a, zs_a = np.asarray(errors), np.asarray(zs)
            out[key] = {
                "n": int(len(errors_a)),
                "mae": float(np.mean(np.abs(errors_a))),
                "rmse": float(np.sqrt(np.mean(errors_a ** 2))),
                "z_mean": float(np.mean(zs_a)),
                "z_std": float(np.std(zs_a)),
                "coverage_68": float(np.mean(np.abs(zs_a) <= 1.0)),
                "coverage_95": float(np.mean(np.abs(zs_a) <= 1.96)),
            }
        return out

    # -- persistence -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """A picklable dict of plain numpy/python values that fully defines the model."""
        return {
            "n_fidelities": self.n_fidelities,
            "seed": self.seed,
            "max_fit_points": self.max_fit_points,
            "n_iter_first": self.n_iter_first,
            "n_iter_refit": self.n_iter_refit,
            "hyper_refit_growth": self.hyper_refit_growth,
            "hyper": {k: v.copy() for k, v in self.hyper.items()},
            "y_loc": self.y_loc,
            "y_scale": self.y_scale,
            "n_fits": self.n_fits,
            "n_hyper_fits": self.n_hyper_fits,
            "n_at_hyper_fit": self.n_at_hyper_fit,
            "counts_at_hyper_fit": self.counts_at_hyper_fit.copy(),
            "pool_digest": self.pool_digest,
            "obs_value": self.obs_value.copy(),
            "n_bits": int(self.train_fps.shape[1]) if self.train_fps.ndim == 2 else 0,
            "train_fps_packed": np.packbits(self.train_fps, axis=1),
            "train_mol": self.train_mol.copy(),
            "obs_u": self.obs_u.copy(),
            "obs_f": self.obs_f.copy(),
            "obs_y": self.obs_y.copy(),
            "kernel": self.kernel,
            "train_desc": self.train_desc.copy(),
        }

    def to_bytes(self) -> bytes:
        """:meth:`state_dict` as an ``.npz`` archive (no pickled objects), for a store."""
        return _state_to_npz(self.state_dict())

    @classmethod
    def from_bytes(cls, data: bytes) -> MoleculeSurrogate:
        """The surrogate of :meth:`to_bytes`.

        Raises:
            ValueError: not such an archive.
        """
        state = _npz_to_state(data, "archive")
        state["pool_digest"] = state.get("pool_digest") or None
        return cls.load_state_dict(state)

    #: keys of :meth:`fit_state` besides ``hyper``: the settings, standardisation and counts
    _FIT_STATE_KEYS = ("n_fidelities", "seed", "max_fit_points", "n_iter_first", "n_iter_refit",
                       "hyper_refit_growth", "y_loc", "y_scale", "n_fits", "n_hyper_fits",
                       "n_at_hyper_fit", "counts_at_hyper_fit", "pool_digest", "kernel")

    def fit_state(self) -> bytes:
        """The last fit without its data, as an ``.npz`` archive (no pickled objects).

        Holds the settings, hyperparameters, standardisation and fit counters, the number of
        observations the model was fitted on and a digest of them (molecule rows,
        fidelities and values in order): about 8 kB whatever the number of observations.
        The observations themselves live where they came from (a campaign's store);
        :meth:`from_fit_state` rebuilds the model from them.
        """
        state: dict[str, Any] = {k: getattr(self, k) for k in self._FIT_STATE_KEYS}
        state["hyper"] = self.hyper
        state["n_obs"] = len(self.obs_f)
        state["obs_digest"] = _observation_digest(
            self.train_mol[self.obs_u] if len(self.obs_u) else np.zeros(0, dtype=np.int64),
            self.obs_f, self.obs_value)
        return _state_to_npz(state)

    @classmethod
    def from_fit_state(cls, data: bytes, fps: np.ndarray, observations: list[Observation],
                       descriptors: np.ndarray | None = None) -> MoleculeSurrogate:
        """The model :meth:`fit_state` describes, refitted on its own data.

        ``observations`` must begin with the observations the saved model was fitted on,
        in the same order (a campaign's store returns them so); the model is factorised on
        those with the saved hyperparameters and standardisation, so its predictions equal
        the saved model's to round-off, and a later :meth:`fit` on the full list is an
        extension of it, exactly as if the model had never been saved.

        ``descriptors``: the pool's :func:`molecule_descriptors`, for a saved model with the
        "tanimoto+descriptors" kernel (a state without a kernel is a Tanimoto model's).

        Raises:
            ValueError: not such an archive, or ``observations`` does not begin with the
                saved model's data.
        """
        state = _npz_to_state(data, "fit state")
        try:
            s = cls(int(state["n_fidelities"]), int(state["seed"]),
                    max_fit_points=int(state["max_fit_points"]),
                    n_iter_first=int(state["n_iter_first"]), n_iter_refit=int(state["n_iter_refit"]),
                    hyper_refit_growth=float(state["hyper_refit_growth"]),
                    kernel=str(state.get("kernel") or "tanimoto"))
            hyper = {k: np.asarray(v, dtype=np.float64) for k, v in state["hyper"].items()}
            if set(hyper) != set(s.hyper):
                raise ValueError(f"hyperparameters {sorted(hyper)} are not this model's")
            n_obs, digest = int(state["n_obs"]), str(state["obs_digest"])
            y_loc, y_scale = float(state["y_loc"]), float(state["y_scale"])
            counters = (int(state["n_fits"]), int(state["n_hyper_fits"]), int(state["n_at_hyper_fit"]))
            counts = np.asarray(state["counts_at_hyper_fit"], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a MoleculeSurrogate fit state: {type(exc).__name__}: {exc}") from None
        own = observations[:n_obs]
        rows = np.array([int(o.mol_index) for o in own], dtype=np.int64)
        fids = np.array([int(o.fidelity) for o in own], dtype=np.int64)
        vals = np.array([float(o.value) for o in own], dtype=np.float64)
        if len(own) != n_obs or _observation_digest(rows, fids, vals) != digest:
            raise ValueError(f"the observations do not begin with the {n_obs} the saved "
                             "model was fitted on")
        s.hyper = hyper
        s.y_loc, s.y_scale = y_loc, y_scale
        s.n_hyper_fits = counters[1]
        if s.uses_descriptors and descriptors is not None:
            s.pool_desc = np.asarray(descriptors, dtype=np.float64)
        if n_obs:
            s.fit(fps, own, refit_hyperparameters=False, descriptors=descriptors)
        s.n_fits, s.n_hyper_fits, s.n_at_hyper_fit = counters
        s.counts_at_hyper_fit = counts
        return s

    @classmethod
    def load_state_dict(cls, state: dict[str, Any]) -> MoleculeSurrogate:
        """Rebuild a surrogate from :meth:`state_dict`.

        Predictions are bit-identical when the saved model's last fit was a full
        factorisation, and equal to round-off after incremental updates.
        """
        try:
            s = cls(state["n_fidelities"], state["seed"], max_fit_points=state["max_fit_points"],
                    n_iter_first=state["n_iter_first"], n_iter_refit=state["n_iter_refit"],
                    hyper_refit_growth=state["hyper_refit_growth"],
                    kernel=str(state.get("kernel") or "tanimoto"))
            s.hyper = {k: np.asarray(v, dtype=np.float64).copy() for k, v in state["hyper"].items()}
            s.y_loc, s.y_scale = float(state["y_loc"]), float(state["y_scale"])
            s.n_fits, s.n_hyper_fits = int(state["n_fits"]), int(state["n_hyper_fits"])
            s.n_at_hyper_fit, s.pool_digest = int(state["n_at_hyper_fit"]), state["pool_digest"]
            s.counts_at_hyper_fit = np.asarray(state["counts_at_hyper_fit"], dtype=np.int64)
            if set(s.hyper) != set(cls(s.n_fidelities, kernel=s.kernel).hyper):
                raise ValueError(f"hyperparameters {sorted(s.hyper)} are not this model's")
            n_bits = int(state["n_bits"])
            s.train_fps = np.unpackbits(state["train_fps_packed"], axis=1, count=n_bits).astype(np.uint8)
            s.train_mol = np.asarray(state["train_mol"], dtype=np.int64)
            s.obs_u = np.asarray(state["obs_u"], dtype=np.int64)
            s.obs_f = np.asarray(state["obs_f"], dtype=np.int64)
            s.obs_y = np.asarray(state["obs_y"], dtype=np.float64)
            s.obs_value = np.asarray(state["obs_value"], dtype=np.float64)
            if s.uses_descriptors:
                s.train_desc = np.asarray(state["train_desc"], dtype=np.float64).reshape(
                    len(s.train_mol), len(DESCRIPTOR_NAMES))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a MoleculeSurrogate state dict: {type(exc).__name__}: {exc}") from None
        if len(s.train_fps):
            # similarities among the training molecules, with the pool cache's arithmetic
            s._cache = SimilarityCache(s.train_fps)
            s._cache_rows = np.arange(len(s.train_fps), dtype=np.int64)
            if s.uses_descriptors:  # the cache's rows are the training molecules
                s.pool_desc = s.train_desc
        s._factorise()
        return s


class _MixedCache:
    """A :class:`SimilarityCache` seen through the "tanimoto+descriptors" kernel: its
    columns are ``(1 - w) T + w K_d`` at fixed hyperparameters (computed once per column,
    as the Tanimoto columns are), with the same positions and :meth:`ensure`."""

    def __init__(self, base: SimilarityCache, pool_desc: np.ndarray, weight: float,
                 log_ls: np.ndarray) -> None:
        self.base = base
        self.index = base.index
        self.fps = base.fps
        self.pool_desc = pool_desc
        self.weight = float(weight)
        self.log_ls = np.asarray(log_ls, dtype=np.float64).copy()
        self._buf = np.zeros((base.cols.shape[0], max(base.n_cols, 64)), dtype=np.float32)
        self._n = 0

    @property
    def n_cols(self) -> int:
        return self.base.n_cols

    @property
    def col_of(self) -> dict[int, int]:
        return self.base.col_of

    def ensure(self, rows: np.ndarray | list[int]) -> np.ndarray:
        pos = self.base.ensure(rows)
        self._sync()
        return pos

    @property
    def cols(self) -> np.ndarray:
        self._sync()
        return self._buf[:, : self._n]

    def _sync(self) -> None:
        need = self.base.n_cols
        if need <= self._n:
            return
        row_of = {c: r for r, c in self.base.col_of.items()}
        new_rows = np.array([row_of[c] for c in range(self._n, need)], dtype=np.int64)
        kd = descriptor_kernel(self.pool_desc, self.pool_desc[new_rows], self.log_ls)
        mixed = (1.0 - self.weight) * self.base.cols[:, self._n: need] + self.weight * kd
        if need > self._buf.shape[1]:
            buf = np.zeros((self._buf.shape[0], max(need, 2 * self._buf.shape[1])), dtype=np.float32)
            buf[:, : self._n] = self._buf[:, : self._n]
            self._buf = buf
        self._buf[:, self._n: need] = mixed
        self._n = need


class PoolPosterior:
    """A lazily evaluated posterior over a pool, with fantasised (pending) points.

    All quantities are in standardised units (see :attr:`MoleculeSurrogate.y_scale`).
    Fantasies follow the kriging-believer rule: a fantasised observation equals the
    posterior mean, so it leaves every posterior mean unchanged and only shrinks
    variances -- which is why the variance bounds stay valid as points are added.

    Attributes:
        mean: ``(n_pool, n_f)`` posterior means of the latent values.
        prior_var: ``(n_f,)`` prior variances ``diag(B)``.
        noise: ``(n_f,)`` noise variances.
    """

    def __init__(self, model: MoleculeSurrogate, fps: np.ndarray, cache: SimilarityCache) -> None:
        import torch

        self.model = model
        self.fps = fps
        self.cache = cache
        self.b = model.coregionalisation()
        self.noise = model.noise()
        self.prior_var = np.diag(self.b).copy()
        nf = model.n_fidelities
        n_pool = fps.shape[0]
        self.n_pool = n_pool
        self._train_pos = cache.ensure(model._cache_rows) if len(model.train_mol) else np.zeros(
            0, dtype=np.int64)
        self.mean = np.tile(model.level_means(), (n_pool, 1)).astype(np.float64)
        alpha = model._alpha.numpy() if model._alpha is not None else np.zeros(0)
        # per cache column: mean weights, and the largest variance reduction factor
        # B[t, f]^2 / (B[f, f] + noise_f) over the fidelities observed at that molecule
        w = np.zeros((cache.n_cols, nf))
        self._reduction = np.zeros((cache.n_cols, nf))
        if len(alpha):
            for t in range(nf):
                np.add.at(w[:, t], self._train_pos[model.obs_u], self.b[t, model.obs_f] * alpha)
                factor = self.b[t, model.obs_f] ** 2 / (self.b[model.obs_f, model.obs_f]
                                                        + self.noise[model.obs_f])
                np.maximum.at(self._reduction[:, t], self._train_pos[model.obs_u], factor)
            # float32 product: ~1e-5 relative error, irrelevant for ranking candidates
            w32 = w.astype(np.float32)
            for lo in range(0, n_pool, _ROW_CHUNK):
                self.mean[lo: lo + _ROW_CHUNK] += cache.cols[lo: lo + _ROW_CHUNK] @ w32
        self._chol = model._chol
        self._obs_u = torch.as_tensor(model.obs_u)
        self._obs_b = torch.as_tensor(self.b[:, model.obs_f])  # (n_f, n)
        # fantasies: pool rows, fidelities, similarity columns, and the Cholesky block rows
        self.fant_rows: list[int] = []
        self.fant_f: list[int] = []
        self._fant_pos: list[int] = []  # similarity-cache columns of the fantasised rows
        self._fant_s = torch.zeros((0, len(model.obs_y)), dtype=torch.float64)  # (k, n)
        self._fant_d = torch.zeros((0, 0), dtype=torch.float64)  # (k, k) lower
        # exact rows: pool row -> position; v[t] is (n + k, n_exact)
        self.exact_pos: dict[int, int] = {}
        self.exact_rows = np.zeros(0, dtype=np.int64)
        self._v = [torch.zeros((len(model.obs_y), 0), dtype=torch.float64) for _ in range(nf)]
        self.cov = np.zeros((0, nf, nf))  # posterior covariance over fidelities, per exact row
        # for upper bounds: the largest single-observation variance reduction per row
        self._best_reduction = np.zeros((n_pool, nf))
        if len(alpha):
            red32 = self._reduction.astype(np.float32)
            for lo in range(0, n_pool, _ROW_CHUNK):
                sq = np.square(cache.cols[lo: lo + _ROW_CHUNK])
                for t in range(nf):
                    self._best_reduction[lo: lo + _ROW_CHUNK, t] = (sq * red32[:, t]).max(1)
            self._best_reduction *= 1.0 - 1e-5  # float32 rounding must not break the bound
        self.self_sim = (np.asarray(cache.index.n_on) > 0).astype(np.float64)  # T(x,x)

    def var_upper(self) -> np.ndarray:
        """Upper bounds on the posterior variance of every row, ``(n_pool, n_f)``.

        Conditioning on fewer data never lowers a variance, so the variance given
        the single most informative observation bounds the full posterior variance.
        """
        out = self.prior_var[None, :] * self.self_sim[:, None]
        out = np.maximum(out - self._best_reduction, 0.0)
        if len(self.exact_rows):
            out[self.exact_rows] = np.diagonal(self.cov, axis1=1, axis2=2)
        return out

    def _k_rows(self, rows: np.ndarray, t: int) -> torch.Tensor:
        """Prior covariance of rows at fidelity t with observations and fantasies, (n+k, r)."""
        import torch

        block = self.cache.cols[rows]  # (r, n_cols)
        sim = torch.as_tensor(block[:, self._train_pos], dtype=torch.float64)  # (r, m)
        k_obs = sim[:, self._obs_u] * self._obs_b[t]
        if self.fant_rows:
            fs = torch.as_tensor(block[:, self._fant_pos], dtype=torch.float64)
            k_f = fs * torch.as_tensor(self.b[t, self.fant_f])
            k_obs = torch.cat([k_obs, k_f], 1)
        return k_obs.T

    def _solve(self, k: torch.Tensor) -> torch.Tensor:
        """``L_aug^-1 k`` for the Cholesky factor extended by the fantasies; k is (n+k, r)."""
        import torch

        n = self._chol.shape[0]
        v1 = torch.linalg.solve_triangular(self._chol, k[:n], upper=False) if n else k[:0]
        if not self.fant_rows:
            return v1
        v2 = torch.linalg.solve_triangular(self._fant_d, k[n:] - self._fant_s @ v1, upper=False)
        return torch.cat([v1, v2], 0)

    def make_exact(self, rows: np.ndarray) -> None:
        """Compute exact posterior covariances over fidelities for pool ``rows``."""
        import torch

        rows = np.array([int(r) for r in dict.fromkeys(np.asarray(rows).tolist())
                         if int(r) not in self.exact_pos], dtype=np.int64)
        if len(rows) == 0:
            return
        nf = self.model.n_fidelities
        vs = [self._solve(self._k_rows(rows, t)) for t in range(nf)]
        cov = np.empty((len(rows), nf, nf))
        for t in range(nf):
            for s in range(t, nf):
                c = self.b[t, s] * self.self_sim[rows] - (vs[t] * vs[s]).sum(0).numpy()
                cov[:, t, s] = cov[:, s, t] = c
        start = len(self.exact_rows)
        for k, r in enumerate(rows):
            self.exact_pos[int(r)] = start + k
        self.exact_rows = np.concatenate([self.exact_rows, rows])
        self._v = [torch.cat([self._v[t], vs[t]], 1) for t in range(nf)]
        self.cov = np.concatenate([self.cov, cov], 0)

    def add_fantasy(self, row: int, fidelity: int) -> None:
        """Condition the variances on a pending evaluation of ``row`` at ``fidelity``."""
        import torch

        row, f = int(row), int(fidelity)
        n_before = self._chol.shape[0] + len(self.fant_rows)
        pos = int(self.cache.ensure([row])[0])
        k_p = self._k_rows(np.array([row]), f)[:, 0]  # (n+k,)
        l_p = self._solve(k_p[:, None])[:, 0]
        kpp = self.b[f, f] * self.self_sim[row] + self.noise[f]
        d = float(np.sqrt(max(kpp - float(l_p @ l_p), 1e-10)))
        n = self._chol.shape[0]
        # extend the fantasy block of the Cholesky factor: [[L, 0], [S, D]]
        self._fant_s = torch.cat([self._fant_s, l_p[:n][None, :]], 0)
        k_old = len(self.fant_rows)
        d_new = torch.zeros((k_old + 1, k_old + 1), dtype=torch.float64)
        d_new[:k_old, :k_old] = self._fant_d
        d_new[k_old, :k_old] = l_p[n:]
        d_new[k_old, k_old] = d
        self._fant_d = d_new
        self.fant_rows.append(row)
        self.fant_f.append(f)
        self._fant_pos.append(pos)
        if len(self.exact_rows):
            nf = self.model.n_fidelities
            comps = []
            sim_p = torch.as_tensor(self.cache.cols[self.exact_rows, pos], dtype=torch.float64)
            for t in range(nf):
                k_tp = sim_p * self.b[t, f]
                comp = (k_tp - l_p[:n_before] @ self._v[t]) / d  # (n_exact,)
                self._v[t] = torch.cat([self._v[t], comp[None, :]], 0)
                comps.append(comp.numpy())
            for t in range(nf):
                for s in range(t, nf):
                    self.cov[:, t, s] -= comps[t] * comps[s]
                    if s != t:
                        self.cov[:, s, t] = self.cov[:, t, s]
        else:
            self._v = [torch.cat([v, torch.zeros((1, 0), dtype=torch.float64)], 0) for v in self._v]
