"""The CSP search's convergence and force-field warnings in `status`, whatever the run's
state, each naming the level it is about (newuser46a #2, #3).

* #3: `status` of a stopped run (the structure results are saved at the end of a run, so
  there were none) dropped the "CSP search ... NOT converged" line and the force-field
  warnings, and said nothing about the ranks it could not give;
* #2: the force-field warnings were printed right above refined-level energies with nothing
  saying they are about the force field.

A real Campaign with replayed backends in this process (tests/agent/test_stages.py's: a stored
formamide landscape and its stored periodic GFN2-xTB lattice energies), the replayed CSP's
result given the convergence record, level and warnings ``csp-ff`` stores for it."""

from __future__ import annotations

import pytest

from conftest import write_config
from test_stages import BODY, REFINE

NAME = "w"
CONVERGENCE = {"converged": False, "stopped_by": "budget",
               "per_space_group": {"P2_1/c": {"n_trials": 250, "converged": False},
                                   "P-1": {"n_trials": 150, "converged": True}}}
CSP_LINE = ("  CSP search: 400 trials in 2 space groups, NOT converged in 1 space group (stopped by the trial "
            "budget; WARNING: raise n_trials)")


@pytest.fixture
def csp_ff_like(monkeypatch):
    """replay-csp results carrying what csp-ff stores: ``extra["csp"]`` with the convergence
    record and the landscape's warnings (formamide with resp-lpn charges: the N-H note), and
    the force-field ``level``."""
    from sim_backends.csp.domain import model_warnings
    from sim_backends.csp.landscape import ff_level
    from sim_backends.replay import ReplayCspBackend

    original = ReplayCspBackend._evaluate
    warnings = model_warnings(["C", "N", "O", "H_W4"], [], smiles="NC=O",
                              charge_method="resp-lpn-pyscf HF/6-31G*")
    assert len(warnings) == 1

    def evaluate(self, inp):
        values, extra = original(self, inp)
        return values, {**extra, "csp": {"convergence": CONVERGENCE, "warnings": warnings},
                        "level": ff_level("resp-lpn")}

    monkeypatch.setattr(ReplayCspBackend, "_evaluate", evaluate)
    return warnings


def _campaign(tmp_path):
    from agent.campaign import Campaign
    from agent.config import load_config

    cfg = load_config(write_config(tmp_path, ["NC=O formamide", "CC(=O)O acetic_acid"], BODY + REFINE, name=NAME))
    return Campaign.create(cfg, tmp_path / "runs")


def _step(camp, until):
    """Ask and tell in this process until ``until(camp)`` (or the end); True at the end."""
    from sim_backends.registry import get_backend

    while not until(camp):
        tasks = camp.ask(2)
        if not tasks:
            return True
        for t in tasks:
            camp.tell(t, get_backend(t.backend, **t.backend_params).evaluate(t.inp))
    return False


def _n_refined(camp) -> int:
    return sum(ev.ok for ev in camp.store.evaluations("replay-crystal"))


def _status(tmp_path, capsys) -> list[str]:
    from agent.cli import main

    assert main(["status", NAME, "--runs-dir", str(tmp_path / "runs")]) == 0
    return capsys.readouterr().out.splitlines()


def _csp_lines(lines: list[str]) -> list[str]:
    return [ln for ln in lines if ln.startswith(("  CSP search", "  force-field warnings", "  WARNING"))]


def test_status_of_a_stopped_run_has_the_csp_warnings_named_by_level(tmp_path, capsys, csp_ff_like):
    from agent.summary import save_structure_results
    from sim_backends.csp.landscape import ff_level

    (note,) = csp_ff_like
    camp = _campaign(tmp_path)
    try:
        # stopped after the CSP, before any refinement: the force-field structures, ranked
        assert not _step(camp, lambda c: c.stage is not None and c.stage.landscapes)
        lines = _status(tmp_path, capsys)
        assert CSP_LINE in lines, lines
        assert (f"  force-field warnings: about the CSP search's own level, replay-csp ({ff_level('resp-lpn')}):"
                in lines), lines
        assert f"  WARNING (replay-csp force field): {note}" in lines
        assert any(ln.startswith("  best at W99 exp-6") and "(nothing refined yet)" in ln for ln in lines), lines
        assert not any("ranked among themselves" in ln for ln in lines)

        # stopped after two refinements (nothing saved): the same lines, the force field's level named
        # against the refined energies below, and the missing ranks said
        assert not _step(camp, lambda c: _n_refined(c) >= 2)
        stopped = _status(tmp_path, capsys)
        refined = camp.stage.refine
        from agent.summary import level_of_theory

        head = (f"  force-field warnings: about the CSP search's own level, replay-csp ({ff_level('resp-lpn')}); "
                f"the E_latt listed below are at {level_of_theory(refined)}, not at this force field:")
        assert _csp_lines(stopped) == [CSP_LINE, head, f"  WARNING (replay-csp force field): {note}"], stopped
        (ranks,) = [ln for ln in stopped if "ranked among themselves" in ln]
        assert "saved when the run ends" in ranks and "crystal-agent report" in ranks

        # at the end, with the results saved as a run saves them: the same warnings, ranks given
        assert _step(camp, lambda c: False)
        save_structure_results(camp)
        finished = _status(tmp_path, capsys)
        assert _csp_lines(finished) == _csp_lines(stopped)
        assert not any("ranked among themselves" in ln for ln in finished)
    finally:
        camp.close()
