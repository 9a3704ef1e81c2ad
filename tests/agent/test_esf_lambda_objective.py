"""newuser43 F1: the ESF levels' lambda+ is one GFN2-xTB calculation at every fidelity.

The levels declare its level of theory (``value_levels``), the best line names it instead of
the mobility's level, and a ladder whose levels would report the objective from that one
calculation is refused when the config is checked. Real backends and the ESF data set
(data/esf) replayed through a real campaign with the local executor."""

from __future__ import annotations

import tomllib

import pytest

from agent.config import BackendConfig, ConfigError, check_runnable, parse_config
from sim_backends.esf import LAMBDA_VALUE_LEVEL
from sim_backends.reorg import XTB_LAMBDA_SHIFT_KJMOL

LAMBDA_LEVEL = ("GFN2-xTB four-point lambda+ (tblite), gas phase; cation at 10 K electronic temperature where "
                "the HOMO is degenerate (Jahn-Teller)")
#: the ESF levels' lambda+: xtb-reorg's plus the empirical shift to B3LYP
ESF_LAMBDA_LEVEL = LAMBDA_VALUE_LEVEL


def _cfg(tmp_path, body: str):
    (tmp_path / "pool.smi").write_text("c1ccc2ccccc2c1 naphthalene\n")
    return parse_config(tomllib.loads('name = "lam"\npool = "pool.smi"\n' + body + '\n[tracking]\nenabled = false\n'),
                        base_dir=tmp_path)


def test_esf_levels_declare_the_level_of_their_lambda():
    """lambda+ is labelled with its own level, the mobility with the level's."""
    from agent.summary import level_of_theory

    for name in ("esf-proxy", "esf-landscape", "esf-refined", "replay-esf-proxy", "replay-esf-refined"):
        b = BackendConfig(name=name)
        assert level_of_theory(b, "reorg_energy_kjmol") == ESF_LAMBDA_LEVEL, name
        assert level_of_theory(b, "log10_landscape_mobility_hole") == level_of_theory(b) != ESF_LAMBDA_LEVEL, name
    assert ESF_LAMBDA_LEVEL.startswith(f"{LAMBDA_LEVEL}; + {XTB_LAMBDA_SHIFT_KJMOL:g} kJ/mol empirical shift to "
                                       "B3LYP/6-31G//B3LYP/6-31G (LOO RMSE ")
    assert level_of_theory(BackendConfig(name="esf-landscape")).startswith("Marcus hopping at 300 K")
    given = BackendConfig(name="esf-landscape", params={"lambda_hole_kjmol": 12.5})
    assert level_of_theory(given, "reorg_energy_kjmol") == "given in the params (lambda_hole_kjmol = 12.5 kJ/mol)"
    # xtb-reorg declares its lambda+ level too: the calculation the ESF levels call
    assert level_of_theory(BackendConfig(name="xtb-reorg"), "reorg_energy_kjmol") == LAMBDA_LEVEL


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
    assert rec["objective"]["level"] == ESF_LAMBDA_LEVEL
    best = next(line for line in status_lines(rec) if line.startswith("best "))
    assert f"kJ/mol (" in best and f"eV), {ESF_LAMBDA_LEVEL}: " in best and "Marcus" not in best, best


LADDER = """
objective = "{objective}"
[[backends]]
name = "esf-proxy"
[[backends]]
name = "esf-landscape"
params = {{ n_trials = 150, charges = "xtb" }}
[[backends]]
name = "esf-refined"
params = {{ n_trials = 300, charges = "xtb" }}
"""


@pytest.mark.parametrize("objective, level", [("reorg_energy_kjmol", LAMBDA_LEVEL), ("ip_gas_ev", "GFN2-xTB ΔSCF")])
def test_a_ladder_whose_levels_compute_the_objective_the_same_way_is_refused(tmp_path, objective, level):
    """newuser43 F1: objective = "reorg_energy_kjmol" on esf-proxy + esf-landscape was
    accepted; both columns held the same lambda+ to every digit and the landscape level's CSPs
    (half the CPU) could not change it. Refused in one line naming the levels and the level."""
    with pytest.raises(ConfigError) as err:
        check_runnable(_cfg(tmp_path, LADDER.format(objective=objective)))
    msg = str(err.value)
    assert msg.startswith(f"config error: backends: esf-proxy, esf-landscape and esf-refined compute {objective} "
                          f"the same way ({level}") and "a ladder's levels must differ for its objective" in msg, msg
    assert "\n" not in msg
    # the same ladder for the mobility passes, and so does one ESF level for lambda+
    check_runnable(_cfg(tmp_path, LADDER.format(objective="log10_landscape_mobility_hole")))
    check_runnable(_cfg(tmp_path, f'objective = "{objective}"\n[[backends]]\nname = "esf-landscape"\n'))
    # levels whose lambda+ differs: one computed, one given in the params
    check_runnable(_cfg(tmp_path, 'objective = "reorg_energy_kjmol"\n[[backends]]\nname = "esf-proxy"\n'
                                  '[[backends]]\nname = "esf-landscape"\nparams = { lambda_hole_kjmol = 12.0 }\n'))
    # a stored campaign from before the check stays viewable
    check_runnable(_cfg(tmp_path, LADDER.format(objective=objective)), params=False)


def test_an_xtb_reorg_level_below_an_esf_level_for_lambda_is_refused(tmp_path):
    """Stop-43 note: xtb-reorg declared no level for its lambda+, so xtb-reorg -> esf-landscape
    with objective lambda+ passed though the ESF level reports xtb-reorg's own default
    calculation. Refused; xtb-reorg with other calculation settings (a different lambda+) is not."""
    body = 'objective = "reorg_energy_kjmol"\n[[backends]]\nname = "xtb-reorg"\n{params}\n' \
           '[[backends]]\nname = "esf-landscape"\n'
    for params in ("", "params = { seed = 0, fmax = 0.01 }"):  # the defaults, given or not
        with pytest.raises(ConfigError, match=r"^config error: backends: xtb-reorg and esf-landscape compute "
                                              r"reorg_energy_kjmol the same way \(GFN2-xTB four-point"):
            check_runnable(_cfg(tmp_path, body.format(params=params)))
    assert check_runnable(_cfg(tmp_path, body.format(params="params = { fmax = 0.02 }"))) == []
    # a replay of an ESF level computes lambda+ as the real one does (review of stop 48: a replay
    # declared the shifted level, the real ones the calculation, and the pair passed)
    for pair in (("replay-esf-proxy", "esf-landscape"), ("xtb-reorg", "replay-esf-quick")):
        with pytest.raises(ConfigError, match=r"compute reorg_energy_kjmol the same way \(GFN2-xTB four-point"):
            check_runnable(_cfg(tmp_path, 'objective = "reorg_energy_kjmol"\n' + "".join(
                f'[[backends]]\nname = "{b}"\n' for b in pair)))
    from agent.summary import level_of_theory

    assert level_of_theory(BackendConfig(name="xtb-reorg"), "reorg_energy_kjmol") == LAMBDA_LEVEL
    assert level_of_theory(BackendConfig(name="xtb-reorg", params={"fmax": 0.02}),
                           "reorg_energy_kjmol") == LAMBDA_LEVEL + " (fmax = 0.02)"


def test_shipped_examples_validate_without_warnings():
    from agent.config import load_config
    from conftest import ROOT

    for path in sorted((ROOT / "examples").glob("*.toml")):
        cfg = load_config(path)
        assert check_runnable(cfg) == [] and cfg.warnings == [], path


STRUCTURES = """
objective = "log10_landscape_mobility_hole"
direction = "maximize"
max_evaluations = 20
[[backends]]
name = "esf-proxy"
[[backends]]
name = "esf-landscape"
params = { n_trials = 150, charges = "xtb" }
[structures]
enabled = true
budget_evaluations = 4
csp = { name = "csp-ff", params = { %s } }
[[structures.levels]]
name = "xtb-crystal"
"""
SAME = 'n_trials = 150, sampling = "fixed", charges = "xtb", space_groups = "P2_1/c,P-1,P2_12_12_1,C2/c,P2_1,Pbca"'


def test_structure_stage_csp_that_searches_otherwise_than_the_esf_level_is_warned_of(tmp_path):
    """newuser43 F2: the structure stage searched P2_1/c,P-1 with 150 converged trials, the
    ESF level its 6 groups with fixed sampling: two "global minima" for one molecule and
    "m0001" naming two crystals. The config check says so (non-fatal), naming the settings."""
    (note,) = check_runnable(_cfg(tmp_path, STRUCTURES % 'n_trials = 150, charges = "xtb", '
                                                         'space_groups = "P2_1/c,P-1"'))
    assert note.startswith("structures.csp searches otherwise than esf-landscape, whose landscape the ESF results "
                           "report (space_groups P2_1/c,P-1 vs P2_1/c,P-1,P2_12_12_1,C2/c,P2_1,Pbca; "
                           "sampling converged vs fixed): the two landscapes will differ"), note
    assert "\n" not in note
    cfg = _cfg(tmp_path, STRUCTURES % 'n_trials = 300, sampling = "fixed"')
    assert cfg.warnings == check_runnable(cfg)
    assert "n_trials 300 vs 150" in cfg.warnings[0] and "charges the search's default vs xtb" in cfg.warnings[0]
    assert check_runnable(_cfg(tmp_path, STRUCTURES % SAME)) == []
    # each group's trials are seeded by its symbol, so the same groups in another order make
    # the same landscape: no note
    reordered = SAME.replace("P2_1/c,P-1,P2_12_12_1,C2/c,P2_1,Pbca", "Pbca,P2_1,C2/c,P2_12_12_1,P-1,P2_1/c")
    assert check_runnable(_cfg(tmp_path, STRUCTURES % reordered)) == []


def test_the_order_of_the_space_groups_does_not_change_the_landscape():
    """What the note's order-blindness rests on: the same search with its groups listed in
    another order gives the same minima (fixed sampling with a remainder of trials to split,
    and converged sampling)."""
    from sim_backends.csp.run import run_csp

    for sampling, n_trials in (("fixed", 25), ("converged", 24)):  # 25: a remainder to give out
        a, b = (run_csp("O=C1C=CC(=O)C=C1", n_trials, space_groups=g, sampling=sampling, charges="xtb",
                        progress=False)
                for g in ("P2_1/c,P-1,P2_12_12_1", "P2_12_12_1,P-1,P2_1/c"))
        assert [(m.space_group, round(m.energy_kjmol, 6)) for m in a.minima] == \
            [(m.space_group, round(m.energy_kjmol, 6)) for m in b.minima], sampling


def test_cli_run_prints_the_warning_on_stderr(tmp_path):
    """The CLI says the note in one line on stderr when it checks the config (here the run
    then stops at an unreachable cluster, before anything is created)."""
    from conftest import cli, write_config

    path = write_config(tmp_path, ["c1ccc2ccccc2c1 naphthalene"],
                        STRUCTURES % 'n_trials = 150, charges = "xtb"' + "[tracking]\nenabled = false\n")
    r = cli("run", str(path), "--runs-dir", str(tmp_path / "runs"), env={"RAY_ADDRESS": "127.0.0.1:9"})
    warned = [ln for ln in r.stderr.splitlines() if ln.startswith("crystal-agent: warning: structures.csp searches")]
    assert len(warned) == 1 and "n_trials 150" not in warned[0] and "space_groups " in warned[0], r.stderr
    assert r.returncode != 0 and not (tmp_path / "runs" / "t").exists(), r.stderr


@pytest.mark.parametrize("objective, warned", [("log10_landscape_mobility_hole", True),
                                               ("reorg_energy_kjmol", False)])
def test_the_hopping_regime_warning_goes_on_a_mobility_best_line_only(tmp_path, objective, warned):
    """Benzo[b]thiophene's refined landscape has structures with 2|J| > lambda+ (naphthalene's
    had with the unshifted GFN2-xTB lambda+): that says the mobility is out of the Marcus
    regime, nothing about lambda+, so a best line for a lambda+ objective does not carry it."""
    from agent.campaign import Campaign
    from agent.local_executor import LocalExecutor
    from agent.runner import run_campaign
    from agent.summary import best_line, status_record

    (tmp_path / "pool.smi").write_text("c1ccc2sccc2c1 benzo[b]thiophene\n")
    cfg = parse_config(tomllib.loads(
        f'name = "w"\npool = "pool.smi"\nobjective = "{objective}"\nmax_evaluations = 1\nbatch_size = 1\n'
        '[surrogate]\nn_initial = 1\n[tracking]\nenabled = false\n[[backends]]\nname = "replay-esf-refined"\n'),
        base_dir=tmp_path)
    camp = Campaign.create(cfg, tmp_path / "runs")
    try:
        status = run_campaign(camp, tmp_path / "runs", executor=LocalExecutor(slots=1), progress=False)
        rec = status_record(status, camp.store, camp.cfg)
    finally:
        camp.close()
    assert rec["best"] is not None
    assert bool(rec["best_warning"]) is warned, rec["best_warning"]
    assert ("Marcus hopping regime violated" in best_line(rec)) is warned, best_line(rec)
