"""benchmarks/refinement.py drives the real Campaign on replayed landscapes: the same config,
seed and replays make the same decisions in the same order; results are charged the stored
CPU seconds; the fragment terms are computed once per landscape; non-default arguments
never write the default result file."""

from __future__ import annotations

import csv
import sys
from types import SimpleNamespace

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
FORMIC = ROOT / "data/landscapes/formic_acid_dft"


@pytest.fixture(scope="module")
def bench():
    import refinement

    return refinement


@pytest.mark.slow  # the fragment terms: GFN2-xTB/GFN1-xTB/D3 energies of every dimer of 20 structures
def test_two_campaign_runs_on_a_replayed_landscape_decide_the_same(bench):
    case = bench.load_case(FORMIC, "ff", "dft")
    assert case.fragment and case.smiles == "OC=O"
    bench.FRAGMENT_TERMS = bench._FragmentTermsOnce()
    try:
        runs = [bench.run_agent(case, q=2, seed=1, stop_after=6, max_structures=20, with_mae=False)
                for _ in range(2)]
        assert len(bench.FRAGMENT_TERMS.cache) == 1 and bench.FRAGMENT_TERMS.cpu_s() > 0  # computed once
    finally:
        bench.FRAGMENT_TERMS.module.landscape_fragment_terms = bench.FRAGMENT_TERMS.real
        bench.FRAGMENT_TERMS = None
    first, second = runs
    # the replayed results are charged their stored CPU seconds, the same in both runs; the one
    # real (diagnostic) evaluation is charged the CPU it took, which varies by a clock tick
    charged = [[(b, s, c if b.startswith("replay") else None) for b, s, c in r["decisions"]] for r in runs]
    assert charged[0] == charged[1] and first["order"] == second["order"]
    backends = [d[0] for d in first["decisions"]]
    assert backends[:2] == ["diagnostic", "replay-csp"] and set(backends[2:]) == {"replay-crystal"}
    assert len(first["order"]) == 6 and len(set(first["order"])) == 6
    lowest20 = set(sorted(range(len(case.ids)), key=lambda i: case.e_cheap[i])[:20])
    assert set(first["order"]) <= lowest20
    # each structure result is charged the stored CPU seconds of its DFT calculation
    with next(FORMIC.glob("*landscape.csv")).open(newline="") as fh:
        stored = {r["id"]: float(r["cpu_s"]) for r in csv.DictReader(fh)}
    for backend, sid, cpu_s in first["decisions"][2:]:
        assert cpu_s == pytest.approx(stored[sid.split("-", 1)[1]])
    # one decision record per structure-stage ask, P(complete) None before 10 are computed
    assert first["n_at"][0] == 0 and all(p is None for p in first["p_complete"][1.5]) and len(first["p_complete"][1.5]) == len(first["n_at"])


def test_only_the_default_run_writes_the_default_result_file(bench):
    def args(**kw):
        base = dict(landscape=None, surrogate="auto", no_explore=False, explore_above=bench.EXPLORE_ABOVE,
                    explore_fraction=bench.EXPLORE_FRACTION, no_skill_test=False, skill_ratio=bench.SKILL_RATIO,
                    n_initial=0, seeds=7, batch=None, grid=False, window=bench.WINDOW_KJMOL, past_completion=0,
                    min_skill_n=bench.MIN_SKILL_N, skill_score=bench.SKILL_SCORE, warmup=bench.WARMUP,
                    skill_mix=bench.SKILL_MIX, warmup_dedup=bench.WARMUP_DEDUP, cost_power=bench.COST_POWER,
                    refit_growth=bench.REFIT_GROWTH, model_cost_power=bench.MODEL_COST_POWER,
                    acq_inflation=bench.ACQ_INFLATION, acq_spread=bench.ACQ_SPREAD, utility=bench.UTILITY,
                    fit_max_iter=bench.FIT_MAX_ITER,
                    descriptor=bench.DEFAULT_DESCRIPTOR,
                    fit_starts=bench.N_FIT_STARTS, lengthscale_prior=bench.LENGTHSCALE_PRIOR)
        return SimpleNamespace(**{**base, **kw})

    default = (bench.EXPLORE_ABOVE, bench.EXPLORE_FRACTION)
    base = bench.DEFAULT_BASELINES
    assert bench.result_stems(args(), [], base, default) == ("refinement", "refinement")
    one = [(FORMIC, "ff", "dft")]
    stems = {
        bench.result_stems(args(landscape=[FORMIC]), one, base, default)[0],
        bench.result_stems(args(seeds=3), [], base, default)[0],
        bench.result_stems(args(batch=[1]), [], base, default)[0],
        bench.result_stems(args(grid=True), [], base, default)[0],
        bench.result_stems(args(no_explore=True), [], base, (None, 1.0))[0],
        bench.result_stems(args(), [], ("d3",), default)[0],
        bench.result_stems(args(window=1000.0), [], base, default)[0],
        bench.result_stems(args(past_completion=20), [], base, default)[0],
        bench.result_stems(args(min_skill_n=3), [], base, default)[0],
        bench.result_stems(args(skill_score="lpd"), [], base, default)[0],
        bench.result_stems(args(warmup="plain"), [], base, default)[0],
        bench.result_stems(args(skill_mix=not bench.SKILL_MIX), [], base, default)[0],
        bench.result_stems(args(warmup_dedup=0.02 if bench.WARMUP_DEDUP is None else None), [], base, default)[0],
        bench.result_stems(args(cost_power=0.5 if bench.COST_POWER == 1.0 else 1.0), [], base, default)[0],
        bench.result_stems(args(refit_growth=0.25 if bench.REFIT_GROWTH is None else None), [], base, default)[0],
        bench.result_stems(args(model_cost_power=0.5 if bench.MODEL_COST_POWER == 1.0 else 1.0), [], base,
                           default)[0],
        bench.result_stems(args(acq_inflation=1.5 if bench.ACQ_INFLATION == 1.0 else 1.0), [], base, default)[0],
        bench.result_stems(args(utility="odds" if bench.UTILITY == "p" else "p"), [], base, default)[0],
        bench.result_stems(args(acq_spread="loo" if bench.ACQ_SPREAD == "fixed" else "fixed"), [], base, default)[0],
        bench.result_stems(args(fit_max_iter=bench.FIT_MAX_ITER * 10), [], base, default)[0],
        bench.result_stems(args(descriptor="element+2A"), [], base, default)[0],
        bench.result_stems(args(fit_starts=bench.N_FIT_STARTS + 3), [], base, default)[0],
        bench.result_stems(args(lengthscale_prior=(0.0, 1.0) if bench.LENGTHSCALE_PRIOR is None else None), [], base,
                           default)[0],
    }
    assert len(stems) == 23 and "refinement" not in stems
    if bench.N_FIT_STARTS == 1 and bench.LENGTHSCALE_PRIOR is None:
        assert bench.result_stems(args(fit_starts=4), [], base, default)[0] == "refinement_starts4"
        assert bench.result_stems(args(lengthscale_prior=(-1.0, 0.5)), [], base, default)[0] == "refinement_lsprior-1,0.5"
        assert bench.result_stems(args(lengthscale_prior="auto"), [], base, default)[0] == "refinement_lsprior-auto"
        assert "lengthscale prior by LOO" in bench.AgentSettings(lengthscale_prior="auto").label
        assert "4 fit starts" in bench.AgentSettings(fit_starts=4).label
        assert "lengthscale prior shift 0 spread 1" in bench.AgentSettings(lengthscale_prior=(0.0, 1.0)).label
    assert bench.result_stems(args(descriptor="element+2A"), [], base, default)[0] == "refinement_desc-element+2A"
    assert "descriptor element+2A" in bench.AgentSettings(descriptor="element+2A").label
    # runs that go on past completion keep their own progress file
    assert bench.result_stems(args(past_completion=20), [], base, default)[1] == "refinement_past20"
    assert bench.result_stems(args(landscape=[FORMIC]), one, base, default)[0] == "refinement_formic_acid_dft"


def test_the_target_set_is_the_one_the_campaign_is_told_to_find(bench):
    """methanol_dft's 10th-lowest DFT structure lies 11.6 kJ/mol above the minimum: with the
    campaign's window of 10 kJ/mol the set it is asked for has 7 members (all within 2.9 kJ/mol),
    and a recorded run is scored on that set; --window 1000 asks for and scores the 10 lowest."""
    import numpy as np

    path = ROOT / "data/landscapes/methanol_dft"
    case = bench.load_case(path, "ff", "dft")
    spread = np.sort(case.e_exp) - case.e_exp.min()
    assert spread[9] > bench.WINDOW_KJMOL and len(case.top) == 7
    assert case.top == set(np.argsort(case.e_exp)[:7].tolist())
    assert "window_kjmol = 10.0" in bench.campaign_config(case, 1, 0, bench.AgentSettings(), ())
    wide = bench.load_case(path, "ff", "dft", window_kjmol=1000.0)
    assert len(wide.top) == 10 and "window_kjmol = 1000.0" in bench.campaign_config(wide, 1, 0, bench.AgentSettings(), ())
    cheap = [int(i) for i in np.argsort(case.e_cheap, kind="stable")]
    assert bench.count_until_top(cheap, case.top) == 7 and bench.count_until_top(cheap, wide.top) == 11


@pytest.mark.slow  # 15 decisions of the fragment dimer GP on formic_acid_dft (~40 CPU s)
def test_the_campaign_repeats_the_recorded_picks_of_the_committed_benchmark(bench):
    """Speed-ups of the structure stage's decision must not change it: the first 15 picks of
    formic_acid_dft, q = 1, seed 0 are those of the run recorded in the committed progress file
    (the runs the committed refinement.json is computed from)."""
    import json

    progress = ROOT / "benchmarks/results/refinement_formic_acid_dft_progress.jsonl"
    recorded = [json.loads(line) for line in progress.read_text().splitlines() if line.strip()]
    run = [r for r in recorded if r.get("driver") == "campaign" and r["q"] == 1 and r["seed"] == 0
           and r["settings"] == bench.AgentSettings().label][-1]  # the last record is the one reused
    case = bench.load_case(FORMIC, "ff", "dft")
    bench.FRAGMENT_TERMS = bench._FragmentTermsOnce()
    try:
        now = bench.run_agent(case, q=1, seed=0, stop_after=15, with_mae=False)
    finally:
        bench.FRAGMENT_TERMS.module.landscape_fragment_terms = bench.FRAGMENT_TERMS.real
        bench.FRAGMENT_TERMS = None
    assert now["order"] == run["order"][:15]
    assert now["n_at"] == run["n_at"][:len(now["n_at"])]


def test_stop_rule_offsets_and_the_end_of_a_run_past_completion(bench):
    """A run that goes on past completion ends when every calibrated rule has fired or after N
    more calculations; the offset of a rule is where it first fired minus where the set was
    complete (negative: premature)."""
    top = {0, 1}
    levels = {k: [None, 0.5, 0.85, 0.92, 0.97] for k in bench.STOP_INFLATIONS}
    run = {"order": [5, 0, 7, 1, 9, 8], "n_at": [1, 2, 3, 4, 5], "p_complete": levels}
    # complete after 4 calculations; P first >= 0.5 at 2 computed (premature), >= 0.9 at 4, >= 0.95 at 5
    assert bench.stop_offset(run, 0.5, 1.5, top) == -2
    assert bench.stop_offset(run, 0.9, 1.5, top) == 0
    assert bench.stop_offset(run, 0.95, 1.5, top) == 1
    assert bench.stop_offset(run, 0.99, 1.5, top) is None
    assert bench.premature_stop(run, 0.5, 1.5, top) == 2 and bench.premature_stop(run, 0.9, 1.5, top) is None
    assert not bench._finished({"order": [5, 0], "p_complete": levels}, top, 0)  # incomplete
    assert bench._finished({"order": [5, 0, 1], "p_complete": levels}, top, 0)  # default: stop at completion
    never = {k: [None, 0.5] for k in bench.STOP_INFLATIONS}
    assert not bench._finished({"order": [5, 0, 1, 7], "p_complete": never}, top, 3)
    assert bench._finished({"order": [5, 0, 1, 7, 8, 9], "p_complete": never}, top, 3)  # 3 after completion
    assert bench._finished({"order": [5, 0, 1], "p_complete": levels}, top, 3)  # every rule fired


def test_recorded_runs_of_another_structure_list_are_not_reused(bench, tmp_path):
    """A run's order indexes the landscape's structure list: after the landscape grows (or
    changes), its recorded runs must not be replayed as if they were runs on the new list."""
    import json

    old, new = bench.landscape_digest(["m0001", "m0002"]), bench.landscape_digest(["m0001", "m0002", "m0003"])
    assert old != new and bench.landscape_digest(["m0001", "m0002"]) == old
    base = {"driver": "campaign", "landscape": "x", "settings": "s", "q": 1, "p_complete": {}, "mae": {}}
    path = tmp_path / "progress.jsonl"
    path.write_text("\n".join(json.dumps({**base, **extra}) for extra in (
        {"seed": 0, "landscape_digest": old}, {"seed": 1, "landscape_digest": new}, {"seed": 2})) + "\n")
    assert sorted(k[2] for k in bench._read_progress(path, "x", new)) == [1, 2]
    assert sorted(k[2] for k in bench._read_progress(path, "x", old)) == [0, 2]
    assert sorted(k[2] for k in bench._read_progress(path, "x")) == [0, 1, 2]


@pytest.mark.parametrize("argv", [["--min-skill-n", "1"], ["--skill-ratio", "0"]])
def test_bad_options_end_in_a_one_line_usage_error(bench, argv, capsys):
    """Nothing runs and nothing is written: argparse's exit 2 with the reason."""
    with pytest.raises(SystemExit) as exc:
        bench.main(argv + ["--landscape", str(ROOT / "data" / "landscapes" / "methanol_dft")])
    assert exc.value.code == 2
    assert " error: --" in capsys.readouterr().err.strip().splitlines()[-1]


def test_runs_recorded_by_other_code_are_reused_only_when_a_rerun_reproduces_them(bench, tmp_path):
    """A recorded run made by other code (or other numerical libraries) is a figure of that code:
    one rerun per (setting, batch size) decides whether the group is still what this code does.
    Reproduced: reused, and a check line spares the rerun next time. Not reproduced: the group is
    dropped and the rerun replaces its record."""
    import io
    import json

    from rich.console import Console

    case = SimpleNamespace(name="x", top={0, 1}, data_digest="d")
    label = bench.AgentSettings().label
    progress = tmp_path / "progress.jsonl"
    base = {"driver": "campaign", "landscape": "x", "landscape_digest": "L", "cheap": None, "expensive": None,
            "data_digest": "d", "settings": label, "q": 1, "p_complete": {}, "mae": {}}
    # seeds 0 and 1 by code that no longer exists, seed 2 by this code
    lines = [{**base, "seed": 0, "order": [5, 0, 1], "code_digest": "old"},
             {**base, "seed": 1, "order": [0, 5, 1], "code_digest": "old"},
             {**base, "seed": 2, "order": [1, 0], "code_digest": bench.code_digest()}]
    progress.write_text("".join(json.dumps(rec) + "\n" for rec in lines))
    recorded = {(r["settings"], r["q"], r["seed"]): dict(r) for r in lines}
    calls = []

    def compute(order):
        def run(c, q, s):
            calls.append((c.label, q, s))
            return {"order": order}
        return run

    log = io.StringIO()
    quiet = Console(file=log, width=400, log_path=False)
    kept = dict(recorded)
    assert bench._recheck(case, {k: v for k, v in kept.items() if k[2] == 2}, kept, [bench.AgentSettings()], [1],
                          progress, "L", compute([5, 0, 1]), quiet) == 0  # not needed now: not rerun
    assert bench._recheck(case, dict(kept), kept, [bench.AgentSettings()], [1], progress, "L", compute([5, 0, 1]),
                          quiet) == 1
    assert calls == [(label, 1, 0)] and sorted(kept) == sorted(recorded)  # the lowest seed of the old group
    assert bench._read_checks(progress, "x", case) == {(label, 1, "old")}
    calls.clear()  # checked once: no rerun next time
    assert bench._recheck(case, dict(recorded), dict(recorded), [bench.AgentSettings()], [1], progress, "L",
                          compute([0, 1]), quiet) == 0
    assert calls == []

    progress.write_text("".join(json.dumps(rec) + "\n" for rec in lines))  # no check line
    changed = dict(recorded)
    assert bench._recheck(case, dict(changed), changed, [bench.AgentSettings()], [1], progress, "L",
                          compute([5, 7, 0, 1]), quiet) == 1
    assert sorted(k[2] for k in changed) == [0, 2] and changed[(label, 1, 0)]["order"] == [5, 7, 0, 1]
    assert bench._read_checks(progress, "x", case) == set()
    assert "(or another machine) no longer reproduce (seed 0: 4 calculations, recorded 3; first different pick at 2)" in \
        log.getvalue()
