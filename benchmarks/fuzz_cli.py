"""Fuzzing the ``crystal-agent`` command line with a seeded corpus of bad inputs.

Every case of ``tests/fuzz_corpus.py`` (configs, pools, names, CLI arguments, damaged
stores, CSP arguments, PXRD pattern and CIF files for ``lab identify``; ~200 cases at the
default 30 per category) runs as a subprocess ``python -m agent.cli ...`` in a fresh
directory, under a timeout, and is classified:

* clean: non-zero exit, exactly one non-empty stderr line, no traceback;
* traceback: ``Traceback`` on stderr;
* hang: no answer within ``--timeout`` seconds (the process group is killed);
* exit 0: the bad input was accepted;
* multi-line: a non-zero exit with more than one stderr line (warnings, usage text);
* store left: a refused ``run`` left a campaign store or a half-built directory behind
  (counted besides the outcome);
* contract met: clean and no store left.

The baseline, measured in the same run on the same corpus, is the code at
``--baseline-rev`` (default: the commit before the CLI hardening), extracted with
``git archive`` into a temporary directory and put first on ``PYTHONPATH``. Controls
(valid inputs that must be accepted: ``backends``, ``--version``, ``status``, a one-
evaluation ``run``, a small CSP) check that the validation does not refuse good input.

Run:  OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/fuzz_cli.py
      [--seed 0] [--per-category 30] [--timeout 30] [--baseline-rev REV | --no-baseline]
      [--categories config,pool,...]
Output: a table, one JSON line, and benchmarks/results/fuzz_cli.json (non-default
arguments write benchmarks/results/fuzz_cli_<args>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fuzz_corpus import CATEGORIES, OWNER, GOOD_POOL, corpus, created_store, stores_left, write_campaign  # noqa: E402

BASELINE_REV = "4e731a4"  # main before the CLI/config/store hardening
OUTCOMES = ("clean", "traceback", "hang", "exit 0", "multi-line")


def run_cli(argv: list[str], code_root: Path, cwd: Path, timeout_s: float) -> tuple[int | None, str, float]:
    """``(exit code or None on timeout, stderr, wall s)`` of ``python -m agent.cli argv``."""
    env = {**os.environ, "PYTHONPATH": str(code_root), "OMP_NUM_THREADS": "1",
           "PYTHONWARNINGS": os.environ.get("PYTHONWARNINGS", "")}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", *argv], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout_s)
        return proc.returncode, err, time.perf_counter() - t0
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        return None, err, time.perf_counter() - t0


def classify(rc: int | None, err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if rc is None:
        return "hang"
    if "Traceback" in err:
        return "traceback"
    if rc == 0:
        return "exit 0"
    return "clean" if len(lines) == 1 else "multi-line"


def run_corpus(cases, code_root: Path, timeout_s: float, label: str) -> list[dict]:
    rows = []
    for i, case in enumerate(cases, 1):
        with tempfile.TemporaryDirectory(prefix="fuzz-") as d:
            tmp = Path(d)
            argv = case.make(tmp)
            rc, err, wall = run_cli(argv, code_root, tmp, timeout_s)
            left = bool(case.runs_command and stores_left(tmp))
        outcome = classify(rc, err)
        last = [ln for ln in err.splitlines() if ln.strip()][-1:] or [""]
        rows.append({"category": case.category, "label": case.label, "outcome": outcome,
                     "store_left": left, "rc": rc, "wall_s": round(wall, 2), "stderr_last": last[0][:200]})
        if outcome != "clean" or left:
            print(f"  [{label}] {case.category}: {case.label}: {outcome}"
                  f"{' + store left' if left else ''}: {last[0][:120]}", file=sys.stderr, flush=True)
        if i % 25 == 0:
            print(f"  [{label}] {i}/{len(cases)} cases", file=sys.stderr, flush=True)
    return rows


def summarise(rows: list[dict]) -> dict:
    out: dict = {}
    for cat in dict.fromkeys(r["category"] for r in rows):
        sub = [r for r in rows if r["category"] == cat]
        out[cat] = {"cases": len(sub), **{o: sum(r["outcome"] == o for r in sub) for o in OUTCOMES},
                    "stores left": sum(r["store_left"] for r in sub),
                    "contract met": sum(r["outcome"] == "clean" and not r["store_left"] for r in sub)}
    out["total"] = {k: sum(v[k] for v in out.values()) for k in ("cases", *OUTCOMES, "stores left", "contract met")}
    return out


def controls(code_root: Path, timeout_s: float) -> list[dict]:
    """Valid inputs that must be accepted (exit 0)."""
    specs = {
        "backends": lambda t: ["backends"],
        "--version": lambda t: ["--version"],
        "status": lambda t: (created_store(t), ["status", "f", "--runs-dir", str(t / "runs")])[1],
        "status --json": lambda t: (created_store(t), ["status", "f", "--runs-dir", str(t / "runs"), "--json"])[1],
        "run, 1 evaluation, pool with 2 invalid entries": lambda t: [
            "run", str(write_campaign(t, pool=GOOD_POOL + ["[Fe] iron", "C1CC broken"])),
            "--runs-dir", str(t / "runs"), "--quiet", "--max-evaluations", "1"],
        "csp C=O, 8 trials": lambda t: ["csp", "C=O", "--n-trials", "8", "--charges", "xtb",
                                        "--space-groups", "P-1", "--json"],
    }
    rows = []
    for label, make in specs.items():
        with tempfile.TemporaryDirectory(prefix="fuzz-ctl-") as d:
            rc, err, wall = run_cli(make(Path(d)), code_root, Path(d), max(timeout_s, 120.0))
        rows.append({"label": label, "accepted": rc == 0, "rc": rc, "wall_s": round(wall, 1),
                     "stderr_last": ([ln for ln in err.splitlines() if ln.strip()][-1:] or [""])[0][:200]})
    return rows


def print_table(title: str, summary: dict) -> None:
    cols = ("cases", *OUTCOMES, "stores left", "contract met")
    print(f"\n{title}")
    print(f"{'category':<10}" + "".join(f"{c:>13}" for c in cols) + "   fix owner")
    for cat, s in summary.items():
        owner = OWNER.get(cat, "helper D (CLI/config/store)") if cat != "total" else ""
        print(f"{cat:<10}" + "".join(f"{s[c]:>13}" for c in cols) + f"   {owner}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-category", type=int, default=30)
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per case")
    ap.add_argument("--baseline-rev", default=BASELINE_REV)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--categories", default=",".join(CATEGORIES))
    args = ap.parse_args()
    cats = tuple(c for c in args.categories.split(",") if c)
    unknown = set(cats) - set(CATEGORIES)
    if unknown or args.per_category < 1 or args.timeout <= 0:
        ap.error(f"bad arguments: categories {sorted(unknown)}, --per-category >= 1, --timeout > 0")
    cases = corpus(args.seed, args.per_category, cats)
    print(f"{len(cases)} cases, seed {args.seed}, timeout {args.timeout:g} s", file=sys.stderr)

    t0 = time.perf_counter()
    current = run_corpus(cases, ROOT, args.timeout, "current")
    current_wall = time.perf_counter() - t0
    ctl = controls(ROOT, args.timeout)
    baseline, baseline_wall = None, None
    if not args.no_baseline:
        old = Path(tempfile.mkdtemp(prefix="fuzz-baseline-"))
        try:
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline_rev],
                                     capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
            t0 = time.perf_counter()
            baseline = run_corpus(cases, old, args.timeout, f"baseline {args.baseline_rev}")
            baseline_wall = time.perf_counter() - t0
        finally:
            shutil.rmtree(old, ignore_errors=True)

    s_cur = summarise(current)
    print_table(f"current code: {len(cases)} bad inputs ({current_wall:.0f} s)", s_cur)
    s_base = None
    if baseline is not None:
        s_base = summarise(baseline)
        print_table(f"baseline {args.baseline_rev} (same corpus, {baseline_wall:.0f} s)", s_base)
    print("\ncontrols (valid input, must exit 0):")
    for c in ctl:
        print(f"  {'ok ' if c['accepted'] else 'NO '} {c['label']}  (exit {c['rc']}, {c['wall_s']} s)"
              + ("" if c["accepted"] else f": {c['stderr_last']}"))
    failing = [f"{r['category']}: {r['label']}: {r['outcome']}" + (" + store left" if r["store_left"] else "")
               for r in current if r["outcome"] != "clean" or r["store_left"]]
    result = {
        "benchmark": "fuzz_cli", "seed": args.seed, "per_category": args.per_category,
        "timeout_s": args.timeout, "n_cases": len(cases),
        "current": s_cur, "current_wall_s": round(current_wall, 1),
        "baseline_rev": None if baseline is None else args.baseline_rev, "baseline": s_base,
        "controls_accepted": sum(c["accepted"] for c in ctl), "controls": len(ctl),
        "current_failures": failing,
    }
    defaults = (args.seed == 0 and args.per_category == 30 and args.timeout == 30.0
                and args.baseline_rev == BASELINE_REV and not args.no_baseline
                and cats == CATEGORIES)
    name = "fuzz_cli" if defaults else "fuzz_cli_" + "_".join(
        f"{k}-{v}" for k, v in (("seed", args.seed), ("n", args.per_category), ("t", f"{args.timeout:g}"),
                                ("base", "none" if args.no_baseline else args.baseline_rev),
                                ("cats", "+".join(cats) if cats != CATEGORIES else "all")))
    out = ROOT / "benchmarks" / "results" / f"{name}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
