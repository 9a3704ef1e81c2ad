"""Contract tests over every registered backend, and the replay backend's lookups."""

import pickle

import pytest

from sim_backends.base import Backend, EvalInput, EvalResult
from sim_backends.registry import available, backend_class, get_backend
from sim_backends.replay import ReplayBackend

NAMES = sorted(available())
#: backends that by design do not validate their input molecule


def _instance_or_skip(name):
    try:
        return get_backend(name)
    except TypeError as exc:  # needs constructor arguments
        pytest.skip(f"{name} cannot be instantiated without arguments: {exc}")


@pytest.mark.parametrize("name", NAMES)
def test_capabilities_are_declared(name):
    cls = backend_class(name)
    assert issubclass(cls, Backend)
    assert cls.name == name
    assert isinstance(cls.version, str) and cls.version
    assert isinstance(cls.fidelity, int) and cls.fidelity >= 0
    assert cls.target in ("molecule", "structure")
    assert cls.computes and all(isinstance(k, str) for k in cls.computes)
    assert cls.objective_key is None or cls.objective_key in cls.computes
    b = _instance_or_skip(name)
    cost_s = b.cost_estimate(EvalInput("c1ccccc1"))
    assert isinstance(cost_s, float)
    # a structure-level backend may have no estimate without a structure
    assert cost_s > 0 if cls.target == "molecule" else cost_s >= 0


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("smiles", ["C1CC(", "c1cc[se]c1", "C.C"])
def test_invalid_molecules_give_failed_results_not_exceptions(name, smiles):
    b = _instance_or_skip(name)
    res = b.evaluate(EvalInput(smiles))
    assert isinstance(res, EvalResult)
    assert res.status == "failed" and res.reason and "\n" not in res.reason
    assert res.backend == name and res.inputs_hash
    assert pickle.loads(pickle.dumps(res)).to_dict() == res.to_dict()
    pickle.loads(pickle.dumps(b))


# -- replay ---------------------------------------------------------------------------------


@pytest.fixture
def table(tmp_path):
    p = tmp_path / "results.csv"
    p.write_text(
        "smiles,level,reorg_energy_kjmol,ip_adiabatic_kjmol,wall_s\n"
        "C1=CC=C2C=CC=CC2=C1,xtb-reorg,12.94,1246.4,0.17\n"
        "c1ccc2ccccc2c1,dft-reorg,15.25,735.3,41.0\n"
        "c1ccsc1,xtb-reorg,22.24,,0.26\n"
        "not_a_smiles,xtb-reorg,1.0,,0.1\n"
    )
    return p


def test_replay_serves_stored_values_for_canonicalised_smiles(table):
    b = ReplayBackend(table=str(table), level="xtb-reorg", fidelity=0)
    res = b.evaluate(EvalInput("c1ccc2ccccc2c1"))
    assert res.ok and res.values == {"reorg_energy_kjmol": 12.94, "ip_adiabatic_kjmol": 1246.4}
    assert res.extra["recorded_wall_s"] == 0.17
    assert b.evaluate(EvalInput("S1C=CC=C1")).values == {"reorg_energy_kjmol": 22.24}
    assert b.cost_estimate(EvalInput("c1ccsc1")) == 0.26
    assert ReplayBackend(table=str(table), level="xtb-reorg", cost_s=3.0).cost_estimate(
        EvalInput("c1ccsc1")) == 3.0


def test_replay_fidelity_is_per_instance(table):
    lo = ReplayBackend(table=str(table), level="xtb-reorg", fidelity=0)
    hi = ReplayBackend(table=str(table), level="dft-reorg", fidelity=1)
    assert (lo.fidelity, hi.fidelity, ReplayBackend.fidelity) == (0, 1, 0)
    r = hi.evaluate(EvalInput("c1ccc2ccccc2c1"))
    assert r.fidelity == 1 and r.values["reorg_energy_kjmol"] == 15.25
    assert pickle.loads(pickle.dumps(hi)).fidelity == 1


@pytest.mark.parametrize(
    "params, smiles, fragment",
    [
        ({"level": "xtb-reorg"}, "c1ccccc1", "no stored result for 'c1ccccc1'"),
        ({"level": "dft-reorg"}, "c1ccsc1", "no stored result"),
        ({}, "c1ccsc1", "set param 'level'"),
        ({"level": "ccsd"}, "c1ccsc1", "level 'ccsd' not in table"),
        ({"level": "xtb-reorg"}, "C1CC(", "invalid SMILES"),
    ],
)
def test_replay_misses_are_setup_failures(table, params, smiles, fragment):
    res = ReplayBackend(table=str(table), **params).evaluate(EvalInput(smiles))
    assert res.status == "failed" and res.reason.startswith("setup:") and fragment in res.reason


def test_replay_bad_tables(tmp_path):
    res = ReplayBackend(table=str(tmp_path / "none.csv")).evaluate(EvalInput("C"))
    assert "replay table not found" in res.reason
    bad = tmp_path / "bad.csv"
    bad.write_text("smiles,level,reorg_energy_kjmol\nC,x,abc\n")
    res = ReplayBackend(table=str(bad)).evaluate(EvalInput("C"))
    assert res.reason.startswith("setup:") and "not a number" in res.reason


def test_replay_reads_wide_tables_with_column_mapping(tmp_path):
    p = tmp_path / "wide.csv"
    p.write_text(
        "smiles,name,xtb_reorg_kjmol,dft_reorg_kjmol,xtb_wall_s,dft_wall_s\n"
        "c1ccsc1,thiophene,22.24,24.76,0.26,34.0\n"
        "C#C,acetylene,30.71,,0.02,\n"
    )
    dft = ReplayBackend(table=str(p), columns={"reorg_energy_kjmol": "dft_reorg_kjmol"},
                        cost_column="dft_wall_s", fidelity=1)
    res = dft.evaluate(EvalInput("S1C=CC=C1"))
    assert res.ok and res.values == {"reorg_energy_kjmol": 24.76} and res.fidelity == 1
    assert dft.cost_estimate(EvalInput("c1ccsc1")) == 34.0
    miss = dft.evaluate(EvalInput("C#C"))
    assert miss.reason.startswith("setup:") and "dft_reorg_kjmol" in miss.reason
    xtb = ReplayBackend(table=str(p), columns={"reorg_energy_kjmol": "xtb_reorg_kjmol"},
                        cost_column="xtb_wall_s")
    assert xtb.evaluate(EvalInput("C#C")).values == {"reorg_energy_kjmol": 30.71}
