"""newuser45b #5: report/results.csv of a screen.

Every pool molecule is in the table once the molecule surrogate is fitted: the uncomputed ones
with the surrogate's mean and 1-sigma at each level (the stage's fitted model, not refitted by
``report``); values are rounded by unit; ``results_columns.csv`` names each column's quantity,
unit and level of theory, so a DFT//DFT and a DFT//xTB table can be told apart. Data: the
replay table (data/benchmarks/reorg_table.csv) run with the local executor."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from conftest import write_config
from test_api_results import body
from test_molecule_campaign_replay import run_replay_campaign


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    """A finished replay campaign over the table's molecules with a DFT value and 40 more
    (their DFT evaluations fail) and the live model's predictions at its end."""
    from sim_backends.replay import reorg_table_values

    tmp = tmp_path_factory.mktemp("scr")
    smiles, _, dft = reorg_table_values()
    with_dft = [s for s, d in zip(smiles, dft, strict=True) if np.isfinite(d)]
    camp = run_replay_campaign(tmp, with_dft + [s for s in smiles if s not in with_dft][:40], seed=0, hours=0.5)
    try:
        from agent.report import bounded_prediction

        stage = camp.molecules
        # lambda+ >= 0: the GP's Gaussian truncated there (its raw mean reached -2 kJ/mol)
        preds = [bounded_prediction(*stage.surrogate.predict(stage.fingerprints, f), 0.0) for f in range(2)]
        live = {stage.smiles[i]: [tuple(float(a[i]) for a in preds[f]) for f in range(2)]
                for i in range(len(stage.smiles))}
    finally:
        camp.close()
    return tmp / "runs", live


def _write(runs, tmp_path, monkeypatch):
    """results.csv and its sidecar of a read-only reopened campaign, with any hyperparameter
    optimisation refused."""
    from agent.campaign import Campaign
    from agent.report import RESULTS_COLUMNS_FILE, results_table
    from agent.surrogates.molecule_gp import MoleculeSurrogate

    def refused(self):
        raise AssertionError("report refitted the surrogate's hyperparameters")

    monkeypatch.setattr(MoleculeSurrogate, "_fit_hyperparameters", refused)
    notes: list[str] = []
    with Campaign.open("replay-0", runs, readonly=True) as camp:
        n_pool = len(camp.smiles)
        path = results_table(camp, tmp_path / "results.csv", notes)
    rows = list(csv.DictReader(path.open()))
    columns = {r["column"]: r for r in csv.DictReader((tmp_path / RESULTS_COLUMNS_FILE).open())}
    return rows, columns, n_pool, notes


def test_every_pool_molecule_is_listed_with_predictions_where_not_computed(screen, tmp_path, monkeypatch):
    runs, live = screen
    rows, columns, n_pool, notes = _write(runs, tmp_path, monkeypatch)
    assert len(rows) == n_pool == len({r["smiles"] for r in rows}) > 50  # the valid pool
    assert not notes
    xtb, dft = "replay-xtb-reorg_reorg_energy_kjmol", "replay-dft-reorg_reorg_energy_kjmol"
    header = list(rows[0])
    assert header == ["smiles", "name", xtb, dft, f"{xtb}_pred_mean", f"{xtb}_pred_sd", f"{dft}_pred_mean",
                      f"{dft}_pred_sd", "notes"]
    assert header == list(columns)
    top = [r for r in rows if r[dft]]
    assert 0 < len(top) and rows[: len(top)] == top  # computed at the top level first, best first
    assert [float(r[dft]) for r in top] == sorted(float(r[dft]) for r in top)
    rest = rows[len(top):]
    means = [float(r[f"{dft}_pred_mean"]) for r in rest]
    assert means == sorted(means)  # then ranked by the predicted top-level value
    cheap_only = [r for r in rest if r[xtb]]
    assert 0 < len(cheap_only) < len(rest)
    assert all(r["notes"].startswith("no computed value") == (not r[xtb]) for r in rest)
    for r in rows:
        for f, col in enumerate((xtb, dft)):
            if r[col]:  # a computed level: no prediction beside it
                assert not r[f"{col}_pred_mean"] and not r[f"{col}_pred_sd"]
            else:  # the live model's prediction, as the fitted stage made it
                mean, sd = live[r["smiles"]][f]
                assert float(r[f"{col}_pred_mean"]) >= 0.0  # never a value physics forbids
                assert float(r[f"{col}_pred_mean"]) == pytest.approx(mean, abs=0.006)
                assert float(r[f"{col}_pred_sd"]) == pytest.approx(sd, abs=0.006) and sd > 0


def test_values_are_rounded_to_hundredths_of_a_kjmol(screen, tmp_path, monkeypatch):
    rows, _, _, _ = _write(screen[0], tmp_path, monkeypatch)
    cells = [v for r in rows for k, v in r.items() if k not in ("smiles", "name", "notes") and v]
    assert len(cells) > 100
    assert all(len(v.split(".")[1]) == 2 for v in cells), [v for v in cells if len(v.split(".")[1]) != 2][:5]


def test_sidecar_names_quantity_unit_and_level_of_every_column(screen, tmp_path, monkeypatch):
    _, columns, _, _ = _write(screen[0], tmp_path, monkeypatch)
    for name, c in columns.items():
        assert c["description"], name
        if name.startswith("replay-"):
            assert (c["quantity"], c["unit"]) == ("hole reorganisation energy λ+", "kJ/mol"), c
            assert c["level_of_theory"], c
    assert columns["replay-dft-reorg_reorg_energy_kjmol"]["level_of_theory"] == \
        columns["replay-dft-reorg_reorg_energy_kjmol_pred_sd"]["level_of_theory"]
    assert "B3LYP/6-31G//GFN2-xTB" in columns["replay-dft-reorg_reorg_energy_kjmol"]["level_of_theory"]


def test_report_writes_the_sidecar_and_says_when_there_are_no_predictions(tmp_path):
    """A campaign without a fitted surrogate lists its computed molecules only, and
    summary.txt says why the prediction columns are empty."""
    from agent.campaign import Campaign
    from agent.config import load_config
    from agent.report import RESULTS_COLUMNS_FILE, write_plots

    camp = Campaign.create(load_config(write_config(tmp_path, ["c1ccccc1 benzene", "CC ethane"], body("dft"))),
                           tmp_path / "runs")
    try:
        paths = write_plots(camp)
    finally:
        camp.close()
    out = tmp_path / "runs" / "t" / "report"
    assert out / RESULTS_COLUMNS_FILE in paths and (out / RESULTS_COLUMNS_FILE).is_file()
    assert len(list(csv.DictReader((out / "results.csv").open()))) == 0
    assert "results.csv has no surrogate predictions" in (out / "summary.txt").read_text()


def test_dft_on_dft_and_dft_on_xtb_tables_can_be_told_apart(tmp_path):
    from agent.campaign import Campaign
    from agent.config import load_config
    from agent.report import results_columns

    levels = {}
    for geometry in ("dft", "xtb"):
        d = tmp_path / geometry
        d.mkdir()
        with Campaign.create(load_config(write_config(d, ["c1ccccc1 benzene"], body(geometry))),
                             d / "runs") as camp:
            cols = {c["column"]: c for c in results_columns(camp)}
        levels[geometry] = cols["dft-reorg_reorg_energy_kjmol"]["level_of_theory"]
    assert levels == {"dft": "B3LYP/6-31G, both states relaxed at this level",
                      "xtb": "B3LYP/6-31G//GFN2-xTB geometries"}


def test_csv_number_rounds_by_unit():
    from agent.report import csv_number

    assert csv_number("kJ/mol", 17.788649841859236) == "17.79"
    assert csv_number("kJ/mol per molecule", -110.7345) == "-110.73"
    assert csv_number("eV", 0.18436532) == "0.184" and csv_number("g/cm3", 1.38044) == "1.380"
    assert csv_number("log10 cm2/(V s)", -1.23456) == "-1.235"
    assert csv_number("cm2/(V s)", 0.0123456) == "0.01235"
    assert csv_number("kJ/mol", None) == csv_number("kJ/mol", float("nan")) == ""
    assert np.isfinite(float(csv_number("", 1e-9)))
