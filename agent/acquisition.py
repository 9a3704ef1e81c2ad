"""Cost-aware batch acquisition over a discrete pool of molecules and fidelities.

Goal: the best *top-fidelity* value (e.g. the lowest DFT reorganisation energy) for
the CPU seconds spent. Every candidate (molecule ``x``, level ``l``) is scored by
the value it is expected to add to that goal per CPU second:

* top level (direct): the expected improvement of the top-level latent value over
  the best top-level value so far, per CPU second of that evaluation::

      r_top(x) = EI_top(x) / c_top(x)

  (log space, with BoTorch's numerically robust log-EI, Ament et al., NeurIPS 2023);
* cheaper level ``l``: a one-step look-ahead value of information. A cheaper
  evaluation improves nothing by itself; its value is that it sharpens the decision
  to spend ``c_top(x)`` on the top level at ``x``. Observing ``y_l(x)`` moves the
  top-level posterior mean at ``x`` by a Gaussian amount of variance
  ``s^2 = cov(l, top)^2 / (var_l + noise_l)`` and leaves ``var_top - s^2``. With
  ``lambda = max_x r_top(x)`` the best direct rate available, running ``l`` first
  and the top level afterwards only if it then beats ``lambda`` is worth::

      r_l(x) = E_y[ max(EI_top(x | y) - lambda * c_top(x), 0) ] / c_l(x)

  and it beats running the best direct candidate now exactly when
  ``r_l(x) > lambda`` (compare the expected gains per CPU second of both plans;
  the expectation is a 24-node Gauss-Hermite quadrature). A cheaper evaluation of a
  molecule whose top level cannot follow (done, pending, failed or out of budget)
  is worth nothing. This is in the spirit of the knowledge gradient (Frazier,
  Powell & Dayanik, INFORMS J. Comput. 21, 599, 2009) and of cost-aware
  multi-fidelity BO (Kandasamy et al., ICML 2017), restricted to the look-ahead
  that a discrete pool makes exact and cheap: it keeps the expensive level in use
  whenever the cheap level has nothing more to say that could change which
  molecule deserves it.

When no top-fidelity value exists yet, the incumbent is Huang's "effective best"
(Huang et al., Struct. Multidiscip. Optim. 32, 369, 2006): the best of
``mean - std`` (minimising) over the evaluated molecules, or the prior mean without
data.

Batches. Points are chosen greedily; after each choice the posterior is conditioned
on a fantasised observation at that point (kriging believer: the fantasy equals the
posterior mean, so means stay and variances shrink). In-flight work (``pending``) is
fantasised the same way before the first choice -- the role ``X_pending`` plays in
BoTorch's acquisition functions -- so near-duplicates of pending or already chosen
molecules lose value. A level with an evaluation budget (``level_caps``) is closed for
the rest of the batch once the batch has chosen as many of it as the budget has left;
once the top level is closed, the cheaper levels are worth nothing (above) and the
batch ends.

Speed. Exact posterior variances cost ``O(n^2)`` per pool row. Each choice
therefore ranks rows by cheap, valid *upper bounds* of their scores (variance given
only the single most similar observation; fantasies only lower variances, so the
bounds hold throughout the batch; EI grows with the variance, and the look-ahead
value with the spread of the shifted mean) and computes exact scores in growing
chunks, in bound order, until the best exact score beats every remaining bound,
first for ``lambda`` (top level only) and then for all levels (lazy evaluation
with an admissible bound: the result equals the exhaustive greedy choice).

Importing this module is cheap: torch, scipy and botorch load inside functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from agent.surrogates.molecule_gp import MoleculeSurrogate, PoolPosterior

#: first chunk of rows whose scores are computed exactly (doubles each round)
FIRST_CHUNK = 256
#: largest chunk
MAX_CHUNK = 8192
#: smallest standard deviation used in EI (standardised units)
MIN_STD = 1e-6


def log_expected_improvement(improvement: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``log E[max(Y - best, 0)]`` for Gaussian ``Y``, stable far into the tails.

    Args:
        improvement: ``(n,)`` signed expected improvement ``mean - best`` (for
            maximisation; pass ``best - mean`` when minimising).
        std: ``(n,)`` posterior standard deviations (> 0).

    Returns:
        ``(n,)`` log expected improvement (``-inf`` only for ``std == 0`` and no
        improvement).
    """
    import torch
    from botorch.acquisition.analytic import _log_ei_helper

    std = np.maximum(np.asarray(std, dtype=np.float64), MIN_STD)
    u = torch.as_tensor(np.asarray(improvement, dtype=np.float64) / std)
    return _log_ei_helper(u).numpy() + np.log(std)


def _validate(fps: np.ndarray, q: int, costs: Sequence[float], allowed: np.ndarray,
              pending: list[tuple[int, int]], direction: str, n_fidelities: int) -> np.ndarray:
    fps = np.asarray(fps)
    if fps.ndim != 2:
        raise ValueError(f"fingerprints must be a 2-d array, got shape {fps.shape}")
    if int(q) != q or q < 0:
        raise ValueError(f"q must be a non-negative integer, got {q!r}")
    if len(costs) != n_fidelities or not all(np.isfinite(c) and c > 0 for c in costs):
        raise ValueError(f"costs must be {n_fidelities} positive CPU-second values, got {list(costs)}")
    allowed = np.asarray(allowed)
    if allowed.shape != (fps.shape[0], n_fidelities):
        raise ValueError(f"allowed must have shape {(fps.shape[0], n_fidelities)}, got {allowed.shape}")
    for i, f in pending:
        if not (0 <= int(i) < fps.shape[0] and 0 <= int(f) < n_fidelities):
            raise ValueError(f"pending pair {(i, f)} outside the pool or the fidelity ladder")
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"direction must be 'minimize' or 'maximize', got {direction!r}")
    return fps


def _incumbent(post: PoolPosterior, surrogate: MoleculeSurrogate, best_value: float | None,
               sign: float) -> float:
    """The incumbent in standardised units, as a value to *exceed* after ``sign``."""
    top = surrogate.n_fidelities - 1
    if best_value is not None:
        return sign * (best_value - surrogate.y_loc) / surrogate.y_scale
    rows = surrogate.train_mol
    if len(rows) == 0:
        return sign * float(surrogate.level_means()[top])
    post.make_exact(rows)
    pos = [post.exact_pos[int(r)] for r in rows]
    std = np.sqrt(np.clip(post.cov[pos, top, top], 0, None))
    return float(np.max(sign * post.mean[rows, top] - std))


#: Gauss-Hermite nodes of the look-ahead expectation
N_QUADRATURE = 24
#: added to the log of the look-ahead bound: the quadrature is accurate to ~1 % where
#: the integrand has a kink (a cheaper level that explains nearly all the variance)
QUADRATURE_SLACK = 0.05


def expected_improvement(improvement: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``E[max(Y - best, 0)]`` for Gaussian ``Y`` (broadcasting; same arguments as
    :func:`log_expected_improvement`)."""
    from scipy.special import ndtr

    std = np.maximum(std, MIN_STD)
    z = improvement / std
    return std * (z * ndtr(z) + np.exp(-0.5 * z * z) / np.sqrt(2.0 * np.pi))


def look_ahead_value(improvement: np.ndarray, var_top: np.ndarray, shift_var: np.ndarray,
                     threshold: np.ndarray) -> np.ndarray:
    """``E_xi[max(EI(improvement + s xi, sqrt(var_top - s^2)) - threshold, 0)]``, xi ~ N(0, 1).

    The expected surplus over ``threshold`` of the top-level EI after observing a
    cheaper level whose value shifts the top-level mean by ``s xi`` (``s^2 =
    shift_var``). All arguments ``(r,)`` in standardised units.
    """
    from numpy.polynomial.hermite_e import hermegauss

    nodes, weights = hermegauss(N_QUADRATURE)
    weights = weights / np.sqrt(2.0 * np.pi)
    shift = np.sqrt(np.clip(shift_var, 0, None))
    rest = np.sqrt(np.clip(var_top - shift_var, 0, None))
    ei = expected_improvement(improvement[:, None] + shift[:, None] * nodes[None, :], rest[:, None])
    return np.clip(ei - threshold[:, None], 0, None) @ weights


class _Scorer:
    """Log scores (value per CPU second) of pool rows at every level, for one choice."""

    def __init__(self, post: PoolPosterior, best: float, sign: float, log_costs: np.ndarray,
                 mask: np.ndarray) -> None:
        self.post, self.best, self.sign, self.mask = post, best, sign, mask
        self.log_costs = log_costs if log_costs.shape[0] > 1 else np.broadcast_to(
            log_costs, mask.shape)
        self.top = mask.shape[1] - 1
        self.log_rate = -np.inf  # log lambda, the best direct top-level rate

    def direct(self, rows: np.ndarray, var_top: np.ndarray) -> np.ndarray:
        improvement = self.sign * self.post.mean[rows, self.top] - self.best
        return (log_expected_improvement(improvement, np.sqrt(np.clip(var_top, 0, None)))
                - self.log_costs[rows, self.top])

    def all_levels(self, rows: np.ndarray, var: np.ndarray, shift_var: np.ndarray) -> np.ndarray:
        """``(r, n_f)`` log scores; ``shift_var`` (r, n_f) the top-mean shift variances."""
        top = self.top
        out = np.full(var.shape, -np.inf)
        out[:, top] = self.direct(rows, var[:, top])
        follow = self.mask[rows, top]
        if top == 0 or not follow.any() or not np.isfinite(self.log_rate):
            return out
        improvement = self.sign * self.post.mean[rows, top] - self.best
        threshold = np.exp(self.log_rate + self.log_costs[rows, top])
        for level in range(top):
            value = look_ahead_value(improvement, var[:, top], shift_var[:, level], threshold)
            with np.errstate(divide="ignore"):
                out[:, level] = np.where(follow, np.log(value), -np.inf) - self.log_costs[rows, level]
        return out

    def exact(self) -> np.ndarray:
        """Log scores of the rows with exact posterior covariances, ``(n_exact, n_f)``."""
        post = self.post
        var = np.clip(np.diagonal(post.cov, axis1=1, axis2=2), 1e-12, None)
        shift = post.cov[:, :, self.top] ** 2 / (var + post.noise[None, :])
        return self.all_levels(post.exact_rows, var, shift)

    def bounds(self, var_upper: np.ndarray) -> np.ndarray:
        """Upper bounds of :meth:`all_levels` for every pool row from variance bounds.

        By Jensen, ``E[max(EI(x | y) - K, 0)] <= EI_K``, the EI over ``best + K`` with
        the whole top-level variance: it bounds the look-ahead value for any shift.
        """
        rows = np.arange(self.post.n_pool)
        top = self.top
        out = np.full(var_upper.shape, -np.inf)
        out[:, top] = self.direct(rows, var_upper[:, top])
        if top == 0 or not np.isfinite(self.log_rate):
            return out
        improvement = self.sign * self.post.mean[:, top] - self.best
        threshold = np.exp(self.log_rate + self.log_costs[:, top])
        sd = np.sqrt(np.clip(var_upper[:, top], 0, None))
        log_value = log_expected_improvement(improvement - threshold, sd) + QUADRATURE_SLACK
        for level in range(top):
            out[:, level] = np.where(self.mask[:, top], log_value, -np.inf) - self.log_costs[:, level]
        return out


def _lazy_best(post: PoolPosterior, mask: np.ndarray, upper: np.ndarray,
               exact_fn, chunk: int) -> tuple[float, int, int]:
    """Best exact ``(score, row, level)`` among ``mask`` pairs, making rows exact in
    order of their bound ``upper`` (n_pool, n_f) until no bound can beat it."""
    upper = np.where(mask, upper, -np.inf)
    row_upper = upper.max(1)
    order = np.argsort(-row_upper, kind="stable")
    order = order[np.isfinite(row_upper[order])]
    cursor = 0
    while True:
        best, k = -np.inf, -1
        if len(post.exact_rows):
            exact = np.where(mask[post.exact_rows], exact_fn(), -np.inf)
            k = int(np.argmax(exact))
            best = float(exact.flat[k])
        while cursor < len(order) and int(order[cursor]) in post.exact_pos:
            cursor += 1
        if cursor >= len(order) or best >= row_upper[order[cursor]]:
            nf = mask.shape[1]
            return best, (int(post.exact_rows[k // nf]) if k >= 0 else -1), k % nf
        post.make_exact(order[cursor: cursor + chunk])
        cursor += chunk
        chunk = min(2 * chunk, MAX_CHUNK)


def select_batch(
    surrogate: MoleculeSurrogate,
    fps: np.ndarray,
    *,
    q: int,
    costs: Sequence[float],
    allowed: np.ndarray,
    pending: list[tuple[int, int]],
    best_value: float | None,
    direction: Literal["minimize", "maximize"],
    seed: int,
    pair_costs: np.ndarray | None = None,
    level_caps: Sequence[int | None] | None = None,
    cost_power: float = 1.0,
    scores: list[dict[str, float | int | str]] | None = None,
) -> list[tuple[int, int]]:
    """Choose up to ``q`` distinct (molecule, fidelity) pairs to evaluate next.

    Args:
        surrogate: a (fitted or prior) :class:`MoleculeSurrogate`.
        fps: ``(n_pool, d)`` pool fingerprints (the matrix the surrogate was fitted on).
        q: batch size.
        costs: CPU seconds per evaluation at each fidelity, length ``n_f``.
        allowed: ``(n_pool, n_f)`` bool; False pairs are never proposed.
        pending: (mol_index, fidelity) pairs in flight; fantasised, never proposed.
        best_value: best objective value so far at the top fidelity (objective
            units), or None.
        direction: "minimize" or "maximize".
        seed: breaks exact ties reproducibly.
        pair_costs: optional ``(n_pool, n_f)`` CPU seconds per (molecule, fidelity),
            e.g. a backend's size-dependent ``cost_estimate`` calibrated by measured
            wall times; replaces ``costs`` when given (a DFT calculation on a
            40-atom molecule costs far more than on a 6-atom one).
        level_caps: optional, per fidelity, how many pairs of that level the batch
            may choose at most (the level's evaluation budget left, in-flight work
            counted); None: no cap.
        cost_power: every rate divides by cost**cost_power (1: value per CPU second;
            0: value alone), e.g. the cost cooling of
            :data:`agent.stages.molecule.COST_COOLING`.
        scores: optional list to which one dict per returned pair is appended, in the
            order of the pairs: why the pair was chosen, as scored at the moment of its
            choice (after the batch's earlier picks were fantasised). ``level``: its
            fidelity; ``kind``: ``"expected improvement"`` (top level, ``EI_top``) or
            ``"look-ahead value"`` (a cheaper level, ``E_y[max(EI_top(x | y) - lambda
            c_top(x), 0)]``); ``value``: that utility in the objective's units
            (standardised value times the surrogate's ``y_scale``); ``cost``: what it was
            divided by (the pair's ``pair_costs`` entry, else its level's ``costs``),
            ``cost_power``; ``rate``: ``value / cost**cost_power``, the quantity maximised;
            ``log_rate``: its natural log in standardised units (finite also where ``rate``
            underflows); ``best_direct_rate``: ``lambda``, the best top-level rate at that
            choice (objective units per cost**cost_power; the rate a cheaper pick beat).
            Passing a list changes no decision.

    Returns:
        Up to ``q`` distinct pairs, best first. Fewer when fewer pairs are allowed.
        Molecules without any fingerprint bit (invalid SMILES) are never proposed.

    Raises:
        ValueError: on inconsistent shapes, non-positive costs or a bad direction.
    """
    nf = surrogate.n_fidelities
    fps = _validate(fps, q, costs, allowed, pending, direction, nf)
    mask = np.array(allowed, dtype=bool, copy=True)
    for i, f in pending:
        mask[int(i), int(f)] = False
    caps = list(level_caps) if level_caps is not None else [None] * nf
    if len(caps) != nf:
        raise ValueError(f"level_caps must have {nf} entries, got {len(caps)}")
    for f, cap in enumerate(caps):
        if cap is not None and cap <= 0:
            mask[:, f] = False
    if q == 0 or not mask.any():
        return []
    post = surrogate.pool_posterior(fps)
    mask &= (post.self_sim > 0)[:, None]
    for i, f in pending:
        post.add_fantasy(int(i), int(f))
    sign = 1.0 if direction == "maximize" else -1.0
    best = _incumbent(post, surrogate, best_value, sign)
    if pair_costs is None:
        log_costs = np.log(np.asarray(costs, dtype=np.float64))[None, :]
    else:
        pair_costs = np.asarray(pair_costs, dtype=np.float64)
        if pair_costs.shape != mask.shape or not np.all(pair_costs > 0):
            raise ValueError(f"pair_costs must be positive with shape {mask.shape}")
        log_costs = np.log(pair_costs)
    if not 0.0 <= cost_power <= 1.0:
        raise ValueError(f"cost_power must be in [0, 1], got {cost_power!r}")
    log_costs = cost_power * log_costs
    jitter = 1e-9 * np.random.default_rng(seed).random(post.n_pool)

    top_mask = np.zeros_like(mask)
    top_mask[:, nf - 1] = mask[:, nf - 1]
    picks: list[tuple[int, int]] = []
    while len(picks) < q:
        scorer = _Scorer(post, best, sign, log_costs, mask)
        var_upper = post.var_upper()
        top = nf - 1
        # lambda: the best direct top-level rate (exact), then every level with it
        direct_upper = np.full(mask.shape, -np.inf)
        direct_upper[:, top] = scorer.direct(np.arange(post.n_pool), var_upper[:, top]) + jitter

        def exact_direct() -> np.ndarray:
            out = np.full((len(post.exact_rows), nf), -np.inf)
            out[:, top] = scorer.direct(post.exact_rows, post.cov[:, top, top]) \
                + jitter[post.exact_rows]
            return out

        top_mask[:, top] = mask[:, top]
        rate, rate_row, _ = _lazy_best(post, top_mask, direct_upper, exact_direct, FIRST_CHUNK)
        scorer.log_rate = rate
        upper = scorer.bounds(var_upper) + jitter[:, None]
        score, row, fid = _lazy_best(
            post, mask, upper, lambda: scorer.exact() + jitter[post.exact_rows][:, None],
            FIRST_CHUNK)
        if row < 0 or not np.isfinite(score):
            break
        picks.append((row, fid))
        if scores is not None:
            scores.append(_pick_score(surrogate, score - jitter[row], fid, top,
                                      rate - jitter[rate_row] if rate_row >= 0 else rate,
                                      float(log_costs[row if log_costs.shape[0] > 1 else 0, fid]),
                                      float(costs[fid] if pair_costs is None else pair_costs[row, fid]),
                                      cost_power))
        mask[row, fid] = False
        if caps[fid] is not None and sum(f == fid for _, f in picks) >= caps[fid]:
            mask[:, fid] = False  # the level's budget is used up by this batch
        if len(picks) < q:
            post.add_fantasy(row, fid)
    return picks


def _pick_score(surrogate: MoleculeSurrogate, log_rate: float, level: int, top: int,
                log_lambda: float, log_cost_powered: float, cost: float,
                cost_power: float) -> dict[str, float | int | str]:
    """The entry :func:`select_batch` appends to ``scores`` for one pick: its log score
    ``log_rate`` (standardised units, ``log value - cost_power * log cost``, jitter
    removed), ``log_lambda`` the best direct top-level log rate then,
    ``log_cost_powered`` ``cost_power * log cost``; see ``scores`` there."""
    import math

    scale = float(surrogate.y_scale)
    log_value = log_rate + log_cost_powered
    return {"level": int(level),
            "kind": "expected improvement" if level == top else "look-ahead value",
            "value": scale * math.exp(log_value), "cost": float(cost), "cost_power": float(cost_power),
            "rate": scale * math.exp(log_rate), "log_rate": float(log_rate),
            "best_direct_rate": scale * math.exp(log_lambda) if math.isfinite(log_lambda) else 0.0}
