"""The fragment dimer GP's hyperparameter fit options (issue 16): several optimiser starts
(``n_fit_starts``, ``fit_select``) and the RBF lengthscale prior (``lengthscale_prior``), on the
small synthetic landscape of the structure-surrogate contract test (fast)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.surrogates.base import SurrogateError
from tests.agent.surrogates.test_structure_surrogate_contract import COMPUTED, N, _fragment_landscape

X = np.arange(N)


def _fit(seed=0, **options):
    """A fresh model of the synthetic landscape with the fit options set, fitted on COMPUTED."""
    model, _, expensive = _fragment_landscape()
    model.seed = seed
    for key, value in options.items():
        setattr(model, key, value)
    return model.fit({i: float(expensive[i]) for i in COMPUTED})


def test_more_starts_keep_the_highest_map_start_and_repeat_for_a_seed():
    one = _fit()
    assert one.n_fit_starts == 1 and one.fit_start_kept == 0 and one.fit_objectives == []
    four = _fit(n_fit_starts=4)
    assert len(four.fit_objectives) == 4
    # "mll": the kept start is the one with the highest MAP objective; start 0 is the single-start fit
    assert four.fit_start_kept == int(np.argmax(four.fit_objectives))
    same = np.array_equal(four.predict(X)[0], one.predict(X)[0])
    assert same == (four.fit_start_kept == 0)
    again = _fit(n_fit_starts=4)
    assert again.fit_objectives == four.fit_objectives
    assert np.array_equal(again.predict(X)[0], four.predict(X)[0])
    assert np.array_equal(again.predict(X)[1], four.predict(X)[1])
    # another seed draws other starts
    assert _fit(seed=1, n_fit_starts=4).fit_objectives[1:] != four.fit_objectives[1:]


def test_loo_selection_keeps_the_start_with_the_lowest_leave_one_out_mae():
    assert _fit(n_fit_starts=4, fit_select="loo").loo_mae_kjmol <= _fit().loo_mae_kjmol + 1e-12


def test_lengthscale_prior_spellings():
    import argparse

    from agent.surrogates.fragment_gp import FragmentDeltaModel, parse_lengthscale_prior

    assert parse_lengthscale_prior("-1,0.5") == (-1.0, 0.5)
    assert parse_lengthscale_prior("botorch") is None and parse_lengthscale_prior("AUTO") == "auto"
    for bad in ("1", "1,2,3", "nan,1", "0,-1", "bogus"):
        with pytest.raises(argparse.ArgumentTypeError, match="SHIFT,SPREAD"):
            parse_lengthscale_prior(bad)
    for bad in ((1.0,), (0.0, 1.0, 2.0), "botorch", (0.0, "x")):
        with pytest.raises(SurrogateError, match="lengthscale_prior"):
            FragmentDeltaModel([], np.zeros(0), lengthscale_prior=bad)


def test_lengthscale_prior_options():
    from agent.surrogates.fragment_gp import FragmentDeltaModel

    botorch = _fit(lengthscale_prior=None)
    # BoTorch's prior written out (shift 0, spread sqrt(3)) is the same prior
    explicit = _fit(lengthscale_prior=(0.0, math.sqrt(3.0)))
    assert np.allclose(explicit.predict(X)[0], botorch.predict(X)[0], atol=1e-6)
    tight = _fit(lengthscale_prior=(0.0, 1.0))
    assert tight.active and not np.allclose(tight.predict(X)[0], botorch.predict(X)[0], atol=1e-6)
    for bad in ((0.0, 0.0), (math.nan, 1.0)):
        with pytest.raises(SurrogateError, match="lengthscale_prior"):
            FragmentDeltaModel([], np.zeros(0), lengthscale_prior=bad)
    with pytest.raises(SurrogateError, match="n_fit_starts"):
        FragmentDeltaModel([], np.zeros(0), n_fit_starts=0)
    with pytest.raises(SurrogateError, match="fit_select"):
        FragmentDeltaModel([], np.zeros(0), fit_select="median")


def test_auto_lengthscale_prior_keeps_the_candidate_with_the_lower_leave_one_out_mae():
    from agent.surrogates.fragment_gp import AUTO_LENGTHSCALE_PRIORS

    fits = [_fit(lengthscale_prior=p) for p in AUTO_LENGTHSCALE_PRIORS]
    auto = _fit(lengthscale_prior="auto")
    assert auto.prior_choice in AUTO_LENGTHSCALE_PRIORS
    assert auto.loo_mae_kjmol == pytest.approx(min(f.loo_mae_kjmol for f in fits), abs=1e-9)
    kept = fits[AUTO_LENGTHSCALE_PRIORS.index(auto.prior_choice)]
    assert np.allclose(auto.predict(X)[0], kept.predict(X)[0], atol=1e-9)
