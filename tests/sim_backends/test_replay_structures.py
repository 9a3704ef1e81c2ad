"""The structure-keyed replays of sim_backends/replay.py (replay-csp, replay-crystal) on the
stored landscapes: what they serve, what they charge, and their refusals."""

from __future__ import annotations

import csv
import json

import pytest

from conftest import ROOT
from sim_backends.base import EvalInput, ParamsError
from sim_backends.registry import backend_class, get_backend, user_facing

FORMIC = ROOT / "data/landscapes/formic_acid_dft"
TARGET_I = ROOT / "data/reference/landscapes/target_I"
FORMIC_PARAMS = {"landscape": str(FORMIC), "cheap": "ff", "level": "dft"}


def _table(path):
    with next(path.glob("*landscape.csv")).open(newline="") as fh:
        return {r["id"]: r for r in csv.DictReader(fh)}


def _csp(params, smiles="OC=O"):
    res = get_backend("replay-csp", **params).evaluate(EvalInput(smiles))
    assert res.ok, res.reason
    return res


def test_registered_internal_and_hidden_from_users():
    for name in ("replay-csp", "replay-crystal"):
        assert backend_class(name).internal and name not in user_facing()
    assert backend_class("replay-crystal").target == "structure"


def test_csp_replay_serves_the_cheap_level_structures_lowest_first():
    from pymatgen.core import Structure

    res = _csp({**FORMIC_PARAMS, "n": 5})
    recs = res.extra["landscape"]
    rows = _table(FORMIC)
    ff = {i: float(r["E_ff_kJmol_per_mol"]) for i, r in rows.items()}
    lowest = sorted(ff, key=ff.get)[:5]
    assert [r["id"] for r in recs] == lowest
    e_min = min(ff.values())  # relative to the lowest structure (the table's dE, 4 decimals)
    assert [r["energy_kjmol"] for r in recs] == pytest.approx([ff[i] - e_min for i in lowest], abs=1e-4)
    assert res.values["n_minima"] == 5 and res.values["global_min_energy_kjmol"] == pytest.approx(0.0, abs=1e-9)
    st = Structure.from_str(recs[0]["cif"], fmt="cif")
    assert len(st) == int(rows[lowest[0]]["n_atoms"]) and recs[0]["z"] == int(rows[lowest[0]]["Z"])
    assert res.cpu_s == 0.0


def test_crystal_replay_returns_stored_energy_dimers_and_charges_stored_cpu():
    rows = _table(FORMIC)
    records = {json.loads(x)["id"]: json.loads(x) for x in (FORMIC / "dft_results.jsonl").read_text().splitlines()
               if x.strip()}
    rec = _csp(FORMIC_PARAMS).extra["landscape"][3]
    b = get_backend("replay-crystal", **FORMIC_PARAMS)
    inp = EvalInput("OC=O", structure_cif=rec["cif"], structure_id=f"m7-{rec['id']}")
    res = b.evaluate(inp)
    assert res.ok, res.reason
    dft = {i: float(r["E_dft_kJmol_per_mol"]) for i, r in rows.items()}
    assert res.values["energy_kjmol"] == pytest.approx(dft[rec["id"]] - min(dft.values()), abs=1e-4)
    assert res.cpu_s == pytest.approx(float(rows[rec["id"]]["cpu_s"]))  # stored, not this process's
    assert res.extra["cpu_s_source"] == "stored"
    assert res.extra["dimers"] == records[rec["id"]]["dimers"]
    settings = json.loads((FORMIC / "run.json").read_text())["expensive_settings"]
    assert b.fragment_terms_settings() == {"cutoff_A": settings["cutoff_A"], "cutoff_mode": settings["cutoff_mode"],
                                           "functional": settings["functional"]}
    # prior: unique dimers x 4 s (geometry only); nothing without a structure
    assert b.cost_estimate(inp) == pytest.approx(4.0 * int(rows[rec["id"]]["n_unique_dimers"]))
    assert b.cost_estimate(EvalInput("OC=O")) == 0.0
    plain = get_backend("replay-crystal", **FORMIC_PARAMS, fragment=False)
    assert plain.fragment_terms_settings() is None and "dimers" not in plain.evaluate(inp).extra


def test_target_i_replay_drops_broken_structure_and_estimates_cost():
    params = {"landscape": str(TARGET_I), "cheap": "MACE", "level": "PBE_MBD"}
    recs = _csp(params, smiles="Oc1ccccc1").extra["landscape"]  # no stored SMILES: any molecule
    ids = [r["id"] for r in recs]
    assert len(ids) == 88 and "af9cce730230555" not in ids  # flagged connectivity_ok=False
    b = get_backend("replay-crystal", **params)
    assert b.fragment_terms_settings() is None
    res = b.evaluate(EvalInput("Oc1ccccc1", structure_cif=recs[0]["cif"], structure_id=f"m1-{ids[0]}"))
    rows = _table(TARGET_I)
    assert res.values["energy_kjmol"] == pytest.approx(float(rows[ids[0]]["dE_PBE_MBD_kJmol_per_mol"]), abs=1e-6)
    # no CPU stored for this level: the prior estimate is charged, and says so
    assert res.extra["cpu_s_source"] == "estimate" and res.cpu_s == pytest.approx(1e-4 * 104**3)


@pytest.mark.parametrize("name, params, smiles, sid, reason", [
    ("replay-csp", FORMIC_PARAMS, "NC=O", None, "is of OC=O"),
    ("replay-csp", {"cheap": "ff", "level": "dft"}, "OC=O", None, "'landscape'"),
    ("replay-csp", {**FORMIC_PARAMS, "landscape": "/nonexistent"}, "OC=O", None, "not found"),
    ("replay-csp", {**FORMIC_PARAMS, "level": "mp2"}, "OC=O", None, "mp2"),
    ("replay-crystal", FORMIC_PARAMS, "OC=O", "m1-nosuch", "no stored dft energy"),
])
def test_misses_are_one_line_setup_failures(name, params, smiles, sid, reason):
    res = get_backend(name, **params).evaluate(EvalInput(smiles, structure_cif="x" if sid else None,
                                                         structure_id=sid))
    assert res.status == "failed" and res.reason.startswith("setup:") and reason in res.reason
    assert "\n" not in res.reason


def test_unknown_params_are_refused_by_name():
    with pytest.raises(ParamsError, match="cutoff"):
        backend_class("replay-crystal").check_params({**FORMIC_PARAMS, "cutoff": 3})
    with pytest.raises(ParamsError, match="n"):
        backend_class("replay-csp").check_params({**FORMIC_PARAMS, "n": 0})
