"""``crystal-agent lab ...``: identify PXRD patterns, serve the reference lab, approve requests.

Wired into :mod:`agent.cli` through :func:`add_lab_parser`; every subcommand is run by
:func:`run_lab_command`, which prints errors as one line on stderr and returns 2.

Examples::

    crystal-agent lab identify measured.xy --structures cifs/ --json
    CRYSTAL_AGENT_LAB_TOKEN=... crystal-agent lab serve --port 8765 --db runs/lab.sqlite
    crystal-agent lab approve REQUEST_ID            # the campaign found under runs/ by the id
    crystal-agent lab approve --all --campaign my_campaign [--runs-dir runs]
    crystal-agent lab approve --list --campaign-dir runs/my_campaign
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

EXIT_ERROR = 2


def add_lab_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``lab`` subcommand (with its own subcommands) to an argparse subparsers object."""
    lab = subparsers.add_parser("lab", help="lab-robot adapters: identify PXRD, serve a reference lab, approve requests")
    sub = lab.add_subparsers(dest="lab_command", required=True)

    p = sub.add_parser("identify", help="rank candidate structures against a measured PXRD pattern")
    p.add_argument("pattern", help="two-column text file: 2theta(deg) intensity")
    p.add_argument("--structures", required=True, help="folder of candidate CIF files")
    p.add_argument("--wavelength", default="CuKa", help="X-ray source (pymatgen name, e.g. CuKa, MoKa) or wavelength in angstrom; default CuKa")
    p.add_argument("--top", type=int, default=10, help="rows to print (text output)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("serve", help="run the reference lab server (simulated robot)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every interface)")
    p.add_argument("--port", type=port_number, default=8765,
                   help="TCP port, 0-65535 (default 8765; 0: any free port, printed)")
    p.add_argument("--db", default="runs/lab_server.sqlite", help="SQLite file of the experiment queue (default runs/lab_server.sqlite)")
    p.add_argument("--token-file", default=None, help="file with the bearer token (else $CRYSTAL_AGENT_LAB_TOKEN)")
    p.add_argument("--structures", default=None, help="folder of CIFs + energies.csv (default: reference target I landscape)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the simulated lab (default 0): with the request id it fixes every draw "
                        "of an experiment (which form crystallises, failures, measurement noise)")
    p.add_argument("--noise", default="default", choices=("low", "default", "anisotropic", "high"),
                   help="PXRD measurement effects of the simulated robot (thermal expansion, zero shift, "
                        "peak width, texture, background, counting noise): low, default (the default), "
                        "anisotropic (per-axis expansion up to 5 %%, stronger texture) or high")

    p = sub.add_parser("approve", help="approve held lab requests so they are sent to the lab")
    p.add_argument("name", nargs="?", help="request id to approve")
    p.add_argument("--all", action="store_true", help="approve every pending request")
    p.add_argument("--list", action="store_true", help="list the queue instead")
    p.add_argument("--reject", action="store_true", help="reject NAME instead of approving it")
    p.add_argument("--campaign-dir", help="campaign directory holding lab_approvals.sqlite "
                   "(default: the campaign named by --campaign, else the one under --runs-dir whose "
                   "queue holds NAME, else the current directory)")
    p.add_argument("--campaign", help="campaign name (under --runs-dir)")
    p.add_argument("--runs-dir", default="runs", help="campaign directory root (default: runs/)")

    lab.set_defaults(func=run_lab_command)
    return lab


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0-65535 (0: any free port); else a usage error (exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is 0-65535, got {value}")
    return value


def read_pattern(path: str | Path) -> tuple[Any, Any]:
    """Read a two-column (2theta, intensity) text file; '#' comments allowed."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pattern file not found: {path}")
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an empty file warns; make it the one-line error
            delimiter = None if "," not in path.read_text(errors="replace")[:2000] else ","
            data = np.loadtxt(path, comments="#", ndmin=2, delimiter=delimiter)
    except (ValueError, UserWarning) as exc:
        raise ValueError(f"cannot read {path.name}: {str(exc).splitlines()[0]}") from None
    if data.size == 0:
        raise ValueError(f"{path.name}: no data rows (two columns: 2theta intensity)")
    if data.shape[1] < 2:
        raise ValueError(f"{path.name}: need two columns (2theta intensity)")
    return data[:, 0], data[:, 1]


def _identify(args: argparse.Namespace) -> int:
    from agent.lab.identify import check_wavelength, identify
    from sim_backends.landscape import Landscape

    import warnings

    check_wavelength(args.wavelength)
    x, y = read_pattern(args.pattern)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen's multi-line CIF notices; bad files still raise
        entries = Landscape.from_cif_dir(args.structures, allow_missing_energies=True).minima  # structures only
    result = identify((x, y), [e.structure for e in entries], [f"{e.id}.cif" for e in entries], wavelength=args.wavelength)
    if args.json:
        out = result.to_dict()
        out["structures"] = [{"file": n, "score": round(s, 5)} for n, s in result.ranked]
        print(json.dumps(out))
        return 0
    print(f"{'rank':>4}  {'WCC':>7}  file      (weighted cross-correlation of measured and fitted pattern, 1 = identical)")
    for i, (name, score) in enumerate(result.ranked[: args.top], start=1):
        print(f"{i:>4}  {score:7.4f}  {name}")
    if not result.is_match:
        print("no match: best score below threshold")
    elif result.is_mixture:
        print("mixture: " + ", ".join(f"{n} ({f:.0%})" for n, f in result.components))
    else:
        print(f"best: {result.best} (confidence {result.confidence:.3f}, WCC gap to the next {result.score_gap:.3f})")
        a, b, c = result.best_scales
        texture = "none" if result.best_texture is None else f"March-Dollase r = {result.best_texture[1]:.2f} along {result.best_texture[0]}"
        print(f"fitted: lattice factors a x {a:.4f}, b x {b:.4f}, c x {c:.4f}; zero shift {result.best_zero_shift_deg:+.2f} deg 2theta; texture {texture}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from agent.lab.network import read_token
    from agent.lab.server import LabServer
    from sim_backends.landscape import Landscape, load_target_i

    token = read_token("CRYSTAL_AGENT_LAB_TOKEN", args.token_file)
    entries = (Landscape.from_cif_dir(args.structures) if args.structures else load_target_i()).minima
    server = LabServer(entries, args.db, token, host=args.host, port=args.port, seed=args.seed, noise_level=args.noise)
    molecules = ", ".join(f"{len(v)} of {f}" for f, v in sorted(server.forms_by_formula.items()))
    print(f"lab server on {server.url} (forms: {molecules}; other molecules are refused; db {args.db}); "
          "Ctrl-C stops", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def _approval_queue(args: argparse.Namespace) -> Path:
    """The ``lab_approvals.sqlite`` that ``lab approve`` works on (see its ``--campaign-dir``)."""
    import sqlite3

    name = "lab_approvals.sqlite"
    if args.campaign_dir is not None:
        path = Path(args.campaign_dir) / name
    elif args.campaign is not None:
        path = Path(args.runs_dir) / args.campaign / name
    else:
        path = Path(name)
        if not path.is_file() and args.name:  # the campaign whose queue holds the request
            for cand in sorted(Path(args.runs_dir).glob(f"*/{name}")):
                with contextlib.closing(sqlite3.connect(f"file:{cand}?mode=ro", uri=True)) as db:
                    try:
                        if db.execute("SELECT 1 FROM approvals WHERE request_id = ?", (args.name,)).fetchone():
                            path = cand
                            break
                    except sqlite3.Error:
                        continue
    if not path.is_file():
        raise FileNotFoundError(f"no approval queue at {path}" + (
            "" if args.campaign_dir or args.campaign else
            (f" (nor one under {args.runs_dir}/ holding {args.name!r})" if args.name else "")
            + "; give --campaign NAME or --campaign-dir DIR"))
    return path


def _approve(args: argparse.Namespace) -> int:
    from agent.lab.base import format_K
    from agent.lab.safety import ApprovalQueue

    path = _approval_queue(args)
    queue = ApprovalQueue(path)
    try:
        if args.list:
            entries = queue.list()
            if not entries:
                print(f"no lab requests in {path}")
                return 0
            rows = [(e["state"], e["request_id"], e["request"]["smiles"], e["request"]["method"],
                     e["request"].get("solvent") or "-", f"{format_K(e['request']['temperature_K'])} K") for e in entries]
            header = ("state", "request", "smiles", "method", "solvent", "temperature")
            widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
            print("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
            for e, row in zip(entries, rows):
                print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
                if e["request"].get("note"):
                    print(f"    conditions: {e['request']['note']}")
                if e.get("reason"):
                    print(f"    {e['state']}: {e['reason']}")
            return 0
        if args.all == bool(args.name):
            raise ValueError("give exactly one of NAME or --all")
        if args.reject:
            if not args.name:
                raise ValueError("--reject needs NAME")
            changed = int(queue.reject(args.name))
            print(f"rejected {changed} request(s)")
            return 0
        if args.all:
            changed = queue.approve(None)
            print(f"approved {changed} request(s)" if changed else "no pending lab requests to approve")
            return 0
        before = queue.get(args.name)
        if before is not None and before["state"] in ("rejected", "refused"):
            why = f" by the lab: {before['reason']}" if before["state"] == "refused" and before.get("reason") else ""
            raise ValueError(f"lab request {args.name!r} was {before['state']}{why}; it cannot be approved")
        changed = queue.approve(args.name)
        if changed:
            print(f"approved {changed} request(s)")
        elif before is not None and before["state"] == "forwarded":
            print(f"lab request {args.name!r} is already approved and was sent to the lab")
        else:
            print(f"lab request {args.name!r} is already approved (the campaign sends it when it next polls)")
        return 0
    finally:
        queue.close()


def run_lab_command(args: argparse.Namespace) -> int:
    """Run a parsed ``lab`` subcommand; errors -> one line on stderr, exit code 2."""
    from agent.lab.base import LabError

    handlers = {"identify": _identify, "serve": _serve, "approve": _approve}
    try:
        return handlers[args.lab_command](args)
    except (LabError, ValueError, FileNotFoundError, OSError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"crystal-agent lab: error: {msg}", file=sys.stderr)
        return EXIT_ERROR
