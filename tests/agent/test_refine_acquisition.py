"""Structure selection for the expensive level (agent/refine_acquisition.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.refine_acquisition import (
    AcquisitionError,
    completion_probability,
    low_energy_probability,
    low_energy_set,
    select_structures,
)
import agent.refine_acquisition as acq
from sim_backends.descriptors import structure_features
from sim_backends.landscape import Landscape

TARGET_I = Path(__file__).resolve().parents[2] / "data" / "reference" / "landscapes" / "target_I"


@pytest.fixture(scope="module")
def target_i():
    land = Landscape.read(TARGET_I, ["MACE", "PBE_MBD"])
    e_cheap = land.energies("MACE")
    X = structure_features(land.atoms("MACE"), land.n_molecules, e_cheap)
    return e_cheap, land.energies("PBE_MBD"), X


def _toy(n: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    soap = rng.normal(size=(n, 12))
    soap /= np.linalg.norm(soap, axis=1, keepdims=True)
    e_cheap = rng.uniform(0, 20, n)
    X = np.hstack([soap, rng.uniform(1.2, 1.4, (n, 1)), rng.uniform(120, 140, (n, 1)), e_cheap[:, None]])
    return e_cheap, X


def test_low_energy_probability_counts_top_k_and_window():
    draws = np.array([[0.0, 1.0, 2.0, 30.0], [3.0, 0.0, 1.0, 40.0]])
    p = low_energy_probability(draws, top_k=2, window_kjmol=10.0)
    np.testing.assert_allclose(p, [0.5, 1.0, 0.5, 0.0])
    p = low_energy_probability(draws, top_k=4, window_kjmol=1.5)
    np.testing.assert_allclose(p, [0.5, 1.0, 0.5, 0.0])
    p = low_energy_probability(draws, top_k=2, window_kjmol=10.0, weights=np.array([3.0, 1.0]))
    np.testing.assert_allclose(p, [0.75, 1.0, 0.25, 0.0])


def test_never_proposes_computed_or_pending_and_respects_q():
    e_cheap, X = _toy()
    computed = {int(i): float(e_cheap[i] - 1.0) for i in np.argsort(e_cheap)[:6]}
    pending = [int(i) for i in np.argsort(e_cheap)[6:9]]
    picks = select_structures(e_cheap, X, computed, pending, np.ones(30), q=5, seed=0)
    assert len(picks) == 5 == len(set(picks))
    assert not set(picks) & (set(computed) | set(pending))
    # the rest of the landscape when fewer than q remain
    everything_but_two = {i: float(e_cheap[i]) for i in range(28)}
    assert sorted(select_structures(e_cheap, X, everything_but_two, [], np.ones(30), 5, 0)) == [28, 29]
    assert select_structures(e_cheap, X, everything_but_two, [28, 29], np.ones(30), 5, 0) == []


def test_deterministic_for_a_seed():
    e_cheap, X = _toy()
    computed = {int(i): float(e_cheap[i]) for i in np.argsort(e_cheap)[:5]}
    a = select_structures(e_cheap, X, computed, [], np.ones(30), q=3, seed=4)
    b = select_structures(e_cheap, X, computed, [], np.ones(30), q=3, seed=4)
    assert a == b


def test_no_data_prefers_low_cheap_energy_and_cost_matters():
    e_cheap, X = _toy()
    order = np.argsort(e_cheap)
    first = select_structures(e_cheap, X, {}, [], np.ones(30), q=1, seed=0)
    assert first[0] in order[:3].tolist()
    costs = np.ones(30)
    costs[order[:3]] = 1e4  # the three most promising are prohibitively costly
    pick = select_structures(e_cheap, X, {}, [], costs, q=1, seed=0)
    assert pick[0] not in order[:3].tolist()
    assert pick[0] in order[:8].tolist()


def test_observed_structures_come_first():
    e_cheap, X = _toy()
    worst = int(np.argmax(e_cheap))
    picks = select_structures(e_cheap, X, {}, [], np.ones(30), q=2, seed=0, observed={worst})
    assert picks[0] == worst
    # once computed, an observed structure is not proposed again
    picks = select_structures(
        e_cheap, X, {worst: 0.0}, [], np.ones(30), q=2, seed=0, observed={worst}
    )
    assert worst not in picks


def test_space_filling_initial_design_spreads_picks():
    e_cheap, X = _toy()
    picks = select_structures(e_cheap, X, {}, [], np.ones(30), q=4, seed=0, n_initial=4)
    assert picks[0] == int(np.argmin(e_cheap))
    assert len(set(picks)) == 4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(q=0), "q must be"),
        (dict(costs=-np.ones(30)), "costs"),
        (dict(costs=np.ones(29)), "costs"),
        (dict(computed={30: 1.0}), "out of range"),
        (dict(pending=[-1]), "out of range"),
        (dict(pending=["a"]), "not an integer"),
        (dict(computed={0: float("nan")}), "finite"),
        (dict(X=np.ones((29, 15))), "shape"),
        (dict(top_k=0), "top_k"),
    ],
)
def test_bad_input_gives_one_line_errors(kwargs, message):
    e_cheap, X = _toy()
    args = dict(cheap_kjmol=e_cheap, X=X, computed={}, pending=[], costs=np.ones(30), q=2, seed=0)
    args.update(kwargs)
    with pytest.raises(AcquisitionError, match=message) as info:
        select_structures(**args)
    assert "\n" not in str(info.value)


def _replay(e_cheap, e_exp, X, q, seed, budget=None):
    top = set(np.argsort(e_exp)[:10].tolist())
    computed: dict[int, float] = {}
    order: list[int] = []
    while not top <= set(computed) and (budget is None or len(order) < budget):
        for i in select_structures(e_cheap, X, computed, [], np.ones(len(e_cheap)), q, seed):
            computed[i] = float(e_exp[i])
            order.append(i)
    return order, top


@pytest.mark.slow
def test_semisynthetic_replay_beats_cheap_order(target_i):
    """Real target_I structures and MACE energies; expensive level = MACE + a smooth
    function of the descriptors (amplitude ~7 kJ/mol), which the GP can learn; cheap
    order then needs 29 calculations, the agent about 18."""
    e_cheap, _, X = target_i
    soap = X[:, :-3]
    _, _, vt = np.linalg.svd(soap - soap.mean(0), full_matrices=False)
    z = (soap - soap.mean(0)) @ vt[:3].T
    z /= z.std(0)
    e_exp = e_cheap + 3.0 * z[:, 2] + 4.0 * np.sin(1.5 * z[:, 1])
    top = set(np.argsort(e_exp)[:10].tolist())
    cheap_order = list(np.argsort(e_cheap))
    n_cheap = max(cheap_order.index(i) for i in top) + 1
    order, _ = _replay(e_cheap, e_exp, X, q=3, seed=0)
    assert len(order) < n_cheap - 5


@pytest.mark.slow
def test_target_i_replay_finds_most_of_top_ten_early(target_i):
    """Real MACE -> PBE+MBD: 16 calculations (18% of 88) recover >= 8 of the true top 10
    (random order: 1.8 expected). The tenth (MACE rank 59) is an outlier no model
    trained on this landscape predicts; see benchmarks/refinement.py."""
    e_cheap, e_exp, X = target_i
    order, top = _replay(e_cheap, e_exp, X, q=4, seed=1, budget=16)
    assert len(order) == 16 == len(set(order))
    assert len(top & set(order)) >= 8


def test_completion_probability_tracks_what_is_left():
    e_cheap, X = _toy()
    order = np.argsort(e_cheap)
    e_cheap = e_cheap + 40.0
    e_cheap[order[:3]] = [0.0, 1.0, 2.0]  # three clear front runners
    X[:, -1] = e_cheap
    assert completion_probability(e_cheap, X, {}, top_k=3) == 0.0
    front = {int(i): float(e_cheap[i] + 0.3 * k) for k, i in enumerate(order[:3])}
    assert completion_probability(e_cheap, X, front, top_k=3) > 0.95
    two = {i: v for i, v in front.items() if i != order[2]}
    assert completion_probability(e_cheap, X, two, top_k=3) < 0.05
    everything = {i: float(e_cheap[i]) for i in range(30)}
    assert completion_probability(e_cheap, X, everything, top_k=3) == 1.0
    with pytest.raises(AcquisitionError, match="out of range"):
        completion_probability(e_cheap, X, {31: 0.0})


def test_explores_farthest_structure_once_confident():
    from agent.refine_acquisition import fit_delta_model

    e_cheap, X = _toy()
    order = np.argsort(e_cheap)
    e_cheap = e_cheap + 12.0
    e_cheap[order[:3]] = [0.0, 1.0, 2.0]
    X[:, -1] = e_cheap
    front = {int(i): float(e_cheap[i]) for i in order[:3]}
    assert completion_probability(e_cheap, X, front, top_k=3) > 0.9
    Z = fit_delta_model(e_cheap, X, front).embedding(np.arange(30))
    pool = [i for i in range(30) if i not in front and e_cheap[i] <= 20.0]
    far = max(pool, key=lambda i: np.linalg.norm(Z[list(front)] - Z[i], axis=1).min())
    # the exploration mechanics while the model steers (3 points: below the skill test's minimum)
    args = dict(pending=[], costs=np.ones(30), q=2, seed=0, top_k=3, skill_ratio=None)
    greedy = select_structures(e_cheap, X, front, explore_above=None, **args)
    mixed = select_structures(e_cheap, X, front, explore_above=0.9, explore_fraction=0.5, **args)
    assert far in mixed and far not in greedy  # one of the two picks explores
    assert len(set(mixed) & set(greedy)) == 1
    assert select_structures(e_cheap, X, front, explore_above=0.9, explore_fraction=0.0,
                             **args) == greedy
    # on by default (0.8, all picks): both picks are space-filling, the farthest first
    default = select_structures(e_cheap, X, front, **args)
    assert default[0] == far and not set(default) & set(greedy)
    with pytest.raises(AcquisitionError, match="explore_fraction"):
        select_structures(e_cheap, X, front, explore_fraction=2.0, **args)


def test_split_levels_leaves_phonons_until_the_static_set_is_settled(target_i):
    """Free-energy (phonon) runs compete with static refinement by p / cost: with
    phonons 40x a single point they go to computed front runners only once no
    uncomputed structure is worth a single point more; never to uncomputed, failed,
    pending or irrelevant structures."""
    from agent.refine_acquisition import split_levels

    e_cheap, e_exp, X = target_i
    n = len(e_cheap)
    ones = np.ones(n)
    top = [int(i) for i in np.argsort(e_exp)[:10]]
    few = {i: float(e_exp[i]) for i in np.argsort(e_cheap)[:5]}
    # early: five computed, the static landscape is still open -> all slots to refinement
    n_ref, free = split_levels(e_cheap, X, few, {}, few.keys(), [], ones, 40 * ones, 4, seed=0)
    assert (n_ref, free) == (4, [])
    # the whole landscape computed: nothing left to refine, phonons for the low set only
    everything = {i: float(e_exp[i]) for i in range(n)}
    n_ref, free = split_levels(e_cheap, X, everything, {}, range(n), [], ones, 40 * ones, 4, seed=0)
    assert n_ref == 0 and len(free) == 4 and set(free) <= set(top)
    # computed free energies, pending and failed ones are never proposed again
    blocked_free = free[:2]
    done_f = {free[2]: 100.0}
    _, free2 = split_levels(e_cheap, X, everything, done_f, range(n), blocked_free, ones, 40 * ones, 20,
                            seed=0, top_k=10)
    assert not set(free2) & (set(blocked_free) | set(done_f))
    # structures in no draw's low-energy set never get a phonon run, even with slots to spare
    assert set(free2) <= set(top) and len(free2) == 10 - 3
    # cheaper phonons win earlier: the front runners then take slots from refinement
    n_ref_cheap, free_cheap = split_levels(e_cheap, X, few, {}, few.keys(), [], ones, 0.01 * ones, 4, seed=0)
    assert n_ref_cheap < 4 and free_cheap and set(free_cheap) <= set(few)
    with pytest.raises(AcquisitionError, match="positive"):
        split_levels(e_cheap, X, few, {}, [], [], ones, -ones, 4)


def test_shift_model_loo_residuals_and_draws():
    from agent.surrogates.structure_gp import ShiftModel

    d = np.array([1.0, 3.0, -2.0, 6.0, 0.5])
    cheap = np.arange(9, dtype=float)
    m = ShiftModel(cheap, seed=3).fit({i: cheap[i] + d[i] for i in range(len(d))})
    brute = [d[i] - np.delete(d, i).mean() for i in range(len(d))]
    np.testing.assert_allclose(m.loo_residual_kjmol, brute)
    mean, std = m.predict([5, 6, 7, 8])
    np.testing.assert_allclose(mean, d.mean())
    draws = m.sample(np.arange(2, 9), 4000)
    assert draws.shape == (4000, 7)
    assert abs(np.median(draws) - d.mean()) < 0.3
    # a believed (pending) structure sits at the shift; the others are independent of it
    cond = m.condition([7])
    assert cond.predict([7])[1][0] < 1e-9 and cond.predict([8])[1][0] == pytest.approx(std[0])


def test_skill_test_passes_a_predictive_model_and_fails_a_useless_one():
    from agent.refine_acquisition import surrogate_skill

    e_cheap = np.zeros(12)
    computed = {i: float(i % 4) for i in range(8)}

    class Residuals:
        def __init__(self, r):
            self.loo_residual_kjmol = np.asarray(r, dtype=float)

    assert surrogate_skill(Residuals(0.1 * np.ones(8)), e_cheap, computed).skilled
    useless = surrogate_skill(Residuals(5.0 * np.ones(8)), e_cheap, computed)
    assert not useless.skilled and useless.ratio > 1.0
    # too few computed structures, or residuals not covering all of them: no skill
    few = {i: computed[i] for i in range(4)}
    assert not surrogate_skill(Residuals(np.zeros(4)), e_cheap, few).skilled
    assert not surrogate_skill(Residuals(np.zeros(5)), e_cheap, computed).skilled


def test_skill_test_by_loo_log_predictive_density(monkeypatch):
    """SKILL_SCORE = "lpd" (a screening option, benchmarks/results/NOTES.md 2026-12-05): the
    model is skilled when its mean LOO log predictive density is at least the constant
    shift's. Residuals of the shift's size with honest small spreads pass, over-confident
    spreads fail, and a model without LOO spreads is judged by the MAE test."""
    import agent.refine_acquisition as acq

    e_cheap = np.zeros(12)
    computed = {i: float(i % 4) for i in range(8)}  # shift LOO residuals ~1.3 kJ/mol

    class Loo:
        def __init__(self, r, sd=None):
            self.loo_residual_kjmol = np.asarray(r, dtype=float)
            self.loo_std_kjmol = None if sd is None else np.asarray(sd, dtype=float)

    monkeypatch.setattr(acq, "SKILL_SCORE", "lpd")
    honest = acq.surrogate_skill(Loo(0.5 * np.ones(8), 0.5 * np.ones(8)), e_cheap, computed)
    assert honest.skilled and honest.model_loo_lpd > honest.shift_loo_lpd
    overconfident = acq.surrogate_skill(Loo(0.5 * np.ones(8), 0.01 * np.ones(8)), e_cheap, computed)
    assert not overconfident.skilled and overconfident.ratio < 0.9  # the MAE test would pass it
    assert acq.surrogate_skill(Loo(0.1 * np.ones(8)), e_cheap, computed).skilled  # no spreads: MAE
    assert not acq.surrogate_skill(Loo(5.0 * np.ones(8)), e_cheap, computed).skilled
    assert not acq.surrogate_skill(Loo(np.zeros(8), np.ones(8)), e_cheap, computed, min_n=9).skilled
    monkeypatch.setattr(acq, "MIN_SKILL_N", 9)  # the module default is read at call time
    assert not acq.surrogate_skill(Loo(np.zeros(8), np.ones(8)), e_cheap, computed).skilled


def test_plain_warm_up_ignores_cost(monkeypatch):
    """WARMUP = "plain" (a screening option): before the skill test passes the picks are the
    cheap-level order whatever the costs; the default weighs the order by cost."""
    import agent.refine_acquisition as acq

    e_cheap, X = _toy(40, seed=2)
    order = [int(i) for i in np.argsort(e_cheap, kind="stable")]
    costs = np.ones(40)
    costs[order[:3]] = 3.0  # the three cheapest structures are expensive to compute
    args = dict(pending=[], costs=costs, q=3, seed=0, n_samples=256)
    assert acq.select_structures(e_cheap, X, {}, **args) != order[:3]
    monkeypatch.setattr(acq, "WARMUP", "plain")
    assert acq.select_structures(e_cheap, X, {}, **args) == order[:3]


def test_cost_power_tempers_the_cost_weighting(monkeypatch):
    """COST_POWER (a screening option): the picks weigh P(low energy) by cost ** COST_POWER;
    0 ignores costs (the warm-up is then the plain cheap-level order), 1 is the default;
    MODEL_COST_POWER does the same for the model's own picks only."""
    import agent.refine_acquisition as acq

    e_cheap, X = _toy(40, seed=2)
    order = [int(i) for i in np.argsort(e_cheap, kind="stable")]
    costs = np.ones(40)
    costs[order[:3]] = 3.0
    args = dict(pending=[], costs=costs, q=3, seed=0, n_samples=256)
    weighted = acq.select_structures(e_cheap, X, {}, **args)
    assert weighted != order[:3]
    monkeypatch.setattr(acq, "COST_POWER", 0.0)
    assert acq.select_structures(e_cheap, X, {}, **args) == order[:3]
    monkeypatch.setattr(acq, "COST_POWER", 1.0)
    assert acq.select_structures(e_cheap, X, {}, **args) == weighted
    # the model's picks too: with cost ** 0 an expensive structure the model rates best comes first
    model = _FixedModel(np.zeros(40), np.full(40, 0.5), np.zeros(8), np.ones(8))
    pick = dict(pending=[], costs=costs, q=1, seed=0, n_samples=256, model=model, skill_ratio=None)
    assert acq.select_structures(e_cheap, None, {}, **pick) != [order[0]]
    monkeypatch.setattr(acq, "COST_POWER", 0.0)
    assert acq.select_structures(e_cheap, None, {}, **pick) == [order[0]]
    # MODEL_COST_POWER: only the model's picks; the warm-up keeps the cost weighting
    monkeypatch.setattr(acq, "COST_POWER", 1.0)
    monkeypatch.setattr(acq, "MODEL_COST_POWER", 0.0)
    assert acq.select_structures(e_cheap, None, {}, **pick) == [order[0]]
    assert acq.select_structures(e_cheap, X, {}, **args) == weighted


def test_acquisition_inflation_favours_uncertain_structures(monkeypatch):
    """ACQ_INFLATION (a screening option): the model's picks use draws whose spread about the
    mean is scaled; a wide, slightly higher structure overtakes a narrow low one."""
    import agent.refine_acquisition as acq

    model = _FixedModel([0.0, 0.1, 1.0, 20.0], [0.1, 0.1, 1.0, 0.1], np.zeros(2), np.ones(2))
    pick = dict(pending=[], costs=np.ones(4), q=1, seed=0, n_samples=2000, model=model, skill_ratio=None,
                explore_above=None, top_k=1)
    assert acq.select_structures(np.zeros(4), None, {}, **pick) == [0]
    monkeypatch.setattr(acq, "ACQ_INFLATION", 10.0)
    assert acq.select_structures(np.zeros(4), None, {}, **pick) == [2]


def test_warm_up_skips_near_duplicates(monkeypatch):
    """WARMUP_DEDUP (a screening option): while the model fails the skill test, a structure
    nearly identical (GP input space) to one computed, pending or already chosen is passed
    over; when every candidate is that near, the picks fall back to the cheap-level order."""
    import agent.refine_acquisition as acq

    e_cheap, X = _toy(40, seed=2)
    order = [int(i) for i in np.argsort(e_cheap, kind="stable")]
    a, b = order[0], order[1]
    e_cheap[b] = e_cheap[a] + 0.01  # the second in cheap order duplicates the first
    X[b] = X[a]
    X[b, -1] = e_cheap[b]
    args = dict(costs=np.ones(40), seed=0, n_samples=256)
    monkeypatch.setattr(acq, "WARMUP", "plain")
    assert acq.select_structures(e_cheap, X, {}, pending=[], q=3, **args) == order[:3]
    monkeypatch.setattr(acq, "WARMUP_DEDUP", 0.02)
    assert acq.select_structures(e_cheap, X, {}, pending=[], q=2, **args) == [a, order[2]]
    assert acq.select_structures(e_cheap, X, {}, pending=[a], q=1, **args) == [order[2]]
    assert acq.select_structures(e_cheap, X, {a: e_cheap[a] + 1.0}, pending=[], q=1, **args) == [order[2]]
    # every candidate "near" (threshold at the largest pairwise distance): plain cheap order
    monkeypatch.setattr(acq, "WARMUP_DEDUP", 0.999999)
    assert acq.select_structures(e_cheap, X, {}, pending=[], q=3, **args) == order[:3]


class _FixedModel:
    """A surrogate with fixed independent Gaussian corrections and given LOO residuals and
    spreads (duck-typed StructureSurrogate)."""

    def __init__(self, mean, sd, loo_res, loo_sd):
        self.mean, self.sd = np.asarray(mean, float), np.asarray(sd, float)
        self.n_landscape = len(self.mean)
        self.loo_residual_kjmol, self.loo_std_kjmol = np.asarray(loo_res, float), np.asarray(loo_sd, float)

    def predict(self, idx):
        idx = np.asarray(idx, dtype=int)
        return self.mean[idx], self.sd[idx]

    def sample(self, idx, n_samples, seed=0):
        idx = np.asarray(idx, dtype=int)
        rng = np.random.default_rng(seed)
        return self.mean[idx] + self.sd[idx] * rng.standard_normal((n_samples, len(idx)))

    def condition(self, pending):
        return self

    def embedding(self, idx):
        return np.asarray(idx, dtype=float)[:, None]


def test_skill_mix_weighs_the_model_by_its_loo_predictive_density(monkeypatch):
    """SKILL_MIX (a screening option, benchmarks/results/NOTES.md 2026-12-05): while the model
    fails the skill test, the picks use w * P_model + (1 - w) * P_shift with the pseudo-BMA
    weight w = 1 / (1 + exp(-n (lpd_model - lpd_shift))). A model that is nearly as good as
    the shift on held-out structures (w ~ 0.4) and sure that cheap rank 15 is the minimum
    gets it computed first; one far worse (w ~ 0) leaves the cheap order."""
    from scipy import optimize, stats

    import agent.refine_acquisition as acq

    n = 20
    e_cheap = np.arange(n, dtype=float)
    computed = {0: 0.0, 1: 3.0, 2: 1.0}  # corrections 0, 2, -1: shift LOO MAE ~2 kJ/mol
    mean, sd = np.zeros(n), np.full(n, 0.5)
    mean[15] = -15.0  # the model: structure 15 lies at 0 kJ/mol
    shift_mae = acq.ShiftModel(e_cheap).fit(computed).loo_mae_kjmol
    _, lpd_shift = acq._loo_lpd(_FixedModel(mean, sd, np.ones(3), np.ones(3)), e_cheap, computed)
    res = np.full(3, shift_mae)  # MAE ratio 1.0: the model fails the skill test

    def model_at(gap):  # LOO spreads (> the residual) giving lpd_model = lpd_shift - gap
        f = lambda s: stats.norm.logpdf(shift_mae, scale=s) - (lpd_shift - gap)  # noqa: E731
        return _FixedModel(mean, sd, res, np.full(3, optimize.brentq(f, shift_mae, 1e3 * shift_mae)))

    args = dict(pending=[], costs=np.ones(n), q=1, seed=0, top_k=3, n_samples=256, min_skill_n=3)
    near, far = model_at(0.1), model_at(5.0)
    assert not acq.surrogate_skill(near, e_cheap, computed, min_n=3).skilled
    assert acq.select_structures(e_cheap, None, computed, model=near, **args) == [3]  # default: cheap order
    monkeypatch.setattr(acq, "SKILL_MIX", True)
    assert acq.select_structures(e_cheap, None, computed, model=near, **args) == [15]
    assert acq.select_structures(e_cheap, None, computed, model=far, **args) == [3]


def test_no_skill_falls_back_to_cheap_order():
    """A correction that is noise unrelated to every descriptor: the Delta-GP cannot beat
    a constant shift, so the picks are the cheap-level order (without the test the GP's
    guesses and the exploration picks go elsewhere)."""
    e_cheap, X = _toy(40, seed=2)
    rng = np.random.default_rng(7)
    noise = rng.normal(0.0, 4.0, 40)
    computed = {int(i): float(e_cheap[i] + noise[i]) for i in rng.choice(40, 12, replace=False)}
    rest = [i for i in np.argsort(e_cheap, kind="stable") if i not in computed]
    args = dict(pending=[], costs=np.ones(40), q=4, seed=0)
    assert select_structures(e_cheap, X, computed, **args) == [int(i) for i in rest[:4]]
    assert select_structures(e_cheap, X, computed, skill_ratio=None, **args) != [int(i) for i in rest[:4]]


def test_completion_probability_inflation_is_more_cautious():
    e_cheap, X = _toy()
    order = np.argsort(e_cheap)
    computed = {int(i): float(e_cheap[i] + 0.5 * (k % 3)) for k, i in enumerate(order[:8])}
    p1 = completion_probability(e_cheap, X, computed, top_k=3)
    p3 = completion_probability(e_cheap, X, computed, top_k=3, inflation=3.0)
    assert p3 < p1
    with pytest.raises(AcquisitionError, match="inflation"):
        completion_probability(e_cheap, X, computed, top_k=3, inflation=0.0)


def _benchmark():
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "refinement.py"
    spec = importlib.util.spec_from_file_location("refinement_benchmark", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve their module
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_stop_rule_and_leave_one_landscape_out():
    """The calibration bookkeeping and the leave-one-landscape-out choice of
    benchmarks/refinement.py on hand-made results."""
    bench = _benchmark()
    run = {"n_at": [8, 10, 11, 12], "p_complete": {1.0: [None, 0.5, 0.92, 0.99], 2.0: [None, 0.3, 0.6, 0.8]},
           "order": list(range(20))}
    assert bench.premature_stop(run, 0.9, 1.0, {3, 11}) == 11  # fired before the top set was complete
    assert bench.premature_stop(run, 0.9, 2.0, {3, 11}) is None  # never fired: the promise held
    # fired at 11 computed (structures 0-10) with the set {3, 10} complete: the promise held
    assert bench.premature_stop(run, 0.9, 1.0, {3, 10}) is None
    assert bench.premature_stop(run, 0.5, 1.0, {3, 10}) == 10  # fired at 10 computed, 10 missing
    a, b = bench.AgentSettings(), bench.AgentSettings(skill_ratio=None)

    def result(counts_a, counts_b, complete):
        calib = {f"{k:g}@0.9": {"runs": 2, "complete_at_stop": complete[k], "premature_stop_at": []}
                 for k in bench.STOP_INFLATIONS}
        return {"cheap_order": 40, "random": 50, "grid": {a.label: {"1": counts_a}, b.label: {"1": counts_b}},
                "stop_calibration": calib}

    full = {k: 2 for k in bench.STOP_INFLATIONS}
    results = {"L1": result([20, 22], [30, 30], full), "L2": result([25, 25], [35, 35], full),
               "L3": result([40, 40], [12, 12], {1.0: 0, 1.5: 2, 2.0: 2})}
    out = bench.leave_one_landscape_out(results, [a, b], [1])
    assert out["L3"]["chosen"] == a.label and out["L3"]["agent_lolo"]["1"] == 40.0
    assert out["L3"]["in_sample_best"] == b.label and out["L3"]["agent_in_sample"]["1"] == 12.0
    assert out["L1"]["chosen"] == b.label  # L3 (0.3x cheap) outweighs L2 (0.88x) in the mean log ratio
    # the 0.9 promise failed on L3 at inflation 1: held out L1, the others pool 2/4 -> 1.5
    assert out["L1"]["stop_inflation_lolo"] == 1.5 and out["L3"]["stop_inflation_lolo"] == 1.0
    assert out["L3"]["stop_achieved_lolo"] == 0.0
    assert out["L1"]["seeds"] == 2  # seeds every setting ran on the held-out landscape


def test_low_energy_set_is_the_top_k_within_the_window():
    e = np.array([0.0, 11.0, 1.0, 12.0, 2.0, 30.0])
    assert low_energy_set(e, 4, 10.0) == {0, 2, 4}  # the 4th lowest (11) lies outside the window
    assert low_energy_set(e, 4, float("inf")) == {0, 1, 2, 4}
    assert low_energy_set(e, 2, 10.0) == {0, 2}
    with pytest.raises(AcquisitionError, match="window"):
        low_energy_set(e, 4, 0.0)


def _expected_cost_to_completion(order, p, c):
    """Exact expected cost of computing ``order`` until its last member (independent p)."""
    total = 0.0
    for k in range(len(order)):
        tail = np.prod([1.0 - p[j] for j in order[k:]])  # no member from position k on
        total += c[order[k]] * (1.0 - tail)
    return total


@pytest.mark.parametrize("seed", range(6))
def test_odds_index_minimises_expected_cost_to_completion(seed, monkeypatch):
    """With independent memberships the odds-to-cost order is optimal (exchange argument),
    and the probability-to-cost order is not always."""
    from itertools import permutations

    rng = np.random.default_rng(seed)
    p, c = rng.uniform(0.05, 0.95, 6), rng.uniform(0.3, 3.0, 6)
    best = min(_expected_cost_to_completion(o, p, c) for o in permutations(range(6)))
    monkeypatch.setattr(acq, "UTILITY", "odds")
    odds_order = list(np.argsort(-acq.pick_index(p, c), kind="stable"))
    assert _expected_cost_to_completion(odds_order, p, c) == pytest.approx(best, rel=1e-12)
    monkeypatch.setattr(acq, "UTILITY", "p")
    assert np.allclose(acq.pick_index(p, c), p / c)


def test_p_over_cost_order_can_cost_more_than_odds():
    """A likely but expensive member first: p / cost defers it and pays for a non-member."""
    p, c = np.array([0.9, 0.35]), np.array([3.0, 1.0])
    assert _expected_cost_to_completion([1, 0], p, c) > _expected_cost_to_completion([0, 1], p, c)
    assert (p / c)[1] > (p / c)[0]  # p / cost puts the cheap, unlikely one first


def test_reasons_name_the_branch_of_each_pick(target_i):
    """``reasons`` says why each pick was made: cheap-level order before the skill test can
    run, the surrogate's utility once it passes, with p, index and cost."""
    e_cheap, e_exp, X = target_i
    n = len(e_cheap)
    why: dict = {}
    first = select_structures(e_cheap, X, {}, [], np.ones(n), q=2, seed=0, reasons=why)
    assert set(why) == set(first)
    assert all(w["rule"] == "cheap-level order per cost (surrogate not trusted yet)"
               and "needs >= 5 computed; 0 so far" in w["detail"] for w in why.values())
    done = {int(i): float(e_exp[i]) for i in np.argsort(e_cheap)[:12]}
    why = {}
    picks = select_structures(e_cheap, X, done, [], np.full(n, 2.0), q=2, seed=0, reasons=why, explore_above=None)
    assert set(why) == set(picks)
    for i in picks:
        w = why[i]
        assert w["rule"] in ("surrogate's P(low-energy set) per cost", "cheap-level order per cost (surrogate not trusted yet)")
        assert "leave-one-out MAE" in w["detail"] and "over 12 computed" in w["detail"]
        assert w["cost"] == 2.0 and w["rate"] == pytest.approx(w["value"] / 2.0)
    assert picks == select_structures(e_cheap, X, done, [], np.full(n, 2.0), q=2, seed=0, explore_above=None)


def test_the_acquisition_spread_narrows_only_an_underconfident_model(monkeypatch):
    """ACQ_SPREAD "loo": the model's draws in its picks are narrowed by its leave-one-out spread
    ratio when that is below 1 (held-out errors smaller than its error bars), floored, and never
    widened (its calibration factor already widens an overconfident model); "fixed": unchanged."""
    import numpy as np

    import agent.refine_acquisition as acq
    from agent.surrogates.structure_gp import ShiftModel

    class Model(ShiftModel):
        def __init__(self, z2):
            self.z2, self.calibration_prior_n = z2, 4.0

        def _loo_z_squared(self):
            return None if self.z2 is None else np.asarray(self.z2, dtype=float)

    small, large = Model([0.09] * 20), Model([4.0] * 20)
    assert small.loo_spread_ratio() == pytest.approx(np.sqrt((20 * 0.09 + 4) / 24))
    assert acq.acquisition_spread(small) == 1.0  # the default: the model's spread
    monkeypatch.setattr(acq, "ACQ_SPREAD", "loo")
    assert acq.acquisition_spread(small) == pytest.approx(np.sqrt((20 * 0.09 + 4) / 24))
    assert acq.acquisition_spread(large) == 1.0 and acq.acquisition_spread(Model(None)) == 1.0
    assert acq.acquisition_spread(Model([0.0] * 1000)) == acq.ACQ_SPREAD_FLOOR
    monkeypatch.setattr(acq, "ACQ_INFLATION", 2.0)
    assert acq.acquisition_spread(small) == pytest.approx(2 * np.sqrt((20 * 0.09 + 4) / 24))
