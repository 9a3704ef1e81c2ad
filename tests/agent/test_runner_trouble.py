"""Runs that meet trouble (newuser44b): a cluster lost mid-run, an MLflow store that fails
mid-run, a run started from a thread, a misspelt key set from Python, the line a resumed
run starts with, and the MLflow run's status while the campaign runs."""

from __future__ import annotations

import threading

import pytest
from conftest import write_config
from test_bad_input import DIAG

POOL = ["CCO ethanol", "c1ccccc1 benzene", "CC(=O)O acid", "c1ccncc1 pyridine", "CCCC butane", "CCN ethylamine"]


def _campaign(tmp_path, name, n=4, tracking=False):
    from agent.campaign import Campaign
    from agent.config import load_config

    body = DIAG.format(n=n, timeout=10, params="{}")
    if tracking:
        body = body.replace("[tracking]\nenabled = false\n", "[tracking]\nenabled = true\n")
    cfg = load_config(write_config(tmp_path, POOL, body, name=name))
    return Campaign.create(cfg, tmp_path / "runs")


def test_a_lost_cluster_ends_the_run_in_one_line_and_resume_says_what_it_charged(tmp_path, monkeypatch, capsys):
    """newuser44b #1: a dead head left the launcher retrying tasks on it for 60 s, then Ray
    ended the process with its own message; the next resume charged ~100 CPU s for tasks
    that had used 0.3. The runner probes the cluster before every heartbeat and stops at
    the first failed probe, without another heartbeat, in one line with the resume hint;
    the resumed run says what it charged for the unfinished tasks."""
    from agent import runner
    from agent.campaign import Campaign
    from agent.executor import ClusterLostError
    from agent.local_executor import LocalExecutor

    monkeypatch.setattr(runner, "HEARTBEAT_S", 0.0)  # probe on every pass of the loop
    camp = _campaign(tmp_path, "lost", n=5)

    class LosesItsCluster(LocalExecutor):
        address = "10.0.0.1:6379"

        def cluster_alive(self) -> bool:
            return camp.n_evaluations < 2

        def lost_error(self) -> ClusterLostError:
            return ClusterLostError("lost the Ray cluster at 10.0.0.1:6379 (its head, 10.0.0.1:6379, stopped answering)")

    with pytest.raises(ClusterLostError) as err:
        runner.run_campaign(camp, tmp_path / "runs", progress=False, executor=LosesItsCluster(slots=2))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("lost the Ray cluster at 10.0.0.1:6379"), msg
    assert "after 2 evaluations" in msg and "`crystal-agent resume lost`" in msg, msg
    heartbeat = camp.store.get_meta("heartbeat")
    assert [e["kind"] for e in camp.store.events()][-1] == "cluster_lost"
    assert camp.store.get_meta("finished") == "0"
    camp.close()

    camp = Campaign.open("lost", tmp_path / "runs")
    assert camp.store.get_meta("heartbeat") == heartbeat  # nothing beat after the loss
    try:
        capsys.readouterr()
        runner.run_campaign(camp, tmp_path / "runs", progress=True, executor=LocalExecutor(slots=2))
        err_text = capsys.readouterr().err
        assert camp.n_evaluations == 5
    finally:
        camp.close()
    (line,) = [ln for ln in err_text.splitlines() if ln.startswith("crystal-agent: resuming")]
    assert line.startswith("crystal-agent: resuming 'lost' at 2 of 5 evaluations, CPU "), line
    assert "task" in line and "the last run left unfinished charged" in line, line


def test_resume_line_without_unfinished_tasks():
    from types import SimpleNamespace

    from agent.runner import resume_line

    camp = SimpleNamespace(cfg=SimpleNamespace(name="c", max_evaluations=10, max_cpu_hours=0.1),
                           n_evaluations=3, spent_cpu_s=12.34)
    assert resume_line(camp, 0, 0.0) == "crystal-agent: resuming 'c' at 3 of 10 evaluations, CPU 12.3 of 360 s spent"
    assert resume_line(camp, 1, 2.5).endswith(
        "; 1 task the last run left unfinished charged 2.5 CPU s (what its worker recorded) and asked again")
    # newuser46b #5: the tasks are named
    assert resume_line(camp, 2, 5.0, ["csp-ff of coronene", "xtb-crystal of m36-m0004 (coronene)"]).endswith(
        "; 2 tasks (csp-ff of coronene, xtb-crystal of m36-m0004 (coronene)) the last run left unfinished "
        "charged 5.0 CPU s (what their workers recorded) and asked again")


def test_a_tracking_failure_mid_run_is_one_warning_and_the_campaign_goes_on(tmp_path, monkeypatch, capsys):
    """newuser44b #4: a full disk under the MLflow store ended the campaign with two
    SQLAlchemy tracebacks. MLflow is a view of the store: one warning line, tracking stops,
    the campaign finishes and its report is written."""
    import sqlite3

    from agent.local_executor import LocalExecutor
    from agent.runner import run_campaign
    from agent.tracking import Tracker

    calls = {"n": 0}
    original = Tracker.log_progress

    def failing(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise sqlite3.OperationalError("database or disk is full")
        return original(self)

    monkeypatch.setattr(Tracker, "log_progress", failing)
    camp = _campaign(tmp_path, "full", n=4, tracking=True)
    try:
        capsys.readouterr()
        run_campaign(camp, tmp_path / "runs", progress=False, executor=LocalExecutor(slots=1))
        assert camp.n_evaluations == 4 and camp.store.get_meta("finished") == "1"
    finally:
        camp.close()
    err = capsys.readouterr().err
    warned = [ln for ln in err.splitlines() if "MLflow tracking stopped" in ln]
    assert warned == ["crystal-agent: warning: MLflow tracking stopped (OperationalError: database or disk is "
                      "full); the campaign goes on and its results stay in the store"], err
    assert "Traceback" not in err
    assert calls["n"] == 2  # not called again after the failure
    assert (tmp_path / "runs" / "full" / "report" / "summary.txt").is_file()


def test_the_mlflow_run_stays_running_while_models_are_logged(tmp_path, monkeypatch):
    """newuser44b #2: each logged surrogate model ended the campaign's MLflow run (the
    ``with mlflow.start_run`` block), so the UI showed a running campaign as FINISHED."""
    from agent.local_executor import LocalExecutor
    from agent.runner import run_campaign
    from agent.tracking import Tracker

    seen = []
    original = Tracker._log_surrogate_model

    def logged(self):
        original(self)
        seen.append(self.client.get_run(self.run_id).info.status)

    monkeypatch.setattr(Tracker, "_log_surrogate_model", logged)
    camp = _campaign(tmp_path, "ml", n=4, tracking=True)
    try:
        run_campaign(camp, tmp_path / "runs", progress=False, executor=LocalExecutor(slots=1))
    finally:
        camp.close()
    assert seen and set(seen) == {"RUNNING"}, seen


def test_run_campaign_from_a_thread(tmp_path):
    """newuser44b #6: `signal only works in main thread` from a notebook/dashboard thread."""
    from agent.local_executor import LocalExecutor
    from agent.runner import run_campaign

    camp = _campaign(tmp_path, "thread", n=3)
    errors = []

    def work():
        try:
            run_campaign(camp, tmp_path / "runs", progress=False, executor=LocalExecutor(slots=1))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t = threading.Thread(target=work)
    t.start()
    t.join(300)
    camp.close()
    assert not errors, errors
    assert camp.n_evaluations == 3


def test_a_key_misspelt_through_model_copy_is_refused(tmp_path):
    """newuser44b #7: ``cfg.model_copy(update={"max_evaluation": 5})`` made a campaign with
    the default budget; the CLI refuses the same key."""
    from agent.campaign import Campaign
    from agent.config import ConfigError, load_config

    cfg = load_config(write_config(tmp_path, POOL, DIAG.format(n=4, timeout=10, params="{}"), name="typo"))
    with pytest.raises(ConfigError, match=r"^config error: max_evaluation: unknown key; did you mean 'max_evaluations'\?$"):
        Campaign.create(cfg.model_copy(update={"max_evaluation": 5}), tmp_path / "runs")
    executor = cfg.executor.model_copy(update={"task_timeout": 5})
    with pytest.raises(ConfigError, match=r"^config error: executor.task_timeout: unknown key"):
        Campaign.create(cfg.model_copy(update={"executor": executor}), tmp_path / "runs")
    backend = cfg.backends[0].model_copy(update={"cost_sec": 1.0})  # a list entry (review49 #6)
    with pytest.raises(ConfigError, match=r"^config error: backends.0.cost_sec: unknown key; did you mean 'cost_s'\?$"):
        Campaign.create(cfg.model_copy(update={"backends": [backend]}), tmp_path / "runs")
    assert not (tmp_path / "runs" / "typo").exists()
    Campaign.create(cfg.model_copy(update={"max_evaluations": 5}), tmp_path / "runs").close()


def test_a_run_whose_tasks_cannot_start_says_so(tmp_path, monkeypatch, capsys):
    """newuser44b #5: with its only worker node lost the run waited silently. It says why,
    at most once a minute (here at once), and the store keeps the event."""
    from agent import runner
    from agent.local_executor import LocalExecutor

    monkeypatch.setattr(runner, "STARVED_SAY_S", 0.0)

    class NoNode(LocalExecutor):
        idle = 3

        def wait(self, timeout_s=1.0):
            if self.idle:
                self.idle -= 1
                return []
            return super().wait(timeout_s)

        def starved(self):
            return "no node of the cluster offers 1 CPU (the cluster has 0); 1 task wait for a node to join" \
                if self.idle else None

    camp = _campaign(tmp_path, "starved", n=2)
    try:
        capsys.readouterr()
        runner.run_campaign(camp, tmp_path / "runs", progress=False, executor=NoNode(slots=1))
        assert camp.n_evaluations == 2
        assert camp.store.events("starved")
    finally:
        camp.close()
    said = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("crystal-agent: waiting: ")]
    assert said and said[0] == ("crystal-agent: waiting: no node of the cluster offers 1 CPU (the cluster has 0); "
                                "1 task wait for a node to join"), said


def test_a_copied_campaign_folder_is_its_own_campaign_in_mlflow(tmp_path):
    """newuser44b #9: resuming a copy of runs/s1 as runs/cfg1 tagged s1's MLflow run and
    printed `campaign s1`. The copy is the campaign of its folder: its own name, experiment
    and run; the original's run is untouched."""
    import shutil

    from mlflow.tracking import MlflowClient

    from agent.campaign import Campaign
    from agent.local_executor import LocalExecutor
    from agent.runner import run_campaign

    runs = tmp_path / "runs"
    camp = _campaign(tmp_path, "s1", n=2, tracking=True)
    try:
        run_campaign(camp, runs, progress=False, executor=LocalExecutor(slots=1))
        original = camp.store.get_meta("mlflow_run_id")
    finally:
        camp.close()
    shutil.copytree(runs / "s1", runs / "cfg1")
    copy = Campaign.open("cfg1", runs, max_evaluations=4)
    try:
        assert copy.cfg.name == "cfg1"
        run_campaign(copy, runs, progress=False, executor=LocalExecutor(slots=1))
        assert copy.n_evaluations == 4
        mine = copy.store.get_meta("mlflow_run_id")
        assert [e["name"] for e in copy.store.events("renamed")] == ["cfg1"]
    finally:
        copy.close()
    client = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    assert mine and mine != original
    assert client.get_experiment(client.get_run(mine).info.experiment_id).name == "cfg1"
    assert "config_changed" not in client.get_run(original).data.tags
    again = Campaign.open("s1", runs, readonly=True)
    try:
        assert again.cfg.name == "s1" and again.n_evaluations == 2
    finally:
        again.close()
