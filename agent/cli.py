"""The ``crystal-agent`` command line.

    crystal-agent run CONFIG [--name NAME] [--runs-dir DIR] [--address ADDR] [--max-evaluations N]
    crystal-agent resume NAME [--runs-dir DIR] [--address ADDR] [--max-evaluations N]
    crystal-agent status NAME [--runs-dir DIR] [--json]
    crystal-agent report NAME [--runs-dir DIR]
    crystal-agent backends
    crystal-agent csp ...       (crystal structure prediction, see `crystal-agent csp -h`)
    crystal-agent refine NAME   (structure-level refinement, see `crystal-agent refine -h`)
    crystal-agent lab ...       (lab-robot adapters, see `crystal-agent lab -h`)

Every expected failure (bad config, missing file, a campaign already running, ...)
prints one line ``crystal-agent: error: ...`` on stderr and exits with status 2; an
interrupted campaign exits with 130.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """An expected failure with a one-line message."""


def _runs_dir(args: argparse.Namespace) -> Path:
    return Path(args.runs_dir or os.environ.get("CRYSTAL_AGENT_RUNS", "runs"))


def _print_status(status: object, as_json: bool) -> None:
    from agent.campaign import dump_status_json

    if as_json:
        print(dump_status_json(status))
        return
    s = status.to_dict()
    print(f"campaign      {s['name']}")
    print(f"evaluations   {s['n_evaluations']} / {s['max_evaluations']} ({s['n_failed']} failed)")
    print("by backend    " + ", ".join(f"{k}: {v}" for k, v in s["n_by_backend"].items()))
    print(f"CPU spent     {s['spent_cpu_s']:.1f} s")
    best = "none yet" if s["best"] is None else f"{s['best']:.4g}  {s['best_name']}  {s['best_smiles']}"
    print(f"best          {best}")
    print(f"state         {'finished: ' + s['stop_reason'] if s['finished'] else 'not finished'}")


def _run_loop(campaign: object, args: argparse.Namespace) -> int:
    from agent.runner import CampaignInterrupted, run_campaign

    try:
        status = run_campaign(
            campaign, _runs_dir(args), address=args.address, progress=not args.quiet
        )
    except CampaignInterrupted as exc:
        print(f"crystal-agent: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        campaign.close()
    _print_status(status, as_json=False)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from agent.campaign import Campaign
    from agent.config import load_config

    cfg = load_config(args.config)
    updates = {}
    if args.name:
        updates["name"] = args.name
    if args.max_evaluations is not None:
        updates["max_evaluations"] = args.max_evaluations
    if updates:
        from agent.config import parse_config

        cfg = parse_config({**cfg.model_dump(mode="json", exclude_none=True), **updates})
    campaign = Campaign.create(cfg, _runs_dir(args))
    return _run_loop(campaign, args)


def cmd_resume(args: argparse.Namespace) -> int:
    from agent.campaign import Campaign

    campaign = Campaign.open(args.name, _runs_dir(args), max_evaluations=args.max_evaluations)
    return _run_loop(campaign, args)


def cmd_status(args: argparse.Namespace) -> int:
    from agent.campaign import STORE_FILE, campaign_dir, campaign_status, load_stored_config
    from agent.store import Store

    path = campaign_dir(_runs_dir(args), args.name) / STORE_FILE
    if not path.exists():
        raise CliError(f"no campaign {args.name!r} in {_runs_dir(args).resolve()}")
    with Store(path) as store:
        status = campaign_status(store, load_stored_config(store))
    _print_status(status, as_json=args.json)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from agent.campaign import Campaign
    from agent.report import write_plots

    campaign = Campaign.open(args.name, _runs_dir(args), readonly=True)
    try:
        for p in write_plots(campaign):
            print(p)
    finally:
        campaign.close()
    return 0


def cmd_backends(args: argparse.Namespace) -> int:
    from sim_backends.registry import available, backend_class

    rows = []
    for name in sorted(available()):
        try:
            cls = backend_class(name)
            rows.append((name, cls.target, str(cls.fidelity), ", ".join(cls.computes), cls.description))
        except Exception as exc:  # noqa: BLE001 - list what cannot load, with why
            rows.append((name, "?", "?", "", f"cannot load: {exc}"))
    if args.json:
        keys = ("name", "target", "fidelity", "computes", "description")
        print(json.dumps([dict(zip(keys, r, strict=True)) for r in rows], indent=2))
        return 0
    width = max(len(r[0]) for r in rows)
    print(f"{'name':<{width}}  target     fid  computes")
    for name, target, fid, computes, desc in rows:
        print(f"{name:<{width}}  {target:<9}  {fid:>3}  {computes}")
        if desc:
            print(f"{'':<{width}}  {desc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crystal-agent",
        description="Active-learning discovery agent for molecular crystals.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--runs-dir", help="campaign directory root (default: runs/)")

    p = sub.add_parser("run", help="start a campaign from a TOML config")
    p.add_argument("config", help="campaign TOML file")
    p.add_argument("--name", help="campaign name (default: from the config)")
    common(p)
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local)")
    p.add_argument("--max-evaluations", type=int, help="override the evaluation budget")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("resume", help="continue a stopped or killed campaign")
    p.add_argument("name")
    common(p)
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local)")
    p.add_argument("--max-evaluations", type=int, help="raise or lower the evaluation budget")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("status", help="summarise a campaign")
    p.add_argument("name")
    common(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("report", help="write a campaign's plots and tables")
    p.add_argument("name")
    common(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("backends", help="list registered backends")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_backends)

    for module, adder in (
        ("sim_backends.csp.cli", "add_csp_parser"),
        ("agent.refine_cli", "add_refine_parser"),
        ("agent.lab.cli", "add_lab_parser"),
    ):
        getattr(importlib.import_module(module), adder)(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from pydantic import ValidationError

    from agent.config import ConfigError
    from agent.store import StoreLockedError
    from sim_backends.base import BackendError
    from sim_backends.registry import UnknownBackendError

    expected = (
        CliError, ConfigError, StoreLockedError, UnknownBackendError, BackendError,
        FileNotFoundError, ValidationError, ValueError,
    )
    try:
        return int(args.func(args) or 0)
    except expected as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"crystal-agent: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("crystal-agent: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
