"""``crystal-agent refine NAME``: run (more of) the structure-level refinement stage of a
campaign on its stored CSP landscapes, without spending anything on the molecule stage.

    crystal-agent refine NAME [--runs-dir DIR] [--budget N] [--address ADDR] [--quiet]

``--budget N`` adds N structure-stage evaluations to the campaign's budget (default:
continue to the budget already configured): it raises ``[structures] budget_evaluations``
and ``max_evaluations`` (from at least the evaluations done) by N in the stored config and
prints one line saying so. The campaign config must enable the
structure stage (``[structures] enabled = true``).
"""

from __future__ import annotations

import argparse
import sys


def add_refine_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("refine", help="run the structure-level refinement stage of a campaign")
    p.add_argument("name", help="campaign name")
    p.add_argument("--runs-dir", help="campaign directory root (default: runs/)")
    p.add_argument("--budget", type=int, default=0, help="extra structure-stage evaluations")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_refine_command)


def run_refine_command(args: argparse.Namespace) -> int:
    from agent.campaign import Campaign
    from agent.cli import CliError, _run_loop, _runs_dir
    from agent.config import config_to_toml

    if args.budget < 0:
        raise CliError("--budget must be >= 0")
    stages = ("structures", "lab")
    campaign = Campaign.open(args.name, _runs_dir(args), readonly=True)
    try:
        if campaign.stage is None:
            raise CliError(
                f"campaign {args.name!r} has no structure stage; set [structures] enabled = true"
            )
        cfg, n_done = campaign.cfg, campaign.n_evaluations
        stages = tuple(s for s in stages if s in campaign.stages)
    finally:
        campaign.close()
    campaign = Campaign.open(args.name, _runs_dir(args), stages=stages)
    try:
        if args.budget:  # more structure-stage evaluations: a new stored config, reopened
            structures = cfg.structures.model_copy(
                update={"budget_evaluations": cfg.structures.budget_evaluations + args.budget}
            )
            before = cfg
            cfg = cfg.model_copy(update={
                "structures": structures,
                "max_evaluations": max(cfg.max_evaluations, n_done) + args.budget,
            })
            campaign.store.set_meta("config_toml", config_to_toml(cfg))
            print(f"refine: {args.name}: structure-stage budget (structures.budget_evaluations) "
                  f"{before.structures.budget_evaluations} -> {structures.budget_evaluations}, "
                  f"total budget (max_evaluations) {before.max_evaluations} -> {cfg.max_evaluations} "
                  "evaluations (stored: a later resume continues to it)", flush=True)
            campaign.close()
            campaign = Campaign.open(args.name, _runs_dir(args), stages=stages)
        campaign.store.log_event("refine", budget=args.budget)
        n_before = campaign.n_evaluations
    except BaseException:
        campaign.close()
        raise
    code = _run_loop(campaign, args)
    if code == 0:
        done = Campaign.open(args.name, _runs_dir(args), readonly=True)
        try:
            if done.n_evaluations == n_before:
                print(f"crystal-agent: nothing refined: {done.status().stop_reason or 'nothing left to evaluate'}"
                      + ("" if args.budget else "; `--budget N` adds structure-stage evaluations"),
                      file=sys.stderr)
        finally:
            done.close()
    return code
