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


def test_pricing_a_pool_at_every_level_parses_each_smiles_once(monkeypatch):
    """The CostModels of a two-level ladder price every (molecule, level) pair; RDKit
    parses each SMILES once for both (20,000 molecules: 40,000 parses before), and the
    size-based priors are unchanged (atom counts, hydrogens included)."""
    from rdkit import Chem

    import sim_backends.molecule as molecule
    from sim_backends.reorg import _atom_counts

    if hasattr(molecule, "atom_counts"):
        molecule.atom_counts.cache_clear()
    real = Chem.MolFromSmiles
    parsed = []
    monkeypatch.setattr(Chem, "MolFromSmiles", lambda s, *a, **k: parsed.append(s) or real(s, *a, **k))
    pool = ["c1ccsc1", "c1ccccc1", "ClC(Cl)Cl", "c1ccc2ccccc2c1", "N#Cc1ccc(C#N)cc1"]
    models = [CostModel("xtb-reorg", {}),
              CostModel("dft-reorg", {"functional": "b3lyp", "basis": "6-31g", "geometry": "xtb"})]
    inps = [EvalInput(s) for s in pool]
    priced = [m.expected(inps) for m in models]
    assert sorted(parsed) == sorted(pool)
    # (H, atoms up to Ne, heavier atoms): thiophene, benzene, chloroform, naphthalene,
    # terephthalonitrile
    assert [_atom_counts(s) for s in pool] == [(4, 4, 1), (6, 6, 0), (1, 1, 3), (8, 10, 0), (4, 10, 0)]
    n_atoms = [9, 12, 5, 18, 14]
    assert priced[0] == pytest.approx([0.05 + 6.0e-4 * n**2 for n in n_atoms])
    assert priced[1][3] > priced[1][1] > 0  # naphthalene costs more DFT than benzene
    assert len(parsed) == len(pool)
