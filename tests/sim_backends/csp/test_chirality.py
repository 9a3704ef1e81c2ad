"""An enantiopure molecule is searched only where an enantiopure crystal can exist
(newuser35 #1: (1R,4R)-camphor's rank-1 and rank-2 minima were racemic P2_1/c and P-1 crystals
under the enantiopure SMILES, without a word).

* which inputs name one enantiomer (assigned stereocentres, not meso; not unassigned ones);
* which of the searched groups are Sohncke groups (proper operations only);
* a real CSP of (S)-propylene oxide: by default only Sohncke groups are searched and every
  molecule of every written CIF is the given enantiomer; a non-Sohncke group is refused with
  one line; ``racemic=True`` searches every group and the landscape records the choice."""

from __future__ import annotations

import numpy as np
import pytest

CAMPHOR = "CC1(C)[C@@H]2CC[C@@]1(C)C(=O)C2"
OXIRANE = "C[C@H]1CO1"  # (S)-propylene oxide: rigid, four heavy atoms


def test_enantiopure_inputs(tmp_path):
    from sim_backends.csp.chirality import enantiopure, stereo_policy

    assert enantiopure(CAMPHOR) and enantiopure(OXIRANE) and enantiopure("N[C@@H](C)C(=O)O")
    assert enantiopure("C[C@H](O)[C@H](C)O")  # (R,R)-2,3-butanediol
    assert not enantiopure("C[C@H](O)[C@@H](C)O")  # meso-2,3-butanediol
    assert not enantiopure("CC1(C)C2CCC1(C)C(=O)C2")  # camphor, stereocentres unassigned
    assert not enantiopure("c1ccccc1") and not enantiopure("not a smiles @@")
    smi = tmp_path / "m.smi"
    smi.write_text(f"{CAMPHOR} camphor\n")
    assert enantiopure(str(smi))
    xyz = tmp_path / "m.xyz"
    xyz.write_text("1\n\nC 0 0 0\n")
    assert not enantiopure(str(xyz))  # a geometry says nothing about the sample
    assert stereo_policy(CAMPHOR).sohncke_only and "Sohncke" in stereo_policy(CAMPHOR).note
    assert not stereo_policy(CAMPHOR, racemic=True).sohncke_only
    assert not stereo_policy("c1ccccc1").sohncke_only and stereo_policy("c1ccccc1").note == ""
    # newuser42 item 9: racemic on an input that names no enantiomer is said to do nothing
    for achiral in ("c1ccccc1", "CC1(C)C2CCC1(C)C(=O)C2", str(xyz)):
        policy = stereo_policy(achiral, racemic=True)
        assert not policy.sohncke_only and "has no effect" in policy.note, achiral


def test_sohncke_groups_and_filtering():
    from sim_backends.csp.spacegroups import _GROUPS, get_space_group, parse_space_groups, search_labels

    assert {g for g in _GROUPS if get_space_group(g).sohncke} == {"P1", "P2_1", "C2", "P2_12_12_1"}
    assert [g.symbol for g in parse_space_groups(None, sohncke_only=True)] == ["P2_12_12_1", "P2_1", "C2", "P1"]
    assert search_labels(None, "1,2", sohncke_only=True)[-2:] == ["P2_12_12_1 Z'=2", "P2_1 Z'=2"]
    with pytest.raises(ValueError, match="P2_1/c has inversion, mirror or glide symmetry"):
        parse_space_groups("P2_1,P2_1/c", sohncke_only=True)
    assert len(parse_space_groups("P2_1,P2_1/c")) == 2  # achiral input: anything


def _molecule_smiles(cif_path):
    """Canonical isomeric SMILES of every molecule in a CIF (bonds and stereo perceived from 3D)."""
    import networkx as nx
    from pymatgen.core import Structure
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds

    s = Structure.from_file(cif_path)
    graph = nx.Graph()
    graph.add_nodes_from(range(len(s)))
    centres, neighbours, _, _ = s.get_neighbor_list(1.7)  # covalent bonds (C-O 1.43, C-C 1.5 A)
    graph.add_edges_from((int(i), int(j)) for i, j in zip(centres, neighbours, strict=True) if i != j)
    out = []
    for comp in nx.connected_components(graph):
        comp = sorted(comp)
        frac = {comp[0]: s[comp[0]].frac_coords}
        stack = [comp[0]]
        while stack:  # unwrap the molecule across cell boundaries
            u = stack.pop()
            for v in graph.neighbors(u):
                if v not in frac:
                    d = s[v].frac_coords - frac[u]
                    frac[v] = frac[u] + d - np.round(d)
                    stack.append(v)
        xyz = f"{len(comp)}\n\n" + "\n".join(
            f"{s[i].specie} " + " ".join(f"{x:.6f}" for x in s.lattice.get_cartesian_coords(frac[i])) for i in comp)
        mol = Chem.MolFromXYZBlock(xyz)
        rdDetermineBonds.DetermineBonds(mol, charge=0)
        Chem.AssignStereochemistryFrom3D(mol)
        out.append(Chem.MolToSmiles(Chem.RemoveHs(mol)))
    return out


def test_an_enantiopure_molecule_gives_enantiopure_crystals(tmp_path):
    from rdkit import Chem

    from sim_backends.csp.run import run_csp

    want = Chem.MolToSmiles(Chem.MolFromSmiles(OXIRANE))
    mirror = Chem.MolToSmiles(Chem.MolFromSmiles("C[C@@H]1CO1"))
    land = run_csp(OXIRANE, 64, sampling="fixed", charges="xtb", progress=False, out_dir=tmp_path / "s")
    assert land.meta["space_groups"] == ["P2_12_12_1", "P2_1", "C2", "P1"]
    assert land.meta["stereo"]["sohncke_only"] and land.meta["stereo"]["enantiopure_input"]
    assert land.minima and {m.search_space_group for m in land.minima} <= {"P2_12_12_1", "P2_1", "C2", "P1"}
    for m in land.minima[:5]:
        mols = _molecule_smiles(tmp_path / "s" / "cif" / f"{m.id}.cif")
        assert mols and set(mols) == {want}, (m.id, m.space_group, mols)
    with pytest.raises(ValueError, match="P-1 has inversion"):
        run_csp(OXIRANE, 8, space_groups="P-1", charges="xtb", progress=False)

    race = run_csp(OXIRANE, 16, space_groups="P-1", sampling="fixed", charges="xtb", progress=False,
                   racemic=True, out_dir=tmp_path / "r")
    assert race.meta["stereo"]["racemic"] and not race.meta["stereo"]["sohncke_only"]
    centro = next(m for m in race.minima if m.space_group in ("P-1", "P2_1/c", "C2/c", "Pbca"))
    assert set(_molecule_smiles(tmp_path / "r" / "cif" / f"{centro.id}.cif")) == {want, mirror}


def test_esf_landscapes_of_an_enantiopure_molecule_use_its_sohncke_groups():
    """The ESF backends pass their own default list (P2_1/c, P-1, ... ) to run_csp; for one
    enantiomer that list is filtered, not refused (review of stop 35)."""
    from sim_backends.esf import landscape_record

    rec = landscape_record(OXIRANE, 10.0, 8, 3, 7.0)
    assert "error" not in rec and rec["structures"]
    assert {s["space_group"] for s in rec["structures"]} <= {"P2_12_12_1", "P2_1", "C2", "P1"}
    racemic = landscape_record(OXIRANE, 10.0, 8, 3, 7.0, space_groups="P-1", racemic=True)
    assert "error" not in racemic
    refused = landscape_record(OXIRANE, 10.0, 8, 3, 7.0, space_groups="P-1")
    assert refused["error"].startswith("csp: ValueError: space group P-1 has inversion") and \
        refused["error"].endswith("racemic (--racemic)")
