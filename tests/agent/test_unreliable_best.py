"""A top-level lambda+ that its backend marks unreliable (a degenerate-HOMO, Jahn-Teller cation
whose low-temperature relaxation failed, so lambda+ is the undistorted cation's: benzene
6.1 kJ/mol at GFN2-xTB against 51.5 from a symmetry-broken start) is never reported as
the campaign's best; ``status`` names it with the reason (newuser37 S4)."""

from conftest import write_config

BODY = """
objective = "reorg_energy_kjmol"
max_evaluations = 4
[tracking]
enabled = false
[[backends]]
name = "xtb-reorg"
"""
UNRESOLVED = {"jahn_teller": "unresolved: 10 K cation: xTB SCF failed for charge +1: SCF not converged "
                             "in 250 cycles; 300 K value", "hole_manifold": {"n": 2, "spread_eV": 0.0}}


def _store(tmp_path, benzene_extra):
    from agent.campaign import campaign_status
    from agent.config import load_config
    from agent.store import Store
    from agent.summary import status_lines, status_record
    from sim_backends.base import EvalResult

    cfg = load_config(write_config(tmp_path, ["c1ccccc1 benzene", "c1ccc2ccccc2c1 naphthalene"], BODY))
    store = Store(tmp_path / "s.sqlite")
    store.add_molecules([("c1ccccc1", "benzene", True, ""), ("c1ccc2ccccc2c1", "naphthalene", True, "")])
    for mid, (v, extra) in enumerate(((6.1, benzene_extra), (18.0, {"hole_manifold": {"n": 1}})), 1):
        store.record_evaluation(request_id=f"r{mid}", molecule_id=mid, submitted_at=0.0, result=EvalResult(
            backend="xtb-reorg", backend_version="1", fidelity=0, status="ok", inputs_hash="h",
            values={"reorg_energy_kjmol": v}, extra=extra, wall_s=1.0))
    status = campaign_status(store, cfg)
    lines = status_lines(status_record(status, store, cfg))
    store.close()
    return status, "\n".join(lines)


def test_unresolved_jahn_teller_value_is_not_the_best(tmp_path):
    status, text = _store(tmp_path, UNRESOLVED)
    assert status.best == 18.0 and status.best_name == "naphthalene"
    assert set(status.unreliable) == {"benzene"}
    assert "unreliable    benzene: degenerate HOMO (Jahn-Teller cation)" in text and "not taken as the best" in text


def test_resolved_or_nondegenerate_values_count(tmp_path):
    from sim_backends.reorg import JAHN_TELLER_RESOLVED

    resolved = {"jahn_teller": JAHN_TELLER_RESOLVED.format(10), "hole_manifold": {"n": 2}}
    status, text = _store(tmp_path, resolved)
    assert status.best == 6.1 and status.best_name == "benzene" and not status.unreliable
    assert "unreliable" not in text


def test_the_molecule_stage_skips_it_too(tmp_path):
    """The stage's own best (the progress bar, MLflow's best_found, a target stop) as well."""
    from agent.campaign import Campaign
    from agent.config import load_config
    from sim_backends.base import EvalResult

    cfg = load_config(write_config(tmp_path, ["c1ccccc1 benzene", "c1ccc2ccccc2c1 naphthalene"], BODY))
    camp = Campaign.create(cfg, tmp_path / "runs")
    try:
        ids = {m["name"]: m["id"] for m in camp.store.molecules()}
        for mid, v, extra in ((ids["benzene"], 6.1, UNRESOLVED), (ids["naphthalene"], 18.0, {})):
            camp.store.record_evaluation(request_id=f"r{mid}", molecule_id=mid, submitted_at=0.0, result=EvalResult(
                backend="xtb-reorg", backend_version="1", fidelity=0, status="ok", inputs_hash="h",
                values={"reorg_energy_kjmol": v}, extra=extra, wall_s=1.0))
    finally:
        camp.close()
    camp = Campaign.open("t", tmp_path / "runs", readonly=True)
    try:
        assert camp.best_value() == 18.0
        assert list(camp.molecules.unreliable.values())[0].startswith("degenerate HOMO")
        stage = camp.molecules  # nor does it train the surrogate (as at a cheaper level)
        assert {stage.smiles[i] for i, f, _ in stage.observations} == {"c1ccc2ccccc2c1"}
        assert stage.done[stage.smiles.index("c1ccccc1"), stage.top_fidelity]  # not recomputed
    finally:
        camp.close()


def test_which_results_are_unreliable():
    """Review: the ESF levels keep the status at the top of extra without the manifold size,
    and an objective not computed from lambda+ (e.g. the IP) is not affected."""
    from sim_backends.reorg import unreliable_lambda_reason

    esf_extra = {"jahn_teller": UNRESOLVED["jahn_teller"], "structures": []}
    assert unreliable_lambda_reason(esf_extra, "log10_landscape_mobility_hole")
    assert unreliable_lambda_reason(UNRESOLVED, "reorg_energy_kjmol")
    assert unreliable_lambda_reason(UNRESOLVED, "ip_gas_ev") is None
    untested = {"jahn_teller": "unresolved: HOMO degeneracy not tested (SCF failed); 300 K value"}
    assert unreliable_lambda_reason(untested, "reorg_energy_kjmol") is None


TWO_LEVELS = BODY + """[[backends]]
name = "dft-reorg"
"""


def test_a_cheap_level_value_is_flagged_and_kept_out_of_training(tmp_path):
    """newuser41 #3: in a two-level campaign benzene's unresolved GFN2-xTB lambda+ (6.1 kJ/mol, the
    pool's lowest) trained the surrogate as a very attractive point and status said nothing."""
    from agent.campaign import Campaign, campaign_status
    from agent.config import load_config
    from agent.summary import status_lines, status_record
    from sim_backends.base import EvalResult

    cfg = load_config(write_config(tmp_path, ["c1ccccc1 benzene", "c1ccc2ccccc2c1 naphthalene"], TWO_LEVELS))
    camp = Campaign.create(cfg, tmp_path / "runs")
    try:
        ids = {m["name"]: m["id"] for m in camp.store.molecules()}
        for mid, v, extra in ((ids["benzene"], 6.1, UNRESOLVED), (ids["naphthalene"], 18.0, {})):
            camp.store.record_evaluation(request_id=f"r{mid}", molecule_id=mid, submitted_at=0.0, result=EvalResult(
                backend="xtb-reorg", backend_version="1", fidelity=0, status="ok", inputs_hash="h",
                values={"reorg_energy_kjmol": v}, extra=extra, wall_s=1.0))
        status = campaign_status(camp.store, cfg)
        text = "\n".join(status_lines(status_record(status, camp.store, cfg)))
    finally:
        camp.close()
    assert set(status.unreliable_cheap) == {"benzene"} and not status.unreliable
    assert "WARNING: benzene at xtb-reorg: degenerate HOMO (Jahn-Teller cation)" in text, text
    camp = Campaign.open("t", tmp_path / "runs", readonly=True)
    try:
        stage = camp.molecules
        trained = {stage.smiles[i] for i, f, _ in stage.observations}
        assert trained == {"c1ccc2ccccc2c1"}, trained
        assert stage.done[stage.smiles.index("c1ccccc1"), 0]  # not recomputed; DFT may still follow
    finally:
        camp.close()


def test_the_reason_gives_the_recorded_cause():
    """newuser45a #8: the warning dropped the stored cause (which SCF failed, at what)."""
    from sim_backends.reorg import unreliable_lambda_reason

    why = unreliable_lambda_reason({"jahn_teller": "unresolved: 10 K cation: xTB SCF failed for charge +1: "
                                                   "SCF not converged in 250 cycles; 300 K value"})
    assert "(10 K cation: xTB SCF failed for charge +1: SCF not converged in 250 cycles; 300 K value)" in why
    assert unreliable_lambda_reason({"jahn_teller": "unresolved: HOMO degeneracy not tested"}) is None
