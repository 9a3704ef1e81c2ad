"""Tests of the cost-aware batch acquisition over a discrete pool."""

from __future__ import annotations

import numpy as np
import pytest

import agent.acquisition as acquisition
from agent.acquisition import log_expected_improvement, select_batch
from agent.surrogates.fingerprints import morgan_fingerprints, tanimoto_matrix
from agent.surrogates.molecule_gp import MoleculeSurrogate, Observation

CORES = ["c1cc({a})c({b})cc1", "c1ccc2cc({a})c({b})cc2c1", "c1c({a})sc({b})c1", "n1cc({a})c({b})cc1",
         "c1ccc2cc3cc({a})c({b})cc3cc2c1"]
SUBS = ["", "C", "CC", "OC", "F", "Cl", "C#N", "N", "C(=O)C", "C(F)(F)F", "O", "S"]


@pytest.fixture(scope="module")
def pool():
    from rdkit import Chem

    smiles: list[str] = []
    for core in CORES:
        for a in SUBS:
            for b in SUBS:
                s = Chem.MolToSmiles(Chem.MolFromSmiles(core.format(a=a, b=b).replace("()", "")))
                if s not in smiles:
                    smiles.append(s)
    fps = morgan_fingerprints(smiles, n_bits=1024)
    rng = np.random.default_rng(7)
    w = rng.normal(size=fps.shape[1]) * (rng.random(fps.shape[1]) < 0.5)
    latent = fps @ w
    latent = (latent - latent.mean()) / latent.std()
    return fps, 10.0 + 4.0 * latent  # an "expensive" objective in kJ/mol-like units


def fitted(fps: np.ndarray, cheap: np.ndarray, top: np.ndarray, n_cheap: int, n_top: int,
           seed: int = 0) -> tuple[MoleculeSurrogate, list[Observation]]:
    rows = np.random.default_rng(seed).permutation(len(fps))
    obs = [Observation(int(i), 0, float(cheap[i])) for i in rows[:n_cheap]]
    obs += [Observation(int(i), 1, float(top[i])) for i in rows[:n_top]]
    model = MoleculeSurrogate(2, seed=seed)
    model.fit(fps, obs)
    return model, obs


def allowed_for(n: int, obs: list[Observation]) -> np.ndarray:
    allowed = np.ones((n, 2), dtype=bool)
    for o in obs:
        allowed[o.mol_index, o.fidelity] = False
    return allowed


def best_top(obs: list[Observation]) -> float | None:
    vals = [o.value for o in obs if o.fidelity == 1]
    return min(vals) if vals else None


def test_log_ei_matches_closed_form():
    from scipy.stats import norm

    imp = np.array([-3.0, -0.5, 0.0, 0.7, 2.0])
    std = np.array([1.0, 0.5, 2.0, 0.3, 1.5])
    z = imp / std
    expected = np.log(std * (z * norm.cdf(z) + norm.pdf(z)))
    np.testing.assert_allclose(log_expected_improvement(imp, std), expected, rtol=1e-10)
    assert np.isfinite(log_expected_improvement(np.array([-80.0]), np.array([1.0]))).all()


def test_never_disallowed_or_duplicate_and_respects_q(pool):
    fps, top = pool
    model, obs = fitted(fps, top + 3.0, top, 60, 15)
    rng = np.random.default_rng(0)
    for trial in range(3):
        allowed = allowed_for(len(fps), obs) & (rng.random((len(fps), 2)) < 0.5)
        pending = [(int(i), int(f)) for i, f in zip(rng.integers(0, len(fps), 4), rng.integers(0, 2, 4))]
        picks = select_batch(model, fps, q=7, costs=[1.0, 20.0], allowed=allowed, pending=pending,
                             best_value=best_top(obs), direction="minimize", seed=trial)
        assert len(picks) == 7 and len(set(picks)) == 7
        assert all(allowed[i, f] for i, f in picks)
        assert not set(picks) & set(pending)
    few = np.zeros((len(fps), 2), dtype=bool)
    few[[3, 5], 1] = True
    picks = select_batch(model, fps, q=5, costs=[1.0, 20.0], allowed=few, pending=[],
                         best_value=best_top(obs), direction="minimize", seed=0)
    assert sorted(picks) == [(3, 1), (5, 1)]
    assert select_batch(model, fps, q=0, costs=[1.0, 20.0], allowed=few, pending=[],
                        best_value=None, direction="minimize", seed=0) == []


def test_lazy_selection_equals_exhaustive(pool, monkeypatch):
    fps, top = pool
    model, obs = fitted(fps, 0.8 * top + 5.0, top, 120, 25, seed=2)
    kwargs = dict(q=6, costs=[1.0, 30.0], allowed=allowed_for(len(fps), obs),
                  pending=[(int(obs[0].mol_index), 1)], best_value=best_top(obs),
                  direction="minimize", seed=5)
    monkeypatch.setattr(acquisition, "FIRST_CHUNK", 8)
    lazy = select_batch(model, fps, **kwargs)
    monkeypatch.setattr(acquisition, "FIRST_CHUNK", len(fps))
    exhaustive = select_batch(model, fps, **kwargs)
    assert lazy == exhaustive
    # the variance bounds that make lazy evaluation exact are valid
    post = model.pool_posterior(fps)
    upper = post.var_upper()
    post.make_exact(np.arange(len(fps)))
    exact = np.diagonal(post.cov, axis1=1, axis2=2)[np.argsort(post.exact_rows)]
    assert np.all(upper >= exact - 1e-9)


def test_prefers_cheap_when_it_is_informative_and_top_when_it_is_not(pool):
    fps, top = pool
    n = len(fps)
    costs = [1.0, 50.0]
    # the cheap level tracks the expensive one: evaluate cheaply first
    model, obs = fitted(fps, 0.9 * top - 4.0, top, 20, 20, seed=1)
    picks = select_batch(model, fps, q=4, costs=costs, allowed=allowed_for(n, obs), pending=[],
                         best_value=best_top(obs), direction="minimize", seed=0)
    assert all(f == 0 for _, f in picks)
    # the cheap level is noise unrelated to the objective: go straight to the top level
    noise = np.random.default_rng(9).normal(size=n) * 4.0
    model, obs = fitted(fps, noise, top, 150, 40, seed=1)
    b, noise = model.coregionalisation(), model.noise()
    assert b[0, 0] < 0.2 * noise[0]  # the cheap level's signal is lost in its noise
    # (the rho prior keeps a prior-driven correlation of ~0.3, which at a 1:50 cost ratio
    # still makes a cheap look at the favourite worth its CPU second; at 1:5 it is not)
    picks = select_batch(model, fps, q=4, costs=[1.0, 5.0], allowed=allowed_for(n, obs), pending=[],
                         best_value=best_top(obs), direction="minimize", seed=0)
    assert all(f == 1 for _, f in picks)


def test_a_batch_never_takes_more_of_a_level_than_its_cap(pool):
    """``level_caps``: a level's budget left bounds the batch's picks of it; once the top
    level's is used, cheaper levels (whose value is the top level's to follow) are worth
    nothing and the batch ends short of ``q``."""
    fps, top = pool
    n = len(fps)
    noise = np.random.default_rng(9).normal(size=n) * 4.0
    model, obs = fitted(fps, noise, top, 150, 40, seed=1)  # uncapped: four top-level picks
    kwargs = dict(q=4, costs=[1.0, 5.0], allowed=allowed_for(n, obs), pending=[],
                  best_value=best_top(obs), direction="minimize", seed=0)
    uncapped = select_batch(model, fps, **kwargs)
    assert [f for _, f in uncapped] == [1, 1, 1, 1]
    assert select_batch(model, fps, level_caps=[None, 1], **kwargs) == uncapped[:1]
    assert select_batch(model, fps, level_caps=[None, 0], **kwargs) == []
    model, obs = fitted(fps, 0.9 * top - 4.0, top, 20, 20, seed=1)  # uncapped: four cheap picks
    kwargs["allowed"], kwargs["best_value"] = allowed_for(n, obs), best_top(obs)
    assert [f for _, f in select_batch(model, fps, **kwargs)] == [0, 0, 0, 0]
    capped = select_batch(model, fps, level_caps=[2, None], **kwargs)
    assert len(capped) == 4 and sum(f == 0 for _, f in capped) == 2
    with pytest.raises(ValueError, match="level_caps"):
        select_batch(model, fps, level_caps=[1], **kwargs)


def test_pending_points_change_the_choice(pool):
    fps, top = pool
    model, obs = fitted(fps, top + 1.0, top, 80, 30, seed=3)
    allowed = allowed_for(len(fps), obs)
    kw = dict(costs=[1.0, 30.0], best_value=best_top(obs), direction="minimize", seed=0)
    first = select_batch(model, fps, q=1, allowed=allowed, pending=[], **kw)[0]
    # the pending evaluation of the favourite removes it and its near-duplicates' value
    second = select_batch(model, fps, q=1, allowed=allowed, pending=[first], **kw)[0]
    assert second != first
    sim_to_first = tanimoto_matrix(fps[[first[0]]], fps)[0]
    twin = int(np.argsort(-sim_to_first)[1])
    allowed_twin = allowed.copy()
    allowed_twin[first] = False  # as if that evaluation had been taken elsewhere
    without = select_batch(model, fps, q=3, allowed=allowed_twin, pending=[], **kw)
    with_twin = select_batch(model, fps, q=3, allowed=allowed_twin, pending=[(twin, first[1])], **kw)
    assert without != with_twin
    # a greedy batch is the same as asking one at a time with earlier picks pending
    batch = select_batch(model, fps, q=3, allowed=allowed, pending=[], **kw)
    assert batch[:2] == [first, second]


def test_works_with_prior_only_and_spreads_the_batch(pool):
    fps, _ = pool
    model = MoleculeSurrogate(2, seed=0)
    picks = select_batch(model, fps, q=5, costs=[1.0, 10.0], allowed=np.ones((len(fps), 2), bool),
                         pending=[], best_value=None, direction="maximize", seed=1)
    assert len(picks) == 5 and all(f == 0 for _, f in picks)
    rows = [i for i, _ in picks]
    sim = tanimoto_matrix(fps[rows], fps[rows])
    assert sim[np.triu_indices(5, 1)].max() < 0.9


def test_direction_matters(pool):
    fps, top = pool
    model, obs = fitted(fps, top, top, 0, 60, seed=4)
    allowed = allowed_for(len(fps), obs)
    allowed[:, 0] = False
    kw = dict(q=3, costs=[1.0, 1.0], allowed=allowed, pending=[], seed=0)
    lo = select_batch(model, fps, best_value=min(o.value for o in obs), direction="minimize", **kw)
    hi = select_batch(model, fps, best_value=max(o.value for o in obs), direction="maximize", **kw)
    assert np.mean(top[[i for i, _ in lo]]) < np.mean(top) < np.mean(top[[i for i, _ in hi]])


def test_bad_input_gives_one_line_errors(pool):
    fps, top = pool
    model = MoleculeSurrogate(2)
    good = dict(q=2, costs=[1.0, 10.0], allowed=np.ones((len(fps), 2), bool), pending=[],
                best_value=None, direction="minimize", seed=0)
    for change in [dict(costs=[1.0]), dict(costs=[1.0, -1.0]), dict(allowed=np.ones((3, 2), bool)),
                   dict(pending=[(len(fps), 0)]), dict(direction="up"), dict(q=-1)]:
        with pytest.raises(ValueError) as err:
            select_batch(model, fps, **{**good, **change})
        assert "\n" not in str(err.value)


def test_pair_costs_steer_the_choice(pool):
    fps, top = pool
    model, obs = fitted(fps, top + 1.0, top, 40, 10, seed=6)
    allowed = allowed_for(len(fps), obs)
    kw = dict(q=1, costs=[1.0, 30.0], allowed=allowed, pending=[], best_value=best_top(obs),
              direction="minimize", seed=0)
    default = select_batch(model, fps, **kw)[0]
    target = next(i for i in range(len(fps)) if allowed[i, 1] and i != default[0])
    pair_costs = np.tile([1.0, 30.0], (len(fps), 1))
    pair_costs[target, 1] = 1e-6  # an almost free expensive evaluation of one molecule
    assert select_batch(model, fps, pair_costs=pair_costs, **kw)[0] == (target, 1)
    with pytest.raises(ValueError, match="pair_costs"):
        select_batch(model, fps, pair_costs=np.ones((3, 2)), **kw)


def test_cost_power_zero_ignores_cost_and_one_divides_by_it(pool):
    """cost_power 1: an almost free expensive evaluation wins; cost_power 0: the pick is the
    highest expected improvement, whatever it costs (cost cooling's end point)."""
    fps, top = pool
    model, obs = fitted(fps, top + 1.0, top, 40, 10, seed=6)
    allowed = allowed_for(len(fps), obs)
    allowed[:, 0] = False  # the top level alone: the rate is EI / cost**power
    kw = dict(q=1, costs=[1.0, 30.0], allowed=allowed, pending=[], best_value=best_top(obs),
              direction="minimize", seed=0)
    by_value = select_batch(model, fps, **kw)[0]  # equal costs: the highest EI
    target = next(i for i in range(len(fps)) if allowed[i, 1] and i != by_value[0])
    pair_costs = np.tile([1.0, 30.0], (len(fps), 1))
    pair_costs[target, 1] = 1e-3
    assert select_batch(model, fps, pair_costs=pair_costs, **kw)[0] == (target, 1)
    assert select_batch(model, fps, pair_costs=pair_costs, cost_power=0.0, **kw)[0] == by_value
    with pytest.raises(ValueError, match="cost_power"):
        select_batch(model, fps, cost_power=1.5, **kw)


def test_look_ahead_value_is_consistent_with_expected_improvement():
    from agent.acquisition import expected_improvement, look_ahead_value

    rng = np.random.default_rng(0)
    imp = rng.normal(size=50)
    var = rng.uniform(0.1, 2.0, size=50)
    shift = var * rng.uniform(0.0, 1.0, size=50)
    # with no threshold, observing first changes nothing on average (tower property;
    # to the accuracy of the quadrature)
    np.testing.assert_allclose(look_ahead_value(imp, var, shift, np.zeros(50)),
                               expected_improvement(imp, np.sqrt(var)), rtol=2e-2, atol=1e-9)
    # a threshold lowers it; it never exceeds the bound EI(imp - K, sd) the lazy search uses
    k = rng.uniform(0.0, 0.5, size=50)
    value = look_ahead_value(imp, var, shift, k)
    assert np.all(value <= expected_improvement(imp, np.sqrt(var)) * 1.02)
    slack = np.exp(acquisition.QUADRATURE_SLACK)
    assert np.all(value <= expected_improvement(imp - k, np.sqrt(var)) * slack)
    # an uninformative cheaper level (no shift) is worth max(EI - K, 0)
    np.testing.assert_allclose(look_ahead_value(imp, var, np.zeros(50), k),
                               np.clip(expected_improvement(imp, np.sqrt(var)) - k, 0, None),
                               atol=1e-12)
