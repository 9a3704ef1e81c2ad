"""Delta-learning Gaussian process over a crystal structure prediction landscape.

A cheap level (force field, ML potential) ranks hundreds of CSP minima imperfectly. A
GP trained on a few expensive single points learns the correction
``delta = E_expensive - E_cheap`` as a smooth function of the structure descriptor
and re-ranks the whole landscape, including structures never computed at the
expensive level (McDonagh, Cooper, Day et al., J. Chem. Theory Comput. 15, 2743
(2019); Egorova, Hafizi, Woods & Day, J. Phys. Chem. Lett. 11, 9376 (2020)).

* :class:`DeltaGP` -- the GP on descriptor rows (``fit(X, delta)``, ``predict(X)``).
* :class:`SoapDeltaSurrogate` -- the same model bound to one landscape, a
  :class:`~agent.surrogates.base.StructureSurrogate` addressed by structure index.
* :class:`ShiftModel` -- the null model (one constant shift, independent errors), also
  a :class:`~agent.surrogates.base.StructureSurrogate`.

Model (:class:`DeltaGP`):

* inputs: rows of :func:`sim_backends.descriptors.structure_features` -- a block of
  unit-norm SOAP columns followed by ``n_passthrough`` cheap extras (density,
  volume per molecule, cheap energy). The SOAP block is reduced by PCA to
  ``n_components``; the PCA basis and the [0, 1] input scaling are fitted on *all*
  structures of the landscape when given (``X_unlabelled``), which uses only
  descriptors, never energies.
* GP: BoTorch ``SingleTaskGP``; kernel = outputscale * Matern-5/2 over all inputs
  (isotropic by default, ``ard=True`` for one length scale per input; dimension-scaled
  log-normal length-scale prior of Hvarfner et al., ICML 2024; Gamma(2, 4) outputscale
  prior) + a linear kernel on selected extras (default: the cheap energy; Gamma(2,
  0.15) variance prior): the linear part carries the trend of the correction with the
  cheap energy, the Matern part what the structure adds. A learned constant mean and a
  learned noise (log-normal prior around ``noise_frac`` of the target scale), fitted by
  maximising the marginal likelihood (``fit_gpytorch_mll``, L-BFGS-B, at most
  ``max_iter`` steps). Targets are ``delta - prior_mean`` scaled by
  ``max(std, min_scale_kjmol)``.
* predictions are predictive (latent + noise): the error bar is that of the energy of
  a not-yet-computed structure, multiplied by the leave-one-out calibration factor
  (:func:`agent.surrogates.base.loo_calibration`, >= 1) when the computed structures'
  own held-out residuals say the fitted GP is overconfident.

With no training data the model returns the prior mean and ``prior_std_kjmol``.
Measured accuracy and calibration: ``benchmarks/results/NOTES.md``. Importing this module
is cheap; torch, gpytorch and BoTorch load on first fit.

Over 500 lines on purpose: DeltaGP and its two landscape-bound forms
(SoapDeltaSurrogate, and ShiftModel, the null model the skill test compares it with) share
the input checks and the descriptor-row conventions; the protocol and shared GP helpers
are in base.py.
"""

from __future__ import annotations

import copy

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.surrogates.base import (
    StructureSurrogate,
    SurrogateError,
    block_loo,
    joint_draws,
    loo_calibration,
)

if TYPE_CHECKING:
    from botorch.models import SingleTaskGP

PriorMean = float | Callable[[np.ndarray], np.ndarray]

__all__ = ["DeltaGP", "ShiftModel", "SoapDeltaSurrogate", "SurrogateError", "extra_column_options"]


def _as_2d(X: np.ndarray, name: str = "X") -> np.ndarray:
    arr = np.asarray(X, dtype=float)
    if arr.ndim != 2:
        raise SurrogateError(
            f"{name} must be 2-D (n_structures, n_features), got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise SurrogateError(f"{name} contains NaN or infinite values")
    return arr


class DeltaGP:
    """GP on descriptors for the correction from a cheap to an expensive level.

    Args:
        seed: seed for torch during fitting and sampling (determinism).
        n_components: PCA components kept from the SOAP block.
        n_passthrough: trailing columns of ``X`` that skip PCA (cheap extras).
        prior_mean: prior mean of delta, kJ/mol per molecule (float or callable).
        prior_std_kjmol: predictive std with no data; also the target scale until
            three points are known.
        min_scale_kjmol: lower bound of the target scale (guards against a few
            nearly equal deltas making the GP overconfident).
        linear_dims: passthrough columns (0-based within the trailing block) that get
            a linear kernel; default ``(2,)``, the cheap energy of
            :func:`~sim_backends.descriptors.structure_features`.
        noise_frac: prior noise std as a fraction of the target scale.
        max_iter: L-BFGS-B iterations of the hyperparameter fit.
        ard: one Matern length scale per input instead of one in all.
        calibrate: scale the predictive spread by the leave-one-out calibration
            factor :attr:`calibration` (:func:`~agent.surrogates.base.loo_calibration`).
        calibration_prior_n: pseudo-observations of a perfectly calibrated
            standardized residual (z^2 = 1) that the LOO estimate is shrunk towards.
        max_calibration: upper bound of the calibration factor.
    """

    def __init__(
        self,
        seed: int = 0,
        n_components: int = 4,
        n_passthrough: int = 3,
        prior_mean: PriorMean = 0.0,
        prior_std_kjmol: float = 4.0,
        min_scale_kjmol: float = 1.5,
        linear_dims: tuple[int, ...] = (2,),
        noise_frac: float = 0.3,
        max_iter: int = 75,
        ard: bool = False,
        calibrate: bool = True,
        calibration_prior_n: float = 4.0,
        max_calibration: float = 4.0,
    ) -> None:
        if n_components < 1 or n_passthrough < 0:
            raise SurrogateError("n_components must be >= 1 and n_passthrough >= 0")
        if prior_std_kjmol <= 0 or min_scale_kjmol <= 0:
            raise SurrogateError("prior_std_kjmol and min_scale_kjmol must be positive")
        self.seed = int(seed)
        self.noise_frac = float(noise_frac)
        self.max_iter = int(max_iter)
        self.ard = bool(ard)
        self.calibrate = bool(calibrate)
        self.calibration_prior_n = float(calibration_prior_n)
        self.max_calibration = float(max_calibration)
        if self.calibration_prior_n < 0 or self.max_calibration < 1.0:
            raise SurrogateError("calibration_prior_n must be >= 0 and max_calibration >= 1")
        #: factor (>= 1) applied to the predictive spread; 1 until fitted
        self.calibration = 1.0
        #: leave-one-out standardized residuals of the training points, ``(n,)``
        self.loo_z: np.ndarray | None = None
        #: leave-one-out residuals (computed - held-out prediction) of the training
        #: corrections, kJ/mol per molecule, ``(n,)``
        self.loo_residual_kjmol: np.ndarray | None = None
        self.linear_dims = tuple(int(i) for i in linear_dims)
        if any(i < 0 or i >= n_passthrough for i in self.linear_dims):
            raise SurrogateError("linear_dims index passthrough columns (0..n_passthrough-1)")
        self.n_components = int(n_components)
        self.n_passthrough = int(n_passthrough)
        self.prior_mean = prior_mean
        self.prior_std_kjmol = float(prior_std_kjmol)
        self.min_scale_kjmol = float(min_scale_kjmol)
        self._model: SingleTaskGP | None = None
        self._n_features: int | None = None
        self._pca_mean: np.ndarray | None = None
        self._pca_basis: np.ndarray | None = None
        self._lo: np.ndarray | None = None
        self._span: np.ndarray | None = None
        self._y_shift = 0.0
        self._y_scale = self.prior_std_kjmol
        self._train_Z: np.ndarray | None = None
        self._train_r: np.ndarray | None = None

    # ----------------------------------------------------------------- inputs
    def _prior(self, X: np.ndarray) -> np.ndarray:
        if callable(self.prior_mean):
            out = np.asarray(self.prior_mean(X), dtype=float).reshape(-1)
            if out.shape != (len(X),):
                raise SurrogateError("prior_mean callable must return one value per row")
            return out
        return np.full(len(X), float(self.prior_mean))

    def _fit_inputs(self, X_ref: np.ndarray) -> None:
        n_soap = X_ref.shape[1] - self.n_passthrough
        if n_soap < 1:
            raise SurrogateError(
                f"X has {X_ref.shape[1]} columns but n_passthrough={self.n_passthrough}"
            )
        soap = X_ref[:, :n_soap]
        self._pca_mean = soap.mean(axis=0)
        _, _, vt = np.linalg.svd(soap - self._pca_mean, full_matrices=False)
        k = min(self.n_components, vt.shape[0])
        self._pca_basis = vt[:k].T
        Z = self._project(X_ref, scale=False)
        self._lo = Z.min(axis=0)
        span = Z.max(axis=0) - self._lo
        self._span = np.where(span > 1e-12, span, 1.0)
        self._n_features = X_ref.shape[1]

    def _project(self, X: np.ndarray, scale: bool = True) -> np.ndarray:
        assert self._pca_basis is not None and self._pca_mean is not None
        n_soap = X.shape[1] - self.n_passthrough
        Z = (X[:, :n_soap] - self._pca_mean) @ self._pca_basis
        Z = np.hstack([Z, X[:, n_soap:]])
        if scale:
            assert self._lo is not None and self._span is not None
            Z = (Z - self._lo) / self._span - 0.5
        return Z

    def transform(self, X: np.ndarray) -> np.ndarray:
        """GP inputs for descriptor rows ``X``: shape ``(n, n_components + n_passthrough)``."""
        X = _as_2d(X)
        if self._n_features is None:
            raise SurrogateError("DeltaGP is not fitted; call fit() first")
        if X.shape[1] != self._n_features:
            raise SurrogateError(f"X has {X.shape[1]} features, the model {self._n_features}")
        return self._project(X)

    # -------------------------------------------------------------------- fit
    def fit(
        self,
        X: np.ndarray,
        delta_kjmol: np.ndarray,
        X_unlabelled: np.ndarray | None = None,
    ) -> DeltaGP:
        """Fit to the deltas of the computed structures.

        Args:
            X: descriptors of the computed structures, shape ``(n, d)``.
            delta_kjmol: ``E_expensive - E_cheap``, shape ``(n,)``, kJ/mol per molecule.
            X_unlabelled: descriptors of all landscape structures ``(m, d)`` used for
                the PCA basis and input scaling (descriptors only); default ``X``.

        Returns:
            ``self``.
        """
        X = _as_2d(X)
        y = np.asarray(delta_kjmol, dtype=float).reshape(-1)
        if len(y) != len(X):
            raise SurrogateError(f"{len(X)} descriptor rows but {len(y)} deltas")
        if not np.all(np.isfinite(y)):
            raise SurrogateError("delta_kjmol contains NaN or infinite values")
        X_ref = X if X_unlabelled is None else _as_2d(X_unlabelled, "X_unlabelled")
        if X_ref.shape[1] != X.shape[1]:
            raise SurrogateError("X and X_unlabelled have different numbers of features")
        if len(X_ref) == 0:
            raise SurrogateError("no descriptors to fit the input transform on")
        self._fit_inputs(X_ref)
        self._model = None
        if len(X) == 0:
            return self
        r = y - self._prior(X)
        self._y_shift = float(r.mean())
        self._y_scale = (
            max(float(r.std(ddof=1)), self.min_scale_kjmol) if len(r) >= 3 else self.prior_std_kjmol
        )
        self._train_Z = self._project(X)
        self._train_r = r
        self._model = self._build(self._train_Z, r, state=None)
        self.loo_z = self._loo_z()
        self.calibration = (loo_calibration(self.loo_z**2, self.calibration_prior_n, self.max_calibration)
                            if self.calibrate else 1.0)
        return self

    def _loo_z_squared(self) -> np.ndarray | None:
        return None if self.loo_z is None else np.asarray(self.loo_z, dtype=float) ** 2

    def _loo_z(self) -> np.ndarray:
        """Leave-one-out standardized residuals of the training points, ``(n,)``
        (:func:`~agent.surrogates.base.block_loo` with one point per block, fitted
        hyperparameters and constant mean kept); sets :attr:`loo_residual_kjmol`."""
        import torch

        model = self._model
        assert model is not None
        with torch.no_grad():
            tX = model.train_inputs[0]
            y = (model.train_targets - model.mean_module(tX)).numpy()
            K = (model.covar_module(tX).to_dense() + model.likelihood.noise * torch.eye(
                len(tX), dtype=tX.dtype)).numpy()
        loo = block_loo(K, y, [np.array([i]) for i in range(len(y))])
        r = np.array([float(res[0]) for res, _ in loo])
        var = np.array([max(float(c[0, 0]), 1e-12) for _, c in loo])
        self.loo_residual_kjmol = r * self._y_scale
        return r / np.sqrt(var)

    @property
    def loo_mae_kjmol(self) -> float | None:
        """Mean absolute leave-one-out error of the computed corrections (kJ/mol per
        molecule), hyperparameters fixed; ``None`` before two structures are computed."""
        r = self.loo_residual_kjmol
        return float(np.mean(np.abs(r))) if r is not None and len(r) >= 2 else None

    def _build(self, Z: np.ndarray, r: np.ndarray, state: dict[str, Any] | None) -> SingleTaskGP:
        import torch
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import SingleTaskGP
        from botorch.models.utils.gpytorch_modules import get_covar_module_with_dim_scaled_prior
        from gpytorch.mlls import ExactMarginalLogLikelihood

        torch.manual_seed(self.seed)
        tX = torch.as_tensor(Z, dtype=torch.float64)
        tY = torch.as_tensor((r - self._y_shift) / self._y_scale, dtype=torch.float64)[:, None]
        from gpytorch.constraints import GreaterThan
        from gpytorch.kernels import LinearKernel, ScaleKernel
        from gpytorch.likelihoods import GaussianLikelihood
        from gpytorch.priors import GammaPrior, LogNormalPrior

        covar = ScaleKernel(
            get_covar_module_with_dim_scaled_prior(
                ard_num_dims=Z.shape[1] if self.ard else 1, use_rbf_kernel=False
            ),
            outputscale_prior=GammaPrior(2.0, 4.0),
        )
        if self.linear_dims:
            dims = [Z.shape[1] - self.n_passthrough + i for i in self.linear_dims]
            covar = covar + LinearKernel(active_dims=dims, variance_prior=GammaPrior(2.0, 0.15))
        noise_prior = LogNormalPrior(loc=float(np.log(self.noise_frac**2)), scale=1.0)
        likelihood = GaussianLikelihood(
            noise_prior=noise_prior,
            noise_constraint=GreaterThan(1e-4, transform=None, initial_value=noise_prior.mode),
        )
        model = SingleTaskGP(
            tX, tY, likelihood=likelihood, covar_module=covar, outcome_transform=None
        )
        if state is not None:
            model.load_state_dict(state)
        else:
            mll = ExactMarginalLogLikelihood(model.likelihood, model)
            try:
                fit_gpytorch_mll(mll, optimizer_kwargs={"options": {"maxiter": self.max_iter}})
            except Exception:  # noqa: BLE001 - keep the prior hyperparameters
                pass
        model.eval()
        return model

    def condition(self, X_new: np.ndarray, delta_kjmol: np.ndarray) -> DeltaGP:
        """A copy that also knows ``(X_new, delta)``, hyperparameters kept (no refit).

        Used for kriging-believer batches: pending structures enter with their
        believed (predicted mean) delta, which shrinks the uncertainty around them.
        """
        X_new = _as_2d(X_new)
        y_new = np.asarray(delta_kjmol, dtype=float).reshape(-1)
        if len(y_new) != len(X_new):
            raise SurrogateError(f"{len(X_new)} rows but {len(y_new)} deltas")
        if len(X_new) == 0:
            return copy.copy(self)
        Z_new = self.transform(X_new)
        r_new = y_new - self._prior(X_new)
        if self._model is None:
            return self._with_train(Z_new, r_new)
        assert self._train_Z is not None and self._train_r is not None
        return self._with_train(np.vstack([self._train_Z, Z_new]), np.concatenate([self._train_r, r_new]))

    def with_training(self, X: np.ndarray, delta_kjmol: np.ndarray) -> DeltaGP:
        """A copy trained on ``(X, delta)`` only, hyperparameters, target scaling and
        calibration kept (no refit, leave-one-out residuals not recomputed)."""
        X = _as_2d(X)
        y = np.asarray(delta_kjmol, dtype=float).reshape(-1)
        if len(y) != len(X):
            raise SurrogateError(f"{len(X)} rows but {len(y)} deltas")
        return self._with_train(self.transform(X), y - self._prior(X))

    def _with_train(self, Z: np.ndarray, r: np.ndarray) -> DeltaGP:
        out = copy.copy(self)
        if len(r) == 0:  # no data: the prior
            out._model, out._train_Z, out._train_r = None, None, None
            return out
        if self._model is None:  # no hyperparameters yet: fit them on the believed data
            out._y_shift, out._y_scale = float(r.mean()), self.prior_std_kjmol
            out._train_Z, out._train_r = Z, r
            out._model = out._build(Z, r, state=None)
            return out
        out._train_Z, out._train_r = Z, r
        out._model = out._build(Z, r, state=self._model.state_dict())
        return out

    # ---------------------------------------------------------------- predict
    @property
    def n_train(self) -> int:
        return 0 if self._train_r is None or self._model is None else len(self._train_r)

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predictive mean and std of delta, each shape ``(n,)``, kJ/mol per molecule."""
        Z = self.transform(X)
        prior = self._prior(np.asarray(X, dtype=float))
        if self._model is None:
            return prior, np.full(len(Z), self.prior_std_kjmol)
        import torch

        with torch.no_grad():
            post = self._model.posterior(
                torch.as_tensor(Z, dtype=torch.float64), observation_noise=True
            )
            mean = post.mean.squeeze(-1).numpy()
            var = post.variance.squeeze(-1).clamp_min(1e-12).numpy()
        return (
            prior + self._y_shift + self._y_scale * mean,
            self.calibration * self._y_scale * np.sqrt(var),
        )

    def posterior(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predictive mean ``(n,)`` and covariance ``(n, n)`` of delta (kJ/mol per molecule,
        (kJ/mol)^2), calibrated."""
        Z = self.transform(X)
        prior = self._prior(np.asarray(X, dtype=float))
        if self._model is None:
            return prior, self.prior_std_kjmol**2 * np.eye(len(Z))
        import torch

        with torch.no_grad():
            mvn = self._model.posterior(
                torch.as_tensor(Z, dtype=torch.float64), observation_noise=True
            ).distribution
            mean = mvn.mean.reshape(-1).numpy()
            cov = mvn.covariance_matrix.reshape(len(Z), len(Z)).numpy()
        scale = self.calibration * self._y_scale
        return prior + self._y_shift + self._y_scale * mean, scale**2 * 0.5 * (cov + cov.T)

    def sample(self, X: np.ndarray, n_samples: int, seed: int | None = None) -> np.ndarray:
        """Joint predictive samples of delta, shape ``(n_samples, n)``, kJ/mol per molecule."""
        rng_seed = self.seed if seed is None else int(seed)
        if self._model is None:
            Z = self.transform(X)
            prior = self._prior(np.asarray(X, dtype=float))
            rng = np.random.default_rng(rng_seed)
            return prior + self.prior_std_kjmol * rng.standard_normal((n_samples, len(Z)))
        import torch

        mean, cov = self.posterior(X)
        gen = torch.Generator().manual_seed(rng_seed)
        eps = torch.randn(len(mean), n_samples, generator=gen, dtype=torch.float64).T.numpy()
        return joint_draws(mean, cov, eps)


def extra_column_options(n_extra: int, linear: bool = True) -> dict[str, Any]:
    """:class:`DeltaGP` options for rows of ``structure_features(..., extra_columns=(n, k))``.

    The trailing block is then density, volume per molecule, cheap energy and the ``k``
    extra columns; the cheap energy keeps its linear kernel and, with ``linear``, every
    extra column gets one too (for features with a roughly linear relation to delta, such
    as the force-field relaxation volume change of :mod:`sim_backends.ff_relax`).

    Args:
        n_extra: number of extra columns ``k >= 0``.
        linear: add the extra columns to the linear kernel.

    Returns:
        ``{"n_passthrough": 3 + k, "linear_dims": (2, ...)}``.
    """
    if n_extra < 0:
        raise SurrogateError(f"n_extra must be >= 0, got {n_extra}")
    return {"n_passthrough": 3 + int(n_extra),
            "linear_dims": (2, *range(3, 3 + int(n_extra))) if linear else (2,)}


class SoapDeltaSurrogate(StructureSurrogate):
    """:class:`DeltaGP` bound to one landscape: a
    :class:`~agent.surrogates.base.StructureSurrogate` addressed by structure index.

    Args:
        cheap_kjmol: cheap-level energies of the landscape's structures ``(n,)``, kJ/mol
            per molecule.
        X: their descriptors ``(n, d)`` (:func:`sim_backends.descriptors.structure_features`);
            all rows fix the PCA basis and input scaling.
        seed: seed of the fit and of the draws.
        **gp_options: keyword options of :class:`DeltaGP`.
    """

    kind = "soap-delta-gp"

    def __init__(self, cheap_kjmol: np.ndarray, X: np.ndarray, seed: int = 0, **gp_options: Any) -> None:
        self.cheap_kjmol = np.asarray(cheap_kjmol, dtype=float).reshape(-1)
        self.X = _as_2d(X)
        if len(self.X) != len(self.cheap_kjmol):
            raise SurrogateError(f"{len(self.cheap_kjmol)} cheap energies but {len(self.X)} descriptor rows")
        if not np.all(np.isfinite(self.cheap_kjmol)):
            raise SurrogateError("cheap energies must be finite")
        self.seed = int(seed)
        self.gp = DeltaGP(seed=seed, **gp_options)
        self.computed: dict[int, float] = {}

    @property
    def calibration(self) -> float:  # type: ignore[override]
        return self.gp.calibration

    @property
    def loo_residual_kjmol(self) -> np.ndarray | None:  # type: ignore[override]
        return self.gp.loo_residual_kjmol

    def fit(self, computed: Mapping[int, float]) -> SoapDeltaSurrogate:
        idx, y = self._deltas(computed)
        self.gp.fit(self.X[idx], y, X_unlabelled=self.X)
        self.computed = {int(i): float(computed[i]) for i in idx}
        return self

    def refit_fixed(self, computed: Mapping[int, float]) -> SoapDeltaSurrogate:
        idx, y = self._deltas(computed)
        out = self._copy()
        out.gp = self.gp.with_training(self.X[idx], y)
        out.computed = {int(i): float(computed[i]) for i in idx}
        return out

    def condition(self, pending: Iterable[int]) -> SoapDeltaSurrogate:
        new = [int(i) for i in self.indices(pending) if int(i) not in self.computed]
        out = self._copy()
        if new:
            out.gp = self.gp.condition(self.X[new], self.gp.predict(self.X[new])[0])
        return out

    def posterior(self, idx: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        return self.gp.posterior(self.X[self.indices(idx)])

    def predict(self, idx: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        return self.gp.predict(self.X[self.indices(idx)])

    def sample(self, idx: Iterable[int], n_samples: int, seed: int | None = None) -> np.ndarray:
        return self.gp.sample(self.X[self.indices(idx)], n_samples, seed=seed)

    def embedding(self, idx: Iterable[int]) -> np.ndarray:
        """GP inputs: SOAP principal components and the cheap extras, scaled to unit range."""
        return self.gp.transform(self.X[self.indices(idx)])


class ShiftModel(StructureSurrogate):
    """The null model of a correction: one constant shift, independent errors.

    ``delta_i = m + e_i`` for every structure, ``m`` the mean correction of the computed
    structures and ``e_i`` independent Student-t errors (``n - 1`` degrees of freedom)
    whose scale is the leave-one-out RMS of the computed corrections about the mean of
    the others, so its error bar is that of predicting a new structure by the shift. It
    is what the acquisition falls back to when the fitted surrogate predicts no better
    than it (:func:`agent.refine_acquisition.surrogate_skill`): its predictions rank the
    uncomputed structures exactly as the cheap level does. Conditioning fixes the
    pending structures at the shift (zero spread there); the others are independent.

    Args:
        cheap_kjmol: cheap-level energies of the landscape ``(n,)``, kJ/mol per molecule.
        prior_std_kjmol: error scale while fewer than three corrections are known.
        seed: default seed of :meth:`sample`.
    """

    kind = "constant-shift"

    def __init__(self, cheap_kjmol: np.ndarray, prior_std_kjmol: float = 4.0, seed: int = 0) -> None:
        self.cheap_kjmol = np.asarray(cheap_kjmol, dtype=float).reshape(-1)
        if prior_std_kjmol <= 0:
            raise SurrogateError("prior_std_kjmol must be positive")
        self.prior_std_kjmol = float(prior_std_kjmol)
        self.seed = int(seed)
        self.calibration = 1.0
        self.mean_kjmol, self.dof, self.scale_kjmol = 0.0, 1, self.prior_std_kjmol
        self.loo_residual_kjmol = None
        self.fixed: frozenset[int] = frozenset()
        self.computed: dict[int, float] = {}

    def fit(self, computed: Mapping[int, float]) -> ShiftModel:
        idx, d = self._deltas(computed)
        n = len(d)
        self.computed = {int(i): float(computed[i]) for i in idx}
        self.mean_kjmol = float(d.mean()) if n else 0.0
        #: computed minus the mean of the other computed corrections, ``(n,)``
        self.loo_residual_kjmol = (d - self.mean_kjmol) * n / (n - 1) if n >= 2 else None
        self.dof = max(n - 1, 1)
        if n >= 3:
            self.scale_kjmol = max(float(np.sqrt(np.mean(self.loo_residual_kjmol**2))), 1e-3)
        else:
            self.scale_kjmol = self.prior_std_kjmol
        self.fixed = frozenset()
        return self

    def refit_fixed(self, computed: Mapping[int, float]) -> ShiftModel:
        """The shift of ``computed`` with this model's error scale and degrees of freedom."""
        idx, d = self._deltas(computed)
        out = self._copy()
        out.computed = {int(i): float(computed[i]) for i in idx}
        out.mean_kjmol = float(d.mean()) if len(d) else 0.0
        return out

    def condition(self, pending: Iterable[int]) -> ShiftModel:
        out = self._copy()
        out.fixed = self.fixed | {int(i) for i in self.indices(pending) if int(i) not in self.computed}
        return out

    @property
    def std_kjmol(self) -> float:
        """Std of the Student-t errors (finite for dof > 2; twice the scale otherwise)."""
        return self.scale_kjmol * (np.sqrt(self.dof / (self.dof - 2.0)) if self.dof > 2 else 2.0)

    def posterior(self, idx: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        rows = self.indices(idx)
        var = np.where(np.isin(rows, list(self.fixed)), 0.0, self.std_kjmol**2)
        return np.full(len(rows), self.mean_kjmol), np.diag(var)

    def sample(self, idx: Iterable[int], n_samples: int, seed: int | None = None) -> np.ndarray:
        """Independent Student-t draws of delta, ``(n_samples, m)``, kJ/mol per molecule."""
        rows = self.indices(idx)
        rng = np.random.default_rng(self.seed if seed is None else int(seed))
        draws = self.mean_kjmol + self.scale_kjmol * rng.standard_t(self.dof, (int(n_samples), len(rows)))
        draws[:, np.isin(rows, list(self.fixed))] = self.mean_kjmol
        return draws

    def embedding(self, idx: Iterable[int]) -> np.ndarray:
        """The cheap energy, the only per-structure input of the shift (``(m, 1)``)."""
        return self.cheap_kjmol[self.indices(idx)][:, None]
