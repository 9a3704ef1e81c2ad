"""newuser50 #6: with no result for a minute the run says which tasks are running."""

from __future__ import annotations


def test_running_line_names_tasks_oldest_first_with_their_time():
    from agent.executor import Task
    from agent.runner import RUNNING_SAY_S, running_line
    from sim_backends.base import EvalInput

    a = Task("r1", "esf-refined", {}, EvalInput("c1ccc2cc3ccccc3cc2c1"), submitted_at=1000.0)
    b = Task("r2", "xtb-crystal", {}, EvalInput("c1ccccc1", structure_id="m7-m0003"), submitted_at=900.0)
    line = running_line([a, b], {"c1ccc2cc3ccccc3cc2c1": "anthracene"}, now=1100.0)
    assert line == ("crystal-agent: running: xtb-crystal c1ccccc1 m7-m0003 (3:20), "
                    "esf-refined anthracene (1:40)")
    assert running_line([], {}, now=0.0) == "crystal-agent: running: nothing in flight"
    assert RUNNING_SAY_S <= 60
