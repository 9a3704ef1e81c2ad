"""PXRD identification: right structure on noisy patterns, no-match, mixtures, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agent.lab.identify import identify, snip_background
from agent.lab.pxrd import simulate_amorphous, simulate_pxrd
from tests.conftest import cli
from agent.lab.testing import target_i_landscape, x23_landscape


@pytest.fixture(scope="module")
def candidates():
    from sim_backends.landscape import load_x23

    entries = list(target_i_landscape())[:25] + load_x23().minima
    return [e.structure for e in entries], [e.id for e in entries]


@pytest.mark.parametrize("index, seed", [(0, 11), (7, 12), (30, 13)])
def test_identify_recovers_structure_from_noisy_pattern(candidates, index, seed):
    structures, names = candidates
    x, y, info = simulate_pxrd([(structures[index], 1.0)], np.random.default_rng(seed), "default")
    res = identify((x, y), structures, names)
    assert res.best == names[index]
    assert res.is_match and not res.is_mixture
    assert res.confidence > 0.9
    assert res.ranked[0][0] == names[index] and res.score_gap > 0.05
    # the fitted lattice factors follow the simulated thermal expansion
    assert np.allclose(res.best_scales, info["phases"][0]["expansion"], atol=0.012)


@pytest.mark.slow
def test_scale_search_beats_plain_correlation(candidates):
    """Expanded, shifted patterns: the full method ranks the truth first where the
    plain Pearson baseline and WCC without the scale search mostly do not."""
    from agent.lab.identify import pearson_rank

    structures, names = candidates
    n_full = n_plain = n_noscale = 0
    for k, idx in enumerate((2, 9, 17, 28)):
        x, y, _ = simulate_pxrd([(structures[idx], 1.0)], np.random.default_rng(40 + k), "high")
        n_full += identify((x, y), structures, names).ranked[0][0] == names[idx]
        n_noscale += identify((x, y), structures, names, search="none").ranked[0][0] == names[idx]
        n_plain += pearson_rank((x, y), structures, names)[0][0] == names[idx]
    assert n_full >= 3
    assert n_full > n_plain and n_full > n_noscale


def test_amorphous_pattern_is_no_match(candidates):
    structures, names = candidates
    x, y, _ = simulate_amorphous(np.random.default_rng(2))
    res = identify((x, y), structures, names)
    assert not res.is_match and res.best is None and res.confidence == 0.0


def test_structure_not_among_candidates_is_no_match():
    from sim_backends.landscape import load_x23

    x23 = load_x23().minima
    x, y, _ = simulate_pxrd([(target_i_landscape()[0].structure, 1.0)], np.random.default_rng(3), "default")
    res = identify((x, y), [e.structure for e in x23], [e.id for e in x23])
    assert not res.is_match


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_two_phase_mixture_is_recognised(candidates, seed):
    """A 55/45 mixture of anthracene and a target I form. (The pair this test used before,
    adamantane + 730eaffdfb690c0, was recognised in 1 of seeds 21-23 only, seed 21 the one
    it ran; the detection rate over many mixtures is benchmarks/pxrd_identification.py's.)"""
    structures, names = candidates
    x, y, _ = simulate_pxrd([(structures[28], 0.55), (structures[3], 0.45)], np.random.default_rng(seed), "default")
    res = identify((x, y), structures, names)
    assert res.is_mixture
    assert {n for n, _ in res.components} == {names[28], names[3]}
    assert all(0.25 < f < 0.75 for _, f in res.components)


def test_snip_removes_background_keeps_peaks():
    x = np.linspace(5, 40, 1751)
    bg = 200 + 300 * np.exp(-((x - 20) / 5) ** 2)
    peaks = 1000 * np.exp(-((x - 15) / 0.05) ** 2)
    est = snip_background(bg + peaks)
    # the broad hump stays in the background (clipping flattens its top a little)
    assert np.max(np.abs(est - bg)[200:-200]) < 0.3 * 300
    assert (bg + peaks - est)[np.argmin(np.abs(x - 15))] > 900


def test_bad_inputs_raise_one_line(candidates):
    structures, names = candidates
    with pytest.raises(ValueError, match="at least one candidate"):
        identify((np.arange(100.0), np.ones(100)), [], [])
    with pytest.raises(ValueError, match="names"):
        identify((np.linspace(5, 40, 500), np.ones(500)), structures[:2], ["a"])
    with pytest.raises(ValueError, match="need at least 10"):
        identify((np.linspace(5, 8, 500), np.ones(500)), structures[:2], names[:2])
    with pytest.raises(ValueError, match="non-finite"):
        identify((np.linspace(5, 40, 500), np.full(500, np.nan)), structures[:2], names[:2])


def test_feedback_record_and_figure(candidates):
    from agent.lab.base import LabResult
    from agent.lab.feedback import identification_record

    structures, names = candidates
    x, y, _ = simulate_pxrd([(structures[1], 1.0)], np.random.default_rng(8), "default")
    result = LabResult("fb", "crystalline", tuple(x), tuple(y))
    record, fig = identification_record(result, names, structures)
    assert record.matched_structure_id == names[1] and record.is_match and not record.is_mixture
    assert json.dumps(record.to_dict())
    assert len(fig.axes[0].lines) == 3


@pytest.mark.slow
def test_cli_identify_json_and_errors(tmp_path):
    from sim_backends.landscape import Landscape

    entries = list(x23_landscape())
    Landscape("", entries).write_cif_dir(tmp_path / "cifs")
    x, y, _ = simulate_pxrd([(entries[2].structure, 1.0)], np.random.default_rng(5), "default")
    np.savetxt(tmp_path / "p.xy", np.column_stack([x, y]), header="2theta counts")
    out = cli("lab", "identify", str(tmp_path / "p.xy"), "--structures", str(tmp_path / "cifs"), "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["structures"][0]["file"] == f"{entries[2].id}.cif"
    assert len(data["structures"]) == len(entries)
    bad = cli("lab", "identify", str(tmp_path / "missing.xy"), "--structures", str(tmp_path / "cifs"))
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "not found" in bad.stderr
    (tmp_path / "junk.xy").write_text("a b\nc d\n")
    bad = cli("lab", "identify", str(tmp_path / "junk.xy"), "--structures", str(tmp_path / "cifs"))
    assert bad.returncode == 2 and "error" in bad.stderr


ANISO = dict(expansion_iso=(0.0, 0.03), expansion_aniso_sd=0.015, expansion_limit=0.05, march_dollase_r=(0.6, 1.0))


@pytest.fixture(scope="module")
def formamide():
    """The 114 force-field CSP minima of formamide (data/landscapes/formamide_big)."""
    from sim_backends.landscape import REFERENCE_DIR, Landscape

    land = Landscape.read(REFERENCE_DIR.parent / "landscapes" / "formamide_big", ["ff", "xtb"])
    return land.structures(), land.ids


@pytest.mark.parametrize("k", [8, 22])
def test_anisotropic_expansion_among_114_candidates_picks_the_truth(formamide, k):
    """Per-axis expansion of several % plus texture: the truth wins among all 114
    formamide minima (the isotropic screen + 6 refined leaders ranked it 13th / 23rd)."""
    from dataclasses import replace

    from agent.lab.pxrd import NOISE_LEVELS

    structures, names = formamide
    rng = np.random.default_rng([6, k])
    t = int(rng.integers(len(structures)))
    x, y, info = simulate_pxrd([(structures[t], 1.0)], rng, replace(NOISE_LEVELS["default"], **ANISO))
    assert max(abs(f - 1) for f in info["phases"][0]["expansion"]) > 0.03
    res = identify((x, y), structures, names)
    assert res.best == names[t] and res.is_match
    assert np.allclose(res.best_scales, info["phases"][0]["expansion"], atol=0.01)


def test_adding_wrong_candidates_never_changes_scores_or_answer(formamide, candidates):
    """Each candidate's score is its own fit: the five scores are bit-identical with 60
    more wrong candidates offered (same molecule and other molecules), so the answer holds."""
    from dataclasses import replace

    from agent.lab.pxrd import NOISE_LEVELS

    structures, names = formamide
    rng = np.random.default_rng([6, 9])
    t = int(rng.integers(len(structures)))
    x, y, _ = simulate_pxrd([(structures[t], 1.0)], rng, replace(NOISE_LEVELS["default"], **ANISO))
    others = [i for i in np.random.default_rng(1).permutation(len(structures)) if i != t]
    small = [t, *others[:4]]
    big = small + others[4:34]
    small_res = identify((x, y), [structures[i] for i in small], [names[i] for i in small])
    extra_s, extra_n = candidates[0][:30], candidates[1][:30]
    big_res = identify((x, y), [structures[i] for i in big] + extra_s, [names[i] for i in big] + extra_n)
    assert small_res.best == big_res.best == names[t]
    big_scores = dict(big_res.ranked)
    assert all(big_scores[n] == s for n, s in small_res.ranked)


def test_cli_identify_refuses_absurd_cell_and_wavelength(tmp_path):
    from sim_backends.landscape import Landscape

    entries = list(x23_landscape())[:1]
    Landscape("", entries).write_cif_dir(tmp_path / "cifs")
    x, y, _ = simulate_pxrd([(entries[0].structure, 1.0)], np.random.default_rng(5), "default")
    np.savetxt(tmp_path / "p.xy", np.column_stack([x, y]))
    bad = cli("lab", "identify", str(tmp_path / "p.xy"), "--structures", str(tmp_path / "cifs"), "--wavelength", "X")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "unknown X-ray wavelength 'X'" in bad.stderr
    huge = entries[0].structure.copy()
    huge.scale_lattice(1e18)  # 1e6 A cell edges
    huge.to(filename=str(tmp_path / "cifs" / "huge.cif"))
    bad = cli("lab", "identify", str(tmp_path / "p.xy"), "--structures", str(tmp_path / "cifs"), timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "huge.cif" in bad.stderr and "reflections" in bad.stderr


def test_only_confident_identifications_are_fed_back():
    from pydantic import ValidationError

    from agent.lab.config import LabConfig
    from agent.stages.lab import _observed_forms

    single = {"is_mixture": False, "is_match": True, "matched_structure_id": "m0019", "confidence": 0.51, "components": [("m0019", 1.0)]}
    assert _observed_forms(single, LabConfig().min_confidence) == ["m0019"]
    assert _observed_forms(single, 0.8) == []
    assert _observed_forms({**single, "is_match": False}, 0.0) == []
    mixture = {**single, "is_mixture": True, "components": [("m0019", 0.6), ("m0020", 0.4)]}
    assert _observed_forms(mixture, 0.5) == ["m0019", "m0020"]
    assert _observed_forms(mixture, 0.8) == []  # a mixture passes the same gate as a single form
    with pytest.raises(ValidationError):
        LabConfig(min_confidence=1.5)


def test_mixture_with_a_small_one_phase_residual_is_recognised(candidates):
    """A 70/30 two-phase pattern whose best single phase already explains ~88 % of it:
    the mixture rule chosen on a held-out split (one-phase residual >= 0.08, two-phase
    fit below 0.8 of it) finds both phases; the earlier rule (>= 0.2, 0.6) never looked."""
    structures, names = candidates
    rng = np.random.default_rng([31, 3])
    i, j = (int(v) for v in rng.choice(len(structures), 2, replace=False))
    x, y, _ = simulate_pxrd([(structures[i], 0.7), (structures[j], 0.3)], rng, "default")
    res = identify((x, y), structures, names)
    assert res.is_mixture and res.is_match
    assert {n for n, _ in res.components} == {names[i], names[j]}
    assert 0.1 < res.residual_single < 0.2


def test_identification_does_not_depend_on_the_cell_setting_candidates_are_stored_in():
    """A single form expanded along its standard (CIF) axes, candidates in the CSP search
    cells the store keeps (thiophene m5-m0002: gamma 112.8 deg, CIF: beta 118.3 deg): one
    form, as against the CIFs (new-user trial 43b: a 77/23 mixture with m5-m0004 before)."""
    import dataclasses
    from pathlib import Path

    from pymatgen.core import Structure

    from agent.lab.pxrd import conditions, expand_lattice, standard_setting

    data = Path(__file__).parent / "data"
    ids = ["m5-m0002", "m5-m0004"]
    search = [Structure.from_file(data / f"thiophene_{i}_search_cell.cif") for i in ids]
    std = standard_setting(search[0])
    assert abs(search[0].lattice.gamma - 112.76) < 0.01 and abs(std.lattice.beta - 118.34) < 0.01
    still = dataclasses.replace(conditions("default"), expansion_iso=(0.0, 0.0), expansion_aniso_sd=0.0, zero_shift_sd_deg=0.0)
    x, y, _ = simulate_pxrd([(expand_lattice(std, (1.025, 1.008, 1.006)), 1.0)], np.random.default_rng(1), still)
    for candidates in (search, [standard_setting(s) for s in search]):
        result = identify((x, y), candidates, ids)
        assert not result.is_mixture and result.components == [("m5-m0002", 1.0)]
        assert result.ranked[0][1] > 0.98
        assert result.best_scales[0] > max(result.best_scales[1:])  # a expanded most, on the standard axes
