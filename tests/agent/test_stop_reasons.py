"""The stop reason names the limit that bound (newuser35 item 7): after ``resume
--max-evaluations N`` a campaign whose structure stage had spent its ``[structures]
budget_evaluations`` said "no candidate left to evaluate" with most structures uncomputed;
``refine NAME --budget N`` raised the total budget without saying so.

A real Campaign, replayed backends (test_stages' formamide landscape: 12 structures, a
structure-stage budget of 7 of 12 evaluations), the local executor."""

from __future__ import annotations

import pytest

from test_stages import _run


@pytest.fixture
def local_executor(monkeypatch):
    """The command line's campaigns run on the local executor (no Ray)."""
    import agent.runner
    from agent.local_executor import LocalExecutor

    monkeypatch.setattr(agent.runner, "make_executor", lambda cfg, address=None: LocalExecutor(slots=2))


def test_stop_reason_names_the_structure_stage_budget(tmp_path, capsys, local_executor):
    from agent.campaign import Campaign
    from agent.cli import main
    from agent.local_executor import LocalExecutor
    from agent.runner import run_campaign

    camp, status = _run(tmp_path, name="sr")
    try:
        land = next(iter(camp.stage.landscapes.values()))
        assert status.stop_reason == "evaluation budget reached (12)"
        assert camp.n_by_stage["structures"] == 7 and len(land.computed) < len(land.ids)
    finally:
        camp.close()
    runs = tmp_path / "runs"

    # more total evaluations: the molecule stage has nothing left, the structure stage's share binds
    camp = Campaign.open("sr", runs, max_evaluations=14)
    try:
        status = run_campaign(camp, runs, progress=False, executor=LocalExecutor(slots=2))
        assert status.n_evaluations == 12
        assert status.stop_reason.startswith("structure-stage budget reached (7 evaluations"), \
            status.stop_reason
        assert "crystal-agent refine sr --budget N" in status.stop_reason
        assert "no candidate left" not in status.stop_reason
        # fresh39 M1: when the compute budget left fits no structure-stage task as well, the
        # reason names both limits (it named only the CPU one, though raising it alone
        # would have run nothing more)
        cpu = ("compute budget: no structure-stage evaluation fits the 1.94 CPU s left (the cheapest, "
               "mobility-xtb, needs 17.2 CPU s with its 90% cost margin)")
        camp.stage.exhausted_reason = lambda pending=(): cpu
        both = camp.stop_reason()
        assert both.startswith("structure-stage budget reached (7 evaluations"), both
        assert "and the compute budget: no structure-stage evaluation fits the 1.94 CPU s left" in both
        assert "--budget N" in both and "--cpu-hours H" in both
        # newuser51 #5: with a compute budget, the reason says how much CPU is left for N more
        camp.stage.exhausted_reason = lambda pending=(): ""
        camp.cfg = camp.cfg.model_copy(update={"max_cpu_hours": 1.0})
        one = camp.stop_reason()
        assert one.startswith("structure-stage budget reached (7 evaluations"), one
        assert f", with {3600 - camp.spent_cpu_s:.0f} of its 3600 CPU s left (refine --cpu-hours H adds CPU)" in one
    finally:
        camp.close()

    capsys.readouterr()
    assert main(["refine", "sr", "--runs-dir", str(runs), "--budget", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    changed = [ln for ln in out.splitlines() if ln.startswith("refine: sr:")]
    assert len(changed) == 1, out
    # N more than done (newuser38 M3)
    assert "budget_evaluations) 7 -> 9 (7 done + 2)" in changed[0] and "max_evaluations) 14 -> 16" in changed[0], \
        changed[0]
    assert "structure-stage budget reached (9 evaluations" in out, out
    assert "no candidate left" not in out
    camp = Campaign.open("sr", runs, readonly=True)
    try:
        assert camp.n_evaluations == 14 and camp.cfg.max_evaluations == 16
    finally:
        camp.close()


def test_refine_with_nothing_to_do_says_why_in_one_line(tmp_path, capsys, local_executor):
    """newuser42 item 10: `refine NAME` (or `--budget 0`) with the structure-stage budget spent
    printed the whole status, then a line giving the `--budget N` hint twice. Now only that
    line, the hint once, exit 0, nothing evaluated."""
    from agent.campaign import Campaign
    from agent.cli import main
    from agent.local_executor import LocalExecutor
    from agent.runner import run_campaign

    camp, _ = _run(tmp_path, name="sr")
    camp.close()
    runs = tmp_path / "runs"
    camp = Campaign.open("sr", runs, max_evaluations=14)  # the structure stage's share binds
    try:
        status = run_campaign(camp, runs, progress=False, executor=LocalExecutor(slots=2))
        assert status.stop_reason.startswith("structure-stage budget reached"), status.stop_reason
    finally:
        camp.close()
    for extra in ([], ["--budget", "0"]):
        capsys.readouterr()
        assert main(["refine", "sr", "--runs-dir", str(runs), "--quiet", *extra]) == 0
        out, err = capsys.readouterr()
        assert out == "", out
        assert err.startswith("crystal-agent: nothing refined: structure-stage budget reached (7 evaluations")
        assert err.count("\n") == 1 and err.count("--budget N") == 1, err
    camp = Campaign.open("sr", runs, readonly=True)
    try:
        assert camp.n_evaluations == 12
    finally:
        camp.close()


def test_no_candidate_left_when_every_structure_is_computed(tmp_path):
    """A structure stage with its budget to spare that computed its whole landscape still
    says there is nothing left (the share is not what bound)."""
    from test_stages import BODY, REFINE

    body = (BODY.replace("max_evaluations = 12", "max_evaluations = 40")
            .replace("budget_evaluations = 7", "budget_evaluations = 30"))
    camp, status = _run(tmp_path, body=body + REFINE, name="all")
    try:
        land = next(iter(camp.stage.landscapes.values()))
        assert len(set(land.computed) | land.failed) == len(land.ids)
        assert status.stop_reason == "no candidate left to evaluate", status.stop_reason
    finally:
        camp.close()


def test_refine_after_the_cpu_budget_is_spent(tmp_path, capsys, local_executor):
    """newuser37 M6: ``refine --budget N`` on a campaign whose CPU budget was spent raised the
    stored evaluation budgets, refined nothing and hinted at ``--budget``. Now it is refused in
    one line with the stored config unchanged; ``--cpu-hours H`` raises max_cpu_hours and
    refines."""
    from agent.campaign import Campaign
    from agent.cli import main
    from agent.config import config_to_toml

    camp, status = _run(tmp_path, name="cpu")
    runs = tmp_path / "runs"
    try:
        spent = camp.spent_cpu_s
        assert spent > 0
        cfg = camp.cfg.model_copy(update={"max_cpu_hours": spent / 3600 / 2, "max_evaluations": 16})
        camp.store.set_meta("config_toml", config_to_toml(cfg))
    finally:
        camp.close()
    stored = Campaign.open("cpu", runs, readonly=True)
    before = stored.store.get_meta("config_toml")
    stored.close()

    capsys.readouterr()
    assert main(["refine", "cpu", "--runs-dir", str(runs), "--budget", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "has spent its CPU budget" in err and "--cpu-hours H" in err and err.count("\n") == 1, err
    # newuser38 C3: "(605 of 0.15 CPU h x 3600 s)"
    assert f" of {spent / 2:.0f} CPU s); " in err and "CPU h x" not in err, err
    camp = Campaign.open("cpu", runs, readonly=True)
    try:
        assert camp.store.get_meta("config_toml") == before  # nothing changed
    finally:
        camp.close()

    assert main(["refine", "cpu", "--runs-dir", str(runs), "--cpu-hours", "1", "--budget", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "CPU budget (max_cpu_hours)" in out and "(stored: a later resume continues to it)" in out, out
    camp = Campaign.open("cpu", runs, readonly=True)
    try:
        assert camp.cfg.max_cpu_hours == pytest.approx(spent / 3600 / 2 + 1)
        assert camp.n_by_stage["structures"] == 9  # refined: the two added evaluations ran
    finally:
        camp.close()


def test_refine_counts_what_a_killed_run_left_unfinished(tmp_path, capsys, local_executor):
    """The CPU a killed run's unfinished tasks will be charged (``Store.unsettled_cpu_s``,
    charged when the next run starts) counts when ``refine`` checks whether the CPU budget
    is spent: refused in one line, not started only to stop on the budget at once."""
    from agent.campaign import Campaign
    from agent.cli import main
    from agent.config import config_to_toml

    camp, status = _run(tmp_path, name="kill")
    runs = tmp_path / "runs"
    try:
        spent = camp.spent_cpu_s
        # 5 CPU s of budget left, and a task the "killed" run left running for 10 s
        cfg = camp.cfg.model_copy(update={"max_cpu_hours": (spent + 5.0) / 3600, "max_evaluations": 16})
        camp.store.set_meta("config_toml", config_to_toml(cfg))
        camp.store.note_submitted("killed-task", 1.0)
        t = camp.store.events("submitted")[-1]["ts"]
        camp.store.set_meta("heartbeat", repr(t + 10.0))
    finally:
        camp.close()
    capsys.readouterr()
    assert main(["refine", "kill", "--runs-dir", str(runs), "--budget", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "has spent its CPU budget" in err and err.count("\n") == 1, err



def test_resume_after_the_cpu_budget_says_nothing_ran_and_cpu_hours_continues(tmp_path, capsys, local_executor):
    """newuser45a #4: ``resume --max-evaluations N`` on a campaign whose CPU budget binds ran
    nothing and said nothing about why; now one line names the budget and ``--cpu-hours``,
    which raises the stored budget and runs."""
    from agent.campaign import Campaign
    from agent.cli import main
    from agent.config import config_to_toml

    camp, _ = _run(tmp_path, name="rcpu")
    runs = tmp_path / "runs"
    try:
        spent = camp.spent_cpu_s
        n_done = camp.n_evaluations
        cfg = camp.cfg.model_copy(update={"max_cpu_hours": spent / 3600 / 2, "max_evaluations": 16})
        camp.store.set_meta("config_toml", config_to_toml(cfg))
    finally:
        camp.close()
    capsys.readouterr()
    assert main(["resume", "rcpu", "--runs-dir", str(runs), "--max-evaluations", "20", "--quiet"]) == 0
    err = capsys.readouterr().err
    line = [ln for ln in err.splitlines() if "nothing to resume" in ln]
    assert line and "compute budget" in line[0] and "--cpu-hours H" in line[0], err
    assert main(["resume", "rcpu", "--runs-dir", str(runs), "--cpu-hours", "1", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "resume: rcpu: CPU budget (max_cpu_hours)" in out
    with Campaign.open("rcpu", runs, readonly=True) as camp:
        assert camp.cfg.max_cpu_hours == pytest.approx(spent / 3600 / 2 + 1)
        # the CPU budget no longer binds: what binds now is said (this landscape's structure
        # stage has its evaluation budget spent) or the campaign went on
        assert camp.n_evaluations > n_done or ("nothing to resume" in err and "compute budget" not in err), err


def test_the_share_reason_says_what_stops_the_molecule_stage_too(tmp_path):
    """57c317d (newuser45c #7): when the structure stage's share binds, the stop reason also
    gives the molecule stage's own reason (here its top level's budget_evaluations spent with
    molecules never evaluated), so a larger --max-evaluations is not expected to evaluate more
    molecules; and it evaluates none. Stored reorganisation energies (a table written here,
    formamide the best at both levels) at two molecule levels, test_stages' formamide landscape."""
    from test_stages import BODY, REFINE

    from agent.campaign import Campaign
    from agent.local_executor import LocalExecutor
    from agent.runner import run_campaign

    table = tmp_path / "reorg.csv"
    table.write_text("smiles,name,xtb_reorg_kjmol,dft_reorg_kjmol,xtb_wall_s,dft_wall_s\n"
                     "NC=O,formamide,5.0,6.0,1.0,100.0\nCC(=O)O,acetic_acid,40.0,45.0,1.0,100.0\n"
                     "CCCCO,butanol,50.0,55.0,1.0,100.0\nc1ccccc1,benzene,30.0,35.0,1.0,100.0\n"
                     "OC(=O)C(=O)O,oxalic_acid,60.0,65.0,1.0,100.0\n")
    levels = (f'[[backends]]\nname = "replay-xtb-reorg"\nparams = {{table = "{table}"}}\n'
              f'[[backends]]\nname = "replay-dft-reorg"\nparams = {{table = "{table}"}}\nbudget_evaluations = 2\n')
    body = (BODY.replace('objective = "n_heavy_atoms"', 'objective = "reorg_energy_kjmol"\ndirection = "minimize"')
            .replace("max_evaluations = 12", "max_evaluations = 30")
            .replace('[[backends]]\nname = "diagnostic"\n', levels))
    assert "replay-dft-reorg" in body and "diagnostic" not in body
    camp, status = _run(tmp_path, body=body + REFINE, name="both")
    runs = tmp_path / "runs"
    try:
        assert camp.n_by_stage == {"molecule": 5, "structures": 7} and status.n_evaluations < 30
        assert camp.molecules.n_by_backend["replay-dft-reorg"] == 2
        never = len(camp.molecules.smiles) - len({e.molecule_id for e in camp.store.evaluations()
                                                  if e.stage == "molecule"})
        assert never > 0  # molecules left that a larger budget might be expected to reach
        mol = "replay-dft-reorg budget spent (2 evaluations); cheaper levels can no longer change the best value"
        assert camp.molecules.exhausted_reason() == mol
        assert status.stop_reason == (
            "structure-stage budget reached (7 evaluations, [structures] budget_evaluations); "
            f"`crystal-agent refine both --budget N` adds more; the molecule stage: {mol}"), status.stop_reason
    finally:
        camp.close()
    # what the reason says: more total evaluations evaluate nothing more
    camp = Campaign.open("both", runs, max_evaluations=40)
    try:
        again = run_campaign(camp, runs, progress=False, executor=LocalExecutor(slots=2))
        assert again.n_evaluations == status.n_evaluations
        assert again.stop_reason.endswith(f"; the molecule stage: {mol}"), again.stop_reason
    finally:
        camp.close()
