"""Fragment decomposition of the dft-crystal level and the dimer GP built on it, checked on the
stored formic acid FF -> DFT landscape (every structure computed with per-dimer records)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

# real physics on every test (RESP charges from HF, GFN2/GFN1-xTB dimer baselines for the whole
# landscape); the fragment model's contract is also checked fast on a synthetic landscape
# (test_structure_surrogate_contract.py)
pytestmark = pytest.mark.slow

LAND = Path(__file__).resolve().parents[3] / "data/landscapes/formic_acid_dft"


@pytest.fixture(scope="module")
def landscape():
    from ase.io import read

    from sim_backends.dft_crystal import molecule_resp_charges
    from sim_backends.fragment_terms import dimer_deltas, fragment_terms
    from sim_backends.structures import Crystal

    with open(LAND / "formic_acid_dft_landscape.csv", newline="") as fh:
        table = {r["id"]: r for r in csv.DictReader(fh)}
    records = {}
    for line in (LAND / "dft_results.jsonl").read_text().splitlines():
        r = json.loads(line)
        records[r["id"]] = r
    frames = read(LAND / "formic_acid_dft_ff.extxyz", index=":")
    charges = molecule_resp_charges(Crystal.from_atoms(frames[0]))
    ids, terms, deltas, e_ff, e_dft = [], [], {}, [], []
    for k, atoms in enumerate(frames):
        sid = atoms.info["id"]
        crystal = Crystal.from_atoms(atoms)
        # periodic D3 computed here for the first three (checked below), stored value for the rest
        d3 = None if k < 3 else float(table[sid]["e_d3_kjmol"])
        t = fragment_terms(crystal, charges, 3.0, "contact", "pbe", e_d3_kjmol=d3)
        ids.append(sid)
        terms.append(t)
        deltas[k] = dimer_deltas(t, records[sid]["dimers"])
        e_ff.append(float(table[sid]["E_ff_kJmol_per_mol"]))
        e_dft.append(float(table[sid]["E_dft_kJmol_per_mol"]))
    return {"ids": ids, "terms": terms, "deltas": deltas, "e_ff": np.array(e_ff), "e_dft": np.array(e_dft),
            "table": table, "records": records, "frames": frames, "charges": charges}


def test_cheap_terms_plus_dimer_corrections_rebuild_the_dft_energy(landscape):
    t, d, e = landscape["terms"], landscape["deltas"], landscape["e_dft"]
    rebuilt = np.array([t[k].known_kjmol + t[k].weights @ d[k] for k in range(len(t))])
    # pymatgen's Ewald sum (default precision) against the stored run: a few 0.01 kJ/mol
    assert np.max(np.abs(rebuilt - e)) < 0.15
    for k in range(3):
        assert t[k].e_d3_kjmol == pytest.approx(float(landscape["table"][landscape["ids"][k]]["e_d3_kjmol"]),
                                                abs=1e-6)
    # what makes the structure-level correction hard: the split between the DFT two-body sum and
    # the point-charge remainder moves a lot between structures, the per-dimer delta much less
    e2b = np.array([float(landscape["table"][i]["e_dft_2body_kjmol"]) for i in landscape["ids"]])
    assert np.std(e2b) > 5.0
    assert all(len(tk.keys) == len(landscape["records"][i]["dimers"]) for tk, i in zip(t, landscape["ids"]))


def test_dimer_records_of_another_structure_are_refused(landscape):
    from sim_backends.base import SetupError
    from sim_backends.fragment_terms import dimer_deltas

    t = landscape["terms"]
    other = next(k for k in range(1, len(t)) if len(t[k].keys) != len(t[0].keys)
                 or not np.allclose(t[k].contact_A, t[0].contact_A, atol=2e-3))
    with pytest.raises(SetupError):
        dimer_deltas(t[0], landscape["records"][landscape["ids"][other]]["dimers"])
    # full records from the backend are matched by (i, j, shift)
    recs = [{"i": i, "j": j, "shift": list(s), "multiplicity": 1, "e_int_kjmol": 1.0} for i, j, s in t[0].keys]
    assert np.allclose(dimer_deltas(t[0], recs), 1.0 - t[0].e_pc_dimer_kjmol)
    recs[0]["shift"] = [9, 9, 9]
    with pytest.raises(SetupError):
        dimer_deltas(t[0], recs)


def test_fragment_model_learns_the_landscape_from_few_structures(landscape):
    from agent.surrogates.fragment_gp import FragmentDeltaModel

    terms, deltas, e_ff, e_dft = landscape["terms"], landscape["deltas"], landscape["e_ff"], landscape["e_dft"]
    n = len(terms)
    X = np.arange(n)
    rng = np.random.default_rng(0)
    train = sorted(rng.choice(n, 15, replace=False).tolist())
    rest = np.setdiff1d(np.arange(n), train)
    # energies relative to an arbitrary reference, as a replay reports them
    ref = 7.0
    model = FragmentDeltaModel(terms, e_ff, dimer_deltas=deltas, seed=0).fit(
        {i: e_dft[i] - ref for i in train})
    assert model.active and model.offset == pytest.approx(-ref, abs=0.15)
    mean, std = model.predict(X)
    pred = e_ff + mean
    # much better than the cheap level shifted by the mean correction of the computed ones
    shift = np.mean((e_dft - ref - e_ff)[train])
    mae_shift = np.mean(np.abs(e_ff[rest] + shift - (e_dft[rest] - ref)))
    mae = np.mean(np.abs(pred[rest] - (e_dft[rest] - ref)))
    assert mae_shift > 4.0 and mae < 0.6 * mae_shift, (mae, mae_shift)
    # computed structures are reproduced (up to the GP's noise term); uncertainty is honest on the rest
    fit_err = np.abs(pred[train] - (e_dft[train] - ref))
    assert np.max(fit_err) < 1.0 and np.mean(fit_err) < 0.3
    assert np.mean(np.abs(pred[rest] - (e_dft[rest] - ref)) <= 2.5 * std[rest]) > 0.75
    # joint draws: shape, and their spread matches the predicted std
    draws = model.sample(X, 400, seed=1)
    assert draws.shape == (400, n)
    assert np.allclose(draws.std(0)[rest], std[rest], rtol=0.25)


def test_fragment_model_prior_loo_and_conditioning(landscape):
    from agent.surrogates.fragment_gp import FragmentDeltaModel

    terms, deltas, e_ff, e_dft = landscape["terms"], landscape["deltas"], landscape["e_ff"], landscape["e_dft"]
    n = len(terms)
    X = np.arange(n)
    prior = FragmentDeltaModel(terms, e_ff, dimer_deltas=deltas, seed=0).fit({3: e_dft[3]})
    mean, std = prior.predict(X)
    assert not prior.active and np.all(mean == 0.0) and np.all(std == prior.prior_std_kjmol)
    train = [0, 4, 9, 17, 30, 44, 61]
    model = FragmentDeltaModel(terms, e_ff, dimer_deltas=deltas, seed=0).fit({i: e_dft[i] for i in train})
    # leave-one-structure-out residual == explicit model without that structure, same hyperparameters
    s = train[2]
    held = model.refit_fixed({i: e_dft[i] for i in train if i != s})
    assert held.n_structures == len(train) - 1
    pred_s = e_ff[s] + held.predict(X[[s]])[0][0]
    assert model.loo_residual_kjmol[2] == pytest.approx(e_dft[s] - pred_s, abs=0.05)
    assert model.loo_mae_kjmol == pytest.approx(np.mean(np.abs(model.loo_residual_kjmol)))
    # ... and its spread is that model's predictive spread (calibration included)
    assert model.loo_std_kjmol[2] == pytest.approx(held.predict(X[[s]])[1][0], rel=0.05)
    assert prior.loo_std_kjmol is None
    # kriging believer: conditioning on a pending structure shrinks its spread, keeps its mean
    j = 70
    cond = model.condition([j])
    m0, s0 = model.predict(X[[j]])
    m1, s1 = cond.predict(X[[j]])
    assert s1[0] < 0.8 * s0[0] and m1[0] == pytest.approx(m0[0], abs=0.05)
    assert model.embedding(X).shape == (n, terms[0].features.shape[1])


def test_dimer_baselines_track_the_dft_correction(landscape):
    """The xTB dimer baselines are cheap estimates of delta: strongly correlated with it over
    the landscape's dimers, and computed for every dimer (the model's extra inputs)."""
    terms, deltas = landscape["terms"], landscape["deltas"]
    assert terms[0].baseline_names == ["gfn2-xtb", "gfn1-xtb", "d3"]
    base = np.vstack([t.baselines for t in terms])
    delta = np.concatenate([deltas[k] for k in range(len(terms))])
    assert base.shape == (len(delta), 3) and np.all(np.isfinite(base))
    assert np.corrcoef(base[:, 0], delta)[0, 1] > 0.95
    assert np.corrcoef(base[:, 1], delta)[0, 1] > 0.9
    # D3(BJ) dispersion of a dimer is attractive
    assert np.all(base[:, 2] < 0.0)


def test_unknown_baseline_and_failed_baseline_values(landscape):
    from agent.surrogates.fragment_gp import FragmentDeltaModel
    from sim_backends.base import SetupError
    from sim_backends.fragment_terms import fragment_terms
    from sim_backends.structures import Crystal

    crystal = Crystal.from_atoms(landscape["frames"][0])
    with pytest.raises(SetupError, match="unknown dimer baseline"):
        fragment_terms(crystal, landscape["charges"], 3.0, baselines=("gfn2-xtb", "mp2"))
    bare = fragment_terms(crystal, landscape["charges"], 3.0, e_d3_kjmol=0.0, baselines=())
    assert bare.baselines.shape == (len(bare.keys), 0)
    # a dimer whose xTB SCF failed carries NaN; the model still fits and predicts finite values
    terms = [copy_terms(t) for t in landscape["terms"]]
    terms[5].baselines[0, 0] = np.nan
    terms[40].baselines[:, 1] = np.nan
    train = [0, 4, 5, 9, 17, 30, 40, 44, 61]
    model = FragmentDeltaModel(terms, landscape["e_ff"], dimer_deltas=landscape["deltas"], seed=0).fit(
        {i: landscape["e_dft"][i] for i in train})
    mean, std = model.predict(np.arange(len(terms)))
    assert model.active and np.all(np.isfinite(mean)) and np.all(np.isfinite(std))


def copy_terms(t):
    from dataclasses import replace

    return replace(t, baselines=np.array(t.baselines, copy=True))


def test_baseline_kernel_auto_keeps_the_better_leave_one_out_fit(landscape):
    from agent.surrogates.fragment_gp import FragmentDeltaModel
    from agent.surrogates.structure_gp import SurrogateError

    terms, deltas, e_ff, e_dft = landscape["terms"], landscape["deltas"], landscape["e_ff"], landscape["e_dft"]
    with pytest.raises(SurrogateError, match="baseline_kernel"):
        FragmentDeltaModel(terms, e_ff, baseline_kernel="cubic")
    train = [0, 4, 9, 17, 30, 44, 61, 70]
    fits = {k: FragmentDeltaModel(terms, e_ff, dimer_deltas=deltas, seed=0, baseline_kernel=k).fit(
        {i: e_dft[i] for i in train}) for k in ("auto", "rbf", "linear")}
    auto = fits["auto"]
    assert auto.kernel_choice in ("rbf", "linear") and auto.describe()["baseline_kernel"] == auto.kernel_choice
    assert auto.loo_mae_kjmol == pytest.approx(min(fits["rbf"].loo_mae_kjmol, fits["linear"].loo_mae_kjmol))
    X = np.arange(len(terms))
    assert np.allclose(auto.predict(X)[0], fits[auto.kernel_choice].predict(X)[0])


def test_max_iter_below_one_is_refused_in_one_line(landscape):
    from agent.surrogates.fragment_gp import FragmentDeltaModel
    from agent.surrogates.structure_gp import SurrogateError

    with pytest.raises(SurrogateError, match=r"^max_iter must be >= 1, not 0$"):
        FragmentDeltaModel(landscape["terms"], landscape["e_ff"], max_iter=0)
