"""MLflow tracking as users meet it: the classic experiment view, one-line errors (never a
hang or a silently created directory) for unusable tracking URIs, models logged only when
they change materially with the last one trained on every result, and pins that hold."""

import tomllib
from pathlib import Path

import pytest

from conftest import ROOT, cli, write_config

POOL = ["C" * i + tail for i in range(1, 11) for tail in ("", "O", "N")]  # 30 molecules

BODY = """
objective = "n_heavy_atoms"
batch_size = 1
max_evaluations = {n}
[surrogate]
n_initial = 4
[tracking]
{tracking}
[[backends]]
name = "_faulty"
"""


def _one_line_error(out) -> str:
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("crystal-agent: error: "), out.stderr[-2000:]
    return lines[0]


def test_unreachable_tracking_server_fails_fast_in_one_line(tmp_path):
    cfg = write_config(tmp_path, POOL, BODY.format(n=2, tracking='uri = "http://127.0.0.1:1"'))
    out = cli("run", str(cfg), "--runs-dir", str(tmp_path / "runs"), timeout=60)
    assert "cannot reach the MLflow server at http://127.0.0.1:1" in _one_line_error(out)
    assert not (tmp_path / "runs" / "t").exists()


def test_tracking_uri_under_missing_directory_or_file_is_refused(tmp_path):
    missing = tmp_path / "no" / "such" / "dir"
    cfg = write_config(tmp_path, POOL, BODY.format(n=2, tracking=f'uri = "sqlite:///{missing}/m.db"'))
    out = cli("run", str(cfg), "--runs-dir", str(tmp_path / "runs"), timeout=60)
    assert "does not exist" in _one_line_error(out)
    assert not (tmp_path / "no").exists() and not (tmp_path / "runs" / "t").exists()

    (tmp_path / "afile").write_text("not a directory")
    cfg = write_config(tmp_path, POOL, BODY.format(
        n=2, tracking=f'uri = "sqlite:///{tmp_path}/afile/m.db"'))
    out = cli("run", str(cfg), "--runs-dir", str(tmp_path / "runs"), timeout=60)
    assert "is a file, not a directory" in _one_line_error(out)
    assert not (tmp_path / "runs" / "t").exists()


def test_classic_view_and_material_model_logging(tmp_path, premigrated_mlflow):
    import mlflow
    from mlflow.tracking import MlflowClient

    from agent.campaign import Campaign
    from agent.config import load_config
    from agent.local_executor import LocalExecutor
    from agent.runner import run_campaign
    from agent.tracking import EXPERIMENT_KIND_TAG, MODEL_LOG_GROWTH, MODEL_LOG_MIN_NEW_TOP

    runs = tmp_path / "runs"
    premigrated_mlflow(runs)  # the default store, tables made once per session
    cfg = load_config(write_config(tmp_path, POOL, BODY.format(n=30, tracking="enabled = true")))
    camp = Campaign.create(cfg, runs)
    try:
        run_campaign(camp, runs, progress=False, executor=LocalExecutor(slots=1))
        n_refits, n_obs = camp.molecules.n_refits, len(camp.observations)
    finally:
        camp.close()
    client = MlflowClient(f"sqlite:///{runs.resolve() / 'mlflow.db'}")
    exp = client.get_experiment_by_name("t")
    assert exp.tags.get(EXPERIMENT_KIND_TAG[0]) == EXPERIMENT_KIND_TAG[1]

    models = client.search_logged_models(experiment_ids=[exp.experiment_id])
    assert 2 <= len(models) < n_refits / 2, (len(models), n_refits)
    trained = []
    for m in sorted(models, key=lambda m: m.creation_timestamp):
        pm = mlflow.pyfunc.load_model(f"models:/{m.model_id}").unwrap_python_model()
        trained.append(len(pm.surrogate.obs_f))
    assert trained == sorted(set(trained)), trained  # each logged model saw more results
    for before, after in zip(trained, trained[1:-1], strict=False):  # all but the final one
        assert after - before >= MODEL_LOG_MIN_NEW_TOP or after >= (1 + MODEL_LOG_GROWTH) * before
    assert trained[-1] == n_obs == 30  # the last logged model has seen the last result
    (run,) = client.search_runs([exp.experiment_id])
    last = max(models, key=lambda m: m.creation_timestamp)
    assert run.data.tags["molecule_surrogate.latest_model"] == f"models:/{last.model_id}"  # newuser45a #11
    # held-out calibration is logged once enough values are held out to judge it
    from agent.tracking import MIN_CALIBRATION_N

    (run,) = client.search_runs([exp.experiment_id])
    for name in ("z_std", "coverage_68", "coverage_95"):
        hist = client.get_metric_history(run.info.run_id, f"surrogate_holdout_{name}")
        assert 0 < len(hist) < n_refits, (name, len(hist), n_refits)
        assert min(m.step for m in hist) >= MIN_CALIBRATION_N
        if name.startswith("coverage"):
            assert all(0.0 <= m.value <= 1.0 for m in hist)
    print(f"{len(models)} models logged over {n_refits} refits, trained on {trained}")


def test_dependency_pins_hold_the_installed_versions():
    from importlib.metadata import version

    from packaging.requirements import Requirement

    deps = tomllib.loads(Path(ROOT, "pyproject.toml").read_text())["project"]["dependencies"]
    reqs = {r.name: r for r in map(Requirement, deps)}
    for name in ("ray", "mlflow", "botorch"):
        spec = reqs[name].specifier
        assert any(s.operator == "<" for s in spec), f"{name} has no upper bound: {spec}"
        assert spec.contains(version(name)), f"installed {name} {version(name)} outside {spec}"


@pytest.mark.parametrize("uri", ["http://127.0.0.1:1", "https://localhost:1/x"])
def test_check_tracking_uri_http_refused(uri):
    from agent.tracking import TrackingError, check_tracking_uri

    with pytest.raises(TrackingError, match="cannot reach the MLflow server"):
        check_tracking_uri(uri)


@pytest.mark.slow  # MLflow's first-run table creation in a fresh CLI process (~15-35 s)
def test_first_run_into_a_new_runs_dir_with_default_tracking(tmp_path):
    """The default store lies in the runs directory the first campaign creates."""
    cfg = write_config(tmp_path, POOL, BODY.format(n=1, tracking="enabled = true"))
    out = cli("run", str(cfg), "--runs-dir", str(tmp_path / "new" / "runs"), "--quiet", timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "new" / "runs" / "mlflow.db").is_file()


def test_logged_surrogate_names_its_outputs_by_objective_level_and_unit(tmp_path, premigrated_mlflow):
    """newuser43b #6: the logged molecule surrogate predicted ``mean_0, std_0``, was named
    ``surrogate_refit_<n>`` and carried all the campaign's params. Its columns now name the
    objective and level, its tags the unit and level of theory of each, its name the
    surrogate, and its params are the surrogate's own. A model logged the old way (state
    without column names) still loads and predicts its old columns."""
    import pickle

    import mlflow
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from agent.campaign import Campaign
    from agent.config import load_config
    from agent.local_executor import LocalExecutor
    from agent.mlflow_model import MoleculeSurrogateModel
    from agent.runner import run_campaign

    runs = tmp_path / "runs"
    premigrated_mlflow(runs)
    cfg = load_config(write_config(tmp_path, POOL, BODY.format(n=8, tracking="enabled = true")))
    levels = [b.name for b in cfg.backends]
    camp = Campaign.create(cfg, runs)
    try:
        run_campaign(camp, runs, progress=False, executor=LocalExecutor(slots=1))
        state = camp.molecules.surrogate.state_dict()
    finally:
        camp.close()
    client = MlflowClient(f"sqlite:///{runs.resolve() / 'mlflow.db'}")
    exp = client.get_experiment_by_name("t")
    (run,) = client.search_runs([exp.experiment_id])
    # newuser45a #6: the run says which molecule is best, not only its value
    with Campaign.open("t", runs, readonly=True) as done:
        status = done.status()
    tags = run.data.tags
    assert tags["best_found.molecule"] == (status.best_name or status.best_smiles)
    assert tags["best_found.smiles"] == status.best_smiles
    mid = tags["best_found.molecule_id"]
    assert mid.startswith("m") and tags[f"molecule.{mid}"].startswith(tags["best_found.molecule"])
    assert run.data.metrics["best_found"] == status.best
    models = client.search_logged_models(experiment_ids=[exp.experiment_id])
    assert models
    for m in models:
        assert m.name.startswith("molecule_surrogate_n_heavy_atoms_refit_"), m.name
        assert m.model_type == "molecule-surrogate"
        assert not set(m.params) & set(run.data.params), sorted(set(m.params) & set(run.data.params))
        assert m.params["levels"] == ", ".join(levels)
        assert m.tags["objective"] == "n_heavy_atoms" and m.tags["unit"] == "dimensionless"
        for level in levels:
            tag = m.tags[f"output.n_heavy_atoms_{level}"]
            assert f"({level})" in tag and "dimensionless" in tag
    last = max(models, key=lambda m: m.creation_timestamp)
    pred = mlflow.pyfunc.load_model(f"models:/{last.model_id}").predict(
        pd.DataFrame({"smiles": ["CCO", "CCCN"]}))
    assert list(pred.columns) == ["smiles"] + [f"n_heavy_atoms_{lv}_{k}" for lv in levels for k in ("mean", "std")]
    assert (pred[f"n_heavy_atoms_{levels[-1]}_std"] > 0).all()
    # the held-out MAE names its unit
    from agent.tracking import holdout_mae_metric

    assert client.get_metric_history(run.info.run_id, holdout_mae_metric("n_heavy_atoms"))
    assert holdout_mae_metric("n_heavy_atoms") == "surrogate_holdout_mae_dimensionless"
    assert holdout_mae_metric("reorg_energy_kjmol") == "surrogate_holdout_mae_kjmol"
    assert not client.get_metric_history(run.info.run_id, "surrogate_holdout_mae")

    # a model logged before the columns were named: the same state without "columns"
    old = tmp_path / "old_state.pkl"
    old.write_bytes(pickle.dumps({"state_dict": state, "n_fidelities": len(levels),
                                  "fingerprint": {"n_bits": cfg.surrogate.fingerprint_bits,
                                                  "radius": cfg.surrogate.fingerprint_radius}}))
    mlflow.set_tracking_uri(f"sqlite:///{runs.resolve() / 'mlflow.db'}")
    with mlflow.start_run(experiment_id=exp.experiment_id):
        info = mlflow.pyfunc.log_model(name="surrogate_refit_0001", python_model=MoleculeSurrogateModel(),
                                       artifacts={"state": str(old)}, pip_requirements=["crystal-agent"])
    pred_old = mlflow.pyfunc.load_model(info.model_uri).predict(pd.DataFrame({"smiles": ["CCO"]}))
    assert list(pred_old.columns) == ["smiles"] + [f"{k}_{f}" for f in range(len(levels)) for k in ("mean", "std")]
    top = len(levels) - 1
    assert pred_old[f"mean_{top}"].iloc[0] == pytest.approx(pred[f"n_heavy_atoms_{levels[-1]}_mean"].iloc[0])


def test_lab_counts_are_logged_on_change_with_one_point_per_step(tmp_path, premigrated_mlflow):
    """newuser43b #7: ``lab_experiments_sent`` was ``[(0,0),(6,1),(6,1)]`` and ``lab_results``
    ``[(0,0),(6,0),(6,1)]``: a repeated point, and two values at one step (the request
    sent and its result arriving at the same evaluation count). Each is now logged when it
    changes, at a strictly increasing step, the counts at an evaluation count held until
    the count moves on or the run ends."""
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from agent.tracking import Tracker

    uri = f"sqlite:///{premigrated_mlflow(tmp_path / 'runs').resolve()}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("lab")).info.run_id
    rows: list[dict[str, str]] = []
    camp = SimpleNamespace(lab=object(), n_evaluations=0,
                           store=SimpleNamespace(lab_experiments=lambda: list(rows)))
    tracker = Tracker.__new__(Tracker)  # the lab-count logging alone, on a real MLflow store
    tracker.client, tracker.run_id, tracker.campaign = client, run_id, camp
    tracker._lab_pending, tracker._points, tracker._lab_counts = None, {}, None

    tracker._log_lab_counts()                    # step 0: nothing sent
    camp.n_evaluations = 6
    tracker._log_lab_counts()                    # step 6: still nothing
    rows.append({"state": "queued"})
    tracker._log_lab_counts()                    # step 6: one sent
    rows[0]["state"] = "done"
    tracker._log_lab_counts()                    # step 6: its result
    camp.n_evaluations = 7
    tracker._log_lab_counts()                    # step 7: no change
    rows.append({"state": "queued"})
    camp.n_evaluations = 9
    tracker._log_lab_counts()                    # step 9: a second one sent

    def points(key):
        return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]

    assert points("lab_experiments_sent") == [(0, 0), (6, 1)]  # step 9's count held ...
    assert points("lab_results") == [(0, 0), (6, 1)]
    tracker._log_lab_counts(final=True)          # ... until the run ends
    assert points("lab_experiments_sent") == [(0, 0), (6, 1), (9, 2)]
    assert points("lab_results") == [(0, 0), (6, 1)]
    # a tracker reopening the run (resume) logs nothing already there
    again = Tracker.__new__(Tracker)
    again.client, again.run_id, again.campaign = client, run_id, camp
    again._lab_pending, again._points = None, {}
    again._log_lab_counts(final=True)
    assert points("lab_experiments_sent") == [(0, 0), (6, 1), (9, 2)]
    assert points("lab_results") == [(0, 0), (6, 1)]


def test_artifact_names_give_the_molecule_ids_to_tag():
    """newuser45c #5: molecule ids in artifact names (the ESF CIFs) had no molecule.m<id> tag;
    the zero-padded structure ids are not molecule ids."""
    from agent.tracking import MOLECULE_ID_IN_NAME

    names = {"esf_m98_m0001.cif": ["98"], "landscape_m36.png": ["36"], "landscape_model_m36.csv": ["36"],
             "m36-m0001.cif": ["36"], "esf_map.png": [], "m0001.cif": [], "summary.txt": []}
    assert {n: MOLECULE_ID_IN_NAME.findall(n) for n in names} == names


def test_logged_surrogate_never_predicts_a_negative_reorganisation_energy(tmp_path, premigrated_mlflow):
    """stop 45's left-alone list: the MLflow pyfunc returned the raw GP, whose mean of a
    lambda+ can be negative (the printed predictions were already truncated). A model of an
    objective physics bounds from below now predicts the truncated Gaussian's mean and sd,
    with the raw posterior beside them (``_gp_mean``/``_gp_std``); the ESF proxy's column
    is named for the quantity that level computes."""
    import pickle

    import mlflow
    import numpy as np
    import pandas as pd

    from agent.mlflow_model import MoleculeSurrogateModel, output_columns
    from agent.report import bounded_prediction
    from agent.surrogates.fingerprints import morgan_fingerprints
    from agent.surrogates.molecule_gp import MoleculeSurrogate, Observation

    train = ["c1ccccc1", "c1ccc2ccccc2c1", "c1ccc2cc3ccccc3cc2c1", "Cc1ccccc1", "Oc1ccccc1"]
    fps = morgan_fingerprints(train, n_bits=2048, radius=2)
    # small lambda+ values (kJ/mol): the GP's Gaussian puts mass below zero for molecules it knows little
    values = [0.4, 0.2, 0.1, 0.6, 0.3]
    model = MoleculeSurrogate(1, seed=0)
    model.fit(fps, [Observation(i, 0, v) for i, v in enumerate(values)])
    columns = output_columns("reorg_energy_kjmol", ["dft-reorg"])
    state = tmp_path / "state.pkl"
    state.write_bytes(pickle.dumps({"state_dict": model.state_dict(), "n_fidelities": 1,
                                    "fingerprint": {"n_bits": 2048, "radius": 2},
                                    "columns": columns, "lower_bound": 0.0}))
    mlflow.set_tracking_uri(f"sqlite:///{premigrated_mlflow(tmp_path / 'runs').resolve()}")
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="m", python_model=MoleculeSurrogateModel(),
                                       artifacts={"state": str(state)}, pip_requirements=["crystal-agent"])
    query = ["CCCCCCCCO", "N#CC#N", "c1ccccc1"]
    pred = mlflow.pyfunc.load_model(info.model_uri).predict(pd.DataFrame({"smiles": query}))
    c = columns[0]
    raw_m, raw_s = model.predict(morgan_fingerprints(query, n_bits=2048, radius=2), 0)
    np.testing.assert_allclose(pred[f"{c}_gp_mean"], raw_m)
    np.testing.assert_allclose(pred[f"{c}_gp_std"], raw_s)
    assert (raw_m - 2 * raw_s < 0).any()  # the raw posterior reaches below zero ...
    assert (pred[f"{c}_mean"] > 0).all() and (pred[f"{c}_mean"] >= raw_m).all()  # ... the prediction never
    assert (pred[f"{c}_std"] <= raw_s + 1e-12).all()
    m, s = bounded_prediction(raw_m, raw_s, 0.0)
    np.testing.assert_allclose(pred[f"{c}_mean"], m)
    np.testing.assert_allclose(pred[f"{c}_std"], s)
    # an unreadable SMILES gets NaN, not the confident prediction of an empty fingerprint (newuser46b #3)
    bad = mlflow.pyfunc.load_model(info.model_uri).predict(pd.DataFrame({"smiles": ["not_a_smiles", "C1CC", "", "CCO"]}))
    assert bad[[f"{c}_mean", f"{c}_std", f"{c}_gp_mean", f"{c}_gp_std"]].iloc[:3].isna().all().all()
    assert bad[[f"{c}_mean", f"{c}_std"]].iloc[3].notna().all()
    # the ESF proxy's value is a reference-crystal mobility, and its column says so
    assert output_columns("log10_landscape_mobility_hole", ["esf-proxy", "esf-refined"],
                          ["log10_reference_crystal_mobility_hole", "log10_landscape_mobility_hole"]) == [
        "log10_reference_crystal_mobility_hole_esf-proxy", "log10_landscape_mobility_hole_esf-refined"]


def test_the_report_value_is_the_metrics_latest_at_the_last_step(tmp_path, premigrated_mlflow):
    """newuser50 #10: the structure stage's last landscape event was logged at step 91 (0.4808)
    and the report's value (0.4823), logged at the end of the run at the same step, was
    dropped; MLflow's latest value disagreed with the report. A final point at the same step
    is now kept (an unchanged value still logs nothing)."""
    from mlflow.tracking import MlflowClient

    from agent.tracking import Tracker

    uri = f"sqlite:///{premigrated_mlflow(tmp_path / 'runs').resolve()}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("final")).info.run_id
    tracker = Tracker.__new__(Tracker)
    tracker.client, tracker.run_id, tracker._points = client, run_id, {}
    key = "landscape_mobility_hole_cm2Vs_m103"
    tracker._log_new_points({key: 0.4808}, 91)
    tracker._log_new_points({key: 0.4900}, 91)  # an event replayed at the same step: nothing
    tracker._log_new_points({key: 0.4823}, 91, on_change=True, final=True)
    tracker._log_new_points({key: 0.4823}, 91, on_change=True, final=True)  # a second end: nothing
    tracker._log_new_points({key: 0.4700}, 91, on_change=True, final=True)  # a resumed end, smaller
    history = client.get_metric_history(run_id, key)
    assert sorted(m.value for m in history) == [0.47, 0.4808, 0.4823]
    assert client.get_run(run_id).data.metrics[key] == 0.47  # the last logged, not the largest
