"""The campaign runner's Ctrl-C handler, in process (the review of stop 49 found it untested
there; ``test_kill_resume`` signals a child process).

While :func:`agent.runner.run_campaign` runs in the main thread, SIGINT is recorded like
SIGTERM (:func:`agent.interrupt.on_sigterm`, so an import's bare ``except:`` cannot lose it);
when the run ends the handlers it found are back. A SIGINT handler of the caller's own is
left alone during the run, and a SIGINT sent in the middle of a run stops it with a one-line
:class:`~agent.runner.CampaignInterrupted`, its completed results kept, and a resume finishes it.
"""

from __future__ import annotations

import os
import signal

import pytest

from test_api_guards import _cfg


class _Watching:
    """A LocalExecutor that notes the SIGINT handler in force at each submission and can
    send itself a SIGINT at the n-th one."""

    def __init__(self, interrupt_at: int | None = None) -> None:
        from agent.local_executor import LocalExecutor

        self.inner, self.seen, self.interrupt_at, self.n = LocalExecutor(slots=1), [], interrupt_at, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def submit(self, task) -> None:
        self.seen.append(signal.getsignal(signal.SIGINT))
        self.n += 1
        self.inner.submit(task)
        if self.n == self.interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture
def restore_sigint():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGINT, before[0])
    signal.signal(signal.SIGTERM, before[1])


def test_sigint_recorded_during_the_run_and_restored_after(tmp_path, restore_sigint):
    from agent import interrupt
    from agent.campaign import Campaign
    from agent.runner import run_campaign

    signal.signal(signal.SIGINT, signal.default_int_handler)
    camp = Campaign.create(_cfg(tmp_path, name="sigint"), tmp_path / "runs")
    ex = _Watching()
    try:
        assert run_campaign(camp, progress=False, executor=ex).n_evaluations == 3
    finally:
        camp.close()
    assert ex.seen and all(h is interrupt.on_sigterm for h in ex.seen), ex.seen
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert not interrupt.requested()


def test_a_callers_own_sigint_handler_is_left_alone(tmp_path, restore_sigint):
    from agent.campaign import Campaign
    from agent.runner import run_campaign

    def mine(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, mine)
    camp = Campaign.create(_cfg(tmp_path, name="mine"), tmp_path / "runs")
    ex = _Watching()
    try:
        run_campaign(camp, progress=False, executor=ex)
    finally:
        camp.close()
    assert ex.seen and all(h is mine for h in ex.seen)
    assert signal.getsignal(signal.SIGINT) is mine


def test_sigint_mid_run_stops_it_interrupted_and_keeps_results(tmp_path, restore_sigint):
    from agent import interrupt
    from agent.campaign import Campaign
    from agent.runner import CampaignInterrupted, run_campaign

    signal.signal(signal.SIGINT, signal.default_int_handler)
    runs = tmp_path / "runs"
    camp = Campaign.create(_cfg(tmp_path, name="stopme"), runs)
    ex = _Watching(interrupt_at=2)
    try:
        with pytest.raises(CampaignInterrupted, match=r"^campaign 'stopme' interrupted after 1 evaluations; "
                                                      r"continue with `crystal-agent resume stopme`$"):
            run_campaign(camp, progress=False, executor=ex)
        assert camp.n_evaluations >= 1  # the first task's result is kept
        assert camp.store.get_meta("finished") != "1"
    finally:
        camp.close()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler and not interrupt.requested()
    camp = Campaign.open("stopme", runs)
    try:
        assert run_campaign(camp, progress=False, executor=_Watching()).n_evaluations == 3  # resumes
    finally:
        camp.close()
