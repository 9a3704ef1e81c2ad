"""A campaign resumed after a backend's version changed (its results would differ: the ESF
levels' version 2 shifts lambda+) says so in one line per backend: the old results stay in
the campaign and its models (review of stop 48)."""

from __future__ import annotations

import sqlite3
import tomllib

from agent.campaign import Campaign
from agent.config import parse_config
from agent.local_executor import LocalExecutor
from agent.runner import run_campaign


def test_stored_results_of_another_version_are_named(tmp_path):
    from sim_backends.esf import EsfProxyBackend, esf_records

    pool = list(esf_records("proxy").items())[:2]
    (tmp_path / "pool.smi").write_text("".join(f"{s} {r['name'].replace(' ', '_')}\n" for s, r in pool))
    cfg = parse_config(tomllib.loads(
        'name = "v"\npool = "pool.smi"\nobjective = "reorg_energy_kjmol"\nmax_evaluations = 2\nbatch_size = 1\n'
        '[surrogate]\nn_initial = 2\n[tracking]\nenabled = false\n[[backends]]\nname = "esf-proxy"\n'),
        base_dir=tmp_path)
    with Campaign.create(cfg, tmp_path / "runs") as camp:
        run_campaign(camp, tmp_path / "runs", executor=LocalExecutor(slots=1), progress=False)
        assert camp.store.backend_versions() == {("esf-proxy", EsfProxyBackend.version): 2}
        assert camp.version_warnings() == []
    with sqlite3.connect(tmp_path / "runs" / "v" / "store.sqlite") as db:
        db.execute("UPDATE evaluations SET backend_version = '1' WHERE id = (SELECT MIN(id) FROM evaluations)")
    with Campaign.open("v", tmp_path / "runs", readonly=True) as camp:
        lines = camp.version_warnings()
    assert lines == [f"1 stored result of esf-proxy made by its version 1, this code's is "
                     f"{EsfProxyBackend.version} (their values may differ from new ones); they stay in the campaign "
                     "and its models: start a new campaign for results of one version"]
