"""benchmarks/refinement.py on a user's own landscape (new-user trial 39): recorded runs are
reused only on the same levels and data, failed calculations are dropped, bad input ends in
one line. Tiny landscapes built from target_I subsets, one seed."""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
TARGET_I = ROOT / "data/reference/landscapes/target_I"
PHENOL = "Oc1ccccc1"  # C6H6O, target I's formula


@pytest.fixture(scope="module")
def bench():
    import refinement

    return refinement


@pytest.fixture(scope="module")
def source():
    from ase.io import read

    with (TARGET_I / "Target_I_landscape.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["connectivity_ok_MACE"] == "True"]
    frames = {a.info["id"]: a for a in read(str(TARGET_I / "Target_I_MACE.extxyz"), ":")}
    return rows, frames


def make(directory, source, n=16, *, cells=None, smiles=PHENOL, extra_row=None, prefix="Mine"):
    """``n`` target_I structures (every fifth, so the two levels disagree) as a landscape with levels
    MYFF (MACE) and MYDFT (PBE+MBD); ``cells``: {row index: (MYFF text, MYDFT text)} overrides."""
    from ase.io import write

    rows, frames = source
    sub = rows[::5][:n]
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / f"{prefix}_landscape.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "dE_MYFF_kJmol_per_mol", "dE_MYDFT_kJmol_per_mol"])
        for k, r in enumerate(sub):
            w.writerow([r["id"], *(cells or {}).get(k, (r["dE_MACE_kJmol_per_mol"], r["dE_PBE_MBD_kJmol_per_mol"]))])
        if extra_row is not None:
            w.writerow(extra_row(sub))
    for level in ("MYFF", "MYDFT"):
        write(str(directory / f"{prefix}_{level}.extxyz"), [frames[r["id"]] for r in sub], format="extxyz")
    if smiles is not None:
        (directory / "run.json").write_text(json.dumps({"smiles": smiles}))
    return [r["id"] for r in sub]


def run(bench, land, out, *extra, cheap="MYFF", expensive="MYDFT"):
    return bench.main(["--landscape", str(land), "--cheap", cheap, "--expensive", expensive, "--seeds", "1",
                       "--batch", "1", "--out", str(out), *extra])


def reused(capsys) -> str:
    return next(line for line in capsys.readouterr().err.splitlines() if "runs reused from" in line)


def test_recorded_runs_are_reused_only_on_the_same_levels_and_energies(bench, source, tmp_path, capsys, caplog):
    """S1, M5, S2, M3, C3: a failed calculation (nan, empty cell) is dropped with one warning and the
    campaign runs; a rerun says it reused the run; swapped levels or edited energies reuse nothing and
    write their own result file; --fresh reuses nothing and leaves the recorded files alone."""
    land, out = tmp_path / "mine", tmp_path / "out"
    ids = make(land, source, 16, cells={3: ("4.0", "nan"), 7: ("", "1.0")})
    with caplog.at_level(logging.WARNING):
        first = run(bench, land, out)
    warned = [r.getMessage() for r in caplog.records if "without a finite energy" in r.getMessage()]
    assert len(warned) == 1 and ids[3] in warned[0] and ids[7] in warned[0] and "2 structure(s)" in warned[0]
    assert first["landscapes"]["Mine"]["n_structures"] == 14
    assert "0 of 1 runs reused" in reused(capsys)
    progress = out / "refinement_Mine_MYFF-MYDFT_progress.jsonl"
    rec = json.loads(progress.read_text())
    assert (rec["cheap"], rec["expensive"]) == ("MYFF", "MYDFT") and rec["data_digest"]
    result = out / "refinement_Mine_MYFF-MYDFT_seeds1_q1.json"
    assert result.is_file()

    again = run(bench, land, out, "--recorded-only")
    assert "1 of 1 runs reused" in reused(capsys) and again["landscapes"]["Mine"]["agent_runs"] == \
        first["landscapes"]["Mine"]["agent_runs"]

    # the levels swapped: its own files, the recorded run of the other direction not rescored
    (out / "refinement_Mine_MYDFT-MYFF_progress.jsonl").write_text(progress.read_text())  # even if shared
    swapped = run(bench, land, out, "--recorded-only", cheap="MYDFT", expensive="MYFF")
    assert "0 of 1 runs reused" in reused(capsys) and swapped["landscapes"] == {}
    assert (out / "refinement_Mine_MYDFT-MYFF_seeds1_q1.json").is_file()
    assert json.loads(result.read_text().splitlines()[-1])["landscapes"]  # the first result not overwritten

    # the same ids with other expensive energies
    make(land, source, 16, cells={3: ("4.0", "nan"), 7: ("", "1.0"), 0: ("0.0", "30.0")})
    run(bench, land, out, "--recorded-only")
    assert "0 of 1 runs reused" in reused(capsys)

    # --fresh: nothing reused, separate files
    make(land, source, 16, cells={3: ("4.0", "nan"), 7: ("", "1.0")})
    run(bench, land, out, "--recorded-only", "--fresh")
    assert "0 of 1 runs reused" in reused(capsys)
    assert (out / "refinement_Mine_MYFF-MYDFT_fresh_seeds1_q1.json").is_file()
    assert progress.read_text().count("\n") == 1
    assert not (ROOT / "benchmarks/results/refinement_Mine_MYFF-MYDFT_progress.jsonl").exists()  # --out


def test_the_committed_runs_are_reused_only_at_their_own_levels(bench, tmp_path, capsys):
    """The committed target_I runs (records written before levels and data digests were stored)
    are reused for MACE -> PBE_MBD and not for PBE_MBD -> MACE (S1's reproducer)."""
    committed = ROOT / "benchmarks/results/refinement_Target_I_progress.jsonl"
    (tmp_path / committed.name).write_text(committed.read_text())
    res = run(bench, TARGET_I, tmp_path, "--recorded-only", cheap="MACE", expensive="PBE_MBD")
    assert "1 of 1 runs reused" in reused(capsys) and res["landscapes"]["Target_I"]["agent_runs"]["1"]
    res = run(bench, TARGET_I, tmp_path, "--recorded-only", cheap="PBE_MBD", expensive="MACE")
    assert "0 of 1 runs reused" in reused(capsys) and res["landscapes"] == {}
    assert (tmp_path / "refinement_Target_I_PBE_MBD-MACE_seeds1_q1.json").is_file()


def test_result_names_carry_levels_other_than_the_landscapes_own_and_fresh(bench, source, tmp_path):
    make(tmp_path / "mine", source, 14)
    (tmp_path / "mine" / "levels.json").write_text(json.dumps({"cheap": "MYFF", "expensive": "MYDFT"}))
    args = bench.main.__globals__["argparse"].Namespace
    base = dict(surrogate="auto", no_explore=False, no_skill_test=False, skill_ratio=bench.SKILL_RATIO,
                skill_mix=bench.SKILL_MIX, warmup=bench.WARMUP, cost_power=bench.COST_POWER,
                acq_inflation=bench.ACQ_INFLATION, acq_spread=bench.ACQ_SPREAD, model_cost_power=bench.MODEL_COST_POWER, utility=bench.UTILITY,
                fit_max_iter=bench.FIT_MAX_ITER,
                descriptor=bench.DEFAULT_DESCRIPTOR, fit_starts=bench.N_FIT_STARTS,
                lengthscale_prior=bench.LENGTHSCALE_PRIOR, refit_growth=bench.REFIT_GROWTH,
                warmup_dedup=bench.WARMUP_DEDUP, skill_score=bench.SKILL_SCORE, min_skill_n=bench.MIN_SKILL_N,
                n_initial=0, window=bench.WINDOW_KJMOL, past_completion=0, seeds=7, batch=None, grid=False)
    explore = (bench.EXPLORE_ABOVE, bench.EXPLORE_FRACTION)
    own = [(tmp_path / "mine", "MYFF", "MYDFT")]
    other = [(tmp_path / "mine", "MYDFT", "MYFF")]
    assert bench.result_stems(args(**base, landscape=[1]), own, bench.DEFAULT_BASELINES, explore)[0] == "refinement_Mine"
    assert bench.result_stems(args(**base, landscape=[1]), other, bench.DEFAULT_BASELINES, explore)[0] == \
        "refinement_Mine_MYDFT-MYFF"
    assert bench.result_stems(args(**base, landscape=[1], fresh=True), own, bench.DEFAULT_BASELINES, explore) == \
        ("refinement_Mine_fresh", "refinement_Mine_fresh")


@pytest.mark.parametrize("kind", ["duplicate", "no_smiles", "wrong_smiles", "too_few", "all_failed_but_few"])
def test_bad_user_data_is_refused_in_one_line_before_any_run(bench, source, tmp_path, kind):
    """S3, M4, C2, M3: refused when the table is read, one line naming the cause."""
    land = tmp_path / "mine"
    if kind == "duplicate":
        ids = make(land, source, 16, extra_row=lambda sub: [sub[5]["id"], "1.0", "2.0"])
        expect = f"structure {ids[5]} appears twice in Mine_landscape.csv"
    elif kind == "no_smiles":
        make(land, source, 16, smiles=None)
        expect = '--smiles SMILES or put a run.json'
    elif kind == "wrong_smiles":
        make(land, source, 16, smiles="c1ccc2ccccc2c1")
        expect = "SMILES c1ccc2ccccc2c1 (C10H8, 18 atoms) does not fit structure"
    elif kind == "too_few":
        make(land, source, 12)
        expect = "only 12 structures"
    else:
        make(land, source, 16, cells={k: ("1.0", "") for k in range(5)})
        expect = "only 11 structures with finite energies at MYFF and MYDFT"
    with pytest.raises(bench.LandscapeError) as exc:
        run(bench, land, tmp_path / "out")
    assert expect in str(exc.value) and "\n" not in str(exc.value)
    assert not (tmp_path / "out").exists()  # nothing ran, nothing written


def test_smiles_option_and_the_command_line_error(bench, source, tmp_path):
    """--smiles stands in for run.json; without either the script exits 1 with one line on stderr."""
    land = tmp_path / "mine"
    make(land, source, 14, smiles=None)
    case = bench.load_case(land, "MYFF", "MYDFT", smiles=PHENOL)
    assert case.smiles == PHENOL and len(case.ids) == 14
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/refinement.py"), "--landscape", str(land),
                           "--cheap", "MYFF", "--expensive", "MYDFT", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    lines = [ln for ln in proc.stderr.splitlines() if "Warning" not in ln and ln.strip()]
    assert proc.returncode == 1 and len(lines) == 1 and '{"smiles": "..."}' in lines[0], proc.stderr
    help_text = subprocess.run([sys.executable, str(ROOT / "benchmarks/refinement.py"), "--help"],
                               capture_output=True, text=True).stdout
    assert 'run.json             {"smiles": "..."}' in help_text and "--fresh" in help_text and "--out DIR" in help_text
