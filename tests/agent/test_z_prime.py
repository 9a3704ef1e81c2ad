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
