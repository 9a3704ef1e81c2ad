"""Soak test of the durable core: SIGKILL-and-resume cycles, then fault injection.

Part 1 runs a small campaign on the internal ``_faulty`` backend (real Ray workers, real
store; each task burns ``--burn-s`` CPU seconds) through the CLI and SIGKILLs it
``--cycles`` times, then resumes it to the end. Kills alternate between the whole
process group (launcher and its Ray processes: a ``kill -9`` of the job) and the
launcher alone (as the OOM killer would); each lands either at a random moment after
launch (often during Ray start-up or a resume) or right after a new result. After every
kill the store is checked: results lost (a stored request id gone), duplicated (a
(molecule, level) pair stored twice), corrupt (integrity check, unparsable values),
and the killed launcher's Ray processes still alive ``--orphan-wait-s`` later.
The baseline, measured in the same run, is the same campaign run once without kills.

Part 2 runs a fault-injection campaign: ``_faulty`` raises, crashes its worker
(``os._exit``) or hangs on chosen fractions of tasks (a deterministic function of the
SMILES), with a short task timeout. Printed: completion against the budget and the
recorded failures by kind, compared with the faults the backend injects for the
molecules evaluated (a failure recorded as the wrong kind, or a fault not recorded, is
a mismatch).

    .venv/bin/python benchmarks/soak.py                 # 20 cycles, ~5-10 min on 2 cores
    .venv/bin/python benchmarks/soak.py --cycles 5      # writes results/soak_cycles5.json

Ends with one JSON line ``{"benchmark": "soak", ...}``, also written to
``benchmarks/results/soak.json`` (a run with non-default arguments writes
``soak_<args>.json`` instead).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from agent.executor import alive, ray_descendants  # noqa: E402
RESULTS = ROOT / "benchmarks" / "results"
DEFAULTS = {"cycles": 20, "evaluations": 60, "burn_s": 0.1, "seed": 0, "orphan_wait_s": 15.0,
            "fault_evaluations": 40}

CAMPAIGN = """name = "{name}"
pool = "pool.smi"
objective = "n_heavy_atoms"
batch_size = 2
seed = {seed}
max_evaluations = {n}
[surrogate]
n_initial = 4
[tracking]
enabled = false
[executor]
num_cpus = 2
task_timeout_s = {timeout}
max_retries = 1
[[backends]]
name = "_faulty"
params = {params}
"""


def _pool(n: int) -> list[str]:
    """``n`` distinct small molecules (alkanes, alcohols, amines, nitriles, ...)."""
    out = []
    for i in range(1, 40):
        for tail in ("", "O", "N", "C#N", "C=O", "Cl", "F", "S"):
            out.append("C" * i + tail)
    return out[:n]


def _write(d: Path, name: str, n: int, params: str, seed: int, timeout: float = 120.0) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "pool.smi").write_text("\n".join(_pool(max(2 * n, 40))) + "\n")
    cfg = d / f"{name}.toml"
    cfg.write_text(CAMPAIGN.format(name=name, seed=seed, n=n, params=params, timeout=timeout))
    return cfg


def _launch(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "agent.cli", *args, "--quiet"], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                            start_new_session=True)


def _rows(db: Path) -> list[tuple]:
    if not db.exists():
        return []
    with sqlite3.connect(db, timeout=30) as c:
        try:
            return c.execute("SELECT request_id, molecule_id, backend, values_json, status "
                             "FROM evaluations").fetchall()
        except sqlite3.OperationalError:
            return []


def _check(db: Path) -> tuple[bool, int]:
    """(integrity ok, unparsable value records)."""
    with sqlite3.connect(db, timeout=30) as c:
        ok = c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    bad = 0
    for r in _rows(db):
        try:
            json.loads(r[3])
        except ValueError:
            bad += 1
    return ok, bad


def soak(work: Path, a: argparse.Namespace) -> dict:
    rng = random.Random(a.seed)
    params = f"{{ burn_s = {a.burn_s}, sleep_s = 0.2 }}"
    # baseline: the same campaign without kills
    cfg = _write(work, "clean", a.evaluations, params, a.seed)
    t0 = time.perf_counter()
    p = _launch(["run", str(cfg), "--runs-dir", str(work / "runs")], work)
    _, err = p.communicate()
    base_wall = time.perf_counter() - t0
    base_rows = _rows(work / "runs" / "clean" / "store.sqlite")
    baseline = {"returncode": p.returncode, "n_results": len(base_rows),
                "wall_s": round(base_wall, 1)}

    cfg = _write(work, "soak", a.evaluations, params, a.seed)
    db = work / "runs" / "soak" / "store.sqlite"
    seen: dict[str, tuple] = {}
    cycles = []
    t_soak = time.perf_counter()
    for k in range(a.cycles):
        first = not db.exists()
        cmd = (["run", str(cfg)] if first else ["resume", "soak"]) + ["--runs-dir", str(work / "runs")]
        n0 = len(_rows(db))
        proc = _launch(cmd, work)
        whole_group = k % 2 == 0
        after_result = k % 4 in (1, 2)
        deadline = time.time() + (120 if after_result else rng.uniform(0.5, 8.0))
        tree: dict[int, str] = {}
        while time.time() < deadline and proc.poll() is None:
            tree.update(ray_descendants(proc.pid))
            if after_result and len(_rows(db)) > n0:
                break
            time.sleep(0.1)
        tree.update(ray_descendants(proc.pid))
        finished = proc.poll() is not None
        if not finished:
            if whole_group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        t_kill = time.time()
        while alive(tree) and time.time() - t_kill < a.orphan_wait_s:
            time.sleep(0.25)
        orphans = alive(tree)
        for pid in orphans:  # do not let them disturb the next cycle
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        rows = _rows(db)
        now = {r[0]: r for r in rows}
        lost = sum(1 for rid in seen if rid not in now)
        pairs = [(r[1], r[2]) for r in rows]
        dup = len(pairs) - len(set(pairs))
        ok, bad = _check(db) if db.exists() else (True, 0)
        seen.update(now)
        cycles.append({"cycle": k + 1, "kill": "group" if whole_group else "launcher",
                       "when": "after a result" if after_result else "random",
                       "finished_before_kill": finished, "n_results": len(rows),
                       "new": len(rows) - n0, "lost": lost, "duplicated": dup,
                       "corrupt": int(not ok) + bad, "ray_processes": len(tree),
                       "orphans": len(orphans)})
        print(f"  cycle {k + 1:2d}: kill {cycles[-1]['kill']:8s} ({cycles[-1]['when']:14s}) "
              f"results {len(rows):3d} (+{len(rows) - n0}) lost {lost} dup {dup} "
              f"corrupt {cycles[-1]['corrupt']} orphans {len(orphans)}/{len(tree)}", flush=True)
    final = _launch(["resume", "soak", "--runs-dir", str(work / "runs")], work)
    _, ferr = final.communicate()
    rows = _rows(db)
    pairs = [(r[1], r[2]) for r in rows]
    ok, bad = _check(db)
    return {
        "baseline": baseline,
        "cycles": cycles,
        "final": {"returncode": final.returncode, "n_results": len(rows),
                  "lost": sum(1 for rid in seen if rid not in {r[0] for r in rows}),
                  "duplicated": len(pairs) - len(set(pairs)), "corrupt": int(not ok) + bad,
                  "stderr_tail": ferr.decode(errors="replace")[-300:] if final.returncode else ""},
        "soak_wall_s": round(time.perf_counter() - t_soak, 1),
    }


def faults(work: Path, a: argparse.Namespace) -> dict:
    from sim_backends.faulty import fault_of

    fp = {"raise_fraction": 0.2, "crash_fraction": 0.1, "hang_fraction": 0.05, "seed": a.seed,
          "burn_s": a.burn_s}
    params = "{ " + ", ".join(f"{k} = {v}" for k, v in fp.items()) + " }"
    cfg = _write(work, "faults", a.fault_evaluations, params, a.seed, timeout=10.0)
    t0 = time.perf_counter()
    p = _launch(["run", str(cfg), "--runs-dir", str(work / "runs")], work)
    _, err = p.communicate()
    wall = time.perf_counter() - t0
    db = work / "runs" / "faults" / "store.sqlite"
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT m.smiles, e.status, e.reason, e.n_attempts, e.cpu_s, e.wall_s "
                         "FROM evaluations e JOIN molecules m ON m.id = e.molecule_id").fetchall()
    kind_of = {"error:": "raise", "worker died": "crash", "timeout": "hang"}
    recorded = {"raise": 0, "crash": 0, "hang": 0, "ok": 0, "other": 0}
    injected = {"raise": 0, "crash": 0, "hang": 0, "ok": 0}
    mismatches = []
    for smi, status, reason, n_att, _, _ in rows:
        want = fault_of(smi, fp)
        injected[want] += 1
        got = "ok" if status == "ok" else next(
            (v for k, v in kind_of.items() if reason.startswith(k)), "other")
        recorded[got] += 1
        if got != want:
            mismatches.append({"smiles": smi, "injected": want, "recorded": got, "reason": reason[:120]})
    stderr_lines = err.decode(errors="replace").strip().splitlines()
    return {"returncode": p.returncode, "budget": a.fault_evaluations, "n_results": len(rows),
            "injected": injected, "recorded": recorded, "mismatches": mismatches,
            "stderr_lines": len(stderr_lines),
            "stderr_not_one_line_notices": [ln[:200] for ln in stderr_lines
                                            if not ln.startswith("crystal-agent: ")][:5],
            "cpu_s": round(sum(r[4] for r in rows), 1), "wall_s": round(wall, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cycles", type=int, default=DEFAULTS["cycles"])
    ap.add_argument("--evaluations", type=int, default=DEFAULTS["evaluations"])
    ap.add_argument("--burn-s", type=float, default=DEFAULTS["burn_s"])
    ap.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    ap.add_argument("--orphan-wait-s", type=float, default=DEFAULTS["orphan_wait_s"])
    ap.add_argument("--fault-evaluations", type=int, default=DEFAULTS["fault_evaluations"])
    a = ap.parse_args()
    if a.cycles < 1 or a.evaluations < 2 or a.fault_evaluations < 1 or a.burn_s < 0 or a.seed < 0:
        ap.error("cycles, evaluations and fault-evaluations must be positive, burn-s and seed >= 0")
    changed = {k: v for k, v in vars(a).items() if v != DEFAULTS[k]}
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        work = Path(tmp)
        print(f"soak: {a.cycles} SIGKILL-and-resume cycles of a {a.evaluations}-evaluation "
              f"_faulty campaign ({a.burn_s:g} CPU s + 0.2 s sleep per task, 2 Ray workers)",
              flush=True)
        s = soak(work, a)
        print(f"fault injection: {a.fault_evaluations}-evaluation campaign, 20 % raise, "
              "10 % crash (os._exit), 5 % hang (10 s task timeout)", flush=True)
        f = faults(work, a)
    kills = s["cycles"]
    tot = {k: sum(c[k] for c in kills) for k in ("lost", "duplicated", "corrupt", "orphans")}
    launcher_only = [c for c in kills if c["kill"] == "launcher" and not c["finished_before_kill"]]
    print()
    print(f"{'run':34s} {'results':>8s} {'lost':>5s} {'dup':>4s} {'corrupt':>8s} {'orphans':>8s} {'wall s':>7s}")
    b = s["baseline"]
    print(f"{'baseline: no kills':34s} {b['n_results']:>8d} {'-':>5s} {'-':>4s} {'-':>8s} {'-':>8s} {b['wall_s']:>7.1f}")
    fin = s["final"]
    print(f"{f'soak: {len(kills)} kills + final resume':34s} {fin['n_results']:>8d} "
          f"{tot['lost'] + fin['lost']:>5d} {fin['duplicated']:>4d} {tot['corrupt'] + fin['corrupt']:>8d} "
          f"{tot['orphans']:>8d} {s['soak_wall_s']:>7.1f}")
    print(f"  kills of the launcher alone: {len(launcher_only)}, Ray processes left "
          f"{a.orphan_wait_s:g} s later: {sum(c['orphans'] for c in launcher_only)}")
    print()
    print(f"{'fault injection':16s} {'raise':>6s} {'crash':>6s} {'hang':>6s} {'ok':>4s}")
    print(f"{'injected':16s} " + " ".join(f"{f['injected'][k]:>6d}" for k in ("raise", "crash", "hang"))
          + f" {f['injected']['ok']:>4d}")
    print(f"{'recorded':16s} " + " ".join(f"{f['recorded'][k]:>6d}" for k in ("raise", "crash", "hang"))
          + f" {f['recorded']['ok']:>4d}")
    print(f"  completed {f['n_results']} / {f['budget']} (exit {f['returncode']}), "
          f"{len(f['mismatches'])} mismatches, CPU {f['cpu_s']} s (charged in the workers; "
          f"crashed and hung tasks at 1 CPU x wall), wall {f['wall_s']} s, "
          f"{f['stderr_lines']} stderr lines ({len(f['stderr_not_one_line_notices'])} not one-line notices)")
    summary = {
        "benchmark": "soak", "args": vars(a),
        "baseline_results": b["n_results"], "baseline_wall_s": b["wall_s"],
        "kills": len(kills), "kills_launcher_only": len(launcher_only),
        "final_results": fin["n_results"], "final_returncode": fin["returncode"],
        "lost": tot["lost"] + fin["lost"], "duplicated": fin["duplicated"],
        "corrupt": tot["corrupt"] + fin["corrupt"], "orphaned_ray_processes": tot["orphans"],
        "fault_completed": f["n_results"], "fault_budget": f["budget"],
        "fault_injected": f["injected"], "fault_recorded": f["recorded"],
        "fault_mismatches": len(f["mismatches"]), "fault_returncode": f["returncode"],
        "fault_stderr_other_lines": len(f["stderr_not_one_line_notices"]),
        "cycles": kills, "mismatch_examples": f["mismatches"][:5],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = "_".join(f"{k.replace('_', '-')}{v}" for k, v in sorted(changed.items()))
    (RESULTS / (f"soak_{tag}.json" if tag else "soak.json")).write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("cycles", "mismatch_examples")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
