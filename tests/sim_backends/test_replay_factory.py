"""The replays of stored molecule-level results (sim_backends.replay.RecordedReplay, made
per level by replay_backend): registered by name, charged the recorded CPU seconds, and
priced with the real level's estimate built once per instance."""

import pytest

from sim_backends.base import EvalInput

REPLAYS = {"replay-xtb-reorg": "xtb-reorg", "replay-dft-reorg": "dft-reorg",
           "replay-esf-proxy": "esf-proxy", "replay-esf-quick": "esf-landscape",
           "replay-esf-refined": "esf-refined"}
SMILES = ["c1ccsc1", "c1ccccc1", "c1ccc2ccccc2c1", "c1ccncc1", "N#Cc1ccc(C#N)cc1"]


@pytest.mark.parametrize("name", sorted(REPLAYS))
def test_replay_is_registered_and_prices_with_the_real_level_built_once(name, monkeypatch):
    import sim_backends.registry as registry
    from sim_backends.replay import RecordedReplay

    cls = registry.backend_class(name)
    module, _, attr = registry.BUILTIN[name].partition(":")
    assert issubclass(cls, RecordedReplay) and cls.__module__ == module and cls.__qualname__ == attr
    assert cls.name == name and cls.internal and cls.estimated_as == REPLAYS[name]
    replay = registry.get_backend(name)
    real = registry.get_backend
    looked_up = []
    monkeypatch.setattr(registry, "get_backend", lambda n, **p: looked_up.append(n) or real(n, **p))
    estimates = [replay.cost_estimate(EvalInput(s)) for s in SMILES]
    assert looked_up == [REPLAYS[name]]  # one lookup (an entry-point scan, ~30 ms) per instance
    direct = real(REPLAYS[name], **cls.estimated_params)
    assert estimates == pytest.approx([direct.cost_estimate(EvalInput(s)) for s in SMILES])


def test_replays_charge_the_recorded_cpu_seconds():
    """A replayed result costs what the stored calculation cost, not the lookup's CPU."""
    import json

    from sim_backends.esf import ESF_DATA, record_cpu_s
    from sim_backends.registry import get_backend

    naphthalene = get_backend("replay-dft-reorg").evaluate(EvalInput("c1ccc2ccccc2c1"))
    assert naphthalene.ok and naphthalene.cpu_s == naphthalene.wall_s == pytest.approx(300.257)
    rec = json.loads((ESF_DATA / "esf_quick.jsonl").read_text().splitlines()[0])
    quick = get_backend("replay-esf-quick").evaluate(EvalInput(rec["smiles"]))
    assert quick.cpu_s == quick.wall_s == pytest.approx(record_cpu_s(rec))
    missing = get_backend("replay-esf-quick").evaluate(EvalInput("CCCCCCCCO"))
    assert not missing.ok and missing.reason.startswith("setup: no stored quick ESF result")
