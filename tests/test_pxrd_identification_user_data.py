"""benchmarks/pxrd_identification.py on a landscape a user brings (--landscape DIR): the
benchmark ran only on the three shipped landscapes, so a reviewer could not measure the
identification on another CSP landscape."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "pxrd_identification.py"


def _run(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600,
                          env=env, cwd=cwd)


def test_identification_on_a_cif_folder_writes_its_own_result(tmp_path):
    cifs = tmp_path / "mine"
    cifs.mkdir()
    for name in ("urea", "benzene", "naphthalene", "pyrazine", "formamide", "succinic_acid"):
        shutil.copy(ROOT / "data" / "reference" / "x23" / "cif" / f"{name}.cif", cifs)
    out = _run("--landscape", str(cifs), "--n-truth", "2", "--n-checks", "0", "--out", str(tmp_path), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["landscapes"] == {"mine": {"n_structures": 6, "n_patterns": 2}}
    assert 0.0 <= summary["top1_all"] <= 1.0
    (written,) = tmp_path.glob("pxrd_identification*.json")
    assert written.name == "pxrd_identification_n2_c0_s0_mine.json"


def test_a_bad_landscape_is_one_line(tmp_path):
    out = _run("--landscape", str(tmp_path / "missing"), "--n-truth", "2", cwd=tmp_path)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [f"pxrd_identification: error: landscape directory not found: "
                                                f"{tmp_path / 'missing'}"]
    few = tmp_path / "few"
    few.mkdir()
    shutil.copy(ROOT / "data" / "reference" / "x23" / "cif" / "urea.cif", few)
    out = _run("--landscape", str(few), "--n-truth", "2", cwd=tmp_path)
    assert out.returncode != 0 and "at least 5 are needed" in out.stderr and "Traceback" not in out.stderr
