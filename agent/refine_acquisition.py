"""Which predicted crystal structures get the expensive level next.

Goal: identify the true low-energy set of a CSP landscape (the structures within the
``top_k`` and within ``window_kjmol`` of the global minimum at the expensive level)
with as few expensive calculations, weighted by their cost, as possible.

Utility. A :class:`~agent.surrogates.base.StructureSurrogate` of the landscape (the SOAP
Delta-GP, or the fragment dimer GP for a level with a fragment decomposition) fitted to the
computed structures gives a joint predictive distribution of every structure's expensive
energy ``E_i = E_cheap,i + delta_i`` (computed structures are fixed at their known
values). From ``n_samples`` joint Monte Carlo draws we estimate, per structure,

    p_i = P(rank_i < top_k  and  E_i - min_j E_j <= window_kjmol)

and pick the uncomputed structure with the largest ``p_i / cost_i`` (inverse
cost-weighted utility, as BoTorch's ``InverseCostWeightedUtility``). Once a
structure is computed its ``p_i`` is certain and it is never proposed again, so the
policy spends calculations where membership in the low-energy set is still in doubt.

Batches (``q > 1``) are built greedily with the kriging believer (Ginsbourger et al.,
"Kriging is well-suited to parallelize optimization", 2010): each chosen structure,
and every structure in ``pending``, is added to the model at its predicted mean delta
(:meth:`~agent.surrogates.base.StructureSurrogate.condition`) with hyperparameters kept, which removes its uncertainty and shrinks that of similar
structures before the next pick.

Initial design (optional, off by default). Until ``n_initial`` structures are
computed or pending, picks are space-filling instead: farthest-point sampling in the
GP's input space (PCA of the averaged SOAP, density, volume, cheap energy; all
scaled to unit range) among the structures within ``2 * window_kjmol`` of the cheap-level minimum, starting from the
cheap-level minimum. A Delta-GP trained only on the cheap-level front runners learns
nothing about the correction elsewhere (e.g. that the cheap level over-penalises
low-density packings) and is then overconfident about them; a small diverse design
fixes the trend and the length scales before exploitation starts (the usual
space-filling initial design of Bayesian optimisation). It costs early recall when the cheap level is already good, so it is off unless asked for
(figures: ``benchmarks/results/NOTES.md``).

Exploration when confident. The Monte Carlo utility is only as good as the model's
error bars, and a Delta-GP is confidently wrong about a structure whose correction no
descriptor explains: on target_I (MACE -> PBE+MBD) the agent has 9 of the true top
10 after 12 calculations and then believes the set complete (P >= 0.9 after ~20),
while the tenth member sits at MACE rank 59, 9 kJ/mol (~4 sigma) below what a GP
trained on all 87 other structures predicts; exploitation then computes 50 more
structures in order of predicted energy before reaching it. So once
:func:`completion_probability` reaches ``explore_above`` (with at least ``top_k``
computed), a share ``explore_fraction`` of the picks is space-filling instead: the
uncomputed structure within ``2 * window_kjmol`` of the cheap minimum farthest (GP
input space) from everything computed, pending or chosen, i.e. the place the model
has least evidence about, the usual explore/exploit switch once exploitation has
nothing left to gain. It is the default (:data:`EXPLORE_ABOVE`, :data:`EXPLORE_FRACTION`);
``explore_above=None`` switches it off. It finds a confidently mispredicted top-k member only
when that structure is also unusual in descriptor space; the figures that chose the defaults
(and on which landscape they were tuned) are in ``benchmarks/results/NOTES.md``.

Skill test (worst case: cheap-level order). A surrogate that learned nothing is worse
than none: its confident wrong error bars steer picks and the exploration above away
from the cheap ranking, which on a landscape the cheap level already ranks well costs
more than following it. So before every decision the fitted model's leave-one-out MAE
on the computed structures is compared with that of the null model, a constant shift
(:class:`~agent.surrogates.structure_gp.ShiftModel`: ``E_cheap`` + the mean computed
correction, Student-t errors scaled by its LOO RMS). Only when at least ``min_skill_n``
structures are computed and the model's LOO MAE is at most ``skill_ratio`` times the
shift's (:func:`surrogate_skill`) does the model steer (Monte Carlo utility, exploration
when confident); otherwise the picks are those of the shift model, i.e. the cheap-level
order (made exactly monotone, weighed by cost: :func:`_cheap_order_picks`), and
:func:`completion_probability` uses the shift model's error bars. This is model
selection by held-out error between the learned correction and the prior the
multi-fidelity CSP re-ranking literature starts from (cheap energy + constant;
Egorova et al., J. Phys. Chem. Lett. 11, 9376 (2020)), rather than a portfolio such as
GP-Hedge (Hoffman, Brochu & de Freitas, UAI 2011): a hedge learns its weights from the
gains of each rule's own past picks, which in a top-k search arrive only after many
calculations, whereas the LOO residuals judge the model on every computed structure
from the fifth on, using only computed energies.

Screening options of the skill test (module constants, read at call time, defaults unchanged;
``benchmarks/refinement.py --skill-score lpd / --warmup plain / --[no-]skill-mix`` sets them for a
run; figures in ``benchmarks/results/NOTES.md``, 2026-12-05): :data:`SKILL_SCORE` ``"lpd"``
judges the model by its mean leave-one-out log predictive density against the shift's (a
pseudo-Bayes factor, Geisser & Eddy, JASA 74, 153 (1979)) where the model gives LOO spreads
(``loo_std_kjmol``: the fragment dimer GP); :data:`WARMUP` ``"plain"`` makes the picks before
the test passes the cheap-level order without the cost weighting; :data:`SKILL_MIX` replaces
the hard switch by a soft one while the model fails the test: ``w P_model + (1 - w) P_shift``
with the pseudo-BMA weight ``w = 1 / (1 + exp(-n (lpd_model - lpd_shift)))`` of the two
models' summed LOO log predictive densities (Yao, Vehtari, Simpson & Gelman, Bayesian
Analysis 13, 917 (2018)), again only where the model gives LOO spreads.
:data:`WARMUP_DEDUP` (a quantile) makes the picks made while the model fails the test skip a
structure nearer, in the surrogate's input space, to one computed, pending or chosen than that
quantile of the pairwise distances (a near-duplicate teaches the model and its skill test
little); :data:`COST_POWER` tempers the cost weighting of every pick (``p_i / cost_i ** a``),
:data:`MODEL_COST_POWER` only that of the model's own picks, :data:`ACQ_INFLATION` scales the
spread of the model's draws in its own picks (the stop rule's calibrated factor is
:data:`STOP_INFLATION`), and :data:`ACQ_SPREAD` ``"loo"`` narrows those draws by the model's
leave-one-out spread ratio where it is below 1 (:func:`acquisition_spread`). :data:`UTILITY` ``"odds"``
picks by ``p_i / ((1 - p_i) cost_i)`` instead of ``p_i / cost_i`` (:func:`pick_index`). All are off
(None, 1.0, 1.0, 1.0, "fixed", "p"); none met the issue-16 targets (NOTES, task R4 and stops 50-51).

Observed-in-lab evidence. ``observed`` holds structures matched to an
experimentally observed form. Observed forms are, with few exceptions, low in energy
(polymorphs lie within ~10 kJ/mol of each other; Nyman & Day, CrystEngComm 17, 5154
(2015)). They are (1) proposed first, before any other uncomputed structure, and
(2) used as a soft constraint: each Monte Carlo draw is weighted by
``prod_o sigmoid((window_kjmol - (E_o - min E)) / 1 kJ/mol)``, so draws in which an
observed structure is far above the minimum count little. This never uses expensive
energies of uncomputed structures.

No ground truth is used: the function only sees cheap energies, descriptors,
computed expensive energies and costs. The surrogate is used through the
:class:`~agent.surrogates.base.StructureSurrogate` protocol only (structures by index).
Importing this module is cheap.

Over 500 lines on purpose: the utility, the batch rule, the skill test, the stopping
probability and the two-level split share one set of Monte Carlo draws and helpers, and
the structure stage calls them together; a split would only move private helpers across
module boundaries.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.surrogates.base import StructureSurrogate, SurrogateError
from agent.surrogates.structure_gp import ShiftModel, SoapDeltaSurrogate

#: width of the soft observed-form constraint, kJ/mol per molecule
OBSERVED_SOFTNESS_KJMOL = 1.0
#: once P(top k complete) reaches this, picks turn space-filling ("Exploration when confident")
EXPLORE_ABOVE = 0.8
#: share of the picks that are space-filling while confident
EXPLORE_FRACTION = 1.0
#: structures less likely than this to be in the low-energy set never get a phonon run
MIN_FREE_ENERGY_PROBABILITY = 1e-3
#: the surrogate steers the picks only when its leave-one-out MAE is at most this
#: fraction of the constant shift's ("Skill test"); None in the functions: no test
SKILL_RATIO = 0.9
#: computed structures before the skill test can pass (before: cheap-level order)
MIN_SKILL_N = 5
#: what the skill test compares: "mae" (LOO MAE ratio <= SKILL_RATIO) or "lpd" (the model's
#: mean LOO log predictive density at least the shift's, where the model gives LOO spreads)
SKILL_SCORE = "mae"
#: before the skill test passes: "cost" (cheap order weighed by cost) or "plain" (cheap order)
WARMUP = "cost"
#: while the model fails the skill test: False: the shift's picks (cheap order); True: the
#: model's and the shift's P(low energy) mixed by pseudo-BMA weights from their LOO log
#: predictive densities (where the model gives LOO spreads)
SKILL_MIX = False
#: while the model fails the skill test, cheap-order picks skip near-duplicates: a structure
#: nearer (GP input space, the surrogate's ``embedding``) to a computed, pending or chosen one
#: than this quantile of the pairwise distances among the structures within 2 window_kjmol of
#: the cheap minimum is passed over (plain cheap-order fallback when none is left); None: off
WARMUP_DEDUP: float | None = None
#: exponent of the cost in the picks' utility ``p_i / cost_i ** COST_POWER`` (1: inverse cost
#: weighting; 0: costs ignored; in between a tempered weighting)
COST_POWER = 1.0
#: when not 1: the exponent of the model's own picks instead (Monte Carlo utility once the
#: skill test passes); the warm-up keeps ``cost ** COST_POWER``
MODEL_COST_POWER = 1.0
#: the index the picks maximise: "p" (``p_i / cost_i``, inverse cost-weighted utility) or "odds"
#: (``p_i / ((1 - p_i) cost_i)``: the order that minimises the expected cost spent until the
#: whole low-energy set is computed when memberships are independent; :func:`pick_index`)
UTILITY = "p"
#: factor on the spread of the model's draws in its own picks (the stop rule's
#: :data:`STOP_INFLATION` is the calibrated one); 1: the model's spreads as they are
ACQ_INFLATION = 1.0
#: "fixed": the model's own spread (times ACQ_INFLATION) in its picks; "loo": narrowed by its
#: leave-one-out spread ratio where that is below 1 (:func:`acquisition_spread`)
ACQ_SPREAD = "fixed"
#: the narrowest factor ACQ_SPREAD "loo" applies
ACQ_SPREAD_FLOOR = 0.25
#: factor on the spread of the draws of :func:`completion_probability` (stopping rule):
#: chosen by leave-one-landscape-out as the smallest of 1, 1.5, 2 for which "P >= 0.9" left
#: the true top 10 complete in >= 90 % of the other landscapes' runs (benchmarks/refinement.py)
STOP_INFLATION = 1.5


@dataclass(frozen=True)
class Skill:
    """Outcome of :func:`surrogate_skill` (MAEs in kJ/mol per molecule, mean LOO log predictive
    densities in nats per structure; None when undefined)."""

    n_computed: int
    model_loo_mae_kjmol: float | None
    shift_loo_mae_kjmol: float | None
    skilled: bool
    model_loo_lpd: float | None = None
    shift_loo_lpd: float | None = None

    @property
    def ratio(self) -> float | None:
        """Model LOO MAE over constant-shift LOO MAE."""
        if self.model_loo_mae_kjmol is None or not self.shift_loo_mae_kjmol:
            return None
        return self.model_loo_mae_kjmol / self.shift_loo_mae_kjmol


def surrogate_skill(model: Any, cheap_kjmol: np.ndarray, computed: Mapping[int, float],
                    skill_ratio: float = SKILL_RATIO, min_n: int | None = None,
                    with_lpd: bool | None = None) -> Skill:
    """Whether ``model`` predicts held-out corrections better than a constant shift.

    Compares the model's leave-one-out residuals (``model.loo_residual_kjmol``, one per
    computed structure in sorted index order) with those of the constant shift
    (:class:`~agent.surrogates.structure_gp.ShiftModel`) on the same structures. Skilled
    when at least ``min_n`` structures are computed and the model's LOO MAE is at most
    ``skill_ratio`` times the shift's. A model without residuals for every computed
    structure is not skilled. With :data:`SKILL_SCORE` ``"lpd"`` the model's mean LOO log
    predictive density must instead be at least the shift's (where the model gives LOO
    spreads; else the MAE test). ``min_n`` None: :data:`MIN_SKILL_N` at call time. Both
    models' LOO log predictive densities (``n`` constant-shift fits) are computed when the
    test or :data:`SKILL_MIX` uses them, or when ``with_lpd`` is True (a benchmark's
    record), and returned where they are defined.
    """
    min_n = MIN_SKILL_N if min_n is None else min_n
    idx = np.array(sorted(computed), dtype=int)
    shift = ShiftModel(cheap_kjmol).fit(computed).loo_mae_kjmol
    res = getattr(model, "loo_residual_kjmol", None)
    model_mae = float(np.mean(np.abs(res))) if res is not None and len(res) == len(idx) and len(idx) else None
    if with_lpd is None:
        with_lpd = SKILL_SCORE == "lpd" or SKILL_MIX
    lpd_model, lpd_shift = (_loo_lpd(model, cheap_kjmol, computed) if with_lpd and len(idx) >= 2
                            else (None, None))
    if SKILL_SCORE == "lpd" and lpd_model is not None:
        better = lpd_model >= lpd_shift
    else:
        better = model_mae is not None and shift is not None and model_mae <= float(skill_ratio) * shift
    skilled = len(idx) >= max(int(min_n), 2) and better
    return Skill(len(idx), model_mae, shift, bool(skilled), lpd_model, lpd_shift)


def _loo_lpd(model: Any, cheap_kjmol: np.ndarray,
             computed: Mapping[int, float]) -> tuple[float | None, float | None]:
    """Mean leave-one-out log predictive density (per structure) of ``model`` (Gaussian,
    its ``loo_residual_kjmol`` and ``loo_std_kjmol``) and of the constant shift fitted
    without each structure (its Student-t); ``(None, None)`` when the model gives no LOO
    spreads."""
    from scipy import stats

    idx = sorted(computed)
    res = getattr(model, "loo_residual_kjmol", None)
    sd = getattr(model, "loo_std_kjmol", None)
    if res is None or sd is None or len(res) != len(idx) or len(sd) != len(idx):
        return None, None
    lpd_model = float(np.mean(stats.norm.logpdf(np.asarray(res, dtype=float), scale=np.asarray(sd, dtype=float))))
    e = np.asarray(cheap_kjmol, dtype=float).reshape(-1)
    lp = []
    for i in idx:
        sh = ShiftModel(e).fit({j: computed[j] for j in idx if j != i})
        lp.append(float(stats.t.logpdf(float(computed[i]) - e[i] - sh.mean_kjmol, sh.dof, scale=sh.scale_kjmol)))
    return lpd_model, float(np.mean(lp))


def gated_model(model: Any, cheap_kjmol: np.ndarray, computed: Mapping[int, float],
                skill_ratio: float | None = SKILL_RATIO, min_n: int | None = None,
                seed: int = 0) -> tuple[Any, Skill | None]:
    """``(model, skill)`` when the model passes :func:`surrogate_skill` (or ``skill_ratio``
    is None: no test, skill None), else ``(ShiftModel of the computed corrections, skill)``."""
    if skill_ratio is None:
        return model, None
    skill = surrogate_skill(model, cheap_kjmol, computed, skill_ratio, min_n)
    if skill.skilled:
        return model, skill
    return ShiftModel(cheap_kjmol, seed=seed).fit(computed), skill


class AcquisitionError(ValueError):
    """Bad input to structure selection; the message is one line."""


def _check_index(i: object, n: int, what: str) -> int:
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
        raise AcquisitionError(f"{what} index {i!r} is not an integer")
    if not 0 <= int(i) < n:
        raise AcquisitionError(f"{what} index {i} out of range for {n} structures")
    return int(i)


def fit_delta_model(
    cheap_kjmol: np.ndarray,
    X: np.ndarray,
    computed: Mapping[int, float],
    seed: int = 0,
    gp_options: Mapping[str, Any] | None = None,
) -> SoapDeltaSurrogate:
    """Fit the SOAP Delta-GP (:class:`~agent.surrogates.structure_gp.SoapDeltaSurrogate`)
    to the computed structures of a landscape.

    Args:
        cheap_kjmol: cheap-level energies ``(n,)``, kJ/mol per molecule.
        X: descriptors of all structures ``(n, d)`` (e.g.
            :func:`sim_backends.descriptors.structure_features` with cheap energies).
        computed: structure index -> expensive energy, kJ/mol per molecule (any
            fixed reference).
        seed: model seed.
        gp_options: keyword options of :class:`~agent.surrogates.structure_gp.DeltaGP`.

    Returns:
        The fitted model (the prior if nothing is computed yet).
    """
    return SoapDeltaSurrogate(cheap_kjmol, X, seed=seed, **dict(gp_options or {})).fit(computed)


def _surrogate(e_cheap: np.ndarray, X: np.ndarray | None, done: Mapping[int, float],
               model: StructureSurrogate | None, seed: int,
               gp_options: Mapping[str, Any] | None) -> StructureSurrogate:
    """``model`` (checked to be bound to a landscape of ``len(e_cheap)`` structures), or
    the SOAP Delta-GP fitted on the descriptors ``X`` when no model is given."""
    n = len(e_cheap)
    if model is not None:
        if model.n_landscape != n:
            raise AcquisitionError(f"the model is bound to {model.n_landscape} structures, not {n}")
        return model
    if X is None:
        raise AcquisitionError("descriptors X are needed when no fitted model is given")
    try:
        X = np.asarray(X, dtype=float)
    except (TypeError, ValueError):
        raise AcquisitionError("X must be a numeric array") from None
    if X.ndim != 2 or len(X) != n:
        raise AcquisitionError(f"X must have shape ({n}, d), got {X.shape}")
    try:
        return fit_delta_model(e_cheap, X, done, seed=seed, gp_options=gp_options)
    except SurrogateError as exc:
        raise AcquisitionError(f"surrogate: {exc}") from None


def low_energy_probability(
    energies_kjmol: np.ndarray,
    top_k: int,
    window_kjmol: float,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Per structure, the (weighted) fraction of draws in which it is low in energy.

    Args:
        energies_kjmol: draws of all energies, shape ``(s, n)``.
        top_k: a structure counts when its rank (0 = lowest) is below ``top_k`` ...
        window_kjmol: ... and it lies within this of the draw's minimum.
        weights: per-draw weights ``(s,)``; default equal.

    Returns:
        Probabilities, shape ``(n,)``.
    """
    s = energies_kjmol.shape[0]
    w = np.full(s, 1.0 / s) if weights is None else weights / weights.sum()
    return w @ _low_energy_mask(energies_kjmol, top_k, window_kjmol).astype(float)


def low_energy_set(energies_kjmol: np.ndarray, top_k: int, window_kjmol: float) -> set[int]:
    """The low-energy set of one landscape: indices of the ``top_k`` lowest energies
    (``(n,)``, ties in index order) that lie within ``window_kjmol`` of the minimum; the set
    :func:`completion_probability` and the picks are about (use it to score a run against
    known energies; ``window_kjmol=inf``: the ``top_k`` lowest)."""
    e = np.asarray(energies_kjmol, dtype=float).reshape(1, -1)
    if top_k < 1 or not window_kjmol > 0:
        raise AcquisitionError("top_k >= 1 and window_kjmol > 0 required")
    return {int(i) for i in np.flatnonzero(_low_energy_mask(e, top_k, window_kjmol)[0])}


def _low_energy_mask(energies_kjmol: np.ndarray, top_k: int, window_kjmol: float) -> np.ndarray:
    """``(s, n)`` booleans: rank below ``top_k`` and within ``window_kjmol`` of the minimum."""
    s, n = energies_kjmol.shape
    order = np.argsort(energies_kjmol, axis=1, kind="stable")
    in_top = np.zeros((s, n), dtype=bool)
    np.put_along_axis(in_top, order[:, : min(top_k, n)], True, axis=1)
    return in_top & (energies_kjmol - energies_kjmol.min(axis=1, keepdims=True) <= window_kjmol)


def _space_filling(
    Z: np.ndarray, pool: list[int], anchors: list[int], n_pick: int, e_cheap: np.ndarray
) -> list[int]:
    """Farthest-point picks from ``pool`` in the scaled input space ``Z`` ``(n, k)``.

    Starts from ``anchors`` (already computed or chosen), or from the cheap-level
    minimum of the pool when there are none.
    """
    pool = list(pool)
    picks: list[int] = []
    if n_pick <= 0 or not pool:
        return picks
    if not anchors:
        first = min(pool, key=lambda i: e_cheap[i])
        picks.append(first)
        pool.remove(first)
        anchors = [first]
    dist = np.min(np.linalg.norm(Z[pool][:, None, :] - Z[anchors][None], axis=2), axis=1)
    while pool and len(picks) < n_pick:
        j = int(np.argmax(dist))
        picks.append(pool.pop(j))
        dist = np.minimum(np.delete(dist, j), np.linalg.norm(Z[pool] - Z[picks[-1]], axis=1))
    return picks


def _joint_draws(e_cheap: np.ndarray, done: Mapping[int, float], gp: StructureSurrogate,
                 n_samples: int, seed: int, inflation: float = 1.0) -> np.ndarray:
    """``(n_samples, n)`` joint draws of all expensive energies, computed ones fixed;
    ``inflation`` scales the draws' deviations from the predictive mean."""
    every = np.arange(len(e_cheap))
    delta = gp.sample(every, n_samples, seed=seed)
    if inflation != 1.0:
        mean = gp.predict(every)[0]
        delta = mean + float(inflation) * (delta - mean)
    draws = e_cheap + delta
    if done:
        idx = np.array(sorted(done), dtype=int)
        draws[:, idx] = np.array([done[i] for i in idx])
    return draws


def completion_probability(
    cheap_kjmol: np.ndarray,
    X: np.ndarray | None,
    computed: Mapping[int, float],
    top_k: int = 10,
    window_kjmol: float = 10.0,
    n_samples: int = 512,
    seed: int = 0,
    model: StructureSurrogate | None = None,
    gp_options: Mapping[str, Any] | None = None,
    skill_ratio: float | None = SKILL_RATIO,
    min_skill_n: int | None = None,
    inflation: float = STOP_INFLATION,
) -> float:
    """Posterior probability that the whole low-energy set is already computed.

    A stopping signal for the refinement stage: the fraction of joint Monte Carlo
    draws (computed structures fixed at their expensive energies, the others
    ``E_cheap + delta`` from the Delta-GP) in which no uncomputed structure is among
    the ``top_k`` lowest within ``window_kjmol`` of the minimum. It is only as good as
    the model's error bars: a structure whose correction no descriptor explains (the
    MACE-rank-59 member of target_I's top 10) makes it confidently wrong.

    Args:
        cheap_kjmol: cheap-level energies ``(n,)``, kJ/mol per molecule.
        X: descriptors ``(n, d)`` for the SOAP Delta-GP; may be None when ``model`` is given.
        computed: index -> expensive energy (kJ/mol per molecule).
        top_k, window_kjmol: the low-energy set (see :func:`low_energy_probability`).
        n_samples: Monte Carlo draws.
        seed: seed of the model fit and the draws.
        model: a fitted :class:`~agent.surrogates.base.StructureSurrogate` of this landscape
            to use instead of fitting one.
        gp_options: keyword options of :class:`~agent.surrogates.structure_gp.DeltaGP`.
        skill_ratio, min_skill_n: the skill test (:func:`gated_model`); a model that
            fails it is replaced by the constant shift with its LOO error bars.
        inflation: factor on the spread of the draws about the mean (> 1 makes the
            rule more cautious), or a sequence of factors (the same draws, scaled).

    Returns:
        Probability in [0, 1]; a list of them for a sequence of inflations.

    Raises:
        AcquisitionError: inconsistent shapes or indices.
    """
    e_cheap = np.asarray(cheap_kjmol, dtype=float).reshape(-1)
    n = len(e_cheap)
    if top_k < 1 or window_kjmol <= 0 or n_samples < 2:
        raise AcquisitionError("top_k >= 1, window_kjmol > 0 and n_samples >= 2 required")
    done = {_check_index(i, n, "computed"): float(v) for i, v in computed.items()}
    rest = np.array([i for i in range(n) if i not in done], dtype=int)
    if len(rest) == 0:
        return 1.0
    gp = _surrogate(e_cheap, X, done, model, seed, gp_options)
    inflations = np.atleast_1d(np.asarray(inflation, dtype=float))
    if inflations.ndim != 1 or not np.all(inflations > 0):
        raise AcquisitionError(f"inflation must be positive, got {inflation}")
    gp, _ = gated_model(gp, e_cheap, done, skill_ratio, min_skill_n, seed)
    draws = _joint_draws(e_cheap, done, gp, n_samples, seed + 104729)
    mean = e_cheap + gp.predict(np.arange(n))[0] if np.any(inflations != 1.0) else None
    out = []
    for k in inflations:
        d = draws if k == 1.0 else np.where(np.isin(np.arange(n), rest), mean + k * (draws - mean), draws)
        out.append(float(np.mean(~_low_energy_mask(d, top_k, window_kjmol)[:, rest].any(axis=1))))
    return out[0] if np.ndim(inflation) == 0 else out


def select_structures(
    cheap_kjmol: np.ndarray,
    X: np.ndarray | None,
    computed: Mapping[int, float],
    pending: Sequence[int],
    costs: np.ndarray,
    q: int,
    seed: int,
    top_k: int = 10,
    window_kjmol: float = 10.0,
    observed: Collection[int] | None = None,
    n_samples: int = 512,
    gp_options: Mapping[str, Any] | None = None,
    model: StructureSurrogate | None = None,
    n_initial: int = 0,
    explore_above: float | None = EXPLORE_ABOVE,
    explore_fraction: float = EXPLORE_FRACTION,
    skill_ratio: float | None = SKILL_RATIO,
    min_skill_n: int | None = None,
    reasons: dict[int, dict[str, Any]] | None = None,
) -> list[int]:
    """Choose the next ``q`` structures for the expensive level.

    Args:
        cheap_kjmol: cheap-level energies ``(n,)``, kJ/mol per molecule.
        X: descriptors ``(n, d)`` for the SOAP Delta-GP (see :func:`fit_delta_model`); may be
            None when ``model`` is given.
        computed: index -> expensive energy (kJ/mol per molecule) of finished ones.
        pending: indices submitted but not finished (treated as computed at their
            predicted energy: kriging believer).
        costs: expected cost of the expensive calculation per structure ``(n,)``,
            any positive unit (e.g. CPU s).
        q: batch size.
        seed: seed of the model fit and of the Monte Carlo draws.
        top_k, window_kjmol: definition of the low-energy set (module docstring).
        observed: indices of structures matched to an observed form (evidence).
        n_samples: Monte Carlo draws of the joint posterior.
        gp_options: keyword options of :class:`~agent.surrogates.structure_gp.DeltaGP`.
        model: a fitted :class:`~agent.surrogates.base.StructureSurrogate` of this landscape
            to use instead of fitting one.
        n_initial: size of the space-filling initial design (0: none).
        explore_above: when the model's :func:`completion_probability` is at least
            this (and ``top_k`` structures are computed), a share of the picks is
            space-filling (farthest from everything computed, pending or chosen)
            among the structures within ``2 * window_kjmol`` of the cheap minimum;
            None: never (module docstring, "Exploration when confident").
            Costs are not weighed in these picks.
        explore_fraction: share of the picks that are space-filling while confident
            (counted over all computed and pending structures, so with ``q=1`` every
            other call explores at 0.5).
        skill_ratio, min_skill_n: the skill test (:func:`surrogate_skill`); while the
            model fails it the remaining picks (after observed structures and the
            initial design) follow the cheap-level order, without exploration.
            ``skill_ratio=None``: no test, the model always steers.
        reasons: a dict to fill with why each pick was made: index -> ``{"rule": the branch that
            chose it (a fixed text), "detail": its figures}`` plus, where a utility chose it, ``"value"`` (its
            probability of being in the low-energy set) and ``"rate"`` (the index it was picked
            by, :func:`pick_index`) and ``"cost"`` (the cost it was divided by).

    Returns:
        Up to ``q`` distinct indices, none computed or pending, best first; fewer
        when fewer remain.

    Raises:
        AcquisitionError: inconsistent shapes, indices out of range, bad costs.
    """
    e_cheap = np.asarray(cheap_kjmol, dtype=float).reshape(-1)
    n = len(e_cheap)
    every = np.arange(n)
    if not np.all(np.isfinite(e_cheap)):
        raise AcquisitionError("cheap_kjmol contains NaN or infinite values")
    cost = np.asarray(costs, dtype=float).reshape(-1)
    if cost.shape != (n,) or not np.all(np.isfinite(cost)) or np.any(cost <= 0):
        raise AcquisitionError(f"costs must be {n} positive finite numbers")
    raw_cost = cost
    if COST_POWER != 1.0:
        cost = cost ** float(COST_POWER)
    if int(q) < 1:
        raise AcquisitionError(f"q must be >= 1, got {q}")
    if top_k < 1 or window_kjmol <= 0 or n_samples < 2:
        raise AcquisitionError("top_k >= 1, window_kjmol > 0 and n_samples >= 2 required")
    if not 0.0 <= float(explore_fraction) <= 1.0:
        raise AcquisitionError(f"explore_fraction must be in [0, 1], got {explore_fraction}")
    done = {_check_index(i, n, "computed"): float(v) for i, v in computed.items()}
    if not all(np.isfinite(v) for v in done.values()):
        raise AcquisitionError("computed energies must be finite")
    busy = [_check_index(i, n, "pending") for i in pending]
    obs = sorted({_check_index(i, n, "observed") for i in (observed or ())})

    candidates = [i for i in range(n) if i not in done and i not in set(busy)]
    n_pick = min(int(q), len(candidates))
    if n_pick == 0:
        return []
    gp = _surrogate(e_cheap, X, done, model, seed, gp_options)

    chosen: list[int] = []
    believed = [i for i in busy if i not in done]
    why = {} if reasons is None else reasons
    for i in obs:
        if len(chosen) < n_pick and i in candidates:
            chosen.append(i)
            why[i] = {"rule": "observed form first", "detail": "matched to an experimentally observed form"}
    n_init = int(n_initial)
    if len(done) + len(believed) + len(chosen) < n_init:
        first = len(chosen)
        chosen += _space_filling(
            gp.embedding(every),
            [i for i in candidates if e_cheap[i] <= e_cheap.min() + 2.0 * window_kjmol
             and i not in chosen],
            sorted(set(done) | set(believed) | set(chosen)),
            min(n_pick - len(chosen), n_init - len(done) - len(believed) - len(chosen)),
            e_cheap,
        )
        why.update({i: {"rule": "space-filling initial design",
                        "detail": f"farthest from the computed ones, {n_init} in the design"} for i in chosen[first:]})
    shift, skill = gated_model(gp, e_cheap, done, skill_ratio, min_skill_n, seed)
    if (skill is not None and not skill.skilled and SKILL_MIX and skill.model_loo_lpd is not None
            and len(chosen) < n_pick):
        z = skill.n_computed * (skill.model_loo_lpd - skill.shift_loo_lpd)
        w = float(1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0))))
        p_shift = _shift_probability(e_cheap, done, believed, chosen, candidates, shift, top_k,
                                     window_kjmol, n_samples, seed)
        while len(chosen) < n_pick:
            fixed = believed + chosen
            model_now = gp.condition(fixed) if fixed else gp
            draws = e_cheap + model_now.sample(every, n_samples, seed=seed + 7919 * len(chosen))
            if done:
                kidx = np.array(sorted(done), dtype=int)
                draws[:, kidx] = np.array([done[i] for i in kidx])
            if fixed:
                draws[:, fixed] = e_cheap[fixed] + model_now.predict(fixed)[0]
            p_model = low_energy_probability(draws, top_k, window_kjmol)
            pool = [i for i in candidates if i not in chosen]
            p_mix = {i: float(w * p_model[i] + (1 - w) * p_shift.get(i, 0.0)) for i in pool}
            j = max(pool, key=lambda i: (float(pick_index(p_mix[i], cost[i])), -e_cheap[i], -i))
            chosen.append(j)
            why[j] = _priced("surrogate and cheap-level order mixed",
                             f"pseudo-BMA weight of the surrogate {w:.2f}; {_failed(skill, min_skill_n)}",
                             p_mix[j], cost[j])
        return chosen
    if skill is not None and not skill.skilled:
        p_cheap: dict[int, float] = {}
        picks = _cheap_order_picks(e_cheap, done, believed, chosen, candidates, cost,
                                   shift, n_pick - len(chosen), top_k, window_kjmol, n_samples, seed,
                                   None if WARMUP_DEDUP is None else gp.embedding(every), p_cheap)
        for i in picks:
            why[i] = _priced("cheap-level order per cost (surrogate not trusted yet)", _failed(skill, min_skill_n),
                             p_cheap[i], cost[i])
        return chosen + picks
    if (
        explore_above is not None
        and len(chosen) < n_pick
        and len(done) >= top_k
        and completion_probability(
            e_cheap, None, done, top_k, window_kjmol, n_samples, seed, model=gp, skill_ratio=None,
            inflation=1.0,
        ) >= float(explore_above)
    ):
        n_before = len(done) + len(believed) + len(chosen)
        n_explore = math.floor((n_before + n_pick - len(chosen)) * explore_fraction) - math.floor(
            n_before * explore_fraction
        )
        first = len(chosen)
        chosen += _space_filling(
            gp.embedding(every),
            [i for i in candidates if e_cheap[i] <= e_cheap.min() + 2.0 * window_kjmol
             and i not in chosen],
            sorted(set(done) | set(believed) | set(chosen)),
            min(n_explore, n_pick - len(chosen)),
            e_cheap,
        )
        why.update({i: {"rule": "exploration when confident",
                        "detail": f"P(low-energy set complete) >= {float(explore_above):g}: the structure farthest "
                                  "from every computed one"} for i in chosen[first:]})
    known_idx = np.array(sorted(done), dtype=int)
    known_e = np.array([done[i] for i in known_idx], dtype=float)
    spread = acquisition_spread(gp)
    while len(chosen) < n_pick:
        fixed = believed + chosen
        model_now = gp.condition(fixed) if fixed else gp
        delta = model_now.sample(every, n_samples, seed=seed + 7919 * len(chosen))
        if spread != 1.0:
            mean_now = model_now.predict(every)[0]
            delta = mean_now + spread * (delta - mean_now)
        draws = e_cheap + delta
        if len(known_idx):
            draws[:, known_idx] = known_e
        if fixed:
            draws[:, fixed] = e_cheap[fixed] + model_now.predict(fixed)[0]
        weights = None
        if obs:
            gap = draws[:, obs] - draws.min(axis=1, keepdims=True)
            z = (window_kjmol - gap) / OBSERVED_SOFTNESS_KJMOL
            weights = np.exp(-np.logaddexp(0.0, -z).sum(axis=1))
            if not np.isfinite(weights.sum()) or weights.sum() <= 0:
                weights = None
        p = low_energy_probability(draws, top_k, window_kjmol, weights)
        mean_e = draws.mean(axis=0)
        divisor = cost if MODEL_COST_POWER == 1.0 else raw_cost ** float(MODEL_COST_POWER)
        score = pick_index(p, divisor)
        best, best_key = -1, None
        for i in candidates:
            if i in chosen:
                continue
            key = (score[i], -mean_e[i])
            if best_key is None or key > best_key:
                best, best_key = i, key
        chosen.append(best)
        why[best] = _priced("surrogate's P(low-energy set) per cost",
                            "no skill test" if skill is None else f"surrogate trusted: {_skill_text(skill)}",
                            p[best], divisor[best])
    return chosen


def acquisition_spread(model: StructureSurrogate) -> float:
    """Factor on the spread of the model's draws in its own picks: :data:`ACQ_INFLATION`, times,
    with :data:`ACQ_SPREAD` ``"loo"``, the model's LOO spread ratio
    (:meth:`~agent.surrogates.base.StructureSurrogate.loo_spread_ratio`) where it is below 1 (the
    model's calibration factor already widens the spread where it is above), floored at
    :data:`ACQ_SPREAD_FLOOR`: the two-sided recalibration of Sundararajan & Keerthi (2001) for the
    picks, while the stop rule keeps the one-sided (never narrower) spread."""
    factor = float(ACQ_INFLATION)
    if ACQ_SPREAD == "loo":
        ratio = model.loo_spread_ratio()
        if ratio is not None and math.isfinite(ratio):
            factor *= min(1.0, max(float(ACQ_SPREAD_FLOOR), ratio))
    return factor


def _priced(rule: str, detail: str, p: float, cost: float) -> dict[str, Any]:
    """A utility pick's reason (``select_structures(reasons=)``): its rule and figures, its
    probability of the low-energy set, the index it was picked by and the cost divided by."""
    return {"rule": rule, "detail": detail, "value": float(p), "rate": float(pick_index(p, cost)), "cost": float(cost)}


def _skill_text(skill: Skill) -> str:
    """The skill test's figures as a phrase: LOO MAEs of the surrogate and the shift."""
    if skill.model_loo_mae_kjmol is None or skill.shift_loo_mae_kjmol is None:
        return f"{skill.n_computed} computed"
    return (f"leave-one-out MAE {skill.model_loo_mae_kjmol:.2f} against the shift's "
            f"{skill.shift_loo_mae_kjmol:.2f} kJ/mol over {skill.n_computed} computed")


def _failed(skill: Skill, min_skill_n: int | None) -> str:
    """Why the surrogate does not steer, as a phrase (``min_skill_n`` as :func:`surrogate_skill`'s ``min_n``)."""
    min_n = max(int(MIN_SKILL_N if min_skill_n is None else min_skill_n), 2)
    if skill.n_computed < min_n:
        return (f"the surrogate is not used until it beats a constant shift of the cheap level in leave-one-out "
                f"(needs >= {min_n} computed; {skill.n_computed} so far)")
    return f"the surrogate does not beat a constant shift of the cheap level: {_skill_text(skill)}"


def pick_index(p: Any, cost: Any) -> np.ndarray:
    """The index each candidate is picked by (:data:`UTILITY`), from its probability ``p`` of
    being in the low-energy set and its cost (numbers or arrays of one shape).

    "odds": the expected cost until every member is computed is the sum of the costs up to the
    last member; swapping two neighbours a, b of an order changes it by
    ``T (c_a (1 - p_a) p_b - c_b (1 - p_b) p_a)`` (T: the probability that no later structure is
    a member), so with independent memberships the best order sorts by ``p / ((1 - p) c)``:
    a member's own cost is paid whatever the order, only the non-members computed before the
    last member are wasted. "p": ``p / c``.
    """
    p = np.asarray(p, dtype=float)
    if UTILITY == "odds":
        return p / (np.clip(1.0 - p, 1e-9, None) * cost)
    return p / cost


def _shift_probability(e_cheap: np.ndarray, done: Mapping[int, float], believed: list[int],
                       chosen: list[int], candidates: list[int], shift: ShiftModel, top_k: int,
                       window_kjmol: float, n_samples: int, seed: int) -> dict[int, float]:
    """The shift model's P(low energy) of the uncomputed, unchosen candidates, made
    monotone in the cheap-level order (as :func:`_cheap_order_picks`)."""
    draws = _joint_draws(e_cheap, done, shift, n_samples, seed + 7919)
    if believed:
        draws[:, believed] = e_cheap[believed] + shift.mean_kjmol
    pool = sorted((i for i in candidates if i not in chosen), key=lambda i: (e_cheap[i], i))
    p = low_energy_probability(draws, top_k, window_kjmol)
    return dict(zip(pool, sorted(p[pool].tolist(), reverse=True)))


def _cheap_order_picks(e_cheap: np.ndarray, done: Mapping[int, float],
                       believed: list[int], chosen: list[int], candidates: list[int],
                       cost: np.ndarray, shift: ShiftModel, n_pick: int, top_k: int,
                       window_kjmol: float, n_samples: int, seed: int,
                       Z: np.ndarray | None = None, p_out: dict[int, float] | None = None) -> list[int]:
    """Picks of the constant-shift model: cheap-level order, weighed by cost.

    Under independent identically distributed corrections P(low energy) falls
    monotonically with the cheap energy; the Monte Carlo estimate is made monotone by
    assigning its sorted values in cheap-level order, and the picks are the largest
    ``p_i / cost_i`` (ties: lower cheap energy). With equal costs this is exactly the
    cheap-level order. With the embedding ``Z`` ``(n, k)`` and :data:`WARMUP_DEDUP` set, a
    structure that nearly duplicates a computed, pending or already chosen one is passed
    over (:func:`_skip_near_duplicates`).
    """
    draws = _joint_draws(e_cheap, done, shift, n_samples, seed + 7919)
    if believed:
        draws[:, believed] = e_cheap[believed] + shift.mean_kjmol
    pool = sorted((i for i in candidates if i not in chosen), key=lambda i: (e_cheap[i], i))
    p = low_energy_probability(draws, top_k, window_kjmol)
    p_mono = dict(zip(pool, sorted(p[pool].tolist(), reverse=True)))
    if p_out is not None:
        p_out.update(p_mono)
    ranked = pool if WARMUP == "plain" else sorted(
        pool, key=lambda i: (-float(pick_index(p_mono[i], cost[i])), e_cheap[i], i))
    if Z is not None and WARMUP_DEDUP is not None:
        near = np.flatnonzero(e_cheap <= e_cheap.min() + 2.0 * window_kjmol)
        return _skip_near_duplicates(ranked, Z, sorted(set(done) | set(believed) | set(chosen)),
                                     n_pick, near, float(WARMUP_DEDUP))
    return ranked[:n_pick]


def _skip_near_duplicates(ranked: list[int], Z: np.ndarray, anchors: list[int], n_pick: int,
                          near: np.ndarray, quantile: float) -> list[int]:
    """The first ``n_pick`` of ``ranked`` whose distance in ``Z`` to every anchor (and to the
    earlier picks) is at least the ``quantile`` of the pairwise distances among ``near``;
    filled up in ``ranked`` order when fewer qualify. A structure nearly identical to one
    already computed teaches a surrogate, and its skill test, little."""
    Z = np.asarray(Z, dtype=float)
    if len(near) >= 2:
        d = np.linalg.norm(Z[near][:, None, :] - Z[near][None], axis=2)
        thr = float(np.quantile(d[np.triu_indices(len(near), 1)], quantile))
    else:
        thr = 0.0
    kept, anchors = [], list(anchors)
    for i in ranked:
        if len(kept) == n_pick:
            break
        if anchors and float(np.min(np.linalg.norm(Z[anchors] - Z[i], axis=1))) < thr:
            continue
        kept.append(i)
        anchors.append(i)
    return kept + [i for i in ranked if i not in kept][: n_pick - len(kept)]


def split_levels(
    cheap_kjmol: np.ndarray,
    X: np.ndarray | None,
    computed: Mapping[int, float],
    free_energy: Mapping[int, float],
    blocked_refine: Collection[int],
    blocked_free: Collection[int],
    refine_cost: np.ndarray,
    free_cost: np.ndarray,
    n: int,
    top_k: int = 10,
    window_kjmol: float = 10.0,
    n_samples: int = 512,
    seed: int = 0,
    model: StructureSurrogate | None = None,
) -> tuple[int, list[int]]:
    """Which level gets the next ``n`` slots: static refinement or vibrational free energy.

    The low-energy set is defined on the free energy ``G_i = E_i + F_vib,i`` (harmonic
    vibrational free energy re-ranks polymorphs by about a third of their static
    differences at room temperature, so the static set is not the answer). Both
    levels compete for the same budget by the same inverse-cost-weighted utility as
    :func:`select_structures`, ``p_i / cost_i`` with ``p_i`` the posterior probability
    that structure ``i`` belongs to the low-energy set:

    * a refinement candidate is a structure without an expensive static energy; its
      draws come from the Delta-GP;
    * a free-energy candidate is a structure whose static energy is computed but whose
      ``F_vib`` is not; only there does ``F_vib`` decide anything (it is added to a
      computed energy), so structures are never sent for phonons on a GP guess.

    Structures whose ``F_vib`` is unknown get the mean of the computed ``F_vib`` (0
    before any), the ones computed their value, so the free-energy draws are
    ``E_draw + F_vib``. With phonons ~40x the cost of a single point the rule leaves
    them until the static landscape is settled (no refinement candidate has
    ``p_i / cost_i`` above the phonon candidates'), then computes them for the
    structures most likely in the low-energy set first.

    Args:
        cheap_kjmol: cheap-level energies ``(n_s,)``, kJ/mol per molecule.
        X: descriptors ``(n_s, d)``, or None with ``model``.
        computed: index -> expensive static energy.
        free_energy: index -> ``F_vib`` (kJ/mol per molecule) of computed structures.
        blocked_refine, blocked_free: indices not to propose at each level (pending or
            failed).
        refine_cost, free_cost: expected cost of each structure at each level ``(n_s,)``,
            same units (CPU seconds from the backends' ``cost_estimate``).
        n: slots to fill.
        top_k, window_kjmol, n_samples, seed, model: as :func:`select_structures`.

    Returns:
        ``(n_refine, free_picks)``: how many slots go to :func:`select_structures`, and
        the structures (best first) that get the free-energy level.

    Raises:
        AcquisitionError: inconsistent shapes, indices or costs.
    """
    e_cheap = np.asarray(cheap_kjmol, dtype=float).reshape(-1)
    n_s = len(e_cheap)
    rc = np.asarray(refine_cost, dtype=float).reshape(-1)
    fc = np.asarray(free_cost, dtype=float).reshape(-1)
    if len(rc) != n_s or len(fc) != n_s or not (np.all(rc > 0) and np.all(fc > 0)):
        raise AcquisitionError(f"refine_cost and free_cost must be {n_s} positive numbers")
    done = {_check_index(i, n_s, "computed"): float(v) for i, v in computed.items()}
    fvib = {_check_index(i, n_s, "free_energy"): float(v) for i, v in free_energy.items()}
    if n <= 0:
        return 0, []
    skip_refine, skip_free = set(blocked_refine), set(blocked_free)
    refine_pool = [i for i in range(n_s) if i not in done and i not in skip_refine]
    free_pool = [i for i in sorted(done) if i not in fvib and i not in skip_free]
    if not free_pool:
        return n, []
    gp = _surrogate(e_cheap, X, done, model, seed, None)
    draws = _joint_draws(e_cheap, done, gp, n_samples, seed + 15485863)
    f = np.full(n_s, float(np.mean(list(fvib.values()))) if fvib else 0.0)
    for i, v in fvib.items():
        f[i] = v
    p = low_energy_probability(draws + f, top_k, window_kjmol)
    # a phonon calculation for a structure that is in no draw's low-energy set changes nothing
    scored = sorted([(p[i] / rc[i], -draws[:, i].mean(), "refine", i) for i in refine_pool]
                    + [(p[i] / fc[i], -draws[:, i].mean(), "free", i) for i in free_pool
                       if p[i] >= MIN_FREE_ENERGY_PROBABILITY], reverse=True)
    best = scored[: int(n)]
    return sum(1 for s in best if s[2] == "refine"), [s[3] for s in best if s[2] == "free"]
