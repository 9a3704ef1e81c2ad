"""The Ray executor against the diagnostic backend, which fails on purpose."""

import pytest

from agent.executor import RayExecutor, Task
from sim_backends.base import EvalInput


def _drain(ex):
    out = {}
    while ex.n_in_flight:
        for c in ex.wait(0.5):
            out[c.task.request_id] = c
    return out


def test_failures_become_results(ray_local):
    ex = RayExecutor(task_timeout_s=4.0, max_retries=1)
    ex.start()
    for rid, params in {
        "ok": {"sleep_s": 0.1},
        "raise": {"mode": "raise"},
        "crash": {"mode": "exit"},
        "slow": {"sleep_s": 60},
        "flaky": {"mode": "run_error"},
    }.items():
        ex.submit(Task(rid, "diagnostic", {}, EvalInput("c1ccccc1O", params=params)))
    out = _drain(ex)
    assert out["ok"].result.ok and out["ok"].result.values["n_heavy_atoms"] == 7
    assert out["raise"].result.reason.startswith("error: ZeroDivisionError")
    assert out["crash"].result.reason.startswith("worker died")
    assert out["crash"].task.n_attempts == 2  # retried once, then recorded
    assert out["slow"].result.reason.startswith("timeout")
    assert out["flaky"].task.n_attempts == 2 and out["flaky"].result.reason.startswith("run:")
    # the executor is still usable after a crash and a timeout
    ex.submit(Task("after", "diagnostic", {}, EvalInput("CC")))
    assert _drain(ex)["after"].result.ok


def test_uneven_tasks_keep_workers_busy(ray_local):
    """With a long and many short tasks, short ones finish while the long one runs."""
    ex = RayExecutor(task_timeout_s=60)
    ex.start()
    ex.submit(Task("long", "diagnostic", {}, EvalInput("C", params={"sleep_s": 8.0})))
    order = []
    for i in range(6):
        ex.submit(Task(f"s{i}", "diagnostic", {}, EvalInput("C", params={"sleep_s": 0.2})))
    while ex.n_in_flight:
        order += [c.task.request_id for c in ex.wait(0.5)]
    assert order[-1] == "long"
