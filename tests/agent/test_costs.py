"""The one cost model (agent/stages/costs.py): the prior per input, then fitted to the
measured CPU seconds (failed tasks included) so its mean over finished tasks is the
measured mean while the backend's size dependence is kept."""

import pytest

from agent.stages.costs import CostModel
from sim_backends.base import EvalInput


def test_fixed_prior_then_measured_mean():
    """Before any structure task finished the level costs its cost_s; after, the prior
    scaled so its mean is the measured CPU (failed tasks included)."""
    model = CostModel("xtb-crystal", {}, cost_s=10.0)
    inps = [EvalInput("C=O", structure_cif=f"cif{i}", structure_id=s) for i, s in enumerate("abc")]
    assert model.expected(inps).tolist() == [10.0, 10.0, 10.0]
    model.observe(inps[0], 30.0)
    model.observe(inps[1], 10.0)  # a failed one is charged too
    assert model.expected(inps) == pytest.approx([20.0, 20.0, 20.0])
    assert model.mean_measured() == pytest.approx(20.0)


def test_backend_estimate_keeps_relative_sizes():
    """Without cost_s the backend's own estimate is the prior (DFT on a larger molecule
    costs more); fitting scales every input by the same measured/prior ratio."""
    model = CostModel("dft-reorg", {"functional": "b3lyp", "basis": "6-31g"})
    small, large = EvalInput("c1ccncn1"), EvalInput("c1ccc2cc3ccccc3cc2c1")
    before = model.expected([small, large])
    assert before[1] > 2 * before[0] > 0
    model.observe(small, 2 * before[0])
    after = model.expected([small, large])
    assert after == pytest.approx(2 * before)
