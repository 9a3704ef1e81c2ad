"""The one landscape type (sim_backends/landscape.py): both on-disk layouts read, written
and read back with every level, structures parsed once, shipped reference landscapes."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest

from sim_backends.landscape import (
    TARGET_I_DIR,
    Landscape,
    LandscapeEntry,
    LandscapeError,
    load_target_i,
    load_x23,
)

TARGET_I = TARGET_I_DIR
FORMAMIDE = TARGET_I_DIR.parents[2] / "landscapes" / "formamide_big"


@pytest.fixture(scope="module")
def land():
    return Landscape.read(TARGET_I, ["MACE", "PBE_MBD"])


def test_target_i_usable_structures_and_levels(land):
    assert len(land) == 88
    assert land.dropped_ids == ["af9cce730230555"]
    assert "af9cce730230555" not in land.ids
    assert land.level_keys == ["MACE", "PBE_MBD"]
    assert set(land.n_molecules.tolist()) == {8}
    assert all(len(a) == 8 * 13 for a in land.atoms("MACE"))
    assert land.observed == {land.ids.index("a9defee919e434")}


def test_energies_match_csv(land):
    with (TARGET_I / "Target_I_landscape.csv").open() as fh:
        rows = {r["id"]: r for r in csv.DictReader(fh)}
    for level in ("MACE", "PBE_MBD"):
        e = land.energies(level)
        assert e.min() == pytest.approx(0.0)
        ref = np.array([float(rows[i][f"dE_{level}_kJmol_per_mol"]) for i in land.ids])
        np.testing.assert_allclose(e, ref - ref.min(), atol=1e-9)
    np.testing.assert_allclose(land.delta_kjmol(), land.energies("PBE_MBD") - land.energies("MACE"))


def test_frames_belong_to_their_ids_and_levels_keep_their_own_geometry(land):
    for level in land.level_keys:
        assert [str(a.info["id"]) for a in land.atoms(level)] == land.ids
    a, b = land.atoms("MACE")[0], land.atoms("PBE_MBD")[0]
    assert abs(a.get_volume() - b.get_volume()) > 1.0  # relaxed at each level: different cells


def test_missing_level_and_files_give_one_line_errors(tmp_path):
    with pytest.raises(LandscapeError, match="level 'B3LYP'"):
        Landscape.read(TARGET_I, ["MACE", "B3LYP"])
    with pytest.raises(LandscapeError, match="not found"):
        Landscape.read(tmp_path / "nope", ["MACE", "PBE_MBD"])
    with pytest.raises(LandscapeError, match="landscape table"):
        Landscape.read(tmp_path, ["MACE", "PBE_MBD"])
    shutil.copy(TARGET_I / "Target_I_landscape.csv", tmp_path)
    shutil.copy(TARGET_I / "Target_I_MACE.extxyz", tmp_path)
    with pytest.raises(LandscapeError, match="Target_I_PBE_MBD.extxyz not found") as info:
        Landscape.read(tmp_path, ["MACE", "PBE_MBD"])
    assert "\n" not in str(info.value)
    with pytest.raises(LandscapeError, match="distinct"):
        Landscape.read(TARGET_I, ["MACE", "MACE"])
    with pytest.raises(LandscapeError, match=r"level 'xtb2' not in landscape formamide_big \(levels: ff, xtb\)"):
        Landscape.read(FORMAMIDE).energies("xtb2")


def test_csp_engine_layout_and_broken_frames(tmp_path):
    """``landscape.csv`` + ``landscape_<LEVEL>.extxyz`` (the CSP engine's names) load;
    a frame flagged connectivity_ok=False drops its structure."""
    from ase.io import read, write

    frames = read(str(TARGET_I / "Target_I_MACE.extxyz"), ":4")
    for level in ("ff", "xtb"):
        out = []
        for k, a in enumerate(frames):
            b = a.copy()
            b.info = {"id": f"s{k}", "Z": 8, "connectivity_ok": not (level == "xtb" and k == 3)}
            out.append(b)
        write(str(tmp_path / f"landscape_{level}.extxyz"), out)
    (tmp_path / "landscape.csv").write_text(
        "id,dE_ff_kJmol_per_mol,dE_xtb_kJmol_per_mol\n"
        "s0,1.0,5.0\ns1,0.0,2.0\ns2,3.0,4.5\ns3,2.0,0.0\n"
    )
    land = Landscape.read(tmp_path, ["ff", "xtb"])
    assert land.name == "landscape"
    assert land.ids == ["s0", "s1", "s2"] and land.dropped_ids == ["s3"]
    np.testing.assert_allclose(land.energies("ff"), [1.0, 0.0, 3.0])
    np.testing.assert_allclose(land.energies("xtb"), [3.0, 0.0, 2.5])
    assert land.observed == set()


def test_levels_from_levels_json_and_absolute_energies():
    """No levels given: the order of levels.json; absolute E_<L> columns kept as the
    entries' energies, relative energies from the dE columns."""
    land = Landscape.read(FORMAMIDE)
    assert land.level_keys == ["ff", "xtb"]
    with (FORMAMIDE / "formamide_big_landscape.csv").open() as fh:
        rows = {r["id"]: r for r in csv.DictReader(fh)}
    m = land.minima[1]
    assert m.energy_kjmol == pytest.approx(float(rows[m.id]["E_ff_kJmol_per_mol"]))
    assert m.energies["xtb"] == pytest.approx(float(rows[m.id]["E_xtb_kJmol_per_mol"]))
    ref = np.array([float(rows[i]["dE_xtb_kJmol_per_mol"]) for i in land.ids])
    np.testing.assert_allclose(land.energies("xtb"), ref - ref.min())
    assert land.energies("ff", relative=False)[1] == pytest.approx(m.energy_kjmol)


def test_write_then_read_keeps_every_level(tmp_path):
    """A two-level landscape written and read back: ids, absolute energies at both
    levels, each level's geometry, Z, space group, observed and free energy survive; the
    written CIF folder reads back with the energies."""
    src = Landscape.read(FORMAMIDE)
    small = Landscape("NC=O", src.minima[:4], {"n_trials": 600}, name="formamide", levels=src.levels)
    small.minima[2].observed = True
    small.minima[1].free_energy_kjmol = -55.5
    small.write(tmp_path, plot=False)
    back = Landscape.read(tmp_path)
    assert back.smiles == "NC=O" and back.meta["n_trials"] == 600
    assert back.level_keys == ["ff", "xtb"] and back.ids == small.ids
    for a, b in zip(small.minima, back.minima, strict=True):
        assert b.energy_kjmol == pytest.approx(a.energy_kjmol, abs=1e-4)
        assert b.energies["xtb"] == pytest.approx(a.energies["xtb"], abs=1e-4)
        assert b.z == a.z and b.observed == a.observed
        np.testing.assert_allclose(b.geometry("xtb").cell[:], a.geometry("xtb").cell[:], atol=1e-6)
        np.testing.assert_allclose(b.atoms.get_positions(), a.atoms.get_positions(), atol=1e-6)
    assert back.minima[1].free_energy_kjmol == pytest.approx(-55.5)
    np.testing.assert_allclose(back.energies("xtb"), small.energies("xtb"), atol=2e-4)
    cifs = Landscape.read(tmp_path / "cif")
    assert cifs.ids == small.ids
    assert [m.energy_kjmol for m in cifs.minima] == pytest.approx([m.energy_kjmol for m in small.minima], abs=1e-3)
    assert [m.z for m in cifs.minima] == [m.z for m in small.minima]


def test_structures_parsed_once(monkeypatch):
    """An entry built from CIF text parses it on first use only; records round-trip."""
    from pymatgen.core import Structure

    src = Landscape.read(FORMAMIDE)
    records = [m.to_dict() for m in src.minima[:3]]
    land = Landscape.from_records("NC=O", records)
    calls = []
    original = Structure.from_str
    monkeypatch.setattr(Structure, "from_str", lambda *a, **k: calls.append(1) or original(*a, **k))
    for _ in range(3):
        land.structures()
        land.atoms()
        land.n_atoms()
    assert len(calls) == 3
    assert land.minima[0].cif() == records[0]["cif"]  # the stored text, not a re-written one
    assert land.ids == [r["id"] for r in records]
    np.testing.assert_allclose(land.energies(relative=False), [r["energy_kjmol"] for r in records])


def test_entry_needs_exactly_one_geometry():
    with pytest.raises(ValueError, match="exactly one"):
        LandscapeEntry("x", 0.0)


def test_shipped_reference_landscapes():
    t = load_target_i()
    assert len(t) == 88 and min(m.energy_kjmol for m in t.minima) == pytest.approx(0.0)
    (obs,) = t.observed
    assert t.ids[obs] == "a9defee919e434"
    x = load_x23()
    assert len(x) >= 17 and "co2" in x.ids
    with pytest.raises(LandscapeError, match="unknown level"):
        load_target_i("B3LYP")


def test_cif_dir_errors(tmp_path):
    with pytest.raises(LandscapeError, match="not found"):
        Landscape.from_cif_dir(tmp_path / "nope")
    with pytest.raises(LandscapeError, match=r"no \*\.cif"):
        Landscape.from_cif_dir(tmp_path)
    (tmp_path / "bad.cif").write_text("data_x\n_cell_length_a 3\n")
    with pytest.raises(LandscapeError, match="cannot read bad.cif"):
        Landscape.from_cif_dir(tmp_path)


def test_writing_over_an_earlier_landscape_replaces_its_outputs_only(tmp_path):
    """newuser41: a second `crystal-agent csp --out DIR` (fewer minima) left the first run's
    later CIFs in DIR/cif, read back with energy 0. The earlier landscape's own files go (its
    CIFs, a level's extxyz the new one lacks, the plot); a user's files in the folder stay."""
    src = Landscape.read(FORMAMIDE)
    Landscape("NC=O", src.minima[:5], name="formamide", levels=src.levels).write(tmp_path, plot=False)
    (tmp_path / "landscape.png").write_bytes(b"an earlier plot")
    assert (tmp_path / "landscape_xtb.extxyz").is_file()
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "cif" / "README").write_text("mine")
    second = Landscape("NC=O", [src.minima[k] for k in (3, 1)], name="formamide", levels={"ff": src.levels["ff"]})
    second.write(tmp_path, plot=False)
    assert sorted(p.name for p in (tmp_path / "cif").iterdir()) == sorted(
        ["README", "energies.csv", *(f"{i}.cif" for i in second.ids)])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["cif", "landscape.csv", "landscape_ff.extxyz", "notes.txt", "run.json"])
    back = Landscape.read(tmp_path)
    assert back.ids == second.ids and back.level_keys == ["ff"]
    cifs = Landscape.from_cif_dir(tmp_path / "cif")
    assert sorted(cifs.ids) == sorted(second.ids)
    assert {m.id: m.energy_kjmol for m in cifs.minima} == pytest.approx(
        {m.id: m.energy_kjmol for m in second.minima}, abs=1e-3)


def test_cif_dir_refuses_a_cif_without_an_energy_row(tmp_path):
    """With an energies.csv, a CIF it has no row for (e.g. one of another run) is an error
    naming it, not a structure of energy 0; without one, every energy is 0."""
    src = Landscape.read(FORMAMIDE)
    Landscape("NC=O", src.minima[:3]).write_cif_dir(tmp_path)
    shutil.copy(tmp_path / f"{src.minima[0].id}.cif", tmp_path / "stale.cif")
    with pytest.raises(LandscapeError, match=r"energies\.csv has no energy for 1 of the 4 CIFs there: stale\.cif;"):
        Landscape.from_cif_dir(tmp_path)
    # what `lab identify` reads (structures only): the CIF is kept, without an invented energy
    structures = {m.id: m.energy_kjmol for m in Landscape.from_cif_dir(tmp_path, allow_missing_energies=True).minima}
    assert len(structures) == 4 and np.isnan(structures.pop("stale"))
    assert structures == pytest.approx({m.id: m.energy_kjmol for m in src.minima[:3]}, abs=1e-3)
    (tmp_path / "energies.csv").unlink()
    land = Landscape.from_cif_dir(tmp_path)
    assert len(land) == 4 and {m.energy_kjmol for m in land.minima} == {0.0}
