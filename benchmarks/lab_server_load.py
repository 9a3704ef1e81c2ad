"""Benchmark: the reference lab server under load and stalled clients, on 127.0.0.1 only.

Two servers are measured in the same run on the same landscape (4 X23 crystals):

* ``hardened``: :class:`agent.lab.server.LabServer` defaults (listen backlog 128,
  5 s socket timeout, bounded body and JSON nesting);
* ``stdlib`` (baseline): the same server with the ``http.server`` defaults, listen
  backlog 5 and no socket timeout.

For each: ``--n-ids`` experiments POSTed ``--n-copies`` times each, all released at
once (default 40 x 5 = 200 concurrent requests; idempotency must give one experiment
per request id), then ``--n-stalled`` clients that announce a body and never send it,
watched for ``--wait-s`` seconds (dropped vs still held, and whether ``/health`` is
answered meanwhile).

Run:  OMP_NUM_THREADS=1 python benchmarks/lab_server_load.py [--n-ids 40] [--n-copies 5] [--n-stalled 100] [--wait-s 12]
(the default run writes benchmarks/results/lab_server_load.json; other arguments
write lab_server_load_<args>.json).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

TOKEN = "load-benchmark-token"
SMILES = "O=C1CCC(=O)CC1"
DEFAULTS = {"n_ids": 40, "n_copies": 5, "n_stalled": 100, "wait_s": 12.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-ids", type=int, default=DEFAULTS["n_ids"], help="distinct experiments (1-400)")
    ap.add_argument("--n-copies", type=int, default=DEFAULTS["n_copies"], help="POSTs of each experiment (1-10)")
    ap.add_argument("--n-stalled", type=int, default=DEFAULTS["n_stalled"], help="stalled clients (1-300)")
    ap.add_argument("--wait-s", type=float, default=DEFAULTS["wait_s"], help="how long stalled clients are watched (1-60 s)")
    args = ap.parse_args()
    if not (1 <= args.n_ids <= 400 and 1 <= args.n_copies <= 10 and 1 <= args.n_stalled <= 300 and 1 <= args.wait_s <= 60):
        raise SystemExit("lab_server_load: --n-ids 1-400, --n-copies 1-10, --n-stalled 1-300, --wait-s 1-60")
    warnings.filterwarnings("ignore")  # pymatgen CIF rounding notices

    from rich.console import Console
    from rich.table import Table

    from agent.lab.loadtest import concurrent_submissions, stalled_clients
    from agent.lab.server import LabServer
    from agent.lab.testing import x23_landscape

    t_start = time.perf_counter()
    configs = {"hardened": {}, "stdlib": {"backlog": 5, "socket_timeout_s": None}}
    results = {}
    for name, kw in configs.items():
        with tempfile.TemporaryDirectory() as tmp:
            srv = LabServer(list(x23_landscape()), Path(tmp) / "lab.sqlite", TOKEN, host="127.0.0.1", port=0,
                            queue_delay_s=(0.0, 0.1), run_delay_s=(0.1, 0.3), **kw).start()
            try:
                load = concurrent_submissions(srv.host, srv.port, TOKEN, SMILES, n_ids=args.n_ids, n_copies=args.n_copies, prefix=name)
                n_experiments = srv.health()["n_experiments"]
                stall = stalled_clients(srv.host, srv.port, TOKEN, n=args.n_stalled, wait_s=args.wait_s)
            finally:
                srv.stop()
        results[name] = {**load, "n_experiments": n_experiments, "stalled": stall}

    table = Table(title=f"lab server on 127.0.0.1: {args.n_ids * args.n_copies} concurrent POSTs ({args.n_ids} ids x {args.n_copies}), "
                        f"{args.n_stalled} stalled clients watched {args.wait_s:g} s")
    for col in ("server", "answered", "transport errors", "201 / 200", "experiments", "idempotent", "burst wall (s)",
                "stalled dropped", "still held", "max drop (s)", "/health during stall"):
        table.add_column(col, justify="right")
    for name, r in results.items():
        errors = r["n_requests"] - r["n_answered"]
        st = r["stalled"]
        table.add_row(
            name, f"{r['n_answered']}/{r['n_requests']}", str(errors),
            f"{r['by_status'].get('201', 0)} / {r['by_status'].get('200', 0)}", str(r["n_experiments"]), str(r["idempotent"]),
            f"{r['wall_s']:.2f}", f"{st['dropped']}/{st['n']}", str(st["held"]),
            "-" if st["max_drop_s"] is None else f"{st['max_drop_s']:.1f}",
            f"{'yes' if st['health_ok'] else 'no'} ({st['health_s']:.2f} s)",
        )
    Console(width=200).print(table)
    h, b = results["hardened"], results["stdlib"]
    summary = {
        "benchmark": "lab_server_load",
        "n_concurrent": h["n_requests"],
        "answered": h["n_answered"],
        "transport_errors": h["n_requests"] - h["n_answered"],
        "idempotent": h["idempotent"],
        "experiments_created": h["n_experiments"],
        "n_ids": args.n_ids,
        "stalled_dropped": h["stalled"]["dropped"],
        "stalled_held": h["stalled"]["held"],
        "stalled_max_drop_s": h["stalled"]["max_drop_s"],
        "health_during_stall": h["stalled"]["health_ok"],
        "baseline_stdlib_answered": b["n_answered"],
        "baseline_stdlib_transport_errors": b["n_requests"] - b["n_answered"],
        "baseline_stdlib_stalled_held": b["stalled"]["held"],
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    line = json.dumps(summary)
    print(line)
    given = {"n_ids": args.n_ids, "n_copies": args.n_copies, "n_stalled": args.n_stalled, "wait_s": args.wait_s}
    suffix = "" if given == DEFAULTS else "_" + "_".join(f"{k}{v:g}" for k, v in given.items())
    out = Path(__file__).resolve().parent / "results" / f"lab_server_load{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(line + "\n")


if __name__ == "__main__":
    main()
