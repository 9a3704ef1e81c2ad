"""The recovery benchmark's hydrogen check: a match must put the hydrogens on the same heavy atoms."""

import sys
from types import SimpleNamespace

from conftest import ROOT


def test_swapping_which_oxygen_carries_the_hydrogen_breaks_the_match():
    """Oxalic acid alpha: relabelling the two hydroxyl oxygens of each molecule is what the
    check sees; with the C=O and C-OH oxygens swapped, the heavy atoms still match (the
    benchmark's heavy-atom definition) but the protonation-aware match does not."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from csp_recovery import MATCH, hydrogen_check, protonated_heavy_atoms, reference_structure
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from sim_backends.csp.dedupe import heavy_atoms

    ref = reference_structure("oxalic_acid_alpha")
    n_mol = sum(1 for sp in ref.species if sp.symbol == "C") // 2
    lab = protonated_heavy_atoms(ref)
    assert [sp.symbol for sp in lab.species].count("Se") == 2 * n_mol  # the two C-O(H) per molecule
    assert [sp.symbol for sp in lab.species].count("O") == 2 * n_mol  # the two C=O
    swapped = lab.copy()
    swapped.replace_species({"O": "Se", "Se": "O"})
    sm = StructureMatcher(**MATCH, scale=True, primitive_cell=True, attempt_supercell=True)
    assert sm.fit(lab, lab) and not sm.fit(lab, swapped)
    as_o = swapped.copy()
    as_o.replace_species({"Se": "O"})
    assert sm.fit(heavy_atoms(ref, keep_h=False), as_o)  # heavy atoms alone cannot tell
    assert hydrogen_check(ref, SimpleNamespace(structure=ref))["h_sites_match"]


class _Landscape:
    """The two things match_report reads from a landscape: its minima (energy order) and the
    matches of a reference at a given stol (here a table: stol -> ids)."""

    def __init__(self, energies: dict[str, float], matches: dict[float, dict[str, float]]):
        self.minima = [SimpleNamespace(id=k, energy_kjmol=e, space_group="P2_1/c", structure=None, z=4)
                       for k, e in sorted(energies.items(), key=lambda kv: kv[1])]
        self.matches = matches

    def find_matches(self, ref, ltol, stol, angle_tol):
        hit = self.matches.get(stol, {})
        return [(r, m, hit[m.id]) for r, m in enumerate(self.minima, 1) if m.id in hit]


def _report(monkeypatch, land, relaxed=None):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import csp_recovery

    from sim_backends.csp import dedupe

    monkeypatch.setattr(dedupe, "heavy_atoms", lambda s, *a, **k: s)
    monkeypatch.setattr(dedupe, "protonated_sites", lambda s: set())
    # distinct minima: the dedupe's matcher never fits two of them (structures are None here)
    monkeypatch.setattr("pymatgen.analysis.structure_matcher.StructureMatcher.fit", lambda self, a, b: a is b)
    return csp_recovery.match_report(land, object(), relaxed)


def test_several_matches_resolved_by_the_relaxed_experiment(monkeypatch):
    """Two distinct minima match down to stol 0.2 and none at 0.1: the one that is the relaxed
    experiment is the match, whatever its rms."""
    land = _Landscape({"m1": -65.0, "m2": -64.8, "m3": -59.9},
                      {0.4: {"m2": 0.128, "m3": 0.100}, 0.3: {"m2": 0.128, "m3": 0.100},
                       0.2: {"m2": 0.128, "m3": 0.100}})
    out = _report(monkeypatch, land, {"landscape_id": "m2"})
    assert out["found"] and out["rank"] == 2 and abs(out["gap_kjmol"] - 0.2) < 1e-9 and not out["unique"]
    assert "m2 is the relaxed experiment" in out["diagnosis"]


def test_tightening_that_leaves_none_keeps_the_closest_match(monkeypatch):
    """Without the relaxed experiment among them, stol is tightened; when a step leaves none the
    closest match of the last step is reported (found, not unique), not "not found"."""
    land = _Landscape({"m1": -65.0, "m2": -64.8, "m3": -59.9},
                      {0.4: {"m2": 0.128, "m3": 0.100}, 0.3: {"m2": 0.128, "m3": 0.100}})
    out = _report(monkeypatch, land, {"landscape_id": None})
    assert out["found"] and out["rank"] == 3 and out["stol_used"] == 0.3 and not out["unique"]
    assert "none at stol 0.2, the closest of stol 0.3 kept" in out["diagnosis"]
    one = _Landscape({"m1": -65.0, "m2": -64.8}, {0.4: {"m1": 0.2, "m2": 0.1}, 0.3: {"m1": 0.2}})
    out = _report(monkeypatch, one, None)
    assert out["rank"] == 1 and out["stol_used"] == 0.3 and "unique at stol 0.3" in out["diagnosis"]


def test_leave_one_out_parameter_sets(monkeypatch):
    """``--params loo:x23fit-resp-lp``: an X23 system gets the factors fitted without its crystal
    (COD benzene I those without X23 benzene), the fit's all-crystal factors are the registered
    set, and a set is refused with charges other than its own."""
    import json

    import pytest

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import csp_recovery
    from x23_lattice_fit import scales_of

    from sim_backends.csp import forcefield as ff

    monkeypatch.setattr(ff, "PARAMETER_SETS", dict(ff.PARAMETER_SETS))
    fit = json.loads((ROOT / csp_recovery.X23_FIT_JSON).read_text())["scans"]["resp-lp:cX+aX+aHON"]
    monkeypatch.setitem(csp_recovery.SYSTEMS, "_not_x23", ("CC", "P2_1", "-", "cod"))
    sets = csp_recovery.loo_parameter_sets("loo:x23fit-resp-lp", "resp-lp")
    assert sets["urea"][0] == "x23fit-resp-lp-loo-urea" and "without X23 urea" in sets["urea"][1]
    a, c = ff.PARAMETER_SETS["x23fit-resp-lp-loo-urea"]
    a_fit, c_fit = scales_of("cX+aX+aHON", fit["loo_theta"]["urea"])
    assert a == {g: v for g, v in a_fit.items() if g in ff.TYPE_GROUPS.values()} and a["HN"] == a_fit["HN"]
    assert c["N"] == c_fit["N"] != ff.PARAMETER_SETS["x23fit-resp-lp"][1]["N"]
    assert sets["benzene_cod"][0] == sets["benzene"][0] == "x23fit-resp-lp-loo-benzene"
    assert sets["_not_x23"][0] == "x23fit-resp-lp"  # not in X23: the all-17 set
    assert len({s for s, _ in sets.values()}) == len(csp_recovery.SYSTEMS) - 1  # one per crystal + all-17
    with pytest.raises(ValueError, match="fitted with resp charges, not resp-lp"):
        csp_recovery.loo_parameter_sets("loo:x23fit-resp", "resp-lp")
    with pytest.raises(ValueError, match="unknown --params"):
        csp_recovery.loo_parameter_sets("loo:w99", "resp")


def test_leave_one_out_sets_of_a_model_with_split_groups(monkeypatch, tmp_path):
    """A fit that leaves the amine N and sp C at W99 (``-NA-C2``, a set the force field does not have):
    each molecule gets the factor of the finer group it has (hexamine's N W99's, triazine's N the N
    factor), sp C is told apart from C in this process, and a molecule with both amine and ring N is
    refused."""
    import json

    import pytest

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import csp_recovery
    from x23_lattice_fit import MODELS

    from sim_backends.csp import forcefield as ff

    for name in ("PARAMETER_SETS", "TYPE_GROUPS", "W99_PARAMS"):
        monkeypatch.setattr(ff, name, dict(getattr(ff, name)))
    model = "cX+aX+aHON-NA-C2"
    theta = [1.1 + 0.01 * i for i in range(len(MODELS[model]))]  # c: C H N O, a: C H N O HO HN
    loo = {c: [v + 0.1 for v in theta] for c in ("hexamine", "triazine", "co2", "benzene", "oxalic_acid_alpha")}
    fit_json = tmp_path / "fit.json"
    fit_json.write_text(json.dumps({"scans": {f"resp-lpn:{model}": {"theta": theta, "loo_theta": loo}}}))
    monkeypatch.setitem(csp_recovery.LOO_FITS, "x23fit-resp-lpn", f"resp-lpn:{model}")
    monkeypatch.setattr(csp_recovery, "SYSTEMS", {k: csp_recovery.SYSTEMS[k] for k in (*loo, "benzene_cod")})
    monkeypatch.setitem(csp_recovery.SYSTEMS, "_not_x23", ("c1ccncc1", "P2_1", "-", "cod"))
    sets = csp_recovery.loo_parameter_sets("loo:x23fit-resp-lpn", "resp-lpn", fit_json)
    assert ff.TYPE_GROUPS["C_W2"] == "C2" and ff.TYPE_GROUPS["O_W2"] == "O2"  # this process only
    a, c = ff.PARAMETER_SETS[sets["hexamine"][0]]
    assert "N" not in a and "N" not in c and a["H"] == round(loo["hexamine"][5], 4)  # amine N: W99
    a, c = ff.PARAMETER_SETS[sets["triazine"][0]]
    assert a["N"] == round(loo["triazine"][6], 4) and c["N"] == round(loo["triazine"][2], 4)
    a, c = ff.PARAMETER_SETS[sets["co2"][0]]
    assert "C2" not in a and "C2" not in c and c["O"] == round(loo["co2"][3], 4)  # sp C: W99
    a, _ = ff.PARAMETER_SETS[sets["oxalic_acid_alpha"][0]]
    ox = loo["oxalic_acid_alpha"]
    assert a["O"] == a["O2"] == round(ox[7], 4) and a["C"] == round(ox[4], 4)
    table = ff.parameter_table(sets["co2"][0])
    assert table["C_W2"] == ff.W99_PARAMS["C_W2"] and table["C_W3"] != ff.W99_PARAMS["C_W3"]
    assert sets["benzene_cod"][0] == "x23fit-resp-lpn-loo-benzene"
    assert sets["_not_x23"] == ("x23fit-resp-lpn-all-_not_x23", f"resp-lpn:{model} fitted to all 17 X23 crystals "
                                "(_not_x23 not in X23)")
    assert ff.PARAMETER_SETS["x23fit-resp-lpn-all-_not_x23"][0]["N"] == round(theta[6], 4)
    monkeypatch.setitem(csp_recovery.SYSTEMS, "_not_x23", ("CN(C)c1ccncc1", "P2_1", "-", "cod"))
    with pytest.raises(ValueError, match="groups N, NA have different factors; not a force-field set for this"):
        csp_recovery.loo_parameter_sets("loo:x23fit-resp-lpn", "resp-lpn", fit_json)


def test_leave_one_out_sets_resp_lpn_fit_file():
    """``loo:x23fit-resp-lpn`` (and -nac2) read their models from their own committed fit file (stop 41)."""
    import json

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import csp_recovery

    for name in ("x23fit-resp-lpn", "x23fit-resp-lpn-nac2"):
        method_model = csp_recovery.LOO_FITS[name]
        fit = json.loads((ROOT / csp_recovery.LOO_FIT_FILES[name]).read_text())
        assert method_model.startswith("resp-lpn:") and len(fit["scans"][method_model]["loo_theta"]) == 17
