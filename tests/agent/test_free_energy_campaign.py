"""Static refinement plus a vibrational free-energy level in one campaign: periodic
GFN2-xTB lattice energies, then harmonic phonon F_vib(T) (phonopy over xTB forces) for
the structures the acquisition finds worth it, ranked by G = E + F_vib in the report."""

import csv
import json
import sqlite3

import pytest

from conftest import cli, write_config

POOL = ["C#C acetylene", "C=C ethylene"]
BODY = """
objective = "reorg_energy_kjmol"
batch_size = 2
seed = 0
max_evaluations = 7
[surrogate]
n_initial = 2
[[backends]]
name = "xtb-reorg"
[structures]
enabled = true
budget_evaluations = 5
csp = {name = "csp-ff", params = {n_trials = 30, charges = "xtb", space_groups = "P2_1/c,P-1"}}
refine = {name = "xtb-crystal"}
free_energy = {name = "phonon", params = {force_backend = "xtb-crystal", temperature_K = 298.15, force_min_width_A = 0}}
max_structures = 3
top_k = 1
"""


# force_min_width_A = 0: unit-cell Gamma-only forces, to keep CI time. Measured on the
# lowest acetylene structure of run_csp("C#C", n_trials=30, space_groups="P2_1/c,P-1",
# charges="xtb") (P4_2/mnm, Z = 4, 8.2 x 4.1 x 6.6 A; the same 4 imaginary modes, lowest
# -4.18 THz, this test recorded with unit-cell forces): with the default
# Gamma-converged 2x3x2 supercell forces the phonon costs 503 CPU s instead of 91 and
# still finds a saddle point (2 imaginary modes, lowest -3.26 THz, against 4, lowest
# -4.18 THz): the symmetric CSP structure is a saddle at GFN2-xTB, not an artefact of
# Gamma-only forces.


@pytest.mark.slow
def test_static_then_free_energy_campaign(tmp_path):
    cfg = write_config(tmp_path, POOL, BODY, name="gvib")
    runs = tmp_path / "runs"
    out = cli("run", str(cfg), "--runs-dir", str(runs), "--quiet", timeout=1500)
    assert out.returncode == 0, out.stderr[-3000:]
    db = sqlite3.connect(runs / "gvib" / "store.sqlite")
    evs = db.execute("SELECT backend, structure_id, status, reason, values_json, submitted_at "
                     "FROM evaluations ORDER BY submitted_at").fetchall()
    static = [e for e in evs if e[0] == "xtb-crystal"]
    phonon = [e for e in evs if e[0] == "phonon"]
    n_structures = db.execute("SELECT COUNT(*) FROM structures").fetchone()[0]
    assert len(static) == min(3, n_structures) and all(e[2] == "ok" for e in static), evs
    # phonons only for structures whose static energy was computed, each at most once,
    # and only after the static landscape was settled (the phonon is 40x a single point)
    assert len(phonon) == 1 and {e[1] for e in phonon} <= {e[1] for e in static}
    assert phonon[0][5] > max(e[5] for e in static)
    # the static front runners (top_k = 1: the lowest two) are the candidates
    ranked = sorted(static, key=lambda e: json.loads(e[4])["energy_kjmol"])
    assert phonon[0][1] in {e[1] for e in ranked[:2]}
    for e in phonon:
        if e[2] != "ok":
            # the validity contract: a structure with imaginary modes at the force level is
            # a saddle point, reported as a failure with its reason, never an F_vib
            assert e[3].startswith("unphysical:") and "imaginary mode" in e[3], e
            continue
        v = json.loads(e[4])
        # acetylene: ZPE dominated by the C-H stretches, ~70 kJ/mol per molecule; F < ZPE at 298 K
        assert 40.0 < v["zpe_kjmol"] < 100.0 and v["f_vib_kjmol"] < v["zpe_kjmol"]
    # the report ranks by G = E + F_vib
    table = next((runs / "gvib" / "report").glob("landscape_model_m*.csv"))
    rows = list(csv.DictReader(table.open()))
    assert [int(r["rank_by_dG"]) for r in rows] == list(range(1, len(rows) + 1))
    (f_col,) = [c for c in rows[0] if c.startswith("F_vib_")]
    assert f_col == "F_vib_phonon_kJmol_per_mol"
    with_f = [r for r in rows if r[f_col]]
    n_phonon_ok = sum(e[2] == "ok" for e in phonon)
    (computed_col,) = [c for c in rows[0] if c.startswith("computed_")]
    assert len(with_f) == n_phonon_ok and all(r[computed_col] == "1" for r in with_f)
