"""Molecule preparation: SMILES validation, conformer embedding, pool files."""

from pathlib import Path

import numpy as np
import pytest

from sim_backends.base import SetupError
from sim_backends.molecule import embed_conformer, read_pool, to_xyz, validate_smiles

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "smiles, fragment",
    [
        ("xyz", "invalid SMILES 'xyz'"),
        ("c1ccccc", "invalid SMILES"),
        ("", "invalid SMILES"),
        ("CC O", "whitespace"),
        ("C.C", "2 fragments"),
        ("c1ccccc1.O", "2 fragments"),
        ("C[Se]C", "unsupported element(s) Se"),
        ("Brc1ccccc1", "unsupported element(s) Br"),
        ("C[N+](C)(C)C", "net charge +1"),
        ("CC(=O)[O-]", "net charge -1"),
        ("[CH3]", "unpaired electron"),
        ("C" * 41, "41 heavy atoms"),
    ],
)
def test_invalid_molecules_give_one_line_setup_errors(smiles, fragment):
    with pytest.raises(SetupError) as info:
        validate_smiles(smiles)
    msg = str(info.value)
    assert fragment in msg
    assert "\n" not in msg and len(msg) < 200


def test_validate_returns_canonical_smiles_and_honours_limit():
    assert validate_smiles("C1=CC=CC=C1") == "c1ccccc1"
    assert validate_smiles("S1C=CC=C1") == validate_smiles("c1ccsc1")
    assert validate_smiles("C" * 41, max_heavy_atoms=50) == "C" * 41
    assert validate_smiles("C[N+](=O)[O-]") == "C[N+](=O)[O-]"  # nitro: neutral overall
    with pytest.raises(SetupError, match="limit is 5"):
        validate_smiles("c1ccccc1", max_heavy_atoms=5)


def test_embedding_is_deterministic_for_a_seed_and_chemically_sane():
    sym1, xyz1 = embed_conformer("c1ccsc1", seed=7)
    sym2, xyz2 = embed_conformer("c1ccsc1", seed=7)
    assert sym1 == sym2 and xyz1.shape == (9, 3)
    np.testing.assert_array_equal(xyz1, xyz2)
    assert sorted(sym1) == sorted(["C"] * 4 + ["S"] + ["H"] * 4)
    dist = np.linalg.norm(xyz1[:, None] - xyz1[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    assert dist.min() > 0.9  # no overlapping atoms
    # thiophene is planar after the MMFF94 clean-up
    centred = xyz1 - xyz1.mean(axis=0)
    assert np.linalg.svd(centred, compute_uv=False)[-1] < 1e-2
    xyz = to_xyz(sym1, xyz1, "thiophene")
    assert xyz.splitlines()[0] == "9" and len(xyz.splitlines()) == 11


def test_embedding_rejects_bad_input():
    with pytest.raises(SetupError, match="invalid SMILES"):
        embed_conformer("not a molecule")


def test_read_pool_parses_names_comments_and_triple_bonds(tmp_path):
    p = tmp_path / "pool.smi"
    p.write_text(
        "# header comment\n\nC#C acetylene\nc1ccccc1   benzene ring  # trailing\n"
        "N#CC#N\n  c1ccsc1 thiophene\nnot_smiles broken entry\n"
    )
    assert read_pool(p) == [
        ("C#C", "acetylene"),
        ("c1ccccc1", "benzene ring"),
        ("N#CC#N", None),
        ("c1ccsc1", "thiophene"),
        ("not_smiles", "broken entry"),
    ]
    with pytest.raises(FileNotFoundError, match="pool file not found"):
        read_pool(tmp_path / "missing.smi")


@pytest.mark.parametrize("name, n_min", [("pool.smi", 110), ("tiny_pool.smi", 6)])
def test_shipped_pools_are_valid_and_unique(name, n_min):
    entries = read_pool(ROOT / "examples" / name)
    assert len(entries) >= n_min
    canon = [validate_smiles(s) for s, _ in entries]
    assert len(set(canon)) == len(canon), "duplicate molecule in the pool"
    assert all(n for _, n in entries), "every pool entry has a name"
