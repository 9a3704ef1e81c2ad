"""REFIT_GROWTH of the fragment dimer GP (a screening option, off by default): hyperparameters
are refitted only once the computed structures have grown by a set fraction since the fit they
come from; in between the model is retrained on all computed data with them kept."""

from __future__ import annotations

import numpy as np
import pytest

from tests.agent.surrogates.test_structure_surrogate_contract import _fragment_landscape


@pytest.fixture
def growth(monkeypatch):
    import agent.surrogates.fragment_gp as fgp

    monkeypatch.setattr(fgp, "REFIT_GROWTH", 0.5)
    fgp._KEPT_FITS.clear()
    yield fgp
    fgp._KEPT_FITS.clear()


def _fit(structures, expensive, seed=0):
    """A new model instance of the same synthetic landscape per fit, as the stage makes one per decision."""
    model, _, _ = _fragment_landscape()
    model.seed = seed
    return model.fit({i: float(expensive[i]) for i in structures})


def test_hyperparameters_are_kept_until_the_data_grow(growth):
    _, _, expensive = _fragment_landscape()
    first = _fit([0, 2, 5, 7, 11, 13, 17, 20], expensive)
    grown = [0, 2, 5, 7, 11, 13, 17, 20, 3, 9]  # 10 < 1.5 x 8: the first fit's hyperparameters
    kept = _fit(grown, expensive, seed=10)
    assert kept._kernel is first._kernel and kept._noise == first._noise
    # retrained on all ten with those hyperparameters: as the first fit retrained on them
    same = first.refit_fixed({i: float(expensive[i]) for i in grown})
    np.testing.assert_allclose(kept.predict(np.arange(24))[0], same.predict(np.arange(24))[0], atol=1e-8)
    # its leave-one-out residuals are recomputed on the ten
    assert len(kept.loo_residual_kjmol) == 10
    # 12 >= 1.5 x 8: refitted; a set that does not contain the remembered one: refitted
    refit = _fit(grown + [1, 4], expensive, seed=12)
    assert refit._kernel is not first._kernel
    other = _fit([1, 4, 6, 8, 10, 12, 14, 16], expensive)
    assert other._kernel is not refit._kernel


def test_off_by_default_every_fit_is_fresh():
    import agent.surrogates.fragment_gp as fgp

    assert fgp.REFIT_GROWTH is None
    _, _, expensive = _fragment_landscape()
    a = _fit([0, 2, 5, 7, 11, 13, 17, 20], expensive)
    b = _fit([0, 2, 5, 7, 11, 13, 17, 20, 3], expensive)
    assert b._kernel is not a._kernel and not fgp._KEPT_FITS
