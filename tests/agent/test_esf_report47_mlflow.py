"""MLflow of a structure-stage landscape mobility names its level and logs the window share
(newuser46b #10): ``landscape_mobility_hole_cm2Vs_m<id>`` sat beside ``best_found`` (the
molecule stage's esf-refined value) with no tag saying it is the structure stage's
(mobility-xtb on the ranking level's energies), and the window share status prints beside it
(65 %) was not logged.

The campaign is the pyrazine one of ``test_esf_predicted_energies`` (replayed periodic
GFN2-xTB energies, the real ``mobility-xtb`` level), run with tracking."""

from __future__ import annotations

import pytest

from test_esf_predicted_energies import run_pyrazine


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    return run_pyrazine(tmp_path_factory.mktemp("esf47_mlflow"), name="pm", tracking=True)


def test_the_landscape_mobility_metric_names_its_level_and_the_window_share_is_logged(tracked):
    from mlflow.tracking import MlflowClient

    from agent.campaign import Campaign
    from agent.summary import status_record

    camp = Campaign.open("pm", tracked, readonly=True)
    try:
        rec = status_record(camp.status(), camp.store, camp.cfg)
    finally:
        camp.close()
    (esf,) = [r for r in rec["esf"] if r["source"] == "structure stage"]
    client = MlflowClient(f"sqlite:///{tracked / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("pm").experiment_id])
    key = f"landscape_mobility_hole_cm2Vs_m{esf['molecule_id']}"
    tags = run.data.tags
    assert tags[f"{key}.level"].startswith("structure stage: "), tags.get(f"{key}.level")
    assert "(mobility-xtb), Boltzmann-weighted on " in tags[f"{key}.level"]
    assert tags[f"{key}.level"].endswith("(replay-crystal) energies")
    assert tags[f"{key}.unit"] == "cm2/(V s)"
    assert f"molecule.m{esf['molecule_id']}" in tags
    share = client.get_metric_history(run.info.run_id, f"{key}_window_share")
    assert share and share[-1].value == pytest.approx(1.0 - esf["uncomputed_weight"])
    assert 0.0 < share[-1].value < 1.0
