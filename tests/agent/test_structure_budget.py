"""The structure stage starts a task only when it fits the compute budget left (newuser37
note: the demo ended 14 % over its CPU budget after a periodic xTB task started near the
end). Like the molecule stage, a task is started when its expected CPU cost times its
level's 90 % cost margin fits what is left; the run then stops with a reason that names
the budget, not "no candidate left"."""

from conftest import write_config
from test_stages import BODY, POOL, REFINE
from test_stop_reasons import local_executor  # noqa: F401 (fixture)


def _run(tmp_path, hours):
    from agent.campaign import Campaign
    from agent.config import load_config
    from agent.local_executor import LocalExecutor
    from agent.runner import run_campaign

    body = BODY + REFINE
    if hours is not None:
        body = body.replace("max_evaluations = 12", f"max_evaluations = 12\nmax_cpu_hours = {hours}")
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = load_config(write_config(tmp_path, POOL, body, name="b"))
    camp = Campaign.create(cfg, tmp_path / "runs")
    try:
        status = run_campaign(camp, tmp_path / "runs", progress=False, executor=LocalExecutor(slots=2))
        return status, camp.store.spent_cpu_s(), [e for e in camp.store.evaluations() if e.structure_id]
    finally:
        camp.close()


def test_structure_tasks_start_only_within_the_budget(tmp_path):
    # without a budget the replayed periodic xTB level charges 11.6-15.2 CPU s a structure
    _, free_spent, free = _run(tmp_path / "free", None)
    assert len(free) >= 4 and free_spent > 36.0
    # 36 CPU s: three structures would fit without a margin; the stage keeps inside it
    status, spent, refined = _run(tmp_path / "budget", 0.01)
    assert 0 < len(refined) < len(free)
    assert spent <= 36.0
    assert status.stop_reason.startswith("compute budget: no structure-stage evaluation fits"), status.stop_reason
    assert "replay-crystal" in status.stop_reason and "CPU s left" in status.stop_reason


def test_refine_budget_n_runs_n_more_after_a_cpu_stop(tmp_path, capsys, local_executor):
    """newuser38 M3: after a CPU-budget stop with structure-stage evaluations left,
    ``refine --budget 1`` ran two (it raised the configured cap, not what was done)."""
    from agent.campaign import Campaign
    from agent.cli import main

    status, _, _ = _run(tmp_path, 0.01)
    assert status.stop_reason.startswith("compute budget")
    runs = tmp_path / "runs"
    camp = Campaign.open("b", runs, readonly=True)
    n_before, cap = camp.n_by_stage["structures"], camp.cfg.structures.budget_evaluations
    share = camp.cfg.max_evaluations - cap  # the molecule stage's evaluations
    camp.close()
    assert n_before < cap - 1  # room left under the cap, so the old rule ran more than asked
    capsys.readouterr()
    assert main(["refine", "b", "--runs-dir", str(runs), "--budget", "1", "--cpu-hours", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"{cap} -> {n_before + 1} ({n_before} done + 1)" in out, out
    camp = Campaign.open("b", runs, readonly=True)
    try:
        assert camp.n_by_stage["structures"] == n_before + 1
        # the molecule stage got no extra evaluations for a later resume (review of 9a0cf9c)
        assert camp.cfg.max_evaluations - camp.cfg.structures.budget_evaluations == share
    finally:
        camp.close()


def test_refine_refuses_a_cpu_budget_above_the_ceiling(tmp_path, capsys, local_executor):
    """``refine --cpu-hours`` that would pass the config's ceiling stored a config that no
    longer opened (status and resume exit 2): refused in one line, nothing stored."""
    from agent.campaign import Campaign
    from agent.cli import main

    _run(tmp_path, 0.01)
    runs = tmp_path / "runs"
    before = Campaign.open("b", runs, readonly=True)
    text = before.store.get_meta("config_toml")
    before.close()
    capsys.readouterr()
    assert main(["refine", "b", "--runs-dir", str(runs), "--cpu-hours", "2e6", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "above the ceiling" in err and err.count("\n") == 1, err
    camp = Campaign.open("b", runs, readonly=True)
    try:
        assert camp.store.get_meta("config_toml") == text
    finally:
        camp.close()


def test_an_unaffordable_csp_stops_with_the_budget_reason(tmp_path):
    """When the only work left (a CSP priced at 1,000 CPU s) does not fit the budget, the
    stage is exhausted and the run says why (it said "acquisition proposed nothing more")."""
    from agent.campaign import Campaign
    from agent.config import load_config
    from agent.local_executor import LocalExecutor
    from agent.runner import run_campaign

    body = (BODY + REFINE).replace("max_evaluations = 12", "max_evaluations = 12\nmax_cpu_hours = 0.01")
    body = body.replace("n = 12}}", "n = 12}, cost_s = 1000}")
    assert "cost_s = 1000" in body
    cfg = load_config(write_config(tmp_path, POOL, body, name="c"))
    camp = Campaign.create(cfg, tmp_path / "runs")
    try:
        status = run_campaign(camp, tmp_path / "runs", progress=False, executor=LocalExecutor(slots=2))
        assert camp.n_by_stage["structures"] == 0
    finally:
        camp.close()
    assert status.stop_reason.startswith("compute budget: no structure-stage evaluation fits"), status.stop_reason
    assert "replay-csp" in status.stop_reason


def test_the_cost_margin_learns_only_from_tasks_that_succeeded_and_were_charged():
    """A fast failure (0.05 s against a 12 s estimate) or a replay charged 0 s widened the
    cost margin sevenfold and turned work away with CPU left (review of 95c96de)."""
    from agent.stages.costs import CostModel
    from agent.stages.costs import cost_fit_factor
    from sim_backends.base import EvalInput

    model = CostModel("x", {}, cost_s=12.0)
    for cpu in (11.0, 13.0, 12.5, 11.5):
        model.observe(EvalInput("C"), cpu)
    margin = cost_fit_factor(model.log_ratios)
    model.observe(EvalInput("C"), 0.05, ok=False)
    model.observe(EvalInput("C"), 0.0)
    assert len(model.log_ratios) == 4 and cost_fit_factor(model.log_ratios) == margin
    assert len(model.measured) == 6  # both still count in the measured cost


def test_an_evaluation_budget_that_binds_does_not_trade_the_global_minimum_for_cheaper_cells(tmp_path):
    """newuser43 F3: with 3 refinements allowed (``budget_evaluations = 4``: the CSP and 3)
    and CPU to spare, cost weighting chose the cheap level's ranks 2, 7 and 8 (9.3 CPU s
    each) over its global minimum (16 CPU s), leaving CPU unspent. When the evaluation
    budget binds, an evaluation is priced at the CPU left per evaluation left, so the
    acquisition weighs the structures by their chance of being low in energy: ranks 1-3."""
    import numpy as np

    from agent.campaign import Campaign
    from agent.config import load_config
    from agent.local_executor import LocalExecutor
    from agent.runner import run_campaign

    body = (BODY + REFINE).replace("max_evaluations = 12", "max_evaluations = 12\nmax_cpu_hours = 1").replace(
        "budget_evaluations = 7", "budget_evaluations = 4").replace("batch_size = 2", "batch_size = 1")
    cfg = load_config(write_config(tmp_path, POOL, body, name="slots"))
    camp = Campaign.create(cfg, tmp_path / "runs")
    try:
        status = run_campaign(camp, tmp_path / "runs", progress=False, executor=LocalExecutor(slots=1))
        stage = camp.stages["structures"]
        land = next(iter(stage.landscapes.values()))
        rank = {land.ids[i]: r + 1 for r, i in enumerate(np.argsort(land.ff_kjmol, kind="stable"))}
        refined = [e.structure_id for e in camp.store.evaluations() if e.structure_id]
        assert sorted(rank[s] for s in refined) == [1, 2, 3], refined
        assert camp.store.spent_cpu_s() < 3600  # the evaluation budget, not the CPU, ended it
        assert "budget_evaluations" in status.stop_reason or "evaluation" in status.stop_reason, status.stop_reason
    finally:
        camp.close()
