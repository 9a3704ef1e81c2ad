"""Contract tests run over every registered lab adapter (agent.lab.base.ADAPTERS).

Each registered adapter needs a factory below; a new adapter without one fails
``test_every_adapter_has_a_factory``.
"""

from __future__ import annotations

import contextlib

import pytest

from agent.lab.base import (
    ADAPTERS,
    LabRequest,
    LabRequestError,
    LabStatus,
    LabTicket,
    UnknownAdapterError,
    UnknownTicketError,
    get_adapter,
)
from agent.lab.testing import FakeClock, wait_terminal, x23_landscape

TOKEN = "contract-token-0123"


@contextlib.contextmanager
def _simulated(tmp_path, monkeypatch):
    from agent.lab.simulated import SimulatedLab

    clock = FakeClock()
    yield SimulatedLab(list(x23_landscape()), seed=1, queue_delay_s=(1.0, 2.0), run_delay_s=(2.0, 4.0), clock=clock, failure_scale=0.0), clock.advance


@contextlib.contextmanager
def _network(tmp_path, monkeypatch):
    from agent.lab.network import NetworkLabAdapter
    from agent.lab.server import LabServer

    monkeypatch.setenv("CRYSTAL_AGENT_LAB_TOKEN", TOKEN)
    server = LabServer(list(x23_landscape()), tmp_path / "lab.sqlite", TOKEN, queue_delay_s=(0.1, 0.2), run_delay_s=(0.2, 0.4)).start()
    try:
        yield NetworkLabAdapter(server.url, timeout_s=10, max_retries=1, backoff_s=0.05), None
    finally:
        server.stop()


@contextlib.contextmanager
def _guarded_network(tmp_path, monkeypatch):
    """The network adapter as campaigns get it: through the safety gate (auto-approve)."""
    from agent.lab.server import LabServer

    monkeypatch.setenv("CRYSTAL_AGENT_LAB_TOKEN", TOKEN)
    server = LabServer(list(x23_landscape()), tmp_path / "lab.sqlite", TOKEN, queue_delay_s=(0.1, 0.2), run_delay_s=(0.2, 0.4)).start()
    try:
        yield get_adapter("network", campaign_dir=str(tmp_path / "campaign"), auto_approve=True, base_url=server.url), None
    finally:
        server.stop()


FACTORIES = {"simulated": _simulated, "network": _network, "guarded-network": _guarded_network}


def test_every_adapter_has_a_factory():
    assert set(ADAPTERS) <= set(FACTORIES), f"add a contract factory for {set(ADAPTERS) - set(FACTORIES)}"


def _req(i: int, **kw) -> LabRequest:
    smiles = kw.pop("smiles", "O=C1CCC(=O)CC1")
    return LabRequest(f"contract-{i}", smiles, kw.pop("method", "slurry"), kw.pop("solvent", "water"), **kw)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_submit_is_idempotent(name, tmp_path, monkeypatch):
    with FACTORIES[name](tmp_path, monkeypatch) as (lab, _):
        t1 = lab.submit(_req(1))
        t2 = lab.submit(_req(1))
        assert t1 == t2
        assert isinstance(t1, LabTicket) and t1.request_id == "contract-1"
        other = lab.submit(_req(2))
        assert other != t1
        with pytest.raises(LabRequestError):  # same id, different experiment
            lab.submit(_req(1, method="cooling"))
        health = lab.health()
        assert health["ok"] is True
        inner = health.get("inner", health)
        assert inner.get("n_experiments", 2) == 2


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_poll_moves_forward_to_done_with_pattern(name, tmp_path, monkeypatch):
    with FACTORIES[name](tmp_path, monkeypatch) as (lab, advance):
        ticket = lab.submit(_req(3, measure=("pxrd", "density_gcm3")))
        first = lab.poll(ticket)
        assert first.state in ("queued", "running")
        order = ["queued", "running", "done"]
        seen = [first.state]
        status = wait_terminal(lab, ticket, advance=advance)
        seen.append(status.state)
        assert [order.index(s) for s in seen] == sorted(order.index(s) for s in seen)
        assert status.state == "done", status.reason
        res = status.result
        assert res.request_id == "contract-3"
        x, y = res.pattern()
        assert x.shape == y.shape and len(x) == 1751
        assert x[0] == pytest.approx(5.0) and x[-1] == pytest.approx(40.0)
        assert y.max() > 10 * max(float(y.min()), 1.0) or res.outcome == "amorphous"
        assert 0.5 < res.properties["density_gcm3"] < 2.5
        assert lab.poll(ticket) == status  # terminal results are stable


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_cancel_before_done_and_unknown_ticket(name, tmp_path, monkeypatch):
    with FACTORIES[name](tmp_path, monkeypatch) as (lab, advance):
        ticket = lab.submit(_req(4, method="cooling", temperature_K=280.0))
        status = lab.cancel(ticket)
        assert status.state == "cancelled"
        assert lab.poll(ticket).state == "cancelled"
        if advance:
            advance(100.0)
        assert lab.poll(ticket).state == "cancelled"
        bogus = LabTicket("nope", "nope", ticket.adapter)
        with pytest.raises(UnknownTicketError):
            lab.poll(bogus)


def test_status_roundtrip_json():
    from agent.lab.base import LabResult

    st = LabStatus("done", LabResult("r", "crystalline", (5.0, 5.02), (1.0, 2.0), properties={"density_gcm3": 1.2}))
    assert LabStatus.from_dict(st.to_dict()) == st


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        ({"method": "boiling"}, "unknown method"),
        ({"method": "sublimation", "solvent": "water"}, "no solvent"),
        ({"solvent": None}, "needs a solvent"),
        ({"temperature_K": 5.0}, "outside"),
        ({"measure": ("nmr",)}, "unknown measurement"),
    ],
)
def test_bad_requests_are_one_line_errors(kwargs, msg):
    base = {"request_id": "x", "smiles": "C", "method": "slurry", "solvent": "water"}
    with pytest.raises(LabRequestError, match=msg) as err:
        LabRequest(**{**base, **kwargs})
    assert "\n" not in str(err.value)


def test_lab_modules_import_light():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import agent.lab, agent.lab.base, agent.lab.simulated, agent.lab.pxrd, agent.lab.identify, agent.lab.network\n"
        "import agent.lab.server, agent.lab.safety, agent.lab.cli, agent.lab.feedback, agent.lab.config\n"
        "import agent.lab.testing\n"
        "print([m for m in ('torch', 'ray', 'pymatgen', 'mlflow', 'rdkit', 'numpy', 'scipy', 'ase') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_lab_config_builds_adapters_and_rejects_secrets(tmp_path, monkeypatch):
    from pydantic import ValidationError

    from agent.lab.config import LabConfig, build_adapter
    from agent.lab.safety import GuardedAdapter
    from agent.lab.simulated import SimulatedLab

    with pytest.raises(ValidationError, match="CRYSTAL_AGENT_LAB_TOKEN"):
        LabConfig(adapter="network", params={"token": "abc"})
    with pytest.raises(ValidationError):
        LabConfig(auto_aprove=True)
    sim = build_adapter(LabConfig(landscape="x23"), tmp_path)
    assert isinstance(sim, SimulatedLab) and sim.health()["n_forms"]["*"] == 17
    monkeypatch.setenv("CRYSTAL_AGENT_LAB_TOKEN", TOKEN)
    net = build_adapter(LabConfig(adapter="network", daily_budget=3, params={"base_url": "http://127.0.0.1:9"}), tmp_path)
    assert isinstance(net, GuardedAdapter) and net.daily_budget == 3 and not net.auto_approve
    assert (tmp_path / "lab_approvals.sqlite").is_file()
    with pytest.raises(UnknownAdapterError):
        get_adapter("robot-arm")
    # an adapter measuring real crystals takes no landscape: a chosen one is refused
    with pytest.raises(ValidationError, match="'network' measures real crystals and takes no landscape"):
        LabConfig(adapter="network", landscape="x23", params={"base_url": "http://127.0.0.1:9"})
    assert LabConfig(adapter="network", params={"base_url": "http://127.0.0.1:9"}).landscape == "campaign"
