"""Flexible-molecule CSP: torsions, intramolecular energies and gradients, conformer ensembles,
the rotatable-bond limit, conformer-aware dedupe and a recovery of succinic acid (X23)."""

from __future__ import annotations

import numpy as np
import pytest

from sim_backends.base import SetupError


def _embedded(smiles: str, seed: int = 3):
    from rdkit import Chem
    from rdkit.Chem import AllChem

    molh = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(molh, randomSeed=seed)
    AllChem.MMFFOptimizeMolecule(molh)
    return molh, molh.GetConformer().GetPositions()


def test_torsion_set_definition_and_jacobian():
    from sim_backends.csp.intramolecular import TorsionSet

    counts = {}
    for smi in ["CC(=O)Nc1ccc(O)cc1", "OC(=O)CCC(=O)O", "c1ccccc1-c1ccccc1", "CC(=O)NC", "CO", "OCCO"]:
        molh, xyz = _embedded(smi)
        ts = TorsionSet.from_mol(molh)
        counts[smi] = (len(ts), ts.period_deg)
        if not len(ts):
            continue
        t0 = ts.torsions_deg(xyz)
        moved = ts.set_torsions(xyz, t0 + 25.0)
        assert ts.canonical_deg(ts.torsions_deg(moved) - t0 - 25.0) == pytest.approx(np.zeros(len(ts)), abs=1e-6)
        # bond lengths unchanged
        assert np.linalg.norm(moved[1] - moved[0]) == pytest.approx(np.linalg.norm(xyz[1] - xyz[0]), abs=1e-9)
        jac = ts.torsion_jacobian(xyz)
        h = 1e-6
        for k in range(len(ts)):
            tp = t0.copy()
            tp[k] += np.degrees(h)
            assert np.abs((ts.set_torsions(xyz, tp) - xyz) / h - jac[k]).max() < 1e-4
    # paracetamol: the N-aryl torsion (two-fold: symmetric ring end), not the amide C-N bond
    assert counts["CC(=O)Nc1ccc(O)cc1"] == (1, (180.0,))
    assert counts["OC(=O)CCC(=O)O"] == (3, (360.0, 360.0, 360.0))
    assert counts["c1ccccc1-c1ccccc1"] == (1, (180.0,))
    assert counts["CC(=O)NC"][0] == 0 and counts["CO"][0] == 0 and counts["OCCO"][0] == 1


def test_torsion_distance_modulo_period_and_mirror():
    from sim_backends.csp.intramolecular import TorsionSet

    ts = TorsionSet(((0, 1, 2, 3), (1, 2, 3, 4)), ((2, 3), (3, 4)), (360.0, 180.0))
    assert ts.distance_deg([170.0, 10.0], [-170.0, 190.0]) == pytest.approx(20.0)
    assert ts.distance_deg([60.0, 20.0], [-60.0, -20.0]) == pytest.approx(0.0)  # mirror image
    assert ts.distance_deg([60.0, 0.0], [180.0, 0.0]) == pytest.approx(120.0)


def test_intramolecular_energy_and_torsion_gradients_match_finite_differences():
    """GFN2-xTB energy: Cartesian gradient and dE/dphi (via the torsion jacobian) vs central
    differences; zero at the reference geometry."""
    from sim_backends.csp.intramolecular import IntramolecularModel, TorsionSet

    molh, xyz = _embedded("OC(=O)CCC(=O)O")
    symbols = [a.GetSymbol() for a in molh.GetAtoms()]
    ref, _ = IntramolecularModel(symbols).total_energy_and_grad(xyz)
    model = IntramolecularModel(symbols, ref)
    e0, g = model.energy_and_grad(xyz)
    assert e0 == pytest.approx(0.0, abs=1e-8)
    h = 1e-4
    for atom, axis in [(0, 0), (3, 1), (7, 2)]:
        xp, xm = xyz.copy(), xyz.copy()
        xp[atom, axis] += h
        xm[atom, axis] -= h
        fd = (model.energy_and_grad(xp)[0] - model.energy_and_grad(xm)[0]) / (2 * h)
        assert g[atom, axis] == pytest.approx(fd, abs=2e-3 * max(1.0, abs(fd)))
    ts = TorsionSet.from_mol(molh)
    t0 = ts.torsions_deg(xyz)
    jac = ts.torsion_jacobian(xyz)
    dphi = np.radians(0.05)
    for k in range(len(ts)):
        tp, tm = t0.copy(), t0.copy()
        tp[k] += np.degrees(dphi)
        tm[k] -= np.degrees(dphi)
        fd = (model.energy_and_grad(ts.set_torsions(xyz, tp))[0]
              - model.energy_and_grad(ts.set_torsions(xyz, tm))[0]) / (2 * dphi)
        analytic = float((jac[k] * g).sum())
        assert analytic == pytest.approx(fd, abs=2e-3 * max(1.0, abs(fd)))
        assert abs(fd) > 1e-3  # an embedded (not GFN2-relaxed) geometry: real torsional forces


@pytest.mark.slow  # central differences of the flexible W99 + Ewald energy over every variable
def test_flexible_crystal_energy_and_gradient():
    """Crystal (cell, centre, rotation) + torsion variables: total energy gradient vs central
    differences, and at the conformer's own geometry the energy is E_inter + conformer energy."""
    from sim_backends.csp.flexible import FlexibleCrystal
    from sim_backends.csp.forcefield import LatticeEnergyModel
    from sim_backends.csp.intramolecular import IntramolecularModel, TorsionSet
    from sim_backends.csp.minimise import CrystalVariables
    from sim_backends.csp.rigid import RigidMolecule
    from sim_backends.csp.spacegroups import get_space_group
    from sim_backends.csp.trials import generate_trials

    molh, xyz = _embedded("OC(=O)CCC(=O)O")
    symbols = [a.GetSymbol() for a in molh.GetAtoms()]
    q = np.array([{"O": -0.5, "H": 0.25, "C": 0.0}[s] for s in symbols])
    q -= q.mean()
    mol = RigidMolecule.from_atoms(symbols, xyz, smiles="OC(=O)CCC(=O)O", charges_e=q)
    ts = TorsionSet.from_mol(molh)  # same atom order as mol
    ref = IntramolecularModel(symbols).total_energy_and_grad(xyz)[0] - 3.0  # conformer at +3 kJ/mol
    sg = get_space_group("P2_1")
    trial = generate_trials(mol, sg, 1, seed=2)
    crystal = FlexibleCrystal(sg, mol, ts, IntramolecularModel(symbols, ref))
    v0, r0 = crystal.encode(trial.cell_params[0], trial.centre_frac[0], trial.quaternions[0])
    e_inter, e_intra, _, _ = crystal.energy_terms(v0, r0)
    var = CrystalVariables(sg, mol, LatticeEnergyModel(mol))
    rigid_e, _ = var.energy_and_grad(var.encode(trial)[0], var.encode(trial)[1])
    assert e_inter == pytest.approx(float(rigid_e[0]), abs=1e-6)
    assert e_intra == pytest.approx(3.0, abs=1e-6)
    rng = np.random.default_rng(0)
    v = v0 + 0.03 * rng.standard_normal(len(v0))
    _, _, grad, _ = crystal.energy_terms(v, r0)
    h = 1e-4
    for k in range(len(v)):
        vp, vm = v.copy(), v.copy()
        vp[k] += h
        vm[k] -= h
        fd = (sum(crystal.energy_terms(vp, r0)[:2]) - sum(crystal.energy_terms(vm, r0)[:2])) / (2 * h)
        assert grad[k] == pytest.approx(fd, abs=5e-3 * max(1.0, abs(fd))), k


def test_rotatable_bond_limit_is_one_line_error(capsys):
    from agent.cli import main
    from sim_backends.csp.conformers import build_ensemble

    with pytest.raises(SetupError, match=r"5 rotatable bonds, above the limit max_rotatable_bonds=4"):
        build_ensemble("CCCCCCCC", charges="none")
    with pytest.raises(SetupError, match=r"max_rotatable_bonds=1"):
        build_ensemble("CCCCC", charges="none", max_rotatable_bonds=1)
    assert main(["csp", "CCCCCCCC", "--n-trials", "8", "--space-groups", "P-1", "--charges", "xtb"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "max_rotatable_bonds=4" in err[0]
    # the old rigid-only path still refuses on request
    assert main(["csp", "CCCC", "--n-trials", "8", "--space-groups", "P-1", "--charges", "xtb",
                 "--flexible", "rigid"]) == 2
    assert "rotatable" in capsys.readouterr().err


def test_dedupe_keeps_conformational_polymorphs_apart():
    """The same heavy-atom packing with a different torsion is two minima; with the same
    torsions (mirror image included) it is one."""
    from sim_backends.csp.dedupe import Candidate, to_structure
    from sim_backends.csp.flexible import dedupe_conformational
    from sim_backends.csp.intramolecular import TorsionSet

    ts = TorsionSet(((0, 1, 2, 3),), ((2, 3),), (360.0,))
    cell = np.diag([5.0, 6.0, 7.0])
    st = to_structure(["C", "O"], cell, np.array([[[0.0, 0, 0], [1.2, 0, 0]]]))

    def cand(e, tors):
        return Candidate(e, 1.0, st.copy(), {"torsions_deg": [tors]})

    kept = dedupe_conformational([cand(-50.0, 60.0), cand(-49.8, 175.0), cand(-49.9, -62.0)], ts)
    assert len(kept) == 2
    assert kept[0].multiplicity == 2 and kept[1].payload["torsions_deg"] == [175.0]


def test_conformer_ensemble_succinic_acid():
    from sim_backends.csp.conformers import ENSEMBLE_LEVEL, build_ensemble

    ens = build_ensemble("OC(=O)CCC(=O)O", charges="none", n_embed=10, window_kjmol=5.0)
    energies = [c.energy_kjmol for c in ens.conformers]
    assert energies[0] == 0.0 and all(0 <= e <= 5.0 for e in energies) and energies == sorted(energies)
    assert ens.n_rotatable == 3 and len(ens.torsions) == 3 and "GFN2-xTB" in ENSEMBLE_LEVEL
    # the experimental (X23 beta) conformer, all-trans, is in the ensemble
    trans = [c for c in ens.conformers if ens.torsions.distance_deg(c.torsions_deg, [180.0] * 3) < 15.0]
    assert trans and 0.5 < trans[0].energy_kjmol < 5.0
    # pairwise distinct
    for i, a in enumerate(ens.conformers):
        for b in ens.conformers[:i]:
            assert ens.torsions.distance_deg(a.torsions_deg, b.torsions_deg) > 1.0 or \
                abs(a.energy_kjmol - b.energy_kjmol) > 0.05


@pytest.mark.slow
def test_flexible_csp_recovers_succinic_acid(tmp_path):
    """Succinic acid (3 torsions) from SMILES: the X23 beta structure (P2_1/c, Z=2, on an
    inversion centre; searched in P2_1) is found at rank 1, from the trans conformer, after the
    torsion relaxation; the landscape is written in the usual format with the conformers."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
    from csp_recovery import reference_structure

    from sim_backends.csp.flexible import run_flexible_csp

    land = run_flexible_csp("OC(=O)CCC(=O)O", 128, space_groups="P2_1", charges="xtb", progress=False,
                            sampling="fixed", conformer_window_kjmol=3.0, n_embed=10, out_dir=tmp_path / "land")
    assert land.meta["flexible"] and land.meta["n_conformers"] == 2
    hit = land.find_match(reference_structure("succinic_acid"))
    assert hit is not None
    rank, minimum, _ = hit
    assert rank == 1
    rec = land.meta["minimum_conformers"][minimum.id]
    assert rec["relaxed"] and land.meta["torsions"] and abs(abs(rec["torsions_deg"][1]) - 180.0) < 15.0
    assert (tmp_path / "land" / "landscape.csv").is_file()
    run = json.loads((tmp_path / "land" / "run.json").read_text())
    assert len(run["conformers"]) == 2 and run["levels"]["ff"].startswith("W99 exp-6 + Ewald point charges (inter")


@pytest.mark.slow
def test_cli_flexible_summary_lists_conformers(capsys):
    """``crystal-agent csp`` on a molecule with a rotatable bond (ethylene glycol) runs the
    flexible search and prints the conformers used and the flexible energy model."""
    from agent.cli import main

    assert main(["csp", "OCCO", "--n-trials", "8", "--space-groups", "P1", "--charges", "xtb",
                 "--sampling", "fixed", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "conformers used:" in out and "conformer 0: dE_intra 0.00 kJ/mol (GFN2-xTB)" in out
    assert "GFN2-xTB conformer energy" in out and "rigid molecule (force field)" not in out


def _flexible_meta():
    """The meta of a flexible search of two conformers, the second ended by the trial budget."""
    def conv(stopped_by, converged):
        return {"criteria": {"window_kjmol": 5.0}, "stopped_by": stopped_by, "converged": converged, "n_rounds": 3,
                "per_space_group": {"P-1": {"n_trials": 640, "n_low_minima": 4, "counts": [5, 3, 1, 1],
                                            "new_low_rate_per_trial": 0.01, "converged": converged,
                                            "reason": "test"}}}

    return {"flexible": True, "n_conformers": 2, "conformer_window_kjmol": 10.0, "conformer_level": "GFN2-xTB",
            "n_rotatable_bonds": 2, "torsions": [[0, 1, 2, 3]], "level": "W99", "n_relaxed": 0,
            "minimum_conformers": {}, "charge_method": "resp-pyscf HF/6-31G*", "n_trials": 1280, "warnings": [],
            "conformers": [{"index": 0, "energy_kjmol": 0.0, "torsions_deg": [60.0], "n_trials": 640,
                            "convergence": conv("converged", True)},
                           {"index": 1, "energy_kjmol": 3.0, "torsions_deg": [180.0], "n_trials": 640,
                            "convergence": conv("budget", False)}]}


def test_conformer_lines_report_each_conformers_sampling_and_the_budget_warning():
    """The flexible summary carries every conformer search's per-space-group sampling lines;
    the warning when the budget ended a conformer's search before it converged is apart
    (conformer_warnings: stderr, not the summary on stdout)."""
    from sim_backends.csp.flexible import conformer_lines, conformer_warnings
    from sim_backends.landscape import Landscape

    land = Landscape("CCOC(N)=O", [], _flexible_meta())
    lines = conformer_lines(land)
    per_group = [ln for ln in lines if ln.strip().startswith("P-1")]
    assert len(per_group) == 2 and "NOT converged" in per_group[1] and "NOT" not in per_group[0]
    assert not any("WARNING" in ln for ln in lines)
    assert conformer_warnings(land) == ["conformer 1: the trial budget ended the search before the low-energy "
                                        "region converged (1 space group not converged); raise --n-trials"]


@pytest.mark.parametrize("json_mode", [False, True])
def test_cli_flexible_warnings_go_to_stderr_and_into_the_json(capsys, monkeypatch, json_mode):
    """newuser41: a flexible search's budget warning was printed on stdout ("conformer 1:
    WARNING: ...") in text mode and nowhere with --json. Both modes print it on stderr; the
    JSON lists it and names the level of theory with its charges and unit."""
    import json

    import sim_backends.csp.run as run_module
    from agent.cli import main
    from sim_backends.csp.flexible import FLEX_LEVEL
    from sim_backends.landscape import Landscape

    level = f"{FLEX_LEVEL}, resp-pyscf HF/6-31G* charges"
    monkeypatch.setattr(run_module, "run_csp", lambda *a, **k: Landscape("OCC(=O)O", [], _flexible_meta(),
                                                                         levels={"ff": level}))
    assert main(["csp", "OCC(=O)O", "--n-trials", "40", *(["--json"] if json_mode else [])]) == 0
    captured = capsys.readouterr()
    warning = ("WARNING: conformer 1: the trial budget ended the search before the low-energy region converged "
               "(1 space group not converged); raise --n-trials")
    assert warning in captured.err.splitlines() and "WARNING" not in captured.out
    if json_mode:
        out = json.loads(captured.out)
        assert out["warnings"] == out["meta"]["warnings"] == [warning.removeprefix("WARNING: ")]
        assert out["level"] == level and out["levels"] == {"ff": level}
        assert out["energy_unit"] == "kJ/mol per molecule"
    else:
        assert "conformer 1: dE_intra 3.00 kJ/mol" in captured.out and "resp-pyscf HF/6-31G* charges" in captured.out
