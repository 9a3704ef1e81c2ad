"""dft-reorg on borrowed geometries (DFT//xTB) warns when the two lambda+ components are
unbalanced, and the DFT//xTB level carries its caveat on the best line (newuser45b #3:
naphthalene B3LYP/6-31G//GFN2-xTB 13.65 / 1.60 kJ/mol, relaxed 8.89 / 8.90, and a 0.067 eV
"best" with no word). The value stays a value: warned, not unreliable."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import write_config
from sim_backends.reorg import KJMOL_PER_EV, DftReorgBackend

#: stored numbers (benchmarks/results/reorg_validation_progress.jsonl), kJ/mol
NAPHTHALENE_DFT_XTB = {"reorg_energy_kjmol": 15.25, "lambda_cation_kjmol": 13.65, "lambda_neutral_kjmol": 1.60}
FURAN_DFT_XTB = {"reorg_energy_kjmol": 31.65, "lambda_cation_kjmol": 12.03, "lambda_neutral_kjmol": 19.62}
NAPHTHALENE_DFT_DFT = {"reorg_energy_kjmol": 17.79, "lambda_cation_kjmol": 8.89, "lambda_neutral_kjmol": 8.90}

BODY = """
objective = "reorg_energy_kjmol"
max_evaluations = 6
[tracking]
enabled = false
[[backends]]
name = "xtb-reorg"
[[backends]]
name = "dft-reorg"
params = {{ geometry = "{geometry}" }}
"""


class _Stored(DftReorgBackend):
    """dft-reorg with the electronic structure replaced by four fixed total energies (eV)
    that give the stored naphthalene DFT//xTB components: the four-point scheme, the checks
    and the result's layout are the backend's own."""

    IP_EV = 7.5

    def _start_geometries(self, symbols, coords_A, params, ctx):
        return coords_A, coords_A + 0.01, {}

    def _relax(self, symbols, coords_A, state, params, ctx):
        return (self.IP_EV if state[0] else 0.0), np.asarray(coords_A, float), {"n_opt_steps": 0}

    def _energy(self, symbols, coords_A, state, params, ctx):
        if state[0]:  # the cation at the neutral geometry
            return self.IP_EV + NAPHTHALENE_DFT_XTB["lambda_cation_kjmol"] / KJMOL_PER_EV
        return NAPHTHALENE_DFT_XTB["lambda_neutral_kjmol"] / KJMOL_PER_EV


def test_the_warning_criterion():
    xtb_geoms = DftReorgBackend(geometry="xtb")
    (w,) = xtb_geoms._value_warnings(NAPHTHALENE_DFT_XTB, {"geometry": "xtb"})
    assert "unbalanced lambda components" in w and "13.7" in w and "1.6 kJ/mol" in w and "79%" in w
    assert "B3LYP/6-31G//GFN2-xTB geometries" in w and "\n" not in w
    assert xtb_geoms._value_warnings(FURAN_DFT_XTB, {"geometry": "xtb"}) == []  # 24 % of lambda+
    # the level's own minima: never, however the components fall
    assert DftReorgBackend()._value_warnings(NAPHTHALENE_DFT_XTB, {}) == []
    # B3LYP/6-31G energies on B3LYP/STO-3G geometries are borrowed too
    assert DftReorgBackend(opt_basis="sto-3g")._value_warnings(NAPHTHALENE_DFT_XTB, {"opt_basis": "sto-3g"})


def test_only_dft_xtb_declares_the_caveat():
    assert "biased low" in DftReorgBackend(geometry="xtb").caveat
    assert DftReorgBackend().caveat == "" and DftReorgBackend(geometry="dft").caveat == ""


def _status_text(tmp_path, geometry: str, results: dict[str, object]):
    from agent.campaign import campaign_status
    from agent.config import load_config
    from agent.store import Store
    from agent.summary import status_lines, status_record

    cfg = load_config(write_config(tmp_path, ["c1ccc2ccccc2c1 naphthalene", "c1ccoc1 furan"],
                                   BODY.format(geometry=geometry)))
    store = Store(tmp_path / "s.sqlite")
    store.add_molecules([("c1ccc2ccccc2c1", "naphthalene", True, ""), ("c1ccoc1", "furan", True, "")])
    ids = {m["name"]: m["id"] for m in store.molecules()}
    for name, res in results.items():
        store.record_evaluation(request_id=f"r{name}", molecule_id=ids[name], submitted_at=0.0, result=res)
    status = campaign_status(store, cfg)
    rec = status_record(status, store, cfg)
    store.close()
    return status, rec, "\n".join(status_lines(rec))


def _result(values, extra, backend="dft-reorg"):
    from sim_backends.base import EvalResult

    return EvalResult(backend=backend, backend_version="1", fidelity=1, status="ok", inputs_hash="h",
                      values=values, extra=extra, wall_s=1.0)


def test_a_dft_xtb_result_with_unbalanced_components_is_warned_in_the_status(tmp_path):
    from sim_backends.base import EvalInput

    res = _Stored(geometry="xtb").evaluate(EvalInput("c1ccc2ccccc2c1"))
    assert res.ok, res.reason
    assert res.values["lambda_cation_kjmol"] == pytest.approx(13.65) and res.extra["warnings"]
    furan = _result(FURAN_DFT_XTB, {"level": "B3LYP/6-31G//GFN2-xTB geometries"})
    status, rec, text = _status_text(tmp_path, "xtb", {"naphthalene": res, "furan": furan})
    # a warning, not unreliable: naphthalene (15.25) stays the best
    assert status.best_name == "naphthalene" and not status.unreliable
    assert ("WARNING: naphthalene at dft-reorg (lambda+ = 15.2 kJ/mol (0.158 eV)): unbalanced lambda "
            "components on borrowed geometries (B3LYP/6-31G//GFN2-xTB geometries)") in text
    assert "furan at dft-reorg" not in text  # balanced: no warning
    best = next(ln for ln in text.splitlines() if ln.startswith("best "))
    assert "naphthalene" in best and "see its WARNING below" in best
    assert "caveat: screening level, biased low: lambda+ 7-67 % below" in best
    assert rec["value_warnings"][0]["name"] == "naphthalene"


def test_relaxed_dft_has_neither_warning_nor_caveat(tmp_path):
    relaxed = _result(NAPHTHALENE_DFT_DFT, {"level": "B3LYP/6-31G, both states relaxed at this level"})
    status, rec, text = _status_text(tmp_path, "dft", {"naphthalene": relaxed})
    assert status.best_name == "naphthalene"
    assert "WARNING" not in text and "caveat" not in text and rec["level_caveat"] == ""


def test_the_best_line_says_the_caveat_without_a_warned_best(tmp_path):
    """The DFT//xTB level's caveat is on the best line whatever the best's components."""
    furan = _result(FURAN_DFT_XTB, {"level": "B3LYP/6-31G//GFN2-xTB geometries"})
    _, _, text = _status_text(tmp_path, "xtb", {"furan": furan})
    best = next(ln for ln in text.splitlines() if ln.startswith("best "))
    assert "furan" in best and "caveat: screening level" in best and "WARNING" not in text
