"""ESF results from a CSP with GFN2-xTB charges carry the caveat that those charges rank
herringbone packings below pi-stacks (newuser37 S1: anthracene's experimental form rank 70);
with RESP charges there is no such line."""

from agent.esf_report import esf_lines
from sim_backends.esf import csp_level


def _rec(charges):
    return {"name": "anthracene", "mean": 0.25, "sd": 0.05, "n_in_window": 6, "source": "molecule stage",
            "backend": "esf-refined", "level": "GFN2-xTB", "csp_level": csp_level(charges)}


def test_xtb_charge_landscapes_are_flagged_once():
    lines = esf_lines([_rec("xtb"), {**_rec("xtb"), "name": "tetracene"}])
    caveats = [ln for ln in lines if "CAVEAT" in ln]
    assert len(caveats) == 1 and "herringbone packings rank below pi-stacks" in caveats[0]
    assert not any("CAVEAT" in ln for ln in esf_lines([_rec("resp")]))


def test_window_count_says_when_the_cap_bound():
    """newuser37 M2: '6 structures in window' was the n_structures cap; the window held dozens.
    newuser45a #1/#2: the line also gives the share of the window's Boltzmann weight the mean
    covers, or says it was not recorded."""
    six = [{"id": f"m000{i}"} for i in range(1, 7)]
    cov = {"n_computed": 6, "n_with_mobility": 6, "n_in_window": 31, "n_minima_in_window": 31}
    capped = esf_lines([{**_rec("resp"), **cov, "uncomputed_weight": 0.48, "structures": six}])
    assert any("the lowest 6 of 31 structures in window, 52% of the Boltzmann weight;" in ln
               for ln in capped)
    one_failed = esf_lines([{**_rec("resp"), **cov, "n_with_mobility": 5, "uncomputed_weight": 0.5,
                             "structures": six[:5]}])
    assert any("the lowest 6 of 31 structures in window, 5 with a mobility, 50% of the Boltzmann "
               "weight;" in ln for ln in one_failed)
    before = esf_lines([{**_rec("resp"), **cov, "uncomputed_weight": None, "structures": six}])
    assert any("the lowest 6 of 31 structures in window, share of the Boltzmann weight not "
               "recorded;" in ln for ln in before)
    full = esf_lines([{**_rec("resp"), **cov, "n_in_window": 6, "n_minima_in_window": 6, "uncomputed_weight": 0.0,
                       "structures": six}])
    assert any("6 structures in window;" in ln for ln in full)
    replayed = esf_lines([{**_rec("resp"), **cov, "n_in_window": None, "n_minima_in_window": None,
                           "uncomputed_weight": None, "structures": six}])
    assert any("the lowest 6 structures in window, share of the window not recorded;" in ln
               for ln in replayed)


def test_demo_structure_stage_searches_as_the_refined_level():
    """newuser37 S3: the demo's structure stage ran a 150-trial search on the molecule the
    300-trial refined level had ranked, and lost that landscape's global minimum. Its CSP now
    makes the refined level's run_csp call (checked: the same minima and ids, naphthalene)."""
    from agent.config import load_config
    from conftest import ROOT
    from sim_backends.esf import ESF_SPACE_GROUPS
    from sim_backends.registry import backend_class

    cfg = load_config(ROOT / "examples" / "esf.toml")
    refined = next(b for b in cfg.backends if b.name == "esf-refined")
    ref = {**backend_class("esf-refined")._DEFAULTS, **refined.params}
    csp = {**backend_class("csp-ff")._DEFAULTS, **cfg.structures.csp.params}
    assert csp["sampling"] == "fixed" and csp["n_trials"] == ref["n_trials"]
    assert csp["charges"] == ref["charges"] and csp["seed"] == ref["seed"]
    assert csp["space_groups"] == ref["space_groups"] == ESF_SPACE_GROUPS


def test_a_campaign_from_before_the_charges_parameter_keeps_xtb_charges(tmp_path):
    """Review of d0b092a: the ESF levels' default charges became RESP; a stored campaign whose
    landscapes were made with GFN2-xTB charges (no csp_level in their results) would have
    switched protocol mid-campaign on resume. It keeps xTB charges (and stores that)."""
    from agent.campaign import Campaign
    from agent.config import load_config
    from conftest import write_config
    from sim_backends.base import EvalResult

    body = ('objective = "log10_landscape_mobility_hole"\n[tracking]\nenabled = false\n'
            '[[backends]]\nname = "esf-proxy"\n[[backends]]\nname = "esf-landscape"\nparams = { n_trials = 20 }\n')
    cfg = load_config(write_config(tmp_path, ["c1ccc2ccccc2c1 naphthalene"], body))
    camp = Campaign.create(cfg, tmp_path / "runs")
    camp.store.record_evaluation(request_id="r1", molecule_id=1, submitted_at=0.0, result=EvalResult(
        backend="esf-landscape", backend_version="1", fidelity=1, status="ok", inputs_hash="h",
        values={"log10_landscape_mobility_hole": -0.5}, extra={"structures": []}, wall_s=1.0))
    camp.close()
    camp = Campaign.open("t", tmp_path / "runs")
    try:
        assert camp.cfg.backends[1].params == {"n_trials": 20, "charges": "xtb"}
    finally:
        camp.close()
    camp = Campaign.open("t", tmp_path / "runs", readonly=True)
    try:
        assert camp.cfg.backends[1].params["charges"] == "xtb"  # stored
    finally:
        camp.close()
