"""The Python API and the start of a run refuse what would leave a broken or split campaign
(newuser35 items 8 and 11):

* ``Campaign.create`` validates the config it is given again: ``cfg.model_copy(update=...)``
  skips pydantic's validation, and a campaign with ``max_evaluations = -7`` was written
  that no command could open;
* ``run_campaign(camp, runs_dir)`` with another runs directory than the campaign's put the
  store in one and MLflow in the other;
* a ``run`` whose cluster cannot be joined (its port answered, but it is not a Ray
  cluster) left ``runs/mlflow.db`` behind and printed the pool summary, pointing to
  ``status NAME --invalid`` for a campaign that was then removed."""

from __future__ import annotations

import pytest

from conftest import write_config
from test_bad_input import DIAG

POOL = ["CCO ethanol", "c1ccccc1 benzene", "CC(=O)O acid", "c1ccncc1 pyridine", "CCCC butane"]


def _cfg(tmp_path, name="api", tracking=False):
    from agent.config import load_config

    body = DIAG.format(n=3, timeout=10, params="{}")
    if tracking:
        body = body.replace("[tracking]\nenabled = false", "[tracking]\nenabled = true")
        assert "enabled = true" in body
    return load_config(write_config(tmp_path, POOL, body, name=name))


@pytest.mark.parametrize("update, message", [
    ({"max_evaluations": -7}, "max_evaluations: Input should be greater than or equal to 1 (got -7)"),
    ({"batch_size": 0}, "batch_size"),
    ({"max_evaluations": "many"}, "max_evaluations: Input should be a valid integer"),
])
def test_create_validates_a_model_copy_again(tmp_path, update, message):
    from agent.campaign import Campaign
    from agent.config import ConfigError

    cfg = _cfg(tmp_path).model_copy(update=update)
    runs = tmp_path / "runs"
    with pytest.raises(ConfigError) as err:
        Campaign.create(cfg, runs)
    assert str(err.value).startswith("config error: ") and message in str(err.value)
    assert "\n" not in str(err.value)
    assert not runs.exists()  # nothing written


def test_create_accepts_a_valid_model_copy(tmp_path):
    from agent.campaign import Campaign

    camp = Campaign.create(_cfg(tmp_path).model_copy(update={"max_evaluations": 2}), tmp_path / "runs")
    try:
        assert camp.cfg.max_evaluations == 2
    finally:
        camp.close()
    camp = Campaign.open("api", tmp_path / "runs", readonly=True)  # a command can open it
    camp.close()


def test_create_refuses_a_none_the_stored_config_cannot_keep(tmp_path):
    """executor.task_cpu_limit_s = None (no limit) would be written to config.toml without the
    key and read back as the 1800 s default: refused in one line, nothing created."""
    from agent.campaign import Campaign
    from agent.config import ConfigError

    cfg = _cfg(tmp_path)
    cfg = cfg.model_copy(update={"executor": cfg.executor.model_copy(update={"task_cpu_limit_s": None})})
    with pytest.raises(ConfigError, match=r"executor.task_cpu_limit_s = None cannot be kept") as err:
        Campaign.create(cfg, tmp_path / "runs")
    assert "\n" not in str(err.value) and not (tmp_path / "runs" / "api").exists()


def test_run_campaign_refuses_another_runs_dir(tmp_path, premigrated_mlflow):
    from mlflow.tracking import MlflowClient

    from agent.campaign import Campaign
    from agent.local_executor import LocalExecutor
    from agent.runner import run_campaign

    a, b = tmp_path / "A", tmp_path / "B"
    premigrated_mlflow(a)
    camp = Campaign.create(_cfg(tmp_path, name="twodirs", tracking=True), a)
    client = MlflowClient(f"sqlite:///{a.resolve() / 'mlflow.db'}")
    try:
        with pytest.raises(ValueError, match=r"lives in runs directory .*A, not .*B"):
            run_campaign(camp, b, progress=False, executor=LocalExecutor(slots=1))
        assert not b.exists() and client.get_experiment_by_name("twodirs") is None
        assert camp.n_evaluations == 0 and camp.store.get_meta("finished") is None
        # the same directory spelled otherwise, or none: the campaign's own
        status = run_campaign(camp, tmp_path / "A" / ".." / "A", progress=False,
                              executor=LocalExecutor(slots=1))
        assert status.n_evaluations == 3 and not b.exists()
        assert client.get_experiment_by_name("twodirs") is not None
    finally:
        camp.close()
    camp = Campaign.open("twodirs", a, max_evaluations=4)
    try:
        assert run_campaign(camp, progress=False, executor=LocalExecutor(slots=1)).n_evaluations == 4
    finally:
        camp.close()


class _NotACluster:
    """A RayExecutor whose address answers on its port but is no Ray cluster."""

    address = "10.255.255.1:6379"

    def preflight(self):
        pass  # the port answers

    def start(self):
        from agent.executor import ExecutorError

        raise ExecutorError(f"cannot join the Ray cluster at {self.address}: Failed to connect "
                            f"to Ray cluster at {self.address}")

    def shutdown(self):
        pass


def test_run_refused_for_an_address_prints_one_line_and_leaves_no_mlflow_store(
        tmp_path, capsys, monkeypatch):
    import agent.runner
    from agent.cli import main

    monkeypatch.setattr(agent.runner, "make_executor", lambda cfg, address=None: _NotACluster())
    _cfg(tmp_path, name="w2", tracking=True)
    runs = tmp_path / "runs"
    capsys.readouterr()
    rc = main(["run", str(tmp_path / "campaign.toml"), "--runs-dir", str(runs), "--name", "w2",
               "--address", _NotACluster.address, "--quiet"])
    out = capsys.readouterr()
    assert rc == 2
    assert out.out == ""  # no pool summary for a campaign that is not created
    lines = out.err.strip().splitlines()
    assert lines == [f"crystal-agent: error: cannot join the Ray cluster at {_NotACluster.address}: "
                     f"Failed to connect to Ray cluster at {_NotACluster.address}"], out.err
    assert not (runs / "mlflow.db").exists() and not (runs / "w2").exists()
    assert not list(runs.iterdir())


def test_campaign_is_a_context_manager_that_frees_its_lock(tmp_path):
    """``with Campaign.create(...) as c:`` (the README's API example) closes the store on
    leaving the block, an exception included: the campaign opens again at once."""
    from agent.campaign import Campaign
    from agent.store import StoreLockedError

    runs = tmp_path / "runs"
    with Campaign.create(_cfg(tmp_path, name="ctx"), runs) as camp:
        with pytest.raises(StoreLockedError):
            Campaign.open("ctx", runs)  # held while the block runs
    with pytest.raises(RuntimeError, match="inside"):
        with Campaign.open("ctx", runs) as camp:
            raise RuntimeError("inside")
    with Campaign.open("ctx", runs) as camp:
        assert camp.cfg.name == "ctx"
