"""Shared fixtures: tiny pools and configs written to tmp dirs; Ray started once per
session for the tests that use it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def write_config(tmp: Path, pool_lines: list[str], body: str, name: str = "t") -> Path:
    """Write ``pool.smi`` and ``campaign.toml`` (``body`` appended) into ``tmp``."""
    (tmp / "pool.smi").write_text("\n".join(pool_lines) + "\n")
    cfg = tmp / "campaign.toml"
    cfg.write_text(f'name = "{name}"\npool = "pool.smi"\n' + body)
    return cfg


def cli(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None):
    """Run the installed console entry point in a subprocess."""
    import subprocess

    e = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env=e,
    )


@pytest.fixture(scope="session")
def ray_local():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 object_store_memory=256 * 1024**2, logging_level="ERROR")
    yield
    ray.shutdown()
