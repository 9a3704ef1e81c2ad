"""Whether a run is going on now, as ``status`` sees it (newuser43 F6), and the advice a
Python caller gets for a name that is taken."""

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
            assert reader.running_pid() == str(__import__("os").getpid())
            assert reader.running_pid() == str(__import__("os").getpid())  # the probe kept no lock
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
