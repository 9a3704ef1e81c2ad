"""Plain progress lines on a non-terminal have a trailing edge (newuser45b #6): an update
throttled within ``every_s`` of the last line is printed by the first ``update`` or ``tick``
after the window, not dropped until the next result (a log read 1/40 for 3.5 min while 3
evaluations were done). The clock is injected: no sleeps, no timing assertions."""

from __future__ import annotations


class Clock:
    def __init__(self) -> None:
        self.t = 100.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.t


def _lines(capsys) -> list[str]:
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err.splitlines()


def test_a_throttled_update_is_printed_by_the_first_tick_after_the_window(capsys):
    from agent.runner import PlainProgress

    clock = Clock()
    bar = PlainProgress(clock=clock)
    task = bar.add_task("c", total=40, completed=0, info="")
    bar.update(task, completed=1, info="failed 0")
    assert [ln.split(",")[0] for ln in _lines(capsys)] == ["c: 1/40 evaluations"]
    clock.t += 2.0
    bar.update(task, completed=2, info="failed 0")
    clock.t += 3.0
    bar.update(task, completed=3, info="failed 1")
    clock.t += 4.0  # 9 s after the last line: still inside the window
    bar.tick()
    assert _lines(capsys) == []
    clock.t += 1.0  # 10 s: the window has passed, no new result
    bar.tick()
    assert _lines(capsys) == ["c: 3/40 evaluations, 0:00:10 elapsed, failed 1"]
    clock.t += 60.0
    bar.tick()  # nothing waiting: no line again
    assert _lines(capsys) == []


def test_tick_without_a_pending_update_does_not_read_the_clock(capsys):
    from agent.runner import PlainProgress

    clock = Clock()
    bar = PlainProgress(clock=clock)
    task = bar.add_task("c", total=5)
    bar.update(task, completed=1)
    _lines(capsys)
    reads = clock.reads
    for _ in range(100):
        bar.tick()
    assert clock.reads == reads


def test_a_throttled_update_is_printed_by_the_next_update_after_the_window(capsys):
    from agent.runner import PlainProgress

    clock = Clock()
    bar = PlainProgress(clock=clock)
    task = bar.add_task("c", total=40)
    bar.update(task, completed=1)
    clock.t += 1.0
    bar.update(task, completed=2)
    clock.t += 15.0
    bar.update(task, completed=3)
    assert [ln.split(",")[0] for ln in _lines(capsys)] == ["c: 1/40 evaluations", "c: 3/40 evaluations"]


def test_the_last_and_a_pending_update_at_exit_are_always_printed(capsys):
    from agent.runner import PlainProgress

    clock = Clock()
    with PlainProgress(clock=clock) as bar:
        task = bar.add_task("c", total=3)
        bar.update(task, completed=1)
        bar.update(task, completed=2)  # throttled, printed on leaving
    assert [ln.split(",")[0] for ln in _lines(capsys)] == ["c: 1/3 evaluations", "c: 2/3 evaluations"]
    with PlainProgress(clock=clock) as bar:
        task = bar.add_task("c", total=3)
        bar.update(task, completed=1)
        bar.update(task, completed=3)  # the last: at once, and not again on leaving
    assert [ln.split(",")[0] for ln in _lines(capsys)] == ["c: 1/3 evaluations", "c: 3/3 evaluations"]


def test_the_run_loop_ticks_the_plain_progress(tmp_path, monkeypatch, capsys):
    """run_campaign gives PlainProgress a tick on every loop iteration (the loop wakes about
    once a second in executor.wait), so a throttled line cannot wait for the next result."""
    from conftest import write_config
    from test_bad_input import DIAG

    from agent import runner
    from agent.campaign import Campaign
    from agent.config import load_config
    from agent.local_executor import LocalExecutor

    ticks = []

    class Counting(runner.PlainProgress):
        def tick(self) -> None:
            ticks.append(len(self.pending))
            super().tick()

    monkeypatch.setattr(runner, "PlainProgress", Counting)
    cfg = load_config(write_config(tmp_path, ["CCO ethanol", "c1ccccc1 benzene", "CC(=O)O acid"],
                                   DIAG.format(n=3, timeout=10, params="{}"), name="tick"))
    camp = Campaign.create(cfg, tmp_path / "runs")
    try:
        runner.run_campaign(camp, tmp_path / "runs", progress=True, executor=LocalExecutor(slots=2))
    finally:
        camp.close()
    err = capsys.readouterr().err
    assert ticks, err
    assert [ln for ln in err.splitlines() if ln.startswith("tick: ")][-1].startswith("tick: 3/3 evaluations")
