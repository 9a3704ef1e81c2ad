"""Loading multi-level CSP landscapes (agent/landscape_io.py) on the shipped target_I data."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from agent.landscape_io import LandscapeError, load_landscape

TARGET_I = Path(__file__).resolve().parents[2] / "data" / "reference" / "landscapes" / "target_I"


@pytest.fixture(scope="module")
def land():
    return load_landscape(TARGET_I, "MACE", "PBE_MBD")


def test_target_i_usable_structures_and_levels(land):
    assert len(land) == 88
    assert land.dropped_ids == ["af9cce730230555"]
    assert "af9cce730230555" not in land.ids
    assert land.levels == ["MACE", "PBE_MBD"]
    assert set(land.n_molecules.tolist()) == {8}
    assert all(len(a) == 8 * 13 for a in land.atoms["MACE"])
    assert land.observed == {land.ids.index("a9defee919e434")}


def test_energies_match_csv(land):
    with (TARGET_I / "Target_I_landscape.csv").open() as fh:
        rows = {r["id"]: r for r in csv.DictReader(fh)}
    for level in ("MACE", "PBE_MBD"):
        e = land.energies_kjmol[level]
        assert e.min() == pytest.approx(0.0)
        ref = np.array([float(rows[i][f"dE_{level}_kJmol_per_mol"]) for i in land.ids])
        np.testing.assert_allclose(e, ref - ref.min(), atol=1e-9)
    np.testing.assert_allclose(
        land.delta_kjmol(), land.energies_kjmol["PBE_MBD"] - land.energies_kjmol["MACE"]
    )


def test_frames_belong_to_their_ids(land):
    for level in land.levels:
        assert [str(a.info["id"]) for a in land.atoms[level]] == land.ids


def test_missing_level_and_files_give_one_line_errors(tmp_path):
    with pytest.raises(LandscapeError, match="level 'B3LYP'"):
        load_landscape(TARGET_I, "MACE", "B3LYP")
    with pytest.raises(LandscapeError, match="not found"):
        load_landscape(tmp_path / "nope", "MACE", "PBE_MBD")
    with pytest.raises(LandscapeError, match="landscape table"):
        load_landscape(tmp_path, "MACE", "PBE_MBD")
    shutil.copy(TARGET_I / "Target_I_landscape.csv", tmp_path)
    shutil.copy(TARGET_I / "Target_I_MACE.extxyz", tmp_path)
    with pytest.raises(LandscapeError, match="Target_I_PBE_MBD.extxyz not found") as info:
        load_landscape(tmp_path, "MACE", "PBE_MBD")
    assert "\n" not in str(info.value)
    with pytest.raises(LandscapeError, match="distinct"):
        load_landscape(TARGET_I, "MACE", "MACE")


def test_csp_engine_layout_and_broken_frames(tmp_path):
    """``landscape.csv`` + ``landscape_<LEVEL>.extxyz`` (the CSP engine's names) load;
    a frame flagged connectivity_ok=False drops its structure."""
    from ase.io import read, write

    frames = read(str(TARGET_I / "Target_I_MACE.extxyz"), ":4")
    for level, shift in (("ff", 0.0), ("xtb", 1.0)):
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
    land = load_landscape(tmp_path, "ff", "xtb")
    assert land.name == "landscape"
    assert land.ids == ["s0", "s1", "s2"] and land.dropped_ids == ["s3"]
    np.testing.assert_allclose(land.energies_kjmol["ff"], [1.0, 0.0, 3.0])
    np.testing.assert_allclose(land.energies_kjmol["xtb"], [3.0, 0.0, 2.5])
    assert land.observed == set()
