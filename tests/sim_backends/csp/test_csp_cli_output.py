"""What ``crystal-agent csp`` prints and writes besides the landscape (newuser44a #5-#8):
plain progress lines when stderr is not a terminal, the replacing (or refusal) of a landscape
already in ``--out``, the CPU seconds of the run, the global minimum in ``landscape.png``."""

from __future__ import annotations

import json
import time

import matplotlib

from conftest import ROOT

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ARGS = ["--n-trials", "4", "--space-groups", "P-1", "--charges", "xtb", "--sampling", "fixed"]


def test_plain_progress_lines_when_stderr_is_not_a_terminal(capsys, monkeypatch):
    """#5: a 14-minute run under nohup was silent (progress only on a terminal). Now a plain
    line on stderr (trials of the budget, converged minima, elapsed), and --json stays pure
    JSON on stdout."""
    from agent.cli import main
    from sim_backends.csp.cli import PlainProgress

    monkeypatch.setattr(PlainProgress, "every_s", 0.0)  # every unit: the 2 units below
    assert main(["csp", "C=O", "--n-trials", "4", "--space-groups", "P-1,P2_1", "--charges", "xtb",
                 "--sampling", "fixed", "--json"]) == 0
    captured = capsys.readouterr()
    json.loads(captured.out)  # nothing else on stdout
    lines = [ln for ln in captured.err.splitlines() if ln.startswith("csp: ")]
    assert len(lines) >= 2, captured.err
    assert lines[0].startswith("csp: 2 of at most 4 trials minimised, ")
    assert lines[-1].startswith("csp: 4 of at most 4 trials minimised, ")
    assert "converged minima (before duplicate removal)" in lines[-1] and lines[-1].endswith(" elapsed")


def test_plain_progress_is_rate_limited():
    import io

    import numpy as np

    from sim_backends.csp.cli import PlainProgress
    from sim_backends.executor import InProcessExecutor

    def unit(k):
        return {"energy_kjmol": np.zeros(3), "converged": np.array([True, True, False]), "n_generated": 3}

    stream = io.StringIO()
    plain = PlainProgress(InProcessExecutor(), 30, time.monotonic(), stream=stream)
    assert plain.n_workers == 1
    assert len(list(plain.map_unordered(unit, [(k,) for k in range(10)]))) == 10
    assert stream.getvalue().count("\n") == 1  # the first unit's line; the rest within 10 s
    plain.finish()
    last = stream.getvalue().splitlines()[-1]
    assert last.startswith("csp: 30 of at most 30 trials minimised, 20 converged minima")
    plain.finish()
    assert stream.getvalue().count("\n") == 2  # nothing new: no line


def test_out_holding_a_landscape_is_replaced_with_a_line_and_another_molecules_refused(capsys, tmp_path):
    """#6: --out into a folder holding imidazole's landscape replaced it by benzene's, silently."""
    from agent.cli import main

    out = tmp_path / "o"
    assert main(["csp", "C=O", *ARGS, "--out", str(out)]) == 0
    assert "replacing" not in capsys.readouterr().err
    n = sum(1 for _ in open(out / "landscape.csv")) - 1
    # the same molecule (another spelling): replaced, with one line
    assert main(["csp", "O=C", *ARGS, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"replacing the landscape of C=O ({n} structures) in {out}" in err
    # another molecule: refused in one line, nothing touched
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(["csp", "O=C=O", *ARGS, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"holds the landscape of C=O ({n} structures), not of O=C=O" in err
    assert "give --overwrite to replace it" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    smi = tmp_path / "co2.smi"
    smi.write_text("# a pool file\nO=C=O carbon dioxide\n")
    assert main(["csp", str(smi), *ARGS, "--out", str(out)]) == 2  # a file's molecule too
    assert f"holds the landscape of C=O ({n} structures), not of {smi}" in capsys.readouterr().err
    assert main(["csp", "not-a-smiles", *ARGS, "--out", str(out)]) == 2  # the input's own error first
    assert "holds the landscape" not in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # with --overwrite: replaced
    assert main(["csp", "O=C=O", *ARGS, "--out", str(out), "--overwrite"]) == 0
    assert "replacing the landscape of C=O" in capsys.readouterr().err
    assert json.loads((out / "run.json").read_text())["smiles"] == "O=C=O"


def test_overwrite_is_in_the_help(capsys):
    from agent.cli import main

    assert main(["csp", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--overwrite" in text and "another molecule is refused unless --overwrite" in text


def test_cpu_seconds_in_the_title_and_run_json(capsys, tmp_path):
    """#7: only wall time was printed, and run.json's CPU figures left out the main process's
    dedupe and writing. The title gives the command's CPU seconds, run.json cpu_s_total, which
    covers at least what the workers record and at most this process's CPU in the meantime."""
    import os

    from agent.cli import main

    t0 = os.times()
    assert main(["csp", "C=O", *ARGS, "--out", str(tmp_path / "o")]) == 0
    t1 = os.times()
    out = capsys.readouterr().out
    meta = json.loads((tmp_path / "o" / "run.json").read_text())
    cpu = meta["cpu_s_total"]
    assert f"s wall, {cpu:.0f} CPU s)" in " ".join(out.split())
    assert meta["trials_cpu_s"] + meta["minimise_cpu_s"] <= cpu <= (t1.user + t1.system) - (t0.user + t0.system) + 0.05
    assert meta["wall_s_total"] >= meta["wall_s"]


def test_cpu_seconds_add_the_workers_when_they_run_elsewhere():
    import os

    from sim_backends.csp.cli import command_cpu_s, workers_cpu_s

    meta = {"trials_cpu_s": 10.0, "minimise_cpu_s": 100.0}
    assert workers_cpu_s(meta) == 110.0 and workers_cpu_s({"flexible": True, "search_cpu_s": 7.0}) == 7.0
    start = os.times()
    assert 110.0 <= command_cpu_s(start, meta, in_process=False) < 111.0
    assert command_cpu_s(start, meta, in_process=True) < 1.0  # in this process: counted in its own CPU


def test_global_minimum_always_has_its_legend_entry_and_a_label():
    """#8: acetic acid's global minimum (Pnma) was a grey "other" point: Pnma was not among the
    nine most populous groups."""
    from pymatgen.core import Structure

    from sim_backends.landscape import MAX_LEGEND_GROUPS, Landscape, LandscapeEntry

    st = Structure.from_file(ROOT / "data/reference/x23/cif/co2.cif")
    groups = ["P2_1/c", "P-1", "C2/c", "P2_1", "P1", "Cc", "C2", "Pbca", "Pna2_1", "P2_12_12_1", "Pca2_1"]
    assert len(groups) > MAX_LEGEND_GROUPS + 1
    minima = [LandscapeEntry("m0001", -40.0, 1.6, "Pnma", 62, "P2_1/c", 4, 1, st)]
    minima += [LandscapeEntry(f"m{k + 2:04d}", -30.0 + 0.1 * k, 1.5, groups[k % len(groups)], 14, "P2_1/c", 4, 1, st)
               for k in range(3 * len(groups))]
    fig = Landscape("O=C=O", minima, levels={"ff": "W99"}).figure()
    try:
        ax = fig.axes[0]
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert "Pnma (1)" in labels and len(labels) == MAX_LEGEND_GROUPS + 1  # + "other"
        assert labels[-1].startswith("other (")
        assert "m0001 Pnma" in [t.get_text() for t in ax.texts]
        assert sum(len(c.get_offsets()) for c in ax.collections) == len(minima)
    finally:
        plt.close(fig)


def test_z_prime_legend_is_written_as_fractions_as_in_the_tables():
    """newuser46a #10: the tables print Z' = 1/2, 1/4, the landscape.png legend printed 0.5, 0.25."""
    from pymatgen.core import Structure

    from matplotlib.legend import Legend
    from sim_backends.landscape import Landscape, LandscapeEntry

    st = Structure.from_file(ROOT / "data/reference/x23/cif/co2.cif")
    zps = [1.0, 0.5, 0.25, 2.0, 0.5]
    minima = [LandscapeEntry(f"m{k + 1:04d}", -40.0 + k, 1.6, "P2_1/c", 14, "P2_1/c", 4, 1, st, z_prime=zp)
              for k, zp in enumerate(zps)]
    fig = Landscape("O=C=O", minima, levels={"ff": "W99"}).figure()
    try:
        texts = [t.get_text() for leg in fig.axes[0].findobj(Legend) for t in leg.get_texts()]
        assert {"Z' = 1/4 (1)", "Z' = 1/2 (2)", "Z' = 1 (1)", "Z' = 2 (1)"} <= set(texts), texts
        assert not [t for t in texts if "0.5" in t or "0.25" in t]
    finally:
        plt.close(fig)
