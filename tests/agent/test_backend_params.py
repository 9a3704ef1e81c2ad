"""Backend parameters are checked when the config is checked, before anything is created:
an unknown key, a wrong type, a value out of range or a name PySCF/dftd3 does not know in
``[[backends]] params`` or ``[structures] csp/refine/free_energy params`` is a one-line
error naming the key (``backends.1.params.functional: ...``), never a failed evaluation
after CSP and minutes of work."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import ConfigError, check_runnable, load_config
from conftest import ROOT, cli, write_config

POOL = ["C=C", "c1ccoc1", "c1ccsc1"]
LADDER = """
objective = "reorg_energy_kjmol"
max_evaluations = 20
[tracking]
enabled = false
[[backends]]
name = "xtb-reorg"
params = {xtb}
[[backends]]
name = "dft-reorg"
params = {dft}
"""
STRUCTURES = """
[structures]
enabled = true
budget_evaluations = 5
csp = {{name = "csp-ff", params = {csp}}}
refine = {{name = "{refine}", params = {refine_params}}}
free_energy = {{name = "phonon", params = {phonon}}}
"""
GOOD = {"xtb": "{}", "dft": '{functional = "b3lyp", basis = "6-31g"}', "csp": "{n_trials = 40}",
        "refine": "xtb-crystal", "refine_params": "{}", "phonon": '{force_backend = "xtb-crystal"}'}


def _config(tmp_path: Path, **changes: str) -> Path:
    v = {**GOOD, **changes}
    body = LADDER.format(xtb=v["xtb"], dft=v["dft"]) + STRUCTURES.format(
        csp=v["csp"], refine=v["refine"], refine_params=v["refine_params"], phonon=v["phonon"])
    return write_config(tmp_path, POOL, body, name="params")


BAD = [
    # (changes to GOOD, the key named in the error, words of the reason)
    ({"dft": '{functional = "b3lpy"}'}, "backends.1.params.functional", "b3lpy"),
    ({"dft": '{basis = "6-31gg"}'}, "backends.1.params.basis", "basis set"),
    ({"dft": '{geometry = "mm"}'}, "backends.1.params.geometry", "'dft', 'xtb'"),
    ({"dft": "{grid_level = 12}"}, "backends.1.params.grid_level", "[0, 9]"),
    ({"dft": '{density_fit = "yes"}'}, "backends.1.params.density_fit", "true or false"),
    ({"xtb": "{fmx = 0.01}"}, "backends.0.params.fmx", "unknown xtb-reorg parameter"),
    ({"xtb": "{max_steps = 0}"}, "backends.0.params.max_steps", ">= 1"),
    ({"csp": "{n_trials = 1000000000000}"}, "structures.csp.params.n_trials", "limit of 200000"),
    ({"csp": "{n_trials = 1.5}"}, "structures.csp.params.n_trials", "integer"),
    ({"csp": '{space_groups = "P2_1/c,P9"}'}, "structures.csp.params.space_groups", "'P9'"),
    ({"csp": "{energy_window_kjmol = nan}"}, "structures.csp.params.energy_window_kjmol", "> 0"),
    ({"csp": "{energy_window_kjmol = 0.0}"}, "structures.csp.params.energy_window_kjmol", "> 0"),
    ({"csp": '{charges = "eem"}'}, "structures.csp.params.charges", "'resp'"),
    ({"refine_params": '{relax = "sometimes"}'}, "structures.refine.params.relax", "relax must be"),
    ({"refine_params": '{gas = "frozen"}'}, "structures.refine.params.gas", "'relaxed', 'rigid'"),
    ({"refine": "dft-crystal", "refine_params": '{functional = "wb97x-d"}'},
     "structures.refine.params.functional", "D3(BJ)"),
    ({"refine": "dft-crystal", "refine_params": "{cutoff_A = 100.0}"},
     "structures.refine.params.cutoff_A", "<= 30"),
    ({"refine": "dft-crystal", "refine_params": '{cutof_A = 4.0}'},
     "structures.refine.params.cutof_A", "unknown dft-crystal parameter"),
    ({"phonon": '{force_backend = "dft-reorg"}'}, "structures.free_energy.params.force_backend",
     "cannot give forces"),
    ({"phonon": '{force_params = {method = "GFN3-xTB"}}'},
     "structures.free_energy.params.force_params.method", "GFN2-xTB"),
    ({"phonon": "{supercell = [2, 2]}"}, "structures.free_energy.params.supercell", "three integers"),
    ({"phonon": "{temperature_K = -5.0}"}, "structures.free_energy.params.temperature_K", ">= 0"),
]


@pytest.mark.parametrize("changes, key, words", BAD, ids=[b[1] + "-" + str(i) for i, b in enumerate(BAD)])
def test_bad_params_refused_at_config_time_naming_the_key(tmp_path, changes, key, words):
    cfg = load_config(_config(tmp_path, **changes))
    with pytest.raises(ConfigError) as e:
        check_runnable(cfg)
    msg = str(e.value)
    assert msg.startswith(f"config error: {key}: ") and words in msg and "\n" not in msg, msg


def test_good_params_and_an_explicitly_raised_trial_limit_pass(tmp_path):
    check_runnable(load_config(_config(tmp_path)))
    check_runnable(load_config(_config(
        tmp_path, csp="{n_trials = 300000, max_trials = 400000}", refine="dft-crystal",
        refine_params='{functional = "pbe", basis = "def2-svp", cutoff_A = 3.0, grid_level = 0}',
        dft='{functional = "b3lyp", basis = "6-31g", geometry = "xtb", opt_basis = "sto-3g"}',
        phonon='{force_backend = "xtb-crystal", force_params = {method = "GFN1-xTB"}, '
               'supercell = "auto", mesh = 20.0, relax = "full"}')))


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_examples_pass(path):
    check_runnable(load_config(path))


def test_every_declared_schema_accepts_the_defaults():
    """A backend that declares its parameters accepts none given (its defaults), and the
    csp-ff limit is the one run_csp enforces."""
    from sim_backends.base import ParamsError
    from sim_backends.csp.run import MAX_TRIALS_DEFAULT
    from sim_backends.registry import available, backend_class

    declared = [n for n in available() if backend_class(n).params_schema is not None]
    assert {"csp-ff", "xtb-reorg", "dft-reorg", "xtb-crystal", "dft-crystal", "phonon"} <= set(declared)
    for name in declared:
        backend_class(name).check_params({})
    csp = backend_class("csp-ff")
    csp.check_params({"n_trials": MAX_TRIALS_DEFAULT})
    with pytest.raises(ParamsError, match="n_trials"):
        csp.check_params({"n_trials": MAX_TRIALS_DEFAULT + 1})


def test_cli_run_with_a_bad_functional_creates_nothing(tmp_path):
    cfg = _config(tmp_path, dft='{functional = "b3lpy", basis = "6-31g"}')
    runs = tmp_path / "runs"
    out = cli("run", str(cfg), "--runs-dir", str(runs), "--quiet", timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and "backends.1.params.functional" in out.stderr, out.stderr
    assert not (runs / "params").exists() and not any(runs.glob(".params*"))


def test_stored_campaign_with_params_now_refused_can_be_viewed_not_resumed(tmp_path):
    """A store written before the check (or by hand) with a bad parameter: status and
    report (read-only) still open it, resume refuses it naming the key."""
    from agent.campaign import Campaign
    from agent.store import Store

    runs = tmp_path / "runs"
    Campaign.create(load_config(_config(tmp_path)), runs).close()
    with Store(runs / "params" / "store.sqlite") as store:
        toml = store.get_meta("config_toml")
        assert 'basis = "6-31g"' in toml
        store.set_meta("config_toml", toml.replace('basis = "6-31g"', 'basis = "6-31gg"'))
    Campaign.open("params", runs, readonly=True).close()
    with pytest.raises(ConfigError, match=r"^config error: backends\.1\.params\.basis: "):
        Campaign.open("params", runs)


def test_cli_run_with_bad_fault_injection_fractions_creates_nothing(tmp_path):
    """The internal fault-injection backend declares its parameters too (its workers used
    to die constructing it: every task recorded as failed, exit 0)."""
    body = ('objective = "n_heavy_atoms"\nmax_evaluations = 3\n[tracking]\nenabled = false\n'
            '[[backends]]\nname = "_faulty"\nparams = { raise_fraction = 0.6, crash_fraction = 0.6 }\n')
    cfg = write_config(tmp_path, POOL, body, name="faulty")
    out = cli("run", str(cfg), "--runs-dir", str(tmp_path / "runs"), "--quiet", timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "backends.0.params.raise_fraction: the fractions sum to 1.2 > 1" in out.stderr
    assert not (tmp_path / "runs").exists()


def test_every_parameter_a_backend_reads_is_declared():
    """The keys a backend's code reads (``p.get("key")``, ``p["key"]``, ``self._p(p, "key")``)
    are in its schema, so a new parameter cannot be refused as unknown at config time."""
    import inspect
    import re

    from sim_backends.base import Backend
    from sim_backends.registry import available, backend_class

    read = re.compile(r"""(?:\bp|\bparams|\})\.get\(\s*["'](\w+)["']|\bp\[["'](\w+)["']\]"""
                      r"""|\b_p\(\w+,\s*["'](\w+)["']""")
    for name in available():
        cls = backend_class(name)
        if cls.params_schema is None:
            continue
        # classes that define no function read no params themselves (e.g. a replay level
        # made by sim_backends.replay.replay_backend, which has no source of its own)
        src = "".join(inspect.getsource(k) for k in cls.__mro__
                      if isinstance(k, type) and issubclass(k, Backend) and k is not Backend
                      and any(inspect.isfunction(v) for v in vars(k).values()))
        keys = {g for m in read.finditer(src) for g in m.groups() if g}
        assert keys, name
        assert keys <= set(cls.params_schema), (name, sorted(keys - set(cls.params_schema)))


def test_csp_default_is_a_converged_search_priced_by_size():
    """The structure stage's default CSP is the csp-ff default, a converged search with the
    CLI's trial ceiling (not a fixed 200 trials that never converge); its cost estimate
    grows with the molecule and, with converged sampling, not with the ceiling."""
    from agent.config import StructureStageConfig
    from sim_backends.base import EvalInput
    from sim_backends.csp import DEFAULT_TRIAL_BUDGET
    from sim_backends.registry import get_backend

    assert StructureStageConfig().csp.params == {}
    csp = get_backend("csp-ff")
    assert csp._DEFAULTS["n_trials"] == DEFAULT_TRIAL_BUDGET and csp._DEFAULTS["sampling"] == "converged"
    urea, anthracene = EvalInput("NC(N)=O"), EvalInput("c1ccc2cc3ccccc3cc2c1")
    assert 20 < csp.cost_estimate(urea) < csp.cost_estimate(anthracene) < 400
    assert csp.cost_estimate(EvalInput("NC(N)=O", params={"n_trials": 100_000})) == csp.cost_estimate(urea)
    fixed = {"sampling": "fixed"}
    assert (csp.cost_estimate(EvalInput("NC(N)=O", params={**fixed, "n_trials": 400}))
            < csp.cost_estimate(EvalInput("NC(N)=O", params={**fixed, "n_trials": 4000})))


@pytest.mark.parametrize("ladder, message", [
    (["esf-refined", "esf-proxy"], "'esf-proxy' (fidelity 0) comes after 'esf-refined' (fidelity 2)"),
    (["dft-reorg", "xtb-reorg"], "'xtb-reorg' (fidelity 0) comes after 'dft-reorg' (fidelity 1)"),
    (["esf-proxy", "esf-landscape:0"], "'esf-landscape' (fidelity 0) comes after 'esf-proxy' (fidelity 0)"),
])
def test_fidelity_ladder_must_go_from_cheap_to_expensive(tmp_path, ladder, message):
    """The last [[backends]] entry is the objective's level: a ladder listed expensive first
    ran the expensive level and reported 'best none yet' (newuser37 M4); refused in one line,
    and the same levels cheapest first pass (the shipped examples' ladders pass too)."""
    def config(levels):
        body = 'objective = "%s"\n' % ("reorg_energy_kjmol" if "reorg" in levels[0] else "log10_landscape_mobility_hole")
        for entry in levels:
            name, _, fidelity = entry.partition(":")
            body += f'[[backends]]\nname = "{name}"\n' + (f"params = {{fidelity = {fidelity}}}\n" if fidelity else "")
        return load_config(write_config(tmp_path, ["c1ccccc1"], body))

    with pytest.raises(ConfigError, match="fidelity ladder must go from cheap to expensive") as err:
        check_runnable(config(ladder))
    assert message in str(err.value) and "\n" not in str(err.value)
    check_runnable(config(ladder), params=False)  # a stored campaign from before the check stays viewable
    if ":" not in ladder[1]:
        check_runnable(config(ladder[::-1]))


def test_a_campaign_with_plain_resp_landscapes_keeps_resp_on_resume(tmp_path):
    """The csp-ff default charges became the search's own (RESP with N lone-pair sites for a
    rigid molecule); a stored campaign whose CSP ran with plain RESP before and leaves
    ``charges`` unset keeps RESP on resume (stored), a new campaign does not get it."""
    from agent.campaign import Campaign
    from agent.config import load_config
    from sim_backends.base import EvalResult

    cfg = load_config(_config(tmp_path))
    assert "charges" not in cfg.structures.csp.params
    camp = Campaign.create(cfg, tmp_path / "runs")
    camp.store.record_evaluation(request_id="r1", molecule_id=1, submitted_at=0.0, result=EvalResult(
        backend="csp-ff", backend_version="1", fidelity=0, status="ok", inputs_hash="h",
        values={"n_minima": 3.0}, extra={"csp": {"charge_method": "resp-pyscf HF/6-31G*"}, "landscape": []},
        wall_s=1.0))
    camp.close()
    camp = Campaign.open("params", tmp_path / "runs")
    try:
        assert camp.cfg.structures.csp.params == {"n_trials": 40, "charges": "resp"}
    finally:
        camp.close()
    camp = Campaign.open("params", tmp_path / "runs", readonly=True)
    try:
        assert camp.cfg.structures.csp.params["charges"] == "resp"  # stored
    finally:
        camp.close()
    (tmp_path / "new").mkdir()
    fresh = load_config(_config(tmp_path / "new"))
    camp = Campaign.create(fresh, tmp_path / "runs2")
    camp.store.record_evaluation(request_id="r1", molecule_id=1, submitted_at=0.0, result=EvalResult(
        backend="csp-ff", backend_version="1", fidelity=0, status="ok", inputs_hash="h",
        values={"n_minima": 3.0},
        extra={"csp": {"charge_method": "resp-lpn-pyscf HF/6-31G* (1 lone-pair site)"}, "landscape": []},
        wall_s=1.0))
    camp.close()
    camp = Campaign.open("params", tmp_path / "runs2")
    try:
        assert "charges" not in camp.cfg.structures.csp.params
    finally:
        camp.close()


def test_status_names_why_evaluations_failed(tmp_path):
    """newuser40 M2: a campaign whose CSP tasks all failed said only "(2 failed)"; the status now
    names, per backend, how many failed and the latest reason (text and --json)."""
    from agent.campaign import Campaign, campaign_status
    from agent.config import load_config
    from agent.summary import status_lines, status_record
    from sim_backends.base import EvalResult

    cfg = load_config(_config(tmp_path))
    camp = Campaign.create(cfg, tmp_path / "runs")
    try:
        for k, why in enumerate(["first reason", "charges 'resp-lpn' (lone-pair sites) are for rigid molecules"]):
            camp.store.record_evaluation(request_id=f"r{k}", molecule_id=1, submitted_at=0.0, result=EvalResult(
                backend="csp-ff", backend_version="1", fidelity=0, status="failed", inputs_hash=f"h{k}",
                values={}, reason=why, wall_s=1.0))
        rec = status_record(campaign_status(camp.store, camp.cfg, camp), camp.store, camp.cfg)
        assert rec["failures"] == {"csp-ff": {"n": 2, "reason": "charges 'resp-lpn' (lone-pair sites) are for "
                                                               "rigid molecules"}}
        line = next(x for x in status_lines(rec) if x.startswith("failed "))
        assert "csp-ff: 2 (latest: charges 'resp-lpn'" in line
    finally:
        camp.close()
