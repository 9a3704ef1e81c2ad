"""newuser43 F1: the ESF levels' lambda+ is one GFN2-xTB calculation at every fidelity.

The levels declare its level of theory (``value_levels``), the best line names it instead of
the mobility's level, and a ladder whose levels would report the objective from that one
calculation is refused when the config is checked. Real backends and the ESF data set
(data/esf) replayed through a real campaign with the local executor."""

from __future__ import annotations

import tomllib

import pytest

from agent.config import BackendConfig, ConfigError, check_runnable, parse_config

LAMBDA_LEVEL = "GFN2-xTB four-point lambda+ (tblite), gas phase"


def _cfg(tmp_path, body: str):
    (tmp_path / "pool.smi").write_text("c1ccc2ccccc2c1 naphthalene\n")
    return parse_config(tomllib.loads('name = "lam"\npool = "pool.smi"\n[tracking]\nenabled = false\n' + body),
                        base_dir=tmp_path)


def test_esf_levels_declare_the_level_of_their_lambda():
    """lambda+ is labelled with its own level, the mobility with the level's."""
    from agent.summary import level_of_theory

    for name in ("esf-proxy", "esf-landscape", "esf-refined", "replay-esf-proxy", "replay-esf-refined"):
        b = BackendConfig(name=name)
        assert level_of_theory(b, "reorg_energy_kjmol") == LAMBDA_LEVEL, name
        assert level_of_theory(b, "log10_landscape_mobility_hole") == level_of_theory(b) != LAMBDA_LEVEL, name
    assert level_of_theory(BackendConfig(name="esf-landscape")).startswith("Marcus hopping at 300 K")
    given = BackendConfig(name="esf-landscape", params={"lambda_hole_kjmol": 12.5})
    assert level_of_theory(given, "reorg_energy_kjmol") == "given in the params (lambda_hole_kjmol = 12.5 kJ/mol)"
    # a backend that declares nothing for the key keeps its own level
    assert level_of_theory(BackendConfig(name="xtb-reorg"), "reorg_energy_kjmol") == "GFN2-xTB"


def test_best_line_names_the_level_of_a_lambda_objective(tmp_path):
    """The best line read "lambda+ = 22.5 kJ/mol (0.233 eV), Marcus hopping at 300 K, ...":
    the level of the mobility, not of lambda+."""
    from agent.campaign import Campaign
    from agent.local_executor import LocalExecutor
    from agent.runner import run_campaign
    from agent.summary import status_lines, status_record
    from sim_backends.esf import esf_records

    pool = list(esf_records("proxy").items())[:3]
    (tmp_path / "pool.smi").write_text("".join(f"{s} {r['name'].replace(' ', '_')}\n" for s, r in pool))
    cfg = parse_config(tomllib.loads(
        'name = "lam"\npool = "pool.smi"\nobjective = "reorg_energy_kjmol"\nmax_evaluations = 3\nbatch_size = 1\n'
        '[surrogate]\nn_initial = 3\n[tracking]\nenabled = false\n[[backends]]\nname = "replay-esf-proxy"\n'),
        base_dir=tmp_path)
    camp = Campaign.create(cfg, tmp_path / "runs")
    try:
        status = run_campaign(camp, tmp_path / "runs", executor=LocalExecutor(slots=1), progress=False)
        rec = status_record(status, camp.store, camp.cfg)
    finally:
        camp.close()
    assert rec["objective"]["level"] == LAMBDA_LEVEL
    best = next(line for line in status_lines(rec) if line.startswith("best "))
    assert f"kJ/mol (" in best and f"eV), {LAMBDA_LEVEL}: " in best and "Marcus" not in best, best
