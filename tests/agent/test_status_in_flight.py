"""newuser50 #6: `status` of a running campaign names the tasks in flight and how long each has
run (it said only ``running (pid N)`` while two refined CSPs ran for minutes)."""

from __future__ import annotations

from test_review47_store_unsettled import _store


def test_in_flight_tasks_with_their_time(tmp_path):
    store, _ = _store(tmp_path / "s.sqlite")
    with store:
        ev = {e["request_id"]: e["ts"] for e in store.events("submitted")}
        now = ev["b"] + 100.0
        assert store.in_flight_tasks(now) == [f"diagnostic of ethane ({int(now - ev['a']) // 60}:"
                                              f"{int(now - ev['a']) % 60:02d})", "csp-ff of m2-m0001 (CCC) (1:40)"]
        assert [t.rsplit(" (", 1)[0] for t in store.in_flight_tasks(now)] == store.unsettled_tasks()


def test_state_text_of_a_running_campaign():
    from agent.summary import state_text

    s = {"finished": False, "running_pid": "4242", "name": "x",
         "running_tasks": ["esf-refined of pentacene (1:40)", "esf-refined of coronene (0:12)"]}
    assert state_text(s) == "running (pid 4242); in flight: esf-refined of pentacene (1:40), esf-refined of coronene (0:12)"
    assert state_text({**s, "running_tasks": []}) == "running (pid 4242)"
