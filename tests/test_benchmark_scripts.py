"""Every benchmark script must at least start: ``--help`` exits 0 (imports resolve, the
argument parser builds). Catches a benchmark left importing a helper that was moved or
removed, which nothing else runs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", BENCHMARKS, ids=[p.stem for p in BENCHMARKS])
def test_benchmark_help(script: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                         timeout=300, env=env, cwd=script.parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage:" in out.stdout
