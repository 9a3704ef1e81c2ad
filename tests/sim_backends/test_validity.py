"""Physical validity as a backend contract: a violation is a failed result, never a value.

The reorganisation-energy check is driven through ``Backend.evaluate`` with constructed
values (those of the chloranil result B3LYP/6-31G//GFN2-xTB gave: lambda_cation < 0 and
IP_adiabatic > IP_vertical); the crystal checks with real structures from data/ made
unphysical (an expanded cell, a rigidly compressed cell, a molecule pushed into its
neighbour) and evaluated with real periodic GFN2-xTB.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from sim_backends.base import Backend, EvalInput, PhysicsError
from sim_backends.reorg import XtbReorgBackend

X23_CIF = Path(__file__).resolve().parents[2] / "data" / "reference" / "x23" / "cif"
NAPHTHALENE = "c1ccc2ccccc2c1"
LEVEL = "B3LYP/6-31G//GFN2-xTB geometries"


class FixedReorg(XtbReorgBackend):
    """The reorganisation backend with its engine replaced by constructed values."""

    def __init__(self, values: dict[str, float]) -> None:
        super().__init__()
        self.fixed = values

    def _evaluate(self, inp):
        return dict(self.fixed), {"level": LEVEL}


def _reorg(l_cat: float, l_neu: float, ip_ad: float | None = None, ip_v: float | None = None) -> dict:
    ip_ad = 900.0 if ip_ad is None else ip_ad
    return {
        "reorg_energy_kjmol": l_cat + l_neu, "lambda_cation_kjmol": l_cat, "lambda_neutral_kjmol": l_neu,
        "ip_adiabatic_kjmol": ip_ad, "ip_vertical_kjmol": ip_ad + l_cat if ip_v is None else ip_v,
    }


def test_negative_lambda_component_is_a_failed_result_naming_value_and_level():
    chloranil = _reorg(-10.1, 26.0, ip_ad=942.3, ip_v=932.2)  # total +15.9 passes a total-only guard
    res = FixedReorg(chloranil).evaluate(EvalInput("O=C1C(Cl)=C(Cl)C(=O)C(Cl)=C1Cl"))
    assert res.status == "failed" and not res.retryable
    assert res.reason == f"unphysical: lambda_cation = -10.1 kJ/mol < -0.5 ({LEVEL})"
    assert res.values == {}
    assert res.extra["unphysical_values"]["lambda_neutral_kjmol"] == pytest.approx(26.0)


def test_adiabatic_ionisation_energy_above_vertical_is_rejected():
    res = FixedReorg(_reorg(2.0, 3.0, ip_ad=905.0, ip_v=902.0)).evaluate(EvalInput("c1ccsc1"))
    assert res.status == "failed" and res.reason.startswith("unphysical: IP_adiabatic = 905.0 kJ/mol")


def test_components_within_tolerance_but_non_positive_total_is_rejected():
    res = FixedReorg(_reorg(-0.4, 0.2)).evaluate(EvalInput("c1ccsc1"))
    assert res.status == "failed" and res.reason.startswith("unphysical: lambda+ = -0.20 kJ/mol <= 0")


def test_physical_values_pass_unchanged():
    res = FixedReorg(_reorg(-0.3, 12.0)).evaluate(EvalInput("c1ccsc1"))  # -0.3: within tolerance
    assert res.ok and res.values["reorg_energy_kjmol"] == pytest.approx(11.7)


def test_real_xtb_reorganisation_energy_passes_the_check_and_names_its_level():
    res = XtbReorgBackend().evaluate(EvalInput("c1ccoc1"))
    assert res.ok, res.reason
    assert res.extra["level"] == "GFN2-xTB"
    assert res.values["lambda_cation_kjmol"] > 0 and res.values["lambda_neutral_kjmol"] > 0


class Echo(Backend):
    name = "echo-test"
    computes = ("a", "gap")
    may_be_nan = ("gap",)

    def _evaluate(self, inp):
        return dict(inp.params["values"]), {}


def test_non_finite_values_fail_unless_declared_undefined():
    assert Echo().evaluate(EvalInput("C", params={"values": {"a": 1.0, "gap": math.nan}})).ok
    res = Echo().evaluate(EvalInput("C", params={"values": {"a": math.inf, "gap": 0.0}}))
    assert res.status == "failed" and res.reason == "unphysical: non-finite value(s) a = inf"
    res = Echo().evaluate(EvalInput("C", params={"values": {"a": math.nan, "gap": 0.0}}))
    assert res.status == "failed" and "a = nan" in res.reason


# -- crystals ------------------------------------------------------------------------------


def _naphthalene():
    from sim_backends.structures import load_crystal

    return load_crystal((X23_CIF / "naphthalene.cif").read_text(), NAPHTHALENE)


def _rigidly_scaled(crystal, factor: float):
    """The cell scaled by ``factor`` with molecules moved as rigid bodies (centroids scaled)."""
    atoms = crystal.atoms.copy()
    pos = atoms.get_positions()
    atoms.set_cell(atoms.cell * factor, scale_atoms=False)
    for g in crystal.groups:
        pos[g] += pos[g].mean(axis=0) * (factor - 1.0)
    atoms.set_positions(pos)
    return atoms


def _h_clash(crystal, distance_A: float):
    """Molecule of the closest intermolecular H...H partner pushed to ``distance_A``."""
    from ase.neighborlist import neighbor_list

    atoms = crystal.atoms.copy()
    mol_of = np.empty(len(atoms), int)
    for k, g in enumerate(crystal.groups):
        mol_of[g] = k
    i, j, d, D = neighbor_list("ijdD", atoms, 3.0)
    h = np.asarray(atoms.get_chemical_symbols()) == "H"
    sel = np.flatnonzero((mol_of[i] != mol_of[j]) & h[i] & h[j])
    k = sel[np.argmin(d[sel])]
    pos = atoms.get_positions()
    pos[crystal.groups[mol_of[j[k]]]] -= D[k] / d[k] * (d[k] - distance_A)
    atoms.set_positions(pos)
    return atoms


def _xtb(atoms):
    from sim_backends.registry import get_backend
    from sim_backends.structures import cif_from_atoms

    return get_backend("xtb-crystal").evaluate(EvalInput(NAPHTHALENE, structure_cif=cif_from_atoms(atoms)))


def test_structure_facts_of_real_crystals_are_physical():
    from sim_backends.structures import load_crystal
    from sim_backends.validity import check_structure_facts, structure_facts

    for cif in sorted(X23_CIF.glob("*.cif")):
        facts = structure_facts(load_crystal(cif.read_text()))
        check_structure_facts(facts, "X23 reference")  # raises if a real crystal is rejected
        assert 0.9 < facts["density_gcm3"] < 2.0, cif.name
    facts = structure_facts(_naphthalene())
    assert facts["density_gcm3"] == pytest.approx(1.2435, abs=1e-3)
    assert facts["shortest_contacts"]["H...H"]["distance_A"] == pytest.approx(2.283, abs=1e-3)


def test_h_h_clash_fails_the_structure_check():
    from sim_backends.structures import Crystal
    from sim_backends.validity import check_structure_facts, structure_facts

    facts = structure_facts(Crystal.from_atoms(_h_clash(_naphthalene(), 0.9)))
    assert facts["shortest_contacts"]["H...H"]["distance_A"] == pytest.approx(0.9, abs=1e-6)
    with pytest.raises(PhysicsError, match=r"intermolecular H\.\.\.H contact H\d+\.\.\.H\d+ = 0\.90 A < 1\.0 A"):
        check_structure_facts(facts, "test")


@pytest.mark.slow  # periodic GFN2-xTB SCFs of a naphthalene cell
def test_xtb_crystal_rejects_h_h_clash():
    res = _xtb(_h_clash(_naphthalene(), 0.9))
    assert res.status == "failed" and not res.retryable
    assert res.reason.startswith("unphysical: intermolecular H...H contact") and "(GFN2-xTB periodic)" in res.reason


def test_xtb_crystal_rejects_absurd_density():
    res = _xtb(_rigidly_scaled(_naphthalene(), 1.6))
    assert res.status == "failed"
    assert res.reason == "unphysical: density = 0.304 g/cm3 outside [0.5, 3.0] (GFN2-xTB periodic)"


@pytest.mark.slow  # periodic GFN2-xTB SCFs of a naphthalene cell
def test_xtb_crystal_rejects_positive_lattice_energy():
    """10 % rigid compression: contacts (H...H 1.57 A) and density (1.71) pass, E_latt > 0."""
    res = _xtb(_rigidly_scaled(_naphthalene(), 0.9))
    assert res.status == "failed" and res.reason.startswith("unphysical: lattice energy = ")
    assert res.extra["unphysical_values"]["energy_kjmol"] > 0
    ok = _xtb(_naphthalene().atoms)
    assert ok.ok and -150.0 < ok.values["energy_kjmol"] < -20.0
    assert ok.extra["validity"]["density_gcm3"] == pytest.approx(1.2435, abs=1e-3)


def test_csp_global_minimum_is_checked():
    from sim_backends.csp.backend import CSPBackend
    from sim_backends.structures import load_crystal
    from sim_backends.validity import structure_facts

    facts = structure_facts(load_crystal((X23_CIF / "urea.cif").read_text()))
    extra = {"validity": facts, "level": "W99 + Ewald rigid-molecule force field"}
    values = {"global_min_energy_kjmol": -95.0, "energy_gap_kjmol": math.nan}
    CSPBackend()._check_physical(values, extra)
    with pytest.raises(PhysicsError, match=r"lattice energy = 4\.0 kJ/mol per molecule outside \(-300, 0\)"):
        CSPBackend()._check_physical({**values, "global_min_energy_kjmol": 4.0}, extra)


def test_phonon_saddle_point_is_rejected_soft_noise_is_not():
    from sim_backends.phonons import PhononBackend
    from sim_backends.structures import load_crystal
    from sim_backends.validity import structure_facts

    extra = {"validity": structure_facts(load_crystal((X23_CIF / "urea.cif").read_text())),
             "level": "harmonic phonons, xtb-crystal forces", "min_frequency_THz": -0.2}
    values = {"f_vib_kjmol": 10.0, "zpe_kjmol": 12.0, "n_imaginary": 1.0}
    PhononBackend()._check_physical(values, extra)
    with pytest.raises(PhysicsError, match=r"2 imaginary mode\(s\), lowest -1\.30 THz"):
        PhononBackend()._check_physical({**values, "n_imaginary": 2.0}, {**extra, "min_frequency_THz": -1.3})
    with pytest.raises(PhysicsError, match="non-finite"):
        PhononBackend()._check_physical({**values, "f_vib_kjmol": math.nan}, extra)


def test_dft_crystal_refuses_overlapping_molecules_before_any_scf():
    from sim_backends.registry import get_backend
    from sim_backends.structures import cif_from_atoms

    cif = cif_from_atoms(_h_clash(_naphthalene(), 0.9))
    res = get_backend("dft-crystal").evaluate(EvalInput(NAPHTHALENE, structure_cif=cif))
    assert res.status == "failed" and res.reason.startswith("unphysical: intermolecular H...H contact")
    assert res.reason.endswith("(PBE-D3(BJ)/def2-svp two-body fragments)")
    assert "dimers" not in res.extra  # refused before the fragment calculation
