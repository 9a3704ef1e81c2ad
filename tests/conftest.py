"""Shared fixtures: tiny pools and configs written to tmp dirs; Ray started once per
test process for the tests that use it; an MLflow SQLite store created (all migrations
run) once per session, shared by the pytest-xdist workers of ``make test-fast``, and
copied for tests that do not test the first-run creation."""

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
    """An embedded Ray of this test process (never a cluster a `ray start` left running;
    each pytest-xdist worker that needs one starts its own)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 object_store_memory=256 * 1024**2, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def mlflow_db_template(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store with every migration applied, made once per session
    (once for all pytest-xdist workers: in their shared base directory, under a lock)."""
    from filelock import FileLock
    from mlflow.tracking import MlflowClient

    if os.environ.get("PYTEST_XDIST_WORKER"):
        folder = tmp_path_factory.getbasetemp().parent / "mlflow_template"
        folder.mkdir(exist_ok=True)
    else:
        folder = tmp_path_factory.mktemp("mlflow_template")
    db = folder / "mlflow.db"
    with FileLock(str(folder / "mlflow.db.lock")):
        if not db.exists():
            tmp = folder / "mlflow.db.part"
            tmp.unlink(missing_ok=True)
            MlflowClient(f"sqlite:///{tmp}").search_experiments()  # creates the tables, runs migrations
            tmp.rename(db)
    return db


@pytest.fixture
def premigrated_mlflow(mlflow_db_template):
    """``put(runs_dir)``: copy the migrated empty store to ``runs_dir/mlflow.db`` (the
    default tracking URI), so a test's tracker skips MLflow's table creation."""
    import shutil

    def put(runs_dir: Path) -> Path:
        runs_dir.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copyfile(mlflow_db_template, runs_dir / "mlflow.db"))

    return put
