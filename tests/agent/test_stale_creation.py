"""A campaign creation killed with SIGKILL before its rename leaves a hidden
``.NAME.creating-*`` folder; the next creation in the same runs directory removes it once
it is a minute old, and never one that is younger or whose creation is still running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from agent.campaign import Campaign
from agent.config import load_config
from conftest import write_config

POOL = ["C=C", "c1ccoc1", "c1ccsc1"]
BODY = """
objective = "reorg_energy_kjmol"
max_evaluations = 5
[tracking]
enabled = false
[[backends]]
name = "xtb-reorg"
"""
# a creation held in the middle of building its store (the state a SIGKILL finds it in)
HELD_CREATION = """
import sys, time
from agent.campaign import Campaign
from agent.config import load_config
from agent.store import Store

def held(self, rows):
    print("building", flush=True)
    time.sleep(600)

Store.add_molecules = held
Campaign.create(load_config(sys.argv[1]), sys.argv[2])
"""


def _create(tmp_path, runs, name):
    d = tmp_path / name
    d.mkdir()
    Campaign.create(load_config(write_config(d, POOL, BODY, name=name)), runs).close()


def test_stale_creation_folder_removed_by_the_next_creation(tmp_path):
    runs = tmp_path / "runs"
    (tmp_path / "killed").mkdir()
    cfg = write_config(tmp_path / "killed", POOL, BODY, name="killed")
    proc = subprocess.Popen([sys.executable, "-c", HELD_CREATION, str(cfg), str(runs)],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "building"
        (held,) = runs.glob(".killed.creating-*")
        old = time.time() - 120
        os.utime(held, (old, old))
        _create(tmp_path, runs, "second")  # the creation still runs: its folder stays
        assert held.is_dir()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert held.is_dir() and (held / "store.sqlite").exists(), "SIGKILL should leave the folder"
    young = runs / ".other.creating-0123456789ab"
    young.mkdir()
    _create(tmp_path, runs, "third")
    assert not held.exists(), "a stale, unlocked creation folder was kept"
    assert young.is_dir(), "a creation folder younger than a minute was removed"
    assert (runs / "second" / "store.sqlite").exists() and (runs / "third" / "store.sqlite").exists()
