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
