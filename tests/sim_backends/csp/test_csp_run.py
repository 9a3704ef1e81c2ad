"""End to end: run_csp writes a landscape; the csp-ff backend and the csp CLI; recovery
of an experimental crystal (X23 urea) from its SMILES."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    from sim_backends.csp.run import run_csp

    out = tmp_path_factory.mktemp("csp")
    land = run_csp("O=C=O", 6, space_groups="P-1,P2_1", seed=1, out_dir=out, progress=False,
                   charges="xtb")
    return land, out


def test_landscape_sorted_and_written(small_run):
    land, out = small_run
    energies = [m.energy_kjmol for m in land.minima]
    assert len(land) >= 1 and energies == sorted(energies)
    assert energies[-1] - energies[0] <= 20.0
    assert sum(m.multiplicity for m in land.minima) <= land.meta["n_converged"] <= 6
    assert all(m.search_space_group in ("P-1", "P2_1") for m in land.minima)
    assert all(0.5 < m.density_gcm3 < 3.0 for m in land.minima)
    rows = list(csv.DictReader(open(out / "landscape.csv")))
    assert [r["id"] for r in rows] == [m.id for m in land.minima]
    for r in rows:
        assert (out / r["cif"]).is_file()
    assert (out / "landscape.png").stat().st_size > 1000
    meta = json.loads((out / "run.json").read_text())
    assert meta["n_trials"] == 6 and meta["space_groups"] == ["P-1", "P2_1"]
    # CIFs round-trip to the same structure and energy ordering information
    from pymatgen.core import Structure

    st = Structure.from_file(out / rows[0]["cif"])
    assert len(st) == len(land.minima[0].structure)


def test_backend_contract_and_bad_input():
    from sim_backends.base import EvalInput
    from sim_backends.registry import get_backend

    backend = get_backend("csp-ff", n_trials=4, space_groups="P-1", charges="xtb")
    res = backend.evaluate(EvalInput(smiles="O=C=O"))
    assert res.ok, res.reason
    assert set(res.values) == set(backend.computes)
    assert res.values["n_minima"] == len(res.extra["landscape"]) >= 1
    rec = res.extra["landscape"][0]
    assert set(rec) >= {"id", "energy_kjmol", "density_gcm3", "space_group", "z", "multiplicity", "cif"}
    assert rec["energy_kjmol"] == res.values["global_min_energy_kjmol"]
    for params, smiles, needle in [
        ({}, "not a smiles", "setup:"),
        ({}, "[Na+].[Cl-]", "setup:"),
        ({"n_trials": 0}, "O=C=O", "n_trials"),
        ({"space_groups": "Fm-3m"}, "O=C=O", "unsupported space group"),
        ({"bogus": 1}, "O=C=O", "unknown csp-ff parameter"),
    ]:
        bad = backend.evaluate(EvalInput(smiles=smiles, params=params))
        assert not bad.ok and needle in bad.reason and "\n" not in bad.reason


def test_cli_json_and_errors(capsys, tmp_path):
    from agent.cli import main

    assert main(["csp", "O=C=O", "--n-trials", "2", "--space-groups", "P-1", "--charges", "xtb",
                 "--json", "--out", str(tmp_path / "o")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["minima"] and "cif" not in out["minima"][0]
    assert (tmp_path / "o" / "landscape.csv").is_file()
    smi = tmp_path / "mol.smi"
    smi.write_text("O=C=O co2\n")
    for args, needle in [
        (["csp", "O=C=O", "--n-trials", "0"], "n_trials must be a positive integer"),
        (["csp", "O=C=O", "--n-trials", "2", "--space-groups", "P6_3"], "unsupported space group"),
        (["csp", "C[N+](C)(C)C", "--n-trials", "2"], "net charge"),
        (["csp", str(tmp_path / "missing.smi"), "--n-trials", "2"], "no such file"),
    ]:
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1
    assert main(["csp", str(smi), "--n-trials", "2", "--space-groups", "P1", "--charges", "xtb",
                 "--json"]) == 0


def test_smiles_file_is_read_like_a_pool_file(capsys, tmp_path):
    """newuser42 item 3: `csp examples/tiny_pool.smi` failed with "invalid SMILES '#'": the
    first SMILES of a .smi file is its first pool entry (comment and blank lines skipped)."""
    from agent.cli import main
    from sim_backends.csp.run import smiles_from_file

    assert smiles_from_file(ROOT / "examples" / "tiny_pool.smi") == "C=C"
    smi = tmp_path / "co2.smi"
    smi.write_text("# comment\n\n   \nO=C=O carbon dioxide  # trailing comment\nC#C\n")
    assert smiles_from_file(smi) == "O=C=O"
    (tmp_path / "empty.smi").write_text("# only a comment\n")
    assert smiles_from_file(tmp_path / "empty.smi") is None
    assert main(["csp", str(smi), "--n-trials", "2", "--space-groups", "P1", "--charges", "xtb",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["smiles"] == "O=C=O"


def test_cli_table_shows_the_smiles_as_given(capsys):
    """Brackets of a SMILES ([nH]) are not rich markup: the table title shows them."""
    from agent.cli import main

    assert main(["csp", "c1cc[nH]c1", "--n-trials", "2", "--space-groups", "P1", "--charges", "xtb",
                 "--sampling", "fixed"]) == 0
    assert "CSP c1cc[nH]c1:" in capsys.readouterr().out


@pytest.mark.parametrize("args, needle", [
    (["bad.cif"], "crystal structure files are not CSP input; give a SMILES string"),
    (["mol.pdb"], "give a SMILES string, a .smi/.txt file"),
    (["C=O", "--n-trials", "1000000000000"], "above the limit of 200000"),
    (["C=O", "--n-trials", "200001"], "above the limit of 200000"),
    (["C=O", "--energy-window", "nan"], "energy_window_kjmol must be a finite number > 0"),
    (["C=O", "--energy-window", "inf"], "energy_window_kjmol must be a finite number > 0"),
    (["C=O", "--energy-window", "-1"], "energy_window_kjmol must be a finite number > 0"),
    (["C=O", "--energy-window", "0"], "energy_window_kjmol must be a finite number > 0"),
    (["C=O", "--seed", "-1"], "seed must be an integer"),
    (["C=O", "--workers", "0"], "--workers must be >= 1 (1 runs in this process), got 0"),
    (["C=O", "--workers", "-2"], "--workers must be >= 1 (1 runs in this process), got -2"),
    (["C=O", "--workers", "100000"], "n_workers must be an integer"),
    (["C=O", "--top", "-1"], "argument --top: must be >= 1, got -1"),
    (["C=O", "--top", "0"], "argument --top: must be >= 1, got 0"),
    (["C=O", "--max-trials", "0"], "max_trials must be a positive integer"),
    # newuser42 item 9: a rigid molecule ran a full search with it; a flexible one was refused
    (["O=C1C=CC(=O)C=C1", "--max-rotatable-bonds", "-1"], "max_rotatable_bonds must be an integer >= 0, got -1"),
    (["CCCCO", "--max-rotatable-bonds", "-1"], "max_rotatable_bonds must be an integer >= 0, got -1"),
    (["C=O", "--out", "FILE"], "exists and is not a directory"),
    # newuser38 C4: only "[Errno 2] No such file or directory: '/proc/x'"
    (["C=O", "--out", "/proc/no-such-x/y"],
     "crystal-agent csp: error: cannot create --out directory /proc/no-such-x/y: No such file or directory"),
])
def test_cli_refuses_bad_arguments_before_any_work(capsys, tmp_path, monkeypatch, args, needle):
    """Issue 17 item 5/7, issue 14 item 9: one line, exit 2, nothing created or computed."""
    from agent.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.cif").write_text("data_x\n_cell_length_a 1e6\n")
    (tmp_path / "mol.pdb").write_text("HETATM\n")
    (tmp_path / "FILE").write_text("")
    args = [a if a != "FILE" else str(tmp_path / "FILE") for a in args]
    if "--n-trials" not in args:
        args += ["--n-trials", "4"]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["csp", *args, "--charges", "xtb", "--space-groups", "P-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "invalid SMILES" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_cli_notes_that_racemic_does_nothing_for_an_achiral_molecule(capsys, monkeypatch):
    """newuser42 item 9: `csp p-benzoquinone --racemic` said nothing of --racemic being ignored;
    a one-line note on stderr before the search."""
    import sim_backends.csp.run
    from agent.cli import main

    def searched(*args, **kw):
        raise ValueError("search reached")

    monkeypatch.setattr(sim_backends.csp.run, "run_csp", searched)
    assert main(["csp", "O=C1C=CC(=O)C=C1", "--racemic", "--n-trials", "4"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith("note: --racemic") and "has no effect" in err[0], err
    assert err[1] == "crystal-agent csp: error: search reached"
    assert main(["csp", "O=C1C=CC(=O)C=C1", "--n-trials", "4"]) == 2
    assert "note:" not in capsys.readouterr().err


def test_untypable_hydrogen_refused_before_the_charge_fit(capsys, monkeypatch):
    """newuser42 item 9: `csp '[H][H]'` ran (and cached) the HF RESP fit, then failed on the
    W99 typing; the typing is checked first."""
    import sim_backends.csp.rigid
    from agent.cli import main

    def fit(*args, **kw):
        raise AssertionError("charges computed for a molecule the force field cannot type")

    monkeypatch.setattr(sim_backends.csp.rigid, "compute_charges", fit)
    assert main(["csp", "[H][H]", "--n-trials", "4"]) == 2
    err = capsys.readouterr().err
    assert err == "crystal-agent csp: error: H atom 0 bonded to H: no W99 type\n", err


def test_geometry_file_elements_checked_first_as_for_smiles(capsys, tmp_path):
    """newuser42 item 9: Pt-Cl from a .xyz was refused for its odd electron count, PtCl2 with
    "unsupported element(s) ['Pt']"; both now as a SMILES is: the element, then what is supported."""
    from agent.cli import main

    supported = "supported: C Cl F H N O S"
    for name, atoms in (("ptcl.xyz", "Pt 0 0 0\nCl 0 0 2.3\n"),
                        ("ptcl2.xyz", "Pt 0 0 0\nCl 0 0 2.3\nCl 0 0 -2.3\n")):
        path = tmp_path / name
        path.write_text(f"{atoms.count(chr(10))}\n\n{atoms}")
        assert main(["csp", str(path), "--n-trials", "4"]) == 2
        err = capsys.readouterr().err
        assert err == f"crystal-agent csp: error: {path} contains unsupported element(s) Pt; {supported}\n", err
    assert main(["csp", "Cl[Pt]Cl", "--n-trials", "4"]) == 2
    assert f"contains unsupported element(s) Pt; {supported}" in capsys.readouterr().err


def test_large_n_trials_allowed_with_explicit_limit():
    from sim_backends.csp.run import validate_csp_arguments

    with pytest.raises(ValueError, match="above the limit"):
        validate_csp_arguments(300_000)
    validate_csp_arguments(300_000, max_trials=400_000)


def test_xyz_input_gets_the_requested_charges(tmp_path):
    """Issue 14 item 10: a geometry file with --charges gets those charges computed on its
    geometry (it used to run with zero charges); same charges and landscape as from SMILES."""
    from sim_backends.csp.rigid import RigidMolecule
    from sim_backends.csp.run import load_molecule, run_csp

    ref = RigidMolecule.from_smiles("NC#N", charges="xtb", cache_dir="")
    xyz = tmp_path / "cyanamide.xyz"
    xyz.write_text(f"{ref.n_atoms}\ncyanamide\n" + "\n".join(
        f"{s} {x:.6f} {y:.6f} {z:.6f}" for s, (x, y, z) in zip(ref.symbols, ref.coords_A)) + "\n")
    mol = load_molecule(xyz, charges="xtb", cache_dir="")
    assert mol.charge_method == ref.charge_method == "xtb-gfn2-mulliken"
    assert mol.smiles == "N#CN"  # perceived with rdDetermineBonds
    assert np.abs(mol.charges_e).max() > 0.1
    assert np.allclose(sorted(mol.charges_e), sorted(ref.charges_e), atol=2e-3)
    kw = dict(space_groups="P-1", seed=0, progress=False, charges="xtb", cache_dir="")
    e_xyz = run_csp(xyz, 8, **kw).minima[0].energy_kjmol
    e_smi = run_csp("NC#N", 8, **kw).minima[0].energy_kjmol
    assert e_xyz == pytest.approx(e_smi, abs=0.5)
    odd = tmp_path / "radical.xyz"
    odd.write_text("2\n\nC 0 0 0\nH 0 0 1.1\n")
    from sim_backends.base import SetupError

    with pytest.raises(SetupError, match="odd number of electrons"):
        load_molecule(odd, charges="xtb", cache_dir="")


def test_symmetrised_cif_round_trip(tmp_path):
    """Issue 14 item 5: CSP CIFs carry the space group (symmetry operations, asymmetric
    unit), symmetrised in the standard setting of the group's symbol (spglib's refined cell), the
    molecule's formula and Z in molecules of that cell, the landscape's Z (acetylene is
    C2H2, not HC), and the force-field energies with level and unit."""
    import warnings

    from pymatgen.core import Structure
    from pymatgen.io.cif import CifParser
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    from sim_backends.csp.dedupe import detect_space_group
    from sim_backends.csp.landscape import FF_LEVEL
    from sim_backends.csp.run import run_csp

    land = run_csp("C#C", 16, space_groups="P2_1/c,P-1", seed=0, progress=False, charges="xtb",
                   cache_dir="", out_dir=tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "landscape.csv")))
    assert len(rows) == len(land) >= 2
    n_symmetric = 0
    for m, row in zip(land.minima, rows, strict=True):
        text = (tmp_path / row["cif"]).read_text()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (block, data), = CifParser.from_str(text).as_dict().items()
            st = Structure.from_str(text, fmt="cif")
        assert block == f"C2H2_{m.id}"
        assert data["_chemical_formula_sum"] == "C2 H2"
        z = int(data["_cell_formula_units_Z"])
        assert len(st) == 4 * z and st.composition.reduced_formula == "HC"
        assert z == m.z == int(row["z"])
        assert detect_space_group(st)[0] == m.space_group == data["_symmetry_space_group_name_H-M"]
        n_symmetric += len(data["_symmetry_equiv_pos_as_xyz"]) > 1
        refined = SpacegroupAnalyzer(st, symprec=1e-3).get_refined_structure()  # the standard setting
        assert st.lattice.parameters == pytest.approx(refined.lattice.parameters, abs=1e-4)
        assert st.density == pytest.approx(m.density_gcm3, rel=2e-3)
        level = f"{FF_LEVEL}, xtb-gfn2-mulliken charges"  # the level names the charges
        assert data["_crystal_agent_energy_level"] == [level, level]
        assert data["_crystal_agent_energy_quantity"] == ["lattice energy", "relative energy"]
        e, rel = map(float, data["_crystal_agent_energy_kJmol_per_molecule"])
        assert e == pytest.approx(m.energy_kjmol, abs=1e-3)
        assert rel == pytest.approx(m.energy_kjmol - land.minima[0].energy_kjmol, abs=1e-3)
    assert n_symmetric >= 1
    assert json.loads((tmp_path / "run.json").read_text())["levels"] == {"ff": f"{FF_LEVEL}, xtb-gfn2-mulliken charges"}
    from sim_backends.landscape import Landscape  # what `lab identify --structures DIR/cif` reads

    entries = {e.id: e for e in Landscape.from_cif_dir(tmp_path / "cif").minima}
    assert {k: e.energy_kjmol for k, e in entries.items()} == pytest.approx(
        {m.id: m.energy_kjmol for m in land.minima}, abs=1e-3)


@pytest.mark.slow
def test_recovers_experimental_urea_from_smiles():
    """X23 urea (P-42_1m, Z=2, molecules on mm2 sites) is found by a Z'=1 search in its
    subgroup P2_1 as the global minimum; StructureMatcher on heavy atoms (ltol=0.3,
    stol=0.4, angle_tol=10, scale=True) and spglib recovers the full space group."""
    from ase.io import read
    from pymatgen.io.ase import AseAtomsAdaptor

    from sim_backends.csp.run import run_csp

    frames = read(ROOT / "data/reference/x23/x23_pbe_ts_crystals.extxyz", index=":")
    ref = AseAtomsAdaptor.get_structure(next(a for a in frames if a.info["name"] == "urea"))
    land = run_csp("NC(N)=O", 24, space_groups="P2_1", seed=0, progress=False, charges="resp")
    hit = land.find_match(ref)
    assert hit is not None
    rank, minimum, _ = hit
    assert minimum.energy_kjmol - land.minima[0].energy_kjmol < 2.0
    # P-42_1m (113) for a planar molecule; the MMFF urea is slightly pyramidal at N,
    # which leaves its subgroup P2_12_12 (18) -- both contain the searched P2_1
    assert minimum.space_group_number in (18, 113)
    assert np.isfinite(minimum.energy_kjmol) and minimum.energy_kjmol < -60.0


def test_cli_announces_the_resp_fit_on_stderr(capsys, tmp_path, monkeypatch):
    """newuser34: `csp` of hexacene printed nothing for 8 minutes (the RESP fit). The CLI
    now says what it computes, how large, a CPU estimate and `--charges xtb`, on stderr
    (a non-terminal too); a second run finds the charges in the cache and says nothing."""
    from agent.cli import main

    monkeypatch.setenv("CRYSTAL_AGENT_CACHE", str(tmp_path))
    args = ["csp", "O", "--n-trials", "2", "--space-groups", "P1", "--sampling", "fixed", "--json"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "charges: RESP fit to the HF/6-31G* electrostatic potential" in err and "basis functions" in err
    assert "estimated ~" in err and "--charges xtb" in err and f"cached in {tmp_path}" in err
    assert main(args) == 0
    assert "charges:" not in capsys.readouterr().err


def test_cli_table_keeps_whole_rows_when_output_is_not_a_terminal(capsys, monkeypatch):
    """newuser38 C5: redirected to a file the table was cut at the console width (80, or
    $COLUMNS): the header ended '┃ mult' with no border. Without a terminal the console is as
    wide as the table."""
    from agent.cli import main

    monkeypatch.setenv("COLUMNS", "60")  # narrower than the table
    assert main(["csp", "C=O", "--n-trials", "2", "--space-groups", "P1", "--charges", "xtb",
                 "--sampling", "fixed"]) == 0
    out = capsys.readouterr().out
    header = next(ln for ln in out.splitlines() if ln.startswith("┃") and "space group" in ln)
    assert header.rstrip().endswith("found ┃") and "searched in" in header, out
    rows = [ln.rstrip() for ln in out.splitlines() if ln.startswith("│")]
    assert rows and all(r.endswith("│") and r.count("│") == 10 for r in rows), out


def test_collapsed_minima_are_failed_minimisations():
    """A minimisation that collapsed (a lone-pair site fell onto an N-H hydrogen of a neighbour:
    cytosine, -5.8e15 kJ/mol, once in 1,920 trials) is not converged: it neither becomes the
    global minimum nor anchors the energy window that keeps the others (it used to leave a
    landscape of that one structure)."""
    import numpy as np

    from sim_backends.csp.run import COLLAPSE_KJMOL_PER_ATOM, _lowest, discard_collapsed

    results = [{"energy_kjmol": np.array([-120.0, -5.8e15, -110.0]), "converged": np.array([True, True, False])},
               {"energy_kjmol": np.array([-123.8]), "converged": np.array([True])}]
    discard_collapsed(results, n_atoms=13)
    assert [r["n_collapsed"] for r in results] == [1, 0]
    assert results[0]["converged"].tolist() == [True, False, False]
    assert _lowest(results) == -123.8
    assert -123.8 > COLLAPSE_KJMOL_PER_ATOM * 13  # a real cytosine minimum is far above the floor


@pytest.mark.parametrize("charges", ["resp-lp", "resp-lpn"])
def test_lone_pair_charges_on_a_flexible_molecule_are_refused_in_one_line(charges):
    """newuser40 M1: the conformer search has no lone-pair sites; asking for them on a flexible
    molecule (paracetamol) is one clear error naming the way out, before any work."""
    from sim_backends.csp.run import run_csp

    with pytest.raises(ValueError, match="are for rigid molecules.*use 'resp' or 'xtb'") as err:
        run_csp("CC(=O)Nc1ccc(O)cc1", 10, space_groups="P2_1/c", charges=charges, progress=False)
    assert "\n" not in str(err.value)


def test_cli_names_an_unsupported_group_and_notes_another_setting(capsys):
    """newuser41: `--space-groups 62` is named (Pnma); P2_1/n, searched as P2_1/c, gets one
    note line on stderr saying so (the JSON on stdout stays one object)."""
    from agent.cli import main

    assert main(["csp", "O=C=O", "--n-trials", "2", "--space-groups", "62", "--charges", "xtb"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("crystal-agent csp: error: unsupported space group 62 (Pnma); supported: P1 (1)")
    assert len(err.splitlines()) == 1
    assert main(["csp", "O=C=O", "--n-trials", "2", "--space-groups", "P21/n", "--charges", "xtb",
                 "--sampling", "fixed", "--json"]) == 0
    captured = capsys.readouterr()
    notes = [ln for ln in captured.err.splitlines() if "searched as" in ln]
    assert notes == ["note: P2_1/n is searched as P2_1/c (No. 14, standard setting); the CIFs are in P2_1/c"]
    assert json.loads(captured.out)["meta"]["space_groups"] == ["P2_1/c"]


def test_api_progress_is_plain_lines_when_stderr_is_not_a_terminal(capsys):
    """newuser46a #11: run_csp(progress=True) wrote rich bars (full rows of bar glyphs) into a
    stderr redirected to a file. Off a terminal it prints the CLI's plain lines; progress=False
    prints nothing."""
    from sim_backends.csp.run import run_csp

    land = run_csp("O=C=O", 8, space_groups="P-1", seed=1, charges="xtb", sampling="fixed", progress=True)
    err = capsys.readouterr().err
    assert "━" not in err and "stage 1 (cheap model)" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("csp: ")]
    assert lines and lines[-1].startswith("csp: 8 of at most 8 trials minimised"), err
    assert land.meta["n_workers"] == 1
    run_csp("O=C=O", 8, space_groups="P-1", seed=1, charges="xtb", sampling="fixed", progress=False)
    assert "csp: " not in capsys.readouterr().err


def test_an_interrupted_csp_says_what_out_holds(capsys, tmp_path, monkeypatch):
    """newuser46a #6: SIGTERM during `csp` printed only "crystal-agent: interrupted" (exit 130) and
    wrote nothing. It says that nothing was written to --out (the landscape is written when the
    search ends), or, interrupted while writing, that the files there are incomplete."""
    import sim_backends.csp.run as run_mod
    from agent.cli import main
    from sim_backends.landscape import Landscape

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    out = tmp_path / "land"
    args = ["csp", "O=C=O", "--n-trials", "4", "--space-groups", "P-1", "--charges", "xtb", "--out", str(out)]
    with monkeypatch.context() as m:
        m.setattr(run_mod, "run_csp", interrupted)
        assert main(args) == 130
    err = capsys.readouterr().err.splitlines()
    assert err[-2].startswith("crystal-agent csp: interrupted during the search (0 min ")
    assert err[-2].endswith(f"nothing was written to --out {out}; the landscape is written only when the search ends")
    assert err[-1] == "crystal-agent: interrupted" and not out.exists()
    real_write = Landscape.write

    def write_then_interrupt(self, out_dir, plot=True):
        real_write(self, out_dir, plot=False)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(Landscape, "write", write_then_interrupt)
        assert main(args) == 130
    err = capsys.readouterr().err.splitlines()
    assert err[-2].startswith(f"crystal-agent csp: interrupted while writing the landscape to --out {out} (0 min ")
    assert "4 trials minimised): the files there are incomplete; rerun to replace them" in err[-2]
    # a landscape already in --out: left as it was
    with monkeypatch.context() as m:
        m.setattr(run_mod, "run_csp", interrupted)
        assert main(args) == 130
    assert "; the landscape already there is unchanged;" in capsys.readouterr().err
