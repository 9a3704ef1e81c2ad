"""Whether a run is going on now, as ``status`` sees it (newuser43 F6), and the advice a
Python caller gets for a name that is taken."""

import os

import pytest

from conftest import write_config

BODY = """
objective = "n_heavy_atoms"
max_evaluations = 3
[tracking]
enabled = false
[[backends]]
name = "diagnostic"
"""


def test_running_pid_sees_the_lock_holder_without_taking_it(tmp_path):
    from agent.store import Store

    path = tmp_path / "c" / "store.sqlite"
    writer = Store(path, lock=True)
    try:
        with Store(path) as reader:
            assert reader.running_pid() == str(os.getpid())
            assert reader.running_pid() == str(os.getpid())  # the probe kept no lock
    finally:
        writer.close()
    with Store(path) as reader:
        assert reader.running_pid() is None
    again = Store(path, lock=True)  # nothing left held by the probes
    again.close()


def test_a_taken_name_tells_a_python_caller_how_to_open_it(tmp_path):
    from agent.campaign import Campaign
    from agent.config import ConfigError, load_config

    cfg = load_config(write_config(tmp_path, ["C methane", "CC ethane"], BODY, name="taken"))
    Campaign.create(cfg, tmp_path / "runs").close()
    with pytest.raises(ConfigError) as err:
        Campaign.create(cfg, tmp_path / "runs")
    msg = str(err.value)
    assert "Campaign.open('taken', runs_dir)" in msg and "crystal-agent resume taken" in msg, msg
    assert "\n" not in msg


def test_status_of_a_stopped_run_says_what_resume_will_charge(tmp_path):
    """newuser43 F4: after a kill, status counted nothing for the tasks in flight until a
    resume. It now names them and their charge, and once charged their wall time is in the
    wall sum beside the CPU (a 1-CPU task's charge never exceeds its wall)."""
    from agent.campaign import Campaign, campaign_status
    from agent.config import load_config
    from agent.local_executor import LocalExecutor
    from agent.runner import run_campaign
    from agent.summary import state_text

    cfg = load_config(write_config(tmp_path, ["C methane", "CC ethane", "CCC propane"], BODY, name="s"))
    camp = Campaign.create(cfg, tmp_path / "runs")
    run_campaign(camp, tmp_path / "runs", progress=False, executor=LocalExecutor(slots=1))
    store = camp.store
    store.set_meta("finished", "0")  # as a run that was killed: one task in flight 30 s
    store.note_submitted("in-flight", 1.0)
    t_sub = store.events("submitted")[-1]["ts"]
    store.set_meta("heartbeat", repr(t_sub + 30.0))
    camp.close()

    ro = Campaign.open("s", tmp_path / "runs", readonly=True)
    try:
        st = campaign_status(ro.store, ro.cfg)
    finally:
        ro.close()
    assert st.running_pid is None and st.n_unsettled == 1
    assert st.unsettled_cpu_s == pytest.approx(30.0, abs=0.01)  # no record: CPUs x wall
    text = state_text({**st.to_dict(), "name": "s"})
    assert text.startswith("stopped before its end; `crystal-agent resume s` continues it"), text
    assert "1 task running when it stopped will be charged 30.0 CPU s when it resumes" in text, text

    camp = Campaign.open("s", tmp_path / "runs")
    try:
        camp.settle_interrupted()
        st = campaign_status(camp.store, camp.cfg, camp)
        assert st.n_interrupted == 1 and st.n_unsettled == 0
        assert st.spent_wall_s >= 30.0 and st.spent_cpu_s <= st.spent_wall_s + 0.1  # tiny tasks: timer grain
        assert camp.spent_wall_s == pytest.approx(st.spent_wall_s)
        assert state_text({**st.to_dict(), "name": "s"}) == f"running (pid {os.getpid()})"
    finally:
        camp.close()

    # newuser46b #5: a task the runner submitted says what it computes
    with Campaign.open("s", tmp_path / "runs") as rw:
        rw.store.note_submitted("in-flight-2", 1.0, backend="diagnostic", smiles="CC", structure_id=None)
        rw.store.set_meta("heartbeat", repr(rw.store.events("submitted")[-1]["ts"] + 10.0))
    with Campaign.open("s", tmp_path / "runs", readonly=True) as ro2:
        st2 = campaign_status(ro2.store, ro2.cfg)
    assert st2.n_unsettled == 1 and st2.unsettled_tasks == ["diagnostic of ethane"], st2.unsettled_tasks
    assert "1 task running when it stopped (diagnostic of ethane) will be charged" in state_text(
        {**st2.to_dict(), "name": "s"})


def test_state_text_of_a_finished_campaign():
    from agent.summary import state_text

    assert state_text({"finished": True, "stop_reason": "evaluation budget", "name": "x"}) == \
        "finished: evaluation budget"


def test_status_cif_paths_are_absolute_with_a_relative_runs_dir(tmp_path, monkeypatch):
    """newuser43 F6: with ``--runs-dir runs`` status printed the leader's CIF absolute and
    the next ones relative; every CIF path of the record is absolute now."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_stages import BODY as STAGE_BODY
    from test_stages import POOL, REFINE

    from agent.campaign import Campaign
    from agent.config import load_config
    from agent.local_executor import LocalExecutor
    from agent.runner import run_campaign
    from agent.summary import status_record

    monkeypatch.chdir(tmp_path)
    cfg = load_config(write_config(tmp_path, POOL, STAGE_BODY + REFINE, name="rel"))
    camp = Campaign.create(cfg, Path("runs"))
    try:
        status = run_campaign(camp, Path("runs"), progress=False, executor=LocalExecutor(slots=2))
        rec = status_record(status, camp.store, camp.cfg)
    finally:
        camp.close()
    paths = [r["cif"] for land in rec["structures"] for r in land.get("top") or [] if r.get("cif")]
    assert paths and all(Path(p).is_absolute() for p in paths), paths
