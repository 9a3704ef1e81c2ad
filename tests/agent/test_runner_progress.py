"""The campaign progress where stdout is not a terminal (newuser34: the rich bar was drawn
once, squeezed to ``lab34 ━━━━ 13/… 0:0… best lambda+ ...``): plain, complete lines, on
stderr as the README says (newuser38 C1: they were on stdout, mixed with the results)."""

from __future__ import annotations

from conftest import write_config
from test_bad_input import DIAG


def test_run_in_a_non_terminal_prints_plain_progress_lines_on_stderr(tmp_path, capsys):
    from agent.campaign import Campaign
    from agent.config import load_config
    from agent.local_executor import LocalExecutor
    from agent.runner import run_campaign

    cfg = load_config(write_config(tmp_path, ["CCO ethanol", "c1ccccc1 benzene", "CC(=O)O acid",
                                              "c1ccncc1 pyridine", "CCCC butane"],
                                  DIAG.format(n=4, timeout=10, params="{}"), name="plain"))
    camp = Campaign.create(cfg, tmp_path / "runs")
    try:
        run_campaign(camp, tmp_path / "runs", progress=True, executor=LocalExecutor(slots=2))
    finally:
        camp.close()
    captured = capsys.readouterr()
    assert "evaluations" not in captured.out, captured.out  # stdout keeps the results only
    out = captured.err
    lines = [ln for ln in out.splitlines() if ln.startswith("plain: ")]
    assert lines, out
    assert "━" not in out and "…" not in out
    last = lines[-1]
    assert last.startswith("plain: 4/4 evaluations, 0:00:") and " elapsed, best " in last, last
    assert last.endswith(", failed 0"), last


def test_plain_progress_throttles_but_always_shows_the_last(capsys):
    from agent.runner import PlainProgress

    with PlainProgress() as bar:
        task = bar.add_task("c", total=10, completed=0, info="")
        for k in range(1, 10):
            bar.update(task, completed=k, info=f"best x = {k}  failed 0")
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines[0].startswith("c: 1/10 evaluations") and lines[-1].startswith("c: 9/10 evaluations")
    assert len(lines) == 2 and lines[-1].endswith("best x = 9, failed 0")


def test_progress_shows_the_cpu_spent_of_a_cpu_budget():
    """fresh39 C3: the bar counts to max_evaluations and stopped at 140/200 when the CPU
    budget bound, with no sign of it. With a CPU budget the text beside the bar gives the
    CPU spent of it; without one, nothing about CPU."""
    from types import SimpleNamespace

    from agent.runner import progress_info

    def camp(max_cpu_hours, best):
        cfg = SimpleNamespace(max_cpu_hours=max_cpu_hours, objective="log10_landscape_mobility_hole")
        molecules = SimpleNamespace(names=["benzene", "coronene"],
                                    best_index=lambda: None if best is None else (1, best))
        return SimpleNamespace(cfg=cfg, spent_cpu_s=718.1, n_failed=0, molecules=molecules)

    # ... and names the best molecule (newuser45a #12)
    assert progress_info(camp(0.2, 0.59), "log10 mu_h (esf-refined) =") == (
        "CPU 718 of 720 s (100 %)  best log10 mu_h (esf-refined) = 0.59 (= 3.9 cm2/(V s)) (coronene)  failed 0")
    assert progress_info(camp(0.2, None), "x =") == "CPU 718 of 720 s (100 %)  failed 0"
    assert progress_info(camp(None, None), "x =") == "failed 0"
