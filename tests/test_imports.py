"""Importing the packages and listing backends must not load heavy libraries."""

import subprocess
import sys

HEAVY = ["torch", "ray", "pyscf", "mlflow", "rdkit", "pymatgen", "tblite", "botorch", "gpytorch", "phonopy"]


def test_light_imports():
    code = (
        "import sys, importlib, pkgutil, agent, sim_backends\n"
        "import agent.config, agent.store, agent.campaign, agent.cli, agent.executor, agent.runner\n"
        "import agent.tracking, agent.report, sim_backends.base, sim_backends.registry\n"
        "from sim_backends.registry import available, backend_class\n"
        "[backend_class(n) for n in available()]\n"
        "agent.cli.build_parser()\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
