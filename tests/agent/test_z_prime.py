"""Z' in a campaign's structure outputs (newuser35 #11: the csp command's landscape.csv had
Z', the campaign's status and structures/landscape_m*.csv did not; planar formamide on a
mirror in Pnma is Z' = 0.5)."""

from __future__ import annotations


def test_z_prime_from_the_record_or_the_space_group():
    from agent.summary import z_prime

    assert z_prime(2.0, "P2_1/c", 8) == 2.0  # the CSP's own record wins
    assert z_prime(None, "P2_1/c", 4) == 1.0
    assert z_prime(None, "Pnma", 4) == 0.5  # molecules on the mirror
    assert z_prime(None, "C2/c", 8) == 1.0  # conventional cell, centring counted
    assert z_prime(None, "P-1", 4) == 2.0
    assert z_prime(None, None, 4) is None and z_prime(None, "P2_1/c", None) is None
    assert z_prime(None, "not a group", 4) is None


def test_status_writes_a_fractional_z_prime_as_a_fraction():
    """newuser38 C3: "Z' = 0.166667" for Pa-3 acetylene; "1/6" is what a crystallographer writes."""
    from agent.summary import structure_lines
    from sim_backends.csp.dedupe import format_z_prime

    assert [format_z_prime(z) for z in (1.0, 2.0, 0.5, 1 / 6, 0.25, None)] == ["1", "2", "1/2", "1/6", "1/4", "?"]
    rec = {"name": "acetylene", "n_structures": 1, "n_computed": 1, "refine_level": "GFN2-xTB",
           "level": "GFN2-xTB", "top": [{"id": "m1-m0001", "energy_kjmol": -20.0, "computed": True,
                                         "density_gcm3": 0.76, "space_group": "Pa-3", "z": 4,
                                         "z_prime": 1 / 6}]}
    line = next(ln for ln in structure_lines([rec]) if "m1-m0001" in ln)
    assert "Pa-3, Z = 4, Z' = 1/6, 0.760 g/cm3" in line, line
