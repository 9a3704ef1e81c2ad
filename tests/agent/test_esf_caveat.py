"""The lambda+ caveat printed beside every ESF mobility quotes the calibration the ESF levels
use (GFN2-xTB lambda+ plus an empirical shift to B3LYP/6-31G//B3LYP/6-31G) and the outlier it
names, as the committed tables and benchmark give them."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_caveat_quotes_the_calibration_and_its_outlier():
    from agent.esf_report import XTB_LAMBDA_CAVEAT
    from sim_backends.reorg import XTB_LAMBDA_SHIFT_KJMOL, XTB_LAMBDA_SHIFT_N, XTB_LAMBDA_SHIFT_SD_KJMOL

    bench = json.loads((ROOT / "benchmarks" / "results" / "reorg_calibration.json").read_text())
    assert XTB_LAMBDA_SHIFT_N == bench["n_fitted"] >= 10
    assert f"plus {XTB_LAMBDA_SHIFT_KJMOL:g} kJ/mol" in XTB_LAMBDA_CAVEAT
    assert f"over {bench['n_fitted']} three-ring pi molecules" in XTB_LAMBDA_CAVEAT
    assert f"error {bench['loo_rmse_shift_kjmol']:.1f} kJ/mol RMS" in XTB_LAMBDA_CAVEAT
    assert XTB_LAMBDA_SHIFT_SD_KJMOL == pytest.approx(bench["loo_rmse_shift_kjmol"], abs=0.05)
    assert f"there {bench['spearman_fitted_set']:.2f}" in XTB_LAMBDA_CAVEAT
    from sim_backends.reorg import (XTB_LAMBDA_HOLDOUT_MAE_KJMOL, XTB_LAMBDA_HOLDOUT_N,
                                    XTB_LAMBDA_HOLDOUT_RAW_MAE_KJMOL)

    assert XTB_LAMBDA_HOLDOUT_N == bench["n_holdout"]
    assert XTB_LAMBDA_HOLDOUT_MAE_KJMOL == pytest.approx(bench["holdout_mae_shift_kjmol"], abs=0.005)
    assert XTB_LAMBDA_HOLDOUT_RAW_MAE_KJMOL == pytest.approx(bench["holdout_mae_uncalibrated_kjmol"], abs=0.005)
    assert (f"on {bench['n_holdout']} polycyclic molecules computed after it was fixed" in XTB_LAMBDA_CAVEAT
            and f"error is {bench['holdout_mae_shift_kjmol']:.1f} kJ/mol" in XTB_LAMBDA_CAVEAT)
    held = {r["name"] for r in bench["rows"] if r.get("held_out")}
    named = re.search(r"computed after it was fixed \(([^)]*)\)", XTB_LAMBDA_CAVEAT).group(1)
    assert all(n in named for n in held), (held, named)
    m = re.search(r"([^\s(]+) (\d+\.\d) against (\d+\.\d) kJ/mol at B3LYP", XTB_LAMBDA_CAVEAT)
    rows = {r["name"]: r for r in csv.DictReader((ROOT / "data" / "benchmarks" / "reorg_pool60_dftdft.csv").open())}
    row = rows[m.group(1)]
    assert float(row["xtb_reorg_kjmol"]) == pytest.approx(float(m.group(2)), abs=0.05)
    assert float(row["dft_reorg_kjmol"]) == pytest.approx(float(m.group(3)), abs=0.05)
