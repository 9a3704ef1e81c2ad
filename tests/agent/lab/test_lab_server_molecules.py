"""The reference lab server answers a molecule only from its own forms (newuser43b #2: a
server started on target I's forms answered an anthracene request with a target I
powder pattern)."""

import pytest

from agent.lab.base import LabRequest, LabRequestError
from agent.lab.testing import x23_landscape


def test_a_molecule_without_forms_is_refused_and_others_get_their_own(tmp_path):
    from agent.lab.server import LabServer

    entries = list(x23_landscape(4))  # 1,4-cyclohexanedione, adamantane, ammonia, anthracene
    server = LabServer(entries, tmp_path / "lab.sqlite", "token-123456")
    try:
        with pytest.raises(LabRequestError, match=r"no form of c1ccccc1 \(C6H6\); its forms are of ") as err:
            server.submit(LabRequest("b1", "c1ccccc1", "slurry", "water"))
        assert "\n" not in str(err.value)
        code, _ = server.submit(LabRequest("a1", "c1ccc2cc3ccccc3cc2c1", "slurry", "toluene"))
        assert code == 201
        forms = server.lab._landscape_for("c1ccc2cc3ccccc3cc2c1")
        assert [e.id for e in forms] == ["anthracene"]
    finally:
        server._db.close()
