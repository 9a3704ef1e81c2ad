"""The structure-surrogate contract and the Gaussian-process helpers its models share.

A :class:`StructureSurrogate` models the correction ``delta_i = E_expensive,i - E_cheap,i``
(kJ/mol per molecule) over the structures of ONE landscape. It is bound to that landscape
when constructed (its cheap-level energies and whatever per-structure inputs the model
uses: SOAP descriptors, fragment terms) and is then addressed by structure index
``0 .. n-1``; no caller passes model inputs. The contract, checked for every
implementation by ``tests/agent/surrogates/test_structure_surrogate_contract.py``:

* :meth:`~StructureSurrogate.fit` ``(computed)`` -- ``computed`` maps structure index to
  the expensive energy (kJ/mol per molecule, any fixed reference); fits hyperparameters
  and returns ``self``. Adding a constant to every computed energy adds it to every
  predicted correction and leaves the spread unchanged.
* :meth:`~StructureSurrogate.posterior` ``(idx)`` -- predictive mean ``(m,)`` kJ/mol and
  covariance ``(m, m)`` (kJ/mol)^2, symmetric positive semi-definite, of the corrections
  of the structures ``idx``; predictive means the error bar of a not-yet-computed
  structure's energy, already multiplied by the model's calibration factor.
* :meth:`~StructureSurrogate.predict` (mean, std), :meth:`~StructureSurrogate.sample`
  (joint draws ``(n_samples, m)``) -- derived from the posterior.
* :meth:`~StructureSurrogate.condition` ``(pending)`` -- a copy that treats the pending
  structures as computed at their predicted mean (kriging believer), hyperparameters
  kept: their spread shrinks, their mean does not move.
* :meth:`~StructureSurrogate.refit_fixed` ``(computed)`` -- a copy trained on another
  computed set with the hyperparameters and target scaling kept (no optimisation).
* :attr:`~StructureSurrogate.loo_residual_kjmol` -- per computed structure (sorted index
  order), computed correction minus the prediction of the model trained without it,
  hyperparameters fixed: equal to ``refit_fixed(computed minus i).predict([i])``.
* :meth:`~StructureSurrogate.embedding` ``(idx)`` -- coordinates for space-filling picks.

Shared helpers: :func:`block_loo` (closed-form leave-block-out residuals of a GP),
:func:`loo_calibration` (the spread factor from LOO z-scores), :func:`jittered_cholesky`
and :func:`joint_draws` (joint Gaussian draws). Importing this module is cheap (numpy).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence

import numpy as np


class SurrogateError(ValueError):
    """Bad input to a structure surrogate; the message is one line."""


#: decimals (of kJ/mol) the structure surrogates round their training targets to before a
#: fit: the corrections ``E_expensive - E_cheap`` (:meth:`StructureSurrogate._deltas`) and
#: the fragment model's dimer corrections. A marginal-likelihood fit is not a smooth function
#: of its data (L-BFGS ends at its iteration limit or somewhere on a flat ridge): one
#: fragment-DFT structure's dimer energies changed by 6e-7 kJ/mol, the SCF's run-to-run
#: noise, moved the leave-one-out MAE from 1.807 to 1.848 kJ/mol and the next picks
#: (``benchmarks/results/NOTES.md``, newuser35 item 2). Rounded to 0.01 kJ/mol (far below any
#: model's error), results equal to that give bitwise the same fits and decisions, which is
#: what ``synchronous = true`` promises; a value within the noise of a rounding boundary
#: (~1e-6 / 0.01 per value) still can differ. None: unrounded.
TARGET_DECIMALS: int | None = 2


def rounded_targets(values: np.ndarray) -> np.ndarray:
    """``values`` (kJ/mol) rounded to :data:`TARGET_DECIMALS` decimals."""
    values = np.asarray(values, dtype=float)
    return values if TARGET_DECIMALS is None else np.round(values, TARGET_DECIMALS)


def loo_calibration(z2: np.ndarray, prior_n: float, max_factor: float) -> float:
    """Spread factor ``sqrt((sum z^2 + n0) / (n + n0))`` clipped to ``[1, max_factor]``.

    A calibrated GP has leave-one-out standardized residuals ``z`` of unit variance; with
    a few points a marginal-likelihood fit tends to return error bars that are too small,
    and scaling by the observed LOO spread is the usual recalibration (Sundararajan &
    Keerthi, Neural Comput. 13, 1103 (2001)). ``n0 = prior_n`` pseudo-points at ``z^2 = 1``
    keep one lucky or unlucky point from dominating; the factor never shrinks error bars.
    """
    z2 = np.asarray(z2, dtype=float).reshape(-1)
    n = len(z2) + float(prior_n)
    ratio = (float(np.sum(z2)) + float(prior_n)) / n if n > 0 else 1.0
    return float(np.clip(np.sqrt(ratio), 1.0, float(max_factor)))


def block_loo(K_noisy: np.ndarray, y: np.ndarray,
              blocks: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Closed-form leave-block-out residuals of a zero-mean GP with fixed hyperparameters.

    With ``K`` the training covariance including noise and ``a = K^-1 y``, leaving out
    the rows ``B`` gives the residual ``y_B - E[y_B | rest] = ([K^-1]_BB)^-1 a_B`` and its
    predictive covariance ``([K^-1]_BB)^-1`` (noise included); for single points this is
    Rasmussen & Williams, *Gaussian Processes for Machine Learning* (2006), eq. 5.12.

    Args:
        K_noisy: ``(n, n)`` covariance of the training targets (kernel + noise).
        y: ``(n,)`` targets minus the prior mean.
        blocks: index arrays, one per held-out block.

    Returns:
        Per block ``(residual (b,), covariance (b, b))`` in the units of ``y``.
    """
    K = 0.5 * (K_noisy + K_noisy.T)
    K_inv = np.linalg.inv(K)
    alpha = K_inv @ y
    out = []
    for b in blocks:
        b = np.asarray(b, dtype=int)
        C = np.linalg.inv(K_inv[np.ix_(b, b)])
        out.append((C @ alpha[b], 0.5 * (C + C.T)))
    return out


def jittered_cholesky(cov: np.ndarray, max_tries: int = 8) -> np.ndarray:
    """Lower Cholesky factor of ``cov`` with the smallest diagonal jitter (from 1e-8 of the
    mean variance, x10 per try) that makes it succeed; the square roots of the diagonal if
    none does."""
    cov = 0.5 * (cov + cov.T)
    n = len(cov)
    jitter = 1e-8 * max(float(np.mean(np.diag(cov))) if n else 0.0, 1e-12)
    for _ in range(max_tries):
        try:
            return np.linalg.cholesky(cov + jitter * np.eye(n))
        except np.linalg.LinAlgError:
            jitter *= 10.0
    return np.diag(np.sqrt(np.clip(np.diag(cov), 0.0, None)))


def joint_draws(mean: np.ndarray, cov: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """Joint Gaussian draws ``mean + L eps`` from standard normals ``eps`` ``(n_samples, n)``;
    returns ``(n_samples, n)``."""
    return np.asarray(mean)[None, :] + eps @ jittered_cholesky(cov).T


class StructureSurrogate(ABC):
    """A model of the correction to the cheap level over one landscape (module docstring).

    Subclasses set :attr:`cheap_kjmol`, :attr:`seed`, :attr:`calibration` and
    :attr:`loo_residual_kjmol`, and implement :meth:`fit`, :meth:`posterior`,
    :meth:`condition`, :meth:`refit_fixed` and :meth:`embedding`.
    """

    #: name in MLflow tags, ``structure_refit`` events and benchmark output
    kind: str = "structure-surrogate"
    cheap_kjmol: np.ndarray
    seed: int = 0
    #: factor (>= 1) already applied to the predictive spread
    calibration: float = 1.0
    #: computed minus held-out prediction per computed structure (sorted index order),
    #: kJ/mol per molecule; None before two structures are computed
    loo_residual_kjmol: np.ndarray | None = None

    def loo_spread_ratio(self) -> float | None:
        """``sqrt((sum z^2 + n0) / (n + n0))`` of the leave-one-out z-scores (residual over the
        uncalibrated predictive sd; ``n0`` the model's ``calibration_prior_n`` pseudo-points at
        ``z^2 = 1``), not clipped: below 1 when the computed structures' held-out errors are
        smaller than the model's error bars say; None when the model has no LOO z-scores."""
        z2 = self._loo_z_squared()
        if z2 is None or len(z2) == 0:
            return None
        n0 = float(getattr(self, "calibration_prior_n", 0.0))
        return float(np.sqrt((float(np.sum(z2)) + n0) / (len(z2) + n0)))

    def _loo_z_squared(self) -> np.ndarray | None:
        """Squared LOO z-scores of the computed structures (subclasses that have them)."""
        return None

    @property
    def n_landscape(self) -> int:
        """Structures of the landscape the model is bound to."""
        return len(self.cheap_kjmol)

    def indices(self, idx: Iterable[int] | np.ndarray) -> np.ndarray:
        """``idx`` as a 1-D integer array of structure indices, checked against the landscape."""
        arr = np.asarray(list(idx) if not isinstance(idx, np.ndarray) else idx)
        if arr.size == 0:
            return np.zeros(0, dtype=int)
        if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) and arr.dtype != bool):
            raise SurrogateError(
                f"structures are addressed by a 1-D array of integer indices, got {arr.dtype} shape {arr.shape}")
        if arr.min() < 0 or arr.max() >= self.n_landscape:
            raise SurrogateError(f"structure index out of range for {self.n_landscape} structures")
        return arr.astype(int)

    def _deltas(self, computed: Mapping[int, float]) -> tuple[np.ndarray, np.ndarray]:
        """Sorted indices and their corrections ``E_expensive - E_cheap`` (checked finite),
        rounded to :data:`TARGET_DECIMALS`."""
        idx = self.indices(np.array(sorted(int(i) for i in computed), dtype=int))
        y = rounded_targets(np.array([float(computed[i]) for i in idx], dtype=float) - self.cheap_kjmol[idx])
        if not np.all(np.isfinite(y)):
            raise SurrogateError("computed energies must be finite")
        return idx, y

    def _copy(self) -> StructureSurrogate:
        return copy.copy(self)

    @abstractmethod
    def fit(self, computed: Mapping[int, float]) -> StructureSurrogate:
        """Fit to the computed structures (index -> expensive energy, kJ/mol); returns self."""

    @abstractmethod
    def posterior(self, idx: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """Predictive mean ``(m,)`` kJ/mol and covariance ``(m, m)`` (kJ/mol)^2 of the
        corrections of ``idx``, calibrated."""

    @abstractmethod
    def condition(self, pending: Iterable[int]) -> StructureSurrogate:
        """A copy with ``pending`` treated as computed at their predicted mean."""

    @abstractmethod
    def refit_fixed(self, computed: Mapping[int, float]) -> StructureSurrogate:
        """A copy trained on ``computed`` with hyperparameters and target scaling kept."""

    @abstractmethod
    def embedding(self, idx: Iterable[int]) -> np.ndarray:
        """``(m, k)`` coordinates of ``idx`` in the model's input space (space-filling picks)."""

    def predict(self, idx: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """Predictive mean and std of the corrections of ``idx``, ``(m,)`` each, kJ/mol."""
        mean, cov = self.posterior(idx)
        return mean, np.sqrt(np.clip(np.diag(cov), 1e-24, None))

    def _standard_normal(self, n: int, n_samples: int, seed: int) -> np.ndarray:
        """``(n_samples, n)`` standard normals of the draws (a model may keep its own stream)."""
        return np.random.default_rng(seed).standard_normal((int(n_samples), n))

    def sample(self, idx: Iterable[int], n_samples: int, seed: int | None = None) -> np.ndarray:
        """Joint predictive draws of the corrections of ``idx``, ``(n_samples, m)``, kJ/mol."""
        mean, cov = self.posterior(idx)
        eps = self._standard_normal(len(mean), n_samples, self.seed if seed is None else int(seed))
        return joint_draws(mean, cov, eps)

    @property
    def loo_mae_kjmol(self) -> float | None:
        """Mean absolute leave-one-out error (kJ/mol per molecule); None before two are computed."""
        r = self.loo_residual_kjmol
        return float(np.mean(np.abs(r))) if r is not None and len(r) >= 2 else None
