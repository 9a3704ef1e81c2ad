"""Cost-aware batch acquisition over a discrete pool of molecules and fidelities.

Score. For a molecule ``x`` and a fidelity ``l`` the value of evaluating ``(x, l)``
is the multi-fidelity augmented expected improvement of Huang, Allen, Notz & Miller
(Struct. Multidiscip. Optim. 32, 369, 2006), per CPU second::

    a(x, l) = EI_top(x) * |corr(g_l(x), g_top(x))| * (1 - s_l / sqrt(var_l(x) + s_l^2)) / cost_l

* ``EI_top`` is the analytic expected improvement of the top-fidelity latent value
  over the best top-fidelity value so far (computed in log space with BoTorch's
  numerically robust log-EI, Ament et al., NeurIPS 2023, so that candidates far
  from the optimum are still ranked rather than all underflowing to zero);
* the posterior correlation between the cheap and the expensive value at the same
  molecule says how much a cheap evaluation tells about the expensive one (1 at the
  top fidelity);
* the last factor discounts a level whose noise ``s_l^2`` is large compared to what
  is still unknown at ``x``;
* dividing by the measured cost per evaluation (CPU seconds) picks molecule and
  fidelity together: a cheap evaluation wins while it is informative, an expensive
  one once the cheap level has nothing more to say about ``x``.

When no top-fidelity value exists yet, the incumbent is Huang's "effective best":
the best of ``mean + std`` (minimising) over the evaluated molecules, or the prior
mean without data.

Batches. Points are chosen greedily; after each choice the posterior is conditioned
on a fantasised observation at that point (kriging believer: the fantasy equals the
posterior mean, so means stay and variances shrink). In-flight work (``pending``) is
fantasised the same way before the first choice -- the role ``X_pending`` plays in
BoTorch's acquisition functions -- so near-duplicates of pending or already chosen
molecules lose value.

Speed. Exact posterior variances cost ``O(n^2)`` per pool row. The loop therefore
ranks rows by a cheap, valid *upper bound* of their score (variance given only the
single most similar observation; fantasies only lower variances, so the bound holds
throughout the batch) and computes exact scores in growing chunks, in bound order,
until the best exact score beats every remaining bound (lazy evaluation with an
admissible bound: the result equals the exhaustive greedy choice).

Importing this module is cheap: torch and botorch load inside functions.
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
        return sign * float(surrogate.hyper["mean"][top])
    post.make_exact(rows)
    pos = [post.exact_pos[int(r)] for r in rows]
    std = np.sqrt(np.clip(post.cov[pos, top, top], 0, None))
    return float(np.max(sign * post.mean[rows, top] - std))


def _scores(post: PoolPosterior, rows: np.ndarray, var: np.ndarray, corr: np.ndarray,
            best: float, sign: float, log_costs: np.ndarray) -> np.ndarray:
    """Log augmented EI per CPU second, ``(len(rows), n_f)``.

    ``var`` (r, n_f) are posterior variances (or upper bounds), ``corr`` (r, n_f)
    absolute correlations with the top fidelity (or 1 for bounds); ``log_costs`` is
    (1, n_f) or (n_pool, n_f).
    """
    top = var.shape[1] - 1
    log_ei = log_expected_improvement(sign * post.mean[rows, top] - best,
                                      np.sqrt(np.clip(var[:, top], 0, None)))
    noise = post.noise[None, :]
    discount = 1.0 - np.sqrt(noise / (np.clip(var, 0, None) + noise))
    with np.errstate(divide="ignore"):
        return (log_ei[:, None] + np.log(np.clip(corr, 0, 1)) + np.log(discount)
                - (log_costs if log_costs.shape[0] == 1 else log_costs[rows]))


def _exact_scores(post: PoolPosterior, best: float, sign: float,
                  log_costs: np.ndarray) -> np.ndarray:
    rows = post.exact_rows
    nf = post.cov.shape[1]
    var = np.clip(np.diagonal(post.cov, axis1=1, axis2=2), 1e-12, None)
    corr = np.abs(post.cov[:, :, nf - 1]) / np.sqrt(var * var[:, nf - 1: nf])
    return _scores(post, rows, var, corr, best, sign, log_costs)


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
    jitter = 1e-9 * np.random.default_rng(seed).random(post.n_pool)

    all_rows = np.arange(post.n_pool)
    upper = _scores(post, all_rows, post.var_upper(), np.ones((post.n_pool, nf)), best, sign,
                    log_costs)
    upper = np.where(mask, upper + jitter[:, None], -np.inf)
    row_upper = upper.max(1)
    order = np.argsort(-row_upper, kind="stable")
    order = order[np.isfinite(row_upper[order])]
    cursor, chunk = 0, FIRST_CHUNK
    picks: list[tuple[int, int]] = []
    while len(picks) < q:
        while True:
            if len(post.exact_rows):
                exact = np.where(mask[post.exact_rows],
                                 _exact_scores(post, best, sign, log_costs)
                                 + jitter[post.exact_rows][:, None], -np.inf)
                k = int(np.argmax(exact))
                best_exact = float(exact.flat[k])
            else:
                exact, best_exact = None, -np.inf
            while cursor < len(order) and int(order[cursor]) in post.exact_pos:
                cursor += 1
            if cursor >= len(order) or best_exact >= row_upper[order[cursor]]:
                break
            post.make_exact(order[cursor: cursor + chunk])
            cursor += chunk
            chunk = min(2 * chunk, MAX_CHUNK)
        if exact is None or not np.isfinite(best_exact):
            break
        row = int(post.exact_rows[k // nf])
        fid = k % nf
        picks.append((row, fid))
        mask[row, fid] = False
        if len(picks) < q:
            post.add_fantasy(row, fid)
    return picks
