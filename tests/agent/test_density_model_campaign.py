"""A campaign whose fragment-DFT level asks for the learned SCF guess sends its workers
the campaign's density-model file (runs/<name>/density_model.npz)."""

from __future__ import annotations

from conftest import write_config
from test_stages import BODY  # replayed formamide CSP landscape, diagnostic molecule level

REFINE = 'refine = {name = "dft-crystal", params = {cutoff_A = 3.0, scf_guess = "%s"}}\n'


def _first_dft_task(tmp_path, guess: str):
    from agent.campaign import Campaign
    from agent.config import load_config
    from agent.executor import _evaluate_in_worker

    cfg = load_config(write_config(tmp_path, ["NC=O formamide", "CC(=O)O acetic_acid"],
                                   BODY + REFINE % guess, name=guess))
    camp = Campaign.create(cfg, tmp_path / "runs")
    try:
        for _ in range(20):
            for t in camp.ask(2):
                if t.backend == "dft-crystal":
                    return camp.directory, t
                camp.tell(t, _evaluate_in_worker(t.backend, t.backend_params, t.inp))
    finally:
        camp.close()
    raise AssertionError("no dft-crystal task asked")


def test_learned_guess_tasks_carry_the_campaign_model_file(tmp_path):
    directory, task = _first_dft_task(tmp_path, "learned")
    assert task.backend_params["density_model"] == str(directory / "density_model.npz")
    assert task.backend_params["scf_guess"] == "learned"
    (tmp_path / "auto").mkdir()
    _, task = _first_dft_task(tmp_path / "auto", "auto")
    assert "density_model" not in task.backend_params
